//! Overlay simulations: N [`convoke_overlay::Overlay`] members (HyParView
//! membership, Plumtree broadcast, the introducer's relay) over a simulated
//! message network, at N = 10,000 by default.
//!
//! The network is abstract (no packets, no NAT boxes): every pair of nodes
//! has a fixed one-way latency drawn from a hash of the pair and the seed,
//! so messages between two nodes arrive in the order they were sent. A
//! *link* is a pair in a set; a message is sent only over a link. When the
//! overlay asks for a link ([`convoke_overlay::Output::Connect`]) it comes
//! up one round trip later if the target is alive and reachable; otherwise
//! the asker hears `link_failed` after a transport timeout. With a NAT
//! population (`[introducer]`), the NAT model decides each connection
//! instead ([`crate::reach`], the same answer the packet world's engine
//! meets): `single-token` as above, `rsvp` only if
//! the driver's RSVP, sent along the overlay's route with
//! [`convoke_overlay::Overlay::introduce`], reaches the peer through the
//! relays, `failed` never. Dead nodes drop everything; survivors are not
//! told, they notice by the overlay's own pings and timeouts.
//!
//! Each node's `tick` is scheduled at its `poll_timeout()`. Time is
//! milliseconds; one seeded ChaCha stream decides everything, and nothing
//! iterates a hash map to decide, so a scenario and seed give a
//! byte-identical `report.json`.
//!
//! A scenario (TOML) grows the network by joins and settles it, then runs
//! exactly one measurement: `[steady]`, `[failure]`, `[membership]`,
//! `[churn]`, `[partition]`, `[introducer]`, or `[topology]` (which builds
//! each topology policy's graph instead of growing an overlay).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use convoke_overlay::plumtree::{PlumConfig, Plumtree};
use convoke_overlay::topology::{self, NodeInfo, Reach};
use convoke_overlay::{Card, Config, Event, Kind, Message, MsgId, Output, Overlay};
use serde::{Deserialize, Serialize};

use crate::queue::Queue;
use crate::reach::{Reach as Ladder, reach};
use crate::scenario::{Cgnat, ScenarioError, builtin_profiles};
use crate::{FastHash, SimRng};

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid { field: field.into(), reason: reason.into() }
}

// ---------------------------------------------------------------- scenario

/// An overlay scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayScenario {
    /// Short name, used in reports.
    pub name: String,
    /// What it studies.
    #[serde(default)]
    pub description: String,
    /// Seed (overridden by `--seed`): 1.
    #[serde(default = "one")]
    pub seed: u64,
    /// Members grown (overridden by `--nodes`): 10,000.
    #[serde(default = "ten_thousand")]
    pub nodes: u32,
    /// Latencies and timeouts.
    #[serde(default)]
    pub network: Net,
    /// How the network grows and settles.
    #[serde(default)]
    pub growth: Growth,
    /// Broadcasts on the settled overlay.
    pub steady: Option<Steady>,
    /// Many nodes crash at once.
    pub failure: Option<Failure>,
    /// One newcomer's join announcement.
    pub membership: Option<Membership>,
    /// Nodes leave and join at a steady rate.
    pub churn: Option<Churn>,
    /// A partition, then healing.
    pub partition: Option<Partition>,
    /// Connections decided by the NAT matrix, RSVPs through the relay.
    pub introducer: Option<Introducer>,
    /// The topology policies' graphs at N.
    pub topology: Option<Topology>,
}

fn one() -> u64 {
    1
}
fn ten_thousand() -> u32 {
    10_000
}

/// Latencies and transport timeouts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Net {
    /// One-way latency per pair, uniform in this range, ms: [10, 80].
    pub latency_ms: [u64; 2],
    /// How long a connection to a dead, unreachable or NAT-blocked peer
    /// takes to fail, ms: 5000.
    pub connect_fail_ms: u64,
}

impl Default for Net {
    fn default() -> Self {
        Self { latency_ms: [10, 80], connect_fail_ms: 5000 }
    }
}

/// Growth by joins, then settling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Growth {
    /// Time between joins, uniform in this range, ms: [5, 20].
    pub join_interval_ms: [u64; 2],
    /// Membership rounds to settle after the last join: 30.
    pub settle_rounds: u32,
}

impl Default for Growth {
    fn default() -> Self {
        Self { join_interval_ms: [5, 20], settle_rounds: 30 }
    }
}

/// Broadcasts on the settled overlay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Steady {
    /// How many: 20.
    pub broadcasts: u32,
    /// Time between them, ms: 2000.
    pub interval_ms: u64,
}

impl Default for Steady {
    fn default() -> Self {
        Self { broadcasts: 20, interval_ms: 2000 }
    }
}

/// Simultaneous failure.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// Share of nodes that crash at once, (0, 1).
    pub fraction: f64,
    /// Broadcasts after the crash, the first right after it: 5.
    #[serde(default = "five")]
    pub broadcasts: u32,
    /// Time between them, ms: 1000 (one round).
    #[serde(default = "thousand")]
    pub interval_ms: u64,
}

fn five() -> u32 {
    5
}
fn thousand() -> u64 {
    1000
}

/// A newcomer's announcement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Membership {
    /// Rounds to wait for the announcement: 20.
    pub wait_rounds: u32,
}

impl Default for Membership {
    fn default() -> Self {
        Self { wait_rounds: 20 }
    }
}

/// Churn.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Churn {
    /// How long it lasts, s: 60.
    pub duration_s: u64,
    /// Every this often one random node crashes and a newcomer joins, ms:
    /// 100 (1% of 10,000 nodes replaced per second).
    pub interval_ms: u64,
    /// Time between broadcasts, ms: 2000.
    pub broadcast_interval_ms: u64,
}

impl Default for Churn {
    fn default() -> Self {
        Self { duration_s: 60, interval_ms: 100, broadcast_interval_ms: 2000 }
    }
}

/// A partition and its healing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Partition {
    /// Share of nodes on the smaller side: 0.5.
    pub fraction: f64,
    /// How long messages across the cut are lost, s: 10.
    pub duration_s: u64,
    /// Broadcasts after healing: 10.
    pub broadcasts_after: u32,
    /// Time between broadcasts, ms: 2000.
    pub interval_ms: u64,
}

impl Default for Partition {
    fn default() -> Self {
        Self { fraction: 0.5, duration_s: 10, broadcasts_after: 10, interval_ms: 2000 }
    }
}

/// The NAT-decided connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Introducer {
    /// NAT profile weights, named as in the expected matrix of
    /// `sim/README.md` (`public`, `eim-eif` … `apdm-apdf`,
    /// `symmetric-cgnat`).
    pub mix: BTreeMap<String, f64>,
    /// How long an RSVP may take through the relays, ms: 5000.
    #[serde(default = "five_thousand")]
    pub rsvp_timeout_ms: u64,
    /// Broadcasts after settling: 5.
    #[serde(default = "five")]
    pub broadcasts: u32,
}

fn five_thousand() -> u64 {
    5000
}

/// The topology policies at N.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// NAT profile weights as in `[introducer]`; `public` is Reach::Public,
    /// `eim-eif` and `eim-adf` (everybody connects, at worst after an RSVP)
    /// EasyNat, the rest HardNat.
    pub mix: BTreeMap<String, f64>,
    /// Links a public node offers to carry: 32.
    #[serde(default = "thirty_two")]
    pub public_capacity: u16,
    /// Links an easy-NAT node offers: 8.
    #[serde(default = "eight")]
    pub easy_capacity: u16,
}

