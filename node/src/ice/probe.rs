//! Port prediction and birthday probing: the reach ladder's step after the
//! RSVP round, for a pair where one NAT maps per destination ("hard") and
//! the other does not ("easy"). Both sides hold each other's tokens by then,
//! and each token says how its author's NAT behaves.
//!
//! * The **hard** side opens a pool of sockets (256; 16 when its ports are
//!   predictable), each sending a check to the easy side's reflexive
//!   address. Each makes a mapping on the hard NAT that admits the easy
//!   side, at a port nobody can know (random) or can guess (sequential).
//! * The **easy** side sends checks from its main socket to ports of the
//!   hard side's address: the predicted ones in order, or random ones. A
//!   check that lands on a pool mapping reaches a pool socket, whose answer
//!   and triggered check come back from the port the easy side just sent
//!   to, which its own filter therefore admits. From there it is plain ICE
//!   on that pair, and the session runs on that pool socket.
//!
//! With k pool mappings and n random probes the chance of a hit is
//! 1 − (1 − k/64,512)^n: 98.2% for k = 256, n = 1,024 (hyperdht's hole
//! puncher runs the same scheme). Probes the easy side sent before the pool
//! opened also count where its NAT still remembers them: a pool check that
//! arrives from one of those ports is let in.
//!
//! Bounds: at most `probe_rate` probing packets per second from the node,
//! whatever the number of attempts probing (they share the rate); at most
//! `probe_budget` probes per spray; at most 1,024 pool sockets open; a pool
//! closed after its lifetime or as soon as a pair is nominated (all but the
//! socket the session uses). Attempts do not wait for a turn: with one
//! probing attempt at a time, a node that invites several people (or is
//! itself waiting for its RSVP to be carried) made each wait out the
//! other's probing, past the peer's patience (measured: 19% of symmetric ×
//! port-restricted joins failed at N = 400; with the shared rate, none).
//! Pairs where both sides are hard are left to a relay: no guess finds two
//! unknown ports at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::Rng;

use super::attempt::{Attempt, PairState, Probe, ProbePlan, Side};
use super::checks::check_message;
use super::*;
use crate::stun::{BINDING, Class, MessageBuilder, TransactionId};
use crate::token::{CandidateKind, NatInfo, PortAllocation};

/// The pair index a probe's transaction is filed under: its answer makes a
/// new pair rather than finishing an existing one.
pub(super) const SPRAY: usize = usize::MAX;

/// Pool sockets are numbered 1..=MAX_POOL_SOCKET (the main socket is 0).
const MAX_POOL_SOCKET: u16 = 4096;
/// How many sprays at once a spray's deadline allows for (they share the
/// rate, so each takes longer).
const SHARED_SPRAYS: u32 = 4;
/// Pool sockets open at once, over all attempts.
const MAX_OPEN_POOL_SOCKETS: usize = 1024;
/// Pool size when the hard side's ports are predictable.
const PREDICTED_POOL: u16 = 16;
/// How long probing waits once both sides hold the RSVP: the RSVP round's
/// own checks connect within a few round trips where they can (a hard
/// invitee with its pool open checks at ICE's pace, at most 3 s apart).
const ROUND_FIRST: Duration = Duration::from_secs(4);
/// How long the easy side listens for answers after its last probe.
const SPRAY_GRACE: Duration = Duration::from_secs(3);
/// The port range NATs hand out (and random probes aim at).
const FIRST_PORT: u32 = 1024;

impl Attempt {
    /// The peer's reflexive address on our main socket's check list.
    fn peer_reflexive(&self) -> Option<SocketAddr> {
        self.pairs
            .iter()
            .filter(|p| p.socket == SocketId::MAIN && p.remote_kind == CandidateKind::Srflx)
            .max_by_key(|p| p.remote_priority)
            .map(|p| p.remote)
    }
}

