//! Access tokens (RFC 9068, `typ` `at+jwt`) and refresh tokens (`typ` `rt+jwt`): claims, signing
//! through the key ring, and validation of `iss`, `aud`, `exp`, `nbf` (`docs/tokens.md`). The
//! `typ` values and the leeway come from `tokend-token-shape`, which the resource-server
//! verifier checks with too.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use tokend_token_shape::time;

use super::Error;
use crate::keys::{Alg, Keys, TokenError};

pub use tokend_token_shape::{ACCESS_TYP, LEEWAY_SECS, REFRESH_TYP};

/// `aud` may be one string or an array (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(a) => a == aud,
            Audience::Many(v) => v.iter().any(|a| a == aud),
        }
    }
}

/// Claims of an access token (RFC 9068 §2.2 plus `sid`, `fresh`, `roles`).
///
/// A claim with nothing in it is left out, never sent empty (`docs/tokens.md`): strict RFC 9068
/// validators refuse `"scope":""`, and RFC 6749 §3.3 makes a scope one or more tokens. Decoding
/// takes an absent claim as empty, so tokens issued before, with empty claims, still decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Audience,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: String,
    /// Space-separated scope tokens; absent when none were granted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The refresh family; absent for client_credentials tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(default)]
    pub fresh: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// The user's roles; absent for client_credentials tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// Claims of a refresh token; its audience is the issuer itself. An empty `scope` is left out,
/// as in [`AccessClaims`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Audience,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub sid: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

/// Signs and checks tokens for one issuer.
#[derive(Clone)]
pub struct Tokens {
    pub issuer: String,
    pub audience: String,
    pub keys: Keys,
}

fn to_map<T: Serialize>(claims: &T) -> Result<Map<String, Value>, Error> {
    match serde_json::to_value(claims) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::Internal("claims are not an object".into())),
        Err(e) => Err(Error::Internal(format!("claims: {e}"))),
    }
}

/// A short, safe reason for a refused token (also a metric label).
pub fn token_error_reason(e: &TokenError) -> &'static str {
    e.reason()
}

impl Tokens {
    pub fn new(issuer: String, audience: String, keys: Keys) -> Tokens {
        Tokens {
            issuer,
            audience,
            keys,
        }
    }

    /// Signs with the key of `alg` active at `claims.iat` (so identical claims give identical
    /// tokens).
    pub fn sign_access(&self, alg: Alg, claims: &AccessClaims) -> Result<String, Error> {
        Ok(self
            .keys
            .sign(alg, ACCESS_TYP, &to_map(claims)?, claims.iat)?)
    }

    pub fn sign_refresh(&self, alg: Alg, claims: &RefreshClaims) -> Result<String, Error> {
        Ok(self
            .keys
            .sign(alg, REFRESH_TYP, &to_map(claims)?, claims.iat)?)
    }

    /// Signature, header and time checks of an access token; revocation is checked by the caller.
    pub fn decode_access(&self, token: &str, now: i64) -> Result<AccessClaims, &'static str> {
        let v = self
            .keys
            .verify(token, ACCESS_TYP, now)
            .map_err(|e| e.reason())?;
        let c: AccessClaims =
            serde_json::from_value(Value::Object(v.claims)).map_err(|_| "claims")?;
        self.check_times(
            &c.iss,
            &c.aud,
            &self.audience,
            c.exp,
            Some(c.nbf),
            c.iat,
            now,
        )?;
        Ok(c)
    }

    /// Signature, header and time checks of a refresh token.
    pub fn decode_refresh(&self, token: &str, now: i64) -> Result<RefreshClaims, &'static str> {
        let v = self
            .keys
            .verify(token, REFRESH_TYP, now)
            .map_err(|e| e.reason())?;
        let c: RefreshClaims =
            serde_json::from_value(Value::Object(v.claims)).map_err(|_| "claims")?;
        self.check_times(&c.iss, &c.aud, &self.issuer, c.exp, None, c.iat, now)?;
        Ok(c)
    }

    #[allow(clippy::too_many_arguments)]
    fn check_times(
        &self,
        iss: &str,
        aud: &Audience,
        expected_aud: &str,
        exp: i64,
        nbf: Option<i64>,
        iat: i64,
        now: i64,
    ) -> Result<(), &'static str> {
        if iss != self.issuer {
            return Err("issuer");
        }
        if !aud.contains(expected_aud) {
            return Err("audience");
        }
        if time::is_expired(exp, now, LEEWAY_SECS) {
            return Err("expired");
        }
        if time::is_not_yet_valid(nbf.unwrap_or(iat), now, LEEWAY_SECS) {
            return Err("not_yet_valid");
        }
        Ok(())
    }
}

