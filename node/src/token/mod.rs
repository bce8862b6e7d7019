//! Invitation and RSVP tokens (seed spec v1.1): model, signing, both
//! encodings, and validation.
//!
//! A token is everything a peer needs to reach its author with no signaling
//! server: ICE candidates and credentials, role and tie-breaker, identity
//! key, expiry, connection mode. It travels by any out-of-band channel.
//!
//! * [`Token::sign`] makes one; [`Token::encode_text`] gives the `scpi://`
//!   form (base64url of DEFLATE of canonical JSON) and
//!   [`Token::encode_compact`] the `scpc:` form (fixed-width binary with
//!   derived values left out) for QR codes and short channels. Both carry the
//!   same signature: Ed25519 over SHA-256 of the canonical JSON without the
//!   `signature` field.
//! * [`decode`] accepts either form (surrounding whitespace and chat line
//!   breaks are ignored) and checks size, encoding and structure;
//!   [`Invitation::parse`] and [`Rsvp::parse`] go on to check type, roles,
//!   expiry, signature and (for RSVPs) the link to the invitation and single
//!   use, with a [`ReplayGuard`] bounded in memory.
//!
//! Sans-IO: time comes in as `now` (unix seconds), randomness from the
//! caller's RNG.

mod compact;
mod error;
mod text;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::{Identity, PublicKey};

pub use error::TokenError;
pub use validate::{Invitation, ReplayGuard, Rsvp, validate_standalone};

/// The format version this build writes and reads.
pub const VERSION: &str = "1.2";

/// The format before [`VERSION`], still read: the same fields, but the ICE
/// credentials it mints and derives are base64url, whose `-` and `_` are
/// outside ICE's character set (RFC 8839 `ice-char`), so some ICE agents
/// refuse them. 1.2 writes them in standard base64 (`+` and `/`).
pub const VERSION_1_1: &str = "1.1";

/// Whether this build reads tokens of `version`.
pub fn is_known_version(version: &str) -> bool {
    version == VERSION || version == VERSION_1_1
}

/// The alphabet of the ICE credentials a token of `version` mints and
/// derives (ufrag, password, the invitee's derived password): standard
/// base64 without padding from 1.2, inside `ice-char`; base64url in 1.1.
fn credential_alphabet(version: &str) -> &'static base64::engine::GeneralPurpose {
    if version == VERSION_1_1 {
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
    } else {
        &base64::engine::general_purpose::STANDARD_NO_PAD
    }
}

/// 16 credential bytes as a token of `version` writes them, and back: the
/// compact form packs a password in that canonical form as raw bytes.
pub(crate) fn credential_encode(version: &str, raw: &[u8]) -> String {
    base64::Engine::encode(credential_alphabet(version), raw)
}

/// The bytes behind a credential string in `version`'s alphabet, if it is
/// their canonical form.
pub(crate) fn credential_decode(version: &str, s: &str) -> Option<Vec<u8>> {
    let raw = base64::Engine::decode(credential_alphabet(version), s).ok()?;
    (credential_encode(version, &raw) == s).then_some(raw)
}
/// Prefix of the text encoding.
pub const TEXT_PREFIX: &str = "scpi://";
/// Prefix of the compact encoding.
pub const COMPACT_PREFIX: &str = "scpc:";
/// Default RSVP window: how long an invitee keeps checking before it offers
/// an RSVP (seconds).
pub const DEFAULT_RSVP_TIMEOUT_SECS: u32 = 30;
/// Default lifetime of an RSVP (seconds): one hour.
pub const DEFAULT_RSVP_LIFETIME_SECS: u64 = 3600;
/// The session handshake every v1.1 token offers (docs/DESIGN.md §4).
pub const DEFAULT_SUITE: &str = "Noise_IK_25519_ChaChaPoly_SHA256";

