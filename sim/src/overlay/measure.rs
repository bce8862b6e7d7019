//! Measuring: broadcasts' reach and hops, the overlay's invariants, components.

use super::*;

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

/// The live network's shape under a topology policy.
#[derive(Debug, Clone, Serialize)]
pub struct ShapeFigures {
    /// The policy.
    pub topology: String,
    /// Live members by role.
    pub supers: u64,
    /// Leaves.
    pub leaves: u64,
    /// Members (mesh, spanning tree).
    pub members: u64,
    /// Leaves that became super-peers for want of one (all time).
    pub promoted: u64,
    /// The bound on a super-peer's (or hub's) leaves; on anyone's links
    /// under a spanning tree.
    pub bound: u64,
    /// Most leaves linked to one super-peer.
    pub max_super_leaves: u64,
    /// Mean leaves per super-peer.
    pub mean_super_leaves: f64,
    /// Most links (active view) at one super-peer.
    pub max_super_degree: u64,
    /// Most links at one member of any role.
    pub max_degree: u64,
    /// Most broadcast-tree (eager) links at one member.
    pub max_eager_degree: u64,
    /// Mean links of a super-peer and of a leaf.
    pub mean_super_degree: f64,
    /// ...
    pub mean_leaf_degree: f64,
    /// Links between two leaves (the policy allows none).
    pub leaf_links: u64,
    /// Live leaves with no super-peer link.
    pub leaves_without_uplink: u64,
    /// Members whose own check finds a violation now.
    pub members_violating: u64,
    /// Violations members reported (all time, each when it started).
    pub violation_events: u64,
    /// The policy's invariant check over the live links: `ok` or what broke.
    pub check: String,
}

/// Live overlay invariants.
#[derive(Debug, Clone, Serialize)]
pub struct Invariants {
    /// Live nodes.
    pub live: u64,
    /// Active-view entries the other side does not hold back (and is not
    /// in the middle of linking or unlinking).
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

pub(super) fn components(n: usize, edges: &[(u32, u32)]) -> usize {
    let mut parent: Vec<usize> = (0..n).collect();
    pub(super) fn find(p: &mut [usize], mut x: usize) -> usize {
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
    pub(super) fn invariants(&self, root: u32) -> Invariants {
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
                // One-sided, and not because a NEIGHBOR reply or a
                // DISCONNECT is still on its way.
                let other = &self.nodes[p as usize];
                if !other.is_active(i) && !other.in_transition(i) {
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

    /// The live network's shape under `t` (see [`ShapeFigures`]).
    pub(super) fn shape_figures(&self, t: convoke_overlay::Topology) -> ShapeFigures {
        use convoke_overlay::Topology;
        let live = self.live();
        let role = |i: u32| self.nodes[i as usize].shape().role;
        let mut f = ShapeFigures {
            topology: t.kind().as_str().to_owned(),
            supers: 0,
            leaves: 0,
            members: 0,
            promoted: 0,
            bound: match t {
                Topology::Mesh => 5,
                Topology::SpanningTree { max_degree } => max_degree as u64,
                Topology::Hierarchical { leaves, .. } | Topology::Star { leaves } => leaves as u64,
            },
            max_super_leaves: 0,
            mean_super_leaves: 0.0,
            max_super_degree: 0,
            max_degree: 0,
            max_eager_degree: 0,
            mean_super_degree: 0.0,
            mean_leaf_degree: 0.0,
            leaf_links: 0,
            leaves_without_uplink: 0,
            members_violating: 0,
            violation_events: 0,
            check: String::new(),
        };
        let mut tally = crate::shape_tally::ShapeTally::default();
        let mut links = Vec::new();
        for o in &self.nodes {
            f.promoted += o.stats().promotions;
            f.violation_events += o.stats().violations;
        }
        for &i in &live {
            let o = &self.nodes[i as usize];
            let peers: Vec<u32> = o.active().filter(|&p| self.alive[p as usize]).collect();
            f.max_eager_degree = f.max_eager_degree.max(o.plumtree().eager().len() as u64);
            if !o.violations().is_empty() {
                f.members_violating += 1;
            }
            tally.add(role(i), peers.iter().map(|&p| Some(role(p))));
            links.extend(peers.iter().filter(|&&p| i < p).map(|&p| (i, p)));
        }
        f.supers = tally.supers;
        f.leaves = tally.leaves;
        f.members = tally.members;
        f.max_super_leaves = tally.max_super_leaves;
        f.max_super_degree = tally.max_super_degree;
        f.max_degree = tally.max_degree;
        f.leaf_links = tally.leaf_links();
        f.leaves_without_uplink = tally.leaves_without_uplink;
        f.mean_super_leaves = tally.super_leaves as f64 / f.supers.max(1) as f64;
        f.mean_super_degree = tally.super_links as f64 / f.supers.max(1) as f64;
        f.mean_leaf_degree = tally.leaf_degrees as f64 / f.leaves.max(1) as f64;
        let g = topology::graph_of(live.iter().copied(), links);
        let check = convoke_overlay::check_shape(t, &g, |&i| Some(role(i)));
        f.check = match check {
            Ok(()) => "ok".to_owned(),
            Err(v) => v.to_string(),
        };
        f
    }

    /// Figures of broadcast `k`: eligible are nodes joined `grace` ms before
    /// its send and alive until `until`.
    pub(super) fn figures(&self, k: usize, grace: u64, until: u64, round: u64) -> BroadcastFigures {
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
            if self.joined_at[i] + grace > t.sent
                || self.died_at[i] <= until
                || i as u32 == t.origin
                || self.is_hostile(i as u32)
            {
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
