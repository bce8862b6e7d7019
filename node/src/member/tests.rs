//! Members against each other in memory, in virtual time: a tiny network
//! that delivers datagrams after a fixed latency, where a node may sit
//! behind a filter that lets in only replies from addresses it has sent to
//! (an address-and-port-dependent filter, as in a home router).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use super::*;
use crate::host::HostConfig;
use crate::ice::Via;
use crate::token::Token;

const UNIX: u64 = 1_800_000_000;
const LATENCY: Duration = Duration::from_millis(10);

struct Peer {
    addr: SocketAddr,
    m: MemberHost,
    filtering: bool,
    contacted: BTreeSet<SocketAddr>,
    events: Vec<MemberEvent>,
}

struct Net {
    base: Instant,
    now: Instant,
    peers: Vec<Peer>,
    /// (arrival, sequence) → (to, from, bytes)
    wire: BTreeMap<(Instant, u64), (usize, SocketAddr, Vec<u8>)>,
    seq: u64,
    filtered: u64,
    rng: ChaCha20Rng,
}

impl Net {
    fn new() -> Self {
        let base = Instant::now();
        Self {
            base,
            now: base,
            peers: Vec::new(),
            wire: BTreeMap::new(),
            seq: 0,
            filtered: 0,
            rng: ChaCha20Rng::seed_from_u64(7),
        }
    }

    fn unix(&self) -> u64 {
        UNIX + self.now.duration_since(self.base).as_secs()
    }

    /// A member at 198.18.0.`i`, started at once (it has its host address).
    fn add(&mut self, filtering: bool, join: Option<Invitation>) -> usize {
        self.add_with(filtering, join, Config { announce_views: 0, ..Config::default() })
    }

    fn add_with(&mut self, filtering: bool, join: Option<Invitation>, overlay: Config) -> usize {
        let cfg = MemberConfig { join, overlay, ..MemberConfig::default() };
        self.add_member(filtering, cfg)
    }

    fn add_member(&mut self, filtering: bool, cfg: MemberConfig) -> usize {
        let i = self.peers.len();
        let addr = SocketAddr::from(([198, 18, 0, i as u8 + 1], 4433));
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let identity = Identity::from_secret_bytes(seed);
        self.rng.fill_bytes(&mut seed);
        let mut m = MemberHost::new(identity, cfg, HostConfig::default(), seed, self.now, self.unix());
        m.member.minter().candidates_mut().add_host(addr);
        self.peers.push(Peer { addr, m, filtering, contacted: BTreeSet::new(), events: Vec::new() });
        self.peers[i].m.start(self.now).expect("own card");
        self.flush(i);
        i
    }

    fn card(&self, i: usize) -> Invitation {
        self.peers[i].m.member.invitation().expect("started").clone()
    }

    fn flush(&mut self, i: usize) {
        let now = self.now;
        while let Some(t) = self.peers[i].m.poll_transmit(now) {
            let from = self.peers[i].addr;
            self.peers[i].contacted.insert(t.destination);
            if let Some(to) = self.peers.iter().position(|p| p.addr == t.destination) {
                self.seq += 1;
                self.wire.insert((now + LATENCY, self.seq), (to, from, t.contents));
            }
        }
        while let Some(e) = self.peers[i].m.poll_event() {
            self.peers[i].events.push(e);
        }
    }

    /// Runs until `until` (virtual), one input at a time.
    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        for _ in 0..5_000_000 {
            let next_packet = self.wire.keys().next().map(|k| k.0);
            let next_timer = self.peers.iter().enumerate().filter_map(|(i, p)| Some((p.m.poll_timeout()?, i))).min();
            let t = [next_packet, next_timer.map(|t| t.0)].into_iter().flatten().min().unwrap_or(until);
            if t > until {
                break;
            }
            self.now = self.now.max(t);
            if next_packet == Some(t) {
                let (_, (to, from, mut data)) = self.wire.pop_first().expect("a packet");
                let p = &mut self.peers[to];
                if p.filtering && !p.contacted.contains(&from) {
                    self.filtered += 1;
                    continue;
                }
                let now = self.now;
                p.m.handle_datagram(now, from, &mut data);
                self.flush(to);
            } else if let Some((_, i)) = next_timer {
                let now = self.now;
                self.peers[i].m.handle_timeout(now);
                self.flush(i);
            }
        }
        self.now = until;
    }

    fn active(&self, i: usize) -> Vec<PeerId> {
        self.peers[i].m.member.overlay().map(|o| o.active().collect()).unwrap_or_default()
    }

    fn id(&self, i: usize) -> PeerId {
        self.peers[i].m.member.peer_id()
    }
}

