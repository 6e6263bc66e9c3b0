//! A real browser for tests of HTML pages: headless Chromium driven by its own chromedriver
//! through WebDriver (fantoccini), with a fresh profile per browser. Every action checks the
//! browser's console log, so a page that logs an error, throws, fails to load a resource or
//! breaks its Content Security Policy fails the test that opened it.
//!
//! ```ignore
//! let Some(mut browser) = Browser::start("sign_in_page").await else { return };
//! browser.goto(&app.url("/sign-in")).await;
//! browser.fill("Email", "ezra@example.com").await;
//! browser.fill("password", "securepass").await; // a label, or a name, id or aria-label
//! browser.click("Sign in").await; // a button or link text, or a CSS selector
//! browser.screenshot("signed-in").await; // target/browser-screenshots/sign_in_page/01-signed-in.png
//! assert!(browser.text("body").await.contains("Welcome"));
//! browser.finish().await; // the last console check; ends the session and chromedriver
//! ```
//!
//! `deploy/test.sh` installs Debian's `chromium` and `chromium-driver` and exports the variables
//! below; there a missing browser fails the test. Outside it (plain `cargo nextest run`) a
//! missing browser skips the test with a message.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::services::free_port;

/// The chromedriver binary (else `chromedriver` on the `PATH`).
pub const ENV_CHROMEDRIVER_BIN: &str = "TOKEND_TEST_CHROMEDRIVER_BIN";
/// The Chromium binary chromedriver starts (else `chromium` on the `PATH`).
pub const ENV_CHROMIUM_BIN: &str = "TOKEND_TEST_CHROMIUM_BIN";
/// `1` (set by `deploy/test.sh`, and implied by `CI`): a missing browser fails the test.
pub const ENV_REQUIRE_BROWSER: &str = "TOKEND_TEST_REQUIRE_BROWSER";

/// The window every page is rendered in (and screenshot at).
pub const WINDOW: (u32, u32) = (1280, 900);

/// How long chromedriver may take to answer `/status`, and an element to appear.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Chromium's command line. The machine has no internet: without the background-networking
/// switches Chromium keeps trying to reach its update, sync and field-trial services.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--metrics-recording-only",
];

/// One entry of the browser's console log.
#[derive(Debug, Clone)]
pub struct ConsoleEntry {
    /// `SEVERE`, `WARNING`, `INFO`, `DEBUG`.
    pub level: String,
    /// Where Chromium says it came from: `javascript`, `console-api`, `network`, `security`...
    pub source: String,
    pub message: String,
}

impl std::fmt::Display for ConsoleEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} {}] {}", self.level, self.source, self.message)
    }
}

impl ConsoleEntry {
    fn from_json(entry: &Value) -> ConsoleEntry {
        let field = |name: &str| entry[name].as_str().unwrap_or_default().to_string();
        ConsoleEntry {
            level: field("level"),
            source: field("source"),
            message: field("message"),
        }
    }

    /// An error in the console (a `console.error`, an uncaught exception, a resource that failed
    /// to load), or a Content Security Policy violation of any level (report-only ones are
    /// warnings). The browser's own request for `/favicon.ico` is not the page's doing.
    pub fn is_problem(&self) -> bool {
        let favicon = self.source == "network" && self.message.contains("/favicon.ico ");
        !favicon && (self.level == "SEVERE" || self.message.contains("Content Security Policy"))
    }
}

/// chromedriver's log endpoint (`POST /session/{id}/se/log` with `{"type": "browser"}`): the
/// console entries since the previous call.
#[derive(Debug)]
struct ReadBrowserLog;

impl WebDriverCompatibleCommand for ReadBrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// Whether a missing browser fails the test: under `deploy/test.sh` or in CI.
fn browser_required() -> bool {
    let set = |var: &str| {
        std::env::var(var)
            .map(|v| !matches!(v.trim(), "" | "0" | "false"))
            .unwrap_or(false)
    };
    set(ENV_REQUIRE_BROWSER) || set("CI")
}

