//! Topology policies: which links a network should have, as petgraph
//! graphs, and the invariants each shape must keep.
//!
//! A [`Policy`] builds the graph for a population of [`NodeInfo`]s and
//! checks a graph against its rules. The live overlay's HyParView views are
//! the mesh policy; Plumtree's eager links are the spanning tree one. The
//! simulator builds every policy at scale, runs Plumtree over it and
//! reports depth and degree; tests check the invariants.

use petgraph::algo::connected_components;
use petgraph::graph::{NodeIndex, UnGraph};
use petgraph::visit::{Bfs, EdgeRef};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// How reachable a node is (from the NAT matrix: who can be invited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reach {
    /// A public address: anyone connects with its invitation alone.
    Public,
    /// An endpoint-independent NAT: reachable after an RSVP at worst.
    EasyNat,
    /// An endpoint-dependent or port-restricted NAT: only some pairs work.
    HardNat,
}

/// One node as a policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeInfo {
    /// How reachable it is.
    pub reach: Reach,
    /// How many links it offers to carry (super-peer capacity).
    pub capacity: u16,
}

/// A network shape.
pub type Graph = UnGraph<NodeInfo, ()>;

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Some nodes cannot reach others.
    Disconnected {
        /// Connected components.
        components: usize,
    },
    /// A tree has a cycle.
    Cycle,
    /// A node has more links than the policy allows.
    Degree {
        /// The node's index.
        node: usize,
        /// Its degree.
        degree: usize,
        /// The bound.
        max: usize,
    },
    /// The graph is deeper than the policy allows from its root.
    Depth {
        /// The depth.
        depth: usize,
        /// The bound.
        max: usize,
    },
    /// A leaf linked to something other than a hub or super-peer.
    LeafLink {
        /// The leaf's index.
        node: usize,
    },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::Disconnected { components } => write!(f, "not connected: {components} components"),
            Violation::Cycle => write!(f, "a tree with a cycle"),
            Violation::Degree { node, degree, max } => write!(f, "node {node} has degree {degree} > {max}"),
            Violation::Depth { depth, max } => write!(f, "depth {depth} > {max}"),
            Violation::LeafLink { node } => write!(f, "leaf {node} links to another leaf"),
        }
    }
}

/// A topology policy.
pub trait Policy {
    /// Its name in reports.
    fn name(&self) -> String;
    /// The graph this policy wants for `nodes` (indices match).
    fn build(&self, nodes: &[NodeInfo], seed: u64) -> Graph;
    /// Checks `g` against the policy's invariants.
    fn check(&self, g: &Graph) -> Result<(), Violation>;
}

/// Builds a graph of arbitrary node keys (for a member's known view).
pub fn graph_of<K: Copy + Ord>(
    nodes: impl IntoIterator<Item = K>,
    links: impl IntoIterator<Item = (K, K)>,
) -> UnGraph<K, ()> {
    let mut g = UnGraph::default();
    let mut index = std::collections::BTreeMap::new();
    for k in nodes {
        index.entry(k).or_insert_with(|| g.add_node(k));
    }
    for (a, b) in links {
        let ia = *index.entry(a).or_insert_with(|| g.add_node(a));
        let ib = *index.entry(b).or_insert_with(|| g.add_node(b));
        if ia != ib && g.find_edge(ia, ib).is_none() {
            g.add_edge(ia, ib, ());
        }
    }
    g
}

/// Whether every node reaches every other (an empty graph is connected).
pub fn is_connected<N, E>(g: &UnGraph<N, E>) -> bool {
    g.node_count() == 0 || connected_components(g) == 1
}

/// Whether `g` is a tree: connected, with one edge fewer than nodes.
pub fn is_tree<N, E>(g: &UnGraph<N, E>) -> bool {
    is_connected(g) && g.edge_count() + 1 == g.node_count().max(1)
}

/// The largest degree.
pub fn max_degree<N, E>(g: &UnGraph<N, E>) -> usize {
    g.node_indices().map(|n| g.edges(n).count()).max().unwrap_or(0)
}

/// Hops from `root` to the farthest node it reaches.
pub fn depth_from<N, E>(g: &UnGraph<N, E>, root: NodeIndex) -> usize {
    let mut depth = vec![usize::MAX; g.node_count()];
    depth[root.index()] = 0;
    let mut bfs = Bfs::new(g, root);
    let mut max = 0;
    while let Some(n) = bfs.next(g) {
        for e in g.edges(n) {
            let m = if e.source() == n { e.target() } else { e.source() };
            if depth[m.index()] == usize::MAX {
                depth[m.index()] = depth[n.index()] + 1;
                max = max.max(depth[m.index()]);
            }
        }
    }
    max
}

fn connected(g: &Graph) -> Result<(), Violation> {
    if is_connected(g) { Ok(()) } else { Err(Violation::Disconnected { components: connected_components(g) }) }
}

