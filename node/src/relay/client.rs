//! The end's side of a circuit: the packets an end sends, and [`CircuitEnd`],
//! the state machine that asks a relay for a circuit (or joins one a peer
//! asked for), binds its address to it, keeps it alive and says when it is
//! ready or why it failed. Sans-IO: its driver passes the relay's packets
//! in and sends what it returns to the relay's address.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::wire::{self, Packet, Reason, Side};
use crate::identity::{Identity, PublicKey};

/// First retransmission of a request to the relay; doubles each time.
pub const RTO: Duration = Duration::from_millis(250);
/// Requests sent before the relay is taken for unreachable (about 16 s).
pub const TRIES: u32 = 6;
/// A bound end whose peer has not bound yet asks this often whether it has
/// (it may have missed the relay's news): 30 asks at most, since the relay
/// ends a circuit not bound in 30 s.
pub const WAITING: Duration = Duration::from_secs(1);
/// A bound end pings this often, well inside the relay's idle timeout and
/// the 30 s that many NATs keep an idle UDP mapping.
pub const KEEPALIVE: Duration = Duration::from_secs(20);

/// A's request for a circuit to `peer`, signed by `identity`.
pub fn allocate(identity: &Identity, peer: &PublicKey, nonce: [u8; 8], unix_now: u64) -> Vec<u8> {
    let a = identity.public_key();
    let sig = identity.sign(&wire::allocate_signed(&nonce, unix_now, &a, peer));
    Packet::Allocate { nonce, unix_s: unix_now, a, b: *peer, sig }.encode()
}

/// The first step of a bind.
pub fn bind(circuit: u64, side: Side) -> Vec<u8> {
    Packet::Bind { circuit, side }.encode()
}

/// The answer to a challenge, signed by the end's `identity`.
pub fn answer(identity: &Identity, circuit: u64, side: Side, challenge: [u8; 16]) -> Vec<u8> {
    let sig = identity.sign(&wire::answer_signed(circuit, side, &challenge));
    Packet::Answer { circuit, side, challenge, sig }.encode()
}

/// Bytes for the other end.
pub fn data(circuit: u64, payload: &[u8]) -> Vec<u8> {
    Packet::Data { circuit, payload }.encode()
}

/// Where a circuit end stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndState {
    /// Asking for the circuit, or binding to it.
    Pending,
    /// Bound: data sent as [`data`] to the relay reaches the other end
    /// once `peer_bound`.
    Bound {
        /// The circuit.
        circuit: u64,
        /// Whether the other end is bound too.
        peer_bound: bool,
    },
    /// The relay refused or ended the circuit.
    Failed(Reason),
    /// The relay did not answer.
    Unreachable,
}

#[derive(Debug)]
enum Step {
    Allocate {
        request: Vec<u8>,
        nonce: [u8; 8],
    },
    /// `answered`: a challenge was answered since the last `BIND` went.
    Bind {
        answered: bool,
    },
    Bound {
        peer_bound: bool,
        seq: u32,
    },
    Done(EndState),
}

/// One end of one circuit at one relay.
#[derive(Debug)]
pub struct CircuitEnd {
    relay: SocketAddr,
    circuit: u64,
    side: Side,
    step: Step,
    /// When to send again (retransmission or keepalive), and how many
    /// times the current request went out.
    next: Option<Instant>,
    tries: u32,
    out: Option<Vec<u8>>,
}

impl CircuitEnd {
    /// Asks `relay` for a circuit to `peer`; this end is side A. `nonce`
    /// must be fresh (it names the request for retransmissions).
    pub fn request(
        relay: SocketAddr,
        identity: &Identity,
        peer: &PublicKey,
        nonce: [u8; 8],
        now: Instant,
        unix_now: u64,
    ) -> Self {
        let request = allocate(identity, peer, nonce, unix_now);
        let mut end = Self {
            relay,
            circuit: 0,
            side: Side::A,
            step: Step::Allocate { request: request.clone(), nonce },
            next: None,
            tries: 0,
            out: None,
        };
        end.send(request, now);
        end
    }

    /// Binds side B of `circuit`, which the peer asked `relay` for naming
    /// this end's key.
    pub fn join(relay: SocketAddr, circuit: u64, now: Instant) -> Self {
        let mut end = Self {
            relay,
            circuit,
            side: Side::B,
            step: Step::Bind { answered: false },
            next: None,
            tries: 0,
            out: None,
        };
        end.send(bind(circuit, Side::B), now);
        end
    }

    /// The relay's address.
    pub fn relay(&self) -> SocketAddr {
        self.relay
    }

