//! The frames inside an encrypted session packet, and the variable-length
//! integers they use (QUIC's, RFC 9000 §16).
//!
//! A packet's plaintext is a sequence of frames:
//!
//! | type        | body                                                    |
//! |-------------|---------------------------------------------------------|
//! | `0x00` PAD  | the rest of the packet is padding                       |
//! | `0x01` PING | nothing; asks for an acknowledgement                    |
//! | `0x02` ACK  | largest, delay (µs), range count, first range, (gap, len)… |
//! | `0x04` RESET_STREAM | stream, code, final size: the sender gives up   |
//! | `0x05` STOP_SENDING | stream, code: the receiver wants no more         |
//! | `0x08`/`0x09` STREAM | stream, offset, length, bytes; `0x09` also ends it |
//! | `0x10` MAX_DATA | the session's limit: stream bytes the peer may send in all |
//! | `0x11` MAX_STREAM_DATA | stream, the highest offset the peer may send on it |
//! | `0x12`/`0x13` MAX_STREAMS | bidirectional / unidirectional streams the peer may open in all |
//! | `0x1c` CLOSE | code, reason length, reason (UTF-8)                     |
//! | `0x30` DATAGRAM | length, bytes (unreliable)                          |
//!
//! Stream identifiers follow RFC 9000 §2.1: bit 0 names the side that
//! opened the stream (0 the handshake's initiator, 1 the responder), bit 1
//! says whether it is unidirectional. Stream 0 is open on both sides from
//! the start (the session's own stream).
//!
//! ACK ranges follow RFC 9000 §19.3.1: each range is `gap`, `len` counted
//! downwards from the previous range's smallest packet number.

use std::ops::RangeInclusive;

/// Largest value a varint can hold (2^62 − 1).
pub const VARINT_MAX: u64 = (1 << 62) - 1;
/// ACK ranges carried in one frame at most (older ones are left out).
pub const MAX_ACK_RANGES: usize = 32;

/// A malformed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The packet ended inside a frame.
    #[error("frame truncated")]
    Truncated,
    /// A frame type this version does not know.
    #[error("unknown frame type {0:#x}")]
    UnknownType(u64),
    /// An ACK frame whose ranges go below packet number zero, or too many.
    #[error("invalid ACK ranges")]
    BadAck,
    /// A stream frame beyond 2^62 bytes.
    #[error("stream offset out of range")]
    BadOffset,
    /// A MAX_STREAMS frame above 2^60 streams (RFC 9000 §19.11).
    #[error("stream count out of range")]
    BadStreamCount,
}

/// The most streams of one kind a side may open (their identifiers must
/// fit a varint: RFC 9000 §4.6).
pub const MAX_STREAM_COUNT: u64 = 1 << 60;

/// One decoded frame, borrowing its bytes from the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Asks for an acknowledgement.
    Ping,
    /// Acknowledges packets.
    Ack(Ack),
    /// Stream bytes at `offset`; `fin` marks the stream's end after them.
    Stream {
        /// Which stream.
        id: u64,
        /// Where the bytes go in the stream.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
        /// The stream ends after these bytes.
        fin: bool,
    },
    /// Raises the peer's limit on stream bytes sent in all.
    MaxData(u64),
    /// Raises the peer's send limit on one stream.
    MaxStreamData {
        /// Which stream.
        id: u64,
        /// The highest offset the peer may send on it.
        max: u64,
    },
    /// Raises how many streams the peer may open in all.
    MaxStreams {
        /// Bidirectional (or unidirectional) streams.
        bidi: bool,
        /// The count.
        count: u64,
    },
    /// The sender abandons a stream.
    ResetStream {
        /// Which stream.
        id: u64,
        /// Application code.
        code: u64,
        /// How many bytes the stream carried.
        final_size: u64,
    },
    /// The receiver asks the sender to stop.
    StopSending {
        /// Which stream.
        id: u64,
        /// Application code.
        code: u64,
    },
    /// The session ends.
    Close {
        /// Application code (0 = normal).
        code: u64,
        /// Why, for people.
        reason: &'a [u8],
    },
    /// An unreliable datagram.
    Datagram(&'a [u8]),
}

/// Acknowledged packet numbers, newest range first, each inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Ranges in descending order, not overlapping nor adjacent.
    pub ranges: Vec<RangeInclusive<u64>>,
    /// How long the peer held the ACK back, in microseconds.
    pub delay_micros: u64,
}

