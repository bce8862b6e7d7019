//! The connectivity engine's datagram input path. An endpoint listens on a
//! reusable invitation and has joined another; the fuzzer sends it any
//! datagrams from any of a few sources, interleaved with timer advances.
//! It must never panic, never send anywhere but the joined invitation's
//! candidate or an address it heard from, and never hold more attempts
//! than its limit.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use convoke_node::ice::{Endpoint, EndpointConfig};
use convoke_node::identity::Identity;
use convoke_node::token::{Candidate, CandidateKind, ConnectionMode, Invitation, InvitationParams, Token};
use libfuzzer_sys::fuzz_target;

const UNIX: u64 = 1_800_000_000;

struct Fixed(u8);
impl rand_core::TryRng for Fixed {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(u32::from(self.0))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(u64::from(self.0))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for b in dst {
            self.0 = self.0.wrapping_mul(31).wrapping_add(7);
            *b = self.0;
        }
        Ok(())
    }
}
impl rand_core::TryCryptoRng for Fixed {}

fn invitations() -> &'static (Invitation, Invitation) {
    static INV: OnceLock<(Invitation, Invitation)> = OnceLock::new();
    INV.get_or_init(|| {
        let make = |seed: u8, addr: &str, reusable: bool| {
            let id = Identity::from_secret_bytes([seed; 32]);
            let params = InvitationParams {
                candidates: Candidate::list([(CandidateKind::Host, addr.parse().expect("addr"))]),
                mode: ConnectionMode { reusable, ..ConnectionMode::default() },
                ..InvitationParams::default()
            };
            let t = Token::new_invitation(&id, params, UNIX, &mut Fixed(seed));
            Invitation::from_token(t, UNIX).expect("valid")
        };
        (make(1, "198.18.0.1:4433", true), make(2, "198.18.0.2:4433", false))
    })
}

fuzz_target!(|data: &[u8]| {
    let (ours, theirs) = invitations();
    let start = Instant::now();
    let config = EndpointConfig { max_attempts: 16, ..EndpointConfig::default() };
    let max = config.max_attempts;
    let mut ep = Endpoint::new(config, [9; 32], start, UNIX);
    ep.listen(ours.clone());
    ep.join(theirs, start);
    let mut now = start;
    let candidate = theirs.token().body.connection_info.ice_candidates[0].address;
    let mut heard = std::collections::HashSet::new();
    while let Some(t) = ep.poll_transmit() {
        assert_eq!(t.destination, candidate);
    }
    // Chunks: [source selector, time step, len, bytes...]
    let mut rest = data;
    while rest.len() >= 3 {
        let (src, step, len) = (rest[0], rest[1], usize::from(rest[2]));
        rest = &rest[3..];
        let len = len.min(rest.len());
        let (dgram, tail) = rest.split_at(len);
        rest = tail;
        now += Duration::from_millis(u64::from(step) * 37);
        let from: std::net::SocketAddr = format!("198.18.{}.{}:{}", src % 4, src / 4 + 1, 4433 + u16::from(src % 3)).parse().expect("addr");
        ep.handle_datagram(now, from, dgram);
        heard.insert(from);
        while let Some(t) = ep.poll_transmit() {
            assert!(t.destination == candidate || heard.contains(&t.destination), "sent to {}", t.destination);
        }
        if ep.poll_timeout().is_some_and(|t| t <= now) {
            ep.handle_timeout(now);
        }
        while ep.poll_event().is_some() {}
        assert!(ep.attempt_count() <= max);
    }
});
