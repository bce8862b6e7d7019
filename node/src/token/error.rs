//! Why a token was refused. Every variant reads as a sentence a person can act on.

use super::TokenType;

/// A token was refused. Validation stops at the first failing stage, in this
/// order: size → decode → structure → type/role → expiry → signature → linking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The input is larger than any valid token can be; it was not decoded.
    #[error("token is {len} bytes, more than the {max}-byte limit; it was not decoded")]
    TooLarge {
        /// Input length in bytes (after removing whitespace).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input does not start with `scpi://` or `scpc:`.
    #[error("this is not a Convoke token: it should start with scpi:// or scpc:")]
    UnknownPrefix,
    /// The input holds characters outside base64url, or bad padding.
    #[error("token text is damaged: it is not valid base64url (was it cut or altered in copying?)")]
    BadBase64,
    /// The compressed body does not inflate.
    #[error("token text is damaged: its compressed body does not decompress")]
    BadDeflate,
    /// The compressed body inflates to more than the limit (a DEFLATE bomb).
    #[error("token expands to more than {max} bytes; refused before decompressing further")]
    DecompressedTooLarge {
        /// The limit on the inflated size.
        max: usize,
    },
    /// The binary form ended before all its fields.
    #[error("token is truncated: it ends in the middle of the {field} field")]
    Truncated {
        /// The field being read when the input ran out.
        field: &'static str,
    },
    /// The binary form has bytes after the signature.
    #[error("token has {0} unexpected bytes after its signature")]
    TrailingBytes(usize),
    /// The body is not a well-formed token (missing or mistyped field).
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// The token was made by a newer (or unknown) version of the format.
    #[error("token format version {0} is not supported (this build reads versions 1.1 and 1.2)")]
    UnknownVersion(String),
    /// A field is larger than the format allows.
    #[error("token field {field} is too large: {len} where at most {max} is allowed")]
    LimitExceeded {
        /// Which field.
        field: &'static str,
        /// Its size (bytes or entries).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An invitation was expected and an RSVP given, or the other way round.
    #[error("expected an {expected} token but this is an {found} token")]
    WrongType {
        /// What the caller asked for.
        expected: TokenType,
        /// What the token says it is.
        found: TokenType,
    },
    /// The party or ICE role does not fit the token type (an invitation is
    /// made by the initiator, which controls; an RSVP by the responder,
    /// which is controlled).
    #[error("token roles are inconsistent: {0}")]
    WrongRole(&'static str),
    /// `expires_at` has passed.
    #[error("token expired {ago} seconds ago (at unix time {expires_at}); ask for a new one")]
    Expired {
        /// When it expired (unix seconds).
        expires_at: u64,
        /// How long ago.
        ago: u64,
    },
    /// `created_at` is further in the future than the allowed clock skew.
    #[error("token claims to be created {ahead} seconds in the future; one of the two clocks is wrong")]
    FromFuture {
        /// Seconds ahead of our clock.
        ahead: u64,
    },
    /// `peer_id` does not name `public_key`.
    #[error("token's peer id does not belong to its public key")]
    PeerIdMismatch,
    /// The Ed25519 signature does not verify: the token was altered or forged.
    #[error("token signature is invalid: the token was altered or not made by the key it names")]
    BadSignature,
    /// An RSVP answers another invitation.
    #[error("this reply answers a different invitation (in_reply_to {found}, expected {expected})")]
    WrongReply {
        /// The invitation's id.
        expected: String,
        /// The RSVP's `in_reply_to`.
        found: String,
    },
    /// An RSVP claims to be created before the invitation it answers.
    #[error("this reply is dated before the invitation it answers")]
    RsvpOlderThanInvitation,
    /// The invitation says it takes no RSVPs.
    #[error("this invitation does not accept replies")]
    RsvpNotAccepted,
    /// An RSVP was already used (or, after a flood, cannot be proven unused).
    #[error("this reply was already used once; replies are single-use")]
    Replayed,
}

impl TokenError {
    /// A short stable name for the error (for metrics labels, test vectors
    /// and `--json` output).
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::TooLarge { .. } => "too_large",
            TokenError::UnknownPrefix => "unknown_prefix",
            TokenError::BadBase64 => "bad_base64",
            TokenError::BadDeflate => "bad_deflate",
            TokenError::DecompressedTooLarge { .. } => "deflate_bomb",
            TokenError::Truncated { .. } => "truncated",
            TokenError::TrailingBytes(_) => "trailing_bytes",
            TokenError::Malformed(_) => "malformed",
            TokenError::UnknownVersion(_) => "unknown_version",
            TokenError::LimitExceeded { .. } => "limit_exceeded",
            TokenError::WrongType { .. } => "wrong_type",
            TokenError::WrongRole(_) => "wrong_role",
            TokenError::Expired { .. } => "expired",
            TokenError::FromFuture { .. } => "from_future",
            TokenError::PeerIdMismatch => "peer_id_mismatch",
            TokenError::BadSignature => "bad_signature",
            TokenError::WrongReply { .. } => "wrong_reply",
            TokenError::RsvpOlderThanInvitation => "rsvp_older_than_invitation",
            TokenError::RsvpNotAccepted => "rsvp_not_accepted",
            TokenError::Replayed => "replayed",
        }
    }
}
