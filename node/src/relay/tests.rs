use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::identity::Identity;

const UNIX: u64 = 1_800_000_000;

fn id(n: u8) -> Identity {
    Identity::from_secret_bytes([n; 32])
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("an address")
}

struct World {
    relay: Relay,
    t0: Instant,
    now: Instant,
}

impl World {
    fn new(limits: RelayLimits) -> Self {
        let now = Instant::now();
        Self { relay: Relay::new(RelayConfig { limits, allow: None }, [7; 32], now, UNIX), t0: now, now }
    }

    fn unix(&self) -> u64 {
        UNIX + (self.now - self.t0).as_secs()
    }

    /// Moves the clock on; returns what the expiries sent.
    fn advance(&mut self, d: Duration) -> Vec<Transmit> {
        self.now += d;
        self.relay.handle_timeout(self.now);
        std::iter::from_fn(|| self.relay.poll_transmit()).collect()
    }

    /// Sends `data` from `from`; returns everything the relay sent.
    fn send(&mut self, from: SocketAddr, data: &[u8]) -> Vec<Transmit> {
        self.relay.handle_datagram(self.now, from, data);
        std::iter::from_fn(|| self.relay.poll_transmit()).collect()
    }

    /// The only packet the relay sent to `to`, decoded and owned.
    fn answer(&mut self, from: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
        let out = self.send(from, data);
        assert!(out.len() <= 2, "{out:?}");
        out.into_iter().find(|t| t.destination == from).map(|t| t.contents)
    }

    fn allocate(&mut self, a: &Identity, b: &Identity, from: SocketAddr, nonce: u8) -> Result<u64, Reason> {
        let req = client::allocate(a, &b.public_key(), [nonce; 8], self.unix());
        let got = self.answer(from, &req).expect("an answer to a signed request");
        match Packet::decode(&got).expect("a relay packet") {
            Packet::Allocated { nonce: n, circuit, .. } => {
                assert_eq!(n, [nonce; 8]);
                Ok(circuit)
            }
            Packet::Refused { reason, .. } => Err(reason),
            p => panic!("unexpected {p:?}"),
        }
    }

    /// A full three-way bind; returns what the relay sent to anyone.
    fn bind(&mut self, who: &Identity, from: SocketAddr, circuit: u64, side: Side) -> Vec<Transmit> {
        let got = self.answer(from, &client::bind(circuit, side)).expect("a challenge");
        let Ok(Packet::Challenge { challenge, .. }) = Packet::decode(&got) else { panic!("not a challenge: {got:?}") };
        self.send(from, &client::answer(who, circuit, side, challenge))
    }

    /// A circuit between A and B, both ends bound.
    fn circuit(&mut self, a: &Identity, b: &Identity, at: SocketAddr, bt: SocketAddr) -> u64 {
        let c = self.allocate(a, b, at, 1).expect("granted");
        assert!(!self.bind(a, at, c, Side::A).is_empty());
        let out = self.bind(b, bt, c, Side::B);
        // B hears it is bound and its peer is there; A hears B arrived.
        assert_eq!(out.len(), 2, "{out:?}");
        for t in &out {
            assert!(matches!(Packet::decode(&t.contents), Ok(Packet::Bound { peer_bound: true, .. })));
        }
        c
    }
}

#[test]
fn a_circuit_forwards_both_ways_unchanged_and_only_between_its_two_ends() {
    let mut w = World::new(RelayLimits::default());
    let (a, b) = (id(1), id(2));
    let (at, bt, eve) = (addr("198.18.0.10:4000"), addr("198.18.0.20:5000"), addr("198.18.0.66:6000"));
    let c = w.circuit(&a, &b, at, bt);

    let msg = client::data(c, b"sealed by the ends");
    let out = w.send(at, &msg);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].destination, &out[0].contents), (bt, &msg));
    let back = client::data(c, b"and back");
    let out = w.send(bt, &back);
    assert_eq!((out[0].destination, &out[0].contents), (at, &back));

    // A third address gets nothing through, and no answer.
    assert!(w.send(eve, &client::data(c, b"spoof")).is_empty());
    // Nor does a circuit number nobody was given.
    assert!(w.send(at, &client::data(c ^ 1, b"guess")).is_empty());
    assert_eq!(w.relay.stats().forwarded_packets, 2);
    assert_eq!(w.relay.stats().dropped_unbound, 2);
    // A keepalive from a bound end is answered with its binding (shorter);
    // from elsewhere, dropped.
    let ping = Packet::Ping { circuit: c, side: Side::A, seq: 9 }.encode();
    let bound = Packet::Bound { circuit: c, side: Side::A, peer_bound: true }.encode();
    assert!(bound.len() < ping.len());
    assert_eq!(w.answer(at, &ping), Some(bound));
    assert!(w.send(eve, &ping).is_empty());
}

