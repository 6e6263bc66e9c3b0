//! The device authorization grant (RFC 8628, docs/device.md), in both modes: a device asks for
//! codes, a person approves on the `/device` page as a browser would (cookies, the sign-in page,
//! form posts with the CSRF token), and the device polls the token endpoint. Every answer of
//! the grant, the tokens exactly once, the user-code throttles, bad input, the stores' contract,
//! and a real browser.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures_util::future::join_all;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tokend::clock::{Clock, SystemClock};
use tokend::store::memory::MemoryDevices;
use tokend::store::redis::RedisStore;
use tokend::store::{
    DecideOutcome, DeviceDecision, DevicePoll, DeviceStatus, DeviceStore, NewDevice,
};

use crate::helpers::*;
use crate::in_both_modes;
use crate::services;

const PASSWORD: &str = "correct horse battery";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const CLI_SECRET: &str = "cli-secret-0123456789abcdef";
const ALPHABET: &str = "BCDFGHJKLMNPQRSTVWXZ";

in_both_modes!(
    a_device_is_approved_on_the_page_and_gets_its_tokens_once,
    polling_faster_than_the_interval_slows_down_and_the_interval_grows,
    a_denied_request_answers_access_denied,
    an_expired_device_code_answers_expired_token,
    concurrent_polls_after_approval_yield_one_token_response,
    concurrent_approvals_record_one_decision,
    a_device_code_of_another_client_is_invalid_grant,
    the_device_authorization_endpoint_checks_the_client_and_the_scope,
    bad_device_codes_are_invalid_grant_without_a_store_step,
    the_device_page_answers_bad_input_with_a_clear_page,
    signing_in_for_a_device_returns_to_its_page_and_nowhere_else,
    wrong_user_codes_are_throttled_per_address,
    concurrent_wrong_user_codes_get_no_more_checks_than_the_budget,
    wrong_user_codes_are_throttled_service_wide,
    the_user_code_limits_are_off_with_the_rate_limits,
    a_pending_poll_is_one_store_operation,
    ending_all_sessions_withdraws_an_approval,
    an_approval_is_a_consent_that_can_be_withdrawn,
);

fn clients() -> Value {
    json!([
        {"client_id": "tv", "grant_types": [GRANT, "refresh_token"], "scopes": ["read"],
         "client_name": "Living Room TV"},
        {"client_id": "cli", "client_secret": CLI_SECRET, "grant_types": [GRANT],
         "scopes": ["read", "write"], "client_name": "Example CLI", "first_party": true},
        {"client_id": "svc", "client_secret": CLI_SECRET, "grant_types": ["client_credentials"],
         "scopes": ["read"]},
    ])
}

struct App {
    app: TestApp,
    _file: tempfile::NamedTempFile,
}

impl std::ops::Deref for App {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

async fn spawn_with(mode: Mode, adjust: impl FnOnce(&mut HashMap<String, String>)) -> App {
    let file = write_clients_file(&clients());
    let path = file.path().to_string_lossy().into_owned();
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_CLIENTS_FILE".into(), path);
        adjust(env);
    })
    .await;
    let res = app.register("ada", "ada@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    App { app, _file: file }
}

async fn spawn(mode: Mode) -> App {
    spawn_with(mode, |_| {}).await
}

/// The path and query of an absolute URL of the test issuer.
fn path_of(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    }
}

/// `POST /oauth/device_authorization` for the public client `client`.
async fn device_authorization(app: &TestApp, client: &str, scope: Option<&str>) -> Response {
    let mut form = vec![("client_id", client)];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    app.http
        .post(app.url("/oauth/device_authorization"))
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// Device and user codes for the public client `tv`.
async fn start(app: &TestApp) -> Value {
    let res = device_authorization(app, "tv", Some("openid profile read")).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

/// One poll of the token endpoint by the public client `client`.
async fn poll_as(app: &TestApp, client: &str, device_code: &str) -> Response {
    app.http
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", GRANT),
            ("client_id", client),
            ("device_code", device_code),
        ])
        .send()
        .await
        .unwrap()
}

async fn poll(app: &TestApp, device_code: &str) -> Response {
    poll_as(app, "tv", device_code).await
}

/// A poll's status and body.
async fn poll_answer(app: &TestApp, device_code: &str) -> (StatusCode, Value) {
    let res = poll(app, device_code).await;
    (res.status(), res.json().await.unwrap())
}

/// Asserts that a poll answers 400 with `error`; answers the body.
async fn poll_error(app: &TestApp, device_code: &str, error: &str) -> Value {
    let (status, body) = poll_answer(app, device_code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], error, "{body}");
    body
}

/// The page a browser lands on for `user_code` after signing in as ada: the approval page's
/// HTML. `browser` keeps its session for later pages.
async fn open_signed_in(app: &TestApp, browser: &reqwest::Client, complete: &str) -> String {
    open_signed_in_as(app, browser, complete, "ada", PASSWORD).await
}

