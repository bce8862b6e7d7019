//! The host: one UDP port's whole engine. It demultiplexes datagrams
//! between the connectivity engine ([`crate::ice`], STUN) and the secure
//! sessions ([`crate::session`]), runs the Noise IK handshake once ICE has
//! a path, and asks STUN servers where it is seen from. Sans-IO like its
//! parts: the tokio runtime and the simulator drive it the same way.
//!
//! Drive loop: after every input (`handle_datagram`, `handle_timeout`, a
//! command, a stream write or read), drain [`Host::poll_transmit`] and
//! [`Host::poll_event`], then wait until [`Host::poll_timeout`] or the next
//! datagram.
//!
//! Demultiplexing by the first byte: `0x00..=0x03` STUN (RFC 7983),
//! `0xD0..=0xD9` relay packets (served when [`HostConfig::relay`] is set,
//! see [`crate::relay`]), `0xE1` handshake initiation, `0xE2` handshake
//! response, `0xE3` session data.
//!
//! Handshake (Noise IK, docs/DESIGN.md §4), once ICE reports the path:
//!
//! ```text
//! invitee → inviter   0xE1 | len u8 | "inviter_ufrag:invitee_ufrag" | IK msg 1 (payload: Ed25519 key, index)
//! inviter → invitee   0xE2 | invitee's index u32 | IK msg 2 (payload: index)
//! ```
//!
//! The prologue binds the invitation id and both ufrags. The invitee
//! knows the inviter's static key from the invitation; the inviter learns
//! the invitee's from message 1 and checks that it is the X25519 form of the
//! Ed25519 key in the payload and, when a token or the invitee's checks
//! named a key (an RSVP's signer), that it is that key.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::ice::{AcceptRsvpError, AttemptId, Endpoint, EndpointConfig, Event as IceEvent, SocketId, Transmit, Via};
use crate::identity::{Identity, PublicKey};
use crate::relay::client::{CircuitEnd, EndState, Hint};
use crate::relay::{self, Packet as RelayPacket, Relay, RelayConfig, RelayEvent};
use crate::session::conn::{self, CloseReason, Connection, SessionConfig, SessionStats};
use crate::session::noise::Initiator;
use crate::stun::TransactionId;
use crate::token::{CandidateKind, Invitation, TokenId};

/// First byte of a handshake initiation.
pub const HANDSHAKE_INIT: u8 = 0xE1;
/// First byte of a handshake response.
pub const HANDSHAKE_RESP: u8 = 0xE2;
const PROLOGUE_LABEL: &[u8] = b"convoke/session/1";

/// Tunables of a host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The connectivity engine's.
    pub endpoint: EndpointConfig,
    /// Each session's.
    pub session: SessionConfig,
    /// First retransmission of a handshake initiation: 200 ms, doubling.
    pub handshake_rto: Duration,
    /// Initiations sent before the handshake is given up: 6 (about 12 s).
    pub handshake_tries: u32,
    /// Retransmission of a STUN query: 500 ms, doubling (RFC 8489 §6.2.1).
    pub stun_rto: Duration,
    /// STUN requests sent before a server is declared unreachable: 3.
    pub stun_tries: u32,
    /// Relay for other peers on this port, with these caps; `None` (the
    /// default) serves no circuit.
    pub relay: Option<RelayConfig>,
    /// How long a ready circuit at a relay waits before the connectivity
    /// engine checks it, so that the reach ladder's direct steps (the RSVP
    /// round, then up to 44 s of probing) win when they can: 45 s. Checked
    /// at once when both NATs map endpoint-dependently (no direct path to
    /// be had; see [`crate::ice::Endpoint::direct_hopeless`]).
    pub relay_grace: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            endpoint: EndpointConfig::default(),
            session: SessionConfig::default(),
            handshake_rto: Duration::from_millis(200),
            handshake_tries: 6,
            stun_rto: Duration::from_millis(500),
            stun_tries: 3,
            relay: None,
            relay_grace: Duration::from_secs(45),
        }
    }
}

