//! Where state lives: the running mode (docs/operations.md) and its stores. Embedded mode keeps
//! everything in memory and the keyset in a directory; production mode needs MongoDB, Redis and
//! the key that seals private keys in MongoDB.

use std::fmt;
use std::path::PathBuf;

use super::env::Reader;
use super::vars::{self, Var};

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret<T>(pub(crate) T);

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How tokend keeps its state (docs/operations.md).
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// Everything in process memory, keys in a directory.
    Embedded {
        /// `TOKEND_KEYS_DIR`.
        keys_dir: PathBuf,
    },
    /// Users, clients and keyset in MongoDB; revocations and families in Redis.
    Production {
        /// `TOKEND_MONGODB_URI`.
        mongodb_uri: Secret<String>,
        /// `TOKEND_MONGODB_DB`.
        mongodb_db: String,
        /// `TOKEND_REDIS_URL`.
        redis_url: Secret<String>,
        /// `TOKEND_REDIS_PREFIX`.
        redis_prefix: String,
        /// `TOKEND_KEY_ENCRYPTION_KEY`: seals the private keys kept in MongoDB.
        key_encryption_key: Secret<[u8; 32]>,
    },
}

impl Mode {
    /// `embedded` or `production`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Mode::Embedded { .. } => "embedded",
            Mode::Production { .. } => "production",
        }
    }
}

pub(super) fn read(r: &mut Reader<'_>) -> Option<Mode> {
    let (mongo_var, redis_var): (&'static Var, &'static Var) =
        (&vars::MONGODB_URI, &vars::REDIS_URL);
    let both = format!(
        "production mode needs both {} and {}",
        mongo_var.name, redis_var.name
    );
    match (r.trimmed(mongo_var), r.trimmed(redis_var)) {
        (None, None) => Some(Mode::Embedded {
            keys_dir: PathBuf::from(r.value(&vars::KEYS_DIR, |v| Ok(v.to_string()))?),
        }),
        (Some(_), None) => {
            r.fail(redis_var, format!("{both}; {} is missing", redis_var.name));
            None
        }
        (None, Some(_)) => {
            r.fail(mongo_var, format!("{both}; {} is missing", mongo_var.name));
            None
        }
        (Some(mongodb_uri), Some(redis_url)) => {
            let mongodb_uri = r.check(mongo_var, check_mongodb_uri(mongodb_uri));
            let redis_url = r.check(redis_var, check_redis_url(redis_url));
            let mongodb_db = r.value(&vars::MONGODB_DB, parse_mongodb_db);
            let key_encryption_key = match r.trimmed(&vars::KEY_ENCRYPTION_KEY) {
                None => {
                    r.fail(
                        &vars::KEY_ENCRYPTION_KEY,
                        "required in production mode (32 random bytes, base64; `openssl rand -base64 32`)",
                    );
                    None
                }
                Some(v) => r.check(&vars::KEY_ENCRYPTION_KEY, decode_kek(&v)),
            };
            let redis_prefix = r.value(&vars::REDIS_PREFIX, |v| Ok(v.to_string()));
            Some(Mode::Production {
                mongodb_uri: Secret(mongodb_uri?),
                mongodb_db: mongodb_db?,
                redis_url: Secret(redis_url?),
                redis_prefix: redis_prefix?,
                key_encryption_key: Secret(key_encryption_key?),
            })
        }
    }
}

fn check_mongodb_uri(uri: String) -> Result<String, String> {
    if uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://") {
        Ok(uri)
    } else {
        Err("expected a mongodb:// or mongodb+srv:// URI".into())
    }
}

fn check_redis_url(url: String) -> Result<String, String> {
    const SCHEMES: [&str; 5] = [
        "redis://",
        "rediss://",
        "redis+cluster://",
        "redis+unix://",
        "unix://",
    ];
    if SCHEMES.iter().any(|s| url.starts_with(s)) {
        Ok(url)
    } else {
        Err("expected a redis://, rediss:// or redis+cluster:// URL".into())
    }
}

/// A MongoDB database name: at most 63 bytes, none of `/\. "$` or NUL.
fn parse_mongodb_db(v: &str) -> Result<String, String> {
    if v.is_empty() || v.len() > 63 || v.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
        return Err("not a valid database name".into());
    }
    Ok(v.to_string())
}

/// 32 bytes, standard or URL-safe base64.
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

/// Hides the password of `scheme://user:password@host`.
pub(super) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable>".into(),
    }
}
