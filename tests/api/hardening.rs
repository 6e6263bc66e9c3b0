//! The hardening rules (docs/hardening.md): credential changes win every race, one atomic
//! budget per account wherever a password is checked, client throttles that never lock the real
//! client out, the refresh route for public clients only, the session cap, and the admin
//! bootstrap. Concurrency is shown with real parallel requests; in production mode the racing
//! requests are split over two instances sharing the stores.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{
    claims, error_code, instances, spawn_app_with, spawn_env, test_env, write_clients_file, Mode,
    TestApp,
};
use crate::in_both_modes;
use crate::services;

/// How many logins race each credential change.
const RACERS: usize = 16;
/// How many times each credential race runs.
const RUNS: usize = 4;

const CONFIDENTIAL_SECRET: &str = "Zk3v9QeN7yW2mP5tR8uX1aB4cD6fG0hJ";

/// Argon2 slow enough that logins are still running while a change happens.
fn racing_env(env: &mut HashMap<String, String>) {
    env.insert("TOKEND_RATE_LIMIT".into(), "off".into());
    env.insert("TOKEND_ARGON2".into(), "m=2048,t=2,p=1".into());
}

/// A request's status and JSON body (`Null` when there is none).
async fn answer(res: Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn form(
    app: &TestApp,
    path: &str,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> Response {
    let mut req = app.http.post(app.url(path)).form(form);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    req.send().await.unwrap()
}

/// Runs `change` while waves of logins with `email`/`password` go on against every instance,
/// so that some logins are still checking the password when the change lands; the last wave
/// starts after the change has answered. Returns the change's status and every login answer.
async fn logins_racing<F>(
    apps: &Arc<Vec<TestApp>>,
    email: &str,
    password: &str,
    change: F,
) -> (StatusCode, Vec<(StatusCode, Value)>)
where
    F: std::future::Future<Output = StatusCode> + Send + 'static,
{
    let change = tokio::spawn(change);
    let mut answers = Vec::new();
    let mut done = None;
    for _ in 0..64 {
        let wave: Vec<_> = (0..RACERS / 4)
            .map(|i| {
                let (apps, email, password) =
                    (apps.clone(), email.to_string(), password.to_string());
                tokio::spawn(async move {
                    answer(apps[i % apps.len()].login(&email, &password).await).await
                })
            })
            .collect();
        for t in wave {
            answers.push(t.await.unwrap());
        }
        if done.is_some() {
            break;
        }
        if change.is_finished() {
            done = Some(());
        }
    }
    (change.await.unwrap(), answers)
}

/// The password grant at `/oauth/token` for a public client (`client_id` in the form).
async fn password_grant(
    app: &TestApp,
    client_id: &str,
    username: &str,
    password: &str,
) -> Response {
    form(
        app,
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("username", username),
            ("password", password),
            ("client_id", client_id),
        ],
        None,
    )
    .await
}

/// Whether an access/refresh pair is dead everywhere: the access token refused, the refresh
/// token refused.
async fn pair_is_dead(app: &TestApp, access: &str, refresh: &str) -> bool {
    let verify = app.get_bearer("/auth/verify", access).await.status();
    let refreshed = app.refresh(refresh).await.status();
    verify == StatusCode::UNAUTHORIZED && refreshed == StatusCode::UNAUTHORIZED
}

in_both_modes!(
    logins_in_flight_during_a_password_change_keep_nothing_alive,
    logins_in_flight_during_an_admin_role_removal_keep_no_admin_token,
    an_admin_email_earns_nothing_at_registration_or_login,
    the_bootstrap_admin_is_created_at_start_up,
    the_seed_refresh_route_refuses_confidential_clients_and_leaves_the_family_alone,
    a_client_without_the_refresh_grant_gets_no_refresh_token,
    current_password_guesses_are_throttled_like_logins,
    concurrent_wrong_passwords_get_no_more_checks_than_sequential_ones,
    username_and_email_share_one_budget,
    strangers_guessing_a_client_secret_never_lock_the_client_out,
    a_login_beyond_the_session_cap_ends_the_oldest_session,
    logout_all_is_one_store_step_however_many_sessions,
);

async fn logins_in_flight_during_a_password_change_keep_nothing_alive(mode: Mode) {
    let apps = Arc::new(instances(mode, racing_env).await);
    for run in 0..RUNS {
        let s = apps[0].new_session().await;
        let new_password = format!("the new password {run}");
        let change = {
            let (apps, access, old) = (apps.clone(), s.access.clone(), s.password.clone());
            let new = new_password.clone();
            async move {
                apps[apps.len() - 1]
                    .put_bearer(
                        "/users/me/password",
                        &access,
                        &json!({"current_password": old, "new_password": new}),
                    )
                    .await
                    .status()
            }
        };
        let (changed, logins) = logins_racing(&apps, &s.email, &s.password, change).await;
        assert_eq!(changed, StatusCode::NO_CONTENT, "run {run}");
        for (status, body) in logins {
            if status != StatusCode::OK {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "run {run}: {body}");
                continue;
            }
            let (access, refresh) = (
                body["access_token"].as_str().unwrap(),
                body["refresh_token"].as_str().unwrap(),
            );
            for app in apps.iter() {
                assert!(
                    pair_is_dead(app, access, refresh).await,
                    "run {run}: a login with the old password outlived the change"
                );
            }
        }
        // The new password works and its session lives.
        let (access, refresh) = apps[0].login_pair(&s.email, &new_password).await;
        assert_eq!(
            apps[0].get_bearer("/auth/verify", &access).await.status(),
            StatusCode::OK
        );
        apps[apps.len() - 1].refresh_pair(&refresh).await;
    }
}

