//! The README's "five-minute tour with curl" runs as written: every `sh` block between the
//! `<!-- tour:start` and `<!-- tour:end -->` marks, top to bottom, in one `bash -euo pipefail`,
//! against the real `tokend` binary in embedded mode, with nothing but curl, python3 and openssl.
//!
//! The harness changes three things only: `http://localhost:5000` becomes the address the server
//! really listens on (port 0, a fresh temporary directory for keys and files), each
//! `cargo run --release -- serve` line (with its variables) starts the built binary in the
//! background and waits for it to listen (stopping the one before, as the tour's Ctrl-C does),
//! and a header line is printed before each commented step so its output can be checked
//! against what the comment says. The sign-in section's walk-throughs (the code flow, pushed
//! authorization requests) run the same way between their own marks.

use std::path::Path;
use std::process::Command;

/// Marks the start of the tour in README.md (the rest of that comment line is free text).
const TOUR_START: &str = "<!-- tour:start";
/// Marks its end.
const TOUR_END: &str = "<!-- tour:end -->";
/// The line that starts the server in the tour, after any `VAR=value` words.
const SERVE: &str = "cargo run --release -- serve";
/// Printed before each step's output.
const STEP: &str = "@@tour-step@@ ";
/// How long the whole tour may take before `timeout` stops it (and everything it started).
const TOUR_TIMEOUT_SECS: &str = "300";

/// Defines `tour_serve` (start the binary on port 0, wait for its "tokend listening" log line,
/// set `TOUR_BASE`) and `tour_stop` (SIGTERM and wait), and stops the server however the script
/// ends. The log goes through a FIFO that a background `cat` keeps draining.
const PRELUDE: &str = r#"
tour_stop() {
  if [[ -n ${TOUR_PID:-} ]]; then
    kill -TERM "$TOUR_PID" 2>/dev/null || true
    wait "$TOUR_PID" || true
    exec 3<&-
    wait "$TOUR_DRAIN" || true
    TOUR_PID=
  fi
}
trap tour_stop EXIT
trap 'exit 143' TERM INT

tour_serve() {
  tour_stop
  local fifo="$TOUR_DIR/tokend.fifo" line
  rm -f "$fifo"
  mkfifo "$fifo"
  TOKEND_LISTEN=127.0.0.1:0 TOKEND_LOG_FORMAT=json \
    "$TOKEND_BIN" serve >>"$TOUR_DIR/tokend.log" 2>"$fifo" &
  TOUR_PID=$!
  exec 3<"$fifo"
  while IFS= read -r line <&3; do
    printf '%s\n' "$line" >>"$TOUR_DIR/tokend.log"
    if [[ $line == *'tokend listening'* && $line =~ \"addr\":\"([^\"]+)\" ]]; then
      TOUR_BASE="http://${BASH_REMATCH[1]}"
      cat <&3 >>"$TOUR_DIR/tokend.log" &
      TOUR_DRAIN=$!
      return 0
    fi
  done
  echo "tokend stopped before listening" >&2
  exit 1
}

set -x
"#;

/// The tour as the harness runs it.
struct Tour {
    script: String,
    /// How many times the tour starts the server.
    server_starts: usize,
    /// Every `curl` command of the tour (continuation lines joined).
    curls: Vec<String>,
}

/// Single-quotes a string for bash.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `VAR=value ... cargo run --release -- serve` → `VAR=value ... tour_serve`.
fn server_start(line: &str) -> Option<String> {
    let vars = line.trim().strip_suffix(SERVE)?;
    let all_vars = vars.split_whitespace().all(|w| {
        w.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty() && k.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        })
    });
    all_vars.then(|| format!("{vars}tour_serve"))
}

impl Tour {
    fn from_readme(readme: &str) -> Tour {
        Tour::between(readme, TOUR_START, TOUR_END)
    }

