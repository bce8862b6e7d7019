//! # convoke-overlay
//!
//! Sans-IO overlay protocols for Convoke, generic over peer identity
//! (DESIGN §5). This crate will hold:
//!
//! * membership with active and passive views (HyParView), joins through an
//!   introducer, shuffles and failure detection with suspicion;
//! * broadcast along a self-repairing spanning tree (Plumtree);
//! * the introducer, which relays a member's signed invitation and the
//!   signed RSVP back so two members punch at once;
//! * topology policies (mesh, star, spanning tree, hierarchical) tracked as
//!   petgraph graphs.
//!
//! It knows nothing of `convoke-node`; the node drives it. Like the node's
//! engine it never reads a clock, touches a socket or uses a global RNG.
//! Nothing is implemented yet: the workspace issue only lays the crate out.
#![deny(missing_docs)]

/// The overlay protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 1;
