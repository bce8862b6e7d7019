//! `convoke invite`, `convoke join`, `convoke rsvp`, `convoke status`: a
//! node that connects with a token and pipes standard input and output
//! through the encrypted session, like netcat.

use std::future::Future;
use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use convoke_cli::config::{FileConfig, resolve_stun};
use convoke_cli::qr::TokenQr;
use convoke_node::ice::Via;
use convoke_node::runtime::control::{self, Request};
use convoke_node::runtime::endpoint::{Connection, Endpoint, EndpointConfig, InviteOptions, JoinError, Notice};
use convoke_node::runtime::node::NodeConfig;
use convoke_node::runtime::telemetry;
use convoke_node::runtime::unix_now;
use convoke_node::session::CloseReason;
use convoke_node::token::{CandidateKind, Invitation};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use crate::util::{format_time, parse_duration, printable, read_token_arg};
use crate::{Ctx, Failure};

/// Options every running node shares.
#[derive(Args, Debug, Clone)]
pub(crate) struct NodeArgs {
    /// Address to listen on (repeatable). Default: all interfaces, IPv4 and
    /// IPv6, on a port the system picks.
    #[arg(long, value_name = "IP:PORT")]
    listen: Vec<SocketAddr>,
    /// STUN server to learn our public address from (repeatable; none by
    /// default). Any reachable convoke node answers STUN.
    #[arg(long, value_name = "HOST:PORT")]
    stun: Vec<String>,
    /// Control socket for `convoke rsvp` and `convoke status`.
    /// Default: one per process under $XDG_RUNTIME_DIR/convoke.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Show the token as a QR code too (on standard error).
    #[arg(long)]
    qr: bool,
    /// Never predict or probe for ports when both NATs need it (the RSVP
    /// round is then the last step). Probing sends up to 2,000 small
    /// packets at 50 per second to the peer's address, or opens 256
    /// sockets on the side behind a symmetric NAT.
    #[arg(long)]
    no_probing: bool,
    /// Never ask the router to forward a port to us. By default the node
    /// asks the default gateway (PCP, then NAT-PMP, then UPnP IGD) for a
    /// mapping of its IPv4 port, renews it, deletes it on exit, and offers
    /// the mapped address in its tokens so that people connect with a
    /// single token.
    #[arg(long)]
    no_port_mapping: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless asked;
    /// `--metrics` alone means 127.0.0.1:9464). Keep it on loopback or a
    /// private network: it has no authentication.
    #[arg(long, value_name = "IP:PORT", num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
    pub(crate) metrics: Option<SocketAddr>,
}

/// `convoke invite`.
#[derive(Args, Debug)]
pub struct InviteArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Let several people join with this invitation (until it expires).
    #[arg(long)]
    reusable: bool,
    /// Ask invitees for an RSVP at once (for a network that never accepts a
    /// first contact from outside).
    #[arg(long)]
    rsvp_required: bool,
    /// How long the invitation stays valid.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    expires: Option<u64>,
    /// How long an invitee tries before asking for an RSVP.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    rsvp_timeout: Option<u64>,
    /// Also write the invitation to this file.
    #[arg(long, value_name = "FILE")]
    token_out: Option<PathBuf>,
    /// A relay (`convoke relay`, or a member run with `--relay`) to name in
    /// the invitation: an invitee that has no direct path (both NATs
    /// symmetric, say) asks it for a circuit and sends it in its RSVP, and
    /// the session runs through it, still end-to-end encrypted.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_relay)]
    relay: Option<SocketAddr>,
}

/// A relay's address; a name is looked up once, here.
fn parse_relay(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| format!("`{s}` is not a HOST:PORT this machine can resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("`{s}` resolves to no address"))
}

/// `convoke join`.
#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The invitation (`-` reads it from standard input's first line).
    token: String,
    #[command(flatten)]
    node: NodeArgs,
    /// Create the reply token without asking when the inviter needs one.
    #[arg(long, short = 'y')]
    yes: bool,
    /// Also write the reply token (RSVP) to this file.
    #[arg(long, value_name = "FILE")]
    rsvp_out: Option<PathBuf>,
}

