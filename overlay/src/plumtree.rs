//! Plumtree (Leitão, Pereira, Rodrigues 2007): broadcast along a spanning
//! tree that builds and repairs itself.
//!
//! Every neighbour starts *eager*: a new message is pushed to it whole. A
//! duplicate shows a redundant link, so its receiver PRUNEs the sender to
//! *lazy*, and lazy neighbours only get IHAVE announcements. When an
//! announced message does not arrive within a timeout, the receiver GRAFTs
//! the announcer: gets the message and makes the link eager again, which
//! repairs the tree after failures. The eager links of all nodes form the
//! tree; the lazy ones are its spare edges.
//!
//! Standalone so that a driver can run it over any neighbour set (the
//! simulator runs it over each topology policy's graph); [`crate::Overlay`]
//! runs it over HyParView's active view.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::wire::{Kind, Message, MsgId};
use crate::{Millis, PeerKey};

/// Plumtree's timers and cache.
#[derive(Debug, Clone, Copy)]
pub struct PlumConfig {
    /// How long an announced message may stay missing before we GRAFT.
    pub graft_timeout: Millis,
    /// How long before we GRAFT the next announcer if the first did not help.
    pub graft_retry: Millis,
    /// How long a message is remembered (duplicates, GRAFTs).
    pub cache: Millis,
    /// Messages this recent are announced to a new neighbour.
    pub digest: Millis,
}

impl Default for PlumConfig {
    fn default() -> Self {
        Self { graft_timeout: 300, graft_retry: 150, cache: 120_000, digest: 10_000 }
    }
}

/// A message this node delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<P> {
    /// Its id.
    pub id: MsgId<P>,
    /// Hops from the origin.
    pub round: u16,
    /// What it carries.
    pub kind: Kind,
    /// The payload.
    pub payload: Vec<u8>,
    /// The neighbour it came from (`None` for our own broadcast).
    pub from: Option<P>,
}

/// Plumtree's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlumStats {
    /// Messages delivered (first copies, ours excluded).
    pub delivered: u64,
    /// Payload copies received after the first.
    pub duplicates: u64,
    /// GOSSIP messages sent (payload copies).
    pub gossip_sent: u64,
    /// IHAVE entries sent.
    pub ihave_sent: u64,
    /// GRAFTs sent.
    pub grafts_sent: u64,
    /// PRUNEs sent.
    pub prunes_sent: u64,
    /// Announced ids not tracked because [`MAX_MISSING`] were already.
    pub missing_refused: u64,
}

/// Most announced-but-not-received messages tracked at once. Honest
/// announcements of a message that really travels are few (its copies end
/// them within a round); thousands outstanding means someone announces
/// what it never sends.
pub const MAX_MISSING: usize = 4096;

/// Most of [`MAX_MISSING`] one neighbour's announcements may take, so one
/// that announces what it never sends cannot fill the table for the others.
pub const MAX_MISSING_BY: usize = MAX_MISSING / 8;

#[derive(Debug)]
struct Seen {
    round: u16,
    kind: Kind,
    payload: Vec<u8>,
}

#[derive(Debug)]
struct Missing<P> {
    announcers: VecDeque<P>,
    deadline: Millis,
    /// The neighbour whose announcement made us track it.
    by: P,
}

/// One node's Plumtree state.
#[derive(Debug)]
pub struct Plumtree<P: PeerKey> {
    me: P,
    cfg: PlumConfig,
    seq: u64,
    eager: Vec<P>,
    lazy: Vec<P>,
    seen: HashMap<MsgId<P>, Seen>,
    seen_order: VecDeque<(Millis, MsgId<P>)>,
    missing: BTreeMap<MsgId<P>, Missing<P>>,
    /// Entries of `missing` each neighbour's announcements made.
    missing_by: BTreeMap<P, usize>,
    /// Neighbours the driver says have gone quiet (see
    /// [`Plumtree::set_quiet`]).
    quiet: Vec<P>,
    sends: VecDeque<(P, Message<P>)>,
    deliveries: VecDeque<Delivery<P>>,
    stats: PlumStats,
}

impl<P: PeerKey> Plumtree<P> {
    /// A node with no neighbours.
    pub fn new(me: P, cfg: PlumConfig) -> Self {
        Self {
            me,
            cfg,
            seq: 0,
            eager: Vec::new(),
            lazy: Vec::new(),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            missing: BTreeMap::new(),
            missing_by: BTreeMap::new(),
            quiet: Vec::new(),
            sends: VecDeque::new(),
            deliveries: VecDeque::new(),
            stats: PlumStats::default(),
        }
    }

