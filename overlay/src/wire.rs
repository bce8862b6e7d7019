//! The overlay's messages and their binary encoding.
//!
//! One message per frame; the driver frames them (the node on its session
//! stream, the simulator in memory). The format is small and strict: a tag
//! byte, then fields; lengths are bounded, trailing bytes are an error, and
//! a relay may not carry another relay. Peer identities encode themselves
//! through [`PeerKey`].

use crate::PeerKey;

/// Largest encoded message accepted.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most peers in a walk path, relay route or shuffle sample.
pub const MAX_LIST: usize = 64;
/// Largest contact card (a signed invitation token) or relayed token.
pub const MAX_CARD: usize = 8 * 1024;

/// A peer's contact card: its identity and the signed, reusable invitation
/// token others connect with. The overlay treats the token as opaque bytes;
/// the driver verifies its signature names `peer`.
///
/// The card also says where its member stands in the network's shape
/// ([`Shape`]). That byte is not covered by the token's signature: a member
/// passing a card on could change it, but the worst it does is send
/// someone to ask a leaf for a link, which the leaf refuses; every member
/// tells its neighbours its own shape ([`Message::Neighbors`],
/// [`Message::Neighbor`]), and that is what views keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card<P> {
    /// Whose card it is.
    pub peer: P,
    /// The invitation token (opaque to the overlay).
    pub token: Vec<u8>,
    /// The topology policy its member runs and its role there.
    pub shape: Shape,
}

impl<P> Card<P> {
    /// A card of a mesh member (the shape the overlay corrects once it
    /// hears from the member).
    pub fn new(peer: P, token: Vec<u8>) -> Self {
        Self { peer, token, shape: Shape::default() }
    }
}

impl<P: PeerKey> Card<P> {
    /// The card as messages carry it (a [`Kind::Super`] payload).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_card(&mut out, self);
        out
    }

    /// A card from [`Card::to_bytes`]; nothing may follow it.
    pub fn from_bytes(mut bytes: &[u8]) -> Result<Self, DecodeError> {
        let c = take_card(&mut bytes)?;
        if !bytes.is_empty() {
            return Err(DecodeError::Trailing);
        }
        Ok(c)
    }
}

/// Which topology policy a member runs (the kind, without its bounds,
/// which each member applies to its own links).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum PolicyKind {
    /// HyParView's random mesh, Plumtree's tree on top.
    #[default]
    Mesh,
    /// A mesh with a degree bound, so Plumtree's tree is degree-bounded.
    SpanningTree,
    /// Super-peers meshed together, leaves linked only to super-peers.
    Hierarchical,
    /// Hubs meshed together, each leaf linked to one hub.
    Star,
}

impl PolicyKind {
    /// Its name on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Mesh => "mesh",
            PolicyKind::SpanningTree => "spanning-tree",
            PolicyKind::Hierarchical => "hierarchical",
            PolicyKind::Star => "star",
        }
    }
}

/// A member's role under its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Role {
    /// Any member of a mesh or spanning tree.
    #[default]
    Member,
    /// A super-peer (hierarchical) or hub (star): links to other
    /// super-peers and carries leaves.
    Super,
    /// A leaf: links only to super-peers.
    Leaf,
}

impl Role {
    /// Its name in status and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Super => "super-peer",
            Role::Leaf => "leaf",
        }
    }
}

/// A member's policy, role and standing, one byte on the wire: the role
/// in bits 0–1, the standing's tenure in bits 2–3, the policy in bits 4–5
/// and the standing's capacity shortfall (3 minus [`Standing::room`]) in
/// bits 6–7. A byte from before the standing existed reads as tenure 0
/// and full room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Shape {
    /// The policy.
    pub policy: PolicyKind,
    /// The role.
    pub role: Role,
    /// How long the member has been in the network, and how many leaves
    /// it offers to carry: what leaves and super-peers choose super-peers
    /// by.
    pub standing: Standing,
}

