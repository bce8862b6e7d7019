//! The virtual world: nodes running the real engine, NAT boxes, links, the
//! out-of-band channel, and the scenario's joins, failures, partitions and
//! churn, all on one event queue.
//!
//! ## Network model
//!
//! Addresses are IPv4 and unique across the world: public hosts and NATs on
//! the internet get 198.18.0.0/15 and onwards, hosts on home LANs 10.0.0.0/8,
//! home routers behind a carrier-grade NAT 100.64.0.0/10. Each address has
//! one owner (a node, or a NAT's external side) in one *realm*: the internet
//! or the LAN behind one NAT. Every entity has one link to its realm's
//! router, with a latency fixed for its life; per packet, each link adds
//! jitter and may lose it.
//!
//! A packet travels hop by hop, each hop an event at its arrival time:
//! from the sender over its link to its realm's router; there, to an owner
//! in the same realm (over the owner's link), or — on a LAN — out through
//! the LAN's NAT (translated, then over the NAT's link to the parent realm).
//! A NAT's external side applies its filter and sends the packet on into its
//! LAN. A packet from inside to the NAT's own external address is looped
//! back (hairpinning) or dropped. Private addresses of other LANs are not
//! routable from the internet, as on the real one.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use convoke_node::host::{Host, HostConfig, HostEvent};
use convoke_node::ice::{AttemptId, Event as IceEvent, FailReason, SocketId, Via};
use convoke_node::identity::Identity;
use convoke_node::member::Minter;
use convoke_node::relay::client::Hint;
use convoke_node::relay::{RelayConfig, RelayLimits};
use convoke_node::token::{self, CandidateKind, ConnectionMode, InitialMode, Invitation, InvitationParams, TokenId};

use crate::nat::{Nat, Refused};

mod members;

use crate::queue::Queue;
use crate::scenario::{Pattern, Profile, RelayMode, Scenario};
use crate::{FastHash, SimRng};
pub use members::{MemberFigures, Moved, RsvpCount, Sent, Whole};

/// The realm of the internet; other realms are NAT indices.
const INTERNET: u32 = u32::MAX;
/// The profile index of STUN servers.
pub const STUN_PROFILE: u16 = u16::MAX;
/// The port every node binds.
pub const NODE_PORT: u16 = 4433;
/// Unix time at the simulation's start (tokens carry wall-clock times).
pub const UNIX_START: u64 = 1_800_000_000;
const SEC: u64 = 1_000_000_000;
/// Events at one virtual instant after which the run is declared stuck.
const MAX_EVENTS_PER_INSTANT: u64 = 10_000_000;

#[derive(Debug, Clone, Copy)]
enum Owner {
    Node(u32),
    Nat(u32),
}

#[derive(Debug, Clone, Copy)]
enum Hop {
    Router(u32),
    NatWan(u32),
    Node(u32),
}

#[derive(Debug)]
struct Packet {
    hop: Hop,
    origin: u32,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    /// IP time to live: each NAT takes one, the internet `internet_hops`.
    ttl: u8,
    data: Vec<u8>,
}

/// A host's default IP TTL (Linux's).
const DEFAULT_TTL: u8 = 64;

#[derive(Debug)]
enum Ev {
    Timer(u32),
    Packet(Box<Packet>),
    StartJoin(u32),
    Invite { join: u32, text: String },
    Rsvp { join: u32, text: String },
    Broadcast(u32),
    Fail(u32),
    PartitionStart(u32),
    PartitionHeal,
    Crash(u32),
    Move(u32),
}

enum Deferred {
    Mint(u32),
    Import(u32, String),
}

struct SimNode {
    host: Host,
    identity: Identity,
    addr: SocketAddrV4,
    realm: u32,
    latency: u64,
    profile: u16,
    timer_at: u64,
    alive: bool,
    far: bool,
    stun_pending: u8,
    crashed_at: Option<u64>,
    /// Server- and peer-reflexive addresses we were told about.
    reflexive: Vec<SocketAddr>,
    /// The port our router maps to us (PCP / NAT-PMP / UPnP), if it
    /// granted one.
    mapped: Option<SocketAddrV4>,
    deferred: Vec<Deferred>,
    /// Our attempts, and the join each belongs to.
    attempts: Vec<(AttemptId, u32)>,
    /// Our invitations, and the join each was made for.
    invitations: Vec<(TokenId, u32)>,
    /// The member on this node (pattern `network`).
    member: Option<Box<members::Slot>>,
}

struct NatBox {
    nat: Nat,
    parent: u32,
    latency: u64,
}

/// One invitation from one node to another, and what became of it.
#[derive(Debug, Clone, Default)]
pub struct Join {
    /// The inviting node.
    pub inviter: u32,
    /// The invited node.
    pub invitee: u32,
    /// The inviter's and the invitee's NAT profiles (indices into
    /// [`World::profiles`]).
    pub profiles: (u16, u16),
    /// When the inviter was asked for an invitation, ns.
    pub started: u64,
    /// When the invitee imported the token, ns.
    pub imported: Option<u64>,
    /// When the invitee sent its RSVP back, ns.
    pub rsvp_sent: Option<u64>,
    /// When the inviter took the RSVP, ns.
    pub rsvp_taken: Option<u64>,
    /// When the invitee's session was established, ns.
    pub established: Option<u64>,
    /// When the inviter's was.
    pub inviter_established: Option<u64>,
    /// How, as the invitee's engine tells it.
    pub via: Option<Via>,
    /// How, as the inviter's engine tells it (the side that probed may be
    /// the only one that knows a probe found the path).
    pub inviter_via: Option<Via>,
    /// The inviter's candidate type on the nominated pair, as the invitee saw it.
    pub remote_kind: Option<CandidateKind>,
    /// Whether either side's session ran to the other's port mapping.
    pub port_mapped: bool,
    /// When and why it failed (before a session).
    pub failed: Option<(u64, String)>,
    /// When an established session was first seen to end.
    pub closed: Option<u64>,
    invitation: Option<Box<Invitation>>,
}

