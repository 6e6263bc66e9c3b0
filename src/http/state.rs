//! Request state: what every handler may use, built once by `startup` and shared by reference.
//! Nothing under `http/` imports `startup`; `startup` builds this and hands it to the router.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderValue;
use serde::Serialize;

use super::pages::Branding;
use super::wellknown::Documents;
use crate::config::IpNet;
use crate::domain::accounts::Accounts;
use crate::domain::admin::Admin;
use crate::domain::authorize::Authorize;
use crate::domain::device::Devices;
use crate::domain::events::Events;
use crate::domain::lifecycle::Lifecycle;
use crate::domain::limits::Limits;
use crate::domain::mail::Mail;
use crate::domain::oauth::OAuth;
use crate::domain::published::Published;
use crate::domain::registration::Registration;
use crate::domain::reset::PasswordReset;
use crate::domain::sessions::Sessions;
use crate::domain::verification::Verification;
use crate::metrics::Metrics;

/// One thing `/readyz` asks (a store, the key ring of an algorithm). The stores answer it
/// through their `ping`; `startup` names them.
#[async_trait]
pub(crate) trait ReadinessCheck: Send + Sync {
    /// What is missing when this check fails (`mongodb`, `redis`, `keys:EdDSA`), else `None`.
    async fn missing(&self) -> Option<String>;
}

/// Per-request state shared by every handler: the domain's services, and the settings that
/// only HTTP needs.
pub struct AppState {
    /// Registration, sign-in and the user's own account.
    pub accounts: Arc<Accounts>,
    /// Refresh families, logout and the access-token check.
    pub sessions: Arc<Sessions>,
    /// The token, revocation and introspection endpoints (RFC 6749, RFC 7009, RFC 7662).
    pub oauth: OAuth,
    pub(crate) authorize: Arc<Authorize>,
    /// The device authorization grant (RFC 8628).
    pub(crate) devices: Arc<Devices>,
    /// The hosted pages' settings.
    pub(crate) browser: BrowserSettings,
    pub(crate) admin: Admin,
    pub(crate) limits: Arc<Limits>,
    /// The JWKS and discovery documents, served from memory.
    pub published: Published,
    /// Dynamic client registration and management (RFC 7591, RFC 7592).
    pub(crate) registration: Registration,
    /// The mail outbox and its delivery worker (docs/mail.md).
    pub(crate) mail: Arc<Mail>,
    /// Email verification (docs/mail.md).
    pub(crate) verification: Arc<Verification>,
    /// Password reset links (docs/mail.md, "Password reset").
    pub(crate) resets: Arc<PasswordReset>,
    /// Account events (docs/events.md).
    pub(crate) events: Events,
    /// Account deletion (docs/events.md, "Deleting an account").
    pub(crate) lifecycle: Arc<Lifecycle>,
    /// The request counters and histograms of the router.
    pub(crate) metrics: Arc<Metrics>,
    /// `TOKEND_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed.
    pub(crate) trusted_proxies: Vec<IpNet>,
    /// Browser mode (`TOKEND_REFRESH_COOKIE`).
    pub(crate) cookies: CookieSettings,
    pub(crate) body_limit: usize,
    pub(crate) request_timeout: Duration,
    /// `public, max-age=TOKEND_JWKS_MAX_AGE` for JWKS and discovery.
    pub public_cache_control: HeaderValue,
    /// Discovery and OpenAPI, serialised once.
    pub(crate) documents: Documents,
    /// What `/readyz` checks, in order.
    pub(crate) readiness_checks: Vec<Arc<dyn ReadinessCheck>>,
}

/// What the hosted pages and their cookies need (docs/authorize.md).
#[derive(Debug, Clone)]
pub(crate) struct BrowserSettings {
    /// Whether the issuer is `https` (cookies are then `Secure` with the `__Host-` prefix).
    pub(crate) secure: bool,
    /// `TOKEND_DISPLAY_NAME`, `TOKEND_LOGO_URL`.
    pub(crate) branding: Branding,
}

/// The refresh-token cookie of browser mode and its CSRF defence.
#[derive(Debug, Clone)]
pub(crate) struct CookieSettings {
    /// `TOKEND_REFRESH_COOKIE=on`.
    pub(crate) enabled: bool,
    /// The cookie's `Max-Age` (the refresh token's lifetime), seconds.
    pub(crate) max_age_secs: u64,
    /// The issuer's origin (`scheme://host[:port]`), always allowed.
    pub(crate) issuer_origin: String,
    /// `TOKEND_CORS_ORIGINS`.
    pub(crate) allowed_origins: Vec<String>,
    /// Whether the issuer is `https`: the cookies then carry the `__Host-` prefix.
    pub(crate) host_prefix: bool,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Readiness {
    pub(crate) ready: bool,
    pub(crate) status: &'static str,
    /// Names of what is missing (`mongodb`, `redis`, `keys:EdDSA`).
    pub(crate) down: Vec<String>,
}

impl AppState {
    /// Runs every readiness check at once.
    pub(crate) async fn readiness(&self) -> Readiness {
        let down: Vec<String> =
            futures_util::future::join_all(self.readiness_checks.iter().map(|c| c.missing()))
                .await
                .into_iter()
                .flatten()
                .collect();
        Readiness {
            ready: down.is_empty(),
            status: if down.is_empty() {
                "ready"
            } else {
                "unavailable"
            },
            down,
        }
    }
}
