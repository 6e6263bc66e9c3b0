//! Configuration: `TOKEND_*` variables (and an optional `.env`) parsed into a validated [`Config`].
//!
//! Every variable has one row in the table of `vars.rs`: its name, default, secrecy, the mode
//! that reads it and how `tokend check-config` shows it. Parsing and checks live with their
//! concern:
//!
//! - `server.rs`: listeners, TLS, connection caps and deadlines, body limit, trusted proxies;
//! - `browser.rs`: CORS origins and the refresh cookie;
//! - `tokens.rs`: issuer, audience, token and session lifetimes, the session cap, DPoP nonces;
//! - `signing.rs`: signing algorithms, RSA size, the rotation schedule;
//! - `stores.rs`: the running mode and its stores;
//! - `accounts.rs`: Argon2id, admins, the bootstrap admin, static clients;
//! - `limits.rs`: rate limits (the device page's user-code limits too);
//! - `registration.rs`: dynamic client registration and its rate limit;
//! - `logging.rs`: log filter and format;
//! - `mail.rs`: SMTP or the `.eml` directory, the sender, email verification.
//!
//! Reading goes through the [`Env`] trait so tests pass a map instead of touching the process
//! environment. Parsing does not stop at the first bad value: [`ConfigError`] lists every bad
//! or conflicting variable, one line each, and `main` prints them all and exits with 2. This
//! module imports nothing from the rest of the crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokend_token_shape::Alg;

mod accounts;
mod browser;
mod env;
mod error;
mod limits;
mod logging;
mod mail;
mod registration;
mod server;
mod signing;
mod stores;
mod tokens;
mod values;
pub(crate) mod vars;

pub use accounts::{Argon2Cost, BootstrapAdmin};
pub use env::{Env, ProcessEnv};
pub use error::{ConfigError, VarError};
pub(crate) use limits::Rate;
pub use logging::LogFormat;
pub use mail::{EmailVerification, MailSettings};
pub(crate) use mail::{MailTransport, SmtpSecurity, SmtpSettings};
pub use registration::RegistrationMode;
pub use server::IpNet;
pub(crate) use stores::Mode;
pub(crate) use values::{parse_duration, show_duration};

