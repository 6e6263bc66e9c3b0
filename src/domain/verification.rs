//! The `Verification` service (docs/mail.md, "Email verification"): registration mails a link
//! with a single-use token (256-bit random, kept hashed with its mail, 24 h); confirming it
//! sets `email_verified` and, for an address in `TOKEND_ADMIN_EMAILS`, grants `admin` in the
//! same write, once. Resending is throttled per address. The same link and page confirm an
//! email change ([`super::email_change`]).

use std::sync::Arc;

use ring::digest;

use super::accounts::ROLE_ADMIN;
use super::email_change::EmailChange;
use super::events::{EventType, Events, NewEvent};
use super::input::Email;
use super::limits::Limits;
use super::mail::{Letter, Mail};
use super::sessions::Sessions;
use super::{ids, Error};
use crate::config::EmailVerification;
use crate::mail::VerifyEmail;
use crate::store::{MailToken, OutgoingMail, UserRecord, UserStore};

/// The purpose of verification tokens in the outbox.
pub(crate) const PURPOSE_VERIFY_EMAIL: &str = "verify_email";
/// How long a verification link works.
const TOKEN_TTL_MS: i64 = 24 * 60 * 60 * 1_000;

/// Lower-case hex SHA-256: how tokens are kept.
pub(crate) fn hashed(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.as_bytes()))
}

/// Whether `token` has the shape of one of ours (43 base64url characters): anything else is
/// refused before a store is asked.
pub(crate) fn well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What settings the service needs.
pub(crate) struct VerificationSettings {
    pub(crate) mode: EmailVerification,
    /// `TOKEND_ADMIN_EMAILS`, lower-cased.
    pub(crate) admin_emails: Vec<String>,
    pub(crate) issuer: String,
    pub(crate) display_name: String,
}

/// A verification mail and the token it carries, built and not yet queued. `Debug` shows
/// neither the text nor the token.
pub(crate) struct VerificationMail {
    mail: OutgoingMail,
    token: MailToken,
}

impl std::fmt::Debug for VerificationMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationMail")
            .field("message_id", &self.mail.id)
            .finish()
    }
}

/// A confirmed address.
#[derive(Debug, Clone)]
pub(crate) struct Confirmed {
    pub(crate) email: String,
    /// Whether the link confirmed an email change (else a verification).
    pub(crate) changed: bool,
}

/// What a live link would confirm.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) email: String,
    /// Whether the link confirms an email change (else a verification).
    pub(crate) change: bool,
}

/// The `Verification` service.
pub(crate) struct Verification {
    users: Arc<dyn UserStore>,
    sessions: Arc<Sessions>,
    mail: Arc<Mail>,
    limits: Arc<Limits>,
    /// Email change links come back to the same page and endpoint.
    email_change: Arc<EmailChange>,
    settings: VerificationSettings,
    events: Events,
}

impl Verification {
    pub(crate) fn new(
        users: Arc<dyn UserStore>,
        sessions: Arc<Sessions>,
        mail: Arc<Mail>,
        limits: Arc<Limits>,
        email_change: Arc<EmailChange>,
        settings: VerificationSettings,
        events: Events,
    ) -> Verification {
        Verification {
            users,
            sessions,
            mail,
            limits,
            email_change,
            settings,
            events,
        }
    }

    /// Whether verification mails go out at all.
    fn sends(&self) -> bool {
        self.settings.mode != EmailVerification::Off && self.mail.enabled()
    }

    /// The first verification mail of an account about to be created, built but not queued;
    /// `None` when verification mails are not sent. [`Error::Invalid`] when no mail can reach
    /// the address.
    pub(crate) fn prepare(&self, user: &UserRecord) -> Result<Option<VerificationMail>, Error> {
        if !self.sends() {
            return Ok(None);
        }
        self.build(user).map(Some)
    }

    /// Queues the first mail of a newly created account. It is charged to the address's mail
    /// budget, so that a resend right after is throttled, but never refused by it: the budget
    /// of an address that had no account could have been spent by anyone.
    pub(crate) async fn queue_first(
        &self,
        user: &UserRecord,
        mail: VerificationMail,
    ) -> Result<(), Error> {
        self.mail.queue(&mail.mail, Some(&mail.token)).await?;
        if let Err(e) = self.limits.allow_mail(&user.email).await {
            tracing::debug!(user_id = %user.id, error = %e, "mail budget not charged");
        }
        tracing::info!(user_id = %user.id, "verification mail queued");
        Ok(())
    }

