//! Two hosts on a virtual wire with latency, seeded loss and an optional
//! inbound filter on the inviter (an address-and-port-dependent NAT's):
//! handshake, stream and datagrams end to end through the real engine.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use super::*;
use crate::identity::Identity;
use crate::relay::client::Hint;
use crate::token::{Candidate, ConnectionMode, InvitationParams, Token};

const UNIX: u64 = 1_800_000_000;

type DropFn = Box<dyn FnMut(usize, &[u8]) -> bool>;
type TamperFn = Box<dyn FnMut(usize, &mut Vec<u8>)>;

struct Peer {
    host: Host,
    addr: SocketAddr,
    identity: Identity,
    filter: bool,
    contacted: HashSet<SocketAddr>,
    events: Vec<HostEvent>,
    received: Vec<u8>,
    /// The app does not read (its output is blocked).
    paused: bool,
}

struct Net {
    now: Instant,
    start: Instant,
    latency: Duration,
    loss: f64,
    rng: ChaCha20Rng,
    peers: Vec<Peer>,
    wire: BTreeMap<(Instant, u64), (usize, SocketAddr, Vec<u8>)>,
    seq: u64,
    /// Returns true to drop a datagram sent by peer `i`.
    drop: Option<DropFn>,
    lost: u64,
    /// Pairs of peers with no path between them (both ways), as between
    /// two symmetric NATs.
    blocked: Vec<(usize, usize)>,
    /// May change a datagram peer `i` sends (a relay that tampers).
    tamper: Option<TamperFn>,
}

impl Net {
    fn new(config: HostConfig) -> Net {
        let start = Instant::now();
        let peers = (0..2u8)
            .map(|i| {
                let identity = Identity::from_secret_bytes([i + 40; 32]);
                Peer {
                    host: Host::new(&identity, config.clone(), [i + 1; 32], start, UNIX),
                    addr: format!("198.18.0.{}:4433", i + 1).parse().expect("addr"),
                    identity,
                    filter: false,
                    contacted: HashSet::new(),
                    events: Vec::new(),
                    received: Vec::new(),
                    paused: false,
                }
            })
            .collect();
        Net {
            now: start,
            start,
            latency: Duration::from_millis(10),
            loss: 0.0,
            rng: ChaCha20Rng::seed_from_u64(9),
            peers,
            wire: BTreeMap::new(),
            seq: 0,
            drop: None,
            lost: 0,
            blocked: Vec::new(),
            tamper: None,
        }
    }

    fn invitation(&self, mode: ConnectionMode) -> Invitation {
        let params = InvitationParams {
            candidates: Candidate::list([(CandidateKind::Host, self.peers[0].addr)]),
            mode,
            ..InvitationParams::default()
        };
        let t = Token::new_invitation(&self.peers[0].identity, params, UNIX, &mut ChaCha20Rng::seed_from_u64(3));
        Invitation::from_token(t, UNIX).expect("valid")
    }

