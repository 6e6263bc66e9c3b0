//! The `Events` service (docs/events.md): account events, recorded where they happen, kept
//! for `TOKEND_EVENTS_RETENTION`, read by admins at `GET /admin/events` and written as one
//! JSON line each to the log target `tokend::audit`.
//!
//! Recording never fails nor slows the request that causes it: the audit line is written in
//! the call, the store write runs in a task of its own (a store error is logged and counted in
//! `tokend_events_dropped_total`). A query waits (boundedly) for the writes already started,
//! so an admin reads what happened before their request.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, Notify};

use super::accounts::{Principal, ROLE_ADMIN};
use super::{ids, Error};
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::store::{EventQuery, EventRecord, EventStore};

/// The log target of the audit lines.
pub(crate) const AUDIT_TARGET: &str = "tokend::audit";
/// Events waiting for the writer beyond which new events are not stored (only logged) and
/// counted as dropped: a store that hangs cannot make tokend hold events without bound.
const MAX_PENDING: usize = 10_000;
/// How long a query waits for writes in flight.
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// The most events one store write carries.
const WRITE_BATCH: usize = 64;
/// Page sizes of `GET /admin/events`.
pub(crate) const DEFAULT_PAGE: usize = 100;
pub(crate) const MAX_PAGE: usize = 1_000;
/// Length of an event id: 12 hex digits of Unix ms, 6 of a sequence, 8 random.
const ID_LEN: usize = 26;

/// The types of account events (docs/events.md, "Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    LoginSucceeded,
    LoginFailed,
    Logout,
    RefreshReuseDetected,
    PasswordChanged,
    /// Recorded by the password reset flow (docs/events.md).
    PasswordReset,
    EmailVerified,
    /// Recorded by the email change flow (docs/events.md).
    EmailChanged,
    RolesChanged,
    AccountDeleted,
    ConsentGranted,
    ConsentWithdrawn,
    ClientCreated,
    ClientDeleted,
    KeyRotated,
    KeyRevoked,
}

impl EventType {
    /// Every type, in the order of docs/events.md.
    pub(crate) const ALL: [EventType; 16] = [
        EventType::LoginSucceeded,
        EventType::LoginFailed,
        EventType::Logout,
        EventType::RefreshReuseDetected,
        EventType::PasswordChanged,
        EventType::PasswordReset,
        EventType::EmailVerified,
        EventType::EmailChanged,
        EventType::RolesChanged,
        EventType::AccountDeleted,
        EventType::ConsentGranted,
        EventType::ConsentWithdrawn,
        EventType::ClientCreated,
        EventType::ClientDeleted,
        EventType::KeyRotated,
        EventType::KeyRevoked,
    ];

    /// The name in events, queries and metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::LoginSucceeded => "login.succeeded",
            EventType::LoginFailed => "login.failed",
            EventType::Logout => "logout",
            EventType::RefreshReuseDetected => "refresh.reuse_detected",
            EventType::PasswordChanged => "password.changed",
            EventType::PasswordReset => "password.reset",
            EventType::EmailVerified => "email.verified",
            EventType::EmailChanged => "email.changed",
            EventType::RolesChanged => "roles.changed",
            EventType::AccountDeleted => "account.deleted",
            EventType::ConsentGranted => "consent.granted",
            EventType::ConsentWithdrawn => "consent.withdrawn",
            EventType::ClientCreated => "client.created",
            EventType::ClientDeleted => "client.deleted",
            EventType::KeyRotated => "key.rotated",
            EventType::KeyRevoked => "key.revoked",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// An event about to be recorded. Users are named by id only; `detail` holds small facts
/// (a reason, a scope, a role list, a `kid`), never an email, username, password or token.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    kind: EventType,
    user_id: Option<String>,
    client_id: Option<String>,
    ip: Option<String>,
    detail: Map<String, Value>,
}

impl NewEvent {
    pub(crate) fn new(kind: EventType) -> NewEvent {
        NewEvent {
            kind,
            user_id: None,
            client_id: None,
            ip: None,
            detail: Map::new(),
        }
    }