/// Network counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetStats {
    /// Datagrams sent by hosts.
    pub sent: u64,
    /// Datagrams handed to a host.
    pub delivered: u64,
    /// Lost on a link.
    pub lost: u64,
    /// Refused by a NAT's filter.
    pub filtered: u64,
    /// Arrived at a NAT port with no (or an expired) mapping.
    pub no_mapping: u64,
    /// Addressed to nothing routable from where they were.
    pub no_route: u64,
    /// Hairpinning refused by a NAT.
    pub hairpin_refused: u64,
    /// Dropped by a NAT whose mapping table was full.
    pub table_full: u64,
    /// Dropped when their TTL ran out (a hard invitee's birthday pool
    /// packets are meant to).
    pub ttl_expired: u64,
    /// Addressed to a crashed node.
    pub to_dead: u64,
    /// Lost to a partition.
    pub partitioned: u64,
    /// NAT mappings made.
    pub mappings: u64,
    /// Arrived at a node's port whose pool socket was already closed.
    pub to_closed_socket: u64,
}

/// What one failure event did.
#[derive(Debug, Clone)]
pub struct FailureRecord {
    /// When.
    pub at: u64,
    /// Nodes crashed.
    pub crashed: u64,
    /// Sessions open at that moment with exactly one end crashed.
    pub broken: Vec<u32>,
}

/// What one partition did.
#[derive(Debug, Clone)]
pub struct PartitionRecord {
    /// When it began and healed.
    pub at: u64,
    /// When it healed.
    pub heal: u64,
    /// Sessions open at its start whose ends were on different sides.
    pub across: Vec<u32>,
}

/// The simulation stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Some host kept asking to run at the same instant.
    #[error("the simulation is stuck at t = {0:.3} s: over 10 million events at one instant")]
    Stuck(f64),
}

/// The simulated world.
pub struct World {
    /// The scenario being run.
    pub scenario: Scenario,
    /// Profiles by index: name and definition.
    pub profiles: Vec<(String, Profile)>,
    now: u64,
    end: u64,
    base: Instant,
    queue: Queue<Ev>,
    rng: SimRng,
    nodes: Vec<SimNode>,
    nats: Vec<NatBox>,
    owners: HashMap<u32, Owner, FastHash>,
    stun: Vec<SocketAddr>,
    /// Every join, in start order.
    pub joins: Vec<Join>,
    /// Network counters.
    pub net: NetStats,
    /// Events processed.
    pub events: u64,
    /// Failure events, as they happened.
    pub failures: Vec<FailureRecord>,
    /// Partitions, as they happened.
    pub partitions: Vec<PartitionRecord>,
    /// Nodes crashed by churn.
    pub churned: u64,
    /// Nodes of churn's stable share (they never leave), and the first
    /// member, which churn does not take either.
    pub stable: std::collections::BTreeSet<u32>,
    partitioned: bool,
    host_config: HostConfig,
    next_public: u32,
    next_private: u32,
    next_carrier: u32,
    cgnat: Option<(u32, u32)>,
    mix: Vec<(u16, f64)>,
    same_instant: (u64, u64),
    /// The whole-system run's bookkeeping (pattern `network`).
    whole: Option<Box<Whole>>,
}

/// The index of profile `name` in `profiles` (names are validated before a
/// world is built; an unknown one maps to the first).
pub fn profile_index(profiles: &[(String, Profile)], name: &str) -> u16 {
    profiles.iter().position(|(n, _)| n == name).map_or(0, |i| i as u16)
}

fn v4(a: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(a), port)
}

impl World {
    /// Builds the world for `scenario` (already validated) with `seed`, and
    /// schedules its joins, failures and partitions.
    pub fn new(scenario: Scenario, seed: u64) -> Self {
        let profiles: Vec<(String, Profile)> = scenario.all_profiles().into_iter().collect();
        let index = |name: &str| profile_index(&profiles, name);
        let mix: Vec<(u16, f64)> = match &scenario.population {
            Some(p) => {
                let total: f64 = p.mix.values().sum();
                p.mix.iter().map(|(n, w)| (index(n), w / total)).collect()
            }
            None => Vec::new(),
        };
        let end = (scenario.duration_s * 1e9) as u64;
        let mut w = World {
            profiles,
            now: 0,
            end,
            base: Instant::now(),
            queue: Queue::default(),
            rng: SimRng::new(seed),
            nodes: Vec::new(),
            nats: Vec::new(),
            owners: HashMap::default(),
            stun: Vec::new(),
            joins: Vec::new(),
            net: NetStats::default(),
            events: 0,
            failures: Vec::new(),
            partitions: Vec::new(),
            churned: 0,
            stable: std::collections::BTreeSet::new(),
            partitioned: false,
            host_config: {
                let mut c = HostConfig::default();
                c.endpoint.pool_ttl = scenario.network.pool_ttl;
                c
            },
            next_public: u32::from(Ipv4Addr::new(198, 18, 0, 1)),
            next_private: u32::from(Ipv4Addr::new(10, 0, 0, 1)),
            next_carrier: u32::from(Ipv4Addr::new(100, 64, 0, 1)),
            cgnat: None,
            mix,
            same_instant: (0, 0),
            whole: None,
            scenario,
        };
        for k in 0..w.scenario.network.stun_servers {
            // The first STUN server relays too, when the scenario says so.
            let limits = match w.scenario.network.relay {
                RelayMode::Off => None,
                RelayMode::Limited => Some(RelayLimits::default()),
                RelayMode::Unlimited => Some(RelayLimits::unlimited()),
            };
            let plain = w.host_config.clone();
            if k == 0 && limits.is_some() {
                w.host_config.relay = limits.map(|limits| RelayConfig { limits, allow: None });
            }
            let n = w.spawn(STUN_PROFILE);
            w.host_config = plain;
            w.stun.push(SocketAddr::V4(w.nodes[n as usize].addr));
        }
        w.schedule();
        w
    }