/// Hard limits checked before expensive work. They bound memory and CPU for
/// hostile input; every valid token fits well inside them.
pub mod limits {
    /// Largest accepted input, in bytes after removing whitespace.
    pub const MAX_INPUT: usize = 8 * 1024;
    /// Largest accepted decompressed JSON body.
    pub const MAX_INFLATED: usize = 16 * 1024;
    /// Most ICE candidates in one token.
    pub const MAX_CANDIDATES: usize = 16;
    /// ICE ufrag length bounds (RFC 8445 §5.3: at least 24 bits; 4 ice-chars).
    pub const UFRAG_LEN: std::ops::RangeInclusive<usize> = 4..=64;
    /// ICE password length bounds (RFC 8445 §5.3: at least 128 bits; 22 ice-chars).
    pub const PWD_LEN: std::ops::RangeInclusive<usize> = 22..=128;
    /// Longest network id.
    pub const MAX_NETWORK_ID: usize = 64;
    /// Most capabilities, and the longest one.
    pub const MAX_CAPABILITIES: usize = 16;
    /// Longest capability, relay hint, metadata key or suite name.
    pub const MAX_SHORT_STRING: usize = 64;
    /// Most relay hints.
    pub const MAX_RELAYS: usize = 4;
    /// Longest relay hint (a URL).
    pub const MAX_RELAY: usize = 256;
    /// Most metadata entries.
    pub const MAX_METADATA: usize = 16;
    /// Longest metadata value.
    pub const MAX_METADATA_VALUE: usize = 256;
    /// Largest `connection_info.nat.delta`, either sign.
    pub const MAX_PORT_DELTA: i32 = 1024;
    /// How far in the future `created_at` may lie (clock skew), seconds.
    pub const MAX_CLOCK_SKEW: u64 = 300;
}

/// Invitation (made by the initiator) or RSVP (the responder's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    /// "Connect to me": made by the inviter.
    Invitation,
    /// "Here is where I am, check at the same time": the invitee's answer.
    Rsvp,
}

impl fmt::Display for TokenType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenType::Invitation => "invitation",
            TokenType::Rsvp => "RSVP",
        })
    }
}

/// A 128-bit random token id, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(pub [u8; 16]);

impl TokenId {
    /// A fresh random id.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        TokenId(b)
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

impl Serialize for TokenId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_hex16(&s).map(TokenId).ok_or_else(|| serde::de::Error::custom("token id must be 32 lowercase hex digits"))
    }
}

fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in b.chunks(2).enumerate() {
        let hex = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = hex(pair[0])? << 4 | hex(pair[1])?;
    }
    Some(out)
}

/// How the connection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialMode {
    /// The invitee checks towards the inviter first; an RSVP only if needed.
    Unidirectional,
    /// Both sides must check at once: the invitee answers with an RSVP
    /// straight away (`--rsvp-required`).
    Bidirectional,
}

/// The `connection_mode` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionMode {
    /// Whether the invitee starts alone or an RSVP is needed from the start.
    pub initial: InitialMode,
    /// Whether the invitation admits many invitees (a server's long-lived
    /// invitation) or just one.
    pub reusable: bool,
    /// Whether the inviter accepts RSVPs at all.
    pub rsvp_supported: bool,
    /// How long the invitee keeps checking before it offers an RSVP.
    pub rsvp_timeout_seconds: u32,
}

impl Default for ConnectionMode {
    fn default() -> Self {
        Self {
            initial: InitialMode::Unidirectional,
            rsvp_supported: true,
            rsvp_timeout_seconds: DEFAULT_RSVP_TIMEOUT_SECS,
            reusable: false,
        }
    }
}

/// The author of a token: the initiator of an invitation or the responder of
/// an RSVP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Party {
    /// What the author's node can do (see [`KNOWN_CAPABILITIES`]).
    pub capabilities: Vec<String>,
    /// The author's PeerId; must name `public_key`.
    pub peer_id: String,
    /// The author's Ed25519 key, base64url. It also fixes the author's X25519
    /// static key for the session handshake (birational map).
    #[serde(with = "b64_key")]
    pub public_key: PublicKey,
}

/// Capabilities this build knows; the compact form packs them as bits.
pub const KNOWN_CAPABILITIES: [&str; 8] =
    ["ice", "rsvp", "noise-ik", "datagram", "stream", "overlay", "introducer", "stun"];

/// Candidate type (RFC 8445 §5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CandidateKind {
    /// An address on a local interface.
    Host,
    /// Server reflexive: the address a STUN server saw.
    Srflx,
    /// Peer reflexive: learnt from a peer's check.
    Prflx,
    /// An address on a relay.
    Relay,
}

