//! Argon2id password hashing off the async executor, behind a concurrency bound, with a dummy
//! hash so unknown accounts cost the same as wrong passwords.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use super::{ids, Error};
use crate::config::Argon2Cost;

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Wrong,
    /// Right, and the hash already uses the configured cost.
    Right,
    /// Right, but the hash should be replaced by this one (older cost).
    RightRehashed(String),
}

/// Hashes and verifies passwords with the configured Argon2id cost.
#[derive(Clone)]
pub struct Passwords {
    cost: Argon2Cost,
    permits: Arc<Semaphore>,
    dummy_hash: Arc<String>,
}

impl Passwords {
    /// Builds the hasher and its dummy hash (one hash at start-up).
    pub async fn new(cost: Argon2Cost, concurrency: usize) -> Result<Passwords, Error> {
        let mut p = Passwords {
            cost,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy_hash: Arc::new(String::new()),
        };
        let dummy = ids::random_secret()?;
        p.dummy_hash = Arc::new(p.hash(&dummy).await?);
        Ok(p)
    }

    fn argon2(cost: Argon2Cost) -> Result<Argon2<'static>, Error> {
        let params = Params::new(cost.m_kib, cost.t, cost.p, None)
            .map_err(|e| Error::Internal(format!("argon2 params: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Runs `f` on the blocking pool once a permit is free, inside the caller's span.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::Internal("password hasher closed".into()))?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(f))
            .await
            .map_err(|e| Error::Internal(format!("password hashing task failed: {e}")))
    }

    /// A PHC string for `password`.
    pub async fn hash(&self, password: &str) -> Result<String, Error> {
        let argon = Self::argon2(self.cost)?;
        let salt = SaltString::encode_b64(&ids::random_bytes::<16>()?)
            .map_err(|e| Error::Internal(format!("salt: {e}")))?;
        let password = zeroize::Zeroizing::new(password.to_string());
        self.blocking(move || {
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| Error::Internal(format!("argon2: {e}")))
        })
        .await?
    }

    /// Checks `password` against `stored` (or against the dummy hash when there is no account,
    /// so both failures take the same time).
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<Verdict, Error> {
        let known = stored.is_some();
        let stored = stored.unwrap_or(&self.dummy_hash).to_string();
        let candidate = zeroize::Zeroizing::new(password.to_string());
        let cost = self.cost;
        let (ok, outdated) = self
            .blocking(move || {
                let Ok(parsed) = PasswordHash::new(&stored) else {
                    return (false, false);
                };
                let ok = Argon2::default()
                    .verify_password(candidate.as_bytes(), &parsed)
                    .is_ok();
                let outdated = match Params::try_from(&parsed) {
                    Ok(p) => {
                        parsed.algorithm.as_str() != "argon2id"
                            || p.m_cost() != cost.m_kib
                            || p.t_cost() != cost.t
                            || p.p_cost() != cost.p
                    }
                    Err(_) => true,
                };
                (ok, outdated)
            })
            .await?;
        if !ok || !known {
            return Ok(Verdict::Wrong);
        }
        if outdated {
            return Ok(Verdict::RightRehashed(self.hash(password).await?));
        }
        Ok(Verdict::Right)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Argon2Cost = Argon2Cost {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[tokio::test]
    async fn right_and_wrong_passwords() {
        let p = Passwords::new(CHEAP, 2).await.unwrap();
        let h = p.hash("correct horse").await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert_eq!(
            p.verify("correct horse", Some(&h)).await.unwrap(),
            Verdict::Right
        );
        assert_eq!(
            p.verify("wrong horse", Some(&h)).await.unwrap(),
            Verdict::Wrong
        );
        assert_eq!(
            p.verify("correct horse", None).await.unwrap(),
            Verdict::Wrong
        );
        assert_eq!(
            p.verify("x", Some("not a hash")).await.unwrap(),
            Verdict::Wrong
        );
    }

    #[tokio::test]
    async fn an_older_cost_is_upgraded_on_success() {
        let old = Passwords::new(CHEAP, 1).await.unwrap();
        let h = old.hash("correct horse").await.unwrap();
        let new = Passwords::new(
            Argon2Cost {
                m_kib: 128,
                t: 2,
                p: 1,
            },
            1,
        )
        .await
        .unwrap();
        match new.verify("correct horse", Some(&h)).await.unwrap() {
            Verdict::RightRehashed(h2) => {
                assert!(h2.contains("m=128,t=2,p=1"), "{h2}");
                assert_eq!(
                    new.verify("correct horse", Some(&h2)).await.unwrap(),
                    Verdict::Right
                );
            }
            other => panic!("expected a rehash, got {other:?}"),
        }
    }
}
