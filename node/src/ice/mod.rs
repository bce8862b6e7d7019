//! The connectivity engine: ICE (RFC 8445) driven by tokens, sans-IO.
//!
//! An [`Endpoint`] is the state of one UDP port. It takes datagrams,
//! timeouts and commands, each with an explicit `now`, and returns datagrams
//! to send ([`Endpoint::poll_transmit`]), the next deadline
//! ([`Endpoint::poll_timeout`]) and events ([`Endpoint::poll_event`]). It
//! reads no clock, owns no socket and draws randomness only from the seed
//! it was given, so the tokio runtime and the simulator drive the same code.
//!
//! Drive loop: after every input (`handle_datagram`, `handle_timeout`,
//! `listen`, `join`, `accept_rsvp`), drain `poll_transmit` and `poll_event`
//! completely, then sleep until `poll_timeout` or the next datagram.
//!
//! * **Inviter**: [`Endpoint::listen`] registers an invitation. A check from
//!   an invitee never heard of is authenticated with the invitation's
//!   password; the invitee's ufrag comes from USERNAME and its password is
//!   derived ([`derive_invitee_pwd`](crate::token::derive_invitee_pwd)), so the inviter can check back and
//!   nominate (role controlling). A reusable invitation admits many invitees
//!   on one port, demultiplexed by ufrag pair.
//! * **Invitee**: [`Endpoint::join`] imports an invitation (role controlled)
//!   and checks the inviter's candidates, highest priority first, paced by
//!   Ta, retransmitting for the whole `rsvp_timeout_seconds` window. Then it
//!   emits [`Event::RsvpNeeded`] (or fails if the invitation refuses RSVPs)
//!   and keeps refreshing its NAT bindings every 15 s while waiting.
//!   `connection_mode.initial = bidirectional` asks for the RSVP at once.
//! * **RSVP**: the inviter imports it with [`Endpoint::accept_rsvp`] and
//!   both sides check at once.
//! * Role conflicts are settled by tie-breakers with 487 (RFC 8445
//!   §7.3.1.1); consent is refreshed every ~5 s once connected and a path
//!   silent for 30 s is reported lost (RFC 7675).
//!
//! Why our own agent rather than the `is` crate (str0m's sans-IO ICE):
//! `is` draws transaction ids from a global thread-local RNG (the simulator
//! must be deterministic from its seed), parks early checks unanswered
//! until remote credentials are set (the inviter must answer invitees it has
//! never heard of), drops a pair after ~19 s of silence with the same knob
//! that sets the post-connect timeout (the invitee must keep checking for a
//! whole RSVP window), and cannot parse plain Binding requests (every node
//! answers STUN). Tokens also fix most of what a general agent negotiates:
//! one component, one socket, credentials known up front.

mod admission;
mod attempt;
mod checks;
mod probe;
#[cfg(test)]
mod tests;
mod types;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use attempt::{Attempt, Pair, Side};
pub use attempt::{State, Via};
pub use types::{
    AcceptRsvpError, AttemptId, AttemptSummary, Binding, EndpointConfig, Event, FailReason, SocketId, Stats, Transmit,
};

use crate::identity::PublicKey;
use crate::stun::{self, TransactionId};
use crate::token::{Candidate, IceRole, Invitation, NatInfo, ReplayGuard, TokenId};

/// One of our invitations that invitees may use.
#[derive(Debug)]
struct Issued {
    invitation: Invitation,
    rsvp_guard: ReplayGuard,
    pending: usize,
    connected: usize,
}

/// The state of one UDP port. See the module docs.
#[derive(Debug)]
pub struct Endpoint {
    config: EndpointConfig,
    rng: ChaCha20Rng,
    epoch: (Instant, u64),
    /// Our invitations by their ufrag.
    issued: HashMap<String, Issued>,
    issued_by_id: HashMap<TokenId, String>,
    /// Ordered, so iteration (and so the simulator) is deterministic.
    /// Boxed: an attempt is large, and a B-tree leaf has room for eleven,
    /// so inline a host with one or two attempts carried a leaf of several
    /// kilobytes (12% of a large simulation's peak heap).
    attempts: BTreeMap<AttemptId, Box<Attempt>>,
    /// Attempts by "local_ufrag:remote_ufrag" (a check's USERNAME as it
    /// arrives, so a lookup allocates nothing).
    by_ufrags: HashMap<String, AttemptId>,
    /// Checks in flight: their attempt, pair (or `SPRAY`), and the role
    /// they claimed (a 487 answer says to take the other one).
    transactions: HashMap<TransactionId, (AttemptId, usize, IceRole)>,
    pending_by_source: HashMap<IpAddr, usize>,
    next_id: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    local_peer: Option<PublicKey>,
    /// Reflexive addresses already reported (a few; oldest dropped).
    mapped: VecDeque<SocketAddr>,
    /// Deadline index: (when, attempt). One entry per attempt with a
    /// deadline, so timers cost O(log n) however many attempts are held.
    timers: BTreeSet<(Instant, AttemptId)>,
    scheduled: HashMap<AttemptId, Instant>,
    /// Attempts touched since their deadline was last indexed.
    dirty: Vec<AttemptId>,
    /// Our NAT, as the host classified it.
    nat: Option<NatInfo>,
    /// Whether our router forwards a port to us (the driver's port mapping).
    port_mapped: bool,
    /// When the node's next probing packet may go (the shared rate).
    probe_next: Instant,
    /// Pool sockets open, and those the driver must close.
    open_sockets: BTreeSet<SocketId>,
    socket_closes: VecDeque<SocketId>,
    next_socket: u16,
}