impl CandidateKind {
    /// Type preference, RFC 8445 §5.1.2.2 recommended values.
    pub fn type_preference(self) -> u32 {
        match self {
            CandidateKind::Host => 126,
            CandidateKind::Prflx => 110,
            CandidateKind::Srflx => 100,
            CandidateKind::Relay => 0,
        }
    }
}

/// One ICE candidate (UDP, component 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// Transport address.
    pub address: SocketAddr,
    /// ICE priority.
    pub priority: u32,
    /// Candidate type (serialized as `type`, hence declared last).
    #[serde(rename = "type")]
    pub kind: CandidateKind,
}

impl Candidate {
    /// RFC 8445 §5.1.2.1 priority for component 1 with the given local
    /// preference.
    pub fn standard_priority(kind: CandidateKind, local_preference: u16) -> u32 {
        (kind.type_preference() << 24) | (u32::from(local_preference) << 8) | (256 - 1)
    }

    /// Builds a list of candidates with standard priorities: local preference
    /// 65535 − position, so earlier entries are preferred among equals. The
    /// compact encoding leaves such priorities out.
    pub fn list(items: impl IntoIterator<Item = (CandidateKind, SocketAddr)>) -> Vec<Candidate> {
        items
            .into_iter()
            .enumerate()
            .map(|(i, (kind, address))| Candidate {
                kind,
                address,
                priority: Self::standard_priority(kind, derived_local_pref(i)),
            })
            .collect()
    }
}

pub(crate) fn derived_local_pref(index: usize) -> u16 {
    u16::try_from(65535usize.saturating_sub(index)).unwrap_or(0)
}

/// ICE role (RFC 8445 §6.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IceRole {
    /// Nominates pairs; the inviter's role.
    Controlling,
    /// Follows nominations; the invitee's role.
    Controlled,
}

/// The `connection_info` section: where and how to reach the author.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionInfo {
    /// Candidates, most preferred first.
    pub ice_candidates: Vec<Candidate>,
    /// The author's ICE role.
    pub ice_role: IceRole,
    /// The author's 64-bit tie-breaker (RFC 8445 §7.3.1.1).
    pub ice_tie_breaker: u64,
    /// How the author's NAT behaves, as far as it could tell; absent when
    /// it could not (tokens without it stay valid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatInfo>,
    /// ICE password.
    pub pwd: String,
    /// ICE username fragment.
    pub ufrag: String,
}

/// How a NAT maps an internal endpoint to external ports (RFC 4787 §4.1),
/// as far as a node can tell from its STUN answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatMapping {
    /// No translation: the node's own address is what the internet sees.
    None,
    /// One external port whatever the destination: the address in a token
    /// is the one a new peer reaches (if the filter lets it in).
    Independent,
    /// A new external port per destination: a new peer cannot know it, and
    /// only port prediction or probing finds it.
    Dependent,
}

/// How a NAT chooses the external port of a new mapping (RFC 4787 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortAllocation {
    /// The internal port when free.
    Preserving,
    /// The previous mapping's port plus a fixed `delta`: predictable.
    Sequential,
    /// Any free port.
    Random,
}

/// A node's NAT as it classified it (`connection_info.nat`). The peer uses
/// it to pick the step of the reach ladder: ask for the RSVP at once, predict
/// ports, or probe for them (docs/DESIGN.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatInfo {
    /// For `ports = "sequential"`: the step between consecutive mappings'
    /// ports (non-zero, at most ±[`limits::MAX_PORT_DELTA`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<i32>,
    /// Mapping behaviour.
    pub mapping: NatMapping,
    /// Port allocation, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortAllocation>,
}

impl NatInfo {
    /// What a node whose router forwards a port to it (PCP, NAT-PMP, UPnP
    /// IGD) says of its NAT: nothing stands in a peer's way at the mapped
    /// address, so the peer neither asks for an RSVP early nor probes.
    pub const PORT_MAPPED: NatInfo = NatInfo { delta: None, mapping: NatMapping::None, ports: None };

    /// Whether a new peer cannot reach the reflexive address this node put
    /// in its token (its NAT maps per destination).
    pub fn is_hard(&self) -> bool {
        self.mapping == NatMapping::Dependent
    }

    /// Whether the node sits behind any NAT.
    pub fn is_translated(&self) -> bool {
        self.mapping != NatMapping::None
    }
}

/// The `crypto` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crypto {
    /// The session handshake, a Noise protocol name. The author's static
    /// X25519 key is derived from its Ed25519 key, so the token need not
    /// carry it.
    pub suite: String,
}

