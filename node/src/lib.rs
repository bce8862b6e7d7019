//! # convoke-node
//!
//! The Convoke node: a peer-to-peer overlay node that connects computers
//! directly, across NATs, with no signaling server. One signed invitation
//! token, passed by any out-of-band channel, is enough to connect.
//!
//! Convoke has three layers (docs/DESIGN.md §1); this crate holds two of them:
//!
//! * the **sans-IO engine** — [`identity`], [`token`], [`stun`], [`ice`]
//!   (connectivity), [`session`] (Noise IK, encrypted reliable stream and
//!   datagrams), [`host`] (one UDP port's demultiplexer tying them
//!   together), [`nat`] (classifying our NAT from STUN answers), [`relay`]
//!   (the relay role: circuits between two peers with no direct path) and [`member`] (a network member: the host, the overlay and
//!   the glue between them — candidates, the one place tokens are minted,
//!   cards, dialing, RSVPs relayed by introducers). It never reads the clock,
//!   never touches a socket and never uses a global RNG: time comes in as an
//!   argument, randomness from the caller's RNG. The tokio runtime and the
//!   simulator (`convoke-sim`) drive the same code.
//! * the **runtime** (feature `runtime`, the default) — the async library: the tokio
//!   node driver (UDP sockets with GSO/GRO, STUN client, port mapping,
//!   control socket, metrics), [`runtime::endpoint`] (sessions and
//!   streams), [`runtime::network`] (network membership) and key storage;
//! * the **command line** is the crate `convoke-cli` (`node/cli`): the
//!   `convoke` tool, its TOML configuration file and QR codes, a user of
//!   this crate's API. This crate compiles none of its crates (clap,
//!   qrcode, toml, tracing-subscriber); `default-features = false` leaves
//!   the engine alone, without tokio.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod host;
pub mod ice;
pub mod identity;
pub mod member;
pub mod nat;
pub mod relay;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod session;
pub mod stun;
pub mod token;