/// `convoke rsvp`.
#[derive(Args, Debug)]
pub struct RsvpArgs {
    /// The reply token (`-` reads standard input).
    token: String,
    /// The node's control socket (default: try every running node).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

/// `convoke status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The node's control socket (default: every running node). When the
    /// node named here does not answer, the command fails with exit status
    /// 1, which makes `convoke status --control PATH` a health check.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Also show overlay members' views: active, passive, the broadcast
    /// tree and the network's links as announced.
    #[arg(long)]
    topology: bool,
    /// The known network as a Graphviz graph (implies --topology).
    #[arg(long)]
    dot: bool,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub(crate) fn node_config(ctx: &Ctx, a: &NodeArgs) -> Result<NodeConfig, Failure> {
    let mut c = NodeConfig::default();
    let file = ctx.file.clone().unwrap_or_default();
    let listen = if a.listen.is_empty() { file.listen } else { a.listen.clone() };
    if !listen.is_empty() {
        c.listen = listen;
    }
    let stun = if a.stun.is_empty() { file.stun } else { a.stun.clone() };
    c.stun = resolve_stun(&stun)?;
    c.control = a.control.clone().or(file.control);
    c.host.endpoint.probing = !(a.no_probing || file.no_probing);
    c.port_mapping = !(a.no_port_mapping || file.no_port_mapping);
    Ok(c)
}

/// The port mapping line of `convoke status`.
fn port_mapping_words(m: &Value) -> String {
    match m["state"].as_str() {
        Some("mapped") => format!(
            "{} forwards {} to us (renewed before {} s)",
            m["protocol"].as_str().unwrap_or("?").to_uppercase(),
            printable(m["external"].as_str().unwrap_or("?")),
            m["expires_in_seconds"]
        ),
        Some("asking") => "asking the router".to_owned(),
        Some("unavailable") => format!("none ({})", printable(m["reason"].as_str().unwrap_or("?"))),
        Some("off") => "off".to_owned(),
        _ => "unknown".to_owned(),
    }
}

/// How a command speaks: JSON events or sentences on standard error, and
/// tokens as text (and a QR code when asked).
#[derive(Clone, Copy)]
pub(crate) struct Voice {
    json: bool,
    quiet: bool,
    qr: bool,
}

impl Voice {
    /// The voice of a command that shows no token (`--json`, `--quiet`).
    pub(crate) fn of(ctx: &Ctx) -> Voice {
        Voice { json: ctx.json, quiet: ctx.quiet, qr: false }
    }

    pub(crate) fn say(&self, human: impl AsRef<str>, event: Value) {
        if self.json {
            eprintln!("{event}");
        } else if !self.quiet {
            // Messages may quote a peer (its close reason, its key): each
            // of our lines is made printable on its own.
            let lines: Vec<_> = human.as_ref().split('\n').map(printable).collect();
            eprintln!("{}", lines.join("\n"));
        }
    }

    fn show_token(&self, text: &str, label: &str) {
        if self.json {
            return;
        }
        eprintln!("\n{text}\n");
        if self.qr {
            match TokenQr::new(text) {
                Ok(q) => eprintln!("{}", q.to_terminal()),
                Err(e) => eprintln!("convoke: the {label} does not fit a QR code: {e}"),
            }
        }
    }

    /// A notice from the endpoint, said as the command line says it.
    fn notice(&self, n: Notice) {
        match n {
            Notice::StunFailed(server) => self.say(
                format!("STUN server {server} did not answer; the token carries only this machine's addresses."),
                json!({ "event": "stun_failed", "server": server.to_string() }),
            ),
            Notice::JoinerTimedOut => self.say(
                "An invitee's connection attempt ran out of time: no direct path between the two networks \
                 (this side keeps waiting for others).",
                json!({ "event": "attempt_failed", "reason": "timeout" }),
            ),
            Notice::JoinerRefused(reason) => {
                self.say(format!("Refused a joiner: {reason}"), json!({ "event": "refused", "reason": reason }))
            }
            Notice::Note(message) => self.say(&message, json!({ "event": "note", "message": message })),
            Notice::Direct { peer, remote, remote_kind } => self.say(
                format!(
                    "The session with {peer} left its relay: it now runs directly, at {remote} ({}).",
                    kind(remote_kind)
                ),
                json!({ "event": "path_changed", "peer_id": peer.to_string(), "remote": remote.to_string(),
                        "remote_kind": format!("{remote_kind:?}").to_lowercase(), "relay": null }),
            ),
            other => self.say(format!("{other:?}"), json!({ "event": "note", "message": format!("{other:?}") })),
        }
    }

