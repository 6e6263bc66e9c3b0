//! The `Accounts` service (docs/api.md): register, password login, profile, password change,
//! email change (docs/mail.md).
//! Every place that checks a password draws on the account's one budget (docs/hardening.md).

use std::sync::Arc;

use serde::Serialize;

use super::dpop::{ProofHeader, Target};
use super::email_change::EmailChange;
use super::events::{EventType, Events, NewEvent, Origin};
use super::input::{Email, Password, Username};
use super::lifecycle::{Actor, Lifecycle};
use super::limits::Limits;
use super::passwords::Verdict;
use super::reset::PasswordReset;
use super::sessions::Sessions;
use super::tokens::{AccessClaims, Refusal};
use super::verification::Verification;
use super::{Error, Passwords};
use crate::clock::SharedClock;
use crate::config::EmailVerification;
use crate::metrics::Metrics;
use crate::store::{Expected, UserRecord, UserStore};

/// The user object clients see: never a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    pub(crate) id: String,
    pub(crate) username: String,
    pub(crate) email: String,
    pub(crate) email_verified: bool,
    pub(crate) roles: Vec<String>,
    /// RFC 3339, UTC.
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
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
            email_verified: u.email_verified,
            roles: u.roles.clone(),
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
        }
    }
}

/// The seed's login route: the `htu` of its proofs is the issuer and this.
pub(crate) const LOGIN_PATH: &str = "/auth/login";

/// A successful login or refresh: the pair and its lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub(crate) token_type: &'static str,
    /// Seconds until the access token expires.
    pub(crate) expires_in: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) scope: String,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub(crate) claims: AccessClaims,
}

impl Principal {
    pub(crate) fn require_fresh(&self) -> Result<(), Error> {
        if self.claims.fresh {
            Ok(())
        } else {
            Err(Error::FreshTokenRequired)
        }
    }

    pub(crate) fn require_role(&self, role: &'static str) -> Result<(), Error> {
        if self.claims.roles.iter().any(|r| r == role) {
            Ok(())
        } else {
            Err(Error::InsufficientRole(role))
        }
    }
}

pub(crate) const ROLE_USER: &str = "user";
pub(crate) const ROLE_ADMIN: &str = "admin";

/// The `Accounts` service: registration, password sign-in, the profile and password change.
pub struct Accounts {
    users: Arc<dyn UserStore>,
    passwords: Passwords,
    sessions: Arc<Sessions>,
    limits: Arc<Limits>,
    verification: Arc<Verification>,
    /// Reset links end when the password changes.
    resets: Arc<PasswordReset>,
    /// `PUT /users/me/email` mails the new address.
    email_change: Arc<EmailChange>,
    /// `TOKEND_EMAIL_VERIFICATION`: `required` refuses password sign-in of unverified accounts.
    email_verification: EmailVerification,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    events: Events,
    lifecycle: Arc<Lifecycle>,
}

/// Which door a sign-in came through, as `login.*` events record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignInVia {
    /// `POST /auth/login`.
    Api,
    /// The password grant at `POST /oauth/token`.
    PasswordGrant,
    /// The hosted sign-in page.
    Page,
}

impl SignInVia {
    fn label(self) -> &'static str {
        match self {
            SignInVia::Api => "api",
            SignInVia::PasswordGrant => "password_grant",
            SignInVia::Page => "page",
        }
    }
}

