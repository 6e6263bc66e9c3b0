//! Mail through the outbox and email verification (docs/mail.md), against a real SMTP server
//! (`aiosmtpd` writing a Maildir, started by `deploy/test.sh` or privately here) and the `.eml`
//! directory, in both modes. Deliveries are waited for by polling the mailbox with a deadline;
//! nothing is timed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokend::clock::ManualClock;
use tokend::store::{ClaimedMail, MailStore, MailToken, OutgoingMail, StoreError};

use crate::helpers::*;
use crate::in_both_modes;
use crate::services::{free_port, unique_name};

const PASSWORD: &str = "correct horse battery";
/// How long a test waits for mail to arrive (retries are capped at 30 s).
const DELIVERY_DEADLINE: Duration = Duration::from_secs(90);

in_both_modes!(
    a_registration_mails_a_verification_link_through_smtp,
    without_smtp_mail_lands_whole_as_eml_files,
    an_smtp_outage_delays_mail_and_loses_none,
    a_registration_whose_mail_cannot_be_queued_is_undone,
    no_log_line_holds_a_verification_token,
    a_verification_link_confirms_through_the_page_and_a_get_spends_nothing,
    a_verification_token_confirms_through_json_once,
    resending_is_throttled_per_address,
    required_verification_refuses_sign_in_until_the_address_is_confirmed,
    an_admin_address_earns_admin_once_at_verification,
);

// ---------------------------------------------------------------------------------------------
// The SMTP server and the mailbox
// ---------------------------------------------------------------------------------------------

/// Whether `deploy/test.sh` said the SMTP server is required (then tests fail, never skip).
fn smtp_required() -> bool {
    std::env::var("TOKEND_TEST_REQUIRE_SMTP").is_ok_and(|v| v == "1") || std::env::var("CI").is_ok()
}

/// The Python that has `aiosmtpd`: `TOKEND_TEST_AIOSMTPD_PYTHON`, else the venv of
/// `deploy/test.sh`.
fn aiosmtpd_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TOKEND_TEST_AIOSMTPD_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python");
    let ok = Command::new(&venv)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(venv)
}

/// A private `aiosmtpd` writing a Maildir, that a test may stop and start again on the same
/// port. Killed on drop.
pub struct Smtpd {
    port: u16,
    python: PathBuf,
    maildir: tempfile::TempDir,
    child: Option<Child>,
}

impl Smtpd {
    /// Starts one on a free port; `None` (the test skips) when there is no aiosmtpd and the
    /// test command did not require one.
    pub async fn start() -> Option<Smtpd> {
        let Some(python) = aiosmtpd_python() else {
            assert!(
                !smtp_required(),
                "no aiosmtpd: set TOKEND_TEST_AIOSMTPD_PYTHON (deploy/test.sh installs it)"
            );
            eprintln!("SKIPPED: no aiosmtpd (run the tests with deploy/test.sh)");
            return None;
        };
        let maildir = tempfile::tempdir().expect("maildir");
        // aiosmtpd creates a Maildir's subdirectories only for a directory that does not exist
        // yet; into an existing empty one every delivery fails.
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir(maildir.path().join(sub)).expect("maildir");
        }
        let mut s = Smtpd {
            port: free_port(),
            python,
            maildir,
            child: None,
        };
        s.start_again().await;
        Some(s)
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn mailbox(&self) -> Mailbox {
        Mailbox(self.maildir.path().to_path_buf())
    }

    /// Stops the server (SIGKILL: no goodbye to clients in flight) and waits until the port is
    /// closed.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        for _ in 0..400 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("aiosmtpd still accepts on {} after being killed", self.port);
    }

    /// Starts the server on its port and waits until it accepts connections.
    pub async fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = std::fs::File::create(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(format!("target/test-services/aiosmtpd-{}.log", self.port)),
        )
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
        let mut child = Command::new(&self.python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(self.maildir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn aiosmtpd");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("aiosmtpd exited at start-up ({status})");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "aiosmtpd did not start"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.child = Some(child);
    }
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where a test's mail is delivered: the shared server of `deploy/test.sh`
/// (`TOKEND_TEST_SMTP_URL`, `TOKEND_TEST_MAILBOX`), else a private one.
enum SmtpServer {
    Shared { url: String, mailbox: Mailbox },
    Private(Smtpd),
}

impl SmtpServer {
    async fn get() -> Option<SmtpServer> {
        match (
            std::env::var("TOKEND_TEST_SMTP_URL"),
            std::env::var("TOKEND_TEST_MAILBOX"),
        ) {
            (Ok(url), Ok(dir)) => Some(SmtpServer::Shared {
                url,
                mailbox: Mailbox(PathBuf::from(dir)),
            }),
            _ => Smtpd::start().await.map(SmtpServer::Private),
        }
    }

    fn url(&self) -> String {
        match self {
            SmtpServer::Shared { url, .. } => url.clone(),
            SmtpServer::Private(s) => s.url(),
        }
    }

    fn mailbox(&self) -> Mailbox {
        match self {
            SmtpServer::Shared { mailbox, .. } => mailbox.clone(),
            SmtpServer::Private(s) => s.mailbox(),
        }
    }
}

/// A directory of messages: a Maildir (`new/`, `cur/`) or a directory of `.eml` files.
#[derive(Clone, Debug)]
pub struct Mailbox(pub PathBuf);

/// One message as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub message_id: String,
    pub raw: String,
}

