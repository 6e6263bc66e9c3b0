//! DPoP (RFC 9449; docs/dpop.md), in both modes: proofs at the token endpoint bind every
//! grant's access token (`cnf.jkt`, `token_type` `DPoP`), a public client's family is bound and
//! refreshed only with its key, protected routes take `Authorization: DPoP` with a proof that
//! carries `ath`, each proof is accepted once (also when sent many times at once), every
//! refusal has its reason, server nonces when configured, codes bound with `dpop_jkt`, and
//! introspection, discovery, registration and metrics say so.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::future::join_all;
use reqwest::{Response, StatusCode};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use tokend::clock::Clock;

use crate::authorize::{
    location, query_of, spawn_with_clients, App, CHALLENGE, PASSWORD, REDIRECT, VERIFIER,
};
use crate::helpers::*;
use crate::in_both_modes;

in_both_modes!(
    every_grant_binds_its_access_token_to_the_proof_key,
    a_bound_token_is_accepted_only_with_a_proof_of_its_key,
    every_proof_refusal_at_the_token_endpoint_is_invalid_dpop_proof,
    parallel_replays_of_one_proof_let_exactly_one_through,
    a_public_family_is_bound_and_refreshes_only_with_its_key,
    a_confidential_clients_refresh_token_is_not_bound,
    the_seed_routes_take_a_proof_the_same_way,
    a_dpop_bound_client_must_send_a_proof,
    nonces_are_asked_for_handed_out_and_expire_when_configured,
    a_code_bound_with_dpop_jkt_is_redeemed_only_with_that_key,
    a_pushed_request_with_a_proof_binds_its_code,
    the_device_grant_binds_its_tokens,
    introspection_shows_the_binding,
    discovery_registration_and_metrics_know_dpop,
);

const SECRET: &str = "dpop-secret-0123456789abcdef";
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const NATIVE_REDIRECT: &str = "http://127.0.0.1/callback";
/// `TOKEND_ISSUER` of the test apps: proofs name it in `htu`.
const ISSUER: &str = "http://tokend.test";
const ALGS: &str = "ES256 EdDSA RS256 PS256";

fn clients() -> Value {
    json!([
        {"client_id": "app", "grant_types": ["password", "refresh_token"], "scopes": ["read"],
         "client_name": "Example App"},
        {"client_id": "web", "client_secret": SECRET,
         "grant_types": ["password", "refresh_token"], "scopes": ["read"],
         "client_name": "Example Web App"},
        {"client_id": "svc", "client_secret": SECRET, "grant_types": ["client_credentials"],
         "scopes": ["read"]},
        {"client_id": "strict", "grant_types": ["password", "refresh_token"],
         "dpop_bound_access_tokens": true, "client_name": "Example Strict App"},
        {"client_id": "native", "grant_types": ["authorization_code", "refresh_token"],
         "scopes": ["read"], "redirect_uris": [NATIVE_REDIRECT], "first_party": true,
         "client_name": "Example CLI"},
        {"client_id": "pushy", "client_secret": SECRET, "grant_types": ["authorization_code"],
         "redirect_uris": [REDIRECT], "first_party": true, "client_name": "Example Pushy App"},
        {"client_id": "tv", "grant_types": [DEVICE_GRANT, "refresh_token"], "scopes": ["read"],
         "first_party": true, "client_name": "Example TV"},
    ])
}

async fn spawn(mode: Mode) -> App {
    spawn_with_clients(mode, &clients()).await
}

// ---------------------------------------------------------------------------------------------
// A client's DPoP key and its proofs
// ---------------------------------------------------------------------------------------------

enum Pair {
    Ed(Ed25519KeyPair),
    Es(EcdsaKeyPair),
}

/// A DPoP key a client holds, and the proofs it signs (RFC 9449 §4.2).
pub(crate) struct DpopKey {
    pair: Pair,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl DpopKey {
    /// An Ed25519 key (`EdDSA`).
    pub(crate) fn ed25519() -> DpopKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        DpopKey {
            pair: Pair::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()),
        }
    }

    /// A P-256 key (`ES256`), what most client libraries make.
    pub(crate) fn p256() -> DpopKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        DpopKey {
            pair: Pair::Es(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap(),
            ),
        }
    }

    pub(crate) fn alg(&self) -> &'static str {
        match self.pair {
            Pair::Ed(_) => "EdDSA",
            Pair::Es(_) => "ES256",
        }
    }

    /// The public JWK.
    pub(crate) fn jwk(&self) -> Value {
        match &self.pair {
            Pair::Ed(p) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(p.public_key().as_ref())})
            }
            Pair::Es(p) => {
                let point = p.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
        }
    }

    /// The RFC 7638 thumbprint, computed here independently of tokend: the required members in
    /// lexicographic order, no whitespace, SHA-256, base64url.
    pub(crate) fn jkt(&self) -> String {
        let jwk = self.jwk();
        let canonical = match &self.pair {
            Pair::Ed(_) => format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                jwk["x"].as_str().unwrap()
            ),
            Pair::Es(_) => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                jwk["x"].as_str().unwrap(),
                jwk["y"].as_str().unwrap()
            ),
        };
        b64(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// A JWS over `header` and `claims` with this key.
    pub(crate) fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = match &self.pair {
            Pair::Ed(p) => p.sign(input.as_bytes()).as_ref().to_vec(),
            Pair::Es(p) => p
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", b64(&sig))
    }

    /// The proof header of this key.
    pub(crate) fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk()})
    }

    /// A fresh proof for `method` on `ISSUER` + `path` at `now` (Unix seconds), with the
    /// claims of `extra` added or replaced (`ath`, `nonce`, a wrong `htm`...).
    pub(crate) fn proof_at(&self, method: &str, url: &str, now: i64, extra: &Value) -> String {
        let mut claims = json!({
            "jti": uuid::Uuid::new_v4().to_string(),
            "htm": method,
            "htu": url,
            "iat": now,
        });
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        self.sign(&self.header(), &claims)
    }
}

