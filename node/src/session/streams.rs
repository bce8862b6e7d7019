//! Many streams in one session: which exist, who may open more, the
//! session-wide flow control above each stream's own, and the fair order
//! in which they send.
//!
//! The rules are QUIC's (RFC 9000 §2–4), trimmed to what a session between
//! two authenticated peers needs:
//!
//! - **Identifiers.** Bit 0 of a stream's identifier names the side that
//!   opened it (0 the handshake's initiator), bit 1 says whether it is
//!   unidirectional. Stream 0 is open on both sides from the start: the
//!   session's own bidirectional stream, the one the command line and the
//!   member layer use.
//! - **Opening.** A side opens a stream by sending on it; the peer learns of
//!   it (and of every lower identifier of the same kind) from the first
//!   frame. Each side lets the other open [`SessionConfig::max_streams_bidi`]
//!   and [`SessionConfig::max_streams_uni`] at once, raised with MAX_STREAMS
//!   as streams end. Before the peer's first MAX_STREAMS a side may open
//!   none of its own (stream 0 is open already).
//! - **Flow control.** Every stream has its own window
//!   ([`SessionConfig::stream_receive_window`]) and the session has one over
//!   the sum of all streams' highest offsets
//!   ([`SessionConfig::receive_window`]), so one stream the application does
//!   not read cannot hold more than its share, and all of them together no
//!   more than the session's. Both start at 64 KiB (`INITIAL_WINDOW`) and are
//!   raised by MAX_STREAM_DATA and MAX_DATA once the receiver knows the
//!   stream.
//! - **Ending.** A sender finishes a stream (its end is delivered in order
//!   after its bytes) or resets it (RESET_STREAM: the bytes not yet
//!   delivered are dropped, the reader sees the code). A receiver may ask
//!   the sender to stop (STOP_SENDING), which answers with a reset. A stream
//!   is forgotten once both halves ended and the application saw it.
//! - **Fairness.** Streams with bytes to send take turns, one frame each
//!   (round robin), so a bulk stream does not starve a small one.

use std::collections::VecDeque;

use super::conn::SessionConfig;
use super::frame;
use super::stream::{Chunk, INITIAL_WINDOW, RecvStream, SendStream, StreamViolation};

/// A stream's identifier within its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u64);

impl StreamId {
    /// The session's own bidirectional stream, open on both sides from the
    /// start.
    pub const MAIN: StreamId = StreamId(0);

    /// Whether the stream carries bytes one way only.
    pub fn is_uni(self) -> bool {
        self.0 & 2 != 0
    }

    /// Whether the handshake's responder opened it.
    fn by_responder(self) -> bool {
        self.0 & 1 != 0
    }

    /// Its rank among the streams of its kind and opener.
    fn index(self) -> u64 {
        self.0 >> 2
    }

    fn new(by_responder: bool, uni: bool, index: u64) -> StreamId {
        StreamId(index << 2 | u64::from(uni) << 1 | u64::from(by_responder))
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream {}", self.0)
    }
}

/// Why a stream operation did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No such stream: never opened, or it ended and was forgotten.
    #[error("no such stream")]
    Unknown,
    /// The stream carries bytes the other way only.
    #[error("the stream is unidirectional the other way")]
    WrongDirection,
    /// The peer allows no more streams of this kind for now (it raises the
    /// limit as streams end).
    #[error("the peer allows no more streams for now")]
    Limit,
    /// Our half was already finished or reset.
    #[error("the stream was already finished")]
    Finished,
    /// The peer asked us to stop sending, with this code.
    #[error("the peer stopped the stream (code {0})")]
    Stopped(u64),
    /// The peer reset the stream, with this code; its unread bytes are gone.
    #[error("the peer reset the stream (code {0})")]
    Reset(u64),
    /// The session ended.
    #[error("the session is closed")]
    Closed,
}

