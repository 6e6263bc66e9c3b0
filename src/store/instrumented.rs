//! Store decorators that time every operation and count failures
//! (`tokend_store_operation_duration_seconds`, `tokend_store_errors_total`).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::mail::{ClaimedMail, MailStore, MailToken, OutgoingMail};
use super::{
    AccessStatus, AuthorizeStore, ClientRecord, ClientStore, ConsentRecord, ConsentStore,
    DecideOutcome, DeviceDecision, DevicePoll, DeviceStore, DeviceView, Expected, FamilyStarted,
    FamilyState, NewDevice, NewFamily, Redemption, ReplayStore, RotateOutcome, RotateRequest,
    SessionStore, StoreError, UserClaims, UserRecord, UserStore,
};
use crate::metrics::Metrics;

/// Wraps a store, labelling its operations with `store`.
pub(crate) struct Instrumented<S: ?Sized> {
    inner: Arc<S>,
    store: &'static str,
    metrics: Arc<Metrics>,
}

impl<S: ?Sized> Instrumented<S> {
    pub(crate) fn new(inner: Arc<S>, store: &'static str, metrics: Arc<Metrics>) -> Self {
        Instrumented {
            inner,
            store,
            metrics,
        }
    }

    async fn time<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let r = f.await;
        // A duplicate is an answer, not a failure of the store.
        let ok = !matches!(
            r,
            Err(StoreError::Unavailable { .. } | StoreError::Corrupt { .. })
        );
        self.metrics.store_op(self.store, op, start.elapsed(), ok);
        r
    }
}

#[async_trait]
impl ReplayStore for Instrumented<dyn ReplayStore> {
    async fn first_use(&self, key: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        self.time("replay_first_use", self.inner.first_use(key, ttl_ms))
            .await
    }
}

#[async_trait]
impl UserStore for Instrumented<dyn UserStore> {
    async fn insert(&self, user: &UserRecord) -> Result<(), StoreError> {
        self.time("user_insert", self.inner.insert(user)).await
    }
    async fn by_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.time("user_by_id", self.inner.by_id(id)).await
    }
    async fn by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        self.time("user_by_email", self.inner.by_email(email)).await
    }
    async fn by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        self.time("user_by_username", self.inner.by_username(username))
            .await
    }
    async fn update_username(
        &self,
        id: &str,
        username: &str,
        now_ms: i64,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.time(
            "user_update_username",
            self.inner.update_username(id, username, now_ms),
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
        self.time(
            "user_update_password",
            self.inner.update_password_hash(id, hash, now_ms, expected),
        )
        .await
    }
    async fn set_roles(
        &self,
        id: &str,
        roles: &[String],
        now_ms: i64,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.time("user_set_roles", self.inner.set_roles(id, roles, now_ms))
            .await
    }
    async fn confirm_email(
        &self,
        id: &str,
        email: &str,
        grant_admin: bool,
        now_ms: i64,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.time(
            "user_confirm_email",
            self.inner.confirm_email(id, email, grant_admin, now_ms),
        )
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
        self.time(
            "user_change_email",
            self.inner
                .change_email(id, email, grant_admin, now_ms, expected),
        )
        .await
    }
    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        self.time("user_delete", self.inner.delete(id)).await
    }
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<UserRecord>, StoreError> {
        self.time("user_list", self.inner.list(after, limit)).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.time("ping", self.inner.ping()).await
    }
}

#[async_trait]
impl ClientStore for Instrumented<dyn ClientStore> {
    async fn get(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
        self.time("client_get", self.inner.get(client_id)).await
    }
    async fn insert(&self, client: &ClientRecord) -> Result<(), StoreError> {
        self.time("client_insert", self.inner.insert(client)).await
    }
    async fn list(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.time("client_list", self.inner.list()).await
    }
    async fn delete(&self, client_id: &str) -> Result<bool, StoreError> {
        self.time("client_delete", self.inner.delete(client_id))
            .await
    }
    async fn replace(&self, client: &ClientRecord) -> Result<bool, StoreError> {
        self.time("client_replace", self.inner.replace(client))
            .await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.time("ping", self.inner.ping()).await
    }
}

