//! Our own candidates, and which of them go into a token.
//!
//! A machine may have dozens of interface addresses (containers, VPNs,
//! IPv6 privacy addresses) while a token carries at most
//! [`limits::MAX_CANDIDATES`]: one that carries more is refused by its
//! reader. [`LocalCandidates::select`] is the one place that decides which
//! addresses are offered, for every invitation, card and RSVP.

use std::net::{IpAddr, SocketAddr};

use crate::token::{Candidate, CandidateKind, limits};

/// Server-reflexive addresses kept (one per STUN server and family is
/// plenty; more are the same NAT seen again).
const MAX_SRFLX: usize = 4;
/// Peer-reflexive addresses kept: ports a symmetric NAT gave us towards
/// peers. The first few tell a peer's ICE what our NAT does; the rest add
/// nothing.
const MAX_PRFLX: usize = 4;

/// How useful a host address is to a peer somewhere else on the internet:
/// lower is better.
fn host_rank(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                6
            } else if v4.is_link_local() {
                5
            } else if v4.is_private() || (o[0] == 100 && (64..128).contains(&o[1])) {
                // RFC 1918 and the shared address space (RFC 6598): same
                // site, or behind the same carrier-grade NAT.
                2
            } else {
                0
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                6
            } else if s[0] & 0xffc0 == 0xfe80 {
                5
            } else if s[0] & 0xfe00 == 0xfc00 {
                3 // unique local
            } else {
                1
            }
        }
    }
}

/// The addresses we can be reached at: interface addresses (from the
/// driver), server-reflexive ones (STUN answers), peer-reflexive ones
/// (what peers' checks told us) and a port our router forwards to us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalCandidates {
    /// A public address:port the gateway forwards to our socket (PCP,
    /// NAT-PMP, UPnP IGD). Anyone can reach it unsolicited, so it leads
    /// the reflexive addresses.
    mapped: Option<SocketAddr>,
    host: Vec<SocketAddr>,
    srflx: Vec<SocketAddr>,
    prflx: Vec<SocketAddr>,
}

impl LocalCandidates {
    /// No addresses yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Candidates on these interface addresses (duplicates ignored).
    pub fn with_hosts(hosts: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut c = Self::new();
        for h in hosts {
            c.add_host(h);
        }
        c
    }

    /// An interface address. Returns whether it was new.
    pub fn add_host(&mut self, addr: SocketAddr) -> bool {
        push_new(&mut self.host, addr, usize::MAX)
    }

    /// The interface addresses.
    pub fn hosts(&self) -> &[SocketAddr] {
        &self.host
    }

    /// Replaces the interface addresses (the machine moved: Wi-Fi changed,
    /// a lease ended, the laptop woke up elsewhere). When the set changed,
    /// the reflexive addresses learned behind the old ones are forgotten
    /// too: they belonged to the old network. Returns whether it changed.
    pub fn set_hosts(&mut self, hosts: Vec<SocketAddr>) -> bool {
        let mut old = self.host.clone();
        let mut new = hosts.clone();
        old.sort_unstable();
        new.sort_unstable();
        new.dedup();
        if old == new {
            return false;
        }
        self.host.clear();
        for h in hosts {
            push_new(&mut self.host, h, usize::MAX);
        }
        self.srflx.clear();
        self.prflx.clear();
        true
    }

    /// Where a STUN server sees us. Returns whether it was new (and kept).
    pub fn add_server_reflexive(&mut self, addr: SocketAddr) -> bool {
        !self.host.contains(&addr) && push_new(&mut self.srflx, addr, MAX_SRFLX)
    }

    /// The address our router forwards to us (a port mapping), or `None`
    /// when the mapping is gone. Returns whether it changed.
    pub fn set_port_mapped(&mut self, addr: Option<SocketAddr>) -> bool {
        let changed = self.mapped != addr;
        self.mapped = addr;
        changed
    }