/// What a sent packet carried that the streams must hear about when it is
/// acknowledged or lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Item {
    /// Stream bytes (and maybe the end).
    Chunk(u64, Chunk),
    /// The session's MAX_DATA.
    MaxData,
    /// MAX_STREAMS for bidirectional (true) or unidirectional streams.
    MaxStreams(bool),
    /// A stream's MAX_STREAM_DATA.
    MaxStreamData(u64),
    /// A stream's RESET_STREAM.
    Reset(u64),
    /// A stream's STOP_SENDING.
    Stop(u64),
}

#[derive(Debug)]
struct SendHalf {
    s: SendStream,
    /// We reset it: code and final size; `acked` once the peer has it.
    reset: Option<(u64, u64)>,
    reset_acked: bool,
    /// The peer's STOP_SENDING code.
    stopped: Option<u64>,
}

impl SendHalf {
    fn new() -> Self {
        Self { s: SendStream::new(), reset: None, reset_acked: false, stopped: None }
    }

    fn done(&self) -> bool {
        if self.reset.is_some() { self.reset_acked } else { self.s.is_done() }
    }
}

#[derive(Debug)]
struct RecvHalf {
    r: RecvStream,
    /// The peer reset it: code and final size.
    reset: Option<(u64, u64)>,
    /// The application read the reset (or asked the peer to stop).
    reset_seen: bool,
    /// We asked the peer to stop, with this code: bytes that still arrive
    /// are counted and dropped.
    stopping: Option<u64>,
}

impl RecvHalf {
    fn new(window: u64) -> Self {
        let mut r = RecvStream::new();
        r.raise_limit(window);
        Self { r, reset: None, reset_seen: false, stopping: None }
    }

    fn done(&self) -> bool {
        if self.reset.is_some() {
            self.reset_seen
        } else if self.stopping.is_some() {
            self.r.all_received()
        } else {
            self.r.is_finished()
        }
    }
}

#[derive(Debug)]
struct Stream {
    send: Option<SendHalf>,
    recv: Option<RecvHalf>,
    /// In the send queue.
    queued: bool,
    /// Our MAX_STREAM_DATA, RESET_STREAM or STOP_SENDING is due.
    max_data_due: bool,
    reset_due: bool,
    stop_due: bool,
}

impl Stream {
    fn new(send: bool, recv: bool, window: u64) -> Self {
        Self {
            send: send.then(SendHalf::new),
            recv: recv.then(|| RecvHalf::new(window)),
            queued: false,
            // Our receive half starts at the initial window: tell the
            // peer the configured one.
            max_data_due: recv && window > INITIAL_WINDOW,
            reset_due: false,
            stop_due: false,
        }
    }

    fn control_due(&self) -> bool {
        self.max_data_due || self.reset_due || self.stop_due
    }
}

/// The open streams, by identifier: a sorted vector of boxes. Sessions
/// mostly hold stream 0 alone, and a `BTreeMap`'s first leaf would cost an
/// idle session some 200 bytes where this costs 16; a lookup is a binary
/// search, and opening or forgetting one of the (at most a few hundred)
/// streams moves 16-byte entries.
#[derive(Debug, Default)]
struct StreamMap(Vec<(u64, Box<Stream>)>);

impl StreamMap {
    fn find(&self, id: &u64) -> Result<usize, usize> {
        self.0.binary_search_by_key(id, |(k, _)| *k)
    }

    fn get(&self, id: &u64) -> Option<&Stream> {
        self.find(id).ok().map(|i| &*self.0[i].1)
    }

    fn get_mut(&mut self, id: &u64) -> Option<&mut Stream> {
        self.find(id).ok().map(|i| &mut *self.0[i].1)
    }

    fn contains_key(&self, id: &u64) -> bool {
        self.find(id).is_ok()
    }