fn thirty_two() -> u16 {
    32
}
fn eight() -> u16 {
    8
}

impl OverlayScenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScenarioError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text)
    }

    /// Parses and validates a scenario.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let s: Self = toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Checks every value, naming the field at fault.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if !(2..=1_000_000).contains(&self.nodes) {
            return Err(invalid("nodes", format!("must be between 2 and 1000000, got {}", self.nodes)));
        }
        let [lo, hi] = self.network.latency_ms;
        if lo == 0 || lo > hi || hi > 10_000 {
            return Err(invalid("network.latency_ms", "must be [lo, hi] with 1 <= lo <= hi <= 10000"));
        }
        if !(1..=600_000).contains(&self.network.connect_fail_ms) {
            return Err(invalid("network.connect_fail_ms", "must be between 1 and 600000"));
        }
        let [lo, hi] = self.growth.join_interval_ms;
        if lo > hi || hi > 600_000 {
            return Err(invalid("growth.join_interval_ms", "must be [lo, hi] with lo <= hi <= 600000"));
        }
        if self.growth.settle_rounds > 10_000 {
            return Err(invalid("growth.settle_rounds", "must be at most 10000"));
        }
        let sections = [
            self.steady.is_some(),
            self.failure.is_some(),
            self.membership.is_some(),
            self.churn.is_some(),
            self.partition.is_some(),
            self.introducer.is_some(),
            self.topology.is_some(),
        ];
        if sections.iter().filter(|&&s| s).count() != 1 {
            return Err(invalid(
                "measurement",
                "exactly one of [steady], [failure], [membership], [churn], [partition], [introducer], [topology] must be present",
            ));
        }
        if let Some(s) = &self.steady {
            if !(1..=10_000).contains(&s.broadcasts) {
                return Err(invalid("steady.broadcasts", "must be between 1 and 10000"));
            }
            if s.interval_ms == 0 {
                return Err(invalid("steady.interval_ms", "must be > 0"));
            }
        }
        if let Some(f) = &self.failure {
            if !(f.fraction > 0.0 && f.fraction < 1.0) {
                return Err(invalid("failure.fraction", format!("must be in (0, 1), got {}", f.fraction)));
            }
            if !(1..=10_000).contains(&f.broadcasts) {
                return Err(invalid("failure.broadcasts", "must be between 1 and 10000"));
            }
            if f.interval_ms == 0 {
                return Err(invalid("failure.interval_ms", "must be > 0"));
            }
        }
        if let Some(m) = &self.membership
            && !(1..=10_000).contains(&m.wait_rounds)
        {
            return Err(invalid("membership.wait_rounds", "must be between 1 and 10000"));
        }
        if let Some(c) = &self.churn {
            if !(1..=86_400).contains(&c.duration_s) {
                return Err(invalid("churn.duration_s", "must be between 1 and 86400"));
            }
            if c.interval_ms == 0 {
                return Err(invalid("churn.interval_ms", "must be > 0"));
            }
            if c.broadcast_interval_ms == 0 {
                return Err(invalid("churn.broadcast_interval_ms", "must be > 0"));
            }
        }
        if let Some(p) = &self.partition {
            if !(p.fraction > 0.0 && p.fraction <= 0.5) {
                return Err(invalid("partition.fraction", format!("must be in (0, 0.5], got {}", p.fraction)));
            }
            if !(1..=86_400).contains(&p.duration_s) {
                return Err(invalid("partition.duration_s", "must be between 1 and 86400"));
            }
            if p.interval_ms == 0 {
                return Err(invalid("partition.interval_ms", "must be > 0"));
            }
        }
        let matrix = expected_matrix();
        let check_mix = |field: &str, mix: &BTreeMap<String, f64>| -> Result<(), ScenarioError> {
            if mix.is_empty() {
                return Err(invalid(field, "must name at least one profile"));
            }
            for (name, w) in mix {
                if !matrix.profiles.contains(name) {
                    return Err(invalid(
                        format!("{field}.{name}"),
                        format!("unknown profile (the matrix has {})", matrix.profiles.join(", ")),
                    ));
                }
                if !(w.is_finite() && *w >= 0.0) {
                    return Err(invalid(format!("{field}.{name}"), "weight must be >= 0"));
                }
            }
            if mix.values().sum::<f64>() <= 0.0 {
                return Err(invalid(field, "weights must not all be 0"));
            }
            Ok(())
        };
        if let Some(i) = &self.introducer {
            check_mix("introducer.mix", &i.mix)?;
            if !(1..=600_000).contains(&i.rsvp_timeout_ms) {
                return Err(invalid("introducer.rsvp_timeout_ms", "must be between 1 and 600000"));
            }
            if i.broadcasts > 10_000 {
                return Err(invalid("introducer.broadcasts", "must be at most 10000"));
            }
        }
        if let Some(t) = &self.topology {
            check_mix("topology.mix", &t.mix)?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------ NAT matrix

/// What the expected matrix says of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    Single,
    Rsvp,
    Failed,
}

struct Matrix {
    profiles: Vec<String>,
    /// cells[inviter][invitee]
    cells: Vec<Vec<Cell>>,
}

/// What the NAT model says of every pair of built-in profiles.
fn expected_matrix() -> Matrix {
    let builtin = builtin_profiles();
    let cgnat = Cgnat::default().behaviour();
    let chains: Vec<Vec<crate::nat::Behaviour>> = builtin
        .values()
        .map(|p| {
            let mut c: Vec<_> = p.behaviour().into_iter().collect();
            if p.cgnat && !c.is_empty() {
                c.push(cgnat);
            }
            c
        })
        .collect();
    let cells = chains
        .iter()
        .map(|a| {
            chains
                .iter()
                .map(|b| match reach(a, b) {
                    Ladder::SingleToken => Cell::Single,
                    Ladder::Rsvp => Cell::Rsvp,
                    Ladder::Never => Cell::Failed,
                })
                .collect()
        })
        .collect();
    Matrix { profiles: builtin.into_keys().collect(), cells }
}

fn draw_profile(rng: &mut SimRng, mix: &[(usize, f64)]) -> usize {
    let total: f64 = mix.iter().map(|m| m.1).sum();
    let mut x = rng.unit() * total;
    for &(p, w) in mix {
        if x < w {
            return p;
        }
        x -= w;
    }
    mix.last().map_or(0, |m| m.0)
}

// ------------------------------------------------------------ the world

enum Ev {
    Deliver { to: u32, from: u32, msg: Message<u32> },
    Tick(u32),
    LinkUp { at: u32, peer: u32 },
    LinkFailed { at: u32, peer: u32 },
    LinkDown { at: u32, peer: u32 },
    RsvpTimeout { asker: u32, peer: u32, attempt: u64 },
}

