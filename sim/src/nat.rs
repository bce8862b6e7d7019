//! NAT boxes with the behaviours of RFC 4787: mapping (§4.1), filtering
//! (§5), port assignment (§4.2), mapping refresh and timeout (§4.3) and
//! hairpinning (§6, applied by the network).
//!
//! Two choices a real NAT makes that the RFC leaves open, taken here the way
//! Linux conntrack (and so most home routers) takes them:
//!
//! * filtering is per mapping: an address- or port-dependent filter admits
//!   a packet to an external port only from the endpoints that *that
//!   mapping* has sent to;
//! * a packet admitted inbound opens the reverse direction: the internal
//!   endpoint's replies to that sender leave through the same external port,
//!   even when the mapping behaviour would pick another (a conntrack entry
//!   created by the first packet of a flow is used by its replies).

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::FastHash;

/// Mapping behaviour (RFC 4787 §4.1): what makes the NAT reuse an external
/// port for an internal endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mapping {
    /// Endpoint-independent: one external port per internal endpoint.
    Eim,
    /// Address-dependent: one per internal endpoint and destination address.
    Adm,
    /// Address-and-port-dependent: one per destination address and port.
    Apdm,
}

/// Filtering behaviour (RFC 4787 §5): which inbound packets a mapping
/// admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filtering {
    /// Endpoint-independent: anyone.
    Eif,
    /// Address-dependent: addresses the mapping has sent to.
    Adf,
    /// Address-and-port-dependent: endpoints the mapping has sent to.
    Apdf,
}

/// How external ports are chosen (RFC 4787 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortAssignment {
    /// The internal port if free, else the next free one.
    Preserving,
    /// The next free port after the last one given.
    Sequential,
    /// A random free port.
    Random,
}

/// One NAT's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Behaviour {
    /// Mapping.
    pub mapping: Mapping,
    /// Filtering.
    pub filtering: Filtering,
    /// Port assignment.
    pub ports: PortAssignment,
    /// Idle time after which a mapping is forgotten, nanoseconds; refreshed
    /// by outbound packets only (RFC 4787 REQ-6).
    pub timeout_ns: u64,
    /// Whether packets from inside to the NAT's own external address are
    /// looped back in (RFC 4787 REQ-9).
    pub hairpin: bool,
    /// Most mappings the table holds (a cheap router's conntrack table);
    /// a packet that needs a new one while the table is full is dropped.
    /// `None`: only the port range bounds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mappings: Option<u32>,
    /// A router with no firewall drop for packets to itself: an inbound
    /// packet its filter refuses (or that finds no mapping) becomes a flow
    /// of the router's own, whose 5-tuple (external port, sender) a later
    /// outbound flow to that sender can no longer use, so that flow leaves
    /// from another port (Linux conntrack does this; the testbeds' routers
    /// drop such packets, as most home routers do).
    #[serde(default)]
    pub local_conntrack: bool,
}

/// What a destination key of a mapping holds, per mapping behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum DestKey {
    Any,
    Addr(Ipv4Addr),
    Endpoint(SocketAddrV4),
}

#[derive(Debug)]
struct Entry {
    internal: SocketAddrV4,
    key: DestKey,
    /// Endpoints this mapping sent to or admitted, with when (ns): the
    /// least recent first. Each is forgotten a mapping timeout after it was
    /// last used, as conntrack forgets a flow (a mapping that sprayed 2,000
    /// probes remembers them for that long, and no longer).
    peers: VecDeque<(SocketAddrV4, u64)>,
    expires: u64,
}

impl Entry {
    /// Forgets peers not used within `timeout` of `now`.
    fn prune(&mut self, now: u64, timeout: u64) {
        let before = self.peers.len();
        while self.peers.front().is_some_and(|p| p.1.saturating_add(timeout) <= now) {
            self.peers.pop_front();
        }
        // After a spray's thousands of peers go, so does their memory.
        if self.peers.len() < before && self.peers.capacity() > 4 * self.peers.len() + 32 {
            self.peers.shrink_to_fit();
        }
    }

