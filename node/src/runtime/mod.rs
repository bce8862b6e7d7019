//! The runtime side of the node: everything that touches the operating
//! system (sockets, files, clock, OS randomness). Built with the `runtime`
//! feature (the default). The command line is a crate of its own,
//! `convoke-cli`, on top of this one.

pub mod control;
pub mod endpoint;
pub mod keystore;
pub mod member;
pub mod network;
pub mod node;
pub mod portmap;
pub mod relay;
pub mod state;
pub mod telemetry;

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock in unix seconds, the `now` the engine's token checks take.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The operating system's cryptographic RNG, as the engine's RNG type.
pub type OsRng = rand_core::UnwrapErr<getrandom::SysRng>;

/// The operating system's RNG. Panics on use only if the OS has no
/// randomness source at all, which no supported platform lacks.
pub fn os_rng() -> OsRng {
    rand_core::UnwrapErr(getrandom::SysRng)
}

/// Reads a text file of at most `cap` bytes: a larger file (or an endless
/// one such as `/dev/zero`) is refused after `cap + 1` bytes instead of
/// filling memory.
pub fn read_capped(path: &std::path::Path, cap: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?.take(cap + 1).read_to_string(&mut text)?;
    if text.len() as u64 > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {cap} bytes; not a file this program reads"),
        ));
    }
    Ok(text)
}
