//! The overlay against itself: an in-memory network of members with a
//! fixed latency, links made instantly where a member asks.

use super::shape::STRANDED_WAVES;
use crate::wire::{PolicyKind, Role, Shape};
use std::collections::BTreeSet;

use super::*;

struct Net {
    nodes: Vec<Overlay<u32>>,
    alive: Vec<bool>,
    links: BTreeSet<(u32, u32)>,
    /// (deliver at, to, from, message)
    wire: Vec<(Millis, u32, u32, Message<u32>)>,
    now: Millis,
    delivered: Vec<Vec<(MsgId<u32>, u16)>>,
    introduced: Vec<(u32, u32, Vec<u8>)>,
    joined_seen: Vec<Vec<u32>>,
    /// (member, peer, its policy) of every `PolicyMismatch`.
    mismatches: Vec<(u32, u32, PolicyKind)>,
    /// Pairs that cannot link (links asked for fail).
    blocked: BTreeSet<(u32, u32)>,
}

fn card(p: u32) -> Card<u32> {
    Card::new(p, format!("invitation of {p}").into_bytes())
}

fn seed(i: u32) -> [u8; 32] {
    let mut s = [7u8; 32];
    s[..4].copy_from_slice(&i.to_le_bytes());
    s
}

impl Net {
    fn new(n: u32, cfg: Config) -> Self {
        Self::with(n, |_| cfg)
    }

    /// A network whose member `i` runs `cfg(i)`.
    fn with(n: u32, cfg: impl Fn(u32) -> Config) -> Self {
        Net {
            nodes: (0..n).map(|i| Overlay::new(card(i), cfg(i), seed(i), 0)).collect(),
            alive: vec![true; n as usize],
            links: BTreeSet::new(),
            wire: Vec::new(),
            now: 0,
            delivered: vec![Vec::new(); n as usize],
            introduced: Vec::new(),
            joined_seen: vec![Vec::new(); n as usize],
            mismatches: Vec::new(),
            blocked: BTreeSet::new(),
        }
    }

    fn link(&mut self, a: u32, b: u32) {
        self.links.insert((a.min(b), a.max(b)));
    }

    fn drain(&mut self, i: u32) {
        while let Some(o) = self.nodes[i as usize].poll() {
            match o {
                Output::Send { to, msg } => {
                    // Round-trip the wire format on the way.
                    let msg = Message::decode(&msg.encode()).expect("decodes");
                    if self.links.contains(&(i.min(to), i.max(to))) {
                        self.wire.push((self.now + 10, to, i, msg));
                    }
                }
                Output::Connect { card, .. } => {
                    let to = card.peer;
                    if self.alive[to as usize] && !self.blocked.contains(&(i.min(to), i.max(to))) {
                        self.link(i, to);
                        self.nodes[i as usize].link_up(to, self.now);
                    } else {
                        self.nodes[i as usize].link_failed(to, self.now);
                    }
                }
                // Links stay usable: a closed link only matters to the
                // transport, and the views are what the tests check.
                Output::Close(_) => {}
                Output::Event(Event::Delivered { id, round, .. }) => self.delivered[i as usize].push((id, round)),
                Output::Event(Event::Introduced { from, token }) => self.introduced.push((i, from, token)),
                Output::Event(Event::MemberJoined { peer, .. }) => self.joined_seen[i as usize].push(peer),
                Output::Event(Event::PolicyMismatch { peer, policy }) => self.mismatches.push((i, peer, policy)),
                Output::Event(_) => {}
            }
        }
    }

    fn step(&mut self) {
        self.now += 10;
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wire).into_iter().partition(|w| w.0 <= now);
        self.wire = later;
        for (_, to, from, msg) in due {
            if self.alive[to as usize] && self.alive[from as usize] {
                self.nodes[to as usize].handle(from, msg, now);
                self.drain(to);
            }
        }
        for i in 0..self.nodes.len() as u32 {
            if self.alive[i as usize] && self.nodes[i as usize].poll_timeout() <= now {
                self.nodes[i as usize].tick(now);
                self.drain(i);
            }
        }
    }

    /// Runs for `ms` milliseconds of simulated time in 10 ms steps.
    fn run(&mut self, ms: Millis) {
        for _ in 0..ms / 10 {
            self.step();
        }
    }

    fn join(&mut self, newcomer: u32, contact: u32) {
        self.link(newcomer, contact);
        let now = self.now;
        self.nodes[newcomer as usize].join(card(contact), now);
        self.drain(newcomer);
    }

    fn broadcast(&mut self, from: u32, payload: &[u8]) -> MsgId<u32> {
        let now = self.now;
        let id = self.nodes[from as usize].broadcast(payload.to_vec(), now);
        self.drain(from);
        id
    }

    fn live(&self) -> Vec<u32> {
        (0..self.nodes.len() as u32).filter(|&i| self.alive[i as usize]).collect()
    }

    fn got(&self, i: u32, id: MsgId<u32>) -> bool {
        i == id.origin || self.delivered[i as usize].iter().any(|(d, _)| *d == id)
    }

    fn eager_edges(&self) -> BTreeSet<(u32, u32)> {
        let mut e = BTreeSet::new();
        for i in self.live() {
            for &p in self.nodes[i as usize].plumtree().eager() {
                e.insert((i.min(p), i.max(p)));
            }
        }
        e
    }
}

fn grown(n: u32, cfg: Config) -> Net {
    let mut net = Net::new(n, cfg);
    for i in 1..n {
        net.join(i, i / 2);
        net.run(50);
    }
    net.run(5_000);
    net
}

#[test]
fn joins_build_symmetric_bounded_connected_views() {
    let net = grown(60, Config::default());
    let mut edges = BTreeSet::new();
    for i in net.live() {
        let o = &net.nodes[i as usize];
        let act: Vec<u32> = o.active().collect();
        assert!(!act.is_empty() && act.len() <= 5, "node {i}: {act:?}");
        assert!(o.passive().count() <= 30);
        for p in act {
            assert!(net.nodes[p as usize].is_active(i), "{i} holds {p} but not back");
            edges.insert((i.min(p), i.max(p)));
        }
    }
    let g = crate::topology::graph_of(0..60u32, edges.iter().copied());
    assert!(crate::topology::is_connected(&g));
    // Shuffles filled the passive views.
    let filled = net.live().iter().filter(|&&i| net.nodes[i as usize].passive().count() >= 10).count();
    assert!(filled >= 50, "{filled} nodes have 10+ passive peers");
}

#[test]
fn broadcast_reaches_everyone_and_settles_into_a_tree() {
    let mut net = grown(60, Config { announce_joins: false, ..Config::default() });
    // Links made (both ends count a neighbour up): members whose views are
    // not full keep filling them, slowly, and a new link starts eager.
    let links = |net: &Net| net.live().iter().map(|&i| net.nodes[i as usize].stats().neighbor_ups).sum::<u64>() / 2;
    let mut made = 0;
    for k in 0..3u32 {
        let before = links(&net);
        let id = net.broadcast(k * 7, &[k as u8]);
        net.run(2_000);
        made = links(&net) - before;
        let got = net.live().iter().filter(|&&i| net.got(i, id)).count();
        assert_eq!(got, 60, "{id:?}");
    }
    // Once pruned, eager links form a spanning tree (n - 1 undirected
    // edges), give or take links made since the last broadcast.
    let eager = net.eager_edges();
    let g = crate::topology::graph_of(0..60u32, eager.iter().copied());
    assert!(crate::topology::is_connected(&g), "eager links span the members");
    assert!(eager.len() as u64 <= 59 + made, "{} eager edges, {made} links made meanwhile", eager.len());
    let dups = |net: &Net| net.live().iter().map(|&i| net.nodes[i as usize].plum_stats().duplicates).sum::<u64>();
    let (before, links_before) = (dups(&net), links(&net));
    net.broadcast(3, b"quiet");
    net.run(2_000);
    // On the settled tree a broadcast has no duplicates, but over a link
    // that is still (or newly) eager at both ends.
    let extra = eager.len() as u64 - 59 + (links(&net) - links_before);
    assert!(dups(&net) - before <= 2 * extra, "{} duplicates, {extra} unpruned or new links", dups(&net) - before);
}

