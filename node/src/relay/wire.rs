//! The relay's packets: encoding and decoding.
//!
//! Every packet starts with its type byte (`0xD0..=0xD9`, a range no other
//! Convoke packet uses: STUN is `0x00..=0x03`, the session `0xE1..=0xE3`),
//! so a relay can share a member's UDP port. All but `DATA` carry a version
//! byte next. Integers are big-endian. The layout, byte by byte:
//!
//! ```text
//! ALLOCATE   D0 | v | nonce[8] | unix_s u64 | a_key[32] | b_key[32] | sig_a[64]     146 bytes
//! ALLOCATED  D1 | v | nonce[8] | circuit u64 | lifetime_s u32 | bytes u64 | rate u32  34
//! REFUSED    D2 | v | nonce[8] | reason u8                                          11
//! BIND       D3 | v | circuit u64 | side u8 | zero[16]                              27
//! CHALLENGE  D4 | v | circuit u64 | side u8 | challenge[16]                         27
//! ANSWER     D5 | v | circuit u64 | side u8 | challenge[16] | sig[64]              91
//! BOUND      D6 | v | circuit u64 | side u8 | peer_bound u8                         12
//! DATA       D7 | circuit u64 | payload                                        9 + payload
//! PING       D8 | v | circuit u64 | side u8 | seq u32                              15
//! CLOSED     D9 | v | circuit u64 | reason u8                                       11
//! ```
//!
//! `CLOSED` goes both ways: the relay tells the bound ends a circuit ended,
//! and a bound end releases a circuit it no longer needs.
//!
//! A `BIND` carries sixteen zero bytes so that it is as long as the
//! `CHALLENGE` it asks for: the relay never answers a packet it cannot
//! authenticate with more bytes than the packet had.
//!
//! Convoke's own protocol: no crate speaks it. The fixed layouts are read
//! with slice patterns rather than a general codec because every field has
//! a fixed size and each packet one layout.

use crate::identity::PublicKey;

/// Version of the relay protocol this code speaks.
pub const VERSION: u8 = 1;

/// First byte of an allocation request.
pub const ALLOCATE: u8 = 0xD0;
/// First byte of an allocation granted.
pub const ALLOCATED: u8 = 0xD1;
/// First byte of an allocation refused.
pub const REFUSED: u8 = 0xD2;
/// First byte of a bind request.
pub const BIND: u8 = 0xD3;
/// First byte of a bind challenge.
pub const CHALLENGE: u8 = 0xD4;
/// First byte of a bind answer.
pub const ANSWER: u8 = 0xD5;
/// First byte of a bind confirmation.
pub const BOUND: u8 = 0xD6;
/// First byte of relayed data.
pub const DATA: u8 = 0xD7;
/// First byte of a keepalive (the relay answers with `BOUND`).
pub const PING: u8 = 0xD8;
/// First byte of a circuit's end.
pub const CLOSED: u8 = 0xD9;

/// Whether a datagram's first byte is a relay packet's.
pub fn is_relay_packet(first: u8) -> bool {
    (ALLOCATE..=CLOSED).contains(&first)
}

/// Length of the header in front of a `DATA` packet's payload.
pub const DATA_HEADER: usize = 9;

/// A circuit's two ends: the requester (`A`) and the peer it named (`B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The member that asked for the allocation.
    A = 0,
    /// The peer it named.
    B = 1,
}

impl Side {
    fn from_byte(b: u8) -> Option<Side> {
        match b {
            0 => Some(Side::A),
            1 => Some(Side::B),
            _ => None,
        }
    }