    /// "Connected to …": the path, how it was found; `elapsed` from
    /// importing the invitation (joiner only).
    fn connected(&self, conn: &Connection, elapsed: Option<f64>) {
        let Ok(info) = conn.info() else { return };
        let how = match info.via {
            Via::SingleToken => "with the invitation alone",
            Via::Rsvp => "after the reply token",
            Via::PortPrediction => "after the reply token, at a predicted port",
            Via::Birthday => "after the reply token, by probing ports",
        };
        // A relayed path: its relay's address, not the engine's name for it.
        let peer = conn.peer_id();
        let line = match info.relay {
            Some(r) => {
                format!("Connected to {peer} through the relay at {r} ({how}); the session is encrypted end to end.")
            }
            None => format!(
                "Connected to {peer} at {} ({}, {how}); the session is encrypted.",
                info.remote,
                kind(info.remote_kind)
            ),
        };
        self.say(
            line,
            json!({ "event": "connected", "peer_id": conn.peer_id().to_string(),
                    "remote": info.relay.unwrap_or(info.remote).to_string(),
                    "remote_kind": format!("{:?}", info.remote_kind).to_lowercase(),
                    "relay": info.relay.map(|r| r.to_string()),
                    "via": info.via.name(),
                    "elapsed_s": elapsed }),
        );
    }
}

fn kind(k: CandidateKind) -> &'static str {
    match k {
        CandidateKind::Host => "direct address",
        CandidateKind::Srflx => "public address",
        CandidateKind::Prflx => "address seen by the peer",
        CandidateKind::Relay => "relay",
    }
}

/// Standard input in chunks, read on a thread (blocking reads).
fn stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut buf = vec![0u8; 64 * 1024];
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(buf).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Standard output on a thread; returns the sender and the thread to join.
fn stdout_writer() -> (mpsc::Sender<Vec<u8>>, std::thread::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(8);
    let h = std::thread::spawn(move || {
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = rx.blocking_recv() {
            if out.write_all(&chunk).is_err() {
                break;
            }
            if rx.is_empty() && out.flush().is_err() {
                break;
            }
        }
        let _ = out.flush();
    });
    (tx, h)
}

/// A chunk of standard input, shared by every session it goes to.
type Chunk = Arc<[u8]>;

/// Input that came while no session was there, for the command to claim
/// (an answer, a pasted RSVP): it sends back what is data after all.
type Unclaimed = (Vec<u8>, oneshot::Sender<Option<Vec<u8>>>);

/// Feeds standard input to every session, on a task of its own (so a
/// chunk is never half-delivered). What arrives while no session exists
/// goes to the command first (`unclaimed`): it may be an answer or a
/// pasted RSVP rather than data; what it hands back as data waits for the
/// first session. At the end of input, every session's stream is finished
/// (its sender dropped), and so is every later one's.
async fn feed_stdin(
    mut stdin: mpsc::Receiver<Vec<u8>>,
    mut sessions: mpsc::UnboundedReceiver<mpsc::Sender<Chunk>>,
    unclaimed: mpsc::Sender<Unclaimed>,
) {
    // Gone at the end of input: a command waiting for an answer learns
    // there will be none.
    let mut unclaimed = Some(unclaimed);
    let mut open: Vec<mpsc::Sender<Chunk>> = Vec::new();
    let mut held: Option<Chunk> = None;
    let mut input = true;
    loop {
        while let Ok(s) = sessions.try_recv() {
            open.push(s);
        }
        if !input {
            // The end of input: every session, now and later, ends its side.
            open.clear();
            match sessions.recv().await {
                Some(_) => continue,
                None => return,
            }
        }
        if let Some(c) = held.take() {
            if open.is_empty() {
                match sessions.recv().await {
                    Some(s) => open.push(s),
                    None => return,
                }
            }
            let mut alive = Vec::with_capacity(open.len());
            for s in open.drain(..) {
                if s.send(c.clone()).await.is_ok() {
                    alive.push(s);
                }
            }
            open = alive;
            continue;
        }
        let Some(chunk) = stdin.recv().await else {
            input = false;
            unclaimed = None;
            continue;
        };
        while let Ok(s) = sessions.try_recv() {
            open.push(s);
        }
        // Sessions that ended take no more: with none left, this is input
        // for the command again (a reusable inviter's next pasted RSVP).
        open.retain(|s| !s.is_closed());
        if open.is_empty() {
            let (tx, rx) = oneshot::channel();
            let Some(to) = &unclaimed else { return };
            if to.send((chunk, tx)).await.is_err() {
                return;
            }
            if let Ok(Some(data)) = rx.await {
                held = Some(data.into());
            }
        } else {
            held = Some(chunk.into());
        }
    }
}

