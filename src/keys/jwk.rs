//! Key material: generation (Ed25519 with `ring`, RSA with `josekit`), RFC 7638 thumbprints,
//! signer and verifier objects built once per key, JWS compact signing and verifying, and the
//! pre-serialised JWKS document (RFC 7517).
//!
//! Every token goes through josekit's one JWS/JWT code path (header, claims, base64url, compact
//! serialisation, `alg`/`kid` checks); only the signature primitive under josekit's
//! [`JwsSigner`]/[`JwsVerifier`] interface is chosen per algorithm, the fastest one measured
//! (BENCHMARKS.md): `ring` for Ed25519 (about twice as fast as OpenSSL's, verification in
//! particular), OpenSSL through josekit for RS256 (`ring`'s RSA signing is about twice slower).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use josekit::jwk::{Jwk, KeyPair as _};
use josekit::jws::{EdDSA, JwsAlgorithm, JwsHeader, JwsSigner, JwsVerifier, RS256};
use josekit::jwt::JwtPayload;
use josekit::JoseError;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::ring::Minted;
use super::{Alg, KeyError, TokenError, MIN_RSA_BITS};

/// Longest token [`parse_header`] looks at.
pub(crate) const MAX_TOKEN_LEN: usize = 16 * 1024;

/// DER prefix of an Ed25519 PKCS#8 v1 `PrivateKeyInfo` (RFC 8410 §7), followed by the 32-byte seed.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// What follows the version in both PKCS#8 v1 and v2 (`OneAsymmetricKey`, as `ring` writes it).
const ED25519_ALG_AND_SEED_HEADER: [u8; 11] = [
    0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A public key as published in JWKS: `kty, kid, use, alg` and the public parameters only
/// (OKP: `crv, x`; RSA: `n, e`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PublicJwk {
    pub(crate) kty: String,
    pub(crate) kid: String,
    #[serde(rename = "use")]
    pub(crate) use_: String,
    pub(crate) alg: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) e: Option<String>,
}

impl PublicJwk {
    fn to_josekit(&self) -> Result<Jwk, KeyError> {
        let map = match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => return Err(KeyError::Crypto("JWK is not an object".into())),
        };
        Jwk::from_map(map).map_err(crypto)
    }
}

/// The JWKS served at `/.well-known/jwks.json`: serialised once per keyset change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksDocument {
    /// `{"keys":[...]}`.
    pub body: Bytes,
    /// Strong ETag: the quoted base64url SHA-256 of `body`.
    pub etag: String,
}

impl JwksDocument {
    /// Serialises `keys` in the order given.
    pub(crate) fn new(keys: &[&PublicJwk]) -> JwksDocument {
        #[derive(Serialize)]
        struct Set<'a> {
            keys: &'a [&'a PublicJwk],
        }
        // Serialising plain strings cannot fail; an empty set is the safe fallback.
        let body = serde_json::to_vec(&Set { keys }).unwrap_or_else(|_| b"{\"keys\":[]}".to_vec());
        let digest = ring::digest::digest(&ring::digest::SHA256, &body);
        let etag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(digest.as_ref()));
        JwksDocument {
            body: Bytes::from(body),
            etag,
        }
    }
}

fn crypto(e: impl std::fmt::Display) -> KeyError {
    KeyError::Crypto(e.to_string())
}

fn sha256_b64(input: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, input).as_ref())
}

