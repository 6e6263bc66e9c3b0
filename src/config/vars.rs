//! The table of variables: every `TOKEND_*` variable once, with its default, whether it is a
//! secret, which mode reads it and how `tokend check-config` shows its effective value.
//!
//! The reader takes defaults from here, [`Config::describe`] walks [`VARS`] in order, and a
//! test checks the README's configuration table against it. Each variable's parser and checks
//! live in the module of its concern.

use super::stores::{redact_url, Mode};
use super::values::{show_duration, show_list, show_switch};
use super::Config;

/// One configuration variable.
pub(crate) struct Var {
    /// `TOKEND_…`.
    pub(crate) name: &'static str,
    /// The value when unset or blank.
    pub(crate) default: DefaultValue,
    /// Which mode reads it.
    pub(crate) scope: Scope,
    /// How `tokend check-config` hides it.
    pub(crate) secrecy: Secrecy,
    /// The effective value, as `tokend check-config` shows it before [`Secrecy`] applies.
    show: fn(&Config) -> String,
}

/// What a variable means when unset or blank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DefaultValue {
    /// This value, parsed like a set one.
    Value(&'static str),
    /// Nothing: the setting is absent or its feature off.
    Unset,
    /// Worked out at start-up, as this text says.
    Computed(&'static str),
}

/// Which running mode (docs/operations.md) reads a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Both.
    All,
    /// Embedded mode only.
    Embedded,
    /// Production mode only.
    Production,
}

/// How much of a value `tokend check-config` may show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Secrecy {
    /// All of it.
    Public,
    /// Only whether it is set: `<redacted>`, or nothing when unset.
    Secret,
    /// A URL whose password is replaced by `redacted`.
    PasswordInUrl,
}

impl Var {
    /// Whether a configuration in `mode` reads this variable.
    pub(crate) fn applies_to(&self, mode: &Mode) -> bool {
        match self.scope {
            Scope::All => true,
            Scope::Embedded => matches!(mode, Mode::Embedded { .. }),
            Scope::Production => matches!(mode, Mode::Production { .. }),
        }
    }

    /// The effective value in `config`, secrets hidden.
    pub(crate) fn shown(&self, config: &Config) -> String {
        let value = (self.show)(config);
        match self.secrecy {
            Secrecy::Public => value,
            Secrecy::Secret if value.is_empty() => value,
            Secrecy::Secret => "<redacted>".into(),
            Secrecy::PasswordInUrl => redact_url(&value),
        }
    }
}

/// A value that is there or not, shown as itself or as nothing.
fn or_empty<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// Marks a secret as set without handing its value over.
fn is_set(set: bool) -> String {
    if set { "set" } else { "" }.to_string()
}

/// A setting of production mode; empty in embedded mode, which never shows it.
fn production(config: &Config, f: impl Fn(&str, &str, &str, &str) -> String) -> String {
    match &config.mode {
        Mode::Production {
            mongodb_uri,
            mongodb_db,
            redis_url,
            redis_prefix,
            ..
        } => f(&mongodb_uri.0, mongodb_db, &redis_url.0, redis_prefix),
        Mode::Embedded { .. } => String::new(),
    }
}

/// Every variable, in the order `tokend check-config` shows them.
pub(crate) static VARS: &[&Var] = &[
    &LISTEN,
    &ISSUER,
    &AUDIENCE,
    &KEYS_DIR,
    &MONGODB_URI,
    &MONGODB_DB,
    &REDIS_URL,
    &REDIS_PREFIX,
    &KEY_ENCRYPTION_KEY,
    &SIGNING_ALGS,
    &RSA_BITS,
    &ACCESS_TTL,
    &REFRESH_TTL,
    &SESSION_TTL,
    &REFRESH_REUSE_LEEWAY,
    &KEY_ROTATION,
    &KEY_PREPUBLISH,
    &JWKS_MAX_AGE,
    &KEYSET_RELOAD,
    &ARGON2,
    &ARGON2_CONCURRENCY,
    &ARGON2_NICE,
    &LOG,
    &LOG_FORMAT,
    &EVENTS_RETENTION,
    &CLIENTS_FILE,
    &ADMIN_EMAILS,
    &BOOTSTRAP_ADMIN_EMAIL,
    &BOOTSTRAP_ADMIN_PASSWORD,
    &MAX_SESSIONS_PER_USER,
    &BODY_LIMIT,
    &REQUEST_TIMEOUT,
    &HEADER_READ_TIMEOUT,
    &IDLE_TIMEOUT,
    &MAX_CONNECTIONS,
    &MAX_CONNECTIONS_PER_IP,
    &SHUTDOWN_GRACE,
    &METRICS_LISTEN,
    &RATE_LIMIT,
    &RATE_LIMIT_IP,
    &RATE_LIMIT_ACCOUNT,
    &RATE_LIMIT_USER_CODE,
    &RATE_LIMIT_USER_CODE_GLOBAL,
    &TRUSTED_PROXIES,
    &TLS_CERT,
    &TLS_KEY,
    &REFRESH_COOKIE,
    &CORS_ORIGINS,
    &BROWSER_SESSION_TTL,
    &ID_TOKEN_TTL,
    &DISPLAY_NAME,
    &LOGO_URL,
    &CLIENT_REGISTRATION,
    &RATE_LIMIT_REGISTRATION,
    &SMTP_URL,
    &MAIL_FROM,
    &MAIL_DIR,
    &EMAIL_VERIFICATION,
    &DPOP_NONCE,
];

