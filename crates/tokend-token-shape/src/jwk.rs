//! Public keys that clients hold, presented as JWKs (RFC 7517): the key in a DPoP proof's header
//! (RFC 9449 §4.2) and the keys of a client that authenticates with `private_key_jwt`
//! (RFC 7523 §2.2). Only public members are accepted; a JWK carrying a private member is
//! refused, so that a client that leaks its key by mistake learns it at once. Signatures are
//! checked with `ring` (docs/dpop.md, "Proofs").

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{
    RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519,
    RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
};
use serde_json::{Map, Value};

/// The JWS algorithms a client key may sign with (RFC 7518 §3, RFC 8037 §3.1).
pub const CLIENT_ALGS: [&str; 4] = ["ES256", "EdDSA", "RS256", "PS256"];

/// The smallest RSA modulus accepted, in bits (RFC 7518 §3.3).
const MIN_RSA_BITS: usize = 2048;

/// Members that only a private key has (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// Why a client key or its signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicKeyError {
    /// Not a JWK of a supported type, or a member is missing or malformed.
    Unsupported,
    /// The JWK carries private members.
    Private,
    /// The algorithm is not one of [`CLIENT_ALGS`] or does not fit the key.
    Alg,
    /// The signature does not verify.
    Signature,
}

impl std::fmt::Display for PublicKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PublicKeyError::Unsupported => "the key is not a supported public JWK",
            PublicKeyError::Private => "the key has private members",
            PublicKeyError::Alg => "the algorithm does not fit the key",
            PublicKeyError::Signature => "the signature does not verify",
        })
    }
}

impl std::error::Error for PublicKeyError {}

/// A client's public key, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// P-256 (`kty` `EC`): the uncompressed point `04 || x || y`.
    P256 {
        point: Vec<u8>,
        x: String,
        y: String,
    },
    /// Ed25519 (`kty` `OKP`).
    Ed25519 { public: Vec<u8>, x: String },
    /// RSA of at least 2048 bits: big-endian modulus and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
        n_b64: String,
        e_b64: String,
    },
}

fn member<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<&'a str, PublicKeyError> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or(PublicKeyError::Unsupported)
}

fn decoded(b64: &str) -> Result<Vec<u8>, PublicKeyError> {
    URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| PublicKeyError::Unsupported)
}

/// The big-endian integer without leading zero bytes (RFC 7518 §2 "Base64urlUInt" has none;
/// some encoders add one, which changes neither the key nor, once stripped, its length).
fn unsigned(mut bytes: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}