    fn collect(&mut self) {
        for i in 0..self.peers.len() {
            while let Some(t) = self.peers[i].host.poll_transmit(self.now) {
                self.peers[i].contacted.insert(t.destination);
                let Some(to) = self.peers.iter().position(|p| p.addr == t.destination) else { continue };
                if self.blocked.iter().any(|&(x, y)| (x, y) == (i, to) || (y, x) == (i, to)) {
                    self.lost += 1;
                    continue;
                }
                if self.drop.as_mut().is_some_and(|d| d(i, &t.contents))
                    || (f64::from(self.rng.next_u32()) / f64::from(u32::MAX)) < self.loss
                {
                    self.lost += 1;
                    continue;
                }
                self.seq += 1;
                let from = self.peers[i].addr;
                let mut contents = t.contents;
                if let Some(f) = self.tamper.as_mut() {
                    f(i, &mut contents);
                }
                self.wire.insert((self.now + self.latency, self.seq), (to, from, contents));
            }
            while let Some(e) = self.peers[i].host.poll_event() {
                if let HostEvent::Readable { session } = e
                    && !self.peers[i].paused
                {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = self.peers[i].host.read(session, &mut buf);
                        if n == 0 {
                            break;
                        }
                        self.peers[i].received.extend_from_slice(&buf[..n]);
                    }
                }
                self.peers[i].events.push(e);
            }
        }
    }

    fn step(&mut self) -> bool {
        self.collect();
        let next_wire = self.wire.keys().next().map(|k| k.0);
        let next_timer = self.peers.iter().filter_map(|p| p.host.poll_timeout()).min();
        let Some(next) = [next_wire, next_timer].into_iter().flatten().min() else { return false };
        self.now = self.now.max(next);
        while let Some(e) = self.wire.first_entry() {
            if e.key().0 > self.now {
                break;
            }
            let (to, from, mut bytes) = e.remove();
            let p = &mut self.peers[to];
            if p.filter && !p.contacted.contains(&from) {
                continue;
            }
            p.host.handle_datagram(self.now, from, &mut bytes);
        }
        for p in &mut self.peers {
            if p.host.poll_timeout().is_some_and(|t| t <= self.now) {
                p.host.handle_timeout(self.now);
            }
        }
        self.collect();
        true
    }

    fn drive(&mut self, limit: Duration, mut done: impl FnMut(&mut Net) -> bool) -> bool {
        let end = self.now + limit;
        for _ in 0..2_000_000 {
            if done(self) {
                return true;
            }
            if self.now > end || !self.step() {
                return done(self);
            }
        }
        false
    }

    fn established(&self, i: usize) -> Option<(AttemptId, PublicKey, Via)> {
        self.peers[i].events.iter().find_map(|e| match e {
            HostEvent::Established { session, peer, via, .. } => Some((*session, *peer, *via)),
            _ => None,
        })
    }

    /// Pushes `data` into a session as fast as the send buffer takes it,
    /// then ends the stream (`sent` becomes `usize::MAX`).
    fn feed(&mut self, i: usize, id: AttemptId, data: &[u8], sent: &mut usize) {
        if *sent == usize::MAX {
            return;
        }
        *sent += self.peers[i].host.write(id, &data[*sent..]);
        if *sent == data.len() {
            self.peers[i].host.finish(id);
            *sent = usize::MAX;
        }
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Peer 0 listens on a new invitation and peer 1 imports it.
fn start_join(net: &mut Net, mode: ConnectionMode) -> Invitation {
    let inv = net.invitation(mode);
    net.peers[0].host.listen(inv.clone());
    let now = net.now;
    net.peers[1].host.join(&inv, now);
    inv
}

/// Joins peer 1 to peer 0 and returns both session ids.
fn connect(net: &mut Net, mode: ConnectionMode) -> (AttemptId, AttemptId) {
    start_join(net, mode);
    assert!(net.drive(Duration::from_secs(10), |n| n.established(0).is_some() && n.established(1).is_some()));
    (net.established(0).expect("a").0, net.established(1).expect("b").0)
}

/// Sends `a_to_b` and `b_to_a` at once, both ended; returns when both
/// arrived and both ends were acknowledged.
fn exchange(net: &mut Net, ids: (AttemptId, AttemptId), a_to_b: &[u8], b_to_a: &[u8], limit: Duration) {
    let (mut sa, mut sb) = (0, 0);
    let done = net.drive(limit, |n| {
        n.feed(0, ids.0, a_to_b, &mut sa);
        n.feed(1, ids.1, b_to_a, &mut sb);
        n.peers[1].received.len() == a_to_b.len()
            && n.peers[0].received.len() == b_to_a.len()
            && n.peers[0].host.send_done(ids.0)
            && n.peers[1].host.send_done(ids.1)
    });
    assert!(
        done,
        "a→b {} of {}, b→a {} of {}",
        net.peers[1].received.len(),
        a_to_b.len(),
        net.peers[0].received.len(),
        b_to_a.len()
    );
    assert!(net.peers[1].received == a_to_b, "a→b bytes differ");
    assert!(net.peers[0].received == b_to_a, "b→a bytes differ");
    assert!(net.peers[0].host.recv_finished(ids.0) && net.peers[1].host.recv_finished(ids.1));
}

#[test]
fn handshake_authenticates_both_sides_and_data_flows_both_ways() {
    let mut net = Net::new(HostConfig::default());
    let ids = connect(&mut net, ConnectionMode::default());
    let (_, peer_seen_by_a, via) = net.established(0).expect("a");
    let (_, peer_seen_by_b, _) = net.established(1).expect("b");
    assert_eq!(peer_seen_by_a, net.peers[1].identity.public_key());
    assert_eq!(peer_seen_by_b, net.peers[0].identity.public_key());
    assert_eq!(via, Via::SingleToken);
    // ICE (a few round trips) plus one handshake round trip of 20 ms.
    assert!(net.now - net.start < Duration::from_millis(200), "took {:?}", net.now - net.start);
    exchange(&mut net, ids, &pattern(300_000, 1), &pattern(200_000, 2), Duration::from_secs(30));
    let info = net.peers[1].host.session(ids.1).expect("open");
    let rtt = info.rtt.expect("measured");
    assert!(rtt >= Duration::from_millis(20) && rtt < Duration::from_millis(60), "rtt {rtt:?}");
    assert_eq!(info.stats.packets_dropped, 0);
}

#[test]
fn stream_survives_five_percent_loss_and_the_window_reacts() {
    let mut net = Net::new(HostConfig::default());
    let ids = connect(&mut net, ConnectionMode::default());
    net.loss = 0.05;
    exchange(&mut net, ids, &pattern(2_000_000, 3), &pattern(50_000, 4), Duration::from_secs(120));
    let a = net.peers[0].host.session(ids.0).expect("open");
    assert!(a.stats.packets_lost > 0, "losses were detected");
    assert!(net.lost > 50);
    assert!(a.window < 16 << 20, "NewReno cut the window: {}", a.window);
}

#[test]
fn lost_handshake_initiation_is_retransmitted() {
    let mut net = Net::new(HostConfig::default());
    let mut dropped = 0;
    net.drop = Some(Box::new(move |from, d| {
        let hit = from == 1 && d[0] == HANDSHAKE_INIT && dropped < 2;
        dropped += usize::from(hit);
        hit
    }));
    let ids = connect(&mut net, ConnectionMode::default());
    assert!(net.now - net.start >= Duration::from_millis(200), "needed a retransmission");
    exchange(&mut net, ids, b"after a lost hello", b"", Duration::from_secs(10));
}

#[test]
fn lost_handshake_answer_is_sent_again_not_remade() {
    let mut net = Net::new(HostConfig::default());
    let mut dropped = false;
    net.drop = Some(Box::new(move |from, d| {
        let hit = from == 0 && d[0] == HANDSHAKE_RESP && !dropped;
        dropped |= hit;
        hit
    }));
    let ids = connect(&mut net, ConnectionMode::default());
    exchange(&mut net, ids, b"x", b"y", Duration::from_secs(10));
    assert_eq!(net.peers[0].host.stats().established, 1);
}

#[test]
fn tampered_and_replayed_packets_are_dropped() {
    let mut net = Net::new(HostConfig::default());
    let ids = connect(&mut net, ConnectionMode::default());
    // Flip a bit in five data packets from B on the wire; keep a copy of
    // one to replay later.
    let data = pattern(100_000, 5);
    let (mut sent, mut tampered) = (0usize, 0u32);
    let mut replay = None;
    let ok = net.drive(Duration::from_secs(30), |n| {
        n.feed(1, ids.1, &data, &mut sent);
        // Tamper with data on the wire directly.
        for (_, (to, _, bytes)) in n.wire.iter_mut() {
            if *to == 0 && bytes[0] == conn::DATA && bytes.len() > 100 {
                if replay.is_none() {
                    replay = Some(bytes.clone());
                } else if tampered < 5 {
                    let last = bytes.len() - 20;
                    bytes[last] ^= 1;
                    tampered += 1;
                }
            }
        }
        n.peers[0].received.len() == data.len()
    });
    assert!(ok && net.peers[0].received == data);
    assert_eq!(tampered, 5);
    let before = net.peers[0].host.session(ids.0).expect("open").stats.packets_dropped;
    assert_eq!(before, 5, "each tampered packet dropped");
    let mut old = replay.expect("captured");
    let (now, from) = (net.now, net.peers[1].addr);
    net.peers[0].host.handle_datagram(now, from, &mut old);
    let after = net.peers[0].host.session(ids.0).expect("open").stats.packets_dropped;
    assert_eq!(after, 6, "the replayed packet was dropped");
    assert_eq!(net.peers[0].received.len(), data.len());
}

#[test]
fn rekeying_on_count_keeps_data_intact() {
    let mut config = HostConfig::default();
    config.session.rekey_after_packets = 40;
    let mut net = Net::new(config);
    let ids = connect(&mut net, ConnectionMode::default());
    net.loss = 0.02;
    exchange(&mut net, ids, &pattern(400_000, 6), &pattern(100_000, 7), Duration::from_secs(60));
    let a = net.peers[0].host.session(ids.0).expect("open").stats;
    let b = net.peers[1].host.session(ids.1).expect("open").stats;
    assert!(a.rekeys >= 5 && b.rekeys >= 2, "rekeys {} / {}", a.rekeys, b.rekeys);
}

#[test]
fn datagrams_cross_both_ways() {
    let mut net = Net::new(HostConfig::default());
    let ids = connect(&mut net, ConnectionMode::default());
    assert!(net.peers[0].host.send_datagram(ids.0, b"ping"));
    assert!(net.peers[1].host.send_datagram(ids.1, b"pong"));
    assert!(!net.peers[1].host.send_datagram(ids.1, &[0u8; 1200]), "too large for one packet");
    let mut got = (None, None);
    assert!(net.drive(Duration::from_secs(2), |n| {
        got.0 = got.0.take().or_else(|| n.peers[0].host.recv_datagram(ids.0));
        got.1 = got.1.take().or_else(|| n.peers[1].host.recv_datagram(ids.1));
        got.0.is_some() && got.1.is_some()
    }));
    assert_eq!(got, (Some(b"pong".to_vec()), Some(b"ping".to_vec())));
}

#[test]
fn a_peer_close_does_not_take_the_last_unread_bytes() {
    let mut net = Net::new(HostConfig::default());
    let ids = connect(&mut net, ConnectionMode::default());
    // The reader's output is blocked: the bytes wait in its host.
    net.peers[1].paused = true;
    let data = pattern(50_000, 7);
    let mut sent = 0;
    assert!(net.drive(Duration::from_secs(10), |n| {
        n.feed(0, ids.0, &data, &mut sent);
        n.peers[1].host.readable(ids.1) == data.len()
    }));
    let now = net.now;
    net.peers[0].host.close(ids.0, now);
    net.drive(Duration::from_secs(2), |_| false);
    assert!(!net.peers[1].events.iter().any(|e| matches!(e, HostEvent::Closed { .. })), "closed with bytes unread");
    assert_eq!(net.peers[1].host.readable(ids.1), data.len());
    // The reader catches up: every byte, then the close.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = net.peers[1].host.read(ids.1, &mut buf);
        if n == 0 {
            break;
        }
        net.peers[1].received.extend_from_slice(&buf[..n]);
    }
    assert_eq!(net.peers[1].received, data);
    assert!(net.drive(Duration::from_secs(2), |n| {
        n.peers[1].events.iter().any(|e| matches!(e, HostEvent::Closed { reason: CloseReason::Peer { .. }, .. }))
    }));
    assert_eq!(net.peers[1].host.sessions().count(), 0);
}

