//! # convoke-overlay
//!
//! Sans-IO overlay protocols for Convoke, generic over peer identity
//! (docs/DESIGN.md §5):
//!
//! * [`Overlay`]: membership with active and passive views (HyParView):
//!   joins through a contact, random walks, shuffles, failure detection
//!   with suspicion, and the introducer's relay, over which a member's
//!   signed token reaches a peer it has no link to yet so both punch at
//!   once. It carries a [`plumtree::Plumtree`] broadcast.
//! * [`plumtree`]: broadcast along a self-repairing spanning tree: eager
//!   push, lazy IHAVE, GRAFT/PRUNE, message ids and deduplication.
//! * [`topology`]: topology policies (mesh, star, spanning tree,
//!   hierarchical) as petgraph graphs, with their invariant checks.
//! * [`wire`]: the messages and their strict binary encoding.
//!
//! It knows nothing of `convoke-node`; the node and the simulator drive it
//! the same way: hand it what arrived ([`Overlay::handle`]), what the
//! transport did ([`Overlay::link_up`], [`Overlay::link_failed`],
//! [`Overlay::link_down`]) and the time ([`Overlay::tick`]); then drain
//! [`Overlay::poll`]. It never reads a clock, touches a socket or uses a
//! global RNG: time is milliseconds on the driver's clock and randomness
//! comes from a seed.
#![deny(missing_docs)]

use std::fmt::Debug;
use std::hash::Hash;

mod limiter;
mod overlay;
pub mod plumtree;
pub mod topology;
pub mod wire;

pub use overlay::{Config, DownReason, Event, Output, Overlay, ShapeViolation, Stats, Topology, check_shape};
pub use wire::{Card, DecodeError, Kind, Message, MsgId, PolicyKind, Role, Shape, Standing};

/// The overlay protocol version this crate speaks. 2: cards and
/// NEIGHBORS carry the member's topology policy and role (one byte), which
/// version 1 decoders refuse as trailing bytes.
pub const PROTOCOL_VERSION: u8 = 2;

/// Milliseconds on the driver's clock.
pub type Millis = u64;

/// A peer identity the overlay can use: small, copyable, ordered (so that
/// nothing depends on hash-map order) and encodable on the wire.
pub trait PeerKey: Copy + Eq + Hash + Ord + Debug {
    /// Appends the encoding.
    fn put(&self, out: &mut Vec<u8>);
    /// Reads one encoding from the front of `input`, advancing it; `None`
    /// if it is not a valid identity.
    fn take(input: &mut &[u8]) -> Option<Self>;
}

impl PeerKey for u32 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend(self.to_be_bytes());
    }
    fn take(input: &mut &[u8]) -> Option<Self> {
        let (a, b) = input.split_first_chunk::<4>()?;
        *input = b;
        Some(u32::from_be_bytes(*a))
    }
}

impl PeerKey for u64 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend(self.to_be_bytes());
    }
    fn take(input: &mut &[u8]) -> Option<Self> {
        let (a, b) = input.split_first_chunk::<8>()?;
        *input = b;
        Some(u64::from_be_bytes(*a))
    }
}

impl PeerKey for [u8; 32] {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend(self);
    }
    fn take(input: &mut &[u8]) -> Option<Self> {
        let (a, b) = input.split_first_chunk::<32>()?;
        *input = b;
        Some(*a)
    }
}
