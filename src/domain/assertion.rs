//! Client assertions: `private_key_jwt` client authentication (RFC 7523 §2.2 and §3, RFC 7521
//! §4.2, OpenID Connect Core §9; docs/private_key_jwt.md). A client signs a short JWT with one
//! of its keys and sends it as `client_assertion` with `client_assertion_type`
//! `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`, at every endpoint that
//! authenticates clients. The `ClientAssertions` service checks the assertion against the
//! client's keys ([`ClientKeys`]), its claims against the rules of docs/private_key_jwt.md, and
//! spends its `jti` once in the [`ReplayStore`] that DPoP proofs use too.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::digest;
use serde_json::{Map, Value};
use tokend_token_shape::jwk::CLIENT_ALGS;
use tokend_token_shape::time::{is_expired, is_not_yet_valid, LEEWAY_SECS};

use super::client_keys::{ClientKeys, KeyMiss};
use super::clients::is_client_id;
use super::oauth::{OAuthError, TOKEN_PATH};
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::store::{ClientRecord, ReplayStore};

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How far ahead an assertion's `exp` may be, seconds (plus the leeway): an assertion is a
/// credential of the moment, and its `jti` is remembered until it expires.
pub(crate) const MAX_LIFETIME_SECS: i64 = 3600;

/// The longest assertion read (an RSA-4096 signature and a few claims fit many times over).
const MAX_ASSERTION_LEN: usize = 8192;

/// The longest `jti` accepted.
const MAX_JTI_LEN: usize = 256;

/// Why an assertion was refused: the `reason` label of `tokend_client_assertions_total` and
/// the log field. Every refusal is `invalid_client` (RFC 6749 §5.2, RFC 7521 §4.2.1) with a
/// description of what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AssertionRefusal {
    /// `client_assertion_type` missing or not `…:jwt-bearer`.
    Type,
    /// Not a compact JWS with a JSON header and claims, too long, a `crit` header, or no
    /// `client_assertion`.
    Malformed,
    /// No such client, or the `client_id` sent is not the assertion's client.
    Client,
    /// The client does not authenticate with `private_key_jwt`, or a `private_key_jwt` client
    /// sent something else (a secret, nothing).
    Method,
    /// `alg` is not one tokend accepts (never `none` or HMAC), or not the client's
    /// `token_endpoint_auth_signing_alg`, or not its key's.
    Alg,
    /// No key of the client has the assertion's `kid`.
    Kid,
    /// No `kid`, and no key or several keys of the client fit the assertion.
    Key,
    /// The client's `jwks_uri` could not be had.
    Jwks,
    /// The signature does not verify.
    Signature,
    /// `iss` and `sub` are not both the client id.
    Iss,
    /// `aud` does not name this server.
    Aud,
    /// `exp` missing, passed, or more than 60 minutes ahead.
    Exp,
    /// `nbf` or `iat` in the future.
    Iat,
    /// `jti` missing or too long.
    Jti,
    /// The `jti` was used before.
    Replay,
}

impl AssertionRefusal {
    /// Every reason, for the metric's series.
    pub(crate) const ALL: [AssertionRefusal; 15] = [
        AssertionRefusal::Type,
        AssertionRefusal::Malformed,
        AssertionRefusal::Client,
        AssertionRefusal::Method,
        AssertionRefusal::Alg,
        AssertionRefusal::Kid,
        AssertionRefusal::Key,
        AssertionRefusal::Jwks,
        AssertionRefusal::Signature,
        AssertionRefusal::Iss,
        AssertionRefusal::Aud,
        AssertionRefusal::Exp,
        AssertionRefusal::Iat,
        AssertionRefusal::Jti,
        AssertionRefusal::Replay,
    ];

    /// The metric label and log field.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AssertionRefusal::Type => "type",
            AssertionRefusal::Malformed => "malformed",
            AssertionRefusal::Client => "client",
            AssertionRefusal::Method => "method",
            AssertionRefusal::Alg => "alg",
            AssertionRefusal::Kid => "kid",
            AssertionRefusal::Key => "key",
            AssertionRefusal::Jwks => "jwks",
            AssertionRefusal::Signature => "signature",
            AssertionRefusal::Iss => "iss",
            AssertionRefusal::Aud => "aud",
            AssertionRefusal::Exp => "exp",
            AssertionRefusal::Iat => "iat",
            AssertionRefusal::Jti => "jti",
            AssertionRefusal::Replay => "replay",
        }
    }
}

