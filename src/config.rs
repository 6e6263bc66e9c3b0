//! Configuration: `TOKEND_*` variables (and an optional `.env`) parsed into a validated [`Config`].
//!
//! Reading goes through the [`Env`] trait so tests pass a map instead of touching the process
//! environment. Every error names its variable; `main` prints it on one line and exits with 2.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokend_token_shape::LEEWAY;

use crate::keys::{Alg, KeysConfig, DEFAULT_RSA_BITS};

pub const ENV_LISTEN: &str = "TOKEND_LISTEN";
pub const ENV_ISSUER: &str = "TOKEND_ISSUER";
pub const ENV_AUDIENCE: &str = "TOKEND_AUDIENCE";
pub const ENV_MONGODB_URI: &str = "TOKEND_MONGODB_URI";
pub const ENV_MONGODB_DB: &str = "TOKEND_MONGODB_DB";
pub const ENV_REDIS_URL: &str = "TOKEND_REDIS_URL";
pub const ENV_REDIS_PREFIX: &str = "TOKEND_REDIS_PREFIX";
pub const ENV_KEYS_DIR: &str = "TOKEND_KEYS_DIR";
pub const ENV_KEY_ENCRYPTION_KEY: &str = "TOKEND_KEY_ENCRYPTION_KEY";
pub const ENV_SIGNING_ALGS: &str = "TOKEND_SIGNING_ALGS";
pub const ENV_RSA_BITS: &str = "TOKEND_RSA_BITS";
pub const ENV_ACCESS_TTL: &str = "TOKEND_ACCESS_TTL";
pub const ENV_REFRESH_TTL: &str = "TOKEND_REFRESH_TTL";
pub const ENV_SESSION_TTL: &str = "TOKEND_SESSION_TTL";
pub const ENV_REFRESH_REUSE_LEEWAY: &str = "TOKEND_REFRESH_REUSE_LEEWAY";
pub const ENV_KEY_ROTATION: &str = "TOKEND_KEY_ROTATION";
pub const ENV_KEY_PREPUBLISH: &str = "TOKEND_KEY_PREPUBLISH";
pub const ENV_JWKS_MAX_AGE: &str = "TOKEND_JWKS_MAX_AGE";
pub const ENV_ARGON2: &str = "TOKEND_ARGON2";
pub const ENV_ARGON2_CONCURRENCY: &str = "TOKEND_ARGON2_CONCURRENCY";
pub const ENV_ARGON2_NICE: &str = "TOKEND_ARGON2_NICE";
pub const ENV_LOG: &str = "TOKEND_LOG";
pub const ENV_LOG_FORMAT: &str = "TOKEND_LOG_FORMAT";
pub const ENV_CLIENTS_FILE: &str = "TOKEND_CLIENTS_FILE";
pub const ENV_ADMIN_EMAILS: &str = "TOKEND_ADMIN_EMAILS";
pub const ENV_BOOTSTRAP_ADMIN_EMAIL: &str = "TOKEND_BOOTSTRAP_ADMIN_EMAIL";
pub const ENV_BOOTSTRAP_ADMIN_PASSWORD: &str = "TOKEND_BOOTSTRAP_ADMIN_PASSWORD";
pub const ENV_MAX_SESSIONS_PER_USER: &str = "TOKEND_MAX_SESSIONS_PER_USER";
pub const ENV_BODY_LIMIT: &str = "TOKEND_BODY_LIMIT";
pub const ENV_REQUEST_TIMEOUT: &str = "TOKEND_REQUEST_TIMEOUT";
pub const ENV_HEADER_READ_TIMEOUT: &str = "TOKEND_HEADER_READ_TIMEOUT";
pub const ENV_IDLE_TIMEOUT: &str = "TOKEND_IDLE_TIMEOUT";
pub const ENV_MAX_CONNECTIONS: &str = "TOKEND_MAX_CONNECTIONS";
pub const ENV_MAX_CONNECTIONS_PER_IP: &str = "TOKEND_MAX_CONNECTIONS_PER_IP";
pub const ENV_SHUTDOWN_GRACE: &str = "TOKEND_SHUTDOWN_GRACE";
pub const ENV_KEYSET_RELOAD: &str = "TOKEND_KEYSET_RELOAD";
pub const ENV_METRICS_LISTEN: &str = "TOKEND_METRICS_LISTEN";
pub const ENV_RATE_LIMIT: &str = "TOKEND_RATE_LIMIT";
pub const ENV_RATE_LIMIT_IP: &str = "TOKEND_RATE_LIMIT_IP";
pub const ENV_RATE_LIMIT_ACCOUNT: &str = "TOKEND_RATE_LIMIT_ACCOUNT";
pub const ENV_TRUSTED_PROXIES: &str = "TOKEND_TRUSTED_PROXIES";
pub const ENV_TLS_CERT: &str = "TOKEND_TLS_CERT";
pub const ENV_TLS_KEY: &str = "TOKEND_TLS_KEY";
pub const ENV_REFRESH_COOKIE: &str = "TOKEND_REFRESH_COOKIE";
pub const ENV_CORS_ORIGINS: &str = "TOKEND_CORS_ORIGINS";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
pub const DEFAULT_ISSUER: &str = "http://localhost:5000";
pub const DEFAULT_AUDIENCE: &str = "tokend";
pub const DEFAULT_MONGODB_DB: &str = "tokend";
pub const DEFAULT_REDIS_PREFIX: &str = "tokend:";
pub const DEFAULT_KEYS_DIR: &str = "keys";
pub const DEFAULT_SIGNING_ALGS: &str = "EdDSA,RS256";
pub const DEFAULT_ACCESS_TTL: &str = "15m";
pub const DEFAULT_REFRESH_TTL: &str = "14d";
pub const DEFAULT_SESSION_TTL: &str = "30d";
pub const DEFAULT_REFRESH_REUSE_LEEWAY: &str = "2s";
pub const DEFAULT_KEY_ROTATION: &str = "7d";
pub const DEFAULT_KEY_PREPUBLISH: &str = "1h";
pub const DEFAULT_JWKS_MAX_AGE: &str = "300s";
pub const DEFAULT_ARGON2: &str = "m=19456,t=2,p=1";
pub const DEFAULT_ARGON2_NICE: i32 = 10;
pub const DEFAULT_LOG: &str = "info";
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024;
pub const DEFAULT_REQUEST_TIMEOUT: &str = "30s";
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
pub const DEFAULT_IDLE_TIMEOUT: &str = "60s";
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Enough for a NAT'd office or a few hundred pooled keep-alive connections from one host,
/// small enough that one address cannot take most of `TOKEND_MAX_CONNECTIONS`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Upper bound of both connection caps.
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
pub const DEFAULT_SHUTDOWN_GRACE: &str = "30s";
pub const DEFAULT_KEYSET_RELOAD: &str = "30s";
pub const DEFAULT_RATE_LIMIT_IP: &str = "600/min";
pub const DEFAULT_RATE_LIMIT_ACCOUNT: &str = "30/min";
pub const DEFAULT_MAX_SESSIONS_PER_USER: u32 = 100;

