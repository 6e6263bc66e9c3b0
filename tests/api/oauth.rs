//! The OAuth2 surface (docs/api.md): the token endpoint's grants and errors, client authentication,
//! revocation, introspection, discovery, the clients CLI, and an independent OAuth client and JWT
//! library driving tokend.

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{
    claims, header, spawn_app_with, spawn_env, test_env, write_clients_file, Mode, TestApp,
};
use crate::in_both_modes;

const SVC_SECRET: &str = "svc-secret-7c1e0b5e9a4f4d2bb1a3";
const GATEWAY_SECRET: &str = "gateway-secret-3f9d8e7c6b5a4";
const CC_ONLY_SECRET: &str = "cc-only-secret-0a1b2c3d4e5f";
const RS_SECRET: &str = "rs-secret-9e8d7c6b5a49382716";
/// A secret of the shape `tokend clients create` generates (43 base64url characters), with both
/// of the characters base64url adds to the alphanumerics.
const BARE_SECRET: &str = "q0W2q8m1-Zb8wL3bS2mYx_Q0a7c9kqv1Zb8wL3bS2mY";

/// Lower-case hex SHA-256, computed here independently of tokend's own helper.
fn sha256_hex(s: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()))
}

/// The static clients of these tests: confidential `svc` (every grant, scopes read+write, plain
/// secret in the file), `gateway` (hashed secret, introspects), `cc-only`, public `spa`, and
/// `bare` (client_credentials, no scopes at all), and with `rs256` a client signing with RS256.
fn clients_json(rs256: bool) -> Value {
    let mut list = vec![
        json!({"client_id": "svc", "client_secret": SVC_SECRET,
               "grant_types": ["client_credentials", "password", "refresh_token"],
               "scopes": ["read", "write"]}),
        json!({"client_id": "gateway", "client_secret_sha256": sha256_hex(GATEWAY_SECRET),
               "grant_types": ["client_credentials"], "scopes": ["introspect"]}),
        json!({"client_id": "cc-only", "client_secret": CC_ONLY_SECRET,
               "grant_types": ["client_credentials"], "scopes": ["read"]}),
        json!({"client_id": "spa", "grant_types": ["password", "refresh_token"],
               "scopes": ["read", "profile"]}),
        json!({"client_id": "bare", "client_secret": BARE_SECRET,
               "grant_types": ["client_credentials"]}),
    ];
    if rs256 {
        list.push(json!({"client_id": "svc-rs", "client_secret": RS_SECRET,
                         "grant_types": ["client_credentials"], "scopes": ["read"],
                         "alg": "RS256"}));
    }
    Value::Array(list)
}

/// An app with the static clients file; the file lives as long as the app.
struct OAuthApp {
    app: TestApp,
    _file: tempfile::NamedTempFile,
}

impl std::ops::Deref for OAuthApp {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

async fn spawn_oauth(mode: Mode) -> OAuthApp {
    spawn_oauth_with(mode, false, |_| {}).await
}

async fn spawn_oauth_with(
    mode: Mode,
    rs256: bool,
    adjust: impl FnOnce(&mut HashMap<String, String>),
) -> OAuthApp {
    let file = write_clients_file(&clients_json(rs256));
    let path = file.path().to_string_lossy().into_owned();
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_CLIENTS_FILE".into(), path);
        adjust(env);
    })
    .await;
    OAuthApp { app, _file: file }
}

impl TestApp {
    /// POSTs a form, optionally with HTTP Basic client credentials.
    async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Response {
        let mut req = self.http.post(self.url(path)).form(form);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        req.send().await.unwrap()
    }

    async fn token(&self, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Response {
        self.post_form("/oauth/token", form, basic).await
    }

    /// A successful token response body.
    async fn token_ok(&self, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Value {
        let res = self.token(form, basic).await;
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn introspect(&self, token: &str) -> Value {
        let res = self
            .post_form(
                "/oauth/introspect",
                &[("token", token)],
                Some(("gateway", GATEWAY_SECRET)),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["cache-control"], "no-store");
        res.json().await.unwrap()
    }

    async fn revoke(&self, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Response {
        self.post_form("/oauth/revoke", form, basic).await
    }

    /// A registered user: (username, email, password).
    async fn user(&self) -> (String, String, String) {
        let s = self.new_session().await;
        (s.username, s.email, s.password)
    }
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no {k} in {v}"))
        .to_string()
}

async fn expect_error(res: Response, status: StatusCode, code: &str) {
    assert_eq!(res.status(), status, "expected {code}");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(body["error_description"].is_string(), "{body}");
}

async fn expect_invalid_client(res: Response) {
    let www = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    expect_error(res, StatusCode::UNAUTHORIZED, "invalid_client").await;
    assert!(
        www.unwrap_or_default().starts_with("Basic"),
        "WWW-Authenticate: Basic expected"
    );
}

in_both_modes!(
    the_password_grant_issues_a_pair_for_username_or_email,
    the_refresh_grant_follows_the_family_rules,
    client_credentials_issues_an_access_token_for_the_client_only,
    both_client_authentication_methods_work_but_not_together,
    every_rfc_6749_error_has_its_status,
    a_client_signs_with_its_own_algorithm,
    revoking_an_access_token_revokes_its_jti_only,
    revoking_a_refresh_token_revokes_its_family,
    revocation_ignores_unknown_and_foreign_tokens,
    introspection_describes_live_tokens,
    introspection_reports_expired_revoked_and_forged_tokens_inactive,
    introspection_needs_a_confidential_client,
    discovery_documents_list_the_endpoints_and_are_cacheable,
    an_independent_oauth_client_and_jwt_library_work_against_tokend,
    role_and_username_changes_reach_sessions_started_before_them,
    empty_scope_and_roles_are_left_out_of_tokens_and_answers,
    tokens_issued_with_empty_claims_are_still_accepted,
    a_secret_of_the_generated_shape_works_in_raw_basic,
    a_refresh_token_from_before_tokens_carried_the_user_falls_back_to_the_user_store,
);

async fn the_password_grant_issues_a_pair_for_username_or_email(mode: Mode) {
    let app = spawn_oauth(mode).await;
    let (username, email, password) = app.user().await;

    // A public client, by username, with a narrower scope.
    let res = app
        .token(
            &[
                ("grant_type", "password"),
                ("username", &username),
                ("password", &password),
                ("client_id", "spa"),
                ("scope", "read"),
            ],
            None,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_eq!(res.headers()["pragma"], "no-cache");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["scope"], "read");
    let access = s(&body, "access_token");
    let c = claims(&access);
    assert_eq!(c["client_id"], "spa");
    assert_eq!(c["scope"], "read");
    assert_eq!(c["fresh"], true);
    assert!(c["sid"].is_string());
    assert_eq!(header(&access)["typ"], "at+jwt");
    let r = claims(&s(&body, "refresh_token"));
    assert_eq!(r["client_id"], "spa");
    assert_eq!(r["sid"], c["sid"]);
    assert_eq!(
        app.get_bearer("/users/me", &access).await.status(),
        StatusCode::OK
    );

    // A confidential client, by email, no scope requested: every scope of the client.
    let body = app
        .token_ok(
            &[
                ("grant_type", "password"),
                ("username", &email),
                ("password", &password),
            ],
            Some(("svc", SVC_SECRET)),
        )
        .await;
    assert_eq!(body["scope"], "read write");
    assert_eq!(claims(&s(&body, "access_token"))["client_id"], "svc");

    // The built-in first-party client works without configuration.
    let body = app
        .token_ok(
            &[
                ("grant_type", "password"),
                ("username", &email),
                ("password", &password),
                ("client_id", "tokend"),
            ],
            None,
        )
        .await;
    assert_eq!(claims(&s(&body, "access_token"))["client_id"], "tokend");
}

async fn the_refresh_grant_follows_the_family_rules(mode: Mode) {
    let app = spawn_oauth(mode).await;
    let (username, _, password) = app.user().await;
    let first = app
        .token_ok(
            &[
                ("grant_type", "password"),
                ("username", &username),
                ("password", &password),
                ("client_id", "spa"),
            ],
            None,
        )
        .await;
    let r0 = s(&first, "refresh_token");
    let second = app
        .token_ok(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &r0),
                ("client_id", "spa"),
            ],
            None,
        )
        .await;
    assert_eq!(second["scope"], "read profile");
    let (a1, r1) = (s(&second, "access_token"), s(&second, "refresh_token"));
    assert_eq!(
        claims(&a1)["sid"],
        claims(&s(&first, "access_token"))["sid"]
    );
    assert_eq!(claims(&a1)["fresh"], false);
    assert_ne!(claims(&r1)["jti"], claims(&r0)["jti"]);

    // Another client cannot use this client's refresh token.
    let res = app
        .token(
            &[("grant_type", "refresh_token"), ("refresh_token", &r1)],
            Some(("svc", SVC_SECRET)),
        )
        .await;
    expect_error(res, StatusCode::BAD_REQUEST, "invalid_grant").await;
    // A scope wider than the original grant is refused.
    let res = app
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &r1),
                ("client_id", "spa"),
                ("scope", "read write"),
            ],
            None,
        )
        .await;
    expect_error(res, StatusCode::BAD_REQUEST, "invalid_scope").await;

    // Reuse of an exchanged token after the leeway revokes the family: invalid_grant, 400.
    app.clock.advance(Duration::from_secs(5));
    let res = app
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &r0),
                ("client_id", "spa"),
            ],
            None,
        )
        .await;
    expect_error(res, StatusCode::BAD_REQUEST, "invalid_grant").await;
    assert_eq!(
        app.get_bearer("/auth/verify", &a1).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = app
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &r1),
                ("client_id", "spa"),
            ],
            None,
        )
        .await;
    expect_error(res, StatusCode::BAD_REQUEST, "invalid_grant").await;
}

