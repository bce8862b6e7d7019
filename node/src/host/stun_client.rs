//! The host's STUN client: asking servers where we are seen from, and
//! telling their answers apart from connectivity checks.

use std::net::SocketAddr;
use std::time::Instant;

use rand_core::Rng;

use super::{Host, HostEvent, StunQuery};
use crate::nat::Observation;

/// Answers kept for one classification round.
const MAX_OBSERVATIONS: usize = 8;
use crate::ice::Transmit;
use crate::stun::{BINDING, Class, Message, MessageBuilder, TransactionId};

impl Host {
    /// Asks a STUN server where it sees us; answered by
    /// [`HostEvent::StunMapped`] or [`HostEvent::StunFailed`].
    ///
    /// Queries made while none is outstanding start a new round; when a
    /// round's last answer is in, the host classifies its NAT from them
    /// ([`crate::nat::classify`]) and reports a change with
    /// [`HostEvent::NatClassified`].
    pub fn query_stun(&mut self, server: SocketAddr, now: Instant) {
        if self.stun.is_empty() {
            self.observations.clear();
            self.stun_order = 0;
        }
        self.stun_order += 1;
        let mut tid = [0u8; 12];
        self.rng.fill_bytes(&mut tid);
        let mut b = MessageBuilder::new(Class::Request, BINDING, TransactionId(tid));
        // Padded to the size of the answer (XOR-MAPPED-ADDRESS for IPv6 +
        // FINGERPRINT, 52 bytes): nodes now answer within 3× the request,
        // but earlier Convoke versions answered only requests at least as
        // large as the answer.
        b.software("convoke stun client; padded to the size of the answer");
        let request = b.finish(None, true);
        self.transmits.push_back(Transmit::main(server, request.clone()));
        self.stun.insert(
            TransactionId(tid),
            StunQuery { server, request, next: now + self.config.stun_rto, tries: 1, order: self.stun_order },
        );
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
            Some(address) => {
                self.events.push_back(HostEvent::StunMapped { server: q.server, address });
                if self.observations.len() < MAX_OBSERVATIONS {
                    let at = self.observations.partition_point(|(o, _)| *o < q.order);
                    self.observations.insert(at, (q.order, Observation { server: q.server, mapped: address }));
                }
            }
            None => self.events.push_back(HostEvent::StunFailed { server: q.server }),
        }
        self.classify_when_done();
        true
    }

    /// Once no query is outstanding, classifies the NAT from the round's
    /// answers and reports it if it changed.
    pub(super) fn classify_when_done(&mut self) {
        if !self.stun.is_empty() {
            return;
        }
        let obs: Vec<Observation> = self.observations.iter().map(|(_, o)| *o).collect();
        let Some(nat) = crate::nat::classify(self.local_port, &self.local_ips, &obs) else { return };
        self.nat_rounds += 1;
        if self.endpoint.nat() != Some(nat) {
            self.endpoint.set_nat(Some(nat));
            self.events.push_back(HostEvent::NatClassified(nat));
        }
    }

    /// Tells the host the port its main socket is bound to and our interface
    /// addresses, which NAT classification compares STUN answers with.
    pub fn set_local_addresses(&mut self, port: Option<u16>, ips: &[std::net::IpAddr]) {
        self.local_port = port;
        self.local_ips = ips.to_vec();
    }

    /// Our NAT as last classified, if the STUN answers could tell.
    pub fn nat(&self) -> Option<crate::token::NatInfo> {
        self.endpoint.nat()
    }

    /// How many rounds of STUN answers classified our NAT so far, whether
    /// or not the classification changed ([`HostEvent::NatClassified`]
    /// says only when it did): a driver that moved learns from this
    /// when [`Host::nat`] describes the new network.
    pub fn nat_rounds(&self) -> u64 {
        self.nat_rounds
    }

    /// Tells the engine whether our router forwards a port to us (see
    /// [`crate::ice::Endpoint::set_port_mapped`]); the driver that asked
    /// for the mapping also offers it through
    /// [`crate::member::LocalCandidates::set_port_mapped`].
    pub fn set_port_mapped(&mut self, mapped: bool) {
        self.endpoint.set_port_mapped(mapped);
    }

    /// Retransmits STUN queries that are due; gives up on a server after
    /// `stun_tries` (RFC 8489 §6.2.1).
    pub(super) fn stun_timeouts(&mut self, now: Instant) {
        // In the order the queries were sent, not the map's: the simulator
        // replays a run only if its datagrams leave in the same order.
        let mut due: Vec<_> = self.stun.iter().filter(|(_, q)| q.next <= now).map(|(t, q)| (q.order, *t)).collect();
        due.sort_unstable();
        for (_, t) in due {
            let Some(q) = self.stun.get_mut(&t) else { continue };
            if q.tries >= self.config.stun_tries {
                let server = q.server;
                self.stun.remove(&t);
                self.events.push_back(HostEvent::StunFailed { server });
                self.classify_when_done();
            } else {
                q.tries += 1;
                q.next = now + self.config.stun_rto * (1 << (q.tries - 1).min(8));
                self.transmits.push_back(Transmit::main(q.server, q.request.clone()));
            }
        }
    }
}
