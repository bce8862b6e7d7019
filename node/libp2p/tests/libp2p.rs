//! libp2p Swarms over Convoke on loopback: identify, ping, kademlia and
//! gossipsub run unchanged; a dial waits through the RSVP step.

use std::time::Duration;

use convoke_libp2p::{EndpointConfig, Error, Handle, InviteOptions, Transport};
use libp2p::core::Transport as _;
use libp2p::core::transport::{DialOpts, PortUse, TransportError};
use libp2p::futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, gossipsub, identify, kad, ping};

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
}

const TOPIC: &str = "convoke-test";

async fn swarm() -> (Swarm<Behaviour>, Handle) {
    let keypair = Keypair::generate_ed25519();
    let transport = Transport::bind(&keypair, EndpointConfig::loopback()).await.expect("bind");
    let handle = transport.handle();
    let mut swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|_| transport)
        .expect("transport")
        .with_behaviour(|key| {
            let config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(200))
                .build()
                .expect("gossipsub config");
            let peer = key.public().to_peer_id();
            let mut kad = kad::Behaviour::new(peer, kad::store::MemoryStore::new(peer));
            kad.set_mode(Some(kad::Mode::Server));
            Behaviour {
                gossipsub: gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)
                    .expect("gossipsub"),
                identify: identify::Behaviour::new(identify::Config::new("/convoke-test/1".into(), key.public())),
                ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(300))),
                kad,
            }
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    swarm.behaviour_mut().gossipsub.subscribe(&gossipsub::IdentTopic::new(TOPIC)).expect("subscribe");
    swarm.listen_on("/ip4/127.0.0.1/udp/0".parse().expect("address")).expect("listen");
    (swarm, handle)
}

/// What one side saw.
#[derive(Debug, Default)]
struct Seen {
    connected: Option<PeerId>,
    identified: bool,
    pinged: bool,
    closest_peers: Option<Vec<PeerId>>,
    published: bool,
    message: Option<String>,
}

impl Seen {
    fn done(&self, with_kad: bool) -> bool {
        self.connected.is_some()
            && self.identified
            && self.pinged
            && self.message.is_some()
            && (!with_kad || self.closest_peers.is_some())
    }
}

fn on_event(swarm: &mut Swarm<Behaviour>, seen: &mut Seen, event: SwarmEvent<BehaviourEvent>, text: &str) {
    match event {
        SwarmEvent::ConnectionEstablished { peer_id, .. } => seen.connected = Some(peer_id),
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { .. })) => seen.identified = true,
        SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { result: Ok(_), .. })) => seen.pinged = true,
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { .. })) if !seen.published => {
            let topic = gossipsub::IdentTopic::new(TOPIC);
            swarm.behaviour_mut().gossipsub.publish(topic, text.as_bytes()).expect("publish to a subscribed peer");
            seen.published = true;
        }
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. })) => {
            seen.message = Some(String::from_utf8_lossy(&message.data).into_owned());
        }
        SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
            result: kad::QueryResult::GetClosestPeers(Ok(ok)),
            ..
        })) => seen.closest_peers = Some(ok.peers.into_iter().map(|p| p.peer_id).collect()),
        _ => {}
    }
}