    /// The circuit's number (0 until the relay granted it).
    pub fn circuit(&self) -> u64 {
        self.circuit
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Where it stands.
    pub fn state(&self) -> EndState {
        match &self.step {
            Step::Allocate { .. } | Step::Bind { .. } => EndState::Pending,
            Step::Bound { peer_bound, .. } => EndState::Bound { circuit: self.circuit, peer_bound: *peer_bound },
            Step::Done(s) => *s,
        }
    }

    fn send(&mut self, packet: Vec<u8>, now: Instant) {
        self.tries = 1;
        self.next = Some(now + RTO);
        self.out = Some(packet);
    }

    /// Handles a control packet that came from the relay's address (data
    /// packets are the driver's: they carry the other end's bytes).
    /// Packets for another circuit or request are ignored.
    pub fn handle(&mut self, now: Instant, identity: &Identity, packet: &Packet<'_>) {
        match (&self.step, packet) {
            (Step::Allocate { nonce, .. }, Packet::Allocated { nonce: n, circuit, .. }) if n == nonce => {
                self.circuit = *circuit;
                self.step = Step::Bind { answered: false };
                self.send(bind(*circuit, self.side), now);
            }
            (Step::Allocate { nonce, .. }, Packet::Refused { nonce: n, reason }) if n == nonce => {
                self.finish(EndState::Failed(*reason));
            }
            (Step::Bind { answered: false }, Packet::Challenge { circuit, side, challenge })
                if *circuit == self.circuit && *side == self.side =>
            {
                // The answer is retransmitted like the bind: a lost one
                // gets a new challenge when the bind goes again. One answer
                // a bind: a challenge is 27 bytes and the signed answer 91,
                // so challenges forged with the relay's address must not
                // each draw one.
                self.out = Some(answer(identity, self.circuit, self.side, *challenge));
                self.step = Step::Bind { answered: true };
            }
            (Step::Bind { .. } | Step::Bound { .. }, Packet::Bound { circuit, side, peer_bound })
                if *circuit == self.circuit && *side == self.side =>
            {
                let seq = match self.step {
                    Step::Bound { seq, .. } => seq,
                    _ => 0,
                };
                // Also the answer to a keepalive.
                self.step = Step::Bound { peer_bound: *peer_bound, seq };
                self.tries = 0;
                self.next = Some(now + if *peer_bound { KEEPALIVE } else { WAITING });
            }
            (Step::Bind { .. } | Step::Bound { .. }, Packet::Closed { circuit, reason })
                if *circuit == self.circuit =>
            {
                self.finish(EndState::Failed(*reason));
            }
            _ => {}
        }
    }

    fn finish(&mut self, state: EndState) {
        self.step = Step::Done(state);
        self.next = None;
        self.out = None;
    }

    /// Runs the retransmission or keepalive due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(at) = self.next else { return };
        if now < at {
            return;
        }
        match &mut self.step {
            Step::Done(_) => {}
            Step::Bound { seq, .. } => {
                // Three keepalives unanswered: the relay is gone (or our
                // mapping to it changed).
                if self.tries >= 3 {
                    self.finish(EndState::Unreachable);
                    return;
                }
                *seq = seq.wrapping_add(1);
                self.out = Some(Packet::Ping { circuit: self.circuit, side: self.side, seq: *seq }.encode());
                self.tries += 1;
                // The answer is due in a round trip: ask again soon if
                // it does not come (a lost ping is no lost relay).
                self.next = Some(now + RTO * (1 << self.tries));
            }
            Step::Allocate { request, .. } => {
                if self.tries >= TRIES {
                    self.finish(EndState::Unreachable);
                    return;
                }
                self.out = Some(request.clone());
                self.next = Some(now + RTO * (1 << self.tries));
                self.tries += 1;
            }
            Step::Bind { answered } => {
                if self.tries >= TRIES {
                    self.finish(EndState::Unreachable);
                    return;
                }
                *answered = false;
                self.out = Some(bind(self.circuit, self.side));
                self.next = Some(now + RTO * (1 << self.tries));
                self.tries += 1;
            }
        }
    }

    /// Gives the circuit back: the end found a direct path. Returns the
    /// `CLOSED` to send to the relay (sent once: if it is lost, the relay
    /// ends the circuit when it goes unused), or nothing when the end holds
    /// no circuit yet or any more. The end is done after this.
    pub fn release(&mut self) -> Option<Vec<u8>> {
        let packet = match self.step {
            Step::Bind { .. } | Step::Bound { .. } => {
                Some(Packet::Closed { circuit: self.circuit, reason: wire::Reason::Released }.encode())
            }
            Step::Allocate { .. } | Step::Done(_) => None,
        };
        self.finish(EndState::Failed(wire::Reason::Released));
        packet
    }

    /// When [`CircuitEnd::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    /// The next packet for the relay (send it to [`CircuitEnd::relay`]).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.take()
    }
}

/// A relay hint in a token's `relay` list.
///
/// * `convoke-relay:198.18.0.9:3479` in an invitation: its author takes
///   circuits at this relay. An invitee asks the relay for a circuit naming
///   the author's key, so that a pair with no direct path can still meet.
/// * `convoke-relay:198.18.0.9:3479#00c0ffee00c0ffee` in an RSVP: its author
///   holds side A of this circuit (hex), which names the invitation's
///   author; the inviter binds side B.
///
/// Other hints (a TURN URL, say) are left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// A relay that takes circuits for the token's author.
    Relay(SocketAddr),
    /// A circuit at a relay, waiting for the reader to bind side B.
    Circuit(SocketAddr, u64),
}

const HINT_SCHEME: &str = "convoke-relay:";

impl Hint {
    /// Reads a hint; `None` for one that is not Convoke's.
    pub fn parse(s: &str) -> Option<Hint> {
        let rest = s.strip_prefix(HINT_SCHEME)?;
        match rest.split_once('#') {
            None => rest.parse().ok().map(Hint::Relay),
            Some((addr, circuit)) if circuit.len() == 16 => {
                let circuit = u64::from_str_radix(circuit, 16).ok().filter(|&c| c != 0)?;
                Some(Hint::Circuit(addr.parse().ok()?, circuit))
            }
            Some(_) => None,
        }
    }
}

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hint::Relay(a) => write!(f, "{HINT_SCHEME}{a}"),
            Hint::Circuit(a, c) => write!(f, "{HINT_SCHEME}{a}#{c:016x}"),
        }
    }
}