/// What the host reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// From the connectivity engine (invitees arriving, RSVP needed,
    /// failures, reflexive addresses…).
    Ice(IceEvent),
    /// The handshake finished: an authenticated, encrypted session.
    Established {
        /// The session (named by its ICE attempt).
        session: AttemptId,
        /// Who is on the other side (authenticated by the handshake).
        peer: PublicKey,
        /// The path's remote address.
        remote: SocketAddr,
        /// Its candidate type.
        remote_kind: CandidateKind,
        /// Single token or RSVP.
        via: Via,
        /// Whether we issued the invitation.
        inviter: bool,
    },
    /// Stream bytes, the stream's end, or datagrams arrived.
    Readable {
        /// Which session.
        session: AttemptId,
    },
    /// A session ended.
    Closed {
        /// Which session.
        session: AttemptId,
        /// Why.
        reason: CloseReason,
    },
    /// The handshake did not complete.
    HandshakeFailed {
        /// Which attempt.
        session: AttemptId,
        /// Why, for people.
        reason: &'static str,
    },
    /// A session running through a relay moved to a direct path: its
    /// stream goes on, now to `remote`.
    PathChanged {
        /// Which session.
        session: AttemptId,
        /// The new path's remote address.
        remote: SocketAddr,
        /// Its candidate type.
        remote_kind: CandidateKind,
    },
    /// A STUN server told us where it sees us.
    StunMapped {
        /// The server.
        server: SocketAddr,
        /// Our server-reflexive address.
        address: SocketAddr,
    },
    /// A STUN server did not answer.
    StunFailed {
        /// The server.
        server: SocketAddr,
    },
    /// A round of STUN answers classified our NAT (differently from
    /// before). Tokens minted from now on should carry it.
    NatClassified(crate::token::NatInfo),
}

/// What the host tells about one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The authenticated peer.
    pub peer: PublicKey,
    /// The path's remote address.
    pub remote: SocketAddr,
    /// Its candidate type.
    pub remote_kind: CandidateKind,
    /// Single token or RSVP.
    pub via: Via,
    /// Whether we issued the invitation.
    pub inviter: bool,
    /// When the handshake finished.
    pub established: Instant,
    /// Smoothed round-trip time.
    pub rtt: Option<Duration>,
    /// Congestion window, bytes.
    pub window: u64,
    /// Packet and byte counters.
    pub stats: SessionStats,
    /// The relay the path goes through, when it is relayed (`remote` is
    /// then the path's virtual address, `remote_kind` `Relay`).
    pub relay: Option<SocketAddr>,
}

/// Host-level counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Handshake or data packets that matched nothing or did not verify.
    pub dropped: u64,
    /// Handshakes refused: the peer's key is not the one its tokens name.
    pub refused_peers: u64,
    /// Sessions established.
    pub established: u64,
    /// Inviter sessions given up: the initiator never sent an
    /// authenticated packet after our answer (a replayed initiation).
    pub unconfirmed: u64,
    /// Inviter attempts freed: the checks succeeded but no handshake
    /// initiation followed.
    pub no_handshake: u64,
}

struct Open {
    conn: Connection,
    peer: PublicKey,
    remote_kind: CandidateKind,
    via: Via,
    inviter: bool,
    established: Instant,
    /// Inviter: the answer to the initiation (by its ephemeral key), resent
    /// if the initiation comes again, until the first data packet.
    resend: Option<Box<([u8; 32], Vec<u8>)>>,
    /// Inviter: until when we wait for the initiator's first authenticated
    /// packet, which alone proves it holds the handshake's keys (anyone can
    /// replay a message 1). `None` once it came, and for the invitee.
    unconfirmed: Option<Instant>,
}

struct Initiating {
    init: Box<Initiator>,
    msg: Vec<u8>,
    remote: SocketAddr,
    first_sent: Instant,
    next_retry: Instant,
    tries: u32,
}

enum Phase {
    Initiating(Initiating),
    Open(Box<Open>),
}

struct Session {
    local_index: u32,
    phase: Phase,
}

struct StunQuery {
    server: SocketAddr,
    request: Vec<u8>,
    next: Instant,
    tries: u32,
    /// Place in the round's order of requests.
    order: u32,
}

/// One UDP port's engine: connectivity, handshakes and sessions. See the
/// module docs.
pub struct Host {
    config: HostConfig,
    endpoint: Endpoint,
    static_secret: zeroize::Zeroizing<[u8; 32]>,
    public: PublicKey,
    rng: ChaCha20Rng,
    sessions: BTreeMap<AttemptId, Session>,
    by_index: HashMap<u32, AttemptId>,
    early_init: HashMap<AttemptId, (SocketAddr, Vec<u8>)>,
    /// Inviter: attempts whose checks succeeded, and until when we wait
    /// for the invitee's handshake initiation before freeing them.
    awaiting_init: BTreeMap<AttemptId, Instant>,
    stun: HashMap<TransactionId, StunQuery>,
    timers: BTreeSet<(Instant, AttemptId)>,
    scheduled: HashMap<AttemptId, Instant>,
    /// Sessions that may have something to send.
    active: BTreeSet<AttemptId>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<HostEvent>,
    stats: HostStats,
    /// The latest `now` given, for events pumped from `poll_event`.
    last_now: Instant,
    /// This round's STUN answers, by request order.
    observations: Vec<(u32, crate::nat::Observation)>,
    stun_order: u32,
    /// Rounds of STUN answers that classified our NAT (see
    /// [`Host::nat_rounds`]).
    nat_rounds: u64,
    local_port: Option<u16>,
    local_ips: Vec<std::net::IpAddr>,
    /// The relay served on this port, if configured.
    relay: Option<Relay>,
    /// Our identity, which signs our requests to relays.
    identity: Identity,
    /// Circuits at relays, each a path for one attempt (see
    /// [`Host::relay_hints`]).
    paths: Vec<RelayedPath>,
    /// Names the next relayed path's virtual address.
    next_path: u16,
    unix_start: u64,
    start: Instant,
}

