//! Tokens and sessions: the issuer and audience every token names, how long access tokens,
//! refresh tokens and refresh families live (docs/sessions.md), the session cap, and whether
//! DPoP proofs must carry a server nonce (docs/dpop.md).

use std::time::Duration;

use super::env::Reader;
use super::values::{parse_duration, parse_duration_allow_zero, parse_in, parse_switch};
use super::vars;

/// Largest allowed grace for concurrent refreshes (60 s).
const MAX_REFRESH_REUSE_LEEWAY: Duration = Duration::from_secs(60);

/// The settings of this concern, validated.
pub(super) struct Tokens {
    pub(super) issuer: String,
    pub(super) audience: String,
    pub(super) access_ttl: Duration,
    pub(super) refresh_ttl: Duration,
    pub(super) session_ttl: Duration,
    pub(super) refresh_reuse_leeway: Duration,
    pub(super) max_sessions_per_user: u32,
    pub(super) dpop_nonce: bool,
}

pub(super) fn read(r: &mut Reader<'_>) -> Option<Tokens> {
    let issuer = r.value(&vars::ISSUER, parse_issuer);
    let audience = r.value(&vars::AUDIENCE, |v| Ok(v.trim().to_string()));
    let access_ttl = r.value(&vars::ACCESS_TTL, parse_duration);
    let refresh_ttl = r.value(&vars::REFRESH_TTL, parse_duration);
    let session_ttl = r.value(&vars::SESSION_TTL, parse_duration);
    let refresh_reuse_leeway = r.value(&vars::REFRESH_REUSE_LEEWAY, parse_duration_allow_zero);
    let max_sessions_per_user = r.value(&vars::MAX_SESSIONS_PER_USER, |v| {
        parse_in(v, 1..=10_000, "expected a number from 1 to 10000")
    });
    let dpop_nonce = r.value(&vars::DPOP_NONCE, parse_switch);

    if let (Some(refresh), Some(session)) = (refresh_ttl, session_ttl) {
        if refresh > session {
            r.fail(
                &vars::REFRESH_TTL,
                format!(
                    "must not exceed {} ({})",
                    vars::SESSION_TTL.name,
                    humantime::format_duration(session)
                ),
            );
        }
    }
    if refresh_reuse_leeway.is_some_and(|l| l > MAX_REFRESH_REUSE_LEEWAY) {
        r.fail(&vars::REFRESH_REUSE_LEEWAY, "must be at most 60s");
    }

    Some(Tokens {
        issuer: issuer?,
        audience: audience?,
        access_ttl: access_ttl?,
        refresh_ttl: refresh_ttl?,
        session_ttl: session_ttl?,
        refresh_reuse_leeway: refresh_reuse_leeway?,
        max_sessions_per_user: max_sessions_per_user?,
        dpop_nonce: dpop_nonce?,
    })
}

/// An http(s) URL with a host and neither query nor fragment (RFC 8414 section 2; plain http
/// is allowed for local use), without its trailing slash.
fn parse_issuer(v: &str) -> Result<String, String> {
    let issuer = v.trim();
    let parsed = url::Url::parse(issuer).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err("must be an http(s) URL with a host".into());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(issuer.trim_end_matches('/').to_string())
}