/// What a request presented for `private_key_jwt` (RFC 7521 §4.2), as sent.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct PresentedAssertion {
    /// The `client_id` form parameter, when sent: it must be the assertion's client.
    pub(crate) client_id: Option<String>,
    pub(crate) assertion_type: Option<String>,
    pub(crate) assertion: Option<String>,
}

impl std::fmt::Debug for PresentedAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresentedAssertion")
            .field("client_id", &self.client_id)
            .field("assertion_type", &self.assertion_type)
            .field("assertion", &self.assertion.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// An assertion split into its parts, not verified yet.
pub(crate) struct ParsedAssertion {
    /// The client it is for: the `client_id` sent, else its `sub` (or `iss`).
    pub(crate) client_id: String,
    header: Map<String, Value>,
    claims: Map<String, Value>,
    /// `header.payload`, what the signature covers (RFC 7515 §5.2).
    signing_input: String,
    signature: Vec<u8>,
}

fn json_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// A NumericDate (RFC 7519 §2): seconds, possibly with a fraction.
fn numeric_date(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && f.abs() < 1e15)
            .map(|f| f.trunc() as i64)
    })
}

/// The `ClientAssertions` service: checks `private_key_jwt` assertions and spends their `jti`.
pub(crate) struct ClientAssertions {
    keys: ClientKeys,
    replay: Arc<dyn ReplayStore>,
    issuer: String,
    clock: SharedClock,
    metrics: Arc<Metrics>,
}

impl ClientAssertions {
    pub(crate) fn new(
        keys: ClientKeys,
        replay: Arc<dyn ReplayStore>,
        issuer: String,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> ClientAssertions {
        // Every series from the start, so that a dashboard's rate of refusals is 0, not absent.
        metrics
            .client_assertions
            .with_label_values(&["accepted", "none"])
            .inc_by(0);
        for r in AssertionRefusal::ALL {
            metrics
                .client_assertions
                .with_label_values(&["refused", r.as_str()])
                .inc_by(0);
        }
        ClientAssertions {
            keys,
            replay,
            issuer,
            clock,
            metrics,
        }
    }

    /// Counts and logs a refusal; the `invalid_client` error that says what was wrong (never
    /// the assertion itself).
    pub(crate) fn refuse(
        &self,
        reason: AssertionRefusal,
        description: impl Into<String>,
    ) -> OAuthError {
        self.metrics
            .client_assertions
            .with_label_values(&["refused", reason.as_str()])
            .inc();
        tracing::info!(reason = reason.as_str(), "client assertion refused");
        OAuthError::InvalidClient(description.into())
    }

    /// The parameters' shape (RFC 7521 §4.2) and the assertion's parts; which client it is
    /// for. Nothing is verified yet.
    pub(crate) fn parse(
        &self,
        presented: &PresentedAssertion,
    ) -> Result<ParsedAssertion, OAuthError> {
        let assertion = match (&presented.assertion_type, &presented.assertion) {
            (Some(t), Some(a)) if t == JWT_BEARER => a,
            (Some(_), Some(_)) => {
                return Err(self.refuse(
                    AssertionRefusal::Type,
                    format!("client_assertion_type must be {JWT_BEARER}"),
                ))
            }
            (None, _) => {
                return Err(self.refuse(
                    AssertionRefusal::Type,
                    format!("client_assertion needs client_assertion_type={JWT_BEARER}"),
                ))
            }
            (Some(_), None) => {
                return Err(self.refuse(
                    AssertionRefusal::Malformed,
                    "client_assertion_type without client_assertion",
                ))
            }
        };
        if assertion.len() > MAX_ASSERTION_LEN {
            return Err(self.refuse(
                AssertionRefusal::Malformed,
                format!("the client assertion is longer than {MAX_ASSERTION_LEN} characters"),
            ));
        }
        let malformed = || {
            self.refuse(
                AssertionRefusal::Malformed,
                "the client assertion is not a signed JWT (a compact JWS of three base64url \
                 parts with a JSON header and JSON claims)",
            )
        };
        let mut parts = assertion.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let (Some(header), Some(claims)) = (json_object(h), json_object(p)) else {
            return Err(malformed());
        };
        let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| malformed())?;
        if header.contains_key("crit") {
            return Err(self.refuse(
                AssertionRefusal::Malformed,
                "the client assertion's header has crit members, which tokend does not \
                 understand (RFC 7515 §4.1.11)",
            ));
        }
        let named = claims
            .get("sub")
            .or_else(|| claims.get("iss"))
            .and_then(Value::as_str);
        let client_id = match (&presented.client_id, named) {
            (Some(sent), Some(named)) if sent != named => {
                return Err(self.refuse(
                    AssertionRefusal::Client,
                    "client_id is not the client the assertion is for (its sub)",
                ))
            }
            (Some(sent), _) => sent.clone(),
            (None, Some(named)) if is_client_id(named) => named.to_string(),
            (None, _) => {
                return Err(self.refuse(
                    AssertionRefusal::Iss,
                    "the client assertion names no client: iss and sub must be the client id",
                ))
            }
        };
        Ok(ParsedAssertion {
            client_id,
            header,
            claims,
            signing_input: format!("{h}.{p}"),
            signature,
        })
    }

