//! One connection attempt: an ICE check list towards one remote peer.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::SocketId;
use crate::stun::TransactionId;
use crate::token::{CandidateKind, IceRole, NatInfo, TokenId};

/// How a connection came about: the reach ladder's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// The invitee's checks reached the inviter on their own.
    SingleToken,
    /// Both sides checked at once after the inviter imported an RSVP.
    Rsvp,
    /// After the RSVP, the easy side checked predicted ports of a NAT that
    /// allocates them sequentially.
    PortPrediction,
    /// After the RSVP, the easy side probed random ports of a hard NAT
    /// until one hit the pool of mappings the hard side opened.
    Birthday,
}

impl Via {
    /// The step's name in reports, metrics and status.
    pub fn name(self) -> &'static str {
        match self {
            Via::SingleToken => "single_token",
            Via::Rsvp => "rsvp",
            Via::PortPrediction => "predicted",
            Via::Birthday => "birthday",
        }
    }
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

/// A check list entry: one of our sockets and a remote address (each
/// socket is one local candidate, whatever addresses it is seen at).
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub socket: SocketId,
    pub remote: SocketAddr,
    pub remote_kind: CandidateKind,
    pub remote_priority: u32,
    pub state: PairState,
    /// The transaction in flight, if any.
    pub tid: Option<TransactionId>,
    /// Whether that transaction's requests carry USE-CANDIDATE. A response
    /// nominates only if the request it answers did: retransmissions share
    /// the transaction id, so a pair asked to nominate while a plain check
    /// is in flight starts a new transaction (else the plain check's answer
    /// would nominate a pair the peer never heard nominated).
    pub tid_nominates: bool,
    pub rto: Duration,
    pub next_send: Option<Instant>,
    /// The request we send carries USE-CANDIDATE (controlling) / the peer
    /// asked to nominate this pair (controlled).
    pub nominate: bool,
    /// A pool socket's pair: its checks go at the probing pace, not ICE's.
    pub pool: bool,
    /// Found by probing (a pool socket, or a probe's answer).
    pub probed: bool,
    /// For a remote we learnt from a check it sent (not from a token) and
    /// that has not answered one of ours yet: the bytes it sent us and we
    /// sent it. Anyone holding a reusable invitation can make valid checks
    /// from someone else's address; what goes there stays within
    /// [`AMPLIFICATION_FACTOR`] × what came from it (RFC 9000 §8.1's rule).
    pub unvalidated: Option<Unvalidated>,
}

/// How many times the bytes an address sent us we send to it before it
/// proves it receives (by answering a check, or being in a token).
pub(crate) const AMPLIFICATION_FACTOR: u64 = 3;

/// Bytes exchanged with an address that has not proved it receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Unvalidated {
    /// Bytes it sent us.
    pub received: u64,
    /// Bytes we sent it.
    pub sent: u64,
}

impl Unvalidated {
    /// Whether `len` more bytes stay within the bound.
    pub fn allows(&self, len: usize) -> bool {
        self.sent + len as u64 <= AMPLIFICATION_FACTOR * self.received
    }
}

impl Pair {
    pub fn new(remote: SocketAddr, remote_kind: CandidateKind, remote_priority: u32, rto: Duration) -> Self {
        Pair {
            socket: SocketId::MAIN,
            remote,
            remote_kind,
            remote_priority,
            state: PairState::Waiting,
            tid: None,
            tid_nominates: false,
            rto,
            next_send: None,
            nominate: false,
            pool: false,
            probed: false,
            unvalidated: None,
        }
    }
}

/// Probing for a hard NAT's port (docs/DESIGN.md §3: the ladder after the
/// RSVP round).
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub plan: ProbePlan,
    /// What a connection found by it is called.
    pub via: Via,
    /// Waiting for the node's one probing slot, or running.
    pub active: bool,
    /// When the next probing packet may go.
    pub next_send: Instant,
    /// Running until (then the pool closes or the spray is over).
    pub until: Instant,
    /// When this probe last sent (the shared rate serves the probe that
    /// waited longest).
    pub last_sent: Option<Instant>,
    /// The attempt's window end before probing extended it.
    pub window_before: Instant,
}

#[derive(Debug, Clone)]
pub(crate) enum ProbePlan {
    /// The hard side: open `size` sockets, each checking `target` (the easy
    /// side's reflexive address), then keep their mappings alive.
    Pool { target: SocketAddr, size: u16, opened: u16, cursor: usize },
    /// The easy side: check ports of the hard side's address from the main
    /// socket: predicted ones (`next`: around a base port by a step, the
    /// k-th guess next) or random ones.
    Spray { ip: IpAddr, next: Option<(i32, i32, u32)>, sent: u32, tids: Vec<TransactionId> },
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
    /// Invitee: the end of the whole checking window, if `window_end` is an
    /// earlier "ask for the RSVP after this much silence".
    pub full_window_end: Instant,
    /// Whether anything authenticated came from the peer yet.
    pub heard: bool,
    /// The peer's NAT as its token describes it.
    pub peer_nat: Option<NatInfo>,
    /// Probing, if this pair's NATs need it.
    pub probe: Option<Probe>,
    /// Whether this attempt may probe at all.
    pub probing_allowed: bool,
    /// Sockets other than the main one that this attempt opened (its pool,
    /// or after connecting, the one its session runs on).
    pub sockets: Vec<SocketId>,
    /// Connected through a relay: the rounds of checks on the direct pairs
    /// that may move the session to one of them.
    pub upgrade: Option<Upgrade>,
}

