//! The host's STUN client: asking servers where we are seen from, and
//! telling their answers apart from connectivity checks.

use std::net::SocketAddr;
use std::time::Instant;

use rand_core::Rng;

use super::{Host, HostEvent, StunQuery};
use crate::ice::Transmit;
use crate::stun::{BINDING, Class, Message, MessageBuilder, TransactionId};

impl Host {
    /// Asks a STUN server where it sees us; answered by
    /// [`HostEvent::StunMapped`] or [`HostEvent::StunFailed`].
    pub fn query_stun(&mut self, server: SocketAddr, now: Instant) {
        let mut tid = [0u8; 12];
        self.rng.fill_bytes(&mut tid);
        let mut b = MessageBuilder::new(Class::Request, BINDING, TransactionId(tid));
        // Padded so the answer (XOR-MAPPED-ADDRESS for IPv6 + FINGERPRINT,
        // 52 bytes) is no larger: Convoke nodes do not amplify.
        b.software("convoke stun client; padded to the size of the answer");
        let request = b.finish(None, true);
        self.transmits.push_back(Transmit { destination: server, contents: request.clone() });
        self.stun.insert(TransactionId(tid), StunQuery { server, request, next: now + self.config.stun_rto, tries: 1 });
    }

    pub(super) fn stun_answer(&mut self, from: SocketAddr, data: &[u8]) -> bool {
        let Ok(msg) = Message::parse(data) else { return false };
        if msg.class != Class::Success || !self.stun.contains_key(&msg.transaction_id) {
            return false;
        }
        let Some(q) = self.stun.remove(&msg.transaction_id) else { return false };
        if from != q.server {
            self.stun.insert(msg.transaction_id, q);
            return true;
        }
        match msg.mapped_address {
            Some(address) => self.events.push_back(HostEvent::StunMapped { server: q.server, address }),
            None => self.events.push_back(HostEvent::StunFailed { server: q.server }),
        }
        true
    }

    /// Retransmits STUN queries that are due; gives up on a server after
    /// `stun_tries` (RFC 8489 §6.2.1).
    pub(super) fn stun_timeouts(&mut self, now: Instant) {
        let due: Vec<_> = self.stun.iter().filter(|(_, q)| q.next <= now).map(|(t, _)| *t).collect();
        for t in due {
            let Some(q) = self.stun.get_mut(&t) else { continue };
            if q.tries >= self.config.stun_tries {
                let server = q.server;
                self.stun.remove(&t);
                self.events.push_back(HostEvent::StunFailed { server });
            } else {
                q.tries += 1;
                q.next = now + self.config.stun_rto * (1 << (q.tries - 1).min(8));
                self.transmits.push_back(Transmit { destination: q.server, contents: q.request.clone() });
            }
        }
    }
}
