//! The authorization flow's short-lived state in Redis: pending and pushed authorization
//! requests, codes and browser sessions (the key layout is in the table of the parent
//! module). Each operation touches one logical record; where that record is two keys (a
//! browser session and its families), both carry the session id as hash tag, so one script
//! reaches both in a cluster.

use async_trait::async_trait;
use redis::Script;

use super::{ttl_arg, RedisStore, STORE};
use crate::store::{AuthorizeStore, Redemption, StoreError};

/// Writes a fresh code: its grant, not used, not replayed.
///
/// KEYS[1] code; ARGV: grant, ttl_ms.
const PUT_CODE_LUA: &str = r#"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'grant', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// Redeems a code once (RFC 6749 §4.1.2): the first call marks it used and keeps it at least
/// `used_ttl_ms` from now, so a replay is recognised after the code's own lifetime; every later
/// call marks it replayed. Returns `{'unknown'}`, `{'first', grant}` or `{'replayed', grant}`.
///
/// KEYS[1] code; ARGV: used_ttl_ms.
const REDEEM_CODE_LUA: &str = r#"
local grant = redis.call('HGET', KEYS[1], 'grant')
if not grant then return {'unknown'} end
if redis.call('HSETNX', KEYS[1], 'used', '1') == 1 then
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
  return {'first', grant}
end
redis.call('HSET', KEYS[1], 'replayed', '1')
return {'replayed', grant}
"#;

/// Adds a refresh family to a browser session's families, kept at least `ttl_ms` from now.
///
/// KEYS[1] the session's families; ARGV: sid, ttl_ms.
const ADD_SESSION_FAMILY_LUA: &str = r#"
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"#;

/// Ends a browser session: deletes it and its families, and returns the families.
///
/// KEYS[1] session, KEYS[2] the session's families (same hash tag).
const END_BROWSER_SESSION_LUA: &str = r#"
local sids = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
return sids
"#;

/// The scripts of this module.
pub(super) struct AuthorizeScripts {
    put_code: Script,
    redeem_code: Script,
    add_session_family: Script,
    end_browser_session: Script,
}

impl AuthorizeScripts {
    pub(super) fn new() -> Self {
        Self {
            put_code: Script::new(PUT_CODE_LUA),
            redeem_code: Script::new(REDEEM_CODE_LUA),
            add_session_family: Script::new(ADD_SESSION_FAMILY_LUA),
            end_browser_session: Script::new(END_BROWSER_SESSION_LUA),
        }
    }
}

impl RedisStore {
    fn authorize_request_key(&self, id: &str) -> String {
        format!("{}areq:{{{id}}}", self.prefix)
    }

    fn pushed_request_key(&self, id: &str) -> String {
        format!("{}par:{{{id}}}", self.prefix)
    }

    fn code_key(&self, code_hash: &str) -> String {
        format!("{}code:{{{code_hash}}}", self.prefix)
    }

    fn browser_session_key(&self, id: &str) -> String {
        format!("{}bsess:{{{id}}}", self.prefix)
    }

    /// The families started through a browser session. Same slot as the session.
    fn browser_families_key(&self, id: &str) -> String {
        format!("{}bsfam:{{{id}}}", self.prefix)
    }

    /// `SET key value PX ttl`.
    async fn set_px(&self, key: String, value: &str, ttl_ms: i64) -> Result<(), StoreError> {
        self.run(|mut c| {
            let key = key.clone();
            async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(ttl_arg(ttl_ms))
                    .query_async::<()>(&mut c)
                    .await
            }
        })
        .await
    }

    /// `GET key`.
    async fn get_string(&self, key: String) -> Result<Option<String>, StoreError> {
        self.run(|mut c| {
            let key = key.clone();
            async move { redis::cmd("GET").arg(key).query_async(&mut c).await }
        })
        .await
    }
}

#[async_trait]
impl AuthorizeStore for RedisStore {
    async fn put_request(&self, id: &str, request: &str, ttl_ms: i64) -> Result<(), StoreError> {
        self.set_px(self.authorize_request_key(id), request, ttl_ms)
            .await
    }

    async fn request(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.get_string(self.authorize_request_key(id)).await
    }