use env::Reader;

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `TOKEND_LISTEN`, default `127.0.0.1:5000`.
    pub(crate) listen: SocketAddr,
    /// `TOKEND_ISSUER`, default `http://localhost:5000`, without a trailing slash.
    pub(crate) issuer: String,
    /// `TOKEND_AUDIENCE`, default `tokend`.
    pub(crate) audience: String,
    /// Embedded or production, with the settings of its stores.
    pub(crate) mode: Mode,
    /// `TOKEND_SIGNING_ALGS`, default `EdDSA,RS256`; the first signs by default.
    pub(crate) signing_algs: Vec<Alg>,
    /// `TOKEND_RSA_BITS`: modulus size of new RSA signing keys.
    pub(crate) rsa_bits: usize,
    /// `TOKEND_ACCESS_TTL`.
    pub(crate) access_ttl: Duration,
    /// `TOKEND_REFRESH_TTL`, at most `session_ttl`.
    pub(crate) refresh_ttl: Duration,
    /// `TOKEND_SESSION_TTL`.
    pub(crate) session_ttl: Duration,
    /// `TOKEND_REFRESH_REUSE_LEEWAY`, at most 60 s.
    pub(crate) refresh_reuse_leeway: Duration,
    /// `TOKEND_KEY_ROTATION`, at least `key_prepublish`.
    pub(crate) key_rotation: Duration,
    /// `TOKEND_KEY_PREPUBLISH`, at least twice `jwks_max_age`.
    pub(crate) key_prepublish: Duration,
    /// `TOKEND_JWKS_MAX_AGE`.
    pub(crate) jwks_max_age: Duration,
    /// `TOKEND_KEYSET_RELOAD`: how often every instance reloads the keyset from its store (at
    /// most 30 s).
    pub(crate) keyset_reload: Duration,
    /// `TOKEND_ARGON2`.
    pub(crate) argon2: Argon2Cost,
    /// `TOKEND_ARGON2_CONCURRENCY`: how many Argon2 hashes run at once (default: number of
    /// cores).
    pub(crate) argon2_concurrency: usize,
    /// `TOKEND_ARGON2_NICE`: how many steps below the process's priority the Argon2 threads run
    /// (0–19; `nice`).
    pub(crate) argon2_nice: i32,
    /// `TOKEND_LOG`, default `info`: the log filter (`tracing` env-filter syntax).
    pub log: String,
    /// `TOKEND_LOG_FORMAT`, default text.
    pub log_format: LogFormat,
    /// `TOKEND_EVENTS_RETENTION`, default 90 days: how long account events are kept
    /// (docs/events.md).
    pub(crate) events_retention: Duration,
    /// `TOKEND_CLIENTS_FILE`: static OAuth clients (JSON list), when set.
    pub(crate) clients_file: Option<PathBuf>,
    /// `TOKEND_ADMIN_EMAILS`: lower-cased emails that earn `admin` once their owner proves
    /// control of them (email verification); registering or signing in with one grants nothing.
    pub(crate) admin_emails: Vec<String>,
    /// `TOKEND_BOOTSTRAP_ADMIN_EMAIL` and `TOKEND_BOOTSTRAP_ADMIN_PASSWORD` (both or neither):
    /// the first admin, created at start-up when no account has that email.
    pub(crate) bootstrap_admin: Option<BootstrapAdmin>,
    /// `TOKEND_MAX_SESSIONS_PER_USER`, default 100: live families per user; a login beyond it
    /// ends the oldest.
    pub(crate) max_sessions_per_user: u32,
    /// `TOKEND_BODY_LIMIT` in bytes, default 16 KiB.
    pub(crate) body_limit: usize,
    /// `TOKEND_REQUEST_TIMEOUT`, default 30 s.
    pub(crate) request_timeout: Duration,
    /// `TOKEND_HEADER_READ_TIMEOUT`, default 10 s: from accepting a connection (TLS handshake
    /// and HTTP/1-vs-HTTP/2 detection included) to its first complete request head, and from
    /// the first byte of each later HTTP/1 request to its complete head.
    pub(crate) header_read_timeout: Duration,
    /// `TOKEND_IDLE_TIMEOUT`, default 60 s: a connection with no request in flight (HTTP/1
    /// between keep-alive requests, HTTP/2 with no open stream) is closed after this long.
    pub(crate) idle_timeout: Duration,
    /// `TOKEND_MAX_CONNECTIONS`, default 10,000 per listener: at the cap the accept loop waits.
    pub(crate) max_connections: usize,
    /// `TOKEND_MAX_CONNECTIONS_PER_IP`, default 256: connections beyond it from one peer address
    /// are closed at once; peers in `TOKEND_TRUSTED_PROXIES` are exempt.
    pub(crate) max_connections_per_ip: usize,
    /// `TOKEND_SHUTDOWN_GRACE`, default 30 s.
    pub(crate) shutdown_grace: Duration,
    /// `TOKEND_METRICS_LISTEN`: a separate listener for `/metrics`, `/healthz`, `/readyz`.
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// `TOKEND_RATE_LIMIT=off` disables every limit (benchmarks).
    pub(crate) rate_limit_enabled: bool,
    /// `TOKEND_RATE_LIMIT_IP`, default `600/min` per client IP over the limited endpoints.
    pub(crate) rate_limit_ip: Rate,
    /// `TOKEND_RATE_LIMIT_ACCOUNT`, default `30/min` per account (and per client id).
    pub(crate) rate_limit_account: Rate,
    /// `TOKEND_RATE_LIMIT_USER_CODE`, default `10/min`: wrong user codes on the device page per
    /// client IP.
    pub(crate) rate_limit_user_code: Rate,
    /// `TOKEND_RATE_LIMIT_USER_CODE_GLOBAL`, default `100/min`: wrong user codes on the device
    /// page over the whole service, whatever address they come from.
    pub(crate) rate_limit_user_code_global: Rate,
    /// `TOKEND_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed.
    pub(crate) trusted_proxies: Vec<IpNet>,
    /// `TOKEND_TLS_CERT` and `TOKEND_TLS_KEY` (PEM files), both or neither.
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    /// `TOKEND_REFRESH_COOKIE=on`: browser mode, the refresh token travels in a cookie.
    pub(crate) refresh_cookie: bool,
    /// `TOKEND_CORS_ORIGINS`: allowed browser origins; empty means CORS off.
    pub(crate) cors_origins: Vec<String>,
    /// `TOKEND_BROWSER_SESSION_TTL`: how long a browser sign-in lasts.
    pub(crate) browser_session_ttl: Duration,
    /// `TOKEND_ID_TOKEN_TTL`: an ID token's lifetime.
    pub(crate) id_token_ttl: Duration,
    /// `TOKEND_DISPLAY_NAME`: the product name on the hosted pages.
    pub(crate) display_name: String,
    /// `TOKEND_LOGO_URL`: an optional logo on the hosted pages.
    pub(crate) logo_url: Option<String>,
    /// `TOKEND_CLIENT_REGISTRATION`, default off: who may register clients at
    /// `POST /oauth/register` (docs/registration.md).
    pub(crate) client_registration: RegistrationMode,
    /// `TOKEND_RATE_LIMIT_REGISTRATION`, default `20/h` per client IP: registrations without an
    /// initial access token.
    pub(crate) rate_limit_registration: Rate,
    /// `TOKEND_SMTP_URL`, `TOKEND_MAIL_DIR`, `TOKEND_MAIL_FROM`, `TOKEND_EMAIL_VERIFICATION`.
    pub(crate) mail: MailSettings,
    /// `TOKEND_DPOP_NONCE=on`: DPoP proofs at the token endpoint and on protected routes must
    /// carry a nonce from tokend (RFC 9449 §8, §9; docs/dpop.md).
    pub(crate) dpop_nonce: bool,
}

