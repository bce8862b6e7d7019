//! The relay role: a member (or a standalone `convoke relay` on a public
//! machine) forwards datagrams between two peers that have no direct path,
//! such as two symmetric NATs. Sans-IO like the rest of the engine: the
//! runtime and the simulator drive it.
//!
//! # How a circuit is made
//!
//! ```text
//!  A (asks)                 relay R                       B (named by A)
//!  ALLOCATE(A, B, sig_A) ──▶                     A's key signs the request
//!            ◀── ALLOCATED(circuit, caps)        A puts R and the circuit in its token
//!  BIND(circuit, A) ─────▶                       ◀───── BIND(circuit, B)
//!            ◀── CHALLENGE(c_A)                  CHALLENGE(c_B) ──▶
//!  ANSWER(c_A, sig_A) ───▶                       ◀───── ANSWER(c_B, sig_B)
//!            ◀── BOUND                           BOUND ──▶
//!  DATA(circuit, …) ─────▶ forwarded unchanged ──▶ DATA(circuit, …), and back
//! ```
//!
//! * **An allocation is per pair of peers.** A names B's key; only the
//!   holders of the two keys can bind the circuit's two ends, and the relay
//!   forwards only between the two bound addresses.
//! * **A bind is tied to the source address.** The challenge is a MAC, under
//!   a secret that rotates every 30 s, of the asker's address, the circuit
//!   and the side: the relay keeps no state for a `BIND` (a flood of them
//!   costs it nothing), and a captured `ANSWER` replayed from another address
//!   (to aim the circuit's traffic at a victim) fails. This is the
//!   three-way bind of Tailscale's peer relays.
//! * **Never more bytes than received.** To a packet it cannot authenticate,
//!   the relay answers with at most as many bytes as the packet had (`BIND`
//!   is padded to the size of its `CHALLENGE`), so it cannot be used to
//!   amplify a flood at a spoofed address. Data from an address that is not
//!   bound is dropped without an answer.
//! * **Caps** ([`RelayLimits`]): circuits in total and per peer, bytes,
//!   bytes a second and lifetime per circuit, bytes a second in total;
//!   circuits expire when not bound in 30 s or idle for 5 minutes. The
//!   defaults are libp2p circuit relay v2's spirit (2 minutes and 128 KiB a
//!   circuit, 4 circuits a peer, 16 in all); [`RelayLimits::unlimited`] is
//!   for operators who run a relay for their own network.
//! * **End to end.** The two ends run their Noise session through the
//!   circuit: the relay sees ciphertext and two addresses.

pub mod client;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sha2::Sha256;

use crate::ice::{SocketId, Transmit};
use crate::identity::PublicKey;
pub use wire::{DecodeError, Packet, Reason, Side, is_relay_packet};

/// Whether `a` is a relayed path's virtual address: how an end's
/// connectivity engine and sessions name a path through a circuit. In
/// 240.0.0.0/4 (reserved, never routed) for a relay reached over IPv4, in
/// 100::/64 (RFC 6666's discard prefix) over IPv6; nothing is ever sent to
/// one, the host wraps it into the circuit's `DATA` to the relay.
pub fn is_virtual(a: SocketAddr) -> bool {
    match a {
        SocketAddr::V4(v4) => v4.ip().octets()[0] >= 240 && !v4.ip().is_broadcast(),
        SocketAddr::V6(v6) => v6.ip().segments()[..4] == [0x0100, 0, 0, 0],
    }
}

/// How far a request's clock may be from the relay's: 2 minutes.
pub const MAX_SKEW: Duration = Duration::from_secs(120);
/// How often the challenge secret rotates (the previous one stays valid
/// for one more period).
pub const SECRET_PERIOD: Duration = Duration::from_secs(30);
/// Events kept for a driver that does not read them; older ones are dropped.
const EVENT_QUEUE: usize = 1024;

