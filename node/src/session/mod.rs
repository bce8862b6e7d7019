//! Secure sessions (docs/DESIGN.md §4), sans-IO: the Noise IK handshake bound to
//! the token ([`noise`]), and what runs once it finished — encrypted
//! packets with counter nonces, a sliding replay window ([`replay`]),
//! rekeying, acknowledgements, loss recovery with an RFC 6298 timer,
//! NewReno congestion control, one reliable ordered byte stream and
//! unreliable datagrams ([`conn`], [`frame`]). [`crate::host::Host`] runs
//! the handshake and drives sessions beside the connectivity engine.
//!
//! Messages for applications that want them (the overlay) are framed on the
//! stream by the application: the stream keeps order and boundaries cost
//! nothing to add.

pub mod conn;
pub mod frame;
pub mod noise;
mod ranges;
mod recovery;
pub mod replay;
mod stream;

pub use conn::{CloseReason, SessionConfig, SessionStats};
