//! Hostile members: after the network settled, a share of members stop
//! playing fair (`[hostile]`, the behaviours in [`Behaviour`]); honest
//! members broadcast meanwhile, and the run reports what reached them and
//! how much their tables held.
//!
//! A hostile member keeps its honest [`Overlay`] (so it answers pings,
//! shuffles and stays in views like any member) and the simulator edits
//! what it sends and adds what it would add: the behaviours are the
//! simulator's, the honest members' code is the product's.

use super::*;

/// The hostile members and what they do.
pub(super) struct HostileModel {
    /// Per node: hostile or not.
    pub(super) is: Vec<bool>,
    /// What every hostile member does.
    pub(super) does: Vec<Behaviour>,
    /// Time between two of a hostile member's flood rounds, ms.
    pub(super) period: u64,
    /// Garbage messages and flood links sent.
    pub(super) garbage_sent: u64,
    pub(super) flood_links: u64,
    /// Broadcast messages and relays swallowed, views falsified.
    pub(super) dropped: u64,
    pub(super) views_faked: u64,
}

impl HostileModel {
    pub(super) fn does(&self, b: Behaviour) -> bool {
        self.does.contains(&b)
    }
}

/// A peer id that belongs to nobody: above every member's.
fn nobody(sim: &mut OverlaySim) -> u32 {
    (1 << 31) | (sim.rng.u32() >> 1)
}

fn fake_id(sim: &mut OverlaySim) -> MsgId<u32> {
    let origin = sim.rng.u32() % sim.nodes.len() as u32;
    MsgId { origin, seq: u64::from(sim.rng.u32()) << 20 }
}

fn fake_cards(sim: &mut OverlaySim, n: usize) -> Vec<Card<u32>> {
    (0..n).map(|_| card(nobody(sim))).collect()
}

/// A false active view that hostile member `i` tells neighbour `to`: `n`
/// random members (less any that are `i` or `to`).
fn fake_view(sim: &mut OverlaySim, i: u32, to: u32, n: usize) -> Vec<u32> {
    let members = sim.nodes.len() as u32;
    (0..n).map(|_| sim.rng.u32() % members).filter(|&p| p != i && p != to).collect()
}

impl OverlaySim {
    pub(super) fn is_hostile(&self, i: u32) -> bool {
        self.hostile.as_ref().is_some_and(|h| h.is.get(i as usize).copied().unwrap_or(false))
    }

    /// What hostile member `i` makes of an output of its overlay: `None`
    /// swallows it.
    pub(super) fn hostile_edit(&mut self, i: u32, o: Output<u32>) -> Option<Output<u32>> {
        let Some(h) = &self.hostile else { return Some(o) };
        let (drop, fake_views, flood) =
            (h.does(Behaviour::Drop), h.does(Behaviour::FalseViews), h.does(Behaviour::Flood));
        match o {
            Output::Send {
                msg: Message::Gossip { .. } | Message::IHave { .. } | Message::Graft { .. } | Message::Relay { .. },
                ..
            } if drop => {
                if let Some(h) = &mut self.hostile {
                    h.dropped += 1;
                }
                None
            }
            // It never lets go of a link it forced its way into.
            Output::Send { msg: Message::Disconnect { .. }, .. } if flood => None,
            Output::Send { to, msg: Message::Neighbors { peers, shape } } if fake_views => {
                let fake = fake_view(self, i, to, peers.len().max(4));
                if let Some(h) = &mut self.hostile {
                    h.views_faked += 1;
                }
                Some(Output::Send { to, msg: Message::Neighbors { peers: fake, shape } })
            }
            o => Some(o),
        }
    }

    /// Sends `msg` from `from` to `to` over a link, as the network would.
    fn inject(&mut self, from: u32, to: u32, msg: Message<u32>) {
        if self.links.contains(&pair(from, to)) {
            let at = self.now + self.lat(from, to);
            self.queue.push(at, Ev::Deliver { to, from, msg });
        }
    }