#[test]
fn only_the_named_keys_bind_and_a_replayed_answer_from_elsewhere_fails() {
    let mut w = World::new(RelayLimits::default());
    let (a, b, eve) = (id(1), id(2), id(3));
    let (at, bt, victim) = (addr("198.18.0.10:4000"), addr("198.18.0.20:5000"), addr("198.18.0.99:53"));
    let c = w.allocate(&a, &b, at, 1).expect("granted");

    // Eve holds a challenge for her own address but not B's key.
    let got = w.answer(victim, &client::bind(c, Side::B)).expect("a challenge");
    let Ok(Packet::Challenge { challenge, .. }) = Packet::decode(&got) else { panic!() };
    assert!(w.send(victim, &client::answer(&eve, c, Side::B, challenge)).is_empty());

    // B's real answer, captured and replayed from the victim's address,
    // fails: the challenge was B's address's.
    let got = w.answer(bt, &client::bind(c, Side::B)).expect("a challenge");
    let Ok(Packet::Challenge { challenge, .. }) = Packet::decode(&got) else { panic!() };
    let answer = client::answer(&b, c, Side::B, challenge);
    assert!(w.send(victim, &answer).is_empty());
    assert_eq!(w.relay.stats().dropped_forged, 2);
    // From B's own address it binds.
    let out = w.send(bt, &answer);
    assert!(matches!(Packet::decode(&out[0].contents), Ok(Packet::Bound { peer_bound: false, .. })));
    assert_eq!(w.relay.stats().bound, 1);
}

#[test]
fn a_challenge_lives_one_secret_period_more_then_fails() {
    // Circuits wait for their ends longer than the secrets live.
    let mut w = World::new(RelayLimits { unbound_timeout: Duration::from_secs(300), ..RelayLimits::default() });
    let (a, b) = (id(1), id(2));
    let at = addr("198.18.0.10:4000");
    let c = w.allocate(&a, &b, at, 1).expect("granted");
    let got = w.answer(at, &client::bind(c, Side::A)).expect("a challenge");
    let Ok(Packet::Challenge { challenge, .. }) = Packet::decode(&got) else { panic!() };
    let answer = client::answer(&a, c, Side::A, challenge);
    w.advance(SECRET_PERIOD + Duration::from_secs(1));
    // The previous secret still checks (the circuit is not yet expired).
    assert_eq!(w.send(at, &answer).len(), 1);
    w.advance(SECRET_PERIOD * 2);
    let c2 = w.allocate(&a, &b, at, 2).expect("granted");
    let got = w.answer(at, &client::bind(c2, Side::A)).expect("a challenge");
    let Ok(Packet::Challenge { challenge, .. }) = Packet::decode(&got) else { panic!() };
    let answer = client::answer(&a, c2, Side::A, challenge);
    w.advance(SECRET_PERIOD * 2 + Duration::from_secs(1));
    assert!(w.send(at, &answer).is_empty(), "a challenge two periods old still bound");
}

