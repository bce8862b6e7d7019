//! STUN messages (RFC 8489) as ICE (RFC 8445) and a STUN server use them.
//!
//! [`Message::parse`] checks the header and every attribute's bounds without
//! copying, and keeps what ICE needs (USERNAME, PRIORITY, USE-CANDIDATE,
//! ICE-CONTROLLING/CONTROLLED, XOR-MAPPED-ADDRESS, ERROR-CODE), plus where
//! MESSAGE-INTEGRITY sits so [`Message::verify_integrity`] can check it once
//! the caller knows the key. [`MessageBuilder`] writes messages with
//! MESSAGE-INTEGRITY (HMAC-SHA1, short-term credentials) and FINGERPRINT.
//!
//! Nothing here allocates while parsing; malformed input is an error, never
//! a panic (a fuzz target drives [`Message::parse`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// The fixed magic cookie of RFC 5389 and later.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of the STUN header.
pub const HEADER_LEN: usize = 20;
/// The Binding method.
pub const BINDING: u16 = 0x001;
/// XOR value for FINGERPRINT ("STUN").
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Longest USERNAME accepted (RFC 8489 §14.3: less than 509 bytes).
pub const MAX_USERNAME: usize = 508;

/// Attribute types used here (RFC 8489 §18.3, RFC 8445 §16.1).
pub mod attr {
    /// MAPPED-ADDRESS (legacy servers).
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (HMAC-SHA1).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// PRIORITY (ICE).
    pub const PRIORITY: u16 = 0x0024;
    /// USE-CANDIDATE (ICE).
    pub const USE_CANDIDATE: u16 = 0x0025;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT.
    pub const FINGERPRINT: u16 = 0x8028;
    /// ICE-CONTROLLED.
    pub const ICE_CONTROLLED: u16 = 0x8029;
    /// ICE-CONTROLLING.
    pub const ICE_CONTROLLING: u16 = 0x802A;
    /// CONVOKE-PEER: the sender's Ed25519 public key (32 bytes), a claim
    /// that lets an inviter notice crossing invitations. Comprehension-
    /// optional, so foreign agents ignore it.
    pub const CONVOKE_PEER: u16 = 0xC0C7;
}

/// A 96-bit transaction id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct TransactionId(pub [u8; 12]);

/// Message class (RFC 8489 §5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Class {
    /// A request.
    Request,
    /// An indication (no response).
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0x000,
            Class::Indication => 0x010,
            Class::Success => 0x100,
            Class::Error => 0x110,
        }
    }
}

/// Why a datagram is not an acceptable STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Shorter than a header, or the first two bits are not zero, or the
    /// magic cookie is wrong: not STUN at all.
    #[error("not a STUN message")]
    NotStun,
    /// The header's length does not match the datagram, or is not a
    /// multiple of 4.
    #[error("STUN length field does not match the datagram")]
    BadLength,
    /// An attribute runs past the end of the message.
    #[error("STUN attribute overruns the message")]
    AttributeOverrun,
    /// An attribute has a value of the wrong size or form.
    #[error("malformed STUN attribute {0:#06x}")]
    BadAttribute(u16),
    /// FINGERPRINT is present and wrong, or not last.
    #[error("STUN fingerprint mismatch")]
    BadFingerprint,
}

/// Whether a datagram looks like STUN (RFC 7983 demultiplexing: first byte
/// 0–3, plus the magic cookie), cheaply, before parsing.
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[0] < 4 && datagram[4..8] == MAGIC_COOKIE.to_be_bytes()
}

