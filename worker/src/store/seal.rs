//! Sealed at rest: with a data key, a family's fields (the CPR number among them) and event
//! payloads are encrypted in the database file (XChaCha20-Poly1305, a random 24-byte nonce per
//! value), so a copied file does not show them.
//!
//! The key comes from the environment (`CAREPATH_DATA_KEY`, 32 bytes in base64; `carepath key
//! new` makes one) and never reaches the database: the file keeps only a check value that
//! tells a wrong key, or a missing one, at start. Without a key, values are stored as they are;
//! a database sealed once needs its key from then on.
//!
//! A sealed value is a JSON object `{"$sealed": "v1.BASE64URL"}` in place of the value: its
//! `v1` names the scheme, and the associated data names what it is (`fields`, `payload`), so a
//! sealed payload cannot be passed off as a family's fields.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::rows::to_json;

/// The environment variable holding the data key.
pub const KEY_ENV: &str = "CAREPATH_DATA_KEY";

/// The member that holds a sealed value.
const SEALED: &str = "$sealed";

/// Why a key or a sealed value cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The key is not 32 bytes of base64.
    #[error("{KEY_ENV} is not a data key: give 32 bytes in base64 (`carepath key new` makes one)")]
    BadKey,
    /// A sealed value does not open with this key, or is damaged.
    #[error("a sealed {what} does not open with this key: it was sealed with another, or damaged")]
    Open {
        /// What the value is.
        what: &'static str,
    },
    /// No randomness for a nonce: nothing is sealed, and nothing written.
    #[error("no randomness for a nonce: nothing was sealed or written")]
    Entropy,
    /// A sealed value, and no key.
    #[error("a sealed {what} needs the data key: set {KEY_ENV}")]
    NoKey {
        /// What the value is.
        what: &'static str,
    },
}

/// The data key, or none: seals and opens values.
#[derive(Clone, Default)]
pub struct Seal {
    key: Option<Arc<([u8; 32], XChaCha20Poly1305)>>,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seal")
            .field("key", &self.key.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl Seal {
    /// No key: values are stored as they are.
    pub fn none() -> Self {
        Self::default()
    }

    /// The key in base64 (standard or URL-safe).
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let text = text.trim();
        let bytes = STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
            .map_err(|_| SealError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SealError::BadKey)?;
        let cipher = XChaCha20Poly1305::new(&key.into());
        Ok(Seal {
            key: Some(Arc::new((key, cipher))),
        })
    }

    /// The key from [`KEY_ENV`], or none when it is unset.
    pub fn from_env() -> Result<Self, SealError> {
        match std::env::var(KEY_ENV) {
            Ok(text) if !text.trim().is_empty() => Self::from_base64(&text),
            _ => Ok(Self::none()),
        }
    }

    /// A new random key, in base64.
    pub fn new_key() -> Result<String, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(STANDARD.encode(key))
    }

    /// Whether a key is set.
    pub fn is_set(&self) -> bool {
        self.key.is_some()
    }

    /// A value that identifies the key without revealing it, kept in the database.
    pub fn check(&self) -> Option<String> {
        let (key, _) = self.key.as_deref()?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
        mac.update(b"carepath data key check v1");
        Some(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// Checks this key against `known`, the check a database keeps of the key that sealed it
    /// (at `path`). Returns the check to store when the database was not sealed before and is
    /// from now on. Refuses another key, and no key for a sealed database: either would fail on
    /// the first family read.
    pub fn reconcile(
        &self,
        known: Option<&str>,
        path: &str,
    ) -> Result<Option<String>, super::StoreError> {
        match (self.check(), known) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(SealError::NoKey { what: "database" }.into()),
            (Some(check), Some(known)) if check != known => Err(super::StoreError::NotReady {
                path: path.into(),
                reason: format!(
                    "it was sealed with another data key than {KEY_ENV}: give the key it was sealed with"
                ),
            }),
            (Some(_), Some(_)) => Ok(None),
            (Some(check), None) => Ok(Some(check)),
        }
    }

    /// `value` sealed as `what`, or as it is without a key. Fails, so that nothing is written,
    /// rather than store a value it could not seal.
    pub fn seal(&self, what: &'static str, value: &Value) -> Result<Value, SealError> {
        let Some(k) = self.key.as_deref() else {
            return Ok(value.clone());
        };
        // Without entropy no nonce is safe to use: a reused one would reveal both values.
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Entropy)?;
        let plain = to_json(value);
        let sealed =
            k.1.encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: what.as_bytes(),
                },
            )
            .map_err(|_| SealError::Entropy)?;
        let mut bytes = nonce.to_vec();
        bytes.extend(sealed);
        let mut obj = Map::new();
        obj.insert(
            SEALED.into(),
            Value::String(format!("v1.{}", URL_SAFE_NO_PAD.encode(bytes))),
        );
        Ok(Value::Object(obj))
    }

    /// `value` sealed as `what` (or as it is without a key), as the JSON text to store. Without
    /// a key this writes the value straight out, copying nothing: the firing batch stores a
    /// thousand notices' values at a time.
    pub fn seal_text(&self, what: &'static str, value: &Value) -> Result<String, SealError> {
        if self.key.is_none() {
            // Straight into a byte buffer: `Value`'s `Display` goes through the formatting
            // machinery a piece at a time.
            return Ok(to_json(value));
        }
        Ok(to_json(&self.seal(what, value)?))
    }

    /// `value` opened, when it is sealed; as it is otherwise.
    pub fn open(&self, what: &'static str, value: Value) -> Result<Value, SealError> {
        let Some(text) = value
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.get(SEALED))
            .and_then(Value::as_str)
        else {
            return Ok(value);
        };
        let Some(k) = self.key.as_deref() else {
            return Err(SealError::NoKey { what });
        };
        let bytes = text
            .strip_prefix("v1.")
            .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
            .filter(|b| b.len() > 24)
            .ok_or(SealError::Open { what })?;
        let (nonce, sealed) = bytes.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| SealError::Open { what })?;
        let plain =
            k.1.decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: what.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open { what })?;
        serde_json::from_slice(&plain).map_err(|_| SealError::Open { what })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_sealed_value_opens_with_its_key_only() {
        let key = Seal::new_key().expect("random");
        let seal = Seal::from_base64(&key).expect("key");
        let fields = json!({"cpr": "0101901234", "due_date": "2027-08-20"});
        let sealed = seal.seal("fields", &fields).expect("sealed");
        assert!(!sealed.to_string().contains("0101901234"), "{sealed}");
        assert_ne!(
            seal.seal("fields", &fields).expect("sealed"),
            sealed,
            "a fresh nonce each time"
        );
        assert_eq!(seal.open("fields", sealed.clone()), Ok(fields.clone()));
        // Not as something else, not with another key, not without one.
        assert_eq!(
            seal.open("payload", sealed.clone()),
            Err(SealError::Open { what: "payload" })
        );
        let other = Seal::from_base64(&Seal::new_key().expect("random")).expect("key");
        assert!(other.open("fields", sealed.clone()).is_err());
        assert_eq!(
            Seal::none().open("fields", sealed),
            Err(SealError::NoKey { what: "fields" })
        );
        // Without a key values stay as they are, and plain values open as they are.
        assert_eq!(Seal::none().seal("fields", &fields), Ok(fields.clone()));
        assert_eq!(seal.open("fields", fields.clone()), Ok(fields));
        assert!(matches!(Seal::from_base64("short"), Err(SealError::BadKey)));
        assert_ne!(seal.check(), other.check());
        assert_eq!(Seal::none().check(), None);
    }
}
