//! Scenarios: TOML files under `sim/scenarios/`. Every field is documented
//! on its struct; unknown fields are refused, and a bad value is reported
//! with the field's path (`joins.profiles[3]: unknown profile "x"`).
//!
//! ```toml
//! name = "example"
//! seed = 1
//! duration_s = 600
//!
//! [population]              # for pattern = "random-earlier"
//! nodes = 1000
//! mix = { public = 0.1, port-restricted = 0.6, symmetric = 0.3 }
//!
//! [joins]
//! pattern = "random-earlier"
//! interval_s = 0.5
//! ```
//!
//! NAT profiles are named. Built in: `public` (no NAT); the nine RFC 4787
//! combinations `eim-eif` … `apdm-apdf` (ports preserved); the classic names
//! `full-cone` (eim-eif), `restricted-cone` (eim-adf), `port-restricted`
//! (eim-apdf) and `symmetric` (apdm-apdf, random ports); and
//! `symmetric-cgnat` (symmetric behind a carrier-grade NAT). A scenario may
//! add its own under `[profiles.NAME]`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::nat::{Behaviour, Filtering, Mapping, PortAssignment};

/// A scenario was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or a field is unknown or of the wrong type (the message
    /// names it and its line).
    #[error("{0}")]
    Parse(String),
    /// A field's value is out of range or names something unknown.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field's path.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid { field: field.into(), reason: reason.into() }
}

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports.
    pub name: String,
    /// What it studies.
    #[serde(default)]
    pub description: String,
    /// Seed of the world's RNG (overridden by `--seed`).
    #[serde(default = "one")]
    pub seed: u64,
    /// Simulated time to run, seconds.
    pub duration_s: f64,
    /// Links and STUN servers.
    #[serde(default)]
    pub network: Network,
    /// The out-of-band channel tokens travel on.
    #[serde(default)]
    pub oob: Oob,
    /// Extra or overriding NAT profiles, by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    /// The carrier-grade NAT that `cgnat = true` profiles sit behind.
    #[serde(default)]
    pub cgnat: Cgnat,
    /// The node population (pattern `random-earlier`).
    #[serde(default)]
    pub population: Option<Population>,
    /// Who invites whom, when.
    pub joins: Joins,
    /// Nodes crashing at once.
    #[serde(default)]
    pub failures: Vec<Failure>,
    /// Network partitions and their healing.
    #[serde(default)]
    pub partitions: Vec<Partition>,
    /// Nodes leaving after a random lifetime.
    #[serde(default)]
    pub churn: Option<Churn>,
    /// Broadcasts by random members (pattern `network`).
    #[serde(default)]
    pub broadcasts: Option<Broadcasts>,
    /// Members moving to another network mid-run (pattern `network`).
    #[serde(default)]
    pub moves: Vec<Move>,
    /// The topology policy the members run (pattern `network`): `mesh`
    /// (the default), `spanning-tree`, `hierarchical` or `star`. Members
    /// on a public address, an endpoint-independent NAT (`eim-eif`,
    /// `eim-adf`) or a mapped port can serve as super-peers (hubs).
    #[serde(default)]
    pub topology: Option<String>,
    /// Every member's own leaf capacity as a super-peer (hub), below the
    /// policy's bound, as `convoke up --max-leaves` sets it (pattern
    /// `network`; default: the policy's bound).
    #[serde(default)]
    pub max_leaves: Option<usize>,
    /// Whether members choose super-peers (hubs) by their standing, time
    /// in the network and leaf capacity (pattern `network`; default true,
    /// as `convoke up` does): false to measure what the standing buys.
    #[serde(default = "yes")]
    pub prefer_standing: bool,
    /// Time in the network, seconds, after which a member's tenure step is
    /// 1, 2 and 3 (pattern `network`; default 600, 3,600 and 86,400 as on
    /// a live node, which a run of minutes never reaches).
    #[serde(default)]
    pub tenure_steps_s: Option<[f64; 3]>,
}

