//! The deployment files against a running tokend (docs/hardening.md, §10): a real Prometheus server,
//! configured from `deploy/prometheus/prometheus.yml`, scrapes tokend's metrics listener and
//! reports the target up with the alert rules loaded and quiet; the rules name only metrics
//! tokend exports; every query of the Grafana dashboard (`deploy/grafana/tokend.json`) returns
//! series from that Prometheus; the container health probe passes against tokend.

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

    /// Polls the targets until tokend's is up (scraped), and returns it.
    async fn wait_for_tokend_up(&self, http: &reqwest::Client) -> Value {
        let deadline = tokio::time::Instant::now() + SCRAPED_WITHIN;
        loop {
            if let Some(targets) = self.api(http, "/api/v1/targets").await {
                if let Some(t) = tokend_target(&targets) {
                    if t["health"] == "up" {
                        return t.clone();
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus did not report tokend up within {SCRAPED_WITHIN:?}; its log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The result of an instant query, or Prometheus's error (a PromQL error, or no answer).
    async fn query_checked(
        &self,
        http: &reqwest::Client,
        promql: &str,
    ) -> Result<Vec<Value>, String> {
        let url = format!(
            "{}/api/v1/query?{}",
            self.base,
            serde_urlencoded::to_string([("query", promql)]).unwrap()
        );
        let res = http.get(url).send().await.map_err(|e| e.to_string())?;
        let body: Value = res.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
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
    let target = prometheus.wait_for_tokend_up(&http).await;
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

// ---- the Grafana dashboard -----------------------------------------------------------------

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo_path("deploy/grafana/tokend.json"))
        .expect("deploy/grafana/tokend.json");
    serde_json::from_str(&text).expect("deploy/grafana/tokend.json is JSON")
}

/// Every panel of a dashboard, those nested in collapsed rows included.
fn dashboard_panels(dashboard: &Value) -> Vec<&Value> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    panels
}

/// The values the test gives Grafana's variables: the built-in intervals, a query variable's
/// "All" value (its `allValue`) when it has one, else its current value.
fn dashboard_variables(dashboard: &Value) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = [
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__range", "1h"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().expect("a variable name").to_string();
        let value = match var["allValue"].as_str() {
            Some(all) if var["includeAll"] == true => all.to_string(),
            _ => var["current"]["value"]
                .as_str()
                .unwrap_or_else(|| panic!("variable {name} has no current value"))
                .to_string(),
        };
        vars.push((name, value));
    }
    // Longest first, so that no name is replaced inside a longer one.
    vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    vars
}

/// `expr` with `$name` and `${name}` replaced by the values of `vars`.
fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut out = expr.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("${name}"), value);
    }
    out
}

/// (what, PromQL) for every panel target and every query variable of the dashboard, variables
/// substituted; `label_values(selector, label)` becomes `count by (label) (selector)`.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let vars = dashboard_variables(dashboard);
    let mut queries = Vec::new();
    for panel in dashboard_panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_else(|| {
                panic!("panel {title:?}: target {} has no expr", target["refId"])
            });
            let what = format!(
                "panel {title:?} ({})",
                target["refId"].as_str().unwrap_or("?")
            );
            queries.push((what, substitute(expr, &vars)));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let definition = var["definition"].as_str().unwrap_or_default();
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: not label_values(...)", var["name"]));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let promql = format!("count by ({}) ({})", label.trim(), selector.trim());
        queries.push((
            format!("variable {}", var["name"]),
            substitute(&promql, &vars),
        ));
    }
    for (what, promql) in &queries {
        assert!(
            !promql.contains('$'),
            "{what}: unknown variable in {promql}"
        );
    }
    queries
}

#[test]
fn the_grafana_dashboard_is_importable_and_names_only_metrics_tokend_exports() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap() >= 36,
        "Grafana 10+"
    );
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let panels = dashboard_panels(&dashboard);
    let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids must be unique");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap();
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && grid["h"].as_u64().unwrap() > 0,
            "{title}: {grid}"
        );
        // Every query goes to the data source the importer picks.
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(t["refId"].is_string(), "{title}");
        }
    }
    let source = std::fs::read_to_string(repo_path("src/metrics.rs")).unwrap();
    let queries = dashboard_queries(&dashboard);
    let text: Vec<&str> = queries.iter().map(|(_, q)| q.as_str()).collect();
    let used = metric_names(&text.join("\n"));
    assert!(used.len() >= 12, "{used:?}");
    for name in used {
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            source.contains(&format!("\"{family}\"")),
            "the dashboard uses {name}, which src/metrics.rs does not register"
        );
    }
}

