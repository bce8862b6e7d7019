//! The relay on loopback: a real UDP socket served by `runtime::relay`, two
//! ends that allocate, bind and exchange data through it, and the caps seen
//! from outside.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use convoke_node::identity::Identity;
use convoke_node::relay::{Packet, Reason, RelayConfig, RelayEvent, RelayLimits, Side, client};
use convoke_node::runtime::{relay, unix_now};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::time::timeout;

/// Sends `req` until an answer comes (5 tries, 300 ms apart); returns it.
async fn ask(sock: &UdpSocket, relay: SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    for _ in 0..5 {
        sock.send_to(req, relay).await.expect("send");
        if let Ok(Ok((n, from))) = timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await {
            assert_eq!(from, relay);
            return buf[..n].to_vec();
        }
    }
    panic!("the relay did not answer");
}

async fn bind(sock: &UdpSocket, relay: SocketAddr, who: &Identity, circuit: u64, side: Side) -> bool {
    let got = ask(sock, relay, &client::bind(circuit, side)).await;
    let Ok(Packet::Challenge { challenge, .. }) = Packet::decode(&got) else { panic!("not a challenge: {got:?}") };
    let got = ask(sock, relay, &client::answer(who, circuit, side, challenge)).await;
    match Packet::decode(&got) {
        Ok(Packet::Bound { circuit: c, side: s, peer_bound }) if c == circuit && s == side => peer_bound,
        other => panic!("not bound: {other:?}"),
    }
}

async fn recv(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let (n, _) = timeout(Duration::from_secs(5), sock.recv_from(&mut buf)).await.expect("in time").expect("recv");
    buf[..n].to_vec()
}

#[tokio::test]
async fn two_ends_exchange_data_through_a_relay_on_loopback_and_hear_its_shutdown() {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let at = socket.local_addr().expect("addr");
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = RelayConfig { limits: RelayLimits::unlimited(), allow: None };
    let server =
        tokio::spawn(relay::serve(socket, config, move |e| seen.lock().expect("lock").push(e.clone()), async move {
            let _ = stopped.await;
        }));

    let (a, b) = (Identity::from_secret_bytes([1; 32]), Identity::from_secret_bytes([2; 32]));
    let (sa, sb) = (UdpSocket::bind("127.0.0.1:0").await.expect("a"), UdpSocket::bind("127.0.0.1:0").await.expect("b"));
    let got = ask(&sa, at, &client::allocate(&a, &b.public_key(), [7; 8], unix_now())).await;
    let Ok(Packet::Allocated { circuit, lifetime_s: 0, bytes: 0, rate: 0, .. }) = Packet::decode(&got) else {
        panic!("not an unlimited grant: {got:?}")
    };
    assert!(!bind(&sa, at, &a, circuit, Side::A).await);
    // B named in A's request binds; A hears that its peer arrived.
    assert!(bind(&sb, at, &b, circuit, Side::B).await);
    assert_eq!(Packet::decode(&recv(&sa).await), Ok(Packet::Bound { circuit, side: Side::A, peer_bound: true }));

    // 200 datagrams of 1,200 bytes each way, in order on loopback.
    for i in 0..200u32 {
        let payload: Vec<u8> = (0..1200).map(|j| (i as usize * 31 + j) as u8).collect();
        sa.send_to(&client::data(circuit, &payload), at).await.expect("send");
        let got = recv(&sb).await;
        assert_eq!(Packet::decode(&got), Ok(Packet::Data { circuit, payload: &payload }));
        sb.send_to(&client::data(circuit, &payload[..100]), at).await.expect("send");
        let got = recv(&sa).await;
        assert_eq!(Packet::decode(&got), Ok(Packet::Data { circuit, payload: &payload[..100] }));
    }

    stop.send(()).expect("the server runs");
    let stats = timeout(Duration::from_secs(5), server).await.expect("stops").expect("joins").expect("no error");
    assert_eq!(stats.forwarded_packets, 400);
    assert_eq!(stats.forwarded_bytes, 200 * 1300);
    for s in [&sa, &sb] {
        assert_eq!(Packet::decode(&recv(s).await), Ok(Packet::Closed { circuit, reason: Reason::Shutdown }));
    }
    let events = events.lock().expect("lock");
    assert!(matches!(events.first(), Some(RelayEvent::Allocated { .. })));
    assert!(matches!(events.last(), Some(RelayEvent::Closed { reason: Reason::Shutdown, bytes: 260_000, .. })));
}

