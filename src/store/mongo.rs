//! MongoDB: users, OAuth clients and consents (and, through [`MongoStore::database`], the
//! keyset).
//!
//! Collections:
//! - `users`: `_id` is the user id; unique indexes on `email` (already lower-cased) and on
//!   `username_lower`, a lower-cased copy of `username` kept by this store (no collation needed);
//! - `clients`: `_id` is the `client_id`;
//! - `consents`: one document per user and client (`user_id`, `client_id`, `scopes`,
//!   `granted_at`, `updated_at`), unique by an index on `(user_id, client_id)`;
//! - `mail`: the mail outbox and the hashes of the tokens its messages carry (`mail.rs`);
//! - `events`: account events, forgotten by a TTL index (`events.rs`, docs/events.md).
//!
//! Timestamps are `i64` Unix milliseconds. A duplicate-key error (11000) becomes
//! [`StoreError::Duplicate`] naming the field; anything else the server or the network does is
//! [`StoreError::Unavailable`]. Short server-selection and connect timeouts make a dead server
//! fail fast; the driver reconnects by itself.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    ClientMetadata, ClientRecord, ClientStore, Expected, RegistrationRecord, StoreError,
    UserRecord, UserStore,
};

mod consents;
mod events;
mod mail;

use consents::ConsentDoc;
use events::EventDoc;
use mail::MailDoc;

const STORE: &str = "mongodb";

/// How long the driver may look for a usable server before an operation fails.
pub(crate) const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one TCP connect may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) const USERS: &str = "users";
pub(crate) const CLIENTS: &str = "clients";
/// Name of the unique index on `users.email`.
pub(crate) const EMAIL_INDEX: &str = "email_unique";
/// Name of the unique index on `users.username_lower`.
pub(crate) const USERNAME_INDEX: &str = "username_lower_unique";

/// A user as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserDoc {
    #[serde(rename = "_id")]
    id: String,
    username: String,
    username_lower: String,
    email: String,
    password_hash: String,
    roles: Vec<String>,
    /// Absent in records from before it existed.
    #[serde(default)]
    email_verified: bool,
    #[serde(default)]
    credentials_version: i64,
    created_at: i64,
    updated_at: i64,
}

