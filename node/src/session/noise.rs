//! The Noise IK handshake (`Noise_IK_25519_ChaChaPoly_SHA256`, Noise
//! Protocol Framework rev. 34), sans-IO, with the caller's RNG.
//!
//! ```text
//! IK:  <- s
//!      ...
//!      -> e, es, s, ss      (invitee: knows the inviter's static key from the token)
//!      <- e, ee, se         (inviter)
//! ```
//!
//! One round trip authenticates both sides with forward secrecy. The
//! prologue binds the handshake to the token and ICE credentials, so a
//! session cannot be spliced onto another invitation. Static keys are the
//! X25519 forms of the nodes' Ed25519 identities. Interop with the `snow`
//! crate is tested.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hmac::{Hmac, Mac};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};

/// The protocol name; exactly 32 bytes, so it is the initial hash as is.
pub const PROTOCOL: &[u8; 32] = b"Noise_IK_25519_ChaChaPoly_SHA256";
/// AEAD tag length.
pub const TAG: usize = 16;
/// Length of the initiator's message without payload: e, s (encrypted), tag.
pub const MSG1_LEN: usize = 32 + 32 + TAG + TAG;
/// Length of the responder's message without payload: e, tag.
pub const MSG2_LEN: usize = 32 + TAG;

/// Why a handshake message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Too short to hold the message's keys and tags.
    #[error("handshake message too short")]
    Truncated,
    /// A tag did not verify: wrong keys, wrong prologue, or tampering.
    #[error("handshake message does not authenticate")]
    Decrypt,
    /// A Diffie-Hellman result was all zeros (a low-order point).
    #[error("peer sent a low-order public key")]
    WeakKey,
}

/// A cipher key with its nonce counter (Noise `CipherState`).
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct CipherState {
    key: [u8; 32],
    nonce: u64,
}

impl std::fmt::Debug for CipherState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CipherState").field("nonce", &self.nonce).finish_non_exhaustive()
    }
}

fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_le_bytes());
    Nonce::from(b)
}

impl CipherState {
    /// A cipher with `key` and nonce 0.
    pub fn new(key: [u8; 32]) -> Self {
        Self { key, nonce: 0 }
    }

    /// Encrypts with an explicit nonce (transport frames carry theirs).
    pub fn seal(&self, n: u64, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        ChaCha20Poly1305::new(&self.key.into())
            .encrypt(&nonce(n), Payload { msg: plaintext, aad: ad })
            .expect("ChaCha20-Poly1305 takes any length we produce")
    }

    /// Decrypts with an explicit nonce.
    pub fn open(&self, n: u64, ad: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
        ChaCha20Poly1305::new(&self.key.into()).decrypt(&nonce(n), Payload { msg: ciphertext, aad: ad }).ok()
    }

    /// The key, for the session's packet ciphers.
    pub(crate) fn key(&self) -> [u8; 32] {
        self.key
    }

    /// Noise REKEY: the key becomes the first 32 bytes of encrypting 32
    /// zero bytes under nonce 2^64−1.
    pub fn rekey(&mut self) {
        let out = self.seal(u64::MAX, &[], &[0u8; 32]);
        self.key.copy_from_slice(&out[..32]);
    }

    fn seal_next(&mut self, ad: &[u8], pt: &[u8]) -> Vec<u8> {
        let out = self.seal(self.nonce, ad, pt);
        self.nonce += 1;
        out
    }

    fn open_next(&mut self, ad: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
        let out = self.open(self.nonce, ad, ct)?;
        self.nonce += 1;
        Some(out)
    }
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Noise HKDF with two outputs.
fn hkdf2(ck: &[u8; 32], ikm: &[u8]) -> ([u8; 32], [u8; 32]) {
    let temp = hmac(ck, &[ikm]);
    let o1 = hmac(&temp, &[&[1]]);
    let o2 = hmac(&temp, &[&o1, &[2]]);
    (o1, o2)
}

#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct Symmetric {
    ck: [u8; 32],
    h: [u8; 32],
    cipher: Option<CipherState>,
}

