//! HyParView membership (Leitão, Pereira, Rodrigues 2007) with the
//! introducer's relay and a Plumtree broadcast on top.
//!
//! A small *active view* holds the peers we have links to (symmetric: if
//! we hold you, you hold us); a larger *passive view* holds contact cards
//! of peers we could link to. A newcomer joins through a contact, whose
//! FORWARDJOIN random walks make other members link to it; shuffles keep
//! the passive views fresh; a lost active peer is replaced from the passive
//! view.
//!
//! Links are the driver's business. When the overlay wants one it emits
//! [`Output::Connect`] with the peer's card (its signed invitation) and a
//! *route*: a chain of active links ending at the peer. The driver
//! connects with the invitation, and if the peer's side must answer first
//! (an RSVP) it sends that token along the route with
//! [`Overlay::introduce`]; every member on the way relays it (rate-limited,
//! unchanged: the tokens are signed end to end, so a relay cannot forge
//! them), and the peer gets [`Event::Introduced`]. Shuffle replies go back
//! the same way, so no message ever needs a link that is not there.
//!
//! Failure detection: any message from an active peer shows it alive; one
//! silent for a round is pinged; silent for `suspect_after` it is suspected
//! ([`Event::Suspected`]); for `fail_after` it is dropped and replaced. The
//! driver also reports links its transport lost ([`Overlay::link_down`]).
//! Faster than that, a heartbeat on the broadcast tree's links
//! ([`Config::heartbeat`]) finds a dead neighbour in about a second: its
//! link is *quiet*, the tree is grafted around it and the view is filled
//! past it.

use std::collections::{BTreeMap, VecDeque};

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::limiter::Limiter;
use crate::plumtree::{PlumConfig, PlumStats, Plumtree};
use crate::wire::{Card, Kind, MAX_LIST, Message, MsgId, PolicyKind, Role};

mod shape;
use crate::{Millis, PeerKey};
use shape::AnnouncedView;
pub use shape::{ShapeViolation, Topology, check_shape};

/// Neighbours linked beyond our neighbourhood that an eviction spares (see
/// `Overlay::evict`); also the most links a neighbour may say it has to be
/// spared as needy under a stream of forced links.
const MIN_BRIDGES: usize = 2;

/// Rounds after its last relayed broadcast that a neighbour still counts
/// as relaying; also how long a link counts as young, and the window in
/// which `STREAM` forced links make a stream (see `Overlay::evict`).
const RELAYED_FOR: Millis = 8;

/// Links forced on a member within `RELAYED_FOR` rounds that make a stream
/// (see `Overlay::evict`).
const STREAM: usize = 2;

/// Heartbeats (`Config::heartbeat`) a ping may stay unanswered before its
/// link is *quiet*. A link with an unanswered ping is pinged every beat,
/// so three leave room for one lost ping and a round trip of two beats
/// (500 ms at the default), or two lost pings and a round trip of one.
const QUIET_BEATS: Millis = 3;

/// A member with fewer live links than this asks for links with high
/// priority, which the asked must accept (HyParView asks so only with no
/// link at all). Two survivors of a mass failure linked only to each
/// other otherwise stay an island: every member they ask has a full view
/// and refuses. After an 80% crash (N = 2,000) that left two components
/// for good; asking with high priority below two links, one.
const LONELY: usize = 2;

/// Membership and broadcast parameters (HyParView's are the paper's).
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Active view size.
    pub active: usize,
    /// Passive view size. Under a hierarchy or star this bounds the
    /// super-peers' cards, and the other cards (leaves') are kept beside
    /// them up to half as many: a leaf's passive view filled with
    /// super-peers' cards only, and after 80% of the members crashed,
    /// 3 of 2,000 survivors (N = 10,000) held 30 cards of the dead and
    /// nothing else, alone for good.
    pub passive: usize,
    /// Active random walk length (FORWARDJOIN and SHUFFLE TTL).
    pub arwl: u8,
    /// Passive random walk length: a FORWARDJOIN at this TTL leaves the
    /// newcomer in the passive view.
    pub prwl: u8,
    /// Active peers in a shuffle sample.
    pub shuffle_active: usize,
    /// Passive peers in a shuffle sample.
    pub shuffle_passive: usize,
    /// One membership round: the shuffle period and the ping interval.
    pub round: Millis,
    /// Silence after which an active peer is suspected.
    pub suspect_after: Millis,
    /// Silence after which an active peer is dropped.
    pub fail_after: Millis,
    /// The heartbeat (0: none, only the round's pings and `fail_after`).
    /// Broadcast tree links (Plumtree's eager ones) are pinged this often
    /// while nothing else crosses them: the end with the lower key pings,
    /// the other only after two beats without hearing it. A link whose
    /// ping goes unanswered is pinged every beat, and after three beats it
    /// is *quiet*: probably dead. Then
    ///
    /// - if it was a tree link, the tree above us may be broken: Plumtree
    ///   grafts what lazy neighbours announce at once (see
    ///   [`Plumtree::set_quiet`]), and every other link is pinged every
    ///   beat until no tree link is quiet;
    /// - it no longer counts as a neighbour: the active view is filled
    ///   past it, and its replacement evicts it.
    ///
    /// A quiet link heard again is a neighbour again. Failures are then
    /// repaired in about a second, not `fail_after`.
    pub heartbeat: Millis,
    /// How long a link we asked for may take.
    pub connect_timeout: Millis,
    /// How long a link replaced out of the active view stays open for
    /// tokens relayed through it (0: closed at once).
    pub linger: Millis,
    /// Fill the active view preferring passive peers a neighbour says it
    /// is linked to now: true. A token can reach them (a peer whose network
    /// needs an RSVP is reachable only then), and they are alive: after
    /// half the network crashed, the first broadcast reached 92% of the
    /// survivors within 3 rounds with it, 60% without. It costs a little
    /// randomness (the deepest steady-state broadcast path at N = 10,000:
    /// 32 hops with it, 30 without).
    pub prefer_reachable: bool,
    /// Broadcast our active view every this often (0: never). Members
    /// build the network's graph from these ([`Overlay::known_links`]).
    pub announce_views: Millis,
    /// Whether a contact broadcasts that a newcomer joined.
    pub announce_joins: bool,
    /// Introducer relay limit: tokens relayed (or taken) at once per neighbour...
    pub relay_burst: u32,
    /// ...and per second after that (ten times both for all neighbours).
    pub relay_per_second: f64,
    /// Plumtree's timers.
    pub plumtree: PlumConfig,
    /// The topology policy: which links members keep, and so how
    /// broadcasts route (see [`Topology`]). Members of one network run one.
    pub topology: Topology,
    /// Whether this member can serve as a super-peer (hierarchical: the
    /// driver says so for a public address, an endpoint-independent NAT or
    /// a mapped port, with capacity) or is a hub (star).
    pub super_capable: bool,
    /// Most leaves we carry as a super-peer or hub when that is below the
    /// policy's bound: our own capacity (a small machine, a slow uplink).
    /// The policy's bound stays the network's: others check every
    /// super-peer against it, so a lower one of ours breaks nothing of
    /// theirs, and a leaf we turn away asks another super-peer (under a
    /// hierarchy, if none has room, it promotes; stars promote nobody).
    /// Capacity 0 keeps us from carrying any leaf, not from serving: a
    /// hierarchy still promotes a leaf cut off from every super-peer.
    /// `None`: the policy's bound.
    pub max_leaves: Option<usize>,
    /// Under a hierarchy or star, choose the super-peers (hubs) we link
    /// to by their standing ([`crate::Standing`]: time in the network and
    /// leaf capacity), at random weighted by [`crate::Standing::weight`]:
    /// true. Leaves then hang on the super-peers likeliest to stay and
    /// with the most room, and newcomers are handed those cards first.
    /// Reachability still decides who serves; this decides whom the
    /// others lean on.
    pub prefer_standing: bool,
    /// Time in the network after which our tenure (the standing's first
    /// part) is 1, 2 and 3: by default ten minutes, an hour and a day.
    /// Counted from our first link of a class our role keeps, not from
    /// our start; a restart starts it again.
    pub tenure_steps: [Millis; 3],
}