    /// Neighbours we push to (our tree edges).
    pub fn eager(&self) -> &[P] {
        &self.eager
    }

    /// Neighbours we only announce to.
    pub fn lazy(&self) -> &[P] {
        &self.lazy
    }

    /// The counters.
    pub fn stats(&self) -> &PlumStats {
        &self.stats
    }

    /// Messages waiting for a GRAFT timer.
    pub fn missing(&self) -> usize {
        self.missing.len()
    }

    /// A new neighbour: eager until a duplicate says otherwise.
    pub fn neighbor_up(&mut self, p: P, now: Millis) {
        if p != self.me && !self.eager.contains(&p) && !self.lazy.contains(&p) {
            self.eager.push(p);
            // Offer what passed recently: a member that was cut off while a
            // broadcast went by grafts it from its new neighbour.
            let ids: Vec<(MsgId<P>, u16)> = self
                .seen_order
                .iter()
                .rev()
                .take_while(|(at, _)| now.saturating_sub(*at) <= self.cfg.digest)
                .filter_map(|(_, id)| self.seen.get(id).map(|s| (*id, s.round)))
                .take(crate::wire::MAX_LIST)
                .collect();
            if !ids.is_empty() {
                self.stats.ihave_sent += ids.len() as u64;
                self.sends.push_back((p, Message::IHave { ids }));
            }
        }
    }

    /// A neighbour is gone.
    pub fn neighbor_down(&mut self, p: P) {
        self.eager.retain(|&q| q != p);
        self.lazy.retain(|&q| q != p);
        self.quiet.retain(|&q| q != p);
        for m in self.missing.values_mut() {
            m.announcers.retain(|&q| q != p);
        }
    }

    /// The driver's word that neighbour `p` has gone quiet (`true`: a
    /// link that should carry traffic has carried none for a while) or is
    /// heard again (`false`).
    ///
    /// While an eager neighbour is quiet, the tree may be broken above us:
    /// whatever a lazy neighbour announces is grafted at once instead of
    /// after `graft_timeout`, and announcements already waiting are
    /// grafted now. Quiet announcers are grafted last. This is what makes
    /// the first broadcasts after a mass failure cross a tree whose every
    /// other edge is dead: each broken level costs a round trip, not
    /// `graft_timeout` more. In the steady state no eager neighbour is
    /// quiet and nothing changes.
    pub fn set_quiet(&mut self, p: P, quiet: bool, now: Millis) {
        let known = self.quiet.contains(&p);
        if quiet && !known && (self.eager.contains(&p) || self.lazy.contains(&p)) {
            self.quiet.push(p);
            if self.eager.contains(&p) {
                for m in self.missing.values_mut() {
                    m.deadline = m.deadline.min(now);
                }
            }
        } else if !quiet && known {
            self.quiet.retain(|&q| q != p);
        }
    }

    /// Whether an eager neighbour is quiet (see [`Plumtree::set_quiet`]):
    /// the tree above us may be broken.
    pub fn tree_in_doubt(&self) -> bool {
        self.quiet.iter().any(|q| self.eager.contains(q))
    }

    fn make_eager(&mut self, p: P) {
        if let Some(i) = self.lazy.iter().position(|&q| q == p) {
            self.lazy.swap_remove(i);
            self.eager.push(p);
        }
    }

    fn make_lazy(&mut self, p: P) {
        if let Some(i) = self.eager.iter().position(|&q| q == p) {
            self.eager.swap_remove(i);
            self.lazy.push(p);
        }
    }

    /// Starts a broadcast; returns its id.
    pub fn broadcast(&mut self, kind: Kind, payload: Vec<u8>, now: Millis) -> MsgId<P> {
        self.seq += 1;
        let id = MsgId { origin: self.me, seq: self.seq };
        self.remember(id, 0, kind, payload.clone(), now);
        self.push(id, 0, kind, &payload, None);
        id
    }

    fn remember(&mut self, id: MsgId<P>, round: u16, kind: Kind, payload: Vec<u8>, now: Millis) {
        self.seen.insert(id, Seen { round, kind, payload });
        self.seen_order.push_back((now, id));
    }

    fn push(&mut self, id: MsgId<P>, round: u16, kind: Kind, payload: &[u8], except: Option<P>) {
        let next = round.saturating_add(1);
        for &p in &self.eager {
            if Some(p) != except {
                self.sends.push_back((p, Message::Gossip { id, round: next, kind, payload: payload.to_vec() }));
                self.stats.gossip_sent += 1;
            }
        }
        for &p in &self.lazy {
            if Some(p) != except {
                self.sends.push_back((p, Message::IHave { ids: vec![(id, round)] }));
                self.stats.ihave_sent += 1;
            }
        }
    }

