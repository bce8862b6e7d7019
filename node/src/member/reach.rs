//! Whether this member can serve as a super-peer: electing ourselves from
//! what we learn of our own reachability.
//!
//! A hierarchy's super-peers must be reachable by leaves that dial their
//! cards with no RSVP: a public address, a port the router mapped for us,
//! or a NAT whose filter lets a new peer in. The first two the member knows
//! from its NAT classification and its candidates. The filter it cannot
//! classify (that needs a STUN server answering from a second address,
//! RFC 5780's CHANGE-REQUEST, which plain servers and members do not
//! offer), so it learns it the way libp2p's AutoNAT does, from peers that
//! dial it: a session on our card that came up on the invitee's checks
//! alone ([`Via::SingleToken`]), from an address on the internet we have
//! not sent to lately, is traffic our NAT let in unasked. Two such peers at
//! different addresses and the member elects itself
//! ([`convoke_overlay::Overlay::elect`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::ice::Via;
use crate::token::{Invitation, NatInfo, NatMapping};

/// Whether a member serves as a super-peer (a hub, under a star).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SuperPeer {
    /// Under a hierarchy, when it finds itself reachable (see the module
    /// docs), stepping down when it moves until its new network
    /// qualifies; never a hub.
    #[default]
    Auto,
    /// From the start (an operator's machine on a public address).
    Always,
    /// Never, whatever it finds (a laptop that moves, a metered link).
    Never,
}

impl std::str::FromStr for SuperPeer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "always" | "yes" | "true" => Ok(Self::Always),
            "never" | "no" | "false" => Ok(Self::Never),
            _ => Err(format!("`{s}` is not one of auto, always, never")),
        }
    }
}

impl std::fmt::Display for SuperPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Always => "always",
            Self::Never => "never",
        })
    }
}

/// Peers reaching our card unasked, at this many addresses, elect us.
pub const REACHED_UNASKED: usize = 2;

/// How long an address we sent to may still get through our filter
/// (RFC 4787 asks NATs to keep UDP mappings at least 2 minutes; many keep
/// them longer).
const SENT_MEMORY: Duration = Duration::from_secs(300);

/// Addresses remembered as sent to, at most (the oldest go first).
const SENT_MAX: usize = 1024;

/// What we learned of our reachability.
#[derive(Debug, Default)]
pub(super) struct Reachability {
    /// Addresses we sent to (dials, links), and when last.
    sent_to: BTreeMap<IpAddr, Instant>,
    /// Addresses whose checks reached our card unasked.
    reached_from: Vec<IpAddr>,
    /// We moved when the host had classified our NAT this many times
    /// ([`crate::host::Host::nat_rounds`]), and it has not classified it
    /// since: the classification we hold describes the old network.
    moved_at_round: Option<u64>,
}

impl Reachability {
    /// We dial `invitation`: our checks go to its addresses.
    pub(super) fn dialing(&mut self, invitation: &Invitation, now: Instant) {
        for c in &invitation.token().body.connection_info.ice_candidates {
            self.sent(c.address.ip(), now);
        }
    }

    /// We send to `ip` (a link is up with a peer there).
    pub(super) fn sent(&mut self, ip: IpAddr, now: Instant) {
        self.sent_to.insert(ip, now);
        if self.sent_to.len() > SENT_MAX {
            self.sent_to.retain(|_, t| now.saturating_duration_since(*t) < SENT_MEMORY);
            while self.sent_to.len() > SENT_MAX {
                let oldest = self.sent_to.iter().min_by_key(|(_, t)| **t).map(|(ip, _)| *ip);
                oldest.map(|ip| self.sent_to.remove(&ip));
            }
        }
    }

    /// A session came up with a peer at `ip`: evidence when it was on our
    /// card (`inviter`), on its checks alone, from the internet, and we had
    /// not sent there lately.
    pub(super) fn established(&mut self, ip: IpAddr, inviter: bool, via: Via, now: Instant) {
        let recent = self.sent_to.get(&ip).is_some_and(|t| now.saturating_duration_since(*t) < SENT_MEMORY);
        if inviter
            && via == Via::SingleToken
            && !recent
            && super::is_global(ip)
            && self.reached_from.len() < REACHED_UNASKED
            && !self.reached_from.contains(&ip)
        {
            self.reached_from.push(ip);
        }
        self.sent(ip, now);
    }

    /// Our addresses changed when the host had classified our NAT
    /// `nat_rounds` times: what peers reaching us told of our filter, and
    /// the NAT classification we hold, were the old network's. Until a
    /// later round classifies the new NAT ([`Reachability::nat_rounds`])
    /// only new peers reaching us unasked count.
    pub(super) fn moved(&mut self, nat_rounds: u64) {
        self.reached_from.clear();
        self.sent_to.clear();
        self.moved_at_round = Some(nat_rounds);
    }