async fn client_credentials_issues_an_access_token_for_the_client_only(mode: Mode) {
    let app = spawn_oauth(mode).await;
    let res = app
        .token(
            &[("grant_type", "client_credentials"), ("scope", "read")],
            Some(("svc", SVC_SECRET)),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(body["scope"], "read");
    assert_eq!(body["token_type"], "Bearer");
    let access = s(&body, "access_token");
    assert_eq!(header(&access)["typ"], "at+jwt");
    assert_eq!(header(&access)["alg"], "EdDSA");
    let c = claims(&access);
    assert_eq!(c["sub"], "svc");
    assert_eq!(c["client_id"], "svc");
    assert_eq!(c["fresh"], false);
    assert!(c.get("roles").is_none(), "no empty roles: {c}");
    assert_eq!(c["aud"], "tokend");
    assert_eq!(c["iss"], "http://tokend.test");
    assert!(c.get("sid").is_none(), "{c}");
    let other = app
        .token_ok(
            &[("grant_type", "client_credentials")],
            Some(("svc", SVC_SECRET)),
        )
        .await;
    assert_eq!(other["scope"], "read write");
    assert_ne!(claims(&s(&other, "access_token"))["jti"], c["jti"]);
    // The token is a valid access token.
    let res = app.get_bearer("/auth/verify", &access).await;
    assert_eq!(res.status(), StatusCode::OK);
}

async fn both_client_authentication_methods_work_but_not_together(mode: Mode) {
    let app = spawn_oauth(mode).await;
    let cc = [("grant_type", "client_credentials")];
    // client_secret_basic, with a secret stored hashed in the file.
    app.token_ok(&cc, Some(("gateway", GATEWAY_SECRET))).await;
    // client_secret_post.
    app.token_ok(
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "svc"),
            ("client_secret", SVC_SECRET),
        ],
        None,
    )
    .await;
    // Basic with a matching client_id in the body is one method.
    app.token_ok(
        &[("grant_type", "client_credentials"), ("client_id", "svc")],
        Some(("svc", SVC_SECRET)),
    )
    .await;
    // Both at once.
    let res = app
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "svc"),
                ("client_secret", SVC_SECRET),
            ],
            Some(("svc", SVC_SECRET)),
        )
        .await;
    expect_error(res, StatusCode::BAD_REQUEST, "invalid_request").await;
    // Wrong secrets, unknown clients, no authentication: invalid_client, 401, WWW-Authenticate.
    expect_invalid_client(app.token(&cc, Some(("svc", "wrong"))).await).await;
    expect_invalid_client(
        app.token(
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "svc"),
                ("client_secret", "wrong"),
            ],
            None,
        )
        .await,
    )
    .await;
    expect_invalid_client(app.token(&cc, Some(("nobody", "x"))).await).await;
    expect_invalid_client(app.token(&cc, None).await).await;
    // A confidential client must send its secret; a public one must not send any.
    expect_invalid_client(
        app.token(
            &[("grant_type", "client_credentials"), ("client_id", "svc")],
            None,
        )
        .await,
    )
    .await;
    expect_invalid_client(
        app.token(
            &[
                ("grant_type", "password"),
                ("username", "u"),
                ("password", "p"),
            ],
            Some(("spa", "x")),
        )
        .await,
    )
    .await;
    // Malformed Basic credentials.
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .header("authorization", "Basic not-base64!")
        .form(&cc)
        .send()
        .await
        .unwrap();
    expect_invalid_client(res).await;
}

