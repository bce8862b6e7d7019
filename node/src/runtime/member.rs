//! The tokio driver of a network member: [`crate::member::Member`] (the
//! sans-IO member engine) on the node's host, with its events on a
//! channel, commands from a channel or the control socket, and overlay
//! figures published as metrics.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::host::HostEvent;
use crate::member::{self, CommandError};

pub use crate::member::{
    ConnectFailure, Dialed, MAX_PAYLOAD, MemberCommand, MemberConfig, MemberEvent, SuperPeer, check_card,
};

use super::node::{App, NodeCtx};
use super::state::StateFile;
use super::unix_now;

/// How often at most the saved membership is rewritten when our
/// neighbours or our own cards changed; when only the passive view did
/// (it shuffles every round), [`SAVE_PASSIVE_EVERY`].
const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
const SAVE_PASSIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A member's state as others may read it (for demos and status).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Our active view.
    pub active: Vec<crate::identity::PeerId>,
    /// Our eager (tree) links.
    pub eager: Vec<crate::identity::PeerId>,
    /// Our role under the topology policy.
    pub role: convoke_overlay::Role,
    /// The policy invariants broken now, in words.
    pub violations: Vec<String>,
}

/// The member app: drives the engine, forwards its events and takes
/// commands.
pub struct Member {
    cfg: Option<MemberConfig>,
    seed: [u8; 32],
    engine: Option<member::Member>,
    events: mpsc::UnboundedSender<MemberEvent>,
    commands: mpsc::UnboundedReceiver<MemberCommand>,
    inbox: Vec<MemberCommand>,
    /// When we last published metrics.
    sampled: Option<Instant>,
    failed: bool,
    snapshot: Arc<Mutex<Snapshot>>,
    state: Option<Saving>,
}

/// Where and what we last saved.
struct Saving {
    file: StateFile,
    /// The cards written last (compact text, sorted), and when.
    cards: Vec<String>,
    /// The neighbours and our own cards' token ids then.
    key: Vec<String>,
    at: Option<Instant>,
    saved_at_unix: Option<u64>,
    /// Whether the last write failed (warned once per failure streak).
    failing: bool,
}

impl Member {
    /// A member reporting on `events` and taking `commands`; `seed` keys
    /// its randomness (draw it from the OS).
    pub fn new(
        cfg: MemberConfig,
        seed: [u8; 32],
        events: mpsc::UnboundedSender<MemberEvent>,
        commands: mpsc::UnboundedReceiver<MemberCommand>,
    ) -> Self {
        Self {
            cfg: Some(cfg),
            seed,
            engine: None,
            events,
            commands,
            inbox: Vec::new(),
            sampled: None,
            failed: false,
            snapshot: Arc::default(),
            state: None,
        }
    }

    /// Saves the cards we could rejoin through to `file` (at most every
    /// 5 s, when they changed, and when we stop), so that a restart finds
    /// the network again ([`MemberConfig::rejoin`]).
    pub fn with_state(mut self, file: StateFile) -> Self {
        self.state =
            Some(Saving { file, cards: Vec::new(), key: Vec::new(), at: None, saved_at_unix: None, failing: false });
        self
    }

    /// Writes the state file if the cards changed and the last write is
    /// old enough (or `now_or_never`): 5 s when our neighbours or our own
    /// cards changed, 60 s when only the passive view did.
    fn save_state(&mut self, now: Instant, unix: u64, now_or_never: bool) {
        let (Some(s), Some(e)) = (self.state.as_mut(), self.engine.as_ref()) else { return };
        let since = s.at.map(|t| now.saturating_duration_since(t));
        if !now_or_never && since.is_some_and(|d| d < SAVE_EVERY) {
            return;
        }
        let cards = e.cards(unix);
        let own = e.own_cards(unix);
        let mut text: Vec<String> = cards.iter().map(|c| c.token().encode_compact()).collect();
        text.sort_unstable();
        // Nothing learned yet (or everything forgotten): keep what we had.
        if text == s.cards || text.is_empty() {
            return;
        }
        let mut key: Vec<String> = e.overlay().map(|o| o.active().map(|p| p.to_string()).collect()).unwrap_or_default();
        key.sort_unstable();
        key.extend(own.iter().map(|c| c.token().encode_compact()));
        if !now_or_never && key == s.key && since.is_some_and(|d| d < SAVE_PASSIVE_EVERY) {
            return;
        }
        s.at = Some(now);
        match s.file.save(&cards, &own, unix) {
            Ok(()) => {
                s.cards = text;
                s.key = key;
                s.saved_at_unix = Some(unix);
                s.failing = false;
            }
            Err(why) if !s.failing => {
                tracing::warn!("cannot save the membership (a restart will need an invitation): {why}");
                s.failing = true;
            }
            Err(_) => {}
        }
    }