#[test]
fn a_failed_member_is_suspected_replaced_and_the_tree_repaired() {
    // Without heartbeats: the round's pings, suspicion, `fail_after`.
    let mut net = grown(40, Config { announce_joins: false, heartbeat: 0, ..Config::default() });
    net.broadcast(0, b"warm");
    net.run(2_000);
    // Kill the member with the most eager links: it is a tree hub.
    let victim = (1..40u32).max_by_key(|&i| net.nodes[i as usize].plumtree().eager().len()).expect("some");
    net.alive[victim as usize] = false;
    let neighbours: Vec<u32> = net.nodes[victim as usize].active().collect();
    net.run(6_000);
    for &n in &neighbours {
        let o = &net.nodes[n as usize];
        assert!(!o.is_active(victim), "{n} still holds the dead {victim}");
        assert!(o.stats().suspicions >= 1, "{n} suspected first");
        assert!(o.active().count() >= 3, "{n} refilled its view: {:?}", o.active().collect::<Vec<_>>());
    }
    let id = net.broadcast(0, b"after");
    net.run(3_000);
    let missing: Vec<u32> = net.live().into_iter().filter(|&i| !net.got(i, id)).collect();
    assert!(missing.is_empty(), "not delivered to {missing:?}");
}

#[test]
fn relays_tokens_along_a_route_rate_limited_and_only_over_links() {
    let mut net = grown(30, Config { relay_burst: 2, relay_per_second: 0.0, ..Config::default() });
    // A route over real active links: 0 -> a -> b.
    let a = net.nodes[0].active().next().expect("neighbour");
    let b = net.nodes[a as usize].active().find(|&p| p != 0).expect("second hop");
    for k in 0..4u8 {
        assert!(net.nodes[0].introduce(&[a, b], vec![k]));
        net.drain(0);
    }
    net.run(500);
    let got: Vec<&Vec<u8>> =
        net.introduced.iter().filter(|(to, from, _)| *to == b && *from == 0).map(|t| &t.2).collect();
    assert_eq!(got, vec![&vec![0u8], &vec![1u8]], "two through, then the relay's limit");
    // Refused by the relay they went through (a, or another neighbour
    // that told us it is linked to b).
    let refused: u64 = net.nodes.iter().map(|o| o.stats().relay_rate_limited).sum();
    assert_eq!(refused, 2);
    // A peer two hops away, reached through the neighbour that told us it
    // is linked to it, whatever the (here empty) remembered route says.
    let two_hops = net.nodes[a as usize].active().find(|&p| p != 0 && !net.nodes[0].is_active(p)).expect("2 hops");
    assert!(net.nodes[0].can_reach(two_hops));
    let via = net.nodes[0].introduce_along(&[two_hops], vec![7]).expect("routed through a neighbour");
    // Through a neighbour linked to it (or straight, over a replaced link
    // that still lingers).
    assert_eq!(via.last(), Some(&two_hops));
    assert!(via.len() == 1 || (via.len() == 2 && net.nodes[0].is_active(via[0])), "{via:?}");
    // A peer no neighbour is linked to is refused locally.
    let stranger = net.live().into_iter().find(|&p| p != 0 && !net.nodes[0].can_reach(p)).expect("stranger");
    assert!(!net.nodes[0].introduce(&[stranger], vec![1]));
}

#[test]
fn forward_join_routes_lead_back_to_the_newcomer() {
    let mut net = grown(30, Config::default());
    net.nodes.push(Overlay::new(card(30), Config::default(), seed(30), net.now));
    net.alive.push(true);
    net.delivered.push(Vec::new());
    net.joined_seen.push(Vec::new());
    net.join(30, 5);
    // Deliver by hand, catching every Connect the walks cause.
    let mut routes = Vec::new();
    for _ in 0..20 {
        net.now += 10;
        let now = net.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut net.wire).into_iter().partition(|w| w.0 <= now);
        net.wire = later;
        for (_, to, from, msg) in due {
            net.nodes[to as usize].handle(from, msg, now);
            while let Some(o) = net.nodes[to as usize].poll() {
                match o {
                    Output::Connect { card, route } => routes.push((to, card.peer, route)),
                    Output::Send { to: t, msg } => net.wire.push((now + 10, t, to, msg)),
                    _ => {}
                }
            }
        }
    }
    // Walks end where members link to the newcomer (others may refill
    // views from their passive peers meanwhile).
    let routes: Vec<_> = routes.into_iter().filter(|r| r.1 == 30).collect();
    assert!(!routes.is_empty());
    for (asker, _, route) in routes {
        assert_eq!(route.last(), Some(&30));
        assert!(net.nodes[asker as usize].is_active(route[0]), "{asker}'s route {route:?} starts at a neighbour");
        assert!(route.contains(&5), "through the contact: {route:?}");
    }
}

#[test]
fn announced_joins_and_views_reach_every_member() {
    let cfg = Config { announce_views: 2_000, ..Config::default() };
    let mut net = grown(25, cfg);
    net.run(5_000);
    for i in net.live() {
        if i != 24 && i != 12 {
            assert!(net.joined_seen[i as usize].contains(&24), "{i} missed the last join");
        }
        let o = &net.nodes[i as usize];
        let g = crate::topology::graph_of(o.known_members(), o.known_links());
        assert!(crate::topology::is_connected(&g), "{i}'s known graph is connected");
        assert_eq!(g.node_count(), 25, "{i} knows all members");
    }
}

#[test]
fn strangers_and_ill_formed_walks_are_ignored() {
    let mut o = Overlay::new(card(1), Config::default(), seed(1), 0);
    o.handle(9, Message::NeighborReply { accepted: true }, 1);
    o.handle(9, Message::Neighbor { high: true, card: card(8) }, 1);
    o.handle(9, Message::ForwardJoin { card: card(1), ttl: 3, path: vec![9] }, 1);
    o.handle(9, Message::Relay { origin: 9, route: vec![], inner: Box::new(Message::Prune) }, 1);
    o.handle(9, Message::Gossip { id: MsgId { origin: 9, seq: 1 }, round: 1, kind: Kind::App, payload: vec![] }, 1);
    assert_eq!(o.active().count(), 0);
    assert!(o.stats().ignored >= 4, "{:?}", o.stats());
}

#[test]
fn walk_routes_lose_their_loops() {
    assert_eq!(loop_free(9u32, [1, 2, 3, 1, 4].into_iter()), vec![1, 4]);
    assert_eq!(loop_free(9u32, [1, 9, 2, 3].into_iter()), vec![2, 3]);
    assert_eq!(loop_free(9u32, [2, 3, 2, 3, 5].into_iter()), vec![2, 3, 5]);
    assert_eq!(loop_free(9u32, [1, 2].into_iter()), vec![1, 2]);
}

