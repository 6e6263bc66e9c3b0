//! Accounts: the seed's register, login and profile API (docs/api.md) in both modes.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{claims, error_code, header, spawn_app, Mode, TestApp};

/// Runs an async test body once per mode, as `<name>::embedded` and `<name>::production`.
#[macro_export]
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name($crate::helpers::Mode::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn production() {
                super::$name($crate::helpers::Mode::Production).await
            }
        }
    )*};
}

in_both_modes!(
    the_seed_flow_works_verbatim,
    every_validation_rule_answers_400,
    duplicate_email_or_username_answers_409_ignoring_case,
    an_internationalised_domain_is_one_address_in_either_form,
    racing_registrations_of_one_name_give_one_201,
    wrong_password_and_unknown_email_answer_alike,
    a_refreshed_token_cannot_rename_or_change_the_password,
    bad_tokens_answer_401_with_www_authenticate,
    no_response_contains_a_password_or_hash,
    json_endpoints_refuse_other_content_types,
    a_password_change_revokes_every_session,
    verify_returns_the_claims_of_a_live_token,
);

async fn the_seed_flow_works_verbatim(mode: Mode) {
    let app = spawn_app(mode).await;
    let res = app
        .register("ezradev", "ezra@example.com", "securepass")
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user: Value = res.json().await.unwrap();
    let mut keys: Vec<&str> = user
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "created_at",
            "email",
            "email_verified",
            "id",
            "roles",
            "updated_at",
            "username"
        ]
    );
    assert_eq!(user["username"], "ezradev");
    assert_eq!(user["roles"], json!(["user"]));

    let res = app.login("ezra@example.com", "securepass").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let access = body["access_token"].as_str().unwrap();
    assert!(body["refresh_token"].as_str().is_some());

    let h = header(access);
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(h["alg"], "EdDSA");
    let c = claims(access);
    for claim in [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nbf",
        "jti",
        "client_id",
        "sid",
        "fresh",
        "auth_time",
        "roles",
    ] {
        assert!(c.get(claim).is_some(), "access token lacks {claim}: {c}");
    }
    assert_eq!(c["fresh"], true);
    assert_eq!(c["sub"], user["id"]);
    assert_eq!(c["iss"], "http://tokend.test");
    assert_eq!(c["aud"], "tokend");

    let res = app.get_bearer("/users/me", access).await;
    assert_eq!(res.status(), StatusCode::OK);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["email"], "ezra@example.com");

    let res = app
        .put_bearer("/users/me", access, &json!({"username": "ezra_updated"}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["username"], "ezra_updated");
    assert_eq!(me["id"], user["id"]);
}

async fn every_validation_rule_answers_400(mode: Mode) {
    let app = spawn_app(mode).await;
    let cases = [
        json!({"username": "ab", "email": "a@example.com", "password": "securepass"}),
        json!({"username": "x".repeat(33), "email": "a@example.com", "password": "securepass"}),
        json!({"username": "bad name", "email": "a@example.com", "password": "securepass"}),
        json!({"username": "bad!", "email": "a@example.com", "password": "securepass"}),
        json!({"username": "okname", "email": "not-an-email", "password": "securepass"}),
        json!({"username": "okname", "email": "a@b", "password": "securepass"}),
        json!({"username": "okname", "email": "a@example.com", "password": "short"}),
        json!({"username": "okname", "email": "a@example.com", "password": "p".repeat(129)}),
        json!({"email": "a@example.com", "password": "securepass"}),
        json!({"username": "okname", "password": "securepass"}),
        json!({"username": 5, "email": "a@example.com", "password": "securepass"}),
        json!([]),
    ];
    for body in cases {
        let res = app.post_json("/auth/register", &body).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_code(res).await, "invalid_request");
    }
    let res = app
        .http
        .post(app.url("/auth/register"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = app
        .post_json("/auth/login", &json!({"email": "x@example.com"}))
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // Nothing was created by any of the above.
    let res = app.register("okname", "a@example.com", "securepass").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let s = app.login_pair("A@Example.com", "securepass").await;
    let res = app
        .put_bearer("/users/me", &s.0, &json!({"username": "no spaces allowed"}))
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

/// `bücher.example` and `xn--bcher-kva.example` are one domain: one account, kept under the
/// ASCII form, signs in by either (docs/api.md, "Input rules").
async fn an_internationalised_domain_is_one_address_in_either_form(mode: Mode) {
    let app = spawn_app(mode).await;
    let res = app
        .register("zedidn", "Zed@Bücher.Example", "securepass")
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["email"], "zed@xn--bcher-kva.example");
    let res = app
        .register("zedtwice", "zed@xn--bcher-kva.example", "securepass")
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    for typed in ["zed@bücher.example", "ZED@XN--BCHER-KVA.EXAMPLE"] {
        assert_eq!(
            app.login(typed, "securepass").await.status(),
            StatusCode::OK,
            "{typed}"
        );
    }
}

async fn duplicate_email_or_username_answers_409_ignoring_case(mode: Mode) {
    let app = spawn_app(mode).await;
    assert_eq!(
        app.register("ezradev", "ezra@example.com", "securepass")
            .await
            .status(),
        StatusCode::CREATED
    );
    for (u, e) in [
        ("someone", "ezra@example.com"),
        ("someone", "EZRA@example.com"),
        ("ezradev", "other@example.com"),
        ("EzraDev", "other@example.com"),
    ] {
        let res = app.register(u, e, "securepass").await;
        assert_eq!(res.status(), StatusCode::CONFLICT, "{u} {e}");
        assert_eq!(error_code(res).await, "conflict");
    }
    // Renaming onto a taken name (in any case) is a conflict too.
    assert_eq!(
        app.register("other", "other@example.com", "securepass")
            .await
            .status(),
        StatusCode::CREATED
    );
    let (access, _) = app.login_pair("other@example.com", "securepass").await;
    let res = app
        .put_bearer("/users/me", &access, &json!({"username": "EZRADEV"}))
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
}

async fn racing_registrations_of_one_name_give_one_201(mode: Mode) {
    let app = spawn_app(mode).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let http = app.http.clone();
        let url = app.url("/auth/register");
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .json(
                    &json!({"username": if i % 2 == 0 { "racer" } else { "RACER" },
                    "email": format!("racer{i}@example.com"), "password": "securepass"}),
                )
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 1);
}