/// Opens `complete` (a `verification_uri_complete`) signed in as `username`, signing in on the
/// way if needed; answers the approval page.
async fn open_signed_in_as(
    app: &TestApp,
    browser: &reqwest::Client,
    complete: &str,
    username: &str,
    password: &str,
) -> String {
    let res = browser
        .get(app.url(&path_of(complete)))
        .send()
        .await
        .unwrap();
    let res = if res.status() == StatusCode::SEE_OTHER {
        // Not signed in: to the sign-in page, which brings the browser back.
        let login = location(&res);
        assert!(login.starts_with("/login?user_code="), "{login}");
        let html = browser
            .get(app.url(&login))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(html.contains("to connect your device"), "{html}");
        let code = url::form_urlencoded::parse(login.split_once('?').unwrap().1.as_bytes())
            .find(|(k, _)| k == "user_code")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        let res = browser
            .post(app.url("/login"))
            .form(&[
                ("csrf_token", csrf_of(&html).as_str()),
                ("user_code", &code),
                ("username", username),
                ("password", password),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        let back = location(&res);
        assert_eq!(back, path_of(complete), "back to the device's page");
        browser.get(app.url(&back)).send().await.unwrap()
    } else {
        res
    };
    assert_eq!(res.status(), StatusCode::OK);
    res.text().await.unwrap()
}

/// Posts the approval page's decision; answers the response.
async fn decide(
    app: &TestApp,
    browser: &reqwest::Client,
    html: &str,
    user_code: &str,
    decision: &str,
) -> Response {
    browser
        .post(app.url("/device"))
        .form(&[
            ("csrf_token", csrf_of(html).as_str()),
            ("user_code", user_code),
            ("decision", decision),
        ])
        .send()
        .await
        .unwrap()
}

/// Signs in on a new browser and approves `d`; answers the browser.
async fn approve(app: &TestApp, d: &Value) -> reqwest::Client {
    approve_as(app, d, "ada", PASSWORD).await
}

/// Signs in as `username` on a new browser and approves the device authorization `d` (its
/// `verification_uri_complete` and `user_code`), as a person would on the page; answers the
/// browser. Other tests approve their devices with it.
pub(crate) async fn approve_as(
    app: &TestApp,
    d: &Value,
    username: &str,
    password: &str,
) -> reqwest::Client {
    decide_as(app, d, username, password, "approve").await
}

/// Signs in as `username` on a new browser and answers `decision` (`approve` or `deny`) for
/// the device authorization `d`; answers the browser.
pub(crate) async fn decide_as(
    app: &TestApp,
    d: &Value,
    username: &str,
    password: &str,
    decision: &str,
) -> reqwest::Client {
    let browser = new_browser();
    let complete = d["verification_uri_complete"].as_str().unwrap();
    let html = open_signed_in_as(app, &browser, complete, username, password).await;
    let user_code = d["user_code"].as_str().unwrap();
    let res = decide(app, &browser, &html, user_code, decision).await;
    assert_eq!(res.status(), StatusCode::OK);
    let done = res.text().await.unwrap();
    assert!(done.contains("You can go back to your device."), "{done}");
    browser
}

/// `GET /device?user_code=…` from `browser`, optionally as another client address.
async fn enter_code(
    app: &TestApp,
    browser: &reqwest::Client,
    code: &str,
    from: Option<IpAddr>,
) -> Response {
    let mut req = browser
        .get(app.url("/device"))
        .query(&[("user_code", code)]);
    if let Some(ip) = from {
        req = req.header("x-forwarded-for", ip.to_string());
    }
    req.send().await.unwrap()
}

/// A user code of the alphabet that names nothing (a fresh random one: 20^8 codes).
fn wrong_code(i: usize) -> String {
    let letters: Vec<char> = ALPHABET.chars().collect();
    let mut n = i + (uuid::Uuid::new_v4().as_u128() % 1_000_000_000) as usize * 1000;
    (0..8)
        .map(|_| {
            let c = letters[n % 20];
            n /= 20;
            c
        })
        .collect()
}

/// The value of one series of `/metrics` (0 when absent).
async fn metric(app: &TestApp, series: &str) -> f64 {
    app.metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// The flow
// ---------------------------------------------------------------------------------------------

async fn a_device_is_approved_on_the_page_and_gets_its_tokens_once(mode: Mode) {
    let app = spawn(mode).await;
    let res = device_authorization(&app, "tv", Some("openid profile read")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let d: Value = res.json().await.unwrap();
    // RFC 8628 §3.2.
    let device_code = d["device_code"].as_str().unwrap();
    assert_eq!(device_code.len(), 43);
    let user_code = d["user_code"].as_str().unwrap();
    let (head, tail) = user_code.split_once('-').unwrap();
    assert!(
        head.len() == 4
            && tail.len() == 4
            && format!("{head}{tail}")
                .chars()
                .all(|c| ALPHABET.contains(c)),
        "{user_code}"
    );
    assert_eq!(d["verification_uri"], "http://tokend.test/device");
    assert_eq!(
        d["verification_uri_complete"],
        format!("http://tokend.test/device?user_code={user_code}")
    );
    assert_eq!(d["expires_in"], 600);
    assert_eq!(d["interval"], 5);
    assert_eq!(
        d.as_object().unwrap().len(),
        6,
        "nothing else in the answer: {d}"
    );

    // The device polls while nobody has answered.
    let body = poll_error(&app, device_code, "authorization_pending").await;
    assert!(body.get("interval").is_none(), "{body}");

    // The person opens the link, signs in, sees the client, the code and the scopes.
    let browser = new_browser();
    let html = open_signed_in(
        &app,
        &browser,
        d["verification_uri_complete"].as_str().unwrap(),
    )
    .await;
    assert!(
        html.contains("Connect <strong>Living Room TV</strong>?"),
        "{html}"
    );
    assert!(html.contains(&format!("<p class=\"user-code\">{user_code}</p>")));
    assert!(html.contains("Signed in as <strong>ada</strong>"));
    assert!(html.contains("<code class=\"scope-name\">read</code>"));
    assert!(html.contains("<code class=\"scope-name\">openid</code>"));
    // Still pending until the decision.
    app.clock.advance(std::time::Duration::from_secs(5));
    poll_error(&app, device_code, "authorization_pending").await;
    let res = decide(&app, &browser, &html, user_code, "approve").await;
    assert_eq!(res.status(), StatusCode::OK);
    let done = res.text().await.unwrap();
    assert!(done.contains("<h1>Device connected</h1>"), "{done}");
    assert!(done.contains("You can go back to your device."));

    // The next poll gets the tokens, issued like the code flow's.
    app.clock.advance(std::time::Duration::from_secs(5));
    let res = poll(&app, device_code).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let tokens: Value = res.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["scope"], "openid profile read");
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"]
        .as_str()
        .expect("tv has refresh_token");
    let at = claims(access);
    assert_eq!(at["client_id"], "tv");
    assert_eq!(at["scope"], "openid profile read");
    assert!(at["sid"].is_string());
    let id = tokens["id_token"].as_str().expect("an id_token for openid");
    assert_eq!(header(id)["typ"], "JWT");
    let c = claims(id);
    assert_eq!(c["aud"], "tv");
    assert_eq!(c["sub"], at["sub"]);
    assert_eq!(c["sid"], at["sid"]);
    assert_eq!(c["auth_time"], at["auth_time"]);
    assert_eq!(c["amr"], json!(["pwd"]));
    assert_eq!(c["preferred_username"], "ada");
    assert!(c.get("nonce").is_none() && c.get("email").is_none());
    assert_eq!(
        app.get_bearer("/auth/verify", access).await.status(),
        StatusCode::OK
    );
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "tv"),
            ("refresh_token", refresh),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "the refresh family works");

    // Exactly once: every later poll is refused, however long the device waits.
    for _ in 0..2 {
        app.clock.advance(std::time::Duration::from_secs(5));
        let body = poll_error(&app, device_code, "invalid_grant").await;
        assert!(body["error_description"]
            .as_str()
            .unwrap()
            .contains("already used"));
    }
    // The code is spent on the page too.
    let res = enter_code(&app, &browser, user_code, None).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("already been used"));

    let m = app.metrics_text().await;
    for line in [
        "tokend_device_authorizations_total{event=\"started\"} 1",
        "tokend_device_authorizations_total{event=\"approved\"} 1",
        "tokend_device_authorizations_total{event=\"redeemed\"} 1",
        "tokend_device_polls_total{answer=\"authorization_pending\"} 2",
        "tokend_device_polls_total{answer=\"tokens\"} 1",
        "tokend_device_polls_total{answer=\"invalid_grant\"} 2",
        "tokend_tokens_issued_total{alg=\"EdDSA\",grant=\"device_code\",type=\"access\"} 1",
        "tokend_tokens_issued_total{alg=\"EdDSA\",grant=\"device_code\",type=\"id\"} 1",
        "tokend_device_user_codes_total{result=\"valid\"} 3",
        "tokend_device_user_codes_total{result=\"used\"} 1",
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
}

async fn polling_faster_than_the_interval_slows_down_and_the_interval_grows(mode: Mode) {
    let app = spawn(mode).await;
    let d = start(&app).await;
    let code = d["device_code"].as_str().unwrap();
    // The first poll is never too soon.
    poll_error(&app, code, "authorization_pending").await;
    // RFC 8628 §3.5: each poll sooner than the interval adds 5 s to it, for good.
    let body = poll_error(&app, code, "slow_down").await;
    assert_eq!(body["interval"], 10, "{body}");
    app.clock.advance(std::time::Duration::from_secs(5));
    let body = poll_error(&app, code, "slow_down").await;
    assert_eq!(body["interval"], 15, "5 s is too soon now: {body}");
    // Waiting the grown interval is pending again, and the interval stays grown.
    app.clock.advance(std::time::Duration::from_secs(15));
    poll_error(&app, code, "authorization_pending").await;
    app.clock.advance(std::time::Duration::from_secs(14));
    let body = poll_error(&app, code, "slow_down").await;
    assert_eq!(body["interval"], 20, "{body}");
    app.clock.advance(std::time::Duration::from_secs(20));
    poll_error(&app, code, "authorization_pending").await;
    // Approved: the next poll gets its tokens whatever the pace.
    approve(&app, &d).await;
    let (status, body) = poll_answer(&app, code).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        metric(&app, "tokend_device_polls_total{answer=\"slow_down\"}").await,
        3.0
    );
}