impl PublicKey {
    /// Reads a public JWK: `EC` on `P-256`, `OKP` on `Ed25519`, or `RSA` of at least 2048 bits.
    pub fn from_jwk(jwk: &Map<String, Value>) -> Result<PublicKey, PublicKeyError> {
        if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
            return Err(PublicKeyError::Private);
        }
        match member(jwk, "kty")? {
            "EC" => {
                if member(jwk, "crv")? != "P-256" {
                    return Err(PublicKeyError::Unsupported);
                }
                let (x, y) = (member(jwk, "x")?, member(jwk, "y")?);
                let (xb, yb) = (decoded(x)?, decoded(y)?);
                if xb.len() != 32 || yb.len() != 32 {
                    return Err(PublicKeyError::Unsupported);
                }
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(&xb);
                point.extend_from_slice(&yb);
                Ok(PublicKey::P256 {
                    point,
                    x: x.to_string(),
                    y: y.to_string(),
                })
            }
            "OKP" => {
                if member(jwk, "crv")? != "Ed25519" {
                    return Err(PublicKeyError::Unsupported);
                }
                let x = member(jwk, "x")?;
                let public = decoded(x)?;
                if public.len() != 32 {
                    return Err(PublicKeyError::Unsupported);
                }
                Ok(PublicKey::Ed25519 {
                    public,
                    x: x.to_string(),
                })
            }
            "RSA" => {
                let (n_b64, e_b64) = (member(jwk, "n")?, member(jwk, "e")?);
                let n = unsigned(&decoded(n_b64)?).to_vec();
                let e = unsigned(&decoded(e_b64)?).to_vec();
                if n.len() * 8 < MIN_RSA_BITS || e.is_empty() || e.len() > 4 {
                    return Err(PublicKeyError::Unsupported);
                }
                Ok(PublicKey::Rsa {
                    n,
                    e,
                    n_b64: n_b64.to_string(),
                    e_b64: e_b64.to_string(),
                })
            }
            _ => Err(PublicKeyError::Unsupported),
        }
    }

    /// Whether `alg` is one this key signs with.
    pub fn fits(&self, alg: &str) -> bool {
        matches!(
            (self, alg),
            (PublicKey::P256 { .. }, "ES256")
                | (PublicKey::Ed25519 { .. }, "EdDSA")
                | (PublicKey::Rsa { .. }, "RS256" | "PS256")
        )
    }

    /// The RFC 7638 thumbprint (SHA-256, base64url): `jkt` of RFC 9449 §6.1. The members are
    /// hashed as they were presented, which RFC 7638 §3.2 requires (no re-encoding).
    pub fn thumbprint(&self) -> String {
        let canonical = match self {
            PublicKey::P256 { x, y, .. } => {
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
            PublicKey::Ed25519 { x, .. } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
            PublicKey::Rsa { n_b64, e_b64, .. } => {
                format!(r#"{{"e":"{e_b64}","kty":"RSA","n":"{n_b64}"}}"#)
            }
        };
        URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ))
    }

    /// Checks a JWS signature (RFC 7515 §5.2) made with `alg` over `signing_input`.
    pub fn verify(
        &self,
        alg: &str,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), PublicKeyError> {
        if !self.fits(alg) {
            return Err(PublicKeyError::Alg);
        }
        let verified = match self {
            PublicKey::P256 { point, .. } => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(signing_input, signature)
            }
            PublicKey::Ed25519 { public, .. } => {
                UnparsedPublicKey::new(&ED25519, public).verify(signing_input, signature)
            }
            PublicKey::Rsa { n, e, .. } => {
                let params = if alg == "PS256" {
                    &RSA_PSS_2048_8192_SHA256
                } else {
                    &RSA_PKCS1_2048_8192_SHA256
                };
                RsaPublicKeyComponents { n, e }.verify(params, signing_input, signature)
            }
        };
        verified.map_err(|_| PublicKeyError::Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use serde_json::json;

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn ed25519_keys_verify_their_signatures_and_nothing_else() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk =
            object(json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())}));
        let key = PublicKey::from_jwk(&jwk).unwrap();
        let sig = pair.sign(b"a.b");
        assert_eq!(key.verify("EdDSA", b"a.b", sig.as_ref()), Ok(()));
        assert_eq!(
            key.verify("EdDSA", b"a.c", sig.as_ref()),
            Err(PublicKeyError::Signature)
        );
        assert_eq!(
            key.verify("ES256", b"a.b", sig.as_ref()),
            Err(PublicKeyError::Alg)
        );
        assert_eq!(
            key.verify("none", b"a.b", sig.as_ref()),
            Err(PublicKeyError::Alg)
        );
    }

    #[test]
    fn p256_keys_verify_fixed_width_signatures() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        let jwk = object(json!({"kty": "EC", "crv": "P-256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65])}));
        let key = PublicKey::from_jwk(&jwk).unwrap();
        let sig = pair.sign(&rng, b"header.payload").unwrap();
        assert_eq!(key.verify("ES256", b"header.payload", sig.as_ref()), Ok(()));
        assert_eq!(
            key.verify("ES256", b"header.payloaD", sig.as_ref()),
            Err(PublicKeyError::Signature)
        );
    }

    #[test]
    fn rsa_keys_verify_pkcs1_and_pss_and_refuse_short_moduli() {
        use josekit::jwk::alg::rsa::RsaKeyPair;
        use josekit::jws::{PS256, RS256};
        let pair = RsaKeyPair::generate(2048).unwrap();
        let public = object(serde_json::to_value(pair.to_jwk_public_key()).unwrap());
        let key = PublicKey::from_jwk(&public).unwrap();
        for (alg, signer) in [
            (
                "RS256",
                RS256
                    .signer_from_der(pair.to_der_private_key())
                    .map(|s| Box::new(s) as Box<dyn josekit::jws::JwsSigner>),
            ),
            (
                "PS256",
                PS256
                    .signer_from_der(pair.to_der_private_key())
                    .map(|s| Box::new(s) as Box<dyn josekit::jws::JwsSigner>),
            ),
        ] {
            let sig = signer.unwrap().sign(b"x.y").unwrap();
            assert_eq!(key.verify(alg, b"x.y", &sig), Ok(()), "{alg}");
            assert_eq!(
                key.verify(alg, b"x.z", &sig),
                Err(PublicKeyError::Signature),
                "{alg}"
            );
        }
        let private = object(serde_json::to_value(pair.to_jwk_private_key()).unwrap());
        assert_eq!(PublicKey::from_jwk(&private), Err(PublicKeyError::Private));
        let mut short = public.clone();
        short.insert("n".into(), json!(b64(&[0xff; 128])));
        assert_eq!(
            PublicKey::from_jwk(&short),
            Err(PublicKeyError::Unsupported)
        );
    }

    #[test]
    fn thumbprints_follow_rfc_7638() {
        // RFC 7638 §3.1's example key and thumbprint.
        let jwk = object(json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }));
        let key = PublicKey::from_jwk(&jwk).unwrap();
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            json!({}),
            json!({"kty": "oct", "k": "AAAA"}),
            json!({"kty": "OKP", "crv": "X25519", "x": b64(&[1; 32])}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 31])}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": "not base64!"}),
            json!({"kty": "EC", "crv": "P-384", "x": b64(&[1; 48]), "y": b64(&[1; 48])}),
            json!({"kty": "EC", "crv": "P-256", "x": b64(&[1; 32])}),
            json!({"kty": "RSA", "n": b64(&[0xff; 256]), "e": ""}),
        ] {
            assert_eq!(
                PublicKey::from_jwk(&object(bad.clone())),
                Err(PublicKeyError::Unsupported),
                "{bad}"
            );
        }
        let private =
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 32]), "d": b64(&[2; 32])});
        assert_eq!(
            PublicKey::from_jwk(&object(private)),
            Err(PublicKeyError::Private)
        );
    }
}
