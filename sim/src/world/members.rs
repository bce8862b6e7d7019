//! The whole system in the packet world (pattern `network`): every node
//! runs the member engine ([`convoke_node::member::Member`]) on its host,
//! exactly as `convoke up` does, behind its NATs. Node k joins the one
//! network with the card of a random earlier member, carried out of band
//! with a person's delay (and its RSVP back, when the contact's network
//! wants one); from then on members introduce it, relaying RSVPs through
//! introducers with nobody in the loop. Broadcasts cross the network as
//! the scenario asks.

use std::collections::{BTreeMap, HashMap};

use convoke_node::host::HostEvent;
use convoke_node::ice::Via;
use convoke_node::identity::PeerId;
use convoke_node::member::{ConnectFailure, Dialed, Member, MemberCommand, MemberConfig, MemberEvent};
use convoke_node::token::{self, Invitation};
use convoke_overlay::Config;

use super::{Deferred, Ev, INTERNET, Join, NODE_PORT, Owner, World, v4};
use crate::FastHash;
use crate::reach::Reach;
use crate::scenario::{Move, MoveTo};

/// A node's member and what the run learns of it.
pub(super) struct Slot {
    pub(super) member: Member,
    pub(super) started: bool,
    /// The join that brought it in (none for the first member).
    join: Option<u32>,
    /// When it imported its contact's card, ns.
    imported: Option<u64>,
    /// When it first had an overlay neighbour, ns.
    member_at: Option<u64>,
    /// Broadcasts it received (indices).
    got: Vec<u32>,
    /// Its last move (an index into [`Whole::moved`]).
    moved: Option<usize>,
}

/// A member that moved to another address, and how it came back.
#[derive(Debug, Clone)]
pub struct Moved {
    /// Which of the scenario's `moves`.
    pub wave: u32,
    /// The node.
    pub node: u32,
    /// When, ns.
    pub at: u64,
    /// Live overlay neighbours it had when it moved.
    pub links_before: u32,
    /// Links it made after the move.
    pub new_links: u32,
    /// When it first had an overlay link again, ns.
    pub relinked: Option<u64>,
    /// When it had made as many links as it had before the move (at
    /// least one), ns.
    pub restored: Option<u64>,
}

/// RSVPs relayed through introducers, as their senders and receivers saw
/// them.
#[derive(Debug, Clone, Default)]
pub struct RsvpCount {
    /// Sent along a route.
    pub sent: u64,
    /// Could not be sent: no hop of the route was a neighbour.
    pub no_route: u64,
    /// Taken by their addressee.
    pub delivered: u64,
    /// Reached their addressee, which refused them.
    pub refused: u64,
    /// Addressed to a member that had crashed when sent.
    pub to_crashed: u64,
    /// Sent but not (yet) arrived, by (sender, addressee) node.
    pub in_flight: BTreeMap<(u32, u32), u32>,
}

/// One broadcast.
#[derive(Debug, Clone)]
pub struct Sent {
    /// When, ns.
    pub at: u64,
    /// From which node.
    pub origin: u32,
}

/// The whole-system run's bookkeeping.
#[derive(Default)]
pub struct Whole {
    /// Member nodes in the order they were made.
    pub members: Vec<u32>,
    by_peer: HashMap<PeerId, u32, FastHash>,
    /// RSVPs through introducers.
    pub rsvps: RsvpCount,
    /// Links up, counted at the side that dialed, by how they came up.
    pub links_by_phase: BTreeMap<&'static str, u64>,
    /// Broadcasts sent.
    pub broadcasts: Vec<Sent>,
    /// Links the overlay asked for that failed, by reason.
    pub connect_failures: BTreeMap<String, u64>,
    /// Members that moved, in the order they did.
    pub moved: Vec<Moved>,
    /// What the NAT model says of each pair of profiles, `[inviter][invitee]`
    /// (worked out once: links and members ask it thousands of times).
    reach: Vec<Vec<Reach>>,
}