    fn schedule(&mut self) {
        let s = &self.scenario;
        let start = (s.joins.start_s * 1e9) as u64;
        let interval = (s.joins.interval_s * 1e9) as u64;
        match s.joins.pattern {
            Pattern::Matrix => {
                let names = s.joins.profiles.clone();
                let repeat = s.joins.repeat;
                let mut k = 0u64;
                for _ in 0..repeat {
                    for a in &names {
                        for b in &names {
                            // The nodes are made when the join starts.
                            let profiles = (profile_index(&self.profiles, a), profile_index(&self.profiles, b));
                            self.joins.push(Join { inviter: u32::MAX, invitee: u32::MAX, profiles, ..Join::default() });
                            self.queue.push(start + k * interval, Ev::StartJoin(k as u32));
                            k += 1;
                        }
                    }
                }
            }
            Pattern::RandomEarlier => {
                let nodes = s.population.as_ref().map_or(0, |p| p.nodes);
                // The first member: it only invites.
                let first = self.draw_profile();
                self.spawn(first);
                for k in 0..nodes {
                    self.queue.push(start + u64::from(k) * interval, Ev::StartJoin(k));
                }
                self.joins.reserve(nodes as usize);
            }
            Pattern::Network => {
                let nodes = s.population.as_ref().map_or(0, |p| p.nodes);
                let first = match s.population.as_ref().and_then(|p| p.first.clone()) {
                    Some(name) => profile_index(&self.profiles, &name),
                    None => self.draw_profile(),
                };
                let founder = self.spawn_member(first);
                // Churn takes newcomers only: the first member stays.
                if self.scenario.churn.as_ref().is_some_and(|c| c.stable > 0.0) {
                    self.stable.insert(founder);
                }
                for k in 0..nodes {
                    self.queue.push(start + u64::from(k) * interval, Ev::StartJoin(k));
                }
                self.joins.reserve(nodes as usize);
            }
        }
        if let Some(b) = self.scenario.broadcasts.clone() {
            for i in 0..b.count {
                let at = ((b.start_s + f64::from(i) * b.interval_s) * 1e9) as u64;
                self.queue.push(at, Ev::Broadcast(i));
            }
        }
        for i in 0..self.scenario.failures.len() {
            let at = (self.scenario.failures[i].at_s * 1e9) as u64;
            self.queue.push(at, Ev::Fail(i as u32));
        }
        for i in 0..self.scenario.moves.len() {
            let at = (self.scenario.moves[i].at_s * 1e9) as u64;
            self.queue.push(at, Ev::Move(i as u32));
        }
        for i in 0..self.scenario.partitions.len() {
            let p = &self.scenario.partitions[i];
            let (at, heal) = ((p.at_s * 1e9) as u64, (p.heal_s * 1e9) as u64);
            self.queue.push(at, Ev::PartitionStart(i as u32));
            self.queue.push(heal, Ev::PartitionHeal);
        }
    }

    fn draw_profile(&mut self) -> u16 {
        let mut x = self.rng.unit();
        for &(p, w) in &self.mix {
            if x < w {
                return p;
            }
            x -= w;
        }
        self.mix.last().map_or(0, |m| m.0)
    }

    /// Virtual time now, nanoseconds since the start.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// When the run ends, ns.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Nodes made (STUN servers included).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// NAT boxes made (carrier-grade ones included).
    pub fn nat_count(&self) -> usize {
        self.nats.len()
    }

    /// A node's profile index ([`STUN_PROFILE`] for STUN servers).
    pub fn node_profile(&self, n: u32) -> u16 {
        self.nodes[n as usize].profile
    }

    /// When a node crashed, if it did.
    pub fn crashed_at(&self, n: u32) -> Option<u64> {
        self.nodes[n as usize].crashed_at
    }

    fn inst(&self, t: u64) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    fn unix(&self) -> u64 {
        UNIX_START + self.now / SEC
    }

    /// Uniform in a scenario's `[lo, hi]` range given in `unit` nanoseconds.
    fn uniform(&mut self, range: [f64; 2], unit: f64) -> u64 {
        self.rng.between((range[0] * unit) as u64, (range[1] * unit) as u64)
    }

    fn link(&mut self, range_ms: [f64; 2]) -> u64 {
        self.uniform(range_ms, 1e6)
    }

    fn public_ip(&mut self) -> u32 {
        self.next_public += 1;
        self.next_public - 1
    }

    /// A new address on a home LAN.
    fn private_ip(&mut self) -> u32 {
        self.next_private += 1;
        self.next_private - 1
    }

    /// A new address inside a carrier-grade NAT.
    fn carrier_ip(&mut self) -> u32 {
        self.next_carrier += 1;
        self.next_carrier - 1
    }

