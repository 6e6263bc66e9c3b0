//! The `PasswordReset` service (docs/mail.md, "Password reset"): `forgot` mails a single-use
//! link (256-bit random, kept hashed with its mail, 30 min) and answers the same whatever the
//! address; `reset` spends the link's token, sets the new password and ends every session,
//! browser session and access token of the user, as a password change does. A reset token
//! dies when used, when another is issued and when the password changes by any path.

use std::sync::Arc;

use super::email_change::PURPOSE_EMAIL_CHANGE;
use super::events::{EventType, Events, NewEvent};
use super::input::{Email, Password};
use super::limits::Limits;
use super::mail::{Letter, Mail};
use super::sessions::Sessions;
use super::verification::{hashed, well_formed};
use super::{ids, Error, Passwords};
use crate::mail::ResetPassword;
use crate::metrics::Metrics;
use crate::store::{Expected, MailToken, OutgoingMail, UserStore};

/// The purpose of reset tokens in the outbox.
pub(crate) const PURPOSE_PASSWORD_RESET: &str = "password_reset";
/// How long a reset link works (docs/mail.md, "Password reset": 30 min).
const TOKEN_TTL_MS: i64 = 30 * 60 * 1_000;

/// What settings the service needs.
pub(crate) struct ResetSettings {
    pub(crate) issuer: String,
    pub(crate) display_name: String,
}

/// The `PasswordReset` service.
pub(crate) struct PasswordReset {
    users: Arc<dyn UserStore>,
    passwords: Passwords,
    sessions: Arc<Sessions>,
    mail: Arc<Mail>,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    settings: ResetSettings,
    events: Events,
}