/// What a finished whole-system run measured of its members.
#[derive(Debug, Clone, Default)]
pub struct MemberFigures {
    /// Member nodes started.
    pub nodes: u64,
    /// The joined members' shape under the topology policy.
    pub shape: crate::shape_tally::ShapeTally,
    /// Joined super-peers that elected themselves (found themselves
    /// reachable), and that were promoted (went without a super-peer).
    pub elected: u64,
    /// See `elected`.
    pub promoted: u64,
    /// Joined members that stepped down from super-peer after a move.
    pub stepped_down: u64,
    /// Uplinks members lost to failure as leaves (all members, those
    /// that left too).
    pub uplinks_lost: u64,
    /// Under churn with a stable share: joined super-peers, and those of
    /// the stable share; joined leaves' uplinks, and those to the stable
    /// share.
    pub stable_supers: (u64, u64),
    /// See `stable_supers`.
    pub stable_uplinks: (u64, u64),
    /// Joined super-peers whose NATs filter unasked traffic (no mapped
    /// port): leaves reach them only with RSVPs.
    pub filtered_supers: u64,
    /// Alive at the end.
    pub alive: u64,
    /// Alive at the end with at least one active overlay link.
    pub joined: u64,
    /// Nodes that could be in the network: the first member, and each
    /// newcomer whose contact could and whose pair with its contact the NAT
    /// model connects.
    pub allowed: u64,
    /// Mean active view of the alive members with a link.
    pub mean_active: f64,
    /// Components of the live active graph (members with a link).
    pub components: u64,
    /// Members in the largest component.
    pub largest: u64,
    /// Seconds from importing a card to the first overlay link.
    pub to_membership_s: Vec<f64>,
    /// Per broadcast: (live members joined before it was sent, of those
    /// that received it).
    pub deliveries: Vec<(u64, u64)>,
    /// Overlay relay refusals (rate limit, or no link to the next hop),
    /// summed over members.
    pub relay_refused: u64,
    /// Of those, by the rate limit.
    pub relay_rate_limited: u64,
    /// Tokens relayed to a member over a link it no longer counts active.
    pub relay_from_stranger: u64,
    /// Tokens a member could not pass on (no route, no neighbour linked to
    /// the addressee).
    pub relay_unroutable: u64,
    /// Overlay messages for a peer the member had no session with.
    pub unsent: u64,
}

impl World {
    /// The member configuration of node `n`: the runtime's, under the
    /// scenario's topology policy. Members elect themselves super-peers as
    /// `convoke up` does by default (`SuperPeer::Auto`: a public address,
    /// a mapped port, or peers that reached their card unasked); the
    /// simulator tells them nothing of their NAT.
    pub(super) fn network_config(&self) -> MemberConfig {
        // View announcements would make every member broadcast every few
        // seconds: the runtime's status page needs them, the run does not.
        let d = MemberConfig::default();
        let topology = self.scenario.topology.as_deref().and_then(|t| convoke_overlay::Topology::parse(t).ok());
        let overlay = Config {
            announce_views: 0,
            topology: topology.unwrap_or_default(),
            max_leaves: self.scenario.max_leaves,
            prefer_standing: self.scenario.prefer_standing,
            tenure_steps: match self.scenario.tenure_steps_s {
                Some(s) => s.map(|x| (x * 1e3) as u64),
                None => d.overlay.tenure_steps,
            },
            ..d.overlay
        };
        MemberConfig { overlay, ..d }
    }

    fn reach_matrix(&self) -> Vec<Vec<Reach>> {
        let chains: Vec<_> = self.profiles.iter().map(|(_, p)| p.nat_chain(&self.scenario.cgnat)).collect();
        crate::reach::matrix(&chains)
    }

    /// How an invitee of profile `invitee` reaches an inviter of profile
    /// `inviter` (profile indices).
    fn pair_reach(&self, inviter: u16, invitee: u16) -> Reach {
        self.whole
            .as_ref()
            .and_then(|w| w.reach.get(usize::from(inviter))?.get(usize::from(invitee)).copied())
            .unwrap_or(Reach::Never)
    }

