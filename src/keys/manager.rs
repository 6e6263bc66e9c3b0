//! [`Keys`]: the live key rings of one process. Signing, verifying and JWKS read an immutable
//! snapshot (josekit objects built once per key, the JWKS bytes serialised once per change) that
//! maintenance swaps atomically; writes go to the [`KeyStore`] with compare-and-swap, under the
//! rotation lease when instances share a store.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::FutureExt as _;
use serde_json::{Map, Value};
use tokend_token_shape::typ_matches;
use zeroize::Zeroizing;

use super::jwk::{self, JwksDocument, KeyMaterial};
use super::ring::{self, Minted, Revoked, Schedule};
use super::{
    is_valid_kid, Alg, AlgKeyStats, KeyError, KeyInfo, KeyState, KeyStats, KeyStore, KeysConfig,
    StoredKey, StoredKeyset, TokenError, Verified,
};
use crate::clock::SharedClock;
use crate::store::LeaseStore;

/// Name of the lease that lets one instance at a time change the shared keyset.
pub const ROTATION_LEASE: &str = "keys:rotation";
/// How long the lease is held at most (it is released as soon as the write is done).
const LEASE_TTL_MS: i64 = 120_000;
/// How long operator commands wait for the lease before answering [`KeyError::Busy`].
const LEASE_WAIT: Duration = Duration::from_secs(10);
const LEASE_RETRY: Duration = Duration::from_millis(200);
/// Longest maintenance interval: every instance reloads within 30 s (docs/keys.md).
const MAX_RELOAD: Duration = Duration::from_secs(30);
const MIN_RELOAD: Duration = Duration::from_millis(50);

/// The key rings of this process. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Keys {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: KeysConfig,
    sched: Schedule,
    store: Arc<dyn KeyStore>,
    lease: Option<Arc<dyn LeaseStore>>,
    clock: SharedClock,
    /// Identifies this process as a lease holder.
    holder: String,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Serialises this process's writers (maintenance and operator commands).
    writer: tokio::sync::Mutex<()>,
    /// Keys this process has created, per algorithm (the rotations metric).
    created: std::sync::Mutex<HashMap<Alg, u64>>,
    /// Told of each change this process wrote (the account events of docs/events.md).
    observer: std::sync::OnceLock<KeyObserver>,
}

/// A change to the keyset that this process made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyChange {
    /// A successor key was created (a rotation, or the replacement of a revoked key).
    Created {
        kid: String,
        alg: Alg,
        activates: i64,
    },
    /// A key was revoked.
    Revoked { kid: String },
}

/// What is told of each [`KeyChange`].
pub(crate) type KeyObserver = Arc<dyn Fn(KeyChange) + Send + Sync>;

/// An immutable view of the keyset.
struct Snapshot {
    version: u64,
    /// Every stored key with its private bytes stripped, in JWKS order.
    keys: Vec<StoredKey>,
    /// Signer and verifier of every key that is not revoked, by kid.
    material: HashMap<String, Arc<KeyMaterial>>,
    /// Kids in the JWKS, in order.
    published: Vec<String>,
    jwks: Arc<JwksDocument>,
}

impl Snapshot {
    fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            keys: Vec::new(),
            material: HashMap::new(),
            published: Vec::new(),
            jwks: Arc::new(JwksDocument::new(&[])),
        }
    }
}

/// Keys without private bytes, ordered by configured algorithm, activation, kid.
fn public_view(keys: &[StoredKey], algs: &[Alg]) -> Vec<StoredKey> {
    let mut out: Vec<StoredKey> = keys
        .iter()
        .map(|k| StoredKey {
            private_pkcs8_der: Zeroizing::new(Vec::new()),
            ..k.clone()
        })
        .collect();
    let rank = |a: Alg| algs.iter().position(|x| *x == a).unwrap_or(algs.len());
    out.sort_by(|a, b| (rank(a.alg), a.activates, &a.kid).cmp(&(rank(b.alg), b.activates, &b.kid)));
    out
}

/// Kids published at `now`: configured algorithms, not revoked, not expired.
fn published(view: &[StoredKey], algs: &[Alg], now: i64) -> Vec<String> {
    view.iter()
        .filter(|k| algs.contains(&k.alg) && ring::verifies(k, now))
        .map(|k| k.kid.clone())
        .collect()
}

/// The operations that change the keyset.
enum Op<'a> {
    Maintain,
    Rotate(Vec<Alg>),
    Revoke(&'a str),
}

enum OpResult {
    Maintained,
    Rotated(Vec<String>),
    Revoked(Revoked),
}

/// Keys generated ahead of a write, taken as the schedule asks for them.
#[derive(Default)]
struct Pool(HashMap<Alg, Vec<Minted>>);

impl Pool {
    async fn fill(&mut self, needed: &[Alg], rsa_bits: usize) -> Result<(), KeyError> {
        for &alg in needed {
            let want = needed.iter().filter(|a| **a == alg).count();
            while self.0.get(&alg).map_or(0, Vec::len) < want {
                let span = tracing::Span::current();
                let minted = tokio::task::spawn_blocking(move || {
                    span.in_scope(|| jwk::generate(alg, rsa_bits))
                })
                .await
                .map_err(|e| KeyError::Crypto(format!("key generation task failed: {e}")))??;
                self.0.entry(alg).or_default().push(minted);
            }
        }
        Ok(())
    }