    /// The other end.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// 0 for `A`, 1 for `B`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why the relay refused an allocation or ended a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The relay holds as many circuits as it allows.
    TooManyCircuits = 1,
    /// One of the two peers is in as many circuits as the relay allows.
    TooManyForPeer = 2,
    /// The request's time is too far from the relay's clock.
    Stale = 3,
    /// A circuit between the same two keys was asked for by the other side.
    Duplicate = 4,
    /// The circuit carried as many bytes as it may.
    Bytes = 5,
    /// The circuit lived as long as it may.
    Duration = 6,
    /// Neither end sent anything for too long.
    Idle = 7,
    /// Both ends did not bind in time.
    Unbound = 8,
    /// The relay is shutting down.
    Shutdown = 9,
    /// The relay does not serve this requester.
    NotAllowed = 10,
    /// One end released it (it found a direct path).
    Released = 11,
    /// A reason this version does not know.
    Other = 255,
}

impl Reason {
    fn from_byte(b: u8) -> Reason {
        match b {
            1 => Reason::TooManyCircuits,
            2 => Reason::TooManyForPeer,
            3 => Reason::Stale,
            4 => Reason::Duplicate,
            5 => Reason::Bytes,
            6 => Reason::Duration,
            7 => Reason::Idle,
            8 => Reason::Unbound,
            9 => Reason::Shutdown,
            10 => Reason::NotAllowed,
            11 => Reason::Released,
            _ => Reason::Other,
        }
    }

    /// A short name, for logs, events and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooManyCircuits => "too_many_circuits",
            Reason::TooManyForPeer => "too_many_for_peer",
            Reason::Stale => "stale",
            Reason::Duplicate => "duplicate",
            Reason::Bytes => "bytes",
            Reason::Duration => "duration",
            Reason::Idle => "idle",
            Reason::Unbound => "unbound",
            Reason::Shutdown => "shutdown",
            Reason::NotAllowed => "not_allowed",
            Reason::Released => "released",
            Reason::Other => "other",
        }
    }
}

/// A decoded relay packet. `Data` borrows its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A asks for a circuit to B, signed by A.
    Allocate {
        /// The requester's retransmission key: the same nonce gets the same answer.
        nonce: [u8; 8],
        /// The requester's clock, Unix seconds.
        unix_s: u64,
        /// The requester.
        a: PublicKey,
        /// The peer.
        b: PublicKey,
        /// A's Ed25519 signature over [`allocate_signed`].
        sig: [u8; 64],
    },
    /// The relay granted a circuit.
    Allocated {
        /// The request's nonce.
        nonce: [u8; 8],
        /// The circuit's number, to put in the tokens.
        circuit: u64,
        /// Seconds the circuit may live; 0 for no limit.
        lifetime_s: u32,
        /// Bytes it may carry; 0 for no limit.
        bytes: u64,
        /// Bytes a second it may carry; 0 for no limit.
        rate: u32,
    },
    /// The relay refused.
    Refused {
        /// The request's nonce.
        nonce: [u8; 8],
        /// Why.
        reason: Reason,
    },
    /// An end asks to bind its address to a circuit.
    Bind {
        /// The circuit.
        circuit: u64,
        /// Which end.
        side: Side,
    },
    /// The relay's challenge, tied to the asker's address.
    Challenge {
        /// The circuit.
        circuit: u64,
        /// Which end.
        side: Side,
        /// To be signed and sent back from the same address.
        challenge: [u8; 16],
    },
    /// The end's signed answer.
    Answer {
        /// The circuit.
        circuit: u64,
        /// Which end.
        side: Side,
        /// The challenge received.
        challenge: [u8; 16],
        /// The end's Ed25519 signature over [`answer_signed`].
        sig: [u8; 64],
    },
    /// The relay bound the address.
    Bound {
        /// The circuit.
        circuit: u64,
        /// Which end.
        side: Side,
        /// Whether the other end is bound too.
        peer_bound: bool,
    },
    /// Bytes to forward (or forwarded) to the circuit's other end.
    Data {
        /// The circuit.
        circuit: u64,
        /// What the ends exchange; opaque to the relay.
        payload: &'a [u8],
    },
    /// A bound end's keepalive; the relay answers with [`Packet::Bound`]
    /// (shorter), which tells the end whether its peer is bound.
    Ping {
        /// The circuit.
        circuit: u64,
        /// Which end.
        side: Side,
        /// The sender's counter.
        seq: u32,
    },
    /// The circuit ended.
    Closed {
        /// The circuit.
        circuit: u64,
        /// Why.
        reason: Reason,
    },
}