#[test]
fn members_join_through_one_card_and_a_broadcast_reaches_everyone() {
    let mut net = Net::new();
    let a = net.add(false, None);
    for _ in 0..5 {
        let card = net.card(a);
        net.add(false, Some(card));
        net.run_for(Duration::from_secs(2));
    }
    net.run_for(Duration::from_secs(10));
    for i in 0..net.peers.len() {
        assert!(!net.active(i).is_empty(), "member {i} has no neighbour");
        for p in net.active(i) {
            let j = (0..net.peers.len()).find(|&j| net.id(j) == p).expect("a member");
            assert!(net.active(j).contains(&net.id(i)), "active views are symmetric");
        }
    }
    // Members other than the contact were reached by the overlay, not by
    // their first token alone.
    assert!(net.active(1).len() >= 2, "{:?}", net.active(1));
    let now = net.now;
    net.peers[3].m.command(MemberCommand::Broadcast(b"hello".to_vec()), now).expect("broadcast");
    net.flush(3);
    net.run_for(Duration::from_secs(3));
    for (i, p) in net.peers.iter().enumerate().filter(|(i, _)| *i != 3) {
        assert!(
            p.events.iter().any(|e| matches!(e, MemberEvent::Message { data, .. } if data == b"hello")),
            "member {i} missed the broadcast"
        );
    }
    assert!(matches!(
        net.peers[3].m.command(MemberCommand::Broadcast(vec![0; MAX_PAYLOAD + 1]), now),
        Err(CommandError::TooLarge(_))
    ));
}

/// A public contact and ten newcomers behind filters: each reaches its
/// contact with the token alone, but a link a walk asks for towards a
/// newcomer needs the dialer's RSVP to travel through introducers.
fn filtered_network(rsvp_with_every_dial: bool) -> (Net, Vec<usize>) {
    let mut net = Net::new();
    // Small views, so that members fill theirs and links are asked for one
    // way (a walk's end dialing the newcomer), not by both sides at once.
    let small = Config { active: 3, passive: 8, announce_views: 0, ..Config::default() };
    let cfg = |join| MemberConfig { join, overlay: small, rsvp_with_every_dial, ..MemberConfig::default() };
    let a = net.add_member(false, cfg(None));
    let mut filtered = Vec::new();
    for _ in 0..10 {
        let card = net.card(a);
        filtered.push(net.add_member(true, cfg(Some(card))));
        net.run_for(Duration::from_secs(3));
    }
    net.run_for(Duration::from_secs(90));
    assert!(net.filtered > 0, "the filter was never exercised");
    let introduced = filtered
        .iter()
        .filter(|&&f| net.peers[f].events.iter().any(|e| matches!(e, MemberEvent::Introduced { result: Ok(()), .. })))
        .count();
    assert!(introduced >= 2, "only {introduced} filtered members took an introduced RSVP");
    for &f in &filtered {
        assert!(!net.active(f).is_empty(), "filtered member {f} has no neighbour");
    }
    (net, filtered)
}

