//! A long-lived overlay member: the tokio driver of
//! [`convoke_overlay::Overlay`] on top of the node's sessions.
//!
//! Every member listens with one reusable, signed invitation: its contact
//! card, which the overlay hands to peers. A newcomer joins with one such
//! token; from then on the overlay asks for links itself
//! ([`Output::Connect`]): the member checks the card's signature names the
//! peer it claims, connects with it, and when that peer's network wants an
//! RSVP first, sends our signed RSVP along the overlay's route of active
//! links, whose members relay it unchanged (they cannot forge it: the
//! receiver's engine verifies it against its own invitation). Both sides
//! then punch at once, with nobody pasting anything.
//!
//! Overlay messages travel on each session's reliable stream as frames: a
//! 4-byte big-endian length, then the message ([`convoke_overlay::wire`]).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use convoke_overlay::wire::MAX_MESSAGE;
use convoke_overlay::{Card, Config, DownReason, Event, Message, Output, Overlay, PeerKey};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::host::HostEvent;
use crate::ice::{AttemptId, Event as IceEvent};
use crate::identity::{PeerId, PublicKey};
use crate::token::{self, ConnectionMode, InitialMode, Invitation, InvitationParams, Token};

use super::node::{App, NodeCtx};
use super::{os_rng, unix_now};

impl PeerKey for PeerId {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend(self.public_key().0);
    }
    fn take(input: &mut &[u8]) -> Option<Self> {
        <[u8; 32]>::take(input).map(|k| PublicKey(k).peer_id())
    }
}

/// A card is usable only as a valid invitation signed by the peer it
/// names: members relay cards, and none can pass off its own invitation
/// (or a stale one) as someone else's.
pub fn check_card(card: &Card<PeerId>, now: u64) -> Result<Invitation, String> {
    let text = std::str::from_utf8(&card.token).map_err(|_| "its card is not text".to_string())?;
    match Invitation::parse(text, now) {
        Ok(inv) if inv.inviter() == card.peer => Ok(inv),
        Ok(inv) => Err(format!("its card is signed by {}, not by it", inv.inviter())),
        Err(e) => Err(format!("its card is unusable: {e}")),
    }
}

/// Largest broadcast payload: the message and its header fit one frame.
pub const MAX_PAYLOAD: usize = MAX_MESSAGE - 1024;

/// How a member runs.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// The invitation to join with; `None` starts a new network.
    pub join: Option<Invitation>,
    /// Overlay parameters.
    pub overlay: Config,
    /// Lifetime of our invitation (our contact card), seconds.
    pub card_lifetime: u64,
    /// Whether invitees must send an RSVP before we answer (for networks
    /// that let no first contact in).
    pub rsvp_required: bool,
}

impl Default for MemberConfig {
    fn default() -> Self {
        Self {
            join: None,
            overlay: Config { announce_views: 5_000, ..Config::default() },
            card_lifetime: 7 * 86_400,
            rsvp_required: false,
        }
    }
}

/// What a member tells its application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// Our invitation (contact card) is ready: anyone with it can join.
    Invitation(String),
    /// The link to the member whose invitation we used is up; we asked in.
    Joined(PeerId),
    /// The overlay asked for a link to `peer`, introduced along `route`.
    Connecting {
        /// Who.
        peer: PeerId,
        /// Members that relay our RSVP if one is needed.
        route: Vec<PeerId>,
    },
    /// `peer`'s network needs our RSVP: sent along `route`.
    RsvpRelayed {
        /// Who.
        peer: PeerId,
        /// Through whom.
        route: Vec<PeerId>,
    },
    /// The member whose invitation we joined with wants an RSVP first:
    /// carry this token to it out of band (`convoke rsvp`, or
    /// [`MemberCommand::AcceptRsvp`] on its side).
    RsvpForContact(String),
    /// An RSVP reached us through introducers.
    Introduced {
        /// Who sent it.
        from: PeerId,
        /// `Err` with the reason when it was refused.
        result: Result<(), String>,
    },
    /// A peer entered our active view.
    NeighborUp(PeerId),
    /// A peer left it.
    NeighborDown(PeerId, DownReason),
    /// An active peer went silent.
    Suspected(PeerId),
    /// A link the overlay asked for could not be made.
    ConnectFailed(PeerId, String),
    /// A member announced a newcomer.
    MemberJoined {
        /// The newcomer.
        peer: PeerId,
        /// Hops the announcement took.
        hops: u16,
    },
    /// A broadcast arrived.
    Message {
        /// Who it says sent it (claimed by the message id, not verified:
        /// broadcasts are not signed by their origin).
        origin: PeerId,
        /// Its sequence number at the origin.
        seq: u64,
        /// Hops it took.
        hops: u16,
        /// The payload.
        data: Vec<u8>,
    },
}