    /// Marks `remote` used at `now`; returns the peer evicted to make room.
    fn touch(&mut self, remote: SocketAddrV4, now: u64) -> Option<SocketAddrV4> {
        if let Some(i) = self.peers.iter().position(|p| p.0 == remote) {
            self.peers.remove(i);
            self.peers.push_back((remote, now));
            return None;
        }
        let evicted = if self.peers.len() >= MAX_PEERS { self.peers.pop_front().map(|p| p.0) } else { None };
        self.peers.push_back((remote, now));
        evicted
    }

    fn knows(&self, remote: SocketAddrV4) -> bool {
        self.peers.iter().any(|p| p.0 == remote)
    }
}

/// Most peers a mapping remembers for filtering; the least recently used
/// goes first.
const MAX_PEERS: usize = 4096;
const FIRST_PORT: u16 = 1024;

/// A NAT's translation table.
#[derive(Debug)]
pub struct Nat {
    /// The behaviour.
    pub behaviour: Behaviour,
    /// The external address.
    pub external: Ipv4Addr,
    by_key: HashMap<(SocketAddrV4, DestKey), u16, FastHash>,
    ports: HashMap<u16, Entry, FastHash>,
    replies: HashMap<(SocketAddrV4, SocketAddrV4), u16, FastHash>,
    /// Port mappings granted by PCP / NAT-PMP / UPnP: internal endpoint
    /// to external port (see [`Nat::add_forward`]).
    forwards: HashMap<SocketAddrV4, u16, FastHash>,
    next_port: u16,
    /// Mappings made since the last sweep of expired ones.
    since_sweep: u32,
    /// Packets dropped because the table was full ([`Behaviour::max_mappings`]).
    pub table_full: u64,
    /// (external port, sender) pairs the router holds as its own flows,
    /// until when (ns): see [`Behaviour::local_conntrack`].
    claimed: HashMap<(u16, SocketAddrV4), u64, FastHash>,
    /// Outbound flows moved to another port by such a claim.
    pub remapped: u64,
}

/// Expired mappings are swept after this many new ones (a pool of probing
/// sockets leaves hundreds behind that nothing would touch again).
const SWEEP_EVERY: u32 = 256;

/// Why an inbound packet did not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No mapping on that port (never made, or expired).
    NoMapping,
    /// The mapping exists but its filter refused the sender.
    Filtered,
}

impl Nat {
    /// A NAT with no mappings yet.
    pub fn new(behaviour: Behaviour, external: Ipv4Addr) -> Self {
        Self {
            behaviour,
            external,
            by_key: HashMap::default(),
            ports: HashMap::default(),
            replies: HashMap::default(),
            forwards: HashMap::default(),
            next_port: FIRST_PORT,
            since_sweep: 0,
            table_full: 0,
            claimed: HashMap::default(),
            remapped: 0,
        }
    }

    /// Mappings held (including expired ones not yet swept).
    pub fn mappings(&self) -> usize {
        self.ports.len()
    }

    fn alive(&mut self, port: u16, internal: SocketAddrV4, now: u64) -> bool {
        match self.ports.get(&port) {
            Some(e) if e.internal == internal && e.expires > now => true,
            Some(e) if e.expires <= now => {
                self.remove(port);
                false
            }
            _ => false,
        }
    }

    fn remove(&mut self, port: u16) {
        if let Some(e) = self.ports.remove(&port) {
            self.by_key.remove(&(e.internal, e.key));
            for (p, _) in e.peers {
                if self.replies.get(&(e.internal, p)) == Some(&port) {
                    self.replies.remove(&(e.internal, p));
                }
            }
        }
    }

    fn free(&mut self, port: u16, now: u64) -> bool {
        self.free_for(port, None, now)
    }

    /// Whether `port` can carry a new flow to `remote`: no live mapping
    /// holds it, and the router holds no flow of its own with `remote` on
    /// it ([`Behaviour::local_conntrack`]).
    fn free_for(&mut self, port: u16, remote: Option<SocketAddrV4>, now: u64) -> bool {
        if remote.is_some_and(|r| self.is_claimed(port, r, now)) {
            return false;
        }
        match self.ports.get(&port) {
            None => true,
            Some(e) if e.expires <= now => {
                self.remove(port);
                true
            }
            Some(_) => false,
        }
    }