impl Config {
    /// Cards a shuffle carries: the origin's own, `shuffle_active` of its
    /// active peers and `shuffle_passive` of its passive ones. Members run
    /// the same parameters, so no shuffle or answer is taken beyond this.
    pub fn shuffle_cards(&self) -> usize {
        1 + self.shuffle_active + self.shuffle_passive
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            active: 5,
            passive: 30,
            arwl: 6,
            prwl: 3,
            shuffle_active: 3,
            shuffle_passive: 4,
            round: 1000,
            suspect_after: 2500,
            fail_after: 4000,
            heartbeat: 250,
            connect_timeout: 15_000,
            linger: 10_000,
            prefer_reachable: true,
            announce_views: 0,
            announce_joins: true,
            relay_burst: 8,
            relay_per_second: 1.0,
            plumtree: PlumConfig::default(),
            topology: Topology::Mesh,
            super_capable: false,
            max_leaves: None,
            prefer_standing: true,
            tenure_steps: [10 * 60_000, 60 * 60_000, 24 * 60 * 60_000],
        }
    }
}

/// Why an active peer left the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// It sent DISCONNECT.
    Disconnected,
    /// We dropped it to make room.
    Replaced,
    /// It stayed silent past `fail_after`.
    Timeout,
    /// The driver's transport lost the link.
    LinkLost,
}

impl DownReason {
    /// A short label.
    pub fn as_str(self) -> &'static str {
        match self {
            DownReason::Disconnected => "disconnected",
            DownReason::Replaced => "replaced",
            DownReason::Timeout => "timeout",
            DownReason::LinkLost => "link_lost",
        }
    }
}

