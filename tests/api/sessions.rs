//! Sessions: refresh families, rotation, reuse detection and revocation (docs/sessions.md).

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{claims, error_code, spawn_app, spawn_app_with, Mode};
use crate::in_both_modes;

in_both_modes!(
    a_refresh_rotates_the_pair,
    reuse_after_the_leeway_revokes_the_family_and_its_access_tokens,
    reuse_inside_the_leeway_returns_the_identical_successor,
    fifty_concurrent_refreshes_yield_one_successor,
    logout_revokes_that_token_and_its_family_only,
    logout_all_revokes_every_session_of_the_user_only,
    a_family_ends_at_the_session_ttl_whatever_happens,
    an_idle_refresh_token_expires,
    a_revoked_family_stays_revoked,
);

pub(crate) async fn a_refresh_rotates_the_pair(mode: Mode) {
    let app = spawn_app(mode).await;
    let s = app.new_session().await;
    let res = app.refresh(&s.refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    let access = body["access_token"].as_str().unwrap();
    let refresh = body["refresh_token"].as_str().unwrap();
    let (a0, r0, a1, r1) = (
        claims(&s.access),
        claims(&s.refresh),
        claims(access),
        claims(refresh),
    );
    assert_eq!(a1["sid"], a0["sid"]);
    assert_eq!(r1["sid"], r0["sid"]);
    assert_ne!(r1["jti"], r0["jti"]);
    assert_ne!(a1["jti"], a0["jti"]);
    assert_eq!(a1["fresh"], false);
    assert_eq!(a1["auth_time"], a0["auth_time"]);
    assert_eq!(r1["aud"], "http://tokend.test");
    assert_eq!(crate::helpers::header(refresh)["typ"], "rt+jwt");
    assert_eq!(
        app.get_bearer("/users/me", access).await.status(),
        StatusCode::OK
    );
    // The successor refreshes again.
    app.clock.advance(Duration::from_secs(5));
    let (_, r2) = app.refresh_pair(refresh).await;
    assert_ne!(claims(&r2)["jti"], r1["jti"]);
}

pub(crate) async fn reuse_after_the_leeway_revokes_the_family_and_its_access_tokens(mode: Mode) {
    let app = spawn_app(mode).await;
    let s = app.new_session().await;
    let other_device = app.login_pair(&s.email, &s.password).await;
    let (a1, r1) = app.refresh_pair(&s.refresh).await;
    app.clock.advance(Duration::from_secs(3));
    let res = app.refresh(&s.refresh).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(res).await, "invalid_grant");
    // The whole family is gone: the live successor and every access token of it.
    assert_eq!(app.refresh(&r1).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.get_bearer("/users/me", &a1).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get_bearer("/users/me", &s.access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Another device of the same user is untouched.
    assert_eq!(
        app.get_bearer("/users/me", &other_device.0).await.status(),
        StatusCode::OK
    );
    app.refresh_pair(&other_device.1).await;
}

pub(crate) async fn reuse_inside_the_leeway_returns_the_identical_successor(mode: Mode) {
    let app = spawn_app(mode).await;
    let s = app.new_session().await;
    let first = app.refresh_pair(&s.refresh).await;
    app.clock.advance(Duration::from_millis(1500));
    let second = app.refresh_pair(&s.refresh).await;
    assert_eq!(first, second, "the same successor pair, byte for byte");
    assert_eq!(
        app.get_bearer("/users/me", &first.0).await.status(),
        StatusCode::OK
    );
    app.refresh_pair(&first.1).await;
}

pub(crate) async fn fifty_concurrent_refreshes_yield_one_successor(mode: Mode) {
    let app = spawn_app(mode).await;
    let s = app.new_session().await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let http = app.http.clone();
        let url = app.url("/auth/token/refresh");
        let token = s.refresh.clone();
        tasks.push(tokio::spawn(async move {
            let res = http.post(url).bearer_auth(token).send().await.unwrap();
            let status = res.status();
            let body: Value = res.json().await.unwrap();
            (status, body)
        }));
    }
    let mut successors = HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        successors.insert(claims(body["refresh_token"].as_str().unwrap())["jti"].to_string());
    }
    assert_eq!(
        successors.len(),
        1,
        "one successor, never two live branches"
    );
}

