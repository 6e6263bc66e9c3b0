//! Test harness: spawn tokend in-process on port 0 in either mode, with a manual clock, and
//! typed request helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tokend::clock::{ManualClock, SharedClock};
use tokend::config::Config;
use tokend::http::state::AppState;
use tokend::startup::{Application, Backends};

use crate::services;

/// Which store set a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Embedded,
    Production,
}

pub const BOTH: [Mode; 2] = [Mode::Embedded, Mode::Production];

/// A fixed key-encryption key for tests.
pub const TEST_KEK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub struct TestApp {
    pub addr: SocketAddr,
    /// The `TOKEND_METRICS_LISTEN` listener, when configured.
    pub ops_addr: Option<SocketAddr>,
    pub base: String,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub state: Arc<AppState>,
    pub env: HashMap<String, String>,
    pub mode: Mode,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    _keys_dir: Option<tempfile::TempDir>,
}

/// The environment of a test app: cheap Argon2, EdDSA, unique database and prefix.
pub fn test_env(mode: Mode) -> (HashMap<String, String>, Option<tempfile::TempDir>) {
    let mut env: HashMap<String, String> = [
        ("TOKEND_LISTEN", "127.0.0.1:0"),
        ("TOKEND_ISSUER", "http://tokend.test"),
        ("TOKEND_ARGON2", "m=256,t=1,p=1"),
        ("TOKEND_SIGNING_ALGS", "EdDSA"),
        ("TOKEND_LOG", "warn"),
        ("TOKEND_SHUTDOWN_GRACE", "10s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut dir = None;
    match mode {
        Mode::Embedded => {
            let d = tempfile::tempdir().expect("temp dir");
            env.insert(
                "TOKEND_KEYS_DIR".into(),
                d.path().to_string_lossy().into_owned(),
            );
            // Mail as .eml files beside the keys, never in the working directory.
            env.insert(
                "TOKEND_MAIL_DIR".into(),
                d.path().join("mail").to_string_lossy().into_owned(),
            );
            dir = Some(d);
        }
        Mode::Production => {
            env.insert("TOKEND_MONGODB_URI".into(), services::mongo_uri());
            env.insert(
                "TOKEND_MONGODB_DB".into(),
                services::unique_name("tokend_test"),
            );
            env.insert("TOKEND_REDIS_URL".into(), services::redis_url());
            env.insert(
                "TOKEND_REDIS_PREFIX".into(),
                format!("{}:", services::unique_name("tokend-test")),
            );
            env.insert("TOKEND_KEY_ENCRYPTION_KEY".into(), TEST_KEK.into());
        }
    }
    (env, dir)
}

pub async fn spawn_app(mode: Mode) -> TestApp {
    spawn_app_with(mode, |_| {}).await
}

/// Spawns an app after letting the test adjust its environment.
pub async fn spawn_app_with(
    mode: Mode,
    adjust: impl FnOnce(&mut HashMap<String, String>),
) -> TestApp {
    let (mut env, dir) = test_env(mode);
    adjust(&mut env);
    let clock = ManualClock::starting_now();
    spawn_env(mode, env, dir, clock).await
}

/// Spawns an app from a full environment and a clock (several instances may share one).
pub async fn spawn_env(
    mode: Mode,
    env: HashMap<String, String>,
    dir: Option<tempfile::TempDir>,
    clock: Arc<ManualClock>,
) -> TestApp {
    spawn_env_with_backends(mode, env, dir, clock, |b| b).await
}

/// As [`spawn_env`], after `wrap` has had the connected stores (to put one behind a fault).
pub async fn spawn_env_with_backends(
    mode: Mode,
    env: HashMap<String, String>,
    dir: Option<tempfile::TempDir>,
    clock: Arc<ManualClock>,
    wrap: impl FnOnce(Backends) -> Backends,
) -> TestApp {
    let config = Config::from_env(&env).expect("valid test config");
    let shared: SharedClock = clock.clone();
    let backends = Backends::connect(&config, &shared)
        .await
        .expect("stores connect");
    let app = Application::build_with_backends(config, shared, wrap(backends))
        .await
        .expect("application builds");
    let addr = app.local_addr();
    let ops_addr = app.ops_addr();
    let state = app.state();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        ops_addr,
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        clock,
        state,
        env,
        mode,
        shutdown: Some(tx),
        handle: Some(handle),
        _keys_dir: dir,
    }
}

/// One app in embedded mode; two instances sharing MongoDB, Redis and a clock in production
/// (races split their requests over them), after `adjust` has set the environment.
pub async fn instances(mode: Mode, adjust: impl Fn(&mut HashMap<String, String>)) -> Vec<TestApp> {
    let (mut env, dir) = test_env(mode);
    adjust(&mut env);
    let clock = ManualClock::starting_now();
    match mode {
        Mode::Embedded => vec![spawn_env(mode, env, dir, clock).await],
        Mode::Production => vec![
            spawn_env(mode, env.clone(), None, clock.clone()).await,
            spawn_env(mode, env, None, clock).await,
        ],
    }
}

/// A `TOKEND_CLIENTS_FILE` holding `clients`; the file lives as long as the value.
pub fn write_clients_file(clients: &Value) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(clients.to_string().as_bytes())
        .expect("write clients file");
    f.flush().expect("flush clients file");
    f
}