/// `var` when set (a file, or the test fails: the setting is wrong), else the first of `names`
/// on the `PATH`.
fn find_binary(var: &str, names: &[&str]) -> Result<PathBuf, String> {
    if let Ok(bin) = std::env::var(var) {
        if !bin.trim().is_empty() {
            let path = PathBuf::from(bin);
            assert!(path.is_file(), "{var}={} is not a file", path.display());
            return Ok(path);
        }
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
                .find(|candidate| candidate.is_file())
        })
        .ok_or_else(|| format!("no {} on the PATH and {var} is not set", names.join(" or ")))
}

/// chromedriver and Chromium, or why they cannot be had.
fn binaries() -> Result<(PathBuf, PathBuf), String> {
    let driver = find_binary(ENV_CHROMEDRIVER_BIN, &["chromedriver"])?;
    let chromium = find_binary(ENV_CHROMIUM_BIN, &["chromium", "chromium-browser"])?;
    Ok((driver, chromium))
}

/// `target/browser-screenshots/<test>/`, emptied.
fn screenshot_dir(test: &str) -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target dir>/tmp`: the screenshots go next to it.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let dir = target.join("browser-screenshots").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the screenshot directory");
    dir
}

/// A string as an XPath 1.0 literal (which has no escapes: a string holding both quote kinds
/// becomes a `concat()`).
fn xpath_literal(s: &str) -> String {
    if !s.contains('\'') {
        format!("'{s}'")
    } else if !s.contains('"') {
        format!("\"{s}\"")
    } else {
        let parts: Vec<String> = s.split('\'').map(|p| format!("'{p}'")).collect();
        format!("concat({})", parts.join(", \"'\", "))
    }
}

/// Whether clicking `element` loads another document: a submit button or input (forms here
/// post without scripts), or a link with an address.
async fn starts_navigation(element: &Element) -> bool {
    let tag = element
        .tag_name()
        .await
        .unwrap_or_default()
        .to_ascii_lowercase();
    let attr = |name: &'static str| async move { element.attr(name).await.ok().flatten() };
    match tag.as_str() {
        "a" => attr("href")
            .await
            .is_some_and(|h| !h.is_empty() && !h.starts_with('#')),
        "button" => {
            let kind = attr("type").await.unwrap_or_else(|| "submit".into());
            // A button submits the form it sits in or names.
            kind.eq_ignore_ascii_case("submit")
                && (attr("form").await.is_some()
                    || element.find(Locator::XPath("ancestor::form")).await.is_ok())
        }
        "input" => attr("type")
            .await
            .is_some_and(|t| t.eq_ignore_ascii_case("submit")),
        _ => false,
    }
}

/// Waits (at most [`READY_WITHIN`]) until `root`, the `<html>` of the page a click left, is no
/// longer in the document: the new page has replaced it. A click whose navigation the page
/// refused (a form the browser will not submit) leaves it, and the caller's next check says so.
async fn wait_until_stale(root: &Element) {
    let deadline = std::time::Instant::now() + READY_WITHIN;
    while std::time::Instant::now() < deadline {
        match root.tag_name().await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            Err(_) => return,
        }
    }
}

/// A chromedriver process started for one browser, killed with its process group (Chromium
/// included) when dropped.
struct Driver {
    child: Child,
    log: PathBuf,
}

impl Driver {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group was made at spawn (`Browser::start`): Chromium is in it.
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium with its own chromedriver and profile. Start it with [`Browser::start`];
/// end it with [`Browser::finish`], which runs the last console check.
pub struct Browser {
    client: Client,
    test: String,
    shots: PathBuf,
    taken: u32,
    /// Console entries read so far (chromedriver hands each out once).
    seen: Vec<ConsoleEntry>,
    /// How many of `seen` were already reported as problems.
    reported: usize,
    /// HTTP statuses of pages the test expects to fail and whose failed load (an error page is
    /// a 4xx document, which Chromium logs as one) has not been seen yet.
    expected_statuses: Vec<u16>,
    finished: bool,
    driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session on a fresh profile.
    /// `test` names the screenshot directory. `None` when there is no browser and none is
    /// required (see the module documentation); panics when one is required.
    pub async fn start(test: &str) -> Option<Browser> {
        let (driver_bin, chromium_bin) = match binaries() {
            Ok(found) => found,
            Err(why) if browser_required() => panic!(
                "no browser: {why}. deploy/test.sh installs Debian's chromium and \
                 chromium-driver; or set {ENV_CHROMEDRIVER_BIN} and {ENV_CHROMIUM_BIN}"
            ),
            Err(why) => {
                eprintln!(
                    "SKIPPED {test}: no browser ({why}). Run the tests with deploy/test.sh (it \
                     installs Debian's chromium and chromium-driver), or set \
                     {ENV_CHROMEDRIVER_BIN} and {ENV_CHROMIUM_BIN}; {ENV_REQUIRE_BROWSER}=1 \
                     makes this a failure"
                );
                return None;
            }
        };
        let profile = tempfile::tempdir().expect("profile directory");
        let log = profile.path().join("chromedriver.log");
        let port = free_port();
        let child = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that Chromium dies with it when the test is cut short.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", driver_bin.display()));
        let mut driver = Driver { child, log };
        let base = format!("http://127.0.0.1:{port}");
        wait_for_driver(&base, &mut driver).await;

        let user_data = profile.path().join("profile");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--window-size={},{}", WINDOW.0, WINDOW.1));
        args.push(format!("--user-data-dir={}", user_data.display()));
        let capabilities: Capabilities = match json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium_bin, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }) {
            Value::Object(map) => map,
            _ => unreachable!("a JSON object literal"),
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = match ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&base)
            .await
        {
            Ok(client) => client,
            Err(e) => panic!(
                "chromedriver could not start {}: {e}\nchromedriver log:\n{}",
                chromium_bin.display(),
                driver.log_tail()
            ),
        };
        // `--window-size` sizes the window; the page gets that less the window's frame. Grow the
        // window by the frame so the viewport (and every screenshot) is WINDOW.
        let frame = client
            .execute(
                "return [window.outerWidth - window.innerWidth, \
                 window.outerHeight - window.innerHeight];",
                vec![],
            )
            .await
            .expect("measure the window frame");
        let extra = |i: usize| u32::try_from(frame[i].as_u64().unwrap_or(0)).unwrap_or(0);
        client
            .set_window_size(WINDOW.0 + extra(0), WINDOW.1 + extra(1))
            .await
            .expect("set the window size");
        Some(Browser {
            client,
            test: test.to_string(),
            shots: screenshot_dir(test),
            taken: 0,
            seen: Vec::new(),
            reported: 0,
            expected_statuses: Vec::new(),
            finished: false,
            driver,
            _profile: profile,
        })
    }

    /// The WebDriver client, for what the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` (waiting for its load event), then checks the console.
    pub async fn goto(&mut self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
        self.check().await;
    }

    /// Types `value` into the field labelled `field` (its `<label>` text), else the field whose
    /// `name`, `id` or `aria-label` is `field`; a `<select>` picks the option of that text.
    /// Then checks the console.
    pub async fn fill(&mut self, field: &str, value: &str) {
        let element = self.field(field).await;
        let tag = element.tag_name().await.unwrap_or_default();
        if tag.eq_ignore_ascii_case("select") {
            element
                .select_by_label(value)
                .await
                .unwrap_or_else(|e| panic!("select {value:?} in {field:?}: {e}"));
        } else {
            element.clear().await.unwrap_or_else(|e| {
                panic!("clear {field:?}: {e}");
            });
            element
                .send_keys(value)
                .await
                .unwrap_or_else(|e| panic!("type into {field:?}: {e}"));
        }
        self.check().await;
    }

    /// Clicks the button, link or submit input whose text (or value, or `aria-label`) is
    /// `target`, else the element the CSS selector `target` finds; waits for a navigation it
    /// starts, then checks the console.
    pub async fn click(&mut self, target: &str) {
        let lit = xpath_literal(target);
        let by_text = format!(
            "//button[normalize-space(.)={lit} or @aria-label={lit}] \
             | //a[normalize-space(.)={lit} or @aria-label={lit}] \
             | //input[(@type='submit' or @type='button') and @value={lit}] \
             | //*[@role='button' and normalize-space(.)={lit}]"
        );
        let element = match self.client.find(Locator::XPath(&by_text)).await {
            Ok(element) => element,
            Err(_) => self
                .client
                .find(Locator::Css(target))
                .await
                .unwrap_or_else(|e| {
                    panic!("nothing to click: no button or link {target:?}, no element {target:?} ({e})")
                }),
        };
        let navigates = starts_navigation(&element).await;
        let root = if navigates {
            self.client.find(Locator::Css("html")).await.ok()
        } else {
            None
        };
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {target:?}: {e}"));
        if let Some(root) = root {
            // The driver may answer the click before the navigation it starts has replaced the
            // document; the next read must see the new page, so wait for the old root to go.
            wait_until_stale(&root).await;
        }
        self.check().await;
    }

    /// Waits (at most 30 s) for an element matching the CSS selector, and returns it.
    pub async fn wait_for(&mut self, css: &str) -> Element {
        let element = self
            .client
            .wait()
            .at_most(READY_WITHIN)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css:?} within {READY_WITHIN:?}: {e}"));
        self.check().await;
        element
    }

    /// The rendered text of the first element matching the CSS selector.
    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css:?} on the page: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("text of {css:?}: {e}"))
    }

    /// The address of the current page.
    pub async fn url(&self) -> url::Url {
        self.client.current_url().await.expect("current URL")
    }

    /// Saves a PNG of the window as `target/browser-screenshots/<test>/<n>-<name>.png` (`n`
    /// counts this browser's screenshots from 01) and returns its path.
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot {name:?}: {e}"));
        self.taken += 1;
        let path = self.shots.join(format!("{:02}-{name}.png", self.taken));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self.check().await;
        path
    }

    /// Reads the console entries logged since the last read, and returns every entry of this
    /// browser so far.
    pub async fn console(&mut self) -> &[ConsoleEntry] {
        let read = self
            .client
            .issue_cmd(ReadBrowserLog)
            .await
            .unwrap_or_else(|e| panic!("read the browser log: {e}"));
        if let Some(entries) = read.as_array() {
            self.seen
                .extend(entries.iter().map(ConsoleEntry::from_json));
        }
        &self.seen
    }

    /// The console errors and CSP violations not reported yet (see
    /// [`ConsoleEntry::is_problem`]); they count as reported once returned.
    pub async fn problems(&mut self) -> Vec<ConsoleEntry> {
        self.console().await;
        // An expected failed load may reach the log after the action's own check: each
        // expectation holds until one entry meets it.
        let mut fresh = Vec::new();
        for e in &self.seen[self.reported..] {
            if !e.is_problem() {
                continue;
            }
            let met = self.expected_statuses.iter().position(|s| {
                e.source == "network"
                    && e.message
                        .contains(&format!("the server responded with a status of {s} "))
            });
            match met {
                Some(i) => {
                    self.expected_statuses.remove(i);
                }
                None => fresh.push(e.clone()),
            }
        }
        self.reported = self.seen.len();
        fresh
    }

    /// Lets the checks accept one failed load of a document answered with `status` (the test
    /// expects an error page), whenever its log entry arrives; every other problem still fails
    /// them.
    pub fn expect_status(&mut self, status: u16) {
        self.expected_statuses.push(status);
    }

    /// Fails the test when the page logged an error or broke its CSP since the last check.
    pub async fn check(&mut self) {
        let problems = self.problems().await;
        if !problems.is_empty() {
            let url = self
                .client
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
            panic!(
                "{}: the browser console reported {} problem(s) on {url}:\n{}",
                self.test,
                problems.len(),
                list.join("\n")
            );
        }
    }

    /// The last console check; then closes Chromium and stops chromedriver.
    pub async fn finish(mut self) {
        self.finished = true;
        self.check().await;
        if !self.expected_statuses.is_empty() {
            panic!(
                "{}: the expected pages never came: {:?}",
                self.test, self.expected_statuses
            );
        }
        let client = self.client.clone();
        if let Err(e) = client.close().await {
            panic!(
                "end the WebDriver session: {e}\nchromedriver log:\n{}",
                self.driver.log_tail()
            );
        }
    }

    /// The input, textarea or select labelled or named `field`.
    async fn field(&self, field: &str) -> Element {
        let lit = xpath_literal(field);
        let controls = "self::input or self::textarea or self::select";
        if let Ok(label) = self
            .client
            .find(Locator::XPath(&format!(
                "//label[normalize-space(.)={lit}]"
            )))
            .await
        {
            if let Ok(Some(id)) = label.attr("for").await {
                let by_id = format!("//*[@id={}]", xpath_literal(&id));
                if let Ok(element) = self.client.find(Locator::XPath(&by_id)).await {
                    return element;
                }
            }
            if let Ok(element) = label
                .find(Locator::XPath(&format!(".//*[{controls}]")))
                .await
            {
                return element;
            }
        }
        let by_name =
            format!("//*[({controls}) and (@name={lit} or @id={lit} or @aria-label={lit})]");
        self.client
            .find(Locator::XPath(&by_name))
            .await
            .unwrap_or_else(|e| panic!("no field labelled or named {field:?}: {e}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver field kills chromedriver and Chromium after this.
        if !self.finished && !std::thread::panicking() {
            panic!(
                "{}: Browser dropped without finish(), so its last console check did not run",
                self.test
            );
        }
    }
}

/// Polls chromedriver's `/status` until it reports ready, it exits, or [`READY_WITHIN`] passes.
async fn wait_for_driver(base: &str, driver: &mut Driver) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    loop {
        if let Ok(res) = http.get(format!("{base}/status")).send().await {
            if let Ok(body) = res.json::<Value>().await {
                if body["value"]["ready"] == true {
                    return;
                }
            }
        }
        if let Ok(Some(status)) = driver.child.try_wait() {
            panic!(
                "chromedriver exited at start-up ({status}); its log:\n{}",
                driver.log_tail()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver was not ready within {READY_WITHIN:?}; its log:\n{}",
            driver.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- the harness's own tests, on pages served here -----------------------------------------

/// The policy of the test pages: scripts and styles only from the page's own origin, so an
/// inline script is a violation (CSP Level 3, `script-src`).
const STRICT_CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         </head><body><main>{body}</main></body></html>"
    )
}

/// The test site: `(status, content type, extra header, body)` for a path.
fn test_site(
    path: &str,
) -> (
    u16,
    &'static str,
    Option<(&'static str, &'static str)>,
    String,
) {
    let html = "text/html; charset=utf-8";
    let js = "text/javascript";
    let csp = Some(("content-security-policy", STRICT_CSP));
    match path {
        "/" => (
            200,
            html,
            csp,
            page(
                "Sign in",
                "<h1>Sign in</h1><p id=\"status\">script not run</p>\
                 <form action=\"/welcome\" method=\"get\">\
                 <p><label for=\"email\">Email</label> <input id=\"email\" name=\"email\" type=\"email\"></p>\
                 <p><label><span>Password</span> <input name=\"password\" type=\"password\"></label></p>\
                 <p><label for=\"remember\">Remember me</label> <select id=\"remember\" name=\"remember\">\
                 <option>no</option><option>yes</option></select></p>\
                 <p><button type=\"submit\">Continue</button></p></form>\
                 <script src=\"/app.js\"></script>",
            ),
        ),
        "/app.js" => (
            200,
            js,
            None,
            "document.getElementById('status').textContent = 'script ran';".into(),
        ),
        "/welcome" => (
            200,
            html,
            csp,
            page(
                "Welcome",
                "<h1>Welcome</h1><p id=\"who\"></p><script src=\"/welcome.js\"></script>",
            ),
        ),
        "/welcome.js" => (
            200,
            js,
            None,
            "const q = new URLSearchParams(location.search);\n\
             document.getElementById('who').textContent = q.get('email') + ' (remember: ' + q.get('remember') + ')';"
                .into(),
        ),
        "/inline" => (
            200,
            html,
            csp,
            page(
                "Inline",
                "<p>An inline script the policy forbids.</p>\
                 <script>document.title = 'inline script ran';</script>",
            ),
        ),
        "/report-only" => (
            200,
            html,
            Some(("content-security-policy-report-only", STRICT_CSP)),
            page(
                "Report only",
                "<p>An inline script a report-only policy forbids.</p>\
                 <script>document.title = 'report-only script ran';</script>",
            ),
        ),
        "/throws" => (
            200,
            html,
            csp,
            page("Throws", "<script src=\"/throws.js\"></script>"),
        ),
        "/throws.js" => (
            200,
            js,
            None,
            "throw new Error('boom from throws.js');".into(),
        ),
        "/console-error" => (
            200,
            html,
            csp,
            page("Console error", "<script src=\"/logs.js\"></script>"),
        ),
        "/logs.js" => (
            200,
            js,
            None,
            "console.error('logged by logs.js');".into(),
        ),
        _ => (404, "text/plain", None, "not found".into()),
    }
}

/// What a test site answers for a path: status, content type, one extra header, body.
pub type SiteAnswer = (
    u16,
    &'static str,
    Option<(&'static str, &'static str)>,
    String,
);

/// Serves [`test_site`] on a loopback port (HTTP/1.1, hyper) until the task is aborted.
async fn serve_test_site() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    serve_site(test_site).await
}

/// Serves `site` on a loopback port (HTTP/1.1, hyper) until the task is aborted.
pub async fn serve_site(
    site: fn(&str) -> SiteAnswer,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use http_body_util::Full;
    use hyper::body::Bytes;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the test site");
    let addr = listener.local_addr().expect("test site address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: http::Request<_>| async move {
                    let (status, content_type, header, body) = site(req.uri().path());
                    let mut res = http::Response::builder()
                        .status(status)
                        .header("content-type", content_type)
                        .header("cache-control", "no-store");
                    if let Some((name, value)) = header {
                        res = res.header(name, value);
                    }
                    Ok::<_, std::convert::Infallible>(
                        res.body(Full::new(Bytes::from(body)))
                            .expect("a valid response"),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// The width and height of a PNG (its IHDR chunk, RFC 2083 §4.1.1).
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    let be =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    (be(16), be(20))
}

/// What `browser.goto(url)` panicked with; fails the test when it did not panic.
async fn goto_panics(browser: &mut Browser, url: &str) -> String {
    use futures_util::FutureExt as _;
    let outcome = std::panic::AssertUnwindSafe(browser.goto(url))
        .catch_unwind()
        .await;
    let Err(payload) = outcome else {
        panic!("the harness accepted {url}, whose page breaks its policy or logs an error");
    };
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_fills_clicks_and_screenshots_a_page_under_a_strict_csp() {
    let Some(mut browser) = Browser::start("browser_fills_clicks_and_screenshots").await else {
        return;
    };
    let (site, server) = serve_test_site().await;

    browser.goto(&format!("http://{site}/")).await;
    // The page's own script ran: the policy allows 'self'.
    assert_eq!(browser.text("#status").await, "script ran");
    browser.fill("Email", "ezra@example.com").await; // by <label for>
    browser.fill("Password", "securepass").await; // by a wrapping <label>
    browser.fill("remember", "yes").await; // a <select>, by name
    let form = browser.screenshot("form").await;
    browser.click("Continue").await;

    assert_eq!(browser.url().await.path(), "/welcome");
    let who = browser.wait_for("#who").await;
    assert_eq!(
        who.text().await.unwrap(),
        "ezra@example.com (remember: yes)"
    );
    let welcome = browser.screenshot("welcome").await;
    assert!(welcome.ends_with("browser_fills_clicks_and_screenshots/02-welcome.png"));
    for shot in [&form, &welcome] {
        assert_eq!(png_size(shot), WINDOW, "{}", shot.display());
    }
    browser.finish().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_harness_fails_on_csp_violations_and_console_errors() {
    let Some(mut browser) = Browser::start("browser_harness_fails_on_csp").await else {
        return;
    };
    let (site, server) = serve_test_site().await;

    // An inline script under `script-src 'self'`: blocked, and the harness fails the test.
    let message = goto_panics(&mut browser, &format!("http://{site}/inline")).await;
    assert!(
        message.contains("Content Security Policy") && message.contains("inline"),
        "{message}"
    );
    assert_eq!(
        browser.client().title().await.unwrap(),
        "Inline",
        "the script must not run"
    );

    // The same script under a report-only policy runs, but the violation still fails the test.
    let message = goto_panics(&mut browser, &format!("http://{site}/report-only")).await;
    assert!(message.contains("Content Security Policy"), "{message}");
    assert_eq!(
        browser.client().title().await.unwrap(),
        "report-only script ran"
    );

    // An uncaught exception and a console.error.
    let message = goto_panics(&mut browser, &format!("http://{site}/throws")).await;
    assert!(message.contains("boom from throws.js"), "{message}");
    let message = goto_panics(&mut browser, &format!("http://{site}/console-error")).await;
    assert!(message.contains("logged by logs.js"), "{message}");

    // A page that keeps its policy passes; nothing reported earlier is reported again.
    browser.goto(&format!("http://{site}/")).await;
    assert!(browser.problems().await.is_empty());
    assert!(
        browser.console().await.iter().any(|e| e
            .message
            .contains("violates the following Content Security Policy")),
        "the log keeps every entry"
    );
    browser.finish().await;
    server.abort();
}

#[test]
fn console_problems_are_errors_and_csp_violations_but_not_the_favicon() {
    let entry = |level: &str, source: &str, message: &str| ConsoleEntry {
        level: level.into(),
        source: source.into(),
        message: message.into(),
    };
    // As Chromium words them.
    let favicon = "http://127.0.0.1:1/favicon.ico - Failed to load resource: the server \
                   responded with a status of 404 (Not Found)";
    assert!(!entry("SEVERE", "network", favicon).is_problem());
    let script = favicon.replace("favicon.ico", "app.js");
    assert!(entry("SEVERE", "network", &script).is_problem());
    assert!(entry(
        "INFO",
        "security",
        "http://127.0.0.1:1/ 0 Executing inline script violates the following Content \
         Security Policy directive 'script-src 'self''. The policy is report-only, so the \
         violation has been logged but no further action has been taken."
    )
    .is_problem());
    assert!(!entry(
        "DEBUG",
        "recommendation",
        "[DOM] Input elements should have autocomplete attributes"
    )
    .is_problem());
    assert!(!entry("INFO", "console-api", "\"hello\"").is_problem());
}

#[test]
fn xpath_literals_quote_either_way() {
    assert_eq!(xpath_literal("Email"), "'Email'");
    assert_eq!(xpath_literal("Ezra's"), "\"Ezra's\"");
    assert_eq!(xpath_literal("a'b\"c"), "concat('a', \"'\", 'b\"c')");
}

// ---- tokend in a browser -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_opens_tokend_discovery_document() {
    let Some(mut browser) = Browser::start("browser_opens_tokend_discovery_document").await else {
        return;
    };
    let app = crate::helpers::spawn_app(crate::helpers::Mode::Embedded).await;

    browser
        .goto(&app.url("/.well-known/openid-configuration"))
        .await;
    let shot = browser.screenshot("openid-configuration").await;
    assert_eq!(png_size(&shot), WINDOW);
    // Chromium shows a JSON answer as text: the document as rendered is the document served.
    let shown: Value = serde_json::from_str(&browser.text("pre").await).expect("JSON on screen");
    assert_eq!(shown["issuer"], "http://tokend.test");
    assert_eq!(
        shown["jwks_uri"],
        "http://tokend.test/.well-known/jwks.json"
    );
    browser.finish().await;
    app.stop().await;
}