    /// `GETDEL`: one command, so of concurrent callers exactly one gets the request.
    async fn take_request(&self, id: &str) -> Result<Option<String>, StoreError> {
        let key = self.authorize_request_key(id);
        self.run(|mut c| {
            let key = key.clone();
            async move { redis::cmd("GETDEL").arg(key).query_async(&mut c).await }
        })
        .await
    }

    async fn put_pushed_request(
        &self,
        id: &str,
        request: &str,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        self.set_px(self.pushed_request_key(id), request, ttl_ms)
            .await
    }

    /// `GETDEL`: one command, so of concurrent callers exactly one gets the request
    /// (RFC 9126 §4).
    async fn take_pushed_request(&self, id: &str) -> Result<Option<String>, StoreError> {
        let key = self.pushed_request_key(id);
        self.run(|mut c| {
            let key = key.clone();
            async move { redis::cmd("GETDEL").arg(key).query_async(&mut c).await }
        })
        .await
    }

    async fn put_code(&self, code_hash: &str, grant: &str, ttl_ms: i64) -> Result<(), StoreError> {
        let key = self.code_key(code_hash);
        self.run(|mut c| {
            let (key, scripts) = (key.clone(), self.scripts.clone());
            async move {
                scripts
                    .authorize
                    .put_code
                    .key(key)
                    .arg(grant)
                    .arg(ttl_arg(ttl_ms))
                    .invoke_async::<i64>(&mut c)
                    .await
            }
        })
        .await
        .map(|_| ())
    }

    /// One script: [`REDEEM_CODE_LUA`].
    async fn redeem_code(
        &self,
        code_hash: &str,
        used_ttl_ms: i64,
    ) -> Result<Redemption, StoreError> {
        let key = self.code_key(code_hash);
        let reply: Vec<String> = self
            .run(|mut c| {
                let (key, scripts) = (key.clone(), self.scripts.clone());
                async move {
                    scripts
                        .authorize
                        .redeem_code
                        .key(key)
                        .arg(ttl_arg(used_ttl_ms))
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        let mut reply = reply.into_iter();
        match (reply.next().as_deref(), reply.next(), reply.next()) {
            (Some("unknown"), None, None) => Ok(Redemption::Unknown),
            (Some("first"), Some(grant), None) => Ok(Redemption::First(grant)),
            (Some("replayed"), Some(grant), None) => Ok(Redemption::Replayed(grant)),
            _ => Err(StoreError::corrupt(
                STORE,
                "unexpected reply redeeming a code",
            )),
        }
    }

    async fn code_replayed(&self, code_hash: &str) -> Result<bool, StoreError> {
        let key = self.code_key(code_hash);
        let replayed: Option<String> = self
            .run(|mut c| {
                let key = key.clone();
                async move {
                    redis::cmd("HGET")
                        .arg(key)
                        .arg("replayed")
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(replayed.as_deref() == Some("1"))
    }

    async fn put_browser_session(
        &self,
        id: &str,
        session: &str,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        self.set_px(self.browser_session_key(id), session, ttl_ms)
            .await
    }

    async fn browser_session(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.get_string(self.browser_session_key(id)).await
    }

    /// A shorter `ttl_ms` never shortens what an earlier call asked for.
    async fn add_session_family(&self, id: &str, sid: &str, ttl_ms: i64) -> Result<(), StoreError> {
        let key = self.browser_families_key(id);
        self.run(|mut c| {
            let (key, scripts) = (key.clone(), self.scripts.clone());
            async move {
                scripts
                    .authorize
                    .add_session_family
                    .key(key)
                    .arg(sid)
                    .arg(ttl_arg(ttl_ms))
                    .invoke_async::<i64>(&mut c)
                    .await
            }
        })
        .await
        .map(|_| ())
    }

    /// One script on the session's slot: [`END_BROWSER_SESSION_LUA`].
    async fn end_browser_session(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let (session, families) = (self.browser_session_key(id), self.browser_families_key(id));
        self.run(|mut c| {
            let (session, families) = (session.clone(), families.clone());
            let scripts = self.scripts.clone();
            async move {
                scripts
                    .authorize
                    .end_browser_session
                    .key(session)
                    .key(families)
                    .invoke_async(&mut c)
                    .await
            }
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }
}
