//! The mail outbox (docs/mail.md): messages waiting for delivery, each with its lease and retry
//! schedule, and the single-use tokens the messages carry, kept hashed. MongoDB in production
//! mode, memory in embedded mode.
//!
//! A message and the token it carries are one record, written in one step: a token exists if
//! and only if the mail that carries it was queued. Once the mail is delivered its text (the
//! only place the token is in clear) is dropped and the record keeps the token's hash until the
//! token is spent or expires.

use async_trait::async_trait;

use super::StoreError;

/// A message as queued: the whole RFC 5322 text, built once, so that every attempt sends the
/// same bytes with the same `Message-ID` (the idempotency key).
#[derive(Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    /// The `Message-ID`'s left part (a UUIDv7: ordered by time): the record's id.
    pub id: String,
    /// The envelope's sender and recipient (RFC 5321 `MAIL FROM`, `RCPT TO`).
    pub from: String,
    /// The recipient.
    pub to: String,
    /// The message (headers and body), ASCII.
    pub raw: String,
    /// Unix milliseconds.
    pub created_at_ms: i64,
}

impl std::fmt::Debug for OutgoingMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The text carries a link with a token: never in a log.
        f.debug_struct("OutgoingMail")
            .field("id", &self.id)
            .field("raw", &"<redacted>")
            .finish()
    }
}

/// What a mail's link proves once its token comes back, stored under the token's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailToken {
    /// Lower-case hex SHA-256 of the token.
    pub hash: String,
    /// What the token is for (`verify_email`).
    pub purpose: String,
    /// The user the token acts for.
    pub user_id: String,
    /// The address the mail went to.
    pub email: String,
    /// Unix milliseconds.
    pub expires_at_ms: i64,
    /// The user's `credentials_version` when the link was mailed, for a link that is over once
    /// the credentials change (an email change); `None` for the others, and for links mailed
    /// before links carried it.
    pub credentials_version: Option<i64>,
}

/// A message claimed for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedMail {
    /// The message.
    pub mail: OutgoingMail,
    /// Delivery attempts started, this one included.
    pub attempts: u32,
}

/// The outbox and the tokens of its messages.
#[async_trait]
pub trait MailStore: Send + Sync {
    /// Queues a message, with the token it carries, in one write; due at once.
    async fn enqueue(
        &self,
        mail: &OutgoingMail,
        token: Option<&MailToken>,
    ) -> Result<(), StoreError>;
    /// Claims the oldest due message whose lease is free: leased to `holder` until
    /// `now_ms + lease_ms`, its attempts counted. Of concurrent callers, one gets each message.
    async fn claim(
        &self,
        holder: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimedMail>, StoreError>;
    /// The server accepted the message: it leaves the outbox (its token stays, hashed, until
    /// spent or expired). Only the lease holder's word counts.
    async fn delivered(&self, id: &str, holder: &str) -> Result<(), StoreError>;
    /// The attempt failed: the lease is given back and the message is due again at
    /// `next_attempt_at_ms`.
    async fn retry_at(
        &self,
        id: &str,
        holder: &str,
        next_attempt_at_ms: i64,
    ) -> Result<(), StoreError>;
    /// How many messages wait for delivery.
    async fn depth(&self) -> Result<u64, StoreError>;
    /// The live token with this hash and purpose, without spending it.
    async fn token(
        &self,
        hash: &str,
        purpose: &str,
        now_ms: i64,
    ) -> Result<Option<MailToken>, StoreError>;
    /// Spends a token in one atomic step: of concurrent callers, exactly one gets it.
    async fn take_token(
        &self,
        hash: &str,
        purpose: &str,
        now_ms: i64,
    ) -> Result<Option<MailToken>, StoreError>;
    /// Forgets every token of the user for `purpose` (and any message still carrying one);
    /// answers how many.
    async fn forget_tokens(&self, user_id: &str, purpose: &str) -> Result<u64, StoreError>;
    /// Forgets every token of the user whatever its purpose, and any message still carrying
    /// one (a deleted account, docs/events.md); answers how many.
    async fn forget_user_tokens(&self, user_id: &str) -> Result<u64, StoreError>;
    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}