#[tokio::test]
async fn the_default_caps_end_a_circuit_at_128_kib() {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let at = socket.local_addr().expect("addr");
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(relay::serve(socket, RelayConfig::default(), |_| {}, async move {
        let _ = stopped.await;
    }));
    let (a, b) = (Identity::from_secret_bytes([3; 32]), Identity::from_secret_bytes([4; 32]));
    let (sa, sb) = (UdpSocket::bind("127.0.0.1:0").await.expect("a"), UdpSocket::bind("127.0.0.1:0").await.expect("b"));
    let got = ask(&sa, at, &client::allocate(&a, &b.public_key(), [1; 8], unix_now())).await;
    let Ok(Packet::Allocated { circuit, lifetime_s: 120, bytes: 131_072, rate: 65_536, .. }) = Packet::decode(&got)
    else {
        panic!("not the default grant: {got:?}")
    };
    bind(&sa, at, &a, circuit, Side::A).await;
    bind(&sb, at, &b, circuit, Side::B).await;
    let _ = recv(&sa).await; // B arrived.
    // 1,000-byte payloads: the first 60 in a burst (the rate cap's bucket
    // holds one second, 64 KiB), then paced under it. 131 pass; the 132nd
    // would cross 128 KiB and ends the circuit.
    let mut delivered = 0;
    for i in 0..140 {
        if i >= 60 {
            tokio::time::sleep(Duration::from_millis(16)).await;
        }
        sa.send_to(&client::data(circuit, &[0x55; 1000]), at).await.expect("send");
        match Packet::decode(&recv(&sb).await) {
            Ok(Packet::Data { .. }) => delivered += 1,
            Ok(Packet::Closed { reason: Reason::Bytes, .. }) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delivered, 131);
    assert_eq!(Packet::decode(&recv(&sa).await), Ok(Packet::Closed { circuit, reason: Reason::Bytes }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_told_to_relay_serves_circuits_on_its_own_port_and_others_do_not() {
    use convoke_node::runtime::endpoint::{Endpoint, EndpointConfig};
    use convoke_node::runtime::os_rng;

    let mut config = EndpointConfig::loopback();
    config.node.host.relay = Some(RelayConfig { limits: RelayLimits::unlimited(), allow: None });
    let relaying = Endpoint::bind(Identity::generate(&mut os_rng()), config).await.expect("binds");
    let plain = Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback()).await.expect("binds");
    let at = relaying.local_addrs()[0];

    let (a, b) = (Identity::from_secret_bytes([5; 32]), Identity::from_secret_bytes([6; 32]));
    let (sa, sb) = (UdpSocket::bind("127.0.0.1:0").await.expect("a"), UdpSocket::bind("127.0.0.1:0").await.expect("b"));
    let request = client::allocate(&a, &b.public_key(), [2; 8], unix_now());
    let got = ask(&sa, at, &request).await;
    let Ok(Packet::Allocated { circuit, .. }) = Packet::decode(&got) else { panic!("no grant: {got:?}") };
    bind(&sa, at, &a, circuit, Side::A).await;
    bind(&sb, at, &b, circuit, Side::B).await;
    let _ = recv(&sa).await; // B arrived.
    sb.send_to(&client::data(circuit, b"through a member"), at).await.expect("send");
    assert_eq!(Packet::decode(&recv(&sa).await), Ok(Packet::Data { circuit, payload: b"through a member" }));

    // A node not told to relay answers nothing.
    sa.send_to(&request, plain.local_addrs()[0]).await.expect("send");
    let mut buf = [0u8; 256];
    assert!(timeout(Duration::from_millis(500), sa.recv_from(&mut buf)).await.is_err(), "a plain node answered");
}
