//! Accounts (SPEC §4): register, password login, profile, password change, and the access-token
//! check every protected route goes through.

use serde::Serialize;

use super::input::{Email, Password, Username};
use super::passwords::Verdict;
use super::tokens::{describe_reason, AccessClaims};
use super::{ids, Core, Error, FIRST_PARTY_CLIENT};
use crate::store::{AccessStatus, UserClaims, UserRecord};

/// The user object clients see: never a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub email: String,
    pub roles: Vec<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub updated_at: String,
}

fn rfc3339(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

impl From<&UserRecord> for UserView {
    fn from(u: &UserRecord) -> Self {
        UserView {
            id: u.id.clone(),
            username: u.username.clone(),
            email: u.email.clone(),
            roles: u.roles.clone(),
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
        }
    }
}

/// A successful login or refresh: the pair and its lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub claims: AccessClaims,
}

impl Principal {
    pub fn require_fresh(&self) -> Result<(), Error> {
        if self.claims.fresh {
            Ok(())
        } else {
            Err(Error::FreshTokenRequired)
        }
    }

    pub fn require_role(&self, role: &'static str) -> Result<(), Error> {
        if self.claims.roles.iter().any(|r| r == role) {
            Ok(())
        } else {
            Err(Error::InsufficientRole(role))
        }
    }
}

pub const ROLE_USER: &str = "user";
pub const ROLE_ADMIN: &str = "admin";

impl Core {
    fn is_admin_email(&self, email: &str) -> bool {
        self.config.admin_emails.iter().any(|e| e == email)
    }

    /// `POST /auth/register`.
    pub async fn register(
        &self,
        username: &str,
        email: &str,
        password: &str,
    ) -> Result<UserView, Error> {
        let username = Username::parse(username)?;
        let email = Email::parse(email)?;
        let password = Password::parse(password)?;
        let hash = self.passwords.hash(password.expose()).await?;
        let now = self.clock.now_ms();
        let mut roles = vec![ROLE_USER.to_string()];
        if self.is_admin_email(email.as_str()) {
            roles.push(ROLE_ADMIN.to_string());
        }
        let user = UserRecord {
            id: uuid::Uuid::now_v7().to_string(),
            username: username.as_str().to_string(),
            email: email.as_str().to_string(),
            password_hash: hash,
            roles,
            created_at: now,
            updated_at: now,
        };
        self.users.insert(&user).await?;
        tracing::info!(user_id = %user.id, "user registered");
        Ok(UserView::from(&user))
    }

    /// Checks a password for an email or (when `allow_username`) a username. Unknown accounts
    /// are verified against a dummy hash and answer like a wrong password.
    pub async fn check_password(
        &self,
        login: &str,
        password: &str,
        allow_username: bool,
    ) -> Result<UserRecord, Error> {
        let account = super::limits::account_key(login);
        self.limit_key(&account, "account").await?;
        self.check_backoff(&account).await?;
        let user = if login.contains('@') || !allow_username {
            match Email::parse(login) {
                Ok(email) => self.users.by_email(email.as_str()).await?,
                Err(_) => None,
            }
        } else {
            self.users.by_username(login).await?
        };
        let verdict = self
            .passwords
            .verify(password, user.as_ref().map(|u| u.password_hash.as_str()))
            .await?;
        let mut user = match (verdict.clone(), user) {
            (Verdict::Wrong, _) | (_, None) => {
                self.login_failed(&account).await?;
                self.metrics
                    .logins
                    .with_label_values(&["invalid_credentials"])
                    .inc();
                return Err(Error::InvalidCredentials);
            }
            (_, Some(u)) => u,
        };
        self.metrics.logins.with_label_values(&["success"]).inc();
        self.login_succeeded(&account).await?;
        let now = self.clock.now_ms();
        if let Verdict::RightRehashed(new_hash) = verdict {
            self.users
                .update_password_hash(&user.id, &new_hash, now)
                .await?;
            user.password_hash = new_hash;
            tracing::info!(user_id = %user.id, "password hash upgraded to the configured cost");
        }
        if self.is_admin_email(&user.email) && !user.roles.iter().any(|r| r == ROLE_ADMIN) {
            let granted = super::admin::grant_admin(
                &*self.users,
                &*self.sessions,
                &self.config,
                user.clone(),
                now,
            )
            .await?;
            if let Some(u) = granted {
                user = u;
            }
        }
        Ok(user)
    }

