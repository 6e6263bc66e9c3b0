//! The rules: accounts, tokens, sessions. No HTTP here and no driver types; stores and keys are
//! reached through their traits.

pub(crate) mod accounts;
pub(crate) mod admin;
pub(crate) mod assertion;
pub(crate) mod authorize;
pub(crate) mod client_keys;
pub mod clients;
pub(crate) mod device;
pub(crate) mod dpop;
pub(crate) mod email_change;
pub mod events;
pub(crate) mod exchange;
pub(crate) mod ids;
pub mod input;
pub(crate) mod lifecycle;
pub(crate) mod limits;
pub(crate) mod mail;
pub mod oauth;
pub(crate) mod passwords;
pub(crate) mod published;
pub(crate) mod registration;
pub(crate) mod reset;
pub(crate) mod resources;
pub(crate) mod sessions;
pub mod tokens;
pub(crate) mod verification;

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::keys::{KeyError, Keys};
use crate::store::{ClientStore, MailStore, SessionStore, StoreError, UserStore};

pub use passwords::Passwords;
pub(crate) use tokens::{RefreshClaims, Refusal, Tokens};

/// What a domain operation can answer besides success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Input that breaks a rule (the message says which).
    #[error("{0}")]
    Invalid(String),
    /// A unique field is taken (`email`, `username`).
    #[error("{0} already registered")]
    Duplicate(&'static str),
    /// Unknown email or wrong password: one answer for both.
    #[error("invalid email or password")]
    InvalidCredentials,
    /// A bearer token was refused; the reason's description is safe to show.
    #[error("{0}")]
    TokenRejected(Refusal),
    /// An access token presented with the `DPoP` scheme was refused (RFC 9449 §7.1: the
    /// challenge is `DPoP`).
    #[error("{0}")]
    DpopTokenRejected(Refusal),
    /// A DPoP proof was refused (RFC 9449 §4.3, §7.1); [`ProofRefusal::Nonce`] asks for the
    /// server's nonce (`use_dpop_nonce`, §8, §9).
    #[error("{0}")]
    DpopProof(dpop::ProofRefusal),
    /// The action needs a token minted by a password login.
    #[error("fresh token required")]
    FreshTokenRequired,
    /// The password was right, but `TOKEND_EMAIL_VERIFICATION=required` and the address is not
    /// verified yet.
    #[error("confirm your email address first")]
    EmailNotVerified,
    /// A link's token is unknown, spent or expired (docs/mail.md).
    #[error("the link is invalid, expired or already used")]
    InvalidLink,
    /// The caller lacks the named role (`admin`).
    #[error("requires role {0}")]
    InsufficientRole(&'static str),
    /// The token lacks a scope the resource needs (RFC 6750 §3.1).
    #[error("the access token needs scope {scope}")]
    InsufficientScope {
        /// The scope it needs.
        scope: &'static str,
        /// Whether the token is DPoP-bound: its refusal then names that scheme (RFC 9449 §7.1).
        dpop: bool,
    },
    /// A resource or audience the request may not name (RFC 8707 §2, RFC 8693 §2.2.2:
    /// `invalid_target`); the message says which.
    #[error("{0}")]
    InvalidTarget(String),
    /// A refresh token was refused (docs/sessions.md).
    #[error(transparent)]
    Refresh(#[from] RefreshError),
    /// No such user, client, session or record.
    #[error("not found")]
    NotFound,
    /// Too many requests; retry after this many seconds.
    #[error("too many requests")]
    RateLimited(u64),
    /// A store cannot answer now (fail closed: the caller answers 503 and retries later).
    #[error("{0}")]
    Unavailable(String),
    /// A fault of the server's own (answered 500 and logged, never a client's input).
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate(f) => Error::Duplicate(f),
            StoreError::Unavailable { .. } => Error::Unavailable(e.to_string()),
            StoreError::Corrupt { .. } => Error::Internal(e.to_string()),
        }
    }
}

impl From<KeyError> for Error {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Store(s) => s.into(),
            other => Error::Internal(other.to_string()),
        }
    }
}

/// Why a refresh token was refused (docs/sessions.md).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// The token failed a signature, shape or time check.
    #[error("refresh token invalid: {0}")]
    InvalidToken(Refusal),
    /// The token was exchanged before, outside the leeway: the family is now revoked.
    #[error("refresh token reuse detected; the session is revoked")]
    Reused,
    /// The token's family was revoked (logout, reuse, password change).
    #[error("session revoked")]
    Revoked,
    /// The token's family expired or never existed.
    #[error("session expired or unknown")]
    Unknown,
    /// The client the token was issued to may not refresh here (a confidential client at the
    /// unauthenticated seed route, or a client without the `refresh_token` grant).
    #[error("{0}")]
    NotAllowed(&'static str),
}