#[test]
fn caps_on_circuits_in_all_and_per_peer_refuse_with_a_reason() {
    let limits = RelayLimits { circuits: Some(5), circuits_per_peer: Some(2), ..RelayLimits::default() };
    let mut w = World::new(limits);
    let at = addr("198.18.0.10:4000");
    let a = id(1);
    assert!(w.allocate(&a, &id(2), at, 1).is_ok());
    assert!(w.allocate(&a, &id(3), at, 2).is_ok());
    assert_eq!(w.allocate(&a, &id(4), at, 3), Err(Reason::TooManyForPeer));
    // The peer side counts too.
    assert!(w.allocate(&id(5), &id(2), at, 4).is_ok());
    assert_eq!(w.allocate(&id(6), &id(2), at, 5), Err(Reason::TooManyForPeer));
    assert!(w.allocate(&id(7), &id(8), at, 6).is_ok());
    assert!(w.allocate(&id(9), &id(10), at, 7).is_ok());
    assert_eq!(w.allocate(&id(11), &id(12), at, 8), Err(Reason::TooManyCircuits));
    assert_eq!(w.relay.stats().refused, 3);
    // A retransmitted request gets the same circuit, not a new one.
    let first = w.allocate(&id(7), &id(8), at, 6).expect("the same grant");
    assert_eq!(w.allocate(&id(7), &id(8), at, 6), Ok(first));
    assert_eq!(w.relay.circuit_count(), 5);
    // When circuits end (unbound, 30 s), their places come back.
    w.advance(Duration::from_secs(31));
    assert_eq!(w.relay.circuit_count(), 0);
    assert!(w.allocate(&a, &id(4), at, 9).is_ok());
}

#[test]
fn stale_forged_and_unlisted_requests() {
    let mut w = World::new(RelayLimits::default());
    let (a, b) = (id(1), id(2));
    let at = addr("198.18.0.10:4000");
    // Three minutes off the relay's clock: refused, with the reason.
    let old = client::allocate(&a, &b.public_key(), [1; 8], UNIX - 180);
    let got = w.answer(at, &old).expect("an authenticated refusal");
    assert!(matches!(Packet::decode(&got), Ok(Packet::Refused { reason: Reason::Stale, .. })));
    // A signature by the wrong key: no answer at all.
    let mut forged = client::allocate(&id(3), &b.public_key(), [2; 8], UNIX);
    forged[18..50].copy_from_slice(&a.public_key().0);
    assert!(w.send(at, &forged).is_empty());
    assert_eq!(w.relay.stats().dropped_forged, 1);

    let allow = [b.public_key()].into_iter().collect();
    let mut listed =
        Relay::new(RelayConfig { limits: RelayLimits::default(), allow: Some(allow) }, [1; 32], w.now, UNIX);
    listed.handle_datagram(w.now, at, &client::allocate(&a, &b.public_key(), [3; 8], UNIX));
    let t = listed.poll_transmit().expect("a refusal");
    assert!(matches!(Packet::decode(&t.contents), Ok(Packet::Refused { reason: Reason::NotAllowed, .. })));
    listed.handle_datagram(w.now, at, &client::allocate(&b, &a.public_key(), [3; 8], UNIX));
    let t = listed.poll_transmit().expect("a grant");
    assert!(matches!(Packet::decode(&t.contents), Ok(Packet::Allocated { .. })));
}

#[test]
fn a_circuit_ends_at_its_byte_cap_and_tells_both_ends() {
    let limits = RelayLimits { circuit_bytes: Some(10_000), circuit_rate: None, ..RelayLimits::default() };
    let mut w = World::new(limits);
    let (a, b) = (id(1), id(2));
    let (at, bt) = (addr("198.18.0.10:4000"), addr("198.18.0.20:5000"));
    let c = w.circuit(&a, &b, at, bt);
    let chunk = client::data(c, &[0xAB; 1000]);
    for _ in 0..10 {
        assert_eq!(w.send(at, &chunk).len(), 1);
    }
    let out = w.send(at, &chunk);
    let mut told: Vec<SocketAddr> = out.iter().map(|t| t.destination).collect();
    told.sort();
    assert_eq!(told, vec![at, bt]);
    for t in &out {
        assert_eq!(Packet::decode(&t.contents), Ok(Packet::Closed { circuit: c, reason: Reason::Bytes }));
    }
    assert!(matches!(w.relay.poll_event(), Some(RelayEvent::Allocated { .. })));
    let events: Vec<RelayEvent> = std::iter::from_fn(|| w.relay.poll_event()).collect();
    assert!(events.contains(&RelayEvent::Closed {
        circuit: c,
        reason: Reason::Bytes,
        bytes: 10_000,
        lived: Duration::ZERO
    }));
    assert!(w.send(at, &chunk).is_empty());
}