    fn take(&mut self, alg: Alg) -> Result<Minted, KeyError> {
        self.0
            .get_mut(&alg)
            .and_then(Vec::pop)
            .ok_or_else(|| KeyError::Crypto(format!("no {alg} key generated")))
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snap = self.snapshot();
        f.debug_struct("Keys")
            .field("algs", &self.inner.cfg.algs)
            .field("version", &snap.version)
            .field(
                "kids",
                &snap.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Loads the keyset from `store` (initialising a fresh one: one active key per alg, activating
    /// now), runs one rotation step, builds the snapshot. `lease` is Some in production mode (Redis
    /// lease `keys:rotation`); None means this process is the only writer (directory store).
    pub async fn open(
        cfg: KeysConfig,
        store: Arc<dyn KeyStore>,
        lease: Option<Arc<dyn LeaseStore>>,
        clock: SharedClock,
    ) -> Result<Keys, KeyError> {
        cfg.validate()?;
        let keys = Keys {
            inner: Arc::new(Inner {
                sched: cfg.schedule(),
                cfg,
                store,
                lease,
                clock,
                holder: uuid::Uuid::new_v4().to_string(),
                snapshot: RwLock::new(Arc::new(Snapshot::empty())),
                writer: tokio::sync::Mutex::new(()),
                created: std::sync::Mutex::new(HashMap::new()),
                observer: std::sync::OnceLock::new(),
            }),
        };
        // When another instance holds the lease it is initialising or rotating the keyset:
        // give it a moment, then go on (readiness reports a missing key until maintenance
        // picks it up).
        for attempt in 0..25 {
            keys.tick().await?;
            if keys.inner.cfg.algs.iter().all(|a| keys.has_active(*a)) {
                break;
            }
            if attempt == 24 {
                tracing::warn!("no active signing key yet for every algorithm; will keep trying");
            } else {
                tokio::time::sleep(LEASE_RETRY).await;
            }
        }
        Ok(keys)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.inner
            .snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn now(&self) -> i64 {
        self.inner.clock.now()
    }

    /// Signs `claims` (a JSON object) as a JWS compact JWT with header {"alg","kid","typ"} using
    /// the key of `alg` that is ACTIVE AT UNIX SECOND `at` (so re-signing identical claims at the
    /// same `at` gives an identical token: Ed25519 and RSASSA-PKCS1-v1_5 are deterministic).
    /// Error if no active key.
    pub fn sign(
        &self,
        alg: Alg,
        typ: &str,
        claims: &Map<String, Value>,
        at: i64,
    ) -> Result<String, KeyError> {
        if !self.inner.cfg.algs.contains(&alg) {
            return Err(KeyError::NoActiveKey(alg));
        }
        let snap = self.snapshot();
        let now = self.now();
        let key = ring::active_at(&snap.keys, alg, at)
            .filter(|k| ring::verifies(k, now))
            .ok_or(KeyError::NoActiveKey(alg))?;
        let material = snap
            .material
            .get(&key.kid)
            .ok_or(KeyError::NoActiveKey(alg))?;
        material.sign(typ, claims)
    }

    /// Header rules + signature only (claims are checked by the caller): `alg` one of the
    /// configured algorithms (never `none` or `HS*`); `typ` equal to `expected_typ` or
    /// `application/<expected_typ>` (case-insensitive); `kid` required and looked up only in the
    /// in-memory ring; the key of the header's `alg`, not revoked and not expired at `now`
    /// (pending keys verify too); then the signature.
    pub fn verify(
        &self,
        token: &str,
        expected_typ: &str,
        now: i64,
    ) -> Result<Verified, TokenError> {
        let header = jwk::parse_header(token)?;
        let alg = match header.get("alg") {
            Some(Value::String(name)) => Alg::parse(name)
                .filter(|a| self.inner.cfg.algs.contains(a))
                .ok_or(TokenError::UnsupportedAlg)?,
            _ => return Err(TokenError::UnsupportedAlg),
        };
        match header.get("typ") {
            Some(Value::String(typ)) if typ_matches(typ, expected_typ) => {}
            _ => return Err(TokenError::WrongType),
        }
        let kid = match header.get("kid") {
            Some(Value::String(kid)) => kid.as_str(),
            _ => return Err(TokenError::UnknownKey),
        };
        let snap = self.snapshot();
        let key = snap
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(TokenError::UnknownKey)?;
        if key.revoked {
            return Err(TokenError::RevokedKey);
        }
        if key.alg != alg {
            return Err(TokenError::KeyMismatch);
        }
        if !ring::verifies(key, now) {
            return Err(TokenError::UnknownKey);
        }
        let material = snap.material.get(kid).ok_or(TokenError::UnknownKey)?;
        let claims = material.verify(token)?;
        Ok(Verified {
            alg,
            kid: key.kid.clone(),
            claims,
        })
    }

    /// Current JWKS: `{"keys":[...]}` of pending, active and retired keys (not revoked, not
    /// expired) with `kty, kid, use, alg` and public parameters only, serialised once per change,
    /// with a strong ETag.
    pub fn jwks(&self) -> Arc<JwksDocument> {
        self.snapshot().jwks.clone()
    }

    /// One maintenance step at `clock.now()`: reload from the store; create a successor when one
    /// is due (off the executor), forget expired keys; save with compare-and-swap on the keyset
    /// version (on conflict: reload, retry once), under the lease when there is one (only the
    /// lease holder writes; others just reload). Rebuilds the snapshot and JWKS if anything
    /// changed, and returns whether it did.
    pub async fn tick(&self) -> Result<bool, KeyError> {
        let _writer = self.inner.writer.lock().await;
        let (changed, _) = self.run(&Op::Maintain, false).await?;
        Ok(changed)
    }

    /// Background task: [`Keys::tick`] every min(`cfg.reload`, 30 s) until `shutdown` resolves;
    /// logs errors, never panics.
    pub(crate) fn spawn_maintenance(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let keys = self.clone();
        let every = self.inner.cfg.reload.clamp(MIN_RELOAD, MAX_RELOAD);
        tokio::spawn(async move {
            tokio::pin!(shutdown);
            let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = interval.tick() => {
                        match std::panic::AssertUnwindSafe(keys.tick()).catch_unwind().await {
                            Ok(Ok(true)) => tracing::debug!("keyset reloaded"),
                            Ok(Ok(false)) => {}
                            Ok(Err(e)) => tracing::warn!(error = %e, "key maintenance failed"),
                            Err(_) => tracing::error!("key maintenance panicked"),
                        }
                    }
                }
            }
        })
    }

    /// Operator: start a successor now for `alg` (or every alg): a new PENDING key activating at
    /// now + prepublish; the active key's `retires` becomes that instant. A pending successor
    /// that never signed is replaced. Returns the new keys.
    pub async fn rotate_now(&self, alg: Option<Alg>) -> Result<Vec<KeyInfo>, KeyError> {
        let algs = match alg {
            Some(a) if !self.inner.cfg.algs.contains(&a) => {
                return Err(KeyError::Config(format!(
                    "{a} is not a configured signing algorithm"
                )))
            }
            Some(a) => vec![a],
            None => self.inner.cfg.algs.clone(),
        };
        let _writer = self.inner.writer.lock().await;
        let (_, result) = self.run(&Op::Rotate(algs), true).await?;
        let OpResult::Rotated(kids) = result else {
            return Ok(Vec::new());
        };
        Ok(self
            .list()
            .into_iter()
            .filter(|k| kids.contains(&k.kid))
            .collect())
    }

    /// Operator: a compromised key. Marks it revoked (out of JWKS and verification at once in
    /// this process, in every other within the reload interval) and destroys its private key.
    /// If it was the active key of its algorithm, a replacement is active immediately: a pending
    /// successor is brought forward to activate now, otherwise a new key is created that
    /// activates now. This is the one case where a key signs without prepublication: resource
    /// servers refetch JWKS on the unknown `kid`. Returns false if the kid is unknown.
    pub async fn revoke(&self, kid: &str) -> Result<bool, KeyError> {
        if !is_valid_kid(kid) {
            return Ok(false);
        }
        let _writer = self.inner.writer.lock().await;
        let (_, result) = self.run(&Op::Revoke(kid), true).await?;
        match result {
            OpResult::Revoked(Revoked::Unknown) => Ok(false),
            OpResult::Revoked(Revoked::Now { replacement }) => {
                tracing::warn!(kid, replacement = ?replacement, "signing key revoked");
                self.tell(KeyChange::Revoked {
                    kid: kid.to_string(),
                });
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    /// Tells `observer` of every later change this process writes to the keyset (the first
    /// observer stays).
    pub(crate) fn observe(&self, observer: KeyObserver) {
        let _ = self.inner.observer.set(observer);
    }

    fn tell(&self, change: KeyChange) {
        if let Some(observer) = self.inner.observer.get() {
            observer(change);
        }
    }

    /// Every key in the keyset (revoked ones included until they expire), with its state now.
    pub fn list(&self) -> Vec<KeyInfo> {
        let now = self.now();
        self.snapshot().keys.iter().map(|k| k.info(now)).collect()
    }

    /// Whether `alg` has a key that signs at `clock.now()`.
    pub(crate) fn has_active(&self, alg: Alg) -> bool {
        let snap = self.snapshot();
        ring::active_at(&snap.keys, alg, self.now())
            .is_some_and(|k| snap.material.contains_key(&k.kid))
    }

    /// Counts by state per configured algorithm and the active key's age (seconds since it
    /// started signing), for metrics.
    pub(crate) fn stats(&self) -> KeyStats {
        let now = self.now();
        let snap = self.snapshot();
        let algs = self
            .inner
            .cfg
            .algs
            .iter()
            .map(|&alg| {
                let mut s = AlgKeyStats {
                    alg,
                    pending: 0,
                    active: 0,
                    retired: 0,
                    gone: 0,
                    active_age_seconds: ring::active_at(&snap.keys, alg, now)
                        .map(|k| now - k.activates),
                };
                for k in snap.keys.iter().filter(|k| k.alg == alg) {
                    match ring::state(k, now) {
                        KeyState::Pending => s.pending += 1,
                        KeyState::Active => s.active += 1,
                        KeyState::Retired => s.retired += 1,
                        KeyState::Gone => s.gone += 1,
                    }
                }
                s
            })
            .collect();
        KeyStats { algs }
    }

    /// The configured algorithms; the first signs by default.
    /// How many keys this process has created per algorithm since it started (rotations).
    pub(crate) fn created_counts(&self) -> Vec<(Alg, u64)> {
        self.inner
            .created
            .lock()
            .map(|c| c.iter().map(|(a, n)| (*a, *n)).collect())
            .unwrap_or_default()
    }

    #[cfg(test)]
    pub(crate) fn algs(&self) -> &[Alg] {
        &self.inner.cfg.algs
    }

    /// Applies `op` then a maintenance step to `keys`.
    fn apply(
        &self,
        op: &Op<'_>,
        keys: &mut Vec<StoredKey>,
        now: i64,
        mint: &mut ring::Mint<'_>,
    ) -> Result<(bool, OpResult), KeyError> {
        let algs = &self.inner.cfg.algs;
        let sched = &self.inner.sched;
        let (mut changed, result) = match op {
            Op::Maintain => (false, OpResult::Maintained),
            Op::Rotate(which) => {
                let mut kids = Vec::new();
                for &alg in which {
                    kids.extend(ring::rotate_now(keys, alg, sched, now, mint)?);
                }
                (true, OpResult::Rotated(kids))
            }
            Op::Revoke(kid) => {
                let r = ring::revoke(keys, kid, algs, sched, now, mint)?;
                (matches!(r, Revoked::Now { .. }), OpResult::Revoked(r))
            }
        };
        changed |= ring::maintain(keys, algs, sched, now, mint)?;
        Ok((changed, result))
    }

    /// Runs `op` against the stored keyset: a dry run finds out which keys must be generated,
    /// they are generated off the executor, then the real run is saved with compare-and-swap.
    /// Returns whether the snapshot changed. The caller holds `writer`.
    async fn run(&self, op: &Op<'_>, operator: bool) -> Result<(bool, OpResult), KeyError> {
        let mut held = false;
        if operator && self.inner.lease.is_some() {
            self.acquire_lease_waiting().await?;
            held = true;
        }
        let result = self.run_leased(op, &mut held).await;
        if held {
            self.release_lease().await;
        }
        result
    }

    async fn run_leased(&self, op: &Op<'_>, held: &mut bool) -> Result<(bool, OpResult), KeyError> {
        let mut pool = Pool::default();
        let mut conflicts = 0;
        loop {
            let loaded = self.inner.store.load().await?;
            let now = self.now();
            let (expected, keys) = match loaded {
                Some(ks) => (Some(ks.version), ks.keys),
                None => (None, Vec::new()),
            };
            for k in &keys {
                k.check()?;
            }

            let mut needed = Vec::new();
            let mut dry = keys.clone();
            let (changed, dry_result) = self.apply(op, &mut dry, now, &mut |alg| {
                needed.push(alg);
                Ok(Minted {
                    kid: format!("planned-{}", needed.len()),
                    private_pkcs8_der: Zeroizing::new(vec![0]),
                })
            })?;
            drop(dry);
            if !changed {
                let swapped = self.install(expected.unwrap_or(0), &keys, now)?;
                return Ok((swapped, dry_result));
            }
            if self.inner.lease.is_some() && !*held {
                if self.try_lease().await? {
                    *held = true;
                    continue; // reload under the lease
                }
                // Another instance is writing; adopt what is stored for now.
                let swapped = self.install(expected.unwrap_or(0), &keys, now)?;
                return Ok((swapped, dry_result));
            }

            pool.fill(&needed, self.inner.cfg.rsa_bits).await?;
            let mut keys = keys;
            let (_, result) = self.apply(op, &mut keys, now, &mut |alg| pool.take(alg))?;
            let next = StoredKeyset {
                version: expected.map_or(1, |v| v + 1),
                keys,
            };
            if self.inner.store.save(&next, expected).await? {
                self.log_new_keys(&next.keys, now);
                self.install(next.version, &next.keys, now)?;
                return Ok((true, result));
            }
            conflicts += 1;
            if conflicts > 1 {
                return Err(KeyError::Conflict);
            }
            tracing::debug!("keyset changed concurrently; reloading");
        }
    }

    fn log_new_keys(&self, keys: &[StoredKey], now: i64) {
        let snap = self.snapshot();
        for k in keys {
            if snap.keys.iter().any(|o| o.kid == k.kid) {
                continue;
            }
            if k.created == now {
                if let Ok(mut created) = self.inner.created.lock() {
                    *created.entry(k.alg).or_insert(0) += 1;
                }
            }
            if k.created == now && !snap.keys.is_empty() {
                self.tell(KeyChange::Created {
                    kid: k.kid.clone(),
                    alg: k.alg,
                    activates: k.activates,
                });
            }
            if k.created == now && k.activates == now && snap.keys.is_empty() {
                tracing::info!(kid = %k.kid, alg = %k.alg, "initial signing key created");
            } else if k.created == now && k.activates == now {
                tracing::warn!(kid = %k.kid, alg = %k.alg, "signing key created, active at once (no prepublication)");
            } else if k.created == now {
                tracing::info!(kid = %k.kid, alg = %k.alg, activates = k.activates, "signing key created");
            }
        }
    }

    /// Replaces the snapshot when the keyset or the set of published keys differs. Returns
    /// whether it did.
    fn install(&self, version: u64, keys: &[StoredKey], now: i64) -> Result<bool, KeyError> {
        let algs = &self.inner.cfg.algs;
        let view = public_view(keys, algs);
        let kids = published(&view, algs, now);
        let current = self.snapshot();
        if current.version == version && current.keys == view && current.published == kids {
            return Ok(false);
        }
        let mut material = HashMap::new();
        for k in keys.iter().filter(|k| !k.revoked) {
            let m = match current.material.get(&k.kid) {
                Some(m) if m.alg == k.alg => m.clone(),
                _ => Arc::new(KeyMaterial::from_pkcs8(k.alg, &k.private_pkcs8_der)?),
            };
            if m.kid != k.kid || m.alg != k.alg {
                return Err(KeyError::Corrupt(format!(
                    "key {} does not match its private key",
                    k.kid
                )));
            }
            material.insert(k.kid.clone(), m);
        }
        let jwks_keys: Vec<&jwk::PublicJwk> = kids
            .iter()
            .filter_map(|kid| material.get(kid).map(|m| m.public_jwk()))
            .collect();
        let jwks = Arc::new(JwksDocument::new(&jwks_keys));
        let snap = Arc::new(Snapshot {
            version,
            keys: view,
            material,
            published: kids,
            jwks,
        });
        *self
            .inner
            .snapshot
            .write()
            .unwrap_or_else(|e| e.into_inner()) = snap;
        Ok(true)
    }

    async fn try_lease(&self) -> Result<bool, KeyError> {
        match &self.inner.lease {
            Some(l) => Ok(l
                .try_acquire(ROTATION_LEASE, &self.inner.holder, LEASE_TTL_MS)
                .await?),
            None => Ok(true),
        }
    }

    async fn acquire_lease_waiting(&self) -> Result<(), KeyError> {
        let deadline = tokio::time::Instant::now() + LEASE_WAIT;
        loop {
            if self.try_lease().await? {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(KeyError::Busy);
            }
            tokio::time::sleep(LEASE_RETRY).await;
        }
    }

    async fn release_lease(&self) {
        if let Some(l) = &self.inner.lease {
            if let Err(e) = l.release(ROTATION_LEASE, &self.inner.holder).await {
                tracing::warn!(error = %e, "could not release the key rotation lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use josekit::jws::JwsVerifier;
    use serde_json::json;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::keys::jwk::{thumbprint_okp, thumbprint_rsa};
    use crate::keys::MemoryKeyStore;
    use crate::store::StoreError;

    const H: u64 = 3600;
    const D: u64 = 86_400;
    const T0_MS: i64 = 1_700_000_000_000;

    fn cfg(algs: &[Alg]) -> KeysConfig {
        KeysConfig {
            algs: algs.to_vec(),
            rotation: Duration::from_secs(7 * D),
            prepublish: Duration::from_secs(H),
            retention: Duration::from_secs(14 * D + 30),
            reload: Duration::from_secs(30),
            rsa_bits: 2048,
        }
    }

    const BOTH: [Alg; 2] = [Alg::EdDSA, Alg::RS256];

    /// A lease like Redis `SET NX PX` without expiry, counting grants.
    #[derive(Default)]
    struct TestLease {
        held: Mutex<HashMap<String, String>>,
        grants: Mutex<usize>,
    }

    #[async_trait]
    impl LeaseStore for TestLease {
        async fn try_acquire(
            &self,
            name: &str,
            holder: &str,
            _ttl_ms: i64,
        ) -> Result<bool, StoreError> {
            let mut held = self.held.lock().unwrap();
            if held.contains_key(name) {
                return Ok(false);
            }
            held.insert(name.into(), holder.into());
            *self.grants.lock().unwrap() += 1;
            Ok(true)
        }
        async fn release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
            let mut held = self.held.lock().unwrap();
            if held.get(name).map(String::as_str) == Some(holder) {
                held.remove(name);
            }
            Ok(())
        }
    }

    async fn open(algs: &[Alg]) -> (Keys, Arc<MemoryKeyStore>, Arc<ManualClock>) {
        let store = Arc::new(MemoryKeyStore::new());
        let clock = ManualClock::new(T0_MS);
        let keys = Keys::open(cfg(algs), store.clone(), None, clock.clone())
            .await
            .unwrap();
        (keys, store, clock)
    }

    fn claims(sub: &str) -> Map<String, Value> {
        json!({"iss": "http://localhost:5000", "sub": sub, "exp": 2_000_000_000_i64})
            .as_object()
            .unwrap()
            .clone()
    }

    fn with_header(token: &str, header: Value) -> String {
        let rest = token.split_once('.').unwrap().1;
        format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()))
    }

    #[tokio::test]
    async fn opening_an_empty_store_creates_one_active_key_per_alg() {
        let (keys, store, clock) = open(&BOTH).await;
        assert_eq!(store.saves(), 1);
        let list = keys.list();
        assert_eq!(list.len(), 2);
        for alg in BOTH {
            assert!(keys.has_active(alg));
            let k = list.iter().find(|k| k.alg == alg).unwrap();
            assert_eq!(k.state, KeyState::Active);
            assert_eq!(k.activates, clock.now());
        }
        assert_eq!(keys.algs(), &BOTH);
        // Nothing to do on the next tick.
        assert!(!keys.tick().await.unwrap());
        assert_eq!(store.saves(), 1);
        let stats = keys.stats();
        assert_eq!(stats.algs[0].active, 1);
        assert_eq!(stats.algs[0].active_age_seconds, Some(0));
    }

    #[tokio::test]
    async fn tokens_sign_and_verify_with_header_rules() {
        let (keys, _, clock) = open(&BOTH).await;
        let now = clock.now();
        for alg in BOTH {
            let t = keys.sign(alg, "at+jwt", &claims("u1"), now).unwrap();
            assert_eq!(
                t,
                keys.sign(alg, "at+jwt", &claims("u1"), now).unwrap(),
                "deterministic"
            );
            let v = keys.verify(&t, "at+jwt", now).unwrap();
            assert_eq!(v.alg, alg);
            assert_eq!(v.claims, claims("u1"));
            let header = jwk::parse_header(&t).unwrap();
            assert_eq!(header["kid"], Value::String(v.kid.clone()));
            assert_eq!(header.len(), 3);

            // A refresh token is not an access token.
            assert_eq!(keys.verify(&t, "rt+jwt", now), Err(TokenError::WrongType));
            let app = with_header(
                &t,
                json!({"alg": alg.as_str(), "kid": v.kid, "typ": "application/AT+JWT"}),
            );
            // The header is signed: a changed header no longer verifies, but passes the typ rule.
            assert_eq!(
                keys.verify(&app, "at+jwt", now),
                Err(TokenError::BadSignature)
            );
            let no_typ = with_header(&t, json!({"alg": alg.as_str(), "kid": v.kid}));
            assert_eq!(
                keys.verify(&no_typ, "at+jwt", now),
                Err(TokenError::WrongType)
            );
            for bad_alg in ["none", "HS256", "ES256", "eddsa", "rs256"] {
                let x = with_header(&t, json!({"alg": bad_alg, "kid": v.kid, "typ": "at+jwt"}));
                assert_eq!(
                    keys.verify(&x, "at+jwt", now),
                    Err(TokenError::UnsupportedAlg),
                    "{bad_alg}"
                );
            }
            for bad_kid in [
                json!("../../etc/passwd"),
                json!("https://evil.example/jwks"),
                json!(42),
            ] {
                let x = with_header(
                    &t,
                    json!({"alg": alg.as_str(), "kid": bad_kid, "typ": "at+jwt"}),
                );
                assert_eq!(keys.verify(&x, "at+jwt", now), Err(TokenError::UnknownKey));
            }
            let no_kid = with_header(&t, json!({"alg": alg.as_str(), "typ": "at+jwt"}));
            assert_eq!(
                keys.verify(&no_kid, "at+jwt", now),
                Err(TokenError::UnknownKey)
            );
            let other = if alg == Alg::EdDSA {
                Alg::RS256
            } else {
                Alg::EdDSA
            };
            let x = with_header(
                &t,
                json!({"alg": other.as_str(), "kid": v.kid, "typ": "at+jwt"}),
            );
            assert_eq!(keys.verify(&x, "at+jwt", now), Err(TokenError::KeyMismatch));

            // Claims swapped under the signature.
            let parts: Vec<&str> = t.split('.').collect();
            let forged = format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode(json!({"sub": "admin"}).to_string()),
                parts[2]
            );
            assert_eq!(
                keys.verify(&forged, "at+jwt", now),
                Err(TokenError::BadSignature)
            );
            assert_eq!(
                keys.verify("a.b", "at+jwt", now),
                Err(TokenError::Malformed)
            );
        }
        // The typ comparison itself is tested where it lives (tokend-token-shape, `typ`).
        // An unconfigured algorithm cannot sign.
        let (ed_only, _, clock) = open(&[Alg::EdDSA]).await;
        assert_eq!(
            ed_only.sign(Alg::RS256, "at+jwt", &claims("u"), clock.now()),
            Err(KeyError::NoActiveKey(Alg::RS256))
        );
    }

    #[tokio::test]
    async fn rotation_publishes_ahead_and_old_tokens_outlive_the_switch() {
        let (keys, store, clock) = open(&BOTH).await;
        let first: HashMap<Alg, String> = keys.list().into_iter().map(|k| (k.alg, k.kid)).collect();

        clock.advance(Duration::from_secs(7 * D - H - 1));
        assert!(!keys.tick().await.unwrap());
        clock.advance(Duration::from_secs(1));
        assert!(keys.tick().await.unwrap(), "successors are due");
        assert_eq!(store.saves(), 2);
        let list = keys.list();
        assert_eq!(
            list.iter().filter(|k| k.state == KeyState::Pending).count(),
            2
        );
        let jwks: Value = serde_json::from_slice(&keys.jwks().body).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 4);

        let switch = clock.now() + i64::try_from(H).unwrap();
        let mut before = HashMap::new();
        for alg in BOTH {
            let t = keys.sign(alg, "at+jwt", &claims("u"), switch - 1).unwrap();
            assert_eq!(
                keys.verify(&t, "at+jwt", switch - 1).unwrap().kid,
                first[&alg]
            );
            before.insert(alg, t);
        }
        clock.advance(Duration::from_secs(H));
        keys.tick().await.unwrap();
        for alg in BOTH {
            let now = clock.now();
            assert_eq!(now, switch);
            assert_eq!(
                keys.verify(&before[&alg], "at+jwt", now + 10).unwrap().kid,
                first[&alg]
            );
            let t = keys.sign(alg, "at+jwt", &claims("u"), now).unwrap();
            assert_ne!(keys.verify(&t, "at+jwt", now).unwrap().kid, first[&alg]);
            // Re-signing at the earlier instant still picks the key active then.
            assert_eq!(
                keys.sign(alg, "at+jwt", &claims("u"), switch - 1).unwrap(),
                before[&alg]
            );
        }
        assert_eq!(
            keys.list()
                .iter()
                .filter(|k| k.state == KeyState::Retired)
                .count(),
            2
        );

        // After the retention the first keys are gone: out of JWKS, no longer verifying.
        clock.advance(Duration::from_secs(14 * D + 30));
        assert!(keys.tick().await.unwrap());
        let jwks = keys.jwks();
        let body = std::str::from_utf8(&jwks.body).unwrap();
        for alg in BOTH {
            assert!(!body.contains(&first[&alg]));
            assert_eq!(
                keys.verify(&before[&alg], "at+jwt", clock.now()),
                Err(TokenError::UnknownKey)
            );
            assert!(keys.has_active(alg));
        }
    }

    #[tokio::test]
    async fn jwks_alone_verifies_tokens_and_holds_no_private_members() {
        let (keys, _, clock) = open(&BOTH).await;
        let now = clock.now();
        let doc = keys.jwks();
        assert_eq!(doc.etag, keys.jwks().etag);
        let set: Value = serde_json::from_slice(&doc.body).unwrap();
        let served = set["keys"].as_array().unwrap();
        assert_eq!(served.len(), 2);
        for k in served {
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(k.get(private).is_none(), "{private} in {k}");
            }
            assert_eq!(k["use"], "sig");
            let kid = k["kid"].as_str().unwrap();
            let jwk = josekit::jwk::Jwk::from_bytes(serde_json::to_vec(k).unwrap()).unwrap();
            let (verifier, thumb): (Box<dyn JwsVerifier>, String) = match k["kty"].as_str().unwrap()
            {
                "OKP" => {
                    assert_eq!(k["alg"], "EdDSA");
                    assert_eq!(k["crv"], "Ed25519");
                    (
                        Box::new(josekit::jws::EdDSA.verifier_from_jwk(&jwk).unwrap()),
                        thumbprint_okp("Ed25519", k["x"].as_str().unwrap()),
                    )
                }
                "RSA" => {
                    assert_eq!(k["alg"], "RS256");
                    (
                        Box::new(josekit::jws::RS256.verifier_from_jwk(&jwk).unwrap()),
                        thumbprint_rsa(k["e"].as_str().unwrap(), k["n"].as_str().unwrap()),
                    )
                }
                other => panic!("unexpected kty {other}"),
            };
            assert_eq!(kid, thumb);
            let alg = Alg::parse(k["alg"].as_str().unwrap()).unwrap();
            let token = keys.sign(alg, "at+jwt", &claims("u9"), now).unwrap();
            let (payload, header) =
                josekit::jwt::decode_with_verifier(&token, verifier.as_ref()).unwrap();
            assert_eq!(header.key_id(), Some(kid));
            assert_eq!(payload.subject(), Some("u9"));
        }
    }

    #[tokio::test]
    async fn rotate_now_starts_a_pending_successor() {
        let (keys, store, clock) = open(&BOTH).await;
        let old = keys.list();
        clock.advance(Duration::from_secs(D));
        let new = keys.rotate_now(Some(Alg::RS256)).await.unwrap();
        assert_eq!(new.len(), 1);
        let n = &new[0];
        assert_eq!(n.alg, Alg::RS256);
        assert_eq!(n.state, KeyState::Pending);
        assert_eq!(n.activates, clock.now() + 3600);
        assert!(std::str::from_utf8(&keys.jwks().body)
            .unwrap()
            .contains(&n.kid));
        assert_eq!(store.saves(), 2);
        let rs_old = old.iter().find(|k| k.alg == Alg::RS256).unwrap();
        let t = keys
            .sign(Alg::RS256, "at+jwt", &claims("u"), clock.now())
            .unwrap();
        assert_eq!(
            keys.verify(&t, "at+jwt", clock.now()).unwrap().kid,
            rs_old.kid
        );
        clock.advance(Duration::from_secs(H));
        let t = keys
            .sign(Alg::RS256, "at+jwt", &claims("u"), clock.now())
            .unwrap();
        assert_eq!(keys.verify(&t, "at+jwt", clock.now()).unwrap().kid, n.kid);

        let all = keys.rotate_now(None).await.unwrap();
        assert_eq!(all.len(), 2);
        assert!(keys.rotate_now(Some(Alg::EdDSA)).await.is_ok());
        let (ed_only, _, _) = open(&[Alg::EdDSA]).await;
        assert!(matches!(
            ed_only.rotate_now(Some(Alg::RS256)).await,
            Err(KeyError::Config(_))
        ));
    }

    #[tokio::test]
    async fn revoking_the_active_key_takes_effect_at_once_with_a_replacement() {
        let (keys, store, clock) = open(&BOTH).await;
        let now = clock.now();
        let t = keys.sign(Alg::EdDSA, "at+jwt", &claims("u"), now).unwrap();
        let kid = keys.verify(&t, "at+jwt", now).unwrap().kid;

        assert!(keys.revoke(&kid).await.unwrap());
        assert_eq!(keys.verify(&t, "at+jwt", now), Err(TokenError::RevokedKey));
        assert!(!std::str::from_utf8(&keys.jwks().body)
            .unwrap()
            .contains(&kid));
        assert!(keys.has_active(Alg::EdDSA));
        let t2 = keys.sign(Alg::EdDSA, "at+jwt", &claims("u"), now).unwrap();
        let v = keys.verify(&t2, "at+jwt", now).unwrap();
        assert_ne!(v.kid, kid);
        let info = keys.list().into_iter().find(|k| k.kid == kid).unwrap();
        assert!(info.revoked);
        assert_eq!(info.state, KeyState::Gone);
        let stored = store.snapshot().unwrap();
        let r = stored.keys.iter().find(|k| k.kid == kid).unwrap();
        assert!(r.private_pkcs8_der.is_empty(), "private key destroyed");

        assert!(keys.revoke(&kid).await.unwrap(), "idempotent");
        assert!(!keys.revoke("unknown").await.unwrap());
        assert!(!keys.revoke("../x").await.unwrap());
    }

    #[tokio::test]
    async fn revoking_during_prepublication_promotes_the_pending_successor() {
        let (keys, _, clock) = open(&[Alg::EdDSA]).await;
        clock.advance(Duration::from_secs(7 * D - H / 2));
        keys.tick().await.unwrap();
        let pending = keys
            .list()
            .into_iter()
            .find(|k| k.state == KeyState::Pending)
            .unwrap();
        let active = keys
            .list()
            .into_iter()
            .find(|k| k.state == KeyState::Active)
            .unwrap();
        assert!(keys.revoke(&active.kid).await.unwrap());
        let now = clock.now();
        let t = keys.sign(Alg::EdDSA, "at+jwt", &claims("u"), now).unwrap();
        assert_eq!(keys.verify(&t, "at+jwt", now).unwrap().kid, pending.kid);
        assert_eq!(keys.list().len(), 2);
    }

    #[tokio::test]
    async fn two_instances_sharing_a_store_rotate_once_and_serve_identical_jwks() {
        let store = Arc::new(MemoryKeyStore::new());
        let lease = Arc::new(TestLease::default());
        let clock = ManualClock::new(T0_MS);
        let a = Keys::open(
            cfg(&BOTH),
            store.clone(),
            Some(lease.clone()),
            clock.clone(),
        )
        .await
        .unwrap();
        let b = Keys::open(
            cfg(&BOTH),
            store.clone(),
            Some(lease.clone()),
            clock.clone(),
        )
        .await
        .unwrap();
        assert_eq!(store.saves(), 1);
        assert_eq!(a.jwks().body, b.jwks().body);

        clock.advance(Duration::from_secs(7 * D - H));
        let (ra, rb) = tokio::join!(a.tick(), b.tick());
        ra.unwrap();
        rb.unwrap();
        // Whoever lost the lease picks up the result on its next reload.
        a.tick().await.unwrap();
        b.tick().await.unwrap();
        assert_eq!(store.saves(), 2, "exactly one rotation was written");
        let stored = store.snapshot().unwrap();
        assert_eq!(stored.keys.len(), 4, "one successor per alg");
        assert_eq!(a.jwks().body, b.jwks().body);
        assert_eq!(a.jwks().etag, b.jwks().etag);
        assert!(lease.held.lock().unwrap().is_empty(), "lease released");
    }

    #[tokio::test]
    async fn without_a_lease_compare_and_swap_still_allows_one_successor() {
        let store = Arc::new(MemoryKeyStore::new());
        let clock = ManualClock::new(T0_MS);
        let a = Keys::open(cfg(&[Alg::EdDSA]), store.clone(), None, clock.clone())
            .await
            .unwrap();
        let b = Keys::open(cfg(&[Alg::EdDSA]), store.clone(), None, clock.clone())
            .await
            .unwrap();
        clock.advance(Duration::from_secs(7 * D - H));
        let (ra, rb) = tokio::join!(a.tick(), b.tick());
        ra.unwrap();
        rb.unwrap();
        a.tick().await.unwrap();
        b.tick().await.unwrap();
        assert_eq!(store.snapshot().unwrap().keys.len(), 2);
        assert_eq!(a.jwks().body, b.jwks().body);
    }

    #[tokio::test]
    async fn an_instance_without_the_lease_only_reloads() {
        let store = Arc::new(MemoryKeyStore::new());
        let lease = Arc::new(TestLease::default());
        let clock = ManualClock::new(T0_MS);
        let a = Keys::open(
            cfg(&[Alg::EdDSA]),
            store.clone(),
            Some(lease.clone()),
            clock.clone(),
        )
        .await
        .unwrap();
        lease
            .try_acquire(ROTATION_LEASE, "someone-else", 1000)
            .await
            .unwrap();
        clock.advance(Duration::from_secs(7 * D - H));
        assert!(!a.tick().await.unwrap());
        assert_eq!(store.saves(), 1);
        assert!(matches!(
            tokio::time::timeout(Duration::from_secs(30), a.rotate_now(None)).await,
            Ok(Err(KeyError::Busy))
        ));
        lease.release(ROTATION_LEASE, "someone-else").await.unwrap();
        assert!(a.tick().await.unwrap());
        assert_eq!(store.saves(), 2);
    }

    #[tokio::test]
    async fn a_keyset_written_elsewhere_is_picked_up_on_tick() {
        let store = Arc::new(MemoryKeyStore::new());
        let clock = ManualClock::new(T0_MS);
        let a = Keys::open(cfg(&[Alg::EdDSA]), store.clone(), None, clock.clone())
            .await
            .unwrap();
        let b = Keys::open(cfg(&[Alg::EdDSA]), store.clone(), None, clock.clone())
            .await
            .unwrap();
        let kid = a.list()[0].kid.clone();
        assert!(b.revoke(&kid).await.unwrap());
        assert!(a
            .verify(
                &a.sign(Alg::EdDSA, "at+jwt", &claims("u"), clock.now())
                    .unwrap(),
                "at+jwt",
                clock.now()
            )
            .is_ok());
        assert!(a.tick().await.unwrap());
        assert_eq!(a.jwks().body, b.jwks().body);
        assert!(!a.list().iter().any(|k| k.kid == kid && !k.revoked));
    }

    #[tokio::test]
    async fn maintenance_task_ticks_and_stops_on_shutdown() {
        let store = Arc::new(MemoryKeyStore::new());
        let clock = ManualClock::new(T0_MS);
        let mut c = cfg(&[Alg::EdDSA]);
        c.reload = Duration::from_millis(50);
        let keys = Keys::open(c, store.clone(), None, clock.clone())
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = keys.spawn_maintenance(async move {
            let _ = rx.await;
        });
        clock.advance(Duration::from_secs(7 * D - H));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.saves() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "maintenance never ran"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn debug_output_never_shows_private_keys() {
        let (keys, store, _) = open(&[Alg::EdDSA]).await;
        let stored = store.snapshot().unwrap();
        let der = &stored.keys[0].private_pkcs8_der;
        let s = format!("{keys:?} {stored:?}");
        assert!(s.contains("<redacted>"));
        assert!(!s.contains(&format!("{:?}", der.as_slice())));
        assert!(!s.contains(&URL_SAFE_NO_PAD.encode(der.as_slice())));
    }

    #[tokio::test]
    async fn invalid_configuration_is_refused() {
        let store: Arc<dyn KeyStore> = Arc::new(MemoryKeyStore::new());
        let clock: SharedClock = ManualClock::new(T0_MS);
        let mut c = cfg(&BOTH);
        c.rsa_bits = 1024;
        assert!(matches!(
            Keys::open(c, store.clone(), None, clock.clone()).await,
            Err(KeyError::Config(_))
        ));
        assert!(matches!(
            Keys::open(cfg(&[]), store, None, clock).await,
            Err(KeyError::Config(_))
        ));
    }

    #[tokio::test]
    async fn a_corrupt_stored_key_is_refused() {
        let store = Arc::new(MemoryKeyStore::new());
        let (keys, _, _) = open(&[Alg::EdDSA]).await;
        let _ = keys;
        let mut ks = StoredKeyset::default();
        let minted = jwk::generate(Alg::EdDSA, 0).unwrap();
        let other = jwk::generate(Alg::EdDSA, 0).unwrap();
        ks.keys.push(StoredKey {
            kid: minted.kid,
            alg: Alg::EdDSA,
            created: 0,
            activates: 0,
            retires: i64::MAX / 2,
            expires: i64::MAX / 2,
            revoked: false,
            private_pkcs8_der: other.private_pkcs8_der,
        });
        assert!(store.save(&ks, None).await.unwrap());
        let r = Keys::open(cfg(&[Alg::EdDSA]), store, None, ManualClock::new(T0_MS)).await;
        assert!(matches!(r, Err(KeyError::Corrupt(_))), "{r:?}");
    }
}
