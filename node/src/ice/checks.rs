//! Connectivity checks: pacing and retransmitting them, answering the
//! peer's (and STUN clients'), learning peer-reflexive candidates,
//! nominating, and consent freshness once connected.

use std::net::SocketAddr;
use std::time::Instant;

use rand_core::Rng;

use super::attempt::{AMPLIFICATION_FACTOR, PairState, Side, UPGRADE_ANSWER_GAP, UPGRADE_PAIRS, Unvalidated, Upgrade};
use super::probe::SPRAY;
use super::*;
use crate::stun::{BINDING, Class, Message, MessageBuilder, TransactionId};
use crate::token::{Candidate, CandidateKind, IceRole, InitialMode};

impl Endpoint {
    /// Advances timers to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Bounded: each due attempt runs once per call.
        let due: Vec<AttemptId> = self.timers.iter().take_while(|(t, _)| *t <= now).map(|(_, id)| *id).collect();
        for id in due {
            self.run_attempt(id, now);
        }
        self.reindex();
    }

    pub(super) fn run_attempt(&mut self, id: AttemptId, now: Instant) {
        self.dirty.push(id);
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        match a.state {
            State::Failed => {}
            State::Connected => {
                if now.saturating_duration_since(a.last_consent) >= self.config.consent_timeout {
                    a.state = State::Failed;
                    self.events.push_back(Event::ConsentLost { attempt: id });
                    self.remove(id);
                } else if a.next_consent.is_some_and(|t| t <= now) {
                    let jitter = 0.8 + 0.4 * (self.rng.next_u32() as f64 / f64::from(u32::MAX));
                    let next = now + self.config.consent_interval.mul_f64(jitter);
                    let sel = a.selected.expect("connected attempt has a selected pair");
                    a.next_consent = Some(next);
                    self.send_check(id, sel, now);
                }
                self.run_upgrade(id, now);
            }
            State::Checking | State::WaitingForRsvp => {
                if a.state == State::Checking && now >= a.window_end && a.heard && now < a.full_window_end {
                    // The early "ask for the RSVP" deadline is for silence;
                    // the peer answered, so the whole window applies.
                    a.window_end = a.full_window_end;
                }
                if a.state == State::Checking && now >= a.window_end {
                    match a.side {
                        Side::Invitee { rsvp_supported: true, .. } => self.enter_waiting(id, now),
                        _ => {
                            let (inviter, via) = (a.side == Side::Inviter, a.via);
                            self.events.push_back(Event::Failed {
                                attempt: id,
                                reason: FailReason::Timeout,
                                inviter,
                                via,
                            });
                            self.remove(id);
                            return;
                        }
                    }
                }
                let a = self.attempts.get_mut(&id).expect("present");
                if now >= a.next_pace
                    && let Some(i) = a.next_check(now)
                {
                    a.next_pace = now + self.config.ta;
                    self.send_check(id, i, now);
                }
                self.run_probe(id, now);
            }
        }
    }

    /// Sends (or retransmits, same transaction id) a check on pair `i`.
    pub(super) fn send_check(&mut self, id: AttemptId, i: usize, now: Instant) {
        let cap = self.config.rto_max;
        let keepalive = self.config.keepalive;
        let a = self.attempts.get_mut(&id).expect("caller checked");
        // Waiting for the RSVP past the checking window: keepalives only,
        // unless a pool is open (then the RSVP round's checks keep ICE's
        // pace, so they connect before probing would start).
        let pool_open =
            matches!(&a.probe, Some(p) if p.active && matches!(p.plan, super::attempt::ProbePlan::Pool { .. }));
        let waiting = a.state == State::WaitingForRsvp && now >= a.full_window_end && !pool_open;
        let nominate = a.role == IceRole::Controlling
            && a.pairs[i].nominate
            && (a.state != State::Connected || a.upgrade.is_some());
        let role = a.role;
        let p = &mut a.pairs[i];
        // A retransmission repeats the request: same USE-CANDIDATE, same role.
        let same_role = p.tid.and_then(|t| self.transactions.get(&t)).is_some_and(|&(_, _, r)| r == role);
        let retransmit =
            p.state == PairState::InProgress && p.tid.is_some() && p.tid_nominates == nominate && same_role;
        let tid = match (retransmit, p.tid) {
            (true, Some(t)) => t,
            _ => {
                if let Some(old) = p.tid.take() {
                    self.transactions.remove(&old);
                }
                let mut t = [0u8; 12];
                self.rng.fill_bytes(&mut t);
                TransactionId(t)
            }
        };
        p.tid = Some(tid);
        p.tid_nominates = nominate;
        if p.state != PairState::Succeeded {
            p.state = PairState::InProgress;
            p.next_send = Some(now + p.rto);
            p.rto = (p.rto * 2).min(if waiting { keepalive } else { cap });
        }
        self.transactions.insert(tid, (id, i, role));
        let (destination, socket) = (p.remote, p.socket);
        let contents = check_message(a, self.local_peer.as_ref(), tid, nominate);
        // An address that has not proved it receives gets at most 3× what
        // it sent; the check waits (its retransmission timer runs on) until
        // the peer's own checks raise the allowance.
        if let Some(u) = a.pairs[i].unvalidated.as_mut() {
            if !u.allows(contents.len()) {
                self.stats.amplification_refused += 1;
                return;
            }
            u.sent += contents.len() as u64;
        }
        self.transmits.push_back(Transmit::new(destination, contents, socket));
    }

    /// Handles one datagram that arrived on the main socket from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.handle_datagram_on(now, SocketId::MAIN, from, data);
    }

    /// Handles one datagram that arrived on `socket` from `from`.
    pub fn handle_datagram_on(&mut self, now: Instant, socket: SocketId, from: SocketAddr, data: &[u8]) {
        if !self.is_socket_open(socket) {
            self.stats.dropped_malformed += 1;
            return;
        }
        let Ok(msg) = Message::parse(data) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if msg.method != BINDING {
            self.stats.dropped_malformed += 1;
            return;
        }
        match msg.class {
            Class::Request => self.on_request(now, socket, from, &msg),
            Class::Success | Class::Error => self.on_response(now, socket, from, &msg),
            Class::Indication => {} // keepalives need no answer
        }
        self.reindex();
    }

    /// Queues `reply` (on `socket`) unless it is more than
    /// [`AMPLIFICATION_FACTOR`] times the request's size: the sender's
    /// address is not validated, and may be someone else's. Returns whether
    /// it was queued.
    pub(super) fn reply(&mut self, socket: SocketId, to: SocketAddr, request_len: usize, reply: Vec<u8>) -> bool {
        if reply.len() as u64 > AMPLIFICATION_FACTOR * request_len as u64 {
            self.stats.amplification_refused += 1;
            return false;
        }
        self.transmits.push_back(Transmit::new(to, reply, socket));
        true
    }

    pub(super) fn on_request(&mut self, now: Instant, socket: SocketId, from: SocketAddr, msg: &Message<'_>) {
        let Some(username) = msg.username else {
            // A plain STUN Binding request: say where we see it from. A
            // bare 20-byte request gets its 40- or 52-byte answer (within
            // 3× its size), as any STUN client expects.
            let mut b = MessageBuilder::new(Class::Success, BINDING, msg.transaction_id);
            b.xor_mapped_address(from);
            let out = b.finish(None, true);
            if self.reply(socket, from, msg.raw().len(), out) {
                self.stats.stun_served += 1;
            }
            return;
        };
        let Some((local, remote)) = username.split_once(':') else {
            self.stats.dropped_malformed += 1;
            return;
        };
        // A new invitee's check is authenticated with the invitation's
        // password, which becomes the attempt's local password: verified once.
        let (id, verified) = match self.by_ufrags.get(username) {
            Some(id) => (*id, false),
            None => {
                let issued = if socket == SocketId::MAIN { self.issued.get(local) } else { None };
                let Some(issued) = issued else {
                    self.stats.dropped_unauthenticated += 1;
                    return;
                };
                if !msg.verify_integrity(issued.invitation.token().body.connection_info.pwd.as_bytes()) {
                    self.stats.dropped_unauthenticated += 1;
                    return;
                }
                let body = &issued.invitation.token().body;
                // An invitation that requires an RSVP admits only invitees
                // whose RSVP the inviter took: their checks then match an
                // attempt by ufrags and never get here.
                if body.connection_mode.initial == InitialMode::Bidirectional {
                    self.stats.refused_by_limit += 1;
                    return;
                }
                let expired = self.unix(now) >= body.expires_at;
                if expired || !(4..=64).contains(&remote.len()) {
                    self.stats.refused_by_limit += 1;
                    return;
                }
                if !self.admit(local, Some(from.ip())) {
                    return;
                }
                let id = self.new_id();
                let mut a = self.inviter_attempt(local, remote.to_owned(), now, Some(from.ip()));
                a.remote_peer = msg.peer.map(PublicKey);
                let invitation = a.invitation;
                self.by_ufrags.insert(username.to_owned(), id);
                self.attempts.insert(id, Box::new(a));
                self.events.push_back(Event::InviteeArrived { attempt: id, invitation, from });
                if self.resolve_crossing(id) == Some(id) {
                    return;
                }
                (id, true)
            }
        };
        self.dirty.push(id);
        let rto = self.config.rto_initial;
        let a = self.attempts.get_mut(&id).expect("present");
        // A pool socket belongs to one attempt: another's check there (a
        // probe meant for another pool) is not this attempt's path.
        if socket != SocketId::MAIN && !a.sockets.contains(&socket) {
            self.stats.dropped_unauthenticated += 1;
            return;
        }
        if !verified && !msg.verify_integrity(a.local_pwd.as_bytes()) {
            self.stats.dropped_unauthenticated += 1;
            return;
        }
        a.heard = true;
        // RFC 8445 §7.3.1.1: role conflicts.
        let conflict = match (a.role, msg.ice_controlling, msg.ice_controlled) {
            (IceRole::Controlling, Some(theirs), _) => {
                if a.tie_breaker >= theirs {
                    true
                } else {
                    a.set_role(IceRole::Controlled);
                    false
                }
            }
            (IceRole::Controlled, _, Some(theirs)) => {
                if a.tie_breaker >= theirs {
                    a.set_role(IceRole::Controlling);
                    false
                } else {
                    true
                }
            }
            _ => false,
        };
        let key = a.local_pwd.clone();
        if conflict {
            let mut b = MessageBuilder::new(Class::Error, BINDING, msg.transaction_id);
            b.error_code(487, "Role Conflict");
            let out = b.finish(Some(key.as_bytes()), true);
            self.reply(socket, from, msg.raw().len(), out);
            return;
        }
        let mut b = MessageBuilder::new(Class::Success, BINDING, msg.transaction_id);
        b.xor_mapped_address(from);
        let out = b.finish(Some(key.as_bytes()), true);
        let (request_len, reply_len) = (msg.raw().len() as u64, out.len() as u64);
        let replied = self.reply(socket, from, msg.raw().len(), out);

        let a = self.attempts.get_mut(&id).expect("present");
        let exchanged = Unvalidated { received: request_len, sent: if replied { reply_len } else { 0 } };
        let known = a.pair_by(socket, from);
        if let Some(u) = known.and_then(|i| a.pairs[i].unvalidated.as_mut()) {
            u.received += exchanged.received;
            u.sent += exchanged.sent;
        }
        if a.state == State::Failed {
            return;
        }
        if a.state == State::Connected {
            if a.upgrade.is_some() && socket == SocketId::MAIN && !crate::relay::is_virtual(from) {
                let learnt = (exchanged, msg.priority.unwrap_or(0));
                self.upgrade_request(id, known, from, learnt, msg.use_candidate, now);
            }
            return;
        }
        let i = match known {
            Some(i) => i,
            None => {
                // A check through a circuit comes from its virtual address.
                let kind = if crate::relay::is_virtual(from) { CandidateKind::Relay } else { CandidateKind::Prflx };
                let i = a.add_remote(socket, from, kind, msg.priority.unwrap_or(0), rto);
                // Learnt from this check alone: nothing says the address is
                // the sender's (a token's candidates were chosen by its author).
                a.pairs[i].unvalidated = Some(exchanged);
                i
            }
        };
        let p = &mut a.pairs[i];
        if msg.use_candidate && a.role == IceRole::Controlled {
            p.nominate = true;
            if p.state == PairState::Succeeded {
                self.nominate(id, i, now);
                return;
            }
        }
        if p.state != PairState::Succeeded {
            if p.state == PairState::Failed {
                p.state = PairState::Waiting;
            }
            // The controlling side nominates the path an authenticated check
            // just arrived on with its very first (triggered) check: that path
            // demonstrably works, and this saves a round trip. The controlled
            // side must honour USE-CANDIDATE on any check (RFC 8445 §7.3.1.5).
            // (A nomination whose pair failed since no longer counts.)
            let nominating = a.pairs.iter().any(|p| p.nominate && p.state != PairState::Failed);
            if a.role == IceRole::Controlling && !nominating {
                a.pairs[i].nominate = true;
            }
            a.trigger(i, now);
        }
        self.run_attempt(id, now);
    }

    pub(super) fn on_response(&mut self, now: Instant, socket: SocketId, from: SocketAddr, msg: &Message<'_>) {
        let Some(&(id, i, claimed)) = self.transactions.get(&msg.transaction_id) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        self.dirty.push(id);
        let rto = self.config.rto_initial;
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        if !msg.verify_integrity(a.remote_pwd.as_bytes()) {
            self.stats.dropped_unauthenticated += 1;
            return;
        }
        self.transactions.remove(&msg.transaction_id);
        a.heard = true;
        let probe_answer = i == SPRAY;
        let i = if i == SPRAY {
            // A probe hit a mapping of the hard side's pool: the path from
            // our main socket to where the answer came from works.
            if socket != SocketId::MAIN || a.state == State::Connected {
                return;
            }
            let i = a.add_remote(socket, from, CandidateKind::Prflx, 0, rto);
            a.pairs[i].probed = true;
            // The pair may have had its own check in flight: forget it.
            if let Some(old) = a.pairs[i].tid.take() {
                self.transactions.remove(&old);
            }
            i
        } else {
            i
        };
        let p = &mut a.pairs[i];
        // A probe's answer answers no check of the pair's.
        let answered_nomination = p.tid_nominates && !probe_answer;
        p.tid = None;
        p.tid_nominates = false;
        p.next_send = None;
        if from == p.remote && socket == p.socket {
            // It answered our check (echoing its transaction id, with
            // integrity): it receives at this address.
            p.unvalidated = None;
        }
        if msg.class == Class::Error {
            if msg.error_code == Some(487) {
                // Take the role the request did not claim, whatever ours is
                // now, and check again (RFC 8445 §7.2.5.1): two 487s to
                // checks sent in one role switch it once.
                let role = match claimed {
                    IceRole::Controlling => IceRole::Controlled,
                    IceRole::Controlled => IceRole::Controlling,
                };
                p.state = PairState::Waiting;
                a.set_role(role);
                a.trigger(i, now);
                self.run_attempt(id, now);
            } else {
                p.state = PairState::Failed;
                self.renominate(id, now);
            }
            return;
        }
        // Symmetric addresses (RFC 8445 §7.2.5.2.1).
        if from != p.remote || socket != p.socket {
            p.state = PairState::Failed;
            self.renominate(id, now);
            return;
        }
        if let Some(address) = msg.mapped_address
            && !self.mapped.contains(&address)
        {
            if self.mapped.len() == 8 {
                self.mapped.pop_front();
            }
            self.mapped.push_back(address);
            self.events.push_back(Event::Mapped { address });
        }
        let a = self.attempts.get_mut(&id).expect("present");
        if a.state == State::Connected {
            if a.selected == Some(i) {
                a.last_consent = now;
            } else if a.upgrade.is_some() && socket == SocketId::MAIN && !a.relayed(i) {
                // A direct pair answered while the session runs through a
                // relay: it works both ways.
                a.pairs[i].state = PairState::Succeeded;
                match a.role {
                    IceRole::Controlling if answered_nomination => self.switch_path(id, i, now),
                    IceRole::Controlling => self.nominate_upgrade(id, i, now),
                    IceRole::Controlled if a.pairs[i].nominate => self.switch_path(id, i, now),
                    IceRole::Controlled => {}
                }
            }
            return;
        }
        let p = &mut a.pairs[i];
        // Controlling: the answer to a check that carried USE-CANDIDATE.
        // Controlled: the peer's USE-CANDIDATE arrived for this pair.
        let was_nomination = match a.role {
            IceRole::Controlling => answered_nomination,
            IceRole::Controlled => p.nominate,
        };
        p.state = PairState::Succeeded;
        match a.role {
            IceRole::Controlling if was_nomination => self.nominate(id, i, now),
            IceRole::Controlling => {
                // Regular nomination: the first pair that works is
                // nominated with a second check carrying USE-CANDIDATE.
                // A nomination whose pair failed (its answer came from
                // elsewhere: a NAT's reply port moved) gives way to this one.
                // A pair asked to nominate while this plain check was in
                // flight nominates now, with retransmissions like any check.
                if a.pairs[i].nominate || !a.pairs.iter().any(|p| p.nominate && p.state != PairState::Failed) {
                    let p = &mut a.pairs[i];
                    p.nominate = true;
                    p.state = PairState::Waiting;
                    a.trigger(i, now);
                    self.run_attempt(id, now);
                }
            }
            IceRole::Controlled if was_nomination => self.nominate(id, i, now),
            IceRole::Controlled => {}
        }
    }

    /// The controlling side's nomination failed (its pair's answer came
    /// from another address: a NAT moved the peer's reply port): nominate
    /// the best pair that did work instead.
    fn renominate(&mut self, id: AttemptId, now: Instant) {
        let Some(a) = self.attempts.get_mut(&id) else { return };
        if a.role != IceRole::Controlling
            || a.state == State::Connected
            || a.pairs.iter().any(|p| p.nominate && p.state != PairState::Failed)
        {
            return;
        }
        let best = (0..a.pairs.len())
            .filter(|&j| a.pairs[j].state == PairState::Succeeded)
            .max_by_key(|&j| a.pairs[j].remote_priority);
        if let Some(j) = best {
            let p = &mut a.pairs[j];
            p.nominate = true;
            p.state = PairState::Waiting;
            a.trigger(j, now);
            self.run_attempt(id, now);
        }
    }

    pub(super) fn nominate(&mut self, id: AttemptId, i: usize, now: Instant) {
        self.select_pair(id, i, now);
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        a.state = State::Connected;
        a.triggered.clear();
        if a.pairs[i].probed
            && let Some(probe) = &a.probe
        {
            a.via = probe.via;
        }
        let (remote, remote_kind, role, via) = (a.pairs[i].remote, a.pairs[i].remote_kind, a.role, a.via);
        let (counted, ufrag, source) = (a.counted_pending, a.local_ufrag.clone(), a.source_ip);
        let inviter = a.side == Side::Inviter;
        a.counted_pending = false;
        self.uncount_pending(counted, &ufrag, source);
        if inviter && let Some(issued) = self.issued.get_mut(&ufrag) {
            issued.connected += 1;
        }
        self.end_probe(id, true);
        // (`end_probe` may have dropped pairs: `i` may be stale here.)
        if let Some(a) = self.attempts.get_mut(&id)
            && remote_kind == CandidateKind::Relay
        {
            // Through a relay: keep looking for a direct path. What the
            // checking phase asked to nominate no longer stands: from now on
            // only a pair that worked both ways is nominated.
            let first = self.config.upgrade_interval;
            let interval = (first * 2).min(self.config.upgrade_interval_max);
            a.upgrade = Some(Upgrade { next: now + first, interval, answered: None });
            for p in &mut a.pairs {
                p.nominate = false;
            }
        }
        self.events.push_back(Event::Connected { attempt: id, remote, remote_kind, role, via });
    }

    /// An attempt connected through a relay: a round of checks on its
    /// direct pairs when one is due (the controlling side nominates those
    /// that worked), and the retransmissions of a nomination in flight.
    fn run_upgrade(&mut self, id: AttemptId, now: Instant) {
        let (rto, max) = (self.config.rto_initial, self.config.upgrade_interval_max);
        let Some(a) = self.attempts.get_mut(&id) else { return };
        let Some(u) = a.upgrade else { return };
        if now >= u.next {
            a.upgrade = Some(Upgrade { next: now + u.interval, interval: (u.interval * 2).min(max), ..u });
            for i in a.upgrade_pairs() {
                let a = self.attempts.get_mut(&id).expect("present");
                let p = &mut a.pairs[i];
                if a.role == IceRole::Controlling && p.state == PairState::Succeeded {
                    self.nominate_upgrade(id, i, now);
                    continue;
                }
                // One check a round, not retransmitted: the next round is
                // the retry.
                p.nominate &= a.role == IceRole::Controlled;
                if p.state == PairState::Failed {
                    p.state = PairState::Waiting;
                }
                p.rto = rto;
                self.send_check(id, i, now);
            }
            return;
        }
        let due: Vec<usize> = (0..a.pairs.len())
            .filter(|&i| a.pairs[i].tid_nominates && a.pairs[i].next_send.is_some_and(|t| t <= now))
            .collect();
        for i in due {
            self.send_check(id, i, now);
        }
    }

    /// The controlling side of an attempt connected through a relay
    /// nominates direct pair `i`, which worked both ways: a check with
    /// USE-CANDIDATE, retransmitted until answered or the next round.
    fn nominate_upgrade(&mut self, id: AttemptId, i: usize, now: Instant) {
        let rto = self.config.rto_initial;
        let Some(a) = self.attempts.get_mut(&id) else { return };
        let p = &mut a.pairs[i];
        p.nominate = true;
        p.state = PairState::Waiting;
        p.rto = rto;
        self.send_check(id, i, now);
    }

    /// A check arrived on a direct path while the attempt runs through a
    /// relay: check back at once (the peer's check may just have opened
    /// its NAT towards us), and take the controlling side's nomination
    /// once our own check there was answered too.
    fn upgrade_request(
        &mut self,
        id: AttemptId,
        known: Option<usize>,
        from: SocketAddr,
        (exchanged, priority): (Unvalidated, u32),
        use_candidate: bool,
        now: Instant,
    ) {
        let rto = self.config.rto_initial;
        let Some(a) = self.attempts.get_mut(&id) else { return };
        let i = match known {
            Some(i) => i,
            // A few new addresses at most: a captured check replayed from
            // many spoofed sources must not grow the list without end.
            None if a.pairs.iter().filter(|p| p.unvalidated.is_some()).count() >= UPGRADE_PAIRS => return,
            None => {
                let i = a.add_remote(SocketId::MAIN, from, CandidateKind::Prflx, priority, rto);
                a.pairs[i].unvalidated = Some(exchanged);
                i
            }
        };
        if Some(i) == a.selected || a.relayed(i) {
            return;
        }
        let role = a.role;
        let p = &mut a.pairs[i];
        match role {
            IceRole::Controlled => {
                if use_candidate {
                    p.nominate = true;
                    if p.state == PairState::Succeeded {
                        self.switch_path(id, i, now);
                        return;
                    }
                }
            }
            IceRole::Controlling if p.state == PairState::Succeeded => {
                self.nominate_upgrade(id, i, now);
                return;
            }
            IceRole::Controlling => {}
        }
        // A check of ours back, at once (RFC 8445 §7.3.1.4's triggered
        // check): the peer's check may just have opened its NAT towards us,
        // while ours of this round, sent before, was dropped there. Not for
        // a pair that already worked (the controlled side waits for the
        // nomination), and not more often than UPGRADE_ANSWER_GAP.
        let a = self.attempts.get_mut(&id).expect("present");
        let Some(u) = a.upgrade.as_mut() else { return };
        let p = &mut a.pairs[i];
        if p.state == PairState::Succeeded || u.answered.is_some_and(|t| now < t + UPGRADE_ANSWER_GAP) {
            return;
        }
        u.answered = Some(now);
        if p.state == PairState::Failed {
            p.state = PairState::Waiting;
        }
        p.rto = rto;
        self.send_check(id, i, now);
    }

    /// Moves a connected attempt from its relayed pair to direct pair `i`.
    fn switch_path(&mut self, id: AttemptId, i: usize, now: Instant) {
        self.select_pair(id, i, now);
        let Some(a) = self.attempts.get_mut(&id) else { return };
        a.upgrade = None;
        let (remote, remote_kind) = (a.pairs[i].remote, a.pairs[i].remote_kind);
        self.stats.upgraded += 1;
        self.events.push_back(Event::PathChanged { attempt: id, remote, remote_kind });
    }

    /// Makes pair `i` the one the attempt's session uses, consent due a
    /// consent interval from now; the other pairs' checks in flight are
    /// forgotten (a nomination or a move).
    fn select_pair(&mut self, id: AttemptId, i: usize, now: Instant) {
        self.dirty.push(id);
        let interval = self.config.consent_interval;
        let Some(a) = self.attempts.get_mut(&id) else { return };
        a.selected = Some(i);
        a.last_consent = now;
        a.next_consent = Some(now + interval);
        for (j, p) in a.pairs.iter_mut().enumerate() {
            if j != i {
                if let Some(t) = p.tid.take() {
                    self.transactions.remove(&t);
                }
                p.tid_nominates = false;
                p.next_send = None;
            }
        }
    }
}

/// A connectivity check of attempt `a` (with USE-CANDIDATE if `nominate`).
pub(super) fn check_message(
    a: &super::attempt::Attempt,
    local_peer: Option<&PublicKey>,
    tid: TransactionId,
    nominate: bool,
) -> Vec<u8> {
    let mut m = MessageBuilder::new(Class::Request, BINDING, tid);
    // Every check and probe builds one: joined by hand, not through the
    // formatting machinery.
    let mut username = String::with_capacity(a.remote_ufrag.len() + 1 + a.local_ufrag.len());
    username.push_str(&a.remote_ufrag);
    username.push(':');
    username.push_str(&a.local_ufrag);
    m.username(&username).priority(Candidate::standard_priority(CandidateKind::Prflx, 65535));
    match a.role {
        IceRole::Controlling => m.ice_controlling(a.tie_breaker),
        IceRole::Controlled => m.ice_controlled(a.tie_breaker),
    };
    if nominate {
        m.use_candidate();
    }
    if let (Side::Invitee { .. }, Some(me)) = (&a.side, local_peer) {
        m.peer(&me.0);
    }
    m.finish(Some(a.remote_pwd.as_bytes()), true)
}