    /// `POST /auth/login`: a fresh access token and the first refresh token of a new family.
    pub async fn login(&self, email: &str, password: &str) -> Result<TokenPair, Error> {
        let user = self.check_password(email, password, false).await?;
        let client = self.first_party_client();
        self.start_session(&user, &client, "", self.config.default_alg())
            .await
    }

    /// Validates a bearer access token: signature, header, times, then revocation (fails closed
    /// when the session store is down).
    pub async fn authenticate(&self, token: &str) -> Result<Principal, Error> {
        let now = self.clock.now();
        let claims = self
            .tokens
            .decode_access(token, now)
            .map_err(|r| self.rejected(r))?;
        self.check_revocation(claims).await
    }

    /// The revocation checks of an access token whose signature and claims passed (fails closed
    /// when the session store is down).
    pub(crate) async fn check_revocation(&self, claims: AccessClaims) -> Result<Principal, Error> {
        let status = self
            .sessions
            .access_status(&claims.jti, claims.sid.as_deref(), &claims.sub)
            .await?;
        self.judge_revocation(claims, &status)
    }

    /// [`Core::check_revocation`], also giving the newest copy of the user's claims (for
    /// introspection), read in the same round trip.
    pub(crate) async fn check_revocation_with_user(
        &self,
        claims: AccessClaims,
    ) -> Result<(Principal, Option<UserClaims>), Error> {
        let status = self
            .sessions
            .access_status_with_user(&claims.jti, claims.sid.as_deref(), &claims.sub)
            .await?;
        let principal = self.judge_revocation(claims, &status)?;
        Ok((principal, status.user))
    }

    fn judge_revocation(
        &self,
        claims: AccessClaims,
        status: &AccessStatus,
    ) -> Result<Principal, Error> {
        if status.jti_revoked || status.user_not_before.is_some_and(|nbf| claims.iat < nbf) {
            return Err(self.rejected("revoked"));
        }
        if status.family_revoked {
            return Err(self.rejected("session_revoked"));
        }
        Ok(Principal { claims })
    }

    /// The user behind a principal (gone users answer 401: their tokens are worthless).
    pub async fn current_user(&self, p: &Principal) -> Result<UserRecord, Error> {
        self.users
            .by_id(&p.claims.sub)
            .await?
            .ok_or(Error::TokenRejected("user no longer exists"))
    }

    /// `PUT /users/me` (fresh token).
    pub async fn rename(&self, p: &Principal, username: &str) -> Result<UserView, Error> {
        p.require_fresh()?;
        let username = Username::parse(username)?;
        let now = self.clock.now_ms();
        let user = self
            .users
            .update_username(&p.claims.sub, username.as_str(), now)
            .await?
            .ok_or(Error::TokenRejected("user no longer exists"))?;
        self.publish_user_claims(&user).await?;
        Ok(UserView::from(&user))
    }

    /// `PUT /users/me/password` (fresh token): new hash, then every session and every earlier
    /// access token of the user revoked.
    pub async fn change_password(
        &self,
        p: &Principal,
        current: &str,
        new: &str,
    ) -> Result<(), Error> {
        p.require_fresh()?;
        let new = Password::parse(new)?;
        let user = self.current_user(p).await?;
        match self
            .passwords
            .verify(current, Some(&user.password_hash))
            .await?
        {
            Verdict::Wrong => {
                return Err(Error::Invalid("current_password is wrong".into()));
            }
            Verdict::Right | Verdict::RightRehashed(_) => {}
        }
        let hash = self.passwords.hash(new.expose()).await?;
        self.users
            .update_password_hash(&user.id, &hash, self.clock.now_ms())
            .await?;
        self.revoke_all_sessions(&user.id).await?;
        tracing::info!(user_id = %user.id, "password changed; sessions revoked");
        Ok(())
    }

    /// Counts a refused bearer token by reason and turns it into the domain error.
    pub fn rejected(&self, reason: &'static str) -> Error {
        self.metrics
            .validation_failures
            .with_label_values(&[reason])
            .inc();
        Error::TokenRejected(describe_reason(reason))
    }

    /// A fresh `jti`/`sid`.
    pub fn new_id(&self) -> Result<String, Error> {
        ids::random_id()
    }

    pub(crate) fn first_party_client(&self) -> crate::store::ClientRecord {
        crate::store::ClientRecord {
            client_id: FIRST_PARTY_CLIENT.to_string(),
            secret_sha256: None,
            grant_types: vec!["password".into(), "refresh_token".into()],
            scopes: vec![],
            alg: None,
            created_at: 0,
        }
    }
}