/// Largest allowed keyset reload interval: docs/keys.md promises every instance reloads within 30 s.
pub const MAX_KEYSET_RELOAD: Duration = Duration::from_secs(30);

/// Where configuration values come from.
pub trait Env {
    fn get(&self, key: &str) -> Option<String>;
}

impl Env for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).map(|v| v.to_string())
    }
}

/// The process environment, over the values of an optional `.env` file (the process wins).
pub struct ProcessEnv {
    dotenv: HashMap<String, String>,
}

impl ProcessEnv {
    /// Reads `.env` from the working directory when present. A malformed `.env` is an error.
    pub fn load() -> Result<Self, ConfigError> {
        let mut dotenv = HashMap::new();
        match dotenvy::from_path_iter(".env") {
            Ok(iter) => {
                for item in iter {
                    let (k, v) = item.map_err(|e| ConfigError::new(".env", e.to_string()))?;
                    dotenv.insert(k, v);
                }
            }
            Err(e) if e.not_found() => {}
            Err(e) => return Err(ConfigError::new(".env", e.to_string())),
        }
        Ok(Self { dotenv })
    }
}

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key)
            .ok()
            .or_else(|| self.dotenv.get(key).cloned())
    }
}

/// A configuration value that could not be accepted; displays as one line naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self {
            var,
            message: message.into(),
        }
    }
}

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(pub T);

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Argon2id cost parameters (`m` KiB, `t` passes, `p` lanes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Cost {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl std::str::FromStr for Argon2Cost {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut m, mut t, mut p) = (None, None, None);
        for part in s.split(',') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| format!("expected m=..,t=..,p=.., got {part:?}"))?;
            let n: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("{k} must be a positive integer"))?;
            match k.trim() {
                "m" => m = Some(n),
                "t" => t = Some(n),
                "p" => p = Some(n),
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        let cost = Argon2Cost {
            m_kib: m.ok_or("missing m")?,
            t: t.ok_or("missing t")?,
            p: p.ok_or("missing p")?,
        };
        if cost.p == 0 || cost.p > 16 {
            return Err("p must be between 1 and 16".into());
        }
        if cost.t == 0 || cost.t > 100 {
            return Err("t must be between 1 and 100".into());
        }
        if cost.m_kib < 8 * cost.p || cost.m_kib > 4 * 1024 * 1024 {
            return Err("m must be at least 8*p KiB and at most 4 GiB".into());
        }
        Ok(cost)
    }
}

impl fmt::Display for Argon2Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m={},t={},p={}", self.m_kib, self.t, self.p)
    }
}

/// A rate: `count` requests per `per`, allowing bursts of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// The GCRA emission interval in milliseconds.
    pub fn emission_ms(&self) -> i64 {
        (crate::clock::ms(self.per) / i64::from(self.count.max(1))).max(1)
    }
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, unit) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a rate like 600/min"))?;
        let count: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{n:?} is not a positive count"))?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => return Err(format!("unknown unit {other:?} (use s, min or h)")),
        };
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// An IP network (`10.0.0.0/8`, `::1`), for `TOKEND_TRUSTED_PROXIES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            (IpAddr::V6(_), IpAddr::V4(v4)) => {
                self.contains(std::net::IpAddr::V6(v4.to_ipv6_mapped()))
            }
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(std::net::IpAddr::V4(v4))),
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has a bad prefix length"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