    /// Makes a node and a member on it.
    pub(super) fn spawn_member(&mut self, profile: u16) -> u32 {
        let n = self.spawn(profile);
        let seed = self.rng.seed();
        let now = self.inst(self.now);
        let cfg = self.network_config();
        let node = &mut self.nodes[n as usize];
        let mut member = Member::new(node.identity.clone(), cfg, seed, now);
        // Reflexive addresses come later, from its STUN answers.
        member.minter().candidates_mut().add_host(std::net::SocketAddr::V4(node.addr));
        member.minter().candidates_mut().set_port_mapped(node.mapped.map(std::net::SocketAddr::V4));
        let peer = member.peer_id();
        node.member = Some(Box::new(Slot {
            member,
            started: false,
            join: None,
            imported: None,
            member_at: None,
            got: Vec::new(),
            moved: None,
        }));
        if self.whole.is_none() {
            let reach = self.reach_matrix();
            self.whole = Some(Box::new(Whole { reach, ..Whole::default() }));
        }
        let Some(w) = self.whole.as_mut() else { return n };
        w.members.push(n);
        w.by_peer.insert(peer, n);
        if self.nodes[n as usize].stun_pending == 0 {
            self.start_member(n);
        }
        n
    }

    /// Its candidates are known: the member mints its card and starts.
    pub(super) fn start_member(&mut self, n: u32) {
        let now = self.inst(self.now);
        let unix = self.unix();
        let node = &mut self.nodes[n as usize];
        let Some(slot) = node.member.as_mut() else { return };
        if slot.started {
            return;
        }
        slot.started = true;
        if let Err(e) = slot.member.start(&mut node.host, now, unix)
            && let Some(k) = slot.join
        {
            self.joins[k as usize].failed = Some((self.now, format!("own card refused: {e}")));
        }
        self.drain_member(n);
    }

    /// Join k of the network pattern: a new member, and the card of a
    /// random earlier member sent to it out of band.
    pub(super) fn start_network_join(&mut self, k: u32) {
        // A person hands out the card of a node that is in the network: a
        // random earlier member with a live neighbour (the first member
        // while it is alone). A node that never got in holds no network to
        // invite anyone into.
        let contact = self.random_member();
        let p = self.draw_profile();
        let newcomer = self.spawn_member(p);
        let profiles = (self.nodes[contact as usize].profile, p);
        let now = self.now;
        self.joins.push(Join { inviter: contact, invitee: newcomer, profiles, started: now, ..Join::default() });
        if let Some(s) = self.nodes[newcomer as usize].member.as_mut() {
            s.join = Some(k);
        }
        if !self.nodes[contact as usize].alive {
            self.joins[k as usize].failed = Some((now, "inviter is down".into()));
            return;
        }
        self.when_ready(contact, Deferred::Mint(k));
    }

    fn random_member(&mut self) -> u32 {
        let members = self.whole.as_ref().map_or(0, |w| w.members.len()) as u32;
        let first = self.whole.as_ref().map_or(0, |w| w.members[0]);
        for _ in 0..64 {
            let i = self.rng.u32() % members.max(1);
            let n = self.whole.as_ref().map_or(0, |w| w.members[i as usize]);
            let node = &self.nodes[n as usize];
            let linked =
                node.member.as_ref().and_then(|s| s.member.overlay()).is_some_and(|o| o.active().next().is_some());
            if node.alive && linked {
                return n;
            }
        }
        first
    }

    /// The contact's person sends its card (its reusable invitation).
    pub(super) fn send_card(&mut self, n: u32, k: u32) {
        let Some(text) = self.nodes[n as usize]
            .member
            .as_ref()
            .and_then(|s| s.member.invitation())
            .map(|i| i.token().encode_compact())
        else {
            self.joins[k as usize].failed = Some((self.now, "the contact has no card".into()));
            return;
        };
        let delay = self.uniform(self.scenario.oob.invite_delay_s, 1e9);
        self.queue.push(self.now + delay, Ev::Invite { join: k, text });
    }

