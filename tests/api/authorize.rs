//! The authorization code flow with PKCE, OpenID Connect and the hosted pages, driven as a
//! browser would (cookies, form posts with the CSRF token), in both modes (docs/authorize.md).

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tokend::clock::ManualClock;

use crate::helpers::*;
// The page helpers live in helpers.rs; other test files name them through this module too.
pub(crate) use crate::helpers::{csrf_of, location, new_browser, query_of};
use crate::in_both_modes;

pub(crate) const PASSWORD: &str = "correct horse battery";
pub(crate) const WEB_SECRET: &str = "web-secret-0123456789";
pub(crate) const REDIRECT: &str = "https://app.example/cb";
const LOGOUT_REDIRECT: &str = "https://app.example/bye";
pub(crate) const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub(crate) const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

in_both_modes!(
    the_code_flow_signs_in_consents_and_issues_tokens_with_an_id_token,
    a_second_authorization_reuses_the_browser_session_and_the_consent,
    a_replayed_code_is_refused_and_revokes_what_its_first_use_issued,
    pkce_is_required_with_s256_and_checked,
    an_unregistered_redirect_uri_is_an_error_page_never_a_redirect,
    prompt_none_without_a_session_answers_login_required,
    denying_consent_answers_access_denied,
    rp_initiated_logout_ends_the_session_and_its_families,
    consents_can_be_listed_and_withdrawn,
    ending_all_sessions_ends_the_browser_session,
    a_registered_authentication_method_is_the_only_one_accepted,
    a_pending_request_yields_one_code,
    a_code_carries_its_user_and_dies_with_the_users_sessions,
    userinfo_refuses_a_token_without_a_user_as_invalid_token,
    a_page_whose_query_repeats_a_parameter_answers_a_clear_error,
);

pub(crate) fn clients() -> Value {
    json!([
        {"client_id": "web", "client_secret": WEB_SECRET,
         "grant_types": ["authorization_code", "refresh_token"], "scopes": ["read"],
         "redirect_uris": [REDIRECT], "post_logout_redirect_uris": [LOGOUT_REDIRECT],
         "client_name": "Example Web App"},
        {"client_id": "native", "grant_types": ["authorization_code", "refresh_token"],
         "redirect_uris": ["http://127.0.0.1/callback", "com.example.app:/cb"],
         "first_party": true, "client_name": "Example CLI"},
        {"client_id": "post-only", "client_secret": WEB_SECRET,
         "grant_types": ["authorization_code"], "redirect_uris": [REDIRECT],
         "token_endpoint_auth_method": "client_secret_post"},
        {"client_id": "svc", "client_secret": WEB_SECRET,
         "grant_types": ["client_credentials"], "scopes": ["openid", "read"]},
    ])
}

pub(crate) struct App {
    pub(crate) app: TestApp,
    /// A browser: keeps cookies, follows nothing by itself.
    pub(crate) browser: reqwest::Client,
    pub(crate) _file: tempfile::NamedTempFile,
}

impl std::ops::Deref for App {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

async fn spawn(mode: Mode) -> App {
    spawn_with_clients(mode, &clients()).await
}

/// An app with these static clients and the user `ada`, and a browser.
pub(crate) async fn spawn_with_clients(mode: Mode, clients: &Value) -> App {
    let file = write_clients_file(clients);
    let path = file.path().to_string_lossy().into_owned();
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_CLIENTS_FILE".into(), path);
    })
    .await;
    let res = app.register("ada", "ada@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    App {
        app,
        browser: new_browser(),
        _file: file,
    }
}

