//! [`DirKeyStore`]: the keyset in a directory (embedded mode).
//!
//! Layout: `manifest.json` (version and each key's kid, alg, timestamps, revoked flag) and one
//! `<kid>.pem` PKCS#8 private key per key that is not revoked. The directory is `0700`, files
//! `0600`. Every file is written atomically (a temporary file in the same directory, fsync,
//! rename, fsync of the directory); key files are written before the manifest that names them,
//! and files no manifest names any more are removed only after the manifest is in place. A crash
//! at any point therefore leaves the previous or the new keyset, never a torn one. Only this
//! process writes (a process-local mutex serialises writers); compare-and-swap compares the
//! manifest version on disk.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{is_valid_kid, Alg, KeyError, KeyStore, StoredKey, StoredKeyset};
use crate::store::StoreError;

const MANIFEST: &str = "manifest.json";
const TMP_MARK: &str = ".tmp-";
const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";
const STORE: &str = "keys directory";

/// The keyset in a directory.
#[derive(Debug, Clone)]
pub struct DirKeyStore {
    dir: PathBuf,
    lock: Arc<Mutex<()>>,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    version: u64,
    keys: Vec<ManifestKey>,
}

#[derive(Serialize, Deserialize)]
struct ManifestKey {
    kid: String,
    alg: Alg,
    created: i64,
    activates: i64,
    retires: i64,
    expires: i64,
    revoked: bool,
}

fn io(e: impl std::fmt::Display) -> KeyError {
    KeyError::Store(StoreError::unavailable(STORE, e))
}

impl DirKeyStore {
    /// A store in `dir`; the directory is created (mode 0700) on first use.
    pub fn new(dir: impl Into<PathBuf>) -> DirKeyStore {
        DirKeyStore {
            dir: dir.into(),
            lock: Arc::new(Mutex::new(())),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> Result<T, KeyError> + Send + 'static,
    ) -> Result<T, KeyError> {
        let dir = self.dir.clone();
        let lock = self.lock.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            f(&dir)
        })
        .await
        .map_err(io)?
    }
}

fn ensure_dir(dir: &Path) -> Result<(), KeyError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir).map_err(io)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
    }
    Ok(())
}

fn key_path(dir: &Path, kid: &str) -> Result<PathBuf, KeyError> {
    if !is_valid_kid(kid) {
        return Err(KeyError::Corrupt("invalid kid".into()));
    }
    Ok(dir.join(format!("{kid}.pem")))
}

fn pem_encode(der: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut out = Zeroizing::new(String::with_capacity(b64.len() + b64.len() / 64 + 64));
    out.push_str(PEM_BEGIN);
    out.push('\n');
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(PEM_END);
    out.push('\n');
    out
}