#[test]
fn the_rate_cap_drops_what_is_over_and_refills() {
    let limits =
        RelayLimits { circuit_rate: Some(100_000), circuit_bytes: None, total_rate: None, ..RelayLimits::default() };
    let mut w = World::new(limits);
    let (a, b) = (id(1), id(2));
    let (at, bt) = (addr("198.18.0.10:4000"), addr("198.18.0.20:5000"));
    let c = w.circuit(&a, &b, at, bt);
    let chunk = client::data(c, &[1; 1000]);
    let passed = (0..200).filter(|_| !w.send(at, &chunk).is_empty()).count();
    // One second's worth (100 KB) goes through at once, the rest waits.
    assert_eq!(passed, 100);
    assert_eq!(w.relay.stats().dropped_rate, 100);
    w.now += Duration::from_millis(500);
    let passed = (0..200).filter(|_| !w.send(at, &chunk).is_empty()).count();
    assert_eq!(passed, 50);
}

#[test]
fn circuits_expire_unbound_idle_and_at_their_lifetime() {
    let mut w =
        World::new(RelayLimits { circuit_duration: Some(Duration::from_secs(600)), ..RelayLimits::unlimited() });
    let (a, b) = (id(1), id(2));
    let (at, bt) = (addr("198.18.0.10:4000"), addr("198.18.0.20:5000"));
    // (Nonce 9: `circuit` asks with nonce 1, which would be a retransmission.)
    let unbound = w.allocate(&a, &b, at, 9).expect("granted");
    let busy = w.circuit(&a, &b, at, bt);
    let idle = w.circuit(&id(3), &id(4), at, bt);
    let closed_by = |w: &mut World| -> Vec<(u64, Reason)> {
        std::iter::from_fn(|| w.relay.poll_event())
            .filter_map(|e| match e {
                RelayEvent::Closed { circuit, reason, .. } => Some((circuit, reason)),
                _ => None,
            })
            .collect()
    };
    w.advance(Duration::from_secs(29));
    assert!(closed_by(&mut w).is_empty());
    w.advance(Duration::from_secs(2));
    assert_eq!(closed_by(&mut w), vec![(unbound, Reason::Unbound)]);
    // The busy circuit carries a packet a minute; the idle one nothing.
    for minute in 1..=5 {
        let closes = w.advance(Duration::from_secs(60));
        // At 5 minutes and 31 s the idle circuit's two ends hear it ended.
        assert_eq!(closes.len(), if minute == 5 { 2 } else { 0 }, "{closes:?}");
        let out = w.send(at, &client::data(busy, b"x"));
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].destination, bt);
    }
    assert_eq!(closed_by(&mut w), vec![(idle, Reason::Idle)]);
    // At 560 s the busy one still lives (last active at 331 s); at 601 s
    // its ten minutes are over.
    w.advance(Duration::from_secs(229));
    assert!(closed_by(&mut w).is_empty());
    w.advance(Duration::from_secs(41));
    assert_eq!(closed_by(&mut w), vec![(busy, Reason::Duration)]);
    assert!(w.relay.poll_timeout().is_some());
}

#[test]
fn a_half_bound_circuit_lives_while_its_end_speaks_then_30_s() {
    let mut w = World::new(RelayLimits::unlimited());
    let (a, b) = (id(1), id(2));
    let at = addr("198.18.0.10:4000");
    let c = w.allocate(&a, &b, at, 1).expect("granted");
    w.bind(&a, at, c, Side::A);
    let ping = Packet::Ping { circuit: c, side: Side::A, seq: 1 }.encode();
    // A minute of keepalives every 10 s: still there.
    for _ in 0..6 {
        w.advance(Duration::from_secs(10));
        assert!(w.answer(at, &ping).is_some());
    }
    assert_eq!(w.relay.circuit_count(), 1);
    // Silence: 30 s after its last word it ends, and the end hears why.
    w.advance(Duration::from_secs(29));
    assert_eq!(w.relay.circuit_count(), 1);
    let told = w.advance(Duration::from_secs(2));
    assert_eq!(w.relay.circuit_count(), 0);
    assert_eq!(told.len(), 1);
    assert_eq!(Packet::decode(&told[0].contents), Ok(Packet::Closed { circuit: c, reason: Reason::Unbound }));
}