/// The probing plan for a pair of NATs, from our side: `None` when both are
/// easy (the RSVP round does it), both hard (a relay's job) or unknown.
fn plan(ours: Option<NatInfo>, theirs: Option<NatInfo>, peer: SocketAddr, pool_size: u16) -> Option<(ProbePlan, Via)> {
    let (ours, theirs) = (ours?, theirs?);
    // Both easy: the RSVP round does it. Both hard: no guess finds two
    // unknown ports at once. One side public: its own checks reach the
    // other, and nothing filters the other's.
    if ours.is_hard() == theirs.is_hard() || !ours.is_translated() || !theirs.is_translated() {
        return None;
    }
    if ours.is_hard() {
        let predictable = ours.ports == Some(PortAllocation::Sequential);
        let size = if predictable { pool_size.min(PREDICTED_POOL) } else { pool_size };
        let via = if predictable { Via::PortPrediction } else { Via::Birthday };
        return Some((ProbePlan::Pool { target: peer, size, opened: 0, cursor: 0 }, via));
    }
    match (theirs.ports, theirs.delta) {
        (Some(PortAllocation::Sequential), Some(d)) => {
            // Both directions from the port in the token: the step's sign
            // from two answers is only as good as their order on the wire.
            let step = i32::try_from(d.unsigned_abs()).unwrap_or(i32::MAX).min(crate::token::limits::MAX_PORT_DELTA);
            let next = Some((i32::from(peer.port()), step, 0));
            let plan = ProbePlan::Spray { ip: peer.ip(), next, sent: 0, tids: Vec::new() };
            Some((plan, Via::PortPrediction))
        }
        _ => {
            let plan = ProbePlan::Spray { ip: peer.ip(), next: None, sent: 0, tids: Vec::new() };
            Some((plan, Via::Birthday))
        }
    }
}

impl Endpoint {
    /// Once both sides hold the RSVP: decides whether this pair needs
    /// probing and starts it.
    pub(super) fn plan_probe(&mut self, id: AttemptId, now: Instant) {
        if !self.config.probing || self.config.probe_rate == 0 {
            return;
        }
        let ours = if self.port_mapped { Some(NatInfo::PORT_MAPPED) } else { self.nat };
        let size = self.config.pool_size;
        let Some(a) = self.attempts.get_mut(&id) else { return };
        if a.probe.is_some() || a.state == State::Connected || !a.probing_allowed {
            return;
        }
        let Some(peer) = a.peer_reflexive() else { return };
        // Pools share a bound on open sockets; one that would be too small
        // to be worth it is not opened.
        let planned: usize = self
            .attempts
            .values()
            .filter_map(|b| match &b.probe {
                Some(Probe { plan: ProbePlan::Pool { size, opened, .. }, .. }) => Some(usize::from(size - opened)),
                _ => None,
            })
            .sum();
        let Some(a) = self.attempts.get_mut(&id) else { return };
        let room = MAX_OPEN_POOL_SOCKETS.saturating_sub(self.open_sockets.len() + planned);
        let size = size.min(u16::try_from(room).unwrap_or(u16::MAX));
        let Some((plan, via)) = plan(ours, a.peer_nat, peer, size) else { return };
        if matches!(plan, ProbePlan::Pool { size, .. } if size == 0 || size < PREDICTED_POOL.min(self.config.pool_size))
        {
            return;
        }
        let window_before = a.window_end;
        a.probe = Some(Probe { plan, via, active: false, next_send: now, until: now, last_sent: None, window_before });
        self.stats.probing_started += 1;
        self.dirty.push(id);
        self.activate_probe(id, now);
    }

    fn activate_probe(&mut self, id: AttemptId, now: Instant) {
        let spray = self.spray_duration();
        let lifetime = self.config.pool_lifetime;
        let Some(a) = self.attempts.get_mut(&id) else { return };
        let Some(probe) = a.probe.as_mut() else { return };
        probe.active = true;
        // The RSVP round goes first: probing starts once it had its chance
        // (an invitee's pool opens at once: the round has not begun).
        let at_once = matches!((&probe.plan, &a.side), (ProbePlan::Pool { .. }, Side::Invitee { .. }));
        probe.next_send = if at_once { now } else { now + ROUND_FIRST };
        probe.until = match (&probe.plan, &a.side) {
            // An invitee's pool waits for a person to carry the RSVP.
            (ProbePlan::Pool { .. }, Side::Invitee { .. }) => now + lifetime,
            // An inviter's opens when the easy side is already probing (or
            // has probed: its NAT may still let the pool's checks in).
            (ProbePlan::Pool { .. }, Side::Inviter) => now + ROUND_FIRST + spray.min(lifetime),
            // Ends when its budget is spent; sprays of several attempts share
            // the node's rate, so this bound allows for a few at once.
            (ProbePlan::Spray { .. }, _) => now + ROUND_FIRST + spray * SHARED_SPRAYS,
        };
        // The attempt lives as long as its probing.
        if a.state == State::Checking {
            a.window_end = a.window_end.max(probe.until);
        }
        self.dirty.push(id);
    }

    /// How long a whole spray takes: the budget at the rate, and the grace
    /// for the last answers.
    fn spray_duration(&self) -> Duration {
        Duration::from_secs(1) / self.config.probe_rate.max(1) * self.config.probe_budget + SPRAY_GRACE
    }

