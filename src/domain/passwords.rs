//! Argon2id password hashing off the async executor, on `concurrency` threads of its own fed
//! by one queue, with a dummy hash so unknown accounts cost the same as wrong passwords. A hasher
//! thread takes the next job the moment it finishes one: the pool does not sit idle waiting for
//! a busy executor thread to hand it the next login (BENCHMARKS.md).
//!
//! Argon2's working memory (`m` KiB per hash, 19 MiB by default) is allocated at most once per
//! permit and reused: left to the allocator, blocks that size freed on several threads stayed
//! mapped, and a burst of logins left hundreds of megabytes resident (BENCHMARKS.md). The
//! start-up hash's memory is given back, so an idle server holds none.

use std::sync::{mpsc, Arc, Mutex};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

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
    workers: Arc<Workers>,
    dummy_hash: Arc<String>,
    memory: Arc<Memory>,
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The hasher threads and their queue. The threads end when the last `Passwords` clone is gone.
struct Workers {
    queue: mpsc::Sender<Job>,
}

impl Workers {
    /// `threads` hasher threads, each `nice` steps below the process's priority, so that when
    /// the cores are short, requests waiting on the executor get them before the next block of
    /// Argon2 does.
    fn start(threads: usize, nice: i32) -> Result<Workers, Error> {
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..threads.max(1) {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("tokend-argon2-{i}"))
                .spawn(move || {
                    lower_priority(nice);
                    loop {
                        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            // A panic fails that one job (its caller sees the channel closed), not
                            // the thread.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(_) => break,
                        }
                    }
                })
                .map_err(|e| Error::Internal(format!("cannot start a password hasher: {e}")))?;
        }
        Ok(Workers { queue })
    }
}

/// Lowers the calling thread's priority by `nice` steps (Linux applies `setpriority` with
/// `PRIO_PROCESS` and pid 0 to the calling thread alone). Lowering needs no privilege; if the
/// system refuses anyway, the thread hashes at the normal priority.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    let result = rustix::process::getpriority_process(None)
        .and_then(|now| rustix::process::setpriority_process(None, (now + nice).min(19)));
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot lower the priority of a password hasher thread");
    }
}

/// Argon2 working memory for reuse: at most one buffer per hasher thread exists, since only
/// those threads take one.
#[derive(Default)]
struct Memory(Mutex<Vec<Vec<Block>>>);

impl Memory {
    /// Gives the buffers back to the allocator.
    fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Runs `f` on `blocks` blocks of reused memory.
    fn with<T>(&self, blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
        let lock = || self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = lock().pop().unwrap_or_default();
        if buf.len() < blocks {
            buf.resize(blocks, Block::default());
        }
        let result = f(&mut buf[..blocks]);
        lock().push(buf);
        result
    }
}

/// The PHC string of `password` hashed by `argon` (Argon2id, v0x13) with `salt`: what
/// `PasswordHasher::hash_password` returns, computed in `memory`.
fn hash_in(
    memory: &Memory,
    argon: &Argon2<'_>,
    password: &[u8],
    salt: &SaltString,
) -> Result<String, argon2::password_hash::Error> {
    let salt = salt.as_salt();
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let params = argon.params();
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = memory.with(params.block_count(), |blocks| {
        Output::init_with(output_len, |out| {
            Ok(argon.hash_password_into_with_memory(password, salt_bytes, out, blocks)?)
        })
    })?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params)?,
        salt: Some(salt),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches `stored`, computed with the algorithm, version and parameters of
/// `stored` in `memory` (what `PasswordVerifier::verify_password` decides; the outputs are
/// compared in constant time).
fn verify_in(memory: &Memory, password: &[u8], stored: &PasswordHash<'_>) -> bool {
    let (Some(salt), Some(expected)) = (&stored.salt, &stored.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(stored.algorithm) else {
        return false;
    };
    let version = match stored.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(stored) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params);
    memory.with(argon.params().block_count(), |blocks| {
        Output::init_with(expected.len(), |out| {
            Ok(argon.hash_password_into_with_memory(password, salt_bytes, out, blocks)?)
        })
        .is_ok_and(|computed| computed == *expected)
    })
}

impl Passwords {
    /// Builds the hasher (`concurrency` threads, `nice` steps below the process's priority)
    /// and its dummy hash (one hash at start-up).
    pub async fn new(cost: Argon2Cost, concurrency: usize, nice: i32) -> Result<Passwords, Error> {
        let mut p = Passwords {
            cost,
            workers: Arc::new(Workers::start(concurrency, nice)?),
            dummy_hash: Arc::new(String::new()),
            memory: Arc::new(Memory::default()),
        };
        let dummy = ids::random_secret()?;
        p.dummy_hash = Arc::new(p.hash(&dummy).await?);
        // Idle, tokend holds no Argon2 memory: the first logins allocate it again.
        p.memory.clear();
        Ok(p)
    }