    /// The newcomer pastes the card and joins.
    pub(super) fn import_card(&mut self, n: u32, k: u32, text: &str) {
        let unix = self.unix();
        let now = self.inst(self.now);
        match token::decode(text).and_then(|t| Invitation::from_token(t, unix)) {
            Ok(inv) => {
                self.joins[k as usize].imported = Some(self.now);
                let node = &mut self.nodes[n as usize];
                if let Some(s) = node.member.as_mut() {
                    s.imported = Some(self.now);
                    let _ = s.member.command(&mut node.host, MemberCommand::Join(Box::new(inv)), now, unix);
                }
                self.drain_member(n);
            }
            Err(e) => self.joins[k as usize].failed = Some((self.now, format!("card refused: {e}"))),
        }
    }

    /// The contact's person pastes the newcomer's RSVP.
    pub(super) fn take_member_rsvp(&mut self, k: u32, text: &str) {
        let n = self.joins[k as usize].inviter;
        if !self.nodes[n as usize].alive {
            return;
        }
        let now = self.inst(self.now);
        let unix = self.unix();
        self.joins[k as usize].rsvp_taken.get_or_insert(self.now);
        let node = &mut self.nodes[n as usize];
        let Some(s) = node.member.as_mut() else { return };
        if let Err(e) = s.member.command(&mut node.host, MemberCommand::AcceptRsvp(text.to_owned()), now, unix) {
            let j = &mut self.joins[k as usize];
            if j.established.is_none() && j.failed.is_none() {
                j.failed = Some((self.now, e.to_string()));
            }
        }
        self.drain_member(n);
        self.after(n);
    }

    /// A host event on a member node: STUN readiness for the world, the
    /// rest for the member.
    pub(super) fn member_host_event(&mut self, n: u32, e: HostEvent) {
        if matches!(e, HostEvent::StunMapped { .. } | HostEvent::StunFailed { .. }) {
            let node = &mut self.nodes[n as usize];
            if let Some(s) = node.member.as_mut() {
                s.member.minter().learn(&e);
                // Classified as the round's last answer came in: the first
                // card, minted when STUN is done, carries it.
                s.member.minter().set_nat(node.host.nat());
            }
            self.stun_done(n);
            return;
        }
        let now = self.inst(self.now);
        let unix = self.unix();
        let node = &mut self.nodes[n as usize];
        let Some(s) = node.member.as_mut() else { return };
        if s.started {
            s.member.handle_host_event(&mut node.host, e, now, unix);
        } else {
            s.member.minter().learn(&e);
        }
        self.drain_member(n);
    }

    /// A member's timer.
    pub(super) fn member_timeout(&mut self, n: u32) {
        let now = self.inst(self.now);
        let unix = self.unix();
        let node = &mut self.nodes[n as usize];
        if let Some(s) = node.member.as_mut()
            && s.started
        {
            s.member.handle_timeout(&mut node.host, now, unix);
        }
        self.drain_member(n);
    }

    /// When a member node must wake: its host's or its member's deadline.
    pub(super) fn member_deadline(&self, n: u32) -> Option<std::time::Instant> {
        let s = self.nodes[n as usize].member.as_ref()?;
        if s.started { s.member.poll_timeout() } else { None }
    }

    fn drain_member(&mut self, n: u32) {
        while let Some(e) = self.nodes[n as usize].member.as_mut().and_then(|s| s.member.poll_event()) {
            self.on_member_event(n, e);
        }
    }

    fn node_of(&self, p: &PeerId) -> Option<u32> {
        self.whole.as_ref()?.by_peer.get(p).copied()
    }