/// One session as a pipe: standard input (from `input`) out on the
/// session's own stream, what arrives on it to standard output. Ends when
/// both directions ended and what we sent was acknowledged (then it
/// closes the session, code 0), or when the session ends.
async fn pipe_session(
    conn: Connection,
    mut input: mpsc::Receiver<Chunk>,
    out: mpsc::Sender<Vec<u8>>,
    voice: Voice,
) -> Result<(), Failure> {
    let Some((mut send, mut recv)) = conn.session_stream() else {
        return Err("the session ended before it began".into());
    };
    let sending = async {
        while let Some(c) = input.recv().await {
            send.write_all(&c).await?;
        }
        send.finish()?;
        send.acknowledged().await.map_err(std::io::Error::from)
    };
    let receiving = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = recv.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            // Standard output closed (`| head`): stop caring what comes.
            if out.send(buf[..n].to_vec()).await.is_err() {
                return Ok(());
            }
        }
    };
    tokio::pin!(sending, receiving);
    let (mut sent, mut got) = (None, None);
    let closed = loop {
        tokio::select! {
            // The end first: a stream that fails because the session ended
            // reports the session's reason, not the stream's.
            biased;
            reason = conn.closed() => {
                // What arrived before the end stays readable (how the
                // stream ended matters no more: the session's end says it).
                if got.is_none() {
                    let _ = receiving.await;
                }
                break reason;
            }
            r = &mut sending, if sent.is_none() => sent = Some(r),
            r = &mut receiving, if got.is_none() => got = Some(r),
        }
        match (&sent, &got) {
            (Some(Ok(())), Some(Ok(()))) => {
                conn.close(0, "");
                break CloseReason::Local;
            }
            (Some(Err(e)), _) | (_, Some(Err(e))) => {
                let why = format!("the session's stream failed: {e}");
                conn.close(1, "stream failed");
                voice.say(&why, json!({ "event": "closed", "reason": why }));
                return Err(why.into());
            }
            _ => {}
        }
    };
    voice.say(
        format!("Session with peer closed: {closed:?}"),
        json!({ "event": "closed", "reason": format!("{closed:?}") }),
    );
    match closed {
        CloseReason::Peer { code: 0, .. } | CloseReason::Local => Ok(()),
        other => Err(format!("the session ended: {other:?}").into()),
    }
}

/// What `convoke invite` and `convoke join` share: an endpoint bound as the
/// flags say, standard input fed to its sessions and theirs to standard
/// output, notices said, Ctrl-C handled.
struct Piping {
    endpoint: Endpoint,
    voice: Voice,
    out: mpsc::Sender<Vec<u8>>,
    sessions: mpsc::UnboundedSender<mpsc::Sender<Chunk>>,
    unclaimed: mpsc::Receiver<Unclaimed>,
}

impl Piping {
    /// A session's pipe, fed from standard input from now on.
    fn session(&self, conn: Connection) -> impl Future<Output = Result<(), Failure>> + Send + 'static {
        let (tx, rx) = mpsc::channel(4);
        let _ = self.sessions.send(tx);
        pipe_session(conn, rx, self.out.clone(), self.voice)
    }

    /// Runs `work`; input that comes meanwhile, with no session to take
    /// it yet, is data for the session to come.
    async fn passing_input<T>(&mut self, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        loop {
            tokio::select! {
                r = &mut work => return r,
                Some((chunk, reply)) = self.unclaimed.recv() => {
                    let _ = reply.send(Some(chunk));
                }
            }
        }
    }
}

