//! The host's datagram demultiplexer and handshake parsers. A host listens
//! on an invitation and has joined another; the fuzzer sends it datagrams
//! whose first byte is steered to STUN, handshake initiation, handshake
//! response or session data, with timer advances between them. It must
//! never panic, never establish a session from garbage, and only send to
//! the joined invitation's candidate or an address it heard from.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use convoke_node::host::{Host, HostConfig, HostEvent};
use convoke_node::identity::Identity;
use convoke_node::token::{Candidate, CandidateKind, ConnectionMode, Invitation, InvitationParams, Token};
use libfuzzer_sys::fuzz_target;
use rand_core::SeedableRng;

const UNIX: u64 = 1_800_000_000;

fn setup() -> &'static (Identity, Invitation, Invitation) {
    static S: OnceLock<(Identity, Invitation, Invitation)> = OnceLock::new();
    S.get_or_init(|| {
        let make = |seed: u8, addr: &str| {
            let id = Identity::from_secret_bytes([seed; 32]);
            let params = InvitationParams {
                candidates: Candidate::list([(CandidateKind::Host, addr.parse().expect("addr"))]),
                mode: ConnectionMode { reusable: true, ..ConnectionMode::default() },
                ..InvitationParams::default()
            };
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(seed));
            let t = Token::new_invitation(&id, params, UNIX, &mut rng);
            (id, Invitation::from_token(t, UNIX).expect("valid"))
        };
        let (me, ours) = make(1, "198.18.0.1:4433");
        let (_, theirs) = make(2, "198.18.0.2:4433");
        (me, ours, theirs)
    })
}

const STEER: [u8; 4] = [0x00, 0xE1, 0xE2, 0xE3];

fuzz_target!(|data: &[u8]| {
    let (me, ours, theirs) = setup();
    let start = Instant::now();
    let mut host = Host::new(me, HostConfig::default(), [9; 32], start, UNIX);
    host.listen(ours.clone());
    host.join(theirs, start);
    let candidate = theirs.token().body.connection_info.ice_candidates[0].address;
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
            *b = STEER[usize::from(sel % 4)];
        }
        now += Duration::from_millis(u64::from(step) * 13);
        let from: std::net::SocketAddr = format!("198.18.1.{}:5000", sel / 4 + 1).parse().expect("addr");
        host.handle_datagram(now, from, &mut dgram);
        heard.insert(from);
        if host.poll_timeout().is_some_and(|t| t <= now) {
            host.handle_timeout(now);
        }
        while let Some(t) = host.poll_transmit(now) {
            assert!(t.destination == candidate || heard.contains(&t.destination), "sent to {}", t.destination);
        }
        while let Some(e) = host.poll_event() {
            assert!(!matches!(e, HostEvent::Established { .. }), "a session from garbage");
        }
    }
});