pub(crate) async fn logout_revokes_that_token_and_its_family_only(mode: Mode) {
    let app = spawn_app(mode).await;
    let s = app.new_session().await;
    let laptop = app.login_pair(&s.email, &s.password).await;
    let bystander = app.new_session().await;
    let res = app.post_bearer("/auth/logout", &s.access).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get_bearer("/users/me", &s.access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(&s.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.post_bearer("/auth/logout", &s.access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get_bearer("/users/me", &laptop.0).await.status(),
        StatusCode::OK
    );
    app.refresh_pair(&laptop.1).await;
    assert_eq!(
        app.get_bearer("/users/me", &bystander.access)
            .await
            .status(),
        StatusCode::OK
    );
}

pub(crate) async fn logout_all_revokes_every_session_of_the_user_only(mode: Mode) {
    let app = spawn_app(mode).await;
    let s = app.new_session().await;
    let laptop = app.login_pair(&s.email, &s.password).await;
    let (refreshed_access, refreshed_refresh) = app.refresh_pair(&laptop.1).await;
    let bystander = app.new_session().await;
    let res = app.post_bearer("/auth/logout/all", &s.access).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for t in [&s.access, &laptop.0, &refreshed_access] {
        assert_eq!(
            app.get_bearer("/users/me", t).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    for t in [&s.refresh, &refreshed_refresh] {
        assert_eq!(app.refresh(t).await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        app.get_bearer("/users/me", &bystander.access)
            .await
            .status(),
        StatusCode::OK
    );
    app.refresh_pair(&bystander.refresh).await;
    // Logging in again afterwards works.
    let (again, _) = app.login_pair(&s.email, &s.password).await;
    assert_eq!(
        app.get_bearer("/users/me", &again).await.status(),
        StatusCode::OK
    );
}

pub(crate) async fn a_family_ends_at_the_session_ttl_whatever_happens(mode: Mode) {
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_REFRESH_TTL".into(), "1h".into());
        env.insert("TOKEND_SESSION_TTL".into(), "2h".into());
    })
    .await;
    let s = app.new_session().await;
    let mut refresh = s.refresh.clone();
    for _ in 0..3 {
        app.clock.advance(Duration::from_secs(50 * 60));
        let r = app.refresh(&refresh).await;
        if r.status() != StatusCode::OK {
            // The third refresh lands past 2 h.
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            return;
        }
        let body: Value = r.json().await.unwrap();
        refresh = body["refresh_token"].as_str().unwrap().to_string();
        let exp = claims(&refresh)["exp"].as_i64().unwrap();
        let login = claims(&s.refresh)["iat"].as_i64().unwrap();
        assert!(exp <= login + 7200, "refresh exp capped by the session end");
    }
    panic!("the family outlived its session TTL");
}

pub(crate) async fn an_idle_refresh_token_expires(mode: Mode) {
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_REFRESH_TTL".into(), "1h".into());
    })
    .await;
    let s = app.new_session().await;
    app.clock.advance(Duration::from_secs(3600 + 31));
    let res = app.refresh(&s.refresh).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(res).await, "invalid_grant");
}

pub(crate) async fn a_revoked_family_stays_revoked(mode: Mode) {
    let app = spawn_app(mode).await;
    let s = app.new_session().await;
    let (a1, r1) = app.refresh_pair(&s.refresh).await;
    app.post_bearer("/auth/logout", &a1).await;
    for _ in 0..3 {
        assert_eq!(app.refresh(&r1).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            app.refresh(&s.refresh).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_redis_key_tokend_writes_has_a_ttl() {
    every_key_written_has_a_ttl().await;
}

/// The body of the test above, on whichever Redis `services::redis_url` names.
pub(crate) async fn every_key_written_has_a_ttl() {
    let app = spawn_app(Mode::Production).await;
    let s = app.new_session().await;
    let (a1, r1) = app.refresh_pair(&s.refresh).await;
    app.refresh_pair(&r1).await;
    app.clock.advance(Duration::from_secs(5));
    let _ = app.refresh(&s.refresh).await; // reuse: revokes the family
    let t = app.new_session().await;
    app.post_bearer("/auth/logout", &t.access).await;
    let u = app.new_session().await;
    app.post_bearer("/auth/logout/all", &u.access).await;
    let _ = a1;
    let prefix = app.env["TOKEND_REDIS_PREFIX"].clone();
    let keys = crate::services::redis_keys(&crate::services::redis_url(), &prefix).await;
    assert!(
        keys.len() >= 5,
        "expected records under {prefix}, found {keys:?}"
    );
    let without =
        crate::services::redis_keys_without_ttl(&crate::services::redis_url(), &prefix).await;
    assert!(without.is_empty(), "keys without TTL: {without:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_protected_routes_answer_503_then_recover() {
    let mut redis = crate::services::OwnedRedis::start().await;
    let url = redis.url();
    let app = spawn_app_with(Mode::Production, move |env| {
        env.insert("TOKEND_REDIS_URL".into(), url);
    })
    .await;
    let s = app.new_session().await;
    assert_eq!(
        app.get_bearer("/users/me", &s.access).await.status(),
        StatusCode::OK
    );

    redis.stop().await;
    for _ in 0..3 {
        for res in [
            app.get_bearer("/users/me", &s.access).await,
            app.get_bearer("/auth/verify", &s.access).await,
            app.refresh(&s.refresh).await,
            app.post_bearer("/auth/logout", &s.access).await,
            app.login(&s.email, &s.password).await,
        ] {
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(error_code(res).await, "temporarily_unavailable");
        }
    }
    // A token that could not be checked was never accepted; once Redis is back (empty: it was
    // restarted without persistence) the same tokens work again without restarting tokend.
    redis.start_again().await;
    let mut recovered = false;
    for _ in 0..100 {
        let res = app.get_bearer("/users/me", &s.access).await;
        match res.status() {
            StatusCode::OK => {
                recovered = true;
                break;
            }
            StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("unexpected {other} while Redis comes back"),
        }
    }
    assert!(recovered, "tokend did not recover after Redis came back");
    let (a, _) = app.login_pair(&s.email, &s.password).await;
    assert_eq!(
        app.get_bearer("/users/me", &a).await.status(),
        StatusCode::OK
    );
}
