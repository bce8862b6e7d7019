//! The member engine: what makes a node a member of a network, sans-IO.
//!
//! A member is a [`Host`] (connectivity and sessions) plus an [`Overlay`]
//! (membership and broadcast) plus the glue between them, which lives
//! here and nowhere else:
//!
//! * **candidates and tokens** — [`Minter`] holds our addresses (interface
//!   addresses from the driver, reflexive ones learnt from host events) and
//!   is the one place that mints invitations, cards and RSVPs, bounded to
//!   the token limits;
//! * **cards** — every member listens with one reusable, signed invitation,
//!   its contact card, which the overlay hands to peers. A card is used
//!   only if it is a valid invitation signed by the peer it names
//!   ([`check_card`]);
//! * **dialing** — when the overlay asks for a link ([`Output::Connect`]),
//!   the member connects with the card; when the peer's network wants an
//!   RSVP first, our signed RSVP travels along a route of active links
//!   whose members relay it unchanged (they cannot forge it: the receiver's
//!   engine checks it against its own invitation), and both sides punch at
//!   once with nobody pasting anything;
//! * **framing** — overlay messages travel on each session's reliable
//!   stream ([`framing`]).
//!
//! ## Driving it
//!
//! The member sits on a [`Host`] its driver owns (the tokio runtime's
//! node, the simulator's virtual node, [`MemberHost`] in tests): the driver
//! feeds datagrams and timeouts to the host and hands every host event to
//! [`Member::handle_host_event`]; it calls [`Member::handle_timeout`] when
//! [`Member::poll_timeout`] comes, and [`Member::command`] for what the
//! application asks. After every input it drains the host's transmits and
//! events and the member's [`Member::poll_event`] — the engine's drive
//! rule. Time comes in as arguments (an `Instant` for timers, unix seconds
//! for token validity), randomness from the seed given to [`Member::new`]:
//! the member never reads a clock, touches a socket or draws from the OS.

mod candidates;
pub mod framing;
mod member_host;
mod mint;
pub mod reach;
pub mod saved;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use convoke_overlay::wire::MAX_MESSAGE;
use convoke_overlay::{Card, Config, DownReason, Event, Message, Output, Overlay, PeerKey, PolicyKind, Role};

pub use candidates::LocalCandidates;
pub use member_host::MemberHost;
pub use mint::{Minter, card_of, check_card};
pub use reach::{REACHED_UNASKED, SuperPeer};

use crate::host::{Host, HostEvent};
use crate::ice::{AttemptId, Event as IceEvent, FailReason, Via};
use crate::identity::{Identity, PeerId, PublicKey};
use crate::token::{ConnectionMode, InitialMode, Invitation, InvitationParams, NatInfo, TokenError};

impl PeerKey for PeerId {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend(self.public_key().0);
    }
    fn take(input: &mut &[u8]) -> Option<Self> {
        <[u8; 32]>::take(input).map(|k| PublicKey(k).peer_id())
    }
}

/// Largest broadcast payload: the message and its header fit one frame.
pub const MAX_PAYLOAD: usize = MAX_MESSAGE - 1024;

/// How a member runs.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// The invitation to join with at start; `None` starts a new network
    /// (or waits for [`MemberCommand::Join`]).
    pub join: Option<Invitation>,
    /// Cards of members of a network we were in (saved before a restart,
    /// see [`Member::cards`]): when there is no `join`, or its member does
    /// not answer, we join through these in turn. One that wants an RSVP
    /// counts as not answering (nobody carries it). Expired and our own
    /// are skipped.
    pub rejoin: Vec<Invitation>,
    /// Our own cards from before a restart ([`Member::own_cards`]): still
    /// answered, since other members saved them. Expired ones and any not
    /// signed by us are skipped.
    pub own_cards: Vec<Invitation>,
    /// Overlay parameters. Whether we start as a super-peer
    /// (`overlay.super_capable`) follows `super_peer`.
    pub overlay: Config,
    /// Whether we serve as a super-peer (a hub): `Auto` elects us under a
    /// hierarchy once we find ourselves reachable (see [`reach`]).
    pub super_peer: SuperPeer,
    /// Lifetime of our invitation (our contact card), seconds: 7 days.
    pub card_lifetime: u64,
    /// Whether invitees must send an RSVP before we answer (for networks
    /// that let no first contact in).
    pub rsvp_required: bool,
    /// How long a peer dialing our card checks before it asks for our RSVP,
    /// seconds: 5. Members relay RSVPs with no person in the loop, and a
    /// path that exists answers within a second, so waiting the 30 s a
    /// person's invitation allows only keeps filtered members apart (and
    /// must stay well below the overlay's `connect_timeout`).
    pub card_rsvp_window: u32,
    /// Send our RSVP along the route as soon as the overlay asks for a
    /// link, not only once the peer stayed silent for `card_rsvp_window`:
    /// true. The route is a walk that just ended here; seconds later its
    /// links may have changed.
    pub rsvp_with_every_dial: bool,
}

impl Default for MemberConfig {
    fn default() -> Self {
        Self {
            join: None,
            rejoin: Vec::new(),
            own_cards: Vec::new(),
            overlay: Config { announce_views: 5_000, ..Config::default() },
            card_lifetime: 7 * 86_400,
            rsvp_required: false,
            card_rsvp_window: 5,
            rsvp_with_every_dial: true,
            super_peer: SuperPeer::Auto,
        }
    }
}