    /// Whether we hold (or held, within the memory window) broadcast `id`.
    pub fn has_seen(&self, id: &MsgId<P>) -> bool {
        self.seen.contains_key(id)
    }

    /// Handles a Plumtree message from a neighbour; others are ignored
    /// (returns `false`).
    pub fn handle(&mut self, from: P, msg: Message<P>, now: Millis) -> bool {
        match msg {
            Message::Gossip { id, round, kind, payload } => {
                if self.seen.contains_key(&id) {
                    self.stats.duplicates += 1;
                    if self.eager.contains(&from) {
                        self.make_lazy(from);
                        self.sends.push_back((from, Message::Prune));
                        self.stats.prunes_sent += 1;
                    }
                } else {
                    self.forget_missing(&id);
                    self.stats.delivered += 1;
                    // A link that just carried a first copy is a tree edge.
                    if !self.eager.contains(&from) {
                        if self.lazy.contains(&from) {
                            self.make_eager(from);
                        } else {
                            self.eager.push(from);
                        }
                    }
                    self.push(id, round, kind, &payload, Some(from));
                    self.remember(id, round, kind, payload.clone(), now);
                    self.deliveries.push_back(Delivery { id, round, kind, payload, from: Some(from) });
                }
            }
            Message::IHave { ids } => {
                for (id, _round) in ids {
                    if self.seen.contains_key(&id) {
                        continue;
                    }
                    // A neighbour announcing ids it never sends (garbage,
                    // or a hostile member) must not grow this table without
                    // bound, nor fill it for the others: past its share, or
                    // past the cap, new announcements wait for the eager
                    // push or another neighbour's IHAVE.
                    if !self.missing.contains_key(&id) {
                        let by = self.missing_by.get(&from).copied().unwrap_or(0);
                        if self.missing.len() >= MAX_MISSING || by >= MAX_MISSING_BY {
                            self.stats.missing_refused += 1;
                            continue;
                        }
                        *self.missing_by.entry(from).or_insert(0) += 1;
                    }
                    let deadline = if self.tree_in_doubt() { now } else { now + self.cfg.graft_timeout };
                    let m =
                        self.missing.entry(id).or_insert(Missing { announcers: VecDeque::new(), deadline, by: from });
                    if !m.announcers.contains(&from) && m.announcers.len() < 16 {
                        m.announcers.push_back(from);
                    }
                }
            }
            Message::Graft { id } => {
                if !self.eager.contains(&from) {
                    self.make_eager(from);
                    if !self.eager.contains(&from) {
                        self.eager.push(from);
                    }
                }
                if let Some(s) = self.seen.get(&id) {
                    let m = Message::Gossip {
                        id,
                        round: s.round.saturating_add(1),
                        kind: s.kind,
                        payload: s.payload.clone(),
                    };
                    self.sends.push_back((from, m));
                    self.stats.gossip_sent += 1;
                }
            }
            Message::Prune => self.make_lazy(from),
            _ => return false,
        }
        true
    }

    /// Fires GRAFT timers and forgets old messages.
    pub fn tick(&mut self, now: Millis) {
        let due: Vec<MsgId<P>> = self.missing.iter().filter(|(_, m)| m.deadline <= now).map(|(id, _)| *id).collect();
        for id in due {
            let Some(m) = self.missing.get_mut(&id) else { continue };
            // A quiet announcer is likely gone: ask the others first.
            let next = m.announcers.iter().position(|a| !self.quiet.contains(a)).unwrap_or(0);
            match m.announcers.remove(next) {
                Some(p) => {
                    m.deadline = now + self.cfg.graft_retry;
                    self.make_eager(p);
                    self.sends.push_back((p, Message::Graft { id }));
                    self.stats.grafts_sent += 1;
                }
                None => self.forget_missing(&id),
            }
        }
        while let Some(&(at, id)) = self.seen_order.front() {
            if now.saturating_sub(at) < self.cfg.cache {
                break;
            }
            self.seen_order.pop_front();
            self.seen.remove(&id);
        }
    }

    fn forget_missing(&mut self, id: &MsgId<P>) {
        if let Some(m) = self.missing.remove(id)
            && let Some(n) = self.missing_by.get_mut(&m.by)
        {
            *n -= 1;
            if *n == 0 {
                self.missing_by.remove(&m.by);
            }
        }
    }