#[test]
fn evictions_spare_the_last_links_beyond_the_neighbourhood() {
    // Member 0's view is full: neighbours 1 and 2 are linked to members 0
    // knows nothing of; the others only to 0 and to each other (a crowd
    // that can reach nobody else). A crowd member asking in with high
    // priority must displace one of the crowd, never a way out.
    let cfg = Config::default();
    let crowd: Vec<u32> = (3..=cfg.active as u32).collect();
    for s in 0..64 {
        let mut o = Overlay::new(card(0), cfg, seed(s), 0);
        for p in 1..=cfg.active as u32 {
            o.handle(p, Message::Neighbor { high: true, card: card(p) }, 1);
        }
        o.handle(1, Message::Neighbors { peers: vec![0, 100], shape: Shape::default() }, 2);
        o.handle(2, Message::Neighbors { peers: vec![0, 200, 201], shape: Shape::default() }, 2);
        for &p in &crowd {
            o.handle(p, Message::Neighbors { peers: vec![0, 3], shape: Shape::default() }, 2);
        }
        // Past the newcomers' grace.
        let later = 10 * cfg.round;
        o.handle(50, Message::Neighbor { high: true, card: card(50) }, later);
        assert!(o.is_active(50));
        assert!(o.is_active(1) && o.is_active(2), "seed {s}: a way out was evicted");
        assert_eq!(o.active().count(), cfg.active);
    }
}

#[test]
fn shuffles_ending_here_are_taken_twice_a_round_per_link() {
    let cfg = Config::default();
    let mut o = Overlay::new(card(0), cfg, seed(4), 0);
    o.handle(1, Message::Neighbor { high: false, card: card(1) }, 1);
    let shuffle = |first: u32| Message::Shuffle {
        origin: 1,
        ttl: 1,
        path: vec![1],
        cards: (first..first + 8).map(card).collect(),
    };
    for k in 0..20u32 {
        o.handle(1, shuffle(1000 + 8 * k), 10 + u64::from(k));
    }
    let passive: Vec<u32> = o.passive().collect();
    assert!(
        !passive.is_empty() && passive.iter().all(|&p| p < 1016),
        "only the first two shuffles' cards: {passive:?}"
    );
    o.handle(1, shuffle(5000), 10 + cfg.round);
    assert!(o.passive().any(|p| p >= 5000), "a round later the link's next shuffle is taken");
}

#[test]
fn shuffle_answers_are_a_shuffles_worth_twice_a_round_per_link() {
    let cfg = Config::default();
    let mut o = Overlay::new(card(0), cfg, seed(5), 0);
    o.handle(1, Message::Neighbor { high: false, card: card(1) }, 1);
    let answer = |first: u32| Message::Relay {
        origin: 1,
        route: vec![],
        inner: Box::new(Message::ShuffleReply { cards: (first..first + 64).map(card).collect() }),
    };
    let sample = cfg.shuffle_cards();
    o.handle(1, answer(1000), 2);
    assert_eq!(o.passive().count(), sample, "a shuffle's worth of 64 cards");
    for k in 1..20u32 {
        o.handle(1, answer(1000 + 64 * k), 2 + u64::from(k));
    }
    assert_eq!(o.passive().count(), 2 * sample, "two answers a round over one link");
    // A stranger's answer is not taken at all.
    o.handle(9, answer(9000), 3 + cfg.round);
    assert!(o.passive().all(|p| p < 9000));
}

#[test]
fn a_stream_of_forced_links_displaces_itself_not_the_neighbours_that_relay() {
    // Member 0 has a full view of neighbours that relay it broadcasts
    // others started. Then a member of a flood forces a link every 50 ms
    // (JOINs through 0, and join walks ending at 0): the flood's links
    // take each other's place, and every neighbour that relays stays.
    // HyParView's random draw loses them within a few forced links.
    let cfg = Config::default();
    let gossip = |origin: u32, seq: u64| Message::Gossip {
        id: MsgId { origin, seq },
        round: 1,
        kind: Kind::App,
        payload: vec![1],
    };
    for s in 0..16 {
        let mut relaying: Vec<u32> = (1..=cfg.active as u32).collect();
        let mut o = Overlay::new(card(0), cfg, seed(s), 0);
        for &p in &relaying {
            o.handle(p, Message::Neighbor { high: false, card: card(p) }, 1);
        }
        let mut now = 10 * cfg.round;
        for k in 0..200u32 {
            // Every second, each neighbour relays something.
            if k % 20 == 0 {
                for &p in &relaying {
                    o.handle(p, gossip(100 + p, u64::from(k)), now);
                }
            }
            let flooder = 1000 + k;
            if k % 2 == 0 {
                o.handle(flooder, Message::Join { card: card(flooder) }, now);
            } else {
                // Its join walk ends here: we link to it.
                let via = *relaying.first().expect("a neighbour");
                o.handle(via, Message::ForwardJoin { card: card(flooder), ttl: 0, path: vec![via] }, now);
                o.link_up(flooder, now);
                o.handle(flooder, Message::NeighborReply { accepted: true }, now);
                assert!(o.is_active(flooder), "the walk's end linked to it");
            }
            o.tick(now);
            // The first forced link is drawn at random: it is not a stream
            // yet. After it, nobody that relays goes.
            let kept: Vec<u32> = relaying.iter().copied().filter(|&p| o.is_active(p)).collect();
            if k == 0 {
                assert!(kept.len() + 1 >= relaying.len(), "seed {s}: {kept:?}");
                relaying = kept;
            } else {
                assert_eq!(kept, relaying, "seed {s}, forced link {k}: a neighbour that relays was displaced");
            }
            assert!(o.active().count() <= 2 * cfg.active);
            now += 50;
        }
        // Once the stream stops, a forced link takes a random place again.
        let mut lost = false;
        for k in 0..40u32 {
            now += RELAYED_FOR * cfg.round;
            o.handle(5000 + k, Message::Neighbor { high: true, card: card(5000 + k) }, now);
            lost |= relaying.iter().any(|&p| !o.is_active(p));
        }
        assert!(lost, "seed {s}: outside a stream the draw is HyParView's random one");
        assert!(!relaying.is_empty());
    }
}