impl Config {
    /// Parses and validates every variable; the error lists every bad or conflicting one.
    pub fn from_env(env: &dyn Env) -> Result<Config, ConfigError> {
        let mut r = Reader::new(env);
        let server = server::read(&mut r);
        let tokens = tokens::read(&mut r);
        let mode = stores::read(&mut r);
        let signing = signing::read(&mut r);
        let accounts = accounts::read(&mut r);
        let limits = limits::read(&mut r);
        let browser = browser::read(&mut r);
        let logging = logging::read(&mut r);
        let registration = registration::read(&mut r);
        let mail = mail::read(
            &mut r,
            mode.as_ref().map(|m| matches!(m, Mode::Embedded { .. })),
            tokens.as_ref().map(|t| t.issuer.as_str()),
        );
        let config = assemble(
            server,
            tokens,
            mode,
            signing,
            accounts,
            limits,
            browser,
            logging,
            registration,
            mail,
        );
        r.finish(config)
    }

    /// The effective configuration as `VAR=value` lines in the order of the table, with a
    /// `mode=` line before the variables of the mode; secrets redacted.
    pub(crate) fn describe(&self) -> String {
        let mut lines = Vec::new();
        let mut mode_shown = false;
        for var in vars::VARS.iter().filter(|v| v.applies_to(&self.mode)) {
            if var.scope != vars::Scope::All && !mode_shown {
                lines.push(format!("mode={}", self.mode.name()));
                mode_shown = true;
            }
            lines.push(format!("{}={}", var.name, var.shown(self)));
        }
        lines.join("\n")
    }
}

