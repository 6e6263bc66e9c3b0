//! Real relying-party libraries complete the authorization code flow against tokend
//! (docs/authorize.md): Python's Authlib as a confidential client and node's openid-client as a
//! public one, each from discovery through PKCE S256, state and nonce, the hosted sign-in and
//! consent pages, the code exchange, the library's own ID token validation (signature from the
//! JWKS, iss, aud, nonce; at_hash with Authlib), userinfo and a refresh; and openid-client
//! again through a pushed authorization request (RFC 9126) for a client that must push, and with
//! DPoP (RFC 9449: bound tokens, a bound code, a bound refresh, userinfo with a proof, a nonce
//! asked for and retried). The scripts are in `tests/rp/`; `deploy/test.sh` installs the pinned libraries and exports where
//! they are.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::in_both_modes;

/// A Python with Authlib and requests (`target/rp-venv/bin/python` when unset).
const ENV_RP_PYTHON: &str = "TOKEND_TEST_RP_PYTHON";
/// A `node_modules` holding openid-client (`target/rp-node/node_modules` when unset).
const ENV_RP_NODE_DIR: &str = "TOKEND_TEST_RP_NODE_DIR";
/// `1` (set by `deploy/test.sh`, and implied by `CI`): missing libraries fail the test.
const ENV_REQUIRE_RP: &str = "TOKEND_TEST_REQUIRE_RP";

const PASSWORD: &str = "correct horse battery";
const AUTHLIB_SECRET: &str = "authlib-secret-0123456789abcdef";
const NODE_PAR_SECRET: &str = "node-par-secret-0123456789abcdef";
/// Never contacted: the scripts catch the redirect to it (RFC 8252 §7.3 loopback URI).
const REDIRECT: &str = "http://127.0.0.1:9/cb";
/// How long one script may take.
const SCRIPT_WITHIN: Duration = Duration::from_secs(120);

in_both_modes!(
    authlib_and_openid_client_complete_the_code_flow,
    openid_client_signs_in_with_a_pushed_authorization_request,
    openid_client_completes_the_device_grant,
    openid_client_gets_dpop_bound_tokens_and_follows_a_nonce,
);

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn required() -> bool {
    let set = |var: &str| {
        std::env::var(var)
            .map(|v| !matches!(v.trim(), "" | "0" | "false"))
            .unwrap_or(false)
    };
    set(ENV_REQUIRE_RP) || set("CI")
}

/// `var` when set (it must exist: the setting is wrong otherwise), else `default` when it
/// exists.
fn configured(var: &str, default: &str) -> Result<PathBuf, String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => {
            let path = PathBuf::from(v);
            assert!(path.exists(), "{var}={} does not exist", path.display());
            Ok(path)
        }
        _ => {
            let path = repo_path(default);
            if path.exists() {
                Ok(path)
            } else {
                Err(format!("{var} is not set and there is no {default}"))
            }
        }
    }
}

pub(crate) struct Tools {
    pub(crate) python: PathBuf,
    pub(crate) node_modules: PathBuf,
}

fn tools() -> Result<Tools, String> {
    let python = configured(ENV_RP_PYTHON, "target/rp-venv/bin/python")?;
    let node_modules = configured(ENV_RP_NODE_DIR, "target/rp-node/node_modules")?;
    if !node_modules.join("openid-client").is_dir() {
        return Err(format!("no openid-client in {}", node_modules.display()));
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| format!("no node on the PATH: {e}"))?;
    if !node.status.success() {
        return Err("node --version failed".into());
    }
    Ok(Tools {
        python,
        node_modules,
    })
}

/// A relying-party script as a command with its output piped, killed when dropped.
pub(crate) fn script_command(
    program: &Path,
    script: &str,
    args: &[&str],
    env: &[(&str, &Path)],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(repo_path(script))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The JSON summary a script prints last, or a failure with its output.
pub(crate) fn summary_of(
    script: &str,
    status: std::process::ExitStatus,
    stdout: &str,
    stderr: &str,
) -> Value {
    assert!(
        status.success(),
        "{script} failed ({status}):\n{stderr}\n{stdout}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{script} printed no JSON summary ({e}): {stdout}\n{stderr}"))
}

