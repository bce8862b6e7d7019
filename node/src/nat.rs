//! Classifying our own NAT from STUN answers (the idea of RFC 5780's
//! behaviour discovery, with plain Binding requests to several servers).
//!
//! The host asks every configured STUN server where it sees us, in a known
//! order, from one socket. Then:
//!
//! * the reflexive address is one of our own addresses → no NAT;
//! * two servers at different IP addresses see the same address → the
//!   mapping is endpoint-independent ("easy": a new peer reaches the
//!   address in our token, if our filter lets it in);
//! * they see different ports → the mapping depends on the destination
//!   ("hard"). The ports, in the order the requests left, tell how new ports
//!   are chosen: the same step between each → sequential with that step
//!   (predictable); the first one equal to our socket's port → preserving;
//!   anything else → random.
//!
//! One server, or servers sharing an address, cannot tell mappings apart:
//! the classification is then unknown (`None`), and peers fall back to
//! waiting for silence before asking for an RSVP.
//!
//! Filtering is not classified: that needs a server that answers from a
//! second address (RFC 5780 CHANGE-REQUEST), which plain STUN servers and
//! Convoke nodes do not do. The reach ladder does not need it: a hard
//! mapping is what rules out the single token, and the RSVP round settles
//! the rest.

use std::net::{IpAddr, SocketAddr};

use crate::token::{NatInfo, NatMapping, PortAllocation, limits};

/// One STUN answer: which server, where it saw us. Kept in the order the
/// requests were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The STUN server.
    pub server: SocketAddr,
    /// Our address as it saw us.
    pub mapped: SocketAddr,
}

/// Most step between consecutive ports that still counts as sequential
/// allocation; a random allocator lands this close with probability about
/// 2·64/64,512 per pair of mappings.
pub const MAX_SEQUENTIAL_STEP: i32 = 64;

