//! Bounded state (docs/sessions.md, §9): a soak of logins, refreshes, reuse detections, logouts and
//! logouts-everywhere against a `tokend` process in production mode, with short lifetimes
//! (access 3 s, refresh and session 5 s, so revocation records live 35 s), paced and bounded in
//! time (about two minutes in all, loopback only).
//!
//! "Levels off", as asserted here for tokend's resident memory (`VmRSS`) and file descriptors,
//! sampled once a second over the measured window split in two halves:
//! `max(second half) <= max(first half) * 1.2 + slack`. Anything that grows with the number of
//! requests (a cache without a bound, a leaked connection) doubles between the halves and fails
//! it; a plateau, however noisy, passes. The first half starts after a warm-up, and is as long
//! as the longest record lifetime, so the plateau is reached within it. The Redis keys under
//! the test's prefix follow the same rule per unit of load: their count on a plateau is the
//! request rate times the record lifetime, and the clients keep a fixed pace that a busy
//! machine may not hold, so each half's maximum is divided by the iterations done in that half
//! before the two are compared.
//!
//! File descriptors: the connections the load opened are all closed again once its client is
//! gone (no socket to tokend's port but the listener), and the process holds no more
//! descriptors than after the warm-up (its store connection pools already at working size).
//! Once the load stops, every key under the prefix expires (bounded poll).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::multi_instance::{pair, process_env};
use crate::services::{self, TokendProcess};

const CLIENTS: usize = 4;
/// One iteration per client per `PACE` at most (a fixed rate that leaves CPU to the suite).
const PACE: Duration = Duration::from_millis(200);
const WARM_UP: Duration = Duration::from_secs(10);
/// Each half of the measured window: the longest record lifetime (35 s) and a little more.
const HALF: Duration = Duration::from_secs(38);
/// How long the keys may take to expire once the load stops (35 s lifetime, then Redis's lazy
/// and active expiry).
const DRAIN: Duration = Duration::from_secs(60);
/// Iterations per client at most.
const MAX_ITERATIONS: usize = 5_000;
/// Slack on top of 1.2 x: keys (a handful of users in flight) and memory (allocator noise).
const KEY_SLACK: usize = 50;
const RSS_SLACK_KIB: u64 = 8 * 1024;

/// Sockets of `pid` bound to local port `port` (its listener and the connections it accepted).
fn sockets_on_port(pid: u32, port: u16) -> usize {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                if let Some(inode) = cols.get(9) {
                    inodes.insert(format!("socket:[{inode}]"));
                }
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|l| inodes.contains(&l.to_string_lossy().into_owned()))
                .count()
        })
        .unwrap_or(0)
}

/// Polls until tokend holds no connection on its port but the listener (bounded).
async fn wait_connections_closed(tokend: &TokendProcess) {
    for _ in 0..200 {
        if sockets_on_port(tokend.pid(), tokend.addr.port()) <= 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "tokend still holds {} sockets on its port after the clients left",
        sockets_on_port(tokend.pid(), tokend.addr.port())
    );
}

