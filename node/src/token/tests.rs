//! Unit and property tests for the token codecs and validation.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use proptest::prelude::*;
use rand_core::SeedableRng;

use super::*;

pub(crate) fn rng(seed: u64) -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::seed_from_u64(seed)
}

pub(crate) const NOW: u64 = 1_800_000_000;

/// The "typical invitation": signed, reusable, 2 host + 1 srflx IPv4.
pub(crate) fn typical(identity: &Identity) -> Token {
    let candidates = Candidate::list([
        (CandidateKind::Host, "192.168.1.20:4433".parse().expect("addr")),
        (CandidateKind::Host, "10.8.0.3:4433".parse().expect("addr")),
        (CandidateKind::Srflx, "198.18.7.9:61034".parse().expect("addr")),
    ]);
    let mode = ConnectionMode { reusable: true, ..ConnectionMode::default() };
    let params = InvitationParams { candidates, mode, ..InvitationParams::default() };
    Token::new_invitation(identity, params, NOW, &mut rng(1))
}

#[test]
fn typical_invitation_round_trips_and_validates_in_both_encodings() {
    let id = Identity::from_secret_bytes([1; 32]);
    let t = typical(&id);
    for text in [t.encode_text(), t.encode_compact()] {
        let back = decode(&text).expect("decodes");
        assert_eq!(back, t);
        let inv = Invitation::parse(&text, NOW + 10).expect("valid");
        assert_eq!(inv.inviter(), id.peer_id());
    }
}

#[test]
fn typical_compact_invitation_is_at_most_240_characters() {
    let t = typical(&Identity::from_secret_bytes([1; 32]));
    let compact = t.encode_compact();
    assert!(compact.len() <= 240, "compact form is {} characters", compact.len());
    assert!(compact.len() < t.encode_text().len());
}

#[test]
fn chat_line_breaks_and_indentation_are_ignored() {
    let t = typical(&Identity::from_secret_bytes([1; 32]));
    for text in [t.encode_text(), t.encode_compact()] {
        let mangled: String = text
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let sep = if i % 37 == 36 {
                    Some("\r\n  ")
                } else if i % 11 == 10 {
                    Some(" ")
                } else {
                    None
                };
                std::iter::once(c.to_string()).chain(sep.map(str::to_owned))
            })
            .collect();
        let wrapped = format!("\n\t {mangled} \n");
        assert_eq!(decode(&wrapped).expect("decodes"), t);
    }
    let upper = t.encode_text().replacen("scpi://", "SCPI://", 1);
    assert_eq!(decode(&upper).expect("decodes"), t);
}

/// Flipping any one character of either encoding never yields a valid
/// token, and never panics.
#[test]
fn every_single_character_flip_is_refused() {
    let id = Identity::from_secret_bytes([1; 32]);
    let t = typical(&id);
    for text in [t.encode_text(), t.encode_compact()] {
        let prefix = if text.starts_with(TEXT_PREFIX) { TEXT_PREFIX.len() } else { COMPACT_PREFIX.len() };
        for i in prefix..text.len() {
            let mut bytes = text.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let flipped = String::from_utf8(bytes).expect("ascii");
            let result = decode(&flipped).and_then(|tok| validate_standalone(&tok, NOW + 10));
            assert!(result.is_err(), "flip at {i} of {text} was accepted");
        }
    }
}

#[test]
fn rsvp_links_to_its_invitation_and_is_single_use() {
    let inviter = Identity::from_secret_bytes([1; 32]);
    let invitee = Identity::from_secret_bytes([2; 32]);
    let inv = Invitation::from_token(typical(&inviter), NOW).expect("valid");
    let cands = Candidate::list([(CandidateKind::Host, "10.0.0.2:5000".parse().expect("addr"))]);
    let rsvp = Token::new_rsvp(&inv, &invitee, TokenId::random(&mut rng(2)), cands, None, NOW + 5);
    assert_eq!(rsvp.body.in_reply_to, Some(inv.token().body.token_id));
    assert_eq!(rsvp.body.connection_info.ice_role, IceRole::Controlled);
    assert_eq!(rsvp.body.expires_at, NOW + 5 + DEFAULT_RSVP_LIFETIME_SECS);
    assert_ne!(rsvp.body.connection_info.ice_tie_breaker, inv.token().body.connection_info.ice_tie_breaker);
    let mut guard = ReplayGuard::default();
    let ok = Rsvp::parse(&rsvp.encode_compact(), &inv, NOW + 6, &mut guard).expect("valid");
    assert_eq!(ok.responder(), invitee.peer_id());
    // Same RSVP again, in the other encoding: refused.
    let again = Rsvp::parse(&rsvp.encode_text(), &inv, NOW + 7, &mut guard);
    assert_eq!(again, Err(TokenError::Replayed));
    // After it expires, expiry refuses it (and the guard has forgotten it).
    let late = Rsvp::parse(&rsvp.encode_text(), &inv, rsvp.body.expires_at, &mut guard);
    assert!(matches!(late, Err(TokenError::Expired { .. })));
}