/// Classifies our NAT from `observations` (in request order) of the socket
/// bound at `local_port`, with `local_ips` our own interface addresses.
/// `None` when the answers cannot tell (see the module docs).
pub fn classify(local_port: Option<u16>, local_ips: &[IpAddr], observations: &[Observation]) -> Option<NatInfo> {
    // One address family: a public IPv6 answer beside a translated IPv4
    // one says nothing of either NAT. IPv4 first (the family tokens lead
    // with behind NATs).
    let v4: Vec<Observation> = observations.iter().filter(|o| o.mapped.is_ipv4()).copied().collect();
    let observations: &[Observation] = if v4.is_empty() { observations } else { &v4 };
    let first = observations.first()?;
    let own = |a: &SocketAddr| local_ips.contains(&a.ip()) && local_port.is_none_or(|p| p == a.port());
    if observations.iter().all(|o| own(&o.mapped)) {
        return Some(NatInfo { delta: None, mapping: NatMapping::None, ports: None });
    }
    // Only answers from distinct server addresses tell mappings apart: a
    // mapping may depend on the destination's address alone.
    let mut distinct: Vec<&Observation> = Vec::new();
    for o in observations {
        if !distinct.iter().any(|d| d.server.ip() == o.server.ip()) {
            distinct.push(o);
        }
    }
    if distinct.len() < 2 {
        return None;
    }
    let preserving = local_port == Some(first.mapped.port());
    if distinct.iter().all(|o| o.mapped == first.mapped) {
        let ports = preserving.then_some(PortAllocation::Preserving);
        return Some(NatInfo { delta: None, mapping: NatMapping::Independent, ports });
    }
    let ports: Vec<i32> = distinct.iter().map(|o| i32::from(o.mapped.port())).collect();
    let step = ports[1] - ports[0];
    let sequential = step != 0
        && step.abs() <= MAX_SEQUENTIAL_STEP.min(limits::MAX_PORT_DELTA)
        && ports.windows(2).all(|w| w[1] - w[0] == step);
    let (ports, delta) = if sequential {
        (PortAllocation::Sequential, Some(step))
    } else if preserving {
        (PortAllocation::Preserving, None)
    } else {
        (PortAllocation::Random, None)
    };
    Some(NatInfo { delta, mapping: NatMapping::Dependent, ports: Some(ports) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(server: &str, mapped: &str) -> Observation {
        Observation { server: server.parse().expect("addr"), mapped: mapped.parse().expect("addr") }
    }

    const LAN: &[IpAddr] = &[IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2))];

    #[test]
    fn public_hosts_see_themselves() {
        let ips = [IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 9))];
        let o = [obs("198.18.0.1:3478", "198.18.0.9:4433")];
        let c = classify(Some(4433), &ips, &o).expect("known");
        assert_eq!(c.mapping, NatMapping::None);
        assert!(!c.is_translated());
        // A different port on our own address is a NAT on the same host.
        assert_eq!(classify(Some(4433), &ips, &[obs("198.18.0.1:3478", "198.18.0.9:5000")]), None);
    }

    #[test]
    fn families_are_not_mixed() {
        let o = [obs("[2001:db8::1]:3478", "[2001:db8::9]:4433"), obs("198.18.0.1:3478", "198.18.5.5:4433")];
        // One IPv4 server: unknown, not "dependent" for the IPv6 answer.
        assert_eq!(classify(Some(4433), LAN, &o), None);
    }

    #[test]
    fn one_server_cannot_tell_mappings_apart() {
        assert_eq!(classify(Some(4433), LAN, &[obs("198.18.0.1:3478", "198.18.5.5:4433")]), None);
        let same_ip = [obs("198.18.0.1:3478", "198.18.5.5:4433"), obs("198.18.0.1:3479", "198.18.5.5:4433")];
        assert_eq!(classify(Some(4433), LAN, &same_ip), None);
        assert_eq!(classify(Some(4433), LAN, &[]), None);
    }

    #[test]
    fn the_same_address_from_two_servers_is_an_independent_mapping() {
        let o = [obs("198.18.0.1:3478", "198.18.5.5:4433"), obs("198.18.0.2:3478", "198.18.5.5:4433")];
        let c = classify(Some(4433), LAN, &o).expect("known");
        assert_eq!(
            c,
            NatInfo { delta: None, mapping: NatMapping::Independent, ports: Some(PortAllocation::Preserving) }
        );
        assert!(!c.is_hard());
        let o = [obs("198.18.0.1:3478", "198.18.5.5:7000"), obs("198.18.0.2:3478", "198.18.5.5:7000")];
        assert_eq!(classify(Some(4433), LAN, &o).expect("known").ports, None);
    }

    #[test]
    fn ports_tell_how_a_dependent_mapping_allocates() {
        let seq = [
            obs("198.18.0.1:3478", "198.18.5.5:20001"),
            obs("198.18.0.2:3478", "198.18.5.5:20003"),
            obs("198.18.0.3:3478", "198.18.5.5:20005"),
        ];
        let c = classify(Some(4433), LAN, &seq).expect("known");
        assert_eq!(
            c,
            NatInfo { delta: Some(2), mapping: NatMapping::Dependent, ports: Some(PortAllocation::Sequential) }
        );
        assert!(c.is_hard());
        let down = [obs("198.18.0.1:3478", "198.18.5.5:20001"), obs("198.18.0.2:3478", "198.18.5.5:20000")];
        assert_eq!(classify(Some(4433), LAN, &down).expect("known").delta, Some(-1));
        // Uneven steps are not sequential.
        let uneven = [
            obs("198.18.0.1:3478", "198.18.5.5:20001"),
            obs("198.18.0.2:3478", "198.18.5.5:20003"),
            obs("198.18.0.3:3478", "198.18.5.5:20009"),
        ];
        assert_eq!(classify(Some(4433), LAN, &uneven).expect("known").ports, Some(PortAllocation::Random));
        let preserved = [obs("198.18.0.1:3478", "198.18.5.5:4433"), obs("198.18.0.2:3478", "198.18.5.5:40123")];
        assert_eq!(classify(Some(4433), LAN, &preserved).expect("known").ports, Some(PortAllocation::Preserving));
        let random = [obs("198.18.0.1:3478", "198.18.5.5:31000"), obs("198.18.0.2:3478", "198.18.5.5:52000")];
        let c = classify(Some(4433), LAN, &random).expect("known");
        assert_eq!((c.ports, c.delta), (Some(PortAllocation::Random), None));
    }
}