impl Accounts {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        users: Arc<dyn UserStore>,
        passwords: Passwords,
        sessions: Arc<Sessions>,
        limits: Arc<Limits>,
        verification: Arc<Verification>,
        resets: Arc<PasswordReset>,
        email_change: Arc<EmailChange>,
        email_verification: EmailVerification,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        events: Events,
        lifecycle: Arc<Lifecycle>,
    ) -> Accounts {
        Accounts {
            users,
            passwords,
            sessions,
            limits,
            verification,
            resets,
            email_change,
            email_verification,
            clock,
            metrics,
            events,
            lifecycle,
        }
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
        // An account made before domains were normalised may hold the address in its Unicode
        // form, which the unique index does not see as this one.
        if let Some(unicode) = email.unicode_form() {
            if self.users.by_email(&unicode).await?.is_some() {
                return Err(Error::Duplicate("email"));
            }
        }
        let now = self.clock.now_ms();
        // An address in TOKEND_ADMIN_EMAILS earns nothing here: registering an address proves
        // nothing about who owns it (docs/hardening.md, "Admins").
        let roles = vec![ROLE_USER.to_string()];
        let mut user = UserRecord {
            id: uuid::Uuid::now_v7().to_string(),
            username: username.as_str().to_string(),
            email: email.as_str().to_string(),
            password_hash: String::new(),
            roles,
            email_verified: false,
            credentials_version: 0,
            created_at: now,
            updated_at: now,
        };
        // The verification mail is built before the account exists: an address no mail can
        // reach is refused here (400), not found out after the account was made.
        let mail = self.verification.prepare(&user)?;
        user.password_hash = self.passwords.hash(password.expose()).await?;
        self.users.insert(&user).await?;
        if let Some(mail) = mail {
            // The account and its mail are two writes (docs/mail.md, "What is atomic"): when
            // the mail cannot be queued the account is taken back and the registration fails,
            // so that the client may simply try again.
            if let Err(e) = self.verification.queue_first(&user, mail).await {
                match self.users.delete(&user.id).await {
                    Ok(_) => tracing::warn!(
                        user_id = %user.id,
                        error = %e,
                        "registration undone: its verification mail could not be queued"
                    ),
                    Err(d) => tracing::error!(
                        user_id = %user.id,
                        error = %e,
                        undo_error = %d,
                        "verification mail not queued and the account could not be taken back; \
                         its owner can ask for the link again"
                    ),
                }
                return Err(e);
            }
        }
        tracing::info!(user_id = %user.id, "user registered");
        Ok(UserView::from(&user))
    }

    /// Checks a password for an email or (when `allow_username`) a username. Unknown accounts
    /// are verified against a dummy hash and answer like a wrong password. The account's one
    /// budget (whatever names it) is charged before the hash is checked. Every sign-in comes
    /// here (`/auth/login`, the password grant, the sign-in page): with
    /// `TOKEND_EMAIL_VERIFICATION=required` a right password of an unverified account is
    /// [`Error::EmailNotVerified`], which only the owner of the password learns.
    ///
    /// Each outcome is a `login.succeeded` or `login.failed` event (the user named by id when
    /// the account exists, never by what was typed).
    pub(crate) async fn check_password(
        &self,
        login: &str,
        password: &str,
        allow_username: bool,
        via: SignInVia,
        origin: &Origin,
    ) -> Result<UserRecord, Error> {
        let mut known_user = None;
        let result = self
            .check_password_once(login, password, allow_username, &mut known_user)
            .await;
        let ip = origin.ip_text();
        match &result {
            Ok(user) => self.events.record(
                NewEvent::new(EventType::LoginSucceeded)
                    .user(&user.id)
                    .ip(ip.as_deref())
                    .detail("via", via.label()),
            ),
            Err(e) => {
                let reason = match e {
                    Error::InvalidCredentials => "invalid_credentials",
                    Error::EmailNotVerified => "email_not_verified",
                    Error::RateLimited(_) => "rate_limited",
                    Error::Unavailable(_) => "unavailable",
                    _ => "error",
                };
                let mut event = NewEvent::new(EventType::LoginFailed)
                    .ip(ip.as_deref())
                    .detail("via", via.label())
                    .detail("reason", reason);
                if let Some(id) = &known_user {
                    event = event.user(id);
                }
                self.events.record(event);
            }
        }
        result
    }

    /// [`Accounts::check_password`] without its event; `known_user` learns the id of the
    /// account `login` names, when there is one.
    async fn check_password_once(
        &self,
        login: &str,
        password: &str,
        allow_username: bool,
        known_user: &mut Option<String>,
    ) -> Result<UserRecord, Error> {
        let user = if login.contains('@') || !allow_username {
            match Email::parse(login) {
                Ok(email) => user_by_email(self.users.as_ref(), &email).await?,
                Err(_) => None,
            }
        } else {
            self.users.by_username(login).await?
        };
        *known_user = user.as_ref().map(|u| u.id.clone());
        let account = match &user {
            Some(u) => super::limits::user_key(&u.id),
            None => super::limits::account_key(login),
        };
        let verdict = self
            .checked_password(&account, password, user.as_ref())
            .await?;
        let Some(mut user) = user else {
            return Err(Error::InvalidCredentials);
        };
        if let Verdict::RightRehashed(new_hash) = verdict {
            if let Some(updated) = self
                .users
                .update_password_hash(
                    &user.id,
                    &new_hash,
                    self.clock.now_ms(),
                    &Expected {
                        credentials_version: Some(user.credentials_version),
                        email: None,
                    },
                )
                .await?
            {
                user = updated;
                tracing::info!(user_id = %user.id, "password hash upgraded to the configured cost");
            }
        }
        if self.email_verification == EmailVerification::Required && !user.email_verified {
            tracing::info!(user_id = %user.id, "sign-in refused: email not verified");
            return Err(Error::EmailNotVerified);
        }
        Ok(user)
    }

    /// One password check against `user` (a dummy hash when `None`), charged to `account`'s
    /// budget: the per-account rate and the failed-login back-off, reserved atomically before
    /// Argon2 runs. A wrong password (or no user) is [`Error::InvalidCredentials`].
    async fn checked_password(
        &self,
        account: &str,
        password: &str,
        user: Option<&UserRecord>,
    ) -> Result<Verdict, Error> {
        self.limits.limit_key(account, "account").await?;
        self.limits.reserve_password_check(account).await?;
        let verdict = self
            .passwords
            .verify(password, user.map(|u| u.password_hash.as_str()))
            .await?;
        if matches!(verdict, Verdict::Wrong) || user.is_none() {
            self.metrics
                .logins
                .with_label_values(&["invalid_credentials"])
                .inc();
            return Err(Error::InvalidCredentials);
        }
        self.metrics.logins.with_label_values(&["success"]).inc();
        self.limits.password_check_succeeded(account).await?;
        Ok(verdict)
    }

    /// Checks `current_password` of a signed-in user (password change, and later email change
    /// and deletion) under the same budget as a login.
    pub(crate) async fn check_current_password(
        &self,
        user: &UserRecord,
        password: &str,
    ) -> Result<(), Error> {
        let account = super::limits::user_key(&user.id);
        match self.checked_password(&account, password, Some(user)).await {
            Err(Error::InvalidCredentials) => {
                Err(Error::Invalid("current_password is wrong".into()))
            }
            other => other.map(|_| ()),
        }
    }

    /// `POST /auth/login`: a fresh access token and the first refresh token of a new family.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        origin: &Origin,
        proof: &ProofHeader,
    ) -> Result<TokenPair, Error> {
        let dpop = self.sessions.dpop();
        let checked = dpop
            .check(
                proof,
                Target {
                    method: "POST",
                    path: LOGIN_PATH,
                },
                None,
            )
            .map_err(Error::DpopProof)?;
        let proof = dpop.spend_if_any(checked).await?;
        let bound = proof.is_some();
        let user = self
            .check_password(email, password, false, SignInVia::Api, origin)
            .await?;
        let client = super::clients::first_party_client();
        let pair = self
            .sessions
            .start_session(
                &user,
                &client,
                "",
                self.sessions.settings().default_alg(),
                origin,
                proof,
                super::resources::Targets::default(),
            )
            .await?;
        if bound {
            dpop.accepted();
        }
        Ok(pair)
    }

    /// `DELETE /users/me` (fresh token, `current_password`): the account ends
    /// (docs/events.md, "Deleting an account").
    pub(crate) async fn delete_me(
        &self,
        p: &Principal,
        current: &str,
        origin: &Origin,
    ) -> Result<(), Error> {
        p.require_fresh()?;
        let user = self.current_user(p).await?;
        self.check_current_password(&user, current).await?;
        self.lifecycle
            .delete(&user.id, Actor::User, origin.ip_text().as_deref())
            .await
    }

    /// `GET /users/me`: the caller's user object.
    pub(crate) async fn me(&self, p: &Principal) -> Result<UserView, Error> {
        Ok(UserView::from(&self.current_user(p).await?))
    }

    /// The user behind a principal (gone users answer 401: their tokens are worthless).
    pub(crate) async fn current_user(&self, p: &Principal) -> Result<UserRecord, Error> {
        self.users
            .by_id(&p.claims.sub)
            .await?
            .ok_or(Error::TokenRejected(Refusal::UnknownUser))
    }

    /// `PUT /users/me` (fresh token).
    pub(crate) async fn rename(&self, p: &Principal, username: &str) -> Result<UserView, Error> {
        p.require_fresh()?;
        let username = Username::parse(username)?;
        let now = self.clock.now_ms();
        let user = self
            .users
            .update_username(&p.claims.sub, username.as_str(), now)
            .await?
            .ok_or(Error::TokenRejected(Refusal::UnknownUser))?;
        self.sessions.publish_user_claims(&user).await?;
        Ok(UserView::from(&user))
    }

    /// `PUT /users/me/password` (fresh token): new hash, then every session and every earlier
    /// access token of the user revoked.
    pub(crate) async fn change_password(
        &self,
        p: &Principal,
        current: &str,
        new: &str,
    ) -> Result<(), Error> {
        p.require_fresh()?;
        let new = Password::parse(new)?;
        let user = self.current_user(p).await?;
        self.check_current_password(&user, current).await?;
        let hash = self.passwords.hash(new.expose()).await?;
        // Only over the record the current password was checked against: of concurrent
        // changes, the first ends the session that allowed the others (docs/sessions.md).
        let Some(user) = self
            .users
            .update_password_hash(
                &user.id,
                &hash,
                self.clock.now_ms(),
                &Expected {
                    credentials_version: Some(user.credentials_version),
                    email: None,
                },
            )
            .await?
        else {
            return Err(match self.users.by_id(&user.id).await? {
                Some(_) => Error::TokenRejected(Refusal::SessionRevoked),
                None => Error::TokenRejected(Refusal::UnknownUser),
            });
        };
        // Every family whose login read the record before this write is over, logins in flight
        // included (docs/sessions.md).
        self.sessions
            .revoke_all_sessions(&user.id, Some(user.credentials_version))
            .await?;
        // A reset link mailed before is over (docs/mail.md, "Password reset").
        self.resets.end_links(&user.id).await?;
        tracing::info!(user_id = %user.id, "password changed; sessions revoked");
        self.events
            .record(NewEvent::new(EventType::PasswordChanged).user(&user.id));
        Ok(())
    }

    /// `PUT /users/me/email` (fresh token, `current_password`): mails `new_email` a link; the
    /// address changes when it is confirmed (docs/mail.md, "Email change").
    pub(crate) async fn change_email(
        &self,
        p: &Principal,
        current: &str,
        new_email: &str,
    ) -> Result<(), Error> {
        p.require_fresh()?;
        let user = self.current_user(p).await?;
        self.check_current_password(&user, current).await?;
        self.email_change.request(&user, new_email).await
    }
}

