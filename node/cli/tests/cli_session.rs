//! The `convoke` binary end to end, as separate processes on loopback:
//! invite/join piping data both ways, a 100 MiB transfer, the RSVP path
//! through the control socket, refused tokens, and the STUN answer every
//! node gives. Every wait is bounded; every child is killed on the way out.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use convoke_node::identity::Identity;
use convoke_node::stun::{BINDING, Class, Message, MessageBuilder, TransactionId};
use convoke_node::token::{Candidate, CandidateKind, InvitationParams, Token};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

mod common;
use common::{Proc, Scratch, convoke, wait_file};

fn random_file(path: &Path, len: usize, seed: u64) -> [u8; 32] {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut f = fs::File::create(path).expect("create");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n]).expect("write");
        h.update(&buf[..n]);
        left -= n;
    }
    h.finalize().into()
}

fn sha256_file(path: &Path) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(fs::read(path).expect("read"));
    h.finalize().into()
}

/// Starts `convoke invite` reading `stdin_file`, writing to `out`.
fn start_inviter(dir: &Scratch, extra: &[&str], stdin: Stdio, out: &str) -> (Proc, String) {
    let mut c = convoke(dir, "a.key");
    c.args(["--json", "invite", "--listen", "127.0.0.1:0", "--token-out"])
        .arg(dir.path("token"))
        .arg("--control")
        .arg(dir.path("a.sock"))
        .args(extra)
        .stdin(stdin)
        .stdout(fs::File::create(dir.path(out)).expect("out"))
        .stderr(fs::File::create(dir.path("a.err")).expect("err"));
    let p = Proc(c.spawn().expect("spawn invite"));
    let token = wait_file(&dir.path("token"), Duration::from_secs(20));
    (p, token)
}

fn join_cmd(dir: &Scratch, token: &str, extra: &[&str], out: &str) -> Command {
    let mut c = convoke(dir, "b.key");
    c.args(["--json", "join", token, "--listen", "127.0.0.1:0", "--control"])
        .arg(dir.path("b.sock"))
        .args(extra)
        .stdout(fs::File::create(dir.path(out)).expect("out"))
        .stderr(fs::File::create(dir.path("b.err")).expect("err"));
    c
}

