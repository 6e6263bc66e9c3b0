//! Access tokens (RFC 9068, `typ` `at+jwt`) and refresh tokens (`typ` `rt+jwt`): claims, signing
//! through the key ring, and validation of `iss`, `aud`, `exp`, `nbf` (`docs/tokens.md`). The
//! `typ` values and the leeway come from `tokend-token-shape`, which the resource-server
//! verifier checks with too.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use tokend_token_shape::time;
pub use tokend_token_shape::Actor;

use super::Error;
use crate::keys::{Alg, Keys, TokenError};

pub(crate) use tokend_token_shape::{ACCESS_TYP, LEEWAY_SECS, REFRESH_TYP};

/// `aud` may be one string or an array (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audience {
    pub(crate) fn contains(&self, aud: &str) -> bool {
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
    /// The issuer (`TOKEND_ISSUER`).
    pub iss: String,
    /// The user's id, or the client's for `client_credentials`.
    pub sub: String,
    /// `TOKEND_AUDIENCE`, or the audience the client was granted.
    pub aud: Audience,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Not before, Unix seconds (equal to `iat`).
    pub nbf: i64,
    /// Unique id: what revocation names.
    pub jti: String,
    /// The client the token was issued to (RFC 9068 §2.2).
    pub client_id: String,
    /// Space-separated scope tokens; absent when none were granted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The refresh family; absent for client_credentials tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Issued by a password authentication rather than a refresh (docs/tokens.md, "Fresh tokens").
    #[serde(default)]
    pub fresh: bool,
    /// Unix seconds of the password authentication behind the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// The user's roles; absent for client_credentials tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The user's username when the token was issued (introspection's `username`, RFC 7662
    /// §2.2); absent for client_credentials tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The key the token is bound to (RFC 9449 §6.1; RFC 7800 §3.1); absent for a bearer
    /// token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// Who acts for the subject (RFC 8693 §4.1): only in a token issued by token exchange
    /// (docs/token_exchange.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
}

/// The confirmation claim of a DPoP-bound access token (RFC 9449 §6.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The RFC 7638 thumbprint (SHA-256, base64url) of the client's DPoP key.
    pub jkt: String,
}

/// Claims of a refresh token; its audience is the issuer itself. An empty `scope` is left out,
/// as in [`AccessClaims`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshClaims {
    /// The issuer (`TOKEND_ISSUER`).
    pub iss: String,
    /// The user's id.
    pub sub: String,
    /// The issuer itself: a refresh token is for tokend only.
    pub aud: Audience,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Unique id: the family's current token is the one whose `jti` it records.
    pub jti: String,
    /// The refresh family (docs/sessions.md).
    pub sid: String,
    /// The client the family belongs to.
    pub client_id: String,
    /// Space-separated scope tokens; absent when none were granted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The resources the family was granted (RFC 8707 §2.2; docs/token_exchange.md): a
    /// refresh may ask for access tokens for these or some of them. Absent when none were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// What the family's record does not keep (docs/sessions.md, "The records"), carried from
    /// token to token of the family: the password authentication behind it (Unix seconds)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// ...the user's username, roles and the version of the user record they were read from
    /// (a newer change, recorded in the session store, wins at the next refresh)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// (The user's roles.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// (The `updated_at` of the user record, Unix ms.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_version: Option<i64>,
    /// ...and the DPoP key the family is bound to (RFC 9449 §5): a refresh needs a proof of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

impl RefreshClaims {
    /// The user as the token carries them (`None` for a token from before refresh tokens
    /// carried the user).
    pub(crate) fn user(&self) -> Option<crate::store::UserClaims> {
        Some(crate::store::UserClaims {
            username: self.username.clone()?,
            roles: self.roles.clone()?,
            version: self.user_version?,
        })
    }
}

impl Audience {
    /// The `aud` of an access token for `resources` (RFC 8707 §2): exactly those, or
    /// `default` (`TOKEND_AUDIENCE`) when the request named none.
    pub(crate) fn for_resources(resources: &[String], default: &str) -> Audience {
        match resources {
            [] => Audience::One(default.to_string()),
            [one] => Audience::One(one.clone()),
            many => Audience::Many(many.to_vec()),
        }
    }