    /// A place in the world for a node of `profile`: its address, realm
    /// and link latency, with its NATs made; and the port its router maps
    /// to it, drawn with the profile's chance when `mapping` allows.
    fn place(&mut self, profile: u16, mapping: bool) -> (u32, u32, u64, Option<SocketAddrV4>) {
        let net = self.scenario.network.clone();
        let behaviour = self.profiles.get(usize::from(profile)).and_then(|(_, p)| p.behaviour());
        let behind_cgnat = self.profiles.get(usize::from(profile)).is_some_and(|(_, p)| p.cgnat);
        let mut mapped = None;
        let (addr, realm, latency) = match behaviour {
            // Right behind the carrier-grade NAT, with a carrier address.
            None if behind_cgnat => {
                let g = self.cgnat_for_home();
                (self.carrier_ip(), g, self.link(net.access_latency_ms))
            }
            None => (self.public_ip(), INTERNET, self.link(net.access_latency_ms)),
            Some(b) => {
                let behind_cgnat = self.profiles[usize::from(profile)].1.cgnat;
                let parent = if behind_cgnat { self.cgnat_for_home() } else { INTERNET };
                let external = if parent == INTERNET { self.public_ip() } else { self.carrier_ip() };
                let g = self.nats.len() as u32;
                let latency = self.link(net.access_latency_ms);
                self.nats.push(NatBox { nat: Nat::new(b, Ipv4Addr::from(external)), parent, latency });
                self.owners.insert(external, Owner::Nat(g));
                let addr = self.private_ip();
                // The router grants a port mapping with the profile's
                // chance (no draw at 0, so scenarios without mappings
                // keep their random stream).
                let chance = self.profiles[usize::from(profile)].1.port_mapping;
                if mapping && parent == INTERNET && chance > 0.0 && self.rng.unit() < chance {
                    let inside = v4(addr, NODE_PORT);
                    let rng = &mut self.rng;
                    let port = self.nats[g as usize].nat.add_forward(inside, self.now, &mut || rng.u32());
                    mapped = port.map(|p| SocketAddrV4::new(Ipv4Addr::from(external), p));
                }
                (addr, g, self.link(net.lan_latency_ms))
            }
        };
        (addr, realm, latency, mapped)
    }

    /// Makes a node with profile `profile` (and its NATs) and boots it: it
    /// asks the STUN servers where it is seen from.
    fn spawn(&mut self, profile: u16) -> u32 {
        let (addr, realm, latency, mapped) = self.place(profile, true);
        let n = self.nodes.len() as u32;
        self.owners.insert(addr, Owner::Node(n));
        let identity = Identity::from_secret_bytes(self.rng.seed());
        let now = self.inst(self.now);
        let mut host = Host::new(&identity, self.host_config.clone(), self.rng.seed(), now, self.unix());
        host.set_local_addresses(Some(NODE_PORT), &[IpAddr::V4(Ipv4Addr::from(addr))]);
        host.set_port_mapped(mapped.is_some());
        let stun_pending = if profile == STUN_PROFILE { 0 } else { self.stun.len() as u8 };
        if profile != STUN_PROFILE {
            for s in &self.stun {
                host.query_stun(*s, now);
            }
        }
        self.nodes.push(SimNode {
            host,
            identity,
            addr: v4(addr, NODE_PORT),
            realm,
            latency,
            profile,
            timer_at: u64::MAX,
            alive: true,
            far: false,
            stun_pending,
            crashed_at: None,
            reflexive: Vec::new(),
            mapped,
            deferred: Vec::new(),
            attempts: Vec::new(),
            invitations: Vec::new(),
            member: None,
        });
        self.after(n);
        n
    }

    /// The carrier-grade NAT for a new home: a fresh one for every site in
    /// the matrix; shared by `cgnat.homes` homes otherwise.
    fn cgnat_for_home(&mut self) -> u32 {
        let homes = if self.scenario.joins.pattern == Pattern::Matrix { 1 } else { self.scenario.cgnat.homes };
        if let Some((g, used)) = self.cgnat
            && used < homes
        {
            self.cgnat = Some((g, used + 1));
            return g;
        }
        let external = self.public_ip();
        let g = self.nats.len() as u32;
        let latency = self.link(self.scenario.network.cgnat_latency_ms);
        let b = self.scenario.cgnat.behaviour();
        self.nats.push(NatBox { nat: Nat::new(b, Ipv4Addr::from(external)), parent: INTERNET, latency });
        self.owners.insert(external, Owner::Nat(g));
        self.cgnat = Some((g, 1));
        g
    }

    /// Runs until the scenario's end (or the queue empties). `progress` is
    /// called now and then with (virtual ns, events so far).
    pub fn run(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<(), SimError> {
        while let Some(at) = self.queue.peek_time() {
            if at > self.end {
                break;
            }
            let Some((at, ev)) = self.queue.pop() else { break };
            if at == self.same_instant.0 {
                self.same_instant.1 += 1;
                if self.same_instant.1 > MAX_EVENTS_PER_INSTANT {
                    return Err(SimError::Stuck(at as f64 / 1e9));
                }
            } else {
                self.same_instant = (at, 0);
            }
            self.now = at;
            self.events += 1;
            if self.events & 0xFFFF == 0 {
                progress(self.now, self.events);
            }
            self.dispatch(ev);
        }
        self.now = self.now.max(self.end);
        progress(self.now, self.events);
        Ok(())
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Timer(n) => {
                let node = &mut self.nodes[n as usize];
                if !node.alive || node.timer_at != self.now {
                    return;
                }
                node.timer_at = u64::MAX;
                let now = self.base + Duration::from_nanos(self.now);
                node.host.handle_timeout(now);
                if node.member.is_some() {
                    self.member_timeout(n);
                }
                self.after(n);
            }
            Ev::Packet(p) => match p.hop {
                Hop::Router(realm) => self.at_router(realm, p),
                Hop::NatWan(g) => self.at_nat(g, p),
                Hop::Node(n) => self.at_node(n, p),
            },
            Ev::StartJoin(k) => self.start_join(k),
            Ev::Invite { join, text } => {
                let n = self.joins[join as usize].invitee;
                self.when_ready(n, Deferred::Import(join, text));
            }
            Ev::Rsvp { join, text } if self.scenario.joins.pattern == Pattern::Network => {
                self.take_member_rsvp(join, &text)
            }
            Ev::Rsvp { join, text } => self.take_rsvp(join, &text),
            Ev::Broadcast(i) => self.network_broadcast(i),
            Ev::Fail(i) => self.fail(i),
            Ev::PartitionStart(i) => self.partition(i),
            Ev::PartitionHeal => self.partitioned = false,
            Ev::Move(i) => self.move_members(i),
            Ev::Crash(n) => {
                if self.nodes[n as usize].alive {
                    self.churned += 1;
                    self.crash(n);
                }
            }
        }
    }