/// A member's standing: what the network's election weighs beyond
/// reachability. Reachability makes a member a super-peer; the standing
/// decides which super-peers the others link to (see the overlay's
/// `Config::prefer_standing`). Both parts are coarse on purpose (two bits
/// each): cards are passed on unsigned and go stale, and a tier changes
/// rarely enough that telling the neighbours costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Standing {
    /// Time in the network, in steps (0 to 3, see the overlay's
    /// `Config::tenure_steps`): members up longest are likeliest to stay.
    pub tenure: u8,
    /// Leaves it offers to carry against the policy's bound (0 to 3): 3
    /// the whole bound, 2 at least half, 1 at least a quarter, 0 less.
    pub room: u8,
}

impl Default for Standing {
    /// A newcomer offering the policy's whole bound.
    fn default() -> Self {
        Self { tenure: 0, room: Self::FULL_ROOM }
    }
}

impl Standing {
    /// The highest step of either part.
    pub const TOP: u8 = 3;
    /// The room of a member that offers the policy's whole bound.
    pub const FULL_ROOM: u8 = 3;

    /// The room step of a capacity of `own` leaves under a policy bound
    /// of `bound`.
    pub fn room_of(own: usize, bound: usize) -> u8 {
        if own >= bound {
            3
        } else if own * 2 >= bound {
            2
        } else if own * 4 >= bound {
            1
        } else {
            0
        }
    }

    /// How strongly a member choosing among super-peers prefers this one,
    /// 1 to 16: one more per tenure step, times one more per room step.
    /// A super-peer up a day with the whole bound is four times as likely
    /// to be asked as a newcomer with the same room; a newcomer with less
    /// than a quarter of the bound is a quarter as likely as one with all
    /// of it. A weight, not an order: a strict order would send every leaf
    /// to the same few super-peers, which would refuse them when full.
    pub fn weight(self) -> u64 {
        (1 + u64::from(self.tenure.min(Self::TOP))) * (1 + u64::from(self.room.min(Self::TOP)))
    }
}

impl Shape {
    /// A shape with the default standing.
    pub fn new(policy: PolicyKind, role: Role) -> Self {
        Self { policy, role, standing: Standing::default() }
    }

    /// The byte.
    pub fn to_byte(self) -> u8 {
        let p = match self.policy {
            PolicyKind::Mesh => 0,
            PolicyKind::SpanningTree => 1,
            PolicyKind::Hierarchical => 2,
            PolicyKind::Star => 3,
        };
        let r = match self.role {
            Role::Member => 0,
            Role::Super => 1,
            Role::Leaf => 2,
        };
        let tenure = self.standing.tenure.min(Standing::TOP);
        let shortfall = Standing::FULL_ROOM - self.standing.room.min(Standing::FULL_ROOM);
        (shortfall << 6) | (p << 4) | (tenure << 2) | r
    }

    /// From the byte; `None` for the one role value no role has.
    pub fn from_byte(b: u8) -> Option<Self> {
        let policy = match (b >> 4) & 3 {
            0 => PolicyKind::Mesh,
            1 => PolicyKind::SpanningTree,
            2 => PolicyKind::Hierarchical,
            _ => PolicyKind::Star,
        };
        let role = match b & 3 {
            0 => Role::Member,
            1 => Role::Super,
            2 => Role::Leaf,
            _ => return None,
        };
        let standing = Standing { tenure: (b >> 2) & 3, room: Standing::FULL_ROOM - (b >> 6) };
        Some(Self { policy, role, standing })
    }
}

/// A broadcast message's identity: who first sent it and their sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId<P> {
    /// The originator.
    pub origin: P,
    /// The originator's sequence number.
    pub seq: u64,
}

/// What a broadcast carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Application data.
    App,
    /// The overlay announcing a member's active view (for topology views).
    View,
    /// The overlay announcing that a member joined.
    Joined,
    /// The overlay announcing a super-peer (hub): its card, so that
    /// super-peers find each other and leaves find super-peers.
    Super,
}

