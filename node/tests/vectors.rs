//! Token test vectors under `tests/vectors/`: valid tokens in both encodings
//! with the keys that made them, and invalid cases each expecting its own
//! error code.
//!
//! The vectors are generated deterministically by [`build`] (fixed keys,
//! seeded RNG, fixed times). `vectors_match_committed_files` fails if the
//! committed files differ from what the code generates, so a format change
//! cannot slip by; regenerate deliberately with
//! `CONVOKE_BLESS=1 cargo test -p convoke-node --test vectors`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use convoke_node::identity::Identity;
use convoke_node::token::{
    self, Candidate, CandidateKind, ConnectionMode, IceRole, Invitation, InvitationParams, ReplayGuard, Rsvp,
    TEXT_PREFIX, Token, TokenId,
};
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

const NOW: u64 = 1_800_000_000;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Manifest {
    /// The unix time at which the vectors are checked.
    now: u64,
    /// Secret seeds (base64url) of the keys that signed the vectors.
    keys: BTreeMap<String, String>,
    valid: Vec<Case>,
    invalid: Vec<Case>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Case {
    file: String,
    /// How to check: `invitation`, `rsvp` (against invitation.text),
    /// `rsvp_twice` (accept once, then check again) or `any`.
    check: String,
    /// Expected error code (absent for valid cases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    description: String,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn keys() -> (Identity, Identity, Identity) {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0xC0_4E_0E);
    (Identity::generate(&mut rng), Identity::generate(&mut rng), Identity::generate(&mut rng))
}

fn rng(n: u64) -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::seed_from_u64(n)
}

/// The text encoding of arbitrary JSON bytes (for cases no valid body can
/// express).
fn raw_text(json: &[u8]) -> String {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(json).expect("vec");
    format!("{TEXT_PREFIX}{}", B64.encode(enc.finish().expect("vec")))
}

fn json_of(t: &Token) -> serde_json::Value {
    let mut v = serde_json::to_value(&t.body).expect("serializes");
    v["signature"] = B64.encode(t.signature).into();
    v
}