/// Runs a relying-party script; answers its JSON summary, or fails with its stderr.
pub(crate) async fn run_script(
    program: &Path,
    script: &str,
    args: &[&str],
    env: &[(&str, &Path)],
) -> Value {
    let out = tokio::time::timeout(
        SCRIPT_WITHIN,
        script_command(program, script, args, env).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{script} did not finish within {SCRIPT_WITHIN:?}"))
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    summary_of(
        script,
        out.status,
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    )
}

fn assert_summary(summary: &Value, library: &str, sub: &str) {
    assert_eq!(summary["library"], library, "{summary}");
    assert_eq!(summary["sub"], sub, "{summary}");
    assert_eq!(summary["userinfo_sub"], sub, "{summary}");
    assert_eq!(summary["id_token_validated"], true, "{summary}");
    assert_eq!(summary["id_token_alg"], "RS256", "{summary}");
    assert_eq!(summary["nonce_checked"], true, "{summary}");
    assert_eq!(summary["consent_page"], true, "{summary}");
    assert_eq!(summary["refreshed"], true, "{summary}");
    assert_eq!(summary["preferred_username"], "ada", "{summary}");
    assert_eq!(summary["email"], "ada@example.com", "{summary}");
}

/// The relying-party libraries, or `None` (the test is skipped) when they are missing and not
/// required.
pub(crate) fn tools_or_skip() -> Option<Tools> {
    match tools() {
        Ok(t) => Some(t),
        Err(why) if required() => {
            panic!("relying-party libraries missing ({why}); deploy/test.sh installs them")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED interop_rp: no relying-party libraries ({why}). Run the tests with \
                 deploy/test.sh (it installs Authlib and openid-client under target/), or set \
                 {ENV_RP_PYTHON} and {ENV_RP_NODE_DIR}; {ENV_REQUIRE_RP}=1 makes this a failure"
            );
            None
        }
    }
}