/// Binds an endpoint for `identity` as `node` says, runs `run` with it
/// (until it returns or Ctrl-C), closes the endpoint and waits for
/// standard output to drain.
fn with_endpoint<F>(
    ctx: &Ctx,
    node: &NodeArgs,
    identity: convoke_node::identity::Identity,
    run: impl FnOnce(Piping) -> F,
) -> Result<(), Failure>
where
    F: Future<Output = Result<(), Failure>>,
{
    let mut config = node_config(ctx, node)?;
    let metrics = node.metrics.or(ctx.file.as_ref().and_then(|f| f.metrics));
    config.metrics = metrics.is_some();
    let voice = Voice { json: ctx.json, quiet: ctx.quiet, qr: node.qr };
    let rt = runtime()?;
    let (out, writer) = stdout_writer();
    let result = rt.block_on(async {
        if let Some(addr) = metrics {
            telemetry::install(addr)?;
            voice.say(
                format!("Metrics at http://{addr}/metrics"),
                json!({ "event": "metrics", "url": format!("http://{addr}/metrics") }),
            );
        }
        let endpoint = Endpoint::bind(identity, EndpointConfig { node: config }).await?;
        let notices = endpoint.clone();
        let said = tokio::spawn(async move {
            while let Some(n) = notices.next_notice().await {
                voice.notice(n);
            }
        });
        let (sessions, sessions_rx) = mpsc::unbounded_channel();
        let (unclaimed_tx, unclaimed) = mpsc::channel(1);
        tokio::spawn(feed_stdin(stdin_reader(), sessions_rx, unclaimed_tx));
        let piping = Piping { endpoint: endpoint.clone(), voice, out, sessions, unclaimed };
        let r = tokio::select! {
            r = run(piping) => r,
            _ = tokio::signal::ctrl_c() => Err(Failure { message: "interrupted".into(), status: 130 }),
        };
        // Every session closes, and the peers hear it, before we exit; the
        // last notices are said (they end with the endpoint).
        endpoint.shutdown().await;
        let _ = said.await;
        r
    });
    // Every sender is gone with the runtime: the writer drains and ends.
    drop(rt);
    let _ = writer.join();
    result
}

/// Whether a line of input is a token (an RSVP pasted into the inviter's
/// window) rather than data.
fn looks_like_token(data: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(data).ok()?.trim();
    (text.starts_with("scpc:") || text.starts_with("scpi://")).then(|| text.to_owned())
}

