//! [`MongoKeyStore`]: the keyset in MongoDB (production mode), shared by every instance.
//!
//! One document `{_id: "keyset", version, keys: [{kid, alg, created, activates, retires, expires,
//! revoked, sealed}]}` in collection `keyset`. Each private key is sealed with AES-256-GCM under
//! the key-encryption key (`TOKEND_KEY_ENCRYPTION_KEY`): `sealed = nonce (12 bytes, random) ||
//! ciphertext || tag`, with the kid as associated data so a sealed key cannot be moved to another
//! entry. Writes are compare-and-swap on `version`.

use async_trait::async_trait;
use mongodb::bson::{doc, spec::BinarySubtype, Binary};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::Collection;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use ::ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ::ring::rand::{SecureRandom, SystemRandom};

use super::{Alg, KeyError, KeyStore, StoredKey, StoredKeyset};
use crate::store::StoreError;

/// Collection holding the keyset document.
pub(crate) const COLLECTION: &str = "keyset";
const DOC_ID: &str = "keyset";
const STORE: &str = "mongodb";
const DUPLICATE_KEY: i32 = 11000;

/// The keyset in MongoDB with private keys sealed by a key-encryption key.
#[derive(Clone)]
pub struct MongoKeyStore {
    coll: Collection<KeysetDoc>,
    sealer: Sealer,
}

