//! Redis: refresh families, revocations, per-user not-before marks and the rotation lease
//! (docs/sessions.md), the authorization flow's pending requests, codes and browser sessions
//! (the `authorize` submodule) and device authorizations (the `device` submodule). Every key
//! lives under a prefix (default `tokend:`), carries a hash tag so each record sits in one
//! cluster slot, and is written with a TTL, so Redis never grows without bound:
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `{prefix}fam:{<sid>}` | hash | a refresh family: `user, client, scope, auth_time, cur, cur_at, iat, prev, prev_at_ms, exp_ms, revoked`, the user as the login read them: `uname, roles` (a JSON array), `uver`, the login's `ua` (at most 128 bytes) and `ip` when known, and `jkt` (the 43-character DPoP key thumbprint) only when the family is bound |
//! | `{prefix}ufam:{<user_id>}` | set | the family ids of a user |
//! | `{prefix}rjti:{<jti>}` | string | a revoked access-token `jti` |
//! | `{prefix}unbf:{<user_id>}` | string | the user's not-before mark (Unix seconds) |
//! | `{prefix}uclm:{<user_id>}` | hash | the user's claims as last changed: `v` (version), `u` (username), `r` (roles, a JSON array) |
//! | `{prefix}lease:{<name>}` | string | a lease and its holder |
//! | `{prefix}areq:{<id>}` | string | a pending authorization request (taken once, `GETDEL`) |
//! | `{prefix}par:{<id>}` | string | a pushed authorization request (RFC 9126; taken once, `GETDEL`) |
//! | `{prefix}code:{<code hash>}` | hash | an authorization code: `grant`, and `used`, `replayed` once redeemed (RFC 6749 §4.1.2) |
//! | `{prefix}bsess:{<id>}` | string | a browser session |
//! | `{prefix}bsfam:{<id>}` | set | the refresh families started through the browser session (same slot as it) |
//! | `{prefix}dev:{<device code hash>}` | hash | a device authorization (RFC 8628): `client, scope, exp, interval, state` (`pending`, `approved`, `denied`, `redeemed`), `last` (the last poll, Unix ms), `grant` (from approval to redemption) |
//! | `{prefix}ucode:{<user code hash>}` | string | the device-code hash a user code names, while the user code is taken |
//! | `{prefix}once:{<key>}` | string | a single-use key (`dpop:` and a hash of a DPoP proof's key and `jti`), while it could still be replayed |
//!
//! Each multi-step change is a Lua script, so it is atomic; a script that touches two keys
//! touches two of one hash tag (a user's families and marks, a browser session and its
//! families), so every one of them works in a cluster. A dead Redis answers with
//! [`StoreError::Unavailable`] within [`OP_TIMEOUT`], and the connection heals by itself.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Script, Value};

use super::{
    access_jti_of, split_sid, AccessStatus, FamilyMarks, FamilyStarted, FamilyState, LeaseStore,
    NewFamily, RotateOutcome, RotateRequest, SessionStore, StoreError, UserClaims, UserMarks,
};

mod authorize;
mod device;
mod families;
mod replay;

const STORE: &str = "redis";

/// How long one connection attempt may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long Redis may take to answer one command.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most one store operation may take, retry included; after it the caller gets
/// `Unavailable` and fails closed.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// The scheme of a Redis Cluster URL: `redis+cluster://host1:port1,host2:port2`.
pub(crate) const CLUSTER_SCHEME: &str = "redis+cluster://";

/// The connection: one server through a self-healing [`ConnectionManager`], or a cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The refresh exchange of docs/sessions.md on one family hash. A family bound to a DPoP key
/// (`jkt`) is exchanged only when the request proved that key; otherwise nothing changes
/// (docs/dpop.md).
///
/// KEYS[1] family; ARGV: presented jti, new refresh jti, new access jti, issued_at, now_ms,
/// leeway_ms, ttl_ms, revoked_ttl_ms, the proof's jkt ('' for none).
const ROTATE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
local f = redis.call('HMGET', KEYS[1], 'revoked', 'cur', 'prev', 'prev_at_ms', 'cur_at', 'iat',
  'jkt')
if f[1] == '1' then return {'revoked'} end
if f[7] and f[7] ~= '' and f[7] ~= ARGV[9] then return {'wrong_key'} end
if f[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'prev', ARGV[1], 'prev_at_ms', ARGV[5],
    'cur', ARGV[2], 'cur_at', ARGV[3], 'iat', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
  return {'rotated'}
end
if f[3] == ARGV[1] and f[4] and tonumber(ARGV[5]) - tonumber(f[4]) <= tonumber(ARGV[6]) then
  return {'replayed', f[2], f[5], f[6]}
end
redis.call('HSET', KEYS[1], 'revoked', '1')
local ttl = tonumber(ARGV[8])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ARGV[8]) end
return {'reused'}
"#;