    /// A handle on our view, updated as it changes.
    pub fn snapshot(&self) -> Arc<Mutex<Snapshot>> {
        self.snapshot.clone()
    }

    /// The engine, once started.
    pub fn engine(&self) -> Option<&member::Member> {
        self.engine.as_ref()
    }

    /// Takes a command now (control socket).
    pub fn command(&mut self, c: MemberCommand) {
        self.inbox.push(c);
    }

    /// Forwards the engine's events and refreshes the snapshot.
    fn drain(&mut self) {
        let Some(e) = self.engine.as_mut() else { return };
        while let Some(ev) = e.poll_event() {
            let _ = self.events.send(ev);
        }
        if let (Some(o), Ok(mut s)) = (e.overlay(), self.snapshot.lock()) {
            s.active = o.active().collect();
            s.eager = o.plumtree().eager().to_vec();
            s.role = o.shape().role;
            s.violations = o.violations().iter().map(|v| v.to_string()).collect();
        }
    }

    /// Our state for `convoke status` and `convoke status --topology`.
    pub fn status(&self) -> Value {
        let Some(e) = &self.engine else { return json!({ "ready": false }) };
        let Some(o) = e.overlay() else { return json!({ "ready": false }) };
        let ids = |v: Vec<crate::identity::PeerId>| v.into_iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let s = o.stats();
        let p = o.plum_stats();
        let state = self.state.as_ref().map(|s| {
            json!({ "path": s.file.path(), "cards_saved": s.cards.len(), "saved_at": s.saved_at_unix, "failing": s.failing })
        });
        json!({
            "ready": true,
            "state": state,
            "cards": e.cards(unix_now()).len(),
            "invitation": e.invitation().map(|i| i.token().encode_compact()),
            "active": ids(o.active().collect()),
            "passive": ids(o.passive().collect()),
            "suspected": ids(o.suspected().collect()),
            "eager": ids(o.plumtree().eager().to_vec()),
            "lazy": ids(o.plumtree().lazy().to_vec()),
            "members": ids(o.known_members()),
            "links": o.known_links().into_iter().map(|(a, b)| [a.to_string(), b.to_string()]).collect::<Vec<_>>(),
            "topology": {
                "policy": o.shape().policy.as_str(),
                "role": o.shape().role.as_str(),
                "max_leaves": o.leaf_capacity(),
                "standing": { "tenure": o.standing().tenure, "room": o.standing().room },
                "violations": o.violations().iter().map(|v| v.to_string()).collect::<Vec<_>>(),
                "roles": o.role_counts().into_iter().map(|(r, n)| (r.as_str().to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "super_peers": ids(o.known_graph().node_weights().filter(|(_, s)| s.is_some_and(|s| s.role == convoke_overlay::Role::Super)).map(|(p, _)| *p).collect()),
            },
            "stats": {
                "joins": s.joins, "shuffles": s.shuffles, "neighbor_ups": s.neighbor_ups,
                "neighbor_downs": s.neighbor_downs, "suspicions": s.suspicions, "quiet": s.quiet, "connects": s.connects,
                "connect_failures": s.connect_failures, "relayed": s.relayed, "relay_refused": s.relay_refused,
                "introduced": s.introduced, "delivered": p.delivered, "duplicates": p.duplicates,
                "grafts": p.grafts_sent, "prunes": p.prunes_sent, "policy_mismatches": s.mismatches,
                "promotions": s.promotions, "elections": s.elections, "step_downs": s.step_downs, "violations": s.violations,
                "rewirings": s.rewirings, "uplinks_lost": s.uplinks_lost,
            },
        })
    }

    /// Publishes the overlay's figures once a second (a no-op without a
    /// metrics recorder).
    fn publish(&mut self, now: Instant) {
        let Some(e) = &self.engine else { return };
        let Some(o) = e.overlay() else { return };
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
            last_hops: e.last_hops(),
            stats: *o.stats(),
            plum: *o.plum_stats(),
            shape: o.shape(),
            violations: o.violations().len(),
            roles: {
                let known = o.role_counts();
                let n = |r| known.get(&r).copied().unwrap_or(0);
                [n(convoke_overlay::Role::Super), n(convoke_overlay::Role::Leaf), n(convoke_overlay::Role::Member)]
            },
        });
    }
}

