//! `tokend_verifier` end to end against a running tokend (`docs/tokens.md`, "Validation"):
//! tokens from a login verify, refresh, tampered and expired tokens do not, and verification
//! holds across a key rotation with the successor prepublished; and the example resource server
//! protects `/hello`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response, Uri};
use reqwest::StatusCode;
use serde_json::Value;
use tokend_verifier::{
    FetchError, Fetcher, HyperFetcher, Verifier, VerifierError, VerifierOptions,
};

use crate::dpop::{ath, DpopKey};
use crate::helpers::{claims, header, spawn_app_with, Mode, TestApp};
use crate::in_both_modes;

#[allow(dead_code, unreachable_pub)]
#[path = "../../examples/resource_server.rs"]
pub(crate) mod resource_server;

/// The issuer of the test apps (`TOKEND_ISSUER` in `helpers::test_env`).
const ISSUER: &str = "http://tokend.test";

/// The production [`HyperFetcher`], with `http://tokend.test` resolved to the test app's
/// address (the stand-in for DNS), counting JWKS fetches.
pub(crate) struct TestNetwork {
    base: String,
    inner: HyperFetcher,
    jwks_fetches: AtomicUsize,
}

impl TestNetwork {
    fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Fetcher for TestNetwork {
    async fn fetch(&self, mut request: Request<()>) -> Result<Response<Bytes>, FetchError> {
        let url = request.uri().to_string();
        let Some(path) = url.strip_prefix(ISSUER) else {
            return Err(format!("no route to {url}").into());
        };
        if path == "/.well-known/jwks.json" {
            self.jwks_fetches.fetch_add(1, Ordering::SeqCst);
        }
        *request.uri_mut() = format!("{}{path}", self.base).parse::<Uri>()?;
        self.inner.fetch(request).await
    }
}

/// A verifier of the app's tokens on the app's clock.
async fn verifier_for(app: &TestApp) -> (Verifier, Arc<TestNetwork>) {
    verifier_for_audience(app, "tokend").await
}

/// A verifier of the app's tokens meant for `audience` (a resource server of its own), on the
/// app's clock.
pub(crate) async fn verifier_for_audience(
    app: &TestApp,
    audience: &str,
) -> (Verifier, Arc<TestNetwork>) {
    let network = Arc::new(TestNetwork {
        base: app.base.clone(),
        inner: HyperFetcher::new(),
        jwks_fetches: AtomicUsize::new(0),
    });
    let options = VerifierOptions::default()
        .with_clock(app.clock.clone())
        .with_fetcher(network.clone());
    let verifier = Verifier::discover(ISSUER, audience, options)
        .await
        .expect("discovery succeeds");
    assert_eq!(
        verifier.jwks_uri(),
        format!("{ISSUER}/.well-known/jwks.json")
    );
    (verifier, network)
}

fn tamper(token: &str) -> String {
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let mut payload: Value = serde_json::from_slice(&engine.decode(&parts[1]).unwrap()).unwrap();
    payload["roles"] = serde_json::json!(["admin"]);
    parts[1] = engine.encode(payload.to_string());
    parts.join(".")
}

in_both_modes!(
    tokens_from_a_login_verify_and_nothing_else_does,
    verification_holds_across_a_key_rotation,
    dpop_bound_tokens_verify_only_with_a_fresh_proof_of_their_key,
);

async fn tokens_from_a_login_verify_and_nothing_else_does(mode: Mode) {
    let app = spawn_app_with(mode, |_| {}).await;
    let (verifier, network) = verifier_for(&app).await;
    let s = app.new_session().await;

    let c = verifier.verify(&s.access).await.unwrap();
    assert_eq!(c.sub, claims(&s.access)["sub"].as_str().unwrap());
    assert_eq!(c.iss, ISSUER);
    assert!(c.aud.contains(&"tokend".to_string()));
    assert!(c.has_role("user"));
    assert_eq!(network.fetches(), 1);

    let refused = verifier.verify(&s.refresh).await.unwrap_err();
    assert!(matches!(refused, VerifierError::Type(_)), "{refused}");
    let tampered = verifier.verify(&tamper(&s.access)).await.unwrap_err();
    assert!(matches!(tampered, VerifierError::Signature), "{tampered}");

    // The access token after a refresh verifies too.
    let (access, _) = app.refresh_pair(&s.refresh).await;
    verifier.verify(&access).await.unwrap();

    // Past its lifetime (15 min) and the 30 s leeway, it is expired.
    app.clock.advance(Duration::from_secs(15 * 60 + 31));
    let expired = verifier.verify(&access).await.unwrap_err();
    assert!(matches!(expired, VerifierError::Expired), "{expired}");
    app.stop().await;
}

/// A login bound to `key` (the seed's `/auth/login` with a proof): the access token.
async fn dpop_login(app: &TestApp, key: &DpopKey) -> String {
    let s = app.new_session().await;
    let proof = key.proof_at(
        "POST",
        &format!("{ISSUER}/auth/login"),
        tokend::clock::Clock::now(&*app.clock),
        &serde_json::json!({}),
    );
    let res = app
        .http
        .post(app.url("/auth/login"))
        .header("DPoP", proof)
        .json(&serde_json::json!({"email": s.email, "password": s.password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "DPoP");
    body["access_token"].as_str().unwrap().to_string()
}

/// The headers of a request with `Authorization: <scheme> <token>` and a proof when given.
fn request_headers(scheme: &str, token: &str, proof: Option<&str>) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("{scheme} {token}").parse().unwrap(),
    );
    if let Some(p) = proof {
        h.append("dpop", p.parse().unwrap());
    }
    h
}

const API: &str = "https://api.example/orders";

async fn dpop_bound_tokens_verify_only_with_a_fresh_proof_of_their_key(mode: Mode) {
    let app = spawn_app_with(mode, |_| {}).await;
    let (verifier, _) = verifier_for(&app).await;
    let key = DpopKey::p256();
    let token = dpop_login(&app, &key).await;
    let now = || tokend::clock::Clock::now(&*app.clock);
    let proof = |k: &DpopKey, method: &str, url: &str, token: &str| {
        k.proof_at(method, url, now(), &serde_json::json!({"ath": ath(token)}))
    };

    let good = proof(&key, "GET", API, &token);
    let c = verifier
        .verify_request(&request_headers("DPoP", &token, Some(&good)), "GET", API)
        .await
        .unwrap();
    assert_eq!(c.all["cnf"]["jkt"], key.jkt());
    // The same proof again: a replay.
    let again = verifier
        .verify_request(&request_headers("DPoP", &token, Some(&good)), "GET", API)
        .await
        .unwrap_err();
    assert!(
        matches!(
            again,
            VerifierError::Proof(tokend_verifier::ProofRefusal::Replay)
        ),
        "{again}"
    );
    let refusals = [
        (request_headers("Bearer", &token, None), "dpop_bound"),
        (request_headers("DPoP", &token, None), "dpop_proof"),
        (
            request_headers(
                "DPoP",
                &token,
                Some(&proof(&DpopKey::ed25519(), "GET", API, &token)),
            ),
            "dpop_proof",
        ),
        (
            request_headers("DPoP", &token, Some(&proof(&key, "POST", API, &token))),
            "dpop_proof",
        ),
        (
            request_headers(
                "DPoP",
                &token,
                Some(&proof(&key, "GET", "https://api.example/other", &token)),
            ),
            "dpop_proof",
        ),
        (
            request_headers(
                "DPoP",
                &token,
                Some(&proof(&key, "GET", API, "another token")),
            ),
            "dpop_proof",
        ),
    ];
    for (headers, reason) in refusals {
        let e = verifier
            .verify_request(&headers, "GET", API)
            .await
            .unwrap_err();
        assert_eq!(e.reason(), reason, "{e}");
        assert!(e.is_invalid_token());
    }
    // A bearer token under the DPoP scheme, and as itself.
    let s = app.new_session().await;
    let e = verifier
        .verify_request(
            &request_headers("DPoP", &s.access, Some(&proof(&key, "GET", API, &s.access))),
            "GET",
            API,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, VerifierError::NotDpopBound), "{e}");
    verifier
        .verify_request(&request_headers("Bearer", &s.access, None), "GET", API)
        .await
        .unwrap();
    // A proof older than the window is refused.
    let old = proof(&key, "GET", API, &token);
    app.clock.advance(Duration::from_secs(61));
    let e = verifier
        .verify_request(&request_headers("DPoP", &token, Some(&old)), "GET", API)
        .await
        .unwrap_err();
    assert!(
        matches!(e, VerifierError::Proof(tokend_verifier::ProofRefusal::Iat)),
        "{e}"
    );
    app.stop().await;
}