/// Bytes a varint of `v` takes.
pub fn varint_len(v: u64) -> usize {
    match v {
        0..=63 => 1,
        64..=16_383 => 2,
        16_384..=1_073_741_823 => 4,
        _ => 8,
    }
}

/// Appends `v` as a varint. Values above [`VARINT_MAX`] are clamped.
pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    let v = v.min(VARINT_MAX);
    match varint_len(v) {
        1 => out.push(v as u8),
        2 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// A cursor over a packet's plaintext.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, FrameError> {
        let first = *self.buf.first().ok_or(FrameError::Truncated)?;
        let len = 1usize << (first >> 6);
        let bytes = self.take(len)?;
        let mut v = u64::from(first & 0x3f);
        for b in &bytes[1..] {
            v = (v << 8) | u64::from(*b);
        }
        Ok(v)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| FrameError::Truncated)?)
    }
}

/// Decodes all frames of a plaintext. Stops at the first error.
pub fn parse(buf: &[u8]) -> impl Iterator<Item = Result<Frame<'_>, FrameError>> {
    let mut r = Reader { buf };
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || r.buf.is_empty() {
            return None;
        }
        let out = next_frame(&mut r);
        match out {
            Ok(None) => None,
            Ok(Some(f)) => Some(Ok(f)),
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
}

fn next_frame<'a>(r: &mut Reader<'a>) -> Result<Option<Frame<'a>>, FrameError> {
    let ty = r.varint()?;
    Ok(Some(match ty {
        0x00 => {
            r.buf = &[];
            return Ok(None);
        }
        0x01 => Frame::Ping,
        0x02 => {
            let largest = r.varint()?;
            let delay_micros = r.varint()?;
            let count = r.varint()?;
            if count as usize >= MAX_ACK_RANGES {
                return Err(FrameError::BadAck);
            }
            let first = r.varint()?;
            let mut hi = largest;
            let mut lo = hi.checked_sub(first).ok_or(FrameError::BadAck)?;
            let mut ranges = Vec::with_capacity(count as usize + 1);
            ranges.push(lo..=hi);
            for _ in 0..count {
                let gap = r.varint()?;
                let len = r.varint()?;
                hi = lo.checked_sub(gap + 2).ok_or(FrameError::BadAck)?;
                lo = hi.checked_sub(len).ok_or(FrameError::BadAck)?;
                ranges.push(lo..=hi);
            }
            Frame::Ack(Ack { ranges, delay_micros })
        }
        0x04 => Frame::ResetStream { id: r.varint()?, code: r.varint()?, final_size: r.varint()? },
        0x05 => Frame::StopSending { id: r.varint()?, code: r.varint()? },
        0x08 | 0x09 => {
            let id = r.varint()?;
            let offset = r.varint()?;
            let data = r.bytes()?;
            if offset.checked_add(data.len() as u64).is_none_or(|end| end > VARINT_MAX) {
                return Err(FrameError::BadOffset);
            }
            Frame::Stream { id, offset, data, fin: ty == 0x09 }
        }
        0x10 => Frame::MaxData(r.varint()?),
        0x11 => Frame::MaxStreamData { id: r.varint()?, max: r.varint()? },
        0x12 | 0x13 => {
            let count = r.varint()?;
            if count > MAX_STREAM_COUNT {
                return Err(FrameError::BadStreamCount);
            }
            Frame::MaxStreams { bidi: ty == 0x12, count }
        }
        0x1c => {
            let code = r.varint()?;
            Frame::Close { code, reason: r.bytes()? }
        }
        0x30 => Frame::Datagram(r.bytes()?),
        other => return Err(FrameError::UnknownType(other)),
    }))
}

/// Appends a PING frame.
pub fn put_ping(out: &mut Vec<u8>) {
    out.push(0x01);
}

