//! Refresh families in one Redis key per user (docs/sessions.md, "The records"): the hash
//! `{prefix}sfam:{<user id>}` holds each of the user's families as one field — its 8-character
//! id — whose value is the family packed into at most 61 bytes, so the hash stays a listpack
//! and a one-family user costs 244 bytes of Redis. What the family's tokens carry (scope,
//! `auth_time`, the user's claims, the DPoP key) is not kept; the access token's `jti` is
//! derived from the refresh token's.
//!
//! The packed family (little-endian):
//!
//! | bytes | what |
//! | --- | --- |
//! | 1 | flags: 1 revoked, 2 has a previous token |
//! | 16 | the current refresh token's `jti` (its 128 bits) |
//! | 6 | the first 48 bits of the previous refresh token's `jti` |
//! | 6 | Unix ms the current pair was issued (when revoked: when it was) |
//! | 4 | Unix seconds the family ends |
//! | 3 | the user's session generation at the login |
//! | 3 | the credentials version the login read |
//! | 6 | Unix ms of the login |
//! | 6 | the client: 48 bits of SHA-256 of its id, named in `{prefix}clients` |
//! | 2 | the agent ([`Agent`]) |
//! | 0, 4 or 8 | the address: IPv4, or an IPv6 /64 network |
//!
//! A family ends (its field is dropped at the user's next login) when its session is over,
//! when its refresh token has been unused for the refresh lifetime, or, once revoked, when its
//! access tokens have expired; the hash lives as long as its longest-lived family.

use std::collections::HashMap;

use base64::Engine;
use redis::{Script, Value};

use super::{parse_reply, ttl_arg, user_claims, RedisStore, STORE};
use crate::store::agent::Agent;
use crate::store::{
    family_sid, ip_bytes, ip_text, FamilyMarks, FamilyStarted, FamilyState, NewFamily,
    RotateOutcome, RotateRequest, StoreError,
};

/// Revoked families a user's hash keeps (the newest); older ones are dropped, and the user's
/// mark `rf` makes a missing family of theirs count as revoked.
const KEEP_REVOKED: usize = 16;
/// Live families from which a user gets a queue of their oldest ([`START_LUA`]).
const QUEUE_FROM: usize = 16;
/// How many of the oldest live families the queue names.
const QUEUE_LEN: usize = 32;

/// The packed head every script reads: flags, current, previous, issued, end, generation,
/// credentials version, login.
const HEAD: &str = "'<Bc16c6I6I4I3I3I6'";

/// Starts a family in the user's hash. Checks a conditional start's marks first (as in the
/// layout before); writes this one under the user's session generation (spliced into bytes
/// 34–36), keeping it revoked if its id was revoked before it started; ends the oldest beyond
/// the cap. Returns the generation, the user's claims mark (empty unless the start is
/// conditional), how many families here it ended, and the ids it popped from the user's list
/// from before.
///
/// Most starts read the whole hash: they drop the families that are over, end the oldest
/// beyond the cap — families still listed in the user's list from before first (their ids
/// are returned, to be revoked in their own keys), then the oldest by login here — and keep
/// the [`KEEP_REVOKED`] newest revoked families, dropping older ones (the user's mark `rf`
/// then says that a family of theirs missing from the hash is revoked). A user with
/// [`QUEUE_FROM`] live families or more gets a queue in their marks: `q`, the ids of the
/// [`QUEUE_LEN`] oldest by login; `qn`, how many are live; `qt`, when the first of them could
/// be over; `ql`, the idle lifetime that was computed with; `qm`, the newest login queued. A
/// start that finds the queue valid (nothing over yet, the same lifetime, a login no older
/// than the queue's) ends the oldest from the queue and reads nothing else, so a user at the
/// cap costs Redis the same per login as a user with one family (docs/sessions.md, "The
/// user's families and the session cap"). Whatever ends a live family otherwise (a revocation,
/// a reuse) drops `q`.
///
/// KEYS[1] the user's families, KEYS[2] the user's session marks, KEYS[3] the user's claims
/// mark, KEYS[4] the user's list from before (one slot: the user's); ARGV: field, packed
/// family, ttl_ms (a family unused this long is over), max families, the sign-in's generation
/// and credentials version ('' and '' for an unconditional start), revoked_ttl_ms.
const START_LUA: &str = r#"
local marks = redis.call('HMGET', KEYS[2], 'gen', 'cv', 'q', 'qn', 'qt', 'ql', 'qm')
local gen = marks[1] or '0'
local claims = {'', '', ''}
if ARGV[5] ~= '' then
  if tonumber(gen) > tonumber(ARGV[5]) or tonumber(marks[2] or '0') > tonumber(ARGV[6]) then
    return {'ended'}
  end
  local c = redis.call('HMGET', KEYS[3], 'v', 'u', 'r')
  claims = {c[1] or '', c[2] or '', c[3] or ''}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl, rttl, cap = tonumber(ARGV[3]), tonumber(ARGV[7]), tonumber(ARGV[4])