fn pem_decode(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let start = text.find(PEM_BEGIN)? + PEM_BEGIN.len();
    let end = text[start..].find(PEM_END)? + start;
    let body: Zeroizing<String> = Zeroizing::new(
        text[start..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect(),
    );
    STANDARD.decode(body.as_bytes()).ok().map(Zeroizing::new)
}

fn fsync_dir(dir: &Path) -> Result<(), KeyError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Writes `bytes` to `dir/name` atomically with mode 0600 (the directory is fsynced by the caller).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), KeyError> {
    let tmp = dir.join(format!(
        ".{name}{TMP_MARK}{}",
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>, KeyError> {
    match fs::read(dir.join(MANIFEST)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| KeyError::Corrupt(format!("{MANIFEST}: {e}"))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(e)),
    }
}

fn load(dir: &Path) -> Result<Option<StoredKeyset>, KeyError> {
    ensure_dir(dir)?;
    let Some(manifest) = read_manifest(dir)? else {
        return Ok(None);
    };
    let mut keys = Vec::with_capacity(manifest.keys.len());
    for m in manifest.keys {
        let private_pkcs8_der = if m.revoked {
            Zeroizing::new(Vec::new())
        } else {
            let path = key_path(dir, &m.kid)?;
            let text = Zeroizing::new(
                fs::read_to_string(&path)
                    .map_err(|e| KeyError::Corrupt(format!("key file for {}: {e}", m.kid)))?,
            );
            pem_decode(&text)
                .ok_or_else(|| KeyError::Corrupt(format!("key file for {} is not PEM", m.kid)))?
        };
        let key = StoredKey {
            kid: m.kid,
            alg: m.alg,
            created: m.created,
            activates: m.activates,
            retires: m.retires,
            expires: m.expires,
            revoked: m.revoked,
            private_pkcs8_der,
        };
        key.check()?;
        keys.push(key);
    }
    Ok(Some(StoredKeyset {
        version: manifest.version,
        keys,
    }))
}

fn save(dir: &Path, keyset: &StoredKeyset, expected: Option<u64>) -> Result<bool, KeyError> {
    ensure_dir(dir)?;
    let current = read_manifest(dir)?.map(|m| m.version);
    if current != expected {
        return Ok(false);
    }
    for k in &keyset.keys {
        k.check()?;
    }

    // 1. Key files, before any manifest names them.
    let mut wrote = false;
    for k in keyset.keys.iter().filter(|k| !k.revoked) {
        let path = key_path(dir, &k.kid)?;
        let pem = pem_encode(&k.private_pkcs8_der);
        let same = fs::read(&path)
            .map(|old| Zeroizing::new(old).as_slice() == pem.as_bytes())
            .unwrap_or(false);
        if !same {
            write_atomic(dir, &format!("{}.pem", k.kid), pem.as_bytes())?;
            wrote = true;
        }
    }
    if wrote {
        fsync_dir(dir)?;
    }

    // 2. The manifest: the commit point.
    let manifest = Manifest {
        version: expected.map_or(1, |v| v + 1),
        keys: keyset
            .keys
            .iter()
            .map(|k| ManifestKey {
                kid: k.kid.clone(),
                alg: k.alg,
                created: k.created,
                activates: k.activates,
                retires: k.retires,
                expires: k.expires,
                revoked: k.revoked,
            })
            .collect(),
    };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(io)?;
    write_atomic(dir, MANIFEST, &bytes)?;
    fsync_dir(dir)?;

    // 3. Files no longer referenced, and temporary files left by an interrupted write.
    let live: std::collections::HashSet<String> = keyset
        .keys
        .iter()
        .filter(|k| !k.revoked)
        .map(|k| format!("{}.pem", k.kid))
        .collect();
    let mut removed = false;
    for entry in fs::read_dir(dir).map_err(io)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale_key = name
            .strip_suffix(".pem")
            .is_some_and(|kid| is_valid_kid(kid) && !live.contains(&name));
        let temp = name.starts_with('.') && name.contains(TMP_MARK);
        if stale_key || temp {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(file = %name, error = %e, "could not remove an old key file");
            }
            removed = true;
        }
    }
    if removed {
        fsync_dir(dir)?;
    }
    Ok(true)
}

#[async_trait]
impl KeyStore for DirKeyStore {
    async fn load(&self) -> Result<Option<StoredKeyset>, KeyError> {
        self.blocking(load).await
    }

    async fn save(&self, keyset: &StoredKeyset, expected: Option<u64>) -> Result<bool, KeyError> {
        let keyset = keyset.clone();
        self.blocking(move |dir| save(dir, &keyset, expected)).await
    }