/// A share of the live members move at once, as a laptop does when it
/// changes Wi-Fi: the node keeps its identity, its member state and its
/// port, and gets another address. Its old sessions die (packets to the old
/// address go nowhere); the member finds out through consent and its
/// overlay, and links again from its new place.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Move {
    /// When, seconds.
    pub at_s: f64,
    /// Share of the live members that move, (0, 1].
    pub fraction: f64,
    /// Where they go: `new-network` (default), behind a new router of
    /// `profile`, or `renumber`, a new address behind the same router.
    #[serde(default)]
    pub to: MoveTo,
    /// `new-network`: the profile of the network moved to; drawn from the
    /// population's mix when absent.
    #[serde(default)]
    pub profile: Option<String>,
}

/// Where a moving member goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MoveTo {
    /// A new site: a new home router (or none, for `public`), with its own
    /// external address, its own NAT type and its link latency.
    #[default]
    NewNetwork,
    /// The same site, a new address on it (a DHCP lease renumbered; for a
    /// public host, a new public address). A router's port mapping for the
    /// old address does not follow.
    Renumber,
}

/// Broadcasts during a whole-system run: `count` of them, `interval_s`
/// apart from `start_s`, each from a random live member with a neighbour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broadcasts {
    /// When the first is sent, seconds.
    pub start_s: f64,
    /// Seconds between two: 10.
    #[serde(default = "ten_seconds")]
    pub interval_s: f64,
    /// How many: 1 to 1,000.
    pub count: u32,
}

fn ten_seconds() -> f64 {
    10.0
}

fn one() -> u64 {
    1
}

/// Link latencies (one way, uniform in `[lo, hi]` per link, fixed for the
/// link's life), per-packet jitter and loss.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// A home LAN link (host to its router), ms: [0.5, 2].
    pub lan_latency_ms: [f64; 2],
    /// An access link to the internet (a public host's, a router's), ms:
    /// [5, 30].
    pub access_latency_ms: [f64; 2],
    /// A carrier-grade NAT's link to the internet, ms: [2, 10].
    pub cgnat_latency_ms: [f64; 2],
    /// Extra delay per packet per link, uniform in [0, jitter], ms: 1.
    pub jitter_ms: f64,
    /// Loss probability per packet per link: 0.
    pub loss: f64,
    /// Public STUN servers every node queries at start: 2 (two addresses
    /// let a node classify its NAT; one cannot).
    pub stun_servers: u32,
    /// Router hops between two sites' edges, each taking one from a
    /// packet's TTL (a NAT is one more): 8.
    pub internet_hops: u32,
    /// The IP TTL of a hard invitee's birthday pool packets (the engine's
    /// `pool_ttl`; 0: the default TTL): 5.
    pub pool_ttl: u8,
    /// Whether the first STUN server also relays (`convoke relay` beside
    /// it) and every invitation names it: `off` (the default), `limited`
    /// (the relay's default caps: 16 circuits, 4 a peer, 2 minutes and
    /// 128 KiB each) or `unlimited`.
    pub relay: RelayMode,
}

/// A scenario's relay (see [`Network::relay`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// No relay.
    #[default]
    Off,
    /// The relay's default caps.
    Limited,
    /// No caps on bytes, rate or lifetime.
    Unlimited,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            lan_latency_ms: [0.5, 2.0],
            access_latency_ms: [5.0, 30.0],
            cgnat_latency_ms: [2.0, 10.0],
            jitter_ms: 1.0,
            loss: 0.0,
            stun_servers: 2,
            internet_hops: 8,
            pool_ttl: 5,
            relay: RelayMode::Off,
        }
    }
}

/// The out-of-band channel: a person copying a token into chat, email or a
/// QR code and the other pasting it. Delays uniform in `[lo, hi]` seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Oob {
    /// Invitation, inviter to invitee: [5, 60] s.
    pub invite_delay_s: [f64; 2],
    /// RSVP, invitee back to inviter: [10, 120] s.
    pub rsvp_delay_s: [f64; 2],
}