    fn allocate(
        &mut self,
        internal: SocketAddrV4,
        remote: Option<SocketAddrV4>,
        now: u64,
        random: &mut dyn FnMut() -> u32,
    ) -> Option<u16> {
        let span = u32::from(u16::MAX - FIRST_PORT) + 1;
        if self.behaviour.ports == PortAssignment::Preserving
            && internal.port() >= FIRST_PORT
            && self.free_for(internal.port(), remote, now)
        {
            return Some(internal.port());
        }
        // Bounded: at most one pass over the port range.
        for _ in 0..span {
            let p = match self.behaviour.ports {
                PortAssignment::Random => FIRST_PORT + (random() % span) as u16,
                _ => {
                    let p = self.next_port;
                    self.next_port = if p == u16::MAX { FIRST_PORT } else { p + 1 };
                    p
                }
            };
            if self.free_for(p, remote, now) {
                return Some(p);
            }
        }
        None
    }

    /// Grants `internal` a port mapping, as a router answering PCP,
    /// NAT-PMP or UPnP IGD does: a mapping that never expires, whose filter
    /// admits anyone, and that the endpoint's packets to every destination
    /// leave from (miniupnpd adds a matching source-NAT rule). The internal
    /// port when free, as those protocols ask. `None` when no port is free.
    pub fn add_forward(&mut self, internal: SocketAddrV4, now: u64, random: &mut dyn FnMut() -> u32) -> Option<u16> {
        if let Some(p) = self.forwards.get(&internal) {
            return Some(*p);
        }
        let p = if internal.port() >= FIRST_PORT && self.free(internal.port(), now) {
            internal.port()
        } else {
            self.allocate(internal, None, now, random)?
        };
        self.ports.insert(p, Entry { internal, key: DestKey::Any, peers: VecDeque::new(), expires: u64::MAX });
        self.forwards.insert(internal, p);
        Some(p)
    }

    /// Translates an outbound packet from `internal` to `remote`: the
    /// external port it leaves from, making or refreshing the mapping.
    /// `None` when the port range is exhausted.
    pub fn outbound(
        &mut self,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
        now: u64,
        random: &mut dyn FnMut() -> u32,
    ) -> Option<u16> {
        let key = match self.behaviour.mapping {
            Mapping::Eim => DestKey::Any,
            Mapping::Adm => DestKey::Addr(*remote.ip()),
            Mapping::Apdm => DestKey::Endpoint(remote),
        };
        let reply = self.replies.get(&(internal, remote)).copied();
        let mut existing = self.by_key.get(&(internal, key)).copied();
        // The router holds (that port, this remote) as a flow of its own:
        // this flow needs another port, a mapping for this remote alone.
        let mut key = key;
        if reply.is_none()
            && let Some(p) = existing
            && self.is_claimed(p, remote, now)
        {
            key = DestKey::Endpoint(remote);
            existing = self.by_key.get(&(internal, key)).copied();
            if existing.is_none() {
                self.remapped += 1;
            }
        }
        let forward = self.forwards.get(&internal).copied();
        let port = match (reply, existing) {
            _ if let Some(p) = forward => p,
            (Some(p), _) if self.alive(p, internal, now) => p,
            (_, Some(p)) if self.alive(p, internal, now) => p,
            _ => {
                self.since_sweep += 1;
                if self.since_sweep >= SWEEP_EVERY || self.is_full() {
                    self.since_sweep = 0;
                    self.sweep(now);
                }
                if self.is_full() {
                    self.table_full += 1;
                    return None;
                }
                let p = self.allocate(internal, Some(remote), now, random)?;
                self.ports.insert(p, Entry { internal, key, peers: VecDeque::new(), expires: 0 });
                self.by_key.insert((internal, key), p);
                p
            }
        };
        let timeout = self.behaviour.timeout_ns;
        let e = self.ports.get_mut(&port).expect("mapping present");
        if forward.is_none() {
            e.expires = now.saturating_add(timeout);
        }
        e.prune(now, timeout);
        if let Some(old) = e.touch(remote, now) {
            self.forget_reply(internal, old, port);
        }
        Some(port)
    }