impl Default for Crypto {
    fn default() -> Self {
        Self { suite: DEFAULT_SUITE.to_owned() }
    }
}

/// Everything in a token but its signature. This is what gets signed.
///
/// Fields (here and in every nested struct) are declared in sorted order so
/// that serde writes canonical JSON directly; a property test checks this
/// against a key-sorting serialization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// Where and how to reach the author.
    pub connection_info: ConnectionInfo,
    /// How the connection starts.
    pub connection_mode: ConnectionMode,
    /// Unix seconds.
    pub created_at: u64,
    /// Session cryptography.
    pub crypto: Crypto,
    /// Unix seconds; the token is refused from this time on.
    pub expires_at: u64,
    /// For an RSVP: the id of the invitation it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<TokenId>,
    /// The author of an invitation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<Party>,
    /// Free-form key/value pairs (a name to show, an application tag).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Optional network name; nodes only join invitations of their network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_id: Option<String>,
    /// Relay hints (TURN URLs or peer ids willing to relay); may be empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay: Vec<String>,
    /// The author of an RSVP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responder: Option<Party>,
    /// Random id.
    pub token_id: TokenId,
    /// Invitation or RSVP.
    pub token_type: TokenType,
    /// Format version, `"1.1"`.
    pub version: String,
}

impl TokenBody {
    /// The author: `initiator` for an invitation, `responder` for an RSVP.
    pub fn author(&self) -> Option<&Party> {
        match self.token_type {
            TokenType::Invitation => self.initiator.as_ref(),
            TokenType::Rsvp => self.responder.as_ref(),
        }
    }

    /// Canonical JSON: sorted keys, no whitespace. The signature covers
    /// SHA-256 of exactly these bytes.
    pub fn canonical_json(&self) -> Vec<u8> {
        // Fields are declared in sorted order and maps are BTreeMaps, so
        // the derived serialization is already canonical.
        serde_json::to_vec(self).expect("token body serializes")
    }

    /// SHA-256 of the canonical form: the message the signature covers.
    pub fn signing_digest(&self) -> [u8; 32] {
        Sha256::digest(self.canonical_json()).into()
    }
}

/// A signed token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The signed content.
    pub body: TokenBody,
    /// Ed25519 signature over [`TokenBody::signing_digest`].
    pub signature: [u8; 64],
}

impl Token {
    /// Signs `body` with `identity`.
    pub fn sign(body: TokenBody, identity: &Identity) -> Token {
        let signature = identity.sign(&body.signing_digest());
        Token { body, signature }
    }

    /// Whether the signature verifies under the author's key. Does not check
    /// anything else; see [`Invitation::parse`] for full validation.
    pub fn signature_valid(&self) -> bool {
        self.body.author().is_some_and(|p| p.public_key.verify(&self.body.signing_digest(), &self.signature))
    }

    /// The `scpi://` text form.
    pub fn encode_text(&self) -> String {
        text::encode(self)
    }

    /// The `scpc:` compact form.
    pub fn encode_compact(&self) -> String {
        let bin = compact::encode(self);
        let mut s = String::with_capacity(COMPACT_PREFIX.len() + bin.len() * 4 / 3 + 4);
        s.push_str(COMPACT_PREFIX);
        base64::Engine::encode_string(&B64, bin, &mut s);
        s
    }

    /// The compact binary form without the text prefix (what a binary QR
    /// code or NFC tag could carry).
    pub fn encode_compact_bytes(&self) -> Vec<u8> {
        compact::encode(self)
    }

    /// Decodes the compact binary form (size and structure checks included).
    pub fn decode_compact_bytes(bytes: &[u8]) -> Result<Token, TokenError> {
        if bytes.len() > limits::MAX_INPUT {
            return Err(TokenError::TooLarge { len: bytes.len(), max: limits::MAX_INPUT });
        }
        let token = compact::decode(bytes)?;
        validate::check_structure(&token.body)?;
        Ok(token)
    }
}