/// How tokend keeps its state (docs/operations.md).
#[derive(Debug, Clone)]
pub enum Mode {
    /// Everything in process memory, keys in a directory.
    Embedded { keys_dir: PathBuf },
    /// Users, clients and keyset in MongoDB; revocations and families in Redis.
    Production {
        mongodb_uri: Secret<String>,
        mongodb_db: String,
        redis_url: Secret<String>,
        redis_prefix: String,
        key_encryption_key: Secret<[u8; 32]>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `TOKEND_LISTEN`, default `127.0.0.1:5000`.
    pub listen: SocketAddr,
    /// `TOKEND_ISSUER`, default `http://localhost:5000`, without a trailing slash.
    pub issuer: String,
    /// `TOKEND_AUDIENCE`, default `tokend`.
    pub audience: String,
    pub mode: Mode,
    /// `TOKEND_SIGNING_ALGS`, default `EdDSA,RS256`; the first signs by default.
    pub signing_algs: Vec<Alg>,
    /// Modulus size of new RSA signing keys.
    pub rsa_bits: usize,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub session_ttl: Duration,
    pub refresh_reuse_leeway: Duration,
    pub key_rotation: Duration,
    pub key_prepublish: Duration,
    pub jwks_max_age: Duration,
    /// How often every instance reloads the keyset from its store (at most 30 s).
    pub keyset_reload: Duration,
    pub argon2: Argon2Cost,
    /// How many Argon2 hashes run at once (default: number of cores).
    pub argon2_concurrency: usize,
    /// How many steps below the process's priority the Argon2 threads run (0–19; `nice`).
    pub argon2_nice: i32,
    pub log: String,
    pub log_format: LogFormat,
    /// `TOKEND_CLIENTS_FILE`: static OAuth clients (JSON list), when set.
    pub clients_file: Option<PathBuf>,
    /// `TOKEND_ADMIN_EMAILS`: lower-cased emails that earn `admin` once their owner proves
    /// control of them (email verification); registering or signing in with one grants nothing.
    pub admin_emails: Vec<String>,
    /// `TOKEND_BOOTSTRAP_ADMIN_EMAIL` and `TOKEND_BOOTSTRAP_ADMIN_PASSWORD` (both or neither):
    /// the first admin, created at start-up when no account has that email.
    pub bootstrap_admin: Option<BootstrapAdmin>,
    /// `TOKEND_MAX_SESSIONS_PER_USER`, default 100: live families per user; a login beyond it
    /// ends the oldest.
    pub max_sessions_per_user: u32,
    /// `TOKEND_BODY_LIMIT` in bytes, default 16 KiB.
    pub body_limit: usize,
    pub request_timeout: Duration,
    /// `TOKEND_HEADER_READ_TIMEOUT`, default 10 s: from accepting a connection (TLS handshake
    /// and HTTP/1-vs-HTTP/2 detection included) to its first complete request head, and from
    /// the first byte of each later HTTP/1 request to its complete head.
    pub header_read_timeout: Duration,
    /// `TOKEND_IDLE_TIMEOUT`, default 60 s: a connection with no request in flight (HTTP/1
    /// between keep-alive requests, HTTP/2 with no open stream) is closed after this long.
    pub idle_timeout: Duration,
    /// `TOKEND_MAX_CONNECTIONS`, default 10,000 per listener: at the cap the accept loop waits.
    pub max_connections: usize,
    /// `TOKEND_MAX_CONNECTIONS_PER_IP`, default 256: connections beyond it from one peer address
    /// are closed at once; peers in `TOKEND_TRUSTED_PROXIES` are exempt.
    pub max_connections_per_ip: usize,
    pub shutdown_grace: Duration,
    /// `TOKEND_METRICS_LISTEN`: a separate listener for `/metrics`, `/healthz`, `/readyz`.
    pub metrics_listen: Option<SocketAddr>,
    /// `TOKEND_RATE_LIMIT=off` disables both limits (benchmarks).
    pub rate_limit_enabled: bool,
    /// `TOKEND_RATE_LIMIT_IP`, default `600/min` per client IP over the limited endpoints.
    pub rate_limit_ip: Rate,
    /// `TOKEND_RATE_LIMIT_ACCOUNT`, default `30/min` per account (and per client id).
    pub rate_limit_account: Rate,
    /// `TOKEND_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// `TOKEND_TLS_CERT` and `TOKEND_TLS_KEY` (PEM files), both or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `TOKEND_REFRESH_COOKIE=on`: browser mode, the refresh token travels in a cookie.
    pub refresh_cookie: bool,
    /// `TOKEND_CORS_ORIGINS`: allowed browser origins; empty means CORS off.
    pub cors_origins: Vec<String>,
}

/// The first admin account (`TOKEND_BOOTSTRAP_ADMIN_EMAIL`, `TOKEND_BOOTSTRAP_ADMIN_PASSWORD`).
#[derive(Debug, Clone)]
pub struct BootstrapAdmin {
    /// Lower-cased.
    pub email: String,
    /// Never logged (`Debug` prints `<redacted>`).
    pub password: Secret<String>,
}

impl Config {
    /// Parses and validates every variable.
    pub fn from_env(env: &dyn Env) -> Result<Config, ConfigError> {
        let get = |var: &'static str, default: &str| -> String {
            env.get(var)
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        let opt = |var: &'static str| -> Option<String> {
            env.get(var)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let dur = |var: &'static str, default: &str| -> Result<Duration, ConfigError> {
            parse_duration(&get(var, default)).map_err(|m| ConfigError::new(var, m))
        };

        let listen: SocketAddr = get(ENV_LISTEN, DEFAULT_LISTEN)
            .trim()
            .parse()
            .map_err(|_| ConfigError::new(ENV_LISTEN, "expected HOST:PORT, e.g. 127.0.0.1:5000"))?;

