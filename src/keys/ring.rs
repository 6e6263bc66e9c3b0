//! The key ring schedule as pure functions of the keyset and `now` (Unix seconds).
//!
//! Invariant kept by every function here: for each configured algorithm exactly one key is
//! active at every instant. A successor activates at the very second its predecessor retires
//! (`successor.activates == predecessor.retires`), and is created `prepublish` earlier so that
//! every JWKS cache holds it before it signs. New key material comes from a `mint` callback so
//! these functions stay free of cryptography and randomness.

use zeroize::Zeroizing;

use super::{Alg, KeyError, KeyState, StoredKey};

/// Timing of the schedule in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// How long a key signs.
    pub(crate) rotation: i64,
    /// How long before a key signs it is published.
    pub(crate) prepublish: i64,
    /// How long after a key retires it still verifies.
    pub(crate) retention: i64,
}

/// Fresh key material: a `kid` and its PKCS#8 private key.
pub(crate) struct Minted {
    pub(crate) kid: String,
    pub(crate) private_pkcs8_der: Zeroizing<Vec<u8>>,
}

/// Supplies key material for an algorithm.
pub(crate) type Mint<'a> = dyn FnMut(Alg) -> Result<Minted, KeyError> + 'a;

/// The state of `key` at `now`.
pub(crate) fn state(key: &StoredKey, now: i64) -> KeyState {
    if key.revoked || now >= key.expires {
        KeyState::Gone
    } else if now < key.activates {
        KeyState::Pending
    } else if now < key.retires {
        KeyState::Active
    } else {
        KeyState::Retired
    }
}

/// Whether a token signed by `key` may be verified at `now` (any state but gone).
pub(crate) fn verifies(key: &StoredKey, now: i64) -> bool {
    state(key, now) != KeyState::Gone
}

/// The key of `alg` that signs at `at`: not revoked, `activates <= at < retires`. Should
/// schedules ever overlap, the most recently activated key wins.
pub(crate) fn active_at(keys: &[StoredKey], alg: Alg, at: i64) -> Option<&StoredKey> {
    keys.iter()
        .filter(|k| {
            k.alg == alg && !k.revoked && k.activates <= at && at < k.retires && at < k.expires
        })
        .max_by(|a, b| {
            a.activates
                .cmp(&b.activates)
                .then_with(|| a.kid.cmp(&b.kid))
        })
}

fn active_index(keys: &[StoredKey], alg: Alg, at: i64) -> Option<usize> {
    let kid = active_at(keys, alg, at)?.kid.clone();
    keys.iter().position(|k| k.kid == kid)
}

/// When the active key of `alg` needs a successor at `now`: `(activates, retires)` of the key to
/// create. Due once the active key has at most `prepublish` left and no key of `alg` takes over
/// by its end.
pub(crate) fn successor_due(
    keys: &[StoredKey],
    alg: Alg,
    sched: &Schedule,
    now: i64,
) -> Option<(i64, i64)> {
    let active = active_at(keys, alg, now)?;
    if active.retires.saturating_sub(now) > sched.prepublish {
        return None;
    }
    let covered = keys.iter().any(|k| {
        k.alg == alg
            && !k.revoked
            && k.kid != active.kid
            && k.activates > active.activates
            && k.activates <= active.retires
            && k.retires > active.retires
    });
    if covered {
        return None;
    }
    let activates = active.retires;
    Some((activates, activates.saturating_add(sched.rotation)))
}

fn new_key(minted: Minted, alg: Alg, now: i64, activates: i64, sched: &Schedule) -> StoredKey {
    let retires = activates.saturating_add(sched.rotation);
    StoredKey {
        kid: minted.kid,
        alg,
        created: now,
        activates,
        retires,
        expires: retires.saturating_add(sched.retention),
        revoked: false,
        private_pkcs8_der: minted.private_pkcs8_der,
    }
}

fn push_unique(keys: &mut Vec<StoredKey>, key: StoredKey) -> Result<(), KeyError> {
    if keys.iter().any(|k| k.kid == key.kid) {
        return Err(KeyError::Crypto(format!("duplicate kid {}", key.kid)));
    }
    keys.push(key);
    Ok(())
}

