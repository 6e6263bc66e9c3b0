//! Browser clients: the origins CORS allows, whether the refresh token travels in a cookie
//! (the README's browser mode), and browser sign-in (docs/authorize.md): the browser session's
//! and the ID token's lifetimes, and the name and logo of the hosted pages.

use std::time::Duration;

use super::env::Reader;
use super::values::{parse_duration, parse_switch};
use super::vars;

/// The settings of this concern, validated.
pub(super) struct Browser {
    pub(super) cors_origins: Vec<String>,
    pub(super) refresh_cookie: bool,
    pub(super) browser_session_ttl: Duration,
    pub(super) id_token_ttl: Duration,
    pub(super) display_name: String,
    pub(super) logo_url: Option<String>,
}

pub(super) fn read(r: &mut Reader<'_>) -> Option<Browser> {
    let cors_origins = r.optional(&vars::CORS_ORIGINS, parse_origins);
    let refresh_cookie = r.value(&vars::REFRESH_COOKIE, parse_switch);
    let browser_session_ttl = r.value(&vars::BROWSER_SESSION_TTL, parse_duration);
    let id_token_ttl = r.value(&vars::ID_TOKEN_TTL, parse_duration);
    let display_name = r.value(&vars::DISPLAY_NAME, parse_display_name);
    let logo_url = r.optional(&vars::LOGO_URL, parse_logo_url);
    Some(Browser {
        cors_origins: cors_origins?.unwrap_or_default(),
        refresh_cookie: refresh_cookie?,
        browser_session_ttl: browser_session_ttl?,
        id_token_ttl: id_token_ttl?,
        display_name: display_name?,
        logo_url: logo_url?,
    })
}

/// 1–60 characters without control characters.
fn parse_display_name(v: &str) -> Result<String, String> {
    let name = v.trim();
    let len = name.chars().count();
    if !(1..=60).contains(&len) || name.chars().any(char::is_control) {
        return Err("must be 1-60 characters without control characters".into());
    }
    Ok(name.to_string())
}

/// An https URL (or http on loopback, for local use) of an image.
fn parse_logo_url(v: &str) -> Result<String, String> {
    let v = v.trim();
    let ok = url::Url::parse(v).ok().is_some_and(|u| {
        u.scheme() == "https"
            || (u.scheme() == "http"
                && matches!(u.host_str(), Some("127.0.0.1" | "[::1]" | "localhost")))
    });
    if !ok {
        return Err("must be an https URL of an image".into());
    }
    Ok(v.to_string())
}

/// A comma list of origins (RFC 6454 section 6.2), each an http(s) URL with a host; a trailing
/// slash is dropped and `*` is refused.
fn parse_origins(v: &str) -> Result<Vec<String>, String> {
    let origins: Vec<String> = v
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_string())
        .filter(|o| !o.is_empty())
        .collect();
    for o in &origins {
        let ok = url::Url::parse(o)
            .ok()
            .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok || o == "*" {
            return Err(format!(
                "{o:?} is not an origin like https://app.example.com"
            ));
        }
    }
    Ok(origins)
}
