//! The overlay's wire decoder: any bytes give a message or an error, never
//! a panic; a decoded message encodes to bytes that decode to it again.
#![no_main]

use convoke_overlay::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::<u32>::decode(data) {
        let again = Message::<u32>::decode(&m.encode()).expect("re-encoding decodes");
        assert_eq!(again, m);
    }
    let _ = Message::<[u8; 32]>::decode(data);
});
