//! The relay's costs, each beside a peer measured in the same run:
//!
//! 1. **The engine's forwarding**: `Relay::handle_datagram` +
//!    `poll_transmit` for 1,200-byte data packets on one bound circuit,
//!    against copying the same bytes into a fresh `Vec` (what forwarding
//!    must do at least, since the driver owns the received buffer).
//! 2. **Through a socket**: a blast of 1,200-byte datagrams from one
//!    loopback socket to another, directly and through `convoke relay`'s
//!    driver (`runtime::relay::serve`) on its own thread; delivered bytes a
//!    second at the receiver, and the share lost.
//! 3. **Memory per idle circuit**: the heap (a counting allocator) held by
//!    10,000 allocated and bound circuits, divided by 10,000.
//!
//! Run: `cargo bench -p convoke-node --bench relay` (`-- --quick`: a tenth
//! of each).

// The counting allocator (in `common`) needs `unsafe impl GlobalAlloc`.
#![allow(unsafe_code)]

#[allow(dead_code)]
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::LIVE;
use convoke_node::identity::Identity;
use convoke_node::relay::{Packet, Relay, Side, client};

const PAYLOAD: usize = 1200;
const UNIX: u64 = 1_800_000_000;

/// A relay with one circuit between `a_at` and `b_at`, both bound.
fn bound_circuit(relay: &mut Relay, now: Instant, a: &Identity, b: &Identity, at: [SocketAddr; 2], nonce: u64) -> u64 {
    relay.handle_datagram(now, at[0], &client::allocate(a, &b.public_key(), nonce.to_be_bytes(), UNIX));
    let t = relay.poll_transmit().expect("a grant");
    let Ok(Packet::Allocated { circuit, .. }) = Packet::decode(&t.contents) else { panic!("no grant") };
    for (who, side) in [(a, Side::A), (b, Side::B)] {
        let from = at[side.index()];
        relay.handle_datagram(now, from, &client::bind(circuit, side));
        let t = relay.poll_transmit().expect("a challenge");
        let Ok(Packet::Challenge { challenge, .. }) = Packet::decode(&t.contents) else { panic!("not a challenge") };
        relay.handle_datagram(now, from, &client::answer(who, circuit, side, challenge));
        while relay.poll_transmit().is_some() {}
    }
    circuit
}

fn engine(packets: usize) {
    let now = Instant::now();
    let mut relay = Relay::new(common::unlimited_relay(), [1; 32], now, UNIX);
    let (a, b) = (Identity::from_secret_bytes([1; 32]), Identity::from_secret_bytes([2; 32]));
    let at: [SocketAddr; 2] = ["10.0.0.1:1000".parse().expect("addr"), "10.0.0.2:2000".parse().expect("addr")];
    let circuit = bound_circuit(&mut relay, now, &a, &b, at, 1);
    let packet = client::data(circuit, &[0x5A; PAYLOAD]);

    let start = Instant::now();
    let mut out = 0usize;
    for _ in 0..packets {
        relay.handle_datagram(now, at[0], &packet);
        while let Some(t) = relay.poll_transmit() {
            out += t.contents.len();
        }
    }
    let relay_t = start.elapsed();
    assert_eq!(out, packets * packet.len());

    let start = Instant::now();
    let mut copied = 0usize;
    for _ in 0..packets {
        let v = std::hint::black_box(packet.to_vec());
        copied += v.len();
    }
    let copy_t = start.elapsed();
    assert_eq!(copied, out);
    let rate = |t: Duration| (packets * packet.len()) as f64 / t.as_secs_f64() / (1 << 20) as f64;
    println!("## 1. The engine's forwarding ({packets} packets of {PAYLOAD} bytes, one circuit)\n");
    println!("| | ns a packet | MiB/s |\n|---|---:|---:|");
    println!("| Relay::handle_datagram + poll_transmit | {:.0} | {:.0} |", ns(relay_t, packets), rate(relay_t));
    println!("| copying the packet into a new Vec (the floor) | {:.0} | {:.0} |", ns(copy_t, packets), rate(copy_t));
    println!("\nrelay / copy time: {:.1}×\n", relay_t.as_secs_f64() / copy_t.as_secs_f64());
}

fn ns(t: Duration, n: usize) -> f64 {
    t.as_nanos() as f64 / n as f64
}

