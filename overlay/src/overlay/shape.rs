//! The topology policy on a live member: which links it keeps, its role,
//! and the invariants it checks.
//!
//! HyParView's active view is the mesh policy. The others shape it by the
//! *class* of each link, the role of the peer at its other end:
//!
//! | policy | role | keeps |
//! |---|---|---|
//! | mesh | member | `active` members |
//! | spanning tree | member | `max_degree` members (Plumtree's eager links over them are the tree) |
//! | hierarchical | super-peer | `core` super-peers, up to `leaves` leaves (fewer if [`Config::max_leaves`] says so) |
//! | hierarchical | leaf | `uplinks` super-peers, no leaf |
//! | star | hub | `active` hubs, up to `leaves` leaves |
//! | star | leaf | one hub |
//!
//! A member asks for links only in the classes it fills (a super-peer
//! waits for its leaves to ask), accepts a link in a class with room (or
//! a high-priority one, except past a super-peer's leaf bound, which is
//! hard), and drops links of a class over its bound, or of a class its
//! role does not keep, once it has a link its role does keep: a newcomer
//! joins through whichever member it was invited by, and the join walk's
//! ends, which pass the newcomer on until a member that can hold it
//! takes it, give it the links its role wants.
//!
//! Roles: in a mesh or a spanning tree everyone is a member. Hierarchical:
//! a member the driver says can serve ([`Config::super_capable`]: a public
//! address, an endpoint-independent NAT or a mapped port, and capacity)
//! is a super-peer, the others leaves; a leaf that finds no super-peer
//! for `PROMOTE_AFTER` rounds after it had one (at once if it has no link
//! and no super-peer's card left), or `PROMOTE_UNLINKED_AFTER`
//! while joining or after a move, becomes one (a network of hard
//! NATs still forms, and a network whose super-peers all failed elects
//! new ones). A super-peer the driver finds can no longer serve (it
//! moved to another network) steps down ([`Overlay::step_down`]) and may
//! be elected again from where it is. Star: the hubs are the members the
//! driver names ([`Config::super_capable`]), and nobody is promoted.
//!
//! Standing: reachability decides who serves; the standing ([`Standing`]:
//! time in the network and leaf capacity, two bits each in every card's
//! shape) decides whom the others lean on. With
//! [`Config::prefer_standing`] a member asking super-peers for links picks
//! among their cards at random weighted by standing (1 to 16), a member
//! hands newcomers the weightiest super-peers' cards first, a leaf with
//! more uplinks than it keeps drops the lightest, and a leaf rewires, at
//! its slow rewiring pace, towards a super-peer of more standing than its
//! lightest uplink. A weight, not an order: every leaf asking the same
//! few super-peers would be refused by them once full. Promotion does not
//! weigh the standing: an orphaned leaf promotes after `PROMOTE_AFTER`
//! rounds whatever its tenure (the mass-failure figures rest on that
//! pace).
//!
//! Members of one network must run one policy. The policy travels in every
//! card and [`Message::Neighbors`]; a member refuses a JOIN, NEIGHBOR or
//! join walk carrying another policy, drops a neighbour that turns out to
//! run one, and says so ([`Event::PolicyMismatch`]): mixing policies would
//! break the invariants of both (a mesh member links to leaves, which then
//! have leaf links). The network's founder decides, and a newcomer is told
//! at its first contact.

use petgraph::graph::UnGraph;

use super::*;
use crate::topology::{self, NodeInfo, Reach};
use crate::wire::{PolicyKind, Role, Shape, Standing};

/// Rounds a hierarchical leaf that had a super-peer goes without one (they
/// died, or dropped it) before it becomes a super-peer itself.
pub(super) const PROMOTE_AFTER: Millis = 10;

/// Rounds a joining leaf that never had a super-peer waits for one with
/// room before it becomes one itself: behind NATs a newcomer's first links
/// take up to a minute or two (the whole-system run: median 64 s from the
/// card to the first link), and promoting it sooner made 965 of 968
/// members super-peers there.
pub(super) const PROMOTE_UNLINKED_AFTER: Millis = 60;

/// Rounds a contact holds a newcomer of a class its role does not keep (a
/// leaf that joined through a leaf): the newcomer's way in while it finds
/// a super-peer, since behind NATs its dials need RSVPs relayed through
/// the contact. The newcomer drops the link once it has a super-peer; a
/// contact that dropped it after the usual spare of two rounds left most
/// joiners of the whole-system run alone until they promoted themselves.
/// It outlasts the joiner's longest wait before promotion (with its
/// jitter): a joiner that promotes is then still linked to the network it
/// joined, not only to the leaves that joined through it (an island).
pub(super) const HOLD_JOINER: Millis = 2 * PROMOTE_UNLINKED_AFTER;

/// Joiners a contact holds at most (see `HOLD_JOINER`); beyond, they go
/// as any link over its bound. The founder of a network and its first
/// members are the contacts of many joiners while no super-peer exists
/// yet: dropping those beyond the usual spare (10 links) left each dropped
/// joiner with only the leaves that joined through it, an island once it
/// promoted.
pub(super) const HOLD_MAX: usize = 32;

/// Rounds before a hierarchical leaf's first rewiring (see `rewire`), plus
/// up to as many again at random; each later one waits twice as long, up
/// to 8 times. Mixing matters while the network forms; later every swap
/// costs the broadcast tree a repair (at a steady 30 to 60 rounds the
/// steady-state RMR at N = 10,000 rose from 0.11 to 0.22; at a steady
/// 120, the whole-system run at N = 300 split in two).
pub(super) const LEAF_REWIRE_ROUNDS: Millis = 30;

/// Rounds between a super-peer's rewirings (see `rewire`), plus up to one
/// at random.
pub(super) const REWIRE_ROUNDS: Millis = 10;