/// What a relay allows. `None` is no limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Circuits at once, in all: 16.
    pub circuits: Option<u32>,
    /// Circuits at once that one key is an end of: 4.
    pub circuits_per_peer: Option<u32>,
    /// How long a circuit may live: 2 minutes.
    pub circuit_duration: Option<Duration>,
    /// Bytes a circuit may carry, both ways together: 128 KiB.
    pub circuit_bytes: Option<u64>,
    /// Bytes a second one circuit may carry (a token bucket holding one
    /// second's worth): 64 KiB/s. Packets over it are dropped.
    pub circuit_rate: Option<u32>,
    /// Bytes a second the relay forwards in all: 1 MiB/s.
    pub total_rate: Option<u64>,
    /// A circuit whose two ends are not both bound after this is closed: 30 s.
    pub unbound_timeout: Duration,
    /// A circuit that carried nothing (data or keepalive) for this long is
    /// closed: 5 minutes.
    pub idle_timeout: Duration,
    /// Signature checks a second (allocations and binds), so that a flood
    /// of forged requests costs a bounded share of a core: 2,000.
    pub verifications_per_s: u32,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            circuits: Some(16),
            circuits_per_peer: Some(4),
            circuit_duration: Some(Duration::from_secs(120)),
            circuit_bytes: Some(128 * 1024),
            circuit_rate: Some(64 * 1024),
            total_rate: Some(1024 * 1024),
            unbound_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            verifications_per_s: 2000,
        }
    }
}

impl RelayLimits {
    /// No cap on bytes, rate or lifetime, and room for many circuits
    /// (10,000 in all, 64 a peer: about 7 MB of state), for an operator's
    /// relay serving its own network. The expiry of unbound and idle
    /// circuits and the bound on signature checks stay. Without an
    /// allow-list anyone may hold those circuits as long as it keeps them
    /// busy: name the members (`RelayConfig::allow`) where that matters.
    pub fn unlimited() -> Self {
        Self {
            circuits: Some(10_000),
            circuits_per_peer: Some(64),
            circuit_duration: None,
            circuit_bytes: None,
            circuit_rate: None,
            total_rate: None,
            ..Self::default()
        }
    }
}

/// A relay's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayConfig {
    /// Its caps.
    pub limits: RelayLimits,
    /// The keys it allocates circuits for (as requester); `None` serves
    /// anyone. The peer a requester names needs no place on the list.
    pub allow: Option<BTreeSet<PublicKey>>,
}

/// What the relay reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// A circuit was granted.
    Allocated {
        /// Its number.
        circuit: u64,
        /// The requester.
        a: PublicKey,
        /// The peer it named.
        b: PublicKey,
    },
    /// An end bound its address.
    Bound {
        /// The circuit.
        circuit: u64,
        /// Which end.
        side: Side,
        /// From where.
        addr: SocketAddr,
    },
    /// An allocation was refused.
    Refused {
        /// The requester.
        a: PublicKey,
        /// Why.
        reason: Reason,
    },
    /// A circuit ended.
    Closed {
        /// Its number.
        circuit: u64,
        /// Why.
        reason: Reason,
        /// Payload bytes it carried, both ways.
        bytes: u64,
        /// How long it lived.
        lived: Duration,
    },
}

/// Counters since the relay started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Circuits granted.
    pub allocated: u64,
    /// Allocations refused (caps, clock, list).
    pub refused: u64,
    /// Ends bound.
    pub bound: u64,
    /// Circuits ended.
    pub closed: u64,
    /// Data packets forwarded.
    pub forwarded_packets: u64,
    /// Their payload bytes.
    pub forwarded_bytes: u64,
    /// Data packets dropped by a rate cap.
    pub dropped_rate: u64,
    /// Data or keepalives from an address not bound to the circuit, or for
    /// no circuit; binds for no circuit.
    pub dropped_unbound: u64,
    /// Packets that do not decode.
    pub dropped_malformed: u64,
    /// Requests whose signature or challenge did not check.
    pub dropped_forged: u64,
    /// Requests dropped because the signature checks' budget was spent.
    pub dropped_busy: u64,
    /// Circuits an end released (it found a direct path).
    pub released: u64,
}

/// One circuit's state, for `status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitInfo {
    /// Its number.
    pub circuit: u64,
    /// The two ends' keys, `[A, B]`.
    pub keys: [PublicKey; 2],
    /// The two ends' bound addresses.
    pub bound: [Option<SocketAddr>; 2],
    /// Payload bytes carried.
    pub bytes: u64,
    /// Age.
    pub age: Duration,
}

/// A token bucket of bytes.
#[derive(Debug, Clone)]
struct Bucket {
    rate: u64,
    depth: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    /// Bytes a second: holds one second's worth, and room for one full
    /// datagram at least.
    fn bytes(rate: u64, now: Instant) -> Self {
        Self::new(rate, rate.max(65_536) as f64, now)
    }

