//! The Noise IK handshake (`Noise_IK_25519_ChaChaPoly_SHA256`, Noise
//! Protocol Framework rev. 34), sans-IO, run by the `snow` crate.
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
//! X25519 forms of the nodes' Ed25519 identities.
//!
//! `snow` runs the pattern's state machine (the reviewed implementation
//! behind libp2p's Noise); this module hands it the primitives through a
//! resolver, for three reasons snow's defaults do not cover:
//! - **Low-order keys are refused**: X25519 from x25519-dalek with its
//!   constant-time contributory check; snow's own X25519 accepts a peer's
//!   small-order point and mixes an all-zero secret.
//! - **The caller's randomness**: the ephemeral key is the 32 bytes the
//!   caller's RNG gives, so the simulator's runs stay reproducible; the
//!   host erases its RNG's state after each handshake.
//! - **Key material is wiped where we hold it**: the DH private keys and
//!   cipher keys snow holds are ours and zeroize when dropped, and snow's
//!   handshake state itself (the chaining key and handshake hash, which
//!   snow 0.10 keeps in plain arrays) is overwritten when dropped
//!   ([`WipedHandshake`]). What snow copies on its own stack (the
//!   checkpoint of the chaining key and hash around each message, HKDF and
//!   HMAC temporaries, DH outputs) is not: no crate wipes another's stack.
//!
//! ChaCha20-Poly1305 is ring's, the same code as the session's packets;
//! SHA-256 is `sha2`'s.

use std::cell::Cell;

use rand_core::CryptoRng;
use sha2::Digest;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::CryptoResolver;
use snow::types::{Cipher, Dh, Hash, Random};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::conn::PacketKey;

/// The protocol name.
pub const PROTOCOL: &str = "Noise_IK_25519_ChaChaPoly_SHA256";
/// AEAD tag length.
pub const TAG: usize = 16;
/// Length of the initiator's message without payload: e, s (encrypted), tag.
pub const MSG1_LEN: usize = 32 + 32 + TAG + TAG;
/// Length of the responder's message without payload: e, tag.
pub const MSG2_LEN: usize = 32 + TAG;
/// The largest Noise message (rev. 34 §3).
const MAX_MSG: usize = 65_535;

/// Why a handshake message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Too short to hold the message's keys and tags, or longer than a
    /// Noise message may be.
    #[error("handshake message too short or too long")]
    Truncated,
    /// A tag did not verify: wrong keys, wrong prologue, or tampering.
    #[error("handshake message does not authenticate")]
    Decrypt,
    /// A Diffie-Hellman result was all zeros (a low-order point).
    #[error("peer sent a low-order public key")]
    WeakKey,
}

impl From<snow::Error> for HandshakeError {
    fn from(e: snow::Error) -> Self {
        match e {
            snow::Error::Dh => HandshakeError::WeakKey,
            _ => HandshakeError::Decrypt,
        }
    }
}

/// X25519 for snow: x25519-dalek, refusing non-contributory results.
#[derive(Default, Zeroize, ZeroizeOnDrop)]
struct X25519 {
    private: [u8; 32],
    public: [u8; 32],
}

impl X25519 {
    fn derive_public(&mut self) {
        self.public = XPublic::from(&StaticSecret::from(self.private)).to_bytes();
    }
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }
    fn pub_len(&self) -> usize {
        32
    }
    fn priv_len(&self) -> usize {
        32
    }
    fn set(&mut self, privkey: &[u8]) {
        // Our callers always pass 32 bytes; anything else is padded or cut
        // rather than a panic.
        let n = privkey.len().min(32);
        self.private = [0; 32];
        self.private[..n].copy_from_slice(&privkey[..n]);
        self.derive_public();
    }
    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        rng.try_fill_bytes(&mut self.private)?;
        self.derive_public();
        Ok(())
    }
    fn pubkey(&self) -> &[u8] {
        &self.public
    }
    fn privkey(&self) -> &[u8] {
        &self.private
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let public: [u8; 32] = pubkey.get(..32).and_then(|p| p.try_into().ok()).ok_or(snow::Error::Dh)?;
        let shared = StaticSecret::from(self.private).diffie_hellman(&XPublic::from(public));
        if !shared.was_contributory() {
            return Err(snow::Error::Dh);
        }
        out.get_mut(..32).ok_or(snow::Error::Dh)?.copy_from_slice(shared.as_bytes());
        Ok(())
    }
}

