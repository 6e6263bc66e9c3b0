//! Pushed authorization requests (RFC 9126; docs/authorize.md, "Pushed authorization
//! requests"): `POST /oauth/par` with client authentication answers a single-use request URI
//! bound to the client, which `/oauth/authorize` takes once; a client with
//! `require_pushed_authorization_requests` must push. In both modes, driven as a browser and a
//! client would.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::authorize::{
    location, new_browser, query_of, spawn_with_clients, App, CHALLENGE, PASSWORD, REDIRECT,
    VERIFIER, WEB_SECRET,
};
use crate::helpers::*;
use crate::in_both_modes;

in_both_modes!(
    a_pushed_request_signs_in_and_issues_tokens,
    a_request_uri_is_used_once,
    concurrent_uses_of_a_request_uri_let_exactly_one_proceed,
    a_request_uri_belongs_to_the_client_that_pushed_it,
    a_pushed_request_expires_after_a_minute,
    a_client_that_requires_pushed_requests_must_push_them,
    client_authentication_failures_are_invalid_client,
    invalid_authorization_parameters_are_refused_as_json,
    discovery_names_the_endpoint,
);

const PREFIX: &str = "urn:ietf:params:oauth:request_uri:";

fn clients() -> Value {
    json!([
        {"client_id": "web", "client_secret": WEB_SECRET,
         "grant_types": ["authorization_code", "refresh_token"], "scopes": ["read"],
         "redirect_uris": [REDIRECT], "client_name": "Example Web App"},
        {"client_id": "par-only", "client_secret": WEB_SECRET,
         "grant_types": ["authorization_code"], "redirect_uris": [REDIRECT], "scopes": ["read"],
         "client_name": "Example PAR App", "first_party": true,
         "require_pushed_authorization_requests": true},
        {"client_id": "native", "grant_types": ["authorization_code"], "scopes": ["read"],
         "redirect_uris": ["http://127.0.0.1/callback"], "client_name": "Example CLI",
         "first_party": true},
        {"client_id": "post-only", "client_secret": WEB_SECRET,
         "grant_types": ["authorization_code"], "redirect_uris": [REDIRECT], "scopes": ["read"],
         "token_endpoint_auth_method": "client_secret_post"},
        {"client_id": "two-uris", "grant_types": ["authorization_code"], "scopes": ["read"],
         "redirect_uris": [REDIRECT, "https://app.example/other"]},
        {"client_id": "svc", "client_secret": WEB_SECRET,
         "grant_types": ["client_credentials"], "scopes": ["read"]},
    ])
}

async fn spawn(mode: Mode) -> App {
    spawn_with_clients(mode, &clients()).await
}

/// How a push authenticates its client.
#[derive(Clone, Copy)]
enum Auth<'a> {
    /// `client_secret_basic`.
    Basic(&'a str, &'a str),
    /// `client_secret_post`.
    Post(&'a str, &'a str),
    /// A public client: `client_id` alone.
    Id(&'a str),
    None,
}

/// The authorization parameters `web` pushes, with `extra` replacing (or, when empty,
/// removing) any of them.
fn parameters<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut params: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("redirect_uri", REDIRECT),
        ("scope", "openid profile email read"),
        ("state", "st-par"),
        ("nonce", "n-par"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    for (k, v) in extra {
        params.retain(|(pk, _)| pk != k);
        if !v.is_empty() {
            params.push((k, v));
        }
    }
    params
}

/// `POST /oauth/par` with these parameters.
async fn push(app: &TestApp, auth: Auth<'_>, params: &[(&str, &str)]) -> Response {
    let mut form: Vec<(&str, &str)> = params.to_vec();
    let mut req = app.http.post(app.url("/oauth/par"));
    match auth {
        Auth::Basic(id, secret) => req = req.basic_auth(id, Some(secret)),
        Auth::Post(id, secret) => {
            form.push(("client_id", id));
            form.push(("client_secret", secret));
        }
        Auth::Id(id) => form.push(("client_id", id)),
        Auth::None => {}
    }
    req.form(&form).send().await.unwrap()
}

/// Pushes and answers the request URI, asserting the RFC 9126 §2.2 answer.
async fn pushed(app: &TestApp, auth: Auth<'_>, params: &[(&str, &str)]) -> String {
    let res = push(app, auth, params).await;
    let status = res.status();
    let cache = res
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(cache.as_deref(), Some("no-store"));
    assert_eq!(body["expires_in"], 60, "{body}");
    let uri = body["request_uri"].as_str().unwrap().to_string();
    let reference = uri.strip_prefix(PREFIX).unwrap_or_else(|| panic!("{uri}"));
    assert_eq!(reference.len(), 43, "256 random bits, base64url: {uri}");
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    uri
}