struct Soak {
    http: reqwest::Client,
    base: String,
    stop: AtomicBool,
    /// Iterations completed by all clients.
    iterations: AtomicUsize,
    /// (step, status) -> count.
    answers: Mutex<BTreeMap<(&'static str, u16), usize>>,
    unexpected: Mutex<Vec<String>>,
}

impl Soak {
    async fn call(
        &self,
        step: &'static str,
        expected: StatusCode,
        req: reqwest::RequestBuilder,
    ) -> Option<serde_json::Value> {
        let res = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.unexpected
                    .lock()
                    .unwrap()
                    .push(format!("{step}: no answer: {e}"));
                return None;
            }
        };
        let status = res.status();
        *self
            .answers
            .lock()
            .unwrap()
            .entry((step, status.as_u16()))
            .or_default() += 1;
        let body = res.json().await.unwrap_or(serde_json::Value::Null);
        if status != expected {
            self.unexpected
                .lock()
                .unwrap()
                .push(format!("{step}: {status} (expected {expected}) {body}"));
            return None;
        }
        Some(body)
    }

    async fn register(&self) -> Option<(String, String)> {
        let name = services::unique_name("s").replace('-', "")[..20].to_string();
        let email = format!("{name}@example.com");
        let body = json!({"username": name, "email": email, "password": "soak password 1"});
        self.call(
            "register",
            StatusCode::CREATED,
            self.http
                .post(format!("{}/auth/register", self.base))
                .json(&body),
        )
        .await?;
        Some((email, "soak password 1".to_string()))
    }

    /// One client: log in, refresh three times (reading `/users/me` each time), then end the
    /// session one of three ways; a new user every tenth round.
    async fn client(self: Arc<Self>) {
        let Some(mut user) = self.register().await else {
            return;
        };
        let mut pace = tokio::time::interval(PACE);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for i in 0..MAX_ITERATIONS {
            pace.tick().await;
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            if i % 10 == 9 {
                match self.register().await {
                    Some(u) => user = u,
                    None => return,
                }
            }
            let base = &self.base;
            let login = json!({"email": user.0, "password": user.1});
            let Some(body) = self
                .call(
                    "login",
                    StatusCode::OK,
                    self.http.post(format!("{base}/auth/login")).json(&login),
                )
                .await
            else {
                return;
            };
            let (mut access, mut refresh) = pair(body);
            let first = refresh.clone();
            for _ in 0..3 {
                let me = self
                    .http
                    .get(format!("{base}/users/me"))
                    .bearer_auth(&access);
                self.call("me", StatusCode::OK, me).await;
                let req = self
                    .http
                    .post(format!("{base}/auth/token/refresh"))
                    .bearer_auth(&refresh);
                let Some(body) = self.call("refresh", StatusCode::OK, req).await else {
                    return;
                };
                (access, refresh) = pair(body);
            }
            let (step, req, expected) = match i % 4 {
                // Reuse of the first, long spent refresh token: the family is revoked.
                0 => (
                    "reuse",
                    self.http
                        .post(format!("{base}/auth/token/refresh"))
                        .bearer_auth(&first),
                    StatusCode::UNAUTHORIZED,
                ),
                1 => (
                    "logout_all",
                    self.http
                        .post(format!("{base}/auth/logout/all"))
                        .bearer_auth(&access),
                    StatusCode::NO_CONTENT,
                ),
                _ => (
                    "logout",
                    self.http
                        .post(format!("{base}/auth/logout"))
                        .bearer_auth(&access),
                    StatusCode::NO_CONTENT,
                ),
            };
            self.call(step, expected, req).await;
            self.iterations.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Runs the load until told to stop; returns the handle to stop it.
fn start_load(tokend: &TokendProcess) -> (Arc<Soak>, Vec<tokio::task::JoinHandle<()>>) {
    let soak = Arc::new(Soak {
        http: reqwest::Client::new(),
        base: tokend.base.clone(),
        stop: AtomicBool::new(false),
        iterations: AtomicUsize::new(0),
        answers: Mutex::new(BTreeMap::new()),
        unexpected: Mutex::new(Vec::new()),
    });
    let tasks = (0..CLIENTS)
        .map(|_| tokio::spawn(soak.clone().client()))
        .collect();
    (soak, tasks)
}

async fn stop_load(soak: Arc<Soak>, tasks: Vec<tokio::task::JoinHandle<()>>) -> Arc<Soak> {
    soak.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    soak
}

/// `max(second) <= max(first) * 1.2 + slack`
fn levels_off(first: &[u64], second: &[u64], slack: u64) -> bool {
    let (a, b) = (
        first.iter().copied().max().unwrap_or(0),
        second.iter().copied().max().unwrap_or(0),
    );
    b * 5 <= a * 6 + slack * 5
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_levels_off_in_redis_keys_memory_and_file_descriptors() {
    let redis = services::redis_url();
    let mut env = process_env(&redis, &services::mongo_uri());
    for (k, v) in [
        ("TOKEND_ACCESS_TTL", "3s"),
        ("TOKEND_REFRESH_TTL", "5s"),
        ("TOKEND_SESSION_TTL", "5s"),
        ("TOKEND_REFRESH_REUSE_LEEWAY", "0s"),
        ("TOKEND_RATE_LIMIT_IP", "1000000/min"),
        ("TOKEND_RATE_LIMIT_ACCOUNT", "1000000/min"),
        ("TOKEND_LOG", "warn,tokend::startup=info"),
    ] {
        env.insert(k.into(), v.into());
    }
    let prefix = env["TOKEND_REDIS_PREFIX"].clone();
    let cwd = tempfile::tempdir().unwrap();
    let mut tokend = TokendProcess::start("soak", &env, cwd.path()).await;

    // Warm-up: the same load, then every connection of it closed: the baseline.
    let (soak, tasks) = start_load(&tokend);
    tokio::time::sleep(WARM_UP).await;
    let warm = stop_load(soak, tasks).await;
    assert!(
        warm.unexpected.lock().unwrap().is_empty(),
        "{:#?}",
        warm.unexpected.lock().unwrap()
    );
    drop(warm);
    wait_connections_closed(&tokend).await;
    let fds_before = tokend.fd_count();

    // The measured window, sampled once a second.
    let (soak, tasks) = start_load(&tokend);
    let (mut keys, mut rss, mut fds, mut done) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let samples = 2 * HALF.as_secs();
    for _ in 0..samples {
        tokio::time::sleep(Duration::from_secs(1)).await;
        keys.push(services::redis_keys(&redis, &prefix).await.len() as u64);
        rss.push(tokend.rss_kib());
        fds.push(tokend.fd_count() as u64);
        done.push(soak.iterations.load(Ordering::SeqCst) as u64);
        assert!(tokend.is_running(), "tokend exited during the soak");
    }
    let soak = stop_load(soak, tasks).await;
    let answers = soak.answers.lock().unwrap().clone();
    let unexpected = soak.unexpected.lock().unwrap().clone();
    drop(soak);
    let half = keys.len() / 2;
    let report = format!(
        "keys {keys:?}\niterations {done:?}\nrss KiB {rss:?}\nfds {fds:?} (after warm-up {fds_before})\nanswers {answers:?}"
    );
    eprintln!("{report}");
    assert!(unexpected.is_empty(), "{unexpected:#?}\n{report}");
    let logins = answers.get(&("login", 200)).copied().unwrap_or(0);
    assert!(
        logins >= 200,
        "too little load to tell: {logins} logins\n{report}"
    );
    let (first_iterations, second_iterations) =
        (done[half - 1], done[done.len() - 1] - done[half - 1]);
    assert!(
        first_iterations > 0 && second_iterations > 0,
        "no load in a half\n{report}"
    );
    // Keys grow only if they grow both in number and per iteration done: a machine that slows
    // down in one half changes the pace (fewer iterations, the same keys living out their TTLs),
    // which moves one measure but not the other.
    let max = |k: &[u64]| k.iter().copied().max().unwrap_or(0) as f64;
    let per_iteration = |k: &[u64], n: u64| max(k) / n as f64;
    let grew_per_iteration = per_iteration(&keys[half..], second_iterations)
        > per_iteration(&keys[..half], first_iterations) * 1.2
            + KEY_SLACK as f64 / second_iterations as f64;
    let grew_in_number = max(&keys[half..]) > max(&keys[..half]) * 1.2 + KEY_SLACK as f64;
    assert!(
        !(grew_per_iteration && grew_in_number),
        "Redis keys keep growing\n{report}"
    );
    assert!(
        levels_off(&rss[..half], &rss[half..], RSS_SLACK_KIB),
        "tokend's memory keeps growing\n{report}"
    );
    assert!(
        levels_off(&fds[..half], &fds[half..], 2),
        "tokend's file descriptors keep growing\n{report}"
    );

    // The load is gone: its connections are closed, nothing else was left open, and every
    // record expires.
    wait_connections_closed(&tokend).await;
    let fds_after = tokend.fd_count();
    assert!(
        fds_after <= fds_before + 2,
        "file descriptors: {fds_before} after the warm-up, {fds_after} after the soak\n{report}"
    );
    let deadline = tokio::time::Instant::now() + DRAIN;
    loop {
        let left = services::redis_keys(&redis, &prefix).await;
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} keys under {prefix} still there {DRAIN:?} after the load stopped: {:?}",
            left.len(),
            &left[..left.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let logs = tokend.logs();
    assert!(
        !logs.iter().any(|l| l.contains("panicked")),
        "tokend panicked: {logs:#?}"
    );
    assert_eq!(tokend.terminate().await, Some(0));
}