/// Links that came up towards a filtered member dialed by the overlay, and
/// how the dialer's engine saw them.
fn links_to_filtered(net: &Net, filtered: &[usize]) -> Vec<(Via, bool)> {
    let ids: Vec<PeerId> = filtered.iter().map(|&f| net.id(f)).collect();
    net.peers
        .iter()
        .flat_map(|p| &p.events)
        .filter_map(|e| match e {
            MemberEvent::Linked { peer, via, dialed: Dialed::Overlay { relayed } } if ids.contains(peer) => {
                Some((*via, *relayed))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn members_behind_filters_link_by_rsvps_sent_with_the_dial() {
    let (net, filtered) = filtered_network(true);
    let links = links_to_filtered(&net, &filtered);
    assert!(!links.is_empty(), "no overlay link reached a filtered member");
    // A filtered member lets in only peers it has sent to: such a link
    // needed the RSVP that went with the dial, unless the filtered member
    // happened to dial the dialer at the same moment.
    let relayed = links.iter().filter(|&&(_, relayed)| relayed).count();
    assert!(relayed >= 5 && relayed * 10 >= links.len() * 9, "{links:?}");
}

#[test]
fn members_behind_filters_link_by_rsvps_after_the_window() {
    let (net, filtered) = filtered_network(false);
    let links = links_to_filtered(&net, &filtered);
    assert!(!links.is_empty(), "no overlay link reached a filtered member");
    // Where the filtered member did not happen to dial the dialer too, the
    // dialer checked alone for the card's window, then relayed its RSVP.
    let by_rsvp = links.iter().filter(|&&(via, relayed)| via == Via::Rsvp && relayed).count();
    assert!(by_rsvp >= 3, "{links:?}");
    assert!(links.iter().all(|&(via, relayed)| via == Via::SingleToken || relayed), "{links:?}");
}

#[test]
fn forty_interface_addresses_still_make_a_valid_card_and_rsvp() {
    let now = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let (alice_id, bob_id) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
    let mut alice = MemberHost::new(alice_id, MemberConfig::default(), HostConfig::default(), seed, now, UNIX);
    let mut bob = MemberHost::new(bob_id, MemberConfig::default(), HostConfig::default(), seed, now, UNIX);
    for m in [&mut alice, &mut bob] {
        let c = m.member.minter().candidates_mut();
        for i in 0..20u8 {
            c.add_host(SocketAddr::from(([10, 1, 0, i + 1], 4433)));
            c.add_host(SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i) + 1], 4433)));
        }
        m.start(now).expect("a card with 40 interface addresses");
    }
    let card = alice.member.invitation().expect("card").token().encode_compact();
    let inv = Invitation::parse(&card, UNIX + 1).expect("the card parses as its readers parse it");
    let attempt = bob.host.join(&inv, now);
    let id = bob.host.endpoint().rsvp_token_id(attempt).expect("an invitee attempt");
    let rsvp: Token = bob.member.minter().rsvp(&inv, id, UNIX + 1);
    assert!(rsvp.body.connection_info.ice_candidates.len() <= crate::token::limits::MAX_CANDIDATES);
    alice
        .command(MemberCommand::AcceptRsvp(rsvp.encode_compact()), now)
        .expect("the inviter takes an RSVP minted on a machine with 40 addresses");
}