    /// Under churn, node `n` (just in) leaves after an exponential
    /// lifetime, unless it is one of the `churn.stable` share that stay.
    fn schedule_churn(&mut self, n: u32, now: u64) {
        let Some(c) = &self.scenario.churn else { return };
        let (mean, stable) = (c.mean_lifetime_s, c.stable);
        // No draw without a stable share: runs from before it are unchanged.
        if stable > 0.0 && self.rng.unit() < stable {
            self.stable.insert(n);
            return;
        }
        let life = (self.rng.exp(mean) * 1e9) as u64;
        self.queue.push(now + life, Ev::Crash(n));
    }

    // ---- the network ----

    fn traverse(&mut self, latency: u64) -> Option<u64> {
        let net = &self.scenario.network;
        if net.loss > 0.0 && self.rng.unit() < net.loss {
            self.net.lost += 1;
            return None;
        }
        let jitter = if net.jitter_ms > 0.0 { self.rng.between(0, (net.jitter_ms * 1e6) as u64) } else { 0 };
        Some(self.now + latency + jitter)
    }

    fn forward(&mut self, latency: u64, mut p: Box<Packet>) {
        let Some(mut at) = self.traverse(latency) else { return };
        if let Hop::Router(INTERNET) = p.hop {
            // Across the internet to the other site's edge.
            let hops = u8::try_from(self.scenario.network.internet_hops).unwrap_or(u8::MAX);
            if p.ttl <= hops {
                self.net.ttl_expired += 1;
                return;
            }
            p.ttl -= hops;
            // The internet's router keeps no state: route at once, over
            // both links, one event instead of two.
            let Some((hop, latency)) = self.owner_in(INTERNET, p.dst) else {
                self.net.no_route += 1;
                return;
            };
            let Some(more) = self.traverse(latency) else { return };
            at += more - self.now;
            p.hop = hop;
        }
        self.queue.push(at, Ev::Packet(p));
    }

    /// Sends from node `n`'s `socket`: its main port, or the port after it
    /// numbered by the socket (a probing pool).
    fn send(&mut self, n: u32, socket: SocketId, destination: SocketAddr, ttl: Option<u8>, data: Vec<u8>) {
        self.net.sent += 1;
        let SocketAddr::V4(dst) = destination else {
            self.net.no_route += 1;
            return;
        };
        let node = &self.nodes[n as usize];
        let src = SocketAddrV4::new(*node.addr.ip(), node.addr.port().wrapping_add(socket.0));
        let ttl = ttl.unwrap_or(DEFAULT_TTL);
        let p = Box::new(Packet { hop: Hop::Router(node.realm), origin: n, src, dst, ttl, data });
        self.forward(node.latency, p);
    }

    /// The hop owning `dst` in `realm` (a node, or a NAT's external side),
    /// and the latency of its link.
    fn owner_in(&self, realm: u32, dst: SocketAddrV4) -> Option<(Hop, u64)> {
        match self.owners.get(&u32::from(*dst.ip())).copied()? {
            Owner::Node(m) if self.nodes[m as usize].realm == realm => {
                Some((Hop::Node(m), self.nodes[m as usize].latency))
            }
            Owner::Nat(g) if self.nats[g as usize].parent == realm => {
                Some((Hop::NatWan(g), self.nats[g as usize].latency))
            }
            _ => None,
        }
    }

    /// At the router of the LAN behind NAT `realm` (the internet's router
    /// routes in `forward`): to an owner on the LAN, or out through the NAT.
    fn at_router(&mut self, realm: u32, mut p: Box<Packet>) {
        match self.owner_in(realm, p.dst) {
            Some((hop, latency)) => {
                p.hop = hop;
                self.forward(latency, p);
            }
            None => {
                // Out through this LAN's NAT, a router hop: a packet whose
                // TTL runs out here makes no mapping.
                if p.ttl <= 1 {
                    self.net.ttl_expired += 1;
                    return;
                }
                p.ttl -= 1;
                let now = self.now;
                let rng = &mut self.rng;
                let b = &mut self.nats[realm as usize];
                let mut random = || rng.u32();
                let before = b.nat.mappings();
                let full_before = b.nat.table_full;
                let Some(port) = b.nat.outbound(p.src, p.dst, now, &mut random) else {
                    if b.nat.table_full > full_before {
                        self.net.table_full += 1;
                    } else {
                        self.net.no_route += 1;
                    }
                    return;
                };
                if b.nat.mappings() > before {
                    self.net.mappings += 1;
                }
                p.src = SocketAddrV4::new(b.nat.external, port);
                if *p.dst.ip() == b.nat.external {
                    if b.nat.behaviour.hairpin {
                        self.at_nat(realm, p);
                    } else {
                        self.net.hairpin_refused += 1;
                    }
                    return;
                }
                let (parent, latency) = (b.parent, b.latency);
                p.hop = Hop::Router(parent);
                self.forward(latency, p);
            }
        }
    }