/// [`ROTATE_LUA`] preceded by the family read and the session-end check of
/// `SessionStore::exchange`, in one round trip. Returns `{'unknown'}`, or the family as it was
/// (user, client, scope, auth_time, cur, cur_at, iat, exp_ms, revoked) followed by what
/// [`ROTATE_LUA`] returns. The record's lifetime is capped at the family's end.
///
/// KEYS[1] family; ARGV: as [`ROTATE_LUA`].
const EXCHANGE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
local f = redis.call('HMGET', KEYS[1], 'revoked', 'cur', 'prev', 'prev_at_ms', 'cur_at', 'iat',
  'user', 'client', 'scope', 'auth_time', 'exp_ms', 'jkt')
local now = tonumber(ARGV[5])
local exp = tonumber(f[11]) or 0
if math.floor(now / 1000) >= math.floor(exp / 1000) then return {'unknown'} end
local reply = {f[7] or '', f[8] or '', f[9] or '', f[10] or '', f[2] or '', f[5] or '',
  f[6] or '', f[11] or '', f[1] or ''}
if f[1] == '1' then
  reply[10] = 'revoked'
elseif f[12] and f[12] ~= '' and f[12] ~= ARGV[9] then
  reply[10] = 'wrong_key'
elseif f[2] == ARGV[1] then
  local ttl = math.max(math.min(tonumber(ARGV[7]), exp - now), 1)
  redis.call('HSET', KEYS[1], 'prev', ARGV[1], 'prev_at_ms', ARGV[5],
    'cur', ARGV[2], 'cur_at', ARGV[3], 'iat', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
  reply[10] = 'rotated'
elseif f[3] == ARGV[1] and f[4] and now - tonumber(f[4]) <= tonumber(ARGV[6]) then
  reply[10] = 'replayed'
  reply[11] = f[2] or ''
  reply[12] = f[5] or ''
  reply[13] = f[6] or ''
else
  redis.call('HSET', KEYS[1], 'revoked', '1')
  local ttl = tonumber(ARGV[8])
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ARGV[8]) end
  reply[10] = 'reused'
end
return reply
"#;

/// Ends every session of a user at once: raises the session generation, raises the
/// credentials version when one is given, forgets the user's families (the hash, and the list
/// from before). Returns how many families there were.
///
/// KEYS[1] user's session marks, KEYS[2] user's list from before, KEYS[3] user's families;
/// ARGV: credentials version ('' for none), ttl_ms.
const REVOKE_USER_LUA: &str = r#"
local n = redis.call('HLEN', KEYS[3])
local kind = redis.call('TYPE', KEYS[2]).ok
if kind == 'zset' then n = n + redis.call('ZCARD', KEYS[2])
elseif kind == 'set' then n = n + redis.call('SCARD', KEYS[2]) end
redis.call('HINCRBY', KEYS[1], 'gen', 1)
if ARGV[1] ~= '' then
  local cv = tonumber(redis.call('HGET', KEYS[1], 'cv') or '0')
  if tonumber(ARGV[1]) > cv then redis.call('HSET', KEYS[1], 'cv', ARGV[1]) end
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HDEL', KEYS[1], 'q')
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
"#;

/// Marks a family revoked, never shortening how long it is remembered. Returns 1 if it was
/// live, 2 if it was revoked already, 0 if it did not exist (a revoked stub is written only when
/// ARGV[2] is '1').
///
/// KEYS[1] family; ARGV: ttl_ms, create.
const REVOKE_FAMILY_LUA: &str = r#"
local exists = redis.call('EXISTS', KEYS[1])
if exists == 0 and ARGV[2] ~= '1' then return 0 end
local was = redis.call('HGET', KEYS[1], 'revoked')
redis.call('HSET', KEYS[1], 'revoked', '1')
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if exists == 0 then return 0 end
if was == '1' then return 2 end
return 1
"#;

/// Replaces the user's claims unless the stored ones are newer; keeps them at least `ttl_ms`.
///
/// KEYS[1] claims; ARGV: version, username, roles, ttl_ms.
const USER_CLAIMS_LUA: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'v')
if (not cur) or tonumber(ARGV[1]) >= tonumber(cur) then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'u', ARGV[2], 'r', ARGV[3])
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 1
"#;

/// Deletes a lease only if `holder` still holds it.
///
/// KEYS[1] lease; ARGV: holder.
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

struct Scripts {
    rotate: Script,
    exchange: Script,
    revoke_family: Script,
    revoke_user: Script,
    user_claims: Script,
    release: Script,
    gcra: Script,
    gcra_refund: Script,
    backoff: Script,
    authorize: authorize::AuthorizeScripts,
    device: device::DeviceScripts,
    families: families::FamilyScripts,
}

