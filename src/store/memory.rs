//! In-process stores for embedded mode: users, clients, refresh families, revocations, the
//! lease, the authorization flow's state and consents ([`MemoryAuthorize`],
//! [`MemoryConsents`]) and device authorizations ([`MemoryDevices`]), held in memory with the
//! same semantics as MongoDB and Redis. Records with a TTL expire by the
//! [`Clock`](crate::clock::Clock) they were built with and are purged as they are met and by a
//! periodic sweep, so memory stays bounded. Everything is lost when the process exits.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::agent::Agent;
use super::{
    AccessStatus, ClientRecord, ClientStore, Expected, FamilyMarks, FamilyStarted, FamilyState,
    LeaseStore, NewFamily, RotateOutcome, RotateRequest, SessionStore, StoreError, UserClaims,
    UserMarks, UserRecord, UserStore,
};
use crate::clock::SharedClock;

mod authorize;
mod device;
mod events;
mod mail;
mod replay;

pub use authorize::{MemoryAuthorize, MemoryConsents};
pub use device::MemoryDevices;
pub use events::{MemoryEvents, DEFAULT_CAPACITY as EVENTS_CAPACITY};
pub use mail::MemoryMail;
pub use replay::MemoryReplay;

/// Sweep every expiring map at least this often (clock time)…
const SWEEP_INTERVAL_MS: i64 = 30_000;
/// …or after this many writes, whichever comes first.
const SWEEP_EVERY_WRITES: u64 = 4096;

/// Locks a mutex, recovering the data if another thread panicked while holding it: every update
/// below leaves the maps consistent before it can panic, so the data is still sound.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn username_key(username: &str) -> String {
    username.to_lowercase()
}

// ---------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct UsersInner {
    /// By id; a `BTreeMap` so `list` walks ids in order.
    by_id: BTreeMap<String, UserRecord>,
    email_to_id: HashMap<String, String>,
    /// Lower-cased username to id.
    username_to_id: HashMap<String, String>,
}

/// Users in memory, unique by email and by lower-cased username.
#[derive(Default)]
pub struct MemoryUsers {
    inner: Mutex<UsersInner>,
}

impl MemoryUsers {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl UserStore for MemoryUsers {
    async fn insert(&self, user: &UserRecord) -> Result<(), StoreError> {
        let mut g = lock(&self.inner);
        let uname = username_key(&user.username);
        if g.by_id.contains_key(&user.id) {
            return Err(StoreError::Duplicate("id"));
        }
        if g.email_to_id.contains_key(&user.email) {
            return Err(StoreError::Duplicate("email"));
        }
        if g.username_to_id.contains_key(&uname) {
            return Err(StoreError::Duplicate("username"));
        }
        g.email_to_id.insert(user.email.clone(), user.id.clone());
        g.username_to_id.insert(uname, user.id.clone());
        g.by_id.insert(user.id.clone(), user.clone());
        Ok(())
    }

    async fn by_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        Ok(lock(&self.inner).by_id.get(id).cloned())
    }