/// RFC 7638 thumbprint of an OKP key: SHA-256 of `{"crv":..,"kty":"OKP","x":..}`, base64url.
pub(crate) fn thumbprint_okp(crv: &str, x: &str) -> String {
    sha256_b64(format!(r#"{{"crv":"{crv}","kty":"OKP","x":"{x}"}}"#).as_bytes())
}

/// RFC 7638 thumbprint of an RSA key: SHA-256 of `{"e":..,"kty":"RSA","n":..}`, base64url.
pub(crate) fn thumbprint_rsa(e: &str, n: &str) -> String {
    sha256_b64(format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#).as_bytes())
}

/// The Ed25519 seed in a PKCS#8 v1 or v2 document (as OpenSSL or `ring` write them).
fn ed25519_seed(der: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let v1 = der.len() == 48 && der[1] == 0x2e && der[4] == 0x00;
    let v2 =
        der.len() == 83 && der[1] == 0x51 && der[4] == 0x01 && der[48..51] == [0x81, 0x21, 0x00];
    if !(v1 || v2)
        || der[0] != 0x30
        || der[2..4] != [0x02, 0x01]
        || der[5..16] != ED25519_ALG_AND_SEED_HEADER
    {
        return None;
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    seed.copy_from_slice(&der[16..48]);
    Some(seed)
}

/// Re-encodes an Ed25519 PKCS#8 document as v1 (seed only), the form OpenSSL and josekit read,
/// and returns it with the raw public key. A v2 document's embedded public key must match.
fn ed25519_v1(der: &[u8]) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), KeyError> {
    let seed =
        ed25519_seed(der).ok_or_else(|| KeyError::Corrupt("not an Ed25519 PKCS#8 key".into()))?;
    let mut v1 = Zeroizing::new(Vec::with_capacity(48));
    v1.extend_from_slice(&ED25519_PKCS8_V1_PREFIX);
    v1.extend_from_slice(seed.as_ref());
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&v1).map_err(crypto)?;
    let public = pair.public_key().as_ref().to_vec();
    if der.len() == 83 {
        let checked =
            Ed25519KeyPair::from_pkcs8(der).map_err(|e| KeyError::Corrupt(e.to_string()))?;
        if checked.public_key().as_ref() != public.as_slice() {
            return Err(KeyError::Corrupt("Ed25519 public key mismatch".into()));
        }
    }
    Ok((v1, public))
}

/// Generates a new key of `alg` (RSA with `rsa_bits`). Slow for RSA: call off the executor.
pub(crate) fn generate(alg: Alg, rsa_bits: usize) -> Result<Minted, KeyError> {
    let der = match alg {
        Alg::EdDSA => {
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(crypto)?;
            ed25519_v1(doc.as_ref())?.0
        }
        Alg::RS256 => {
            if rsa_bits < MIN_RSA_BITS {
                return Err(KeyError::Config(format!(
                    "RSA keys need at least {MIN_RSA_BITS} bits"
                )));
            }
            let bits = u32::try_from(rsa_bits).map_err(crypto)?;
            let pair = RS256.generate_key_pair(bits).map_err(crypto)?;
            Zeroizing::new(pair.to_der_private_key())
        }
    };
    let material = KeyMaterial::from_pkcs8(alg, &der)?;
    Ok(Minted {
        kid: material.kid,
        private_pkcs8_der: der,
    })
}

/// Everything needed to sign and verify with one key, built once per key: its kid, public JWK
/// and josekit signer and verifier.
pub(crate) struct KeyMaterial {
    pub(crate) kid: String,
    pub(crate) alg: Alg,
    jwk: PublicJwk,
    signer: Box<dyn JwsSigner>,
    verifier: Box<dyn JwsVerifier>,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("signer", &"<redacted>")
            .finish()
    }
}

impl KeyMaterial {
    /// Parses a PKCS#8 private key of `alg` and derives its kid (RFC 7638 thumbprint).
    pub(crate) fn from_pkcs8(alg: Alg, der: &[u8]) -> Result<KeyMaterial, KeyError> {
        let (jwk, signer): (PublicJwk, Box<dyn JwsSigner>) = match alg {
            Alg::EdDSA => {
                let (v1, public) = ed25519_v1(der)?;
                let x = URL_SAFE_NO_PAD.encode(&public);
                let kid = thumbprint_okp("Ed25519", &x);
                let signer = RingEd25519Signer {
                    pair: std::sync::Arc::new(
                        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&v1).map_err(crypto)?,
                    ),
                    kid: kid.clone(),
                };
                let jwk = PublicJwk {
                    kty: "OKP".into(),
                    kid,
                    use_: "sig".into(),
                    alg: alg.as_str().into(),
                    crv: Some("Ed25519".into()),
                    x: Some(x),
                    n: None,
                    e: None,
                };
                (jwk, Box::new(signer))
            }
            Alg::RS256 => {
                let pair = RS256
                    .key_pair_from_der(der)
                    .map_err(|e| KeyError::Corrupt(e.to_string()))?;
                let bits = usize::try_from(pair.key_len())
                    .unwrap_or(0)
                    .saturating_mul(8);
                if bits < MIN_RSA_BITS {
                    return Err(KeyError::Corrupt(format!("RSA key of {bits} bits")));
                }
                let public = pair.to_jwk_public_key();
                let param = |name: &str| match public.parameter(name) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    _ => Err(KeyError::Crypto(format!("RSA public key without {name}"))),
                };
                let (n, e) = (param("n")?, param("e")?);
                let kid = thumbprint_rsa(&e, &n);
                let mut signer = RS256.signer_from_der(der).map_err(crypto)?;
                signer.set_key_id(kid.clone());
                let jwk = PublicJwk {
                    kty: "RSA".into(),
                    kid,
                    use_: "sig".into(),
                    alg: alg.as_str().into(),
                    crv: None,
                    x: None,
                    n: Some(n),
                    e: Some(e),
                };
                (jwk, Box::new(signer))
            }
        };
        let verifier = verifier_from_public_jwk(&jwk)?;
        Ok(KeyMaterial {
            kid: jwk.kid.clone(),
            alg,
            jwk,
            signer,
            verifier,
        })
    }

    /// The public JWK as published.
    pub(crate) fn public_jwk(&self) -> &PublicJwk {
        &self.jwk
    }

    /// Signs `claims` as a JWS compact JWT with header `{"alg","kid","typ"}`.
    pub(crate) fn sign(&self, typ: &str, claims: &Map<String, Value>) -> Result<String, KeyError> {
        let mut header = JwsHeader::new();
        header.set_token_type(typ);
        let payload = JwtPayload::from_map(claims.clone()).map_err(crypto)?;
        josekit::jwt::encode_with_signer(&payload, &header, self.signer.as_ref()).map_err(crypto)
    }

    /// Verifies the signature of `token` (whose header was checked already) and returns its claims.
    pub(crate) fn verify(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        match josekit::jwt::decode_with_verifier(token, self.verifier.as_ref()) {
            Ok((payload, _)) => Ok(payload.into()),
            Err(JoseError::InvalidSignature(_)) => Err(TokenError::BadSignature),
            Err(_) => Err(TokenError::Malformed),
        }
    }
}