/// What an application asks of a running member.
#[derive(Debug)]
pub enum MemberCommand {
    /// Broadcast these bytes to every member.
    Broadcast(Vec<u8>),
    /// Take an RSVP that came out of band (a newcomer's first contact).
    AcceptRsvp(String),
    /// Leave: tell neighbours, close sessions, end the run.
    Leave,
}

/// A member's state as others may read it (for demos and status).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Our active view.
    pub active: Vec<PeerId>,
    /// Our eager (tree) links.
    pub eager: Vec<PeerId>,
}

struct Link {
    peer: PeerId,
    rx: Vec<u8>,
    tx: Vec<u8>,
    close_when_flushed: bool,
    /// When the close was asked for: we finish the stream and close once
    /// the peer has everything, or after a grace period.
    closing_since: Option<Instant>,
}

struct Dial {
    peer: PeerId,
    route: Vec<PeerId>,
    contact: Option<Card<PeerId>>,
    invitation: Invitation,
}

/// The overlay member app (see the module docs).
pub struct Member {
    cfg: MemberConfig,
    seed: [u8; 32],
    base: Instant,
    overlay: Option<Overlay<PeerId>>,
    invitation: Option<Invitation>,
    links: BTreeMap<AttemptId, Link>,
    by_peer: BTreeMap<PeerId, AttemptId>,
    dialing: BTreeMap<AttemptId, Dial>,
    events: mpsc::UnboundedSender<MemberEvent>,
    commands: mpsc::UnboundedReceiver<MemberCommand>,
    inbox: VecDeque<MemberCommand>,
    deadline: Option<Instant>,
    leaving: Option<Instant>,
    /// When we last published metrics, and the last broadcast's hops.
    sampled: Option<Instant>,
    last_hops: u16,
    /// Since when our active view has been empty (we joined once).
    alone_since: Option<Instant>,
    snapshot: Arc<Mutex<Snapshot>>,
}

impl Member {
    /// A member reporting on `events` and taking `commands`.
    pub fn new(
        cfg: MemberConfig,
        seed: [u8; 32],
        events: mpsc::UnboundedSender<MemberEvent>,
        commands: mpsc::UnboundedReceiver<MemberCommand>,
    ) -> Self {
        Self {
            cfg,
            seed,
            base: Instant::now(),
            overlay: None,
            invitation: None,
            links: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            dialing: BTreeMap::new(),
            events,
            commands,
            inbox: VecDeque::new(),
            deadline: None,
            leaving: None,
            alone_since: None,
            sampled: None,
            last_hops: 0,
            snapshot: Arc::default(),
        }
    }

    /// A handle on our view, updated as it changes.
    pub fn snapshot(&self) -> Arc<Mutex<Snapshot>> {
        self.snapshot.clone()
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_millis() as u64
    }

    fn emit(&self, e: MemberEvent) {
        let _ = self.events.send(e);
    }

    /// Our invitation, once ready.
    pub fn invitation(&self) -> Option<&Invitation> {
        self.invitation.as_ref()
    }

    fn dial(&mut self, ctx: &mut NodeCtx<'_>, invitation: Invitation, route: Vec<PeerId>, contact: bool) {
        let peer = invitation.inviter();
        let card = contact.then(|| Card { peer, token: invitation.token().encode_compact().into_bytes() });
        let attempt = ctx.host.join(&invitation, ctx.now);
        self.dialing.insert(attempt, Dial { peer, route, contact: card, invitation });
    }

    fn send(&mut self, ctx: &mut NodeCtx<'_>, to: PeerId, msg: &Message<PeerId>) {
        let Some(&id) = self.by_peer.get(&to) else { return };
        let Some(link) = self.links.get_mut(&id) else { return };
        let body = msg.encode();
        link.tx.extend((body.len() as u32).to_be_bytes());
        link.tx.extend(body);
        let n = ctx.host.write(id, &link.tx);
        link.tx.drain(..n);
    }

