//! Dynamic client registration (RFC 7591) and management (RFC 7592), in both modes
//! (docs/registration.md): the three settings of `TOKEND_CLIENT_REGISTRATION`, initial access
//! tokens from the real `tokend clients registration-token`, metadata validation, the
//! registration access token, a registered client's code flow, and deletion.

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tokend::clock::Clock;

use crate::helpers::*;
use crate::in_both_modes;

const PASSWORD: &str = "correct horse battery";
const REDIRECT: &str = "https://app.example/cb";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

in_both_modes!(
    registration_is_off_by_default_and_discovery_says_so,
    token_mode_takes_only_a_valid_initial_access_token_from_the_cli,
    open_mode_registers_public_clients_only_and_is_rate_limited,
    invalid_metadata_is_refused_with_the_rfc_7591_errors,
    a_registered_client_is_read_updated_and_deleted_with_its_registration_access_token,
    a_registered_client_signs_users_in_with_consent_and_is_gone_once_deleted,
    racing_updates_and_deletes_never_bring_a_client_back,
    one_initial_access_token_registers_many_clients_at_once,
    a_registered_client_may_require_pushed_authorization_requests,
);

/// Runs the `tokend` binary with the app's environment, from an empty directory (no `.env`);
/// off the async runtime, as it blocks.
async fn cli(env: &HashMap<String, String>, args: &[&str]) -> Output {
    let env = env.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(&args)
            .env_clear()
            .envs(&env)
            .current_dir(dir.path())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// An initial access token from `tokend clients registration-token` with `args`.
pub(crate) async fn initial_token(app: &TestApp, args: &[&str]) -> String {
    let mut all = vec!["clients", "registration-token", "--json"];
    all.extend_from_slice(args);
    let out = cli(&app.env, &all).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_string()
}

pub(crate) async fn spawn_reg(mode: Mode, registration: &str) -> TestApp {
    let registration = registration.to_string();
    spawn_app_with(mode, move |env| {
        env.insert("TOKEND_CLIENT_REGISTRATION".into(), registration);
    })
    .await
}

pub(crate) async fn register(app: &TestApp, token: Option<&str>, body: &Value) -> Response {
    let mut req = app.http.post(app.url("/oauth/register")).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// Registers and answers the client information, asserting 201.
pub(crate) async fn register_ok(app: &TestApp, token: Option<&str>, body: &Value) -> Value {
    let res = register(app, token, body).await;
    let status = res.status();
    let info: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{info}");
    info
}

fn web_client() -> Value {
    json!({
        "redirect_uris": [REDIRECT],
        "post_logout_redirect_uris": ["https://app.example/bye"],
        "grant_types": ["authorization_code", "refresh_token"],
        "client_name": "Registered Web App",
        "token_endpoint_auth_method": "client_secret_basic",
        "scope": "openid profile email",
        "software_statement_note": "ignored: not metadata tokend knows",
    })
}

fn public_client() -> Value {
    json!({
        "redirect_uris": ["http://127.0.0.1/callback"],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "none",
        "client_name": "An MCP tool",
    })
}

/// The path of a client information response's configuration endpoint.
fn config_path(info: &Value) -> String {
    let uri = info["registration_client_uri"].as_str().unwrap();
    uri.strip_prefix("http://tokend.test").unwrap().to_string()
}

async fn manage(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Response {
    let mut req = app.http.request(method, app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(b);
    }
    req.send().await.unwrap()
}

async fn assert_invalid_token(res: Response) {
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let www = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        www.starts_with("Bearer ") && www.contains("invalid_token"),
        "{www}"
    );
    assert_eq!(error_code(res).await, "invalid_token");
}

async fn discovery(app: &TestApp) -> (Value, Value) {
    let get = |path: &'static str| async move {
        let res = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json::<Value>().await.unwrap()
    };
    (
        get("/.well-known/oauth-authorization-server").await,
        get("/.well-known/openid-configuration").await,
    )
}

async fn registration_is_off_by_default_and_discovery_says_so(mode: Mode) {
    let app = spawn_app(mode).await;
    let res = register(&app, None, &public_client()).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // Even a body that is not JSON: the endpoint does not exist.
    let res = app
        .http
        .post(app.url("/oauth/register"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = manage(&app, reqwest::Method::GET, "/oauth/register/abc", "t", None).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let (oauth, oidc) = discovery(&app).await;
    assert!(oauth.get("registration_endpoint").is_none(), "{oauth}");
    assert!(oidc.get("registration_endpoint").is_none(), "{oidc}");
    app.stop().await;

    for setting in ["token", "open"] {
        let app = spawn_reg(mode, setting).await;
        let (oauth, oidc) = discovery(&app).await;
        for doc in [oauth, oidc] {
            assert_eq!(
                doc["registration_endpoint"], "http://tokend.test/oauth/register",
                "{setting}: {doc}"
            );
        }
        app.stop().await;
    }
}

async fn token_mode_takes_only_a_valid_initial_access_token_from_the_cli(mode: Mode) {
    let app = spawn_reg(mode, "token").await;
    // Without a token, with junk, and with a user's access token: 401 invalid_token.
    assert_invalid_token(register(&app, None, &web_client()).await).await;
    assert_invalid_token(register(&app, Some("not.a.token"), &web_client()).await).await;
    let s = app.new_session().await;
    assert_invalid_token(register(&app, Some(&s.access), &web_client()).await).await;

    // The CLI prints the token alone, or {"token","expires_at"} with --json.
    let out = cli(&app.env, &["clients", "registration-token", "--ttl", "10m"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain = String::from_utf8(out.stdout).unwrap();
    let plain = plain.trim();
    assert_eq!(plain.split('.').count(), 3, "{plain}");
    let out = cli(&app.env, &["clients", "registration-token", "--json"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    let expires_at = v["expires_at"].as_i64().unwrap();
    let now = app.clock.now();
    assert!((now + 3600 - expires_at).abs() < 60, "default ttl 1h");
    assert_eq!(claims(&token)["exp"], expires_at);
    // A token of its own type: never an access token, nor the reverse.
    assert_ne!(header(&token)["typ"], "at+jwt");
    assert_eq!(
        app.get_bearer("/auth/verify", &token).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let info = register_ok(&app, Some(plain), &web_client()).await;
    assert!(info["client_secret"].is_string());
    let info = register_ok(&app, Some(&token), &web_client()).await;
    assert!(info["client_id"].is_string());

    // A tampered token is refused.
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_invalid_token(register(&app, Some(&tampered), &web_client()).await).await;

    // One from a server with another issuer is refused, though signed with the same keys.
    let mut other = app.env.clone();
    other.insert("TOKEND_ISSUER".into(), "http://elsewhere.test".into());
    let out = cli(&other, &["clients", "registration-token", "--json"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let foreign = v["token"].as_str().unwrap();
    assert_invalid_token(register(&app, Some(foreign), &web_client()).await).await;

    // Expiry: the 10-minute token dies past its end (and the 30 s leeway).
    app.clock.advance(Duration::from_secs(11 * 60));
    let res = register(&app, Some(plain), &web_client()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
    // The one-hour token still works.
    register_ok(&app, Some(&token), &web_client()).await;

    // The CLI refuses a lifetime longer than the keys are kept, and a bad scope.
    let out = cli(
        &app.env,
        &["clients", "registration-token", "--ttl", "400d"],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ttl"));
    let out = cli(
        &app.env,
        &["clients", "registration-token", "--ttl", "soon"],
    )
    .await;
    assert!(!out.status.success());
    let out = cli(
        &app.env,
        &["clients", "registration-token", "--scope", "a\"b"],
    )
    .await;
    assert!(!out.status.success());

    let m = app.metrics_text().await;
    assert!(
        m.contains("tokend_client_registrations_total{event=\"registered\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("tokend_client_registrations_total{event=\"unauthorized\"} 6"),
        "{m}"
    );
}

async fn open_mode_registers_public_clients_only_and_is_rate_limited(mode: Mode) {
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_CLIENT_REGISTRATION".into(), "open".into());
        env.insert("TOKEND_RATE_LIMIT_REGISTRATION".into(), "3/h".into());
    })
    .await;
    // The default method is client_secret_basic (RFC 7591 §2): a confidential client.
    let mut confidential = public_client();
    confidential
        .as_object_mut()
        .unwrap()
        .remove("token_endpoint_auth_method");
    let res = register(&app, None, &confidential).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client_metadata");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("public clients only"),
        "{body}"
    );
    let info = register_ok(&app, None, &public_client()).await;
    assert!(info.get("client_secret").is_none(), "{info}");
    assert!(info.get("client_secret_expires_at").is_none(), "{info}");
    assert_eq!(info["token_endpoint_auth_method"], "none");
    assert_eq!(info["response_types"], json!(["code"]));
    assert_eq!(info["scope"], "openid profile email");
    assert!(info["registration_access_token"].is_string());
    register_ok(&app, None, &public_client()).await;
    // The fourth registration from this address within the hour: 429 with Retry-After.
    let res = register(&app, None, &public_client()).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1200).contains(&retry), "{retry}");
    // An initial access token still registers, confidential clients included, unlimited.
    let token = initial_token(&app, &[]).await;
    let info = register_ok(&app, Some(&token), &web_client()).await;
    assert!(info["client_secret"].is_string());
    // A bad token is refused, not taken as no token.
    assert_invalid_token(register(&app, Some("x.y.z"), &public_client()).await).await;
    let m = app.metrics_text().await;
    assert!(
        m.contains("tokend_rate_limited_total{limit=\"registration\"} 1"),
        "{m}"
    );
}

async fn invalid_metadata_is_refused_with_the_rfc_7591_errors(mode: Mode) {
    let app = spawn_reg(mode, "token").await;
    let token = initial_token(&app, &[]).await;
    let with = |patch: Value| {
        let mut v = web_client();
        for (k, val) in patch.as_object().unwrap() {
            if val.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = val.clone();
            }
        }
        v
    };
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            with(json!({"redirect_uris": ["http://app.example/cb"]})),
            "invalid_redirect_uri",
            "loopback",
        ),
        (
            with(json!({"redirect_uris": ["https://app.example/cb#x"]})),
            "invalid_redirect_uri",
            "fragment",
        ),
        (
            with(json!({"redirect_uris": ["javascript:alert(1)"]})),
            "invalid_redirect_uri",
            "forbidden scheme",
        ),
        (
            with(json!({"redirect_uris": ["cb"]})),
            "invalid_redirect_uri",
            "absolute",
        ),
        (
            with(json!({"redirect_uris": []})),
            "invalid_redirect_uri",
            "at least one redirect URI",
        ),
        (
            with(json!({"redirect_uris": null})),
            "invalid_redirect_uri",
            "at least one redirect URI",
        ),
        (
            with(json!({"grant_types": ["authorization_code", "password"]})),
            "invalid_client_metadata",
            "password",
        ),
        (
            with(json!({"grant_types": ["implicit"]})),
            "invalid_client_metadata",
            "unsupported grant type",
        ),
        (
            with(json!({"response_types": ["token"]})),
            "invalid_client_metadata",
            "response type",
        ),
        (
            with(json!({"grant_types": ["client_credentials"], "response_types": ["code"]})),
            "invalid_client_metadata",
            "disagree",
        ),
        (
            with(json!({"response_types": []})),
            "invalid_client_metadata",
            "disagree",
        ),
        (
            with(json!({"token_endpoint_auth_method": "private_key_jwt"})),
            "invalid_client_metadata",
            "token_endpoint_auth_method",
        ),
        (
            with(json!({"token_endpoint_auth_method": "none",
                        "grant_types": ["client_credentials"], "response_types": []})),
            "invalid_client_metadata",
            "public client",
        ),
        (
            with(json!({"scope": "openid admin"})),
            "invalid_client_metadata",
            "\"admin\"",
        ),
        (
            with(json!({"id_token_signed_response_alg": "HS256"})),
            "invalid_client_metadata",
            "id_token_signed_response_alg",
        ),
        (
            with(
                json!({"grant_types": ["client_credentials"], "response_types": [],
                        "require_pushed_authorization_requests": true}),
            ),
            "invalid_client_metadata",
            "require_pushed_authorization_requests",
        ),
        (
            with(json!({"require_pushed_authorization_requests": "yes"})),
            "invalid_client_metadata",
            "",
        ),
        (
            with(json!({"client_name": ""})),
            "invalid_client_metadata",
            "client_name",
        ),
        (
            with(json!({"post_logout_redirect_uris": ["http://app.example/bye"]})),
            "invalid_client_metadata",
            "post-logout",
        ),
        (
            with(json!({"redirect_uris": "https://app.example/cb"})),
            "invalid_client_metadata",
            "",
        ),
        (json!([web_client()]), "invalid_client_metadata", "object"),
    ];
    for (body, code, needle) in &cases {
        let res = register(&app, Some(&token), body).await;
        let status = res.status();
        let v: Value = res.json().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"], *code, "{body}: {v}");
        assert!(
            v["error_description"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    // Bad JSON is invalid_client_metadata too; another media type is 415.
    for raw in ["{", "", "null", "{\"redirect_uris\":"] {
        let res = app
            .http
            .post(app.url("/oauth/register"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{raw:?}");
        assert_eq!(error_code(res).await, "invalid_client_metadata", "{raw:?}");
    }
    let res = app
        .http
        .post(app.url("/oauth/register"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body(web_client().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Extra scopes come with a token that allows them.
    let scoped = initial_token(&app, &["--scope", "api:read api:write"]).await;
    let info = register_ok(
        &app,
        Some(&scoped),
        &with(json!({"scope": "openid api:read"})),
    )
    .await;
    assert_eq!(info["scope"], "openid api:read");
    let m = app.metrics_text().await;
    let refused = cases.len() + 4;
    assert!(
        m.contains(&format!(
            "tokend_client_registrations_total{{event=\"refused\"}} {refused}"
        )),
        "{m}"
    );
}

async fn a_registered_client_is_read_updated_and_deleted_with_its_registration_access_token(
    mode: Mode,
) {
    let file = write_clients_file(&json!([
        {"client_id": "static-web", "client_secret": "static-secret-0123456789",
         "grant_types": ["authorization_code"], "redirect_uris": [REDIRECT]}
    ]));
    let path = file.path().to_string_lossy().into_owned();
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_CLIENT_REGISTRATION".into(), "token".into());
        env.insert("TOKEND_CLIENTS_FILE".into(), path);
    })
    .await;
    let token = initial_token(&app, &[]).await;
    let info = register_ok(&app, Some(&token), &web_client()).await;
    let other = register_ok(&app, Some(&token), &public_client()).await;
    let id = info["client_id"].as_str().unwrap().to_string();
    let rat = info["registration_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let path = config_path(&info);
    assert_eq!(path, format!("/oauth/register/{id}"));
    assert_eq!(info["client_secret_expires_at"], 0);
    assert!(info["client_id_issued_at"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(info["client_name"], "Registered Web App");
    assert!(info.get("software_statement_note").is_none());

    // Read: the metadata, never the secret.
    let res = manage(&app, reqwest::Method::GET, &path, &rat, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let read: Value = res.json().await.unwrap();
    assert!(read.get("client_secret").is_none(), "{read}");
    for k in [
        "client_id",
        "redirect_uris",
        "post_logout_redirect_uris",
        "grant_types",
        "response_types",
        "token_endpoint_auth_method",
        "client_name",
        "scope",
        "registration_client_uri",
        "client_id_issued_at",
    ] {
        assert_eq!(read[k], info[k], "{k}");
    }

    // Wrong tokens: another client's, the initial access token, junk; a static client; an
    // unknown id. All 401 invalid_token.
    let other_rat = other["registration_access_token"].as_str().unwrap();
    for (p, t) in [
        (path.as_str(), other_rat),
        (path.as_str(), token.as_str()),
        (path.as_str(), "junk"),
        ("/oauth/register/static-web", rat.as_str()),
        ("/oauth/register/no-such-client", rat.as_str()),
        ("/oauth/register/tokend", rat.as_str()),
    ] {
        assert_invalid_token(manage(&app, reqwest::Method::GET, p, t, None).await).await;
        assert_invalid_token(manage(&app, reqwest::Method::DELETE, p, t, None).await).await;
    }
    // Without any token: 401, and a challenge that names no error (RFC 6750 §3.1).
    let res = app.http.get(app.url(&path)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"tokend\"");

    // Update: replaces the metadata; id, secret and token stay.
    let mut update = web_client();
    update["client_id"] = json!(id);
    update["client_name"] = json!("Renamed App");
    update["redirect_uris"] = json!(["https://app.example/new-cb"]);
    update["grant_types"] = json!(["authorization_code"]);
    update
        .as_object_mut()
        .unwrap()
        .remove("post_logout_redirect_uris");
    let res = manage(&app, reqwest::Method::PUT, &path, &rat, Some(&update)).await;
    let status = res.status();
    let updated: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["client_name"], "Renamed App");
    assert_eq!(
        updated["redirect_uris"],
        json!(["https://app.example/new-cb"])
    );
    assert_eq!(updated["grant_types"], json!(["authorization_code"]));
    assert!(
        updated.get("post_logout_redirect_uris").is_none(),
        "{updated}"
    );
    assert!(updated.get("client_secret").is_none());
    let read: Value = manage(&app, reqwest::Method::GET, &path, &rat, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["client_name"], "Renamed App");
    // The secret still authenticates (a client_credentials-less client: unauthorized_client,
    // not invalid_client).
    let secret = info["client_secret"].as_str().unwrap();
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth(&id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res).await, "unauthorized_client");

    // Updates that break the rules.
    let bad_updates = [
        (json!({"client_id": null}), "client_id"),
        (json!({"client_id": "someone-else"}), "client_id"),
        (json!({"client_secret": "not-the-secret"}), "client_secret"),
        (
            json!({"token_endpoint_auth_method": "none"}),
            "cannot change",
        ),
        (json!({"grant_types": ["password"]}), "password"),
        (
            json!({"redirect_uris": ["http://evil.example/cb"]}),
            "loopback",
        ),
    ];
    for (patch, needle) in bad_updates {
        let mut body = update.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        let res = manage(&app, reqwest::Method::PUT, &path, &rat, Some(&body)).await;
        let status = res.status();
        let v: Value = res.json().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{patch}: {v}");
        assert!(
            v["error_description"].as_str().unwrap().contains(needle),
            "{patch}: {v}"
        );
    }
    // The right secret may be sent back.
    let mut with_secret = update.clone();
    with_secret["client_secret"] = json!(secret);
    let res = manage(&app, reqwest::Method::PUT, &path, &rat, Some(&with_secret)).await;
    assert_eq!(res.status(), StatusCode::OK);
    // Another client's token cannot update it.
    assert_invalid_token(manage(&app, reqwest::Method::PUT, &path, other_rat, Some(&update)).await)
        .await;

    if mode == Mode::Production {
        // `tokend clients list` marks it.
        let out = cli(&app.env, &["clients", "list", "--json"]).await;
        assert!(out.status.success());
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["client_id"] == id.as_str())
            .unwrap();
        assert_eq!(row["registered"], true);
        assert_eq!(row["first_party"], false);
        let listed = String::from_utf8(cli(&app.env, &["clients", "list"]).await.stdout).unwrap();
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(&id) && l.contains("registered")),
            "{listed}"
        );
    }

    // Delete: 204, then the token and the client are gone.
    let res = manage(&app, reqwest::Method::DELETE, &path, &rat, None).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_invalid_token(manage(&app, reqwest::Method::GET, &path, &rat, None).await).await;
    assert_invalid_token(manage(&app, reqwest::Method::DELETE, &path, &rat, None).await).await;
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth(&id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(res).await, "invalid_client");
    // The other client is untouched.
    let res = manage(
        &app,
        reqwest::Method::GET,
        &config_path(&other),
        other_rat,
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let m = app.metrics_text().await;
    for (event, n) in [("read", 3), ("updated", 2), ("deleted", 1)] {
        assert!(
            m.contains(&format!(
                "tokend_client_registrations_total{{event=\"{event}\"}} {n}"
            )),
            "{event}: {m}"
        );
    }
}

/// A browser: keeps cookies, follows nothing by itself.
/// `require_pushed_authorization_requests` (RFC 9126 §6) is registered, answered, and holds:
/// the client's plain authorization request goes back refused, a pushed one proceeds.
async fn a_registered_client_may_require_pushed_authorization_requests(mode: Mode) {
    let app = spawn_reg(mode, "token").await;
    let token = initial_token(&app, &[]).await;
    let mut body = web_client();
    body["require_pushed_authorization_requests"] = json!(true);
    let info = register_ok(&app, Some(&token), &body).await;
    assert_eq!(
        info["require_pushed_authorization_requests"], true,
        "{info}"
    );
    let id = info["client_id"].as_str().unwrap().to_string();
    let secret = info["client_secret"].as_str().unwrap().to_string();
    let params = [
        ("response_type", "code"),
        ("client_id", id.as_str()),
        ("redirect_uri", REDIRECT),
        ("scope", "openid"),
        ("state", "st-par"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    let b = new_browser();
    let q = serde_urlencoded::to_string(params).unwrap();
    let res = b
        .get(app.url(&format!("/oauth/authorize?{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let back = query_of(&location(&res));
    assert_eq!(back["error"], "invalid_request", "{back:?}");
    assert_eq!(back["state"], "st-par");
    let pushed: Value = app
        .http
        .post(app.url("/oauth/par"))
        .basic_auth(&id, Some(&secret))
        .form(&params)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let request_uri = pushed["request_uri"].as_str().expect("a request_uri");
    let q = serde_urlencoded::to_string([("client_id", id.as_str()), ("request_uri", request_uri)])
        .unwrap();
    let res = b
        .get(app.url(&format!("/oauth/authorize?{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(
        location(&res).starts_with("/login?req="),
        "{}",
        location(&res)
    );
    // Reading it back says the same.
    let read: Value = app
        .http
        .get(app.url(&config_path(&info)))
        .bearer_auth(info["registration_access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        read["require_pushed_authorization_requests"], true,
        "{read}"
    );
}

async fn a_registered_client_signs_users_in_with_consent_and_is_gone_once_deleted(mode: Mode) {
    let app = spawn_reg(mode, "token").await;
    assert_eq!(
        app.register("ada", "ada@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::CREATED
    );
    let token = initial_token(&app, &[]).await;
    let info = register_ok(&app, Some(&token), &web_client()).await;
    let id = info["client_id"].as_str().unwrap().to_string();
    let secret = info["client_secret"].as_str().unwrap().to_string();
    let b = new_browser();
    let q = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", id.as_str()),
        ("redirect_uri", REDIRECT),
        ("scope", "openid profile"),
        ("state", "st-1"),
        ("nonce", "n-1"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ])
    .unwrap();
    let authorize = app.url(&format!("/oauth/authorize?{q}"));
    let res = b.get(&authorize).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let login = location(&res);
    assert!(login.starts_with("/login?req="), "{login}");
    let html = b
        .get(app.url(&login))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let req = query_of(&login)["req"].clone();
    let res = b
        .post(app.url("/login"))
        .form(&[
            ("csrf_token", csrf_of(&html).as_str()),
            ("req", req.as_str()),
            ("username", "ada"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    // Never first-party: the consent page, naming the client.
    let consent = location(&res);
    assert!(consent.starts_with("/consent?req="), "{consent}");
    let html = b
        .get(app.url(&consent))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Registered Web App"), "{html}");
    let req = query_of(&consent)["req"].clone();
    let res = b
        .post(app.url("/consent"))
        .form(&[
            ("csrf_token", csrf_of(&html).as_str()),
            ("req", req.as_str()),
            ("decision", "allow"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cb = query_of(&location(&res));
    assert_eq!(cb["state"], "st-1");
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth(&id, Some(&secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", cb["code"].as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    let status = res.status();
    let tokens: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let id_token = tokens["id_token"].as_str().unwrap();
    assert_eq!(claims(id_token)["aud"], id.as_str());
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    let refresh_with = |rt: String| {
        let (app, id, secret) = (&app, id.clone(), secret.clone());
        async move {
            app.http
                .post(app.url("/oauth/token"))
                .basic_auth(&id, Some(&secret))
                .form(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
                .send()
                .await
                .unwrap()
        }
    };
    let res = refresh_with(refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    let refresh: String = res.json::<Value>().await.unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .into();
    // A code issued just before the deletion.
    let res = b.get(&authorize).send().await.unwrap();
    let pending = query_of(&location(&res));
    assert!(pending.contains_key("code"), "{pending:?}");

    let rat = info["registration_access_token"].as_str().unwrap();
    let res = manage(
        &app,
        reqwest::Method::DELETE,
        &config_path(&info),
        rat,
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    // Gone: no refresh, no code redemption, no new flow.
    let res = refresh_with(refresh.clone()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(res).await, "invalid_client");
    let res = app.refresh(&refresh).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "nor at the seed route"
    );
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth(&id, Some(&secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", pending["code"].as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = b.get(&authorize).send().await.unwrap();
    assert!(res.status().is_client_error(), "an error page, no redirect");
    assert!(res.headers().get("location").is_none());
}

async fn racing_updates_and_deletes_never_bring_a_client_back(mode: Mode) {
    let apps = instances(mode, |env| {
        env.insert("TOKEND_CLIENT_REGISTRATION".into(), "open".into());
        env.insert("TOKEND_RATE_LIMIT".into(), "off".into());
    })
    .await;
    for round in 0..3 {
        let info = register_ok(&apps[0], None, &public_client()).await;
        let id = info["client_id"].as_str().unwrap().to_string();
        let rat = info["registration_access_token"]
            .as_str()
            .unwrap()
            .to_string();
        let path = config_path(&info);
        let mut update = public_client();
        update["client_id"] = json!(id);
        update["client_name"] = json!(format!("round {round}"));
        let mut calls = Vec::new();
        for i in 0..12 {
            let app = &apps[i % apps.len()];
            let (path, rat, update) = (path.clone(), rat.clone(), update.clone());
            calls.push(async move {
                let (method, body) = if i % 4 == 1 {
                    (reqwest::Method::DELETE, None)
                } else {
                    (reqwest::Method::PUT, Some(update))
                };
                let res = manage(app, method.clone(), &path, &rat, body.as_ref()).await;
                (method, res.status())
            });
        }
        let results = futures_util::future::join_all(calls).await;
        let deleted = results
            .iter()
            .filter(|(m, s)| *m == reqwest::Method::DELETE && *s == StatusCode::NO_CONTENT)
            .count();
        assert_eq!(deleted, 1, "exactly one delete wins: {results:?}");
        for (_, status) in &results {
            assert!(
                [
                    StatusCode::OK,
                    StatusCode::NO_CONTENT,
                    StatusCode::UNAUTHORIZED
                ]
                .contains(status),
                "{results:?}"
            );
        }
        // Whatever the order, the client is gone on every instance.
        for app in &apps {
            assert_invalid_token(manage(app, reqwest::Method::GET, &path, &rat, None).await).await;
            let res = app
                .http
                .post(app.url("/oauth/token"))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", id.as_str()),
                    ("refresh_token", "x"),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(error_code(res).await, "invalid_client");
        }
    }
}

async fn one_initial_access_token_registers_many_clients_at_once(mode: Mode) {
    let apps = instances(mode, |env| {
        env.insert("TOKEND_CLIENT_REGISTRATION".into(), "token".into());
    })
    .await;
    let token = initial_token(&apps[0], &[]).await;
    let body = web_client();
    let calls = (0..10).map(|i| register(&apps[i % apps.len()], Some(&token), &body));
    let results = futures_util::future::join_all(calls).await;
    let mut ids = std::collections::HashSet::new();
    let mut rats = std::collections::HashSet::new();
    for res in results {
        assert_eq!(res.status(), StatusCode::CREATED);
        let info: Value = res.json().await.unwrap();
        assert!(ids.insert(info["client_id"].as_str().unwrap().to_string()));
        assert!(rats.insert(
            info["registration_access_token"]
                .as_str()
                .unwrap()
                .to_string()
        ));
    }
    assert_eq!(ids.len(), 10);
}
