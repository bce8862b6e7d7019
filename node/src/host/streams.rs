//! The open sessions, for the application: streams (stream 0, the
//! session's own, and as many more as the peer allows), datagrams and what
//! we know of each session; and data packets arriving for them.

use std::time::Instant;

use super::{Host, HostEvent, Open, Phase, Session, SessionInfo, open_mut};
use crate::ice::AttemptId;
use crate::session::conn;
use crate::session::{SessionConfig, StreamError, StreamId};

impl Host {
    pub(super) fn open_ref(&self, id: AttemptId) -> Option<&Open> {
        match &self.sessions.get(&id)?.phase {
            Phase::Open(o) => Some(o),
            Phase::Initiating(_) => None,
        }
    }

    /// Runs `f` on an open session's connection and marks the session
    /// active (it may have something to send).
    fn with_conn<T>(
        &mut self,
        id: AttemptId,
        f: impl FnOnce(&mut conn::Connection, &SessionConfig) -> Result<T, StreamError>,
    ) -> Result<T, StreamError> {
        let cfg = &self.config.session;
        let o = open_mut(&mut self.sessions, id).ok_or(StreamError::Closed)?;
        let out = f(&mut o.conn, cfg);
        self.active.insert(id);
        out
    }

    // ---- stream 0, the session's own ----

    /// Writes bytes on the session's own stream (stream 0); returns how
    /// many were taken.
    pub fn write(&mut self, id: AttemptId, data: &[u8]) -> usize {
        self.write_stream(id, StreamId::MAIN, data).unwrap_or(0)
    }

    /// Room in the send buffer of the session's own stream.
    pub fn write_capacity(&self, id: AttemptId) -> usize {
        self.stream_write_capacity(id, StreamId::MAIN)
    }

    /// Ends our half of the session's own stream.
    pub fn finish(&mut self, id: AttemptId) {
        let _ = self.finish_stream(id, StreamId::MAIN);
    }

    /// Reads the session's own stream in order.
    pub fn read(&mut self, id: AttemptId, buf: &mut [u8]) -> usize {
        self.read_stream(id, StreamId::MAIN, buf).unwrap_or(0)
    }

    /// Bytes ready to read on the session's own stream.
    pub fn readable(&self, id: AttemptId) -> usize {
        self.stream_readable(id, StreamId::MAIN)
    }

    /// Whether the peer ended the session's own stream and all of it was
    /// read.
    pub fn recv_finished(&self, id: AttemptId) -> bool {
        self.stream_finished(id, StreamId::MAIN)
    }

    /// Whether everything we wrote on the session's own stream, and its
    /// end, was acknowledged.
    pub fn send_done(&self, id: AttemptId) -> bool {
        self.stream_send_done(id, StreamId::MAIN)
    }

    // ---- every stream ----

    /// Opens a stream of ours: bidirectional, or `uni`directional (we
    /// send, the peer reads). [`StreamError::Limit`] until the peer allows
    /// more (it does as its streams end).
    pub fn open_stream(&mut self, id: AttemptId, uni: bool) -> Result<StreamId, StreamError> {
        self.with_conn(id, |c, cfg| c.open_stream(cfg, uni))
    }

    /// How many more streams of a kind the peer lets us open now.
    pub fn stream_open_room(&self, id: AttemptId, uni: bool) -> u64 {
        self.open_ref(id).map_or(0, |o| o.conn.open_room(uni))
    }

    /// The next stream the peer opened that we have not taken yet. A new
    /// stream comes with [`HostEvent::Readable`].
    pub fn accept_stream(&mut self, id: AttemptId, uni: bool) -> Option<StreamId> {
        open_mut(&mut self.sessions, id)?.conn.accept_stream(uni)
    }

    /// Writes bytes on a stream; returns how many were taken (0 when its
    /// buffer is full).
    pub fn write_stream(&mut self, id: AttemptId, stream: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        self.with_conn(id, |c, cfg| c.write(cfg, stream, data))
    }

    /// Room in a stream's send buffer.
    pub fn stream_write_capacity(&self, id: AttemptId, stream: StreamId) -> usize {
        self.open_ref(id).map_or(0, |o| o.conn.write_capacity(&self.config.session, stream))
    }

    /// Ends our half of a stream after what was written.
    pub fn finish_stream(&mut self, id: AttemptId, stream: StreamId) -> Result<(), StreamError> {
        self.with_conn(id, |c, _| c.finish(stream))
    }

    /// Abandons our half of a stream: what the peer has not received is
    /// dropped, and its reader sees `code`.
    pub fn reset_stream(&mut self, id: AttemptId, stream: StreamId, code: u64) -> Result<(), StreamError> {
        self.with_conn(id, |c, _| c.reset(stream, code))
    }