impl Endpoint {
    /// A new endpoint. `seed` keys its RNG (transaction ids, RSVP ids,
    /// jitter); `now` and `unix_now` tie its monotonic clock to wall time for
    /// token expiry.
    pub fn new(config: EndpointConfig, seed: [u8; 32], now: Instant, unix_now: u64) -> Self {
        Self {
            config,
            rng: ChaCha20Rng::from_seed(seed),
            epoch: (now, unix_now),
            issued: HashMap::new(),
            issued_by_id: HashMap::new(),
            attempts: BTreeMap::new(),
            by_ufrags: HashMap::new(),
            transactions: HashMap::new(),
            pending_by_source: HashMap::new(),
            next_id: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            local_peer: None,
            mapped: VecDeque::new(),
            timers: BTreeSet::new(),
            scheduled: HashMap::new(),
            dirty: Vec::new(),
            nat: None,
            port_mapped: false,
            probe_next: now,
            open_sockets: BTreeSet::new(),
            socket_closes: VecDeque::new(),
            next_socket: 0,
        }
    }

    /// Tells the engine how our NAT behaves (from
    /// [`crate::nat::classify`]); it decides with the peer's token whether to
    /// predict or probe for ports.
    pub fn set_nat(&mut self, nat: Option<NatInfo>) {
        self.nat = nat;
    }

    /// Our NAT, as last set.
    pub fn nat(&self) -> Option<NatInfo> {
        self.nat
    }

    /// Tells the engine whether our router forwards a port to us (PCP,
    /// NAT-PMP, UPnP IGD). With one, peers reach the mapped address our
    /// tokens offer, so we never predict or probe ports ourselves: our side
    /// counts as having no NAT in the way ([`NatInfo::PORT_MAPPED`]).
    pub fn set_port_mapped(&mut self, mapped: bool) {
        self.port_mapped = mapped;
    }

    /// The tunables.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// The socket an attempt's nominated pair (and so its session) uses.
    pub fn socket_of(&self, id: AttemptId) -> Option<SocketId> {
        let a = self.attempts.get(&id)?;
        a.selected.map(|i| a.pairs[i].socket)
    }

    /// Whether `socket` is open: the main one, or a pool socket not yet
    /// closed. Datagrams for a closed socket are not ours.
    pub fn is_socket_open(&self, socket: SocketId) -> bool {
        socket == SocketId::MAIN || self.open_sockets.contains(&socket)
    }

    /// The next socket the driver should close (it opened it the first time
    /// a transmit named it).
    pub fn poll_socket_close(&mut self) -> Option<SocketId> {
        self.socket_closes.pop_front()
    }

    /// Our identity key. Invitee checks then carry it (CONVOKE-PEER), so
    /// that two nodes inviting each other at once end with one attempt.
    pub fn set_local_peer(&mut self, key: PublicKey) {
        self.local_peer = Some(key);
    }

    /// An attempt's local ICE credentials (ufrag, password), e.g. to hand to
    /// a foreign ICE agent.
    pub fn local_credentials(&self, id: AttemptId) -> Option<(&str, &str)> {
        self.attempts.get(&id).map(|a| (a.local_ufrag.as_str(), a.local_pwd.as_str()))
    }

    fn unix(&self, now: Instant) -> u64 {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0).as_secs()
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Number of attempts held (pending and connected).
    pub fn attempt_count(&self) -> usize {
        self.attempts.len()
    }

    /// Where an attempt stands, if it exists.
    pub fn state(&self, id: AttemptId) -> Option<State> {
        self.attempts.get(&id).map(|a| a.state)
    }

    /// The peer address of an attempt's nominated pair.
    pub fn selected(&self, id: AttemptId) -> Option<SocketAddr> {
        let a = self.attempts.get(&id)?;
        a.selected.map(|i| a.pairs[i].remote)
    }

    /// Our current ICE role in an attempt.
    pub fn role(&self, id: AttemptId) -> Option<IceRole> {
        self.attempts.get(&id).map(|a| a.role)
    }

    /// What binds a session to an attempt: its invitation, both ufrags and
    /// the peer key the tokens name (docs/DESIGN.md §4: the handshake's prologue).
    pub fn binding(&self, id: AttemptId) -> Option<Binding> {
        let a = self.attempts.get(&id)?;
        let inviter = a.side == Side::Inviter;
        let (inviter_ufrag, invitee_ufrag) = if inviter {
            (a.local_ufrag.clone(), a.remote_ufrag.clone())
        } else {
            (a.remote_ufrag.clone(), a.local_ufrag.clone())
        };
        Some(Binding {
            invitation: a.invitation,
            inviter_ufrag,
            invitee_ufrag,
            inviter,
            remote_peer: a.remote_peer,
            via: a.via,
            remote_kind: a.selected.map(|i| a.pairs[i].remote_kind),
        })
    }

