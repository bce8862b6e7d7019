//! One established session: encrypted packets, acknowledgements, loss
//! recovery, congestion control, the reliable streams ([`super::streams`])
//! and datagrams.
//!
//! Packet on the wire (after the handshake):
//!
//! ```text
//! 0xE3 | epoch u8 | receiver index u32 | packet number u64 | ChaCha20-Poly1305(frames) | tag
//! ```
//!
//! The 14-byte header is the AEAD's associated data; the nonce is the packet
//! number, unique for the session's life, so a rekey (a new epoch) changes
//! the key without resetting it and one replay window covers all epochs.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};

use super::frame::{self, Frame};
use super::noise::TAG;
use super::recovery::{NewReno, Rtt};
use super::replay::ReplayWindow;
use super::streams::{Item, StreamError, StreamId, Streams};

/// First byte of a data packet.
pub const DATA: u8 = 0xE3;
/// Data packet header length.
pub const HEADER: usize = 14;
/// Bytes a data packet adds around its frames.
pub const OVERHEAD: usize = HEADER + TAG;

/// The largest packet number a data packet may carry: the nonce 2^64 - 1
/// is REKEY's (Noise rev. 34 §4.2), never a packet's.
const MAX_PN: u64 = u64::MAX - 1;

/// How long the previous epoch's receive key is kept after a rekey: long
/// enough for packets reordered across it, short enough that a memory read
/// later finds only the current key.
const PREVIOUS_KEY_KEPT: Duration = Duration::from_secs(3);

/// How many epochs ahead of ours a packet may be: a peer that rekeyed
/// more than once while all the packets of the epochs between were lost
/// is still understood. Each step costs a forged packet one more key
/// derivation, so the walk is short.
const MAX_EPOCHS_AHEAD: u8 = 3;

/// The largest datagram payload a session with this largest UDP payload
/// carries (one DATAGRAM frame alone in a packet).
pub fn max_datagram_payload(max_datagram_size: usize) -> usize {
    let room = max_datagram_size.saturating_sub(OVERHEAD);
    // The frame's type byte and a length varint of up to 2 bytes (room < 16 KiB).
    room.saturating_sub(1 + frame::varint_len(room as u64))
}

/// Session tunables. `Default` cites where each number comes from.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest UDP payload sent: 1200 bytes, the size every path must carry
    /// (QUIC's minimum, RFC 9000 §14).
    pub max_datagram_size: usize,
    /// Bytes buffered for sending on each stream (unacknowledged + unsent):
    /// 4 MiB.
    pub send_buffer: usize,
    /// Bytes the peer may send ahead of what we read, on all streams
    /// together: 8 MiB, so one stream at full speed leaves room for others.
    pub receive_window: u64,
    /// Bytes the peer may send ahead of what we read on one stream: 4 MiB
    /// (a single stream's speed on a fast path; quinn's default is 1.25 MB).
    pub stream_receive_window: u64,
    /// Bidirectional streams the peer may have open at once (stream 0
    /// counts as the handshake initiator's): 100, quinn's default.
    pub max_streams_bidi: u64,
    /// Unidirectional streams the peer may have open at once: 100.
    pub max_streams_uni: u64,
    /// How long an acknowledgement may wait: 25 ms (RFC 9000 §18.2).
    pub max_ack_delay: Duration,
    /// Retransmission timeout before any RTT sample: 1 s (RFC 6298 §2.1).
    pub rto_initial: Duration,
    /// Least RTO: 200 ms (Linux's TCP_RTO_MIN; RFC 6298 §2.4 says 1 s,
    /// which modern stacks find too slow).
    pub rto_min: Duration,
    /// Largest RTO: 60 s (RFC 6298 §2.5).
    pub rto_max: Duration,
    /// Consecutive timeouts before the session is declared dead: 8.
    pub max_timeouts: u32,
    /// Initial congestion window in datagrams: 10 (RFC 6928).
    pub initial_window_packets: u64,
    /// Congestion window cap: 16 MiB.
    pub max_window: u64,
    /// Rekey after this many packets in one epoch: 2^32.
    pub rekey_after_packets: u64,
    /// Rekey after this long in one epoch: 120 s (WireGuard's REKEY_AFTER_TIME).
    pub rekey_after: Duration,
    /// Unreliable datagrams queued each way before the oldest is dropped: 64.
    pub datagram_queue: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_datagram_size: 1200,
            send_buffer: 4 << 20,
            receive_window: 8 << 20,
            stream_receive_window: 4 << 20,
            max_streams_bidi: 100,
            max_streams_uni: 100,
            max_ack_delay: Duration::from_millis(25),
            rto_initial: Duration::from_secs(1),
            rto_min: Duration::from_millis(200),
            rto_max: Duration::from_secs(60),
            max_timeouts: 8,
            initial_window_packets: 10,
            max_window: 16 << 20,
            rekey_after_packets: 1 << 32,
            rekey_after: Duration::from_secs(120),
            datagram_queue: 64,
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// We closed it.
    Local,
    /// The peer closed it, with its code and reason.
    Peer {
        /// Application code (0 = normal).
        code: u64,
        /// The peer's words.
        reason: String,
    },
    /// The peer broke the protocol (a frame we cannot accept).
    ProtocolViolation(&'static str),
    /// Nothing was acknowledged through repeated timeouts.
    TimedOut,
    /// The path stopped answering consent checks.
    PathLost,
}

/// Counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Packets sent.
    pub packets_sent: u64,
    /// Packets received and authenticated.
    pub packets_received: u64,
    /// UDP payload bytes sent.
    pub bytes_sent: u64,
    /// UDP payload bytes received (authenticated).
    pub bytes_received: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// Packets dropped: failed authentication, replayed or malformed.
    pub packets_dropped: u64,
    /// Rekeys of our sending key.
    pub rekeys: u64,
}

#[derive(Debug, Clone)]
struct Sent {
    pn: u64,
    time: Instant,
    size: u16,
    /// Still in flight (neither acknowledged nor lost).
    live: bool,
    ack_eliciting: bool,
    /// What the streams must hear about when it is acknowledged or lost
    /// (empty for a packet of ACKs, PINGs and datagrams: no allocation).
    items: Vec<Item>,
}

#[derive(Debug)]
enum Closing {
    Open,
    /// Send a CLOSE frame next, then stop.
    Pending(u64, String),
    Closed,
}

/// One established session. Driven by [`crate::host::Host`].
pub(crate) struct Connection {
    pub remote: SocketAddr,
    remote_index: u32,
    send_key: PacketKey,
    send_epoch: u8,
    send_epoch_packets: u64,
    send_epoch_start: Instant,
    recv_key: PacketKey,
    /// The previous epoch's key, for packets reordered across a rekey,
    /// and when the current epoch began: it is dropped (and wiped)
    /// [`PREVIOUS_KEY_KEPT`] later.
    recv_prev: Option<(PacketKey, Instant)>,
    recv_epoch: u8,
    next_pn: u64,
    replay: ReplayWindow,
    /// Packet numbers received, for ACK frames (the newest ranges).
    received: super::ranges::RangeSet,
    largest_received_at: Option<Instant>,
    unacked_eliciting: u32,
    ack_deadline: Option<Instant>,
    ack_pending: bool,
    sent: VecDeque<Sent>,
    in_flight: u64,
    largest_acked: Option<u64>,
    rtt: Rtt,
    cc: NewReno,
    rto_deadline: Option<Instant>,
    loss_deadline: Option<Instant>,
    timeouts: u32,
    streams: Streams,
    ping_due: bool,
    dgram_out: VecDeque<Vec<u8>>,
    dgram_in: VecDeque<Vec<u8>>,
    closing: Closing,
    /// Why it ended, once it did (reported once by the host).
    pub closed: Option<CloseReason>,
    /// Datagrams since the host last looked (the streams keep their own
    /// flag: see [`Self::take_readable_changed`]).
    readable_changed: bool,
    pub stats: SessionStats,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("remote", &self.remote)
            .field("next_pn", &self.next_pn)
            .finish_non_exhaustive()
    }
}

/// What the parsed header of a data packet says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub epoch: u8,
    pub receiver: u32,
    pub pn: u64,
}

impl Header {
    /// Parses a data packet's header (the first byte was already checked).
    pub fn parse(data: &[u8]) -> Option<Header> {
        if data.len() < OVERHEAD || data[0] != DATA {
            return None;
        }
        Some(Header {
            epoch: data[1],
            receiver: u32::from_be_bytes(data[2..6].try_into().ok()?),
            pn: u64::from_be_bytes(data[6..14].try_into().ok()?),
        })
    }
}

fn nonce(pn: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&pn.to_le_bytes());
    Nonce::assume_unique_for_key(b)
}

/// A packet key: ChaCha20-Poly1305 (RFC 8439) with Noise's nonce layout
/// (4 zero bytes, the 64-bit counter little-endian). The data path uses
/// `ring`'s assembly implementation (so does the handshake, through
/// [`super::noise`]): in profiles of bulk transfer the RustCrypto one spent
/// 75% of the CPU in its AVX2 backend, whose intrinsics did not inline. The
/// raw 32 bytes are kept (ring's expanded key is far larger) and expanded
/// per packet, which costs a copy.
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub(super) struct PacketKey(pub(super) [u8; 32]);

