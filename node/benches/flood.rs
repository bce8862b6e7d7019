//! Floods against a real node on loopback: does an inviter under attack
//! keep taking real invitees, and does its memory stay bounded?
//!
//! One inviter node (its own thread and runtime, a reusable invitation,
//! real UDP sockets on 127.0.0.1) meets, one after another:
//!
//! 1. nothing: the baseline time from a fresh joiner's bind to its first
//!    encrypted byte;
//! 2. 100,000 unauthenticated datagrams (random bytes, 0–1,200 long) from
//!    1,000 source ports, as fast as one thread sends them;
//! 3. 10,000 checks with the invitation's ufrag and a wrong password, from
//!    1,000 source ports;
//! 4. 1,000 concurrent sessions (1,000 joiner nodes on 125 loopback
//!    addresses in one runtime, all connected and staying).
//!
//! During each, fresh joiners keep joining; the figures are their times to
//! first byte, what the inviter counted, and the process heap (a counting
//! allocator; the flooders hold almost nothing, so its growth in 2 and 3 is
//! the inviter's).
//!
//! Run: `cargo bench -p convoke-node --bench flood` (`-- --quick`: a tenth
//! of each flood).

// The counting allocator (in `common`) needs `unsafe impl GlobalAlloc`.
#![allow(unsafe_code)]

#[allow(dead_code)]
#[path = "common/apps.rs"]
mod apps;
#[allow(dead_code)]
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apps::{FirstByte, Greeter, invitation, loopback_config, pct, rt};
use common::{LIVE, median};
use convoke_node::host::{HostEvent, HostStats};
use convoke_node::ice::Stats;
use convoke_node::identity::Identity;
use convoke_node::runtime::node::{App, Node, NodeConfig, NodeCtx};
use convoke_node::stun::{BINDING, Class, MessageBuilder, TransactionId};
use convoke_node::token::Invitation;
use rand_core::{Rng, SeedableRng};

/// The inviter: the session benchmark's greeter, which also counts the
/// sessions and publishes its engine's counters.
struct Inviter {
    greeter: Greeter,
    sessions: Arc<AtomicU64>,
    stats: Arc<Mutex<Counters>>,
}

/// What the inviter counted: the engine's counters, the host's, and the
/// attempts it holds.
#[derive(Debug, Clone, Default)]
struct Counters {
    ice: Stats,
    host: HostStats,
    attempts: usize,
}

impl Counters {
    /// Datagrams it read and refused, at every layer.
    fn refused(&self) -> u64 {
        self.ice.dropped_malformed + self.ice.dropped_unauthenticated + self.host.dropped
    }
}

impl App for Inviter {
    type Output = ();
    fn on_ready(&mut self, ctx: &mut NodeCtx<'_>) {
        self.greeter.on_ready(ctx);
    }
    fn on_event(&mut self, ctx: &mut NodeCtx<'_>, event: HostEvent) {
        if matches!(event, HostEvent::Established { .. }) {
            self.sessions.fetch_add(1, Ordering::Relaxed);
        }
        self.greeter.on_event(ctx, event);
    }
    fn step(&mut self, ctx: &mut NodeCtx<'_>) -> Option<()> {
        if let Ok(mut s) = self.stats.lock() {
            *s = Counters {
                ice: ctx.host.endpoint().stats().clone(),
                host: ctx.host.stats().clone(),
                attempts: ctx.host.endpoint().attempt_count(),
            };
        }
        self.greeter.step(ctx)
    }
    async fn wake(&mut self) {
        self.greeter.wake().await;
    }
}

/// A joiner that connects and stays until told to stop.
struct Stay {
    invitation: Invitation,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicU64>,
    counted: bool,
}