#[test]
fn closing_tells_the_peer() {
    let mut net = Net::new(HostConfig::default());
    let ids = connect(&mut net, ConnectionMode::default());
    let now = net.now;
    net.peers[1].host.close(ids.1, now);
    assert!(net.drive(Duration::from_secs(2), |n| {
        n.peers[0].events.iter().any(|e| matches!(e, HostEvent::Closed { reason: CloseReason::Peer { .. }, .. }))
    }));
    assert_eq!(net.peers[0].host.sessions().count(), 0);
    assert_eq!(net.peers[1].host.sessions().count(), 0);
}

#[test]
fn rsvp_session_must_be_the_rsvp_signer() {
    // The inviter drops unsolicited traffic, so the invitee needs an RSVP.
    for honest in [true, false] {
        let mut net = Net::new(HostConfig::default());
        net.peers[0].filter = true;
        let inv = net.invitation(ConnectionMode { rsvp_timeout_seconds: 2, ..ConnectionMode::default() });
        net.peers[0].host.listen(inv.clone());
        let now = net.now;
        let b = net.peers[1].host.join(&inv, now);
        assert!(net.drive(Duration::from_secs(10), |n| {
            n.peers[1].events.iter().any(|e| matches!(e, HostEvent::Ice(IceEvent::RsvpNeeded { .. })))
        }));
        let rsvp_id = net.peers[1].host.endpoint().rsvp_token_id(b).expect("invitee");
        // Dishonest: the RSVP is signed by someone other than the peer
        // that will run the handshake.
        let signer = if honest { net.peers[1].identity.clone() } else { Identity::from_secret_bytes([99; 32]) };
        let cands = Candidate::list([(CandidateKind::Host, net.peers[1].addr)]);
        let rsvp = Token::new_rsvp(&inv, &signer, rsvp_id, cands, None, UNIX + 3).encode_compact();
        let now = net.now;
        net.peers[0].host.accept_rsvp(&rsvp, now).expect("valid RSVP");
        net.drive(Duration::from_secs(15), |n| n.established(0).is_some() || n.peers[0].host.stats().refused_peers > 0);
        if honest {
            let (_, peer, via) = net.established(0).expect("established");
            assert_eq!((peer, via), (net.peers[1].identity.public_key(), Via::Rsvp));
        } else {
            assert!(net.established(0).is_none());
            assert_eq!(net.peers[0].host.stats().refused_peers, 1);
        }
    }
}