impl App for Member {
    type Output = ();

    fn on_ready(&mut self, ctx: &mut NodeCtx<'_>) {
        let Some(cfg) = self.cfg.take() else { return };
        let mut engine = member::Member::new(ctx.identity.clone(), cfg, self.seed, ctx.now);
        *engine.minter().candidates_mut() = ctx.minter.candidates().clone();
        if let Err(e) = engine.start(ctx.host, ctx.now, unix_now()) {
            tracing::error!("cannot make our own invitation: {e}");
            self.failed = true;
        }
        self.engine = Some(engine);
        self.drain();
    }

    fn on_event(&mut self, ctx: &mut NodeCtx<'_>, event: HostEvent) {
        if let Some(e) = self.engine.as_mut() {
            e.handle_host_event(ctx.host, event, ctx.now, unix_now());
        }
        self.drain();
    }

    fn step(&mut self, ctx: &mut NodeCtx<'_>) -> Option<()> {
        if self.failed {
            return Some(());
        }
        while let Ok(c) = self.commands.try_recv() {
            self.inbox.push(c);
        }
        let unix = unix_now();
        let e = self.engine.as_mut()?;
        for c in std::mem::take(&mut self.inbox) {
            match e.command(ctx.host, c, ctx.now, unix) {
                Ok(()) => {}
                Err(CommandError::Rsvp(why)) => tracing::warn!("{why}"),
                Err(why) => tracing::warn!("command refused: {why}"),
            }
        }
        e.handle_timeout(ctx.host, ctx.now, unix);
        let done = e.is_done(ctx.now);
        self.save_state(ctx.now, unix, done);
        self.publish(ctx.now);
        self.drain();
        done.then_some(())
    }

    fn wake(&mut self) -> impl Future<Output = ()> {
        let deadline = self.engine.as_ref().and_then(|e| e.poll_timeout()).map(tokio::time::Instant::from_std);
        let commands = &mut self.commands;
        let inbox = &mut self.inbox;
        async move {
            tokio::select! {
                Some(c) = commands.recv() => inbox.push(c),
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {}
                // No commands can come any more and no timer is set.
                else => std::future::pending::<()>().await,
            }
        }
    }

    fn status(&self) -> Option<Value> {
        Some(Member::status(self))
    }

    fn on_addresses(&mut self, ctx: &mut NodeCtx<'_>, hosts: &[std::net::SocketAddr]) {
        if let Some(e) = self.engine.as_mut() {
            e.set_host_addresses(ctx.host, hosts.to_vec(), ctx.now);
        }
        self.drain();
    }

    fn control(&mut self, req: &super::control::Request) -> Option<Value> {
        match req {
            super::control::Request::Broadcast { data } => {
                if self.engine.as_ref().and_then(|e| e.overlay()).is_none() {
                    return Some(json!({ "ok": false, "code": "not_ready", "error": "the member is still starting" }));
                }
                if data.len() > MAX_PAYLOAD {
                    let e = CommandError::TooLarge(data.len());
                    return Some(json!({ "ok": false, "code": "too_large", "error": e.to_string() }));
                }
                self.inbox.push(MemberCommand::Broadcast(data.clone().into_bytes()));
                Some(json!({ "ok": true }))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, PeerId};
    use crate::token::{Candidate, CandidateKind, InvitationParams, Token};
    use convoke_overlay::{Card, PeerKey};
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
        let card = |peer: PeerId, t: &str| Card::new(peer, t.as_bytes().to_vec());
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
        assert!(check_card(&Card::new(alice.peer_id(), vec![0xff, 0xfe]), 1_001).is_err());
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