    fn new(rate: u64, depth: f64, now: Instant) -> Self {
        Self { rate, depth, level: depth, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.level = (self.level + dt * self.rate as f64).min(self.depth);
    }

    fn has(&mut self, n: usize, now: Instant) -> bool {
        self.refill(now);
        self.level >= n as f64
    }

    fn take(&mut self, n: usize) {
        self.level -= n as f64;
    }
}

#[derive(Debug)]
struct Circuit {
    keys: [PublicKey; 2],
    bound: [Option<SocketAddr>; 2],
    nonce: [u8; 8],
    created: Instant,
    last_active: Instant,
    bytes: u64,
    bucket: Option<Bucket>,
    /// The deadline this circuit has in `Relay::timers`.
    timer: Instant,
}

/// The relay's state machine. Feed it every datagram whose first byte
/// [`is_relay_packet`], drain [`Relay::poll_transmit`] and
/// [`Relay::poll_event`], and call [`Relay::handle_timeout`] at
/// [`Relay::poll_timeout`].
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    rng: ChaCha20Rng,
    secret: [u8; 32],
    previous: [u8; 32],
    rotate_at: Instant,
    started: Instant,
    unix_started: u64,
    circuits: HashMap<u64, Circuit>,
    per_peer: HashMap<PublicKey, u32>,
    /// Circuits by their two keys and the request's nonce, to answer retransmissions.
    by_nonce: HashMap<(PublicKey, PublicKey, [u8; 8]), u64>,
    timers: BTreeSet<(Instant, u64)>,
    total: Option<Bucket>,
    verify_budget: Bucket,
    transmits: VecDeque<Transmit>,
    events: VecDeque<RelayEvent>,
    stats: RelayStats,
}