/// Builds every vector: (file name, contents) and the manifest.
fn build() -> (Vec<(String, String)>, Manifest) {
    let (inviter, invitee, stranger) = keys();
    let candidates = Candidate::list([
        (CandidateKind::Host, "192.168.1.20:4433".parse().expect("addr")),
        (CandidateKind::Host, "10.8.0.3:4433".parse().expect("addr")),
        (CandidateKind::Srflx, "198.18.7.9:61034".parse().expect("addr")),
    ]);
    let params = InvitationParams {
        candidates,
        lifetime_secs: 30 * 86_400,
        mode: ConnectionMode { reusable: true, ..ConnectionMode::default() },
        network_id: Some("vectors".into()),
        ..InvitationParams::default()
    };
    let inv = Token::new_invitation(&inviter, params.clone(), NOW - 60, &mut rng(1));
    let inv_ok = Invitation::from_token(inv.clone(), NOW).expect("valid invitation");
    let rsvp_cands = Candidate::list([
        (CandidateKind::Host, "10.1.0.2:50000".parse().expect("addr")),
        (CandidateKind::Srflx, "198.18.3.4:40001".parse().expect("addr")),
    ]);
    let rsvp = Token::new_rsvp(&inv_ok, &invitee, TokenId::random(&mut rng(2)), rsvp_cands.clone(), None, NOW - 30);

    let mut files = Vec::new();
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    let mut add = |list: &mut Vec<Case>, file: &str, contents: String, check: &str, error: Option<&str>, d: &str| {
        files.push((file.to_owned(), contents + "\n"));
        list.push(Case {
            file: file.to_owned(),
            check: check.to_owned(),
            error: error.map(str::to_owned),
            description: d.to_owned(),
        });
    };
    add(&mut valid, "invitation.text", inv.encode_text(), "invitation", None, "reusable invitation, 3 IPv4 candidates");
    add(&mut valid, "invitation.compact", inv.encode_compact(), "invitation", None, "the same invitation, compact");
    add(&mut valid, "rsvp.text", rsvp.encode_text(), "rsvp", None, "RSVP answering invitation.text");
    add(&mut valid, "rsvp.compact", rsvp.encode_compact(), "rsvp", None, "the same RSVP, compact");

    // The same invitation and RSVP in format 1.1, whose credentials are
    // base64url: tokens minted before 1.2 still read, and round-trip.
    let legacy_inv = {
        let mut b = inv.body.clone();
        b.version = token::VERSION_1_1.into();
        b.connection_info.ufrag = token::derived_ufrag(token::VERSION_1_1, &b.token_id);
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD.decode(&b.connection_info.pwd).expect("std b64");
        b.connection_info.pwd = B64.encode(raw);
        Token::sign(b, &inviter)
    };
    let legacy_ok = Invitation::from_token(legacy_inv.clone(), NOW).expect("a 1.1 invitation is valid");
    let legacy_rsvp =
        Token::new_rsvp(&legacy_ok, &invitee, TokenId::random(&mut rng(2)), rsvp_cands.clone(), None, NOW - 30);
    assert_eq!(legacy_rsvp.body.version, token::VERSION_1_1, "an RSVP is written in its invitation's format");
    let d = "format 1.1 (base64url credentials), as minted before 1.2";
    add(&mut valid, "v1.1-invitation.text", legacy_inv.encode_text(), "invitation", None, d);
    add(&mut valid, "v1.1-invitation.compact", legacy_inv.encode_compact(), "invitation", None, d);
    add(&mut valid, "v1.1-rsvp.text", legacy_rsvp.encode_text(), "rsvp:v1.1-invitation.text", None, d);
    add(&mut valid, "v1.1-rsvp.compact", legacy_rsvp.encode_compact(), "rsvp:v1.1-invitation.text", None, d);

    let resign = |f: &dyn Fn(&mut token::TokenBody), key: &Identity| {
        let mut b = inv.body.clone();
        f(&mut b);
        Token::sign(b, key)
    };
    let resign_rsvp = |f: &dyn Fn(&mut token::TokenBody)| {
        let mut b = rsvp.body.clone();
        f(&mut b);
        Token::sign(b, &invitee)
    };

    // Tampered field: a candidate port changed after signing.
    let mut tampered = inv.clone();
    tampered.body.connection_info.ice_candidates[2].address = "198.18.7.9:61035".parse().expect("addr");
    add(
        &mut invalid,
        "tampered-field.text",
        tampered.encode_text(),
        "invitation",
        Some("bad_signature"),
        "candidate port changed after signing",
    );
    let mut tampered_c = inv.encode_compact_bytes();
    let last_port = tampered_c.len() - 64 - 1;
    tampered_c[last_port] ^= 1;
    add(
        &mut invalid,
        "tampered-field.compact",
        format!("scpc:{}", B64.encode(&tampered_c)),
        "invitation",
        Some("bad_signature"),
        "compact form with a candidate port byte flipped",
    );
    add(
        &mut invalid,
        "wrong-signature.text",
        resign(&|_| {}, &stranger).encode_text(),
        "invitation",
        Some("bad_signature"),
        "signed by a key other than the initiator's",
    );
    add(
        &mut invalid,
        "expired.text",
        resign(
            &|b| {
                b.created_at = NOW - 7200;
                b.expires_at = NOW - 3600
            },
            &inviter,
        )
        .encode_text(),
        "invitation",
        Some("expired"),
        "expired an hour before `now`",
    );
    add(
        &mut invalid,
        "from-future.text",
        resign(
            &|b| {
                b.created_at = NOW + 3600;
                b.expires_at = NOW + 7200
            },
            &inviter,
        )
        .encode_text(),
        "invitation",
        Some("from_future"),
        "created an hour after `now` (beyond the 5-minute skew)",
    );
    add(
        &mut invalid,
        "wrong-type.text",
        rsvp.encode_text(),
        "invitation",
        Some("wrong_type"),
        "an RSVP given where an invitation is expected",
    );
    add(
        &mut invalid,
        "wrong-role.text",
        resign(&|b| b.connection_info.ice_role = IceRole::Controlled, &inviter).encode_text(),
        "invitation",
        Some("wrong_role"),
        "invitation whose author claims the controlled role",
    );
    add(
        &mut invalid,
        "rsvp-wrong-role.text",
        resign_rsvp(&|b| b.connection_info.ice_role = IceRole::Controlling).encode_text(),
        "rsvp",
        Some("wrong_role"),
        "RSVP whose author claims the controlling role",
    );
    add(
        &mut invalid,
        "rsvp-wrong-in-reply-to.text",
        resign_rsvp(&|b| b.in_reply_to = Some(TokenId([7; 16]))).encode_text(),
        "rsvp",
        Some("wrong_reply"),
        "RSVP answering another invitation",
    );
    add(
        &mut invalid,
        "rsvp-older-than-invitation.text",
        resign_rsvp(&|b| b.created_at = NOW - 120).encode_text(),
        "rsvp",
        Some("rsvp_older_than_invitation"),
        "RSVP dated before its invitation",
    );
    add(
        &mut invalid,
        "rsvp-replayed.compact",
        rsvp.encode_compact(),
        "rsvp_twice",
        Some("replayed"),
        "a valid RSVP presented a second time",
    );
    add(
        &mut invalid,
        "peer-id-mismatch.text",
        resign(&|b| b.initiator.as_mut().expect("initiator").peer_id = stranger.peer_id().to_string(), &inviter)
            .encode_text(),
        "invitation",
        Some("peer_id_mismatch"),
        "peer_id names a different key than public_key",
    );
    let text = inv.encode_text();
    let mid = text.len() / 2;
    add(
        &mut invalid,
        "bad-base64.text",
        format!("{}!{}", &text[..mid], &text[mid + 1..]),
        "any",
        Some("bad_base64"),
        "a character outside base64url",
    );
    add(
        &mut invalid,
        "bad-deflate.text",
        format!("{TEXT_PREFIX}{}", B64.encode(b"\xff\xfe\xfd this is not deflate")),
        "any",
        Some("bad_deflate"),
        "base64url of bytes that are not DEFLATE",
    );
    let mut bomb = b"{\"version\":\"1.1\",\"pad\":\"".to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 4 * 1024 * 1024));
    bomb.extend_from_slice(b"\"}");
    add(
        &mut invalid,
        "deflate-bomb.text",
        raw_text(&bomb),
        "any",
        Some("deflate_bomb"),
        "5 KiB that inflates to 4 MiB",
    );
    add(
        &mut invalid,
        "oversized.text",
        format!("{TEXT_PREFIX}{}", "A".repeat(9000)),
        "any",
        Some("too_large"),
        "9000 characters, more than any token",
    );
    let bin = inv.encode_compact_bytes();
    add(
        &mut invalid,
        "truncated.compact",
        format!("scpc:{}", B64.encode(&bin[..bin.len() - 15])),
        "any",
        Some("truncated"),
        "compact form cut short",
    );
    let t = inv.encode_text();
    // Two thirds, at a whole base64 quantum: the base64 is fine, the
    // DEFLATE stream inside it is not.
    let cut = TEXT_PREFIX.len() + (t.len() - TEXT_PREFIX.len()) * 2 / 3 / 4 * 4;
    add(
        &mut invalid,
        "truncated.text",
        t[..cut].to_owned(),
        "any",
        Some("bad_deflate"),
        "text form cut short: the DEFLATE stream ends early",
    );
    let mut v2 = json_of(&inv);
    v2["version"] = "2.0".into();
    add(
        &mut invalid,
        "unknown-version.text",
        raw_text(&serde_json::to_vec(&v2).expect("json")),
        "any",
        Some("unknown_version"),
        "format version 2.0",
    );
    let mut compact_v = inv.encode_compact_bytes();
    compact_v[0] = 0x20;
    add(
        &mut invalid,
        "unknown-version.compact",
        format!("scpc:{}", B64.encode(&compact_v)),
        "any",
        Some("unknown_version"),
        "compact format tag 0x20",
    );
    add(
        &mut invalid,
        "unknown-prefix.text",
        text.replacen("scpi://", "scpx://", 1),
        "any",
        Some("unknown_prefix"),
        "not a Convoke token prefix",
    );
    let mut missing = json_of(&inv);
    missing.as_object_mut().expect("object").remove("connection_info");
    add(
        &mut invalid,
        "missing-field.text",
        raw_text(&serde_json::to_vec(&missing).expect("json")),
        "any",
        Some("malformed"),
        "no connection_info",
    );
    let many = resign(
        &|b| {
            let c = b.connection_info.ice_candidates[0].clone();
            b.connection_info.ice_candidates = vec![c; 17];
        },
        &inviter,
    );
    add(
        &mut invalid,
        "too-many-candidates.text",
        many.encode_text(),
        "any",
        Some("limit_exceeded"),
        "17 candidates, more than the 16 allowed",
    );
    let mut trailing = inv.encode_compact_bytes();
    trailing.extend_from_slice(b"xx");
    add(
        &mut invalid,
        "trailing-bytes.compact",
        format!("scpc:{}", B64.encode(&trailing)),
        "any",
        Some("trailing_bytes"),
        "two bytes after the signature",
    );
    let closed = resign(&|b| b.connection_mode.rsvp_supported = false, &inviter);
    let closed_rsvp = Token::new_rsvp(
        &Invitation::from_token(closed.clone(), NOW).expect("valid"),
        &invitee,
        TokenId::random(&mut rng(3)),
        rsvp_cands,
        None,
        NOW - 30,
    );
    let mut linked = Vec::new();
    add(
        &mut linked,
        "rsvp-not-accepted.invitation.text",
        closed.encode_text(),
        "invitation",
        None,
        "an invitation that refuses RSVPs",
    );
    add(
        &mut invalid,
        "rsvp-not-accepted.text",
        closed_rsvp.encode_text(),
        "rsvp:rsvp-not-accepted.invitation.text",
        Some("rsvp_not_accepted"),
        "RSVP to an invitation that refuses RSVPs",
    );

    let keys = BTreeMap::from([
        ("inviter".to_owned(), B64.encode(inviter.secret_bytes())),
        ("invitee".to_owned(), B64.encode(invitee.secret_bytes())),
        ("stranger".to_owned(), B64.encode(stranger.secret_bytes())),
    ]);
    // The invitation the last case answers is valid on its own.
    valid.extend(linked);
    (files, Manifest { now: NOW, keys, valid, invalid })
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn vectors_match_committed_files() {
    let (files, manifest) = build();
    let manifest_text = serde_json::to_string_pretty(&manifest).expect("json") + "\n";
    if std::env::var_os("CONVOKE_BLESS").is_some() {
        std::fs::create_dir_all(dir()).expect("mkdir");
        for (name, contents) in &files {
            std::fs::write(dir().join(name), contents).expect("write");
        }
        std::fs::write(dir().join("manifest.json"), &manifest_text).expect("write");
    }
    for (name, contents) in &files {
        assert_eq!(&read(name), contents, "{name} differs from what the code generates");
    }
    assert_eq!(read("manifest.json"), manifest_text);
}

