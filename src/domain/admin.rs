//! Administration (docs/hardening.md): list users, set roles, revoke a user's sessions. Every operation
//! requires role `admin`.

use serde::Serialize;

use std::sync::Arc;

use super::accounts::{Principal, UserView, ROLE_ADMIN, ROLE_USER};
use super::events::{EventType, Events, NewEvent};
use super::input::{Email, Password};
use super::sessions::{publish_user_claims, Sessions};
use super::{ids, Error, Passwords};
use crate::clock::SharedClock;
use crate::config::BootstrapAdmin;
use crate::store::{SessionStore, StoreError, UserRecord, UserStore};

/// One page of users.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct UserPage {
    pub(crate) users: Vec<UserView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next: Option<String>,
}

/// Largest page size.
pub(crate) const MAX_PAGE: usize = 200;

fn valid_role(r: &str) -> bool {
    (1..=32).contains(&r.len())
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | ':'))
}

/// Adds role `admin` to `user` (kept as it is when it has the role) and publishes the user's
/// claims, so sessions already started carry the role from their next refresh (published even
/// when nothing changed, in case an earlier grant stopped before it). `None` if the user is gone.
pub(crate) async fn grant_admin(
    users: &dyn UserStore,
    sessions: &dyn SessionStore,
    session_ttl: std::time::Duration,
    user: UserRecord,
    now_ms: i64,
) -> Result<Option<UserRecord>, Error> {
    let user = if user.roles.iter().any(|r| r == ROLE_ADMIN) {
        user
    } else {
        let mut roles = user.roles.clone();
        roles.push(ROLE_ADMIN.to_string());
        match users.set_roles(&user.id, &roles, now_ms).await? {
            Some(u) => u,
            None => return Ok(None),
        }
    };
    publish_user_claims(sessions, session_ttl, &user).await?;
    Ok(Some(user))
}

/// A username for the bootstrap admin: the email's local part as far as usernames allow it.
fn username_from_email(email: &str) -> String {
    let local = email.split('@').next().unwrap_or_default();
    let name: String = local
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .take(24)
        .collect();
    if name.len() < 3 {
        "admin".to_string()
    } else {
        name
    }
}

/// The `Admin` service: the bootstrap admin and the `/admin/*` operations, each requiring role
/// `admin`.
pub(crate) struct Admin {
    users: Arc<dyn UserStore>,
    sessions: Arc<Sessions>,
    passwords: Passwords,
    clock: SharedClock,
    bootstrap: Option<BootstrapAdmin>,
    events: Events,
}

impl Admin {
    pub(crate) fn new(
        users: Arc<dyn UserStore>,
        sessions: Arc<Sessions>,
        passwords: Passwords,
        clock: SharedClock,
        bootstrap: Option<BootstrapAdmin>,
        events: Events,
    ) -> Admin {
        Admin {
            users,
            sessions,
            passwords,
            clock,
            bootstrap,
            events,
        }
    }