    /// Does what the overlay asked, until it asks nothing more.
    fn pump(&mut self, ctx: &mut NodeCtx<'_>) {
        let Some(mut overlay) = self.overlay.take() else { return };
        while let Some(o) = overlay.poll() {
            match o {
                Output::Send { to, msg } => self.send(ctx, to, &msg),
                Output::Connect { card, route } => match check_card(&card, unix_now()) {
                    Ok(inv) => {
                        self.emit(MemberEvent::Connecting { peer: card.peer, route: route.clone() });
                        self.dial(ctx, inv, route, false);
                    }
                    Err(e) => {
                        overlay.link_failed(card.peer, self.ms(ctx.now));
                        self.emit(MemberEvent::ConnectFailed(card.peer, e));
                    }
                },
                Output::Close(peer) => {
                    if let Some(&id) = self.by_peer.get(&peer)
                        && let Some(l) = self.links.get_mut(&id)
                    {
                        l.close_when_flushed = true;
                    }
                }
                Output::Event(e) => match e {
                    Event::NeighborUp(p) => self.emit(MemberEvent::NeighborUp(p)),
                    Event::NeighborDown { peer, reason } => self.emit(MemberEvent::NeighborDown(peer, reason)),
                    Event::Suspected(p) => self.emit(MemberEvent::Suspected(p)),
                    Event::Delivered { id, round, payload } => {
                        self.last_hops = round;
                        self.emit(MemberEvent::Message { origin: id.origin, seq: id.seq, hops: round, data: payload })
                    }
                    Event::MemberJoined { peer, round } => self.emit(MemberEvent::MemberJoined { peer, hops: round }),
                    Event::Introduced { from, token } => {
                        let text = String::from_utf8_lossy(&token).into_owned();
                        let result = match ctx.host.accept_rsvp(&text, ctx.now) {
                            Ok(_) => Ok(()),
                            Err(e) => Err(e.to_string()),
                        };
                        self.emit(MemberEvent::Introduced { from, result });
                    }
                },
            }
        }
        let now = self.ms(ctx.now);
        self.deadline = Some(self.base + std::time::Duration::from_millis(overlay.poll_timeout().max(now)));
        if let Ok(mut s) = self.snapshot.lock() {
            s.active = overlay.active().collect();
            s.eager = overlay.plumtree().eager().to_vec();
        }
        self.overlay = Some(overlay);
    }

    fn read(&mut self, ctx: &mut NodeCtx<'_>, id: AttemptId) {
        let Some(link) = self.links.get_mut(&id) else { return };
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = ctx.host.read(id, &mut buf);
            if n == 0 {
                break;
            }
            link.rx.extend_from_slice(&buf[..n]);
        }
        let peer = link.peer;
        let mut msgs = Vec::new();
        let mut bad = None;
        let mut at = 0;
        while link.rx.len() - at >= 4 {
            let len = u32::from_be_bytes(link.rx[at..at + 4].try_into().expect("4 bytes")) as usize;
            if len > MAX_MESSAGE {
                bad = Some(format!("frame of {len} bytes"));
                break;
            }
            if link.rx.len() - at - 4 < len {
                break;
            }
            match Message::<PeerId>::decode(&link.rx[at + 4..at + 4 + len]) {
                Ok(m) => msgs.push(m),
                Err(e) => {
                    bad = Some(e.to_string());
                    break;
                }
            }
            at += 4 + len;
        }
        link.rx.drain(..at);
        let now = self.ms(ctx.now);
        if let Some(o) = self.overlay.as_mut() {
            for m in msgs {
                o.handle(peer, m, now);
            }
        }
        if let Some(why) = bad {
            tracing::warn!("closing the session with {peer}: {why}");
            ctx.host.close(id, ctx.now);
        }
    }

    /// Our state for `convoke status` and `convoke status --topology`.
    pub fn status(&self) -> Value {
        let Some(o) = &self.overlay else { return json!({ "ready": false }) };
        let ids = |v: Vec<PeerId>| v.into_iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let s = o.stats();
        let p = o.plum_stats();
        json!({
            "ready": true,
            "invitation": self.invitation.as_ref().map(|i| i.token().encode_compact()),
            "active": ids(o.active().collect()),
            "passive": ids(o.passive().collect()),
            "suspected": ids(o.suspected().collect()),
            "eager": ids(o.plumtree().eager().to_vec()),
            "lazy": ids(o.plumtree().lazy().to_vec()),
            "members": ids(o.known_members()),
            "links": o.known_links().into_iter().map(|(a, b)| [a.to_string(), b.to_string()]).collect::<Vec<_>>(),
            "stats": {
                "joins": s.joins, "shuffles": s.shuffles, "neighbor_ups": s.neighbor_ups,
                "neighbor_downs": s.neighbor_downs, "suspicions": s.suspicions, "connects": s.connects,
                "connect_failures": s.connect_failures, "relayed": s.relayed, "relay_refused": s.relay_refused,
                "introduced": s.introduced, "delivered": p.delivered, "duplicates": p.duplicates,
                "grafts": p.grafts_sent, "prunes": p.prunes_sent,
            },
        })
    }

    /// Takes a command now (control socket).
    pub fn command(&mut self, c: MemberCommand) {
        self.inbox.push_back(c);
    }
}