/// The domain's services, each holding only what it uses. Built once by `startup`; handlers
/// call one method of one of them.
pub(crate) struct Services {
    pub(crate) accounts: Arc<accounts::Accounts>,
    pub(crate) sessions: Arc<sessions::Sessions>,
    pub(crate) oauth: oauth::OAuth,
    pub(crate) authorize: Arc<authorize::Authorize>,
    pub(crate) devices: Arc<device::Devices>,
    pub(crate) admin: admin::Admin,
    pub(crate) limits: Arc<limits::Limits>,
    pub(crate) published: published::Published,
    pub(crate) registration: registration::Registration,
    pub(crate) mail: Arc<mail::Mail>,
    pub(crate) verification: Arc<verification::Verification>,
    pub(crate) resets: Arc<reset::PasswordReset>,
    pub(crate) events: events::Events,
    pub(crate) lifecycle: Arc<lifecycle::Lifecycle>,
}

/// What the services are built from.
pub(crate) struct ServiceParts {
    pub(crate) config: Arc<Config>,
    pub(crate) clock: SharedClock,
    pub(crate) users: Arc<dyn UserStore>,
    /// Client lookups: every known client (first-party, `TOKEND_CLIENTS_FILE`, stored).
    pub(crate) clients: Arc<dyn ClientStore>,
    pub(crate) sessions: Arc<dyn SessionStore>,
    pub(crate) limits: Arc<dyn crate::store::LimitStore>,
    /// Single-use keys (DPoP proof and client assertion `jti`s).
    pub(crate) replay: Arc<dyn crate::store::ReplayStore>,
    /// Fetches the `jwks_uri` of `private_key_jwt` clients (docs/private_key_jwt.md).
    pub(crate) jwks_fetch: Arc<dyn client_keys::JwksFetch>,
    pub(crate) authorize: Arc<dyn crate::store::AuthorizeStore>,
    pub(crate) consents: Arc<dyn crate::store::ConsentStore>,
    pub(crate) device: Arc<dyn crate::store::DeviceStore>,
    /// The mail outbox (MongoDB in production).
    pub(crate) mail: Arc<dyn MailStore>,
    /// Account events (MongoDB in production).
    pub(crate) events: Arc<dyn crate::store::EventStore>,
    /// Where mail goes (`None`: mail is off).
    pub(crate) transport: Option<Arc<dyn crate::mail::Transport>>,
    pub(crate) keys: Keys,
    pub(crate) passwords: Passwords,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

impl Services {
    pub(crate) fn build(p: ServiceParts) -> Result<Services, Error> {
        let tokens = Tokens::new(
            p.config.issuer.clone(),
            p.config.audience.clone(),
            p.keys.clone(),
        );
        let limits = Arc::new(limits::Limits::new(
            p.limits,
            p.clock.clone(),
            p.metrics.clone(),
            &p.config,
        ));
        let events = events::Events::new(
            p.events,
            p.clock.clone(),
            p.metrics.clone(),
            p.config.events_retention,
        );
        p.keys.observe(events.key_observer());
        let lifecycle = Arc::new(lifecycle::Lifecycle::new(
            p.users.clone(),
            p.sessions.clone(),
            p.consents.clone(),
            p.mail.clone(),
            events.clone(),
            p.clock.clone(),
            lifecycle::LifecycleSettings {
                session_ttl: p.config.session_ttl,
                admin_emails: p.config.admin_emails.clone(),
            },
        ));
        // Nonces (docs/dpop.md) from the key-encryption key, so every instance of a deployment
        // agrees; embedded mode has one instance and a random key.
        let nonce_secret: Option<Vec<u8>> = if p.config.dpop_nonce {
            Some(match &p.config.mode {
                crate::config::Mode::Production {
                    key_encryption_key, ..
                } => key_encryption_key.0.to_vec(),
                crate::config::Mode::Embedded { .. } => ids::random_bytes::<32>()?.to_vec(),
            })
        } else {
            None
        };
        let assertions = Arc::new(assertion::ClientAssertions::new(
            client_keys::ClientKeys::new(p.jwks_fetch, p.clock.clone()),
            p.replay.clone(),
            p.config.issuer.clone(),
            p.clock.clone(),
            p.metrics.clone(),
        ));
        let dpop = Arc::new(dpop::Dpop::new(
            p.replay,
            p.config.issuer.clone(),
            nonce_secret.as_deref(),
            p.clock.clone(),
            p.metrics.clone(),
        ));
        let sessions = Arc::new(sessions::Sessions::new(
            p.sessions,
            p.users.clone(),
            p.clients.clone(),
            tokens,
            p.clock.clone(),
            p.metrics.clone(),
            sessions::SessionSettings::from_config(&p.config),
            events.clone(),
            dpop,
        ));
        let id_domain = url::Url::parse(&p.config.issuer)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| "localhost".into());
        let sender = crate::mail::sender(&p.config.mail.from, &p.config.display_name)
            .map_err(Error::Internal)?;
        let mail = Arc::new(mail::Mail::new(
            p.mail,
            p.transport,
            p.clock.clone(),
            p.metrics.clone(),
            sender,
            id_domain,
        )?);
        let email_change = Arc::new(email_change::EmailChange::new(
            p.users.clone(),
            sessions.clone(),
            mail.clone(),
            limits.clone(),
            p.metrics.clone(),
            email_change::EmailChangeSettings {
                admin_emails: p.config.admin_emails.clone(),
                issuer: p.config.issuer.clone(),
                display_name: p.config.display_name.clone(),
            },
            events.clone(),
        ));
        let verification = Arc::new(verification::Verification::new(
            p.users.clone(),
            sessions.clone(),
            mail.clone(),
            limits.clone(),
            email_change.clone(),
            verification::VerificationSettings {
                mode: p.config.mail.verification,
                admin_emails: p.config.admin_emails.clone(),
                issuer: p.config.issuer.clone(),
                display_name: p.config.display_name.clone(),
            },
            events.clone(),
        ));
        let resets = Arc::new(reset::PasswordReset::new(
            p.users.clone(),
            p.passwords.clone(),
            sessions.clone(),
            mail.clone(),
            limits.clone(),
            p.metrics.clone(),
            reset::ResetSettings {
                issuer: p.config.issuer.clone(),
                display_name: p.config.display_name.clone(),
            },
            events.clone(),
        ));
        let accounts = Arc::new(accounts::Accounts::new(
            p.users.clone(),
            p.passwords.clone(),
            sessions.clone(),
            limits.clone(),
            verification.clone(),
            resets.clone(),
            email_change,
            p.config.mail.verification,
            p.clock.clone(),
            p.metrics.clone(),
            events.clone(),
            lifecycle.clone(),
        ));
        let authorize = Arc::new(authorize::Authorize::new(
            p.clients.clone(),
            p.users.clone(),
            p.authorize,
            p.consents.clone(),
            accounts.clone(),
            sessions.clone(),
            p.keys.clone(),
            p.clock.clone(),
            p.metrics.clone(),
            authorize::AuthorizeSettings {
                issuer: p.config.issuer.clone(),
                id_token_ttl: p.config.id_token_ttl,
                browser_session_ttl: p.config.browser_session_ttl,
                signing_algs: p.config.signing_algs.clone(),
            },
            events.clone(),
        ));
        let registration = registration::Registration::new(
            p.clients.clone(),
            p.keys.clone(),
            limits.clone(),
            p.clock.clone(),
            p.metrics.clone(),
            registration::RegistrationSettings {
                issuer: p.config.issuer.clone(),
                mode: p.config.client_registration,
                signing_algs: p.config.signing_algs.clone(),
            },
            events.clone(),
        );
        let devices = Arc::new(device::Devices::new(
            p.clients.clone(),
            p.users.clone(),
            p.device,
            p.consents,
            authorize.clone(),
            sessions.clone(),
            limits.clone(),
            p.clock.clone(),
            p.metrics.clone(),
            p.config.issuer.clone(),
        ));
        let exchange = Arc::new(exchange::TokenExchange::new(
            sessions.clone(),
            p.clock.clone(),
            p.metrics.clone(),
        ));
        let oauth = oauth::OAuth::new(
            p.clients,
            p.users.clone(),
            accounts.clone(),
            sessions.clone(),
            limits.clone(),
            authorize.clone(),
            devices.clone(),
            assertions,
            exchange,
            p.clock.clone(),
        );
        let admin = admin::Admin::new(
            p.users,
            sessions.clone(),
            p.passwords,
            p.clock,
            p.config.bootstrap_admin.clone(),
            events.clone(),
        );
        Ok(Services {
            accounts,
            sessions,
            oauth,
            authorize,
            devices,
            admin,
            limits,
            published: published::Published::new(p.keys, p.metrics),
            registration,
            mail,
            verification,
            resets,
            events,
            lifecycle,
        })
    }
}

/// The built-in public first-party client the seed endpoints act as.
pub(crate) const FIRST_PARTY_CLIENT: &str = "tokend";