/// Appends an ACK frame for `ranges` (descending, disjoint, non-adjacent;
/// at most [`MAX_ACK_RANGES`] are written, newest first).
pub fn put_ack(out: &mut Vec<u8>, ranges: &[RangeInclusive<u64>], delay_micros: u64) {
    let Some(first) = ranges.first() else { return };
    let ranges = &ranges[..ranges.len().min(MAX_ACK_RANGES)];
    out.push(0x02);
    put_varint(out, *first.end());
    put_varint(out, delay_micros);
    put_varint(out, ranges.len() as u64 - 1);
    put_varint(out, first.end() - first.start());
    let mut lo = *first.start();
    for r in &ranges[1..] {
        put_varint(out, lo - r.end() - 2);
        put_varint(out, r.end() - r.start());
        lo = *r.start();
    }
}

/// Bytes a STREAM frame header takes for these values.
pub fn stream_header_len(id: u64, offset: u64, len: usize) -> usize {
    1 + varint_len(id) + varint_len(offset) + varint_len(len as u64)
}

/// Appends a STREAM frame's header; its `len` bytes must follow.
pub fn put_stream_header(out: &mut Vec<u8>, id: u64, offset: u64, len: usize, fin: bool) {
    out.push(if fin { 0x09 } else { 0x08 });
    put_varint(out, id);
    put_varint(out, offset);
    put_varint(out, len as u64);
}

/// Appends a STREAM frame.
pub fn put_stream(out: &mut Vec<u8>, id: u64, offset: u64, data: &[u8], fin: bool) {
    put_stream_header(out, id, offset, data.len(), fin);
    out.extend_from_slice(data);
}

/// Appends a MAX_DATA frame.
pub fn put_max_data(out: &mut Vec<u8>, max: u64) {
    out.push(0x10);
    put_varint(out, max);
}

/// Appends a MAX_STREAM_DATA frame.
pub fn put_max_stream_data(out: &mut Vec<u8>, id: u64, max: u64) {
    out.push(0x11);
    put_varint(out, id);
    put_varint(out, max);
}

/// Appends a MAX_STREAMS frame.
pub fn put_max_streams(out: &mut Vec<u8>, bidi: bool, count: u64) {
    out.push(if bidi { 0x12 } else { 0x13 });
    put_varint(out, count);
}

/// Appends a RESET_STREAM frame.
pub fn put_reset_stream(out: &mut Vec<u8>, id: u64, code: u64, final_size: u64) {
    out.push(0x04);
    put_varint(out, id);
    put_varint(out, code);
    put_varint(out, final_size);
}

/// Appends a STOP_SENDING frame.
pub fn put_stop_sending(out: &mut Vec<u8>, id: u64, code: u64) {
    out.push(0x05);
    put_varint(out, id);
    put_varint(out, code);
}

/// Appends a CLOSE frame.
pub fn put_close(out: &mut Vec<u8>, code: u64, reason: &[u8]) {
    out.push(0x1c);
    put_varint(out, code);
    put_varint(out, reason.len() as u64);
    out.extend_from_slice(reason);
}