    async fn by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        let g = lock(&self.inner);
        Ok(g.email_to_id
            .get(email)
            .and_then(|id| g.by_id.get(id))
            .cloned())
    }

    async fn by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let g = lock(&self.inner);
        Ok(g.username_to_id
            .get(&username_key(username))
            .and_then(|id| g.by_id.get(id))
            .cloned())
    }

    async fn update_username(
        &self,
        id: &str,
        username: &str,
        now_ms: i64,
    ) -> Result<Option<UserRecord>, StoreError> {
        let mut g = lock(&self.inner);
        let Some(old) = g.by_id.get(id).map(|u| username_key(&u.username)) else {
            return Ok(None);
        };
        let new = username_key(username);
        if g.username_to_id
            .get(&new)
            .is_some_and(|holder| holder != id)
        {
            return Err(StoreError::Duplicate("username"));
        }
        g.username_to_id.remove(&old);
        g.username_to_id.insert(new, id.to_string());
        Ok(g.by_id.get_mut(id).map(|u| {
            u.username = username.to_string();
            u.updated_at = now_ms;
            u.clone()
        }))
    }

    async fn update_password_hash(
        &self,
        id: &str,
        hash: &str,
        now_ms: i64,
        expected: &Expected,
    ) -> Result<Option<UserRecord>, StoreError> {
        let mut g = lock(&self.inner);
        let user = g.by_id.get_mut(id).filter(|u| expected.holds(u));
        Ok(user.map(|u| {
            u.password_hash = hash.to_string();
            u.credentials_version += 1;
            u.updated_at = now_ms;
            u.clone()
        }))
    }

    async fn set_roles(
        &self,
        id: &str,
        roles: &[String],
        now_ms: i64,
    ) -> Result<Option<UserRecord>, StoreError> {
        let mut g = lock(&self.inner);
        Ok(g.by_id.get_mut(id).map(|u| {
            u.roles = roles.to_vec();
            u.credentials_version += 1;
            u.updated_at = now_ms;
            u.clone()
        }))
    }

    async fn confirm_email(
        &self,
        id: &str,
        email: &str,
        grant_admin: bool,
        now_ms: i64,
    ) -> Result<Option<UserRecord>, StoreError> {
        let mut g = lock(&self.inner);
        Ok(g.by_id
            .get_mut(id)
            .filter(|u| u.email == email && !u.email_verified)
            .map(|u| {
                u.email_verified = true;
                if grant_admin && !u.roles.iter().any(|r| r == "admin") {
                    u.roles.push("admin".to_string());
                }
                u.updated_at = now_ms;
                u.clone()
            }))
    }

    async fn change_email(
        &self,
        id: &str,
        email: &str,
        grant_admin: bool,
        now_ms: i64,
        expected: &Expected,
    ) -> Result<Option<UserRecord>, StoreError> {
        let mut g = lock(&self.inner);
        let Some(old) = g
            .by_id
            .get(id)
            .filter(|u| expected.holds(u))
            .map(|u| u.email.clone())
        else {
            return Ok(None);
        };
        if g.email_to_id.get(email).is_some_and(|holder| holder != id) {
            return Err(StoreError::Duplicate("email"));
        }
        g.email_to_id.remove(&old);
        g.email_to_id.insert(email.to_string(), id.to_string());
        Ok(g.by_id.get_mut(id).map(|u| {
            u.email = email.to_string();
            u.email_verified = true;
            if grant_admin && !u.roles.iter().any(|r| r == "admin") {
                u.roles.push("admin".to_string());
            }
            u.updated_at = now_ms;
            u.clone()
        }))
    }

    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let mut g = lock(&self.inner);
        let Some(user) = g.by_id.remove(id) else {
            return Ok(false);
        };
        g.email_to_id.remove(&user.email);
        g.username_to_id.remove(&username_key(&user.username));
        Ok(true)
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<UserRecord>, StoreError> {
        let g = lock(&self.inner);
        let start = match after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Unbounded,
        };
        Ok(g.by_id
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(_, u)| u.clone())
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// OAuth clients in memory, unique by `client_id`.
#[derive(Default)]
pub struct MemoryClients {
    inner: Mutex<BTreeMap<String, ClientRecord>>,
}

impl MemoryClients {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ClientStore for MemoryClients {
    async fn get(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
        Ok(lock(&self.inner).get(client_id).cloned())
    }

    async fn insert(&self, client: &ClientRecord) -> Result<(), StoreError> {
        let mut g = lock(&self.inner);
        if g.contains_key(&client.client_id) {
            return Err(StoreError::Duplicate("client_id"));
        }
        g.insert(client.client_id.clone(), client.clone());
        Ok(())
    }

    /// Ordered by `client_id`.
    async fn list(&self) -> Result<Vec<ClientRecord>, StoreError> {
        Ok(lock(&self.inner).values().cloned().collect())
    }

    async fn delete(&self, client_id: &str) -> Result<bool, StoreError> {
        Ok(lock(&self.inner).remove(client_id).is_some())
    }

