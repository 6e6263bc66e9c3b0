//! Device authorizations in Redis (RFC 8628, docs/device.md; the keys are in the table of the
//! parent module). An authorization is one hash under its device-code hash; its user code is a
//! string key naming that hash. The two sit in different cluster slots, so no command or script
//! touches both: starting takes the user code first (`SET NX`), then writes the hash; the page
//! reads the user code, then the hash. A poll and a decision are one script on the hash each.

use async_trait::async_trait;
use redis::Script;

use super::{ttl_arg, RedisStore, STORE};
use crate::store::device::SLOW_DOWN_STEP_SECS;
use crate::store::{
    DecideOutcome, DeviceDecision, DevicePoll, DeviceStatus, DeviceStore, DeviceView, NewDevice,
    StoreError,
};

/// Writes a new pending authorization.
///
/// KEYS[1] device; ARGV: client, scope, exp (Unix ms), interval (s), keep_ms.
const START_LUA: &str = r#"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'client', ARGV[1], 'scope', ARGV[2], 'exp', ARGV[3],
  'interval', ARGV[4], 'state', 'pending')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"#;

/// Records the user's decision on a pending authorization that has not expired. Returns
/// `decided`, `unknown`, `expired`, or the status it already had.
///
/// KEYS[1] device; ARGV: `approved` or `denied`, the grant (approval only), now (Unix ms).
const DECIDE_LUA: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'state', 'exp')
if not f[1] then return 'unknown' end
if tonumber(ARGV[3]) >= tonumber(f[2]) then return 'expired' end
if f[1] ~= 'pending' then return f[1] end
if ARGV[1] == 'approved' then
  redis.call('HSET', KEYS[1], 'state', 'approved', 'grant', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'state', 'denied')
end
return 'decided'
"#;

/// One poll (RFC 8628 §3.5), read and recorded in one step: `{'unknown'}`, `{'other_client'}`,
/// `{'expired'}`, `{'denied'}`, `{'redeemed'}`, `{'approved', grant}` (the authorization is
/// now redeemed and the grant gone from the store), or `{'pending' | 'slow_down', interval}`
/// after recording the poll time (a poll sooner than the interval after the previous one adds
/// the step to the interval).
///
/// KEYS[1] device; ARGV: client, now (Unix ms), slow-down step (s).
const POLL_LUA: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'client', 'exp', 'state', 'last', 'interval', 'grant')
if not f[1] then return {'unknown'} end
if f[1] ~= ARGV[1] then return {'other_client'} end
local now = tonumber(ARGV[2])
if now >= tonumber(f[2]) then return {'expired'} end
if f[3] == 'approved' then
  redis.call('HSET', KEYS[1], 'state', 'redeemed')
  redis.call('HDEL', KEYS[1], 'grant')
  return {'approved', f[6] or ''}
end
if f[3] ~= 'pending' then return {f[3]} end
local interval = tonumber(f[5])
local reply = 'pending'
if f[4] and now - tonumber(f[4]) < interval * 1000 then
  interval = interval + tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], 'interval', string.format('%d', interval))
  reply = 'slow_down'
end
redis.call('HSET', KEYS[1], 'last', ARGV[2])
return {reply, string.format('%d', interval)}
"#;

/// The scripts of this module.
pub(super) struct DeviceScripts {
    start: Script,
    decide: Script,
    poll: Script,
}

impl DeviceScripts {
    pub(super) fn new() -> Self {
        Self {
            start: Script::new(START_LUA),
            decide: Script::new(DECIDE_LUA),
            poll: Script::new(POLL_LUA),
        }
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::corrupt(STORE, what)
}

impl RedisStore {
    fn device_key(&self, device_hash: &str) -> String {
        format!("{}dev:{{{device_hash}}}", self.prefix)
    }

