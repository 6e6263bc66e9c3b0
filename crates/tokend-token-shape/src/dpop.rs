//! DPoP proofs (RFC 9449 §4): the checks a proof must pass before anything is bound to its key.
//! This module holds the rules that need nothing but the proof and the request; the replay cache
//! of `jti` and the server nonces belong to whoever checks (tokend's `Dpop` service, the
//! verifier's cache; docs/dpop.md).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::jwk::{PublicKey, PublicKeyError, CLIENT_ALGS};

/// The JOSE `typ` of a proof (RFC 9449 §4.2).
pub const PROOF_TYP: &str = "dpop+jwt";

/// How old a proof's `iat` may be, seconds (RFC 9449 §11.1: a short window limits what a
/// captured proof is worth; the `jti` cache remembers proofs for this long).
pub const MAX_AGE_SECS: i64 = 60;

/// How far in the future a proof's `iat` may be, seconds: clock skew of the client.
pub const MAX_SKEW_SECS: i64 = 5;

/// The longest proof read (a proof carries one public key; an RSA key of 8192 bits fits).
const MAX_PROOF_LEN: usize = 4096;

/// The longest `jti` kept in the replay cache.
const MAX_JTI_LEN: usize = 128;

/// Why a proof was refused: the `reason` label of `tokend_dpop_proofs_total` and the log field;
/// the description of the `invalid_dpop_proof` error (RFC 9449 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofRefusal {
    /// No proof where one is required: a DPoP-bound token or refresh family, a client with
    /// `dpop_bound_access_tokens`, an authorization code bound with `dpop_jkt`.
    Missing,
    /// Not a JWS in compact form with JSON header and claims.
    Malformed,
    /// Several `DPoP` headers (RFC 9449 §4.3 step 1).
    Multiple,
    /// `typ` is not `dpop+jwt`.
    Typ,
    /// `alg` is not one tokend accepts, or does not fit the key.
    Alg,
    /// `jwk` is missing, not a supported public key, or carries private members.
    Jwk,
    /// The signature does not verify with `jwk`.
    Signature,
    /// `htm` is not the request's method.
    Htm,
    /// `htu` is not the request's URI.
    Htu,
    /// `iat` is missing, too old or in the future.
    Iat,
    /// `jti` is missing or too long.
    Jti,
    /// `ath` is missing or is not the hash of the access token presented.
    Ath,
    /// The proof's key is not the one the token is bound to.
    Key,
    /// The `jti` was seen before.
    Replay,
    /// The proof lacks the server's current nonce (answered `use_dpop_nonce`).
    Nonce,
}

impl ProofRefusal {
    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            ProofRefusal::Missing => "missing",
            ProofRefusal::Malformed => "malformed",
            ProofRefusal::Multiple => "multiple",
            ProofRefusal::Typ => "typ",
            ProofRefusal::Alg => "alg",
            ProofRefusal::Jwk => "jwk",
            ProofRefusal::Signature => "signature",
            ProofRefusal::Htm => "htm",
            ProofRefusal::Htu => "htu",
            ProofRefusal::Iat => "iat",
            ProofRefusal::Jti => "jti",
            ProofRefusal::Ath => "ath",
            ProofRefusal::Key => "key",
            ProofRefusal::Replay => "replay",
            ProofRefusal::Nonce => "nonce",
        }
    }

    /// Every reason, for the metric's series.
    pub const ALL: [ProofRefusal; 15] = [
        ProofRefusal::Missing,
        ProofRefusal::Malformed,
        ProofRefusal::Multiple,
        ProofRefusal::Typ,
        ProofRefusal::Alg,
        ProofRefusal::Jwk,
        ProofRefusal::Signature,
        ProofRefusal::Htm,
        ProofRefusal::Htu,
        ProofRefusal::Iat,
        ProofRefusal::Jti,
        ProofRefusal::Ath,
        ProofRefusal::Key,
        ProofRefusal::Replay,
        ProofRefusal::Nonce,
    ];

    /// What the client is told.
    pub fn description(self) -> &'static str {
        match self {
            ProofRefusal::Missing => "a DPoP proof is required (the DPoP header)",
            ProofRefusal::Malformed => "the DPoP proof is not a signed JWT",
            ProofRefusal::Multiple => "send one DPoP proof",
            ProofRefusal::Typ => "the DPoP proof's typ must be dpop+jwt",
            ProofRefusal::Alg => {
                "the DPoP proof's alg must be ES256, EdDSA, RS256 or PS256 and fit its key"
            }
            ProofRefusal::Jwk => "the DPoP proof's jwk must be a supported public key",
            ProofRefusal::Signature => "the DPoP proof's signature does not verify",
            ProofRefusal::Htm => "the DPoP proof's htm is not this request's method",
            ProofRefusal::Htu => "the DPoP proof's htu is not this request's URI",
            ProofRefusal::Iat => "the DPoP proof's iat is missing or outside the accepted window",
            ProofRefusal::Jti => "the DPoP proof needs a jti of at most 128 characters",
            ProofRefusal::Ath => "the DPoP proof's ath does not match the access token",
            ProofRefusal::Key => "the DPoP proof is not signed by the key the token is bound to",
            ProofRefusal::Replay => "the DPoP proof was used before",
            ProofRefusal::Nonce => "the DPoP proof must carry the server's nonce",
        }
    }
}

