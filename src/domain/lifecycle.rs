//! The `Lifecycle` service (docs/events.md, "Deleting an account"): the end of an account, by
//! its owner, an admin or the operator, and the operator's own hand on a user (find, verify an
//! address). It works on the stores alone, so the command line runs it without a server.

use std::sync::Arc;

use super::accounts::{Principal, UserView, ROLE_ADMIN};
use super::events::{EventType, Events, NewEvent};
use super::input::Email;
use super::sessions::publish_user_claims;
use super::tokens::LEEWAY_SECS;
use super::verification::PURPOSE_VERIFY_EMAIL;
use super::Error;
use crate::clock::{ms, SharedClock};
use crate::store::{ConsentStore, MailStore, SessionStore, UserRecord, UserStore};

/// The credentials version a deleted account's marks carry: above any version a record can
/// have, so every family and browser session of the user is over, including those of logins
/// that read the record before it was deleted and wrote their family after (docs/sessions.md).
pub(crate) const DELETED_CREDENTIALS_VERSION: i64 = i64::MAX;

/// Who ends an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Actor<'a> {
    /// Its owner (`DELETE /users/me`).
    User,
    /// An admin, by user id (`DELETE /admin/users/{id}`).
    Admin(&'a str),
    /// The operator's command line (`tokend users delete`).
    Operator,
}

impl Actor<'_> {
    fn label(self) -> &'static str {
        match self {
            Actor::User => "user",
            Actor::Admin(_) => "admin",
            Actor::Operator => "operator",
        }
    }
}

/// What the service needs from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct LifecycleSettings {
    /// `TOKEND_SESSION_TTL`: how long the user's marks must outlive a deletion.
    pub(crate) session_ttl: std::time::Duration,
    /// `TOKEND_ADMIN_EMAILS`, lower-cased (the bootstrap rule applies to an operator's
    /// verification as to a link's).
    pub(crate) admin_emails: Vec<String>,
}

/// What an operator's verification did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verified {
    /// The address is now verified; `granted_admin` when `TOKEND_ADMIN_EMAILS` named it.
    Now { granted_admin: bool },
    /// It was verified before: nothing changed.
    Already,
}

/// The `Lifecycle` service.
pub(crate) struct Lifecycle {
    users: Arc<dyn UserStore>,
    sessions: Arc<dyn SessionStore>,
    consents: Arc<dyn ConsentStore>,
    mail: Arc<dyn MailStore>,
    events: Events,
    clock: SharedClock,
    settings: LifecycleSettings,
}

impl Lifecycle {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        users: Arc<dyn UserStore>,
        sessions: Arc<dyn SessionStore>,
        consents: Arc<dyn ConsentStore>,
        mail: Arc<dyn MailStore>,
        events: Events,
        clock: SharedClock,
        settings: LifecycleSettings,
    ) -> Lifecycle {
        Lifecycle {
            users,
            sessions,
            consents,
            mail,
            events,
            clock,
            settings,
        }
    }

    /// Ends an account: every refresh family, access token and browser session of the user
    /// (one write on the user's marks, raised to [`DELETED_CREDENTIALS_VERSION`] before the
    /// record goes, so a login in flight cannot outlive it), every consent, every pending mail
    /// token, then the record. Pending codes and device approvals die with it: redeeming one
    /// needs the user. [`Error::NotFound`] when there is no such user (deleted already).
    pub(crate) async fn delete(
        &self,
        user_id: &str,
        by: Actor<'_>,
        ip: Option<&str>,
    ) -> Result<(), Error> {
        self.users.by_id(user_id).await?.ok_or(Error::NotFound)?;
        // The marks first: from here on no token, session or login of the user lives, and a
        // failure below leaves an account that can be deleted again.
        let ttl = ms(self.settings.session_ttl) + LEEWAY_SECS * 1000;
        self.sessions
            .revoke_user_sessions(user_id, Some(DELETED_CREDENTIALS_VERSION), ttl)
            .await?;
        self.consents.forget_user(user_id).await?;
        self.mail.forget_user_tokens(user_id).await?;
        // Of two deletions at once, one removes the record; the other answers 404.
        if !self.users.delete(user_id).await? {
            return Err(Error::NotFound);
        }
        let mut event = NewEvent::new(EventType::AccountDeleted)
            .user(user_id)
            .ip(ip)
            .detail("by", by.label());
        if let Actor::Admin(admin) = by {
            event = event.detail("admin_id", admin);
        }
        self.events.record(event);
        tracing::info!(user_id = %user_id, by = by.label(), "account deleted");
        Ok(())
    }

    /// `DELETE /admin/users/{id}`.
    pub(crate) async fn delete_by_admin(
        &self,
        p: &Principal,
        user_id: &str,
        ip: Option<&str>,
    ) -> Result<(), Error> {
        p.require_role(ROLE_ADMIN)?;
        self.delete(user_id, Actor::Admin(&p.claims.sub), ip).await
    }

    /// A user by id, or by email when `key` holds an `@` (the operator's command line).
    pub(crate) async fn find(&self, key: &str) -> Result<Option<UserRecord>, Error> {
        if key.contains('@') {
            let email = Email::parse(key)?;
            Ok(super::accounts::user_by_email(self.users.as_ref(), &email).await?)
        } else {
            Ok(self.users.by_id(key).await?)
        }
    }

    /// Users ordered by id after `after`, at most `limit`, and the `after` of the next page.
    pub(crate) async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<UserView>, Option<String>), Error> {
        let limit = limit.max(1);
        let mut users = self.users.list(after, limit + 1).await?;
        let next = if users.len() > limit {
            users.truncate(limit);
            users.last().map(|u| u.id.clone())
        } else {
            None
        };
        Ok((users.iter().map(UserView::from).collect(), next))
    }

    /// The operator marks a user's address verified (`tokend users verify-email`), as
    /// confirming a link would: in one write, with role `admin` for an address in
    /// `TOKEND_ADMIN_EMAILS` (the bootstrap rule of docs/mail.md, "Admins by verified
    /// address"); the user's pending verification links die.
    pub(crate) async fn verify_email(&self, user: &UserRecord) -> Result<Verified, Error> {
        if user.email_verified {
            return Ok(Verified::Already);
        }
        let grant = self.settings.admin_emails.contains(&user.email);
        let Some(updated) = self
            .users
            .confirm_email(&user.id, &user.email, grant, self.clock.now_ms())
            .await?
        else {
            // Verified by a link meanwhile, or the account changed: read what it is now.
            return match self.users.by_id(&user.id).await? {
                Some(u) if u.email_verified => Ok(Verified::Already),
                _ => Err(Error::NotFound),
            };
        };
        let granted_admin = grant && updated.roles.iter().any(|r| r == ROLE_ADMIN);
        if granted_admin {
            publish_user_claims(&*self.sessions, self.settings.session_ttl, &updated).await?;
        }
        self.mail
            .forget_tokens(&updated.id, PURPOSE_VERIFY_EMAIL)
            .await?;
        self.events.record(
            NewEvent::new(EventType::EmailVerified)
                .user(&updated.id)
                .detail("by", "operator")
                .detail("granted_admin", granted_admin),
        );
        if granted_admin {
            self.events.record(
                NewEvent::new(EventType::RolesChanged)
                    .user(&updated.id)
                    .detail("by", "verification")
                    .detail("roles", updated.roles.clone()),
            );
        }
        Ok(Verified::Now { granted_admin })
    }
}