local v = ARGV[2]
local _, _, _, issued, exp, _, _, login = struct.unpack(HEAD, v)
local flags = string.byte(v, 1)
local prior = redis.call('HGET', KEYS[1], ARGV[1])
if prior and bit.band(string.byte(prior, 1), 1) == 1 then flags = bit.bor(flags, 1) end
v = string.char(flags) .. string.sub(v, 2, 33) .. struct.pack('<I3', tonumber(gen))
  .. string.sub(v, 37)
local over_at = math.min(exp * 1000, issued + ttl)
local reply = {gen, claims[1], claims[2], claims[3], 0}
local function revoke(f, r)
  redis.call('HSET', KEYS[1], f, string.char(bit.bor(string.byte(r, 1), 1))
    .. string.sub(r, 2, 23) .. struct.pack('<I6', now) .. string.sub(r, 30))
  reply[5] = reply[5] + 1
end
local function keep_marks()
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
  local keep = math.max(ttl, exp * 1000 - now)
  if redis.call('EXISTS', KEYS[2]) == 1 and redis.call('PTTL', KEYS[2]) < keep then
    redis.call('PEXPIRE', KEYS[2], string.format('%d', keep))
  end
end
if marks[3] and not prior and marks[6] == ARGV[3] and now < tonumber(marks[5])
  and login >= tonumber(marks[7]) then
  local live, queue, valid = tonumber(marks[4]) + 1, marks[3], true
  while valid and live > cap do
    local sp = string.find(queue, ' ', 1, true)
    local f, r
    if sp then
      f = string.sub(queue, 1, sp - 1)
      r = redis.call('HGET', KEYS[1], f)
    end
    if r and bit.band(string.byte(r, 1), 1) == 0 then
      revoke(f, r)
      queue = string.sub(queue, sp + 1)
      live = live - 1
    else
      valid = false
    end
  end
  if valid then
    redis.call('HSET', KEYS[1], ARGV[1], v)
    redis.call('HSET', KEYS[2], 'q', queue, 'qn', live,
      'qt', string.format('%d', math.min(tonumber(marks[5]), over_at)))
    keep_marks()
    return reply
  end
