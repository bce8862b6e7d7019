//! The compact binary encoding (`scpc:` + base64url), for QR codes, SMS and
//! voice.
//!
//! Same content and signature as the JSON form; values that can be derived
//! are left out and flagged, so any token round-trips exactly:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format tag `0x12` (v1.2; `0x11` for v1.1, whose derived and packed credentials are base64url) |
//! | 2 | flags, big-endian (see `F_*`) |
//! | 16 | token id |
//! | 16 | `in_reply_to` if `F_REPLY_TO` |
//! | varint | `created_at` |
//! | varint | `expires_at − created_at` (wrapping) |
//! | varint | `rsvp_timeout_seconds` |
//! | str | network id if `F_NETWORK` |
//! | party | initiator if `F_INITIATOR`, responder if `F_RESPONDER` |
//! | str | ufrag if `F_UFRAG` (else derived from the token id) |
//! | 16 / str | password: 16 raw bytes, or a string if `F_PWD` |
//! | 8 | tie-breaker if `F_TIE` (else derived from the token id) |
//! | 1 + n·(1+4/16+2[+4][+4]) | candidates: header (kind, family, explicit priority, scope), address, port |
//! | str | crypto suite if `F_SUITE` (else the default) |
//! | list | relay hints if `F_RELAY` |
//! | list | metadata pairs if `F_METADATA` |
//! | 1 [+ varint] | NAT classification if `F_NAT`: bits 0–1 mapping (none, independent, dependent), bits 2–3 ports (unknown, preserving, sequential, random), then the zigzag delta if sequential |
//! | 64 | signature |
//!
//! A party is a flags byte, the 32-byte key, the peer id only if it is not
//! the one the key gives, and capabilities as a bit mask over
//! [`KNOWN_CAPABILITIES`](super::KNOWN_CAPABILITIES) (or a list if they are
//! not in that canonical form). Strings are a varint length and UTF-8.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use super::{
    Candidate, CandidateKind, ConnectionInfo, ConnectionMode, Crypto, DEFAULT_SUITE, IceRole, InitialMode,
    KNOWN_CAPABILITIES, NatInfo, NatMapping, Party, PortAllocation, Token, TokenBody, TokenError, TokenId, TokenType,
    VERSION, VERSION_1_1, credential_decode, credential_encode, derived_local_pref, derived_tie_breaker, derived_ufrag,
    limits,
};
use crate::identity::PublicKey;

/// Format 1.2 (ICE credentials in standard base64).
const TAG_V1_2: u8 = 0x12;
/// Format 1.1 (ICE credentials in base64url), still read and written.
const TAG_V1_1: u8 = 0x11;
/// Tag for a body whose version string is neither 1.1 nor 1.2 (only so that
/// encoding is total; decoding refuses it as an unknown version).
const TAG_OTHER_VERSION: u8 = 0xFF;

const F_RSVP: u16 = 1 << 0;
const F_REPLY_TO: u16 = 1 << 1;
const F_NETWORK: u16 = 1 << 2;
const F_REUSABLE: u16 = 1 << 3;
const F_RSVP_SUPPORTED: u16 = 1 << 4;
const F_BIDIRECTIONAL: u16 = 1 << 5;
const F_CONTROLLED: u16 = 1 << 6;
const F_INITIATOR: u16 = 1 << 7;
const F_RESPONDER: u16 = 1 << 8;
const F_UFRAG: u16 = 1 << 9;
const F_PWD: u16 = 1 << 10;
const F_TIE: u16 = 1 << 11;
const F_SUITE: u16 = 1 << 12;
const F_RELAY: u16 = 1 << 13;
const F_METADATA: u16 = 1 << 14;
/// The last of the 16 flag bits: a later field needs a new format tag.
const F_NAT: u16 = 1 << 15;

const P_PEER_ID: u8 = 1 << 0;
const P_CAPS_LIST: u8 = 1 << 1;

const C_V6: u8 = 1 << 2;
const C_PRIORITY: u8 = 1 << 3;
const C_SCOPE: u8 = 1 << 4;

