//! Micro-benchmarks of the cryptography on tokend's hot paths: signing and verifying a JWT per
//! algorithm through [`Keys`] (and through [`Tokens`], which adds the claims' JSON), the raw
//! primitives underneath for comparison, and Argon2id at the configured cost.
//!
//! `cargo bench --bench crypto` (filter with a name: `cargo bench --bench crypto -- EdDSA`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark aborts on any failure

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use serde_json::{Map, Value};
use tokend::clock::{ManualClock, SharedClock};
use tokend::config::Argon2Cost;
use tokend::domain::tokens::{AccessClaims, Audience, Tokens};
use tokend::domain::Passwords;
use tokend::keys::{Alg, Keys, KeysConfig, MemoryKeyStore, DEFAULT_RSA_BITS};

const T0_MS: i64 = 1_800_000_000_000;
const ISSUER: &str = "http://localhost:5000";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A key ring per algorithm over a memory keystore, as `Application::build_with_backends` opens
/// it, with RSA keys of `rsa_bits`.
fn keys(rt: &tokio::runtime::Runtime, rsa_bits: usize) -> (Keys, i64) {
    let clock: SharedClock = ManualClock::new(T0_MS);
    let cfg = KeysConfig {
        algs: vec![Alg::EdDSA, Alg::RS256],
        rotation: Duration::from_secs(7 * 86_400),
        prepublish: Duration::from_secs(3600),
        retention: Duration::from_secs(14 * 86_400 + 30),
        reload: Duration::from_secs(30),
        rsa_bits,
    };
    let keys = rt
        .block_on(Keys::open(
            cfg,
            Arc::new(MemoryKeyStore::new()),
            None,
            clock.clone(),
        ))
        .unwrap();
    (keys, clock.now())
}

/// The claims of a typical access token.
fn access_claims(now: i64) -> AccessClaims {
    AccessClaims {
        iss: ISSUER.into(),
        sub: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
        aud: Audience::One("tokend".into()),
        exp: now + 900,
        iat: now,
        nbf: now,
        jti: "q3bN0xw1l8mJ4Cj2YbKp9A".into(),
        client_id: "tokend".into(),
        scope: String::new(),
        sid: Some("Zk2x7pQ1.0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into()),
        fresh: false,
        auth_time: Some(now),
        roles: vec!["user".into()],
        username: Some("ada_lovelace".into()),
        cnf: None,
        act: None,
    }
}

fn claims_map(now: i64) -> Map<String, Value> {
    match serde_json::to_value(access_claims(now)).unwrap() {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn jwt(c: &mut Criterion) {
    let rt = runtime();
    for (label, bits) in [("", DEFAULT_RSA_BITS), ("-2048", 2048)] {
        let (keys, now) = keys(&rt, bits);
        let tokens = Tokens::new(ISSUER.into(), "tokend".into(), keys.clone());
        let map = claims_map(now);
        let claims = access_claims(now);
        let mut g = c.benchmark_group("jwt");
        for alg in [Alg::EdDSA, Alg::RS256] {
            if alg == Alg::EdDSA && !label.is_empty() {
                continue;
            }
            let name = format!("{alg}{label}");
            g.bench_function(format!("{name}/keys_sign"), |b| {
                b.iter(|| keys.sign(alg, "at+jwt", black_box(&map), now).unwrap())
            });
            let token = keys.sign(alg, "at+jwt", &map, now).unwrap();
            g.bench_function(format!("{name}/keys_verify"), |b| {
                b.iter(|| keys.verify(black_box(&token), "at+jwt", now).unwrap())
            });
            g.bench_function(format!("{name}/sign_access"), |b| {
                b.iter(|| tokens.sign_access(alg, black_box(&claims)).unwrap())
            });
            g.bench_function(format!("{name}/decode_access"), |b| {
                b.iter(|| tokens.decode_access(black_box(&token), now).unwrap())
            });
        }
        g.finish();
    }
}

/// The primitives alone: what any JWT code path on top of them costs at least.
fn primitives(c: &mut Criterion) {
    let mut g = c.benchmark_group("primitive");
    let msg = [0x5au8; 400];
    let rng = SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    let public = signature::UnparsedPublicKey::new(&signature::ED25519, pair.public_key().as_ref());
    let sig = pair.sign(&msg);
    g.bench_function("ed25519_ring/sign", |b| {
        b.iter(|| pair.sign(black_box(&msg)))
    });
    g.bench_function("ed25519_ring/verify", |b| {
        b.iter(|| public.verify(black_box(&msg), sig.as_ref()).unwrap())
    });

    use josekit::jws::{EdDSA, JwsSigner as _, JwsVerifier as _, RS256};
    let ed = EdDSA
        .generate_key_pair(josekit::jwk::alg::ed::EdCurve::Ed25519)
        .unwrap();
    let signer = EdDSA.signer_from_der(ed.to_der_private_key()).unwrap();
    let verifier = EdDSA.verifier_from_der(ed.to_der_public_key()).unwrap();
    let sig = signer.sign(&msg).unwrap();
    g.bench_function("ed25519_josekit/sign", |b| {
        b.iter(|| signer.sign(black_box(&msg)).unwrap())
    });
    g.bench_function("ed25519_josekit/verify", |b| {
        b.iter(|| verifier.verify(black_box(&msg), &sig).unwrap())
    });
    for bits in [2048u32, 3072] {
        let rsa = RS256.generate_key_pair(bits).unwrap();
        let signer = RS256.signer_from_der(rsa.to_der_private_key()).unwrap();
        let verifier = RS256.verifier_from_der(rsa.to_der_public_key()).unwrap();
        let sig = signer.sign(&msg).unwrap();
        g.bench_function(format!("rs256_{bits}_josekit/sign"), |b| {
            b.iter(|| signer.sign(black_box(&msg)).unwrap())
        });
        g.bench_function(format!("rs256_{bits}_josekit/verify"), |b| {
            b.iter(|| verifier.verify(black_box(&msg), &sig).unwrap())
        });
    }
    g.finish();
}

/// Argon2id at the configured default cost (`TOKEND_ARGON2=m=19456,t=2,p=1`): one password check.
fn argon2(c: &mut Criterion) {
    let rt = runtime();
    let cost = Argon2Cost {
        m_kib: 19_456,
        t: 2,
        p: 1,
    };
    let passwords = rt.block_on(Passwords::new(cost, 1, 0)).unwrap();
    let hash = rt
        .block_on(passwords.hash("correct horse battery"))
        .unwrap();
    let mut g = c.benchmark_group("argon2");
    g.sample_size(20).measurement_time(Duration::from_secs(6));
    g.bench_function("verify_m19456_t2_p1", |b| {
        b.iter(|| {
            rt.block_on(passwords.verify(black_box("correct horse battery"), Some(&hash)))
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, jwt, primitives, argon2);
criterion_main!(benches);