/// A circuit at a relay that carries one attempt's checks and session.
///
/// The connectivity engine and the sessions know the path by a virtual
/// address: in 240.0.0.0/4 (reserved, never routed) for a relay reached over
/// IPv4, in 100::/64 (RFC 6666's discard prefix) over IPv6. The host puts
/// what they send there into the circuit's `DATA` packets to the relay, and
/// hands what the circuit brings back to them as coming from that address.
/// Tailscale's magicsock names its relay paths the same way.
#[derive(Debug)]
struct RelayedPath {
    attempt: AttemptId,
    end: CircuitEnd,
    virt: SocketAddr,
    /// Given to the connectivity engine as a remote candidate.
    offered: bool,
    /// Once the attempt's selected path (see [`Host::relay_paths`]).
    used: bool,
    /// When the session moved off it to a direct path.
    left: Option<Instant>,
    /// When both ends were first bound.
    ready: Option<Instant>,
}

/// How long the controlling side keeps a circuit its session moved off,
/// for what the other end still sends through it before it moves too.
pub const RELEASE_AFTER_MOVE: Duration = Duration::from_secs(5);

/// How long after its session moved off a circuit an end gives it back:
/// the controlling side after [`RELEASE_AFTER_MOVE`], the controlled side
/// (which waits for the relay's word that it closed) after the consent
/// timeout.
fn release_wait(endpoint: &Endpoint, attempt: AttemptId) -> Duration {
    if endpoint.role(attempt) == Some(crate::token::IceRole::Controlling) {
        RELEASE_AFTER_MOVE
    } else {
        endpoint.config().consent_timeout
    }
}

impl RelayedPath {
    /// Gives the circuit back: queues its `CLOSED` for the relay, if it
    /// holds one (see [`CircuitEnd::release`]).
    fn release_into(&mut self, transmits: &mut VecDeque<Transmit>) {
        if let Some(packet) = self.end.release() {
            transmits.push_back(Transmit::new(self.end.relay(), packet, SocketId::MAIN));
        }
    }
}

/// How long before an attempt's window closes a ready circuit is checked
/// anyway, the direct steps having had all the rest.
const RELAY_LAST_CHANCE: Duration = Duration::from_secs(8);

/// When a ready circuit (both ends bound) is to be checked: at once when
/// no direct path can work, else after the grace or shortly before the
/// attempt's window closes, whichever comes first.
fn relay_deadline(endpoint: &Endpoint, p: &RelayedPath, grace: Duration) -> Option<Instant> {
    let ready = p.ready?;
    if endpoint.direct_hopeless(p.attempt) {
        return Some(ready);
    }
    let last_chance = endpoint.window_end(p.attempt).map(|w| w.checked_sub(RELAY_LAST_CHANCE).unwrap_or(w));
    Some(last_chance.map_or(ready + grace, |l| l.min(ready + grace)).max(ready))
}

fn relay_due(endpoint: &Endpoint, p: &RelayedPath, grace: Duration, now: Instant) -> bool {
    relay_deadline(endpoint, p, grace).is_some_and(|t| t <= now)
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("sessions", &self.sessions.len()).finish_non_exhaustive()
    }
}

fn open_mut(sessions: &mut BTreeMap<AttemptId, Session>, id: AttemptId) -> Option<&mut Open> {
    match &mut sessions.get_mut(&id)?.phase {
        Phase::Open(o) => Some(o),
        Phase::Initiating(_) => None,
    }
}