impl Scripts {
    fn new() -> Self {
        Self {
            rotate: Script::new(ROTATE_LUA),
            exchange: Script::new(EXCHANGE_LUA),
            revoke_family: Script::new(REVOKE_FAMILY_LUA),
            revoke_user: Script::new(REVOKE_USER_LUA),
            user_claims: Script::new(USER_CLAIMS_LUA),
            release: Script::new(RELEASE_LUA),
            gcra: Script::new(GCRA_LUA),
            gcra_refund: Script::new(GCRA_REFUND_LUA),
            backoff: Script::new(BACKOFF_LUA),
            authorize: authorize::AuthorizeScripts::new(),
            device: device::DeviceScripts::new(),
            families: families::FamilyScripts::new(),
        }
    }
}

/// Sessions, revocations and the lease in Redis (or a Redis Cluster). Cheap to clone: clones
/// share one connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
    /// This process's copy of `{prefix}clients` (the `families` submodule).
    client_names: Arc<std::sync::Mutex<HashMap<[u8; 6], String>>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field(
                "mode",
                &match self.conn {
                    Conn::Single(_) => "single",
                    Conn::Cluster(_) => "cluster",
                },
            )
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(STORE, e)
}

/// Milliseconds as Redis accepts them for `PX`/`PEXPIRE`: at least 1.
fn ttl_arg(ttl_ms: i64) -> i64 {
    ttl_ms.max(1)
}

/// Whether a failed command is worth one more try on a fresh connection: the connection broke
/// (or a reconnect had failed before), as opposed to a slow server or a command error.
fn is_connection_error(e: &RedisError) -> bool {
    !e.is_timeout() && (e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error())
}

/// Splits `redis+cluster://[user:pass@]h1:p1,h2:p2[/]` into one `redis://` URL per node.
fn cluster_nodes(url: &str) -> Result<Vec<String>, StoreError> {
    let rest = url
        .strip_prefix(CLUSTER_SCHEME)
        .ok_or_else(|| unavailable(format!("not a {CLUSTER_SCHEME} URL")))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{userinfo}{h}/"))
        .collect();
    if nodes.is_empty() {
        return Err(unavailable(format!(
            "{CLUSTER_SCHEME} URL names no node (expected {CLUSTER_SCHEME}host1:port1,host2:port2)"
        )));
    }
    Ok(nodes)
}