#[test]
fn stun_query_learns_the_mapped_address() {
    let mut net = Net::new(HostConfig::default());
    let (now, server) = (net.now, net.peers[0].addr);
    net.peers[1].host.query_stun(server, now);
    assert!(net.drive(Duration::from_secs(3), |n| !n.peers[1].events.is_empty()));
    assert_eq!(net.peers[1].events[0], HostEvent::StunMapped { server, address: net.peers[1].addr });
    // An unreachable server is reported after its retries.
    let nowhere: SocketAddr = "198.18.9.9:3478".parse().expect("addr");
    let now = net.now;
    net.peers[1].host.query_stun(nowhere, now);
    assert!(net.drive(Duration::from_secs(10), |n| n.peers[1].events.len() == 2));
    assert_eq!(net.peers[1].events[1], HostEvent::StunFailed { server: nowhere });
}

/// Anyone can replay a message 1, but only the initiator holds the keys it
/// leads to: an inviter whose answer is never followed by an authenticated
/// packet reports no session (a replayed initiation looks just like this),
/// gives up once the initiator would have, and frees the attempt.
#[test]
fn an_initiation_without_an_authenticated_packet_is_no_session() {
    let mut net = Net::new(HostConfig::default());
    net.drop = Some(Box::new(|i, bytes| i == 1 && bytes.first() == Some(&conn::DATA)));
    start_join(&mut net, ConnectionMode::default());
    let failed = |n: &Net| {
        n.peers[0]
            .events
            .iter()
            .any(|e| matches!(e, HostEvent::HandshakeFailed { reason, .. } if reason.contains("authenticated packet")))
    };
    assert!(net.drive(Duration::from_secs(60), |n| failed(n)), "the inviter gave up");
    assert!(net.established(1).is_some(), "the initiator read the answer");
    assert!(net.established(0).is_none(), "the inviter reported a session nobody proved");
    assert_eq!(net.peers[0].host.stats().unconfirmed, 1);
    assert_eq!(net.peers[0].host.sessions().count(), 0);
    // With the initiator's packets let through, the same exchange is a
    // session on both sides.
    let mut net = Net::new(HostConfig::default());
    let ids = connect(&mut net, ConnectionMode::default());
    assert_eq!(net.peers[0].host.sessions().collect::<Vec<_>>(), vec![ids.0]);
    assert_eq!(net.peers[0].host.stats().unconfirmed, 0);
}