impl Symmetric {
    fn new(prologue: &[u8]) -> Self {
        let mut s = Symmetric { ck: *PROTOCOL, h: *PROTOCOL, cipher: None };
        s.mix_hash(prologue);
        s
    }

    fn mix_hash(&mut self, data: &[u8]) {
        self.h = Sha256::new().chain_update(self.h).chain_update(data).finalize().into();
    }

    fn mix_key(&mut self, ikm: &[u8; 32]) {
        let (ck, k) = hkdf2(&self.ck, ikm);
        self.ck = ck;
        self.cipher = Some(CipherState::new(k));
    }

    fn encrypt_and_hash(&mut self, pt: &[u8]) -> Vec<u8> {
        let h = self.h;
        let ct = match &mut self.cipher {
            Some(c) => c.seal_next(&h, pt),
            None => pt.to_vec(),
        };
        self.mix_hash(&ct);
        ct
    }

    fn decrypt_and_hash(&mut self, ct: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let h = self.h;
        let pt = match &mut self.cipher {
            Some(c) => c.open_next(&h, ct).ok_or(HandshakeError::Decrypt)?,
            None => ct.to_vec(),
        };
        self.mix_hash(ct);
        Ok(pt)
    }

    fn split(&self) -> (CipherState, CipherState) {
        let (a, b) = hkdf2(&self.ck, &[]);
        (CipherState::new(a), CipherState::new(b))
    }
}

/// X25519, refusing a peer key of small order (the all-zero output) with
/// the library's constant-time check.
fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Result<[u8; 32], HandshakeError> {
    let shared = secret.diffie_hellman(&XPublic::from(*public));
    if !shared.was_contributory() {
        return Err(HandshakeError::WeakKey);
    }
    Ok(shared.to_bytes())
}

/// The keys a finished handshake yields.
#[derive(Debug, Clone)]
pub struct Keys {
    /// For what we send.
    pub send: CipherState,
    /// For what we receive.
    pub recv: CipherState,
    /// The handshake hash (channel binding).
    pub handshake_hash: [u8; 32],
    /// The peer's static X25519 key.
    pub remote_static: [u8; 32],
}

/// The initiator between sending message 1 and reading message 2.
#[derive(Clone)]
pub struct Initiator {
    sym: Symmetric,
    e: StaticSecret,
    s: StaticSecret,
    rs: [u8; 32],
}

impl Initiator {
    /// Writes message 1 (`e, es, s, ss` and `payload`) to a responder whose
    /// static key `rs` we know.
    pub fn start<R: CryptoRng + ?Sized>(
        s: [u8; 32],
        rs: [u8; 32],
        prologue: &[u8],
        payload: &[u8],
        rng: &mut R,
    ) -> Result<(Initiator, Vec<u8>), HandshakeError> {
        let mut sym = Symmetric::new(prologue);
        sym.mix_hash(&rs);
        let mut eb = [0u8; 32];
        rng.fill_bytes(&mut eb);
        let e = StaticSecret::from(eb);
        let s = StaticSecret::from(s);
        let e_pub = XPublic::from(&e).to_bytes();
        let mut msg = e_pub.to_vec();
        sym.mix_hash(&e_pub);
        sym.mix_key(&dh(&e, &rs)?);
        msg.extend(sym.encrypt_and_hash(XPublic::from(&s).as_bytes()));
        sym.mix_key(&dh(&s, &rs)?);
        msg.extend(sym.encrypt_and_hash(payload));
        Ok((Initiator { sym, e, s, rs }, msg))
    }

    /// Reads message 2; returns the keys and the responder's payload.
    pub fn finish(mut self, msg: &[u8]) -> Result<(Keys, Vec<u8>), HandshakeError> {
        if msg.len() < MSG2_LEN {
            return Err(HandshakeError::Truncated);
        }
        let re: [u8; 32] = msg[..32].try_into().expect("32 bytes");
        self.sym.mix_hash(&re);
        self.sym.mix_key(&dh(&self.e, &re)?);
        self.sym.mix_key(&dh(&self.s, &re)?);
        let payload = self.sym.decrypt_and_hash(&msg[32..])?;
        let (send, recv) = self.sym.split();
        Ok((Keys { send, recv, handshake_hash: self.sym.h, remote_static: self.rs }, payload))
    }
}