        let issuer = get(ENV_ISSUER, DEFAULT_ISSUER).trim().to_string();
        let parsed = url::Url::parse(&issuer)
            .map_err(|e| ConfigError::new(ENV_ISSUER, format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(ConfigError::new(
                ENV_ISSUER,
                "must be an http(s) URL with a host",
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(ConfigError::new(
                ENV_ISSUER,
                "must not have a query or fragment",
            ));
        }
        let issuer = issuer.trim_end_matches('/').to_string();

        let audience = get(ENV_AUDIENCE, DEFAULT_AUDIENCE).trim().to_string();

        let signing_algs = parse_algs(&get(ENV_SIGNING_ALGS, DEFAULT_SIGNING_ALGS))
            .map_err(|m| ConfigError::new(ENV_SIGNING_ALGS, m))?;
        let rsa_bits = match opt(ENV_RSA_BITS) {
            None => DEFAULT_RSA_BITS,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|b| [2048, 3072, 4096].contains(b))
                .ok_or_else(|| ConfigError::new(ENV_RSA_BITS, "expected 2048, 3072 or 4096"))?,
        };

        let access_ttl = dur(ENV_ACCESS_TTL, DEFAULT_ACCESS_TTL)?;
        let refresh_ttl = dur(ENV_REFRESH_TTL, DEFAULT_REFRESH_TTL)?;
        let session_ttl = dur(ENV_SESSION_TTL, DEFAULT_SESSION_TTL)?;
        let refresh_reuse_leeway =
            parse_duration_allow_zero(&get(ENV_REFRESH_REUSE_LEEWAY, DEFAULT_REFRESH_REUSE_LEEWAY))
                .map_err(|m| ConfigError::new(ENV_REFRESH_REUSE_LEEWAY, m))?;
        let key_rotation = dur(ENV_KEY_ROTATION, DEFAULT_KEY_ROTATION)?;
        let key_prepublish = dur(ENV_KEY_PREPUBLISH, DEFAULT_KEY_PREPUBLISH)?;
        let jwks_max_age = dur(ENV_JWKS_MAX_AGE, DEFAULT_JWKS_MAX_AGE)?;
        let keyset_reload = dur(ENV_KEYSET_RELOAD, DEFAULT_KEYSET_RELOAD)?;
        let request_timeout = dur(ENV_REQUEST_TIMEOUT, DEFAULT_REQUEST_TIMEOUT)?;
        let header_read_timeout = dur(ENV_HEADER_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT)?;
        let idle_timeout = dur(ENV_IDLE_TIMEOUT, DEFAULT_IDLE_TIMEOUT)?;
        let count = |var: &'static str, default: usize| -> Result<usize, ConfigError> {
            match opt(var) {
                None => Ok(default),
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_CONNECTIONS_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ConfigError::new(
                            var,
                            format!("expected a whole number from 1 to {MAX_CONNECTIONS_LIMIT}"),
                        )
                    }),
            }
        };
        let max_connections = count(ENV_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS)?;
        let max_connections_per_ip =
            count(ENV_MAX_CONNECTIONS_PER_IP, DEFAULT_MAX_CONNECTIONS_PER_IP)?;
        let shutdown_grace = dur(ENV_SHUTDOWN_GRACE, DEFAULT_SHUTDOWN_GRACE)?;

        if refresh_ttl > session_ttl {
            return Err(ConfigError::new(
                ENV_REFRESH_TTL,
                format!(
                    "must not exceed {ENV_SESSION_TTL} ({})",
                    humantime::format_duration(session_ttl)
                ),
            ));
        }
        if refresh_reuse_leeway > Duration::from_secs(60) {
            return Err(ConfigError::new(
                ENV_REFRESH_REUSE_LEEWAY,
                "must be at most 60s",
            ));
        }
        if key_prepublish < jwks_max_age * 2 {
            return Err(ConfigError::new(
                ENV_KEY_PREPUBLISH,
                format!(
                    "must be at least 2 x {ENV_JWKS_MAX_AGE} ({}), so every JWKS cache holds a key before it signs",
                    humantime::format_duration(jwks_max_age * 2)
                ),
            ));
        }
        if key_rotation < key_prepublish {
            return Err(ConfigError::new(
                ENV_KEY_ROTATION,
                format!("must be at least {ENV_KEY_PREPUBLISH}"),
            ));
        }
        if keyset_reload > MAX_KEYSET_RELOAD {
            return Err(ConfigError::new(ENV_KEYSET_RELOAD, "must be at most 30s"));
        }

        let argon2: Argon2Cost = get(ENV_ARGON2, DEFAULT_ARGON2)
            .parse()
            .map_err(|m| ConfigError::new(ENV_ARGON2, m))?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let argon2_concurrency = match opt(ENV_ARGON2_CONCURRENCY) {
            None => cores,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .ok_or_else(|| ConfigError::new(ENV_ARGON2_CONCURRENCY, "expected 1..1024"))?,
        };
        let argon2_nice = match opt(ENV_ARGON2_NICE) {
            None => DEFAULT_ARGON2_NICE,
            Some(v) => v
                .parse::<i32>()
                .ok()
                .filter(|n| (0..=19).contains(n))
                .ok_or_else(|| ConfigError::new(ENV_ARGON2_NICE, "expected 0..19"))?,
        };

        let log = get(ENV_LOG, DEFAULT_LOG);
        tracing_subscriber::EnvFilter::try_new(&log)
            .map_err(|e| ConfigError::new(ENV_LOG, e.to_string()))?;
        let log_format = match get(ENV_LOG_FORMAT, "text").to_ascii_lowercase().as_str() {
            "text" | "pretty" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(ConfigError::new(ENV_LOG_FORMAT, "expected text or json")),
        };

