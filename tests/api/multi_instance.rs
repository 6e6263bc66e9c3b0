//! Several instances: three `tokend serve` processes of the real binary on one MongoDB-wire
//! server and one Redis (docs/operations.md, §6, §8, §9). What one instance issues, every other accepts;
//! what one revokes, every other refuses at once; rate-limit budgets are one budget; a due key
//! rotation happens once and every instance publishes the successor before it signs.
//!
//! Processes cannot share a manual clock, so the rotation test runs on short real settings
//! (rotation 20 s, prepublish 8 s, JWKS max-age 4 s, keyset reload 1 s) and polls, bounded,
//! for what it waits on.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokend::clock::{Clock, SystemClock};
use tokend::keys::{KeyStore, MongoKeyStore, StoredKeyset};

use crate::helpers::{claims, header, TEST_KEK};
use crate::services::{self, TokendProcess};

/// The confidential client of these tests (every grant) and the introspecting gateway.
pub const SVC_SECRET: &str = "svc-secret-0123456789abcdef0123456789abcdef";
pub const GATEWAY_SECRET: &str = "gateway-secret-0123456789abcdef0123456789ab";

/// A static clients file holding `svc` and `gateway` (secret stored as SHA-256).
pub fn clients_file() -> tempfile::NamedTempFile {
    let gateway_sha = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        GATEWAY_SECRET.as_bytes(),
    ));
    let clients = json!([
        {"client_id": "svc", "client_secret": SVC_SECRET,
         "grant_types": ["client_credentials", "password", "refresh_token"],
         "scopes": ["read", "write"]},
        {"client_id": "gateway", "client_secret_sha256": gateway_sha,
         "grant_types": ["client_credentials"], "scopes": ["introspect"]},
    ]);
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(clients.to_string().as_bytes()).unwrap();
    f.flush().unwrap();
    f
}

