//! The session's reliable, ordered byte stream: send buffer with
//! retransmission bookkeeping, and receive reassembly with flow control.

use std::collections::{BTreeMap, VecDeque};

use super::ranges::RangeSet;

/// Stream limit each side may assume before the peer's first MAX_DATA.
pub const INITIAL_WINDOW: u64 = 64 * 1024;

/// Our sending half.
#[derive(Debug, Default)]
pub(crate) struct SendStream {
    /// Bytes from `base` on: sent but unacknowledged, then unsent.
    buf: VecDeque<u8>,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// First offset never sent.
    next: u64,
    /// Acknowledged ranges above `base`.
    acked: RangeSet,
    /// Ranges to send again, oldest loss first.
    lost: RangeSet,
    /// Where the stream ends, once the application finished it.
    fin: Option<u64>,
    fin_sent: bool,
    fin_acked: bool,
    /// The peer's flow-control limit.
    pub peer_max: u64,
}

/// A chunk chosen for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub offset: u64,
    pub len: u32,
    pub fin: bool,
}

impl SendStream {
    pub fn new() -> Self {
        Self { peer_max: INITIAL_WINDOW, ..Self::default() }
    }

    /// Offset one past the last byte written.
    fn end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Buffers as much of `data` as fits under `capacity` bytes held.
    pub fn write(&mut self, data: &[u8], capacity: usize) -> usize {
        if self.fin.is_some() {
            return 0;
        }
        let n = data.len().min(capacity.saturating_sub(self.buf.len()));
        self.buf.extend(&data[..n]);
        n
    }

    /// Ends the stream after what was written.
    pub fn finish(&mut self) {
        if self.fin.is_none() {
            self.fin = Some(self.end());
        }
    }

    /// Whether everything written, and the end, was acknowledged.
    pub fn is_done(&self) -> bool {
        self.fin_acked && self.buf.is_empty()
    }

    /// Whether the stream was finished by us.
    pub fn is_finished(&self) -> bool {
        self.fin.is_some()
    }

    /// Bytes held (unacknowledged and unsent).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// One past the highest offset sent: the flow-control credit this
    /// stream used, and its final size if it is reset.
    pub fn sent_end(&self) -> u64 {
        self.next
    }

    /// Drops what is buffered: the stream was reset.
    pub fn abandon(&mut self) {
        self.base = self.next;
        self.buf = VecDeque::new();
        self.lost = RangeSet::default();
        self.acked = RangeSet::default();
    }

    /// Whether a STREAM frame is waiting to go; new bytes count only with
    /// session `credit`.
    pub fn wants_send(&self, credit: bool) -> bool {
        !self.lost.is_empty()
            || (credit && self.next < self.end() && self.next < self.peer_max)
            || (self.fin == Some(self.next) && !self.fin_sent)
    }

    /// Picks the next chunk of at most `room` bytes: lost data first, then
    /// new data within the peer's limit on this stream and `credit` new
    /// bytes for the session.
    pub fn next_chunk(&mut self, room: usize, credit: u64) -> Option<Chunk> {
        while let Some((s, e)) = self.lost.pop_first() {
            let s = s.max(self.base);
            if s >= e {
                continue;
            }
            // Skip a prefix acknowledged meanwhile.
            if let Some((_, ack_end)) = self.acked.containing(s) {
                if ack_end < e {
                    self.lost.insert(ack_end, e);
                }
                continue;
            }
            let end = e.min(s + room as u64);
            if end < e {
                self.lost.insert(end, e);
            }
            let fin = self.fin == Some(end);
            return Some(Chunk { offset: s, len: (end - s) as u32, fin });
        }
        let limit = self.end().min(self.peer_max).min(self.next.saturating_add(credit));
        if self.next < limit || (self.fin == Some(self.next) && !self.fin_sent) {
            let s = self.next;
            let end = limit.max(s).min(s + room as u64);
            self.next = end;
            let fin = self.fin == Some(end);
            if fin {
                self.fin_sent = true;
            }
            return Some(Chunk { offset: s, len: (end - s) as u32, fin });
        }
        None
    }

