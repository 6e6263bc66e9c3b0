//! Redis Cluster: the sessions suite (docs/sessions.md) on a real three-master cluster made with
//! `redis-cli --cluster create`, through `TOKEND_REDIS_URL=redis+cluster://h1:p1,h2:p2,h3:p3`.
//!
//! The bodies are the ones of `sessions.rs`, run with `services::redis_url` answering the
//! cluster's URL, so every key they touch is spread over three nodes and any command or script
//! spanning two hash slots fails with CROSSSLOT.

use reqwest::StatusCode;

use crate::helpers::{spawn_app_with, Mode};
use crate::services::{self, with_redis_url};
use crate::sessions;

/// One test per sessions body, each against the cluster.
macro_rules! on_a_cluster {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let cluster = services::redis_cluster().await;
            with_redis_url(cluster.url(), sessions::$name(Mode::Production)).await;
        }
    )*};
}

on_a_cluster!(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_written_to_a_cluster_has_a_ttl() {
    let cluster = services::redis_cluster().await;
    with_redis_url(cluster.url(), sessions::every_key_written_has_a_ttl()).await;
}

/// The records of many users land on every master, and everything still works: logout-all
/// reaches families in other slots than the user's index, rate limits and the rotation lease
/// work, and no key lacks a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_spread_over_every_master_and_logout_all_reaches_them() {
    let cluster = services::redis_cluster().await;
    let url = cluster.url();
    let app = with_redis_url(
        url.clone(),
        spawn_app_with(Mode::Production, |env| {
            env.insert("TOKEND_RATE_LIMIT_ACCOUNT".into(), "1000/min".into());
        }),
    )
    .await;
    assert!(
        app.env["TOKEND_REDIS_URL"].starts_with("redis+cluster://"),
        "{:?}",
        app.env["TOKEND_REDIS_URL"]
    );
    let s = app.new_session().await;
    let mut devices = Vec::new();
    for _ in 0..12 {
        devices.push(app.login_pair(&s.email, &s.password).await);
    }
    for _ in 0..8 {
        let other = app.new_session().await;
        app.refresh_pair(&other.refresh).await;
    }
    // A key rotation goes through the lease, in its own slot.
    let rotated = app.state.published.keys().rotate_now(None).await.unwrap();
    assert!(!rotated.is_empty());

    let prefix = app.env["TOKEND_REDIS_PREFIX"].clone();
    let masters = services::cluster_masters(&url).await;
    assert_eq!(masters.len(), 3, "{masters:?}");
    let mut holding = 0;
    for node in &masters {
        if !services::redis_keys(node, &prefix).await.is_empty() {
            holding += 1;
        }
    }
    assert_eq!(holding, 3, "records of {prefix} are not on every master");

    let res = app.post_bearer("/auth/logout/all", &s.access).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for (access, refresh) in &devices {
        assert_eq!(
            app.get_bearer("/users/me", access).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            app.refresh(refresh).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let without = services::redis_keys_without_ttl(&url, &prefix).await;
    assert!(without.is_empty(), "keys without TTL: {without:?}");
}
