//! The `Dpop` service (RFC 9449; docs/dpop.md): a proof's checks, its single use and the server
//! nonces. The checks that need nothing but the proof and the request are shared with the
//! resource-server verifier (`tokend_token_shape::dpop`); this service adds what needs state:
//! the replay cache of `jti`s ([`ReplayStore`]), the nonces of RFC 9449 §8 and §9, and the
//! `tokend_dpop_proofs_total` metric.
//!
//! Nonces are stateless: HMAC-SHA256 of a time bucket under a key derived from
//! `TOKEND_KEY_ENCRYPTION_KEY` (so every instance of a deployment makes and accepts the same
//! ones), random per process in embedded mode. A nonce is accepted during its bucket and the
//! next one.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::{digest, hmac};

pub(crate) use tokend_token_shape::dpop::{
    check_proof, CheckedProof, ProofContext, ProofRefusal, MAX_AGE_SECS, MAX_SKEW_SECS,
};
pub(crate) use tokend_token_shape::jwk::CLIENT_ALGS;

use super::Error;
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::store::ReplayStore;

/// How long one nonce bucket lasts, seconds: a nonce lives between one and two of them.
pub(crate) const NONCE_BUCKET_SECS: i64 = 300;

/// How long a proof's `jti` is remembered, milliseconds: as long as its `iat` can pass the
/// window (at most [`MAX_SKEW_SECS`] ahead, then [`MAX_AGE_SECS`] old), and a second more.
pub(crate) const REPLAY_TTL_MS: i64 = (MAX_AGE_SECS + MAX_SKEW_SECS + 1) * 1000;

/// The length of a `jkt` (base64url of a SHA-256 digest), and of `dpop_jkt` (RFC 9449 §10).
pub(crate) const JKT_LEN: usize = 43;

/// The `DPoP` header of a request, as the HTTP layer found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProofHeader {
    /// No `DPoP` header.
    #[default]
    Absent,
    /// One `DPoP` header: the proof.
    One(String),
    /// Several headers, or one that is not text: refused for this reason (RFC 9449 §4.3).
    Unusable(ProofRefusal),
}

/// The request a proof must fit: its method and its path on this issuer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) method: &'a str,
    /// The route's path (`/oauth/token`); the issuer's origin is put in front (RFC 9449 §4.3
    /// step 9: the URI the client addressed, which is the issuer's).
    pub(crate) path: &'a str,
}

/// A proof that passed every check and was used for the first time: the key its tokens are
/// bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proven {
    /// The RFC 7638 thumbprint of the proof's key (`cnf.jkt`, RFC 9449 §6.1).
    pub(crate) jkt: String,
}

/// Whether `s` has the shape of a `jkt`: 43 base64url characters.
pub(crate) fn is_jkt(s: &str) -> bool {
    s.len() == JKT_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The stateless nonces of RFC 9449 §8 and §9.
struct Nonces {
    key: hmac::Key,
}

impl Nonces {
    /// A nonce key derived from `secret` (the key-encryption key, or random bytes): a separate
    /// key, so that a nonce says nothing about the secret it comes from.
    fn new(secret: &[u8]) -> Nonces {
        let derive = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let subkey = hmac::sign(&derive, b"tokend dpop nonce v1");
        Nonces {
            key: hmac::Key::new(hmac::HMAC_SHA256, subkey.as_ref()),
        }
    }

    fn bucket(now: i64) -> i64 {
        now.div_euclid(NONCE_BUCKET_SECS)
    }

    fn of_bucket(&self, bucket: i64) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, &bucket.to_be_bytes()))
    }

    /// The nonce to hand out at `now` (Unix seconds).
    fn current(&self, now: i64) -> String {
        self.of_bucket(Self::bucket(now))
    }

    /// Whether `nonce` was handed out in this bucket or the one before (checked in constant
    /// time by ring).
    fn accepts(&self, nonce: &str, now: i64) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        let bucket = Self::bucket(now);
        [bucket, bucket - 1]
            .iter()
            .any(|b| hmac::verify(&self.key, &b.to_be_bytes(), &tag).is_ok())
    }
}

/// The `Dpop` service: checks proofs, spends their `jti`s, hands out nonces.
pub(crate) struct Dpop {
    replay: Arc<dyn ReplayStore>,
    /// `Some` when `TOKEND_DPOP_NONCE=on`.
    nonces: Option<Nonces>,
    issuer: String,
    clock: SharedClock,
    metrics: Arc<Metrics>,
}