    /// Copies a chunk's bytes to `out`.
    pub fn copy(&self, c: Chunk, out: &mut Vec<u8>) {
        let start = (c.offset - self.base) as usize;
        let (a, b) = self.buf.as_slices();
        let end = start + c.len as usize;
        if end <= a.len() {
            out.extend_from_slice(&a[start..end]);
        } else if start >= a.len() {
            out.extend_from_slice(&b[start - a.len()..end - a.len()]);
        } else {
            out.extend_from_slice(&a[start..]);
            out.extend_from_slice(&b[..end - a.len()]);
        }
    }

    /// A chunk arrived: frees what is acknowledged in order.
    pub fn on_ack(&mut self, c: Chunk) {
        if c.fin {
            self.fin_acked = true;
        }
        self.acked.insert(c.offset, c.offset + u64::from(c.len));
        if let Some((s, e)) = self.acked.containing(self.base)
            && s <= self.base
        {
            let n = (e - self.base) as usize;
            self.buf.drain(..n.min(self.buf.len()));
            self.base = e;
            self.acked.remove_below(e);
        }
    }

    /// A chunk was lost: send it again.
    pub fn on_lost(&mut self, c: Chunk) {
        let end = c.offset + u64::from(c.len);
        if end > self.base {
            self.lost.insert(c.offset.max(self.base), end);
        }
        if c.fin && !self.fin_acked {
            if c.len == 0 {
                // A bare end marker: send it as new again.
                self.fin_sent = false;
            } else {
                // The end rides on the resent range's last byte.
                self.lost.insert(end - 1, end);
            }
        }
    }
}

/// What the peer sent that breaks the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamViolation {
    /// Data beyond the limit we advertised.
    FlowControl,
    /// Data beyond the end, or two different ends.
    FinalSize,
    /// More separate out-of-order pieces than [`MAX_PENDING_PIECES`].
    Fragmented,
}

/// Out-of-order pieces a stream holds at most. Pieces never overlap and
/// touching ones merge, so an honest sender leaves one piece per hole: at
/// most one per lost packet in flight, about 7,000 full-size packets at
/// the largest congestion window (16 MiB). Without the bound, a peer
/// sending one-byte frames at every other offset would make us keep a map
/// entry (about 80 bytes) per two bytes of the window.
pub(crate) const MAX_PENDING_PIECES: usize = 16_384;

/// Our receiving half.
#[derive(Debug, Default)]
pub(crate) struct RecvStream {
    /// In-order bytes the application has not read.
    ready: VecDeque<u8>,
    /// Bytes the application read so far (or dropped, see [`Self::discard`]).
    read: u64,
    /// One past the highest offset received.
    highest: u64,
    /// Out-of-order chunks past `read + ready.len()`.
    pending: BTreeMap<u64, Vec<u8>>,
    fin: Option<u64>,
    /// The limit we advertised.
    pub max_sent: u64,
}

impl RecvStream {
    pub fn new() -> Self {
        Self { max_sent: INITIAL_WINDOW, ..Self::default() }
    }

    fn contiguous(&self) -> u64 {
        self.read + self.ready.len() as u64
    }

