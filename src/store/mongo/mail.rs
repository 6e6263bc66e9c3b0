//! The mail outbox in MongoDB: the `mail` collection, one document per message (docs/mail.md).
//!
//! A document holds the message text while it waits (`pending`), its retry schedule and lease
//! (`next_attempt_at`, `lease_until`, `holder`), and the hash of the token it carries
//! (`token_*`). Claiming is one `findAndModify`, so of several instances exactly one gets each
//! message. At delivery the text is unset (a message without a token is deleted); the token's
//! hash stays until it is spent or a TTL index on `expire_at` removes it after it expired.

use async_trait::async_trait;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::{detached, map_err, MongoStore};
use crate::store::mail::{ClaimedMail, MailStore, MailToken, OutgoingMail};
use crate::store::StoreError;

pub(crate) const MAIL: &str = "mail";

/// A message as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct MailDoc {
    #[serde(rename = "_id")]
    id: String,
    from: String,
    to: String,
    /// The message; unset once delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raw: Option<String>,
    created_at: i64,
    /// Waiting for delivery.
    pending: bool,
    attempts: i64,
    next_attempt_at: i64,
    lease_until: i64,
    holder: String,
    has_token: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_credentials_version: Option<i64>,
    /// When the TTL index removes the document: the token's expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expire_at: Option<DateTime>,
}

impl MailDoc {
    fn token(&self) -> Option<MailToken> {
        Some(MailToken {
            hash: self.token_hash.clone()?,
            purpose: self.token_purpose.clone()?,
            user_id: self.token_user_id.clone()?,
            email: self.token_email.clone()?,
            expires_at_ms: self.token_expires_at?,
            credentials_version: self.token_credentials_version,
        })
    }
}

/// Creates the outbox's indexes (idempotent): due messages, tokens by hash and by user, and
/// the TTL index that removes a record once its token has expired.
pub(super) async fn ensure_indexes(mail: &Collection<MailDoc>) -> Result<(), StoreError> {
    let models = [
        IndexModel::builder()
            .keys(doc! { "pending": 1, "next_attempt_at": 1 })
            .options(IndexOptions::builder().name("due".to_string()).build())
            .build(),
        IndexModel::builder()
            .keys(doc! { "token_hash": 1 })
            .options(
                IndexOptions::builder()
                    .name("token_hash".to_string())
                    .build(),
            )
            .build(),
        IndexModel::builder()
            .keys(doc! { "token_user_id": 1 })
            .options(
                IndexOptions::builder()
                    .name("token_user_id".to_string())
                    .build(),
            )
            .build(),
        IndexModel::builder()
            .keys(doc! { "expire_at": 1 })
            .options(
                IndexOptions::builder()
                    .name("expire_at_ttl".to_string())
                    .expire_after(std::time::Duration::ZERO)
                    .build(),
            )
            .build(),
    ];
    for model in models {
        mail.create_index(model).await.map_err(map_err)?;
    }
    Ok(())
}

/// The filter of a live token.
fn live_token(hash: &str, purpose: &str, now_ms: i64) -> Document {
    doc! { "token_hash": hash, "token_purpose": purpose, "token_expires_at": { "$gt": now_ms } }
}

#[async_trait]
impl MailStore for MongoStore {
    async fn enqueue(
        &self,
        mail: &OutgoingMail,
        token: Option<&MailToken>,
    ) -> Result<(), StoreError> {
        let doc = MailDoc {
            id: mail.id.clone(),
            from: mail.from.clone(),
            to: mail.to.clone(),
            raw: Some(mail.raw.clone()),
            created_at: mail.created_at_ms,
            pending: true,
            attempts: 0,
            next_attempt_at: 0,
            lease_until: 0,
            holder: String::new(),
            has_token: token.is_some(),
            token_hash: token.map(|t| t.hash.clone()),
            token_purpose: token.map(|t| t.purpose.clone()),
            token_user_id: token.map(|t| t.user_id.clone()),
            token_email: token.map(|t| t.email.clone()),
            token_expires_at: token.map(|t| t.expires_at_ms),
            token_credentials_version: token.and_then(|t| t.credentials_version),
            expire_at: token.map(|t| DateTime::from_millis(t.expires_at_ms)),
        };
        let coll = self.mail.clone();
        detached(async move {
            coll.insert_one(doc).await.map(|_| ()).map_err(|e| {
                if super::duplicate_key_message(&e).is_some() {
                    StoreError::Duplicate("id")
                } else {
                    map_err(e)
                }
            })
        })
        .await
    }