/// Checking the direct pairs of an attempt connected through a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Upgrade {
    /// When the next round goes.
    pub next: Instant,
    /// The pause after it (doubling up to a cap).
    pub interval: Duration,
    /// When a check of the peer's last drew one of ours back at once.
    pub answered: Option<Instant>,
}

/// The least time between two checks an upgrading attempt sends back at
/// once: the peer's checks may come in bursts, and two ends whose answers
/// are lost would otherwise trade checks at the round-trip pace.
pub(crate) const UPGRADE_ANSWER_GAP: Duration = Duration::from_millis(100);

/// The most direct pairs one upgrade round checks.
pub(crate) const UPGRADE_PAIRS: usize = 8;

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
    /// Invitee: ask for the RSVP after this much silence, if shorter.
    pub silence: Option<Duration>,
    pub peer_nat: Option<NatInfo>,
    /// Inviter side: the source address counted against pending limits.
    pub counted_source: Option<Option<std::net::IpAddr>>,
}

impl Attempt {
    /// Takes `role`. A switch forgets every nomination: the controlled
    /// side's flags mean "the peer asked for this pair", the controlling
    /// side's "we ask for it", and neither holds in the other role.
    pub fn set_role(&mut self, role: IceRole) {
        if self.role != role {
            self.role = role;
            for p in &mut self.pairs {
                p.nominate = false;
            }
        }
    }

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
            window_end: now + n.silence.map_or(n.window, |s| s.min(n.window)),
            next_pace: now,
            selected: None,
            last_consent: now,
            next_consent: None,
            counted_pending: n.counted_source.is_some(),
            source_ip: n.counted_source.flatten(),
            remote_peer: n.remote_peer,
            invitation_tie: n.invitation_tie,
            started: now,
            full_window_end: now + n.window,
            heard: false,
            peer_nat: n.peer_nat,
            probe: None,
            probing_allowed: true,
            sockets: Vec::new(),
            upgrade: None,
        }
    }

    /// Whether pair `i` goes through a relay (a circuit's virtual address).
    pub fn relayed(&self, i: usize) -> bool {
        self.pairs[i].remote_kind == CandidateKind::Relay
    }

    /// The direct pairs an upgrade round checks: from the main socket, not
    /// the selected one, best first, at most [`UPGRADE_PAIRS`].
    pub fn upgrade_pairs(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.pairs.len())
            .filter(|&i| {
                let p = &self.pairs[i];
                Some(i) != self.selected && p.socket == SocketId::MAIN && !p.pool && !self.relayed(i)
            })
            .collect();
        v.sort_by_key(|&i| std::cmp::Reverse(self.pairs[i].remote_priority));
        v.truncate(UPGRADE_PAIRS);
        v
    }

    pub fn pair_by(&self, socket: SocketId, remote: SocketAddr) -> Option<usize> {
        self.pairs.iter().position(|p| p.socket == socket && p.remote == remote)
    }

    /// Queues a triggered check on pair `i` to go out now rather than after
    /// the pace: it answers a peer that is checking at this very moment.
    pub fn trigger(&mut self, i: usize, now: Instant) {
        if !self.triggered.contains(&i) {
            self.triggered.push_back(i);
        }
        self.next_pace = self.next_pace.min(now);
    }

    /// Adds a pair (our `socket`, a remote candidate) unless already known;
    /// returns its index.
    pub fn add_remote(
        &mut self,
        socket: SocketId,
        remote: SocketAddr,
        kind: CandidateKind,
        priority: u32,
        rto: Duration,
    ) -> usize {
        if let Some(i) = self.pair_by(socket, remote) {
            return i;
        }
        self.pairs.push(Pair { socket, probed: socket != SocketId::MAIN, ..Pair::new(remote, kind, priority, rto) });
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
            .filter(|(_, p)| p.state == PairState::Waiting && !p.pool)
            .max_by_key(|(_, p)| p.remote_priority)
            .map(|(i, _)| i);
        if waiting.is_some() {
            return waiting;
        }
        self.pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.state == PairState::InProgress && !p.pool && p.next_send.is_some_and(|t| t <= now))
            .min_by_key(|(_, p)| p.next_send)
            .map(|(i, _)| i)
    }

    /// The earliest time this attempt has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Failed => None,
            State::Connected => {
                let mut t = self.next_consent;
                if let Some(u) = &self.upgrade {
                    t = Some(t.map_or(u.next, |t| t.min(u.next)));
                    // A nomination in flight is retransmitted until the round.
                    for p in self.pairs.iter().filter(|p| p.tid_nominates) {
                        if let Some(s) = p.next_send {
                            t = Some(t.map_or(s, |t| t.min(s)));
                        }
                    }
                }
                t
            }
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
                let has_new =
                    !self.triggered.is_empty() || self.pairs.iter().any(|p| p.state == PairState::Waiting && !p.pool);
                if has_new {
                    min(Some(self.next_pace));
                }
                for p in &self.pairs {
                    if p.state == PairState::InProgress && !p.pool {
                        min(p.next_send.map(|s| s.max(self.next_pace)));
                    }
                }
                if let Some(probe) = &self.probe
                    && probe.active
                {
                    min(Some(probe.next_send.min(probe.until)));
                }
                t
            }
        }
    }
}
