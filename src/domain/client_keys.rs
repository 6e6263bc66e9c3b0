//! The public keys of clients that authenticate with `private_key_jwt` (RFC 7523 §2.2, OpenID
//! Connect Core §9; docs/private_key_jwt.md, "The client's keys"): a JWK Set (RFC 7517 §5) held
//! in the client's metadata (`jwks`), or published by the client at its `jwks_uri` and fetched
//! from there with a timeout and a size limit, cached by `Cache-Control` between a floor and a
//! ceiling, refetched on an unknown `kid` at most once a minute, one fetch at a time per client.
//! Each key is read by `tokend_token_shape::jwk::PublicKey`, the reader of DPoP proof keys.
//!
//! The fetch itself (HTTP, TLS) is the [`JwksFetch`] the HTTP layer implements; this module
//! decides what to fetch when, and what a fetched document is worth.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Map, Value};
use tokend_token_shape::jwk::{PublicKey, PublicKeyError, CLIENT_ALGS};

use super::clients::is_loopback;
use crate::clock::SharedClock;
use crate::store::ClientRecord;

/// The most keys one client's set may hold.
pub(crate) const MAX_KEYS: usize = 32;
/// The largest JWK Set document read from a `jwks_uri`, bytes.
pub(crate) const MAX_JWKS_BYTES: usize = 64 * 1024;
/// How long one fetch of a `jwks_uri` may take, from the connection to the last byte.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A fetched set is used for at least this long, whatever `Cache-Control` says (seconds).
pub(crate) const MIN_MAX_AGE_SECS: i64 = 60;
/// A fetched set is used for at most this long before it is fetched again (seconds).
pub(crate) const MAX_MAX_AGE_SECS: i64 = 86_400;
/// How long a fetched set is used when the answer has no `max-age` (seconds).
pub(crate) const DEFAULT_MAX_AGE_SECS: i64 = 300;
/// An assertion naming a `kid` the cached set lacks refetches the set when the last fetch is
/// at least this old (seconds), so at most once a minute: a client that rotated its key is
/// heard within a minute, and strangers sending made-up `kid`s cannot make tokend hammer the
/// client's server.
pub(crate) const REFETCH_INTERVAL_SECS: i64 = 60;
/// After a failed fetch, the next one waits this long (seconds); meanwhile a set fetched
/// before is used, and without one the client cannot authenticate.
pub(crate) const RETRY_AFTER_FAILURE_SECS: i64 = 10;
/// The longest `jwks_uri`.
const MAX_URI_LEN: usize = 2048;
/// The most clients whose fetched sets one instance keeps.
const MAX_CACHED_CLIENTS: usize = 10_000;

/// One signing key of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientKey {
    kid: Option<String>,
    /// The JWK's `alg` (RFC 7517 §4.4): when present, the only algorithm the key is used with.
    alg: Option<String>,
    key: PublicKey,
}

impl ClientKey {
    /// Whether an assertion signed with `alg` may be checked with this key.
    fn fits(&self, alg: &str) -> bool {
        self.key.fits(alg) && self.alg.as_deref().is_none_or(|a| a == alg)
    }
}

/// How a set is read: one a client registers must be clean; one fetched from a `jwks_uri` may
/// hold keys for other uses, which are passed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    Registered,
    Fetched,
}

fn describe(index: usize, jwk: &Map<String, Value>) -> String {
    match jwk.get("kid").and_then(Value::as_str) {
        Some(kid) => format!("key {index} (kid {kid:?})"),
        None => format!("key {index}"),
    }
}