async fn logins_in_flight_during_an_admin_role_removal_keep_no_admin_token(mode: Mode) {
    let apps = Arc::new(
        instances(mode, |env| {
            racing_env(env);
            env.insert(
                "TOKEND_BOOTSTRAP_ADMIN_EMAIL".into(),
                "root@example.com".into(),
            );
            env.insert(
                "TOKEND_BOOTSTRAP_ADMIN_PASSWORD".into(),
                "root password 1".into(),
            );
        })
        .await,
    );
    let (root, _) = apps[0]
        .login_pair("root@example.com", "root password 1")
        .await;
    for run in 0..RUNS {
        let s = apps[0].new_session().await;
        let id = s.user["id"].as_str().unwrap().to_string();
        let grant = apps[0]
            .put_bearer(
                &format!("/admin/users/{id}/roles"),
                &root,
                &json!({"roles": ["user", "admin"]}),
            )
            .await;
        assert_eq!(grant.status(), StatusCode::OK);
        let removal = {
            let (apps, root, id) = (apps.clone(), root.clone(), id.clone());
            async move {
                apps[apps.len() - 1]
                    .put_bearer(
                        &format!("/admin/users/{id}/roles"),
                        &root,
                        &json!({"roles": ["user"]}),
                    )
                    .await
                    .status()
            }
        };
        let (removed, logins) = logins_racing(&apps, &s.email, &s.password, removal).await;
        assert_eq!(removed, StatusCode::OK, "run {run}");
        for (status, body) in logins {
            assert_eq!(status, StatusCode::OK, "run {run}: {body}");
            let access = body["access_token"].as_str().unwrap();
            let refresh = body["refresh_token"].as_str().unwrap();
            if claims(access)["roles"]
                .as_array()
                .is_some_and(|r| r.contains(&json!("admin")))
            {
                for app in apps.iter() {
                    let admin = app.get_bearer("/admin/users", access).await.status();
                    assert_eq!(
                        admin,
                        StatusCode::UNAUTHORIZED,
                        "run {run}: admin token alive"
                    );
                    assert!(pair_is_dead(app, access, refresh).await, "run {run}");
                }
            }
        }
    }
}

async fn an_admin_email_earns_nothing_at_registration_or_login(mode: Mode) {
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_ADMIN_EMAILS".into(), "boss@example.com".into());
    })
    .await;
    let res = app
        .register("boss", "Boss@Example.com", "a long password")
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["roles"], json!(["user"]));
    assert_eq!(user["email_verified"], json!(false));
    let (access, _) = app.login_pair("boss@example.com", "a long password").await;
    assert_eq!(claims(&access)["roles"], json!(["user"]));
    assert_eq!(
        app.get_bearer("/admin/users", &access).await.status(),
        StatusCode::FORBIDDEN
    );
}