    /// Checks `assertion` as the authentication of `client` (a `private_key_jwt` client) at
    /// the endpoint `endpoint_path` (RFC 7523 §3; docs/private_key_jwt.md, "The checks"), and
    /// spends its `jti`. A store that cannot answer fails closed.
    pub(crate) async fn verify(
        &self,
        client: &ClientRecord,
        assertion: &ParsedAssertion,
        endpoint_path: &str,
    ) -> Result<(), OAuthError> {
        let header = &assertion.header;
        let claims = &assertion.claims;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .filter(|a| CLIENT_ALGS.contains(a))
            .ok_or_else(|| {
                self.refuse(
                    AssertionRefusal::Alg,
                    "the client assertion's alg must be ES256, EdDSA, RS256 or PS256 (none and \
                     HMAC algorithms are refused)",
                )
            })?;
        if let Some(wanted) = &client.meta.token_endpoint_auth_signing_alg {
            if wanted != alg {
                return Err(self.refuse(
                    AssertionRefusal::Alg,
                    format!(
                        "this client signs its assertions with {wanted} \
                         (token_endpoint_auth_signing_alg)"
                    ),
                ));
            }
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => {
                return Err(self.refuse(
                    AssertionRefusal::Malformed,
                    "the client assertion's kid must be a string",
                ))
            }
        };
        let key = self
            .keys
            .key_for(client, kid, alg)
            .await
            .map_err(|miss| match miss {
                KeyMiss::UnknownKid => self.refuse(
                    AssertionRefusal::Kid,
                    "no key of the client has the client assertion's kid",
                ),
                KeyMiss::Alg => self.refuse(
                    AssertionRefusal::Alg,
                    "the client's key with this kid is not for the client assertion's alg",
                ),
                KeyMiss::NoKey => self.refuse(
                    AssertionRefusal::Key,
                    "no key of the client fits the client assertion's alg",
                ),
                KeyMiss::Ambiguous => self.refuse(
                    AssertionRefusal::Key,
                    "several keys of the client fit the client assertion: name one with kid",
                ),
                KeyMiss::Unavailable(why) => self.refuse(
                    AssertionRefusal::Jwks,
                    format!("the client's keys could not be read: {why}"),
                ),
            })?;
        key.verify(
            alg,
            assertion.signing_input.as_bytes(),
            &assertion.signature,
        )
        .map_err(|_| {
            self.refuse(
                AssertionRefusal::Signature,
                "the client assertion's signature does not verify with the client's key",
            )
        })?;

        // RFC 7523 §3 items 1 and 2; OpenID Connect Core §9: both are the client id.
        let id = client.client_id.as_str();
        let claim = |name: &str| claims.get(name).and_then(Value::as_str);
        if claim("iss") != Some(id) || claim("sub") != Some(id) {
            return Err(self.refuse(
                AssertionRefusal::Iss,
                "iss and sub of the client assertion must both be the client id",
            ));
        }
        // RFC 7523 §3 item 3: the audience is this server, named by its issuer, its token
        // endpoint, or the endpoint the assertion is sent to (docs/private_key_jwt.md, "aud").
        let accepted = [
            self.issuer.clone(),
            format!("{}{TOKEN_PATH}", self.issuer),
            format!("{}{endpoint_path}", self.issuer),
        ];
        let names_us = |v: &Value| v.as_str().is_some_and(|a| accepted.iter().any(|x| x == a));
        let aud_ok = match claims.get("aud") {
            Some(Value::Array(list)) => list.iter().any(names_us),
            Some(v) => names_us(v),
            None => false,
        };
        if !aud_ok {
            return Err(self.refuse(
                AssertionRefusal::Aud,
                format!(
                    "the client assertion's aud must name this server: its issuer ({}) or its \
                     token endpoint ({}{TOKEN_PATH})",
                    self.issuer, self.issuer
                ),
            ));
        }
        // RFC 7523 §3 items 4 and 5, with the leeway of every token check (docs/tokens.md).
        let now = self.clock.now();
        let exp = claims.get("exp").and_then(numeric_date).ok_or_else(|| {
            self.refuse(
                AssertionRefusal::Exp,
                "the client assertion needs exp (a NumericDate)",
            )
        })?;
        if is_expired(exp, now, LEEWAY_SECS) {
            return Err(self.refuse(AssertionRefusal::Exp, "the client assertion has expired"));
        }
        if exp > now.saturating_add(MAX_LIFETIME_SECS + LEEWAY_SECS) {
            return Err(self.refuse(
                AssertionRefusal::Exp,
                "the client assertion's exp is more than 60 minutes ahead",
            ));
        }
        for name in ["nbf", "iat"] {
            let Some(v) = claims.get(name) else {
                continue;
            };
            let when = numeric_date(v).ok_or_else(|| {
                self.refuse(
                    AssertionRefusal::Iat,
                    format!("the client assertion's {name} must be a NumericDate"),
                )
            })?;
            if is_not_yet_valid(when, now, LEEWAY_SECS) {
                return Err(self.refuse(
                    AssertionRefusal::Iat,
                    format!("the client assertion's {name} is in the future"),
                ));
            }
        }
        // RFC 7523 §3 item 7: a jti, accepted once.
        let jti = claim("jti")
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
            .ok_or_else(|| {
                self.refuse(
                    AssertionRefusal::Jti,
                    format!("the client assertion needs a jti of 1 to {MAX_JTI_LEN} characters"),
                )
            })?;
        if !self.spend(id, jti, exp, now).await? {
            return Err(self.refuse(
                AssertionRefusal::Replay,
                "the client assertion was used before: make a new one, with a new jti, for \
                 each request",
            ));
        }
        self.metrics
            .client_assertions
            .with_label_values(&["accepted", "none"])
            .inc();
        Ok(())
    }

