//! Connectivity benchmark.
//!
//! 1. Time from invitation import to a nominated pair over real loopback
//!    UDP, for this engine and, in the same run, for a pair of `webrtc-ice`
//!    agents (from `dial`/`accept` to both connected, candidates already
//!    exchanged); medians and the ratio.
//! 2. The inviter's memory per idle connected invitee: 1,000 invitees join
//!    one reusable invitation on one endpoint (in memory, no sockets), and
//!    the heap the inviter holds is measured with a counting allocator.
//!
//! Run: `cargo bench -p convoke-node --bench connect` (`-- --quick` for
//! fewer rounds).

// The counting allocator (in `common`) needs `unsafe impl GlobalAlloc`; the
// benchmarks are the only place in the workspace allowed to use unsafe code.
#![allow(unsafe_code)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{LIVE, held_per_peer, median, unix_now};

use convoke_node::ice::{Endpoint, EndpointConfig, Event};
use convoke_node::identity::Identity;
use convoke_node::token::{Candidate, CandidateKind, ConnectionMode, Invitation, InvitationParams, Token};
use rand_core::SeedableRng;
use tokio::net::UdpSocket;
use webrtc_ice::agent::Agent;
use webrtc_ice::agent::agent_config::AgentConfig;
use webrtc_ice::candidate::candidate_base::unmarshal_candidate;
use webrtc_ice::mdns::MulticastDnsMode;
use webrtc_ice::network_type::NetworkType;
use webrtc_ice::state::ConnectionState;

fn invitation(addr: SocketAddr, seed: u64, reusable: bool) -> Invitation {
    let id = Identity::from_secret_bytes([seed as u8; 32]);
    let params = InvitationParams {
        candidates: Candidate::list([(CandidateKind::Host, addr)]),
        mode: ConnectionMode { reusable, ..ConnectionMode::default() },
        ..InvitationParams::default()
    };
    let t = Token::new_invitation(&id, params, unix_now(), &mut rand_chacha::ChaCha20Rng::seed_from_u64(seed));
    Invitation::from_token(t, unix_now()).expect("valid")
}

/// Drives one endpoint on its socket until it reports a connection.
async fn drive(mut ep: Endpoint, sock: UdpSocket) -> Endpoint {
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        while let Some(t) = ep.poll_transmit() {
            let _ = sock.send_to(&t.contents, t.destination).await;
        }
        while let Some(e) = ep.poll_event() {
            if matches!(e, Event::Connected { .. }) {
                return ep;
            }
        }
        assert!(Instant::now() < deadline, "our pair did not connect");
        let wake = ep.poll_timeout().unwrap_or(deadline).min(deadline);
        tokio::select! {
            r = sock.recv_from(&mut buf) => if let Ok((n, from)) = r { ep.handle_datagram(Instant::now(), from, &buf[..n]) },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => ep.handle_timeout(Instant::now()),
        }
    }
}

/// One of our connections: import to both sides nominated.
async fn ours(round: u64) -> Duration {
    let sa = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let sb = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let inv = invitation(sa.local_addr().expect("addr"), round + 1, false);
    let mut a = Endpoint::new(EndpointConfig::default(), [round as u8; 32], Instant::now(), unix_now());
    let mut b = Endpoint::new(EndpointConfig::default(), [round as u8 ^ 0xff; 32], Instant::now(), unix_now());
    a.listen(inv.clone());
    let ta = tokio::spawn(drive(a, sa));
    let start = Instant::now();
    b.join(&inv, start);
    let tb = tokio::spawn(drive(b, sb));
    let (x, y) = tokio::join!(ta, tb);
    let took = start.elapsed();
    x.expect("inviter task");
    y.expect("invitee task");
    took
}

