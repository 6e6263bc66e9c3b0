//! `private_key_jwt` client authentication (RFC 7523 §2.2, OpenID Connect Core §9;
//! docs/private_key_jwt.md), in both modes: clients with EdDSA, ES256, RS256 and PS256 keys,
//! inline (`jwks`) or published (`jwks_uri`, served here by a small hyper server that counts
//! its fetches), authenticate with a signed assertion at every endpoint that authenticates
//! clients (every grant of the token endpoint, revocation, introspection, pushed authorization
//! requests, device authorization); each refusal is `invalid_client` with its reason and
//! never echoes the assertion; an assertion is accepted once, also when sent many times at
//! once; a `jwks_uri` is cached, refetched for a new `kid` at most once a minute, kept when
//! its server fails, fetched once for many concurrent requests, and an unusable one is a 401,
//! never a 500. Clients come from the file, dynamic registration and the CLI; Authlib and
//! openid-client obtain tokens with their own `private_key_jwt` implementations.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::Full;
use josekit::jwk::KeyPair;
use josekit::jws::JwsSigner;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tokend::clock::Clock;

use crate::authorize::{location, query_of, spawn_with_clients, App, CHALLENGE, VERIFIER};
use crate::helpers::*;
use crate::in_both_modes;

in_both_modes!(
    client_credentials_with_an_assertion_for_each_key_type,
    every_grant_and_endpoint_takes_an_assertion,
    every_refusal_is_invalid_client_with_its_reason,
    parallel_replays_of_one_assertion_let_exactly_one_through,
    a_jwks_uri_is_cached_refetched_for_a_new_kid_once_a_minute_and_kept_on_failure,
    concurrent_requests_for_an_uncached_client_make_one_fetch,
    an_unusable_jwks_uri_is_invalid_client_never_a_500,
    a_registered_client_authenticates_with_its_keys_and_rotates_them,
    discovery_and_metrics_know_private_key_jwt,
    an_assertion_is_never_accepted_unrecorded,
    a_private_key_jwt_client_may_exchange_tokens,
    authlib_gets_a_token_with_private_key_jwt,
    openid_client_gets_a_token_with_private_key_jwt,
);

/// `TOKEND_ISSUER` of the test apps.
const ISSUER: &str = "http://tokend.test";
const TOKEN_ENDPOINT: &str = "http://tokend.test/oauth/token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const PASSWORD: &str = "correct horse battery";
const REDIRECT: &str = "https://app.example/cb";
const SECRET: &str = "pkjwt-secret-0123456789abcdef";
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

// ---------------------------------------------------------------------------------------------
// A client's keys and the assertions it signs
// ---------------------------------------------------------------------------------------------

/// One key pair of a client: it signs assertions with `alg`.
pub(crate) struct ClientKey {
    pub(crate) alg: &'static str,
    pub(crate) kid: Option<String>,
    signer: Box<dyn JwsSigner>,
    /// The public JWK (with `kid` when there is one, no `alg`).
    public: Value,
    /// The key pair as a JWK, private members included (openid-client imports it).
    pub(crate) private_jwk: Value,
    /// The private key as PKCS#8 PEM (Authlib reads it).
    pub(crate) pem: Vec<u8>,
}

fn jwk_value(jwk: josekit::jwk::Jwk, kid: Option<&str>) -> Value {
    let mut v = serde_json::to_value(jwk).unwrap();
    let m = v.as_object_mut().unwrap();
    m.remove("alg");
    if let Some(kid) = kid {
        m.insert("kid".into(), json!(kid));
    }
    v
}

impl ClientKey {
    fn from_pair(
        alg: &'static str,
        kid: Option<&str>,
        pair: &dyn KeyPair,
        signer: Box<dyn JwsSigner>,
    ) -> ClientKey {
        ClientKey {
            alg,
            kid: kid.map(String::from),
            signer,
            public: jwk_value(pair.to_jwk_public_key(), kid),
            private_jwk: jwk_value(pair.to_jwk_key_pair(), kid),
            pem: pair.to_pem_private_key(),
        }
    }

    pub(crate) fn ed25519(kid: Option<&str>) -> ClientKey {
        use josekit::jwk::alg::ed::EdCurve;
        use josekit::jws::EdDSA;
        let pair = EdDSA.generate_key_pair(EdCurve::Ed25519).unwrap();
        let signer = EdDSA.signer_from_der(pair.to_der_private_key()).unwrap();
        ClientKey::from_pair("EdDSA", kid, &pair, Box::new(signer))
    }

    pub(crate) fn p256(kid: Option<&str>) -> ClientKey {
        use josekit::jws::ES256;
        let pair = ES256.generate_key_pair().unwrap();
        let signer = ES256.signer_from_der(pair.to_der_private_key()).unwrap();
        ClientKey::from_pair("ES256", kid, &pair, Box::new(signer))
    }

    /// An RSA key of 2048 bits signing with `RS256` or `PS256`.
    pub(crate) fn rsa(alg: &'static str, kid: Option<&str>) -> ClientKey {
        use josekit::jws::{PS256, RS256};
        let pair = RS256.generate_key_pair(2048).unwrap();
        let der = pair.to_der_private_key();
        let signer: Box<dyn JwsSigner> = match alg {
            "PS256" => Box::new(PS256.signer_from_der(&der).unwrap()),
            _ => Box::new(RS256.signer_from_der(&der).unwrap()),
        };
        ClientKey::from_pair(alg, kid, &pair, signer)
    }

    /// The public JWK.
    pub(crate) fn jwk(&self) -> Value {
        self.public.clone()
    }

    /// A JWK Set of this key alone.
    pub(crate) fn set(&self) -> Value {
        json!({"keys": [self.jwk()]})
    }

    /// A compact JWS of `header` and `claims`, signed with this key whatever `header` says.
    pub(crate) fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.signer.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// The header this key signs with: its `alg` and `kid`.
    pub(crate) fn header(&self) -> Value {
        match &self.kid {
            Some(kid) => json!({"alg": self.alg, "kid": kid, "typ": "JWT"}),
            None => json!({"alg": self.alg, "typ": "JWT"}),
        }
    }

    /// A good assertion of `client_id` for `aud`, made at `now`.
    pub(crate) fn assertion(&self, client_id: &str, aud: Value, now: i64) -> String {
        self.sign(&self.header(), &claims_for(client_id, aud, now))
    }
}

