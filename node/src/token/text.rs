//! The `scpi://` text encoding: base64url(DEFLATE(canonical JSON)).

use std::io::{Read, Write};

use base64::Engine;
use flate2::Compression;
use flate2::bufread::DeflateDecoder;
use flate2::write::DeflateEncoder;
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};

use super::{B64, TEXT_PREFIX, Token, TokenBody, TokenError, limits};

/// Canonical JSON of the whole token: the body's fields plus `signature`
/// (base64url), keys sorted.
pub(super) fn to_json(token: &Token) -> Vec<u8> {
    let mut value = serde_json::to_value(&token.body).expect("token body serializes");
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("signature".to_owned(), B64.encode(token.signature).into());
    }
    serde_json::to_vec(&value).expect("JSON value serializes")
}

pub(super) fn encode(token: &Token) -> String {
    let json = to_json(token);
    let mut enc = DeflateEncoder::new(Vec::with_capacity(json.len()), Compression::best());
    enc.write_all(&json).expect("writing to a Vec cannot fail");
    let deflated = enc.finish().expect("writing to a Vec cannot fail");
    let mut out = String::with_capacity(TEXT_PREFIX.len() + deflated.len() * 4 / 3 + 4);
    out.push_str(TEXT_PREFIX);
    B64.encode_string(deflated, &mut out);
    out
}

/// Decodes the part after the prefix.
pub(super) fn decode(rest: &str) -> Result<Token, TokenError> {
    let deflated = B64.decode(rest).map_err(|_| TokenError::BadBase64)?;
    // Inflate at most MAX_INFLATED + 1 bytes: one byte more than allowed
    // proves a bomb without ever holding more than the limit.
    let mut json = Vec::with_capacity(deflated.len() * 4);
    let mut inflater = DeflateDecoder::new(&deflated[..]);
    (&mut inflater).take(limits::MAX_INFLATED as u64 + 1).read_to_end(&mut json).map_err(|_| TokenError::BadDeflate)?;
    if json.len() > limits::MAX_INFLATED {
        return Err(TokenError::DecompressedTooLarge { max: limits::MAX_INFLATED });
    }
    // Bytes after the DEFLATE stream: another reader might not ignore them.
    let rest = deflated.len() as u64 - inflater.total_in();
    if rest > 0 {
        return Err(TokenError::TrailingBytes(rest as usize));
    }
    from_json(&json)
}

/// Parses the JSON form of a whole token (body plus `signature`).
pub(super) fn from_json(json: &[u8]) -> Result<Token, TokenError> {
    let not_json = |e: serde_json::Error| TokenError::Malformed(format!("not JSON: {e}"));
    let mut de = serde_json::Deserializer::from_slice(json);
    let mut value = Strict.deserialize(&mut de).map_err(not_json)?;
    de.end().map_err(not_json)?;
    let map = value.as_object_mut().ok_or_else(|| TokenError::Malformed("not a JSON object".into()))?;
    // Version first, so a future format gets "unsupported version" rather
    // than a confusing complaint about a field it added.
    match map.get("version") {
        Some(serde_json::Value::String(v)) if super::is_known_version(v) => {}
        Some(serde_json::Value::String(v)) => {
            return Err(TokenError::UnknownVersion(v.chars().take(16).collect()));
        }
        Some(other) => {
            return Err(TokenError::UnknownVersion(other.to_string().chars().take(16).collect()));
        }
        None => return Err(TokenError::Malformed("missing field `version`".into())),
    }
    let signature = match map.remove("signature") {
        Some(serde_json::Value::String(s)) => B64
            .decode(s.as_bytes())
            .ok()
            .and_then(|v| <[u8; 64]>::try_from(v).ok())
            .ok_or_else(|| TokenError::Malformed("signature must be 64 bytes of base64url".into()))?,
        Some(_) => return Err(TokenError::Malformed("signature must be a string".into())),
        None => return Err(TokenError::Malformed("missing field `signature`".into())),
    };
    let body: TokenBody = serde_json::from_value(value).map_err(|e| TokenError::Malformed(e.to_string()))?;
    Ok(Token { body, signature })
}

/// Builds a JSON value like `serde_json::Value`'s own deserializer, but
/// refuses an object with two equal keys: serde_json keeps the last one,
/// and a token that two parsers read differently must not verify for one
/// of them. serde_json has no switch for this, and no maintained crate does
/// only this.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = serde_json::Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = a.next_element_seed(Strict)? {
            items.push(v);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut map = serde_json::Map::new();
        while let Some(k) = a.next_key::<String>()? {
            if map.contains_key(&k) {
                let shown: String = k.chars().take(32).collect();
                return Err(A::Error::custom(format!("duplicate key {shown:?}")));
            }
            let v = a.next_value_seed(Strict)?;
            map.insert(k, v);
        }
        Ok(serde_json::Value::Object(map))
    }
}