#[test]
fn a_bound_end_releases_its_circuit_and_only_a_bound_end_can() {
    let mut w = World::new(RelayLimits::default());
    let (at, bt, eve) = (addr("198.18.0.10:4000"), addr("198.18.0.20:5000"), addr("198.18.0.66:6000"));
    let c = w.circuit(&id(1), &id(2), at, bt);
    let mut end = client::CircuitEnd::join(addr("198.18.0.1:3479"), c, w.now);
    let release = end.release().expect("a circuit to give back");
    assert_eq!(end.state(), client::EndState::Failed(Reason::Released));
    assert_eq!(end.release(), None, "given back once");
    // From an address bound to no end of it: nothing happens, no answer.
    assert!(w.send(eve, &release).is_empty());
    assert_eq!(w.relay.circuit_count(), 1);
    // From B's address: it ends, and both ends hear why (as long a packet
    // as the release, to an address that bound).
    let out = w.send(bt, &release);
    assert_eq!(out.len(), 2, "{out:?}");
    for t in &out {
        assert!([at, bt].contains(&t.destination));
        assert_eq!(t.contents.len(), release.len());
        assert_eq!(Packet::decode(&t.contents), Ok(Packet::Closed { circuit: c, reason: Reason::Released }));
    }
    assert_eq!(w.relay.circuit_count(), 0);
    assert_eq!(w.relay.stats().released, 1);
    // Gone: data on it goes nowhere, a second release draws nothing.
    assert!(w.send(at, &client::data(c, b"late")).is_empty());
    assert!(w.send(at, &release).is_empty());
    // An end still asking for its circuit has nothing to give back.
    let mut asking =
        client::CircuitEnd::request(addr("198.18.0.1:3479"), &id(1), &id(2).public_key(), [5; 8], w.now, w.unix());
    assert_eq!(asking.release(), None);
}

#[test]
fn forward_routes_data_as_handle_datagram_would_without_a_copy() {
    let mut w = World::new(RelayLimits { circuit_bytes: Some(100), ..RelayLimits::default() });
    let (at, bt, eve) = (addr("198.18.0.10:4000"), addr("198.18.0.20:5000"), addr("198.18.0.66:6000"));
    let c = w.circuit(&id(1), &id(2), at, bt);
    let now = w.now;
    assert_eq!(w.relay.forward(now, at, &client::data(c, &[1; 60])), Some(bt));
    assert_eq!(w.relay.forward(now, bt, &client::data(c, b"back")), Some(at));
    assert!(w.relay.poll_transmit().is_none(), "forwarded bytes are the driver's to send");
    // Not data: left to handle_datagram. From a stranger: dropped, counted.
    let ping = Packet::Ping { circuit: c, side: Side::A, seq: 1 }.encode();
    assert_eq!(w.relay.forward(now, at, &ping), None);
    assert_eq!(w.relay.forward(now, at, &[crate::relay::wire::DATA, 0, 0]), None);
    assert_eq!(w.relay.stats().dropped_malformed, 1);
    assert_eq!(w.relay.forward(now, eve, &client::data(c, b"spoof")), None);
    assert_eq!(w.relay.stats().dropped_unbound, 1);
    assert_eq!((w.relay.stats().forwarded_packets, w.relay.stats().forwarded_bytes), (2, 64));
    // Past the byte cap the circuit ends, and both ends are told.
    assert_eq!(w.relay.forward(now, at, &client::data(c, &[2; 40])), None);
    let told: Vec<Transmit> = std::iter::from_fn(|| w.relay.poll_transmit()).collect();
    assert_eq!(told.len(), 2);
    assert_eq!(w.relay.circuit_count(), 0);
}