/// Sends `count` datagrams from `tx` to `to` and counts what `rx` gets
/// (until 300 ms of silence): (delivered payload bytes, seconds from the
/// first send to the last arrival).
fn blast(
    tx: &UdpSocket,
    to: SocketAddr,
    rx: &UdpSocket,
    count: usize,
    wrap: impl Fn(&[u8]) -> Vec<u8>,
) -> (usize, f64) {
    rx.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let receiver = rx.try_clone().expect("clone");
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut got = 0usize;
        let mut last = None;
        while let Ok((n, _)) = receiver.recv_from(&mut buf) {
            got += n;
            last = Some(Instant::now());
        }
        (got, last)
    });
    let datagram = wrap(&[0xA5; PAYLOAD]);
    let start = Instant::now();
    for _ in 0..count {
        // A full socket buffer on loopback blocks; nothing else fails here.
        tx.send_to(&datagram, to).expect("send");
    }
    let (got, last) = counter.join().expect("receiver");
    let secs = last.map_or(f64::NAN, |l| (l - start).as_secs_f64());
    (got / datagram.len() * PAYLOAD, secs)
}

fn sockets(count: usize) {
    let big = |s: &UdpSocket| {
        let s = socket2::SockRef::from(s);
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
    };
    let a = UdpSocket::bind("127.0.0.1:0").expect("a");
    let b = UdpSocket::bind("127.0.0.1:0").expect("b");
    big(&a);
    big(&b);
    let (direct, direct_s) = blast(&a, b.local_addr().expect("addr"), &b, count, <[u8]>::to_vec);

    // The relay on its own thread and runtime, as `convoke relay` runs it.
    let (at, stop, thread) = common::spawn_relay();
    let (ia, ib) = (Identity::from_secret_bytes([3; 32]), Identity::from_secret_bytes([4; 32]));
    let ask = |s: &UdpSocket, req: &[u8]| -> Vec<u8> {
        let mut buf = [0u8; 2048];
        s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        for _ in 0..5 {
            s.send_to(req, at).expect("send");
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return buf[..n].to_vec();
            }
        }
        panic!("the relay did not answer")
    };
    let got = ask(&a, &client::allocate(&ia, &ib.public_key(), [9; 8], common::unix_now()));
    let Ok(Packet::Allocated { circuit, .. }) = Packet::decode(&got) else { panic!("no grant") };
    for (s, who, side) in [(&a, &ia, Side::A), (&b, &ib, Side::B)] {
        let got = ask(s, &client::bind(circuit, side));
        let Ok(Packet::Challenge { challenge, .. }) = Packet::decode(&got) else { panic!("no challenge") };
        ask(s, &client::answer(who, circuit, side, challenge));
    }
    // A hears that B arrived: drain it.
    let mut buf = [0u8; 64];
    let _ = a.recv_from(&mut buf);
    let (relayed, relayed_s) = blast(&a, at, &b, count, |p| client::data(circuit, p));
    let _ = stop.send(());
    let stats = thread.join().expect("relay thread");

    let mib = |bytes: usize, s: f64| bytes as f64 / s / (1 << 20) as f64;
    let lost = |bytes: usize| 1.0 - bytes as f64 / (count * PAYLOAD) as f64;
    println!(
        "## 2. Through loopback sockets ({count} datagrams of {PAYLOAD} payload bytes, sent as fast as one thread can)\n"
    );
    println!("| path | delivered MiB/s | lost |\n|---|---:|---:|");
    println!("| direct | {:.0} | {:.1}% |", mib(direct, direct_s), 100.0 * lost(direct));
    println!(
        "| through the relay (forwarded {} packets) | {:.0} | {:.1}% |",
        stats.forwarded_packets,
        mib(relayed, relayed_s),
        100.0 * lost(relayed)
    );
    println!("\nrelayed / direct: {:.2}×\n", mib(relayed, relayed_s) / mib(direct, direct_s));
}

fn memory(circuits: usize) {
    let now = Instant::now();
    let mut relay = Relay::new(common::unlimited_relay(), [2; 32], now, UNIX);
    let ids: Vec<Identity> = (0..2 * circuits).map(|i| Identity::from_secret_bytes(seed(i))).collect();
    let keys_heap = LIVE.load(Ordering::Relaxed);
    for i in 0..circuits {
        let at = [
            SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1000)),
            SocketAddr::from(([11, (i >> 16) as u8, (i >> 8) as u8, i as u8], 2000)),
        ];
        bound_circuit(&mut relay, now, &ids[2 * i], &ids[2 * i + 1], at, i as u64);
    }
    while relay.poll_event().is_some() {}
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(relay.circuit_count(), circuits);
    let per = (after - keys_heap) as f64 / circuits as f64;
    println!("## 3. Memory per idle circuit ({circuits} circuits, both ends bound)\n");
    println!("{per:.0} bytes a circuit (the relay's heap: circuits, their timers and indexes)");
}

fn seed(i: usize) -> [u8; 32] {
    let mut s = [7u8; 32];
    s[..8].copy_from_slice(&(i as u64).to_be_bytes());
    s
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    engine(1_000_000 / scale);
    sockets(200_000 / scale);
    memory(10_000 / scale);
}
