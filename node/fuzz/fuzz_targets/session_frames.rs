//! The session's frame decoder: any plaintext must decode to frames or a
//! clean error, never panic; ACK ranges that decode are descending and
//! disjoint.
#![no_main]

use convoke_node::session::frame::{self, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for f in frame::parse(data) {
        let Ok(f) = f else { break };
        if let Frame::Ack(ack) = f {
            assert!(!ack.ranges.is_empty() && ack.ranges.len() <= frame::MAX_ACK_RANGES);
            for w in ack.ranges.windows(2) {
                assert!(w[1].end() + 1 < *w[0].start(), "ranges overlap or touch: {:?}", ack.ranges);
            }
            // What decodes re-encodes to the same ranges.
            let mut out = Vec::new();
            frame::put_ack(&mut out, &ack.ranges, ack.delay_micros);
            let again: Vec<_> = frame::parse(&out).collect();
            assert_eq!(again, vec![Ok(Frame::Ack(ack))]);
        }
    }
});
