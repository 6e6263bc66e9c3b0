//! Foundation: configuration errors, the HTTP core, graceful shutdown, readiness.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{error_code, spawn_app, spawn_app_with, Mode};
use crate::services::{OwnedMongo, OwnedRedis};

fn tokend() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokend"));
    cmd.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

#[test]
fn each_config_error_names_its_variable_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("TOKEND_LISTEN", "not-an-address"),
        ("TOKEND_ISSUER", "nope"),
        ("TOKEND_ACCESS_TTL", "15"),
        ("TOKEND_REFRESH_TTL", "forever"),
        ("TOKEND_KEY_PREPUBLISH", "1m"),
        ("TOKEND_SIGNING_ALGS", "HS256"),
        ("TOKEND_ARGON2", "m=1"),
        ("TOKEND_LOG_FORMAT", "yaml"),
        ("TOKEND_MONGODB_URI", "mongodb://127.0.0.1:1"),
    ] {
        for sub in ["serve", "check-config"] {
            let out = tokend()
                .current_dir(dir.path())
                .arg(sub)
                .env(var, value)
                .env(
                    "TOKEND_LISTEN",
                    if var == "TOKEND_LISTEN" {
                        value
                    } else {
                        "127.0.0.1:0"
                    },
                )
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{var}={value} {sub}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let expected = if var == "TOKEND_MONGODB_URI" {
                "TOKEND_REDIS_URL"
            } else {
                var
            };
            assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
            assert!(stderr.contains(expected), "{var}: {stderr}");
        }
    }
}

