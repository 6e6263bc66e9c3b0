//! Account events in memory (embedded mode): a bounded ring ordered by event id. Past its
//! capacity the oldest event makes room; an expired event is never answered and is dropped as
//! the ring moves on.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::lock;
use crate::store::events::{EventQuery, EventRecord, EventStore};
use crate::store::StoreError;

/// How many events the ring keeps by default.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// The ring: event id -> event.
pub struct MemoryEvents {
    capacity: usize,
    inner: Mutex<BTreeMap<String, EventRecord>>,
}

impl MemoryEvents {
    /// A ring of at most `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        MemoryEvents {
            capacity: capacity.max(1),
            inner: Mutex::new(BTreeMap::new()),
        }
    }
}

#[async_trait]
impl EventStore for MemoryEvents {
    async fn append(&self, event: &EventRecord) -> Result<(), StoreError> {
        let mut g = lock(&self.inner);
        g.insert(event.id.clone(), event.clone());
        while g.len() > self.capacity {
            g.pop_first();
        }
        // The oldest events expire first: drop those that have, from the front.
        while g
            .first_key_value()
            .is_some_and(|(_, e)| e.expires_at_ms <= event.time_ms)
        {
            g.pop_first();
        }
        Ok(())
    }

    async fn query(&self, q: &EventQuery) -> Result<Vec<EventRecord>, StoreError> {
        let g = lock(&self.inner);
        Ok(g.values()
            .filter(|e| q.matches(e))
            .take(q.limit)
            .cloned()
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, time_ms: i64, expires_at_ms: i64) -> EventRecord {
        EventRecord {
            id: id.into(),
            time_ms,
            kind: "logout".into(),
            user_id: Some("u".into()),
            client_id: None,
            ip: None,
            detail: serde_json::json!({}),
            expires_at_ms,
        }
    }

    #[tokio::test]
    async fn the_ring_keeps_the_newest_and_forgets_the_expired() {
        let ring = MemoryEvents::new(2);
        for (id, t) in [("a", 1), ("b", 2), ("c", 3)] {
            ring.append(&event(id, t, 100)).await.unwrap();
        }
        let q = EventQuery {
            limit: 10,
            now_ms: 5,
            ..EventQuery::default()
        };
        let ids: Vec<String> = ring
            .query(&q)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, ["b", "c"]);
        let late = EventQuery {
            now_ms: 100,
            ..q.clone()
        };
        assert!(ring.query(&late).await.unwrap().is_empty());
        ring.append(&event("d", 150, 250)).await.unwrap();
        assert_eq!(lock(&ring.inner).len(), 1);
    }
}
