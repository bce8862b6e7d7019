//! Which pairs of sites can connect, and how: worked out by running the
//! NAT model ([`crate::nat`]) on the exchange the engine makes, not read
//! from a table.
//!
//! Each site is a host behind zero, one or two NATs (a home router, and a
//! carrier-grade NAT above it). Both sites ask a STUN server where they are
//! seen from. Then, as the engine does:
//!
//! * **single token** — the invitee checks the inviter's server-reflexive
//!   address, round after round; the inviter answers whatever arrives and
//!   sends a triggered check back to where it came from;
//! * **RSVP** — both sides check each other's server-reflexive address at
//!   once, and every address a check arrived from is checked back.
//!
//! * **prediction / birthday** — when one side's NAT maps per destination
//!   (hard) and the other's does not (easy), as each classifies itself from
//!   two STUN servers: a socket of the hard side's pool checks the easy
//!   side's reflexive address, and the easy side's probe that guessed the
//!   port this made arrives there. Whether a guess lands is chance (the
//!   engine's odds, `node/src/ice/probe.rs`); whether a landed guess gets
//!   through both NATs is what this decides.
//!
//! A check succeeds when it arrives and its answer comes back from the
//! address it was sent to (ICE's symmetric check). The simulated NAT matrix
//! agrees with this cell by cell (`tests/nat_matrix.rs`).

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use convoke_node::nat::{Observation, classify};
use convoke_node::token::{NatInfo, PortAllocation};

use crate::nat::{Behaviour, Nat};

/// The furthest step of the ladder a pair needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reach {
    /// The invitation alone connects.
    SingleToken,
    /// Both sides must check at once (an RSVP).
    Rsvp,
    /// After the RSVP, the easy side checks the hard side's predicted ports.
    PortPrediction,
    /// After the RSVP, the easy side probes random ports of the hard side's
    /// pool of mappings.
    Birthday,
    /// Nothing direct connects them (both NATs map per destination): a relay
    /// would be needed.
    Never,
}

impl Reach {
    /// The phase name used in reports and matrices.
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::SingleToken => "single-token",
            Reach::Rsvp => "rsvp",
            Reach::PortPrediction => "predicted",
            Reach::Birthday => "birthday",
            Reach::Never => "failed",
        }
    }
}

struct Site {
    /// Outermost last.
    chain: Vec<Nat>,
    host: SocketAddrV4,
}

/// Checks per address and round, as many rounds as it takes for the
/// filters' state to settle.
const ROUNDS: usize = 4;

impl Site {
    fn new(behaviours: &[Behaviour], index: u8) -> Site {
        if behaviours.is_empty() {
            return Site { chain: Vec::new(), host: SocketAddrV4::new(Ipv4Addr::new(198, 18, 10, index), 4433) };
        }
        let chain = behaviours
            .iter()
            .enumerate()
            .map(|(k, b)| {
                let outer = k + 1 == behaviours.len();
                let ip = if outer { Ipv4Addr::new(198, 18, 20, index) } else { Ipv4Addr::new(100, 64, k as u8, index) };
                Nat::new(*b, ip)
            })
            .collect();
        Site { chain, host: SocketAddrV4::new(Ipv4Addr::new(10, 0, index, 2), 4433) }
    }

    /// Sends to `to`: the source address the internet sees.
    fn send(&mut self, to: SocketAddrV4, random: &mut dyn FnMut() -> u32) -> Option<SocketAddrV4> {
        let mut src = self.host;
        for nat in &mut self.chain {
            let port = nat.outbound(src, to, 0, random)?;
            src = SocketAddrV4::new(nat.external, port);
        }
        Some(src)
    }

    /// Whether a packet from `from` to our external address `at` reaches
    /// the host.
    fn receive(&mut self, from: SocketAddrV4, at: SocketAddrV4) -> bool {
        let mut at = at;
        for nat in self.chain.iter_mut().rev() {
            if *at.ip() != nat.external {
                return false;
            }
            match nat.inbound(from, at.port(), 0) {
                Ok(inner) => at = inner,
                Err(_) => return false,
            }
        }
        at == self.host
    }

    /// Asks STUN server `k` (0 or 1) where we are seen from.
    fn ask(&mut self, k: u8, random: &mut dyn FnMut() -> u32) -> Option<SocketAddrV4> {
        let stun = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1 + k), 3478);
        let seen = self.send(stun, random)?;
        self.receive(stun, seen).then_some(seen)
    }

    /// Asks the first STUN server where we are seen from.
    fn reflexive(&mut self, random: &mut dyn FnMut() -> u32) -> Option<SocketAddrV4> {
        self.ask(0, random)
    }

    /// How the host classifies its NAT from two STUN servers' answers, as
    /// the engine does ([`convoke_node::nat::classify`]).
    fn classify(&mut self, random: &mut dyn FnMut() -> u32) -> Option<NatInfo> {
        let mut obs = Vec::new();
        for k in 0..2 {
            let mapped = self.ask(k, random)?;
            let server = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1 + k), 3478);
            obs.push(Observation { server: server.into(), mapped: mapped.into() });
        }
        classify(Some(self.host.port()), &[IpAddr::V4(*self.host.ip())], &obs)
    }
}