end
local all = redis.call('HGETALL', KEYS[1])
local live, revoked = {}, {}
for i = 1, #all, 2 do
  local f = all[i]
  if f ~= ARGV[1] then
    local fl, _, _, ft, fexp, _, _, flogin = struct.unpack(HEAD, all[i + 1])
    if bit.band(fl, 1) == 1 then
      if now >= ft + rttl then redis.call('HDEL', KEYS[1], f)
      else revoked[#revoked + 1] = {ft, f} end
    elseif now >= fexp * 1000 or now >= ft + ttl then redis.call('HDEL', KEYS[1], f)
    else live[#live + 1] = {flogin, f, math.min(fexp * 1000, ft + ttl)} end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], v)
local excess = #live + 1 - cap
local kind = redis.call('TYPE', KEYS[4]).ok
if kind == 'set' then
  -- A list from before the cap: its families, of unknown age, count as the oldest.
  local old = redis.call('SMEMBERS', KEYS[4])
  redis.call('DEL', KEYS[4])
  for _, sid in ipairs(old) do redis.call('ZADD', KEYS[4], 0, sid) end
  kind = 'zset'
end
if kind == 'zset' then
  local length = exp * 1000 - login
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '1', string.format('(%d', now - length))
  excess = excess + redis.call('ZCARD', KEYS[4])
  if excess > 0 then
    local popped = redis.call('ZPOPMIN', KEYS[4], excess)
    for i = 1, #popped, 2 do reply[#reply + 1] = popped[i]; excess = excess - 1 end
  end
  if redis.call('EXISTS', KEYS[4]) == 0 then kind = 'none' end
end
local first = 1
if excess > 0 then
  table.sort(live, function(a, b) return a[1] < b[1] end)
  for i = 1, excess do
    local f = live[i][2]
    revoke(f, redis.call('HGET', KEYS[1], f))
    revoked[#revoked + 1] = {now, f}
  end
  first = excess + 1
end
if #revoked > KEEP_REVOKED then
  table.sort(revoked, function(a, b) return a[1] > b[1] end)
  for i = KEEP_REVOKED + 1, #revoked do redis.call('HDEL', KEYS[1], revoked[i][2]) end
  redis.call('HSET', KEYS[2], 'rf', '1')
end
if kind == 'none' and not prior and #live - first + 2 >= QUEUE_FROM then
  local rest = {{login, ARGV[1], over_at}}
  for i = first, #live do rest[#rest + 1] = live[i] end
  table.sort(rest, function(a, b) return a[1] < b[1] end)
  local queue, qt = {}, over_at
  for i = 1, #rest do qt = math.min(qt, rest[i][3]) end
  for i = 1, math.min(QUEUE_LEN, #rest) do queue[i] = rest[i][2] .. ' ' end
  redis.call('HSET', KEYS[2], 'q', table.concat(queue), 'qn', #rest,
    'qt', string.format('%d', qt), 'ql', ARGV[3],
    'qm', string.format('%d', rest[#queue][1]))
elseif marks[3] then
  redis.call('HDEL', KEYS[2], 'q')
end
keep_marks()
return reply
"#;

/// The refresh exchange of docs/sessions.md on one family of the user's hash. Returns
/// `{'unknown'}` when the family is not there or its session is over, otherwise the outcome
/// (`rotated`, `replayed`, `reused`, `revoked`) and the family as it was.
///
/// KEYS[1] the user's families, KEYS[2] the user's session marks (a reuse drops their queue);
/// ARGV: field, presented `jti` (16 bytes), new `jti` (16 bytes), now_ms, leeway_ms, ttl_ms.
const EXCHANGE_LUA: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return {'unknown'} end
local flags, cur, prev, t, exp = struct.unpack(HEAD, v)
local now = tonumber(ARGV[4])
if math.floor(now / 1000) >= exp then return {'unknown'} end
if bit.band(flags, 1) == 1 then return {'revoked', v} end
if cur == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1],
    struct.pack('<Bc16c6I6', 2, ARGV[3], string.sub(ARGV[2], 1, 6), now) .. string.sub(v, 30))
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[6]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
  end
  return {'rotated', v}
end
if bit.band(flags, 2) == 2 and prev == string.sub(ARGV[2], 1, 6)
  and now - t <= tonumber(ARGV[5]) then
  return {'replayed', v}
end
redis.call('HSET', KEYS[1], ARGV[1], string.char(bit.bor(flags, 1)) .. string.sub(v, 2, 23)
  .. struct.pack('<I6', now) .. string.sub(v, 30))
redis.call('HDEL', KEYS[2], 'q')
return {'reused', v}
"#;

/// Marks a family of the user's hash revoked (from now: its field lives `ttl_ms` more at
/// least). Returns 1 if it was live, 2 if it was revoked already, 0 if it was not there (a
/// revoked stub is written only when ARGV[3] is '1').
///
/// KEYS[1] the user's families, KEYS[2] the user's session marks (ending a live family drops
/// their queue); ARGV: field, ttl_ms, create.
const REVOKE_LUA: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local was = 0
if v then
  local flags = string.byte(v, 1)
  if bit.band(flags, 1) == 1 then was = 2 else was = 1; redis.call('HDEL', KEYS[2], 'q') end
  redis.call('HSET', KEYS[1], ARGV[1], string.char(bit.bor(flags, 1)) .. string.sub(v, 2, 23)
    .. struct.pack('<I6', now) .. string.sub(v, 30))
elseif ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], struct.pack(HEAD, 1, string.rep('\0', 16),
    string.rep('\0', 6), now, math.floor((now + ttl) / 1000) + 1, 0, 0, 0)
    .. string.rep('\0', 8))
else
  return 0
end
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return was
"#;

/// Names a client's digest in `{prefix}clients` (the first name stays), and keeps the key
/// until the family just started has ended at least.
///
/// KEYS[1] the clients; ARGV: digest, client id, keep_ms.
const CLIENT_NAME_LUA: &str = r#"
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"#;

/// The scripts of this layout.
pub(super) struct FamilyScripts {
    start: Script,
    exchange: Script,
    revoke: Script,
    client_name: Script,
}

impl FamilyScripts {
    pub(super) fn new() -> Self {
        let with_head = |lua: &str| {
            Script::new(
                &lua.replace("HEAD", HEAD)
                    .replace("KEEP_REVOKED", &KEEP_REVOKED.to_string())
                    .replace("QUEUE_FROM", &QUEUE_FROM.to_string())
                    .replace("QUEUE_LEN", &QUEUE_LEN.to_string()),
            )
        };
        Self {
            start: with_head(START_LUA),
            exchange: with_head(EXCHANGE_LUA),
            revoke: with_head(REVOKE_LUA),
            client_name: Script::new(CLIENT_NAME_LUA),
        }
    }
}

/// The flag of a revoked family.
const REVOKED: u8 = 1;
/// The flag of a family whose previous token is kept.
const HAS_PREVIOUS: u8 = 2;
/// Bytes before the address.
const FIXED: usize = 53;

/// One family as its field holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Packed {
    flags: u8,
    current: [u8; 16],
    previous: [u8; 6],
    issued_ms: i64,
    ends_s: i64,
    generation: i64,
    credentials_version: i64,
    login_ms: i64,
    client: [u8; 6],
    agent: [u8; 2],
    ip: Vec<u8>,
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::corrupt(STORE, format!("a packed family {what}"))
}

/// `v` in `n` little-endian bytes; an error if it does not fit.
fn put(out: &mut Vec<u8>, v: i64, n: usize) -> Result<(), StoreError> {
    let bytes = u64::try_from(v)
        .ok()
        .filter(|v| n == 8 || *v < 1 << (8 * n))
        .ok_or_else(|| corrupt(format!("value {v} does not fit {n} bytes")))?
        .to_le_bytes();
    out.extend_from_slice(&bytes[..n]);
    Ok(())
}

fn get(b: &[u8], at: usize, n: usize) -> i64 {
    let mut bytes = [0u8; 8];
    bytes[..n].copy_from_slice(&b[at..at + n]);
    i64::from_le_bytes(bytes)
}

/// A `jti` as the 16 bytes it encodes; `None` for anything else.
pub(super) fn jti_bytes(jti: &str) -> Option<[u8; 16]> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jti)
        .ok()?;
    raw.try_into().ok()
}