impl Received {
    /// The verification link's token.
    pub fn token(&self) -> String {
        token_in(&self.raw).unwrap_or_else(|| panic!("no link in {}", self.raw))
    }

    /// The password reset link's token.
    pub fn reset_token(&self) -> String {
        link_token_in(&self.raw, "/auth/password/reset")
            .unwrap_or_else(|| panic!("no reset link in {}", self.raw))
    }

    /// Whether this is a password reset mail.
    pub fn is_reset(&self) -> bool {
        link_token_in(&self.raw, "/auth/password/reset").is_some()
    }

    pub fn subject(&self) -> String {
        header_value(&self.raw, "Subject").unwrap_or_default()
    }
}

/// The value of header `name` (first occurrence, unfolded), if any.
pub(crate) fn header_value(raw: &str, name: &str) -> Option<String> {
    let head = raw.split("\r\n\r\n").next().unwrap_or(raw);
    let head = head.split("\n\n").next().unwrap_or(head);
    let prefix = format!("{}:", name.to_ascii_lowercase());
    let mut lines = head.lines().peekable();
    while let Some(line) = lines.next() {
        if line.to_ascii_lowercase().starts_with(&prefix) {
            let mut v = line[prefix.len()..].trim().to_string();
            while let Some(next) = lines.peek() {
                if next.starts_with(' ') || next.starts_with('\t') {
                    v.push(' ');
                    v.push_str(next.trim());
                    lines.next();
                } else {
                    break;
                }
            }
            return Some(v);
        }
    }
    None
}

/// Quoted-printable decoded (RFC 2045 §6.7): soft line breaks dropped, `=XX` made bytes.
fn quoted_printable_decoded(body: &str) -> String {
    let joined = body.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'=')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The bodies of a message's parts (RFC 2046 §5.1), each decoded from its
/// `Content-Transfer-Encoding`, one after the other.
pub(crate) fn decoded_text(raw: &str) -> String {
    let boundary = header_value(raw, "Content-Type").and_then(|ct| {
        let start = ct.find("boundary=")? + "boundary=".len();
        Some(
            ct[start..]
                .trim_start_matches('"')
                .split(['"', ';'])
                .next()?
                .to_string(),
        )
    });
    let parts: Vec<&str> = match &boundary {
        Some(b) => raw.split(&format!("--{b}")).skip(1).collect(),
        None => vec![raw],
    };
    let mut text = String::new();
    for part in parts {
        let (head, body) = part
            .split_once("\r\n\r\n")
            .or_else(|| part.split_once("\n\n"))
            .unwrap_or(("", part));
        if head
            .to_ascii_lowercase()
            .contains("content-transfer-encoding: quoted-printable")
        {
            text.push_str(&quoted_printable_decoded(body));
        } else {
            text.push_str(body);
        }
    }
    text
}

/// The token of the first `/auth/verify-email?token=` link in a message, whatever the
/// transfer encoding of its parts.
fn token_in(raw: &str) -> Option<String> {
    link_token_in(raw, "/auth/verify-email")
}

/// The token of the first `{path}?token=` link in a message.
pub(crate) fn link_token_in(raw: &str, path: &str) -> Option<String> {
    let text = decoded_text(raw);
    let marker = format!("{path}?token=");
    let start = text.find(&marker)? + marker.len();
    let token: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    (token.len() == 43).then_some(token)
}