#[test]
fn replay_guard_never_accepts_a_replay_even_when_full() {
    let mut g = ReplayGuard::with_capacity(4);
    let id = |n: u8| TokenId([n; 16]);
    // Fill with expiries 100..=103, then flood with later ones.
    for n in 0..4u8 {
        g.check_and_record(id(n), 100 + u64::from(n), 0).expect("fresh");
    }
    for n in 4..50u8 {
        g.check_and_record(id(n), 100 + u64::from(n), 0).expect("fresh");
        assert!(g.len() <= 4);
    }
    for n in 0..50u8 {
        assert_eq!(g.check_and_record(id(n), 100 + u64::from(n), 0), Err(TokenError::Replayed), "id {n}");
    }
    // A token expiring before everything held is accepted once, then refused.
    let mut g = ReplayGuard::with_capacity(2);
    g.check_and_record(id(1), 500, 0).expect("fresh");
    g.check_and_record(id(2), 600, 0).expect("fresh");
    g.check_and_record(id(3), 400, 0).expect("fresh, not stored");
    assert_eq!(g.check_and_record(id(3), 400, 0), Err(TokenError::Replayed));
    // Expired entries are dropped, freeing room.
    g.check_and_record(id(4), 700, 650).expect("fresh");
    assert_eq!(g.len(), 1);
}

#[test]
fn deflate_bomb_is_stopped_at_the_limit() {
    use std::io::Write;
    let mut json = b"{\"version\":\"1.1\",\"x\":\"".to_vec();
    json.extend(std::iter::repeat_n(b'a', 4 * 1024 * 1024));
    json.extend_from_slice(b"\"}");
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&json).expect("vec");
    let small = enc.finish().expect("vec");
    assert!(small.len() * 4 / 3 < limits::MAX_INPUT, "bomb is {} bytes compressed", small.len());
    let text = format!("{TEXT_PREFIX}{}", base64::Engine::encode(&B64, &small));
    assert_eq!(decode(&text), Err(TokenError::DecompressedTooLarge { max: limits::MAX_INFLATED }));
}

#[test]
fn oversized_input_is_refused_before_decoding() {
    let text = format!("{TEXT_PREFIX}{}", "A".repeat(limits::MAX_INPUT));
    assert!(matches!(decode(&text), Err(TokenError::TooLarge { .. })));
    let huge = "A".repeat(10 * limits::MAX_INPUT);
    assert!(matches!(decode(&huge), Err(TokenError::TooLarge { .. })));
}

