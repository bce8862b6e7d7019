//! `convoke invite`, `convoke join`, `convoke rsvp`, `convoke status`: a
//! node that connects with a token and pipes standard input and output
//! through the encrypted session, like netcat.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use convoke_node::host::HostEvent;
use convoke_node::ice::{AttemptId, Event as IceEvent, FailReason, Via};
use convoke_node::member::Minter;
use convoke_node::runtime::config::{FileConfig, resolve_stun};
use convoke_node::runtime::control::{self, Request};
use convoke_node::runtime::node::{App, Node, NodeConfig, NodeCtx};
use convoke_node::runtime::qr::TokenQr;
use convoke_node::runtime::telemetry;
use convoke_node::runtime::{os_rng, unix_now};
use convoke_node::session::CloseReason;
use convoke_node::token::{CandidateKind, ConnectionMode, InitialMode, Invitation, InvitationParams};
use rand_core::Rng;
use serde_json::{Value, json};
use tokio::sync::mpsc;

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

/// A fresh seed for a node's engine, from the OS.
pub(crate) fn seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    os_rng().fill_bytes(&mut s);
    s
}

/// Pipes standard input into every session and sessions into standard
/// output; reports what happens on standard error.
struct Pipe {
    json: bool,
    quiet: bool,
    /// Join: theirs, from the start; invite: ours, minted once the
    /// candidates are final (see `InviteApp`).
    invitation: Option<Invitation>,
    inviter: bool,
    reusable: bool,
    yes: bool,
    qr: bool,
    rsvp_out: Option<PathBuf>,
    token_out: Option<PathBuf>,
    stdin_rx: mpsc::Receiver<Vec<u8>>,
    stdin_open: bool,
    stdin_is_tty: bool,
    /// A chunk of standard input being written, with each session's progress.
    held: Option<(Vec<u8>, BTreeMap<AttemptId, usize>)>,
    out_tx: mpsc::Sender<Vec<u8>>,
    out_permit: Option<mpsc::OwnedPermit<Vec<u8>>>,
    out_blocked: bool,
    sessions: BTreeMap<AttemptId, bool>,
    attempt: Option<AttemptId>,
    /// When this joiner imported the invitation (time to connect counts from here).
    joined_at: Option<std::time::Instant>,
    awaiting_answer: bool,
    outcome: Option<Result<(), Failure>>,
    interrupted: bool,
}

impl Pipe {
    fn new(ctx: &Ctx, invitation: Option<Invitation>, inviter: bool, out_tx: mpsc::Sender<Vec<u8>>) -> Pipe {
        Pipe {
            json: ctx.json,
            quiet: ctx.quiet,
            invitation,
            inviter,
            reusable: false,
            yes: false,
            qr: false,
            rsvp_out: None,
            token_out: None,
            stdin_rx: stdin_reader(),
            stdin_open: true,
            stdin_is_tty: std::io::stdin().is_terminal(),
            held: None,
            out_tx,
            out_permit: None,
            out_blocked: false,
            sessions: BTreeMap::new(),
            attempt: None,
            joined_at: None,
            awaiting_answer: false,
            outcome: None,
            interrupted: false,
        }
    }

