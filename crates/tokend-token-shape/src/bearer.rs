//! The bearer token of an `Authorization` header (RFC 6750 §2.1):
//!
//! ```text
//! credentials = "Bearer" 1*SP b64token
//! b64token    = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
//! ```
//!
//! The scheme is case-insensitive (RFC 9110 §11.1); exactly one token follows it. A DPoP-bound
//! token travels the same way under the `DPoP` scheme (RFC 9449 §7.1), read by
//! [`parse_scheme`].

use http::{header, HeaderMap};

/// Why a request carries no usable bearer token. The `Display` text is safe to send as an
/// `error_description`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// No `Authorization` header.
    Missing,
    /// The header's value is not visible ASCII.
    NotText,
    /// Another scheme, no token, more than one, or characters a b64token cannot hold.
    Malformed,
}

impl std::fmt::Display for BearerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BearerError::Missing => "missing bearer token",
            BearerError::NotText => "malformed Authorization header",
            BearerError::Malformed => "expected Authorization: Bearer <token>",
        })
    }
}

impl std::error::Error for BearerError {}

/// The scheme an access token was presented with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Bearer` (RFC 6750 §2.1).
    Bearer,
    /// `DPoP` (RFC 9449 §7.1): the request must carry a proof of the token's key.
    DPoP,
}

impl Scheme {
    /// The scheme's name as written in `Authorization` and `WWW-Authenticate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Bearer => "Bearer",
            Scheme::DPoP => "DPoP",
        }
    }
}

/// The scheme and token of an `Authorization` header value `Bearer <token>` or
/// `DPoP <token>` (RFC 9449 §7.1: the same `token68` syntax).
pub fn parse_scheme(value: &str) -> Result<(Scheme, &str), BearerError> {
    let value = value.trim_matches([' ', '\t']);
    let (name, token) = value.split_once(' ').ok_or(BearerError::Malformed)?;
    let scheme = if name.eq_ignore_ascii_case("Bearer") {
        Scheme::Bearer
    } else if name.eq_ignore_ascii_case("DPoP") {
        Scheme::DPoP
    } else {
        return Err(BearerError::Malformed);
    };
    let token = token.trim_start_matches(' ');
    if is_b64token(token) {
        Ok((scheme, token))
    } else {
        Err(BearerError::Malformed)
    }
}

/// The scheme and token of the request's (first) `Authorization` header.
pub fn scheme_from_headers(headers: &HeaderMap) -> Result<(Scheme, &str), BearerError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(BearerError::Missing)?;
    let value = value.to_str().map_err(|_| BearerError::NotText)?;
    parse_scheme(value)
}

/// The token of an `Authorization` header value `Bearer <token>`.
///
/// Whitespace around the value is not part of it (RFC 9110 §5.5); one or more spaces separate
/// the scheme from the token.
pub fn parse(value: &str) -> Result<&str, BearerError> {
    match parse_scheme(value)? {
        (Scheme::Bearer, token) => Ok(token),
        (Scheme::DPoP, _) => Err(BearerError::Malformed),
    }
}

/// The bearer token of the request's (first) `Authorization` header.
pub fn from_headers(headers: &HeaderMap) -> Result<&str, BearerError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(BearerError::Missing)?;
    let value = value.to_str().map_err(|_| BearerError::NotText)?;
    parse(value)
}

/// RFC 6750 §2.1 `b64token` (the token68 of RFC 9110 §11.2).
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_bearer_token_is_read_whatever_the_case_of_the_scheme() {
        assert_eq!(parse("Bearer abc.def.ghi"), Ok("abc.def.ghi"));
        assert_eq!(parse("bearer x"), Ok("x"));
        assert_eq!(parse("BEARER  x"), Ok("x"), "1*SP");
        assert_eq!(
            parse("Bearer x "),
            Ok("x"),
            "trailing whitespace is not the value"
        );
        assert_eq!(parse("Bearer a-b_c~d+e/f=="), Ok("a-b_c~d+e/f=="));
    }

    #[test]
    fn anything_but_one_b64token_after_bearer_is_refused() {
        for value in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer   ",
            "Basic abc",
            "Bearerabc",
            "Bearer a b",
            "Bearer a,b",
            "Bearer a=b",
            "Bearer ==",
            "Bearer \"abc\"",
            "Bearer\tabc",
            "Token abc",
        ] {
            assert_eq!(parse(value), Err(BearerError::Malformed), "{value:?}");
        }
    }

    #[test]
    fn the_dpop_scheme_carries_a_token_the_same_way() {
        assert_eq!(parse_scheme("DPoP a.b.c"), Ok((Scheme::DPoP, "a.b.c")));
        assert_eq!(parse_scheme("dpop  a.b.c "), Ok((Scheme::DPoP, "a.b.c")));
        assert_eq!(parse_scheme("Bearer x"), Ok((Scheme::Bearer, "x")));
        assert_eq!(parse("DPoP a.b.c"), Err(BearerError::Malformed));
        for value in ["DPoP", "DPoP ", "DPoP a b", "DPoPa", "PoP x"] {
            assert_eq!(
                parse_scheme(value),
                Err(BearerError::Malformed),
                "{value:?}"
            );
        }
    }

    #[test]
    fn the_header_is_required_and_must_be_text() {
        let mut h = HeaderMap::new();
        assert_eq!(from_headers(&h), Err(BearerError::Missing));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0k"),
        );
        assert_eq!(from_headers(&h), Ok("t0k"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert_eq!(from_headers(&h), Err(BearerError::NotText));
        assert_eq!(
            BearerError::Missing.to_string(),
            "missing bearer token",
            "the description the server sends"
        );
    }
}