fn short_rotation(env: &mut std::collections::HashMap<String, String>) {
    env.insert("TOKEND_KEY_ROTATION".into(), "2h".into());
    env.insert("TOKEND_KEY_PREPUBLISH".into(), "1h".into());
    env.insert("TOKEND_JWKS_MAX_AGE".into(), "300s".into());
}

fn kid(token: &str) -> String {
    header(token)["kid"].as_str().unwrap().to_string()
}

async fn verification_holds_across_a_key_rotation(mode: Mode) {
    let app = spawn_app_with(mode, short_rotation).await;
    let keys = &app.state.published.keys();
    let (verifier, network) = verifier_for(&app).await;
    let s = app.new_session().await;
    let first = kid(&s.access);
    verifier.verify(&s.access).await.unwrap();
    assert_eq!(verifier.cached_kids(), vec![first.clone()]);
    assert_eq!(network.fetches(), 1);

    // Into the prepublish window: the successor is published, not yet signing. Once the
    // verifier's copy is older than max-age (300 s) it refetches and learns the successor.
    app.clock.advance(Duration::from_secs(3600 + 1));
    keys.tick().await.unwrap();
    let (access, _) = app.login_pair(&s.email, &s.password).await;
    assert_eq!(kid(&access), first, "the old key still signs");
    verifier.verify(&access).await.unwrap();
    assert_eq!(network.fetches(), 2);
    let cached = verifier.cached_kids();
    assert_eq!(cached.len(), 2, "successor prepublished: {cached:?}");
    let successor = cached.into_iter().find(|k| *k != first).unwrap();

    // Ten seconds before the switch: a token of the old key; the cache is refreshed (stale).
    app.clock.advance(Duration::from_secs(3600 - 11));
    let (old_token, _) = app.login_pair(&s.email, &s.password).await;
    assert_eq!(kid(&old_token), first);
    verifier.verify(&old_token).await.unwrap();
    assert_eq!(network.fetches(), 3);

    // Past the switch: the successor signs. The verifier already holds it, so a token of the
    // new key verifies without a fetch, and the old key's token still verifies.
    app.clock.advance(Duration::from_secs(20));
    keys.tick().await.unwrap();
    let (new_token, refresh) = app.login_pair(&s.email, &s.password).await;
    assert_eq!(kid(&new_token), successor, "the successor signs");
    let c = verifier.verify(&new_token).await.unwrap();
    assert_eq!(c.sub, claims(&new_token)["sub"].as_str().unwrap());
    verifier.verify(&old_token).await.unwrap();
    assert_eq!(network.fetches(), 3, "no fetch needed at the switch");

    // A refreshed pair is signed by the new key as well.
    let (access, _) = app.refresh_pair(&refresh).await;
    assert_eq!(kid(&access), successor);
    verifier.verify(&access).await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_resource_server_protects_hello() {
    let app = spawn_app_with(Mode::Embedded, |_| {}).await;
    let (verifier, _) = verifier_for(&app).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let hello = format!("http://{addr}/hello");
    let server = tokio::spawn(resource_server::serve(
        listener,
        Arc::new(resource_server::Resource {
            verifier,
            public_url: format!("http://{addr}"),
        }),
        async move {
            let _ = stopped.await;
        },
    ));
    let s = app.new_session().await;

    let res = app.http.get(&hello).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let challenge = res.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
        "{challenge}"
    );

    for bad in [s.refresh.clone(), tamper(&s.access), "garbage".to_string()] {
        let res = app.http.get(&hello).bearer_auth(&bad).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\""));
    }

    let res = app
        .http
        .get(&hello)
        .bearer_auth(&s.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["sub"], claims(&s.access)["sub"]);

    let res = app
        .http
        .post(&hello)
        .bearer_auth(&s.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);

    // A DPoP-bound token: with a proof of its key for GET /hello, and refused otherwise with
    // the DPoP challenge.
    let key = DpopKey::ed25519();
    let bound = dpop_login(&app, &key).await;
    let now = tokend::clock::Clock::now(&*app.clock);
    let dpop_get = |proof: String| {
        app.http
            .get(&hello)
            .header("authorization", format!("DPoP {bound}"))
            .header("DPoP", proof)
            .send()
    };
    let extra = serde_json::json!({"ath": ath(&bound)});
    let res = dpop_get(key.proof_at("GET", &hello, now, &extra))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = dpop_get(key.proof_at("GET", &format!("{hello}x"), now, &extra))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let challenge = res.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("DPoP error=\"invalid_dpop_proof\""),
        "{challenge}"
    );
    let res = app
        .http
        .get(&hello)
        .bearer_auth(&bound)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");

    let _ = stop.send(());
    server.await.unwrap();
    app.stop().await;
}
