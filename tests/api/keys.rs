//! Signing keys over HTTP and the CLI: JWKS, lifecycle with a moving clock, rotation across
//! instances, revocation (docs/keys.md).

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use josekit::jwk::Jwk;
use josekit::jws::{EdDSA, RS256};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{header, spawn_app_with, spawn_env, test_env, Mode, TestApp};
use crate::in_both_modes;

in_both_modes!(jwks_keys_verify_tokens_and_hold_no_private_parameters);

async fn fetch_jwks(app: &TestApp) -> Value {
    let res = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

fn thumbprint(k: &Value) -> String {
    let canonical = match k["kty"].as_str().unwrap() {
        "OKP" => format!(
            r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
            k["crv"].as_str().unwrap(),
            k["x"].as_str().unwrap()
        ),
        "RSA" => format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            k["e"].as_str().unwrap(),
            k["n"].as_str().unwrap()
        ),
        other => panic!("unexpected kty {other}"),
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Verifies `token` with only the served JWKS, the way a resource server would.
fn verify_with_jwks(jwks: &Value, token: &str) -> Value {
    let kid = header(token)["kid"].as_str().unwrap().to_string();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("kid {kid} not in JWKS"));
    let jwk = Jwk::from_bytes(key.to_string().as_bytes()).unwrap();
    let (payload, _) = match key["alg"].as_str().unwrap() {
        "EdDSA" => {
            josekit::jwt::decode_with_verifier(token, &EdDSA.verifier_from_jwk(&jwk).unwrap())
        }
        "RS256" => {
            josekit::jwt::decode_with_verifier(token, &RS256.verifier_from_jwk(&jwk).unwrap())
        }
        other => panic!("unexpected alg {other}"),
    }
    .expect("signature verifies with the JWKS key");
    serde_json::to_value(payload.claims_set()).unwrap()
}

async fn jwks_keys_verify_tokens_and_hold_no_private_parameters(mode: Mode) {
    // RSA keys are 3072-bit unless TOKEND_RSA_BITS says otherwise.
    for (algs, rsa_bits, modulus_bits) in [
        ("EdDSA,RS256", None, 3072),
        ("RS256,EdDSA", Some("2048"), 2048),
    ] {
        let app = spawn_app_with(mode, |env| {
            env.insert("TOKEND_SIGNING_ALGS".into(), algs.into());
            if let Some(bits) = rsa_bits {
                env.insert("TOKEND_RSA_BITS".into(), bits.into());
            }
        })
        .await;
        let s = app.new_session().await;
        let jwks = fetch_jwks(&app).await;
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2, "one active key per algorithm: {jwks}");
        for k in keys {
            assert_eq!(k["use"], "sig");
            assert!(k["alg"] == "EdDSA" || k["alg"] == "RS256");
            assert_eq!(k["kid"], thumbprint(k));
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(k.get(private).is_none(), "{private} leaked: {k}");
            }
            if k["kty"] == "RSA" {
                let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(k["n"].as_str().unwrap())
                    .unwrap();
                assert_eq!(n.len() * 8, modulus_bits, "{k}");
            }
        }
        let expected_alg = algs.split(',').next().unwrap();
        assert_eq!(header(&s.access)["alg"], expected_alg);
        let c = verify_with_jwks(&jwks, &s.access);
        assert_eq!(c["sub"], s.user["id"]);
        verify_with_jwks(&jwks, &s.refresh);
    }
}

#[tokio::test]
async fn jwks_has_a_strong_etag_and_answers_304() {
    let app = spawn_app_with(Mode::Embedded, |_| {}).await;
    let res = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["cache-control"], "public, max-age=300");
    let etag = res.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
    let body = res.bytes().await.unwrap();
    let res = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(res.headers()["etag"].to_str().unwrap(), etag);
    assert!(res.bytes().await.unwrap().is_empty());
    let res = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap(), body);
    // A rotation changes the document and its ETag.
    app.state.published.keys().rotate_now(None).await.unwrap();
    let res = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_ne!(res.headers()["etag"].to_str().unwrap(), etag);
}

