//! Signing keys: one key ring per algorithm, rotation on a schedule that is a pure function of
//! time, the JWKS document, and the stores that keep the keyset (a directory or MongoDB).
//!
//! - [`ring`]: the schedule as pure functions of the keyset and `now` (states, the active key,
//!   successors, rotate-now, revoke).
//! - [`jwk`]: key generation, RFC 7638 thumbprints, josekit signer/verifier objects and the JWKS
//!   document.
//! - [`Keys`]: the live handle the server uses to sign, verify and serve JWKS; it keeps an
//!   immutable snapshot that is swapped atomically whenever the keyset changes.
//! - [`KeyStore`]: where the keyset is remembered, with compare-and-swap writes
//!   ([`DirKeyStore`], [`MongoKeyStore`], [`MemoryKeyStore`]).

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub(crate) mod dir;
pub(crate) mod jwk;
mod manager;
pub(crate) mod memory;
pub(crate) mod mongo;
pub(crate) mod ring;

pub use dir::DirKeyStore;
pub(crate) use jwk::JwksDocument;
pub use manager::{Keys, ROTATION_LEASE};
pub use memory::MemoryKeyStore;
pub use mongo::MongoKeyStore;

use crate::store::StoreError;

/// A signing algorithm tokend can hold a key ring for; the names and the allow-list are shared
/// with the resource-server verifier (`docs/tokens.md`, "Validation").
pub use tokend_token_shape::Alg;

/// Default RSA modulus size in bits.
pub const DEFAULT_RSA_BITS: usize = 3072;
/// Smallest RSA modulus accepted (docs/keys.md).
pub(crate) const MIN_RSA_BITS: usize = 2048;
/// Leeway added to the longest token lifetime to get a retired key's retention: the validation
/// leeway, since a token is accepted that long past its `exp`.
pub(crate) const RETENTION_LEEWAY: Duration = tokend_token_shape::LEEWAY;

/// How the key rings behave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysConfig {
    /// Algorithms with a live key ring (`TOKEND_SIGNING_ALGS`).
    pub algs: Vec<Alg>,
    /// How long a key signs (`TOKEND_KEY_ROTATION`, default 7 days).
    pub rotation: Duration,
    /// How long a new key is published before it signs (`TOKEND_KEY_PREPUBLISH`, default 1 h).
    pub prepublish: Duration,
    /// How long a retired key stays for verification: max(access_ttl, refresh_ttl) + 30s leeway.
    pub retention: Duration,
    /// How often the keyset is reloaded from its store (`TOKEND_KEYSET_RELOAD`, at most 30 s).
    pub reload: Duration,
    /// RSA modulus size in bits: 3072 by default, at least 2048.
    pub rsa_bits: usize,
}

impl KeysConfig {
    /// Checks the settings that [`Keys::open`] relies on.
    pub(crate) fn validate(&self) -> Result<(), KeyError> {
        if self.algs.is_empty() {
            return Err(KeyError::Config("no signing algorithm".into()));
        }
        if self.rsa_bits < MIN_RSA_BITS || self.rsa_bits > 16384 {
            return Err(KeyError::Config(format!(
                "RSA keys must have {MIN_RSA_BITS} to 16384 bits, not {}",
                self.rsa_bits
            )));
        }
        if self.rotation.as_secs() == 0 {
            return Err(KeyError::Config("key rotation must be at least 1s".into()));
        }
        Ok(())
    }

    /// The schedule in whole seconds.
    pub(crate) fn schedule(&self) -> ring::Schedule {
        ring::Schedule {
            rotation: crate::clock::secs(self.rotation),
            prepublish: crate::clock::secs(self.prepublish),
            retention: crate::clock::secs(self.retention),
        }
    }
}

/// Where a key is in its life, a pure function of its timestamps, `revoked` and `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published in JWKS, not signing yet (`now < activates`).
    Pending,
    /// Signing (`activates <= now < retires`).
    Active,
    /// Published and verifying, no longer signing (`retires <= now < expires`).
    Retired,
    /// Revoked or past `expires`: neither published nor verifying.
    Gone,
}

impl KeyState {
    /// Lower-case name, as in `tokend keys list` and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Gone => "gone",
        }
    }
}

/// A key as operators see it (`tokend keys list`). Timestamps are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// The RFC 7638 thumbprint.
    pub kid: String,
    /// The signing algorithm.
    pub alg: Alg,
    /// Where the key is in its life (docs/keys.md).
    pub state: KeyState,
    pub(crate) created: i64,
    pub(crate) activates: i64,
    pub(crate) retires: i64,
    pub(crate) expires: i64,
    pub(crate) revoked: bool,
}

/// Counts of keys by state for one algorithm, for metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct AlgKeyStats {
    pub(crate) alg: Alg,
    pub(crate) pending: usize,
    pub(crate) active: usize,
    pub(crate) retired: usize,
    /// Revoked or expired keys still recorded in the keyset.
    pub(crate) gone: usize,
    /// Seconds since the active key started signing; `None` without an active key.
    pub(crate) active_age_seconds: Option<i64>,
}

/// Key metrics for every configured algorithm, in configuration order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct KeyStats {
    pub(crate) algs: Vec<AlgKeyStats>,
}

