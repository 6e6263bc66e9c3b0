//! An in-memory [`KeyStore`]: the reference implementation of the compare-and-swap contract, for
//! tests. It counts successful saves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{KeyError, KeyStore, StoredKeyset};

/// A keyset held in process memory.
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    keyset: Mutex<Option<StoredKeyset>>,
    saves: AtomicUsize,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> MemoryKeyStore {
        MemoryKeyStore::default()
    }

    /// How many saves succeeded.
    #[cfg(test)]
    pub(crate) fn saves(&self) -> usize {
        self.saves.load(Ordering::SeqCst)
    }

    /// The stored keyset, if any.
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> Option<StoredKeyset> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<StoredKeyset>> {
        self.keyset.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn load(&self) -> Result<Option<StoredKeyset>, KeyError> {
        Ok(self.lock().clone())
    }

    async fn save(&self, keyset: &StoredKeyset, expected: Option<u64>) -> Result<bool, KeyError> {
        let mut stored = self.lock();
        if stored.as_ref().map(|k| k.version) != expected {
            return Ok(false);
        }
        for k in &keyset.keys {
            k.check()?;
        }
        *stored = Some(StoredKeyset {
            version: expected.map_or(1, |v| v + 1),
            keys: keyset.keys.clone(),
        });
        self.saves.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }

    async fn ping(&self) -> Result<(), KeyError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn save_is_compare_and_swap_on_the_version() {
        let s = MemoryKeyStore::new();
        assert_eq!(s.load().await.unwrap(), None);
        let ks = StoredKeyset::default();
        assert!(!s.save(&ks, Some(1)).await.unwrap());
        assert!(s.save(&ks, None).await.unwrap());
        assert_eq!(s.load().await.unwrap().unwrap().version, 1);
        assert!(!s.save(&ks, None).await.unwrap());
        assert!(!s.save(&ks, Some(0)).await.unwrap());
        assert!(s.save(&ks, Some(1)).await.unwrap());
        assert_eq!(s.load().await.unwrap().unwrap().version, 2);
        assert_eq!(s.saves(), 2);
    }
}