    /// The address our router forwards to us, if any.
    pub fn port_mapped(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// Where a peer saw our checks come from. Returns whether it was new
    /// (and kept).
    pub fn add_peer_reflexive(&mut self, addr: SocketAddr) -> bool {
        !self.host.contains(&addr) && !self.srflx.contains(&addr) && push_new(&mut self.prflx, addr, MAX_PRFLX)
    }

    /// Every address we know, hosts first (for status pages).
    pub fn all(&self) -> Vec<Candidate> {
        Candidate::list(
            self.host
                .iter()
                .map(|a| (CandidateKind::Host, *a))
                .chain(self.reflexive().map(|a| (CandidateKind::Srflx, a)))
                .chain(self.prflx.iter().map(|a| (CandidateKind::Prflx, *a))),
        )
    }

    /// Whether we know no address at all.
    pub fn is_empty(&self) -> bool {
        self.mapped.is_none() && self.host.is_empty() && self.srflx.is_empty() && self.prflx.is_empty()
    }

    /// The mapped address, then the server-reflexive ones without it. A
    /// mapped address travels as a server-reflexive candidate: to a peer it
    /// is the same thing, a public address of our NAT, only one whose
    /// filter lets everyone in (tokens need no new candidate type).
    fn reflexive(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.mapped.into_iter().chain(self.srflx.iter().copied().filter(move |a| Some(*a) != self.mapped))
    }

    /// What a token offers: at most [`limits::MAX_CANDIDATES`], the most
    /// useful first. Reflexive addresses are what peers behind other NATs
    /// can reach, so they always get their places (a port mapping, up to 4
    /// server- and 4 peer-reflexive); host addresses fill the rest, public ones before
    /// private, unique-local, link-local and loopback ones, alternating
    /// between IPv4 and IPv6 so that neither family crowds the other out.
    pub fn select(&self) -> Vec<Candidate> {
        let reflexive = self.reflexive().count() + self.prflx.len();
        let room = limits::MAX_CANDIDATES.saturating_sub(reflexive);
        let mut v4: Vec<SocketAddr> = self.host.iter().copied().filter(SocketAddr::is_ipv4).collect();
        let mut v6: Vec<SocketAddr> = self.host.iter().copied().filter(SocketAddr::is_ipv6).collect();
        v4.sort_by_key(|a| host_rank(a.ip()));
        v6.sort_by_key(|a| host_rank(a.ip()));
        // Loopback only when there is nothing else to offer.
        if v4.iter().chain(&v6).any(|a| !a.ip().is_loopback()) {
            v4.retain(|a| !a.ip().is_loopback());
            v6.retain(|a| !a.ip().is_loopback());
        }
        // Alternate between the families, each in its own order, starting
        // with the one whose best address is better (IPv4 on a tie).
        let best = |v: &[SocketAddr]| v.first().map_or(u8::MAX, |a| host_rank(a.ip()));
        let mut turn_v4 = best(&v4) <= best(&v6);
        let (mut a4, mut a6) = (v4.into_iter(), v6.into_iter());
        let mut hosts = Vec::with_capacity(room);
        while hosts.len() < room {
            let next = if turn_v4 { a4.next().or_else(|| a6.next()) } else { a6.next().or_else(|| a4.next()) };
            let Some(h) = next else { break };
            hosts.push(h);
            turn_v4 = !turn_v4;
        }
        let mut out: Vec<(CandidateKind, SocketAddr)> = hosts.into_iter().map(|a| (CandidateKind::Host, a)).collect();
        out.extend(self.reflexive().map(|a| (CandidateKind::Srflx, a)));
        out.extend(self.prflx.iter().map(|a| (CandidateKind::Prflx, *a)));
        out.truncate(limits::MAX_CANDIDATES);
        Candidate::list(out)
    }
}

fn push_new(v: &mut Vec<SocketAddr>, addr: SocketAddr, max: usize) -> bool {
    if v.contains(&addr) || v.len() >= max {
        return false;
    }
    v.push(addr);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn forty_interfaces_still_fit_a_token_with_reflexive_addresses_first_in_line() {
        let mut c = LocalCandidates::new();
        for i in 0..20 {
            c.add_host(SocketAddr::from(([10, 0, 0, i + 1], 4433)));
            c.add_host(SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i) + 1], 4433)));
        }
        c.add_host(a("203.0.113.7:4433"));
        assert!(c.add_server_reflexive(a("198.51.100.1:5000")));
        assert!(c.add_peer_reflexive(a("198.51.100.1:5001")));
        let s = c.select();
        assert_eq!(s.len(), limits::MAX_CANDIDATES);
        assert_eq!(s[0].address, a("203.0.113.7:4433"), "the public interface address leads");
        assert!(s.iter().any(|x| x.kind == CandidateKind::Srflx));
        assert!(s.iter().any(|x| x.kind == CandidateKind::Prflx));
        assert!(s.iter().any(|x| x.address.is_ipv6()), "both families offered");
        assert_eq!(c.all().len(), 43);
    }

    #[test]
    fn a_port_mapping_leads_the_reflexive_addresses_once_and_goes_when_lost() {
        let mut c = LocalCandidates::with_hosts([a("10.0.0.2:4433")]);
        assert!(c.add_server_reflexive(a("198.51.100.1:4433")));
        assert!(c.add_server_reflexive(a("198.51.100.1:5000")));
        assert!(c.set_port_mapped(Some(a("198.51.100.1:5000"))));
        assert!(!c.set_port_mapped(Some(a("198.51.100.1:5000"))), "the same mapping again is no change");
        let s = c.select();
        let srflx: Vec<SocketAddr> = s.iter().filter(|x| x.kind == CandidateKind::Srflx).map(|x| x.address).collect();
        assert_eq!(srflx, vec![a("198.51.100.1:5000"), a("198.51.100.1:4433")], "mapped first, STUN's copy not twice");
        assert!(
            s.iter().position(|x| x.address == a("198.51.100.1:5000"))
                < s.iter().position(|x| x.address == a("198.51.100.1:4433")),
            "earlier in the token: a higher local preference"
        );
        assert!(c.set_port_mapped(None));
        assert_eq!(c.port_mapped(), None);
        assert_eq!(c.select().iter().filter(|x| x.kind == CandidateKind::Srflx).count(), 2, "STUN's own answer stays");
    }

    #[test]
    fn loopback_only_when_nothing_else() {
        let c = LocalCandidates::with_hosts([a("127.0.0.1:1"), a("192.168.1.2:1")]);
        assert_eq!(c.select().iter().map(|x| x.address).collect::<Vec<_>>(), vec![a("192.168.1.2:1")]);
        let c = LocalCandidates::with_hosts([a("127.0.0.1:1")]);
        assert_eq!(c.select().len(), 1);
    }

    #[test]
    fn reflexive_addresses_are_bounded_and_not_duplicates_of_hosts() {
        let mut c = LocalCandidates::with_hosts([a("198.51.100.9:1")]);
        assert!(!c.add_server_reflexive(a("198.51.100.9:1")), "a public host is its own reflexive address");
        for p in 0..10 {
            c.add_peer_reflexive(SocketAddr::from(([198, 51, 100, 1], 2000 + p)));
        }
        assert_eq!(c.select().iter().filter(|x| x.kind == CandidateKind::Prflx).count(), MAX_PRFLX);
    }
}