pub(super) fn encode(token: &Token) -> Vec<u8> {
    let b = &token.body;
    let ci = &b.connection_info;
    let raw_pwd = raw_pwd(&b.version, &ci.pwd);
    let mut flags = 0u16;
    let mut set = |cond: bool, f: u16| {
        if cond {
            flags |= f;
        }
    };
    set(b.token_type == TokenType::Rsvp, F_RSVP);
    set(b.in_reply_to.is_some(), F_REPLY_TO);
    set(b.network_id.is_some(), F_NETWORK);
    set(b.connection_mode.reusable, F_REUSABLE);
    set(b.connection_mode.rsvp_supported, F_RSVP_SUPPORTED);
    set(b.connection_mode.initial == InitialMode::Bidirectional, F_BIDIRECTIONAL);
    set(ci.ice_role == IceRole::Controlled, F_CONTROLLED);
    set(b.initiator.is_some(), F_INITIATOR);
    set(b.responder.is_some(), F_RESPONDER);
    set(ci.ufrag != derived_ufrag(&b.version, &b.token_id), F_UFRAG);
    set(raw_pwd.is_none(), F_PWD);
    set(ci.ice_tie_breaker != derived_tie_breaker(&b.token_id), F_TIE);
    set(b.crypto.suite != DEFAULT_SUITE, F_SUITE);
    set(!b.relay.is_empty(), F_RELAY);
    set(!b.metadata.is_empty(), F_METADATA);
    set(ci.nat.is_some(), F_NAT);

    let mut out = Vec::with_capacity(192);
    if b.version == VERSION {
        out.push(TAG_V1_2);
    } else if b.version == VERSION_1_1 {
        out.push(TAG_V1_1);
    } else {
        out.push(TAG_OTHER_VERSION);
        put_str(&mut out, &b.version);
    }
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&b.token_id.0);
    if let Some(r) = &b.in_reply_to {
        out.extend_from_slice(&r.0);
    }
    put_varint(&mut out, b.created_at);
    put_varint(&mut out, b.expires_at.wrapping_sub(b.created_at));
    put_varint(&mut out, u64::from(b.connection_mode.rsvp_timeout_seconds));
    if let Some(n) = &b.network_id {
        put_str(&mut out, n);
    }
    for p in [&b.initiator, &b.responder].into_iter().flatten() {
        put_party(&mut out, p);
    }
    if flags & F_UFRAG != 0 {
        put_str(&mut out, &ci.ufrag);
    }
    match raw_pwd {
        Some(raw) => out.extend_from_slice(&raw),
        None => put_str(&mut out, &ci.pwd),
    }
    if flags & F_TIE != 0 {
        out.extend_from_slice(&ci.ice_tie_breaker.to_be_bytes());
    }
    // Counts are bounded by the structure check on decode; a longer list
    // built in memory is cut here rather than wrapping the count.
    let cands = &ci.ice_candidates[..ci.ice_candidates.len().min(255)];
    out.push(cands.len() as u8);
    for (i, c) in cands.iter().enumerate() {
        put_candidate(&mut out, i, c);
    }
    if flags & F_SUITE != 0 {
        put_str(&mut out, &b.crypto.suite);
    }
    if flags & F_RELAY != 0 {
        put_varint(&mut out, b.relay.len() as u64);
        for r in &b.relay {
            put_str(&mut out, r);
        }
    }
    if flags & F_METADATA != 0 {
        put_varint(&mut out, b.metadata.len() as u64);
        for (k, v) in &b.metadata {
            put_str(&mut out, k);
            put_str(&mut out, v);
        }
    }
    if let Some(nat) = &ci.nat {
        put_nat(&mut out, nat);
    }
    out.extend_from_slice(&token.signature);
    out
}

fn put_nat(out: &mut Vec<u8>, nat: &NatInfo) {
    let mapping = match nat.mapping {
        NatMapping::None => 0,
        NatMapping::Independent => 1,
        NatMapping::Dependent => 2,
    };
    let ports = match nat.ports {
        None => 0,
        Some(PortAllocation::Preserving) => 1,
        Some(PortAllocation::Sequential) => 2,
        Some(PortAllocation::Random) => 3,
    };
    out.push(mapping | (ports << 2));
    if nat.ports == Some(PortAllocation::Sequential) {
        let d = nat.delta.unwrap_or(0);
        // Zigzag: small deltas of either sign stay one byte.
        put_varint(out, u64::from(((d << 1) ^ (d >> 31)) as u32));
    }
}