/// A member that restarts with saved cards and no invitation: the first
/// card's member is gone (its address answers nothing), so after the
/// card's RSVP window it moves on to the next card (no person could carry
/// an RSVP) and joins through it. `cards` is what a member saves: its
/// neighbours' and passive cards, valid, never its own.
#[test]
fn a_restarted_member_joins_through_the_next_saved_card_when_one_is_dead() {
    let mut net = Net::new();
    let a = net.add(false, None);
    let card = net.card(a);
    let b = net.add(false, Some(card));
    net.run_for(Duration::from_secs(5));
    let saved = net.peers[b].m.member.cards(net.unix());
    assert!(saved.iter().any(|c| c.inviter() == net.id(a)), "b saves a's card");
    assert!(saved.iter().all(|c| c.inviter() != net.id(b)), "never its own card");
    assert!(net.peers[b].m.member.cards(net.unix() + 8 * 86_400).is_empty(), "expired cards are not saved");

    // A card of a member that is gone: nobody listens at its address.
    let (gone, dead) = dead_card(&net, 11, 200, crate::token::InitialMode::Unidirectional);
    let cfg = MemberConfig { rejoin: vec![dead, saved[0].clone()], ..MemberConfig::default() };
    let n = net.add_member(false, cfg);
    net.run_for(Duration::from_secs(20));
    let events = &net.peers[n].events;
    let failed = events.iter().position(|e| matches!(e, MemberEvent::ConnectFailed(p, _) if *p == gone));
    let joined = events.iter().position(|e| matches!(e, MemberEvent::Joined(_)));
    assert!(failed.is_some_and(|f| joined.is_some_and(|j| f < j)), "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, MemberEvent::RsvpForContact(_))), "no RSVP for a person to carry");
    assert!(!net.active(n).is_empty(), "the restarted member has no neighbour");
}

/// With no STUN server, a member asks its neighbours where they see it
/// (two of them at once classify the NAT's mapping), then mints a card
/// that carries what it learned. Its older card is still answered: a
/// newcomer holding it gets in.
#[test]
fn members_learn_their_nat_from_neighbours_and_refresh_their_card() {
    let mut net = Net::new();
    let a = net.add(false, None);
    let card = net.card(a);
    let b = net.add(false, Some(card));
    net.run_for(Duration::from_secs(3));
    let card = net.card(a);
    let c = net.add(false, Some(card));
    let old_card = net.card(c);
    assert!(old_card.token().body.connection_info.nat.is_none(), "nothing known at start");
    net.run_for(Duration::from_secs(30));
    assert!(net.active(c).len() >= 2, "c has two neighbours to ask: {:?}", net.active(c));
    let nat = net.peers[c].m.host.nat();
    assert!(nat.is_some(), "c's NAT was classified from its neighbours' answers");
    let fresh = net.card(c);
    assert_ne!(fresh.token().body.token_id, old_card.token().body.token_id, "a new card");
    assert_eq!(fresh.token().body.connection_info.nat, nat, "the new card carries the classification");
    let cards = net.peers[c].events.iter().filter(|e| matches!(e, MemberEvent::Invitation(_))).count();
    assert_eq!(cards, 2, "one new card for the bunch of answers, not one per answer");
    // Someone who got c's first card joins with it.
    let d = net.add(false, Some(old_card));
    net.run_for(Duration::from_secs(10));
    assert!(net.peers[d].events.iter().any(|e| matches!(e, MemberEvent::Joined(p) if *p == net.id(c))));
    let _ = b;
}

/// A member whose machine moves to another address (the driver notices
/// its interface addresses changed): its old session dies, it rejoins
/// through its contact from the new address, and mints a card that
/// carries the new address instead of the old.
#[test]
fn a_member_that_moves_to_another_address_comes_back_with_a_new_card() {
    let mut net = Net::new();
    let a = net.add(false, None);
    let card = net.card(a);
    let b = net.add(false, Some(card));
    net.run_for(Duration::from_secs(5));
    assert!(net.active(a).contains(&net.id(b)));
    let old = net.peers[b].addr;
    let moved = SocketAddr::from(([198, 18, 7, 1], 4433));
    net.peers[b].addr = moved;
    let now = net.now;
    let p = &mut net.peers[b].m;
    assert!(p.member.set_host_addresses(&mut p.host, vec![moved], now), "the addresses changed");
    assert!(!p.member.set_host_addresses(&mut p.host, vec![moved], now), "and not twice");
    net.flush(b);
    net.run_for(Duration::from_secs(40));
    assert!(net.active(a).contains(&net.id(b)), "a links to b again: {:?}", net.active(a));
    assert!(net.active(b).contains(&net.id(a)));
    let addrs: Vec<SocketAddr> =
        net.card(b).token().body.connection_info.ice_candidates.iter().map(|c| c.address).collect();
    assert!(addrs.contains(&moved) && !addrs.contains(&old), "b's card: {addrs:?}");
    // a talks to b at its new address.
    let a_host = &net.peers[a].m.host;
    let remotes: Vec<SocketAddr> = a_host.sessions().filter_map(|s| a_host.session(s)).map(|s| s.remote).collect();
    assert!(remotes.contains(&moved), "{remotes:?}");
}

/// A card of a member nobody answers for, valid for a day.
fn dead_card(net: &Net, seed: u64, last: u8, initial: crate::token::InitialMode) -> (PeerId, Invitation) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let gone = Identity::generate(&mut rng);
    let params = crate::token::InvitationParams {
        candidates: crate::token::Candidate::list([(
            crate::token::CandidateKind::Host,
            SocketAddr::from(([198, 18, 9, last], 4433)),
        )]),
        mode: crate::token::ConnectionMode { initial, rsvp_supported: true, rsvp_timeout_seconds: 5, reusable: true },
        ..crate::token::InvitationParams::default()
    };
    let t = Token::new_invitation(&gone, params, net.unix(), &mut rng);
    (gone.peer_id(), Invitation::from_token(t, net.unix()).expect("valid card"))
}

