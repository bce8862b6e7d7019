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
//!   derived ([`derive_invitee_pwd`]), so the inviter can check back and
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

mod attempt;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use attempt::{Attempt, NewAttempt, Pair, PairState, Side};
pub use attempt::{State, Via};

use crate::identity::PublicKey;
use crate::stun::{self, BINDING, Class, Message, MessageBuilder, TransactionId};
use crate::token::{
    self, Candidate, CandidateKind, IceRole, InitialMode, Invitation, ReplayGuard, Rsvp, TokenError, TokenId,
    derive_invitee_pwd, derived_tie_breaker, derived_ufrag,
};

/// Tunables. `Default` gives the values cited on each field.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Pacing between new checks of one attempt: Ta = 50 ms (RFC 8445 §14.2).
    pub ta: Duration,
    /// First retransmission timeout of a check: 500 ms (RFC 8445 §14.3).
    pub rto_initial: Duration,
    /// Retransmission backoff cap while checking: 3 s.
    pub rto_max: Duration,
    /// NAT binding refresh while waiting for an RSVP: 15 s (docs/DESIGN.md §3).
    pub keepalive: Duration,
    /// Consent check interval once connected: 5 s ± 20% (RFC 7675 §5.1).
    pub consent_interval: Duration,
    /// Consent lost after this much silence: 30 s (RFC 7675 §5.1).
    pub consent_timeout: Duration,
    /// Least time the inviter keeps checking an invitee: 30 s.
    pub inviter_window: Duration,
    /// Unconnected attempts one invitation may have at once.
    pub max_pending_per_invitation: usize,
    /// Unconnected inviter-side attempts from one source IP address.
    pub max_pending_per_source: usize,
    /// All attempts of this endpoint, connected or not.
    pub max_attempts: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            ta: Duration::from_millis(50),
            rto_initial: Duration::from_millis(500),
            rto_max: Duration::from_secs(3),
            keepalive: Duration::from_secs(15),
            consent_interval: Duration::from_secs(5),
            consent_timeout: Duration::from_secs(30),
            inviter_window: Duration::from_secs(30),
            max_pending_per_invitation: 64,
            max_pending_per_source: 8,
            max_attempts: 100_000,
        }
    }
}

/// A datagram to send from the endpoint's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: SocketAddr,
    /// The bytes.
    pub contents: Vec<u8>,
}

/// Names one connection attempt of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId(pub u64);

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// No pair worked within the window and no RSVP is possible.
    Timeout,
    /// Closed by the application.
    Closed,
    /// The peer and we invited each other at once; the other invitation's
    /// attempt was kept (the one with the higher tie-breaker), this one
    /// dropped, on both sides alike.
    Crossed,
}

/// What the endpoint reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An invitee we had never heard of checked in on one of our
    /// invitations.
    InviteeArrived {
        /// The new attempt.
        attempt: AttemptId,
        /// Which invitation.
        invitation: TokenId,
        /// Where its check came from.
        from: SocketAddr,
    },
    /// A pair is nominated: the path works.
    Connected {
        /// Which attempt.
        attempt: AttemptId,
        /// The peer's address on the nominated pair.
        remote: SocketAddr,
        /// Its candidate type (a check from an unannounced address is
        /// peer reflexive).
        remote_kind: CandidateKind,
        /// Our final ICE role.
        role: IceRole,
        /// Single token or RSVP.
        via: Via,
    },
    /// The invitee's window passed: the inviter needs our RSVP. Build it
    /// with [`Endpoint::rsvp_token_id`] and `Token::new_rsvp`.
    RsvpNeeded {
        /// Which attempt.
        attempt: AttemptId,
    },
    /// Gave up.
    Failed {
        /// Which attempt.
        attempt: AttemptId,
        /// Why.
        reason: FailReason,
        /// Whether we were the inviter.
        inviter: bool,
        /// The phase it had reached: single token, or after an RSVP.
        via: Via,
    },
    /// A connected path stopped answering consent checks (RFC 7675).
    ConsentLost {
        /// Which attempt.
        attempt: AttemptId,
    },
    /// A peer told us the address it sees us at (server or peer reflexive).
    Mapped {
        /// That address.
        address: SocketAddr,
    },
}