#[test]
fn compact_truncation_names_the_field() {
    let t = typical(&Identity::from_secret_bytes([1; 32]));
    let bin = t.encode_compact_bytes();
    for cut in 0..bin.len() {
        match Token::decode_compact_bytes(&bin[..cut]) {
            Err(TokenError::Truncated { .. }) => {}
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    let mut long = bin.clone();
    long.push(0);
    assert_eq!(Token::decode_compact_bytes(&long), Err(TokenError::TrailingBytes(1)));
}

/// The text form read two ways: a repeated key (serde_json would keep the
/// last) and bytes after the DEFLATE stream are refused, not ignored.
#[test]
fn text_tokens_with_two_readings_are_refused() {
    let t = typical(&Identity::from_secret_bytes([1; 32]));
    let wrap = |json: &[u8], extra: &[u8]| {
        use std::io::Write;
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(json).expect("deflate");
        let mut d = enc.finish().expect("deflate");
        d.extend_from_slice(extra);
        format!("{TEXT_PREFIX}{}", base64::Engine::encode(&B64, d))
    };
    let json = text::to_json(&t);
    assert_eq!(decode(&wrap(&json, b"")).expect("the token itself").signature, t.signature);
    let mut twice = b"{\"version\":\"0\",".to_vec();
    twice.extend_from_slice(&json[1..]);
    match decode(&wrap(&twice, b"")) {
        Err(TokenError::Malformed(m)) => assert!(m.contains("duplicate key \"version\""), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(decode(&wrap(&json, b"\0")).err(), Some(TokenError::TrailingBytes(1)));
    // A stream that never ends (flushed, no final block) carries the whole
    // JSON; a strict inflater (zlib's) refuses it, and so do we.
    let unfinished = {
        use std::io::Write;
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&json).expect("deflate");
        enc.flush().expect("sync flush");
        format!("{TEXT_PREFIX}{}", base64::Engine::encode(&B64, enc.get_ref()))
    };
    assert_eq!(decode(&unfinished).err(), Some(TokenError::BadDeflate));
}

#[test]
fn non_derived_values_survive_the_compact_form() {
    let id = Identity::from_secret_bytes([5; 32]);
    let mut t = typical(&id);
    let b = &mut t.body;
    b.connection_info.ufrag = "Uf+8".into();
    b.connection_info.pwd = "a+password/that/is/not/base64/of/16".into();
    b.connection_info.ice_tie_breaker = 42;
    b.connection_info.ice_candidates[1].priority = 7;
    b.connection_info.ice_candidates.push(Candidate {
        kind: CandidateKind::Relay,
        address: SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().expect("v6"), 9, 0, 3)),
        priority: 1,
    });
    b.initiator.as_mut().expect("initiator").capabilities = vec!["stun".into(), "ice".into(), "x-new".into()];
    b.crypto.suite = "Noise_XX_25519_ChaChaPoly_BLAKE2s".into();
    b.relay = vec!["turn:198.18.0.9:3478".into()];
    b.metadata.insert("name".into(), "Ada's laptop".into());
    b.network_id = Some("lab".into());
    let t = Token::sign(t.body, &id);
    assert_eq!(decode(&t.encode_compact()).expect("decodes"), t);
    assert_eq!(decode(&t.encode_text()).expect("decodes"), t);
    validate_standalone(&t, NOW).expect("valid");
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), 1..=u16::MAX).prop_map(|(ip, p)| SocketAddr::new(Ipv4Addr::from(ip).into(), p)),
        (any::<[u8; 16]>(), 1..=u16::MAX, prop::option::of(1..=u32::MAX)).prop_map(|(ip, p, scope)| {
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), p, 0, scope.unwrap_or(0)))
        }),
    ]
}

fn arb_kind() -> impl Strategy<Value = CandidateKind> {
    prop_oneof![
        Just(CandidateKind::Host),
        Just(CandidateKind::Srflx),
        Just(CandidateKind::Prflx),
        Just(CandidateKind::Relay)
    ]
}

fn arb_candidates() -> impl Strategy<Value = Vec<Candidate>> {
    prop::collection::vec((arb_kind(), arb_addr(), prop::option::of(any::<u32>())), 0..=limits::MAX_CANDIDATES)
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (kind, address, p))| Candidate {
                    kind,
                    address,
                    priority: p.unwrap_or(Candidate::standard_priority(kind, derived_local_pref(i))),
                })
                .collect()
        })
}

fn arb_nat() -> impl Strategy<Value = Option<NatInfo>> {
    let mapping = prop_oneof![Just(NatMapping::None), Just(NatMapping::Independent), Just(NatMapping::Dependent)];
    let delta = (1..=limits::MAX_PORT_DELTA, any::<bool>()).prop_map(|(d, neg)| if neg { -d } else { d });
    let ports = prop_oneof![
        Just((None, None)),
        Just((Some(PortAllocation::Preserving), None)),
        Just((Some(PortAllocation::Random), None)),
        delta.prop_map(|d| (Some(PortAllocation::Sequential), Some(d))),
    ];
    prop::option::of((mapping, ports).prop_map(|(mapping, (ports, delta))| NatInfo { delta, mapping, ports }))
}