impl PasswordReset {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        users: Arc<dyn UserStore>,
        passwords: Passwords,
        sessions: Arc<Sessions>,
        mail: Arc<Mail>,
        limits: Arc<Limits>,
        metrics: Arc<Metrics>,
        settings: ResetSettings,
        events: Events,
    ) -> PasswordReset {
        PasswordReset {
            users,
            passwords,
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
            .password_resets
            .with_label_values(&[result])
            .inc();
    }

    /// Whether reset links can be mailed at all (a mail transport is configured): the sign-in
    /// page offers "Forgot your password?" only then.
    pub(crate) fn available(&self) -> bool {
        self.mail.enabled()
    }

    /// The hosted page's request (docs/mail.md, "Password reset"): as [`PasswordReset::forgot`],
    /// but an input that is not an address at all is [`Error::Invalid`], so the page can say
    /// so. That reveals nothing about accounts: the check is on the shape of what was typed.
    pub(crate) async fn ask(&self, email: &str) -> Result<(), Error> {
        Email::parse(email)?;
        self.forgot(email).await
    }

    /// `POST /auth/password/forgot`: mails a reset link to the account of `email`, if there is
    /// one and its budget allows (one a minute, five an hour per address). The caller learns
    /// nothing: every well-formed address takes the same steps (one user read, one budget
    /// check, a token and a message built, two outbox writes and one outbox read), whether or
    /// not a mail goes out, and the answer is the same. A new link ends the earlier ones.
    pub(crate) async fn forgot(&self, email: &str) -> Result<(), Error> {
        let Ok(email) = Email::parse(email) else {
            return Ok(());
        };
        let user = super::accounts::user_by_email(self.users.as_ref(), &email).await?;
        let allowed = self.limits.allow_reset_mail(email.as_str()).await?;
        let (username, user_id) = match &user {
            Some(u) => (u.username.clone(), Some(u.id.clone())),
            None => (String::new(), None),
        };
        let built = self.build(email.as_str(), &username, user_id.as_deref().unwrap_or(""));
        match (user_id, allowed, built) {
            (Some(user_id), true, Ok((mail, token))) => {
                self.mail
                    .forget_tokens(&user_id, PURPOSE_PASSWORD_RESET)
                    .await?;
                self.mail.queue(&mail, Some(&token)).await?;
                // The same read as the other branch, so both take the same store round trips.
                self.mail.token(&token.hash, PURPOSE_PASSWORD_RESET).await?;
                self.count("requested");
                tracing::info!(user_id = %user_id, "password reset mail queued");
            }
            (user_id, allowed, built) => {
                // As many outbox round trips as the branch above, against an id nobody has:
                // two writes (a delete standing in for the queued message) and one read.
                let nobody = ids::random_id()?;
                for _ in 0..2 {
                    self.mail
                        .forget_tokens(&nobody, PURPOSE_PASSWORD_RESET)
                        .await?;
                }
                let probe = built
                    .as_ref()
                    .map(|(_, t)| t.hash.clone())
                    .unwrap_or_else(|_| hashed(&nobody));
                self.mail.token(&probe, PURPOSE_PASSWORD_RESET).await?;
                match (user_id, allowed, built) {
                    (None, _, _) => self.count("unknown"),
                    (Some(_), false, _) => self.count("throttled"),
                    (Some(id), true, Err(e)) => {
                        self.count("unsendable");
                        tracing::warn!(user_id = %id, error = %e, "no reset mail: the address cannot receive mail");
                    }
                    (Some(_), true, Ok(_)) => {}
                }
            }
        }
        Ok(())
    }

    /// A new token and the mail that carries it.
    fn build(
        &self,
        email: &str,
        username: &str,
        user_id: &str,
    ) -> Result<(OutgoingMail, MailToken), Error> {
        let token = ids::random_secret()?;
        let record = MailToken {
            hash: hashed(&token),
            purpose: PURPOSE_PASSWORD_RESET.into(),
            user_id: user_id.to_string(),
            email: email.to_string(),
            expires_at_ms: self.mail.now_ms().saturating_add(TOKEN_TTL_MS),
            credentials_version: None,
        };
        let view = ResetPassword {
            display_name: self.settings.display_name.clone(),
            username: username.to_string(),
            link: format!("{}/auth/password/reset?token={token}", self.settings.issuer),
            minutes: u64::try_from(TOKEN_TTL_MS / 60_000).unwrap_or(30),
        };
        let (text, html) = view.render().map_err(Error::Internal)?;
        let mail = self.mail.compose(Letter {
            to: email.to_string(),
            subject: view.subject(),
            text,
            html,
        })?;
        Ok((mail, record))
    }

    /// The address whose password a link would reset, without spending it (a GET never does);
    /// `None` for a link that is unknown, spent or expired.
    pub(crate) async fn pending(&self, token: &str) -> Result<Option<String>, Error> {
        if !well_formed(token) {
            return Ok(None);
        }
        Ok(self
            .mail
            .token(&hashed(token), PURPOSE_PASSWORD_RESET)
            .await?
            .map(|t| t.email))
    }

    /// `POST /auth/password/reset` and the page's form: checks the new password against the
    /// policy (a refusal spends nothing), spends the token (of concurrent callers, one wins),
    /// sets the password and ends every session of the user as a password change does: the
    /// refresh families, their access tokens and the browser sessions (docs/sessions.md).
    /// Answers the address. [`Error::InvalidLink`] for a token that is unknown, spent or
    /// expired.
    pub(crate) async fn reset(&self, token: &str, new_password: &str) -> Result<String, Error> {
        if !well_formed(token) {
            self.count("invalid_link");
            return Err(Error::InvalidLink);
        }
        let password = Password::parse(new_password)?;
        let hash = hashed(token);
        // A cheap look first, so that a dead link costs no Argon2 run.
        if self
            .mail
            .token(&hash, PURPOSE_PASSWORD_RESET)
            .await?
            .is_none()
        {
            self.count("invalid_link");
            return Err(Error::InvalidLink);
        }
        let password_hash = self.passwords.hash(password.expose()).await?;
        let Some(t) = self.mail.take_token(&hash, PURPOSE_PASSWORD_RESET).await? else {
            self.count("invalid_link");
            return Err(Error::InvalidLink);
        };
        let Some(user) = self
            .users
            .update_password_hash(
                &t.user_id,
                &password_hash,
                self.mail.now_ms(),
                // Only while the address is the one the link went to: an email change that
                // landed first ended the link (docs/mail.md, "What is atomic").
                &Expected {
                    credentials_version: None,
                    email: Some(t.email.clone()),
                },
            )
            .await?
        else {
            self.count("invalid_link");
            return Err(Error::InvalidLink);
        };
        // Every family whose login read the record before this write is over, logins in flight
        // included; browser sessions end by the same marks (docs/sessions.md).
        self.sessions
            .revoke_all_sessions(&user.id, Some(user.credentials_version))
            .await?;
        self.end_links(&user.id).await?;
        self.count("completed");
        self.events
            .record(NewEvent::new(EventType::PasswordReset).user(&user.id));
        tracing::info!(user_id = %user.id, "password reset; sessions revoked");
        Ok(user.email)
    }

    /// Ends every reset link of the user, and a pending email change's link: called whenever
    /// the password changes, by a reset or by `PUT /users/me/password` (an email change asked
    /// for with the old password is not the new password holder's), and when the address
    /// changes.
    pub(crate) async fn end_links(&self, user_id: &str) -> Result<(), Error> {
        for purpose in [PURPOSE_PASSWORD_RESET, PURPOSE_EMAIL_CHANGE] {
            self.mail.forget_tokens(user_id, purpose).await?;
        }
        Ok(())
    }
}