/// An invitee that completes the checks but never starts the handshake
/// does not hold the inviter's attempt for as long as it answers consent:
/// the inviter waits as long as an invitee would retry, then frees it.
#[test]
fn checks_without_a_handshake_free_the_attempt() {
    let mut net = Net::new(HostConfig::default());
    net.drop = Some(Box::new(|i, bytes| i == 1 && bytes.first() == Some(&HANDSHAKE_INIT)));
    let inv = start_join(&mut net, ConnectionMode::default());
    assert!(!inv.token().body.connection_mode.reusable);
    let freed = |n: &Net| {
        n.peers[0].events.iter().find_map(|e| match e {
            HostEvent::HandshakeFailed { session, reason } if reason.contains("never started") => Some(*session),
            _ => None,
        })
    };
    assert!(net.drive(Duration::from_secs(60), |n| freed(n).is_some()), "the inviter freed the attempt");
    let id = freed(&net).expect("freed");
    assert!(
        net.peers[0]
            .events
            .iter()
            .any(|e| matches!(e, HostEvent::Ice(IceEvent::Connected { attempt, .. }) if *attempt == id))
    );
    assert_eq!(net.peers[0].host.stats().no_handshake, 1);
    assert_ne!(net.peers[0].host.endpoint().state(id), Some(crate::ice::State::Connected));
    assert!(net.established(0).is_none());
    // The single-use invitation was not used up by it: a real invitee
    // still gets in with it.
    net.drop = None;
    let now = net.now;
    net.peers[1].host.join(&inv, now);
    assert!(net.drive(Duration::from_secs(30), |n| n.established(0).is_some()), "the invitation still admits");
}

/// Forward secrecy against a later memory read: the host's generator after
/// a handshake cannot be wound back to the ephemeral key it drew.
#[test]
fn the_generator_cannot_be_wound_back_to_a_past_ephemeral() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let mut net = Net::new(HostConfig::default());
    let seen: Rc<RefCell<Option<[u8; 32]>>> = Rc::default();
    let record = seen.clone();
    net.drop = Some(Box::new(move |i, bytes| {
        if i == 1 && bytes.first() == Some(&HANDSHAKE_INIT) && record.borrow().is_none() {
            let n = usize::from(bytes[1]);
            *record.borrow_mut() = bytes[2 + n..2 + n + 32].try_into().ok();
        }
        false
    }));
    connect(&mut net, ConnectionMode::default());
    let e_pub = seen.borrow().expect("the initiation went out");
    // Rewind a copy of the invitee's generator to the start of its stream
    // and look for a 32-byte draw whose public key is the ephemeral's.
    let mut rng = net.peers[1].host.rng.clone();
    let found = (0..2048u128).any(|word| {
        rng.set_word_pos(word);
        let mut eb = [0u8; 32];
        rng.fill_bytes(&mut eb);
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(eb)).to_bytes() == e_pub
    });
    assert!(!found, "the ephemeral key can be recomputed from the host's memory");
}

/// On a lossy path the inviter's wait for the initiator's first packet
/// starts again with each answer it resends: the invitee can only begin
/// confirming once an answer gets through.
#[test]
fn a_late_answer_still_becomes_a_session_on_both_sides() {
    let mut net = Net::new(HostConfig::default());
    let (mut answers, mut packets) = (0, 0);
    net.drop = Some(Box::new(move |i, bytes| {
        if i == 0 && bytes.first() == Some(&HANDSHAKE_RESP) && answers < 5 {
            answers += 1;
            return true;
        }
        if i == 1 && bytes.first() == Some(&conn::DATA) && packets < 5 {
            packets += 1;
            return true;
        }
        false
    }));
    start_join(&mut net, ConnectionMode::default());
    let failed = |n: &Net| n.peers[0].events.iter().any(|e| matches!(e, HostEvent::HandshakeFailed { .. }));
    assert!(net.drive(Duration::from_secs(90), |n| n.established(0).is_some() || failed(n)));
    assert!(!failed(&net), "the inviter gave up on a session the invitee has");
    assert!(net.established(1).is_some());
    assert!(net.now - net.start > net.peers[0].host.handshake_patience(), "took {:?}", net.now - net.start);
}