/// An app with these clients of the code flow, mail written as files under a new directory, the
/// bootstrap admin `admin` (email, password) and the user `ada`, and a browser: what the
/// account-event and lifecycle tests start. `adjust` may change the environment, `wrap` the
/// stores.
pub(crate) async fn spawn_with_admin(
    mode: Mode,
    admin: (&str, &str),
    adjust: impl FnOnce(&mut HashMap<String, String>),
    wrap: impl FnOnce(tokend::startup::Backends) -> tokend::startup::Backends,
) -> (App, crate::mail::Mailbox, tempfile::TempDir) {
    let file = write_clients_file(&clients());
    let (mut env, keys) = test_env(mode);
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    env.insert(
        "TOKEND_CLIENTS_FILE".into(),
        file.path().to_string_lossy().into_owned(),
    );
    env.insert(
        "TOKEND_MAIL_DIR".into(),
        mail.to_string_lossy().into_owned(),
    );
    env.insert("TOKEND_BOOTSTRAP_ADMIN_EMAIL".into(), admin.0.into());
    env.insert("TOKEND_BOOTSTRAP_ADMIN_PASSWORD".into(), admin.1.into());
    adjust(&mut env);
    let app = spawn_env_with_backends(mode, env, keys, ManualClock::starting_now(), wrap).await;
    let res = app.register("ada", "ada@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let app = App {
        app,
        browser: new_browser(),
        _file: file,
    };
    (app, crate::mail::Mailbox(mail), dir)
}