        let mongodb_uri = opt(ENV_MONGODB_URI);
        let redis_url = opt(ENV_REDIS_URL);
        let mode = match (mongodb_uri, redis_url) {
            (None, None) => Mode::Embedded {
                keys_dir: PathBuf::from(get(ENV_KEYS_DIR, DEFAULT_KEYS_DIR)),
            },
            (Some(_), None) => {
                return Err(ConfigError::new(
                    ENV_REDIS_URL,
                    format!("production mode needs both {ENV_MONGODB_URI} and {ENV_REDIS_URL}; {ENV_REDIS_URL} is missing"),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    ENV_MONGODB_URI,
                    format!("production mode needs both {ENV_MONGODB_URI} and {ENV_REDIS_URL}; {ENV_MONGODB_URI} is missing"),
                ))
            }
            (Some(m), Some(r)) => {
                if !(m.starts_with("mongodb://") || m.starts_with("mongodb+srv://")) {
                    return Err(ConfigError::new(
                        ENV_MONGODB_URI,
                        "expected a mongodb:// or mongodb+srv:// URI",
                    ));
                }
                if !(r.starts_with("redis://")
                    || r.starts_with("rediss://")
                    || r.starts_with("redis+cluster://")
                    || r.starts_with("redis+unix://")
                    || r.starts_with("unix://"))
                {
                    return Err(ConfigError::new(
                        ENV_REDIS_URL,
                        "expected a redis://, rediss:// or redis+cluster:// URL",
                    ));
                }
                let mongodb_db = get(ENV_MONGODB_DB, DEFAULT_MONGODB_DB);
                if mongodb_db.is_empty()
                    || mongodb_db.len() > 63
                    || mongodb_db.contains(['/', '\\', '.', ' ', '"', '$', '\0'])
                {
                    return Err(ConfigError::new(ENV_MONGODB_DB, "not a valid database name"));
                }
                let kek = opt(ENV_KEY_ENCRYPTION_KEY).ok_or_else(|| {
                    ConfigError::new(
                        ENV_KEY_ENCRYPTION_KEY,
                        "required in production mode (32 random bytes, base64; `openssl rand -base64 32`)",
                    )
                })?;
                let key_encryption_key = decode_kek(&kek)
                    .map_err(|m| ConfigError::new(ENV_KEY_ENCRYPTION_KEY, m))?;
                Mode::Production {
                    mongodb_uri: Secret(m),
                    mongodb_db,
                    redis_url: Secret(r),
                    redis_prefix: get(ENV_REDIS_PREFIX, DEFAULT_REDIS_PREFIX),
                    key_encryption_key: Secret(key_encryption_key),
                }
            }
        };