/// Someone replaying message 1 over and over restarts the inviter's wait
/// only up to twice the first one: the attempt is still freed.
#[test]
fn replaying_an_initiation_does_not_hold_the_attempt_for_ever() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let mut net = Net::new(HostConfig::default());
    let captured: Rc<RefCell<Option<Vec<u8>>>> = Rc::default();
    let record = captured.clone();
    net.drop = Some(Box::new(move |i, bytes| {
        if i == 1 && bytes.first() == Some(&HANDSHAKE_INIT) {
            record.borrow_mut().get_or_insert_with(|| bytes.to_vec());
        }
        // The initiator's packets never arrive: only its message 1 does.
        i == 1 && bytes.first() == Some(&conn::DATA)
    }));
    start_join(&mut net, ConnectionMode::default());
    let gave_up = |n: &Net| {
        n.peers[0]
            .events
            .iter()
            .any(|e| matches!(e, HostEvent::HandshakeFailed { reason, .. } if reason.contains("authenticated")))
    };
    let patience = net.peers[0].host.handshake_patience();
    let from = net.peers[1].addr;
    let mut next_replay = net.now + Duration::from_secs(5);
    let done = net.drive(patience * 4, |n| {
        if n.now >= next_replay {
            if let Some(mut m) = captured.borrow().clone() {
                let now = n.now;
                n.peers[0].host.handle_datagram(now, from, &mut m);
            }
            next_replay = n.now + Duration::from_secs(5);
        }
        gave_up(n)
    });
    assert!(done, "still held after {:?}", net.now - net.start);
    assert!(net.now - net.start <= patience * 2 + Duration::from_secs(6), "{:?}", net.now - net.start);
    assert!(net.established(0).is_none());
}

/// Two hosts with the same seed send the same datagrams in the same order
/// (the simulator's runs replay only so): STUN retransmissions due at once
/// leave in the order their queries were made, not a hash map's (which
/// differs between two maps even in one process).
#[test]
fn stun_retransmissions_leave_in_query_order() {
    let start = Instant::now();
    let identity = Identity::from_secret_bytes([40; 32]);
    let run = || {
        let mut h = Host::new(&identity, HostConfig::default(), [1; 32], start, UNIX);
        for k in 0..16u8 {
            h.query_stun(format!("198.18.9.{}:3478", k + 1).parse().expect("addr"), start);
        }
        let mut order = Vec::new();
        let mut now = start;
        for _ in 0..3 {
            while let Some(t) = h.poll_transmit(now) {
                order.push(t.destination);
            }
            now = h.poll_timeout().expect("a retransmission is due");
            h.handle_timeout(now);
        }
        while let Some(t) = h.poll_transmit(now) {
            order.push(t.destination);
        }
        order
    };
    let first = run();
    assert!(first.len() >= 3 * 16, "first sends and retransmissions: {}", first.len());
    for _ in 0..4 {
        assert_eq!(run(), first);
    }
}

/// Both NATs symmetric: no direct path to expect.
fn symmetric() -> crate::token::NatInfo {
    crate::token::NatInfo {
        delta: None,
        mapping: crate::token::NatMapping::Dependent,
        ports: Some(crate::token::PortAllocation::Random),
    }
}

/// Peers 0 and 1 with no path between them, and peer 2 a relay: peer 1
/// joins an invitation of peer 0's that names the relay (both NATs as
/// `nat` says), asks the relay for a circuit and puts it in its RSVP, and
/// peer 0 takes the RSVP and binds the circuit's other end. Returns when
/// it took it.
fn relayed_join(net: &mut Net, nat: Option<crate::token::NatInfo>) -> Instant {
    for p in &mut net.peers {
        p.host.endpoint.set_nat(nat);
    }
    let relay_id = Identity::from_secret_bytes([77; 32]);
    let relaying = HostConfig {
        relay: Some(RelayConfig { limits: crate::relay::RelayLimits::unlimited(), allow: None }),
        ..HostConfig::default()
    };
    let relay_addr: SocketAddr = "198.18.0.9:3479".parse().expect("addr");
    net.peers.push(Peer {
        host: Host::new(&relay_id, relaying, [9; 32], net.now, UNIX),
        addr: relay_addr,
        identity: relay_id,
        filter: false,
        contacted: HashSet::new(),
        events: Vec::new(),
        received: Vec::new(),
        paused: false,
    });
    net.blocked.push((0, 1));
    let params = InvitationParams {
        candidates: Candidate::list([(CandidateKind::Host, net.peers[0].addr)]),
        mode: ConnectionMode { rsvp_timeout_seconds: 20, ..ConnectionMode::default() },
        relay: vec![Hint::Relay(relay_addr).to_string()],
        nat,
        ..InvitationParams::default()
    };
    let t = Token::new_invitation(&net.peers[0].identity, params, UNIX, &mut ChaCha20Rng::seed_from_u64(3));
    let inv = Invitation::from_token(t, UNIX).expect("valid");
    net.peers[0].host.listen(inv.clone());
    let now = net.now;
    let b = net.peers[1].host.join(&inv, now);
    assert!(net.drive(Duration::from_secs(10), |n| {
        n.peers[1].events.iter().any(|e| matches!(e, HostEvent::Ice(IceEvent::RsvpNeeded { .. })))
    }));
    // By now the invitee holds a circuit for the RSVP to carry.
    let hints = net.peers[1].host.relay_hints(b);
    assert!(matches!(hints.as_slice(), [h] if matches!(Hint::parse(h), Some(Hint::Circuit(r, _)) if r == relay_addr)));
    let rsvp_id = net.peers[1].host.endpoint().rsvp_token_id(b).expect("invitee");
    let cands = Candidate::list([(CandidateKind::Host, net.peers[1].addr)]);
    let rsvp = Token::new_rsvp_relayed(&inv, &net.peers[1].identity, rsvp_id, cands, nat, hints, UNIX + 3);
    let now = net.now;
    net.peers[0].host.accept_rsvp(&rsvp.encode_compact(), now).expect("valid RSVP");
    now
}