/// Saved cards nobody answers: the member goes through them once per
/// pass, waits longer after each pass, and keeps trying (also with a
/// single card). Cards that want an RSVP at once are never dialed.
#[test]
fn saved_cards_that_never_answer_are_retried_in_paced_passes() {
    use crate::token::InitialMode::{Bidirectional, Unidirectional};
    let mut net = Net::new();
    let (p1, c1) = dead_card(&net, 21, 1, Unidirectional);
    let (p2, c2) = dead_card(&net, 22, 2, Unidirectional);
    let (p3, c3) = dead_card(&net, 23, 3, Bidirectional);
    let n = net.add_member(false, MemberConfig { rejoin: vec![c1, c2, c3], ..MemberConfig::default() });
    let (_, single) = dead_card(&net, 24, 4, Unidirectional);
    let m = net.add_member(false, MemberConfig { rejoin: vec![single], ..MemberConfig::default() });
    net.run_for(Duration::from_secs(120));
    let failed = |i: usize, p: Option<PeerId>| {
        net.peers[i]
            .events
            .iter()
            .filter(|e| matches!(e, MemberEvent::ConnectFailed(q, _) if p.is_none_or(|p| p == *q)))
            .count()
    };
    // Back to back, two cards failing every 5 s would make 48 failures in
    // 120 s; passes of two, 8, 16, 32 s apart, make about 10.
    let (f1, f2) = (failed(n, Some(p1)), failed(n, Some(p2)));
    assert!(f1 >= 3 && f2 >= 3 && f1 + f2 <= 14, "{f1} + {f2} failures");
    assert_eq!(failed(n, Some(p3)), 0, "a card wanting an RSVP at once was dialed");
    assert!(failed(m, None) >= 3, "a single saved card is retried");
    assert!(net.peers[n].m.member.cards(net.unix()).len() == 2, "untried cards are kept for saving");
}

fn role(net: &Net, i: usize) -> Option<Role> {
    net.peers[i].m.member.overlay().map(|o| o.shape().role)
}

/// Moves member `i` to `to` (the driver saw its interface addresses
/// change); `filtering` puts it behind a filter from then on.
fn move_to(net: &mut Net, i: usize, to: SocketAddr, filtering: bool) {
    net.peers[i].addr = to;
    net.peers[i].filtering = filtering;
    net.peers[i].contacted.clear();
    let now = net.now;
    let p = &mut net.peers[i].m;
    p.host.set_local_addresses(Some(to.port()), &[to.ip()]);
    assert!(p.member.set_host_addresses(&mut p.host, vec![to], now));
    net.flush(i);
}

