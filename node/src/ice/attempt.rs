//! One connection attempt: an ICE check list towards one remote peer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::stun::TransactionId;
use crate::token::{CandidateKind, IceRole, TokenId};

/// How a connection came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The invitee's checks reached the inviter on their own.
    SingleToken,
    /// Both sides checked at once after the inviter imported an RSVP.
    Rsvp,
}

/// Which side of the invitation this attempt is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Side {
    /// We issued the invitation (its local ufrag keys `Endpoint::issued`).
    Inviter,
    /// We imported the invitation; the RSVP we may offer has this id.
    Invitee { rsvp_id: TokenId, rsvp_supported: bool },
}

/// Where an attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Checks are running.
    Checking,
    /// The window passed; the inviter needs our RSVP. Checks continue as
    /// keepalives so our NAT stays open towards the inviter.
    WaitingForRsvp,
    /// A pair is nominated.
    Connected,
    /// Gave up, or consent was lost.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PairState {
    Waiting,
    InProgress,
    Succeeded,
    Failed,
}

/// A check list entry. One socket per endpoint, so a pair is identified by
/// its remote address (local candidates share the same base).
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub remote: SocketAddr,
    pub remote_kind: CandidateKind,
    pub remote_priority: u32,
    pub state: PairState,
    /// The transaction in flight, if any.
    pub tid: Option<TransactionId>,
    pub rto: Duration,
    pub next_send: Option<Instant>,
    /// The request we send carries USE-CANDIDATE (controlling) / the peer
    /// asked to nominate this pair (controlled).
    pub nominate: bool,
}

impl Pair {
    pub fn new(remote: SocketAddr, remote_kind: CandidateKind, remote_priority: u32, rto: Duration) -> Self {
        Pair {
            remote,
            remote_kind,
            remote_priority,
            state: PairState::Waiting,
            tid: None,
            rto,
            next_send: None,
            nominate: false,
        }
    }
}

/// The state of one attempt.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub side: Side,
    pub via: Via,
    pub role: IceRole,
    pub tie_breaker: u64,
    pub local_ufrag: String,
    pub local_pwd: String,
    pub remote_ufrag: String,
    pub remote_pwd: String,
    /// The invitation this attempt belongs to (ours or theirs).
    pub invitation: TokenId,
    pub pairs: Vec<Pair>,
    pub triggered: VecDeque<usize>,
    pub state: State,
    /// End of the checking window (then RSVP, or failure).
    pub window_end: Instant,
    /// Earliest time the next check may go (pacing, Ta).
    pub next_pace: Instant,
    /// The nominated pair.
    pub selected: Option<usize>,
    /// Last time the peer answered on the selected pair (consent).
    pub last_consent: Instant,
    pub next_consent: Option<Instant>,
    /// Whether the inviter side has validated any pair yet (an invitee the
    /// inviter heard from counts against its pending limits until then).
    pub counted_pending: bool,
    pub source_ip: Option<std::net::IpAddr>,
    /// Who the peer is: the inviter's key from its invitation, or the key
    /// an invitee claims in CONVOKE-PEER.
    pub remote_peer: Option<crate::identity::PublicKey>,
    /// The tie-breaker of the invitation this attempt belongs to, which
    /// settles crossing invitations.
    pub invitation_tie: u64,
    /// When the attempt began (time to connect counts from here).
    pub started: Instant,
}

/// What distinguishes a new attempt; everything else starts the same.
pub(crate) struct NewAttempt {
    pub side: Side,
    pub role: IceRole,
    pub tie_breaker: u64,
    pub local: (String, String),
    pub remote: (String, String),
    pub invitation: TokenId,
    pub invitation_tie: u64,
    pub remote_peer: Option<crate::identity::PublicKey>,
    pub pairs: Vec<Pair>,
    pub window: Duration,
    /// Inviter side: the source address counted against pending limits.
    pub counted_source: Option<Option<std::net::IpAddr>>,
}

impl Attempt {
    /// A new attempt in state Checking, first check due at once.
    pub fn new(n: NewAttempt, now: Instant) -> Self {
        Attempt {
            side: n.side,
            via: Via::SingleToken,
            role: n.role,
            tie_breaker: n.tie_breaker,
            local_ufrag: n.local.0,
            local_pwd: n.local.1,
            remote_ufrag: n.remote.0,
            remote_pwd: n.remote.1,
            invitation: n.invitation,
            pairs: n.pairs,
            triggered: VecDeque::new(),
            state: State::Checking,
            window_end: now + n.window,
            next_pace: now,
            selected: None,
            last_consent: now,
            next_consent: None,
            counted_pending: n.counted_source.is_some(),
            source_ip: n.counted_source.flatten(),
            remote_peer: n.remote_peer,
            invitation_tie: n.invitation_tie,
            started: now,
        }
    }

    pub fn pair_by_remote(&self, remote: SocketAddr) -> Option<usize> {
        self.pairs.iter().position(|p| p.remote == remote)
    }

    /// Queues a triggered check on pair `i` to go out now rather than after
    /// the pace: it answers a peer that is checking at this very moment.
    pub fn trigger(&mut self, i: usize, now: Instant) {
        self.triggered.push_back(i);
        self.next_pace = self.next_pace.min(now);
    }

    /// Adds a remote candidate unless already known; returns its index.
    pub fn add_remote(&mut self, remote: SocketAddr, kind: CandidateKind, priority: u32, rto: Duration) -> usize {
        if let Some(i) = self.pair_by_remote(remote) {
            return i;
        }
        self.pairs.push(Pair::new(remote, kind, priority, rto));
        self.pairs.len() - 1
    }

    /// The next pair to check now: a triggered one, else the best waiting
    /// one, else an in-progress one whose retransmission is due.
    pub fn next_check(&mut self, now: Instant) -> Option<usize> {
        while let Some(i) = self.triggered.pop_front() {
            if self.pairs.get(i).is_some_and(|p| p.state != PairState::Failed) {
                return Some(i);
            }
        }
        let waiting = self
            .pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.state == PairState::Waiting)
            .max_by_key(|(_, p)| p.remote_priority)
            .map(|(i, _)| i);
        if waiting.is_some() {
            return waiting;
        }
        self.pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.state == PairState::InProgress && p.next_send.is_some_and(|t| t <= now))
            .min_by_key(|(_, p)| p.next_send)
            .map(|(i, _)| i)
    }

    /// The earliest time this attempt has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Failed => None,
            State::Connected => self.next_consent,
            State::Checking | State::WaitingForRsvp => {
                let mut t = None;
                let mut min = |x: Option<Instant>| {
                    if let Some(x) = x {
                        t = Some(t.map_or(x, |t: Instant| t.min(x)));
                    }
                };
                if self.state == State::Checking {
                    min(Some(self.window_end));
                }
                let has_new = !self.triggered.is_empty() || self.pairs.iter().any(|p| p.state == PairState::Waiting);
                if has_new {
                    min(Some(self.next_pace));
                }
                for p in &self.pairs {
                    if p.state == PairState::InProgress {
                        min(p.next_send.map(|s| s.max(self.next_pace)));
                    }
                }
                t
            }
        }
    }
}