/// Ed25519 signing with ring behind josekit's signer interface.
#[derive(Clone)]
struct RingEd25519Signer {
    pair: std::sync::Arc<Ed25519KeyPair>,
    kid: String,
}

impl std::fmt::Debug for RingEd25519Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingEd25519Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl JwsSigner for RingEd25519Signer {
    fn algorithm(&self) -> &dyn JwsAlgorithm {
        &EdDSA
    }

    fn key_id(&self) -> Option<&str> {
        Some(&self.kid)
    }

    fn signature_len(&self) -> usize {
        ring::signature::ED25519_PUBLIC_KEY_LEN * 2
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, JoseError> {
        Ok(self.pair.sign(message).as_ref().to_vec())
    }

    fn box_clone(&self) -> Box<dyn JwsSigner> {
        Box::new(self.clone())
    }
}

/// Ed25519 verification with ring behind josekit's verifier interface.
#[derive(Debug, Clone)]
struct RingEd25519Verifier {
    public: std::sync::Arc<[u8]>,
    kid: String,
}

impl JwsVerifier for RingEd25519Verifier {
    fn algorithm(&self) -> &dyn JwsAlgorithm {
        &EdDSA
    }

    fn key_id(&self) -> Option<&str> {
        Some(&self.kid)
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), JoseError> {
        UnparsedPublicKey::new(&ED25519, &self.public[..])
            .verify(message, signature)
            .map_err(|_| {
                JoseError::InvalidSignature(
                    std::io::Error::other("The signature does not match.").into(),
                )
            })
    }