    async fn replace(&self, client: &ClientRecord) -> Result<bool, StoreError> {
        let mut g = lock(&self.inner);
        match g.get_mut(&client.client_id) {
            Some(stored) => {
                *stored = client.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions: refresh families and revocations
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Family {
    user_id: String,
    client_id: String,
    cur: String,
    iat: i64,
    /// The refresh `jti` exchanged last, and when (Unix ms, the request's `now`).
    prev: Option<(String, i64)>,
    exp_ms: i64,
    revoked: bool,
    /// Clock time (Unix ms) at which the record is forgotten.
    expires: i64,
    /// The user's session generation when the family started.
    generation: i64,
    /// The user record's `credentials_version` the login read.
    credentials_version: i64,
    /// What the family keeps of the login's `User-Agent` and client address (as in Redis).
    agent: Option<Agent>,
    ip: Vec<u8>,
}

impl Family {
    /// A family revoked before (or after) it was known: only the mark is remembered.
    fn revoked_stub(expires: i64) -> Self {
        Family {
            user_id: String::new(),
            client_id: String::new(),
            cur: String::new(),
            iat: 0,
            prev: None,
            exp_ms: 0,
            revoked: true,
            expires,
            generation: 0,
            credentials_version: 0,
            agent: None,
            ip: Vec::new(),
        }
    }
}

/// Stores `value` under `key` unless a live entry stays (`replaces(new, stored)` is false), and
/// keeps the entry at least until `expires` (clock ms). An expired entry is simply replaced.
fn keep_newest<V>(
    map: &mut HashMap<String, (V, i64)>,
    key: &str,
    value: V,
    expires: i64,
    now: i64,
    replaces: impl Fn(&V, &V) -> bool,
) {
    match map.get_mut(key) {
        Some((cur, exp)) if *exp > now => {
            if replaces(&value, cur) {
                *cur = value;
            }
            *exp = (*exp).max(expires);
        }
        _ => {
            map.insert(key.to_string(), (value, expires));
        }
    }
}

/// A user's families: family id -> (login time, family end), Unix ms.
type FamilyList = HashMap<String, (i64, i64)>;

#[derive(Default)]
struct SessionsInner {
    families: HashMap<String, Family>,
    /// user id -> (the user's families; clock time the list is forgotten)
    user_families: HashMap<String, (FamilyList, i64)>,
    /// revoked access `jti` -> clock time it is forgotten
    revoked_jtis: HashMap<String, i64>,
    /// user id -> (session marks; clock time they are forgotten)
    user_marks: HashMap<String, (UserMarks, i64)>,
    /// user id -> (the user's claims as last changed; clock time they are forgotten)
    user_claims: HashMap<String, (UserClaims, i64)>,
    last_sweep: i64,
    writes_since_sweep: u64,
}

impl SessionsInner {
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
        self.families.retain(|_, f| f.expires > now);
        self.revoked_jtis.retain(|_, exp| *exp > now);
        self.user_marks.retain(|_, (_, exp)| *exp > now);
        self.user_claims.retain(|_, (_, exp)| *exp > now);
        let families = &self.families;
        self.user_families.retain(|_, (sids, exp)| {
            sids.retain(|sid, _| families.contains_key(sid));
            *exp > now && !sids.is_empty()
        });
    }

    /// The user's session marks while they live (none: all zero).
    fn marks_of(&self, user_id: &str, now: i64) -> UserMarks {
        self.user_marks
            .get(user_id)
            .filter(|(_, exp)| *exp > now)
            .map(|(m, _)| *m)
            .unwrap_or_default()
    }

    /// The user's claims mark while it lives.
    fn claims_mark_of(&self, user_id: &str, now: i64) -> Option<UserClaims> {
        self.user_claims
            .get(user_id)
            .filter(|(_, exp)| *exp > now)
            .map(|(c, _)| c.clone())
    }

    /// The live family `sid`, dropping it if it has expired.
    fn live_family(&mut self, sid: &str, now: i64) -> Option<&mut Family> {
        if self.families.get(sid).is_some_and(|f| f.expires <= now) {
            self.families.remove(sid);
        }
        self.families.get_mut(sid)
    }

    /// Marks `sid` revoked for at least `ttl_ms`; true if it was live and not yet revoked.
    fn revoke(&mut self, sid: &str, ttl_ms: i64, now: i64, create: bool) -> bool {
        let expires = now.saturating_add(ttl_ms.max(1));
        match self.live_family(sid, now) {
            Some(f) => {
                let was_live = !f.revoked;
                f.revoked = true;
                f.expires = f.expires.max(expires);
                was_live
            }
            None => {
                if create {
                    self.families
                        .insert(sid.to_string(), Family::revoked_stub(expires));
                }
                false
            }
        }
    }
}

/// Refresh families and revocations in memory, expiring by a [`SharedClock`].
pub struct MemorySessions {
    clock: SharedClock,
    inner: Mutex<SessionsInner>,
}

impl MemorySessions {
    /// An empty store reading time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        let last_sweep = clock.now_ms();
        Self {
            clock,
            inner: Mutex::new(SessionsInner {
                last_sweep,
                ..SessionsInner::default()
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
        g.families.len()
            + g.user_families.len()
            + g.revoked_jtis.len()
            + g.user_marks.len()
            + g.user_claims.len()
    }

    /// [`SessionStore::access_status`], with the user's claims when `with_user`.
    fn status(&self, jti: &str, sid: Option<&str>, user_id: &str, with_user: bool) -> AccessStatus {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        let jti_revoked = g.revoked_jtis.get(jti).is_some_and(|exp| *exp > now);
        let family = sid
            .and_then(|sid| g.live_family(sid, now))
            .map(|f| FamilyMarks {
                revoked: f.revoked,
                generation: f.generation,
                credentials_version: f.credentials_version,
            });
        let user = g.marks_of(user_id, now);
        let mark = if with_user {
            g.claims_mark_of(user_id, now)
        } else {
            None
        };
        AccessStatus {
            jti_revoked,
            user,
            family,
            claims: mark,
        }
    }
}

#[async_trait]
impl SessionStore for MemorySessions {
    async fn start_family(&self, family: &NewFamily) -> Result<FamilyStarted, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.maybe_sweep(now);
        // A family resting on an earlier sign-in: refused, under the same lock as the start,
        // if the user's sessions ended since.
        let mut claims = None;
        if let Some(expect) = family.expect {
            let marks = g.marks_of(&family.user_id, now);
            if marks.end(expect.generation, expect.credentials_version) {
                return Ok(FamilyStarted::Ended);
            }
            claims = g.claims_mark_of(&family.user_id, now);
        }
        let expires = now.saturating_add(family.ttl_ms.max(1));
        // The user's list, and the generation the family starts under (one lock: a "log out
        // everywhere" comes wholly before or after).
        let set_expires = expires.max(family.expires_at_ms);
        let entry = g
            .user_families
            .entry(family.user_id.clone())
            .or_insert_with(|| (HashMap::new(), set_expires));
        if entry.1 <= now {
            entry.0.clear();
        }
        entry.0.retain(|_, (_, end)| *end > now);
        entry.0.insert(
            family.sid.clone(),
            (family.started_at_ms, family.expires_at_ms),
        );
        entry.1 = entry.1.max(set_expires);
        let over = entry
            .0
            .len()
            .saturating_sub(usize::try_from(family.max_sessions.max(1)).unwrap_or(usize::MAX));
        // Only a login past the cap pays for finding the oldest.
        let mut oldest: Vec<(i64, String)> = Vec::new();
        if over > 0 {
            oldest = entry
                .0
                .iter()
                .map(|(sid, (started, _))| (*started, sid.clone()))
                .collect();
            oldest.sort();
            oldest.truncate(over);
        }
        for (_, sid) in &oldest {
            entry.0.remove(sid);
        }
        let generation = match g.user_marks.get_mut(&family.user_id) {
            Some((m, exp)) if *exp > now => {
                *exp = (*exp).max(set_expires);
                m.generation
            }
            _ => 0,
        };
        for (_, sid) in &oldest {
            g.revoke(sid, family.ttl_ms, now, false);
        }
        // A family id revoked before it was started stays revoked.
        let revoked = g.live_family(&family.sid, now).is_some_and(|f| f.revoked);
        g.families.insert(
            family.sid.clone(),
            Family {
                user_id: family.user_id.clone(),
                client_id: family.client_id.clone(),
                cur: family.refresh_jti.clone(),
                iat: family.issued_at,
                prev: None,
                exp_ms: family.expires_at_ms,
                revoked,
                expires,
                generation,
                credentials_version: family.credentials_version,
                agent: family.user_agent.as_deref().and_then(Agent::of),
                ip: super::ip_bytes(family.ip.as_deref()),
            },
        );
        Ok(FamilyStarted::Started {
            evicted: oldest.len() as u64,
            claims,
        })
    }

    async fn rotate(&self, req: &RotateRequest) -> Result<RotateOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.maybe_sweep(now);
        let Some(f) = g.live_family(&req.sid, now) else {
            return Ok(RotateOutcome::Unknown);
        };
        if f.revoked {
            return Ok(RotateOutcome::Revoked);
        }
        if f.cur == req.presented_jti {
            f.prev = Some((std::mem::take(&mut f.cur), req.now_ms));
            f.cur = req.new_refresh_jti.clone();
            f.iat = req.issued_at;
            f.expires = now.saturating_add(req.ttl_ms.max(1));
            return Ok(RotateOutcome::Rotated);
        }
        if let Some((prev, at)) = &f.prev {
            if *prev == req.presented_jti && req.now_ms.saturating_sub(*at) <= req.leeway_ms {
                return Ok(RotateOutcome::Replayed {
                    refresh_jti: f.cur.clone(),
                    issued_at: f.iat,
                });
            }
        }
        f.revoked = true;
        f.expires = f.expires.max(now.saturating_add(req.revoked_ttl_ms.max(1)));
        Ok(RotateOutcome::Reused)
    }

    async fn family(&self, sid: &str) -> Result<Option<FamilyState>, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        Ok(g.live_family(sid, now).map(|f| FamilyState {
            user_id: f.user_id.clone(),
            client_id: f.client_id.clone(),
            current_refresh_jti: f.cur.clone(),
            issued_at: f.iat,
            expires_at_ms: f.exp_ms,
            revoked: f.revoked,
            auth_time: 0,
            user: None,
            user_agent: f.agent.map(Agent::describe),
            ip: super::ip_text(&f.ip),
            last_refreshed_at_ms: f.prev.as_ref().map(|(_, at)| *at),
            generation: f.generation,
            credentials_version: f.credentials_version,
        }))
    }

    async fn revoke_family(&self, sid: &str, ttl_ms: i64) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.maybe_sweep(now);
        g.revoke(sid, ttl_ms, now, true);
        Ok(())
    }

    async fn revoke_user_sessions(
        &self,
        user_id: &str,
        credentials_version: Option<i64>,
        ttl_ms: i64,
    ) -> Result<u64, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.maybe_sweep(now);
        let listed = match g.user_families.remove(user_id) {
            Some((sids, exp)) if exp > now => sids.len() as u64,
            _ => 0,
        };
        let expires = now.saturating_add(ttl_ms.max(1));
        let entry = g
            .user_marks
            .entry(user_id.to_string())
            .or_insert((UserMarks::default(), expires));
        if entry.1 <= now {
            entry.0 = UserMarks::default();
        }
        entry.0.generation += 1;
        if let Some(v) = credentials_version {
            entry.0.credentials_version = entry.0.credentials_version.max(v);
        }
        entry.1 = entry.1.max(expires);
        Ok(listed)
    }