/// Rounds a link of a class over its bound, or a class our role does not
/// keep, may last before it counts as a violation (joins and role changes
/// pass through such links, see the module text).
const VIOLATION_GRACE: Millis = 3;

/// Waves of dials a member `stranded` may have in flight: with 2, after
/// an 80% crash (mesh, N = 2,000, seeds 2 and 3) the last island was one
/// whose 20 dials all hit the dead, and it waited for them to fail (one
/// component after 7 and 6 s); with 4, after 4 s. Its passive view (30
/// cards) is mostly spent by then: dials that fail forget their cards.
pub(super) const STRANDED_WAVES: usize = 4;

/// How long after losing two links to failure a member with half its
/// links or fewer counts as `stranded`, in rounds.
pub(super) const STRANDED_ROUNDS: Millis = 10;

/// A live member's topology policy with its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Topology {
    /// HyParView's random mesh (`Config::active` links each), Plumtree's
    /// tree on top.
    #[default]
    Mesh,
    /// The mesh bounded to `max_degree` links a member, so no member of
    /// the broadcast tree (Plumtree's eager links) has more.
    SpanningTree {
        /// Most links per member.
        max_degree: usize,
    },
    /// Super-peers meshed together, leaves linked only to super-peers.
    Hierarchical {
        /// Links a super-peer keeps to other super-peers.
        core: usize,
        /// Super-peers a leaf links to.
        uplinks: usize,
        /// Most leaves a super-peer carries (a hard bound).
        leaves: usize,
    },
    /// Hubs meshed together (up to `Config::active` each), each leaf
    /// linked to one hub.
    Star {
        /// Most leaves a hub carries (a hard bound).
        leaves: usize,
    },
}

impl Topology {
    /// The spanning tree's default bound.
    pub const SPANNING_TREE: Topology = Topology::SpanningTree { max_degree: 4 };
    /// The hierarchy's default bounds.
    pub const HIERARCHICAL: Topology = Topology::Hierarchical { core: 6, uplinks: 2, leaves: 32 };
    /// The star's default bound.
    pub const STAR: Topology = Topology::Star { leaves: 256 };

    /// The policy's kind (what cards carry).
    pub fn kind(&self) -> PolicyKind {
        match self {
            Topology::Mesh => PolicyKind::Mesh,
            Topology::SpanningTree { .. } => PolicyKind::SpanningTree,
            Topology::Hierarchical { .. } => PolicyKind::Hierarchical,
            Topology::Star { .. } => PolicyKind::Star,
        }
    }

    /// A policy by name, with its default bounds: `mesh`, `spanning-tree`,
    /// `hierarchical` or `star`.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "mesh" => Ok(Topology::Mesh),
            "spanning-tree" => Ok(Self::SPANNING_TREE),
            "hierarchical" => Ok(Self::HIERARCHICAL),
            "star" => Ok(Self::STAR),
            other => Err(format!("unknown topology `{other}`: expected mesh, spanning-tree, hierarchical or star")),
        }
    }

    /// The most leaves a super-peer (hub) carries under this policy, the
    /// bound every member checks super-peers against; `None` for the
    /// policies without leaves.
    pub fn max_leaves(&self) -> Option<usize> {
        match self {
            Topology::Hierarchical { leaves, .. } | Topology::Star { leaves } => Some(*leaves),
            Topology::Mesh | Topology::SpanningTree { .. } => None,
        }
    }

    /// Checks a member's own leaf capacity ([`Config::max_leaves`]): only
    /// the policies with leaves take one, and not above their bound (the
    /// other members would see its leaves as a violation).
    pub fn own_max_leaves(&self, n: usize) -> Result<usize, String> {
        match self.max_leaves() {
            None => Err(format!(
                "the {} topology has no super-peers; a leaf capacity applies to hierarchical and star (mesh is the \
                 default: choose the topology too)",
                self.kind().as_str()
            )),
            Some(bound) if n > bound => Err(format!(
                "{n} is above the {} policy's bound of {bound} leaves, which every member checks super-peers against",
                self.kind().as_str()
            )),
            Some(_) => Ok(n),
        }
    }

    /// The role a member starts in: super-peer or hub if it can serve.
    pub fn initial_role(&self, super_capable: bool) -> Role {
        match self {
            Topology::Mesh | Topology::SpanningTree { .. } => Role::Member,
            Topology::Hierarchical { .. } | Topology::Star { .. } if super_capable => Role::Super,
            Topology::Hierarchical { .. } | Topology::Star { .. } => Role::Leaf,
        }
    }
}

/// A policy invariant a member finds broken at its own links, or in the
/// network graph members announced ([`Config::announce_views`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeViolation {
    /// More links of one class than the policy allows, for longer than
    /// joins take.
    Degree {
        /// The class: the role of the peers at the other ends.
        class: Role,
        /// Links of that class.
        links: usize,
        /// The bound.
        max: usize,
    },
    /// Links to peers whose role ours does not link to (leaf to leaf),
    /// for longer than joins take.
    Forbidden {
        /// Their role.
        class: Role,
        /// How many.
        links: usize,
    },
    /// A leaf without any super-peer (or hub) for longer than joins take.
    NoUplink,
    /// The announced graph breaks the policy's invariant.
    Graph(topology::Violation),
}

impl std::fmt::Display for ShapeViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShapeViolation::Degree { class, links, max } => {
                write!(f, "{links} links to {}s, more than {max}", class.as_str())
            }
            ShapeViolation::Forbidden { class, links } => {
                write!(f, "{links} links to {}s, which this role does not link to", class.as_str())
            }
            ShapeViolation::NoUplink => write!(f, "a leaf without a super-peer"),
            ShapeViolation::Graph(v) => write!(f, "announced graph: {v}"),
        }
    }
}