/// How a link came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialed {
    /// We dialed the member whose invitation we joined with.
    Contact,
    /// We dialed a peer the overlay asked for; `relayed` when our RSVP
    /// went to it through introducers.
    Overlay {
        /// Whether an RSVP was relayed for it.
        relayed: bool,
    },
    /// The peer dialed us.
    Inbound,
}

/// Why a link the member wanted was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectFailure {
    /// The peer's card is not a usable invitation signed by it.
    #[error("{0}")]
    BadCard(String),
    /// The peer's network wants an RSVP and no route of active links leads
    /// to it.
    #[error("it needs an RSVP and no introducer route leads to it")]
    NoRoute,
    /// Connectivity checks found no path (or were closed).
    #[error("no path: {0:?}")]
    Ice(FailReason),
    /// The secure handshake did not finish.
    #[error("handshake: {0}")]
    Handshake(&'static str),
}

/// What a member tells its application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// Our invitation (contact card) is ready: anyone with it can join.
    Invitation(String),
    /// The link to the member whose invitation we used is up; we asked in.
    Joined(PeerId),
    /// A session to a member is up.
    Linked {
        /// Who.
        peer: PeerId,
        /// Single token or RSVP.
        via: Via,
        /// Who dialed, and how.
        dialed: Dialed,
    },
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
    /// A link the member wanted could not be made.
    ConnectFailed(PeerId, ConnectFailure),
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
    /// A session was closed because the peer broke the framing.
    Misbehaved(PeerId, String),
    /// A peer runs another topology policy: no link with it.
    PolicyMismatch {
        /// The peer.
        peer: PeerId,
        /// Its policy.
        policy: PolicyKind,
    },
    /// Our role under the topology policy changed (a leaf became a
    /// super-peer for want of one).
    RoleChanged(Role),
    /// A topology policy invariant broke (what, in words).
    Violation(String),
}

/// What an application asks of a member.
#[derive(Debug, Clone)]
pub enum MemberCommand {
    /// Broadcast these bytes to every member.
    Broadcast(Vec<u8>),
    /// Take an RSVP that came out of band (a newcomer's first contact).
    AcceptRsvp(String),
    /// Join the network of this invitation (a member's card).
    Join(Box<Invitation>),
    /// Leave: tell neighbours, close sessions; [`Member::is_done`] then.
    Leave,
}

/// A command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// [`Member::start`] has not run yet.
    #[error("the member is still starting")]
    NotReady,
    /// The broadcast is larger than one frame carries.
    #[error("a broadcast carries at most {MAX_PAYLOAD} bytes, not {0}")]
    TooLarge(usize),
    /// The RSVP was refused (the reason says why).
    #[error("refused the RSVP: {0}")]
    Rsvp(String),
    /// The member is leaving.
    #[error("the member is leaving")]
    Leaving,
}

struct Link {
    peer: PeerId,
    rx: Vec<u8>,
    tx: Vec<u8>,
    close_when_flushed: bool,
    /// When the close was asked for: we finish the stream and close once
    /// the peer has everything, or after [`CLOSE_GRACE`].
    closing_since: Option<Instant>,
    /// Whether our half of the stream is finished.
    finished: bool,
}

struct Dial {
    peer: PeerId,
    route: Vec<PeerId>,
    contact: bool,
    /// A saved card (no person to carry our RSVP to its member).
    saved: bool,
    relayed: bool,
    invitation: Invitation,
}

/// Whether an address is reached across the internet (not loopback, a
/// private, shared, link-local or unique-local range).
fn is_global(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || v4.is_unspecified())
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback() || v6.is_unspecified() || s[0] & 0xffc0 == 0xfe80 || s[0] & 0xfe00 == 0xfc00)
        }
    }
}

/// How long a closing link may take to deliver its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Cards of ours still answered after newer ones were minted: members
/// hold our older cards in their views for a while.
const CARDS_ANSWERED: usize = 4;
/// How soon after learning an address we mint a new card (answers come in
/// bunches: one card for the bunch).
const CARD_REFRESH_GAP: Duration = Duration::from_secs(10);
/// How long leaving may take.
const LEAVE_GRACE: Duration = Duration::from_millis(500);

/// One member of a network (see the module docs).
pub struct Member {
    cfg: MemberConfig,
    minter: Minter,
    seed: [u8; 32],
    base: Instant,
    overlay: Option<Overlay<PeerId>>,
    invitation: Option<Invitation>,
    contact: Option<Invitation>,
    /// Whether `contact` is a saved card (not a person's invitation).
    contact_saved: bool,
    /// Saved cards to try when the contact does not answer.
    fallbacks: VecDeque<Invitation>,
    /// Saved cards still to try in this pass through them; and the passes
    /// that found nobody in a row (each waits twice as long, up to 16×).
    pass_left: usize,
    passes: u32,
    /// When our card was minted (unix seconds, and in the engine's clock).
    card_minted: (u64, Instant),
    /// Whether we learned an address or our NAT since: mint a new card.
    card_stale: bool,
    /// The cards of ours we still answer on, oldest first.
    listening: VecDeque<Invitation>,
    /// How far asking our neighbours where they see us has got: 0 not
    /// yet, 1 the first neighbour asked, 2 two neighbours asked at once.
    observed: u8,
    /// Whether what we know of our addresses came from neighbours (then a
    /// move asks them again, whatever the host classified before).
    asked_neighbours: bool,
    links: BTreeMap<AttemptId, Link>,
    by_peer: BTreeMap<PeerId, AttemptId>,
    dialing: BTreeMap<AttemptId, Dial>,
    events: VecDeque<MemberEvent>,
    leaving: Option<Instant>,
    /// Since when our active view has been empty (we joined once).
    alone_since: Option<Instant>,
    /// Whether the link to our contact was ever up: only then does being
    /// alone mean we were cut off (not that the contact is out of reach).
    joined_once: bool,
    last_hops: u16,
    /// Overlay messages for a peer we have no session with.
    unsent: u64,
    /// What we learned of our reachability (to elect ourselves).
    reach: reach::Reachability,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("peer", &self.minter.peer_id())
            .field("links", &self.links.len())
            .field("dialing", &self.dialing.len())
            .finish_non_exhaustive()
    }
}

