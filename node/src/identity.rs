//! Peer identity: an Ed25519 key pair, shown to people as a libp2p PeerId.
//!
//! A PeerId for an Ed25519 key is the base58btc encoding of an *identity*
//! multihash over the protobuf-encoded public key (libp2p peer-id spec), so
//! the id *is* the key: [`PeerId`] stores the 32 key bytes and can give the
//! key back. Ids look like `12D3KooW…`, familiar to libp2p users.
//!
//! Sans-IO: nothing here reads files or the OS RNG. Key storage lives in the
//! runtime (`runtime::keystore`); key generation takes the caller's RNG.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;

/// Multihash/protobuf prefix of an Ed25519 libp2p PeerId:
/// multihash code 0x00 (identity), length 0x24 (36), then the protobuf
/// `PublicKey { Type = Ed25519 (field 1 = 1), Data (field 2) = 32 bytes }`.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// A node's long-term secret identity.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Identity").field("peer_id", &self.peer_id().to_string()).finish()
    }
}

impl Identity {
    /// Creates a fresh identity from the caller's cryptographic RNG.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self::from_secret_bytes(seed)
    }

    /// Rebuilds an identity from its 32-byte Ed25519 secret seed.
    pub fn from_secret_bytes(seed: [u8; 32]) -> Self {
        Self { signing: SigningKey::from_bytes(&seed) }
    }

    /// The 32-byte secret seed, for key storage. Handle with care.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// The PeerId of this identity.
    pub fn peer_id(&self) -> PeerId {
        PeerId(self.public_key())
    }

    /// Signs `message` with Ed25519.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The X25519 static secret derived from this Ed25519 key (the clamped
    /// scalar bytes, as libsodium's `crypto_sign_ed25519_sk_to_curve25519`),
    /// so that one identity key also authenticates the session handshake.
    pub fn x25519_secret_bytes(&self) -> [u8; 32] {
        self.signing.to_scalar_bytes()
    }
}

/// An Ed25519 public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", PeerId(*self))
    }
}

impl PublicKey {
    /// Verifies an Ed25519 signature over `message`. Returns `false` for a
    /// bad signature and for bytes that are not a valid curve point.
    /// Uses strict verification (no malleable or small-order keys).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify_strict(message, &Signature::from_bytes(signature)).is_ok()
    }

    /// The PeerId of this key.
    pub fn peer_id(&self) -> PeerId {
        PeerId(*self)
    }

    /// The X25519 public key that corresponds to this Ed25519 key
    /// (birational map to Montgomery form), or `None` if the bytes are not a
    /// valid point.
    pub fn to_x25519(&self) -> Option<[u8; 32]> {
        VerifyingKey::from_bytes(&self.0).ok().map(|k| k.to_montgomery().to_bytes())
    }
}

/// A libp2p-compatible peer id for an Ed25519 key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(PublicKey);

impl PeerId {
    /// The key this id names.
    pub fn public_key(&self) -> PublicKey {
        self.0
    }

    /// The 38-byte multihash form (what libp2p puts on the wire).
    pub fn to_bytes(&self) -> [u8; 38] {
        let mut out = [0u8; 38];
        out[..6].copy_from_slice(&PEER_ID_PREFIX);
        out[6..].copy_from_slice(&(self.0).0);
        out
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.to_bytes()).into_string())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

/// Why a string is not an Ed25519 PeerId.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdError {
    /// Not base58btc.
    #[error("peer id is not valid base58")]
    Base58,
    /// Valid base58, but not an identity multihash of an Ed25519 key (for
    /// example an RSA key's SHA-256 id, which Convoke does not use).
    #[error("peer id does not name an Ed25519 key (Convoke ids start with 12D3KooW)")]
    NotEd25519,
}

impl FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 64 {
            return Err(PeerIdError::Base58);
        }
        let bytes = bs58::decode(s).into_vec().map_err(|_| PeerIdError::Base58)?;
        if bytes.len() != 38 || bytes[..6] != PEER_ID_PREFIX {
            return Err(PeerIdError::NotEd25519);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[6..]);
        Ok(PeerId(PublicKey(key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn peer_id_matches_libp2p() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        for _ in 0..8 {
            let id = Identity::generate(&mut rng);
            let mut secret = id.secret_bytes();
            let kp = libp2p_identity::Keypair::ed25519_from_bytes(&mut secret).expect("valid key");
            let theirs = kp.public().to_peer_id();
            assert_eq!(id.peer_id().to_string(), theirs.to_string());
            assert_eq!(id.peer_id().to_bytes().to_vec(), theirs.to_bytes());
            let parsed: PeerId = theirs.to_string().parse().expect("parses");
            assert_eq!(parsed, id.peer_id());
        }
    }

    #[test]
    fn signatures_verify_and_reject_tampering() {
        let id = Identity::from_secret_bytes([9; 32]);
        let sig = id.sign(b"hello");
        assert!(id.public_key().verify(b"hello", &sig));
        assert!(!id.public_key().verify(b"hellp", &sig));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(!id.public_key().verify(b"hello", &bad));
    }

    #[test]
    fn bad_peer_ids_are_refused() {
        assert_eq!("0OIl".parse::<PeerId>(), Err(PeerIdError::Base58));
        // A SHA-256 multihash id (RSA style) is valid base58 but not ours.
        assert_eq!("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N".parse::<PeerId>(), Err(PeerIdError::NotEd25519));
    }

    #[test]
    fn x25519_keys_agree() {
        let id = Identity::from_secret_bytes([3; 32]);
        let public = id.public_key().to_x25519().expect("valid point");
        // scalar * basepoint must equal the mapped public key.
        let secret = x25519_dalek::StaticSecret::from(id.x25519_secret_bytes());
        assert_eq!(public, x25519_dalek::PublicKey::from(&secret).to_bytes());
    }
}