    /// Every audience, in order.
    pub(crate) fn values(&self) -> Vec<&str> {
        match self {
            Audience::One(a) => vec![a.as_str()],
            Audience::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// Signs and checks tokens for one issuer.
#[derive(Clone)]
pub struct Tokens {
    pub(crate) issuer: String,
    pub(crate) audience: String,
    /// The signing keys.
    pub keys: Keys,
}

fn to_map<T: Serialize>(claims: &T) -> Result<Map<String, Value>, Error> {
    match serde_json::to_value(claims) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::Internal("claims are not an object".into())),
        Err(e) => Err(Error::Internal(format!("claims: {e}"))),
    }
}

/// Why a token was refused: one value that is at once the metric label
/// (`tokend_token_validation_failures_total{reason}`, [`Refusal::as_label`]), the log field and
/// the `error_description` sent to the client ([`Refusal::description`], safe to show; RFC 6750
/// §3). The validation steps are those of docs/tokens.md ("Validation").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `exp` passed, beyond the leeway (RFC 7519 §4.1.4).
    Expired,
    /// `nbf` (or `iat`) still ahead, beyond the leeway (RFC 7519 §4.1.5).
    NotYetValid,
    /// `iss` is not this issuer (RFC 7519 §4.1.1).
    Issuer,
    /// `aud` does not name this audience (RFC 7519 §4.1.3).
    Audience,
    /// `typ` missing or not the expected token type (RFC 9068 §2.1).
    Typ,
    /// `alg` missing, not accepted, or not the algorithm of the key named by `kid`.
    Alg,
    /// `kid` missing or not in the key ring.
    Kid,
    /// The key named by `kid` has been revoked (docs/keys.md).
    KeyRevoked,
    /// The signature does not verify.
    Signature,
    /// The claims do not have the shape of a token of this type.
    Claims,
    /// Not a JWS compact serialisation with a JSON header and JSON claims.
    Malformed,
    /// The token's `jti` was revoked (docs/sessions.md).
    Revoked,
    /// The token's family or all of the user's sessions were revoked (docs/sessions.md).
    SessionRevoked,
    /// No bearer token in the request (RFC 6750 §3.1).
    Missing,
    /// The token's user no longer exists.
    UnknownUser,
    /// A refresh token presented by another client than the one it was issued to.
    OtherClient,
    /// A DPoP-bound access token presented as a bearer token (RFC 9449 §7.2).
    DpopBound,
    /// A bearer (unbound) access token presented with the `DPoP` scheme (RFC 9449 §7.1).
    NotDpopBound,
}

impl Refusal {
    /// The metric label and log field: short, stable, never changed once dashboards and alert
    /// rules may read it.
    pub(crate) fn as_label(self) -> &'static str {
        match self {
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::Issuer => "issuer",
            Refusal::Audience => "audience",
            Refusal::Typ => "typ",
            Refusal::Alg => "alg",
            Refusal::Kid => "kid",
            Refusal::KeyRevoked => "key_revoked",
            Refusal::Signature => "signature",
            Refusal::Claims => "claims",
            Refusal::Malformed => "malformed",
            Refusal::Revoked => "revoked",
            Refusal::SessionRevoked => "session_revoked",
            Refusal::Missing => "missing",
            Refusal::UnknownUser => "unknown_user",
            Refusal::OtherClient => "other_client",
            Refusal::DpopBound => "dpop_bound",
            Refusal::NotDpopBound => "not_dpop_bound",
        }
    }

    /// The `error_description`: a short sentence, safe to send. A revoked key and claims of
    /// the wrong shape are answered as a malformed token, as they always have been; the label
    /// tells them apart for operators.
    pub(crate) fn description(self) -> &'static str {
        match self {
            Refusal::Expired => "token expired",
            Refusal::NotYetValid => "token not yet valid",
            Refusal::Issuer => "token issued by another issuer",
            Refusal::Audience => "token not meant for this audience",
            Refusal::Typ => "wrong token type",
            Refusal::Alg => "algorithm not accepted",
            Refusal::Kid => "unknown signing key",
            Refusal::Signature => "bad signature",
            Refusal::Revoked => "token revoked",
            Refusal::SessionRevoked => "session revoked",
            Refusal::Missing => "missing bearer token",
            Refusal::UnknownUser => "user no longer exists",
            Refusal::OtherClient => "issued to another client",
            Refusal::DpopBound => {
                "this token is DPoP-bound: send it as Authorization: DPoP with a DPoP proof"
            }
            Refusal::NotDpopBound => "this token is not DPoP-bound: send it as a Bearer token",
            Refusal::KeyRevoked | Refusal::Claims | Refusal::Malformed => "malformed token",
        }
    }
}