impl Member {
    /// A member for `identity`, not started. `seed` keys its randomness
    /// (token ids, overlay choices).
    pub fn new(identity: Identity, mut cfg: MemberConfig, seed: [u8; 32], now: Instant) -> Self {
        match cfg.super_peer {
            SuperPeer::Always => cfg.overlay.super_capable = true,
            SuperPeer::Never => cfg.overlay.super_capable = false,
            SuperPeer::Auto => {}
        }
        let mut mint_seed = seed;
        mint_seed[0] ^= 0x5a;
        Self {
            cfg,
            minter: Minter::new(identity, mint_seed),
            seed,
            base: now,
            overlay: None,
            invitation: None,
            contact: None,
            contact_saved: false,
            fallbacks: VecDeque::new(),
            pass_left: 0,
            passes: 0,
            card_minted: (0, now),
            card_stale: false,
            listening: VecDeque::new(),
            observed: 0,
            asked_neighbours: false,
            links: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            dialing: BTreeMap::new(),
            events: VecDeque::new(),
            leaving: None,
            alone_since: None,
            joined_once: false,
            last_hops: 0,
            unsent: 0,
            reach: reach::Reachability::default(),
        }
    }

    /// The minter, with our candidates (add interface addresses here
    /// before [`Member::start`]).
    pub fn minter(&mut self) -> &mut Minter {
        &mut self.minter
    }

    /// Our candidates.
    pub fn candidates(&self) -> &LocalCandidates {
        self.minter.candidates()
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.minter.peer_id()
    }

    /// The overlay, once started.
    pub fn overlay(&self) -> Option<&Overlay<PeerId>> {
        self.overlay.as_ref()
    }

    /// Our invitation (contact card), once started.
    pub fn invitation(&self) -> Option<&Invitation> {
        self.invitation.as_ref()
    }

    /// Overlay messages dropped because we had no session with their
    /// addressee (the overlay and the sessions disagreed for a moment).
    pub fn unsent(&self) -> u64 {
        self.unsent
    }

    /// Hops the last broadcast we received took.
    pub fn last_hops(&self) -> u16 {
        self.last_hops
    }

    /// Peers we have a session with.
    pub fn linked(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.by_peer.keys().copied()
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_millis() as u64
    }

    fn emit(&mut self, e: MemberEvent) {
        self.events.push_back(e);
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop_front()
    }

    /// Starts: mints our card (with the candidates known now), listens on
    /// it and, if the config names one, joins through a contact.
    pub fn start(&mut self, host: &mut Host, now: Instant, unix_now: u64) -> Result<(), TokenError> {
        let me = self.peer_id();
        for old in std::mem::take(&mut self.cfg.own_cards) {
            if old.inviter() == me && old.token().body.expires_at > unix_now && self.listening.len() < CARDS_ANSWERED {
                host.listen(old.clone());
                self.listening.push_back(old);
            }
        }
        let inv = self.mint_card(host, now, unix_now)?;
        self.overlay = Some(Overlay::new(card_of(&inv), self.cfg.overlay, self.seed, self.ms(now)));
        self.invitation = Some(inv);
        // Cards of networks that let no first contact in want an RSVP at
        // once, which nobody carries for a saved card: they cannot serve.
        self.fallbacks = std::mem::take(&mut self.cfg.rejoin)
            .into_iter()
            .filter(|c| c.inviter() != me && c.token().body.expires_at > unix_now)
            .filter(|c| c.token().body.connection_mode.initial != InitialMode::Bidirectional)
            .collect();
        self.pass_left = self.fallbacks.len();
        if let Some(contact) = self.cfg.join.clone() {
            self.join(host, contact, now, false);
        } else if let Some(card) = self.fallbacks.pop_front() {
            self.pass_left -= 1;
            self.join(host, card, now, true);
        }
        self.after(host, now, unix_now);
        Ok(())
    }

