//! Browser clients: the origins CORS allows and whether the refresh token travels in a cookie
//! (the README's browser mode).

use super::env::Reader;
use super::values::parse_switch;
use super::vars;

/// The settings of this concern, validated.
pub(super) struct Browser {
    pub(super) cors_origins: Vec<String>,
    pub(super) refresh_cookie: bool,
}

pub(super) fn read(r: &mut Reader<'_>) -> Option<Browser> {
    let cors_origins = r.optional(&vars::CORS_ORIGINS, parse_origins);
    let refresh_cookie = r.value(&vars::REFRESH_COOKIE, parse_switch);
    Some(Browser {
        cors_origins: cors_origins?.unwrap_or_default(),
        refresh_cookie: refresh_cookie?,
    })
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