/// Bytes a DATAGRAM frame takes for a payload of `len`.
pub fn datagram_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Appends a DATAGRAM frame.
pub fn put_datagram(out: &mut Vec<u8>, data: &[u8]) {
    out.push(0x30);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varint_boundaries() {
        for v in [0, 63, 64, 16_383, 16_384, 1_073_741_823, 1_073_741_824, VARINT_MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            assert_eq!(Reader { buf: &out }.varint(), Ok(v));
        }
        // RFC 9000 appendix A.1 examples.
        assert_eq!(Reader { buf: &[0x7b, 0xbd] }.varint(), Ok(15_293));
        assert_eq!(Reader { buf: &[0x9d, 0x7f, 0x3e, 0x7d] }.varint(), Ok(494_878_333));
    }

    #[test]
    fn all_frames_round_trip() {
        let mut out = Vec::new();
        put_ping(&mut out);
        put_ack(&mut out, &[90..=100, 50..=60, 0..=0], 25_000);
        put_stream(&mut out, 6, 1 << 40, b"hello", true);
        put_max_data(&mut out, 4 << 20);
        put_max_stream_data(&mut out, 1 << 20, 77);
        put_max_streams(&mut out, true, 100);
        put_max_streams(&mut out, false, MAX_STREAM_COUNT);
        put_reset_stream(&mut out, 3, 9, 1000);
        put_stop_sending(&mut out, 4, 2);
        put_datagram(&mut out, b"dgram");
        put_close(&mut out, 7, b"bye");
        out.extend_from_slice(&[0, 0, 0]);
        let frames: Vec<_> = parse(&out).collect::<Result<_, _>>().expect("valid");
        assert_eq!(
            frames,
            vec![
                Frame::Ping,
                Frame::Ack(Ack { ranges: vec![90..=100, 50..=60, 0..=0], delay_micros: 25_000 }),
                Frame::Stream { id: 6, offset: 1 << 40, data: b"hello", fin: true },
                Frame::MaxData(4 << 20),
                Frame::MaxStreamData { id: 1 << 20, max: 77 },
                Frame::MaxStreams { bidi: true, count: 100 },
                Frame::MaxStreams { bidi: false, count: MAX_STREAM_COUNT },
                Frame::ResetStream { id: 3, code: 9, final_size: 1000 },
                Frame::StopSending { id: 4, code: 2 },
                Frame::Datagram(b"dgram"),
                Frame::Close { code: 7, reason: b"bye" },
            ]
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(parse(&[0x02, 5, 0, 0, 6]).next(), Some(Err(FrameError::BadAck)));
        assert_eq!(parse(&[0x02, 5, 0, 1, 0, 4, 0]).next(), Some(Err(FrameError::BadAck)));
        assert_eq!(parse(&[0x08, 0, 0, 5, 1]).next(), Some(Err(FrameError::Truncated)));
        let mut many = vec![0x12];
        put_varint(&mut many, MAX_STREAM_COUNT + 1);
        assert_eq!(parse(&many).next(), Some(Err(FrameError::BadStreamCount)));
        assert_eq!(parse(&[0x3f]).next(), Some(Err(FrameError::UnknownType(0x3f))));
        let mut big = vec![0x08, 0];
        put_varint(&mut big, VARINT_MAX);
        put_varint(&mut big, 1);
        big.push(0);
        assert_eq!(parse(&big).next(), Some(Err(FrameError::BadOffset)));
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for f in parse(&bytes) {
                let _ = f;
            }
        }

        /// What decodes re-encodes to the same frame (the fuzz target
        /// `session_frames` checks the same on its corpus).
        #[test]
        fn decoded_frames_re_encode(ty in prop::sample::select(vec![1u8, 4, 5, 8, 9, 0x10, 0x11, 0x12, 0x13, 0x1c, 0x30]),
                                    body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = vec![ty];
            bytes.extend_from_slice(&body);
            for f in parse(&bytes) {
                let Ok(f) = f else { break };
                let mut out = Vec::new();
                match &f {
                    Frame::Ping => put_ping(&mut out),
                    Frame::Ack(a) => put_ack(&mut out, &a.ranges, a.delay_micros),
                    Frame::Stream { id, offset, data, fin } => put_stream(&mut out, *id, *offset, data, *fin),
                    Frame::MaxData(m) => put_max_data(&mut out, *m),
                    Frame::MaxStreamData { id, max } => put_max_stream_data(&mut out, *id, *max),
                    Frame::MaxStreams { bidi, count } => put_max_streams(&mut out, *bidi, *count),
                    Frame::ResetStream { id, code, final_size } => put_reset_stream(&mut out, *id, *code, *final_size),
                    Frame::StopSending { id, code } => put_stop_sending(&mut out, *id, *code),
                    Frame::Close { code, reason } => put_close(&mut out, *code, reason),
                    Frame::Datagram(d) => put_datagram(&mut out, d),
                }
                prop_assert_eq!(parse(&out).collect::<Vec<_>>(), vec![Ok(f)]);
            }
        }

        #[test]
        fn ack_ranges_round_trip(mut points in proptest::collection::btree_set(0u64..10_000, 1..64)) {
            // Build disjoint, non-adjacent ranges from a set of numbers.
            let mut ranges: Vec<RangeInclusive<u64>> = Vec::new();
            while let Some(p) = points.pop_last() {
                match ranges.last_mut() {
                    Some(r) if *r.start() == p + 1 => *r = p..=*r.end(),
                    _ => ranges.push(p..=p),
                }
            }
            let mut out = Vec::new();
            put_ack(&mut out, &ranges, 3);
            let frames: Vec<_> = parse(&out).collect::<Result<_, _>>().expect("valid");
            ranges.truncate(MAX_ACK_RANGES);
            prop_assert_eq!(frames, vec![Frame::Ack(Ack { ranges, delay_micros: 3 })]);
        }
    }
}