    pub(crate) fn user(mut self, id: &str) -> NewEvent {
        self.user_id = Some(id.to_string());
        self
    }

    pub(crate) fn client(mut self, id: &str) -> NewEvent {
        self.client_id = Some(id.to_string());
        self
    }

    pub(crate) fn ip(mut self, ip: Option<&str>) -> NewEvent {
        self.ip = ip.map(str::to_string);
        self
    }

    pub(crate) fn detail(mut self, key: &str, value: impl Into<Value>) -> NewEvent {
        self.detail.insert(key.to_string(), value.into());
        self
    }
}

/// Where a request came from, as an event or a new session records it: the client address
/// (docs/hardening.md, "Connections and client addresses") and the `User-Agent`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub(crate) ip: Option<IpAddr>,
    pub(crate) user_agent: Option<String>,
}

impl Origin {
    pub(crate) fn new(ip: Option<IpAddr>, user_agent: Option<&str>) -> Origin {
        Origin {
            ip,
            user_agent: user_agent.and_then(kept_user_agent),
        }
    }

    /// The address as text, for an event or a family.
    pub(crate) fn ip_text(&self) -> Option<String> {
        self.ip.map(|ip| ip.to_string())
    }
}

/// The most of a `User-Agent` a request carries further: enough for any agent a family can
/// tell (store::agent), bounded whatever the header's size.
const MAX_USER_AGENT: usize = 512;

/// A `User-Agent` without control characters, cut to [`MAX_USER_AGENT`] bytes at a character
/// boundary; `None` when nothing is left.
fn kept_user_agent(ua: &str) -> Option<String> {
    let mut out = String::new();
    for c in ua.trim().chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_USER_AGENT {
            break;
        }
        out.push(c);
    }
    (!out.is_empty()).then_some(out)
}

/// An event as admins and the audit log see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct EventView {
    pub(crate) id: String,
    /// RFC 3339, UTC, milliseconds.
    pub(crate) time: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ip: Option<String>,
    pub(crate) detail: Value,
}

impl From<&EventRecord> for EventView {
    fn from(e: &EventRecord) -> Self {
        let t =
            std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(e.time_ms).unwrap_or(0));
        EventView {
            id: e.id.clone(),
            time: humantime::format_rfc3339_millis(t).to_string(),
            kind: e.kind.clone(),
            user_id: e.user_id.clone(),
            client_id: e.client_id.clone(),
            ip: e.ip.clone(),
            detail: e.detail.clone(),
        }
    }
}

/// One page of `GET /admin/events`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EventPage {
    pub(crate) events: Vec<EventView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next: Option<String>,
}

/// The parameters of `GET /admin/events`, as given.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventFilter {
    pub(crate) kind: Option<String>,
    pub(crate) user_id: Option<String>,
    pub(crate) after: Option<String>,
    pub(crate) limit: Option<usize>,
}

/// Whether `s` has the shape of an event id.
fn is_event_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `s` has the shape of a user id (as the `{id}` of the admin routes).
fn is_user_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl EventFilter {
    /// The store query of a valid filter, or what is wrong with it.
    fn query(&self, now_ms: i64) -> Result<EventQuery, Error> {
        let kind = match self.kind.as_deref().filter(|k| !k.is_empty()) {
            None => None,
            Some(k) => Some(
                EventType::parse(k)
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "type: unknown event type {k:?} (one of {})",
                            EventType::ALL.map(EventType::as_str).join(", ")
                        ))
                    })?
                    .as_str()
                    .to_string(),
            ),
        };
        let user_id = match self.user_id.as_deref().filter(|u| !u.is_empty()) {
            None => None,
            Some(u) if is_user_id(u) => Some(u.to_string()),
            Some(_) => return Err(Error::Invalid("user_id: 1-64 of [A-Za-z0-9_-]".to_string())),
        };
        let after = match self.after.as_deref().filter(|a| !a.is_empty()) {
            None => None,
            Some(a) if is_event_id(a) => Some(a.to_string()),
            Some(_) => {
                return Err(Error::Invalid(format!(
                    "after: an event id ({ID_LEN} lower-case hex digits)"
                )))
            }
        };
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Error::Invalid(format!("limit: 1 to {MAX_PAGE}")));
        }
        Ok(EventQuery {
            kind,
            user_id,
            after,
            // One more tells whether there is a next page.
            limit: limit + 1,
            now_ms,
        })
    }
}

