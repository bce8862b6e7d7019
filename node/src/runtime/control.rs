//! The control socket: a Unix socket through which a second `convoke`
//! command talks to a running node (`convoke rsvp`, `convoke status`).
//!
//! Each running node creates `<dir>/<pid>.sock` (mode 0600 directory), so
//! an inviter and a joiner on one machine do not collide; clients try every
//! socket there unless given one with `--control`. Protocol: one JSON
//! request per line, one JSON answer per line:
//!
//! ```text
//! {"cmd":"status"}                 -> the node's status object
//! {"cmd":"rsvp","token":"scpc:…"}  -> {"ok":true} | {"ok":false,"code":…,"error":…}
//! {"cmd":"broadcast","data":"…"}   -> {"ok":true} | {"ok":false,"code":…,"error":…}
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Largest request line accepted (a token is at most 8 KiB).
const MAX_LINE: u64 = 16 * 1024;

/// A control request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// The node's sessions and addresses.
    Status,
    /// Take an RSVP to one of the node's invitations.
    Rsvp {
        /// The RSVP token text.
        token: String,
    },
    /// Broadcast to every overlay member (`convoke up` nodes only).
    Broadcast {
        /// The message.
        data: String,
    },
}

/// Where per-process control sockets live: `$XDG_RUNTIME_DIR/convoke`, or
/// `/tmp/convoke-<uid>` when there is no runtime directory.
pub fn socket_dir() -> PathBuf {
    match dirs::runtime_dir() {
        Some(d) => d.join("convoke"),
        None => std::env::temp_dir().join(format!("convoke-{}", uid())),
    }
}

fn uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0)
}

/// The control socket could not be created.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the control socket {path}: {source}")]
pub struct BindError {
    /// Its path.
    pub path: PathBuf,
    /// The OS error.
    pub source: std::io::Error,
}

/// A bound control socket; removes its file when dropped.
pub struct Server {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl Server {
    /// Binds `path`, or `<socket_dir>/<pid>.sock`.
    pub fn bind(path: Option<PathBuf>) -> Result<Server, BindError> {
        let path = path.unwrap_or_else(|| socket_dir().join(format!("{}.sock", std::process::id())));
        let err = |source| BindError { path: path.clone(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
            use std::os::unix::fs::PermissionsExt;
            // Only our user may talk to our nodes.
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        // A socket file left by a node that died: nobody answers on it.
        if path.exists() && std::os::unix::net::UnixStream::connect(&path).is_err() {
            let _ = std::fs::remove_file(&path);
        }
        let listener = UnixListener::bind(&path).map_err(err)?;
        Ok(Server { path, listener: Some(listener) })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts clients in the background; their requests arrive on `tx`.
    pub fn start(&mut self, tx: mpsc::Sender<(Request, oneshot::Sender<Value>)>) {
        let Some(listener) = self.listener.take() else { return };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, tx).await;
                });
            }
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(stream: UnixStream, tx: mpsc::Sender<(Request, oneshot::Sender<Value>)>) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(MAX_LINE)).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = match serde_json::from_str::<Request>(&line) {
            Err(e) => serde_json::json!({ "ok": false, "code": "bad_request", "error": e.to_string() }),
            Ok(req) => {
                let (rtx, rrx) = oneshot::channel();
                if tx.send((req, rtx)).await.is_err() {
                    break;
                }
                rrx.await.unwrap_or(Value::Null)
            }
        };
        w.write_all(format!("{answer}\n").as_bytes()).await?;
    }
    Ok(())
}

/// Sends one request to the node at `path` and returns its answer.
pub async fn request(path: &Path, req: &Request) -> std::io::Result<Value> {
    let stream = tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(path))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the node did not accept"))??;
    let (r, mut w) = stream.into_split();
    let line = serde_json::to_string(req).map_err(std::io::Error::other)?;
    w.write_all(format!("{line}\n").as_bytes()).await?;
    let mut lines = BufReader::new(r).lines();
    let answer = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the node did not answer"))??
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the node closed the socket"))?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

/// The control sockets of running nodes: `path` if given, else every
/// `*.sock` in [`socket_dir`] (newest first).
pub fn find_sockets(path: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = path {
        return vec![p.to_path_buf()];
    }
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(socket_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .map(|p| (std::fs::metadata(&p).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), p))
        .collect();
    found.sort_by_key(|e| std::cmp::Reverse(e.0));
    found.into_iter().map(|(_, p)| p).collect()
}