impl From<&UserRecord> for UserDoc {
    fn from(u: &UserRecord) -> Self {
        UserDoc {
            id: u.id.clone(),
            username: u.username.clone(),
            username_lower: u.username.to_lowercase(),
            email: u.email.clone(),
            password_hash: u.password_hash.clone(),
            roles: u.roles.clone(),
            email_verified: u.email_verified,
            credentials_version: u.credentials_version,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

impl From<UserDoc> for UserRecord {
    fn from(d: UserDoc) -> Self {
        UserRecord {
            id: d.id,
            username: d.username,
            email: d.email,
            password_hash: d.password_hash,
            roles: d.roles,
            email_verified: d.email_verified,
            credentials_version: d.credentials_version,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// A client as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClientDoc {
    #[serde(rename = "_id")]
    client_id: String,
    secret_sha256: Option<String>,
    grant_types: Vec<String>,
    scopes: Vec<String>,
    alg: Option<String>,
    created_at: i64,
    #[serde(flatten)]
    meta: ClientMetadata,
    /// Only on clients registered at `POST /oauth/register` (RFC 7591).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registration: Option<RegistrationRecord>,
}

impl From<&ClientRecord> for ClientDoc {
    fn from(c: &ClientRecord) -> Self {
        ClientDoc {
            client_id: c.client_id.clone(),
            secret_sha256: c.secret_sha256.clone(),
            grant_types: c.grant_types.clone(),
            scopes: c.scopes.clone(),
            alg: c.alg.clone(),
            created_at: c.created_at,
            meta: c.meta.clone(),
            registration: c.registration.clone(),
        }
    }
}

impl From<ClientDoc> for ClientRecord {
    fn from(d: ClientDoc) -> Self {
        ClientRecord {
            client_id: d.client_id,
            secret_sha256: d.secret_sha256,
            grant_types: d.grant_types,
            scopes: d.scopes,
            alg: d.alg,
            created_at: d.created_at,
            meta: d.meta,
            registration: d.registration,
        }
    }
}

/// The server's message if `e` is a duplicate-key error (code 11000).
fn duplicate_key_message(e: &mongodb::error::Error) -> Option<&str> {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000 => Some(&w.message),
        ErrorKind::Command(c) if c.code == 11000 => Some(&c.message),
        _ => None,
    }
}

/// The name of the index a duplicate-key message blames:
/// `E11000 duplicate key error collection: db.users index: email_unique dup key: { … }`.
fn blamed_index(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once("index: ")?;
    rest.split_whitespace().next()
}

/// Which user field a duplicate-key error is about.
fn duplicate_user_field(message: &str) -> &'static str {
    // Look at the index name, not the whole message: the duplicated value is in it too.
    let index = blamed_index(message).unwrap_or(message);
    if index.contains("username") {
        "username"
    } else if index.contains("email") {
        "email"
    } else {
        "id"
    }
}

fn map_err(e: mongodb::error::Error) -> StoreError {
    match e.kind.as_ref() {
        ErrorKind::BsonDeserialization(_) => StoreError::corrupt(STORE, e),
        _ => StoreError::unavailable(STORE, e),
    }
}

fn map_user_err(e: mongodb::error::Error) -> StoreError {
    match duplicate_key_message(&e) {
        Some(m) => StoreError::Duplicate(duplicate_user_field(m)),
        None => map_err(e),
    }
}

fn map_client_err(e: mongodb::error::Error) -> StoreError {
    match duplicate_key_message(&e) {
        Some(_) => StoreError::Duplicate("client_id"),
        None => map_err(e),
    }
}

/// Users, clients and consents in MongoDB. Cheap to clone: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct MongoStore {
    db: Database,
    users: Collection<UserDoc>,
    clients: Collection<ClientDoc>,
    consents: Collection<ConsentDoc>,
    mail: Collection<MailDoc>,
    events: Collection<EventDoc>,
}

impl MongoStore {
    /// Connects to `uri` and uses database `db`. Fails if no server answers a `ping` within
    /// about two seconds. Call [`MongoStore::ensure_indexes`] once before serving.
    pub async fn connect(uri: &str, db: &str) -> Result<MongoStore, StoreError> {
        let mut options = ClientOptions::parse(uri).await.map_err(map_err)?;
        options
            .server_selection_timeout
            .get_or_insert(SERVER_SELECTION_TIMEOUT);
        options.connect_timeout.get_or_insert(CONNECT_TIMEOUT);
        options.app_name.get_or_insert_with(|| "tokend".to_string());
        let client = Client::with_options(options).map_err(map_err)?;
        let store = Self::with_database(client.database(db));
        store.ping_db().await?;
        Ok(store)
    }

    fn with_database(db: Database) -> Self {
        MongoStore {
            users: db.collection(USERS),
            clients: db.collection(CLIENTS),
            consents: db.collection(consents::CONSENTS),
            mail: db.collection(mail::MAIL),
            events: db.collection(events::EVENTS),
            db,
        }
    }

    /// The database, for the other stores that live in it (the keyset).
    pub fn database(&self) -> Database {
        self.db.clone()
    }

    /// Creates the unique indexes on `users.email`, `users.username_lower` and
    /// `consents.(user_id, client_id)` (idempotent). `clients` needs none: its `_id` is the
    /// `client_id`.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        for (field, name) in [("email", EMAIL_INDEX), ("username_lower", USERNAME_INDEX)] {
            let model = IndexModel::builder()
                .keys(doc! { field: 1 })
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name(name.to_string())
                        .build(),
                )
                .build();
            self.users.create_index(model).await.map_err(map_err)?;
        }
        consents::ensure_index(&self.consents).await?;
        mail::ensure_indexes(&self.mail).await?;
        events::ensure_indexes(&self.events).await
    }

    async fn ping_db(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        detached(async move {
            db.run_command(doc! { "ping": 1 })
                .await
                .map(|_| ())
                .map_err(map_err)
        })
        .await
    }

    /// `$set`s `set` on user `id`, raising `credentials_version` by one when `credentials`.
    async fn update_user(
        &self,
        id: &str,
        set: Document,
        credentials: bool,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.update_user_if(id, set, credentials, &Expected::default())
            .await
    }

    /// [`MongoStore::update_user`] only while the record is what `expected` says.
    async fn update_user_if(
        &self,
        id: &str,
        set: Document,
        credentials: bool,
        expected: &Expected,
    ) -> Result<Option<UserRecord>, StoreError> {
        let (users, filter) = (self.users.clone(), user_filter(id, expected));
        let mut update = doc! { "$set": set };
        if credentials {
            update.insert("$inc", doc! { "credentials_version": 1_i64 });
        }
        detached(async move {
            users
                .find_one_and_update(filter, update)
                .return_document(ReturnDocument::After)
                .await
                .map(|d| d.map(UserRecord::from))
                .map_err(map_user_err)
        })
        .await
    }

    async fn find_user(&self, filter: Document) -> Result<Option<UserRecord>, StoreError> {
        Ok(find_doc(&self.users, filter).await?.map(UserRecord::from))
    }
}