impl App for Member {
    type Output = ();

    fn on_ready(&mut self, ctx: &mut NodeCtx<'_>) {
        self.base = ctx.now;
        let mut candidates = ctx.candidates.to_vec();
        candidates.truncate(token::limits::MAX_CANDIDATES);
        let params = InvitationParams {
            candidates,
            lifetime_secs: self.cfg.card_lifetime,
            mode: ConnectionMode {
                initial: if self.cfg.rsvp_required { InitialMode::Bidirectional } else { InitialMode::Unidirectional },
                rsvp_supported: true,
                reusable: true,
                ..ConnectionMode::default()
            },
            ..InvitationParams::default()
        };
        let t = Token::new_invitation(ctx.identity, params, unix_now(), &mut os_rng());
        let inv = match Invitation::from_token(t, unix_now()) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!("cannot make our own invitation: {e}");
                self.leaving = Some(ctx.now);
                return;
            }
        };
        ctx.host.listen(inv.clone());
        let card = Card { peer: ctx.identity.peer_id(), token: inv.token().encode_compact().into_bytes() };
        self.emit(MemberEvent::Invitation(inv.token().encode_compact()));
        self.invitation = Some(inv);
        self.overlay = Some(Overlay::new(card, self.cfg.overlay, self.seed, 0));
        if let Some(contact) = self.cfg.join.clone() {
            self.dial(ctx, contact, Vec::new(), true);
        }
        self.pump(ctx);
    }

    fn on_event(&mut self, ctx: &mut NodeCtx<'_>, event: HostEvent) {
        let now = self.ms(ctx.now);
        match event {
            HostEvent::Established { session, peer, .. } => {
                let peer = peer.peer_id();
                self.links.insert(
                    session,
                    Link { peer, rx: Vec::new(), tx: Vec::new(), close_when_flushed: false, closing_since: None },
                );
                // A second session to the same peer (both dialled at once)
                // replaces the first for sending; either may receive.
                self.by_peer.insert(peer, session);
                let dial = self.dialing.remove(&session);
                if let Some(o) = self.overlay.as_mut() {
                    match dial {
                        Some(Dial { contact: Some(card), .. }) => {
                            o.join(card, now);
                            self.emit(MemberEvent::Joined(peer));
                        }
                        Some(_) => o.link_up(peer, now),
                        None => {}
                    }
                }
            }
            HostEvent::Readable { session } => self.read(ctx, session),
            HostEvent::Closed { session, .. } => {
                if let Some(l) = self.links.remove(&session)
                    && self.by_peer.get(&l.peer) == Some(&session)
                {
                    self.by_peer.remove(&l.peer);
                    if let Some(o) = self.overlay.as_mut() {
                        o.link_down(l.peer, now);
                    }
                }
            }
            HostEvent::HandshakeFailed { session: attempt, reason } => self.dial_failed(attempt, reason.into(), now),
            HostEvent::Ice(IceEvent::Failed { attempt, reason, .. }) => {
                self.dial_failed(attempt, format!("{reason:?}"), now)
            }
            HostEvent::Ice(IceEvent::RsvpNeeded { attempt }) => {
                if let (Some(d), Some(id)) = (self.dialing.get(&attempt), ctx.host.endpoint().rsvp_token_id(attempt)) {
                    let t = Token::new_rsvp(&d.invitation, ctx.identity, id, ctx.candidates.to_vec(), unix_now());
                    if d.contact.is_some() {
                        self.emit(MemberEvent::RsvpForContact(t.encode_compact()));
                        return;
                    }
                    let (peer, route) = (d.peer, d.route.clone());
                    let sent =
                        self.overlay.as_mut().is_some_and(|o| o.introduce(&route, t.encode_compact().into_bytes()));
                    if sent {
                        self.emit(MemberEvent::RsvpRelayed { peer, route });
                    } else {
                        self.dial_failed(attempt, "needs an RSVP and no introducer route".into(), now);
                        ctx.host.close(attempt, ctx.now);
                    }
                }
            }
            _ => {}
        }
        self.pump(ctx);
    }

    fn step(&mut self, ctx: &mut NodeCtx<'_>) -> Option<()> {
        while let Ok(c) = self.commands.try_recv() {
            self.inbox.push_back(c);
        }
        let now = self.ms(ctx.now);
        while let Some(c) = self.inbox.pop_front() {
            match c {
                MemberCommand::Broadcast(data) => {
                    if data.len() > MAX_PAYLOAD {
                        tracing::warn!("not broadcasting {} bytes: at most {MAX_PAYLOAD}", data.len());
                    } else if let Some(o) = self.overlay.as_mut() {
                        o.broadcast(data, now);
                    }
                }
                MemberCommand::AcceptRsvp(text) => {
                    if let Err(e) = ctx.host.accept_rsvp(&text, ctx.now) {
                        tracing::warn!("refused an RSVP: {e}");
                    }
                }
                MemberCommand::Leave => {
                    let peers: Vec<PeerId> = self.by_peer.keys().copied().collect();
                    for p in peers {
                        self.send(ctx, p, &Message::Disconnect { alive: false });
                    }
                    for l in self.links.values_mut() {
                        l.close_when_flushed = true;
                    }
                    self.leaving = Some(ctx.now);
                }
            }
        }
        if let Some(o) = self.overlay.as_mut()
            && o.poll_timeout() <= now
        {
            o.tick(now);
        }
        self.rejoin_if_alone(ctx);
        self.publish(ctx.now);
        self.pump(ctx);
        // Move queued frames; close links that asked for it once flushed.
        let mut close = Vec::new();
        for (&id, l) in &mut self.links {
            if !l.tx.is_empty() {
                let n = ctx.host.write(id, &l.tx);
                l.tx.drain(..n);
            }
            if l.close_when_flushed && l.tx.is_empty() {
                // A DISCONNECT queued just before must reach the peer: end
                // our stream and close once it is acknowledged (or after 2 s).
                let since = *l.closing_since.get_or_insert_with(|| {
                    ctx.host.finish(id);
                    ctx.now
                });
                if ctx.host.send_done(id) || ctx.now.saturating_duration_since(since).as_secs() >= 2 {
                    close.push(id);
                }
            } else if l.tx.len() > 4 * MAX_MESSAGE {
                // The peer takes nothing while we have much to say: drop it.
                tracing::warn!("closing the session with {}: it does not read", l.peer);
                close.push(id);
            }
        }
        for id in close {
            ctx.host.close(id, ctx.now);
            if let Some(l) = self.links.remove(&id)
                && self.by_peer.get(&l.peer) == Some(&id)
            {
                self.by_peer.remove(&l.peer);
                let now = self.ms(ctx.now);
                if !l.close_when_flushed
                    && let Some(o) = self.overlay.as_mut()
                {
                    o.link_down(l.peer, now);
                }
            }
        }
        match self.leaving {
            Some(t) if self.links.is_empty() || ctx.now.saturating_duration_since(t).as_millis() > 500 => Some(()),
            _ => None,
        }
    }

    fn wake(&mut self) -> impl Future<Output = ()> {
        let deadline = self.deadline.map(tokio::time::Instant::from_std);
        let commands = &mut self.commands;
        let inbox = &mut self.inbox;
        async move {
            tokio::select! {
                Some(c) = commands.recv() => inbox.push_back(c),
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {}
                // No commands can come any more and no timer is set.
                else => std::future::pending::<()>().await,
            }
        }
    }

    fn status(&self) -> Option<Value> {
        Some(Member::status(self))
    }

    fn control(&mut self, req: &super::control::Request) -> Option<Value> {
        match req {
            super::control::Request::Broadcast { data } => {
                if self.overlay.is_none() {
                    return Some(json!({ "ok": false, "code": "not_ready", "error": "the member is still starting" }));
                }
                self.inbox.push_back(MemberCommand::Broadcast(data.clone().into_bytes()));
                Some(json!({ "ok": true }))
            }
            _ => None,
        }
    }
}

