//! Signing keys: the algorithms with a key ring, the RSA size, and the rotation schedule with
//! the constraints docs/keys.md states (prepublication covers two JWKS cache lifetimes, a key
//! signs at least as long as it is prepublished, every instance reloads within 30 s).

use std::time::Duration;

use tokend_token_shape::Alg;

use super::env::Reader;
use super::values::parse_duration;
use super::vars;

/// Largest allowed keyset reload interval: docs/keys.md promises every instance reloads within 30 s.
pub(crate) const MAX_KEYSET_RELOAD: Duration = Duration::from_secs(30);

/// The settings of this concern, validated.
pub(super) struct Signing {
    pub(super) signing_algs: Vec<Alg>,
    pub(super) rsa_bits: usize,
    pub(super) key_rotation: Duration,
    pub(super) key_prepublish: Duration,
    pub(super) jwks_max_age: Duration,
    pub(super) keyset_reload: Duration,
}

pub(super) fn read(r: &mut Reader<'_>) -> Option<Signing> {
    let signing_algs = r.value(&vars::SIGNING_ALGS, parse_algs);
    let rsa_bits = r.value(&vars::RSA_BITS, parse_rsa_bits);
    let key_rotation = r.value(&vars::KEY_ROTATION, parse_duration);
    let key_prepublish = r.value(&vars::KEY_PREPUBLISH, parse_duration);
    let jwks_max_age = r.value(&vars::JWKS_MAX_AGE, parse_duration);
    let keyset_reload = r.value(&vars::KEYSET_RELOAD, parse_duration);

    if let (Some(prepublish), Some(max_age)) = (key_prepublish, jwks_max_age) {
        if prepublish < max_age * 2 {
            r.fail(
                &vars::KEY_PREPUBLISH,
                format!(
                    "must be at least 2 x {} ({}), so every JWKS cache holds a key before it signs",
                    vars::JWKS_MAX_AGE.name,
                    humantime::format_duration(max_age * 2)
                ),
            );
        }
    }
    if let (Some(rotation), Some(prepublish)) = (key_rotation, key_prepublish) {
        if rotation < prepublish {
            r.fail(
                &vars::KEY_ROTATION,
                format!("must be at least {}", vars::KEY_PREPUBLISH.name),
            );
        }
    }
    if keyset_reload.is_some_and(|d| d > MAX_KEYSET_RELOAD) {
        r.fail(&vars::KEYSET_RELOAD, "must be at most 30s");
    }

    Some(Signing {
        signing_algs: signing_algs?,
        rsa_bits: rsa_bits?,
        key_rotation: key_rotation?,
        key_prepublish: key_prepublish?,
        jwks_max_age: jwks_max_age?,
        keyset_reload: keyset_reload?,
    })
}

/// A comma list of distinct supported algorithms; the first signs by default.
fn parse_algs(v: &str) -> Result<Vec<Alg>, String> {
    let mut algs = Vec::new();
    for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let alg = Alg::parse(name)
            .ok_or_else(|| format!("unsupported algorithm {name:?} (supported: EdDSA, RS256)"))?;
        if algs.contains(&alg) {
            return Err(format!("{name} listed twice"));
        }
        algs.push(alg);
    }
    if algs.is_empty() {
        return Err("at least one algorithm is required".into());
    }
    Ok(algs)
}

/// 2048, 3072 or 4096 bits (docs/keys.md: 2048 at least).
fn parse_rsa_bits(v: &str) -> Result<usize, String> {
    v.trim()
        .parse::<usize>()
        .ok()
        .filter(|b| [2048, 3072, 4096].contains(b))
        .ok_or_else(|| "expected 2048, 3072 or 4096".to_string())
}