/// One tracked broadcast.
struct Track {
    sent: u64,
    origin: u32,
    /// First delivery per node: (time, hop).
    got: Vec<Option<(u64, u16)>>,
    /// Payload copies received by live nodes.
    copies: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
struct CellCount {
    expected: String,
    attempts: u64,
    succeeded: u64,
    target_dead: u64,
    rsvp_no_route: u64,
    rsvp_relay_lost: u64,
}

struct NatModel {
    matrix: Matrix,
    /// Profile index per node.
    profile: Vec<usize>,
    mix: Vec<(usize, f64)>,
    rsvp_timeout: u64,
    /// (asker, peer) → attempt waiting for its RSVP to arrive.
    pending: HashMap<(u32, u32), u64, FastHash>,
    attempt: u64,
    counts: BTreeMap<(usize, usize), CellCount>,
    /// Attempt (low 32 bits) → why a relay refused its RSVP.
    refused: HashMap<u32, &'static str, FastHash>,
    /// Why RSVPs to live peers were lost: reason → count.
    losses: BTreeMap<&'static str, u64>,
}

/// The simulated overlay network.
pub struct OverlaySim {
    seed: u64,
    rng: SimRng,
    now: u64,
    queue: Queue<Ev>,
    nodes: Vec<Overlay<u32>>,
    alive: Vec<bool>,
    joined_at: Vec<u64>,
    died_at: Vec<u64>,
    sched: Vec<u64>,
    links: HashSet<(u32, u32), FastHash>,
    latency: [u64; 2],
    connect_fail: u64,
    cut: Option<Vec<bool>>,
    nat: Option<NatModel>,
    tracks: Vec<Track>,
    track_of: HashMap<MsgId<u32>, usize, FastHash>,
    joined_watch: Option<u32>,
    joined_seen: Vec<Option<u16>>,
    /// Messages sent and delivered.
    pub messages: u64,
    /// Events processed.
    pub events: u64,
}

fn card(p: u32) -> Card<u32> {
    Card { peer: p, token: p.to_be_bytes().to_vec() }
}

fn pair(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
}

fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl OverlaySim {
    fn new(seed: u64, net: &Net) -> Self {
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
            tracks: Vec::new(),
            track_of: HashMap::default(),
            joined_watch: None,
            joined_seen: Vec::new(),
            messages: 0,
            events: 0,
        }
    }

    /// One-way latency of a pair, fixed for the run.
    fn lat(&self, a: u32, b: u32) -> u64 {
        let (x, y) = pair(a, b);
        let h = mix64(self.seed ^ mix64((u64::from(x) << 32) | u64::from(y)));
        let [lo, hi] = self.latency;
        lo + h % (hi - lo + 1)
    }

    fn cut_between(&self, a: u32, b: u32) -> bool {
        self.cut.as_ref().is_some_and(|side| {
            side.get(a as usize).copied().unwrap_or(false) != side.get(b as usize).copied().unwrap_or(false)
        })
    }

    fn add_node(&mut self, cfg: Config) -> u32 {
        let id = self.nodes.len() as u32;
        let seed = self.rng.seed();
        self.nodes.push(Overlay::new(card(id), cfg, seed, self.now));
        self.alive.push(true);
        self.joined_at.push(self.now);
        self.died_at.push(u64::MAX);
        self.sched.push(u64::MAX);
        self.joined_seen.push(None);
        if let Some(nat) = &mut self.nat {
            let p = draw_profile(&mut self.rng, &nat.mix);
            nat.profile.push(p);
        }
        for t in &mut self.tracks {
            t.got.push(None);
        }
        id
    }

    fn join(&mut self, newcomer: u32, contact: u32) {
        self.links.insert(pair(newcomer, contact));
        self.nodes[newcomer as usize].join(card(contact), self.now);
        self.drain(newcomer);
    }

    fn kill(&mut self, i: u32) {
        self.alive[i as usize] = false;
        self.died_at[i as usize] = self.now;
    }

    fn live(&self) -> Vec<u32> {
        (0..self.nodes.len() as u32).filter(|&i| self.alive[i as usize]).collect()
    }

    fn random_live(&mut self) -> u32 {
        let live = self.live();
        live[(self.rng.u32() as usize) % live.len()]
    }

    fn broadcast(&mut self, origin: u32) -> usize {
        let k = self.tracks.len();
        let id = self.nodes[origin as usize].broadcast(format!("broadcast {k}").into_bytes(), self.now);
        let mut got = vec![None; self.nodes.len()];
        got[origin as usize] = Some((self.now, 0));
        self.tracks.push(Track { sent: self.now, origin, got, copies: 0 });
        self.track_of.insert(id, k);
        self.drain(origin);
        k
    }

    fn resched(&mut self, i: u32) {
        let t = self.nodes[i as usize].poll_timeout().max(self.now + 1);
        let s = &mut self.sched[i as usize];
        if t < *s || *s <= self.now {
            *s = t;
            self.queue.push(t, Ev::Tick(i));
        }
    }