        let clients_file = opt(ENV_CLIENTS_FILE).map(PathBuf::from);
        let admin_emails = opt(ENV_ADMIN_EMAILS)
            .map(|v| {
                v.split(',')
                    .map(|e| e.trim().to_lowercase())
                    .filter(|e| !e.is_empty())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if let Some(bad) = admin_emails.iter().find(|e| !e.contains('@')) {
            return Err(ConfigError::new(
                ENV_ADMIN_EMAILS,
                format!("{bad:?} is not an email address"),
            ));
        }
        let bootstrap_admin = match (
            opt(ENV_BOOTSTRAP_ADMIN_EMAIL),
            env.get(ENV_BOOTSTRAP_ADMIN_PASSWORD)
                .filter(|p| !p.is_empty()),
        ) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    ENV_BOOTSTRAP_ADMIN_PASSWORD,
                    format!("must be set with {ENV_BOOTSTRAP_ADMIN_EMAIL}"),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    ENV_BOOTSTRAP_ADMIN_EMAIL,
                    format!("must be set with {ENV_BOOTSTRAP_ADMIN_PASSWORD}"),
                ))
            }
            (Some(email), Some(password)) => {
                let email = email.to_lowercase();
                let (local, domain) = email.split_once('@').unwrap_or_default();
                if local.is_empty() || domain.is_empty() || email.chars().any(char::is_whitespace) {
                    return Err(ConfigError::new(
                        ENV_BOOTSTRAP_ADMIN_EMAIL,
                        "expected an email address",
                    ));
                }
                if !(8..=128).contains(&password.chars().count()) {
                    return Err(ConfigError::new(
                        ENV_BOOTSTRAP_ADMIN_PASSWORD,
                        "must be 8-128 characters",
                    ));
                }
                Some(BootstrapAdmin {
                    email,
                    password: Secret(password),
                })
            }
        };
        let max_sessions_per_user = match opt(ENV_MAX_SESSIONS_PER_USER) {
            None => DEFAULT_MAX_SESSIONS_PER_USER,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    ConfigError::new(
                        ENV_MAX_SESSIONS_PER_USER,
                        "expected a number from 1 to 10000",
                    )
                })?,
        };
        let body_limit = match opt(ENV_BODY_LIMIT) {
            None => DEFAULT_BODY_LIMIT,
            Some(v) => parse_size(&v).map_err(|m| ConfigError::new(ENV_BODY_LIMIT, m))?,
        };

        let metrics_listen = match opt(ENV_METRICS_LISTEN) {
            None => None,
            Some(v) => Some(v.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(
                    ENV_METRICS_LISTEN,
                    "expected HOST:PORT, e.g. 127.0.0.1:9100",
                )
            })?),
        };
        let rate_limit_enabled = match get(ENV_RATE_LIMIT, "on").to_ascii_lowercase().as_str() {
            "on" | "true" | "1" => true,
            "off" | "false" | "0" => false,
            _ => return Err(ConfigError::new(ENV_RATE_LIMIT, "expected on or off")),
        };
        let rate_limit_ip: Rate = get(ENV_RATE_LIMIT_IP, DEFAULT_RATE_LIMIT_IP)
            .parse()
            .map_err(|m| ConfigError::new(ENV_RATE_LIMIT_IP, m))?;
        let rate_limit_account: Rate = get(ENV_RATE_LIMIT_ACCOUNT, DEFAULT_RATE_LIMIT_ACCOUNT)
            .parse()
            .map_err(|m| ConfigError::new(ENV_RATE_LIMIT_ACCOUNT, m))?;
        let trusted_proxies = opt(ENV_TRUSTED_PROXIES)
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.parse::<IpNet>())
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|m| ConfigError::new(ENV_TRUSTED_PROXIES, m))?
            .unwrap_or_default();
        let tls = match (opt(ENV_TLS_CERT), opt(ENV_TLS_KEY)) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    ENV_TLS_KEY,
                    format!("required with {ENV_TLS_CERT}"),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    ENV_TLS_CERT,
                    format!("required with {ENV_TLS_KEY}"),
                ))
            }
            (Some(c), Some(k)) => {
                for (var, path) in [(ENV_TLS_CERT, &c), (ENV_TLS_KEY, &k)] {
                    if !std::path::Path::new(path).is_file() {
                        return Err(ConfigError::new(
                            var,
                            format!("{path:?} is not a readable file"),
                        ));
                    }
                }
                Some((PathBuf::from(c), PathBuf::from(k)))
            }
        };
        let refresh_cookie = match get(ENV_REFRESH_COOKIE, "off").to_ascii_lowercase().as_str() {
            "on" | "true" | "1" => true,
            "off" | "false" | "0" => false,
            _ => return Err(ConfigError::new(ENV_REFRESH_COOKIE, "expected on or off")),
        };
        let cors_origins = opt(ENV_CORS_ORIGINS)
            .map(|v| {
                v.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for o in &cors_origins {
            let ok = url::Url::parse(o)
                .ok()
                .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok || o == "*" {
                return Err(ConfigError::new(
                    ENV_CORS_ORIGINS,
                    format!("{o:?} is not an origin like https://app.example.com"),
                ));
            }
        }

        Ok(Config {
            metrics_listen,
            rate_limit_enabled,
            rate_limit_ip,
            rate_limit_account,
            trusted_proxies,
            tls,
            refresh_cookie,
            cors_origins,
            listen,
            issuer,
            audience,
            mode,
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
        })
    }

    /// The default signing algorithm (the first of `TOKEND_SIGNING_ALGS`).
    /// The key schedule: the algorithms, rotation, prepublication, retention (the longest
    /// token lifetime plus the validation leeway), reload interval and RSA size.
    pub fn keys_config(&self) -> KeysConfig {
        KeysConfig {
            algs: self.signing_algs.clone(),
            rotation: self.key_rotation,
            prepublish: self.key_prepublish,
            retention: self.access_ttl.max(self.refresh_ttl) + LEEWAY,
            reload: self.keyset_reload,
            rsa_bits: self.rsa_bits,
        }
    }

    pub fn default_alg(&self) -> Alg {
        self.signing_algs[0]
    }

    pub fn is_embedded(&self) -> bool {
        matches!(self.mode, Mode::Embedded { .. })
    }

    /// The effective configuration as `VAR=value` lines, secrets redacted.
    pub fn describe(&self) -> String {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let mut lines = vec![
            format!("{ENV_LISTEN}={}", self.listen),
            format!("{ENV_ISSUER}={}", self.issuer),
            format!("{ENV_AUDIENCE}={}", self.audience),
        ];
        match &self.mode {
            Mode::Embedded { keys_dir } => {
                lines.push("mode=embedded".into());
                lines.push(format!("{ENV_KEYS_DIR}={}", keys_dir.display()));
            }
            Mode::Production {
                mongodb_uri,
                mongodb_db,
                redis_url,
                redis_prefix,
                ..
            } => {
                lines.push("mode=production".into());
                lines.push(format!("{ENV_MONGODB_URI}={}", redact_url(&mongodb_uri.0)));
                lines.push(format!("{ENV_MONGODB_DB}={mongodb_db}"));
                lines.push(format!("{ENV_REDIS_URL}={}", redact_url(&redis_url.0)));
                lines.push(format!("{ENV_REDIS_PREFIX}={redis_prefix}"));
                lines.push(format!("{ENV_KEY_ENCRYPTION_KEY}=<redacted>"));
            }
        }
        let algs: Vec<&str> = self.signing_algs.iter().map(|a| a.as_str()).collect();
        lines.extend([
            format!("{ENV_SIGNING_ALGS}={}", algs.join(",")),
            format!("{ENV_RSA_BITS}={}", self.rsa_bits),
            format!("{ENV_ACCESS_TTL}={}", d(self.access_ttl)),
            format!("{ENV_REFRESH_TTL}={}", d(self.refresh_ttl)),
            format!("{ENV_SESSION_TTL}={}", d(self.session_ttl)),
            format!(
                "{ENV_REFRESH_REUSE_LEEWAY}={}",
                d(self.refresh_reuse_leeway)
            ),
            format!("{ENV_KEY_ROTATION}={}", d(self.key_rotation)),
            format!("{ENV_KEY_PREPUBLISH}={}", d(self.key_prepublish)),
            format!("{ENV_JWKS_MAX_AGE}={}", d(self.jwks_max_age)),
            format!("{ENV_KEYSET_RELOAD}={}", d(self.keyset_reload)),
            format!("{ENV_ARGON2}={}", self.argon2),
            format!("{ENV_ARGON2_CONCURRENCY}={}", self.argon2_concurrency),
            format!("{ENV_ARGON2_NICE}={}", self.argon2_nice),
            format!("{ENV_LOG}={}", self.log),
            format!(
                "{ENV_LOG_FORMAT}={}",
                match self.log_format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                }
            ),
            format!(
                "{ENV_CLIENTS_FILE}={}",
                self.clients_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
            format!("{ENV_ADMIN_EMAILS}={}", self.admin_emails.join(",")),
            format!(
                "{ENV_BOOTSTRAP_ADMIN_EMAIL}={}",
                self.bootstrap_admin
                    .as_ref()
                    .map(|b| b.email.as_str())
                    .unwrap_or_default()
            ),
            format!(
                "{ENV_BOOTSTRAP_ADMIN_PASSWORD}={}",
                if self.bootstrap_admin.is_some() {
                    "<redacted>"
                } else {
                    ""
                }
            ),
            format!("{ENV_MAX_SESSIONS_PER_USER}={}", self.max_sessions_per_user),
            format!("{ENV_BODY_LIMIT}={}", self.body_limit),
            format!("{ENV_REQUEST_TIMEOUT}={}", d(self.request_timeout)),
            format!("{ENV_HEADER_READ_TIMEOUT}={}", d(self.header_read_timeout)),
            format!("{ENV_IDLE_TIMEOUT}={}", d(self.idle_timeout)),
            format!("{ENV_MAX_CONNECTIONS}={}", self.max_connections),
            format!(
                "{ENV_MAX_CONNECTIONS_PER_IP}={}",
                self.max_connections_per_ip
            ),
            format!("{ENV_SHUTDOWN_GRACE}={}", d(self.shutdown_grace)),
            format!(
                "{ENV_METRICS_LISTEN}={}",
                self.metrics_listen
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            ),
            format!(
                "{ENV_RATE_LIMIT}={}",
                if self.rate_limit_enabled { "on" } else { "off" }
            ),
            format!("{ENV_RATE_LIMIT_IP}={}", self.rate_limit_ip),
            format!("{ENV_RATE_LIMIT_ACCOUNT}={}", self.rate_limit_account),
            format!(
                "{ENV_TRUSTED_PROXIES}={}",
                self.trusted_proxies
                    .iter()
                    .map(|n| format!("{}/{}", n.addr, n.prefix))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            format!(
                "{ENV_TLS_CERT}={}",
                self.tls
                    .as_ref()
                    .map(|(c, _)| c.display().to_string())
                    .unwrap_or_default()
            ),
            format!(
                "{ENV_REFRESH_COOKIE}={}",
                if self.refresh_cookie { "on" } else { "off" }
            ),
            format!("{ENV_CORS_ORIGINS}={}", self.cors_origins.join(",")),
        ]);
        lines.join("\n")
    }
}

/// Hides the password of `scheme://user:password@host`.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable>".into(),
    }
}