/// `convoke invite`.
pub fn invite(ctx: &Ctx, a: InviteArgs) -> Result<(), Failure> {
    let (identity, _) = ctx.identity()?;
    let file = ctx.file.clone().unwrap_or_default();
    // A value from the configuration file is refused naming its field.
    let from_file = |field: &str, v: Option<&str>| {
        v.map(|v| parse_duration(v).map_err(|e| format!("configuration file, [invite] {field}: {e}"))).transpose()
    };
    let expires = match a.expires {
        Some(e) => e,
        None => from_file("expires", file.invite.expires.as_deref())?.unwrap_or(86_400),
    };
    let (rsvp_timeout, rsvp_source) = match a.rsvp_timeout {
        Some(t) => (t, "--rsvp-timeout"),
        None => (
            from_file("rsvp_timeout", file.invite.rsvp_timeout.as_deref())?.unwrap_or(30),
            "the configuration file's [invite] rsvp_timeout",
        ),
    };
    // Refuse a bad RSVP timeout before binding anything.
    if u32::try_from(rsvp_timeout).is_err() {
        return Err(format!("{rsvp_source} is too long").into());
    }
    let options = InviteOptions {
        lifetime: Duration::from_secs(expires),
        reusable: a.reusable,
        rsvp_required: a.rsvp_required,
        rsvp_timeout: Duration::from_secs(rsvp_timeout),
        relay: a.relay,
    };
    with_endpoint(ctx, &a.node, identity, |mut p| async move {
        // Made once the endpoint is ready: it carries the final candidates.
        let invitation = p.endpoint.invite(options).await?;
        let text = invitation.token().encode_compact();
        if let Some(path) = &a.token_out {
            std::fs::write(path, format!("{text}\n")).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        let b = &invitation.token().body;
        let uses = if a.reusable { "reusable" } else { "single use" };
        p.voice.say(
            format!(
                "Invitation ({uses}, valid until {}). Send it to the person you invite; they run\n`convoke join TOKEN`:",
                format_time(b.expires_at)
            ),
            json!({ "event": "invitation", "token": text, "expires_at": b.expires_at,
                    "candidates": b.connection_info.ice_candidates.iter().map(|c| c.address.to_string()).collect::<Vec<_>>() }),
        );
        p.voice.show_token(&text, "invitation");
        p.voice.say(
            "Waiting for them. If they send you a reply token, paste it here (or run `convoke rsvp TOKEN`).",
            json!({ "event": "waiting" }),
        );
        // What becomes of the RSVPs pasted here.
        let (by_rsvp_tx, mut by_rsvp) = mpsc::unbounded_channel::<Result<Option<Connection>, JoinError>>();
        let mut running = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                conn = p.endpoint.accept() => {
                    let conn = conn.map_err(|e| p.endpoint.failure().unwrap_or_else(|| e.to_string()))?;
                    p.voice.connected(&conn, None);
                    running.spawn(p.session(conn));
                }
                Some(r) = by_rsvp.recv() => match r {
                    Ok(None) => p.voice.say(
                        "Took the reply token; both sides are now trying at once.",
                        json!({ "event": "rsvp_accepted" }),
                    ),
                    Ok(Some(conn)) => {
                        p.voice.connected(&conn, None);
                        running.spawn(p.session(conn));
                    }
                    Err(JoinError::Refused(why)) => p.voice.say(
                        format!("That reply token was refused: {why}"),
                        json!({ "event": "rsvp_refused", "error": why }),
                    ),
                    Err(e) => p.voice.say(
                        format!("The checks after the reply token failed: {e}"),
                        json!({ "event": "attempt_failed", "reason": "failed", "error": e.to_string() }),
                    ),
                },
                Some((chunk, reply)) = p.unclaimed.recv() => match looks_like_token(&chunk) {
                    Some(rsvp) => {
                        let _ = reply.send(None);
                        let (endpoint, tx) = (p.endpoint.clone(), by_rsvp_tx.clone());
                        tokio::spawn(async move {
                            let r = match endpoint.take_rsvp(&rsvp).await {
                                Ok(pending) => {
                                    let _ = tx.send(Ok(None));
                                    pending.connected().await.map(Some)
                                }
                                Err(e) => Err(e),
                            };
                            let _ = tx.send(r);
                        });
                    }
                    None => {
                        let _ = reply.send(Some(chunk));
                    }
                },
                Some(done) = running.join_next() => {
                    let r = done.map_err(|e| format!("a session's task failed: {e}"))?;
                    // A reusable invitation keeps the node up for the next invitee.
                    if !a.reusable {
                        return r;
                    }
                }
            }
        }
    })
}