fn degree_at_most(g: &Graph, max: usize, which: impl Fn(&NodeInfo) -> bool) -> Result<(), Violation> {
    for n in g.node_indices() {
        let degree = g.edges(n).count();
        if which(&g[n]) && degree > max {
            return Err(Violation::Degree { node: n.index(), degree, max });
        }
    }
    Ok(())
}

fn pick(rng: &mut ChaCha8Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

fn empty(nodes: &[NodeInfo]) -> Graph {
    let mut g = Graph::with_capacity(nodes.len(), nodes.len() * 2);
    for &n in nodes {
        g.add_node(n);
    }
    g
}

fn link(g: &mut Graph, a: usize, b: usize) {
    let (a, b) = (NodeIndex::new(a), NodeIndex::new(b));
    if a != b && g.find_edge(a, b).is_none() {
        g.add_edge(a, b, ());
    }
}

/// A random mesh: every node links to `degree` others (HyParView's active
/// view is this with `degree` = 5).
#[derive(Debug, Clone, Copy)]
pub struct Mesh {
    /// Links each node starts.
    pub degree: usize,
}

impl Policy for Mesh {
    fn name(&self) -> String {
        format!("mesh (degree {})", self.degree)
    }
    fn build(&self, nodes: &[NodeInfo], seed: u64) -> Graph {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut g = empty(nodes);
        for i in 1..nodes.len() {
            // One link to an earlier node keeps it connected; the rest random.
            link(&mut g, i, pick(&mut rng, i));
        }
        let n = nodes.len();
        for i in 0..n {
            for _ in 1..self.degree.min(n.saturating_sub(1)) {
                link(&mut g, i, pick(&mut rng, n));
            }
        }
        g
    }
    fn check(&self, g: &Graph) -> Result<(), Violation> {
        connected(g)
    }
}

/// Hubs (the most capable nodes) meshed together; every other node links
/// to exactly one hub.
#[derive(Debug, Clone, Copy)]
pub struct Star {
    /// How many hubs.
    pub hubs: usize,
}

fn by_capability(nodes: &[NodeInfo]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|&i| (nodes[i].reach, std::cmp::Reverse(nodes[i].capacity), i));
    order
}

impl Policy for Star {
    fn name(&self) -> String {
        format!("star ({} hubs)", self.hubs)
    }
    fn build(&self, nodes: &[NodeInfo], _seed: u64) -> Graph {
        let mut g = empty(nodes);
        let order = by_capability(nodes);
        let hubs = &order[..self.hubs.clamp(1, nodes.len().max(1)).min(nodes.len())];
        for (k, &a) in hubs.iter().enumerate() {
            for &b in &hubs[k + 1..] {
                link(&mut g, a, b);
            }
        }
        for (k, &i) in order.iter().enumerate().skip(hubs.len()) {
            link(&mut g, i, hubs[k % hubs.len()]);
        }
        g
    }
    fn check(&self, g: &Graph) -> Result<(), Violation> {
        connected(g)?;
        // Leaves are the nodes of degree 1 beyond the hubs; a leaf links
        // only to a node of higher degree (a hub).
        let hubs = self.hubs.max(1);
        for n in g.node_indices() {
            let d = g.edges(n).count();
            if d == 1 && g.node_count() > hubs + 1 {
                let other = g.neighbors(n).next().expect("degree 1");
                if g.edges(other).count() <= 1 {
                    return Err(Violation::LeafLink { node: n.index() });
                }
            }
        }
        Ok(())
    }
}

/// A random tree with a degree bound, grown from node 0.
#[derive(Debug, Clone, Copy)]
pub struct SpanningTree {
    /// Most links per node.
    pub max_degree: usize,
}

impl Policy for SpanningTree {
    fn name(&self) -> String {
        format!("spanning tree (degree <= {})", self.max_degree)
    }
    fn build(&self, nodes: &[NodeInfo], seed: u64) -> Graph {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut g = empty(nodes);
        let mut open: Vec<usize> = vec![0];
        let mut degree = vec![0usize; nodes.len()];
        for i in 1..nodes.len() {
            let k = pick(&mut rng, open.len());
            let p = open[k];
            link(&mut g, i, p);
            degree[p] += 1;
            degree[i] += 1;
            if degree[p] >= self.max_degree {
                open.swap_remove(k);
            }
            if degree[i] < self.max_degree {
                open.push(i);
            }
        }
        g
    }
    fn check(&self, g: &Graph) -> Result<(), Violation> {
        connected(g)?;
        if !is_tree(g) {
            return Err(Violation::Cycle);
        }
        degree_at_most(g, self.max_degree, |_| true)
    }
}

/// Super-peers (public or easy-NAT nodes with capacity) form a mesh; leaves
/// (hard NATs, or nodes without capacity) attach to `uplinks` super-peers
/// with room, never to each other.
#[derive(Debug, Clone, Copy)]
pub struct Hierarchical {
    /// Links between super-peers, per super-peer.
    pub core_degree: usize,
    /// Super-peers each leaf attaches to.
    pub uplinks: usize,
}

fn is_super(n: &NodeInfo) -> bool {
    n.reach != Reach::HardNat && n.capacity > 0
}