    /// When [`Plumtree::tick`] next has work.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let graft = self.missing.values().map(|m| m.deadline).min();
        let expire = self.seen_order.front().map(|(at, _)| at + self.cfg.cache);
        graft.into_iter().chain(expire).min()
    }

    /// Entries held in this node's tables and queues (messages remembered,
    /// messages missing and their announcers, neighbours, queued sends and
    /// deliveries): a measure of its memory that a peer could try to grow.
    pub fn held(&self) -> usize {
        self.eager.len()
            + self.lazy.len()
            + self.seen.len()
            + self.seen_order.len()
            + self.missing.values().map(|m| 1 + m.announcers.len()).sum::<usize>()
            + self.missing_by.len()
            + self.quiet.len()
            + self.sends.len()
            + self.deliveries.len()
    }

    /// The next message to send.
    pub fn poll_send(&mut self) -> Option<(P, Message<P>)> {
        self.sends.pop_front()
    }

    /// The next delivery.
    pub fn poll_delivery(&mut self) -> Option<Delivery<P>> {
        self.deliveries.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a static graph to quiescence with unit latency per hop (FIFO).
    fn run(nodes: &mut [Plumtree<u32>], origin: usize, payload: &[u8], now: &mut Millis) -> (u64, Vec<Option<u16>>) {
        let id = nodes[origin].broadcast(Kind::App, payload.to_vec(), *now);
        let mut copies = 0;
        let mut got = vec![None; nodes.len()];
        got[origin] = Some(0);
        for _ in 0..10_000 {
            let mut inflight = Vec::new();
            for (i, n) in nodes.iter_mut().enumerate() {
                while let Some((to, m)) = n.poll_send() {
                    inflight.push((i as u32, to, m));
                }
            }
            if inflight.is_empty() {
                *now += 1000;
                let mut any = false;
                for n in nodes.iter_mut() {
                    n.tick(*now);
                    any |= n.missing() > 0;
                }
                if !any && nodes.iter().all(|n| n.sends.is_empty()) {
                    break;
                }
                continue;
            }
            *now += 1;
            for (from, to, m) in inflight {
                if matches!(m, Message::Gossip { .. }) {
                    copies += 1;
                }
                nodes[to as usize].handle(from, m, *now);
                while let Some(d) = nodes[to as usize].poll_delivery() {
                    assert_eq!(d.id, id);
                    got[to as usize] = Some(d.round);
                }
            }
        }
        (copies, got)
    }

    fn ring_with_chords(n: u32) -> Vec<Plumtree<u32>> {
        let mut nodes: Vec<_> = (0..n).map(|i| Plumtree::new(i, PlumConfig::default())).collect();
        for i in 0..n {
            for j in [(i + 1) % n, (i + 7) % n] {
                nodes[i as usize].neighbor_up(j, 0);
                nodes[j as usize].neighbor_up(i, 0);
            }
        }
        nodes
    }

    #[test]
    fn first_broadcast_prunes_into_a_tree_and_the_second_is_not_redundant() {
        let mut nodes = ring_with_chords(40);
        let mut now = 0;
        let (copies1, got1) = run(&mut nodes, 0, b"one", &mut now);
        assert!(got1.iter().all(Option::is_some), "{got1:?}");
        assert!(copies1 > 39, "the first flood has duplicates: {copies1}");
        let eager_edges: usize = nodes.iter().map(|n| n.eager().len()).sum::<usize>() / 2;
        assert_eq!(eager_edges, 39, "eager links form a spanning tree");
        let (copies2, got2) = run(&mut nodes, 13, b"two", &mut now);
        assert!(got2.iter().all(Option::is_some));
        assert_eq!(copies2, 39, "exactly one copy per node on the tree");
    }

    #[test]
    fn repairs_the_tree_with_graft_when_a_tree_edge_dies() {
        let mut nodes = ring_with_chords(40);
        let mut now = 0;
        run(&mut nodes, 0, b"build", &mut now);
        // Cut one tree edge (both ends notice), then broadcast again.
        let a = 5usize;
        let b = nodes[a].eager()[0];
        nodes[a].neighbor_down(b);
        nodes[b as usize].neighbor_down(a as u32);
        let (_, got) = run(&mut nodes, 0, b"after", &mut now);
        assert!(got.iter().all(Option::is_some), "every node still got it: {got:?}");
        let grafts: u64 = nodes.iter().map(|n| n.stats().grafts_sent).sum();
        assert!(grafts >= 1, "a GRAFT repaired the tree");
    }

    #[test]
    fn a_graft_for_a_forgotten_message_sends_nothing_and_ihave_for_a_known_one_sets_no_timer() {
        let mut p = Plumtree::new(1u32, PlumConfig::default());
        p.neighbor_up(2, 0);
        let id = p.broadcast(Kind::App, b"x".to_vec(), 0);
        while p.poll_send().is_some() {}
        p.handle(2, Message::IHave { ids: vec![(id, 0)] }, 1);
        assert_eq!(p.missing(), 0);
        p.tick(PlumConfig::default().cache + 10);
        p.handle(2, Message::Graft { id }, 1);
        assert!(p.poll_send().is_none(), "the message expired from the cache");
    }

    /// While an eager neighbour is quiet, an announcement is grafted at
    /// once, from an announcer that is not quiet; otherwise after
    /// `graft_timeout`.
    #[test]
    fn a_quiet_eager_neighbour_makes_announcements_graft_at_once() {
        let cfg = PlumConfig::default();
        let mut n = Plumtree::new(0u32, cfg);
        for p in 1..=3 {
            n.neighbor_up(p, 0);
        }
        // 2 and 3 become lazy (they sent duplicates); 1 stays eager.
        let seen = MsgId { origin: 9, seq: 1 };
        n.handle(1, Message::Gossip { id: seen, round: 1, kind: Kind::App, payload: vec![] }, 0);
        for p in [2, 3] {
            n.handle(p, Message::Gossip { id: seen, round: 1, kind: Kind::App, payload: vec![] }, 0);
        }
        assert_eq!((n.eager(), n.lazy().len()), (&[1][..], 2));
        while n.poll_send().is_some() {}
        let grafts = |n: &mut Plumtree<u32>| {
            let mut g = Vec::new();
            while let Some((to, m)) = n.poll_send() {
                if matches!(m, Message::Graft { .. }) {
                    g.push(to);
                }
            }
            g
        };

        // The tree is whole: an announcement waits for the eager copy.
        let a = MsgId { origin: 9, seq: 2 };
        n.handle(2, Message::IHave { ids: vec![(a, 1)] }, 10);
        n.tick(10);
        assert!(grafts(&mut n).is_empty());
        assert_eq!(n.poll_timeout(), Some(10 + cfg.graft_timeout));

        // Eager 1 goes quiet: the waiting announcement is grafted now.
        n.set_quiet(1, true, 20);
        n.tick(20);
        assert_eq!(grafts(&mut n), vec![2]);

        // A new one too, and from 3, not from quiet 2.
        n.set_quiet(2, true, 20);
        let b = MsgId { origin: 9, seq: 3 };
        n.handle(2, Message::IHave { ids: vec![(b, 1)] }, 30);
        n.handle(3, Message::IHave { ids: vec![(b, 1)] }, 30);
        n.tick(30);
        assert_eq!(grafts(&mut n), vec![3]);

        // Heard again, the tree is trusted again.
        n.set_quiet(1, false, 40);
        n.set_quiet(2, false, 40);
        let c = MsgId { origin: 9, seq: 4 };
        n.handle(3, Message::IHave { ids: vec![(c, 1)] }, 40);
        n.tick(40);
        assert!(grafts(&mut n).is_empty());
    }

    /// A neighbour announcing ids it never sends cannot grow the table of
    /// missing messages past its share, so the others' announcements are
    /// still tracked; the held entries stay bounded, and the false ones
    /// are given up once grafting them from their announcer fails.
    #[test]
    fn false_announcements_are_capped() {
        let mut n = Plumtree::new(0u32, PlumConfig::default());
        n.neighbor_up(1, 0);
        n.neighbor_up(2, 0);
        for k in 0..(MAX_MISSING as u64 / 16 + 100) {
            let ids = (0..16).map(|j| (MsgId { origin: 9, seq: k * 16 + j }, 0)).collect();
            n.handle(1, Message::IHave { ids }, 0);
        }
        assert_eq!(n.missing(), MAX_MISSING_BY);
        assert!(n.stats().missing_refused >= 3500);
        assert!(n.held() < 2 * MAX_MISSING_BY + 16, "{}", n.held());
        let real = MsgId { origin: 5, seq: 1 };
        n.handle(2, Message::IHave { ids: vec![(real, 0)] }, 0);
        assert_eq!(n.missing(), MAX_MISSING_BY + 1, "another neighbour's announcement is tracked");
        // The false ones are grafted from the announcer, then given up; the
        // real one was grafted from neighbour 2.
        let cfg = PlumConfig::default();
        n.tick(cfg.graft_timeout);
        n.tick(cfg.graft_timeout + cfg.graft_retry);
        assert_eq!(n.missing(), 0);
        assert!(n.missing_by.is_empty());
        n.handle(1, Message::IHave { ids: vec![(MsgId { origin: 5, seq: 2 }, 0)] }, 1000);
        assert_eq!(n.missing(), 1);
    }
}