    /// Whether the router holds (`port`, `remote`) as a flow of its own
    /// at `now` ([`Behaviour::local_conntrack`]).
    fn is_claimed(&self, port: u16, remote: SocketAddrV4, now: u64) -> bool {
        self.claimed.get(&(port, remote)).is_some_and(|until| *until > now)
    }

    /// Whether the table holds all the mappings it may
    /// ([`Behaviour::max_mappings`]).
    fn is_full(&self) -> bool {
        self.behaviour.max_mappings.is_some_and(|m| self.ports.len() >= m as usize)
    }

    /// Forgets the expired mappings.
    fn sweep(&mut self, now: u64) {
        let expired: Vec<u16> = self.ports.iter().filter(|(_, e)| e.expires <= now).map(|(p, _)| *p).collect();
        for p in expired {
            self.remove(p);
        }
    }

    fn forget_reply(&mut self, internal: SocketAddrV4, remote: SocketAddrV4, port: u16) {
        if self.replies.get(&(internal, remote)) == Some(&port) {
            self.replies.remove(&(internal, remote));
        }
    }

    /// Translates an inbound packet from `remote` to our external `port`:
    /// the internal endpoint it goes to, or why it is refused.
    pub fn inbound(&mut self, remote: SocketAddrV4, port: u16, now: u64) -> Result<SocketAddrV4, Refused> {
        let r = self.pass_inbound(remote, port, now);
        if r.is_err() && self.behaviour.local_conntrack {
            // Bounded: one entry per (port, sender), forgotten after the
            // mapping timeout (swept when the table grows).
            if self.claimed.len() >= 4 * MAX_PEERS {
                self.claimed.retain(|_, until| *until > now);
            }
            if self.claimed.len() < 4 * MAX_PEERS {
                self.claimed.insert((port, remote), now.saturating_add(self.behaviour.timeout_ns));
            }
        }
        r
    }