/// A token whose header and signature passed; its claims are still to be checked by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub(crate) alg: Alg,
    pub(crate) kid: String,
    /// The payload, not yet checked.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Why a token's header or signature was refused (the domain's `Refusal` gives each its label
/// and description).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWS compact serialisation with a JSON header and JSON object claims.
    #[error("malformed token")]
    Malformed,
    /// `alg` missing or not one of the configured algorithms (`none`, `HS*`, ...).
    #[error("unsupported algorithm")]
    UnsupportedAlg,
    /// `typ` missing or not the expected token type.
    #[error("wrong token type")]
    WrongType,
    /// `kid` missing or not in the key ring.
    #[error("unknown key")]
    UnknownKey,
    /// The key named by `kid` belongs to another algorithm than the header's `alg`.
    #[error("key does not match the algorithm")]
    KeyMismatch,
    /// The key named by `kid` has been revoked.
    #[error("revoked key")]
    RevokedKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
}

/// What can go wrong managing keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The keyset store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Key generation, parsing, signing or sealing failed.
    #[error("crypto error: {0}")]
    Crypto(String),
    /// No key of this algorithm is active at the requested instant.
    #[error("no active {0} key")]
    NoActiveKey(Alg),
    /// The stored keyset could not be understood.
    #[error("corrupt keyset: {0}")]
    Corrupt(String),
    /// The key settings are unusable.
    #[error("invalid key configuration: {0}")]
    Config(String),
    /// Another instance holds the rotation lease; try again shortly.
    #[error("another instance is changing the keyset; try again")]
    Busy,
    /// The keyset kept changing underneath a write.
    #[error("the keyset changed concurrently; try again")]
    Conflict,
}

/// One key as stored. Timestamps are Unix seconds; `expires = retires + retention`.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// RFC 7638 thumbprint of the public key (base64url, no padding).
    pub kid: String,
    /// The signing algorithm.
    pub alg: Alg,
    pub(crate) created: i64,
    /// From when the key signs.
    pub activates: i64,
    /// From when the key no longer signs (it still verifies until `expires`).
    pub retires: i64,
    pub(crate) expires: i64,
    pub(crate) revoked: bool,
    /// PKCS#8 private key. Empty once the key is revoked (the private half is destroyed).
    pub(crate) private_pkcs8_der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("created", &self.created)
            .field("activates", &self.activates)
            .field("retires", &self.retires)
            .field("expires", &self.expires)
            .field("revoked", &self.revoked)
            .field("private_pkcs8_der", &"<redacted>")
            .finish()
    }
}

impl StoredKey {
    /// Public view of the key at `now`.
    pub(crate) fn info(&self, now: i64) -> KeyInfo {
        KeyInfo {
            kid: self.kid.clone(),
            alg: self.alg,
            state: ring::state(self, now),
            created: self.created,
            activates: self.activates,
            retires: self.retires,
            expires: self.expires,
            revoked: self.revoked,
        }
    }

    /// Checks what every store relies on before using a stored key: a base64url `kid`, ordered
    /// timestamps, and private key bytes unless revoked.
    pub(crate) fn check(&self) -> Result<(), KeyError> {
        if !is_valid_kid(&self.kid) {
            return Err(KeyError::Corrupt("invalid kid".into()));
        }
        if !(self.activates <= self.retires && self.retires <= self.expires) {
            return Err(KeyError::Corrupt(format!(
                "key {} has out-of-order timestamps",
                self.kid
            )));
        }
        if !self.revoked && self.private_pkcs8_der.is_empty() {
            return Err(KeyError::Corrupt(format!(
                "key {} has no private key",
                self.kid
            )));
        }
        Ok(())
    }
}

/// The whole keyset with its compare-and-swap version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredKeyset {
    pub(crate) version: u64,
    /// Every key not yet expired, of every algorithm.
    pub keys: Vec<StoredKey>,
}

/// A `kid` is an RFC 7638 thumbprint: 1 to 128 base64url characters. Checked before a `kid` is
/// used for anything, in particular before it names a file.
pub(crate) fn is_valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 128
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where the keyset is remembered.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// The stored keyset; `None` when nothing is stored yet.
    async fn load(&self) -> Result<Option<StoredKeyset>, KeyError>;
    /// Compare-and-swap: writes only if the stored version equals `expected` (None = nothing stored
    /// yet). Returns Ok(false) on conflict. The saved keyset's version is expected+1 (or 1).
    async fn save(&self, keyset: &StoredKeyset, expected: Option<u64>) -> Result<bool, KeyError>;
    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), KeyError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_key_debug_redacts_the_private_key() {
        let k = StoredKey {
            kid: "abc".into(),
            alg: Alg::EdDSA,
            created: 0,
            activates: 0,
            retires: 1,
            expires: 2,
            revoked: false,
            private_pkcs8_der: Zeroizing::new(vec![0x42; 8]),
        };
        let s = format!("{k:?}");
        assert!(s.contains("<redacted>"));
        assert!(!s.contains("66"));
    }

    #[test]
    fn kid_charset_is_base64url_only() {
        assert!(is_valid_kid("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"));
        for bad in ["", "../etc", "a/b", "a.b", "a b", "a%2f", "é"] {
            assert!(!is_valid_kid(bad), "{bad}");
        }
    }
}