    fn on_member_event(&mut self, n: u32, e: MemberEvent) {
        let now = self.now;
        let join = self.nodes[n as usize].member.as_ref().and_then(|s| s.join);
        match e {
            MemberEvent::NeighborUp(_) => {
                let Some(s) = self.nodes[n as usize].member.as_mut() else { return };
                s.member_at.get_or_insert(now);
                if let (Some(i), Some(w)) = (s.moved, self.whole.as_mut())
                    && let Some(m) = w.moved.get_mut(i)
                {
                    m.new_links += 1;
                    m.relinked.get_or_insert(now);
                    if m.new_links >= m.links_before.max(1) {
                        m.restored.get_or_insert(now);
                    }
                }
            }
            MemberEvent::Linked { peer, via, dialed } => {
                // An overlay dial sends its RSVP at once, so the engine's
                // `via` says only which side's checks got through first;
                // the NAT model says which step the pair needed.
                let needed = |w: &World| {
                    Some(w.pair_reach(w.nodes[w.node_of(&peer)? as usize].profile, w.nodes[n as usize].profile))
                };
                let phase = match dialed {
                    Dialed::Inbound => None,
                    Dialed::Contact if via == Via::SingleToken => Some("single_token_first_contact"),
                    Dialed::Contact => Some("rsvp_out_of_band"),
                    Dialed::Overlay { relayed } => match needed(self) {
                        Some(Reach::SingleToken) => Some("single_token_introduced"),
                        _ if relayed => Some("rsvp_through_introducers"),
                        _ => Some("other"),
                    },
                };
                if let (Some(p), Some(w)) = (phase, self.whole.as_mut()) {
                    *w.links_by_phase.entry(p).or_insert(0) += 1;
                }
                if dialed == Dialed::Contact
                    && let Some(k) = join
                {
                    let j = &mut self.joins[k as usize];
                    if j.established.is_none() {
                        j.established = Some(now);
                        j.via = Some(via);
                        j.failed = None;
                        self.schedule_churn(n, now);
                    }
                }
            }
            MemberEvent::RsvpForContact(text) => {
                if let Some(k) = join
                    && self.joins[k as usize].rsvp_sent.is_none()
                {
                    self.joins[k as usize].rsvp_sent = Some(now);
                    let delay = self.uniform(self.scenario.oob.rsvp_delay_s, 1e9);
                    self.queue.push(now + delay, Ev::Rsvp { join: k, text });
                }
            }
            MemberEvent::RsvpRelayed { peer, .. } => {
                let to = self.node_of(&peer);
                let dead = to.is_none_or(|t| !self.nodes[t as usize].alive);
                if let Some(w) = self.whole.as_mut() {
                    w.rsvps.sent += 1;
                    match to {
                        Some(t) if !dead => *w.rsvps.in_flight.entry((n, t)).or_insert(0) += 1,
                        _ => w.rsvps.to_crashed += 1,
                    }
                }
            }
            MemberEvent::Introduced { from, result } => {
                let from = self.node_of(&from);
                if let Some(w) = self.whole.as_mut() {
                    if let Some(f) = from
                        && let Some(c) = w.rsvps.in_flight.get_mut(&(f, n))
                    {
                        *c -= 1;
                        if *c == 0 {
                            w.rsvps.in_flight.remove(&(f, n));
                        }
                    }
                    if result.is_ok() {
                        w.rsvps.delivered += 1;
                    } else {
                        w.rsvps.refused += 1;
                    }
                }
            }
            MemberEvent::ConnectFailed(peer, why) => {
                let contact = join.map(|k| self.joins[k as usize].inviter);
                let is_contact = contact.is_some() && self.node_of(&peer) == contact;
                if matches!(why, ConnectFailure::NoRoute)
                    && let Some(w) = self.whole.as_mut()
                {
                    w.rsvps.no_route += 1;
                }
                if matches!(why, ConnectFailure::Ice(convoke_node::ice::FailReason::Crossed)) {
                    // Both dialed at once; the other attempt carries on.
                    return;
                }
                let label = match &why {
                    ConnectFailure::BadCard(_) => "bad card".to_owned(),
                    ConnectFailure::NoRoute => "no introducer route".to_owned(),
                    ConnectFailure::Ice(r) => format!("no path ({r:?})").to_lowercase(),
                    ConnectFailure::Handshake(h) => format!("handshake: {h}"),
                };
                if is_contact {
                    if let Some(k) = join {
                        let j = &mut self.joins[k as usize];
                        if j.established.is_none() && j.failed.is_none() {
                            j.failed = Some((now, label));
                        }
                    }
                } else if let Some(w) = self.whole.as_mut() {
                    *w.connect_failures.entry(label).or_insert(0) += 1;
                }
            }
            MemberEvent::Message { data, .. } => {
                if let Some(i) = data.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    && let Some(s) = self.nodes[n as usize].member.as_mut()
                {
                    s.got.push(i);
                }
            }
            _ => {}
        }
    }