/// One JWK of a set: `Ok(None)` for a key a fetched set may hold but that cannot sign client
/// assertions (another use, type or curve).
fn read_key(index: usize, jwk: &Value, reading: Reading) -> Result<Option<ClientKey>, String> {
    let Some(jwk) = jwk.as_object() else {
        return Err(format!("key {index} is not a JSON object"));
    };
    let name = describe(index, jwk);
    if jwk.get("kty").and_then(Value::as_str) == Some("oct") {
        return Err(format!(
            "{name} is a symmetric key (kty \"oct\"): a client's keys are public keys only"
        ));
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= 256 => Some(k.clone()),
        Some(_) => {
            return Err(format!(
                "{name}: kid must be a string of 1 to 256 characters"
            ))
        }
    };
    let alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(a)) => Some(a.clone()),
        Some(_) => return Err(format!("{name}: alg must be a string")),
    };
    match jwk.get("use").map(Value::as_str) {
        None | Some(Some("sig")) => {}
        Some(_) if reading == Reading::Fetched => return Ok(None),
        Some(_) => {
            return Err(format!(
                "{name} is not for signatures (use must be \"sig\")"
            ))
        }
    }
    let key = match PublicKey::from_jwk(jwk) {
        Ok(key) => key,
        Err(PublicKeyError::Private) => {
            return Err(format!(
                "{name} has private members: publish the public key only, and make a new key \
                 pair, since this private key is no longer secret"
            ))
        }
        Err(_) if reading == Reading::Fetched => return Ok(None),
        Err(_) => {
            return Err(format!(
                "{name} is not a supported public key (EC P-256, OKP Ed25519, or RSA of 2048 bits \
                 or more)"
            ))
        }
    };
    if let Some(a) = &alg {
        let usable = CLIENT_ALGS.contains(&a.as_str()) && key.fits(a);
        if !usable && reading == Reading::Registered {
            return Err(format!(
                "{name}: alg {a:?} is not one of {} that fits the key",
                CLIENT_ALGS.join(", ")
            ));
        }
        if !usable {
            return Ok(None);
        }
    }
    Ok(Some(ClientKey { kid, alg, key }))
}

/// Reads a JWK Set (RFC 7517 §5): an object whose `keys` is an array of JWKs.
fn read_set(set: &Value, reading: Reading) -> Result<Vec<ClientKey>, String> {
    let keys = set
        .as_object()
        .and_then(|o| o.get("keys"))
        .and_then(Value::as_array)
        .ok_or("not a JWK Set (a JSON object with a \"keys\" array)")?;
    if keys.len() > MAX_KEYS {
        return Err(format!("more than {MAX_KEYS} keys"));
    }
    let mut out: Vec<ClientKey> = Vec::with_capacity(keys.len());
    for (index, jwk) in keys.iter().enumerate() {
        let Some(key) = read_key(index, jwk, reading)? else {
            continue;
        };
        if reading == Reading::Registered
            && key.kid.is_some()
            && out.iter().any(|k| k.kid == key.kid)
        {
            return Err(format!(
                "key {index}: two keys have kid {:?}",
                key.kid.unwrap_or_default()
            ));
        }
        out.push(key);
    }
    if out.is_empty() {
        return Err("no key that can sign client assertions (EC P-256, OKP Ed25519, RSA)".into());
    }
    Ok(out)
}

/// The keys of a client's inline `jwks`, checked as at registration: every key a public
/// signing key of a supported type, `kid`s unique, at most [`MAX_KEYS`].
pub(crate) fn registered_keys(jwks: &Value) -> Result<Vec<ClientKey>, String> {
    read_set(jwks, Reading::Registered)
}

/// Whether one of `keys` can sign with `alg` (for `token_endpoint_auth_signing_alg`).
pub(crate) fn any_fits(keys: &[ClientKey], alg: &str) -> bool {
    keys.iter().any(|k| k.fits(alg))
}

/// The keys of a fetched JWK Set document; keys of other uses, types or curves are passed
/// over, but a private key or a symmetric key refuses the whole document.
fn fetched_keys(body: &[u8]) -> Result<Vec<ClientKey>, String> {
    let set: Value = serde_json::from_slice(body).map_err(|_| "the answer is not JSON")?;
    read_set(&set, Reading::Fetched)
}

/// What is wrong with a `jwks_uri`: absolute, no fragment, no credentials, and `https`, or
/// `http` on a loopback address (a client on the same machine, and the tests).
pub(crate) fn jwks_uri_problem(uri: &str) -> Option<&'static str> {
    if uri.len() > MAX_URI_LEN {
        return Some("is longer than 2048 characters");
    }
    let Ok(u) = url::Url::parse(uri) else {
        return Some("is not an absolute URL");
    };
    if u.fragment().is_some() {
        return Some("must not have a fragment");
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Some("must not carry credentials");
    }
    match u.scheme() {
        "https" if u.host().is_some() => None,
        "http" if is_loopback(&u) => None,
        "http" => Some("may use http only on a loopback address (127.0.0.1, [::1], localhost)"),
        _ => Some("must be an https URL"),
    }
}

/// A fetched JWK Set document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fetched {
    /// The body, at most [`MAX_JWKS_BYTES`].
    pub(crate) body: Bytes,
    /// `Cache-Control: max-age` of the answer (`Some(0)` for `no-store` or `no-cache`).
    pub(crate) max_age: Option<u64>,
}

