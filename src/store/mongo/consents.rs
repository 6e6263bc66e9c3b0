//! Consents in MongoDB: the `consents` collection, one document per (user, client), unique by
//! the index [`CONSENT_INDEX`]. A grant is one upsert that adds scopes to the set; scopes are
//! sorted on read.

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::doc;
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::{detached, duplicate_key_message, map_err, MongoStore};
use crate::store::{ConsentRecord, ConsentStore, StoreError};

pub(crate) const CONSENTS: &str = "consents";
/// Name of the unique index on `consents.(user_id, client_id)`.
pub(crate) const CONSENT_INDEX: &str = "user_client_unique";

/// A consent as stored (the server's `_id` is not read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ConsentDoc {
    user_id: String,
    client_id: String,
    #[serde(default)]
    scopes: Vec<String>,
    granted_at: i64,
    updated_at: i64,
}

impl From<ConsentDoc> for ConsentRecord {
    fn from(d: ConsentDoc) -> Self {
        let mut scopes = d.scopes;
        scopes.sort();
        scopes.dedup();
        ConsentRecord {
            user_id: d.user_id,
            client_id: d.client_id,
            scopes,
            granted_at: d.granted_at,
            updated_at: d.updated_at,
        }
    }
}

/// Creates the unique index on `(user_id, client_id)` (idempotent); it also serves a user's
/// list and `forget_user`.
pub(super) async fn ensure_index(consents: &Collection<ConsentDoc>) -> Result<(), StoreError> {
    let model = IndexModel::builder()
        .keys(doc! { "user_id": 1, "client_id": 1 })
        .options(
            IndexOptions::builder()
                .unique(true)
                .name(CONSENT_INDEX.to_string())
                .build(),
        )
        .build();
    consents.create_index(model).await.map_err(map_err)?;
    Ok(())
}

fn map_consent_err(e: mongodb::error::Error) -> StoreError {
    match duplicate_key_message(&e) {
        Some(_) => StoreError::Duplicate("consent"),
        None => map_err(e),
    }
}

#[async_trait]
impl ConsentStore for MongoStore {
    /// One upsert: `$addToSet` the scopes, `$setOnInsert` the first grant's time, `$set` the
    /// last one's. Two first grants racing can both try the insert; where the server does not
    /// retry that by itself, the loser gets a duplicate key and tries once more, which then
    /// finds the winner's document and adds to it.
    async fn grant(
        &self,
        user_id: &str,
        client_id: &str,
        scopes: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let consents = self.consents.clone();
        let filter = doc! { "user_id": user_id, "client_id": client_id };
        let update = doc! {
            "$addToSet": { "scopes": { "$each": scopes } },
            "$setOnInsert": { "granted_at": now_ms },
            "$set": { "updated_at": now_ms },
        };
        detached(async move {
            let mut retried = false;
            loop {
                match consents
                    .update_one(filter.clone(), update.clone())
                    .upsert(true)
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(e) if !retried && duplicate_key_message(&e).is_some() => retried = true,
                    Err(e) => return Err(map_consent_err(e)),
                }
            }
        })
        .await
    }

    async fn get(
        &self,
        user_id: &str,
        client_id: &str,
    ) -> Result<Option<ConsentRecord>, StoreError> {
        let consents = self.consents.clone();
        let filter = doc! { "user_id": user_id, "client_id": client_id };
        detached(async move {
            consents
                .find_one(filter)
                .await
                .map(|d| d.map(ConsentRecord::from))
                .map_err(map_err)
        })
        .await
    }

    async fn list(&self, user_id: &str) -> Result<Vec<ConsentRecord>, StoreError> {
        let consents = self.consents.clone();
        let filter = doc! { "user_id": user_id };
        let docs: Vec<ConsentDoc> = detached(async move {
            consents
                .find(filter)
                .sort(doc! { "client_id": 1 })
                .await
                .map_err(map_err)?
                .try_collect()
                .await
                .map_err(map_err)
        })
        .await?;
        Ok(docs.into_iter().map(ConsentRecord::from).collect())
    }

    async fn withdraw(&self, user_id: &str, client_id: &str) -> Result<bool, StoreError> {
        let consents = self.consents.clone();
        let filter = doc! { "user_id": user_id, "client_id": client_id };
        detached(async move {
            consents
                .delete_one(filter)
                .await
                .map(|r| r.deleted_count > 0)
                .map_err(map_err)
        })
        .await
    }

    async fn forget_user(&self, user_id: &str) -> Result<u64, StoreError> {
        let consents = self.consents.clone();
        let filter = doc! { "user_id": user_id };
        detached(async move {
            consents
                .delete_many(filter)
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