fn jti_text(raw: &[u8; 16]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The 48 bits a family keeps of its client's id.
fn client_digest(client_id: &str) -> [u8; 6] {
    let d = ring::digest::digest(&ring::digest::SHA256, client_id.as_bytes());
    let mut out = [0u8; 6];
    out.copy_from_slice(&d.as_ref()[..6]);
    out
}

impl Packed {
    /// A new family's record (generation 0: the start script writes the user's).
    fn new(f: &NewFamily) -> Result<Packed, StoreError> {
        let current = jti_bytes(&f.refresh_jti)
            .ok_or_else(|| corrupt("needs a 22-character base64url refresh jti"))?;
        Ok(Packed {
            flags: 0,
            current,
            previous: [0; 6],
            issued_ms: f.issued_at * 1000,
            ends_s: f.expires_at_ms.div_euclid(1000),
            generation: 0,
            credentials_version: f.credentials_version,
            login_ms: f.started_at_ms,
            client: client_digest(&f.client_id),
            agent: f
                .user_agent
                .as_deref()
                .and_then(Agent::of)
                .map_or([0; 2], Agent::to_bytes),
            ip: ip_bytes(f.ip.as_deref()),
        })
    }

    pub(super) fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(FIXED + self.ip.len());
        out.push(self.flags);
        out.extend_from_slice(&self.current);
        out.extend_from_slice(&self.previous);
        put(&mut out, self.issued_ms, 6)?;
        put(&mut out, self.ends_s, 4)?;
        put(&mut out, self.generation, 3)?;
        put(&mut out, self.credentials_version, 3)?;
        put(&mut out, self.login_ms, 6)?;
        out.extend_from_slice(&self.client);
        out.extend_from_slice(&self.agent);
        out.extend_from_slice(&self.ip);
        Ok(out)
    }

    pub(super) fn decode(b: &[u8]) -> Result<Packed, StoreError> {
        if b.len() < FIXED {
            return Err(corrupt(format!("of {} bytes", b.len())));
        }
        let mut current = [0u8; 16];
        current.copy_from_slice(&b[1..17]);
        let mut previous = [0u8; 6];
        previous.copy_from_slice(&b[17..23]);
        let mut client = [0u8; 6];
        client.copy_from_slice(&b[45..51]);
        let mut agent = [0u8; 2];
        agent.copy_from_slice(&b[51..53]);
        Ok(Packed {
            flags: b[0],
            current,
            previous,
            issued_ms: get(b, 23, 6),
            ends_s: get(b, 29, 4),
            generation: get(b, 33, 3),
            credentials_version: get(b, 36, 3),
            login_ms: get(b, 39, 6),
            client,
            agent,
            ip: b[FIXED..].to_vec(),
        })
    }

    fn revoked(&self) -> bool {
        self.flags & REVOKED != 0
    }

    fn marks(&self) -> FamilyMarks {
        FamilyMarks {
            revoked: self.revoked(),
            generation: self.generation,
            credentials_version: self.credentials_version,
        }
    }

    /// The family as the store's callers see it, `client_id` as given.
    fn state(&self, user_id: &str, client_id: String) -> FamilyState {
        FamilyState {
            user_id: user_id.to_string(),
            client_id,
            current_refresh_jti: jti_text(&self.current),
            issued_at: self.issued_ms.div_euclid(1000),
            expires_at_ms: self.ends_s * 1000,
            revoked: self.revoked(),
            auth_time: 0,
            user: None,
            user_agent: Agent::from_bytes(self.agent).map(Agent::describe),
            ip: ip_text(&self.ip),
            last_refreshed_at_ms: (self.flags & HAS_PREVIOUS != 0).then_some(self.issued_ms),
            generation: self.generation,
            credentials_version: self.credentials_version,
        }
    }
}