const CLASSES: [Role; 3] = [Role::Member, Role::Super, Role::Leaf];

impl<P: PeerKey> Overlay<P> {
    /// Our policy and role.
    pub fn shape(&self) -> Shape {
        self.me.shape
    }

    /// The invariants broken now (see [`ShapeViolation`]).
    pub fn violations(&self) -> &[ShapeViolation] {
        &self.violations
    }

    /// Links our role keeps to peers of role `class`.
    pub(super) fn want(&self, class: Role) -> usize {
        let role = self.me.shape.role;
        match (self.cfg.topology, role, class) {
            (Topology::Mesh, _, Role::Member) => self.cfg.active,
            (Topology::SpanningTree { max_degree }, _, Role::Member) => self.cfg.active.min(max_degree).max(1),
            (Topology::Hierarchical { uplinks, .. }, Role::Leaf, Role::Super) => uplinks.max(1),
            (Topology::Hierarchical { core, .. }, Role::Super, Role::Super) => core.max(1),
            (Topology::Hierarchical { leaves, .. }, Role::Super, Role::Leaf) => self.leaf_bound(leaves),
            (Topology::Star { .. }, Role::Leaf, Role::Super) => 1,
            (Topology::Star { .. }, Role::Super, Role::Super) => self.cfg.active,
            (Topology::Star { leaves }, Role::Super, Role::Leaf) => self.leaf_bound(leaves),
            _ => 0,
        }
    }

    /// The leaves we carry as a super-peer (hub): the policy's bound, or
    /// our own capacity if lower ([`Config::max_leaves`]).
    fn leaf_bound(&self, policy: usize) -> usize {
        self.cfg.max_leaves.map_or(policy, |own| own.min(policy))
    }

    /// The most leaves we would carry as a super-peer (hub), our capacity
    /// within the policy's bound; `None` under a policy without leaves.
    pub fn leaf_capacity(&self) -> Option<usize> {
        self.cfg.topology.max_leaves().map(|policy| self.leaf_bound(policy))
    }

    /// Whether the bound of `class` holds against high-priority asks too:
    /// a super-peer's leaves.
    pub(super) fn hard(&self, class: Role) -> bool {
        self.me.shape.role == Role::Super && class == Role::Leaf
    }

    /// Whether we ask for links of `class`: a super-peer waits for its
    /// leaves to ask, unless it has fewer than `LONELY` links at all (its
    /// passive view may hold only leaves' cards).
    pub(super) fn fills(&self, class: Role) -> bool {
        self.want(class) > 0 && (!self.hard(class) || self.live_active() < LONELY)
    }

    /// Whether a card is of the kind the passive view is for (see
    /// [`Config::passive`]): under a hierarchy or star, super-peers' cards
    /// (leaves ask super-peers for links, and super-peers each other).
    pub(super) fn worth_keeping(&self, card: &Card<P>) -> bool {
        match self.cfg.topology {
            Topology::Mesh | Topology::SpanningTree { .. } => true,
            Topology::Hierarchical { .. } | Topology::Star { .. } => card.shape.role == Role::Super,
        }
    }

    /// Whether `a` is a newcomer that joined through us and that we hold
    /// although our role keeps no link of its class (see `HOLD_JOINER`):
    /// spared from eviction, not a violation, not in our announced view.
    pub(super) fn holds_joiner(&self, a: &ActivePeer<P>, now: Millis) -> bool {
        a.newcomer && self.want(a.card.shape.role) == 0 && now.saturating_sub(a.since) < HOLD_JOINER * self.cfg.round
    }

    /// The links our announced view names: those of classes our role
    /// keeps. The links a join passes through (a joiner's to its contact,
    /// a contact's to a joiner it holds) are not the policy's graph, and
    /// announcing them made the members' checks see leaf–leaf links.
    pub(super) fn announced_links(&self) -> Vec<P> {
        self.active.iter().filter(|a| self.want(a.card.shape.role) > 0).map(|a| a.card.peer).collect()
    }

    /// Our driver found us reachable enough to serve (a public address, a
    /// mapped port, peers that reached us unasked): a hierarchical leaf
    /// becomes a super-peer. Stars keep the hubs they were given, and a
    /// super-peer stays one. Whether the role changed.
    pub fn elect(&mut self, now: Millis) -> bool {
        if !self.electable() {
            return false;
        }
        self.stats.elections += 1;
        self.become_super(now);
        true
    }

    /// Whether [`Overlay::elect`] would make us a super-peer: we are a
    /// hierarchical leaf.
    pub fn electable(&self) -> bool {
        matches!(self.cfg.topology, Topology::Hierarchical { .. }) && self.me.shape.role == Role::Leaf
    }

    /// What made us serve is gone (we moved to another network, whose
    /// NAT may filter unasked traffic): a hierarchical super-peer becomes
    /// a leaf, to be elected again if the new network qualifies. Our
    /// neighbours learn it from our next [`Message::Neighbors`]; our
    /// leaves then find other super-peers, and we keep `uplinks` of our
    /// core links and drop the rest, as any leaf. Stars keep their hubs.
    /// Whether the role changed.
    pub fn step_down(&mut self, now: Millis) -> bool {
        if !matches!(self.cfg.topology, Topology::Hierarchical { .. }) || self.me.shape.role != Role::Super {
            return false;
        }
        self.stats.step_downs += 1;
        self.take_role(Role::Leaf, now);
        true
    }

    /// We become a super-peer (elected or promoted).
    fn become_super(&mut self, now: Millis) {
        self.take_role(Role::Super, now);
    }

    /// Our role changes to `role`: tell our neighbours (and, as a
    /// super-peer, the network) and ask for the links the role keeps.
    fn take_role(&mut self, role: Role, now: Millis) {
        self.me.shape.role = role;
        self.announce_super = role == Role::Super;
        self.orphan_since = None;
        self.event(Event::RoleChanged(role));
        self.nbr_dirty = true;
        self.fill(now);
    }

