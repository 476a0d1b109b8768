//! The key of the keyed hash that `hash` columns are replaced with.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

/// The fewest bytes a key may have: a short key could be guessed, and with it every hashed
/// value checked against candidates.
pub const MIN_KEY_BYTES: usize = 16;

/// The prefix of a hashed value (`"hmac-sha256:…"`, then 64 hex digits).
pub const HASH_PREFIX: &str = "hmac-sha256:";

/// A secret key for HMAC-SHA256, which replaces the values of `hash` columns
/// ([`TableRule::hash`](super::TableRule::hash)): equal values give equal hashes under one key,
/// so they stay comparable (joins, "did it change"), without being readable. Another key gives
/// other hashes. Its `Debug` never shows the key.
///
/// ```
/// use bemi_core::rules::HashKey;
///
/// let key = HashKey::new("a key of at least sixteen bytes").unwrap();
/// assert_eq!(format!("{key:?}"), "HashKey(..)");
/// assert!(HashKey::new("short").is_err());
/// ```
#[derive(Clone)]
pub struct HashKey(Hmac<Sha256>);

impl HashKey {
    /// A key of the bytes `key`; at least [`MIN_KEY_BYTES`] long.
    pub fn new(key: impl AsRef<[u8]>) -> Result<HashKey> {
        let key = key.as_ref();
        if key.len() < MIN_KEY_BYTES {
            return Err(Error::config(format!(
                "the hash key has {} bytes; use at least {MIN_KEY_BYTES} (random bytes, e.g. \
                 `openssl rand -hex 32`)",
                key.len()
            )));
        }
        let mac = Hmac::<Sha256>::new_from_slice(key)
            .map_err(|_| Error::config("HMAC-SHA256 refused the hash key"))?;
        Ok(HashKey(mac))
    }

    /// The key held by the environment variable `variable`; the error names the variable,
    /// never its value.
    pub fn from_env(variable: &str) -> Result<HashKey> {
        let key = std::env::var(variable).map_err(|e| {
            Error::config(format!(
                "the hash key's environment variable {variable:?} is not set (or not UTF-8)"
            ))
            .with_source(e)
        })?;
        HashKey::new(key).map_err(|e| {
            Error::config(format!(
                "the hash key in the environment variable {variable:?} is unusable"
            ))
            .with_source(e)
        })
    }

    /// Appends the hash of `value` to `json` as a JSON string, `"hmac-sha256:<64 hex digits>"`.
    pub(crate) fn push_hash(&self, value: &[u8], json: &mut String) {
        let mut mac = self.0.clone();
        mac.update(value);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        json.reserve(HASH_PREFIX.len() + 66);
        json.push('"');
        json.push_str(HASH_PREFIX);
        for byte in mac.finalize().into_bytes() {
            json.push(char::from(HEX[usize::from(byte >> 4)]));
            json.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        json.push('"');
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(key: &HashKey, value: &str) -> String {
        let mut out = String::new();
        key.push_hash(value.as_bytes(), &mut out);
        out
    }

    #[test]
    fn equal_values_hash_alike_under_one_key_and_differently_under_another() {
        let a = HashKey::new("key number one, 32 bytes long!!").unwrap();
        let b = HashKey::new("key number two, 32 bytes long!!").unwrap();
        assert_eq!(hash(&a, "ann@example.com"), hash(&a, "ann@example.com"));
        assert_ne!(hash(&a, "ann@example.com"), hash(&a, "bob@example.com"));
        assert_ne!(hash(&a, "ann@example.com"), hash(&b, "ann@example.com"));
        let out = hash(&a, "ann@example.com");
        assert_eq!(out.len(), 2 + HASH_PREFIX.len() + 64, "{out}");
        assert!(!out.contains("ann"));
    }

    #[test]
    fn the_hash_is_hmac_sha256_of_the_value() {
        // RFC 4231, test case 2 ("Jefe" is under the minimum, so the key is checked apart).
        let mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        let mut out = String::new();
        HashKey(mac).push_hash(b"what do ya want for nothing?", &mut out);
        assert_eq!(
            out,
            "\"hmac-sha256:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843\""
        );
    }
}
