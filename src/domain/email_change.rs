//! The `EmailChange` service (docs/mail.md, "Email change"): `PUT /users/me/email` mails the
//! new address a confirmation link (256-bit random, kept hashed with its mail, 24 h; the link
//! of email verification); nothing changes until the link is confirmed. Confirming sets the
//! new address, verified, in one write (with `admin` for an address in
//! `TOKEND_ADMIN_EMAILS`, as at verification), ends the links mailed to the old address and
//! sends it a notice without any secret.

use std::sync::Arc;

use super::accounts::ROLE_ADMIN;
use super::events::{EventType, Events, NewEvent};
use super::input::Email;
use super::limits::Limits;
use super::mail::{Letter, Mail};
use super::reset::PURPOSE_PASSWORD_RESET;
use super::sessions::Sessions;
use super::verification::{hashed, Confirmed, PURPOSE_VERIFY_EMAIL};
use super::{ids, Error};
use crate::mail::{ConfirmEmailChange, EmailChanged};
use crate::metrics::Metrics;
use crate::store::{Expected, MailToken, StoreError, UserRecord, UserStore};

/// The purpose of email change tokens in the outbox.
pub(crate) const PURPOSE_EMAIL_CHANGE: &str = "email_change";
/// How long a confirmation link works (docs/mail.md, "Email change": 24 h, as verification).
const TOKEN_TTL_MS: i64 = 24 * 60 * 60 * 1_000;
/// The purpose of the deadline a notice carries (see [`EmailChange::notify_old_address`]).
pub(crate) const PURPOSE_NOTICE: &str = "notice";
/// What a refusal by the address's mail budget asks the caller to wait.
const THROTTLE_RETRY_SECS: u64 = 60;

/// What settings the service needs.
pub(crate) struct EmailChangeSettings {
    /// `TOKEND_ADMIN_EMAILS`, lower-cased.
    pub(crate) admin_emails: Vec<String>,
    pub(crate) issuer: String,
    pub(crate) display_name: String,
}

/// The `EmailChange` service.
pub(crate) struct EmailChange {
    users: Arc<dyn UserStore>,
    sessions: Arc<Sessions>,
    mail: Arc<Mail>,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    settings: EmailChangeSettings,
    events: Events,
}

