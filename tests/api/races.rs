//! Races, each run many times in both modes (docs/api.md, §6): many clients refreshing one token,
//! many registrations of one name, logout and logout-all racing refreshes of the same family.
//! In production mode the racing requests are split over two instances sharing the stores.
//!
//! Invariants checked on every run:
//! - at most one successor: every 200 for one refresh token carries the same pair;
//! - one name, one account: exactly one 201, every other answer 409;
//! - after a logout (or logout-all) has answered, no refresh of that family succeeds, and every
//!   pair a racing refresh returned is dead (its access token 401, its refresh token 401).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{claims, instances, Mode, TestApp};
use crate::in_both_modes;
use crate::services;

/// How many times each race runs.
const RUNS: usize = 20;
/// How many requests race in each run.
const RACERS: usize = 16;

/// Sends `POST path` with a bearer token; returns the status and the JSON body.
async fn post_bearer(app: &TestApp, path: &str, token: &str) -> (StatusCode, Value) {
    let res = app
        .http
        .post(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

in_both_modes!(
    many_clients_refreshing_one_token_get_one_successor,
    racing_registrations_of_one_name_create_one_account,
    logout_racing_refreshes_leaves_nothing_alive,
    logout_all_racing_refreshes_leaves_nothing_alive,
);

async fn many_clients_refreshing_one_token_get_one_successor(mode: Mode) {
    let apps = Arc::new(
        instances(mode, |env| {
            env.insert("TOKEND_RATE_LIMIT".into(), "off".into());
        })
        .await,
    );
    for run in 0..RUNS {
        let s = apps[0].new_session().await;
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let (apps, token) = (apps.clone(), s.refresh.clone());
                tokio::spawn(async move {
                    post_bearer(&apps[i % apps.len()], "/auth/token/refresh", &token).await
                })
            })
            .collect();
        let mut successors = HashSet::new();
        for t in tasks {
            let (status, body) = t.await.unwrap();
            assert_eq!(status, StatusCode::OK, "run {run}: {body}");
            successors.insert((
                body["access_token"].as_str().unwrap().to_string(),
                body["refresh_token"].as_str().unwrap().to_string(),
            ));
        }
        assert_eq!(successors.len(), 1, "run {run}: {successors:?}");
        // The one successor carries the family on, on every instance.
        let (access, refresh) = successors.into_iter().next().unwrap();
        assert_eq!(claims(&refresh)["sid"], claims(&s.refresh)["sid"]);
        for app in apps.iter() {
            assert_eq!(
                app.get_bearer("/users/me", &access).await.status(),
                StatusCode::OK
            );
        }
        apps[apps.len() - 1].refresh_pair(&refresh).await;
    }
}

async fn racing_registrations_of_one_name_create_one_account(mode: Mode) {
    let apps = Arc::new(
        instances(mode, |env| {
            env.insert("TOKEND_RATE_LIMIT".into(), "off".into());
        })
        .await,
    );
    for run in 0..RUNS {
        let base = services::unique_name("r").replace('-', "")[..16].to_string();
        // One username in different cases with different emails, then one email with
        // different usernames.
        for same in ["username", "email"] {
            let tasks: Vec<_> = (0..RACERS)
                .map(|i| {
                    let apps = apps.clone();
                    let (username, email) = if same == "username" {
                        let name = if i % 2 == 0 {
                            base.to_uppercase()
                        } else {
                            base.clone()
                        };
                        (name, format!("{base}.{i}@example.com"))
                    } else {
                        (format!("{base}_{i}"), format!("{base}@example.com"))
                    };
                    tokio::spawn(async move {
                        apps[i % apps.len()]
                            .register(&username, &email, "correct horse battery")
                            .await
                            .status()
                    })
                })
                .collect();
            let mut statuses = Vec::new();
            for t in tasks {
                statuses.push(t.await.unwrap().as_u16());
            }
            let created = statuses.iter().filter(|s| **s == 201).count();
            let conflicts = statuses.iter().filter(|s| **s == 409).count();
            assert_eq!(
                (created, conflicts),
                (1, RACERS - 1),
                "run {run}, same {same}: {statuses:?}"
            );
        }
    }
}