/// Traffic that moves every counter the dashboard shows: logins (good, wrong, backing off,
/// rate-limited), refreshes and a refresh reuse, the password and client_credentials grants,
/// a refused bearer token, logouts, and a readiness probe.
async fn dashboard_traffic(app: &crate::helpers::TestApp, client_secret: &str) {
    let s = app.new_session().await;
    let spent = s.refresh.clone();
    let (access, _) = app.refresh_pair(&spent).await;
    // Past the grace period (README, "What changed for clients"), the spent token again: reuse.
    app.clock.advance(Duration::from_secs(3));
    assert_eq!(app.refresh(&spent).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.get_bearer("/users/me", &access).await.status(),
        StatusCode::UNAUTHORIZED,
        "the family is revoked"
    );

    let form = |pairs: &[(&str, &str)]| serde_urlencoded::to_string(pairs).unwrap();
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("grant_type", "password"),
            ("username", &s.email),
            ("password", &s.password),
            ("client_id", "tokend"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("reports", Some(client_secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("grant_type", "client_credentials")]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    assert_eq!(
        app.get_bearer("/auth/verify", "not.a.token").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let t = app.new_session().await;
    assert_eq!(
        app.post_bearer("/auth/logout", &t.access).await.status(),
        StatusCode::NO_CONTENT
    );
    let u = app.new_session().await;
    assert_eq!(
        app.post_bearer("/auth/logout/all", &u.access)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );

    // Wrong passwords for one account: refused 401 while checked, then 429 by the back-off
    // and, past this app's per-account rate (8 a minute), by the rate limit.
    let mut answers = Vec::new();
    for _ in 0..12 {
        answers.push(
            app.login(&t.email, "not the password")
                .await
                .status()
                .as_u16(),
        );
    }
    let checked = answers.iter().take_while(|&&s| s == 401).count();
    assert!(
        checked >= 1 && answers[checked..].iter().all(|&s| s == 429),
        "{answers:?}"
    );
    let ops = app.ops_addr.expect("a metrics listener");
    let metrics = app
        .http
        .get(format!("http://{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for counter in [
        "tokend_login_backoff_total ",
        "tokend_rate_limited_total{limit=\"account\"} ",
        "tokend_refresh_reuse_detected_total ",
        "tokend_token_validation_failures_total{",
        "tokend_revocations_total{kind=\"user\"} ",
    ] {
        let moved = metrics
            .lines()
            .find(|l| l.starts_with(counter))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v >= 1.0);
        assert!(moved, "{counter}did not move:\n{metrics}");
    }

    let ready = app
        .http
        .get(format!("http://{ops}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_queries_each_return_series_from_a_real_prometheus() {
    let queries = dashboard_queries(&dashboard());
    assert!(queries.len() >= 20, "{queries:?}");

    let secret = "reports-secret-5d0f3b2a9c8e7d6f";
    let clients = crate::helpers::write_clients_file(&serde_json::json!([
        {"client_id": "reports", "client_secret": secret,
         "grant_types": ["client_credentials"], "scopes": ["reports:read"]},
        {"client_id": "dashboard-web", "client_secret": secret,
         "grant_types": ["authorization_code"], "first_party": true,
         "redirect_uris": ["https://app.example/cb"]}
    ]));
    let clients_path = clients.path().to_string_lossy().into_owned();
    let app = crate::helpers::spawn_app_with(Mode::Embedded, |env| {
        env.insert("TOKEND_METRICS_LISTEN".into(), "127.0.0.1:0".into());
        env.insert("TOKEND_CLIENTS_FILE".into(), clients_path);
        env.insert("TOKEND_RATE_LIMIT_ACCOUNT".into(), "8/min".into());
    })
    .await;
    dashboard_traffic(&app, secret).await;
    // A browser sign-in through the code flow, for the sign-in and authorization panels.
    let user = app.new_session().await;
    crate::authorize::sign_in_and_redeem(
        &app,
        ("dashboard-web", secret),
        "https://app.example/cb",
        (&user.email, &user.password),
    )
    .await;

    let prometheus = Prometheus::start(app.ops_addr.expect("a metrics listener"));
    let http = reqwest::Client::new();
    prometheus.wait_for_tokend_up(&http).await;
    // Poll until every query answers with a series: rates need two scrapes after the target is
    // up, so the first rounds may find some empty.
    let deadline = tokio::time::Instant::now() + SCRAPED_WITHIN;
    let mut empty: Vec<&(String, String)> = queries.iter().collect();
    loop {
        let mut still = Vec::new();
        for query in empty {
            let result = prometheus
                .query_checked(&http, &query.1)
                .await
                .unwrap_or_else(|e| panic!("{}: Prometheus refused {}: {e}", query.0, query.1));
            if result.is_empty() {
                still.push(query);
            }
        }
        empty = still;
        if empty.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report: Vec<String> = empty
        .iter()
        .map(|(what, promql)| format!("  {what}: {promql}"))
        .collect();
    assert!(
        empty.is_empty(),
        "{} dashboard queries returned no series within {SCRAPED_WITHIN:?}:\n{}\nPrometheus log:\n{}",
        empty.len(),
        report.join("\n"),
        prometheus.log_tail()
    );

    drop(prometheus);
    app.stop().await;
}
