//! The Prometheus registry and typed metric handles (docs/hardening.md). One registry per application
//! (no globals), labelled by route template, status, grant, algorithm — never by raw path, user
//! or client id.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::keys::{KeyState, Keys};

/// Identifies a [`Metrics`] in the per-thread handle cache (never reused).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// (metrics id, request key) -> the request counter and histogram of those labels, so that a
    /// request costs no label lookup once its kind has been seen on this thread.
    static REQUEST_HANDLES: RefCell<HashMap<(u64, u32), (IntCounter, Histogram)>> =
        RefCell::new(HashMap::new());
}

/// Every metric tokend exports.
pub(crate) struct Metrics {
    id: u64,
    registry: Registry,
    /// `tokend_http_requests_total{route,method,status}`
    pub(crate) http_requests: IntCounterVec,
    /// `tokend_http_request_duration_seconds{route,status}`
    pub(crate) http_duration: HistogramVec,
    /// `tokend_tokens_issued_total{grant,type,alg}`
    pub(crate) tokens_issued: IntCounterVec,
    /// `tokend_token_validation_failures_total{reason}`
    pub(crate) validation_failures: IntCounterVec,
    /// `tokend_refresh_reuse_detected_total`
    pub(crate) refresh_reuse: IntCounter,
    /// `tokend_revocations_total{kind}` (kind: token, family, user)
    pub(crate) revocations: IntCounterVec,
    /// `tokend_logins_total{result}` (success, invalid_credentials, rate_limited, backoff)
    pub(crate) logins: IntCounterVec,
    /// `tokend_rate_limited_total{limit}` (ip, account, client, registration, user_code,
    /// user_code_global)
    pub(crate) rate_limited: IntCounterVec,
    /// `tokend_login_backoff_total`: logins refused because the account is backing off.
    pub(crate) login_backoff: IntCounter,
    /// `tokend_signing_keys{alg,state}`
    pub(crate) keys: IntGaugeVec,
    /// `tokend_signing_key_age_seconds{alg}`: age of the active key.
    pub(crate) key_age: IntGaugeVec,
    /// `tokend_key_rotations_total{alg}`: keys this instance created.
    pub(crate) rotations: IntCounterVec,
    /// `tokend_store_operation_duration_seconds{store,op}`
    pub(crate) store_duration: HistogramVec,
    /// `tokend_store_errors_total{store,op}`
    pub(crate) store_errors: IntCounterVec,
    /// Authorization requests by event (started, completed, denied, refused) and client type.
    pub(crate) authorizations: IntCounterVec,
    /// Authorization codes by event (issued, redeemed, replayed).
    pub(crate) codes: IntCounterVec,
    /// Sign-in page submissions by result.
    pub(crate) sign_ins: IntCounterVec,
    /// `tokend_client_registrations_total{event}`: dynamic registration and management
    /// (registered, read, updated, deleted, refused, unauthorized).
    pub(crate) registrations: IntCounterVec,
    /// Device authorizations by event (started, approved, denied, redeemed).
    pub(crate) device_authorizations: IntCounterVec,
    /// Polls of the device grant by answer.
    pub(crate) device_polls: IntCounterVec,
    /// User codes looked up on the device page, by result (valid, unknown, expired, used).
    pub(crate) user_codes: IntCounterVec,
    /// `tokend_mail_outbox_depth`: messages waiting in the outbox (docs/mail.md).
    pub(crate) mail_outbox_depth: IntGauge,
    /// `tokend_mail_send_failures_total`: delivery attempts that failed (each is retried).
    pub(crate) mail_send_failures: IntCounter,
    /// `tokend_mail_sent_total`: messages the mail server (or the directory) accepted.
    pub(crate) mail_sent: IntCounter,
    /// `tokend_password_resets_total{result}`: reset requests and redemptions (requested,
    /// unknown, throttled, unsendable, completed, invalid_link).
    pub(crate) password_resets: IntCounterVec,
    /// `tokend_email_changes_total{result}`: email changes (requested, confirmed, taken).
    pub(crate) email_changes: IntCounterVec,
    /// `tokend_events_total{type}`: account events recorded (docs/events.md).
    pub(crate) events: IntCounterVec,
    /// `tokend_events_dropped_total`: account events the store did not take (they are still
    /// in the audit log).
    pub(crate) events_dropped: IntCounter,
    /// `tokend_dpop_proofs_total{result,reason}`: DPoP proofs accepted (`reason` `none`) or
    /// refused, by the reason of the refusal (docs/dpop.md).
    pub(crate) dpop_proofs: IntCounterVec,
    /// `tokend_client_assertions_total{result,reason}`: `private_key_jwt` client assertions
    /// accepted (`reason` `none`) or refused, by the reason of the refusal
    /// (docs/private_key_jwt.md).
    pub(crate) client_assertions: IntCounterVec,
    /// `tokend_token_exchanges_total{result}`: token exchanges (RFC 8693) issued, or refused
    /// by reason (docs/token_exchange.md).
    pub(crate) token_exchanges: IntCounterVec,
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    h
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    /// Builds and registers every metric. Names are static and valid, so registration cannot
    /// fail at run time; a clash would be a programming error caught by the unit test.
    #[allow(clippy::panic)]
    pub(crate) fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = registry.register(Box::new(pc));
        }
        let r = &registry;
        let buckets = LATENCY_BUCKETS.to_vec();
        let m = Metrics {
            http_requests: counter(
                r,
                "tokend_http_requests_total",
                "HTTP requests by route template, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                r,
                "tokend_http_request_duration_seconds",
                "HTTP request latency by route template and status.",
                &["route", "status"],
                buckets.clone(),
            ),
            tokens_issued: counter(
                r,
                "tokend_tokens_issued_total",
                "Tokens issued by grant, token type and algorithm.",
                &["grant", "type", "alg"],
            ),
            validation_failures: counter(
                r,
                "tokend_token_validation_failures_total",
                "Bearer tokens refused, by reason.",
                &["reason"],
            ),
            refresh_reuse: {
                let c = IntCounter::new(
                    "tokend_refresh_reuse_detected_total",
                    "Refresh tokens presented again after their exchange (family revoked).",
                )
                .unwrap_or_else(|e| panic!("metric: {e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("metric: {e}"));
                c
            },
            revocations: counter(
                r,
                "tokend_revocations_total",
                "Revocations by kind (token, family, user).",
                &["kind"],
            ),
            logins: counter(
                r,
                "tokend_logins_total",
                "Password logins by result.",
                &["result"],
            ),
            rate_limited: counter(
                r,
                "tokend_rate_limited_total",
                "Requests refused with 429, by limit (ip, account, client, user_code, user_code_global).",
                &["limit"],
            ),
            login_backoff: {
                let c = IntCounter::new(
                    "tokend_login_backoff_total",
                    "Logins refused while the account backs off after failed attempts.",
                )
                .unwrap_or_else(|e| panic!("metric: {e}"));
                r.register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("metric: {e}"));
                c
            },
            keys: gauge(
                r,
                "tokend_signing_keys",
                "Signing keys by algorithm and state.",
                &["alg", "state"],
            ),
            key_age: gauge(
                r,
                "tokend_signing_key_age_seconds",
                "Seconds since the active key of each algorithm started signing.",
                &["alg"],
            ),
            rotations: counter(
                r,
                "tokend_key_rotations_total",
                "Signing keys created by this instance, by algorithm.",
                &["alg"],
            ),
            store_duration: histogram(
                r,
                "tokend_store_operation_duration_seconds",
                "Store operation latency by store and operation.",
                &["store", "op"],
                buckets,
            ),
            store_errors: counter(
                r,
                "tokend_store_errors_total",
                "Store operations that failed, by store and operation.",
                &["store", "op"],
            ),
            authorizations: counter(
                r,
                "tokend_authorizations_total",
                "Authorization requests by event (pushed, started, completed, denied, refused) and client type.",
                &["event", "client_type"],
            ),
            codes: counter(
                r,
                "tokend_authorization_codes_total",
                "Authorization codes by event (issued, redeemed, replayed).",
                &["event"],
            ),
            sign_ins: counter(
                r,
                "tokend_sign_ins_total",
                "Sign-in page submissions by result.",
                &["result"],
            ),
            registrations: counter(
                r,
                "tokend_client_registrations_total",
                "Dynamic client registration and management requests by event (registered, \
                 read, updated, deleted, refused, unauthorized).",
                &["event"],
            ),
            device_authorizations: counter(
                r,
                "tokend_device_authorizations_total",
                "Device authorizations by event (started, approved, denied, redeemed).",
                &["event"],
            ),
            device_polls: counter(
                r,
                "tokend_device_polls_total",
                "Polls of the device grant by answer (authorization_pending, slow_down, \
                 access_denied, expired_token, invalid_grant, tokens).",
                &["answer"],
            ),
            user_codes: counter(
                r,
                "tokend_device_user_codes_total",
                "User codes looked up on the device page, by result (valid, unknown, expired, used).",
                &["result"],
            ),
            mail_outbox_depth: {
                let g = IntGauge::new(
                    "tokend_mail_outbox_depth",
                    "Messages waiting in the mail outbox for delivery.",
                )
                .unwrap_or_else(|e| panic!("metric: {e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("metric: {e}"));
                g
            },
            mail_send_failures: plain_counter(
                r,
                "tokend_mail_send_failures_total",
                "Mail delivery attempts that failed (each message is retried).",
            ),
            mail_sent: plain_counter(
                r,
                "tokend_mail_sent_total",
                "Messages handed over to the mail server or written as .eml files.",
            ),
            password_resets: counter(
                r,
                "tokend_password_resets_total",
                "Password reset requests and redemptions by result (requested, unknown, \
                 throttled, unsendable, completed, invalid_link).",
                &["result"],
            ),
            email_changes: counter(
                r,
                "tokend_email_changes_total",
                "Email changes by result (requested, confirmed, taken).",
                &["result"],
            ),
            events: counter(
                r,
                "tokend_events_total",
                "Account events recorded, by type.",
                &["type"],
            ),
            events_dropped: plain_counter(
                r,
                "tokend_events_dropped_total",
                "Account events that could not be stored (they are still in the audit log).",
            ),
            dpop_proofs: counter(
                r,
                "tokend_dpop_proofs_total",
                "DPoP proofs accepted (reason none) or refused, by reason (RFC 9449).",
                &["result", "reason"],
            ),
            token_exchanges: counter(
                r,
                "tokend_token_exchanges_total",
                "Token exchanges (RFC 8693): issued, or refused by reason.",
                &["result"],
            ),
            client_assertions: counter(
                r,
                "tokend_client_assertions_total",
                "private_key_jwt client assertions accepted (reason none) or refused, by reason \
                 (RFC 7523).",
                &["result", "reason"],
            ),
            registry,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        };
        Arc::new(m)
    }

    /// Counts one answered request and observes its latency. `key` stands for the labels
    /// `[route, method, status]` (the same key always for the same labels): their handles are
    /// looked up once per thread.
    pub(crate) fn observe_request(&self, key: u32, labels: [&str; 3], seconds: f64) {
        REQUEST_HANDLES.with(|cache| {
            let mut cache = cache.borrow_mut();
            let (count, latency) = cache.entry((self.id, key)).or_insert_with(|| {
                (
                    self.http_requests.with_label_values(&labels),
                    self.http_duration
                        .with_label_values(&[labels[0], labels[2]]),
                )
            });
            count.inc();
            latency.observe(seconds);
        });
    }

    /// Records one store operation.
    pub(crate) fn store_op(&self, store: &str, op: &str, elapsed: Duration, ok: bool) {
        self.store_duration
            .with_label_values(&[store, op])
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.store_errors.with_label_values(&[store, op]).inc();
        }
    }

    /// Records one issued token.
    pub(crate) fn issued(&self, grant: &str, typ: &str, alg: &str) {
        self.tokens_issued
            .with_label_values(&[grant, typ, alg])
            .inc();
    }

    /// Refreshes the key gauges from the key ring (called at scrape time).
    pub(crate) fn observe_keys(&self, keys: &Keys) {
        let stats = keys.stats();
        for s in &stats.algs {
            let alg = s.alg.as_str();
            for (state, n) in [
                (KeyState::Pending, s.pending),
                (KeyState::Active, s.active),
                (KeyState::Retired, s.retired),
                (KeyState::Gone, s.gone),
            ] {
                self.keys
                    .with_label_values(&[alg, state.as_str()])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            self.key_age
                .with_label_values(&[alg])
                .set(s.active_age_seconds.unwrap_or(0));
        }
        for (alg, n) in keys.created_counts() {
            let c = self.rotations.with_label_values(&[alg.as_str()]);
            let seen = c.get();
            if n > seen {
                c.inc_by(n - seen);
            }
        }
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_renders() {
        let m = Metrics::new();
        m.http_requests
            .with_label_values(&["/auth/login", "POST", "200"])
            .inc();
        m.issued("password", "access", "EdDSA");
        m.refresh_reuse.inc();
        m.store_op("redis", "rotate", Duration::from_millis(1), false);
        let text = String::from_utf8(m.render()).unwrap();
        for name in [
            "tokend_http_requests_total",
            "tokend_tokens_issued_total",
            "tokend_refresh_reuse_detected_total",
            "tokend_store_errors_total",
            "tokend_store_operation_duration_seconds_bucket",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
