//! The relay's decoder and state machine. A relay holds one circuit whose
//! two ends are bound; the fuzzer sends it datagrams (first byte steered
//! into the relay's range) from the two ends and from three strangers, with
//! timer advances between them. It must never panic, never send to an
//! address it did not hear from, and never answer a stranger (an address
//! bound to no circuit) with more bytes than the stranger's packet had;
//! data routed with `Relay::forward` goes from one end to the other only.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use convoke_node::identity::Identity;
use convoke_node::relay::{Packet, Relay, RelayConfig, Side, client};
use libfuzzer_sys::fuzz_target;

const UNIX: u64 = 1_800_000_000;

fn challenge(relay: &mut Relay, now: Instant, from: SocketAddr, circuit: u64, side: Side) -> [u8; 16] {
    while relay.poll_transmit().is_some() {}
    relay.handle_datagram(now, from, &client::bind(circuit, side));
    let t = relay.poll_transmit().expect("a challenge");
    match Packet::decode(&t.contents) {
        Ok(Packet::Challenge { challenge, .. }) => challenge,
        other => panic!("no challenge: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let (a, b) = (Identity::from_secret_bytes([1; 32]), Identity::from_secret_bytes([2; 32]));
    let ends: [SocketAddr; 2] = ["198.18.0.10:4000".parse().expect("addr"), "198.18.0.20:5000".parse().expect("addr")];
    let strangers: [SocketAddr; 3] =
        ["198.18.1.1:1".parse().expect("addr"), "198.18.1.2:2".parse().expect("addr"), "[2001:db8::1]:3".parse().expect("addr")];
    let mut relay = Relay::new(RelayConfig::default(), [3; 32], start, UNIX);
    relay.handle_datagram(start, ends[0], &client::allocate(&a, &b.public_key(), [1; 8], UNIX));
    let circuit = match relay.poll_transmit().map(|t| Packet::decode(&t.contents).map(|p| match p {
        Packet::Allocated { circuit, .. } => circuit,
        _ => 0,
    })) {
        Some(Ok(c)) if c != 0 => c,
        other => panic!("no grant: {other:?}"),
    };
    for (who, side) in [(&a, Side::A), (&b, Side::B)] {
        let from = ends[side.index()];
        let c = challenge(&mut relay, start, from, circuit, side);
        relay.handle_datagram(start, from, &client::answer(who, circuit, side, c));
    }
    while relay.poll_transmit().is_some() {}

    let mut now = start;
    let mut rest = data;
    // Chunks: [sender+steer, time step, len, bytes...]
    while rest.len() >= 3 {
        let (sel, step, len) = (rest[0], rest[1], usize::from(rest[2]));
        rest = &rest[3..];
        let len = len.min(rest.len());
        let (body, tail) = rest.split_at(len);
        rest = tail;
        let mut dgram = body.to_vec();
        if let Some(first) = dgram.first_mut() {
            *first = 0xD0 + *first % 11;
        }
        // Name the real circuit now and then, to get past the lookup.
        if sel & 0x80 != 0 && dgram.len() >= 10 {
            let at = if dgram[0] == 0xD7 { 1 } else { 2 };
            dgram[at..at + 8].copy_from_slice(&circuit.to_be_bytes());
        }
        now += Duration::from_millis(u64::from(step) * 97);
        let who = usize::from(sel & 0x7F) % 5;
        let from = if who < 2 { ends[who] } else { strangers[who - 2] };
        // Expiries first: what they send goes to the ends alone.
        if relay.poll_timeout().is_some_and(|t| t <= now) {
            relay.handle_timeout(now);
        }
        while let Some(t) = relay.poll_transmit() {
            assert!(ends.contains(&t.destination), "an expiry sent to {}", t.destination);
        }
        // Now and then data takes the way `convoke relay`'s driver takes
        // it: `forward` names where the bytes go, only ever an end.
        if sel & 0x40 != 0 && dgram.first() == Some(&0xD7) {
            if let Some(to) = relay.forward(now, from, &dgram) {
                assert!(who < 2 && ends.contains(&to) && to != from, "forwarded from {from} to {to}");
            }
        } else {
            relay.handle_datagram(now, from, &dgram);
        }
        while let Some(t) = relay.poll_transmit() {
            if who >= 2 {
                assert_eq!(t.destination, from, "a stranger's packet made the relay send elsewhere");
                assert!(t.contents.len() <= dgram.len(), "amplified {} into {}", dgram.len(), t.contents.len());
            } else {
                assert!(ends.contains(&t.destination), "sent to {}", t.destination);
            }
        }
        while relay.poll_event().is_some() {}
    }
});