async fn wrong_password_and_unknown_email_answer_alike(mode: Mode) {
    let app = spawn_app(mode).await;
    app.register("ezradev", "ezra@example.com", "securepass")
        .await;
    let wrong = app.login("ezra@example.com", "wrongpass!").await;
    let unknown = app.login("nobody@example.com", "securepass").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let a = wrong.text().await.unwrap();
    let b = unknown.text().await.unwrap();
    assert_eq!(a, b);
}

async fn a_refreshed_token_cannot_rename_or_change_the_password(mode: Mode) {
    let app = spawn_app(mode).await;
    let s = app.new_session().await;
    let (access, _) = app.refresh_pair(&s.refresh).await;
    assert_eq!(claims(&access)["fresh"], false);
    let res = app
        .put_bearer("/users/me", &access, &json!({"username": "renamed"}))
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(res).await, "fresh_token_required");
    let res = app
        .put_bearer(
            "/users/me/password",
            &access,
            &json!({"current_password": s.password, "new_password": "another pass"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // GET still works with a non-fresh token.
    assert_eq!(
        app.get_bearer("/users/me", &access).await.status(),
        StatusCode::OK
    );
}

async fn expect_invalid_token(app: &TestApp, token: &str, why: &str) {
    let res = app.get_bearer("/users/me", token).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{why}");
    let www = res
        .headers()
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("{why}: no WWW-Authenticate"))
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        www.starts_with("Bearer ") && www.contains("error=\"invalid_token\""),
        "{why}: {www}"
    );
}