pub(crate) fn authorize_url(app: &TestApp, client: &str, extra: &[(&str, &str)]) -> String {
    let mut params: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", client),
        ("scope", "openid profile email read"),
        ("state", "st-123"),
        ("nonce", "n-456"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    if client == "web" {
        params.push(("redirect_uri", REDIRECT));
    }
    for (k, v) in extra {
        params.retain(|(pk, _)| pk != k);
        if !v.is_empty() {
            params.push((k, v));
        }
    }
    let q = serde_urlencoded::to_string(&params).unwrap();
    app.url(&format!("/oauth/authorize?{q}"))
}

impl App {
    pub(crate) async fn get(&self, url: &str) -> Response {
        let url = if url.starts_with('/') {
            self.url(url)
        } else {
            url.to_string()
        };
        self.browser.get(url).send().await.unwrap()
    }

    pub(crate) async fn post(&self, path: &str, form: &[(&str, &str)]) -> Response {
        self.browser
            .post(self.url(path))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// Signs in on the page the authorization sent the browser to; answers the response.
    pub(crate) async fn sign_in(&self, login_location: &str, password: &str) -> Response {
        assert!(
            login_location.starts_with("/login?req="),
            "{login_location}"
        );
        let page = self.get(login_location).await;
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.unwrap();
        assert!(html.contains("Example"), "the page names the client");
        let req = query_of(login_location)["req"].clone();
        let csrf = csrf_of(&html);
        self.post(
            "/login",
            &[
                ("csrf_token", &csrf),
                ("req", &req),
                ("username", "ada"),
                ("password", password),
            ],
        )
        .await
    }

    /// Allows or denies on the consent page; answers the response.
    pub(crate) async fn consent(&self, consent_location: &str, decision: &str) -> Response {
        assert!(
            consent_location.starts_with("/consent?req="),
            "{consent_location}"
        );
        let page = self.get(consent_location).await;
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.unwrap();
        assert!(html.contains("Example Web App"), "{html}");
        let req = query_of(consent_location)["req"].clone();
        let csrf = csrf_of(&html);
        self.post(
            "/consent",
            &[("csrf_token", &csrf), ("req", &req), ("decision", decision)],
        )
        .await
    }

    /// The whole flow for `web` up to the callback; answers the callback's parameters.
    pub(crate) async fn code_for_web(&self) -> HashMap<String, String> {
        let res = self.get(&authorize_url(self, "web", &[])).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        let res = self.sign_in(&location(&res), PASSWORD).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        let res = self.consent(&location(&res), "allow").await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        let to = location(&res);
        assert!(to.starts_with(REDIRECT), "{to}");
        query_of(&to)
    }

    pub(crate) async fn redeem(&self, code: &str, verifier: &str) -> Response {
        self.http
            .post(self.url("/oauth/token"))
            .basic_auth("web", Some(WEB_SECRET))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn redeem_ok(&self, code: &str) -> Value {
        let res = self.redeem(code, VERIFIER).await;
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

fn b64url_sha256_left_half(s: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA512, s.as_bytes());
    URL_SAFE_NO_PAD.encode(&d.as_ref()[..32])
}

async fn the_code_flow_signs_in_consents_and_issues_tokens_with_an_id_token(mode: Mode) {
    let app = spawn(mode).await;
    let cb = app.code_for_web().await;
    assert_eq!(cb["state"], "st-123");
    assert_eq!(cb["iss"], "http://tokend.test", "RFC 9207 iss on success");
    let body = app.redeem_ok(&cb["code"]).await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "openid profile email read");
    let access = body["access_token"].as_str().unwrap();
    assert!(body["refresh_token"].is_string());
    let id = body["id_token"].as_str().expect("an id_token for openid");
    assert_eq!(header(id)["typ"], "JWT");
    let c = claims(id);
    assert_eq!(c["aud"], "web");
    assert_eq!(c["iss"], "http://tokend.test");
    assert_eq!(c["nonce"], "n-456");
    assert_eq!(c["amr"], json!(["pwd"]));
    assert_eq!(c["preferred_username"], "ada");
    assert_eq!(c["email"], "ada@example.com");
    assert_eq!(c["email_verified"], false);
    assert_eq!(
        c["at_hash"],
        b64url_sha256_left_half(access),
        "EdDSA: SHA-512 left half"
    );
    let at = claims(access);
    assert_eq!(c["sub"], at["sub"]);
    assert_eq!(c["auth_time"], at["auth_time"]);
    assert_eq!(c["sid"], at["sid"]);
    // The access token works; the ID token is never an access token.
    assert_eq!(
        app.get_bearer("/auth/verify", access).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get_bearer("/auth/verify", id).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // userinfo by scope.
    let res = app.get_bearer("/oauth/userinfo", access).await;
    assert_eq!(res.status(), StatusCode::OK);
    let info: Value = res.json().await.unwrap();
    assert_eq!(info["sub"], at["sub"]);
    assert_eq!(info["email"], "ada@example.com");
    assert_eq!(info["preferred_username"], "ada");
    // The refresh token refreshes.
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("web", Some(WEB_SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", body["refresh_token"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Metrics count the flow.
    let m = app.metrics_text().await;
    assert!(
        m.contains("tokend_authorization_codes_total{event=\"issued\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tokend_authorization_codes_total{event=\"redeemed\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tokend_sign_ins_total{result=\"success\"} 1"),
        "{m}"
    );
}

async fn a_second_authorization_reuses_the_browser_session_and_the_consent(mode: Mode) {
    let app = spawn(mode).await;
    app.code_for_web().await;
    // Same browser: straight back with a code, no page.
    let res = app
        .get(&authorize_url(&app, "web", &[("state", "again")]))
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cb = query_of(&location(&res));
    assert!(cb.contains_key("code"), "{cb:?}");
    assert_eq!(cb["state"], "again");
    // prompt=login forces a new sign-in.
    let res = app
        .get(&authorize_url(&app, "web", &[("prompt", "login")]))
        .await;
    assert!(location(&res).starts_with("/login?req="));
    // prompt=consent asks again.
    let res = app
        .get(&authorize_url(&app, "web", &[("prompt", "consent")]))
        .await;
    assert!(location(&res).starts_with("/consent?req="));
    // A first-party client never asks: a form_post answer with a page that posts the code.
    let res = app
        .get(&authorize_url(
            &app,
            "native",
            &[
                ("response_mode", "form_post"),
                ("scope", "openid"),
                ("redirect_uri", "http://127.0.0.1:49152/callback"),
            ],
        ))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(!csp.contains("unsafe-inline"));
    let html = res.text().await.unwrap();
    assert!(
        html.contains("action=\"http://127.0.0.1:49152/callback\""),
        "{html}"
    );
    assert!(html.contains("name=\"code\""), "{html}");
    // A new browser has no session.
    let fresh = new_browser();
    let res = fresh
        .get(authorize_url(&app, "web", &[]))
        .send()
        .await
        .unwrap();
    assert!(location(&res).starts_with("/login?req="));
}

async fn a_replayed_code_is_refused_and_revokes_what_its_first_use_issued(mode: Mode) {
    let app = spawn(mode).await;
    let cb = app.code_for_web().await;
    let first = app.redeem_ok(&cb["code"]).await;
    let res = app.redeem(&cb["code"], VERIFIER).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "invalid_grant");
    let access = first["access_token"].as_str().unwrap();
    assert_eq!(
        app.get_bearer("/auth/verify", access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("web", Some(WEB_SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", first["refresh_token"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let m = app.metrics_text().await;
    assert!(
        m.contains("tokend_authorization_codes_total{event=\"replayed\"} 1"),
        "{m}"
    );

    // Concurrent redemptions of one code: exactly one succeeds, and it is then revoked.
    let cb = {
        let res = app.get(&authorize_url(&app, "web", &[])).await;
        query_of(&location(&res))
    };
    let code = cb["code"].clone();
    let tries = (0..8).map(|_| app.redeem(&code, VERIFIER));
    let results = futures_util::future::join_all(tries).await;
    let ok: Vec<&Response> = results
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .collect();
    assert!(ok.len() <= 1, "at most one redemption succeeds");
}

async fn pkce_is_required_with_s256_and_checked(mode: Mode) {
    let app = spawn(mode).await;
    // A signed-in browser, so that refusals are the request's own.
    app.code_for_web().await;
    for (extra, needle) in [
        (vec![("code_challenge", "")], "code_challenge is required"),
        (vec![("code_challenge_method", "plain")], "S256"),
        (vec![("code_challenge_method", "")], "S256"),
        (vec![("code_challenge", "short")], "43-character"),
    ] {
        let res = app.get(&authorize_url(&app, "web", &extra)).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        let to = location(&res);
        assert!(to.starts_with(REDIRECT), "{to}");
        let q = query_of(&to);
        assert_eq!(q["error"], "invalid_request", "{extra:?}");
        assert!(q["error_description"].contains(needle), "{q:?}");
        assert_eq!(q["state"], "st-123");
        assert_eq!(q["iss"], "http://tokend.test", "RFC 9207 iss on errors");
    }
    // A wrong verifier, then a missing one.
    let res = app.get(&authorize_url(&app, "web", &[])).await;
    let code = query_of(&location(&res))["code"].clone();
    let res = app.redeem(&code, &"x".repeat(43)).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "invalid_grant");
    let res = app.get(&authorize_url(&app, "web", &[])).await;
    let code = query_of(&location(&res))["code"].clone();
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("web", Some(WEB_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res).await, "invalid_request");
    // Another client cannot redeem it.
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", "native"),
            ("code_verifier", VERIFIER),
            ("redirect_uri", REDIRECT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res).await, "invalid_grant");
}

async fn an_unregistered_redirect_uri_is_an_error_page_never_a_redirect(mode: Mode) {
    let app = spawn(mode).await;
    for extra in [
        vec![("redirect_uri", "https://evil.example/cb")],
        vec![("redirect_uri", "https://app.example/cb/../evil")],
        vec![("client_id", "nobody")],
        vec![("client_id", "")],
    ] {
        let res = app.get(&authorize_url(&app, "web", &extra)).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{extra:?}");
        assert!(res.headers().get("location").is_none());
        assert_eq!(res.headers()["x-frame-options"], "DENY");
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = res.text().await.unwrap();
        assert!(
            !html.contains("evil.example"),
            "the page never links the bad URI"
        );
    }
}

async fn prompt_none_without_a_session_answers_login_required(mode: Mode) {
    let app = spawn(mode).await;
    let res = app
        .get(&authorize_url(&app, "web", &[("prompt", "none")]))
        .await;
    let q = query_of(&location(&res));
    assert_eq!(q["error"], "login_required");
    assert_eq!(q["state"], "st-123");
    // Signed in but without consent: consent_required.
    let res = app.get(&authorize_url(&app, "web", &[])).await;
    let res = app.sign_in(&location(&res), PASSWORD).await;
    assert!(location(&res).starts_with("/consent?req="));
    let res = app
        .get(&authorize_url(&app, "web", &[("prompt", "none")]))
        .await;
    assert_eq!(query_of(&location(&res))["error"], "consent_required");
    // A wrong password is one answer, on the page, and sets no session.
    let res = new_browser()
        .get(authorize_url(&app, "web", &[]))
        .send()
        .await
        .unwrap();
    let _ = res;
    let res = app
        .get(&authorize_url(&app, "web", &[("prompt", "login")]))
        .await;
    let res = app.sign_in(&location(&res), "wrong password!").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(
        res.headers().get("set-cookie").is_none()
            || !res.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .contains("tokend_session")
    );
    // A form without its CSRF token is refused.
    let res = app
        .post("/login", &[("username", "ada"), ("password", PASSWORD)])
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

async fn denying_consent_answers_access_denied(mode: Mode) {
    let app = spawn(mode).await;
    let res = app.get(&authorize_url(&app, "web", &[])).await;
    let res = app.sign_in(&location(&res), PASSWORD).await;
    let res = app.consent(&location(&res), "deny").await;
    let q = query_of(&location(&res));
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "st-123");
    assert_eq!(q["iss"], "http://tokend.test");
}

async fn rp_initiated_logout_ends_the_session_and_its_families(mode: Mode) {
    let app = spawn(mode).await;
    let cb = app.code_for_web().await;
    let tokens = app.redeem_ok(&cb["code"]).await;
    let id = tokens["id_token"].as_str().unwrap();
    // An unregistered post-logout URI: an error page, still signed in.
    let q = serde_urlencoded::to_string([
        ("id_token_hint", id),
        ("post_logout_redirect_uri", "https://evil.example/"),
    ])
    .unwrap();
    let res = app.get(&format!("/oauth/logout?{q}")).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.headers().get("location").is_none());
    let res = app
        .get(&authorize_url(&app, "web", &[("prompt", "none")]))
        .await;
    assert!(
        query_of(&location(&res)).contains_key("code"),
        "still signed in"
    );
    // With the hint and a registered URI: signed out and sent back with the state.
    let q = serde_urlencoded::to_string([
        ("id_token_hint", id),
        ("post_logout_redirect_uri", LOGOUT_REDIRECT),
        ("state", "bye-1"),
    ])
    .unwrap();
    let res = app.get(&format!("/oauth/logout?{q}")).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), format!("{LOGOUT_REDIRECT}?state=bye-1"));
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        app.get_bearer("/auth/verify", access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = app
        .get(&authorize_url(&app, "web", &[("prompt", "none")]))
        .await;
    assert_eq!(query_of(&location(&res))["error"], "login_required");
    // Without a hint the user is asked first.
    let res = app.get(&authorize_url(&app, "web", &[])).await;
    app.sign_in(&location(&res), PASSWORD).await;
    let res = app.get("/oauth/logout").await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    let csrf = csrf_of(&html);
    let res = app
        .post(
            "/oauth/logout",
            &[("csrf_token", &csrf), ("decision", "logout")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .get(&authorize_url(&app, "web", &[("prompt", "none")]))
        .await;
    assert_eq!(query_of(&location(&res))["error"], "login_required");
}

async fn consents_can_be_listed_and_withdrawn(mode: Mode) {
    let app = spawn(mode).await;
    let cb = app.code_for_web().await;
    let tokens = app.redeem_ok(&cb["code"]).await;
    let (access, _) = app.login_pair("ada@example.com", PASSWORD).await;
    let res = app.get_bearer("/users/me/consents", &access).await;
    assert_eq!(res.status(), StatusCode::OK);
    let list: Value = res.json().await.unwrap();
    assert_eq!(list["consents"][0]["client_id"], "web");
    assert_eq!(
        list["consents"][0]["scopes"],
        json!(["email", "openid", "profile", "read"])
    );
    let res = app
        .http
        .delete(app.url("/users/me/consents/web"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // The client's tokens for the user are revoked; the user's own login is not.
    let web_access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        app.get_bearer("/auth/verify", web_access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get_bearer("/auth/verify", &access).await.status(),
        StatusCode::OK
    );
    let list: Value = app
        .get_bearer("/users/me/consents", &access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["consents"], json!([]));
    // Consent is asked again.
    let res = app.get(&authorize_url(&app, "web", &[])).await;
    assert!(location(&res).starts_with("/consent?req="));
    let res = app
        .http
        .delete(app.url("/users/me/consents/web"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

/// The relying party's side of the browser test: its callback and post-logout pages.
fn relying_party(path: &str) -> crate::browser::SiteAnswer {
    let page = |title: &str| {
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
             </head><body><h1 id=\"title\">{title}</h1></body></html>"
        )
    };
    match path {
        "/callback" => (
            200,
            "text/html; charset=utf-8",
            None,
            page("Back at the app"),
        ),
        "/bye" => (
            200,
            "text/html; charset=utf-8",
            None,
            page("Signed out of the app"),
        ),
        _ => (404, "text/plain", None, "not found".into()),
    }
}

/// A real Chromium signs in (after one wrong password), consents, lands on the client's
/// callback with a code, and signs out through RP-initiated logout; every page is
/// screenshotted under `target/browser-screenshots/` and any console error or CSP violation
/// fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_consents_and_signs_out() {
    let Some(mut browser) = crate::browser::Browser::start("code_flow_in_a_browser").await else {
        return;
    };
    let (rp, rp_task) = crate::browser::serve_site(relying_party).await;
    let callback = format!("http://{rp}/callback");
    let bye = format!("http://{rp}/bye");
    let (app, issuer, _file) = spawn_at_own_address(
        Mode::Embedded,
        &json!([
            {"client_id": "web", "client_secret": WEB_SECRET,
             "grant_types": ["authorization_code", "refresh_token"], "scopes": ["read"],
             "redirect_uris": [callback], "post_logout_redirect_uris": [bye],
             "client_name": "Example Web App"}
        ]),
        |env| {
            env.insert("TOKEND_DISPLAY_NAME".into(), "Example Corp".into());
        },
    )
    .await;
    assert_eq!(
        app.register("ada", "ada@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::CREATED
    );

    // An unregistered redirect URI: an error page, and the browser stays on tokend.
    let q = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", "web"),
        ("redirect_uri", "https://evil.example/cb"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ])
    .unwrap();
    browser.expect_status(400);
    browser
        .goto(&app.url(&format!("/oauth/authorize?{q}")))
        .await;
    assert!(browser.text("h1").await.contains("redirect"));
    assert!(browser.url().await.as_str().starts_with(&issuer));
    browser.screenshot("error-page").await;

    let q = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", "web"),
        ("redirect_uri", callback.as_str()),
        ("scope", "openid profile email read"),
        ("state", "st-browser"),
        ("nonce", "n-browser"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ])
    .unwrap();
    browser
        .goto(&app.url(&format!("/oauth/authorize?{q}")))
        .await;
    assert_eq!(browser.url().await.path(), "/login");
    browser.screenshot("sign-in").await;
    browser.fill("Username or email", "ada").await;
    browser.fill("Password", "not the password").await;
    browser.expect_status(401);
    browser.click("Sign in").await;
    assert!(browser.text("[role=alert]").await.contains("Wrong"));
    browser.screenshot("sign-in-error").await;
    browser.fill("Password", PASSWORD).await;
    browser.click("Sign in").await;

    assert_eq!(browser.url().await.path(), "/consent");
    assert!(browser.text("main").await.contains("Example Web App"));
    browser.screenshot("consent").await;
    browser.click("Allow").await;

    let landed = browser.url().await;
    assert_eq!(landed.path(), "/callback");
    let q: HashMap<String, String> = landed.query_pairs().into_owned().collect();
    assert_eq!(q["state"], "st-browser");
    assert_eq!(q["iss"], issuer);
    browser.screenshot("callback").await;
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("web", Some(WEB_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", q["code"].as_str()),
            ("redirect_uri", callback.as_str()),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let tokens: Value = res.json().await.unwrap();
    assert_eq!(
        claims(tokens["id_token"].as_str().unwrap())["nonce"],
        "n-browser"
    );

    // Signing out without a hint asks first, then returns to the app.
    let q = serde_urlencoded::to_string([
        ("client_id", "web"),
        ("post_logout_redirect_uri", bye.as_str()),
        ("state", "bye-state"),
    ])
    .unwrap();
    browser.goto(&app.url(&format!("/oauth/logout?{q}"))).await;
    browser.screenshot("sign-out-confirm").await;
    browser.click("Sign out").await;
    let landed = browser.url().await;
    assert_eq!(landed.path(), "/bye");
    assert_eq!(landed.query(), Some("state=bye-state"));
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        app.get_bearer("/auth/verify", access).await.status(),
        StatusCode::UNAUTHORIZED,
        "signing out ended the family the session started"
    );
    browser.goto(&app.url("/oauth/logout")).await;
    assert!(browser.text("h1").await.contains("Signed out"));
    browser.screenshot("signed-out").await;
    browser.finish().await;
    rp_task.abort();
}

/// Logout everywhere and a password change end the browser session too (docs/authorize.md,
/// "The browser session").
async fn ending_all_sessions_ends_the_browser_session(mode: Mode) {
    let app = spawn(mode).await;
    app.code_for_web().await;
    let res = app
        .get(&authorize_url(&app, "web", &[("prompt", "none")]))
        .await;
    assert!(query_of(&location(&res)).contains_key("code"));
    let (access, _) = app.login_pair("ada@example.com", PASSWORD).await;
    let res = app.post_bearer("/auth/logout/all", &access).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .get(&authorize_url(&app, "web", &[("prompt", "none")]))
        .await;
    assert_eq!(query_of(&location(&res))["error"], "login_required");

    // Signed in again, then the password changes.
    let res = app.get(&authorize_url(&app, "web", &[])).await;
    app.sign_in(&location(&res), PASSWORD).await;
    let res = app
        .get(&authorize_url(&app, "web", &[("prompt", "none")]))
        .await;
    assert!(query_of(&location(&res)).contains_key("code"));
    let (access, _) = app.login_pair("ada@example.com", PASSWORD).await;
    let res = app
        .put_bearer(
            "/users/me/password",
            &access,
            &json!({"current_password": PASSWORD, "new_password": "another good password"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .get(&authorize_url(&app, "web", &[("prompt", "none")]))
        .await;
    assert_eq!(query_of(&location(&res))["error"], "login_required");
}

/// How many user-store reads by id the app has made.
async fn user_reads(app: &TestApp) -> f64 {
    app.metrics_text()
        .await
        .lines()
        .filter(|l| {
            l.starts_with("tokend_store_operation_duration_seconds_count{")
                && l.contains("op=\"user_by_id\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn a_code_carries_its_user_and_dies_with_the_users_sessions(mode: Mode) {
    let app = spawn(mode).await;
    // The redemption takes the user from the code: no user-store read.
    let cb = app.code_for_web().await;
    let before = user_reads(&app).await;
    let tokens = app.redeem_ok(&cb["code"]).await;
    assert_eq!(user_reads(&app).await, before);
    let id = claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["preferred_username"], "ada");
    assert_eq!(id["email"], "ada@example.com");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        app.get_bearer("/auth/verify", access).await.status(),
        StatusCode::OK
    );

    // A code issued before "log out everywhere" is refused, and so is one issued before a
    // password change: the code's sessions ended with the user's.
    for end in ["logout-all", "password"] {
        let res = app
            .get(&authorize_url(&app, "web", &[("prompt", "none")]))
            .await;
        let code = query_of(&location(&res))
            .remove("code")
            .unwrap_or_else(|| panic!("{end}: a code without a prompt"));
        let (access, _) = app.login_pair("ada@example.com", PASSWORD).await;
        let res = if end == "logout-all" {
            app.post_bearer("/auth/logout/all", &access).await
        } else {
            app.put_bearer(
                "/users/me/password",
                &access,
                &json!({"current_password": PASSWORD, "new_password": "another good password"}),
            )
            .await
        };
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "{end}");
        let res = app.redeem(&code, VERIFIER).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{end}");
        assert_eq!(error_code(res).await, "invalid_grant", "{end}");
        if end == "logout-all" {
            // Signed in again for the next round.
            let res = app.get(&authorize_url(&app, "web", &[])).await;
            let res = app.sign_in(&location(&res), PASSWORD).await;
            assert_eq!(res.status(), StatusCode::SEE_OTHER, "{end}");
        }
    }
}

async fn a_registered_authentication_method_is_the_only_one_accepted(mode: Mode) {
    let app = spawn(mode).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", "x"),
        ("code_verifier", VERIFIER),
    ];
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("post-only", Some(WEB_SECRET))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(res).await, "invalid_client");
    let mut body = form.to_vec();
    body.push(("client_id", "post-only"));
    body.push(("client_secret", WEB_SECRET));
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .form(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::BAD_REQUEST,
        "authenticated, then the code is refused"
    );
    assert_eq!(error_code(res).await, "invalid_grant");
}

/// One whole code flow for a first-party client, as a browser and the client would do it
/// (for tests elsewhere that need the flow's traffic): sign in as `login`, redeem the code.
pub async fn sign_in_and_redeem(
    app: &TestApp,
    client: (&str, &str),
    redirect_uri: &str,
    login: (&str, &str),
) -> Value {
    let browser = new_browser();
    let q = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", client.0),
        ("redirect_uri", redirect_uri),
        ("scope", "openid"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ])
    .unwrap();
    let res = browser
        .get(app.url(&format!("/oauth/authorize?{q}")))
        .send()
        .await
        .unwrap();
    let login_page = location(&res);
    let html = browser
        .get(app.url(&login_page))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let req = query_of(&login_page)["req"].clone();
    let csrf = csrf_of(&html);
    let res = browser
        .post(app.url("/login"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("req", &req),
            ("username", login.0),
            ("password", login.1),
        ])
        .send()
        .await
        .unwrap();
    let code = query_of(&location(&res))["code"].clone();
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth(client.0, Some(client.1))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

async fn a_pending_request_yields_one_code(mode: Mode) {
    let app = spawn(mode).await;
    let res = app
        .get(&authorize_url(
            &app,
            "native",
            &[("scope", "openid"), ("redirect_uri", "com.example.app:/cb")],
        ))
        .await;
    let login = location(&res);
    let res = app.sign_in(&login, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(
        location(&res).starts_with("com.example.app:/cb?code="),
        "{}",
        location(&res)
    );
    // The same request again, by its id: spent.
    let again = login.replace("/login", "/consent");
    let res = app.get(&again).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.headers().get("location").is_none());
}

/// A client's own token carries no user: userinfo refuses it as `/users/me` does, 401
/// `invalid_token` with its challenge (OpenID Connect Core §5.3.3, RFC 6750 §3.1); a request
/// without any token gets challenges that name no error.
async fn userinfo_refuses_a_token_without_a_user_as_invalid_token(mode: Mode) {
    let app = spawn(mode).await;
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("svc", Some(WEB_SECRET))
        .form(&[("grant_type", "client_credentials"), ("scope", "openid")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap();
    let res = app.get_bearer("/oauth/userinfo", token).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let challenge = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
        "{challenge}"
    );
    assert_eq!(error_code(res).await, "invalid_token");

    let res = app
        .http
        .get(app.url("/oauth/userinfo"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let challenges: Vec<&str> = res
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(challenges[0], "Bearer realm=\"tokend\"", "{challenges:?}");
    assert!(challenges[1].starts_with("DPoP algs="), "{challenges:?}");
}

/// A parameter given twice is an error page that says so, not a page that quietly lost
/// where the sign-in was going.
async fn a_page_whose_query_repeats_a_parameter_answers_a_clear_error(mode: Mode) {
    let app = spawn(mode).await;
    for path in [
        "/login?req=abc&req=abc",
        "/consent?req=abc&req=abc",
        "/device?user_code=BCDF-GHJK&user_code=BCDF-GHJK",
    ] {
        let res = app.browser.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path}");
        let html = res.text().await.unwrap();
        assert!(html.contains("invalid query"), "{path}: {html}");
        assert!(html.contains("duplicate field"), "{path}: {html}");
    }
}