/// Why a datagram is not a relay packet this version reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Empty, or a first byte outside `0xD0..=0xD9`.
    #[error("not a relay packet")]
    NotRelay,
    /// A version this code does not speak.
    #[error("relay protocol version {0} is not supported (this node speaks {VERSION})")]
    Version(u8),
    /// Shorter or longer than the packet type's fixed layout.
    #[error("a relay packet of type {kind:#04x} must be {expected} bytes, not {got}")]
    Length {
        /// The type byte.
        kind: u8,
        /// The layout's size.
        expected: usize,
        /// What arrived.
        got: usize,
    },
    /// A side other than 0 or 1, or a `BIND` whose padding is not zero.
    #[error("a malformed field in a relay packet")]
    Field,
}

/// The bytes A signs to ask for a circuit.
pub fn allocate_signed(nonce: &[u8; 8], unix_s: u64, a: &PublicKey, b: &PublicKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(24 + 8 + 8 + 64);
    m.extend_from_slice(b"convoke/relay/allocate/1");
    m.extend_from_slice(nonce);
    m.extend_from_slice(&unix_s.to_be_bytes());
    m.extend_from_slice(&a.0);
    m.extend_from_slice(&b.0);
    m
}

/// The bytes an end signs to bind its address to a circuit.
pub fn answer_signed(circuit: u64, side: Side, challenge: &[u8; 16]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + 8 + 1 + 16);
    m.extend_from_slice(b"convoke/relay/bind/1");
    m.extend_from_slice(&circuit.to_be_bytes());
    m.push(side as u8);
    m.extend_from_slice(challenge);
    m
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut x = [0u8; N];
    x.copy_from_slice(&b[at..at + N]);
    x
}

/// Fixed sizes of the versioned packets, by type byte.
fn size_of(kind: u8) -> usize {
    match kind {
        ALLOCATE => 146,
        ALLOCATED => 34,
        REFUSED | CLOSED => 11,
        BIND | CHALLENGE => 27,
        ANSWER => 91,
        BOUND => 12,
        PING => 15,
        _ => DATA_HEADER,
    }
}

impl<'a> Packet<'a> {
    /// Reads one datagram. Never panics; every length is checked first.
    pub fn decode(b: &'a [u8]) -> Result<Packet<'a>, DecodeError> {
        let &kind = b.first().ok_or(DecodeError::NotRelay)?;
        if !is_relay_packet(kind) {
            return Err(DecodeError::NotRelay);
        }
        if kind == DATA {
            if b.len() < DATA_HEADER {
                return Err(DecodeError::Length { kind, expected: DATA_HEADER, got: b.len() });
            }
            return Ok(Packet::Data { circuit: u64_at(b, 1), payload: &b[DATA_HEADER..] });
        }
        let expected = size_of(kind);
        if b.len() != expected {
            return Err(DecodeError::Length { kind, expected, got: b.len() });
        }
        if b[1] != VERSION {
            return Err(DecodeError::Version(b[1]));
        }
        let side = |at: usize| Side::from_byte(b[at]).ok_or(DecodeError::Field);
        Ok(match kind {
            ALLOCATE => Packet::Allocate {
                nonce: array(b, 2),
                unix_s: u64_at(b, 10),
                a: PublicKey(array(b, 18)),
                b: PublicKey(array(b, 50)),
                sig: array(b, 82),
            },
            ALLOCATED => Packet::Allocated {
                nonce: array(b, 2),
                circuit: u64_at(b, 10),
                lifetime_s: u32_at(b, 18),
                bytes: u64_at(b, 22),
                rate: u32_at(b, 30),
            },
            REFUSED => Packet::Refused { nonce: array(b, 2), reason: Reason::from_byte(b[10]) },
            BIND => {
                if b[11..].iter().any(|&x| x != 0) {
                    return Err(DecodeError::Field);
                }
                Packet::Bind { circuit: u64_at(b, 2), side: side(10)? }
            }
            CHALLENGE => Packet::Challenge { circuit: u64_at(b, 2), side: side(10)?, challenge: array(b, 11) },
            ANSWER => {
                Packet::Answer { circuit: u64_at(b, 2), side: side(10)?, challenge: array(b, 11), sig: array(b, 27) }
            }
            BOUND => Packet::Bound {
                circuit: u64_at(b, 2),
                side: side(10)?,
                peer_bound: match b[11] {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::Field),
                },
            },
            PING => Packet::Ping { circuit: u64_at(b, 2), side: side(10)?, seq: u32_at(b, 11) },
            _ => Packet::Closed { circuit: u64_at(b, 2), reason: Reason::from_byte(b[10]) },
        })
    }