fn read_nat(r: &mut Reader<'_>) -> Result<NatInfo, TokenError> {
    let head = r.u8("nat")?;
    let mapping = match head & 0b11 {
        0 => NatMapping::None,
        1 => NatMapping::Independent,
        2 => NatMapping::Dependent,
        _ => return Err(TokenError::Malformed("nat: unknown mapping".into())),
    };
    if head >> 4 != 0 {
        return Err(TokenError::Malformed("nat: unknown flags set".into()));
    }
    let ports = match (head >> 2) & 0b11 {
        0 => None,
        1 => Some(PortAllocation::Preserving),
        2 => Some(PortAllocation::Sequential),
        _ => Some(PortAllocation::Random),
    };
    let delta = if ports == Some(PortAllocation::Sequential) {
        let z = u32::try_from(r.varint("nat.delta")?)
            .map_err(|_| TokenError::Malformed("nat.delta does not fit 32 bits".into()))?;
        Some(((z >> 1) as i32) ^ -((z & 1) as i32))
    } else {
        None
    };
    Ok(NatInfo { delta, mapping, ports })
}

/// The 16 raw bytes behind a password, if it is exactly their canonical
/// form in the token format's credential alphabet (as minted passwords are).
fn raw_pwd(version: &str, pwd: &str) -> Option<[u8; 16]> {
    credential_decode(version, pwd)?.try_into().ok()
}

fn kind_code(k: CandidateKind) -> u8 {
    match k {
        CandidateKind::Host => 0,
        CandidateKind::Srflx => 1,
        CandidateKind::Prflx => 2,
        CandidateKind::Relay => 3,
    }
}

fn put_candidate(out: &mut Vec<u8>, index: usize, c: &Candidate) {
    let derived = Candidate::standard_priority(c.kind, derived_local_pref(index));
    let mut head = kind_code(c.kind);
    let scope = match c.address {
        SocketAddr::V6(a) if a.scope_id() != 0 => Some(a.scope_id()),
        _ => None,
    };
    if c.address.is_ipv6() {
        head |= C_V6;
    }
    if c.priority != derived {
        head |= C_PRIORITY;
    }
    if scope.is_some() {
        head |= C_SCOPE;
    }
    out.push(head);
    match c.address.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&c.address.port().to_be_bytes());
    if c.priority != derived {
        out.extend_from_slice(&c.priority.to_be_bytes());
    }
    if let Some(s) = scope {
        out.extend_from_slice(&s.to_be_bytes());
    }
}

fn caps_mask(caps: &[String]) -> Option<u64> {
    let mut mask = 0u64;
    let mut last = None;
    for c in caps {
        let i = KNOWN_CAPABILITIES.iter().position(|k| k == c)?;
        // Canonical only if strictly increasing in the known order.
        if last.is_some_and(|l| i <= l) {
            return None;
        }
        last = Some(i);
        mask |= 1 << i;
    }
    Some(mask)
}

