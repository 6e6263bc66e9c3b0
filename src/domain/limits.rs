//! Rate limits (per client IP, per account, per client id), failed-login back-off
//! (docs/hardening.md) and the device page's wrong-user-code limits (docs/device.md). Shared
//! through Redis in production mode, in memory in embedded mode.

use std::net::IpAddr;
use std::sync::Arc;

use super::Error;
use crate::clock::SharedClock;
use crate::config::{Config, Rate};
use crate::metrics::Metrics;
use crate::store::{BackoffPolicy, LimitStore};

/// Failed-login back-off: five free failures, then 1 s doubling up to 15 min; the count is
/// forgotten an hour after the last back-off ends. The owner is never locked out for good:
/// at worst one attempt per 15 minutes goes through, and a success clears everything.
pub(crate) const BACKOFF: BackoffPolicy = BackoffPolicy {
    free: 5,
    base_ms: 1_000,
    cap_ms: 15 * 60 * 1_000,
    window_ms: 60 * 60 * 1_000,
};

/// The `Limits` service: rate limits and the failed-login back-off, with their switch.
pub(crate) struct Limits {
    store: Arc<dyn LimitStore>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// `TOKEND_RATE_LIMIT`.
    enabled: bool,
    rate_ip: Rate,
    rate_account: Rate,
    /// `TOKEND_RATE_LIMIT_REGISTRATION`.
    rate_registration: Rate,
    rate_user_code: Rate,
    rate_user_code_global: Rate,
}

/// The key of the service-wide budget of wrong user codes.
const USER_CODE_GLOBAL_KEY: &str = "ucode:all";

/// One user-code check reserved on the budgets of [`Limits::reserve_user_code`]: handed back
/// to [`Limits::refund_user_code`] when the code was right, kept (counted) when it was wrong.
#[derive(Debug)]
#[must_use = "a right code is handed back with refund_user_code"]
pub(crate) struct UserCodeAttempt {
    /// The per-address key, when the address is known.
    ip_key: Option<String>,
    /// Whether anything was reserved (the limits are on).
    reserved: bool,
}

/// A key that names an account without putting the email or username in the store.
pub(crate) fn account_key(login: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        login.trim().to_lowercase().as_bytes(),
    );
    format!("acct:{}", hex::encode(&d.as_ref()[..16]))
}

/// The one budget of an existing account, whatever names it (username, email, any case).
pub(crate) fn user_key(user_id: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, user_id.as_bytes());
    format!("user:{}", hex::encode(&d.as_ref()[..16]))
}

/// A key for failed authentications of a client id from one source address.
pub(crate) fn client_key(client_id: &str, source: Option<IpAddr>) -> String {
    let source = source.map(|ip| ip.to_string()).unwrap_or_default();
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{client_id}\n{source}").as_bytes(),
    );
    format!("client:{}", hex::encode(&d.as_ref()[..16]))
}

fn retry_secs(ms: i64) -> u64 {
    u64::try_from((ms + 999) / 1000).unwrap_or(1).max(1)
}

impl Limits {
    pub(crate) fn new(
        store: Arc<dyn LimitStore>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        config: &Config,
    ) -> Limits {
        Limits {
            store,
            clock,
            metrics,
            enabled: config.rate_limit_enabled,
            rate_ip: config.rate_limit_ip,
            rate_account: config.rate_limit_account,
            rate_registration: config.rate_limit_registration,
            rate_user_code: config.rate_limit_user_code,
            rate_user_code_global: config.rate_limit_user_code_global,
        }
    }