    /// Asks the peer to stop sending on a stream (it resets it with
    /// `code`); what still arrives is dropped.
    pub fn stop_stream(&mut self, id: AttemptId, stream: StreamId, code: u64) -> Result<(), StreamError> {
        self.with_conn(id, |c, _| c.stop(stream, code))
    }

    /// Reads a stream in order: `Ok(0)` when nothing is ready (see
    /// [`Self::stream_finished`] for the end), [`StreamError::Reset`] once if
    /// the peer reset it. What arrived stays readable after the session
    /// closed, until the host forgets it.
    pub fn read_stream(&mut self, id: AttemptId, stream: StreamId, buf: &mut [u8]) -> Result<usize, StreamError> {
        let cfg = &self.config.session;
        let o = open_mut(&mut self.sessions, id).ok_or(StreamError::Closed)?;
        let n = o.conn.read(cfg, stream, buf)?;
        if n > 0 {
            self.active.insert(id);
        }
        Ok(n)
    }

    /// Bytes ready to read on a stream.
    pub fn stream_readable(&self, id: AttemptId, stream: StreamId) -> usize {
        self.open_ref(id).map_or(0, |o| o.conn.readable(stream))
    }

    /// Whether the peer ended a stream and all of it was read.
    pub fn stream_finished(&self, id: AttemptId, stream: StreamId) -> bool {
        self.open_ref(id).is_some_and(|o| o.conn.recv_finished(stream))
    }

    /// Whether everything we wrote on a stream, and its end, was
    /// acknowledged.
    pub fn stream_send_done(&self, id: AttemptId, stream: StreamId) -> bool {
        self.open_ref(id).is_some_and(|o| o.conn.send_done(stream))
    }

    /// Streams open in a session now.
    pub fn stream_count(&self, id: AttemptId) -> usize {
        self.open_ref(id).map_or(0, |o| o.conn.stream_count())
    }

    /// Sends an unreliable datagram. False if too large or no session.
    pub fn send_datagram(&mut self, id: AttemptId, data: &[u8]) -> bool {
        let cfg = &self.config.session;
        let Some(o) = open_mut(&mut self.sessions, id) else { return false };
        let ok = o.conn.send_datagram(cfg, data);
        self.active.insert(id);
        ok
    }

    /// Takes a received datagram.
    pub fn recv_datagram(&mut self, id: AttemptId) -> Option<Vec<u8>> {
        open_mut(&mut self.sessions, id)?.conn.recv_datagram()
    }

    /// What we know of an established session.
    pub fn session(&self, id: AttemptId) -> Option<SessionInfo> {
        let o = self.open_ref(id)?;
        Some(SessionInfo {
            peer: o.peer,
            remote: o.conn.remote,
            remote_kind: o.remote_kind,
            via: o.via,
            inviter: o.inviter,
            established: o.established,
            rtt: o.conn.rtt(),
            window: o.conn.window(),
            stats: o.conn.stats,
            relay: self.relay_of(o.conn.remote),
        })
    }

    /// Established sessions.
    pub fn sessions(&self) -> impl Iterator<Item = AttemptId> + '_ {
        self.sessions
            .iter()
            .filter(|(_, s)| matches!(&s.phase, Phase::Open(o) if o.unconfirmed.is_none()))
            .map(|(id, _)| *id)
    }

    pub(super) fn on_data(&mut self, now: Instant, data: &mut [u8]) {
        let Some(h) = conn::Header::parse(data) else {
            self.stats.dropped += 1;
            return;
        };
        let Some(&id) = self.by_index.get(&h.receiver) else {
            self.stats.dropped += 1;
            return;
        };
        let cfg = &self.config.session;
        let Some(Session { phase: Phase::Open(o), .. }) = self.sessions.get_mut(&id) else {
            self.stats.dropped += 1;
            return;
        };
        if o.conn.handle_packet(cfg, now, data) {
            o.resend = None;
            // The initiator's first authenticated packet: now the session
            // is real (see `Open::unconfirmed`).
            if o.unconfirmed.take().is_some() {
                self.stats.established += 1;
                self.events.push_back(HostEvent::Established {
                    session: id,
                    peer: o.peer,
                    remote: o.conn.remote,
                    remote_kind: o.remote_kind,
                    via: o.via,
                    inviter: o.inviter,
                });
            }
            if o.conn.take_readable_changed() {
                self.events.push_back(HostEvent::Readable { session: id });
            }
            self.active.insert(id);
        }
    }
}