    /// The attempt with this (local, remote) ufrag pair.
    pub fn attempt_by_ufrags(&self, local: &str, remote: &str) -> Option<AttemptId> {
        self.by_ufrags.get(&format!("{local}:{remote}")).copied()
    }

    /// When an attempt began, which side we are and the phase it reached.
    pub fn attempt_summary(&self, id: AttemptId) -> Option<AttemptSummary> {
        self.attempts.get(&id).map(|a| AttemptSummary {
            started: a.started,
            inviter: a.side == Side::Inviter,
            via: a.via,
        })
    }

    /// For an invitee attempt: the id the RSVP must carry (it fixes the
    /// credentials the attempt already uses). Build the RSVP (with our NAT's
    /// classification, [`Endpoint::nat`]) with
    /// `Token::new_rsvp(invitation, identity, id, candidates, nat, unix_now)`.
    pub fn rsvp_token_id(&self, id: AttemptId) -> Option<TokenId> {
        match self.attempts.get(&id)?.side {
            Side::Invitee { rsvp_id, .. } => Some(rsvp_id),
            Side::Inviter => None,
        }
    }

    fn new_id(&mut self) -> AttemptId {
        self.next_id += 1;
        AttemptId(self.next_id)
    }

    /// Pairs from our main socket to a token's candidates.
    fn pairs_from(&self, candidates: &[Candidate]) -> Vec<Pair> {
        candidates.iter().map(|c| Pair::new(c.address, c.kind, c.priority, self.config.rto_initial)).collect()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Adds a remote candidate to a running attempt, paired with the main
    /// socket, and checks it at once: a path found after the tokens were
    /// exchanged (a circuit at a relay, see [`crate::relay`]). Returns
    /// whether the attempt was still checking.
    pub fn add_remote_candidate(
        &mut self,
        id: AttemptId,
        address: SocketAddr,
        kind: crate::token::CandidateKind,
        now: Instant,
    ) -> bool {
        let rto = self.config.rto_initial;
        let Some(a) = self.attempts.get_mut(&id) else { return false };
        if !matches!(a.state, State::Checking | State::WaitingForRsvp) {
            return false;
        }
        let priority = crate::token::Candidate::standard_priority(kind, 65535);
        let i = a.add_remote(SocketId::MAIN, address, kind, priority, rto);
        // It may be known already, from a check the peer sent through it.
        a.pairs[i].remote_kind = kind;
        a.pairs[i].remote_priority = a.pairs[i].remote_priority.max(priority);
        a.trigger(i, now);
        // Time for the new pair's checks, whatever was left of the window.
        a.window_end = a.window_end.max(now + LATE_CANDIDATE_TIME);
        self.dirty.push(id);
        self.reindex();
        true
    }

    /// When a checking attempt's window ends (the inviter's after an RSVP,
    /// extended while it probes): a late candidate must be offered before.
    pub fn window_end(&self, id: AttemptId) -> Option<Instant> {
        self.attempts.get(&id).filter(|a| a.state == State::Checking).map(|a| a.window_end)
    }

    /// Whether no direct path is to be expected for this attempt: both NATs
    /// known, and both map endpoint-dependently (no probing finds two
    /// unknown ports at once), so a relayed path is worth checking at once
    /// rather than after the rest of the reach ladder.
    pub fn direct_hopeless(&self, id: AttemptId) -> bool {
        let ours = if self.port_mapped { Some(NatInfo::PORT_MAPPED) } else { self.nat };
        let theirs = self.attempts.get(&id).and_then(|a| a.peer_nat);
        matches!((ours, theirs), (Some(o), Some(t)) if o.is_hard() && t.is_hard())
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Test check: the deadline index agrees with a full scan.
    #[cfg(test)]
    fn assert_index_consistent(&self) {
        let scan = self.attempts.values().filter_map(|a| a.next_deadline()).min();
        assert_eq!(self.poll_timeout(), scan, "deadline index out of date");
        assert!(self.dirty.is_empty());
    }

    /// Re-indexes the deadlines of the attempts touched since the last call.
    /// Every public entry point ends with it.
    fn reindex(&mut self) {
        while let Some(id) = self.dirty.pop() {
            if let Some(old) = self.scheduled.remove(&id) {
                self.timers.remove(&(old, id));
            }
            if let Some(t) = self.attempts.get(&id).and_then(|a| a.next_deadline()) {
                self.scheduled.insert(id, t);
                self.timers.insert((t, id));
            }
        }
    }
}

/// How long an attempt keeps checking after a candidate added late
/// ([`Endpoint::add_remote_candidate`]), if its window was closing.
pub const LATE_CANDIDATE_TIME: Duration = Duration::from_secs(10);

/// Re-exported so callers can check datagrams before handing them over.
pub use stun::is_stun;
