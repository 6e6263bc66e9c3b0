//! Single-use keys in memory (embedded mode), expiring by the [`SharedClock`] like the other
//! memory stores and swept as they are met, so the map stays bounded by what is live.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{lock, SWEEP_EVERY_WRITES, SWEEP_INTERVAL_MS};
use crate::clock::SharedClock;
use crate::store::{ReplayStore, StoreError};

#[derive(Default)]
struct ReplayInner {
    /// key -> clock time (Unix ms) it is forgotten
    seen: HashMap<String, i64>,
    last_sweep: i64,
    writes_since_sweep: u64,
}

/// Single-use keys in memory. One lock covers the check and the write, so of concurrent first
/// uses exactly one wins.
pub struct MemoryReplay {
    clock: SharedClock,
    inner: Mutex<ReplayInner>,
}

impl MemoryReplay {
    /// An empty store reading time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        let last_sweep = clock.now_ms();
        Self {
            clock,
            inner: Mutex::new(ReplayInner {
                last_sweep,
                ..ReplayInner::default()
            }),
        }
    }

    /// How many keys are held, expired ones included until they are swept.
    pub fn len(&self) -> usize {
        lock(&self.inner).seen.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl ReplayStore for MemoryReplay {
    async fn first_use(&self, key: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.writes_since_sweep += 1;
        if g.writes_since_sweep >= SWEEP_EVERY_WRITES
            || now.saturating_sub(g.last_sweep) >= SWEEP_INTERVAL_MS
        {
            g.last_sweep = now;
            g.writes_since_sweep = 0;
            g.seen.retain(|_, forget_at| *forget_at > now);
        }
        let forget_at = now.saturating_add(ttl_ms.max(1));
        match g.seen.get_mut(key) {
            Some(at) if *at > now => Ok(false),
            Some(at) => {
                *at = forget_at;
                Ok(true)
            }
            None => {
                g.seen.insert(key.to_string(), forget_at);
                Ok(true)
            }
        }
    }
}