    fn pass_inbound(&mut self, remote: SocketAddrV4, port: u16, now: u64) -> Result<SocketAddrV4, Refused> {
        let Some(e) = self.ports.get_mut(&port) else { return Err(Refused::NoMapping) };
        if e.expires <= now {
            self.remove(port);
            return Err(Refused::NoMapping);
        }
        e.prune(now, self.behaviour.timeout_ns);
        let forwarded = self.forwards.get(&e.internal) == Some(&port);
        let admitted = match self.behaviour.filtering {
            _ if forwarded => true,
            Filtering::Eif => true,
            Filtering::Adf => e.peers.iter().any(|p| p.0.ip() == remote.ip()),
            Filtering::Apdf => e.knows(remote),
        };
        if !admitted {
            return Err(Refused::Filtered);
        }
        let internal = e.internal;
        if !e.knows(remote)
            && let Some(old) = e.touch(remote, now)
        {
            self.forget_reply(internal, old, port);
        }
        self.replies.entry((internal, remote)).or_insert(port);
        Ok(internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn nat(mapping: Mapping, filtering: Filtering, ports: PortAssignment) -> Nat {
        let b = Behaviour {
            mapping,
            filtering,
            ports,
            timeout_ns: 120 * SEC,
            hairpin: true,
            max_mappings: None,
            local_conntrack: false,
        };
        Nat::new(b, Ipv4Addr::new(198, 18, 0, 1))
    }

    fn ep(s: &str) -> SocketAddrV4 {
        s.parse().expect("address")
    }

    fn seq() -> impl FnMut() -> u32 {
        let mut x = 12345u32;
        move || {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            x
        }
    }

    #[test]
    fn mapping_behaviours_reuse_ports_as_rfc_4787_says() {
        let inside = ep("10.0.0.2:5000");
        let (s1, s2, t1) = (ep("198.18.1.1:3478"), ep("198.18.1.1:9999"), ep("198.18.2.2:3478"));
        for (m, same_addr, other_addr) in
            [(Mapping::Eim, true, true), (Mapping::Adm, true, false), (Mapping::Apdm, false, false)]
        {
            let mut n = nat(m, Filtering::Apdf, PortAssignment::Preserving);
            let mut r = seq();
            let p1 = n.outbound(inside, s1, 0, &mut r).expect("port");
            assert_eq!(p1, 5000, "{m:?}: preserving keeps the internal port");
            let p2 = n.outbound(inside, s2, 0, &mut r).expect("port");
            let p3 = n.outbound(inside, t1, 0, &mut r).expect("port");
            assert_eq!(p1 == p2, same_addr, "{m:?}: same address, other port");
            assert_eq!(p1 == p3, other_addr, "{m:?}: other address");
        }
    }

    #[test]
    fn filtering_behaviours_admit_as_rfc_4787_says() {
        let inside = ep("10.0.0.2:5000");
        let s = ep("198.18.1.1:3478");
        for (f, same_addr_other_port, other_addr) in
            [(Filtering::Eif, true, true), (Filtering::Adf, true, false), (Filtering::Apdf, false, false)]
        {
            let mut n = nat(Mapping::Eim, f, PortAssignment::Sequential);
            let p = n.outbound(inside, s, 0, &mut seq()).expect("port");
            assert_eq!(n.inbound(s, p, 1), Ok(inside), "{f:?}: the contacted endpoint");
            assert_eq!(n.inbound(ep("198.18.1.1:1"), p, 1).is_ok(), same_addr_other_port, "{f:?}");
            assert_eq!(n.inbound(ep("198.18.9.9:3478"), p, 1).is_ok(), other_addr, "{f:?}");
            assert_eq!(n.inbound(s, p + 1, 1), Err(Refused::NoMapping));
        }
    }

    #[test]
    fn mappings_expire_without_outbound_refresh() {
        let inside = ep("10.0.0.2:5000");
        let s = ep("198.18.1.1:3478");
        let mut n = nat(Mapping::Eim, Filtering::Eif, PortAssignment::Preserving);
        let p = n.outbound(inside, s, 0, &mut seq()).expect("port");
        // Inbound traffic does not refresh (REQ-6 only requires outbound).
        assert!(n.inbound(s, p, 100 * SEC).is_ok());
        assert_eq!(n.inbound(s, p, 121 * SEC), Err(Refused::NoMapping));
        assert_eq!(n.mappings(), 0);
        // Refreshed by outbound, it lives on.
        let p = n.outbound(inside, s, 200 * SEC, &mut seq()).expect("port");
        n.outbound(inside, s, 300 * SEC, &mut seq()).expect("port");
        assert!(n.inbound(s, p, 410 * SEC).is_ok());
    }

    #[test]
    fn admitted_senders_get_replies_from_the_same_port() {
        let inside = ep("10.0.0.2:5000");
        let (s, other) = (ep("198.18.1.1:3478"), ep("198.18.7.7:4000"));
        let mut n = nat(Mapping::Apdm, Filtering::Eif, PortAssignment::Random);
        let mut r = seq();
        let p = n.outbound(inside, s, 0, &mut r).expect("port");
        assert_eq!(n.inbound(other, p, 1), Ok(inside));
        assert_eq!(n.outbound(inside, other, 2, &mut r), Some(p), "the reply uses the admitting mapping");
        let fresh = ep("198.18.8.8:4000");
        assert_ne!(n.outbound(inside, fresh, 3, &mut r), Some(p), "a new destination gets a new mapping");
    }

    #[test]
    fn a_port_mapping_admits_anyone_never_expires_and_carries_every_destination() {
        let inside = ep("10.0.0.2:5000");
        let mut n = nat(Mapping::Apdm, Filtering::Apdf, PortAssignment::Random);
        let mut r = seq();
        let p = n.add_forward(inside, 0, &mut r).expect("port");
        assert_eq!(p, 5000, "the internal port when free");
        assert_eq!(n.add_forward(inside, 1, &mut r), Some(p), "asked again: the same mapping");
        assert_eq!(n.inbound(ep("198.18.9.9:1"), p, 3600 * SEC), Ok(inside), "a stranger, an hour later");
        for (i, dest) in ["198.18.1.1:1", "198.18.1.1:2", "198.18.7.7:3"].into_iter().enumerate() {
            assert_eq!(n.outbound(inside, ep(dest), i as u64 * SEC, &mut r), Some(p), "{dest}");
        }
        // Without it, this NAT maps per destination and filters per endpoint.
        let other = ep("10.0.0.3:5001");
        let q = n.outbound(other, ep("198.18.1.1:1"), 0, &mut r).expect("port");
        assert_eq!(n.inbound(ep("198.18.9.9:1"), q, 1), Err(Refused::Filtered));
        assert_ne!(n.outbound(other, ep("198.18.1.1:2"), 0, &mut r), Some(q));
    }

    #[test]
    fn a_full_table_drops_what_needs_a_new_mapping_until_one_expires() {
        let mut n = nat(Mapping::Apdm, Filtering::Apdf, PortAssignment::Random);
        n.behaviour.max_mappings = Some(3);
        let mut r = seq();
        let inside = ep("10.0.0.2:5000");
        let d = |p: u16| SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), p);
        let ports: Vec<Option<u16>> = (1..=4).map(|p| n.outbound(inside, d(p), 0, &mut r)).collect();
        assert!(ports[..3].iter().all(Option::is_some) && ports[3].is_none(), "{ports:?}");
        assert_eq!(n.table_full, 1);
        assert_eq!(n.outbound(inside, d(1), SEC, &mut r), ports[0], "an existing mapping still carries");
        // Two expire (the first was refreshed at 1 s), making room.
        assert!(n.outbound(inside, d(4), 120 * SEC, &mut r).is_some());
        assert_eq!(n.mappings(), 2);
    }

