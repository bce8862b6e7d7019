//! Streams benchmark, through the async library API against `quinn` in the
//! same run:
//!
//! 1. Bulk throughput over loopback of 1 stream and of 16 concurrent
//!    streams (the same bytes in all, split evenly), rounds interleaved.
//!    Ours: two `Endpoint`s (each runs its engine on a thread of its own)
//!    and the application's tasks on one current-thread runtime. Quinn: a
//!    server and a client, each on its own thread and runtime. Connection
//!    setup is outside the clock; it stops when the receiver has every
//!    stream's end.
//!    Also the engine alone, driven as the CLI drives it (an `App` on the
//!    node's own thread calling the host's stream functions): what the
//!    async API's handles cost is the difference.
//! 2. Memory per idle stream: the heap both ends hold for 1,000 open
//!    bidirectional streams that each carried one byte (engine state and
//!    handles), from a counting allocator.
//!
//! Run: `cargo bench -p convoke-node --bench streams` (`-- --quick`).

// The counting allocator (in `common`) needs `unsafe impl GlobalAlloc`.
#![allow(unsafe_code)]

// Shared with the other benchmarks; this one uses a part of each.
#[allow(dead_code)]
#[path = "common/apps.rs"]
mod apps;
#[allow(dead_code)]
mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use apps::{invitation, loopback_config, rt};
use common::{LIVE, median};
use convoke_node::host::HostEvent;
use convoke_node::ice::AttemptId;
use convoke_node::identity::Identity;
use convoke_node::runtime::endpoint::{Connection, Endpoint, EndpointConfig, InviteOptions};
use convoke_node::runtime::node::{App, Node, NodeCtx};
use convoke_node::session::StreamId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static DATA: [u8; 64 * 1024] = [0x5a; 64 * 1024];

async fn endpoint(seed: u8, config: EndpointConfig) -> Endpoint {
    Endpoint::bind(Identity::from_secret_bytes([seed; 32]), config).await.expect("bind")
}

async fn connected(config: EndpointConfig) -> (Endpoint, Endpoint, Connection, Connection) {
    let (a, b) = (endpoint(30, config.clone()).await, endpoint(31, config).await);
    let inv = a.invite(InviteOptions::default()).await.expect("invitation");
    let (to_a, from_b) = tokio::join!(b.join(&inv), a.accept());
    (a, b, from_b.expect("accept"), to_a.expect("join"))
}

async fn send_all(conn: Connection, bytes: u64) {
    let mut s = conn.open_uni().await.expect("stream");
    let mut sent = 0;
    while sent < bytes {
        let n = (bytes - sent).min(DATA.len() as u64) as usize;
        s.write_all(&DATA[..n]).await.expect("write");
        sent += n as u64;
    }
    s.finish().expect("finish");
}

async fn recv_all(conn: Connection) -> u64 {
    let mut r = conn.accept_uni().await.expect("stream");
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            return got;
        }
        got += n as u64;
    }
}

fn ours(total: u64, streams: usize) -> Duration {
    rt().block_on(async {
        let (_a, _b, receiver, sender) = connected(EndpointConfig::loopback()).await;
        let per = total / streams as u64;
        let start = Instant::now();
        let readers: Vec<_> = (0..streams).map(|_| tokio::spawn(recv_all(receiver.clone()))).collect();
        for _ in 0..streams {
            tokio::spawn(send_all(sender.clone(), per));
        }
        let mut got = 0;
        for r in readers {
            got += r.await.expect("reader");
        }
        let elapsed = start.elapsed();
        assert_eq!(got, per * streams as u64);
        elapsed
    })
}

/// The engine's sender: opens `streams` unidirectional streams and fills
/// them in turn.
struct EngineSender {
    invitation: convoke_node::token::Invitation,
    id: Option<AttemptId>,
    streams: usize,
    open: Vec<(StreamId, u64)>,
    per: u64,
    closed: bool,
}