/// Two peers with no path between them, and a third host relaying: the
/// invitation names the relay, the invitee asks it for a circuit and puts
/// it in its RSVP, the inviter binds the other end, and the checks, the
/// handshake and the stream all cross the circuit. The relay sees only
/// ciphertext: a byte it flips is caught, and the data still arrives whole.
#[test]
fn two_peers_with_no_direct_path_connect_through_a_relay_and_it_cannot_tamper() {
    // Both NATs known to be symmetric: the circuit is checked at once. NATs
    // unknown: after the grace the direct steps get (here 2 s), or, with
    // the default grace (45 s, longer than the inviter's window), shortly
    // before the inviter's window would close.
    for (tamper, hard, grace) in [(false, true, 2), (true, false, 2), (false, false, 45)] {
        let relay_grace = Duration::from_secs(grace);
        let mut net = Net::new(HostConfig { relay_grace, ..HostConfig::default() });
        if tamper {
            // The relay's host flips one byte of one data packet it
            // forwards (a session packet, well after the handshake).
            let mut n = 0;
            net.tamper = Some(Box::new(move |from, bytes: &mut Vec<u8>| {
                if from == 2 && bytes.first() == Some(&crate::relay::wire::DATA) && bytes.get(9) == Some(&conn::DATA) {
                    n += 1;
                    if n == 40 {
                        let last = bytes.len() - 1;
                        bytes[last / 2 + 5] ^= 0x20;
                    }
                }
            }));
        }
        let accepted_at = relayed_join(&mut net, hard.then(symmetric));
        let ok = net.drive(Duration::from_secs(40), |n| n.established(0).is_some() && n.established(1).is_some());
        assert!(ok, "tamper {tamper}: {:?} / {:?}", net.peers[0].events, net.peers[1].events);
        // At once when hopeless; after the grace otherwise, or before the
        // inviter's window (30 s) closes.
        let took = net.now - accepted_at;
        assert_eq!(took >= Duration::from_secs(2), !hard, "connected {took:?} after the RSVP");
        if grace == 45 {
            assert!(
                took > Duration::from_secs(15) && took < Duration::from_secs(30),
                "connected {took:?} after the RSVP"
            );
        }
        for i in [0, 1] {
            let kind = net.peers[i].events.iter().find_map(|e| match e {
                HostEvent::Established { remote_kind, .. } => Some(*remote_kind),
                _ => None,
            });
            assert_eq!(kind, Some(CandidateKind::Relay), "peer {i}");
        }
        let ids = (net.established(0).expect("a").0, net.established(1).expect("b").0);
        let (a_to_b, b_to_a) = (pattern(200_000, 1), pattern(50_000, 2));
        exchange(&mut net, ids, &a_to_b, &b_to_a, Duration::from_secs(60));
        assert_eq!(net.peers[1].received, a_to_b);
        assert_eq!(net.peers[0].received, b_to_a);
        let relay = net.peers[2].host.relay().expect("relaying");
        assert_eq!(relay.circuit_count(), 1);
        assert!(relay.stats().forwarded_bytes > 250_000, "{:?}", relay.stats());
        // A flipped packet fails its authentication and is dropped (and the
        // stream sends its bytes again): what arrived above is whole.
        let rejected: u64 = [(0, ids.0), (1, ids.1)]
            .iter()
            .map(|&(i, id)| net.peers[i].host.session(id).expect("open").stats.packets_dropped)
            .sum();
        assert_eq!(rejected, u64::from(tamper), "tampered packets dropped");
    }
}

