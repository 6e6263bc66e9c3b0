//! The store contract: one suite, written once against the traits, run for the memory stores
//! (embedded mode) and for MongoDB and Redis (production mode).

// Contract functions are test code, though not `#[test]` functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokend::clock::{Clock, ManualClock, SharedClock, SystemClock};
use tokend::store::memory::{
    MemoryAuthorize, MemoryClients, MemoryConsents, MemoryEvents, MemoryLease, MemoryMail,
    MemorySessions, MemoryUsers,
};
use tokend::store::redis::RedisStore;
use tokend::store::{
    access_jti_of, AccessStatus, AuthorizeStore, ClientMetadata, ClientRecord, ClientStore,
    ConsentRecord, ConsentStore, EventQuery, EventRecord, EventStore, Expected, FamilyMarks,
    FamilyStarted, LeaseStore, MailStore, MailToken, NewFamily, OutgoingMail, Redemption,
    RegistrationRecord, RotateOutcome, RotateRequest, SessionStore, StoreError, UserClaims,
    UserMarks, UserRecord, UserStore,
};

use crate::services;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A `jti` as tokend makes them: 128 random bits, base64url.
fn new_jti() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}

/// A family id for `user` as tokend makes them (it names the user).
fn new_sid(user: &str) -> String {
    tokend::store::family_sid(&new_jti()[..8], user)
}