async fn the_bootstrap_admin_is_created_at_start_up(mode: Mode) {
    let bootstrap = |password: &'static str| {
        move |env: &mut HashMap<String, String>| {
            env.insert(
                "TOKEND_BOOTSTRAP_ADMIN_EMAIL".into(),
                "Ops@Example.com".into(),
            );
            env.insert("TOKEND_BOOTSTRAP_ADMIN_PASSWORD".into(), password.into());
        }
    };
    let (mut env, dir) = test_env(mode);
    bootstrap("first password")(&mut env);
    let app = spawn_env(
        mode,
        env.clone(),
        dir,
        tokend::clock::ManualClock::starting_now(),
    )
    .await;
    let (access, _) = app.login_pair("ops@example.com", "first password").await;
    assert_eq!(claims(&access)["roles"], json!(["user", "admin"]));
    let me: Value = app
        .get_bearer("/users/me", &access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["email_verified"], json!(true));
    assert_eq!(me["username"], json!("ops"));
    assert_eq!(
        app.get_bearer("/admin/users", &access).await.status(),
        StatusCode::OK
    );
    if mode == Mode::Production {
        // A second start with another password never touches the existing account.
        bootstrap("second password")(&mut env);
        let again = spawn_env(mode, env, None, tokend::clock::ManualClock::starting_now()).await;
        again.login_pair("ops@example.com", "first password").await;
        assert_eq!(
            again
                .login("ops@example.com", "second password")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Both or neither, and the password obeys the password rules.
    let (mut env, _dir) = test_env(mode);
    env.insert(
        "TOKEND_BOOTSTRAP_ADMIN_EMAIL".into(),
        "ops@example.com".into(),
    );
    let err = tokend::config::Config::from_env(&env).unwrap_err();
    assert!(
        err.to_string().contains("TOKEND_BOOTSTRAP_ADMIN_PASSWORD"),
        "{err}"
    );
    env.insert("TOKEND_BOOTSTRAP_ADMIN_PASSWORD".into(), "short".into());
    let err = tokend::config::Config::from_env(&env).unwrap_err();
    assert!(err.to_string().contains("8-128"), "{err}");
}

/// An app with a confidential client (`backend`, every user grant) and a public client
/// (`cli`, password grant only).
async fn spawn_clients(mode: Mode) -> (TestApp, tempfile::NamedTempFile) {
    let file = write_clients_file(&json!([
        {"client_id": "backend", "client_secret": CONFIDENTIAL_SECRET,
         "grant_types": ["password", "refresh_token"], "scopes": ["read"]},
        {"client_id": "cli", "grant_types": ["password"], "scopes": ["read"]},
    ]));
    let path = file.path().to_string_lossy().into_owned();
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_CLIENTS_FILE".into(), path);
    })
    .await;
    (app, file)
}