    async fn claim(
        &self,
        holder: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimedMail>, StoreError> {
        let coll = self.mail.clone();
        let filter = doc! {
            "pending": true,
            "next_attempt_at": { "$lte": now_ms },
            "lease_until": { "$lte": now_ms },
            "$or": [ { "has_token": false }, { "token_expires_at": { "$gt": now_ms } } ],
        };
        let update = doc! {
            "$set": { "lease_until": now_ms.saturating_add(lease_ms), "holder": holder },
            "$inc": { "attempts": 1_i64 },
        };
        let found = detached(async move {
            coll.find_one_and_update(filter, update)
                .sort(doc! { "next_attempt_at": 1, "_id": 1 })
                .return_document(ReturnDocument::After)
                .await
                .map_err(map_err)
        })
        .await?;
        Ok(found.and_then(|d| {
            let attempts = u32::try_from(d.attempts).unwrap_or(u32::MAX);
            d.raw.map(|raw| ClaimedMail {
                mail: OutgoingMail {
                    id: d.id,
                    from: d.from,
                    to: d.to,
                    raw,
                    created_at_ms: d.created_at,
                },
                attempts,
            })
        }))
    }

    async fn delivered(&self, id: &str, holder: &str) -> Result<(), StoreError> {
        let coll = self.mail.clone();
        let (id, holder) = (id.to_string(), holder.to_string());
        detached(async move {
            coll.update_one(
                doc! { "_id": &id, "holder": &holder, "has_token": true },
                doc! { "$set": { "pending": false, "holder": "" }, "$unset": { "raw": "" } },
            )
            .await
            .map_err(map_err)?;
            coll.delete_one(doc! { "_id": &id, "holder": &holder, "has_token": false })
                .await
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn retry_at(
        &self,
        id: &str,
        holder: &str,
        next_attempt_at_ms: i64,
    ) -> Result<(), StoreError> {
        let coll = self.mail.clone();
        let filter = doc! { "_id": id, "holder": holder };
        let update = doc! {
            "$set": { "next_attempt_at": next_attempt_at_ms, "lease_until": 0_i64, "holder": "" },
        };
        detached(async move {
            coll.update_one(filter, update)
                .await
                .map(|_| ())
                .map_err(map_err)
        })
        .await
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        let coll = self.mail.clone();
        detached(async move {
            coll.count_documents(doc! { "pending": true })
                .await
                .map_err(map_err)
        })
        .await
    }

    async fn token(
        &self,
        hash: &str,
        purpose: &str,
        now_ms: i64,
    ) -> Result<Option<MailToken>, StoreError> {
        let coll = self.mail.clone();
        let filter = live_token(hash, purpose, now_ms);
        let found = detached(async move { coll.find_one(filter).await.map_err(map_err) }).await?;
        Ok(found.and_then(|d| d.token()))
    }

    async fn take_token(
        &self,
        hash: &str,
        purpose: &str,
        now_ms: i64,
    ) -> Result<Option<MailToken>, StoreError> {
        let coll = self.mail.clone();
        let filter = live_token(hash, purpose, now_ms);
        let found =
            detached(async move { coll.find_one_and_delete(filter).await.map_err(map_err) })
                .await?;
        Ok(found.and_then(|d| d.token()))
    }

    async fn forget_tokens(&self, user_id: &str, purpose: &str) -> Result<u64, StoreError> {
        let coll = self.mail.clone();
        let filter = doc! { "token_user_id": user_id, "token_purpose": purpose };
        detached(async move {
            coll.delete_many(filter)
                .await
                .map(|r| r.deleted_count)
                .map_err(map_err)
        })
        .await
    }

    async fn forget_user_tokens(&self, user_id: &str) -> Result<u64, StoreError> {
        let coll = self.mail.clone();
        let filter = doc! { "token_user_id": user_id };
        detached(async move {
            coll.delete_many(filter)
                .await
                .map(|r| r.deleted_count)
                .map_err(map_err)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_db().await
    }
}