impl Member {
    /// Publishes the overlay's figures once a second (a no-op without a
    /// metrics recorder).
    fn publish(&mut self, now: Instant) {
        let Some(o) = &self.overlay else { return };
        if self.sampled.is_some_and(|t| now.saturating_duration_since(t).as_secs() < 1) {
            return;
        }
        self.sampled = Some(now);
        super::telemetry::sample_overlay(&super::telemetry::OverlaySample {
            active: o.active().count(),
            passive: o.passive().count(),
            suspected: o.suspected().count(),
            eager: o.plumtree().eager().len(),
            lazy: o.plumtree().lazy().len(),
            members: o.known_members().len(),
            last_hops: self.last_hops,
            stats: *o.stats(),
            plum: *o.plum_stats(),
        });
    }

    /// A member cut off from everyone (its neighbours all left and no
    /// passive peer answers) joins again through the member it first
    /// joined, after four rounds alone, and then every four rounds.
    fn rejoin_if_alone(&mut self, ctx: &mut NodeCtx<'_>) {
        let (Some(o), Some(contact)) = (&self.overlay, &self.cfg.join) else { return };
        if self.leaving.is_some() || o.active().next().is_some() || o.pending() > 0 {
            self.alone_since = None;
            return;
        }
        let since = *self.alone_since.get_or_insert(ctx.now);
        let wait = std::time::Duration::from_millis(4 * o.config().round);
        let dialing_contact = self.dialing.values().any(|d| d.contact.is_some());
        if ctx.now.saturating_duration_since(since) >= wait && !dialing_contact {
            self.alone_since = Some(ctx.now);
            let contact = contact.clone();
            tracing::info!("alone for {wait:?}: joining again through {}", contact.inviter());
            self.dial(ctx, contact, Vec::new(), true);
        }
    }