/// Capacity in the election: a member on the internet with room for
/// leaves is elected, one whose operator gave it none is not.
#[test]
fn a_reachable_member_with_no_room_for_leaves_is_not_elected() {
    let overlay = Config { topology: convoke_overlay::Topology::HIERARCHICAL, announce_views: 0, ..Config::default() };
    let mut net = Net::new();
    let always = MemberConfig { overlay, super_peer: SuperPeer::Always, ..MemberConfig::default() };
    let a = net.add_member(false, always);
    let none = net.add_with(false, Some(net.card(a)), Config { max_leaves: Some(0), ..overlay });
    let few = net.add_with(false, Some(net.card(a)), Config { max_leaves: Some(4), ..overlay });
    for p in &mut net.peers {
        p.m.host.set_local_addresses(Some(p.addr.port()), &[p.addr.ip()]);
    }
    net.run_for(Duration::from_secs(30));
    let elections = |net: &Net, i: usize| net.peers[i].m.member.overlay().map(|o| o.stats().elections);
    assert_eq!(role(&net, few), Some(Role::Super), "on the internet with room for 4 leaves");
    assert_eq!(elections(&net, few), Some(1));
    assert_eq!(role(&net, none), Some(Role::Leaf), "on the internet with no room for a leaf");
    assert_eq!(elections(&net, none), Some(0));
    assert!(!net.active(none).is_empty(), "linked as a leaf");
}

/// Under a hierarchy a member on the internet with no NAT elects itself;
/// when it moves it steps down, and is elected again only once its new
/// network qualifies: another public address does, a private one behind
/// a filter does not. A member set to serve always stays a super-peer.
#[test]
fn an_elected_super_peer_that_moves_steps_down_until_its_new_network_qualifies() {
    let overlay = Config { topology: convoke_overlay::Topology::HIERARCHICAL, announce_views: 0, ..Config::default() };
    let mut net = Net::new();
    let always = MemberConfig { overlay, super_peer: SuperPeer::Always, ..MemberConfig::default() };
    let a = net.add_member(false, always);
    let b = net.add_with(false, Some(net.card(a)), overlay);
    let c = net.add_with(false, Some(net.card(a)), overlay);
    // What the driver tells the host, for STUN answers to classify.
    for p in &mut net.peers {
        p.m.host.set_local_addresses(Some(p.addr.port()), &[p.addr.ip()]);
    }
    net.run_for(Duration::from_secs(30));
    let stats = |net: &Net, i: usize| net.peers[i].m.member.overlay().map(|o| *o.stats()).expect("started");
    for i in [b, c] {
        assert_eq!(role(&net, i), Some(Role::Super), "{i} is on the internet with no NAT");
        assert_eq!(stats(&net, i).elections, 1);
    }
    // An address added (a container bridge comes up) is no move.
    let (old, bridge) = (net.peers[b].addr, SocketAddr::from(([172, 17, 0, 1], 4433)));
    let now = net.now;
    let p = &mut net.peers[b].m;
    assert!(p.member.set_host_addresses(&mut p.host, vec![old, bridge], now));
    assert_eq!(role(&net, b), Some(Role::Super), "b keeps serving beside a new interface");
    assert_eq!(stats(&net, b).step_downs, 0);
    move_to(&mut net, b, SocketAddr::from(([198, 18, 7, 2], 4433)), false);
    assert_eq!(role(&net, b), Some(Role::Leaf), "b steps down as it moves");
    assert_eq!(stats(&net, b).step_downs, 1);
    net.run_for(Duration::from_secs(60));
    assert_eq!(role(&net, b), Some(Role::Super), "b's new address is public too");
    assert_eq!(stats(&net, b).elections, 2);
    move_to(&mut net, c, SocketAddr::from(([10, 0, 0, 3], 4433)), true);
    net.run_for(Duration::from_secs(60));
    assert!(!net.active(c).is_empty(), "c is linked again");
    assert!(net.peers[c].m.host.nat().is_some(), "and its new network classified");
    assert_eq!(
        role(&net, c),
        Some(Role::Leaf),
        "behind a filter, on a private address: {:?} {:?}",
        stats(&net, c),
        net.peers[c].m.member.candidates().select()
    );
    assert_eq!(stats(&net, c).elections, 1);
    move_to(&mut net, a, SocketAddr::from(([198, 18, 7, 1], 4433)), false);
    assert_eq!(role(&net, a), Some(Role::Super), "set to serve always");
    assert_eq!(stats(&net, a).step_downs, 0);
}