    /// Sends the attempt's next probing packet if it is due.
    pub(super) fn run_probe(&mut self, id: AttemptId, now: Instant) {
        let interval = Duration::from_secs(1) / self.config.probe_rate.max(1);
        let (budget, keepalive) = (self.config.probe_budget, self.config.keepalive);
        let Some(a) = self.attempts.get_mut(&id) else { return };
        let Some(probe) = a.probe.as_mut() else { return };
        if !probe.active || a.state == State::Connected {
            return;
        }
        if now >= probe.until {
            self.end_probe(id, false);
            return;
        }
        // The node's probing packets, of every attempt, share one rate;
        // among the probes due, the one that sent least recently goes.
        if now < probe.next_send.max(self.probe_next) {
            probe.next_send = probe.next_send.max(self.probe_next);
            return;
        }
        let mine = probe.last_sent;
        let waited_longer = self.attempts.iter().any(|(other, b)| {
            *other != id
                && b.state != State::Connected
                && b.probe.as_ref().is_some_and(|q| {
                    q.active
                        && q.next_send <= now
                        && now < q.until
                        && q.last_sent.is_none_or(|t| mine.is_some_and(|m| t < m))
                })
        });
        let Some(a) = self.attempts.get_mut(&id) else { return };
        let Some(probe) = a.probe.as_mut() else { return };
        if waited_longer {
            probe.next_send = now + interval;
            return;
        }
        self.probe_next = now + interval;
        probe.last_sent = Some(now);
        match &mut probe.plan {
            ProbePlan::Pool { target, size, opened, cursor } => {
                let target = *target;
                let (i, next) = if *opened < *size {
                    *opened += 1;
                    let next = if *opened == *size { keepalive / u32::from(*size) } else { interval };
                    (None, next.max(interval))
                } else {
                    *cursor += 1;
                    (Some(*cursor), (keepalive / u32::from(*size)).max(interval))
                };
                probe.next_send = now + next;
                let pair = match i {
                    Some(c) => {
                        // The c-th pool pair, round and round (no allocation:
                        // this runs for every refresh packet).
                        let count = a.pairs.iter().filter(|p| p.pool).count();
                        let nth = (0..a.pairs.len()).filter(|&j| a.pairs[j].pool).nth(c % count.max(1));
                        let Some(j) = nth else { return };
                        j
                    }
                    None => {
                        let Some(socket) = self.alloc_socket() else { return };
                        self.stats.pool_sockets_opened += 1;
                        let a = self.attempts.get_mut(&id).expect("present");
                        a.sockets.push(socket);
                        // A pool socket's pair is probing's: the RSVP round
                        // had its chance before the pool opened (or, for an
                        // invitee's pool, whose indications ask no answer,
                        // only a probe can reach it).
                        let j = a.add_remote(socket, target, CandidateKind::Srflx, 0, keepalive);
                        a.pairs[j].pool = true;
                        j
                    }
                };
                let a = self.attempts.get_mut(&id).expect("present");
                if matches!(a.side, Side::Invitee { .. }) {
                    // The inviter has not taken our RSVP yet, so nothing of
                    // its probing can have opened its NAT to us: an
                    // indication (which asks no answer) makes the mapping,
                    // and where the inviter's filter lets it in anyway, the
                    // RSVP round's own checks connect without a pool socket.
                    let (socket, mut t) = (a.pairs[pair].socket, [0u8; 12]);
                    self.rng.fill_bytes(&mut t);
                    let contents = MessageBuilder::new(Class::Indication, BINDING, TransactionId(t)).finish(None, true);
                    // It opens and refreshes our NAT's mapping and need not
                    // arrive: the inviter probes only once it has our RSVP,
                    // and until then it would be unsolicited at its router,
                    // which some routers make a flow of their own of (see
                    // `EndpointConfig::pool_ttl`).
                    let ttl = (self.config.pool_ttl > 0).then_some(self.config.pool_ttl);
                    self.transmits.push_back(Transmit { destination: target, contents, socket, ttl });
                } else if a.pairs[pair].state != PairState::Failed {
                    // The invitee may have probed before we opened the pool:
                    // a check its NAT lets in is answered. Refreshes go as
                    // retransmissions: it is the mapping that matters.
                    self.send_check(id, pair, now);
                }
            }
            ProbePlan::Spray { ip, next, sent, tids } => {
                if *sent >= budget {
                    // Spent: only listening for late answers now.
                    probe.next_send = probe.until;
                    return;
                }
                let port = match next {
                    Some((base, step, k)) => {
                        // base+step, base−step, base+2·step, … within the
                        // port range; bounded by the range's size.
                        let range = FIRST_PORT as i32..=65535;
                        let mut found = None;
                        while found.is_none() && *k < 2 * 65536 {
                            let j = *k as i32;
                            *k += 1;
                            let p = *base + (j / 2 + 1) * *step * if j % 2 == 0 { 1 } else { -1 };
                            found = range.contains(&p).then_some(p as u16);
                        }
                        let Some(port) = found else {
                            // Predicted past both ends: the guess is spent.
                            probe.until = now;
                            return;
                        };
                        port
                    }
                    None => (FIRST_PORT + self.rng.next_u32() % (65536 - FIRST_PORT)) as u16,
                };
                let destination = SocketAddr::new(*ip, port);
                *sent += 1;
                probe.next_send = now + interval;
                if *sent >= budget {
                    probe.until = now + SPRAY_GRACE;
                    probe.next_send = probe.until;
                }
                let mut t = [0u8; 12];
                self.rng.fill_bytes(&mut t);
                let tid = TransactionId(t);
                tids.push(tid);
                let contents = check_message(a, self.local_peer.as_ref(), tid, false);
                self.transactions.insert(tid, (id, SPRAY, a.role));
                self.stats.probes_sent += 1;
                self.transmits.push_back(Transmit::main(destination, contents));
            }
        }
    }