impl Default for Oob {
    fn default() -> Self {
        Self { invite_delay_s: [5.0, 60.0], rsvp_delay_s: [10.0, 120.0] }
    }
}

/// A site's NAT.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// No NAT of its own: the host has a public address, or with `cgnat`
    /// a carrier address right behind the carrier-grade NAT (a phone on a
    /// mobile network).
    #[serde(default)]
    pub public: bool,
    /// Mapping behaviour (required unless public).
    pub mapping: Option<Mapping>,
    /// Filtering behaviour (required unless public).
    pub filtering: Option<Filtering>,
    /// Port assignment: preserving.
    #[serde(default = "preserving")]
    pub ports: PortAssignment,
    /// Mapping timeout, seconds: 120 (RFC 4787 REQ-5's floor).
    #[serde(default = "two_minutes")]
    pub timeout_s: f64,
    /// Hairpinning (RFC 4787 REQ-9): true.
    #[serde(default = "yes")]
    pub hairpin: bool,
    /// Behind the scenario's carrier-grade NAT.
    #[serde(default)]
    pub cgnat: bool,
    /// Chance (0 to 1) that the router grants a port mapping (PCP,
    /// NAT-PMP or UPnP IGD): a node behind it then offers the mapped
    /// address, which anyone reaches. 0 by default; no effect behind a
    /// carrier-grade NAT (the mapped address would be the carrier's
    /// private one) or without a NAT.
    #[serde(default)]
    pub port_mapping: f64,
    /// Most mappings the NAT's table holds (a cheap home router's
    /// conntrack table: a few thousand); none by default.
    #[serde(default)]
    pub max_mappings: Option<u32>,
    /// The router takes packets its filter refuses to itself, with no
    /// firewall drop (see [`Behaviour::local_conntrack`]): false.
    #[serde(default)]
    pub local_conntrack: bool,
}

fn preserving() -> PortAssignment {
    PortAssignment::Preserving
}
fn two_minutes() -> f64 {
    120.0
}
fn yes() -> bool {
    true
}

impl Profile {
    /// No NAT of its own: public, or right behind the carrier's with `cgnat`.
    fn no_nat(cgnat: bool) -> Self {
        Self {
            public: true,
            mapping: None,
            filtering: None,
            ports: PortAssignment::Preserving,
            timeout_s: 120.0,
            hairpin: true,
            cgnat,
            port_mapping: 0.0,
            max_mappings: None,
            local_conntrack: false,
        }
    }

    fn nat(mapping: Mapping, filtering: Filtering, ports: PortAssignment, cgnat: bool) -> Self {
        Self {
            public: false,
            mapping: Some(mapping),
            filtering: Some(filtering),
            ports,
            timeout_s: 120.0,
            hairpin: true,
            cgnat,
            port_mapping: 0.0,
            max_mappings: None,
            local_conntrack: false,
        }
    }

    /// The NATs between a host of this profile and the internet, from the
    /// host outward: its own, then `cgnat` if it sits behind one (empty for
    /// a public host).
    pub fn nat_chain(&self, cgnat: &Cgnat) -> Vec<Behaviour> {
        let mut chain: Vec<Behaviour> = self.behaviour().into_iter().collect();
        if self.cgnat {
            chain.push(cgnat.behaviour());
        }
        chain
    }

    /// The NAT behaviour, `None` for a public host.
    pub fn behaviour(&self) -> Option<Behaviour> {
        if self.public {
            return None;
        }
        Some(Behaviour {
            mapping: self.mapping?,
            filtering: self.filtering?,
            ports: self.ports,
            timeout_ns: (self.timeout_s * 1e9) as u64,
            hairpin: self.hairpin,
            max_mappings: self.max_mappings,
            local_conntrack: self.local_conntrack,
        })
    }
}

