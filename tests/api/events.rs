//! Account events (docs/events.md): every type recorded where it happens, users named
//! by id only and nothing secret in any event or audit line, the admin query (filters, paging,
//! checks), retention, and a failing event store that fails no request.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokend::store::{EventQuery, EventRecord, EventStore, StoreError};

use crate::authorize::{self, App, PASSWORD};
use crate::helpers::{claims, error_code, test_env, Mode, TestApp};
use crate::mail::Mailbox;

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
    every_event_type_is_recorded_where_it_happens,
    the_events_query_is_checked_and_for_admins_only,
    events_are_forgotten_after_the_retention,
    a_failing_event_store_fails_no_request,
    audit_lines_name_users_by_id_and_hold_no_secret,
    a_burst_of_sign_ins_is_recorded_whole,
);

const ADMIN_EMAIL: &str = "overseer@example.com";
const ADMIN_PASSWORD: &str = "overseer password 77";
const NEW_PASSWORD: &str = "a brand new passphrase";
/// The user of the code-flow app (`authorize.rs` signs in as `ada`).
const USERNAME: &str = "ada";
const EMAIL: &str = "ada@example.com";
/// The user of the audit-line test: names that cannot turn up inside a random id by chance.
const AUDIT_USER: &str = "zebulonqwyx";
const AUDIT_EMAIL: &str = "zebulonqwyx@example.com";

/// The code-flow app (client `web`) with open registration, a bootstrap admin, mail as files
/// and the user [`USERNAME`]; `wrap` may replace the event store.
async fn spawn(
    mode: Mode,
    adjust: impl FnOnce(&mut HashMap<String, String>),
    wrap: impl FnOnce(tokend::startup::Backends) -> tokend::startup::Backends,
) -> (App, Mailbox, tempfile::TempDir) {
    let open = |env: &mut HashMap<String, String>| {
        env.insert("TOKEND_CLIENT_REGISTRATION".into(), "open".into());
        adjust(env);
    };
    authorize::spawn_with_admin(mode, (ADMIN_EMAIL, ADMIN_PASSWORD), open, wrap).await
}

async fn admin_token(app: &TestApp) -> String {
    app.login_pair(ADMIN_EMAIL, ADMIN_PASSWORD).await.0
}

/// Every event the query answers, page by page (`limit` each), checking the pages join up.
async fn all_events(app: &TestApp, admin: &str, filter: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = format!("/admin/events?limit={limit}{filter}");
        if let Some(a) = &after {
            q.push_str(&format!("&after={a}"));
        }
        let res = app.get_bearer(&q, admin).await;
        assert_eq!(res.status(), StatusCode::OK);
        let page: Value = res.json().await.unwrap();
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= limit);
        out.extend(events.iter().cloned());
        match page["next"].as_str() {
            Some(n) => {
                assert_eq!(events.len(), limit);
                assert_eq!(events.last().unwrap()["id"], json!(n));
                after = Some(n.to_string());
            }
            None => return out,
        }
    }
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == json!(kind)).collect()
}