    fn say(&self, human: impl AsRef<str>, event: Value) {
        if self.json {
            eprintln!("{event}");
        } else if !self.quiet {
            // Messages may quote a peer (its close reason, its key).
            eprintln!("{}", printable(human.as_ref()));
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

    fn make_rsvp(&mut self, ctx: &mut NodeCtx<'_>, attempt: AttemptId) {
        let (Some(id), Some(inv)) = (ctx.host.endpoint().rsvp_token_id(attempt), &self.invitation) else { return };
        // The node's minter offers peer-reflexive addresses our checks
        // revealed too (a symmetric NAT's port towards this inviter).
        let t = ctx.minter.rsvp(inv, id, unix_now());
        telemetry::token_issued("rsvp");
        let text = t.encode_compact();
        if let Some(p) = &self.rsvp_out
            && let Err(e) = std::fs::write(p, format!("{text}\n"))
        {
            eprintln!("convoke: writing {}: {e}", p.display());
        }
        self.say(
            "Here is your reply token. Send it back to the person who invited you; they paste it into\n\
             their `convoke invite` window or run `convoke rsvp TOKEN`. This window keeps trying meanwhile.",
            json!({ "event": "rsvp", "token": text }),
        );
        self.show_token(&text, "reply token");
    }

    fn fail(&mut self, message: String) {
        if self.outcome.is_none() {
            self.outcome = Some(Err(Failure { message, status: 1 }));
        }
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

impl App for Pipe {
    type Output = Result<(), Failure>;

    fn on_ready(&mut self, ctx: &mut NodeCtx<'_>) {
        let Some(invitation) = self.invitation.clone() else { return };
        if self.inviter {
            let b = &invitation.token().body;
            let text = invitation.token().encode_compact();
            if let Some(p) = &self.token_out
                && let Err(e) = std::fs::write(p, format!("{text}\n"))
            {
                self.fail(format!("writing {}: {e}", p.display()));
                return;
            }
            let uses = if self.reusable { "reusable" } else { "single use" };
            self.say(
                format!(
                    "Invitation ({uses}, valid until {}). Send it to the person you invite; they run\n`convoke join TOKEN`:",
                    format_time(b.expires_at)
                ),
                json!({ "event": "invitation", "token": text, "expires_at": b.expires_at,
                        "candidates": ctx.candidates.iter().map(|c| c.address.to_string()).collect::<Vec<_>>() }),
            );
            self.show_token(&text, "invitation");
            telemetry::token_issued("invitation");
            self.say(
                "Waiting for them. If they send you a reply token, paste it here (or run `convoke rsvp TOKEN`).",
                json!({ "event": "waiting" }),
            );
            ctx.host.listen(invitation);
        } else {
            telemetry::token_accepted("invitation");
            self.attempt = Some(ctx.host.join(&invitation, ctx.now));
            self.joined_at = Some(ctx.now);
            self.say("Connecting to the inviter…", json!({ "event": "connecting" }));
        }
    }

    fn on_event(&mut self, ctx: &mut NodeCtx<'_>, event: HostEvent) {
        match event {
            HostEvent::Established { session, peer, remote, remote_kind, via, inviter } => {
                if !inviter && Some(session) != self.attempt {
                    return;
                }
                self.sessions.insert(session, false);
                // Seconds from importing the invitation to the session (joiner only).
                let elapsed =
                    self.joined_at.filter(|_| !inviter).map(|t| ctx.now.saturating_duration_since(t).as_secs_f64());
                let how = match via {
                    Via::SingleToken => "with the invitation alone",
                    Via::Rsvp => "after the reply token",
                    Via::PortPrediction => "after the reply token, at a predicted port",
                    Via::Birthday => "after the reply token, by probing ports",
                };
                self.say(
                    format!(
                        "Connected to {} at {remote} ({}, {how}); the session is encrypted.",
                        peer.peer_id(),
                        kind(remote_kind)
                    ),
                    json!({ "event": "connected", "peer_id": peer.peer_id().to_string(), "remote": remote.to_string(),
                            "remote_kind": format!("{remote_kind:?}").to_lowercase(),
                            "via": via.name(),
                            "elapsed_s": elapsed }),
                );
            }
            HostEvent::Ice(IceEvent::RsvpNeeded { attempt }) if Some(attempt) == self.attempt => {
                self.say(
                    "The inviter's network does not let a first contact in from outside, so they need a reply\n\
                     from you before both of you can connect.",
                    json!({ "event": "rsvp_needed" }),
                );
                if self.yes {
                    self.make_rsvp(ctx, attempt);
                } else if self.stdin_is_tty {
                    eprint!("Create the reply token now? [Y/n] ");
                    let _ = std::io::stderr().flush();
                    self.awaiting_answer = true;
                } else {
                    self.fail(
                        "the inviter needs a reply token and standard input is not a terminal to ask on; \
                         run again with --yes to create it"
                            .into(),
                    );
                }
            }
            HostEvent::Ice(IceEvent::Failed { attempt, reason, .. }) if Some(attempt) == self.attempt => {
                if self.sessions.contains_key(&attempt) {
                    return; // reported by Closed
                }
                self.fail(match reason {
                    FailReason::Timeout => {
                        "could not reach the inviter, and this invitation does not take a reply token".into()
                    }
                    FailReason::Closed => "the connection attempt was closed".into(),
                    FailReason::Crossed => {
                        "the inviter is connecting to us with their own invitation; keeping that one".into()
                    }
                });
            }
            HostEvent::Ice(IceEvent::Failed { reason: FailReason::Timeout, .. }) if self.inviter => self.say(
                "An invitee's connection attempt ran out of time: no direct path between the two networks \
                 (this side keeps waiting for others).",
                json!({ "event": "attempt_failed", "reason": "timeout" }),
            ),
            HostEvent::HandshakeFailed { session, reason } => {
                if Some(session) == self.attempt {
                    self.fail(format!("the secure handshake failed: {reason}"));
                } else {
                    self.say(format!("Refused a joiner: {reason}"), json!({ "event": "refused", "reason": reason }));
                }
            }
            HostEvent::Closed { session, reason } => {
                let Some(_) = self.sessions.remove(&session) else { return };
                let clean = matches!(&reason, CloseReason::Peer { code: 0, .. } | CloseReason::Local);
                self.say(
                    format!("Session with peer closed: {reason:?}"),
                    json!({ "event": "closed", "reason": format!("{reason:?}") }),
                );
                if !self.reusable {
                    if clean {
                        self.outcome.get_or_insert(Ok(()));
                    } else {
                        self.fail(format!("the session ended: {reason:?}"));
                    }
                }
            }
            HostEvent::StunFailed { server } => self.say(
                format!("STUN server {server} did not answer; the token carries only this machine's addresses."),
                json!({ "event": "stun_failed", "server": server.to_string() }),
            ),
            _ => {}
        }
    }

    fn step(&mut self, ctx: &mut NodeCtx<'_>) -> Option<Self::Output> {
        if self.interrupted {
            for id in self.sessions.keys().copied().collect::<Vec<_>>() {
                ctx.host.close(id, ctx.now);
            }
            return Some(Err(Failure { message: "interrupted".into(), status: 130 }));
        }
        // A typed answer to our question, or a pasted RSVP, is not data.
        if let Some((chunk, progress)) = &self.held
            && progress.is_empty()
        {
            let text = String::from_utf8_lossy(chunk).trim().to_owned();
            if self.awaiting_answer {
                self.awaiting_answer = false;
                self.held = None;
                if text.is_empty() || text.eq_ignore_ascii_case("y") || text.eq_ignore_ascii_case("yes") {
                    if let Some(a) = self.attempt {
                        self.make_rsvp(ctx, a);
                    }
                } else {
                    self.fail("no reply token made; the inviter's network needs one to connect".into());
                }
            } else if self.inviter
                && self.sessions.is_empty()
                && (text.starts_with("scpc:") || text.starts_with("scpi://"))
            {
                self.held = None;
                match telemetry::counted(ctx.host.accept_rsvp(&text, ctx.now)) {
                    Ok(_) => self.say(
                        "Took the reply token; both sides are now trying at once.",
                        json!({ "event": "rsvp_accepted" }),
                    ),
                    Err(e) => self.say(
                        format!("That reply token was refused: {e}"),
                        json!({ "event": "rsvp_refused", "error": e.to_string() }),
                    ),
                }
            }
        }
        // Standard input to every session.
        if let Some((chunk, progress)) = &mut self.held
            && !self.sessions.is_empty()
        {
            let mut all = true;
            for (&id, _) in self.sessions.iter() {
                let p = progress.entry(id).or_insert(0);
                *p += ctx.host.write(id, &chunk[*p..]);
                all &= *p == chunk.len();
            }
            if all {
                self.held = None;
            }
        }
        if !self.stdin_open && self.held.is_none() {
            for (&id, finished) in self.sessions.iter_mut() {
                if !*finished {
                    ctx.host.finish(id);
                    *finished = true;
                }
            }
        }
        // Sessions to standard output, as fast as it takes them.
        self.out_blocked = false;
        for &id in self.sessions.keys() {
            while ctx.host.readable(id) > 0 {
                let permit = match self.out_permit.take() {
                    Some(p) => p,
                    None => match self.out_tx.clone().try_reserve_owned() {
                        Ok(p) => p,
                        Err(_) => {
                            self.out_blocked = true;
                            break;
                        }
                    },
                };
                let mut buf = vec![0u8; ctx.host.readable(id).min(256 * 1024)];
                let n = ctx.host.read(id, &mut buf);
                buf.truncate(n);
                permit.send(buf);
            }
        }
        // Done: both directions ended (or the peer closed cleanly). A
        // reusable invitation keeps the node up for the next invitee.
        for (&id, &finished) in &self.sessions {
            if finished && ctx.host.recv_finished(id) && ctx.host.send_done(id) {
                ctx.host.close(id, ctx.now);
                if !self.reusable {
                    self.outcome.get_or_insert(Ok(()));
                }
            }
        }
        self.outcome.take()
    }

    async fn wake(&mut self) {
        let want_in = self.held.is_none() && self.stdin_open;
        let want_out = self.out_blocked && self.out_permit.is_none();
        let out_tx = self.out_tx.clone();
        tokio::select! {
            chunk = self.stdin_rx.recv(), if want_in => match chunk {
                Some(c) => self.held = Some((c, BTreeMap::new())),
                None => self.stdin_open = false,
            },
            permit = out_tx.reserve_owned(), if want_out => {
                self.out_permit = permit.ok();
            }
            _ = tokio::signal::ctrl_c() => self.interrupted = true,
        }
    }

    fn note(&mut self, message: &str) {
        self.say(message, json!({ "event": "note", "message": message }));
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

/// Binds a node for `identity`, runs the app `make` builds (given the
/// standard output sender), and waits for standard output to drain.
fn run_node<A: App<Output = Result<(), Failure>>>(
    ctx: &Ctx,
    node: &NodeArgs,
    identity: convoke_node::identity::Identity,
    make: impl FnOnce(mpsc::Sender<Vec<u8>>) -> A,
) -> Result<(), Failure> {
    let mut config = node_config(ctx, node)?;
    let metrics = node.metrics.or(ctx.file.as_ref().and_then(|f| f.metrics));
    config.metrics = metrics.is_some();
    let rt = runtime()?;
    let (out_tx, writer) = stdout_writer();
    let result = rt.block_on(async {
        if let Some(addr) = metrics {
            telemetry::install(addr)?;
            if ctx.json {
                eprintln!("{}", json!({ "event": "metrics", "url": format!("http://{addr}/metrics") }));
            } else if !ctx.quiet {
                eprintln!("Metrics at http://{addr}/metrics");
            }
        }
        let node = Node::bind(identity, config, seed())?;
        let mut app = make(out_tx);
        node.run(&mut app).await.map_err(Failure::from)?
    });
    // The app (and its sender) are gone: the writer drains and ends.
    let _ = writer.join();
    result
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
    run_node(ctx, &a.node, identity, |out_tx| {
        // The invitation carries the final candidates (STUN answers come
        // once the node runs): `InviteApp::on_ready` mints it.
        let mut pipe = Pipe::new(ctx, None, true, out_tx);
        pipe.reusable = a.reusable;
        pipe.qr = a.node.qr;
        pipe.token_out = a.token_out.clone();
        InviteApp { pipe, expires, rsvp_timeout, rsvp_required: a.rsvp_required }
    })
}

fn mode(reusable: bool, rsvp_required: bool, rsvp_timeout: u64) -> Result<ConnectionMode, Failure> {
    Ok(ConnectionMode {
        initial: if rsvp_required { InitialMode::Bidirectional } else { InitialMode::Unidirectional },
        rsvp_supported: true,
        rsvp_timeout_seconds: u32::try_from(rsvp_timeout).map_err(|_| "--rsvp-timeout is too long")?,
        reusable,
    })
}

fn make_invitation(
    minter: &mut Minter,
    expires: u64,
    rsvp_timeout: u64,
    reusable: bool,
    rsvp_required: bool,
) -> Result<Invitation, Failure> {
    let params = InvitationParams {
        lifetime_secs: expires,
        mode: mode(reusable, rsvp_required, rsvp_timeout)?,
        ..InvitationParams::default()
    };
    Ok(minter.invitation(params, unix_now())?)
}

/// The inviter: makes the invitation once the candidates are final.
struct InviteApp {
    pipe: Pipe,
    expires: u64,
    rsvp_timeout: u64,
    rsvp_required: bool,
}

impl App for InviteApp {
    type Output = Result<(), Failure>;

    fn on_ready(&mut self, ctx: &mut NodeCtx<'_>) {
        match make_invitation(ctx.minter, self.expires, self.rsvp_timeout, self.pipe.reusable, self.rsvp_required) {
            Ok(inv) => self.pipe.invitation = Some(inv),
            Err(f) => {
                self.pipe.outcome = Some(Err(f));
                return;
            }
        }
        self.pipe.on_ready(ctx);
    }

    fn on_event(&mut self, ctx: &mut NodeCtx<'_>, event: HostEvent) {
        self.pipe.on_event(ctx, event);
    }

    fn step(&mut self, ctx: &mut NodeCtx<'_>) -> Option<Self::Output> {
        self.pipe.step(ctx)
    }

    async fn wake(&mut self) {
        self.pipe.wake().await;
    }

    fn note(&mut self, message: &str) {
        self.pipe.note(message);
    }
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
    run_node(ctx, &a.node, identity, |out_tx| {
        let mut pipe = Pipe::new(ctx, Some(invitation), false, out_tx);
        pipe.yes = a.yes;
        pipe.qr = a.node.qr;
        pipe.rsvp_out = a.rsvp_out.clone();
        pipe
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