    /// Hostile member `i`'s flood round: garbage to its neighbours, and a
    /// forced link to a random member. Schedules the next one.
    pub(super) fn hostile_round(&mut self, i: u32) {
        let Some(h) = &self.hostile else { return };
        if !self.alive[i as usize] {
            return;
        }
        let (garbage, flood, lie, period) =
            (h.does(Behaviour::Garbage), h.does(Behaviour::Flood), h.does(Behaviour::FalseViews), h.period);
        if lie {
            // Not only when its view changes: a false view told again and
            // again, so it is what its neighbours hold.
            let neighbours: Vec<u32> = self.nodes[i as usize].active().collect();
            for &p in &neighbours {
                let fake = fake_view(self, i, p, 5);
                let shape = self.nodes[i as usize].shape();
                self.inject(i, p, Message::Neighbors { peers: fake, shape });
            }
            if let Some(h) = &mut self.hostile {
                h.views_faked += neighbours.len() as u64;
            }
        }
        if garbage {
            let neighbours: Vec<u32> = self.nodes[i as usize].active().collect();
            let mut sent = 0;
            for p in neighbours {
                let ids = (0..16).map(|_| (fake_id(self), 0)).collect();
                let graft = fake_id(self);
                let shuffle_cards = fake_cards(self, 8);
                let reply_cards = fake_cards(self, 8);
                let route = vec![nobody(self), nobody(self)];
                let msgs = [
                    Message::IHave { ids },
                    Message::Graft { id: graft },
                    Message::Prune,
                    Message::Pong { nonce: u64::from(self.rng.u32()) },
                    Message::NeighborReply { accepted: true },
                    // An answer to a shuffle nobody made, the way real
                    // answers travel (relayed, addressed to the receiver).
                    Message::Relay {
                        origin: i,
                        route: vec![],
                        inner: Box::new(Message::ShuffleReply { cards: reply_cards }),
                    },
                    Message::Shuffle { origin: i, ttl: 0, path: vec![i], cards: shuffle_cards },
                    Message::Relay { origin: i, route, inner: Box::new(Message::Introduce { token: vec![0; 64] }) },
                ];
                for m in msgs {
                    self.inject(i, p, m);
                    sent += 1;
                }
            }
            if let Some(h) = &mut self.hostile {
                h.garbage_sent += sent;
            }
        }
        if flood {
            let n = self.nodes.len() as u32;
            let t = self.rng.u32() % n;
            if t != i && self.alive[t as usize] && !self.is_hostile(t) {
                self.links.insert(pair(i, t));
                self.inject(i, t, Message::Join { card: card(i) });
                self.inject(i, t, Message::Neighbor { high: true, card: card(i) });
                if let Some(h) = &mut self.hostile {
                    h.flood_links += 1;
                }
            }
        }
        self.queue.push(self.now + period, Ev::Hostile(i));
    }
}

/// The hostile-members measurement.
#[derive(Debug, Clone, Serialize)]
pub struct HostileFigures {
    /// Members that turned hostile.
    pub hostile: u64,
    /// What they did.
    pub behaviours: Vec<Behaviour>,
    /// Broadcast and relay messages they swallowed.
    pub dropped: u64,
    /// Garbage messages they sent.
    pub garbage_sent: u64,
    /// Links they forced on random members.
    pub flood_links: u64,
    /// False views they told.
    pub views_faked: u64,
    /// Share of honest members' active-view entries that were hostile
    /// members: when they turned, and at the end.
    pub hostile_share_of_views: [f64; 2],
    /// Entries held by an honest member ([`Overlay::held`]) when they
    /// turned: the largest and the mean.
    pub honest_held_before: [f64; 2],
    /// The largest an honest member held during the run (sampled every
    /// second).
    pub honest_held_max: u64,
    /// Largest and mean at the end.
    pub honest_held_end: [f64; 2],
    /// Announced ids honest members refused to track past the cap.
    pub missing_refused: u64,
    /// Broadcasts from honest members; delivery counts honest members only.
    pub broadcasts: Vec<BroadcastFigures>,
}