async fn every_event_type_is_recorded_where_it_happens(mode: Mode) {
    let (app, mailbox, _dir) = spawn(mode, |_| {}, |b| b).await;
    let mut secrets: Vec<String> =
        vec![PASSWORD.into(), NEW_PASSWORD.into(), ADMIN_PASSWORD.into()];
    // Sign-in failures: a wrong password, an unknown address (API), a wrong one on the page.
    assert_eq!(
        app.login(EMAIL, "not the password").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("nobody-zz@example.com", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = app.get(&authorize::authorize_url(&app, "web", &[])).await;
    let login_page = authorize::location(&res);
    let page = app.get(&login_page).await.text().await.unwrap();
    let res = app
        .post(
            "/login",
            &[
                ("csrf_token", authorize::csrf_of(&page).as_str()),
                ("req", &authorize::query_of(&login_page)["req"]),
                ("username", USERNAME),
                ("password", "still not it"),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // The page sign-in and a consent, then the code.
    let q = app.code_for_web().await;
    secrets.push(q["code"].clone());
    let web = app.redeem_ok(&q["code"]).await;
    for t in ["access_token", "refresh_token", "id_token"] {
        secrets.push(web[t].as_str().unwrap().to_string());
    }
    // API sign-in, refresh, then a reuse of the exchanged token after the leeway.
    let (access, refresh) = app.login_pair(EMAIL, PASSWORD).await;
    let user_id = claims(&access)["sub"].as_str().unwrap().to_string();
    let (access2, refresh2) = app.refresh_pair(&refresh).await;
    app.clock.advance(Duration::from_secs(10));
    assert_eq!(
        app.refresh(&refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    secrets.extend([access.clone(), refresh.clone(), access2, refresh2]);
    // Logout, and logout everywhere.
    let (a, r) = app.login_pair(EMAIL, PASSWORD).await;
    assert_eq!(
        app.post_bearer("/auth/logout", &a).await.status(),
        StatusCode::NO_CONTENT
    );
    let (b, r2) = app.login_pair(EMAIL, PASSWORD).await;
    assert_eq!(
        app.post_bearer("/auth/logout/all", &b).await.status(),
        StatusCode::NO_CONTENT
    );
    secrets.extend([a, r, b.clone(), r2]);
    // The address verified through its link.
    let link = mailbox.wait_for(EMAIL, 1).await[0].token();
    secrets.push(link.clone());
    let res = app
        .post_json("/auth/verify-email", &json!({"token": link}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // A password change.
    let (fresh, _) = app.login_pair(EMAIL, PASSWORD).await;
    let res = app
        .put_bearer(
            "/users/me/password",
            &fresh,
            &json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // Roles changed by an admin.
    let admin = admin_token(&app).await;
    secrets.push(admin.clone());
    let res = app
        .put_bearer(
            &format!("/admin/users/{user_id}/roles"),
            &admin,
            &json!({"roles": ["user", "auditor"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // The consent withdrawn.
    let (fresh, _) = app.login_pair(EMAIL, NEW_PASSWORD).await;
    let res = app
        .http
        .delete(app.url("/users/me/consents/web"))
        .bearer_auth(&fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // A client registered and deleted.
    let res = app
        .post_json(
            "/oauth/register",
            &json!({
                "redirect_uris": ["https://reg.example/cb"],
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": "none",
                "client_name": "Reg",
                "scope": "openid profile"
            }),
        )
        .await;
    let status = res.status();
    let info: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{info}");
    let client_id = info["client_id"].as_str().unwrap().to_string();
    let rat = info["registration_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    if let Some(s) = info["client_secret"].as_str() {
        secrets.push(s.to_string());
    }
    secrets.push(rat.clone());
    let res = app
        .http
        .delete(app.url(&format!("/oauth/register/{client_id}")))
        .bearer_auth(&rat)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // A key rotated, and the new key revoked.
    let keys = app.state.published.keys();
    let created = keys.rotate_now(None).await.unwrap();
    assert!(!created.is_empty());
    assert!(keys.revoke(&created[0].kid).await.unwrap());
    // The account deleted.
    let res = app
        .http
        .delete(app.url("/users/me"))
        .bearer_auth(&fresh)
        .json(&json!({"current_password": NEW_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    let events = all_events(&app, &admin, "", 1000).await;
    let types: BTreeSet<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    for kind in [
        "login.succeeded",
        "login.failed",
        "logout",
        "refresh.reuse_detected",
        "password.changed",
        "email.verified",
        "roles.changed",
        "account.deleted",
        "consent.granted",
        "consent.withdrawn",
        "client.created",
        "client.deleted",
        "key.rotated",
        "key.revoked",
    ] {
        assert!(types.contains(kind), "no {kind} event in {types:?}");
    }
    // Where and what each says.
    let failed = of_type(&events, "login.failed");
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(failed
        .iter()
        .all(|e| e["detail"]["reason"] == json!("invalid_credentials")));
    assert_eq!(
        failed
            .iter()
            .filter(|e| e["user_id"] == json!(user_id))
            .count(),
        2,
        "the unknown address names no user"
    );
    assert!(failed.iter().any(|e| e["detail"]["via"] == json!("page")));
    let succeeded = of_type(&events, "login.succeeded");
    assert!(succeeded.iter().all(|e| e["ip"] == json!("127.0.0.1")));
    assert!(succeeded
        .iter()
        .any(|e| e["detail"]["via"] == json!("page")));
    let reuse = of_type(&events, "refresh.reuse_detected");
    assert_eq!(reuse[0]["user_id"], json!(user_id));
    assert_eq!(reuse[0]["detail"]["sid"], claims(&access)["sid"]);
    let scopes: BTreeSet<&str> = of_type(&events, "logout")
        .iter()
        .filter_map(|e| e["detail"]["scope"].as_str())
        .collect();
    assert!(
        scopes.contains("session") && scopes.contains("all"),
        "{scopes:?}"
    );
    assert_eq!(
        of_type(&events, "consent.granted")[0]["client_id"],
        json!("web")
    );
    assert_eq!(
        of_type(&events, "consent.withdrawn")[0]["client_id"],
        json!("web")
    );
    let roles = of_type(&events, "roles.changed");
    assert_eq!(roles[0]["detail"]["roles"], json!(["auditor", "user"]));
    assert_eq!(
        of_type(&events, "client.created")[0]["client_id"],
        json!(client_id)
    );
    assert_eq!(
        of_type(&events, "client.deleted")[0]["client_id"],
        json!(client_id)
    );
    assert_eq!(
        of_type(&events, "key.revoked")[0]["detail"]["kid"],
        json!(created[0].kid)
    );
    let deleted = of_type(&events, "account.deleted");
    assert_eq!(deleted[0]["user_id"], json!(user_id));
    assert_eq!(deleted[0]["detail"]["by"], json!("user"));
    // Ids sort by time: the answer is in id order, and each event has the record's shape.
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted);
    for e in &events {
        for key in e.as_object().unwrap().keys() {
            assert!(
                ["id", "time", "type", "user_id", "client_id", "ip", "detail"]
                    .contains(&key.as_str()),
                "{e}"
            );
        }
    }
    // Nothing personal beyond the id, nothing secret.
    let text = serde_json::to_string(&events).unwrap();
    // The username as a JSON value (bare, three letters could sit inside a random id).
    let quoted = format!("\"{USERNAME}\"");
    for needle in [EMAIL, quoted.as_str(), ADMIN_EMAIL, "overseer", "nobody-zz"] {
        assert!(!text.contains(needle), "an event holds {needle:?}");
    }
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "an event holds a secret");
    }
    // Filters and paging give the same events.
    let paged = all_events(&app, &admin, "", 3).await;
    assert_eq!(paged, events);
    let mine = all_events(&app, &admin, &format!("&user_id={user_id}"), 4).await;
    assert!(!mine.is_empty() && mine.iter().all(|e| e["user_id"] == json!(user_id)));
    assert_eq!(
        mine.len(),
        events
            .iter()
            .filter(|e| e["user_id"] == json!(user_id))
            .count()
    );
    let failures = all_events(&app, &admin, "&type=login.failed", 2).await;
    assert_eq!(failures.len(), 3);
    let mine_failed = all_events(
        &app,
        &admin,
        &format!("&type=login.failed&user_id={user_id}"),
        10,
    )
    .await;
    assert_eq!(mine_failed.len(), 2);
}

async fn the_events_query_is_checked_and_for_admins_only(mode: Mode) {
    let (app, _mailbox, _dir) = spawn(mode, |_| {}, |b| b).await;
    let admin = admin_token(&app).await;
    let (user, _) = app.login_pair(EMAIL, PASSWORD).await;
    assert_eq!(
        app.get_bearer("/admin/events", &user).await.status(),
        StatusCode::FORBIDDEN
    );
    let res = app.http.get(app.url("/admin/events")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    for bad in [
        "type=login",
        "type=LOGIN.FAILED",
        "limit=0",
        "limit=1001",
        "limit=ten",
        "limit=-1",
        "after=not-an-id",
        "after=0123",
        "user_id=a/b",
        "user_id=%00",
        "since=yesterday",
    ] {
        let res = app
            .get_bearer(&format!("/admin/events?{bad}"), &admin)
            .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], json!("invalid_request"), "{bad}");
        assert!(body["error_description"].is_string(), "{bad}");
    }
    // The types of flows that record elsewhere are valid filters.
    for kind in ["password.reset", "email.changed"] {
        let res = app
            .get_bearer(&format!("/admin/events?type={kind}"), &admin)
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let page: Value = res.json().await.unwrap();
        assert_eq!(page, json!({"events": []}));
    }
    // An `after` past every event answers an empty last page.
    let res = app
        .get_bearer("/admin/events?after=ffffffffffffffffffffffffff", &admin)
        .await;
    let page: Value = res.json().await.unwrap();
    assert_eq!(page, json!({"events": []}));
}

async fn events_are_forgotten_after_the_retention(mode: Mode) {
    let (app, _mailbox, _dir) = spawn(
        mode,
        |env| {
            env.insert("TOKEND_EVENTS_RETENTION".into(), "1h".into());
        },
        |b| b,
    )
    .await;
    assert_eq!(
        app.login(EMAIL, "wrong wrong wrong").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let admin = admin_token(&app).await;
    assert_eq!(
        all_events(&app, &admin, "&type=login.failed", 10)
            .await
            .len(),
        1
    );
    app.clock.advance(Duration::from_secs(50 * 60));
    let admin = admin_token(&app).await;
    assert_eq!(
        all_events(&app, &admin, "&type=login.failed", 10)
            .await
            .len(),
        1
    );
    app.clock.advance(Duration::from_secs(11 * 60));
    let admin = admin_token(&app).await;
    assert!(all_events(&app, &admin, "&type=login.failed", 10)
        .await
        .is_empty());
    // The admin's sign-in just now is kept.
    assert!(!all_events(&app, &admin, "&type=login.succeeded", 10)
        .await
        .is_empty());
}

/// An event store that cannot be reached.
struct Unreachable;

#[async_trait]
impl EventStore for Unreachable {
    async fn append(&self, _: &EventRecord) -> Result<(), StoreError> {
        Err(StoreError::Unavailable {
            store: "events",
            message: "down".into(),
        })
    }
    async fn query(&self, _: &EventQuery) -> Result<Vec<EventRecord>, StoreError> {
        Err(StoreError::Unavailable {
            store: "events",
            message: "down".into(),
        })
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

async fn a_burst_of_sign_ins_is_recorded_whole(mode: Mode) {
    let (app, _mailbox, _dir) = spawn(
        mode,
        |env| {
            env.insert("TOKEND_RATE_LIMIT".into(), "off".into());
        },
        |b| b,
    )
    .await;
    // Sign-ins in parallel: their events queue while a write is out and go in batches; each
    // is stored once, none is dropped.
    const BURST: usize = 24;
    let logins = (0..BURST).map(|_| app.login_pair(EMAIL, PASSWORD));
    let pairs = futures_util::future::join_all(logins).await;
    let user_id = claims(&pairs[0].0)["sub"].as_str().unwrap().to_string();
    let admin = admin_token(&app).await;
    let mine = all_events(
        &app,
        &admin,
        &format!("&type=login.succeeded&user_id={user_id}"),
        10,
    )
    .await;
    assert_eq!(mine.len(), BURST);
    let ids: BTreeSet<&str> = mine.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), BURST, "each event once");
    assert_eq!(dropped(&app).await, 0.0);
}

async fn dropped(app: &TestApp) -> f64 {
    app.metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("tokend_events_dropped_total "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn a_failing_event_store_fails_no_request(mode: Mode) {
    let (app, _mailbox, _dir) = spawn(
        mode,
        |_| {},
        |mut b| {
            b.events = Arc::new(Unreachable);
            b
        },
    )
    .await;
    // Logins in parallel, right and wrong: each answered as if events were fine.
    let tries = (0..6).map(|i| {
        let password = if i % 2 == 0 {
            PASSWORD
        } else {
            "wrong wrong wrong"
        };
        app.login(EMAIL, password)
    });
    let answers = futures_util::future::join_all(tries).await;
    for (i, res) in answers.into_iter().enumerate() {
        let want = if i % 2 == 0 {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(res.status(), want, "login {i}");
    }
    let admin = admin_token(&app).await;
    // The query cannot be answered: 503, fail closed. It waited for the writes in flight, so
    // every event so far is counted as dropped.
    let res = app.get_bearer("/admin/events", &admin).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(res).await, "temporarily_unavailable");
    assert!(dropped(&app).await >= 7.0, "{}", dropped(&app).await);
}

/// The `tokend::audit` lines of a real process: one JSON event each, users by id only.
async fn audit_lines_name_users_by_id_and_hold_no_secret(mode: Mode) {
    let cwd = tempfile::tempdir().unwrap();
    let port = crate::services::free_port();
    let (mut env, _keys) = test_env(mode);
    env.insert("TOKEND_LISTEN".into(), format!("127.0.0.1:{port}"));
    env.insert("TOKEND_ISSUER".into(), format!("http://127.0.0.1:{port}"));
    env.insert("TOKEND_LOG".into(), "info".into());
    env.insert("TOKEND_LOG_FORMAT".into(), "json".into());
    env.insert("TOKEND_REFRESH_REUSE_LEEWAY".into(), "0s".into());
    let tokend = crate::services::TokendProcess::start("audit", &env, cwd.path()).await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| http.post(tokend.url(path)).json(&body).send();
    let res = post(
        "/auth/register",
        json!({"username": AUDIT_USER, "email": AUDIT_EMAIL, "password": PASSWORD}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = post(
        "/auth/login",
        json!({"email": AUDIT_EMAIL, "password": "wrong wrong wrong"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let pair: Value = post(
        "/auth/login",
        json!({"email": AUDIT_EMAIL, "password": PASSWORD}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let access = pair["access_token"].as_str().unwrap().to_string();
    let refresh = pair["refresh_token"].as_str().unwrap().to_string();
    let user_id = claims(&access)["sub"].as_str().unwrap().to_string();
    let refresh_at = |token: &str| {
        http.post(tokend.url("/auth/token/refresh"))
            .bearer_auth(token)
            .send()
    };
    let next: Value = refresh_at(&refresh).await.unwrap().json().await.unwrap();
    assert!(next["access_token"].is_string(), "{next}");
    // The exchanged token again: reuse (no leeway here).
    assert_eq!(
        refresh_at(&refresh).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let pair: Value = post(
        "/auth/login",
        json!({"email": AUDIT_EMAIL, "password": PASSWORD}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let last_access = pair["access_token"].as_str().unwrap().to_string();
    let res = http
        .post(tokend.url("/auth/logout"))
        .bearer_auth(&last_access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    // The process logs as it goes: wait for the last event's line.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let audit: Vec<Value> = loop {
        let audit: Vec<Value> = tokend
            .logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["target"] == json!("tokend::audit"))
            .collect();
        if audit.iter().any(|l| {
            l["message"]
                .as_str()
                .unwrap_or_default()
                .contains("\"logout\"")
        }) {
            break audit;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no logout audit line"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let events: Vec<Value> = audit
        .iter()
        .map(|l| serde_json::from_str(l["message"].as_str().unwrap()).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    for kind in [
        "login.failed",
        "login.succeeded",
        "refresh.reuse_detected",
        "logout",
    ] {
        assert!(types.contains(&kind), "no {kind} line in {types:?}");
    }
    assert!(events
        .iter()
        .filter(|e| e["type"] != json!("key.rotated"))
        .all(|e| e["user_id"] == json!(user_id)));
    let text = audit
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        AUDIT_EMAIL,
        AUDIT_USER,
        PASSWORD,
        "wrong wrong wrong",
        &access,
        &refresh,
        &last_access,
        next["access_token"].as_str().unwrap(),
        next["refresh_token"].as_str().unwrap(),
    ] {
        assert!(!text.contains(needle), "an audit line holds {needle:?}");
    }
}