/// The carrier-grade NAT (RFC 6888: endpoint-independent mapping and
/// hairpinning required; filtering and port choice are the operator's).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cgnat {
    /// Mapping: eim.
    pub mapping: Mapping,
    /// Filtering: apdf.
    pub filtering: Filtering,
    /// Port assignment: random.
    pub ports: PortAssignment,
    /// Mapping timeout, seconds: 120.
    pub timeout_s: f64,
    /// Homes sharing one carrier-grade NAT (population scenarios; the NAT
    /// matrix gives every site its own): 64.
    pub homes: u32,
}

impl Default for Cgnat {
    fn default() -> Self {
        Self {
            mapping: Mapping::Eim,
            filtering: Filtering::Apdf,
            ports: PortAssignment::Random,
            timeout_s: 120.0,
            homes: 64,
        }
    }
}

impl Cgnat {
    /// Its behaviour.
    pub fn behaviour(&self) -> Behaviour {
        Behaviour {
            mapping: self.mapping,
            filtering: self.filtering,
            ports: self.ports,
            timeout_ns: (self.timeout_s * 1e9) as u64,
            hairpin: true,
            max_mappings: None,
            local_conntrack: false,
        }
    }
}

/// Nodes and their NAT mix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Population {
    /// How many nodes join (besides the first, which only invites).
    pub nodes: u32,
    /// Profile name → weight (normalised).
    pub mix: BTreeMap<String, f64>,
    /// The first node's profile (the one that starts the network); drawn
    /// from the mix when absent.
    #[serde(default)]
    pub first: Option<String>,
}

/// Join patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// Every ordered pair of `joins.profiles`, inviter × invitee, each pair
    /// on its own two sites, `repeat` times.
    Matrix,
    /// Node k joins by an invitation from a uniformly random earlier node.
    RandomEarlier,
    /// The whole system: every node is a network member (the member engine:
    /// host, overlay and the glue between them). Node k joins the one
    /// network with the card of a uniformly random earlier member, which
    /// travels out of band; from then on members introduce it, relaying
    /// RSVPs through introducers with nobody in the loop.
    Network,
}

/// Who invites whom, when.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Joins {
    /// The pattern.
    pub pattern: Pattern,
    /// Seconds between the starts of two joins: 1.
    #[serde(default = "one_second")]
    pub interval_s: f64,
    /// When the first join starts, seconds: 1.
    #[serde(default = "one_second")]
    pub start_s: f64,
    /// Matrix: the profiles, in row and column order.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Matrix: runs per cell: 1.
    #[serde(default = "one_u32")]
    pub repeat: u32,
    /// The invitations ask for an RSVP from the start (`--rsvp-required`).
    #[serde(default)]
    pub rsvp_required: bool,
}

fn one_second() -> f64 {
    1.0
}
fn one_u32() -> u32 {
    1
}

/// A share of the nodes crash at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// When, seconds.
    pub at_s: f64,
    /// Share of the live nodes, (0, 1].
    pub fraction: f64,
}

/// The network splits in two: packets between the sides are lost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// When it starts, seconds.
    pub at_s: f64,
    /// When it heals, seconds.
    pub heal_s: f64,
    /// Share of the nodes on the far side (STUN servers stay near).
    pub fraction: f64,
}

/// Nodes leave (crash) after an exponentially distributed lifetime counted
/// from their join.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Mean lifetime, seconds.
    pub mean_lifetime_s: f64,
    /// Share of the nodes that never leave (servers among laptops), drawn
    /// as each gets in; default 0. With a stable share, a member's time in
    /// the network says something of how long it will stay, as in
    /// measured peer-to-peer networks; exponential lifetimes alone say
    /// nothing.
    #[serde(default)]
    pub stable: f64,
}