    fn dial_failed(&mut self, attempt: AttemptId, why: String, now: u64) {
        if let Some(d) = self.dialing.remove(&attempt) {
            if let Some(o) = self.overlay.as_mut() {
                o.link_failed(d.peer, now);
            }
            self.emit(MemberEvent::ConnectFailed(d.peer, why));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::token::{Candidate, CandidateKind};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn invitation(id: &Identity, rng: &mut ChaCha20Rng) -> String {
        let addr = "127.0.0.1:9".parse().expect("addr");
        let params = InvitationParams {
            candidates: Candidate::list([(CandidateKind::Host, addr)]),
            ..InvitationParams::default()
        };
        Token::new_invitation(id, params, 1_000, rng).encode_compact()
    }

    #[test]
    fn cards_must_be_valid_invitations_signed_by_their_peer() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let alice = Identity::generate(&mut rng);
        let mallory = Identity::generate(&mut rng);
        let good = invitation(&alice, &mut rng);
        let card = |peer: PeerId, t: &str| Card { peer, token: t.as_bytes().to_vec() };
        assert!(check_card(&card(alice.peer_id(), &good), 1_001).is_ok());
        // Mallory's own invitation passed off as Alice's card.
        let forged = invitation(&mallory, &mut rng);
        let e = check_card(&card(alice.peer_id(), &forged), 1_001).expect_err("forged");
        assert!(e.contains("signed by"), "{e}");
        // One character changed in the middle of Alice's token.
        let mut bytes = good.clone().into_bytes();
        let mid = bytes.len() / 2;
        bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        assert!(check_card(&card(alice.peer_id(), &tampered), 1_001).is_err());
        // Expired, and not text at all.
        assert!(check_card(&card(alice.peer_id(), &good), 1_000 + 400 * 86_400).is_err());
        assert!(check_card(&Card { peer: alice.peer_id(), token: vec![0xff, 0xfe] }, 1_001).is_err());
    }

    #[test]
    fn peer_ids_round_trip_through_the_overlay_encoding() {
        let id = Identity::generate(&mut ChaCha20Rng::seed_from_u64(2)).peer_id();
        let mut b = Vec::new();
        id.put(&mut b);
        let mut r = b.as_slice();
        assert_eq!(PeerId::take(&mut r), Some(id));
        assert!(r.is_empty());
        assert_eq!(PeerId::take(&mut &b[..31]), None);
    }
}
