//! The STUN decoder every datagram meets first. A message that parses must
//! survive an integrity check with any key, and a message rebuilt from its
//! ICE attributes must parse back to the same values.
#![no_main]

use convoke_node::stun::{Class, Message, MessageBuilder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Message::parse(data) else { return };
    let _ = m.verify_integrity(b"fuzz-key");
    let mut b = MessageBuilder::new(m.class, m.method, m.transaction_id);
    if let Some(u) = m.username {
        b.username(u);
    }
    if let Some(p) = m.priority {
        b.priority(p);
    }
    if let Some(t) = m.ice_controlling {
        b.ice_controlling(t);
    }
    if m.use_candidate {
        b.use_candidate();
    }
    if let Some(a) = m.mapped_address {
        b.xor_mapped_address(a);
    }
    if let (Class::Error, Some(code)) = (m.class, m.error_code) {
        b.error_code(code, "x");
    }
    let bytes = b.finish(Some(b"k"), true);
    let again = Message::parse(&bytes).expect("rebuilt message parses");
    assert_eq!((again.username, again.priority, again.ice_controlling), (m.username, m.priority, m.ice_controlling));
    assert_eq!(again.mapped_address, m.mapped_address);
    assert!(again.verify_integrity(b"k"));
});