/// The built-in profiles.
pub fn builtin_profiles() -> BTreeMap<String, Profile> {
    use Filtering::*;
    use Mapping::*;
    let mut m = BTreeMap::new();
    m.insert("public".to_owned(), Profile::no_nat(false));
    for (mn, mv) in [("eim", Eim), ("adm", Adm), ("apdm", Apdm)] {
        for (fname, fv) in [("eif", Eif), ("adf", Adf), ("apdf", Apdf)] {
            m.insert(format!("{mn}-{fname}"), Profile::nat(mv, fv, PortAssignment::Preserving, false));
        }
    }
    m.insert("full-cone".into(), Profile::nat(Eim, Eif, PortAssignment::Preserving, false));
    m.insert("restricted-cone".into(), Profile::nat(Eim, Adf, PortAssignment::Preserving, false));
    m.insert("port-restricted".into(), Profile::nat(Eim, Apdf, PortAssignment::Preserving, false));
    m.insert("symmetric".into(), Profile::nat(Apdm, Apdf, PortAssignment::Random, false));
    m.insert("symmetric-cgnat".into(), Profile::nat(Apdm, Apdf, PortAssignment::Random, true));
    // A phone on a mobile network: no NAT of its own, the carrier's only.
    m.insert("mobile".into(), Profile::no_nat(true));
    // A symmetric NAT that hands out ports in order: predictable.
    m.insert("symmetric-sequential".into(), Profile::nat(Apdm, Apdf, PortAssignment::Sequential, false));
    m
}

fn check_range(field: &str, r: [f64; 2], max: f64) -> Result<(), ScenarioError> {
    if !(r[0].is_finite() && r[1].is_finite() && 0.0 <= r[0] && r[0] <= r[1] && r[1] <= max) {
        return Err(invalid(field, format!("must be [lo, hi] with 0 <= lo <= hi <= {max}, got {r:?}")));
    }
    Ok(())
}

fn check_fraction(field: &str, f: f64) -> Result<(), ScenarioError> {
    if !(f > 0.0 && f <= 1.0) {
        return Err(invalid(field, format!("must be in (0, 1], got {f}")));
    }
    Ok(())
}