/// What ties a session to its attempt; see [`Endpoint::binding`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The invitation's id.
    pub invitation: TokenId,
    /// The inviter's ufrag (the invitation's).
    pub inviter_ufrag: String,
    /// The invitee's ufrag (derived from its RSVP id).
    pub invitee_ufrag: String,
    /// Whether we are the inviter.
    pub inviter: bool,
    /// The peer's key if a token names it (the invitation's author for an
    /// invitee; the RSVP's author, or the key the invitee's checks claim,
    /// for an inviter).
    pub remote_peer: Option<PublicKey>,
    /// Single token or RSVP.
    pub via: Via,
    /// The nominated remote candidate's type, once connected.
    pub remote_kind: Option<CandidateKind>,
}

/// Why an RSVP was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptRsvpError {
    /// The token itself was refused (decoding, signature, expiry, link,
    /// replay…).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// It answers an invitation this endpoint is not listening on.
    #[error("this node is not listening on the invitation that RSVP answers")]
    UnknownInvitation,
    /// The invitation is single-use and already taken, or a limit on
    /// pending invitees is reached.
    #[error("the invitation is already in use or too many invitees are pending; try again later")]
    Refused,
}

/// Counters for observability. The runtime exports them; the engine only
/// counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams that were not well-formed STUN, or not for us.
    pub dropped_malformed: u64,
    /// Requests or responses whose MESSAGE-INTEGRITY did not verify.
    pub dropped_unauthenticated: u64,
    /// New invitees refused by a limit (single use, pending, per source, total).
    pub refused_by_limit: u64,
    /// Plain STUN Binding requests answered.
    pub stun_served: u64,
    /// Answers not sent because they would be larger than the request.
    pub amplification_refused: u64,
    /// Attempts begun as the invitee (invitations imported).
    pub attempts_invitee: u64,
    /// Attempts begun as the inviter (an invitee's first check or RSVP).
    pub attempts_inviter: u64,
}