    /// Mints our card with the candidates and NAT we know now, listens on
    /// it (and on the last few before it, which others still hold) and
    /// tells the application.
    fn mint_card(&mut self, host: &mut Host, now: Instant, unix_now: u64) -> Result<Invitation, TokenError> {
        if let Some(nat) = host.nat() {
            self.minter.set_nat(Some(nat));
        }
        let params = InvitationParams {
            lifetime_secs: self.cfg.card_lifetime,
            mode: ConnectionMode {
                initial: if self.cfg.rsvp_required { InitialMode::Bidirectional } else { InitialMode::Unidirectional },
                rsvp_supported: true,
                rsvp_timeout_seconds: self.cfg.card_rsvp_window.max(1),
                reusable: true,
            },
            ..InvitationParams::default()
        };
        let inv = self.minter.invitation(params, unix_now)?;
        host.listen(inv.clone());
        self.listening.push_back(inv.clone());
        while self.listening.len() > CARDS_ANSWERED {
            if let Some(old) = self.listening.pop_front() {
                host.unlisten(old.token().body.token_id);
            }
        }
        self.card_minted = (unix_now, now);
        self.card_stale = false;
        self.emit(MemberEvent::Invitation(inv.token().encode_compact()));
        Ok(inv)
    }

    /// When our card should be replaced: half its lifetime after it was
    /// minted, or soon after we learned where we are seen from.
    fn card_due(&self) -> Option<Instant> {
        self.overlay.as_ref()?;
        let (_, at) = self.card_minted;
        let half = at.checked_add(self.card_half_life())?;
        Some(if self.card_stale { half.min(at + CARD_REFRESH_GAP) } else { half })
    }

    /// Half the card's lifetime, and at least [`CARD_REFRESH_GAP`] (a
    /// one-second card must not be minted again on every input).
    fn card_half_life(&self) -> Duration {
        Duration::from_secs(self.cfg.card_lifetime / 2).max(CARD_REFRESH_GAP)
    }

    /// Replaces our card when it is due ([`Member::card_due`]): new members
    /// get the fresh one in joins and shuffles, and the old one stays
    /// answered until it expires or [`CARDS_ANSWERED`] newer ones exist.
    fn refresh_card(&mut self, host: &mut Host, now: Instant, unix_now: u64) {
        // The engine's clock stops while a laptop sleeps; the unix clock,
        // which cards expire by, does not.
        let slept_past = unix_now >= self.card_minted.0.saturating_add(self.card_half_life().as_secs());
        if self.leaving.is_some() || (self.card_due().is_none_or(|t| now < t) && !slept_past) {
            return;
        }
        match self.mint_card(host, now, unix_now) {
            Ok(inv) => {
                if let Some(o) = self.overlay.as_mut() {
                    o.set_card(card_of(&inv).token);
                }
                self.invitation = Some(inv);
            }
            // Our own token failing its own checks is a bug; try again at
            // the next due time rather than every input.
            Err(_) => self.card_minted.1 = now,
        }
    }

    /// Asks linked members where they see us (STUN Binding to the
    /// session's address; every node answers), when no STUN server told us
    /// yet: the first neighbour's answer gives our public address; two
    /// neighbours at distinct addresses asked at once also classify our
    /// NAT's mapping, as two STUN servers would.
    fn observe(&mut self, host: &mut Host, now: Instant) {
        if self.observed >= 2 || (host.nat().is_some() && !self.asked_neighbours) {
            return;
        }
        // Two answers classify our mapping only if they come from the same
        // side of our NAT: a neighbour on our LAN sees our host address, a
        // public one our mapping, and the two would look symmetric.
        let mut remotes: Vec<std::net::SocketAddr> = Vec::new();
        for &id in self.by_peer.values() {
            if let Some(r) = host.session(id).map(|s| s.remote)
                && !remotes.iter().any(|x| x.ip() == r.ip())
                && remotes.first().is_none_or(|f| f.is_ipv4() == r.is_ipv4() && is_global(f.ip()) == is_global(r.ip()))
            {
                remotes.push(r);
            }
        }
        match (self.observed, remotes.as_slice()) {
            (0, [first]) => {
                host.query_stun(*first, now);
                self.observed = 1;
                self.asked_neighbours = true;
            }
            (_, [first, second, ..]) => {
                host.query_stun(*first, now);
                host.query_stun(*second, now);
                self.observed = 2;
                self.asked_neighbours = true;
            }
            _ => {}
        }
    }

    /// Our interface addresses changed (the driver watches them): the
    /// public address and NAT we knew belong to the old network, so we ask
    /// our neighbours again (or the driver its STUN servers) and mint a
    /// card with the new addresses. Sessions on a vanished address fail
    /// their consent checks; the overlay replaces those links, and a member
    /// left alone rejoins through its contact or saved cards. Returns
    /// whether anything changed.
    pub fn set_host_addresses(&mut self, host: &mut Host, hosts: Vec<std::net::SocketAddr>, now: Instant) -> bool {
        let before = self.minter.candidates().hosts().to_vec();
        if !self.minter.candidates_mut().set_hosts(hosts) {
            return false;
        }
        self.card_stale = true;
        self.observed = 0;
        // An address gone means another network (an address added, a
        // container bridge coming up, does not): what made us a
        // super-peer was the old network's, so we step down and the
        // election runs again from the new one's (see `elect`).
        let gone = before.iter().any(|a| !self.minter.candidates().hosts().contains(a));
        if gone {
            self.reach.moved(host.nat_rounds());
        }
        let ms = self.ms(now);
        if let Some(o) = self.overlay.as_mut() {
            o.addresses_changed();
            if gone && self.cfg.super_peer == SuperPeer::Auto {
                o.step_down(ms);
            }
        }
        self.observe(host, now);
        true
    }