impl App for Stay {
    type Output = ();
    fn on_ready(&mut self, ctx: &mut NodeCtx<'_>) {
        ctx.host.join(&self.invitation, ctx.now);
    }
    fn on_event(&mut self, _: &mut NodeCtx<'_>, event: HostEvent) {
        if matches!(event, HostEvent::Established { .. }) && !self.counted {
            self.counted = true;
            self.connected.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn step(&mut self, _: &mut NodeCtx<'_>) -> Option<()> {
        self.stop.load(Ordering::Relaxed).then_some(())
    }
    async fn wake(&mut self) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Fresh joiners, one after another, until `until` says stop (at least
/// `min` of them, at most 200): each one's bind-to-first-byte time, or
/// `None` when it got no byte within 5 s.
fn joins(inv: &Invitation, min: usize, until: &dyn Fn() -> bool) -> Vec<Option<Duration>> {
    let rt = rt();
    let id = Identity::from_secret_bytes([2; 32]);
    let mut out = Vec::new();
    for r in 0..200u64 {
        if r as usize >= min && until() {
            break;
        }
        let started = Instant::now();
        let took = rt.block_on(async {
            let mut seed = [3u8; 32];
            seed[..8].copy_from_slice(&r.to_le_bytes());
            let node = Node::bind(id.clone(), loopback_config(), seed).expect("bind");
            let mut app = FirstByte { invitation: inv.clone(), started, id: None };
            tokio::time::timeout(Duration::from_secs(5), node.run(&mut app)).await
        });
        out.push(took.ok().and_then(Result::ok));
    }
    out
}

fn report(name: &str, v: &[Option<Duration>]) {
    let ok: Vec<Duration> = v.iter().flatten().copied().collect();
    if ok.is_empty() {
        println!("  {name}: {} joins, none connected within 5 s", v.len());
        return;
    }
    println!(
        "  {name}: {} of {} joins connected; to first byte median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        ok.len(),
        v.len(),
        median(ok.clone()).as_secs_f64() * 1e3,
        pct(ok.clone(), 0.9).as_secs_f64() * 1e3,
        pct(ok, 1.0).as_secs_f64() * 1e3
    );
}

fn heap_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / (1 << 20) as f64
}

/// Sends `count` datagrams made by `make` from `ports` sockets to `to`, at
/// most 50,000 a second (faster, the kernel drops most of them at the
/// inviter's socket buffer and the node never sees them); returns how long
/// it took.
fn flood(to: SocketAddr, ports: usize, count: usize, make: impl Fn(usize, &mut Vec<u8>) + Send + 'static) -> Duration {
    let socks: Vec<UdpSocket> =
        (0..ports).map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind flood socket")).collect();
    let started = Instant::now();
    let mut buf = Vec::with_capacity(1500);
    for i in 0..count {
        buf.clear();
        make(i, &mut buf);
        let _ = socks[i % ports].send_to(&buf, to);
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    started.elapsed()
}

/// Floods `target` with `count` datagrams from a thread (see [`flood`])
/// while fresh joiners keep joining; returns how long the flood took and
/// the joins' times. Waits a moment after, for the inviter to count.
fn flood_while_joining(
    inv: &Invitation,
    target: SocketAddr,
    count: usize,
    make: impl Fn(usize, &mut Vec<u8>) + Send + 'static,
) -> (Duration, Vec<Option<Duration>>) {
    let done = Arc::new(AtomicBool::new(false));
    let flooder = {
        let done = done.clone();
        std::thread::spawn(move || {
            let t = flood(target, 1000, count, make);
            done.store(true, Ordering::Relaxed);
            t
        })
    };
    let during = joins(inv, 5, &|| done.load(Ordering::Relaxed));
    let took = flooder.join().expect("flooder");
    std::thread::sleep(Duration::from_millis(300));
    (took, during)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let inviter = Identity::from_secret_bytes([1; 32]);
    let stop = Arc::new(AtomicBool::new(false));
    let sessions = Arc::new(AtomicU64::new(0));
    let stats = Arc::new(Mutex::new(Counters::default()));
    let (tx, rx) = std::sync::mpsc::channel();
    let server = {
        let (stop, sessions, stats) = (stop.clone(), sessions.clone(), stats.clone());
        std::thread::spawn(move || {
            rt().block_on(async move {
                let node = Node::bind(inviter.clone(), loopback_config(), [1; 32]).expect("bind");
                let inv = invitation(&inviter, node.candidates(), true, 1);
                tx.send(inv.clone()).expect("send");
                let mut app = Inviter { greeter: Greeter { invitation: inv, stop }, sessions, stats };
                let _ = node.run(&mut app).await;
            })
        })
    };
    let inv = rx.recv().expect("invitation");
    let target = inv.token().body.connection_info.ice_candidates[0].address;
    let counters = || stats.lock().map(|s| s.clone()).unwrap_or_default();

    println!("floods against one inviter on loopback ({target}), a reusable invitation");
    let _ = joins(&inv, 5, &|| true); // warm up
    let heap0 = heap_mib();
    report("no flood", &joins(&inv, 20, &|| true));

    // 2. Garbage.
    let n = 100_000 / scale;
    let before = counters().refused();
    let (took, during) = flood_while_joining(&inv, target, n, |i, b| {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(i as u64);
        b.resize((rng.next_u32() % 1201) as usize, 0);
        rng.fill_bytes(b);
    });
    let c = counters();
    println!(
        "\n{n} random datagrams from 1,000 ports in {:.2} s ({:.0}/s); the inviter refused {} of them, holds {} attempts",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        c.refused() - before,
        c.attempts
    );
    report("joins during the flood", &during);
    report("joins after it", &joins(&inv, 10, &|| true));
    println!("  process heap {:.2} MiB (before the floods {heap0:.2} MiB)", heap_mib());

    // 3. Checks with the right ufrag and a wrong password.
    let n = 10_000 / scale;
    let ufrag = inv.token().body.connection_info.ufrag.clone();
    let before = counters().refused();
    let (took, during) = flood_while_joining(&inv, target, n, move |i, b| {
        let mut m = MessageBuilder::new(Class::Request, BINDING, TransactionId([(i % 251) as u8; 12]));
        m.username(&format!("{ufrag}:flood{i:06}")).priority(1).ice_controlled(i as u64);
        b.extend_from_slice(&m.finish(Some(b"not-the-invitation-password"), true));
    });
    let c = counters();
    println!(
        "\n{n} checks with a wrong password from 1,000 ports in {:.2} s; the inviter refused {} of them, holds {} attempts",
        took.as_secs_f64(),
        c.refused() - before,
        c.attempts
    );
    report("joins during the flood", &during);
    println!("  process heap {:.2} MiB", heap_mib());

    // 4. A thousand sessions that stay.
    let n = 1000 / scale;
    let (stay_stop, connected) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let crowd = {
        let (inv, stay_stop, connected) = (inv.clone(), stay_stop.clone(), connected.clone());
        std::thread::spawn(move || {
            let rt = rt();
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let mut tasks = Vec::new();
                for k in 0..n {
                    // 8 per address: the inviter's limit on unconnected
                    // attempts from one source address.
                    let ip = format!("127.1.{}.{}", k / 8 / 250, k / 8 % 250 + 1);
                    let config = NodeConfig {
                        listen: vec![format!("{ip}:0").parse().expect("addr")],
                        socket_buffer: 64 << 10,
                        ..loopback_config()
                    };
                    let mut seed = [9u8; 32];
                    seed[..8].copy_from_slice(&(k as u64).to_le_bytes());
                    let id = Identity::from_secret_bytes(seed);
                    let node = Node::bind(id, config, seed).expect("bind a crowd node");
                    let mut app = Stay {
                        invitation: inv.clone(),
                        stop: stay_stop.clone(),
                        connected: connected.clone(),
                        counted: false,
                    };
                    tasks.push(tokio::task::spawn_local(async move {
                        let _ = node.run(&mut app).await;
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        })
    };
    let started = Instant::now();
    let base = sessions.load(Ordering::Relaxed);
    while connected.load(Ordering::Relaxed) < n as u64 && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let up = started.elapsed();
    println!(
        "\n{n} joiner nodes connected in {:.1} s ({} of them; the inviter established {})",
        up.as_secs_f64(),
        connected.load(Ordering::Relaxed),
        sessions.load(Ordering::Relaxed) - base
    );
    report(&format!("joins with {n} sessions open"), &joins(&inv, 10, &|| true));
    println!("  process heap {:.2} MiB (the inviter and {n} joiner nodes)", heap_mib());
    stay_stop.store(true, Ordering::Relaxed);
    let _ = crowd.join();
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
}
