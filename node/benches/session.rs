//! Session benchmark, printed side by side in one run:
//!
//! 1. Join to first encrypted byte on loopback: a running inviter node
//!    (its own thread) writes one byte to every session; each round binds a
//!    fresh joiner node, joins, and stops the clock when the byte is read.
//!    Bind, ICE checks, nomination, Noise IK and the first data packet are
//!    all inside the measurement; process start and key loading are not.
//! 2. Bulk throughput of one session over loopback against `quinn` moving
//!    the same bytes over loopback in the same run, each side on its own
//!    thread with its own single-threaded tokio runtime; rounds interleave.
//!    The same session through a relay (`convoke relay`'s driver on its
//!    own thread), in the same rounds: the invitation's and the RSVP's only
//!    candidates are a loopback socket that never answers, so the session
//!    can only run through the circuit the RSVP carries.
//! 3. Idle memory: the heap one host holds per idle connected peer, and the
//!    part the connectivity engine alone holds (the session's share is the
//!    difference), measured with a counting allocator on in-memory hosts.
//!
//! Run: `cargo bench -p convoke-node --bench session` (`-- --quick`).

// The counting allocator (in `common`) needs `unsafe impl GlobalAlloc`.
#![allow(unsafe_code)]

#[path = "common/apps.rs"]
mod apps;
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apps::{FirstByte, Greeter, invitation, loopback_config, pct, rt};
use common::{held_per_peer, median, unix_now};
use convoke_node::host::{Host, HostConfig, HostEvent};
use convoke_node::ice::{Endpoint, EndpointConfig};
use convoke_node::identity::Identity;
use convoke_node::relay::client::Hint;
use convoke_node::runtime::node::{App, Node, NodeCtx};
use convoke_node::token::{Candidate, CandidateKind, Invitation, InvitationParams, Token};
use rand_core::SeedableRng;
use std::net::SocketAddr;

// ---------- 1. join to first byte ----------

fn join_to_first_byte(rounds: usize) -> Vec<Duration> {
    let inviter_id = Identity::from_secret_bytes([1; 32]);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let flag = stop.clone();
    let server = std::thread::spawn(move || {
        rt().block_on(async move {
            // Sockets belong to the runtime that binds them.
            let node = Node::bind(inviter_id.clone(), loopback_config(), [1; 32]).expect("bind");
            let inv = invitation(&inviter_id, node.candidates(), true, 1);
            tx.send(inv.clone()).expect("send");
            let mut greeter = Greeter { invitation: inv, stop: flag };
            let _ = node.run(&mut greeter).await;
        })
    });
    let inv = rx.recv().expect("invitation");
    let rt = rt();
    let joiner_id = Identity::from_secret_bytes([2; 32]);
    let mut out = Vec::new();
    for r in 0..rounds {
        let started = Instant::now();
        let took = rt.block_on(async {
            let mut seed = [3u8; 32];
            seed[..8].copy_from_slice(&(r as u64).to_le_bytes());
            let node = Node::bind(joiner_id.clone(), loopback_config(), seed).expect("bind");
            let mut app = FirstByte { invitation: inv.clone(), started, id: None };
            tokio::time::timeout(Duration::from_secs(10), node.run(&mut app)).await
        });
        out.push(took.expect("first byte within 10 s").expect("run"));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    out
}

// ---------- 2. throughput ----------

static DATA: [u8; 64 * 1024] = [0x5a; 64 * 1024];

/// How a relayed round meets: the candidate that never answers, and the
/// RSVP's way from the joiner to the inviter.
struct Relayed {
    dead_end: Vec<Candidate>,
    rsvp: std::sync::mpsc::Sender<String>,
}

struct Sender {
    invitation: Invitation,
    total: u64,
    sent: u64,
    /// Through a relay: the RSVP goes once the circuit is bound.
    relayed: Option<Relayed>,
    attempt: Option<convoke_node::ice::AttemptId>,
    id: Option<convoke_node::ice::AttemptId>,
    start: Arc<Mutex<Option<Instant>>>,
    closed: bool,
    /// The session's counters as last seen (with CONVOKE_BENCH_STATS set).
    last: String,
}

impl App for Sender {
    type Output = ();
    fn on_ready(&mut self, ctx: &mut NodeCtx<'_>) {
        self.attempt = Some(ctx.host.join(&self.invitation, ctx.now));
    }
    fn on_event(&mut self, _: &mut NodeCtx<'_>, event: HostEvent) {
        match event {
            HostEvent::Established { session, .. } => {
                self.id = Some(session);
                *self.start.lock().expect("lock") = Some(Instant::now());
            }
            HostEvent::Closed { .. } => {
                self.closed = true;
                if !self.last.is_empty() {
                    eprintln!("{}", self.last);
                }
            }
            _ => {}
        }
    }
    fn step(&mut self, ctx: &mut NodeCtx<'_>) -> Option<()> {
        if self.closed {
            return Some(());
        }
        if let (Some(r), Some(attempt)) = (&self.relayed, self.attempt) {
            let hints = ctx.host.relay_hints(attempt);
            let token = ctx.host.endpoint().rsvp_token_id(attempt);
            if let (false, Some(token)) = (hints.is_empty(), token) {
                let rsvp = Token::new_rsvp_relayed(
                    &self.invitation,
                    ctx.identity,
                    token,
                    r.dead_end.clone(),
                    None,
                    hints,
                    unix_now(),
                );
                r.rsvp.send(rsvp.encode_compact()).expect("the inviter waits");
                self.relayed = None;
            }
        }
        let id = self.id?;
        while self.sent < self.total {
            let n = (self.total - self.sent).min(DATA.len() as u64) as usize;
            let w = ctx.host.write(id, &DATA[..n]);
            if w == 0 {
                break;
            }
            self.sent += w as u64;
            if self.sent == self.total {
                ctx.host.finish(id);
            }
        }
        if std::env::var_os("CONVOKE_BENCH_STATS").is_some()
            && let Some(i) = ctx.host.session(id)
        {
            self.last = format!("sender: {:?} window {} rtt {:?}", i.stats, i.window, i.rtt);
        }
        ctx.host.send_done(id).then_some(())
    }
    async fn wake(&mut self) {
        std::future::pending::<()>().await;
    }
}

struct Receiver {
    invitation: Invitation,
    total: u64,
    got: u64,
    buf: Vec<u8>,
    id: Option<convoke_node::ice::AttemptId>,
    /// Through a relay: the joiner's RSVP, until it came.
    rsvp: Option<std::sync::mpsc::Receiver<String>>,
}

impl App for Receiver {
    type Output = Instant;
    fn on_ready(&mut self, ctx: &mut NodeCtx<'_>) {
        ctx.host.listen(self.invitation.clone());
    }
    fn on_event(&mut self, _: &mut NodeCtx<'_>, event: HostEvent) {
        if let HostEvent::Established { session, .. } = event {
            self.id = Some(session);
        }
    }
    fn step(&mut self, ctx: &mut NodeCtx<'_>) -> Option<Instant> {
        if let Some(Ok(rsvp)) = self.rsvp.as_ref().map(|r| r.try_recv()) {
            ctx.host.accept_rsvp(&rsvp, ctx.now).expect("a valid RSVP");
            self.rsvp = None;
        }
        let id = self.id?;
        loop {
            let n = ctx.host.read(id, &mut self.buf);
            if n == 0 {
                break;
            }
            self.got += n as u64;
        }
        (self.got == self.total && ctx.host.recv_finished(id)).then(|| {
            ctx.host.close(id, ctx.now);
            Instant::now()
        })
    }
    async fn wake(&mut self) {
        // Waiting for the RSVP, which comes from another thread.
        if self.rsvp.is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        } else {
            std::future::pending::<()>().await;
        }
    }
}