/// A human sentence for a refusal reason (safe to send).
pub fn describe_reason(reason: &str) -> &'static str {
    match reason {
        "expired" => "token expired",
        "not_yet_valid" => "token not yet valid",
        "issuer" => "token issued by another issuer",
        "audience" => "token not meant for this audience",
        "typ" => "wrong token type",
        "alg" => "algorithm not accepted",
        "kid" => "unknown signing key",
        "signature" => "bad signature",
        "revoked" => "token revoked",
        "session_revoked" => "session revoked",
        "missing" => "missing bearer token",
        _ => "malformed token",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(scope: &str, roles: &[&str]) -> AccessClaims {
        AccessClaims {
            iss: "https://issuer.test".into(),
            sub: "svc".into(),
            aud: Audience::One("tokend".into()),
            exp: 1_900,
            iat: 1_000,
            nbf: 1_000,
            jti: "at-1".into(),
            client_id: "svc".into(),
            scope: scope.into(),
            sid: None,
            fresh: false,
            auth_time: None,
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn refresh(scope: &str) -> RefreshClaims {
        RefreshClaims {
            iss: "https://issuer.test".into(),
            sub: "user-1".into(),
            aud: Audience::One("https://issuer.test".into()),
            exp: 4_600,
            iat: 1_000,
            jti: "rt-1".into(),
            sid: "sid-1".into(),
            client_id: "tokend".into(),
            scope: scope.into(),
        }
    }

    #[test]
    fn empty_scope_and_roles_are_left_out_of_the_claims() {
        let m = to_map(&access("", &[])).unwrap();
        assert!(!m.contains_key("scope"), "{m:?}");
        assert!(!m.contains_key("roles"), "{m:?}");
        let m = to_map(&refresh("")).unwrap();
        assert!(!m.contains_key("scope"), "{m:?}");
    }

    #[test]
    fn scope_and_roles_with_something_in_them_are_sent() {
        let m = to_map(&access("read write", &["user"])).unwrap();
        assert_eq!(m["scope"], "read write");
        assert_eq!(m["roles"], serde_json::json!(["user"]));
        assert_eq!(to_map(&refresh("read")).unwrap()["scope"], "read");
    }

    #[test]
    fn claims_without_scope_or_roles_and_claims_with_empty_ones_both_decode() {
        let mut without = to_map(&access("", &[])).unwrap();
        let decoded: AccessClaims = serde_json::from_value(Value::Object(without.clone())).unwrap();
        assert_eq!(decoded, access("", &[]));
        // As tokens issued before empty claims were left out carried them.
        without.insert("scope".into(), Value::String(String::new()));
        without.insert("roles".into(), Value::Array(vec![]));
        let decoded: AccessClaims = serde_json::from_value(Value::Object(without)).unwrap();
        assert_eq!(decoded, access("", &[]));

        let mut r = to_map(&refresh("")).unwrap();
        let decoded: RefreshClaims = serde_json::from_value(Value::Object(r.clone())).unwrap();
        assert_eq!(decoded, refresh(""));
        r.insert("scope".into(), Value::String(String::new()));
        let decoded: RefreshClaims = serde_json::from_value(Value::Object(r)).unwrap();
        assert_eq!(decoded, refresh(""));
    }
}