/// `ath` (RFC 9449 §4.2), computed here.
pub(crate) fn ath(token: &str) -> String {
    b64(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

impl TestApp {
    /// A proof of `key` for `method` `path` now by this app's clock.
    fn proof(&self, key: &DpopKey, method: &str, path: &str) -> String {
        self.proof_with(key, method, path, &json!({}))
    }

    fn proof_with(&self, key: &DpopKey, method: &str, path: &str, extra: &Value) -> String {
        key.proof_at(method, &format!("{ISSUER}{path}"), self.clock.now(), extra)
    }

    /// A proof for a protected route, carrying the token's `ath`.
    fn resource_proof(&self, key: &DpopKey, method: &str, path: &str, token: &str) -> String {
        self.proof_with(key, method, path, &json!({"ath": ath(token)}))
    }

    /// `POST /oauth/token` with `form`, the proof when given, and HTTP Basic for
    /// `web`/`svc`/`pushy`.
    async fn token_with_proof(&self, form: &[(&str, &str)], proof: Option<&str>) -> Response {
        let client = form
            .iter()
            .find(|(k, _)| *k == "client_id")
            .map(|(_, v)| *v)
            .unwrap_or_default();
        let mut req = self.http.post(self.url("/oauth/token"));
        let form: Vec<(&str, &str)> = if ["web", "svc", "pushy"].contains(&client) {
            req = req.basic_auth(client, Some(SECRET));
            form.iter()
                .copied()
                .filter(|(k, _)| *k != "client_id")
                .collect()
        } else {
            form.to_vec()
        };
        if let Some(p) = proof {
            req = req.header("DPoP", p);
        }
        req.form(&form).send().await.unwrap()
    }

    /// A password grant for `ada` by `client`, with a proof of `key` when given.
    async fn password_grant(&self, client: &str, key: Option<&DpopKey>) -> Response {
        let proof = key.map(|k| self.proof(k, "POST", "/oauth/token"));
        self.token_with_proof(
            &[
                ("grant_type", "password"),
                ("client_id", client),
                ("username", "ada"),
                ("password", PASSWORD),
            ],
            proof.as_deref(),
        )
        .await
    }

    async fn refresh_grant(&self, client: &str, refresh: &str, key: Option<&DpopKey>) -> Response {
        let proof = key.map(|k| self.proof(k, "POST", "/oauth/token"));
        self.token_with_proof(
            &[
                ("grant_type", "refresh_token"),
                ("client_id", client),
                ("refresh_token", refresh),
            ],
            proof.as_deref(),
        )
        .await
    }

    /// `GET path` with `Authorization: <scheme> <token>` and a `DPoP` header when given.
    async fn get_with(
        &self,
        path: &str,
        scheme: &str,
        token: &str,
        proof: Option<&str>,
    ) -> Response {
        let mut req = self
            .http
            .get(self.url(path))
            .header("authorization", format!("{scheme} {token}"));
        if let Some(p) = proof {
            req = req.header("DPoP", p);
        }
        req.send().await.unwrap()
    }

    /// `GET path` with a bound token and a fresh proof of `key` for it.
    async fn get_dpop(&self, path: &str, token: &str, key: &DpopKey) -> Response {
        let proof = self.resource_proof(key, "GET", path, token);
        self.get_with(path, "DPoP", token, Some(&proof)).await
    }

    /// `tokend_dpop_proofs_total{result,reason}`.
    async fn proofs_counted(&self, result: &str, reason: &str) -> u64 {
        let text = self.metrics_text().await;
        let series = format!("tokend_dpop_proofs_total{{reason=\"{reason}\",result=\"{result}\"}}");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in the metrics"))
    }
}

/// The body of a 200 token response, asserting it.
async fn tokens_of(res: Response) -> Value {
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// A refusal with `status` and `error`; answers the body and the `WWW-Authenticate` values.
async fn refused(res: Response, status: StatusCode, error: &str) -> (Value, Vec<String>) {
    let got = res.status();
    let challenges: Vec<String> = res
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let body: Value = res.json().await.unwrap();
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    (body, challenges)
}

/// A 400 `invalid_dpop_proof` from the token endpoint whose description says `what`.
async fn refused_at_token(res: Response, what: &str) {
    let (body, challenges) = refused(res, StatusCode::BAD_REQUEST, "invalid_dpop_proof").await;
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains(what), "{what}: {body}");
    assert!(challenges.is_empty(), "no challenge at the token endpoint");
}

/// A 401 `invalid_dpop_proof` from a protected route, with the RFC 9449 §7.1 challenge.
async fn refused_at_resource(res: Response, what: &str) {
    let (body, challenges) = refused(res, StatusCode::UNAUTHORIZED, "invalid_dpop_proof").await;
    assert!(
        body["error_description"].as_str().unwrap().contains(what),
        "{what}: {body}"
    );
    assert_eq!(challenges.len(), 1, "{challenges:?}");
    assert!(
        challenges[0].starts_with("DPoP error=\"invalid_dpop_proof\""),
        "{challenges:?}"
    );
    assert!(
        challenges[0].ends_with(&format!("algs=\"{ALGS}\"")),
        "{challenges:?}"
    );
}

fn access_of(body: &Value) -> String {
    body["access_token"].as_str().unwrap().to_string()
}

fn refresh_of(body: &Value) -> String {
    body["refresh_token"].as_str().unwrap().to_string()
}

/// Asserts a token response is bound to `key`.
fn assert_bound(body: &Value, key: &DpopKey) {
    assert_eq!(body["token_type"], "DPoP", "{body}");
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["cnf"],
        json!({"jkt": key.jkt()}),
        "{body}"
    );
}

fn assert_unbound(body: &Value) {
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert!(
        claims(body["access_token"].as_str().unwrap())
            .get("cnf")
            .is_none(),
        "{body}"
    );
}

/// Signs `ada` in for `native` (first party: no consent), with `extra` authorization
/// parameters; answers the code.
async fn native_code(app: &App, extra: &[(&str, &str)]) -> String {
    let mut params: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", "native"),
        ("redirect_uri", NATIVE_REDIRECT),
        ("scope", "read"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    params.extend_from_slice(extra);
    let url = format!(
        "/oauth/authorize?{}",
        serde_urlencoded::to_string(&params).unwrap()
    );
    let res = app.get(&url).await;
    let to = location(&res);
    let res = if to.starts_with("/login") {
        app.sign_in(&to, PASSWORD).await
    } else {
        res
    };
    let to = location(&res);
    assert!(to.starts_with(NATIVE_REDIRECT), "{to}");
    query_of(&to)["code"].clone()
}

async fn redeem_native(app: &App, code: &str, proof: Option<&str>) -> Response {
    app.token_with_proof(
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "native"),
            ("code", code),
            ("redirect_uri", NATIVE_REDIRECT),
            ("code_verifier", VERIFIER),
        ],
        proof,
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

async fn every_grant_binds_its_access_token_to_the_proof_key(mode: Mode) {
    let app = spawn(mode).await;
    let key = DpopKey::p256();

    // password (public client): the pair is bound, and the refresh keeps the binding.
    let body = tokens_of(app.password_grant("app", Some(&key)).await).await;
    assert_bound(&body, &key);
    assert!(body["refresh_token"].is_string());

    // client_credentials (confidential client), with an Ed25519 key this time.
    let ed = DpopKey::ed25519();
    let proof = app.proof(&ed, "POST", "/oauth/token");
    let body = tokens_of(
        app.token_with_proof(
            &[("grant_type", "client_credentials"), ("client_id", "svc")],
            Some(&proof),
        )
        .await,
    )
    .await;
    assert_bound(&body, &ed);

    // authorization_code.
    let code = native_code(&app, &[]).await;
    let proof = app.proof(&key, "POST", "/oauth/token");
    let body = tokens_of(redeem_native(&app, &code, Some(&proof)).await).await;
    assert_bound(&body, &key);

    // Without a proof nothing changes: Bearer tokens, no cnf.
    let body = tokens_of(app.password_grant("app", None).await).await;
    assert_unbound(&body);
    let res = app
        .token_with_proof(
            &[("grant_type", "client_credentials"), ("client_id", "svc")],
            None,
        )
        .await;
    assert_unbound(&tokens_of(res).await);
    app.app.stop().await;
}

async fn a_bound_token_is_accepted_only_with_a_proof_of_its_key(mode: Mode) {
    let app = spawn(mode).await;
    let key = DpopKey::p256();
    let body = tokens_of(app.password_grant("app", Some(&key)).await).await;
    let token = access_of(&body);

    // The protected routes, each with a fresh proof for it.
    for path in ["/auth/verify", "/users/me", "/users/me/consents"] {
        let res = app.get_dpop(path, &token, &key).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    let res = app.get_dpop("/auth/verify", &token, &key).await;
    let verified: Value = res.json().await.unwrap();
    assert_eq!(verified["claims"]["cnf"]["jkt"], key.jkt());
    // Short of a scope, the refusal names the scheme the token came with (RFC 9449 §7.1).
    let res = app.get_dpop("/oauth/userinfo", &token, &key).await;
    let (_, challenges) = refused(res, StatusCode::FORBIDDEN, "insufficient_scope").await;
    assert_eq!(challenges.len(), 1, "{challenges:?}");
    assert!(
        challenges[0].starts_with("DPoP error=\"insufficient_scope\""),
        "{challenges:?}"
    );

    // As a bearer token it is refused (RFC 9449 §7.2).
    let res = app.get_with("/users/me", "Bearer", &token, None).await;
    let (body, challenges) = refused(res, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("DPoP-bound"),
        "{body}"
    );
    assert!(challenges[0].starts_with("Bearer "), "{challenges:?}");
    assert_eq!(
        challenges[1],
        format!("DPoP algs=\"{ALGS}\""),
        "{challenges:?}"
    );
    // Even with a proof beside it: the scheme says bearer.
    let proof = app.resource_proof(&key, "GET", "/users/me", &token);
    let res = app
        .get_with("/users/me", "Bearer", &token, Some(&proof))
        .await;
    refused(res, StatusCode::UNAUTHORIZED, "invalid_token").await;

    // No proof.
    let res = app.get_with("/users/me", "DPoP", &token, None).await;
    refused_at_resource(res, "DPoP proof is required").await;
    // A proof of another key.
    let other = DpopKey::p256();
    let proof = app.resource_proof(&other, "GET", "/users/me", &token);
    let res = app
        .get_with("/users/me", "DPoP", &token, Some(&proof))
        .await;
    refused_at_resource(res, "not signed by the key the token is bound to").await;
    // ath: missing, or of another token.
    let proof = app.proof(&key, "GET", "/users/me");
    let res = app
        .get_with("/users/me", "DPoP", &token, Some(&proof))
        .await;
    refused_at_resource(res, "ath").await;
    let proof = app.proof_with(&key, "GET", "/users/me", &json!({"ath": ath("another")}));
    let res = app
        .get_with("/users/me", "DPoP", &token, Some(&proof))
        .await;
    refused_at_resource(res, "ath").await;
    // htm and htu of another request.
    let proof = app.resource_proof(&key, "POST", "/users/me", &token);
    let res = app
        .get_with("/users/me", "DPoP", &token, Some(&proof))
        .await;
    refused_at_resource(res, "htm").await;
    let proof = app.resource_proof(&key, "GET", "/auth/verify", &token);
    let res = app
        .get_with("/users/me", "DPoP", &token, Some(&proof))
        .await;
    refused_at_resource(res, "htu").await;
    // Replayed.
    let proof = app.resource_proof(&key, "GET", "/users/me", &token);
    let res = app
        .get_with("/users/me", "DPoP", &token, Some(&proof))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .get_with("/users/me", "DPoP", &token, Some(&proof))
        .await;
    refused_at_resource(res, "used before").await;

    // A bearer (unbound) token under the DPoP scheme is refused with the DPoP challenge.
    let bearer = access_of(&tokens_of(app.password_grant("app", None).await).await);
    let res = app.get_dpop("/users/me", &bearer, &key).await;
    let (body, challenges) = refused(res, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("not DPoP-bound"),
        "{body}"
    );
    assert!(
        challenges[0].starts_with("DPoP error=\"invalid_token\""),
        "{challenges:?}"
    );
    // …and works as a bearer token.
    let res = app.get_with("/users/me", "Bearer", &bearer, None).await;
    assert_eq!(res.status(), StatusCode::OK);

    // A revoked bound token is refused with the DPoP challenge, even with a good proof.
    let proof = app.resource_proof(&key, "POST", "/auth/logout", &token);
    let res = app
        .http
        .post(app.url("/auth/logout"))
        .header("authorization", format!("DPoP {token}"))
        .header("DPoP", proof)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app.get_dpop("/users/me", &token, &key).await;
    let (_, challenges) = refused(res, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert!(challenges[0].starts_with("DPoP "), "{challenges:?}");
    app.app.stop().await;
}

async fn every_proof_refusal_at_the_token_endpoint_is_invalid_dpop_proof(mode: Mode) {
    let app = spawn(mode).await;
    let key = DpopKey::ed25519();
    let now = app.clock.now();
    let cc = [("grant_type", "client_credentials"), ("client_id", "svc")];
    let token_url = format!("{ISSUER}/oauth/token");
    let cases: Vec<(String, &str)> = vec![
        ("not-a-jwt".into(), "not a signed JWT"),
        (
            key.sign(
                &json!({"typ": "JWT", "alg": key.alg(), "jwk": key.jwk()}),
                &json!({"jti": "a", "htm": "POST", "htu": token_url, "iat": now}),
            ),
            "typ",
        ),
        (
            key.sign(
                &json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": key.jwk()}),
                &json!({"jti": "b", "htm": "POST", "htu": token_url, "iat": now}),
            ),
            "alg",
        ),
        (
            key.sign(
                &json!({"typ": "dpop+jwt", "alg": key.alg(), "jwk": DpopKey::ed25519().jwk()}),
                &json!({"jti": "c", "htm": "POST", "htu": token_url, "iat": now}),
            ),
            "signature",
        ),
        (
            key.sign(
                &json!({"typ": "dpop+jwt", "alg": key.alg()}),
                &json!({"jti": "d", "htm": "POST", "htu": token_url, "iat": now}),
            ),
            "jwk",
        ),
        (key.proof_at("GET", &token_url, now, &json!({})), "htm"),
        (
            key.proof_at("POST", &format!("{ISSUER}/oauth/revoke"), now, &json!({})),
            "htu",
        ),
        (
            key.proof_at(
                "POST",
                "https://elsewhere.example/oauth/token",
                now,
                &json!({}),
            ),
            "htu",
        ),
        (
            key.proof_at("POST", &token_url, now - 61, &json!({})),
            "iat",
        ),
        (key.proof_at("POST", &token_url, now + 6, &json!({})), "iat"),
        (
            key.proof_at("POST", &token_url, now, &json!({"jti": ""})),
            "jti",
        ),
    ];
    for (proof, what) in &cases {
        refused_at_token(app.token_with_proof(&cc, Some(proof)).await, what).await;
    }
    // Two DPoP headers.
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("svc", Some(SECRET))
        .header("DPoP", app.proof(&key, "POST", "/oauth/token"))
        .header("DPoP", app.proof(&key, "POST", "/oauth/token"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    refused_at_token(res, "one DPoP proof").await;
    // Replayed.
    let proof = app.proof(&key, "POST", "/oauth/token");
    tokens_of(app.token_with_proof(&cc, Some(&proof)).await).await;
    refused_at_token(app.token_with_proof(&cc, Some(&proof)).await, "used before").await;
    // The window moves with the clock: a proof made a minute and more ago is too old.
    let proof = app.proof(&key, "POST", "/oauth/token");
    app.clock.advance(std::time::Duration::from_secs(61));
    refused_at_token(app.token_with_proof(&cc, Some(&proof)).await, "iat").await;
    // Each refusal was counted by its reason.
    for reason in [
        "malformed",
        "typ",
        "alg",
        "signature",
        "jwk",
        "htm",
        "jti",
        "multiple",
        "replay",
    ] {
        assert!(app.proofs_counted("refused", reason).await >= 1, "{reason}");
    }
    assert_eq!(app.proofs_counted("refused", "htu").await, 2);
    assert_eq!(app.proofs_counted("refused", "iat").await, 3);
    assert_eq!(app.proofs_counted("accepted", "none").await, 1);
    app.app.stop().await;
}

async fn parallel_replays_of_one_proof_let_exactly_one_through(mode: Mode) {
    // Two instances sharing the stores in production mode: the replay cache is Redis's.
    let file = write_clients_file(&clients());
    let path = file.path().to_string_lossy().into_owned();
    let apps = instances(mode, |env| {
        env.insert("TOKEND_CLIENTS_FILE".into(), path.clone());
    })
    .await;
    let first = &apps[0];
    let res = first.register("ada", "ada@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let key = DpopKey::p256();
    let proof = first.proof(&key, "POST", "/oauth/token");
    let body = tokens_of(
        first
            .token_with_proof(
                &[
                    ("grant_type", "password"),
                    ("client_id", "app"),
                    ("username", "ada"),
                    ("password", PASSWORD),
                ],
                Some(&proof),
            )
            .await,
    )
    .await;
    let token = access_of(&body);

    // One proof for /auth/verify, sent 16 times at once over the instances.
    let proof = first.resource_proof(&key, "GET", "/auth/verify", &token);
    let answers = join_all((0..16).map(|i| {
        let app = &apps[i % apps.len()];
        app.get_with("/auth/verify", "DPoP", &token, Some(&proof))
    }))
    .await;
    let ok = answers
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    assert_eq!(ok, 1, "exactly one use of the proof is accepted");
    for r in answers.into_iter().filter(|r| r.status() != StatusCode::OK) {
        refused_at_resource(r, "used before").await;
    }

    // One proof at the token endpoint, sent 16 times at once: one token response.
    let proof = first.proof(&key, "POST", "/oauth/token");
    let answers = join_all((0..16).map(|i| {
        let app = &apps[i % apps.len()];
        app.token_with_proof(
            &[("grant_type", "client_credentials"), ("client_id", "svc")],
            Some(&proof),
        )
    }))
    .await;
    let statuses: Vec<StatusCode> = answers.iter().map(Response::status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::OK || *s == StatusCode::BAD_REQUEST));
    for app in apps {
        app.stop().await;
    }
}

async fn a_public_family_is_bound_and_refreshes_only_with_its_key(mode: Mode) {
    let app = spawn(mode).await;
    let key = DpopKey::p256();
    let body = tokens_of(app.password_grant("app", Some(&key)).await).await;
    let refresh = refresh_of(&body);

    // Without a proof, with another key: refused, and the family does not move.
    let res = app.refresh_grant("app", &refresh, None).await;
    refused_at_token(res, "DPoP proof is required").await;
    let other = DpopKey::p256();
    let res = app.refresh_grant("app", &refresh, Some(&other)).await;
    refused_at_token(res, "not signed by the key").await;
    // The same refresh token still works with the family's key.
    let body = tokens_of(app.refresh_grant("app", &refresh, Some(&key)).await).await;
    assert_bound(&body, &key);
    let next = refresh_of(&body);
    assert_ne!(next, refresh);
    // Many refreshes at once with other keys change nothing either.
    let others: Vec<DpopKey> = (0..8).map(|_| DpopKey::ed25519()).collect();
    let answers = join_all(
        others
            .iter()
            .map(|k| app.refresh_grant("app", &next, Some(k))),
    )
    .await;
    assert!(answers
        .iter()
        .all(|r| r.status() == StatusCode::BAD_REQUEST));
    let body = tokens_of(app.refresh_grant("app", &next, Some(&key)).await).await;
    assert_bound(&body, &key);
    assert_eq!(app.proofs_counted("refused", "missing").await, 1);
    assert_eq!(app.proofs_counted("refused", "key").await, 9);

    // An unbound public family (no proof at login) takes a proof at refresh: that access
    // token is bound, the family stays unbound.
    let body = tokens_of(app.password_grant("app", None).await).await;
    let body = tokens_of(
        app.refresh_grant("app", &refresh_of(&body), Some(&other))
            .await,
    )
    .await;
    assert_bound(&body, &other);
    let body = tokens_of(app.refresh_grant("app", &refresh_of(&body), None).await).await;
    assert_unbound(&body);
    app.app.stop().await;
}

async fn a_confidential_clients_refresh_token_is_not_bound(mode: Mode) {
    let app = spawn(mode).await;
    let key = DpopKey::p256();
    let body = tokens_of(app.password_grant("web", Some(&key)).await).await;
    assert_bound(&body, &key);
    // RFC 9449 §5: bound by the client's authentication instead; any proof, or none, will do,
    // and binds the new access token to its key.
    let body = tokens_of(app.refresh_grant("web", &refresh_of(&body), None).await).await;
    assert_unbound(&body);
    let other = DpopKey::ed25519();
    let body = tokens_of(
        app.refresh_grant("web", &refresh_of(&body), Some(&other))
            .await,
    )
    .await;
    assert_bound(&body, &other);
    app.app.stop().await;
}

async fn the_seed_routes_take_a_proof_the_same_way(mode: Mode) {
    let app = spawn(mode).await;
    let key = DpopKey::ed25519();
    let proof = app.proof(&key, "POST", "/auth/login");
    let res = app
        .http
        .post(app.url("/auth/login"))
        .header("DPoP", proof)
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let body = tokens_of(res).await;
    assert_bound(&body, &key);
    let refresh = refresh_of(&body);

    let seed_refresh = |proof: Option<String>| {
        let mut req = app
            .http
            .post(app.url("/auth/token/refresh"))
            .bearer_auth(&refresh);
        if let Some(p) = proof {
            req = req.header("DPoP", p);
        }
        req.send()
    };
    // The first-party client is public: the family is bound.
    let res = seed_refresh(None).await.unwrap();
    let (body, _) = refused(res, StatusCode::UNAUTHORIZED, "invalid_dpop_proof").await;
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("required"));
    let res = seed_refresh(Some(app.proof(
        &DpopKey::p256(),
        "POST",
        "/auth/token/refresh",
    )))
    .await
    .unwrap();
    refused(res, StatusCode::UNAUTHORIZED, "invalid_dpop_proof").await;
    let res = seed_refresh(Some(app.proof(&key, "POST", "/auth/token/refresh")))
        .await
        .unwrap();
    let body = tokens_of(res).await;
    assert_bound(&body, &key);
    // The fresh token works with its proof on the seed's routes.
    let token = access_of(&body);
    assert_eq!(
        app.get_dpop("/auth/verify", &token, &key).await.status(),
        StatusCode::OK
    );
    // A login proof made for another route is refused.
    let proof = app.proof(&key, "POST", "/oauth/token");
    let res = app
        .http
        .post(app.url("/auth/login"))
        .header("DPoP", proof)
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    refused(res, StatusCode::UNAUTHORIZED, "invalid_dpop_proof").await;
    app.app.stop().await;
}

async fn a_dpop_bound_client_must_send_a_proof(mode: Mode) {
    let app = spawn(mode).await;
    refused_at_token(
        app.password_grant("strict", None).await,
        "DPoP proof is required",
    )
    .await;
    let key = DpopKey::p256();
    let body = tokens_of(app.password_grant("strict", Some(&key)).await).await;
    assert_bound(&body, &key);
    let res = app.refresh_grant("strict", &refresh_of(&body), None).await;
    refused_at_token(res, "DPoP proof is required").await;
    let body = tokens_of(
        app.refresh_grant("strict", &refresh_of(&body), Some(&key))
            .await,
    )
    .await;
    assert_bound(&body, &key);
    app.app.stop().await;
}

async fn nonces_are_asked_for_handed_out_and_expire_when_configured(mode: Mode) {
    let file = write_clients_file(&clients());
    let path = file.path().to_string_lossy().into_owned();
    let apps = instances(mode, |env| {
        env.insert("TOKEND_CLIENTS_FILE".into(), path.clone());
        env.insert("TOKEND_DPOP_NONCE".into(), "on".into());
    })
    .await;
    let app = &apps[0];
    let res = app.register("ada", "ada@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let key = DpopKey::p256();
    let cc = [("grant_type", "client_credentials"), ("client_id", "svc")];

    // A proof without a nonce: use_dpop_nonce with one (RFC 9449 §8).
    let res = app
        .token_with_proof(&cc, Some(&app.proof(&key, "POST", "/oauth/token")))
        .await;
    let nonce = res.headers()["dpop-nonce"].to_str().unwrap().to_string();
    let (_, challenges) = refused(res, StatusCode::BAD_REQUEST, "use_dpop_nonce").await;
    assert!(challenges.is_empty());
    // With it, on any instance: tokens, and a nonce again.
    let with_nonce = |app: &TestApp, nonce: &str| {
        app.proof_with(&key, "POST", "/oauth/token", &json!({"nonce": nonce}))
    };
    let last = &apps[apps.len() - 1];
    let res = last
        .token_with_proof(&cc, Some(&with_nonce(last, &nonce)))
        .await;
    assert!(res.headers().contains_key("dpop-nonce"));
    let token = access_of(&tokens_of(res).await);
    // A made-up nonce is refused.
    let res = app
        .token_with_proof(&cc, Some(&with_nonce(app, "bm90LWEtbm9uY2U")))
        .await;
    refused(res, StatusCode::BAD_REQUEST, "use_dpop_nonce").await;

    // On a protected route: 401 with the challenge naming use_dpop_nonce (RFC 9449 §9). The
    // token of a client_credentials grant has no user: /auth/verify is the route for it.
    let res = app.get_dpop("/auth/verify", &token, &key).await;
    let resource_nonce = res.headers()["dpop-nonce"].to_str().unwrap().to_string();
    let (_, challenges) = refused(res, StatusCode::UNAUTHORIZED, "use_dpop_nonce").await;
    assert!(
        challenges[0].starts_with("DPoP error=\"use_dpop_nonce\""),
        "{challenges:?}"
    );
    let proof = app.proof_with(
        &key,
        "GET",
        "/auth/verify",
        &json!({"ath": ath(&token), "nonce": resource_nonce}),
    );
    let res = app
        .get_with("/auth/verify", "DPoP", &token, Some(&proof))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers().contains_key("dpop-nonce"),
        "a fresh one on success too"
    );

    // A nonce lives through its five minutes and the next five; then it is stale.
    app.clock.advance(std::time::Duration::from_secs(600));
    let res = app
        .token_with_proof(&cc, Some(&with_nonce(app, &nonce)))
        .await;
    let fresh = res.headers()["dpop-nonce"].to_str().unwrap().to_string();
    assert_ne!(fresh, nonce);
    refused(res, StatusCode::BAD_REQUEST, "use_dpop_nonce").await;
    tokens_of(
        app.token_with_proof(&cc, Some(&with_nonce(app, &fresh)))
            .await,
    )
    .await;
    // Requests without a proof get no nonce.
    let res = app.token_with_proof(&cc, None).await;
    assert!(!res.headers().contains_key("dpop-nonce"));
    assert!(app.proofs_counted("refused", "nonce").await >= 2);
    drop(file);
    for app in apps {
        app.stop().await;
    }
}

async fn a_code_bound_with_dpop_jkt_is_redeemed_only_with_that_key(mode: Mode) {
    let app = spawn(mode).await;
    let key = DpopKey::p256();
    let jkt = key.jkt();

    // Redeemed with another key: invalid_grant; the code is spent.
    let code = native_code(&app, &[("dpop_jkt", &jkt)]).await;
    let proof = app.proof(&DpopKey::p256(), "POST", "/oauth/token");
    let (body, _) = refused(
        redeem_native(&app, &code, Some(&proof)).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    )
    .await;
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("dpop_jkt"));
    // Without a proof.
    let code = native_code(&app, &[("dpop_jkt", &jkt)]).await;
    refused_at_token(redeem_native(&app, &code, None).await, "required").await;
    // With the key.
    let code = native_code(&app, &[("dpop_jkt", &jkt)]).await;
    let proof = app.proof(&key, "POST", "/oauth/token");
    let body = tokens_of(redeem_native(&app, &code, Some(&proof)).await).await;
    assert_bound(&body, &key);
    // A dpop_jkt that is not a thumbprint goes back to the client as invalid_request.
    let url = format!(
        "/oauth/authorize?{}",
        serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", "native"),
            ("redirect_uri", NATIVE_REDIRECT),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
            ("dpop_jkt", "short"),
        ])
        .unwrap()
    );
    let to = location(&app.get(&url).await);
    let q = query_of(&to);
    assert_eq!(q["error"], "invalid_request", "{to}");
    assert!(q["error_description"].contains("dpop_jkt"), "{to}");
    app.app.stop().await;
}

async fn a_pushed_request_with_a_proof_binds_its_code(mode: Mode) {
    let app = spawn(mode).await;
    let key = DpopKey::ed25519();
    let params = [
        ("response_type", "code"),
        ("redirect_uri", REDIRECT),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    let push = |proof: Option<String>, extra: Option<(&'static str, String)>| {
        let mut form: Vec<(&str, String)> =
            params.iter().map(|(k, v)| (*k, v.to_string())).collect();
        form.extend(extra);
        let mut req = app
            .http
            .post(app.url("/oauth/par"))
            .basic_auth("pushy", Some(SECRET));
        if let Some(p) = proof {
            req = req.header("DPoP", p);
        }
        req.form(&form).send()
    };
    // dpop_jkt and the proof must agree.
    let res = push(
        Some(app.proof(&key, "POST", "/oauth/par")),
        Some(("dpop_jkt", DpopKey::p256().jkt())),
    )
    .await
    .unwrap();
    refused(res, StatusCode::BAD_REQUEST, "invalid_request").await;
    // A proof made for the token endpoint is not one for the push.
    let res = push(Some(app.proof(&key, "POST", "/oauth/token")), None)
        .await
        .unwrap();
    refused_at_token(res, "htu").await;

    let res = push(Some(app.proof(&key, "POST", "/oauth/par")), None)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let pushed: Value = res.json().await.unwrap();
    let url = format!(
        "/oauth/authorize?{}",
        serde_urlencoded::to_string([
            ("client_id", "pushy"),
            ("request_uri", pushed["request_uri"].as_str().unwrap()),
        ])
        .unwrap()
    );
    let res = app.get(&url).await;
    let res = app.sign_in(&location(&res), PASSWORD).await;
    let code = query_of(&location(&res))["code"].clone();
    let proof = app.proof(&key, "POST", "/oauth/token");
    let res = app
        .token_with_proof(
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "pushy"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
            ],
            Some(&proof),
        )
        .await;
    let body = tokens_of(res).await;
    assert_bound(&body, &key);
    app.app.stop().await;
}

async fn the_device_grant_binds_its_tokens(mode: Mode) {
    let app = spawn(mode).await;
    let res = app
        .http
        .post(app.url("/oauth/device_authorization"))
        .form(&[("client_id", "tv"), ("scope", "read")])
        .send()
        .await
        .unwrap();
    let d: Value = res.json().await.unwrap();
    crate::device::approve_as(&app, &d, "ada", PASSWORD).await;
    let key = DpopKey::p256();
    let device_code = d["device_code"].as_str().unwrap();
    let proof = app.proof(&key, "POST", "/oauth/token");
    let body = tokens_of(
        app.token_with_proof(
            &[
                ("grant_type", DEVICE_GRANT),
                ("client_id", "tv"),
                ("device_code", device_code),
            ],
            Some(&proof),
        )
        .await,
    )
    .await;
    assert_bound(&body, &key);
    // tv is public: its family is bound.
    let res = app.refresh_grant("tv", &refresh_of(&body), None).await;
    refused_at_token(res, "required").await;
    let body = tokens_of(
        app.refresh_grant("tv", &refresh_of(&body), Some(&key))
            .await,
    )
    .await;
    assert_bound(&body, &key);
    app.app.stop().await;
}

/// `POST /oauth/introspect` of `token` by `svc`; answers the 200 body.
async fn introspect(app: &TestApp, token: &str) -> Value {
    let res = app
        .http
        .post(app.url("/oauth/introspect"))
        .basic_auth("svc", Some(SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    tokens_of(res).await
}

async fn introspection_shows_the_binding(mode: Mode) {
    let app = spawn(mode).await;
    let key = DpopKey::p256();
    let body = tokens_of(app.password_grant("app", Some(&key)).await).await;
    let access = introspect(&app, &access_of(&body)).await;
    assert_eq!(access["active"], true);
    assert_eq!(access["token_type"], "DPoP");
    assert_eq!(access["cnf"], json!({"jkt": key.jkt()}));
    let refresh = introspect(&app, &refresh_of(&body)).await;
    assert_eq!(refresh["active"], true, "{refresh}");
    assert_eq!(refresh["token_use"], "refresh_token");
    assert_eq!(refresh["cnf"], json!({"jkt": key.jkt()}), "{refresh}");
    // Unbound tokens say nothing of a key.
    let body = tokens_of(app.password_grant("app", None).await).await;
    let access = introspect(&app, &access_of(&body)).await;
    assert_eq!(access["token_type"], "Bearer");
    assert!(access.get("cnf").is_none(), "{access}");
    let refresh = introspect(&app, &refresh_of(&body)).await;
    assert!(refresh.get("cnf").is_none(), "{refresh}");
    app.app.stop().await;
}

async fn discovery_registration_and_metrics_know_dpop(mode: Mode) {
    let file = write_clients_file(&clients());
    let path = file.path().to_string_lossy().into_owned();
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_CLIENTS_FILE".into(), path);
        env.insert("TOKEND_CLIENT_REGISTRATION".into(), "open".into());
    })
    .await;
    for doc in DISCOVERY_DOCUMENTS {
        let d = app.get_json(doc).await;
        assert_eq!(
            d["dpop_signing_alg_values_supported"],
            json!(["ES256", "EdDSA", "RS256", "PS256"]),
            "{doc}"
        );
    }
    // Dynamic registration keeps dpop_bound_access_tokens (RFC 9449 §5.2), and holds to it.
    let res = app
        .post_json(
            "/oauth/register",
            &json!({"client_name": "Example Bound CLI", "grant_types": ["refresh_token",
                    "urn:ietf:params:oauth:grant-type:device_code"],
                    "token_endpoint_auth_method": "none", "dpop_bound_access_tokens": true}),
        )
        .await;
    let status = res.status();
    let registered: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    assert_eq!(registered["dpop_bound_access_tokens"], true);
    let res = app
        .http
        .get(
            registered["registration_client_uri"]
                .as_str()
                .unwrap()
                .replace(ISSUER, &app.base),
        )
        .bearer_auth(registered["registration_access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let read: Value = res.json().await.unwrap();
    assert_eq!(read["dpop_bound_access_tokens"], true, "{read}");
    let res = app
        .post_json(
            "/oauth/register",
            &json!({"client_name": "Example", "grant_types": ["refresh_token"],
                    "token_endpoint_auth_method": "none", "dpop_bound_access_tokens": "yes"}),
        )
        .await;
    assert_eq!(error_code(res).await, "invalid_client_metadata");
    // The registered client must send proofs.
    let client_id = registered["client_id"].as_str().unwrap();
    let res = app
        .http
        .post(app.url("/oauth/device_authorization"))
        .form(&[("client_id", client_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let d: Value = res.json().await.unwrap();
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", DEVICE_GRANT),
            ("client_id", client_id),
            ("device_code", d["device_code"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    refused_at_token(res, "required").await;

    // The metric has a series for each reason from the start.
    let text = app.metrics_text().await;
    let series: HashMap<String, u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("tokend_dpop_proofs_total{"))
        .filter_map(|l| l.split_once("} "))
        .map(|(labels, v)| (labels.to_string(), v.parse().unwrap()))
        .collect();
    assert_eq!(series.len(), 16, "{series:?}");
    assert_eq!(series["reason=\"missing\",result=\"refused\""], 1);
    assert_eq!(series["reason=\"none\",result=\"accepted\""], 0);
    app.stop().await;
}

/// `tokend clients create --dpop-bound` stores a client in MongoDB that the token endpoint then
/// holds to its promise (production mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_cli_creates_a_dpop_bound_client() {
    use crate::oauth::{listed_client, tokend_cli_ok};
    let (env, _) = test_env(Mode::Production);
    tokend_cli_ok(
        &env,
        &[
            "clients",
            "create",
            "--id",
            "cli-bound",
            "--grant",
            "password",
            "--public",
            "--dpop-bound",
            "--json",
        ],
    );
    let (row, _) = listed_client(&env, "cli-bound");
    assert_eq!(row["dpop_bound_access_tokens"], true, "{row}");

    let app = spawn_env(
        Mode::Production,
        env.clone(),
        None,
        tokend::clock::ManualClock::starting_now(),
    )
    .await;
    assert_eq!(
        app.register("ada", "ada@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::CREATED
    );
    refused_at_token(app.password_grant("cli-bound", None).await, "required").await;
    let key = DpopKey::ed25519();
    let body = tokens_of(app.password_grant("cli-bound", Some(&key)).await).await;
    assert_bound(&body, &key);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The stores' part: single-use keys, against memory and Redis (a family's binding travels in
// its refresh tokens: a_public_family_is_bound_and_refreshes_only_with_its_key)
// ---------------------------------------------------------------------------------------------

mod stores {
    use std::sync::Arc;

    use futures_util::future::join_all;
    use tokend::clock::{ManualClock, SharedClock};
    use tokend::store::memory::MemoryReplay;
    use tokend::store::ReplayStore;

    use crate::services;

    fn id() -> String {
        uuid::Uuid::now_v7().to_string()
    }

    /// Of many concurrent first uses of one key exactly one wins; the key is free again once
    /// its TTL has passed, and other keys are independent.
    async fn one_first_use_per_key(s: Arc<dyn ReplayStore>, prefix: &str) {
        let key = format!("{prefix}dpop:{}", id());
        let answers = join_all((0..32).map(|_| {
            let s = s.clone();
            let key = key.clone();
            async move { s.first_use(&key, 60_000).await.unwrap() }
        }))
        .await;
        assert_eq!(answers.iter().filter(|a| **a).count(), 1, "{answers:?}");
        assert!(!s.first_use(&key, 60_000).await.unwrap());
        assert!(s.first_use(&format!("{key}-2"), 60_000).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_memory_replay_store_gives_one_first_use_and_forgets_by_ttl() {
        let clock = ManualClock::starting_now();
        let shared: SharedClock = clock.clone();
        let s = Arc::new(MemoryReplay::new(shared));
        one_first_use_per_key(s.clone(), "").await;
        assert!(s.first_use("k", 1000).await.unwrap());
        assert!(!s.first_use("k", 1000).await.unwrap());
        clock.advance(std::time::Duration::from_millis(1001));
        assert!(
            s.first_use("k", 1000).await.unwrap(),
            "free again after its TTL"
        );
        // Swept as it goes: the map holds what is live, not every key ever seen.
        clock.advance(std::time::Duration::from_secs(61));
        for i in 0..5000 {
            s.first_use(&format!("many-{i}"), 1000).await.unwrap();
        }
        assert_eq!(s.len(), 5000, "the keys of a minute ago are gone");
        clock.advance(std::time::Duration::from_secs(31));
        s.first_use("last", 1000).await.unwrap();
        assert_eq!(s.len(), 1, "expired keys are swept");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_redis_replay_store_gives_one_first_use_and_sets_a_ttl() {
        let store = services::redis_store().await;
        let prefix = store.prefix().to_string();
        let s: Arc<dyn ReplayStore> = Arc::new(store);
        one_first_use_per_key(s.clone(), "").await;
        assert!(s.first_use("ttl-check", 65_000).await.unwrap());
        let mut conn = redis::Client::open(services::redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(format!("{prefix}once:{{ttl-check}}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((60_000..=65_000).contains(&pttl), "{pttl}");
    }
}