    fn argon2(cost: Argon2Cost) -> Result<Argon2<'static>, Error> {
        let params = Params::new(cost.m_kib, cost.t, cost.p, None)
            .map_err(|e| Error::Internal(format!("argon2 params: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Runs `f` on a hasher thread, in turn, inside the caller's span. A caller that gives up
    /// while its job waits (a client gone, the request timeout) costs no hash.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let span = tracing::Span::current();
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if !done.is_closed() {
                let _ = done.send(span.in_scope(f));
            }
        });
        self.workers
            .queue
            .send(job)
            .map_err(|_| Error::Internal("password hasher closed".into()))?;
        result
            .await
            .map_err(|_| Error::Internal("password hashing task failed".into()))
    }

    /// A PHC string for `password`.
    pub async fn hash(&self, password: &str) -> Result<String, Error> {
        let argon = Self::argon2(self.cost)?;
        let salt = SaltString::encode_b64(&ids::random_bytes::<16>()?)
            .map_err(|e| Error::Internal(format!("salt: {e}")))?;
        let password = zeroize::Zeroizing::new(password.to_string());
        let memory = self.memory.clone();
        self.blocking(move || {
            hash_in(&memory, &argon, password.as_bytes(), &salt)
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
        let memory = self.memory.clone();
        let (ok, outdated) = self
            .blocking(move || {
                let Ok(parsed) = PasswordHash::new(&stored) else {
                    return (false, false);
                };
                let ok = verify_in(&memory, candidate.as_bytes(), &parsed);
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
        let p = Passwords::new(CHEAP, 2, 0).await.unwrap();
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

    /// The reused-memory hashing and checking agree with the argon2 crate's own, for Argon2id
    /// at the configured cost and for other variants, versions and costs.
    #[test]
    fn reused_memory_gives_the_crates_answers() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let memory = Memory::default();
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let id = Passwords::argon2(CHEAP).unwrap();
        let ours = hash_in(&memory, &id, b"correct horse", &salt).unwrap();
        let theirs = id
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert_eq!(ours, theirs);
        let others = [
            Argon2::new(
                Algorithm::Argon2i,
                Version::V0x10,
                Params::new(128, 2, 2, Some(24)).unwrap(),
            ),
            Argon2::new(
                Algorithm::Argon2d,
                Version::V0x13,
                Params::new(32, 3, 1, None).unwrap(),
            ),
            Argon2::new(
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(256, 1, 1, None).unwrap(),
            ),
        ];
        for argon in others.iter().chain([&id]) {
            let phc = argon.hash_password(b"correct horse", &salt).unwrap();
            for (candidate, right) in [(&b"correct horse"[..], true), (b"wrong horse", false)] {
                assert_eq!(verify_in(&memory, candidate, &phc), right);
                assert_eq!(
                    Argon2::default().verify_password(candidate, &phc).is_ok(),
                    right
                );
            }
        }
        assert!(memory.0.lock().unwrap().len() <= 1, "one buffer, reused");
    }

    #[tokio::test]
    async fn hasher_threads_run_below_the_process_priority() {
        let ours = rustix::process::getpriority_process(None).unwrap();
        for (nice, expected) in [(0, ours), (5, (ours + 5).min(19)), (19, 19)] {
            let p = Passwords::new(CHEAP, 2, nice).await.unwrap();
            let theirs = p
                .blocking(|| rustix::process::getpriority_process(None).unwrap())
                .await
                .unwrap();
            assert_eq!(theirs, expected, "nice {nice}");
        }
        // The caller's own thread is untouched.
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), ours);
    }

    #[tokio::test]
    async fn a_failed_job_leaves_the_hashers_working() {
        let p = Passwords::new(CHEAP, 1, 0).await.unwrap();
        let failed: Result<(), Error> = p.blocking(|| panic!("hasher job fails")).await;
        assert!(failed.is_err());
        let h = p.hash("correct horse").await.unwrap();
        assert_eq!(
            p.verify("correct horse", Some(&h)).await.unwrap(),
            Verdict::Right
        );
    }

    #[tokio::test]
    async fn an_older_cost_is_upgraded_on_success() {
        let old = Passwords::new(CHEAP, 1, 0).await.unwrap();
        let h = old.hash("correct horse").await.unwrap();
        let new = Passwords::new(
            Argon2Cost {
                m_kib: 128,
                t: 2,
                p: 1,
            },
            1,
            0,
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