    /// Our cards still answered and valid at `unix_now`, the newest last:
    /// what a member saves so that, restarted on the same address and
    /// port, the cards others saved of it work again
    /// ([`MemberConfig::own_cards`]).
    pub fn own_cards(&self, unix_now: u64) -> Vec<Invitation> {
        self.listening.iter().filter(|c| c.token().body.expires_at > unix_now).cloned().collect()
    }

    /// The cards we hold and could rejoin through: our neighbours', then
    /// the passive view's, then the member we joined with; valid at
    /// `unix_now`, ours left out. What a member saves to come back to its
    /// network after a restart ([`MemberConfig::rejoin`]).
    pub fn cards(&self, unix_now: u64) -> Vec<Invitation> {
        let me = self.peer_id();
        let mut seen = std::collections::BTreeSet::new();
        let overlay = self.overlay.iter().flat_map(|o| o.cards()).filter_map(|c| check_card(c, unix_now).ok());
        // Before we are in, the saved cards not yet tried are still ours to
        // keep (a restart while offline must not forget them).
        let saved = self.contact.iter().chain(&self.fallbacks);
        overlay
            .chain(saved.filter(|c| c.token().body.expires_at > unix_now).cloned())
            .filter(|c| c.inviter() != me && seen.insert(c.inviter()))
            .collect()
    }

    fn join(&mut self, host: &mut Host, contact: Invitation, now: Instant, saved: bool) {
        self.contact = Some(contact.clone());
        self.contact_saved = saved;
        let _ = self.dial(host, contact, Vec::new(), true, now);
    }

    /// The contact did not answer: try the next saved card still valid
    /// (the failed one goes to the back of the line), once each per pass.
    /// After a pass (or with no other card) the contact stays, and
    /// [`Member::rejoin_if_alone`] starts the next pass after a wait.
    fn next_contact(&mut self, host: &mut Host, now: Instant, unix_now: u64) {
        if self.leaving.is_some() || self.pass_left == 0 {
            return;
        }
        self.fallbacks.retain(|c| c.token().body.expires_at > unix_now);
        let Some(card) = self.fallbacks.pop_front() else { return };
        self.pass_left = self.pass_left.saturating_sub(1).min(self.fallbacks.len());
        if let Some(failed) = self.contact.take() {
            self.fallbacks.push_back(failed);
        }
        self.join(host, card, now, true);
    }

    fn dial(
        &mut self,
        host: &mut Host,
        invitation: Invitation,
        route: Vec<PeerId>,
        contact: bool,
        now: Instant,
    ) -> AttemptId {
        let peer = invitation.inviter();
        // Probing is for first contact only: an introduction that needs it
        // would spend up to 2,000 probes inside the overlay's connect
        // timeout, and the overlay can pick another peer instead.
        let attempt = host.join_probing(&invitation, now, contact && host.endpoint().config().probing);
        let saved = contact && self.contact_saved;
        self.reach.dialing(&invitation, now);
        self.dialing.insert(attempt, Dial { peer, route, contact, saved, relayed: false, invitation });
        attempt
    }

    /// Takes an application's command.
    pub fn command(
        &mut self,
        host: &mut Host,
        c: MemberCommand,
        now: Instant,
        unix_now: u64,
    ) -> Result<(), CommandError> {
        if self.leaving.is_some() {
            return Err(CommandError::Leaving);
        }
        let r = match c {
            MemberCommand::Broadcast(data) => {
                let ms = self.ms(now);
                match self.overlay.as_mut() {
                    None => Err(CommandError::NotReady),
                    Some(_) if data.len() > MAX_PAYLOAD => Err(CommandError::TooLarge(data.len())),
                    Some(o) => {
                        o.broadcast(data, ms);
                        Ok(())
                    }
                }
            }
            MemberCommand::AcceptRsvp(text) => {
                host.accept_rsvp(&text, now).map(|_| ()).map_err(|e| CommandError::Rsvp(e.to_string()))
            }
            MemberCommand::Join(inv) => {
                if self.overlay.is_none() {
                    self.cfg.join = Some(*inv);
                } else {
                    self.join(host, *inv, now, false);
                }
                Ok(())
            }
            MemberCommand::Leave => {
                let peers: Vec<PeerId> = self.by_peer.keys().copied().collect();
                for p in peers {
                    self.send(host, p, &Message::Disconnect { alive: false });
                }
                for l in self.links.values_mut() {
                    l.close_when_flushed = true;
                }
                self.leaving = Some(now);
                Ok(())
            }
        };
        self.after(host, now, unix_now);
        r
    }

    /// Whether the member has left (after [`MemberCommand::Leave`], once its
    /// links closed or a grace period passed).
    pub fn is_done(&self, now: Instant) -> bool {
        self.leaving.is_some_and(|t| self.links.is_empty() || now.saturating_duration_since(t) > LEAVE_GRACE)
    }

    fn send(&mut self, host: &mut Host, to: PeerId, msg: &Message<PeerId>) {
        let Some((id, link)) = self.by_peer.get(&to).and_then(|&id| Some((id, self.links.get_mut(&id)?))) else {
            self.unsent += 1;
            return;
        };
        framing::encode(msg, &mut link.tx);
        let n = host.write(id, &link.tx);
        link.tx.drain(..n);
    }