fn decode_kek(v: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v))
        .map_err(|_| "not valid base64".to_string())?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("must decode to 32 bytes, got {}", b.len()))
}

fn parse_algs(v: &str) -> Result<Vec<Alg>, String> {
    let mut algs = Vec::new();
    for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let alg = Alg::parse(name)
            .ok_or_else(|| format!("unsupported algorithm {name:?} (supported: EdDSA, RS256)"))?;
        if algs.contains(&alg) {
            return Err(format!("{name} listed twice"));
        }
        algs.push(alg);
    }
    if algs.is_empty() {
        return Err("at least one algorithm is required".into());
    }
    Ok(algs)
}

/// Parses `90s`, `15m`, `1h`, `7d` (also compound humantime forms like `1h30m`); zero is refused.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let d = parse_duration_allow_zero(v)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn parse_duration_allow_zero(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    if v.chars().all(|c| c.is_ascii_digit()) && !v.is_empty() {
        return Err(format!("{v:?} needs a unit: s, m, h or d"));
    }
    let d = humantime::parse_duration(v)
        .map_err(|e| format!("{v:?} is not a duration like 30s, 15m, 1h, 7d ({e})"))?;
    if d > Duration::from_secs(10 * 365 * 86_400) {
        return Err("must be at most ten years".into());
    }
    Ok(d)
}

