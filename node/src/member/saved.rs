//! The saved membership's format: the cards a member can rejoin its
//! network through after a restart ([`super::MemberConfig::rejoin`]). The
//! tokio runtime keeps it in a file (`runtime::state`); this module only
//! encodes and decodes, so that the decoder is fuzzed without a runtime.
//!
//! ```json
//! { "version": 1, "peer_id": "12D3KooW…", "saved_at": 1800000000,
//!   "cards": ["scpc:…", "scpc:…"] }
//! ```
//!
//! Reading is strict about the envelope (unknown fields, another version
//! or another identity's file are refused) and lenient about the cards:
//! each is checked as any card is, and the expired or broken ones are
//! dropped and counted.

use serde::{Deserialize, Serialize};

use crate::identity::PeerId;
use crate::token::Invitation;

/// Most cards kept: a member holds 5 neighbours and 30 passive cards.
pub const MAX_CARDS: usize = 64;
/// Largest saved membership read: [`MAX_CARDS`] tokens of the largest size
/// a token may have, and room for the rest.
pub const MAX_BYTES: usize = MAX_CARDS * crate::token::limits::MAX_INPUT + 4096;
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    version: u32,
    peer_id: String,
    saved_at: u64,
    cards: Vec<String>,
    /// Our own cards still answered (absent in files from before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    own: Vec<String>,
}

/// What a saved membership held.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The cards still valid now, in the order saved (neighbours first).
    pub cards: Vec<Invitation>,
    /// Cards that have expired, no longer verify, are our own or are
    /// beyond [`MAX_CARDS`] (dropped).
    pub dropped: usize,
    /// When it was written (unix seconds).
    pub saved_at: u64,
    /// Our own cards, valid and signed by us.
    pub own: Vec<Invitation>,
}

/// Most of our own cards kept.
pub const MAX_OWN: usize = 8;

/// `peer`'s membership: the first [`MAX_CARDS`] of `cards` and the last
/// [`MAX_OWN`] of `own`, as pretty JSON.
pub fn encode(peer: PeerId, cards: &[Invitation], own: &[Invitation], unix_now: u64) -> String {
    let text = |c: &Invitation| c.token().encode_compact();
    let saved = Saved {
        version: VERSION,
        peer_id: peer.to_string(),
        saved_at: unix_now,
        cards: cards.iter().take(MAX_CARDS).map(text).collect(),
        own: own[own.len().saturating_sub(MAX_OWN)..].iter().map(text).collect(),
    };
    serde_json::to_string_pretty(&saved).expect("plain data serializes")
}

/// Reads `peer`'s saved membership, keeping the cards valid at `unix_now`.
/// The error says what is wrong, for a person.
pub fn decode(text: &str, peer: PeerId, unix_now: u64) -> Result<Loaded, String> {
    if text.len() > MAX_BYTES {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    let saved: Saved = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if saved.version != VERSION {
        return Err(format!("version {} (this convoke reads {VERSION})", saved.version));
    }
    if saved.peer_id != peer.to_string() {
        return Err(format!("it belongs to {}, not to {peer}", printable_id(&saved.peer_id)));
    }
    let total = saved.cards.len();
    let cards: Vec<Invitation> = saved
        .cards
        .iter()
        .take(MAX_CARDS)
        .filter_map(|t| Invitation::parse(t, unix_now).ok())
        .filter(|c| c.inviter() != peer)
        .collect();
    let own = saved
        .own
        .iter()
        .take(MAX_OWN)
        .filter_map(|t| Invitation::parse(t, unix_now).ok())
        .filter(|c| c.inviter() == peer)
        .collect();
    Ok(Loaded { dropped: total - cards.len(), cards, saved_at: saved.saved_at, own })
}

/// A peer id from a file, cut short and stripped of anything but the
/// base58 alphabet before it goes into an error message.
fn printable_id(s: &str) -> String {
    s.chars().filter(char::is_ascii_alphanumeric).take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    /// The fuzz target's seed: two valid cards and an expired one, for the
    /// identity of seed [7; 32], at the token vectors' `now`.
    const SEED: &str = include_str!("../../tests/vectors/saved-membership.json");

    #[test]
    fn the_seed_reads_two_cards_and_drops_the_expired_one() {
        let me = Identity::from_secret_bytes([7; 32]).peer_id();
        let l = decode(SEED, me, 1_800_000_000).expect("reads");
        assert_eq!((l.cards.len(), l.dropped, l.saved_at), (2, 1, 1_799_990_000));
        let other = Identity::from_secret_bytes([8; 32]).peer_id();
        assert!(decode(SEED, other, 1_800_000_000).expect_err("not ours").contains("belongs to"));
        assert!(decode(&SEED.replace("\"version\": 1", "\"version\": 2"), me, 1_800_000_000).is_err());
        assert!(decode(&SEED.replace("\"cards\"", "\"extra\": 1, \"cards\""), me, 1_800_000_000).is_err());
    }
}