/// ChaCha20-Poly1305 for snow: ring's, through the session's packet key.
#[derive(Zeroize, ZeroizeOnDrop)]
struct ChaChaPoly(PacketKey);

impl Cipher for ChaChaPoly {
    fn name(&self) -> &'static str {
        "ChaChaPoly"
    }
    fn set(&mut self, key: &[u8; 32]) {
        self.0 = PacketKey(*key);
    }
    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        // snow sizes `out` for the plaintext and the tag.
        let n = plaintext.len();
        out[..n].copy_from_slice(plaintext);
        let tag = self.0.seal(nonce, authtext, &mut out[..n]);
        out[n..n + TAG].copy_from_slice(tag.as_ref());
        n + TAG
    }
    fn decrypt(&self, nonce: u64, authtext: &[u8], ciphertext: &[u8], out: &mut [u8]) -> Result<usize, snow::Error> {
        let n = ciphertext.len().checked_sub(TAG).ok_or(snow::Error::Decrypt)?;
        let body = out.get_mut(..n).ok_or(snow::Error::Decrypt)?;
        body.copy_from_slice(&ciphertext[..n]);
        if self.0.open(nonce, authtext, body, &ciphertext[n..]) {
            Ok(n)
        } else {
            body.zeroize();
            Err(snow::Error::Decrypt)
        }
    }
}

/// SHA-256 for snow: `sha2`'s, reset after every digest.
#[derive(Default)]
struct Sha256(sha2::Sha256);

impl Hash for Sha256 {
    fn name(&self) -> &'static str {
        "SHA256"
    }
    fn block_len(&self) -> usize {
        64
    }
    fn hash_len(&self) -> usize {
        32
    }
    fn reset(&mut self) {
        Digest::reset(&mut self.0);
    }
    fn input(&mut self, data: &[u8]) {
        Digest::update(&mut self.0, data);
    }
    fn result(&mut self, out: &mut [u8]) {
        out[..32].copy_from_slice(&self.0.finalize_reset());
    }
}

/// Hands snow the 32 bytes the caller drew for the ephemeral key, once;
/// any other request for randomness fails the handshake rather than
/// making up bytes.
struct Ephemeral(Option<Zeroizing<[u8; 32]>>);

impl Random for Ephemeral {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        match self.0.take() {
            Some(bytes) if dest.len() == 32 => {
                dest.copy_from_slice(&*bytes);
                Ok(())
            }
            _ => Err(snow::Error::Rng),
        }
    }
}

/// The primitives above, for one handshake.
struct Primitives {
    ephemeral: Cell<Option<Zeroizing<[u8; 32]>>>,
}

impl CryptoResolver for Primitives {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(Ephemeral(self.ephemeral.take())))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        matches!(choice, DHChoice::Curve25519).then(|| Box::new(X25519::default()) as Box<dyn Dh>)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        matches!(choice, HashChoice::SHA256).then(|| Box::new(Sha256::default()) as Box<dyn Hash>)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        matches!(choice, CipherChoice::ChaChaPoly).then(|| Box::new(ChaChaPoly(PacketKey([0; 32]))) as Box<dyn Cipher>)
    }
}

/// snow's handshake state on the heap, overwritten with zeros once it is
/// dropped: snow 0.10 keeps the chaining key, the handshake hash and the
/// peer's public keys in plain arrays inside it and wipes nothing. (The
/// parts it holds through `Primitives` wipe themselves.)
pub struct WipedHandshake(std::mem::ManuallyDrop<Box<snow::HandshakeState>>);