/// Most nodes a scenario may ask for.
pub const MAX_NODES: u32 = 2_000_000;

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScenarioError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text)
    }

    /// Parses and validates scenario text.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// The NATs between a host of profile `name` and the internet, from the
    /// host outward (empty for a public host or an unknown name).
    pub fn nat_chain(&self, name: &str) -> Vec<Behaviour> {
        self.all_profiles().get(name).map_or_else(Vec::new, |p| p.nat_chain(&self.cgnat))
    }

    /// All profiles: the built-ins, then the scenario's.
    pub fn all_profiles(&self) -> BTreeMap<String, Profile> {
        let mut m = builtin_profiles();
        m.extend(self.profiles.clone());
        m
    }

    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        let policy = match &self.topology {
            Some(t) => convoke_overlay::Topology::parse(t).map_err(|e| invalid("topology", e))?,
            None => convoke_overlay::Topology::Mesh,
        };
        if let Some(n) = self.max_leaves {
            policy.own_max_leaves(n).map_err(|e| invalid("max_leaves", e))?;
        }
        if !(self.duration_s.is_finite() && self.duration_s > 0.0 && self.duration_s <= 30.0 * 86400.0) {
            return Err(invalid("duration_s", "must be > 0 and at most 30 days"));
        }
        let n = &self.network;
        check_range("network.lan_latency_ms", n.lan_latency_ms, 10_000.0)?;
        check_range("network.access_latency_ms", n.access_latency_ms, 10_000.0)?;
        check_range("network.cgnat_latency_ms", n.cgnat_latency_ms, 10_000.0)?;
        if !(n.jitter_ms.is_finite() && (0.0..=10_000.0).contains(&n.jitter_ms)) {
            return Err(invalid("network.jitter_ms", "must be between 0 and 10000"));
        }
        if !(0.0..1.0).contains(&n.loss) {
            return Err(invalid("network.loss", format!("must be in [0, 1), got {}", n.loss)));
        }
        if !(1..=16).contains(&n.stun_servers) {
            return Err(invalid("network.stun_servers", "must be between 1 and 16"));
        }
        check_range("oob.invite_delay_s", self.oob.invite_delay_s, 86_400.0)?;
        check_range("oob.rsvp_delay_s", self.oob.rsvp_delay_s, 86_400.0)?;
        for (name, p) in &self.profiles {
            if !p.public && (p.mapping.is_none() || p.filtering.is_none()) {
                return Err(invalid(
                    format!("profiles.{name}"),
                    "needs `mapping` and `filtering` (or `public = true`)",
                ));
            }
            if !(p.timeout_s.is_finite() && p.timeout_s >= 1.0) {
                return Err(invalid(format!("profiles.{name}.timeout_s"), "must be at least 1 second"));
            }
            if p.max_mappings == Some(0) {
                return Err(invalid(format!("profiles.{name}.max_mappings"), "must be at least 1"));
            }
            if !(0.0..=1.0).contains(&p.port_mapping) {
                return Err(invalid(format!("profiles.{name}.port_mapping"), "must be a chance in [0, 1]"));
            }
        }
        if !(self.cgnat.timeout_s.is_finite() && self.cgnat.timeout_s >= 1.0) {
            return Err(invalid("cgnat.timeout_s", "must be at least 1 second"));
        }
        if self.cgnat.homes == 0 {
            return Err(invalid("cgnat.homes", "must be at least 1"));
        }
        let known = self.all_profiles();
        let j = &self.joins;
        if !(j.interval_s.is_finite() && j.interval_s >= 0.0) {
            return Err(invalid("joins.interval_s", "must be >= 0"));
        }
        if !(j.start_s.is_finite() && j.start_s >= 0.0) {
            return Err(invalid("joins.start_s", "must be >= 0"));
        }
        for (i, p) in j.profiles.iter().enumerate() {
            if !known.contains_key(p) {
                return Err(invalid(format!("joins.profiles[{i}]"), format!("unknown profile \"{p}\"")));
            }
        }
        match j.pattern {
            Pattern::Matrix => {
                if j.profiles.is_empty() {
                    return Err(invalid("joins.profiles", "the matrix pattern needs at least one profile"));
                }
                if !(1..=1000).contains(&j.repeat) {
                    return Err(invalid("joins.repeat", "must be between 1 and 1000"));
                }
                let pairs = u64::from(j.repeat) * (j.profiles.len() as u64).pow(2);
                if pairs * 2 > u64::from(MAX_NODES) {
                    return Err(invalid("joins", format!("{pairs} pairs are more than this simulator runs")));
                }
            }
            Pattern::RandomEarlier | Pattern::Network => {
                let Some(p) = &self.population else {
                    return Err(invalid("population", "the random-earlier and network patterns need a [population]"));
                };
                if !(1..=MAX_NODES).contains(&p.nodes) {
                    return Err(invalid("population.nodes", format!("must be between 1 and {MAX_NODES}")));
                }
                if p.mix.is_empty() {
                    return Err(invalid("population.mix", "must name at least one profile"));
                }
                for (name, w) in &p.mix {
                    if !known.contains_key(name) {
                        return Err(invalid(format!("population.mix.{name}"), "unknown profile"));
                    }
                    if !(w.is_finite() && *w >= 0.0) {
                        return Err(invalid(format!("population.mix.{name}"), "weight must be >= 0"));
                    }
                }
                if let Some(f) = &p.first
                    && !known.contains_key(f)
                {
                    return Err(invalid("population.first", format!("unknown profile \"{f}\"")));
                }
                if p.mix.values().sum::<f64>() <= 0.0 {
                    return Err(invalid("population.mix", "weights must not all be zero"));
                }
            }
        }
        if let Some(b) = &self.broadcasts {
            if j.pattern != Pattern::Network {
                return Err(invalid("broadcasts", "only the network pattern has members to broadcast"));
            }
            if !(b.start_s.is_finite() && b.start_s >= 0.0) {
                return Err(invalid("broadcasts.start_s", "must be >= 0"));
            }
            if !(b.interval_s.is_finite() && b.interval_s > 0.0) {
                return Err(invalid("broadcasts.interval_s", "must be > 0"));
            }
            if !(1..=1000).contains(&b.count) {
                return Err(invalid("broadcasts.count", "must be between 1 and 1000"));
            }
        }
        for (i, f) in self.failures.iter().enumerate() {
            check_fraction(&format!("failures[{i}].fraction"), f.fraction)?;
            if !(f.at_s.is_finite() && f.at_s >= 0.0) {
                return Err(invalid(format!("failures[{i}].at_s"), "must be >= 0"));
            }
        }
        for (i, p) in self.partitions.iter().enumerate() {
            check_fraction(&format!("partitions[{i}].fraction"), p.fraction)?;
            if !(p.at_s.is_finite() && p.at_s >= 0.0 && p.heal_s.is_finite() && p.heal_s > p.at_s) {
                return Err(invalid(format!("partitions[{i}]"), "needs 0 <= at_s < heal_s"));
            }
        }
        for (i, m) in self.moves.iter().enumerate() {
            if j.pattern != Pattern::Network {
                return Err(invalid("moves", "only the network pattern has members to move"));
            }
            check_fraction(&format!("moves[{i}].fraction"), m.fraction)?;
            if !(m.at_s.is_finite() && m.at_s >= 0.0) {
                return Err(invalid(format!("moves[{i}].at_s"), "must be >= 0"));
            }
            if let Some(p) = &m.profile {
                if m.to == MoveTo::Renumber {
                    return Err(invalid(format!("moves[{i}].profile"), "a renumbered member stays behind its router"));
                }
                if !known.contains_key(p) {
                    return Err(invalid(format!("moves[{i}].profile"), format!("unknown profile \"{p}\"")));
                }
            }
        }
        if let Some(c) = &self.churn
            && !(c.mean_lifetime_s.is_finite() && c.mean_lifetime_s > 0.0)
        {
            return Err(invalid("churn.mean_lifetime_s", "must be > 0"));
        }
        if let Some(c) = &self.churn
            && !(c.stable.is_finite() && (0.0..=1.0).contains(&c.stable))
        {
            return Err(invalid("churn.stable", format!("must be in [0, 1], got {}", c.stable)));
        }
        if let Some(t) = self.tenure_steps_s
            && !(t.iter().all(|x| x.is_finite() && *x > 0.0) && t[0] < t[1] && t[1] < t[2])
        {
            return Err(invalid("tenure_steps_s", format!("must be three increasing times > 0, got {t:?}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name = \"t\"\nduration_s = 10\n[joins]\npattern = \"matrix\"\nprofiles = [\"public\"]\n";

    #[test]
    fn a_minimal_scenario_parses_with_defaults() {
        let s = Scenario::parse(MINIMAL).expect("valid");
        assert_eq!(s.seed, 1);
        assert_eq!(s.network.stun_servers, 2);
        assert_eq!(s.joins.repeat, 1);
        assert!(s.all_profiles()["symmetric-cgnat"].cgnat);
    }

    fn error(text: &str) -> String {
        Scenario::parse(text).expect_err("must be refused").to_string()
    }

    #[test]
    fn errors_name_the_field() {
        assert!(error(&format!("{MINIMAL}bogus = 1\n")).contains("bogus"), "unknown top-level field");
        let e = error(&MINIMAL.replace("[\"public\"]", "[\"public\", \"nope\"]"));
        assert!(e.contains("joins.profiles[1]") && e.contains("nope"), "{e}");
        let e = error(&format!("{MINIMAL}[network]\nloss = 1.5\n"));
        assert!(e.starts_with("network.loss"), "{e}");
        let e = error(&format!("{MINIMAL}[network]\nlatency = 3\n"));
        assert!(e.contains("latency"), "{e}");
        let e = error(&format!("{MINIMAL}[profiles.x]\nmapping = \"eim\"\n"));
        assert!(e.starts_with("profiles.x"), "{e}");
        let e = error(&format!("{MINIMAL}[profiles.x]\nmapping = \"sideways\"\nfiltering = \"eif\"\n"));
        assert!(e.contains("sideways"), "{e}");
        let e = error(&MINIMAL.replace("matrix", "random-earlier"));
        assert!(e.starts_with("population"), "{e}");
        let e = error(&format!("{MINIMAL}[[partitions]]\nat_s = 5\nheal_s = 2\nfraction = 0.5\n"));
        assert!(e.starts_with("partitions[0]"), "{e}");
        let e = error("name = \"t\"\n[joins]\npattern = \"matrix\"\n");
        assert!(e.contains("duration_s"), "{e}");
        let e = error(&format!("{MINIMAL}[[moves]]\nat_s = 5\nfraction = 0.5\n"));
        assert!(e.starts_with("moves") && e.contains("network pattern"), "{e}");
        let e = error(&format!("topology = \"hierarchical\"\nmax_leaves = 40\n{MINIMAL}"));
        assert!(e.starts_with("max_leaves") && e.contains("bound of 32"), "{e}");
        let e = error(&format!("max_leaves = 4\n{MINIMAL}"));
        assert!(e.starts_with("max_leaves") && e.contains("no super-peers"), "{e}");
        let s =
            Scenario::parse(&format!("topology = \"star\"\nmax_leaves = 40\n{MINIMAL}")).expect("under a star's 256");
        assert_eq!(s.max_leaves, Some(40));
        let e = error(&format!("tenure_steps_s = [60, 60, 120]\n{MINIMAL}"));
        assert!(e.starts_with("tenure_steps_s") && e.contains("increasing"), "{e}");
        let e = error(&format!("{MINIMAL}[churn]\nmean_lifetime_s = 60\nstable = 1.5\n"));
        assert!(e.starts_with("churn.stable"), "{e}");
        let s = Scenario::parse(&format!("tenure_steps_s = [1, 2, 3]\n{MINIMAL}[churn]\nmean_lifetime_s = 60\n"))
            .expect("valid");
        assert!(s.prefer_standing, "choosing super-peers by standing is the default, as on a live node");
        assert_eq!(s.churn.map(|c| c.stable), Some(0.0));
    }

    #[test]
    fn moves_are_checked() {
        let network = "name = \"t\"\nduration_s = 10\n[population]\nnodes = 5\nmix = { public = 1 }\n[joins]\npattern = \"network\"\n";
        let s = Scenario::parse(&format!("{network}[[moves]]\nat_s = 5\nfraction = 0.5\n")).expect("valid");
        assert_eq!(s.moves[0].to, MoveTo::NewNetwork);
        let e = error(&format!("{network}[[moves]]\nat_s = 5\nfraction = 0\n"));
        assert!(e.starts_with("moves[0].fraction"), "{e}");
        let e = error(&format!("{network}[[moves]]\nat_s = 5\nfraction = 1\nprofile = \"nope\"\n"));
        assert!(e.starts_with("moves[0].profile") && e.contains("nope"), "{e}");
        let e =
            error(&format!("{network}[[moves]]\nat_s = 5\nfraction = 1\nto = \"renumber\"\nprofile = \"public\"\n"));
        assert!(e.starts_with("moves[0].profile"), "{e}");
        let e = error(&format!("{network}[[moves]]\nat_s = 5\nfraction = 1\nto = \"mars\"\n"));
        assert!(e.contains("mars"), "{e}");
    }
}
