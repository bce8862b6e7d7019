//! The scenario file: its sections, their defaults and checks.

use super::*;

pub(super) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
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
    /// A share of members turn hostile.
    pub hostile: Option<Hostile>,
    /// The topology policy the members run (the mesh without it).
    pub policy: Option<PolicySection>,
}

/// The topology policy members run (`[policy]`; `--topology` on the
/// command line sets `topology` and keeps the rest).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// `mesh`, `spanning-tree`, `hierarchical` or `star`.
    pub topology: String,
    /// Share of members that can serve as super-peers (hierarchical) or
    /// are hubs (star): 0.25 and 0.01. With `[introducer]` the NAT profile
    /// decides instead: public, eim-eif and eim-adf members can serve.
    pub super_share: Option<f64>,
    /// Spanning tree: most links per member (4).
    pub max_degree: Option<usize>,
    /// Hierarchical: links a super-peer keeps to super-peers (6).
    pub core: Option<usize>,
    /// Hierarchical: super-peers each leaf links to (2).
    pub uplinks: Option<usize>,
    /// Hierarchical and star: most leaves per super-peer or hub (32, 256).
    pub leaves: Option<usize>,
}

impl PolicySection {
    /// The policy with its bounds.
    pub fn topology(&self) -> Result<convoke_overlay::Topology, String> {
        use convoke_overlay::Topology;
        Ok(match Topology::parse(&self.topology)? {
            Topology::Mesh => Topology::Mesh,
            Topology::SpanningTree { max_degree } => {
                Topology::SpanningTree { max_degree: self.max_degree.unwrap_or(max_degree) }
            }
            Topology::Hierarchical { core, uplinks, leaves } => Topology::Hierarchical {
                core: self.core.unwrap_or(core),
                uplinks: self.uplinks.unwrap_or(uplinks),
                leaves: self.leaves.unwrap_or(leaves),
            },
            Topology::Star { leaves } => Topology::Star { leaves: self.leaves.unwrap_or(leaves) },
        })
    }

    /// The share of members that can serve.
    pub fn share(&self) -> f64 {
        self.super_share.unwrap_or(if self.topology == "star" { 0.01 } else { 0.25 })
    }
}

pub(super) fn one() -> u64 {
    1
}
pub(super) fn ten_thousand() -> u32 {
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

pub(super) fn five() -> u32 {
    5
}
pub(super) fn thousand() -> u64 {
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

/// What a hostile member does (each does every one listed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Stays a good neighbour for membership (pings, shuffles, views) but
    /// drops every broadcast message it should send (GOSSIP, IHAVE,
    /// GRAFT) and every token it should relay.
    Drop,
    /// Sends its neighbours, `flood_per_s` times a second each, messages
    /// that are well formed but false: IHAVEs of ids that do not exist,
    /// GRAFTs and PRUNEs for nothing, unsolicited PONGs, NEIGHBOR_REPLYs
    /// and shuffle answers (relayed, as real ones travel) full of cards of
    /// members that do not exist, shuffles of the same, relays along
    /// routes that lead nowhere. (Malformed bytes are
    /// the fuzz targets' part; the simulator's messages are typed.)
    Garbage,
    /// Links to a random member `flood_per_s` times a second and sends it
    /// a JOIN and a high-priority NEIGHBOR (which a member must accept),
    /// trying to take the places of honest neighbours.
    Flood,
    /// Tells its neighbours a false active view (whenever its view changes,
    /// and `flood_per_s` times a second besides): members it is not linked
    /// to, so it looks like a bridge worth keeping and a route for tokens.
    FalseViews,
}

/// Hostile members: after the network settled, a share of members turn
/// hostile; honest members broadcast meanwhile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hostile {
    /// Share of members that turn hostile: 0.1.
    pub fraction: f64,
    /// What they do: all four.
    pub behaviours: Vec<Behaviour>,
    /// Garbage messages of each kind per neighbour, and flood links, per
    /// hostile member per second: 10.
    pub flood_per_s: u32,
    /// Broadcasts from random honest members: 30.
    pub broadcasts: u32,
    /// Time between them, ms: 2000.
    pub interval_ms: u64,
}

impl Default for Hostile {
    fn default() -> Self {
        Self {
            fraction: 0.1,
            behaviours: vec![Behaviour::Drop, Behaviour::Garbage, Behaviour::Flood, Behaviour::FalseViews],
            flood_per_s: 10,
            broadcasts: 30,
            interval_ms: 2000,
        }
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

pub(super) fn five_thousand() -> u64 {
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

pub(super) fn thirty_two() -> u16 {
    32
}
pub(super) fn eight() -> u16 {
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
            self.hostile.is_some(),
        ];
        if let Some(p) = &self.policy {
            let t = p.topology().map_err(|e| invalid("policy.topology", e))?;
            if !(p.share() > 0.0 && p.share() <= 1.0) {
                return Err(invalid("policy.super_share", "must be in (0, 1]"));
            }
            let bounds = [p.max_degree, p.core, p.uplinks, p.leaves];
            if bounds.iter().flatten().any(|&b| !(1..=4096).contains(&b)) {
                return Err(invalid("policy", "bounds must be between 1 and 4096"));
            }
            if self.topology.is_some() && t != convoke_overlay::Topology::Mesh {
                return Err(invalid("policy", "[topology] builds graphs, not a live overlay: no [policy]"));
            }
        }
        if sections.iter().filter(|&&s| s).count() != 1 {
            return Err(invalid(
                "measurement",
                "exactly one of [steady], [failure], [membership], [churn], [partition], [introducer], [topology], [hostile] must be present",
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
        if let Some(h) = &self.hostile {
            if !(h.fraction > 0.0 && h.fraction <= 0.5) {
                return Err(invalid("hostile.fraction", format!("must be in (0, 0.5], got {}", h.fraction)));
            }
            if h.behaviours.is_empty() {
                return Err(invalid(
                    "hostile.behaviours",
                    "must name at least one of drop, garbage, flood, false-views",
                ));
            }
            if !(1..=1_000).contains(&h.flood_per_s) {
                return Err(invalid("hostile.flood_per_s", "must be between 1 and 1000"));
            }
            if !(1..=10_000).contains(&h.broadcasts) {
                return Err(invalid("hostile.broadcasts", "must be between 1 and 10000"));
            }
            if h.interval_ms == 0 {
                return Err(invalid("hostile.interval_ms", "must be > 0"));
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
