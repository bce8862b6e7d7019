//! Interop with a foreign ICE agent: this engine against `webrtc-ice` over
//! real loopback UDP, with each side controlling in turn. A pass shows our
//! STUN/ICE wire format (USERNAME, MESSAGE-INTEGRITY, FINGERPRINT,
//! ICE-CONTROLLING/CONTROLLED, PRIORITY, USE-CANDIDATE) against code no one
//! here wrote. All traffic stays on 127.0.0.1; mDNS is disabled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use convoke_node::ice::{Endpoint, EndpointConfig, Event, Via};
use convoke_node::identity::Identity;
use convoke_node::token::{
    Candidate, CandidateKind, ConnectionInfo, ConnectionMode, Crypto, IceRole, Invitation, InvitationParams, Party,
    Token, TokenBody, TokenId, TokenType, VERSION, derive_invitee_pwd,
};
use rand_core::SeedableRng;
use tokio::net::UdpSocket;
use webrtc_ice::agent::Agent;
use webrtc_ice::agent::agent_config::AgentConfig;
use webrtc_ice::candidate::candidate_base::unmarshal_candidate;
use webrtc_ice::mdns::MulticastDnsMode;
use webrtc_ice::network_type::NetworkType;

const LIMIT: Duration = Duration::from_secs(10);

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

/// A webrtc-ice agent gathering host candidates on 127.0.0.1 only.
async fn foreign_agent(ufrag: Option<String>, pwd: Option<String>) -> (Arc<Agent>, SocketAddr) {
    let config = AgentConfig {
        network_types: vec![NetworkType::Udp4],
        multicast_dns_mode: MulticastDnsMode::Disabled,
        include_loopback: true,
        ip_filter: Arc::new(Some(Box::new(|ip: std::net::IpAddr| ip.is_loopback()))),
        local_ufrag: ufrag.unwrap_or_default(),
        local_pwd: pwd.unwrap_or_default(),
        ..Default::default()
    };
    let agent = Arc::new(Agent::new(config).await.expect("agent"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    agent.on_candidate(Box::new(move |c| {
        if let Some(c) = c {
            let _ = tx.send(format!("{}:{}", c.address(), c.port()));
        }
        Box::pin(async {})
    }));
    agent.gather_candidates().expect("gather");
    let addr = tokio::time::timeout(LIMIT, rx.recv()).await.expect("a candidate in time").expect("candidate");
    let addr: SocketAddr = addr.parse().expect("ip:port");
    assert!(addr.ip().is_loopback(), "foreign agent must stay on loopback, got {addr}");
    (agent, addr)
}

fn add_remote(agent: &Agent, addr: SocketAddr) {
    let line = format!("candidate:1 1 udp 2130706431 {} {} typ host", addr.ip(), addr.port());
    let c = unmarshal_candidate(&line).expect("candidate line");
    let c: Arc<dyn webrtc_ice::candidate::Candidate + Send + Sync> = Arc::new(c);
    agent.add_remote_candidate(&c).expect("add remote");
}

/// Runs `ep` on `sock` until an event satisfies `done` or the limit passes.
async fn run(ep: &mut Endpoint, sock: &UdpSocket, mut done: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let end = Instant::now() + LIMIT;
    let mut events = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        while let Some(t) = ep.poll_transmit() {
            assert!(t.destination.ip().is_loopback());
            sock.send_to(&t.contents, t.destination).await.expect("send");
        }
        while let Some(e) = ep.poll_event() {
            let stop = done(&e);
            events.push(e);
            if stop {
                return events;
            }
        }
        let now = Instant::now();
        assert!(now < end, "no result within {LIMIT:?}; events: {events:?}");
        let wake = ep.poll_timeout().unwrap_or(end).min(end);
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let (n, from) = r.expect("recv");
                ep.handle_datagram(Instant::now(), from, &buf[..n]);
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                ep.handle_timeout(Instant::now());
            }
        }
    }
}