impl std::fmt::Display for ProofRefusal {
    /// The description (what `error_description` carries).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.description())
    }
}

/// The name of the request header that carries a proof (RFC 9449 §4.1).
pub const DPOP_HEADER: &str = "dpop";

/// The name of the response header that carries a server nonce (RFC 9449 §8.1).
pub const NONCE_HEADER: &str = "dpop-nonce";

/// The request's proof: `None` when it sent no `DPoP` header, [`ProofRefusal::Multiple`] when
/// it sent several (RFC 9449 §4.3 step 1), [`ProofRefusal::Malformed`] when the value is not
/// text.
pub fn proof_header(headers: &http::HeaderMap) -> Result<Option<&str>, ProofRefusal> {
    let mut values = headers.get_all(DPOP_HEADER).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ProofRefusal::Multiple);
    }
    first
        .to_str()
        .map(|v| Some(v.trim()))
        .map_err(|_| ProofRefusal::Malformed)
}

/// The request a proof must fit.
#[derive(Debug, Clone, Copy)]
pub struct ProofContext<'a> {
    /// The request's method.
    pub method: &'a str,
    /// The URI of the request as the client addressed it: the issuer's origin and the path,
    /// without query or fragment (RFC 9449 §4.3 step 9).
    pub uri: &'a str,
    /// The access token presented with the proof, when there is one (`ath`, RFC 9449 §4.3
    /// step 11).
    pub access_token: Option<&'a str>,
    /// Unix seconds now.
    pub now: i64,
}

/// A proof that passed the checks of RFC 9449 §4.3 that need no store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedProof {
    /// RFC 7638 thumbprint of the proof's key: `cnf.jkt` of the tokens bound to it.
    pub jkt: String,
    /// To be accepted once.
    pub jti: String,
    /// Unix seconds.
    pub iat: i64,
    /// The nonce the proof carries, if any.
    pub nonce: Option<String>,
}

fn object(part: &str) -> Result<Map<String, Value>, ProofRefusal> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| ProofRefusal::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ProofRefusal::Malformed),
    }
}

/// `uri` without query and fragment, its scheme and host lower-cased and a default port left
/// out (RFC 3986 §6.2.2–§6.2.3, as RFC 9449 §4.3 step 9 asks); `None` if it is not a URI.
fn normalized(uri: &str) -> Option<String> {
    let url = url::Url::parse(uri).ok()?;
    let host = url.host_str()?;
    let port = match url.port() {
        Some(p) => format!(":{p}"),
        None => String::new(),
    };
    Some(format!("{}://{host}{port}{}", url.scheme(), url.path()))
}

/// The base64url SHA-256 of an access token: `ath` (RFC 9449 §4.2).
pub fn ath_of(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        access_token.as_bytes(),
    ))
}