fn arb_caps() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        prop::sample::subsequence(KNOWN_CAPABILITIES.to_vec(), 0..=KNOWN_CAPABILITIES.len())
            .prop_map(|v| v.into_iter().map(str::to_owned).collect()),
        prop::collection::vec("[a-z-]{0,12}", 0..=limits::MAX_CAPABILITIES),
    ]
}

prop_compose! {
    fn arb_body()(
        rsvp in any::<bool>(),
        id in any::<[u8; 16]>(),
        reply in prop::option::of(any::<[u8; 16]>()),
        created in any::<u64>(),
        expires in any::<u64>(),
        network in prop::option::of("[a-zA-Z0-9 ._-]{0,64}"),
        initial in any::<bool>(),
        rsvp_supported in any::<bool>(),
        timeout in any::<u32>(),
        reusable in any::<bool>(),
        caps in arb_caps(),
        candidates in arb_candidates(),
        ufrag in prop::option::of("[a-zA-Z0-9+/]{4,64}"),
        legacy in any::<bool>(),
        pwd_raw in any::<[u8; 16]>(),
        pwd_str in prop::option::of("[a-zA-Z0-9+/]{22,128}"),
        controlled in any::<bool>(),
        tie in prop::option::of(any::<u64>()),
        suite in prop::option::of("[A-Za-z0-9_]{1,64}"),
        relay in prop::collection::vec("[ -~]{0,64}", 0..=limits::MAX_RELAYS),
        metadata in prop::collection::btree_map("[a-z]{1,16}", "\\PC{0,40}", 0..=limits::MAX_METADATA),
        nat in arb_nat(),
    ) -> TokenBody {
        let key = key_for(id).public_key();
        let party = Party { peer_id: key.peer_id().to_string(), public_key: key, capabilities: caps };
        let token_id = TokenId(id);
        // Both formats this build reads: 1.1's credentials are base64url.
        let version = if legacy { VERSION_1_1 } else { VERSION };
        let pwd = pwd_str.unwrap_or_else(|| credential_encode(version, &pwd_raw));
        TokenBody {
            version: version.into(),
            token_type: if rsvp { TokenType::Rsvp } else { TokenType::Invitation },
            token_id,
            in_reply_to: reply.map(TokenId),
            created_at: created,
            expires_at: expires,
            network_id: network,
            connection_mode: ConnectionMode {
                initial: if initial { InitialMode::Bidirectional } else { InitialMode::Unidirectional },
                rsvp_supported,
                rsvp_timeout_seconds: timeout,
                reusable,
            },
            initiator: (!rsvp).then(|| party.clone()),
            responder: rsvp.then_some(party),
            connection_info: ConnectionInfo {
                ice_candidates: candidates,
                ufrag: ufrag.unwrap_or_else(|| derived_ufrag(version, &token_id)),
                pwd,
                ice_role: if controlled { IceRole::Controlled } else { IceRole::Controlling },
                ice_tie_breaker: tie.unwrap_or_else(|| derived_tie_breaker(&token_id)),
                nat,
            },
            crypto: Crypto { suite: suite.unwrap_or_else(|| DEFAULT_SUITE.into()) },
            relay,
            metadata,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn text_encoding_round_trips_exactly(body in arb_body(), sig in prop::array::uniform32(any::<u8>())) {
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&sig);
        let t = Token { body, signature };
        prop_assert_eq!(decode(&t.encode_text())?, t);
    }

    #[test]
    fn compact_encoding_round_trips_exactly(body in arb_body(), sig in prop::array::uniform32(any::<u8>())) {
        let mut signature = [0u8; 64];
        signature[32..].copy_from_slice(&sig);
        let t = Token { body, signature };
        prop_assert_eq!(decode(&t.encode_compact())?, t.clone());
        prop_assert_eq!(Token::decode_compact_bytes(&t.encode_compact_bytes())?, t);
    }

    #[test]
    fn signatures_survive_both_encodings(body in arb_body()) {
        let id = key_for(body.token_id.0);
        let t = Token::sign(body, &id);
        prop_assert!(decode(&t.encode_text())?.signature_valid());
        prop_assert!(decode(&t.encode_compact())?.signature_valid());
    }

    #[test]
    fn derived_serialization_is_canonical(body in arb_body()) {
        // Canonical = every object's keys sorted, which serde_json's Value
        // (a BTreeMap) guarantees; the direct serialization must match it.
        let sorted = serde_json::to_vec(&serde_json::to_value(&body).expect("value")).expect("json");
        prop_assert_eq!(body.canonical_json(), sorted);
    }

    #[test]
    fn arbitrary_input_never_panics(s in "\\PC{0,300}") {
        let _ = decode(&s);
        let _ = decode(&format!("scpi://{s}"));
        let _ = decode(&format!("scpc:{s}"));
    }

    #[test]
    fn arbitrary_compact_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Token::decode_compact_bytes(&b);
    }
}