impl App for EngineSender {
    type Output = ();
    fn on_ready(&mut self, ctx: &mut NodeCtx<'_>) {
        ctx.host.join(&self.invitation, ctx.now);
    }
    fn on_event(&mut self, _: &mut NodeCtx<'_>, event: HostEvent) {
        match event {
            HostEvent::Established { session, .. } => self.id = Some(session),
            // The receiver closes once it has every stream's end.
            HostEvent::Closed { .. } => self.closed = true,
            _ => {}
        }
    }
    fn step(&mut self, ctx: &mut NodeCtx<'_>) -> Option<()> {
        if self.closed {
            return Some(());
        }
        let id = self.id?;
        while self.open.len() < self.streams {
            match ctx.host.open_stream(id, true) {
                Ok(s) => self.open.push((s, 0)),
                Err(_) => break,
            }
        }
        for (s, sent) in &mut self.open {
            while *sent < self.per {
                let n = (self.per - *sent).min(DATA.len() as u64) as usize;
                let w = ctx.host.write_stream(id, *s, &DATA[..n]).expect("open");
                if w == 0 {
                    break;
                }
                *sent += w as u64;
                if *sent == self.per {
                    ctx.host.finish_stream(id, *s).expect("once");
                }
            }
        }
        (self.open.len() == self.streams && self.open.iter().all(|(s, _)| ctx.host.stream_send_done(id, *s)))
            .then_some(())
    }
    async fn wake(&mut self) {
        std::future::pending::<()>().await;
    }
}

/// The engine's receiver: reads every stream the peer opens to its end.
struct EngineReceiver {
    invitation: convoke_node::token::Invitation,
    id: Option<AttemptId>,
    streams: usize,
    seen: Vec<StreamId>,
    ended: usize,
    got: u64,
    buf: Vec<u8>,
    start: Option<Instant>,
}

impl App for EngineReceiver {
    type Output = (u64, Duration);
    fn on_ready(&mut self, ctx: &mut NodeCtx<'_>) {
        ctx.host.listen(self.invitation.clone());
    }
    fn on_event(&mut self, _: &mut NodeCtx<'_>, event: HostEvent) {
        if let HostEvent::Established { session, .. } = event {
            self.id = Some(session);
            self.start = Some(Instant::now());
        }
    }
    fn step(&mut self, ctx: &mut NodeCtx<'_>) -> Option<(u64, Duration)> {
        let id = self.id?;
        while let Some(s) = ctx.host.accept_stream(id, true) {
            self.seen.push(s);
        }
        let mut i = 0;
        while i < self.seen.len() {
            let s = self.seen[i];
            loop {
                match ctx.host.read_stream(id, s, &mut self.buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => self.got += n as u64,
                }
            }
            if ctx.host.stream_finished(id, s) {
                self.seen.swap_remove(i);
                self.ended += 1;
            } else {
                i += 1;
            }
        }
        (self.ended == self.streams).then(|| {
            let took = self.start.expect("established").elapsed();
            ctx.host.close(id, ctx.now);
            (self.got, took)
        })
    }
    async fn wake(&mut self) {
        std::future::pending::<()>().await;
    }
}

/// The engine alone: each side on its own thread, as the CLI runs it. The
/// clock starts at the session (the handshake's last round trip included).
fn engine(total: u64, streams: usize, round: u64) -> Duration {
    let per = total / streams as u64;
    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || {
        rt().block_on(async move {
            let a = Identity::from_secret_bytes([40; 32]);
            let node = Node::bind(a.clone(), loopback_config(), [round as u8; 32]).expect("bind");
            let inv = invitation(&a, node.candidates(), false, round);
            tx.send(inv.clone()).expect("send");
            let mut app = EngineReceiver {
                invitation: inv,
                id: None,
                streams,
                seen: Vec::new(),
                ended: 0,
                got: 0,
                buf: vec![0u8; 256 * 1024],
                start: None,
            };
            node.run(&mut app).await.expect("run")
        })
    });
    let inv = rx.recv().expect("invitation");
    let mut app = EngineSender { invitation: inv, id: None, streams, open: Vec::new(), per, closed: false };
    rt().block_on(async {
        let node = Node::bind(Identity::from_secret_bytes([41; 32]), loopback_config(), [round as u8 + 100; 32])
            .expect("bind");
        tokio::time::timeout(Duration::from_secs(120), node.run(&mut app)).await
    })
    .expect("sent within 120 s")
    .expect("run");
    let (got, took) = receiver.join().expect("receiver");
    assert_eq!(got, per * streams as u64);
    took
}

