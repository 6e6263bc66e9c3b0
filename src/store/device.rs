//! What the device authorization grant remembers (RFC 8628, docs/device.md): each device
//! authorization under the SHA-256 of its device code, and its user code (hashed too) as a
//! unique index while it lives. Redis in production mode, memory in embedded mode; the data
//! lives minutes, so nothing of it is in MongoDB. The store never sees a device code: a dump
//! holds nothing that can be redeemed.

use async_trait::async_trait;

use super::StoreError;

/// A new device authorization (RFC 8628 §3.2), as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// The client that asked.
    pub client_id: String,
    /// The scope that will be granted, space separated.
    pub scope: String,
    /// Unix milliseconds at which the device and user codes expire (`expires_in`).
    pub expires_at_ms: i64,
    /// The polling interval the device was given, seconds (`interval`).
    pub interval_secs: i64,
    /// How long the record and its user code are kept from now: beyond `expires_at_ms`, so
    /// that a late poll is answered `expired_token` and a late visit to the page "expired",
    /// rather than as an unknown code. The user code stays taken as long.
    pub keep_ms: i64,
}

/// Where a device authorization stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Waiting for the user.
    Pending,
    /// Approved; the tokens wait for the next poll.
    Approved,
    /// Denied by the user.
    Denied,
    /// Approved and its tokens issued (RFC 8628 §3.5: once).
    Redeemed,
}

impl DeviceStatus {
    /// The name stores write.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Approved => "approved",
            DeviceStatus::Denied => "denied",
            DeviceStatus::Redeemed => "redeemed",
        }
    }

    /// The status a store wrote, `None` for anything else.
    pub fn parse(s: &str) -> Option<DeviceStatus> {
        match s {
            "pending" => Some(DeviceStatus::Pending),
            "approved" => Some(DeviceStatus::Approved),
            "denied" => Some(DeviceStatus::Denied),
            "redeemed" => Some(DeviceStatus::Redeemed),
            _ => None,
        }
    }
}

/// A device authorization found by its user code (for the `/device` page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    /// The hash of its device code: what [`DeviceStore::decide`] takes.
    pub device_hash: String,
    /// The client that asked.
    pub client_id: String,
    /// The scope that will be granted, space separated.
    pub scope: String,
    /// Unix milliseconds.
    pub expires_at_ms: i64,
    /// Pending, approved or denied.
    pub status: DeviceStatus,
}

/// The user's answer on the `/device` page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceDecision {
    /// Approved, with the grant the tokens will be issued from (opaque to the store).
    Approve(String),
    /// Denied.
    Deny,
}

/// What deciding found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecideOutcome {
    /// The decision is recorded: the authorization was pending.
    Decided,
    /// No such authorization (never issued, or forgotten).
    Unknown,
    /// It expired before the decision.
    Expired,
    /// It had been decided already (of concurrent decisions exactly one is recorded).
    AlreadyDecided(DeviceStatus),
}

/// What one poll of the token endpoint found (RFC 8628 §3.5). A poll is one atomic step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePoll {
    /// No such device code: never issued, or forgotten after it expired.
    Unknown,
    /// The device code was issued to another client; nothing was recorded.
    OtherClient,
    /// The device code has expired.
    Expired,
    /// Still waiting for the user; the poll time is recorded.
    Pending {
        /// The device's interval now, seconds.
        interval_secs: i64,
    },
    /// Still waiting, and this poll came sooner than the interval after the previous one: the
    /// interval is now 5 s longer, for this and every later poll (RFC 8628 §3.5).
    SlowDown {
        /// The device's interval now, seconds.
        interval_secs: i64,
    },
    /// The user denied the request.
    Denied,
    /// The first poll since the approval: the grant to issue tokens from. The authorization is
    /// now redeemed; of concurrent polls exactly one gets this.
    Approved(String),
    /// The tokens were issued before.
    Redeemed,
}

/// Device authorizations, with TTLs. Every operation names one record; a poll reads the
/// state and records its time in one atomic step (one Lua script in Redis, one lock in
/// memory), so it costs one round trip.
#[async_trait]
pub trait DeviceStore: Send + Sync {
    /// Keeps a new pending authorization under `device_hash`, with `user_code_hash` as its
    /// index, both for `keep_ms`. `Ok(false)`, and nothing written, when that user code is
    /// taken by another authorization that is still kept (the caller draws another).
    async fn start(
        &self,
        device_hash: &str,
        user_code_hash: &str,
        device: &NewDevice,
    ) -> Result<bool, StoreError>;
    /// The authorization the user code names, whatever its status, while it is kept.
    async fn by_user_code(&self, user_code_hash: &str) -> Result<Option<DeviceView>, StoreError>;
    /// Records the user's decision if the authorization is pending and has not expired at
    /// `now_ms`.
    async fn decide(
        &self,
        device_hash: &str,
        decision: &DeviceDecision,
        now_ms: i64,
    ) -> Result<DecideOutcome, StoreError>;
    /// One poll by `client_id` at `now_ms`, in one atomic step: see [`DevicePoll`]. A poll of
    /// a pending authorization counts as too fast when it comes less than the interval after
    /// the previous poll; the first poll never does.
    async fn poll(
        &self,
        device_hash: &str,
        client_id: &str,
        now_ms: i64,
    ) -> Result<DevicePoll, StoreError>;
    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// How much a `slow_down` adds to a device's interval (RFC 8628 §3.5).
pub const SLOW_DOWN_STEP_SECS: i64 = 5;
