//! Account events in MongoDB: the `events` collection, one document per event, `_id` the event
//! id (which sorts by time). `expire_at` is when the event is forgotten: a TTL index removes it
//! then, so a change of `TOKEND_EVENTS_RETENTION` applies to new events without touching the
//! index; a query never answers an event past it, whenever the server's TTL monitor runs.

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::{detached, map_err, MongoStore};
use crate::store::events::{EventQuery, EventRecord, EventStore};
use crate::store::StoreError;

pub(crate) const EVENTS: &str = "events";

/// An event as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct EventDoc {
    #[serde(rename = "_id")]
    id: String,
    time: i64,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
    #[serde(default)]
    detail: serde_json::Value,
    expire_at: DateTime,
}

impl From<&EventRecord> for EventDoc {
    fn from(e: &EventRecord) -> Self {
        EventDoc {
            id: e.id.clone(),
            time: e.time_ms,
            kind: e.kind.clone(),
            user_id: e.user_id.clone(),
            client_id: e.client_id.clone(),
            ip: e.ip.clone(),
            detail: e.detail.clone(),
            expire_at: DateTime::from_millis(e.expires_at_ms),
        }
    }
}

impl From<EventDoc> for EventRecord {
    fn from(d: EventDoc) -> Self {
        EventRecord {
            id: d.id,
            time_ms: d.time,
            kind: d.kind,
            user_id: d.user_id,
            client_id: d.client_id,
            ip: d.ip,
            detail: d.detail,
            expires_at_ms: d.expire_at.timestamp_millis(),
        }
    }
}

/// Creates the TTL index on `expire_at` and the indexes of the two filters (idempotent).
pub(super) async fn ensure_indexes(events: &Collection<EventDoc>) -> Result<(), StoreError> {
    let models = [
        IndexModel::builder()
            .keys(doc! { "expire_at": 1 })
            .options(
                IndexOptions::builder()
                    .name("expire_at_ttl".to_string())
                    .expire_after(std::time::Duration::ZERO)
                    .build(),
            )
            .build(),
        IndexModel::builder()
            .keys(doc! { "user_id": 1, "_id": 1 })
            .options(IndexOptions::builder().name("user_id".to_string()).build())
            .build(),
        IndexModel::builder()
            .keys(doc! { "type": 1, "_id": 1 })
            .options(IndexOptions::builder().name("type".to_string()).build())
            .build(),
    ];
    for model in models {
        events.create_index(model).await.map_err(map_err)?;
    }
    Ok(())
}

#[async_trait]
impl EventStore for MongoStore {
    async fn append(&self, event: &EventRecord) -> Result<(), StoreError> {
        let events = self.events.clone();
        let doc = EventDoc::from(event);
        detached(async move { events.insert_one(doc).await.map(|_| ()).map_err(map_err) }).await
    }

    async fn append_many(&self, batch: &[EventRecord]) -> Result<(), StoreError> {
        if let [one] = batch {
            return self.append(one).await;
        }
        let events = self.events.clone();
        let docs: Vec<EventDoc> = batch.iter().map(EventDoc::from).collect();
        detached(async move {
            events
                .insert_many(docs)
                .ordered(false)
                .await
                .map(|_| ())
                .map_err(map_err)
        })
        .await
    }

    async fn query(&self, q: &EventQuery) -> Result<Vec<EventRecord>, StoreError> {
        let events = self.events.clone();
        let mut filter = Document::new();
        filter.insert("expire_at", doc! { "$gt": DateTime::from_millis(q.now_ms) });
        if let Some(after) = &q.after {
            filter.insert("_id", doc! { "$gt": after });
        }
        if let Some(kind) = &q.kind {
            filter.insert("type", kind);
        }
        if let Some(user) = &q.user_id {
            filter.insert("user_id", user);
        }
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        detached(async move {
            let found: Vec<EventDoc> = events
                .find(filter)
                .sort(doc! { "_id": 1 })
                .limit(limit)
                .await
                .map_err(map_err)?
                .try_collect()
                .await
                .map_err(map_err)?;
            Ok(found.into_iter().map(EventRecord::from).collect())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_db().await
    }
}