    #[test]
    fn a_router_that_takes_refused_packets_moves_a_later_flow_to_that_sender() {
        let inside = ep("10.0.0.2:5000");
        let (stun, stranger) = (ep("198.18.1.1:3478"), ep("198.18.7.7:4000"));
        for local in [false, true] {
            let mut n = nat(Mapping::Eim, Filtering::Apdf, PortAssignment::Preserving);
            n.behaviour.local_conntrack = local;
            let mut r = seq();
            let p = n.outbound(inside, stun, 0, &mut r).expect("port");
            assert_eq!(n.inbound(stranger, p, 1), Err(Refused::Filtered), "unsolicited");
            let q = n.outbound(inside, stranger, 2, &mut r).expect("port");
            assert_eq!(q == p, !local, "local_conntrack={local}: the flow to the stranger keeps the port");
            assert_eq!(n.remapped, u64::from(local));
            // Only that sender: another still sees the one port.
            assert_eq!(n.outbound(inside, ep("198.18.8.8:1"), 3, &mut r), Some(p));
        }
    }

    #[test]
    fn ports_are_assigned_as_configured() {
        let mut r = seq();
        let mut n = nat(Mapping::Apdm, Filtering::Apdf, PortAssignment::Sequential);
        let a = n.outbound(ep("10.0.0.2:5000"), ep("198.18.1.1:1"), 0, &mut r).expect("port");
        let b = n.outbound(ep("10.0.0.2:5000"), ep("198.18.1.1:2"), 0, &mut r).expect("port");
        assert_eq!(b, a + 1);
        let mut n = nat(Mapping::Eim, Filtering::Apdf, PortAssignment::Preserving);
        assert_eq!(n.outbound(ep("10.0.0.2:5000"), ep("198.18.1.1:1"), 0, &mut r), Some(5000));
        let other = n.outbound(ep("10.0.0.3:5000"), ep("198.18.1.1:1"), 0, &mut r).expect("port");
        assert_ne!(other, 5000, "two internal endpoints never share an external port");
        let mut n = nat(Mapping::Apdm, Filtering::Apdf, PortAssignment::Random);
        let ports: std::collections::BTreeSet<u16> = (0..50u16)
            .map(|i| n.outbound(ep("10.0.0.2:5000"), SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), i), 0, &mut r))
            .map(|p| p.expect("port"))
            .collect();
        assert_eq!(ports.len(), 50);
        assert!(ports.iter().any(|&p| p > 20_000), "random ports spread over the range");
    }
}
