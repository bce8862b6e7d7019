//! The simulated message network and its members: links, latency, joins, failures, the NAT model's connections.

use super::*;

pub(super) enum Ev {
    Deliver {
        to: u32,
        from: u32,
        msg: Message<u32>,
    },
    Tick(u32),
    LinkUp {
        at: u32,
        peer: u32,
    },
    LinkFailed {
        at: u32,
        peer: u32,
    },
    LinkDown {
        at: u32,
        peer: u32,
    },
    RsvpTimeout {
        asker: u32,
        peer: u32,
        attempt: u64,
    },
    /// A hostile member's flood round.
    Hostile(u32),
}

/// One tracked broadcast.
pub(super) struct Track {
    pub(super) sent: u64,
    pub(super) origin: u32,
    /// First delivery per node: (time, hop).
    pub(super) got: Vec<Option<(u64, u16)>>,
    /// Payload copies received by live nodes.
    pub(super) copies: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct CellCount {
    pub(super) expected: String,
    pub(super) attempts: u64,
    pub(super) succeeded: u64,
    pub(super) target_dead: u64,
    pub(super) rsvp_no_route: u64,
    pub(super) rsvp_relay_lost: u64,
}

pub(super) struct NatModel {
    pub(super) matrix: Matrix,
    /// Profile index per node.
    pub(super) profile: Vec<usize>,
    pub(super) mix: Vec<(usize, f64)>,
    pub(super) rsvp_timeout: u64,
    /// (asker, peer) → attempt waiting for its RSVP to arrive.
    pub(super) pending: HashMap<(u32, u32), u64, FastHash>,
    pub(super) attempt: u64,
    pub(super) counts: BTreeMap<(usize, usize), CellCount>,
    /// Attempt (low 32 bits) → why a relay refused its RSVP.
    pub(super) refused: HashMap<u32, &'static str, FastHash>,
    /// Why RSVPs to live peers were lost: reason → count.
    pub(super) losses: BTreeMap<&'static str, u64>,
}

/// The simulated overlay network.
pub struct OverlaySim {
    pub(super) seed: u64,
    pub(super) rng: SimRng,
    pub(super) now: u64,
    pub(super) queue: Queue<Ev>,
    pub(super) nodes: Vec<Overlay<u32>>,
    pub(super) alive: Vec<bool>,
    pub(super) joined_at: Vec<u64>,
    pub(super) died_at: Vec<u64>,
    pub(super) sched: Vec<u64>,
    pub(super) links: HashSet<(u32, u32), FastHash>,
    pub(super) latency: [u64; 2],
    pub(super) connect_fail: u64,
    pub(super) cut: Option<Vec<bool>>,
    pub(super) nat: Option<NatModel>,
    pub(super) hostile: Option<hostile::HostileModel>,
    pub(super) tracks: Vec<Track>,
    pub(super) track_of: HashMap<MsgId<u32>, usize, FastHash>,
    pub(super) joined_watch: Option<u32>,
    pub(super) joined_seen: Vec<Option<u16>>,
    /// With a topology policy: the share of members that can serve as
    /// super-peers (or are hubs), when no NAT profile decides.
    pub(super) super_share: Option<f64>,
    /// Messages sent and delivered.
    pub messages: u64,
    /// Events processed.
    pub events: u64,
}

pub(super) fn card(p: u32) -> Card<u32> {
    Card::new(p, p.to_be_bytes().to_vec())
}

pub(super) fn pair(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
}

pub(super) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl OverlaySim {
    pub(super) fn new(seed: u64, net: &Net) -> Self {
        Self {
            seed,
            rng: SimRng::new(seed),
            now: 0,
            queue: Queue::default(),
            nodes: Vec::new(),
            alive: Vec::new(),
            joined_at: Vec::new(),
            died_at: Vec::new(),
            sched: Vec::new(),
            links: HashSet::default(),
            latency: net.latency_ms,
            connect_fail: net.connect_fail_ms,
            cut: None,
            nat: None,
            hostile: None,
            tracks: Vec::new(),
            track_of: HashMap::default(),
            joined_watch: None,
            joined_seen: Vec::new(),
            super_share: None,
            messages: 0,
            events: 0,
        }
    }

    /// One-way latency of a pair, fixed for the run.
    pub(super) fn lat(&self, a: u32, b: u32) -> u64 {
        let (x, y) = pair(a, b);
        let h = mix64(self.seed ^ mix64((u64::from(x) << 32) | u64::from(y)));
        let [lo, hi] = self.latency;
        lo + h % (hi - lo + 1)
    }

    pub(super) fn cut_between(&self, a: u32, b: u32) -> bool {
        self.cut.as_ref().is_some_and(|side| {
            side.get(a as usize).copied().unwrap_or(false) != side.get(b as usize).copied().unwrap_or(false)
        })
    }

    pub(super) fn add_node(&mut self, mut cfg: Config) -> u32 {
        let id = self.nodes.len() as u32;
        let seed = self.rng.seed();
        let mut profile = None;
        if let Some(share) = self.super_share {
            // A topology policy: who can serve. The NAT profile decides
            // when there is one (drawn here, before the member, for that).
            cfg.super_capable = match &mut self.nat {
                // A star's hubs are the operator's machines, there from
                // the start: the founder, then every (1 / share)th member.
                _ if matches!(cfg.topology, convoke_overlay::Topology::Star { .. }) => {
                    u64::from(id) % (1.0 / share).round().max(1.0) as u64 == 0
                }
                Some(nat) => {
                    let p = draw_profile(&mut self.rng, &nat.mix);
                    profile = Some(p);
                    matches!(nat.matrix.profiles[p].as_str(), "public" | "eim-eif" | "eim-adf")
                }
                None => self.rng.unit() < share,
            };
        }
        self.nodes.push(Overlay::new(card(id), cfg, seed, self.now));
        self.alive.push(true);
        self.joined_at.push(self.now);
        self.died_at.push(u64::MAX);
        self.sched.push(u64::MAX);
        self.joined_seen.push(None);
        if let Some(nat) = &mut self.nat {
            let p = profile.unwrap_or_else(|| draw_profile(&mut self.rng, &nat.mix));
            nat.profile.push(p);
        }
        for t in &mut self.tracks {
            t.got.push(None);
        }
        id
    }

    pub(super) fn join(&mut self, newcomer: u32, contact: u32) {
        self.links.insert(pair(newcomer, contact));
        self.nodes[newcomer as usize].join(card(contact), self.now);
        self.drain(newcomer);
    }

    pub(super) fn kill(&mut self, i: u32) {
        self.alive[i as usize] = false;
        self.died_at[i as usize] = self.now;
    }

    pub(super) fn live(&self) -> Vec<u32> {
        (0..self.nodes.len() as u32).filter(|&i| self.alive[i as usize]).collect()
    }

    pub(super) fn random_live(&mut self) -> u32 {
        let live = self.live();
        live[(self.rng.u32() as usize) % live.len()]
    }

    pub(super) fn broadcast(&mut self, origin: u32) -> usize {
        let k = self.tracks.len();
        let id = self.nodes[origin as usize].broadcast(format!("broadcast {k}").into_bytes(), self.now);
        let mut got = vec![None; self.nodes.len()];
        got[origin as usize] = Some((self.now, 0));
        self.tracks.push(Track { sent: self.now, origin, got, copies: 0 });
        self.track_of.insert(id, k);
        self.drain(origin);
        k
    }

    pub(super) fn resched(&mut self, i: u32) {
        let t = self.nodes[i as usize].poll_timeout().max(self.now + 1);
        let s = &mut self.sched[i as usize];
        if t < *s || *s <= self.now {
            *s = t;
            self.queue.push(t, Ev::Tick(i));
        }
    }

    pub(super) fn drain(&mut self, i: u32) {
        let now = self.now;
        while let Some(o) = self.nodes[i as usize].poll() {
            let o = if self.is_hostile(i) {
                match self.hostile_edit(i, o) {
                    Some(o) => o,
                    None => continue,
                }
            } else {
                o
            };
            match o {
                Output::Send { to, msg } => {
                    if self.links.contains(&pair(i, to)) {
                        let at = now + self.lat(i, to);
                        self.queue.push(at, Ev::Deliver { to, from: i, msg });
                    }
                }
                Output::Connect { card, route } => self.connect(i, card.peer, route),
                Output::Close(p) => {
                    if self.links.remove(&pair(i, p)) {
                        let at = now + self.lat(i, p);
                        self.queue.push(at, Ev::LinkDown { at: p, peer: i });
                    }
                }
                Output::Event(e) => self.on_event(i, e),
            }
        }
        self.resched(i);
    }

    pub(super) fn on_event(&mut self, i: u32, e: Event<u32>) {
        match e {
            Event::Delivered { id, round, .. } => {
                if let Some(&k) = self.track_of.get(&id) {
                    let g = &mut self.tracks[k].got[i as usize];
                    if g.is_none() {
                        *g = Some((self.now, round));
                    }
                }
            }
            Event::MemberJoined { peer, round }
                if Some(peer) == self.joined_watch && self.joined_seen[i as usize].is_none() =>
            {
                self.joined_seen[i as usize] = Some(round);
            }
            Event::Introduced { from, .. } => {
                let now = self.now;
                let lat = self.lat(from, i);
                if let Some(nat) = &mut self.nat
                    && nat.pending.remove(&(from, i)).is_some()
                {
                    let key = (nat.profile[i as usize], nat.profile[from as usize]);
                    nat.counts.entry(key).or_default().succeeded += 1;
                    // The inviter punches back on the RSVP: up one round trip later.
                    self.queue.push(now + 2 * lat, Ev::LinkUp { at: from, peer: i });
                }
            }
            _ => {}
        }
    }

    pub(super) fn connect(&mut self, asker: u32, peer: u32, route: Vec<u32>) {
        let now = self.now;
        let alive = self.alive.get(peer as usize).copied().unwrap_or(false);
        let reachable = alive && !self.cut_between(asker, peer);
        let rtt = 2 * self.lat(asker, peer);
        let fail = now + self.connect_fail;
        let Some(nat) = &mut self.nat else {
            if reachable {
                self.queue.push(now + rtt, Ev::LinkUp { at: asker, peer });
            } else {
                self.queue.push(fail, Ev::LinkFailed { at: asker, peer });
            }
            return;
        };
        // Inviter: the peer whose card we use; invitee: the asker.
        let key = (nat.profile[peer as usize], nat.profile[asker as usize]);
        let cell = nat.matrix.cells[key.0][key.1];
        let c = nat.counts.entry(key).or_default();
        c.attempts += 1;
        match cell {
            Cell::Single if reachable => {
                c.succeeded += 1;
                self.queue.push(now + rtt, Ev::LinkUp { at: asker, peer });
            }
            Cell::Single | Cell::Failed => {
                if !reachable {
                    c.target_dead += 1;
                }
                self.queue.push(fail, Ev::LinkFailed { at: asker, peer });
            }
            Cell::Rsvp => {
                if !reachable {
                    c.target_dead += 1;
                }
                nat.attempt += 1;
                let attempt = nat.attempt;
                let token = [asker.to_be_bytes(), (attempt as u32).to_be_bytes()].concat();
                if route.last() == Some(&peer) && self.nodes[asker as usize].introduce(&route, token) {
                    // The asker gave up on an earlier RSVP to this peer
                    // and asks again: the earlier one is lost to it (as at
                    // its timeout: counted if the peer lives, with the
                    // reason a relay gave if one refused it).
                    if let Some(old) = nat.pending.insert((asker, peer), attempt) {
                        let why = nat.refused.remove(&(old as u32)).unwrap_or("superseded");
                        if alive {
                            c.rsvp_relay_lost += 1;
                            *nat.losses.entry(why).or_insert(0) += 1;
                        }
                    }
                    let at = now + nat.rsvp_timeout;
                    self.queue.push(at, Ev::RsvpTimeout { asker, peer, attempt });
                } else {
                    c.rsvp_no_route += 1;
                    self.queue.push(fail, Ev::LinkFailed { at: asker, peer });
                }
            }
        }
    }

    /// Runs every event due up to `until`.
    pub(super) fn run_until(&mut self, until: u64) {
        while let Some(t) = self.queue.peek_time() {
            if t > until {
                break;
            }
            let Some((at, ev)) = self.queue.pop() else { break };
            self.now = at;
            self.events += 1;
            match ev {
                Ev::Deliver { to, from, msg } => {
                    if !self.alive[to as usize] || !self.alive[from as usize] || self.cut_between(to, from) {
                        continue;
                    }
                    self.messages += 1;
                    // Why a relay refuses an RSVP: the next hop is not its
                    // neighbour (the route broke) or its rate limit.
                    let watch = match (&msg, &self.nat) {
                        (Message::Relay { route, inner, .. }, Some(_)) => match (route.first(), &**inner) {
                            (Some(&next), Message::Introduce { token }) if token.len() == 8 => {
                                let attempt = u32::from_be_bytes([token[4], token[5], token[6], token[7]]);
                                let o = &self.nodes[to as usize];
                                Some((attempt, o.is_active(next), o.stats().relay_refused))
                            }
                            _ => None,
                        },
                        _ => None,
                    };
                    if let Message::Gossip { id, kind: Kind::App, .. } = &msg
                        && let Some(&k) = self.track_of.get(id)
                    {
                        self.tracks[k].copies += 1;
                    }
                    // A hostile member that forced a link answers its
                    // pings, or the honest end would soon drop it.
                    if let Message::Ping { nonce } = msg
                        && self.hostile.as_ref().is_some_and(|h| h.does(Behaviour::Flood))
                        && self.is_hostile(to)
                        && !self.nodes[to as usize].is_active(from)
                    {
                        let back = at + self.lat(to, from);
                        self.queue.push(back, Ev::Deliver { to: from, from: to, msg: Message::Pong { nonce } });
                    }
                    self.nodes[to as usize].handle(from, msg, at);
                    if let (Some((attempt, linked, before)), Some(nat)) = (watch, &mut self.nat)
                        && self.nodes[to as usize].stats().relay_refused > before
                    {
                        nat.refused.insert(attempt, if linked { "rate_limited" } else { "route_broken" });
                    }
                    self.drain(to);
                }
                Ev::Tick(i) => {
                    if !self.alive[i as usize] || self.sched[i as usize] != at {
                        continue;
                    }
                    self.sched[i as usize] = u64::MAX;
                    self.nodes[i as usize].tick(at);
                    self.drain(i);
                }
                Ev::LinkUp { at: i, peer } => {
                    if !self.alive[i as usize] {
                        continue;
                    }
                    self.links.insert(pair(i, peer));
                    self.nodes[i as usize].link_up(peer, at);
                    self.drain(i);
                }
                Ev::LinkFailed { at: i, peer } => {
                    if self.alive[i as usize] {
                        self.nodes[i as usize].link_failed(peer, at);
                        self.drain(i);
                    }
                }
                Ev::LinkDown { at: i, peer } => {
                    // Only the link that was closed: a connection asked for
                    // since is another one, and it settles by itself.
                    if self.alive[i as usize]
                        && !self.links.contains(&pair(i, peer))
                        && self.nodes[i as usize].is_active(peer)
                    {
                        self.nodes[i as usize].link_down(peer, at);
                        self.drain(i);
                    }
                }
                Ev::Hostile(i) => self.hostile_round(i),
                Ev::RsvpTimeout { asker, peer, attempt } => {
                    let Some(nat) = &mut self.nat else { continue };
                    if nat.pending.get(&(asker, peer)) == Some(&attempt) {
                        nat.pending.remove(&(asker, peer));
                        let key = (nat.profile[peer as usize], nat.profile[asker as usize]);
                        let c = nat.counts.entry(key).or_default();
                        // A dead target was counted as such when we asked.
                        if self.alive[peer as usize] {
                            c.rsvp_relay_lost += 1;
                            let why = nat.refused.remove(&(attempt as u32)).unwrap_or("lost_in_transit");
                            *nat.losses.entry(why).or_insert(0) += 1;
                        }
                        if self.alive[asker as usize] {
                            self.nodes[asker as usize].link_failed(peer, at);
                            self.drain(asker);
                        }
                    }
                }
            }
        }
        self.now = self.now.max(until);
    }

    /// Grows to `n` nodes by joins through random earlier live members
    /// (never `avoid`), then settles.
    pub(super) fn grow(&mut self, n: u32, g: &Growth, cfg: Config, avoid: Option<u32>) {
        if self.nodes.is_empty() {
            self.add_node(cfg);
        }
        while (self.nodes.len() as u32) < n {
            let wait = self.rng.between(g.join_interval_ms[0], g.join_interval_ms[1]);
            self.run_until(self.now + wait);
            let i = self.add_node(cfg);
            // A star's newcomers join with a hub's invitation (hubs are
            // the operator's machines, and hand them out).
            let star = matches!(cfg.topology, convoke_overlay::Topology::Star { .. });
            let mut tries = 0u32;
            let contact = loop {
                let c = self.rng.u32() % i;
                tries += 1;
                let hub =
                    !star || tries > 10_000 || self.nodes[c as usize].shape().role == convoke_overlay::Role::Super;
                if self.alive[c as usize] && Some(c) != avoid && hub {
                    break c;
                }
            };
            self.join(i, contact);
        }
        self.run_until(self.now + u64::from(g.settle_rounds) * cfg.round);
    }
}