impl RedisStore {
    /// Connects to `redis://[user:password@]host:port[/db]` through a connection manager that
    /// reconnects by itself, or to a cluster given as `redis+cluster://h1:p1,h2:p2`. Every key
    /// is written under `prefix`. Fails if the server cannot be reached now. (`rediss://` needs
    /// the `redis` crate's TLS feature, which tokend does not enable.)
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        if prefix.contains(['{', '}']) {
            return Err(unavailable(
                "the key prefix must not contain '{' or '}' (they are cluster hash tags)",
            ));
        }
        let conn = if url.starts_with(CLUSTER_SCHEME) {
            let client = redis::cluster::ClusterClient::builder(cluster_nodes(url)?)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(2)
                .max_retry_wait(200)
                .build()
                .map_err(unavailable)?;
            let conn = tokio::time::timeout(OP_TIMEOUT, client.get_async_connection())
                .await
                .map_err(|_| unavailable("timed out connecting to the cluster"))?
                .map_err(unavailable)?;
            Conn::Cluster(conn)
        } else {
            let client = redis::Client::open(url).map_err(unavailable)?;
            // No reconnection retries inside the manager: a failed attempt fails the requests
            // waiting on it at once (fail closed, fast), and the next request starts a fresh
            // attempt, so recovery needs no restart.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(RESPONSE_TIMEOUT)
                .set_number_of_retries(0)
                .set_factor(1)
                .set_max_delay(100);
            let conn = tokio::time::timeout(
                OP_TIMEOUT,
                ConnectionManager::new_with_config(client, config),
            )
            .await
            .map_err(|_| unavailable("timed out connecting"))?
            .map_err(unavailable)?;
            Conn::Single(conn)
        };
        Ok(RedisStore {
            conn,
            prefix: Arc::from(prefix),
            scripts: Arc::new(Scripts::new()),
            client_names: Arc::default(),
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn family_key(&self, sid: &str) -> String {
        format!("{}fam:{{{sid}}}", self.prefix)
    }

    fn user_families_key(&self, user_id: &str) -> String {
        format!("{}ufam:{{{user_id}}}", self.prefix)
    }

    fn revoked_jti_key(&self, jti: &str) -> String {
        format!("{}rjti:{{{jti}}}", self.prefix)
    }

    /// The user's session marks (generation, credentials version). Same slot as the user's
    /// families list.
    fn user_marks_key(&self, user_id: &str) -> String {
        format!("{}usess:{{{user_id}}}", self.prefix)
    }

    fn user_claims_key(&self, user_id: &str) -> String {
        format!("{}uclm:{{{user_id}}}", self.prefix)
    }

    fn rate_key(&self, key: &str) -> String {
        format!("{}rl:{{{key}}}", self.prefix)
    }

    fn backoff_key(&self, account: &str) -> String {
        format!("{}bo:{{{account}}}", self.prefix)
    }

    fn lease_key(&self, name: &str) -> String {
        format!("{}lease:{{{name}}}", self.prefix)
    }

    /// Runs one operation within [`OP_TIMEOUT`], once more on a fresh connection if the
    /// connection had broken, and maps every failure to `Unavailable`.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempt = async {
            match op(self.conn.clone()).await {
                Err(e) if is_connection_error(&e) => op(self.conn.clone()).await,
                other => other,
            }
        };
        match tokio::time::timeout(OP_TIMEOUT, attempt).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(unavailable(format!(
                "no answer within {} ms",
                OP_TIMEOUT.as_millis()
            ))),
        }
    }

    /// Revokes one family (see [`REVOKE_FAMILY_LUA`] for the answer).
    async fn revoke_one(&self, sid: &str, ttl_ms: i64, create: bool) -> Result<i64, StoreError> {
        if let Some((field, user)) = split_sid(sid) {
            return self.revoke_packed(field, user, ttl_ms, create).await;
        }
        let key = self.family_key(sid);
        let ttl = ttl_arg(ttl_ms);
        let create = if create { "1" } else { "0" };
        self.run(|mut c| {
            let key = key.clone();
            let scripts = self.scripts.clone();
            async move {
                scripts
                    .revoke_family
                    .key(key)
                    .arg(ttl)
                    .arg(create)
                    .invoke_async(&mut c)
                    .await
            }
        })
        .await
    }

    /// Runs [`ROTATE_LUA`] or [`EXCHANGE_LUA`] (same key and arguments) for `req`.
    async fn exchange_script(
        &self,
        script: fn(&Scripts) -> &Script,
        req: &RotateRequest,
    ) -> Result<Vec<String>, StoreError> {
        let key = self.family_key(&req.sid);
        self.run(|mut c| {
            let (key, scripts) = (key.clone(), self.scripts.clone());
            async move {
                script(&scripts)
                    .key(key)
                    .arg(&req.presented_jti)
                    .arg(&req.new_refresh_jti)
                    .arg(access_jti_of(&req.new_refresh_jti))
                    .arg(req.issued_at)
                    .arg(req.now_ms)
                    .arg(req.leeway_ms)
                    .arg(ttl_arg(req.ttl_ms))
                    .arg(ttl_arg(req.revoked_ttl_ms))
                    .arg(req.jkt.as_deref().unwrap_or(""))
                    .invoke_async(&mut c)
                    .await
            }
        })
        .await
    }

    /// Runs [`BACKOFF_LUA`] in `mode` (`fail` or `reserve`) for `account`.
    async fn backoff_script(
        &self,
        mode: &'static str,
        account: &str,
        now_ms: i64,
        policy: crate::store::BackoffPolicy,
    ) -> Result<i64, StoreError> {
        let key = self.backoff_key(account);
        self.run(|mut c| {
            let (key, scripts) = (key.clone(), self.scripts.clone());
            async move {
                scripts
                    .backoff
                    .key(key)
                    .arg(now_ms)
                    .arg(policy.free)
                    .arg(policy.base_ms)
                    .arg(policy.cap_ms)
                    .arg(policy.window_ms.max(1))
                    .arg(mode)
                    .invoke_async(&mut c)
                    .await
            }
        })
        .await
    }

    /// [`SessionStore::access_status`], with the user's claims when `with_user`: one pipeline
    /// on a single server; on a cluster one call per key (each its own slot), sent together.
    async fn status(
        &self,
        jti: &str,
        sid: Option<&str>,
        user_id: &str,
        with_user: bool,
    ) -> Result<AccessStatus, StoreError> {
        let mut cmds = vec![redis::cmd("EXISTS"), redis::cmd("HMGET")];
        cmds[0].arg(self.revoked_jti_key(jti));
        cmds[1]
            .arg(self.user_marks_key(user_id))
            .arg(&["gen", "cv", "rf"]);
        if with_user {
            let mut mark = redis::cmd("HMGET");
            mark.arg(self.user_claims_key(user_id))
                .arg(&["v", "u", "r"]);
            cmds.push(mark);
        }
        let packed = sid.and_then(split_sid);
        if let Some((field, user)) = packed {
            let mut family = redis::cmd("HGET");
            family.arg(self.families_key(user)).arg(field);
            cmds.push(family);
        } else if let Some(sid) = sid {
            let mut family = redis::cmd("HMGET");
            family
                .arg(self.family_key(sid))
                .arg(&["revoked", "gen", "cv", "exp_ms"]);
            if with_user {
                family.arg(&["uver", "uname", "roles"]);
            }
            cmds.push(family);
        }
        let expected = cmds.len();
        let replies: Vec<Value> = self
            .run(|c| {
                let cmds = cmds.clone();
                async move {
                    match c {
                        Conn::Single(mut c) => {
                            let mut p = redis::pipe();
                            for cmd in cmds {
                                p.add_command(cmd);
                            }
                            p.query_async(&mut c).await
                        }
                        Conn::Cluster(c) => {
                            futures_util::future::try_join_all(cmds.into_iter().map(|cmd| {
                                let mut c = c.clone();
                                async move { cmd.query_async::<Value>(&mut c).await }
                            }))
                            .await
                        }
                    }
                }
            })
            .await?;
        if replies.len() != expected {
            return Err(StoreError::corrupt(
                STORE,
                format!("{} status replies for {expected} commands", replies.len()),
            ));
        }
        let mut replies = replies.into_iter();
        let jti_revoked: bool = parse_reply(replies.next())?;
        let marks: Fields = parse_reply(replies.next())?;
        let mark: Fields = if with_user {
            parse_reply(replies.next())?
        } else {
            Vec::new()
        };
        let packed_family = match packed {
            Some(_) => Some(families::marks_of(parse_reply(replies.next())?)?),
            None => None,
        };
        let family: Option<Fields> = if sid.is_some() && packed.is_none() {
            Some(parse_reply(replies.next())?)
        } else {
            None
        };
        let mut marks = marks.into_iter();
        let mut next = || marks.next().flatten();
        let user = UserMarks {
            generation: parse_i64("gen", next().as_ref())?,
            credentials_version: parse_i64("cv", next().as_ref())?,
        };
        // The user's hash dropped revoked families of theirs (`rf`): one missing is revoked.
        let dropped_revoked = next().is_some();
        let mut mark = mark.into_iter();
        let mut next = || mark.next().flatten();
        let mark = user_claims("the user's", next(), next(), next())?;
        let (family, family_user) = match family {
            None => match packed_family {
                Some(None) if dropped_revoked => (
                    Some(FamilyMarks {
                        revoked: true,
                        ..FamilyMarks::default()
                    }),
                    None,
                ),
                found => (found.flatten(), None),
            },
            Some(fields) => {
                let mut fields = fields.into_iter();
                let mut next = || fields.next().flatten();
                let revoked = next();
                let generation = parse_i64("gen", next().as_ref())?;
                let credentials_version = parse_i64("cv", next().as_ref())?;
                let exp_ms = next();
                // A family revoked before it was known is a stub with only `revoked`.
                let known = revoked.is_some() || exp_ms.is_some();
                let marks = FamilyMarks {
                    revoked: revoked.as_deref() == Some("1"),
                    generation,
                    credentials_version,
                };
                let claims = user_claims("family", next(), next(), next())?;
                (known.then_some(marks), claims)
            }
        };
        Ok(AccessStatus {
            jti_revoked,
            user,
            family,
            claims: UserClaims::newest(mark, family_user),
        })
    }
}