/// An overlay message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<P> {
    /// HyParView JOIN: the sender (a newcomer) asks its contact to admit it.
    Join {
        /// The newcomer's card.
        card: Card<P>,
    },
    /// HyParView FORWARDJOIN: a random walk announcing a newcomer.
    ForwardJoin {
        /// The newcomer's card.
        card: Card<P>,
        /// Hops left.
        ttl: u8,
        /// Members the walk went through, contact first.
        path: Vec<P>,
    },
    /// HyParView NEIGHBOR: the sender asks to be in our active view.
    Neighbor {
        /// Whether we must accept (the sender has no neighbour left, or was
        /// chosen by a join walk).
        high: bool,
        /// The sender's card.
        card: Card<P>,
    },
    /// Answer to [`Message::Neighbor`].
    NeighborReply {
        /// Whether the sender added us.
        accepted: bool,
    },
    /// HyParView DISCONNECT: the sender drops us from its active view.
    Disconnect {
        /// Whether the sender stays up (then we keep it as passive).
        alive: bool,
    },
    /// HyParView SHUFFLE: a walk carrying a sample of the origin's views.
    Shuffle {
        /// Who started the shuffle.
        origin: P,
        /// Hops left.
        ttl: u8,
        /// Members the walk went through, origin first.
        path: Vec<P>,
        /// The sample.
        cards: Vec<Card<P>>,
    },
    /// Answer to a shuffle, relayed back along its path.
    ShuffleReply {
        /// A sample of the answerer's passive view.
        cards: Vec<Card<P>>,
    },
    /// Our active view, told to each neighbour when it changes: members
    /// know who their neighbours are linked to, and route tokens through
    /// them when a remembered route has broken.
    Neighbors {
        /// Our active peers.
        peers: Vec<P>,
        /// Our policy and role now.
        shape: Shape,
    },
    /// Liveness probe of an active neighbour.
    Ping {
        /// Echoed in the pong.
        nonce: u64,
    },
    /// Answer to [`Message::Ping`].
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Carry `inner` hop by hop along `route` (the introducer's relay).
    Relay {
        /// Who sent `inner`.
        origin: P,
        /// Hops still to go after the receiver; empty means "for you".
        route: Vec<P>,
        /// The relayed message (never a relay).
        inner: Box<Message<P>>,
    },
    /// A signed token for the final hop of a relay (an RSVP, so both sides
    /// punch at once). Opaque to the overlay; the receiver verifies it.
    Introduce {
        /// The token.
        token: Vec<u8>,
    },
    /// Plumtree GOSSIP: a broadcast, pushed eagerly.
    Gossip {
        /// Its id.
        id: MsgId<P>,
        /// Hops from the origin.
        round: u16,
        /// What it carries.
        kind: Kind,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Plumtree IHAVE: lazy announcements.
    IHave {
        /// Ids and the rounds at which the sender got them.
        ids: Vec<(MsgId<P>, u16)>,
    },
    /// Plumtree GRAFT: send me that message and push to me eagerly again.
    Graft {
        /// The missing message.
        id: MsgId<P>,
    },
    /// Plumtree PRUNE: stop pushing to me eagerly.
    Prune,
}

/// Why bytes are not a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended early.
    Truncated,
    /// The message is larger than [`MAX_MESSAGE`].
    TooLarge,
    /// An unknown message tag.
    UnknownTag(u8),
    /// A list or byte string longer than allowed.
    TooLong,
    /// A peer identity did not decode.
    BadPeer,
    /// A relay inside a relay, or an unknown broadcast kind.
    Invalid,
    /// Bytes after the end of the message.
    Trailing,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "overlay message truncated"),
            DecodeError::TooLarge => write!(f, "overlay message larger than {MAX_MESSAGE} bytes"),
            DecodeError::UnknownTag(t) => write!(f, "unknown overlay message tag {t}"),
            DecodeError::TooLong => write!(f, "overlay message list or field too long"),
            DecodeError::BadPeer => write!(f, "overlay message names an invalid peer"),
            DecodeError::Invalid => write!(f, "invalid overlay message"),
            DecodeError::Trailing => write!(f, "bytes after the overlay message"),
        }
    }
}

