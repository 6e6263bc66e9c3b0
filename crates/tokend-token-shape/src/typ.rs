//! The JOSE `typ` header of tokend's tokens (`docs/tokens.md`): access tokens are `at+jwt`
//! (RFC 9068 §2.1), refresh tokens `rt+jwt`, and a token is only accepted where its `typ` is
//! the expected one.

/// `typ` of access tokens (RFC 9068 §2.1).
pub const ACCESS_TYP: &str = "at+jwt";
/// `typ` of refresh tokens.
pub const REFRESH_TYP: &str = "rt+jwt";

/// Whether the header's `typ` names the `expected` type: equal to it or to
/// `application/<expected>`, case-insensitive (RFC 7515 §4.1.9 lets the `application/` prefix
/// be left out; RFC 9068 §4 accepts either form of `at+jwt`).
pub fn typ_matches(typ: &str, expected: &str) -> bool {
    if typ.eq_ignore_ascii_case(expected) {
        return true;
    }
    const PREFIX: &str = "application/";
    match (typ.get(..PREFIX.len()), typ.get(PREFIX.len()..)) {
        (Some(p), Some(rest)) => {
            p.eq_ignore_ascii_case(PREFIX) && rest.eq_ignore_ascii_case(expected)
        }
        _ => false,
    }
}

/// Whether the header's `typ` is that of an access token: `at+jwt` or `application/at+jwt`,
/// case-insensitive (RFC 9068 §4).
pub fn is_access_typ(typ: &str) -> bool {
    typ_matches(typ, ACCESS_TYP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typ_is_compared_case_insensitively_with_or_without_the_media_type_prefix() {
        assert!(typ_matches("at+jwt", "at+jwt"));
        assert!(typ_matches("AT+JWT", "at+jwt"));
        assert!(typ_matches("application/at+jwt", "at+jwt"));
        assert!(typ_matches("Application/At+Jwt", "at+jwt"));
        assert!(!typ_matches("jwt", "at+jwt"));
        assert!(!typ_matches("application/rt+jwt", "at+jwt"));
        assert!(!typ_matches("applicationé/at+jwt", "at+jwt"));
        assert!(!typ_matches("", "at+jwt"));
    }

    #[test]
    fn only_access_types_are_access_types() {
        assert!(is_access_typ("at+jwt"));
        assert!(is_access_typ("application/AT+jwt"));
        assert!(!is_access_typ(REFRESH_TYP));
        assert!(!is_access_typ("JWT"));
        assert!(!is_access_typ("application/jwt"));
    }
}
