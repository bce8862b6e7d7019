//! Token benchmark: sizes of the typical invitation (signed,
//! reusable, 2 host + 1 server-reflexive IPv4 candidates) in both encodings,
//! the QR version each needs at error correction M, and encode and
//! decode+verify throughput on one core, next to bare Ed25519 verification
//! in the same run (the floor any signed token pays).
//!
//! Run: `cargo bench -p convoke-cli --bench tokens` (add `-- --quick` for a
//! short run).

use std::hint::black_box;
use std::time::{Duration, Instant};

use convoke_cli::qr::TokenQr;
use convoke_node::identity::Identity;
use convoke_node::token::{Candidate, CandidateKind, ConnectionMode, Invitation, InvitationParams, Token, decode};
use rand_core::SeedableRng;

/// Runs `f` repeatedly for about `budget` and returns operations per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    // Warm up, then time whole batches so Instant's cost is negligible.
    for _ in 0..100 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 300 } else { 2000 });
    let id = Identity::from_secret_bytes([7; 32]);
    let now = 1_800_000_000;
    let params = InvitationParams {
        candidates: Candidate::list([
            (CandidateKind::Host, "192.168.1.20:4433".parse().expect("addr")),
            (CandidateKind::Host, "10.8.0.3:4433".parse().expect("addr")),
            (CandidateKind::Srflx, "198.18.7.9:61034".parse().expect("addr")),
        ]),
        mode: ConnectionMode { reusable: true, ..ConnectionMode::default() },
        ..InvitationParams::default()
    };
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let t = Token::new_invitation(&id, params.clone(), now, &mut rng);
    let text = t.encode_text();
    let compact = t.encode_compact();

    println!("typical invitation (signed, reusable, 2 host + 1 srflx IPv4)");
    println!("  text    (scpi://) {:>4} characters   QR version {:>2} at M", text.len(), qr_version(&text));
    println!(
        "  compact (scpc:)   {:>4} characters   QR version {:>2} at M   ({} bytes binary, target <= 240 characters)",
        compact.len(),
        qr_version(&compact),
        t.encode_compact_bytes().len()
    );

    let sign = rate(budget, || {
        black_box(Token::new_invitation(&id, params.clone(), now, &mut rng));
    });
    let enc_text = rate(budget, || {
        black_box(t.encode_text());
    });
    let enc_compact = rate(budget, || {
        black_box(t.encode_compact());
    });
    let dec_text = rate(budget, || {
        black_box(Invitation::parse(black_box(&text), now).expect("valid"));
    });
    let dec_compact = rate(budget, || {
        black_box(Invitation::parse(black_box(&compact), now).expect("valid"));
    });
    let decode_only = rate(budget, || {
        black_box(decode(black_box(&compact)).expect("decodes"));
    });
    let digest = t.body.signing_digest();
    let key = id.public_key();
    let bare_verify = rate(budget, || {
        assert!(key.verify(black_box(&digest), &t.signature));
    });

    println!("\nthroughput, one core (tokens per second)");
    println!("  mint + sign                     {sign:>10.0}");
    println!("  encode text                     {enc_text:>10.0}");
    println!("  encode compact                  {enc_compact:>10.0}");
    println!("  decode compact (no verify)      {decode_only:>10.0}");
    println!("  decode + verify, text           {dec_text:>10.0}   target >= 15000");
    println!("  decode + verify, compact        {dec_compact:>10.0}   target >= 15000");
    println!("  bare Ed25519 verify (peer)      {bare_verify:>10.0}");
    println!(
        "\nratio decode+verify / bare verify: text {:.2}, compact {:.2}",
        dec_text / bare_verify,
        dec_compact / bare_verify
    );
}

fn qr_version(s: &str) -> i16 {
    TokenQr::new(s).map(|q| q.version()).unwrap_or(-1)
}