/// Heap both ends hold per open idle stream that carried one byte.
fn memory_per_stream(n: usize) -> f64 {
    rt().block_on(async {
        let mut config = EndpointConfig::loopback();
        // Stream 0 and the settling stream count too.
        config.node.host.session.max_streams_bidi = n as u64 + 2;
        let (_a, _b, receiver, sender) = connected(config).await;
        // Settle: the first packets, timers, buffers grown once.
        let (mut s, mut r) = sender.open_bi().await.expect("stream");
        s.write_all(b"x").await.expect("write");
        let (_s2, mut r2) = receiver.accept_bi().await.expect("accept");
        r2.read_exact(&mut [0u8; 1]).await.expect("read");
        let _ = (&mut s, &mut r);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = LIVE.load(Ordering::Relaxed);
        let mut held = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let (mut s, r) = sender.open_bi().await.expect("stream");
            s.write_all(b"x").await.expect("write");
            let (s2, mut r2) = receiver.accept_bi().await.expect("accept");
            r2.read_exact(&mut [0u8; 1]).await.expect("read");
            held.push((s, r, s2, r2));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = LIVE.load(Ordering::Relaxed);
        let per = (after - before) as f64 / n as f64;
        drop(held);
        per
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, total) = if quick { (2, 64u64 << 20) } else { (5, 256u64 << 20) };
    let mib = total as f64 / (1 << 20) as f64;
    if let Some(streams) = std::env::args().skip_while(|a| a != "--profile-endpoint").nth(1) {
        // For `perf record`: the async API's transfer alone.
        let streams: usize = streams.parse().expect("--profile-endpoint takes a stream count");
        for _ in 0..rounds {
            println!("{:.1} MiB/s", mib / ours(total, streams).as_secs_f64());
        }
        return;
    }
    // Warm up both.
    let _ = ours(8 << 20, 1);
    let _ = engine(8 << 20, 1, 200);
    let _ = apps::quinn_throughput(8 << 20, 1);
    for streams in [1, 16] {
        let (mut o, mut e, mut q) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds {
            o.push(ours(total, streams));
            e.push(engine(total, streams, r as u64));
            q.push(apps::quinn_throughput(total, streams));
        }
        let (mo, me, mq) = (median(o), median(e), median(q));
        let target = if streams == 1 { 1.0 } else { 0.9 };
        println!("{streams} stream(s) over loopback, {mib:.0} MiB per round, {rounds} rounds interleaved");
        println!("  convoke Endpoint (async API)  median {:>8.1} MiB/s", mib / mo.as_secs_f64());
        println!("  convoke engine (App, as CLI)  median {:>8.1} MiB/s", mib / me.as_secs_f64());
        println!("  quinn 0.11                    median {:>8.1} MiB/s", mib / mq.as_secs_f64());
        println!(
            "  ratio convoke / quinn: Endpoint {:.2}, engine {:.2}   (target >= {target})\n",
            mq.as_secs_f64() / mo.as_secs_f64(),
            mq.as_secs_f64() / me.as_secs_f64()
        );
    }
    let n = if quick { 200 } else { 1000 };
    println!(
        "heap per idle open stream (both ends, engine and handles, {n} streams): {:.0} bytes",
        memory_per_stream(n)
    );
}