fn put_party(out: &mut Vec<u8>, p: &Party) {
    let mut flags = 0u8;
    let explicit_id = p.peer_id != p.public_key.peer_id().to_string();
    let mask = caps_mask(&p.capabilities);
    if explicit_id {
        flags |= P_PEER_ID;
    }
    if mask.is_none() {
        flags |= P_CAPS_LIST;
    }
    out.push(flags);
    out.extend_from_slice(&p.public_key.0);
    if explicit_id {
        put_str(out, &p.peer_id);
    }
    match mask {
        Some(m) => put_varint(out, m),
        None => {
            put_varint(out, p.capabilities.len() as u64);
            for c in &p.capabilities {
                put_str(out, c);
            }
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A bounds-checked reader: every read names its field, so a short input
/// says where it was cut.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], TokenError> {
        if self.buf.len() < n {
            return Err(TokenError::Truncated { field });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], TokenError> {
        Ok(self.take(N, field)?.try_into().expect("length checked"))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, TokenError> {
        Ok(self.take(1, field)?[0])
    }

    fn varint(&mut self, field: &'static str) -> Result<u64, TokenError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8(field)?;
            // The tenth byte holds bit 63 only.
            if shift == 63 && b > 1 {
                break;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                // One value, one encoding: a final zero byte after others
                // would be a second spelling of a shorter varint.
                if shift > 0 && b == 0 {
                    return Err(TokenError::Malformed(format!("{field}: varint not in its shortest form")));
                }
                return Ok(v);
            }
        }
        Err(TokenError::Malformed(format!("{field}: varint longer than 64 bits")))
    }

    /// A count, refused at once if above `max` (so no loop or allocation is
    /// driven by an attacker's number).
    fn count(&mut self, field: &'static str, max: usize) -> Result<usize, TokenError> {
        let n = self.varint(field)?;
        if n > max as u64 {
            return Err(TokenError::LimitExceeded { field, len: usize::try_from(n).unwrap_or(usize::MAX), max });
        }
        Ok(n as usize)
    }

    fn string(&mut self, field: &'static str, max: usize) -> Result<String, TokenError> {
        let n = self.count(field, max)?;
        let bytes = self.take(n, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| TokenError::Malformed(format!("{field} is not UTF-8")))
    }
}

pub(super) fn decode(bytes: &[u8]) -> Result<Token, TokenError> {
    let mut r = Reader { buf: bytes };
    let version = match r.u8("format tag")? {
        TAG_V1_2 => VERSION.to_owned(),
        TAG_V1_1 => VERSION_1_1.to_owned(),
        TAG_OTHER_VERSION => return Err(TokenError::UnknownVersion(r.string("version", 16)?)),
        other => {
            return Err(TokenError::UnknownVersion(format!("compact tag {other:#04x}")));
        }
    };
    // Every one of the 16 bits has a meaning, so no flag is unknown.
    let flags = u16::from_be_bytes(r.array("flags")?);
    let has = |f: u16| flags & f != 0;
    let token_id = TokenId(r.array("token_id")?);
    let in_reply_to = if has(F_REPLY_TO) { Some(TokenId(r.array("in_reply_to")?)) } else { None };
    let created_at = r.varint("created_at")?;
    let expires_at = created_at.wrapping_add(r.varint("expires_at")?);
    let rsvp_timeout_seconds = u32::try_from(r.varint("rsvp_timeout_seconds")?)
        .map_err(|_| TokenError::Malformed("rsvp_timeout_seconds does not fit 32 bits".into()))?;
    let network_id = if has(F_NETWORK) { Some(r.string("network_id", limits::MAX_NETWORK_ID)?) } else { None };
    let initiator = if has(F_INITIATOR) { Some(read_party(&mut r, "initiator")?) } else { None };
    let responder = if has(F_RESPONDER) { Some(read_party(&mut r, "responder")?) } else { None };
    let ufrag =
        if has(F_UFRAG) { r.string("ufrag", *limits::UFRAG_LEN.end())? } else { derived_ufrag(&version, &token_id) };
    let pwd = if has(F_PWD) {
        r.string("pwd", *limits::PWD_LEN.end())?
    } else {
        credential_encode(&version, &r.array::<16>("pwd")?)
    };
    let ice_tie_breaker =
        if has(F_TIE) { u64::from_be_bytes(r.array("ice_tie_breaker")?) } else { derived_tie_breaker(&token_id) };
    let n = usize::from(r.u8("ice_candidates")?);
    if n > limits::MAX_CANDIDATES {
        return Err(TokenError::LimitExceeded { field: "ice_candidates", len: n, max: limits::MAX_CANDIDATES });
    }
    let mut ice_candidates = Vec::with_capacity(n);
    for i in 0..n {
        ice_candidates.push(read_candidate(&mut r, i)?);
    }
    let suite =
        if has(F_SUITE) { r.string("crypto.suite", limits::MAX_SHORT_STRING)? } else { DEFAULT_SUITE.to_owned() };
    let mut relay = Vec::new();
    if has(F_RELAY) {
        for _ in 0..r.count("relay", limits::MAX_RELAYS)? {
            relay.push(r.string("relay", limits::MAX_RELAY)?);
        }
    }
    let mut metadata = BTreeMap::new();
    if has(F_METADATA) {
        for _ in 0..r.count("metadata", limits::MAX_METADATA)? {
            let k = r.string("metadata key", limits::MAX_SHORT_STRING)?;
            let v = r.string("metadata value", limits::MAX_METADATA_VALUE)?;
            if metadata.insert(k, v).is_some() {
                return Err(TokenError::Malformed("metadata has a duplicate key".into()));
            }
        }
    }
    let nat = if has(F_NAT) { Some(read_nat(&mut r)?) } else { None };
    let signature = r.array::<64>("signature")?;
    if !r.buf.is_empty() {
        return Err(TokenError::TrailingBytes(r.buf.len()));
    }
    let body = TokenBody {
        version,
        token_type: if has(F_RSVP) { TokenType::Rsvp } else { TokenType::Invitation },
        token_id,
        in_reply_to,
        created_at,
        expires_at,
        network_id,
        connection_mode: ConnectionMode {
            initial: if has(F_BIDIRECTIONAL) { InitialMode::Bidirectional } else { InitialMode::Unidirectional },
            rsvp_supported: has(F_RSVP_SUPPORTED),
            rsvp_timeout_seconds,
            reusable: has(F_REUSABLE),
        },
        initiator,
        responder,
        connection_info: ConnectionInfo {
            ice_candidates,
            ufrag,
            pwd,
            ice_role: if has(F_CONTROLLED) { IceRole::Controlled } else { IceRole::Controlling },
            ice_tie_breaker,
            nat,
        },
        crypto: Crypto { suite },
        relay,
        metadata,
    };
    Ok(Token { body, signature })
}

fn read_party(r: &mut Reader<'_>, field: &'static str) -> Result<Party, TokenError> {
    let flags = r.u8(field)?;
    if flags & !(P_PEER_ID | P_CAPS_LIST) != 0 {
        return Err(TokenError::Malformed(format!("{field}: unknown flags set")));
    }
    let public_key = PublicKey(r.array(field)?);
    let peer_id = if flags & P_PEER_ID != 0 { r.string(field, 64)? } else { public_key.peer_id().to_string() };
    let capabilities = if flags & P_CAPS_LIST != 0 {
        let n = r.count("capabilities", limits::MAX_CAPABILITIES)?;
        let mut caps = Vec::with_capacity(n);
        for _ in 0..n {
            caps.push(r.string("capabilities", limits::MAX_SHORT_STRING)?);
        }
        caps
    } else {
        let mask = r.varint("capabilities")?;
        if mask >> KNOWN_CAPABILITIES.len() != 0 {
            return Err(TokenError::Malformed("unknown capability bits set".into()));
        }
        KNOWN_CAPABILITIES
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, c)| (*c).to_owned())
            .collect()
    };
    Ok(Party { peer_id, public_key, capabilities })
}

