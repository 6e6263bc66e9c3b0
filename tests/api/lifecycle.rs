//! The end of an account and the sessions list (docs/events.md, docs/sessions.md):
//! deletion by the user, by an admin and by the operator kills exactly what it must; a login
//! racing a deletion leaves nothing alive; each session is listed with the agent and address of
//! its login and can be ended alone; `tokend users` against the real stores.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokend::clock::Clock;
use tokend::store::{ConsentStore, MailStore};

use crate::authorize::{self, App, PASSWORD, WEB_SECRET};
use crate::helpers::{claims, error_code, spawn_app_with, test_env, Mode, TestApp};
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
    deleting_ones_account_ends_everything_it_held,
    an_admin_deletes_a_user_once,
    a_login_racing_a_deletion_leaves_no_live_session,
    the_sessions_list_shows_each_login_and_ends_one_alone,
    another_users_session_is_not_found,
);

const ADMIN_EMAIL: &str = "root@example.com";
const ADMIN_PASSWORD: &str = "admin password 123";

/// The stores a test looks into behind the server's back.
struct Stores {
    consents: Arc<dyn ConsentStore>,
    mail: Arc<dyn MailStore>,
}

/// The code-flow app of `authorize.rs` (user `ada`, client `web`) with a bootstrap admin, mail
/// as `.eml` files, and handles on the consent and mail stores.
async fn spawn(mode: Mode) -> (App, Stores, Mailbox, tempfile::TempDir) {
    let held: Arc<Mutex<Option<Stores>>> = Arc::new(Mutex::new(None));
    let h = held.clone();
    let (app, mailbox, dir) = authorize::spawn_with_admin(
        mode,
        (ADMIN_EMAIL, ADMIN_PASSWORD),
        |_| {},
        move |b| {
            *h.lock().unwrap() = Some(Stores {
                consents: b.consents.clone(),
                mail: b.mail.clone(),
            });
            b
        },
    )
    .await;
    let stores = held.lock().unwrap().take().unwrap();
    (app, stores, mailbox, dir)
}

async fn admin_token(app: &TestApp) -> String {
    app.login_pair(ADMIN_EMAIL, ADMIN_PASSWORD).await.0
}

