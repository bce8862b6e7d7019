//! The `scpi://` decoder: base64url, DEFLATE (with its bomb limit), JSON and
//! structure checks. Bytes are fed as the body after the prefix, so the
//! fuzzer spends its time past the prefix check. A token that decodes must
//! re-encode and decode to itself.
#![no_main]

use convoke_node::token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(t) = token::decode(&format!("{}{s}", token::TEXT_PREFIX)) {
        assert_eq!(token::decode(&t.encode_text()).as_ref(), Ok(&t));
        assert_eq!(token::decode(&t.encode_compact()).as_ref(), Ok(&t));
        let _ = token::validate_standalone(&t, 1_800_000_000);
    }
});
