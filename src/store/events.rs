//! Account events (docs/events.md): the audit trail an operator reads at `GET /admin/events`.
//! Each event is kept until its `expires_at_ms` (`TOKEND_EVENTS_RETENTION` after it happened);
//! ids sort by time, so `after` pages through them in order.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// One event as stored. Users are named by id only; nothing secret is ever put here
/// (docs/events.md, "What an event never holds").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Sorts by time: 12 hex digits of Unix ms, then a per-process sequence and random digits.
    pub id: String,
    /// Unix milliseconds.
    pub time_ms: i64,
    /// `login.succeeded`, `consent.granted`, … (docs/events.md, "Types").
    pub kind: String,
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    pub ip: Option<String>,
    /// A small JSON object with what else the type records.
    pub detail: serde_json::Value,
    /// Unix milliseconds after which the event is forgotten.
    pub expires_at_ms: i64,
}

/// Which events a query wants: those after `after` (an event id), of one type and one user
/// when given, not yet expired at `now_ms`, in id order, at most `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub after: Option<String>,
    pub limit: usize,
    pub now_ms: i64,
}

impl EventQuery {
    /// Whether `e` answers this query (the limit aside).
    pub(crate) fn matches(&self, e: &EventRecord) -> bool {
        e.expires_at_ms > self.now_ms
            && self.after.as_deref().is_none_or(|a| e.id.as_str() > a)
            && self.kind.as_deref().is_none_or(|k| e.kind == k)
            && self
                .user_id
                .as_deref()
                .is_none_or(|u| e.user_id.as_deref() == Some(u))
    }
}

/// Where events are kept: a bounded ring in memory (embedded mode), a MongoDB collection with
/// a TTL index in production.
#[async_trait]
pub trait EventStore: Send + Sync {
    async fn append(&self, event: &EventRecord) -> Result<(), StoreError>;
    async fn query(&self, q: &EventQuery) -> Result<Vec<EventRecord>, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
}
