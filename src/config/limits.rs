//! Rate limits (docs/hardening.md): per client IP over the limited endpoints and per account,
//! the wrong user codes of the device page per client IP and over the service
//! (docs/device.md), and the switch that turns them all off.

use std::fmt;
use std::time::Duration;

use super::env::Reader;
use super::values::parse_switch;
use super::vars;

/// The settings of this concern, validated.
pub(super) struct Limits {
    pub(super) rate_limit_enabled: bool,
    pub(super) rate_limit_ip: Rate,
    pub(super) rate_limit_account: Rate,
    pub(super) rate_limit_user_code: Rate,
    pub(super) rate_limit_user_code_global: Rate,
}

pub(super) fn read(r: &mut Reader<'_>) -> Option<Limits> {
    let rate_limit_enabled = r.value(&vars::RATE_LIMIT, parse_switch);
    let rate_limit_ip = r.value(&vars::RATE_LIMIT_IP, str::parse);
    let rate_limit_account = r.value(&vars::RATE_LIMIT_ACCOUNT, str::parse);
    let rate_limit_user_code = r.value(&vars::RATE_LIMIT_USER_CODE, str::parse);
    let rate_limit_user_code_global = r.value(&vars::RATE_LIMIT_USER_CODE_GLOBAL, str::parse);
    Some(Limits {
        rate_limit_enabled: rate_limit_enabled?,
        rate_limit_ip: rate_limit_ip?,
        rate_limit_account: rate_limit_account?,
        rate_limit_user_code: rate_limit_user_code?,
        rate_limit_user_code_global: rate_limit_user_code_global?,
    })
}

/// A rate: `count` requests per `per`, allowing bursts of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    pub(crate) count: u32,
    pub(crate) per: Duration,
}

impl Rate {
    /// The GCRA emission interval in milliseconds.
    pub(crate) fn emission_ms(&self) -> i64 {
        (tokend_token_shape::clock::ms(self.per) / i64::from(self.count.max(1))).max(1)
    }
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, unit) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a rate like 600/min"))?;
        let count: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{n:?} is not a positive count"))?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => return Err(format!("unknown unit {other:?} (use s, min or h)")),
        };
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        let r: Rate = "600/min".parse().unwrap();
        assert_eq!(
            (r.count, r.per, r.emission_ms()),
            (600, Duration::from_secs(60), 100)
        );
    }
}