    fn drain(&mut self, i: u32) {
        let now = self.now;
        while let Some(o) = self.nodes[i as usize].poll() {
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

    fn on_event(&mut self, i: u32, e: Event<u32>) {
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

    fn connect(&mut self, asker: u32, peer: u32, route: Vec<u32>) {
        let now = self.now;
        let reachable = self.alive.get(peer as usize).copied().unwrap_or(false) && !self.cut_between(asker, peer);
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
                    nat.pending.insert((asker, peer), attempt);
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
    fn run_until(&mut self, until: u64) {
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
    fn grow(&mut self, n: u32, g: &Growth, cfg: Config, avoid: Option<u32>) {
        if self.nodes.is_empty() {
            self.add_node(cfg);
        }
        while (self.nodes.len() as u32) < n {
            let wait = self.rng.between(g.join_interval_ms[0], g.join_interval_ms[1]);
            self.run_until(self.now + wait);
            let i = self.add_node(cfg);
            let contact = loop {
                let c = self.rng.u32() % i;
                if self.alive[c as usize] && Some(c) != avoid {
                    break c;
                }
            };
            self.join(i, contact);
        }
        self.run_until(self.now + u64::from(g.settle_rounds) * cfg.round);
    }
}

// ------------------------------------------------------------ measuring

/// One broadcast's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BroadcastFigures {
    /// Order in the run.
    pub index: usize,
    /// Who sent it.
    pub origin: u32,
    /// When, ms of simulated time.
    pub sent_ms: u64,
    /// Nodes that should get it (alive throughout, joined before).
    pub eligible: u64,
    /// Of those, how many got it.
    pub reached: u64,
    /// Eligible nodes that did not.
    pub missed: u64,
    /// reached / eligible.
    pub delivery_ratio: f64,
    /// Share of eligible nodes that got it within 1, 2, 3 rounds of its send.
    pub within_rounds: [f64; 3],
    /// Payload copies received.
    pub copies: u64,
    /// Relative message redundancy: copies / (nodes reached − 1) − 1, over
    /// every node that delivered it.
    pub rmr: f64,
    /// Largest hop count of a delivery.
    pub last_hop: u16,
    /// Time to the last delivery, ms.
    pub last_delivery_ms: u64,
}

/// Live overlay invariants.
#[derive(Debug, Clone, Serialize)]
pub struct Invariants {
    /// Live nodes.
    pub live: u64,
    /// Active-view entries the other side does not hold back.
    pub asymmetric_entries: u64,
    /// Active-view entries naming dead nodes.
    pub dead_entries: u64,
    /// Live nodes with an empty active view.
    pub isolated: u64,
    /// Mean active view size.
    pub mean_active: f64,
    /// Whether the active graph over live nodes is connected.
    pub active_connected: bool,
    /// Its connected components.
    pub active_components: u64,
    /// Undirected eager (tree) links between live nodes.
    pub eager_edges: u64,
    /// Whether the eager links have no cycle.
    pub eager_acyclic: bool,
    /// Eager links beyond a spanning forest (links that close a cycle).
    pub eager_extra_edges: u64,
    /// Whether they connect every live node (a spanning tree with acyclic).
    pub eager_connected: bool,
    /// Most eager links at one node.
    pub eager_max_degree: u64,
    /// Eager tree depth from node `depth_root`.
    pub eager_depth: u64,
    /// The root of `eager_depth` (the last broadcast's origin).
    pub depth_root: u32,
}

fn components(n: usize, edges: &[(u32, u32)]) -> usize {
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    let mut count = n;
    for &(a, b) in edges {
        let (ra, rb) = (find(&mut parent, a as usize), find(&mut parent, b as usize));
        if ra != rb {
            parent[ra] = rb;
            count -= 1;
        }
    }
    count
}

impl OverlaySim {
    fn invariants(&self, root: u32) -> Invariants {
        let live = self.live();
        let mut asym = 0;
        let mut dead = 0;
        let mut isolated = 0;
        let mut total = 0u64;
        let mut active = Vec::new();
        let mut eager = std::collections::BTreeSet::new();
        for &i in &live {
            let o = &self.nodes[i as usize];
            let mut k = 0;
            for p in o.active() {
                k += 1;
                if !self.alive[p as usize] {
                    dead += 1;
                    continue;
                }
                if !self.nodes[p as usize].is_active(i) {
                    asym += 1;
                }
                if i < p {
                    active.push((i, p));
                }
            }
            if k == 0 {
                isolated += 1;
            }
            total += k;
            for &p in o.plumtree().eager() {
                if self.alive[p as usize] {
                    eager.insert(pair(i, p));
                }
            }
        }
        // Compact indices for the union-find.
        let mut index = vec![u32::MAX; self.nodes.len()];
        for (k, &i) in live.iter().enumerate() {
            index[i as usize] = k as u32;
        }
        let remap = |e: &[(u32, u32)]| -> Vec<(u32, u32)> {
            e.iter().map(|&(a, b)| (index[a as usize], index[b as usize])).collect()
        };
        let active_graph = topology::graph_of(live.iter().copied(), active.iter().copied());
        let eager: Vec<(u32, u32)> = eager.into_iter().collect();
        let eager_graph = topology::graph_of(live.iter().copied(), eager.iter().copied());
        let comps = components(live.len(), &remap(&eager));
        let eager_depth = eager_graph
            .node_indices()
            .find(|&n| eager_graph[n] == root)
            .map_or(0, |r| topology::depth_from(&eager_graph, r));
        Invariants {
            live: live.len() as u64,
            asymmetric_entries: asym,
            dead_entries: dead,
            isolated,
            mean_active: total as f64 / live.len().max(1) as f64,
            active_connected: topology::is_connected(&active_graph),
            active_components: components(live.len(), &remap(&active)) as u64,
            eager_edges: eager.len() as u64,
            eager_acyclic: eager.len() + comps == live.len(),
            eager_extra_edges: (eager.len() + comps).saturating_sub(live.len()) as u64,
            eager_connected: comps == 1,
            eager_max_degree: topology::max_degree(&eager_graph) as u64,
            eager_depth: eager_depth as u64,
            depth_root: root,
        }
    }

    /// Figures of broadcast `k`: eligible are nodes joined `grace` ms before
    /// its send and alive until `until`.
    fn figures(&self, k: usize, grace: u64, until: u64, round: u64) -> BroadcastFigures {
        let t = &self.tracks[k];
        let mut eligible = 0;
        let mut reached = 0;
        let mut within = [0u64; 3];
        let mut delivered_all = 0u64;
        let mut last_hop = 0;
        let mut last = 0;
        for i in 0..self.nodes.len() {
            if let Some((at, hop)) = t.got.get(i).copied().flatten() {
                delivered_all += 1;
                last_hop = last_hop.max(hop);
                last = last.max(at - t.sent);
            }
            if self.joined_at[i] + grace > t.sent || self.died_at[i] <= until || i as u32 == t.origin {
                continue;
            }
            eligible += 1;
            if let Some((at, _)) = t.got.get(i).copied().flatten() {
                reached += 1;
                for (r, w) in within.iter_mut().enumerate() {
                    if at - t.sent <= (r as u64 + 1) * round {
                        *w += 1;
                    }
                }
            }
        }
        let frac = |x: u64| if eligible == 0 { 1.0 } else { x as f64 / eligible as f64 };
        BroadcastFigures {
            index: k,
            origin: t.origin,
            sent_ms: t.sent,
            eligible,
            reached,
            missed: eligible - reached,
            delivery_ratio: frac(reached),
            within_rounds: [frac(within[0]), frac(within[1]), frac(within[2])],
            copies: t.copies,
            rmr: if delivered_all > 1 { t.copies as f64 / (delivered_all - 1) as f64 - 1.0 } else { 0.0 },
            last_hop,
            last_delivery_ms: last,
        }
    }
}

// ------------------------------------------------------------ the report

/// Aggregates of several broadcasts.
#[derive(Debug, Clone, Serialize)]
pub struct Aggregate {
    /// Broadcasts.
    pub broadcasts: u64,
    /// Missed deliveries over all of them.
    pub missed: u64,
    /// Smallest delivery ratio.
    pub min_delivery_ratio: f64,
    /// RMR of the first broadcast (it builds the tree).
    pub rmr_first: f64,
    /// Mean RMR of the others.
    pub rmr_later_mean: f64,
    /// Largest RMR of the others.
    pub rmr_later_max: f64,
    /// Largest last hop.
    pub max_last_hop: u16,
    /// 2·log2 N, the target for it.
    pub hop_target: f64,
}

fn aggregate(b: &[BroadcastFigures], n: u64) -> Aggregate {
    let later: Vec<f64> = b.iter().skip(1).map(|f| f.rmr).collect();
    Aggregate {
        broadcasts: b.len() as u64,
        missed: b.iter().map(|f| f.missed).sum(),
        min_delivery_ratio: b.iter().map(|f| f.delivery_ratio).fold(1.0, f64::min),
        rmr_first: b.first().map_or(0.0, |f| f.rmr),
        rmr_later_mean: if later.is_empty() { 0.0 } else { later.iter().sum::<f64>() / later.len() as f64 },
        rmr_later_max: later.iter().copied().fold(0.0, f64::max),
        max_last_hop: b.iter().map(|f| f.last_hop).max().unwrap_or(0),
        hop_target: 2.0 * (n.max(2) as f64).log2(),
    }
}

/// The failure measurement.
#[derive(Debug, Clone, Serialize)]
pub struct FailureFigures {
    /// Share killed.
    pub fraction: f64,
    /// Nodes killed.
    pub killed: u64,
    /// When, ms.
    pub at_ms: u64,
    /// Time from the crash until no survivor's active view names a dead
    /// node, ms (sampled every 250 ms; `None`: not within the run).
    pub views_clean_after_ms: Option<u64>,
    /// Survivors' active-view entries naming dead nodes, per second after
    /// the crash.
    pub dead_entries_per_s: Vec<u64>,
    /// The broadcasts after the crash.
    pub broadcasts: Vec<BroadcastFigures>,
}

/// The membership measurement.
#[derive(Debug, Clone, Serialize)]
pub struct MembershipFigures {
    /// The newcomer.
    pub newcomer: u32,
    /// Its contact (which announces the join).
    pub contact: u32,
    /// Live nodes other than the contact and the newcomer.
    pub nodes: u64,
    /// How many got `MemberJoined` for the newcomer.
    pub informed: u64,
    /// informed / nodes.
    pub fraction: f64,
    /// Share informed within 16 hops.
    pub within_16: f64,
    /// Hops (Plumtree rounds) → nodes.
    pub hops: BTreeMap<u16, u64>,
}

/// The churn measurement.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnFigures {
    /// Nodes that crashed.
    pub left: u64,
    /// Newcomers that joined.
    pub joined: u64,
    /// Broadcasts during churn.
    pub broadcasts: Vec<BroadcastFigures>,
}

/// The partition measurement.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionFigures {
    /// Nodes on the small side.
    pub side: u64,
    /// Start and heal, ms.
    pub cut_ms: [u64; 2],
    /// A broadcast during the partition, from the small side: share of
    /// that side reached, and of the other side.
    pub during_own_side: f64,
    /// ... and of the other side (0 expected).
    pub during_other_side: f64,
    /// Invariants just before healing.
    pub before_heal: Invariants,
    /// Broadcasts after healing.
    pub after: Vec<BroadcastFigures>,
}

/// One cell of the introducer measurement.
#[derive(Debug, Clone, Serialize)]
pub struct IntroCell {
    /// Inviter profile (the peer connected to).
    pub inviter: String,
    /// Invitee profile (the asker).
    pub invitee: String,
    /// What the matrix says.
    pub expected: String,
    /// Connections asked for.
    pub attempts: u64,
    /// Of those, links that came up (RSVP cells: the RSVP arrived).
    pub succeeded: u64,
    /// Failed because the target was dead or unreachable.
    pub target_dead: u64,
    /// RSVP cells: no usable route (empty or first hop not active).
    pub rsvp_no_route: u64,
    /// RSVP cells: sent, but did not arrive in time (relay refused, a hop
    /// died or dropped the link).
    pub rsvp_relay_lost: u64,
}

/// The introducer measurement.
#[derive(Debug, Clone, Serialize)]
pub struct IntroFigures {
    /// Nodes per profile.
    pub population: BTreeMap<String, u64>,
    /// Per cell (only cells with attempts).
    pub cells: Vec<IntroCell>,
    /// Totals per expected outcome: attempts, succeeded.
    pub totals: BTreeMap<String, [u64; 2]>,
    /// Successes in `failed` cells (must be 0).
    pub success_in_failed_cells: u64,
    /// Attempts in direct-path cells to live targets that failed for a
    /// reason other than a lost relay or missing route (must be 0).
    pub unexplained_failures: u64,
    /// Why RSVPs to live peers were lost in the relays: `rate_limited` (a
    /// relay's per-origin or total limit), `route_broken` (the next hop was
    /// no longer the relay's neighbour), `lost_in_transit` (a hop had died
    /// or closed the link, so the message was dropped without a refusal).
    pub rsvp_losses: BTreeMap<String, u64>,
    /// Broadcasts after settling.
    pub broadcasts: Vec<BroadcastFigures>,
}

/// One topology policy.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyFigures {
    /// Its name.
    pub policy: String,
    /// `check` result: "ok" or the violation.
    pub check: String,
    /// Edges.
    pub edges: u64,
    /// Largest degree.
    pub max_degree: u64,
    /// Depth from node 0.
    pub depth: u64,
    /// Plumtree over it: RMR of the first broadcast.
    pub rmr_first: f64,
    /// ... of the second.
    pub rmr_second: f64,
    /// Last hop of the second.
    pub last_hop_second: u16,
    /// Delivered to all nodes (both broadcasts).
    pub delivered_all: bool,
    /// Eager tree depth from the second broadcast's origin.
    pub eager_depth: u64,
    /// Most eager links at one node.
    pub eager_max_degree: u64,
}

/// The topology measurement.
#[derive(Debug, Clone, Serialize)]
pub struct TopologyFigures {
    /// Nodes per reach class.
    pub reach: BTreeMap<String, u64>,
    /// Per policy.
    pub policies: Vec<PolicyFigures>,
}

/// An overlay run's report (deterministic: no wall-clock figures).
#[derive(Debug, Clone, Serialize)]
pub struct OverlayReport {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Nodes grown.
    pub nodes: u32,
    /// Simulated time at the end, ms.
    pub sim_ms: u64,
    /// Messages delivered.
    pub messages: u64,
    /// Events processed.
    pub events: u64,
    /// Invariants after settling (before the measurement).
    pub settled: Option<Invariants>,
    /// Invariants at the end.
    pub end: Option<Invariants>,
    /// Steady-state broadcasts.
    pub steady: Option<Vec<BroadcastFigures>>,
    /// Their aggregate (steady, introducer, partition: after healing).
    pub aggregate: Option<Aggregate>,
    /// Simultaneous failure.
    pub failure: Option<FailureFigures>,
    /// Membership.
    pub membership: Option<MembershipFigures>,
    /// Churn.
    pub churn: Option<ChurnFigures>,
    /// Partition.
    pub partition: Option<PartitionFigures>,
    /// Introducer.
    pub introducer: Option<IntroFigures>,
    /// Topology policies.
    pub topology: Option<TopologyFigures>,
}

fn base_config() -> Config {
    Config { announce_joins: false, ..Config::default() }
}

/// Runs `s` with `seed`.
pub fn run(s: &OverlayScenario, seed: u64) -> OverlayReport {
    let cfg = base_config();
    let round = cfg.round;
    let mut sim = OverlaySim::new(seed, &s.network);
    let mut report = OverlayReport {
        scenario: s.name.clone(),
        seed,
        nodes: s.nodes,
        sim_ms: 0,
        messages: 0,
        events: 0,
        settled: None,
        end: None,
        steady: None,
        aggregate: None,
        failure: None,
        membership: None,
        churn: None,
        partition: None,
        introducer: None,
        topology: None,
    };
    if let Some(t) = &s.topology {
        report.topology = Some(run_topology(t, s.nodes, seed, &mut sim));
        return report;
    }
    if let Some(i) = &s.introducer {
        let matrix = expected_matrix();
        let mix = i
            .mix
            .iter()
            .filter_map(|(name, &w)| matrix.profiles.iter().position(|p| p == name).map(|p| (p, w)))
            .collect();
        sim.nat = Some(NatModel {
            matrix,
            profile: Vec::new(),
            mix,
            rsvp_timeout: i.rsvp_timeout_ms,
            pending: HashMap::default(),
            attempt: 0,
            counts: BTreeMap::new(),
            refused: HashMap::default(),
            losses: BTreeMap::new(),
        });
    }
    // The membership contact announces joins; nobody joins through it
    // while the network grows, so it announces only the measured one.
    let contact = s.membership.as_ref().map(|_| 0u32);
    if contact.is_some() {
        // Node 0 announces; it joins through node 1, the first to grow from.
        sim.add_node(Config { announce_joins: true, ..cfg });
        sim.add_node(cfg);
        sim.join(0, 1);
    }
    sim.grow(s.nodes, &s.growth, cfg, contact);
    let first_root = sim.random_live();
    report.settled = Some(sim.invariants(first_root));
    let n = u64::from(s.nodes);

    if let Some(st) = &s.steady {
        let mut ks = Vec::new();
        for _ in 0..st.broadcasts {
            let o = sim.random_live();
            ks.push(sim.broadcast(o));
            sim.run_until(sim.now + st.interval_ms);
        }
        sim.run_until(sim.now + 5 * round);
        let f: Vec<_> = ks.iter().map(|&k| sim.figures(k, 0, sim.now, round)).collect();
        report.aggregate = Some(aggregate(&f, n));
        report.steady = Some(f);
    }
    if let Some(fl) = &s.failure {
        let warm = sim.random_live();
        sim.broadcast(warm);
        sim.run_until(sim.now + 2 * round);
        let live = sim.live();
        let kill = ((live.len() as f64) * fl.fraction).round() as usize;
        let mut order = live.clone();
        for k in (1..order.len()).rev() {
            let j = (sim.rng.u32() as usize) % (k + 1);
            order.swap(k, j);
        }
        for &v in &order[..kill] {
            sim.kill(v);
        }
        let at = sim.now;
        let mut ks = Vec::new();
        let mut next_bc = at;
        let end = at + u64::from(fl.broadcasts - 1) * fl.interval_ms + 30 * round;
        let mut clean = None;
        let mut per_s = Vec::new();
        let mut t = at;
        while t <= end {
            if ks.len() < fl.broadcasts as usize && t >= next_bc {
                let o = sim.random_live();
                ks.push(sim.broadcast(o));
                next_bc += fl.interval_ms;
            }
            let dead = sim.invariants_dead_entries();
            if (t - at).is_multiple_of(1000) {
                per_s.push(dead);
            }
            if dead == 0 && clean.is_none() {
                clean = Some(t - at);
            }
            t += 250;
            sim.run_until(t);
        }
        let f = ks.iter().map(|&k| sim.figures(k, 0, sim.now, round)).collect();
        report.failure = Some(FailureFigures {
            fraction: fl.fraction,
            killed: kill as u64,
            at_ms: at,
            views_clean_after_ms: clean,
            dead_entries_per_s: per_s,
            broadcasts: f,
        });
    }
    if let Some(m) = &s.membership {
        let c = contact.unwrap_or(0);
        let newcomer = sim.add_node(cfg);
        sim.joined_watch = Some(newcomer);
        sim.join(newcomer, c);
        sim.run_until(sim.now + u64::from(m.wait_rounds) * round);
        let mut hops = BTreeMap::new();
        let mut nodes = 0;
        let mut informed = 0;
        let mut within = 0;
        for i in sim.live() {
            // The contact announces; the newcomer is not told about itself.
            if i == c || i == newcomer {
                continue;
            }
            nodes += 1;
            if let Some(h) = sim.joined_seen[i as usize] {
                informed += 1;
                *hops.entry(h).or_insert(0) += 1;
                if h <= 16 {
                    within += 1;
                }
            }
        }
        report.membership = Some(MembershipFigures {
            newcomer,
            contact: c,
            nodes,
            informed,
            fraction: informed as f64 / nodes.max(1) as f64,
            within_16: within as f64 / nodes.max(1) as f64,
            hops,
        });
    }
    if let Some(ch) = &s.churn {
        let start = sim.now;
        let end = start + ch.duration_s * 1000;
        let (mut left, mut joined) = (0, 0);
        let mut ks = Vec::new();
        let mut next_bc = start + ch.broadcast_interval_ms;
        let mut t = start;
        while t < end {
            t += ch.interval_ms;
            sim.run_until(t);
            let v = sim.random_live();
            sim.kill(v);
            left += 1;
            let i = sim.add_node(cfg);
            let c = sim.random_live_except(i);
            sim.join(i, c);
            joined += 1;
            while next_bc <= t {
                let o = sim.random_live();
                ks.push(sim.broadcast(o));
                next_bc += ch.broadcast_interval_ms;
            }
        }
        sim.run_until(end + 5 * round);
        // Eligible: joined 2 rounds before the send, alive 3 rounds after.
        let f: Vec<_> = ks
            .iter()
            .map(|&k| {
                let sent = sim.tracks[k].sent;
                sim.figures(k, 2 * round, sent + 3 * round, round)
            })
            .collect();
        report.aggregate = Some(aggregate(&f, n));
        report.churn = Some(ChurnFigures { left, joined, broadcasts: f });
    }
    if let Some(p) = &s.partition {
        let warm = sim.random_live();
        sim.broadcast(warm);
        sim.run_until(sim.now + 2 * round);
        let count = sim.nodes.len();
        let mut side = vec![false; count];
        let small = ((count as f64) * p.fraction).round() as usize;
        let mut order: Vec<usize> = (0..count).collect();
        for k in (1..order.len()).rev() {
            let j = (sim.rng.u32() as usize) % (k + 1);
            order.swap(k, j);
        }
        for &i in &order[..small] {
            side[i] = true;
        }
        sim.cut = Some(side.clone());
        let cut_at = sim.now;
        sim.run_until(sim.now + p.duration_s * 1000 / 2);
        let origin = (0..count as u32).find(|&i| side[i as usize] && sim.alive[i as usize]).unwrap_or(0);
        let k = sim.broadcast(origin);
        sim.run_until(cut_at + p.duration_s * 1000);
        let t = &sim.tracks[k];
        let (mut own, mut own_got, mut other, mut other_got) = (0u64, 0u64, 0u64, 0u64);
        for (i, &small_side) in side.iter().enumerate() {
            if i as u32 == origin {
                continue;
            }
            let got = t.got[i].is_some();
            if small_side {
                own += 1;
                own_got += u64::from(got);
            } else {
                other += 1;
                other_got += u64::from(got);
            }
        }
        let before_heal = sim.invariants(origin);
        sim.cut = None;
        let heal_at = sim.now;
        let mut ks = Vec::new();
        for _ in 0..p.broadcasts_after {
            sim.run_until(sim.now + p.interval_ms);
            let o = sim.random_live();
            ks.push(sim.broadcast(o));
        }
        sim.run_until(sim.now + 5 * round);
        let f: Vec<_> = ks.iter().map(|&k| sim.figures(k, 0, sim.now, round)).collect();
        report.aggregate = Some(aggregate(&f, n));
        report.partition = Some(PartitionFigures {
            side: small as u64,
            cut_ms: [cut_at, heal_at],
            during_own_side: own_got as f64 / own.max(1) as f64,
            during_other_side: other_got as f64 / other.max(1) as f64,
            before_heal,
            after: f,
        });
    }
    if let Some(i) = &s.introducer {
        let mut ks = Vec::new();
        for _ in 0..i.broadcasts {
            let o = sim.random_live();
            ks.push(sim.broadcast(o));
            sim.run_until(sim.now + 2 * round);
        }
        sim.run_until(sim.now + 5 * round);
        let f: Vec<_> = ks.iter().map(|&k| sim.figures(k, 0, sim.now, round)).collect();
        report.aggregate = Some(aggregate(&f, n));
        report.introducer = sim.nat.as_ref().map(|nat| intro_figures(nat, f));
    }
    let root = sim.tracks.last().map_or(first_root, |t| t.origin);
    let root = if sim.alive[root as usize] { root } else { sim.random_live() };
    report.end = Some(sim.invariants(root));
    report.sim_ms = sim.now;
    report.messages = sim.messages;
    report.events = sim.events;
    report
}

impl OverlaySim {
    fn invariants_dead_entries(&self) -> u64 {
        let mut dead = 0;
        for i in 0..self.nodes.len() {
            if self.alive[i] {
                dead += self.nodes[i].active().filter(|&p| !self.alive[p as usize]).count() as u64;
            }
        }
        dead
    }