/// `convoke join`.
pub fn join(ctx: &Ctx, a: JoinArgs) -> Result<(), Failure> {
    let text = if a.token == "-" {
        // Only the first line: the rest of standard input is data.
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| format!("reading the token: {e}"))?;
        line
    } else {
        read_token_arg(&a.token)?
    };
    let invitation =
        Invitation::parse(&text, unix_now()).map_err(|e| format!("this invitation cannot be used: {e}"))?;
    let (identity, _) = ctx.identity()?;
    let stdin_is_tty = std::io::stdin().is_terminal();
    with_endpoint(ctx, &a.node, identity, |mut p| async move {
        let started = std::time::Instant::now();
        p.voice.say("Connecting to the inviter…", json!({ "event": "connecting" }));
        let failed = |e: JoinError| -> Failure {
            match e {
                JoinError::Failed(why) => format!("could not connect to the inviter: {why}").into(),
                other => other.to_string().into(),
            }
        };
        let conn = match p.endpoint.join(&invitation).await {
            Ok(conn) => conn,
            Err(JoinError::RsvpNeeded(pending)) => {
                p.voice.say(
                    "The inviter's network does not let a first contact in from outside, so they need a reply\n\
                     from you before both of you can connect.",
                    json!({ "event": "rsvp_needed" }),
                );
                let make = if a.yes {
                    true
                } else if stdin_is_tty {
                    eprint!("Create the reply token now? [Y/n] ");
                    let _ = std::io::stderr().flush();
                    let Some((answer, reply)) = p.unclaimed.recv().await else {
                        return Err("no answer: standard input ended".into());
                    };
                    let _ = reply.send(None);
                    let answer = String::from_utf8_lossy(&answer).trim().to_owned();
                    answer.is_empty() || answer.eq_ignore_ascii_case("y") || answer.eq_ignore_ascii_case("yes")
                } else {
                    return Err("the inviter needs a reply token and standard input is not a terminal to ask on; \
                                run again with --yes to create it"
                        .into());
                };
                if !make {
                    return Err("no reply token made; the inviter's network needs one to connect".into());
                }
                let rsvp = pending.rsvp().to_owned();
                if let Some(path) = &a.rsvp_out
                    && let Err(e) = std::fs::write(path, format!("{rsvp}\n"))
                {
                    eprintln!("convoke: writing {}: {e}", path.display());
                }
                p.voice.say(
                    "Here is your reply token. Send it back to the person who invited you; they paste it into\n\
                     their `convoke invite` window or run `convoke rsvp TOKEN`. This window keeps trying meanwhile.",
                    json!({ "event": "rsvp", "token": rsvp }),
                );
                p.voice.show_token(&rsvp, "reply token");
                p.passing_input(pending.connected()).await.map_err(failed)?
            }
            Err(e) => return Err(failed(e)),
        };
        p.voice.connected(&conn, Some(started.elapsed().as_secs_f64()));
        let session = p.session(conn);
        p.passing_input(session).await
    })
}

/// `convoke rsvp`: hands a reply token to the running inviter.
pub fn rsvp(ctx: &Ctx, a: RsvpArgs) -> Result<(), Failure> {
    let text = read_token_arg(&a.token)?;
    let sockets = control::find_sockets(a.control.as_deref());
    if sockets.is_empty() {
        return Err("no convoke node is running here (start one with `convoke invite`)".into());
    }
    let rt = runtime()?;
    let req = Request::Rsvp { token: text.trim().to_owned() };
    let mut last_err = None;
    for s in &sockets {
        let Ok(answer) = rt.block_on(control::request(s, &req)) else { continue };
        if answer["ok"] == Value::Bool(true) {
            if ctx.json {
                println!("{}", json!({ "ok": true, "control": s }));
            } else if !ctx.quiet {
                eprintln!("convoke: the inviter took the reply token; both sides are trying at once");
            }
            return Ok(());
        }
        if answer["code"] != "unknown_invitation" {
            return Err(format!("the reply token was refused: {}", answer["error"].as_str().unwrap_or("?")).into());
        }
        last_err = Some(answer);
    }
    Err(match last_err {
        Some(_) => "no running convoke node issued the invitation this reply answers".into(),
        None => "no running convoke node answered on its control socket".into(),
    })
}

