//! The async library API on loopback: two endpoints, an invitation, many
//! streams at once, datagrams, the RSVP step, resets, stops and closes.

use std::time::Duration;

use convoke_node::identity::Identity;
use convoke_node::runtime::endpoint::{
    Connection, ConnectionError, Endpoint, EndpointConfig, InviteError, InviteOptions, JoinError, Notice, ReadError,
    WriteError,
};
use convoke_node::runtime::os_rng;
use convoke_node::session::CloseReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

async fn endpoint() -> Endpoint {
    Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback()).await.expect("binds on loopback")
}

/// Alice invites, Bob joins: (Alice's side, Bob's side).
async fn pair(alice: &Endpoint, bob: &Endpoint) -> (Connection, Connection) {
    let inv = alice.invite(InviteOptions::default()).await.expect("an invitation");
    let (b, a) = timeout(LIMIT, async { tokio::join!(bob.join(&inv), alice.accept()) }).await.expect("in time");
    let (a, b) = (a.expect("alice accepts"), b.expect("bob joins"));
    assert_eq!(a.peer_id(), bob.peer_id());
    assert_eq!(b.peer_id(), alice.peer_id());
    (a, b)
}

fn pattern(stream: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + stream * 13) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_streams_echo_at_once_and_datagrams_cross() {
    let (alice, bob) = (endpoint().await, endpoint().await);
    let (a, b) = pair(&alice, &bob).await;
    // Alice echoes every stream Bob opens.
    let echo = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (mut send, mut recv) = a.accept_bi().await.expect("a stream");
            tasks.push(tokio::spawn(async move {
                let mut all = Vec::new();
                recv.read_to_end(&mut all).await.expect("the whole stream");
                send.write_all(&all).await.expect("echoed");
                send.finish().expect("once");
                all.len()
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("echo task");
        }
        let d = a.read_datagram().await.expect("a datagram");
        a.send_datagram(&d).expect("fits");
        (total, a)
    });
    let len = 256 * 1024;
    let mut tasks = Vec::new();
    for k in 0..16 {
        let (mut send, mut recv) = b.open_bi().await.expect("the peer allows 100");
        tasks.push(tokio::spawn(async move {
            let data = pattern(k, len);
            let writer = async {
                send.write_all(&data).await.expect("written");
                send.finish().expect("once");
            };
            let mut back = Vec::new();
            let reader = recv.read_to_end(&mut back);
            let (_, r) = tokio::join!(writer, reader);
            r.expect("read back");
            assert!(back == data, "stream {k} came back changed");
        }));
    }
    for t in tasks {
        timeout(LIMIT, t).await.expect("in time").expect("stream task");
    }
    // Datagrams are unreliable: send a few until one comes back.
    let mut echoed = None;
    for _ in 0..20 {
        b.send_datagram(b"ping").expect("fits");
        if let Ok(d) = timeout(Duration::from_millis(200), b.read_datagram()).await {
            echoed = Some(d.expect("open"));
            break;
        }
    }
    assert_eq!(echoed.as_deref(), Some(&b"ping"[..]));
    let (total, _a) = echo.await.expect("echo side");
    assert_eq!(total, 16 * len);
    assert!(b.send_datagram(&vec![0u8; b.max_datagram_size() + 1]).is_err(), "too large for one packet");
    let info = b.info().expect("open");
    assert!(info.stats.bytes_received as usize > 16 * len);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_that_asks_for_an_rsvp_connects_after_it() {
    let (alice, bob) = (endpoint().await, endpoint().await);
    let inv = alice.invite(InviteOptions { rsvp_required: true, ..InviteOptions::default() }).await.expect("made");
    let pending = match timeout(LIMIT, bob.join(&inv)).await.expect("in time") {
        Err(JoinError::RsvpNeeded(p)) => p,
        other => panic!("expected the RSVP step, got {other:?}"),
    };
    assert!(pending.rsvp().starts_with("scpc:"), "a compact token: {}", pending.rsvp());
    let rsvp = pending.rsvp().to_owned();
    let (a, b) =
        timeout(LIMIT, async { tokio::join!(alice.accept_rsvp(&rsvp), pending.connected()) }).await.expect("in time");
    let (a, b) = (a.expect("alice takes the RSVP"), b.expect("bob connects"));
    let mut s = a.open_uni().await.expect("a stream");
    s.write_all(b"after the reply").await.expect("written");
    s.finish().expect("once");
    let mut r = b.accept_uni().await.expect("the stream");
    let mut text = String::new();
    r.read_to_string(&mut text).await.expect("read");
    assert_eq!(text, "after the reply");
    // A tampered RSVP is refused with a reason, not a panic.
    let mut bad = rsvp.clone();
    bad.replace_range(20..21, if &rsvp[20..21] == "A" { "B" } else { "A" });
    assert!(matches!(alice.accept_rsvp(&bad).await, Err(JoinError::Refused(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_stops_and_closes_reach_the_other_side() {
    let (alice, bob) = (endpoint().await, endpoint().await);
    let (a, b) = pair(&alice, &bob).await;
    // A reset: the reader sees the code.
    let mut s = b.open_uni().await.expect("a stream");
    s.write_all(b"partial").await.expect("written");
    let mut r = timeout(LIMIT, a.accept_uni()).await.expect("in time").expect("the stream");
    let mut buf = [0u8; 7];
    r.read_exact(&mut buf).await.expect("the first bytes");
    s.reset(9).expect("open");
    let mut rest = Vec::new();
    let e = timeout(LIMIT, r.read_to_end(&mut rest)).await.expect("in time").expect_err("reset");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(e.into_inner().and_then(|i| i.downcast::<ReadError>().ok()).map(|e| *e), Some(ReadError::Reset(9)));
    // A stop: the writer learns the code.
    let (mut send, _recv) = b.open_bi().await.expect("a stream");
    send.write_all(b"unwanted").await.expect("written");
    let (_back, mut incoming) = timeout(LIMIT, a.accept_bi()).await.expect("in time").expect("the stream");
    incoming.stop(5).expect("open");
    assert_eq!(timeout(LIMIT, send.stopped()).await.expect("in time"), Some(5));
    assert_eq!(send.write(b"more").await, Err(WriteError::Stopped(5)));
    // A close with a code and a reason.
    a.close(7, "done here");
    let why = timeout(LIMIT, b.closed()).await.expect("in time");
    assert_eq!(why, CloseReason::Peer { code: 7, reason: "done here".into() });
    assert!(b.open_bi().await.is_err(), "no streams on a closed session");
}

#[tokio::test(flavor = "current_thread")]
async fn one_stream_carries_many_windows() {
    let (alice, bob) = (endpoint().await, endpoint().await);
    let (a, b) = pair(&alice, &bob).await;
    let total = 24usize << 20;
    let reader = tokio::spawn(async move {
        let mut r = a.accept_uni().await.expect("the stream");
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0usize;
        loop {
            let n = r.read(&mut buf).await.expect("read");
            if n == 0 {
                return got;
            }
            got += n;
        }
    });
    let mut s = b.open_uni().await.expect("a stream");
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        s.write_all(&chunk).await.expect("written");
        sent += chunk.len();
    }
    s.finish().expect("once");
    let got = timeout(Duration::from_secs(60), reader).await.expect("in time").expect("reader");
    assert_eq!(got, total);
}

#[tokio::test(flavor = "current_thread")]
async fn a_stream_cut_by_the_session_end_is_an_error_not_an_end() {
    let (alice, bob) = (endpoint().await, endpoint().await);
    let (a, b) = pair(&alice, &bob).await;
    let mut s = b.open_uni().await.expect("a stream");
    s.write_all(b"half of it").await.expect("written");
    let mut r = timeout(LIMIT, a.accept_uni()).await.expect("in time").expect("the stream");
    let mut buf = [0u8; 10];
    r.read_exact(&mut buf).await.expect("what was sent");
    b.close(0, "gone");
    let mut rest = Vec::new();
    let e = timeout(LIMIT, r.read_to_end(&mut rest)).await.expect("in time").expect_err("cut short");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionAborted);
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_racing_the_peers_close_reports_the_peers_reason() {
    let (alice, bob) = (endpoint().await, endpoint().await);
    let (a, b) = pair(&alice, &bob).await;
    a.close(7, "bye");
    // Opens issued while the close is on its way succeed; the first one
    // after it must carry the peer's reason, not a local close.
    let first_error = timeout(LIMIT, async {
        for _ in 0..100_000 {
            if let Err(e) = b.open_uni().await {
                return e;
            }
        }
        panic!("100,000 opens and the close never arrived");
    })
    .await
    .expect("in time");
    let peer = CloseReason::Peer { code: 7, reason: "bye".into() };
    assert_eq!(first_error, convoke_node::runtime::endpoint::ConnectionError::Closed(peer.clone()));
    assert_eq!(b.closed().await, peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_nobody_accepted_hold_the_peer_to_its_stream_limit() {
    let (alice, bob) = (endpoint().await, endpoint().await);
    let (a, b) = pair(&alice, &bob).await;
    // Bob opens 150 one-byte streams; Alice accepts none yet. Each holds
    // one of the 100 streams she allows (the endpoint leaves their bytes in
    // the engine, so none ends and gives its place back): the 101st open
    // waits.
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let opened = opened.clone();
        tokio::spawn(async move {
            for i in 0..150u8 {
                let mut s = b.open_uni().await.expect("a stream");
                opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                s.write_all(&[i]).await.expect("written");
                s.finish().expect("finished");
            }
            b
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let early = opened.load(std::sync::atomic::Ordering::Relaxed);
    assert!((1..=100).contains(&early), "{early} streams opened before any was accepted (limit 100)");
    for i in 0..150u8 {
        let mut r = timeout(LIMIT, a.accept_uni()).await.expect("in time").expect("a stream");
        let mut got = Vec::new();
        timeout(LIMIT, r.read_to_end(&mut got)).await.expect("in time").expect("read");
        assert_eq!(got, [i], "stream {i}");
    }
    timeout(LIMIT, writer).await.expect("in time").expect("writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_stream_needs_no_open_and_keeps_what_came_before_it_was_taken() {
    let (alice, bob) = (endpoint().await, endpoint().await);
    let (a, b) = pair(&alice, &bob).await;
    // Alice speaks first, more than the handles and the engine's window
    // hold, before Bob has taken the stream: the window holds her back.
    let len = 3 << 20;
    let (mut send, _) = a.session_stream().expect("not taken yet");
    let writer = tokio::spawn(async move {
        send.write_all(&pattern(1, len)).await.expect("written");
        send.finish().expect("once");
        send.acknowledged().await.expect("bob's side has it all");
    });
    // Acknowledged: Bob's engine holds every byte, though nobody read one.
    timeout(LIMIT, writer).await.expect("in time").expect("writer");
    let (_, mut recv) = b.session_stream().expect("not taken yet");
    assert!(b.session_stream().is_none(), "taken once");
    let mut got = Vec::new();
    timeout(LIMIT, recv.read_to_end(&mut got)).await.expect("in time").expect("the whole stream");
    assert!(got == pattern(1, len), "{} bytes, not the {len} sent in order", got.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stun_server_is_a_notice_and_shutdown_ends_everything() {
    let mut config = EndpointConfig::loopback();
    // Nothing listens on the discard port on loopback.
    let silent: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    config.node.stun = vec![silent];
    let alice = Endpoint::bind(Identity::generate(&mut os_rng()), config).await.expect("binds");
    let bob = endpoint().await;
    assert_eq!(timeout(LIMIT, alice.next_notice()).await.expect("in time"), Some(Notice::StunFailed(silent)));
    let (a, b) = pair(&alice, &bob).await;
    timeout(LIMIT, alice.shutdown()).await.expect("in time");
    assert_eq!(alice.next_notice().await, None, "the notices end with the endpoint");
    assert!(matches!(alice.invite(InviteOptions::default()).await, Err(InviteError::Closed(_))));
    assert_eq!(a.open_uni().await.err(), Some(ConnectionError::Closed(CloseReason::Local)));
    // The shutdown sent the close before the thread ended: Bob hears it.
    let why = timeout(LIMIT, b.closed()).await.expect("in time");
    assert!(matches!(why, CloseReason::Peer { code: 0, .. }), "{why:?}");
}