    /// The `sh` blocks between two marks of the README.
    fn between(readme: &str, start_mark: &str, end_mark: &str) -> Tour {
        assert_eq!(readme.matches(start_mark).count(), 1, "one {start_mark}");
        assert_eq!(readme.matches(end_mark).count(), 1, "one {end_mark}");
        let start = readme.find(start_mark).unwrap();
        let end = readme.find(end_mark).unwrap();
        assert!(start < end, "{start_mark} comes before {end_mark}");
        let section = &readme[start..end];

        let mut script = String::from(PRELUDE);
        let mut server_starts = 0;
        let mut curls = Vec::new();
        let mut command = String::new();
        let mut in_sh = false;
        let mut after_blank = true;
        for line in section.lines() {
            if !in_sh {
                in_sh = line.trim_end() == "```sh";
                after_blank = true;
                continue;
            }
            if line.trim_end() == "```" {
                in_sh = false;
                continue;
            }
            if let Some(title) = line.strip_prefix("# ").filter(|_| after_blank) {
                script.push_str(&format!(
                    "printf '\\n%s\\n' {}\n",
                    quoted(&format!("{STEP}{title}"))
                ));
            }
            after_blank = line.trim().is_empty();
            let line = match server_start(line) {
                Some(serve) => {
                    server_starts += 1;
                    serve
                }
                None => line.replace("http://localhost:5000", "$TOUR_BASE"),
            };
            if !line.trim_start().starts_with('#') {
                command.push_str(line.trim_end().trim_end_matches('\\'));
                command.push(' ');
                if !line.trim_end().ends_with('\\') {
                    if command.contains("curl ") {
                        curls.push(command.trim().to_string());
                    }
                    command.clear();
                }
            }
            script.push_str(&line);
            script.push('\n');
        }
        assert!(!in_sh, "an unclosed ```sh block in the tour");
        Tour {
            script,
            server_starts,
            curls,
        }
    }
}

/// The output of each commented step, by its comment's first line.
struct Steps(Vec<(String, String)>);