async fn authlib_and_openid_client_complete_the_code_flow(mode: Mode) {
    let Some(tools) = tools_or_skip() else {
        return;
    };
    // The libraries check `iss` against the discovery URL: the issuer is the listening address.
    let clients = json!([
        {"client_id": "authlib-web", "client_secret": AUTHLIB_SECRET,
         "grant_types": ["authorization_code", "refresh_token"],
         "redirect_uris": [REDIRECT], "client_name": "Authlib Example"},
        {"client_id": "node-public", "grant_types": ["authorization_code", "refresh_token"],
         "redirect_uris": [REDIRECT], "client_name": "openid-client Example"},
    ]);
    let (app, issuer, _file) = spawn_at_own_address(mode, &clients, |env| {
        env.insert("TOKEND_SIGNING_ALGS".into(), "RS256,EdDSA".into());
    })
    .await;
    let res = app.register("ada", "ada@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user: Value = res.json().await.unwrap();
    let sub = user["id"]
        .as_str()
        .or_else(|| user["user"]["id"].as_str())
        .unwrap_or_else(|| panic!("no user id in {user}"))
        .to_string();

    let authlib = run_script(
        &tools.python,
        "tests/rp/authlib_code_flow.py",
        &[
            &issuer,
            "authlib-web",
            AUTHLIB_SECRET,
            REDIRECT,
            "ada",
            PASSWORD,
        ],
        &[],
    )
    .await;
    assert_summary(&authlib, "authlib", &sub);
    assert_eq!(authlib["at_hash_checked"], true, "{authlib}");

    let node = PathBuf::from("node");
    let openid_client = run_script(
        &node,
        "tests/rp/openid_client_code_flow.mjs",
        &[&issuer, "node-public", "", REDIRECT, "ada", PASSWORD],
        &[("RP_NODE_MODULES", &tools.node_modules)],
    )
    .await;
    assert_summary(&openid_client, "openid-client", &sub);

    app.stop().await;
}

/// openid-client's `buildAuthorizationUrlWithPAR` (RFC 9126) for a confidential client that
/// must push (`require_pushed_authorization_requests`): the push with HTTP Basic, an
/// authorization URL of `client_id` and `request_uri` only, sign-in and consent, the code
/// exchange and the ID token validated by the library; the request URI then refused a second
/// time, and the plain authorization request refused.
async fn openid_client_signs_in_with_a_pushed_authorization_request(mode: Mode) {
    let Some(tools) = tools_or_skip() else {
        return;
    };
    let (app, issuer, _file) = spawn_at_own_address(
        mode,
        &json!([
            {"client_id": "node-par", "client_secret": NODE_PAR_SECRET,
             "grant_types": ["authorization_code"], "redirect_uris": [REDIRECT],
             "client_name": "openid-client PAR Example",
             "require_pushed_authorization_requests": true},
        ]),
        |env| {
            env.insert("TOKEND_SIGNING_ALGS".into(), "RS256,EdDSA".into());
        },
    )
    .await;
    let res = app.register("ada", "ada@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user: Value = res.json().await.unwrap();
    let sub = user["id"].as_str().unwrap().to_string();

    let summary = run_script(
        &PathBuf::from("node"),
        "tests/rp/openid_client_par_flow.mjs",
        &[
            &issuer,
            "node-par",
            NODE_PAR_SECRET,
            REDIRECT,
            "ada",
            PASSWORD,
        ],
        &[("RP_NODE_MODULES", &tools.node_modules)],
    )
    .await;
    assert_eq!(summary["library"], "openid-client", "{summary}");
    assert_eq!(summary["flow"], "par", "{summary}");
    assert_eq!(
        summary["authorization_url_parameters"],
        json!(["client_id", "request_uri"]),
        "{summary}"
    );
    assert_eq!(summary["sub"], sub.as_str(), "{summary}");
    assert_eq!(summary["userinfo_sub"], sub.as_str(), "{summary}");
    assert_eq!(summary["id_token_validated"], true, "{summary}");
    assert_eq!(summary["id_token_alg"], "RS256", "{summary}");
    assert_eq!(summary["nonce_checked"], true, "{summary}");
    assert_eq!(summary["consent_page"], true, "{summary}");
    assert_eq!(summary["email"], "ada@example.com", "{summary}");
    assert_eq!(summary["request_uri_single_use"], true, "{summary}");
    assert_eq!(summary["plain_request_refused"], true, "{summary}");
    let m = app.metrics_text().await;
    let pushed = m.lines().any(|l| {
        l.starts_with("tokend_authorizations_total{")
            && l.contains("event=\"pushed\"")
            && l.ends_with(" 1")
    });
    assert!(pushed, "one pushed request counted: {m}");
    app.stop().await;
}

/// openid-client's `initiateDeviceAuthorization` and `pollDeviceAuthorizationGrant` (RFC 8628)
/// for a public CLI client: the script prints the codes and polls; meanwhile a person (played
/// here as a browser would, docs/device.md) opens `verification_uri_complete`, signs in and
/// approves. The library then validates the ID token of its answer (signature from the JWKS,
/// iss, aud), and the script calls userinfo and refreshes.
async fn openid_client_completes_the_device_grant(mode: Mode) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let Some(tools) = tools_or_skip() else {
        return;
    };
    let (app, issuer, _file) = spawn_at_own_address(
        mode,
        &json!([
            {"client_id": "node-cli",
             "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
             "client_name": "openid-client CLI"},
        ]),
        |env| {
            env.insert("TOKEND_SIGNING_ALGS".into(), "RS256,EdDSA".into());
        },
    )
    .await;
    let res = app.register("ada", "ada@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user: Value = res.json().await.unwrap();
    let sub = user["id"].as_str().unwrap().to_string();

    let script = "tests/rp/openid_client_device_flow.mjs";
    let node = PathBuf::from("node");
    let mut child = script_command(
        &node,
        script,
        &[issuer.as_str(), "node-cli", "openid profile"],
        &[("RP_NODE_MODULES", &tools.node_modules)],
    )
    .spawn()
    .expect("node runs");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let mut first = String::new();
    tokio::time::timeout(SCRIPT_WITHIN, stdout.read_line(&mut first))
        .await
        .unwrap_or_else(|_| panic!("{script} printed no codes within {SCRIPT_WITHIN:?}"))
        .unwrap();
    let codes: Value = serde_json::from_str(first.trim()).unwrap_or_else(|e| {
        panic!("{script} printed no device authorization ({e}): {first}");
    });
    assert_eq!(
        codes["verification_uri"],
        format!("{issuer}/device"),
        "{codes}"
    );
    assert_eq!(codes["interval"], 5, "{codes}");
    // The person approves while the library polls.
    crate::device::approve_as(&app, &codes, "ada", PASSWORD).await;
    let finished = tokio::time::timeout(SCRIPT_WITHIN, async {
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).await.unwrap();
        let mut err = String::new();
        stderr.read_to_string(&mut err).await.unwrap();
        (child.wait().await.unwrap(), rest, err)
    })
    .await;
    let (status, rest, err) =
        finished.unwrap_or_else(|_| panic!("{script} did not finish within {SCRIPT_WITHIN:?}"));
    let summary = summary_of(script, status, &rest, &err);
    assert_eq!(summary["library"], "openid-client", "{summary}");
    assert_eq!(summary["approved"], true, "{summary}");
    assert_eq!(summary["id_token_validated"], true, "{summary}");
    assert_eq!(summary["id_token_alg"], "RS256", "{summary}");
    assert_eq!(summary["sub"], sub.as_str(), "{summary}");
    assert_eq!(summary["preferred_username"], "ada", "{summary}");
    assert_eq!(summary["refreshed"], true, "{summary}");
    assert_eq!(summary["scope"], "openid profile", "{summary}");
    app.stop().await;
}

/// openid-client's DPoP handle (RFC 9449) for a public client, against tokend with
/// `TOKEND_DPOP_NONCE=on`: the code flow with `dpop_jkt`, the token request answered
/// `use_dpop_nonce` and retried by the library with the nonce, DPoP-bound tokens (`token_type`
/// `DPoP`, `cnf.jkt` the library's key thumbprint), userinfo with a proof, a refresh with a
/// proof; a refresh without the key and a bearer use of the bound token are refused.
async fn openid_client_gets_dpop_bound_tokens_and_follows_a_nonce(mode: Mode) {
    let Some(tools) = tools_or_skip() else {
        return;
    };
    let (app, issuer, _file) = spawn_at_own_address(
        mode,
        &json!([
            {"client_id": "node-dpop", "grant_types": ["authorization_code", "refresh_token"],
             "redirect_uris": [REDIRECT], "client_name": "openid-client DPoP Example",
             "dpop_bound_access_tokens": true},
        ]),
        |env| {
            env.insert("TOKEND_SIGNING_ALGS".into(), "RS256,EdDSA".into());
            env.insert("TOKEND_DPOP_NONCE".into(), "on".into());
        },
    )
    .await;
    let res = app.register("ada", "ada@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user: Value = res.json().await.unwrap();
    let sub = user["id"].as_str().unwrap().to_string();

    let summary = run_script(
        &PathBuf::from("node"),
        "tests/rp/openid_client_dpop_flow.mjs",
        &[&issuer, "node-dpop", "", REDIRECT, "ada", PASSWORD],
        &[("RP_NODE_MODULES", &tools.node_modules)],
    )
    .await;
    assert_eq!(summary["library"], "openid-client", "{summary}");
    assert_eq!(summary["flow"], "dpop", "{summary}");
    for field in ["token_type", "refreshed_token_type"] {
        assert!(
            summary[field]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case("dpop")),
            "{field}: {summary}"
        );
    }
    let jkt = summary["jkt"].as_str().unwrap();
    assert_eq!(jkt.len(), 43, "{summary}");
    assert_eq!(summary["cnf_jkt"], jkt, "{summary}");
    assert_eq!(summary["refreshed_cnf_jkt"], jkt, "{summary}");
    assert_eq!(summary["nonce_asked_and_retried"], true, "{summary}");
    assert_eq!(summary["sub"], sub.as_str(), "{summary}");
    assert_eq!(summary["userinfo_sub"], sub.as_str(), "{summary}");
    assert_eq!(
        summary["userinfo_after_refresh_sub"],
        sub.as_str(),
        "{summary}"
    );
    assert_eq!(summary["refresh_without_key_refused"], true, "{summary}");
    assert_eq!(summary["bearer_use_refused"], true, "{summary}");
    let m = app.metrics_text().await;
    let accepted = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("tokend_dpop_proofs_total{reason=\"none\",result=\"accepted\"} ")
        })
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        accepted >= 4,
        "code, userinfo, refresh, userinfo: {accepted}"
    );
    app.stop().await;
}