    /// Writes the packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(match self {
            Packet::Data { payload, .. } => DATA_HEADER + payload.len(),
            _ => 146,
        });
        let versioned = |out: &mut Vec<u8>, kind: u8| {
            out.push(kind);
            out.push(VERSION);
        };
        match self {
            Packet::Allocate { nonce, unix_s, a, b, sig } => {
                versioned(&mut out, ALLOCATE);
                out.extend_from_slice(nonce);
                out.extend_from_slice(&unix_s.to_be_bytes());
                out.extend_from_slice(&a.0);
                out.extend_from_slice(&b.0);
                out.extend_from_slice(sig);
            }
            Packet::Allocated { nonce, circuit, lifetime_s, bytes, rate } => {
                versioned(&mut out, ALLOCATED);
                out.extend_from_slice(nonce);
                out.extend_from_slice(&circuit.to_be_bytes());
                out.extend_from_slice(&lifetime_s.to_be_bytes());
                out.extend_from_slice(&bytes.to_be_bytes());
                out.extend_from_slice(&rate.to_be_bytes());
            }
            Packet::Refused { nonce, reason } => {
                versioned(&mut out, REFUSED);
                out.extend_from_slice(nonce);
                out.push(*reason as u8);
            }
            Packet::Bind { circuit, side } => {
                versioned(&mut out, BIND);
                out.extend_from_slice(&circuit.to_be_bytes());
                out.push(*side as u8);
                out.extend_from_slice(&[0; 16]);
            }
            Packet::Challenge { circuit, side, challenge } => {
                versioned(&mut out, CHALLENGE);
                out.extend_from_slice(&circuit.to_be_bytes());
                out.push(*side as u8);
                out.extend_from_slice(challenge);
            }
            Packet::Answer { circuit, side, challenge, sig } => {
                versioned(&mut out, ANSWER);
                out.extend_from_slice(&circuit.to_be_bytes());
                out.push(*side as u8);
                out.extend_from_slice(challenge);
                out.extend_from_slice(sig);
            }
            Packet::Bound { circuit, side, peer_bound } => {
                versioned(&mut out, BOUND);
                out.extend_from_slice(&circuit.to_be_bytes());
                out.push(*side as u8);
                out.push(u8::from(*peer_bound));
            }
            Packet::Data { circuit, payload } => {
                out.push(DATA);
                out.extend_from_slice(&circuit.to_be_bytes());
                out.extend_from_slice(payload);
            }
            Packet::Ping { circuit, side, seq } => {
                versioned(&mut out, PING);
                out.extend_from_slice(&circuit.to_be_bytes());
                out.push(*side as u8);
                out.extend_from_slice(&seq.to_be_bytes());
            }
            Packet::Closed { circuit, reason } => {
                versioned(&mut out, CLOSED);
                out.extend_from_slice(&circuit.to_be_bytes());
                out.push(*reason as u8);
            }
        }
        out
    }
}