    /// Creates the bootstrap admin of `TOKEND_BOOTSTRAP_ADMIN_EMAIL` and
    /// `TOKEND_BOOTSTRAP_ADMIN_PASSWORD` (roles `user` and `admin`, email verified) when no
    /// account has that email; an existing account is never touched. True if it was created.
    pub(crate) async fn bootstrap_admin(&self) -> Result<bool, Error> {
        let Some(b) = &self.bootstrap else {
            return Ok(false);
        };
        let email = Email::parse(&b.email)?;
        if super::accounts::user_by_email(self.users.as_ref(), &email)
            .await?
            .is_some()
        {
            tracing::info!("bootstrap admin: an account with that email exists; left as it is");
            return Ok(false);
        }
        let password = Password::parse(&b.password.0)?;
        let hash = self.passwords.hash(password.expose()).await?;
        let base = username_from_email(email.as_str());
        for attempt in 0..8 {
            let username = if attempt == 0 {
                base.clone()
            } else {
                format!("{base}-{}", &ids::random_id()?[..6])
            };
            let now = self.clock.now_ms();
            let user = UserRecord {
                id: uuid::Uuid::now_v7().to_string(),
                username,
                email: email.as_str().to_string(),
                password_hash: hash.clone(),
                roles: vec![ROLE_USER.to_string(), ROLE_ADMIN.to_string()],
                email_verified: true,
                credentials_version: 0,
                created_at: now,
                updated_at: now,
            };
            match self.users.insert(&user).await {
                Ok(()) => {
                    tracing::info!(user_id = %user.id, username = %user.username, "bootstrap admin created");
                    return Ok(true);
                }
                Err(StoreError::Duplicate("username")) => continue,
                // Another instance created it first.
                Err(StoreError::Duplicate(_)) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Internal(
            "bootstrap admin: no free username found".into(),
        ))
    }

    /// `GET /admin/users?limit=&after=`: users ordered by id.
    pub(crate) async fn list_users(
        &self,
        p: &Principal,
        after: Option<&str>,
        limit: usize,
    ) -> Result<UserPage, Error> {
        p.require_role(ROLE_ADMIN)?;
        let limit = limit.clamp(1, MAX_PAGE);
        let mut users = self.users.list(after, limit + 1).await?;
        let next = if users.len() > limit {
            users.truncate(limit);
            users.last().map(|u| u.id.clone())
        } else {
            None
        };
        Ok(UserPage {
            users: users.iter().map(UserView::from).collect(),
            next,
        })
    }

    /// `PUT /admin/users/{id}/roles`: replaces the roles. Taking a role away also revokes the
    /// user's sessions, so no live token keeps carrying it.
    pub(crate) async fn set_roles(
        &self,
        p: &Principal,
        id: &str,
        roles: &[String],
    ) -> Result<UserView, Error> {
        p.require_role(ROLE_ADMIN)?;
        if roles.len() > 16 || !roles.iter().all(|r| valid_role(r)) {
            return Err(Error::Invalid(
                "roles: at most 16, each 1-32 of [a-z0-9_:-]".into(),
            ));
        }
        let mut roles: Vec<String> = roles.to_vec();
        roles.sort();
        roles.dedup();
        let before = self.users.by_id(id).await?.ok_or(Error::NotFound)?;
        // Sessions go before the role does (a failure then changes nothing, and a retry, which
        // no longer sees the removal, has nothing left to do), and again after it, for a login
        // that read the old roles in between.
        let removed = before.roles.iter().any(|r| !roles.contains(r));
        if removed {
            self.sessions.revoke_all_sessions(id, None).await?;
        }
        let user = self
            .users
            .set_roles(id, &roles, self.clock.now_ms())
            .await?
            .ok_or(Error::NotFound)?;
        self.sessions.publish_user_claims(&user).await?;
        if removed {
            // Also ends the logins that read the old roles and were still in flight
            // (docs/sessions.md).
            self.sessions
                .revoke_all_sessions(id, Some(user.credentials_version))
                .await?;
        }
        tracing::info!(admin = %p.claims.sub, user_id = %id, roles = ?roles, "roles changed");
        self.events.record(
            NewEvent::new(EventType::RolesChanged)
                .user(id)
                .detail("by", "admin")
                .detail("admin_id", p.claims.sub.as_str())
                .detail("roles", roles.clone()),
        );
        Ok(UserView::from(&user))
    }

    /// `POST /admin/users/{id}/revoke-sessions`.
    pub(crate) async fn revoke_sessions(&self, p: &Principal, id: &str) -> Result<(), Error> {
        p.require_role(ROLE_ADMIN)?;
        self.users.by_id(id).await?.ok_or(Error::NotFound)?;
        self.sessions.revoke_all_sessions(id, None).await?;
        tracing::info!(admin = %p.claims.sub, user_id = %id, "sessions revoked by an admin");
        self.events.record(
            NewEvent::new(EventType::Logout)
                .user(id)
                .detail("scope", "all")
                .detail("by", "admin")
                .detail("admin_id", p.claims.sub.as_str()),
        );
        Ok(())
    }
}
