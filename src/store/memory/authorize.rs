//! The authorization flow's state in memory (embedded mode): pending and pushed authorization
//! requests, codes and browser sessions, expiring by the [`SharedClock`] like the session
//! store's records, and consents, which never expire.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{lock, SWEEP_EVERY_WRITES, SWEEP_INTERVAL_MS};
use crate::clock::SharedClock;
use crate::store::{AuthorizeStore, ConsentRecord, ConsentStore, Redemption, StoreError};

/// A code's grant and what happened to it.
struct Code {
    grant: String,
    used: bool,
    replayed: bool,
    /// Clock time (Unix ms) at which the code is forgotten.
    expires: i64,
}

#[derive(Default)]
struct AuthorizeInner {
    /// request id -> (request; clock time it is forgotten)
    requests: HashMap<String, (String, i64)>,
    /// pushed request id -> (request; clock time it is forgotten)
    pushed: HashMap<String, (String, i64)>,
    /// code hash -> the code
    codes: HashMap<String, Code>,
    /// browser session id -> (session; clock time it is forgotten)
    browser_sessions: HashMap<String, (String, i64)>,
    /// browser session id -> (refresh families started through it; clock time they are
    /// forgotten)
    session_families: HashMap<String, (HashSet<String>, i64)>,
    last_sweep: i64,
    writes_since_sweep: u64,
}

/// The value under `key` if it has not expired at `now`; an expired one is dropped.
fn live<'a, V>(map: &'a mut HashMap<String, (V, i64)>, key: &str, now: i64) -> Option<&'a mut V> {
    if map.get(key).is_some_and(|(_, exp)| *exp <= now) {
        map.remove(key);
    }
    map.get_mut(key).map(|(v, _)| v)
}

/// Clock time `ttl_ms` from `now` (at least one millisecond, as Redis keeps it).
fn expiry(now: i64, ttl_ms: i64) -> i64 {
    now.saturating_add(ttl_ms.max(1))
}

impl AuthorizeInner {
    /// Counts a write and sweeps every map when one is due.
    fn maybe_sweep(&mut self, now: i64) {
        self.writes_since_sweep += 1;
        if self.writes_since_sweep < SWEEP_EVERY_WRITES
            && now.saturating_sub(self.last_sweep) < SWEEP_INTERVAL_MS
        {
            return;
        }
        self.last_sweep = now;
        self.writes_since_sweep = 0;
        self.requests.retain(|_, (_, exp)| *exp > now);
        self.pushed.retain(|_, (_, exp)| *exp > now);
        self.codes.retain(|_, c| c.expires > now);
        self.browser_sessions.retain(|_, (_, exp)| *exp > now);
        self.session_families.retain(|_, (_, exp)| *exp > now);
    }

    /// The live code `code_hash`, dropping it if it has expired.
    fn live_code(&mut self, code_hash: &str, now: i64) -> Option<&mut Code> {
        if self.codes.get(code_hash).is_some_and(|c| c.expires <= now) {
            self.codes.remove(code_hash);
        }
        self.codes.get_mut(code_hash)
    }
}

/// Authorization requests, codes and browser sessions in memory, expiring by a [`SharedClock`].
pub struct MemoryAuthorize {
    clock: SharedClock,
    inner: Mutex<AuthorizeInner>,
}

impl MemoryAuthorize {
    /// An empty store reading time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        let last_sweep = clock.now_ms();
        Self {
            clock,
            inner: Mutex::new(AuthorizeInner {
                last_sweep,
                ..AuthorizeInner::default()
            }),
        }
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many records are held, expired ones included until they are swept.
    pub fn len(&self) -> usize {
        let g = lock(&self.inner);
        g.requests.len()
            + g.pushed.len()
            + g.codes.len()
            + g.browser_sessions.len()
            + g.session_families.len()
    }
}