    /// A super-peer broadcasts its card ([`Kind::Super`]) once it has a
    /// link, when it becomes one and when its card changes: members keep
    /// super-peers' cards first, so super-peers find each other and leaves
    /// find super-peers. Without it, in the whole-system run (N = 1,000),
    /// groups of 5 super-peers that knew only each other held their 6 core
    /// links' worth of cards among themselves, and split the network.
    pub(super) fn announce_super(&mut self, now: Millis) {
        if !self.announce_super || self.me.shape.role != Role::Super || self.live_active() == 0 {
            return;
        }
        self.announce_super = false;
        self.plum.broadcast(Kind::Super, self.me.to_bytes(), now);
        self.drain_plum(now);
    }

    /// Links we ask for to fill the view.
    pub(super) fn fill_target(&self) -> usize {
        CLASSES.iter().filter(|&&c| self.want(c) > 0 && !self.hard(c)).map(|&c| self.want(c)).sum()
    }

    /// Active links of `class`, quiet ones too.
    pub(super) fn count_in(&self, class: Role) -> usize {
        self.active.iter().filter(|a| a.card.shape.role == class).count()
    }

    /// Live (not quiet) active links of `class`.
    pub(super) fn live_in(&self, class: Role) -> usize {
        self.active.iter().filter(|a| a.card.shape.role == class && self.is_live(a)).count()
    }

    /// Live links in the classes our role keeps.
    pub(super) fn live_kept(&self) -> usize {
        self.active.iter().filter(|a| self.want(a.card.shape.role) > 0 && self.is_live(a)).count()
    }

    /// Whether a link of `class` fits now.
    pub(super) fn room(&self, class: Role) -> bool {
        self.live_in(class) < self.want(class)
    }

    /// Whether a card's member runs our policy.
    pub(super) fn compatible(&self, shape: Shape) -> bool {
        shape.policy == self.me.shape.policy
    }

    /// Whether we should ask for links of `class` now, counting links in
    /// flight: all of them, or for a member `stranded` those asked for
    /// within the last round.
    fn short_of(&self, class: Role, now: Millis) -> bool {
        let stranded = self.stranded_in(class, now);
        let in_flight = self
            .pending
            .iter()
            .filter(|p| p.card.shape.role == class)
            .filter(|p| !stranded || now < p.since + self.cfg.round)
            .count();
        self.fills(class) && self.live_in(class) + in_flight < self.want(class) * self.dial_ahead(class, stranded)
    }

    /// Whether we are cut off from the network, or nearly, in links of
    /// `class`: we had a link our role keeps and have none live now, or we
    /// have half the links of `class` or fewer and lost two to failure
    /// (gone quiet, timed out or their transport failed) within
    /// `STRANDED_ROUNDS`. Then we dial wide
    /// (`dial_ahead`), and do not wait for a dial's answer: a round after
    /// a wave of dials, with links still missing, we ask for the next
    /// (`STRANDED_WAVES` in flight at most, see `in_flight_cap`). After a
    /// mass failure most cards are of the dead, and each wave of dials to
    /// the dead costs a dial's timeout (5 s in the simulator).
    ///
    /// After an 80% crash at N = 2,000 (seeds 1 and 2), the survivors
    /// were one component again after 10 and 7 s (mesh), 12 and 8 s
    /// (hierarchical) dialing wide with no link left and waiting for each
    /// wave to fail; after 3 and 4 s, 4 and 4 s, with this.
    ///
    /// Only after failures: links also go because a peer made room for a
    /// newcomer, and a member with few links that dialed wide for that
    /// made others make room in turn (in the steady mesh, N = 2,000, the
    /// later broadcasts' RMR rose from 0.016 to 0.074). And not after one
    /// failure: a leaf that lost one of its two super-peers is still in
    /// the network, and under churn dialing wide for that raised the
    /// hierarchy's RMR (0.26 to 0.31). Links lost because our own address
    /// changed are not failures either: counting them, renumbered members
    /// of the whole-system run (N = 1,000, seeds 5 / 6) linked again 90.4%
    /// / 90.9% of the time, 94.4% / 95.0% without.
    ///
    /// Per class: a super-peer full of leaves whose core links died would
    /// otherwise be an island with its leaves, dialing as many super-peers
    /// as it lacks per dial timeout. (No figure measured here moved with
    /// it: the hierarchy's last islands after an 80% crash at N = 10,000
    /// were lone leaves, see `promote`.)
    pub(super) fn stranded_in(&self, class: Role, now: Millis) -> bool {
        let want = self.want(class);
        if !self.linked_once || want == 0 || self.hard(class) {
            return false;
        }
        self.live_kept() == 0
            || self.live_in(class) * 2 <= want
                && self.lost_at[1].is_some_and(|t| now < t + STRANDED_ROUNDS * self.cfg.round)
    }

    /// Whether we are `stranded_in` any class.
    pub(super) fn stranded(&self, now: Millis) -> bool {
        CLASSES.iter().any(|&c| self.stranded_in(c, now))
    }

    /// The link to `peer` (of role `class`) went quiet, or went for
    /// failure without going quiet first. A link lost because our own
    /// address changed is not a failure.
    pub(super) fn lost_link(&mut self, peer: P, class: Role, now: Millis) {
        if !self.keep_on_loss.contains(&peer) {
            self.lost_at = [Some(now), self.lost_at[0]];
            if self.me.shape.role == Role::Leaf && class == Role::Super {
                self.stats.uplinks_lost += 1;
            }
        }
    }