/// base64url without padding, the alphabet of every encoded field.
pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Decodes a token in either encoding and checks its size, encoding and
/// structure (version, limits). Whitespace anywhere in the input (chat line
/// breaks, indentation) is ignored, and the prefix is case-insensitive.
///
/// This does **not** check type, expiry or signature: use
/// [`Invitation::parse`], [`Rsvp::parse`] or [`validate_standalone`].
pub fn decode(input: &str) -> Result<Token, TokenError> {
    // Size first, on the raw input, before any allocation proportional to it.
    if input.len() > limits::MAX_INPUT * 2 {
        return Err(TokenError::TooLarge { len: input.len(), max: limits::MAX_INPUT });
    }
    let cleaned: String = input.chars().filter(|c| !c.is_whitespace()).collect();
    if cleaned.len() > limits::MAX_INPUT {
        return Err(TokenError::TooLarge { len: cleaned.len(), max: limits::MAX_INPUT });
    }
    let token = if let Some(rest) = strip_prefix_ci(&cleaned, TEXT_PREFIX) {
        text::decode(rest)?
    } else if let Some(rest) = strip_prefix_ci(&cleaned, COMPACT_PREFIX) {
        let bytes = base64::Engine::decode(&B64, rest).map_err(|_| TokenError::BadBase64)?;
        compact::decode(&bytes)?
    } else {
        return Err(TokenError::UnknownPrefix);
    };
    validate::check_structure(&token.body)?;
    Ok(token)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

mod b64_key {
    use super::B64;
    use crate::identity::PublicKey;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &PublicKey, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(k.0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        let s = String::deserialize(d)?;
        let v = B64.decode(s.as_bytes()).map_err(|_| serde::de::Error::custom("public_key is not base64url"))?;
        let arr: [u8; 32] = v.try_into().map_err(|_| serde::de::Error::custom("public_key must be 32 bytes"))?;
        Ok(PublicKey(arr))
    }
}

/// Parameters for minting an invitation. `Default` gives a single-use,
/// unidirectional invitation valid for one day.
#[derive(Debug, Clone)]
pub struct InvitationParams {
    /// Candidates, most preferred first.
    pub candidates: Vec<Candidate>,
    /// Lifetime in seconds.
    pub lifetime_secs: u64,
    /// Connection mode.
    pub mode: ConnectionMode,
    /// Optional network id.
    pub network_id: Option<String>,
    /// Capabilities to advertise.
    pub capabilities: Vec<String>,
    /// Relay hints.
    pub relay: Vec<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// How our NAT behaves, if we could tell.
    pub nat: Option<NatInfo>,
}

impl Default for InvitationParams {
    fn default() -> Self {
        Self {
            candidates: Vec::new(),
            lifetime_secs: 24 * 3600,
            mode: ConnectionMode::default(),
            network_id: None,
            capabilities: default_capabilities(),
            relay: Vec::new(),
            metadata: BTreeMap::new(),
            nat: None,
        }
    }
}

/// The capabilities this build has.
pub fn default_capabilities() -> Vec<String> {
    ["ice", "rsvp", "noise-ik", "datagram", "stream"].iter().map(|s| (*s).to_owned()).collect()
}

/// The ICE ufrag derived from a token id: the first 6 id bytes in the
/// token format's credential alphabet (8 characters, 48 bits; RFC 8445 §5.3 asks for at least 24, and 48 keep
/// a thousand invitees on one invitation clear of collisions). The ufrag is
/// sent in clear in every check, so deriving it from the (non-secret) id
/// costs nothing, and the compact form leaves it out.
pub fn derived_ufrag(version: &str, id: &TokenId) -> String {
    credential_encode(version, &id.0[..6])
}

/// The invitee's ICE password: the first 16 bytes of
/// HMAC-SHA256(key = inviter's pwd, invitee's ufrag) (docs/DESIGN.md §2), in
/// the invitation's credential alphabet (its `version`). The inviter
/// learns the invitee's ufrag from the USERNAME of its first check and
/// derives the same password, so it can check back towards an invitee it has
/// never heard of.
pub fn derive_invitee_pwd(version: &str, inviter_pwd: &str, invitee_ufrag: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac =
        <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(inviter_pwd.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(invitee_ufrag.as_bytes());
    credential_encode(version, &mac.finalize().into_bytes()[..16])
}

/// The tie-breaker derived from a token id (first 8 bytes of
/// SHA-256("convoke tie-breaker" ‖ id)). The id is 128 random bits, so this
/// is as random as a fresh draw, and the compact form leaves it out.
pub fn derived_tie_breaker(id: &TokenId) -> u64 {
    let d = Sha256::new().chain_update(b"convoke tie-breaker").chain_update(id.0).finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

fn random_pwd<R: CryptoRng + ?Sized>(rng: &mut R) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    credential_encode(VERSION, &b)
}

fn party(identity: &Identity, capabilities: Vec<String>) -> Party {
    Party { peer_id: identity.peer_id().to_string(), public_key: identity.public_key(), capabilities }
}

impl Token {
    /// Mints a signed invitation at time `now` (unix seconds).
    pub fn new_invitation<R: CryptoRng + ?Sized>(
        identity: &Identity,
        params: InvitationParams,
        now: u64,
        rng: &mut R,
    ) -> Token {
        let token_id = TokenId::random(rng);
        let body = TokenBody {
            version: VERSION.to_owned(),
            token_type: TokenType::Invitation,
            token_id,
            in_reply_to: None,
            created_at: now,
            expires_at: now.saturating_add(params.lifetime_secs),
            network_id: params.network_id,
            connection_mode: params.mode,
            initiator: Some(party(identity, params.capabilities)),
            responder: None,
            connection_info: ConnectionInfo {
                ice_candidates: params.candidates,
                ufrag: derived_ufrag(VERSION, &token_id),
                pwd: random_pwd(rng),
                ice_role: IceRole::Controlling,
                ice_tie_breaker: derived_tie_breaker(&token_id),
                nat: params.nat,
            },
            crypto: Crypto::default(),
            relay: params.relay,
            metadata: params.metadata,
        };
        Token::sign(body, identity)
    }

    /// Builds the responder's RSVP to `invitation` at time `now` (our NAT's
    /// classification in `nat`, if known): role
    /// controlled, `in_reply_to` the invitation, valid for
    /// [`DEFAULT_RSVP_LIFETIME_SECS`], signed by `identity`.
    ///
    /// `token_id` fixes the invitee's ICE credentials: ufrag
    /// [`derived_ufrag`], password [`derive_invitee_pwd`] and tie-breaker
    /// [`derived_tie_breaker`]. The connectivity engine picks the id when it
    /// imports the invitation, so the checks it sends before any RSVP exists
    /// already use the credentials the RSVP will carry.
    pub fn new_rsvp(
        invitation: &Invitation,
        identity: &Identity,
        token_id: TokenId,
        candidates: Vec<Candidate>,
        nat: Option<NatInfo>,
        now: u64,
    ) -> Token {
        Self::new_rsvp_relayed(invitation, identity, token_id, candidates, nat, Vec::new(), now)
    }

    /// [`Token::new_rsvp`] carrying relay hints: the circuits we hold for
    /// the inviter to bind (see [`crate::relay::client::Hint`]).
    pub fn new_rsvp_relayed(
        invitation: &Invitation,
        identity: &Identity,
        token_id: TokenId,
        candidates: Vec<Candidate>,
        nat: Option<NatInfo>,
        relay: Vec<String>,
        now: u64,
    ) -> Token {
        let inv = &invitation.token().body;
        // The invitation's format: its author derives our password the
        // same way, and reads the RSVP.
        let version = inv.version.clone();
        let ufrag = derived_ufrag(&version, &token_id);
        // An RSVP is never dated before its invitation, even if our clock
        // is a little behind the inviter's.
        let created_at = now.max(inv.created_at);
        let body = TokenBody {
            version: version.clone(),
            token_type: TokenType::Rsvp,
            token_id,
            in_reply_to: Some(inv.token_id),
            created_at,
            expires_at: created_at.saturating_add(DEFAULT_RSVP_LIFETIME_SECS),
            network_id: inv.network_id.clone(),
            connection_mode: inv.connection_mode.clone(),
            initiator: None,
            responder: Some(party(identity, default_capabilities())),
            connection_info: ConnectionInfo {
                ice_candidates: candidates,
                pwd: derive_invitee_pwd(&version, &inv.connection_info.pwd, &ufrag),
                ufrag,
                ice_role: IceRole::Controlled,
                ice_tie_breaker: derived_tie_breaker(&token_id),
                nat,
            },
            crypto: Crypto::default(),
            relay,
            metadata: BTreeMap::new(),
        };
        Token::sign(body, identity)
    }
}

#[cfg(test)]
pub(crate) mod tests;