async fn bad_tokens_answer_401_with_www_authenticate(mode: Mode) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let app = spawn_app(mode).await;
    let s = app.new_session().await;
    let parts: Vec<&str> = s.access.split('.').collect();

    // Tampered payload (role escalation), original signature.
    let mut c = claims(&s.access);
    c["roles"] = json!(["user", "admin"]);
    let forged = format!("{}.{}.{}", parts[0], b64.encode(c.to_string()), parts[2]);
    expect_invalid_token(&app, &forged, "tampered payload").await;
    // Tampered signature.
    let mut sig = b64.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    expect_invalid_token(
        &app,
        &format!("{}.{}.{}", parts[0], parts[1], b64.encode(sig)),
        "signature",
    )
    .await;
    // alg none and HS256 with the public key material as a secret.
    for alg in ["none", "HS256"] {
        let mut h = header(&s.access);
        h["alg"] = json!(alg);
        let t = format!("{}.{}.{}", b64.encode(h.to_string()), parts[1], parts[2]);
        expect_invalid_token(&app, &t, alg).await;
        let t = format!("{}.{}.", b64.encode(h.to_string()), parts[1]);
        expect_invalid_token(&app, &t, alg).await;
    }
    // A kid that is a path or a URL is only a lookup key.
    for kid in ["../../etc/passwd", "http://evil.example/jwks.json"] {
        let mut h = header(&s.access);
        h["kid"] = json!(kid);
        let t = format!("{}.{}.{}", b64.encode(h.to_string()), parts[1], parts[2]);
        expect_invalid_token(&app, &t, kid).await;
    }
    // A refresh token is not an access token.
    expect_invalid_token(&app, &s.refresh, "refresh as access").await;
    // Garbage.
    for junk in ["", "abc", "a.b.c", "....", "Bearer"] {
        let res = app.get_bearer("/users/me", junk).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{junk:?}");
    }
    let res = app.http.get(app.url("/users/me")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().contains_key("www-authenticate"));
    // Expired: move the clock past exp + leeway.
    app.clock
        .advance(std::time::Duration::from_secs(15 * 60 + 31));
    expect_invalid_token(&app, &s.access, "expired").await;
    // An access token is not a refresh token.
    let res = app.refresh(&s.access).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

async fn no_response_contains_a_password_or_hash(mode: Mode) {
    let app = spawn_app(mode).await;
    let password = "a-very-recognisable-password";
    let mut bodies = Vec::new();
    let res = app
        .register("hashless", "hashless@example.com", password)
        .await;
    bodies.push(res.text().await.unwrap());
    let res = app.login("hashless@example.com", password).await;
    let text = res.text().await.unwrap();
    let pair: Value = serde_json::from_str(&text).unwrap();
    bodies.push(text);
    let access = pair["access_token"].as_str().unwrap();
    bodies.push(
        app.get_bearer("/users/me", access)
            .await
            .text()
            .await
            .unwrap(),
    );
    bodies.push(
        app.get_bearer("/auth/verify", access)
            .await
            .text()
            .await
            .unwrap(),
    );
    bodies.push(
        app.put_bearer("/users/me", access, &json!({"username": "hashless2"}))
            .await
            .text()
            .await
            .unwrap(),
    );
    bodies.push(
        app.login("hashless@example.com", "wrong-password")
            .await
            .text()
            .await
            .unwrap(),
    );
    for b in bodies {
        assert!(!b.contains(password), "{b}");
        assert!(!b.contains("$argon2"), "{b}");
        assert!(!b.contains("password_hash"), "{b}");
    }
}

async fn json_endpoints_refuse_other_content_types(mode: Mode) {
    let app = spawn_app(mode).await;
    for path in ["/auth/register", "/auth/login"] {
        let res = app
            .http
            .post(app.url(path))
            .header("content-type", "text/plain")
            .body(r#"{"email":"a@example.com","password":"securepass","username":"abc"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path}");
        let res = app
            .http
            .post(app.url(path))
            .form(&[("email", "a@example.com")])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path}");
    }
}

async fn a_password_change_revokes_every_session(mode: Mode) {
    let app = spawn_app(mode).await;
    let s = app.new_session().await;
    let (other_access, other_refresh) = app.login_pair(&s.email, &s.password).await;
    let bystander = app.new_session().await;
    let res = app
        .put_bearer(
            "/users/me/password",
            &s.access,
            &json!({"current_password": "not the password", "new_password": "brand new pass"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = app
        .put_bearer(
            "/users/me/password",
            &s.access,
            &json!({"current_password": s.password, "new_password": "short"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = app
        .put_bearer(
            "/users/me/password",
            &s.access,
            &json!({"current_password": s.password, "new_password": "brand new pass"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for t in [&s.access, &other_access] {
        assert_eq!(
            app.get_bearer("/users/me", t).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    for t in [&s.refresh, &other_refresh] {
        assert_eq!(app.refresh(t).await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        app.login(&s.email, &s.password).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (fresh, _) = app.login_pair(&s.email, "brand new pass").await;
    assert_eq!(
        app.get_bearer("/users/me", &fresh).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get_bearer("/users/me", &bystander.access)
            .await
            .status(),
        StatusCode::OK
    );
}

async fn verify_returns_the_claims_of_a_live_token(mode: Mode) {
    let app = spawn_app(mode).await;
    let s = app.new_session().await;
    let res = app.get_bearer("/auth/verify", &s.access).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["claims"]["sub"], s.user["id"]);
    assert_eq!(body["claims"]["jti"], claims(&s.access)["jti"]);
    let res = app.get_bearer("/auth/verify", &s.refresh).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}