    fn insert(&mut self, id: u64, st: Stream) {
        match self.find(&id) {
            Ok(i) => *self.0[i].1 = st,
            Err(i) => {
                // Stream 0 alone (most sessions) takes one entry, not the
                // four a first push reserves.
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (id, Box::new(st)))
            }
        }
    }

    fn remove(&mut self, id: &u64) {
        if let Ok(i) = self.find(id) {
            self.0.remove(i);
        }
    }

    fn values(&self) -> impl Iterator<Item = &Stream> {
        self.0.iter().map(|(_, s)| &**s)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Stream identifiers in order, without repeats (few at a time).
#[derive(Debug, Default)]
struct IdSet(Vec<u64>);

impl IdSet {
    fn insert(&mut self, id: u64) {
        if let Err(i) = self.0.binary_search(&id) {
            self.0.insert(i, id);
        }
    }

    fn remove(&mut self, id: &u64) {
        if let Ok(i) = self.0.binary_search(id) {
            self.0.remove(i);
        }
    }

    fn pop_first(&mut self) -> Option<u64> {
        if self.0.is_empty() {
            return None;
        }
        let id = self.0.remove(0);
        if self.0.is_empty() {
            // An idle session holds nothing here.
            self.0 = Vec::new();
        }
        Some(id)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A violation of the stream rules by the peer, for the session's CLOSE.
pub(crate) type Violation = &'static str;

fn violation(v: StreamViolation) -> Violation {
    match v {
        StreamViolation::FlowControl => "stream data beyond our limit",
        StreamViolation::FinalSize => "stream data beyond its end",
        StreamViolation::Fragmented => "stream data in too many pieces",
    }
}

/// Kind index: 0 bidirectional, 1 unidirectional.
fn kind(uni: bool) -> usize {
    usize::from(uni)
}

/// All streams of one session.
#[derive(Debug)]
pub(crate) struct Streams {
    /// We sent the handshake's initiation.
    initiator: bool,
    /// Ordered, so every walk over it is deterministic (the simulator
    /// replays runs byte for byte).
    map: StreamMap,
    /// Streams of each kind we opened, and how many the peer allows.
    opened_local: [u64; 2],
    allowed_local: [u64; 2],
    /// Streams of each kind the peer opened, ended, and how many we allow.
    opened_remote: [u64; 2],
    ended_remote: [u64; 2],
    allowed_remote: [u64; 2],
    max_streams_due: [bool; 2],
    /// How many streams of each kind the peer may have open at once.
    limits: [u64; 2],
    /// Streams the peer opened that the application has not accepted.
    incoming: [VecDeque<u64>; 2],
    /// Session flow control, sending: new bytes sent on all streams, and
    /// the peer's limit on them.
    data_sent: u64,
    data_max: u64,
    /// Streams with bytes to send that wait for session credit.
    blocked: Vec<u64>,
    /// Session flow control, receiving: the sum of every stream's highest
    /// offset, what the application consumed, and our advertised limit.
    data_received: u64,
    data_consumed: u64,
    data_max_sent: u64,
    max_data_due: bool,
    /// Streams that may have bytes to send, in turn.
    queue: VecDeque<u64>,
    /// Streams with a control frame due.
    control: IdSet,
    /// Something readable happened (bytes, an end, a reset, a new stream).
    pub readable_changed: bool,
}

impl Streams {
    /// The streams of a new session: stream 0 open both ways.
    pub fn new(config: &SessionConfig, initiator: bool) -> Self {
        let mut s = Self {
            initiator,
            map: StreamMap::default(),
            opened_local: [0; 2],
            allowed_local: [1, 0],
            opened_remote: [0; 2],
            ended_remote: [0; 2],
            allowed_remote: [1, 0],
            max_streams_due: [false; 2],
            limits: [config.max_streams_bidi, config.max_streams_uni],
            incoming: Default::default(),
            data_sent: 0,
            data_max: INITIAL_WINDOW,
            blocked: Vec::new(),
            data_received: 0,
            data_consumed: 0,
            data_max_sent: INITIAL_WINDOW,
            max_data_due: false,
            queue: VecDeque::new(),
            control: IdSet::default(),
            readable_changed: false,
        };
        if initiator {
            // Stream 0 is the initiator's first: the peer allows it.
            s.opened_local[0] = 1;
        } else {
            s.allowed_local[0] = 0;
            s.opened_remote[0] = 1;
        }
        s.insert(config, StreamId::MAIN);
        // Tell the peer our limits in the first packet.
        s.set_allowed_remote();
        s.raise_data_limit(config.receive_window);
        s
    }

    fn insert(&mut self, config: &SessionConfig, id: StreamId) {
        let local = id.by_responder() != self.initiator;
        let (send, recv) = match (id.is_uni(), local) {
            (false, _) => (true, true),
            (true, true) => (true, false),
            (true, false) => (false, true),
        };
        let st = Stream::new(send, recv, config.stream_receive_window);
        if st.max_data_due {
            self.control.insert(id.0);
        }
        self.map.insert(id.0, st);
    }

    fn set_allowed_remote(&mut self) {
        for k in 0..2 {
            let allowed = (self.ended_remote[k] + self.limits[k]).min(frame::MAX_STREAM_COUNT);
            if allowed > self.allowed_remote[k] {
                self.allowed_remote[k] = allowed;
                self.max_streams_due[k] = true;
            }
        }
    }

    /// Raises the session's receive limit when half of `window` was used.
    fn raise_data_limit(&mut self, window: u64) {
        if self.data_consumed + window >= self.data_max_sent + window / 2 {
            self.data_max_sent = self.data_consumed + window;
            self.max_data_due = true;
        }
    }

    fn is_local(&self, id: StreamId) -> bool {
        id.by_responder() != self.initiator
    }

    // ---- the application's side ----

    /// Opens a stream of ours.
    pub fn open(&mut self, config: &SessionConfig, uni: bool) -> Result<StreamId, StreamError> {
        let k = kind(uni);
        if self.opened_local[k] >= self.allowed_local[k] {
            return Err(StreamError::Limit);
        }
        let id = StreamId::new(!self.initiator, uni, self.opened_local[k]);
        self.opened_local[k] += 1;
        self.insert(config, id);
        Ok(id)
    }

    /// How many more streams of a kind we may open now.
    pub fn open_room(&self, uni: bool) -> u64 {
        let k = kind(uni);
        self.allowed_local[k] - self.opened_local[k]
    }

    /// The next stream the peer opened, not yet accepted.
    pub fn accept(&mut self, uni: bool) -> Option<StreamId> {
        self.incoming[kind(uni)].pop_front().map(StreamId)
    }

    fn send_half(&mut self, id: StreamId) -> Result<&mut SendHalf, StreamError> {
        let st = self.map.get_mut(&id.0).ok_or(StreamError::Unknown)?;
        st.send.as_mut().ok_or(StreamError::WrongDirection)
    }

    fn recv_half(&mut self, id: StreamId) -> Result<&mut RecvHalf, StreamError> {
        let st = self.map.get_mut(&id.0).ok_or(StreamError::Unknown)?;
        st.recv.as_mut().ok_or(StreamError::WrongDirection)
    }

    fn enqueue(&mut self, id: u64) {
        if let Some(st) = self.map.get_mut(&id)
            && !st.queued
        {
            st.queued = true;
            self.queue.push_back(id);
        }
    }

    /// Buffers bytes on a stream; returns how many were taken.
    pub fn write(&mut self, config: &SessionConfig, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let h = self.send_half(id)?;
        if let Some(code) = h.stopped {
            return Err(StreamError::Stopped(code));
        }
        if h.reset.is_some() || h.s.is_finished() {
            return Err(StreamError::Finished);
        }
        let n = h.s.write(data, config.send_buffer);
        if n > 0 {
            self.enqueue(id.0);
        }
        Ok(n)
    }

    /// Room in a stream's send buffer (0 once it ended).
    pub fn write_capacity(&self, config: &SessionConfig, id: StreamId) -> usize {
        match self.map.get(&id.0).and_then(|st| st.send.as_ref()) {
            Some(h) if h.reset.is_none() && h.stopped.is_none() && !h.s.is_finished() => {
                config.send_buffer.saturating_sub(h.s.buffered())
            }
            _ => 0,
        }
    }

    /// Ends our half after what was written.
    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        let h = self.send_half(id)?;
        if let Some(code) = h.stopped {
            return Err(StreamError::Stopped(code));
        }
        if h.reset.is_some() || h.s.is_finished() {
            return Err(StreamError::Finished);
        }
        h.s.finish();
        self.enqueue(id.0);
        Ok(())
    }

    /// Abandons our half: bytes not yet delivered are dropped.
    pub fn reset(&mut self, id: StreamId, code: u64) -> Result<(), StreamError> {
        let h = self.send_half(id)?;
        if h.reset.is_some() || h.s.is_done() {
            return Err(StreamError::Finished);
        }
        let final_size = h.s.sent_end();
        h.reset = Some((code, final_size));
        h.s.abandon();
        if let Some(st) = self.map.get_mut(&id.0) {
            st.reset_due = true;
        }
        self.control.insert(id.0);
        Ok(())
    }

    /// Asks the peer to stop sending on a stream; what still arrives is
    /// dropped.
    pub fn stop(&mut self, id: StreamId, code: u64) -> Result<(), StreamError> {
        let h = self.recv_half(id)?;
        if h.stopping.is_some() || h.reset.is_some() || h.r.all_received() {
            // Nothing more will come anyway: just drop what is unread.
            let dropped = h.r.discard();
            h.stopping.get_or_insert(code);
            h.reset_seen = true;
            self.data_consumed += dropped;
        } else {
            let dropped = h.r.discard();
            h.stopping = Some(code);
            self.data_consumed += dropped;
            if let Some(st) = self.map.get_mut(&id.0) {
                st.stop_due = true;
                st.max_data_due = false;
            }
            self.control.insert(id.0);
        }
        self.forget_if_done(id);
        Ok(())
    }

    /// Reads a stream's bytes in order. `Ok(0)` with [`Self::finished`]
    /// means the end.
    pub fn read(&mut self, config: &SessionConfig, id: StreamId, buf: &mut [u8]) -> Result<usize, StreamError> {
        let h = self.recv_half(id)?;
        if let Some((code, _)) = h.reset {
            h.reset_seen = true;
            self.forget_if_done(id);
            return Err(StreamError::Reset(code));
        }
        if h.stopping.is_some() {
            return Ok(0);
        }
        let (n, due) = h.r.read(buf, config.stream_receive_window);
        self.data_consumed += n as u64;
        if due && let Some(st) = self.map.get_mut(&id.0) {
            st.max_data_due = true;
            self.control.insert(id.0);
        }
        self.raise_data_limit(config.receive_window);
        self.forget_if_done(id);
        Ok(n)
    }

    /// Bytes ready to read on a stream.
    pub fn readable(&self, id: StreamId) -> usize {
        self.map.get(&id.0).and_then(|st| st.recv.as_ref()).map_or(0, |h| h.r.readable())
    }

    /// Bytes ready to read on every stream.
    pub fn readable_total(&self) -> usize {
        self.map.values().filter_map(|st| st.recv.as_ref()).map(|h| h.r.readable()).sum()
    }

    /// Whether the peer ended the stream and all of it was read (a stream
    /// forgotten after it ended counts as ended).
    pub fn finished(&self, id: StreamId) -> bool {
        match self.map.get(&id.0) {
            Some(st) => st.recv.as_ref().is_some_and(|h| h.r.is_finished()),
            None => self.was_opened(id),
        }
    }

    /// Whether everything written on the stream, and its end, was
    /// acknowledged (or it was reset and the peer has the reset).
    pub fn send_done(&self, id: StreamId) -> bool {
        match self.map.get(&id.0) {
            Some(st) => st.send.as_ref().is_some_and(SendHalf::done),
            None => self.was_opened(id),
        }
    }

    fn was_opened(&self, id: StreamId) -> bool {
        let k = kind(id.is_uni());
        let opened = if self.is_local(id) { self.opened_local[k] } else { self.opened_remote[k] };
        id.index() < opened
    }

    /// Streams open now.
    pub fn count(&self) -> usize {
        self.map.len()
    }

    /// Forgets a stream whose halves both ended; lets the peer open
    /// another in its place.
    fn forget_if_done(&mut self, id: StreamId) {
        let Some(st) = self.map.get(&id.0) else { return };
        let done = st.send.as_ref().is_none_or(SendHalf::done) && st.recv.as_ref().is_none_or(RecvHalf::done);
        // Keep it while a control frame of ours is due (a reset must reach
        // the peer); it is forgotten when that frame is acknowledged.
        if !done || st.reset_due || st.stop_due {
            return;
        }
        self.map.remove(&id.0);
        self.control.remove(&id.0);
        if !self.is_local(id) {
            self.ended_remote[kind(id.is_uni())] += 1;
            self.set_allowed_remote();
        }
    }

    // ---- the network's side ----

    /// The stream a peer's frame names, opening the peer's streams up to it.
    /// `Ok(None)`: a stream that ended and was forgotten (a late frame).
    fn peer_stream(&mut self, config: &SessionConfig, id: u64) -> Result<Option<StreamId>, Violation> {
        let id = StreamId(id);
        if self.map.contains_key(&id.0) {
            return Ok(Some(id));
        }
        let k = kind(id.is_uni());
        if self.is_local(id) {
            return if id.index() < self.opened_local[k] { Ok(None) } else { Err("a frame for a stream never opened") };
        }
        if id.index() < self.opened_remote[k] {
            return Ok(None);
        }
        if id.index() >= self.allowed_remote[k] {
            return Err("a stream beyond the limit we allowed");
        }
        while self.opened_remote[k] <= id.index() {
            let new = StreamId::new(self.initiator, id.is_uni(), self.opened_remote[k]);
            self.opened_remote[k] += 1;
            self.insert(config, new);
            self.incoming[k].push_back(new.0);
        }
        self.readable_changed = true;
        Ok(Some(id))
    }

    /// A STREAM frame arrived.
    pub fn on_stream(
        &mut self,
        config: &SessionConfig,
        id: u64,
        offset: u64,
        data: &[u8],
        fin: bool,
    ) -> Result<(), Violation> {
        let Some(id) = self.peer_stream(config, id)? else { return Ok(()) };
        let st = self.map.get_mut(&id.0).expect("a stream just found");
        let h = st.recv.as_mut().ok_or("stream data on a stream we only send on")?;
        if h.reset.is_some() {
            return Ok(());
        }
        let before = h.r.highest();
        let readable = h.r.on_data(offset, data, fin).map_err(violation)?;
        let grown = h.r.highest() - before;
        self.data_received += grown;
        if self.data_received > self.data_max_sent {
            return Err("stream data beyond the session's limit");
        }
        if h.stopping.is_some() {
            let dropped = h.r.discard();
            self.data_consumed += dropped;
            self.raise_data_limit(config.receive_window);
            self.forget_if_done(id);
        } else {
            self.readable_changed |= readable;
        }
        Ok(())
    }

    /// A RESET_STREAM frame arrived.
    pub fn on_reset(&mut self, config: &SessionConfig, id: u64, code: u64, final_size: u64) -> Result<(), Violation> {
        let Some(id) = self.peer_stream(config, id)? else { return Ok(()) };
        let st = self.map.get_mut(&id.0).expect("a stream just found");
        let h = st.recv.as_mut().ok_or("a reset of a stream we only send on")?;
        // A second reset, or one after the application read to the end
        // (a sender that reset while its end was in flight): nothing to do.
        if h.reset.is_some() || h.r.is_finished() {
            return Ok(());
        }
        let before = h.r.highest();
        h.r.on_reset(final_size).map_err(violation)?;
        self.data_received += final_size - before;
        if self.data_received > self.data_max_sent {
            return Err("stream data beyond the session's limit");
        }
        self.data_consumed += h.r.discard() + (final_size - before);
        h.reset = Some((code, final_size));
        st.max_data_due = false;
        if h.stopping.is_some() {
            h.reset_seen = true;
        }
        self.readable_changed = true;
        self.raise_data_limit(config.receive_window);
        self.forget_if_done(id);
        Ok(())
    }

    /// A STOP_SENDING frame arrived: answer with a reset.
    pub fn on_stop(&mut self, config: &SessionConfig, id: u64, code: u64) -> Result<(), Violation> {
        let Some(id) = self.peer_stream(config, id)? else { return Ok(()) };
        let h = self.send_half(id).map_err(|_| "a stop for a stream we only receive on")?;
        h.stopped.get_or_insert(code);
        if h.reset.is_none() && !h.s.is_done() {
            let _ = self.reset(id, code);
        }
        self.readable_changed = true;
        Ok(())
    }

    /// A MAX_STREAM_DATA frame arrived.
    pub fn on_max_stream_data(&mut self, config: &SessionConfig, id: u64, max: u64) -> Result<(), Violation> {
        let Some(id) = self.peer_stream(config, id)? else { return Ok(()) };
        let h = self.send_half(id).map_err(|_| "a limit for a stream we only receive on")?;
        if max > h.s.peer_max {
            h.s.peer_max = max;
            self.enqueue(id.0);
        }
        Ok(())
    }

    /// A MAX_DATA frame arrived.
    pub fn on_max_data(&mut self, max: u64) {
        if max > self.data_max {
            self.data_max = max;
            for id in std::mem::take(&mut self.blocked) {
                self.enqueue(id);
            }
        }
    }

    /// A MAX_STREAMS frame arrived.
    pub fn on_max_streams(&mut self, bidi: bool, count: u64) {
        let k = kind(!bidi);
        self.allowed_local[k] = self.allowed_local[k].max(count);
    }

    /// Whether a frame is waiting to go.
    pub fn wants_send(&mut self) -> bool {
        self.max_data_due || self.max_streams_due.iter().any(|d| *d) || !self.control.is_empty() || self.prune_queue()
    }

    /// Drops streams from the front of the queue that have nothing to send
    /// now; returns whether one that has is left.
    fn prune_queue(&mut self) -> bool {
        let credit = self.data_max > self.data_sent;
        while let Some(&id) = self.queue.front() {
            let Some(st) = self.map.get_mut(&id) else {
                self.queue.pop_front();
                continue;
            };
            let h = st.send.as_ref();
            if h.is_some_and(|h| h.reset.is_none() && h.s.wants_send(credit)) {
                return true;
            }
            if h.is_some_and(|h| h.reset.is_none() && !credit && h.s.wants_send(true)) {
                self.blocked.push(id);
            }
            st.queued = false;
            self.queue.pop_front();
        }
        // An idle session holds nothing here.
        self.queue = VecDeque::new();
        false
    }

    /// Writes due control frames into `out` while they fit in `budget`
    /// bytes; records them in `items`.
    pub fn write_control(&mut self, out: &mut Vec<u8>, budget: usize, items: &mut Vec<Item>) {
        // The largest control frame: type and three 8-byte varints.
        const BIG: usize = 25;
        if self.max_data_due && out.len() + BIG <= budget {
            frame::put_max_data(out, self.data_max_sent);
            self.max_data_due = false;
            items.push(Item::MaxData);
        }
        for k in 0..2 {
            if self.max_streams_due[k] && out.len() + BIG <= budget {
                frame::put_max_streams(out, k == 0, self.allowed_remote[k]);
                self.max_streams_due[k] = false;
                items.push(Item::MaxStreams(k == 0));
            }
        }
        while out.len() + BIG <= budget {
            let Some(id) = self.control.pop_first() else { break };
            let Some(st) = self.map.get_mut(&id) else { continue };
            if st.reset_due {
                let (code, size) = st.send.as_ref().and_then(|h| h.reset).expect("a reset is due on a reset stream");
                frame::put_reset_stream(out, id, code, size);
                st.reset_due = false;
                items.push(Item::Reset(id));
            }
            if st.stop_due && out.len() + BIG <= budget {
                let code = st.recv.as_ref().and_then(|h| h.stopping).expect("a stop is due on a stopping stream");
                frame::put_stop_sending(out, id, code);
                st.stop_due = false;
                items.push(Item::Stop(id));
            }
            if st.max_data_due && out.len() + BIG <= budget {
                if let Some(h) = st.recv.as_ref() {
                    frame::put_max_stream_data(out, id, h.r.max_sent);
                    items.push(Item::MaxStreamData(id));
                }
                st.max_data_due = false;
            }
            if st.control_due() {
                self.control.insert(id);
                break;
            }
        }
    }

    /// Writes stream frames into `out`, streams taking turns (one frame
    /// each per packet) while a frame header fits in `budget`; records them
    /// in `items`.
    pub fn write_streams(&mut self, out: &mut Vec<u8>, budget: usize, items: &mut Vec<Item>) {
        // Header worst case: type, 8-byte identifier, offset and 4-byte length.
        const HEADER: usize = 1 + 8 + 8 + 4;
        let mut turns = self.queue.len();
        while turns > 0 && out.len() + HEADER < budget && self.prune_queue() {
            turns -= 1;
            let id = self.queue.pop_front().expect("a stream pruned into place");
            let room = budget - out.len() - HEADER;
            let credit = self.data_max - self.data_sent;
            let st = self.map.get_mut(&id).expect("queued streams exist");
            let h = st.send.as_mut().expect("queued streams send");
            let before = h.s.sent_end();
            if let Some(c) = h.s.next_chunk(room, credit) {
                frame::put_stream_header(out, id, c.offset, c.len as usize, c.fin);
                h.s.copy(c, out);
                self.data_sent += h.s.sent_end() - before;
                items.push(Item::Chunk(id, c));
            }
            // Its turn is over: to the back of the queue if it has more.
            st.queued = false;
            self.enqueue(id);
        }
    }

    /// A packet carrying `item` was acknowledged.
    pub fn on_acked(&mut self, item: Item) {
        match item {
            Item::Chunk(id, c) => {
                if let Some(h) = self.map.get_mut(&id).and_then(|st| st.send.as_mut()) {
                    if h.reset.is_none() {
                        h.s.on_ack(c);
                    }
                    self.forget_if_done(StreamId(id));
                }
            }
            Item::Reset(id) => {
                if let Some(h) = self.map.get_mut(&id).and_then(|st| st.send.as_mut()) {
                    h.reset_acked = true;
                    self.forget_if_done(StreamId(id));
                }
            }
            Item::Stop(id) => self.forget_if_done(StreamId(id)),
            Item::MaxData | Item::MaxStreams(_) | Item::MaxStreamData(_) => {}
        }
    }

    /// A packet carrying `item` was lost: what still matters goes again.
    pub fn on_lost(&mut self, item: Item) {
        match item {
            Item::Chunk(id, c) => {
                if let Some(h) = self.map.get_mut(&id).and_then(|st| st.send.as_mut())
                    && h.reset.is_none()
                {
                    h.s.on_lost(c);
                    self.enqueue(id);
                }
            }
            Item::MaxData => self.max_data_due = true,
            Item::MaxStreams(bidi) => self.max_streams_due[kind(!bidi)] = true,
            Item::MaxStreamData(id) => {
                if let Some(st) = self.map.get_mut(&id)
                    && st.recv.as_ref().is_some_and(|h| h.reset.is_none() && h.stopping.is_none())
                {
                    st.max_data_due = true;
                    self.control.insert(id);
                }
            }
            Item::Reset(id) => {
                if let Some(st) = self.map.get_mut(&id)
                    && st.send.as_ref().is_some_and(|h| !h.reset_acked)
                {
                    st.reset_due = true;
                    self.control.insert(id);
                }
            }
            Item::Stop(id) => {
                if let Some(st) = self.map.get_mut(&id)
                    && st.recv.as_ref().is_some_and(|h| h.reset.is_none() && !h.r.all_received())
                {
                    st.stop_due = true;
                    self.control.insert(id);
                } else {
                    // Nothing more will come: the stream may end now.
                    self.forget_if_done(StreamId(id));
                }
            }
        }
    }
}