/// The authorization URL that uses a request URI, with any `extra` parameters beside it.
fn authorize_with(
    app: &TestApp,
    client: &str,
    request_uri: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut params = vec![("client_id", client), ("request_uri", request_uri)];
    params.extend_from_slice(extra);
    app.url(&format!(
        "/oauth/authorize?{}",
        serde_urlencoded::to_string(&params).unwrap()
    ))
}

/// A 400 HTML error page carrying `code`, and no redirect.
async fn assert_error_page(res: Response, code: &str) {
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.headers().get("location").is_none());
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = res.text().await.unwrap();
    assert!(html.contains(code), "{html}");
}

/// A refusal of a push: 400 JSON with `error`, never a redirect; answers the description.
async fn assert_refused(res: Response, error: &str) -> String {
    let status = res.status();
    assert!(res.headers().get("location").is_none());
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], error, "{body}");
    body["error_description"].as_str().unwrap().to_string()
}

/// The value of the `tokend_authorizations_total` series with this event and client type.
fn authorizations(metrics: &str, event: &str, client_type: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("tokend_authorizations_total{"))
        .filter(|l| l.contains(&format!("event=\"{event}\"")))
        .filter(|l| l.contains(&format!("client_type=\"{client_type}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn a_pushed_request_signs_in_and_issues_tokens(mode: Mode) {
    let app = spawn(mode).await;
    let uri = pushed(&app, Auth::Basic("web", WEB_SECRET), &parameters(&[])).await;
    // Whatever else the query holds is ignored (RFC 9126 §4): the pushed request is the request.
    let res = app
        .get(&authorize_with(
            &app,
            "web",
            &uri,
            &[
                ("redirect_uri", "https://evil.example/cb"),
                ("scope", "admin"),
                ("state", "other"),
                ("response_type", "token"),
            ],
        ))
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = app.sign_in(&location(&res), PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = app.consent(&location(&res), "allow").await;
    let to = location(&res);
    assert!(to.starts_with(&format!("{REDIRECT}?")), "{to}");
    let cb = query_of(&to);
    assert_eq!(cb["state"], "st-par", "the pushed state, not the query's");
    assert_eq!(cb["iss"], "http://tokend.test");
    // The code exchange with PKCE, as for any code.
    let tokens = app.redeem_ok(&cb["code"]).await;
    assert_eq!(tokens["scope"], "openid profile email read");
    let id = claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["nonce"], "n-par");
    assert_eq!(id["aud"], "web");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        app.get_bearer("/auth/verify", access).await.status(),
        StatusCode::OK
    );
    // client_secret_post pushes too, and a public client with its id alone.
    pushed(&app, Auth::Post("web", WEB_SECRET), &parameters(&[])).await;
    let native = parameters(&[("redirect_uri", "http://127.0.0.1:49152/callback")]);
    let uri = pushed(&app, Auth::Id("native"), &native).await;
    // Signed in already, first party: straight back with a code, to the pushed loopback URI.
    let res = app.get(&authorize_with(&app, "native", &uri, &[])).await;
    let to = location(&res);
    assert!(
        to.starts_with("http://127.0.0.1:49152/callback?code="),
        "{to}"
    );
    let m = app.metrics_text().await;
    assert_eq!(authorizations(&m, "pushed", "confidential"), 2, "{m}");
    assert_eq!(authorizations(&m, "pushed", "public"), 1, "{m}");
    assert_eq!(authorizations(&m, "started", "confidential"), 1, "{m}");
    assert_eq!(authorizations(&m, "completed", "confidential"), 1, "{m}");
}

async fn a_request_uri_is_used_once(mode: Mode) {
    let app = spawn(mode).await;
    let uri = pushed(&app, Auth::Basic("web", WEB_SECRET), &parameters(&[])).await;
    let url = authorize_with(&app, "web", &uri, &[]);
    let res = app.get(&url).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(location(&res).starts_with("/login?req="));
    // The second use, from this browser or another: an error page, never a redirect.
    assert_error_page(app.get(&url).await, "invalid_request_uri").await;
    assert_error_page(
        new_browser().get(&url).send().await.unwrap(),
        "invalid_request_uri",
    )
    .await;
    // Errors after the request URI was taken go to the pushed redirect URI, with its state.
    let uri = pushed(
        &app,
        Auth::Basic("web", WEB_SECRET),
        &parameters(&[("prompt", "none")]),
    )
    .await;
    let res = new_browser()
        .get(authorize_with(&app, "web", &uri, &[]))
        .send()
        .await
        .unwrap();
    let q = query_of(&location(&res));
    assert_eq!(q["error"], "login_required");
    assert_eq!(q["state"], "st-par");
    assert_eq!(q["iss"], "http://tokend.test");
}

async fn concurrent_uses_of_a_request_uri_let_exactly_one_proceed(mode: Mode) {
    // Production: two instances share the stores, and the uses are split over them.
    let file = write_clients_file(&clients());
    let path = file.path().to_string_lossy().into_owned();
    let apps = instances(mode, |env| {
        env.insert("TOKEND_CLIENTS_FILE".into(), path.clone());
    })
    .await;
    for round in 0..3 {
        let uri = pushed(&apps[0], Auth::Basic("web", WEB_SECRET), &parameters(&[])).await;
        let uses = (0..8).map(|i| {
            let app = &apps[i % apps.len()];
            let url = authorize_with(app, "web", &uri, &[]);
            async move { app.http.get(url).send().await.unwrap() }
        });
        let answers = futures_util::future::join_all(uses).await;
        let statuses: Vec<StatusCode> = answers.iter().map(Response::status).collect();
        let proceeded = statuses
            .iter()
            .filter(|s| **s == StatusCode::SEE_OTHER)
            .count();
        let refused = statuses
            .iter()
            .filter(|s| **s == StatusCode::BAD_REQUEST)
            .count();
        assert_eq!(
            (proceeded, refused),
            (1, 7),
            "round {round}: exactly one use proceeds: {statuses:?}"
        );
        for res in answers {
            match res.status() {
                StatusCode::SEE_OTHER => assert!(location(&res).starts_with("/login?req=")),
                _ => assert_error_page(res, "invalid_request_uri").await,
            }
        }
    }
}

async fn a_request_uri_belongs_to_the_client_that_pushed_it(mode: Mode) {
    let app = spawn(mode).await;
    let uri = pushed(&app, Auth::Basic("web", WEB_SECRET), &parameters(&[])).await;
    // Another client's id (RFC 9126 §2.2: the request URI is bound to its client).
    for other in ["native", "par-only"] {
        assert_error_page(
            app.get(&authorize_with(&app, other, &uri, &[])).await,
            "invalid_request_uri",
        )
        .await;
    }
    // Unknown, forged or foreign-looking request URIs.
    let forged = format!("{PREFIX}{}", "A".repeat(43));
    for bad in [
        forged.as_str(),
        "urn:ietf:params:oauth:request_uri:short",
        "https://app.example/request.jwt",
        &uri.replace(PREFIX, "urn:example:"),
    ] {
        assert_error_page(
            app.get(&authorize_with(&app, "web", bad, &[])).await,
            "invalid_request_uri",
        )
        .await;
    }
    // An unknown client is the unknown-application page, as without a request URI.
    assert_error_page(
        app.get(&authorize_with(&app, "nobody", &uri, &[])).await,
        "invalid_client",
    )
    .await;
    // None of that spent it: its own client still can use it.
    let res = app.get(&authorize_with(&app, "web", &uri, &[])).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(location(&res).starts_with("/login?req="));
}

async fn a_pushed_request_expires_after_a_minute(mode: Mode) {
    let app = spawn(mode).await;
    let early = pushed(&app, Auth::Basic("web", WEB_SECRET), &parameters(&[])).await;
    let late = pushed(&app, Auth::Basic("web", WEB_SECRET), &parameters(&[])).await;
    app.clock.advance(Duration::from_secs(59));
    let res = app.get(&authorize_with(&app, "web", &early, &[])).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "59 s: still good");
    app.clock.advance(Duration::from_secs(2));
    assert_error_page(
        app.get(&authorize_with(&app, "web", &late, &[])).await,
        "invalid_request_uri",
    )
    .await;
}

