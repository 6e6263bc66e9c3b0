//! Faults under load (docs/sessions.md, §8, §9): a store stopped and restarted while clients keep
//! logging in and refreshing, and tokend killed with SIGKILL in the middle of key rotations.
//!
//! The load is a few client tasks, each a loop bounded in count: log in (when it holds no
//! family), call `/users/me` and `/auth/verify` with its access token, fetch JWKS, refresh, and
//! present the token it just exchanged once more. Every answer is classified by the phase of
//! the outage it was sent and received in (read before and after the request), so "during the
//! outage" means sent after the store was down and answered before it was started again.
//!
//! What must hold, checked on every answer and collected as violations:
//! - no 5xx but 503, and every 503 says `temporarily_unavailable`;
//! - during a Redis outage every route that needs Redis answers 503 (never 200: nothing is
//!   accepted unchecked); during a MongoDB outage JWKS and `/auth/verify` keep answering 200
//!   from memory, and login, refresh and `/users/me` answer 503;
//! - no fork: two 200 answers for one refresh token carry the same successor, and every
//!   successor belongs to the family of the token presented;
//! - no family lost: a client's chain of refresh tokens continues, or is refused (401
//!   `invalid_grant`) only where that is the documented outcome — the family was written to a
//!   Redis that restarted without persistence, or the client's previous exchange of that token
//!   got no answer (503), so the exchange may have happened and the token is spent;
//! - full service after the store returns: every client refreshes successfully again (bounded
//!   poll), and the process neither died nor logged a panic.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::claims;
use crate::multi_instance::{pair, process_env};
use crate::services::{self, OwnedMongo, OwnedRedis, TokendProcess};

const UP: u8 = 0;
const DOWN: u8 = 1;
const RESTARTING: u8 = 2;
const BACK: u8 = 3;
const DONE: u8 = 4;
const PHASES: usize = 5;

const CLIENTS: usize = 4;
/// Iterations per client at most (the controller normally ends the run much earlier).
const MAX_ITERATIONS: usize = 5_000;
/// How long the controller waits for each condition.
const WAIT: Duration = Duration::from_secs(60);

/// Which store the test takes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Redis killed and restarted empty (no persistence).
    RedisVolatile,
    /// Redis killed and restarted from its append-only file (`appendfsync always`).
    RedisPersistent,
    /// Redis frozen (SIGSTOP: connections open, no answers) and thawed.
    RedisHung,
    /// The MongoDB-wire server stopped and restarted (its data on disk).
    Mongo,
}

impl Fault {
    /// Whether `route` needs the store this fault takes away.
    fn needs_store(self, route: &str) -> bool {
        match self {
            Fault::RedisVolatile | Fault::RedisPersistent | Fault::RedisHung => route != "jwks",
            // A refresh reads the roles from Redis, not MongoDB.
            Fault::Mongo => matches!(route, "login" | "me"),
        }
    }
}

/// What one client holds.
struct Family {
    sid: String,
    access: String,
    refresh: String,
    /// The phase its login was sent in.
    born: u8,
    /// The last exchange of `refresh` got no answer (503): it may have happened.
    ambiguous: bool,
}

