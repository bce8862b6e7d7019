//! The host's datagram demultiplexer and handshake parsers. A host listens
//! on an invitation and has joined another, which names a relay (so the
//! host holds a circuit end there); the fuzzer sends it datagrams whose
//! first byte is steered to STUN, handshake initiation, handshake response,
//! session data, or a relay's answers and circuit data (unwrapped and
//! dispatched again), with timer advances between them. It must never
//! panic, never establish a session from garbage, and only send to the
//! joined invitation's candidate, its relay or an address it heard from.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use convoke_node::host::{Host, HostConfig, HostEvent};
use convoke_node::identity::Identity;
use convoke_node::relay::client::Hint;
use convoke_node::token::{Candidate, CandidateKind, ConnectionMode, Invitation, InvitationParams, Token};
use libfuzzer_sys::fuzz_target;
use rand_core::SeedableRng;

const UNIX: u64 = 1_800_000_000;

fn setup() -> &'static (Identity, Invitation, Invitation) {
    static S: OnceLock<(Identity, Invitation, Invitation)> = OnceLock::new();
    S.get_or_init(|| {
        let make = |seed: u8, addr: &str, relay: Vec<String>| {
            let id = Identity::from_secret_bytes([seed; 32]);
            let params = InvitationParams {
                candidates: Candidate::list([(CandidateKind::Host, addr.parse().expect("addr"))]),
                mode: ConnectionMode { reusable: true, ..ConnectionMode::default() },
                relay,
                ..InvitationParams::default()
            };
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(seed));
            let t = Token::new_invitation(&id, params, UNIX, &mut rng);
            (id, Invitation::from_token(t, UNIX).expect("valid"))
        };
        let (me, ours) = make(1, "198.18.0.1:4433", Vec::new());
        // Its relay is one of the fuzzer's senders.
        let relay = Hint::Relay(RELAY.parse().expect("addr")).to_string();
        let (_, theirs) = make(2, "198.18.0.2:4433", vec![relay]);
        (me, ours, theirs)
    })
}

const RELAY: &str = "198.18.1.1:5000";
const STEER: [u8; 8] = [0x00, 0xE1, 0xE2, 0xE3, 0xD1, 0xD4, 0xD6, 0xD7];

fuzz_target!(|data: &[u8]| {
    let (me, ours, theirs) = setup();
    let start = Instant::now();
    let mut host = Host::new(me, HostConfig::default(), [9; 32], start, UNIX);
    host.listen(ours.clone());
    host.join(theirs, start);
    let candidate = theirs.token().body.connection_info.ice_candidates[0].address;
    let relay: std::net::SocketAddr = RELAY.parse().expect("addr");
    let mut heard = std::collections::HashSet::new();
    let mut now = start;
    let mut rest = data;
    // Chunks: [steer+source, time step, len, bytes...]
    while rest.len() >= 3 {
        let (sel, step, len) = (rest[0], rest[1], usize::from(rest[2]));
        rest = &rest[3..];
        let len = len.min(rest.len());
        let (body, tail) = rest.split_at(len);
        rest = tail;
        let mut dgram = body.to_vec();
        if let Some(b) = dgram.first_mut() {
            *b = STEER[usize::from(sel % 8)];
        }
        now += Duration::from_millis(u64::from(step) * 13);
        let from: std::net::SocketAddr = format!("198.18.1.{}:5000", sel / 8 % 4 + 1).parse().expect("addr");
        host.handle_datagram(now, from, &mut dgram);
        heard.insert(from);
        if host.poll_timeout().is_some_and(|t| t <= now) {
            host.handle_timeout(now);
        }
        while let Some(t) = host.poll_transmit(now) {
            assert!(
                t.destination == candidate || t.destination == relay || heard.contains(&t.destination),
                "sent to {}",
                t.destination
            );
        }
        while let Some(e) = host.poll_event() {
            assert!(!matches!(e, HostEvent::Established { .. }), "a session from garbage");
        }
    }
});
