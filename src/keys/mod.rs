//! Signing keys: one key ring per algorithm, rotation on a schedule that is a pure function of
//! time, the JWKS document, and the stores that keep the keyset (a directory or MongoDB).

use serde::{Deserialize, Serialize};

/// A signing algorithm tokend can hold a key ring for (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alg {
    /// Ed25519 (RFC 8037).
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
}

impl Alg {
    /// Exact, case-sensitive JOSE names only.
    pub fn parse(name: &str) -> Option<Alg> {
        match name {
            "EdDSA" => Some(Alg::EdDSA),
            "RS256" => Some(Alg::RS256),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::RS256 => "RS256",
        }
    }
}

impl std::fmt::Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