/// An app with `clients` as its clients file, listening on a port of its own whose address is
/// also its issuer: what client libraries check `iss` and the discovery URL against, and where
/// the links of its pages and mail point. `adjust` sets the rest of the environment. Returns
/// the app, the issuer and the clients file, which must live as long as the app.
pub async fn spawn_at_own_address(
    mode: Mode,
    clients: &Value,
    adjust: impl FnOnce(&mut HashMap<String, String>),
) -> (TestApp, String, tempfile::NamedTempFile) {
    let file = write_clients_file(clients);
    let port = services::free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let path = file.path().to_string_lossy().into_owned();
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_CLIENTS_FILE".into(), path);
        env.insert("TOKEND_LISTEN".into(), format!("127.0.0.1:{port}"));
        env.insert("TOKEND_ISSUER".into(), issuer.clone());
        adjust(env);
    })
    .await;
    (app, issuer, file)
}

/// A registered user with a password login.
pub struct Session {
    pub user: Value,
    pub email: String,
    pub username: String,
    pub password: String,
    pub access: String,
    pub refresh: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn register(&self, username: &str, email: &str, password: &str) -> Response {
        self.post_json(
            "/auth/register",
            &json!({"username": username, "email": email, "password": password}),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_json(
            "/auth/login",
            &json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn get_bearer(&self, path: &str, token: &str) -> Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_bearer(&self, path: &str, token: &str) -> Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn put_bearer(&self, path: &str, token: &str, body: &Value) -> Response {
        self.http
            .put(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post_bearer("/auth/token/refresh", refresh_token).await
    }

    /// Registers a fresh user and logs in.
    pub async fn new_session(&self) -> Session {
        let name = services::unique_name("u").replace('-', "");
        let username = name[..20].to_string();
        let email = format!("{username}@example.com");
        let password = "correct horse battery".to_string();
        let res = self.register(&username, &email, &password).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let user: Value = res.json().await.expect("json");
        let pair = self.login_pair(&email, &password).await;
        Session {
            user,
            email,
            username,
            password,
            access: pair.0,
            refresh: pair.1,
        }
    }

    /// Logs in and returns (access, refresh).
    pub async fn login_pair(&self, email: &str, password: &str) -> (String, String) {
        let res = self.login(email, password).await;
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.expect("json");
        (
            body["access_token"].as_str().expect("access").to_string(),
            body["refresh_token"].as_str().expect("refresh").to_string(),
        )
    }

    /// The JSON document at `path` (a plain `GET`).
    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The Prometheus text of `/metrics` on this listener.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("metrics text")
    }

    /// Refreshes and returns (access, refresh), asserting success.
    pub async fn refresh_pair(&self, refresh_token: &str) -> (String, String) {
        let res = self.refresh(refresh_token).await;
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.expect("json");
        (
            body["access_token"].as_str().expect("access").to_string(),
            body["refresh_token"].as_str().expect("refresh").to_string(),
        )
    }
}

/// The two discovery documents, which list the same metadata (RFC 8414, OpenID Connect
/// Discovery).
pub const DISCOVERY_DOCUMENTS: [&str; 2] = [
    "/.well-known/oauth-authorization-server",
    "/.well-known/openid-configuration",
];

/// The `error` member of an error body.
pub async fn error_code(res: Response) -> String {
    let body: Value = res.json().await.expect("json error body");
    body["error"].as_str().unwrap_or_default().to_string()
}

/// Decodes the (unverified) claims of a JWT, for assertions.
pub fn claims(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("json claims")
}

/// Decodes the (unverified) header of a JWT.
pub fn header(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').next().expect("header");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("json header")
}

// ---- browser-style requests (the hosted pages without a real browser) -----------------------

/// A browser: keeps cookies, follows no redirect by itself (the tests read each `Location`).
pub fn new_browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .expect("client")
}

/// The `Location` of an answer (a redirect); panics naming the status when there is none.
pub fn location(res: &Response) -> String {
    res.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location on {}", res.status()))
        .to_str()
        .unwrap()
        .to_string()
}

/// The query parameters of an absolute URL or of a path with a query.
pub fn query_of(url: &str) -> HashMap<String, String> {
    let u = url::Url::parse(url)
        .unwrap_or_else(|_| url::Url::parse("http://x").unwrap().join(url).unwrap());
    u.query_pairs().into_owned().collect()
}

/// The value of the hidden `csrf_token` field of a page.
pub fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf_token\" value=\"";
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("no csrf_token in {html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_string()
}