/// One reply of a pipeline or of one call, as `T`.
fn parse_reply<T: redis::FromRedisValue>(reply: Option<Value>) -> Result<T, StoreError> {
    let reply = reply.ok_or_else(|| StoreError::corrupt(STORE, "a reply is missing"))?;
    redis::from_owned_redis_value(reply)
        .map_err(|e| StoreError::corrupt(STORE, format!("unexpected reply: {e}")))
}

/// The fields of one `HMGET`.
type Fields = Vec<Option<String>>;

fn roles_json(roles: &[String]) -> String {
    serde_json::to_string(roles).unwrap_or_else(|_| "[]".to_string())
}

/// User claims from their three stored fields; `None` when the record has none (a family
/// written before families carried the user, or no mark).
fn user_claims(
    what: &str,
    version: Option<String>,
    username: Option<String>,
    roles: Option<String>,
) -> Result<Option<UserClaims>, StoreError> {
    let (Some(version), Some(username), Some(roles)) = (version, username, roles) else {
        return Ok(None);
    };
    let corrupt = || StoreError::corrupt(STORE, format!("{what} user claims are not readable"));
    Ok(Some(UserClaims {
        username,
        roles: serde_json::from_str(&roles).map_err(|_| corrupt())?,
        version: version.parse().map_err(|_| corrupt())?,
    }))
}