/// `convoke status`.
pub fn status(ctx: &Ctx, a: StatusArgs) -> Result<(), Failure> {
    let sockets = control::find_sockets(a.control.as_deref());
    let rt = runtime()?;
    let nodes: Vec<Value> =
        sockets.iter().filter_map(|s| rt.block_on(control::request(s, &Request::Status)).ok()).collect();
    // A node named by its socket that does not answer is a failure (exit
    // status 1), so that `convoke status --control PATH` is a health check.
    if let (Some(path), true) = (&a.control, nodes.is_empty()) {
        return Err(format!("no convoke node answered on {}", path.display()).into());
    }
    if ctx.json {
        println!("{}", Value::Array(nodes));
        return Ok(());
    }
    if nodes.is_empty() {
        println!("no convoke node is running here");
        return Ok(());
    }
    if a.dot {
        for n in nodes.iter().filter(|n| !n["overlay"].is_null()) {
            crate::topology_view::print_topology(n, true);
        }
        return Ok(());
    }
    for n in nodes {
        println!("node {} (pid {}, up {}s)", n["peer_id"].as_str().unwrap_or("?"), n["pid"], n["up_seconds"]);
        println!("  listening   {}", join_strs(&n["listen"]));
        println!("  candidates  {}", join_strs(&n["candidates"]));
        println!("  nat         {}", nat_words(&n["nat"]));
        let p = &n["probing"];
        if p["started"].as_u64().unwrap_or(0) > 0 || p["enabled"] == false {
            println!(
                "  probing     {}; {} attempts probed, {} connected; {} probes sent, {} pool sockets opened",
                if p["enabled"] == false { "off" } else { "on" },
                p["started"],
                p["connected"],
                p["probes_sent"],
                p["pool_sockets_opened"]
            );
        }
        println!("  port map    {}", port_mapping_words(&n["port_mapping"]));
        if let Some(line) = membership_words(&n["overlay"]) {
            println!("  network     {line}");
        }
        let sessions = n["sessions"].as_array().cloned().unwrap_or_default();
        if sessions.is_empty() {
            println!("  no sessions ({} attempts pending)", n["attempts"]);
        }
        for s in sessions {
            println!(
                "  session with {}\n    path        {} ({})\n    established by {}, {} s ago; rtt {} ms; {} bytes out, {} in",
                s["peer_id"].as_str().unwrap_or("?"),
                s["remote"].as_str().unwrap_or("?"),
                s["remote_kind"].as_str().unwrap_or("?"),
                s["established_by"].as_str().unwrap_or("?"),
                s["up_seconds"],
                s["rtt_ms"].as_f64().map(|r| format!("{r:.2}")).unwrap_or_else(|| "?".into()),
                s["bytes_sent"],
                s["bytes_received"],
            );
        }
        if a.topology {
            crate::topology_view::print_topology(&n, false);
        }
    }
    Ok(())
}

/// `convoke status`'s line on an overlay member's place in its network:
/// neighbours, members known, cards held and where they are saved.
fn membership_words(o: &Value) -> Option<String> {
    if o.is_null() {
        return None;
    }
    if o["ready"] != true {
        return Some("starting".into());
    }
    let count = |k: &str| o[k].as_array().map_or(0, Vec::len);
    let mut line = format!(
        "{} neighbours, {} members known, {} cards held",
        count("active"),
        count("members"),
        o["cards"].as_u64().unwrap_or(0)
    );
    let st = &o["state"];
    if st.is_null() {
        line.push_str("; membership not saved (--no-state)");
    } else {
        let path = printable(st["path"].as_str().unwrap_or("?")).into_owned();
        match st["saved_at"].as_u64() {
            Some(_) => line.push_str(&format!("; {} saved in {path}", st["cards_saved"])),
            None => line.push_str(&format!("; nothing saved yet in {path}")),
        }
        if st["failing"] == true {
            line.push_str(" (the last write failed)");
        }
    }
    Some(line)
}

fn join_strs(v: &Value) -> String {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", ")).unwrap_or_default()
}

/// Loads `--config`, or the default file if it exists.
pub fn load_config(path: Option<&PathBuf>) -> Result<Option<FileConfig>, Failure> {
    match path {
        Some(p) => Ok(Some(FileConfig::load(p)?)),
        None => {
            let default = dirs::config_dir().map(|d| d.join("convoke").join("config.toml"));
            match default {
                Some(p) if p.exists() => Ok(Some(FileConfig::load(&p)?)),
                _ => Ok(None),
            }
        }
    }
}

/// `convoke status`'s line on our NAT.
fn nat_words(nat: &Value) -> String {
    let ports = match nat["ports"].as_str() {
        Some("preserving") => ", ports preserved".to_owned(),
        Some("sequential") => format!(", ports allocated in order (step {})", nat["delta"]),
        Some("random") => ", random ports".to_owned(),
        _ => String::new(),
    };
    match nat["mapping"].as_str() {
        Some("none") => "none: this address is public".to_owned(),
        Some("independent") => format!("maps endpoint-independently (one port for every peer){ports}"),
        Some("dependent") => {
            format!("maps per destination (a symmetric NAT: peers behind another such NAT need a relay){ports}")
        }
        _ => "unknown (give two STUN servers at different addresses with --stun to find out)".to_owned(),
    }
}