    /// Records the use of `jti` by `client_id` until the assertion expires (plus the leeway, as
    /// long as it could be accepted), under `assertion:` + base64url(SHA-256(client id "\n"
    /// jti)): clients cannot choose store keys, and two clients' `jti`s never collide
    /// (docs/private_key_jwt.md, "Replay"). True for the first use.
    async fn spend(
        &self,
        client_id: &str,
        jti: &str,
        exp: i64,
        now: i64,
    ) -> Result<bool, OAuthError> {
        let mut material = Vec::with_capacity(client_id.len() + 1 + jti.len());
        material.extend_from_slice(client_id.as_bytes());
        material.push(b'\n');
        material.extend_from_slice(jti.as_bytes());
        let key = format!(
            "assertion:{}",
            URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &material))
        );
        let ttl_secs = exp.saturating_add(LEEWAY_SECS).saturating_sub(now).max(1);
        Ok(self
            .replay
            .first_use(&key, ttl_secs.saturating_mul(1000))
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_dates_may_have_a_fraction() {
        assert_eq!(
            numeric_date(&serde_json::json!(1_700_000_000)),
            Some(1_700_000_000)
        );
        assert_eq!(
            numeric_date(&serde_json::json!(1_700_000_000.9)),
            Some(1_700_000_000)
        );
        assert_eq!(numeric_date(&serde_json::json!("1700000000")), None);
        assert_eq!(numeric_date(&serde_json::json!(1e300)), None);
    }

    #[test]
    fn every_refusal_has_its_own_label() {
        let labels: std::collections::BTreeSet<&str> =
            AssertionRefusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), AssertionRefusal::ALL.len());
        assert!(!labels.contains("none"), "none is the accepted series");
    }

    #[test]
    fn a_presented_assertion_never_prints_itself() {
        let p = PresentedAssertion {
            client_id: Some("svc".into()),
            assertion_type: Some(JWT_BEARER.into()),
            assertion: Some("eyJhbGciOi.secret.sig".into()),
        };
        let printed = format!("{p:?}");
        assert!(
            !printed.contains("secret") && printed.contains("<redacted>"),
            "{printed}"
        );
    }
}