    /// Move `i` of the scenario: each live member moves with its chance.
    pub(super) fn move_members(&mut self, i: u32) {
        let m = self.scenario.moves[i as usize].clone();
        let members = self.whole.as_ref().map(|w| w.members.clone()).unwrap_or_default();
        for n in members {
            let node = &self.nodes[n as usize];
            if !node.alive || !node.member.as_ref().is_some_and(|s| s.started) {
                continue;
            }
            if self.rng.unit() < m.fraction {
                self.move_member(n, i, &m);
            }
        }
    }

    /// Node `n` gets another address, as the runtime sees it when the
    /// interface addresses change: the host is told its new address and
    /// asks the STUN servers again, the member is told its host addresses
    /// (what `convoke up` does on its address check). Its identity, member
    /// state and port stay; packets to the old address go nowhere. A
    /// router's port mapping does not follow (the runtime's port mapper
    /// keeps renewing with the router it found at start).
    fn move_member(&mut self, n: u32, wave: u32, m: &Move) {
        let (old_profile, old_realm, old_latency) = {
            let node = &self.nodes[n as usize];
            (node.profile, node.realm, node.latency)
        };
        let (profile, addr, realm, latency) = match m.to {
            MoveTo::NewNetwork => {
                let profile = match &m.profile {
                    Some(p) => super::profile_index(&self.profiles, p),
                    None => self.draw_profile(),
                };
                let (addr, realm, latency, _) = self.place(profile, false);
                (profile, addr, realm, latency)
            }
            MoveTo::Renumber => {
                let behind_router =
                    self.profiles.get(usize::from(old_profile)).is_some_and(|(_, p)| p.behaviour().is_some());
                let addr = if old_realm == INTERNET {
                    self.public_ip()
                } else if behind_router {
                    self.private_ip()
                } else {
                    self.carrier_ip()
                };
                (old_profile, addr, old_realm, old_latency)
            }
        };
        let links_before = self.live_neighbours(n).len() as u32;
        let old = u32::from(*self.nodes[n as usize].addr.ip());
        self.owners.remove(&old);
        self.owners.insert(addr, Owner::Node(n));
        let now = self.inst(self.now);
        let stun = self.stun.clone();
        let index = self.whole.as_ref().map_or(0, |w| w.moved.len());
        let node = &mut self.nodes[n as usize];
        node.addr = v4(addr, NODE_PORT);
        node.realm = realm;
        node.latency = latency;
        node.profile = profile;
        node.mapped = None;
        node.reflexive.clear();
        node.host.set_local_addresses(Some(NODE_PORT), &[std::net::IpAddr::V4(*node.addr.ip())]);
        node.host.set_port_mapped(false);
        for s in &stun {
            node.host.query_stun(*s, now);
        }
        if let Some(s) = node.member.as_mut() {
            s.member.minter().candidates_mut().set_port_mapped(None);
            s.member.set_host_addresses(&mut node.host, vec![std::net::SocketAddr::V4(node.addr)], now);
            s.moved = Some(index);
        }
        if let Some(w) = self.whole.as_mut() {
            let at = self.now;
            w.moved.push(Moved { wave, node: n, at, links_before, new_links: 0, relinked: None, restored: None });
        }
        self.drain_member(n);
        self.after(n);
    }

    /// Node `n`'s overlay neighbours that are alive.
    fn live_neighbours(&self, n: u32) -> Vec<u32> {
        let Some(o) = self.nodes[n as usize].member.as_ref().and_then(|s| s.member.overlay()) else {
            return Vec::new();
        };
        o.active().filter_map(|p| self.node_of(&p)).filter(|&m| self.nodes[m as usize].alive).collect()
    }