    fn random_live_except(&mut self, x: u32) -> u32 {
        loop {
            let c = self.random_live();
            if c != x {
                return c;
            }
        }
    }
}

fn intro_figures(nat: &NatModel, broadcasts: Vec<BroadcastFigures>) -> IntroFigures {
    let names = &nat.matrix.profiles;
    let mut population = BTreeMap::new();
    for &p in &nat.profile {
        *population.entry(names[p].clone()).or_insert(0) += 1;
    }
    let mut cells = Vec::new();
    let mut totals: BTreeMap<String, [u64; 2]> = BTreeMap::new();
    let mut success_in_failed = 0;
    let mut unexplained = 0;
    for (&(a, b), c) in &nat.counts {
        let cell = nat.matrix.cells[a][b];
        let expected = match cell {
            Cell::Single => "single-token",
            Cell::Rsvp => "rsvp",
            Cell::Failed => "failed",
        };
        let t = totals.entry(expected.to_owned()).or_default();
        t[0] += c.attempts;
        t[1] += c.succeeded;
        if cell == Cell::Failed {
            success_in_failed += c.succeeded;
        } else {
            let explained = c.succeeded + c.target_dead + c.rsvp_no_route + c.rsvp_relay_lost;
            // RSVPs still in flight at the end are neither (counting only:
            // the map's order does not matter).
            let in_flight = nat
                .pending
                .keys()
                .filter(|&&(asker, peer)| (nat.profile[peer as usize], nat.profile[asker as usize]) == (a, b))
                .count() as u64;
            unexplained += c.attempts.saturating_sub(explained + in_flight);
        }
        cells.push(IntroCell {
            inviter: names[a].clone(),
            invitee: names[b].clone(),
            expected: expected.to_owned(),
            attempts: c.attempts,
            succeeded: c.succeeded,
            target_dead: c.target_dead,
            rsvp_no_route: c.rsvp_no_route,
            rsvp_relay_lost: c.rsvp_relay_lost,
        });
    }
    IntroFigures {
        population,
        cells,
        totals,
        success_in_failed_cells: success_in_failed,
        unexplained_failures: unexplained,
        rsvp_losses: nat.losses.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        broadcasts,
    }
}

fn run_topology(t: &Topology, n: u32, seed: u64, sim: &mut OverlaySim) -> TopologyFigures {
    let matrix = expected_matrix();
    let mix: Vec<(usize, f64)> =
        t.mix.iter().filter_map(|(name, &w)| matrix.profiles.iter().position(|p| p == name).map(|p| (p, w))).collect();
    let mut reach_count = BTreeMap::new();
    let infos: Vec<NodeInfo> = (0..n)
        .map(|_| {
            let p = &matrix.profiles[draw_profile(&mut sim.rng, &mix)];
            let (reach, capacity) = match p.as_str() {
                "public" => (Reach::Public, t.public_capacity),
                "eim-eif" | "eim-adf" => (Reach::EasyNat, t.easy_capacity),
                _ => (Reach::HardNat, 0),
            };
            *reach_count.entry(format!("{reach:?}")).or_insert(0) += 1;
            NodeInfo { reach, capacity }
        })
        .collect();
    let mut policies = Vec::new();
    for policy in topology::all() {
        let g = policy.build(&infos, seed);
        let check = match policy.check(&g) {
            Ok(()) => "ok".to_owned(),
            Err(v) => v.to_string(),
        };
        let depth = g.node_indices().next().map_or(0, |r| topology::depth_from(&g, r));
        let edges: Vec<(u32, u32)> =
            g.raw_edges().iter().map(|e| (e.source().index() as u32, e.target().index() as u32)).collect();
        let origin1 = sim.rng.u32() % n;
        let origin2 = sim.rng.u32() % n;
        let (b1, b2, eager) = plumtree_over(n, &edges, origin1, origin2, sim);
        let eager_graph = topology::graph_of(0..n, eager.iter().copied());
        let eager_depth = eager_graph
            .node_indices()
            .find(|&x| eager_graph[x] == origin2)
            .map_or(0, |r| topology::depth_from(&eager_graph, r));
        policies.push(PolicyFigures {
            policy: policy.name(),
            check,
            edges: g.edge_count() as u64,
            max_degree: topology::max_degree(&g) as u64,
            depth: depth as u64,
            rmr_first: b1.0,
            rmr_second: b2.0,
            last_hop_second: b2.1,
            delivered_all: b1.2 && b2.2,
            eager_depth: eager_depth as u64,
            eager_max_degree: topology::max_degree(&eager_graph) as u64,
        });
    }
    TopologyFigures { reach: reach_count, policies }
}

/// Standalone Plumtree over a static graph: two broadcasts; returns (RMR,
/// last hop, all delivered) of each and the eager edges after them.
#[allow(clippy::type_complexity)]
fn plumtree_over(
    n: u32,
    edges: &[(u32, u32)],
    o1: u32,
    o2: u32,
    sim: &OverlaySim,
) -> ((f64, u16, bool), (f64, u16, bool), Vec<(u32, u32)>) {
    let mut nodes: Vec<Plumtree<u32>> = (0..n).map(|i| Plumtree::new(i, PlumConfig::default())).collect();
    for &(a, b) in edges {
        nodes[a as usize].neighbor_up(b, 0);
        nodes[b as usize].neighbor_up(a, 0);
    }
    let mut now = 0u64;
    let one = |nodes: &mut Vec<Plumtree<u32>>, origin: u32, now: &mut u64| {
        let mut q: Queue<(u32, u32, Option<Message<u32>>)> = Queue::default();
        nodes[origin as usize].broadcast(Kind::App, b"x".to_vec(), *now);
        let mut got = vec![false; n as usize];
        got[origin as usize] = true;
        let (mut copies, mut reached, mut last) = (0u64, 1u64, 0u16);
        let flush = |q: &mut Queue<_>, nodes: &mut Vec<Plumtree<u32>>, i: u32, now: u64| {
            while let Some((to, m)) = nodes[i as usize].poll_send() {
                q.push(now + sim.lat(i, to), (to, i, Some(m)));
            }
            if nodes[i as usize].missing() > 0
                && let Some(t) = nodes[i as usize].poll_timeout()
            {
                q.push(t.max(now + 1), (i, i, None));
            }
        };
        flush(&mut q, nodes, origin, *now);
        while let Some((at, (to, from, m))) = q.pop() {
            *now = at;
            match m {
                Some(m) => {
                    if matches!(m, Message::Gossip { .. }) {
                        copies += 1;
                    }
                    nodes[to as usize].handle(from, m, at);
                    while let Some(d) = nodes[to as usize].poll_delivery() {
                        if !got[to as usize] {
                            got[to as usize] = true;
                            reached += 1;
                            last = last.max(d.round);
                        }
                    }
                }
                None => nodes[to as usize].tick(at),
            }
            flush(&mut q, nodes, to, at);
        }
        let rmr = if reached > 1 { copies as f64 / (reached - 1) as f64 - 1.0 } else { 0.0 };
        *now += 1000;
        (rmr, last, reached == u64::from(n))
    };
    let b1 = one(&mut nodes, o1, &mut now);
    let b2 = one(&mut nodes, o2, &mut now);
    let mut eager = std::collections::BTreeSet::new();
    for (i, p) in nodes.iter().enumerate() {
        for &q in p.eager() {
            eager.insert(pair(i as u32, q));
        }
    }
    (b1, b2, eager.into_iter().collect())
}

// ------------------------------------------------------------ rendering

impl OverlayReport {
    /// Pretty JSON (deterministic).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Markdown tables.
    pub fn to_markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "# Overlay scenario `{}` (seed {}, N = {})\n", self.scenario, self.seed, self.nodes);
        let _ = writeln!(
            m,
            "Simulated {:.1} s, {} messages delivered, {} events. A membership round is 1000 ms.\n",
            self.sim_ms as f64 / 1000.0,
            self.messages,
            self.events
        );
        for (title, inv) in [("After settling", &self.settled), ("At the end", &self.end)] {
            if let Some(i) = inv {
                let _ = writeln!(m, "## {title}: live overlay invariants\n");
                m.push_str(&invariants_md(i));
            }
        }
        if let Some(a) = &self.aggregate {
            let _ = writeln!(m, "## Broadcasts: aggregate\n");
            let _ = writeln!(
                m,
                "| broadcasts | missed | min delivery | RMR first | RMR later (mean / max) | max last hop | target 2·log2 N |"
            );
            let _ = writeln!(m, "|---|---|---|---|---|---|---|");
            let _ = writeln!(
                m,
                "| {} | {} | {:.4} | {:.3} | {:.4} / {:.4} | {} | {:.1} |\n",
                a.broadcasts,
                a.missed,
                a.min_delivery_ratio,
                a.rmr_first,
                a.rmr_later_mean,
                a.rmr_later_max,
                a.max_last_hop,
                a.hop_target
            );
        }
        if let Some(b) = &self.steady {
            let _ = writeln!(m, "## Steady-state broadcasts\n");
            m.push_str(&broadcasts_md(b));
        }
        if let Some(f) = &self.failure {
            let _ = writeln!(
                m,
                "## Simultaneous failure: {:.0}% ({} nodes) at {} ms\n",
                f.fraction * 100.0,
                f.killed,
                f.at_ms
            );
            let _ = writeln!(
                m,
                "Survivors' active views free of dead peers after: {}.\n",
                f.views_clean_after_ms.map_or("not within the run".to_owned(), |t| format!("{t} ms"))
            );
            let _ = writeln!(
                m,
                "Dead entries in survivors' active views, per second after the crash: {:?}\n",
                f.dead_entries_per_s
            );
            m.push_str(&broadcasts_md(&f.broadcasts));
        }
        if let Some(mm) = &self.membership {
            let _ = writeln!(m, "## Membership: newcomer {} joins through {}\n", mm.newcomer, mm.contact);
            let _ = writeln!(
                m,
                "{} of {} nodes ({:.4}%) got `MemberJoined`; within 16 hops: {:.4}%. A gossip round here is one hop of the contact's Plumtree announcement.\n",
                mm.informed,
                mm.nodes,
                mm.fraction * 100.0,
                mm.within_16 * 100.0
            );
            let _ = writeln!(m, "| hops | nodes |\n|---|---|");
            for (h, c) in &mm.hops {
                let _ = writeln!(m, "| {h} | {c} |");
            }
            m.push('\n');
        }
        if let Some(c) = &self.churn {
            let _ = writeln!(m, "## Churn: {} left, {} joined\n", c.left, c.joined);
            m.push_str(&broadcasts_md(&c.broadcasts));
        }
        if let Some(p) = &self.partition {
            let _ = writeln!(m, "## Partition: {} nodes cut off from {} to {} ms\n", p.side, p.cut_ms[0], p.cut_ms[1]);
            let _ = writeln!(
                m,
                "A broadcast from the small side during the partition reached {:.4} of its side and {:.4} of the other.\n",
                p.during_own_side, p.during_other_side
            );
            let _ = writeln!(m, "Just before healing:\n");
            m.push_str(&invariants_md(&p.before_heal));
            let _ = writeln!(m, "After healing:\n");
            m.push_str(&broadcasts_md(&p.after));
        }
        if let Some(i) = &self.introducer {
            let _ = writeln!(m, "## Introducer-assisted connections\n");
            let _ = writeln!(m, "Population: {:?}\n", i.population);
            let _ = writeln!(m, "| expected | attempts | succeeded |\n|---|---|---|");
            for (k, [a, s]) in &i.totals {
                let _ = writeln!(m, "| {k} | {a} | {s} |");
            }
            let _ = writeln!(
                m,
                "\nSuccesses in `failed` cells: {}. Direct-path attempts to live peers that failed unexplained: {}.\n",
                i.success_in_failed_cells, i.unexplained_failures
            );
            let _ = writeln!(m, "Why RSVPs to live peers were lost in the relays: {:?}\n", i.rsvp_losses);
            let _ = writeln!(
                m,
                "| inviter | invitee | expected | attempts | succeeded | target dead | RSVP no route | RSVP relay lost |\n|---|---|---|---|---|---|---|---|"
            );
            for c in &i.cells {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.inviter,
                    c.invitee,
                    c.expected,
                    c.attempts,
                    c.succeeded,
                    c.target_dead,
                    c.rsvp_no_route,
                    c.rsvp_relay_lost
                );
            }
            m.push('\n');
            m.push_str(&broadcasts_md(&i.broadcasts));
        }
        if let Some(t) = &self.topology {
            let _ = writeln!(m, "## Topology policies\n\nPopulation: {:?}\n", t.reach);
            let _ = writeln!(
                m,
                "| policy | check | edges | max degree | depth | Plumtree RMR 1st | RMR 2nd | last hop 2nd | all delivered | eager depth | eager max degree |\n|---|---|---|---|---|---|---|---|---|---|---|"
            );
            for p in &t.policies {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {} | {:.3} | {:.4} | {} | {} | {} | {} |",
                    p.policy,
                    p.check,
                    p.edges,
                    p.max_degree,
                    p.depth,
                    p.rmr_first,
                    p.rmr_second,
                    p.last_hop_second,
                    p.delivered_all,
                    p.eager_depth,
                    p.eager_max_degree
                );
            }
            m.push('\n');
        }
        m
    }
}