impl Steps {
    fn parse(stdout: &str) -> Steps {
        let mut steps: Vec<(String, String)> = Vec::new();
        for line in stdout.lines() {
            match line.strip_prefix(STEP) {
                Some(title) => steps.push((title.to_string(), String::new())),
                None => {
                    if let Some((_, out)) = steps.last_mut() {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
        }
        Steps(steps)
    }

    /// The output of the step whose comment starts with `title`.
    fn of(&self, title: &str) -> &str {
        let found: Vec<&(String, String)> = self
            .0
            .iter()
            .filter(|(t, _)| t.starts_with(title))
            .collect();
        assert_eq!(found.len(), 1, "one step starting {title:?} in the tour");
        found[0].1.trim()
    }

    /// The step's output holds each of `needles`.
    fn shows(&self, title: &str, needles: &[&str]) {
        let out = self.of(title);
        for needle in needles {
            assert!(
                out.contains(needle),
                "step {title:?} should show {needle:?}, showed:\n{out}"
            );
        }
    }

    /// The step's output ends with these lines (status codes printed by `-w`).
    fn ends_with_lines(&self, title: &str, lines: &[&str]) {
        let out = self.of(title);
        let tail: Vec<&str> = out.lines().rev().take(lines.len()).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        assert_eq!(tail, lines, "step {title:?} showed:\n{out}");
    }
}

/// Runs a tour's script against the built binary in embedded mode.
fn run_tour(tour: &Tour) -> TourRun {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tour.sh"), &tour.script).unwrap();
    let mut cmd = Command::new("timeout");
    cmd.args([TOUR_TIMEOUT_SECS, "bash", "-euo", "pipefail", "tour.sh"])
        .current_dir(dir.path());
    // The developer's own tokend settings stay out; the server gets a fresh keys directory,
    // test-cheap Argon2 and EdDSA only (RSA key generation is slow in a debug build).
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TOKEND_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("TOKEND_BIN", env!("CARGO_BIN_EXE_tokend"))
        .env("TOUR_DIR", dir.path())
        .env("TOKEND_KEYS_DIR", dir.path().join("keys"))
        .env("TOKEND_ARGON2", "m=256,t=1,p=1")
        .env("TOKEND_SIGNING_ALGS", "EdDSA");
    let out = cmd.output().unwrap();
    let log = std::fs::read_to_string(dir.path().join("tokend.log")).unwrap_or_default();
    TourRun {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        status: out.status,
        log,
    }
}

/// Runs the README tour between `<!-- {marker}-tour:start` and `<!-- {marker}-tour:end -->`
/// (the `what` tour): it starts the server once and succeeds; the tour and its run.
fn readme_tour(marker: &str, what: &str) -> (Tour, TourRun) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let tour = Tour::between(
        &readme,
        &format!("<!-- {marker}-tour:start"),
        &format!("<!-- {marker}-tour:end -->"),
    );
    assert_eq!(
        tour.server_starts, 1,
        "the {what} tour starts the server once"
    );
    let run = run_tour(&tour);
    assert!(
        run.status.success(),
        "the {what} tour failed:\n{}\n{}\n{}",
        run.stdout,
        run.stderr,
        run.log
    );
    (tour, run)
}

/// Every curl of the tour makes a failure visible (`--fail-with-body`, or prints the status).
fn no_silent_curls(tour: &Tour) {
    for curl in &tour.curls {
        assert!(
            curl.contains("--fail-with-body") || curl.contains("%{http_code}"),
            "a tour curl that can fail silently: {curl}"
        );
    }
}

/// What one run of a tour printed.
struct TourRun {
    stdout: String,
    stderr: String,
    status: std::process::ExitStatus,
    /// The server's log.
    log: String,
}

#[test]
fn the_readme_code_flow_tour_runs_as_written() {
    let (_, run) = readme_tour("code", "code-flow");
    let steps = Steps::parse(&run.stdout);
    steps.shows(
        "Redeem the code with the verifier",
        &["\"id_token\"", "\"refresh_token\""],
    );
    steps.shows(
        "Ask userinfo who signed in",
        &["\"preferred_username\": \"ada\""],
    );
    steps.shows(
        "A second redemption of the same code is refused",
        &["invalid_grant"],
    );
}

#[test]
fn the_readme_pushed_authorization_request_tour_runs_as_written() {
    let (_, run) = readme_tour("par", "PAR");
    let steps = Steps::parse(&run.stdout);
    steps.shows(
        "Push the request",
        &[
            "\"request_uri\":\"urn:ietf:params:oauth:request_uri:",
            "\"expires_in\":60",
        ],
    );
    steps.shows(
        "The browser opens the authorization endpoint",
        &["/login?req="],
    );
    steps.shows(
        "Sign in on the page",
        &["https://app.example/callback?code=", "state=xyz"],
    );
    steps.shows("Redeem the code as usual", &["\"id_token\""]);
    steps.ends_with_lines("The request URI was used", &["400"]);
    steps.shows(
        "Without pushing",
        &[
            "https://app.example/callback?error=invalid_request",
            "state=xyz",
        ],
    );
}

#[test]
fn the_readme_device_tour_runs_as_written() {
    let (_, run) = readme_tour("device", "device");
    let steps = Steps::parse(&run.stdout);
    steps.shows(
        "The device asks for a pair of codes",
        &[
            "\"device_code\"",
            "\"user_code\"",
            "\"interval\":5",
            "/device",
        ],
    );
    steps.shows("It shows the short code", &["/device and enter "]);
    steps.shows(
        "It polls the token endpoint",
        &["\"error\":\"authorization_pending\"", "} 400"],
    );
    steps.shows(
        "The page with the code sends a browser",
        &["/login?user_code="],
    );
    steps.shows(
        "Sign in; the page sends the browser back",
        &["/device?user_code="],
    );
    steps.shows(
        "The page names the client and the code",
        &["Connect <strong>My CLI</strong>", "Device connected"],
    );
    steps.shows(
        "Back on the device",
        &["\"access_token\"", "\"refresh_token\"", "\"id_token\""],
    );
    steps.shows(
        "The tokens come once",
        &["\"error\":\"invalid_grant\"", "} 400"],
    );
    steps.shows(
        "The CLI stays signed in",
        &["\"access_token\"", "\"refresh_token\""],
    );
}

#[test]
fn the_readme_tour_runs_top_to_bottom_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let tour = Tour::from_readme(&readme);
    assert_eq!(
        tour.server_starts, 2,
        "the tour starts the server, then again with the clients file"
    );
    assert!(!tour.curls.is_empty());
    for curl in &tour.curls {
        assert!(
            curl.contains("--fail-with-body") || curl.contains("%{http_code}"),
            "a tour curl that can fail silently (give it --fail-with-body): {curl}"
        );
    }

    let TourRun {
        stdout,
        stderr,
        status,
        log,
    } = run_tour(&tour);
    assert!(
        status.success(),
        "the tour failed ({status}):\n--- output\n{stdout}\n--- trace\n{stderr}\n--- tokend\n{log}"
    );
    assert_eq!(log.matches("tokend listening").count(), 2, "{log}");

    let steps = Steps::parse(&stdout);
    steps.shows(
        "Register",
        &[
            r#""username":"ezradev""#,
            r#""email":"ezra@example.com""#,
            r#""roles":["user"]"#,
        ],
    );
    assert!(!steps.of("Register").contains("argon2"), "never a hash");
    steps.shows(
        "Log in (200",
        &[
            r#""access_token":""#,
            r#""refresh_token":""#,
            r#""token_type":"Bearer""#,
        ],
    );
    steps.shows("Who am I", &[r#""username":"ezradev""#]);
    steps.shows(
        "Is this token live?",
        &[r#""active":true"#, r#""fresh":true"#],
    );
    steps.shows("Refresh:", &[r#""access_token":""#, r#""refresh_token":""#]);
    steps.shows("An access token from a refresh", &["fresh_token_required"]);
    steps.ends_with_lines("An access token from a refresh", &["403"]);
    steps.shows("OAuth2:", &[r#""access_token":""#, r#""refresh_token":""#]);
    steps.shows("Rename with", &[r#""username":"ezra_updated""#]);
    steps.shows("The public keys", &["HTTP/1.1 200", r#""keys":["#]);
    assert!(
        steps
            .of("The public keys")
            .to_ascii_lowercase()
            .contains("etag:"),
        "an ETag"
    );
    steps.shows("Discovery", &[r#""token_endpoint":"#, r#""jwks_uri":"#]);
    steps.ends_with_lines("Change the password", &["204", "401"]);
    steps.ends_with_lines("Log out the laptop", &["204"]);
    steps.ends_with_lines("Log out every session", &["204", "401"]);
    steps.shows(
        "An access token for the client itself",
        &[r#""scope":"invoices:read""#, r#""token_type":"Bearer""#],
    );
    assert!(!steps
        .of("An access token for the client itself")
        .contains("refresh_token"));
    steps.shows(
        "Introspection",
        &[
            r#""active":true"#,
            r#""client_id":"billing""#,
            r#""sub":"billing""#,
        ],
    );
}

#[test]
fn the_readme_password_reset_and_email_change_tour_runs_as_written() {
    let (_, run) = readme_tour("reset", "reset");
    let steps = Steps::parse(&run.stdout);
    steps.ends_with_lines("Forgot the password", &["202", "202"]);
    steps.shows("The mail lands in mail/", &["/auth/password/reset?token="]);
    steps.ends_with_lines("Set the new password", &["204"]);
    steps.ends_with_lines("The link is spent", &["400", "401"]);
    steps.ends_with_lines("Change the email address", &["202"]);
    steps.shows(
        "The new address gets the confirmation link",
        &[
            r#""email":"hedy@lamarr.example""#,
            r#""email_verified":true"#,
        ],
    );
    steps.shows(
        "Changed and verified",
        &[r#""email":"hedy@lamarr.example""#, "To: hedy@example.com"],
    );
    assert!(
        !run.log.contains("token="),
        "no link reaches the log:\n{}",
        run.log
    );
}

#[test]
fn the_readme_dpop_tour_runs_as_written() {
    let (tour, run) = readme_tour("dpop", "DPoP");
    no_silent_curls(&tour);
    let steps = Steps::parse(&run.stdout);
    let thumbprint = steps.of("The app's key");
    let jkt = thumbprint.lines().last().unwrap_or_default().trim();
    assert_eq!(
        jkt.len(),
        43,
        "a SHA-256 thumbprint, base64url: {thumbprint}"
    );
    let granted = steps.of("A password grant with a proof");
    assert!(granted.contains("\"token_type\":\"DPoP\""), "{granted}");
    let body: serde_json::Value =
        serde_json::from_str(granted.lines().last().unwrap_or_default()).unwrap();
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(
        crate::helpers::claims(access)["cnf"]["jkt"],
        jkt,
        "the token is bound to the key the tour made"
    );
    steps.shows(
        "Call an API with the DPoP scheme",
        &["\"username\":\"ada\""],
    );
    steps.shows("Sent as a bearer token", &["invalid_token", " 401"]);
    steps.shows(
        "A proof is good once",
        &["200", "invalid_dpop_proof", " 401"],
    );
    steps.shows("my-app is public", &["invalid_dpop_proof", " 400"]);
    steps.shows(
        "With a proof of the same key",
        &["\"token_type\":\"DPoP\"", "\"refresh_token\""],
    );
}

/// The last line of a step's output as JSON (a token's claims, an answer).
fn last_json(out: &str) -> serde_json::Value {
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn the_readme_token_exchange_tour_runs_as_written() {
    let (tour, run) = readme_tour("tx", "token exchange");
    no_silent_curls(&tour);
    let steps = Steps::parse(&run.stdout);
    let user = last_json(steps.of("A user signs in to my-app"));
    assert_eq!(user["aud"], "tokend", "{user}");
    assert!(user.get("act").is_none(), "{user}");

    let exchanged = steps.of("The gateway exchanges");
    assert!(
        exchanged
            .contains(r#""issued_token_type":"urn:ietf:params:oauth:token-type:access_token""#),
        "{exchanged}"
    );
    assert!(!exchanged.contains("refresh_token"), "{exchanged}");
    let c = last_json(steps.of("The same user"));
    assert_eq!(c["sub"], user["sub"], "{c}");
    assert_eq!(c["sid"], user["sid"], "{c}");
    assert_eq!(c["aud"], "https://orders.example/", "{c}");
    assert_eq!(c["client_id"], "gateway", "{c}");
    assert_eq!(
        c["act"],
        serde_json::json!({"sub": "gateway", "client_id": "gateway"}),
        "{c}"
    );
    assert_eq!(c["scope"], "orders:read", "{c}");
    assert!(c["exp"].as_i64() <= user["exp"].as_i64(), "{c}");

    let introspected = steps.of("Introspection shows who acts");
    assert!(introspected.contains(r#""active":true"#), "{introspected}");
    assert!(
        introspected.contains(r#""act":{"sub":"gateway","client_id":"gateway"}"#),
        "{introspected}"
    );
    steps.shows(
        "An audience the gateway may not",
        &["invalid_target", " 400"],
    );
    steps.shows("A scope wider", &["invalid_scope", " 400"]);
    let app = last_json(steps.of("my-app asks for a token meant for the orders API"));
    assert_eq!(app["aud"], "https://orders.example/", "{app}");
    let refreshed = last_json(steps.of("The family keeps the resource"));
    assert_eq!(refreshed["aud"], "https://orders.example/", "{refreshed}");
    assert_ne!(refreshed["jti"], app["jti"], "a new token");
    steps.shows(
        "A resource my-app did not register",
        &["invalid_target", " 400"],
    );
    steps.shows("Signing the user out everywhere", &[r#"{"active":false}"#]);
}

#[test]
fn the_readme_private_key_jwt_tour_runs_as_written() {
    let (tour, run) = readme_tour("pkjwt", "private_key_jwt");
    no_silent_curls(&tour);
    let steps = Steps::parse(&run.stdout);
    let issued = steps.of("A token for the service");
    let body: serde_json::Value =
        serde_json::from_str(issued.lines().last().unwrap_or_default()).unwrap();
    let access = body["access_token"].as_str().unwrap();
    let claims = crate::helpers::claims(access);
    assert_eq!(claims["sub"], "reports", "{claims}");
    assert_eq!(claims["client_id"], "reports", "{claims}");
    assert_eq!(body["scope"], "invoices:read", "{body}");
    steps.shows(
        "An assertion is good once",
        &["invalid_client", "used before", " 401"],
    );
    steps.shows(
        "Introspection takes a fresh assertion",
        &["\"active\":true", "\"client_id\":\"reports\""],
    );
    steps.shows(
        "The service has no secret",
        &["invalid_client", "private_key_jwt", " 401"],
    );
    assert!(
        !run.log.contains(access),
        "no token reaches the log:\n{}",
        run.log
    );
}
