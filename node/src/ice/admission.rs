//! Attempts begin and end here: our invitations listened on, invitations
//! imported, RSVPs taken, invitees admitted within the limits, crossing
//! attempts between the same two peers resolved, attempts closed.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::attempt::{Attempt, NewAttempt, PairState, Side};
use super::*;
use crate::token::{
    self, IceRole, InitialMode, Invitation, ReplayGuard, Rsvp, TokenError, TokenId, derive_invitee_pwd,
    derived_tie_breaker, derived_ufrag,
};

impl Endpoint {
    /// Accepts invitees on `invitation` (one of ours, already validated).
    pub fn listen(&mut self, invitation: Invitation) {
        let b = &invitation.token().body;
        let ufrag = b.connection_info.ufrag.clone();
        self.issued_by_id.insert(b.token_id, ufrag.clone());
        self.issued.insert(ufrag, Issued { invitation, rsvp_guard: ReplayGuard::default(), pending: 0, connected: 0 });
    }

    /// Stops accepting new invitees on an invitation (attempts already made
    /// continue).
    pub fn unlisten(&mut self, invitation: TokenId) {
        if let Some(ufrag) = self.issued_by_id.remove(&invitation) {
            self.issued.remove(&ufrag);
        }
    }

    /// Imports an invitation as the invitee and starts checking.
    pub fn join(&mut self, invitation: &Invitation, now: Instant) -> AttemptId {
        self.join_probing(invitation, now, self.config.probing)
    }

    /// [`Endpoint::join`], saying whether this attempt may predict or probe
    /// ports (see [`EndpointConfig::probing`]): a member dialing a peer the
    /// overlay picked does not, a person's invitation does.
    pub fn join_probing(&mut self, invitation: &Invitation, now: Instant, probing: bool) -> AttemptId {
        let b = &invitation.token().body;
        let ci = &b.connection_info;
        let rsvp_id = TokenId::random(&mut self.rng);
        let local_ufrag = derived_ufrag(&b.version, &rsvp_id);
        let id = self.new_id();
        let window = Duration::from_secs(u64::from(b.connection_mode.rsvp_timeout_seconds).max(1));
        // Ask for the RSVP as soon as silence says the inviter's NAT keeps
        // our checks out; a public inviter gets the whole window.
        let silence = match ci.nat {
            _ if !b.connection_mode.rsvp_supported => None,
            Some(n) if n.is_translated() => Some(self.config.rsvp_after_silence),
            Some(_) => None,
            None => Some(self.config.rsvp_after_silence_unknown),
        };
        self.stats.attempts_invitee += 1;
        let a = Attempt::new(
            NewAttempt {
                side: Side::Invitee { rsvp_id, rsvp_supported: b.connection_mode.rsvp_supported },
                role: IceRole::Controlled,
                tie_breaker: derived_tie_breaker(&rsvp_id),
                local: (local_ufrag.clone(), derive_invitee_pwd(&b.version, &ci.pwd, &local_ufrag)),
                remote: (ci.ufrag.clone(), ci.pwd.clone()),
                invitation: b.token_id,
                invitation_tie: ci.ice_tie_breaker,
                remote_peer: b.initiator.as_ref().map(|p| p.public_key),
                pairs: self.pairs_from(&ci.ice_candidates),
                window,
                silence,
                peer_nat: ci.nat,
                counted_source: None,
            },
            now,
        );
        let bidirectional = b.connection_mode.initial == InitialMode::Bidirectional;
        let mut a = a;
        a.probing_allowed = probing;
        self.by_ufrags.insert(format!("{}:{}", a.local_ufrag, a.remote_ufrag), id);
        self.attempts.insert(id, Box::new(a));
        if bidirectional {
            self.enter_waiting(id, now);
        }
        if self.resolve_crossing(id) != Some(id) {
            self.run_attempt(id, now);
        }
        self.reindex();
        id
    }