/// The user `id`, and only while it is what `expected` says. Records from before
/// `credentials_version` was written count as version 0.
fn user_filter(id: &str, expected: &Expected) -> Document {
    let mut filter = doc! { "_id": id };
    match expected.credentials_version {
        Some(0) => filter.insert("credentials_version", doc! { "$in": [0_i64, null] }),
        Some(v) => filter.insert("credentials_version", v),
        None => None,
    };
    if let Some(email) = &expected.email {
        filter.insert("email", email.as_str());
    }
    filter
}

/// Runs a driver operation to its end in a task of its own, whatever happens to the caller.
/// A request that is given up (client gone, request timeout) drops its future; the driver's
/// futures must not be dropped half-way (the connection then is in an unknown state, and after
/// a burst of such drops the pool stalled the next operations for ~20 s).
async fn detached<T: Send + 'static>(
    op: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::spawn(op)
        .await
        .map_err(|e| StoreError::unavailable(STORE, format!("operation task failed: {e}")))?
}

async fn insert_doc<D>(
    coll: &Collection<D>,
    doc: D,
    on_error: fn(mongodb::error::Error) -> StoreError,
) -> Result<(), StoreError>
where
    D: Serialize + Send + Sync + 'static,
{
    let coll = coll.clone();
    detached(async move { coll.insert_one(doc).await.map(|_| ()).map_err(on_error) }).await
}

async fn find_doc<D>(coll: &Collection<D>, filter: Document) -> Result<Option<D>, StoreError>
where
    D: DeserializeOwned + Send + Sync + 'static,
{
    let coll = coll.clone();
    detached(async move { coll.find_one(filter).await.map_err(map_err) }).await
}

/// Documents matching `filter` ordered by `_id`, at most `limit`.
async fn find_by_id_order<D>(
    coll: &Collection<D>,
    filter: Document,
    limit: Option<i64>,
) -> Result<Vec<D>, StoreError>
where
    D: DeserializeOwned + Send + Sync + Unpin + 'static,
{
    let coll = coll.clone();
    detached(async move {
        let mut find = coll.find(filter).sort(doc! { "_id": 1 });
        if let Some(limit) = limit {
            find = find.limit(limit);
        }
        find.await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)
    })
    .await
}

#[async_trait]
impl UserStore for MongoStore {
    async fn insert(&self, user: &UserRecord) -> Result<(), StoreError> {
        insert_doc(&self.users, UserDoc::from(user), map_user_err).await
    }

