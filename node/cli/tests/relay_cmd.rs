//! `convoke relay`: the real binary on loopback. Two ends allocate and bind
//! a circuit and exchange data through it; SIGTERM ends the relay cleanly,
//! telling the ends and reporting what it carried; bad arguments are clear
//! errors.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Proc, Scratch, convoke};
use convoke_node::identity::Identity;
use convoke_node::relay::{Packet, Reason, Side, client};
use serde_json::Value;

/// Sends `req` until an answer comes (5 tries, 300 ms apart).
fn ask(sock: &UdpSocket, relay: SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    sock.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    for _ in 0..5 {
        sock.send_to(req, relay).expect("send");
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return buf[..n].to_vec();
        }
    }
    panic!("the relay did not answer");
}

fn recv(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let (n, _) = sock.recv_from(&mut buf).expect("a datagram in time");
    buf[..n].to_vec()
}

fn bind(sock: &UdpSocket, relay: SocketAddr, who: &Identity, circuit: u64, side: Side) {
    let got = ask(sock, relay, &client::bind(circuit, side));
    let Ok(Packet::Challenge { challenge, .. }) = Packet::decode(&got) else { panic!("not a challenge: {got:?}") };
    let got = ask(sock, relay, &client::answer(who, circuit, side, challenge));
    assert!(matches!(Packet::decode(&got), Ok(Packet::Bound { .. })), "{got:?}");
}

/// Runs `convoke` with `args` (killed on drop); its standard error's JSON
/// events arrive on the channel, one per line.
fn spawn_json(dir: &Scratch, args: &[&str]) -> (Proc, mpsc::Receiver<Value>) {
    let mut child = convoke(dir, "key")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    (Proc(child), lines)
}

#[test]
fn convoke_relay_carries_a_circuit_and_stops_cleanly_on_sigterm() {
    let dir = Scratch::new("relay");
    let (mut relay, lines) = spawn_json(&dir, &["--json", "relay", "--listen", "127.0.0.1:0", "--circuit-bytes", "0"]);
    let next = || lines.recv_timeout(Duration::from_secs(10)).expect("an event in time");
    let first = next();
    assert_eq!(first["event"], "relaying");
    assert_eq!(first["circuits"], 16);
    assert!(first["circuit_bytes"].is_null(), "--circuit-bytes 0 is no limit: {first}");
    let at: SocketAddr = first["addr"].as_str().expect("addr").parse().expect("an address");

    let (a, b) = (Identity::from_secret_bytes([1; 32]), Identity::from_secret_bytes([2; 32]));
    let (sa, sb) = (UdpSocket::bind("127.0.0.1:0").expect("a"), UdpSocket::bind("127.0.0.1:0").expect("b"));
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let got = ask(&sa, at, &client::allocate(&a, &b.public_key(), [5; 8], unix));
    let Ok(Packet::Allocated { circuit, bytes: 0, .. }) = Packet::decode(&got) else { panic!("no grant: {got:?}") };
    assert_eq!(next()["event"], "circuit");
    bind(&sa, at, &a, circuit, Side::A);
    bind(&sb, at, &b, circuit, Side::B);
    let _ = recv(&sa); // B arrived.
    for i in 0..20u8 {
        sa.send_to(&client::data(circuit, &[i; 1000]), at).expect("send");
        assert_eq!(Packet::decode(&recv(&sb)), Ok(Packet::Data { circuit, payload: &[i; 1000] }));
    }

    let status = std::process::Command::new("kill").args(["-TERM", &relay.0.id().to_string()]).status().expect("kill");
    assert!(status.success());
    assert!(relay.wait_for(Duration::from_secs(10)).success(), "SIGTERM is a clean stop");
    for s in [&sa, &sb] {
        assert_eq!(Packet::decode(&recv(s)), Ok(Packet::Closed { circuit, reason: Reason::Shutdown }));
    }
    let stopped = std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(5)).ok())
        .find(|v| v["event"] == "stopped")
        .expect("a stopped event");
    assert_eq!(stopped["forwarded_bytes"], 20_000);
    assert_eq!(stopped["circuits"], 1);
}

#[test]
fn convoke_relay_refuses_bad_arguments_clearly() {
    let dir = Scratch::new("relay-args");
    let out = convoke(&dir, "key").args(["relay", "--allow", "not-a-peer-id"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow"), "{err}");
    let out = convoke(&dir, "key").args(["relay", "--circuit-duration", "5 fortnights"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    // A port that is taken: said, exit status 1.
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = convoke(&dir, "key").args(["relay", "--listen", &addr]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot serve on"), "{err}");
}

#[test]
fn convoke_up_with_relay_serves_circuits_on_the_members_port() {
    let dir = Scratch::new("up-relay");
    // A port that was free a moment ago (the member binds it at once).
    let port = UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let listen = format!("127.0.0.1:{port}");
    let (_member, lines) = spawn_json(&dir, &["--json", "up", "--no-state", "--relay", "--listen", &listen]);
    std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(20)).ok())
        .find(|v| v["event"] == "invitation")
        .expect("the member is up");

    let at: SocketAddr = listen.parse().expect("addr");
    let (a, b) = (Identity::from_secret_bytes([3; 32]), Identity::from_secret_bytes([4; 32]));
    let (sa, sb) = (UdpSocket::bind("127.0.0.1:0").expect("a"), UdpSocket::bind("127.0.0.1:0").expect("b"));
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let got = ask(&sa, at, &client::allocate(&a, &b.public_key(), [6; 8], unix));
    // `--relay` alone: the limited caps.
    let Ok(Packet::Allocated { circuit, bytes: 131_072, lifetime_s: 120, .. }) = Packet::decode(&got) else {
        panic!("not the limited grant: {got:?}")
    };
    bind(&sa, at, &a, circuit, Side::A);
    bind(&sb, at, &b, circuit, Side::B);
    let _ = recv(&sa); // B arrived.
    sb.send_to(&client::data(circuit, b"via a member"), at).expect("send");
    assert_eq!(Packet::decode(&recv(&sa)), Ok(Packet::Data { circuit, payload: b"via a member" }));
}