impl WipedHandshake {
    fn new(state: snow::HandshakeState) -> Self {
        Self(std::mem::ManuallyDrop::new(Box::new(state)))
    }
}

// The crate's one unsafe block (the workspace denies unsafe code): no
// crate wipes a value it does not own the type of.
#[allow(unsafe_code)]
impl Drop for WipedHandshake {
    fn drop(&mut self) {
        const SIZE: usize = std::mem::size_of::<snow::HandshakeState>();
        // SAFETY: the box is taken out exactly once, here, and not used
        // again. After `drop_in_place` its memory holds no live value, only
        // bytes, which are overwritten as a byte array (volatile writes, so
        // not elided as dead stores); it is then freed with the layout
        // `Box::new` allocated it with.
        unsafe {
            let raw = Box::into_raw(std::mem::ManuallyDrop::take(&mut self.0));
            std::ptr::drop_in_place(raw);
            zeroize::zeroize_flat_type(raw.cast::<[u8; SIZE]>());
            std::alloc::dealloc(raw.cast(), std::alloc::Layout::new::<snow::HandshakeState>());
        }
    }
}

fn builder<'a, R: CryptoRng + ?Sized>(
    s: &'a [u8; 32],
    prologue: &'a [u8],
    rng: &mut R,
) -> Result<snow::Builder<'a>, HandshakeError> {
    let mut ephemeral = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut *ephemeral);
    let params = PROTOCOL.parse().expect("the protocol name is a valid Noise pattern");
    let primitives = Primitives { ephemeral: Cell::new(Some(ephemeral)) };
    Ok(snow::Builder::with_resolver(params, Box::new(primitives)).local_private_key(s)?.prologue(prologue)?)
}

/// The keys a finished handshake yields, wiped when dropped.
pub struct Keys {
    /// For what we send.
    pub send: Zeroizing<[u8; 32]>,
    /// For what we receive.
    pub recv: Zeroizing<[u8; 32]>,
    /// The handshake hash (channel binding).
    pub handshake_hash: [u8; 32],
    /// The peer's static X25519 key.
    pub remote_static: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("remote_static", &self.remote_static).finish_non_exhaustive()
    }
}

/// Splits a finished handshake; `initiator` says which half we send with.
fn keys(hs: &mut snow::HandshakeState, initiator: bool, remote_static: [u8; 32]) -> Keys {
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    let (i2r, r2i) = (Zeroizing::new(i2r), Zeroizing::new(r2i));
    let (send, recv) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
    let mut handshake_hash = [0u8; 32];
    handshake_hash.copy_from_slice(&hs.get_handshake_hash()[..32]);
    Keys { send, recv, handshake_hash, remote_static }
}