impl std::fmt::Debug for MongoKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoKeyStore")
            .field("collection", &self.coll.name())
            .field("kek", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct KeysetDoc {
    #[serde(rename = "_id")]
    id: String,
    version: i64,
    keys: Vec<KeyDoc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct KeyDoc {
    kid: String,
    alg: Alg,
    created: i64,
    activates: i64,
    retires: i64,
    expires: i64,
    revoked: bool,
    sealed: Binary,
}

fn unavailable(e: impl std::fmt::Display) -> KeyError {
    KeyError::Store(StoreError::unavailable(STORE, e))
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// AES-256-GCM sealing of private keys.
#[derive(Clone)]
pub(crate) struct Sealer {
    kek: std::sync::Arc<Zeroizing<[u8; 32]>>,
    rng: SystemRandom,
}

impl Sealer {
    /// A sealer for a 32-byte key-encryption key.
    pub(crate) fn new(kek: [u8; 32]) -> Sealer {
        Sealer {
            kek: std::sync::Arc::new(Zeroizing::new(kek)),
            rng: SystemRandom::new(),
        }
    }

    fn key(&self) -> Result<LessSafeKey, KeyError> {
        UnboundKey::new(&AES_256_GCM, &self.kek[..])
            .map(LessSafeKey::new)
            .map_err(|_| KeyError::Crypto("bad key-encryption key".into()))
    }

    /// `nonce || ciphertext || tag` of `plain` with `aad` as associated data.
    pub(crate) fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| KeyError::Crypto("no randomness".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        let mut body = Zeroizing::new(plain.to_vec());
        self.key()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut *body,
            )
            .map_err(|_| KeyError::Crypto("sealing failed".into()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens what [`Sealer::seal`] produced; fails cleanly on a wrong key, wrong `aad` or
    /// tampering.
    pub(crate) fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(KeyError::Corrupt("sealed key too short".into()));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| KeyError::Corrupt("bad nonce".into()))?;
        let mut buf = Zeroizing::new(body.to_vec());
        let plain_len = self
            .key()?
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| {
                KeyError::Corrupt(
                    "a private key does not open with the key-encryption key (wrong TOKEND_KEY_ENCRYPTION_KEY?)"
                        .into(),
                )
            })?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

impl MongoKeyStore {
    /// A store in collection `keyset` of `db`, sealing private keys with `kek`.
    pub fn new(db: mongodb::Database, kek: [u8; 32]) -> MongoKeyStore {
        MongoKeyStore {
            coll: db.collection(COLLECTION),
            sealer: Sealer::new(kek),
        }
    }

    fn seal_doc(&self, keyset: &StoredKeyset, version: u64) -> Result<KeysetDoc, KeyError> {
        let keys = keyset
            .keys
            .iter()
            .map(|k| {
                k.check()?;
                let sealed = if k.revoked {
                    Vec::new()
                } else {
                    self.sealer.seal(&k.private_pkcs8_der, k.kid.as_bytes())?
                };
                Ok(KeyDoc {
                    kid: k.kid.clone(),
                    alg: k.alg,
                    created: k.created,
                    activates: k.activates,
                    retires: k.retires,
                    expires: k.expires,
                    revoked: k.revoked,
                    sealed: Binary {
                        subtype: BinarySubtype::Generic,
                        bytes: sealed,
                    },
                })
            })
            .collect::<Result<Vec<_>, KeyError>>()?;
        Ok(KeysetDoc {
            id: DOC_ID.into(),
            version: i64::try_from(version).map_err(|e| KeyError::Corrupt(e.to_string()))?,
            keys,
        })
    }

    fn open_doc(&self, doc: KeysetDoc) -> Result<StoredKeyset, KeyError> {
        let version = u64::try_from(doc.version)
            .map_err(|_| KeyError::Corrupt("negative keyset version".into()))?;
        let keys = doc
            .keys
            .into_iter()
            .map(|k| {
                if !super::is_valid_kid(&k.kid) {
                    return Err(KeyError::Corrupt("invalid kid".into()));
                }
                let private_pkcs8_der = if k.revoked {
                    Zeroizing::new(Vec::new())
                } else {
                    self.sealer.open(&k.sealed.bytes, k.kid.as_bytes())?
                };
                let key = StoredKey {
                    kid: k.kid,
                    alg: k.alg,
                    created: k.created,
                    activates: k.activates,
                    retires: k.retires,
                    expires: k.expires,
                    revoked: k.revoked,
                    private_pkcs8_der,
                };
                key.check()?;
                Ok(key)
            })
            .collect::<Result<Vec<_>, KeyError>>()?;
        Ok(StoredKeyset { version, keys })
    }
}

#[async_trait]
impl KeyStore for MongoKeyStore {
    async fn load(&self) -> Result<Option<StoredKeyset>, KeyError> {
        let doc = self
            .coll
            .find_one(doc! { "_id": DOC_ID })
            .await
            .map_err(unavailable)?;
        doc.map(|d| self.open_doc(d)).transpose()
    }

    async fn save(&self, keyset: &StoredKeyset, expected: Option<u64>) -> Result<bool, KeyError> {
        let next = expected.map_or(1, |v| v + 1);
        let doc = self.seal_doc(keyset, next)?;
        match expected {
            None => match self.coll.insert_one(&doc).await {
                Ok(_) => Ok(true),
                Err(e) if is_duplicate_key(&e) => Ok(false),
                Err(e) => Err(unavailable(e)),
            },
            Some(v) => {
                let v = i64::try_from(v).map_err(|e| KeyError::Corrupt(e.to_string()))?;
                let r = self
                    .coll
                    .replace_one(doc! { "_id": DOC_ID, "version": v }, &doc)
                    .await
                    .map_err(unavailable)?;
                Ok(r.matched_count == 1)
            }
        }
    }

    async fn ping(&self) -> Result<(), KeyError> {
        self.coll
            .find_one(doc! { "_id": DOC_ID })
            .projection(doc! { "_id": 1 })
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_with_the_same_key_and_kid_only() {
        let s = Sealer::new([7u8; 32]);
        let plain = b"private key bytes";
        let sealed = s.seal(plain, b"kid-1").unwrap();
        assert_eq!(sealed.len(), 12 + plain.len() + 16);
        assert_ne!(&sealed[12..12 + plain.len()], plain);
        assert_eq!(s.open(&sealed, b"kid-1").unwrap().as_slice(), plain);
        // A fresh nonce every time.
        assert_ne!(s.seal(plain, b"kid-1").unwrap(), sealed);

        let wrong = Sealer::new([8u8; 32]);
        assert!(matches!(
            wrong.open(&sealed, b"kid-1"),
            Err(KeyError::Corrupt(_))
        ));
        assert!(matches!(
            s.open(&sealed, b"kid-2"),
            Err(KeyError::Corrupt(_))
        ));
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(matches!(
            s.open(&tampered, b"kid-1"),
            Err(KeyError::Corrupt(_))
        ));
        assert!(matches!(
            s.open(&sealed[..10], b"kid-1"),
            Err(KeyError::Corrupt(_))
        ));
    }

    /// Runs against a live MongoDB-wire server named by `TOKEND_TEST_MONGODB_URI`; skipped
    /// otherwise.
    #[tokio::test]
    async fn keyset_round_trip_and_compare_and_swap_against_a_live_server() {
        let Ok(uri) = std::env::var("TOKEND_TEST_MONGODB_URI") else {
            return;
        };
        let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
        let db = client.database(&format!(
            "tokend_keys_test_{}",
            uuid::Uuid::new_v4().simple()
        ));
        let store = MongoKeyStore::new(db.clone(), [3u8; 32]);
        store.ping().await.unwrap();
        assert_eq!(store.load().await.unwrap(), None);

        let m = crate::keys::jwk::generate(Alg::EdDSA, 0).unwrap();
        let mut ks = StoredKeyset {
            version: 0,
            keys: vec![StoredKey {
                kid: m.kid,
                alg: Alg::EdDSA,
                created: 1,
                activates: 1,
                retires: 2,
                expires: 3,
                revoked: false,
                private_pkcs8_der: m.private_pkcs8_der,
            }],
        };
        assert!(store.save(&ks, None).await.unwrap());
        assert!(
            !store.save(&ks, None).await.unwrap(),
            "second insert conflicts"
        );
        let loaded = store.load().await.unwrap().unwrap();
        assert_eq!(loaded.version, 1);
        assert_eq!(loaded.keys, ks.keys);
        ks.keys[0].revoked = true;
        ks.keys[0].private_pkcs8_der = Zeroizing::new(Vec::new());
        assert!(!store.save(&ks, Some(7)).await.unwrap());
        assert!(store.save(&ks, Some(1)).await.unwrap());
        assert_eq!(store.load().await.unwrap().unwrap().version, 2);

        let wrong = MongoKeyStore::new(db.clone(), [4u8; 32]);
        ks.keys[0].revoked = false;
        ks.keys[0].private_pkcs8_der = Zeroizing::new(vec![1, 2, 3]);
        assert!(store.save(&ks, Some(2)).await.unwrap());
        assert!(matches!(wrong.load().await, Err(KeyError::Corrupt(_))));
        db.drop().await.unwrap();
    }
}