#[async_trait]
impl SessionStore for Instrumented<dyn SessionStore> {
    async fn start_family(&self, family: &NewFamily) -> Result<FamilyStarted, StoreError> {
        self.time("family_start", self.inner.start_family(family))
            .await
    }
    async fn rotate(&self, req: &RotateRequest) -> Result<RotateOutcome, StoreError> {
        self.time("family_rotate", self.inner.rotate(req)).await
    }
    async fn family(&self, sid: &str) -> Result<Option<FamilyState>, StoreError> {
        self.time("family_get", self.inner.family(sid)).await
    }
    async fn exchange(
        &self,
        req: &RotateRequest,
    ) -> Result<Option<(FamilyState, RotateOutcome)>, StoreError> {
        self.time("family_exchange", self.inner.exchange(req)).await
    }
    async fn user_families(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        self.time("user_families", self.inner.user_families(user_id))
            .await
    }
    async fn user_family_logins(&self, user_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
        self.time("user_families", self.inner.user_family_logins(user_id))
            .await
    }
    async fn revoke_family(&self, sid: &str, ttl_ms: i64) -> Result<(), StoreError> {
        self.time("family_revoke", self.inner.revoke_family(sid, ttl_ms))
            .await
    }
    async fn revoke_user_sessions(
        &self,
        user_id: &str,
        credentials_version: Option<i64>,
        ttl_ms: i64,
    ) -> Result<u64, StoreError> {
        self.time(
            "user_sessions_revoke",
            self.inner
                .revoke_user_sessions(user_id, credentials_version, ttl_ms),
        )
        .await
    }
    async fn revoke_jti(&self, jti: &str, ttl_ms: i64) -> Result<(), StoreError> {
        self.time("jti_revoke", self.inner.revoke_jti(jti, ttl_ms))
            .await
    }
    async fn set_user_claims(
        &self,
        user_id: &str,
        claims: &UserClaims,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        self.time(
            "user_claims",
            self.inner.set_user_claims(user_id, claims, ttl_ms),
        )
        .await
    }
    async fn access_status(
        &self,
        jti: &str,
        sid: Option<&str>,
        user_id: &str,
    ) -> Result<AccessStatus, StoreError> {
        self.time("access_status", self.inner.access_status(jti, sid, user_id))
            .await
    }
    async fn access_status_with_user(
        &self,
        jti: &str,
        sid: Option<&str>,
        user_id: &str,
    ) -> Result<AccessStatus, StoreError> {
        self.time(
            "access_status",
            self.inner.access_status_with_user(jti, sid, user_id),
        )
        .await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.time("ping", self.inner.ping()).await
    }
}

#[async_trait]
impl AuthorizeStore for Instrumented<dyn AuthorizeStore> {
    async fn put_request(&self, id: &str, request: &str, ttl_ms: i64) -> Result<(), StoreError> {
        self.time(
            "authorize_put_request",
            self.inner.put_request(id, request, ttl_ms),
        )
        .await
    }
    async fn request(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.time("authorize_request", self.inner.request(id)).await
    }
    async fn take_request(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.time("authorize_take_request", self.inner.take_request(id))
            .await
    }
    async fn put_pushed_request(
        &self,
        id: &str,
        request: &str,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        self.time(
            "authorize_put_pushed_request",
            self.inner.put_pushed_request(id, request, ttl_ms),
        )
        .await
    }
    async fn take_pushed_request(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.time(
            "authorize_take_pushed_request",
            self.inner.take_pushed_request(id),
        )
        .await
    }
    async fn put_code(&self, code_hash: &str, grant: &str, ttl_ms: i64) -> Result<(), StoreError> {
        self.time(
            "authorize_put_code",
            self.inner.put_code(code_hash, grant, ttl_ms),
        )
        .await
    }
    async fn redeem_code(
        &self,
        code_hash: &str,
        used_ttl_ms: i64,
    ) -> Result<Redemption, StoreError> {
        self.time(
            "authorize_redeem_code",
            self.inner.redeem_code(code_hash, used_ttl_ms),
        )
        .await
    }
    async fn code_replayed(&self, code_hash: &str) -> Result<bool, StoreError> {
        self.time(
            "authorize_code_replayed",
            self.inner.code_replayed(code_hash),
        )
        .await
    }
    async fn put_browser_session(
        &self,
        id: &str,
        session: &str,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        self.time(
            "authorize_put_browser_session",
            self.inner.put_browser_session(id, session, ttl_ms),
        )
        .await
    }
    async fn browser_session(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.time("authorize_browser_session", self.inner.browser_session(id))
            .await
    }
    async fn add_session_family(&self, id: &str, sid: &str, ttl_ms: i64) -> Result<(), StoreError> {
        self.time(
            "authorize_add_session_family",
            self.inner.add_session_family(id, sid, ttl_ms),
        )
        .await
    }
    async fn end_browser_session(&self, id: &str) -> Result<Vec<String>, StoreError> {
        self.time(
            "authorize_end_browser_session",
            self.inner.end_browser_session(id),
        )
        .await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.time("ping", self.inner.ping()).await
    }
}