    /// Takes a host event (every one, in order).
    pub fn handle_host_event(&mut self, host: &mut Host, event: HostEvent, now: Instant, unix_now: u64) {
        // A new public address, or a NAT classification our card does not
        // carry, belongs in our card (peer-reflexive addresses only go in
        // the tokens minted per attempt).
        let learned = self.minter.learn(&event);
        let carried = self.invitation.as_ref().map(|i| i.token().body.connection_info.nat);
        self.card_stale |= match &event {
            HostEvent::StunMapped { .. } => learned,
            HostEvent::NatClassified(nat) => carried.is_some_and(|c| c != Some(*nat)),
            _ => false,
        };
        let ms = self.ms(now);
        match event {
            HostEvent::Established { session, peer, via, remote, inviter, .. } => {
                self.reach.established(remote.ip(), inviter, via, now);
                let peer = peer.peer_id();
                self.links.insert(
                    session,
                    Link {
                        peer,
                        rx: Vec::new(),
                        tx: Vec::new(),
                        close_when_flushed: false,
                        closing_since: None,
                        finished: false,
                    },
                );
                // A second session to the same peer (both dialled at once)
                // replaces the first for sending; either may receive.
                self.by_peer.insert(peer, session);
                let dial = self.dialing.remove(&session);
                let dialed = match &dial {
                    Some(d) if d.contact => Dialed::Contact,
                    Some(d) => Dialed::Overlay { relayed: d.relayed },
                    None => Dialed::Inbound,
                };
                self.emit(MemberEvent::Linked { peer, via, dialed });
                if let (Some(o), Some(d)) = (self.overlay.as_mut(), dial) {
                    if d.contact {
                        self.joined_once = true;
                        o.join(card_of(&d.invitation), ms);
                        self.events.push_back(MemberEvent::Joined(peer));
                    } else {
                        o.link_up(peer, ms);
                    }
                }
                self.observe(host, now);
            }
            HostEvent::Readable { session } => self.read(host, session, now),
            HostEvent::Closed { session, .. } => {
                if let Some(l) = self.links.remove(&session)
                    && self.by_peer.get(&l.peer) == Some(&session)
                {
                    self.by_peer.remove(&l.peer);
                    if let Some(o) = self.overlay.as_mut() {
                        o.link_down(l.peer, ms);
                    }
                }
            }
            HostEvent::HandshakeFailed { session, reason } => {
                self.dial_failed(host, session, ConnectFailure::Handshake(reason), now, unix_now)
            }
            HostEvent::Ice(IceEvent::Failed { attempt, reason, .. }) => {
                self.dial_failed(host, attempt, ConnectFailure::Ice(reason), now, unix_now)
            }
            HostEvent::Ice(IceEvent::RsvpNeeded { attempt }) => self.rsvp_needed(host, attempt, now, unix_now),
            _ => {}
        }
        self.after(host, now, unix_now);
    }

    /// Our RSVP for an attempt whose peer must hear from us first: to the
    /// contact's person out of band, or along the overlay's route (unless
    /// it went with the dial already).
    fn rsvp_needed(&mut self, host: &mut Host, attempt: AttemptId, now: Instant, unix_now: u64) {
        let Some(d) = self.dialing.get(&attempt) else { return };
        if d.saved {
            // A saved card's member wants to hear from us first, and no
            // person carries our RSVP: try the next card.
            self.dial_failed(host, attempt, ConnectFailure::NoRoute, now, unix_now);
            host.close(attempt, now);
            return;
        }
        if d.contact {
            let Some(id) = host.endpoint().rsvp_token_id(attempt) else { return };
            let t = self.minter.rsvp(&d.invitation, id, unix_now);
            self.emit(MemberEvent::RsvpForContact(t.encode_compact()));
            return;
        }
        if d.relayed {
            return; // sent when we dialed; the peer is checking towards us
        }
        let Some(mut overlay) = self.overlay.take() else { return };
        let sent = self.relay_rsvp(host, &mut overlay, attempt, unix_now);
        self.overlay = Some(overlay);
        if !sent {
            self.dial_failed(host, attempt, ConnectFailure::NoRoute, now, unix_now);
            host.close(attempt, now);
        }
    }

    /// Mints our RSVP for an overlay dial and sends it along the dial's
    /// route from the furthest hop that is our neighbour now, or through a
    /// neighbour linked to the peer (routes are remembered; links change).
    /// Whether it went.
    fn relay_rsvp(&mut self, host: &Host, overlay: &mut Overlay<PeerId>, attempt: AttemptId, unix_now: u64) -> bool {
        let Some(id) = host.endpoint().rsvp_token_id(attempt) else { return false };
        let Some(d) = self.dialing.get_mut(&attempt) else { return false };
        let mut route = d.route.clone();
        if route.last() != Some(&d.peer) {
            route.push(d.peer);
        }
        if !overlay.has_route(&route) {
            return false;
        }
        let token = self.minter.rsvp(&d.invitation, id, unix_now).encode_compact().into_bytes();
        let Some(route) = overlay.introduce_along(&route, token) else { return false };
        d.relayed = true;
        let peer = d.peer;
        self.emit(MemberEvent::RsvpRelayed { peer, route });
        true
    }