#[test]
fn a_binding_end_answers_one_challenge_a_bind() {
    let t0 = Instant::now();
    let relay = addr("198.18.0.1:3479");
    let mut end = client::CircuitEnd::join(relay, 42, t0);
    assert_eq!(end.poll_transmit(), Some(client::bind(42, Side::B)));
    let challenge = |n: u8| Packet::Challenge { circuit: 42, side: Side::B, challenge: [n; 16] };
    // Challenges forged with the relay's address: one answer, not one each.
    for n in 0..5 {
        end.handle(t0, &id(2), &challenge(n));
    }
    let answer = end.poll_transmit().expect("an answer");
    assert!(matches!(Packet::decode(&answer), Ok(Packet::Answer { challenge, .. }) if challenge == [0; 16]));
    assert_eq!(end.poll_transmit(), None);
    end.handle(t0, &id(2), &challenge(9));
    assert_eq!(end.poll_transmit(), None, "a second answer before the bind went again");
    // The bind goes again (its answer was lost): the next challenge is answered.
    let again = end.poll_timeout().expect("a retransmission");
    end.handle_timeout(again);
    assert_eq!(end.poll_transmit(), Some(client::bind(42, Side::B)));
    end.handle(again, &id(2), &challenge(7));
    let answer = end.poll_transmit().expect("an answer");
    assert!(matches!(Packet::decode(&answer), Ok(Packet::Answer { challenge, .. }) if challenge == [7; 16]));
}

#[test]
fn shutdown_tells_every_bound_end() {
    let mut w = World::new(RelayLimits::default());
    let (at, bt) = (addr("198.18.0.10:4000"), addr("198.18.0.20:5000"));
    let c = w.circuit(&id(1), &id(2), at, bt);
    w.relay.shutdown(w.now);
    let out: Vec<Transmit> = std::iter::from_fn(|| w.relay.poll_transmit()).collect();
    assert_eq!(out.len(), 2);
    assert!(
        out.iter().all(|t| Packet::decode(&t.contents) == Ok(Packet::Closed { circuit: c, reason: Reason::Shutdown }))
    );
    assert_eq!(w.relay.circuit_count(), 0);
}

#[test]
fn codec_round_trips_and_rejects_bad_lengths_and_versions() {
    let k = id(1).public_key();
    let packets = [
        Packet::Allocate { nonce: [1; 8], unix_s: 5, a: k, b: k, sig: [9; 64] },
        Packet::Allocated { nonce: [1; 8], circuit: 77, lifetime_s: 120, bytes: 131_072, rate: 65_536 },
        Packet::Refused { nonce: [2; 8], reason: Reason::Stale },
        Packet::Bind { circuit: 3, side: Side::B },
        Packet::Challenge { circuit: 3, side: Side::A, challenge: [4; 16] },
        Packet::Answer { circuit: 3, side: Side::B, challenge: [4; 16], sig: [5; 64] },
        Packet::Bound { circuit: 3, side: Side::A, peer_bound: true },
        Packet::Data { circuit: 3, payload: b"hello" },
        Packet::Ping { circuit: 3, side: Side::B, seq: 7 },
        Packet::Closed { circuit: 3, reason: Reason::Idle },
    ];
    for p in &packets {
        let b = p.encode();
        assert!(is_relay_packet(b[0]));
        assert_eq!(Packet::decode(&b).as_ref(), Ok(p));
        if !matches!(p, Packet::Data { .. }) {
            assert!(matches!(Packet::decode(&b[..b.len() - 1]), Err(DecodeError::Length { .. })));
            let mut v = b.clone();
            v[1] = 2;
            assert_eq!(Packet::decode(&v), Err(DecodeError::Version(2)));
        }
    }
    // The sizes the anti-amplification rule rests on.
    assert_eq!(packets[3].encode().len(), packets[4].encode().len());
    assert!(packets[6].encode().len() < packets[5].encode().len());
    assert!(packets[1].encode().len() < packets[0].encode().len());
    assert_eq!(Packet::decode(&[]), Err(DecodeError::NotRelay));
    assert_eq!(Packet::decode(&[0xE3, 1]), Err(DecodeError::NotRelay));
    let mut bind = packets[3].encode();
    bind[20] = 1;
    assert_eq!(Packet::decode(&bind), Err(DecodeError::Field));
}

