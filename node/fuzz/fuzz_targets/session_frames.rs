//! The session's frame decoder: any plaintext must decode to frames or a
//! clean error, never panic; ACK ranges that decode are descending and
//! disjoint; every frame that decodes re-encodes to bytes that decode to
//! the same frame.
#![no_main]

use convoke_node::session::frame::{self, Frame};
use libfuzzer_sys::fuzz_target;

fn encode(f: &Frame<'_>, out: &mut Vec<u8>) {
    match f {
        Frame::Ping => frame::put_ping(out),
        Frame::Ack(ack) => frame::put_ack(out, &ack.ranges, ack.delay_micros),
        Frame::Stream { id, offset, data, fin } => frame::put_stream(out, *id, *offset, data, *fin),
        Frame::MaxData(m) => frame::put_max_data(out, *m),
        Frame::MaxStreamData { id, max } => frame::put_max_stream_data(out, *id, *max),
        Frame::MaxStreams { bidi, count } => frame::put_max_streams(out, *bidi, *count),
        Frame::ResetStream { id, code, final_size } => frame::put_reset_stream(out, *id, *code, *final_size),
        Frame::StopSending { id, code } => frame::put_stop_sending(out, *id, *code),
        Frame::Close { code, reason } => frame::put_close(out, *code, reason),
        Frame::Datagram(d) => frame::put_datagram(out, d),
    }
}

fuzz_target!(|data: &[u8]| {
    for f in frame::parse(data) {
        let Ok(f) = f else { break };
        if let Frame::Ack(ack) = &f {
            assert!(!ack.ranges.is_empty() && ack.ranges.len() <= frame::MAX_ACK_RANGES);
            for w in ack.ranges.windows(2) {
                assert!(w[1].end() + 1 < *w[0].start(), "ranges overlap or touch: {:?}", ack.ranges);
            }
        }
        // What decodes re-encodes to the same frame.
        let mut out = Vec::new();
        encode(&f, &mut out);
        let again: Vec<_> = frame::parse(&out).collect();
        assert_eq!(again, vec![Ok(f)]);
    }
});