fn invariants_md(i: &Invariants) -> String {
    format!(
        "| live | asymmetric entries | dead entries | isolated | mean active | active connected (components) | eager edges | eager acyclic (extra edges) | eager spanning | eager max degree | eager depth from {} |\n|---|---|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {:.2} | {} ({}) | {} | {} ({}) | {} | {} | {} |\n\n",
        i.depth_root,
        i.live,
        i.asymmetric_entries,
        i.dead_entries,
        i.isolated,
        i.mean_active,
        i.active_connected,
        i.active_components,
        i.eager_edges,
        i.eager_acyclic,
        i.eager_extra_edges,
        i.eager_connected,
        i.eager_max_degree,
        i.eager_depth
    )
}

fn broadcasts_md(b: &[BroadcastFigures]) -> String {
    let mut m = String::from(
        "| # | origin | sent ms | eligible | missed | delivery | ≤1 round | ≤2 rounds | ≤3 rounds | copies | RMR | last hop | last delivery ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for f in b {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {:.4} | {} | {} |",
            f.index,
            f.origin,
            f.sent_ms,
            f.eligible,
            f.missed,
            f.delivery_ratio,
            f.within_rounds[0],
            f.within_rounds[1],
            f.within_rounds[2],
            f.copies,
            f.rmr,
            f.last_hop,
            f.last_delivery_ms
        );
    }
    m.push('\n');
    m
}