/// Checks one proof against the request (RFC 9449 §4.3 steps 2–11, except the replay and nonce
/// checks, which need the store).
pub fn check_proof(proof: &str, ctx: &ProofContext<'_>) -> Result<CheckedProof, ProofRefusal> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofRefusal::Malformed);
    }
    let mut parts = proof.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofRefusal::Malformed);
    };
    let header = object(h)?;
    let claims = object(p)?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| ProofRefusal::Malformed)?;

    if header.get("typ").and_then(Value::as_str) != Some(PROOF_TYP) {
        return Err(ProofRefusal::Typ);
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .filter(|a| CLIENT_ALGS.contains(a))
        .ok_or(ProofRefusal::Alg)?;
    let jwk = header
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or(ProofRefusal::Jwk)?;
    let key = PublicKey::from_jwk(jwk).map_err(|_| ProofRefusal::Jwk)?;
    let signing_input_len = h.len() + 1 + p.len();
    let signing_input = proof
        .get(..signing_input_len)
        .ok_or(ProofRefusal::Malformed)?;
    key.verify(alg, signing_input.as_bytes(), &signature)
        .map_err(|e| match e {
            PublicKeyError::Alg => ProofRefusal::Alg,
            PublicKeyError::Signature => ProofRefusal::Signature,
            PublicKeyError::Unsupported | PublicKeyError::Private => ProofRefusal::Jwk,
        })?;

    if claims.get("htm").and_then(Value::as_str) != Some(ctx.method) {
        return Err(ProofRefusal::Htm);
    }
    let htu = claims
        .get("htu")
        .and_then(Value::as_str)
        .and_then(normalized)
        .ok_or(ProofRefusal::Htu)?;
    if Some(htu) != normalized(ctx.uri) {
        return Err(ProofRefusal::Htu);
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .filter(|iat| *iat >= ctx.now - MAX_AGE_SECS && *iat <= ctx.now + MAX_SKEW_SECS)
        .ok_or(ProofRefusal::Iat)?;
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
        .ok_or(ProofRefusal::Jti)?;
    if let Some(token) = ctx.access_token {
        // `ath` is a hash of what the caller presented, not a secret: a plain comparison.
        if claims.get("ath").and_then(Value::as_str) != Some(ath_of(token).as_str()) {
            return Err(ProofRefusal::Ath);
        }
    }
    let nonce = claims
        .get("nonce")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(CheckedProof {
        jkt: key.thumbprint(),
        jti: jti.to_string(),
        iat,
        nonce,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};
    use serde_json::json;

    const URI: &str = "https://id.example.com/oauth/token";
    const NOW: i64 = 1_800_000_000;

    struct Client {
        pair: Ed25519KeyPair,
    }

    impl Client {
        fn new() -> Client {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
            Client {
                pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
            }
        }

        fn jwk(&self) -> Value {
            json!({"kty": "OKP", "crv": "Ed25519",
                   "x": URL_SAFE_NO_PAD.encode(self.pair.public_key().as_ref())})
        }

        fn sign(&self, header: Value, claims: Value) -> String {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let sig = self.pair.sign(input.as_bytes());
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        }

        fn proof(&self, claims: Value) -> String {
            self.sign(
                json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": self.jwk()}),
                claims,
            )
        }
    }

    fn claims() -> Value {
        json!({"jti": "j-1", "htm": "POST", "htu": URI, "iat": NOW})
    }

    fn ctx() -> ProofContext<'static> {
        ProofContext {
            method: "POST",
            uri: URI,
            access_token: None,
            now: NOW,
        }
    }

    fn with(mut v: Value, k: &str, x: Value) -> Value {
        v[k] = x;
        v
    }

    #[test]
    fn a_good_proof_yields_its_key_thumbprint_and_jti() {
        let c = Client::new();
        let checked = check_proof(&c.proof(claims()), &ctx()).unwrap();
        let key = PublicKey::from_jwk(c.jwk().as_object().unwrap()).unwrap();
        assert_eq!(checked.jkt, key.thumbprint());
        assert_eq!(checked.jti, "j-1");
        assert_eq!(checked.iat, NOW);
        assert_eq!(checked.nonce, None);
    }

    #[test]
    fn htu_compares_normalized_and_ignores_query_and_fragment() {
        let c = Client::new();
        for htu in [
            "https://ID.example.com/oauth/token",
            "https://id.example.com:443/oauth/token",
            "https://id.example.com/oauth/token?x=1#f",
        ] {
            let proof = c.proof(with(claims(), "htu", json!(htu)));
            assert!(check_proof(&proof, &ctx()).is_ok(), "{htu}");
        }
        for htu in [
            "http://id.example.com/oauth/token",
            "https://id.example.com:8443/oauth/token",
            "https://id.example.com/oauth/token/",
            "https://other.example.com/oauth/token",
            "/oauth/token",
        ] {
            let proof = c.proof(with(claims(), "htu", json!(htu)));
            assert_eq!(check_proof(&proof, &ctx()), Err(ProofRefusal::Htu), "{htu}");
        }
    }

    #[test]
    fn each_rule_refuses_with_its_own_reason() {
        let c = Client::new();
        let other = Client::new();
        let cases: Vec<(String, ProofRefusal)> = vec![
            ("a.b".into(), ProofRefusal::Malformed),
            ("x".repeat(5000), ProofRefusal::Malformed),
            (
                c.sign(
                    json!({"typ": "JWT", "alg": "EdDSA", "jwk": c.jwk()}),
                    claims(),
                ),
                ProofRefusal::Typ,
            ),
            (
                c.sign(
                    json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": c.jwk()}),
                    claims(),
                ),
                ProofRefusal::Alg,
            ),
            (
                c.sign(
                    json!({"typ": "dpop+jwt", "alg": "none", "jwk": c.jwk()}),
                    claims(),
                ),
                ProofRefusal::Alg,
            ),
            (
                c.sign(
                    json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": c.jwk()}),
                    claims(),
                ),
                ProofRefusal::Alg,
            ),
            (
                c.sign(json!({"typ": "dpop+jwt", "alg": "EdDSA"}), claims()),
                ProofRefusal::Jwk,
            ),
            (
                c.sign(
                    json!({"typ": "dpop+jwt", "alg": "EdDSA",
                           "jwk": with(c.jwk(), "d", json!("AAAA"))}),
                    claims(),
                ),
                ProofRefusal::Jwk,
            ),
            (
                c.sign(
                    json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": other.jwk()}),
                    claims(),
                ),
                ProofRefusal::Signature,
            ),
            (
                c.proof(with(claims(), "htm", json!("GET"))),
                ProofRefusal::Htm,
            ),
            (
                c.proof(with(claims(), "iat", json!(NOW - 61))),
                ProofRefusal::Iat,
            ),
            (
                c.proof(with(claims(), "iat", json!(NOW + 6))),
                ProofRefusal::Iat,
            ),
            (
                c.proof(with(claims(), "iat", json!("now"))),
                ProofRefusal::Iat,
            ),
            (c.proof(with(claims(), "jti", json!(""))), ProofRefusal::Jti),
            (
                c.proof(with(claims(), "jti", json!("j".repeat(129)))),
                ProofRefusal::Jti,
            ),
        ];
        for (proof, reason) in cases {
            assert_eq!(
                check_proof(&proof, &ctx()),
                Err(reason),
                "{}",
                reason.as_str()
            );
        }
    }

    #[test]
    fn ath_must_be_the_hash_of_the_access_token_presented() {
        let c = Client::new();
        let token = "eyJ.access.token";
        let ctx = ProofContext {
            method: "GET",
            uri: "https://id.example.com/auth/verify",
            access_token: Some(token),
            now: NOW,
        };
        let base = json!({"jti": "j", "htm": "GET", "htu": ctx.uri, "iat": NOW});
        assert_eq!(
            check_proof(&c.proof(base.clone()), &ctx),
            Err(ProofRefusal::Ath)
        );
        let wrong = with(base.clone(), "ath", json!(ath_of("another")));
        assert_eq!(check_proof(&c.proof(wrong), &ctx), Err(ProofRefusal::Ath));
        let right = with(base, "ath", json!(ath_of(token)));
        assert!(check_proof(&c.proof(right), &ctx).is_ok());
    }

    #[test]
    fn every_reason_has_a_distinct_label() {
        let mut labels: Vec<_> = ProofRefusal::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ProofRefusal::ALL.len());
    }
}