#[async_trait]
impl ConsentStore for Instrumented<dyn ConsentStore> {
    async fn grant(
        &self,
        user_id: &str,
        client_id: &str,
        scopes: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.time(
            "consent_grant",
            self.inner.grant(user_id, client_id, scopes, now_ms),
        )
        .await
    }
    async fn get(
        &self,
        user_id: &str,
        client_id: &str,
    ) -> Result<Option<ConsentRecord>, StoreError> {
        self.time("consent_get", self.inner.get(user_id, client_id))
            .await
    }
    async fn list(&self, user_id: &str) -> Result<Vec<ConsentRecord>, StoreError> {
        self.time("consent_list", self.inner.list(user_id)).await
    }
    async fn withdraw(&self, user_id: &str, client_id: &str) -> Result<bool, StoreError> {
        self.time("consent_withdraw", self.inner.withdraw(user_id, client_id))
            .await
    }
    async fn forget_user(&self, user_id: &str) -> Result<u64, StoreError> {
        self.time("consent_forget_user", self.inner.forget_user(user_id))
            .await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.time("ping", self.inner.ping()).await
    }
}

#[async_trait]
impl DeviceStore for Instrumented<dyn DeviceStore> {
    async fn start(
        &self,
        device_hash: &str,
        user_code_hash: &str,
        device: &NewDevice,
    ) -> Result<bool, StoreError> {
        self.time(
            "device_start",
            self.inner.start(device_hash, user_code_hash, device),
        )
        .await
    }
    async fn by_user_code(&self, user_code_hash: &str) -> Result<Option<DeviceView>, StoreError> {
        self.time(
            "device_by_user_code",
            self.inner.by_user_code(user_code_hash),
        )
        .await
    }
    async fn decide(
        &self,
        device_hash: &str,
        decision: &DeviceDecision,
        now_ms: i64,
    ) -> Result<DecideOutcome, StoreError> {
        self.time(
            "device_decide",
            self.inner.decide(device_hash, decision, now_ms),
        )
        .await
    }
    async fn poll(
        &self,
        device_hash: &str,
        client_id: &str,
        now_ms: i64,
    ) -> Result<DevicePoll, StoreError> {
        self.time(
            "device_poll",
            self.inner.poll(device_hash, client_id, now_ms),
        )
        .await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.time("ping", self.inner.ping()).await
    }
}

#[async_trait]
impl MailStore for Instrumented<dyn MailStore> {
    async fn enqueue(
        &self,
        mail: &OutgoingMail,
        token: Option<&MailToken>,
    ) -> Result<(), StoreError> {
        self.time("mail_enqueue", self.inner.enqueue(mail, token))
            .await
    }
    async fn claim(
        &self,
        holder: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimedMail>, StoreError> {
        self.time("mail_claim", self.inner.claim(holder, now_ms, lease_ms))
            .await
    }
    async fn delivered(&self, id: &str, holder: &str) -> Result<(), StoreError> {
        self.time("mail_delivered", self.inner.delivered(id, holder))
            .await
    }
    async fn retry_at(
        &self,
        id: &str,
        holder: &str,
        next_attempt_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.time(
            "mail_retry_at",
            self.inner.retry_at(id, holder, next_attempt_at_ms),
        )
        .await
    }
    async fn depth(&self) -> Result<u64, StoreError> {
        self.time("mail_depth", self.inner.depth()).await
    }
    async fn token(
        &self,
        hash: &str,
        purpose: &str,
        now_ms: i64,
    ) -> Result<Option<MailToken>, StoreError> {
        self.time("mail_token", self.inner.token(hash, purpose, now_ms))
            .await
    }
    async fn take_token(
        &self,
        hash: &str,
        purpose: &str,
        now_ms: i64,
    ) -> Result<Option<MailToken>, StoreError> {
        self.time(
            "mail_take_token",
            self.inner.take_token(hash, purpose, now_ms),
        )
        .await
    }
    async fn forget_tokens(&self, user_id: &str, purpose: &str) -> Result<u64, StoreError> {
        self.time(
            "mail_forget_tokens",
            self.inner.forget_tokens(user_id, purpose),
        )
        .await
    }
    async fn forget_user_tokens(&self, user_id: &str) -> Result<u64, StoreError> {
        self.time("mail_forget_tokens", self.inner.forget_user_tokens(user_id))
            .await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.time("mail_ping", self.inner.ping()).await
    }
}

#[async_trait]
impl super::EventStore for Instrumented<dyn super::EventStore> {
    async fn append(&self, event: &super::EventRecord) -> Result<(), StoreError> {
        self.time("event_append", self.inner.append(event)).await
    }
    async fn append_many(&self, events: &[super::EventRecord]) -> Result<(), StoreError> {
        self.time("event_append", self.inner.append_many(events))
            .await
    }
    async fn query(&self, q: &super::EventQuery) -> Result<Vec<super::EventRecord>, StoreError> {
        self.time("event_query", self.inner.query(q)).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.time("ping", self.inner.ping()).await
    }
}