async fn webrtc_agent() -> (Arc<Agent>, String) {
    let config = AgentConfig {
        network_types: vec![NetworkType::Udp4],
        multicast_dns_mode: MulticastDnsMode::Disabled,
        include_loopback: true,
        ip_filter: Arc::new(Some(Box::new(|ip: std::net::IpAddr| ip.is_loopback()))),
        ..Default::default()
    };
    let agent = Arc::new(Agent::new(config).await.expect("agent"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    agent.on_candidate(Box::new(move |c| {
        if let Some(c) = c {
            let _ = tx.send(c.marshal());
        }
        Box::pin(async {})
    }));
    agent.gather_candidates().expect("gather");
    let line = rx.recv().await.expect("candidate");
    (agent, line)
}

/// A webrtc-ice pair: dial/accept start to both connected.
async fn theirs() -> Duration {
    let (a, la) = webrtc_agent().await;
    let (b, lb) = webrtc_agent().await;
    let add = |agent: &Agent, line: &str| {
        let c: Arc<dyn webrtc_ice::candidate::Candidate + Send + Sync> =
            Arc::new(unmarshal_candidate(line).expect("candidate"));
        agent.add_remote_candidate(&c).expect("add");
    };
    add(&a, &lb);
    add(&b, &la);
    let (ua, pa) = a.get_local_user_credentials().await;
    let (ub, pb) = b.get_local_user_credentials().await;
    let (_ta, ra) = tokio::sync::mpsc::channel(1);
    let (_tb, rb) = tokio::sync::mpsc::channel(1);
    let (a2, b2) = (Arc::clone(&a), Arc::clone(&b));
    let start = Instant::now();
    let dial = tokio::spawn(async move { a2.dial(ra, ub, pb).await.map(|_| ()) });
    let accept = tokio::spawn(async move { b2.accept(rb, ua, pa).await.map(|_| ()) });
    let (x, y) = tokio::join!(dial, accept);
    x.expect("task").expect("dial");
    y.expect("task").expect("accept");
    let took = start.elapsed();
    let _ = ConnectionState::Connected;
    a.close().await.expect("close");
    b.close().await.expect("close");
    took
}

/// The reference: one UDP round trip between two tokio tasks on fresh
/// loopback sockets. ICE needs 1.5 round trips before both sides know the
/// nominated pair, but first-packet costs make this a yardstick, not a bound.
async fn udp_round_trip() -> Duration {
    let a = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let (aa, ba) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 128];
        let (n, from) = b.recv_from(&mut buf).await.expect("recv");
        b.send_to(&buf[..n], from).await.expect("send");
    });
    let mut buf = [0u8; 128];
    let start = Instant::now();
    a.send_to(&[0u8; 96], ba).await.expect("send");
    let _ = a.recv_from(&mut buf).await.expect("recv");
    let took = start.elapsed();
    echo.await.expect("echo");
    let _ = aa;
    took
}

/// Heap held by an inviter with `n` idle connected invitees, in bytes;
/// and by an endpoint listening with none.
fn inviter_memory(n: usize) -> (isize, isize, usize) {
    let inv = invitation("198.18.0.1:4433".parse().expect("addr"), 99, true);
    let before_empty = LIVE.load(Ordering::Relaxed);
    let mut empty = Endpoint::new(EndpointConfig::default(), [1; 32], Instant::now(), unix_now());
    empty.listen(inv.clone());
    let empty_bytes = LIVE.load(Ordering::Relaxed) - before_empty;
    drop(empty);
    let seed = |i: usize| {
        let mut s = [2u8; 32];
        s[..8].copy_from_slice(&(i as u64).to_le_bytes());
        s
    };
    let per = held_per_peer(
        n,
        Duration::ZERO,
        |i| {
            Endpoint::new(EndpointConfig::default(), if i == 0 { [1; 32] } else { seed(i) }, Instant::now(), unix_now())
        },
        |e| e.listen(inv.clone()),
        |e, now| {
            e.join(&inv, now);
        },
    );
    ((per * n as f64) as isize, empty_bytes, n)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 10 } else { 40 };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (mut o, mut t, mut f) = (Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        // Warm up both, then interleave so machine noise hits both alike.
        let _ = ours(1000).await;
        let _ = theirs().await;
        for r in 0..rounds {
            o.push(ours(r).await);
            t.push(theirs().await);
            f.push(udp_round_trip().await);
        }
    });
    let (mo, mt, mf) = (median(o), median(t), median(f));
    println!("import to nominated pair over loopback UDP ({rounds} rounds each, interleaved)");
    println!("  convoke engine   median {:>9.3} ms", mo.as_secs_f64() * 1e3);
    println!("  webrtc-ice pair  median {:>9.3} ms", mt.as_secs_f64() * 1e3);
    println!("  ratio convoke / webrtc-ice: {:.3}   (target <= 0.5)", mo.as_secs_f64() / mt.as_secs_f64());
    println!(
        "  reference: one tokio UDP round trip on fresh loopback sockets, median {:.3} ms (ours = {:.1} of those)",
        mf.as_secs_f64() * 1e3,
        mo.as_secs_f64() / mf.as_secs_f64()
    );

    let n = 1000;
    let (held, empty, connected) = inviter_memory(n);
    println!("\ninviter memory with {connected} idle connected invitees on one reusable invitation, one endpoint");
    println!("  heap held by the inviter endpoint: {held} bytes ({:.0} bytes per invitee)", held as f64 / n as f64);
    println!("  an endpoint listening with no invitees: {empty} bytes");
}
