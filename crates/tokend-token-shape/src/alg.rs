//! The signing algorithms tokend issues tokens with, and the only ones a verifier accepts
//! (`docs/tokens.md`, "Validation"): `none` and the `HS*` family cannot be expressed.

/// A JWS algorithm (RFC 7518 §3.1) tokend can sign with and a verifier may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Alg {
    /// Ed25519 (RFC 8037).
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
}

impl Alg {
    /// Every algorithm, in the default order of preference.
    pub const ALL: [Alg; 2] = [Alg::EdDSA, Alg::RS256];

    /// Exact, case-sensitive JOSE names only (RFC 7515 §4.1.1: `alg` is case-sensitive).
    pub fn parse(name: &str) -> Option<Alg> {
        match name {
            "EdDSA" => Some(Alg::EdDSA),
            "RS256" => Some(Alg::RS256),
            _ => None,
        }
    }

    /// The JOSE `alg` name.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_nothing_else_parses() {
        for alg in Alg::ALL {
            assert_eq!(Alg::parse(alg.as_str()), Some(alg));
            assert_eq!(alg.to_string(), alg.as_str());
        }
        for name in ["none", "HS256", "eddsa", "rs256", "RS384", "ES256", ""] {
            assert_eq!(Alg::parse(name), None, "{name}");
        }
    }
}