/// Where `var` stands in [`VARS`] (`None` for a name that is not a variable, such as `.env`).
pub(crate) fn position(name: &str) -> Option<usize> {
    VARS.iter().position(|v| v.name == name)
}

/// The API listener's address (server.rs).
pub(crate) static LISTEN: Var = Var {
    name: "TOKEND_LISTEN",
    default: DefaultValue::Value("127.0.0.1:5000"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.listen.to_string(),
};

/// `iss` of every token and base of the discovery URLs (tokens.rs).
pub(crate) static ISSUER: Var = Var {
    name: "TOKEND_ISSUER",
    default: DefaultValue::Value("http://localhost:5000"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.issuer.clone(),
};

/// `aud` of access tokens (tokens.rs).
pub(crate) static AUDIENCE: Var = Var {
    name: "TOKEND_AUDIENCE",
    default: DefaultValue::Value("tokend"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.audience.clone(),
};

/// The keyset directory of embedded mode (stores.rs).
pub(crate) static KEYS_DIR: Var = Var {
    name: "TOKEND_KEYS_DIR",
    default: DefaultValue::Value("keys"),
    scope: Scope::Embedded,
    secrecy: Secrecy::Public,
    show: |c| match &c.mode {
        Mode::Embedded { keys_dir } => keys_dir.display().to_string(),
        Mode::Production { .. } => String::new(),
    },
};

/// The MongoDB of users, clients and the keyset; with `TOKEND_REDIS_URL`, production mode
/// (stores.rs).
pub(crate) static MONGODB_URI: Var = Var {
    name: "TOKEND_MONGODB_URI",
    default: DefaultValue::Unset,
    scope: Scope::Production,
    secrecy: Secrecy::PasswordInUrl,
    show: |c| production(c, |uri, _, _, _| uri.to_string()),
};

/// The MongoDB database (stores.rs).
pub(crate) static MONGODB_DB: Var = Var {
    name: "TOKEND_MONGODB_DB",
    default: DefaultValue::Value("tokend"),
    scope: Scope::Production,
    secrecy: Secrecy::Public,
    show: |c| production(c, |_, db, _, _| db.to_string()),
};

/// The Redis of sessions, revocations, limits and the rotation lease (stores.rs).
pub(crate) static REDIS_URL: Var = Var {
    name: "TOKEND_REDIS_URL",
    default: DefaultValue::Unset,
    scope: Scope::Production,
    secrecy: Secrecy::PasswordInUrl,
    show: |c| production(c, |_, _, url, _| url.to_string()),
};

/// The prefix of every Redis key, kept as set (stores.rs).
pub(crate) static REDIS_PREFIX: Var = Var {
    name: "TOKEND_REDIS_PREFIX",
    default: DefaultValue::Value("tokend:"),
    scope: Scope::Production,
    secrecy: Secrecy::Public,
    show: |c| production(c, |_, _, _, prefix| prefix.to_string()),
};

/// 32 bytes, base64, that seal the private keys kept in MongoDB; required in production mode
/// (stores.rs).
pub(crate) static KEY_ENCRYPTION_KEY: Var = Var {
    name: "TOKEND_KEY_ENCRYPTION_KEY",
    default: DefaultValue::Unset,
    scope: Scope::Production,
    secrecy: Secrecy::Secret,
    show: |c| is_set(matches!(c.mode, Mode::Production { .. })),
};

/// The algorithms with a key ring; the first signs by default (signing.rs).
pub(crate) static SIGNING_ALGS: Var = Var {
    name: "TOKEND_SIGNING_ALGS",
    default: DefaultValue::Value("EdDSA,RS256"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| {
        let algs: Vec<&str> = c.signing_algs.iter().map(|a| a.as_str()).collect();
        algs.join(",")
    },
};

/// The modulus size of new RSA keys; the same as `keys::DEFAULT_RSA_BITS`, which a test of
/// `startup` checks (signing.rs).
pub(crate) static RSA_BITS: Var = Var {
    name: "TOKEND_RSA_BITS",
    default: DefaultValue::Value("3072"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.rsa_bits.to_string(),
};

/// Access token lifetime (tokens.rs).
pub(crate) static ACCESS_TTL: Var = Var {
    name: "TOKEND_ACCESS_TTL",
    default: DefaultValue::Value("15m"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_duration(c.access_ttl),
};

/// One refresh token's lifetime, at most the session's (tokens.rs).
pub(crate) static REFRESH_TTL: Var = Var {
    name: "TOKEND_REFRESH_TTL",
    default: DefaultValue::Value("14d"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_duration(c.refresh_ttl),
};

/// Absolute lifetime of a refresh family (tokens.rs).
pub(crate) static SESSION_TTL: Var = Var {
    name: "TOKEND_SESSION_TTL",
    default: DefaultValue::Value("30d"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_duration(c.session_ttl),
};

/// Grace for concurrent refreshes, at most 60 s (tokens.rs).
pub(crate) static REFRESH_REUSE_LEEWAY: Var = Var {
    name: "TOKEND_REFRESH_REUSE_LEEWAY",
    default: DefaultValue::Value("2s"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_duration(c.refresh_reuse_leeway),
};

/// How long a key signs, at least its prepublication (signing.rs).
pub(crate) static KEY_ROTATION: Var = Var {
    name: "TOKEND_KEY_ROTATION",
    default: DefaultValue::Value("7d"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_duration(c.key_rotation),
};

/// How long a key is in the JWKS before it signs, at least twice the JWKS max-age (signing.rs).
pub(crate) static KEY_PREPUBLISH: Var = Var {
    name: "TOKEND_KEY_PREPUBLISH",
    default: DefaultValue::Value("1h"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_duration(c.key_prepublish),
};

/// `Cache-Control: max-age` of the JWKS and discovery documents (signing.rs).
pub(crate) static JWKS_MAX_AGE: Var = Var {
    name: "TOKEND_JWKS_MAX_AGE",
    default: DefaultValue::Value("300s"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_duration(c.jwks_max_age),
};

/// How often every instance reloads the keyset, at most 30 s (signing.rs).
pub(crate) static KEYSET_RELOAD: Var = Var {
    name: "TOKEND_KEYSET_RELOAD",
    default: DefaultValue::Value("30s"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_duration(c.keyset_reload),
};

/// Argon2id cost: the OWASP minimum by default (accounts.rs).
pub(crate) static ARGON2: Var = Var {
    name: "TOKEND_ARGON2",
    default: DefaultValue::Value("m=19456,t=2,p=1"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.argon2.to_string(),
};

/// Argon2 hashes running at once (accounts.rs).
pub(crate) static ARGON2_CONCURRENCY: Var = Var {
    name: "TOKEND_ARGON2_CONCURRENCY",
    default: DefaultValue::Computed("number of cores"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.argon2_concurrency.to_string(),
};

/// How many `nice` steps below tokend the Argon2 threads run, 0–19 (accounts.rs).
pub(crate) static ARGON2_NICE: Var = Var {
    name: "TOKEND_ARGON2_NICE",
    default: DefaultValue::Value("10"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.argon2_nice.to_string(),
};

/// The log filter, `tracing` env-filter syntax (logging.rs).
pub(crate) static LOG: Var = Var {
    name: "TOKEND_LOG",
    default: DefaultValue::Value("info"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.log.clone(),
};

/// `text` or `json` lines (logging.rs).
pub(crate) static LOG_FORMAT: Var = Var {
    name: "TOKEND_LOG_FORMAT",
    default: DefaultValue::Value("text"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.log_format.as_str().to_string(),
};

/// How long account events are kept (logging.rs; docs/events.md).
pub(crate) static EVENTS_RETENTION: Var = Var {
    name: "TOKEND_EVENTS_RETENTION",
    default: DefaultValue::Value("90d"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_duration(c.events_retention),
};

/// A JSON file of static OAuth clients (accounts.rs).
pub(crate) static CLIENTS_FILE: Var = Var {
    name: "TOKEND_CLIENTS_FILE",
    default: DefaultValue::Unset,
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| or_empty(c.clients_file.as_ref().map(|p| p.display())),
};

/// Emails that earn `admin` once their owner proves control of them (accounts.rs).
pub(crate) static ADMIN_EMAILS: Var = Var {
    name: "TOKEND_ADMIN_EMAILS",
    default: DefaultValue::Unset,
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.admin_emails.join(","),
};

/// The first admin's email, with `TOKEND_BOOTSTRAP_ADMIN_PASSWORD` (accounts.rs).
pub(crate) static BOOTSTRAP_ADMIN_EMAIL: Var = Var {
    name: "TOKEND_BOOTSTRAP_ADMIN_EMAIL",
    default: DefaultValue::Unset,
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| or_empty(c.bootstrap_admin.as_ref().map(|b| &b.email)),
};

/// The first admin's password, with `TOKEND_BOOTSTRAP_ADMIN_EMAIL` (accounts.rs).
pub(crate) static BOOTSTRAP_ADMIN_PASSWORD: Var = Var {
    name: "TOKEND_BOOTSTRAP_ADMIN_PASSWORD",
    default: DefaultValue::Unset,
    scope: Scope::All,
    secrecy: Secrecy::Secret,
    show: |c| is_set(c.bootstrap_admin.is_some()),
};

/// Live refresh families per user, 1–10000; a login beyond it ends the oldest (tokens.rs).
pub(crate) static MAX_SESSIONS_PER_USER: Var = Var {
    name: "TOKEND_MAX_SESSIONS_PER_USER",
    default: DefaultValue::Value("100"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.max_sessions_per_user.to_string(),
};

/// The request body limit in bytes (server.rs).
pub(crate) static BODY_LIMIT: Var = Var {
    name: "TOKEND_BODY_LIMIT",
    default: DefaultValue::Value("16384"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.body_limit.to_string(),
};

/// The per-request timeout (server.rs).
pub(crate) static REQUEST_TIMEOUT: Var = Var {
    name: "TOKEND_REQUEST_TIMEOUT",
    default: DefaultValue::Value("30s"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_duration(c.request_timeout),
};

/// From accept to the first complete request head, and from each later request's first byte
/// to its head (server.rs).
pub(crate) static HEADER_READ_TIMEOUT: Var = Var {
    name: "TOKEND_HEADER_READ_TIMEOUT",
    default: DefaultValue::Value("10s"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_duration(c.header_read_timeout),
};

/// How long a connection with no request in flight stays open (server.rs).
pub(crate) static IDLE_TIMEOUT: Var = Var {
    name: "TOKEND_IDLE_TIMEOUT",
    default: DefaultValue::Value("60s"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_duration(c.idle_timeout),
};

/// Open connections per listener (server.rs).
pub(crate) static MAX_CONNECTIONS: Var = Var {
    name: "TOKEND_MAX_CONNECTIONS",
    default: DefaultValue::Value("10000"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.max_connections.to_string(),
};

/// Open connections from one peer address. The default is enough for a NAT'd office or a few
/// hundred pooled keep-alive connections from one host, and small enough that one address
/// cannot take most of `TOKEND_MAX_CONNECTIONS` (server.rs).
pub(crate) static MAX_CONNECTIONS_PER_IP: Var = Var {
    name: "TOKEND_MAX_CONNECTIONS_PER_IP",
    default: DefaultValue::Value("256"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.max_connections_per_ip.to_string(),
};

/// How long a shutdown waits for in-flight requests (server.rs).
pub(crate) static SHUTDOWN_GRACE: Var = Var {
    name: "TOKEND_SHUTDOWN_GRACE",
    default: DefaultValue::Value("30s"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_duration(c.shutdown_grace),
};

/// A listener of its own for `/metrics`, `/healthz`, `/readyz` (server.rs).
pub(crate) static METRICS_LISTEN: Var = Var {
    name: "TOKEND_METRICS_LISTEN",
    default: DefaultValue::Unset,
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| or_empty(c.metrics_listen),
};

/// `off` turns off every rate limit and the back-off (limits.rs).
pub(crate) static RATE_LIMIT: Var = Var {
    name: "TOKEND_RATE_LIMIT",
    default: DefaultValue::Value("on"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_switch(c.rate_limit_enabled),
};

/// Per client IP over the limited endpoints (limits.rs).
pub(crate) static RATE_LIMIT_IP: Var = Var {
    name: "TOKEND_RATE_LIMIT_IP",
    default: DefaultValue::Value("600/min"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.rate_limit_ip.to_string(),
};

/// Per account on password logins, and per client id (limits.rs).
pub(crate) static RATE_LIMIT_ACCOUNT: Var = Var {
    name: "TOKEND_RATE_LIMIT_ACCOUNT",
    default: DefaultValue::Value("30/min"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.rate_limit_account.to_string(),
};

/// Wrong user codes on the device page per client IP (limits.rs).
pub(crate) static RATE_LIMIT_USER_CODE: Var = Var {
    name: "TOKEND_RATE_LIMIT_USER_CODE",
    default: DefaultValue::Value("10/min"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.rate_limit_user_code.to_string(),
};

/// Wrong user codes on the device page over the whole service (limits.rs).
pub(crate) static RATE_LIMIT_USER_CODE_GLOBAL: Var = Var {
    name: "TOKEND_RATE_LIMIT_USER_CODE_GLOBAL",
    default: DefaultValue::Value("100/min"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.rate_limit_user_code_global.to_string(),
};

/// Peers whose `X-Forwarded-For` is believed (server.rs).
pub(crate) static TRUSTED_PROXIES: Var = Var {
    name: "TOKEND_TRUSTED_PROXIES",
    default: DefaultValue::Unset,
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_list(&c.trusted_proxies),
};

/// The TLS certificate chain, PEM, with `TOKEND_TLS_KEY` (server.rs).
pub(crate) static TLS_CERT: Var = Var {
    name: "TOKEND_TLS_CERT",
    default: DefaultValue::Unset,
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| or_empty(c.tls.as_ref().map(|(cert, _)| cert.display())),
};

/// The file of the TLS private key, PEM, with `TOKEND_TLS_CERT`; its path is shown, never its
/// contents (server.rs).
pub(crate) static TLS_KEY: Var = Var {
    name: "TOKEND_TLS_KEY",
    default: DefaultValue::Unset,
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| or_empty(c.tls.as_ref().map(|(_, key)| key.display())),
};

/// Browser mode: the refresh token travels in an `HttpOnly` cookie (browser.rs).
pub(crate) static REFRESH_COOKIE: Var = Var {
    name: "TOKEND_REFRESH_COOKIE",
    default: DefaultValue::Value("off"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_switch(c.refresh_cookie),
};

/// Allowed browser origins; unset means no CORS headers (browser.rs).
pub(crate) static CORS_ORIGINS: Var = Var {
    name: "TOKEND_CORS_ORIGINS",
    default: DefaultValue::Unset,
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.cors_origins.join(","),
};

/// How long a browser sign-in (the SSO cookie) lasts (browser.rs).
pub(crate) static BROWSER_SESSION_TTL: Var = Var {
    name: "TOKEND_BROWSER_SESSION_TTL",
    default: DefaultValue::Value("12h"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_duration(c.browser_session_ttl),
};

/// An ID token's lifetime (browser.rs).
pub(crate) static ID_TOKEN_TTL: Var = Var {
    name: "TOKEND_ID_TOKEN_TTL",
    default: DefaultValue::Value("5m"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_duration(c.id_token_ttl),
};

/// The product name on the hosted pages (browser.rs).
pub(crate) static DISPLAY_NAME: Var = Var {
    name: "TOKEND_DISPLAY_NAME",
    default: DefaultValue::Value("tokend"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.display_name.clone(),
};

/// A logo URL for the hosted pages (browser.rs).
pub(crate) static LOGO_URL: Var = Var {
    name: "TOKEND_LOGO_URL",
    default: DefaultValue::Unset,
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.logo_url.clone().unwrap_or_default(),
};

/// Who may register clients: `off`, `token` (an initial access token) or `open`
/// (registration.rs).
pub(crate) static CLIENT_REGISTRATION: Var = Var {
    name: "TOKEND_CLIENT_REGISTRATION",
    default: DefaultValue::Value("off"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.client_registration.as_str().to_string(),
};

/// Per client IP on registrations without an initial access token (registration.rs).
pub(crate) static RATE_LIMIT_REGISTRATION: Var = Var {
    name: "TOKEND_RATE_LIMIT_REGISTRATION",
    default: DefaultValue::Value("20/h"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.rate_limit_registration.to_string(),
};

/// The SMTP server mail goes through; its password is never shown (mail.rs).
pub(crate) static SMTP_URL: Var = Var {
    name: "TOKEND_SMTP_URL",
    default: DefaultValue::Unset,
    scope: Scope::All,
    secrecy: Secrecy::PasswordInUrl,
    show: |c| or_empty(c.mail.transport.smtp().map(|s| s.url.0.clone())),
};

/// The sender of tokend's mail (mail.rs).
pub(crate) static MAIL_FROM: Var = Var {
    name: "TOKEND_MAIL_FROM",
    default: DefaultValue::Computed("`noreply@` the issuer's host"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.mail.from.clone(),
};

/// Where mail is written as `.eml` files when there is no SMTP server (mail.rs).
pub(crate) static MAIL_DIR: Var = Var {
    name: "TOKEND_MAIL_DIR",
    default: DefaultValue::Computed("`mail` in embedded mode, else unset"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| or_empty(c.mail.transport.dir().map(|d| d.display())),
};

/// `off`, `optional` or `required` (mail.rs).
pub(crate) static EMAIL_VERIFICATION: Var = Var {
    name: "TOKEND_EMAIL_VERIFICATION",
    default: DefaultValue::Value("optional"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| c.mail.verification.as_str().to_string(),
};

/// Whether DPoP proofs must carry a nonce from tokend (dpop.rs).
pub(crate) static DPOP_NONCE: Var = Var {
    name: "TOKEND_DPOP_NONCE",
    default: DefaultValue::Value("off"),
    scope: Scope::All,
    secrecy: Secrecy::Public,
    show: |c| show_switch(c.dpop_nonce),
};

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The rows of the README's configuration table: the variables of the first column and the
    /// text of the second.
    fn readme_rows() -> Vec<(Vec<String>, String)> {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("a Configuration section in README.md");
        section
            .lines()
            .filter(|l| l.starts_with("| `TOKEND_"))
            .map(|l| {
                let cells: Vec<&str> = l.split(" | ").collect();
                let names = cells[0]
                    .trim_start_matches("| ")
                    .split(", ")
                    .map(|n| n.trim_matches('`').to_string())
                    .collect();
                (names, cells[1].to_string())
            })
            .collect()
    }

    fn readme_default(default: DefaultValue) -> String {
        match default {
            DefaultValue::Value(v) => format!("`{v}`"),
            DefaultValue::Unset => "unset".into(),
            DefaultValue::Computed(text) => text.into(),
        }
    }

    #[test]
    fn the_readme_table_lists_every_variable_with_its_default() {
        let mut in_readme = HashSet::new();
        for (names, defaults) in readme_rows() {
            // One default for the row, or one per variable.
            let defaults: Vec<&str> = if names.len() > 1 && defaults.contains(", ") {
                defaults.split(", ").collect()
            } else {
                vec![defaults.as_str(); names.len()]
            };
            assert_eq!(defaults.len(), names.len(), "{names:?}");
            for (name, readme) in names.iter().zip(defaults) {
                let i = position(name).unwrap_or_else(|| panic!("{name} is not a variable"));
                assert_eq!(
                    readme,
                    readme_default(VARS[i].default),
                    "the README's default of {name}"
                );
                assert!(in_readme.insert(name.clone()), "{name} twice in README.md");
            }
        }
        for var in VARS {
            assert!(
                in_readme.contains(var.name),
                "{} is not in README.md",
                var.name
            );
        }
    }

    #[test]
    fn each_variable_is_listed_once() {
        let names: HashSet<&str> = VARS.iter().map(|v| v.name).collect();
        assert_eq!(names.len(), VARS.len());
        assert!(VARS.iter().all(|v| v.name.starts_with("TOKEND_")));
    }
}