    /// Takes a STREAM frame. Returns whether new in-order bytes (or the
    /// end) became readable.
    pub fn on_data(&mut self, offset: u64, data: &[u8], fin: bool) -> Result<bool, StreamViolation> {
        let end = offset + data.len() as u64;
        if end > self.max_sent {
            return Err(StreamViolation::FlowControl);
        }
        self.highest = self.highest.max(end);
        if let Some(f) = self.fin
            && (end > f || (fin && end != f))
        {
            return Err(StreamViolation::FinalSize);
        }
        let mut readable = false;
        if fin && self.fin.is_none() {
            if end < self.contiguous() || self.pending.last_key_value().is_some_and(|(o, d)| o + d.len() as u64 > end) {
                return Err(StreamViolation::FinalSize);
            }
            self.fin = Some(end);
            readable = end == self.contiguous();
        }
        let contig = self.contiguous();
        if end <= contig {
            return Ok(readable);
        }
        if offset <= contig {
            self.ready.extend(&data[(contig - offset) as usize..]);
            // Pull in chunks that now connect.
            loop {
                let c = self.contiguous();
                let Some(entry) = self.pending.first_entry() else { break };
                let o = *entry.key();
                if o > c {
                    break;
                }
                let d = entry.remove();
                let e = o + d.len() as u64;
                if e > c {
                    self.ready.extend(&d[(c - o) as usize..]);
                }
            }
            return Ok(true);
        }
        self.hold(offset, data)?;
        Ok(readable)
    }

    /// Keeps the parts of an out-of-order chunk that no held piece covers
    /// yet: the bytes held never exceed the window, however a peer overlaps
    /// its frames. A part that starts where a piece ends is appended to it
    /// (data arriving in order after a hole stays one piece); any other
    /// part is a new piece, even one that touches the next piece, because
    /// moving a later piece into an earlier one would let a peer sending
    /// backwards make us copy the window again with every frame.
    fn hold(&mut self, offset: u64, data: &[u8]) -> Result<(), StreamViolation> {
        let end = offset + data.len() as u64;
        let mut pos = offset;
        if let Some((&o, d)) = self.pending.range(..=pos).next_back() {
            pos = pos.max(o + d.len() as u64);
        }
        while pos < end {
            let next = self.pending.range(pos..).next().map(|(&o, d)| (o, o + d.len() as u64));
            let stop = next.map_or(end, |(o, _)| o.min(end));
            if stop > pos {
                let gap = &data[(pos - offset) as usize..(stop - offset) as usize];
                let pieces = self.pending.len();
                match self.pending.range_mut(..pos).next_back().filter(|(o, d)| **o + d.len() as u64 == pos) {
                    Some((_, piece)) => piece.extend_from_slice(gap),
                    None if pieces >= MAX_PENDING_PIECES => return Err(StreamViolation::Fragmented),
                    None => {
                        self.pending.insert(pos, gap.to_vec());
                    }
                }
            }
            match next {
                Some((_, e)) => pos = e,
                None => break,
            }
        }
        Ok(())
    }

    /// Reads in-order bytes into `buf`. Returns how many; with `window`,
    /// whether a MAX_DATA update is due.
    pub fn read(&mut self, buf: &mut [u8], window: u64) -> (usize, bool) {
        let n = buf.len().min(self.ready.len());
        let (a, b) = self.ready.as_slices();
        if n <= a.len() {
            buf[..n].copy_from_slice(&a[..n]);
        } else {
            buf[..a.len()].copy_from_slice(a);
            buf[a.len()..n].copy_from_slice(&b[..n - a.len()]);
        }
        self.ready.drain(..n);
        if self.ready.is_empty() && self.ready.capacity() > 64 * 1024 {
            self.ready.shrink_to(0);
        }
        self.read += n as u64;
        (n, self.raise_limit(window))
    }

    /// Raises the advertised limit when half the window was consumed.
    pub fn raise_limit(&mut self, window: u64) -> bool {
        if self.read + window >= self.max_sent + window / 2 {
            self.max_sent = self.read + window;
            return true;
        }
        false
    }

    /// Bytes ready to read.
    pub fn readable(&self) -> usize {
        self.ready.len()
    }

    /// One past the highest offset received.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Whether every byte up to the end arrived (read or not).
    pub fn all_received(&self) -> bool {
        self.fin == Some(self.contiguous())
    }

