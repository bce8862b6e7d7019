//! # convoke-sim
//!
//! A discrete-event simulator that runs the real Convoke engine
//! (`convoke-node` built without its runtime, and `convoke-overlay`) on
//! thousands to a million virtual nodes behind emulated RFC 4787 NATs
//! (DESIGN §6). It will hold the event queue ordered by (time, sequence), a
//! seeded ChaCha RNG per node, the virtual network (links, NAT boxes, STUN
//! servers), TOML scenarios and reports.
//!
//! This first version only proves the wiring: the engine builds without
//! tokio and its token code runs under simulated time.
#![deny(missing_docs)]

/// The versions of the protocol crates this simulator runs, for reports.
pub fn engine_versions() -> (&'static str, u8) {
    (env!("CARGO_PKG_VERSION"), convoke_overlay::PROTOCOL_VERSION)
}