#[test]
fn every_config_error_is_reported_at_once_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        ("TOKEND_LISTEN", "not-an-address"),
        ("TOKEND_ACCESS_TTL", "soon"),
        ("TOKEND_LOG_FORMAT", "yaml"),
        // Conflicts with the default TOKEND_REFRESH_TTL (14d).
        ("TOKEND_SESSION_TTL", "1d"),
        ("TOKEND_TLS_CERT", "cert.pem"),
    ];
    // The variable each line names, in the order of `tokend check-config`.
    let named = [
        "TOKEND_LISTEN",
        "TOKEND_ACCESS_TTL",
        "TOKEND_REFRESH_TTL",
        "TOKEND_LOG_FORMAT",
        "TOKEND_TLS_KEY",
    ];
    for sub in ["serve", "check-config"] {
        let out = tokend()
            .current_dir(dir.path())
            .arg(sub)
            .envs(bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{sub}");
        assert!(out.stdout.is_empty(), "{sub}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.trim().lines().collect();
        assert_eq!(lines.len(), named.len(), "one line per variable: {stderr}");
        for (line, var) in lines.iter().zip(named) {
            assert!(
                line.starts_with(&format!("tokend: invalid {var}: ")),
                "{sub}: {line}"
            );
        }
        assert!(
            stderr.contains("must not exceed TOKEND_SESSION_TTL"),
            "{stderr}"
        );
        assert!(stderr.contains("required with TOKEND_TLS_CERT"), "{stderr}");
    }
}

#[test]
fn a_dotenv_file_is_read_and_the_environment_wins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "TOKEND_AUDIENCE=from-dotenv\nTOKEND_ISSUER=https://a.example\n",
    )
    .unwrap();
    let out = tokend()
        .current_dir(dir.path())
        .arg("check-config")
        .env("TOKEND_ISSUER", "https://b.example")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("TOKEND_AUDIENCE=from-dotenv"), "{stdout}");
    assert!(
        stdout.contains("TOKEND_ISSUER=https://b.example"),
        "{stdout}"
    );
    std::fs::write(dir.path().join(".env"), "TOKEND_ACCESS_TTL=eventually\n").unwrap();
    let out = tokend()
        .current_dir(dir.path())
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn healthz_answers_and_unknown_routes_are_json() {
    let app = spawn_app(Mode::Embedded).await;
    let res = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key("x-request-id"));
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    let res = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let res = app
        .http
        .get(app.url("/no/such/thing"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(error_code(res).await, "not_found");

    let res = app.http.get(app.url("/auth/login")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "POST");
    assert_eq!(error_code(res).await, "method_not_allowed");
    let res = app.http.patch(app.url("/users/me")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "GET, HEAD, PUT, DELETE");
}

#[tokio::test]
async fn oversized_bodies_answer_413_and_lose_nothing() {
    let app = spawn_app(Mode::Embedded).await;
    let big = format!(
        r#"{{"username":"big","email":"big@example.com","password":"{}"}}"#,
        "x".repeat(20 * 1024)
    );
    let res = app
        .http
        .post(app.url("/auth/register"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(res).await, "payload_too_large");
    // The server still serves, and nothing was registered.
    let res = app.register("big", "big@example.com", "securepass").await;
    assert_eq!(res.status(), StatusCode::CREATED);
}

/// Starts the binary in embedded mode on a free port and returns it with its address.
#[allow(clippy::zombie_processes)] // the caller waits for it
fn spawn_binary(dir: &std::path::Path) -> (Child, String, BufReader<std::process::ChildStderr>) {
    let mut child = tokend()
        .current_dir(dir)
        .arg("serve")
        .env("TOKEND_LISTEN", "127.0.0.1:0")
        .env("TOKEND_ARGON2", "m=256,t=1,p=1")
        .env("TOKEND_SIGNING_ALGS", "EdDSA")
        .env("TOKEND_LOG_FORMAT", "json")
        .env("TOKEND_LOG", "info,tower_http=debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "tokend exited before listening"
        );
        if line.contains("tokend listening") {
            let v: Value = serde_json::from_str(&line).unwrap();
            let addr = v["addr"].as_str().unwrap().to_string();
            return (child, addr, stderr);
        }
    }
}

#[test]
fn the_binary_serves_healthz_in_embedded_mode_and_logs_one_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, _stderr) = spawn_binary(dir.path());
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    // The keyset was initialised in ./keys with private files 0600.
    let keys = dir.path().join("keys");
    assert!(keys.join("manifest.json").exists());
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, mut stderr) = spawn_binary(dir.path());
    let body = r#"{"username":"slowpoke","email":"slow@example.com","password":"securepass"}"#;
    let (first, rest) = body.split_at(20);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        body.len()
    )
    .unwrap();
    s.flush().unwrap();
    // Make sure the request is in flight (its span has started) before the signal.
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "tokend exited early"
        );
        if line.contains("started processing request") {
            break;
        }
    }
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "tokend exited early"
        );
        if line.contains("draining") {
            break;
        }
    }
    // New connections are refused once draining.
    assert!(TcpStream::connect(&addr).is_err());
    s.write_all(rest.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_stopped_store_and_recovers_without_a_restart() {
    let mut redis = OwnedRedis::start().await;
    let mut mongo = OwnedMongo::start().await;
    let (r_url, m_url) = (redis.url(), mongo.url());
    let app = spawn_app_with(Mode::Production, move |env| {
        env.insert("TOKEND_REDIS_URL".into(), r_url);
        env.insert("TOKEND_MONGODB_URI".into(), m_url);
    })
    .await;
    let readyz = || async {
        let res = app.http.get(app.url("/readyz")).send().await.unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        (status, body)
    };
    assert_eq!(readyz().await.0, StatusCode::OK);

    redis.stop().await;
    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["down"], serde_json::json!(["redis"]), "{body}");
    redis.start_again().await;
    wait_ready(&app).await;

    mongo.stop().await;
    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["down"], serde_json::json!(["mongodb"]), "{body}");
    mongo.start_again().await;
    wait_ready(&app).await;
}

/// Polls `/readyz` until it answers 200 (bounded: the stores reconnect by themselves).
pub async fn wait_ready(app: &crate::helpers::TestApp) {
    for _ in 0..200 {
        let res = app.http.get(app.url("/readyz")).send().await.unwrap();
        if res.status() == StatusCode::OK {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("tokend did not become ready again after the store came back");
}