/// Fetches a `jwks_uri` (the HTTP layer's `JwksFetcher`; tests put a fake in its place).
#[async_trait]
pub(crate) trait JwksFetch: Send + Sync {
    /// `GET uri` within [`FETCH_TIMEOUT`], at most [`MAX_JWKS_BYTES`], no redirect followed;
    /// a 200 answer, or a sentence saying why not (never a secret: the URI is the client's
    /// public metadata).
    async fn fetch(&self, uri: &str) -> Result<Fetched, String>;
}

/// Why no key of the client checks an assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyMiss {
    /// No key has the assertion's `kid`.
    UnknownKid,
    /// The key with the assertion's `kid` is not for the assertion's `alg`.
    Alg,
    /// No `kid`, and no key fits the `alg`.
    NoKey,
    /// Several keys fit the assertion: it must name one with `kid`.
    Ambiguous,
    /// The client's keys cannot be had: why.
    Unavailable(String),
}

/// The key of `keys` that checks an assertion with this `kid` and `alg` (docs/private_key_jwt.md,
/// "Choosing the key").
fn select(keys: &[ClientKey], kid: Option<&str>, alg: &str) -> Result<PublicKey, KeyMiss> {
    let candidates: Vec<&ClientKey> = match kid {
        Some(kid) => {
            let named: Vec<&ClientKey> = keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect();
            if named.is_empty() {
                return Err(KeyMiss::UnknownKid);
            }
            let fitting: Vec<&ClientKey> = named.into_iter().filter(|k| k.fits(alg)).collect();
            if fitting.is_empty() {
                return Err(KeyMiss::Alg);
            }
            fitting
        }
        None => keys.iter().filter(|k| k.fits(alg)).collect(),
    };
    match candidates.as_slice() {
        [one] => Ok(one.key.clone()),
        [] => Err(KeyMiss::NoKey),
        _ => Err(KeyMiss::Ambiguous),
    }
}

/// How long a fetched set is used: its `max-age` within the floor and the ceiling, or the
/// default without one.
fn lifetime(max_age: Option<u64>) -> i64 {
    match max_age {
        None => DEFAULT_MAX_AGE_SECS,
        Some(s) => i64::try_from(s)
            .unwrap_or(i64::MAX)
            .clamp(MIN_MAX_AGE_SECS, MAX_MAX_AGE_SECS),
    }
}

/// What one instance remembers of a client's `jwks_uri`.
#[derive(Debug, Default)]
struct RemoteState {
    keys: Option<Arc<Vec<ClientKey>>>,
    /// Unix seconds until which `keys` are fresh.
    fresh_until: i64,
    /// Unix seconds of the last fetch, whatever came of it.
    last_attempt: Option<i64>,
    /// Why the last fetch failed; `None` after a success.
    failure: Option<String>,
}

impl RemoteState {
    fn may_fetch(&self, now: i64, gap: i64) -> bool {
        self.last_attempt
            .is_none_or(|t| now.saturating_sub(t) >= gap)
    }
}

/// A client's `jwks_uri` and its cache. The async lock is held across a fetch, so concurrent
/// requests for one client wait for that fetch instead of making their own (single flight).
#[derive(Debug)]
struct Remote {
    uri: String,
    state: tokio::sync::Mutex<RemoteState>,
}

/// The client keys source: inline sets as they are, `jwks_uri` sets through a per-instance
/// cache.
pub(crate) struct ClientKeys {
    fetch: Arc<dyn JwksFetch>,
    clock: SharedClock,
    remotes: Mutex<HashMap<String, Arc<Remote>>>,
}

impl ClientKeys {
    pub(crate) fn new(fetch: Arc<dyn JwksFetch>, clock: SharedClock) -> ClientKeys {
        ClientKeys {
            fetch,
            clock,
            remotes: Mutex::new(HashMap::new()),
        }
    }

    /// The key of `client` that checks an assertion with this `kid` and `alg`.
    pub(crate) async fn key_for(
        &self,
        client: &ClientRecord,
        kid: Option<&str>,
        alg: &str,
    ) -> Result<PublicKey, KeyMiss> {
        if let Some(jwks) = &client.meta.jwks {
            let keys = registered_keys(jwks).map_err(KeyMiss::Unavailable)?;
            return select(&keys, kid, alg);
        }
        match &client.meta.jwks_uri {
            Some(uri) => self.remote_key(&client.client_id, uri, kid, alg).await,
            None => Err(KeyMiss::Unavailable(
                "the client has neither jwks nor jwks_uri".into(),
            )),
        }
    }

