//! Secure sessions (DESIGN §4), sans-IO: the Noise IK handshake bound to
//! the token, and the replay window for data frames. Work in progress for
//! the session issue: framing, reliable streams, rekey schedule and the
//! endpoint integration come next.

pub mod noise;
pub mod replay;
