//! The `convoke` command line's parts that its tests and benchmarks share
//! with it: the TOML configuration file ([`config`]) and QR codes for
//! tokens ([`qr`]). The binary itself (`src/main.rs`) is a user of
//! `convoke-node`'s async library: `convoke invite` and `convoke join` run
//! an `Endpoint`, `convoke up` a `Network`.

pub mod config;
pub mod qr;
