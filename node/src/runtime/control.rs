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

/// Largest request a connection may send: the largest broadcast
/// ([`crate::member::MAX_PAYLOAD`]) written as a JSON string, where an
/// escaped control character takes 6 bytes, and room for the rest (a token
/// is at most 8 KiB).
pub const MAX_REQUEST: u64 = 6 * crate::member::MAX_PAYLOAD as u64 + 16 * 1024;

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

/// Whether `dir` is a directory of ours that no other user can write to.
fn check_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir)?;
    let refuse = |why: String| Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, why));
    if !m.is_dir() {
        return refuse(format!("{} is not a directory", dir.display()));
    }
    if m.uid() != uid() {
        return refuse(format!("{} belongs to another user (uid {})", dir.display(), m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return refuse(format!("{} is writable by other users (mode {:o})", dir.display(), m.mode() & 0o777));
    }
    Ok(())
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
    ///
    /// Directories it creates are ours alone (mode 0700); an existing
    /// directory is left as it is, but the default one must be ours and
    /// writable by nobody else (as ssh checks its files), or another user
    /// could plant the socket a client hands tokens to. An existing file at
    /// the path is replaced only if it is a socket nobody answers on.
    pub fn bind(path: Option<PathBuf>) -> Result<Server, BindError> {
        let default = path.is_none();
        let path = path.unwrap_or_else(|| socket_dir().join(format!("{}.sock", std::process::id())));
        let err = |source| BindError { path: path.clone(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
                    .create(dir)
                    .map_err(err)?;
            }
            if default {
                check_private_dir(dir).map_err(err)?;
                // Ours, and nobody else may write to it: close it to them
                // entirely, whatever the umask gave the directory.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
            }
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way; not touching it",
                )));
            }
            // A socket left by a node that died: nobody answers on it.
            Ok(_) if std::os::unix::net::UnixStream::connect(&path).is_err() => {
                let _ = std::fs::remove_file(&path);
            }
            _ => {}
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
    let mut reader = BufReader::new(r.take(MAX_REQUEST));
    let mut line = String::new();
    loop {
        line.clear();
        // The limit is per request: a connection may carry many.
        reader.get_mut().set_limit(MAX_REQUEST);
        if reader.read_line(&mut line).await? == 0 {
            break;
        }
        // Cut short by the limit: say so, rather than a parser's complaint
        // about a truncated string.
        if !line.ends_with('\n') && reader.get_ref().limit() == 0 {
            let error = format!("a request carries at most {MAX_REQUEST} bytes");
            let answer = serde_json::json!({ "ok": false, "code": "too_large", "error": error });
            w.write_all(format!("{answer}\n").as_bytes()).await?;
            break;
        }
        let answer = match serde_json::from_str::<Request>(line.trim_end()) {
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
    // Sockets someone else could have planted are not ours to talk to.
    if check_private_dir(&socket_dir()).is_err() {
        return Vec::new();
    }
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(socket_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == uid()))
        .map(|p| (std::fs::metadata(&p).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), p))
        .collect();
    found.sort_by_key(|e| std::cmp::Reverse(e.0));
    found.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("convoke-control-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn binding_leaves_other_files_and_existing_directories_alone() {
        let dir = scratch("files");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let _in_runtime = rt.enter();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let file = dir.join("notes.sock");
        std::fs::write(&file, "not a socket").expect("write");
        let e = Server::bind(Some(file.clone())).err().expect("refused");
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).expect("still there"), "not a socket");
        // A socket in an existing directory: the directory keeps its mode.
        let s = Server::bind(Some(dir.join("a.sock"))).expect("binds");
        assert_eq!(std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777, 0o755);
        // One we create is ours alone.
        let s2 = Server::bind(Some(dir.join("new").join("b.sock"))).expect("binds");
        assert_eq!(std::fs::metadata(dir.join("new")).expect("dir").permissions().mode() & 0o777, 0o700);
        drop((s, s2));
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn a_directory_others_can_write_is_not_private() {
        let dir = scratch("open");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = check_private_dir(&dir).expect_err("refused");
        assert!(e.to_string().contains("writable by other users"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        check_private_dir(&dir).expect("ours alone");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    /// A control server at `path` that answers every request with `ok`
    /// (call it inside a tokio runtime).
    fn ok_server(path: &Path) -> Server {
        let mut server = Server::bind(Some(path.to_path_buf())).expect("binds");
        let (tx, mut rx) = mpsc::channel::<(Request, oneshot::Sender<Value>)>(4);
        server.start(tx);
        tokio::spawn(async move {
            while let Some((_, reply)) = rx.recv().await {
                let _ = reply.send(serde_json::json!({ "ok": true }));
            }
        });
        server
    }

    #[test]
    fn an_oversized_request_is_refused_in_plain_words() {
        let dir = scratch("large");
        let path = dir.join("c.sock");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let answer = rt.block_on(async {
            let server = ok_server(&path);
            // The largest broadcast, all escapes, still fits.
            let max = crate::member::MAX_PAYLOAD;
            let fits = request(&path, &Request::Broadcast { data: "\u{1}".repeat(max) }).await.expect("answer");
            assert_eq!(fits["ok"], true, "{fits}");
            let big = Request::Broadcast { data: "x".repeat(MAX_REQUEST as usize) };
            let answer = request(&path, &big).await.expect("answer");
            drop(server);
            answer
        });
        assert_eq!(answer["code"], "too_large", "{answer}");
        assert!(answer["error"].as_str().is_some_and(|e| e.contains("at most")), "{answer}");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn the_size_limit_is_per_request_not_per_connection() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let dir = scratch("many");
        let path = dir.join("c.sock");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let answers = rt.block_on(async {
            let server = ok_server(&path);
            // Three requests of two thirds of the limit each, on one
            // connection: together twice the limit.
            let one = Request::Broadcast { data: "x".repeat(MAX_REQUEST as usize * 2 / 3) };
            let line = serde_json::to_string(&one).expect("json") + "\n";
            let stream = UnixStream::connect(&path).await.expect("connects");
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            let mut answers = Vec::new();
            for _ in 0..3 {
                w.write_all(line.as_bytes()).await.expect("write");
                let a = lines.next_line().await.expect("read").expect("an answer");
                answers.push(serde_json::from_str::<Value>(&a).expect("json"));
            }
            drop(server);
            answers
        });
        assert!(answers.iter().all(|a| a["ok"] == true), "{answers:?}");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