struct Inner {
    store: Arc<dyn EventStore>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    retention_ms: i64,
    seq: AtomicU64,
    /// Events recorded and not yet written (queued or being written).
    pending: AtomicUsize,
    /// Told when `pending` falls to zero.
    idle: Notify,
    /// The queue of the one task that writes events to the store, in order, one at a time:
    /// recording never waits for the store, and event writes never take more than one of the
    /// store's connections however many requests record at once. Started by the first event.
    writer: OnceLock<mpsc::Sender<EventRecord>>,
}

/// The `Events` service: cheap to clone, shared by every service that records events.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("retention_ms", &self.inner.retention_ms)
            .finish()
    }
}

impl Events {
    /// Events kept in `store` for `retention` (`TOKEND_EVENTS_RETENTION`).
    pub(crate) fn new(
        store: Arc<dyn EventStore>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        retention: Duration,
    ) -> Events {
        Events {
            inner: Arc::new(Inner {
                store,
                clock,
                metrics,
                retention_ms: i64::try_from(retention.as_millis()).unwrap_or(i64::MAX),
                seq: AtomicU64::new(0),
                pending: AtomicUsize::new(0),
                idle: Notify::new(),
                writer: OnceLock::new(),
            }),
        }
    }

    /// A new event id: sorts by time, then by the order this process recorded events in.
    fn next_id(&self, now_ms: i64) -> String {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed) & 0xff_ffff;
        let random = ids::random_bytes::<4>().unwrap_or_default();
        format!(
            "{:012x}{seq:06x}{}",
            u64::try_from(now_ms).unwrap_or(0) & 0xffff_ffff_ffff,
            hex::encode(random)
        )
    }

    /// Records an event: the audit line now, the store write in a task of its own. Never
    /// fails the caller.
    pub(crate) fn record(&self, event: NewEvent) {
        let now_ms = self.inner.clock.now_ms();
        let record = EventRecord {
            id: self.next_id(now_ms),
            time_ms: now_ms,
            kind: event.kind.as_str().to_string(),
            user_id: event.user_id,
            client_id: event.client_id,
            ip: event.ip,
            detail: Value::Object(event.detail),
            expires_at_ms: now_ms.saturating_add(self.inner.retention_ms),
        };
        match serde_json::to_string(&EventView::from(&record)) {
            Ok(line) => tracing::info!(target: AUDIT_TARGET, "{line}"),
            Err(e) => tracing::warn!(error = %e, "an account event could not be written as JSON"),
        }
        self.inner
            .metrics
            .events
            .with_label_values(&[event.kind.as_str()])
            .inc();
        if self.inner.pending.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING {
            self.finished();
            self.dropped(&record, "too many event writes in flight");
            return;
        }
        let Some(writer) = self.writer() else {
            self.finished();
            self.dropped(&record, "no runtime to store it");
            return;
        };
        if let Err(e) = writer.try_send(record) {
            let (mpsc::error::TrySendError::Full(record)
            | mpsc::error::TrySendError::Closed(record)) = e;
            self.finished();
            self.dropped(&record, "the event writer is gone");
        }
    }

    /// The writer's queue, starting the writer on the runtime of the first caller; `None`
    /// outside a runtime.
    fn writer(&self) -> Option<&mpsc::Sender<EventRecord>> {
        if let Some(tx) = self.inner.writer.get() {
            return Some(tx);
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(self.inner.writer.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<EventRecord>(MAX_PENDING);
            let events = self.clone();
            runtime.spawn(async move {
                // What queued while the last write was out goes in one write: under a login
                // flood that is one insert per batch instead of one per login.
                let mut batch = Vec::with_capacity(WRITE_BATCH);
                while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
                    if let Err(e) = events.inner.store.append_many(&batch).await {
                        for record in &batch {
                            events.dropped(record, &e.to_string());
                        }
                    }
                    for _ in batch.drain(..) {
                        events.finished();
                    }
                }
            });
            tx
        }))
    }

    fn finished(&self) {
        if self.inner.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.idle.notify_waiters();
        }
    }

    fn dropped(&self, record: &EventRecord, why: &str) {
        self.inner.metrics.events_dropped.inc();
        tracing::warn!(event_id = %record.id, kind = %record.kind, error = why,
            "account event not stored (it is in the audit log)");
    }

    /// Waits until the store writes started before this call have finished, at most
    /// [`FLUSH_WAIT`] (a store that hangs does not hold the caller longer).
    pub(crate) async fn flush(&self) {
        let deadline = tokio::time::Instant::now() + FLUSH_WAIT;
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// What the key manager tells of each change it writes: `key.rotated` for a new key,
    /// `key.revoked` for a revocation.
    pub(crate) fn key_observer(&self) -> crate::keys::KeyObserver {
        let events = self.clone();
        Arc::new(move |change| {
            let event = match change {
                crate::keys::KeyChange::Created {
                    kid,
                    alg,
                    activates,
                } => NewEvent::new(EventType::KeyRotated)
                    .detail("kid", kid)
                    .detail("alg", alg.as_str())
                    .detail("activates", activates),
                crate::keys::KeyChange::Revoked { kid } => {
                    NewEvent::new(EventType::KeyRevoked).detail("kid", kid)
                }
            };
            events.record(event);
        })
    }

    /// `GET /admin/events`: one page of events in id (time) order, filtered.
    pub(crate) async fn query(
        &self,
        p: &Principal,
        filter: &EventFilter,
    ) -> Result<EventPage, Error> {
        p.require_role(ROLE_ADMIN)?;
        self.list(filter).await
    }

    /// One page of events (no role check: the operator's command line).
    pub(crate) async fn list(&self, filter: &EventFilter) -> Result<EventPage, Error> {
        let q = filter.query(self.inner.clock.now_ms())?;
        self.flush().await;
        let mut found = self.inner.store.query(&q).await?;
        let limit = q.limit - 1;
        let next = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok(EventPage {
            events: found.iter().map(EventView::from).collect(),
            next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_one_name_and_parses_back() {
        let names: std::collections::HashSet<&str> =
            EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names.len(), EventType::ALL.len());
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("login"), None);
    }

    #[test]
    fn a_filter_is_checked_before_any_store_is_asked() {
        let ok = EventFilter {
            kind: Some("login.failed".into()),
            user_id: Some("0190-abc_D".into()),
            after: Some("0190a1b2c3d4000001deadbeef".into()),
            limit: Some(5),
        };
        let q = ok.query(7).unwrap();
        assert_eq!(q.limit, 6);
        assert_eq!(q.kind.as_deref(), Some("login.failed"));
        for bad in [
            EventFilter {
                kind: Some("login".into()),
                ..EventFilter::default()
            },
            EventFilter {
                user_id: Some("a/b".into()),
                ..EventFilter::default()
            },
            EventFilter {
                after: Some("xyz".into()),
                ..EventFilter::default()
            },
            EventFilter {
                limit: Some(0),
                ..EventFilter::default()
            },
            EventFilter {
                limit: Some(MAX_PAGE + 1),
                ..EventFilter::default()
            },
        ] {
            assert!(matches!(bad.query(0), Err(Error::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_user_agent_is_kept_short_and_clean() {
        let long = "é".repeat(1000);
        let kept = Origin::new(None, Some(&long)).user_agent.unwrap();
        assert!(kept.len() <= super::MAX_USER_AGENT);
        assert!(kept.chars().all(|c| c == 'é'));
        assert_eq!(Origin::new(None, Some(" \n ")).user_agent, None);
        assert_eq!(
            Origin::new(None, Some("curl/8\u{7}")).user_agent.as_deref(),
            Some("curl/8")
        );
    }
}