    /// If `id` and another attempt are the two halves of crossing
    /// invitations with the same peer, drops the one whose invitation ranks
    /// lower by (tie-breaker, author key) and returns it. The peer computes
    /// the same order, so both keep the halves of the same ICE session.
    pub(super) fn resolve_crossing(&mut self, id: AttemptId) -> Option<AttemptId> {
        let a = self.attempts.get(&id)?;
        let peer = a.remote_peer?;
        let me = self.local_peer?;
        let inviter = a.side == Side::Inviter;
        let (&other, _) = self
            .attempts
            .iter()
            .find(|(o, b)| **o != id && b.remote_peer == Some(peer) && (b.side == Side::Inviter) != inviter)?;
        let (inviter_id, invitee_id) = if inviter { (id, other) } else { (other, id) };
        let ours = (self.attempts[&inviter_id].invitation_tie, me);
        let theirs = (self.attempts[&invitee_id].invitation_tie, peer);
        let loser = if ours > theirs { invitee_id } else { inviter_id };
        let via = self.attempts[&loser].via;
        self.remove(loser);
        self.events.push_back(Event::Failed {
            attempt: loser,
            reason: FailReason::Crossed,
            inviter: loser == inviter_id,
            via,
        });
        Some(loser)
    }

    /// The invitee offers its RSVP; from now on both sides may hold it, so a
    /// pair of NATs that needs probing starts it.
    pub(super) fn enter_waiting(&mut self, id: AttemptId, now: Instant) {
        let Some(a) = self.attempts.get_mut(&id) else { return };
        a.state = State::WaitingForRsvp;
        a.via = Via::Rsvp;
        // Asked early (silence): checks keep their pace until the window's
        // end, then slow to keepalives (see `send_check`).
        if now >= a.full_window_end {
            for p in &mut a.pairs {
                p.rto = self.config.keepalive;
            }
        }
        self.events.push_back(Event::RsvpNeeded { attempt: id });
        self.plan_probe(id, now);
    }

    /// Imports an RSVP answering one of our invitations and starts checking
    /// towards the invitee at once (the invitee is checking too).
    pub fn accept_rsvp(&mut self, text: &str, now: Instant) -> Result<AttemptId, AcceptRsvpError> {
        self.accept_rsvp_probing(text, now, self.config.probing)
    }

    /// [`Endpoint::accept_rsvp`], saying whether this attempt may predict
    /// or probe ports.
    pub fn accept_rsvp_probing(
        &mut self,
        text: &str,
        now: Instant,
        probing: bool,
    ) -> Result<AttemptId, AcceptRsvpError> {
        let t = token::decode(text)?;
        let unix = self.unix(now);
        let reply_to =
            t.body.in_reply_to.ok_or(TokenError::WrongRole("an RSVP must say which invitation it answers"))?;
        let Some(ufrag) = self.issued_by_id.get(&reply_to).cloned() else {
            return Err(AcceptRsvpError::UnknownInvitation);
        };
        let issued = self.issued.get_mut(&ufrag).expect("issued_by_id and issued agree");
        let rsvp = Rsvp::from_token(t, &issued.invitation, unix, &mut issued.rsvp_guard)?;
        let ci = &rsvp.token().body.connection_info;
        let author = rsvp.token().body.author().map(|p| p.public_key);
        let key = format!("{ufrag}:{}", ci.ufrag);
        let id = match self.by_ufrags.get(&key) {
            Some(id) => *id,
            None => {
                if !self.admit(&ufrag, None) {
                    return Err(AcceptRsvpError::Refused);
                }
                let id = self.new_id();
                let a = self.inviter_attempt(&ufrag, ci.ufrag.clone(), now, None);
                self.by_ufrags.insert(key, id);
                self.attempts.insert(id, Box::new(a));
                id
            }
        };
        let rto = self.config.rto_initial;
        let window = self.config.inviter_window;
        let a = self.attempts.get_mut(&id).expect("just found or made");
        a.via = Via::Rsvp;
        a.peer_nat = ci.nat;
        a.probing_allowed = probing;
        a.remote_pwd = ci.pwd.clone();
        // The RSVP's signer is who the session must authenticate as.
        a.remote_peer = author.or(a.remote_peer);
        if a.state != State::Connected {
            a.state = State::Checking;
            a.window_end = a.window_end.max(now + window);
            for c in &ci.ice_candidates {
                let i = a.add_remote(SocketId::MAIN, c.address, c.kind, c.priority, rto);
                let p = &mut a.pairs[i];
                if p.state == PairState::Failed {
                    p.state = PairState::Waiting;
                }
            }
            a.next_pace = a.next_pace.min(now);
        }
        self.plan_probe(id, now);
        self.run_attempt(id, now);
        self.reindex();
        Ok(id)
    }