    /// `POST /auth/verify-email/resend`: a new link for an unverified account, at most one a
    /// minute and five an hour per address. Says nothing about whether the account exists;
    /// only an unverified account's budget is spent, so nobody can use up the budget of an
    /// address before its owner registers.
    pub(crate) async fn resend(&self, email: &str) -> Result<(), Error> {
        let Ok(email) = Email::parse(email) else {
            return Ok(());
        };
        if !self.sends() {
            return Ok(());
        }
        let Some(user) = super::accounts::user_by_email(self.users.as_ref(), &email).await? else {
            return Ok(());
        };
        if user.email_verified || !self.limits.allow_mail(&user.email).await? {
            return Ok(());
        }
        let mail = match self.build(&user) {
            Ok(m) => m,
            // An account made before its address was checked for mail: nothing can be sent.
            Err(Error::Invalid(_)) => {
                tracing::warn!(user_id = %user.id, "no verification mail: the address cannot receive mail");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.mail.queue(&mail.mail, Some(&mail.token)).await?;
        tracing::info!(user_id = %user.id, "verification mail queued");
        Ok(())
    }

    /// A new token and the mail that carries it.
    fn build(&self, user: &UserRecord) -> Result<VerificationMail, Error> {
        let token = ids::random_secret()?;
        let record = MailToken {
            hash: hashed(&token),
            purpose: PURPOSE_VERIFY_EMAIL.into(),
            user_id: user.id.clone(),
            email: user.email.clone(),
            expires_at_ms: self.mail.now_ms().saturating_add(TOKEN_TTL_MS),
            credentials_version: None,
        };
        let view = VerifyEmail {
            display_name: self.settings.display_name.clone(),
            username: user.username.clone(),
            link: format!("{}/auth/verify-email?token={token}", self.settings.issuer),
            hours: u64::try_from(TOKEN_TTL_MS / 3_600_000).unwrap_or(24),
        };
        let (text, html) = view.render().map_err(Error::Internal)?;
        let mail = self.mail.compose(Letter {
            to: user.email.clone(),
            subject: view.subject(),
            text,
            html,
        })?;
        Ok(VerificationMail {
            mail,
            token: record,
        })
    }

    /// The address a link would confirm (a verification or an email change), without spending
    /// it (a GET never does: mail scanners open links); `None` for a link that is unknown,
    /// spent or expired.
    pub(crate) async fn pending(&self, token: &str) -> Result<Option<Pending>, Error> {
        if !well_formed(token) {
            return Ok(None);
        }
        let hash = hashed(token);
        if let Some(t) = self.mail.token(&hash, PURPOSE_VERIFY_EMAIL).await? {
            return Ok(Some(Pending {
                email: t.email,
                change: false,
            }));
        }
        Ok(self
            .email_change
            .pending(&hash)
            .await?
            .map(|email| Pending {
                email,
                change: true,
            }))
    }

    /// Confirms a link: spends the token, marks the address verified and, for an address in
    /// `TOKEND_ADMIN_EMAILS`, adds `admin` in the same write. The flip to verified happens
    /// once per address, so the grant does too: an admin who takes the role away later is not
    /// overruled. A link of an email change confirms the change instead
    /// ([`EmailChange::confirm`]). [`Error::InvalidLink`] for a token that is unknown, spent or
    /// expired.
    pub(crate) async fn confirm(&self, token: &str) -> Result<Confirmed, Error> {
        if !well_formed(token) {
            return Err(Error::InvalidLink);
        }
        let hash = hashed(token);
        let Some(t) = self.mail.take_token(&hash, PURPOSE_VERIFY_EMAIL).await? else {
            return self
                .email_change
                .confirm(&hash)
                .await?
                .ok_or(Error::InvalidLink);
        };
        let grant = self.settings.admin_emails.contains(&t.email);
        let now = self.mail.now_ms();
        match self
            .users
            .confirm_email(&t.user_id, &t.email, grant, now)
            .await?
        {
            Some(user) => {
                let granted_admin = grant && user.roles.iter().any(|r| r == ROLE_ADMIN);
                if granted_admin {
                    // Sessions already started carry the role from their next refresh.
                    self.sessions.publish_user_claims(&user).await?;
                }
                self.mail
                    .forget_tokens(&user.id, PURPOSE_VERIFY_EMAIL)
                    .await?;
                tracing::info!(user_id = %user.id, granted_admin, "email verified");
                self.events.record(
                    NewEvent::new(EventType::EmailVerified)
                        .user(&user.id)
                        .detail("by", "link")
                        .detail("granted_admin", granted_admin),
                );
                if granted_admin {
                    self.events.record(
                        NewEvent::new(EventType::RolesChanged)
                            .user(&user.id)
                            .detail("by", "verification")
                            .detail("roles", user.roles.clone()),
                    );
                }
                Ok(Confirmed {
                    email: user.email,
                    changed: false,
                })
            }
            None => match self.users.by_id(&t.user_id).await? {
                // Confirmed by another link at the same moment: done all the same.
                Some(u) if u.email == t.email && u.email_verified => Ok(Confirmed {
                    email: u.email,
                    changed: false,
                }),
                // The account is gone or has another address now.
                _ => Err(Error::InvalidLink),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_token_shape_reaches_a_store() {
        let t = ids::random_secret().unwrap();
        assert!(well_formed(&t));
        for bad in [
            "",
            "abc",
            &"a".repeat(44),
            &format!("{}=", &t[..42]),
            "../../etc/passwd",
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
        assert_eq!(hashed("x").len(), 64);
    }
}