/// One bulk transfer; through the relay at `relay` if given.
fn ours_throughput(total: u64, round: u64, relay: Option<SocketAddr>) -> Duration {
    // Through a relay: a socket that never answers stands for both sides'
    // direct addresses, and the circuit is checked as soon as it is ready.
    let dead_end = std::net::UdpSocket::bind("127.0.0.1:0").expect("dead end");
    let dead_end = Candidate::list([(CandidateKind::Host, dead_end.local_addr().expect("addr"))]);
    let config = || {
        let mut c = loopback_config();
        c.host.relay_grace = Duration::ZERO;
        c
    };
    let (rsvp_tx, rsvp_rx) = std::sync::mpsc::channel();
    let (tx, rx) = std::sync::mpsc::channel();
    let server_dead_end = dead_end.clone();
    let server = std::thread::spawn(move || {
        rt().block_on(async move {
            let a = Identity::from_secret_bytes([10; 32]);
            let node = Node::bind(a.clone(), config(), [round as u8; 32]).expect("bind");
            let inv = match relay {
                None => invitation(&a, node.candidates(), false, round),
                Some(r) => relayed_invitation(&a, &server_dead_end, r, round),
            };
            tx.send(inv.clone()).expect("send");
            let rsvp = relay.map(|_| rsvp_rx);
            let mut recv = Receiver { invitation: inv, total, got: 0, buf: vec![0u8; 256 * 1024], id: None, rsvp };
            node.run(&mut recv).await.expect("run")
        })
    });
    let inv = rx.recv().expect("invitation");
    let start = Arc::new(Mutex::new(None));
    let b = Identity::from_secret_bytes([11; 32]);
    let relayed = relay.map(|_| Relayed { dead_end, rsvp: rsvp_tx });
    let mut send = Sender {
        invitation: inv,
        total,
        sent: 0,
        relayed,
        attempt: None,
        id: None,
        start: start.clone(),
        closed: false,
        last: String::new(),
    };
    rt().block_on(async {
        let node = Node::bind(b, config(), [round as u8 + 100; 32]).expect("bind");
        tokio::time::timeout(Duration::from_secs(120), node.run(&mut send)).await
    })
    .expect("sent within 120 s")
    .expect("run");
    let end = server.join().expect("receiver");
    let start = start.lock().expect("lock").expect("started");
    end - start
}