    /// The cache entry of `client_id`, a new one when its `jwks_uri` changed (RFC 7592 update).
    fn remote(&self, client_id: &str, uri: &str) -> Arc<Remote> {
        let mut remotes = self.remotes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = remotes.get(client_id) {
            if r.uri == uri {
                return r.clone();
            }
        }
        if remotes.len() >= MAX_CACHED_CLIENTS {
            // Entries no request holds are cheap to lose: the next use fetches again.
            remotes.retain(|_, r| Arc::strong_count(r) > 1);
        }
        let r = Arc::new(Remote {
            uri: uri.to_string(),
            state: tokio::sync::Mutex::new(RemoteState::default()),
        });
        if remotes.len() < MAX_CACHED_CLIENTS {
            remotes.insert(client_id.to_string(), r.clone());
        }
        r
    }

    async fn remote_key(
        &self,
        client_id: &str,
        uri: &str,
        kid: Option<&str>,
        alg: &str,
    ) -> Result<PublicKey, KeyMiss> {
        let remote = self.remote(client_id, uri);
        let mut state = remote.state.lock().await;
        let now = self.clock.now();
        match state.keys.clone() {
            Some(keys) if now < state.fresh_until => match select(&keys, kid, alg) {
                // A key the cached set lacks: the client may have rotated (docs/private_key_jwt.md,
                // "Caching").
                Err(KeyMiss::UnknownKid) if state.may_fetch(now, REFETCH_INTERVAL_SECS) => {}
                answer => return answer,
            },
            stale => {
                if !state.may_fetch(now, RETRY_AFTER_FAILURE_SECS) {
                    return match stale {
                        Some(keys) => select(&keys, kid, alg),
                        None => Err(KeyMiss::Unavailable(
                            state.failure.clone().unwrap_or_default(),
                        )),
                    };
                }
            }
        }
        state.last_attempt = Some(now);
        let fetched = self
            .fetch
            .fetch(uri)
            .await
            .and_then(|f| Ok((fetched_keys(&f.body)?, f.max_age)));
        match fetched {
            Ok((keys, max_age)) => {
                tracing::debug!(client_id, keys = keys.len(), "client jwks_uri fetched");
                state.keys = Some(Arc::new(keys));
                state.fresh_until = now.saturating_add(lifetime(max_age));
                state.failure = None;
            }
            Err(why) => {
                tracing::warn!(client_id, jwks_uri = uri, error = %why, "client jwks_uri fetch failed");
                state.failure = Some(why);
            }
        }
        match (&state.keys, &state.failure) {
            // A failure keeps the set fetched before (docs/private_key_jwt.md, "Caching").
            (Some(keys), _) => select(keys, kid, alg),
            (None, failure) => Err(KeyMiss::Unavailable(failure.clone().unwrap_or_default())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    use super::*;
    use crate::clock::ManualClock;
    use crate::store::{ClientMetadata, PRIVATE_KEY_JWT};

    fn ed(x: u8, kid: Option<&str>) -> Value {
        let mut jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([x; 32])});
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    fn p256(kid: &str) -> Value {
        use ring::rand::SystemRandom;
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "kid": kid,
               "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
    }

    #[test]
    fn a_registered_set_must_be_clean_and_says_which_key_is_not() {
        assert_eq!(
            registered_keys(&json!({"keys": [ed(1, None)]}))
                .unwrap()
                .len(),
            1
        );
        let private = {
            let mut k = ed(1, Some("a"));
            k["d"] = json!(URL_SAFE_NO_PAD.encode([2; 32]));
            k
        };
        let cases: &[(Value, &str)] = &[
            (json!([]), "JWK Set"),
            (json!({"keys": {}}), "JWK Set"),
            (json!({"keys": []}), "no key"),
            (json!({"keys": [private]}), "private members"),
            (
                json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
                "symmetric",
            ),
            (
                json!({"keys": [{"kty": "OKP", "crv": "X25519", "x": URL_SAFE_NO_PAD.encode([1; 32])}]}),
                "not a supported public key",
            ),
            (
                json!({"keys": [ed(1, Some("a")), ed(2, Some("a"))]}),
                "two keys have kid",
            ),
            (
                json!({"keys": [{"use": "enc", "kty": "OKP", "crv": "Ed25519",
                               "x": URL_SAFE_NO_PAD.encode([1; 32])}]}),
                "not for signatures",
            ),
            (
                json!({"keys": [{"alg": "RS256", "kty": "OKP", "crv": "Ed25519",
                               "x": URL_SAFE_NO_PAD.encode([1; 32])}]}),
                "alg",
            ),
            (json!({"keys": ["x"]}), "not a JSON object"),
            (
                json!({"keys": vec![ed(1, None); MAX_KEYS + 1]}),
                "more than",
            ),
        ];
        for (set, needle) in cases {
            let e = registered_keys(set).unwrap_err();
            assert!(e.contains(needle), "{set}: {e}");
        }
    }

    #[test]
    fn a_fetched_set_passes_over_keys_for_other_uses_but_never_takes_a_private_key() {
        let doc = json!({"keys": [
            {"kty": "OKP", "crv": "X25519", "x": URL_SAFE_NO_PAD.encode([1; 32])},
            {"use": "enc", "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1; 32])},
            ed(3, Some("sig")),
        ]});
        let keys = fetched_keys(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("sig"));
        let mut private = ed(3, None);
        private["d"] = json!(URL_SAFE_NO_PAD.encode([2; 32]));
        let e = fetched_keys(json!({"keys": [private]}).to_string().as_bytes()).unwrap_err();
        assert!(e.contains("private"), "{e}");
        assert!(fetched_keys(b"<html>").unwrap_err().contains("not JSON"));
        assert!(fetched_keys(b"{}").unwrap_err().contains("JWK Set"));
    }

    #[test]
    fn the_key_is_chosen_by_kid_or_as_the_only_one_fitting_alg() {
        let keys =
            registered_keys(&json!({"keys": [ed(1, Some("a")), ed(2, Some("b")), p256("c")]}))
                .unwrap();
        assert!(select(&keys, Some("a"), "EdDSA").is_ok());
        assert_eq!(select(&keys, Some("z"), "EdDSA"), Err(KeyMiss::UnknownKid));
        assert_eq!(select(&keys, Some("a"), "ES256"), Err(KeyMiss::Alg));
        assert!(select(&keys, None, "ES256").is_ok(), "the only P-256 key");
        assert_eq!(select(&keys, None, "EdDSA"), Err(KeyMiss::Ambiguous));
        assert_eq!(select(&keys, None, "RS256"), Err(KeyMiss::NoKey));
        assert!(any_fits(&keys, "ES256") && !any_fits(&keys, "PS256"));
    }

    #[test]
    fn jwks_uris_are_https_or_loopback_http() {
        for ok in [
            "https://client.example/jwks.json",
            "https://client.example:8443/keys?v=2",
            "http://127.0.0.1:8080/jwks",
            "http://[::1]/jwks",
            "http://localhost/jwks",
        ] {
            assert_eq!(jwks_uri_problem(ok), None, "{ok}");
        }
        for bad in [
            "http://client.example/jwks",
            "/jwks",
            "ftp://client.example/jwks",
            "https://client.example/jwks#x",
            "https://user:pw@client.example/jwks",
        ] {
            assert!(jwks_uri_problem(bad).is_some(), "{bad}");
        }
        assert!(jwks_uri_problem(&format!("https://a.example/{}", "x".repeat(2048))).is_some());
    }

    #[test]
    fn cache_lifetimes_are_bounded() {
        assert_eq!(lifetime(None), DEFAULT_MAX_AGE_SECS);
        assert_eq!(lifetime(Some(0)), MIN_MAX_AGE_SECS);
        assert_eq!(lifetime(Some(600)), 600);
        assert_eq!(lifetime(Some(u64::MAX)), MAX_MAX_AGE_SECS);
    }

    /// A fake `jwks_uri`: answers what it is told and counts the fetches.
    struct Fake {
        answer: Mutex<Result<Fetched, String>>,
        count: AtomicUsize,
    }

    impl Fake {
        fn new() -> Arc<Fake> {
            Arc::new(Fake {
                answer: Mutex::new(Err("not set".into())),
                count: AtomicUsize::new(0),
            })
        }
        fn serve(&self, set: Value, max_age: Option<u64>) {
            *self.answer.lock().unwrap() = Ok(Fetched {
                body: Bytes::from(set.to_string()),
                max_age,
            });
        }
        fn fail(&self) {
            *self.answer.lock().unwrap() = Err("connection refused".into());
        }
        fn count(&self) -> usize {
            self.count.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl JwksFetch for Fake {
        async fn fetch(&self, _uri: &str) -> Result<Fetched, String> {
            self.count.fetch_add(1, Ordering::SeqCst);
            // Let concurrent lookups run into the fetch in progress.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            self.answer.lock().unwrap().clone()
        }
    }

    fn remote_client(uri: &str) -> ClientRecord {
        ClientRecord {
            client_id: "svc".into(),
            secret_sha256: None,
            grant_types: vec!["client_credentials".into()],
            scopes: vec![],
            alg: None,
            created_at: 0,
            meta: ClientMetadata {
                token_endpoint_auth_method: Some(PRIVATE_KEY_JWT.into()),
                jwks_uri: Some(uri.into()),
                ..ClientMetadata::default()
            },
            registration: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_remote_set_is_cached_refetched_for_a_new_kid_once_a_minute_and_kept_on_failure() {
        let fake = Fake::new();
        let clock = ManualClock::starting_now();
        let keys = ClientKeys::new(fake.clone(), clock.clone());
        let client = remote_client("https://client.example/jwks");
        fake.serve(json!({"keys": [ed(1, Some("k1"))]}), Some(600));

        assert!(keys.key_for(&client, Some("k1"), "EdDSA").await.is_ok());
        assert!(keys.key_for(&client, Some("k1"), "EdDSA").await.is_ok());
        assert_eq!(fake.count(), 1, "cached");

        // The client rotates. Within a minute of the last fetch an unknown kid is refused
        // without a fetch; after it, one refetch picks the new key up.
        fake.serve(
            json!({"keys": [ed(1, Some("k1")), ed(2, Some("k2"))]}),
            Some(600),
        );
        assert_eq!(
            keys.key_for(&client, Some("k2"), "EdDSA").await,
            Err(KeyMiss::UnknownKid)
        );
        assert_eq!(fake.count(), 1);
        let minute = Duration::from_secs(REFETCH_INTERVAL_SECS as u64);
        clock.advance(minute);
        assert!(keys.key_for(&client, Some("k2"), "EdDSA").await.is_ok());
        assert_eq!(fake.count(), 2, "an unknown kid refetches");
        assert_eq!(
            keys.key_for(&client, Some("k3"), "EdDSA").await,
            Err(KeyMiss::UnknownKid)
        );
        assert_eq!(fake.count(), 2, "not again within the minute");
        clock.advance(minute);
        assert_eq!(
            keys.key_for(&client, Some("k3"), "EdDSA").await,
            Err(KeyMiss::UnknownKid)
        );
        assert_eq!(fake.count(), 3, "a minute later it may look again");

        // Stale and the client's server down: the set fetched before is still used.
        fake.fail();
        clock.advance(Duration::from_secs(601));
        assert!(keys.key_for(&client, Some("k2"), "EdDSA").await.is_ok());
        assert_eq!(fake.count(), 4);
        assert!(keys.key_for(&client, Some("k2"), "EdDSA").await.is_ok());
        assert_eq!(fake.count(), 4, "a failure is not retried at once");

        // A client whose set was never fetched cannot authenticate while its server is down.
        let other = ClientRecord {
            client_id: "other".into(),
            ..remote_client("https://other.example/jwks")
        };
        match keys.key_for(&other, None, "EdDSA").await {
            Err(KeyMiss::Unavailable(why)) => assert!(why.contains("refused"), "{why}"),
            answer => panic!("{answer:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_lookups_of_an_uncached_client_make_one_fetch() {
        let fake = Fake::new();
        let keys = Arc::new(ClientKeys::new(fake.clone(), ManualClock::starting_now()));
        fake.serve(json!({"keys": [ed(1, Some("k1"))]}), None);
        let client = remote_client("https://client.example/jwks");
        let lookups = (0..16).map(|_| {
            let keys = keys.clone();
            let client = client.clone();
            tokio::spawn(async move { keys.key_for(&client, Some("k1"), "EdDSA").await })
        });
        for r in futures_util::future::join_all(lookups).await {
            assert!(r.unwrap().is_ok());
        }
        assert_eq!(fake.count(), 1);
    }

    #[tokio::test]
    async fn a_changed_jwks_uri_is_fetched_anew() {
        let fake = Fake::new();
        let keys = ClientKeys::new(fake.clone(), ManualClock::starting_now());
        fake.serve(json!({"keys": [ed(1, Some("k1"))]}), None);
        assert!(keys
            .key_for(
                &remote_client("https://a.example/jwks"),
                Some("k1"),
                "EdDSA"
            )
            .await
            .is_ok());
        assert!(keys
            .key_for(
                &remote_client("https://b.example/jwks"),
                Some("k1"),
                "EdDSA"
            )
            .await
            .is_ok());
        assert_eq!(fake.count(), 2);
    }
}
