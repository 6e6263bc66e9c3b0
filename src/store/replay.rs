//! Single-use identifiers: the `jti` of a DPoP proof (RFC 9449 §11.1), and later the `jti` of a
//! client assertion (RFC 7523 §3). Each is remembered as long as it could still be accepted,
//! then forgotten by TTL alone (docs/dpop.md, "Replay").

use async_trait::async_trait;

use super::StoreError;

/// Remembers keys that may be used once.
#[async_trait]
pub trait ReplayStore: Send + Sync {
    /// Records `key` for `ttl_ms` if it is not recorded yet, in one atomic step (`SET NX PX`):
    /// `true` for the first use, `false` for any later one while the record lives. Of concurrent
    /// calls with one key exactly one gets `true`. The caller makes keys opaque (a hash of what
    /// names the use) and puts its own prefix in front (`dpop:`).
    async fn first_use(&self, key: &str, ttl_ms: i64) -> Result<bool, StoreError>;
}