    fn box_clone(&self) -> Box<dyn JwsVerifier> {
        Box::new(self.clone())
    }
}

/// A verifier built from a published JWK alone (ring for Ed25519, OpenSSL for RS256).
pub(crate) fn verifier_from_public_jwk(jwk: &PublicJwk) -> Result<Box<dyn JwsVerifier>, KeyError> {
    let j = jwk.to_josekit()?;
    let v: Box<dyn JwsVerifier> = match Alg::parse(&jwk.alg) {
        Some(Alg::EdDSA) => {
            // Validated like josekit does (an OKP key on Ed25519 with a 32-byte `x`), then
            // verified with ring.
            EdDSA.verifier_from_jwk(&j).map_err(crypto)?;
            let x = jwk
                .x
                .as_deref()
                .and_then(|x| URL_SAFE_NO_PAD.decode(x).ok())
                .filter(|x| x.len() == 32)
                .ok_or_else(|| KeyError::Crypto("Ed25519 JWK without a 32-byte x".into()))?;
            Box::new(RingEd25519Verifier {
                public: std::sync::Arc::from(x),
                kid: jwk.kid.clone(),
            })
        }
        Some(Alg::RS256) => {
            let mut v = RS256.verifier_from_jwk(&j).map_err(crypto)?;
            v.set_key_id(jwk.kid.clone());
            Box::new(v)
        }
        None => return Err(KeyError::Crypto(format!("unsupported alg {}", jwk.alg))),
    };
    Ok(v)
}

/// The header of a JWS compact token: three base64url parts, the first a JSON object.
pub(crate) fn parse_header(token: &str) -> Result<Map<String, Value>, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TokenError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 §3.1.
    #[test]
    fn rsa_thumbprint_matches_rfc_7638_example() {
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            thumbprint_rsa("AQAB", n),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    /// RFC 8037 Appendix A.3.
    #[test]
    fn okp_thumbprint_matches_rfc_8037_example() {
        assert_eq!(
            thumbprint_okp("Ed25519", "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    fn claims() -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("sub".into(), Value::String("u1".into()));
        m.insert("exp".into(), Value::from(2_000_000_000_i64));
        m
    }

    #[test]
    fn ring_generated_ed25519_keys_sign_and_verify_through_josekit() {
        let minted = generate(Alg::EdDSA, 0).unwrap();
        assert_eq!(minted.private_pkcs8_der.len(), 48, "stored as PKCS#8 v1");
        let m = KeyMaterial::from_pkcs8(Alg::EdDSA, &minted.private_pkcs8_der).unwrap();
        assert_eq!(m.kid, minted.kid);
        let jwk = m.public_jwk();
        assert_eq!(
            jwk.kid,
            thumbprint_okp("Ed25519", jwk.x.as_deref().unwrap())
        );
        let t = m.sign("at+jwt", &claims()).unwrap();
        assert_eq!(
            t,
            m.sign("at+jwt", &claims()).unwrap(),
            "Ed25519 is deterministic"
        );
        let header = parse_header(&t).unwrap();
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], Value::String(m.kid.clone()));
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header.len(), 3);
        assert_eq!(m.verify(&t).unwrap(), claims());
    }

