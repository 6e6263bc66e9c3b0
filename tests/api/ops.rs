//! Operations and hardening (docs/hardening.md): metrics, rate limits, back-off, roles, TLS, cookie mode,
//! CORS, limits, logs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    claims, error_code, spawn_app, spawn_app_with, spawn_env, test_env, Mode, TestApp,
};
use crate::in_both_modes;

/// Parses the Prometheus text format into `name{labels}` -> value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let res = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    parse_metrics(&res.text().await.unwrap())
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

async fn assert_moves(app: &TestApp, before: &HashMap<String, f64>, key: &str) {
    let after = scrape(app).await;
    assert!(
        get(&after, key) > get(before, key),
        "{key} did not move: {} -> {}",
        get(before, key),
        get(&after, key)
    );
}

in_both_modes!(each_metric_moves_after_its_action);

async fn each_metric_moves_after_its_action(mode: Mode) {
    let app = spawn_app(mode).await;
    let m0 = scrape(&app).await;
    assert!(m0
        .keys()
        .any(|k| k.starts_with("process_resident_memory_bytes")));
    assert_eq!(
        get(&m0, r#"tokend_signing_keys{alg="EdDSA",state="active"}"#),
        1.0
    );
    assert!(m0.contains_key(r#"tokend_signing_key_age_seconds{alg="EdDSA"}"#));

    let s = app.new_session().await;
    assert_moves(&app, &m0, r#"tokend_logins_total{result="success"}"#).await;
    assert_moves(
        &app,
        &m0,
        r#"tokend_tokens_issued_total{alg="EdDSA",grant="password",type="access"}"#,
    )
    .await;
    assert_moves(
        &app,
        &m0,
        r#"tokend_http_requests_total{method="POST",route="/auth/login",status="200"}"#,
    )
    .await;
    let store = if mode == Mode::Embedded {
        "memory"
    } else {
        "redis"
    };
    assert_moves(
        &app,
        &m0,
        &format!(
            r#"tokend_store_operation_duration_seconds_count{{op="family_start",store="{store}"}}"#
        ),
    )
    .await;

    let m1 = scrape(&app).await;
    app.login("nobody@example.com", "wrong password").await;
    assert_moves(
        &app,
        &m1,
        r#"tokend_logins_total{result="invalid_credentials"}"#,
    )
    .await;

    let m2 = scrape(&app).await;
    let (_, r1) = app.refresh_pair(&s.refresh).await;
    assert_moves(
        &app,
        &m2,
        r#"tokend_tokens_issued_total{alg="EdDSA",grant="refresh_token",type="refresh"}"#,
    )
    .await;

    let m3 = scrape(&app).await;
    app.clock.advance(Duration::from_secs(3));
    app.refresh(&s.refresh).await;
    assert_moves(&app, &m3, "tokend_refresh_reuse_detected_total").await;
    assert_moves(&app, &m3, r#"tokend_revocations_total{kind="family"}"#).await;
    let _ = r1;

    let m4 = scrape(&app).await;
    let t = app.new_session().await;
    app.post_bearer("/auth/logout", &t.access).await;
    assert_moves(&app, &m4, r#"tokend_revocations_total{kind="token"}"#).await;
    app.get_bearer("/users/me", &t.access).await;
    assert_moves(
        &app,
        &m4,
        r#"tokend_token_validation_failures_total{reason="revoked"}"#,
    )
    .await;
    app.get_bearer("/users/me", "not.a.token").await;
    assert_moves(
        &app,
        &m4,
        r#"tokend_token_validation_failures_total{reason="malformed"}"#,
    )
    .await;

    let m5 = scrape(&app).await;
    app.state.published.keys().rotate_now(None).await.unwrap();
    assert_moves(&app, &m5, r#"tokend_key_rotations_total{alg="EdDSA"}"#).await;
    assert_moves(
        &app,
        &m5,
        r#"tokend_signing_keys{alg="EdDSA",state="pending"}"#,
    )
    .await;

    // No raw paths, user ids or client ids as labels.
    let text = app.metrics_text().await;
    assert!(!text.contains(s.user["id"].as_str().unwrap()));
    assert!(!text.contains(&s.email));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_are_counted() {
    let mut redis = crate::services::OwnedRedis::start().await;
    let url = redis.url();
    let app = spawn_app_with(Mode::Production, move |env| {
        env.insert("TOKEND_REDIS_URL".into(), url);
    })
    .await;
    let s = app.new_session().await;
    let m0 = scrape(&app).await;
    redis.stop().await;
    let res = app.get_bearer("/users/me", &s.access).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_moves(
        &app,
        &m0,
        r#"tokend_store_errors_total{op="access_status",store="redis"}"#,
    )
    .await;
    assert_moves(
        &app,
        &m0,
        r#"tokend_http_requests_total{method="GET",route="/users/me",status="503"}"#,
    )
    .await;
}

#[tokio::test]
async fn the_metrics_listener_takes_the_operational_routes() {
    let app = spawn_app_with(Mode::Embedded, |env| {
        env.insert("TOKEND_METRICS_LISTEN".into(), "127.0.0.1:0".into());
    })
    .await;
    let ops = format!("http://{}", app.ops_addr.expect("ops listener"));
    for path in ["/metrics", "/healthz", "/readyz"] {
        let res = app.http.get(format!("{ops}{path}")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path} on the ops listener");
        let res = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(
            res.status(),
            StatusCode::NOT_FOUND,
            "{path} on the public one"
        );
    }
    let res = app
        .http
        .get(format!("{ops}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ip_limit_answers_429_with_retry_after_shared_by_two_instances() {
    let (mut env, _) = test_env(Mode::Production);
    env.insert("TOKEND_RATE_LIMIT_IP".into(), "5/min".into());
    let clock = tokend::clock::ManualClock::starting_now();
    let a = spawn_env(Mode::Production, env.clone(), None, clock.clone()).await;
    let b = spawn_env(Mode::Production, env, None, clock.clone()).await;
    for (i, app) in [&a, &b, &a, &b, &a].into_iter().enumerate() {
        let res = app
            .register(
                &format!("iplimit{i}"),
                &format!("ip{i}@example.com"),
                "securepass",
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "request {i}");
    }
    for app in [&a, &b] {
        let res = app.login("ip0@example.com", "securepass").await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(error_code(res).await, "too_many_requests");
    }
    // Endpoints outside the limit still answer.
    assert_eq!(
        a.http
            .get(a.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // The budget refills with time.
    clock.advance(Duration::from_secs(13));
    assert_eq!(
        b.login("ip0@example.com", "securepass").await.status(),
        StatusCode::OK
    );
}

in_both_modes!(the_account_limit_answers_429_per_account);

async fn the_account_limit_answers_429_per_account(mode: Mode) {
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_RATE_LIMIT_ACCOUNT".into(), "3/min".into());
    })
    .await;
    let s = app.new_session().await; // one login
    for _ in 0..2 {
        assert_eq!(
            app.login(&s.email, &s.password).await.status(),
            StatusCode::OK
        );
    }
    let res = app.login(&s.email.to_uppercase(), &s.password).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    let other = app.new_session().await;
    assert_eq!(claims(&other.access)["fresh"], true);
}

in_both_modes!(back_off_grows_and_then_lets_the_right_password_in);

async fn back_off_grows_and_then_lets_the_right_password_in(mode: Mode) {
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_RATE_LIMIT_ACCOUNT".into(), "1000/min".into());
    })
    .await;
    let s = app.new_session().await;
    for _ in 0..6 {
        assert_eq!(
            app.login(&s.email, "wrong password").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let mut waits = Vec::new();
    for _ in 0..3 {
        let res = app.login(&s.email, &s.password).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        waits.push(wait);
        app.clock.advance(Duration::from_secs(wait));
        assert_eq!(
            app.login(&s.email, "wrong password").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert!(
        waits.windows(2).all(|w| w[1] > w[0]),
        "the back-off grows: {waits:?}"
    );
    // Once the back-off has passed, the right password goes through and clears it.
    let res = app.login(&s.email, &s.password).await;
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    app.clock.advance(Duration::from_secs(wait));
    assert_eq!(
        app.login(&s.email, &s.password).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login(&s.email, "wrong password").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&s.email, &s.password).await.status(),
        StatusCode::OK
    );
    // The cap: never more than 15 minutes.
    assert!(waits.iter().all(|w| *w <= 900));
}

in_both_modes!(admin_routes_refuse_non_admins_and_serve_admins);

async fn admin_routes_refuse_non_admins_and_serve_admins(mode: Mode) {
    let app = spawn_app_with(mode, |env| {
        env.insert(
            "TOKEND_BOOTSTRAP_ADMIN_EMAIL".into(),
            "root@example.com".into(),
        );
        env.insert(
            "TOKEND_BOOTSTRAP_ADMIN_PASSWORD".into(),
            "securepass".into(),
        );
    })
    .await;
    let user = app.new_session().await;
    let id = user.user["id"].as_str().unwrap().to_string();
    for (method, path) in [
        ("GET", "/admin/users".to_string()),
        ("PUT", format!("/admin/users/{id}/roles")),
        ("POST", format!("/admin/users/{id}/revoke-sessions")),
    ] {
        let res = app
            .http
            .request(method.parse().unwrap(), app.url(&path))
            .bearer_auth(&user.access)
            .json(&json!({"roles": ["admin"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(error_code(res).await, "insufficient_role");
        let res = app
            .http
            .request(method.parse().unwrap(), app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }

    let (admin, _) = app.login_pair("root@example.com", "securepass").await;
    for _ in 0..3 {
        app.new_session().await;
    }
    // Pagination: 5 users, pages of 2.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = app.url("/admin/users?limit=2");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page: Value = app
            .http
            .get(url)
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for u in page["users"].as_array().unwrap() {
            assert!(u.get("password_hash").is_none());
            seen.push(u["id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);

    // Grant, then take away: taking a role revokes the user's sessions.
    let res = app
        .http
        .put(app.url(&format!("/admin/users/{id}/roles")))
        .bearer_auth(&admin)
        .json(&json!({"roles": ["user", "auditor"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (with_role, _) = app.login_pair(&user.email, &user.password).await;
    assert_eq!(claims(&with_role)["roles"], json!(["auditor", "user"]));
    app.http
        .put(app.url(&format!("/admin/users/{id}/roles")))
        .bearer_auth(&admin)
        .json(&json!({"roles": ["user"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        app.get_bearer("/users/me", &with_role).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = app
        .http
        .put(app.url(&format!("/admin/users/{id}/roles")))
        .bearer_auth(&admin)
        .json(&json!({"roles": ["NOT A ROLE"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = app
        .http
        .put(app.url("/admin/users/no-such-user/roles"))
        .bearer_auth(&admin)
        .json(&json!({"roles": ["user"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    let (fresh, refresh) = app.login_pair(&user.email, &user.password).await;
    let res = app
        .http
        .post(app.url(&format!("/admin/users/{id}/revoke-sessions")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get_bearer("/users/me", &fresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(&refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get_bearer("/users/me", &admin).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn tls_serves_with_a_test_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let (c, k) = (
        cert_path.to_string_lossy().into_owned(),
        key_path.to_string_lossy().into_owned(),
    );
    let app = spawn_app_with(Mode::Embedded, move |env| {
        env.insert("TOKEND_TLS_CERT".into(), c);
        env.insert("TOKEND_TLS_KEY".into(), k);
    })
    .await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/healthz", app.addr.port());
    let res = client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = client
        .post(format!(
            "https://localhost:{}/auth/register",
            app.addr.port()
        ))
        .json(&json!({"username": "tlsuser", "email": "tls@example.com", "password": "securepass"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    // Plain HTTP on the TLS port gets nothing useful.
    assert!(app
        .http
        .get(format!("http://127.0.0.1:{}/healthz", app.addr.port()))
        .send()
        .await
        .is_err());
}

fn set_cookies(res: &reqwest::Response) -> Vec<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// A cookie-authenticated POST to `path`: the `Cookie` header, and `X-CSRF-Token` and `Origin`
/// when given.
async fn cookie_post(
    app: &TestApp,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    origin: Option<&str>,
) -> reqwest::Response {
    let mut req = app.http.post(app.url(path)).header("cookie", cookie);
    if let Some(csrf) = csrf {
        req = req.header("x-csrf-token", csrf);
    }
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    req.send().await.unwrap()
}

fn cookie_value(cookies: &[String], name: &str) -> String {
    cookies
        .iter()
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .map(|c| c.split(';').next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no {name} cookie in {cookies:?}"))
}

in_both_modes!(
    cookie_mode_refreshes_same_site_and_rejects_cross_site,
    behind_an_https_issuer_the_cookies_carry_the_host_prefix,
);

/// RFC 6265bis §4.1.3.2: behind an `https` issuer the refresh and CSRF cookies are
/// `__Host-` cookies (`Secure`, `Path=/`, no `Domain`); a refresh cookie set before they had
/// the prefix still refreshes once, and is replaced.
async fn behind_an_https_issuer_the_cookies_carry_the_host_prefix(mode: Mode) {
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_REFRESH_COOKIE".into(), "on".into());
        env.insert("TOKEND_ISSUER".into(), "https://tokend.test".into());
    })
    .await;
    app.register("hosted", "hosted@example.com", "securepass")
        .await;
    let res = app.login("hosted@example.com", "securepass").await;
    assert_eq!(res.status(), StatusCode::OK);
    let cookies = set_cookies(&res);
    for name in ["__Host-tokend_refresh", "__Host-tokend_csrf"] {
        let c = cookies
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {cookies:?}"));
        assert!(c.contains("; Path=/;") && c.contains("Secure"), "{c}");
        assert!(!c.contains("Domain"), "{c}");
    }
    let refresh = cookie_value(&cookies, "__Host-tokend_refresh");
    let csrf = cookie_value(&cookies, "__Host-tokend_csrf");
    let res = cookie_post(
        &app,
        "/auth/token/refresh",
        &format!("__Host-tokend_refresh={refresh}; __Host-tokend_csrf={csrf}"),
        Some(csrf.as_str()),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let next = set_cookies(&res);
    let refresh = cookie_value(&next, "__Host-tokend_refresh");
    let csrf = cookie_value(&next, "__Host-tokend_csrf");

    // The unprefixed pair of before: refreshes, and the answer ends it for the new one.
    let res = cookie_post(
        &app,
        "/auth/token/refresh",
        &format!("tokend_refresh={refresh}; tokend_csrf={csrf}"),
        Some(csrf.as_str()),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let next = set_cookies(&res);
    assert!(
        next.iter()
            .any(|c| c.starts_with("tokend_refresh=;") && c.contains("Max-Age=0")),
        "{next:?}"
    );
    let refresh = cookie_value(&next, "__Host-tokend_refresh");
    let csrf = cookie_value(&next, "__Host-tokend_csrf");
    // A cookie planted by a sibling host without the prefix does not shadow the real one:
    // the prefixed cookie is read first.
    let res = cookie_post(
        &app,
        "/auth/logout",
        &format!("tokend_csrf=planted; __Host-tokend_refresh={refresh}; __Host-tokend_csrf={csrf}"),
        Some("planted"),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = cookie_post(
        &app,
        "/auth/logout",
        &format!("__Host-tokend_refresh={refresh}; __Host-tokend_csrf={csrf}"),
        Some(csrf.as_str()),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let cleared = set_cookies(&res);
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("__Host-tokend_refresh=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    assert_eq!(
        app.refresh(&refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn cookie_mode_refreshes_same_site_and_rejects_cross_site(mode: Mode) {
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_REFRESH_COOKIE".into(), "on".into());
    })
    .await;
    app.register("browser", "browser@example.com", "securepass")
        .await;
    let res = app.login("browser@example.com", "securepass").await;
    assert_eq!(res.status(), StatusCode::OK);
    let cookies = set_cookies(&res);
    let refresh_cookie = cookies
        .iter()
        .find(|c| c.starts_with("tokend_refresh="))
        .unwrap();
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/auth"] {
        assert!(refresh_cookie.contains(attr), "{refresh_cookie}");
    }
    let body: Value = res.json().await.unwrap();
    assert!(
        body.get("refresh_token").is_none(),
        "the refresh token stays out of reach of scripts"
    );
    let refresh = cookie_value(&cookies, "tokend_refresh");
    let csrf = cookie_value(&cookies, "tokend_csrf");
    assert_eq!(body["csrf_token"], csrf.as_str());
    let cookie_header = format!("tokend_refresh={refresh}; tokend_csrf={csrf}");

    // Cross-site: a foreign Origin, or no CSRF header, is refused.
    for (origin, token) in [
        (Some("https://evil.example"), Some(csrf.as_str())),
        (None, None),
        (Some("http://tokend.test"), Some("forged")),
    ] {
        let res = cookie_post(&app, "/auth/token/refresh", &cookie_header, token, origin).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{origin:?} {token:?}");
        assert_eq!(error_code(res).await, "csrf_failed");
    }
    // An empty CSRF cookie (one planted by a sibling host, say) and an empty header are
    // missing ones, not a match.
    let res = cookie_post(
        &app,
        "/auth/token/refresh",
        &format!("tokend_refresh={refresh}; tokend_csrf="),
        Some(""),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(res).await, "csrf_failed");
    // Same site with the CSRF header: a new pair, the new refresh token in a new cookie.
    let res = cookie_post(
        &app,
        "/auth/token/refresh",
        &cookie_header,
        Some(csrf.as_str()),
        Some("http://tokend.test"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let next = set_cookies(&res);
    let refresh2 = cookie_value(&next, "tokend_refresh");
    let csrf2 = cookie_value(&next, "tokend_csrf");
    assert_ne!(refresh2, refresh);
    // Cookie logout, with the same defence; it revokes the family.
    let res = cookie_post(
        &app,
        "/auth/logout",
        &format!("tokend_refresh={refresh2}; tokend_csrf={csrf2}"),
        Some(csrf2.as_str()),
        Some("https://evil.example"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = cookie_post(
        &app,
        "/auth/logout",
        &format!("tokend_refresh={refresh2}; tokend_csrf={csrf2}"),
        Some(csrf2.as_str()),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(set_cookies(&res).iter().any(|c| c.contains("Max-Age=0")));
    assert_eq!(
        app.refresh(&refresh2).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn cors_is_off_by_default_and_follows_the_allow_list() {
    let app = spawn_app(Mode::Embedded).await;
    let res = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/auth/login"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"));

    let app = spawn_app_with(Mode::Embedded, |env| {
        env.insert(
            "TOKEND_CORS_ORIGINS".into(),
            "https://app.example.com".into(),
        );
    })
    .await;
    let res = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/auth/login"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let res = app
        .http
        .get(app.url("/healthz"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let app = spawn_app(Mode::Embedded).await;
    let s = app.new_session().await;
    for res in [
        app.http.get(app.url("/healthz")).send().await.unwrap(),
        app.http.get(app.url("/nope")).send().await.unwrap(),
        app.get_bearer("/users/me", &s.access).await,
        app.refresh(&s.refresh).await,
    ] {
        assert_eq!(res.headers()["x-content-type-options"], "nosniff");
        assert_eq!(res.headers()["cache-control"], "no-store");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_silent_clients_are_cut_off() {
    let app = spawn_app_with(Mode::Embedded, |env| {
        env.insert("TOKEND_HEADER_READ_TIMEOUT".into(), "1s".into());
    })
    .await;
    let addr = app.addr;
    // Blocking socket work runs off the runtime that serves the app.
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let big = "x".repeat(64 * 1024);
        let _ = write!(
            s,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"
        );
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.is_empty() || out.starts_with("HTTP/1.1 431"),
            "{}",
            &out[..out.len().min(200)]
        );
        // A client that sends half a request line and stops is disconnected by the
        // header-read timeout instead of holding the connection forever.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET /healthz HT").unwrap();
        let mut buf = Vec::new();
        let n = s.read_to_end(&mut buf);
        assert!(n.is_ok(), "the server closed the connection: {n:?}");
    })
    .await
    .unwrap();
    // The server still serves.
    let res = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[test]
fn logs_of_a_full_flow_hold_no_token_password_or_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir.path())
        .arg("serve")
        .env("TOKEND_LISTEN", "127.0.0.1:0")
        .env("TOKEND_ARGON2", "m=256,t=1,p=1")
        .env("TOKEND_SIGNING_ALGS", "EdDSA")
        .env("TOKEND_LOG_FORMAT", "json")
        .env("TOKEND_LOG", "debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "tokend exited");
        log.push_str(&line);
        if line.contains("tokend listening") {
            let v: Value = serde_json::from_str(&line).unwrap();
            break v["addr"].as_str().unwrap().to_string();
        }
    };
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    let password = "Very-Secret-Password-42";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (access, refresh, refreshed) = rt.block_on(async {
        let http = reqwest::Client::new();
        let base = format!("http://{addr}");
        http.post(format!("{base}/auth/register"))
            .json(
                &json!({"username": "logged", "email": "logged@example.com", "password": password}),
            )
            .send()
            .await
            .unwrap();
        http.post(format!("{base}/auth/login"))
            .json(&json!({"email": "logged@example.com", "password": "wrong-password-99"}))
            .send()
            .await
            .unwrap();
        let pair: Value = http
            .post(format!("{base}/auth/login"))
            .json(&json!({"email": "logged@example.com", "password": password}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let access = pair["access_token"].as_str().unwrap().to_string();
        let refresh = pair["refresh_token"].as_str().unwrap().to_string();
        http.get(format!("{base}/users/me"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
        let next: Value = http
            .post(format!("{base}/auth/token/refresh"))
            .bearer_auth(&refresh)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        http.put(format!("{base}/users/me/password"))
            .bearer_auth(&access)
            .json(&json!({"current_password": password, "new_password": "Another-Secret-77"}))
            .send()
            .await
            .unwrap();
        http.post(format!("{base}/auth/logout"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
        (
            access,
            refresh,
            next["refresh_token"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    });
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    log.push_str(&reader.join().unwrap());
    assert!(log.contains("request finished"), "the flow was logged");
    for secret in [
        password,
        "wrong-password-99",
        "Another-Secret-77",
        access.as_str(),
        refresh.as_str(),
        refreshed.as_str(),
        access.split('.').nth(2).unwrap(),
        "$argon2",
        "PRIVATE KEY",
    ] {
        assert!(!secret.is_empty());
        assert!(!log.contains(secret), "the logs contain {secret}");
    }
    let _ = std::io::stdout().flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_grant_admin_works_in_production_and_refuses_plainly_in_embedded() {
    let app = spawn_app(Mode::Production).await;
    let s = app.new_session().await;
    let run = |env: &HashMap<String, String>, args: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        Command::new(env!("CARGO_BIN_EXE_tokend"))
            .env_clear()
            .envs(env)
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let env = app.env.clone();
    let email = s.email.clone();
    let out = tokio::task::spawn_blocking(move || run(&env, &["users", "grant-admin", &email]))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (access, _) = app.login_pair(&s.email, &s.password).await;
    assert_eq!(claims(&access)["roles"], json!(["user", "admin"]));
    let res = app.get_bearer("/admin/users", &access).await;
    assert_eq!(res.status(), StatusCode::OK);
    // The session started before the grant carries the role from its next refresh.
    let (refreshed, _) = app.refresh_pair(&s.refresh).await;
    assert_eq!(claims(&refreshed)["roles"], json!(["user", "admin"]));

    let env = app.env.clone();
    let out = tokio::task::spawn_blocking(move || {
        run(&env, &["users", "grant-admin", "nobody@example.com"])
    })
    .await
    .unwrap();
    assert!(!out.status.success());

    let embedded = crate::helpers::test_env(Mode::Embedded).0;
    let out = tokio::task::spawn_blocking(move || {
        run(&embedded, &["users", "grant-admin", "a@example.com"])
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("production mode") && stderr.contains("TOKEND_BOOTSTRAP_ADMIN_EMAIL"),
        "{stderr}"
    );
}
