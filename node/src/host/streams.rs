//! The open sessions, for the application: stream and datagram I/O and
//! what we know of each session; and data packets arriving for them.

use std::time::Instant;

use super::{Host, HostEvent, Open, Phase, Session, SessionInfo, open_mut};
use crate::ice::AttemptId;
use crate::session::conn;

impl Host {
    /// Writes stream bytes; returns how many were taken.
    pub fn write(&mut self, id: AttemptId, data: &[u8]) -> usize {
        let cfg = &self.config.session;
        let Some(o) = open_mut(&mut self.sessions, id) else { return 0 };
        let n = o.conn.write(cfg, data);
        if n > 0 {
            self.active.insert(id);
        }
        n
    }

    pub(super) fn open_ref(&self, id: AttemptId) -> Option<&Open> {
        match &self.sessions.get(&id)?.phase {
            Phase::Open(o) => Some(o),
            Phase::Initiating(_) => None,
        }
    }

    /// Room in a session's send buffer.
    pub fn write_capacity(&self, id: AttemptId) -> usize {
        self.open_ref(id).map_or(0, |o| o.conn.write_capacity(&self.config.session))
    }

    /// Ends our half of a session's stream.
    pub fn finish(&mut self, id: AttemptId) {
        if let Some(o) = open_mut(&mut self.sessions, id) {
            o.conn.finish();
            self.active.insert(id);
        }
    }

    /// Reads stream bytes in order.
    pub fn read(&mut self, id: AttemptId, buf: &mut [u8]) -> usize {
        let cfg = &self.config.session;
        let Some(o) = open_mut(&mut self.sessions, id) else { return 0 };
        let n = o.conn.read(cfg, buf);
        if n > 0 {
            self.active.insert(id);
        }
        n
    }

    /// Stream bytes ready to read.
    pub fn readable(&self, id: AttemptId) -> usize {
        self.open_ref(id).map_or(0, |o| o.conn.readable())
    }

    /// Whether the peer ended its stream and all of it was read.
    pub fn recv_finished(&self, id: AttemptId) -> bool {
        self.open_ref(id).is_some_and(|o| o.conn.recv_finished())
    }

    /// Whether everything we wrote, and our end, was acknowledged.
    pub fn send_done(&self, id: AttemptId) -> bool {
        self.open_ref(id).is_some_and(|o| o.conn.send_done())
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
            if std::mem::take(&mut o.conn.readable_changed) {
                self.events.push_back(HostEvent::Readable { session: id });
            }
            self.active.insert(id);
        }
    }
}
