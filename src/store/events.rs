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
    /// The user the event is about, by id.
    pub user_id: Option<String>,
    /// The client the event is about.
    pub client_id: Option<String>,
    /// The address of the request that caused the event.
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
    /// Only events of this type.
    pub kind: Option<String>,
    /// Only events about this user.
    pub user_id: Option<String>,
    /// Only events whose id sorts after this one.
    pub after: Option<String>,
    /// At most this many.
    pub limit: usize,
    /// Unix milliseconds now: expired events are left out.
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
    /// Keeps one event.
    async fn append(&self, event: &EventRecord) -> Result<(), StoreError>;
    /// Keeps several events, in one write where the store allows (the event writer hands over
    /// what queued while the last write was out). The default appends them one by one.
    async fn append_many(&self, events: &[EventRecord]) -> Result<(), StoreError> {
        for e in events {
            self.append(e).await?;
        }
        Ok(())
    }
    /// The events the query asks for, in id order.
    async fn query(&self, q: &EventQuery) -> Result<Vec<EventRecord>, StoreError>;
    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}