/// (phase sent, phase answered, route, status)
type AnswerKey = (u8, u8, &'static str, u16);

struct Load {
    fault: Fault,
    phase: AtomicU8,
    http: reqwest::Client,
    base: String,
    /// Every successful exchange: presented refresh token -> successor refresh token.
    successors: Mutex<HashMap<String, String>>,
    violations: Mutex<Vec<String>>,
    /// (phase sent, phase answered, route, status) -> count.
    counts: Mutex<BTreeMap<AnswerKey, usize>>,
    /// Per client and phase: successful refreshes sent in that phase.
    refreshed: Vec<[AtomicUsize; PHASES]>,
    /// Per client: answers entirely inside the outage.
    during_outage: Vec<AtomicUsize>,
    /// Families refused where that is allowed, by reason.
    refused: Mutex<BTreeMap<&'static str, usize>>,
}

impl Load {
    fn violation(&self, v: String) {
        self.violations.lock().unwrap().push(v);
    }

    /// Sends one request and checks the rules every answer follows.
    async fn send(
        &self,
        client: usize,
        route: &'static str,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Option<(StatusCode, Value, u8, u8)> {
        let sent = self.phase.load(Ordering::SeqCst);
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = match req.send().await {
            Ok(res) => res,
            Err(e) => {
                self.violation(format!("client {client} {route}: no answer: {e}"));
                return None;
            }
        };
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        let answered = self.phase.load(Ordering::SeqCst);
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        *self
            .counts
            .lock()
            .unwrap()
            .entry((sent, answered, route, status.as_u16()))
            .or_default() += 1;
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            self.violation(format!("client {client} {route}: {status} {text}"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE && body["error"] != "temporarily_unavailable" {
            self.violation(format!("client {client} {route}: 503 body {text}"));
        }
        if sent == DOWN && answered == DOWN {
            self.during_outage[client].fetch_add(1, Ordering::SeqCst);
            let expected = if self.fault.needs_store(route) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            if status != expected {
                self.violation(format!(
                    "client {client} {route} during the outage: {status} (expected {expected}) {text}"
                ));
            }
        }
        Some((status, body, sent, answered))
    }

    /// Whether a refusal of `f` is one of the allowed outcomes; counts it.
    fn refusal_allowed(&self, f: &Family) -> bool {
        let reason = if self.fault == Fault::RedisVolatile && f.born < RESTARTING {
            "written to the Redis that restarted empty"
        } else if f.ambiguous && self.fault != Fault::Mongo {
            // (A refresh does not need MongoDB: a MongoDB outage leaves no exchange without
            // an answer, and ends no family.)
            "exchange without an answer"
        } else {
            return false;
        };
        *self.refused.lock().unwrap().entry(reason).or_default() += 1;
        true
    }

    /// One client: a bounded loop of logins, protected calls and refreshes.
    async fn client(self: Arc<Self>, c: usize, email: String, password: String) {
        let mut family: Option<Family> = None;
        for _ in 0..MAX_ITERATIONS {
            if self.phase.load(Ordering::SeqCst) == DONE {
                return;
            }
            let mut unavailable = false;
            if let Some((status, _, _, _)) = self
                .send(c, "jwks", Method::GET, "/.well-known/jwks.json", None, None)
                .await
            {
                if status != StatusCode::OK {
                    self.violation(format!("client {c} jwks: {status}"));
                }
            }
            let Some(f) = family.as_mut() else {
                let body = json!({"email": email, "password": password});
                let Some((status, body, sent, _)) = self
                    .send(c, "login", Method::POST, "/auth/login", None, Some(body))
                    .await
                else {
                    return;
                };
                match status {
                    StatusCode::OK => {
                        let (access, refresh) = pair(body);
                        family = Some(Family {
                            sid: claims(&refresh)["sid"].as_str().unwrap().to_string(),
                            access,
                            refresh,
                            born: sent,
                            ambiguous: false,
                        });
                    }
                    StatusCode::SERVICE_UNAVAILABLE => unavailable = true,
                    other => self.violation(format!("client {c} login: {other} {body}")),
                }
                if unavailable {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                continue;
            };

            let mut lost = false;
            for (route, path) in [("me", "/users/me"), ("verify", "/auth/verify")] {
                let Some((status, body, _, _)) = self
                    .send(c, route, Method::GET, path, Some(&f.access), None)
                    .await
                else {
                    return;
                };
                match status {
                    StatusCode::OK => {}
                    StatusCode::SERVICE_UNAVAILABLE => unavailable = true,
                    // An access token is refused only when its family was refused too (it
                    // is then dropped below), never on its own.
                    StatusCode::UNAUTHORIZED if self.refusal_allowed(f) => lost = true,
                    other => {
                        self.violation(format!("client {c} {route}: {other} {body}"));
                    }
                }
            }

            let presented = f.refresh.clone();
            let Some((status, body, sent, _)) = self
                .send(
                    c,
                    "refresh",
                    Method::POST,
                    "/auth/token/refresh",
                    Some(&presented),
                    None,
                )
                .await
            else {
                return;
            };
            match status {
                StatusCode::OK => {
                    let (access, refresh) = pair(body);
                    self.record_successor(c, f, &presented, &refresh);
                    f.access = access;
                    f.refresh = refresh;
                    f.ambiguous = false;
                    self.refreshed[c][usize::from(sent)].fetch_add(1, Ordering::SeqCst);
                    // The token just exchanged, once more: inside the leeway it must give the
                    // same successor (never a second one).
                    if let Some((status, body, _, _)) = self
                        .send(
                            c,
                            "replay",
                            Method::POST,
                            "/auth/token/refresh",
                            Some(&presented),
                            None,
                        )
                        .await
                    {
                        match status {
                            StatusCode::OK => {
                                let (_, again) = pair(body);
                                self.record_successor(c, f, &presented, &again);
                            }
                            StatusCode::SERVICE_UNAVAILABLE => {}
                            StatusCode::UNAUTHORIZED if self.refusal_allowed(f) => lost = true,
                            other => self.violation(format!("client {c} replay: {other} {body}")),
                        }
                    }
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    f.ambiguous = true;
                    unavailable = true;
                }
                StatusCode::UNAUTHORIZED if self.refusal_allowed(f) => lost = true,
                other => self.violation(format!(
                    "client {c} refresh: {other} {body} (family {} born in phase {})",
                    f.sid, f.born
                )),
            }
            if lost {
                family = None;
            }
            if unavailable {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.violation(format!("client {c} ran out of iterations"));
    }

    /// Checks an exchange against every earlier one (no fork) and remembers it.
    fn record_successor(&self, c: usize, f: &Family, presented: &str, successor: &str) {
        if claims(successor)["sid"].as_str() != Some(f.sid.as_str()) {
            self.violation(format!("client {c}: a successor of another family"));
        }
        let mut map = self.successors.lock().unwrap();
        match map.get(presented) {
            Some(earlier) if earlier != successor => {
                self.violation(format!("client {c}: two successors of one refresh token"));
            }
            Some(_) => {}
            None => {
                map.insert(presented.to_string(), successor.to_string());
            }
        }
    }

    /// Polls (bounded) until `done` holds.
    async fn wait_for(&self, what: &str, done: impl Fn(&Load) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not within {WAIT:?}: {what}; violations so far: {:#?}; counts: {:#?}",
                self.violations.lock().unwrap(),
                self.counts.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn every_client_refreshed_in(&self, phase: u8, n: usize) -> bool {
        self.refreshed
            .iter()
            .all(|r| r[usize::from(phase)].load(Ordering::SeqCst) >= n)
    }
}

/// The store a fault test takes away.
enum Victim {
    Redis(OwnedRedis),
    HungRedis(OwnedRedis),
    Mongo(OwnedMongo),
}

impl Victim {
    async fn stop(&mut self) {
        match self {
            Victim::Redis(r) => r.stop().await,
            Victim::HungRedis(r) => r.pause(),
            Victim::Mongo(m) => m.stop().await,
        }
    }
    async fn start_again(&mut self) {
        match self {
            Victim::Redis(r) => r.start_again().await,
            Victim::HungRedis(r) => r.resume(),
            Victim::Mongo(m) => m.start_again().await,
        }
    }
}

async fn store_outage_under_load(fault: Fault) {
    let mut victim = match fault {
        Fault::RedisVolatile => Victim::Redis(OwnedRedis::start().await),
        Fault::RedisPersistent => Victim::Redis(OwnedRedis::start_persistent().await),
        Fault::RedisHung => Victim::HungRedis(OwnedRedis::start().await),
        Fault::Mongo => Victim::Mongo(OwnedMongo::start().await),
    };
    let (redis_url, mongo_uri) = match &victim {
        Victim::Redis(r) | Victim::HungRedis(r) => (r.url(), services::mongo_uri()),
        Victim::Mongo(m) => (services::redis_url(), m.uri()),
    };
    let mut env = process_env(&redis_url, &mongo_uri);
    // Generous limits (they stay on: the limiter is one more Redis caller), and a leeway long
    // enough that the replay of a token just exchanged always falls inside it.
    env.insert("TOKEND_RATE_LIMIT_IP".into(), "1000000/min".into());
    env.insert("TOKEND_RATE_LIMIT_ACCOUNT".into(), "1000000/min".into());
    env.insert("TOKEND_REFRESH_REUSE_LEEWAY".into(), "10s".into());
    let cwd = tempfile::tempdir().unwrap();
    let mut tokend = TokendProcess::start("outage", &env, cwd.path()).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // Users, and one session logged out before the outage.
    let mut users = Vec::new();
    for _ in 0..CLIENTS {
        let email = register(&http, &tokend).await;
        users.push((email, PASSWORD.to_string()));
    }
    let res = http
        .post(tokend.url("/auth/login"))
        .json(&json!({"email": users[0].0, "password": users[0].1}))
        .send()
        .await
        .unwrap();
    let (logged_out, _) = pair(res.json().await.unwrap());
    let res = http
        .post(tokend.url("/auth/logout"))
        .bearer_auth(&logged_out)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    let load = Arc::new(Load {
        fault,
        phase: AtomicU8::new(UP),
        http: http.clone(),
        base: tokend.base.clone(),
        successors: Mutex::new(HashMap::new()),
        violations: Mutex::new(Vec::new()),
        counts: Mutex::new(BTreeMap::new()),
        refreshed: (0..CLIENTS).map(|_| Default::default()).collect(),
        during_outage: (0..CLIENTS).map(|_| AtomicUsize::new(0)).collect(),
        refused: Mutex::new(BTreeMap::new()),
    });
    let clients: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(c, (e, p))| tokio::spawn(load.clone().client(c, e.clone(), p.clone())))
        .collect();

    load.wait_for("every client refreshes before the outage", |l| {
        l.every_client_refreshed_in(UP, 10)
    })
    .await;
    victim.stop().await;
    load.phase.store(DOWN, Ordering::SeqCst);
    // A dead MongoDB or a hung Redis costs each request a 2 s timeout: fewer answers.
    let answers = if matches!(fault, Fault::Mongo | Fault::RedisHung) {
        8
    } else {
        20
    };
    load.wait_for("every client is answered during the outage", |l| {
        l.during_outage
            .iter()
            .all(|n| n.load(Ordering::SeqCst) >= answers)
    })
    .await;
    load.phase.store(RESTARTING, Ordering::SeqCst);
    victim.start_again().await;
    load.phase.store(BACK, Ordering::SeqCst);
    load.wait_for(
        "every client refreshes again after the store returns",
        |l| l.every_client_refreshed_in(BACK, 10),
    )
    .await;
    load.phase.store(DONE, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    let violations = load.violations.lock().unwrap().clone();
    let counts = load.counts.lock().unwrap().clone();
    let refused = load.refused.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "{fault:?}: {violations:#?}\ncounts (sent, answered, route, status): {counts:#?}"
    );
    // A persistent Redis and MongoDB lose nothing: a refusal is only ever the spent token of
    // an exchange whose answer was lost.
    if fault != Fault::RedisVolatile {
        assert!(
            !refused.contains_key("written to the Redis that restarted empty"),
            "{refused:?}"
        );
    }
    // Revocations made before the outage still hold after it, where Redis kept them.
    if fault != Fault::RedisVolatile {
        let res = http
            .get(tokend.url("/auth/verify"))
            .bearer_auth(&logged_out)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    assert!(tokend.is_running(), "tokend exited");
    let logs = tokend.logs();
    assert!(
        !logs.iter().any(|l| l.contains("panicked")),
        "tokend panicked: {logs:#?}"
    );
    eprintln!(
        "{fault:?}: refused {refused:?}; answers (sent, answered, route, status): {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_empty_under_load() {
    store_outage_under_load(Fault::RedisVolatile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_from_its_aof_under_load() {
    store_outage_under_load(Fault::RedisPersistent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_and_thawed_under_load() {
    store_outage_under_load(Fault::RedisHung).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_stopped_and_restarted_under_load() {
    store_outage_under_load(Fault::Mongo).await;
}

/// Kills `tokend` (SIGKILL) as soon as a temporary file of a keyset write shows up in `dir`,
/// that is in the middle of writing a rotation, or after `fallback` if none shows up. Returns
/// whether it caught a write.
fn kill_during_a_keyset_write(tokend: &mut TokendProcess, dir: &std::path::Path) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < deadline {
        let writing = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            })
            .unwrap_or(false);
        if writing {
            tokend.kill();
            return true;
        }
        std::thread::yield_now();
    }
    tokend.kill();
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_key_rotations_leaves_an_intact_keyset() {
    // Keys on a real disk (fsync takes time there, so a write can be caught half done), and a
    // schedule that writes a rotation for both algorithms every two seconds. Tokens and retired
    // keys outlive the test (retention = 5 min + 30 s).
    let scratch = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp");
    std::fs::create_dir_all(&scratch).unwrap();
    let keys = tempfile::tempdir_in(&scratch).unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let env: HashMap<String, String> = [
        ("TOKEND_LISTEN", "127.0.0.1:0"),
        ("TOKEND_ISSUER", "http://tokend.test"),
        ("TOKEND_ARGON2", "m=256,t=1,p=1"),
        ("TOKEND_SIGNING_ALGS", "EdDSA,RS256"),
        // 2048-bit RSA: key generation must fit in the two-second rotation even on a busy
        // machine (a debug-build 3072-bit key can take longer than that).
        ("TOKEND_RSA_BITS", "2048"),
        ("TOKEND_KEY_ROTATION", "2s"),
        ("TOKEND_KEY_PREPUBLISH", "2s"),
        ("TOKEND_JWKS_MAX_AGE", "1s"),
        ("TOKEND_KEYSET_RELOAD", "1s"),
        ("TOKEND_ACCESS_TTL", "5m"),
        ("TOKEND_REFRESH_TTL", "5m"),
        ("TOKEND_SESSION_TTL", "5m"),
        ("TOKEND_RATE_LIMIT", "off"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([(
        "TOKEND_KEYS_DIR".to_string(),
        keys.path().to_string_lossy().into_owned(),
    )])
    .collect();
    let http = reqwest::Client::new();
    let mut minted: Vec<String> = Vec::new();
    let mut published: std::collections::BTreeSet<String> = Default::default();
    let mut caught = 0;
    const ROUNDS: usize = 10;
    for round in 0..=ROUNDS {
        // Starting at all is the first check: a torn keyset stops start-up.
        let mut tokend = TokendProcess::start(&format!("crash-{round}"), &env, cwd.path()).await;
        let mut ready = false;
        for _ in 0..200 {
            let res = http.get(tokend.url("/readyz")).send().await.unwrap();
            if res.status() == StatusCode::OK {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "round {round}: no active key for every algorithm");
        let jwks: Value = http
            .get(tokend.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let now_published: std::collections::BTreeSet<String> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect();
        let missing: Vec<&String> = published.difference(&now_published).collect();
        assert!(
            missing.is_empty(),
            "round {round}: keys published before the crash are gone: {missing:?}"
        );
        for (i, token) in minted.iter().enumerate() {
            let res = http
                .get(tokend.url("/auth/verify"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(
                res.status(),
                StatusCode::OK,
                "round {round}: token {i} (kid {}) no longer verifies",
                crate::helpers::header(token)["kid"]
            );
        }
        published.extend(now_published);
        if round == ROUNDS {
            break;
        }
        // A token signed now, to be verified after every later crash.
        let email = register(&http, &tokend).await;
        let res = http
            .post(tokend.url("/auth/login"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        minted.push(pair(res.json().await.unwrap()).0);

        if round % 3 == 2 {
            // Somewhere in the cycle: key generation, a write, or idle.
            let delay = (round as u64 * 379) % 2000;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            tokend.kill();
        } else if kill_during_a_keyset_write(&mut tokend, keys.path()) {
            caught += 1;
        }
    }
    // The manifest names only keys whose private key file is there.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(keys.path().join("manifest.json")).unwrap()).unwrap();
    for k in manifest["keys"].as_array().unwrap() {
        if k["revoked"] == false {
            let kid = k["kid"].as_str().unwrap();
            assert!(keys.path().join(format!("{kid}.pem")).exists(), "{kid}");
        }
    }
    eprintln!(
        "{ROUNDS} crashes, {caught} of them with a keyset write in progress; {} keys published, {} tokens checked",
        published.len(),
        minted.len()
    );
}

const PASSWORD: &str = "correct horse battery";

/// Registers a new user on `tokend` with [`PASSWORD`]; returns the email.
async fn register(http: &reqwest::Client, tokend: &TokendProcess) -> String {
    let name = services::unique_name("u").replace('-', "")[..20].to_string();
    let email = format!("{name}@example.com");
    let res = http
        .post(tokend.url("/auth/register"))
        .json(&json!({"username": name, "email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    email
}