#[test]
fn a_shuffle_is_taken_and_answered_a_shuffles_worth_at_most() {
    let cfg = Config::default();
    let sample = cfg.shuffle_cards();
    let mut o = Overlay::new(card(0), cfg, seed(6), 0);
    // More links than the view holds: the evicted ones are passive peers.
    for p in 100..140 {
        o.handle(p, Message::Neighbor { high: true, card: card(p) }, 1);
    }
    let known = o.passive().count();
    assert!(known > sample, "{known}");
    let _ = drain(&mut o);
    let from = o.active().next().expect("a neighbour");
    let shuffle = Message::Shuffle { origin: from, ttl: 1, path: vec![from], cards: (1000..1064).map(card).collect() };
    o.handle(from, shuffle, 10);
    let taken = o.passive().filter(|&p| p >= 1000).count();
    assert!(taken > 0 && taken <= sample, "took {taken} of 64 cards");
    let answers: Vec<usize> = drain(&mut o)
        .into_iter()
        .filter_map(|m| match m {
            Message::Relay { inner, .. } => match *inner {
                Message::ShuffleReply { cards } => Some(cards.len()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 1);
    assert!(answers[0] <= sample && answers[0] > 0, "answered with {} cards ({known} known)", answers[0]);
}

/// Kills the member with the most tree links and broadcasts at once from
/// a member that was not its neighbour; returns the victim's neighbours,
/// the broadcast and who lacked it after `ms`.
fn kill_a_hub_and_broadcast(net: &mut Net, ms: Millis) -> (Vec<u32>, MsgId<u32>, Vec<u32>) {
    net.broadcast(0, b"warm");
    net.run(2_000);
    let victim =
        (1..net.nodes.len() as u32).max_by_key(|&i| net.nodes[i as usize].plumtree().eager().len()).expect("members");
    net.alive[victim as usize] = false;
    let neighbours: Vec<u32> = net.nodes[victim as usize].active().collect();
    let origin = net.live().into_iter().find(|i| !neighbours.contains(i)).expect("a member not linked to it");
    let id = net.broadcast(origin, b"right after");
    net.run(ms);
    let missing = net.live().into_iter().filter(|&i| !net.got(i, id)).collect();
    (neighbours, id, missing)
}

/// With heartbeats a dead tree neighbour is quiet after about a second:
/// the tree is grafted around it, so a broadcast sent as it died reaches
/// everyone within 1.5 s, and no neighbour counts it as one by 2.2 s —
/// not `fail_after` (4 s). Without heartbeats it is held until then.
#[test]
fn a_dead_tree_neighbour_goes_quiet_and_is_replaced_before_fail_after() {
    let cfg = Config { announce_joins: false, ..Config::default() };
    assert_eq!(cfg.heartbeat, 250);
    let mut net = grown(40, cfg);
    let (neighbours, _, missing) = kill_a_hub_and_broadcast(&mut net, 1_500);
    assert!(missing.is_empty(), "not delivered within 1.5 s to {missing:?}");
    // A link that was not a tree link is pinged once a round: quiet by
    // 1.75 s. (It leaves the view once another member takes a link in its
    // place: in this small network views are full, and that waits.)
    net.run(700);
    let victim = (0..40u32).find(|&i| !net.alive[i as usize]).expect("the hub died");
    let quiet = |o: &Overlay<u32>| o.active.iter().find(|a| a.card.peer == victim).is_none_or(|a| a.quiet);
    for &n in &neighbours {
        let o = &net.nodes[n as usize];
        assert!(quiet(o), "{n} still takes the dead {victim} for a neighbour");
    }

    // The same crash without heartbeats: the dead hub is a neighbour
    // until it has been silent for `fail_after`.
    let mut net = grown(40, Config { heartbeat: 0, ..cfg });
    let (neighbours, _, _) = kill_a_hub_and_broadcast(&mut net, 1_500);
    net.run(700);
    let victim = (0..40u32).find(|&i| !net.alive[i as usize]).expect("the hub died");
    assert!(neighbours.iter().all(|&n| net.nodes[n as usize].is_active(victim)), "held until failed");
}

/// A live neighbour is never quiet in the steady state: tree links
/// answer their heartbeats, the others the round's pings.
#[test]
fn live_links_stay_heard_under_heartbeats() {
    let mut net = grown(30, Config { announce_joins: false, ..Config::default() });
    for k in 0..5u8 {
        net.broadcast(u32::from(k), &[k]);
        net.run(3_000);
    }
    for i in net.live() {
        let s = net.nodes[i as usize].stats();
        assert_eq!((s.quiet, s.suspicions), (0, 0), "member {i}");
    }
}

/// A link whose ping goes unanswered is pinged every beat and is quiet
/// three beats after the first unanswered ping, not before; one lost ping
/// on a link with a round trip under two beats never makes it quiet.
#[test]
fn a_link_is_quiet_three_beats_after_an_unanswered_ping() {
    let cfg = Config::default();
    let hb = cfg.heartbeat;
    let mut o = Overlay::new(card(1), cfg, seed(1), 0);
    o.handle(2, Message::Neighbor { high: true, card: card(2) }, 0);
    // Runs to `until`, answering pings `rtt` later unless `lose` says so;
    // returns when pings were sent and when the link went quiet.
    let mut answers: Vec<(Millis, u64)> = Vec::new();
    let mut run = |o: &mut Overlay<u32>, from: Millis, until: Millis, rtt: Millis, lose: &dyn Fn(Millis) -> bool| {
        let (mut sent, mut quiet_at) = (Vec::new(), None);
        let mut now = from;
        while now < until {
            now += 10;
            answers.retain(|&(at, nonce)| {
                let due = at <= now;
                if due {
                    o.handle(2, Message::Pong { nonce }, now);
                }
                !due
            });
            o.tick(now);
            if o.stats().quiet > 0 && quiet_at.is_none() {
                quiet_at = Some(now);
            }
            for m in drain(o) {
                if let Message::Ping { nonce } = m {
                    sent.push(now);
                    if !lose(now) {
                        answers.push((now + rtt, nonce));
                    }
                }
            }
        }
        (sent, quiet_at)
    };
    // The first ping is lost, the next answered 400 ms (1.6 beats) later.
    let first = std::cell::Cell::new(None);
    let (sent, quiet_at) = run(&mut o, 0, 5_000, 400, &|t| first.replace(Some(first.get().unwrap_or(t))).is_none());
    assert!(sent.len() >= 5, "{sent:?}");
    assert_eq!(sent[1] - sent[0], hb, "pinged again a beat after the lost one: {sent:?}");
    assert_eq!(quiet_at, None, "one lost ping and a slow answer");

    // Answers within a beat, then every ping lost: quiet three beats
    // after the first lost one.
    run(&mut o, 5_000, 6_000, 100, &|_| false);
    let (sent, quiet_at) = run(&mut o, 6_000, 10_000, 100, &|_| true);
    assert!(sent.windows(2).take(3).all(|w| w[1] - w[0] == hb), "{sent:?}");
    assert_eq!(quiet_at, Some(sent[0] + 3 * hb), "{sent:?}");
    assert!(o.active.iter().any(|a| a.card.peer == 2 && a.quiet), "still a neighbour, but quiet");
}

fn drain(o: &mut Overlay<u32>) -> Vec<Message<u32>> {
    let mut out = Vec::new();
    while let Some(x) = o.poll() {
        if let Output::Send { msg, .. } = x {
            out.push(msg);
        }
    }
    out
}

#[test]
fn after_we_move_lost_links_keep_their_cards_and_unroutable_peers_wait() {
    let mut net = grown(24, Config { announce_joins: false, ..Config::default() });
    let now = net.now;
    // Two members alike: one loses its links as any member does (the
    // neighbours are taken for gone), one because its own address changed.
    let (a, b) = (5usize, 9usize);
    let lost_a: Vec<u32> = net.nodes[a].active().collect();
    let lost_b: Vec<u32> = net.nodes[b].active().collect();
    assert!(lost_a.len() >= 2 && lost_b.len() >= 2, "{lost_a:?} {lost_b:?}");
    for &p in &lost_a {
        net.nodes[a].link_down(p, now);
    }
    net.nodes[b].addresses_changed();
    for &p in &lost_b {
        net.nodes[b].link_down(p, now);
    }
    let kept = |o: &Overlay<u32>, p: u32| o.passive().any(|q| q == p);
    assert!(lost_a.iter().all(|&p| !kept(&net.nodes[a], p)), "a lost link forgets the neighbour's card");
    assert!(lost_b.iter().all(|&p| kept(&net.nodes[b], p)), "after our move, every lost neighbour's card stays");

    // Alone, b dials passive peers. One that needs an introducer we lack
    // stays in the passive view and is not dialed again for four rounds;
    // one that failed outright is forgotten.
    let o = &mut net.nodes[b];
    assert!(o.pending.len() >= 2, "b dials to refill its view: {:?}", o.pending.len());
    let (x, y) = (o.pending[0].card.peer, o.pending[1].card.peer);
    o.link_unroutable(x, now);
    o.link_failed(y, now);
    assert!(kept(o, x) && !o.pending.iter().any(|p| p.card.peer == x), "x kept, not pending");
    assert!(!kept(o, y), "y forgotten");
    let round = o.config().round;
    for t in [now + 1, now + 2 * round, now + 4 * round - 1] {
        while o.poll().is_some() {}
        let pending: Vec<u32> = o.pending.iter().map(|p| p.card.peer).collect();
        for p in pending {
            if p != x {
                o.link_failed(p, t);
            }
        }
        assert!(!o.pending.iter().any(|p| p.card.peer == x), "x held until four rounds pass (t = {t})");
    }
    // Four rounds on, x is a candidate again: with every other passive
    // peer gone, it is the one dialed.
    let others: Vec<u32> = o.passive().filter(|&p| p != x).collect();
    for p in others {
        o.link_failed(p, now + 4 * round);
    }
    let pending: Vec<u32> = o.pending.iter().map(|p| p.card.peer).collect();
    for p in pending.into_iter().filter(|&p| p != x) {
        o.link_failed(p, now + 4 * round);
    }
    // (A member cut off dials wide: its other cards may all be gone
    // already, and then its next tick is what dials.)
    o.tick(now + 4 * round);
    assert!(o.pending.iter().any(|p| p.card.peer == x), "x dialed again after its hold");
}

// ------------------------------------------------------------ topology policies

/// Members `0..n` under `topology`; those `serves` picks can serve.
fn shaped(n: u32, topology: Topology, serves: impl Fn(u32) -> bool, contact: impl Fn(u32) -> u32) -> Net {
    let cfg = |i| Config { topology, super_capable: serves(i), announce_joins: false, ..Config::default() };
    let mut net = Net::with(n, cfg);
    for i in 1..n {
        net.join(i, contact(i));
        net.run(50);
    }
    net.run(8_000);
    net
}

fn role(net: &Net, i: u32) -> Role {
    net.nodes[i as usize].shape().role
}

fn connected(net: &Net) -> bool {
    let mut edges = BTreeSet::new();
    for i in net.live() {
        for p in net.nodes[i as usize].active() {
            edges.insert((i.min(p), i.max(p)));
        }
    }
    crate::topology::is_connected(&crate::topology::graph_of(net.live(), edges))
}

#[test]
fn a_hierarchy_links_leaves_only_to_super_peers_within_their_bound() {
    let h = Topology::Hierarchical { core: 3, uplinks: 2, leaves: 8 };
    let mut net = shaped(60, h, |i| i % 5 == 0, |i| i / 2);
    let mut with_two = 0;
    for i in net.live() {
        let o = &net.nodes[i as usize];
        let peers: Vec<u32> = o.active().collect();
        match role(&net, i) {
            Role::Leaf => {
                assert!(peers.iter().all(|&p| role(&net, p) == Role::Super), "leaf {i} links to a leaf: {peers:?}");
                assert!(!peers.is_empty() && peers.len() <= 2, "leaf {i}: {peers:?}");
                with_two += usize::from(peers.len() == 2);
            }
            Role::Super => {
                let leaves = peers.iter().filter(|&&p| role(&net, p) == Role::Leaf).count();
                assert!(leaves <= 8, "super-peer {i} carries {leaves} leaves");
                assert!(i % 5 == 0, "{i} is a super-peer without being able to serve");
            }
            Role::Member => panic!("{i} has no role"),
        }
        assert!(o.violations().is_empty(), "{i}: {:?}", o.violations());
        assert_eq!(o.shape().policy, PolicyKind::Hierarchical);
    }
    assert!(with_two >= 40, "{with_two} of 48 leaves have both uplinks");
    assert!(connected(&net));
    let id = net.broadcast(7, b"to all");
    net.run(2_000);
    assert!(net.live().iter().all(|&i| net.got(i, id)), "a broadcast reaches every member");
}

#[test]
fn leaves_with_no_super_peer_elect_one() {
    let h = Topology::Hierarchical { core: 3, uplinks: 2, leaves: 8 };
    let mut net = shaped(16, h, |_| false, |i| i - 1);
    // Nobody can serve: leaves hold the links they joined over until one
    // of them has gone PROMOTE_UNLINKED_AFTER rounds (and its jitter, up
    // to half that again) without a super-peer.
    net.run(shape::PROMOTE_UNLINKED_AFTER * 3 / 2 * 1000 + 20_000);
    let promoted = net.live().iter().filter(|&&i| net.nodes[i as usize].stats().promotions > 0).count();
    assert!(promoted >= 1, "a leaf became a super-peer");
    assert!(promoted <= 8, "{promoted} of 16 promoted");
    for i in net.live() {
        if role(&net, i) == Role::Leaf {
            assert!(net.nodes[i as usize].active().any(|p| role(&net, p) == Role::Super), "leaf {i} has an uplink");
        }
    }
    assert!(connected(&net));
    let id = net.broadcast(15, b"x");
    net.run(2_000);
    assert!(net.live().iter().all(|&i| net.got(i, id)));
}

#[test]
fn a_full_super_peer_refuses_leaves_even_asked_with_high_priority() {
    let h = Topology::Hierarchical { core: 3, uplinks: 2, leaves: 2 };
    let cfg = Config { topology: h, super_capable: true, ..Config::default() };
    let mut o = Overlay::new(card(0), cfg, seed(0), 0);
    let leaf = |p| Card { shape: Shape::new(PolicyKind::Hierarchical, Role::Leaf), ..card(p) };
    let mut replies = Vec::new();
    for p in 1..=3 {
        o.handle(p, Message::Neighbor { high: true, card: leaf(p) }, 1);
        replies.extend(drain(&mut o).into_iter().filter_map(|m| match m {
            Message::NeighborReply { accepted } => Some(accepted),
            _ => None,
        }));
    }
    assert_eq!(replies, [true, true, false]);
    assert_eq!(o.active().count(), 2);
    // A leaf's NEIGHBOR to a leaf is refused, with the refuser's role.
    let lcfg = Config { topology: h, ..Config::default() };
    let mut l = Overlay::new(card(9), lcfg, seed(9), 0);
    l.handle(1, Message::Neighbor { high: true, card: leaf(1) }, 1);
    let sent = drain(&mut l);
    assert!(sent.contains(&Message::NeighborReply { accepted: false }), "{sent:?}");
    assert!(sent.iter().any(|m| matches!(m, Message::Neighbors { shape, .. } if shape.role == Role::Leaf)));
}

#[test]
fn members_of_another_policy_are_refused_and_told() {
    let mut net = Net::with(2, |i| Config {
        topology: if i == 0 { Topology::Mesh } else { Topology::HIERARCHICAL },
        super_capable: true,
        ..Config::default()
    });
    net.join(1, 0);
    net.run(1_000);
    let events = net.mismatches.clone();
    assert!(events.contains(&(0, 1, PolicyKind::Hierarchical)), "the contact refused: {events:?}");
    assert!(events.contains(&(1, 0, PolicyKind::Mesh)), "the newcomer was told: {events:?}");
    assert_eq!(net.nodes[0].active().count(), 0);
    assert_eq!(net.nodes[1].active().count(), 0);
    assert_eq!(net.nodes[0].stats().mismatches, 1);
}

#[test]
fn a_spanning_tree_bounds_every_members_links() {
    let mut net = shaped(40, Topology::SpanningTree { max_degree: 3 }, |_| false, |i| i / 2);
    for i in net.live() {
        let d = net.nodes[i as usize].active().count();
        assert!((1..=3).contains(&d), "{i} has {d} links");
    }
    assert!(connected(&net));
    let id = net.broadcast(3, b"y");
    net.run(2_000);
    assert!(net.live().iter().all(|&i| net.got(i, id)));
    assert!(net.eager_edges().len() <= 3 * 40 / 2);
}

#[test]
fn a_star_links_each_leaf_to_one_hub() {
    // Hubs 0, 10, 20, 30; newcomers join with a hub's invitation.
    let mut net = shaped(40, Topology::Star { leaves: 16 }, |i| i % 10 == 0, |i| (i - 1) / 10 * 10);
    for i in net.live() {
        let peers: Vec<u32> = net.nodes[i as usize].active().collect();
        if role(&net, i) == Role::Leaf {
            assert_eq!(peers.len(), 1, "leaf {i}: {peers:?}");
            assert_eq!(role(&net, peers[0]), Role::Super);
        } else {
            assert!(peers.iter().filter(|&&p| role(&net, p) == Role::Leaf).count() <= 16);
        }
    }
    assert!(connected(&net));
    let id = net.broadcast(39, b"z");
    net.run(2_000);
    assert!(net.live().iter().all(|&i| net.got(i, id)));
}

#[test]
fn a_leaf_contact_holds_a_joining_leaf_until_it_finds_a_super_peer() {
    let h = Topology::Hierarchical { core: 3, uplinks: 2, leaves: 8 };
    let cfg = |i| Config {
        topology: h,
        super_capable: i == 0,
        announce_joins: false,
        announce_views: 2_000,
        ..Config::default()
    };
    let mut net = Net::with(3, cfg);
    net.join(1, 0);
    net.run(3_000);
    assert_eq!(role(&net, 1), Role::Leaf);
    // 2 joins through the leaf 1 and cannot reach the super-peer 0 yet
    // (behind NATs: its RSVP travels through 1).
    net.blocked.insert((0, 2));
    net.join(2, 1);
    net.run(20_000);
    let contact = &net.nodes[1];
    assert!(contact.active().any(|p| p == 2), "20 rounds on, the contact still holds its joiner");
    assert!(contact.violations().is_empty(), "a held joiner is no violation: {:?}", contact.violations());
    assert!(!contact.known_links().contains(&(1, 2)), "nor a link of the policy's graph");
    assert_eq!(role(&net, 2), Role::Leaf, "the joiner waits for a super-peer");
    assert!(net.nodes[2].stats().connects > 0, "it asked the super-peer its contact handed it");
    net.blocked.clear();
    net.run(20_000);
    assert!(net.nodes[2].active().any(|p| p == 0), "the joiner links to the super-peer");
    assert!(!net.nodes[1].active().any(|p| p == 2), "and lets its contact go");
    assert!(net.live().iter().all(|&i| net.nodes[i as usize].violations().is_empty()));
}

#[test]
fn a_leaf_in_no_network_yet_does_not_promote() {
    let h = Topology::Hierarchical { core: 3, uplinks: 2, leaves: 8 };
    let mut o = Overlay::new(card(0), Config { topology: h, ..Config::default() }, seed(0), 0);
    for r in 1..=3 * shape::PROMOTE_UNLINKED_AFTER {
        o.tick(r * 1000);
    }
    assert_eq!(o.shape().role, Role::Leaf, "waiting for its invitation, a member is in no network");
    assert_eq!(o.stats().promotions, 0);
}

#[test]
fn a_reachable_leaf_is_elected_under_a_hierarchy_only() {
    let h = Topology::Hierarchical { core: 3, uplinks: 2, leaves: 8 };
    let mut o = Overlay::new(card(0), Config { topology: h, ..Config::default() }, seed(0), 0);
    assert!(o.elect(5));
    assert_eq!(o.shape().role, Role::Super);
    assert_eq!(o.stats().elections, 1);
    assert!(std::iter::from_fn(|| o.poll()).any(|e| matches!(e, Output::Event(Event::RoleChanged(Role::Super)))));
    assert!(!o.elect(6), "a super-peer stays one");
    let star = Config { topology: Topology::Star { leaves: 8 }, ..Config::default() };
    let mut o = Overlay::new(card(1), star, seed(1), 0);
    assert!(!o.elect(5), "a star keeps the hubs it was given");
    assert_eq!(o.shape().role, Role::Leaf);
}

#[test]
fn a_super_peer_that_steps_down_becomes_a_leaf_and_its_leaves_find_others() {
    // Room for every leaf's two uplinks without the one that steps down.
    let h = Topology::Hierarchical { core: 3, uplinks: 2, leaves: 12 };
    let mut net = shaped(60, h, |i| i % 5 == 0, |i| i / 2);
    let gone = 10;
    let its_leaves: Vec<u32> = net.nodes[gone as usize].active().filter(|&p| role(&net, p) == Role::Leaf).collect();
    assert!(!its_leaves.is_empty(), "super-peer {gone} carries leaves");
    let now = net.now;
    assert!(net.nodes[gone as usize].step_down(now));
    assert!(!net.nodes[gone as usize].step_down(now), "a leaf has nothing to step down from");
    assert_eq!(net.nodes[gone as usize].stats().step_downs, 1);
    net.drain(gone);
    net.run(20_000);
    assert_eq!(role(&net, gone), Role::Leaf);
    for i in net.live() {
        let o = &net.nodes[i as usize];
        if role(&net, i) == Role::Leaf {
            let peers: Vec<u32> = o.active().collect();
            assert!(peers.iter().all(|&p| role(&net, p) == Role::Super), "leaf {i} links to a leaf: {peers:?}");
            assert!(!peers.is_empty(), "leaf {i} has no uplink");
        }
        assert!(o.violations().is_empty(), "{i}: {:?}", o.violations());
    }
    let moved_on = its_leaves.iter().filter(|&&l| net.nodes[l as usize].active().count() == 2).count();
    assert_eq!(moved_on, its_leaves.len(), "{moved_on} of {} leaves have two uplinks again", its_leaves.len());
    assert_eq!(net.live().iter().filter(|&&i| net.nodes[i as usize].stats().promotions > 0).count(), 0);
    assert!(connected(&net));
    let id = net.broadcast(gone, b"from a leaf now");
    net.run(2_000);
    assert!(net.live().iter().all(|&i| net.got(i, id)));
    // A star keeps the hubs it was given.
    let mut o = Overlay::new(
        card(1),
        Config { topology: Topology::Star { leaves: 8 }, super_capable: true, ..Config::default() },
        seed(1),
        0,
    );
    assert_eq!(o.shape().role, Role::Super);
    assert!(!o.step_down(5));
}

#[test]
fn a_super_peer_with_a_lower_capacity_carries_no_more_and_nobody_sees_a_violation() {
    // Room for every leaf's two uplinks without the small one's.
    let h = Topology::Hierarchical { core: 3, uplinks: 2, leaves: 12 };
    let small = 10;
    let cfg = |i: u32| Config {
        topology: h,
        super_capable: i.is_multiple_of(5),
        announce_joins: false,
        announce_views: 5_000,
        max_leaves: (i == small).then_some(2),
        ..Config::default()
    };
    let mut net = Net::with(60, cfg);
    for i in 1..60 {
        // Half of those after it through the small one: it turns most away.
        net.join(i, if i > small && i % 2 == 0 { small } else { i / 2 });
        net.run(50);
    }
    net.run(20_000);
    let leaves_at = |net: &Net, s: u32| net.nodes[s as usize].active().filter(|&p| role(net, p) == Role::Leaf).count();
    assert_eq!(role(&net, small), Role::Super);
    assert!(leaves_at(&net, small) <= 2, "the small one carries {}", leaves_at(&net, small));
    assert!(leaves_at(&net, small) > 0, "and some");
    let busiest = (0..60).filter(|&s| s % 5 == 0 && s != small).map(|s| leaves_at(&net, s)).max();
    assert!(busiest.is_some_and(|b| b > 2 && b <= 12), "the others carry up to the policy's bound: {busiest:?}");
    for i in net.live() {
        let o = &net.nodes[i as usize];
        if role(&net, i) == Role::Leaf {
            assert!(o.active().count() > 0, "leaf {i} has no uplink");
        }
        assert!(o.violations().is_empty(), "{i}: {:?}", o.violations());
    }
    assert!(connected(&net));
    // The bound is the policy's to give: a member's own capacity is below it.
    assert_eq!(h.own_max_leaves(12), Ok(12));
    assert!(h.own_max_leaves(13).is_err_and(|e| e.contains("bound of 12")));
    assert!(Topology::Mesh.own_max_leaves(4).is_err_and(|e| e.contains("no super-peers")));
}

#[test]
fn a_view_longer_than_a_list_is_told_in_part() {
    // A joining leaf holds the leaves that join through it; between two
    // rounds, 80 of them.
    let h = Topology::Hierarchical { core: 3, uplinks: 2, leaves: 8 };
    let mut o = Overlay::new(card(0), Config { topology: h, ..Config::default() }, seed(0), 0);
    let leaf = |p| Card { shape: Shape::new(PolicyKind::Hierarchical, Role::Leaf), ..card(p) };
    for p in 1..=80 {
        o.handle(p, Message::Join { card: leaf(p) }, 1);
    }
    assert_eq!(o.active().count(), 80);
    let lists: Vec<usize> = drain(&mut o)
        .into_iter()
        .filter_map(|m| match m {
            Message::Neighbors { peers, .. } => Some(peers.len()),
            _ => None,
        })
        .collect();
    assert_eq!(lists.len(), 80, "every neighbour is told");
    assert!(lists.iter().all(|&n| n <= MAX_LIST), "every Neighbors list decodes: {lists:?}");
}

fn with_role(p: u32, role: Role) -> Card<u32> {
    Card { shape: Shape::new(PolicyKind::Hierarchical, role), ..card(p) }
}

#[test]
fn a_hierarchys_passive_view_keeps_leaves_cards_beside_super_peers() {
    let h = Topology::Hierarchical { core: 3, uplinks: 2, leaves: 8 };
    let cfg = Config { topology: h, ..Config::default() };
    let mut o = Overlay::new(card(0), cfg, seed(0), 0);
    o.handle(1, Message::Neighbor { high: true, card: with_role(1, Role::Super) }, 1);
    assert!(o.is_active(1));
    // Rounds of answers, each a shuffle's worth: leaves' cards first,
    // then many more super-peers' cards than the view holds.
    let mut next = 100;
    for r in 0..40u64 {
        let role = if r < 5 { Role::Leaf } else { Role::Super };
        let cards = (0..cfg.shuffle_cards()).map(|_| (with_role(next, role), next += 1).0).collect();
        let inner = Box::new(Message::ShuffleReply { cards });
        o.handle(1, Message::Relay { origin: 1, route: Vec::new(), inner }, 2_000 * (r + 1));
    }
    let roles: Vec<Role> = o.cards().skip(1).map(|c| c.shape.role).collect();
    let supers = roles.iter().filter(|&&r| r == Role::Super).count();
    let leaves = roles.iter().filter(|&&r| r == Role::Leaf).count();
    assert_eq!(supers, cfg.passive, "super-peers' cards fill the view");
    assert_eq!(leaves, cfg.passive / 2, "and leaves' cards are kept beside them");
}

/// Hands `o` answers' worth of cards (`make(p)` for peers `first..`) over
/// the links to `from`, two answers a round per link as members take them.
fn feed_cards(o: &mut Overlay<u32>, from: &[u32], first: u32, answers: u32, make: impl Fn(u32) -> Card<u32>) {
    let per = o.cfg.shuffle_cards() as u32;
    for k in 0..answers {
        let peer = from[k as usize % from.len()];
        let at = 2 + 1_000 * u64::from(k / (2 * from.len() as u32)) + u64::from(k % 2);
        let cards = (0..per).map(|i| make(first + k * per + i)).collect();
        let inner = Box::new(Message::ShuffleReply { cards });
        o.handle(peer, Message::Relay { origin: peer, route: Vec::new(), inner }, at);
    }
}

fn dials(o: &mut Overlay<u32>) -> usize {
    std::iter::from_fn(|| o.poll()).filter(|out| matches!(out, Output::Connect { .. })).count()
}

#[test]
fn a_leaf_that_lost_its_super_peers_asks_several_at_once_and_again_a_round_later() {
    let h = Topology::Hierarchical { core: 3, uplinks: 2, leaves: 8 };
    let cfg = Config { topology: h, passive: 60, ..Config::default() };
    let mut o = Overlay::new(card(0), cfg, seed(0), 0);
    for p in [1, 2] {
        o.handle(p, Message::Neighbor { high: true, card: with_role(p, Role::Super) }, 1);
    }
    // More super-peers' cards than it may dial at once.
    feed_cards(&mut o, &[1, 2], 10, 8, |p| with_role(p, Role::Super));
    o.tick(1_500);
    let _ = std::iter::from_fn(|| o.poll()).count();
    assert_eq!(o.pending(), 0, "two uplinks: nothing to ask for");
    let wave = 2 * cfg.active;
    o.link_down(1, 2_500);
    assert_eq!(dials(&mut o), 1, "one uplink lost: one asked for");
    o.link_down(2, 2_500);
    assert_eq!(dials(&mut o), wave - 1, "none left: a wave's worth asked for");
    assert!(o.poll_timeout() <= 3_500, "due when the wave is a round old: {}", o.poll_timeout());
    o.tick(3_400);
    assert_eq!(dials(&mut o), 0, "no answer yet, but the wave is not a round old");
    for t in [3_500, 4_600, 5_700] {
        o.tick(t);
        assert_eq!(dials(&mut o), wave, "a round on, the next wave (t = {t})");
    }
    o.tick(6_800);
    assert_eq!(dials(&mut o), 0, "up to {STRANDED_WAVES} waves in flight");
    assert_eq!(o.pending(), STRANDED_WAVES * wave);
}

#[test]
fn a_member_dials_wide_after_failures_not_after_peers_made_room() {
    let cfg = Config::default();
    let start = |o: &mut Overlay<u32>| {
        for p in 1..=5 {
            o.handle(p, Message::Neighbor { high: true, card: card(p) }, 1);
        }
        feed_cards(o, &[1, 2, 3, 4, 5], 10, 4, card);
        o.tick(1_500);
        let _ = std::iter::from_fn(|| o.poll()).count();
        assert_eq!(o.pending(), 0, "a full view: nothing to ask for");
    };
    // Three neighbours drop us to make room for others: we ask for three.
    let mut o = Overlay::new(card(0), cfg, seed(0), 0);
    start(&mut o);
    for p in 1..=3 {
        o.handle(p, Message::Disconnect { alive: true }, 2_000);
    }
    assert_eq!(dials(&mut o), 3, "refilled one for one");
    // Their transports fail instead: with 2 of 5 left, lost to
    // failure, we are stranded.
    let mut o = Overlay::new(card(0), cfg, seed(0), 0);
    start(&mut o);
    for p in 1..=3 {
        o.link_down(p, 2_000);
    }
    assert_eq!(dials(&mut o), 2 * cfg.active - 2, "a wave's worth asked for");
    // Two made room and one failed: one loss is not a mass failure.
    let mut o = Overlay::new(card(0), cfg, seed(0), 0);
    start(&mut o);
    for p in 1..=2 {
        o.handle(p, Message::Disconnect { alive: true }, 2_000);
    }
    o.link_down(3, 2_000);
    assert_eq!(dials(&mut o), 3, "refilled one for one");
}

#[test]
fn a_leaf_cut_off_with_no_super_peer_left_to_dial_promotes_at_once() {
    let h = Topology::Hierarchical { core: 3, uplinks: 2, leaves: 8 };
    let cfg = Config { topology: h, ..Config::default() };
    let run = |super_card: bool| {
        let mut o = Overlay::new(card(0), cfg, seed(0), 0);
        o.handle(1, Message::Neighbor { high: true, card: with_role(1, Role::Super) }, 1);
        // Leaves' cards, and perhaps one super-peer's.
        feed_cards(&mut o, &[1], 10, 1, |p| with_role(p, if super_card && p == 10 { Role::Super } else { Role::Leaf }));
        o.tick(1_000);
        o.link_down(1, 1_500);
        o.tick(2_000);
        let _ = std::iter::from_fn(|| o.poll()).count();
        o.shape().role
    };
    assert_eq!(run(false), Role::Super, "nothing left to wait for: it serves");
    assert_eq!(run(true), Role::Leaf, "a super-peer's card left to dial: it waits its rounds");
}

#[test]
fn links_lost_to_our_own_move_do_not_strand_us() {
    let cfg = Config::default();
    let mut o = Overlay::new(card(0), cfg, seed(0), 0);
    for p in 1..=5 {
        o.handle(p, Message::Neighbor { high: true, card: card(p) }, 1);
    }
    feed_cards(&mut o, &[1, 2, 3, 4, 5], 10, 4, card);
    o.tick(1_500);
    let _ = std::iter::from_fn(|| o.poll()).count();
    // We moved: the links go one by one, through no fault of theirs.
    o.addresses_changed();
    for p in 1..=3 {
        o.link_down(p, 2_000);
    }
    assert_eq!(dials(&mut o), 3, "two of five left, none lost to failure: one for one");
}

/// Share of the leaves' uplinks that lead to super-peers `0..old`, and
/// the leaves' rewirings: ten super-peers in the network for 120 s (tenure
/// 3 with steps of 40, 80 and 120 s), ten that joined just before 40
/// leaves came (tenure 0, 1 by the end), each leaf joining through a
/// random super-peer. With the standing, or uniformly at random.
fn uplinks_to_the_old(prefer_standing: bool) -> (f64, u64) {
    let (old, supers, n) = (10u32, 20u32, 60u32);
    let h = Topology::Hierarchical { core: 3, uplinks: 2, leaves: 32 };
    let mut net = Net::with(n, |i| Config {
        topology: h,
        super_capable: i < supers,
        announce_joins: false,
        prefer_standing,
        tenure_steps: [40_000, 80_000, 120_000],
        ..Config::default()
    });
    for i in 1..old {
        net.join(i, i - 1);
        net.run(50);
    }
    net.run(120_000);
    for i in old..supers {
        net.join(i, i % old);
        net.run(50);
    }
    net.run(300);
    for i in supers..n {
        net.join(i, (i * 7) % supers);
        net.run(20);
    }
    // Past a leaf's first rewiring (30 to 60 rounds), short of the new
    // super-peers' second tenure step.
    net.run(62_000);
    assert_eq!(net.nodes[0].standing().tenure, 3);
    assert_eq!(net.nodes[(supers - 1) as usize].standing().tenure, 1);
    let ups: Vec<u32> = (supers..n).flat_map(|i| net.nodes[i as usize].active().collect::<Vec<_>>()).collect();
    assert!(ups.iter().all(|&p| p < supers), "leaves link to super-peers only");
    assert!(ups.len() >= 70, "the leaves have their uplinks: {}", ups.len());
    assert!(connected(&net));
    let rewirings = (supers..n).map(|i| net.nodes[i as usize].stats().rewirings).sum();
    (ups.iter().filter(|&&p| p < old).count() as f64 / ups.len() as f64, rewirings)
}

#[test]
fn leaves_lean_on_the_super_peers_up_longest() {
    let (with, rewired) = uplinks_to_the_old(true);
    let (without, rewired_without) = uplinks_to_the_old(false);
    // Measured: 0.74 with (27 rewirings), 0.44 without (5): a leaf's first
    // uplink is its contact, half of them new super-peers here; the
    // weighted choice and the leaves' upgrades move most of the rest.
    assert!(with >= 0.65, "with the standing, {with:.2} of the uplinks lead to the old super-peers");
    assert!(with >= without + 0.2, "{with:.2} with the standing, {without:.2} without");
    // The upgrades are rewirings, paced as the leaves' others are.
    assert!(rewired > rewired_without && rewired <= 2 * 40, "{rewired} rewirings with, {rewired_without} without");
}

#[test]
fn a_member_tells_its_new_tenure_step_and_its_room() {
    let h = Topology::Hierarchical { core: 3, uplinks: 2, leaves: 32 };
    let cfg = |i| Config {
        topology: h,
        super_capable: true,
        max_leaves: (i == 1).then_some(6),
        tenure_steps: [1_000, 2_000, 3_000],
        ..Config::default()
    };
    let mut net = Net::with(2, cfg);
    // Room 0 to 3 by a quarter of the bound; tenure 0 until linked.
    assert_eq!(net.nodes[1].standing(), crate::Standing { tenure: 0, room: 0 });
    net.run(5_000);
    assert_eq!(net.nodes[0].standing().tenure, 0, "no link, no tenure");
    net.join(1, 0);
    net.run(1_500);
    assert_eq!(net.nodes[0].standing().tenure, 1);
    // Its neighbour's copy of its card says so.
    let told = |net: &Net| {
        let o = &net.nodes[1];
        o.cards().find(|c| c.peer == 0).map(|c| c.shape.standing.tenure)
    };
    assert_eq!(told(&net), Some(1));
    net.run(2_000);
    assert_eq!(told(&net), Some(3));
    assert_eq!(net.nodes[0].cards().find(|c| c.peer == 1).map(|c| c.shape.standing.room), Some(0));
}