fn key_for(id: [u8; 16]) -> Identity {
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(&id);
    seed[16..].copy_from_slice(&id);
    Identity::from_secret_bytes(seed)
}

#[test]
fn metadata_order_is_canonical() {
    let id = Identity::from_secret_bytes([1; 32]);
    let mut t = typical(&id);
    t.body.metadata = BTreeMap::from([("b".to_owned(), "2".to_owned()), ("a".to_owned(), "1".to_owned())]);
    let json = String::from_utf8(t.body.canonical_json()).expect("utf8");
    assert!(json.find("\"a\":\"1\"") < json.find("\"b\":\"2\""));
    assert!(!json.contains(' ') && !json.contains('\n'), "canonical JSON has no whitespace");
    assert!(!json.contains("signature"));
}

#[test]
fn nat_steps_out_of_range_are_refused_in_both_encodings() {
    let id = Identity::from_secret_bytes([1; 32]);
    for (delta, ok) in [(1, true), (-1024, true), (0, false), (1025, false), (i32::MIN, false), (i32::MAX, false)] {
        let nat =
            NatInfo { delta: Some(delta), mapping: NatMapping::Dependent, ports: Some(PortAllocation::Sequential) };
        let params = InvitationParams { nat: Some(nat), ..InvitationParams::default() };
        let t = Token::new_invitation(&id, params, NOW, &mut rng(1));
        for text in [t.encode_text(), t.encode_compact()] {
            assert_eq!(decode(&text).is_ok(), ok, "delta {delta}");
        }
    }
}

#[test]
fn minted_and_derived_credentials_stay_inside_ice_char() {
    // RFC 8839 `ice-char`: ALPHA / DIGIT / "+" / "/". Some ICE agents refuse
    // anything else; base64url's `-` and `_` appear in half of all 22-char
    // passwords, so 200 of each would show them.
    let ice_char = |s: &str| s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/');
    let inviter = Identity::from_secret_bytes([1; 32]);
    let invitee = Identity::from_secret_bytes([2; 32]);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(17);
    for _ in 0..200 {
        let t = Token::new_invitation(&inviter, InvitationParams::default(), NOW, &mut rng);
        let inv = Invitation::from_token(t, NOW).expect("valid");
        let ci = &inv.token().body.connection_info;
        assert!(ice_char(&ci.ufrag) && ice_char(&ci.pwd), "{} / {}", ci.ufrag, ci.pwd);
        let r = Token::new_rsvp(&inv, &invitee, TokenId::random(&mut rng), Vec::new(), None, NOW);
        let rc = &r.body.connection_info;
        assert!(ice_char(&rc.ufrag) && ice_char(&rc.pwd), "{} / {}", rc.ufrag, rc.pwd);
        assert_eq!(rc.pwd, derive_invitee_pwd(VERSION, &ci.pwd, &rc.ufrag));
    }
    // A 1.2 token holding base64url's extra characters is refused; 1.1
    // tokens (minted before) may hold them.
    let mut t = typical(&inviter);
    t.body.connection_info.pwd = "with-a-dash-and_an_underscore".into();
    let t = Token::sign(t.body, &inviter);
    assert!(matches!(decode(&t.encode_text()), Err(TokenError::Malformed(m)) if m.contains("ICE")));
    let mut old = t.body.clone();
    old.version = VERSION_1_1.into();
    let old = Token::sign(old, &inviter);
    assert_eq!(decode(&old.encode_text()).expect("1.1 reads"), old);
}