impl Dpop {
    /// The service for `issuer`; with `nonce_secret`, proofs must carry a nonce derived from it.
    pub(crate) fn new(
        replay: Arc<dyn ReplayStore>,
        issuer: String,
        nonce_secret: Option<&[u8]>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Dpop {
        // Every series from the start, so that a dashboard's rate of refusals is 0, not absent.
        metrics
            .dpop_proofs
            .with_label_values(&["accepted", "none"])
            .inc_by(0);
        for r in ProofRefusal::ALL {
            metrics
                .dpop_proofs
                .with_label_values(&["refused", r.as_str()])
                .inc_by(0);
        }
        Dpop {
            replay,
            nonces: nonce_secret.map(Nonces::new),
            issuer,
            clock,
            metrics,
        }
    }

    /// The nonce to send in `DPoP-Nonce` now, when nonces are required (RFC 9449 §8.2: a fresh
    /// one with every answer).
    pub(crate) fn nonce(&self) -> Option<String> {
        self.nonces.as_ref().map(|n| n.current(self.clock.now()))
    }

    /// Counts a refused proof by reason and logs it; gives the refusal back.
    pub(crate) fn refused(&self, refusal: ProofRefusal) -> ProofRefusal {
        self.metrics
            .dpop_proofs
            .with_label_values(&["refused", refusal.as_str()])
            .inc();
        tracing::debug!(reason = refusal.as_str(), "DPoP proof refused");
        refusal
    }

    /// The store-free checks of RFC 9449 §4.3 and the nonce of §8/§9, for a request to
    /// `target`; `access_token` is the token presented with the proof (`ath`). `None` when the
    /// request carried no proof. Nothing is spent: see [`Dpop::spend`].
    pub(crate) fn check(
        &self,
        header: &ProofHeader,
        target: Target<'_>,
        access_token: Option<&str>,
    ) -> Result<Option<CheckedProof>, ProofRefusal> {
        let proof = match header {
            ProofHeader::Absent => return Ok(None),
            ProofHeader::Unusable(r) => return Err(self.refused(*r)),
            ProofHeader::One(p) => p,
        };
        let uri = format!("{}{}", self.issuer, target.path);
        let ctx = ProofContext {
            method: target.method,
            uri: &uri,
            access_token,
            now: self.clock.now(),
        };
        let checked = check_proof(proof, &ctx).map_err(|r| self.refused(r))?;
        if let Some(nonces) = &self.nonces {
            let fresh = checked
                .nonce
                .as_deref()
                .is_some_and(|n| nonces.accepts(n, ctx.now));
            if !fresh {
                return Err(self.refused(ProofRefusal::Nonce));
            }
        }
        Ok(Some(checked))
    }

    /// Uses a checked proof once (RFC 9449 §11.1): its `jti` is remembered, under a hash of
    /// its key and `jti`, as long as the proof could pass the `iat` window. A second use, on
    /// any instance, is refused; a store that cannot answer fails closed.
    pub(crate) async fn spend(&self, proof: CheckedProof) -> Result<Proven, Error> {
        let mut material = Vec::with_capacity(proof.jkt.len() + 1 + proof.jti.len());
        material.extend_from_slice(proof.jkt.as_bytes());
        material.push(b'\n');
        material.extend_from_slice(proof.jti.as_bytes());
        let key = format!(
            "dpop:{}",
            URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &material))
        );
        if !self.replay.first_use(&key, REPLAY_TTL_MS).await? {
            return Err(Error::DpopProof(self.refused(ProofRefusal::Replay)));
        }
        Ok(Proven { jkt: proof.jkt })
    }

    /// Counts a proof that did what it was sent for: every check passed, its `jti` was spent,
    /// and its key was the one a token or family is bound to (where one is).
    pub(crate) fn accepted(&self) {
        self.metrics
            .dpop_proofs
            .with_label_values(&["accepted", "none"])
            .inc();
    }

    /// [`Dpop::spend`] of a proof when there is one.
    pub(crate) async fn spend_if_any(
        &self,
        proof: Option<CheckedProof>,
    ) -> Result<Option<Proven>, Error> {
        match proof {
            Some(checked) => Ok(Some(self.spend(checked).await?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_lives_through_its_bucket_and_the_next_one_only() {
        let n = Nonces::new(b"a secret of some length");
        let t = 1_800_000_000 - 1_800_000_000 % NONCE_BUCKET_SECS;
        let nonce = n.current(t);
        assert_eq!(nonce.len(), JKT_LEN);
        assert!(n.accepts(&nonce, t));
        assert!(n.accepts(&nonce, t + NONCE_BUCKET_SECS - 1));
        assert!(n.accepts(&nonce, t + 2 * NONCE_BUCKET_SECS - 1));
        assert!(!n.accepts(&nonce, t + 2 * NONCE_BUCKET_SECS));
        assert!(!n.accepts(&nonce, t - 1), "not before it was made");
        assert!(!n.accepts("not base64!", t));
        assert!(!n.accepts("", t));
        let other = Nonces::new(b"another secret");
        assert!(
            !other.accepts(&nonce, t),
            "a nonce is only good where it was made"
        );
        assert_eq!(
            Nonces::new(b"a secret of some length").current(t),
            nonce,
            "instances sharing the secret agree"
        );
    }

    #[test]
    fn jkt_shapes() {
        assert!(is_jkt("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"));
        assert!(!is_jkt("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9X"));
        assert!(!is_jkt("NzbLsXh8uDCcd+6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"));
    }
}