/// The claims of a good assertion (RFC 7523 §3): iss = sub = the client, a fresh jti, exp
/// five minutes ahead.
pub(crate) fn claims_for(client_id: &str, aud: Value, now: i64) -> Value {
    json!({
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "jti": uuid::Uuid::new_v4().to_string(),
        "iat": now,
        "exp": now + 300,
    })
}

/// The form parameters of an assertion (RFC 7521 §4.2).
fn with_assertion<'a>(assertion: &'a str, form: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = form.to_vec();
    all.push(("client_assertion_type", JWT_BEARER));
    all.push(("client_assertion", assertion));
    all
}

async fn post_form(app: &TestApp, path: &str, form: &[(&str, &str)]) -> Response {
    app.http
        .post(app.url(path))
        .form(form)
        .send()
        .await
        .unwrap()
}

async fn json_of(res: Response, status: StatusCode) -> Value {
    let got = res.status();
    let text = res.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

/// Asserts an `invalid_client` refusal whose description contains `needle` and not the
/// assertion (nor its signature).
async fn refused(res: Response, needle: &str, assertion: &str) {
    let status = res.status();
    assert!(
        res.headers().contains_key("www-authenticate"),
        "a 401 challenges"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{needle}: {body}");
    assert_eq!(body["error"], "invalid_client", "{needle}: {body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.contains(needle),
        "wanted {needle:?}: {description}"
    );
    if let Some(signature) = assertion.rsplit('.').next().filter(|s| s.len() > 8) {
        assert!(
            !description.contains(signature),
            "the description echoes the assertion: {description}"
        );
    }
}

/// The value of one series of a counter.
fn series(metrics: &str, name: &str, labels: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}{{{labels}}} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn refusals(metrics: &str, reason: &str) -> u64 {
    series(
        metrics,
        "tokend_client_assertions_total",
        &format!("reason=\"{reason}\",result=\"refused\""),
    )
}

// ---------------------------------------------------------------------------------------------
// A client's jwks_uri: a tiny server that counts its fetches
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
    /// How long the server takes to answer (a slow network, for the single-flight test).
    delay: Duration,
}

/// A `jwks_uri` on 127.0.0.1 that answers what it is told and counts what it is asked.
pub(crate) struct JwksServer {
    addr: std::net::SocketAddr,
    answer: Arc<Mutex<Answer>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    pub(crate) async fn start() -> JwksServer {
        use hyper::server::conn::http1;
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(Answer {
            status: 404,
            body: Vec::new(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (a, f) = (answer.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (a, f) = (a.clone(), f.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        let (a, f) = (a.clone(), f.clone());
                        async move {
                            f.fetch_add(1, Ordering::SeqCst);
                            let answer = a.lock().unwrap().clone();
                            if !answer.delay.is_zero() {
                                tokio::time::sleep(answer.delay).await;
                            }
                            let mut res = hyper::Response::new(Full::new(Bytes::from(answer.body)));
                            *res.status_mut() = hyper::StatusCode::from_u16(answer.status).unwrap();
                            for (k, v) in answer.headers {
                                res.headers_mut().insert(
                                    hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    v.parse().unwrap(),
                                );
                            }
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer {
            addr,
            answer,
            fetches,
            task,
        }
    }

    pub(crate) fn uri(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// Serves a JWK Set of `keys` with `Cache-Control: max-age`.
    pub(crate) fn serve(&self, keys: &[&ClientKey], max_age: u64) {
        let set = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        self.answer_with(
            200,
            set.to_string().into_bytes(),
            &[
                ("content-type", "application/jwk-set+json"),
                ("cache-control", &format!("public, max-age={max_age}")),
            ],
        );
    }

    fn answer_with(&self, status: u16, body: Vec<u8>, headers: &[(&str, &str)]) {
        let mut a = self.answer.lock().unwrap();
        a.status = status;
        a.body = body;
        a.headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    fn slow(&self, delay: Duration) {
        self.answer.lock().unwrap().delay = delay;
    }

    pub(crate) fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// The clients of the tests
// ---------------------------------------------------------------------------------------------

/// The keys of the file's clients.
struct Keys {
    ed: ClientKey,
    es: ClientKey,
    rs: ClientKey,
    ps: ClientKey,
    web: ClientKey,
    tv: ClientKey,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            ed: ClientKey::ed25519(Some("ed-1")),
            es: ClientKey::p256(Some("es-1")),
            // No kid: the client's only key that fits the assertion's alg is used.
            rs: ClientKey::rsa("RS256", None),
            ps: ClientKey::rsa("PS256", Some("ps-1")),
            web: ClientKey::p256(Some("web-1")),
            tv: ClientKey::ed25519(Some("tv-1")),
        }
    }
}

fn pk_client(id: &str, key: &ClientKey, extra: Value) -> Value {
    let mut c = json!({
        "client_id": id,
        "grant_types": ["client_credentials"],
        "scopes": ["read", "write"],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": key.set(),
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn clients(keys: &Keys, extra: &[Value]) -> Value {
    let mut list = vec![
        pk_client("svc-ed", &keys.ed, json!({})),
        pk_client(
            "svc-es",
            &keys.es,
            json!({"token_endpoint_auth_signing_alg": "ES256"}),
        ),
        pk_client("svc-rs", &keys.rs, json!({})),
        pk_client("svc-ps", &keys.ps, json!({})),
        pk_client(
            "web",
            &keys.web,
            json!({"grant_types": ["authorization_code", "password", "refresh_token"],
                   "redirect_uris": [REDIRECT], "first_party": true,
                   "client_name": "Example Signed App"}),
        ),
        pk_client(
            "tv",
            &keys.tv,
            json!({"grant_types": [DEVICE_GRANT, "refresh_token"], "first_party": true,
                   "client_name": "Example Signed TV"}),
        ),
        json!({"client_id": "secret-svc", "client_secret": SECRET,
               "grant_types": ["client_credentials"], "scopes": ["read"]}),
        json!({"client_id": "public-app", "grant_types": ["password", "refresh_token"]}),
    ];
    list.extend_from_slice(extra);
    Value::Array(list)
}

async fn spawn(mode: Mode, keys: &Keys) -> App {
    spawn_with_clients(mode, &clients(keys, &[])).await
}

/// A client of `jwks_uri` whose id is `id`.
fn remote_client(id: &str, uri: &str) -> Value {
    json!({"client_id": id, "grant_types": ["client_credentials"], "scopes": ["read"],
           "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": uri})
}

async fn client_credentials(app: &TestApp, assertion: &str) -> Response {
    post_form(
        app,
        "/oauth/token",
        &with_assertion(assertion, &[("grant_type", "client_credentials")]),
    )
    .await
}

async fn token_ok(app: &TestApp, assertion: &str) -> Value {
    json_of(client_credentials(app, assertion).await, StatusCode::OK).await
}

/// Introspects `token` as `client` with a fresh assertion of `key`.
async fn introspect(app: &TestApp, client: &str, key: &ClientKey, token: &str) -> Value {
    let a = key.assertion(client, json!(ISSUER), app.clock.now());
    let res = post_form(
        app,
        "/oauth/introspect",
        &with_assertion(&a, &[("token", token)]),
    )
    .await;
    json_of(res, StatusCode::OK).await
}

// ---------------------------------------------------------------------------------------------
// Successes
// ---------------------------------------------------------------------------------------------

/// EdDSA, ES256, RS256 (a key without kid) and PS256 clients each get a client_credentials
/// token, naming the server by its issuer, its token endpoint or both in an array, with and
/// without `client_id`; the token is the client's own.
async fn client_credentials_with_an_assertion_for_each_key_type(mode: Mode) {
    let keys = Keys::new();
    let app = spawn(mode, &keys).await;
    let now = app.clock.now();
    for (client, key, aud) in [
        ("svc-ed", &keys.ed, json!(ISSUER)),
        ("svc-es", &keys.es, json!(TOKEN_ENDPOINT)),
        (
            "svc-rs",
            &keys.rs,
            json!(["https://other.example", TOKEN_ENDPOINT]),
        ),
        ("svc-ps", &keys.ps, json!([ISSUER])),
    ] {
        let a = key.assertion(client, aud, now);
        let body = token_ok(&app, &a).await;
        assert_eq!(body["token_type"], "Bearer", "{body}");
        assert_eq!(body["scope"], "read write", "{body}");
        assert!(body.get("refresh_token").is_none());
        let token = body["access_token"].as_str().unwrap();
        let c = claims(token);
        assert_eq!(c["sub"], client, "{c}");
        assert_eq!(c["client_id"], client, "{c}");
        let i = introspect(&app, client, key, token).await;
        assert_eq!(i["active"], true, "{i}");
        assert_eq!(i["client_id"], client, "{i}");
    }
    // With client_id as well (as openid-client sends it), and a scope.
    let a = keys.ed.assertion("svc-ed", json!(ISSUER), now);
    let res = post_form(
        &app,
        "/oauth/token",
        &with_assertion(
            &a,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "svc-ed"),
                ("scope", "read"),
            ],
        ),
    )
    .await;
    assert_eq!(json_of(res, StatusCode::OK).await["scope"], "read");
    // Within the leeway: exp 20 s past, exp exactly 60 minutes ahead (Authlib's default),
    // iat 20 s ahead; a fractional NumericDate.
    for claims in [
        json!({"exp": now - 20}),
        json!({"exp": now + 3600}),
        json!({"iat": now + 20, "nbf": now + 20}),
        json!({"exp": (now + 100) as f64 + 0.5}),
    ] {
        let mut c = claims_for("svc-ed", json!(ISSUER), now);
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        token_ok(&app, &keys.ed.sign(&keys.ed.header(), &c)).await;
    }
    app.app.stop().await;
}

/// The password, refresh, authorization code (pushed first) and device grants, revocation,
/// introspection of a refresh token, PAR and device authorization, each authenticated by an
/// assertion; an assertion may name the endpoint it is sent to, but not another one.
async fn every_grant_and_endpoint_takes_an_assertion(mode: Mode) {
    let keys = Keys::new();
    let app = spawn(mode, &keys).await;
    let key = &keys.web;
    let fresh = |aud: &str| key.assertion("web", json!(aud), app.clock.now());

    // Password grant, then refresh with an assertion.
    let a = fresh(ISSUER);
    let res = post_form(
        &app,
        "/oauth/token",
        &with_assertion(
            &a,
            &[
                ("grant_type", "password"),
                ("username", "ada"),
                ("password", PASSWORD),
            ],
        ),
    )
    .await;
    let pair = json_of(res, StatusCode::OK).await;
    let refresh = pair["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        claims(pair["access_token"].as_str().unwrap())["client_id"],
        "web"
    );
    let a = fresh(TOKEN_ENDPOINT);
    let res = post_form(
        &app,
        "/oauth/token",
        &with_assertion(
            &a,
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        ),
    )
    .await;
    let pair = json_of(res, StatusCode::OK).await;
    let refresh = pair["refresh_token"].as_str().unwrap().to_string();
    let access = pair["access_token"].as_str().unwrap().to_string();
    // The seed refresh route authenticates no client: a private_key_jwt client is confidential.
    let seed = app.refresh(&refresh).await;
    assert_eq!(seed.status(), StatusCode::UNAUTHORIZED);

    // Introspection of the refresh token, with aud the introspection endpoint itself.
    let a = fresh(&format!("{ISSUER}/oauth/introspect"));
    let res = post_form(
        &app,
        "/oauth/introspect",
        &with_assertion(&a, &[("token", &refresh)]),
    )
    .await;
    let i = json_of(res, StatusCode::OK).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["token_use"], "refresh_token", "{i}");

    // Revocation of the access token.
    let a = fresh(&format!("{ISSUER}/oauth/revoke"));
    let res = post_form(
        &app,
        "/oauth/revoke",
        &with_assertion(&a, &[("token", &access)]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(introspect(&app, "web", key, &access).await["active"], false);

    // An assertion made for another endpoint of tokend is refused here.
    let a = fresh(&format!("{ISSUER}/oauth/revoke"));
    refused(
        post_form(
            &app,
            "/oauth/introspect",
            &with_assertion(&a, &[("token", &refresh)]),
        )
        .await,
        "aud",
        &a,
    )
    .await;

    // A pushed authorization request, the browser's sign-in, and the code redeemed with an
    // assertion.
    let a = fresh(&format!("{ISSUER}/oauth/par"));
    let res = post_form(
        &app,
        "/oauth/par",
        &with_assertion(
            &a,
            &[
                ("client_id", "web"),
                ("response_type", "code"),
                ("redirect_uri", REDIRECT),
                ("scope", "openid"),
                ("state", "st-1"),
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "S256"),
            ],
        ),
    )
    .await;
    let pushed = json_of(res, StatusCode::CREATED).await;
    let request_uri = pushed["request_uri"].as_str().unwrap();
    let q =
        serde_urlencoded::to_string([("client_id", "web"), ("request_uri", request_uri)]).unwrap();
    let res = app.get(&format!("/oauth/authorize?{q}")).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = app.sign_in(&location(&res), PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let back = location(&res);
    assert!(back.starts_with(REDIRECT), "{back}");
    let code = query_of(&back)["code"].clone();
    let a = fresh(ISSUER);
    let res = post_form(
        &app,
        "/oauth/token",
        &with_assertion(
            &a,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
            ],
        ),
    )
    .await;
    let tokens = json_of(res, StatusCode::OK).await;
    assert!(tokens["id_token"].is_string(), "{tokens}");
    assert_eq!(claims(tokens["id_token"].as_str().unwrap())["aud"], "web");

    // Device authorization and the device grant.
    let tv = |aud: &str| keys.tv.assertion("tv", json!(aud), app.clock.now());
    let a = tv(&format!("{ISSUER}/oauth/device_authorization"));
    let res = post_form(
        &app,
        "/oauth/device_authorization",
        &with_assertion(&a, &[("scope", "openid")]),
    )
    .await;
    let d = json_of(res, StatusCode::OK).await;
    crate::device::approve_as(&app, &d, "ada", PASSWORD).await;
    let a = tv(ISSUER);
    let res = post_form(
        &app,
        "/oauth/token",
        &with_assertion(
            &a,
            &[
                ("grant_type", DEVICE_GRANT),
                ("device_code", d["device_code"].as_str().unwrap()),
            ],
        ),
    )
    .await;
    let tokens = json_of(res, StatusCode::OK).await;
    assert_eq!(
        claims(tokens["access_token"].as_str().unwrap())["client_id"],
        "tv"
    );
    app.app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------------

/// Each way an assertion can be wrong is `invalid_client` with a description of what, counted
/// by reason; no refusal echoes the assertion.
async fn every_refusal_is_invalid_client_with_its_reason(mode: Mode) {
    let keys = Keys::new();
    let app = spawn(mode, &keys).await;
    let now = app.clock.now();
    let ed = &keys.ed;
    let good = || claims_for("svc-ed", json!(ISSUER), now);
    let with = |changes: Value| {
        let mut c = good();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let stranger = ClientKey::ed25519(Some("ed-1"));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong key",
            stranger.sign(&ed.header(), &good()),
            "signature does not verify",
        ),
        (
            "unknown kid",
            ed.sign(&json!({"alg": "EdDSA", "kid": "ed-9"}), &good()),
            "no key of the client has the client assertion's kid",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(json!({"alg": "none"}).to_string()),
                URL_SAFE_NO_PAD.encode(good().to_string())
            ),
            "none and HMAC algorithms are refused",
        ),
        (
            "alg HS256",
            {
                let input = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": "ed-1"}).to_string()),
                    URL_SAFE_NO_PAD.encode(good().to_string())
                );
                let key = ring::hmac::Key::new(
                    ring::hmac::HMAC_SHA256,
                    ed.jwk()["x"].as_str().unwrap().as_bytes(),
                );
                let tag = ring::hmac::sign(&key, input.as_bytes());
                format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
            },
            "none and HMAC algorithms are refused",
        ),
        (
            "an alg the key does not fit",
            ed.sign(&json!({"alg": "ES256", "kid": "ed-1"}), &good()),
            "not for the client assertion's alg",
        ),
        (
            "no kid and no key that fits",
            ed.sign(
                &json!({"alg": "EdDSA"}),
                &claims_for("svc-rs", json!(ISSUER), now),
            ),
            "no key of the client fits the client assertion's alg",
        ),
        (
            "iss is not sub",
            ed.sign(&ed.header(), &with(json!({"iss": "svc-es"}))),
            "iss and sub of the client assertion must both be the client id",
        ),
        (
            "another client's key",
            keys.es.assertion("svc-ed", json!(ISSUER), now),
            "no key of the client has the client assertion's kid",
        ),
        (
            "wrong aud",
            ed.sign(
                &ed.header(),
                &with(json!({"aud": "https://elsewhere.example/token"})),
            ),
            "aud must name this server",
        ),
        (
            "aud of another endpoint",
            ed.sign(
                &ed.header(),
                &with(json!({"aud": format!("{ISSUER}/oauth/par")})),
            ),
            "aud must name this server",
        ),
        (
            "expired",
            ed.sign(&ed.header(), &with(json!({"exp": now - 31}))),
            "has expired",
        ),
        (
            "exp too far",
            ed.sign(&ed.header(), &with(json!({"exp": now + 3600 + 31}))),
            "more than 60 minutes ahead",
        ),
        (
            "no exp",
            ed.sign(&ed.header(), &with(json!({"exp": null}))),
            "needs exp",
        ),
        (
            "no jti",
            ed.sign(&ed.header(), &with(json!({"jti": null}))),
            "needs a jti",
        ),
        (
            "nbf ahead",
            ed.sign(&ed.header(), &with(json!({"nbf": now + 60}))),
            "nbf is in the future",
        ),
        (
            "iat ahead",
            ed.sign(&ed.header(), &with(json!({"iat": now + 60}))),
            "iat is in the future",
        ),
        ("not a JWT", "not-a-jwt".to_string(), "not a signed JWT"),
        (
            "crit",
            ed.sign(
                &json!({"alg": "EdDSA", "kid": "ed-1", "crit": ["exp"]}),
                &good(),
            ),
            "crit",
        ),
        (
            "unknown client",
            ed.assertion("nobody", json!(ISSUER), now),
            "unknown client",
        ),
        (
            "for a secret client",
            ed.assertion("secret-svc", json!(ISSUER), now),
            "this client does not use private_key_jwt: it authenticates with its secret",
        ),
        (
            "for a public client",
            ed.assertion("public-app", json!(ISSUER), now),
            "a public client",
        ),
        (
            "the wrong alg for the client",
            {
                let other = ClientKey::ed25519(Some("es-1"));
                other.assertion("svc-es", json!(ISSUER), now)
            },
            "this client signs its assertions with ES256",
        ),
    ];
    for (what, assertion, needle) in &cases {
        eprintln!("refusal: {what}");
        refused(client_credentials(&app, assertion).await, needle, assertion).await;
    }

    // A replayed assertion (sequentially): the first use works, the second is refused.
    let a = ed.assertion("svc-ed", json!(ISSUER), now);
    token_ok(&app, &a).await;
    refused(client_credentials(&app, &a).await, "used before", &a).await;
    // The same jti from another client is that client's own.
    let mut c = claims_for("svc-es", json!(ISSUER), now);
    let jti: Value = serde_json::from_str(
        &String::from_utf8(
            URL_SAFE_NO_PAD
                .decode(a.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    c["jti"] = jti["jti"].clone();
    token_ok(&app, &keys.es.sign(&keys.es.header(), &c)).await;

    // client_id naming another client than the assertion.
    let a = ed.assertion("svc-ed", json!(ISSUER), now);
    let res = post_form(
        &app,
        "/oauth/token",
        &with_assertion(
            &a,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "svc-es"),
            ],
        ),
    )
    .await;
    refused(res, "client_id is not the client the assertion is for", &a).await;

    // A wrong client_assertion_type, or none.
    let a = ed.assertion("svc-ed", json!(ISSUER), now);
    let res = post_form(
        &app,
        "/oauth/token",
        &[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
            ),
            ("client_assertion", &a),
        ],
    )
    .await;
    refused(res, "client_assertion_type must be", &a).await;
    let res = post_form(
        &app,
        "/oauth/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion", &a),
        ],
    )
    .await;
    refused(res, "needs client_assertion_type", &a).await;

    // A private_key_jwt client never authenticates with a secret, nor with its id alone.
    for res in [
        post_form(
            &app,
            "/oauth/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "svc-ed"),
                ("client_secret", SECRET),
            ],
        )
        .await,
        app.http
            .post(app.url("/oauth/token"))
            .basic_auth("svc-ed", Some(SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap(),
        post_form(
            &app,
            "/oauth/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "svc-ed"),
            ],
        )
        .await,
    ] {
        refused(res, "this client authenticates with private_key_jwt", "").await;
    }
    // An assertion and a secret in one request: one method per request (RFC 6749 §2.3).
    let a = ed.assertion("svc-ed", json!(ISSUER), now);
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("svc-ed", Some(SECRET))
        .form(&with_assertion(&a, &[("grant_type", "client_credentials")]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "invalid_request");

    // Every reason was counted.
    let m = app.metrics_text().await;
    for reason in [
        "signature",
        "kid",
        "key",
        "alg",
        "iss",
        "aud",
        "exp",
        "jti",
        "iat",
        "malformed",
        "client",
        "method",
        "replay",
        "type",
    ] {
        assert!(refusals(&m, reason) >= 1, "{reason} counted: {m}");
    }
    assert!(
        series(
            &m,
            "tokend_client_assertions_total",
            "reason=\"none\",result=\"accepted\""
        ) >= 2
    );
    app.app.stop().await;
}

/// One assertion sent many times at once (over two instances in production mode): exactly one
/// request gets a token.
async fn parallel_replays_of_one_assertion_let_exactly_one_through(mode: Mode) {
    let keys = Keys::new();
    let file = write_clients_file(&clients(&keys, &[]));
    let path = file.path().to_string_lossy().into_owned();
    let apps = instances(mode, |env| {
        env.insert("TOKEND_CLIENTS_FILE".into(), path.clone());
    })
    .await;
    let a = keys
        .es
        .assertion("svc-es", json!(TOKEN_ENDPOINT), apps[0].clock.now());
    let answers = join_all((0..16).map(|i| client_credentials(&apps[i % apps.len()], &a))).await;
    let mut ok = 0;
    for res in answers {
        match res.status() {
            StatusCode::OK => ok += 1,
            StatusCode::UNAUTHORIZED => {
                let body: Value = res.json().await.unwrap();
                assert!(
                    body["error_description"]
                        .as_str()
                        .unwrap()
                        .contains("used before"),
                    "{body}"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 1, "exactly one use of the assertion");
    for app in apps {
        app.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// jwks_uri
// ---------------------------------------------------------------------------------------------

/// A client publishing its keys: fetched once and cached by `Cache-Control`; a new `kid`
/// refetches once a minute has passed since the last fetch, and not again within the minute;
/// a rotation is picked up; a stale set is fetched again; a server that fails leaves the set
/// fetched before in use.
async fn a_jwks_uri_is_cached_refetched_for_a_new_kid_once_a_minute_and_kept_on_failure(
    mode: Mode,
) {
    let keys = Keys::new();
    let server = JwksServer::start().await;
    let k1 = ClientKey::ed25519(Some("k1"));
    let k2 = ClientKey::p256(Some("k2"));
    let k3 = ClientKey::ed25519(Some("k3"));
    server.serve(&[&k1], 600);
    let app = spawn_with_clients(
        mode,
        &clients(&keys, &[remote_client("remote", &server.uri())]),
    )
    .await;
    let use_key = |key: &ClientKey| key.assertion("remote", json!(ISSUER), app.clock.now());

    token_ok(&app, &use_key(&k1)).await;
    assert_eq!(server.fetches(), 1);
    token_ok(&app, &use_key(&k1)).await;
    token_ok(&app, &use_key(&k1)).await;
    assert_eq!(server.fetches(), 1, "cached");

    // The client rotates. Within a minute of the last fetch the new kid is refused without a
    // fetch; after it, one refetch picks the new key up.
    server.serve(&[&k1, &k2], 600);
    let a = use_key(&k2);
    refused(client_credentials(&app, &a).await, "kid", &a).await;
    assert_eq!(server.fetches(), 1);
    app.clock.advance(Duration::from_secs(60));
    token_ok(&app, &use_key(&k2)).await;
    assert_eq!(server.fetches(), 2, "an unknown kid refetches");
    // A kid the set still lacks: refused, and not fetched again within the minute.
    let a = use_key(&k3);
    refused(client_credentials(&app, &a).await, "kid", &a).await;
    let a = use_key(&k3);
    refused(client_credentials(&app, &a).await, "kid", &a).await;
    assert_eq!(server.fetches(), 2, "at most once a minute");
    app.clock.advance(Duration::from_secs(61));
    let a = use_key(&k3);
    refused(client_credentials(&app, &a).await, "kid", &a).await;
    assert_eq!(server.fetches(), 3, "a minute later it looks again");

    // The old key retired, the set stale: fetched again, and k1 is gone.
    server.serve(&[&k2], 600);
    app.clock.advance(Duration::from_secs(601));
    token_ok(&app, &use_key(&k2)).await;
    assert_eq!(server.fetches(), 4, "a stale set is fetched again");
    let a = use_key(&k1);
    refused(client_credentials(&app, &a).await, "kid", &a).await;
    assert_eq!(server.fetches(), 4);

    // The client's server fails: the set fetched before is kept.
    server.answer_with(500, b"down".to_vec(), &[]);
    app.clock.advance(Duration::from_secs(601));
    token_ok(&app, &use_key(&k2)).await;
    assert_eq!(server.fetches(), 5);
    token_ok(&app, &use_key(&k2)).await;
    assert_eq!(server.fetches(), 5, "a failure is not retried at once");
    // Back up with a short max-age (the floor is a minute).
    server.serve(&[&k2], 5);
    app.clock.advance(Duration::from_secs(11));
    token_ok(&app, &use_key(&k2)).await;
    assert_eq!(server.fetches(), 6);
    app.clock.advance(Duration::from_secs(30));
    token_ok(&app, &use_key(&k2)).await;
    assert_eq!(server.fetches(), 6, "max-age=5 is held a minute at least");
    app.app.stop().await;
}

/// Many requests at once for a client whose keys were never fetched: one fetch serves all.
async fn concurrent_requests_for_an_uncached_client_make_one_fetch(mode: Mode) {
    let keys = Keys::new();
    let server = JwksServer::start().await;
    let key = ClientKey::rsa("RS256", Some("r1"));
    server.serve(&[&key], 600);
    // A slow network: the first fetch is still under way when the others arrive.
    server.slow(Duration::from_millis(300));
    let app = spawn_with_clients(
        mode,
        &clients(&keys, &[remote_client("remote", &server.uri())]),
    )
    .await;
    let now = app.clock.now();
    let assertions: Vec<String> = (0..12)
        .map(|_| key.assertion("remote", json!(ISSUER), now))
        .collect();
    let answers = join_all(assertions.iter().map(|a| client_credentials(&app, a))).await;
    for res in answers {
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(server.fetches(), 1, "one fetch for all");
    app.app.stop().await;
}

/// A `jwks_uri` that cannot be used (nobody listening, too big, not JSON, a redirect, a 404,
/// a private key published) is `invalid_client` saying why, never a 500.
async fn an_unusable_jwks_uri_is_invalid_client_never_a_500(mode: Mode) {
    let keys = Keys::new();
    let key = ClientKey::ed25519(Some("k1"));
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/jwks.json", l.local_addr().unwrap())
    };
    let servers: Vec<(JwksServer, &str)> = vec![
        (JwksServer::start().await, "larger than 65536 bytes"),
        (JwksServer::start().await, "not JSON"),
        (JwksServer::start().await, "redirect"),
        (JwksServer::start().await, "answered 404"),
        (JwksServer::start().await, "private members"),
    ];
    servers[0].0.answer_with(200, vec![b' '; 70 * 1024], &[]);
    servers[1].0.answer_with(
        200,
        b"<html>keys</html>".to_vec(),
        &[("content-type", "text/html")],
    );
    servers[2].0.answer_with(
        302,
        Vec::new(),
        &[("location", "https://client.example/jwks")],
    );
    servers[3].0.answer_with(404, Vec::new(), &[]);
    let mut private = key.private_jwk.clone();
    private["kid"] = json!("k1");
    servers[4].0.answer_with(
        200,
        json!({"keys": [private]}).to_string().into_bytes(),
        &[],
    );
    let mut extra = vec![remote_client("dead", &dead)];
    for (i, (s, _)) in servers.iter().enumerate() {
        extra.push(remote_client(&format!("remote-{i}"), &s.uri()));
    }
    let app = spawn_with_clients(mode, &clients(&keys, &extra)).await;
    let a = key.assertion("dead", json!(ISSUER), app.clock.now());
    refused(client_credentials(&app, &a).await, "cannot connect", &a).await;
    for (i, (_, why)) in servers.iter().enumerate() {
        let a = key.assertion(&format!("remote-{i}"), json!(ISSUER), app.clock.now());
        refused(client_credentials(&app, &a).await, why, &a).await;
    }
    assert!(refusals(&app.metrics_text().await, "jwks") >= 6);
    // Without a set, a failure is retried after a pause, and a repaired server is used.
    let repaired = &servers[3].0;
    repaired.serve(&[&key], 600);
    app.clock.advance(Duration::from_secs(10));
    token_ok(
        &app,
        &key.assertion("remote-3", json!(ISSUER), app.clock.now()),
    )
    .await;
    app.app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Registration, discovery, metrics
// ---------------------------------------------------------------------------------------------

/// Dynamic registration (RFC 7591) of a private_key_jwt client: no secret, its keys in the
/// answer; bad keys refused as `invalid_client_metadata`; open registration cannot make one;
/// an RFC 7592 update rotates the key.
async fn a_registered_client_authenticates_with_its_keys_and_rotates_them(mode: Mode) {
    use crate::registration::{initial_token, register, register_ok, spawn_reg};
    let app = spawn_reg(mode, "token").await;
    let token = initial_token(&app, &[]).await;
    let old = ClientKey::p256(Some("old"));
    let info = register_ok(
        &app,
        Some(&token),
        &json!({"grant_types": ["client_credentials"], "response_types": [],
                "token_endpoint_auth_method": "private_key_jwt", "jwks": old.set(),
                "token_endpoint_auth_signing_alg": "ES256", "client_name": "Signed Service"}),
    )
    .await;
    assert!(info.get("client_secret").is_none(), "{info}");
    assert!(info.get("client_secret_expires_at").is_none(), "{info}");
    assert_eq!(info["token_endpoint_auth_method"], "private_key_jwt");
    assert_eq!(info["jwks"], old.set());
    assert_eq!(info["token_endpoint_auth_signing_alg"], "ES256");
    let id = info["client_id"].as_str().unwrap().to_string();
    token_ok(&app, &old.assertion(&id, json!(ISSUER), app.clock.now())).await;

    // Rotation through RFC 7592: the new key works, the old one no longer does.
    let new = ClientKey::p256(Some("new"));
    let path = info["registration_client_uri"]
        .as_str()
        .unwrap()
        .strip_prefix(ISSUER)
        .unwrap()
        .to_string();
    let res = app
        .put_bearer(
            &path,
            info["registration_access_token"].as_str().unwrap(),
            &json!({"client_id": id, "grant_types": ["client_credentials"], "response_types": [],
                    "token_endpoint_auth_method": "private_key_jwt", "jwks": new.set()}),
        )
        .await;
    let updated = json_of(res, StatusCode::OK).await;
    assert_eq!(updated["jwks"], new.set());
    token_ok(&app, &new.assertion(&id, json!(ISSUER), app.clock.now())).await;
    let a = old.assertion(&id, json!(ISSUER), app.clock.now());
    refused(client_credentials(&app, &a).await, "kid", &a).await;
    // It cannot turn into a client with a secret.
    let res = app
        .put_bearer(
            &path,
            info["registration_access_token"].as_str().unwrap(),
            &json!({"client_id": id, "grant_types": ["client_credentials"], "response_types": [],
                    "token_endpoint_auth_method": "client_secret_basic"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // Bad metadata, each refused with what is wrong.
    let mut private = old.private_jwk.clone();
    private["kid"] = json!("p");
    for (body, needle) in [
        (json!({"jwks": {"keys": [private]}}), "private members"),
        (
            json!({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}),
            "symmetric",
        ),
        (
            json!({"jwks": old.set(), "jwks_uri": "https://client.example/jwks"}),
            "not both",
        ),
        (json!({}), "jwks"),
        (
            json!({"jwks_uri": "http://client.example/jwks"}),
            "loopback",
        ),
        (
            json!({"jwks": old.set(), "token_endpoint_auth_signing_alg": "EdDSA"}),
            "fits none",
        ),
    ] {
        let mut full = json!({"grant_types": ["client_credentials"], "response_types": [],
                              "token_endpoint_auth_method": "private_key_jwt"});
        for (k, v) in body.as_object().unwrap() {
            full[k] = v.clone();
        }
        let res = register(&app, Some(&token), &full).await;
        let answer = json_of(res, StatusCode::BAD_REQUEST).await;
        assert_eq!(answer["error"], "invalid_client_metadata", "{answer}");
        let d = answer["error_description"].as_str().unwrap();
        assert!(d.contains(needle), "{needle}: {d}");
    }
    app.stop().await;

    // Open registration registers public clients only.
    let app = spawn_reg(mode, "open").await;
    let res = register(
        &app,
        None,
        &json!({"grant_types": ["client_credentials"], "response_types": [],
                "token_endpoint_auth_method": "private_key_jwt", "jwks": old.set()}),
    )
    .await;
    let answer = json_of(res, StatusCode::BAD_REQUEST).await;
    assert_eq!(answer["error"], "invalid_client_metadata", "{answer}");
    app.stop().await;
}

/// A private_key_jwt client is confidential, so it may use token exchange (RFC 8693) as a
/// client with a secret may: the exchanged token names it in `act`.
async fn a_private_key_jwt_client_may_exchange_tokens(mode: Mode) {
    let keys = Keys::new();
    let gateway = ClientKey::p256(Some("gw-1"));
    let app = spawn_with_clients(
        mode,
        &clients(
            &keys,
            &[pk_client(
                "gateway",
                &gateway,
                json!({"grant_types": ["client_credentials",
                                       "urn:ietf:params:oauth:grant-type:token-exchange"],
                       "scopes": ["read"],
                       "token_exchange_audiences": ["https://orders.example/"]}),
            )],
        ),
    )
    .await;
    let res = post_form(
        &app,
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("client_id", "public-app"),
            ("username", "ada"),
            ("password", PASSWORD),
        ],
    )
    .await;
    let user = json_of(res, StatusCode::OK).await;
    let subject = user["access_token"].as_str().unwrap();
    let a = gateway.assertion("gateway", json!(ISSUER), app.clock.now());
    let res = post_form(
        &app,
        "/oauth/token",
        &with_assertion(
            &a,
            &[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", subject),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:access_token",
                ),
                ("audience", "https://orders.example/"),
            ],
        ),
    )
    .await;
    let exchanged = json_of(res, StatusCode::OK).await;
    let c = claims(exchanged["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], claims(subject)["sub"], "{c}");
    assert_eq!(c["aud"], "https://orders.example/", "{c}");
    assert_eq!(
        c["act"],
        json!({"sub": "gateway", "client_id": "gateway"}),
        "{c}"
    );
    app.app.stop().await;
}

/// The replay store, switchable off: while it cannot answer, every use of it fails.
struct Switchable {
    inner: Arc<dyn tokend::store::ReplayStore>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl tokend::store::ReplayStore for Switchable {
    async fn first_use(&self, key: &str, ttl_ms: i64) -> Result<bool, tokend::store::StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(tokend::store::StoreError::Unavailable {
                store: "replay",
                message: "down".into(),
            });
        }
        self.inner.first_use(key, ttl_ms).await
    }
}

/// A replay store that cannot answer fails closed: the request is 503, no token is issued, and
/// the assertion, never recorded, still works once the store is back (once).
async fn an_assertion_is_never_accepted_unrecorded(mode: Mode) {
    let keys = Keys::new();
    let file = write_clients_file(&clients(&keys, &[]));
    let (mut env, dir) = test_env(mode);
    env.insert(
        "TOKEND_CLIENTS_FILE".into(),
        file.path().to_string_lossy().into_owned(),
    );
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let switch = down.clone();
    let app = spawn_env_with_backends(
        mode,
        env,
        dir,
        tokend::clock::ManualClock::starting_now(),
        move |mut b| {
            b.replay = Arc::new(Switchable {
                inner: b.replay,
                down: switch,
            });
            b
        },
    )
    .await;
    let a = keys.ed.assertion("svc-ed", json!(ISSUER), app.clock.now());
    let res = client_credentials(&app, &a).await;
    let body = json_of(res, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(body.get("access_token").is_none(), "{body}");
    down.store(false, Ordering::SeqCst);
    token_ok(&app, &a).await;
    refused(client_credentials(&app, &a).await, "used before", &a).await;
    app.stop().await;
}

/// Discovery lists the method and its algorithms; every series of the metric exists from the
/// start.
async fn discovery_and_metrics_know_private_key_jwt(mode: Mode) {
    let app = spawn_app(mode).await;
    for path in DISCOVERY_DOCUMENTS {
        let d = app.get_json(path).await;
        for endpoint in ["token", "revocation", "introspection"] {
            let methods = &d[format!("{endpoint}_endpoint_auth_methods_supported")];
            assert!(
                methods
                    .as_array()
                    .unwrap()
                    .contains(&json!("private_key_jwt")),
                "{path} {endpoint}: {methods}"
            );
            assert_eq!(
                d[format!("{endpoint}_endpoint_auth_signing_alg_values_supported")],
                json!(["ES256", "EdDSA", "RS256", "PS256"]),
                "{path} {endpoint}"
            );
        }
    }
    let m = app.metrics_text().await;
    let lines: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("tokend_client_assertions_total{"))
        .collect();
    assert_eq!(lines.len(), 16, "{lines:?}");
    assert!(lines.iter().all(|l| l.ends_with(" 0")), "{lines:?}");
    app.stop().await;
}

/// `tokend clients create --jwks FILE` stores a private_key_jwt client in MongoDB (no secret)
/// that then authenticates with its key; bad keys stop the command with what is wrong
/// (production mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_cli_creates_a_private_key_jwt_client() {
    use crate::oauth::{listed_client, tokend_cli, tokend_cli_ok};
    let (env, _) = test_env(Mode::Production);
    let key = ClientKey::ed25519(Some("cli-1"));
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, key.set().to_string()).unwrap();
    let out = tokend_cli_ok(
        &env,
        &[
            "clients",
            "create",
            "--id",
            "cli-signed",
            "--grant",
            "client_credentials",
            "--scope",
            "read",
            "--jwks",
            jwks.to_str().unwrap(),
            "--auth-signing-alg",
            "EdDSA",
            "--json",
        ],
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["client_id"], "cli-signed");
    assert!(created["client_secret"].is_null(), "{created}");
    let (row, _) = listed_client(&env, "cli-signed");
    assert_eq!(
        row["token_endpoint_auth_method"], "private_key_jwt",
        "{row}"
    );
    assert_eq!(row["confidential"], true, "{row}");

    // A published set, and refusals.
    let out = tokend_cli_ok(
        &env,
        &[
            "clients",
            "create",
            "--id",
            "cli-remote",
            "--grant",
            "client_credentials",
            "--jwks-uri",
            "https://svc.example/.well-known/jwks.json",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no secret"), "{stdout}");
    let private = dir.path().join("private.json");
    std::fs::write(
        &private,
        json!({"keys": [key.private_jwk.clone()]}).to_string(),
    )
    .unwrap();
    for (args, needle) in [
        (vec!["--jwks", private.to_str().unwrap()], "private members"),
        (vec!["--jwks-uri", "http://svc.example/jwks"], "loopback"),
        (
            vec!["--jwks", jwks.to_str().unwrap(), "--public"],
            "cannot be used with",
        ),
    ] {
        let mut all = vec!["clients", "create", "--grant", "client_credentials"];
        all.extend(args);
        let out = tokend_cli(&env, &all);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }

    let app = spawn_env(
        Mode::Production,
        env.clone(),
        None,
        tokend::clock::ManualClock::starting_now(),
    )
    .await;
    let body = token_ok(
        &app,
        &key.assertion("cli-signed", json!(ISSUER), app.clock.now()),
    )
    .await;
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["sub"],
        "cli-signed"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Real client libraries
// ---------------------------------------------------------------------------------------------

/// Authlib's `PrivateKeyJWT` (RS256, its default; `aud` the token endpoint) with
/// `OAuth2Session` gets a client_credentials token, introspects and revokes it; the client's
/// keys are published at a `jwks_uri`.
async fn authlib_gets_a_token_with_private_key_jwt(mode: Mode) {
    use crate::interop_rp::{run_script, tools_or_skip};
    let Some(tools) = tools_or_skip() else {
        return;
    };
    let key = ClientKey::rsa("RS256", Some("authlib-1"));
    let server = JwksServer::start().await;
    server.serve(&[&key], 300);
    let (app, issuer, _file) = spawn_at_own_address(
        mode,
        &json!([remote_client("authlib-svc", &server.uri())]),
        |_| {},
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("key.pem");
    std::fs::write(&pem, &key.pem).unwrap();
    let summary = run_script(
        &tools.python,
        "tests/rp/authlib_private_key_jwt.py",
        &[
            &issuer,
            "authlib-svc",
            pem.to_str().unwrap(),
            "authlib-1",
            "read",
        ],
        &[],
    )
    .await;
    assert_eq!(summary["library"], "authlib", "{summary}");
    let token = summary["access_token"].as_str().unwrap();
    let c = claims(token);
    assert_eq!(c["sub"], "authlib-svc", "{c}");
    assert_eq!(c["client_id"], "authlib-svc", "{c}");
    assert_eq!(c["iss"], issuer.as_str(), "{c}");
    assert_eq!(summary["scope"], "read", "{summary}");
    assert_eq!(summary["active"], true, "{summary}");
    assert_eq!(summary["active_after_revocation"], false, "{summary}");
    assert_eq!(server.fetches(), 1, "fetched once, then cached");
    let m = app.metrics_text().await;
    assert_eq!(
        series(
            &m,
            "tokend_client_assertions_total",
            "reason=\"none\",result=\"accepted\""
        ),
        4,
        "token, introspection, revocation, introspection: each with a new assertion"
    );
    app.stop().await;
}

/// openid-client's `PrivateKeyJwt` (ES256, `aud` the issuer, `client_id` in the body) from
/// discovery: a client_credentials token, introspected and revoked; the keys inline.
async fn openid_client_gets_a_token_with_private_key_jwt(mode: Mode) {
    use crate::interop_rp::{run_script, tools_or_skip};
    let Some(tools) = tools_or_skip() else {
        return;
    };
    let key = ClientKey::p256(Some("node-1"));
    let (app, issuer, _file) = spawn_at_own_address(
        mode,
        &json!([{"client_id": "node-svc", "grant_types": ["client_credentials"],
                 "scopes": ["read", "write"], "token_endpoint_auth_method": "private_key_jwt",
                 "jwks": key.set(), "token_endpoint_auth_signing_alg": "ES256"}]),
        |_| {},
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let jwk = dir.path().join("key.json");
    std::fs::write(&jwk, key.private_jwk.to_string()).unwrap();
    let summary = run_script(
        &PathBuf::from("node"),
        "tests/rp/openid_client_private_key_jwt.mjs",
        &[&issuer, "node-svc", jwk.to_str().unwrap(), "read write"],
        &[("RP_NODE_MODULES", &tools.node_modules)],
    )
    .await;
    assert_eq!(summary["library"], "openid-client", "{summary}");
    let token = summary["access_token"].as_str().unwrap();
    let c = claims(token);
    assert_eq!(c["sub"], "node-svc", "{c}");
    assert_eq!(c["client_id"], "node-svc", "{c}");
    assert_eq!(summary["scope"], "read write", "{summary}");
    assert_eq!(summary["active"], true, "{summary}");
    assert_eq!(summary["active_after_revocation"], false, "{summary}");
    assert!(
        summary["methods_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("private_key_jwt")),
        "{summary}"
    );
    app.stop().await;
}