async fn a_denied_request_answers_access_denied(mode: Mode) {
    let app = spawn(mode).await;
    let d = start(&app).await;
    let code = d["device_code"].as_str().unwrap();
    let browser = new_browser();
    let html = open_signed_in(
        &app,
        &browser,
        d["verification_uri_complete"].as_str().unwrap(),
    )
    .await;
    let res = decide(
        &app,
        &browser,
        &html,
        d["user_code"].as_str().unwrap(),
        "deny",
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = res.text().await.unwrap();
    assert!(page.contains("<h1>Request denied</h1>"), "{page}");
    for _ in 0..2 {
        app.clock.advance(std::time::Duration::from_secs(5));
        poll_error(&app, code, "access_denied").await;
    }
    // Nothing was issued, and the decision stands: approving now is too late.
    let res = decide(
        &app,
        &browser,
        &html,
        d["user_code"].as_str().unwrap(),
        "approve",
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("already been used"));
    app.clock.advance(std::time::Duration::from_secs(5));
    poll_error(&app, code, "access_denied").await;
    assert_eq!(
        metric(&app, "tokend_device_authorizations_total{event=\"denied\"}").await,
        1.0
    );
}

async fn an_expired_device_code_answers_expired_token(mode: Mode) {
    let app = spawn(mode).await;
    let pending = start(&app).await;
    let approved = start(&app).await;
    let browser = new_browser();
    let html = open_signed_in(
        &app,
        &browser,
        pending["verification_uri_complete"].as_str().unwrap(),
    )
    .await;
    approve(&app, &approved).await;
    // RFC 8628 §3.2: the codes live `expires_in` seconds.
    app.clock.advance(std::time::Duration::from_secs(600));
    poll_error(
        &app,
        pending["device_code"].as_str().unwrap(),
        "expired_token",
    )
    .await;
    poll_error(
        &app,
        approved["device_code"].as_str().unwrap(),
        "expired_token",
    )
    .await;
    // The page says so, for the code entered and for the approval form left open.
    let code = pending["user_code"].as_str().unwrap();
    let res = enter_code(&app, &browser, code, None).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("That code has expired."));
    let res = decide(&app, &browser, &html, code, "approve").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("That code has expired."));
    assert_eq!(
        metric(&app, "tokend_device_polls_total{answer=\"expired_token\"}").await,
        2.0
    );
}

async fn concurrent_polls_after_approval_yield_one_token_response(mode: Mode) {
    // In production mode two instances share the stores; the polls are split over them.
    let file = write_clients_file(&clients());
    let path = file.path().to_string_lossy().into_owned();
    let apps = instances(mode, |env| {
        env.insert("TOKEND_CLIENTS_FILE".into(), path.clone());
    })
    .await;
    let app = &apps[0];
    assert_eq!(
        app.register("ada", "ada@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::CREATED
    );
    let d = start(app).await;
    let code = d["device_code"].as_str().unwrap().to_string();
    approve(app, &d).await;
    let answers = join_all((0..16).map(|i| {
        let app = &apps[i % apps.len()];
        let code = code.clone();
        async move {
            let res = poll(app, &code).await;
            (res.status(), res.json::<Value>().await.unwrap())
        }
    }))
    .await;
    let tokens: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(tokens.len(), 1, "{answers:?}");
    assert!(tokens[0]["access_token"].is_string());
    for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_eq!(*status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "invalid_grant", "{body}");
    }
    // And later polls too.
    app.clock.advance(std::time::Duration::from_secs(5));
    poll_error(&apps[apps.len() - 1], &code, "invalid_grant").await;
}

async fn concurrent_approvals_record_one_decision(mode: Mode) {
    // Each request reserves a check of the user-code budget until its code proves right: room
    // for sixteen at once.
    let app = spawn_with(mode, |env| {
        env.insert("TOKEND_RATE_LIMIT_USER_CODE".into(), "100/min".into());
    })
    .await;
    let d = start(&app).await;
    let user_code = d["user_code"].as_str().unwrap();
    let browser = new_browser();
    let html = open_signed_in(
        &app,
        &browser,
        d["verification_uri_complete"].as_str().unwrap(),
    )
    .await;
    // Approve and deny at once from the same page, eight times each: one decision holds.
    let answers = join_all((0..16).map(|i| {
        let decision = if i % 2 == 0 { "approve" } else { "deny" };
        let (app, browser, html) = (&app, &browser, &html);
        async move {
            let res = decide(app, browser, html, user_code, decision).await;
            (res.status(), res.text().await.unwrap())
        }
    }))
    .await;
    let decided: Vec<&String> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, h)| h)
        .collect();
    assert_eq!(
        decided.len(),
        1,
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    for (status, html) in answers.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_eq!(*status, StatusCode::BAD_REQUEST);
        assert!(html.contains("already been used"), "{html}");
    }
    let approved = decided[0].contains("Device connected");
    let (status, body) = poll_answer(&app, d["device_code"].as_str().unwrap()).await;
    if approved {
        assert_eq!(status, StatusCode::OK, "{body}");
    } else {
        assert_eq!(body["error"], "access_denied", "{body}");
    }
}

