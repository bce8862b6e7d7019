//! Running a scenario: growing the network, the measurement it asks for, and the figures it reports.

use super::*;

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

pub(super) fn aggregate(b: &[BroadcastFigures], n: u64) -> Aggregate {
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
    /// Components of the survivors' active graph, per second after the
    /// crash (isolated survivors count one each).
    pub components_per_s: Vec<u64>,
    /// Time from the crash until the survivors' active graph is one
    /// component, ms (sampled every second; `None`: not within the run).
    pub one_component_after_ms: Option<u64>,
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
    /// or closed the link, so the message was dropped without a refusal),
    /// `superseded` (the asker gave up on it and sent another to the same
    /// peer before it could arrive).
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
    /// Hostile members.
    pub hostile: Option<HostileFigures>,
    /// The topology policy's shape after settling (with `[policy]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_settled: Option<ShapeFigures>,
    /// ... and at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_end: Option<ShapeFigures>,
}

pub(super) fn base_config() -> Config {
    Config { announce_joins: false, ..Config::default() }
}

/// Runs `s` with `seed`.
pub fn run(s: &OverlayScenario, seed: u64) -> OverlayReport {
    let mut cfg = base_config();
    let mut sim = OverlaySim::new(seed, &s.network);
    if let Some(p) = &s.policy {
        // Validated when loaded.
        cfg.topology = p.topology().unwrap_or_default();
        if cfg.topology != convoke_overlay::Topology::Mesh {
            sim.super_share = Some(p.share());
        }
    }
    let round = cfg.round;
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
        hostile: None,
        policy_settled: None,
        policy_end: None,
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
    if sim.super_share.is_some() {
        report.policy_settled = Some(sim.shape_figures(cfg.topology));
    }
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
        let (mut comps, mut one) = (Vec::new(), None);
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
                let c = sim.live_components();
                if c == 1 && one.is_none() {
                    one = Some(t - at);
                }
                comps.push(c);
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
            components_per_s: comps,
            one_component_after_ms: one,
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
    if let Some(h) = &s.hostile {
        let f = hostile::run_hostile(h, &mut sim, round);
        report.aggregate = Some(aggregate(&f.broadcasts, n));
        report.hostile = Some(f);
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
    if sim.super_share.is_some() {
        report.policy_end = Some(sim.shape_figures(cfg.topology));
    }
    report.sim_ms = sim.now;
    report.messages = sim.messages;
    report.events = sim.events;
    report
}

impl OverlaySim {
    pub(super) fn invariants_dead_entries(&self) -> u64 {
        let mut dead = 0;
        for i in 0..self.nodes.len() {
            if self.alive[i] {
                dead += self.nodes[i].active().filter(|&p| !self.alive[p as usize]).count() as u64;
            }
        }
        dead
    }

    /// Components of the live members' active graph.
    pub(super) fn live_components(&self) -> u64 {
        let live = self.live();
        let mut index = vec![u32::MAX; self.nodes.len()];
        for (k, &i) in live.iter().enumerate() {
            index[i as usize] = k as u32;
        }
        let mut edges = Vec::new();
        for &i in &live {
            for p in self.nodes[i as usize].active() {
                if self.alive[p as usize] && i < p {
                    edges.push((index[i as usize], index[p as usize]));
                }
            }
        }
        measure::components(live.len(), &edges) as u64
    }

    pub(super) fn random_live_except(&mut self, x: u32) -> u32 {
        loop {
            let c = self.random_live();
            if c != x {
                return c;
            }
        }
    }
}

pub(super) fn intro_figures(nat: &NatModel, broadcasts: Vec<BroadcastFigures>) -> IntroFigures {
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

pub(super) fn run_topology(t: &Topology, n: u32, seed: u64, sim: &mut OverlaySim) -> TopologyFigures {
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
pub(super) fn plumtree_over(
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
