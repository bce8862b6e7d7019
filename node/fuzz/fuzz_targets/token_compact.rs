//! The compact binary decoder, fed raw bytes (what follows `scpc:` once
//! base64url is undone). A token that decodes must round-trip through both
//! encodings.
#![no_main]

use convoke_node::token::{self, Token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Token::decode_compact_bytes(data) {
        assert_eq!(Token::decode_compact_bytes(&t.encode_compact_bytes()).as_ref(), Ok(&t));
        assert_eq!(token::decode(&t.encode_text()).as_ref(), Ok(&t));
        let _ = token::validate_standalone(&t, 1_800_000_000);
    }
});