/// The family marks of one `HGET` of a family's field (`None`: not there).
pub(super) fn marks_of(reply: Option<Vec<u8>>) -> Result<Option<FamilyMarks>, StoreError> {
    reply
        .map(|b| Packed::decode(&b).map(|p| p.marks()))
        .transpose()
}

impl RedisStore {
    /// The user's families.
    pub(super) fn families_key(&self, user_id: &str) -> String {
        format!("{}sfam:{{{user_id}}}", self.prefix)
    }

    /// The clients named by the families: 48-bit digest -> client id; it lives as long as the
    /// longest family started since it was written.
    fn clients_key(&self) -> String {
        format!("{}clients", self.prefix)
    }

    /// The client a family names, from this process's copy of `{prefix}clients` or else the
    /// key itself (a digest names one client for good, so the copy never goes stale); empty
    /// when the key no longer knows it.
    async fn client_name(&self, digest: [u8; 6]) -> Result<String, StoreError> {
        if let Some(name) = self.client_names().get(&digest) {
            return Ok(name.clone());
        }
        let key = self.clients_key();
        let name: Option<String> = self
            .run(|mut c| {
                let key = key.clone();
                async move {
                    redis::cmd("HGET")
                        .arg(key)
                        .arg(&digest[..])
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        match name {
            Some(name) => {
                self.client_names().insert(digest, name.clone());
                Ok(name)
            }
            None => Ok(String::new()),
        }
    }

    fn client_names(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 6], String>> {
        self.client_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`crate::store::SessionStore::start_family`] for a family whose sid names its user:
    /// the start script and the client's name (`HSETNX`), in one round trip on a single
    /// server. Returns the outcome and the ids popped from the user's list from before.
    pub(super) async fn start_packed(
        &self,
        family: &NewFamily,
        field: &str,
    ) -> Result<(FamilyStarted, Vec<String>), StoreError> {
        let packed = Packed::new(family)?;
        let value = packed.encode()?;
        let user = &family.user_id;
        let (expect_gen, expect_cv) = match family.expect {
            Some(m) => (m.generation.to_string(), m.credentials_version.to_string()),
            None => (String::new(), String::new()),
        };
        let keys = [
            self.families_key(user),
            self.user_marks_key(user),
            self.user_claims_key(user),
            self.user_families_key(user),
        ];
        let started = self.run(|mut c| {
            let (keys, scripts) = (keys.clone(), self.scripts.clone());
            let (value, expect_gen, expect_cv) =
                (value.clone(), expect_gen.clone(), expect_cv.clone());
            async move {
                scripts
                    .families
                    .start
                    .key(&keys[..])
                    .arg(field)
                    .arg(value)
                    .arg(ttl_arg(family.ttl_ms))
                    .arg(family.max_sessions.max(1))
                    .arg(expect_gen)
                    .arg(expect_cv)
                    .arg(ttl_arg(family.revoked_ttl_ms))
                    .invoke_async::<Value>(&mut c)
                    .await
            }
        });
        // The client's name, sent alongside on the same connection (another slot).
        let clients = self.clients_key();
        let keep = ttl_arg(
            (family.expires_at_ms - family.started_at_ms)
                .max(family.ttl_ms)
                .max(family.revoked_ttl_ms),
        );
        let named = self.run(|mut c| {
            let (clients, scripts) = (clients.clone(), self.scripts.clone());
            async move {
                scripts
                    .families
                    .client_name
                    .key(clients)
                    .arg(&packed.client[..])
                    .arg(&family.client_id)
                    .arg(keep)
                    .invoke_async::<i64>(&mut c)
                    .await
            }
        });
        let (reply, _) = futures_util::try_join!(started, named)?;
        let reply: Vec<String> = parse_reply(Some(reply))?;
        if reply.len() == 1 && reply[0] == "ended" {
            return Ok((FamilyStarted::Ended, Vec::new()));
        }
        if reply.len() < 5 {
            return Err(StoreError::corrupt(
                STORE,
                format!("unexpected family start reply {reply:?}"),
            ));
        }
        let mark = |i: usize| Some(reply[i].clone()).filter(|v| !v.is_empty());
        let claims = user_claims("the user's", mark(1), mark(2), mark(3))?;
        let ended_here: u64 = reply[4]
            .parse()
            .map_err(|_| corrupt(format!("start counted {:?}", reply[4])))?;
        let listed = reply[5..].to_vec();
        self.client_names()
            .insert(packed.client, family.client_id.clone());
        Ok((
            FamilyStarted::Started {
                evicted: ended_here + listed.len() as u64,
                claims,
            },
            listed,
        ))
    }

    /// [`crate::store::SessionStore::exchange`] for a family whose sid names its user (the
    /// family comes back without its client's name: the token names it).
    pub(super) async fn exchange_packed(
        &self,
        req: &RotateRequest,
        field: &str,
        user: &str,
    ) -> Result<Option<(FamilyState, RotateOutcome)>, StoreError> {
        let next = jti_bytes(&req.new_refresh_jti)
            .ok_or_else(|| corrupt("needs a 22-character base64url refresh jti"))?;
        // A presented `jti` of another form was never issued to the family: compared as its
        // digest, it matches nothing, and so counts as a reuse.
        let presented = jti_bytes(&req.presented_jti).unwrap_or_else(|| {
            let d = ring::digest::digest(&ring::digest::SHA256, req.presented_jti.as_bytes());
            let mut out = [0u8; 16];
            out.copy_from_slice(&d.as_ref()[..16]);
            out
        });
        let keys = [self.families_key(user), self.user_marks_key(user)];
        let reply: Vec<Vec<u8>> = self
            .run(|mut c| {
                let (keys, scripts) = (keys.clone(), self.scripts.clone());
                async move {
                    scripts
                        .families
                        .exchange
                        .key(&keys[..])
                        .arg(field)
                        .arg(&presented[..])
                        .arg(&next[..])
                        .arg(req.now_ms)
                        .arg(req.leeway_ms)
                        .arg(ttl_arg(req.ttl_ms))
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        let [outcome, value] = reply.as_slice() else {
            if reply.first().map(Vec::as_slice) == Some(b"unknown".as_slice()) {
                return Ok(None);
            }
            return Err(corrupt(format!("exchange answered {} parts", reply.len())));
        };
        let packed = Packed::decode(value)?;
        let outcome = match outcome.as_slice() {
            b"rotated" => RotateOutcome::Rotated,
            b"revoked" => RotateOutcome::Revoked,
            b"reused" => RotateOutcome::Reused,
            b"replayed" => RotateOutcome::Replayed {
                refresh_jti: jti_text(&packed.current),
                issued_at: packed.issued_ms.div_euclid(1000),
            },
            other => {
                return Err(corrupt(format!(
                    "exchange answered {:?}",
                    String::from_utf8_lossy(other)
                )))
            }
        };
        Ok(Some((packed.state(user, String::new()), outcome)))
    }

    /// [`crate::store::SessionStore::family`] for a family whose sid names its user.
    pub(super) async fn family_packed(
        &self,
        field: &str,
        user: &str,
    ) -> Result<Option<FamilyState>, StoreError> {
        let key = self.families_key(user);
        let value: Option<Vec<u8>> = self
            .run(|mut c| {
                let key = key.clone();
                async move {
                    redis::cmd("HGET")
                        .arg(key)
                        .arg(field)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        let Some(value) = value else {
            return Ok(None);
        };
        let packed = Packed::decode(&value)?;
        let client = self.client_name(packed.client).await?;
        Ok(Some(packed.state(user, client)))
    }

    /// Revokes a family whose sid names its user (see [`REVOKE_LUA`] for the answer).
    pub(super) async fn revoke_packed(
        &self,
        field: &str,
        user: &str,
        ttl_ms: i64,
        create: bool,
    ) -> Result<i64, StoreError> {
        let keys = [self.families_key(user), self.user_marks_key(user)];
        self.run(|mut c| {
            let (keys, scripts) = (keys.clone(), self.scripts.clone());
            async move {
                scripts
                    .families
                    .revoke
                    .key(&keys[..])
                    .arg(field)
                    .arg(ttl_arg(ttl_ms))
                    .arg(if create { "1" } else { "0" })
                    .invoke_async(&mut c)
                    .await
            }
        })
        .await
    }

    /// The user's live families of this layout with their logins (Unix ms).
    pub(super) async fn logins_packed(&self, user: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let key = self.families_key(user);
        let all: Vec<(Vec<u8>, Vec<u8>)> = self
            .run(|mut c| {
                let key = key.clone();
                async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await }
            })
            .await?;
        let mut listed = Vec::with_capacity(all.len());
        for (field, value) in all {
            let packed = Packed::decode(&value)?;
            if packed.revoked() {
                continue;
            }
            let field = String::from_utf8(field).map_err(|_| corrupt("has a field not UTF-8"))?;
            listed.push((family_sid(&field, user), packed.login_ms));
        }
        Ok(listed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(ip: Option<&str>, agent: Option<&str>) -> NewFamily {
        NewFamily {
            sid: family_sid("AAAAAAAA", "u1"),
            user_id: "0193a0b2-7c4d-7e8f-9a0b-1c2d3e4f5a6b".into(),
            client_id: "tokend".into(),
            refresh_jti: "q83vEjRWeJCrze8SNFZ4kA".into(),
            issued_at: 1_764_570_000,
            expires_at_ms: 1_767_162_000_000,
            started_at_ms: 1_764_570_000_123,
            ttl_ms: 1_209_600_000,
            revoked_ttl_ms: 960_000,
            credentials_version: 3,
            max_sessions: 100,
            user_agent: agent.map(String::from),
            ip: ip.map(String::from),
            expect: None,
        }
    }

    #[test]
    fn a_family_packs_into_at_most_61_bytes_and_back() {
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                      Chrome/131.0.0.0 Safari/537.36";
        for (ip, len) in [
            (None, 53),
            (Some("203.0.113.9"), 57),
            (Some("2001:db8:1:2:3:4:5:6"), 61),
        ] {
            let p = Packed::new(&family(ip, Some(chrome))).unwrap();
            let bytes = p.encode().unwrap();
            assert_eq!(bytes.len(), len);
            assert_eq!(Packed::decode(&bytes).unwrap(), p);
            let state = p.state("u1", "tokend".into());
            assert_eq!(state.current_refresh_jti, "q83vEjRWeJCrze8SNFZ4kA");
            assert_eq!(state.expires_at_ms, 1_767_162_000_000);
            assert_eq!(state.issued_at, 1_764_570_000);
            assert_eq!(state.credentials_version, 3);
            assert_eq!(state.user_agent.as_deref(), Some("Chrome 131 on Linux"));
            assert_eq!(state.last_refreshed_at_ms, None);
        }
        let v6 = Packed::new(&family(Some("2001:db8:1:2:3:4:5:6"), None)).unwrap();
        assert_eq!(
            v6.state("u1", String::new()).ip.as_deref(),
            Some("2001:db8:1:2::/64")
        );
    }

    #[test]
    fn what_does_not_fit_is_an_error_not_a_wrong_record() {
        let mut f = family(None, None);
        f.refresh_jti = "not a jti".into();
        assert!(Packed::new(&f).is_err());
        let mut p = Packed::new(&family(None, None)).unwrap();
        p.credentials_version = 1 << 24;
        assert!(p.encode().is_err());
        assert!(Packed::decode(&[0u8; 52]).is_err());
    }
}