async fn a_device_code_of_another_client_is_invalid_grant(mode: Mode) {
    let app = spawn(mode).await;
    let d = start(&app).await;
    let code = d["device_code"].as_str().unwrap();
    approve(&app, &d).await;
    // The confidential client `cli` may use the grant, but the code is tv's.
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("cli", Some(CLI_SECRET))
        .form(&[("grant_type", GRANT), ("device_code", code)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("another client"));
    // A client without the grant may not poll at all.
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("svc", Some(CLI_SECRET))
        .form(&[("grant_type", GRANT), ("device_code", code)])
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res).await, "unauthorized_client");
    // The stranger's polls took nothing: the owner still gets its tokens.
    let (status, body) = poll_answer(&app, code).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

async fn the_device_authorization_endpoint_checks_the_client_and_the_scope(mode: Mode) {
    let app = spawn(mode).await;
    let post = |form: Vec<(&'static str, String)>| {
        let http = app.http.clone();
        let url = app.url("/oauth/device_authorization");
        async move { http.post(url).form(&form).send().await.unwrap() }
    };
    // No client, an unknown one, a wrong secret: invalid_client (RFC 6749 §5.2).
    for form in [
        vec![],
        vec![("client_id", "nobody".to_string())],
        vec![
            ("client_id", "cli".to_string()),
            ("client_secret", "wrong".to_string()),
        ],
        vec![("client_id", "cli".to_string())],
    ] {
        let res = post(form).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(res.headers().contains_key("www-authenticate"));
        assert_eq!(error_code(res).await, "invalid_client");
    }
    // A client without the grant.
    let res = app
        .http
        .post(app.url("/oauth/device_authorization"))
        .basic_auth("svc", Some(CLI_SECRET))
        .form(&[("scope", "read")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "unauthorized_client");
    // Scopes: the client's and OpenID Connect's only; none asked, all of the client's.
    let res = device_authorization(&app, "tv", Some("read admin")).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "invalid_scope");
    let res = device_authorization(&app, "tv", Some(&"x".repeat(3000))).await;
    assert_eq!(error_code(res).await, "invalid_scope");
    // A confidential client authenticates, with Basic or in the body.
    let res = app
        .http
        .post(app.url("/oauth/device_authorization"))
        .basic_auth("cli", Some(CLI_SECRET))
        .form(&[("scope", "openid email write")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = post(vec![
        ("client_id", "cli".into()),
        ("client_secret", CLI_SECRET.into()),
    ])
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    // Not a form, a body over the limit.
    let res = app
        .http
        .post(app.url("/oauth/device_authorization"))
        .json(&json!({"client_id": "tv"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let res = post(vec![
        ("client_id", "tv".into()),
        ("scope", "read ".repeat(5000)),
    ])
    .await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The granted scope reaches the tokens: none asked means the client's.
    let res = device_authorization(&app, "tv", None).await;
    let d: Value = res.json().await.unwrap();
    approve(&app, &d).await;
    let (status, tokens) = poll_answer(&app, d["device_code"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tokens["scope"], "read");
    assert!(tokens.get("id_token").is_none(), "no openid, no id_token");
}

async fn bad_device_codes_are_invalid_grant_without_a_store_step(mode: Mode) {
    let app = spawn(mode).await;
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .form(&[("grant_type", GRANT), ("client_id", "tv")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "invalid_request");
    let random = uuid::Uuid::new_v4().simple().to_string();
    for code in [
        "x",
        "not a device code",
        "../../etc/passwd",
        &"A".repeat(44),
        &"é".repeat(30),
        &"a".repeat(10_000),
    ] {
        poll_error(&app, code, "invalid_grant").await;
    }
    // A well-formed code that was never issued is asked of the store, and unknown.
    let never = format!("{random}{}", &random[..11]);
    assert_eq!(never.len(), 43);
    let before = metric(
        &app,
        &format!(
            "tokend_store_operation_duration_seconds_count{{op=\"device_poll\",store=\"{}\"}}",
            kv_store(mode)
        ),
    )
    .await;
    poll_error(&app, &never, "invalid_grant").await;
    let after = metric(
        &app,
        &format!(
            "tokend_store_operation_duration_seconds_count{{op=\"device_poll\",store=\"{}\"}}",
            kv_store(mode)
        ),
    )
    .await;
    assert_eq!(after - before, 1.0);
    assert_eq!(before, 0.0, "malformed codes never reached the store");
}

async fn the_device_page_answers_bad_input_with_a_clear_page(mode: Mode) {
    let app = spawn(mode).await;
    let browser = new_browser();
    // The entry form.
    let res = browser.get(app.url("/device")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    assert!(res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    let html = res.text().await.unwrap();
    assert!(html.contains("<h1>Connect a device</h1>"), "{html}");
    assert!(!html.contains("role=\"alert\""));
    for (code, says) in [
        ("", "Enter the code shown on your device."),
        ("   ", "Enter the code shown on your device."),
        ("hello", "it has 8 letters"),
        ("AEIOUAEI", "it has 8 letters"),
        ("<script>alert(1)</script>", "it has 8 letters"),
        (&"B".repeat(5000), "it has 8 letters"),
        ("BCDF-GHJK-L", "it has 8 letters"),
    ] {
        let res = enter_code(&app, &browser, code, None).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{code:?}");
        let html = res.text().await.unwrap();
        assert!(html.contains(says), "{code:?}: {html}");
        assert!(!html.contains("<script>alert"), "escaped");
        assert!(
            html.len() < 10_000,
            "the field shows back a code's worth, not {}",
            code.len()
        );
    }
    let res = enter_code(&app, &browser, &wrong_code(1), None).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("That code is not right."));
    // A query that does not parse is an error page that says so.
    let res = browser
        .get(app.url("/device?user_code=%ZZ&user_code=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("invalid query"));

    // The form post: the CSRF token, a decision, a code.
    let d = start(&app).await;
    let user_code = d["user_code"].as_str().unwrap();
    let html = open_signed_in(
        &app,
        &browser,
        d["verification_uri_complete"].as_str().unwrap(),
    )
    .await;
    let csrf = csrf_of(&html);
    for (form, status) in [
        (vec![("user_code", user_code), ("decision", "approve")], 403),
        (
            vec![
                ("csrf_token", "forged"),
                ("user_code", user_code),
                ("decision", "approve"),
            ],
            403,
        ),
        (
            vec![
                ("csrf_token", csrf.as_str()),
                ("user_code", user_code),
                ("decision", "maybe"),
            ],
            400,
        ),
        (
            vec![("csrf_token", csrf.as_str()), ("user_code", user_code)],
            400,
        ),
        (
            vec![
                ("csrf_token", csrf.as_str()),
                ("user_code", "nope"),
                ("decision", "approve"),
            ],
            400,
        ),
        (
            vec![("csrf_token", csrf.as_str()), ("decision", "approve")],
            400,
        ),
    ] {
        let res = browser
            .post(app.url("/device"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "{form:?}");
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }
    // Another site's form is refused even with the token.
    let res = browser
        .post(app.url("/device"))
        .header("origin", "https://evil.example")
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("user_code", user_code),
            ("decision", "approve"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // None of it decided anything.
    poll_error(
        &app,
        d["device_code"].as_str().unwrap(),
        "authorization_pending",
    )
    .await;
    // A browser that is not signed in is sent to sign in.
    let stranger = new_browser();
    let res = enter_code(&app, &stranger, user_code, None).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), format!("/login?user_code={user_code}"));
}

async fn signing_in_for_a_device_returns_to_its_page_and_nowhere_else(mode: Mode) {
    let app = spawn(mode).await;
    let sign_in = |query: &'static str| {
        let app = &app;
        async move {
            let browser = new_browser();
            let html = browser
                .get(app.url(&format!("/login?{query}")))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let mut form = vec![
                ("csrf_token".to_string(), csrf_of(&html)),
                ("username".to_string(), "ada".to_string()),
                ("password".to_string(), PASSWORD.to_string()),
            ];
            // What the page carries back, as the browser would post it.
            let key = "name=\"user_code\" value=\"";
            if let Some(i) = html.find(key) {
                let rest = &html[i + key.len()..];
                form.push((
                    "user_code".into(),
                    rest[..rest.find('"').unwrap()].to_string(),
                ));
            }
            browser
                .post(app.url("/login"))
                .form(&form)
                .send()
                .await
                .unwrap()
        }
    };
    // A code in any spelling comes back normalised, to the device page only.
    let res = sign_in("user_code=bcdf%20ghjk").await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/device?user_code=BCDF-GHJK");
    // Anything that is not a code is no way back: the plain signed-in page.
    for query in [
        "user_code=%2F%2Fevil.example",
        "user_code=https%3A%2F%2Fevil.example%2F",
        "user_code=BCDF-GHJK%0D%0ALocation:%20https://evil.example",
        "user_code=/device?user_code=BCDF-GHJK",
        "next=https%3A%2F%2Fevil.example",
    ] {
        let res = sign_in(query).await;
        assert_eq!(res.status(), StatusCode::OK, "{query}");
        assert!(res.headers().get("location").is_none(), "{query}");
        assert!(res.text().await.unwrap().contains("You are signed in"));
    }
    // A code posted with the form directly is checked the same way.
    let browser = new_browser();
    let html = browser
        .get(app.url("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let res = browser
        .post(app.url("/login"))
        .form(&[
            ("csrf_token", csrf_of(&html).as_str()),
            ("username", "ada"),
            ("password", PASSWORD),
            ("user_code", "//evil.example/x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// The user-code throttles (RFC 8628 §5.1)
// ---------------------------------------------------------------------------------------------

async fn wrong_user_codes_are_throttled_per_address(mode: Mode) {
    let app = spawn_with(mode, |env| {
        env.insert("TOKEND_RATE_LIMIT_USER_CODE".into(), "3/min".into());
        env.insert("TOKEND_TRUSTED_PROXIES".into(), "127.0.0.1".into());
    })
    .await;
    let d = start(&app).await;
    let right = d["user_code"].as_str().unwrap();
    let browser = new_browser();
    let here = Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)));
    // Right codes cost nothing, however often.
    for _ in 0..6 {
        let res = enter_code(&app, &browser, right, here).await;
        assert_eq!(
            res.status(),
            StatusCode::SEE_OTHER,
            "not signed in: to sign in"
        );
    }
    // Nor do codes that cannot be codes.
    for _ in 0..6 {
        let res = enter_code(&app, &browser, "nope", here).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }
    for i in 0..3 {
        let res = enter_code(&app, &browser, &wrong_code(i), here).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }
    // The fourth wrong code, and now any code from this address: a page saying when to retry.
    for code in [wrong_code(3), right.to_string()] {
        let res = enter_code(&app, &browser, &code, here).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=20).contains(&retry), "{retry}");
        let html = res.text().await.unwrap();
        assert!(html.contains("Too many wrong codes."), "{html}");
        assert!(html.contains("<h1>Connect a device</h1>"));
    }
    // Another address has its own budget.
    let elsewhere = Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)));
    let res = enter_code(&app, &browser, right, elsewhere).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    // The budget refills with time (3 a minute: one every 20 s).
    app.clock.advance(std::time::Duration::from_secs(20));
    let res = enter_code(&app, &browser, &wrong_code(4), here).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = enter_code(&app, &browser, &wrong_code(5), here).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        metric(&app, "tokend_rate_limited_total{limit=\"user_code\"}").await,
        3.0
    );
    assert_eq!(
        metric(&app, "tokend_device_user_codes_total{result=\"unknown\"}").await,
        4.0
    );
}

async fn concurrent_wrong_user_codes_get_no_more_checks_than_the_budget(mode: Mode) {
    let app = spawn_with(mode, |env| {
        env.insert("TOKEND_RATE_LIMIT_USER_CODE".into(), "5/min".into());
    })
    .await;
    let browser = new_browser();
    let answers = join_all((0..24).map(|i| {
        let (app, browser) = (&app, &browser);
        async move {
            enter_code(app, browser, &wrong_code(i), None)
                .await
                .status()
        }
    }))
    .await;
    let checked = answers
        .iter()
        .filter(|s| **s == StatusCode::BAD_REQUEST)
        .count();
    let refused = answers
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((checked, refused), (5, 19), "{answers:?}");
}

async fn wrong_user_codes_are_throttled_service_wide(mode: Mode) {
    let app = spawn_with(mode, |env| {
        env.insert("TOKEND_RATE_LIMIT_USER_CODE".into(), "100/min".into());
        env.insert("TOKEND_RATE_LIMIT_USER_CODE_GLOBAL".into(), "6/min".into());
        env.insert("TOKEND_TRUSTED_PROXIES".into(), "127.0.0.1".into());
    })
    .await;
    let d = start(&app).await;
    let browser = new_browser();
    // Many addresses at once, one wrong code each: the service's budget holds them all.
    let answers = join_all((0..30u8).map(|i| {
        let (app, browser) = (&app, &browser);
        let from = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, i + 1)));
        async move {
            let res = enter_code(app, browser, &wrong_code(usize::from(i)), from).await;
            let retry = res.headers().get("retry-after").is_some();
            (res.status(), retry)
        }
    }))
    .await;
    let checked = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::BAD_REQUEST)
        .count();
    let refused: Vec<_> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!((checked, refused.len()), (6, 24), "{answers:?}");
    assert!(refused.iter().all(|(_, retry)| *retry));
    // While it is spent, even a right code from a fresh address waits (docs/device.md: the
    // price of a budget the whole code space shares), and no address was charged for it.
    let fresh = Some(IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)));
    let right = d["user_code"].as_str().unwrap();
    let res = enter_code(&app, &browser, right, fresh).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    app.clock.advance(std::time::Duration::from_secs(10));
    let res = enter_code(&app, &browser, right, fresh).await;
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "refilled: on to sign in"
    );
    assert_eq!(
        metric(
            &app,
            "tokend_rate_limited_total{limit=\"user_code_global\"}"
        )
        .await,
        25.0
    );
}