async fn the_seed_refresh_route_refuses_confidential_clients_and_leaves_the_family_alone(
    mode: Mode,
) {
    let (app, _file) = spawn_clients(mode).await;
    let s = app.new_session().await;
    let pair: Value = form(
        &app,
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("username", &s.username),
            ("password", &s.password),
        ],
        Some(("backend", CONFIDENTIAL_SECRET)),
    )
    .await
    .json()
    .await
    .unwrap();
    let refresh = pair["refresh_token"].as_str().unwrap();
    // No client authentication at the seed route: refused, and the family is left alone.
    let res = app.refresh(refresh).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(res).await, "invalid_grant");
    assert_eq!(
        app.get_bearer("/auth/verify", pair["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    let res = form(
        &app,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
        Some(("backend", CONFIDENTIAL_SECRET)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    // The built-in public client's tokens still refresh there.
    app.refresh_pair(&s.refresh).await;
}

async fn a_client_without_the_refresh_grant_gets_no_refresh_token(mode: Mode) {
    let (app, _file) = spawn_clients(mode).await;
    let s = app.new_session().await;
    let res = password_grant(&app, "cli", &s.username, &s.password).await;
    let (status, body) = answer(res).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("refresh_token").is_none(), "{body}");
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(
        app.get_bearer("/auth/verify", access).await.status(),
        StatusCode::OK
    );
    // Its session still ends with the user's sessions.
    assert_eq!(
        app.post_bearer("/auth/logout/all", &s.access)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get_bearer("/auth/verify", access).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn current_password_guesses_are_throttled_like_logins(mode: Mode) {
    let app = spawn_app_with(mode, |_| {}).await;
    let s = app.new_session().await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let res = app
            .put_bearer(
                "/users/me/password",
                &s.access,
                &json!({"current_password": format!("guess number {i}"), "new_password": "whatever it is"}),
            )
            .await;
        let retry_after = res.headers().contains_key("retry-after");
        statuses.push(res.status());
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry_after);
        }
    }
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::BAD_REQUEST)
        .count();
    assert_eq!(checked, 6, "{statuses:?}");
    assert!(statuses[6..]
        .iter()
        .all(|s| *s == StatusCode::TOO_MANY_REQUESTS));
    // The same budget guards the login.
    assert_eq!(
        app.login(&s.email, &s.password).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Once the back-off is over, the owner gets in.
    app.clock.advance(Duration::from_secs(60));
    let res = app
        .put_bearer(
            "/users/me/password",
            &s.access,
            &json!({"current_password": s.password, "new_password": "a brand new one"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
}

async fn concurrent_wrong_passwords_get_no_more_checks_than_sequential_ones(mode: Mode) {
    let apps = Arc::new(instances(mode, |_| {}).await);
    let s = apps[0].new_session().await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (apps, email) = (apps.clone(), s.email.clone());
            tokio::spawn(async move {
                apps[i % apps.len()]
                    .login(&email, &format!("wrong guess {i}"))
                    .await
                    .status()
            })
        })
        .collect();
    let mut checked = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    // Five free failures, and the sixth that starts the back-off: as many as in a row.
    assert_eq!(checked, 6);
}

async fn username_and_email_share_one_budget(mode: Mode) {
    let app = spawn_app_with(mode, |_| {}).await;
    let s = app.new_session().await;
    for i in 0..3 {
        let res = password_grant(
            &app,
            "tokend",
            &s.username.to_uppercase(),
            &format!("wrong {i}"),
        )
        .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let res = app
            .login(&s.email.to_uppercase(), &format!("wrong again {i}"))
            .await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    // Six failures under two names: the account backs off whichever name comes next.
    assert_eq!(
        app.login(&s.email, &s.password).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let res = password_grant(&app, "tokend", &s.username, &s.password).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

async fn strangers_guessing_a_client_secret_never_lock_the_client_out(mode: Mode) {
    let file = write_clients_file(&json!([
        {"client_id": "billing", "client_secret": CONFIDENTIAL_SECRET,
         "grant_types": ["client_credentials"], "scopes": ["read"]},
    ]));
    let path = file.path().to_string_lossy().into_owned();
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_CLIENTS_FILE".into(), path);
        env.insert("TOKEND_TRUSTED_PROXIES".into(), "127.0.0.1/32".into());
    })
    .await;
    let from = |ip: &'static str, secret: &'static str| {
        let app = &app;
        async move {
            app.http
                .post(app.url("/oauth/token"))
                .header("x-forwarded-for", ip)
                .basic_auth("billing", Some(secret))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let mut stranger = Vec::new();
    for _ in 0..12 {
        stranger.push(from("203.0.113.9", "not the secret").await);
    }
    assert!(
        stranger.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{stranger:?}"
    );
    // The real client, elsewhere, is never refused.
    assert_eq!(
        from("198.51.100.20", CONFIDENTIAL_SECRET).await,
        StatusCode::OK
    );
    drop(file);
}

async fn a_login_beyond_the_session_cap_ends_the_oldest_session(mode: Mode) {
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_MAX_SESSIONS_PER_USER".into(), "3".into());
    })
    .await;
    let s = app.new_session().await;
    let mut pairs = vec![(s.access.clone(), s.refresh.clone())];
    for _ in 0..3 {
        app.clock.advance(Duration::from_millis(10));
        pairs.push(app.login_pair(&s.email, &s.password).await);
    }
    assert!(pair_is_dead(&app, &pairs[0].0, &pairs[0].1).await);
    for (access, refresh) in &pairs[1..] {
        assert_eq!(
            app.get_bearer("/auth/verify", access).await.status(),
            StatusCode::OK
        );
        app.refresh_pair(refresh).await;
    }
}

async fn logout_all_is_one_store_step_however_many_sessions(mode: Mode) {
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_RATE_LIMIT".into(), "off".into());
    })
    .await;
    let s = app.new_session().await;
    let mut pairs = Vec::new();
    for _ in 0..40 {
        pairs.push(app.login_pair(&s.email, &s.password).await);
    }
    let before = store_ops(&app).await;
    assert_eq!(
        app.post_bearer("/auth/logout/all", &s.access)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let after = store_ops(&app).await;
    let session_store = if mode == Mode::Embedded {
        "memory"
    } else {
        "redis"
    };
    let delta: Vec<(String, f64)> = after
        .iter()
        .filter(|(k, _)| k.contains(&format!("store=\"{session_store}\"")))
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect();
    // The token check of the request itself, and one step that ends every session.
    let writes: Vec<&(String, f64)> = delta
        .iter()
        .filter(|(k, _)| !k.contains("op=\"access_status\""))
        .collect();
    assert_eq!(writes.len(), 1, "{delta:?}");
    assert!(writes[0].0.contains("op=\"user_sessions_revoke\"") && writes[0].1 == 1.0);
    for (access, refresh) in &pairs {
        assert!(pair_is_dead(&app, access, refresh).await);
    }
}

/// `tokend_store_operation_duration_seconds_count` by label set.
async fn store_ops(app: &TestApp) -> HashMap<String, f64> {
    app.metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("tokend_store_operation_duration_seconds_count{"))
        // Account events are written in the background, on their own time (docs/events.md,
        // "Where events go"); in embedded mode they share the label `memory`.
        .filter(|l| !l.contains("op=\"event_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// A family of `user` as a login starts it, for the Redis tests below.
fn login_family(user: &str, now: i64, max_sessions: u32) -> tokend::store::NewFamily {
    tokend::store::NewFamily {
        sid: tokend::store::family_sid(&uuid::Uuid::new_v4().simple().to_string()[..8], user),
        user_id: user.to_string(),
        client_id: "web".into(),
        refresh_jti: "q3bN0xw1l8mJ4Cj2YbKp9A".into(),
        issued_at: now / 1000,
        expires_at_ms: now + 60_000,
        started_at_ms: now,
        ttl_ms: 60_000,
        revoked_ttl_ms: 60_000,
        credentials_version: 1,
        max_sessions,
        user_agent: Some(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/131.0.0.0 Safari/537.36"
                .into(),
        ),
        ip: Some("2001:db8:85a3::8a2e:370:7334".into()),
        expect: None,
    }
}

/// A user's family list from before families moved into the user's hash (a set, from before
/// the cap, or a sorted set) counts toward the cap, its families first to go, and ends with
/// the user's other families.
#[tokio::test]
async fn a_family_list_from_before_counts_toward_the_cap_and_goes_first() {
    use tokend::store::SessionStore;
    let store = services::redis_store().await;
    let mut conn = services::kv_conn(&services::redis_url()).await;
    let now = tokend::clock::Clock::now_ms(&tokend::clock::SystemClock);
    for kind in ["SADD", "ZADD"] {
        let user = uuid::Uuid::now_v7().to_string();
        let key = format!("{}ufam:{{{user}}}", store.prefix());
        let mut add = redis::cmd(kind);
        add.arg(&key);
        for (i, sid) in ["old-sid-1", "old-sid-2"].iter().enumerate() {
            if kind == "ZADD" {
                add.arg(now - 10_000 + i as i64);
            }
            add.arg(*sid);
        }
        let _: i64 = add.query_async(&mut conn).await.unwrap();
        let _: i64 = redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(60_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        // A cap of two: one of the old families goes.
        let started = store
            .start_family(&login_family(&user, now, 2))
            .await
            .unwrap();
        assert_eq!(started.evicted(), 1, "{kind}");
        let left: i64 = redis::cmd("ZCARD")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(left, 1, "{kind}");
        assert_eq!(store.user_families(&user).await.unwrap().len(), 2, "{kind}");
        assert_eq!(
            store
                .revoke_user_sessions(&user, None, 60_000)
                .await
                .unwrap(),
            2,
            "{kind}"
        );
        assert!(store.user_families(&user).await.unwrap().is_empty());
    }
}

/// A user at the session cap: each login past it ends their oldest, from the queue of their
/// oldest logins when it is valid and from the whole hash otherwise, and the hash keeps at most
/// the cap, the queue's worth of ended logins and 16 more (docs/sessions.md, "The user's
/// families and the session cap"); a token of an ended login dropped from it is refused.
#[tokio::test]
async fn a_user_at_the_cap_ends_the_oldest_login_each_time_in_a_bounded_hash() {
    use tokend::store::{NewFamily, SessionStore};
    let store = services::redis_store().await;
    let mut conn = services::kv_conn(&services::redis_url()).await;
    let now = tokend::clock::Clock::now_ms(&tokend::clock::SystemClock);
    let user = uuid::Uuid::now_v7().to_string();
    let cap = 20u32;
    let login = |at: i64| NewFamily {
        started_at_ms: at,
        ..login_family(&user, now, cap)
    };
    let live = || async {
        let mut live = store.user_families(&user).await.unwrap();
        live.sort();
        live
    };
    let mut sids = Vec::new();
    for i in 0..200i64 {
        let f = login(now - 1_000 + i);
        let started = store.start_family(&f).await.unwrap();
        assert_eq!(started.evicted(), u64::from(i >= 20), "login {i}");
        sids.push(f.sid);
    }
    let mut newest = sids[180..].to_vec();
    newest.sort();
    assert_eq!(live().await, newest);
    let key = format!("{}sfam:{{{user}}}", store.prefix());
    let kept: usize = redis::cmd("HLEN")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((20..=20 + 32 + 16).contains(&kept), "{kept} families kept");
    // The logins past the cap took the oldest from the user's queue.
    let queued: bool = redis::cmd("HEXISTS")
        .arg(format!("{}usess:{{{user}}}", store.prefix()))
        .arg("q")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(queued);
    let jti = uuid::Uuid::new_v4().simple().to_string();
    let status = |sid: String| {
        let (store, jti, user) = (&store, &jti, &user);
        async move {
            let s = store.access_status(jti, Some(&sid), user).await.unwrap();
            s.revoked(Some(&sid))
        }
    };
    assert!(status(sids[0].clone()).await, "the first login's tokens");
    assert!(status(sids[179].clone()).await, "the last login ended");
    assert!(
        !status(sids[199].clone()).await,
        "the newest login's tokens"
    );

    // A logout at the cap: the next login ends nobody, the one after the oldest.
    store.revoke_family(&sids[185], 60_000).await.unwrap();
    assert_eq!(
        store.start_family(&login(now + 1)).await.unwrap().evicted(),
        0
    );
    assert_eq!(
        store.start_family(&login(now + 2)).await.unwrap().evicted(),
        1
    );
    assert!(!live().await.contains(&sids[180]));
    assert!(live().await.contains(&sids[181]));
    // A login older than every live one (a sign-in from before, exchanged now) ends the oldest
    // other, and is the next to go.
    let old = login(now - 60_000);
    assert_eq!(store.start_family(&old).await.unwrap().evicted(), 1);
    assert!(!live().await.contains(&sids[181]));
    assert!(live().await.contains(&old.sid));
    assert_eq!(
        store.start_family(&login(now + 3)).await.unwrap().evicted(),
        1
    );
    assert!(!live().await.contains(&old.sid));
    assert!(live().await.contains(&sids[182]));
    assert_eq!(live().await.len(), 20);
}

/// A login costs one key in Redis: its user's hash, a listpack holding the family in at most
/// 61 bytes (docs/sessions.md, "The records"), the agent and an IPv6 address included.
#[tokio::test]
async fn a_login_is_one_small_listpack_in_redis() {
    use tokend::store::SessionStore;
    let store = services::redis_store().await;
    let mut conn = services::kv_conn(&services::redis_url()).await;
    let now = tokend::clock::Clock::now_ms(&tokend::clock::SystemClock);
    let user = uuid::Uuid::now_v7().to_string();
    let family = login_family(&user, now, 100);
    store.start_family(&family).await.unwrap();
    let pattern = format!("{}*{{{user}}}", store.prefix());
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    let key = format!("{}sfam:{{{user}}}", store.prefix());
    assert_eq!(keys, std::slice::from_ref(&key));
    let encoding: String = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(encoding, "listpack");
    let value: Vec<u8> = redis::cmd("HGET")
        .arg(&key)
        .arg(tokend::store::split_sid(&family.sid).unwrap().0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value.len(), 61);
    let state = store.family(&family.sid).await.unwrap().unwrap();
    assert_eq!(state.user_agent.as_deref(), Some("Chrome 131 on Linux"));
    assert_eq!(state.ip.as_deref(), Some("2001:db8:85a3::/64"));
    assert_eq!(state.client_id, "web");
}
