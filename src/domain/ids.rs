//! Unguessable identifiers (`jti`, `sid`, salts, client secrets) from ring's `SystemRandom`.

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};

/// `n` random bytes.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], super::Error> {
    let mut buf = [0u8; N];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| super::Error::Internal("system randomness unavailable".into()))?;
    Ok(buf)
}

/// A 128-bit random id, base64url without padding (22 characters).
pub(crate) fn random_id() -> Result<String, super::Error> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<16>()?))
}

/// A refresh family's `sid`: a 48-bit random id (8 characters), which tells the user's
/// families apart, and the user's id ([`crate::store::family_sid`]).
pub(crate) fn random_sid(user_id: &str) -> Result<String, super::Error> {
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<6>()?);
    Ok(crate::store::family_sid(&id, user_id))
}

/// A 256-bit random secret, base64url without padding (43 characters).
pub(crate) fn random_secret() -> Result<String, super::Error> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_distinct_and_url_safe() {
        let a = super::random_id().unwrap();
        let b = super::random_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
}

/// Compares two byte strings in constant time: both go through HMAC-SHA256 under a one-off
/// random key and ring's constant-time tag check compares the results.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use ring::hmac;
    let Ok(key) = random_bytes::<32>() else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let tag = hmac::sign(&key, a);
    hmac::verify(&key, b, tag.as_ref()).is_ok()
}

#[cfg(test)]
mod ct_tests {
    #[test]
    fn equal_and_unequal() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
    }
}