/// Makes a key of `alg` active at `now` when none is: the earliest pending key is brought forward
/// to activate now (it is already published), otherwise a new key is minted that activates at
/// once (the one case a key signs without prepublication: first start, a revoked active key, or
/// a keyset left without maintenance for longer than a rotation). Returns the kid made active, if
/// any change was needed.
pub(crate) fn ensure_active(
    keys: &mut Vec<StoredKey>,
    alg: Alg,
    sched: &Schedule,
    now: i64,
    mint: &mut Mint<'_>,
) -> Result<Option<String>, KeyError> {
    if active_at(keys, alg, now).is_some() {
        return Ok(None);
    }
    let pending = keys
        .iter_mut()
        .filter(|k| k.alg == alg && !k.revoked && k.activates > now && k.retires > k.activates)
        .min_by(|a, b| {
            a.activates
                .cmp(&b.activates)
                .then_with(|| a.kid.cmp(&b.kid))
        });
    if let Some(p) = pending {
        p.activates = now;
        return Ok(Some(p.kid.clone()));
    }
    let key = new_key(mint(alg)?, alg, now, now, sched);
    let kid = key.kid.clone();
    push_unique(keys, key)?;
    Ok(Some(kid))
}

/// One maintenance step at `now`: forget keys past `expires`, stretch `expires` when the
/// retention grew, make sure every algorithm in `algs` has an active key, and create the
/// successor of each active key that is due. Returns whether anything changed.
pub(crate) fn maintain(
    keys: &mut Vec<StoredKey>,
    algs: &[Alg],
    sched: &Schedule,
    now: i64,
    mint: &mut Mint<'_>,
) -> Result<bool, KeyError> {
    let before = keys.len();
    keys.retain(|k| now < k.expires);
    let mut changed = keys.len() != before;

    for k in keys.iter_mut().filter(|k| !k.revoked) {
        let expires = k.retires.saturating_add(sched.retention);
        if expires > k.expires {
            k.expires = expires;
            changed = true;
        }
    }

    for &alg in algs {
        if ensure_active(keys, alg, sched, now, mint)?.is_some() {
            changed = true;
        }
        if let Some((activates, _)) = successor_due(keys, alg, sched, now) {
            let key = new_key(mint(alg)?, alg, now, activates, sched);
            push_unique(keys, key)?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Operator rotation of `alg` at `now`: a new key published now that activates at
/// `now + prepublish`, when the active key now retires. A pending successor that never signed is
/// replaced by the new key. Returns the kids of the new (or newly activated) keys.
pub(crate) fn rotate_now(
    keys: &mut Vec<StoredKey>,
    alg: Alg,
    sched: &Schedule,
    now: i64,
    mint: &mut Mint<'_>,
) -> Result<Vec<String>, KeyError> {
    if let Some(kid) = ensure_active(keys, alg, sched, now, mint)? {
        return Ok(vec![kid]);
    }
    let Some(active) = active_index(keys, alg, now) else {
        return Err(KeyError::NoActiveKey(alg));
    };
    let active_kid = keys[active].kid.clone();
    keys.retain(|k| !(k.alg == alg && !k.revoked && k.activates > now && k.kid != active_kid));

    let switch = now.saturating_add(sched.prepublish);
    let key = new_key(mint(alg)?, alg, now, switch, sched);
    let kid = key.kid.clone();
    if let Some(a) = keys.iter_mut().find(|k| k.kid == active_kid) {
        a.retires = switch;
        a.expires = switch.saturating_add(sched.retention);
    }
    push_unique(keys, key)?;
    Ok(vec![kid])
}

/// What revoking a key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Revoked {
    /// No key has this kid.
    Unknown,
    /// The key was revoked before.
    Already,
    /// The key is now revoked; when it was the active key, `replacement` is the key that signs
    /// in its place from now on.
    Now { replacement: Option<String> },
}

/// Revokes `kid` at `now`: out of JWKS and verification at once, its private key destroyed. If
/// it was the active key of an algorithm in `algs`, another key becomes active immediately (see
/// [`ensure_active`]).
pub(crate) fn revoke(
    keys: &mut Vec<StoredKey>,
    kid: &str,
    algs: &[Alg],
    sched: &Schedule,
    now: i64,
    mint: &mut Mint<'_>,
) -> Result<Revoked, KeyError> {
    let Some(key) = keys.iter_mut().find(|k| k.kid == kid) else {
        return Ok(Revoked::Unknown);
    };
    if key.revoked {
        return Ok(Revoked::Already);
    }
    key.revoked = true;
    key.private_pkcs8_der = Zeroizing::new(Vec::new());
    let alg = key.alg;
    let replacement = if algs.contains(&alg) {
        ensure_active(keys, alg, sched, now, mint)?
    } else {
        None
    };
    Ok(Revoked::Now { replacement })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;
    const D: i64 = 86_400;
    const T0: i64 = 1_700_000_000;

    fn sched() -> Schedule {
        Schedule {
            rotation: 7 * D,
            prepublish: H,
            retention: 14 * D + 30,
        }
    }

    /// A mint producing kids `<alg>-1`, `<alg>-2`, ... and counting calls.
    struct FakeMint {
        n: usize,
    }

    impl FakeMint {
        fn new() -> Self {
            Self { n: 0 }
        }
        fn mint(&mut self) -> impl FnMut(Alg) -> Result<Minted, KeyError> + '_ {
            move |alg| {
                self.n += 1;
                Ok(Minted {
                    kid: format!("{alg}-{}", self.n),
                    private_pkcs8_der: Zeroizing::new(vec![1, 2, 3]),
                })
            }
        }
    }

    fn no_mint(alg: Alg) -> Result<Minted, KeyError> {
        panic!("unexpected mint for {alg}")
    }

    fn of(keys: &[StoredKey], alg: Alg, st: KeyState, now: i64) -> Vec<String> {
        keys.iter()
            .filter(|k| k.alg == alg && state(k, now) == st)
            .map(|k| k.kid.clone())
            .collect()
    }

    fn assert_one_active_each_second(keys: &[StoredKey], alg: Alg, from: i64, to: i64, step: i64) {
        let mut t = from;
        while t < to {
            let n = keys
                .iter()
                .filter(|k| k.alg == alg && state(k, t) == KeyState::Active)
                .count();
            assert_eq!(n, 1, "{alg} at {t}: {n} active keys");
            t += step;
        }
    }

    fn key(kid: &str, alg: Alg, activates: i64, retires: i64, expires: i64) -> StoredKey {
        StoredKey {
            kid: kid.into(),
            alg,
            created: activates,
            activates,
            retires,
            expires,
            revoked: false,
            private_pkcs8_der: Zeroizing::new(vec![9]),
        }
    }

    #[test]
    fn states_follow_the_timestamps() {
        let k = key("a", Alg::EdDSA, 100, 200, 300);
        assert_eq!(state(&k, 99), KeyState::Pending);
        assert_eq!(state(&k, 100), KeyState::Active);
        assert_eq!(state(&k, 199), KeyState::Active);
        assert_eq!(state(&k, 200), KeyState::Retired);
        assert_eq!(state(&k, 299), KeyState::Retired);
        assert_eq!(state(&k, 300), KeyState::Gone);
        let mut r = k.clone();
        r.revoked = true;
        for t in [99, 100, 200, 300] {
            assert_eq!(state(&r, t), KeyState::Gone);
        }
    }

    #[test]
    fn a_fresh_keyset_gets_one_active_key_per_alg_activating_now() {
        let mut keys = Vec::new();
        let mut m = FakeMint::new();
        let changed = maintain(
            &mut keys,
            &[Alg::EdDSA, Alg::RS256],
            &sched(),
            T0,
            &mut m.mint(),
        )
        .unwrap();
        assert!(changed);
        assert_eq!(keys.len(), 2);
        for alg in [Alg::EdDSA, Alg::RS256] {
            let a = active_at(&keys, alg, T0).unwrap();
            assert_eq!(a.activates, T0);
            assert_eq!(a.retires, T0 + 7 * D);
            assert_eq!(a.expires, T0 + 7 * D + 14 * D + 30);
        }
        // Nothing more to do until the successor is due.
        assert!(!maintain(
            &mut keys,
            &[Alg::EdDSA, Alg::RS256],
            &sched(),
            T0 + D,
            &mut no_mint
        )
        .unwrap());
    }

    #[test]
    fn full_lifecycle_pending_active_retired_gone_for_both_algs() {
        let algs = [Alg::EdDSA, Alg::RS256];
        let s = sched();
        let mut keys = Vec::new();
        let mut m = FakeMint::new();
        maintain(&mut keys, &algs, &s, T0, &mut m.mint()).unwrap();
        let first: Vec<String> = algs
            .iter()
            .map(|&a| active_at(&keys, a, T0).unwrap().kid.clone())
            .collect();

        // Not due one second before the prepublish window opens.
        let window = T0 + 7 * D - H;
        assert!(!maintain(&mut keys, &algs, &s, window - 1, &mut no_mint).unwrap());
        // Due exactly `prepublish` before the switch.
        assert!(maintain(&mut keys, &algs, &s, window, &mut m.mint()).unwrap());
        assert_eq!(keys.len(), 4);
        for (i, &alg) in algs.iter().enumerate() {
            let pending = of(&keys, alg, KeyState::Pending, window);
            assert_eq!(pending.len(), 1);
            let p = keys.iter().find(|k| k.kid == pending[0]).unwrap();
            assert_eq!(p.created, window);
            assert_eq!(p.activates, T0 + 7 * D);
            assert_eq!(active_at(&keys, alg, window).unwrap().kid, first[i]);
            // At the switch the successor is active, the first key retired.
            let switch = T0 + 7 * D;
            assert_eq!(active_at(&keys, alg, switch - 1).unwrap().kid, first[i]);
            assert_eq!(active_at(&keys, alg, switch).unwrap().kid, pending[0]);
            let f = keys.iter().find(|k| k.kid == first[i]).unwrap();
            assert_eq!(state(f, switch), KeyState::Retired);
        }
        // Running again in the window creates nothing more.
        assert!(!maintain(&mut keys, &algs, &s, window + 60, &mut no_mint).unwrap());

        // Walk two months in one-hour steps, maintaining as the server would.
        let mut t = window;
        while t < T0 + 60 * D {
            maintain(&mut keys, &algs, &s, t, &mut m.mint()).unwrap();
            for &alg in &algs {
                assert_eq!(of(&keys, alg, KeyState::Active, t).len(), 1);
                assert!(of(&keys, alg, KeyState::Pending, t).len() <= 1);
            }
            t += H;
        }
        // The first keys are gone and forgotten once their retention passed.
        for kid in &first {
            assert!(keys.iter().all(|k| &k.kid != kid));
        }
        // Retention of 14 days + 30 s with 7-day rotation: one active, at most three retired
        // (briefly, for 30 s), at most one pending.
        for &alg in &algs {
            assert!(keys.iter().filter(|k| k.alg == alg).count() <= 5);
        }
        for &alg in &algs {
            assert_one_active_each_second(&keys, alg, T0 + 45 * D, T0 + 60 * D, 601);
        }
    }

    #[test]
    fn the_key_that_signed_just_before_a_switch_still_verifies_after_it() {
        let algs = [Alg::EdDSA];
        let s = sched();
        let mut keys = Vec::new();
        let mut m = FakeMint::new();
        maintain(&mut keys, &algs, &s, T0, &mut m.mint()).unwrap();
        maintain(&mut keys, &algs, &s, T0 + 7 * D - H, &mut m.mint()).unwrap();
        let switch = T0 + 7 * D;
        let signer = active_at(&keys, Alg::EdDSA, switch - 1).unwrap().clone();
        let next = active_at(&keys, Alg::EdDSA, switch).unwrap().clone();
        assert_ne!(signer.kid, next.kid);
        maintain(&mut keys, &algs, &s, switch + 1, &mut m.mint()).unwrap();
        let k = keys.iter().find(|k| k.kid == signer.kid).unwrap();
        // A token signed at switch-1 lives at most `retention - 30s`; it verifies to the end.
        assert!(verifies(k, switch + 1));
        assert!(verifies(k, switch - 1 + 14 * D + 29));
        assert!(!verifies(k, switch + 14 * D + 30));
        // The successor, published an hour before, verified already then.
        assert!(verifies(&next, switch - H));
    }

    #[test]
    fn a_long_outage_heals_with_a_key_active_at_once() {
        let algs = [Alg::EdDSA];
        let s = sched();
        let mut keys = Vec::new();
        let mut m = FakeMint::new();
        maintain(&mut keys, &algs, &s, T0, &mut m.mint()).unwrap();
        let later = T0 + 30 * D;
        assert!(active_at(&keys, Alg::EdDSA, later).is_none());
        assert!(maintain(&mut keys, &algs, &s, later, &mut m.mint()).unwrap());
        let a = active_at(&keys, Alg::EdDSA, later).unwrap();
        assert_eq!(a.activates, later);
        assert_eq!(keys.len(), 1, "the expired first key is forgotten");
    }

    #[test]
    fn rotate_now_publishes_a_successor_that_signs_after_prepublish() {
        let algs = [Alg::EdDSA, Alg::RS256];
        let s = sched();
        let mut keys = Vec::new();
        let mut m = FakeMint::new();
        maintain(&mut keys, &algs, &s, T0, &mut m.mint()).unwrap();
        let old = active_at(&keys, Alg::RS256, T0).unwrap().kid.clone();
        let ed = active_at(&keys, Alg::EdDSA, T0).unwrap().clone();

        let now = T0 + D;
        let new = rotate_now(&mut keys, Alg::RS256, &s, now, &mut m.mint()).unwrap();
        assert_eq!(new.len(), 1);
        let n = keys.iter().find(|k| k.kid == new[0]).unwrap();
        assert_eq!(state(n, now), KeyState::Pending);
        assert_eq!(n.activates, now + H);
        assert_eq!(n.retires, now + H + 7 * D);
        let o = keys.iter().find(|k| k.kid == old).unwrap();
        assert_eq!(o.retires, now + H);
        assert_eq!(o.expires, now + H + 14 * D + 30);
        assert_eq!(active_at(&keys, Alg::RS256, now + H - 1).unwrap().kid, old);
        assert_eq!(active_at(&keys, Alg::RS256, now + H).unwrap().kid, new[0]);
        assert_one_active_each_second(&keys, Alg::RS256, now, now + 2 * H, 7);
        // The other ring is untouched, and maintenance has nothing to add.
        assert_eq!(active_at(&keys, Alg::EdDSA, now).unwrap(), &ed);
        assert!(!maintain(&mut keys, &algs, &s, now, &mut no_mint).unwrap());
    }

    #[test]
    fn rotate_now_replaces_a_pending_successor_that_never_signed() {
        let algs = [Alg::EdDSA];
        let s = sched();
        let mut keys = Vec::new();
        let mut m = FakeMint::new();
        maintain(&mut keys, &algs, &s, T0, &mut m.mint()).unwrap();
        let window = T0 + 7 * D - H / 2;
        maintain(&mut keys, &algs, &s, window, &mut m.mint()).unwrap();
        let pending = of(&keys, Alg::EdDSA, KeyState::Pending, window);
        assert_eq!(pending.len(), 1);

        let new = rotate_now(&mut keys, Alg::EdDSA, &s, window, &mut m.mint()).unwrap();
        assert!(keys.iter().all(|k| k.kid != pending[0]));
        assert_eq!(of(&keys, Alg::EdDSA, KeyState::Pending, window), new);
        assert_one_active_each_second(&keys, Alg::EdDSA, window, window + 2 * H, 13);
    }

    #[test]
    fn revoking_the_active_key_promotes_its_pending_successor_at_once() {
        let algs = [Alg::EdDSA];
        let s = sched();
        let mut keys = Vec::new();
        let mut m = FakeMint::new();
        maintain(&mut keys, &algs, &s, T0, &mut m.mint()).unwrap();
        let window = T0 + 7 * D - H / 2;
        maintain(&mut keys, &algs, &s, window, &mut m.mint()).unwrap();
        let active = active_at(&keys, Alg::EdDSA, window).unwrap().kid.clone();
        let pending = of(&keys, Alg::EdDSA, KeyState::Pending, window)[0].clone();

        let r = revoke(&mut keys, &active, &algs, &s, window, &mut no_mint).unwrap();
        assert_eq!(
            r,
            Revoked::Now {
                replacement: Some(pending.clone())
            }
        );
        let a = keys.iter().find(|k| k.kid == active).unwrap();
        assert_eq!(state(a, window), KeyState::Gone);
        assert!(a.private_pkcs8_der.is_empty(), "private key destroyed");
        assert_eq!(active_at(&keys, Alg::EdDSA, window).unwrap().kid, pending);
        assert_one_active_each_second(&keys, Alg::EdDSA, window, T0 + 14 * D, 997);
        // Maintenance then schedules the next successor as usual.
        assert!(!maintain(&mut keys, &algs, &s, window + 60, &mut no_mint).unwrap());
        // Idempotent.
        assert_eq!(
            revoke(&mut keys, &active, &algs, &s, window, &mut no_mint).unwrap(),
            Revoked::Already
        );
    }

    #[test]
    fn revoking_the_active_key_without_successor_creates_one_active_now() {
        let algs = [Alg::RS256];
        let s = sched();
        let mut keys = Vec::new();
        let mut m = FakeMint::new();
        maintain(&mut keys, &algs, &s, T0, &mut m.mint()).unwrap();
        let active = active_at(&keys, Alg::RS256, T0 + D).unwrap().kid.clone();
        let r = revoke(&mut keys, &active, &algs, &s, T0 + D, &mut m.mint()).unwrap();
        let Revoked::Now {
            replacement: Some(new),
        } = r
        else {
            panic!("no replacement: {r:?}")
        };
        let n = active_at(&keys, Alg::RS256, T0 + D).unwrap();
        assert_eq!(n.kid, new);
        assert_eq!(n.activates, T0 + D);
        assert_eq!(n.retires, T0 + 8 * D);
    }

    #[test]
    fn revoking_a_pending_or_retired_key_changes_no_schedule() {
        let algs = [Alg::EdDSA];
        let s = sched();
        let mut keys = Vec::new();
        let mut m = FakeMint::new();
        maintain(&mut keys, &algs, &s, T0, &mut m.mint()).unwrap();
        let window = T0 + 7 * D - H / 2;
        maintain(&mut keys, &algs, &s, window, &mut m.mint()).unwrap();
        let pending = of(&keys, Alg::EdDSA, KeyState::Pending, window)[0].clone();
        let r = revoke(&mut keys, &pending, &algs, &s, window, &mut no_mint).unwrap();
        assert_eq!(r, Revoked::Now { replacement: None });
        // The successor is due again and maintenance creates a new one.
        assert!(maintain(&mut keys, &algs, &s, window + 1, &mut m.mint()).unwrap());
        assert_one_active_each_second(&keys, Alg::EdDSA, window, window + 2 * H, 11);
        assert_eq!(
            revoke(&mut keys, "nope", &algs, &s, window, &mut no_mint).unwrap(),
            Revoked::Unknown
        );
    }

    #[test]
    fn a_grown_retention_stretches_expiry_of_live_keys() {
        let algs = [Alg::EdDSA];
        let mut s = sched();
        let mut keys = Vec::new();
        let mut m = FakeMint::new();
        maintain(&mut keys, &algs, &s, T0, &mut m.mint()).unwrap();
        s.retention += D;
        assert!(maintain(&mut keys, &algs, &s, T0 + 1, &mut no_mint).unwrap());
        assert_eq!(keys[0].expires, T0 + 7 * D + 15 * D + 30);
    }

    #[test]
    fn algs_not_configured_are_left_to_expire() {
        let s = sched();
        let mut keys = Vec::new();
        let mut m = FakeMint::new();
        maintain(&mut keys, &[Alg::EdDSA, Alg::RS256], &s, T0, &mut m.mint()).unwrap();
        let mut t = T0;
        while t < T0 + 30 * D {
            maintain(&mut keys, &[Alg::EdDSA], &s, t, &mut m.mint()).unwrap();
            t += H;
        }
        assert!(keys.iter().all(|k| k.alg == Alg::EdDSA));
    }
}