/// A parsed STUN message, borrowing the datagram.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    raw: &'a [u8],
    /// Class.
    pub class: Class,
    /// Method (12 bits).
    pub method: u16,
    /// Transaction id.
    pub transaction_id: TransactionId,
    /// USERNAME, if present.
    pub username: Option<&'a str>,
    /// PRIORITY, if present.
    pub priority: Option<u32>,
    /// Whether USE-CANDIDATE is present.
    pub use_candidate: bool,
    /// ICE-CONTROLLING tie-breaker, if present.
    pub ice_controlling: Option<u64>,
    /// ICE-CONTROLLED tie-breaker, if present.
    pub ice_controlled: Option<u64>,
    /// XOR-MAPPED-ADDRESS (or, failing that, MAPPED-ADDRESS), if present.
    pub mapped_address: Option<SocketAddr>,
    /// ERROR-CODE as a number (e.g. 487), if present.
    pub error_code: Option<u16>,
    /// CONVOKE-PEER: the key the sender claims, if present.
    pub peer: Option<[u8; 32]>,
    /// Whether a FINGERPRINT was present (it was verified if so).
    pub has_fingerprint: bool,
    /// Unknown comprehension-required attribute types (first few).
    pub unknown_required: Option<u16>,
    /// Offset of the MESSAGE-INTEGRITY attribute header, if present.
    integrity_at: Option<usize>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

impl<'a> Message<'a> {
    /// Parses and checks a datagram. FINGERPRINT, if present, is verified
    /// here; MESSAGE-INTEGRITY needs the key: see [`Self::verify_integrity`].
    pub fn parse(raw: &'a [u8]) -> Result<Message<'a>, StunError> {
        if !is_stun(raw) {
            return Err(StunError::NotStun);
        }
        let msg_type = be16(raw, 0);
        let len = usize::from(be16(raw, 2));
        if len % 4 != 0 || HEADER_LEN + len != raw.len() {
            return Err(StunError::BadLength);
        }
        let class = match ((msg_type >> 4) & 1) | ((msg_type >> 7) & 2) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };
        let method = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80);
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&raw[8..20]);
        let mut m = Message {
            raw,
            class,
            method,
            transaction_id: TransactionId(tid),
            username: None,
            priority: None,
            use_candidate: false,
            ice_controlling: None,
            ice_controlled: None,
            mapped_address: None,
            error_code: None,
            peer: None,
            has_fingerprint: false,
            unknown_required: None,
            integrity_at: None,
        };
        let mut xor_mapped = None;
        let mut plain_mapped = None;
        let mut at = HEADER_LEN;
        while at < raw.len() {
            if raw.len() - at < 4 {
                return Err(StunError::AttributeOverrun);
            }
            let kind = be16(raw, at);
            let vlen = usize::from(be16(raw, at + 2));
            let start = at + 4;
            let padded = vlen.div_ceil(4) * 4;
            if raw.len() - start < padded {
                return Err(StunError::AttributeOverrun);
            }
            let value = &raw[start..start + vlen];
            if kind == attr::FINGERPRINT {
                if vlen != 4 || start + 4 != raw.len() {
                    return Err(StunError::BadFingerprint);
                }
                let want = crc32fast::hash(&raw[..at]) ^ FINGERPRINT_XOR;
                if value != want.to_be_bytes() {
                    return Err(StunError::BadFingerprint);
                }
                m.has_fingerprint = true;
            } else if m.integrity_at.is_some() {
                // RFC 8489 §14.5: attributes after MESSAGE-INTEGRITY other
                // than FINGERPRINT are ignored.
            } else {
                let bad = || StunError::BadAttribute(kind);
                match kind {
                    attr::USERNAME => {
                        if vlen > MAX_USERNAME {
                            return Err(bad());
                        }
                        m.username.get_or_insert(std::str::from_utf8(value).map_err(|_| bad())?);
                    }
                    attr::MESSAGE_INTEGRITY => {
                        if vlen != 20 {
                            return Err(bad());
                        }
                        m.integrity_at = Some(at);
                    }
                    attr::PRIORITY => {
                        let v: [u8; 4] = value.try_into().map_err(|_| bad())?;
                        m.priority.get_or_insert(u32::from_be_bytes(v));
                    }
                    attr::USE_CANDIDATE => {
                        if vlen != 0 {
                            return Err(bad());
                        }
                        m.use_candidate = true;
                    }
                    attr::ICE_CONTROLLING | attr::ICE_CONTROLLED => {
                        let v: [u8; 8] = value.try_into().map_err(|_| bad())?;
                        let slot =
                            if kind == attr::ICE_CONTROLLING { &mut m.ice_controlling } else { &mut m.ice_controlled };
                        slot.get_or_insert(u64::from_be_bytes(v));
                    }
                    attr::CONVOKE_PEER => {
                        let v: [u8; 32] = value.try_into().map_err(|_| bad())?;
                        m.peer.get_or_insert(v);
                    }
                    attr::XOR_MAPPED_ADDRESS if xor_mapped.is_none() => {
                        xor_mapped = Some(decode_address(value, Some(&tid)).ok_or_else(bad)?);
                    }
                    attr::MAPPED_ADDRESS if plain_mapped.is_none() => {
                        plain_mapped = Some(decode_address(value, None).ok_or_else(bad)?);
                    }
                    // Repeats: only the first occurrence counts (RFC 8489 §14).
                    attr::XOR_MAPPED_ADDRESS | attr::MAPPED_ADDRESS => {}
                    attr::ERROR_CODE => {
                        if vlen < 4 {
                            return Err(bad());
                        }
                        let class = u16::from(value[2] & 0x07);
                        let number = u16::from(value[3]);
                        if !(3..=6).contains(&class) || number > 99 {
                            return Err(bad());
                        }
                        m.error_code.get_or_insert(class * 100 + number);
                    }
                    k if k < 0x8000 && m.unknown_required.is_none() && k != attr::SOFTWARE => {
                        m.unknown_required = Some(k);
                    }
                    _ => {}
                }
            }
            at = start + padded;
        }
        m.mapped_address = xor_mapped.or(plain_mapped);
        Ok(m)
    }

    /// Whether MESSAGE-INTEGRITY is present.
    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1) with the short-term credential
    /// `key` (the ICE password). False if absent or wrong. Constant time.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        let mut mac = hmac_sha1(key);
        // The length field covers up to and including MESSAGE-INTEGRITY.
        let len = u16::try_from(at + 24 - HEADER_LEN).unwrap_or(u16::MAX);
        mac.update(&self.raw[..2]);
        mac.update(&len.to_be_bytes());
        mac.update(&self.raw[4..at]);
        mac.verify_slice(&self.raw[at + 4..at + 24]).is_ok()
    }

    /// The whole datagram.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
}