    fn user_code_key(&self, user_code_hash: &str) -> String {
        format!("{}ucode:{{{user_code_hash}}}", self.prefix)
    }
}

#[async_trait]
impl DeviceStore for RedisStore {
    /// `SET NX PX` on the user code, then [`START_LUA`] on the authorization.
    async fn start(
        &self,
        device_hash: &str,
        user_code_hash: &str,
        device: &NewDevice,
    ) -> Result<bool, StoreError> {
        let code_key = self.user_code_key(user_code_hash);
        let taken: Option<String> = self
            .run(|mut c| {
                let code_key = code_key.clone();
                async move {
                    redis::cmd("SET")
                        .arg(code_key)
                        .arg(device_hash)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_arg(device.keep_ms))
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        if taken.is_none() {
            return Ok(false);
        }
        let key = self.device_key(device_hash);
        self.run(|mut c| {
            let (key, scripts) = (key.clone(), self.scripts.clone());
            async move {
                scripts
                    .device
                    .start
                    .key(key)
                    .arg(&device.client_id)
                    .arg(&device.scope)
                    .arg(device.expires_at_ms)
                    .arg(device.interval_secs)
                    .arg(ttl_arg(device.keep_ms))
                    .invoke_async::<i64>(&mut c)
                    .await
            }
        })
        .await?;
        Ok(true)
    }

    /// `GET` on the user code, then `HMGET` on the authorization it names.
    async fn by_user_code(&self, user_code_hash: &str) -> Result<Option<DeviceView>, StoreError> {
        let code_key = self.user_code_key(user_code_hash);
        let device_hash: Option<String> = self
            .run(|mut c| {
                let code_key = code_key.clone();
                async move { redis::cmd("GET").arg(code_key).query_async(&mut c).await }
            })
            .await?;
        let Some(device_hash) = device_hash else {
            return Ok(None);
        };
        let key = self.device_key(&device_hash);
        let fields: Vec<Option<String>> = self
            .run(|mut c| {
                let key = key.clone();
                async move {
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg(&["client", "scope", "exp", "state"])
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        let mut fields = fields.into_iter();
        let (Some(client_id), scope, exp, state) = (
            fields.next().flatten(),
            fields.next().flatten(),
            fields.next().flatten(),
            fields.next().flatten(),
        ) else {
            return Ok(None);
        };
        let expires_at_ms = exp
            .and_then(|e| e.parse().ok())
            .ok_or_else(|| corrupt("a device authorization without its expiry"))?;
        let status = state
            .as_deref()
            .and_then(DeviceStatus::parse)
            .ok_or_else(|| corrupt("a device authorization with an unknown status"))?;
        Ok(Some(DeviceView {
            device_hash,
            client_id,
            scope: scope.unwrap_or_default(),
            expires_at_ms,
            status,
        }))
    }

    /// One script: [`DECIDE_LUA`].
    async fn decide(
        &self,
        device_hash: &str,
        decision: &DeviceDecision,
        now_ms: i64,
    ) -> Result<DecideOutcome, StoreError> {
        let key = self.device_key(device_hash);
        let (state, grant) = match decision {
            DeviceDecision::Approve(grant) => ("approved", grant.as_str()),
            DeviceDecision::Deny => ("denied", ""),
        };
        let reply: String = self
            .run(|mut c| {
                let (key, scripts) = (key.clone(), self.scripts.clone());
                async move {
                    scripts
                        .device
                        .decide
                        .key(key)
                        .arg(state)
                        .arg(grant)
                        .arg(now_ms)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        match reply.as_str() {
            "decided" => Ok(DecideOutcome::Decided),
            "unknown" => Ok(DecideOutcome::Unknown),
            "expired" => Ok(DecideOutcome::Expired),
            other => DeviceStatus::parse(other)
                .map(DecideOutcome::AlreadyDecided)
                .ok_or_else(|| corrupt("unexpected reply deciding a device authorization")),
        }
    }

    /// One script: [`POLL_LUA`].
    async fn poll(
        &self,
        device_hash: &str,
        client_id: &str,
        now_ms: i64,
    ) -> Result<DevicePoll, StoreError> {
        let key = self.device_key(device_hash);
        let reply: Vec<String> = self
            .run(|mut c| {
                let (key, scripts) = (key.clone(), self.scripts.clone());
                async move {
                    scripts
                        .device
                        .poll
                        .key(key)
                        .arg(client_id)
                        .arg(now_ms)
                        .arg(SLOW_DOWN_STEP_SECS)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        let mut reply = reply.into_iter();
        let interval = |v: Option<String>| -> Result<i64, StoreError> {
            v.and_then(|v| v.parse().ok())
                .ok_or_else(|| corrupt("a device authorization without its interval"))
        };
        match (reply.next().as_deref(), reply.next(), reply.next()) {
            (Some("unknown"), None, None) => Ok(DevicePoll::Unknown),
            (Some("other_client"), None, None) => Ok(DevicePoll::OtherClient),
            (Some("expired"), None, None) => Ok(DevicePoll::Expired),
            (Some("denied"), None, None) => Ok(DevicePoll::Denied),
            (Some("redeemed"), None, None) => Ok(DevicePoll::Redeemed),
            (Some("approved"), Some(grant), None) => Ok(DevicePoll::Approved(grant)),
            (Some("pending"), v, None) => Ok(DevicePoll::Pending {
                interval_secs: interval(v)?,
            }),
            (Some("slow_down"), v, None) => Ok(DevicePoll::SlowDown {
                interval_secs: interval(v)?,
            }),
            _ => Err(corrupt("unexpected reply polling a device authorization")),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }
}
