//! The saved membership's decoder (what a restarted member reads from its
//! state file): any text is read or refused with a reason, never a panic;
//! what it reads holds at most MAX_CARDS valid cards and never our own,
//! and writing it again reads back the same cards.
#![no_main]

use std::sync::OnceLock;

use convoke_node::identity::{Identity, PeerId};
use convoke_node::member::saved::{self, MAX_CARDS};
use libfuzzer_sys::fuzz_target;

/// The token vectors' `now` (node/tests/vectors/manifest.json): the seed's
/// cards are valid then.
const UNIX: u64 = 1_800_000_000;

fn me() -> PeerId {
    static ME: OnceLock<PeerId> = OnceLock::new();
    *ME.get_or_init(|| Identity::from_secret_bytes([7; 32]).peer_id())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(loaded) = saved::decode(text, me(), UNIX) else { return };
    assert!(loaded.cards.len() <= MAX_CARDS);
    assert!(loaded.cards.iter().all(|c| c.inviter() != me()), "our own card came back");
    assert!(loaded.own.iter().all(|c| c.inviter() == me()), "someone else's card passed as ours");
    let again = saved::encode(me(), &loaded.cards, &loaded.own, loaded.saved_at);
    let back = saved::decode(&again, me(), UNIX).expect("what we write reads back");
    assert_eq!(back.dropped, 0);
    assert_eq!(back.own.len(), loaded.own.len());
    assert_eq!(
        back.cards.iter().map(|c| c.token().body.token_id).collect::<Vec<_>>(),
        loaded.cards.iter().map(|c| c.token().body.token_id).collect::<Vec<_>>()
    );
});