fn parse_size(v: &str) -> Result<usize, String> {
    let v = v.trim();
    let (num, mult) = if let Some(n) = v.strip_suffix("KiB").or_else(|| v.strip_suffix('k')) {
        (n, 1024)
    } else if let Some(n) = v.strip_suffix("MiB").or_else(|| v.strip_suffix('m')) {
        (n, 1024 * 1024)
    } else {
        (v, 1)
    };
    let n: usize = num
        .trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a size like 16384 or 16KiB"))?;
    let size = n.saturating_mul(mult);
    if !(256..=16 * 1024 * 1024).contains(&size) {
        return Err("must be between 256 bytes and 16 MiB".into());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_env(&map)
    }

    fn err_var(pairs: &[(&str, &str)]) -> &'static str {
        match parse(pairs) {
            Err(e) => e.var,
            Ok(_) => panic!("expected an error for {pairs:?}"),
        }
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.issuer, "http://localhost:5000");
        assert_eq!(c.audience, "tokend");
        assert!(c.is_embedded());
        assert_eq!(c.signing_algs, vec![Alg::EdDSA, Alg::RS256]);
        assert_eq!(c.access_ttl, Duration::from_secs(900));
        assert_eq!(c.refresh_ttl, Duration::from_secs(14 * 86400));
        assert_eq!(c.session_ttl, Duration::from_secs(30 * 86400));
        assert_eq!(c.refresh_reuse_leeway, Duration::from_secs(2));
        assert_eq!(c.key_rotation, Duration::from_secs(7 * 86400));
        assert_eq!(c.key_prepublish, Duration::from_secs(3600));
        assert_eq!(c.jwks_max_age, Duration::from_secs(300));
        assert_eq!(
            c.argon2,
            Argon2Cost {
                m_kib: 19456,
                t: 2,
                p: 1
            }
        );
        assert_eq!(c.body_limit, 16 * 1024);
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_connections_per_ip, 256);
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        for (var, value) in [
            (ENV_LISTEN, "nowhere"),
            (ENV_ISSUER, "not a url"),
            (ENV_ISSUER, "ftp://x"),
            (ENV_SIGNING_ALGS, "HS256"),
            (ENV_RSA_BITS, "1024"),
            (ENV_RSA_BITS, "3000"),
            (ENV_SIGNING_ALGS, "none"),
            (ENV_SIGNING_ALGS, "EdDSA,EdDSA"),
            (ENV_ACCESS_TTL, "15"),
            (ENV_ACCESS_TTL, "soon"),
            (ENV_ACCESS_TTL, "0s"),
            (ENV_REFRESH_TTL, "60d"),
            (ENV_SESSION_TTL, "-1d"),
            (ENV_REFRESH_REUSE_LEEWAY, "2 fortnights"),
            (ENV_KEY_ROTATION, "1m"),
            (ENV_KEY_PREPUBLISH, "5m"),
            (ENV_JWKS_MAX_AGE, "forever"),
            (ENV_ARGON2, "m=1,t=2,p=1"),
            (ENV_ARGON2, "m=19456,t=2"),
            (ENV_ARGON2, "fast"),
            (ENV_ARGON2_CONCURRENCY, "0"),
            (ENV_ARGON2_NICE, "20"),
            (ENV_ARGON2_NICE, "-1"),
            (ENV_LOG, "info,[[["),
            (ENV_LOG_FORMAT, "xml"),
            (ENV_ADMIN_EMAILS, "root"),
            (ENV_BODY_LIMIT, "lots"),
            (ENV_HEADER_READ_TIMEOUT, "0s"),
            (ENV_IDLE_TIMEOUT, "60"),
            (ENV_IDLE_TIMEOUT, "0s"),
            (ENV_MAX_CONNECTIONS, "0"),
            (ENV_MAX_CONNECTIONS, "lots"),
            (ENV_MAX_CONNECTIONS, "2000000"),
            (ENV_MAX_CONNECTIONS_PER_IP, "-1"),
            (ENV_MAX_CONNECTIONS_PER_IP, "0"),
            (ENV_KEYSET_RELOAD, "5m"),
            (ENV_METRICS_LISTEN, "9100"),
            (ENV_RATE_LIMIT, "maybe"),
            (ENV_RATE_LIMIT_IP, "lots"),
            (ENV_RATE_LIMIT_IP, "0/min"),
            (ENV_RATE_LIMIT_ACCOUNT, "30/fortnight"),
            (ENV_TRUSTED_PROXIES, "10.0.0.0/33"),
            (ENV_TRUSTED_PROXIES, "proxy.local"),
            (ENV_REFRESH_COOKIE, "sometimes"),
            (ENV_CORS_ORIGINS, "*"),
            (ENV_CORS_ORIGINS, "app.example.com"),
        ] {
            assert_eq!(err_var(&[(var, value)]), var, "{var}={value}");
        }
    }

    #[test]
    fn production_mode_needs_both_uris_and_a_key_encryption_key() {
        assert_eq!(
            err_var(&[(ENV_MONGODB_URI, "mongodb://127.0.0.1:27017")]),
            ENV_REDIS_URL
        );
        assert_eq!(
            err_var(&[(ENV_REDIS_URL, "redis://127.0.0.1:6379")]),
            ENV_MONGODB_URI
        );
        let both = [
            (ENV_MONGODB_URI, "mongodb://127.0.0.1:27017"),
            (ENV_REDIS_URL, "redis://127.0.0.1:6379"),
        ];
        assert_eq!(err_var(&both), ENV_KEY_ENCRYPTION_KEY);
        let mut with_short_key = both.to_vec();
        with_short_key.push((ENV_KEY_ENCRYPTION_KEY, "c2hvcnQ="));
        assert_eq!(err_var(&with_short_key), ENV_KEY_ENCRYPTION_KEY);
        let mut good = both.to_vec();
        good.push((
            ENV_KEY_ENCRYPTION_KEY,
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ));
        let c = parse(&good).unwrap();
        assert!(!c.is_embedded());
        let shown = c.describe();
        assert!(shown.contains("mode=production"));
        assert!(!shown.contains("AAECAwQF"));
    }

    #[test]
    fn passwords_in_store_urls_are_redacted() {
        let c = parse(&[
            (ENV_MONGODB_URI, "mongodb://u:hunter2@127.0.0.1:27017"),
            (ENV_REDIS_URL, "redis://:hunter3@127.0.0.1:6379"),
            (
                ENV_KEY_ENCRYPTION_KEY,
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            ),
        ])
        .unwrap();
        let shown = c.describe();
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
    }

    #[test]
    fn rates_and_networks_parse() {
        let r: Rate = "600/min".parse().unwrap();
        assert_eq!(
            (r.count, r.per, r.emission_ms()),
            (600, Duration::from_secs(60), 100)
        );
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        let one: IpNet = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        assert!(parse(&[(ENV_TLS_KEY, "/etc/hostname")]).is_err());
    }

    #[test]
    fn durations_take_the_spec_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn every_variable_is_in_the_readme_configuration_table() {
        let readme = include_str!("../README.md");
        let table = readme
            .split("\n## Configuration\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("a Configuration section in README.md");
        let production = parse(&[
            (ENV_MONGODB_URI, "mongodb://127.0.0.1:27017"),
            (ENV_REDIS_URL, "redis://127.0.0.1:6379"),
            (
                ENV_KEY_ENCRYPTION_KEY,
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            ),
        ])
        .unwrap();
        for shown in [parse(&[]).unwrap().describe(), production.describe()] {
            for var in shown
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, _)| k)
            {
                if var.starts_with("TOKEND_") {
                    assert!(
                        table.contains(&format!("`{var}`")),
                        "{var} is not in README.md"
                    );
                }
            }
        }
    }

    #[test]
    fn issuer_loses_its_trailing_slash() {
        let c = parse(&[(ENV_ISSUER, "https://auth.example.com/")]).unwrap();
        assert_eq!(c.issuer, "https://auth.example.com");
    }
}