/// A session through a relay keeps checking the direct pairs, and moves to
/// one when it opens (here: the wire between the two peers comes back
/// mid-transfer): both ends switch, the stream loses nothing, and the
/// controlling side gives the circuit back to the relay.
#[test]
fn a_relayed_session_moves_to_a_direct_path_when_one_opens_and_loses_no_data() {
    let mut net = Net::new(HostConfig { relay_grace: Duration::from_secs(2), ..HostConfig::default() });
    relayed_join(&mut net, Some(symmetric()));
    assert!(net.drive(Duration::from_secs(20), |n| n.established(0).is_some() && n.established(1).is_some()));
    let ids = (net.established(0).expect("a").0, net.established(1).expect("b").0);
    for (i, id) in [(0, ids.0), (1, ids.1)] {
        let info = net.peers[i].host.session(id).expect("open");
        assert_eq!((info.remote_kind, info.relay), (CandidateKind::Relay, Some(net.peers[2].addr)));
    }
    let moved = |n: &Net, i: usize| {
        n.peers[i].events.iter().find_map(|e| match e {
            HostEvent::PathChanged { remote, remote_kind, .. } => Some((*remote, *remote_kind)),
            _ => None,
        })
    };
    let (a_to_b, b_to_a) = (pattern(3_000_000, 5), pattern(500_000, 6));
    let (mut sa, mut sb) = (0, 0);
    let start = net.now;
    let opens = start + Duration::from_millis(1500);
    let mut received_at_move = None;
    let done = net.drive(Duration::from_secs(120), |n| {
        if n.now >= opens {
            n.blocked.clear();
        }
        if received_at_move.is_none() && moved(n, 0).is_some() && moved(n, 1).is_some() {
            received_at_move = Some(n.peers[1].received.len());
        }
        // The application writes 1 MB/s: the transfer outlasts the move.
        let budget = (n.now - start).as_millis() as usize * 1_000 + 10_000;
        if sa < a_to_b.len() {
            sa += n.peers[0].host.write(ids.0, &a_to_b[sa..budget.min(a_to_b.len())]);
            if sa == a_to_b.len() {
                n.peers[0].host.finish(ids.0);
            }
        }
        n.feed(1, ids.1, &b_to_a, &mut sb);
        n.peers[1].received.len() == a_to_b.len()
            && n.peers[0].received.len() == b_to_a.len()
            && n.peers[0].host.send_done(ids.0)
            && n.peers[1].host.send_done(ids.1)
    });
    assert!(done, "a→b {} of {}", net.peers[1].received.len(), a_to_b.len());
    assert!(net.peers[1].received == a_to_b && net.peers[0].received == b_to_a, "the bytes differ");
    // Both moved, mid-transfer, to the other's own address.
    assert_eq!(moved(&net, 0), Some((net.peers[1].addr, CandidateKind::Host)));
    assert_eq!(moved(&net, 1), Some((net.peers[0].addr, CandidateKind::Host)));
    let at_move = received_at_move.expect("moved before the end");
    assert!(at_move > 0 && at_move < a_to_b.len(), "moved after {at_move} bytes");
    for (i, id) in [(0, ids.0), (1, ids.1)] {
        let info = net.peers[i].host.session(id).expect("open");
        assert_eq!((info.remote_kind, info.relay), (CandidateKind::Host, None), "peer {i}");
        assert_eq!(net.peers[i].host.endpoint().stats().upgraded, 1);
    }
    // The rest of the transfer did not cross the relay, and the circuit
    // goes back to it (the controlling side keeps it a few seconds, for
    // what the other end may still send through it).
    let relay = net.peers[2].host.relay().expect("relaying");
    assert!(relay.stats().forwarded_bytes < (a_to_b.len() + b_to_a.len()) as u64);
    let limit = RELEASE_AFTER_MOVE + Duration::from_secs(2);
    assert!(net.drive(limit, |n| n.peers[0].host.paths.is_empty() && n.peers[1].host.paths.is_empty()));
    let relay = net.peers[2].host.relay().expect("relaying");
    assert_eq!((relay.circuit_count(), relay.stats().released), (0, 1), "{:?}", relay.stats());
}

/// A join that finds its direct path gives back the circuit it asked for
/// at the invitation's relay at once, instead of leaving it to expire.
#[test]
fn a_join_that_connects_directly_gives_its_circuit_back() {
    let mut net = Net::new(HostConfig::default());
    relayed_join(&mut net, None);
    net.blocked.clear();
    assert!(net.drive(Duration::from_secs(30), |n| n.established(0).is_some() && n.established(1).is_some()));
    let kind = net.peers[1].events.iter().find_map(|e| match e {
        HostEvent::Established { remote_kind, .. } => Some(*remote_kind),
        _ => None,
    });
    assert_eq!(kind, Some(CandidateKind::Host));
    assert!(net.drive(Duration::from_secs(2), |n| n.peers[2].host.relay().is_some_and(|r| r.circuit_count() == 0)));
    let relay = net.peers[2].host.relay().expect("relaying");
    assert_eq!((relay.stats().allocated, relay.stats().released), (1, 1));
}