impl std::error::Error for DecodeError {}

const T_JOIN: u8 = 1;
const T_FORWARD_JOIN: u8 = 2;
const T_NEIGHBOR: u8 = 3;
const T_NEIGHBOR_REPLY: u8 = 4;
const T_DISCONNECT: u8 = 5;
const T_SHUFFLE: u8 = 6;
const T_SHUFFLE_REPLY: u8 = 7;
const T_PING: u8 = 8;
const T_PONG: u8 = 9;
const T_RELAY: u8 = 10;
const T_INTRODUCE: u8 = 11;
const T_GOSSIP: u8 = 12;
const T_IHAVE: u8 = 13;
const T_GRAFT: u8 = 14;
const T_PRUNE: u8 = 15;
const T_NEIGHBORS: u8 = 16;

impl<P: PeerKey> Message<P> {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Message::Join { card } => {
                out.push(T_JOIN);
                put_card(out, card);
            }
            Message::ForwardJoin { card, ttl, path } => {
                out.push(T_FORWARD_JOIN);
                put_card(out, card);
                out.push(*ttl);
                put_peers(out, path);
            }
            Message::Neighbor { high, card } => {
                out.push(T_NEIGHBOR);
                out.push(u8::from(*high));
                put_card(out, card);
            }
            Message::NeighborReply { accepted } => out.extend([T_NEIGHBOR_REPLY, u8::from(*accepted)]),
            Message::Disconnect { alive } => out.extend([T_DISCONNECT, u8::from(*alive)]),
            Message::Shuffle { origin, ttl, path, cards } => {
                out.push(T_SHUFFLE);
                origin.put(out);
                out.push(*ttl);
                put_peers(out, path);
                put_cards(out, cards);
            }
            Message::ShuffleReply { cards } => {
                out.push(T_SHUFFLE_REPLY);
                put_cards(out, cards);
            }
            Message::Neighbors { peers, shape } => {
                out.push(T_NEIGHBORS);
                put_peers(out, peers);
                out.push(shape.to_byte());
            }
            Message::Ping { nonce } => {
                out.push(T_PING);
                out.extend(nonce.to_be_bytes());
            }
            Message::Pong { nonce } => {
                out.push(T_PONG);
                out.extend(nonce.to_be_bytes());
            }
            Message::Relay { origin, route, inner } => {
                out.push(T_RELAY);
                origin.put(out);
                put_peers(out, route);
                inner.encode_into(out);
            }
            Message::Introduce { token } => {
                out.push(T_INTRODUCE);
                put_bytes(out, token);
            }
            Message::Gossip { id, round, kind, payload } => {
                out.push(T_GOSSIP);
                put_id(out, id);
                out.extend(round.to_be_bytes());
                out.push(match kind {
                    Kind::App => 0,
                    Kind::View => 1,
                    Kind::Joined => 2,
                    Kind::Super => 3,
                });
                put_bytes(out, payload);
            }
            Message::IHave { ids } => {
                out.push(T_IHAVE);
                out.push(ids.len() as u8);
                for (id, round) in ids {
                    put_id(out, id);
                    out.extend(round.to_be_bytes());
                }
            }
            Message::Graft { id } => {
                out.push(T_GRAFT);
                put_id(out, id);
            }
            Message::Prune => out.push(T_PRUNE),
        }
    }

    /// Decodes one message: the whole input, nothing after it.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(DecodeError::TooLarge);
        }
        let mut r = bytes;
        let m = Self::read(&mut r, true)?;
        if r.is_empty() { Ok(m) } else { Err(DecodeError::Trailing) }
    }

    fn read(r: &mut &[u8], outer: bool) -> Result<Self, DecodeError> {
        let tag = take_u8(r)?;
        Ok(match tag {
            T_JOIN => Message::Join { card: take_card(r)? },
            T_FORWARD_JOIN => Message::ForwardJoin { card: take_card(r)?, ttl: take_u8(r)?, path: take_peers(r)? },
            T_NEIGHBOR => Message::Neighbor { high: take_bool(r)?, card: take_card(r)? },
            T_NEIGHBOR_REPLY => Message::NeighborReply { accepted: take_bool(r)? },
            T_DISCONNECT => Message::Disconnect { alive: take_bool(r)? },
            T_SHUFFLE => Message::Shuffle {
                origin: P::take(r).ok_or(DecodeError::BadPeer)?,
                ttl: take_u8(r)?,
                path: take_peers(r)?,
                cards: take_cards(r)?,
            },
            T_SHUFFLE_REPLY => Message::ShuffleReply { cards: take_cards(r)? },
            T_NEIGHBORS => Message::Neighbors { peers: take_peers(r)?, shape: take_shape(r)? },
            T_PING => Message::Ping { nonce: take_u64(r)? },
            T_PONG => Message::Pong { nonce: take_u64(r)? },
            T_RELAY => {
                if !outer {
                    return Err(DecodeError::Invalid);
                }
                Message::Relay {
                    origin: P::take(r).ok_or(DecodeError::BadPeer)?,
                    route: take_peers(r)?,
                    inner: Box::new(Self::read(r, false)?),
                }
            }
            T_INTRODUCE => Message::Introduce { token: take_bytes(r, MAX_CARD)? },
            T_GOSSIP => Message::Gossip {
                id: take_id(r)?,
                round: take_u16(r)?,
                kind: match take_u8(r)? {
                    0 => Kind::App,
                    1 => Kind::View,
                    2 => Kind::Joined,
                    3 => Kind::Super,
                    _ => return Err(DecodeError::Invalid),
                },
                payload: take_bytes(r, MAX_MESSAGE)?,
            },
            T_IHAVE => {
                let n = usize::from(take_u8(r)?);
                if n > MAX_LIST {
                    return Err(DecodeError::TooLong);
                }
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push((take_id(r)?, take_u16(r)?));
                }
                Message::IHave { ids }
            }
            T_GRAFT => Message::Graft { id: take_id(r)? },
            T_PRUNE => Message::Prune,
            t => return Err(DecodeError::UnknownTag(t)),
        })
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend((b.len() as u32).to_be_bytes());
    out.extend(b);
}