proptest! {
    /// Whatever arrives from addresses that never bound, the relay sends
    /// back no more bytes than each packet had, and to nobody else.
    #[test]
    fn never_answers_an_unbound_sender_with_more_bytes_than_it_sent(
        packets in prop::collection::vec((0usize..3, prop::collection::vec(any::<u8>(), 0..200), 0xD0u8..=0xDA, any::<bool>()), 1..60)
    ) {
        let mut w = World::new(RelayLimits::default());
        let (a, b) = (id(1), id(2));
        let (at, bt) = (addr("198.18.0.10:4000"), addr("198.18.0.20:5000"));
        let c = w.circuit(&a, &b, at, bt);
        let senders = [addr("198.18.0.66:1"), addr("198.18.0.67:2"), addr("[2001:db8::1]:3")];
        for (who, mut body, kind, aim) in packets {
            // Half the packets are well formed and name the real circuit,
            // to reach the code past the decoder.
            let body = if aim {
                match kind % 5 {
                    0 => client::bind(c, if who == 0 { Side::A } else { Side::B }),
                    1 => client::data(c, &body),
                    2 => Packet::Ping { circuit: c, side: Side::B, seq: 1 }.encode(),
                    3 => Packet::Answer { circuit: c, side: Side::A, challenge: [0; 16], sig: [0; 64] }.encode(),
                    _ => client::allocate(&id(9), &a.public_key(), [kind; 8], UNIX),
                }
            } else {
                if let Some(first) = body.first_mut() {
                    *first = kind;
                }
                body
            };
            let from = senders[who];
            for t in w.send(from, &body) {
                prop_assert_eq!(t.destination, from);
                prop_assert!(t.contents.len() <= body.len());
            }
        }
    }
}

/// Circuit ends and a relay in virtual time; `drop` decides, per packet
/// number, whether the wire loses it.
struct Ends {
    w: World,
    ends: Vec<(client::CircuitEnd, SocketAddr, Identity)>,
    sent: usize,
}