    /// The per-IP limit on registrations without an initial access token (`open` mode,
    /// docs/registration.md). A request without a known address shares one bucket.
    pub(crate) async fn limit_registration(&self, ip: Option<IpAddr>) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        let rate = self.rate_registration;
        let ip = ip.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        let key = format!("register:{ip}");
        if let Some(wait) = self
            .store
            .rate_check(&key, self.clock.now_ms(), rate.emission_ms(), rate.count)
            .await?
        {
            self.metrics
                .rate_limited
                .with_label_values(&["registration"])
                .inc();
            return Err(Error::RateLimited(retry_secs(wait)));
        }
        Ok(())
    }

    /// The per-IP limit over login, register, refresh and token requests.
    pub(crate) async fn limit_ip(&self, ip: IpAddr) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        let rate = self.rate_ip;
        let key = format!("ip:{ip}");
        if let Some(wait) = self
            .store
            .rate_check(&key, self.clock.now_ms(), rate.emission_ms(), rate.count)
            .await?
        {
            self.metrics.rate_limited.with_label_values(&["ip"]).inc();
            return Err(Error::RateLimited(retry_secs(wait)));
        }
        Ok(())
    }

    /// The per-account (or per-client) limit; `key` from [`account_key`] or [`client_key`].
    pub(crate) async fn limit_key(&self, key: &str, label: &'static str) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        let rate = self.rate_account;
        if let Some(wait) = self
            .store
            .rate_check(key, self.clock.now_ms(), rate.emission_ms(), rate.count)
            .await?
        {
            self.metrics.rate_limited.with_label_values(&[label]).inc();
            if label == "account" {
                self.metrics
                    .logins
                    .with_label_values(&["rate_limited"])
                    .inc();
            }
            return Err(Error::RateLimited(retry_secs(wait)));
        }
        Ok(())
    }

    /// Refuses a client authentication while the client id backs off after failed secrets.
    pub(crate) async fn check_client_backoff(&self, key: &str) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        let now = self.clock.now_ms();
        if let Some(until) = self.store.backoff_until(key).await? {
            if until > now {
                self.metrics
                    .rate_limited
                    .with_label_values(&["client"])
                    .inc();
                return Err(Error::RateLimited(retry_secs(until - now)));
            }
        }
        Ok(())
    }

    /// A failed client secret counts against the client id: the per-account rate and the
    /// back-off both apply.
    pub(crate) async fn client_auth_failed(&self, key: &str) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        self.store
            .record_failure(key, self.clock.now_ms(), BACKOFF)
            .await?;
        self.limit_key(key, "client").await
    }

    /// Reserves one password check on the account's back-off (atomically: concurrent guesses
    /// get no more checks than sequential ones); refused while the account backs off.
    pub(crate) async fn reserve_password_check(&self, account: &str) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        let now = self.clock.now_ms();
        if let Some(until) = self.store.reserve_attempt(account, now, BACKOFF).await? {
            self.metrics.login_backoff.inc();
            self.metrics.logins.with_label_values(&["backoff"]).inc();
            return Err(Error::RateLimited(retry_secs(until - now)));
        }
        Ok(())
    }

    /// Reserves one user-code check on the device page (RFC 8628 §5.1), before the code is looked
    /// up: on the client address's budget (`TOKEND_RATE_LIMIT_USER_CODE`), then on the
    /// service's (`TOKEND_RATE_LIMIT_USER_CODE_GLOBAL`). Each reservation is one atomic GCRA
    /// step, so N concurrent guesses get no more checks than N sequential ones. A right code is
    /// handed back ([`Limits::refund_user_code`]): only wrong codes spend the budgets.
    pub(crate) async fn reserve_user_code(
        &self,
        ip: Option<IpAddr>,
    ) -> Result<UserCodeAttempt, Error> {
        if !self.enabled {
            return Ok(UserCodeAttempt {
                ip_key: None,
                reserved: false,
            });
        }
        let now = self.clock.now_ms();
        let ip_key = ip.map(|ip| format!("ucode:ip:{ip}"));
        let (per_ip, global) = (self.rate_user_code, self.rate_user_code_global);
        if let Some(key) = &ip_key {
            if let Some(wait) = self
                .store
                .rate_check(key, now, per_ip.emission_ms(), per_ip.count)
                .await?
            {
                self.metrics
                    .rate_limited
                    .with_label_values(&["user_code"])
                    .inc();
                return Err(Error::RateLimited(retry_secs(wait)));
            }
        }
        if let Some(wait) = self
            .store
            .rate_check(
                USER_CODE_GLOBAL_KEY,
                now,
                global.emission_ms(),
                global.count,
            )
            .await?
        {
            // Refused before the code was looked at: the address's reservation goes back.
            if let Some(key) = &ip_key {
                self.store
                    .rate_refund(key, now, per_ip.emission_ms())
                    .await?;
            }
            self.metrics
                .rate_limited
                .with_label_values(&["user_code_global"])
                .inc();
            return Err(Error::RateLimited(retry_secs(wait)));
        }
        Ok(UserCodeAttempt {
            ip_key,
            reserved: true,
        })
    }

    /// Hands a reserved check back: the code was right, so it spends no budget.
    pub(crate) async fn refund_user_code(&self, attempt: UserCodeAttempt) -> Result<(), Error> {
        if !attempt.reserved {
            return Ok(());
        }
        let now = self.clock.now_ms();
        if let Some(key) = &attempt.ip_key {
            self.store
                .rate_refund(key, now, self.rate_user_code.emission_ms())
                .await?;
        }
        self.store
            .rate_refund(
                USER_CODE_GLOBAL_KEY,
                now,
                self.rate_user_code_global.emission_ms(),
            )
            .await?;
        Ok(())
    }

    /// Whether one more mail may go to `address` now: at most one a minute and five an hour
    /// (a burst of five, then one every 12 minutes) per address (docs/mail.md). Two GCRA
    /// budgets, the minute's asked first, so a refusal by it never spends the hour's. Applies
    /// whatever `TOKEND_RATE_LIMIT` says: it protects inboxes, not tokend.
    pub(crate) async fn allow_mail(&self, address: &str) -> Result<bool, Error> {
        self.allow_mail_in("mail", address).await
    }

    /// [`Limits::allow_mail`] for password reset mails, on a budget of their own: a
    /// registration's verification mail does not hold back a reset asked for right after it
    /// (docs/mail.md, "Password reset").
    pub(crate) async fn allow_reset_mail(&self, address: &str) -> Result<bool, Error> {
        self.allow_mail_in("reset", address).await
    }

    /// One mail budget (`budget`: `mail`, `reset`) of an address.
    async fn allow_mail_in(&self, budget: &str, address: &str) -> Result<bool, Error> {
        let d = ring::digest::digest(
            &ring::digest::SHA256,
            address.trim().to_lowercase().as_bytes(),
        );
        let key = hex::encode(&d.as_ref()[..16]);
        let now = self.clock.now_ms();
        for (prefix, emission_ms, burst) in [("minute", 60_000, 1), ("hour", 12 * 60_000, 5)] {
            let refused = self
                .store
                .rate_check(&format!("{budget}-{prefix}:{key}"), now, emission_ms, burst)
                .await?;
            if refused.is_some() {
                self.metrics.rate_limited.with_label_values(&["mail"]).inc();
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A right password clears the account's failures (the reserved attempt included).
    pub(crate) async fn password_check_succeeded(&self, account: &str) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        self.store.clear_failures(account).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_and_is_capped() {
        assert_eq!(BACKOFF.delay_ms(5), 0);
        assert_eq!(BACKOFF.delay_ms(6), 1_000);
        assert_eq!(BACKOFF.delay_ms(7), 2_000);
        assert_eq!(BACKOFF.delay_ms(10), 16_000);
        assert_eq!(BACKOFF.delay_ms(30), 15 * 60 * 1_000);
        assert_eq!(BACKOFF.delay_ms(u32::MAX), 15 * 60 * 1_000);
    }

    #[test]
    fn account_keys_hide_the_login_and_ignore_case() {
        let k = account_key("Ezra@Example.com");
        assert_eq!(k, account_key("ezra@example.com "));
        assert!(!k.contains("ezra"));
    }
}