impl PacketKey {
    fn expand(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.0).expect("a 32-byte ChaCha20-Poly1305 key"))
    }

    /// Encrypts `body` in place; returns the tag.
    pub(super) fn seal(&self, pn: u64, header: &[u8], body: &mut [u8]) -> Tag {
        self.expand()
            .seal_in_place_separate_tag(nonce(pn), Aad::from(header), body)
            .expect("ChaCha20-Poly1305 seals any packet size we build")
    }

    /// Decrypts `ct` in place if `tag` verifies.
    pub(super) fn open(&self, pn: u64, header: &[u8], ct: &mut [u8], tag: &[u8]) -> bool {
        let Ok(tag) = Tag::try_from(tag) else { return false };
        self.expand().open_in_place_separate_tag(nonce(pn), Aad::from(header), tag, ct, 0..).is_ok()
    }

    /// Noise REKEY (rev. 34 §4.2): the first 32 bytes of encrypting 32
    /// zeros under nonce 2^64 − 1.
    pub(super) fn rekey(&self) -> PacketKey {
        let mut k = [0u8; 32];
        let _tag = self.seal(u64::MAX, &[], &mut k);
        PacketKey(k)
    }
}

impl Connection {
    /// A session from finished handshake keys.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &SessionConfig,
        initiator: bool,
        remote: SocketAddr,
        remote_index: u32,
        send: [u8; 32],
        recv: [u8; 32],
        rtt: Option<Duration>,
        now: Instant,
    ) -> Self {
        let mut r = Rtt::new();
        if let Some(s) = rtt {
            r.sample(s);
        }
        Self {
            remote,
            remote_index,
            send_key: PacketKey(send),
            send_epoch: 0,
            send_epoch_packets: 0,
            send_epoch_start: now,
            recv_key: PacketKey(recv),
            recv_prev: None,
            recv_epoch: 0,
            next_pn: 0,
            replay: ReplayWindow::default(),
            received: Default::default(),
            largest_received_at: None,
            unacked_eliciting: 0,
            ack_deadline: None,
            ack_pending: false,
            sent: VecDeque::new(),
            in_flight: 0,
            largest_acked: None,
            rtt: r,
            cc: NewReno::new(config.max_datagram_size, config.initial_window_packets, config.max_window),
            rto_deadline: None,
            loss_deadline: None,
            timeouts: 0,
            streams: Streams::new(config, initiator),
            ping_due: false,
            dgram_out: VecDeque::new(),
            dgram_in: VecDeque::new(),
            closing: Closing::Open,
            closed: None,
            readable_changed: false,
            stats: SessionStats::default(),
        }
    }

    /// Whether the session still carries data.
    pub fn is_open(&self) -> bool {
        matches!(self.closing, Closing::Open)
    }

    /// Smoothed round-trip time, once measured.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt.smoothed()
    }

    /// Congestion window in bytes.
    pub fn window(&self) -> u64 {
        self.cc.window
    }

    // ---- application side ----

    /// Whether something readable happened since the last call: stream
    /// bytes, an end, a reset, a new stream, datagrams.
    pub fn take_readable_changed(&mut self) -> bool {
        std::mem::take(&mut self.readable_changed) | std::mem::take(&mut self.streams.readable_changed)
    }

    fn streams_open(&mut self) -> Result<&mut Streams, StreamError> {
        if self.is_open() { Ok(&mut self.streams) } else { Err(StreamError::Closed) }
    }

    /// Opens a stream of ours (bidirectional unless `uni`).
    pub fn open_stream(&mut self, config: &SessionConfig, uni: bool) -> Result<StreamId, StreamError> {
        self.streams_open()?.open(config, uni)
    }

    /// How many more streams of a kind the peer lets us open now.
    pub fn open_room(&self, uni: bool) -> u64 {
        if self.is_open() { self.streams.open_room(uni) } else { 0 }
    }

    /// The next stream the peer opened, not yet accepted.
    pub fn accept_stream(&mut self, uni: bool) -> Option<StreamId> {
        self.streams.accept(uni)
    }

    /// Buffers bytes on a stream; returns how many were taken (0 when full).
    pub fn write(&mut self, config: &SessionConfig, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        self.streams_open()?.write(config, id, data)
    }

    /// Room left in a stream's send buffer.
    pub fn write_capacity(&self, config: &SessionConfig, id: StreamId) -> usize {
        if !self.is_open() {
            return 0;
        }
        self.streams.write_capacity(config, id)
    }

    /// Ends our half of a stream.
    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        self.streams_open()?.finish(id)
    }

    /// Abandons our half of a stream with an application code.
    pub fn reset(&mut self, id: StreamId, code: u64) -> Result<(), StreamError> {
        self.streams_open()?.reset(id, code)
    }

    /// Asks the peer to stop sending on a stream, with an application code.
    pub fn stop(&mut self, id: StreamId, code: u64) -> Result<(), StreamError> {
        self.streams_open()?.stop(id, code)
    }

    /// Whether all we wrote on a stream and its end were acknowledged.
    pub fn send_done(&self, id: StreamId) -> bool {
        self.streams.send_done(id)
    }

    /// Reads a stream's bytes in order (also after the session closed:
    /// what arrived stays readable).
    pub fn read(&mut self, config: &SessionConfig, id: StreamId, buf: &mut [u8]) -> Result<usize, StreamError> {
        self.streams.read(config, id, buf)
    }

    /// Bytes ready to read on a stream.
    pub fn readable(&self, id: StreamId) -> usize {
        self.streams.readable(id)
    }

    /// Bytes ready to read on every stream.
    pub fn readable_total(&self) -> usize {
        self.streams.readable_total()
    }

    /// Whether the peer ended a stream and everything was read.
    pub fn recv_finished(&self, id: StreamId) -> bool {
        self.streams.finished(id)
    }

    /// Streams open now.
    pub fn stream_count(&self) -> usize {
        self.streams.count()
    }

    /// Queues an unreliable datagram (oldest dropped when the queue is
    /// full). Returns false if it cannot fit in one packet.
    pub fn send_datagram(&mut self, config: &SessionConfig, data: &[u8]) -> bool {
        if frame::datagram_len(data.len()) > config.max_datagram_size - OVERHEAD || !self.is_open() {
            return false;
        }
        if self.dgram_out.len() >= config.datagram_queue {
            self.dgram_out.pop_front();
        }
        self.dgram_out.push_back(data.to_vec());
        true
    }

    /// Takes a received datagram.
    pub fn recv_datagram(&mut self) -> Option<Vec<u8>> {
        self.dgram_in.pop_front()
    }

    /// Closes the session, telling the peer.
    pub fn close(&mut self, code: u64, reason: &str) {
        if self.is_open() {
            self.closing = Closing::Pending(code, reason.to_owned());
            self.closed = Some(CloseReason::Local);
        }
    }

    /// Sends an acknowledgement-eliciting packet at the next chance (the
    /// initiator's first packet, which confirms the handshake to the
    /// responder).
    pub fn ping(&mut self) {
        self.ping_due = true;
    }

    fn forget_previous_key(&mut self, now: Instant) {
        if self.recv_prev.as_ref().is_some_and(|(_, since)| now.saturating_duration_since(*since) >= PREVIOUS_KEY_KEPT)
        {
            self.recv_prev = None;
        }
    }

    /// Ends the session without a word (the path is gone).
    pub fn abandon(&mut self, reason: CloseReason) {
        if self.closed.is_none() {
            self.closed = Some(reason);
        }
        self.closing = Closing::Closed;
    }

    // ---- network side ----

    /// Takes an authenticated-looking data packet (the header parsed and
    /// addressed to this session). Returns false if it was dropped.
    pub fn handle_packet(&mut self, config: &SessionConfig, now: Instant, data: &mut [u8]) -> bool {
        let Some(h) = Header::parse(data) else { return false };
        self.forget_previous_key(now);
        // The last nonce belongs to REKEY: no packet is ever sealed with it
        // (see `MAX_PN`), and only a hostile peer would send it.
        if matches!(self.closing, Closing::Closed) || h.pn > MAX_PN || !self.replay.check(h.pn) {
            self.stats.packets_dropped += 1;
            return false;
        }
        let (header, body) = data.split_at_mut(HEADER);
        let (ct, tag) = body.split_at_mut(body.len() - TAG);
        let n = h.pn;
        let ahead = h.epoch.wrapping_sub(self.recv_epoch);
        let opened = if ahead == 0 {
            self.recv_key.open(n, header, ct, tag)
        } else if ahead == u8::MAX {
            self.recv_prev.as_ref().is_some_and(|(k, _)| k.open(n, header, ct, tag))
        } else if ahead <= MAX_EPOCHS_AHEAD {
            // The peer rekeyed once, or several times while every packet
            // of the epochs between was lost: walk the key forward.
            let mut before = self.recv_key.clone();
            let mut target = before.rekey();
            for _ in 1..ahead {
                before = target;
                target = before.rekey();
            }
            let ok = target.open(n, header, ct, tag);
            if ok {
                self.recv_key = target;
                self.recv_prev = Some((before, now));
                self.recv_epoch = h.epoch;
            }
            ok
        } else {
            false
        };
        if !opened {
            self.stats.packets_dropped += 1;
            return false;
        }
        self.replay.commit(h.pn);
        self.stats.packets_received += 1;
        self.stats.bytes_received += (HEADER + ct.len() + TAG) as u64;
        let mut eliciting = false;
        for f in frame::parse(ct) {
            let f = match f {
                Ok(f) => f,
                Err(_) => {
                    self.violation("malformed frame");
                    return true;
                }
            };
            eliciting |= !matches!(f, Frame::Ack(_));
            match f {
                Frame::Ping => {}
                Frame::Ack(ack) => self.on_ack(config, now, &ack),
                Frame::Stream { id, offset, data, fin } => {
                    if let Err(v) = self.streams.on_stream(config, id, offset, data, fin) {
                        return self.violation(v);
                    }
                    // A stream's end is acknowledged at once (as TCP does a
                    // FIN): the peer may be waiting on it to exit.
                    if fin {
                        self.unacked_eliciting = self.unacked_eliciting.max(1);
                        self.ack_deadline = Some(now);
                    }
                }
                Frame::MaxData(m) => self.streams.on_max_data(m),
                Frame::MaxStreamData { id, max } => {
                    if let Err(v) = self.streams.on_max_stream_data(config, id, max) {
                        return self.violation(v);
                    }
                }
                Frame::MaxStreams { bidi, count } => self.streams.on_max_streams(bidi, count),
                Frame::ResetStream { id, code, final_size } => {
                    if let Err(v) = self.streams.on_reset(config, id, code, final_size) {
                        return self.violation(v);
                    }
                }
                Frame::StopSending { id, code } => {
                    if let Err(v) = self.streams.on_stop(config, id, code) {
                        return self.violation(v);
                    }
                }
                Frame::Close { code, reason } => {
                    self.closed.get_or_insert(CloseReason::Peer {
                        code,
                        reason: String::from_utf8_lossy(reason).chars().take(200).collect(),
                    });
                    self.closing = Closing::Closed;
                    return true;
                }
                Frame::Datagram(d) => {
                    if self.dgram_in.len() >= config.datagram_queue {
                        self.dgram_in.pop_front();
                    }
                    self.dgram_in.push_back(d.to_vec());
                    self.readable_changed = true;
                }
            }
        }
        self.received.insert(h.pn, h.pn + 1);
        while self.received.len() > frame::MAX_ACK_RANGES {
            self.received.pop_first();
        }
        if self.received.max() == Some(h.pn) {
            self.largest_received_at = Some(now);
        }
        self.ack_pending = true;
        if eliciting {
            self.unacked_eliciting += 1;
            let d = self.ack_deadline.get_or_insert(now + config.max_ack_delay);
            *d = (*d).min(now + config.max_ack_delay);
        }
        true
    }

    fn violation(&mut self, what: &'static str) -> bool {
        self.closed.get_or_insert(CloseReason::ProtocolViolation(what));
        self.closing = Closing::Pending(1, what.to_owned());
        true
    }

    fn on_ack(&mut self, config: &SessionConfig, now: Instant, ack: &frame::Ack) {
        let Some(largest) = ack.ranges.first().map(|r| *r.end()) else { return };
        if largest >= self.next_pn {
            self.violation("acknowledgement of a packet never sent");
            return;
        }
        let mut newly_acked = false;
        for r in &ack.ranges {
            let start = self.sent.partition_point(|s| s.pn < *r.start());
            for i in start..self.sent.len() {
                let s = &mut self.sent[i];
                if s.pn > *r.end() {
                    break;
                }
                if !s.live {
                    continue;
                }
                s.live = false;
                let items = std::mem::take(&mut s.items);
                let s = s.clone();
                newly_acked = true;
                if s.pn == largest && s.ack_eliciting {
                    let delay = Duration::from_micros(ack.delay_micros).min(config.max_ack_delay);
                    let rtt = now.saturating_duration_since(s.time);
                    self.rtt.sample(if rtt > delay { rtt - delay } else { rtt });
                }
                self.in_flight -= u64::from(s.size);
                self.cc.on_ack(s.time, u64::from(s.size));
                for item in items {
                    self.streams.on_acked(item);
                }
            }
        }
        if self.largest_acked.is_none_or(|l| largest > l) {
            self.largest_acked = Some(largest);
        }
        self.detect_lost(now);
        self.trim_sent();
        if newly_acked {
            self.timeouts = 0;
            self.arm_rto(config, now);
        }
    }

    fn trim_sent(&mut self) {
        while self.sent.front().is_some_and(|s| !s.live) {
            self.sent.pop_front();
        }
        // Nothing in flight: an idle session keeps no room for a burst it
        // had once (a bulk transfer rarely drains it; a request and its
        // answer pay one small allocation).
        if self.sent.is_empty() {
            self.sent = VecDeque::new();
        }
    }

    fn arm_rto(&mut self, config: &SessionConfig, now: Instant) {
        self.rto_deadline = (self.in_flight > 0).then(|| {
            let rto = self.rtt.rto(config.rto_initial, config.rto_min, config.rto_max, config.max_ack_delay);
            now + (rto * (1 << self.timeouts.min(16))).min(config.rto_max)
        });
    }

    /// Packet-threshold (3) and time-threshold loss detection (RFC 9002 §6.1).
    fn detect_lost(&mut self, now: Instant) {
        let Some(largest) = self.largest_acked else { return };
        let delay = self.rtt.loss_delay();
        self.loss_deadline = None;
        let mut lost_sent = None;
        for i in 0..self.sent.len() {
            let s = &self.sent[i];
            if s.pn > largest {
                break;
            }
            if !s.live {
                continue;
            }
            if largest >= s.pn + 3 || s.time + delay <= now {
                lost_sent = Some(s.time);
                self.lose(i);
            } else {
                let at = s.time + delay;
                self.loss_deadline = Some(self.loss_deadline.map_or(at, |d| d.min(at)));
            }
        }
        if let Some(t) = lost_sent {
            self.cc.on_loss(t, now);
        }
    }

    fn lose(&mut self, i: usize) {
        let s = &mut self.sent[i];
        s.live = false;
        let items = std::mem::take(&mut s.items);
        self.in_flight -= u64::from(s.size);
        self.stats.packets_lost += 1;
        if s.ack_eliciting && items.is_empty() {
            self.ping_due = true;
        }
        for item in items {
            self.streams.on_lost(item);
        }
    }

    /// The next deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.closing, Closing::Closed) {
            return None;
        }
        let ack = if self.ack_pending { self.ack_deadline } else { None };
        let forget = self.recv_prev.as_ref().map(|(_, since)| *since + PREVIOUS_KEY_KEPT);
        [ack, self.loss_deadline, self.rto_deadline, forget].into_iter().flatten().min()
    }

    /// Runs timers due at `now`.
    pub fn handle_timeout(&mut self, config: &SessionConfig, now: Instant) {
        self.forget_previous_key(now);
        if self.loss_deadline.is_some_and(|d| d <= now) {
            self.detect_lost(now);
            self.trim_sent();
        }
        if self.rto_deadline.is_some_and(|d| d <= now) {
            self.timeouts += 1;
            if self.timeouts > config.max_timeouts {
                self.abandon(CloseReason::TimedOut);
                return;
            }
            // Everything in flight is presumed lost (RFC 6298 §5.4-5.6).
            let in_flight = self.in_flight;
            for i in 0..self.sent.len() {
                if self.sent[i].live {
                    self.lose(i);
                }
            }
            self.trim_sent();
            self.cc.on_timeout(in_flight, now);
            self.ping_due = true;
            self.rto_deadline = None;
        }
    }

    /// Received packet numbers as inclusive ranges, newest first.
    fn ack_ranges(&self) -> Vec<std::ops::RangeInclusive<u64>> {
        self.received.iter_desc().map(|(s, e)| s..=e - 1).collect()
    }

    /// Whether an ACK must go now.
    fn ack_due(&self, now: Instant) -> bool {
        self.ack_pending && (self.unacked_eliciting >= 2 || self.ack_deadline.is_some_and(|d| d <= now))
    }

    /// Builds the next packet to send, if any.
    pub fn poll_transmit(&mut self, config: &SessionConfig, now: Instant) -> Option<Vec<u8>> {
        let mtu = config.max_datagram_size;
        let mut plain = Vec::with_capacity(mtu);
        let mut items = Vec::new();
        let mut eliciting = false;
        // Out of packet numbers (2^64 - 1 sent): the session ends rather
        // than reuse a nonce.
        if self.next_pn > MAX_PN {
            self.abandon(CloseReason::ProtocolViolation("packet numbers exhausted"));
            return None;
        }
        match std::mem::replace(&mut self.closing, Closing::Open) {
            Closing::Open => {}
            Closing::Closed => {
                self.closing = Closing::Closed;
                return None;
            }
            Closing::Pending(code, reason) => {
                self.closing = Closing::Closed;
                // Acknowledge what arrived: the peer may be waiting on it.
                if self.ack_pending {
                    frame::put_ack(&mut plain, &self.ack_ranges(), 0);
                }
                let reason = &reason.as_bytes()[..reason.len().min(200)];
                frame::put_close(&mut plain, code, reason);
                return Some(self.seal(config, now, plain));
            }
        }
        let room_for_eliciting = self.in_flight + mtu as u64 <= self.cc.window || self.ping_due;
        let has_data = room_for_eliciting && (self.ping_due || !self.dgram_out.is_empty() || self.streams.wants_send());
        if !has_data && !self.ack_due(now) {
            return None;
        }
        let budget = mtu - OVERHEAD;
        if self.ack_pending {
            let delay = self.largest_received_at.map_or(0, |t| now.saturating_duration_since(t).as_micros() as u64);
            frame::put_ack(&mut plain, &self.ack_ranges(), delay);
            self.ack_pending = false;
            self.unacked_eliciting = 0;
            self.ack_deadline = None;
        }
        if has_data {
            self.streams.write_control(&mut plain, budget, &mut items);
            while let Some(d) = self.dgram_out.front() {
                if plain.len() + frame::datagram_len(d.len()) > budget {
                    break;
                }
                frame::put_datagram(&mut plain, d);
                self.dgram_out.pop_front();
                eliciting = true;
            }
            self.streams.write_streams(&mut plain, budget, &mut items);
            debug_assert!(plain.len() <= budget);
            eliciting |= !items.is_empty();
            if self.ping_due {
                self.ping_due = false;
                if !eliciting {
                    frame::put_ping(&mut plain);
                    eliciting = true;
                }
            }
        }
        if plain.is_empty() {
            return None;
        }
        let pn = self.next_pn;
        let out = self.seal(config, now, plain);
        if eliciting {
            let size = out.len() as u16;
            self.sent.push_back(Sent { pn, time: now, size, live: true, ack_eliciting: true, items });
            self.in_flight += u64::from(size);
            if self.rto_deadline.is_none() {
                self.arm_rto(config, now);
            }
        }
        Some(out)
    }

    pub(super) fn seal(&mut self, config: &SessionConfig, now: Instant, plain: Vec<u8>) -> Vec<u8> {
        if self.send_epoch_packets >= config.rekey_after_packets
            || now.saturating_duration_since(self.send_epoch_start) >= config.rekey_after
        {
            self.send_key = self.send_key.rekey();
            self.send_epoch = self.send_epoch.wrapping_add(1);
            self.send_epoch_packets = 0;
            self.send_epoch_start = now;
            self.stats.rekeys += 1;
        }
        let pn = self.next_pn;
        self.next_pn = pn.saturating_add(1);
        self.send_epoch_packets += 1;
        let mut out = Vec::with_capacity(HEADER + plain.len() + TAG);
        out.push(DATA);
        out.push(self.send_epoch);
        out.extend_from_slice(&self.remote_index.to_be_bytes());
        out.extend_from_slice(&pn.to_be_bytes());
        out.extend_from_slice(&plain);
        let (header, body) = out.split_at_mut(HEADER);
        let tag = self.send_key.seal(pn, header, body);
        out.extend_from_slice(tag.as_ref());
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += out.len() as u64;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(now: Instant) -> (Connection, Connection) {
        let cfg = SessionConfig::default();
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let a = Connection::new(&cfg, true, addr, 2, [1; 32], [2; 32], None, now);
        let b = Connection::new(&cfg, false, addr, 1, [2; 32], [1; 32], None, now);
        (a, b)
    }

    fn ping(a: &mut Connection, pn: u64, now: Instant) -> Vec<u8> {
        a.next_pn = pn;
        let mut plain = Vec::new();
        frame::put_ping(&mut plain);
        a.seal(&SessionConfig::default(), now, plain)
    }

    /// A peer holding the keys seals a packet with the last packet number
    /// (REKEY's nonce): dropped, not a panic, and the session goes on.
    #[test]
    fn the_last_packet_number_is_refused_and_never_sent() {
        let now = Instant::now();
        let cfg = SessionConfig::default();
        let (mut a, mut b) = pair(now);
        assert!(b.handle_packet(&cfg, now, &mut ping(&mut a, 5, now)), "an ordinary packet opens");
        assert!(!b.handle_packet(&cfg, now, &mut ping(&mut a, u64::MAX, now)));
        assert_eq!(b.stats.packets_dropped, 1);
        assert!(b.handle_packet(&cfg, now, &mut ping(&mut a, 6, now)), "the session goes on");
        // Our own numbers run out: the session ends instead of sealing
        // with REKEY's nonce.
        a.next_pn = MAX_PN + 1;
        a.ping_due = true;
        assert!(a.poll_transmit(&cfg, now).is_none());
        assert_eq!(a.closed, Some(CloseReason::ProtocolViolation("packet numbers exhausted")));
    }

    /// Packets reordered across a rekey still open for a moment; then the
    /// old key is gone (and wiped), and so are its stragglers.
    #[test]
    fn the_previous_epoch_key_is_kept_briefly() {
        fn assert_wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        assert_wiped_on_drop::<PacketKey>();
        let now = Instant::now();
        let cfg = SessionConfig { rekey_after_packets: 2, ..SessionConfig::default() };
        let (mut a, mut b) = pair(now);
        let mut sealed = Vec::new();
        for _ in 0..3 {
            let mut plain = Vec::new();
            frame::put_ping(&mut plain);
            sealed.push(a.seal(&cfg, now, plain));
        }
        assert_eq!((sealed[0][1], sealed[1][1], sealed[2][1]), (0, 0, 1), "epochs");
        assert!(b.handle_packet(&cfg, now, &mut sealed[2]), "the new epoch");
        assert!(b.handle_packet(&cfg, now + Duration::from_secs(1), &mut sealed[0]), "reordered, in time");
        // An idle session wakes up to forget it.
        let wake = b.poll_timeout().expect("a timer");
        assert!(wake <= now + PREVIOUS_KEY_KEPT, "{:?}", wake - now);
        let mut t = wake;
        for _ in 0..64 {
            b.handle_timeout(&cfg, t);
            while b.poll_transmit(&cfg, t).is_some() {}
            if b.recv_prev.is_none() {
                break;
            }
            t = b.poll_timeout().expect("a timer while the key is kept").max(t);
        }
        assert!(b.recv_prev.is_none(), "forgotten by its timer");
        assert!(!b.handle_packet(&cfg, now + PREVIOUS_KEY_KEPT, &mut sealed[1]), "the old key is gone");
    }

    /// Both ends rekeyed while every packet of the epoch between was lost:
    /// the receiver walks its key forward (a bounded number of epochs) and
    /// the session goes on; too far ahead is refused without a change.
    #[test]
    fn a_lost_epoch_does_not_end_the_session() {
        let now = Instant::now();
        let cfg = SessionConfig { rekey_after_packets: 1, ..SessionConfig::default() };
        let (mut a, mut b) = pair(now);
        let mut sealed: Vec<Vec<u8>> = (0..8)
            .map(|_| {
                let mut plain = Vec::new();
                frame::put_ping(&mut plain);
                a.seal(&cfg, now, plain)
            })
            .collect();
        assert_eq!(sealed.iter().map(|p| p[1]).collect::<Vec<_>>(), (0..8).collect::<Vec<u8>>(), "one epoch each");
        assert!(b.handle_packet(&cfg, now, &mut sealed[0]));
        // Epoch 1 lost entirely; epoch 2 opens, and so does a straggler of 1.
        assert!(b.handle_packet(&cfg, now, &mut sealed[2]), "two epochs ahead");
        assert!(b.handle_packet(&cfg, now, &mut sealed[1]), "the epoch before, reordered");
        // Epochs 3..=6 lost: 7 is four ahead, past the walk's bound.
        assert!(!b.handle_packet(&cfg, now, &mut sealed[7]));
        assert_eq!(b.recv_epoch, 2, "a refused packet changes nothing");
        assert!(b.handle_packet(&cfg, now, &mut sealed[5]), "three ahead");
        assert!(b.handle_packet(&cfg, now, &mut sealed[6]));
        assert!(b.handle_packet(&cfg, now, &mut sealed[7]));
    }

    /// The packet cipher (ring) against snow's default ChaCha20-Poly1305
    /// (RustCrypto): the same algorithm with the same nonce layout.
    #[test]
    fn packet_key_matches_an_independent_chacha20_poly1305() {
        use snow::resolvers::CryptoResolver;
        let key = [7u8; 32];
        let mut reference = snow::resolvers::DefaultResolver
            .resolve_cipher(&snow::params::CipherChoice::ChaChaPoly)
            .expect("ChaChaPoly");
        reference.set(&key);
        let mut body = b"the same bytes either way".to_vec();
        let mut expected = vec![0u8; body.len() + TAG];
        reference.encrypt(42, b"header", &body, &mut expected);
        let tag = PacketKey(key).seal(42, b"header", &mut body);
        body.extend_from_slice(tag.as_ref());
        assert_eq!(body, expected);
        let (ct, tag) = body.split_at_mut(expected.len() - TAG);
        assert!(!PacketKey(key).open(42, b"other header", &mut ct.to_vec(), tag));
        assert!(PacketKey(key).open(42, b"header", ct, tag));
        assert_eq!(ct, b"the same bytes either way");
    }
}