/// What [`Endpoint::attempt_summary`] tells about an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptSummary {
    /// When it began: the invitation imported (invitee), or the invitee's
    /// first check or RSVP arrived (inviter).
    pub started: Instant,
    /// Whether we are the inviter.
    pub inviter: bool,
    /// Single token, or after an RSVP.
    pub via: Via,
}

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
    attempts: BTreeMap<AttemptId, Attempt>,
    /// Attempts by "local_ufrag:remote_ufrag" (a check's USERNAME as it
    /// arrives, so a lookup allocates nothing).
    by_ufrags: HashMap<String, AttemptId>,
    transactions: HashMap<TransactionId, (AttemptId, usize)>,
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
        }
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
    /// credentials the attempt already uses). Build the RSVP with
    /// `Token::new_rsvp(invitation, identity, id, candidates, unix_now)`.
    pub fn rsvp_token_id(&self, id: AttemptId) -> Option<TokenId> {
        match self.attempts.get(&id)?.side {
            Side::Invitee { rsvp_id, .. } => Some(rsvp_id),
            Side::Inviter => None,
        }
    }

    /// Accepts invitees on `invitation` (one of ours, already validated).
    pub fn listen(&mut self, invitation: Invitation) {
        let b = &invitation.token().body;
        let ufrag = b.connection_info.ufrag.clone();
        self.issued_by_id.insert(b.token_id, ufrag.clone());
        self.issued.insert(ufrag, Issued { invitation, rsvp_guard: ReplayGuard::default(), pending: 0, connected: 0 });
    }

    /// Stops accepting new invitees on an invitation (attempts already made
    /// continue).
    pub fn unlisten(&mut self, invitation: TokenId) {
        if let Some(ufrag) = self.issued_by_id.remove(&invitation) {
            self.issued.remove(&ufrag);
        }
    }

    fn new_id(&mut self) -> AttemptId {
        self.next_id += 1;
        AttemptId(self.next_id)
    }

    fn pairs_from(&self, candidates: &[Candidate]) -> Vec<Pair> {
        candidates.iter().map(|c| Pair::new(c.address, c.kind, c.priority, self.config.rto_initial)).collect()
    }

    /// Imports an invitation as the invitee and starts checking.
    pub fn join(&mut self, invitation: &Invitation, now: Instant) -> AttemptId {
        let b = &invitation.token().body;
        let ci = &b.connection_info;
        let rsvp_id = TokenId::random(&mut self.rng);
        let local_ufrag = derived_ufrag(&rsvp_id);
        let id = self.new_id();
        let window = Duration::from_secs(u64::from(b.connection_mode.rsvp_timeout_seconds).max(1));
        self.stats.attempts_invitee += 1;
        let a = Attempt::new(
            NewAttempt {
                side: Side::Invitee { rsvp_id, rsvp_supported: b.connection_mode.rsvp_supported },
                role: IceRole::Controlled,
                tie_breaker: derived_tie_breaker(&rsvp_id),
                local: (local_ufrag.clone(), derive_invitee_pwd(&ci.pwd, &local_ufrag)),
                remote: (ci.ufrag.clone(), ci.pwd.clone()),
                invitation: b.token_id,
                invitation_tie: ci.ice_tie_breaker,
                remote_peer: b.initiator.as_ref().map(|p| p.public_key),
                pairs: self.pairs_from(&ci.ice_candidates),
                window,
                counted_source: None,
            },
            now,
        );
        let bidirectional = b.connection_mode.initial == InitialMode::Bidirectional;
        self.by_ufrags.insert(format!("{}:{}", a.local_ufrag, a.remote_ufrag), id);
        self.attempts.insert(id, a);
        if bidirectional {
            self.enter_waiting(id);
        }
        if self.resolve_crossing(id) != Some(id) {
            self.run_attempt(id, now);
        }
        self.reindex();
        id
    }

    /// If `id` and another attempt are the two halves of crossing
    /// invitations with the same peer, drops the one whose invitation ranks
    /// lower by (tie-breaker, author key) and returns it. The peer computes
    /// the same order, so both keep the halves of the same ICE session.
    fn resolve_crossing(&mut self, id: AttemptId) -> Option<AttemptId> {
        let a = self.attempts.get(&id)?;
        let peer = a.remote_peer?;
        let me = self.local_peer?;
        let inviter = a.side == Side::Inviter;
        let (&other, _) = self
            .attempts
            .iter()
            .find(|(o, b)| **o != id && b.remote_peer == Some(peer) && (b.side == Side::Inviter) != inviter)?;
        let (inviter_id, invitee_id) = if inviter { (id, other) } else { (other, id) };
        let ours = (self.attempts[&inviter_id].invitation_tie, me);
        let theirs = (self.attempts[&invitee_id].invitation_tie, peer);
        let loser = if ours > theirs { invitee_id } else { inviter_id };
        let via = self.attempts[&loser].via;
        self.remove(loser);
        self.events.push_back(Event::Failed {
            attempt: loser,
            reason: FailReason::Crossed,
            inviter: loser == inviter_id,
            via,
        });
        Some(loser)
    }

    fn enter_waiting(&mut self, id: AttemptId) {
        let Some(a) = self.attempts.get_mut(&id) else { return };
        a.state = State::WaitingForRsvp;
        a.via = Via::Rsvp;
        for p in &mut a.pairs {
            p.rto = self.config.keepalive;
        }
        self.events.push_back(Event::RsvpNeeded { attempt: id });
    }

    /// Imports an RSVP answering one of our invitations and starts checking
    /// towards the invitee at once (the invitee is checking too).
    pub fn accept_rsvp(&mut self, text: &str, now: Instant) -> Result<AttemptId, AcceptRsvpError> {
        let t = token::decode(text)?;
        let unix = self.unix(now);
        let reply_to =
            t.body.in_reply_to.ok_or(TokenError::WrongRole("an RSVP must say which invitation it answers"))?;
        let Some(ufrag) = self.issued_by_id.get(&reply_to).cloned() else {
            return Err(AcceptRsvpError::UnknownInvitation);
        };
        let issued = self.issued.get_mut(&ufrag).expect("issued_by_id and issued agree");
        let rsvp = Rsvp::from_token(t, &issued.invitation, unix, &mut issued.rsvp_guard)?;
        let ci = &rsvp.token().body.connection_info;
        let author = rsvp.token().body.author().map(|p| p.public_key);
        let key = format!("{ufrag}:{}", ci.ufrag);
        let id = match self.by_ufrags.get(&key) {
            Some(id) => *id,
            None => {
                if !self.admit(&ufrag, None) {
                    return Err(AcceptRsvpError::Refused);
                }
                let id = self.new_id();
                let a = self.inviter_attempt(&ufrag, ci.ufrag.clone(), now, None);
                self.by_ufrags.insert(key, id);
                self.attempts.insert(id, a);
                id
            }
        };
        let rto = self.config.rto_initial;
        let window = self.config.inviter_window;
        let a = self.attempts.get_mut(&id).expect("just found or made");
        a.via = Via::Rsvp;
        a.remote_pwd = ci.pwd.clone();
        // The RSVP's signer is who the session must authenticate as.
        a.remote_peer = author.or(a.remote_peer);
        if a.state != State::Connected {
            a.state = State::Checking;
            a.window_end = a.window_end.max(now + window);
            for c in &ci.ice_candidates {
                let i = a.add_remote(c.address, c.kind, c.priority, rto);
                let p = &mut a.pairs[i];
                if p.state == PairState::Failed {
                    p.state = PairState::Waiting;
                }
            }
            a.next_pace = a.next_pace.min(now);
        }
        self.run_attempt(id, now);
        self.reindex();
        Ok(id)
    }

    /// Whether a new invitee may be admitted on invitation `ufrag`.
    fn admit(&mut self, ufrag: &str, source: Option<IpAddr>) -> bool {
        let Some(issued) = self.issued.get(ufrag) else {
            return false;
        };
        let reusable = issued.invitation.token().body.connection_mode.reusable;
        let ok = self.attempts.len() < self.config.max_attempts
            && issued.pending < self.config.max_pending_per_invitation
            && (reusable || issued.pending + issued.connected == 0)
            && source.is_none_or(|ip| {
                self.pending_by_source.get(&ip).copied().unwrap_or(0) < self.config.max_pending_per_source
            });
        if !ok {
            self.stats.refused_by_limit += 1;
        }
        ok
    }

    fn inviter_attempt(&mut self, ufrag: &str, remote_ufrag: String, now: Instant, source: Option<IpAddr>) -> Attempt {
        self.stats.attempts_inviter += 1;
        let issued = self.issued.get_mut(ufrag).expect("admitted invitation exists");
        issued.pending += 1;
        if let Some(ip) = source {
            *self.pending_by_source.entry(ip).or_default() += 1;
        }
        let b = &issued.invitation.token().body;
        let ci = &b.connection_info;
        let window =
            Duration::from_secs(u64::from(b.connection_mode.rsvp_timeout_seconds)).max(self.config.inviter_window);
        Attempt::new(
            NewAttempt {
                side: Side::Inviter,
                role: IceRole::Controlling,
                tie_breaker: ci.ice_tie_breaker,
                local: (ci.ufrag.clone(), ci.pwd.clone()),
                remote: (remote_ufrag.clone(), derive_invitee_pwd(&ci.pwd, &remote_ufrag)),
                invitation: b.token_id,
                invitation_tie: ci.ice_tie_breaker,
                remote_peer: None,
                pairs: Vec::new(),
                window,
                counted_source: Some(source),
            },
            now,
        )
    }

    /// Closes an attempt and forgets it.
    pub fn close(&mut self, id: AttemptId) {
        if let Some(a) = self.attempts.get(&id) {
            let (inviter, via) = (a.side == Side::Inviter, a.via);
            self.remove(id);
            self.reindex();
            self.events.push_back(Event::Failed { attempt: id, reason: FailReason::Closed, inviter, via });
        }
    }

    fn remove(&mut self, id: AttemptId) {
        self.dirty.push(id);
        let Some(a) = self.attempts.remove(&id) else {
            return;
        };
        self.by_ufrags.remove(&format!("{}:{}", a.local_ufrag, a.remote_ufrag));
        for p in &a.pairs {
            if let Some(t) = p.tid {
                self.transactions.remove(&t);
            }
        }
        self.uncount_pending(a.counted_pending, &a.local_ufrag, a.source_ip);
        if a.state == State::Connected
            && let Some(i) = self.issued.get_mut(&a.local_ufrag)
        {
            i.connected = i.connected.saturating_sub(1);
        }
    }

    /// Releases what an inviter-side attempt counted against the pending
    /// limits (once: when it connects or goes away).
    fn uncount_pending(&mut self, counted: bool, ufrag: &str, source: Option<IpAddr>) {
        if !counted {
            return;
        }
        if let Some(i) = self.issued.get_mut(ufrag) {
            i.pending = i.pending.saturating_sub(1);
        }
        if let Some(ip) = source
            && let Some(n) = self.pending_by_source.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.pending_by_source.remove(&ip);
            }
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
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
        let scan = self.attempts.values().filter_map(Attempt::next_deadline).min();
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
            if let Some(t) = self.attempts.get(&id).and_then(Attempt::next_deadline) {
                self.scheduled.insert(id, t);
                self.timers.insert((t, id));
            }
        }
    }

    /// Advances timers to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Bounded: each due attempt runs once per call.
        let due: Vec<AttemptId> = self.timers.iter().take_while(|(t, _)| *t <= now).map(|(_, id)| *id).collect();
        for id in due {
            self.run_attempt(id, now);
        }
        self.reindex();
    }

    fn run_attempt(&mut self, id: AttemptId, now: Instant) {
        self.dirty.push(id);
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        match a.state {
            State::Failed => {}
            State::Connected => {
                if now.saturating_duration_since(a.last_consent) >= self.config.consent_timeout {
                    a.state = State::Failed;
                    self.events.push_back(Event::ConsentLost { attempt: id });
                    self.remove(id);
                } else if a.next_consent.is_some_and(|t| t <= now) {
                    let jitter = 0.8 + 0.4 * (self.rng.next_u32() as f64 / f64::from(u32::MAX));
                    let next = now + self.config.consent_interval.mul_f64(jitter);
                    let sel = a.selected.expect("connected attempt has a selected pair");
                    a.next_consent = Some(next);
                    self.send_check(id, sel, now);
                }
            }
            State::Checking | State::WaitingForRsvp => {
                if a.state == State::Checking && now >= a.window_end {
                    match a.side {
                        Side::Invitee { rsvp_supported: true, .. } => self.enter_waiting(id),
                        _ => {
                            let (inviter, via) = (a.side == Side::Inviter, a.via);
                            self.events.push_back(Event::Failed {
                                attempt: id,
                                reason: FailReason::Timeout,
                                inviter,
                                via,
                            });
                            self.remove(id);
                            return;
                        }
                    }
                }
                let a = self.attempts.get_mut(&id).expect("present");
                if now >= a.next_pace
                    && let Some(i) = a.next_check(now)
                {
                    a.next_pace = now + self.config.ta;
                    self.send_check(id, i, now);
                }
            }
        }
    }

    /// Sends (or retransmits, same transaction id) a check on pair `i`.
    fn send_check(&mut self, id: AttemptId, i: usize, now: Instant) {
        let cap = self.config.rto_max;
        let keepalive = self.config.keepalive;
        let a = self.attempts.get_mut(&id).expect("caller checked");
        let waiting = a.state == State::WaitingForRsvp;
        let p = &mut a.pairs[i];
        let retransmit = p.state == PairState::InProgress && p.tid.is_some();
        let tid = match (retransmit, p.tid) {
            (true, Some(t)) => t,
            _ => {
                if let Some(old) = p.tid.take() {
                    self.transactions.remove(&old);
                }
                let mut t = [0u8; 12];
                self.rng.fill_bytes(&mut t);
                TransactionId(t)
            }
        };
        p.tid = Some(tid);
        if p.state != PairState::Succeeded {
            p.state = PairState::InProgress;
            p.next_send = Some(now + p.rto);
            p.rto = (p.rto * 2).min(if waiting { keepalive } else { cap });
        }
        self.transactions.insert(tid, (id, i));
        let mut m = MessageBuilder::new(Class::Request, BINDING, tid);
        m.username(&format!("{}:{}", a.remote_ufrag, a.local_ufrag))
            .priority(Candidate::standard_priority(CandidateKind::Prflx, 65535));
        match a.role {
            IceRole::Controlling => m.ice_controlling(a.tie_breaker),
            IceRole::Controlled => m.ice_controlled(a.tie_breaker),
        };
        if a.role == IceRole::Controlling && p.nominate && a.state != State::Connected {
            m.use_candidate();
        }
        if let (Side::Invitee { .. }, Some(me)) = (&a.side, &self.local_peer) {
            m.peer(&me.0);
        }
        let contents = m.finish(Some(a.remote_pwd.as_bytes()), true);
        self.transmits.push_back(Transmit { destination: p.remote, contents });
    }

    /// Handles one datagram that arrived from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Ok(msg) = Message::parse(data) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if msg.method != BINDING {
            self.stats.dropped_malformed += 1;
            return;
        }
        match msg.class {
            Class::Request => self.on_request(now, from, &msg),
            Class::Success | Class::Error => self.on_response(now, from, &msg),
            Class::Indication => {} // keepalives need no answer
        }
        self.reindex();
    }

    /// Queues `reply` unless it is larger than the request (no
    /// amplification). Returns whether it was queued.
    fn reply(&mut self, to: SocketAddr, request_len: usize, reply: Vec<u8>) -> bool {
        if reply.len() > request_len {
            self.stats.amplification_refused += 1;
            return false;
        }
        self.transmits.push_back(Transmit { destination: to, contents: reply });
        true
    }

    fn on_request(&mut self, now: Instant, from: SocketAddr, msg: &Message<'_>) {
        let Some(username) = msg.username else {
            // A plain STUN Binding request: say where we see it from. Only
            // answered when the answer is no larger than the request, so
            // clients pad their requests (ours do).
            let mut b = MessageBuilder::new(Class::Success, BINDING, msg.transaction_id);
            b.xor_mapped_address(from);
            let out = b.finish(None, true);
            if self.reply(from, msg.raw().len(), out) {
                self.stats.stun_served += 1;
            }
            return;
        };
        let Some((local, remote)) = username.split_once(':') else {
            self.stats.dropped_malformed += 1;
            return;
        };
        // A new invitee's check is authenticated with the invitation's
        // password, which becomes the attempt's local password: verified once.
        let (id, verified) = match self.by_ufrags.get(username) {
            Some(id) => (*id, false),
            None => {
                let Some(issued) = self.issued.get(local) else {
                    self.stats.dropped_unauthenticated += 1;
                    return;
                };
                if !msg.verify_integrity(issued.invitation.token().body.connection_info.pwd.as_bytes()) {
                    self.stats.dropped_unauthenticated += 1;
                    return;
                }
                let body = &issued.invitation.token().body;
                // An invitation that requires an RSVP admits only invitees
                // whose RSVP the inviter took: their checks then match an
                // attempt by ufrags and never get here.
                if body.connection_mode.initial == InitialMode::Bidirectional {
                    self.stats.refused_by_limit += 1;
                    return;
                }
                let expired = self.unix(now) >= body.expires_at;
                if expired || !(4..=64).contains(&remote.len()) {
                    self.stats.refused_by_limit += 1;
                    return;
                }
                if !self.admit(local, Some(from.ip())) {
                    return;
                }
                let id = self.new_id();
                let mut a = self.inviter_attempt(local, remote.to_owned(), now, Some(from.ip()));
                a.remote_peer = msg.peer.map(PublicKey);
                let invitation = a.invitation;
                self.by_ufrags.insert(username.to_owned(), id);
                self.attempts.insert(id, a);
                self.events.push_back(Event::InviteeArrived { attempt: id, invitation, from });
                if self.resolve_crossing(id) == Some(id) {
                    return;
                }
                (id, true)
            }
        };
        self.dirty.push(id);
        let rto = self.config.rto_initial;
        let a = self.attempts.get_mut(&id).expect("present");
        if !verified && !msg.verify_integrity(a.local_pwd.as_bytes()) {
            self.stats.dropped_unauthenticated += 1;
            return;
        }
        // RFC 8445 §7.3.1.1: role conflicts.
        let conflict = match (a.role, msg.ice_controlling, msg.ice_controlled) {
            (IceRole::Controlling, Some(theirs), _) => {
                if a.tie_breaker >= theirs {
                    true
                } else {
                    a.role = IceRole::Controlled;
                    false
                }
            }
            (IceRole::Controlled, _, Some(theirs)) => {
                if a.tie_breaker >= theirs {
                    a.role = IceRole::Controlling;
                    false
                } else {
                    true
                }
            }
            _ => false,
        };
        let key = a.local_pwd.clone();
        if conflict {
            let mut b = MessageBuilder::new(Class::Error, BINDING, msg.transaction_id);
            b.error_code(487, "Role Conflict");
            let out = b.finish(Some(key.as_bytes()), true);
            self.reply(from, msg.raw().len(), out);
            return;
        }
        let mut b = MessageBuilder::new(Class::Success, BINDING, msg.transaction_id);
        b.xor_mapped_address(from);
        let out = b.finish(Some(key.as_bytes()), true);
        self.reply(from, msg.raw().len(), out);

        let a = self.attempts.get_mut(&id).expect("present");
        if a.state == State::Connected || a.state == State::Failed {
            return;
        }
        let i = a.add_remote(from, CandidateKind::Prflx, msg.priority.unwrap_or(0), rto);
        let p = &mut a.pairs[i];
        if msg.use_candidate && a.role == IceRole::Controlled {
            p.nominate = true;
            if p.state == PairState::Succeeded {
                self.nominate(id, i, now);
                return;
            }
        }
        if p.state != PairState::Succeeded {
            if p.state == PairState::Failed {
                p.state = PairState::Waiting;
            }
            // The controlling side nominates the path an authenticated check
            // just arrived on with its very first (triggered) check: that path
            // demonstrably works, and this saves a round trip. The controlled
            // side must honour USE-CANDIDATE on any check (RFC 8445 §7.3.1.5).
            let nominating = a.pairs.iter().any(|p| p.nominate);
            if a.role == IceRole::Controlling && !nominating {
                a.pairs[i].nominate = true;
            }
            a.trigger(i, now);
        }
        self.run_attempt(id, now);
    }

    fn on_response(&mut self, now: Instant, from: SocketAddr, msg: &Message<'_>) {
        let Some(&(id, i)) = self.transactions.get(&msg.transaction_id) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        self.dirty.push(id);
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        if !msg.verify_integrity(a.remote_pwd.as_bytes()) {
            self.stats.dropped_unauthenticated += 1;
            return;
        }
        self.transactions.remove(&msg.transaction_id);
        let p = &mut a.pairs[i];
        p.tid = None;
        p.next_send = None;
        if msg.class == Class::Error {
            if msg.error_code == Some(487) {
                // Switch role and check again (RFC 8445 §7.2.5.1).
                a.role = match a.role {
                    IceRole::Controlling => IceRole::Controlled,
                    IceRole::Controlled => IceRole::Controlling,
                };
                p.state = PairState::Waiting;
                a.trigger(i, now);
                self.run_attempt(id, now);
            } else {
                p.state = PairState::Failed;
            }
            return;
        }
        // Symmetric addresses (RFC 8445 §7.2.5.2.1).
        if from != p.remote {
            p.state = PairState::Failed;
            return;
        }
        if let Some(address) = msg.mapped_address
            && !self.mapped.contains(&address)
        {
            if self.mapped.len() == 8 {
                self.mapped.pop_front();
            }
            self.mapped.push_back(address);
            self.events.push_back(Event::Mapped { address });
        }
        let a = self.attempts.get_mut(&id).expect("present");
        if a.state == State::Connected {
            if a.selected == Some(i) {
                a.last_consent = now;
            }
            return;
        }
        let p = &mut a.pairs[i];
        let was_nomination = p.nominate;
        p.state = PairState::Succeeded;
        match a.role {
            IceRole::Controlling if was_nomination => self.nominate(id, i, now),
            IceRole::Controlling => {
                // Regular nomination: the first pair that works is
                // nominated with a second check carrying USE-CANDIDATE.
                if !a.pairs.iter().any(|p| p.nominate) {
                    let p = &mut a.pairs[i];
                    p.nominate = true;
                    p.state = PairState::Waiting;
                    a.trigger(i, now);
                    self.run_attempt(id, now);
                }
            }
            IceRole::Controlled if was_nomination => self.nominate(id, i, now),
            IceRole::Controlled => {}
        }
    }

    fn nominate(&mut self, id: AttemptId, i: usize, now: Instant) {
        self.dirty.push(id);
        let interval = self.config.consent_interval;
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        a.state = State::Connected;
        a.selected = Some(i);
        a.last_consent = now;
        a.next_consent = Some(now + interval);
        a.triggered.clear();
        let mut stale = Vec::new();
        for (j, p) in a.pairs.iter_mut().enumerate() {
            if j != i {
                stale.extend(p.tid.take());
                p.next_send = None;
            }
        }
        let (remote, remote_kind, role, via) = (a.pairs[i].remote, a.pairs[i].remote_kind, a.role, a.via);
        let (counted, ufrag, source) = (a.counted_pending, a.local_ufrag.clone(), a.source_ip);
        let inviter = a.side == Side::Inviter;
        a.counted_pending = false;
        for t in stale {
            self.transactions.remove(&t);
        }
        self.uncount_pending(counted, &ufrag, source);
        if inviter && let Some(issued) = self.issued.get_mut(&ufrag) {
            issued.connected += 1;
        }
        self.events.push_back(Event::Connected { attempt: id, remote, remote_kind, role, via });
    }
}

/// Re-exported so callers can check datagrams before handing them over.
pub use stun::is_stun;