fn hmac_sha1(key: &[u8]) -> Hmac<Sha1> {
    <Hmac<Sha1> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn decode_address(v: &[u8], xor_tid: Option<&[u8; 12]>) -> Option<SocketAddr> {
    if v.len() < 4 || v[0] != 0 {
        return None;
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut port = be16(v, 2);
    if xor_tid.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    match (v[1], v.len()) {
        (0x01, 8) => {
            let mut ip = [v[4], v[5], v[6], v[7]];
            if xor_tid.is_some() {
                ip.iter_mut().zip(cookie).for_each(|(b, c)| *b ^= c);
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (0x02, 20) => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&v[4..20]);
            if let Some(tid) = xor_tid {
                ip.iter_mut().zip(cookie.iter().chain(tid.iter())).for_each(|(b, c)| *b ^= c);
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

/// Writes a STUN message.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    buf: Vec<u8>,
}

impl MessageBuilder {
    /// Starts a message.
    pub fn new(class: Class, method: u16, tid: TransactionId) -> Self {
        let mut buf = Vec::with_capacity(128);
        let m = method & 0x0FFF;
        let msg_type = (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | class.bits();
        buf.extend_from_slice(&msg_type.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid.0);
        Self { buf }
    }

    fn attribute(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = u16::try_from(value.len()).expect("attribute values here are small");
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = (4 - value.len() % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self
    }

    /// USERNAME (truncated to [`MAX_USERNAME`] bytes at a char boundary).
    pub fn username(&mut self, name: &str) -> &mut Self {
        let mut end = name.len().min(MAX_USERNAME);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        self.attribute(attr::USERNAME, &name.as_bytes()[..end])
    }

    /// PRIORITY.
    pub fn priority(&mut self, p: u32) -> &mut Self {
        self.attribute(attr::PRIORITY, &p.to_be_bytes())
    }

    /// USE-CANDIDATE.
    pub fn use_candidate(&mut self) -> &mut Self {
        self.attribute(attr::USE_CANDIDATE, &[])
    }

    /// ICE-CONTROLLING with the tie-breaker.
    pub fn ice_controlling(&mut self, tie_breaker: u64) -> &mut Self {
        self.attribute(attr::ICE_CONTROLLING, &tie_breaker.to_be_bytes())
    }

    /// ICE-CONTROLLED with the tie-breaker.
    pub fn ice_controlled(&mut self, tie_breaker: u64) -> &mut Self {
        self.attribute(attr::ICE_CONTROLLED, &tie_breaker.to_be_bytes())
    }

    /// SOFTWARE (comprehension-optional, so any server ignores it). Clients
    /// use it to pad a Binding request to at least the size of the answer.
    pub fn software(&mut self, text: &str) -> &mut Self {
        self.attribute(attr::SOFTWARE, &text.as_bytes()[..text.len().min(128)])
    }

    /// CONVOKE-PEER with the sender's public key.
    pub fn peer(&mut self, key: &[u8; 32]) -> &mut Self {
        self.attribute(attr::CONVOKE_PEER, key)
    }

    /// XOR-MAPPED-ADDRESS.
    pub fn xor_mapped_address(&mut self, addr: SocketAddr) -> &mut Self {
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let mut v = Vec::with_capacity(20);
        match addr.ip() {
            IpAddr::V4(ip) => {
                v.extend_from_slice(&[0, 0x01]);
                v.extend_from_slice(&port.to_be_bytes());
                v.extend(ip.octets().iter().zip(cookie).map(|(b, c)| b ^ c));
            }
            IpAddr::V6(ip) => {
                v.extend_from_slice(&[0, 0x02]);
                v.extend_from_slice(&port.to_be_bytes());
                let tid = &self.buf[8..20];
                let mask: Vec<u8> = cookie.iter().chain(tid).copied().collect();
                v.extend(ip.octets().iter().zip(mask).map(|(b, c)| b ^ c));
            }
        }
        self.attribute(attr::XOR_MAPPED_ADDRESS, &v)
    }

    /// ERROR-CODE with a reason phrase.
    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut v = vec![0, 0, u8::try_from(code / 100).unwrap_or(5) & 0x07, u8::try_from(code % 100).unwrap_or(0)];
        v.extend_from_slice(&reason.as_bytes()[..reason.len().min(128)]);
        self.attribute(attr::ERROR_CODE, &v)
    }

    /// Finishes the message: MESSAGE-INTEGRITY with `key` if given, then
    /// FINGERPRINT if asked.
    pub fn finish(mut self, integrity_key: Option<&[u8]>, fingerprint: bool) -> Vec<u8> {
        if let Some(key) = integrity_key {
            self.set_len(24);
            let mut mac = hmac_sha1(key);
            mac.update(&self.buf);
            let tag = mac.finalize().into_bytes();
            self.attribute(attr::MESSAGE_INTEGRITY, &tag);
        }
        if fingerprint {
            self.set_len(8);
            let crc = crc32fast::hash(&self.buf) ^ FINGERPRINT_XOR;
            self.attribute(attr::FINGERPRINT, &crc.to_be_bytes());
        }
        self.set_len(0);
        self.buf
    }

    /// Sets the header length to the current body plus `extra` bytes.
    fn set_len(&mut self, extra: usize) {
        let len = u16::try_from(self.buf.len() - HEADER_LEN + extra).unwrap_or(u16::MAX);
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 5769 §2.1 sample request.
    const REQ: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87,
        0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c,
        0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f,
        0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76,
        0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
    ];
    /// RFC 5769 §2.2 sample IPv4 response.
    const RESP: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87,
        0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20,
        0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91,
        0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7,
        0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];
    const PWD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

    #[test]
    fn rfc5769_request() {
        let m = Message::parse(&REQ).expect("parses");
        assert_eq!((m.class, m.method), (Class::Request, BINDING));
        assert_eq!(m.username, Some("evtj:h6vY"));
        assert_eq!(m.priority, Some(0x6e00_01ff));
        assert_eq!(m.ice_controlled, Some(0x932f_f9b1_5126_3b36));
        assert!(m.has_fingerprint);
        assert!(m.verify_integrity(PWD));
        assert!(!m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBu"));
    }

    #[test]
    fn rfc5769_ipv4_response() {
        let m = Message::parse(&RESP).expect("parses");
        assert_eq!(m.class, Class::Success);
        assert_eq!(m.mapped_address, Some("192.0.2.1:32853".parse().expect("addr")));
        assert!(m.verify_integrity(PWD));
    }

    #[test]
    fn tampering_is_caught() {
        for i in HEADER_LEN..REQ.len() - 8 {
            let mut bad = REQ;
            bad[i] ^= 0x01;
            // Either structure, fingerprint or integrity catches it.
            let ok = Message::parse(&bad).map(|m| m.verify_integrity(PWD)).unwrap_or(false);
            assert!(!ok, "flip at {i} accepted");
        }
    }

    #[test]
    fn built_messages_parse_back() {
        let tid = TransactionId([9; 12]);
        for addr in ["198.18.0.7:3478", "[2001:db8::5]:61000"] {
            let addr: SocketAddr = addr.parse().expect("addr");
            let mut b = MessageBuilder::new(Class::Success, BINDING, tid);
            b.xor_mapped_address(addr);
            let bytes = b.finish(Some(b"secret"), true);
            let m = Message::parse(&bytes).expect("parses");
            assert_eq!(m.mapped_address, Some(addr));
            assert!(m.verify_integrity(b"secret"));
            assert_eq!(m.transaction_id, tid);
        }
        // A repeated address attribute is not an unknown one.
        let mut b = MessageBuilder::new(Class::Success, BINDING, tid);
        b.xor_mapped_address("198.18.0.1:1".parse().expect("addr"));
        b.xor_mapped_address("198.18.0.2:2".parse().expect("addr"));
        let bytes = b.finish(None, false);
        let m = Message::parse(&bytes).expect("parses");
        assert_eq!((m.mapped_address, m.unknown_required), (Some("198.18.0.1:1".parse().expect("addr")), None));
        let mut b = MessageBuilder::new(Class::Error, BINDING, tid);
        b.error_code(487, "Role Conflict");
        let bytes = b.finish(Some(b"k"), true);
        assert_eq!(Message::parse(&bytes).expect("parses").error_code, Some(487));
    }

    proptest! {
        #[test]
        fn request_round_trip(
            user in "[a-zA-Z0-9+/]{4,32}:[a-zA-Z0-9+/]{4,32}",
            prio in any::<u32>(),
            tie in any::<u64>(),
            controlling in any::<bool>(),
            nominate in any::<bool>(),
            tid in any::<[u8; 12]>(),
            key in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut b = MessageBuilder::new(Class::Request, BINDING, TransactionId(tid));
            b.username(&user).priority(prio);
            if controlling { b.ice_controlling(tie); } else { b.ice_controlled(tie); }
            if nominate { b.use_candidate(); }
            let bytes = b.finish(Some(&key), true);
            let m = Message::parse(&bytes).expect("parses");
            prop_assert_eq!(m.username, Some(user.as_str()));
            prop_assert_eq!(m.priority, Some(prio));
            prop_assert_eq!(m.use_candidate, nominate);
            prop_assert_eq!(if controlling { m.ice_controlling } else { m.ice_controlled }, Some(tie));
            prop_assert!(m.verify_integrity(&key));
        }

        #[test]
        fn arbitrary_bytes_never_panic(mut b in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::parse(&b).map(|m| m.verify_integrity(b"k"));
            // And with a valid header, so attribute parsing is exercised.
            if b.len() >= HEADER_LEN {
                b[0] &= 0x3f;
                b[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                let body = (b.len() - HEADER_LEN) / 4 * 4;
                b.truncate(HEADER_LEN + body);
                b[2..4].copy_from_slice(&u16::try_from(body).expect("small").to_be_bytes());
                let _ = Message::parse(&b).map(|m| m.verify_integrity(b"k"));
            }
        }
    }
}