    async fn by_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.find_user(doc! { "_id": id }).await
    }

    async fn by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        self.find_user(doc! { "email": email }).await
    }

    async fn by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        self.find_user(doc! { "username_lower": username.to_lowercase() })
            .await
    }

    async fn update_username(
        &self,
        id: &str,
        username: &str,
        now_ms: i64,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.update_user(
            id,
            doc! {
                "username": username,
                "username_lower": username.to_lowercase(),
                "updated_at": now_ms,
            },
            false,
        )
        .await
    }

    async fn update_password_hash(
        &self,
        id: &str,
        hash: &str,
        now_ms: i64,
        expected: &Expected,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.update_user_if(
            id,
            doc! { "password_hash": hash, "updated_at": now_ms },
            true,
            expected,
        )
        .await
    }

    async fn set_roles(
        &self,
        id: &str,
        roles: &[String],
        now_ms: i64,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.update_user(id, doc! { "roles": roles, "updated_at": now_ms }, true)
            .await
    }

    async fn confirm_email(
        &self,
        id: &str,
        email: &str,
        grant_admin: bool,
        now_ms: i64,
    ) -> Result<Option<UserRecord>, StoreError> {
        let users = self.users.clone();
        let filter = doc! { "_id": id, "email": email, "email_verified": { "$ne": true } };
        let mut update = doc! { "$set": { "email_verified": true, "updated_at": now_ms } };
        if grant_admin {
            update.insert("$addToSet", doc! { "roles": "admin" });
        }
        detached(async move {
            users
                .find_one_and_update(filter, update)
                .return_document(ReturnDocument::After)
                .await
                .map(|d| d.map(UserRecord::from))
                .map_err(map_user_err)
        })
        .await
    }

    async fn change_email(
        &self,
        id: &str,
        email: &str,
        grant_admin: bool,
        now_ms: i64,
        expected: &Expected,
    ) -> Result<Option<UserRecord>, StoreError> {
        let users = self.users.clone();
        let filter = user_filter(id, expected);
        // The unique index on `email` refuses an address another user holds (E11000).
        let mut update = doc! {
            "$set": { "email": email, "email_verified": true, "updated_at": now_ms }
        };
        if grant_admin {
            update.insert("$addToSet", doc! { "roles": "admin" });
        }
        detached(async move {
            users
                .find_one_and_update(filter, update)
                .return_document(ReturnDocument::After)
                .await
                .map(|d| d.map(UserRecord::from))
                .map_err(map_user_err)
        })
        .await
    }

    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let users = self.users.clone();
        let filter = doc! { "_id": id };
        detached(async move {
            users
                .delete_one(filter)
                .await
                .map(|r| r.deleted_count > 0)
                .map_err(map_user_err)
        })
        .await
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<UserRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = match after {
            Some(a) => doc! { "_id": { "$gt": a } },
            None => doc! {},
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let docs = find_by_id_order(&self.users, filter, Some(limit)).await?;
        Ok(docs.into_iter().map(UserRecord::from).collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_db().await
    }
}

#[async_trait]
impl ClientStore for MongoStore {
    async fn get(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let doc = find_doc(&self.clients, doc! { "_id": client_id }).await?;
        Ok(doc.map(ClientRecord::from))
    }

    async fn insert(&self, client: &ClientRecord) -> Result<(), StoreError> {
        insert_doc(&self.clients, ClientDoc::from(client), map_client_err).await
    }

    /// Ordered by `client_id`.
    async fn list(&self) -> Result<Vec<ClientRecord>, StoreError> {
        let docs = find_by_id_order(&self.clients, doc! {}, None).await?;
        Ok(docs.into_iter().map(ClientRecord::from).collect())
    }

    async fn delete(&self, client_id: &str) -> Result<bool, StoreError> {
        let (clients, filter) = (self.clients.clone(), doc! { "_id": client_id });
        detached(async move {
            clients
                .delete_one(filter)
                .await
                .map(|r| r.deleted_count > 0)
                .map_err(map_err)
        })
        .await
    }

    /// One `replaceOne` by `_id` without upsert: a client deleted meanwhile stays deleted.
    async fn replace(&self, client: &ClientRecord) -> Result<bool, StoreError> {
        let clients = self.clients.clone();
        let filter = doc! { "_id": client.client_id.as_str() };
        let doc = ClientDoc::from(client);
        detached(async move {
            clients
                .replace_one(filter, doc)
                .await
                .map(|r| r.matched_count > 0)
                .map_err(map_err)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_db().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_key_messages_name_the_field_by_index() {
        let m = r#"E11000 duplicate key error collection: t.users index: email_unique dup key: { email: "username_lower@x.io" }"#;
        assert_eq!(duplicate_user_field(m), "email");
        let m = r#"Plan executor error during findAndModify :: caused by :: E11000 duplicate key error collection: t.users index: username_lower_unique dup key: { username_lower: "email" }"#;
        assert_eq!(duplicate_user_field(m), "username");
        let m =
            r#"E11000 duplicate key error collection: t.users index: _id_ dup key: { _id: "a" }"#;
        assert_eq!(duplicate_user_field(m), "id");
    }
}