    fn at_nat(&mut self, g: u32, mut p: Box<Packet>) {
        // The NAT's router looks at the packet first (a refused one may
        // still become its own flow), then forwards it a hop on.
        let verdict = self.nats[g as usize].nat.inbound(p.src, p.dst.port(), self.now);
        if verdict.is_ok() && p.ttl <= 1 {
            self.net.ttl_expired += 1;
            return;
        }
        p.ttl = p.ttl.saturating_sub(1);
        match verdict {
            Ok(internal) => {
                p.dst = internal;
                self.at_router(g, p);
            }
            Err(Refused::Filtered) => self.net.filtered += 1,
            Err(Refused::NoMapping) => self.net.no_mapping += 1,
        }
    }

    // The box came with the event; unboxing it would copy the packet.
    #[allow(clippy::boxed_local)]
    fn at_node(&mut self, n: u32, mut p: Box<Packet>) {
        let (alive, far) = (self.nodes[n as usize].alive, self.nodes[n as usize].far);
        if !alive {
            self.net.to_dead += 1;
            return;
        }
        if self.partitioned && far != self.nodes[p.origin as usize].far {
            self.net.partitioned += 1;
            return;
        }
        let socket = SocketId(p.dst.port().wrapping_sub(self.nodes[n as usize].addr.port()));
        if !self.nodes[n as usize].host.endpoint().is_socket_open(socket) {
            self.net.to_closed_socket += 1;
            return;
        }
        self.net.delivered += 1;
        let now = self.inst(self.now);
        self.nodes[n as usize].host.handle_datagram_on(now, socket, SocketAddr::V4(p.src), &mut p.data);
        self.after(n);
    }

    // ---- driving a host ----

    /// After any input to node `n`'s host: send what it wants sent, handle
    /// what it reports, and re-arm its timer (the runtime's loop, in virtual
    /// time).
    fn after(&mut self, n: u32) {
        let now = self.inst(self.now);
        loop {
            while let Some(t) = self.nodes[n as usize].host.poll_transmit(now) {
                self.send(n, t.socket, t.destination, t.ttl, t.contents);
            }
            // A closed pool socket needs nothing here: its port stops
            // delivering (`at_node` asks the host).
            while self.nodes[n as usize].host.poll_socket_close().is_some() {}
            let Some(e) = self.nodes[n as usize].host.poll_event() else { break };
            if self.nodes[n as usize].member.is_some() {
                self.member_host_event(n, e);
            } else {
                self.on_event(n, e);
            }
        }
        let host = self.nodes[n as usize].host.poll_timeout();
        let t =
            [host, self.member_deadline(n)].into_iter().flatten().min().map(|i| i.saturating_duration_since(self.base));
        let node = &mut self.nodes[n as usize];
        match t {
            Some(d) => {
                let at = (d.as_nanos() as u64).max(self.now);
                if at != node.timer_at {
                    node.timer_at = at;
                    self.queue.push(at, Ev::Timer(n));
                }
            }
            None => node.timer_at = u64::MAX,
        }
    }

    /// Node `n`'s NAT as it classified it (what its tokens carry).
    pub fn nodes_nat(&self, n: u32) -> Option<convoke_node::token::NatInfo> {
        self.nodes.get(n as usize).and_then(|node| node.host.nat())
    }

    /// The relay's counters and the circuits it holds at the end, if the
    /// scenario has one.
    pub fn relay_totals(&self) -> Option<(convoke_node::relay::RelayStats, usize)> {
        self.nodes.iter().find_map(|n| n.host.relay()).map(|r| (r.stats().clone(), r.circuit_count()))
    }

    /// The connectivity engines' counters, summed over every node.
    pub fn endpoint_totals(&self) -> convoke_node::ice::Stats {
        let mut t = convoke_node::ice::Stats::default();
        for n in &self.nodes {
            let s = n.host.endpoint().stats();
            t.probes_sent += s.probes_sent;
            t.pool_sockets_opened += s.pool_sockets_opened;
            t.probing_started += s.probing_started;
            t.probing_connected += s.probing_connected;
        }
        t
    }

    fn join_of(&self, n: u32, attempt: AttemptId) -> Option<u32> {
        self.nodes[n as usize].attempts.iter().find(|(a, _)| *a == attempt).map(|(_, k)| *k)
    }