#[async_trait]
impl AuthorizeStore for MemoryAuthorize {
    async fn put_request(&self, id: &str, request: &str, ttl_ms: i64) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.maybe_sweep(now);
        g.requests
            .insert(id.to_string(), (request.to_string(), expiry(now, ttl_ms)));
        Ok(())
    }

    async fn request(&self, id: &str) -> Result<Option<String>, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        Ok(live(&mut g.requests, id, now).map(|r| r.clone()))
    }

    async fn take_request(&self, id: &str) -> Result<Option<String>, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        Ok(g.requests
            .remove(id)
            .filter(|(_, exp)| *exp > now)
            .map(|(r, _)| r))
    }

    async fn put_pushed_request(
        &self,
        id: &str,
        request: &str,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.maybe_sweep(now);
        g.pushed
            .insert(id.to_string(), (request.to_string(), expiry(now, ttl_ms)));
        Ok(())
    }

    /// One lock for the read and the removal: a request URI is used once (RFC 9126 §4).
    async fn take_pushed_request(&self, id: &str) -> Result<Option<String>, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        Ok(g.pushed
            .remove(id)
            .filter(|(_, exp)| *exp > now)
            .map(|(r, _)| r))
    }

    async fn put_code(&self, code_hash: &str, grant: &str, ttl_ms: i64) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.maybe_sweep(now);
        g.codes.insert(
            code_hash.to_string(),
            Code {
                grant: grant.to_string(),
                used: false,
                replayed: false,
                expires: expiry(now, ttl_ms),
            },
        );
        Ok(())
    }

    /// One lock for the check and the mark (RFC 6749 §4.1.2: a code is used once).
    async fn redeem_code(
        &self,
        code_hash: &str,
        used_ttl_ms: i64,
    ) -> Result<Redemption, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.maybe_sweep(now);
        let Some(code) = g.live_code(code_hash, now) else {
            return Ok(Redemption::Unknown);
        };
        if code.used {
            code.replayed = true;
            return Ok(Redemption::Replayed(code.grant.clone()));
        }
        code.used = true;
        code.expires = code.expires.max(expiry(now, used_ttl_ms));
        Ok(Redemption::First(code.grant.clone()))
    }

    async fn code_replayed(&self, code_hash: &str) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        Ok(g.live_code(code_hash, now).is_some_and(|c| c.replayed))
    }

    async fn put_browser_session(
        &self,
        id: &str,
        session: &str,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.maybe_sweep(now);
        g.browser_sessions
            .insert(id.to_string(), (session.to_string(), expiry(now, ttl_ms)));
        Ok(())
    }

    async fn browser_session(&self, id: &str) -> Result<Option<String>, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        Ok(live(&mut g.browser_sessions, id, now).map(|s| s.clone()))
    }

    /// The families are kept at least `ttl_ms` from now; a shorter `ttl_ms` never shortens
    /// what an earlier call asked for.
    async fn add_session_family(&self, id: &str, sid: &str, ttl_ms: i64) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.maybe_sweep(now);
        let expires = expiry(now, ttl_ms);
        let entry = g
            .session_families
            .entry(id.to_string())
            .or_insert_with(|| (HashSet::new(), expires));
        if entry.1 <= now {
            entry.0.clear();
            entry.1 = expires;
        }
        entry.0.insert(sid.to_string());
        entry.1 = entry.1.max(expires);
        Ok(())
    }

    async fn end_browser_session(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.browser_sessions.remove(id);
        Ok(g.session_families
            .remove(id)
            .filter(|(_, exp)| *exp > now)
            .map(|(sids, _)| sids.into_iter().collect())
            .unwrap_or_default())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Consents in memory: user id -> client id -> consent (so a user's are listed by client id).
#[derive(Default)]
pub struct MemoryConsents {
    inner: Mutex<HashMap<String, BTreeMap<String, ConsentRecord>>>,
}

impl MemoryConsents {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ConsentStore for MemoryConsents {
    async fn grant(
        &self,
        user_id: &str,
        client_id: &str,
        scopes: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut g = lock(&self.inner);
        let record = g
            .entry(user_id.to_string())
            .or_default()
            .entry(client_id.to_string())
            .or_insert_with(|| ConsentRecord {
                user_id: user_id.to_string(),
                client_id: client_id.to_string(),
                scopes: Vec::new(),
                granted_at: now_ms,
                updated_at: now_ms,
            });
        let merged: BTreeSet<String> = record
            .scopes
            .drain(..)
            .chain(scopes.iter().cloned())
            .collect();
        record.scopes = merged.into_iter().collect();
        record.updated_at = now_ms;
        Ok(())
    }

    async fn get(
        &self,
        user_id: &str,
        client_id: &str,
    ) -> Result<Option<ConsentRecord>, StoreError> {
        Ok(lock(&self.inner)
            .get(user_id)
            .and_then(|clients| clients.get(client_id))
            .cloned())
    }

    async fn list(&self, user_id: &str) -> Result<Vec<ConsentRecord>, StoreError> {
        Ok(lock(&self.inner)
            .get(user_id)
            .map(|clients| clients.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn withdraw(&self, user_id: &str, client_id: &str) -> Result<bool, StoreError> {
        let mut g = lock(&self.inner);
        let Some(clients) = g.get_mut(user_id) else {
            return Ok(false);
        };
        let withdrawn = clients.remove(client_id).is_some();
        if clients.is_empty() {
            g.remove(user_id);
        }
        Ok(withdrawn)
    }

    async fn forget_user(&self, user_id: &str) -> Result<u64, StoreError> {
        Ok(lock(&self.inner)
            .remove(user_id)
            .map_or(0, |clients| clients.len() as u64))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