/// Something the application may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<P> {
    /// A peer entered the active view.
    NeighborUp(P),
    /// A peer left the active view.
    NeighborDown {
        /// Who.
        peer: P,
        /// Why.
        reason: DownReason,
    },
    /// An active peer has been silent past `suspect_after`.
    Suspected(P),
    /// A broadcast arrived (application data).
    Delivered {
        /// Its id.
        id: MsgId<P>,
        /// Hops from the origin.
        round: u16,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A member announced that `peer` joined through it.
    MemberJoined {
        /// The newcomer.
        peer: P,
        /// Hops the announcement took to reach us.
        round: u16,
    },
    /// A token relayed to us by introducers (an RSVP for our invitation).
    Introduced {
        /// Who sent it.
        from: P,
        /// The token, to verify and use.
        token: Vec<u8>,
    },
    /// A peer runs another topology policy: we do not link to it.
    PolicyMismatch {
        /// The peer.
        peer: P,
        /// Its policy.
        policy: PolicyKind,
    },
    /// Our role changed (a leaf without super-peers became one).
    RoleChanged(Role),
    /// A policy invariant broke (see [`ShapeViolation`]).
    Violation(String),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<P> {
    /// Send `msg` over the link to `to`.
    Send {
        /// The peer.
        to: P,
        /// The message.
        msg: Message<P>,
    },
    /// Open a link to `card.peer` with its invitation; report the outcome
    /// with [`Overlay::link_up`] or [`Overlay::link_failed`]. If the peer
    /// must get an RSVP, send it with [`Overlay::introduce`] along `route`.
    Connect {
        /// The peer's card.
        card: Card<P>,
        /// Active links to relay a token along, ending at the peer (empty:
        /// no route known).
        route: Vec<P>,
    },
    /// Close the link to this peer (after sending what was queued for it).
    Close(P),
    /// Tell the application.
    Event(Event<P>),
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Newcomers admitted as a contact.
    pub joins: u64,
    /// Shuffles started.
    pub shuffles: u64,
    /// Peers that entered the active view.
    pub neighbor_ups: u64,
    /// Peers that left it.
    pub neighbor_downs: u64,
    /// Suspicions raised.
    pub suspicions: u64,
    /// Links that went quiet: a ping unanswered for three heartbeats (see
    /// [`Config::heartbeat`]).
    pub quiet: u64,
    /// Links asked for.
    pub connects: u64,
    /// Links that failed or timed out.
    pub connect_failures: u64,
    /// Tokens we relayed for others.
    pub relayed: u64,
    /// Relays refused: rate limit or no link to the next hop.
    pub relay_refused: u64,
    /// Of those, refused by the rate limit.
    pub relay_rate_limited: u64,
    /// Relays that arrived over a link we no longer count as active.
    pub relay_from_stranger: u64,
    /// Tokens we could not pass on: no hop of their route, and no
    /// neighbour we know of, is linked to their addressee.
    pub relay_unroutable: u64,
    /// Tokens relayed to us.
    pub introduced: u64,
    /// Messages that made no sense where they arrived.
    pub ignored: u64,
    /// Peers refused or dropped for running another topology policy.
    pub mismatches: u64,
    /// Times we became a super-peer for want of one.
    pub promotions: u64,
    /// Times we became a super-peer because our driver found us reachable
    /// ([`Overlay::elect`]).
    pub elections: u64,
    /// Times we stepped down from super-peer to leaf
    /// ([`Overlay::step_down`]).
    pub step_downs: u64,
    /// Policy invariants found broken (each time one starts).
    pub violations: u64,
    /// Core links a super-peer asked for to mix the core (see
    /// [`Topology::Hierarchical`]).
    pub rewirings: u64,
    /// Links of a leaf to its super-peers (hubs) lost to failure: gone
    /// quiet, timed out or their transport failed. What the standing's
    /// preference for super-peers up longest is to make rarer.
    pub uplinks_lost: u64,
}

#[derive(Debug, Clone)]
struct ActivePeer<P> {
    card: Card<P>,
    since: Millis,
    newcomer: bool,
    /// Linked because someone joined (its JOIN through us, or its join
    /// walk ended here), not picked by either end from a passive view:
    /// the first to go under a stream of such links (see `evict`).
    forced: bool,
    /// When it last relayed us a broadcast someone else started (a GOSSIP,
    /// first copy or not, or an IHAVE of an id we hold); see `evict`.
    relayed: Option<Millis>,
    heard: Millis,
    pinged: Millis,
    suspected: bool,
    /// When the first ping it has not answered was sent.
    asked: Option<Millis>,
    /// Its ping unanswered for `QUIET_BEATS` heartbeats (told to Plumtree).
    quiet: bool,
}

#[derive(Debug, Clone)]
struct PassivePeer<P> {
    card: Card<P>,
    route: Vec<P>,
}

#[derive(Debug, Clone)]
struct Pending<P> {
    card: Card<P>,
    high: bool,
    /// Asked for at the end of someone's join walk, not chosen by us.
    forced: bool,
    since: Millis,
    linked: bool,
}

/// A walk's way back without its detours: consecutive peers in a walk
/// are linked, so where a peer appears twice the loop between can go, and
/// everything up to our own last appearance too.
fn loop_free<P: PeerKey>(me: P, hops: impl Iterator<Item = P>) -> Vec<P> {
    let mut out: Vec<P> = Vec::new();
    for p in hops {
        if p == me {
            out.clear();
        } else if let Some(i) = out.iter().position(|&q| q == p) {
            out.truncate(i + 1);
        } else {
            out.push(p);
        }
    }
    out
}

/// One member's overlay state machine.
#[derive(Debug)]
pub struct Overlay<P: PeerKey> {
    me: Card<P>,
    cfg: Config,
    rng: ChaCha8Rng,
    active: Vec<ActivePeer<P>>,
    passive: Vec<PassivePeer<P>>,
    pending: Vec<Pending<P>>,
    next_shuffle: Millis,
    next_view: Option<Millis>,
    views: BTreeMap<P, AnnouncedView<P>>,
    /// Each active neighbour's active view, as it last told us.
    nbr_views: BTreeMap<P, Vec<P>>,
    /// When we last took cards of a shuffle or a shuffle's answer that
    /// came over each active neighbour's link: the time before the last,
    /// and the last (two a round per link, see `take_cards_from`).
    shuffled_from: BTreeMap<P, (Option<Millis>, Millis)>,
    /// Our active view changed since we last told our neighbours.
    nbr_dirty: bool,
    /// Links replaced out of the active view, open for tokens until then.
    lingering: Vec<(P, Millis)>,
    /// Consecutive failed tries to fill the active view, and when the next
    /// may start.
    fill_backoff: u32,
    fill_after: Millis,
    /// When [`Overlay::tick`] last ran.
    last_tick: Millis,
    /// When the last `STREAM` links were forced on us, latest first (see
    /// `evict`).
    forced_at: [Option<Millis>; STREAM],
    /// Neighbours whose links we expect to lose through no fault of theirs
    /// (our address changed): their cards go back to the passive view when
    /// the links go.
    keep_on_loss: Vec<P>,
    /// Passive peers we could not reach for want of an introducer, and
    /// until when `fill` leaves them be.
    held: BTreeMap<P, Millis>,
    plum: Plumtree<P>,
    limiter: Limiter<P>,
    out: VecDeque<Output<P>>,
    stats: Stats,
    nonce: u64,
    /// When we started (see `shape::check_invariants`).
    born: Millis,
    /// Invariants broken at the last check.
    violations: Vec<ShapeViolation>,
    /// Since when a hierarchical leaf has had no super-peer (promotion).
    orphan_since: Option<Millis>,
    /// Whether we ever had a live link of a class our role keeps (see
    /// `stranded`); for a hierarchical leaf, a super-peer (see
    /// `promote`).
    linked_once: bool,
    /// When we first had such a link: our tenure counts from there.
    linked_at: Option<Millis>,
    /// We moved (`addresses_changed`) and have no uplink from where we
    /// are yet: a hierarchical leaf waits as long as a joiner before it
    /// promotes (see `promote`).
    rejoining: bool,
    /// When we last lost links to failure, latest first (see `stranded`).
    lost_at: [Option<Millis>; 2],
    /// Whether our card is to be broadcast as a super-peer's (we became
    /// one, or our card changed as one) once we have a link.
    announce_super: bool,
    /// A leaf's rewirings so far (each waits longer, see `rewire`).
    leaf_rewires: u32,
    /// Since when a leaf has had no super-peer (the invariant).
    no_uplink_since: Option<Millis>,
    /// When the announced graph is checked next, and what that found.
    next_graph_check: Millis,
    graph_violation: Option<ShapeViolation>,
    /// Whether the last check of the announced graph failed.
    graph_failing: bool,
    /// When a super-peer next mixes its core (`shape::rewire`).
    next_rewire: Millis,
}

impl<P: PeerKey> Overlay<P> {
    /// A member with empty views. `me` is our own card (our reusable
    /// invitation), handed to peers so they can link to us.
    pub fn new(mut me: Card<P>, cfg: Config, seed: [u8; 32], now: Millis) -> Self {
        me.shape = crate::wire::Shape::new(cfg.topology.kind(), cfg.topology.initial_role(cfg.super_capable));
        if let (Some(bound), Some(own)) = (cfg.topology.max_leaves(), cfg.max_leaves) {
            me.shape.standing.room = crate::wire::Standing::room_of(own, bound);
        }
        let me_super = me.shape.role == Role::Super;
        let mut rng = ChaCha8Rng::from_seed(seed);
        let first_shuffle = now + cfg.round + rng.next_u64() % cfg.round.max(1);
        Self {
            plum: Plumtree::new(me.peer, cfg.plumtree),
            limiter: Limiter::new(cfg.relay_burst, cfg.relay_per_second),
            me,
            rng,
            active: Vec::new(),
            passive: Vec::new(),
            pending: Vec::new(),
            keep_on_loss: Vec::new(),
            held: BTreeMap::new(),
            next_shuffle: first_shuffle,
            next_view: (cfg.announce_views > 0).then_some(now),
            views: BTreeMap::new(),
            nbr_views: BTreeMap::new(),
            shuffled_from: BTreeMap::new(),
            nbr_dirty: false,
            lingering: Vec::new(),
            fill_backoff: 0,
            fill_after: 0,
            last_tick: now,
            forced_at: [None; STREAM],
            out: VecDeque::new(),
            stats: Stats::default(),
            nonce: 0,
            born: now,
            violations: Vec::new(),
            orphan_since: None,
            linked_once: false,
            linked_at: None,
            rejoining: false,
            lost_at: [None; 2],
            announce_super: me_super,
            leaf_rewires: 0,
            no_uplink_since: None,
            next_graph_check: now,
            graph_violation: None,
            graph_failing: false,
            next_rewire: now + shape::REWIRE_ROUNDS * cfg.round,
            cfg,
        }
    }

    /// Our identity.
    pub fn me(&self) -> P {
        self.me.peer
    }

    /// Replaces our card (a fresh invitation before the old one expires).
    pub fn set_card(&mut self, token: Vec<u8>) {
        self.me.token = token;
        self.announce_super = self.me.shape.role == Role::Super;
    }

    /// The parameters.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Peers in the active view.
    pub fn active(&self) -> impl Iterator<Item = P> + '_ {
        self.active.iter().map(|a| a.card.peer)
    }

    /// Peers in the passive view.
    pub fn passive(&self) -> impl Iterator<Item = P> + '_ {
        self.passive.iter().map(|a| a.card.peer)
    }

    /// The cards we hold: the active view's peers', then the passive
    /// view's (what a member saves to rejoin after a restart).
    pub fn cards(&self) -> impl Iterator<Item = &Card<P>> + '_ {
        self.active.iter().map(|a| &a.card).chain(self.passive.iter().map(|a| &a.card))
    }

    /// Whether `p` is in the active view.
    pub fn is_active(&self, p: P) -> bool {
        self.active.iter().any(|a| a.card.peer == p)
    }

    /// Active peers currently suspected.
    pub fn suspected(&self) -> impl Iterator<Item = P> + '_ {
        self.active.iter().filter(|a| a.suspected).map(|a| a.card.peer)
    }

    /// Links asked for and not yet settled.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The broadcast tree state.
    pub fn plumtree(&self) -> &Plumtree<P> {
        &self.plum
    }

    /// Entries held in this member's tables and queues, its broadcast
    /// state's included ([`Plumtree::held`]): views, links asked for,
    /// neighbours' and members' announced views, per-neighbour relay
    /// limits, queued outputs. A measure of its memory that a peer could
    /// try to grow; every part is bounded.
    pub fn held(&self) -> usize {
        self.active.len()
            + self.passive.len()
            + self.pending.len()
            + self.views.values().map(|v| 1 + v.peers.len()).sum::<usize>()
            + self.nbr_views.values().map(|v| 1 + v.len()).sum::<usize>()
            + self.shuffled_from.len()
            + self.lingering.len()
            + self.limiter.len()
            + self.out.len()
            + self.plum.held()
    }

    /// Membership counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Broadcast counters.
    pub fn plum_stats(&self) -> &PlumStats {
        self.plum.stats()
    }

    /// The network's links as members announced them (with
    /// `announce_views`), ours included: `(a, b)` with `a < b`, each once.
    /// Links a join passes through, which the policy does not keep, are
    /// not announced (ours are left out too).
    pub fn known_links(&self) -> Vec<(P, P)> {
        let mut links = std::collections::BTreeSet::new();
        let mine = (self.me.peer, self.announced_links());
        for (a, peers) in self.views.iter().map(|(p, v)| (*p, &v.peers)).chain([(mine.0, &mine.1)]) {
            for &b in peers {
                if a != b {
                    links.insert((a.min(b), a.max(b)));
                }
            }
        }
        links.into_iter().collect()
    }

    /// Members we know of: ourselves, our views and announced views.
    pub fn known_members(&self) -> Vec<P> {
        let mut m: std::collections::BTreeSet<P> = self.views.keys().copied().collect();
        m.insert(self.me.peer);
        m.extend(self.active());
        m.extend(self.passive());
        m.into_iter().collect()
    }

    fn send(&mut self, to: P, msg: Message<P>) {
        self.out.push_back(Output::Send { to, msg });
    }

    fn event(&mut self, e: Event<P>) {
        self.out.push_back(Output::Event(e));
    }

    fn pick<T>(rng: &mut ChaCha8Rng, v: &[T]) -> Option<usize> {
        (!v.is_empty()).then(|| (rng.next_u64() % v.len() as u64) as usize)
    }

    /// Joins through `contact`, to which the driver already has a link
    /// (made with the contact's invitation).
    ///
    /// A card made from an invitation does not say the contact's shape:
    /// until the contact tells it (its [`Message::Neighbors`], sent as
    /// soon as it takes us), it counts as a member of our policy in the
    /// role `Member`, which a hierarchy or star neither fills nor drops
    /// while it is our only link.
    pub fn join(&mut self, mut contact: Card<P>, now: Millis) {
        let card = self.me.clone();
        self.send(contact.peer, Message::Join { card });
        contact.shape = crate::wire::Shape::new(self.me.shape.policy, Role::Member);
        self.add_active(contact, false, now);
    }

    /// Starts a broadcast of application data; returns its id.
    pub fn broadcast(&mut self, payload: Vec<u8>, now: Millis) -> MsgId<P> {
        let id = self.plum.broadcast(Kind::App, payload, now);
        self.drain_plum(now);
        id
    }

    /// A link that left the active view by replacement stays open for
    /// `linger`, for tokens only: a token that was routed through it a
    /// moment ago still gets through. Then it closes.
    fn linger(&mut self, peer: P, now: Millis) {
        self.lingering.retain(|(p, _)| *p != peer);
        if self.cfg.linger == 0 || self.lingering.len() >= 4 * self.cfg.active {
            self.out.push_back(Output::Close(peer));
        } else {
            self.lingering.push((peer, now + self.cfg.linger));
        }
    }

    /// Whether neighbour `peer` told us it is linked to a member that is
    /// neither us nor one of our neighbours: a way out of our
    /// neighbourhood.
    fn is_bridge(&self, peer: P) -> bool {
        self.nbr_views.get(&peer).is_some_and(|view| view.iter().any(|&q| q != self.me.peer && !self.is_active(q)))
    }

    fn is_lingering(&self, peer: P) -> bool {
        self.lingering.iter().any(|(p, _)| *p == peer)
    }

    /// Sends a token to the last peer of `route` through the others (the
    /// introducer's relay). Returns whether it went.
    pub fn introduce(&mut self, route: &[P], token: Vec<u8>) -> bool {
        self.introduce_along(route, token).is_some()
    }

    /// Like [`Overlay::introduce`], and returns the route taken: from the
    /// furthest hop of `route` that is our neighbour now, or — when none
    /// is — through a neighbour that told us it is linked to the peer.
    pub fn introduce_along(&mut self, route: &[P], token: Vec<u8>) -> Option<Vec<P>> {
        let target = *route.last()?;
        let route = self.live_route(route, target, None)?;
        let (&first, rest) = route.split_first()?;
        let inner = Box::new(Message::Introduce { token });
        self.send(first, Message::Relay { origin: self.me.peer, route: rest.to_vec(), inner });
        Some(route)
    }

    /// A route to `target` that starts at a neighbour other than `not_via`:
    /// what we know to be linked now ([`Overlay::known_route`]) to the
    /// target, else to the furthest hop of `route` we can reach that way,
    /// followed by the rest of `route` (a hint remembered earlier, which
    /// later hops check again).
    fn live_route(&self, route: &[P], target: P, not_via: Option<P>) -> Option<Vec<P>> {
        if let Some(r) = self.known_route(target, not_via) {
            return Some(r);
        }
        (0..route.len()).rev().find_map(|j| {
            let mut r = self.known_route(route[j], not_via)?;
            r.extend_from_slice(&route[j + 1..]);
            Some(r)
        })
    }

    /// A route to `target` we know holds now: it is our neighbour (or a
    /// replaced one whose link lingers), or a neighbour told us it is
    /// linked to it; never through `not_via` (where a token came from).
    fn known_route(&self, target: P, not_via: Option<P>) -> Option<Vec<P>> {
        if Some(target) == not_via {
            return None;
        }
        if self.is_active(target) || self.is_lingering(target) {
            return Some(vec![target]);
        }
        self.nbr_views
            .iter()
            .find(|(n, view)| Some(**n) != not_via && self.is_active(**n) && view.contains(&target))
            .map(|(&n, _)| vec![n, target])
    }

    /// Whether [`Overlay::introduce_along`] would find a way along `route`
    /// (which ends at the peer).
    pub fn has_route(&self, route: &[P]) -> bool {
        route.last().is_some_and(|&t| self.live_route(route, t, None).is_some())
    }

    /// Whether a link with `peer` is on its way in or out of the active
    /// view: asked for and not answered yet, or replaced and lingering.
    pub fn in_transition(&self, peer: P) -> bool {
        self.pending.iter().any(|p| p.card.peer == peer) || self.is_lingering(peer)
    }

    /// Whether we know a neighbour linked to `peer` (or are linked to it).
    pub fn can_reach(&self, peer: P) -> bool {
        self.known_route(peer, None).is_some()
    }

    /// A link we asked for ([`Output::Connect`]) is up: ask the peer in.
    pub fn link_up(&mut self, peer: P, now: Millis) {
        let card = self.me.clone();
        if let Some(p) = self.pending.iter_mut().find(|p| p.card.peer == peer && !p.linked) {
            p.linked = true;
            p.since = now;
            let high = p.high || self.active.is_empty();
            self.send(peer, Message::Neighbor { high, card });
        }
    }

    /// A link we asked for could not be made: forget that peer's card and
    /// try another.
    pub fn link_failed(&mut self, peer: P, now: Millis) {
        self.drop_pending(peer);
        self.passive.retain(|p| p.card.peer != peer);
        self.fill(now);
    }

    /// A link we asked for could not be made because the peer wanted to
    /// hear from us first and no neighbour could carry our RSVP to it
    /// (we have none, or none linked to it). That says nothing about the
    /// peer: its card stays in the passive view, left alone for four
    /// rounds, and another peer is tried.
    pub fn link_unroutable(&mut self, peer: P, now: Millis) {
        self.drop_pending(peer);
        if self.passive.iter().any(|p| p.card.peer == peer) {
            // Bounded by the passive view: `fill` forgets expired holds.
            self.held.insert(peer, now + 4 * self.cfg.round);
        }
        self.fill(now);
    }

    /// Our own address changed (the machine moved to another network):
    /// the links we have now will fail, through no fault of the
    /// neighbours, so their cards go back to the passive view when they
    /// do, to be dialed again from where we are now.
    pub fn addresses_changed(&mut self) {
        self.keep_on_loss = self.active.iter().map(|a| a.card.peer).collect();
        self.rejoining = true;
    }

    /// A dial we asked for ended without a link: no longer pending.
    fn drop_pending(&mut self, peer: P) {
        if let Some(i) = self.pending.iter().position(|p| p.card.peer == peer) {
            self.pending.swap_remove(i);
            self.stats.connect_failures += 1;
        }
    }

    /// The transport lost the link to `peer` (it went away or timed out).
    pub fn link_down(&mut self, peer: P, now: Millis) {
        self.lingering.retain(|(p, _)| *p != peer);
        if self.pending.iter().any(|p| p.card.peer == peer) {
            self.link_failed(peer, now);
        }
        if self.is_active(peer) {
            // `remove_active` takes it off `keep_on_loss`.
            let ours = self.keep_on_loss.contains(&peer);
            self.remove_active(peer, DownReason::LinkLost, ours, now);
        }
    }

    /// Handles a message that arrived over the link to `from`.
    pub fn handle(&mut self, from: P, msg: Message<P>, now: Millis) {
        let relays = match &msg {
            Message::Gossip { id, .. } => id.origin != from,
            Message::IHave { ids } => ids.iter().any(|(id, _)| id.origin != from && self.plum.has_seen(id)),
            _ => false,
        };
        if let Some(a) = self.active.iter_mut().find(|a| a.card.peer == from) {
            a.heard = now;
            a.suspected = false;
            if relays {
                a.relayed = Some(now);
            }
            a.asked = None;
            if std::mem::take(&mut a.quiet) {
                self.plum.set_quiet(from, false, now);
            }
        }
        match msg {
            // A second JOIN from a neighbour would start walks and a
            // network-wide announcement again: once is enough.
            Message::Join { card } if !self.is_active(from) => self.on_join(from, card, now),
            Message::ForwardJoin { card, ttl, path } if self.is_active(from) => {
                self.on_forward_join(from, card, ttl, path, now)
            }
            Message::Neighbor { high, card } => {
                let class = card.shape.role;
                if card.peer != from {
                    self.stats.ignored += 1;
                } else if !self.compatible(card.shape) {
                    self.send(from, Message::NeighborReply { accepted: false });
                    self.mismatch(from, card.shape, now);
                } else if self.is_active(from)
                    || (self.want(class) > 0 && (self.room(class) || (high && !self.hard(class))))
                {
                    // A quiet neighbour (probably dead) leaves room: it is
                    // the one `add_active` evicts.
                    //
                    // Not counted as forced: an isolated member asks with
                    // high priority too, and after a mass failure those
                    // must not be the first to go.
                    self.add_active(card, false, now);
                    self.send(from, Message::NeighborReply { accepted: true });
                } else {
                    if self.want(class) == 0 {
                        // Refused for its role, not for want of room: say
                        // our role, so the asker stops taking us for one
                        // it links to (a card passed on may say otherwise).
                        self.tell_shape(from);
                    }
                    self.send(from, Message::NeighborReply { accepted: false });
                    self.add_passive(card, vec![from]);
                }
            }
            Message::NeighborReply { accepted } => {
                let Some(i) = self.pending.iter().position(|p| p.card.peer == from) else {
                    self.stats.ignored += 1;
                    // We gave up on that link; the peer now holds us:
                    // let it go, or the views stay one-sided.
                    if accepted && !self.is_active(from) {
                        self.send(from, Message::Disconnect { alive: true });
                        self.linger(from, now);
                    }
                    return;
                };
                let p = self.pending.swap_remove(i);
                if accepted {
                    self.fill_backoff = 0;
                    self.add_active(p.card, p.forced, now);
                } else {
                    // The card stays in the passive view for another try.
                    self.out.push_back(Output::Close(from));
                    self.fill_failed(now);
                    self.fill(now);
                }
            }
            Message::Disconnect { alive } => {
                if self.is_active(from) {
                    self.remove_active(from, DownReason::Disconnected, alive, now);
                    if alive {
                        self.linger(from, now);
                    } else {
                        self.out.push_back(Output::Close(from));
                    }
                }
            }
            Message::Shuffle { origin, ttl, path, cards } if self.is_active(from) => {
                self.on_shuffle(from, origin, ttl, path, cards, now)
            }
            Message::Join { .. } | Message::ForwardJoin { .. } | Message::Shuffle { .. } => self.stats.ignored += 1,
            Message::Neighbors { peers, shape } => {
                if self.is_active(from) && peers.len() <= MAX_LIST {
                    self.nbr_views.insert(from, peers);
                    self.neighbour_shape(from, shape, now);
                } else if self.pending.iter().any(|p| p.card.peer == from) {
                    // A peer we asked for a link saying its shape.
                    self.neighbour_shape(from, shape, now);
                } else {
                    self.stats.ignored += 1;
                }
            }
            // A ping from a peer that holds us while we do not hold it: the
            // views went one-sided (a link given up at one end); tell it.
            Message::Ping { .. } if !self.is_active(from) && !self.pending.iter().any(|p| p.card.peer == from) => {
                self.send(from, Message::Disconnect { alive: true });
            }
            Message::Ping { nonce } => self.send(from, Message::Pong { nonce }),
            Message::Pong { .. } => {}
            Message::Relay { origin, route, inner } => self.on_relay(from, origin, route, *inner, now),
            Message::ShuffleReply { .. } | Message::Introduce { .. } => self.stats.ignored += 1,
            m @ (Message::Gossip { .. } | Message::IHave { .. } | Message::Graft { .. } | Message::Prune) => {
                if self.is_active(from) {
                    self.plum.handle(from, m, now);
                    self.drain_plum(now);
                } else {
                    self.stats.ignored += 1;
                }
            }
        }
    }

    fn on_join(&mut self, from: P, card: Card<P>, now: Millis) {
        if card.peer != from || from == self.me.peer {
            self.stats.ignored += 1;
            return;
        }
        if !self.compatible(card.shape) {
            // Tell the newcomer why before the link goes: our shape.
            self.tell_shape(from);
            self.mismatch(from, card.shape, now);
            return;
        }
        self.stats.joins += 1;
        self.add_active(card.clone(), true, now);
        self.hand_super_cards(from, true);
        let others: Vec<P> = self.active().filter(|&p| p != from).collect();
        if let Some(a) = self.active.iter_mut().find(|a| a.card.peer == from) {
            a.newcomer = true;
        }
        for p in others {
            let msg = Message::ForwardJoin { card: card.clone(), ttl: self.cfg.arwl, path: vec![self.me.peer] };
            self.send(p, msg);
        }
        if self.cfg.announce_joins {
            let mut payload = Vec::new();
            from.put(&mut payload);
            self.plum.broadcast(Kind::Joined, payload, now);
            self.drain_plum(now);
        }
    }

    fn on_forward_join(&mut self, from: P, card: Card<P>, ttl: u8, mut path: Vec<P>, now: Millis) {
        let joiner = card.peer;
        if joiner == self.me.peer || path.is_empty() || path.len() >= MAX_LIST || !self.compatible(card.shape) {
            self.stats.ignored += 1;
            return;
        }
        // The way back to the newcomer: the walk reversed, then the newcomer.
        let route = loop_free(self.me.peer, path.iter().rev().copied().chain([joiner]));
        let class = card.shape.role;
        let can_hold = self.want(class) > 0 && (!self.hard(class) || self.room(class));
        if (ttl == 0 || self.active.len() <= 1) && !can_hold {
            // The walk ends at a member whose role cannot hold the
            // newcomer (a leaf, a full super-peer): pass it on, still at
            // its end, to a neighbour that might (a super-peer), for as
            // long as the path has room; else keep the card.
            let holders: Vec<P> = self
                .active
                .iter()
                .filter(|a| a.card.peer != from && a.card.peer != joiner)
                .filter(|a| a.card.shape.role == Role::Super || self.me.shape.role == Role::Member)
                .map(|a| a.card.peer)
                .collect();
            if path.len() < 2 * usize::from(self.cfg.arwl) + 4
                && let Some(i) = Self::pick(&mut self.rng, &holders)
            {
                path.push(self.me.peer);
                self.send(holders[i], Message::ForwardJoin { card, ttl: 0, path });
            } else {
                self.add_passive(card, route);
            }
            return;
        }
        if ttl == 0 || self.active.len() <= 1 {
            self.connect(card, route, true, true, now);
            return;
        }
        if ttl == self.cfg.prwl {
            self.add_passive(card.clone(), route.clone());
        }
        let candidates: Vec<P> = self.active().filter(|&p| p != from && p != joiner).collect();
        match Self::pick(&mut self.rng, &candidates) {
            Some(i) => {
                path.push(self.me.peer);
                self.send(candidates[i], Message::ForwardJoin { card, ttl: ttl - 1, path });
            }
            None if can_hold => self.connect(card, route, true, true, now),
            None => self.add_passive(card, route),
        }
    }

    fn on_shuffle(&mut self, from: P, origin: P, ttl: u8, mut path: Vec<P>, mut cards: Vec<Card<P>>, now: Millis) {
        if origin == self.me.peer || path.is_empty() || path.len() >= MAX_LIST || cards.len() > MAX_LIST {
            self.stats.ignored += 1;
            return;
        }
        let ttl = ttl.saturating_sub(1);
        let candidates: Vec<P> = self.active().filter(|&p| p != from && p != origin).collect();
        if ttl > 0
            && let Some(i) = Self::pick(&mut self.rng, &candidates)
        {
            path.push(self.me.peer);
            self.send(candidates[i], Message::Shuffle { origin, ttl, path, cards });
            return;
        }
        // The walk ends here.
        if !self.take_cards_from(from, now) {
            self.stats.ignored += 1;
            return;
        }
        // At most a shuffle's worth: a shuffle of 64 cards would otherwise
        // fill our passive view with whatever its origin chose, and draw as
        // many of ours.
        cards.truncate(self.cfg.shuffle_cards());
        // Answer with a sample of our passive view, back along the walk.
        let reply = self.sample_passive(cards.len());
        let back = loop_free(self.me.peer, path.iter().rev().copied().chain([origin]));
        let mut route = back.clone();
        let first = route.remove(0);
        let inner = Box::new(Message::ShuffleReply { cards: reply });
        self.send(first, Message::Relay { origin: self.me.peer, route, inner });
        // The sample is the origin's card, then its active peers (as many
        // as our own `shuffle_active`: members run the same parameters),
        // then its passive ones. The way to the first is back along the
        // walk, then through the origin; the passive ones were linked to
        // nobody we know of, and get no route.
        for (i, c) in cards.into_iter().enumerate() {
            let route = if i <= self.cfg.shuffle_active { back.clone() } else { Vec::new() };
            self.add_passive(c, route);
        }
    }

    /// Whether to take the cards of a shuffle or of a shuffle's answer
    /// that came over `from`'s link now. About one walk a round ends at
    /// each member (each member starts one), spread over its links, and
    /// each member gets one answer a round; two a round per link leaves
    /// room for jitter and small networks, and a neighbour sending shuffles
    /// or answers full of cards of nobody cannot fill our passive view.
    fn take_cards_from(&mut self, from: P, now: Millis) -> bool {
        let last = self.shuffled_from.get(&from).copied();
        if last.is_some_and(|(before, _)| before.is_some_and(|b| now.saturating_sub(b) < self.cfg.round)) {
            return false;
        }
        self.shuffled_from.insert(from, (last.map(|(_, l)| l), now));
        true
    }

    fn on_relay(&mut self, from: P, origin: P, mut route: Vec<P>, inner: Message<P>, now: Millis) {
        // Only neighbours may relay through us, only tokens and shuffle
        // replies travel this way, and each neighbour is held to the token
        // limit (the `origin` it names is not authenticated; the link is).
        let token = matches!(inner, Message::Introduce { .. });
        let neighbour = self.is_active(from) || (token && self.is_lingering(from));
        if !neighbour || !(token || matches!(inner, Message::ShuffleReply { .. })) {
            self.stats.ignored += 1;
            if token {
                self.stats.relay_from_stranger += 1;
            }
            return;
        }
        if token && !self.limiter.allow(from, now) {
            self.stats.relay_refused += 1;
            self.stats.relay_rate_limited += 1;
            return;
        }
        if let Some(&target) = route.last() {
            // Routes are hints learned earlier: skip ahead to the furthest
            // hop that is our neighbour now (the peer itself, if linked),
            // or go through a neighbour linked to the peer.
            // Never back to where it came from (views may be stale).
            let Some(live) = self.live_route(&route, target, Some(from)) else {
                self.stats.relay_refused += 1;
                if token {
                    self.stats.relay_unroutable += 1;
                }
                return;
            };
            let next = live[0];
            route = live[1..].to_vec();
            if token {
                self.stats.relayed += 1;
            }
            self.send(next, Message::Relay { origin, route, inner: Box::new(inner) });
            return;
        }
        match inner {
            Message::Introduce { token } => {
                self.stats.introduced += 1;
                self.event(Event::Introduced { from: origin, token });
            }
            Message::ShuffleReply { cards } => {
                // At most a shuffle's worth of cards (members run the same
                // parameters), within the link's allowance: answers nobody
                // asked for cannot fill our passive view with cards of
                // nobody. (Waiting for our own shuffle's answer instead
                // lost late answers and split the simulated network.)
                if !self.is_active(from) || !self.take_cards_from(from, now) {
                    self.stats.ignored += 1;
                    return;
                }
                // The answerer's passive peers: linked to nobody we know of.
                for c in cards.into_iter().take(self.cfg.shuffle_cards()) {
                    self.add_passive(c, Vec::new());
                }
            }
            _ => self.stats.ignored += 1,
        }
    }

    fn connect(&mut self, card: Card<P>, route: Vec<P>, high: bool, forced: bool, now: Millis) {
        let peer = card.peer;
        if peer == self.me.peer || self.is_active(peer) || self.pending.iter().any(|p| p.card.peer == peer) {
            return;
        }
        // Links in flight are bounded: walks cannot make us dial without end.
        if self.pending.len() >= self.in_flight_cap(now) {
            self.stats.ignored += 1;
            return;
        }
        self.stats.connects += 1;
        self.pending.push(Pending { card: card.clone(), high, forced, since: now, linked: false });
        self.out.push_back(Output::Connect { card, route });
    }

    fn add_active(&mut self, card: Card<P>, forced: bool, now: Millis) {
        let peer = card.peer;
        if peer == self.me.peer {
            return;
        }
        self.pending.retain(|p| p.card.peer != peer);
        if let Some(a) = self.active.iter_mut().find(|a| a.card.peer == peer) {
            a.card = card;
            return;
        }
        if forced {
            self.forced_at.rotate_right(1);
            self.forced_at[0] = Some(now);
        }
        // Room in the newcomer's class (a class our role does not keep
        // holds it only until `shape_links` finds it another way in).
        let class = card.shape.role;
        if self.want(class) > 0 && self.count_in(class) >= self.want(class) {
            self.evict(now, Some(class));
        }
        self.passive.retain(|p| p.card.peer != peer);
        self.lingering.retain(|(p, _)| *p != peer);
        self.active.push(ActivePeer {
            card,
            since: now,
            newcomer: false,
            forced,
            relayed: None,
            heard: now,
            pinged: now,
            suspected: false,
            asked: None,
            quiet: false,
        });
        self.plum.neighbor_up(peer, now);
        self.stats.neighbor_ups += 1;
        self.event(Event::NeighborUp(peer));
        self.view_changed(now);
    }

    /// Drops an active peer to make room, sparing newcomers that joined
    /// through us in the last two rounds: one dropped as soon as it was
    /// admitted would be cut off from the introductions its join started
    /// (the view then stays over size, at most twice, until
    /// [`Overlay::tick`]).
    ///
    /// HyParView drops a random peer. That is what we do, except under a
    /// stream of forced links (`STREAM` within `RELAYED_FOR` rounds: JOINs
    /// through us, join walks ending here). Members flooding joins would
    /// otherwise take most places in honest views and, if they also
    /// swallow what they should pass on, cut honest members off: in the
    /// simulator 10% such members took 65% of the places, and a broadcast
    /// reached nobody. Under a stream the victim is, in this order:
    ///
    /// 1. a forced link made in the last `RELAYED_FOR` rounds that has
    ///    relayed us no broadcast (nobody goes yet while such a link is a
    ///    spared newcomer);
    /// 2. any link that young that has relayed nothing;
    /// 3. any link that has relayed nothing for that long;
    /// 4. anyone.
    ///
    /// Peers that told us they have at most `MIN_BRIDGES` links are left
    /// out of the first two. A member's working links stay, and the flood
    /// displaces itself. Outside a stream the draw stays random: the
    /// members hardest to reach (behind symmetric NATs) live on links
    /// others' walks force on them, and dropping those first left two of
    /// them on an island in the whole-system simulation.
    ///
    /// With a `class`, only links to peers of that role are candidates.
    fn evict(&mut self, now: Millis, class: Option<Role>) -> bool {
        let in_class = |a: &ActivePeer<P>| class.is_none_or(|c| a.card.shape.role == c);
        // A quiet link goes first: it is probably dead, and its
        // replacement is what made the view too big (see `live_active`).
        // It is dropped card and all, as if it had timed out, unless we
        // are the one who moved (see `addresses_changed`). A DISCONNECT
        // tells it if it was only slow. The session is left to the
        // transport, whose consent checks end it if the peer is gone: a
        // close here would also end a link the peer is making to us again
        // (after a move, say).
        if let Some(a) = self.active.iter().find(|a| a.quiet && in_class(a)) {
            let victim = a.card.peer;
            let ours = self.keep_on_loss.contains(&victim);
            self.send(victim, Message::Disconnect { alive: true });
            self.remove_active(victim, DownReason::Replaced, ours, now);
            return true;
        }
        // A flood of joins must not grow the view without bound: at twice
        // its size, nobody is spared.
        let spare = self.active.len() < 2 * self.cfg.active.max(self.fill_target());
        let window = RELAYED_FOR * self.cfg.round;
        // Joiners we hold (see `holds_joiner`) are spared up to a
        // super-peer's worth of them.
        let holding = self.active.iter().filter(|a| self.holds_joiner(a, now)).count() <= shape::HOLD_MAX;
        let spared = |a: &ActivePeer<P>| {
            a.newcomer
                && ((spare && now.saturating_sub(a.since) < 2 * self.cfg.round)
                    || (holding && self.holds_joiner(a, now)))
        };
        let idle = |a: &ActivePeer<P>| a.relayed.is_none_or(|t| now.saturating_sub(t) >= window);
        let young = |a: &ActivePeer<P>| now.saturating_sub(a.since) < window;
        let stream = self.forced_at.iter().all(|t| t.is_some_and(|t| now.saturating_sub(t) < window));
        // Spare our last links beyond our own neighbourhood. Members that
        // can reach few others (behind symmetric NATs) crowd into the views
        // of the few that take them; were those to drop every neighbour
        // linked elsewhere, the crowd would become an island nobody can
        // route a token into.
        let bridges: Vec<usize> =
            (0..self.active.len()).filter(|&i| self.is_bridge(self.active[i].card.peer)).collect();
        let keep_bridges = bridges.len() <= MIN_BRIDGES;
        let tier = |f: &dyn Fn(&ActivePeer<P>) -> bool| -> Vec<usize> {
            (0..self.active.len())
                .filter(|&i| in_class(&self.active[i]) && !spared(&self.active[i]) && f(&self.active[i]))
                .filter(|i| !keep_bridges || !bridges.contains(i))
                .collect()
        };
        let mut pool = Vec::new();
        if stream {
            // A peer that told us it has few links is spared: the members
            // hardest to reach live on the links forced on them.
            let needy = |a: &ActivePeer<P>| self.nbr_views.get(&a.card.peer).is_some_and(|v| v.len() <= MIN_BRIDGES);
            pool = tier(&|a| a.forced && idle(a) && young(a) && !needy(a));
            if pool.is_empty() && self.active.iter().any(|a| spared(a) && a.forced && idle(a)) {
                return false;
            }
            if pool.is_empty() {
                pool = tier(&|a| idle(a) && young(a) && !needy(a));
            }
            if pool.is_empty() {
                pool = tier(&idle);
            }
        }
        if pool.is_empty() {
            pool = tier(&|_| true);
        }
        if pool.is_empty() {
            pool = (0..self.active.len()).filter(|&i| in_class(&self.active[i]) && !spared(&self.active[i])).collect();
        }
        let Some(k) = self.pick_victim_by_standing(&pool) else { return false };
        let victim = self.active[pool[k]].card.peer;
        // Under a hierarchy or star, the peer we drop may know no other
        // super-peer: a leaf dropped by a full super-peer, a super-peer
        // promoted among leaves that know only it. Our super-peers' cards
        // keep it (and the leaves it holds) from becoming an island.
        self.hand_super_cards(victim, false);
        self.send(victim, Message::Disconnect { alive: true });
        self.remove_active(victim, DownReason::Replaced, true, now);
        self.linger(victim, now);
        true
    }

    fn remove_active(&mut self, peer: P, reason: DownReason, keep: bool, now: Millis) {
        let Some(i) = self.active.iter().position(|a| a.card.peer == peer) else { return };
        let a = self.active.swap_remove(i);
        if matches!(reason, DownReason::Timeout | DownReason::LinkLost) && !a.quiet {
            self.lost_link(peer, a.card.shape.role, now);
        }
        self.keep_on_loss.retain(|p| *p != peer);
        self.nbr_views.remove(&peer);
        self.shuffled_from.remove(&peer);
        self.plum.neighbor_down(peer);
        self.drain_plum(now);
        self.stats.neighbor_downs += 1;
        self.event(Event::NeighborDown { peer, reason });
        if keep {
            self.add_passive(a.card, Vec::new());
        }
        self.view_changed(now);
        if reason != DownReason::Replaced {
            self.fill(now);
        }
    }

    fn add_passive(&mut self, card: Card<P>, route: Vec<P>) {
        let peer = card.peer;
        if peer == self.me.peer || self.is_active(peer) || !self.compatible(card.shape) {
            return;
        }
        // A route always ends at the peer it leads to.
        let route = if route.last() == Some(&peer) || route.is_empty() {
            route
        } else {
            route.into_iter().chain([peer]).collect()
        };
        if let Some(p) = self.passive.iter_mut().find(|p| p.card.peer == peer) {
            p.card = card;
            if !route.is_empty() {
                p.route = route;
            }
            return;
        }
        // Under a hierarchy or star the passive view holds `passive`
        // super-peers' cards and half as many others beside them (see
        // `worth_keeping`); a card pushes out one of its own kind, at
        // random (HyParView's rule, and all a mesh has).
        let keep = self.worth_keeping(&card);
        let bound = if keep { self.cfg.passive } else { self.cfg.passive / 2 };
        loop {
            let kind: Vec<usize> =
                (0..self.passive.len()).filter(|&i| self.worth_keeping(&self.passive[i].card) == keep).collect();
            if kind.len() < bound.max(1) {
                break;
            }
            let Some(k) = Self::pick(&mut self.rng, &kind) else { break };
            self.passive.swap_remove(kind[k]);
        }
        self.passive.push(PassivePeer { card, route });
    }

    fn sample_passive(&mut self, n: usize) -> Vec<Card<P>> {
        let mut idx: Vec<usize> = (0..self.passive.len()).collect();
        let mut out = Vec::new();
        while out.len() < n.min(MAX_LIST)
            && let Some(i) = Self::pick(&mut self.rng, &idx)
        {
            out.push(self.passive[idx.swap_remove(i)].card.clone());
        }
        out
    }

    /// Active peers not quiet. A quiet link is probably dead, so `fill`
    /// replaces it at once (and `evict` drops it first when the
    /// replacement comes) rather than after `fail_after`: after a mass
    /// failure a member whose every neighbour died finds new ones while
    /// the first broadcasts are still in flight.
    ///
    /// Not after our own move (`addresses_changed`): then our links go
    /// quiet because we left, and dialing at once, before the host has
    /// learned its new addresses, burns the cards we want to dial later
    /// (in the simulator 10 of 13 moved members linked again that way,
    /// against 13 of 13 waiting for the transport to report the loss).
    fn live_active(&self) -> usize {
        self.active.iter().filter(|a| self.is_live(a)).count()
    }

    /// Whether an active peer counts (see `live_active`).
    fn is_live(&self, a: &ActivePeer<P>) -> bool {
        !a.quiet || self.keep_on_loss.contains(&a.card.peer)
    }

    /// A peer we asked to fill the view refused: see `fill`.
    fn fill_failed(&mut self, now: Millis) {
        self.fill_backoff = (self.fill_backoff + 1).min(3);
        self.fill_after = now + (self.cfg.round << self.fill_backoff);
    }

    /// Asks for links to passive peers until the active view could be full.
    /// A peer we asked to fill the view refused (its view is full): the
    /// next try waits a round, doubling up to 8 rounds while they keep
    /// being refused (every try costs both sides connectivity checks and a
    /// handshake). A link that failed (a dead or unreachable peer) is not
    /// held against the next try: after a crash, members must refill at
    /// once. A member with no live neighbour never waits.
    fn fill(&mut self, now: Millis) {
        if self.live_active() > 0 && now < self.fill_after {
            return;
        }
        self.held.retain(|_, until| *until > now);
        loop {
            let classes = self.classes_to_fill(now);
            if classes.is_empty() {
                break;
            }
            let free: Vec<usize> = (0..self.passive.len())
                .filter(|&i| classes.contains(&self.passive[i].card.shape.role))
                .filter(|&i| !self.pending.iter().any(|p| p.card.peer == self.passive[i].card.peer))
                .filter(|&i| !self.held.contains_key(&self.passive[i].card.peer))
                .collect();
            // Prefer peers a token can reach now (through a neighbour
            // linked to them): if their network wants an RSVP, it gets there.
            let routable: Vec<usize> =
                free.iter().copied().filter(|&i| self.known_route(self.passive[i].card.peer, None).is_some()).collect();
            let pool = if routable.is_empty() || !self.cfg.prefer_reachable { free } else { routable };
            let Some(i) = self.pick_by_standing(&pool) else { break };
            let p = self.passive[pool[i]].clone();
            let route = self.live_route(&p.route, p.card.peer, None).unwrap_or_default();
            let high = self.live_kept() < LONELY.min(self.fill_target());
            let asked = self.pending.len();
            self.connect(p.card, route, high, false, now);
            if self.pending.len() == asked {
                break;
            }
        }
    }

    fn view_changed(&mut self, now: Millis) {
        self.nbr_dirty = true;
        if self.cfg.announce_views > 0 {
            // Coalesce bursts of changes into one announcement.
            let soon = now + self.cfg.round / 4;
            self.next_view = Some(self.next_view.map_or(soon, |t| t.min(soon)));
        }
    }

    fn drain_plum(&mut self, now: Millis) {
        while let Some((to, msg)) = self.plum.poll_send() {
            self.send(to, msg);
        }
        while let Some(d) = self.plum.poll_delivery() {
            match d.kind {
                Kind::App => self.event(Event::Delivered { id: d.id, round: d.round, payload: d.payload }),
                Kind::Joined => {
                    let mut r = d.payload.as_slice();
                    if let Some(peer) = P::take(&mut r)
                        && peer != self.me.peer
                    {
                        self.event(Event::MemberJoined { peer, round: d.round });
                    }
                }
                // Only members that announce views keep others' (bounded).
                Kind::View if self.cfg.announce_views > 0 && self.views.len() < 4096 => {
                    match shape::read_view(&d.payload, now) {
                        Some(v) => {
                            self.views.insert(d.id.origin, v);
                        }
                        None => self.stats.ignored += 1,
                    }
                }
                Kind::View => {}
                Kind::Super => match Card::<P>::from_bytes(&d.payload) {
                    Ok(card)
                        if card.peer == d.id.origin
                            && card.peer != self.me.peer
                            && card.shape.role == Role::Super
                            && self.compatible(card.shape) =>
                    {
                        self.add_passive(card, Vec::new())
                    }
                    _ => self.stats.ignored += 1,
                },
            }
        }
    }

    /// Runs timers: shuffles, pings, suspicion, link timeouts, GRAFTs, view
    /// announcements. Call it at [`Overlay::poll_timeout`] (or more often).
    pub fn tick(&mut self, now: Millis) {
        self.last_tick = now;
        let mut expired = Vec::new();
        self.lingering.retain(|&(p, until)| {
            let keep = until > now;
            if !keep {
                expired.push(p);
            }
            keep
        });
        for p in expired {
            // A new link to it is being asked for over the same session.
            if !self.pending.iter().any(|q| q.card.peer == p) {
                self.out.push_back(Output::Close(p));
            }
        }
        if now >= self.next_shuffle {
            self.next_shuffle = now + self.cfg.round;
            self.start_shuffle();
        }
        let mut failed = Vec::new();
        let mut pings = Vec::new();
        let mut suspected = Vec::new();
        let mut quiet = Vec::new();
        let hb = self.cfg.heartbeat;
        let doubt = self.plum.tree_in_doubt();
        for a in &mut self.active {
            let silent = now.saturating_sub(a.heard);
            if silent >= self.cfg.fail_after {
                failed.push(a.card.peer);
            } else {
                if silent >= self.cfg.suspect_after && !a.suspected {
                    a.suspected = true;
                    suspected.push(a.card.peer);
                }
                let (beat, every) = Self::beat(&self.cfg, self.me.peer, a, self.plum.eager(), doubt);
                if silent >= beat && now.saturating_sub(a.pinged) >= every {
                    a.pinged = now;
                    a.asked.get_or_insert(now);
                    pings.push(a.card.peer);
                }
                if hb > 0 && !a.quiet && a.asked.is_some_and(|t| now.saturating_sub(t) >= QUIET_BEATS * hb) {
                    a.quiet = true;
                    quiet.push((a.card.peer, a.card.shape.role));
                }
            }
        }
        for (p, class) in quiet {
            self.lost_link(p, class, now);
            self.stats.quiet += 1;
            self.plum.set_quiet(p, true, now);
        }
        for p in pings {
            self.nonce += 1;
            self.send(p, Message::Ping { nonce: self.nonce });
        }
        for p in suspected {
            self.stats.suspicions += 1;
            self.event(Event::Suspected(p));
        }
        for p in failed {
            self.remove_active(p, DownReason::Timeout, false, now);
            self.out.push_back(Output::Close(p));
        }
        let stale: Vec<P> = self
            .pending
            .iter()
            .filter(|p| now.saturating_sub(p.since) >= self.cfg.connect_timeout)
            .map(|p| p.card.peer)
            .collect();
        for p in stale {
            self.out.push_back(Output::Close(p));
            self.link_failed(p, now);
        }
        self.shape_links(now);
        self.announce_super(now);
        if self.wants_links(now) {
            self.fill(now);
        }
        self.plum.tick(now);
        self.drain_plum(now);
        if self.cfg.announce_views > 0 {
            if self.next_view.is_some_and(|t| now >= t) {
                // A member with no link of the policy's yet (joining) is
                // not in its graph: it says nothing.
                let links = self.announced_links();
                self.next_view = Some(now + self.cfg.announce_views);
                if !links.is_empty() {
                    self.plum.broadcast(Kind::View, shape::view_payload(self.me.shape, links.into_iter()), now);
                    self.drain_plum(now);
                }
            }
            // Forget members whose announcements stopped.
            let horizon = self.cfg.announce_views.saturating_mul(3);
            self.views.retain(|_, v| now.saturating_sub(v.at) < horizon);
        }
    }

    /// How long the link to `a` may be silent before we ping it, and how
    /// often we ping it then (see [`Config::heartbeat`]): tree links, links
    /// with a ping unanswered and, while a tree link is quiet (`doubt`),
    /// every link on the heartbeat; the others every round.
    fn beat(cfg: &Config, me: P, a: &ActivePeer<P>, eager: &[P], doubt: bool) -> (Millis, Millis) {
        let hb = cfg.heartbeat;
        if hb == 0 {
            return (cfg.round, cfg.round);
        }
        if a.asked.is_some() || doubt {
            (hb, hb)
        } else if eager.contains(&a.card.peer) {
            (if me < a.card.peer { hb } else { 2 * hb }, hb)
        } else {
            (cfg.round, cfg.round)
        }
    }

    fn start_shuffle(&mut self) {
        let Some(i) = Self::pick(&mut self.rng, &self.active) else { return };
        let target = self.active[i].card.peer;
        let mut cards = vec![self.me.clone()];
        let mut others: Vec<Card<P>> =
            self.active.iter().filter(|a| a.card.peer != target).map(|a| a.card.clone()).collect();
        while cards.len() <= self.cfg.shuffle_active
            && let Some(j) = Self::pick(&mut self.rng, &others)
        {
            cards.push(others.swap_remove(j));
        }
        cards.extend(self.sample_passive(self.cfg.shuffle_passive));
        self.stats.shuffles += 1;
        let msg = Message::Shuffle { origin: self.me.peer, ttl: self.cfg.arwl, path: vec![self.me.peer], cards };
        self.send(target, msg);
    }

    /// When [`Overlay::tick`] next has work.
    pub fn poll_timeout(&self) -> Millis {
        let mut t = self.next_shuffle;
        let doubt = self.plum.tree_in_doubt();
        // A fill held back by failures is due once it may run again (not
        // again once a tick at or after that time has tried it).
        if self.wants_links(self.last_tick) && !self.passive.is_empty() && self.fill_after > self.last_tick {
            t = t.min(self.fill_after);
        }
        for &(_, until) in &self.lingering {
            t = t.min(until);
        }
        for a in &self.active {
            t = t.min(a.heard.max(a.pinged) + self.cfg.round).min(a.heard + self.cfg.fail_after);
            if !a.suspected {
                t = t.min(a.heard + self.cfg.suspect_after);
            }
            let (beat, every) = Self::beat(&self.cfg, self.me.peer, a, self.plum.eager(), doubt);
            t = t.min((a.heard + beat).max(a.pinged + every));
            if let Some(asked) = a.asked
                && self.cfg.heartbeat > 0
                && !a.quiet
            {
                t = t.min(asked + QUIET_BEATS * self.cfg.heartbeat);
            }
        }
        let stranded = self.stranded(self.last_tick);
        for p in &self.pending {
            t = t.min(p.since + self.cfg.connect_timeout);
            // Stranded, the next wave of dials goes a round after one.
            if stranded && p.since + self.cfg.round > self.last_tick {
                t = t.min(p.since + self.cfg.round);
            }
        }
        if let Some(v) = self.next_view {
            t = t.min(v);
        }
        if let Some(g) = self.plum.poll_timeout() {
            t = t.min(g);
        }
        t
    }

    /// The next thing the driver must do.
    pub fn poll(&mut self) -> Option<Output<P>> {
        if std::mem::take(&mut self.nbr_dirty) {
            let peers: Vec<P> = self.active().collect();
            for &p in &peers {
                let shape = self.me.shape;
                // A view over a list's bound (a contact holding joiners) is
                // told in part: a longer list is malformed to the receiver.
                let others = peers.iter().copied().filter(|&q| q != p).take(MAX_LIST).collect();
                self.send(p, Message::Neighbors { peers: others, shape });
            }
        }
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests;