    /// Drops every byte received and not read, as if read; returns how
    /// many (the application stopped the stream or the peer reset it).
    pub fn discard(&mut self) -> u64 {
        let dropped = self.highest - self.read;
        self.read = self.highest;
        self.ready = VecDeque::new();
        self.pending.clear();
        dropped
    }

    /// The peer reset the stream after `final_size` bytes.
    pub fn on_reset(&mut self, final_size: u64) -> Result<(), StreamViolation> {
        if final_size > self.max_sent {
            return Err(StreamViolation::FlowControl);
        }
        if final_size < self.highest || self.fin.is_some_and(|f| f != final_size) {
            return Err(StreamViolation::FinalSize);
        }
        self.fin = Some(final_size);
        Ok(())
    }

    /// Whether the peer ended the stream and everything was read.
    pub fn is_finished(&self) -> bool {
        self.fin == Some(self.read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(r: &RecvStream) -> usize {
        r.pending.values().map(Vec::len).sum()
    }

    #[test]
    fn overlapping_frames_hold_each_byte_once() {
        // A peer resending the window's bytes in overlapping frames at every
        // offset: what we hold stays within the window, and reads right.
        let window = 64 * 1024;
        let mut r = RecvStream::default();
        r.raise_limit(window);
        let data: Vec<u8> = (0..window).map(|i| (i % 251) as u8).collect();
        for start in (1..window as usize - 1200).step_by(7) {
            r.on_data(start as u64, &data[start..start + 1200], false).expect("within the window");
        }
        assert!(held(&r) < window as usize, "held {} bytes for a {window}-byte window", held(&r));
        assert!(r.pending.len() <= 2, "touching pieces merge: {}", r.pending.len());
        // Frames inside, across and around the held pieces change nothing.
        let before: Vec<(u64, Vec<u8>)> = r.pending.iter().map(|(o, d)| (*o, d.clone())).collect();
        r.on_data(5000, &data[5000..5100], false).expect("inside");
        r.on_data(3, &data[3..60000], false).expect("across");
        assert_eq!(before, r.pending.iter().map(|(o, d)| (*o, d.clone())).collect::<Vec<_>>());
        assert!(r.on_data(0, &data[..1], false).expect("the first byte"));
        let mut out = vec![0u8; window as usize];
        let (n, _) = r.read(&mut out, window);
        assert_eq!(&out[..n], &data[..n]);
        assert!(n >= window as usize - 1200 - 8, "read {n}");
        assert!(r.pending.is_empty());
    }

    #[test]
    fn gaps_fill_between_pieces_and_the_pieces_are_bounded() {
        let mut r = RecvStream::default();
        r.raise_limit(1 << 20);
        r.on_data(10, b"bbbbb", false).expect("within the window");
        r.on_data(20, b"ddddd", false).expect("within the window");
        // Covers both pieces and the gaps around them: only the gaps are
        // added, each appended to the piece it follows when there is one.
        r.on_data(8, b"AAbbbbbCCCCCdddddEE", false).expect("within the window");
        let pieces: Vec<(u64, &[u8])> = r.pending.iter().map(|(o, d)| (*o, d.as_slice())).collect();
        assert_eq!(pieces, vec![(8, &b"AA"[..]), (10, b"bbbbbCCCCC"), (20, b"dddddEE")]);
        assert!(r.on_data(0, b"01234567", false).expect("the start"));
        let mut out = [0u8; 64];
        let (n, _) = r.read(&mut out, 1 << 20);
        assert_eq!(&out[..n], b"01234567AAbbbbbCCCCCdddddEE");
        // One byte at every other offset: refused past the bound, not held.
        let mut r = RecvStream::default();
        r.raise_limit(1 << 20);
        let mut refused = None;
        for k in 0..(MAX_PENDING_PIECES as u64 + 10) {
            if let Err(e) = r.on_data(2 + 2 * k, b"x", false) {
                refused = Some((k, e));
                break;
            }
        }
        assert_eq!(refused, Some((MAX_PENDING_PIECES as u64, StreamViolation::Fragmented)));
    }

    /// A peer sending the window backwards one byte at a time: each frame
    /// is a new piece (no piece is ever copied into another), so the work
    /// stays linear and the piece bound ends it.
    #[test]
    fn data_sent_backwards_is_never_recopied() {
        let mut r = RecvStream::default();
        r.raise_limit(4 << 20);
        r.on_data(2 << 20, &vec![7u8; 2 << 20], false).expect("the upper half");
        let mut k = 0u64;
        let refused = loop {
            k += 1;
            match r.on_data((2 << 20) - k, b"x", false) {
                Ok(_) => assert_eq!(r.pending.get(&(2 << 20)).map(Vec::len), Some(2 << 20), "the upper half moved"),
                Err(e) => break e,
            }
        };
        assert_eq!((k - 1) as usize, MAX_PENDING_PIECES - 1);
        assert_eq!(refused, StreamViolation::Fragmented);
    }

    #[test]
    fn send_chunks_acks_and_losses() {
        let mut s = SendStream::new();
        assert_eq!(s.write(&[7u8; 100], 60), 60);
        s.finish();
        assert_eq!(s.write(b"x", 1000), 0, "nothing after finish");
        let a = s.next_chunk(25, u64::MAX).expect("a");
        let b = s.next_chunk(25, u64::MAX).expect("b");
        let c = s.next_chunk(25, u64::MAX).expect("c");
        assert_eq!((a.offset, a.len, b.offset, c.offset, c.len, c.fin), (0, 25, 25, 50, 10, true));
        assert_eq!(s.next_chunk(25, u64::MAX), None);
        s.on_lost(b);
        s.on_ack(c);
        s.on_ack(a);
        assert_eq!(s.buffered(), 35, "only the prefix is freed");
        let again = s.next_chunk(100, u64::MAX).expect("resend");
        assert_eq!((again.offset, again.len, again.fin), (25, 25, false));
        s.on_ack(again);
        assert!(s.is_done());
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn send_respects_peer_limit() {
        let mut s = SendStream::new();
        s.peer_max = 10;
        s.write(&[1u8; 50], 1000);
        assert_eq!(s.next_chunk(100, u64::MAX).map(|c| c.len), Some(10));
        assert!(!s.wants_send(true));
        s.peer_max = 30;
        assert!(s.wants_send(true));
        assert_eq!(s.next_chunk(100, u64::MAX).map(|c| (c.offset, c.len)), Some((10, 20)));
    }

    #[test]
    fn recv_reassembles_out_of_order() {
        let mut r = RecvStream::new();
        assert_eq!(r.on_data(5, b"fgh", false), Ok(false));
        assert_eq!(r.on_data(8, b"ij", true), Ok(false));
        assert_eq!(r.on_data(0, b"abcdef", false), Ok(true));
        let mut buf = [0u8; 32];
        let (n, _) = r.read(&mut buf, INITIAL_WINDOW);
        assert_eq!(&buf[..n], b"abcdefghij");
        assert!(r.is_finished());
        assert_eq!(r.on_data(10, b"k", false), Err(StreamViolation::FinalSize));
        let mut r = RecvStream::new();
        assert_eq!(r.on_data(INITIAL_WINDOW, b"z", false), Err(StreamViolation::FlowControl));
    }

    #[test]
    fn limit_rises_after_half_a_window() {
        let mut r = RecvStream::new();
        r.on_data(0, &[0u8; 40_000], false).expect("in window");
        let mut buf = vec![0u8; 40_000];
        let (n, due) = r.read(&mut buf[..10_000], INITIAL_WINDOW);
        assert_eq!((n, due), (10_000, false));
        let (_, due) = r.read(&mut buf, INITIAL_WINDOW);
        assert!(due);
        assert_eq!(r.max_sent, 40_000 + INITIAL_WINDOW);
    }
}
