//! The `Published` service: what tokend publishes for others to read — the JWKS (docs/keys.md)
//! and the Prometheus metrics (docs/operations.md).

use std::sync::Arc;

use crate::keys::{JwksDocument, Keys};
use crate::metrics::Metrics;

pub struct Published {
    keys: Keys,
    metrics: Arc<Metrics>,
}

impl Published {
    pub(crate) fn new(keys: Keys, metrics: Arc<Metrics>) -> Published {
        Published { keys, metrics }
    }

    /// The current JWKS, serialised once per keyset change.
    pub fn jwks(&self) -> Arc<JwksDocument> {
        self.keys.jwks()
    }

    /// The metrics in Prometheus text, with the key gauges brought up to date.
    pub(crate) fn metrics_text(&self) -> Vec<u8> {
        self.metrics.observe_keys(&self.keys);
        self.metrics.render()
    }

    /// The key ring (operators' commands and tests move it).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}
