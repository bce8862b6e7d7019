//! Validation: structure → type/role → expiry → signature → linking.

use std::collections::{BTreeSet, HashSet};

use super::{IceRole, Token, TokenBody, TokenError, TokenId, TokenType, VERSION_1_1, decode, is_known_version, limits};
use crate::identity::PeerId;

/// Checks version and every size limit. Runs inside [`decode`](super::decode)
/// for both encodings, before any signature work.
pub(crate) fn check_structure(b: &TokenBody) -> Result<(), TokenError> {
    if !is_known_version(&b.version) {
        return Err(TokenError::UnknownVersion(b.version.chars().take(16).collect()));
    }
    let limit = |field: &'static str, len: usize, max: usize| {
        if len > max { Err(TokenError::LimitExceeded { field, len, max }) } else { Ok(()) }
    };
    let ci = &b.connection_info;
    limit("ice_candidates", ci.ice_candidates.len(), limits::MAX_CANDIDATES)?;
    let legacy = b.version == VERSION_1_1;
    check_ice_chars("ufrag", &ci.ufrag, &limits::UFRAG_LEN, legacy)?;
    check_ice_chars("pwd", &ci.pwd, &limits::PWD_LEN, legacy)?;
    if let Some(n) = &b.network_id {
        limit("network_id", n.len(), limits::MAX_NETWORK_ID)?;
    }
    for p in [&b.initiator, &b.responder].into_iter().flatten() {
        limit("peer_id", p.peer_id.len(), 64)?;
        limit("capabilities", p.capabilities.len(), limits::MAX_CAPABILITIES)?;
        for c in &p.capabilities {
            limit("capabilities", c.len(), limits::MAX_SHORT_STRING)?;
        }
    }
    limit("crypto.suite", b.crypto.suite.len(), limits::MAX_SHORT_STRING)?;
    limit("relay", b.relay.len(), limits::MAX_RELAYS)?;
    for r in &b.relay {
        limit("relay", r.len(), limits::MAX_RELAY)?;
    }
    limit("metadata", b.metadata.len(), limits::MAX_METADATA)?;
    for (k, v) in &b.metadata {
        limit("metadata key", k.len(), limits::MAX_SHORT_STRING)?;
        limit("metadata value", v.len(), limits::MAX_METADATA_VALUE)?;
    }
    if let Some(nat) = &ci.nat {
        let sequential = nat.ports == Some(super::PortAllocation::Sequential);
        match nat.delta {
            Some(d) if !sequential => {
                return Err(TokenError::Malformed(format!("nat.delta {d} given but ports are not sequential")));
            }
            Some(d) if d == 0 || d.unsigned_abs() > limits::MAX_PORT_DELTA.unsigned_abs() => {
                return Err(TokenError::Malformed(format!("nat.delta {d} is outside ±1..={}", limits::MAX_PORT_DELTA)));
            }
            None if sequential => {
                return Err(TokenError::Malformed("nat.ports is sequential but nat.delta is missing".into()));
            }
            _ => {}
        }
    }
    for c in &ci.ice_candidates {
        if c.address.port() == 0 {
            return Err(TokenError::Malformed(format!("candidate {} has port 0", c.address)));
        }
    }
    Ok(())
}

/// ICE credentials use `ice-char` (ALPHA / DIGIT / "+" / "/", RFC 8839
/// §5.4). Format 1.1 minted base64url credentials, so its tokens may also
/// hold `-` and `_` (`legacy`).
fn check_ice_chars(
    field: &'static str,
    s: &str,
    len: &std::ops::RangeInclusive<usize>,
    legacy: bool,
) -> Result<(), TokenError> {
    if s.len() > *len.end() {
        return Err(TokenError::LimitExceeded { field, len: s.len(), max: *len.end() });
    }
    if s.len() < *len.start() {
        return Err(TokenError::Malformed(format!("{field} is shorter than {} characters", len.start())));
    }
    let extra: &[u8] = if legacy { b"+/-_" } else { b"+/" };
    if !s.bytes().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c)) {
        return Err(TokenError::Malformed(format!("{field} has characters ICE does not allow")));
    }
    Ok(())
}

fn check_type_and_role(b: &TokenBody, expected: TokenType) -> Result<(), TokenError> {
    if b.token_type != expected {
        return Err(TokenError::WrongType { expected, found: b.token_type });
    }
    let role = b.connection_info.ice_role;
    match expected {
        TokenType::Invitation => {
            if b.initiator.is_none() || b.responder.is_some() {
                return Err(TokenError::WrongRole("an invitation must name its initiator and no responder"));
            }
            if role != IceRole::Controlling {
                return Err(TokenError::WrongRole("an invitation's author must be ICE controlling"));
            }
            if b.in_reply_to.is_some() {
                return Err(TokenError::WrongRole("an invitation does not reply to anything"));
            }
        }
        TokenType::Rsvp => {
            if b.responder.is_none() || b.initiator.is_some() {
                return Err(TokenError::WrongRole("an RSVP must name its responder and no initiator"));
            }
            if role != IceRole::Controlled {
                return Err(TokenError::WrongRole("an RSVP's author must be ICE controlled"));
            }
            if b.in_reply_to.is_none() {
                return Err(TokenError::WrongRole("an RSVP must say which invitation it answers"));
            }
        }
    }
    Ok(())
}

fn check_time(b: &TokenBody, now: u64) -> Result<(), TokenError> {
    if b.created_at > now.saturating_add(limits::MAX_CLOCK_SKEW) {
        return Err(TokenError::FromFuture { ahead: b.created_at - now });
    }
    if now >= b.expires_at {
        return Err(TokenError::Expired { expires_at: b.expires_at, ago: now - b.expires_at });
    }
    Ok(())
}