/// The account of `email`: under its normalised form, else (an account made before domains
/// were normalised) under the Unicode form of its domain.
pub(crate) async fn user_by_email(
    users: &dyn UserStore,
    email: &Email,
) -> Result<Option<UserRecord>, crate::store::StoreError> {
    if let Some(user) = users.by_email(email.as_str()).await? {
        return Ok(Some(user));
    }
    match email.unicode_form() {
        Some(unicode) => users.by_email(&unicode).await,
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryUsers;

    fn user(id: &str, email: &str) -> UserRecord {
        UserRecord {
            id: id.into(),
            username: id.into(),
            email: email.into(),
            password_hash: String::new(),
            roles: vec![ROLE_USER.into()],
            email_verified: false,
            credentials_version: 0,
            created_at: 0,
            updated_at: 0,
        }
    }

    /// An account stored before domains were normalised, under the Unicode form, is found by
    /// either form; one stored in the normalised form too.
    #[tokio::test]
    async fn an_address_is_found_under_its_normalised_or_its_unicode_form() {
        let users = MemoryUsers::new();
        users
            .insert(&user("u-1", "zed@bücher.example"))
            .await
            .unwrap();
        users
            .insert(&user("u-2", "ann@xn--e1afmkfd.com"))
            .await
            .unwrap();
        for (typed, id) in [
            ("zed@bücher.example", "u-1"),
            ("Zed@XN--BCHER-KVA.example", "u-1"),
            ("ann@пример.com", "u-2"),
            ("ann@xn--e1afmkfd.com", "u-2"),
        ] {
            let email = Email::parse(typed).unwrap();
            let found = user_by_email(&users, &email).await.unwrap();
            assert_eq!(found.map(|u| u.id).as_deref(), Some(id), "{typed}");
        }
        let nobody = Email::parse("nobody@bücher.example").unwrap();
        assert!(user_by_email(&users, &nobody).await.unwrap().is_none());
    }
}
