//! Administration (SPEC §9): list users, set roles, revoke a user's sessions. Every operation
//! requires role `admin`.

use serde::Serialize;

use super::accounts::{Principal, UserView, ROLE_ADMIN};
use super::sessions::publish_user_claims;
use super::{Core, Error};
use crate::config::Config;
use crate::store::{SessionStore, UserRecord, UserStore};

/// One page of users.
#[derive(Debug, Clone, Serialize)]
pub struct UserPage {
    pub users: Vec<UserView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Largest page size.
pub const MAX_PAGE: usize = 200;

fn valid_role(r: &str) -> bool {
    (1..=32).contains(&r.len())
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | ':'))
}

/// Adds role `admin` to `user` (kept as it is when it has the role) and publishes the user's
/// claims, so sessions already started carry the role from their next refresh (published even
/// when nothing changed, in case an earlier grant stopped before it). `None` if the user is gone.
pub async fn grant_admin(
    users: &dyn UserStore,
    sessions: &dyn SessionStore,
    config: &Config,
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
    publish_user_claims(sessions, config, &user).await?;
    Ok(Some(user))
}

impl Core {
    /// `GET /admin/users?limit=&after=`: users ordered by id.
    pub async fn admin_list_users(
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
    pub async fn admin_set_roles(
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
            self.revoke_all_sessions(id).await?;
        }
        let user = self
            .users
            .set_roles(id, &roles, self.clock.now_ms())
            .await?
            .ok_or(Error::NotFound)?;
        self.publish_user_claims(&user).await?;
        if removed {
            self.revoke_all_sessions(id).await?;
        }
        tracing::info!(admin = %p.claims.sub, user_id = %id, roles = ?roles, "roles changed");
        Ok(UserView::from(&user))
    }

    /// `POST /admin/users/{id}/revoke-sessions`.
    pub async fn admin_revoke_sessions(&self, p: &Principal, id: &str) -> Result<(), Error> {
        p.require_role(ROLE_ADMIN)?;
        self.users.by_id(id).await?.ok_or(Error::NotFound)?;
        self.revoke_all_sessions(id).await?;
        tracing::info!(admin = %p.claims.sub, user_id = %id, "sessions revoked by an admin");
        Ok(())
    }
}