impl EmailChange {
    pub(crate) fn new(
        users: Arc<dyn UserStore>,
        sessions: Arc<Sessions>,
        mail: Arc<Mail>,
        limits: Arc<Limits>,
        metrics: Arc<Metrics>,
        settings: EmailChangeSettings,
        events: Events,
    ) -> EmailChange {
        EmailChange {
            users,
            sessions,
            mail,
            limits,
            metrics,
            settings,
            events,
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .email_changes
            .with_label_values(&[result])
            .inc();
    }

    /// Mails `new_email` a link that makes it `user`'s address once confirmed (the caller
    /// checked the password and the token's freshness). One change waits at a time: a new
    /// request ends the earlier link. An address another account holds is refused (409), as
    /// is one that cannot receive mail (400); the new address's mail budget (one a minute, five
    /// an hour) applies (429).
    pub(crate) async fn request(&self, user: &UserRecord, new_email: &str) -> Result<(), Error> {
        let email = Email::parse(new_email)
            .map_err(|_| Error::Invalid("new_email must look like name@example.com".into()))?;
        if email.as_str() == user.email {
            return Err(Error::Invalid(
                "new_email is the account's address already".into(),
            ));
        }
        if !self.mail.enabled() {
            return Err(Error::Invalid(
                "email changes are confirmed by mail, and this server sends none".into(),
            ));
        }
        if super::accounts::user_by_email(self.users.as_ref(), &email)
            .await?
            .is_some()
        {
            return Err(Error::Duplicate("email"));
        }
        let token = ids::random_secret()?;
        let record = MailToken {
            hash: hashed(&token),
            purpose: PURPOSE_EMAIL_CHANGE.into(),
            user_id: user.id.clone(),
            email: email.as_str().to_string(),
            expires_at_ms: self.mail.now_ms().saturating_add(TOKEN_TTL_MS),
            credentials_version: Some(user.credentials_version),
        };
        let view = ConfirmEmailChange {
            display_name: self.settings.display_name.clone(),
            username: user.username.clone(),
            old_email: user.email.clone(),
            link: format!("{}/auth/verify-email?token={token}", self.settings.issuer),
            hours: u64::try_from(TOKEN_TTL_MS / 3_600_000).unwrap_or(24),
        };
        let (text, html) = view.render().map_err(Error::Internal)?;
        let mail = self.mail.compose(Letter {
            to: email.as_str().to_string(),
            subject: view.subject(),
            text,
            html,
        })?;
        if !self.limits.allow_mail(email.as_str()).await? {
            return Err(Error::RateLimited(THROTTLE_RETRY_SECS));
        }
        self.mail
            .forget_tokens(&user.id, PURPOSE_EMAIL_CHANGE)
            .await?;
        self.mail.queue(&mail, Some(&record)).await?;
        self.count("requested");
        tracing::info!(user_id = %user.id, "email change confirmation mail queued");
        Ok(())
    }

    /// The new address a link would confirm, without spending it; `None` when `hash` is not a
    /// live email change token.
    pub(crate) async fn pending(&self, hash: &str) -> Result<Option<String>, Error> {
        Ok(self
            .mail
            .token(hash, PURPOSE_EMAIL_CHANGE)
            .await?
            .map(|t| t.email))
    }

    /// Confirms an email change: spends the token (of concurrent callers, one gets it) and
    /// makes its address the account's, verified. `None` when `hash` is not a live email change
    /// token; [`Error::Duplicate`] when another account took the address meanwhile (the link is
    /// spent: the address is not this account's to have).
    pub(crate) async fn confirm(&self, hash: &str) -> Result<Option<Confirmed>, Error> {
        let Some(t) = self.mail.take_token(hash, PURPOSE_EMAIL_CHANGE).await? else {
            return Ok(None);
        };
        let Some(before) = self.users.by_id(&t.user_id).await? else {
            return Err(Error::InvalidLink);
        };
        // A password change or reset since the link was mailed ends it: whoever asked for the
        // change held the password of then (docs/mail.md, "Email change"). The write is
        // conditional on that version (a link from before links carried it: on the record as
        // read now), so a reset that landed first or lands meanwhile wins.
        let version = t.credentials_version.unwrap_or(before.credentials_version);
        let grant = self.settings.admin_emails.contains(&t.email);
        let now = self.mail.now_ms();
        let user = match self
            .users
            .change_email(
                &t.user_id,
                &t.email,
                grant,
                now,
                &Expected {
                    credentials_version: Some(version),
                    email: None,
                },
            )
            .await
        {
            Ok(Some(user)) => user,
            Ok(None) => {
                self.count("credentials_changed");
                return Err(Error::InvalidLink);
            }
            Err(StoreError::Duplicate(_)) => {
                self.count("taken");
                tracing::info!(user_id = %t.user_id, "email change refused: the address was taken meanwhile");
                return Err(Error::Duplicate("email"));
            }
            Err(e) => return Err(e.into()),
        };
        // Refreshes and introspection of the sessions already started see the record as it is
        // now (roles included, when the address earned admin).
        self.sessions.publish_user_claims(&user).await?;
        // Links mailed to the old address are over: a reset link there would hand the account
        // to whoever still reads that mailbox.
        for purpose in [
            PURPOSE_EMAIL_CHANGE,
            PURPOSE_VERIFY_EMAIL,
            PURPOSE_PASSWORD_RESET,
        ] {
            self.mail.forget_tokens(&user.id, purpose).await?;
        }
        self.notify_old_address(&before, &user).await;
        let granted_admin = grant && user.roles.iter().any(|r| r == ROLE_ADMIN);
        self.count("confirmed");
        self.events.record(
            NewEvent::new(EventType::EmailChanged)
                .user(&user.id)
                .detail("granted_admin", granted_admin),
        );
        if granted_admin {
            self.events.record(
                NewEvent::new(EventType::RolesChanged)
                    .user(&user.id)
                    .detail("by", "email_change")
                    .detail("roles", user.roles.clone()),
            );
        }
        tracing::info!(user_id = %user.id, granted_admin, "email changed");
        Ok(Some(Confirmed {
            email: user.email,
            changed: true,
        }))
    }

    /// Queues the notice to the old address. The change is made by then and stands whatever
    /// happens here: a notice that cannot be queued is logged, not answered as a failure
    /// (docs/mail.md, "What is atomic"). The notice has no link; its record carries a deadline
    /// in the outbox's one form, a token (purpose `notice`) whose secret is thrown away at
    /// once, so that a notice that cannot be delivered within 24 h is dropped as a link mail
    /// is, never retried for ever.
    async fn notify_old_address(&self, before: &UserRecord, after: &UserRecord) {
        let view = EmailChanged {
            display_name: self.settings.display_name.clone(),
            username: after.username.clone(),
            new_email: after.email.clone(),
        };
        let queued = async {
            let (text, html) = view.render().map_err(Error::Internal)?;
            let mail = self.mail.compose(Letter {
                to: before.email.clone(),
                subject: view.subject(),
                text,
                html,
            })?;
            let deadline = MailToken {
                hash: hashed(&ids::random_secret()?),
                purpose: PURPOSE_NOTICE.into(),
                user_id: after.id.clone(),
                email: before.email.clone(),
                expires_at_ms: self.mail.now_ms().saturating_add(TOKEN_TTL_MS),
                credentials_version: None,
            };
            self.mail.queue(&mail, Some(&deadline)).await
        };
        if let Err(e) = queued.await {
            tracing::warn!(user_id = %after.id, error = %e, "the old address's notice of an email change was not queued");
        }
    }
}