    /// How many links of `class` we ask for at once per link we want: a
    /// member stranded in `class` asks for as many as it may have in flight
    /// in one wave (`2 * Config::active`), and drops those beyond its bound as
    /// they come. A leaf has 2 links, so an 80% crash orphans 64% of the
    /// surviving leaves: dialing 2 at a time, a hierarchy's survivors
    /// (N = 2,000) were one component after 21 s; 10, after 12 s.
    fn dial_ahead(&self, class: Role, stranded: bool) -> usize {
        if stranded { (2 * self.cfg.active).div_ceil(self.want(class).max(1)) } else { 1 }
    }

    /// Links we may have in flight: `2 * Config::active`, and
    /// `STRANDED_WAVES` times that for a member `stranded`.
    pub(super) fn in_flight_cap(&self, now: Millis) -> usize {
        2 * self.cfg.active * if self.stranded(now) { STRANDED_WAVES } else { 1 }
    }

    /// Classes we should ask for links in now (see `short_of`).
    pub(super) fn classes_to_fill(&self, now: Millis) -> Vec<Role> {
        CLASSES.iter().copied().filter(|&c| self.short_of(c, now)).collect()
    }

    /// Whether any class wants links now: `classes_to_fill` without the
    /// vector, for `tick` and `poll_timeout`.
    pub(super) fn wants_links(&self, now: Millis) -> bool {
        CLASSES.iter().any(|&c| self.short_of(c, now))
    }

    /// Tells `peer` our policy and role (an empty [`Message::Neighbors`]):
    /// why we refused it.
    pub(super) fn tell_shape(&mut self, peer: P) {
        let shape = self.me.shape;
        self.send(peer, Message::Neighbors { peers: Vec::new(), shape });
    }

    /// Under a hierarchy or star, a newcomer that joined through us gets
    /// the super-peers' cards we hold, as a shuffle's answer: it links to
    /// super-peers, and would otherwise know only us, perhaps a leaf. (A
    /// star's hubs are one in a hundred members: without this, leaves
    /// that joined through leaves never met one.)
    /// With `ours`, a super-peer's own card goes first.
    pub(super) fn hand_super_cards(&mut self, newcomer: P, ours: bool) {
        if matches!(self.cfg.topology, Topology::Mesh | Topology::SpanningTree { .. }) {
            return;
        }
        let mut cards: Vec<Card<P>> = self
            .active
            .iter()
            .map(|a| &a.card)
            .chain(self.passive.iter().map(|p| &p.card))
            .filter(|c| c.shape.role == Role::Super && c.peer != newcomer)
            .cloned()
            .collect();
        // The weightiest first (stable: links before passive cards among
        // equals, as before standings existed).
        if self.cfg.prefer_standing {
            cards.sort_by_key(|c| std::cmp::Reverse(c.shape.standing.weight()));
        }
        cards.truncate(self.cfg.shuffle_cards());
        if ours && self.me.shape.role == Role::Super {
            cards.truncate(self.cfg.shuffle_cards() - 1);
            cards.insert(0, self.me.clone());
        }
        if !cards.is_empty() {
            let inner = Box::new(Message::ShuffleReply { cards });
            self.send(newcomer, Message::Relay { origin: self.me.peer, route: Vec::new(), inner });
        }
    }

    /// A peer runs another policy than ours: forget it and close its
    /// session (a link we were making to it too).
    pub(super) fn mismatch(&mut self, peer: P, theirs: Shape, now: Millis) {
        self.stats.mismatches += 1;
        self.event(Event::PolicyMismatch { peer, policy: theirs.policy });
        self.passive.retain(|p| p.card.peer != peer);
        self.pending.retain(|p| p.card.peer != peer);
        if self.is_active(peer) {
            self.send(peer, Message::Disconnect { alive: false });
            self.remove_active(peer, DownReason::Disconnected, false, now);
        }
        self.out.push_back(Output::Close(peer));
    }

    /// A neighbour told us its shape (its [`Message::Neighbors`]).
    pub(super) fn neighbour_shape(&mut self, peer: P, shape: Shape, now: Millis) {
        if !self.compatible(shape) {
            self.mismatch(peer, shape, now);
            return;
        }
        if let Some(a) = self.active.iter_mut().find(|a| a.card.peer == peer) {
            let promoted = a.card.shape.role != Role::Super && shape.role == Role::Super;
            a.card.shape = shape;
            if promoted {
                // A neighbour became a super-peer: it wants core links, and
                // may know no super-peer (the leaves around it know only
                // it, and it may lose us, a link over our bound, next).
                self.hand_super_cards(peer, true);
            }
        }
        if let Some(p) = self.pending.iter_mut().find(|p| p.card.peer == peer) {
            p.card.shape = shape;
        }
        if let Some(p) = self.passive.iter_mut().find(|p| p.card.peer == peer) {
            p.card.shape = shape;
        }
    }

    /// Drops links beyond their class's bound, and links of classes our
    /// role does not keep once we have one it keeps; then the promotion
    /// rule, and the invariants.
    pub(super) fn shape_links(&mut self, now: Millis) {
        for class in CLASSES {
            let want = self.want(class);
            // Still joining (no link our role keeps), we keep the links we
            // have, up to `HOLD_MAX` of a class: joins pass through them.
            let bound = if want == 0 && self.live_kept() == 0 { HOLD_MAX } else { want };
            while self.count_in(class) > bound && self.evict(now, Some(class)) {}
        }
        self.linked_once |= self.live_kept() > 0;
        self.update_tenure(now);
        self.promote(now);
        self.rewire(now);
        self.check_invariants(now);
    }