fn put_card<P: PeerKey>(out: &mut Vec<u8>, c: &Card<P>) {
    c.peer.put(out);
    put_bytes(out, &c.token);
    out.push(c.shape.to_byte());
}

fn put_cards<P: PeerKey>(out: &mut Vec<u8>, cs: &[Card<P>]) {
    out.push(cs.len() as u8);
    for c in cs {
        put_card(out, c);
    }
}

fn put_peers<P: PeerKey>(out: &mut Vec<u8>, ps: &[P]) {
    out.push(ps.len() as u8);
    for p in ps {
        p.put(out);
    }
}

fn put_id<P: PeerKey>(out: &mut Vec<u8>, id: &MsgId<P>) {
    id.origin.put(out);
    out.extend(id.seq.to_be_bytes());
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if r.len() < n {
        return Err(DecodeError::Truncated);
    }
    let (a, b) = r.split_at(n);
    *r = b;
    Ok(a)
}

fn take_u8(r: &mut &[u8]) -> Result<u8, DecodeError> {
    Ok(take(r, 1)?[0])
}

fn take_bool(r: &mut &[u8]) -> Result<bool, DecodeError> {
    match take_u8(r)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::Invalid),
    }
}

fn take_u16(r: &mut &[u8]) -> Result<u16, DecodeError> {
    let b = take(r, 2)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

fn take_u64(r: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut a = [0u8; 8];
    a.copy_from_slice(take(r, 8)?);
    Ok(u64::from_be_bytes(a))
}

fn take_bytes(r: &mut &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    let mut a = [0u8; 4];
    a.copy_from_slice(take(r, 4)?);
    let n = u32::from_be_bytes(a) as usize;
    if n > max {
        return Err(DecodeError::TooLong);
    }
    Ok(take(r, n)?.to_vec())
}

fn take_shape(r: &mut &[u8]) -> Result<Shape, DecodeError> {
    Shape::from_byte(take_u8(r)?).ok_or(DecodeError::Invalid)
}

fn take_card<P: PeerKey>(r: &mut &[u8]) -> Result<Card<P>, DecodeError> {
    Ok(Card { peer: P::take(r).ok_or(DecodeError::BadPeer)?, token: take_bytes(r, MAX_CARD)?, shape: take_shape(r)? })
}

fn take_cards<P: PeerKey>(r: &mut &[u8]) -> Result<Vec<Card<P>>, DecodeError> {
    let n = usize::from(take_u8(r)?);
    if n > MAX_LIST {
        return Err(DecodeError::TooLong);
    }
    (0..n).map(|_| take_card(r)).collect()
}

fn take_peers<P: PeerKey>(r: &mut &[u8]) -> Result<Vec<P>, DecodeError> {
    let n = usize::from(take_u8(r)?);
    if n > MAX_LIST {
        return Err(DecodeError::TooLong);
    }
    (0..n).map(|_| P::take(r).ok_or(DecodeError::BadPeer)).collect()
}

fn take_id<P: PeerKey>(r: &mut &[u8]) -> Result<MsgId<P>, DecodeError> {
    Ok(MsgId { origin: P::take(r).ok_or(DecodeError::BadPeer)?, seq: take_u64(r)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(p: u32) -> Card<u32> {
        let shape = Shape {
            policy: PolicyKind::Hierarchical,
            role: if p.is_multiple_of(2) { Role::Leaf } else { Role::Super },
            standing: Standing { tenure: (p % 4) as u8, room: (p / 4 % 4) as u8 },
        };
        Card { peer: p, token: vec![p as u8; 3], shape }
    }

    fn samples() -> Vec<Message<u32>> {
        let id = MsgId { origin: 7u32, seq: 99 };
        vec![
            Message::Join { card: card(1) },
            Message::ForwardJoin { card: card(2), ttl: 6, path: vec![1, 3] },
            Message::Neighbor { high: true, card: card(4) },
            Message::NeighborReply { accepted: false },
            Message::Disconnect { alive: true },
            Message::Shuffle { origin: 5, ttl: 3, path: vec![5], cards: vec![card(5), card(6)] },
            Message::ShuffleReply { cards: vec![card(8)] },
            Message::Neighbors { peers: vec![1, 2, 3], shape: Shape::new(PolicyKind::Star, Role::Super) },
            Message::Ping { nonce: u64::MAX },
            Message::Pong { nonce: 1 },
            Message::Relay { origin: 1, route: vec![2, 3], inner: Box::new(Message::Introduce { token: vec![9; 40] }) },
            Message::Gossip { id, round: 3, kind: Kind::View, payload: b"hi".to_vec() },
            Message::Gossip { id, round: 1, kind: Kind::Super, payload: card(7).to_bytes() },
            Message::IHave { ids: vec![(id, 2), (MsgId { origin: 1, seq: 0 }, 0)] },
            Message::Graft { id },
            Message::Prune,
        ]
    }

    #[test]
    fn a_card_round_trips_alone_and_nothing_may_follow_it() {
        let c = card(3);
        assert_eq!(Card::<u32>::from_bytes(&c.to_bytes()), Ok(c.clone()));
        let mut longer = c.to_bytes();
        longer.push(0);
        assert_eq!(Card::<u32>::from_bytes(&longer), Err(DecodeError::Trailing));
        let b = c.to_bytes();
        for n in 0..b.len() {
            assert!(Card::<u32>::from_bytes(&b[..n]).is_err(), "{n} bytes of {}", b.len());
        }
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            let b = m.encode();
            assert_eq!(Message::<u32>::decode(&b), Ok(m.clone()), "{m:?}");
            // Every strict prefix is an error, never a panic or a shorter message.
            for n in 0..b.len() {
                assert!(Message::<u32>::decode(&b[..n]).is_err(), "{m:?} prefix {n}");
            }
            let mut long = b.clone();
            long.push(0);
            assert_eq!(Message::<u32>::decode(&long), Err(DecodeError::Trailing));
        }
    }

    #[test]
    fn refuses_nested_relays_bad_tags_and_huge_lengths() {
        let inner = Message::Relay { origin: 1u32, route: vec![], inner: Box::new(Message::Prune) };
        let nested = Message::Relay { origin: 1u32, route: vec![2], inner: Box::new(inner) };
        assert_eq!(Message::<u32>::decode(&nested.encode()), Err(DecodeError::Invalid));
        assert_eq!(Message::<u32>::decode(&[200]), Err(DecodeError::UnknownTag(200)));
        let mut b = vec![T_INTRODUCE];
        b.extend(u32::MAX.to_be_bytes());
        assert_eq!(Message::<u32>::decode(&b), Err(DecodeError::TooLong));
        assert_eq!(Message::<u32>::decode(&vec![T_PRUNE; MAX_MESSAGE + 1]), Err(DecodeError::TooLarge));
        assert_eq!(Message::<u32>::decode(&[T_NEIGHBOR_REPLY, 2]), Err(DecodeError::Invalid));
        // A shape byte no role has.
        assert_eq!(Message::<u32>::decode(&[T_NEIGHBORS, 0, 0x43]), Err(DecodeError::Invalid));
        assert_eq!(Message::<u32>::decode(&[T_NEIGHBORS, 0, 0x03]), Err(DecodeError::Invalid));
    }

    #[test]
    fn every_shape_round_trips_through_its_byte() {
        let policies = [PolicyKind::Mesh, PolicyKind::SpanningTree, PolicyKind::Hierarchical, PolicyKind::Star];
        let mut seen = std::collections::BTreeSet::new();
        for policy in policies {
            for role in [Role::Member, Role::Super, Role::Leaf] {
                for tenure in 0..=Standing::TOP {
                    for room in 0..=Standing::FULL_ROOM {
                        let s = Shape { policy, role, standing: Standing { tenure, room } };
                        assert_eq!(Shape::from_byte(s.to_byte()), Some(s));
                        assert!(seen.insert(s.to_byte()));
                    }
                }
            }
        }
        let valid = (0..=255u8).filter(|&b| Shape::from_byte(b).is_some()).count();
        assert_eq!(valid, 4 * 3 * 4 * 4);
    }

    #[test]
    fn a_shape_byte_from_before_the_standing_reads_as_a_newcomer_with_full_room() {
        // Policy in the high nibble, role in the low one: the old layout.
        let s = Shape::from_byte(0x21).expect("a hierarchical super-peer");
        assert_eq!(s, Shape::new(PolicyKind::Hierarchical, Role::Super));
        assert_eq!(s.standing, Standing { tenure: 0, room: 3 });
        assert_eq!(s.to_byte(), 0x21);
    }

    #[test]
    fn room_steps_and_weights_order_as_documented() {
        assert_eq!([32, 16, 15, 8, 7, 0].map(|n| Standing::room_of(n, 32)), [3, 2, 1, 1, 0, 0]);
        let w = |tenure, room| Standing { tenure, room }.weight();
        assert_eq!(Standing::default().weight(), 4);
        assert_eq!(w(3, 3), 16);
        assert_eq!(w(0, 0), 1);
        assert!(w(1, 3) > w(0, 3) && w(0, 3) > w(0, 2));
    }
}