    fn read(&mut self, host: &mut Host, id: AttemptId, now: Instant) {
        let Some(link) = self.links.get_mut(&id) else { return };
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = host.read(id, &mut buf);
            if n == 0 {
                break;
            }
            link.rx.extend_from_slice(&buf[..n]);
        }
        while host.recv_datagram(id).is_some() {}
        let peer = link.peer;
        let (msgs, bad) = framing::decode(&mut link.rx);
        let ms = self.ms(now);
        if let Some(o) = self.overlay.as_mut() {
            for m in msgs {
                o.handle(peer, m, ms);
            }
        }
        if let Some(why) = bad {
            self.emit(MemberEvent::Misbehaved(peer, why.to_string()));
            host.close(id, now);
        }
    }

    /// Runs what is due at `now` (the overlay's rounds, closing links,
    /// rejoining when alone). Cheap when nothing is.
    pub fn handle_timeout(&mut self, host: &mut Host, now: Instant, unix_now: u64) {
        let ms = self.ms(now);
        if let Some(o) = self.overlay.as_mut()
            && o.poll_timeout() <= ms
        {
            o.tick(ms);
        }
        self.rejoin_if_alone(host, now);
        self.refresh_card(host, now, unix_now);
        self.after(host, now, unix_now);
    }

    /// When [`Member::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let overlay = self.overlay.as_ref().map(|o| self.base + Duration::from_millis(o.poll_timeout()));
        let closing = self.links.values().filter_map(|l| l.closing_since).min().map(|t| t + CLOSE_GRACE);
        // Once done (no links, or the grace passed) the driver stops.
        let leaving = self.leaving.filter(|_| !self.links.is_empty()).map(|t| t + LEAVE_GRACE);
        let dialing_contact = self.dialing.values().any(|d| d.contact);
        let rejoin = self
            .alone_since
            .filter(|_| !dialing_contact && (self.joined_once || self.contact_saved))
            .and_then(|t| Some(t + self.rejoin_wait()?));
        let card = self.card_due().filter(|_| self.leaving.is_none());
        [overlay, closing, leaving, rejoin, card].into_iter().flatten().min()
    }

    /// Four rounds; for a member going through saved cards, twice as long
    /// after each pass that found nobody, up to 64 rounds.
    fn rejoin_wait(&self) -> Option<Duration> {
        let backoff = if self.contact_saved { 1 << self.passes.min(4) } else { 1 };
        self.overlay.as_ref().map(|o| Duration::from_millis(4 * backoff * o.config().round))
    }

    /// Does what the overlay asked, moves queued frames and closes links
    /// that asked for it: the tail of every input.
    fn after(&mut self, host: &mut Host, now: Instant, unix_now: u64) {
        self.elect(host, now);
        self.pump(host, now, unix_now);
        self.flush(host, now);
    }

    /// Under a hierarchy, a leaf set to `Auto` that finds itself reachable
    /// and has room for leaves (`max_leaves` not 0) becomes a super-peer
    /// (see [`reach`]); one that moves steps down
    /// (see [`Member::set_host_addresses`]) and is elected again here once
    /// its new network qualifies.
    fn elect(&mut self, host: &Host, now: Instant) {
        self.reach.nat_rounds(host.nat_rounds());
        let ms = self.ms(now);
        let Some(o) = self.overlay.as_mut() else { return };
        // A member whose operator gave it no room for leaves serves nobody
        // as a super-peer: reachability alone does not elect it.
        if self.cfg.super_peer != SuperPeer::Auto || !o.electable() || o.config().max_leaves == Some(0) {
            return;
        }
        // Cheap first: most leaves do not qualify even on the internet.
        // The host's classification, not the one our card carries: that
        // one changes when the host's event reaches us, which may be after
        // this input.
        let nat = match self.minter.candidates().port_mapped() {
            Some(_) => Some(NatInfo::PORT_MAPPED),
            None => host.nat(),
        };
        if !self.reach.qualifies(nat, true) {
            return;
        }
        if self.reach.qualifies(nat, false)
            || self.minter.candidates().select().iter().any(|c| is_global(c.address.ip()))
        {
            o.elect(ms);
        }
    }

    fn pump(&mut self, host: &mut Host, now: Instant, unix_now: u64) {
        let Some(mut overlay) = self.overlay.take() else { return };
        while let Some(o) = overlay.poll() {
            match o {
                Output::Send { to, msg } => self.send(host, to, &msg),
                Output::Connect { card, route } => self.connect(host, &mut overlay, card, route, now, unix_now),
                Output::Close(peer) => {
                    // Every session with that peer (a second one may have
                    // come up while the first lingered), and any link to
                    // it still being made.
                    for l in self.links.values_mut().filter(|l| l.peer == peer) {
                        l.close_when_flushed = true;
                    }
                    let stale: Vec<AttemptId> =
                        self.dialing.iter().filter(|(_, d)| d.peer == peer && !d.contact).map(|(a, _)| *a).collect();
                    for a in stale {
                        self.dialing.remove(&a);
                        host.close(a, now);
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
                    Event::PolicyMismatch { peer, policy } => self.emit(MemberEvent::PolicyMismatch { peer, policy }),
                    Event::RoleChanged(role) => self.emit(MemberEvent::RoleChanged(role)),
                    Event::Violation(v) => self.emit(MemberEvent::Violation(v)),
                    Event::Introduced { from, token } => {
                        let result = match std::str::from_utf8(&token) {
                            Ok(text) => {
                                host.accept_rsvp_probing(text, now, false).map(|_| ()).map_err(|e| e.to_string())
                            }
                            Err(_) => Err("the token is not text".to_owned()),
                        };
                        self.emit(MemberEvent::Introduced { from, result });
                    }
                },
            }
        }
        self.overlay = Some(overlay);
    }

    fn connect(
        &mut self,
        host: &mut Host,
        overlay: &mut Overlay<PeerId>,
        card: Card<PeerId>,
        route: Vec<PeerId>,
        now: Instant,
        unix_now: u64,
    ) {
        match check_card(&card, unix_now) {
            Ok(inv) => {
                self.emit(MemberEvent::Connecting { peer: card.peer, route: route.clone() });
                // A session with the peer is still open (a replaced link
                // lingering): ask over it instead of dialing a second one.
                let open = self.by_peer.get(&card.peer).and_then(|id| self.links.get(id));
                if open.is_some_and(|l| !l.close_when_flushed) {
                    overlay.link_up(card.peer, self.ms(now));
                    return;
                }
                let attempt = self.dial(host, inv, route, false, now);
                // Both sides check from the start: the route is fresh now
                // (a walk that just ended here), and an RSVP that finds the
                // peer reachable anyway costs one relayed token.
                if self.cfg.rsvp_with_every_dial {
                    self.relay_rsvp(host, overlay, attempt, unix_now);
                }
            }
            Err(e) => {
                overlay.link_failed(card.peer, self.ms(now));
                self.emit(MemberEvent::ConnectFailed(card.peer, ConnectFailure::BadCard(e)));
            }
        }
    }

    /// Moves queued frames; closes links that asked for it once flushed
    /// (or after a grace period), and links whose peer reads nothing.
    fn flush(&mut self, host: &mut Host, now: Instant) {
        let mut close = Vec::new();
        for (&id, l) in &mut self.links {
            if !l.tx.is_empty() {
                let n = host.write(id, &l.tx);
                l.tx.drain(..n);
            }
            let overdue = l.closing_since.is_some_and(|t| now.saturating_duration_since(t) >= CLOSE_GRACE);
            if overdue {
                close.push(id);
            } else if l.close_when_flushed && l.tx.is_empty() {
                // A DISCONNECT queued just before must reach the peer: end
                // our stream and close once it is acknowledged.
                l.closing_since.get_or_insert(now);
                if !l.finished {
                    host.finish(id);
                    l.finished = true;
                }
                if host.send_done(id) {
                    close.push(id);
                }
            } else if l.close_when_flushed {
                // Still flushing: the grace period runs from now.
                l.closing_since.get_or_insert(now);
            } else if l.tx.len() > 4 * MAX_MESSAGE {
                // The peer takes nothing while we have much to say: drop it.
                let peer = l.peer;
                self.events.push_back(MemberEvent::Misbehaved(peer, "it reads nothing".into()));
                close.push(id);
            }
        }
        let ms = self.ms(now);
        for id in close {
            host.close(id, now);
            if let Some(l) = self.links.remove(&id)
                && self.by_peer.get(&l.peer) == Some(&id)
            {
                self.by_peer.remove(&l.peer);
                if !l.close_when_flushed
                    && let Some(o) = self.overlay.as_mut()
                {
                    o.link_down(l.peer, ms);
                }
            }
        }
    }

    /// A member cut off from everyone (its neighbours all left and no
    /// passive peer answers) joins again through the member it first
    /// joined, after four rounds alone, and then every four rounds.
    fn rejoin_if_alone(&mut self, host: &mut Host, now: Instant) {
        let (Some(o), Some(contact), Some(wait)) = (&self.overlay, &self.contact, self.rejoin_wait()) else { return };
        let in_network = o.active().next().is_some();
        if in_network {
            self.passes = 0;
        }
        if !(self.joined_once || self.contact_saved) || self.leaving.is_some() || in_network || o.pending() > 0 {
            self.alone_since = None;
            return;
        }
        let since = *self.alone_since.get_or_insert(now);
        let dialing_contact = self.dialing.values().any(|d| d.contact);
        if now.saturating_duration_since(since) >= wait && !dialing_contact {
            self.alone_since = Some(now);
            let contact = contact.clone();
            if self.contact_saved {
                // A new pass through the saved cards, starting with this one.
                self.passes += 1;
                self.pass_left = self.fallbacks.len();
            }
            let _ = self.dial(host, contact, Vec::new(), true, now);
        }
    }

    fn dial_failed(&mut self, host: &mut Host, attempt: AttemptId, why: ConnectFailure, now: Instant, unix_now: u64) {
        if let Some(d) = self.dialing.remove(&attempt) {
            let ms = self.ms(now);
            if let Some(o) = self.overlay.as_mut() {
                // Alone, a peer that wants our RSVP first is out of reach
                // for now, not gone: keep its card for when we have an
                // introducer again (after a move, most cards are such).
                if matches!(why, ConnectFailure::NoRoute) && o.active().next().is_none() {
                    o.link_unroutable(d.peer, ms);
                } else {
                    o.link_failed(d.peer, ms);
                }
            }
            self.emit(MemberEvent::ConnectFailed(d.peer, why));
            if d.contact {
                self.next_contact(host, now, unix_now);
            }
        }
    }
}