fn read_candidate(r: &mut Reader<'_>, index: usize) -> Result<Candidate, TokenError> {
    const FIELD: &str = "ice_candidates";
    let head = r.u8(FIELD)?;
    if head & !(0b11 | C_V6 | C_PRIORITY | C_SCOPE) != 0 {
        return Err(TokenError::Malformed("candidate: unknown flags set".into()));
    }
    let kind = match head & 0b11 {
        0 => CandidateKind::Host,
        1 => CandidateKind::Srflx,
        2 => CandidateKind::Prflx,
        _ => CandidateKind::Relay,
    };
    let ip = if head & C_V6 != 0 {
        IpAddr::V6(Ipv6Addr::from(r.array::<16>(FIELD)?))
    } else {
        IpAddr::V4(Ipv4Addr::from(r.array::<4>(FIELD)?))
    };
    let port = u16::from_be_bytes(r.array(FIELD)?);
    let priority = if head & C_PRIORITY != 0 {
        u32::from_be_bytes(r.array(FIELD)?)
    } else {
        Candidate::standard_priority(kind, derived_local_pref(index))
    };
    let address = match ip {
        IpAddr::V6(v6) if head & C_SCOPE != 0 => {
            let scope = u32::from_be_bytes(r.array(FIELD)?);
            SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope))
        }
        IpAddr::V4(_) if head & C_SCOPE != 0 => {
            return Err(TokenError::Malformed("candidate: scope id on an IPv4 address".into()));
        }
        ip => SocketAddr::new(ip, port),
    };
    Ok(Candidate { kind, address, priority })
}

#[cfg(test)]
mod varint_tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<u64, TokenError> {
        Reader { buf: bytes }.varint("n")
    }

    #[test]
    fn a_varint_has_one_spelling_and_64_bits() {
        assert_eq!(read(&[0x05]), Ok(5));
        assert_eq!(read(&[0x80, 0x01]), Ok(128));
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(read(&max), Ok(u64::MAX));
        // 5 spelled in two bytes, and 0 in two.
        for longer in [&[0x85, 0x00][..], &[0x80, 0x00], &[0xff, 0xff, 0x00]] {
            let e = read(longer).expect_err("not minimal");
            assert!(e.to_string().contains("shortest form"), "{e}");
        }
        // Bits past 64 in the tenth byte.
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(read(&over).expect_err("too long").to_string().contains("64 bits"));
    }
}