fn short_rotation(env: &mut std::collections::HashMap<String, String>) {
    env.insert("TOKEND_KEY_ROTATION".into(), "2h".into());
    env.insert("TOKEND_KEY_PREPUBLISH".into(), "1h".into());
    env.insert("TOKEND_ACCESS_TTL".into(), "15m".into());
    env.insert("TOKEND_REFRESH_TTL".into(), "1h".into());
    env.insert("TOKEND_SESSION_TTL".into(), "1h".into());
    env.insert("TOKEND_SIGNING_ALGS".into(), "EdDSA,RS256".into());
}

fn kids(jwks: &Value, alg: &str) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["alg"] == alg)
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

in_both_modes!(a_key_goes_pending_active_retired_gone);

async fn a_key_goes_pending_active_retired_gone(mode: Mode) {
    let app = spawn_app_with(mode, short_rotation).await;
    let keys = &app.state.published.keys();
    let s = app.new_session().await;
    let jwks = fetch_jwks(&app).await;
    let (old_ed, old_rs) = (kids(&jwks, "EdDSA"), kids(&jwks, "RS256"));
    assert_eq!((old_ed.len(), old_rs.len()), (1, 1));

    // One second into the prepublish window: a pending successor per algorithm, in JWKS, not signing.
    app.clock.advance(Duration::from_secs(3600 + 1));
    keys.tick().await.unwrap();
    let jwks = fetch_jwks(&app).await;
    assert_eq!(kids(&jwks, "EdDSA").len(), 2, "{jwks}");
    assert_eq!(kids(&jwks, "RS256").len(), 2, "{jwks}");
    let new_ed: Vec<String> = kids(&jwks, "EdDSA")
        .into_iter()
        .filter(|k| !old_ed.contains(k))
        .collect();
    let pending: Vec<_> = keys
        .list()
        .into_iter()
        .filter(|k| k.kid == new_ed[0])
        .collect();
    assert_eq!(format!("{:?}", pending[0].state), "Pending");
    let (before_switch, _) = {
        app.clock.advance(Duration::from_secs(3600 - 2));
        app.login_pair(&s.email, &s.password).await
    };
    assert_eq!(
        header(&before_switch)["kid"],
        old_ed[0].as_str(),
        "the pending key does not sign"
    );

    // The switch: the successor signs, the predecessor retires but still verifies.
    app.clock.advance(Duration::from_secs(2));
    keys.tick().await.unwrap();
    let (after_switch, _) = app.login_pair(&s.email, &s.password).await;
    assert_eq!(header(&after_switch)["kid"], new_ed[0].as_str());
    assert_eq!(
        app.get_bearer("/users/me", &before_switch).await.status(),
        StatusCode::OK
    );
    let states: Vec<String> = keys
        .list()
        .iter()
        .filter(|k| k.alg.as_str() == "EdDSA")
        .map(|k| format!("{:?}", k.state))
        .collect();
    assert!(
        states.contains(&"Retired".to_string()) && states.contains(&"Active".to_string()),
        "{states:?}"
    );
    assert_eq!(kids(&fetch_jwks(&app).await, "EdDSA").len(), 2);

    // Past the longest token lifetime: the retired key is gone from JWKS and verification.
    app.clock.advance(Duration::from_secs(3600 + 31));
    keys.tick().await.unwrap();
    let jwks = fetch_jwks(&app).await;
    assert!(!kids(&jwks, "EdDSA").contains(&old_ed[0]), "{jwks}");
    assert!(!kids(&jwks, "RS256").contains(&old_rs[0]), "{jwks}");
    assert!(kids(&jwks, "EdDSA").contains(&new_ed[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_rotate_once_and_serve_identical_jwks() {
    let (mut env, _) = test_env(Mode::Production);
    short_rotation(&mut env);
    let clock = tokend::clock::ManualClock::starting_now();
    let a = spawn_env(Mode::Production, env.clone(), None, clock.clone()).await;
    let b = spawn_env(Mode::Production, env, None, clock.clone()).await;
    b.state.published.keys().tick().await.unwrap();
    assert_eq!(
        fetch_jwks(&a).await,
        fetch_jwks(&b).await,
        "one keyset, not two"
    );
    clock.advance(Duration::from_secs(3600 + 1));
    let (ra, rb) = tokio::join!(
        a.state.published.keys().tick(),
        b.state.published.keys().tick()
    );
    ra.unwrap();
    rb.unwrap();
    a.state.published.keys().tick().await.unwrap();
    b.state.published.keys().tick().await.unwrap();
    let (ja, jb) = (
        a.http
            .get(a.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        b.http
            .get(b.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    );
    assert_eq!(ja, jb, "byte-identical JWKS");
    let jwks: Value = serde_json::from_slice(&ja).unwrap();
    assert_eq!(
        kids(&jwks, "EdDSA").len(),
        2,
        "exactly one successor: {jwks}"
    );
    assert_eq!(
        kids(&jwks, "RS256").len(),
        2,
        "exactly one successor: {jwks}"
    );
    // Tokens from one instance verify on the other, before and after the switch.
    let s = a.new_session().await;
    assert_eq!(
        b.get_bearer("/users/me", &s.access).await.status(),
        StatusCode::OK
    );
    clock.advance(Duration::from_secs(3600 - 3));
    let (before, _) = a.login_pair(&s.email, &s.password).await;
    clock.advance(Duration::from_secs(4));
    a.state.published.keys().tick().await.unwrap();
    b.state.published.keys().tick().await.unwrap();
    let (after, _) = b.login_pair(&s.email, &s.password).await;
    assert_ne!(
        header(&before)["kid"],
        header(&after)["kid"],
        "the successor signs after the switch"
    );
    assert_eq!(
        a.get_bearer("/users/me", &after).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        b.get_bearer("/users/me", &before).await.status(),
        StatusCode::OK
    );
}

fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokend"));
    cmd.env_clear().args(args);
    for (k, v) in &app.env {
        cmd.env(k, v);
    }
    let dir = tempfile::tempdir().unwrap();
    cmd.current_dir(dir.path()).output().unwrap()
}

in_both_modes!(keys_revoke_from_the_cli_kills_that_keys_tokens);

async fn keys_revoke_from_the_cli_kills_that_keys_tokens(mode: Mode) {
    let app = spawn_app_with(mode, |_| {}).await;
    let s = app.new_session().await;
    let kid = header(&s.access)["kid"].as_str().unwrap().to_string();
    let out = cli(&app, &["keys", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid.as_str()),
        "{listed}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PRIVATE"));

    let out = cli(&app, &["keys", "revoke", &kid]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.state.published.keys().tick().await.unwrap();
    assert_eq!(
        app.get_bearer("/users/me", &s.access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(&s.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let jwks = fetch_jwks(&app).await;
    assert!(!kids(&jwks, "EdDSA").contains(&kid));
    // A replacement signs at once.
    let (fresh, _) = app.login_pair(&s.email, &s.password).await;
    assert_ne!(header(&fresh)["kid"], json!(kid));
    assert_eq!(
        app.get_bearer("/users/me", &fresh).await.status(),
        StatusCode::OK
    );
    let out = cli(&app, &["keys", "revoke", "no-such-kid"]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn keys_rotate_from_the_cli_starts_a_pending_successor() {
    let app = spawn_app_with(Mode::Embedded, |_| {}).await;
    let out = cli(&app, &["keys", "rotate", "--alg", "EdDSA"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.state.published.keys().tick().await.unwrap();
    let states: Vec<String> = app
        .state
        .published
        .keys()
        .list()
        .iter()
        .map(|k| format!("{:?}", k.state))
        .collect();
    assert_eq!(
        states.iter().filter(|s| *s == "Pending").count(),
        1,
        "{states:?}"
    );
    assert_eq!(
        states.iter().filter(|s| *s == "Active").count(),
        1,
        "{states:?}"
    );
    let s = app.new_session().await;
    let active = app
        .state
        .published
        .keys()
        .list()
        .into_iter()
        .find(|k| format!("{:?}", k.state) == "Active")
        .unwrap();
    assert_eq!(
        header(&s.access)["kid"],
        active.kid.as_str(),
        "the pending key does not sign yet"
    );
}