fn parse_i64(field: &str, v: Option<&String>) -> Result<i64, StoreError> {
    match v {
        None => Ok(0),
        Some(s) => s
            .parse()
            .map_err(|_| StoreError::corrupt(STORE, format!("family field {field} is {s:?}"))),
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    /// One round trip ([`families`]'s start script, the client's name beside it), and for
    /// families popped from the user's list from before, one revocation each.
    async fn start_family(&self, family: &NewFamily) -> Result<FamilyStarted, StoreError> {
        let Some((field, user)) = split_sid(&family.sid) else {
            return Err(StoreError::corrupt(
                STORE,
                "a new family's sid must name its user (store::family_sid)",
            ));
        };
        if user != family.user_id {
            return Err(StoreError::corrupt(
                STORE,
                "a new family's sid names another user",
            ));
        }
        let (started, listed) = self.start_packed(family, field).await?;
        // Families pushed out of the list from before: each its own slot, revoked together.
        futures_util::future::try_join_all(
            listed
                .iter()
                .map(|sid| self.revoke_one(sid, family.revoked_ttl_ms, false)),
        )
        .await?;
        Ok(started)
    }

    async fn rotate(&self, req: &RotateRequest) -> Result<RotateOutcome, StoreError> {
        if let Some((field, user)) = split_sid(&req.sid) {
            return Ok(self
                .exchange_packed(req, field, user)
                .await?
                .map_or(RotateOutcome::Unknown, |(_, outcome)| outcome));
        }
        let reply = self.exchange_script(|s| &s.rotate, req).await?;
        match reply.first().map(String::as_str) {
            Some("rotated") => Ok(RotateOutcome::Rotated),
            Some("revoked") => Ok(RotateOutcome::Revoked),
            Some("unknown") => Ok(RotateOutcome::Unknown),
            Some("reused") => Ok(RotateOutcome::Reused),
            Some("wrong_key") => Ok(RotateOutcome::WrongKey),
            Some("replayed") if reply.len() == 4 => Ok(RotateOutcome::Replayed {
                refresh_jti: reply[1].clone(),
                issued_at: parse_i64("iat", reply.get(3))?,
            }),
            _ => Err(StoreError::corrupt(
                STORE,
                format!("unexpected rotate reply {reply:?}"),
            )),
        }
    }

    /// One round trip: [`EXCHANGE_LUA`].
    async fn exchange(
        &self,
        req: &RotateRequest,
    ) -> Result<Option<(FamilyState, RotateOutcome)>, StoreError> {
        if let Some((field, user)) = split_sid(&req.sid) {
            return self.exchange_packed(req, field, user).await;
        }
        let reply = self.exchange_script(|s| &s.exchange, req).await?;
        if reply.first().map(String::as_str) == Some("unknown") && reply.len() == 1 {
            return Ok(None);
        }
        let corrupt = || StoreError::corrupt(STORE, format!("unexpected exchange reply {reply:?}"));
        if reply.len() < 10 {
            return Err(corrupt());
        }
        // Absent fields come back empty; they count as 0, as in `family`.
        let num = |field: &str, v: &String| {
            if v.is_empty() {
                Ok(0)
            } else {
                parse_i64(field, Some(v))
            }
        };
        let family = FamilyState {
            user_id: reply[0].clone(),
            client_id: reply[1].clone(),
            auth_time: num("auth_time", &reply[3])?,
            current_refresh_jti: reply[4].clone(),
            issued_at: num("iat", &reply[6])?,
            expires_at_ms: num("exp_ms", &reply[7])?,
            revoked: reply[8] == "1",
            // Not needed by the exchange (the refresh reads it with the revocation marks).
            user: None,
            user_agent: None,
            ip: None,
            last_refreshed_at_ms: None,
            generation: 0,
            credentials_version: 0,
        };
        let outcome = match reply[9].as_str() {
            "rotated" if reply.len() == 10 => RotateOutcome::Rotated,
            "revoked" if reply.len() == 10 => RotateOutcome::Revoked,
            "reused" if reply.len() == 10 => RotateOutcome::Reused,
            "wrong_key" if reply.len() == 10 => RotateOutcome::WrongKey,
            "replayed" if reply.len() == 13 => RotateOutcome::Replayed {
                refresh_jti: reply[10].clone(),
                issued_at: parse_i64("iat", reply.get(12))?,
            },
            _ => return Err(corrupt()),
        };
        Ok(Some((family, outcome)))
    }

    async fn user_families(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .user_family_logins(user_id)
            .await?
            .into_iter()
            .map(|(sid, _)| sid)
            .collect())
    }

    /// The user's families of both layouts, oldest login first: the user's hash and the list
    /// from before.
    async fn user_family_logins(&self, user_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let key = self.user_families_key(user_id);
        let (packed, listed) = futures_util::try_join!(
            self.logins_packed(user_id),
            self.run(|mut c| {
                let key = key.clone();
                async move {
                    redis::cmd("ZRANGE")
                        .arg(key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query_async::<Vec<(String, f64)>>(&mut c)
                        .await
                }
            })
        )?;
        // Scores are Unix ms, well inside the integers a double holds exactly.
        let mut all: Vec<(String, i64)> = listed
            .into_iter()
            .map(|(sid, login)| (sid, login as i64))
            .chain(packed)
            .collect();
        all.sort_by_key(|(_, login)| *login);
        Ok(all)
    }

    /// A family revoked before it was ever seen comes back revoked, with empty fields.
    async fn family(&self, sid: &str) -> Result<Option<FamilyState>, StoreError> {
        if let Some((field, user)) = split_sid(sid) {
            return self.family_packed(field, user).await;
        }
        let key = self.family_key(sid);
        let h: HashMap<String, String> = self
            .run(|mut c| {
                let key = key.clone();
                async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await }
            })
            .await?;
        if h.is_empty() {
            return Ok(None);
        }
        let text = |f: &str| h.get(f).cloned().unwrap_or_default();
        Ok(Some(FamilyState {
            user_id: text("user"),
            client_id: text("client"),
            auth_time: parse_i64("auth_time", h.get("auth_time"))?,
            current_refresh_jti: text("cur"),
            issued_at: parse_i64("iat", h.get("iat"))?,
            expires_at_ms: parse_i64("exp_ms", h.get("exp_ms"))?,
            revoked: h.get("revoked").is_some_and(|v| v == "1"),
            user: user_claims(
                "family",
                h.get("uver").cloned(),
                h.get("uname").cloned(),
                h.get("roles").cloned(),
            )?,
            user_agent: h.get("ua").cloned(),
            ip: h.get("ip").cloned(),
            last_refreshed_at_ms: h
                .get("prev_at_ms")
                .map(|v| parse_i64("prev_at_ms", Some(v)))
                .transpose()?,
            generation: parse_i64("gen", h.get("gen"))?,
            credentials_version: parse_i64("cv", h.get("cv"))?,
        }))
    }

    async fn revoke_family(&self, sid: &str, ttl_ms: i64) -> Result<(), StoreError> {
        self.revoke_one(sid, ttl_ms, true).await.map(|_| ())
    }

    /// One script on the user's slot: [`REVOKE_USER_LUA`].
    async fn revoke_user_sessions(
        &self,
        user_id: &str,
        credentials_version: Option<i64>,
        ttl_ms: i64,
    ) -> Result<u64, StoreError> {
        let marks = self.user_marks_key(user_id);
        let ufam = self.user_families_key(user_id);
        let families = self.families_key(user_id);
        let version = credentials_version
            .map(|v| v.to_string())
            .unwrap_or_default();
        self.run(|mut c| {
            let (marks, ufam, scripts) = (marks.clone(), ufam.clone(), self.scripts.clone());
            let (families, version) = (families.clone(), version.clone());
            async move {
                scripts
                    .revoke_user
                    .key(marks)
                    .key(ufam)
                    .key(families)
                    .arg(version)
                    .arg(ttl_arg(ttl_ms))
                    .invoke_async(&mut c)
                    .await
            }
        })
        .await
    }

    async fn revoke_jti(&self, jti: &str, ttl_ms: i64) -> Result<(), StoreError> {
        let key = self.revoked_jti_key(jti);
        self.run(|mut c| {
            let key = key.clone();
            async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg("1")
                    .arg("PX")
                    .arg(ttl_arg(ttl_ms))
                    .query_async::<()>(&mut c)
                    .await
            }
        })
        .await
    }

    async fn set_user_claims(
        &self,
        user_id: &str,
        claims: &UserClaims,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        let key = self.user_claims_key(user_id);
        let roles = roles_json(&claims.roles);
        self.run(|mut c| {
            let (key, scripts, roles) = (key.clone(), self.scripts.clone(), roles.clone());
            async move {
                scripts
                    .user_claims
                    .key(key)
                    .arg(claims.version)
                    .arg(&claims.username)
                    .arg(roles)
                    .arg(ttl_arg(ttl_ms))
                    .invoke_async::<i64>(&mut c)
                    .await
            }
        })
        .await
        .map(|_| ())
    }

    async fn access_status(
        &self,
        jti: &str,
        sid: Option<&str>,
        user_id: &str,
    ) -> Result<AccessStatus, StoreError> {
        self.status(jti, sid, user_id, false).await
    }

    async fn access_status_with_user(
        &self,
        jti: &str,
        sid: Option<&str>,
        user_id: &str,
    ) -> Result<AccessStatus, StoreError> {
        self.status(jti, sid, user_id, true).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl LeaseStore for RedisStore {
    async fn try_acquire(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        let key = self.lease_key(name);
        let reply: Option<String> = self
            .run(|mut c| {
                let key = key.clone();
                async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(holder)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_arg(ttl_ms))
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(reply.is_some())
    }

    async fn release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let key = self.lease_key(name);
        self.run(|mut c| {
            let (key, scripts) = (key.clone(), self.scripts.clone());
            async move {
                scripts
                    .release
                    .key(key)
                    .arg(holder)
                    .invoke_async::<i64>(&mut c)
                    .await
            }
        })
        .await
        .map(|_| ())
    }
}

/// GCRA (generic cell rate algorithm) on one key holding the theoretical arrival time.
/// ARGV: now ms, emission interval ms, burst. Returns 0 when allowed, else ms to wait.
const GCRA_LUA: &str = r#"
local now = tonumber(ARGV[1])
local t = tonumber(ARGV[2])
local tau = t * (tonumber(ARGV[3]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tau then
  return tat - now - tau
end
local new_tat = tat + t
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(new_tat - now, 1))
return 0
"#;

/// Gives back one emission interval of a GCRA key (an attempt that turned out not to count):
/// the theoretical arrival time moves back by it, never before now.
/// ARGV: now ms, emission interval ms. Returns 1 when something was given back.
const GCRA_REFUND_LUA: &str = r#"
local now = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat <= now then return 0 end
local new_tat = tat - tonumber(ARGV[2])
if new_tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], new_tat, 'PX', math.max(new_tat - now, 1))
end
return 1
"#;