    fn on_event(&mut self, n: u32, e: HostEvent) {
        match e {
            HostEvent::StunMapped { address, .. } => {
                let node = &mut self.nodes[n as usize];
                if !node.reflexive.contains(&address) {
                    node.reflexive.push(address);
                }
                self.stun_done(n);
            }
            HostEvent::StunFailed { .. } => self.stun_done(n),
            HostEvent::Ice(IceEvent::Mapped { address }) => {
                let node = &mut self.nodes[n as usize];
                if !node.reflexive.contains(&address) && node.reflexive.len() < 8 {
                    node.reflexive.push(address);
                }
            }
            HostEvent::Ice(IceEvent::RsvpNeeded { attempt }) => {
                if let Some(k) = self.join_of(n, attempt) {
                    self.make_rsvp(n, k, attempt);
                }
            }
            HostEvent::Ice(IceEvent::Failed { attempt, reason, .. }) => {
                if let Some(k) = self.join_of(n, attempt) {
                    let j = &mut self.joins[k as usize];
                    if j.invitee == n && j.established.is_none() && j.failed.is_none() {
                        let why = match reason {
                            FailReason::Timeout => "no path",
                            FailReason::Closed => "closed",
                            FailReason::Crossed => "crossed",
                        };
                        j.failed = Some((self.now, why.to_owned()));
                    }
                }
            }
            HostEvent::HandshakeFailed { session, reason } => {
                if let Some(k) = self.join_of(n, session) {
                    let j = &mut self.joins[k as usize];
                    if j.failed.is_none() && j.established.is_none() {
                        j.failed = Some((self.now, format!("handshake: {reason}")));
                    }
                }
            }
            HostEvent::Established { session, inviter, via, remote, remote_kind, .. } => {
                let k = if inviter {
                    let inv = self.nodes[n as usize].host.endpoint().binding(session).map(|b| b.invitation);
                    let k = inv.and_then(|id| {
                        self.nodes[n as usize].invitations.iter().find(|(t, _)| *t == id).map(|(_, k)| *k)
                    });
                    if let Some(k) = k
                        && self.join_of(n, session).is_none()
                    {
                        self.nodes[n as usize].attempts.push((session, k));
                    }
                    k
                } else {
                    self.join_of(n, session)
                };
                let Some(k) = k else { return };
                let now = self.now;
                let other = if inviter { self.joins[k as usize].invitee } else { self.joins[k as usize].inviter };
                let to_mapping =
                    self.nodes.get(other as usize).and_then(|o| o.mapped).map(SocketAddr::V4) == Some(remote);
                let j = &mut self.joins[k as usize];
                j.port_mapped |= to_mapping;
                if inviter {
                    j.inviter_established.get_or_insert(now);
                    j.inviter_via.get_or_insert(via);
                } else if j.established.is_none() {
                    j.established = Some(now);
                    j.via = Some(via);
                    j.remote_kind = Some(remote_kind);
                    j.invitation = None;
                    self.schedule_churn(n, now);
                }
            }
            HostEvent::Closed { session, .. } => {
                if let Some(k) = self.join_of(n, session) {
                    let j = &mut self.joins[k as usize];
                    if j.established.is_some() {
                        j.closed.get_or_insert(self.now);
                    }
                }
            }
            HostEvent::Readable { session } => {
                // Nothing is sent on these sessions; drain whatever arrives.
                let mut buf = [0u8; 2048];
                let host = &mut self.nodes[n as usize].host;
                while host.read(session, &mut buf) > 0 {}
                while host.recv_datagram(session).is_some() {}
            }
            // The host keeps its classification; minters read it there.
            HostEvent::Ice(_) | HostEvent::NatClassified(_) => {}
            // A join counts by how it connected. (The emulated NATs keep
            // their behaviour for a whole run, so a pair that had to relay
            // finds no direct path later.)
            HostEvent::PathChanged { .. } => {}
        }
    }

    fn stun_done(&mut self, n: u32) {
        let node = &mut self.nodes[n as usize];
        node.stun_pending = node.stun_pending.saturating_sub(1);
        if node.stun_pending == 0 {
            if node.member.is_some() {
                self.start_member(n);
            }
            let node = &mut self.nodes[n as usize];
            for d in std::mem::take(&mut node.deferred) {
                self.run_deferred(n, d);
            }
        }
    }

    fn when_ready(&mut self, n: u32, d: Deferred) {
        let node = &mut self.nodes[n as usize];
        if !node.alive {
            return;
        }
        if node.stun_pending > 0 {
            node.deferred.push(d);
        } else {
            self.run_deferred(n, d);
        }
    }

    fn run_deferred(&mut self, n: u32, d: Deferred) {
        match d {
            Deferred::Mint(k) if self.scenario.joins.pattern == Pattern::Network => self.send_card(n, k),
            Deferred::Import(k, text) if self.scenario.joins.pattern == Pattern::Network => {
                self.import_card(n, k, &text)
            }
            Deferred::Mint(k) => self.mint(n, k),
            Deferred::Import(k, text) => self.import(n, k, &text),
        }
        self.after(n);
    }

    /// Node `n`'s minter: its identity and what it knows of its addresses
    /// (the engine's one place tokens are minted), keyed from the world's
    /// stream.
    fn minter(&mut self, n: u32) -> Minter {
        let seed = self.rng.seed();
        let node = &self.nodes[n as usize];
        let mut m = Minter::new(node.identity.clone(), seed);
        let c = m.candidates_mut();
        c.add_host(SocketAddr::V4(node.addr));
        for a in &node.reflexive {
            c.add_server_reflexive(*a);
        }
        c.set_port_mapped(node.mapped.map(SocketAddr::V4));
        m.set_nat(node.host.nat());
        m
    }

    // ---- joins ----

    fn start_join(&mut self, k: u32) {
        let now = self.now;
        let (inviter, invitee) = match self.scenario.joins.pattern {
            Pattern::Matrix => {
                let (a, b) = self.joins[k as usize].profiles;
                (self.spawn(a), self.spawn(b))
            }
            Pattern::Network => {
                self.start_network_join(k);
                return;
            }
            Pattern::RandomEarlier => {
                let first = self.stun.len() as u32;
                let earlier = self.nodes.len() as u32 - first;
                let mut inviter = first + self.rng.u32() % earlier;
                for _ in 0..8 {
                    if self.nodes[inviter as usize].alive {
                        break;
                    }
                    inviter = first + self.rng.u32() % earlier;
                }
                let p = self.draw_profile();
                let invitee = self.spawn(p);
                let profiles = (self.nodes[inviter as usize].profile, p);
                self.joins.push(Join { profiles, ..Join::default() });
                (inviter, invitee)
            }
        };
        let j = &mut self.joins[k as usize];
        (j.inviter, j.invitee, j.started) = (inviter, invitee, now);
        if !self.nodes[inviter as usize].alive {
            j.failed = Some((now, "inviter is down".into()));
            return;
        }
        self.when_ready(inviter, Deferred::Mint(k));
    }