/// The configuration, when every concern was read without an error.
#[allow(clippy::too_many_arguments)]
fn assemble(
    server: Option<server::Server>,
    tokens: Option<tokens::Tokens>,
    mode: Option<Mode>,
    signing: Option<signing::Signing>,
    accounts: Option<accounts::Accounts>,
    limits: Option<limits::Limits>,
    browser: Option<browser::Browser>,
    logging: Option<logging::Logging>,
    registration: Option<registration::Registration>,
    mail: Option<mail::Mail>,
) -> Option<Config> {
    let server::Server {
        listen,
        metrics_listen,
        tls,
        body_limit,
        request_timeout,
        header_read_timeout,
        idle_timeout,
        max_connections,
        max_connections_per_ip,
        shutdown_grace,
        trusted_proxies,
    } = server?;
    let tokens::Tokens {
        issuer,
        audience,
        access_ttl,
        refresh_ttl,
        session_ttl,
        refresh_reuse_leeway,
        max_sessions_per_user,
        dpop_nonce,
    } = tokens?;
    let signing::Signing {
        signing_algs,
        rsa_bits,
        key_rotation,
        key_prepublish,
        jwks_max_age,
        keyset_reload,
    } = signing?;
    let accounts::Accounts {
        argon2,
        argon2_concurrency,
        argon2_nice,
        clients_file,
        admin_emails,
        bootstrap_admin,
    } = accounts?;
    let limits::Limits {
        rate_limit_enabled,
        rate_limit_ip,
        rate_limit_account,
        rate_limit_user_code,
        rate_limit_user_code_global,
    } = limits?;
    let browser::Browser {
        cors_origins,
        refresh_cookie,
        browser_session_ttl,
        id_token_ttl,
        display_name,
        logo_url,
    } = browser?;
    let logging::Logging {
        log,
        log_format,
        events_retention,
    } = logging?;
    let registration::Registration {
        client_registration,
        rate_limit_registration,
    } = registration?;
    let mail::Mail { mail } = mail?;
    Some(Config {
        listen,
        issuer,
        audience,
        mode: mode?,
        signing_algs,
        rsa_bits,
        access_ttl,
        refresh_ttl,
        session_ttl,
        refresh_reuse_leeway,
        key_rotation,
        key_prepublish,
        jwks_max_age,
        keyset_reload,
        argon2,
        argon2_concurrency,
        argon2_nice,
        log,
        log_format,
        events_retention,
        clients_file,
        admin_emails,
        bootstrap_admin,
        max_sessions_per_user,
        body_limit,
        request_timeout,
        header_read_timeout,
        idle_timeout,
        max_connections,
        max_connections_per_ip,
        shutdown_grace,
        metrics_listen,
        rate_limit_enabled,
        rate_limit_ip,
        rate_limit_account,
        rate_limit_user_code,
        rate_limit_user_code_global,
        trusted_proxies,
        tls,
        refresh_cookie,
        cors_origins,
        browser_session_ttl,
        id_token_ttl,
        display_name,
        logo_url,
        client_registration,
        rate_limit_registration,
        mail,
        dpop_nonce,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::vars::*;
    use super::*;

    const KEK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn parse(pairs: &[(&Var, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.name.to_string(), v.to_string()))
            .collect();
        Config::from_env(&map)
    }

    /// The variables named by the errors of `pairs`, in order.
    fn err_vars(pairs: &[(&Var, &str)]) -> Vec<&'static str> {
        match parse(pairs) {
            Err(e) => e.errors().iter().map(|e| e.var).collect(),
            Ok(_) => panic!("expected an error for {:?}", names(pairs)),
        }
    }

    /// The one variable named by the error of `pairs`.
    fn err_var(pairs: &[(&Var, &str)]) -> &'static str {
        let vars = err_vars(pairs);
        assert_eq!(vars.len(), 1, "one error for {:?}: {vars:?}", names(pairs));
        vars[0]
    }

    fn names(pairs: &[(&Var, &str)]) -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (k.name, v.to_string())).collect()
    }

    fn production() -> Vec<(&'static Var, &'static str)> {
        vec![
            (&MONGODB_URI, "mongodb://127.0.0.1:27017"),
            (&REDIS_URL, "redis://127.0.0.1:6379"),
            (&KEY_ENCRYPTION_KEY, KEK),
        ]
    }

    #[test]
    fn defaults_match_the_readme() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.issuer, "http://localhost:5000");
        assert_eq!(c.audience, "tokend");
        assert!(
            matches!(c.mode, Mode::Embedded { ref keys_dir } if keys_dir.as_os_str() == "keys")
        );
        assert_eq!(c.signing_algs, vec![Alg::EdDSA, Alg::RS256]);
        assert_eq!(c.rsa_bits, 3072);
        assert_eq!(c.access_ttl, Duration::from_secs(900));
        assert_eq!(c.refresh_ttl, Duration::from_secs(14 * 86400));
        assert_eq!(c.session_ttl, Duration::from_secs(30 * 86400));
        assert_eq!(c.refresh_reuse_leeway, Duration::from_secs(2));
        assert_eq!(c.key_rotation, Duration::from_secs(7 * 86400));
        assert_eq!(c.key_prepublish, Duration::from_secs(3600));
        assert_eq!(c.jwks_max_age, Duration::from_secs(300));
        assert_eq!(c.keyset_reload, Duration::from_secs(30));
        assert_eq!(
            c.argon2,
            Argon2Cost {
                m_kib: 19456,
                t: 2,
                p: 1
            }
        );
        assert_eq!(
            c.argon2_concurrency,
            std::thread::available_parallelism().map_or(2, |n| n.get())
        );
        assert_eq!(c.argon2_nice, 10);
        assert_eq!(c.log, "info");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.events_retention, Duration::from_secs(90 * 86400));
        let c = parse(&[(&EVENTS_RETENTION, "36h")]).unwrap();
        assert_eq!(c.events_retention, Duration::from_secs(36 * 3600));
        assert_eq!(c.max_sessions_per_user, 100);
        assert_eq!(c.body_limit, 16 * 1024);
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_connections_per_ip, 256);
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert!(c.rate_limit_enabled);
        assert_eq!(c.rate_limit_ip.to_string(), "600/min");
        assert_eq!(c.rate_limit_account.to_string(), "30/min");
        assert!(!c.refresh_cookie);
        assert!(c.clients_file.is_none() && c.bootstrap_admin.is_none() && c.tls.is_none());
        assert!(c.metrics_listen.is_none());
        assert!(c.admin_emails.is_empty() && c.trusted_proxies.is_empty());
        assert!(c.cors_origins.is_empty());
        assert_eq!(c.client_registration, RegistrationMode::Off);
        assert_eq!(c.rate_limit_registration.to_string(), "20/h");
        let Mode::Production {
            mongodb_db,
            redis_prefix,
            ..
        } = parse(&production()).unwrap().mode
        else {
            panic!("production mode");
        };
        assert_eq!(
            (mongodb_db.as_str(), redis_prefix.as_str()),
            ("tokend", "tokend:")
        );
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        for (var, value) in [
            (&LISTEN, "nowhere"),
            (&ISSUER, "not a url"),
            (&ISSUER, "ftp://x"),
            (&SIGNING_ALGS, "HS256"),
            (&RSA_BITS, "1024"),
            (&RSA_BITS, "3000"),
            (&SIGNING_ALGS, "none"),
            (&SIGNING_ALGS, "EdDSA,EdDSA"),
            (&ACCESS_TTL, "15"),
            (&ACCESS_TTL, "soon"),
            (&ACCESS_TTL, "0s"),
            (&REFRESH_TTL, "60d"),
            (&SESSION_TTL, "-1d"),
            (&REFRESH_REUSE_LEEWAY, "2 fortnights"),
            (&KEY_ROTATION, "1m"),
            (&KEY_PREPUBLISH, "5m"),
            (&JWKS_MAX_AGE, "forever"),
            (&ARGON2, "m=1,t=2,p=1"),
            (&ARGON2, "m=19456,t=2"),
            (&ARGON2, "fast"),
            (&ARGON2_CONCURRENCY, "0"),
            (&ARGON2_NICE, "20"),
            (&ARGON2_NICE, "-1"),
            (&LOG, "info,[[["),
            (&LOG_FORMAT, "xml"),
            (&EVENTS_RETENTION, "30m"),
            (&EVENTS_RETENTION, "90"),
            (&EVENTS_RETENTION, "11y"),
            (&EVENTS_RETENTION, "always"),
            (&ADMIN_EMAILS, "root"),
            (&BODY_LIMIT, "lots"),
            (&HEADER_READ_TIMEOUT, "0s"),
            (&IDLE_TIMEOUT, "60"),
            (&IDLE_TIMEOUT, "0s"),
            (&MAX_CONNECTIONS, "0"),
            (&MAX_CONNECTIONS, "lots"),
            (&MAX_CONNECTIONS, "2000000"),
            (&MAX_CONNECTIONS_PER_IP, "-1"),
            (&MAX_CONNECTIONS_PER_IP, "0"),
            (&KEYSET_RELOAD, "5m"),
            (&METRICS_LISTEN, "9100"),
            (&RATE_LIMIT, "maybe"),
            (&RATE_LIMIT_IP, "lots"),
            (&RATE_LIMIT_IP, "0/min"),
            (&RATE_LIMIT_ACCOUNT, "30/fortnight"),
            (&TRUSTED_PROXIES, "10.0.0.0/33"),
            (&TRUSTED_PROXIES, "proxy.local"),
            (&REFRESH_COOKIE, "sometimes"),
            (&CORS_ORIGINS, "*"),
            (&CORS_ORIGINS, "app.example.com"),
            (&MAX_SESSIONS_PER_USER, "0"),
            (&CLIENT_REGISTRATION, "anyone"),
            (&RATE_LIMIT_REGISTRATION, "0/h"),
        ] {
            assert_eq!(err_var(&[(var, value)]), var.name, "{}={value}", var.name);
        }
        assert_eq!(err_var(&[(&TLS_KEY, "/etc/hostname")]), TLS_CERT.name);
    }

    #[test]
    fn every_bad_and_conflicting_variable_is_reported_at_once() {
        let e = parse(&[
            (&LISTEN, "nowhere"),
            (&ACCESS_TTL, "soon"),
            (&SESSION_TTL, "1d"),
            (&TLS_CERT, "/no/such/cert.pem"),
            (&TLS_KEY, "/no/such/key.pem"),
            (&LOG_FORMAT, "xml"),
            (&BOOTSTRAP_ADMIN_EMAIL, "ops@example.com"),
        ])
        .unwrap_err();
        let vars: Vec<&str> = e.errors().iter().map(|e| e.var).collect();
        // In the order of the table: the refresh TTL conflicts with the shorter session.
        assert_eq!(
            vars,
            [
                LISTEN.name,
                ACCESS_TTL.name,
                REFRESH_TTL.name,
                LOG_FORMAT.name,
                BOOTSTRAP_ADMIN_PASSWORD.name,
                TLS_CERT.name,
                TLS_KEY.name,
            ]
        );
        let text = e.to_string();
        assert_eq!(text.lines().count(), vars.len(), "{text}");
        for (line, var) in text.lines().zip(&vars) {
            assert!(line.starts_with(&format!("invalid {var}: ")), "{line}");
        }
        assert!(
            text.contains("must not exceed TOKEND_SESSION_TTL (1day)"),
            "{text}"
        );
    }

    #[test]
    fn a_bad_value_hides_no_conflict_of_the_others() {
        // Prepublication shorter than two JWKS lifetimes and a rotation shorter than the
        // prepublication are two problems.
        assert_eq!(
            err_vars(&[(&KEY_PREPUBLISH, "5m"), (&KEY_ROTATION, "1m")]),
            [KEY_ROTATION.name, KEY_PREPUBLISH.name]
        );
        // A bad value is not also reported as a conflict.
        assert_eq!(
            err_vars(&[(&REFRESH_TTL, "forever"), (&SESSION_TTL, "1d")]),
            [REFRESH_TTL.name]
        );
        assert_eq!(
            err_vars(&[
                (&BOOTSTRAP_ADMIN_EMAIL, "nobody"),
                (&BOOTSTRAP_ADMIN_PASSWORD, "short")
            ]),
            [BOOTSTRAP_ADMIN_EMAIL.name, BOOTSTRAP_ADMIN_PASSWORD.name]
        );
    }

    #[test]
    fn production_mode_needs_both_uris_and_a_key_encryption_key() {
        assert_eq!(
            err_var(&[(&MONGODB_URI, "mongodb://127.0.0.1:27017")]),
            REDIS_URL.name
        );
        assert_eq!(
            err_var(&[(&REDIS_URL, "redis://127.0.0.1:6379")]),
            MONGODB_URI.name
        );
        let all = production();
        let both = &all[..2];
        assert_eq!(err_var(both), KEY_ENCRYPTION_KEY.name);
        let mut with_short_key = both.to_vec();
        with_short_key.push((&KEY_ENCRYPTION_KEY, "c2hvcnQ="));
        assert_eq!(err_var(&with_short_key), KEY_ENCRYPTION_KEY.name);
        let mut bad = vec![
            (&MONGODB_URI, "http://127.0.0.1"),
            (&REDIS_URL, "http://127.0.0.1"),
            (&MONGODB_DB, "a.b"),
        ];
        assert_eq!(
            err_vars(&bad),
            [
                MONGODB_URI.name,
                MONGODB_DB.name,
                REDIS_URL.name,
                KEY_ENCRYPTION_KEY.name
            ]
        );
        bad.push((&KEY_ENCRYPTION_KEY, "!!!"));
        assert_eq!(err_vars(&bad).len(), 4);
        let c = parse(&production()).unwrap();
        assert!(matches!(c.mode, Mode::Production { .. }));
        let shown = c.describe();
        assert!(shown.contains("mode=production"));
        assert!(!shown.contains("AAECAwQF"));
        assert!(
            shown.contains("TOKEND_KEY_ENCRYPTION_KEY=<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let c = parse(&[
            (&MONGODB_URI, "mongodb://u:hunter2@127.0.0.1:27017"),
            (&REDIS_URL, "redis://:hunter3@127.0.0.1:6379"),
            (&KEY_ENCRYPTION_KEY, KEK),
            (&BOOTSTRAP_ADMIN_EMAIL, "ops@example.com"),
            (&BOOTSTRAP_ADMIN_PASSWORD, "hunter4-hunter4"),
            (&SMTP_URL, "smtps://mailer:hunter5@smtp.example.com"),
        ])
        .unwrap();
        let shown = c.describe();
        assert!(
            shown.contains("TOKEND_SMTP_URL=smtps://mailer:redacted@smtp.example.com"),
            "{shown}"
        );
        for secret in ["hunter2", "hunter3", "hunter4", "hunter5", "AAECAwQF"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("TOKEND_MONGODB_URI=mongodb://u:redacted@127.0.0.1:27017"),
            "{shown}"
        );
        assert!(
            shown.contains("TOKEND_BOOTSTRAP_ADMIN_PASSWORD=<redacted>"),
            "{shown}"
        );
        let unset = parse(&[]).unwrap().describe();
        assert!(
            unset.contains("TOKEND_BOOTSTRAP_ADMIN_PASSWORD=\n"),
            "{unset}"
        );
    }

    #[test]
    fn describe_shows_every_variable_of_the_mode_once_in_table_order() {
        for (config, mode) in [
            (parse(&[]).unwrap(), "embedded"),
            (parse(&production()).unwrap(), "production"),
        ] {
            let shown = config.describe();
            let names: Vec<&str> = shown
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, _)| k)
                .collect();
            let expected: Vec<&str> = VARS
                .iter()
                .filter(|v| v.applies_to(&config.mode))
                .map(|v| v.name)
                .collect();
            assert_eq!(
                names.iter().filter(|n| **n != "mode").count(),
                expected.len()
            );
            assert!(names.iter().filter(|n| **n != "mode").eq(expected.iter()));
            // The mode comes right before the variables of that mode.
            let mode_at = names.iter().position(|n| *n == "mode").unwrap();
            assert_eq!(names[..mode_at], [LISTEN.name, ISSUER.name, AUDIENCE.name]);
            assert!(shown.contains(&format!("\nmode={mode}\n")));
        }
    }

    #[test]
    fn values_keep_or_lose_whitespace_as_before() {
        let c = parse(&[
            (&LISTEN, " 127.0.0.1:5001 "),
            (&AUDIENCE, " aud "),
            (&CLIENTS_FILE, " clients.json "),
            (&KEYS_DIR, "keys "),
        ])
        .unwrap();
        assert_eq!(c.listen.port(), 5001);
        assert_eq!(c.audience, "aud");
        assert_eq!(c.clients_file.unwrap().as_os_str(), "clients.json");
        assert!(
            matches!(c.mode, Mode::Embedded { ref keys_dir } if keys_dir.as_os_str() == "keys ")
        );
        // Blank is unset.
        assert_eq!(parse(&[(&AUDIENCE, "  ")]).unwrap().audience, "tokend");
        // A password is taken as set.
        let c = parse(&[
            (&BOOTSTRAP_ADMIN_EMAIL, " Ops@Example.com "),
            (&BOOTSTRAP_ADMIN_PASSWORD, " spaced password "),
        ])
        .unwrap();
        let admin = c.bootstrap_admin.unwrap();
        assert_eq!(admin.email, "ops@example.com");
        assert_eq!(admin.password.0, " spaced password ");
    }

    #[test]
    fn mail_goes_to_a_directory_in_embedded_mode_and_nowhere_by_default_in_production() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            c.mail.transport.dir().map(|d| d.display().to_string()),
            Some("mail".into())
        );
        assert_eq!(c.mail.verification, EmailVerification::Optional);
        assert_eq!(c.mail.from, "noreply@localhost");
        let mut p = production();
        let c = parse(&p).unwrap();
        assert!(matches!(c.mail.transport, MailTransport::Off));
        p.push((&EMAIL_VERIFICATION, "required"));
        assert_eq!(err_var(&p), "TOKEND_EMAIL_VERIFICATION");
        p.push((&MAIL_DIR, "/var/mail/tokend"));
        assert!(parse(&p).is_ok());
        p.push((&SMTP_URL, "smtp://127.0.0.1:2525"));
        assert_eq!(err_var(&p), "TOKEND_MAIL_DIR");
        assert_eq!(
            err_var(&[(&EMAIL_VERIFICATION, "sometimes")]),
            "TOKEND_EMAIL_VERIFICATION"
        );
        assert_eq!(err_var(&[(&MAIL_FROM, "nobody")]), "TOKEND_MAIL_FROM");
    }

    #[test]
    fn issuer_loses_its_trailing_slash() {
        let c = parse(&[(&ISSUER, "https://auth.example.com/")]).unwrap();
        assert_eq!(c.issuer, "https://auth.example.com");
    }
}