impl std::fmt::Display for Refusal {
    /// The description (what `error_description` carries).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.description())
    }
}

impl From<TokenError> for Refusal {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Malformed => Refusal::Malformed,
            TokenError::UnsupportedAlg | TokenError::KeyMismatch => Refusal::Alg,
            TokenError::WrongType => Refusal::Typ,
            TokenError::UnknownKey => Refusal::Kid,
            TokenError::RevokedKey => Refusal::KeyRevoked,
            TokenError::BadSignature => Refusal::Signature,
        }
    }
}

impl Tokens {
    /// Tokens for `issuer`, with `audience` as the default `aud` of access tokens.
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

    /// Signs with the key of `alg` active at `claims.iat`, as [`Tokens::sign_access`].
    pub fn sign_refresh(&self, alg: Alg, claims: &RefreshClaims) -> Result<String, Error> {
        Ok(self
            .keys
            .sign(alg, REFRESH_TYP, &to_map(claims)?, claims.iat)?)
    }

    /// Signature, header and time checks of an access token meant for tokend itself (its `aud`
    /// names `TOKEND_AUDIENCE`); revocation is checked by the caller.
    pub fn decode_access(&self, token: &str, now: i64) -> Result<AccessClaims, Refusal> {
        self.decode_access_for(token, now, Some(&self.audience))
    }

    /// The checks of [`Tokens::decode_access`] whatever the token's audience: for a token
    /// tokend issued for another resource (RFC 8707), where tokend is asked about it rather
    /// than called with it (introspection, revocation, the subject of a token exchange).
    pub fn decode_access_any_audience(
        &self,
        token: &str,
        now: i64,
    ) -> Result<AccessClaims, Refusal> {
        self.decode_access_for(token, now, None)
    }

    fn decode_access_for(
        &self,
        token: &str,
        now: i64,
        audience: Option<&str>,
    ) -> Result<AccessClaims, Refusal> {
        let v = self.keys.verify(token, ACCESS_TYP, now)?;
        let c: AccessClaims =
            serde_json::from_value(Value::Object(v.claims)).map_err(|_| Refusal::Claims)?;
        self.check_times(&c.iss, &c.aud, audience, c.exp, Some(c.nbf), c.iat, now)?;
        Ok(c)
    }

    /// Signature, header and time checks of a refresh token.
    pub fn decode_refresh(&self, token: &str, now: i64) -> Result<RefreshClaims, Refusal> {
        let v = self.keys.verify(token, REFRESH_TYP, now)?;
        let c: RefreshClaims =
            serde_json::from_value(Value::Object(v.claims)).map_err(|_| Refusal::Claims)?;
        self.check_times(&c.iss, &c.aud, Some(&self.issuer), c.exp, None, c.iat, now)?;
        Ok(c)
    }