impl Policy for Hierarchical {
    fn name(&self) -> String {
        format!("hierarchical (core degree {}, {} uplinks)", self.core_degree, self.uplinks)
    }
    fn build(&self, nodes: &[NodeInfo], seed: u64) -> Graph {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut g = empty(nodes);
        let supers: Vec<usize> = (0..nodes.len()).filter(|&i| is_super(&nodes[i])).collect();
        for (k, &s) in supers.iter().enumerate().skip(1) {
            link(&mut g, s, supers[pick(&mut rng, k)]);
            for _ in 1..self.core_degree {
                link(&mut g, s, supers[pick(&mut rng, supers.len())]);
            }
        }
        let mut load = vec![0u16; nodes.len()];
        let mut open: Vec<usize> = supers.clone();
        for i in (0..nodes.len()).filter(|&i| !is_super(&nodes[i])) {
            let mut used = Vec::new();
            for _ in 0..self.uplinks {
                let choices: Vec<usize> = (0..open.len()).filter(|&k| !used.contains(&open[k])).collect();
                if choices.is_empty() {
                    break;
                }
                let k = choices[pick(&mut rng, choices.len())];
                let s = open[k];
                link(&mut g, i, s);
                used.push(s);
                load[s] += 1;
                if load[s] >= nodes[s].capacity {
                    open.swap_remove(k);
                }
            }
        }
        g
    }
    fn check(&self, g: &Graph) -> Result<(), Violation> {
        connected(g)?;
        for n in g.node_indices() {
            if is_super(&g[n]) {
                let leaves = g.neighbors(n).filter(|&m| !is_super(&g[m])).count();
                let cap = usize::from(g[n].capacity);
                if leaves > cap {
                    return Err(Violation::Degree { node: n.index(), degree: leaves, max: cap });
                }
            } else if g.neighbors(n).any(|m| !is_super(&g[m])) {
                return Err(Violation::LeafLink { node: n.index() });
            }
        }
        Ok(())
    }
}

/// Every policy with the parameters the simulator reports.
pub fn all() -> Vec<Box<dyn Policy>> {
    vec![
        Box::new(Mesh { degree: 5 }),
        Box::new(Star { hubs: 4 }),
        Box::new(SpanningTree { max_degree: 6 }),
        Box::new(Hierarchical { core_degree: 4, uplinks: 2 }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn population(n: usize) -> Vec<NodeInfo> {
        (0..n)
            .map(|i| match i % 10 {
                0 => NodeInfo { reach: Reach::Public, capacity: 64 },
                1..=4 => NodeInfo { reach: Reach::EasyNat, capacity: 16 },
                _ => NodeInfo { reach: Reach::HardNat, capacity: 0 },
            })
            .collect()
    }

    #[test]
    fn every_policy_builds_a_graph_that_passes_its_own_check() {
        for n in [1usize, 2, 10, 500] {
            for p in all() {
                let g = p.build(&population(n), 7);
                assert_eq!(g.node_count(), n);
                assert_eq!(p.check(&g), Ok(()), "{} on {n}", p.name());
            }
        }
    }

    #[test]
    fn checks_catch_broken_invariants() {
        let pop = population(50);
        let tree = SpanningTree { max_degree: 3 };
        let mut g = tree.build(&pop, 1);
        assert!(depth_from(&g, NodeIndex::new(0)) >= 3);
        let far =
            (1..50).find(|&i| g.find_edge(NodeIndex::new(0), NodeIndex::new(i)).is_none()).expect("non-neighbour");
        g.add_edge(NodeIndex::new(0), NodeIndex::new(far), ());
        assert!(matches!(tree.check(&g), Err(Violation::Cycle)));
        let mut g = tree.build(&pop, 1);
        let e = g.edge_indices().next().expect("edge");
        g.remove_edge(e);
        assert!(matches!(tree.check(&g), Err(Violation::Disconnected { components: 2 })));
        let h = Hierarchical { core_degree: 3, uplinks: 1 };
        let mut g = h.build(&pop, 1);
        g.add_edge(NodeIndex::new(5), NodeIndex::new(6), ());
        assert!(matches!(h.check(&g), Err(Violation::LeafLink { node: 5 | 6 })));
        let mesh = Mesh { degree: 2 };
        assert!(mesh.check(&empty(&pop)).is_err());
        let mut g = tree.build(&pop, 1);
        for i in 1..6 {
            if g.find_edge(NodeIndex::new(0), NodeIndex::new(i)).is_none() {
                g.add_edge(NodeIndex::new(0), NodeIndex::new(i), ());
            }
        }
        assert!(tree.check(&g).is_err());
    }

    #[test]
    fn hierarchical_respects_capacity_and_keeps_leaves_apart() {
        let pop = population(1000);
        let g = Hierarchical { core_degree: 4, uplinks: 2 }.build(&pop, 3);
        for n in g.node_indices() {
            if !is_super(&g[n]) {
                assert_eq!(g.edges(n).count(), 2, "two uplinks");
            }
        }
        assert!(depth_from(&g, NodeIndex::new(0)) <= 12);
    }
}