/// An invitation whose only candidate is `dead_end` and that names the
/// relay at `relay`.
fn relayed_invitation(identity: &Identity, dead_end: &[Candidate], relay: SocketAddr, seed: u64) -> Invitation {
    let params = InvitationParams {
        candidates: dead_end.to_vec(),
        relay: vec![Hint::Relay(relay).to_string()],
        ..InvitationParams::default()
    };
    let t = Token::new_invitation(identity, params, unix_now(), &mut rand_chacha::ChaCha20Rng::seed_from_u64(seed));
    Invitation::from_token(t, unix_now()).expect("valid")
}

// ---------- 3. idle memory ----------

fn memory(n: usize) -> (f64, f64) {
    let id = Identity::from_secret_bytes([20; 32]);
    let inv =
        invitation(&id, &Candidate::list([(CandidateKind::Host, "198.18.0.1:4433".parse().expect("addr"))]), true, 5);
    let seed = |i: usize| {
        let mut s = [9u8; 32];
        s[..8].copy_from_slice(&(i as u64).to_le_bytes());
        s
    };
    let ice = held_per_peer(
        n,
        Duration::from_secs(30),
        |i| Endpoint::new(EndpointConfig::default(), seed(i), Instant::now(), unix_now()),
        |e| e.listen(inv.clone()),
        |e, now| {
            e.join(&inv, now);
        },
    );
    let host = held_per_peer(
        n,
        Duration::from_secs(30),
        |i| {
            let who = if i == 0 { id.clone() } else { Identity::from_secret_bytes(seed(i)) };
            Host::new(&who, HostConfig::default(), seed(i), Instant::now(), unix_now())
        },
        |h| h.listen(inv.clone()),
        |h, now| {
            h.join(&inv, now);
        },
    );
    (ice, host)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, tp_rounds, total) = if quick { (30, 2, 64u64 << 20) } else { (200, 5, 256u64 << 20) };

    if std::env::args().any(|a| a == "--profile-throughput") {
        // For `perf record`: our bulk transfer alone.
        let t = ours_throughput(total, 1, None);
        println!("{:.1} MiB/s", total as f64 / (1 << 20) as f64 / t.as_secs_f64());
        return;
    }
    let memory_only = std::env::args().any(|a| a == "--memory");
    if !memory_only {
        timing(rounds, tp_rounds, total);
    }
    let n = if quick { 200 } else { 1000 };
    let (ice, host) = memory(n);
    println!("\nheap the inviter holds per idle connected peer ({n} peers, 30 s after connecting)");
    println!("  connectivity engine alone (ICE attempt)     {ice:>7.0} bytes");
    println!("  host: ICE attempt + secure session          {host:>7.0} bytes");
    println!("  the session's share                        {:>7.0} bytes   (target <= 2048)", host - ice);
}

/// Join to first byte, and throughput against quinn.
fn timing(rounds: usize, tp_rounds: usize, total: u64) {
    let firsts = join_to_first_byte(rounds + 5).split_off(5);
    println!("join to first encrypted byte over loopback ({rounds} joins, in process)");
    println!(
        "  median {:.3} ms   p90 {:.3} ms   max {:.3} ms   (target: median < 5 ms)",
        median(firsts.clone()).as_secs_f64() * 1e3,
        pct(firsts.clone(), 0.9).as_secs_f64() * 1e3,
        pct(firsts, 1.0).as_secs_f64() * 1e3
    );

    let (mut ours, mut theirs, mut relayed) = (Vec::new(), Vec::new(), Vec::new());
    let (relay, stop_relay, relay_thread) = common::spawn_relay();
    let _ = ours_throughput(8 << 20, 200, None);
    let _ = ours_throughput(8 << 20, 201, Some(relay));
    let _ = apps::quinn_throughput(8 << 20, 1);
    for r in 0..tp_rounds {
        ours.push(ours_throughput(total, r as u64, None));
        relayed.push(ours_throughput(total, r as u64 + 50, Some(relay)));
        theirs.push(apps::quinn_throughput(total, 1));
    }
    let _ = stop_relay.send(());
    let stats = relay_thread.join().expect("relay");
    let mib = total as f64 / (1 << 20) as f64;
    let (mo, mr, mt) = (median(ours), median(relayed), median(theirs));
    println!("\nbulk throughput of one session over loopback, {mib:.0} MiB per round, {tp_rounds} rounds interleaved");
    println!("  convoke session  median {:>8.1} MiB/s", mib / mo.as_secs_f64());
    println!(
        "  through a relay  median {:>8.1} MiB/s   ({} circuits, {} packets forwarded)",
        mib / mr.as_secs_f64(),
        stats.allocated,
        stats.forwarded_packets
    );
    println!("  quinn 0.11       median {:>8.1} MiB/s", mib / mt.as_secs_f64());
    println!("  ratio convoke / quinn: {:.2}   (target >= 0.8)", mt.as_secs_f64() / mo.as_secs_f64());
    println!("  ratio relayed / direct: {:.2}   (target >= 0.5)", mo.as_secs_f64() / mr.as_secs_f64());
}