    /// `expected_aud`: the audience the token must name; `None` takes any.
    #[allow(clippy::too_many_arguments)]
    fn check_times(
        &self,
        iss: &str,
        aud: &Audience,
        expected_aud: Option<&str>,
        exp: i64,
        nbf: Option<i64>,
        iat: i64,
        now: i64,
    ) -> Result<(), Refusal> {
        if iss != self.issuer {
            return Err(Refusal::Issuer);
        }
        if expected_aud.is_some_and(|expected| !aud.contains(expected)) {
            return Err(Refusal::Audience);
        }
        if time::is_expired(exp, now, LEEWAY_SECS) {
            return Err(Refusal::Expired);
        }
        if time::is_not_yet_valid(nbf.unwrap_or(iat), now, LEEWAY_SECS) {
            return Err(Refusal::NotYetValid);
        }
        Ok(())
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
            username: None,
            cnf: None,
            act: None,
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
            resources: vec![],
            auth_time: None,
            username: None,
            roles: None,
            user_version: None,
            cnf: None,
        }
    }

    #[test]
    fn key_ring_refusals_keep_their_labels() {
        assert_eq!(Refusal::from(TokenError::Malformed).as_label(), "malformed");
        assert_eq!(Refusal::from(TokenError::UnsupportedAlg).as_label(), "alg");
        assert_eq!(Refusal::from(TokenError::KeyMismatch).as_label(), "alg");
        assert_eq!(Refusal::from(TokenError::WrongType).as_label(), "typ");
        assert_eq!(Refusal::from(TokenError::UnknownKey).as_label(), "kid");
        assert_eq!(
            Refusal::from(TokenError::RevokedKey).as_label(),
            "key_revoked"
        );
        assert_eq!(
            Refusal::from(TokenError::BadSignature).as_label(),
            "signature"
        );
    }

    #[test]
    fn labels_are_distinct_and_descriptions_are_the_error_descriptions() {
        let all = [
            Refusal::Expired,
            Refusal::NotYetValid,
            Refusal::Issuer,
            Refusal::Audience,
            Refusal::Typ,
            Refusal::Alg,
            Refusal::Kid,
            Refusal::KeyRevoked,
            Refusal::Signature,
            Refusal::Claims,
            Refusal::Malformed,
            Refusal::Revoked,
            Refusal::SessionRevoked,
            Refusal::Missing,
            Refusal::UnknownUser,
            Refusal::OtherClient,
            Refusal::DpopBound,
            Refusal::NotDpopBound,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|r| r.as_label()).collect();
        assert_eq!(labels.len(), all.len());
        assert_eq!(Refusal::Expired.to_string(), "token expired");
        assert_eq!(Refusal::Revoked.description(), "token revoked");
        assert_eq!(Refusal::KeyRevoked.description(), "malformed token");
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
    fn the_audience_is_exactly_the_resources_or_the_default() {
        assert_eq!(
            Audience::for_resources(&[], "tokend"),
            Audience::One("tokend".into())
        );
        let one = vec!["https://a.example".to_string()];
        assert_eq!(
            Audience::for_resources(&one, "tokend"),
            Audience::One("https://a.example".into())
        );
        let two = vec!["https://a.example".to_string(), "https://b.example".into()];
        let aud = Audience::for_resources(&two, "tokend");
        assert_eq!(aud, Audience::Many(two.clone()));
        assert_eq!(aud.values(), ["https://a.example", "https://b.example"]);
        assert!(!aud.contains("tokend"));
    }

    #[test]
    fn act_and_resources_are_sent_only_when_there_are_some() {
        let mut a = access("read", &["user"]);
        assert!(!to_map(&a).unwrap().contains_key("act"));
        a.act = Some(Actor::new("gw", Some("gw".into())).after(Some(Actor::new("edge", None))));
        let m = to_map(&a).unwrap();
        assert_eq!(
            m["act"],
            serde_json::json!({"sub": "gw", "client_id": "gw", "act": {"sub": "edge"}})
        );
        let back: AccessClaims = serde_json::from_value(Value::Object(m)).unwrap();
        assert_eq!(back, a);
        let mut r = refresh("read");
        assert!(!to_map(&r).unwrap().contains_key("resources"));
        r.resources = vec!["https://a.example".into()];
        assert_eq!(
            to_map(&r).unwrap()["resources"],
            serde_json::json!(["https://a.example"])
        );
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