impl Ends {
    fn pump(&mut self, drop: &dyn Fn(usize) -> bool) {
        for _ in 0..100 {
            let mut moved = false;
            for i in 0..self.ends.len() {
                let (end, at, _) = &mut self.ends[i];
                end.handle_timeout(self.w.now);
                let at = *at;
                while let Some(p) = end.poll_transmit() {
                    moved = true;
                    self.sent += 1;
                    if drop(self.sent) {
                        continue;
                    }
                    self.w.relay.handle_datagram(self.w.now, at, &p);
                }
            }
            while let Some(t) = self.w.relay.poll_transmit() {
                moved = true;
                self.sent += 1;
                if drop(self.sent) {
                    continue;
                }
                for (end, at, id) in &mut self.ends {
                    if *at == t.destination {
                        let p = Packet::decode(&t.contents).expect("the relay's packets decode");
                        end.handle(self.w.now, id, &p);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("no quiet after 100 rounds");
    }

    /// Runs until `until`, jumping from deadline to deadline.
    fn run(&mut self, until: Instant, drop: &dyn Fn(usize) -> bool) {
        loop {
            self.pump(drop);
            let next = self.ends.iter().filter_map(|e| e.0.poll_timeout()).chain(self.w.relay.poll_timeout()).min();
            match next {
                Some(t) if t <= until => {
                    self.w.now = self.w.now.max(t);
                    self.w.relay.handle_timeout(self.w.now);
                }
                _ => {
                    self.w.now = until;
                    self.w.relay.handle_timeout(until);
                    self.pump(drop);
                    return;
                }
            }
        }
    }

    fn states(&self) -> Vec<client::EndState> {
        self.ends.iter().map(|e| e.0.state()).collect()
    }
}

fn ends_on(limits: RelayLimits) -> Ends {
    Ends { w: World::new(limits), ends: Vec::new(), sent: 0 }
}

#[test]
fn a_requester_and_its_peer_bind_one_circuit_through_loss_and_keep_it_alive() {
    let mut e = ends_on(RelayLimits::unlimited());
    let relay = addr("198.18.0.1:3479");
    let (a, b) = (id(1), id(2));
    let (at, bt) = (addr("198.18.0.10:4000"), addr("198.18.0.20:5000"));
    let req = client::CircuitEnd::request(relay, &a, &b.public_key(), [1; 8], e.w.now, e.w.unix());
    e.ends.push((req, at, a));
    // About two packets in seven lost, both ways, in a scrambled pattern
    // (a period of 3 would always take the bind's answer).
    let lossy = |n: usize| (n.wrapping_mul(2_654_435_761) >> 7) % 7 < 2;
    let until = e.w.now + Duration::from_secs(5);
    e.run(until, &lossy);
    assert!((1..=e.sent).filter(|&n| lossy(n)).count() >= 2, "the wire lost nothing");
    let client::EndState::Bound { circuit, peer_bound: false } = e.states()[0] else { panic!("{:?}", e.states()) };
    // The circuit number travels to B (in a token, later); B joins.
    let join = client::CircuitEnd::join(relay, circuit, e.w.now);
    e.ends.push((join, bt, b));
    let until = e.w.now + Duration::from_secs(5);
    e.run(until, &lossy);
    assert_eq!(e.states(), vec![client::EndState::Bound { circuit, peer_bound: true }; 2]);
    // Ten idle minutes: the ends' keepalives hold the circuit open (the
    // relay closes circuits idle for five).
    let until = e.w.now + Duration::from_secs(600);
    e.run(until, &|_| false);
    assert_eq!(e.states(), vec![client::EndState::Bound { circuit, peer_bound: true }; 2]);
    assert_eq!(e.w.relay.circuit_count(), 1);
}

#[test]
fn a_circuit_end_reports_refusal_closure_and_silence() {
    // Refused: the peer is in as many circuits as allowed.
    let mut e = ends_on(RelayLimits { circuits_per_peer: Some(1), ..RelayLimits::default() });
    let relay = addr("198.18.0.1:3479");
    let (a, b) = (id(1), id(2));
    for (n, at) in [(1u8, addr("198.18.0.10:4000")), (2, addr("198.18.0.11:4000"))] {
        let end = client::CircuitEnd::request(relay, &a, &b.public_key(), [n; 8], e.w.now, e.w.unix());
        e.ends.push((end, at, id(1)));
    }
    let until = e.w.now + Duration::from_secs(1);
    e.run(until, &|_| false);
    assert!(matches!(e.states()[0], client::EndState::Bound { .. }));
    assert_eq!(e.states()[1], client::EndState::Failed(Reason::TooManyForPeer));
    // The first circuit's peer never binds. Its bound end keeps asking, so
    // the circuit waits past the 30 s an unbound circuit gets (a person may
    // be carrying the token that names it), until its lifetime (2 minutes).
    let until = e.w.now + Duration::from_secs(45);
    e.run(until, &|_| false);
    assert!(matches!(e.states()[0], client::EndState::Bound { peer_bound: false, .. }));
    let until = e.w.now + Duration::from_secs(76);
    e.run(until, &|_| false);
    assert_eq!(e.states()[0], client::EndState::Failed(Reason::Duration));

    // Silence: nothing comes back; the end gives up after its tries.
    let mut e = ends_on(RelayLimits::default());
    let end = client::CircuitEnd::request(relay, &a, &b.public_key(), [3; 8], e.w.now, e.w.unix());
    e.ends.push((end, addr("198.18.0.12:4000"), id(1)));
    let start = e.w.now;
    let until = start + Duration::from_secs(60);
    e.run(until, &|_| true);
    assert_eq!(e.states()[0], client::EndState::Unreachable);
    assert_eq!(e.sent, client::TRIES as usize);
    assert!(e.ends[0].0.poll_timeout().is_none());
}

#[test]
fn relay_hints_round_trip_and_leave_other_hints_alone() {
    use client::Hint;
    let r = addr("198.18.0.9:3479");
    let v6 = addr("[2001:db8::9]:3479");
    for h in [Hint::Relay(r), Hint::Circuit(r, 0x00c0_ffee_0000_0001), Hint::Relay(v6), Hint::Circuit(v6, u64::MAX)] {
        assert_eq!(Hint::parse(&h.to_string()), Some(h), "{h}");
    }
    assert_eq!(Hint::Circuit(r, 1).to_string(), "convoke-relay:198.18.0.9:3479#0000000000000001");
    for other in [
        "turn:198.18.0.9:3478",
        "convoke-relay:",
        "convoke-relay:relay.example:3479",
        "convoke-relay:198.18.0.9:3479#1",
        "convoke-relay:198.18.0.9:3479#0000000000000000",
        "convoke-relay:198.18.0.9:3479#zzzzzzzzzzzzzzzz",
        "convoke-relay:198.18.0.9:3479#00000000000000001",
    ] {
        assert_eq!(Hint::parse(other), None, "{other}");
    }
}