    /// ring and OpenSSL give byte-identical Ed25519 tokens (the signature is deterministic), and
    /// each verifies the other's.
    #[test]
    fn ring_ed25519_matches_openssl_through_josekit() {
        let minted = generate(Alg::EdDSA, 0).unwrap();
        let m = KeyMaterial::from_pkcs8(Alg::EdDSA, &minted.private_pkcs8_der).unwrap();
        let mut openssl = EdDSA
            .signer_from_der(minted.private_pkcs8_der.as_slice())
            .unwrap();
        openssl.set_key_id(m.kid.clone());
        let mut header = JwsHeader::new();
        header.set_token_type("at+jwt");
        let payload = JwtPayload::from_map(claims()).unwrap();
        let by_openssl = josekit::jwt::encode_with_signer(&payload, &header, &openssl).unwrap();
        let by_ring = m.sign("at+jwt", &claims()).unwrap();
        assert_eq!(by_ring, by_openssl);
        let jwk =
            josekit::jwk::Jwk::from_bytes(serde_json::to_vec(m.public_jwk()).unwrap()).unwrap();
        let openssl_verifier = EdDSA.verifier_from_jwk(&jwk).unwrap();
        assert!(josekit::jwt::decode_with_verifier(&by_ring, &openssl_verifier).is_ok());
        let mut forged = by_ring.clone();
        forged.truncate(by_ring.len() - 4);
        forged.push_str("AAAA");
        assert_eq!(m.verify(&forged), Err(TokenError::BadSignature));
        assert!(josekit::jwt::decode_with_verifier(&forged, &openssl_verifier).is_err());
        let mut short = by_ring.clone();
        short.truncate(by_ring.len() - 10);
        assert_eq!(m.verify(&short), Err(TokenError::BadSignature));
    }

    #[test]
    fn ring_pkcs8_v2_documents_are_accepted_and_normalised() {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        assert_eq!(doc.as_ref().len(), 83);
        let from_v2 = KeyMaterial::from_pkcs8(Alg::EdDSA, doc.as_ref()).unwrap();
        let (v1, _) = ed25519_v1(doc.as_ref()).unwrap();
        let from_v1 = KeyMaterial::from_pkcs8(Alg::EdDSA, &v1).unwrap();
        assert_eq!(from_v1.kid, from_v2.kid);
        let mut bad = doc.as_ref().to_vec();
        bad[82] ^= 1;
        assert!(KeyMaterial::from_pkcs8(Alg::EdDSA, &bad).is_err());
        assert!(KeyMaterial::from_pkcs8(Alg::EdDSA, b"junk").is_err());
    }

    #[test]
    fn rsa_keys_sign_deterministically_and_verify() {
        let minted = generate(Alg::RS256, 2048).unwrap();
        let m = KeyMaterial::from_pkcs8(Alg::RS256, &minted.private_pkcs8_der).unwrap();
        let jwk = m.public_jwk();
        assert_eq!(jwk.e.as_deref(), Some("AQAB"));
        assert_eq!(m.kid, thumbprint_rsa("AQAB", jwk.n.as_deref().unwrap()));
        let t = m.sign("rt+jwt", &claims()).unwrap();
        assert_eq!(t, m.sign("rt+jwt", &claims()).unwrap());
        assert_eq!(m.verify(&t).unwrap(), claims());
        let mut forged = t.clone();
        forged.truncate(t.len() - 4);
        forged.push_str("AAAA");
        assert_eq!(m.verify(&forged), Err(TokenError::BadSignature));
        assert!(generate(Alg::RS256, 1024).is_err());
    }

    #[test]
    fn header_parsing_rejects_non_compact_input() {
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.a.b",
            "bnVsbA.a.b",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert_eq!(parse_header(bad), Err(TokenError::Malformed), "{bad}");
        }
    }

    #[test]
    fn jwks_document_has_a_strong_etag_over_its_body() {
        let m = KeyMaterial::from_pkcs8(
            Alg::EdDSA,
            &generate(Alg::EdDSA, 0).unwrap().private_pkcs8_der,
        )
        .unwrap();
        let doc = JwksDocument::new(&[m.public_jwk()]);
        assert!(doc.etag.starts_with('"') && doc.etag.ends_with('"'));
        assert_eq!(doc.etag, format!("\"{}\"", sha256_b64(&doc.body)));
        let v: Value = serde_json::from_slice(&doc.body).unwrap();
        let k = &v["keys"][0];
        assert_eq!(k["kty"], "OKP");
        assert_eq!(k["use"], "sig");
        assert_eq!(k["alg"], "EdDSA");
        assert!(k.get("d").is_none());
    }
}