fn user(id: &str, username: &str, email: &str) -> UserRecord {
    UserRecord {
        id: id.to_string(),
        username: username.to_string(),
        email: email.to_string(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_string(),
        roles: vec!["user".to_string()],
        email_verified: false,
        credentials_version: 0,
        created_at: 1_700_000_000_000,
        updated_at: 1_700_000_000_000,
    }
}

fn client(id: &str) -> ClientRecord {
    ClientRecord {
        client_id: id.to_string(),
        secret_sha256: Some("ab".repeat(32)),
        grant_types: vec!["client_credentials".into(), "refresh_token".into()],
        scopes: vec!["read".into(), "write".into()],
        alg: Some("EdDSA".into()),
        created_at: 1_700_000_000_000,
        // Every stored client round-trips its browser sign-in metadata.
        meta: ClientMetadata {
            redirect_uris: vec![
                "https://app.example/cb".into(),
                "com.example.app:/cb".into(),
            ],
            post_logout_redirect_uris: vec!["https://app.example/bye".into()],
            first_party: true,
            client_name: Some("Example «app»".into()),
            token_endpoint_auth_method: Some("client_secret_basic".into()),
            id_token_signed_response_alg: Some("RS256".into()),
            require_pushed_authorization_requests: true,
            dpop_bound_access_tokens: true,
            jwks: None,
            jwks_uri: None,
            token_endpoint_auth_signing_alg: None,
            token_exchange_audiences: vec!["orders-api".into(), "https://orders.example/".into()],
            resources: vec!["https://api.example/".into()],
        },
        registration: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------

async fn users_can_be_found_by_id_email_and_username(users: &dyn UserStore) {
    let alice = user("u-1", "Alice", "alice@example.com");
    users.insert(&alice).await.unwrap();
    assert_eq!(users.by_id("u-1").await.unwrap(), Some(alice.clone()));
    assert_eq!(
        users.by_email("alice@example.com").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(
        users.by_username("aLiCe").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(users.by_id("u-2").await.unwrap(), None);
    assert_eq!(users.by_email("bob@example.com").await.unwrap(), None);
    assert_eq!(users.by_username("bob").await.unwrap(), None);
    users.ping().await.unwrap();
}

async fn emails_are_unique(users: &dyn UserStore) {
    users
        .insert(&user("u-1", "alice", "alice@example.com"))
        .await
        .unwrap();
    let err = users
        .insert(&user("u-2", "bob", "alice@example.com"))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::Duplicate("email"));
    assert_eq!(users.by_id("u-2").await.unwrap(), None);
}

async fn usernames_are_unique_ignoring_case(users: &dyn UserStore) {
    users
        .insert(&user("u-1", "Alice", "alice@example.com"))
        .await
        .unwrap();
    let err = users
        .insert(&user("u-2", "aLICE", "other@example.com"))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::Duplicate("username"));
    assert_eq!(users.by_id("u-2").await.unwrap(), None);
}

async fn renaming_onto_a_taken_username_is_refused(users: &dyn UserStore) {
    users
        .insert(&user("u-1", "alice", "alice@example.com"))
        .await
        .unwrap();
    users
        .insert(&user("u-2", "bob", "bob@example.com"))
        .await
        .unwrap();
    let err = users.update_username("u-2", "ALICE", 5).await.unwrap_err();
    assert_eq!(err, StoreError::Duplicate("username"));
    assert_eq!(users.by_id("u-2").await.unwrap().unwrap().username, "bob");

    // A new case of one's own name is fine, and frees nothing.
    let renamed = users
        .update_username("u-1", "Alice", 7)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (renamed.username.as_str(), renamed.updated_at),
        ("Alice", 7)
    );
    // A free name moves, and the old one becomes free.
    let renamed = users
        .update_username("u-2", "Robert", 9)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.username, "Robert");
    assert_eq!(
        users.by_username("robert").await.unwrap().unwrap().id,
        "u-2"
    );
    assert_eq!(users.by_username("bob").await.unwrap(), None);
    users
        .insert(&user("u-3", "BOB", "bob2@example.com"))
        .await
        .unwrap();
    assert_eq!(users.update_username("nobody", "x", 1).await.unwrap(), None);
}

async fn password_hashes_and_roles_can_be_replaced(users: &dyn UserStore) {
    users
        .insert(&user("u-1", "alice", "alice@example.com"))
        .await
        .unwrap();
    let written = users
        .update_password_hash("u-1", "$argon2id$new", 11, &version(0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        users
            .update_password_hash("nobody", "$argon2id$new", 11, &Expected::default())
            .await
            .unwrap(),
        None
    );
    // Decided on version 0, which the write above replaced: does not land.
    assert_eq!(
        users
            .update_password_hash("u-1", "$argon2id$stale", 11, &version(0))
            .await
            .unwrap(),
        None
    );
    // Decided for another address: does not land either.
    let elsewhere = Expected {
        credentials_version: None,
        email: Some("alice@elsewhere.example".into()),
    };
    assert_eq!(
        users
            .update_password_hash("u-1", "$argon2id$stale", 11, &elsewhere)
            .await
            .unwrap(),
        None
    );
    let u = users.by_id("u-1").await.unwrap().unwrap();
    assert_eq!(u, written);
    // Each credential write raises the credentials version by one.
    assert_eq!(
        (
            u.password_hash.as_str(),
            u.updated_at,
            u.credentials_version
        ),
        ("$argon2id$new", 11, 1)
    );

    let roles = vec!["user".to_string(), "admin".to_string()];
    let u = users.set_roles("u-1", &roles, 12).await.unwrap().unwrap();
    assert_eq!(
        (u.roles.clone(), u.updated_at, u.credentials_version),
        (roles.clone(), 12, 2)
    );
    assert_eq!(users.by_id("u-1").await.unwrap().unwrap().roles, roles);
    assert_eq!(users.set_roles("nobody", &roles, 12).await.unwrap(), None);
}

async fn users_are_listed_by_id_a_page_at_a_time(users: &dyn UserStore) {
    for i in [3, 1, 5, 2, 4] {
        users
            .insert(&user(
                &format!("u-{i}"),
                &format!("user{i}"),
                &format!("u{i}@example.com"),
            ))
            .await
            .unwrap();
    }
    let ids = |page: Vec<UserRecord>| page.into_iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(ids(users.list(None, 2).await.unwrap()), ["u-1", "u-2"]);
    assert_eq!(
        ids(users.list(Some("u-2"), 2).await.unwrap()),
        ["u-3", "u-4"]
    );
    assert_eq!(ids(users.list(Some("u-4"), 10).await.unwrap()), ["u-5"]);
    assert!(users.list(Some("u-5"), 10).await.unwrap().is_empty());
    assert!(users.list(None, 0).await.unwrap().is_empty());
}

async fn a_deleted_user_is_gone_and_frees_its_names(users: &dyn UserStore) {
    users
        .insert(&user("u-1", "Alice", "alice@example.com"))
        .await
        .unwrap();
    users
        .insert(&user("u-2", "bob", "bob@example.com"))
        .await
        .unwrap();
    assert!(users.delete("u-1").await.unwrap());
    assert!(!users.delete("u-1").await.unwrap());
    assert_eq!(users.by_id("u-1").await.unwrap(), None);
    assert_eq!(users.by_email("alice@example.com").await.unwrap(), None);
    assert_eq!(users.by_username("alice").await.unwrap(), None);
    // Its email and username can be taken again; the other user is untouched.
    users
        .insert(&user("u-3", "ALICE", "alice@example.com"))
        .await
        .unwrap();
    assert_eq!(users.by_username("Alice").await.unwrap().unwrap().id, "u-3");
    assert_eq!(users.by_id("u-2").await.unwrap().unwrap().username, "bob");
}

async fn an_email_change_moves_the_address_verified_unless_it_is_taken(users: &dyn UserStore) {
    users
        .insert(&user("u-1", "alice", "alice@example.com"))
        .await
        .unwrap();
    users
        .insert(&user("u-2", "bob", "bob@example.com"))
        .await
        .unwrap();
    // Onto an address another user holds: refused, nothing changed.
    let err = users
        .change_email(
            "u-1",
            "bob@example.com",
            false,
            1_800_000_000_000,
            &Expected::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::Duplicate("email"));
    assert_eq!(
        users.by_id("u-1").await.unwrap().unwrap().email,
        "alice@example.com"
    );
    assert_eq!(
        users.by_email("bob@example.com").await.unwrap().unwrap().id,
        "u-2"
    );
    // Asked for under another credentials version: nothing changes.
    assert_eq!(
        users
            .change_email("u-1", "alice@new.example", true, 1, &version(3))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        users.by_id("u-1").await.unwrap().unwrap().email,
        "alice@example.com"
    );
    // Onto a free one: moved, verified, admin added when asked; the old address is free.
    let changed = users
        .change_email(
            "u-1",
            "alice@new.example",
            true,
            1_800_000_000_000,
            &version(0),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.email, "alice@new.example");
    assert!(changed.email_verified);
    assert_eq!(changed.roles, ["user", "admin"]);
    assert_eq!(changed.updated_at, 1_800_000_000_000);
    assert_eq!(changed.credentials_version, 0, "not a credential change");
    assert_eq!(
        users.by_email("alice@new.example").await.unwrap(),
        Some(changed)
    );
    assert_eq!(users.by_email("alice@example.com").await.unwrap(), None);
    users
        .insert(&user("u-3", "carol", "alice@example.com"))
        .await
        .unwrap();
    // An unknown user: nothing.
    assert_eq!(
        users
            .change_email("u-9", "nobody@example.com", false, 1, &Expected::default())
            .await
            .unwrap(),
        None
    );
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

async fn clients_can_be_inserted_fetched_listed_and_deleted(clients: &dyn ClientStore) {
    let b = client("b-client");
    let a = ClientRecord {
        secret_sha256: None,
        alg: None,
        ..client("a-public")
    };
    clients.insert(&b).await.unwrap();
    clients.insert(&a).await.unwrap();
    assert_eq!(clients.get("b-client").await.unwrap(), Some(b.clone()));
    assert_eq!(clients.get("a-public").await.unwrap(), Some(a.clone()));
    assert_eq!(clients.get("nope").await.unwrap(), None);
    assert_eq!(clients.list().await.unwrap(), vec![a.clone(), b.clone()]);
    assert!(clients.delete("a-public").await.unwrap());
    assert!(!clients.delete("a-public").await.unwrap());
    assert_eq!(clients.get("a-public").await.unwrap(), None);
    assert_eq!(clients.list().await.unwrap(), vec![b]);
    clients.ping().await.unwrap();
}

/// A registered client keeps its registration record; `replace` rewrites an existing client in
/// one step and never creates one, so an update that loses a race with a delete cannot bring
/// the client back.
async fn clients_are_replaced_only_while_they_exist(clients: &dyn ClientStore) {
    let registered = ClientRecord {
        registration: Some(RegistrationRecord {
            access_token_sha256: "cd".repeat(32),
            allowed_scopes: vec!["api".into()],
            updated_at: 1_700_000_000_000,
        }),
        ..client("reg-1")
    };
    clients.insert(&registered).await.unwrap();
    assert_eq!(
        clients.get("reg-1").await.unwrap(),
        Some(registered.clone())
    );
    let changed = ClientRecord {
        scopes: vec!["openid".into()],
        meta: ClientMetadata {
            client_name: Some("Renamed".into()),
            ..registered.meta.clone()
        },
        ..registered.clone()
    };
    assert!(clients.replace(&changed).await.unwrap());
    assert_eq!(clients.get("reg-1").await.unwrap(), Some(changed.clone()));
    assert!(clients.delete("reg-1").await.unwrap());
    assert!(!clients.replace(&changed).await.unwrap());
    assert_eq!(clients.get("reg-1").await.unwrap(), None);
    assert!(!clients.replace(&client("never-there")).await.unwrap());
    assert_eq!(clients.get("never-there").await.unwrap(), None);
}

/// A `private_key_jwt` client keeps its keys as given: an inline JWK Set (a JSON document, in
/// MongoDB a sub-document) with every member, or its `jwks_uri`, and its signing algorithm
/// (docs/private_key_jwt.md).
async fn a_private_key_jwt_client_keeps_its_keys(clients: &dyn ClientStore) {
    let inline = ClientRecord {
        secret_sha256: None,
        meta: ClientMetadata {
            token_endpoint_auth_method: Some("private_key_jwt".into()),
            jwks: Some(serde_json::json!({"keys": [
                {"kty": "OKP", "crv": "Ed25519", "kid": "k-1", "use": "sig",
                 "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
                {"kty": "EC", "crv": "P-256", "kid": "k-2", "alg": "ES256",
                 "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                 "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
            ]})),
            token_endpoint_auth_signing_alg: Some("EdDSA".into()),
            ..client("pkjwt-inline").meta
        },
        ..client("pkjwt-inline")
    };
    let remote = ClientRecord {
        secret_sha256: None,
        meta: ClientMetadata {
            token_endpoint_auth_method: Some("private_key_jwt".into()),
            jwks_uri: Some("https://svc.example/.well-known/jwks.json".into()),
            ..client("pkjwt-remote").meta
        },
        ..client("pkjwt-remote")
    };
    clients.insert(&inline).await.unwrap();
    clients.insert(&remote).await.unwrap();
    let read = clients.get("pkjwt-inline").await.unwrap().unwrap();
    assert_eq!(read, inline);
    assert!(read.is_confidential() && read.uses_private_key_jwt());
    assert_eq!(
        clients.get("pkjwt-remote").await.unwrap(),
        Some(remote.clone())
    );
    // A rotation through an update replaces the set.
    let rotated = ClientRecord {
        meta: ClientMetadata {
            jwks: Some(serde_json::json!({"keys": [
                {"kty": "OKP", "crv": "Ed25519", "kid": "k-3",
                 "x": "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"}
            ]})),
            ..inline.meta.clone()
        },
        ..inline.clone()
    };
    assert!(clients.replace(&rotated).await.unwrap());
    assert_eq!(clients.get("pkjwt-inline").await.unwrap(), Some(rotated));
}

async fn client_ids_are_unique(clients: &dyn ClientStore) {
    clients.insert(&client("c1")).await.unwrap();
    let err = clients.insert(&client("c1")).await.unwrap_err();
    assert_eq!(err, StoreError::Duplicate("client_id"));
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

/// A family of `user` started at `now_ms`, with fresh ids.
fn family(user_id: &str, now_ms: i64) -> NewFamily {
    NewFamily {
        sid: new_sid(user_id),
        user_id: user_id.to_string(),
        client_id: "web".to_string(),
        refresh_jti: new_jti(),
        issued_at: now_ms / 1000,
        // Whole seconds, as tokend ends sessions.
        expires_at_ms: (now_ms / 1000) * 1000 + 30 * DAY_MS,
        started_at_ms: now_ms,
        ttl_ms: 14 * DAY_MS,
        revoked_ttl_ms: 14 * DAY_MS,
        credentials_version: 0,
        max_sessions: 100,
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0".to_string()),
        ip: Some("203.0.113.9".to_string()),
        expect: None,
    }
}

/// A copy of a user's claims at `version`.
fn claims_v(username: &str, roles: &[&str], version: i64) -> UserClaims {
    UserClaims {
        username: username.to_string(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        version,
    }
}

/// An exchange of `presented` in family `sid` at `now_ms`, for a fresh pair.
fn exchange(sid: &str, presented: &str, now_ms: i64, leeway_ms: i64) -> RotateRequest {
    RotateRequest {
        sid: sid.to_string(),
        presented_jti: presented.to_string(),
        new_refresh_jti: new_jti(),
        issued_at: now_ms / 1000,
        now_ms,
        leeway_ms,
        ttl_ms: 14 * DAY_MS,
        revoked_ttl_ms: 14 * DAY_MS,
        jkt: None,
    }
}

async fn a_started_family_reads_back(s: &dyn SessionStore, now: i64) {
    let f = family("user-1", now);
    s.start_family(&f).await.unwrap();
    let state = s.family(&f.sid).await.unwrap().unwrap();
    assert_eq!(state.user_id, "user-1");
    assert_eq!(state.client_id, "web");
    assert_eq!(state.current_refresh_jti, f.refresh_jti);
    assert_eq!(state.issued_at, f.issued_at);
    assert_eq!(state.expires_at_ms, f.expires_at_ms);
    assert!(!state.revoked);
    // What the tokens carry is not kept (docs/sessions.md, "The records").
    assert_eq!((state.auth_time, state.user), (0, None));
    let status = s
        .access_status(&access_jti_of(&f.refresh_jti), Some(&f.sid), "user-1")
        .await
        .unwrap();
    assert!(!status.jti_revoked && !status.revoked(Some(&f.sid)));
    assert_eq!(status.user, UserMarks::default());
    assert_eq!(status.family, Some(FamilyMarks::default()));
    // A plain check leaves the user's claims out; asked for, they come in the same read.
    assert_eq!(status.claims, None);
    let with_user = s
        .access_status_with_user(&access_jti_of(&f.refresh_jti), Some(&f.sid), "user-1")
        .await
        .unwrap();
    // No change of the user's claims recorded: none (the tokens carry them).
    assert_eq!(with_user.claims, None);
    assert_eq!(
        AccessStatus {
            claims: None,
            ..with_user
        },
        status
    );
    s.ping().await.unwrap();
}

async fn a_family_keeps_its_login_and_its_last_refresh(s: &dyn SessionStore, now: i64) {
    let f = family("user-ua", now);
    s.start_family(&f).await.unwrap();
    let state = s.family(&f.sid).await.unwrap().unwrap();
    // The product, its major version and the system (store::agent).
    assert_eq!(state.user_agent.as_deref(), Some("Firefox 128 on Linux"));
    assert_eq!(state.ip.as_deref(), Some("203.0.113.9"));
    assert_eq!(state.last_refreshed_at_ms, None);
    assert_eq!(
        s.user_family_logins("user-ua").await.unwrap(),
        vec![(f.sid.clone(), now)]
    );
    let r = exchange(&f.sid, &f.refresh_jti, now + 5_000, 2000);
    assert_eq!(s.rotate(&r).await.unwrap(), RotateOutcome::Rotated);
    let state = s.family(&f.sid).await.unwrap().unwrap();
    assert_eq!(state.last_refreshed_at_ms, Some(now + 5_000));
    // A login that knew neither keeps neither; an agent naming nothing known is not kept;
    // of an IPv6 address, the /64 network.
    let mut bare = family("user-ua", now + 1);
    bare.user_agent = None;
    bare.ip = None;
    s.start_family(&bare).await.unwrap();
    let state = s.family(&bare.sid).await.unwrap().unwrap();
    assert_eq!((state.user_agent, state.ip), (None, None));
    let mut odd = family("user-ua-2", now + 1);
    odd.user_agent = Some(format!("Agent/1.0 {}", "é".repeat(100)));
    odd.ip = Some("2001:db8:a:b:1:2:3:4".into());
    s.start_family(&odd).await.unwrap();
    let state = s.family(&odd.sid).await.unwrap().unwrap();
    assert_eq!(state.user_agent, None);
    assert_eq!(state.ip.as_deref(), Some("2001:db8:a:b::/64"));
    let listed: Vec<String> = s
        .user_family_logins("user-ua")
        .await
        .unwrap()
        .into_iter()
        .map(|(sid, _)| sid)
        .collect();
    assert_eq!(listed, [f.sid.clone(), bare.sid.clone()]);
}

async fn rotating_the_current_token_makes_the_new_pair_current(s: &dyn SessionStore, now: i64) {
    let f = family("user-1", now);
    s.start_family(&f).await.unwrap();
    let r1 = exchange(&f.sid, &f.refresh_jti, now + 1000, 2000);
    assert_eq!(s.rotate(&r1).await.unwrap(), RotateOutcome::Rotated);
    let state = s.family(&f.sid).await.unwrap().unwrap();
    assert_eq!(state.current_refresh_jti, r1.new_refresh_jti);
    assert_eq!(state.issued_at, r1.issued_at);
    assert!(!state.revoked);
    // The successor is current in turn.
    let r2 = exchange(&f.sid, &r1.new_refresh_jti, now + 60_000, 2000);
    assert_eq!(s.rotate(&r2).await.unwrap(), RotateOutcome::Rotated);
    assert_eq!(
        s.family(&f.sid).await.unwrap().unwrap().current_refresh_jti,
        r2.new_refresh_jti
    );
}

async fn the_exchanged_token_replays_its_successor_within_the_leeway(
    s: &dyn SessionStore,
    now: i64,
) {
    let f = family("user-1", now);
    s.start_family(&f).await.unwrap();
    let first = exchange(&f.sid, &f.refresh_jti, now, 2000);
    assert_eq!(s.rotate(&first).await.unwrap(), RotateOutcome::Rotated);
    let successor = RotateOutcome::Replayed {
        refresh_jti: first.new_refresh_jti.clone(),
        issued_at: first.issued_at,
    };
    // Again within the leeway, up to its very end: the same successor, no new branch.
    for at in [now, now + 1999, now + 2000] {
        let again = exchange(&f.sid, &f.refresh_jti, at, 2000);
        assert_eq!(
            s.rotate(&again).await.unwrap(),
            successor,
            "at +{}",
            at - now
        );
    }
    let state = s.family(&f.sid).await.unwrap().unwrap();
    assert_eq!(state.current_refresh_jti, first.new_refresh_jti);
    assert!(!state.revoked);
}

async fn reusing_an_exchanged_token_after_the_leeway_revokes_the_family(
    s: &dyn SessionStore,
    now: i64,
) {
    let f = family("user-1", now);
    s.start_family(&f).await.unwrap();
    let first = exchange(&f.sid, &f.refresh_jti, now, 2000);
    assert_eq!(s.rotate(&first).await.unwrap(), RotateOutcome::Rotated);
    let late = exchange(&f.sid, &f.refresh_jti, now + 2001, 2000);
    assert_eq!(s.rotate(&late).await.unwrap(), RotateOutcome::Reused);
    assert!(s.family(&f.sid).await.unwrap().unwrap().revoked);
    // The legitimate successor dies with the family, and so do its access tokens.
    let next = exchange(&f.sid, &first.new_refresh_jti, now + 2002, 2000);
    assert_eq!(s.rotate(&next).await.unwrap(), RotateOutcome::Revoked);
    let status = s
        .access_status(
            &access_jti_of(&first.new_refresh_jti),
            Some(&f.sid),
            "user-1",
        )
        .await
        .unwrap();
    assert!(status.revoked(Some(&f.sid)));
}

async fn a_token_the_family_never_issued_revokes_it(s: &dyn SessionStore, now: i64) {
    let f = family("user-1", now);
    s.start_family(&f).await.unwrap();
    let forged = exchange(&f.sid, "not-a-jti-of-this-family", now, 2000);
    assert_eq!(s.rotate(&forged).await.unwrap(), RotateOutcome::Reused);
    let honest = exchange(&f.sid, &f.refresh_jti, now, 2000);
    assert_eq!(s.rotate(&honest).await.unwrap(), RotateOutcome::Revoked);
}

async fn a_revoked_family_stays_revoked(s: &dyn SessionStore, now: i64) {
    let f = family("user-1", now);
    s.start_family(&f).await.unwrap();
    s.revoke_family(&f.sid, 15 * MINUTE_MS).await.unwrap();
    let r = exchange(&f.sid, &f.refresh_jti, now, 2000);
    assert_eq!(s.rotate(&r).await.unwrap(), RotateOutcome::Revoked);
    // Revoking again with a shorter memory changes nothing.
    s.revoke_family(&f.sid, 1000).await.unwrap();
    assert_eq!(s.rotate(&r).await.unwrap(), RotateOutcome::Revoked);
    let state = s.family(&f.sid).await.unwrap().unwrap();
    assert!(state.revoked);
    assert_eq!(state.user_id, "user-1");
    let status = s
        .access_status(&access_jti_of(&f.refresh_jti), Some(&f.sid), "user-1")
        .await
        .unwrap();
    assert!(status.revoked(Some(&f.sid)) && !status.jti_revoked);
}

async fn an_unknown_family_is_unknown_until_revoked(s: &dyn SessionStore, now: i64) {
    let sid = new_sid("user-1");
    let r = exchange(&sid, "whatever", now, 2000);
    assert_eq!(s.rotate(&r).await.unwrap(), RotateOutcome::Unknown);
    assert_eq!(s.family(&sid).await.unwrap(), None);
    let status = s.access_status("jti", Some(&sid), "user-1").await.unwrap();
    assert!(!status.revoked(Some(&sid)));

    // Revoking a family nobody has seen (yet) is remembered.
    s.revoke_family(&sid, 15 * MINUTE_MS).await.unwrap();
    assert_eq!(s.rotate(&r).await.unwrap(), RotateOutcome::Revoked);
    assert!(s.family(&sid).await.unwrap().unwrap().revoked);
    let status = s.access_status("jti", Some(&sid), "user-1").await.unwrap();
    assert!(status.revoked(Some(&sid)));
}

async fn concurrent_exchanges_of_one_token_yield_exactly_one_successor(
    s: &dyn SessionStore,
    now: i64,
) {
    let f = family("user-1", now);
    s.start_family(&f).await.unwrap();
    let requests: Vec<RotateRequest> = (0..50)
        .map(|_| exchange(&f.sid, &f.refresh_jti, now, 60_000))
        .collect();
    let outcomes = futures_util::future::join_all(requests.iter().map(|r| s.rotate(r))).await;
    let mut winners = Vec::new();
    let mut replayed = HashSet::new();
    for (req, outcome) in requests.iter().zip(outcomes) {
        match outcome.unwrap() {
            RotateOutcome::Rotated => winners.push(req.clone()),
            RotateOutcome::Replayed {
                refresh_jti,
                issued_at,
            } => {
                replayed.insert((refresh_jti, issued_at));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one exchange wins");
    let w = &winners[0];
    assert_eq!(
        replayed.into_iter().collect::<Vec<_>>(),
        vec![(w.new_refresh_jti.clone(), w.issued_at)],
        "every other exchange got the winner's successor"
    );
    let state = s.family(&f.sid).await.unwrap().unwrap();
    assert_eq!(state.current_refresh_jti, w.new_refresh_jti);
    assert!(!state.revoked);
}

async fn revoked_access_tokens_are_reported(s: &dyn SessionStore, _now: i64) {
    let (jti, other) = (new_id(), new_id());
    s.revoke_jti(&jti, 15 * MINUTE_MS).await.unwrap();
    assert!(
        s.access_status(&jti, None, "user-1")
            .await
            .unwrap()
            .jti_revoked
    );
    assert!(
        !s.access_status(&other, None, "user-1")
            .await
            .unwrap()
            .jti_revoked
    );
    let sid = new_id();
    let status = s.access_status(&jti, Some(&sid), "user-1").await.unwrap();
    assert!(status.jti_revoked && status.family.is_none());
}

async fn ending_all_sessions_raises_the_generation_and_never_lowers_the_version(
    s: &dyn SessionStore,
    _now: i64,
) {
    let user = new_id();
    let marks = |u: String| async move { s.access_status("jti", None, &u).await.unwrap().user };
    assert_eq!(marks(user.clone()).await, UserMarks::default());
    s.revoke_user_sessions(&user, None, DAY_MS).await.unwrap();
    assert_eq!(
        marks(user.clone()).await,
        UserMarks {
            generation: 1,
            credentials_version: 0
        }
    );
    s.revoke_user_sessions(&user, Some(7), DAY_MS)
        .await
        .unwrap();
    // A late, older credential change lowers nothing.
    s.revoke_user_sessions(&user, Some(5), DAY_MS)
        .await
        .unwrap();
    assert_eq!(
        marks(user.clone()).await,
        UserMarks {
            generation: 3,
            credentials_version: 7
        }
    );
    assert_eq!(marks(new_id()).await, UserMarks::default());
}

async fn the_newest_copy_of_a_users_claims_wins(s: &dyn SessionStore, now: i64) {
    let user = new_id();
    let status = |sid: Option<String>| {
        let user = user.clone();
        async move {
            s.access_status_with_user(&new_id(), sid.as_deref(), &user)
                .await
                .unwrap()
                .claims
        }
    };
    // Nothing recorded: none (a family's tokens carry the user as the login read them).
    assert_eq!(status(None).await, None);
    assert_eq!(status(Some(new_sid(&user))).await, None);
    let f = family(&user, now);
    s.start_family(&f).await.unwrap();
    assert_eq!(status(Some(f.sid.clone())).await, None);
    // A change afterwards is read with the marks, with or without a family named.
    let granted = claims_v("alice", &["admin", "user"], 2_000);
    s.set_user_claims(&user, &granted, DAY_MS).await.unwrap();
    assert_eq!(status(Some(f.sid.clone())).await, Some(granted.clone()));
    assert_eq!(status(None).await, Some(granted.clone()));
    // An older change arriving late replaces nothing; a newer one does.
    let late = claims_v("alice", &["user"], 1_500);
    s.set_user_claims(&user, &late, DAY_MS).await.unwrap();
    assert_eq!(status(None).await, Some(granted.clone()));
    let renamed = claims_v("alice_2", &["admin", "user"], 2_500);
    s.set_user_claims(&user, &renamed, DAY_MS).await.unwrap();
    assert_eq!(status(Some(f.sid.clone())).await, Some(renamed.clone()));
    // Another user's change does not leak.
    s.set_user_claims(&new_id(), &claims_v("bob", &["x"], 9_000), DAY_MS)
        .await
        .unwrap();
    assert_eq!(status(Some(f.sid.clone())).await, Some(renamed));
    // A family id that was only ever revoked knows no user.
    let other = new_id();
    let stub = new_sid(&other);
    s.revoke_family(&stub, DAY_MS).await.unwrap();
    let st = s
        .access_status_with_user(&new_id(), Some(&stub), &other)
        .await
        .unwrap();
    assert!(st.revoked(Some(&stub)));
    assert_eq!(st.claims, None);
}

async fn ending_a_users_sessions_ends_each_of_them_in_one_step(s: &dyn SessionStore, now: i64) {
    let (alice, bob) = (new_id(), new_id());
    let alices: Vec<NewFamily> = (0..3).map(|_| family(&alice, now)).collect();
    for f in &alices {
        s.start_family(f).await.unwrap();
    }
    let bobs = family(&bob, now);
    s.start_family(&bobs).await.unwrap();
    let dead = |f: NewFamily, user: String| async move {
        s.access_status(&access_jti_of(&f.refresh_jti), Some(&f.sid), &user)
            .await
            .unwrap()
            .revoked(Some(&f.sid))
    };
    assert_eq!(
        s.revoke_user_sessions(&alice, None, DAY_MS).await.unwrap(),
        3
    );
    for f in &alices {
        assert!(dead(f.clone(), alice.clone()).await);
    }
    assert!(!dead(bobs.clone(), bob.clone()).await);
    // A family started afterwards lives.
    let after = family(&alice, now);
    s.start_family(&after).await.unwrap();
    assert!(!dead(after.clone(), alice.clone()).await);
    assert_eq!(
        s.revoke_user_sessions(&alice, None, DAY_MS).await.unwrap(),
        1
    );
    assert!(dead(after, alice.clone()).await);
    assert_eq!(
        s.revoke_user_sessions(&new_id(), None, DAY_MS)
            .await
            .unwrap(),
        0
    );
}

/// A family resting on an earlier sign-in (a code, a device approval) starts only if no "end
/// all sessions" or credential change came since, and then reads the user's newest claims
/// mark in the same step (docs/sessions.md, "Families started from an earlier sign-in").
async fn a_family_from_an_earlier_sign_in_starts_only_if_the_sessions_did_not_end(
    s: &dyn SessionStore,
    now: i64,
) {
    let user = new_id();
    let since = |generation, credentials_version| {
        Some(UserMarks {
            generation,
            credentials_version,
        })
    };
    let started = |f: &NewFamily| {
        let f = f.clone();
        async move { s.start_family(&f).await.unwrap() }
    };
    // No mark yet: the sign-in's marks are the user's.
    let first = NewFamily {
        expect: since(0, 0),
        ..family(&user, now)
    };
    assert_eq!(
        started(&first).await,
        FamilyStarted::Started {
            evicted: 0,
            claims: None
        }
    );
    s.revoke_user_sessions(&user, None, DAY_MS).await.unwrap();
    // Signed in before the "log out everywhere": nothing is written, nor listed.
    let late = NewFamily {
        expect: since(0, 0),
        ..family(&user, now)
    };
    assert_eq!(started(&late).await, FamilyStarted::Ended);
    assert_eq!(s.family(&late.sid).await.unwrap(), None);
    assert!(!s.user_families(&user).await.unwrap().contains(&late.sid));
    // Signed in after it: starts, with the user's newest claims.
    let renamed = claims_v("alicia", &["user", "admin"], 1_800_000_000_000);
    s.set_user_claims(&user, &renamed, DAY_MS).await.unwrap();
    let after = NewFamily {
        expect: since(1, 0),
        ..family(&user, now)
    };
    assert_eq!(
        started(&after).await,
        FamilyStarted::Started {
            evicted: 0,
            claims: Some(renamed.clone())
        }
    );
    assert!(s.user_families(&user).await.unwrap().contains(&after.sid));
    // A credential change ends sign-ins that read the older record.
    s.revoke_user_sessions(&user, Some(5), DAY_MS)
        .await
        .unwrap();
    for (generation, cv) in [(1, 5), (2, 4)] {
        let old = NewFamily {
            expect: since(generation, cv),
            ..family(&user, now)
        };
        assert_eq!(
            started(&old).await,
            FamilyStarted::Ended,
            "{generation}/{cv}"
        );
    }
    let current = NewFamily {
        expect: since(2, 5),
        credentials_version: 5,
        ..family(&user, now)
    };
    assert!(matches!(
        started(&current).await,
        FamilyStarted::Started { .. }
    ));
    // An unconditional start never reads the claims mark.
    assert_eq!(
        started(&family(&user, now)).await,
        FamilyStarted::Started {
            evicted: 0,
            claims: None
        }
    );
}

/// Starts resting on one sign-in, racing the user's "log out everywhere": whatever the order,
/// once the logout has happened no family from before it is live — each start was either
/// refused or wrote a family the logout ends.
async fn no_family_from_before_a_logout_everywhere_outlives_it(s: &dyn SessionStore, now: i64) {
    let user = new_id();
    let families: Vec<NewFamily> = (0..24)
        .map(|_| NewFamily {
            expect: Some(UserMarks::default()),
            ..family(&user, now)
        })
        .collect();
    // Sent together, the logout between two halves of the starts.
    let (before, after) = families.split_at(families.len() / 2);
    let (first, logout, second) = tokio::join!(
        futures_util::future::join_all(before.iter().map(|f| s.start_family(f))),
        s.revoke_user_sessions(&user, None, DAY_MS),
        futures_util::future::join_all(after.iter().map(|f| s.start_family(f)))
    );
    logout.unwrap();
    let outcomes = first.into_iter().chain(second);
    for (i, (f, outcome)) in families.iter().zip(outcomes).enumerate() {
        if outcome.unwrap() == FamilyStarted::Ended {
            continue;
        }
        let status = s
            .access_status(&access_jti_of(&f.refresh_jti), Some(&f.sid), &user)
            .await
            .unwrap();
        assert!(
            status.revoked(Some(&f.sid)),
            "family {i} outlived the logout"
        );
    }
}

async fn a_credential_change_ends_families_that_read_the_older_record(
    s: &dyn SessionStore,
    now: i64,
) {
    let user = new_id();
    let read_v1 = NewFamily {
        credentials_version: 1,
        ..family(&user, now)
    };
    s.start_family(&read_v1).await.unwrap();
    s.revoke_user_sessions(&user, Some(2), DAY_MS)
        .await
        .unwrap();
    // A login that read version 1 before the change and finished after it (in flight).
    let in_flight = NewFamily {
        credentials_version: 1,
        ..family(&user, now)
    };
    s.start_family(&in_flight).await.unwrap();
    // A login that read the new record.
    let read_v2 = NewFamily {
        credentials_version: 2,
        ..family(&user, now)
    };
    s.start_family(&read_v2).await.unwrap();
    for (f, dead) in [(read_v1, true), (in_flight, true), (read_v2, false)] {
        let status = s
            .access_status(&access_jti_of(&f.refresh_jti), Some(&f.sid), &user)
            .await
            .unwrap();
        assert_eq!(status.revoked(Some(&f.sid)), dead);
    }
}

async fn a_login_beyond_the_cap_ends_the_oldest_family(s: &dyn SessionStore, now: i64) {
    let user = new_id();
    let mut started = Vec::new();
    for i in 0..4 {
        let f = NewFamily {
            max_sessions: 3,
            started_at_ms: now + i,
            ..family(&user, now)
        };
        let ended = s.start_family(&f).await.unwrap();
        assert_eq!(ended.evicted(), u64::from(i == 3));
        started.push(f);
    }
    assert!(s.family(&started[0].sid).await.unwrap().unwrap().revoked);
    for f in &started[1..] {
        assert!(!s.family(&f.sid).await.unwrap().unwrap().revoked);
    }
    let r = exchange(&started[0].sid, &started[0].refresh_jti, now, 2000);
    assert_eq!(s.rotate(&r).await.unwrap(), RotateOutcome::Revoked);
}

// ---------------------------------------------------------------------------------------------
// Lease
// ---------------------------------------------------------------------------------------------

async fn a_lease_has_one_holder_until_released(l: &dyn LeaseStore) {
    let name = format!("rotation-{}", new_id());
    assert!(l.try_acquire(&name, "a", MINUTE_MS).await.unwrap());
    assert!(!l.try_acquire(&name, "b", MINUTE_MS).await.unwrap());
    assert!(!l.try_acquire(&name, "a", MINUTE_MS).await.unwrap());
    // Only the holder can give it back.
    l.release(&name, "b").await.unwrap();
    assert!(!l.try_acquire(&name, "b", MINUTE_MS).await.unwrap());
    l.release(&name, "a").await.unwrap();
    assert!(l.try_acquire(&name, "b", MINUTE_MS).await.unwrap());
    // Another lease is independent.
    assert!(l
        .try_acquire(&format!("{name}-other"), "a", MINUTE_MS)
        .await
        .unwrap());
}

// ---------------------------------------------------------------------------------------------
// Authorization requests, codes and browser sessions
// ---------------------------------------------------------------------------------------------

/// Runs `n` tasks of their own, released together (in parallel on a multi-thread runtime), and
/// returns their answers.
async fn in_parallel<T, F, Fut>(n: usize, op: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (start, op) = (start.clone(), op(i));
        tasks.spawn(async move {
            start.wait().await;
            op.await
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = tasks.join_next().await {
        answers.push(answer.unwrap());
    }
    answers
}

async fn authorization_requests_are_kept_read_and_taken_once(s: Arc<dyn AuthorizeStore>) {
    let (id, other) = (new_id(), new_id());
    assert_eq!(s.request(&id).await.unwrap(), None);
    s.put_request(&id, "request-1", MINUTE_MS).await.unwrap();
    s.put_request(&other, "other", MINUTE_MS).await.unwrap();
    // Reading leaves it in place.
    for _ in 0..2 {
        assert_eq!(s.request(&id).await.unwrap().as_deref(), Some("request-1"));
    }
    // A later value replaces it.
    s.put_request(&id, "request-2", MINUTE_MS).await.unwrap();
    assert_eq!(
        s.take_request(&id).await.unwrap().as_deref(),
        Some("request-2")
    );
    assert_eq!(s.take_request(&id).await.unwrap(), None);
    assert_eq!(s.request(&id).await.unwrap(), None);
    assert_eq!(s.take_request(&new_id()).await.unwrap(), None);
    // Another request is untouched.
    assert_eq!(s.request(&other).await.unwrap().as_deref(), Some("other"));
    assert_eq!(
        s.take_request(&other).await.unwrap().as_deref(),
        Some("other")
    );
    s.ping().await.unwrap();
}

async fn a_request_is_taken_by_exactly_one_of_concurrent_callers(s: Arc<dyn AuthorizeStore>) {
    let id = new_id();
    s.put_request(&id, "the request", MINUTE_MS).await.unwrap();
    let taken = in_parallel(16, |_| {
        let (s, id) = (s.clone(), id.clone());
        async move { s.take_request(&id).await.unwrap() }
    })
    .await;
    let got: Vec<String> = taken.into_iter().flatten().collect();
    assert_eq!(got, ["the request"], "exactly one caller takes the request");
    assert_eq!(s.request(&id).await.unwrap(), None);
}

async fn pushed_requests_are_taken_once_apart_from_pending_ones(s: Arc<dyn AuthorizeStore>) {
    let (id, other) = (new_id(), new_id());
    assert_eq!(s.take_pushed_request(&id).await.unwrap(), None);
    s.put_pushed_request(&id, "pushed-1", MINUTE_MS)
        .await
        .unwrap();
    s.put_pushed_request(&other, "other", MINUTE_MS)
        .await
        .unwrap();
    // A pushed request is not a pending one, nor the reverse, under the same id.
    assert_eq!(s.request(&id).await.unwrap(), None);
    assert_eq!(s.take_request(&id).await.unwrap(), None);
    s.put_request(&id, "pending", MINUTE_MS).await.unwrap();
    assert_eq!(
        s.take_pushed_request(&id).await.unwrap().as_deref(),
        Some("pushed-1")
    );
    assert_eq!(s.take_pushed_request(&id).await.unwrap(), None);
    assert_eq!(s.request(&id).await.unwrap().as_deref(), Some("pending"));
    // Another pushed request is untouched.
    assert_eq!(
        s.take_pushed_request(&other).await.unwrap().as_deref(),
        Some("other")
    );
    assert_eq!(
        s.take_request(&id).await.unwrap().as_deref(),
        Some("pending")
    );
}

async fn a_pushed_request_is_taken_by_exactly_one_of_concurrent_callers(
    s: Arc<dyn AuthorizeStore>,
) {
    let id = new_id();
    s.put_pushed_request(&id, "the pushed request", MINUTE_MS)
        .await
        .unwrap();
    let taken = in_parallel(16, |_| {
        let (s, id) = (s.clone(), id.clone());
        async move { s.take_pushed_request(&id).await.unwrap() }
    })
    .await;
    let got: Vec<String> = taken.into_iter().flatten().collect();
    assert_eq!(
        got,
        ["the pushed request"],
        "exactly one caller takes the request (RFC 9126 §4)"
    );
}

async fn a_code_is_redeemed_once_and_its_replay_is_seen(s: Arc<dyn AuthorizeStore>) {
    let (code, other) = (new_id(), new_id());
    s.put_code(&code, "grant-1", MINUTE_MS).await.unwrap();
    s.put_code(&other, "grant-2", MINUTE_MS).await.unwrap();
    assert!(!s.code_replayed(&code).await.unwrap());
    // RFC 6749 §4.1.2: the first redemption gets the grant, and the code is used.
    assert_eq!(
        s.redeem_code(&code, DAY_MS).await.unwrap(),
        Redemption::First("grant-1".into())
    );
    assert!(!s.code_replayed(&code).await.unwrap());
    // Every later one is a replay, answered with the same grant, and leaves a mark.
    for _ in 0..2 {
        assert_eq!(
            s.redeem_code(&code, DAY_MS).await.unwrap(),
            Redemption::Replayed("grant-1".into())
        );
        assert!(s.code_replayed(&code).await.unwrap());
    }
    // Another code is untouched.
    assert!(!s.code_replayed(&other).await.unwrap());
    assert_eq!(
        s.redeem_code(&other, DAY_MS).await.unwrap(),
        Redemption::First("grant-2".into())
    );
}

async fn an_unknown_code_is_unknown(s: Arc<dyn AuthorizeStore>) {
    let code = new_id();
    for _ in 0..2 {
        assert_eq!(
            s.redeem_code(&code, DAY_MS).await.unwrap(),
            Redemption::Unknown
        );
    }
    assert!(!s.code_replayed(&code).await.unwrap());
    // Redeeming it wrote nothing: a code issued afterwards under that hash is fresh.
    s.put_code(&code, "grant", MINUTE_MS).await.unwrap();
    assert_eq!(
        s.redeem_code(&code, DAY_MS).await.unwrap(),
        Redemption::First("grant".into())
    );
}

async fn concurrent_redemptions_of_one_code_yield_exactly_one_first(s: Arc<dyn AuthorizeStore>) {
    let code = new_id();
    s.put_code(&code, "the grant", MINUTE_MS).await.unwrap();
    let answers = in_parallel(16, |_| {
        let (s, code) = (s.clone(), code.clone());
        async move { s.redeem_code(&code, DAY_MS).await.unwrap() }
    })
    .await;
    let first = answers
        .iter()
        .filter(|a| **a == Redemption::First("the grant".into()))
        .count();
    let replayed = answers
        .iter()
        .filter(|a| **a == Redemption::Replayed("the grant".into()))
        .count();
    assert_eq!((first, replayed), (1, 15), "{answers:?}");
    assert!(s.code_replayed(&code).await.unwrap());
}

async fn a_browser_session_answers_its_families_when_it_ends(s: Arc<dyn AuthorizeStore>) {
    let (id, other) = (new_id(), new_id());
    assert_eq!(s.browser_session(&id).await.unwrap(), None);
    s.put_browser_session(&id, "session-1", DAY_MS)
        .await
        .unwrap();
    s.put_browser_session(&other, "other", DAY_MS)
        .await
        .unwrap();
    assert_eq!(
        s.browser_session(&id).await.unwrap().as_deref(),
        Some("session-1")
    );
    let (f1, f2, g1) = (new_id(), new_id(), new_id());
    s.add_session_family(&id, &f1, DAY_MS).await.unwrap();
    s.add_session_family(&id, &f2, DAY_MS).await.unwrap();
    s.add_session_family(&id, &f1, DAY_MS).await.unwrap();
    s.add_session_family(&other, &g1, DAY_MS).await.unwrap();
    // Replacing the session keeps its families.
    s.put_browser_session(&id, "session-2", DAY_MS)
        .await
        .unwrap();
    assert_eq!(
        s.browser_session(&id).await.unwrap().as_deref(),
        Some("session-2")
    );
    let mut ended = s.end_browser_session(&id).await.unwrap();
    ended.sort();
    let mut want = vec![f1, f2];
    want.sort();
    assert_eq!(ended, want);
    assert_eq!(s.browser_session(&id).await.unwrap(), None);
    // Ending it again finds nothing.
    assert!(s.end_browser_session(&id).await.unwrap().is_empty());
    // The other session is untouched.
    assert_eq!(
        s.browser_session(&other).await.unwrap().as_deref(),
        Some("other")
    );
    assert_eq!(s.end_browser_session(&other).await.unwrap(), vec![g1]);
    // A session without families ends with none.
    let lone = new_id();
    s.put_browser_session(&lone, "lone", DAY_MS).await.unwrap();
    assert!(s.end_browser_session(&lone).await.unwrap().is_empty());
    assert_eq!(s.browser_session(&lone).await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Consents
// ---------------------------------------------------------------------------------------------

fn scopes(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn a_consent_merges_the_scopes_granted_and_reads_back_sorted(c: Arc<dyn ConsentStore>) {
    let user = new_id();
    assert_eq!(c.get(&user, "web").await.unwrap(), None);
    c.grant(&user, "web", &scopes(&["profile", "openid"]), 1_000)
        .await
        .unwrap();
    assert_eq!(
        c.get(&user, "web").await.unwrap(),
        Some(ConsentRecord {
            user_id: user.clone(),
            client_id: "web".into(),
            scopes: scopes(&["openid", "profile"]),
            granted_at: 1_000,
            updated_at: 1_000,
        })
    );
    // A later grant adds, never removes; duplicates collapse.
    c.grant(&user, "web", &scopes(&["email", "openid", "email"]), 2_000)
        .await
        .unwrap();
    let consent = c.get(&user, "web").await.unwrap().unwrap();
    assert_eq!(consent.scopes, scopes(&["email", "openid", "profile"]));
    assert_eq!((consent.granted_at, consent.updated_at), (1_000, 2_000));
    assert_eq!(c.get(&user, "other").await.unwrap(), None);
    assert_eq!(c.get(&new_id(), "web").await.unwrap(), None);
    c.ping().await.unwrap();
}

async fn a_users_consents_are_listed_by_client_and_forgotten_together(c: Arc<dyn ConsentStore>) {
    let (alice, bob) = (new_id(), new_id());
    for client in ["c-b", "c-a", "c-c"] {
        c.grant(&alice, client, &scopes(&["openid"]), 1_000)
            .await
            .unwrap();
    }
    c.grant(&bob, "c-a", &scopes(&["email"]), 1_000)
        .await
        .unwrap();
    let clients = |list: Vec<ConsentRecord>| {
        list.into_iter()
            .map(|r| r.client_id)
            .collect::<Vec<String>>()
    };
    assert_eq!(
        clients(c.list(&alice).await.unwrap()),
        ["c-a", "c-b", "c-c"]
    );
    let bobs = c.list(&bob).await.unwrap();
    assert_eq!(clients(bobs.clone()), ["c-a"]);
    assert_eq!(bobs[0].scopes, scopes(&["email"]));

    assert!(c.withdraw(&alice, "c-b").await.unwrap());
    assert!(!c.withdraw(&alice, "c-b").await.unwrap());
    assert_eq!(c.get(&alice, "c-b").await.unwrap(), None);
    assert_eq!(clients(c.list(&alice).await.unwrap()), ["c-a", "c-c"]);
    assert!(!c.withdraw(&new_id(), "c-a").await.unwrap());

    assert_eq!(c.forget_user(&alice).await.unwrap(), 2);
    assert!(c.list(&alice).await.unwrap().is_empty());
    assert_eq!(c.forget_user(&alice).await.unwrap(), 0);
    // Bob's consent is his own.
    assert_eq!(c.list(&bob).await.unwrap(), bobs);
    // A consent withdrawn and granted again starts over.
    c.grant(&alice, "c-a", &scopes(&["email"]), 5_000)
        .await
        .unwrap();
    let again = c.get(&alice, "c-a").await.unwrap().unwrap();
    assert_eq!(
        (again.scopes, again.granted_at),
        (scopes(&["email"]), 5_000)
    );
}

async fn concurrent_grants_to_one_client_keep_every_scope(c: Arc<dyn ConsentStore>) {
    let user = new_id();
    in_parallel(8, |i| {
        let (c, user) = (c.clone(), user.clone());
        async move {
            c.grant(
                &user,
                "web",
                &[format!("s{i}"), "openid".into()],
                1_000 + i as i64,
            )
            .await
            .unwrap()
        }
    })
    .await;
    let list = c.list(&user).await.unwrap();
    assert_eq!(list.len(), 1, "one consent per user and client: {list:?}");
    let mut want: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    want.push("openid".into());
    want.sort();
    assert_eq!(list[0].scopes, want);
    assert!((1_000..1_008).contains(&list[0].granted_at));
}

// ---------------------------------------------------------------------------------------------
// The mail outbox
// ---------------------------------------------------------------------------------------------

const LEASE_MS: i64 = 60_000;

fn message(id: &str, now_ms: i64) -> OutgoingMail {
    OutgoingMail {
        id: id.to_string(),
        from: "noreply@tokend.test".into(),
        to: "ada@example.com".into(),
        raw: format!("Message-ID: <{id}@tokend.test>\r\n\r\nhello\r\n"),
        created_at_ms: now_ms,
    }
}

/// Expects the record at credentials version `v`.
fn version(v: i64) -> Expected {
    Expected {
        credentials_version: Some(v),
        email: None,
    }
}

fn mail_token(user_id: &str, purpose: &str, expires_at_ms: i64) -> MailToken {
    MailToken {
        hash: hex_of(&new_id()),
        purpose: purpose.into(),
        user_id: user_id.into(),
        email: "ada@example.com".into(),
        expires_at_ms,
        credentials_version: Some(7),
    }
}

/// 64 hex characters derived from `seed` (the shape of a token hash).
fn hex_of(seed: &str) -> String {
    seed.bytes()
        .chain(std::iter::repeat(b'0'))
        .take(32)
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn a_message_is_claimed_by_one_of_concurrent_workers_and_leased(m: Arc<dyn MailStore>) {
    let now = SystemClock.now_ms();
    let id = new_id();
    m.enqueue(&message(&id, now), None).await.unwrap();
    assert_eq!(
        m.enqueue(&message(&id, now), None).await.unwrap_err(),
        StoreError::Duplicate("id")
    );
    assert_eq!(m.depth().await.unwrap(), 1);
    let claims = in_parallel(8, |i| {
        let m = m.clone();
        async move { m.claim(&format!("w{i}"), now, LEASE_MS).await.unwrap() }
    })
    .await;
    let got: Vec<_> = claims.into_iter().flatten().collect();
    assert_eq!(got.len(), 1, "one worker claims a message");
    assert_eq!((got[0].mail.id.as_str(), got[0].attempts), (id.as_str(), 1));
    assert_eq!(
        got[0].mail,
        message(&id, now),
        "the same bytes every attempt"
    );
    // Leased: nobody else gets it until the lease runs out (a worker that died).
    assert_eq!(
        m.claim("x", now + LEASE_MS - 1, LEASE_MS).await.unwrap(),
        None
    );
    let again = m
        .claim("x", now + LEASE_MS, LEASE_MS)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.mail.id.as_str(), again.attempts), (id.as_str(), 2));
    assert_eq!(m.depth().await.unwrap(), 1, "waiting until delivered");
}

async fn a_failed_attempt_is_due_again_at_its_retry_time(m: Arc<dyn MailStore>) {
    let now = SystemClock.now_ms();
    let (first, second) = (new_id(), new_id());
    m.enqueue(&message(&first, now), None).await.unwrap();
    m.enqueue(&message(&second, now), None).await.unwrap();
    let a = m.claim("a", now, LEASE_MS).await.unwrap().unwrap();
    let b = m.claim("b", now, LEASE_MS).await.unwrap().unwrap();
    assert_ne!(a.mail.id, b.mail.id, "each message to one worker");
    assert_eq!(m.claim("c", now, LEASE_MS).await.unwrap(), None);
    // Only the lease holder's word counts.
    m.retry_at(&a.mail.id, "b", now + 1_000).await.unwrap();
    m.delivered(&a.mail.id, "b").await.unwrap();
    assert_eq!(m.claim("c", now + 1_000, LEASE_MS).await.unwrap(), None);
    assert_eq!(m.depth().await.unwrap(), 2);
    // The holder gives it back: due at the time it names, not before.
    m.retry_at(&a.mail.id, "a", now + 1_000).await.unwrap();
    assert_eq!(m.claim("c", now + 999, LEASE_MS).await.unwrap(), None);
    let c = m.claim("c", now + 1_000, LEASE_MS).await.unwrap().unwrap();
    assert_eq!((c.mail.id.as_str(), c.attempts), (a.mail.id.as_str(), 2));
    // Delivered by its holder: out of the outbox.
    m.delivered(&c.mail.id, "c").await.unwrap();
    m.delivered(&b.mail.id, "b").await.unwrap();
    assert_eq!(m.depth().await.unwrap(), 0);
    assert_eq!(
        m.claim("d", now + 10 * LEASE_MS, LEASE_MS).await.unwrap(),
        None
    );
}

async fn a_delivered_token_stays_until_spent_once(m: Arc<dyn MailStore>) {
    let now = SystemClock.now_ms();
    let id = new_id();
    let t = mail_token("u-1", "verify_email", now + DAY_MS);
    m.enqueue(&message(&id, now), Some(&t)).await.unwrap();
    // A token is live from the moment its mail is queued.
    assert_eq!(
        m.token(&t.hash, "verify_email", now).await.unwrap(),
        Some(t.clone())
    );
    assert_eq!(m.token(&t.hash, "password_reset", now).await.unwrap(), None);
    let c = m.claim("w", now, LEASE_MS).await.unwrap().unwrap();
    m.delivered(&c.mail.id, "w").await.unwrap();
    assert_eq!(m.depth().await.unwrap(), 0);
    assert_eq!(
        m.claim("w", now + 2 * LEASE_MS, LEASE_MS).await.unwrap(),
        None
    );
    assert_eq!(
        m.token(&t.hash, "verify_email", now).await.unwrap(),
        Some(t.clone())
    );
    // Spent by exactly one of concurrent callers, then gone.
    let takes = in_parallel(8, |_| {
        let (m, hash) = (m.clone(), t.hash.clone());
        async move { m.take_token(&hash, "verify_email", now).await.unwrap() }
    })
    .await;
    let got: Vec<_> = takes.into_iter().flatten().collect();
    assert_eq!(got, std::slice::from_ref(&t));
    assert_eq!(m.token(&t.hash, "verify_email", now).await.unwrap(), None);
    assert_eq!(
        m.take_token(&t.hash, "verify_email", now).await.unwrap(),
        None
    );
}

async fn an_expired_token_is_neither_sent_nor_taken(m: Arc<dyn MailStore>) {
    let now = SystemClock.now_ms();
    let t = mail_token("u-1", "verify_email", now + 1_000);
    m.enqueue(&message(&new_id(), now), Some(&t)).await.unwrap();
    let later = now + 1_000;
    assert_eq!(
        m.token(&t.hash, "verify_email", later - 1).await.unwrap(),
        Some(t.clone()),
        "live until it expires"
    );
    assert_eq!(
        m.claim("w", later, LEASE_MS).await.unwrap(),
        None,
        "a dead link is not sent"
    );
    assert_eq!(m.token(&t.hash, "verify_email", later).await.unwrap(), None);
    assert_eq!(
        m.take_token(&t.hash, "verify_email", later).await.unwrap(),
        None
    );
}

async fn forgetting_a_users_tokens_drops_their_unsent_mail(m: Arc<dyn MailStore>) {
    let now = SystemClock.now_ms();
    let mine = [
        mail_token("u-1", "verify_email", now + DAY_MS),
        mail_token("u-1", "verify_email", now + DAY_MS),
    ];
    let other_purpose = mail_token("u-1", "password_reset", now + DAY_MS);
    let other_user = mail_token("u-2", "verify_email", now + DAY_MS);
    for t in mine.iter().chain([&other_purpose, &other_user]) {
        m.enqueue(&message(&new_id(), now), Some(t)).await.unwrap();
    }
    // One of them delivered already.
    let c = m.claim("w", now, LEASE_MS).await.unwrap().unwrap();
    m.delivered(&c.mail.id, "w").await.unwrap();
    assert_eq!(m.forget_tokens("u-1", "verify_email").await.unwrap(), 2);
    for t in &mine {
        assert_eq!(m.token(&t.hash, "verify_email", now).await.unwrap(), None);
    }
    for t in [&other_purpose, &other_user] {
        assert!(m.token(&t.hash, &t.purpose, now).await.unwrap().is_some());
    }
    // The forgotten tokens' mail is not sent: what is left is the others' mail.
    let mut left = Vec::new();
    while let Some(c) = m.claim("w", now, LEASE_MS).await.unwrap() {
        m.delivered(&c.mail.id, "w").await.unwrap();
        left.push(c.mail.id);
    }
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(m.depth().await.unwrap(), 0);
    assert_eq!(m.forget_tokens("u-1", "verify_email").await.unwrap(), 0);
    m.ping().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Account events
// ---------------------------------------------------------------------------------------------

fn event(
    id: &str,
    kind: &str,
    user: Option<&str>,
    time_ms: i64,
    expires_at_ms: i64,
) -> EventRecord {
    EventRecord {
        id: id.to_string(),
        time_ms,
        kind: kind.to_string(),
        user_id: user.map(str::to_string),
        client_id: Some("web".to_string()),
        ip: Some("198.51.100.7".to_string()),
        detail: serde_json::json!({"via": "api", "n": 3}),
        expires_at_ms,
    }
}

async fn events_are_paged_by_id_filtered_and_forgotten_when_expired(e: Arc<dyn EventStore>) {
    let now = SystemClock.now_ms();
    let later = now + DAY_MS;
    // Appended out of order: answered in id order.
    let all = [
        event("00000000000a", "login.failed", Some("u-1"), now, later),
        event("00000000000c", "logout", Some("u-2"), now, later),
        event("00000000000b", "login.failed", None, now, later),
        event("00000000000d", "login.failed", Some("u-1"), now, later),
        event(
            "000000000001",
            "login.failed",
            Some("u-1"),
            now - DAY_MS,
            now - 1,
        ),
    ];
    for ev in &all {
        e.append(ev).await.unwrap();
    }
    let q =
        |after: Option<&str>, kind: Option<&str>, user: Option<&str>, limit: usize| EventQuery {
            kind: kind.map(str::to_string),
            user_id: user.map(str::to_string),
            after: after.map(str::to_string),
            limit,
            now_ms: now,
        };
    let ids = |v: Vec<EventRecord>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    // The expired one is never answered.
    assert_eq!(
        ids(e.query(&q(None, None, None, 10)).await.unwrap()),
        [
            "00000000000a",
            "00000000000b",
            "00000000000c",
            "00000000000d"
        ]
    );
    assert_eq!(
        ids(e.query(&q(None, None, None, 2)).await.unwrap()),
        ["00000000000a", "00000000000b"]
    );
    assert_eq!(
        ids(e
            .query(&q(Some("00000000000b"), None, None, 2))
            .await
            .unwrap()),
        ["00000000000c", "00000000000d"]
    );
    assert_eq!(
        ids(e
            .query(&q(None, Some("login.failed"), Some("u-1"), 10))
            .await
            .unwrap()),
        ["00000000000a", "00000000000d"]
    );
    assert_eq!(
        ids(e.query(&q(None, Some("logout"), None, 10)).await.unwrap()),
        ["00000000000c"]
    );
    // Read back whole.
    let back = e.query(&q(None, None, Some("u-2"), 10)).await.unwrap();
    assert_eq!(back, vec![all[1].clone()]);
    e.ping().await.unwrap();
}

async fn forgetting_all_of_a_users_tokens_spares_the_others(m: Arc<dyn MailStore>) {
    let now = SystemClock.now_ms();
    let mine = [
        mail_token("u-1", "verify_email", now + DAY_MS),
        mail_token("u-1", "password_reset", now + DAY_MS),
    ];
    let other_user = mail_token("u-2", "verify_email", now + DAY_MS);
    for t in mine.iter().chain([&other_user]) {
        m.enqueue(&message(&new_id(), now), Some(t)).await.unwrap();
    }
    assert_eq!(m.forget_user_tokens("u-1").await.unwrap(), 2);
    for t in &mine {
        assert_eq!(m.token(&t.hash, &t.purpose, now).await.unwrap(), None);
    }
    assert!(m
        .token(&other_user.hash, "verify_email", now)
        .await
        .unwrap()
        .is_some());
}

// ---------------------------------------------------------------------------------------------
// Each contract, once per implementation
// ---------------------------------------------------------------------------------------------

fn manual_clock() -> (Arc<ManualClock>, SharedClock) {
    let clock = ManualClock::starting_now();
    let shared: SharedClock = clock.clone();
    (clock, shared)
}

/// Fails if a key under the store's prefix lives forever.
async fn assert_every_key_expires(store: &RedisStore) {
    let url = services::redis_url();
    let without = services::redis_keys_without_ttl(&url, store.prefix()).await;
    assert!(without.is_empty(), "keys without a TTL: {without:?}");
}

macro_rules! user_contract {
    ($contract:ident: $in_memory:ident, $in_mongodb:ident) => {
        #[tokio::test]
        async fn $in_memory() {
            $contract(&MemoryUsers::new()).await;
        }

        #[tokio::test]
        async fn $in_mongodb() {
            $contract(&services::mongo_store().await).await;
        }
    };
}

macro_rules! client_contract {
    ($contract:ident: $in_memory:ident, $in_mongodb:ident) => {
        #[tokio::test]
        async fn $in_memory() {
            $contract(&MemoryClients::new()).await;
        }

        #[tokio::test]
        async fn $in_mongodb() {
            $contract(&services::mongo_store().await).await;
        }
    };
}

macro_rules! session_contract {
    ($contract:ident: $in_memory:ident, $in_redis:ident) => {
        #[tokio::test]
        async fn $in_memory() {
            let (clock, shared) = manual_clock();
            $contract(&MemorySessions::new(shared), clock.now_ms()).await;
        }

        #[tokio::test]
        async fn $in_redis() {
            let store = services::redis_store().await;
            $contract(&store, SystemClock.now_ms()).await;
            assert_every_key_expires(&store).await;
        }
    };
}

/// The authorization-store contracts spawn tasks that run in parallel, hence the multi-thread
/// runtime.
macro_rules! authorize_contract {
    ($contract:ident: $in_memory:ident, $in_redis:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $in_memory() {
            let (_, shared) = manual_clock();
            $contract(Arc::new(MemoryAuthorize::new(shared))).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $in_redis() {
            let store = services::redis_store().await;
            $contract(Arc::new(store.clone())).await;
            assert_every_key_expires(&store).await;
        }
    };
}

/// The outbox contracts claim from tasks that run in parallel, hence the multi-thread runtime.
macro_rules! mail_contract {
    ($contract:ident: $in_memory:ident, $in_mongodb:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $in_memory() {
            $contract(Arc::new(MemoryMail::new())).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $in_mongodb() {
            $contract(Arc::new(services::mongo_store().await)).await;
        }
    };
}

macro_rules! consent_contract {
    ($contract:ident: $in_memory:ident, $in_mongodb:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $in_memory() {
            $contract(Arc::new(MemoryConsents::new())).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $in_mongodb() {
            $contract(Arc::new(services::mongo_store().await)).await;
        }
    };
}

user_contract!(users_can_be_found_by_id_email_and_username:
    users_can_be_found_by_id_email_and_username_in_memory,
    users_can_be_found_by_id_email_and_username_in_mongodb);
user_contract!(emails_are_unique: emails_are_unique_in_memory, emails_are_unique_in_mongodb);
user_contract!(usernames_are_unique_ignoring_case:
    usernames_are_unique_ignoring_case_in_memory,
    usernames_are_unique_ignoring_case_in_mongodb);
user_contract!(renaming_onto_a_taken_username_is_refused:
    renaming_onto_a_taken_username_is_refused_in_memory,
    renaming_onto_a_taken_username_is_refused_in_mongodb);
user_contract!(password_hashes_and_roles_can_be_replaced:
    password_hashes_and_roles_can_be_replaced_in_memory,
    password_hashes_and_roles_can_be_replaced_in_mongodb);
user_contract!(users_are_listed_by_id_a_page_at_a_time:
    users_are_listed_by_id_a_page_at_a_time_in_memory,
    users_are_listed_by_id_a_page_at_a_time_in_mongodb);
user_contract!(a_deleted_user_is_gone_and_frees_its_names:
    a_deleted_user_is_gone_and_frees_its_names_in_memory,
    a_deleted_user_is_gone_and_frees_its_names_in_mongodb);
user_contract!(an_email_change_moves_the_address_verified_unless_it_is_taken:
    an_email_change_moves_the_address_verified_unless_it_is_taken_in_memory,
    an_email_change_moves_the_address_verified_unless_it_is_taken_in_mongodb);

client_contract!(clients_can_be_inserted_fetched_listed_and_deleted:
    clients_can_be_inserted_fetched_listed_and_deleted_in_memory,
    clients_can_be_inserted_fetched_listed_and_deleted_in_mongodb);
client_contract!(client_ids_are_unique: client_ids_are_unique_in_memory, client_ids_are_unique_in_mongodb);
client_contract!(a_private_key_jwt_client_keeps_its_keys:
    a_private_key_jwt_client_keeps_its_keys_in_memory,
    a_private_key_jwt_client_keeps_its_keys_in_mongodb);
client_contract!(clients_are_replaced_only_while_they_exist:
    clients_are_replaced_only_while_they_exist_in_memory,
    clients_are_replaced_only_while_they_exist_in_mongodb);

session_contract!(a_started_family_reads_back:
    a_started_family_reads_back_in_memory,
    a_started_family_reads_back_in_redis
);
session_contract!(a_family_keeps_its_login_and_its_last_refresh:
    a_family_keeps_its_login_and_its_last_refresh_in_memory,
    a_family_keeps_its_login_and_its_last_refresh_in_redis
);
session_contract!(rotating_the_current_token_makes_the_new_pair_current:
    rotating_the_current_token_makes_the_new_pair_current_in_memory,
    rotating_the_current_token_makes_the_new_pair_current_in_redis
);
session_contract!(the_exchanged_token_replays_its_successor_within_the_leeway:
    the_exchanged_token_replays_its_successor_within_the_leeway_in_memory,
    the_exchanged_token_replays_its_successor_within_the_leeway_in_redis
);
session_contract!(reusing_an_exchanged_token_after_the_leeway_revokes_the_family:
    reusing_an_exchanged_token_after_the_leeway_revokes_the_family_in_memory,
    reusing_an_exchanged_token_after_the_leeway_revokes_the_family_in_redis
);
session_contract!(a_token_the_family_never_issued_revokes_it:
    a_token_the_family_never_issued_revokes_it_in_memory,
    a_token_the_family_never_issued_revokes_it_in_redis
);
session_contract!(a_revoked_family_stays_revoked:
    a_revoked_family_stays_revoked_in_memory,
    a_revoked_family_stays_revoked_in_redis
);
session_contract!(an_unknown_family_is_unknown_until_revoked:
    an_unknown_family_is_unknown_until_revoked_in_memory,
    an_unknown_family_is_unknown_until_revoked_in_redis
);
session_contract!(concurrent_exchanges_of_one_token_yield_exactly_one_successor:
    concurrent_exchanges_of_one_token_yield_exactly_one_successor_in_memory,
    concurrent_exchanges_of_one_token_yield_exactly_one_successor_in_redis
);
session_contract!(revoked_access_tokens_are_reported:
    revoked_access_tokens_are_reported_in_memory,
    revoked_access_tokens_are_reported_in_redis
);
session_contract!(ending_all_sessions_raises_the_generation_and_never_lowers_the_version:
    ending_all_sessions_raises_the_generation_and_never_lowers_the_version_in_memory,
    ending_all_sessions_raises_the_generation_and_never_lowers_the_version_in_redis
);
session_contract!(the_newest_copy_of_a_users_claims_wins:
    the_newest_copy_of_a_users_claims_wins_in_memory,
    the_newest_copy_of_a_users_claims_wins_in_redis);
session_contract!(ending_a_users_sessions_ends_each_of_them_in_one_step:
    ending_a_users_sessions_ends_each_of_them_in_one_step_in_memory,
    ending_a_users_sessions_ends_each_of_them_in_one_step_in_redis
);
session_contract!(a_credential_change_ends_families_that_read_the_older_record:
    a_credential_change_ends_families_that_read_the_older_record_in_memory,
    a_credential_change_ends_families_that_read_the_older_record_in_redis
);
session_contract!(a_family_from_an_earlier_sign_in_starts_only_if_the_sessions_did_not_end:
    a_family_from_an_earlier_sign_in_starts_only_if_the_sessions_did_not_end_in_memory,
    a_family_from_an_earlier_sign_in_starts_only_if_the_sessions_did_not_end_in_redis
);
session_contract!(no_family_from_before_a_logout_everywhere_outlives_it:
    no_family_from_before_a_logout_everywhere_outlives_it_in_memory,
    no_family_from_before_a_logout_everywhere_outlives_it_in_redis
);
session_contract!(a_login_beyond_the_cap_ends_the_oldest_family:
    a_login_beyond_the_cap_ends_the_oldest_family_in_memory,
    a_login_beyond_the_cap_ends_the_oldest_family_in_redis
);

authorize_contract!(authorization_requests_are_kept_read_and_taken_once:
    authorization_requests_are_kept_read_and_taken_once_in_memory,
    authorization_requests_are_kept_read_and_taken_once_in_redis);
authorize_contract!(a_request_is_taken_by_exactly_one_of_concurrent_callers:
    a_request_is_taken_by_exactly_one_of_concurrent_callers_in_memory,
    a_request_is_taken_by_exactly_one_of_concurrent_callers_in_redis);
authorize_contract!(pushed_requests_are_taken_once_apart_from_pending_ones:
    pushed_requests_are_taken_once_apart_from_pending_ones_in_memory,
    pushed_requests_are_taken_once_apart_from_pending_ones_in_redis);
authorize_contract!(a_pushed_request_is_taken_by_exactly_one_of_concurrent_callers:
    a_pushed_request_is_taken_by_exactly_one_of_concurrent_callers_in_memory,
    a_pushed_request_is_taken_by_exactly_one_of_concurrent_callers_in_redis);
authorize_contract!(a_code_is_redeemed_once_and_its_replay_is_seen:
    a_code_is_redeemed_once_and_its_replay_is_seen_in_memory,
    a_code_is_redeemed_once_and_its_replay_is_seen_in_redis);
authorize_contract!(an_unknown_code_is_unknown:
    an_unknown_code_is_unknown_in_memory,
    an_unknown_code_is_unknown_in_redis);
authorize_contract!(concurrent_redemptions_of_one_code_yield_exactly_one_first:
    concurrent_redemptions_of_one_code_yield_exactly_one_first_in_memory,
    concurrent_redemptions_of_one_code_yield_exactly_one_first_in_redis);
authorize_contract!(a_browser_session_answers_its_families_when_it_ends:
    a_browser_session_answers_its_families_when_it_ends_in_memory,
    a_browser_session_answers_its_families_when_it_ends_in_redis);

consent_contract!(a_consent_merges_the_scopes_granted_and_reads_back_sorted:
    a_consent_merges_the_scopes_granted_and_reads_back_sorted_in_memory,
    a_consent_merges_the_scopes_granted_and_reads_back_sorted_in_mongodb);
consent_contract!(a_users_consents_are_listed_by_client_and_forgotten_together:
    a_users_consents_are_listed_by_client_and_forgotten_together_in_memory,
    a_users_consents_are_listed_by_client_and_forgotten_together_in_mongodb);
consent_contract!(concurrent_grants_to_one_client_keep_every_scope:
    concurrent_grants_to_one_client_keep_every_scope_in_memory,
    concurrent_grants_to_one_client_keep_every_scope_in_mongodb);

#[tokio::test]
async fn a_lease_has_one_holder_until_released_in_memory() {
    let (_, shared) = manual_clock();
    a_lease_has_one_holder_until_released(&MemoryLease::new(shared)).await;
}

#[tokio::test]
async fn a_lease_has_one_holder_until_released_in_redis() {
    let store = services::redis_store().await;
    a_lease_has_one_holder_until_released(&store).await;
    assert_every_key_expires(&store).await;
}

/// The whole session, lease and authorization-store contract on a one-node Redis Cluster, where
/// no command or script may span two slots. One test, because a new cluster takes two seconds
/// to accept writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_lease_and_authorize_contracts_hold_in_a_redis_cluster() {
    let cluster = services::OwnedRedis::start_cluster().await;
    let store = RedisStore::connect(&cluster.url(), "tokend:")
        .await
        .unwrap();
    let now = SystemClock.now_ms();
    a_started_family_reads_back(&store, now).await;
    rotating_the_current_token_makes_the_new_pair_current(&store, now).await;
    the_exchanged_token_replays_its_successor_within_the_leeway(&store, now).await;
    reusing_an_exchanged_token_after_the_leeway_revokes_the_family(&store, now).await;
    a_token_the_family_never_issued_revokes_it(&store, now).await;
    a_revoked_family_stays_revoked(&store, now).await;
    an_unknown_family_is_unknown_until_revoked(&store, now).await;
    concurrent_exchanges_of_one_token_yield_exactly_one_successor(&store, now).await;
    revoked_access_tokens_are_reported(&store, now).await;
    ending_all_sessions_raises_the_generation_and_never_lowers_the_version(&store, now).await;
    the_newest_copy_of_a_users_claims_wins(&store, now).await;
    ending_a_users_sessions_ends_each_of_them_in_one_step(&store, now).await;
    a_credential_change_ends_families_that_read_the_older_record(&store, now).await;
    a_login_beyond_the_cap_ends_the_oldest_family(&store, now).await;
    a_family_from_an_earlier_sign_in_starts_only_if_the_sessions_did_not_end(&store, now).await;
    no_family_from_before_a_logout_everywhere_outlives_it(&store, now).await;
    a_lease_has_one_holder_until_released(&store).await;
    let authorize: Arc<dyn AuthorizeStore> = Arc::new(store.clone());
    authorization_requests_are_kept_read_and_taken_once(authorize.clone()).await;
    a_request_is_taken_by_exactly_one_of_concurrent_callers(authorize.clone()).await;
    pushed_requests_are_taken_once_apart_from_pending_ones(authorize.clone()).await;
    a_pushed_request_is_taken_by_exactly_one_of_concurrent_callers(authorize.clone()).await;
    a_code_is_redeemed_once_and_its_replay_is_seen(authorize.clone()).await;
    an_unknown_code_is_unknown(authorize.clone()).await;
    concurrent_redemptions_of_one_code_yield_exactly_one_first(authorize.clone()).await;
    a_browser_session_answers_its_families_when_it_ends(authorize).await;
    let without = services::redis_keys_without_ttl(
        &format!("redis://127.0.0.1:{}/", cluster.port()),
        "tokend:",
    )
    .await;
    assert!(without.is_empty(), "keys without a TTL: {without:?}");
}

// ---------------------------------------------------------------------------------------------
// What only one implementation can show
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn memory_sessions_forget_records_when_their_ttl_ends() {
    let (clock, shared) = manual_clock();
    let s = MemorySessions::new(shared);
    let now = clock.now_ms();
    let f = NewFamily {
        ttl_ms: MINUTE_MS,
        ..family("user-1", now)
    };
    s.start_family(&f).await.unwrap();
    s.revoke_jti("jti-1", MINUTE_MS).await.unwrap();
    s.revoke_user_sessions("user-2", None, MINUTE_MS)
        .await
        .unwrap();
    clock.advance(Duration::from_millis(59_999));
    assert!(s.family(&f.sid).await.unwrap().is_some());
    let status = s.access_status("jti-1", None, "user-1").await.unwrap();
    assert!(status.jti_revoked);
    let marks = s.access_status("jti-1", None, "user-2").await.unwrap().user;
    assert_eq!(marks.generation, 1);

    clock.advance(Duration::from_millis(1));
    assert_eq!(s.family(&f.sid).await.unwrap(), None);
    let r = exchange(&f.sid, &f.refresh_jti, clock.now_ms(), 2000);
    assert_eq!(s.rotate(&r).await.unwrap(), RotateOutcome::Unknown);
    let status = s.access_status("jti-1", None, "user-1").await.unwrap();
    assert!(!status.jti_revoked);
    let marks = s.access_status("jti-1", None, "user-2").await.unwrap().user;
    assert_eq!(marks, UserMarks::default());
}

#[tokio::test]
async fn a_rotation_extends_a_memory_family_by_its_ttl() {
    let (clock, shared) = manual_clock();
    let s = MemorySessions::new(shared);
    let f = NewFamily {
        ttl_ms: MINUTE_MS,
        ..family("user-1", clock.now_ms())
    };
    s.start_family(&f).await.unwrap();
    clock.advance(Duration::from_secs(50));
    let r = RotateRequest {
        ttl_ms: MINUTE_MS,
        ..exchange(&f.sid, &f.refresh_jti, clock.now_ms(), 2000)
    };
    assert_eq!(s.rotate(&r).await.unwrap(), RotateOutcome::Rotated);
    clock.advance(Duration::from_secs(50));
    assert!(s.family(&f.sid).await.unwrap().is_some());
}

#[tokio::test]
async fn memory_sessions_stay_bounded_as_records_expire() {
    let (clock, shared) = manual_clock();
    let s = MemorySessions::new(shared);
    for i in 0..10_000 {
        s.revoke_jti(&format!("jti-{i}"), 1000).await.unwrap();
        if i % 100 == 0 {
            clock.advance(Duration::from_secs(1));
        }
    }
    assert!(
        s.len() < 5_000,
        "expired records were not swept: {}",
        s.len()
    );
    clock.advance(Duration::from_secs(60));
    s.revoke_jti("last", 1000).await.unwrap();
    assert_eq!(s.len(), 1);
}

#[tokio::test]
async fn a_memory_lease_lapses_after_its_ttl() {
    let (clock, shared) = manual_clock();
    let l = MemoryLease::new(shared);
    assert!(l.try_acquire("rotation", "a", 1000).await.unwrap());
    clock.advance(Duration::from_millis(999));
    assert!(!l.try_acquire("rotation", "b", 1000).await.unwrap());
    clock.advance(Duration::from_millis(1));
    assert!(l.try_acquire("rotation", "b", 1000).await.unwrap());
}

#[tokio::test]
async fn memory_authorization_records_are_forgotten_when_their_ttl_ends() {
    let (clock, shared) = manual_clock();
    let s = MemoryAuthorize::new(shared);
    let (request, code, session, family) = (new_id(), new_id(), new_id(), new_id());
    let (pushed, pushed_later) = (new_id(), new_id());
    s.put_request(&request, "request", MINUTE_MS).await.unwrap();
    s.put_pushed_request(&pushed, "pushed", MINUTE_MS)
        .await
        .unwrap();
    s.put_pushed_request(&pushed_later, "pushed", MINUTE_MS)
        .await
        .unwrap();
    s.put_code(&code, "grant", MINUTE_MS).await.unwrap();
    s.put_browser_session(&session, "session", MINUTE_MS)
        .await
        .unwrap();
    s.add_session_family(&session, &family, MINUTE_MS)
        .await
        .unwrap();
    clock.advance(Duration::from_millis(59_999));
    assert!(s.request(&request).await.unwrap().is_some());
    assert!(s.browser_session(&session).await.unwrap().is_some());
    assert!(s.take_pushed_request(&pushed).await.unwrap().is_some());

    clock.advance(Duration::from_millis(1));
    assert_eq!(s.request(&request).await.unwrap(), None);
    assert_eq!(s.take_pushed_request(&pushed_later).await.unwrap(), None);
    assert_eq!(s.take_request(&request).await.unwrap(), None);
    assert_eq!(
        s.redeem_code(&code, DAY_MS).await.unwrap(),
        Redemption::Unknown
    );
    assert_eq!(s.browser_session(&session).await.unwrap(), None);
    assert!(s.end_browser_session(&session).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_redeemed_memory_code_is_remembered_for_its_used_ttl() {
    let (clock, shared) = manual_clock();
    let s = MemoryAuthorize::new(shared);
    let code = new_id();
    s.put_code(&code, "grant", MINUTE_MS).await.unwrap();
    assert_eq!(
        s.redeem_code(&code, 10 * MINUTE_MS).await.unwrap(),
        Redemption::First("grant".into())
    );
    // Past the code's own lifetime, a replay is still recognised.
    clock.advance(Duration::from_millis(10 * MINUTE_MS as u64 - 1));
    assert_eq!(
        s.redeem_code(&code, 10 * MINUTE_MS).await.unwrap(),
        Redemption::Replayed("grant".into())
    );
    assert!(s.code_replayed(&code).await.unwrap());
    clock.advance(Duration::from_millis(1));
    assert!(!s.code_replayed(&code).await.unwrap());
    assert_eq!(
        s.redeem_code(&code, 10 * MINUTE_MS).await.unwrap(),
        Redemption::Unknown
    );
    // A used TTL shorter than the code's remaining life does not shorten it.
    let long = new_id();
    s.put_code(&long, "grant", DAY_MS).await.unwrap();
    s.redeem_code(&long, MINUTE_MS).await.unwrap();
    clock.advance(Duration::from_millis(2 * MINUTE_MS as u64));
    assert_eq!(
        s.redeem_code(&long, MINUTE_MS).await.unwrap(),
        Redemption::Replayed("grant".into())
    );
}

#[tokio::test]
async fn a_memory_browser_sessions_families_live_as_long_as_the_longest_asked() {
    let (clock, shared) = manual_clock();
    let s = MemoryAuthorize::new(shared);
    let (session, f1, f2) = (new_id(), new_id(), new_id());
    s.add_session_family(&session, &f1, 2 * MINUTE_MS)
        .await
        .unwrap();
    s.add_session_family(&session, &f2, MINUTE_MS)
        .await
        .unwrap();
    clock.advance(Duration::from_millis(2 * MINUTE_MS as u64 - 1));
    let mut ended = s.end_browser_session(&session).await.unwrap();
    ended.sort();
    let mut want = vec![f1, f2];
    want.sort();
    assert_eq!(ended, want);
    // Families whose time is up are forgotten.
    let (later, f3) = (new_id(), new_id());
    s.add_session_family(&later, &f3, MINUTE_MS).await.unwrap();
    clock.advance(Duration::from_millis(MINUTE_MS as u64));
    assert!(s.end_browser_session(&later).await.unwrap().is_empty());
}

#[tokio::test]
async fn memory_authorization_records_stay_bounded_as_they_expire() {
    let (clock, shared) = manual_clock();
    let s = MemoryAuthorize::new(shared);
    for i in 0..10_000 {
        s.put_code(&format!("code-{i}"), "grant", 1000)
            .await
            .unwrap();
        if i % 100 == 0 {
            clock.advance(Duration::from_secs(1));
        }
    }
    assert!(
        s.len() < 5_000,
        "expired records were not swept: {}",
        s.len()
    );
    clock.advance(Duration::from_secs(60));
    s.put_request("last", "request", 1000).await.unwrap();
    assert_eq!(s.len(), 1);
}

#[tokio::test]
async fn redis_records_live_exactly_as_long_as_asked_and_never_less() {
    let store = services::redis_store().await;
    let url = services::redis_url();
    let p = store.prefix().to_string();
    let pttl = |key: String| {
        let url = url.clone();
        async move { services::redis_pttl(&url, &key).await }
    };
    let now = SystemClock.now_ms();
    let near = |v: i64, want: i64| v > want - 5_000 && v <= want;

    let f = NewFamily {
        ttl_ms: DAY_MS,
        ..family("user-ttl", now)
    };
    store.start_family(&f).await.unwrap();
    // The user's families live as long as the family's first refresh token; the names of the
    // clients as long as the family could.
    let fam_key = format!("{p}sfam:{{user-ttl}}");
    assert!(near(pttl(fam_key.clone()).await, DAY_MS));
    assert!(near(pttl(format!("{p}clients")).await, 30 * DAY_MS));

    let r = RotateRequest {
        ttl_ms: 2 * DAY_MS,
        ..exchange(&f.sid, &f.refresh_jti, now, 2000)
    };
    assert_eq!(store.rotate(&r).await.unwrap(), RotateOutcome::Rotated);
    assert!(near(pttl(fam_key.clone()).await, 2 * DAY_MS));
    // Revoking with a shorter memory does not shorten it.
    store.revoke_family(&f.sid, MINUTE_MS).await.unwrap();
    assert!(near(pttl(fam_key.clone()).await, 2 * DAY_MS));
    store.revoke_family(&f.sid, 3 * DAY_MS).await.unwrap();
    assert!(near(pttl(fam_key).await, 3 * DAY_MS));

    store.revoke_jti("j1", 15 * MINUTE_MS).await.unwrap();
    assert!(near(pttl(format!("{p}rjti:{{j1}}")).await, 15 * MINUTE_MS));
    store
        .revoke_user_sessions("user-ttl", None, DAY_MS)
        .await
        .unwrap();
    store
        .revoke_user_sessions("user-ttl", Some(3), MINUTE_MS)
        .await
        .unwrap();
    assert!(near(pttl(format!("{p}usess:{{user-ttl}}")).await, DAY_MS));
    // A change of the user's claims lives as long as asked; a later, shorter one keeps that.
    store
        .set_user_claims("user-ttl", &claims_v("a", &["user"], 1), 30 * DAY_MS)
        .await
        .unwrap();
    store
        .set_user_claims("user-ttl", &claims_v("a", &["user"], 2), MINUTE_MS)
        .await
        .unwrap();
    assert!(near(
        pttl(format!("{p}uclm:{{user-ttl}}")).await,
        30 * DAY_MS
    ));
    assert!(store.try_acquire("rot", "me", MINUTE_MS).await.unwrap());
    assert!(near(pttl(format!("{p}lease:{{rot}}")).await, MINUTE_MS));
    assert_every_key_expires(&store).await;
}

#[tokio::test]
async fn redis_authorization_records_live_as_long_as_asked() {
    let store = services::redis_store().await;
    let url = services::redis_url();
    let p = store.prefix().to_string();
    let pttl = |key: String| {
        let url = url.clone();
        async move { services::redis_pttl(&url, &key).await }
    };
    let near = |v: i64, want: i64| v > want - 5_000 && v <= want;

    let request = new_id();
    store
        .put_request(&request, "request", MINUTE_MS)
        .await
        .unwrap();
    let request_key = format!("{p}areq:{{{request}}}");
    assert!(near(pttl(request_key.clone()).await, MINUTE_MS));
    store.take_request(&request).await.unwrap();
    assert_eq!(pttl(request_key).await, -2, "a taken request is gone");

    // A pushed request lives its minute (RFC 9126 §2.2), then is gone once taken.
    let pushed = new_id();
    store
        .put_pushed_request(&pushed, "pushed", MINUTE_MS)
        .await
        .unwrap();
    let pushed_key = format!("{p}par:{{{pushed}}}");
    assert!(near(pttl(pushed_key.clone()).await, MINUTE_MS));
    store.take_pushed_request(&pushed).await.unwrap();
    assert_eq!(pttl(pushed_key).await, -2, "a taken pushed request is gone");

    // A code lives its own lifetime, then, once used, as long as a replay must be recognised.
    let code = new_id();
    store.put_code(&code, "grant", MINUTE_MS).await.unwrap();
    let code_key = format!("{p}code:{{{code}}}");
    assert!(near(pttl(code_key.clone()).await, MINUTE_MS));
    store.redeem_code(&code, DAY_MS).await.unwrap();
    assert!(near(pttl(code_key.clone()).await, DAY_MS));
    store.redeem_code(&code, DAY_MS).await.unwrap();
    assert!(near(pttl(code_key).await, DAY_MS));
    // A shorter used TTL does not shorten a code's remaining life.
    let long = new_id();
    store.put_code(&long, "grant", DAY_MS).await.unwrap();
    store.redeem_code(&long, MINUTE_MS).await.unwrap();
    assert!(near(pttl(format!("{p}code:{{{long}}}")).await, DAY_MS));

    // A browser session and its families: the families as long as the longest asked.
    let (session, f1, f2) = (new_id(), new_id(), new_id());
    store
        .put_browser_session(&session, "session", DAY_MS)
        .await
        .unwrap();
    let session_key = format!("{p}bsess:{{{session}}}");
    let families_key = format!("{p}bsfam:{{{session}}}");
    assert!(near(pttl(session_key.clone()).await, DAY_MS));
    store
        .add_session_family(&session, &f1, 2 * DAY_MS)
        .await
        .unwrap();
    store
        .add_session_family(&session, &f2, MINUTE_MS)
        .await
        .unwrap();
    assert!(near(pttl(families_key.clone()).await, 2 * DAY_MS));
    assert_eq!(store.end_browser_session(&session).await.unwrap().len(), 2);
    assert_eq!(pttl(session_key).await, -2);
    assert_eq!(pttl(families_key).await, -2);
    assert_every_key_expires(&store).await;
}

/// Writes a family as tokend wrote them before a family's sid named its user: its own hash
/// `fam:{<sid>}` and the user's list `ufam:{<user>}` (docs/sessions.md, "Families from
/// before").
async fn write_family_from_before(
    store: &RedisStore,
    sid: &str,
    user: &str,
    cur: &str,
    now: i64,
    jkt: Option<&str>,
) {
    let mut conn = services::kv_conn(&services::redis_url()).await;
    let p = store.prefix();
    let key = format!("{p}fam:{{{sid}}}");
    let mut hset = redis::cmd("HSET");
    hset.arg(&key).arg(&[
        ("user", user.to_string()),
        ("client", "web".to_string()),
        ("scope", "openid".to_string()),
        ("auth_time", (now / 1000 - 60).to_string()),
        ("cur", cur.to_string()),
        ("cur_at", "old-access-jti".to_string()),
        ("iat", (now / 1000).to_string()),
        ("exp_ms", (now + 30 * DAY_MS).to_string()),
        ("revoked", "0".to_string()),
        ("uname", "alice".to_string()),
        ("roles", r#"["user"]"#.to_string()),
        ("uver", "5".to_string()),
        ("gen", "0".to_string()),
        ("cv", "0".to_string()),
        ("ua", "Firefox 128 on Linux".to_string()),
        ("ip", "203.0.113.9".to_string()),
    ]);
    if let Some(jkt) = jkt {
        hset.arg("jkt").arg(jkt);
    }
    let _: i64 = hset.query_async(&mut conn).await.unwrap();
    let list = format!("{p}ufam:{{{user}}}");
    let _: i64 = redis::cmd("ZADD")
        .arg(&list)
        .arg(now - 60_000)
        .arg(sid)
        .query_async(&mut conn)
        .await
        .unwrap();
    for k in [key, list] {
        let _: i64 = redis::cmd("PEXPIRE")
            .arg(k)
            .arg(14 * DAY_MS)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// Families written before a family's sid named its user keep working in their own keys
/// until they end: read, listed, checked, exchanged (a bound one only with its key),
/// revoked, ended with the user's other families, and first to go at the cap.
#[tokio::test]
async fn redis_families_from_before_keep_working_until_they_end() {
    let store = services::redis_store().await;
    let now = SystemClock.now_ms();
    let user = new_id();
    let (old, bound) = (new_jti(), new_jti());
    let (old_cur, bound_cur) = (new_jti(), new_jti());
    write_family_from_before(&store, &old, &user, &old_cur, now, None).await;
    let jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
    write_family_from_before(&store, &bound, &user, &bound_cur, now, Some(jkt)).await;

    let state = store.family(&old).await.unwrap().unwrap();
    assert_eq!(state.user_id, user);
    assert_eq!(state.client_id, "web");
    assert_eq!(state.current_refresh_jti, old_cur);
    assert_eq!(state.auth_time, now / 1000 - 60);
    assert_eq!(state.user, Some(claims_v("alice", &["user"], 5)));
    assert_eq!(state.user_agent.as_deref(), Some("Firefox 128 on Linux"));
    let status = store
        .access_status_with_user("old-access-jti", Some(&old), &user)
        .await
        .unwrap();
    assert!(!status.revoked(Some(&old)));
    assert_eq!(status.claims, Some(claims_v("alice", &["user"], 5)));

    // Exchanged as before; a retry within the leeway gets the same successor.
    let r = exchange(&old, &old_cur, now + 1000, 2000);
    let (was, outcome) = store.exchange(&r).await.unwrap().unwrap();
    assert_eq!(outcome, RotateOutcome::Rotated);
    assert_eq!(was.auth_time, now / 1000 - 60);
    let again = exchange(&old, &old_cur, now + 1500, 2000);
    assert_eq!(
        store.rotate(&again).await.unwrap(),
        RotateOutcome::Replayed {
            refresh_jti: r.new_refresh_jti.clone(),
            issued_at: r.issued_at,
        }
    );
    // A bound one moves only with a proof of its key.
    let mut wrong = exchange(&bound, &bound_cur, now + 1000, 2000);
    assert_eq!(store.rotate(&wrong).await.unwrap(), RotateOutcome::WrongKey);
    wrong.jkt = Some(jkt.to_string());
    assert_eq!(store.rotate(&wrong).await.unwrap(), RotateOutcome::Rotated);

    // Listed beside the user's new families, oldest login first; the cap ends them first.
    let f = NewFamily {
        max_sessions: 2,
        ..family(&user, now)
    };
    assert_eq!(store.start_family(&f).await.unwrap().evicted(), 1);
    let listed = store.user_families(&user).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[1], f.sid);
    let popped = if listed[0] == old { &bound } else { &old };
    assert!(store.family(popped).await.unwrap().unwrap().revoked);
    // Revoked one at a time, or all at once with the user's new ones.
    store.revoke_family(&listed[0], DAY_MS).await.unwrap();
    assert!(store.family(&listed[0]).await.unwrap().unwrap().revoked);
    assert_eq!(
        store
            .revoke_user_sessions(&user, None, DAY_MS)
            .await
            .unwrap(),
        2
    );
    assert!(store.user_families(&user).await.unwrap().is_empty());
    let status = store
        .access_status(&access_jti_of(&f.refresh_jti), Some(&f.sid), &user)
        .await
        .unwrap();
    assert!(status.revoked(Some(&f.sid)));
    assert_every_key_expires(&store).await;
}

#[tokio::test]
async fn redis_down_is_unavailable_quickly_and_recovers_by_itself() {
    let mut redis = services::OwnedRedis::start().await;
    let store = RedisStore::connect(&redis.url(), "outage:").await.unwrap();
    SessionStore::ping(&store).await.unwrap();

    redis.stop().await;
    for _ in 0..3 {
        let started = Instant::now();
        let err = SessionStore::ping(&store).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Unavailable { store: "redis", .. }),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "{:?}",
            started.elapsed()
        );
        let err = store.access_status("j", Some("s"), "u").await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    }

    redis.start_again().await;
    let mut recovered = false;
    for _ in 0..50 {
        if SessionStore::ping(&store).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "the store did not reconnect after Redis came back"
    );
    store.revoke_jti("j", MINUTE_MS).await.unwrap();
    assert!(
        store
            .access_status("j", None, "u")
            .await
            .unwrap()
            .jti_revoked
    );
}

#[tokio::test]
async fn a_hung_redis_is_unavailable_within_two_seconds_and_recovers() {
    let redis = services::OwnedRedis::start().await;
    let store = RedisStore::connect(&redis.url(), "hung:").await.unwrap();
    store.revoke_jti("j", MINUTE_MS).await.unwrap();

    redis.pause();
    let started = Instant::now();
    let err = store.access_status("j", None, "u").await.unwrap_err();
    redis.resume();
    assert!(
        matches!(err, StoreError::Unavailable { store: "redis", .. }),
        "{err:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );

    let mut status = None;
    for _ in 0..50 {
        if let Ok(s) = store.access_status("j", None, "u").await {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(status.expect("Redis answers again").jti_revoked);
}

/// Requests that are given up (clients gone, request timeouts) drop their store futures at any
/// point; the MongoDB operations behind them must still leave the driver's pool usable. (They
/// used to stall the next operation for about 20 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_mongodb_operations_leave_the_store_usable() {
    let mongo = services::OwnedMongo::start().await;
    let store = Arc::new(
        tokend::store::mongo::MongoStore::connect(&mongo.uri(), "abandon")
            .await
            .unwrap(),
    );
    store.ensure_indexes().await.unwrap();
    let alice = user(&new_id(), "alice", "alice@example.com");
    UserStore::insert(&*store, &alice).await.unwrap();
    for round in 0..4u64 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64u64 {
            let (store, id) = (store.clone(), alice.id.clone());
            // Given up after 0-7 ms: some before they reach the server, most while waiting for
            // its answer behind the others.
            let patience = Duration::from_millis((i + round) % 8);
            tasks.spawn(async move {
                let _ = tokio::time::timeout(patience, store.by_id(&id)).await;
            });
        }
        while tasks.join_next().await.is_some() {}
    }
    // The next operations are answered; the bound is far above their normal few milliseconds
    // and far below the stall.
    for _ in 0..3 {
        let found =
            tokio::time::timeout(Duration::from_secs(8), store.by_email("alice@example.com"))
                .await
                .expect("the store answers after abandoned operations")
                .unwrap();
        assert_eq!(found, Some(alice.clone()));
    }
}

#[tokio::test]
async fn mongodb_down_is_unavailable_quickly_and_recovers_by_itself() {
    let mut mongo = services::OwnedMongo::start().await;
    let store = tokend::store::mongo::MongoStore::connect(&mongo.url(), "outage")
        .await
        .unwrap();
    store.ensure_indexes().await.unwrap();
    UserStore::insert(&store, &user("u-1", "alice", "alice@example.com"))
        .await
        .unwrap();

    mongo.stop().await;
    let started = Instant::now();
    let err = store.by_id("u-1").await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Unavailable {
                store: "mongodb",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    mongo.start_again().await;
    let mut found = None;
    for _ in 0..100 {
        if let Ok(u) = store.by_id("u-1").await {
            found = u;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(found.map(|u| u.username).as_deref(), Some("alice"));
}

mail_contract!(a_message_is_claimed_by_one_of_concurrent_workers_and_leased:
    a_message_is_claimed_by_one_of_concurrent_workers_and_leased_in_memory,
    a_message_is_claimed_by_one_of_concurrent_workers_and_leased_in_mongodb);
mail_contract!(a_failed_attempt_is_due_again_at_its_retry_time:
    a_failed_attempt_is_due_again_at_its_retry_time_in_memory,
    a_failed_attempt_is_due_again_at_its_retry_time_in_mongodb);
mail_contract!(a_delivered_token_stays_until_spent_once:
    a_delivered_token_stays_until_spent_once_in_memory,
    a_delivered_token_stays_until_spent_once_in_mongodb);
mail_contract!(an_expired_token_is_neither_sent_nor_taken:
    an_expired_token_is_neither_sent_nor_taken_in_memory,
    an_expired_token_is_neither_sent_nor_taken_in_mongodb);
mail_contract!(forgetting_a_users_tokens_drops_their_unsent_mail:
    forgetting_a_users_tokens_drops_their_unsent_mail_in_memory,
    forgetting_a_users_tokens_drops_their_unsent_mail_in_mongodb);

macro_rules! event_contract {
    ($contract:ident: $in_memory:ident, $in_mongodb:ident) => {
        #[tokio::test]
        async fn $in_memory() {
            $contract(Arc::new(MemoryEvents::new(100))).await;
        }

        #[tokio::test]
        async fn $in_mongodb() {
            $contract(Arc::new(services::mongo_store().await)).await;
        }
    };
}

event_contract!(events_are_paged_by_id_filtered_and_forgotten_when_expired:
    events_are_paged_by_id_filtered_and_forgotten_when_expired_in_memory,
    events_are_paged_by_id_filtered_and_forgotten_when_expired_in_mongodb);
mail_contract!(forgetting_all_of_a_users_tokens_spares_the_others:
    forgetting_all_of_a_users_tokens_spares_the_others_in_memory,
    forgetting_all_of_a_users_tokens_spares_the_others_in_mongodb);