impl Mailbox {
    fn files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for dir in [self.0.join("new"), self.0.join("cur"), self.0.clone()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if p.is_file() && !name.starts_with('.') {
                    files.push(p);
                }
            }
        }
        files
    }

    /// Every message to `to` (by `To:`), in no particular order.
    pub fn to(&self, to: &str) -> Vec<Received> {
        self.files()
            .into_iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .filter(|raw| header_value(raw, "To").is_some_and(|v| v.contains(to)))
            .map(|raw| Received {
                message_id: header_value(&raw, "Message-ID").unwrap_or_default(),
                raw,
            })
            .collect()
    }

    /// Waits (bounded) until at least `n` messages to `to` are there; answers them all.
    pub async fn wait_for(&self, to: &str, n: usize) -> Vec<Received> {
        self.wait_for_matching(to, n, |_| true).await
    }

    /// The messages to `to` that `wanted` accepts, waiting (bounded) until there are `n`.
    pub async fn wait_for_matching(
        &self,
        to: &str,
        n: usize,
        wanted: impl Fn(&Received) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + DELIVERY_DEADLINE;
        loop {
            let got: Vec<Received> = self.to(to).into_iter().filter(|m| wanted(m)).collect();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} messages to {to} arrived within {DELIVERY_DEADLINE:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The value of a metric without labels in `/metrics`.
pub(crate) async fn metric(app: &TestApp, name: &str) -> f64 {
    app.metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits (bounded) until the outbox of `app` is empty, as its depth gauge says after at least
/// one more pass of the worker.
pub(crate) async fn wait_outbox_empty(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + DELIVERY_DEADLINE;
    let mut zeros = 0;
    while zeros < 3 {
        if metric(app, "tokend_mail_outbox_depth").await == 0.0 {
            zeros += 1;
        } else {
            zeros = 0;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox did not empty"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

pub(crate) fn address() -> (String, String) {
    let name = unique_name("m").replace('-', "");
    let username = name[..20].to_string();
    (username.clone(), format!("{username}@example.com"))
}

async fn register(app: &TestApp) -> (String, String) {
    let (username, email) = address();
    let res = app.register(&username, &email, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    (username, email)
}

/// An app whose mail goes to a directory (embedded mode's default from the test environment;
/// set explicitly in production mode): answers it and its mailbox.
pub(crate) async fn app_with_mail_dir(
    mode: Mode,
    adjust: impl FnOnce(&mut HashMap<String, String>),
) -> (TestApp, Mailbox, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    let m = mail.clone();
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_MAIL_DIR".into(), m.to_string_lossy().into_owned());
        env.insert("TOKEND_DISPLAY_NAME".into(), "Example Corp".into());
        adjust(env);
    })
    .await;
    (app, Mailbox(mail), dir)
}

// ---------------------------------------------------------------------------------------------
// Milestone A: delivery
// ---------------------------------------------------------------------------------------------

async fn a_registration_mails_a_verification_link_through_smtp(mode: Mode) {
    let Some(smtp) = SmtpServer::get().await else {
        return;
    };
    let url = smtp.url();
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_SMTP_URL".into(), url);
        env.remove("TOKEND_MAIL_DIR");
        env.insert("TOKEND_DISPLAY_NAME".into(), "Example Corp".into());
        env.insert("TOKEND_MAIL_FROM".into(), "accounts@tokend.test".into());
    })
    .await;
    let (username, email) = register(&app).await;
    let got = smtp.mailbox().wait_for(&email, 1).await;
    assert_eq!(got.len(), 1, "one mail per registration");
    let m = &got[0];
    assert!(
        m.message_id.starts_with('<') && m.message_id.ends_with("@tokend.test>"),
        "{}",
        m.message_id
    );
    let from = header_value(&m.raw, "From").unwrap();
    assert!(
        from.contains("Example Corp") && from.contains("<accounts@tokend.test>"),
        "{from}"
    );
    assert!(header_value(&m.raw, "Subject")
        .unwrap()
        .contains("Confirm your email address"));
    assert!(m.raw.contains("multipart/alternative"), "{}", m.raw);
    assert!(m.raw.contains("text/plain") && m.raw.contains("text/html"));
    assert!(m.raw.contains(&username));
    // ASCII parts go as they are, so the link is whole in the message as received.
    assert_eq!(
        m.raw.matches("Content-Transfer-Encoding: 7bit").count(),
        2,
        "{}",
        m.raw
    );
    assert!(m.raw.contains(&format!(
        "http://tokend.test/auth/verify-email?token={}",
        m.token()
    )));
    // The one secret of the mail is that link's token: every link carries the same one, and
    // the password is nowhere.
    let text = decoded_text(&m.raw);
    let links: Vec<&str> = text
        .split("/auth/verify-email?token=")
        .skip(1)
        .map(|rest| &rest[..43])
        .collect();
    assert!(
        !links.is_empty() && links.iter().all(|t| *t == m.token()),
        "{links:?}"
    );
    assert!(!text.contains(PASSWORD));
    wait_outbox_empty(&app).await;
    assert!(metric(&app, "tokend_mail_sent_total").await >= 1.0);
    assert_eq!(smtp.mailbox().to(&email).len(), 1, "sent once");
}

async fn without_smtp_mail_lands_whole_as_eml_files(mode: Mode) {
    let (app, mailbox, _dir) = app_with_mail_dir(mode, |_| {}).await;
    let (_, email) = register(&app).await;
    let got = mailbox.wait_for(&email, 1).await;
    assert_eq!(got.len(), 1);
    let raw = &got[0].raw;
    assert!(raw.contains("Example Corp"));
    assert!(token_in(raw).is_some(), "{raw}");
    use std::os::unix::fs::PermissionsExt;
    let files: Vec<_> = std::fs::read_dir(&mailbox.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".eml") && !name.starts_with('.'),
            "only whole .eml files: {name}"
        );
        let mode = std::fs::metadata(f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    // The file is named by the Message-ID's left part.
    let id = got[0].message_id.trim_matches(['<', '>']);
    let local = id.split('@').next().unwrap();
    assert!(mailbox.0.join(format!("{local}.eml")).exists());
}

/// The sum of a counter over the instances.
async fn total(apps: &[TestApp], name: &str) -> f64 {
    let mut sum = 0.0;
    for app in apps {
        sum += metric(app, name).await;
    }
    sum
}

/// The server goes away while users register and ask for password resets; nothing is lost and
/// nothing arrives twice once it is back (on the same port). In production mode two instances
/// share the outbox. The test holds the clock still, so each message is tried once and then
/// waits for its retry (1 s later): retries come when time moves, not before.
async fn an_smtp_outage_delays_mail_and_loses_none(mode: Mode) {
    let Some(mut smtpd) = Smtpd::start().await else {
        return;
    };
    let url = smtpd.url();
    let apps = instances(mode, |env| {
        env.insert("TOKEND_SMTP_URL".into(), url.clone());
        env.remove("TOKEND_MAIL_DIR");
    })
    .await;
    let mailbox = smtpd.mailbox();
    // One delivered before the outage. The server writes a message to the mailbox before it
    // answers the transfer, so the file alone does not mean tokend has its answer: killing the
    // server in between fails the send of a message that arrived, which is then retried (and
    // arrives twice). Wait until tokend has counted it sent.
    let (_, first) = register(&apps[0]).await;
    mailbox.wait_for(&first, 1).await;
    let deadline = tokio::time::Instant::now() + DELIVERY_DEADLINE;
    while total(&apps, "tokend_mail_sent_total").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first message arrived but was not counted sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    smtpd.stop().await;
    let mut emails = Vec::new();
    for i in 0..6 {
        let (_, email) = register(&apps[i % apps.len()]).await;
        emails.push(email);
    }
    // Every one of them, and the user from before, forgets the password.
    for (i, email) in emails.iter().chain([&first]).enumerate() {
        let res = apps[(i + 1) % apps.len()]
            .post_json("/auth/password/forgot", &json!({ "email": email }))
            .await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
    }
    const WAITING: f64 = 13.0;
    // Every message is tried, and fails, once.
    let deadline = tokio::time::Instant::now() + DELIVERY_DEADLINE;
    while total(&apps, "tokend_mail_send_failures_total").await < WAITING {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the messages were not tried while the server was away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The depth gauge says so (each instance counts the outbox they share).
    for app in &apps {
        while metric(app, "tokend_mail_outbox_depth").await != WAITING {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the outbox depth does not show the thirteen waiting messages"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    smtpd.start_again().await;
    // The server is back; the retries are due once the clock has moved past them (all
    // instances share it).
    apps[0].clock.advance(Duration::from_secs(2));

    for email in emails.iter().chain([&first]) {
        mailbox.wait_for(email, 2).await;
    }
    for app in &apps {
        wait_outbox_empty(app).await;
    }
    // Exactly once: per recipient (a verification mail and a reset mail each) and per
    // Message-ID.
    let mut ids: HashMap<String, usize> = HashMap::new();
    for email in emails.iter().chain([&first]) {
        let got = mailbox.to(email);
        assert_eq!(got.len(), 2, "{email}: {} messages", got.len());
        assert_eq!(
            got.iter().filter(|m| m.is_reset()).count(),
            1,
            "{email}: one reset mail"
        );
        for m in &got {
            *ids.entry(m.message_id.clone()).or_default() += 1;
        }
    }
    assert_eq!(ids.len(), 14);
    assert!(ids.values().all(|n| *n == 1));
    assert_eq!(
        total(&apps, "tokend_mail_send_failures_total").await,
        WAITING,
        "one failed attempt per message: none was retried before its time"
    );
    assert_eq!(total(&apps, "tokend_mail_sent_total").await, 14.0);
    // The reset links delivered after the outage work.
    let reset = mailbox
        .to(&first)
        .into_iter()
        .find(Received::is_reset)
        .unwrap();
    let res = apps[0]
        .post_json(
            "/auth/password/reset",
            &json!({ "token": reset.reset_token(), "new_password": "after the outage" }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
}

/// An outbox whose writes fail while `down` is set (what a MongoDB that stops answering
/// between two writes looks like); everything else goes to the real store.
struct FailingOutbox {
    inner: Arc<dyn MailStore>,
    down: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl MailStore for FailingOutbox {
    async fn enqueue(
        &self,
        mail: &OutgoingMail,
        token: Option<&MailToken>,
    ) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable {
                store: "mongodb",
                message: "the test took the outbox away".into(),
            });
        }
        self.inner.enqueue(mail, token).await
    }
    async fn claim(
        &self,
        holder: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimedMail>, StoreError> {
        self.inner.claim(holder, now_ms, lease_ms).await
    }
    async fn delivered(&self, id: &str, holder: &str) -> Result<(), StoreError> {
        self.inner.delivered(id, holder).await
    }
    async fn retry_at(&self, id: &str, holder: &str, at_ms: i64) -> Result<(), StoreError> {
        self.inner.retry_at(id, holder, at_ms).await
    }
    async fn depth(&self) -> Result<u64, StoreError> {
        self.inner.depth().await
    }
    async fn token(
        &self,
        hash: &str,
        purpose: &str,
        now_ms: i64,
    ) -> Result<Option<MailToken>, StoreError> {
        self.inner.token(hash, purpose, now_ms).await
    }
    async fn take_token(
        &self,
        hash: &str,
        purpose: &str,
        now_ms: i64,
    ) -> Result<Option<MailToken>, StoreError> {
        self.inner.take_token(hash, purpose, now_ms).await
    }
    async fn forget_tokens(&self, user_id: &str, purpose: &str) -> Result<u64, StoreError> {
        self.inner.forget_tokens(user_id, purpose).await
    }
    async fn forget_user_tokens(&self, user_id: &str) -> Result<u64, StoreError> {
        self.inner.forget_user_tokens(user_id).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

/// The account and its verification mail are two writes; when the second fails the first is
/// taken back and the client hears 503, so that trying again simply works.
async fn a_registration_whose_mail_cannot_be_queued_is_undone(mode: Mode) {
    let down = Arc::new(AtomicBool::new(true));
    let (mut env, dir) = test_env(mode);
    let mail_dir = tempfile::tempdir().unwrap();
    env.insert(
        "TOKEND_MAIL_DIR".into(),
        mail_dir.path().to_string_lossy().into_owned(),
    );
    let mailbox = Mailbox(mail_dir.path().to_path_buf());
    let outage = down.clone();
    let app = spawn_env_with_backends(mode, env, dir, ManualClock::starting_now(), |mut b| {
        b.mail = Arc::new(FailingOutbox {
            inner: b.mail,
            down: outage,
        });
        b
    })
    .await;
    let (username, email) = address();
    let res = app.register(&username, &email, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(res).await, "temporarily_unavailable");
    // No account was left behind.
    let res = app.login(&email, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    down.store(false, Ordering::SeqCst);
    let res = app.register(&username, &email, PASSWORD).await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "the same registration again"
    );
    let got = mailbox.wait_for(&email, 1).await;
    assert_eq!(got.len(), 1);
    let res = app
        .post_json("/auth/verify-email", &json!({ "token": got[0].token() }))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

/// Two instances on one outbox: each message is claimed by one of them and sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_the_outbox_send_each_message_once() {
    let Some(smtp) = SmtpServer::get().await else {
        return;
    };
    let url = smtp.url();
    let apps = instances(Mode::Production, |env| {
        env.insert("TOKEND_SMTP_URL".into(), url.clone());
    })
    .await;
    let emails: Vec<String> = (0..12).map(|_| address().1).collect();
    join_all(emails.iter().enumerate().map(|(i, email)| {
        let app = &apps[i % 2];
        let username = email.split('@').next().unwrap().to_string();
        async move {
            let res = app.register(&username, email, PASSWORD).await;
            assert_eq!(res.status(), StatusCode::CREATED);
        }
    }))
    .await;
    for email in &emails {
        smtp.mailbox().wait_for(email, 1).await;
    }
    for app in &apps {
        wait_outbox_empty(app).await;
    }
    let mut sent = 0.0;
    for app in &apps {
        sent += metric(app, "tokend_mail_sent_total").await;
    }
    assert_eq!(sent, 12.0, "each message handed over once in all");
    for email in &emails {
        assert_eq!(smtp.mailbox().to(email).len(), 1, "{email}");
    }
}

// ---------------------------------------------------------------------------------------------
// Milestone B: verification
// ---------------------------------------------------------------------------------------------

async fn me(app: &TestApp, email: &str) -> Value {
    let (access, _) = app.login_pair(email, PASSWORD).await;
    app.get_bearer("/users/me", &access)
        .await
        .json()
        .await
        .unwrap()
}

async fn a_verification_link_confirms_through_the_page_and_a_get_spends_nothing(mode: Mode) {
    let (app, mailbox, _dir) = app_with_mail_dir(mode, |_| {}).await;
    let (_, email) = register(&app).await;
    assert_eq!(me(&app, &email).await["email_verified"], false);
    let token = mailbox.wait_for(&email, 1).await[0].token();
    let link = app.url(&format!("/auth/verify-email?token={token}"));
    let b = new_browser();
    // A scanner opening the link, twice: nothing is spent.
    for _ in 0..2 {
        let res = reqwest::get(&link).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let page = b.get(&link).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains(&email), "{html}");
    assert!(html.contains("action=\"/auth/verify-email/confirm\""));
    let csrf = csrf_of(&html);
    assert_eq!(me(&app, &email).await["email_verified"], false);

    // Without the CSRF token (or with another browser's) the form is refused.
    let res = b
        .post(app.url("/auth/verify-email/confirm"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = new_browser()
        .post(app.url("/auth/verify-email/confirm"))
        .form(&[("csrf_token", csrf.as_str()), ("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(me(&app, &email).await["email_verified"], false);

    let res = b
        .post(app.url("/auth/verify-email/confirm"))
        .form(&[("csrf_token", csrf.as_str()), ("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("Email address confirmed"));
    assert_eq!(me(&app, &email).await["email_verified"], true);

    // Spent: the link and the form now say so.
    let res = b.get(&link).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("<h1>"));
    let res = b
        .post(app.url("/auth/verify-email/confirm"))
        .form(&[("csrf_token", csrf.as_str()), ("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

async fn a_verification_token_confirms_through_json_once(mode: Mode) {
    let (app, mailbox, _dir) = app_with_mail_dir(mode, |_| {}).await;
    let (_, email) = register(&app).await;
    let token = mailbox.wait_for(&email, 1).await[0].token();
    for bad in ["", "short", &"A".repeat(43)] {
        let res = app
            .post_json("/auth/verify-email", &json!({ "token": bad }))
            .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_code(res).await, "invalid_grant");
    }
    // Concurrent confirmations of one token: exactly one succeeds.
    let body = json!({ "token": token });
    let answers = join_all((0..8).map(|_| app.post_json("/auth/verify-email", &body))).await;
    let ok: Vec<_> = answers
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .collect();
    assert_eq!(ok.len(), 1, "a token is spent once");
    assert!(answers
        .iter()
        .all(|r| r.status() == StatusCode::OK || r.status() == StatusCode::BAD_REQUEST));
    let user = me(&app, &email).await;
    assert_eq!(user["email_verified"], true);
    assert_eq!(user["roles"], json!(["user"]));
}

async fn resending_is_throttled_per_address(mode: Mode) {
    let (app, mailbox, _dir) = app_with_mail_dir(mode, |_| {}).await;
    // Asking for links to an address that has no account yet spends nothing of its budget:
    // its owner's registration still gets its mail.
    let (username, email) = address();
    let body = json!({ "email": email });
    let answers =
        join_all((0..10).map(|_| app.post_json("/auth/verify-email/resend", &body))).await;
    assert!(answers.iter().all(|r| r.status() == StatusCode::ACCEPTED));
    let res = app.register(&username, &email, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    mailbox.wait_for(&email, 1).await;
    // Within the minute of the registration's mail: every answer 202, no mail.
    let answers =
        join_all((0..10).map(|_| app.post_json("/auth/verify-email/resend", &body))).await;
    assert!(answers.iter().all(|r| r.status() == StatusCode::ACCEPTED));
    wait_outbox_empty(&app).await;
    assert_eq!(mailbox.to(&email).len(), 1);
    // A minute later one of ten parallel requests gets a mail, and so on: five an hour.
    for expected in 2..=5 {
        app.clock.advance(Duration::from_secs(61));
        let answers =
            join_all((0..10).map(|_| app.post_json("/auth/verify-email/resend", &body))).await;
        assert!(answers.iter().all(|r| r.status() == StatusCode::ACCEPTED));
        mailbox.wait_for(&email, expected).await;
    }
    app.clock.advance(Duration::from_secs(61));
    let res = app
        .post_json("/auth/verify-email/resend", &json!({ "email": email }))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    wait_outbox_empty(&app).await;
    assert_eq!(
        mailbox.to(&email).len(),
        5,
        "the sixth within the hour is refused"
    );
    // Every mail's link works until one is used; then the account is verified.
    let tokens: Vec<String> = mailbox.to(&email).iter().map(Received::token).collect();
    let res = app
        .post_json("/auth/verify-email", &json!({ "token": tokens[3] }))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // Unknown and verified addresses, and bad input: 202 and nothing sent.
    app.clock.advance(Duration::from_secs(3600));
    for who in [email.as_str(), "nobody-here@example.com", "not an address"] {
        let res = app
            .post_json("/auth/verify-email/resend", &json!({ "email": who }))
            .await;
        assert_eq!(res.status(), StatusCode::ACCEPTED, "{who}");
    }
    wait_outbox_empty(&app).await;
    assert_eq!(mailbox.to(&email).len(), 5);
    assert!(mailbox.to("nobody-here@example.com").is_empty());
}

async fn required_verification_refuses_sign_in_until_the_address_is_confirmed(mode: Mode) {
    let (app, mailbox, _dir) = app_with_mail_dir(mode, |env| {
        env.insert("TOKEND_EMAIL_VERIFICATION".into(), "required".into());
    })
    .await;
    let (username, email) = register(&app).await;
    // The JSON login and the password grant: 403 email_not_verified for the right password…
    let res = app.login(&email, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(res).await, "email_not_verified");
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", username.as_str()),
            ("password", PASSWORD),
            ("client_id", "tokend"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(res).await, "email_not_verified");
    // …and the same 401 as ever for a wrong one (nothing learnt without the password).
    let res = app.login(&email, "wrong password!").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // The hosted sign-in page.
    let b = new_browser();
    let page = b.get(app.url("/login")).send().await.unwrap();
    let csrf = csrf_of(&page.text().await.unwrap());
    let res = b
        .post(app.url("/login"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("username", username.as_str()),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.headers().get("set-cookie").is_none(), "no session");
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("Confirm your email address first"));

    let token = mailbox.wait_for(&email, 1).await[0].token();
    let res = app
        .post_json("/auth/verify-email", &json!({ "token": token }))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
}

async fn an_admin_address_earns_admin_once_at_verification(mode: Mode) {
    let boss = address();
    let boss_email = boss.1.clone();
    let (app, mailbox, _dir) = app_with_mail_dir(mode, |env| {
        env.insert(
            "TOKEND_ADMIN_EMAILS".into(),
            format!("other@example.com, {}", boss_email.to_uppercase()),
        );
        env.insert(
            "TOKEND_BOOTSTRAP_ADMIN_EMAIL".into(),
            "root@example.com".into(),
        );
        env.insert("TOKEND_BOOTSTRAP_ADMIN_PASSWORD".into(), PASSWORD.into());
    })
    .await;
    let res = app.register(&boss.0, &boss.1, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["roles"], json!(["user"]), "registering grants nothing");
    let (access, refresh) = app.login_pair(&boss.1, PASSWORD).await;
    assert_eq!(claims(&access)["roles"], json!(["user"]));

    let token = mailbox.wait_for(&boss.1, 1).await[0].token();
    let res = app
        .post_json("/auth/verify-email", &json!({ "token": token }))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let user = me(&app, &boss.1).await;
    assert_eq!(user["roles"], json!(["user", "admin"]));
    // A session started before carries the role from its next refresh.
    let (refreshed, _) = app.refresh_pair(&refresh).await;
    assert_eq!(claims(&refreshed)["roles"], json!(["user", "admin"]));

    // An admin takes it away; verifying again is not possible and signing in grants nothing.
    let (root, _) = app.login_pair("root@example.com", PASSWORD).await;
    let id = user["id"].as_str().unwrap();
    let res = app
        .put_bearer(
            &format!("/admin/users/{id}/roles"),
            &root,
            &json!({"roles": ["user"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .post_json("/auth/verify-email", &json!({ "token": token }))
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    app.clock.advance(Duration::from_secs(3600));
    let res = app
        .post_json("/auth/verify-email/resend", &json!({ "email": boss.1 }))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    wait_outbox_empty(&app).await;
    assert_eq!(
        mailbox.to(&boss.1).len(),
        1,
        "a verified address gets no new link"
    );
    let (access, _) = app.login_pair(&boss.1, PASSWORD).await;
    assert_eq!(claims(&access)["roles"], json!(["user"]));
}

// ---------------------------------------------------------------------------------------------
// Logs, the browser, the outbox store
// ---------------------------------------------------------------------------------------------

/// A real `tokend serve` logging everything (`trace`, every dependency included): registration,
/// the page, the JSON confirmation and a resend, through `.eml` files in embedded mode and
/// through the SMTP server in production mode; no log line holds the token or the link.
async fn no_log_line_holds_a_verification_token(mode: Mode) {
    let cwd = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut env, _keys) = test_env(mode);
    env.insert("TOKEND_LISTEN".into(), format!("127.0.0.1:{port}"));
    env.insert("TOKEND_ISSUER".into(), format!("http://127.0.0.1:{port}"));
    env.insert("TOKEND_LOG".into(), "trace".into());
    let smtp = match mode {
        Mode::Embedded => None,
        Mode::Production => {
            let Some(smtp) = SmtpServer::get().await else {
                return;
            };
            env.insert("TOKEND_SMTP_URL".into(), smtp.url());
            Some(smtp)
        }
    };
    let mailbox = match &smtp {
        Some(s) => s.mailbox(),
        None => Mailbox(PathBuf::from(&env["TOKEND_MAIL_DIR"])),
    };
    let tokend = crate::services::TokendProcess::start("mail-logs", &env, cwd.path()).await;
    let http = reqwest::Client::new();
    let (username, email) = address();
    let res = http
        .post(tokend.url("/auth/register"))
        .json(&json!({"username": username, "email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let token = mailbox.wait_for(&email, 1).await[0].token();
    let res = http
        .get(tokend.url(&format!("/auth/verify-email?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = http
        .post(tokend.url("/auth/verify-email"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = http
        .post(tokend.url("/auth/verify-email/resend"))
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    // A password reset, through its page and JSON.
    let res = http
        .post(tokend.url("/auth/password/forgot"))
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let reset = mailbox
        .wait_for(&email, 2)
        .await
        .into_iter()
        .find(Received::is_reset)
        .expect("a reset mail")
        .reset_token();
    let res = http
        .get(tokend.url(&format!("/auth/password/reset?token={reset}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let new_password = "the new secret passphrase";
    let res = http
        .post(tokend.url("/auth/password/reset"))
        .json(&json!({ "token": reset, "new_password": new_password }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let lines = tokend.logs().join("\n");
        if lines.contains("email verified")
            && lines.contains("mail delivered")
            && lines.contains("password reset; sessions revoked")
        {
            break lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flow was not logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!lines.contains(&token), "a log line holds the token");
    assert!(!lines.contains(&reset), "a log line holds the reset token");
    assert!(
        !lines.contains("verify-email?token") && !lines.contains("password/reset?token"),
        "a log line holds a link"
    );
    assert!(!lines.contains(PASSWORD));
    assert!(!lines.contains(new_password));
}

/// A person signs up, opens the link of the mail in Chromium and confirms; screenshots of the
/// page before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_opens_the_verification_link_and_confirms() {
    let Some(mut browser) = crate::browser::Browser::start("verify_email_in_a_browser").await
    else {
        return;
    };
    let port = free_port();
    let (app, mailbox, _dir) = app_with_mail_dir(Mode::Embedded, |env| {
        env.insert("TOKEND_LISTEN".into(), format!("127.0.0.1:{port}"));
        env.insert("TOKEND_ISSUER".into(), format!("http://127.0.0.1:{port}"));
    })
    .await;
    let (_, email) = register(&app).await;
    let token = mailbox.wait_for(&email, 1).await[0].token();
    let link = format!("http://127.0.0.1:{port}/auth/verify-email?token={token}");
    assert!(
        mailbox.to(&email)[0].raw.contains(&link),
        "the mail holds the link"
    );
    browser.goto(&link).await;
    assert!(browser
        .text("h1")
        .await
        .contains("Confirm your email address"));
    assert!(browser.text("main").await.contains(&email));
    browser.screenshot("confirm-page").await;
    browser.click("Confirm").await;
    assert!(browser.text("h1").await.contains("Email address confirmed"));
    browser.screenshot("confirmed").await;
    assert_eq!(me(&app, &email).await["email_verified"], true);
    // The link again: spent.
    browser.expect_status(400);
    browser.goto(&link).await;
    assert!(browser.text("h1").await.contains("does not work"));
    browser.screenshot("spent-link").await;
    browser.finish().await;
}