/// Drives both swarms until each has seen everything (or 30 s pass).
async fn run_pair(a: &mut Swarm<Behaviour>, b: &mut Swarm<Behaviour>, kad_from_b: bool) -> (Seen, Seen) {
    let (mut seen_a, mut seen_b) = (Seen::default(), Seen::default());
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    let mut kad_started = false;
    while !(seen_a.done(false) && seen_b.done(kad_from_b)) {
        tokio::select! {
            e = a.select_next_some() => on_event(a, &mut seen_a, e, "hello from a"),
            e = b.select_next_some() => on_event(b, &mut seen_b, e, "hello from b"),
            _ = &mut deadline => break,
        }
        if kad_from_b && !kad_started && seen_b.identified {
            // A kademlia lookup through the only peer b knows: a request and
            // a response over a Convoke stream.
            b.behaviour_mut().kad.get_closest_peers(PeerId::random());
            kad_started = true;
        }
    }
    (seen_a, seen_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_gossipsub_identify_ping_and_kademlia_run_over_convoke() {
    let (mut a, handle_a) = swarm().await;
    let (mut b, handle_b) = swarm().await;
    let invitation = handle_a.invite(InviteOptions::default()).await.expect("invite");
    // The token travels out of band; b imports it and dials its address.
    let address = handle_b.import(invitation);
    assert!(address.to_string().contains("/certhash/"), "{address}");
    assert!(address.to_string().ends_with(&format!("/p2p/{}", a.local_peer_id())), "{address}");
    b.dial(address.clone()).expect("dial");
    let a_address = address;
    let b_knows_a =
        |b: &mut Swarm<Behaviour>| b.behaviour_mut().kad.add_address(&handle_a.peer_id(), a_address.clone());
    b_knows_a(&mut b);

    let (seen_a, seen_b) = run_pair(&mut a, &mut b, true).await;
    assert_eq!(seen_a.connected, Some(*b.local_peer_id()), "a: {seen_a:?}");
    assert_eq!(seen_b.connected, Some(*a.local_peer_id()), "b: {seen_b:?}");
    assert!(seen_a.identified && seen_b.identified, "identify: {seen_a:?} {seen_b:?}");
    assert!(seen_a.pinged && seen_b.pinged, "ping: {seen_a:?} {seen_b:?}");
    assert_eq!(seen_a.message.as_deref(), Some("hello from b"), "gossipsub at a: {seen_a:?}");
    assert_eq!(seen_b.message.as_deref(), Some("hello from a"), "gossipsub at b: {seen_b:?}");
    let closest = seen_b.closest_peers.expect("kademlia lookup finished");
    assert!(closest.contains(a.local_peer_id()), "kademlia: {closest:?}");
    assert_eq!(handle_b.peer_id(), *b.local_peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_dial_waits_through_the_rsvp_step_then_connects() {
    let (mut a, handle_a) = swarm().await;
    let (mut b, handle_b) = swarm().await;
    // An inviter whose network filters first contacts asks for an RSVP.
    let options = InviteOptions { rsvp_required: true, ..InviteOptions::default() };
    let invitation = handle_a.invite(options).await.expect("invite");
    let address = handle_b.import(invitation);
    b.dial(address.clone()).expect("dial");
    // The application ferries the RSVP back to the inviter.
    let ferry = tokio::spawn(async move {
        let request = tokio::time::timeout(Duration::from_secs(20), handle_b.next_rsvp()).await.expect("an RSVP");
        assert_eq!(request.address, address);
        handle_a.accept_rsvp(&request.rsvp).await.expect("the inviter takes the RSVP")
    });
    let (seen_a, seen_b) = run_pair(&mut a, &mut b, false).await;
    assert_eq!(ferry.await.expect("ferry"), *b.local_peer_id());
    assert_eq!(seen_a.connected, Some(*b.local_peer_id()), "a: {seen_a:?}");
    assert_eq!(seen_b.connected, Some(*a.local_peer_id()), "b: {seen_b:?}");
    assert!(seen_a.pinged && seen_b.pinged, "ping: {seen_a:?} {seen_b:?}");
    assert_eq!(seen_a.message.as_deref(), Some("hello from b"), "gossipsub at a: {seen_a:?}");
    assert_eq!(seen_b.message.as_deref(), Some("hello from a"), "gossipsub at b: {seen_b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_addresses_without_the_token_or_of_other_transports_are_refused() {
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let alice = Transport::bind(&ka, EndpointConfig::loopback()).await.expect("bind");
    let mut bob = Transport::bind(&kb, EndpointConfig::loopback()).await.expect("bind");
    let invitation = alice.handle().invite(InviteOptions::default()).await.expect("invite");
    let address = convoke_libp2p::invitation_address(&invitation);
    let opts = || DialOpts { role: libp2p::core::Endpoint::Dialer, port_use: PortUse::Reuse };
    // Bob never imported the token: the address alone does not dial.
    match bob.dial(address.clone(), opts()) {
        Err(TransportError::Other(Error::UnknownInvitation(a))) => assert_eq!(a, address),
        other => panic!("expected UnknownInvitation, got {:?}", other.err()),
    }
    // An address naming another peer than the invitation's key.
    bob.handle().import(invitation);
    let mut forged: Multiaddr = address.iter().filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_))).collect();
    forged.push(libp2p::multiaddr::Protocol::P2p(kb.public().to_peer_id()));
    assert!(matches!(bob.dial(forged, opts()), Err(TransportError::Other(Error::WrongPeer(_)))));
    // Other transports' addresses are left to them.
    let quic: Multiaddr = "/ip4/127.0.0.1/udp/9/quic-v1".parse().expect("address");
    assert!(matches!(bob.dial(quic, opts()), Err(TransportError::MultiaddrNotSupported(_))));
    // A listen address that the endpoint's sockets do not serve.
    let elsewhere: Multiaddr = "/ip4/127.0.0.2/udp/9".parse().expect("address");
    assert!(matches!(
        bob.listen_on(libp2p::core::transport::ListenerId::next(), elsewhere),
        Err(TransportError::MultiaddrNotSupported(_))
    ));
}