#[test]
fn invite_and_join_exchange_data_both_ways() {
    let dir = Scratch::new("both");
    let a_sum = random_file(&dir.path("a.in"), 1_000_000, 1);
    let b_sum = random_file(&dir.path("b.in"), 700_000, 2);
    let (mut a, token) = start_inviter(&dir, &[], fs::File::open(dir.path("a.in")).expect("in").into(), "a.out");
    let mut b = Proc(
        join_cmd(&dir, &token, &[], "b.out")
            .stdin(fs::File::open(dir.path("b.in")).expect("in"))
            .spawn()
            .expect("join"),
    );
    assert!(
        b.wait_for(Duration::from_secs(60)).success(),
        "join: {}",
        fs::read_to_string(dir.path("b.err")).unwrap_or_default()
    );
    assert!(
        a.wait_for(Duration::from_secs(20)).success(),
        "invite: {}",
        fs::read_to_string(dir.path("a.err")).unwrap_or_default()
    );
    assert_eq!(sha256_file(&dir.path("b.out")), a_sum, "inviter → joiner");
    assert_eq!(sha256_file(&dir.path("a.out")), b_sum, "joiner → inviter");
    // Both report the other's PeerId: the handshake authenticated them.
    let a_err = fs::read_to_string(dir.path("a.err")).expect("a.err");
    let b_err = fs::read_to_string(dir.path("b.err")).expect("b.err");
    assert!(a_err.contains(r#""event":"connected""#) && b_err.contains(r#""via":"single_token""#), "{a_err}\n{b_err}");
    // The joiner says how long it took from importing the invitation.
    let conn = json_events(&dir.path("b.err")).into_iter().find(|e| e["event"] == "connected").expect("connected");
    assert!(conn["elapsed_s"].as_f64().is_some_and(|t| (0.0..60.0).contains(&t)), "{conn}");
}

#[test]
fn hundred_mib_arrive_intact() {
    let dir = Scratch::new("big");
    let sum = random_file(&dir.path("big.in"), 100 << 20, 3);
    let (mut a, token) = start_inviter(&dir, &[], Stdio::null(), "a.out");
    let started = Instant::now();
    let mut b = Proc(
        join_cmd(&dir, &token, &[], "b.out")
            .stdin(fs::File::open(dir.path("big.in")).expect("in"))
            .spawn()
            .expect("join"),
    );
    assert!(
        b.wait_for(Duration::from_secs(600)).success(),
        "join: {}",
        fs::read_to_string(dir.path("b.err")).unwrap_or_default()
    );
    assert!(a.wait_for(Duration::from_secs(30)).success());
    let took = started.elapsed();
    assert_eq!(fs::metadata(dir.path("a.out")).expect("out").len(), 100 << 20);
    assert_eq!(sha256_file(&dir.path("a.out")), sum, "SHA-256 of what arrived");
    eprintln!("100 MiB in {took:?} ({:.1} MiB/s, this build's profile)", 100.0 / took.as_secs_f64());
}

fn json_events(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn wait_event(path: &Path, event: &str, limit: Duration) -> serde_json::Value {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(e) = json_events(path).into_iter().find(|e| e["event"] == event) {
            return e;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no {event} event in {} within {limit:?}: {}", path.display(), fs::read_to_string(path).unwrap_or_default());
}

#[test]
fn rsvp_required_goes_through_the_control_socket_and_a_replay_is_refused() {
    let dir = Scratch::new("rsvp");
    let (mut a, token) = start_inviter(&dir, &["--rsvp-required"], Stdio::piped(), "a.out");
    let mut b = Proc(
        join_cmd(&dir, &token, &["--yes", "--rsvp-out", dir.path("rsvp").to_str().expect("utf-8")], "b.out")
            .stdin(Stdio::piped())
            .spawn()
            .expect("join"),
    );
    let rsvp = wait_file(&dir.path("rsvp"), Duration::from_secs(20));
    assert!(rsvp.starts_with("scpc:"));
    let out =
        convoke(&dir, "c.key").arg("rsvp").arg(&rsvp).arg("--control").arg(dir.path("a.sock")).output().expect("rsvp");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_event(&dir.path("a.err"), "connected", Duration::from_secs(20));
    wait_event(&dir.path("b.err"), "connected", Duration::from_secs(20));

    // The same RSVP again is a replay.
    let out =
        convoke(&dir, "c.key").arg("rsvp").arg(&rsvp).arg("--control").arg(dir.path("a.sock")).output().expect("rsvp");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already") || err.contains("replay"), "{err}");

    // Status shows the session, its path and that it came from an RSVP.
    let out = convoke(&dir, "c.key")
        .args(["--json", "status", "--control"])
        .arg(dir.path("a.sock"))
        .output()
        .expect("status");
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let s = &nodes[0]["sessions"][0];
    assert_eq!(s["established_by"], "rsvp", "{nodes}");
    assert!(s["remote"].as_str().is_some_and(|r| r.starts_with("127.0.0.1:")), "{nodes}");

    // Chat both ways, then both hang up.
    let mut a_in = a.0.stdin.take().expect("stdin");
    let mut b_in = b.0.stdin.take().expect("stdin");
    a_in.write_all(b"hello from the inviter\n").expect("write");
    b_in.write_all(b"hello back\n").expect("write");
    drop((a_in, b_in));
    assert!(b.wait_for(Duration::from_secs(20)).success());
    assert!(a.wait_for(Duration::from_secs(20)).success());
    assert_eq!(fs::read_to_string(dir.path("b.out")).expect("b.out"), "hello from the inviter\n");
    assert_eq!(fs::read_to_string(dir.path("a.out")).expect("a.out"), "hello back\n");
}

#[test]
fn tampered_and_expired_invitations_are_refused_with_their_reason() {
    let dir = Scratch::new("bad");
    let (_a, token) = start_inviter(&dir, &[], Stdio::null(), "a.out");
    // Flip one character in the middle.
    let mut chars: Vec<char> = token.chars().collect();
    let mid = chars.len() / 2;
    chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    let out = convoke(&dir, "b.key").args(["join", &tampered, "--listen", "127.0.0.1:0"]).output().expect("join");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be used") && err.contains("signature"), "{err}");

    // Made 1,000 s ago with a 1 s lifetime: past the 5 min clock-skew grace.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let params = InvitationParams {
        candidates: Candidate::list([(CandidateKind::Host, "127.0.0.1:9".parse().expect("addr"))]),
        lifetime_secs: 1,
        ..InvitationParams::default()
    };
    let identity = Identity::from_secret_bytes([5; 32]);
    let expired =
        Token::new_invitation(&identity, params, now - 1000, &mut ChaCha20Rng::seed_from_u64(1)).encode_compact();
    let out = convoke(&dir, "b.key").args(["join", &expired, "--listen", "127.0.0.1:0"]).output().expect("join");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expired"), "{err}");
}

#[test]
fn every_node_answers_stun_with_the_right_address_and_does_not_amplify() {
    let dir = Scratch::new("stun");
    let (_a, token) = start_inviter(&dir, &[], Stdio::null(), "a.out");
    let t = convoke_node::token::decode(&token).expect("token");
    let server: SocketAddr = t.body.connection_info.ice_candidates[0].address;
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let ask = |padded: bool| {
        let tid = TransactionId(*b"convoke-test");
        let mut b = MessageBuilder::new(Class::Request, BINDING, tid);
        if padded {
            b.software("padding so the answer is no larger than the question");
        }
        let req = b.finish(None, true);
        for _ in 0..5 {
            sock.send_to(&req, server).expect("send");
            let mut buf = [0u8; 1500];
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                assert_eq!(from, server);
                assert!(n <= 3 * req.len(), "a {n}-byte answer to a {}-byte request", req.len());
                let m = Message::parse(&buf[..n]).expect("STUN answer");
                assert_eq!((m.class, m.transaction_id), (Class::Success, tid));
                return m.mapped_address;
            }
        }
        None
    };
    assert_eq!(ask(true), Some(sock.local_addr().expect("local")), "XOR-MAPPED-ADDRESS is where we sent from");
    // A bare 20-byte request, as every STUN client sends: answered, within 3× its size.
    assert_eq!(ask(false), Some(sock.local_addr().expect("local")), "a plain STUN client is served");
}

#[test]
fn unreachable_stun_server_is_reported_and_the_invitation_still_made() {
    let dir = Scratch::new("nostun");
    // Nothing listens on the discard port on loopback.
    let (_a, token) = start_inviter(&dir, &["--stun", "127.0.0.1:9"], Stdio::null(), "a.out");
    assert!(token.starts_with("scpc:"));
    let e = wait_event(&dir.path("a.err"), "stun_failed", Duration::from_secs(5));
    assert_eq!(e["server"], "127.0.0.1:9");
}

#[test]
fn bad_flags_and_occupied_ports_get_clear_errors() {
    let dir = Scratch::new("flags");
    let busy = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let out =
        convoke(&dir, "a.key").args(["invite", "--listen", &format!("127.0.0.1:{port}")]).output().expect("invite");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen") && err.contains("in use"), "{err}");
    let out = convoke(&dir, "a.key").args(["invite", "--expires", "5y"]).output().expect("invite");
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    fs::write(dir.path("bad.toml"), "listen = [\"nowhere\"]\n").expect("write");
    let out = convoke(&dir, "a.key").arg("--config").arg(dir.path("bad.toml")).arg("invite").output().expect("invite");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));
    // Values under [invite] are refused naming the field, not a flag.
    for (text, field) in [("expires = \"5y\"", "expires"), ("rsvp_timeout = \"1x\"", "rsvp_timeout")] {
        fs::write(dir.path("bad.toml"), format!("[invite]\n{text}\n")).expect("write");
        let out =
            convoke(&dir, "a.key").arg("--config").arg(dir.path("bad.toml")).arg("invite").output().expect("invite");
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("[invite] {field}")) && !err.contains("--"), "{err}");
    }
}

/// A forged token (no valid signature needed) or an error quoting one must
/// not drive the terminal of whoever inspects it.
#[test]
fn inspecting_a_hostile_token_prints_no_control_characters() {
    let dir = Scratch::new("escapes");
    let identity = Identity::from_secret_bytes([6; 32]);
    let params = InvitationParams {
        candidates: Candidate::list([(CandidateKind::Host, "127.0.0.1:4433".parse().expect("addr"))]),
        ..InvitationParams::default()
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let mut t = Token::new_invitation(&identity, params, now, &mut ChaCha20Rng::seed_from_u64(2));
    t.body.network_id = Some("net\u{1b}[2J\u{1b}]0;owned\u{7}\rfake line".into());
    t.body.metadata.insert("k\u{9b}31m".into(), "v\u{202e}txt.exe".into());
    let out = convoke(&dir, "a.key").args(["token", "inspect", &t.encode_text()]).output().expect("inspect");
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("\\u{1b}[2J"), "{all}");
    for c in ['\u{1b}', '\u{7}', '\r', '\u{9b}', '\u{202e}'] {
        assert!(!all.contains(c), "{c:?} reached the terminal: {all:?}");
    }
}