/// The initiator between sending message 1 and reading message 2.
pub struct Initiator {
    state: WipedHandshake,
    rs: [u8; 32],
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator").field("rs", &self.rs).finish_non_exhaustive()
    }
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
        let s = Zeroizing::new(s);
        if MSG1_LEN + payload.len() > MAX_MSG {
            return Err(HandshakeError::Truncated);
        }
        let hs = builder(&s, prologue, rng)?.remote_public_key(&rs)?.build_initiator()?;
        let mut state = WipedHandshake::new(hs);
        let mut msg = vec![0u8; MSG1_LEN + payload.len()];
        let n = state.0.write_message(payload, &mut msg)?;
        msg.truncate(n);
        Ok((Initiator { state, rs }, msg))
    }

    /// Reads message 2; returns the keys and the responder's payload. A
    /// message that does not authenticate leaves the state as it was, so
    /// a forged answer does not spoil the real one.
    pub fn finish(&mut self, msg: &[u8]) -> Result<(Keys, Vec<u8>), HandshakeError> {
        if msg.len() < MSG2_LEN || msg.len() > MAX_MSG {
            return Err(HandshakeError::Truncated);
        }
        let mut payload = vec![0u8; msg.len()];
        let n = self.state.0.read_message(msg, &mut payload)?;
        payload.truncate(n);
        Ok((keys(&mut self.state.0, true, self.rs), payload))
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
    if msg.len() < MSG1_LEN || msg.len() > MAX_MSG {
        return Err(HandshakeError::Truncated);
    }
    let s = Zeroizing::new(s);
    let mut state = WipedHandshake::new(builder(&s, prologue, rng)?.build_responder()?);
    let mut their_payload = vec![0u8; msg.len()];
    let n = state.0.read_message(msg, &mut their_payload)?;
    their_payload.truncate(n);
    let rs: [u8; 32] = state.0.get_remote_static().and_then(|k| k.try_into().ok()).ok_or(HandshakeError::Decrypt)?;
    let our_payload = respond(&rs, &their_payload);
    if MSG2_LEN + our_payload.len() > MAX_MSG {
        return Err(HandshakeError::Truncated);
    }
    let mut out = vec![0u8; MSG2_LEN + our_payload.len()];
    let n = state.0.write_message(&our_payload, &mut out)?;
    out.truncate(n);
    Ok((keys(&mut state.0, false, rs), their_payload, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn keypair(seed: u8) -> ([u8; 32], [u8; 32]) {
        let s = StaticSecret::from([seed; 32]);
        (s.to_bytes(), XPublic::from(&s).to_bytes())
    }

    fn seal(key: &[u8; 32], n: u64, pt: &[u8]) -> Vec<u8> {
        let mut out = pt.to_vec();
        let tag = PacketKey(*key).seal(n, b"ad", &mut out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    fn open(key: &[u8; 32], n: u64, ct: &[u8]) -> Option<Vec<u8>> {
        let (body, tag) = ct.split_at(ct.len().checked_sub(TAG)?);
        let mut body = body.to_vec();
        PacketKey(*key).open(n, b"ad", &mut body, tag).then_some(body)
    }

    #[test]
    fn ours_to_ours() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let (is, ip) = keypair(1);
        let (rs, rp) = keypair(2);
        let (mut init, m1) = Initiator::start(is, rp, b"prologue", b"hello", &mut rng).expect("m1");
        assert_eq!(m1.len(), MSG1_LEN + 5);
        let (rk, p1, m2) = respond(rs, b"prologue", &m1, &mut rng, |who, p| {
            assert_eq!((who, p), (&ip, &b"hello"[..]));
            b"welcome".to_vec()
        })
        .expect("m2");
        assert_eq!(p1, b"hello");
        assert_eq!(m2.len(), MSG2_LEN + 7);
        let (ik, p2) = init.finish(&m2).expect("keys");
        assert_eq!(p2, b"welcome");
        assert_eq!(ik.handshake_hash, rk.handshake_hash);
        assert_eq!((ik.remote_static, rk.remote_static), (rp, ip));
        assert_ne!(*ik.send, *ik.recv);
        let ct = seal(&ik.send, 7, b"data");
        assert_eq!(open(&rk.recv, 7, &ct).as_deref(), Some(&b"data"[..]));
        assert!(open(&rk.recv, 8, &ct).is_none());
        let ct = seal(&rk.send, 0, b"back");
        assert_eq!(open(&ik.recv, 0, &ct).as_deref(), Some(&b"back"[..]));
    }

    /// The ephemeral key is the caller's randomness: the same RNG stream
    /// gives the same messages (the simulator's runs replay), another
    /// gives others.
    #[test]
    fn the_callers_rng_decides_the_ephemeral() {
        let (is, _) = keypair(1);
        let (_, rp) = keypair(2);
        let m1 = |seed| {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            Initiator::start(is, rp, b"p", b"", &mut rng).expect("m1").1
        };
        assert_eq!(m1(9), m1(9));
        assert_ne!(m1(9)[..32], m1(10)[..32]);
    }

    /// A forged or damaged message 2 is refused and leaves the initiator
    /// able to finish with the real one.
    #[test]
    fn a_forged_answer_does_not_spoil_the_real_one() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        let (is, _) = keypair(1);
        let (rs, rp) = keypair(2);
        let (mut init, m1) = Initiator::start(is, rp, b"p", b"", &mut rng).expect("m1");
        let (rk, _, m2) = respond(rs, b"p", &m1, &mut rng, |_, _| b"ok".to_vec()).expect("m2");
        let mut bad = m2.clone();
        bad[40] ^= 1;
        assert_eq!(init.finish(&bad).err(), Some(HandshakeError::Decrypt));
        assert_eq!(init.finish(&m2[..20]).err(), Some(HandshakeError::Truncated));
        let (ik, p) = init.finish(&m2).expect("the real answer still works");
        assert_eq!((p.as_slice(), ik.handshake_hash), (&b"ok"[..], rk.handshake_hash));
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
        let huge = vec![0u8; MAX_MSG + 1];
        assert_eq!(respond(rs, b"token A", &huge, &mut rng, |_, _| vec![]).err(), Some(HandshakeError::Truncated));
        for i in 0..m1.len() {
            let mut bad = m1.clone();
            bad[i] ^= 1;
            assert!(respond(rs, b"token A", &bad, &mut rng, |_, _| vec![]).is_err(), "flip at {i}");
        }
    }

    /// snow with its own default primitives (RustCrypto's ChaCha20-Poly1305
    /// and SHA-256, curve25519-dalek) against ours (ring, sha2,
    /// x25519-dalek), both ways and into transport mode: the resolver's
    /// primitives are the standard ones.
    fn snow_builder() -> snow::Builder<'static> {
        snow::Builder::with_resolver(PROTOCOL.parse().expect("pattern"), Box::new(snow::resolvers::DefaultResolver))
    }

    #[test]
    fn interop_with_snows_own_primitives_both_ways() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let (is, ip) = keypair(4);
        let (rs, rp) = keypair(5);
        let mut buf = [0u8; 1024];
        // Ours initiates, snow responds.
        let (mut init, m1) = Initiator::start(is, rp, b"p", b"ping", &mut rng).expect("m1");
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
        let t = resp.into_stateless_transport_mode().expect("transport");
        let n = t.write_message(0, b"from snow", &mut buf).expect("write");
        let mut body = buf[..n - TAG].to_vec();
        assert!(PacketKey(*keys.recv).open(0, &[], &mut body, &buf[n - TAG..n]));
        assert_eq!(body, b"from snow");
        let mut ct = b"from us".to_vec();
        let tag = PacketKey(*keys.send).seal(0, &[], &mut ct);
        ct.extend_from_slice(tag.as_ref());
        let n = t.read_message(0, &ct, &mut buf).expect("snow decrypts ours");
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

    /// Our cipher's REKEY (snow's default, over ring) gives the key snow's
    /// RustCrypto cipher gives.
    #[test]
    fn rekey_matches_snows_own_cipher() {
        let theirs = snow::resolvers::DefaultResolver;
        let mut reference = theirs.resolve_cipher(&CipherChoice::ChaChaPoly).expect("ChaChaPoly");
        reference.set(&[9; 32]);
        reference.rekey();
        let mut ours = ChaChaPoly(PacketKey([9; 32]));
        ours.rekey();
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        let n = reference.encrypt(1, b"ad", b"x", &mut a);
        assert_eq!(ours.encrypt(1, b"ad", b"x", &mut b), n);
        assert_eq!(a[..n], b[..n]);
        assert_eq!(ours.0.0, PacketKey([9; 32]).rekey().0, "the session's packet key rekeys the same way");
    }

    /// What snow holds of ours wipes itself.
    #[test]
    fn key_holders_are_wiped_on_drop() {
        fn assert_wiped_on_drop<T: ZeroizeOnDrop>() {}
        assert_wiped_on_drop::<X25519>();
        assert_wiped_on_drop::<ChaChaPoly>();
        assert_wiped_on_drop::<Zeroizing<[u8; 32]>>();
    }
}