    async fn user_families(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .user_family_logins(user_id)
            .await?
            .into_iter()
            .map(|(sid, _)| sid)
            .collect())
    }

    async fn user_family_logins(&self, user_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let now = self.clock.now_ms();
        let g = lock(&self.inner);
        let mut listed: Vec<(i64, String)> = match g.user_families.get(user_id) {
            Some((sids, exp)) if *exp > now => sids
                .iter()
                .filter(|(_, (_, ends))| *ends > now)
                .map(|(sid, (login, _))| (*login, sid.clone()))
                .collect(),
            _ => Vec::new(),
        };
        listed.sort();
        Ok(listed
            .into_iter()
            .map(|(login, sid)| (sid, login))
            .collect())
    }

    async fn revoke_jti(&self, jti: &str, ttl_ms: i64) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.maybe_sweep(now);
        let expires = now.saturating_add(ttl_ms.max(1));
        let e = g.revoked_jtis.entry(jti.to_string()).or_insert(expires);
        *e = if *e <= now {
            expires
        } else {
            (*e).max(expires)
        };
        Ok(())
    }

    async fn set_user_claims(
        &self,
        user_id: &str,
        claims: &UserClaims,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.maybe_sweep(now);
        let expires = now.saturating_add(ttl_ms.max(1));
        keep_newest(
            &mut g.user_claims,
            user_id,
            claims.clone(),
            expires,
            now,
            |new, cur| new.version >= cur.version,
        );
        Ok(())
    }

    async fn access_status(
        &self,
        jti: &str,
        sid: Option<&str>,
        user_id: &str,
    ) -> Result<AccessStatus, StoreError> {
        Ok(self.status(jti, sid, user_id, false))
    }

    async fn access_status_with_user(
        &self,
        jti: &str,
        sid: Option<&str>,
        user_id: &str,
    ) -> Result<AccessStatus, StoreError> {
        Ok(self.status(jti, sid, user_id, true))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Lease
// ---------------------------------------------------------------------------------------------

/// The rotation lease in memory (one process: it only ever competes with itself).
pub struct MemoryLease {
    clock: SharedClock,
    /// name -> (holder, clock time it lapses)
    inner: Mutex<HashMap<String, (String, i64)>>,
}

impl MemoryLease {
    /// An empty store reading time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            inner: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl LeaseStore for MemoryLease {
    async fn try_acquire(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.retain(|_, (_, exp)| *exp > now);
        if g.contains_key(name) {
            return Ok(false);
        }
        g.insert(
            name.to_string(),
            (holder.to_string(), now.saturating_add(ttl_ms.max(1))),
        );
        Ok(true)
    }

    async fn release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut g = lock(&self.inner);
        if g.get(name).is_some_and(|(h, _)| h == holder) {
            g.remove(name);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limits and back-off
// ---------------------------------------------------------------------------------------------

/// Rate limits and failed-login back-off in memory (one instance).
pub struct MemoryLimits {
    clock: SharedClock,
    /// key -> theoretical arrival time (ms)
    rates: Mutex<HashMap<String, i64>>,
    /// account -> (failures, back-off end ms, forget at ms)
    failures: Mutex<HashMap<String, (u32, i64, i64)>>,
}

impl MemoryLimits {
    /// An empty store reading time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            rates: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl crate::store::LimitStore for MemoryLimits {
    async fn rate_check(
        &self,
        key: &str,
        now_ms: i64,
        emission_ms: i64,
        burst: u32,
    ) -> Result<Option<i64>, StoreError> {
        let t = emission_ms.max(1);
        let tau = t.saturating_mul(i64::from(burst.max(1)) - 1);
        let mut g = lock(&self.rates);
        if g.len() > 10_000 {
            g.retain(|_, tat| *tat > now_ms);
        }
        let tat = g.get(key).copied().unwrap_or(now_ms).max(now_ms);
        if tat - now_ms > tau {
            return Ok(Some(tat - now_ms - tau));
        }
        g.insert(key.to_string(), tat + t);
        Ok(None)
    }

    async fn rate_refund(
        &self,
        key: &str,
        now_ms: i64,
        emission_ms: i64,
    ) -> Result<(), StoreError> {
        let mut g = lock(&self.rates);
        if let Some(tat) = g.get_mut(key) {
            *tat = tat.saturating_sub(emission_ms.max(1)).max(now_ms);
        }
        Ok(())
    }

    async fn backoff_until(&self, account: &str) -> Result<Option<i64>, StoreError> {
        let now = self.clock.now_ms();
        let g = lock(&self.failures);
        Ok(g.get(account)
            .filter(|(_, until, forget)| *forget > now && *until > 0)
            .map(|(_, until, _)| *until))
    }

    async fn reserve_attempt(
        &self,
        account: &str,
        now_ms: i64,
        policy: crate::store::BackoffPolicy,
    ) -> Result<Option<i64>, StoreError> {
        // One lock for the check and the count: concurrent guesses queue here.
        let mut g = lock(&self.failures);
        if let Some((_, until, forget)) = g.get(account) {
            if *forget > now_ms && *until > now_ms {
                return Ok(Some(*until));
            }
        }
        count_failure(&mut g, account, now_ms, policy);
        Ok(None)
    }

    async fn record_failure(
        &self,
        account: &str,
        now_ms: i64,
        policy: crate::store::BackoffPolicy,
    ) -> Result<i64, StoreError> {
        Ok(count_failure(
            &mut lock(&self.failures),
            account,
            now_ms,
            policy,
        ))
    }

    async fn clear_failures(&self, account: &str) -> Result<(), StoreError> {
        lock(&self.failures).remove(account);
        Ok(())
    }
}

/// Counts one failure for `account`; returns the back-off end (ms; 0 when none).
fn count_failure(
    g: &mut HashMap<String, (u32, i64, i64)>,
    account: &str,
    now_ms: i64,
    policy: crate::store::BackoffPolicy,
) -> i64 {
    {
        if g.len() > 10_000 {
            g.retain(|_, (_, _, forget)| *forget > now_ms);
        }
        let entry = g.entry(account.to_string()).or_insert((0, 0, 0));
        if entry.2 <= now_ms {
            *entry = (0, 0, 0);
        }
        entry.0 = entry.0.saturating_add(1);
        let delay = policy.delay_ms(entry.0);
        if delay > 0 {
            entry.1 = now_ms + delay;
        }
        entry.2 = now_ms + delay + policy.window_ms.max(1);
        if delay > 0 {
            entry.1
        } else {
            0
        }
    }
}