async fn a_client_that_requires_pushed_requests_must_push_them(mode: Mode) {
    let app = spawn(mode).await;
    // A plain request: refused at the client's redirect URI (RFC 9126 §4, §6).
    let q = serde_urlencoded::to_string(
        [("client_id", "par-only")]
            .into_iter()
            .chain(parameters(&[("state", "st-plain")]))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let res = app.get(&format!("/oauth/authorize?{q}")).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let to = location(&res);
    assert!(to.starts_with(&format!("{REDIRECT}?")), "{to}");
    let q = query_of(&to);
    assert_eq!(q["error"], "invalid_request");
    assert!(q["error_description"].contains("push"), "{q:?}");
    assert!(!q.contains_key("code"));
    assert_eq!(q["state"], "st-plain");
    assert_eq!(q["iss"], "http://tokend.test");
    // Pushed, it signs in and gets tokens.
    let uri = pushed(&app, Auth::Basic("par-only", WEB_SECRET), &parameters(&[])).await;
    let res = app.get(&authorize_with(&app, "par-only", &uri, &[])).await;
    let res = app.sign_in(&location(&res), PASSWORD).await;
    let cb = query_of(&location(&res));
    assert_eq!(cb["state"], "st-par");
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("par-only", Some(WEB_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", cb["code"].as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let m = app.metrics_text().await;
    assert_eq!(authorizations(&m, "refused", "confidential"), 1, "{m}");
}

async fn client_authentication_failures_are_invalid_client(mode: Mode) {
    let app = spawn(mode).await;
    let params = parameters(&[]);
    for (auth, what) in [
        (Auth::None, "no client authentication"),
        (Auth::Basic("web", "wrong secret"), "a wrong secret"),
        (
            Auth::Post("web", "wrong secret"),
            "a wrong secret in the body",
        ),
        (Auth::Id("web"), "a confidential client without its secret"),
        (Auth::Basic("nobody", WEB_SECRET), "an unknown client"),
        (
            Auth::Basic("post-only", WEB_SECRET),
            "a method other than the registered client_secret_post",
        ),
        (
            Auth::Post("native", "secret"),
            "a public client with a secret",
        ),
    ] {
        let res = push(&app, auth, &params).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert!(
            res.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic"),
            "{what}"
        );
        assert_eq!(error_code(res).await, "invalid_client", "{what}");
    }
    // The registered method works.
    pushed(&app, Auth::Post("post-only", WEB_SECRET), &params).await;
    // Basic credentials and another client_id in the body: refused as ambiguous.
    let res = app
        .http
        .post(app.url("/oauth/par"))
        .basic_auth("web", Some(WEB_SECRET))
        .form(&[params.as_slice(), &[("client_id", "native")]].concat())
        .send()
        .await
        .unwrap();
    assert_refused(res, "invalid_request").await;
    let m = app.metrics_text().await;
    assert_eq!(authorizations(&m, "pushed", "confidential"), 1, "{m}");
}

async fn invalid_authorization_parameters_are_refused_as_json(mode: Mode) {
    let app = spawn(mode).await;
    let web = Auth::Basic("web", WEB_SECRET);
    let jwt = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ3ZWIifQ.";
    let pushed_uri = format!("{PREFIX}{}", "A".repeat(43));
    for (auth, extra, error, needle) in [
        (
            web,
            vec![("response_type", "")],
            "invalid_request",
            "response_type",
        ),
        (
            web,
            vec![("response_type", "token")],
            "unsupported_response_type",
            "code",
        ),
        (
            web,
            vec![("redirect_uri", "https://evil.example/cb")],
            "invalid_request",
            "redirect_uri",
        ),
        (
            web,
            vec![("code_challenge", "")],
            "invalid_request",
            "code_challenge",
        ),
        (
            web,
            vec![("code_challenge_method", "plain")],
            "invalid_request",
            "S256",
        ),
        (
            web,
            vec![("code_challenge", "short")],
            "invalid_request",
            "43-character",
        ),
        (
            web,
            vec![("scope", "openid admin")],
            "invalid_scope",
            "admin",
        ),
        (
            web,
            vec![("request", jwt)],
            "request_not_supported",
            "request",
        ),
        (web, vec![("prompt", "bogus")], "invalid_request", "prompt"),
        (
            web,
            vec![("response_mode", "fragment")],
            "invalid_request",
            "response_mode",
        ),
        (web, vec![("max_age", "-1")], "invalid_request", "max_age"),
        // A pushed request is what a request_uri names; it cannot carry one (RFC 9126 §2.1).
        (
            web,
            vec![("request_uri", pushed_uri.as_str())],
            "invalid_request",
            "RFC 9126",
        ),
        (
            Auth::Basic("svc", WEB_SECRET),
            vec![],
            "unauthorized_client",
            "authorization code",
        ),
        (
            Auth::Id("two-uris"),
            vec![("redirect_uri", "")],
            "invalid_request",
            "redirect_uri",
        ),
    ] {
        let res = push(&app, auth, &parameters(&extra)).await;
        assert_eq!(
            res.headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap()),
            Some("no-store"),
            "{extra:?}"
        );
        let description = assert_refused(res, error).await;
        assert!(description.contains(needle), "{extra:?}: {description}");
    }
    // Not a form, not a POST.
    let res = app
        .http
        .post(app.url("/oauth/par"))
        .basic_auth("web", Some(WEB_SECRET))
        .json(&json!({"response_type": "code"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let res = app.http.get(app.url("/oauth/par")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "POST");
    // Nothing was pushed; the refusals are counted.
    let m = app.metrics_text().await;
    assert_eq!(authorizations(&m, "pushed", "confidential"), 0, "{m}");
    assert_eq!(authorizations(&m, "refused", "confidential"), 10, "{m}");
}

async fn discovery_names_the_endpoint(mode: Mode) {
    let app = spawn(mode).await;
    for path in DISCOVERY_DOCUMENTS {
        let doc = app.get_json(path).await;
        assert_eq!(
            doc["pushed_authorization_request_endpoint"], "http://tokend.test/oauth/par",
            "{path}"
        );
        assert_eq!(
            doc["require_pushed_authorization_requests"], false,
            "{path}"
        );
    }
}

/// `tokend clients create --require-par` stores a client that must push (production mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_cli_creates_a_client_that_must_push() {
    use crate::oauth::{listed_client, tokend_cli, tokend_cli_ok};
    let (env, _) = test_env(Mode::Production);
    tokend_cli_ok(
        &env,
        &[
            "clients",
            "create",
            "--id",
            "cli-par",
            "--grant",
            "authorization_code",
            "--redirect-uri",
            REDIRECT,
            "--scope",
            "read",
            "--public",
            "--first-party",
            "--require-par",
            "--json",
        ],
    );
    // Only a client with the authorization_code grant can be required to push.
    let bad = tokend_cli(
        &env,
        &[
            "clients",
            "create",
            "--grant",
            "client_credentials",
            "--require-par",
        ],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("require_pushed_authorization_requests"),
        "{err}"
    );
    let (row, _) = listed_client(&env, "cli-par");
    assert_eq!(row["require_pushed_authorization_requests"], true, "{row}");

    let app = spawn_env(
        Mode::Production,
        env.clone(),
        None,
        tokend::clock::ManualClock::starting_now(),
    )
    .await;
    let q = serde_urlencoded::to_string(
        [("client_id", "cli-par")]
            .into_iter()
            .chain(parameters(&[]))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let res = app
        .http
        .get(app.url(&format!("/oauth/authorize?{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(query_of(&location(&res))["error"], "invalid_request");
    let uri = pushed(&app, Auth::Id("cli-par"), &parameters(&[])).await;
    let res = app
        .http
        .get(authorize_with(&app, "cli-par", &uri, &[]))
        .send()
        .await
        .unwrap();
    assert!(location(&res).starts_with("/login?req="));
    app.stop().await;
}

/// With Redis down nothing is pushed nor taken: 503, never a request accepted unchecked nor
/// a redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_pushing_and_using_answer_503() {
    let mut redis = crate::services::OwnedRedis::start().await;
    let url = redis.url();
    let file = write_clients_file(&clients());
    let path = file.path().to_string_lossy().into_owned();
    let app = spawn_app_with(Mode::Production, move |env| {
        env.insert("TOKEND_REDIS_URL".into(), url);
        env.insert("TOKEND_CLIENTS_FILE".into(), path);
    })
    .await;
    let uri = pushed(
        &app,
        Auth::Id("native"),
        &parameters(&[("redirect_uri", "http://127.0.0.1/callback")]),
    )
    .await;
    redis.stop().await;
    let res = push(
        &app,
        Auth::Id("native"),
        &parameters(&[("redirect_uri", "http://127.0.0.1/callback")]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(res).await, "temporarily_unavailable");
    let res = app
        .http
        .get(authorize_with(&app, "native", &uri, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().get("location").is_none());
    app.stop().await;
}