/// The responder's side: reads message 1 and answers with message 2 in one
/// step. Returns the keys, the initiator's payload, and message 2.
/// `respond` builds our payload once the initiator's static key and payload
/// are known (so the inviter can check who is calling first).
pub fn respond<R: CryptoRng + ?Sized>(
    s: [u8; 32],
    prologue: &[u8],
    msg: &[u8],
    rng: &mut R,
    respond: impl FnOnce(&[u8; 32], &[u8]) -> Vec<u8>,
) -> Result<(Keys, Vec<u8>, Vec<u8>), HandshakeError> {
    if msg.len() < MSG1_LEN {
        return Err(HandshakeError::Truncated);
    }
    let s = StaticSecret::from(s);
    let mut sym = Symmetric::new(prologue);
    sym.mix_hash(XPublic::from(&s).as_bytes());
    let re: [u8; 32] = msg[..32].try_into().expect("32 bytes");
    sym.mix_hash(&re);
    sym.mix_key(&dh(&s, &re)?);
    let rs: [u8; 32] = sym.decrypt_and_hash(&msg[32..32 + 48])?.try_into().map_err(|_| HandshakeError::Decrypt)?;
    sym.mix_key(&dh(&s, &rs)?);
    let their_payload = sym.decrypt_and_hash(&msg[80..])?;
    let our_payload = respond(&rs, &their_payload);
    let mut eb = [0u8; 32];
    rng.fill_bytes(&mut eb);
    let e = StaticSecret::from(eb);
    let e_pub = XPublic::from(&e).to_bytes();
    let mut out = e_pub.to_vec();
    sym.mix_hash(&e_pub);
    sym.mix_key(&dh(&e, &re)?);
    sym.mix_key(&dh(&e, &rs)?);
    out.extend(sym.encrypt_and_hash(&our_payload));
    let (recv, send) = sym.split();
    Ok((Keys { send, recv, handshake_hash: sym.h, remote_static: rs }, their_payload, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn keypair(seed: u8) -> ([u8; 32], [u8; 32]) {
        let s = StaticSecret::from([seed; 32]);
        (s.to_bytes(), XPublic::from(&s).to_bytes())
    }

    #[test]
    fn ours_to_ours() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let (is, ip) = keypair(1);
        let (rs, rp) = keypair(2);
        let (init, m1) = Initiator::start(is, rp, b"prologue", b"hello", &mut rng).expect("m1");
        assert_eq!(m1.len(), MSG1_LEN + 5);
        let (rk, p1, m2) = respond(rs, b"prologue", &m1, &mut rng, |who, p| {
            assert_eq!((who, p), (&ip, &b"hello"[..]));
            b"welcome".to_vec()
        })
        .expect("m2");
        assert_eq!(p1, b"hello");
        let (ik, p2) = init.finish(&m2).expect("keys");
        assert_eq!(p2, b"welcome");
        assert_eq!(ik.handshake_hash, rk.handshake_hash);
        let ct = ik.send.seal(7, b"ad", b"data");
        assert_eq!(rk.recv.open(7, b"ad", &ct).as_deref(), Some(&b"data"[..]));
        assert!(rk.recv.open(8, b"ad", &ct).is_none());
    }

    /// Small-order X25519 points (zero, one, and an order-8 point) as a
    /// peer's static or ephemeral key make the DH output all zeros: refused.
    #[test]
    fn small_order_keys_are_refused() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let (is, _) = keypair(1);
        let (rs, rp) = keypair(2);
        let mut order8 = [0u8; 32];
        order8[..8].copy_from_slice(&[0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae]);
        order8[8..16].copy_from_slice(&[0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a]);
        order8[16..24].copy_from_slice(&[0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd]);
        order8[24..].copy_from_slice(&[0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00]);
        let mut one = [0u8; 32];
        one[0] = 1;
        for bad in [[0u8; 32], one, order8] {
            assert_eq!(Initiator::start(is, bad, b"p", b"", &mut rng).err(), Some(HandshakeError::WeakKey));
            // A message 1 whose ephemeral is the bad point.
            let (_, mut m1) = Initiator::start(is, rp, b"p", b"", &mut rng).expect("m1");
            m1[..32].copy_from_slice(&bad);
            assert_eq!(respond(rs, b"p", &m1, &mut rng, |_, _| vec![]).err(), Some(HandshakeError::WeakKey));
        }
    }

    #[test]
    fn wrong_prologue_or_key_fails() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let (is, _) = keypair(1);
        let (rs, rp) = keypair(2);
        let (_, m1) = Initiator::start(is, rp, b"token A", b"", &mut rng).expect("m1");
        assert_eq!(respond(rs, b"token B", &m1, &mut rng, |_, _| vec![]).err(), Some(HandshakeError::Decrypt));
        let (other, _) = keypair(3);
        assert_eq!(respond(other, b"token A", &m1, &mut rng, |_, _| vec![]).err(), Some(HandshakeError::Decrypt));
        assert_eq!(respond(rs, b"token A", &m1[..40], &mut rng, |_, _| vec![]).err(), Some(HandshakeError::Truncated));
        for i in 0..m1.len() {
            let mut bad = m1.clone();
            bad[i] ^= 1;
            assert!(respond(rs, b"token A", &bad, &mut rng, |_, _| vec![]).is_err(), "flip at {i}");
        }
    }

    fn snow_builder() -> snow::Builder<'static> {
        snow::Builder::new("Noise_IK_25519_ChaChaPoly_SHA256".parse().expect("pattern"))
    }

    #[test]
    fn interop_with_snow_both_ways() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let (is, ip) = keypair(4);
        let (rs, rp) = keypair(5);
        let mut buf = [0u8; 1024];
        // Ours initiates, snow responds.
        let (init, m1) = Initiator::start(is, rp, b"p", b"ping", &mut rng).expect("m1");
        let mut resp = snow_builder()
            .local_private_key(&rs)
            .expect("key")
            .prologue(b"p")
            .expect("prologue")
            .build_responder()
            .expect("responder");
        let n = resp.read_message(&m1, &mut buf).expect("snow reads our message 1");
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(resp.get_remote_static(), Some(&ip[..]));
        let n = resp.write_message(b"pong", &mut buf).expect("snow writes message 2");
        let (keys, p) = init.finish(&buf[..n]).expect("we read snow's message 2");
        assert_eq!(p, b"pong");
        let mut t = resp.into_transport_mode().expect("transport");
        let n = t.write_message(b"from snow", &mut buf).expect("write");
        assert_eq!(keys.recv.open(0, &[], &buf[..n]).as_deref(), Some(&b"from snow"[..]));
        let ct = keys.send.seal(0, &[], b"from us");
        let n = t.read_message(&ct, &mut buf).expect("snow decrypts ours");
        assert_eq!(&buf[..n], b"from us");

        // Snow initiates, ours responds.
        let mut init = snow_builder()
            .local_private_key(&is)
            .expect("key")
            .remote_public_key(&rp)
            .expect("rs")
            .prologue(b"q")
            .expect("prologue")
            .build_initiator()
            .expect("initiator");
        let n = init.write_message(b"hi", &mut buf).expect("m1");
        let (keys, p, m2) = respond(rs, b"q", &buf[..n], &mut rng, |who, _| {
            assert_eq!(who, &ip);
            b"there".to_vec()
        })
        .expect("we read snow's message 1");
        assert_eq!(p, b"hi");
        let n = init.read_message(&m2, &mut buf).expect("snow reads our message 2");
        assert_eq!(&buf[..n], b"there");
        assert_eq!(init.get_handshake_hash(), &keys.handshake_hash[..]);
    }

    #[test]
    fn rekey_matches_on_both_sides_and_changes_the_key() {
        let mut a = CipherState::new([9; 32]);
        let b0 = a.clone();
        let mut b = a.clone();
        a.rekey();
        b.rekey();
        let ct = a.seal(1, &[], b"x");
        assert_eq!(b.open(1, &[], &ct).as_deref(), Some(&b"x"[..]));
        assert!(b0.open(1, &[], &ct).is_none());
    }
}