    /// Our tenure step ([`Standing::tenure`]) from the time since our
    /// first link of a class our role keeps ([`Config::tenure_steps`]). A
    /// new step is told to our neighbours, and a super-peer broadcasts its
    /// card again: the cards others hold of us then say it.
    fn update_tenure(&mut self, now: Millis) {
        if self.linked_once && self.linked_at.is_none() {
            self.linked_at = Some(now);
        }
        let Some(at) = self.linked_at else { return };
        let up = now.saturating_sub(at);
        let tenure = self.cfg.tenure_steps.iter().filter(|&&step| up >= step).count() as u8;
        if tenure != self.me.shape.standing.tenure {
            self.me.shape.standing.tenure = tenure;
            self.nbr_dirty = true;
            self.announce_super = self.me.shape.role == Role::Super;
        }
    }

    /// Our standing now: tenure and room ([`Standing`]).
    pub fn standing(&self) -> Standing {
        self.me.shape.standing
    }

    /// Which of the active links at `pool` (indices into the active view)
    /// to drop: a leaf under a hierarchy or star with
    /// [`Config::prefer_standing`] drops one of its super-peers (hubs) of
    /// least standing, at random; otherwise, or when every link weighs the
    /// same, any (the same draw as `pick`). Leaves get more uplinks than
    /// they keep while they join (their contact, the join walk's ends,
    /// their own asks) and when they rewire: this is where they choose.
    /// Super-peers do not: a super-peer taking a high-priority core link
    /// would drop the youngest, and the young super-peers would lose their
    /// core links to each rewiring. An index into `pool`.
    pub(super) fn pick_victim_by_standing(&mut self, pool: &[usize]) -> Option<usize> {
        let weights = if self.me.shape.role == Role::Leaf {
            self.standing_weights(pool.iter().map(|&i| &self.active[i].card))
        } else {
            None
        };
        let Some(weights) = weights else { return Self::pick(&mut self.rng, pool) };
        let least = weights.iter().copied().min()?;
        let lightest: Vec<usize> = (0..pool.len()).filter(|&k| weights[k] == least).collect();
        Self::pick(&mut self.rng, &lightest).map(|j| lightest[j])
    }

    /// Which of the passive cards at `pool` (indices into the passive
    /// view) to ask for a link: under a hierarchy or star with
    /// [`Config::prefer_standing`] and a pool of super-peers' cards only,
    /// at random weighted by their standing ([`Standing::weight`]);
    /// otherwise (a lonely super-peer asks leaves too), or when every card
    /// weighs the same, uniformly (the same draw as `pick`). An index
    /// into `pool`.
    pub(super) fn pick_by_standing(&mut self, pool: &[usize]) -> Option<usize> {
        let weights = self.standing_weights(pool.iter().map(|&i| &self.passive[i].card));
        let Some(weights) = weights else { return Self::pick(&mut self.rng, pool) };
        let total: u64 = weights.iter().sum();
        let mut r = self.rng.next_u64() % total;
        for (k, w) in weights.into_iter().enumerate() {
            if r < w {
                return Some(k);
            }
            r -= w;
        }
        None
    }

