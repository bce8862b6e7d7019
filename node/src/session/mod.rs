//! Secure sessions (docs/DESIGN.md §4), sans-IO: the Noise IK handshake bound to
//! the token ([`noise`]), and what runs once it finished — encrypted
//! packets with counter nonces, a sliding replay window ([`replay`]),
//! rekeying, acknowledgements, loss recovery with an RFC 6298 timer,
//! NewReno congestion control, many reliable ordered byte streams
//! ([`streams`]) and unreliable datagrams ([`conn`], [`frame`]). [`crate::host::Host`] runs
//! the handshake and drives sessions beside the connectivity engine.
//!
//! Messages for applications that want them (the overlay) are framed on
//! stream 0, the session's own, by the application: the stream keeps order
//! and boundaries cost nothing to add.

pub mod conn;
pub mod frame;
pub mod noise;
mod ranges;
mod recovery;
pub mod replay;
mod stream;
pub mod streams;

pub use conn::{CloseReason, SessionConfig, SessionStats};
pub use streams::{StreamError, StreamId};

#[cfg(test)]
mod stream_tests;
