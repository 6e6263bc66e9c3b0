//! The time claims (RFC 7519 §4.1.4, §4.1.5) and the clock skew tolerated on them
//! (`docs/tokens.md`, "Validation": at most 30 s of leeway).

use std::time::Duration;

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: i64 = 30;
/// [`LEEWAY_SECS`] as a duration.
pub const LEEWAY: Duration = Duration::from_secs(LEEWAY_SECS.unsigned_abs());

/// Whether a token with this `exp` has expired at `now` (Unix seconds), allowing `leeway`
/// seconds of skew.
pub fn is_expired(exp: i64, now: i64, leeway: i64) -> bool {
    now > exp.saturating_add(leeway)
}

/// Whether a token whose validity starts at `not_before` (its `nbf`, else its `iat`) is not
/// valid yet at `now` (Unix seconds), allowing `leeway` seconds of skew.
pub fn is_not_yet_valid(not_before: i64, now: i64, leeway: i64) -> bool {
    not_before > now.saturating_add(leeway)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leeway_holds_on_both_sides() {
        let now = 1_700_000_000;
        assert!(!is_expired(now - LEEWAY_SECS, now, LEEWAY_SECS));
        assert!(is_expired(now - LEEWAY_SECS - 1, now, LEEWAY_SECS));
        assert!(!is_not_yet_valid(now + LEEWAY_SECS, now, LEEWAY_SECS));
        assert!(is_not_yet_valid(now + LEEWAY_SECS + 1, now, LEEWAY_SECS));
        assert!(!is_expired(i64::MAX, i64::MAX, LEEWAY_SECS));
        assert!(!is_not_yet_valid(i64::MAX, i64::MAX, LEEWAY_SECS));
        assert_eq!(LEEWAY, Duration::from_secs(30));
    }
}