    /// The standings' weights of `cards` ([`Standing::weight`]) when a
    /// choice among them weighs standing: under a policy with super-peers
    /// (hierarchical, star) with [`Config::prefer_standing`], cards of
    /// super-peers only, not all of the same weight. `None`: choose
    /// uniformly, as `pick` does (and before any weight is computed,
    /// under a mesh).
    fn standing_weights<'a>(&self, cards: impl Iterator<Item = &'a Card<P>>) -> Option<Vec<u64>>
    where
        P: 'a,
    {
        if !self.cfg.prefer_standing || self.cfg.topology.max_leaves().is_none() {
            return None;
        }
        let weights: Vec<u64> =
            cards.map(|c| (c.shape.role == Role::Super).then(|| c.shape.standing.weight())).collect::<Option<_>>()?;
        (!weights.windows(2).all(|w| w[0] == w[1])).then_some(weights)
    }

    /// Every `REWIRE_ROUNDS` rounds a super-peer with its core full asks a
    /// random super-peer of its passive view for a link, with high
    /// priority: both ends drop a random core link for it, and the peers
    /// dropped refill theirs from their passive views. In a mesh the join
    /// walks of every newcomer keep shuffling the links; under a hierarchy
    /// only super-peers' joins touch the core, and without this a group of
    /// super-peers whose core links all lead to each other stayed an island
    /// (N = 2,000: 19 super-peers and their 51 leaves, for good).
    ///
    /// A hierarchical leaf with its uplinks full and linked to each other
    /// does the same, less and less often (`LEAF_REWIRE_ROUNDS`), with
    /// normal priority (a super-peer with no room refuses): leaves pick
    /// their super-peers from cards their contacts and neighbours handed
    /// them, so without mixing the leaves of a neighbourhood all hang on
    /// its few super-peers, and the network is as connected as their core
    /// (in the whole-system run, groups of 5 or 6 super-peers that knew
    /// only each other split off with their leaves).
    ///
    /// With [`Config::prefer_standing`] a leaf also rewires when it knows
    /// a super-peer of more standing than its lightest uplink, and asks
    /// one of those: leaves drift, at the same slow pace, to the
    /// super-peers up longest and with the most room.
    fn rewire(&mut self, now: Millis) {
        let leaf = self.me.shape.role == Role::Leaf && matches!(self.cfg.topology, Topology::Hierarchical { .. });
        if self.me.shape.role != Role::Super && !leaf {
            return;
        }
        if now < self.next_rewire {
            return;
        }
        let (rounds, jitter) = if leaf {
            let r = LEAF_REWIRE_ROUNDS << self.leaf_rewires.min(3);
            self.leaf_rewires += 1;
            (r, r)
        } else {
            (REWIRE_ROUNDS, 1)
        };
        self.next_rewire = now + rounds * self.cfg.round + self.rng.next_u64() % (jitter * self.cfg.round).max(1);
        let core = self.want(Role::Super);
        if self.live_in(Role::Super) < core || self.pending.iter().any(|p| p.card.shape.role == Role::Super) {
            return;
        }
        // A leaf upgrading: only to super-peers of more standing than its
        // lightest uplink, which goes when the new link comes (`evict`).
        let mut above = 0;
        if leaf {
            // Only a leaf whose uplinks are linked to each other: one
            // whose uplinks are not bridges their parts of the core, and
            // each swap costs the broadcast tree a repair. Or one that
            // knows a super-peer of more standing than one of its own.
            let ups: Vec<P> =
                self.active.iter().filter(|a| a.card.shape.role == Role::Super).map(|a| a.card.peer).collect();
            let linked =
                ups.iter().any(|u| self.nbr_views.get(u).is_some_and(|v| ups.iter().any(|w| w != u && v.contains(w))));
            if !linked {
                if !self.cfg.prefer_standing {
                    return;
                }
                let lightest = self
                    .active
                    .iter()
                    .filter(|a| a.card.shape.role == Role::Super)
                    .map(|a| a.card.shape.standing.weight())
                    .min()
                    .unwrap_or(0);
                above = lightest + 1;
            }
        }
        let cards: Vec<usize> = (0..self.passive.len())
            .filter(|&i| self.passive[i].card.shape.role == Role::Super)
            .filter(|&i| !self.held.contains_key(&self.passive[i].card.peer))
            .filter(|&i| self.passive[i].card.shape.standing.weight() >= above)
            .collect();
        let Some(k) = self.pick_by_standing(&cards) else { return };
        let p = self.passive[cards[k]].clone();
        let route = self.live_route(&p.route, p.card.peer, None).unwrap_or_default();
        self.stats.rewirings += 1;
        self.connect(p.card, route, !leaf, false, now);
    }

    /// A hierarchical leaf without a super-peer for `PROMOTE_AFTER` rounds
    /// becomes one. A joining leaf that never had one counts only the time
    /// it is linked to someone (a member waiting for its invitation is in
    /// no network yet: counting from its start made most members of the
    /// whole-system run promote before they had joined), and waits
    /// `PROMOTE_UNLINKED_AFTER` rounds plus up to half that again at
    /// random: leaves that joined together then do not all promote at
    /// once, and those linked to the first that does find their super-peer
    /// in it.
    ///
    /// A leaf that moved (see `rejoining`) waits as a joiner does: from a
    /// new network behind a NAT its links take as long as a join, and
    /// promoting it after `PROMOTE_AFTER` made super-peers of members that
    /// had just stepped down for want of reachability.
    fn promote(&mut self, now: Millis) {
        if !matches!(self.cfg.topology, Topology::Hierarchical { .. }) || self.me.shape.role != Role::Leaf {
            self.orphan_since = None;
            self.rejoining = false;
            return;
        }
        // `shape_links` has just set `linked_once` if we have one now.
        if self.live_in(Role::Super) > 0 {
            // An uplink made from where we are now (the ones from before
            // a move are still live until they fail).
            let fresh =
                |a: &ActivePeer<P>| a.card.shape.role == Role::Super && !self.keep_on_loss.contains(&a.card.peer);
            self.rejoining &= !self.active.iter().any(fresh);
            self.orphan_since = None;
            return;
        }
        if !self.linked_once && self.live_active() == 0 {
            self.orphan_since = None;
            return;
        }
        let joining = !self.linked_once || self.rejoining;
        let rounds = if joining { PROMOTE_UNLINKED_AFTER } else { PROMOTE_AFTER };
        let since = match self.orphan_since {
            Some(t) => t,
            None => {
                let jitter = if joining { self.rng.next_u64() % (rounds * self.cfg.round / 2).max(1) } else { 0 };
                *self.orphan_since.insert(now + jitter)
            }
        };
        // Nothing left to wait for: no link a card could come over, and no
        // super-peer's card left to dial (dials to the dead forget theirs).
        // After an 80% crash at N = 10,000, three leaves waited out their
        // 10 rounds so, with live leaves' cards only, and were the last
        // islands (one component after 13 s).
        let stuck = !joining
            && self.live_active() == 0
            && !self
                .passive
                .iter()
                .map(|p| &p.card)
                .chain(self.pending.iter().map(|p| &p.card))
                .any(|c| c.shape.role == Role::Super);
        if stuck || now.saturating_sub(since) >= rounds * self.cfg.round {
            self.stats.promotions += 1;
            self.become_super(now);
        }
    }

    /// Checks our own links against the policy (and, every announcement
    /// period, the announced graph); a violation that was not there at
    /// the last check is an event.
    fn check_invariants(&mut self, now: Millis) {
        let grace = VIOLATION_GRACE * self.cfg.round;
        let settled = |a: &ActivePeer<P>| now.saturating_sub(a.since) >= grace;
        let mut found = Vec::new();
        for class in CLASSES {
            let links = self
                .active
                .iter()
                .filter(|a| a.card.shape.role == class && settled(a) && !self.holds_joiner(a, now))
                .count();
            let want = self.want(class);
            if want == 0 && links > 0 {
                found.push(ShapeViolation::Forbidden { class, links });
            } else if links > want {
                found.push(ShapeViolation::Degree { class, links, max: want });
            }
        }
        let leaf = self.me.shape.role == Role::Leaf;
        if leaf && self.live_in(Role::Super) == 0 && now.saturating_sub(self.born) >= grace {
            if self.no_uplink_since.is_none() {
                self.no_uplink_since = Some(now);
            }
            if self.no_uplink_since.is_some_and(|t| now.saturating_sub(t) >= grace) {
                found.push(ShapeViolation::NoUplink);
            }
        } else {
            self.no_uplink_since = None;
        }
        if self.cfg.announce_views > 0 && !self.views.is_empty() {
            // Announcements are taken at different times, and a newcomer
            // passes through links the policy does not keep: a violation
            // counts when two checks an announcement period apart find it.
            if now >= self.next_graph_check {
                self.next_graph_check = now + self.cfg.announce_views;
                let seen = self.check_graph().err().map(ShapeViolation::Graph);
                let failing = seen.is_some();
                self.graph_violation = if self.graph_failing { seen } else { None };
                self.graph_failing = failing;
            }
            found.extend(self.graph_violation.clone());
        }
        for v in &found {
            if !self.violations.contains(v)
                && !self.violations.iter().any(|w| std::mem::discriminant(w) == std::mem::discriminant(v))
            {
                self.stats.violations += 1;
                self.event(Event::Violation(v.to_string()));
            }
        }
        self.violations = found;
    }

    /// The network as members announced it ([`Config::announce_views`]),
    /// ours included: each member with its shape (`None` for a member
    /// named in others' views that has not announced its own, nor is our
    /// neighbour), and the links it announced.
    pub fn known_graph(&self) -> UnGraph<(P, Option<Shape>), ()> {
        let mine = self.announced_links();
        let mut shapes: BTreeMap<P, Shape> = BTreeMap::new();
        shapes.insert(self.me.peer, self.me.shape);
        let mut links = Vec::new();
        for (&a, view) in &self.views {
            shapes.entry(a).or_insert(view.shape);
            links.extend(view.peers.iter().map(|&b| (a, b)));
        }
        links.extend(mine.iter().map(|&b| (self.me.peer, b)));
        for a in self.active.iter().filter(|a| mine.contains(&a.card.peer)) {
            shapes.entry(a.card.peer).or_insert(a.card.shape);
        }
        let g = topology::graph_of(shapes.keys().copied(), links);
        g.map(|_, &p| (p, shapes.get(&p).copied()), |_, _| ())
    }

    /// Checks the announced graph against our policy.
    fn check_graph(&self) -> Result<(), topology::Violation> {
        check_shape(self.cfg.topology, &self.known_graph(), |(_, s)| s.map(|s| s.role))
    }

    /// Role counts among the members we know of (announced views and
    /// active peers), ours included.
    pub fn role_counts(&self) -> BTreeMap<Role, usize> {
        let mut m = BTreeMap::new();
        for (_, s) in self.known_graph().node_weights() {
            if let Some(s) = s {
                *m.entry(s.role).or_insert(0) += 1;
            }
        }
        m
    }
}