/// One check from `from` to `to`'s address `dst`: whether it succeeded,
/// and the source `to` saw it from (when it arrived).
fn check(
    from: &mut Site,
    to: &mut Site,
    dst: SocketAddrV4,
    random: &mut dyn FnMut() -> u32,
) -> (bool, Option<SocketAddrV4>) {
    let Some(src) = from.send(dst, random) else { return (false, None) };
    if !to.receive(src, dst) {
        return (false, None);
    }
    let answered = to.send(src, random).is_some_and(|r| r == dst && from.receive(r, src));
    (answered, Some(src))
}

/// Rounds of checks from both sides (or only `b`'s when `one_way`) to the
/// addresses each knows of the other, learning the sources checks come
/// from. Whether any check succeeded.
fn exchange(a: &mut Site, b: &mut Site, one_way: bool, random: &mut dyn FnMut() -> u32) -> bool {
    let (Some(ra), Some(rb)) = (a.reflexive(random), b.reflexive(random)) else { return false };
    // What each side checks: the other's reflexive address (from its
    // token) when it has the token, plus sources checks arrived from.
    let mut a_checks: Vec<SocketAddrV4> = if one_way { Vec::new() } else { vec![rb] };
    let mut b_checks: Vec<SocketAddrV4> = vec![ra];
    for _ in 0..ROUNDS {
        if sweep(b, a, &b_checks, &mut a_checks, random) || sweep(a, b, &a_checks, &mut b_checks, random) {
            return true;
        }
    }
    false
}

/// One round of `from`'s checks to each of `dsts`: whether one succeeded.
/// Where a check arrived from is added to what `to` checks back.
fn sweep(
    from: &mut Site,
    to: &mut Site,
    dsts: &[SocketAddrV4],
    back: &mut Vec<SocketAddrV4>,
    random: &mut dyn FnMut() -> u32,
) -> bool {
    for &dst in dsts {
        let (ok, seen) = check(from, to, dst, random);
        if ok {
            return true;
        }
        if let Some(s) = seen
            && !back.contains(&s)
        {
            back.push(s);
        }
    }
    false
}

/// How an invitee behind `invitee` (NATs from the host outward; empty for
/// a public host) reaches an inviter behind `inviter`.
pub fn reach(inviter: &[Behaviour], invitee: &[Behaviour]) -> Reach {
    let mut x = 0x2545_f491_u32;
    let mut random = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let (mut a, mut b) = (Site::new(inviter, 1), Site::new(invitee, 2));
    if exchange(&mut a, &mut b, true, &mut random) {
        return Reach::SingleToken;
    }
    let (Some(na), Some(nb)) = (a.classify(&mut random), b.classify(&mut random)) else { return Reach::Never };
    let probing = na.is_hard() != nb.is_hard() && na.is_translated() && nb.is_translated();
    if probing && na.ports == Some(PortAllocation::Sequential) {
        // An easy invitee probes a sequential inviter's predicted ports while
        // it waits for the RSVP to be carried (the engine's spray starts
        // when it offers the RSVP): its NAT then lets in the inviter's next
        // mappings, and the RSVP round's own checks come from one of them.
        if let (Some(ra), Some(delta)) = (a.reflexive(&mut random), na.delta) {
            for k in 1..=32i32 {
                for sign in [1, -1] {
                    let port = i32::from(ra.port()) + sign * k * delta.abs();
                    if let Ok(port) = u16::try_from(port) {
                        let _ = b.send(SocketAddrV4::new(*ra.ip(), port), &mut random);
                    }
                }
            }
        }
    }
    // The RSVP comes later, on the same NAT state, as it does in the engine.
    if exchange(&mut a, &mut b, false, &mut random) {
        return Reach::Rsvp;
    }
    if !probing {
        return Reach::Never;
    }
    let ((hard, hard_nat), easy) = if na.is_hard() { ((&mut a, na), &mut b) } else { ((&mut b, nb), &mut a) };
    let step = if hard_nat.ports == Some(PortAllocation::Sequential) { Reach::PortPrediction } else { Reach::Birthday };
    if lucky_probe(hard, easy, &mut random) { step } else { Reach::Never }
}

/// A pool socket of `hard` (a new port on its host) checks `easy`'s
/// reflexive address; `easy`'s probe aimed at the port that made (a guess
/// that landed) must reach that socket, and the socket's answer must come
/// back through `easy`'s filter.
fn lucky_probe(hard: &mut Site, easy: &mut Site, random: &mut dyn FnMut() -> u32) -> bool {
    let Some(target) = easy.reflexive(random) else { return false };
    let main = hard.host;
    hard.host = SocketAddrV4::new(*main.ip(), main.port() + 1);
    let ok = (|| {
        let pool = hard.send(target, random)?;
        // The pool's own check is dropped at the easy side's filter (it has
        // not sent there yet); the easy side's probe then lands on it.
        let probe_src = easy.send(pool, random)?;
        if !hard.receive(probe_src, pool) {
            return Some(false);
        }
        let answer = hard.send(probe_src, random)?;
        Some(answer == pool && easy.receive(answer, probe_src))
    })()
    .unwrap_or(false);
    hard.host = main;
    ok
}

/// [`reach`] for every pair of `chains`: `[inviter][invitee]`.
pub fn matrix(chains: &[Vec<Behaviour>]) -> Vec<Vec<Reach>> {
    chains.iter().map(|a| chains.iter().map(|b| reach(a, b)).collect()).collect()
}
