//! The overlay's wire decoders: any bytes give a message (or a card, as a
//! super-peer's announcement carries it) or an error, never a panic; a
//! decoded one encodes to bytes that decode to it again.
#![no_main]

use convoke_overlay::{Card, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::<u32>::decode(data) {
        let again = Message::<u32>::decode(&m.encode()).expect("re-encoding decodes");
        assert_eq!(again, m);
    }
    let _ = Message::<[u8; 32]>::decode(data);
    if let Ok(c) = Card::<u32>::from_bytes(data) {
        assert_eq!(Card::<u32>::from_bytes(&c.to_bytes()), Ok(c));
    }
});