    /// The host has classified our NAT `nat_rounds` times so far.
    pub(super) fn nat_rounds(&mut self, nat_rounds: u64) {
        if self.moved_at_round.is_some_and(|r| nat_rounds > r) {
            self.moved_at_round = None;
        }
    }

    /// Whether we qualify: no NAT in front of an address on the internet
    /// (`global`: one of our candidates is), or a mapped port (`nat` as
    /// our tokens say it), or peers reached us unasked. (Members on one
    /// LAN see no NAT between them, which says nothing of the internet.)
    pub(super) fn qualifies(&self, nat: Option<NatInfo>, global: bool) -> bool {
        let nat = nat.filter(|_| self.moved_at_round.is_none());
        (global && nat.is_some_and(|n| n.mapping == NatMapping::None)) || self.reached_from.len() >= REACHED_UNASKED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn peers_reaching_our_card_unasked_elect_us() {
        let now = Instant::now();
        let mut r = Reachability::default();
        let nat = Some(NatInfo { delta: None, mapping: NatMapping::Independent, ports: None });
        r.established(ip("198.18.0.7"), true, Via::SingleToken, now);
        assert!(!r.qualifies(nat, true), "one peer is not enough");
        // Not evidence: an RSVP, our own dial, a private address, an
        // address we sent to a minute ago.
        r.established(ip("198.18.0.8"), true, Via::Rsvp, now);
        r.established(ip("198.18.0.9"), false, Via::SingleToken, now);
        r.established(ip("10.0.0.9"), true, Via::SingleToken, now);
        r.sent(ip("198.18.0.10"), now);
        r.established(ip("198.18.0.10"), true, Via::SingleToken, now + Duration::from_secs(60));
        r.established(ip("198.18.0.7"), true, Via::SingleToken, now);
        assert!(!r.qualifies(nat, true));
        // Sent to long ago: the filter has forgotten it.
        r.established(ip("198.18.0.8"), true, Via::SingleToken, now + SENT_MEMORY);
        assert!(r.qualifies(nat, false));
    }

    #[test]
    fn a_move_forgets_the_old_networks_evidence_until_the_new_nat_is_known() {
        let now = Instant::now();
        let mut r = Reachability::default();
        let public = Some(NatInfo { delta: None, mapping: NatMapping::None, ports: None });
        r.established(ip("198.18.0.7"), true, Via::SingleToken, now);
        r.established(ip("198.18.0.8"), true, Via::SingleToken, now);
        assert!(r.qualifies(None, false));
        r.moved(3);
        assert!(!r.qualifies(None, false), "peers that reached the old address say nothing of the new filter");
        assert!(!r.qualifies(public, true), "the old network's classification");
        r.nat_rounds(3);
        assert!(!r.qualifies(public, true), "no round since the move");
        r.nat_rounds(4);
        assert!(r.qualifies(public, true));
        // Evidence gathered after the move counts again.
        r.moved(4);
        r.established(ip("198.18.0.7"), true, Via::SingleToken, now);
        r.established(ip("198.18.0.9"), true, Via::SingleToken, now);
        assert!(r.qualifies(None, false));
    }

    #[test]
    fn a_public_address_or_a_mapped_port_elects_us_at_once() {
        let r = Reachability::default();
        assert!(r.qualifies(Some(NatInfo::PORT_MAPPED), true));
        assert!(!r.qualifies(Some(NatInfo::PORT_MAPPED), false), "no NAT between members of a LAN");
        assert!(!r.qualifies(None, true));
        assert!(!r.qualifies(Some(NatInfo { delta: None, mapping: NatMapping::Dependent, ports: None }), true));
    }

    #[test]
    fn super_peer_settings_parse() {
        assert_eq!("auto".parse::<SuperPeer>(), Ok(SuperPeer::Auto));
        assert_eq!("always".parse::<SuperPeer>(), Ok(SuperPeer::Always));
        assert_eq!("never".parse::<SuperPeer>(), Ok(SuperPeer::Never));
        assert!("sometimes".parse::<SuperPeer>().expect_err("not a setting").contains("auto, always, never"));
    }

    #[test]
    fn sent_addresses_stay_bounded() {
        let now = Instant::now();
        let mut r = Reachability::default();
        for i in 0..(SENT_MAX as u32 + 10) {
            r.sent(IpAddr::from(i.to_be_bytes()), now + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(r.sent_to.len(), SENT_MAX);
        assert!(!r.sent_to.contains_key(&IpAddr::from(0u32.to_be_bytes())), "the oldest went first");
    }
}