/// Races a revocation (`POST revoke_path` with an access token of the user) against refreshes
/// of `victims` (refresh tokens of the user's families), then checks that nothing of those
/// families is alive.
async fn revocation_racing_refreshes(
    apps: &Arc<Vec<TestApp>>,
    run: usize,
    revoke_path: &'static str,
    access: String,
    victims: Vec<String>,
) {
    let revoked = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let (racers, flag) = (apps.clone(), revoked.clone());
        let token = victims[i % victims.len()].clone();
        tasks.push(tokio::spawn(async move {
            let after = flag.load(Ordering::SeqCst);
            let (status, body) =
                post_bearer(&racers[i % racers.len()], "/auth/token/refresh", &token).await;
            (after, status, body)
        }));
        if i == RACERS / 2 {
            let (apps, revoked, access) = (apps.clone(), revoked.clone(), access.clone());
            tasks.push(tokio::spawn(async move {
                let (status, body) = post_bearer(&apps[apps.len() - 1], revoke_path, &access).await;
                assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
                revoked.store(true, Ordering::SeqCst);
                (false, status, body)
            }));
        }
    }
    let mut pairs = Vec::new();
    for t in tasks {
        let (sent_after_revocation, status, body) = t.await.unwrap();
        match status {
            StatusCode::NO_CONTENT => {}
            StatusCode::OK => {
                assert!(
                    !sent_after_revocation,
                    "run {run}: a refresh sent after {revoke_path} answered succeeded"
                );
                pairs.push((
                    body["access_token"].as_str().unwrap().to_string(),
                    body["refresh_token"].as_str().unwrap().to_string(),
                ));
            }
            StatusCode::UNAUTHORIZED => assert_eq!(body["error"], "invalid_grant"),
            other => panic!("run {run}: refresh answered {other}: {body}"),
        }
    }
    eprintln!(
        "run {run}: {} refreshes won the race against {revoke_path}",
        pairs.len()
    );
    // At most one successor per family.
    let mut per_family: std::collections::HashMap<String, HashSet<String>> = Default::default();
    for (_, r) in &pairs {
        per_family
            .entry(claims(r)["sid"].as_str().unwrap().to_string())
            .or_default()
            .insert(r.clone());
    }
    assert!(
        per_family.values().all(|s| s.len() == 1),
        "run {run}: {per_family:?}"
    );
    // Nothing of the revoked families is alive, on any instance.
    for app in apps.iter() {
        for (a, r) in &pairs {
            assert_eq!(
                app.get_bearer("/users/me", a).await.status(),
                StatusCode::UNAUTHORIZED,
                "run {run}: an access token minted in the race survived {revoke_path}"
            );
            assert_eq!(app.refresh(r).await.status(), StatusCode::UNAUTHORIZED);
        }
        for r in &victims {
            assert_eq!(app.refresh(r).await.status(), StatusCode::UNAUTHORIZED);
        }
        assert_eq!(
            app.get_bearer("/users/me", &access).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

async fn logout_racing_refreshes_leaves_nothing_alive(mode: Mode) {
    let apps = Arc::new(
        instances(mode, |env| {
            env.insert("TOKEND_RATE_LIMIT".into(), "off".into());
        })
        .await,
    );
    for run in 0..RUNS {
        let s = apps[0].new_session().await;
        let bystander = apps[0].login_pair(&s.email, &s.password).await;
        revocation_racing_refreshes(
            &apps,
            run,
            "/auth/logout",
            s.access.clone(),
            vec![s.refresh.clone()],
        )
        .await;
        // Another session of the same user is untouched by a single logout.
        assert_eq!(
            apps[0].get_bearer("/users/me", &bystander.0).await.status(),
            StatusCode::OK
        );
        apps[apps.len() - 1].refresh_pair(&bystander.1).await;
    }
}

async fn logout_all_racing_refreshes_leaves_nothing_alive(mode: Mode) {
    let apps = Arc::new(
        instances(mode, |env| {
            env.insert("TOKEND_RATE_LIMIT".into(), "off".into());
        })
        .await,
    );
    for run in 0..RUNS {
        let s = apps[0].new_session().await;
        let second = apps[apps.len() - 1].login_pair(&s.email, &s.password).await;
        revocation_racing_refreshes(
            &apps,
            run,
            "/auth/logout/all",
            s.access.clone(),
            vec![s.refresh.clone(), second.1.clone()],
        )
        .await;
        assert_eq!(
            apps[0].get_bearer("/users/me", &second.0).await.status(),
            StatusCode::UNAUTHORIZED
        );
        // The user can log in again afterwards.
        let res = apps[0]
            .post_json(
                "/auth/login",
                &json!({"email": s.email, "password": s.password}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
    }
}
