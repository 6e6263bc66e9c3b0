//! The rules: accounts, tokens, sessions. No HTTP here and no driver types; stores and keys are
//! reached through their traits.

pub mod accounts;
pub mod admin;
pub mod clients;
pub mod ids;
pub mod input;
pub mod limits;
pub mod oauth;
pub mod passwords;
pub mod sessions;
pub mod tokens;

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::keys::{KeyError, Keys};
use crate::store::{ClientStore, SessionStore, StoreError, UserStore};

pub use passwords::Passwords;
pub use tokens::{AccessClaims, RefreshClaims, Refusal, Tokens};

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
    /// The action needs a token minted by a password login.
    #[error("fresh token required")]
    FreshTokenRequired,
    #[error("requires role {0}")]
    InsufficientRole(&'static str),
    #[error(transparent)]
    Refresh(#[from] RefreshError),
    #[error("not found")]
    NotFound,
    /// Too many requests; retry after this many seconds.
    #[error("too many requests")]
    RateLimited(u64),
    #[error(transparent)]
    Store(StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate(f) => Error::Duplicate(f),
            other => Error::Store(other),
        }
    }
}

impl From<KeyError> for Error {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Store(s) => Error::Store(s),
            other => Error::Internal(other.to_string()),
        }
    }
}

/// Why a refresh token was refused (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    #[error("refresh token invalid: {0}")]
    InvalidToken(Refusal),
    #[error("refresh token reuse detected; the session is revoked")]
    Reused,
    #[error("session revoked")]
    Revoked,
    #[error("session expired or unknown")]
    Unknown,
    /// The client the token was issued to may not refresh here (a confidential client at the
    /// unauthenticated seed route, or a client without the `refresh_token` grant).
    #[error("{0}")]
    NotAllowed(&'static str),
}

/// Everything the domain needs, shared by every request.
pub struct Core {
    pub config: Arc<Config>,
    pub clock: SharedClock,
    pub users: Arc<dyn UserStore>,
    /// Client lookups: the registry below, seen through the store trait.
    pub clients: Arc<dyn ClientStore>,
    /// Every known client: first-party, `TOKEND_CLIENTS_FILE`, and stored.
    pub registry: Arc<clients::Clients>,
    pub sessions: Arc<dyn SessionStore>,
    pub keys: Keys,
    pub passwords: Passwords,
    pub tokens: Tokens,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub limits: limits::Limits,
}

/// The built-in public first-party client the seed endpoints act as.
pub const FIRST_PARTY_CLIENT: &str = "tokend";