async fn every_rfc_6749_error_has_its_status(mode: Mode) {
    let app = spawn_oauth(mode).await;
    let (username, _, password) = app.user().await;
    let svc = Some(("svc", SVC_SECRET));
    // invalid_request: no grant_type, a missing parameter, a repeated parameter.
    expect_error(
        app.token(&[], svc).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        app.token(&[("grant_type", "password"), ("username", &username)], svc)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        app.token(&[("grant_type", "refresh_token")], svc).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        app.token(
            &[
                ("grant_type", "client_credentials"),
                ("grant_type", "client_credentials"),
            ],
            svc,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    // invalid_client.
    expect_invalid_client(
        app.token(
            &[("grant_type", "client_credentials")],
            Some(("svc", "nope")),
        )
        .await,
    )
    .await;
    // invalid_grant: a wrong password, an unknown user, a forged refresh token.
    for (user, pw) in [
        (username.as_str(), "wrong password"),
        ("nobody-here", password.as_str()),
    ] {
        expect_error(
            app.token(
                &[
                    ("grant_type", "password"),
                    ("username", user),
                    ("password", pw),
                ],
                svc,
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        )
        .await;
    }
    expect_error(
        app.token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", "not.a.jwt"),
            ],
            svc,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    )
    .await;
    // unauthorized_client: a grant the client may not use.
    expect_error(
        app.token(
            &[
                ("grant_type", "password"),
                ("username", &username),
                ("password", &password),
            ],
            Some(("cc-only", CC_ONLY_SECRET)),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
    )
    .await;
    expect_error(
        app.token(
            &[("grant_type", "client_credentials"), ("client_id", "spa")],
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
    )
    .await;
    // unsupported_grant_type.
    for grant in [
        "urn:ietf:params:oauth:grant-type:saml2-bearer",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "implicit",
    ] {
        expect_error(
            app.token(&[("grant_type", grant)], svc).await,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        )
        .await;
    }
    // invalid_scope.
    expect_error(
        app.token(
            &[
                ("grant_type", "client_credentials"),
                ("scope", "read admin"),
            ],
            svc,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    )
    .await;
    expect_error(
        app.token(
            &[
                ("grant_type", "password"),
                ("username", &username),
                ("password", &password),
                ("client_id", "spa"),
                ("scope", "write"),
            ],
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    )
    .await;
    // Form bodies only; POST only.
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("svc", Some(SVC_SECRET))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let res = app.http.get(app.url("/oauth/token")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "POST");
}

async fn a_client_signs_with_its_own_algorithm(mode: Mode) {
    let app = spawn_oauth_with(mode, true, |env| {
        env.insert("TOKEND_SIGNING_ALGS".into(), "EdDSA,RS256".into());
    })
    .await;
    let rs = app
        .token_ok(
            &[("grant_type", "client_credentials")],
            Some(("svc-rs", RS_SECRET)),
        )
        .await;
    let rs_token = s(&rs, "access_token");
    assert_eq!(header(&rs_token)["alg"], "RS256");
    let ed = app
        .token_ok(
            &[("grant_type", "client_credentials")],
            Some(("svc", SVC_SECRET)),
        )
        .await;
    assert_eq!(header(&s(&ed, "access_token"))["alg"], "EdDSA");
    // tokend itself accepts both.
    assert_eq!(
        app.get_bearer("/auth/verify", &rs_token).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.introspect(&rs_token).await["active"], true);
}

/// A password login through the public client `spa`: (access, refresh).
async fn spa_pair(app: &TestApp) -> (String, String) {
    let (username, _, password) = app.user().await;
    let body = app
        .token_ok(
            &[
                ("grant_type", "password"),
                ("username", &username),
                ("password", &password),
                ("client_id", "spa"),
            ],
            None,
        )
        .await;
    (s(&body, "access_token"), s(&body, "refresh_token"))
}

async fn revoking_an_access_token_revokes_its_jti_only(mode: Mode) {
    let app = spawn_oauth(mode).await;
    let (access, refresh) = spa_pair(&app).await;
    let res = app
        .revoke(
            &[
                ("token", &access),
                ("token_type_hint", "access_token"),
                ("client_id", "spa"),
            ],
            None,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.bytes().await.unwrap().is_empty());
    assert_eq!(
        app.get_bearer("/auth/verify", &access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.introspect(&access).await, json!({"active": false}));
    // The family lives on.
    let next = app
        .token_ok(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("client_id", "spa"),
            ],
            None,
        )
        .await;
    assert_eq!(
        app.get_bearer("/auth/verify", &s(&next, "access_token"))
            .await
            .status(),
        StatusCode::OK
    );
    // A client_credentials token, revoked by its confidential client without a hint.
    let cc = app
        .token_ok(
            &[("grant_type", "client_credentials")],
            Some(("svc", SVC_SECRET)),
        )
        .await;
    let cc = s(&cc, "access_token");
    let res = app
        .revoke(&[("token", &cc)], Some(("svc", SVC_SECRET)))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        app.get_bearer("/auth/verify", &cc).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn revoking_a_refresh_token_revokes_its_family(mode: Mode) {
    let app = spawn_oauth(mode).await;
    let (access, refresh) = spa_pair(&app).await;
    let (other_access, _) = spa_pair(&app).await;
    let res = app
        .revoke(
            &[
                ("token", &refresh),
                ("token_type_hint", "refresh_token"),
                ("client_id", "spa"),
            ],
            None,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("client_id", "spa"),
            ],
            None,
        )
        .await;
    expect_error(res, StatusCode::BAD_REQUEST, "invalid_grant").await;
    assert_eq!(
        app.get_bearer("/auth/verify", &access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.introspect(&refresh).await, json!({"active": false}));
    // Another session is untouched; a wrong hint still finds the token.
    assert_eq!(
        app.get_bearer("/auth/verify", &other_access).await.status(),
        StatusCode::OK
    );
    let (a2, r2) = spa_pair(&app).await;
    let res = app
        .revoke(
            &[
                ("token", &r2),
                ("token_type_hint", "access_token"),
                ("client_id", "spa"),
            ],
            None,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        app.get_bearer("/auth/verify", &a2).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn revocation_ignores_unknown_and_foreign_tokens(mode: Mode) {
    let app = spawn_oauth(mode).await;
    for token in ["garbage", "a.b.c", ""] {
        let res = app
            .revoke(&[("token", token), ("client_id", "spa")], None)
            .await;
        if token.is_empty() {
            expect_error(res, StatusCode::BAD_REQUEST, "invalid_request").await;
        } else {
            assert_eq!(res.status(), StatusCode::OK, "{token}");
        }
    }
    // Tokens of another client are left alone.
    let (access, refresh) = spa_pair(&app).await;
    for t in [&access, &refresh] {
        let res = app.revoke(&[("token", t)], Some(("svc", SVC_SECRET))).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(
        app.get_bearer("/auth/verify", &access).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.introspect(&refresh).await["active"], true);
    // Client authentication applies.
    expect_invalid_client(
        app.revoke(&[("token", &access)], Some(("svc", "wrong")))
            .await,
    )
    .await;
    expect_invalid_client(app.revoke(&[("token", &access)], None).await).await;
}

async fn introspection_describes_live_tokens(mode: Mode) {
    let app = spawn_oauth(mode).await;
    let (username, _, password) = app.user().await;
    let body = app
        .token_ok(
            &[
                ("grant_type", "password"),
                ("username", &username),
                ("password", &password),
                ("client_id", "spa"),
                ("scope", "read"),
            ],
            None,
        )
        .await;
    let (access, refresh) = (s(&body, "access_token"), s(&body, "refresh_token"));
    let c = claims(&access);
    let i = app.introspect(&access).await;
    assert_eq!(i["active"], true);
    assert_eq!(i["token_type"], "Bearer");
    assert_eq!(i["token_use"], "access_token");
    assert_eq!(i["scope"], "read");
    assert_eq!(i["client_id"], "spa");
    assert_eq!(i["username"], username.as_str());
    for k in ["sub", "exp", "iat", "nbf", "jti", "iss", "aud", "sid"] {
        assert_eq!(i[k], c[k], "{k}: {i}");
    }
    let r = claims(&refresh);
    let i = app.introspect(&refresh).await;
    assert_eq!(i["active"], true);
    assert_eq!(i["token_use"], "refresh_token");
    assert_eq!(i["jti"], r["jti"]);
    assert_eq!(i["sid"], r["sid"]);
    assert_eq!(i["aud"], "http://tokend.test");
    // A hint that is wrong does not matter.
    let res = app
        .post_form(
            "/oauth/introspect",
            &[("token", &refresh), ("token_type_hint", "access_token")],
            Some(("gateway", GATEWAY_SECRET)),
        )
        .await;
    assert_eq!(res.json::<Value>().await.unwrap()["active"], true);
    // A client_credentials token: the client is the subject, no username, no sid.
    let cc = app
        .token_ok(
            &[("grant_type", "client_credentials")],
            Some(("svc", SVC_SECRET)),
        )
        .await;
    let i = app.introspect(&s(&cc, "access_token")).await;
    assert_eq!(i["active"], true);
    assert_eq!(i["sub"], "svc");
    assert_eq!(i["client_id"], "svc");
    assert!(i.get("username").is_none() && i.get("sid").is_none(), "{i}");
}

/// Flips one character of the signature.
fn forge(token: &str) -> String {
    let mut t = token.to_string();
    let last = t.pop().unwrap();
    t.push(if last == 'A' { 'B' } else { 'A' });
    t
}

/// Replaces the payload with one claiming another subject, keeping the signature.
fn forge_payload(token: &str) -> String {
    use base64::Engine;
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = claims(token);
    c["sub"] = json!("someone-else");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string());
    format!("{}.{}.{}", parts[0], payload, parts[2])
}

async fn introspection_reports_expired_revoked_and_forged_tokens_inactive(mode: Mode) {
    let app = spawn_oauth(mode).await;
    let inactive = json!({"active": false});
    // Forged and unknown.
    let (access, refresh) = spa_pair(&app).await;
    for t in [
        forge(&access),
        forge_payload(&access),
        forge(&refresh),
        "garbage".into(),
        "x.y.z".into(),
    ] {
        assert_eq!(app.introspect(&t).await, inactive, "{t}");
    }
    // Revoked by logout (jti and family).
    let (a2, r2) = spa_pair(&app).await;
    assert_eq!(
        app.post_bearer("/auth/logout", &a2).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.introspect(&a2).await, inactive);
    assert_eq!(app.introspect(&r2).await, inactive);
    // Revoked by logout-all (the user's not-before mark).
    let (a3, r3) = spa_pair(&app).await;
    app.clock.advance(Duration::from_secs(2));
    assert_eq!(
        app.post_bearer("/auth/logout/all", &a3).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.introspect(&a3).await, inactive);
    assert_eq!(app.introspect(&r3).await, inactive);
    // Superseded: an exchanged refresh token is no longer its family's current token.
    let next = app
        .token_ok(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("client_id", "spa"),
            ],
            None,
        )
        .await;
    assert_eq!(app.introspect(&refresh).await, inactive);
    let next_refresh = s(&next, "refresh_token");
    assert_eq!(app.introspect(&next_refresh).await["active"], true);
    // Expired: 15 min access lifetime plus the 30 s leeway.
    let next_access = s(&next, "access_token");
    assert_eq!(app.introspect(&next_access).await["active"], true);
    app.clock.advance(Duration::from_secs(15 * 60 + 31));
    assert_eq!(app.introspect(&next_access).await, inactive);
    assert_eq!(app.introspect(&next_refresh).await["active"], true);
    // The refresh token expires after TOKEND_REFRESH_TTL (14 d) idle.
    app.clock.advance(Duration::from_secs(14 * 24 * 3600));
    assert_eq!(app.introspect(&next_refresh).await, inactive);
}

async fn introspection_needs_a_confidential_client(mode: Mode) {
    let app = spawn_oauth(mode).await;
    let (access, _) = spa_pair(&app).await;
    expect_invalid_client(
        app.post_form(
            "/oauth/introspect",
            &[("token", &access), ("client_id", "spa")],
            None,
        )
        .await,
    )
    .await;
    expect_invalid_client(
        app.post_form("/oauth/introspect", &[("token", &access)], None)
            .await,
    )
    .await;
    expect_invalid_client(
        app.post_form(
            "/oauth/introspect",
            &[("token", &access)],
            Some(("gateway", "wrong")),
        )
        .await,
    )
    .await;
    // client_secret_post works too; a missing token is invalid_request.
    let res = app
        .post_form(
            "/oauth/introspect",
            &[
                ("token", &access),
                ("client_id", "svc"),
                ("client_secret", SVC_SECRET),
            ],
            None,
        )
        .await;
    assert_eq!(res.json::<Value>().await.unwrap()["active"], true);
    let res = app
        .post_form("/oauth/introspect", &[], Some(("gateway", GATEWAY_SECRET)))
        .await;
    expect_error(res, StatusCode::BAD_REQUEST, "invalid_request").await;
}

async fn discovery_documents_list_the_endpoints_and_are_cacheable(mode: Mode) {
    let app = spawn_oauth(mode).await;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let res = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(res.headers()["cache-control"], "public, max-age=300");
        assert_eq!(res.headers()["content-type"], "application/json");
        let etag = res.headers()["etag"].to_str().unwrap().to_string();
        let d: Value = res.json().await.unwrap();
        assert_eq!(d["issuer"], "http://tokend.test");
        assert_eq!(d["token_endpoint"], "http://tokend.test/oauth/token");
        assert_eq!(d["jwks_uri"], "http://tokend.test/.well-known/jwks.json");
        assert_eq!(d["revocation_endpoint"], "http://tokend.test/oauth/revoke");
        assert_eq!(
            d["introspection_endpoint"],
            "http://tokend.test/oauth/introspect"
        );
        assert_eq!(
            d["grant_types_supported"],
            json!([
                "password",
                "refresh_token",
                "client_credentials",
                "authorization_code",
                "urn:ietf:params:oauth:grant-type:device_code",
                "urn:ietf:params:oauth:grant-type:token-exchange"
            ])
        );
        // RFC 8628 §4.
        assert_eq!(
            d["device_authorization_endpoint"],
            "http://tokend.test/oauth/device_authorization"
        );
        assert_eq!(
            d["token_endpoint_auth_methods_supported"],
            json!([
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
                "none"
            ])
        );
        assert!(d["revocation_endpoint_auth_methods_supported"].is_array());
        assert_eq!(
            d["introspection_endpoint_auth_methods_supported"],
            json!([
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt"
            ])
        );
        assert_eq!(
            d["scopes_supported"],
            json!(["openid", "profile", "email", "introspect", "read", "write"])
        );
        assert_eq!(d["token_signing_alg_values_supported"], json!(["EdDSA"]));
        assert!(d["response_types_supported"].is_array());
        if path.ends_with("openid-configuration") {
            assert_eq!(d["id_token_signing_alg_values_supported"], json!(["EdDSA"]));
            assert_eq!(d["subject_types_supported"], json!(["public"]));
        }
        let res = app
            .http
            .get(app.url(path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(res.headers()["etag"].to_str().unwrap(), etag);
        assert!(res.bytes().await.unwrap().is_empty());
        let res = app.http.head(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_clients_file_stops_start_up_naming_the_variable() {
    let cases = [
        json!({"not": "a list"}),
        json!([{"client_id": "a", "grant_types": ["implicit"]}]),
        json!([{"client_id": "a", "client_secret": "x", "grant_types": ["password"], "alg": "RS256"}]),
    ];
    for clients in cases {
        let file = write_clients_file(&clients);
        let (mut env, _dir) = test_env(Mode::Embedded);
        env.insert(
            "TOKEND_CLIENTS_FILE".into(),
            file.path().to_string_lossy().into_owned(),
        );
        let config = tokend::config::Config::from_env(&env).unwrap();
        match tokend::startup::Application::build(config).await {
            Ok(_) => panic!("{clients} was accepted"),
            Err(e) => assert!(e.to_string().contains("TOKEND_CLIENTS_FILE"), "{e}"),
        }
    }
    let (mut env, _dir) = test_env(Mode::Embedded);
    env.insert(
        "TOKEND_CLIENTS_FILE".into(),
        "/nonexistent/clients.json".into(),
    );
    let config = tokend::config::Config::from_env(&env).unwrap();
    let e = tokend::startup::Application::build(config)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(e.unwrap_or_default().contains("TOKEND_CLIENTS_FILE"));
}

/// A plain `client_secret` with `+` or `%` would reach tokend garbled from clients that send
/// HTTP Basic without form-encoding (RFC 6749 §2.3.1): the file is refused at start-up, naming
/// the client and the rule, with exit code 2 like any configuration error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_secret_with_plus_or_percent_stops_start_up_with_exit_2() {
    for secret in [
        "Zm9v+YmFy-generated-looking-but-base64",
        "fifty%25off-secret-value",
    ] {
        let file = write_clients_file(&json!([
            {"client_id": "spa", "grant_types": ["password"]},
            {"client_id": "billing", "client_secret": secret,
             "grant_types": ["client_credentials"], "scopes": ["invoices:read"]}
        ]));
        let (mut env, _dir) = test_env(Mode::Embedded);
        env.insert(
            "TOKEND_CLIENTS_FILE".into(),
            file.path().to_string_lossy().into_owned(),
        );
        let config = tokend::config::Config::from_env(&env).unwrap();
        let e = match tokend::startup::Application::build(config).await {
            Ok(_) => panic!("{secret:?} was accepted"),
            Err(e) => e.to_string(),
        };
        for needle in ["TOKEND_CLIENTS_FILE", "\"billing\"", "'+' or '%'"] {
            assert!(e.contains(needle), "{needle} missing: {e}");
        }

        // The binary: one line on stderr and exit code 2 (bounded by `timeout`, which answers
        // 124 should tokend start serving instead).
        let dir = tempfile::tempdir().unwrap();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("timeout")
                .arg("60")
                .arg(env!("CARGO_BIN_EXE_tokend"))
                .arg("serve")
                .env_clear()
                .envs(&env)
                .current_dir(dir.path())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let last = stderr.trim().lines().last().unwrap_or_default();
        assert!(last.starts_with("tokend: TOKEND_CLIENTS_FILE="), "{stderr}");
        assert!(
            last.contains("\"billing\"") && last.contains("'+' or '%'"),
            "{stderr}"
        );
    }
}

/// A secret of the shape `tokend clients create` generates (43 base64url characters) works when
/// the client puts it into HTTP Basic raw, as `curl -u`, Python requests and authlib do.
async fn a_secret_of_the_generated_shape_works_in_raw_basic(mode: Mode) {
    use base64::Engine;
    let app = spawn_oauth(mode).await;
    assert_eq!(BARE_SECRET.len(), 43);
    assert!(BARE_SECRET.contains('-') && BARE_SECRET.contains('_'));
    let raw = base64::engine::general_purpose::STANDARD.encode(format!("bare:{BARE_SECRET}"));
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .header("authorization", format!("Basic {raw}"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(claims(&s(&body, "access_token"))["sub"], "bare");
    // Form-encoding it first (RFC 6749 §2.3.1) changes nothing: both readings agree.
    let encoded: String = url::form_urlencoded::byte_serialize(BARE_SECRET.as_bytes()).collect();
    assert_eq!(encoded, BARE_SECRET);
}

/// Runs the `tokend` binary with exactly `env`, from an empty directory (no `.env`).
pub(crate) fn tokend_cli(env: &HashMap<String, String>, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir(dir.path())
        .output()
        .unwrap()
}

/// [`tokend_cli`], which must succeed (its stderr is the failure message).
pub(crate) fn tokend_cli_ok(env: &HashMap<String, String>, args: &[&str]) -> Output {
    let out = tokend_cli(env, args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The row of `tokend clients list --json` for `client_id`, and the whole list.
pub(crate) fn listed_client(env: &HashMap<String, String>, client_id: &str) -> (Value, Value) {
    let out = tokend_cli_ok(env, &["clients", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["client_id"] == client_id)
        .unwrap_or_else(|| panic!("{client_id} is not listed: {list}"))
        .clone();
    (row, list)
}

#[test]
fn the_clients_cli_refuses_plainly_in_embedded_mode() {
    let (env, _dir) = test_env(Mode::Embedded);
    for args in [
        &["clients", "create", "--grant", "client_credentials"][..],
        &["clients", "list"][..],
        &["clients", "delete", "x"][..],
    ] {
        let out = tokend_cli(&env, args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("production mode"), "{err}");
        assert!(
            err.contains("TOKEND_MONGODB_URI") && err.contains("TOKEND_REDIS_URL"),
            "{err}"
        );
        assert!(err.contains("TOKEND_CLIENTS_FILE"), "{err}");
        assert!(out.stdout.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_cli_creates_lists_and_deletes_mongodb_clients() {
    let (env, _) = test_env(Mode::Production);
    let out = tokend_cli_ok(
        &env,
        &[
            "clients",
            "create",
            "--grant",
            "client_credentials",
            "--scope",
            "read write",
            "--json",
        ],
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&String> = created.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["client_id", "client_secret"]);
    let (id, secret) = (s(&created, "client_id"), s(&created, "client_secret"));
    assert_eq!(secret.len(), 43, "256-bit base64url secret");

    let named = tokend_cli(
        &env,
        &[
            "clients",
            "create",
            "--id",
            "reports",
            "--grant",
            "password,refresh_token",
            "--public",
            "--json",
        ],
    );
    assert!(
        named.status.success(),
        "{}",
        String::from_utf8_lossy(&named.stderr)
    );
    let named: Value = serde_json::from_slice(&named.stdout).unwrap();
    assert_eq!(
        named,
        json!({"client_id": "reports", "client_secret": null})
    );
    let dup = tokend_cli(
        &env,
        &[
            "clients", "create", "--id", "reports", "--grant", "password",
        ],
    );
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let bad = tokend_cli(
        &env,
        &[
            "clients",
            "create",
            "--grant",
            "client_credentials",
            "--public",
        ],
    );
    assert!(!bad.status.success());

    let (row, list) = listed_client(&env, &id);
    let text = list.to_string();
    assert!(!text.contains(&secret), "list never shows a secret");
    assert_eq!(row["confidential"], true);
    assert_eq!(row["scopes"], json!(["read", "write"]));
    assert_eq!(row["source"], "mongodb");

    // An app on the same database knows the client.
    let app = spawn_env(
        Mode::Production,
        env.clone(),
        None,
        tokend::clock::ManualClock::starting_now(),
    )
    .await;
    let body = app
        .token_ok(
            &[("grant_type", "client_credentials"), ("scope", "write")],
            Some((&id, &secret)),
        )
        .await;
    assert_eq!(claims(&s(&body, "access_token"))["sub"], id.as_str());
    expect_invalid_client(
        app.token(
            &[("grant_type", "client_credentials")],
            Some((&id, "wrong")),
        )
        .await,
    )
    .await;

    tokend_cli_ok(&env, &["clients", "delete", &id]);
    let out = tokend_cli(&env, &["clients", "delete", &id]);
    assert!(!out.status.success());
    expect_invalid_client(
        app.token(
            &[("grant_type", "client_credentials")],
            Some((&id, &secret)),
        )
        .await,
    )
    .await;
    let out = tokend_cli(&env, &["clients", "list"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&id));
    app.stop().await;
}

/// Validates an access token the way a resource server would: discovery → `jwks_uri` → the key
/// named by `kid` → signature, `iss`, `aud`, `exp` checked by jsonwebtoken.
async fn validate_with_jsonwebtoken(app: &TestApp, token: &str) -> Value {
    use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
    let discovery: Value = app
        .http
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let issuer = s(&discovery, "issuer");
    // The issuer is a public name; the test server listens on its own address.
    let jwks_uri = s(&discovery, "jwks_uri").replace(&issuer, &app.base);
    let jwks: JwkSet = app
        .http
        .get(jwks_uri)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let h = decode_header(token).unwrap();
    assert_eq!(h.typ.as_deref(), Some("at+jwt"));
    let jwk = jwks.find(h.kid.as_deref().unwrap()).expect("kid in JWKS");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    assert!(matches!(h.alg, Algorithm::EdDSA | Algorithm::RS256));
    let mut v = Validation::new(h.alg);
    v.set_issuer(&[issuer.as_str()]);
    v.set_audience(&["tokend"]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
    decode::<Value>(token, &key, &v)
        .expect("jsonwebtoken accepts the token")
        .claims
}

async fn an_independent_oauth_client_and_jwt_library_work_against_tokend(mode: Mode) {
    use oauth2::basic::BasicClient;
    use oauth2::{
        ClientId, ClientSecret, RefreshToken, ResourceOwnerPassword, ResourceOwnerUsername, Scope,
        TokenResponse, TokenUrl,
    };
    let app = spawn_oauth_with(mode, true, |env| {
        env.insert("TOKEND_SIGNING_ALGS".into(), "EdDSA,RS256".into());
    })
    .await;
    let (username, _, password) = app.user().await;
    let discovery: Value = app
        .http
        .get(app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token_url = s(&discovery, "token_endpoint").replace(&s(&discovery, "issuer"), &app.base);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // client_credentials with client_secret_basic, EdDSA and RS256 clients.
    for (id, secret, alg) in [("svc", SVC_SECRET, "EdDSA"), ("svc-rs", RS_SECRET, "RS256")] {
        let client = BasicClient::new(ClientId::new(id.into()))
            .set_client_secret(ClientSecret::new(secret.into()))
            .set_token_uri(TokenUrl::new(token_url.clone()).unwrap());
        let tok = client
            .exchange_client_credentials()
            .add_scope(Scope::new("read".into()))
            .request_async(&http)
            .await
            .unwrap();
        assert!(tok.refresh_token().is_none());
        assert_eq!(tok.scopes().unwrap(), &vec![Scope::new("read".into())]);
        let access = tok.access_token().secret();
        assert_eq!(header(access)["alg"], alg);
        let c = validate_with_jsonwebtoken(&app, access).await;
        assert_eq!(c["sub"], id);
    }

    // password then refresh_token with the public client (client_id in the body).
    let spa = BasicClient::new(ClientId::new("spa".into()))
        .set_token_uri(TokenUrl::new(token_url.clone()).unwrap());
    let tok = spa
        .exchange_password(
            &ResourceOwnerUsername::new(username.clone()),
            &ResourceOwnerPassword::new(password.clone()),
        )
        .request_async(&http)
        .await
        .unwrap();
    let c = validate_with_jsonwebtoken(&app, tok.access_token().secret()).await;
    assert_eq!(c["client_id"], "spa");
    assert_eq!(c["fresh"], true);
    let refresh = tok.refresh_token().unwrap().secret().clone();
    let tok2 = spa
        .exchange_refresh_token(&RefreshToken::new(refresh.clone()))
        .request_async(&http)
        .await
        .unwrap();
    let c2 = validate_with_jsonwebtoken(&app, tok2.access_token().secret()).await;
    assert_eq!(c2["sid"], c["sid"]);
    assert_eq!(c2["fresh"], false);
    assert_ne!(tok2.refresh_token().unwrap().secret(), &refresh);

    // The library sees RFC 6749 errors as such.
    let err = spa
        .exchange_password(
            &ResourceOwnerUsername::new(username),
            &ResourceOwnerPassword::new("wrong password".into()),
        )
        .request_async(&http)
        .await
        .unwrap_err();
    match err {
        oauth2::RequestTokenError::ServerResponse(r) => {
            assert_eq!(
                r.error(),
                &oauth2::basic::BasicErrorResponseType::InvalidGrant
            )
        }
        other => panic!("expected invalid_grant, got {other:?}"),
    }
}

/// A role an admin grants and a new username reach a session started before them: its next
/// refresh carries the role, and introspection of its tokens names the new username.
async fn role_and_username_changes_reach_sessions_started_before_them(mode: Mode) {
    let app = spawn_oauth_with(mode, false, |env| {
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
    let (admin, _) = app.login_pair("root@example.com", "securepass").await;

    let res = app
        .http
        .put(app.url(&format!("/admin/users/{id}/roles")))
        .bearer_auth(&admin)
        .json(&json!({"roles": ["user", "auditor"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (access, refresh) = app.refresh_pair(&user.refresh).await;
    assert_eq!(claims(&access)["roles"], json!(["auditor", "user"]));
    assert_eq!(app.introspect(&access).await["username"], user.username);

    // The login's access token is still fresh: rename with it.
    let res = app
        .put_bearer(
            "/users/me",
            &user.access,
            &json!({"username": "renamed_later"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.introspect(&access).await["username"], "renamed_later");
    assert_eq!(app.introspect(&refresh).await["username"], "renamed_later");
    // Later refreshes keep both.
    let (access, refresh) = app.refresh_pair(&refresh).await;
    assert_eq!(claims(&access)["roles"], json!(["auditor", "user"]));
    assert_eq!(app.introspect(&access).await["username"], "renamed_later");
    assert_eq!(app.introspect(&refresh).await["username"], "renamed_later");
    // A session started after the change has them from its login.
    let (fresh, _) = app.login_pair(&user.email, &user.password).await;
    assert_eq!(claims(&fresh)["roles"], json!(["auditor", "user"]));
    assert_eq!(app.introspect(&fresh).await["username"], "renamed_later");
}

/// Refresh and introspection read the session store only: with MongoDB stopped they go on
/// (with the roles and username they had), while what needs the user store answers 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_and_introspection_go_on_without_mongodb() {
    let mut mongo = crate::services::OwnedMongo::start().await;
    let uri = mongo.url();
    let app = spawn_oauth_with(Mode::Production, false, move |env| {
        env.insert("TOKEND_MONGODB_URI".into(), uri);
    })
    .await;
    let user = app.new_session().await;
    mongo.stop().await;

    let (access, refresh) = app.refresh_pair(&user.refresh).await;
    assert_eq!(claims(&access)["roles"], json!(["user"]));
    let i = app.introspect(&access).await;
    assert_eq!(
        (i["active"].clone(), i["username"].clone()),
        (json!(true), json!(user.username))
    );
    let i = app.introspect(&refresh).await;
    assert_eq!(
        (i["active"].clone(), i["username"].clone()),
        (json!(true), json!(user.username))
    );
    assert_eq!(
        app.get_bearer("/auth/verify", &access).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login(&user.email, &user.password).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        app.get_bearer("/users/me", &access).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// `claims` signed as the app signs refresh tokens: a token of another version of tokend.
fn signed_refresh(app: &TestApp, claims: &tokend::domain::tokens::RefreshClaims) -> String {
    tokend::domain::tokens::Tokens::new(
        app.env["TOKEND_ISSUER"].clone(),
        String::new(),
        app.state.published.keys().clone(),
    )
    .sign_refresh(tokend::keys::Alg::EdDSA, claims)
    .unwrap()
}

/// A refresh token from before refresh tokens carried the user (an upgrade with sessions
/// live): refresh and introspection read the user from the user store instead, and the new
/// tokens carry them again.
async fn a_refresh_token_from_before_tokens_carried_the_user_falls_back_to_the_user_store(
    mode: Mode,
) {
    let app = spawn_oauth(mode).await;
    let user = app.new_session().await;
    let mut old: tokend::domain::tokens::RefreshClaims =
        serde_json::from_value(claims(&user.refresh)).unwrap();
    assert_eq!(old.username.as_deref(), Some(user.username.as_str()));
    old.auth_time = None;
    old.username = None;
    old.roles = None;
    old.user_version = None;
    let before = signed_refresh(&app, &old);
    assert!(claims(&before).get("username").is_none());
    assert_eq!(app.introspect(&before).await["username"], user.username);
    let (access, refresh) = app.refresh_pair(&before).await;
    assert_eq!(claims(&access)["roles"], json!(["user"]));
    assert_eq!(claims(&refresh)["username"], user.username);
    assert_eq!(claims(&refresh)["roles"], json!(["user"]));
    assert_eq!(app.introspect(&access).await["username"], user.username);
    assert_eq!(app.introspect(&refresh).await["username"], user.username);
}

/// A family and its refresh token from before a family's sid named its user (its own Redis
/// keys, the user and the DPoP key in the record, not in the token) keep refreshing until the
/// family ends; a bound one only with its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_family_and_token_from_before_keep_refreshing() {
    let app = spawn_oauth(Mode::Production).await;
    let user = app.new_session().await;
    let sub = claims(&user.access)["sub"].as_str().unwrap().to_string();
    let mut conn = crate::services::kv_conn(&app.env["TOKEND_REDIS_URL"]).await;
    let prefix = app.env["TOKEND_REDIS_PREFIX"].clone();
    let now = tokend::clock::Clock::now(&*app.clock);
    let mut tokens = Vec::new();
    for jkt in [None, Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I")] {
        let mut old: tokend::domain::tokens::RefreshClaims =
            serde_json::from_value(claims(&user.refresh)).unwrap();
        // A sid of 22 characters, naming no user; the claims the record kept.
        old.sid = crate::services::unique_name("s").replace('-', "")[..22].to_string();
        old.jti = crate::services::unique_name("j").replace('-', "")[..22].to_string();
        old.auth_time = None;
        old.username = None;
        old.roles = None;
        old.user_version = None;
        let key = format!("{prefix}fam:{{{}}}", old.sid);
        let mut hset = redis::cmd("HSET");
        hset.arg(&key).arg(&[
            ("user", sub.clone()),
            ("client", "tokend".to_string()),
            ("scope", String::new()),
            ("auth_time", (now - 60).to_string()),
            ("cur", old.jti.clone()),
            ("cur_at", "old-access".to_string()),
            ("iat", now.to_string()),
            ("exp_ms", ((now + 86_400) * 1000).to_string()),
            ("revoked", "0".to_string()),
            ("uname", user.username.clone()),
            ("roles", r#"["user","auditor"]"#.to_string()),
            ("uver", "1".to_string()),
            ("gen", "0".to_string()),
            ("cv", "0".to_string()),
        ]);
        if let Some(jkt) = jkt {
            hset.arg("jkt").arg(jkt);
        }
        let _: i64 = hset.query_async(&mut conn).await.unwrap();
        let _: i64 = redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(86_400_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        tokens.push((old.sid.clone(), signed_refresh(&app, &old)));
    }
    // The unbound one: the roles its record kept (a user-store read would say ["user"]).
    let (sid, before) = &tokens[0];
    let (access, refresh) = app.refresh_pair(before).await;
    assert_eq!(claims(&access)["roles"], json!(["user", "auditor"]));
    assert_eq!(claims(&access)["sid"], json!(sid));
    assert_eq!(claims(&access)["auth_time"], json!(now - 60));
    assert_eq!(claims(&refresh)["auth_time"], json!(now - 60));
    let (_, again) = app.refresh_pair(&refresh).await;
    assert_eq!(claims(&again)["sid"], json!(sid));
    // Reuse of the one exchanged before still ends the family.
    assert_eq!(app.refresh(before).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.refresh(&again).await.status(), StatusCode::UNAUTHORIZED);
    // The bound one: not without a proof of the key its record names.
    let (_, bound) = &tokens[1];
    let res = app.refresh(bound).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_dpop_proof", "{body}");
}

/// The keys of a JSON object that hold nothing: `""`, `[]` or `{}` (docs/tokens.md).
fn empty_members(v: &Value) -> Vec<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .iter()
        .filter(|(_, m)| {
            m.as_str().is_some_and(str::is_empty)
                || m.as_array().is_some_and(Vec::is_empty)
                || m.as_object().is_some_and(serde_json::Map::is_empty)
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// Asserts that a token's claims (or an answer) carry no `scope` and no empty member at all.
fn assert_no_scope_nor_empty_members(what: &str, v: &Value) {
    assert!(v.get("scope").is_none(), "{what}: no scope expected: {v}");
    assert!(
        empty_members(v).is_empty(),
        "{what}: empty members {:?}: {v}",
        empty_members(v)
    );
}

/// docs/tokens.md: a claim with nothing in it is left out, never sent empty. The built-in client has no
/// scopes and `bare` neither; strict RFC 9068 validators refuse `"scope":""` and `"roles":[]`.
async fn empty_scope_and_roles_are_left_out_of_tokens_and_answers(mode: Mode) {
    let app = spawn_oauth(mode).await;
    // A password login on the seed route: scope left out, roles present.
    let user = app.new_session().await;
    let c = claims(&user.access);
    assert_no_scope_nor_empty_members("login access token", &c);
    assert_eq!(c["roles"], json!(["user"]));
    assert_no_scope_nor_empty_members("login refresh token", &claims(&user.refresh));

    // /auth/verify shows the claims as they are.
    let res = app.get_bearer("/auth/verify", &user.access).await;
    assert_eq!(res.status(), StatusCode::OK);
    let verified: Value = res.json().await.unwrap();
    assert_eq!(verified["active"], true);
    assert_no_scope_nor_empty_members("/auth/verify claims", &verified["claims"]);

    // A refresh on the seed route and on the token endpoint.
    let (access, refresh) = app.refresh_pair(&user.refresh).await;
    assert_no_scope_nor_empty_members("refreshed access token", &claims(&access));
    assert_no_scope_nor_empty_members("refreshed refresh token", &claims(&refresh));
    let body = app
        .token_ok(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("client_id", "tokend"),
            ],
            None,
        )
        .await;
    assert_no_scope_nor_empty_members("refresh grant answer", &body);
    let (access, refresh) = (s(&body, "access_token"), s(&body, "refresh_token"));
    assert_no_scope_nor_empty_members("refresh grant access token", &claims(&access));
    assert_no_scope_nor_empty_members("refresh grant refresh token", &claims(&refresh));

    // The password grant of the built-in client.
    let body = app
        .token_ok(
            &[
                ("grant_type", "password"),
                ("username", &user.username),
                ("password", &user.password),
                ("client_id", "tokend"),
            ],
            None,
        )
        .await;
    assert_no_scope_nor_empty_members("password grant answer", &body);
    assert_no_scope_nor_empty_members(
        "password grant access token",
        &claims(&s(&body, "access_token")),
    );

    // client_credentials without a scope, by a client that has none: no scope, no roles.
    let body = app
        .token_ok(
            &[("grant_type", "client_credentials")],
            Some(("bare", BARE_SECRET)),
        )
        .await;
    assert_no_scope_nor_empty_members("client_credentials answer", &body);
    let cc = s(&body, "access_token");
    let c = claims(&cc);
    assert_no_scope_nor_empty_members("client_credentials token", &c);
    assert!(c.get("roles").is_none(), "{c}");
    assert_eq!(c["sub"], "bare");

    // Introspection of each: active, and no empty scope.
    for (what, token) in [
        ("user access token", &access),
        ("user refresh token", &refresh),
        ("client_credentials token", &cc),
    ] {
        let i = app.introspect(token).await;
        assert_eq!(i["active"], true, "{what}: {i}");
        assert_no_scope_nor_empty_members(what, &i);
    }
}

/// Re-signs a token's claims with `extra` members added, as tokend signed them before empty
/// claims were left out.
fn resign_with(app: &TestApp, token: &str, typ: &str, extra: &Value) -> String {
    let mut c = claims(token);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    let iat = c["iat"].as_i64().unwrap();
    let Value::Object(map) = c else {
        unreachable!()
    };
    let alg = tokend::keys::Alg::parse(header(token)["alg"].as_str().unwrap()).unwrap();
    app.state
        .published
        .keys()
        .sign(alg, typ, &map, iat)
        .unwrap()
}

/// Tokens issued before the change, with `"scope":""` and `"roles":[]`, stay valid until they
/// expire: they verify, introspect and refresh.
async fn tokens_issued_with_empty_claims_are_still_accepted(mode: Mode) {
    let app = spawn_oauth(mode).await;
    let user = app.new_session().await;
    let empty = json!({"scope": ""});
    let access = resign_with(&app, &user.access, "at+jwt", &empty);
    let refresh = resign_with(&app, &user.refresh, "rt+jwt", &empty);
    assert_eq!(claims(&access)["scope"], "");
    assert_eq!(claims(&refresh)["scope"], "");

    let res = app.get_bearer("/auth/verify", &access).await;
    assert_eq!(res.status(), StatusCode::OK);
    let verified: Value = res.json().await.unwrap();
    assert_no_scope_nor_empty_members("verify of an old token", &verified["claims"]);
    for (what, token) in [
        ("old access token", &access),
        ("old refresh token", &refresh),
    ] {
        let i = app.introspect(token).await;
        assert_eq!(i["active"], true, "{what}: {i}");
        assert!(i.get("scope").is_none(), "{what}: {i}");
    }
    // The old refresh token is still the family's current one and refreshes.
    let (next, _) = app.refresh_pair(&refresh).await;
    assert_no_scope_nor_empty_members("successor of an old token", &claims(&next));

    let body = app
        .token_ok(
            &[("grant_type", "client_credentials")],
            Some(("bare", BARE_SECRET)),
        )
        .await;
    let cc = resign_with(
        &app,
        &s(&body, "access_token"),
        "at+jwt",
        &json!({"scope": "", "roles": []}),
    );
    assert_eq!(
        app.get_bearer("/auth/verify", &cc).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.introspect(&cc).await["active"], true);
}