    /// The inviter makes an invitation with its candidates, listens on it,
    /// and the token leaves by the out-of-band channel.
    fn mint(&mut self, n: u32, k: u32) {
        let unix = self.unix();
        let initial =
            if self.scenario.joins.rsvp_required { InitialMode::Bidirectional } else { InitialMode::Unidirectional };
        // The scenario's relay, named in every invitation.
        let relay = match (self.scenario.network.relay, self.stun.first()) {
            (RelayMode::Off, _) | (_, None) => Vec::new(),
            (_, Some(&r)) => vec![Hint::Relay(r).to_string()],
        };
        let params = InvitationParams {
            mode: ConnectionMode { initial, ..ConnectionMode::default() },
            relay,
            ..InvitationParams::default()
        };
        let (text, id) = match self.minter(n).invitation(params, unix) {
            Ok(inv) => {
                let t = (inv.token().encode_compact(), inv.token().body.token_id);
                self.nodes[n as usize].host.listen(inv);
                t
            }
            Err(e) => {
                self.joins[k as usize].failed = Some((self.now, format!("own invitation refused: {e}")));
                return;
            }
        };
        self.nodes[n as usize].invitations.push((id, k));
        let delay = self.uniform(self.scenario.oob.invite_delay_s, 1e9);
        self.queue.push(self.now + delay, Ev::Invite { join: k, text });
    }

    /// The invitee pastes the token.
    fn import(&mut self, n: u32, k: u32, text: &str) {
        let unix = self.unix();
        let now = self.inst(self.now);
        let j = &mut self.joins[k as usize];
        match token::decode(text).and_then(|t| Invitation::from_token(t, unix)) {
            Ok(inv) => {
                let node = &mut self.nodes[n as usize];
                let a = node.host.join(&inv, now);
                node.attempts.push((a, k));
                j.imported = Some(self.now);
                j.invitation = Some(Box::new(inv));
            }
            Err(e) => j.failed = Some((self.now, format!("invitation refused: {e}"))),
        }
    }

    fn make_rsvp(&mut self, n: u32, k: u32, attempt: AttemptId) {
        let minter = self.minter(n);
        let unix = self.unix();
        let node = &self.nodes[n as usize];
        let (Some(id), Some(inv)) =
            (node.host.endpoint().rsvp_token_id(attempt), self.joins[k as usize].invitation.as_deref())
        else {
            return;
        };
        // With the circuit the invitee holds at the inviter's relay, if any.
        let hints = node.host.relay_hints(attempt);
        let text = minter.rsvp_relayed(inv, id, hints, unix).encode_compact();
        self.joins[k as usize].rsvp_sent = Some(self.now);
        let delay = self.uniform(self.scenario.oob.rsvp_delay_s, 1e9);
        self.queue.push(self.now + delay, Ev::Rsvp { join: k, text });
    }

    /// The inviter pastes the RSVP.
    fn take_rsvp(&mut self, k: u32, text: &str) {
        let n = self.joins[k as usize].inviter;
        if !self.nodes[n as usize].alive {
            return;
        }
        let now = self.inst(self.now);
        self.joins[k as usize].rsvp_taken.get_or_insert(self.now);
        match self.nodes[n as usize].host.accept_rsvp(text, now) {
            Ok(a) => self.nodes[n as usize].attempts.push((a, k)),
            Err(e) => {
                let j = &mut self.joins[k as usize];
                if j.established.is_none() && j.failed.is_none() {
                    j.failed = Some((self.now, format!("rsvp refused: {e}")));
                }
            }
        }
        self.after(n);
    }

    // ---- failures ----

    fn crash(&mut self, n: u32) {
        let node = &mut self.nodes[n as usize];
        node.alive = false;
        node.crashed_at = Some(self.now);
        node.deferred.clear();
    }

    fn open_sessions(&self) -> Vec<u32> {
        (0..self.joins.len() as u32)
            .filter(|&k| {
                let j = &self.joins[k as usize];
                j.established.is_some() && j.closed.is_none()
            })
            .collect()
    }

    fn fail(&mut self, i: u32) {
        let fraction = self.scenario.failures[i as usize].fraction;
        let mut crashed = 0;
        for n in self.stun.len() as u32..self.nodes.len() as u32 {
            if self.nodes[n as usize].alive && self.rng.unit() < fraction {
                self.crash(n);
                crashed += 1;
            }
        }
        let broken = self
            .open_sessions()
            .into_iter()
            .filter(|&k| {
                let j = &self.joins[k as usize];
                self.nodes[j.inviter as usize].alive != self.nodes[j.invitee as usize].alive
            })
            .collect();
        self.failures.push(FailureRecord { at: self.now, crashed, broken });
    }

    fn partition(&mut self, i: u32) {
        let p = self.scenario.partitions[i as usize].clone();
        for n in self.stun.len()..self.nodes.len() {
            self.nodes[n].far = self.rng.unit() < p.fraction;
        }
        self.partitioned = true;
        let across = self
            .open_sessions()
            .into_iter()
            .filter(|&k| {
                let j = &self.joins[k as usize];
                let (a, b) = (&self.nodes[j.inviter as usize], &self.nodes[j.invitee as usize]);
                a.alive && b.alive && a.far != b.far
            })
            .collect();
        self.partitions.push(PartitionRecord { at: self.now, heal: (p.heal_s * 1e9) as u64, across });
    }
}