    /// For each broadcast sent after move `wave`: the members it moved that
    /// were alive and had been linked before it was sent (before the move,
    /// or again after it), and how many of them received it.
    pub fn moved_deliveries(&self, wave: u32) -> Vec<(u64, u64)> {
        let Some(w) = self.whole.as_ref() else { return Vec::new() };
        let moved: Vec<&Moved> = w.moved.iter().filter(|m| m.wave == wave).collect();
        let Some(at) = moved.first().map(|m| m.at) else { return Vec::new() };
        let mut out = Vec::new();
        for (i, b) in w.broadcasts.iter().enumerate().filter(|(_, b)| b.at > at) {
            let (mut live, mut got) = (0, 0);
            for m in &moved {
                let node = &self.nodes[m.node as usize];
                let Some(s) = node.member.as_ref() else { continue };
                let linked = m.links_before > 0 || m.relinked.is_some_and(|t| t < b.at);
                if !node.alive || m.node == b.origin || !linked {
                    continue;
                }
                live += 1;
                got += u64::from(s.got.contains(&(i as u32)));
            }
            out.push((live, got));
        }
        out
    }

    /// Broadcast `i`: from a random live member with a neighbour.
    pub(super) fn network_broadcast(&mut self, i: u32) {
        let Some(count) = self.whole.as_ref().map(|w| w.members.len() as u32) else { return };
        let (now, unix) = (self.inst(self.now), self.unix());
        for _ in 0..64 {
            let n = self.whole.as_ref().map_or(0, |w| w.members[(self.rng.u32() % count.max(1)) as usize]);
            let node = &mut self.nodes[n as usize];
            let Some(s) = node.member.as_mut() else { continue };
            if !node.alive || s.member.overlay().is_none_or(|o| o.active().next().is_none()) {
                continue;
            }
            let mut payload = i.to_be_bytes().to_vec();
            payload.extend_from_slice(b" a broadcast from the simulator");
            if s.member.command(&mut node.host, MemberCommand::Broadcast(payload), now, unix).is_ok() {
                s.got.push(i);
                if let Some(w) = self.whole.as_mut() {
                    w.broadcasts.push(Sent { at: self.now, origin: n });
                }
                self.after(n);
                return;
            }
        }
        // Nobody could send: recorded as a broadcast nobody received.
        if let Some(w) = self.whole.as_mut() {
            w.broadcasts.push(Sent { at: self.now, origin: u32::MAX });
        }
    }

    /// The whole-system bookkeeping, if this is a network run.
    pub fn whole(&self) -> Option<&Whole> {
        self.whole.as_deref()
    }