impl Relay {
    /// A relay whose randomness (circuit numbers, challenge secrets) comes
    /// from `seed`, started at `now` (`unix_now` in Unix seconds).
    pub fn new(config: RelayConfig, seed: [u8; 32], now: Instant, unix_now: u64) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut secret = [0u8; 32];
        let mut previous = [0u8; 32];
        rng.fill_bytes(&mut secret);
        rng.fill_bytes(&mut previous);
        let total = config.limits.total_rate.map(|r| Bucket::bytes(r, now));
        // One second's worth of checks, no more, after any idle time.
        let checks = config.limits.verifications_per_s;
        let verify_budget = Bucket::new(u64::from(checks), f64::from(checks.max(1)), now);
        Self {
            config,
            rng,
            secret,
            previous,
            rotate_at: now + SECRET_PERIOD,
            started: now,
            unix_started: unix_now,
            circuits: HashMap::new(),
            per_peer: HashMap::new(),
            by_nonce: HashMap::new(),
            timers: BTreeSet::new(),
            total,
            verify_budget,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: RelayStats::default(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Its counters.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Circuits open now.
    pub fn circuit_count(&self) -> usize {
        self.circuits.len()
    }

    /// The circuits open now, in no particular order.
    pub fn circuits(&self, now: Instant) -> impl Iterator<Item = CircuitInfo> + '_ {
        self.circuits.iter().map(move |(&circuit, c)| CircuitInfo {
            circuit,
            keys: c.keys,
            bound: c.bound,
            bytes: c.bytes,
            age: now.saturating_duration_since(c.created),
        })
    }

    /// Handles one datagram from `from`. Anything that is not a relay
    /// packet this version reads is counted and dropped.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.rotate(now);
        let packet = match Packet::decode(data) {
            Ok(p) => p,
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        match packet {
            Packet::Allocate { nonce, unix_s, a, b, sig } => self.on_allocate(now, from, nonce, unix_s, a, b, &sig),
            Packet::Bind { circuit, side } => self.on_bind(from, circuit, side),
            Packet::Answer { circuit, side, challenge, sig } => {
                self.on_answer(now, from, circuit, side, &challenge, &sig)
            }
            Packet::Data { circuit, payload } => self.on_data(now, from, circuit, payload.len(), data),
            // A keepalive is answered with the end's binding, so an end
            // that missed the news of its peer's arrival learns it here.
            Packet::Ping { circuit, side, .. } => match self.circuits.get_mut(&circuit) {
                Some(c) if c.bound[side.index()] == Some(from) => {
                    c.last_active = now;
                    let peer_bound = c.bound[side.other().index()].is_some();
                    self.send(from, Packet::Bound { circuit, side, peer_bound }.encode());
                }
                _ => self.stats.dropped_unbound += 1,
            },
            // An end that no longer needs its circuit (it found a direct
            // path) releases it: as authenticated as its data, by the
            // address it bound. Both ends hear why it closed.
            Packet::Closed { circuit, .. } => match self.circuits.get(&circuit) {
                Some(c) if c.bound.contains(&Some(from)) => {
                    self.stats.released += 1;
                    self.close(now, circuit, Reason::Released);
                }
                _ => self.stats.dropped_unbound += 1,
            },
            // What only a relay sends: a reflection, or a confused peer.
            Packet::Allocated { .. } | Packet::Refused { .. } | Packet::Challenge { .. } | Packet::Bound { .. } => {
                self.stats.dropped_malformed += 1
            }
        }
    }

    /// Runs the expiries due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.rotate(now);
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id));
            let Some(c) = self.circuits.get_mut(&id) else { continue };
            let (deadline, reason) = Self::deadline(&self.config.limits, c);
            if deadline <= now {
                self.close(now, id, reason);
            } else {
                c.timer = deadline;
                self.timers.insert((deadline, id));
            }
        }
    }

    /// When [`Relay::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let circuit = self.timers.first().map(|&(at, _)| at);
        Some(circuit.map_or(self.rotate_at, |c| c.min(self.rotate_at)))
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// Ends every circuit, telling the bound ends (`Reason::Shutdown`).
    pub fn shutdown(&mut self, now: Instant) {
        let ids: Vec<u64> = self.circuits.keys().copied().collect();
        for id in ids {
            self.close(now, id, Reason::Shutdown);
        }
    }

    fn unix_now(&self, now: Instant) -> u64 {
        self.unix_started + now.saturating_duration_since(self.started).as_secs()
    }

    fn rotate(&mut self, now: Instant) {
        // Two rotations at most: after a long pause both secrets are new.
        for _ in 0..2 {
            if now < self.rotate_at {
                return;
            }
            self.previous = self.secret;
            self.rng.fill_bytes(&mut self.secret);
            self.rotate_at += SECRET_PERIOD;
        }
        if now >= self.rotate_at {
            self.rotate_at = now + SECRET_PERIOD;
        }
    }

    fn emit(&mut self, event: RelayEvent) {
        if self.events.len() >= EVENT_QUEUE {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn send(&mut self, to: SocketAddr, contents: Vec<u8>) {
        self.transmits.push_back(Transmit::new(to, contents, SocketId::MAIN));
    }

    /// Spends one signature check from the budget, or says no.
    fn may_verify(&mut self, now: Instant) -> bool {
        if self.verify_budget.has(1, now) {
            self.verify_budget.take(1);
            true
        } else {
            self.stats.dropped_busy += 1;
            false
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_allocate(
        &mut self,
        now: Instant,
        from: SocketAddr,
        nonce: [u8; 8],
        unix_s: u64,
        a: PublicKey,
        b: PublicKey,
        sig: &[u8; 64],
    ) {
        // A retransmission gets the same answer, with no new check: the
        // circuit's requester signed this very nonce.
        if let Some(&id) = self.by_nonce.get(&(a, b, nonce)) {
            let answer = self.allocated(nonce, id);
            self.send(from, answer);
            return;
        }
        if !self.may_verify(now) {
            return;
        }
        if !a.verify(&wire::allocate_signed(&nonce, unix_s, &a, &b), sig) {
            self.stats.dropped_forged += 1;
            return;
        }
        // Authenticated from here: a refusal may be answered.
        let limits = &self.config.limits;
        let count = |k: &PublicKey| self.per_peer.get(k).copied().unwrap_or(0);
        let skew = self.unix_now(now).abs_diff(unix_s);
        let refusal = if self.config.allow.as_ref().is_some_and(|l| !l.contains(&a)) || a == b {
            Some(Reason::NotAllowed)
        } else if skew > MAX_SKEW.as_secs() {
            Some(Reason::Stale)
        } else if limits.circuits.is_some_and(|m| self.circuits.len() as u64 >= u64::from(m)) {
            Some(Reason::TooManyCircuits)
        } else if limits.circuits_per_peer.is_some_and(|m| count(&a) >= m || count(&b) >= m) {
            Some(Reason::TooManyForPeer)
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.stats.refused += 1;
            self.emit(RelayEvent::Refused { a, reason });
            self.send(from, Packet::Refused { nonce, reason }.encode());
            return;
        }
        let id = loop {
            let id = self.rng.next_u64();
            if id != 0 && !self.circuits.contains_key(&id) {
                break id;
            }
        };
        let c = Circuit {
            keys: [a, b],
            bound: [None, None],
            nonce,
            created: now,
            last_active: now,
            bytes: 0,
            bucket: limits.circuit_rate.map(|r| Bucket::bytes(u64::from(r), now)),
            timer: now,
        };
        let (deadline, _) = Self::deadline(limits, &c);
        self.circuits.insert(id, Circuit { timer: deadline, ..c });
        self.timers.insert((deadline, id));
        self.by_nonce.insert((a, b, nonce), id);
        *self.per_peer.entry(a).or_default() += 1;
        *self.per_peer.entry(b).or_default() += 1;
        self.stats.allocated += 1;
        self.emit(RelayEvent::Allocated { circuit: id, a, b });
        let answer = self.allocated(nonce, id);
        self.send(from, answer);
    }

    fn allocated(&self, nonce: [u8; 8], circuit: u64) -> Vec<u8> {
        let l = &self.config.limits;
        Packet::Allocated {
            nonce,
            circuit,
            lifetime_s: l.circuit_duration.map_or(0, |d| d.as_secs().clamp(1, u64::from(u32::MAX)) as u32),
            bytes: l.circuit_bytes.unwrap_or(0),
            rate: l.circuit_rate.unwrap_or(0),
        }
        .encode()
    }

    /// The challenge for `from` binding `side` of `circuit` under `secret`.
    fn challenge(secret: &[u8; 32], from: SocketAddr, circuit: u64, side: Side) -> [u8; 16] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
        match from {
            SocketAddr::V4(v4) => mac.update(&v4.ip().octets()),
            SocketAddr::V6(v6) => mac.update(&v6.ip().octets()),
        }
        mac.update(&from.port().to_be_bytes());
        mac.update(&circuit.to_be_bytes());
        mac.update(&[side as u8]);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    fn on_bind(&mut self, from: SocketAddr, circuit: u64, side: Side) {
        // Stateless: a MAC, no entry. Only for a circuit that exists, so a
        // scan for circuit numbers learns nothing for free.
        if !self.circuits.contains_key(&circuit) {
            self.stats.dropped_unbound += 1;
            return;
        }
        let challenge = Self::challenge(&self.secret, from, circuit, side);
        self.send(from, Packet::Challenge { circuit, side, challenge }.encode());
    }

    fn on_answer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        circuit: u64,
        side: Side,
        challenge: &[u8; 16],
        sig: &[u8; 64],
    ) {
        let Some(key) = self.circuits.get(&circuit).map(|c| c.keys[side.index()]) else {
            self.stats.dropped_unbound += 1;
            return;
        };
        let fresh = [&self.secret, &self.previous]
            .into_iter()
            .any(|s| equal(&Self::challenge(s, from, circuit, side), challenge));
        if !fresh {
            self.stats.dropped_forged += 1;
            return;
        }
        if !self.may_verify(now) {
            return;
        }
        if !key.verify(&wire::answer_signed(circuit, side, challenge), sig) {
            self.stats.dropped_forged += 1;
            return;
        }
        let Some(c) = self.circuits.get_mut(&circuit) else { return };
        let newly = c.bound[side.index()] != Some(from);
        c.bound[side.index()] = Some(from);
        c.last_active = now;
        let peer_bound = c.bound[side.other().index()].is_some();
        if newly {
            self.stats.bound += 1;
            self.emit(RelayEvent::Bound { circuit, side, addr: from });
        }
        self.send(from, Packet::Bound { circuit, side, peer_bound }.encode());
        // Tell the other end its peer is there, so it need not poll.
        if newly
            && peer_bound
            && let Some(other) = self.circuits.get(&circuit).and_then(|c| c.bound[side.other().index()])
        {
            self.send(other, Packet::Bound { circuit, side: side.other(), peer_bound: true }.encode());
        }
    }

    fn on_data(&mut self, now: Instant, from: SocketAddr, circuit: u64, payload: usize, data: &[u8]) {
        if let Some(to) = self.route(now, from, circuit, payload) {
            self.send(to, data.to_vec());
        }
    }

    /// A `DATA` packet from `from` that the relay forwards unchanged: where
    /// to, after every check and cap ([`Relay::handle_datagram`] would
    /// queue a copy there). `None` when it is not a `DATA` packet (hand it
    /// to [`Relay::handle_datagram`]), or it is dropped (counted as
    /// [`Relay::handle_datagram`] counts it). A driver
    /// that sends the received bytes itself saves the copy, and can send a
    /// run of them to one address in one system call; it still drains
    /// [`Relay::poll_transmit`] afterwards (a byte cap reached ends the
    /// circuit, which tells both ends).
    pub fn forward(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Option<SocketAddr> {
        if data.first() != Some(&wire::DATA) {
            return None;
        }
        if data.len() < wire::DATA_HEADER {
            self.stats.dropped_malformed += 1;
            return None;
        }
        self.rotate(now);
        let mut c = [0u8; 8];
        c.copy_from_slice(&data[1..wire::DATA_HEADER]);
        self.route(now, from, u64::from_be_bytes(c), data.len() - wire::DATA_HEADER)
    }

    /// The other end of `circuit` for `payload` bytes from `from`, with the
    /// caps and counters applied.
    fn route(&mut self, now: Instant, from: SocketAddr, circuit: u64, payload: usize) -> Option<SocketAddr> {
        let Some(c) = self.circuits.get_mut(&circuit) else {
            self.stats.dropped_unbound += 1;
            return None;
        };
        let side = if c.bound[0] == Some(from) {
            Side::A
        } else if c.bound[1] == Some(from) {
            Side::B
        } else {
            self.stats.dropped_unbound += 1;
            return None;
        };
        let Some(to) = c.bound[side.other().index()] else {
            self.stats.dropped_unbound += 1;
            return None;
        };
        if self.config.limits.circuit_bytes.is_some_and(|m| c.bytes + payload as u64 > m) {
            self.close(now, circuit, Reason::Bytes);
            return None;
        }
        let circuit_ok = c.bucket.as_mut().is_none_or(|b| b.has(payload, now));
        let total_ok = self.total.as_mut().is_none_or(|b| b.has(payload, now));
        if !(circuit_ok && total_ok) {
            self.stats.dropped_rate += 1;
            return None;
        }
        if let Some(b) = c.bucket.as_mut() {
            b.take(payload);
        }
        if let Some(b) = self.total.as_mut() {
            b.take(payload);
        }
        c.bytes += payload as u64;
        c.last_active = now;
        self.stats.forwarded_packets += 1;
        self.stats.forwarded_bytes += payload as u64;
        Some(to)
    }

    /// When a circuit must end if nothing changes, and why.
    fn deadline(limits: &RelayLimits, c: &Circuit) -> (Instant, Reason) {
        let mut due = (c.last_active + limits.idle_timeout, Reason::Idle);
        // Not both bound: 30 s from the allocation while nobody is, from
        // the bound end's last word (its bind, its keepalives) while it
        // waits for its peer, whose token may be carried by a person.
        if c.bound.iter().any(Option::is_none) {
            let from = if c.bound.iter().all(Option::is_none) { c.created } else { c.last_active };
            let unbound = from + limits.unbound_timeout;
            if unbound < due.0 {
                due = (unbound, Reason::Unbound);
            }
        }
        // A lifetime too long to add to an instant is no limit.
        if let Some(end) = limits.circuit_duration.and_then(|d| c.created.checked_add(d))
            && end < due.0
        {
            due = (end, Reason::Duration);
        }
        due
    }

    fn close(&mut self, now: Instant, id: u64, reason: Reason) {
        let Some(c) = self.circuits.remove(&id) else { return };
        self.timers.remove(&(c.timer, id));
        self.by_nonce.remove(&(c.keys[0], c.keys[1], c.nonce));
        for k in c.keys {
            if let Some(n) = self.per_peer.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.per_peer.remove(&k);
                }
            }
        }
        for addr in c.bound.into_iter().flatten() {
            self.send(addr, Packet::Closed { circuit: id, reason }.encode());
        }
        self.stats.closed += 1;
        self.emit(RelayEvent::Closed {
            circuit: id,
            reason,
            bytes: c.bytes,
            lived: now.saturating_duration_since(c.created),
        });
    }
}

/// Compares two challenges in time independent of where they differ.
fn equal(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