fn check_signature(t: &Token) -> Result<(), TokenError> {
    let author = t.body.author().ok_or(TokenError::WrongRole("token names no author"))?;
    match author.peer_id.parse::<PeerId>() {
        Ok(id) if id.public_key() == author.public_key => {}
        _ => return Err(TokenError::PeerIdMismatch),
    }
    if !t.signature_valid() {
        return Err(TokenError::BadSignature);
    }
    Ok(())
}

/// Validates a token on its own, whatever its type: roles, expiry and
/// signature (what `convoke token inspect` checks). An RSVP's link to its
/// invitation needs the invitation: see [`Rsvp::parse`].
pub fn validate_standalone(t: &Token, now: u64) -> Result<(), TokenError> {
    check_type_and_role(&t.body, t.body.token_type)?;
    check_time(&t.body, now)?;
    check_signature(t)
}

/// An invitation that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation(Token);

impl Invitation {
    /// Decodes (either encoding) and validates an invitation at `now`.
    pub fn parse(input: &str, now: u64) -> Result<Invitation, TokenError> {
        Self::from_token(decode(input)?, now)
    }

    /// Validates an already decoded token as an invitation.
    pub fn from_token(t: Token, now: u64) -> Result<Invitation, TokenError> {
        check_type_and_role(&t.body, TokenType::Invitation)?;
        check_time(&t.body, now)?;
        check_signature(&t)?;
        Ok(Invitation(t))
    }

    /// The validated token.
    pub fn token(&self) -> &Token {
        &self.0
    }

    /// The inviter's PeerId.
    pub fn inviter(&self) -> PeerId {
        self.0.body.initiator.as_ref().expect("validated invitation has an initiator").public_key.peer_id()
    }
}

/// An RSVP that passed every check against its invitation, including single use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rsvp(Token);

impl Rsvp {
    /// Decodes and validates an RSVP answering `invitation` at `now`, and
    /// records it in `guard` so that it cannot be used again.
    pub fn parse(input: &str, invitation: &Invitation, now: u64, guard: &mut ReplayGuard) -> Result<Rsvp, TokenError> {
        Self::from_token(decode(input)?, invitation, now, guard)
    }

    /// Validates an already decoded token as an RSVP to `invitation`.
    pub fn from_token(
        t: Token,
        invitation: &Invitation,
        now: u64,
        guard: &mut ReplayGuard,
    ) -> Result<Rsvp, TokenError> {
        check_type_and_role(&t.body, TokenType::Rsvp)?;
        check_time(&t.body, now)?;
        check_signature(&t)?;
        let inv = &invitation.token().body;
        let reply_to = t.body.in_reply_to.expect("role check ensures in_reply_to");
        if reply_to != inv.token_id {
            return Err(TokenError::WrongReply { expected: inv.token_id.to_string(), found: reply_to.to_string() });
        }
        if t.body.created_at < inv.created_at {
            return Err(TokenError::RsvpOlderThanInvitation);
        }
        if !inv.connection_mode.rsvp_supported {
            return Err(TokenError::RsvpNotAccepted);
        }
        guard.check_and_record(t.body.token_id, t.body.expires_at, now)?;
        Ok(Rsvp(t))
    }

    /// The validated token.
    pub fn token(&self) -> &Token {
        &self.0
    }

    /// The responder's PeerId.
    pub fn responder(&self) -> PeerId {
        self.0.body.responder.as_ref().expect("validated RSVP has a responder").public_key.peer_id()
    }
}

/// Remembers used RSVP ids so that none is accepted twice, in bounded memory.
///
/// An id is kept until its token expires (after that, expiry refuses a
/// replay on its own). When the guard is full, the entry that expires first is
/// dropped and becomes the *floor*: from then on any RSVP expiring at or
/// before the floor is refused, because the guard can no longer prove it
/// unused. So a replay is never accepted; at worst, under a flood of valid
/// RSVPs, an old-but-unexpired one is refused too.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    capacity: usize,
    ids: HashSet<TokenId>,
    by_expiry: BTreeSet<(u64, TokenId)>,
    floor: u64,
}

impl Default for ReplayGuard {
    /// Room for 4,096 live RSVPs (about 300 KiB).
    fn default() -> Self {
        Self::with_capacity(4096)
    }
}

impl ReplayGuard {
    /// A guard remembering at most `capacity` live ids (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), ids: HashSet::new(), by_expiry: BTreeSet::new(), floor: 0 }
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Refuses `id` if seen (or unprovable), else records it.
    pub fn check_and_record(&mut self, id: TokenId, expires_at: u64, now: u64) -> Result<(), TokenError> {
        // Forget what has expired: expiry alone refuses those now.
        while let Some(&(exp, old)) = self.by_expiry.first() {
            if exp > now {
                break;
            }
            self.by_expiry.pop_first();
            self.ids.remove(&old);
        }
        if self.ids.contains(&id) || expires_at <= self.floor {
            return Err(TokenError::Replayed);
        }
        if self.ids.len() >= self.capacity
            && let Some(&(oldest, old)) = self.by_expiry.first()
        {
            if expires_at <= oldest {
                // Accept without storing: raising the floor to this token's
                // expiry refuses any replay of it.
                self.floor = self.floor.max(expires_at);
                return Ok(());
            }
            self.by_expiry.pop_first();
            self.ids.remove(&old);
            self.floor = self.floor.max(oldest);
        }
        self.ids.insert(id);
        self.by_expiry.insert((expires_at, id));
        Ok(())
    }
}
