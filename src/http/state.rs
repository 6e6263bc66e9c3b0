//! Request state: what every handler may use, built once by `startup` and shared by reference.
//! Nothing under `http/` imports `startup`; `startup` builds this and hands it to the router.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderValue;
use serde::Serialize;

use super::wellknown::Documents;
use crate::domain::Core;

/// One thing `/readyz` asks (a store, the key ring of an algorithm). The stores answer it
/// through their `ping`; `startup` names them.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    /// What is missing when this check fails (`mongodb`, `redis`, `keys:EdDSA`), else `None`.
    async fn missing(&self) -> Option<String>;
}

/// Per-request state shared by every handler.
pub struct AppState {
    pub core: Core,
    pub body_limit: usize,
    pub request_timeout: Duration,
    /// `public, max-age=TOKEND_JWKS_MAX_AGE` for JWKS and discovery.
    pub public_cache_control: HeaderValue,
    /// Discovery and OpenAPI, serialised once.
    pub documents: Documents,
    /// What `/readyz` checks, in order.
    pub readiness_checks: Vec<Arc<dyn ReadinessCheck>>,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub status: &'static str,
    /// Names of what is missing (`mongodb`, `redis`, `keys:EdDSA`).
    pub down: Vec<String>,
}

impl AppState {
    /// Runs every readiness check at once.
    pub async fn readiness(&self) -> Readiness {
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
