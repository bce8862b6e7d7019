//! The public entry point as a user meets it: any text (whitespace, either
//! prefix, any case) through `decode`, then full validation as an
//! invitation and as an RSVP against a fixed invitation.
#![no_main]

use std::sync::OnceLock;

use convoke_node::identity::Identity;
use convoke_node::token::{self, Candidate, CandidateKind, Invitation, InvitationParams, ReplayGuard, Rsvp, Token};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000;

/// A fixed valid invitation; the fuzzer's RSVPs are checked against it.
fn invitation() -> &'static Invitation {
    static INV: OnceLock<Invitation> = OnceLock::new();
    INV.get_or_init(|| {
        struct Counter(u8);
        impl rand_core::TryRng for Counter {
            type Error = core::convert::Infallible;
            fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
                self.0 = self.0.wrapping_add(1);
                Ok(u32::from(self.0))
            }
            fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
                self.0 = self.0.wrapping_add(1);
                Ok(u64::from(self.0))
            }
            fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
                for b in dst {
                    self.0 = self.0.wrapping_add(1);
                    *b = self.0;
                }
                Ok(())
            }
        }
        impl rand_core::TryCryptoRng for Counter {}
        let id = Identity::from_secret_bytes([42; 32]);
        let params = InvitationParams {
            candidates: Candidate::list([(CandidateKind::Host, "198.18.0.5:4433".parse().expect("addr"))]),
            ..InvitationParams::default()
        };
        let t = Token::new_invitation(&id, params, NOW, &mut Counter(0));
        Invitation::from_token(t, NOW).expect("fixed invitation is valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = Invitation::parse(s, NOW);
    let _ = Rsvp::parse(s, invitation(), NOW, &mut ReplayGuard::with_capacity(4));
    let _ = token::decode(s);
});
