//! The Noise IK handshake once ICE has a path: the invitee's initiation,
//! the inviter's response, retransmissions, and the checks that the peer's
//! key is the one its tokens name (the wire format is in the host's docs).

use std::net::SocketAddr;
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use super::{HANDSHAKE_INIT, HANDSHAKE_RESP, Host, HostEvent, Initiating, Open, PROLOGUE_LABEL, Phase, Session};
use crate::ice::{AttemptId, Binding, State, Transmit};
use crate::identity::PublicKey;
use crate::session::conn::Connection;
use crate::session::noise::{self, Initiator};
use crate::token::CandidateKind;

fn prologue(b: &Binding) -> Vec<u8> {
    let mut p = PROLOGUE_LABEL.to_vec();
    p.extend_from_slice(&b.invitation.0);
    p.extend_from_slice(b.inviter_ufrag.as_bytes());
    p.push(b':');
    p.extend_from_slice(b.invitee_ufrag.as_bytes());
    p
}

impl Host {
    pub(super) fn on_init(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Some((&n, rest)) = data[1..].split_first() else {
            self.stats.dropped += 1;
            return;
        };
        let n = usize::from(n);
        if rest.len() < n + noise::MSG1_LEN {
            self.stats.dropped += 1;
            return;
        }
        let (ufrags, msg1) = rest.split_at(n);
        let Some((inviter, invitee)) = std::str::from_utf8(ufrags).ok().and_then(|u| u.split_once(':')) else {
            self.stats.dropped += 1;
            return;
        };
        let Some(id) = self.endpoint.attempt_by_ufrags(inviter, invitee) else {
            self.stats.dropped += 1;
            return;
        };
        let Some(binding) = self.endpoint.binding(id).filter(|b| b.inviter) else {
            self.stats.dropped += 1;
            return;
        };
        let patience = self.handshake_patience();
        let socket = self.endpoint.socket_of(id).unwrap_or_default();
        if let Some(s) = self.sessions.get_mut(&id) {
            // A repeated initiation: the invitee missed our answer. Its
            // confirming packet can only start once this one arrives, so
            // the wait starts again — up to twice the first one, or
            // someone replaying message 1 could hold the attempt for ever.
            if let Phase::Open(o) = &mut s.phase
                && let Some(r) = &o.resend
                && msg1[..32] == r.0
            {
                self.transmits.push_back(Transmit::new(o.conn.remote, r.1.clone(), socket));
                if o.unconfirmed.is_some() {
                    o.unconfirmed = Some((now + patience).min(o.established + 2 * patience));
                }
            }
            return;
        }
        if self.endpoint.state(id) != Some(State::Connected) {
            // ICE has not told us yet (our nomination's answer may be in
            // flight); keep the latest initiation until it does.
            self.early_init.insert(id, (from, data.to_vec()));
            return;
        }
        let local_index = self.new_index();
        let mut payload_ok = None;
        let answer = noise::respond(*self.static_secret, &prologue(&binding), msg1, &mut self.rng, |rs, payload| {
            if payload.len() == 36 {
                let mut pk = [0u8; 32];
                pk.copy_from_slice(&payload[..32]);
                let idx = u32::from_be_bytes([payload[32], payload[33], payload[34], payload[35]]);
                payload_ok = Some((PublicKey(pk), idx, *rs));
            }
            local_index.to_be_bytes().to_vec()
        });
        self.erase_past();
        let Ok((keys, _, msg2)) = answer else {
            self.stats.dropped += 1;
            return;
        };
        let Some((peer, remote_index, rs)) = payload_ok else {
            self.stats.dropped += 1;
            return;
        };
        if peer.to_x25519() != Some(rs) || binding.remote_peer.is_some_and(|k| k != peer) {
            self.stats.refused_peers += 1;
            self.endpoint.close(id);
            self.events.push_back(HostEvent::HandshakeFailed {
                session: id,
                reason: "the peer's key is not the one its tokens name",
            });
            return;
        }
        let remote = self.endpoint.selected(id).unwrap_or(from);
        let mut out = vec![HANDSHAKE_RESP];
        out.extend_from_slice(&remote_index.to_be_bytes());
        out.extend_from_slice(&msg2);
        let e: [u8; 32] = msg1[..32].try_into().expect("32 bytes");
        let socket = self.endpoint.socket_of(id).unwrap_or_default();
        self.transmits.push_back(Transmit::new(remote, out.clone(), socket));
        let conn =
            Connection::new(&self.config.session, false, remote, remote_index, *keys.send, *keys.recv, None, now);
        self.establish(id, local_index, conn, peer, &binding, now, Some(Box::new((e, out))));
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn establish(
        &mut self,
        id: AttemptId,
        local_index: u32,
        conn: Connection,
        peer: PublicKey,
        binding: &Binding,
        now: Instant,
        resend: Option<Box<([u8; 32], Vec<u8>)>>,
    ) {
        let remote = conn.remote;
        // A relayed path, whichever side offered it to the engine (the
        // other learnt it from the checks, as peer-reflexive).
        let remote_kind = if self.relay_of(remote).is_some() {
            CandidateKind::Relay
        } else {
            binding.remote_kind.unwrap_or(CandidateKind::Prflx)
        };
        let mut conn = conn;
        // The responder (answering with `resend`) reports the session once
        // the initiator's first authenticated packet arrives: a message 1
        // can be replayed by anyone, a packet under the session's keys
        // cannot. It waits as long as the initiator keeps retrying. The
        // initiator sends that packet at once.
        let unconfirmed = resend.is_some().then(|| now + self.handshake_patience());
        if unconfirmed.is_none() {
            conn.ping();
        }
        let open = Open {
            conn,
            peer,
            remote_kind,
            via: binding.via,
            inviter: binding.inviter,
            established: now,
            resend,
            unconfirmed,
        };
        self.by_index.insert(local_index, id);
        self.awaiting_init.remove(&id);
        self.sessions.insert(id, Session { local_index, phase: Phase::Open(Box::new(open)) });
        self.active.insert(id);
        if unconfirmed.is_some() {
            return;
        }
        self.stats.established += 1;
        self.events.push_back(HostEvent::Established {
            session: id,
            peer,
            remote,
            remote_kind,
            via: binding.via,
            inviter: binding.inviter,
        });
    }

    /// Fast key erasure after drawing an ephemeral key: the generator is
    /// replaced by one seeded from its own output, so whoever reads this
    /// memory later cannot seek the old one back to past ephemerals (a
    /// ChaCha20 generator can seek anywhere in its stream) and break
    /// forward secrecy. Unlike drawing each ephemeral from the OS, this
    /// keeps the simulator's seeded runs reproducible.
    fn erase_past(&mut self) {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        self.rng = ChaCha20Rng::from_seed(seed);
        seed.fill(0);
    }

    pub(super) fn new_index(&mut self) -> u32 {
        loop {
            let i = self.rng.next_u32();
            if !self.by_index.contains_key(&i) {
                return i;
            }
        }
    }

    pub(super) fn on_resp(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if data.len() < 5 + noise::MSG2_LEN {
            self.stats.dropped += 1;
            return;
        }
        let index = u32::from_be_bytes([data[1], data[2], data[3], data[4]]);
        let Some(&id) = self.by_index.get(&index) else {
            self.stats.dropped += 1;
            return;
        };
        let Some(Session { phase: Phase::Initiating(i), .. }) = self.sessions.get_mut(&id) else {
            self.stats.dropped += 1; // a repeated answer
            return;
        };
        if from != i.remote {
            self.stats.dropped += 1;
            return;
        }
        // A forged answer leaves the handshake state as it was.
        let Ok((keys, payload)) = i.init.finish(&data[5..]) else {
            self.stats.dropped += 1;
            return;
        };
        let Ok(idx) = <[u8; 4]>::try_from(payload.as_slice()) else {
            self.stats.dropped += 1;
            return;
        };
        // Karn: only an unrepeated exchange measures the round trip.
        let rtt = (i.tries == 1).then(|| now.saturating_duration_since(i.first_sent));
        let remote = i.remote;
        let Some(binding) = self.endpoint.binding(id) else { return };
        let Some(peer) = binding.remote_peer else { return };
        self.by_index.remove(&index);
        self.sessions.remove(&id);
        let conn = Connection::new(
            &self.config.session,
            true,
            remote,
            u32::from_be_bytes(idx),
            *keys.send,
            *keys.recv,
            rtt,
            now,
        );
        self.establish(id, index, conn, peer, &binding, now, None);
    }

    /// Invitee: sends the handshake initiation on the new path.
    pub(super) fn initiate(&mut self, id: AttemptId, remote: SocketAddr, now: Instant) {
        let Some(binding) = self.endpoint.binding(id).filter(|b| !b.inviter) else { return };
        let Some(rs) = binding.remote_peer.and_then(|k| k.to_x25519()) else {
            self.events
                .push_back(HostEvent::HandshakeFailed { session: id, reason: "the invitation names no usable key" });
            return;
        };
        let local_index = self.new_index();
        let mut payload = self.public.0.to_vec();
        payload.extend_from_slice(&local_index.to_be_bytes());
        let started = Initiator::start(*self.static_secret, rs, &prologue(&binding), &payload, &mut self.rng);
        self.erase_past();
        let Ok((init, msg1)) = started else {
            self.events.push_back(HostEvent::HandshakeFailed { session: id, reason: "the invitation's key is weak" });
            return;
        };
        let ufrags = format!("{}:{}", binding.inviter_ufrag, binding.invitee_ufrag);
        let mut msg = vec![HANDSHAKE_INIT, ufrags.len() as u8];
        msg.extend_from_slice(ufrags.as_bytes());
        msg.extend_from_slice(&msg1);
        let socket = self.endpoint.socket_of(id).unwrap_or_default();
        self.transmits.push_back(Transmit::new(remote, msg.clone(), socket));
        let next_retry = now + self.config.handshake_rto;
        self.by_index.insert(local_index, id);
        self.sessions.insert(
            id,
            Session {
                local_index,
                phase: Phase::Initiating(Initiating {
                    init: Box::new(init),
                    msg,
                    remote,
                    first_sent: now,
                    next_retry,
                    tries: 1,
                }),
            },
        );
        self.reschedule(id);
    }
}