    /// Members' figures at the end of a network run.
    pub fn member_figures(&self) -> Option<MemberFigures> {
        let w = self.whole.as_ref()?;
        let mut f = MemberFigures { nodes: w.members.len() as u64, ..MemberFigures::default() };
        // Union-find over the live active graph.
        let mut parent: HashMap<u32, u32, FastHash> = HashMap::default();
        fn root(parent: &mut HashMap<u32, u32, FastHash>, mut x: u32) -> u32 {
            while let Some(&p) = parent.get(&x) {
                if p == x {
                    break;
                }
                let gp = parent.get(&p).copied().unwrap_or(p);
                parent.insert(x, gp);
                x = gp;
            }
            x
        }
        let mut active_sum = 0u64;
        let mut allowed: HashMap<u32, bool, FastHash> = HashMap::default();
        for &n in &w.members {
            let node = &self.nodes[n as usize];
            let Some(s) = node.member.as_ref() else { continue };
            // A node can be in the network when its contact could and the
            // NAT model lets the two connect (contacts come before their
            // newcomers, so one pass in order decides it).
            let ok = match s.join {
                None => true,
                Some(k) => {
                    let j = &self.joins[k as usize];
                    allowed.get(&j.inviter).copied().unwrap_or(false)
                        && self.pair_reach(j.profiles.0, j.profiles.1) != Reach::Never
                }
            };
            allowed.insert(n, ok);
            f.allowed += u64::from(ok);
            // Every member's, those churn took too: what the run cost.
            f.uplinks_lost += s.member.overlay().map_or(0, |o| o.stats().uplinks_lost);
            if !node.alive {
                continue;
            }
            f.alive += 1;
            let live = self.live_neighbours(n);
            if live.is_empty() {
                continue;
            }
            f.joined += 1;
            active_sum += live.len() as u64;
            parent.entry(n).or_insert(n);
            for &m in &live {
                parent.entry(m).or_insert(m);
                let (a, b) = (root(&mut parent, n), root(&mut parent, m));
                if a != b {
                    parent.insert(a.max(b), a.min(b));
                }
            }
            if let Some(o) = s.member.overlay() {
                let role = |m: u32| {
                    self.nodes[m as usize].member.as_ref().and_then(|s| s.member.overlay()).map(|o| o.shape().role)
                };
                f.shape.add(o.shape().role, live.iter().map(|&m| role(m)));
                if !self.stable.is_empty() {
                    match o.shape().role {
                        convoke_overlay::Role::Super => {
                            f.stable_supers.0 += 1;
                            f.stable_supers.1 += u64::from(self.stable.contains(&n));
                        }
                        convoke_overlay::Role::Leaf => {
                            for &m in live.iter().filter(|&&m| role(m) == Some(convoke_overlay::Role::Super)) {
                                f.stable_uplinks.0 += 1;
                                f.stable_uplinks.1 += u64::from(self.stable.contains(&m));
                            }
                        }
                        convoke_overlay::Role::Member => {}
                    }
                }
                let st = o.stats();
                // Counted while they serve: a member that moved steps down.
                let serving = o.shape().role == convoke_overlay::Role::Super;
                f.elected += u64::from(serving && st.elections > 0);
                f.promoted += u64::from(serving && st.promotions > 0);
                f.stepped_down += u64::from(st.step_downs > 0);
                if serving && o.config().topology.kind() == convoke_overlay::PolicyKind::Hierarchical {
                    let open = |b: &crate::nat::Behaviour| b.filtering == crate::nat::Filtering::Eif;
                    let chain = self.profiles[usize::from(node.profile)].1.nat_chain(&self.scenario.cgnat);
                    f.filtered_supers += u64::from(node.mapped.is_none() && !chain.iter().all(open));
                }
                f.relay_refused += st.relay_refused;
                f.relay_rate_limited += st.relay_rate_limited;
                f.relay_from_stranger += st.relay_from_stranger;
                f.relay_unroutable += st.relay_unroutable;
                f.unsent += s.member.unsent();
            }
            if let (Some(i), Some(m)) = (s.imported, s.member_at) {
                f.to_membership_s.push(m.saturating_sub(i) as f64 / 1e9);
            }
        }
        let keys: Vec<u32> = {
            let mut k: Vec<u32> = parent.keys().copied().collect();
            k.sort_unstable();
            k
        };
        let mut sizes: BTreeMap<u32, u64> = BTreeMap::new();
        for x in keys {
            let r = root(&mut parent, x);
            *sizes.entry(r).or_insert(0) += 1;
        }
        f.components = sizes.len() as u64;
        f.largest = sizes.values().copied().max().unwrap_or(0);
        f.mean_active = if f.joined == 0 { 0.0 } else { active_sum as f64 / f.joined as f64 };
        for (i, b) in w.broadcasts.iter().enumerate() {
            let (mut live, mut got) = (0, 0);
            for &n in &w.members {
                let node = &self.nodes[n as usize];
                let Some(s) = node.member.as_ref() else { continue };
                if !node.alive || n == b.origin || s.member_at.is_none_or(|t| t > b.at) {
                    continue;
                }
                live += 1;
                if s.got.contains(&(i as u32)) {
                    got += 1;
                }
            }
            f.deliveries.push((live, got));
        }
        Some(f)
    }
}
