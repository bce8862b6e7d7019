//! Handshake benchmark: complete Noise IK handshakes (message 1, message 2,
//! both sides' keys) per second on one core, through Convoke's
//! `session::noise` (snow's state machine with Convoke's primitives:
//! x25519-dalek with the low-order check, ring's ChaCha20-Poly1305, sha2,
//! and wiping) next to snow with its own default primitives in the same
//! run, and the bytes each side holds while waiting for the peer.
//!
//! Run: `cargo bench -p convoke-node --bench handshake` (add `-- --quick`
//! for a short run).

use std::hint::black_box;
use std::time::{Duration, Instant};

use convoke_node::session::noise::{self, Initiator, PROTOCOL};
use rand_core::SeedableRng;
use x25519_dalek::{PublicKey, StaticSecret};

/// Runs `f` repeatedly for about `budget` and returns operations per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..20 {
            f();
        }
        n += 20;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 300 } else { 3000 });
    let (is, rs) = ([1u8; 32], [2u8; 32]);
    let rp = PublicKey::from(&StaticSecret::from(rs)).to_bytes();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);

    let ours = rate(budget, || {
        let (mut init, m1) = Initiator::start(is, rp, b"prologue", b"hello", &mut rng).expect("m1");
        let (_, _, m2) = noise::respond(rs, b"prologue", &m1, &mut rng, |_, _| b"ok".to_vec()).expect("m2");
        black_box(init.finish(&m2).expect("keys"));
    });

    let params: snow::params::NoiseParams = PROTOCOL.parse().expect("pattern");
    let mut buf = [0u8; 256];
    let mut out = [0u8; 256];
    let snow_default = rate(budget, || {
        let mut init = snow::Builder::new(params.clone())
            .local_private_key(&is)
            .and_then(|b| b.remote_public_key(&rp))
            .and_then(|b| b.prologue(b"prologue"))
            .and_then(|b| b.build_initiator())
            .expect("initiator");
        let mut resp = snow::Builder::new(params.clone())
            .local_private_key(&rs)
            .and_then(|b| b.prologue(b"prologue"))
            .and_then(|b| b.build_responder())
            .expect("responder");
        let n = init.write_message(b"hello", &mut buf).expect("m1");
        resp.read_message(&buf[..n], &mut out).expect("read m1");
        let n = resp.write_message(b"ok", &mut buf).expect("m2");
        init.read_message(&buf[..n], &mut out).expect("read m2");
        black_box((init.dangerously_get_raw_split(), resp.dangerously_get_raw_split()));
    });

    println!("Noise IK handshakes, both sides, one core ({} s each):", budget.as_secs_f64());
    println!("  convoke (snow + convoke primitives)   {ours:>9.0} /s");
    println!("  snow, default primitives              {snow_default:>9.0} /s");
    println!("  ratio convoke / snow default          {:>9.2}", ours / snow_default);
    println!(
        "  an initiator waiting for message 2 holds {} bytes inline + snow's state on the heap ({} bytes)",
        std::mem::size_of::<Initiator>(),
        std::mem::size_of::<snow::HandshakeState>()
    );
}