async fn delete(app: &TestApp, path: &str, token: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = app.http.delete(app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

async fn verify_status(app: &TestApp, access: &str) -> StatusCode {
    app.get_bearer("/auth/verify", access).await.status()
}

async fn introspect(app: &TestApp, token: &str) -> Value {
    app.http
        .post(app.url("/oauth/introspect"))
        .basic_auth("web", Some(WEB_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn web_refresh(app: &TestApp, refresh: &str) -> reqwest::Response {
    app.http
        .post(app.url("/oauth/token"))
        .basic_auth("web", Some(WEB_SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
        .send()
        .await
        .unwrap()
}

fn sha256_hex(s: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()))
}

async fn deleting_ones_account_ends_everything_it_held(mode: Mode) {
    let (app, stores, mailbox, _dir) = spawn(mode).await;
    // A browser session, a consent and a code-flow family for `web`.
    let q = app.code_for_web().await;
    let web = app.redeem_ok(&q["code"]).await;
    let web_access = web["access_token"].as_str().unwrap().to_string();
    let web_refresh_token = web["refresh_token"].as_str().unwrap().to_string();
    // Two sessions of the API, one of them refreshed (its token is no longer fresh).
    let (first, first_refresh) = app.login_pair("ada@example.com", PASSWORD).await;
    let (refreshed, refreshed_refresh) = app.refresh_pair(&first_refresh).await;
    let (fresh, _) = app.login_pair("ada@example.com", PASSWORD).await;
    let user_id = claims(&fresh)["sub"].as_str().unwrap().to_string();
    assert_eq!(stores.consents.list(&user_id).await.unwrap().len(), 1);
    // The verification link mailed at registration is live.
    let link = mailbox.wait_for("ada@example.com", 1).await[0].token();
    let now = app.clock.now_ms();
    assert!(stores
        .mail
        .token(&sha256_hex(&link), "verify_email", now)
        .await
        .unwrap()
        .is_some());

    // A token that is not fresh may not, nor a wrong password, nor a missing one.
    let body = json!({"current_password": PASSWORD});
    let res = delete(&app, "/users/me", &refreshed, Some(body.clone())).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = delete(
        &app,
        "/users/me",
        &fresh,
        Some(json!({"current_password": "nope nope nope"})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = delete(&app, "/users/me", &fresh, Some(json!({}))).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(verify_status(&app, &fresh).await, StatusCode::OK);

    let res = delete(&app, "/users/me", &fresh, Some(body.clone())).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    // Every access token is refused everywhere.
    for token in [&first, &refreshed, &fresh, &web_access] {
        assert_eq!(verify_status(&app, token).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            app.get_bearer("/users/me", token).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.get_bearer("/oauth/userinfo", &web_access)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        introspect(&app, &web_access).await,
        json!({"active": false})
    );
    assert_eq!(
        introspect(&app, &web_refresh_token).await,
        json!({"active": false})
    );
    // Every refresh token too.
    assert_eq!(
        app.refresh(&refreshed_refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = web_refresh(&app, &web_refresh_token).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "invalid_grant");
    // The browser session is over: the next authorization asks to sign in again.
    let res = app.get(&authorize::authorize_url(&app, "web", &[])).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(authorize::location(&res).starts_with("/login?req="));
    // The consent and the mailed link are gone, and the record: the address is free again.
    assert!(stores.consents.list(&user_id).await.unwrap().is_empty());
    assert!(stores
        .mail
        .token(&sha256_hex(&link), "verify_email", now)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        app.login("ada@example.com", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = app.register("ada", "ada@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let again: Value = res.json().await.unwrap();
    assert_ne!(again["id"], json!(user_id));
    // The old tokens do not come back with a new account of the same address.
    assert_eq!(verify_status(&app, &first).await, StatusCode::UNAUTHORIZED);
}

async fn an_admin_deletes_a_user_once(mode: Mode) {
    let (app, stores, _mailbox, _dir) = spawn(mode).await;
    let admin = admin_token(&app).await;
    let q = app.code_for_web().await;
    let web = app.redeem_ok(&q["code"]).await;
    let (access, refresh) = app.login_pair("ada@example.com", PASSWORD).await;
    let id = claims(&access)["sub"].as_str().unwrap().to_string();
    // Not an admin: refused, and nothing happens.
    let res = delete(&app, &format!("/admin/users/{id}"), &access, None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(verify_status(&app, &access).await, StatusCode::OK);
    let res = delete(&app, "/admin/users/no-such-user", &admin, None).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // Three admins' deletions at once: exactly one deletes, the others find nothing.
    let path = format!("/admin/users/{id}");
    let answers = join_all((0..3).map(|_| delete(&app, &path, &admin, None))).await;
    let mut statuses: Vec<StatusCode> = answers.iter().map(|r| r.status()).collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [
            StatusCode::NO_CONTENT,
            StatusCode::NOT_FOUND,
            StatusCode::NOT_FOUND
        ]
    );
    assert_eq!(verify_status(&app, &access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.refresh(&refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let web_access = web["access_token"].as_str().unwrap();
    assert_eq!(
        app.get_bearer("/oauth/userinfo", web_access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = web_refresh(&app, web["refresh_token"].as_str().unwrap()).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(stores.consents.list(&id).await.unwrap().is_empty());
    let res = app.get(&authorize::authorize_url(&app, "web", &[])).await;
    assert!(authorize::location(&res).starts_with("/login?req="));
    // Twice: 404, and the admin's own session is untouched.
    let res = delete(&app, &format!("/admin/users/{id}"), &admin, None).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(verify_status(&app, &admin).await, StatusCode::OK);
    let users: Value = app
        .get_bearer("/admin/users", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert!(users["users"]
        .as_array()
        .unwrap()
        .iter()
        .all(|u| u["id"] != json!(id)));
}

/// Logins in flight while the account is deleted: whichever of them answer 200, none leaves a
/// token or a refresh that works afterwards. Several rounds, each a new user, so that the
/// deletion lands at different points of the logins.
async fn a_login_racing_a_deletion_leaves_no_live_session(mode: Mode) {
    let (app, _stores, _mailbox, _dir) = spawn(mode).await;
    let admin = admin_token(&app).await;
    for round in 0..4 {
        let email = format!("racer{round}@example.com");
        let res = app
            .register(&format!("racer{round}"), &email, PASSWORD)
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let id = res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let logins = (0..6).map(|_| async {
            let res = app.login(&email, PASSWORD).await;
            let status = res.status();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            (status, body)
        });
        let path = format!("/admin/users/{id}");
        let deletion = async { delete(&app, &path, &admin, None).await.status() };
        let (answers, deleted) = tokio::join!(join_all(logins), deletion);
        assert_eq!(deleted, StatusCode::NO_CONTENT, "round {round}");
        for (status, body) in answers {
            if status != StatusCode::OK {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "round {round}: {body}");
                continue;
            }
            let access = body["access_token"].as_str().unwrap();
            let refresh = body["refresh_token"].as_str().unwrap();
            assert_eq!(
                verify_status(&app, access).await,
                StatusCode::UNAUTHORIZED,
                "round {round}: a login that raced the deletion is alive"
            );
            assert_eq!(
                app.refresh(refresh).await.status(),
                StatusCode::UNAUTHORIZED,
                "round {round}"
            );
        }
    }
}

/// Logs in with a `User-Agent` of its own; answers (access, refresh).
async fn login_as(app: &TestApp, agent: &str, email: &str) -> (String, String) {
    let res = reqwest::Client::builder()
        .user_agent(agent)
        .build()
        .unwrap()
        .post(app.url("/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    (
        body["access_token"].as_str().unwrap().to_string(),
        body["refresh_token"].as_str().unwrap().to_string(),
    )
}

async fn sessions_of(app: &TestApp, access: &str) -> Vec<Value> {
    let res = app.get_bearer("/users/me/sessions", access).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    body["sessions"].as_array().unwrap().clone()
}

async fn the_sessions_list_shows_each_login_and_ends_one_alone(mode: Mode) {
    let app = spawn_app_with(mode, |_| {}).await;
    let res = app.register("lister", "lister@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let long_agent = format!("LongAgent/1.0 {}", "x".repeat(300));
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 \
                  (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
    let (phone, phone_refresh) = login_as(&app, iphone, "lister@example.com").await;
    app.clock.advance(std::time::Duration::from_secs(5));
    let (laptop, laptop_refresh) = login_as(&app, &long_agent, "lister@example.com").await;
    let phone_sid = claims(&phone)["sid"].as_str().unwrap().to_string();
    let laptop_sid = claims(&laptop)["sid"].as_str().unwrap().to_string();
    app.clock.advance(std::time::Duration::from_secs(5));
    let (phone, phone_refresh) = app.refresh_pair(&phone_refresh).await;

    let listed = sessions_of(&app, &laptop).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let by_sid: HashMap<String, Value> = listed
        .iter()
        .map(|s| (s["sid"].as_str().unwrap().to_string(), s.clone()))
        .collect();
    let p = &by_sid[&phone_sid];
    let l = &by_sid[&laptop_sid];
    // Oldest login first.
    assert_eq!(listed[0]["sid"], json!(phone_sid));
    assert_eq!(p["client_id"], json!("tokend"));
    // What a family keeps of the agent: the product, its major version, the system.
    assert_eq!(p["user_agent"], json!("Safari 17 on iOS"));
    assert_eq!(p["ip"], json!("127.0.0.1"));
    assert_eq!(p["current"], json!(false));
    assert!(p["last_refreshed_at"].is_string(), "{p}");
    assert!(p["created_at"].as_str().unwrap() < l["created_at"].as_str().unwrap());
    assert_eq!(l["current"], json!(true));
    assert_eq!(l["last_refreshed_at"], Value::Null);
    // An agent that names no product or system known: not kept.
    assert_eq!(l["user_agent"], Value::Null);
    for s in &listed {
        let mut keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "client_id",
                "created_at",
                "current",
                "ip",
                "last_refreshed_at",
                "sid",
                "user_agent"
            ]
        );
    }
    // The same list through the other session's token marks that one current.
    let from_phone = sessions_of(&app, &phone).await;
    assert!(from_phone
        .iter()
        .all(|s| s["current"] == json!(s["sid"] == json!(phone_sid))));

    // Ending the phone's session from the laptop: the phone's tokens die, the laptop's live.
    let res = delete(
        &app,
        &format!("/users/me/sessions/{phone_sid}"),
        &laptop,
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(verify_status(&app, &phone).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.refresh(&phone_refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(verify_status(&app, &laptop).await, StatusCode::OK);
    let listed = sessions_of(&app, &laptop).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["sid"], json!(laptop_sid));
    let (laptop, _) = app.refresh_pair(&laptop_refresh).await;
    // Ended already, unknown, or not a session id at all: 404.
    for sid in [phone_sid.clone(), "nope".to_string(), "x".repeat(65)] {
        let res = delete(&app, &format!("/users/me/sessions/{sid}"), &laptop, None).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{sid}");
    }
    // Ending one's own current session works like a logout.
    let res = delete(
        &app,
        &format!("/users/me/sessions/{laptop_sid}"),
        &laptop,
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(verify_status(&app, &laptop).await, StatusCode::UNAUTHORIZED);
    // Without a token: 401.
    let res = app
        .http
        .get(app.url("/users/me/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

async fn another_users_session_is_not_found(mode: Mode) {
    let app = spawn_app_with(mode, |_| {}).await;
    let alice = app.new_session().await;
    let mallory = app.new_session().await;
    let alice_sid = claims(&alice.access)["sid"].as_str().unwrap().to_string();
    // Parallel tries answer alike, and none ends Alice's session.
    let path = format!("/users/me/sessions/{alice_sid}");
    let tries = (0..4).map(|_| delete(&app, &path, &mallory.access, None));
    for res in join_all(tries).await {
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(error_code(res).await, "not_found");
    }
    assert!(sessions_of(&app, &mallory.access)
        .await
        .iter()
        .all(|s| s["sid"] != json!(alice_sid)));
    assert_eq!(verify_status(&app, &alice.access).await, StatusCode::OK);
    assert_eq!(app.refresh(&alice.refresh).await.status(), StatusCode::OK);
}

/// `tokend users …` of the binary against the stores of a running production-mode app.
fn tokend_users(env: &HashMap<String, String>, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .env("TOKEND_LOG", "warn")
        .arg("users")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_commands_list_show_verify_and_delete() {
    let app = spawn_app_with(Mode::Production, |env| {
        env.insert("TOKEND_BOOTSTRAP_ADMIN_EMAIL".into(), ADMIN_EMAIL.into());
        env.insert(
            "TOKEND_BOOTSTRAP_ADMIN_PASSWORD".into(),
            ADMIN_PASSWORD.into(),
        );
    })
    .await;
    let mut env = app.env.clone();
    env.insert("TOKEND_ADMIN_EMAILS".into(), "boss@example.com".into());
    let admin = admin_token(&app).await;
    let boss = app.register("boss", "boss@example.com", PASSWORD).await;
    let boss: Value = boss.json().await.unwrap();
    let carol = app.register("carol", "carol@example.com", PASSWORD).await;
    let carol: Value = carol.json().await.unwrap();
    let (carol_access, carol_refresh) = app.login_pair("carol@example.com", PASSWORD).await;

    // list: paged, as JSON.
    let (ok, out, err) = tokend_users(&env, &["list", "--json", "--limit", "2"]);
    assert!(ok, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["users"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap().to_string();
    let (ok, out, _) = tokend_users(&env, &["list", "--json", "--after", &next]);
    assert!(ok);
    let rest: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rest["users"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next"], Value::Null);
    let (ok, out, _) = tokend_users(&env, &["list"]);
    assert!(ok && out.contains("carol") && out.contains("boss"), "{out}");
    assert!(!out.contains("password_hash") && !out.contains("$argon2"));

    // show: by email or id, never a hash.
    let (ok, out, _) = tokend_users(&env, &["show", "carol@example.com", "--json"]);
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown, carol);
    let (ok, out, _) = tokend_users(&env, &["show", carol["id"].as_str().unwrap()]);
    assert!(
        ok && out.contains("carol@example.com") && !out.contains("argon2"),
        "{out}"
    );
    let (ok, _, err) = tokend_users(&env, &["show", "nobody@example.com"]);
    assert!(!ok && err.contains("no user"), "{err}");

    // verify-email: the address is verified; one in TOKEND_ADMIN_EMAILS earns admin.
    let (ok, out, err) = tokend_users(&env, &["verify-email", "boss@example.com"]);
    assert!(ok && out.contains("admin"), "{out}{err}");
    let (ok, out, _) = tokend_users(&env, &["verify-email", "boss@example.com"]);
    assert!(ok && out.contains("already"), "{out}");
    let (boss_access, _) = app.login_pair("boss@example.com", PASSWORD).await;
    let me: Value = app
        .get_bearer("/users/me", &boss_access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["email_verified"], json!(true));
    assert!(me["roles"].as_array().unwrap().contains(&json!("admin")));
    let (ok, _, _) = tokend_users(&env, &["verify-email", "carol@example.com"]);
    assert!(ok);
    let me: Value = app
        .get_bearer("/users/me", &carol_access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["email_verified"], json!(true));
    assert_eq!(me["roles"], json!(["user"]));

    // delete: as the admin endpoint does.
    let (ok, out, err) = tokend_users(&env, &["delete", "carol@example.com"]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        verify_status(&app, &carol_access).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(&carol_refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (ok, _, err) = tokend_users(&env, &["delete", carol["id"].as_str().unwrap()]);
    assert!(!ok && err.contains("no user"), "{err}");

    // What the commands did is in the events, by user id.
    let events: Value = app
        .get_bearer("/admin/events?type=account.deleted", &admin)
        .await
        .json()
        .await
        .unwrap();
    let deleted = &events["events"].as_array().unwrap()[0];
    assert_eq!(deleted["user_id"], carol["id"]);
    assert_eq!(deleted["detail"]["by"], json!("operator"));
    let verified: Value = app
        .get_bearer(
            &format!(
                "/admin/events?type=email.verified&user_id={}",
                boss["id"].as_str().unwrap()
            ),
            &admin,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        verified["events"][0]["detail"]["granted_admin"],
        json!(true)
    );
    // In embedded mode the command says what to do instead.
    let (embedded_env, _dir) = test_env(Mode::Embedded);
    let (ok, _, err) = tokend_users(&embedded_env, &["list"]);
    assert!(!ok && err.contains("production mode"), "{err}");
}