/// Production-mode settings for tokend processes: the shared MongoDB-wire server (a fresh
/// database) and Redis (a fresh prefix), cheap Argon2, one issuer, port 0.
pub fn process_env(redis_url: &str, mongo_uri: &str) -> HashMap<String, String> {
    [
        ("TOKEND_LISTEN", "127.0.0.1:0".to_string()),
        ("TOKEND_ISSUER", "http://tokend.test".to_string()),
        ("TOKEND_ARGON2", "m=256,t=1,p=1".to_string()),
        ("TOKEND_SIGNING_ALGS", "EdDSA".to_string()),
        ("TOKEND_LOG", "info".to_string()),
        ("TOKEND_SHUTDOWN_GRACE", "5s".to_string()),
        ("TOKEND_MONGODB_URI", mongo_uri.to_string()),
        ("TOKEND_MONGODB_DB", services::unique_name("tokend_test")),
        ("TOKEND_REDIS_URL", redis_url.to_string()),
        (
            "TOKEND_REDIS_PREFIX",
            format!("{}:", services::unique_name("tokend-test")),
        ),
        ("TOKEND_KEY_ENCRYPTION_KEY", TEST_KEK.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Three instances of one deployment, started together (they race to initialise the keyset).
pub struct Fleet {
    pub nodes: Vec<TokendProcess>,
    pub http: reqwest::Client,
    pub env: HashMap<String, String>,
    _cwd: tempfile::TempDir,
    _clients: tempfile::NamedTempFile,
}

impl Fleet {
    pub async fn start(adjust: impl FnOnce(&mut HashMap<String, String>)) -> Fleet {
        let clients = clients_file();
        let mut env = process_env(&services::redis_url(), &services::mongo_uri());
        env.insert(
            "TOKEND_CLIENTS_FILE".into(),
            clients.path().to_string_lossy().into_owned(),
        );
        adjust(&mut env);
        let cwd = tempfile::tempdir().unwrap();
        let (a, b, c) = tokio::join!(
            TokendProcess::start("a", &env, cwd.path()),
            TokendProcess::start("b", &env, cwd.path()),
            TokendProcess::start("c", &env, cwd.path()),
        );
        let fleet = Fleet {
            nodes: vec![a, b, c],
            http: reqwest::Client::new(),
            env,
            _cwd: cwd,
            _clients: clients,
        };
        for n in &fleet.nodes {
            fleet.wait_ready(n).await;
        }
        fleet
    }

    /// Polls `/readyz` of one instance until 200 (every algorithm has an active key).
    async fn wait_ready(&self, n: &TokendProcess) {
        for _ in 0..300 {
            let res = self.http.get(n.url("/readyz")).send().await.unwrap();
            if res.status() == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("instance {} did not become ready", n.name);
    }

    pub async fn post_json(&self, n: usize, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.nodes[n].url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn bearer(
        &self,
        n: usize,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::Response {
        self.http
            .request(method, self.nodes[n].url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn verify(&self, n: usize, access: &str) -> StatusCode {
        self.bearer(n, reqwest::Method::GET, "/auth/verify", access)
            .await
            .status()
    }

    pub async fn me(&self, n: usize, access: &str) -> StatusCode {
        self.bearer(n, reqwest::Method::GET, "/users/me", access)
            .await
            .status()
    }

    /// Registers a fresh user on instance `n`: (email, password).
    pub async fn register(&self, n: usize) -> (String, String) {
        let name = services::unique_name("u").replace('-', "")[..20].to_string();
        let email = format!("{name}@example.com");
        let password = "correct horse battery".to_string();
        let res = self
            .post_json(
                n,
                "/auth/register",
                &json!({"username": name, "email": email, "password": password}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        (email, password)
    }

    /// Logs in on instance `n`: (access, refresh).
    pub async fn login(&self, n: usize, email: &str, password: &str) -> (String, String) {
        let res = self
            .post_json(
                n,
                "/auth/login",
                &json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "login on {}",
            self.nodes[n].name
        );
        pair(res.json().await.unwrap())
    }

    /// Refreshes on instance `n`, expecting success.
    pub async fn refresh(&self, n: usize, refresh: &str) -> (String, String) {
        let res = self
            .bearer(n, reqwest::Method::POST, "/auth/token/refresh", refresh)
            .await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "refresh on {}",
            self.nodes[n].name
        );
        pair(res.json().await.unwrap())
    }

    pub async fn refresh_status(&self, n: usize, refresh: &str) -> StatusCode {
        self.bearer(n, reqwest::Method::POST, "/auth/token/refresh", refresh)
            .await
            .status()
    }

    pub async fn form(
        &self,
        n: usize,
        path: &str,
        form: &[(&str, &str)],
        basic: (&str, &str),
    ) -> reqwest::Response {
        self.http
            .post(self.nodes[n].url(path))
            .basic_auth(basic.0, Some(basic.1))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// RFC 7662 introspection on instance `n` as the gateway.
    pub async fn introspect(&self, n: usize, token: &str) -> Value {
        let res = self
            .form(
                n,
                "/oauth/introspect",
                &[("token", token)],
                ("gateway", GATEWAY_SECRET),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    /// The JWKS bytes and ETag of instance `n`.
    pub async fn jwks(&self, n: usize) -> (bytes::Bytes, String) {
        let res = self
            .http
            .get(self.nodes[n].url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let etag = res.headers()["etag"].to_str().unwrap().to_string();
        (res.bytes().await.unwrap(), etag)
    }

    /// The keyset as stored in MongoDB (read directly, without any tokend writing).
    pub async fn stored_keyset(&self) -> StoredKeyset {
        let mongo = tokend::store::mongo::MongoStore::connect(
            &self.env["TOKEND_MONGODB_URI"],
            &self.env["TOKEND_MONGODB_DB"],
        )
        .await
        .unwrap();
        let kek: [u8; 32] = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(TEST_KEK)
                .unwrap()
                .try_into()
                .unwrap()
        };
        MongoKeyStore::new(mongo.database(), kek)
            .load()
            .await
            .unwrap()
            .expect("a stored keyset")
    }

    /// `tokend_key_rotations_total{alg}` summed over the instances: keys created.
    pub async fn keys_created(&self, alg: &str) -> f64 {
        let mut total = 0.0;
        for n in &self.nodes {
            let text = self
                .http
                .get(n.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let key = format!("tokend_key_rotations_total{{alg=\"{alg}\"}} ");
            total += text
                .lines()
                .find_map(|l| l.strip_prefix(&key))
                .map_or(0.0, |v| v.trim().parse::<f64>().unwrap());
        }
        total
    }

    /// No instance died or logged a panic.
    pub fn assert_all_healthy(&mut self) {
        for n in &mut self.nodes {
            assert!(n.is_running(), "instance {} exited", n.name);
            let logs = n.logs();
            assert!(
                !logs.iter().any(|l| l.contains("panicked")),
                "instance {} panicked: {logs:#?}",
                n.name
            );
        }
    }
}

pub fn pair(body: Value) -> (String, String) {
    (
        body["access_token"].as_str().expect("access").to_string(),
        body["refresh_token"].as_str().expect("refresh").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_by_any_instance_is_accepted_by_every_other() {
    let mut fleet = Fleet::start(|_| {}).await;
    let (email, password) = fleet.register(0).await;

    // Seed API: log in on each instance; every token works on every instance.
    for issuer in 0..3 {
        let (access, refresh) = fleet.login(issuer, &email, &password).await;
        for n in 0..3 {
            assert_eq!(fleet.verify(n, &access).await, StatusCode::OK);
            assert_eq!(fleet.me(n, &access).await, StatusCode::OK);
        }
        // A refresh chain that hops instance to instance: one family, one successor at a time.
        let mut current = refresh;
        for hop in 1..=3 {
            let n = (issuer + hop) % 3;
            let (a, r) = fleet.refresh(n, &current).await;
            assert_eq!(claims(&r)["sid"], claims(&current)["sid"]);
            for m in 0..3 {
                assert_eq!(fleet.verify(m, &a).await, StatusCode::OK);
                // The superseded refresh token is inactive everywhere, the new one active.
                assert_eq!(fleet.introspect(m, &current).await["active"], false);
                assert_eq!(fleet.introspect(m, &r).await["active"], true);
            }
            current = r;
        }
    }

    // OAuth: a password grant on one instance, introspected, refreshed and revoked on others.
    let svc = ("svc", SVC_SECRET);
    let res = fleet
        .form(
            2,
            "/oauth/token",
            &[
                ("grant_type", "password"),
                ("username", &email),
                ("password", &password),
                ("scope", "read"),
            ],
            svc,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let (access, refresh) = pair(res.json().await.unwrap());
    for n in 0..3 {
        let i = fleet.introspect(n, &access).await;
        assert_eq!(i["active"], true, "{i}");
        assert_eq!(i["jti"], claims(&access)["jti"]);
        assert_eq!(i["client_id"], "svc");
    }
    let res = fleet
        .form(
            0,
            "/oauth/token",
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
            svc,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let (access2, refresh2) = pair(res.json().await.unwrap());
    assert_eq!(fleet.introspect(1, &refresh2).await["active"], true);

    // Revoking the access token on one instance: refused by every instance at once.
    let res = fleet
        .form(
            1,
            "/oauth/revoke",
            &[("token", &access2), ("token_type_hint", "access_token")],
            svc,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    for n in 0..3 {
        assert_eq!(fleet.verify(n, &access2).await, StatusCode::UNAUTHORIZED);
        assert_eq!(fleet.introspect(n, &access2).await["active"], false);
    }
    // Revoking the refresh token on another: the family is gone everywhere, its access tokens
    // too.
    let res = fleet
        .form(2, "/oauth/revoke", &[("token", &refresh2)], svc)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    for n in 0..3 {
        assert_eq!(fleet.introspect(n, &refresh2).await["active"], false);
        assert_eq!(fleet.verify(n, &access).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            fleet.refresh_status(n, &refresh2).await,
            StatusCode::UNAUTHORIZED
        );
    }
    // A client_credentials token from one instance, introspected by the others.
    let res = fleet
        .form(
            0,
            "/oauth/token",
            &[("grant_type", "client_credentials")],
            svc,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let cc: Value = res.json().await.unwrap();
    let cc = cc["access_token"].as_str().unwrap();
    for n in 1..3 {
        assert_eq!(fleet.introspect(n, cc).await["sub"], "svc");
    }
    fleet.assert_all_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_instance_is_seen_by_all_at_once() {
    let mut fleet = Fleet::start(|_| {}).await;
    let (email, password) = fleet.register(1).await;
    let (phone_access, phone_refresh) = fleet.login(0, &email, &password).await;
    let (laptop_access, laptop_refresh) = fleet.login(1, &email, &password).await;
    let (tablet_access, tablet_refresh) = fleet.login(2, &email, &password).await;
    let (phone_access2, phone_refresh2) = fleet.refresh(1, &phone_refresh).await;

    // Log the phone out on C: its tokens die on A and B with no delay (no polling here).
    let res = fleet
        .bearer(2, reqwest::Method::POST, "/auth/logout", &phone_access2)
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for n in 0..3 {
        assert_eq!(
            fleet.verify(n, &phone_access2).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(fleet.me(n, &phone_access).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            fleet.refresh_status(n, &phone_refresh2).await,
            StatusCode::UNAUTHORIZED
        );
        // The other devices are untouched.
        assert_eq!(fleet.verify(n, &laptop_access).await, StatusCode::OK);
        assert_eq!(fleet.verify(n, &tablet_access).await, StatusCode::OK);
    }
    let (laptop_access, _) = fleet.refresh(0, &laptop_refresh).await;

    // Log out everywhere on A: every session dies on every instance at once.
    let res = fleet
        .bearer(0, reqwest::Method::POST, "/auth/logout/all", &laptop_access)
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for n in 0..3 {
        for t in [&laptop_access, &tablet_access] {
            assert_eq!(fleet.verify(n, t).await, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(
            fleet.refresh_status(n, &tablet_refresh).await,
            StatusCode::UNAUTHORIZED
        );
    }
    // A new login afterwards works everywhere.
    let (again, _) = fleet.login(2, &email, &password).await;
    for n in 0..3 {
        assert_eq!(fleet.verify(n, &again).await, StatusCode::OK);
    }
    fleet.assert_all_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_budgets_are_shared_by_every_instance() {
    // Per hour, so nothing is refilled while the test runs.
    let mut fleet = Fleet::start(|env| {
        env.insert("TOKEND_RATE_LIMIT_IP".into(), "20/h".into());
        env.insert("TOKEND_RATE_LIMIT_ACCOUNT".into(), "3/h".into());
    })
    .await;
    // The account budget (3) over three instances: three logins in all, not three each.
    let (email, password) = fleet.register(0).await; // IP budget: 1 used
    let mut statuses = Vec::new();
    for i in 0..9 {
        let res = fleet
            .post_json(
                i % 3,
                "/auth/login",
                &json!({"email": email, "password": password}),
            )
            .await;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(res.headers().contains_key("retry-after"));
        }
        statuses.push(res.status().as_u16());
    } // IP budget: 10 used
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 429, 429, 429, 429],
        "one account budget across instances"
    );

    // The per-IP budget (20): 10 left, spent round-robin over the instances.
    let mut statuses = Vec::new();
    for i in 0..15 {
        let res = fleet.post_json(i % 3, "/auth/register", &json!({})).await;
        statuses.push(res.status().as_u16());
    }
    let expected: Vec<u16> = [vec![400; 10], vec![429; 5]].concat();
    assert_eq!(statuses, expected, "one IP budget across instances");
    // Every instance now refuses, whichever is asked.
    for n in 0..3 {
        let res = fleet.post_json(n, "/auth/register", &json!({})).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    fleet.assert_all_healthy();
}

/// Kids of `alg` in a JWKS document.
fn kids(jwks: &Value, alg: &str) -> BTreeSet<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["alg"] == alg)
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_rotation_happens_once_and_every_instance_publishes_it_before_it_signs() {
    const ALGS: [&str; 2] = ["EdDSA", "RS256"];
    let mut fleet = Fleet::start(|env| {
        env.insert("TOKEND_SIGNING_ALGS".into(), "EdDSA,RS256".into());
        env.insert("TOKEND_KEY_ROTATION".into(), "20s".into());
        env.insert("TOKEND_KEY_PREPUBLISH".into(), "8s".into());
        env.insert("TOKEND_JWKS_MAX_AGE".into(), "4s".into());
        env.insert("TOKEND_KEYSET_RELOAD".into(), "1s".into());
        env.insert("TOKEND_ACCESS_TTL".into(), "1m".into());
        env.insert("TOKEND_REFRESH_TTL".into(), "1m".into());
        env.insert("TOKEND_SESSION_TTL".into(), "1m".into());
        env.insert("TOKEND_RATE_LIMIT".into(), "off".into());
    })
    .await;
    let (email, password) = fleet.register(0).await;

    // The schedule as stored: the active key of each algorithm and the instant it retires.
    let start = fleet.stored_keyset().await;
    let now = SystemClock.now();
    let mut active: HashMap<&str, (String, i64)> = HashMap::new();
    for alg in ALGS {
        let k = start
            .keys
            .iter()
            .find(|k| k.alg.as_str() == alg && k.activates <= now && now < k.retires)
            .unwrap_or_else(|| panic!("no active {alg} key in {start:?}"));
        active.insert(alg, (k.kid.clone(), k.retires));
    }
    // The keys that sign or signed; anything else in JWKS is a successor (normally none yet,
    // unless start-up took longer than rotation - prepublish).
    let old: HashMap<&str, BTreeSet<String>> = ALGS
        .iter()
        .map(|alg| {
            let set = start
                .keys
                .iter()
                .filter(|k| k.alg.as_str() == *alg && k.activates <= now)
                .map(|k| k.kid.clone())
                .collect();
            (*alg, set)
        })
        .collect();
    let (_, switch) = active["EdDSA"];
    let before_switch = fleet.login(1, &email, &password).await.0;

    // Poll every instance's JWKS until all three serve identical bytes naming a successor for
    // every algorithm.
    let deadline = switch + 30;
    let (seen_at, jwks) = loop {
        assert!(
            SystemClock.now() < deadline,
            "no common JWKS with successors by {deadline}"
        );
        let docs = [
            fleet.jwks(0).await,
            fleet.jwks(1).await,
            fleet.jwks(2).await,
        ];
        let all_same = docs.iter().all(|d| d == &docs[0]);
        let jwks: Value = serde_json::from_slice(&docs[0].0).unwrap();
        let has_successors = ALGS
            .iter()
            .all(|alg| kids(&jwks, alg).iter().any(|k| !old[alg].contains(k)));
        if all_same && has_successors {
            break (SystemClock.now_ms(), jwks);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stored = fleet.stored_keyset().await;
    let mut successor: HashMap<&str, String> = HashMap::new();
    for alg in ALGS {
        let new: Vec<String> = kids(&jwks, alg)
            .into_iter()
            .filter(|k| !old[alg].contains(k))
            .collect();
        assert_eq!(new.len(), 1, "exactly one new {alg} key: {jwks}");
        let k = stored.keys.iter().find(|k| k.kid == new[0]).unwrap();
        let (_, retires) = &active[alg];
        assert_eq!(
            k.activates, *retires,
            "the successor takes over at the switch"
        );
        assert!(
            seen_at < k.activates * 1000,
            "{alg}: every instance published {} at {seen_at} ms, after it began signing at {} s",
            k.kid,
            k.activates
        );
        successor.insert(alg, new[0].clone());
        // One rotation: the keys created across the three instances are the initial key and
        // this successor, whichever instance made them.
        assert_eq!(fleet.keys_created(alg).await, 2.0, "{alg}");
    }

    // Logins on every instance until each signs with the successor; no token is ever signed by
    // a key that was not active at its `iat`.
    let new_kid = successor["EdDSA"].clone();
    let (old_kid, _) = active["EdDSA"].clone();
    let mut switched = [false; 3];
    let mut after_switch = None;
    while !switched.iter().all(|s| *s) {
        assert!(
            SystemClock.now() < deadline,
            "instances still sign with the old key at {}",
            SystemClock.now()
        );
        for (n, done) in switched.iter_mut().enumerate() {
            let (access, _) = fleet.login(n, &email, &password).await;
            let kid = header(&access)["kid"].as_str().unwrap().to_string();
            let iat = claims(&access)["iat"].as_i64().unwrap();
            if kid == new_kid {
                assert!(iat >= switch, "signed by the successor at {iat} < {switch}");
                *done = true;
                after_switch = Some(access);
            } else {
                assert_eq!(kid, old_kid);
                assert!(
                    iat < switch,
                    "signed by the retired key at {iat} >= {switch}"
                );
            }
        }
        if !switched.iter().all(|s| *s) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Tokens of both keys verify on every instance after the switch.
    let after_switch = after_switch.unwrap();
    for n in 0..3 {
        assert_eq!(fleet.verify(n, &before_switch).await, StatusCode::OK);
        assert_eq!(fleet.verify(n, &after_switch).await, StatusCode::OK);
    }
    let docs = [
        fleet.jwks(0).await,
        fleet.jwks(1).await,
        fleet.jwks(2).await,
    ];
    assert!(
        docs.iter().all(|d| d == &docs[0]),
        "identical JWKS after the switch"
    );
    fleet.assert_all_healthy();
}
