//! The deployment files against a running tokend (docs/hardening.md, §10): a real Prometheus server,
//! configured from `deploy/prometheus/prometheus.yml`, scrapes tokend's metrics listener and
//! reports the target up with the alert rules loaded and quiet; the rules name only metrics
//! tokend exports; the container health probe passes against tokend.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokend::clock::ManualClock;
use tokend::config::Config;
use tokend::startup::Application;

use crate::helpers::{test_env, Mode};

/// The Prometheus server binary, exported by `deploy/test.sh`.
const ENV_PROMETHEUS_BIN: &str = "TOKEND_TEST_PROMETHEUS_BIN";

/// How long Prometheus may take to start and scrape tokend.
const SCRAPED_WITHIN: Duration = Duration::from_secs(60);

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// `TOKEND_TEST_PROMETHEUS_BIN`, else `prometheus` on the `PATH`.
fn prometheus_bin() -> PathBuf {
    if let Ok(bin) = std::env::var(ENV_PROMETHEUS_BIN) {
        if !bin.trim().is_empty() {
            return PathBuf::from(bin);
        }
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("prometheus"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "no Prometheus server: run the tests with deploy/test.sh (it installs Debian's \
                 prometheus package), or set {ENV_PROMETHEUS_BIN}"
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tokend with its metrics on a separate listener, as deployed (`TOKEND_METRICS_LISTEN`).
struct Deployed {
    api: SocketAddr,
    ops: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
    _keys: Option<tempfile::TempDir>,
}

impl Deployed {
    async fn start() -> Deployed {
        let (mut env, keys) = test_env(Mode::Embedded);
        env.insert("TOKEND_METRICS_LISTEN".into(), "127.0.0.1:0".into());
        let config = Config::from_env(&env).unwrap();
        let app = Application::build_with(config, ManualClock::starting_now())
            .await
            .unwrap();
        let api = app.local_addr();
        let ops = app.ops_addr().expect("a metrics listener");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Deployed {
            api,
            ops,
            stop: Some(stop),
            handle,
            _keys: keys,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.handle).await;
    }
}

/// A Prometheus server that is killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus on `deploy/prometheus/prometheus.yml` with the target replaced by
    /// `target`, 1 s scrape and evaluation intervals, and the rule file of `deploy/prometheus`.
    fn start(target: SocketAddr) -> Prometheus {
        let shipped = std::fs::read_to_string(repo_path("deploy/prometheus/prometheus.yml"))
            .expect("deploy/prometheus/prometheus.yml");
        let rules = repo_path("deploy/prometheus/alerts.yml");
        let mut config = shipped.clone();
        for (from, to) in [
            ("- tokend:9100", format!("- {target}")),
            ("scrape_interval: 15s", "scrape_interval: 1s".to_string()),
            ("scrape_timeout: 5s", "scrape_timeout: 1s".to_string()),
            (
                "evaluation_interval: 15s",
                "evaluation_interval: 1s".to_string(),
            ),
            ("- alerts.yml", format!("- {}", rules.display())),
        ] {
            assert!(
                config.contains(from),
                "deploy/prometheus/prometheus.yml no longer contains {from:?}: update this test"
            );
            config = config.replace(from, &to);
        }
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            base: format!("http://{listen}"),
            log,
            _dir: dir,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn api(&self, http: &reqwest::Client, path: &str) -> Option<Value> {
        let res = http.get(format!("{}{path}", self.base)).send().await.ok()?;
        if res.status() != StatusCode::OK {
            return None;
        }
        let body: Value = res.json().await.ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    async fn query(&self, http: &reqwest::Client, promql: &str) -> Vec<Value> {
        let path = format!(
            "/api/v1/query?{}",
            serde_urlencoded::to_string([("query", promql)]).unwrap()
        );
        let data = self.api(http, &path).await.unwrap_or_default();
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tokend target of `/api/v1/targets`, once Prometheus has scraped it.
fn tokend_target(targets: &Value) -> Option<&Value> {
    targets["activeTargets"]
        .as_array()?
        .iter()
        .find(|t| t["labels"]["job"] == "tokend")
}

fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_tokend_and_reports_the_target_up() {
    let app = Deployed::start().await;
    let http = reqwest::Client::new();

    // Some traffic for the API metrics: one registration and one login.
    let email = "scraped@example.com";
    let password = "correct horse battery";
    let res = http
        .post(format!("http://{}/auth/register", app.api))
        .json(&serde_json::json!({"username": "scraped", "email": email, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = http
        .post(format!("http://{}/auth/login", app.api))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let prometheus = Prometheus::start(app.ops);
    let deadline = tokio::time::Instant::now() + SCRAPED_WITHIN;
    let target = loop {
        if let Some(targets) = prometheus.api(&http, "/api/v1/targets").await {
            if let Some(t) = tokend_target(&targets) {
                if t["health"] == "up" {
                    break t.clone();
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus did not report tokend up within {SCRAPED_WITHIN:?}; its log:\n{}",
            prometheus.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(target["labels"]["instance"], app.ops.to_string());
    assert_eq!(target["scrapeUrl"], format!("http://{}/metrics", app.ops));

    let up = prometheus.query(&http, "up{job=\"tokend\"}").await;
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(sample_value(&up[0]), 1.0);

    let logins = prometheus
        .query(
            &http,
            "sum(tokend_http_requests_total{route=\"/auth/login\",status=\"200\"})",
        )
        .await;
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert_eq!(sample_value(&logins[0]), 1.0);

    let active = prometheus
        .query(&http, "tokend_signing_keys{state=\"active\"}")
        .await;
    assert_eq!(
        active.len(),
        1,
        "one algorithm in the test config: {active:?}"
    );
    assert_eq!(active[0]["metric"]["alg"], "EdDSA");
    assert_eq!(sample_value(&active[0]), 1.0);

    // The alert rules of deploy/prometheus are loaded, and a healthy tokend raises none.
    let rules = prometheus.api(&http, "/api/v1/rules").await.unwrap();
    let mut groups: Vec<&str> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    groups.sort_unstable();
    assert_eq!(
        groups,
        vec!["tokend-availability", "tokend-keys", "tokend-security"]
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alerts = prometheus.api(&http, "/api/v1/alerts").await.unwrap();
    assert_eq!(alerts["alerts"], serde_json::json!([]), "no alert expected");

    drop(prometheus);
    app.stop().await;
}

/// Metric names in a text: `tokend_` followed by lower-case letters, digits and underscores.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("tokend_") {
        let preceded_by_word = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_word {
            names.push(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn the_alert_rules_name_only_metrics_tokend_exports() {
    let rules = std::fs::read_to_string(repo_path("deploy/prometheus/alerts.yml")).unwrap();
    let source = std::fs::read_to_string(repo_path("src/metrics.rs")).unwrap();
    let used = metric_names(&rules);
    assert!(used.len() >= 6, "{used:?}");
    for name in used {
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            source.contains(&format!("\"{family}\"")),
            "alerts.yml uses {name}, which src/metrics.rs does not register"
        );
    }
}

async fn run_probe(env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(repo_path("deploy/healthcheck.sh"))
        .env_remove("TOKEND_LISTEN")
        .env_remove("TOKEND_METRICS_LISTEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("run bash")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_health_probe_passes_against_tokend() {
    let app = Deployed::start().await;
    // As in the image: TOKEND_METRICS_LISTEN set, so the probe asks the metrics listener.
    let out = run_probe(&[
        ("TOKEND_LISTEN", format!("0.0.0.0:{}", app.api.port())),
        (
            "TOKEND_METRICS_LISTEN",
            format!("0.0.0.0:{}", app.ops.port()),
        ),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The API listener does not serve /healthz when a metrics listener exists: the probe fails.
    let out = run_probe(&[("TOKEND_LISTEN", format!("0.0.0.0:{}", app.api.port()))]).await;
    assert!(!out.status.success());
    app.stop().await;
    // Nothing listening: the probe fails.
    let out = run_probe(&[("TOKEND_LISTEN", format!("127.0.0.1:{}", free_port()))]).await;
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_probe_uses_the_api_listener_without_a_metrics_listener() {
    let app = crate::helpers::spawn_app(Mode::Embedded).await;
    let out = run_probe(&[("TOKEND_LISTEN", format!("0.0.0.0:{}", app.addr.port()))]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.stop().await;
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names("rate(tokend_a_total[5m]) / tokend:b_seconds + x_tokend_c"),
        vec!["tokend_a_total"]
    );
}