/// Counts a failed password check on the back-off. ARGV: now ms, free failures, base ms, cap
/// ms, window ms, mode. Mode `fail` records a failure and returns the back-off end (ms, 0 when
/// none); mode `reserve` ([`crate::store::LimitStore::reserve_attempt`]) first refuses while
/// the account backs off (returns the back-off end), else counts the attempt as a failure in
/// the same step and returns 0.
const BACKOFF_LUA: &str = r#"
local now = tonumber(ARGV[1])
if ARGV[6] == 'reserve' then
  local till = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
  if till > now then return till end
end
local free = tonumber(ARGV[2])
local base = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local till = 0
if n > free then
  local d = base * (2 ^ math.min(n - free - 1, 40))
  if d > cap then d = cap end
  till = math.floor(now + d)
  redis.call('HSET', KEYS[1], 'until', till)
end
local keep = window
if till > now then keep = keep + (till - now) end
redis.call('PEXPIRE', KEYS[1], math.floor(keep))
if ARGV[6] == 'reserve' then return 0 end
return till
"#;

#[async_trait]
impl crate::store::LimitStore for RedisStore {
    async fn rate_check(
        &self,
        key: &str,
        now_ms: i64,
        emission_ms: i64,
        burst: u32,
    ) -> Result<Option<i64>, StoreError> {
        let key = self.rate_key(key);
        let wait: i64 = self
            .run(|mut c| {
                let (key, scripts) = (key.clone(), self.scripts.clone());
                async move {
                    scripts
                        .gcra
                        .key(key)
                        .arg(now_ms)
                        .arg(emission_ms.max(1))
                        .arg(burst.max(1))
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok((wait > 0).then_some(wait))
    }

    async fn rate_refund(
        &self,
        key: &str,
        now_ms: i64,
        emission_ms: i64,
    ) -> Result<(), StoreError> {
        let key = self.rate_key(key);
        self.run(|mut c| {
            let (key, scripts) = (key.clone(), self.scripts.clone());
            async move {
                scripts
                    .gcra_refund
                    .key(key)
                    .arg(now_ms)
                    .arg(emission_ms.max(1))
                    .invoke_async::<i64>(&mut c)
                    .await
            }
        })
        .await
        .map(|_| ())
    }

    async fn backoff_until(&self, account: &str) -> Result<Option<i64>, StoreError> {
        let key = self.backoff_key(account);
        let until: Option<i64> = self
            .run(|mut c| {
                let key = key.clone();
                async move {
                    redis::cmd("HGET")
                        .arg(key)
                        .arg("until")
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(until.filter(|u| *u > 0))
    }

    async fn reserve_attempt(
        &self,
        account: &str,
        now_ms: i64,
        policy: crate::store::BackoffPolicy,
    ) -> Result<Option<i64>, StoreError> {
        let until: i64 = self
            .backoff_script("reserve", account, now_ms, policy)
            .await?;
        Ok((until > 0).then_some(until))
    }

    async fn record_failure(
        &self,
        account: &str,
        now_ms: i64,
        policy: crate::store::BackoffPolicy,
    ) -> Result<i64, StoreError> {
        self.backoff_script("fail", account, now_ms, policy).await
    }

    async fn clear_failures(&self, account: &str) -> Result<(), StoreError> {
        let key = self.backoff_key(account);
        self.run(|mut c| {
            let key = key.clone();
            async move { redis::cmd("DEL").arg(key).query_async::<i64>(&mut c).await }
        })
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_become_one_url_per_node() {
        assert_eq!(
            cluster_nodes("redis+cluster://a:7000,b:7001/").unwrap(),
            vec!["redis://a:7000/", "redis://b:7001/"]
        );
        assert_eq!(
            cluster_nodes("redis+cluster://u:p@a:7000,b:7001").unwrap(),
            vec!["redis://u:p@a:7000/", "redis://u:p@b:7001/"]
        );
        assert!(cluster_nodes("redis+cluster://").is_err());
    }
}