    async fn ping(&self) -> Result<(), KeyError> {
        self.blocking(|dir| {
            ensure_dir(dir)?;
            read_manifest(dir).map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::keys::{jwk, Keys, KeysConfig};
    use std::time::Duration;

    fn key(alg: Alg, activates: i64) -> StoredKey {
        let m = jwk::generate(alg, 2048).unwrap();
        StoredKey {
            kid: m.kid,
            alg,
            created: activates,
            activates,
            retires: activates + 100,
            expires: activates + 200,
            revoked: false,
            private_pkcs8_der: m.private_pkcs8_der,
        }
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn round_trip_with_private_modes_and_compare_and_swap() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fresh").join("keys");
        let store = DirKeyStore::new(&dir);
        assert_eq!(store.load().await.unwrap(), None);
        assert!(dir.is_dir(), "created on first start");
        store.ping().await.unwrap();

        let ks = StoredKeyset {
            version: 0,
            keys: vec![key(Alg::EdDSA, 10), key(Alg::RS256, 10)],
        };
        assert!(!store.save(&ks, Some(3)).await.unwrap());
        assert!(store.save(&ks, None).await.unwrap());
        let loaded = store.load().await.unwrap().unwrap();
        assert_eq!(loaded.version, 1);
        assert_eq!(loaded.keys, ks.keys);
        assert!(!store.save(&ks, None).await.unwrap(), "stale version");
        #[cfg(unix)]
        {
            assert_eq!(mode(&dir), 0o700);
            for k in &ks.keys {
                assert_eq!(mode(&dir.join(format!("{}.pem", k.kid))), 0o600);
            }
            assert_eq!(mode(&dir.join(MANIFEST)), 0o600);
        }
        let pem = fs::read_to_string(dir.join(format!("{}.pem", ks.keys[0].kid))).unwrap();
        assert!(pem.starts_with(PEM_BEGIN));
        let manifest = fs::read_to_string(dir.join(MANIFEST)).unwrap();
        assert!(!manifest.contains(&STANDARD.encode(&*ks.keys[0].private_pkcs8_der)));

        // Dropping a key and revoking another removes their files after the manifest moved on.
        let mut next = loaded.clone();
        let gone = next.keys.remove(1);
        next.keys[0].revoked = true;
        next.keys[0].private_pkcs8_der = Zeroizing::new(Vec::new());
        assert!(store.save(&next, Some(1)).await.unwrap());
        assert!(!dir.join(format!("{}.pem", gone.kid)).exists());
        assert!(!dir.join(format!("{}.pem", next.keys[0].kid)).exists());
        let reloaded = store.load().await.unwrap().unwrap();
        assert_eq!(reloaded.version, 2);
        assert_eq!(reloaded.keys, next.keys);
    }

    #[tokio::test]
    async fn an_interrupted_write_leaves_the_previous_keyset_intact() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        fs::write(dir.join("README.md"), "keys live here\n").unwrap();
        let store = DirKeyStore::new(&dir);
        let first = StoredKeyset {
            version: 0,
            keys: vec![key(Alg::EdDSA, 10)],
        };
        assert!(store.save(&first, None).await.unwrap());
        let before = store.load().await.unwrap().unwrap();

        // A crash after the new key file was renamed into place but before the manifest was:
        // an unreferenced key file, a truncated temporary manifest and a half-written temporary
        // key file.
        let newer = key(Alg::EdDSA, 20);
        fs::write(
            dir.join(format!("{}.pem", newer.kid)),
            pem_encode(&newer.private_pkcs8_der).as_bytes(),
        )
        .unwrap();
        fs::write(
            dir.join(format!(".{MANIFEST}{TMP_MARK}dead")),
            b"{\"version\":2,\"keys\":[{\"ki",
        )
        .unwrap();
        fs::write(
            dir.join(format!(".{}.pem{TMP_MARK}beef", newer.kid)),
            &PEM_BEGIN.as_bytes()[..10],
        )
        .unwrap();

        let after = store.load().await.unwrap().unwrap();
        assert_eq!(after, before);

        // The next save proceeds from the intact version and cleans up the debris.
        let mut next = after.clone();
        next.keys.push(key(Alg::RS256, 30));
        assert!(store.save(&next, Some(after.version)).await.unwrap());
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(TMP_MARK)), "{names:?}");
        assert!(!names.contains(&format!("{}.pem", newer.kid)));
        assert!(
            names.contains(&"README.md".to_string()),
            "foreign files are left alone"
        );
        assert_eq!(store.load().await.unwrap().unwrap().keys, next.keys);
    }

    #[tokio::test]
    async fn a_manifest_with_a_bad_kid_never_builds_a_path() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            tmp.path().join(MANIFEST),
            r#"{"version":1,"keys":[{"kid":"../../etc/passwd","alg":"EdDSA","created":0,"activates":0,"retires":1,"expires":2,"revoked":false}]}"#,
        )
        .unwrap();
        let store = DirKeyStore::new(tmp.path());
        assert!(matches!(store.load().await, Err(KeyError::Corrupt(_))));
        fs::write(tmp.path().join(MANIFEST), b"{not json").unwrap();
        assert!(matches!(store.load().await, Err(KeyError::Corrupt(_))));
    }

    #[tokio::test]
    async fn keys_survive_a_restart_from_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_700_000_000_000);
        let cfg = KeysConfig {
            algs: vec![Alg::EdDSA, Alg::RS256],
            rotation: Duration::from_secs(7 * 86_400),
            prepublish: Duration::from_secs(3600),
            retention: Duration::from_secs(14 * 86_400 + 30),
            reload: Duration::from_secs(30),
            rsa_bits: 2048,
        };
        let a = Keys::open(
            cfg.clone(),
            Arc::new(DirKeyStore::new(tmp.path())),
            None,
            clock.clone(),
        )
        .await
        .unwrap();
        let claims = serde_json::json!({"sub": "u"}).as_object().unwrap().clone();
        let t = a
            .sign(Alg::RS256, "at+jwt", &claims, 1_700_000_000)
            .unwrap();
        drop(a);
        let b = Keys::open(cfg, Arc::new(DirKeyStore::new(tmp.path())), None, clock)
            .await
            .unwrap();
        assert_eq!(
            b.verify(&t, "at+jwt", 1_700_000_000).unwrap().claims,
            claims
        );
        assert_eq!(
            b.sign(Alg::RS256, "at+jwt", &claims, 1_700_000_000)
                .unwrap(),
            t
        );
    }
}