async fn the_user_code_limits_are_off_with_the_rate_limits(mode: Mode) {
    let app = spawn_with(mode, |env| {
        env.insert("TOKEND_RATE_LIMIT".into(), "off".into());
        env.insert("TOKEND_RATE_LIMIT_USER_CODE".into(), "1/min".into());
        env.insert("TOKEND_RATE_LIMIT_USER_CODE_GLOBAL".into(), "1/min".into());
    })
    .await;
    let browser = new_browser();
    for i in 0..5 {
        let res = enter_code(&app, &browser, &wrong_code(i), None).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }
}

// ---------------------------------------------------------------------------------------------
// Costs, sessions, consents
// ---------------------------------------------------------------------------------------------

fn kv_store(mode: Mode) -> &'static str {
    match mode {
        Mode::Embedded => "memory",
        Mode::Production => "redis",
    }
}

/// `tokend_store_operation_duration_seconds_count` by label set.
async fn store_ops(app: &TestApp) -> HashMap<String, f64> {
    app.metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("tokend_store_operation_duration_seconds_count{"))
        // The mail worker delivers the registration's mail in the background, on its own time.
        .filter(|l| !l.contains("op=\"mail_"))
        // So are account events (docs/events.md, "Where events go").
        .filter(|l| !l.contains("op=\"event_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

async fn a_pending_poll_is_one_store_operation(mode: Mode) {
    let app = spawn(mode).await;
    let d = start(&app).await;
    let code = d["device_code"].as_str().unwrap();
    // Pending, pending after the interval, and too soon (which costs the same).
    for (poll_no, answer, then_wait) in [
        (0, "authorization_pending", 5),
        (1, "authorization_pending", 0),
        (2, "slow_down", 0),
    ] {
        let before = store_ops(&app).await;
        poll_error(&app, code, answer).await;
        let after = store_ops(&app).await;
        app.clock.advance(std::time::Duration::from_secs(then_wait));
        let delta: Vec<(String, f64)> = after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d > 0.0)
            .collect();
        // Every store of every kind: one script on the device's record, nothing else.
        assert_eq!(
            delta,
            [(
                format!(
                    "tokend_store_operation_duration_seconds_count{{op=\"device_poll\",store=\"{}\"}}",
                    kv_store(mode)
                ),
                1.0
            )],
            "poll {poll_no}"
        );
    }
}

async fn ending_all_sessions_withdraws_an_approval(mode: Mode) {
    let app = spawn(mode).await;
    let d = start(&app).await;
    approve(&app, &d).await;
    // Before the device comes back, the user signs out everywhere.
    let (access, _) = app.login_pair("ada@example.com", PASSWORD).await;
    assert_eq!(
        app.post_bearer("/auth/logout/all", &access).await.status(),
        StatusCode::NO_CONTENT
    );
    let body = poll_error(&app, d["device_code"].as_str().unwrap(), "access_denied").await;
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("sessions"));

    // A password change between approval and poll withdraws it too.
    let d = start(&app).await;
    approve(&app, &d).await;
    let (access, _) = app.login_pair("ada@example.com", PASSWORD).await;
    let res = app
        .put_bearer(
            "/users/me/password",
            &access,
            &json!({"current_password": PASSWORD, "new_password": "another good password"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    poll_error(&app, d["device_code"].as_str().unwrap(), "access_denied").await;
}

async fn an_approval_is_a_consent_that_can_be_withdrawn(mode: Mode) {
    let app = spawn(mode).await;
    let d = start(&app).await;
    approve(&app, &d).await;
    let (_, tokens) = poll_answer(&app, d["device_code"].as_str().unwrap()).await;
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (access, _) = app.login_pair("ada@example.com", PASSWORD).await;
    let res = app.get_bearer("/users/me/consents", &access).await;
    let consents: Value = res.json().await.unwrap();
    assert_eq!(consents["consents"][0]["client_id"], "tv", "{consents}");
    assert_eq!(
        consents["consents"][0]["scopes"],
        json!(["openid", "profile", "read"])
    );
    let res = app
        .http
        .delete(app.url("/users/me/consents/tv"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // The device's session ended with it.
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "tv"),
            ("refresh_token", refresh),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res).await, "invalid_grant");
    // A first-party client's approval is no consent to list.
    let res = app
        .http
        .post(app.url("/oauth/device_authorization"))
        .basic_auth("cli", Some(CLI_SECRET))
        .form(&[("scope", "read write")])
        .send()
        .await
        .unwrap();
    let d: Value = res.json().await.unwrap();
    approve(&app, &d).await;
    let res = app.get_bearer("/users/me/consents", &access).await;
    let consents: Value = res.json().await.unwrap();
    assert_eq!(consents["consents"], json!([]), "{consents}");
}

// ---------------------------------------------------------------------------------------------
// Production mode only: what Redis holds, and Redis down
// ---------------------------------------------------------------------------------------------

/// Every string a Redis key under `prefix` holds: the key names and their values.
async fn redis_dump(prefix: &str) -> Vec<String> {
    let url = services::redis_url();
    let mut conn = services::kv_conn(&url).await;
    let mut out = Vec::new();
    for key in services::redis_keys(&url, prefix).await {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        // Values as bytes: a family is packed binary (docs/sessions.md, "The records").
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap()],
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "set" => redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap(),
            _ => Vec::new(),
        };
        out.push(key);
        out.extend(
            values
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned()),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_dump_holds_no_usable_device_code_and_every_key_expires() {
    let app = spawn(Mode::Production).await;
    let prefix = app.env["TOKEND_REDIS_PREFIX"].clone();
    let pending = start(&app).await;
    let approved = start(&app).await;
    approve(&app, &approved).await;
    let dump = redis_dump(&prefix).await;
    assert!(dump.iter().any(|s| s.contains(":dev:{")), "{dump:?}");
    for d in [&pending, &approved] {
        let device_code = d["device_code"].as_str().unwrap();
        let user_code = d["user_code"].as_str().unwrap();
        for secret in [
            device_code.to_string(),
            user_code.to_string(),
            user_code.replace('-', ""),
        ] {
            assert!(
                !dump.iter().any(|s| s.contains(&secret)),
                "{secret} in the store: {dump:?}"
            );
        }
    }
    let without = services::redis_keys_without_ttl(&services::redis_url(), &prefix).await;
    assert!(without.is_empty(), "keys without a TTL: {without:?}");
    // The approval's grant waits in the store, and leaves it with the tokens.
    assert!(dump.iter().any(|s| s.contains("\"scope\":")), "{dump:?}");
    let (status, _) = poll_answer(&app, approved["device_code"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let dump = redis_dump(&prefix).await;
    assert!(!dump.iter().any(|s| s.contains("\"scope\":")), "{dump:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_device_endpoints_answer_503_then_recover() {
    let mut redis = services::OwnedRedis::start().await;
    let url = redis.url();
    let file = write_clients_file(&clients());
    let path = file.path().to_string_lossy().into_owned();
    let app = spawn_app_with(Mode::Production, move |env| {
        env.insert("TOKEND_REDIS_URL".into(), url);
        env.insert("TOKEND_CLIENTS_FILE".into(), path);
    })
    .await;
    let d = start(&app).await;
    let code = d["device_code"].as_str().unwrap();
    let browser = new_browser();
    redis.stop().await;
    for _ in 0..2 {
        let res = device_authorization(&app, "tv", None).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(res).await, "temporarily_unavailable");
        let res = poll(&app, code).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(res).await, "temporarily_unavailable");
        // The page fails closed too (its per-address rate limit, like the sign-in page's, is
        // the first thing that needs Redis, and answers as it does there).
        let res = enter_code(&app, &browser, d["user_code"].as_str().unwrap(), None).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(res
            .text()
            .await
            .unwrap()
            .contains("temporarily_unavailable"));
    }
    redis.start_again().await;
    let mut recovered = false;
    for _ in 0..100 {
        let res = device_authorization(&app, "tv", None).await;
        match res.status() {
            StatusCode::OK => {
                recovered = true;
                break;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            other => panic!("unexpected {other} while Redis comes back"),
        }
    }
    assert!(recovered, "tokend did not recover after Redis came back");
}

// ---------------------------------------------------------------------------------------------
// The stores' contract, in memory, in Redis and in a Redis Cluster
// ---------------------------------------------------------------------------------------------

const MINUTE_MS: i64 = 60_000;

fn new_device(client: &str, now: i64) -> NewDevice {
    NewDevice {
        client_id: client.into(),
        scope: "openid read".into(),
        expires_at_ms: now + 10 * MINUTE_MS,
        interval_secs: 5,
        keep_ms: 20 * MINUTE_MS,
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn a_device_authorization_is_found_by_its_user_code_and_decided_once(
    s: Arc<dyn DeviceStore>,
    now: i64,
) {
    let (dev, ucode) = (new_id(), new_id());
    assert_eq!(s.by_user_code(&ucode).await.unwrap(), None);
    assert!(s.start(&dev, &ucode, &new_device("tv", now)).await.unwrap());
    // The user code is unique while it lives.
    assert!(!s
        .start(&new_id(), &ucode, &new_device("tv", now))
        .await
        .unwrap());
    let view = s.by_user_code(&ucode).await.unwrap().unwrap();
    assert_eq!(view.device_hash, dev);
    assert_eq!(view.client_id, "tv");
    assert_eq!(view.scope, "openid read");
    assert_eq!(view.expires_at_ms, now + 10 * MINUTE_MS);
    assert_eq!(view.status, DeviceStatus::Pending);
    // Decided once; expired or unknown ones never.
    let grant = DeviceDecision::Approve("the grant".into());
    assert_eq!(
        s.decide(&dev, &grant, now).await.unwrap(),
        DecideOutcome::Decided
    );
    assert_eq!(
        s.decide(&dev, &DeviceDecision::Deny, now).await.unwrap(),
        DecideOutcome::AlreadyDecided(DeviceStatus::Approved)
    );
    assert_eq!(
        s.by_user_code(&ucode).await.unwrap().unwrap().status,
        DeviceStatus::Approved
    );
    assert_eq!(
        s.decide(&new_id(), &grant, now).await.unwrap(),
        DecideOutcome::Unknown
    );
    let (late, late_code) = (new_id(), new_id());
    assert!(s
        .start(&late, &late_code, &new_device("tv", now))
        .await
        .unwrap());
    assert_eq!(
        s.decide(&late, &grant, now + 10 * MINUTE_MS).await.unwrap(),
        DecideOutcome::Expired
    );
    s.ping().await.unwrap();
}

async fn polls_answer_each_status_and_the_grant_once(s: Arc<dyn DeviceStore>, now: i64) {
    let (dev, ucode) = (new_id(), new_id());
    assert!(s.start(&dev, &ucode, &new_device("tv", now)).await.unwrap());
    assert_eq!(
        s.poll(&new_id(), "tv", now).await.unwrap(),
        DevicePoll::Unknown
    );
    assert_eq!(
        s.poll(&dev, "other", now).await.unwrap(),
        DevicePoll::OtherClient
    );
    // Another client's poll recorded nothing: the first poll is not too soon.
    assert_eq!(
        s.poll(&dev, "tv", now).await.unwrap(),
        DevicePoll::Pending { interval_secs: 5 }
    );
    assert_eq!(
        s.poll(&dev, "tv", now + 4_999).await.unwrap(),
        DevicePoll::SlowDown { interval_secs: 10 }
    );
    assert_eq!(
        s.poll(&dev, "tv", now + 14_999).await.unwrap(),
        DevicePoll::Pending { interval_secs: 10 }
    );
    s.decide(&dev, &DeviceDecision::Approve("g".into()), now + 15_000)
        .await
        .unwrap();
    assert_eq!(
        s.poll(&dev, "tv", now + 15_001).await.unwrap(),
        DevicePoll::Approved("g".into())
    );
    assert_eq!(
        s.poll(&dev, "tv", now + 20_000).await.unwrap(),
        DevicePoll::Redeemed
    );
    assert_eq!(
        s.by_user_code(&ucode).await.unwrap().unwrap().status,
        DeviceStatus::Redeemed
    );
    assert_eq!(
        s.poll(&dev, "tv", now + 10 * MINUTE_MS).await.unwrap(),
        DevicePoll::Expired
    );
    // Denied stays denied.
    let (denied, denied_code) = (new_id(), new_id());
    assert!(s
        .start(&denied, &denied_code, &new_device("tv", now))
        .await
        .unwrap());
    s.decide(&denied, &DeviceDecision::Deny, now).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            s.poll(&denied, "tv", now).await.unwrap(),
            DevicePoll::Denied
        );
    }
}

async fn concurrent_polls_of_an_approval_get_the_grant_once(s: Arc<dyn DeviceStore>, now: i64) {
    let (dev, ucode) = (new_id(), new_id());
    assert!(s.start(&dev, &ucode, &new_device("tv", now)).await.unwrap());
    s.decide(&dev, &DeviceDecision::Approve("the grant".into()), now)
        .await
        .unwrap();
    let polls = join_all((0..16).map(|i| {
        let (s, dev) = (s.clone(), dev.clone());
        tokio::spawn(async move { s.poll(&dev, "tv", now + i).await.unwrap() })
    }))
    .await;
    let polls: Vec<DevicePoll> = polls.into_iter().map(Result::unwrap).collect();
    let granted = polls
        .iter()
        .filter(|p| **p == DevicePoll::Approved("the grant".into()))
        .count();
    let redeemed = polls.iter().filter(|p| **p == DevicePoll::Redeemed).count();
    assert_eq!((granted, redeemed), (1, 15), "{polls:?}");
}

async fn concurrent_starts_with_one_user_code_keep_one(s: Arc<dyn DeviceStore>, now: i64) {
    let ucode = new_id();
    let started = join_all((0..16).map(|_| {
        let (s, ucode) = (s.clone(), ucode.clone());
        tokio::spawn(async move {
            s.start(&new_id(), &ucode, &new_device("tv", now))
                .await
                .unwrap()
        })
    }))
    .await;
    let kept = started.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(kept, 1);
}

macro_rules! device_contract {
    ($contract:ident: $in_memory:ident, $in_redis:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $in_memory() {
            let clock = tokend::clock::ManualClock::starting_now();
            let now = clock.now_ms();
            $contract(Arc::new(MemoryDevices::new(clock)), now).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $in_redis() {
            let store = services::redis_store().await;
            $contract(Arc::new(store.clone()), SystemClock.now_ms()).await;
            let without =
                services::redis_keys_without_ttl(&services::redis_url(), store.prefix()).await;
            assert!(without.is_empty(), "keys without a TTL: {without:?}");
        }
    };
}

device_contract!(a_device_authorization_is_found_by_its_user_code_and_decided_once:
    device_store_finds_and_decides_once_in_memory,
    device_store_finds_and_decides_once_in_redis);
device_contract!(polls_answer_each_status_and_the_grant_once:
    device_store_polls_answer_each_status_in_memory,
    device_store_polls_answer_each_status_in_redis);
device_contract!(concurrent_polls_of_an_approval_get_the_grant_once:
    device_store_concurrent_polls_get_the_grant_once_in_memory,
    device_store_concurrent_polls_get_the_grant_once_in_redis);
device_contract!(concurrent_starts_with_one_user_code_keep_one:
    device_store_concurrent_starts_keep_one_user_code_in_memory,
    device_store_concurrent_starts_keep_one_user_code_in_redis);

/// The device store's contract on a one-node Redis Cluster, where no command or script may
/// span two slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_store_contract_holds_in_a_redis_cluster() {
    let cluster = services::OwnedRedis::start_cluster().await;
    let store = RedisStore::connect(&cluster.url(), "tokend:")
        .await
        .unwrap();
    let s: Arc<dyn DeviceStore> = Arc::new(store);
    let now = SystemClock.now_ms();
    a_device_authorization_is_found_by_its_user_code_and_decided_once(s.clone(), now).await;
    polls_answer_each_status_and_the_grant_once(s.clone(), now).await;
    concurrent_polls_of_an_approval_get_the_grant_once(s.clone(), now).await;
    concurrent_starts_with_one_user_code_keep_one(s, now).await;
}

// ---------------------------------------------------------------------------------------------
// A real browser
// ---------------------------------------------------------------------------------------------

/// A real Chromium enters the code on `/device` (after one wrong code), signs in, sees the
/// client and the code, and approves, while the device polls the token endpoint as a CLI
/// would until it gets its tokens; every page is screenshotted under
/// `target/browser-screenshots/device_flow_in_a_browser/`, and any console error or CSP
/// violation fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_approves_a_device_while_it_polls() {
    let Some(mut browser) = crate::browser::Browser::start("device_flow_in_a_browser").await else {
        return;
    };
    let (app, issuer, _file) = spawn_at_own_address(Mode::Embedded, &clients(), |env| {
        env.insert("TOKEND_DISPLAY_NAME".into(), "Example Corp".into());
    })
    .await;
    assert_eq!(
        app.register("ada", "ada@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::CREATED
    );
    let d = start(&app).await;
    assert_eq!(d["verification_uri"], format!("{issuer}/device"));
    let user_code = d["user_code"].as_str().unwrap().to_string();

    // The device polls at its interval (the test's clock moves by it before each poll) until
    // it has an answer other than "pending"; the pause between polls only paces the loop.
    let poller = {
        let (http, url, clock) = (app.http.clone(), app.url("/oauth/token"), app.clock.clone());
        let device_code = d["device_code"].as_str().unwrap().to_string();
        let interval = d["interval"].as_u64().unwrap();
        tokio::spawn(async move {
            let mut pending = 0;
            loop {
                clock.advance(std::time::Duration::from_secs(interval));
                let res = http
                    .post(&url)
                    .form(&[
                        ("grant_type", GRANT),
                        ("client_id", "tv"),
                        ("device_code", device_code.as_str()),
                    ])
                    .send()
                    .await
                    .unwrap();
                let status = res.status();
                let body: Value = res.json().await.unwrap();
                if body["error"] != "authorization_pending" || pending == 100 {
                    return (status, body, pending);
                }
                pending += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    };

    browser.goto(&app.url("/device")).await;
    assert!(browser.text("h1").await.contains("Connect a device"));
    browser.screenshot("code-entry").await;
    browser.fill("Code", "BCDF-GHJK-XX").await;
    browser.expect_status(400);
    browser.click("Continue").await;
    // The answer is a new page: wait for it rather than read the one the click left.
    browser.wait_for("[role=alert]").await;
    assert!(browser.text("[role=alert]").await.contains("8 letters"));
    browser.screenshot("code-entry-error").await;
    // Typed as a person might: lower case, a space instead of the dash.
    browser
        .fill("Code", &user_code.to_lowercase().replace('-', " "))
        .await;
    browser.click("Continue").await;

    assert_eq!(browser.url().await.path(), "/login");
    assert!(browser
        .text("main")
        .await
        .contains("to connect your device"));
    browser.screenshot("sign-in").await;
    browser.fill("Username or email", "ada").await;
    browser.fill("Password", PASSWORD).await;
    browser.click("Sign in").await;

    let here = browser.url().await;
    assert_eq!(here.path(), "/device");
    assert_eq!(
        here.query(),
        Some(format!("user_code={user_code}").as_str())
    );
    let main = browser.text("main").await;
    assert!(main.contains("Living Room TV"), "{main}");
    assert!(main.contains(&user_code), "the code to compare: {main}");
    assert!(main.contains("Signed in as ada"), "{main}");
    browser.screenshot("approve").await;
    browser.click("Approve").await;

    assert!(browser.text("h1").await.contains("Device connected"));
    assert!(browser
        .text("main")
        .await
        .contains("You can go back to your device."));
    browser.screenshot("done").await;

    let (status, tokens, pending) = poller.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert!(pending >= 1, "the device polled while the person approved");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        app.get_bearer("/auth/verify", access).await.status(),
        StatusCode::OK
    );
    assert_eq!(claims(tokens["id_token"].as_str().unwrap())["aud"], "tv");
    browser.finish().await;
}
