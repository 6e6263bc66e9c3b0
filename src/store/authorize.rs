//! What the authorization code flow and the browser session remember (docs/authorize.md):
//! pending authorization requests, pushed authorization requests (RFC 9126), codes, browser
//! sessions (Redis in production, memory in embedded mode) and consents (MongoDB in
//! production, memory in embedded mode). Values are opaque to the stores: the domain
//! serialises them; ids are hashes the domain computes, so a store dump never holds a usable
//! code, cookie or request URI.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// What redeeming a code found (RFC 6749 §4.1.2: a code is used once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redemption {
    /// No such code: never issued, or expired.
    Unknown,
    /// The first redemption: the grant the code was issued with. The code is now marked used.
    First(String),
    /// The code had been redeemed before: the grant it was issued with. The code is now marked
    /// replayed, which the first redemption reads after it issued its tokens.
    Replayed(String),
}

/// Short-lived state of browser sign-in, with TTLs.
#[async_trait]
pub trait AuthorizeStore: Send + Sync {
    /// Keeps an authorization request under `id` for `ttl_ms`, replacing any earlier value.
    async fn put_request(&self, id: &str, request: &str, ttl_ms: i64) -> Result<(), StoreError>;
    /// The request kept under `id`, if it has not expired.
    async fn request(&self, id: &str) -> Result<Option<String>, StoreError>;
    /// Reads and forgets the request under `id` in one step: of concurrent callers, exactly one
    /// gets it.
    async fn take_request(&self, id: &str) -> Result<Option<String>, StoreError>;

    /// Keeps a pushed authorization request (RFC 9126 §2) under `id` for `ttl_ms`, apart from
    /// the pending requests: a pushed request is never found by [`Self::request`] nor a pending
    /// one by [`Self::take_pushed_request`].
    async fn put_pushed_request(
        &self,
        id: &str,
        request: &str,
        ttl_ms: i64,
    ) -> Result<(), StoreError>;
    /// Reads and forgets the pushed request under `id` in one step, if it has not expired: of
    /// concurrent callers, exactly one gets it (a request URI is used once, RFC 9126 §4).
    async fn take_pushed_request(&self, id: &str) -> Result<Option<String>, StoreError>;

    /// Keeps a code's grant under the code's hash for `ttl_ms`.
    async fn put_code(&self, code_hash: &str, grant: &str, ttl_ms: i64) -> Result<(), StoreError>;
    /// Redeems a code in one atomic step. The first call answers [`Redemption::First`] and
    /// marks the code used, remembered `used_ttl_ms` from now (so a replay is recognised after
    /// the code's own lifetime); every later call answers [`Redemption::Replayed`] and marks it
    /// replayed. Of concurrent callers exactly one gets `First`.
    async fn redeem_code(
        &self,
        code_hash: &str,
        used_ttl_ms: i64,
    ) -> Result<Redemption, StoreError>;
    /// Whether a replay of the code has been seen.
    async fn code_replayed(&self, code_hash: &str) -> Result<bool, StoreError>;

    /// Keeps a browser session under `id` for `ttl_ms`, replacing any earlier value (the
    /// families recorded for it are kept).
    async fn put_browser_session(
        &self,
        id: &str,
        session: &str,
        ttl_ms: i64,
    ) -> Result<(), StoreError>;
    /// The browser session under `id`, if it has not expired or ended.
    async fn browser_session(&self, id: &str) -> Result<Option<String>, StoreError>;
    /// Records a refresh family (`sid`) started through the browser session, kept as long as
    /// `ttl_ms` (the session's remaining lifetime).
    async fn add_session_family(&self, id: &str, sid: &str, ttl_ms: i64) -> Result<(), StoreError>;
    /// Forgets the browser session and answers the families recorded for it (in any order).
    async fn end_browser_session(&self, id: &str) -> Result<Vec<String>, StoreError>;
    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// A user's grant of scopes to a client (docs/authorize.md, "Consent").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    /// The user who consented.
    pub user_id: String,
    /// The client consented to.
    pub client_id: String,
    /// Sorted, without duplicates.
    pub scopes: Vec<String>,
    /// Unix milliseconds of the first grant.
    pub granted_at: i64,
    /// Unix milliseconds of the last grant (whether or not it added scopes).
    pub updated_at: i64,
}

/// Consents, unique by (user, client).
#[async_trait]
pub trait ConsentStore: Send + Sync {
    /// Remembers that the user granted `scopes` to the client, added to what was granted
    /// before (never removing a scope).
    async fn grant(
        &self,
        user_id: &str,
        client_id: &str,
        scopes: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// The user's consent to the client, if any.
    async fn get(
        &self,
        user_id: &str,
        client_id: &str,
    ) -> Result<Option<ConsentRecord>, StoreError>;
    /// The user's consents, ordered by client id.
    async fn list(&self, user_id: &str) -> Result<Vec<ConsentRecord>, StoreError>;
    /// Withdraws the user's consent to the client; true if there was one.
    async fn withdraw(&self, user_id: &str, client_id: &str) -> Result<bool, StoreError>;
    /// Forgets every consent of the user; answers how many there were.
    async fn forget_user(&self, user_id: &str) -> Result<u64, StoreError>;
    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}
