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
use convoke_node::runtime::node::{App, Node, NodeCtx};
use convoke_node::token::{Candidate, CandidateKind, Invitation};

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

struct Sender {
    invitation: Invitation,
    total: u64,
    sent: u64,
    id: Option<convoke_node::ice::AttemptId>,
    start: Arc<Mutex<Option<Instant>>>,
    closed: bool,
    /// The session's counters as last seen (with CONVOKE_BENCH_STATS set).
    last: String,
}

impl App for Sender {
    type Output = ();
    fn on_ready(&mut self, ctx: &mut NodeCtx<'_>) {
        ctx.host.join(&self.invitation, ctx.now);
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
        std::future::pending::<()>().await;
    }
}

fn ours_throughput(total: u64, round: u64) -> Duration {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        rt().block_on(async move {
            let a = Identity::from_secret_bytes([10; 32]);
            let node = Node::bind(a.clone(), loopback_config(), [round as u8; 32]).expect("bind");
            let inv = invitation(&a, node.candidates(), false, round);
            tx.send(inv.clone()).expect("send");
            let mut recv = Receiver { invitation: inv, total, got: 0, buf: vec![0u8; 256 * 1024], id: None };
            node.run(&mut recv).await.expect("run")
        })
    });
    let inv = rx.recv().expect("invitation");
    let start = Arc::new(Mutex::new(None));
    let b = Identity::from_secret_bytes([11; 32]);
    let mut send =
        Sender { invitation: inv, total, sent: 0, id: None, start: start.clone(), closed: false, last: String::new() };
    rt().block_on(async {
        let node = Node::bind(b, loopback_config(), [round as u8 + 100; 32]).expect("bind");
        tokio::time::timeout(Duration::from_secs(120), node.run(&mut send)).await
    })
    .expect("sent within 120 s")
    .expect("run");
    let end = server.join().expect("receiver");
    let start = start.lock().expect("lock").expect("started");
    end - start
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
        let t = ours_throughput(total, 1);
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

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let _ = ours_throughput(8 << 20, 200);
    let _ = apps::quinn_throughput(8 << 20, 1);
    for r in 0..tp_rounds {
        ours.push(ours_throughput(total, r as u64));
        theirs.push(apps::quinn_throughput(total, 1));
    }
    let mib = total as f64 / (1 << 20) as f64;
    let (mo, mt) = (median(ours), median(theirs));
    println!("\nbulk throughput of one session over loopback, {mib:.0} MiB per round, {tp_rounds} rounds interleaved");
    println!("  convoke session  median {:>8.1} MiB/s", mib / mo.as_secs_f64());
    println!("  quinn 0.11       median {:>8.1} MiB/s", mib / mt.as_secs_f64());
    println!("  ratio convoke / quinn: {:.2}   (target >= 0.8)", mt.as_secs_f64() / mo.as_secs_f64());
}
