//! What the connectivity engine takes and reports: its tunables, the
//! datagrams it sends, its events, attempt ids and summaries, counters.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::Via;
use crate::identity::PublicKey;
use crate::token::{CandidateKind, IceRole, TokenError, TokenId};

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
    /// An invitee asks for the RSVP after this long without hearing from an
    /// inviter whose token says it is behind a NAT: 2 s (single-token
    /// connections complete in well under a second).
    pub rsvp_after_silence: Duration,
    /// The same when the inviter's token does not say how its NAT behaves:
    /// 10 s. A public inviter gets the invitation's whole window.
    pub rsvp_after_silence_unknown: Duration,
    /// Whether to predict or probe for ports when the pair's NATs leave no
    /// other direct path (docs/DESIGN.md §3): on.
    pub probing: bool,
    /// Probing packets per second, both sides: 50.
    pub probe_rate: u32,
    /// Most probes the easy side sends in one attempt: 2,000.
    pub probe_budget: u32,
    /// Sockets the hard side opens for birthday probing: 256 (16 when its
    /// ports are predictable).
    pub pool_size: u16,
    /// The IP TTL of the packets a hard invitee's pool sends to open and
    /// refresh its NAT's mappings, 0 for the default: 5, as hyperdht's hole
    /// puncher uses. They need only reach our own NAT (a hop or two away):
    /// the inviter starts probing once it has our RSVP, and until then they
    /// would arrive unsolicited at its router, and a router that takes such
    /// packets to itself makes a flow of them, after which its host's probe
    /// to that pool port must leave from another port, which the pool's
    /// filter refuses. A hard inviter's pool sends checks with the default
    /// TTL: the invitee has probed before the pool opened, and those checks
    /// must reach the ports it opened.
    pub pool_ttl: u8,
    /// How long the hard side keeps its pool open waiting for the easy side's
    /// probes: 240 s (the RSVP may take a person minutes to carry, and the
    /// easy side may have to wait for its turn to probe).
    pub pool_lifetime: Duration,
    /// Connected through a relay: how long after connecting the direct
    /// pairs are checked again (then after twice as long each time, up to
    /// [`EndpointConfig::upgrade_interval_max`]); the session moves to the
    /// first that works both ways.
    pub upgrade_interval: Duration,
    /// The longest pause between two such rounds.
    pub upgrade_interval_max: Duration,
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
            rsvp_after_silence: Duration::from_secs(2),
            rsvp_after_silence_unknown: Duration::from_secs(10),
            probing: true,
            probe_rate: 50,
            probe_budget: 2_000,
            pool_size: 256,
            pool_ttl: 5,
            pool_lifetime: Duration::from_secs(240),
            upgrade_interval: Duration::from_secs(2),
            upgrade_interval_max: Duration::from_secs(60),
        }
    }
}

/// One of the node's UDP sockets. [`SocketId::MAIN`] is the port the node
/// listens on, the only one most nodes ever use. The others are opened by
/// the driver the first time a [`Transmit`] names them (a hard NAT's side
/// of birthday probing opens a pool of them) and closed when the engine
/// says so ([`Endpoint::poll_socket_close`](super::Endpoint::poll_socket_close));
/// a session found through a pool socket keeps running on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SocketId(pub u16);

impl SocketId {
    /// The node's own port.
    pub const MAIN: SocketId = SocketId(0);
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: SocketAddr,
    /// The bytes.
    pub contents: Vec<u8>,
    /// From which of our sockets.
    pub socket: SocketId,
    /// An IP TTL (hop limit) for this datagram instead of the socket's
    /// default, or `None`. A hard invitee's birthday pool packets carry a low
    /// one (see [`EndpointConfig::pool_ttl`]); drivers that cannot set it
    /// send with the default.
    pub ttl: Option<u8>,
}

impl Transmit {
    /// A datagram from `socket`, with the default TTL.
    pub fn new(destination: SocketAddr, contents: Vec<u8>, socket: SocketId) -> Self {
        Self { destination, contents, socket, ttl: None }
    }

    /// A datagram from the main socket.
    pub fn main(destination: SocketAddr, contents: Vec<u8>) -> Self {
        Self::new(destination, contents, SocketId::MAIN)
    }
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
    /// with [`Endpoint::rsvp_token_id`](super::Endpoint::rsvp_token_id) and `Token::new_rsvp`.
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
    /// A session connected through a relay found a direct path, and its
    /// pair is now the selected one: send there from now on.
    PathChanged {
        /// Which attempt.
        attempt: AttemptId,
        /// The new path's remote address.
        remote: SocketAddr,
        /// Its candidate type.
        remote_kind: CandidateKind,
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

/// What ties a session to its attempt; see [`Endpoint::binding`](super::Endpoint::binding).
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
    /// Datagrams not sent because they would take what an unvalidated
    /// address gets past 3× what it sent (answers, checks to it).
    pub amplification_refused: u64,
    /// Attempts begun as the invitee (invitations imported).
    pub attempts_invitee: u64,
    /// Attempts begun as the inviter (an invitee's first check or RSVP).
    pub attempts_inviter: u64,
    /// Probes sent to guessed ports of a hard NAT (port prediction and
    /// birthday probing, the easy side).
    pub probes_sent: u64,
    /// Pool sockets opened (birthday probing, the hard side).
    pub pool_sockets_opened: u64,
    /// Probing attempts begun (either side).
    pub probing_started: u64,
    /// Probing attempts that connected.
    pub probing_connected: u64,
    /// Connections moved from a relayed path to a direct one.
    pub upgraded: u64,
}

/// What [`Endpoint::attempt_summary`](super::Endpoint::attempt_summary) tells about an attempt.
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