/// Checks a live network, members with their roles (`None`: not known,
/// counted as a super-peer without bound, which breaks nothing it may not
/// have broken), against `policy`'s invariants: those of the policy's
/// graph in [`crate::topology`].
///
/// - Mesh: connected.
/// - Spanning tree: connected, and nobody over `max_degree` links. (The
///   broadcast tree is Plumtree's eager links over these; the simulator
///   checks those form a tree.)
/// - Hierarchical and star: connected, no leaf linked to a leaf, no
///   super-peer (hub) over its leaves.
///
/// Members check the network they know of with it
/// ([`Overlay::violations`]); the simulator and the demo check the whole.
pub fn check_shape<N>(
    policy: Topology,
    g: &UnGraph<N, ()>,
    role: impl Fn(&N) -> Option<Role>,
) -> Result<(), topology::Violation> {
    use topology::Policy as _;
    let cap = policy.max_leaves().map_or(0, |leaves| u16::try_from(leaves).unwrap_or(u16::MAX));
    let info = g.map(
        |_, n| match role(n) {
            Some(Role::Super) => NodeInfo { reach: Reach::Public, capacity: cap.max(1) },
            None => NodeInfo { reach: Reach::Public, capacity: u16::MAX },
            Some(Role::Leaf) => NodeInfo { reach: Reach::HardNat, capacity: 0 },
            Some(Role::Member) => NodeInfo { reach: Reach::EasyNat, capacity: 0 },
        },
        |_, _| (),
    );
    match policy {
        Topology::Mesh => topology::Mesh { degree: 1 }.check(&info),
        Topology::SpanningTree { max_degree } => {
            topology::Mesh { degree: 1 }.check(&info)?;
            let degree = topology::max_degree(&info);
            if degree > max_degree {
                return Err(topology::Violation::Degree { node: 0, degree, max: max_degree });
            }
            Ok(())
        }
        // `core_degree` only shapes the graph `build` makes; `check` holds
        // connectivity, leaf links and capacities.
        Topology::Hierarchical { core, uplinks, .. } => {
            topology::Hierarchical { core_degree: core, uplinks }.check(&info)
        }
        Topology::Star { .. } => topology::Hierarchical { core_degree: 1, uplinks: 1 }.check(&info),
    }
}

/// A member's announced view (a [`Kind::View`] broadcast).
#[derive(Debug, Clone)]
pub(super) struct AnnouncedView<P> {
    pub(super) at: Millis,
    pub(super) shape: Shape,
    pub(super) peers: Vec<P>,
}

/// A view announcement's payload: the shape byte, then the active peers.
pub(super) fn view_payload<P: PeerKey>(shape: Shape, active: impl Iterator<Item = P>) -> Vec<u8> {
    let mut out = vec![shape.to_byte()];
    for p in active.take(MAX_LIST) {
        p.put(&mut out);
    }
    out
}

/// Reads a view announcement; `None` if it is malformed.
pub(super) fn read_view<P: PeerKey>(payload: &[u8], at: Millis) -> Option<AnnouncedView<P>> {
    let (&[s], mut r) = payload.split_first_chunk::<1>()?;
    let shape = Shape::from_byte(s)?;
    let mut peers = Vec::new();
    while !r.is_empty() {
        if peers.len() == MAX_LIST {
            return None;
        }
        peers.push(P::take(&mut r)?);
    }
    Some(AnnouncedView { at, shape, peers })
}