#[test]
fn vectors_give_their_expected_results() {
    let manifest: Manifest = serde_json::from_str(&read("manifest.json")).expect("manifest parses");
    let now = manifest.now;
    let invitation = Invitation::parse(&read("invitation.text"), now).expect("invitation.text is valid");
    // The keys in the manifest are the ones that signed the vectors.
    let inviter =
        Identity::from_secret_bytes(B64.decode(&manifest.keys["inviter"]).expect("b64").try_into().expect("32 bytes"));
    assert_eq!(invitation.inviter(), inviter.peer_id());

    let check = |case: &Case| -> Result<(), token::TokenError> {
        let text = read(&case.file);
        match case.check.as_str() {
            "invitation" => Invitation::parse(&text, now).map(|_| ()),
            "any" => token::decode(&text).and_then(|t| token::validate_standalone(&t, now)),
            "rsvp" => Rsvp::parse(&text, &invitation, now, &mut ReplayGuard::default()).map(|_| ()),
            "rsvp_twice" => {
                let mut guard = ReplayGuard::default();
                Rsvp::parse(&text, &invitation, now, &mut guard).expect("first use is accepted");
                Rsvp::parse(&text, &invitation, now, &mut guard).map(|_| ())
            }
            other => {
                let inv_file = other.strip_prefix("rsvp:").expect("known check");
                let inv = Invitation::parse(&read(inv_file), now).expect("linked invitation is valid");
                Rsvp::parse(&text, &inv, now, &mut ReplayGuard::default()).map(|_| ())
            }
        }
    };
    for case in &manifest.valid {
        check(case).unwrap_or_else(|e| panic!("{} should be valid: {e}", case.file));
        // Exact round trip: re-encoding gives the committed text.
        let text = read(&case.file);
        let t = token::decode(&text).expect("decodes");
        let again = if case.file.ends_with(".compact") { t.encode_compact() } else { t.encode_text() };
        assert_eq!(again, text.trim(), "{} does not round-trip", case.file);
    }
    assert!(manifest.invalid.len() >= 15);
    for case in &manifest.invalid {
        let expected = case.error.as_deref().expect("invalid case names its error");
        match check(case) {
            Ok(()) => panic!("{} was accepted, expected {expected}", case.file),
            Err(e) => assert_eq!(e.code(), expected, "{}: got `{e}`", case.file),
        }
    }
}