    /// Stops an attempt's probing: forgets its probes' transactions, closes
    /// its pool (all but the socket a connected session uses) and hands the
    /// probing slot to the next attempt waiting for it.
    pub(super) fn end_probe(&mut self, id: AttemptId, connected: bool) {
        let Some(a) = self.attempts.get_mut(&id) else { return };
        let Some(mut probe) = a.probe.take() else { return };
        self.dirty.push(id);
        // Probing over, the attempt's window is its own again.
        if a.state == State::Checking {
            let last = probe.last_sent.map_or(probe.window_before, |t| t + SPRAY_GRACE);
            a.window_end = a.window_end.min(probe.window_before.max(last));
        }
        if let ProbePlan::Spray { tids, .. } = &mut probe.plan {
            for t in tids.drain(..) {
                self.transactions.remove(&t);
            }
            // A spray grew the table to thousands of entries; give the
            // memory back rather than keep it for the node's life.
            if self.transactions.capacity() > 4 * self.transactions.len() + 64 {
                self.transactions.shrink_to_fit();
            }
        }
        let keep = a.selected.filter(|_| connected).map(|i| a.pairs[i].socket);
        let selected = a.selected.map(|i| a.pairs[i].remote);
        let (kept, closed): (Vec<SocketId>, Vec<SocketId>) = a.sockets.drain(..).partition(|s| Some(*s) == keep);
        a.sockets = kept;
        // Pool pairs on closed sockets can never work again.
        let gone: Vec<usize> = (0..a.pairs.len()).filter(|&j| closed.contains(&a.pairs[j].socket)).collect();
        for j in gone {
            let p = &mut a.pairs[j];
            p.state = PairState::Failed;
            p.next_send = None;
            if let Some(t) = p.tid.take() {
                self.transactions.remove(&t);
            }
        }
        if connected && selected.is_some() && probe.active {
            self.stats.probing_connected += u64::from(a.pairs.iter().any(|p| p.probed && Some(p.remote) == selected));
        }
        for s in closed {
            self.close_socket(s);
        }
        // Forget the failed pool pairs (a connected attempt lives on, and
        // 255 dead pairs would stay with it): keep the others, re-filing
        // their transactions and the selected pair under their new places.
        let Some(a) = self.attempts.get_mut(&id) else { return };
        if !a.pairs.iter().any(|p| p.pool && p.state == PairState::Failed) {
            return;
        }
        let selected = a.selected.map(|i| (a.pairs[i].socket, a.pairs[i].remote));
        a.pairs.retain(|p| !(p.pool && p.state == PairState::Failed));
        a.triggered.clear();
        a.selected = selected.and_then(|(s, r)| a.pair_by(s, r));
        for (i, p) in a.pairs.iter().enumerate() {
            if let Some(t) = p.tid {
                let role = self.transactions.get(&t).map_or(a.role, |&(_, _, r)| r);
                self.transactions.insert(t, (id, i, role));
            }
        }
    }

    /// A free pool socket number, or `None` when all are in use.
    fn alloc_socket(&mut self) -> Option<SocketId> {
        if self.open_sockets.len() >= MAX_OPEN_POOL_SOCKETS {
            return None;
        }
        for _ in 0..MAX_POOL_SOCKET {
            self.next_socket = self.next_socket % MAX_POOL_SOCKET + 1;
            let s = SocketId(self.next_socket);
            if !self.open_sockets.contains(&s) {
                self.open_sockets.insert(s);
                return Some(s);
            }
        }
        None
    }

    pub(super) fn close_socket(&mut self, s: SocketId) {
        if self.open_sockets.remove(&s) {
            self.socket_closes.push_back(s);
        }
    }
}