impl OverlaySim {
    fn honest_held(&self) -> (u64, f64) {
        let (mut max, mut sum, mut n) = (0u64, 0u64, 0u64);
        for i in self.live() {
            if !self.is_hostile(i) {
                let h = self.nodes[i as usize].held() as u64;
                max = max.max(h);
                sum += h;
                n += 1;
            }
        }
        (max, sum as f64 / n.max(1) as f64)
    }

    fn hostile_share_of_views(&self) -> f64 {
        let (mut bad, mut all) = (0u64, 0u64);
        for i in self.live() {
            if !self.is_hostile(i) {
                for p in self.nodes[i as usize].active() {
                    all += 1;
                    bad += u64::from(self.is_hostile(p));
                }
            }
        }
        bad as f64 / all.max(1) as f64
    }

    fn random_honest(&mut self) -> u32 {
        loop {
            let v = self.random_live();
            if !self.is_hostile(v) {
                return v;
            }
        }
    }
}

/// Turns a share of the settled network hostile and broadcasts from honest
/// members.
pub(super) fn run_hostile(h: &Hostile, sim: &mut OverlaySim, round: u64) -> HostileFigures {
    let live = sim.live();
    let count = ((live.len() as f64) * h.fraction).round() as usize;
    let mut order = live;
    for k in (1..order.len()).rev() {
        let j = (sim.rng.u32() as usize) % (k + 1);
        order.swap(k, j);
    }
    let mut is = vec![false; sim.nodes.len()];
    for &v in &order[..count] {
        is[v as usize] = true;
    }
    let period = (1000 / u64::from(h.flood_per_s)).max(1);
    let mut does = h.behaviours.clone();
    does.sort();
    does.dedup();
    sim.hostile = Some(HostileModel {
        is,
        does: does.clone(),
        period,
        garbage_sent: 0,
        flood_links: 0,
        dropped: 0,
        views_faked: 0,
    });
    let share_before = sim.hostile_share_of_views();
    let before = sim.honest_held();
    // Spread the hostile members' rounds over one period.
    for &v in &order[..count] {
        let at = sim.now + 1 + u64::from(sim.rng.u32()) % period;
        sim.queue.push(at, Ev::Hostile(v));
    }
    let start = sim.now;
    let end = start + u64::from(h.broadcasts) * h.interval_ms + 10 * round;
    let mut ks = Vec::new();
    let mut next_bc = start + h.interval_ms;
    let mut max_held = before.0;
    let mut t = start;
    while t < end {
        t = (t + 1000).min(end);
        while next_bc <= t && ks.len() < h.broadcasts as usize {
            sim.run_until(next_bc);
            let o = sim.random_honest();
            ks.push(sim.broadcast(o));
            next_bc += h.interval_ms;
        }
        sim.run_until(t);
        max_held = max_held.max(sim.honest_held().0);
    }
    let after = sim.honest_held();
    let broadcasts = ks.iter().map(|&k| sim.figures(k, 0, sim.tracks[k].sent + 10 * round, round)).collect();
    let missing_refused = (0..sim.nodes.len() as u32)
        .filter(|&i| !sim.is_hostile(i))
        .map(|i| sim.nodes[i as usize].plum_stats().missing_refused)
        .sum();
    let m = sim.hostile.as_ref().expect("set above");
    HostileFigures {
        hostile: count as u64,
        behaviours: does,
        dropped: m.dropped,
        garbage_sent: m.garbage_sent,
        flood_links: m.flood_links,
        views_faked: m.views_faked,
        hostile_share_of_views: [share_before, sim.hostile_share_of_views()],
        honest_held_before: [before.0 as f64, before.1],
        honest_held_max: max_held,
        honest_held_end: [after.0 as f64, after.1],
        missing_refused,
        broadcasts,
    }
}
