//! The member's stream framing: whatever bytes a peer sends on a session,
//! split anywhere, decode to the same messages and the same verdict as when
//! they arrive whole, and never panic; whole frames read back re-encode to
//! the bytes they came from.
#![no_main]

use convoke_node::member::framing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut whole = data.to_vec();
    let (msgs, bad) = framing::decode(&mut whole);
    let mut split = data[..cut].to_vec();
    let (mut got, first_bad) = framing::decode(&mut split);
    if first_bad.is_none() {
        split.extend_from_slice(&data[cut..]);
        let (rest, bad2) = framing::decode(&mut split);
        got.extend(rest);
        assert_eq!(bad.is_some(), bad2.is_some());
        assert_eq!(split, whole, "the same partial frame is left over");
    }
    if first_bad.is_none() {
        assert_eq!(got, msgs);
    }
    let mut again = Vec::new();
    for m in &msgs {
        framing::encode(m, &mut again);
    }
    let mut back = again.clone();
    let (re, none) = framing::decode(&mut back);
    assert!(none.is_none() && back.is_empty());
    assert_eq!(re, msgs);
});