/// An invitation describing the foreign agent as inviter (controlling).
fn invitation_for_foreign(addr: SocketAddr, ufrag: String, pwd: String) -> Invitation {
    let id = Identity::from_secret_bytes([21; 32]);
    let now = unix_now();
    let body = TokenBody {
        version: VERSION.into(),
        token_type: TokenType::Invitation,
        token_id: TokenId([3; 16]),
        in_reply_to: None,
        created_at: now,
        expires_at: now + 600,
        network_id: None,
        connection_mode: ConnectionMode::default(),
        initiator: Some(Party {
            peer_id: id.peer_id().to_string(),
            public_key: id.public_key(),
            capabilities: vec!["ice".into()],
        }),
        responder: None,
        connection_info: ConnectionInfo {
            ice_candidates: Candidate::list([(CandidateKind::Host, addr)]),
            ufrag,
            pwd,
            ice_role: IceRole::Controlling,
            ice_tie_breaker: 1,
            nat: None,
        },
        crypto: Crypto::default(),
        relay: Vec::new(),
        metadata: Default::default(),
    };
    Invitation::from_token(Token::sign(body, &id), now).expect("valid invitation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_agent_controlling_our_engine_controlled() {
    let (agent, their_addr) = foreign_agent(None, None).await;
    let (their_ufrag, their_pwd) = agent.get_local_user_credentials().await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let our_addr = sock.local_addr().expect("addr");
    let mut ep = Endpoint::new(EndpointConfig::default(), [5; 32], Instant::now(), unix_now());
    let inv = invitation_for_foreign(their_addr, their_ufrag, their_pwd);
    let id = ep.join(&inv, Instant::now());
    let (our_ufrag, our_pwd) = ep.local_credentials(id).map(|(u, p)| (u.to_owned(), p.to_owned())).expect("creds");

    add_remote(&agent, our_addr);
    let (_cancel_tx, cancel_rx) = tokio::sync::mpsc::channel(1);
    let a2 = Arc::clone(&agent);
    let dial = tokio::spawn(async move { a2.dial(cancel_rx, our_ufrag, our_pwd).await.map(|_| ()) });

    let events = run(&mut ep, &sock, |e| matches!(e, Event::Connected { .. })).await;
    let Some(Event::Connected { remote, role, via, .. }) = events.last() else { panic!("{events:?}") };
    assert_eq!((*remote, *role, *via), (their_addr, IceRole::Controlled, Via::SingleToken));
    // Keep answering while the foreign side completes.
    let serve = async {
        let _ = run(&mut ep, &sock, |_| false).await;
    };
    tokio::select! {
        r = dial => r.expect("join").expect("webrtc-ice connected"),
        _ = serve => panic!("foreign agent did not connect"),
    }
    let pair = agent.get_selected_candidate_pair().expect("foreign agent selected a pair");
    assert!(pair.to_string().contains(&our_addr.port().to_string()), "{pair}");
    agent.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_engine_controlling_foreign_agent_controlled() {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let our_addr = sock.local_addr().expect("addr");
    let me = Identity::from_secret_bytes([22; 32]);
    let params = InvitationParams {
        candidates: Candidate::list([(CandidateKind::Host, our_addr)]),
        ..InvitationParams::default()
    };
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
    let inv =
        Invitation::from_token(Token::new_invitation(&me, params, unix_now(), &mut rng), unix_now()).expect("valid");
    let ci = inv.token().body.connection_info.clone();
    let version = inv.token().body.version.clone();
    let mut ep = Endpoint::new(EndpointConfig::default(), [6; 32], Instant::now(), unix_now());
    ep.listen(inv);

    // The foreign invitee uses the credentials an invitee derives.
    let invitee_ufrag = "wrtcIce1".to_owned();
    let invitee_pwd = derive_invitee_pwd(&version, &ci.pwd, &invitee_ufrag);
    let (agent, their_addr) = foreign_agent(Some(invitee_ufrag), Some(invitee_pwd)).await;
    add_remote(&agent, our_addr);
    let (_cancel_tx, cancel_rx) = tokio::sync::mpsc::channel(1);
    let a2 = Arc::clone(&agent);
    let accept = tokio::spawn(async move { a2.accept(cancel_rx, ci.ufrag, ci.pwd).await.map(|_| ()) });

    let events = run(&mut ep, &sock, |e| matches!(e, Event::Connected { .. })).await;
    assert!(events.iter().any(|e| matches!(e, Event::InviteeArrived { from, .. } if *from == their_addr)));
    let Some(Event::Connected { remote, role, .. }) = events.last() else { panic!("{events:?}") };
    assert_eq!((*remote, *role), (their_addr, IceRole::Controlling));
    let serve = async {
        let _ = run(&mut ep, &sock, |_| false).await;
    };
    tokio::select! {
        r = accept => r.expect("join").expect("webrtc-ice connected"),
        _ = serve => panic!("foreign agent did not connect"),
    }
    agent.close().await.expect("close");
}