impl Host {
    /// A host for `identity`. `seed` keys all its randomness.
    pub fn new(identity: &Identity, config: HostConfig, seed: [u8; 32], now: Instant, unix_now: u64) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut ice_seed = [0u8; 32];
        rng.fill_bytes(&mut ice_seed);
        let mut endpoint = Endpoint::new(config.endpoint.clone(), ice_seed, now, unix_now);
        endpoint.set_local_peer(identity.public_key());
        // Drawn last, and only for a relay: hosts without one keep the
        // randomness they had.
        let relay = config.relay.clone().map(|c| {
            let mut relay_seed = [0u8; 32];
            rng.fill_bytes(&mut relay_seed);
            Relay::new(c, relay_seed, now, unix_now)
        });
        Self {
            identity: identity.clone(),
            paths: Vec::new(),
            next_path: 0,
            unix_start: unix_now,
            start: now,
            config,
            endpoint,
            static_secret: zeroize::Zeroizing::new(identity.x25519_secret_bytes()),
            public: identity.public_key(),
            rng,
            sessions: BTreeMap::new(),
            by_index: HashMap::new(),
            early_init: HashMap::new(),
            awaiting_init: BTreeMap::new(),
            stun: HashMap::new(),
            timers: BTreeSet::new(),
            scheduled: HashMap::new(),
            active: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: HostStats::default(),
            last_now: now,
            observations: Vec::new(),
            stun_order: 0,
            nat_rounds: 0,
            local_port: None,
            local_ips: Vec::new(),
            relay,
        }
    }

    /// The relay this host serves, if configured (its counters, circuits).
    pub fn relay(&self) -> Option<&Relay> {
        self.relay.as_ref()
    }

    /// The next event of the relay this host serves.
    pub fn poll_relay_event(&mut self) -> Option<RelayEvent> {
        self.relay.as_mut()?.poll_event()
    }

    /// The connectivity engine (read-only: counters, attempt states).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The session tunables.
    pub fn session_config(&self) -> &SessionConfig {
        &self.config.session
    }

    /// Host counters.
    pub fn stats(&self) -> &HostStats {
        &self.stats
    }

    /// Accepts invitees on one of our invitations.
    pub fn listen(&mut self, invitation: Invitation) {
        self.endpoint.listen(invitation);
    }

    /// Stops accepting new invitees on an invitation.
    pub fn unlisten(&mut self, invitation: TokenId) {
        self.endpoint.unlisten(invitation);
    }

    /// Imports an invitation and starts connecting.
    pub fn join(&mut self, invitation: &Invitation, now: Instant) -> AttemptId {
        let id = self.endpoint.join(invitation, now);
        self.ask_relay(id, invitation, now);
        self.pump(now);
        id
    }

    /// [`Host::join`], saying whether the attempt may predict or probe
    /// ports ([`crate::ice::Endpoint::join_probing`]).
    pub fn join_probing(&mut self, invitation: &Invitation, now: Instant, probing: bool) -> AttemptId {
        let id = self.endpoint.join_probing(invitation, now, probing);
        self.ask_relay(id, invitation, now);
        self.pump(now);
        id
    }

    /// A relay the inviter takes circuits at: ask it for one now, so that
    /// an RSVP (if one is needed) can carry it.
    fn ask_relay(&mut self, id: AttemptId, invitation: &Invitation, now: Instant) {
        let body = &invitation.token().body;
        let relay = body.relay.iter().find_map(|h| match Hint::parse(h) {
            Some(Hint::Relay(addr)) => Some(addr),
            _ => None,
        });
        if let (Some(relay), Some(inviter)) = (relay, body.author().map(|p| p.public_key)) {
            let mut nonce = [0u8; 8];
            self.rng.fill_bytes(&mut nonce);
            let unix = self.unix_now(now);
            let end = CircuitEnd::request(relay, &self.identity, &inviter, nonce, now, unix);
            self.add_path(id, end);
        }
    }

    fn unix_now(&self, now: Instant) -> u64 {
        self.unix_start + now.saturating_duration_since(self.start).as_secs()
    }

    fn add_path(&mut self, attempt: AttemptId, end: CircuitEnd) {
        let n = self.next_path;
        self.next_path = self.next_path.wrapping_add(1);
        let virt = match end.relay() {
            SocketAddr::V4(r) => SocketAddr::from(([240, 0, (n >> 8) as u8, n as u8], r.port())),
            SocketAddr::V6(r) => SocketAddr::from((std::net::Ipv6Addr::new(0x0100, 0, 0, 0, 0, 0, 0, n), r.port())),
        };
        self.paths.retain(|p| p.virt != virt);
        self.paths.push(RelayedPath { attempt, end, virt, offered: false, used: false, left: None, ready: None });
    }

    /// The relay behind a relayed path's virtual address.
    pub fn relay_of(&self, remote: SocketAddr) -> Option<SocketAddr> {
        self.paths.iter().find(|p| p.virt == remote).map(|p| p.end.relay())
    }

    /// Relay hints for an RSVP of `attempt`: the circuits we hold for it,
    /// for the inviter to bind (see [`crate::relay::client::Hint`]).
    pub fn relay_hints(&self, attempt: AttemptId) -> Vec<String> {
        self.paths
            .iter()
            .filter(|p| p.attempt == attempt)
            .filter_map(|p| match p.end.state() {
                EndState::Bound { circuit, .. } => Some(Hint::Circuit(p.end.relay(), circuit).to_string()),
                _ => None,
            })
            .collect()
    }

    /// [`Host::accept_rsvp`], saying whether the attempt may predict or
    /// probe ports.
    pub fn accept_rsvp_probing(
        &mut self,
        text: &str,
        now: Instant,
        probing: bool,
    ) -> Result<AttemptId, AcceptRsvpError> {
        let r = self.endpoint.accept_rsvp_probing(text, now, probing);
        self.bind_relayed(&r, text, now);
        self.pump(now);
        r
    }

    /// Imports an RSVP to one of our invitations; both sides check at once.
    pub fn accept_rsvp(&mut self, text: &str, now: Instant) -> Result<AttemptId, AcceptRsvpError> {
        let r = self.endpoint.accept_rsvp(text, now);
        self.bind_relayed(&r, text, now);
        self.pump(now);
        r
    }

    /// Circuits the invitee holds for us, named in its RSVP: bind our side
    /// of one.
    fn bind_relayed(&mut self, r: &Result<AttemptId, AcceptRsvpError>, text: &str, now: Instant) {
        let Ok(id) = *r else { return };
        if self.paths.iter().any(|p| p.attempt == id) {
            return;
        }
        let Ok(t) = crate::token::decode(text) else { return };
        let circuit = t.body.relay.iter().find_map(|h| match Hint::parse(h) {
            Some(Hint::Circuit(relay, circuit)) => Some((relay, circuit)),
            _ => None,
        });
        if let Some((relay, circuit)) = circuit {
            self.add_path(id, CircuitEnd::join(relay, circuit, now));
        }
    }

    /// Closes an attempt or session at once (the peer is told if a session
    /// is open).
    pub fn close(&mut self, id: AttemptId, now: Instant) {
        self.close_with(id, 0, "closed", now);
    }

    /// Closes an attempt or session at once, telling the peer of a session
    /// an application `code` and `reason`.
    pub fn close_with(&mut self, id: AttemptId, code: u64, reason: &str, now: Instant) {
        if let Some(Session { phase: Phase::Open(o), .. }) = self.sessions.get_mut(&id)
            && o.unconfirmed.is_none()
        {
            o.conn.close(code, reason);
            self.active.insert(id);
        } else {
            self.drop_session(id);
            self.endpoint.close(id);
        }
        self.pump(now);
    }

    /// Handles one datagram from `from` on the main socket. Decrypts in
    /// place.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        self.handle_datagram_on(now, SocketId::MAIN, from, data);
    }

    /// Handles one datagram from `from` on `socket` (see [`SocketId`]).
    /// Decrypts in place.
    pub fn handle_datagram_on(&mut self, now: Instant, socket: SocketId, from: SocketAddr, data: &mut [u8]) {
        if !self.endpoint.is_socket_open(socket) {
            self.stats.dropped += 1;
            return;
        }
        match data.first() {
            Some(0..=3) => {
                if socket != SocketId::MAIN || !self.stun_answer(from, data) {
                    self.endpoint.handle_datagram_on(now, socket, from, data);
                }
            }
            Some(&b) if relay::is_relay_packet(b) => self.on_relay_packet(now, socket, from, data),
            _ => self.dispatch(now, socket, from, data),
        }
        self.pump(now);
    }

    /// STUN, handshakes and session data, from a peer (or a relayed
    /// path's virtual address).
    fn dispatch(&mut self, now: Instant, socket: SocketId, from: SocketAddr, data: &mut [u8]) {
        match data.first() {
            Some(0..=3) => {
                if socket != SocketId::MAIN || !self.stun_answer(from, data) {
                    self.endpoint.handle_datagram_on(now, socket, from, data);
                }
            }
            Some(&HANDSHAKE_INIT) => self.on_init(now, from, data),
            Some(&HANDSHAKE_RESP) => self.on_resp(now, from, data),
            Some(&conn::DATA) => self.on_data(now, data),
            _ => self.stats.dropped += 1,
        }
    }

    /// A relay packet: from a relay one of our circuits is at (its data,
    /// or its answers to our ends), else for the relay we serve.
    fn on_relay_packet(&mut self, now: Instant, socket: SocketId, from: SocketAddr, data: &mut [u8]) {
        if socket == SocketId::MAIN && self.paths.iter().any(|p| p.end.relay() == from) {
            if data[0] == relay::wire::DATA && data.len() >= relay::wire::DATA_HEADER {
                let mut c = [0u8; 8];
                c.copy_from_slice(&data[1..relay::wire::DATA_HEADER]);
                let circuit = u64::from_be_bytes(c);
                // Circuit 0 is one still being asked for: nothing comes on it.
                let path =
                    self.paths.iter().find(|p| circuit != 0 && p.end.relay() == from && p.end.circuit() == circuit);
                if let Some(virt) = path.map(|p| p.virt) {
                    let inner = &mut data[relay::wire::DATA_HEADER..];
                    // No circuit inside a circuit.
                    if inner.first().is_some_and(|&b| !relay::is_relay_packet(b)) {
                        self.dispatch(now, SocketId::MAIN, virt, inner);
                    } else {
                        self.stats.dropped += 1;
                    }
                    return;
                }
            } else if let Ok(packet) = RelayPacket::decode(data)
                && matches!(
                    packet,
                    RelayPacket::Allocated { .. }
                        | RelayPacket::Refused { .. }
                        | RelayPacket::Challenge { .. }
                        | RelayPacket::Bound { .. }
                        | RelayPacket::Closed { .. }
                )
            {
                for p in self.paths.iter_mut().filter(|p| p.end.relay() == from) {
                    p.end.handle(now, &self.identity, &packet);
                }
                self.relay_paths(now);
                return;
            }
        }
        match &mut self.relay {
            // Circuits live on the port peers were told of.
            Some(r) if socket == SocketId::MAIN => r.handle_datagram(now, from, data),
            _ => self.stats.dropped += 1,
        }
    }

    /// Offers bound circuits to their attempts, and forgets circuits that
    /// failed or whose attempt is gone.
    fn relay_paths(&mut self, now: Instant) {
        let endpoint = &mut self.endpoint;
        let transmits = &mut self.transmits;
        let grace = self.config.relay_grace;
        self.paths.retain_mut(|p| {
            match endpoint.state(p.attempt) {
                None => {
                    p.release_into(transmits);
                    return false;
                }
                Some(crate::ice::State::Connected) if endpoint.selected(p.attempt) == Some(p.virt) => p.used = true,
                // Connected on another path: the circuit is not needed, and
                // goes back to the relay, at once if the session never ran
                // through it. One that did and moved to a direct path keeps
                // it a while: the other end may still be sending through it
                // (its own check on the new path unanswered yet). The
                // controlling side, which moves once its nomination was
                // answered, gives it back after RELEASE_AFTER_MOVE; the
                // controlled side waits for the relay to say it closed, and
                // gives it back itself after the consent timeout if that
                // word was lost.
                Some(crate::ice::State::Connected) => {
                    let left = *p.left.get_or_insert(now);
                    if !p.used || now >= left + release_wait(endpoint, p.attempt) {
                        p.release_into(transmits);
                        return false;
                    }
                }
                _ => {}
            }
            match p.end.state() {
                EndState::Pending => true,
                EndState::Bound { peer_bound, .. } => {
                    if peer_bound && p.ready.is_none() {
                        p.ready = Some(now);
                    }
                    if peer_bound && !p.offered && relay_due(endpoint, p, grace, now) {
                        p.offered = true;
                        endpoint.add_remote_candidate(p.attempt, p.virt, CandidateKind::Relay, now);
                    }
                    true
                }
                // The attempt goes on without it (its direct checks).
                EndState::Failed(_) | EndState::Unreachable => false,
            }
        });
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.endpoint.handle_timeout(now);
        if let Some(r) = &mut self.relay {
            r.handle_timeout(now);
        }
        for p in &mut self.paths {
            p.end.handle_timeout(now);
        }
        self.relay_paths(now);
        self.stun_timeouts(now);
        let silent: Vec<AttemptId> = self.awaiting_init.iter().filter(|&(_, &t)| t <= now).map(|(&id, _)| id).collect();
        for id in silent {
            self.awaiting_init.remove(&id);
            if !self.sessions.contains_key(&id) {
                self.stats.no_handshake += 1;
                self.early_init.remove(&id);
                self.endpoint.close(id);
                self.events.push_back(HostEvent::HandshakeFailed {
                    session: id,
                    reason: "the invitee finished the checks but never started the handshake",
                });
            }
        }
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id));
            self.scheduled.remove(&id);
            self.active.insert(id);
            let cfg = &self.config.session;
            let mut failed = false;
            let socket = self.endpoint.socket_of(id).unwrap_or_default();
            let mut unconfirmed = false;
            match self.sessions.get_mut(&id).map(|s| &mut s.phase) {
                Some(Phase::Open(o)) if o.unconfirmed.is_some_and(|t| t <= now) => unconfirmed = true,
                Some(Phase::Open(o)) => o.conn.handle_timeout(cfg, now),
                Some(Phase::Initiating(i)) if i.next_retry <= now => {
                    if i.tries >= self.config.handshake_tries {
                        failed = true;
                    } else {
                        i.tries += 1;
                        i.next_retry = now + self.config.handshake_rto * (1 << i.tries.min(10));
                        self.transmits.push_back(Transmit::new(i.remote, i.msg.clone(), socket));
                    }
                }
                _ => {}
            }
            if failed {
                self.drop_session(id);
                self.endpoint.close(id);
                self.events.push_back(HostEvent::HandshakeFailed { session: id, reason: "the peer did not answer" });
            }
            if unconfirmed {
                self.stats.unconfirmed += 1;
                self.drop_session(id);
                self.endpoint.close(id);
                self.events.push_back(HostEvent::HandshakeFailed {
                    session: id,
                    reason: "the initiator never sent an authenticated packet (a replayed initiation?)",
                });
            }
        }
        self.pump(now);
    }

    /// The next socket the driver should close (see [`SocketId`]).
    pub fn poll_socket_close(&mut self) -> Option<SocketId> {
        self.endpoint.poll_socket_close()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        loop {
            let t = self.next_transmit(now)?;
            if let Some(t) = self.through_relay(t) {
                return Some(t);
            }
        }
    }

    /// A datagram for a relayed path's virtual address goes to its relay,
    /// in the circuit's `DATA`; one for a path that is gone is dropped.
    fn through_relay(&mut self, t: Transmit) -> Option<Transmit> {
        if !relay::is_virtual(t.destination) {
            return Some(t);
        }
        match self.paths.iter().find(|p| p.virt == t.destination) {
            Some(p) => {
                let packet = relay::client::data(p.end.circuit(), &t.contents);
                Some(Transmit::new(p.end.relay(), packet, SocketId::MAIN))
            }
            None => {
                self.stats.dropped += 1;
                None
            }
        }
    }

    fn next_transmit(&mut self, now: Instant) -> Option<Transmit> {
        loop {
            if let Some(t) = self.transmits.pop_front() {
                return Some(t);
            }
            if let Some(t) = self.relay.as_mut().and_then(Relay::poll_transmit) {
                return Some(t);
            }
            if let Some((relay, packet)) =
                self.paths.iter_mut().find_map(|p| Some((p.end.relay(), p.end.poll_transmit()?)))
            {
                return Some(Transmit::new(relay, packet, SocketId::MAIN));
            }
            if let Some(t) = self.endpoint.poll_transmit() {
                return Some(t);
            }
            let &id = self.active.first()?;
            let cfg = &self.config.session;
            let mut out = None;
            let mut closed = None;
            let socket = self.endpoint.socket_of(id).unwrap_or_default();
            if let Some(Session { phase: Phase::Open(o), .. }) = self.sessions.get_mut(&id) {
                out = o.conn.poll_transmit(cfg, now).map(|c| Transmit::new(o.conn.remote, c, socket));
                // A closed session whose stream bytes the app has not read
                // yet stays until it has (reading re-activates it): the
                // peer's close must not take its last data with it.
                if out.is_none() && !o.conn.is_open() && o.conn.readable_total() == 0 {
                    closed = o.conn.closed.clone().map(|r| (r, o.unconfirmed.is_none()));
                }
            }
            if out.is_none() {
                self.active.remove(&id);
                self.reschedule(id);
            }
            if let Some((reason, reported)) = closed {
                self.drop_session(id);
                self.endpoint.close(id);
                // Nobody was told of a session never confirmed.
                if reported {
                    self.events.push_back(HostEvent::Closed { session: id, reason });
                }
            }
            if out.is_some() {
                return out;
            }
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<HostEvent> {
        if self.events.is_empty() {
            self.pump(self.last_now);
        }
        self.events.pop_front()
    }

    /// When [`Host::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let stun = self.stun.values().map(|q| q.next).min();
        let init = self.awaiting_init.values().min().copied();
        let relay = self.relay.as_ref().and_then(Relay::poll_timeout);
        let grace = self.config.relay_grace;
        // A circuit's check deadline counts only while its peer is bound
        // and it is not offered yet: one that cannot be offered must not
        // keep a deadline in the past.
        let waiting =
            |p: &&RelayedPath| !p.offered && matches!(p.end.state(), EndState::Bound { peer_bound: true, .. });
        let paths = self
            .paths
            .iter()
            .flat_map(|p| {
                let check = Some(p).filter(waiting).and_then(|p| relay_deadline(&self.endpoint, p, grace));
                // The release of a circuit the session moved off.
                let release = p.left.map(|t| t + release_wait(&self.endpoint, p.attempt));
                [p.end.poll_timeout(), check, release]
            })
            .flatten()
            .min();
        [self.endpoint.poll_timeout(), self.timers.first().map(|t| t.0), stun, init, relay, paths]
            .into_iter()
            .flatten()
            .min()
    }

    /// How long an invitee keeps retrying its handshake initiation: what
    /// the inviter waits for it, and for its first packet after the answer.
    fn handshake_patience(&self) -> std::time::Duration {
        self.config.handshake_rto * (1 << (self.config.handshake_tries.min(10) + 1))
    }

    fn reschedule(&mut self, id: AttemptId) {
        if let Some(at) = self.scheduled.remove(&id) {
            self.timers.remove(&(at, id));
        }
        let at = match self.sessions.get(&id).map(|s| &s.phase) {
            Some(Phase::Open(o)) => [o.conn.poll_timeout(), o.unconfirmed].into_iter().flatten().min(),
            Some(Phase::Initiating(i)) => Some(i.next_retry),
            None => None,
        };
        if let Some(at) = at {
            self.timers.insert((at, id));
            self.scheduled.insert(id, at);
        }
    }

    fn drop_session(&mut self, id: AttemptId) {
        if let Some(s) = self.sessions.remove(&id) {
            self.by_index.remove(&s.local_index);
        }
        self.early_init.remove(&id);
        self.awaiting_init.remove(&id);
        self.active.remove(&id);
        if let Some(at) = self.scheduled.remove(&id) {
            self.timers.remove(&(at, id));
        }
        // Its circuits go back to their relays now, not at their idle
        // expiry (the program may be about to exit).
        let transmits = &mut self.transmits;
        self.paths.retain_mut(|p| {
            if p.attempt != id {
                return true;
            }
            p.release_into(transmits);
            false
        });
    }

    /// Moves the connectivity engine's events through the host: a new path
    /// starts a handshake; a lost path ends its session.
    fn pump(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        let mut moved = false;
        while let Some(e) = self.endpoint.poll_event() {
            match &e {
                IceEvent::Connected { attempt, remote, .. } => {
                    let (id, remote) = (*attempt, *remote);
                    if let Some((from, init)) = self.early_init.remove(&id) {
                        self.on_init(now, from, &init);
                    } else if !self.sessions.contains_key(&id) {
                        self.initiate(id, remote, now);
                    }
                    // An inviter waits for the initiation only as long as
                    // an invitee would keep sending it.
                    if !self.sessions.contains_key(&id) && self.endpoint.binding(id).is_some_and(|b| b.inviter) {
                        self.awaiting_init.insert(id, now + self.handshake_patience());
                    }
                }
                IceEvent::PathChanged { attempt, remote, remote_kind } => {
                    let (id, remote, remote_kind) = (*attempt, *remote, *remote_kind);
                    match self.sessions.get_mut(&id).map(|s| &mut s.phase) {
                        Some(Phase::Open(o)) => {
                            o.conn.remote = remote;
                            o.remote_kind = remote_kind;
                            self.active.insert(id);
                            if o.unconfirmed.is_none() {
                                self.events.push_back(HostEvent::PathChanged { session: id, remote, remote_kind });
                            }
                        }
                        Some(Phase::Initiating(i)) => i.remote = remote,
                        None => {}
                    }
                    moved = true;
                }
                IceEvent::ConsentLost { attempt } | IceEvent::Failed { attempt, .. } => {
                    let id = *attempt;
                    if let Some(Session { phase: Phase::Open(o), .. }) = self.sessions.get_mut(&id) {
                        o.conn.abandon(CloseReason::PathLost);
                        // Nobody was told of a session never confirmed.
                        if o.unconfirmed.is_none() {
                            self.events.push_back(HostEvent::Closed { session: id, reason: CloseReason::PathLost });
                        }
                    }
                    self.drop_session(id);
                }
                _ => {}
            }
            self.events.push_back(HostEvent::Ice(e));
        }
        if moved {
            // The circuits those sessions leave go back to their relays.
            self.relay_paths(now);
        }
    }
}

mod handshake;
mod streams;
mod stun_client;

#[cfg(test)]
mod tests;