    /// Whether a new invitee may be admitted on invitation `ufrag`.
    pub(super) fn admit(&mut self, ufrag: &str, source: Option<IpAddr>) -> bool {
        let Some(issued) = self.issued.get(ufrag) else {
            return false;
        };
        let reusable = issued.invitation.token().body.connection_mode.reusable;
        let ok = self.attempts.len() < self.config.max_attempts
            && issued.pending < self.config.max_pending_per_invitation
            && (reusable || issued.pending + issued.connected == 0)
            && source.is_none_or(|ip| {
                self.pending_by_source.get(&ip).copied().unwrap_or(0) < self.config.max_pending_per_source
            });
        if !ok {
            self.stats.refused_by_limit += 1;
        }
        ok
    }

    pub(super) fn inviter_attempt(
        &mut self,
        ufrag: &str,
        remote_ufrag: String,
        now: Instant,
        source: Option<IpAddr>,
    ) -> Attempt {
        self.stats.attempts_inviter += 1;
        let issued = self.issued.get_mut(ufrag).expect("admitted invitation exists");
        issued.pending += 1;
        if let Some(ip) = source {
            *self.pending_by_source.entry(ip).or_default() += 1;
        }
        let b = &issued.invitation.token().body;
        let ci = &b.connection_info;
        let window =
            Duration::from_secs(u64::from(b.connection_mode.rsvp_timeout_seconds)).max(self.config.inviter_window);
        Attempt::new(
            NewAttempt {
                side: Side::Inviter,
                role: IceRole::Controlling,
                tie_breaker: ci.ice_tie_breaker,
                local: (ci.ufrag.clone(), ci.pwd.clone()),
                remote: (remote_ufrag.clone(), derive_invitee_pwd(&b.version, &ci.pwd, &remote_ufrag)),
                invitation: b.token_id,
                invitation_tie: ci.ice_tie_breaker,
                remote_peer: None,
                pairs: Vec::new(),
                window,
                silence: None,
                peer_nat: None,
                counted_source: Some(source),
            },
            now,
        )
    }

    /// Closes an attempt and forgets it.
    pub fn close(&mut self, id: AttemptId) {
        if let Some(a) = self.attempts.get(&id) {
            let (inviter, via) = (a.side == Side::Inviter, a.via);
            self.remove(id);
            self.reindex();
            self.events.push_back(Event::Failed { attempt: id, reason: FailReason::Closed, inviter, via });
        }
    }

    pub(super) fn remove(&mut self, id: AttemptId) {
        self.dirty.push(id);
        self.end_probe(id, false);
        let Some(a) = self.attempts.remove(&id) else {
            return;
        };
        for s in &a.sockets {
            self.close_socket(*s);
        }
        self.by_ufrags.remove(&format!("{}:{}", a.local_ufrag, a.remote_ufrag));
        for p in &a.pairs {
            if let Some(t) = p.tid {
                self.transactions.remove(&t);
            }
        }
        self.uncount_pending(a.counted_pending, &a.local_ufrag, a.source_ip);
        if a.state == State::Connected
            && let Some(i) = self.issued.get_mut(&a.local_ufrag)
        {
            i.connected = i.connected.saturating_sub(1);
        }
    }

    /// Releases what an inviter-side attempt counted against the pending
    /// limits (once: when it connects or goes away).
    pub(super) fn uncount_pending(&mut self, counted: bool, ufrag: &str, source: Option<IpAddr>) {
        if !counted {
            return;
        }
        if let Some(i) = self.issued.get_mut(ufrag) {
            i.pending = i.pending.saturating_sub(1);
        }
        if let Some(ip) = source
            && let Some(n) = self.pending_by_source.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.pending_by_source.remove(&ip);
            }
        }
    }
}
