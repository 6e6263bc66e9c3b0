//! Access-token verification for Rust resource servers: discovery of the issuer's `jwks_uri`, a
//! JWKS cache that honours `Cache-Control: max-age` within bounds, one rate-limited refetch on an
//! unknown `kid`, and the RFC 9068 checks (`alg` allow-list, `typ` `at+jwt`, signature, `iss`,
//! `aud`, `exp`, `nbf`), the same ones tokend makes (`docs/tokens.md`, "Validation"); and for
//! DPoP-bound tokens (RFC 9449, docs/dpop.md) the proof of each request, its `ath`, the key the
//! token is bound to and a single use of each proof ([`Verifier::verify_request`]). The token
//! shapes both sides check (`typ`, the `Authorization` header, leeway, algorithm names, DPoP
//! proofs) come from the shared `tokend-token-shape` crate; this crate does not depend on the
//! server.
//!
//! ```no_run
//! # async fn demo(token: &str) -> Result<(), tokend_verifier::VerifierError> {
//! use tokend_verifier::{Verifier, VerifierOptions};
//! let verifier =
//!     Verifier::discover("http://localhost:5000", "tokend", VerifierOptions::default()).await?;
//! let claims = verifier.verify(token).await?;
//! println!("hello, {}", claims.sub);
//! # Ok(())
//! # }
//! ```
//!
//! HTTP goes through the [`Fetcher`] trait. The default, [`HyperFetcher::new`], speaks plain
//! HTTP only (an issuer on a private network or behind a sidecar); for an `https://` issuer give
//! [`HyperFetcher::with_client`] a client built on a TLS connector (for example
//! `hyper-rustls`), or implement [`Fetcher`] over the HTTP client the service already uses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use josekit::jwk::Jwk;
use josekit::jws::{EdDSA, JwsVerifier, RS256};
use serde_json::{Map, Value};

use tokend_token_shape::clock::{self, SystemClock};
use tokend_token_shape::dpop::{check_proof, proof_header, ProofContext};
use tokend_token_shape::{bearer, time};

pub use tokend_token_shape::clock::{Clock, ManualClock, SharedClock};
pub use tokend_token_shape::dpop::ProofRefusal;
pub use tokend_token_shape::{Actor, Alg, BearerError, Scheme};

/// The JWS algorithms a DPoP proof may be signed with (RFC 9449 §7.1 `algs`).
pub const DPOP_ALGS: [&str; 4] = tokend_token_shape::jwk::CLIENT_ALGS;

/// `typ` of access tokens (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = tokend_token_shape::ACCESS_TYP;
/// Largest clock skew the verifier accepts on `exp`, `nbf` and `iat` (tokend's own leeway).
pub const MAX_LEEWAY: Duration = tokend_token_shape::LEEWAY;
/// Default minimum time between two fetches caused by unknown `kid`s or failed fetches.
pub const DEFAULT_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Default lower bound on how long a JWKS is cached, whatever its `max-age`.
pub const DEFAULT_MIN_CACHE: Duration = Duration::from_secs(30);
/// Default upper bound on how long a JWKS is cached.
pub const DEFAULT_MAX_CACHE: Duration = Duration::from_secs(24 * 3600);
/// Default cache lifetime of a JWKS served without `max-age`.
pub const DEFAULT_CACHE: Duration = Duration::from_secs(300);
/// Largest discovery or JWKS document read.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Longest token looked at.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Why a token was refused, or why the verifier could not decide.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    /// Not a JWS compact JWT, or its header or claims are not JSON objects.
    #[error("malformed token")]
    Malformed,
    /// The header's `alg` is missing or not in the allow-list (never `none` or `HS*`).
    #[error("algorithm not accepted: {0}")]
    Algorithm(String),
    /// The header's `typ` is not `at+jwt` (a refresh token, an ID token, an untyped JWT).
    #[error("not an access token (typ {0:?})")]
    Type(Option<String>),
    /// The header names no `kid`.
    #[error("token names no key")]
    MissingKid,
    /// The `kid` is not in the issuer's JWKS, even after the allowed refetch.
    #[error("unknown signing key {0}")]
    UnknownKid(String),
    /// The key of `kid` is for another algorithm than the header's `alg`.
    #[error("key {0} is not for this algorithm")]
    KeyMismatch(String),
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `iss` is not the configured issuer.
    #[error("token from another issuer")]
    Issuer,
    /// `aud` does not contain the configured audience.
    #[error("token not meant for this audience")]
    Audience,
    /// `exp` is more than the leeway in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` (or `iat`) is more than the leeway in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// A required claim is missing or has the wrong type.
    #[error("claim {0} missing or invalid")]
    Claim(&'static str),
    /// No usable `Authorization` header (`Bearer <token>` or `DPoP <token>`).
    #[error("{0}")]
    Authorization(BearerError),
    /// A DPoP-bound token presented as a bearer token (RFC 9449 §7.2).
    #[error("the token is DPoP-bound: present it with the DPoP scheme and a proof")]
    DpopBound,
    /// A bearer (unbound) token presented with the `DPoP` scheme.
    #[error("the token is not DPoP-bound: present it as a Bearer token")]
    NotDpopBound,
    /// The request's DPoP proof was refused (RFC 9449 §4.3): missing, malformed, for another
    /// request, of another key than the token's, or used before.
    #[error("{0}")]
    Proof(ProofRefusal),
    /// The discovery document or the JWKS could not be fetched.
    #[error("cannot fetch {url}: {message}")]
    Fetch { url: String, message: String },
    /// The discovery document is not usable.
    #[error("discovery document of {issuer}: {message}")]
    Discovery { issuer: String, message: String },
    /// The JWKS is not usable.
    #[error("JWKS at {url}: {message}")]
    Jwks { url: String, message: String },
    /// The verifier was configured wrongly.
    #[error("verifier configuration: {0}")]
    Config(String),
}

impl VerifierError {
    /// True when the token itself was refused (answer 401), false when the verifier could not
    /// reach or understand the issuer (answer 503 and try again later).
    pub fn is_invalid_token(&self) -> bool {
        !matches!(
            self,
            VerifierError::Fetch { .. }
                | VerifierError::Discovery { .. }
                | VerifierError::Jwks { .. }
                | VerifierError::Config(_)
        )
    }

    /// A short, stable reason (logs, metrics).
    pub fn reason(&self) -> &'static str {
        match self {
            VerifierError::Malformed => "malformed",
            VerifierError::Algorithm(_) => "alg",
            VerifierError::Type(_) => "typ",
            VerifierError::MissingKid | VerifierError::UnknownKid(_) => "kid",
            VerifierError::KeyMismatch(_) => "key_mismatch",
            VerifierError::Signature => "signature",
            VerifierError::Issuer => "issuer",
            VerifierError::Audience => "audience",
            VerifierError::Expired => "expired",
            VerifierError::NotYetValid => "not_yet_valid",
            VerifierError::Claim(_) => "claims",
            VerifierError::Authorization(_) => "authorization",
            VerifierError::DpopBound => "dpop_bound",
            VerifierError::NotDpopBound => "not_dpop_bound",
            VerifierError::Proof(_) => "dpop_proof",
            VerifierError::Fetch { .. } => "fetch",
            VerifierError::Discovery { .. } => "discovery",
            VerifierError::Jwks { .. } => "jwks",
            VerifierError::Config(_) => "config",
        }
    }
}

impl VerifierError {
    /// The `WWW-Authenticate` value a resource server answers this refusal with: `DPoP` with
    /// `invalid_dpop_proof` for a refused proof, `DPoP` with `invalid_token` for a token
    /// presented with the `DPoP` scheme, else `Bearer` with `invalid_token` (RFC 6750 §3,
    /// RFC 9449 §7.1). `scheme` is how the token was presented, when it was.
    pub fn challenge(&self, scheme: Option<Scheme>) -> String {
        let algs = DPOP_ALGS.join(" ");
        let (dpop, error) = match (self, scheme) {
            (VerifierError::Proof(_), _) => (true, "invalid_dpop_proof"),
            (VerifierError::NotDpopBound, _) | (_, Some(Scheme::DPoP)) => (true, "invalid_token"),
            _ => (false, "invalid_token"),
        };
        let description = self.to_string().replace(['"', '\\'], "'");
        if dpop {
            format!("DPoP error=\"{error}\", error_description=\"{description}\", algs=\"{algs}\"")
        } else {
            format!("Bearer error=\"{error}\", error_description=\"{description}\"")
        }
    }
}

/// The proofs a verifier has accepted, each remembered as long as it could pass the `iat`
/// window (RFC 9449 §11.1), swept as the map is written.
#[derive(Debug, Default)]
struct ReplayCache {
    /// SHA-256 of the key thumbprint and the `jti` -> Unix ms it is forgotten.
    seen: HashMap<[u8; 32], i64>,
    last_sweep_ms: i64,
    writes_since_sweep: u32,
}

impl ReplayCache {
    /// How long a proof is remembered.
    const TTL_MS: i64 =
        (tokend_token_shape::dpop::MAX_AGE_SECS + tokend_token_shape::dpop::MAX_SKEW_SECS + 1)
            * 1000;

    /// Records the proof; `false` if it was seen and still could be replayed.
    fn first_use(&mut self, jkt: &str, jti: &str, now_ms: i64) -> bool {
        self.writes_since_sweep += 1;
        if self.writes_since_sweep >= 4096 || now_ms - self.last_sweep_ms >= 30_000 {
            self.seen.retain(|_, until| *until > now_ms);
            self.writes_since_sweep = 0;
            self.last_sweep_ms = now_ms;
        }
        let mut material = Vec::with_capacity(jkt.len() + 1 + jti.len());
        material.extend_from_slice(jkt.as_bytes());
        material.push(b'\n');
        material.extend_from_slice(jti.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &material).as_ref());
        match self.seen.get(&key) {
            Some(until) if *until > now_ms => false,
            _ => {
                self.seen.insert(key, now_ms + Self::TTL_MS);
                true
            }
        }
    }
}

/// What a [`Fetcher`] may fail with.
pub type FetchError = Box<dyn std::error::Error + Send + Sync>;

/// One HTTP GET, the verifier's only contact with the network.
///
/// The request carries the URL and the headers to send (`Accept`, and `If-None-Match` on a
/// JWKS refetch); the response must carry the status, the headers (`Cache-Control`, `Age`,
/// `ETag` are read) and the whole body. Redirects need not be followed: discovery documents and
/// JWKS are served directly.
#[async_trait]
pub trait Fetcher: Send + Sync + 'static {
    async fn fetch(&self, request: Request<()>) -> Result<Response<Bytes>, FetchError>;
}

/// The default [`Fetcher`] on hyper-util's pooled client, with a timeout and a body cap.
///
/// [`HyperFetcher::new`] speaks plain HTTP only. For HTTPS build a client on a TLS connector and
/// pass it to [`HyperFetcher::with_client`]:
///
/// ```ignore
/// let https = hyper_rustls::HttpsConnectorBuilder::new()
///     .with_webpki_roots()
///     .https_only()
///     .enable_http1()
///     .build();
/// let client = Client::builder(TokioExecutor::new()).build(https);
/// let fetcher = HyperFetcher::with_client(client);
/// ```
#[derive(Clone)]
pub struct HyperFetcher<C = HttpConnector> {
    client: Client<C, Empty<Bytes>>,
    timeout: Duration,
}

impl HyperFetcher<HttpConnector> {
    /// A plain-HTTP fetcher with a 10 s timeout per request.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        Self::with_client(Client::builder(TokioExecutor::new()).build(connector))
    }
}

impl Default for HyperFetcher<HttpConnector> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> HyperFetcher<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    /// A fetcher on a client of your own (a TLS connector, a proxy).
    pub fn with_client(client: Client<C, Empty<Bytes>>) -> Self {
        HyperFetcher {
            client,
            timeout: Duration::from_secs(10),
        }
    }

    /// Changes the timeout of each request (connect, headers and body together).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[async_trait]
impl<C> Fetcher for HyperFetcher<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    async fn fetch(&self, request: Request<()>) -> Result<Response<Bytes>, FetchError> {
        let (parts, ()) = request.into_parts();
        let request = Request::from_parts(parts, Empty::<Bytes>::new());
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_DOCUMENT_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, FetchError>(Response::from_parts(parts, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.timeout).into()),
        }
    }
}

/// How a [`Verifier`] behaves; every field has a sensible default.
#[derive(Clone)]
pub struct VerifierOptions {
    /// Accepted `alg` values (default EdDSA and RS256). `none` and `HS*` cannot be expressed.
    pub algorithms: Vec<Alg>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (default 30 s, at most [`MAX_LEEWAY`]).
    pub leeway: Duration,
    /// Minimum time between two JWKS fetches caused by an unknown `kid`, and between retries
    /// after a failed fetch (default 30 s).
    pub refetch_interval: Duration,
    /// A JWKS is cached at least this long, whatever its `max-age` (default 30 s).
    pub min_cache: Duration,
    /// A JWKS is cached at most this long, whatever its `max-age` (default 24 h).
    pub max_cache: Duration,
    /// Cache lifetime of a JWKS served without `max-age` (default 5 min).
    pub default_cache: Duration,
    /// The time source (default the wall clock).
    pub clock: SharedClock,
    /// The HTTP client (default [`HyperFetcher::new`], plain HTTP).
    pub fetcher: Arc<dyn Fetcher>,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        VerifierOptions {
            algorithms: Alg::ALL.to_vec(),
            leeway: MAX_LEEWAY,
            refetch_interval: DEFAULT_REFETCH_INTERVAL,
            min_cache: DEFAULT_MIN_CACHE,
            max_cache: DEFAULT_MAX_CACHE,
            default_cache: DEFAULT_CACHE,
            clock: Arc::new(SystemClock),
            fetcher: Arc::new(HyperFetcher::new()),
        }
    }
}

impl VerifierOptions {
    /// Uses `clock` for expiry checks and cache lifetimes.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Uses `fetcher` for every HTTP request.
    pub fn with_fetcher(mut self, fetcher: Arc<dyn Fetcher>) -> Self {
        self.fetcher = fetcher;
        self
    }

    /// Sets the minimum time between refetches on unknown `kid`s.
    pub fn with_refetch_interval(mut self, interval: Duration) -> Self {
        self.refetch_interval = interval;
        self
    }

    fn validate(&self) -> Result<(), VerifierError> {
        if self.algorithms.is_empty() {
            return Err(VerifierError::Config("no algorithm allowed".into()));
        }
        if self.leeway > MAX_LEEWAY {
            return Err(VerifierError::Config(format!(
                "leeway {:?} is more than {MAX_LEEWAY:?}",
                self.leeway
            )));
        }
        if self.min_cache > self.max_cache {
            return Err(VerifierError::Config(
                "min_cache is longer than max_cache".into(),
            ));
        }
        Ok(())
    }
}

/// `aud` as one string or an array (RFC 7519 §4.1.3).
fn audiences(value: Option<&Value>) -> Result<Vec<String>, VerifierError> {
    match value {
        Some(Value::String(a)) => Ok(vec![a.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(a) => Ok(a.clone()),
                _ => Err(VerifierError::Claim("aud")),
            })
            .collect(),
        _ => Err(VerifierError::Claim("aud")),
    }
}

/// The claims of a verified access token: the RFC 9068 §2.2 ones typed, everything in `all`.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: Option<i64>,
    pub nbf: Option<i64>,
    pub jti: Option<String>,
    pub client_id: Option<String>,
    /// Space-separated scopes (RFC 9068 §2.2.3); empty when absent.
    pub scope: String,
    /// tokend's `roles` claim; empty when absent.
    pub roles: Vec<String>,
    /// Who acts for the subject (RFC 8693 §4.1): present on a token issued by token exchange,
    /// where the outermost actor is the one calling now and any nested one acted before.
    pub act: Option<Actor>,
    /// Every claim of the token.
    pub all: Map<String, Value>,
}

impl Claims {
    fn from_map(all: Map<String, Value>) -> Result<Claims, VerifierError> {
        let string = |name: &'static str| match all.get(name) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            None => Ok(None),
            Some(_) => Err(VerifierError::Claim(name)),
        };
        let number = |name: &'static str| match all.get(name) {
            Some(v) => v.as_i64().map(Some).ok_or(VerifierError::Claim(name)),
            None => Ok(None),
        };
        let roles = match all.get("roles") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|r| r.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or(VerifierError::Claim("roles"))?,
            Some(_) => return Err(VerifierError::Claim("roles")),
        };
        let act = match all.get("act") {
            None => None,
            Some(v) => Some(
                serde_json::from_value::<Actor>(v.clone())
                    .map_err(|_| VerifierError::Claim("act"))?,
            ),
        };
        Ok(Claims {
            iss: string("iss")?.ok_or(VerifierError::Claim("iss"))?,
            sub: string("sub")?.ok_or(VerifierError::Claim("sub"))?,
            aud: audiences(all.get("aud"))?,
            exp: number("exp")?.ok_or(VerifierError::Claim("exp"))?,
            iat: number("iat")?,
            nbf: number("nbf")?,
            jti: string("jti")?,
            client_id: string("client_id")?,
            scope: string("scope")?.unwrap_or_default(),
            roles,
            act,
            all,
        })
    }

    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }

    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// The party acting for the subject now (the outermost `act`, RFC 8693 §4.1), if the
    /// token was issued by token exchange.
    pub fn actor(&self) -> Option<&Actor> {
        self.act.as_ref()
    }
}

/// The `Bearer` token of an `Authorization` header (RFC 6750 §2.1), if any: the scheme in any
/// case, then exactly one token of b64token characters, as tokend itself reads it.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    bearer::from_headers(headers).ok()
}

/// The scheme of a well-formed `Authorization: Bearer <token>` or `DPoP <token>` header, if
/// any: what a refusal's challenge should answer ([`VerifierError::challenge`]).
pub fn presented_scheme(headers: &HeaderMap) -> Option<Scheme> {
    bearer::scheme_from_headers(headers).ok().map(|(s, _)| s)
}

/// One key of the cached JWKS.
#[derive(Debug)]
struct CachedKey {
    alg: Alg,
    verifier: Box<dyn JwsVerifier>,
}

/// A JWKS as fetched, with its freshness.
#[derive(Debug)]
struct KeyCache {
    keys: Arc<HashMap<String, CachedKey>>,
    /// Bumped by every successful fetch (200 or 304).
    generation: u64,
    fresh_until_ms: i64,
    etag: Option<String>,
}

/// Bookkeeping of fetches, held while one is in flight so concurrent callers wait for it.
#[derive(Debug, Default)]
struct FetchState {
    /// When the JWKS was last requested, for whatever reason.
    last_attempt_ms: Option<i64>,
    /// Whether that request failed (retries then wait for the refetch interval).
    last_failed: bool,
    /// When an unknown `kid` last caused a refetch.
    last_kid_refetch_ms: Option<i64>,
}

/// Why a refresh is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// No cache yet, or its `max-age` ran out.
    Stale,
    /// A token names a `kid` the cache does not hold.
    UnknownKid,
}

/// Verifies access tokens of one issuer for one audience. Cheap to share behind an `Arc`.
pub struct Verifier {
    issuer: String,
    audience: String,
    jwks_uri: String,
    options: VerifierOptions,
    cache: RwLock<Option<Arc<KeyCache>>>,
    fetch: tokio::sync::Mutex<FetchState>,
    replay: Mutex<ReplayCache>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("jwks_uri", &self.jwks_uri)
            .finish_non_exhaustive()
    }
}

/// The well-known URLs of `issuer`: OpenID Connect Discovery 1.0 §4 appends to the issuer;
/// RFC 8414 §3.1 inserts between the host and the path.
fn discovery_urls(issuer: &str) -> Result<Vec<String>, VerifierError> {
    let url = url::Url::parse(issuer)
        .map_err(|e| VerifierError::Config(format!("issuer {issuer:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(VerifierError::Config(format!(
            "issuer {issuer:?} is not an http(s) URL"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(VerifierError::Config(format!(
            "issuer {issuer:?} has a query or fragment"
        )));
    }
    let trimmed = issuer.trim_end_matches('/');
    let path = url.path().trim_end_matches('/');
    let origin = url.origin().ascii_serialization();
    Ok(vec![
        format!("{trimmed}/.well-known/openid-configuration"),
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
    ])
}

fn get_request(url: &str, if_none_match: Option<&str>) -> Result<Request<()>, VerifierError> {
    let mut builder = Request::get(url).header(header::ACCEPT, "application/json");
    if let Some(etag) = if_none_match {
        builder = builder.header(header::IF_NONE_MATCH, etag);
    }
    builder.body(()).map_err(|e| VerifierError::Fetch {
        url: url.to_string(),
        message: e.to_string(),
    })
}

/// How long a response may be cached, from `Cache-Control` and `Age` (RFC 9111 §4.2.1),
/// bounded by the options.
fn cache_lifetime(headers: &HeaderMap, options: &VerifierOptions) -> Duration {
    let mut max_age = None;
    let mut no_cache = false;
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim();
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive, None),
            };
            if name.eq_ignore_ascii_case("max-age") {
                if let Some(secs) = arg.and_then(|a| a.parse::<u64>().ok()) {
                    max_age = Some(max_age.map_or(secs, |m: u64| m.min(secs)));
                }
            } else if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache")
            {
                no_cache = true;
            }
        }
    }
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let lifetime = if no_cache {
        Duration::ZERO
    } else {
        match max_age {
            Some(secs) => Duration::from_secs(secs.saturating_sub(age)),
            None => options.default_cache,
        }
    };
    lifetime.clamp(options.min_cache, options.max_cache)
}

/// Parses a JWKS (RFC 7517 §5) into verifiers for the allowed algorithms. Keys for other
/// algorithms or uses, and keys without a `kid`, are skipped.
fn parse_jwks(body: &[u8], allowed: &[Alg]) -> Result<HashMap<String, CachedKey>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Some(Value::Array(items)) = doc.get("keys") else {
        return Err("no \"keys\" array".into());
    };
    let mut keys = HashMap::new();
    for item in items {
        let Value::Object(map) = item else { continue };
        let Ok(jwk) = Jwk::from_map(map.clone()) else {
            continue;
        };
        let Some(kid) = jwk.key_id().map(str::to_string) else {
            continue;
        };
        if jwk.key_use().is_some_and(|u| u != "sig") {
            continue;
        }
        let alg = match jwk.algorithm() {
            Some(name) => Alg::parse(name),
            // Without `alg`, the key type decides; RSA keys default to RS256.
            None => match (jwk.key_type(), jwk.curve()) {
                ("OKP", Some("Ed25519")) => Some(Alg::EdDSA),
                ("RSA", _) => Some(Alg::RS256),
                _ => None,
            },
        };
        let Some(alg) = alg.filter(|a| allowed.contains(a)) else {
            continue;
        };
        let verifier: Box<dyn JwsVerifier> = match alg {
            Alg::EdDSA => match EdDSA.verifier_from_jwk(&jwk) {
                Ok(mut v) => {
                    v.set_key_id(kid.clone());
                    Box::new(v)
                }
                Err(_) => continue,
            },
            Alg::RS256 => {
                let long_enough = match jwk.parameter("n") {
                    Some(Value::String(n)) => {
                        n.trim_end_matches('=').len() * 3 / 4 >= MIN_RSA_MODULUS_BYTES
                    }
                    _ => false,
                };
                if !long_enough {
                    continue;
                }
                match RS256.verifier_from_jwk(&jwk) {
                    Ok(mut v) => {
                        v.set_key_id(kid.clone());
                        Box::new(v)
                    }
                    Err(_) => continue,
                }
            }
        };
        keys.insert(kid, CachedKey { alg, verifier });
    }
    Ok(keys)
}

impl Verifier {
    /// Finds the issuer's `jwks_uri` from its discovery document
    /// (`{issuer}/.well-known/openid-configuration`, else RFC 8414's
    /// `/.well-known/oauth-authorization-server`), checks that the document names the same
    /// issuer, and returns a verifier for tokens meant for `audience`. The JWKS is fetched on
    /// first use.
    pub async fn discover(
        issuer: &str,
        audience: &str,
        options: VerifierOptions,
    ) -> Result<Verifier, VerifierError> {
        options.validate()?;
        let mut last = None;
        for url in discovery_urls(issuer)? {
            let request = get_request(&url, None)?;
            let response =
                options
                    .fetcher
                    .fetch(request)
                    .await
                    .map_err(|e| VerifierError::Fetch {
                        url: url.clone(),
                        message: e.to_string(),
                    })?;
            if response.status() == StatusCode::NOT_FOUND {
                last = Some(VerifierError::Fetch {
                    url,
                    message: "404 Not Found".into(),
                });
                continue;
            }
            if response.status() != StatusCode::OK {
                return Err(VerifierError::Fetch {
                    url,
                    message: format!("status {}", response.status()),
                });
            }
            let discovery_error = |message: String| VerifierError::Discovery {
                issuer: issuer.to_string(),
                message,
            };
            let doc: Value = serde_json::from_slice(response.body())
                .map_err(|e| discovery_error(format!("not JSON: {e}")))?;
            match doc.get("issuer") {
                Some(Value::String(named)) if named == issuer => {}
                other => {
                    return Err(discovery_error(format!(
                        "names issuer {other:?}, expected {issuer:?}"
                    )))
                }
            }
            let Some(Value::String(jwks_uri)) = doc.get("jwks_uri") else {
                return Err(discovery_error("no jwks_uri".into()));
            };
            return Verifier::with_jwks_uri(issuer, audience, jwks_uri, options);
        }
        Err(last.unwrap_or_else(|| VerifierError::Config("no discovery URL".into())))
    }

    /// A verifier for an issuer whose `jwks_uri` is known already (no discovery).
    pub fn with_jwks_uri(
        issuer: &str,
        audience: &str,
        jwks_uri: &str,
        options: VerifierOptions,
    ) -> Result<Verifier, VerifierError> {
        options.validate()?;
        let parsed = url::Url::parse(jwks_uri)
            .map_err(|e| VerifierError::Config(format!("jwks_uri {jwks_uri:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(VerifierError::Config(format!(
                "jwks_uri {jwks_uri:?} is not an http(s) URL"
            )));
        }
        Ok(Verifier {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            jwks_uri: jwks_uri.to_string(),
            options,
            cache: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            replay: Mutex::new(ReplayCache::default()),
        })
    }

    /// The issuer tokens must come from.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The JWKS URL in use.
    pub fn jwks_uri(&self) -> &str {
        &self.jwks_uri
    }

    /// The `kid`s in the cached JWKS (sorted), for diagnostics.
    pub fn cached_kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self
            .current()
            .map(|c| c.keys.keys().cloned().collect())
            .unwrap_or_default();
        kids.sort();
        kids
    }

    fn current(&self) -> Option<Arc<KeyCache>> {
        self.cache.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn now_ms(&self) -> i64 {
        self.options.clock.now_ms()
    }

    /// Fetches the JWKS unless another caller did since `seen` (the generation the caller
    /// looked at), or the rate limit forbids it. Returns the cache to use, or `None` when
    /// nothing was fetched.
    async fn refresh(
        &self,
        seen: Option<u64>,
        trigger: Trigger,
    ) -> Result<Option<Arc<KeyCache>>, VerifierError> {
        let mut state = self.fetch.lock().await;
        let current = self.current();
        if let Some(c) = &current {
            if Some(c.generation) != seen {
                return Ok(Some(c.clone()));
            }
        }
        let now = self.now_ms();
        let interval = clock::ms(self.options.refetch_interval);
        let recently = |at: Option<i64>| at.is_some_and(|t| now.saturating_sub(t) < interval);
        let failed_recently = state.last_failed && recently(state.last_attempt_ms);
        let limited = match trigger {
            Trigger::UnknownKid => failed_recently || recently(state.last_kid_refetch_ms),
            Trigger::Stale => failed_recently,
        };
        if limited {
            return Ok(None);
        }
        state.last_attempt_ms = Some(now);
        if trigger == Trigger::UnknownKid {
            state.last_kid_refetch_ms = Some(now);
        }
        let etag = current.as_ref().and_then(|c| c.etag.clone());
        let result = self
            .fetch_jwks(current.as_deref(), etag.as_deref(), now)
            .await;
        state.last_failed = result.is_err();
        let fresh = Arc::new(result?);
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = Some(fresh.clone());
        Ok(Some(fresh))
    }

    async fn fetch_jwks(
        &self,
        current: Option<&KeyCache>,
        etag: Option<&str>,
        now: i64,
    ) -> Result<KeyCache, VerifierError> {
        let url = &self.jwks_uri;
        let request = get_request(url, etag)?;
        let response =
            self.options
                .fetcher
                .fetch(request)
                .await
                .map_err(|e| VerifierError::Fetch {
                    url: url.clone(),
                    message: e.to_string(),
                })?;
        let lifetime = clock::ms(cache_lifetime(response.headers(), &self.options));
        let generation = current.map_or(1, |c| c.generation.wrapping_add(1));
        let new_etag = response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match (response.status(), current) {
            (StatusCode::NOT_MODIFIED, Some(current)) => Ok(KeyCache {
                keys: current.keys.clone(),
                generation,
                fresh_until_ms: now.saturating_add(lifetime),
                etag: new_etag.or_else(|| current.etag.clone()),
            }),
            (StatusCode::OK, _) => {
                let keys =
                    parse_jwks(response.body(), &self.options.algorithms).map_err(|message| {
                        VerifierError::Jwks {
                            url: url.clone(),
                            message,
                        }
                    })?;
                tracing::debug!(jwks_uri = %url, keys = keys.len(), "JWKS fetched");
                Ok(KeyCache {
                    keys: Arc::new(keys),
                    generation,
                    fresh_until_ms: now.saturating_add(lifetime),
                    etag: new_etag,
                })
            }
            (status, _) => Err(VerifierError::Fetch {
                url: url.clone(),
                message: format!("status {status}"),
            }),
        }
    }

    /// The cached JWKS, refreshed first when its `max-age` ran out. A stale cache is kept when
    /// the refresh fails (the issuer may be restarting); with no cache at all the error is
    /// returned.
    async fn keys(&self) -> Result<Arc<KeyCache>, VerifierError> {
        let current = self.current();
        let now = self.now_ms();
        if let Some(c) = &current {
            if now < c.fresh_until_ms {
                return Ok(c.clone());
            }
        }
        let seen = current.as_ref().map(|c| c.generation);
        match (self.refresh(seen, Trigger::Stale).await, current) {
            (Ok(Some(fresh)), _) => Ok(fresh),
            (Ok(None), Some(stale)) => Ok(stale),
            (Err(e), Some(stale)) => {
                tracing::warn!(jwks_uri = %self.jwks_uri, error = %e, "JWKS refresh failed; using the cached keys");
                Ok(stale)
            }
            (Ok(None), None) => Err(VerifierError::Fetch {
                url: self.jwks_uri.clone(),
                message: "fetch failed recently; waiting for the refetch interval".into(),
            }),
            (Err(e), None) => Err(e),
        }
    }

    /// Verifies an access token and returns its claims.
    ///
    /// Header first: `alg` in the allow-list, `typ` `at+jwt` (or `application/at+jwt`), a `kid`
    /// found in the cached JWKS (an unknown `kid` refetches the JWKS at most once per
    /// `refetch_interval`) whose key is for that `alg`; then the signature; then `iss`, `aud`,
    /// `exp` and `nbf`/`iat` with the leeway.
    pub async fn verify(&self, token: &str) -> Result<Claims, VerifierError> {
        if token.len() > MAX_TOKEN_BYTES || token.split('.').count() != 3 {
            return Err(VerifierError::Malformed);
        }
        let header = josekit::jwt::decode_header(token).map_err(|_| VerifierError::Malformed)?;
        let alg = match header.claim("alg") {
            Some(Value::String(name)) => Alg::parse(name)
                .filter(|a| self.options.algorithms.contains(a))
                .ok_or_else(|| VerifierError::Algorithm(name.clone()))?,
            _ => return Err(VerifierError::Algorithm(String::new())),
        };
        match header.claim("typ") {
            Some(Value::String(typ)) if tokend_token_shape::is_access_typ(typ) => {}
            Some(Value::String(typ)) => return Err(VerifierError::Type(Some(typ.clone()))),
            _ => return Err(VerifierError::Type(None)),
        }
        let kid = match header.claim("kid") {
            Some(Value::String(kid)) => kid.as_str(),
            _ => return Err(VerifierError::MissingKid),
        };
        let mut cache = self.keys().await?;
        if !cache.keys.contains_key(kid) {
            match self
                .refresh(Some(cache.generation), Trigger::UnknownKid)
                .await
            {
                Ok(Some(fresh)) => cache = fresh,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(jwks_uri = %self.jwks_uri, error = %e, "JWKS refetch failed")
                }
            }
        }
        let key = cache
            .keys
            .get(kid)
            .ok_or_else(|| VerifierError::UnknownKid(kid.to_string()))?;
        if key.alg != alg {
            return Err(VerifierError::KeyMismatch(kid.to_string()));
        }
        let (payload, _) = josekit::jwt::decode_with_verifier(token, key.verifier.as_ref())
            .map_err(|e| match e {
                josekit::JoseError::InvalidSignature(_) => VerifierError::Signature,
                _ => VerifierError::Malformed,
            })?;
        let claims = Claims::from_map(payload.into())?;
        self.check_claims(&claims)?;
        Ok(claims)
    }

    /// Verifies the access token of a request to a protected resource, as it was presented
    /// (RFC 9449 §7): `Authorization: Bearer <token>` for an unbound token, or
    /// `Authorization: DPoP <token>` with a `DPoP` proof for a token bound to a key (`cnf.jkt`).
    /// The proof must be signed by that key, be made for this request (`method`, and `uri`:
    /// the URL the client addressed, as this resource is known outside, without query), carry
    /// `ath` of the token, be recent, and not have been used before here (proofs are
    /// remembered in memory for as long as they could pass the `iat` window). A bound token
    /// presented as a bearer token is refused, and so is an unbound one under `DPoP`.
    pub async fn verify_request(
        &self,
        headers: &HeaderMap,
        method: &str,
        uri: &str,
    ) -> Result<Claims, VerifierError> {
        let (scheme, token) =
            bearer::scheme_from_headers(headers).map_err(VerifierError::Authorization)?;
        let claims = self.verify(token).await?;
        let jkt = match claims.all.get("cnf") {
            None => None,
            Some(cnf) => Some(
                cnf.get("jkt")
                    .and_then(Value::as_str)
                    .ok_or(VerifierError::Claim("cnf"))?,
            ),
        };
        let jkt = match (scheme, jkt) {
            (Scheme::Bearer, None) => return Ok(claims),
            (Scheme::Bearer, Some(_)) => return Err(VerifierError::DpopBound),
            (Scheme::DPoP, None) => return Err(VerifierError::NotDpopBound),
            (Scheme::DPoP, Some(jkt)) => jkt,
        };
        let proof = proof_header(headers)
            .map_err(VerifierError::Proof)?
            .ok_or(VerifierError::Proof(ProofRefusal::Missing))?;
        let now_ms = self.options.clock.now_ms();
        let checked = check_proof(
            proof,
            &ProofContext {
                method,
                uri,
                access_token: Some(token),
                now: now_ms.div_euclid(1000),
            },
        )
        .map_err(VerifierError::Proof)?;
        if checked.jkt != jkt {
            return Err(VerifierError::Proof(ProofRefusal::Key));
        }
        let first = self
            .replay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .first_use(&checked.jkt, &checked.jti, now_ms);
        if !first {
            return Err(VerifierError::Proof(ProofRefusal::Replay));
        }
        Ok(claims)
    }

    fn check_claims(&self, claims: &Claims) -> Result<(), VerifierError> {
        if claims.iss != self.issuer {
            return Err(VerifierError::Issuer);
        }
        if !claims.aud.contains(&self.audience) {
            return Err(VerifierError::Audience);
        }
        let now = self.options.clock.now();
        let leeway = clock::secs(self.options.leeway);
        if time::is_expired(claims.exp, now, leeway) {
            return Err(VerifierError::Expired);
        }
        let not_before = claims.nbf.or(claims.iat);
        if not_before.is_some_and(|t| time::is_not_yet_valid(t, now, leeway)) {
            return Err(VerifierError::NotYetValid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use josekit::jwk::alg::ed::EdCurve;
    use josekit::jwk::KeyPair as _;
    use josekit::jws::{JwsHeader, JwsSigner, HS256};
    use josekit::jwt::JwtPayload;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    const ISSUER: &str = "https://issuer.test";
    const AUDIENCE: &str = "api";

    /// A signing key with its public JWK.
    struct TestKey {
        alg: &'static str,
        signer: Box<dyn JwsSigner>,
        public: Value,
    }

    fn ed_key(kid: &str) -> TestKey {
        let pair = EdDSA.generate_key_pair(EdCurve::Ed25519).unwrap();
        let mut public = pair.to_jwk_public_key();
        public.set_key_id(kid);
        public.set_algorithm("EdDSA");
        public.set_key_use("sig");
        let mut signer = EdDSA.signer_from_jwk(&pair.to_jwk_private_key()).unwrap();
        signer.set_key_id(kid);
        TestKey {
            alg: "EdDSA",
            signer: Box::new(signer),
            public: Value::Object(public.as_ref().clone()),
        }
    }

    fn rsa_key(kid: &str) -> TestKey {
        let pair = RS256.generate_key_pair(2048).unwrap();
        let mut public = pair.to_jwk_public_key();
        public.set_key_id(kid);
        public.set_algorithm("RS256");
        let mut signer = RS256.signer_from_jwk(&pair.to_jwk_private_key()).unwrap();
        signer.set_key_id(kid);
        TestKey {
            alg: "RS256",
            signer: Box::new(signer),
            public: Value::Object(public.as_ref().clone()),
        }
    }

    /// What the fake issuer serves.
    struct Served {
        keys: Vec<Value>,
        cache_control: Option<String>,
        jwks_status: u16,
    }

    /// An in-memory issuer: discovery and JWKS, counting JWKS requests.
    struct FakeIssuer {
        served: Mutex<Served>,
        jwks_fetches: AtomicUsize,
        conditional: AtomicUsize,
        discovery_issuer: String,
    }

    impl FakeIssuer {
        fn new(keys: &[&TestKey], cache_control: Option<&str>) -> Arc<FakeIssuer> {
            Arc::new(FakeIssuer {
                served: Mutex::new(Served {
                    keys: keys.iter().map(|k| k.public.clone()).collect(),
                    cache_control: cache_control.map(str::to_string),
                    jwks_status: 200,
                }),
                jwks_fetches: AtomicUsize::new(0),
                conditional: AtomicUsize::new(0),
                discovery_issuer: ISSUER.into(),
            })
        }

        fn publish(&self, keys: &[&TestKey]) {
            self.served.lock().unwrap().keys = keys.iter().map(|k| k.public.clone()).collect();
        }

        fn fetches(&self) -> usize {
            self.jwks_fetches.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Fetcher for FakeIssuer {
        async fn fetch(&self, request: Request<()>) -> Result<Response<Bytes>, FetchError> {
            let uri = request.uri().to_string();
            let served = self.served.lock().unwrap();
            let mut res = Response::builder();
            let body = if uri == format!("{ISSUER}/.well-known/openid-configuration") {
                json!({"issuer": self.discovery_issuer, "jwks_uri": format!("{ISSUER}/jwks")})
            } else if uri == format!("{ISSUER}/jwks") {
                self.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                if served.jwks_status != 200 {
                    return Ok(res.status(served.jwks_status).body(Bytes::new())?);
                }
                let doc = json!({"keys": served.keys});
                let etag = format!("\"{}\"", doc.to_string().len());
                if request.headers().get(header::IF_NONE_MATCH).is_some() {
                    self.conditional.fetch_add(1, Ordering::SeqCst);
                }
                if let Some(cc) = &served.cache_control {
                    res = res.header(header::CACHE_CONTROL, cc);
                }
                res = res.header(header::ETAG, etag);
                doc
            } else {
                return Ok(res.status(404).body(Bytes::new())?);
            };
            Ok(res.status(200).body(Bytes::from(body.to_string()))?)
        }
    }

    fn claims_at(now: i64) -> Map<String, Value> {
        let v = json!({
            "iss": ISSUER, "sub": "user-1", "aud": AUDIENCE, "exp": now + 900, "iat": now,
            "nbf": now, "jti": "j1", "client_id": "web", "scope": "read write",
            "roles": ["user"],
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn sign_with(key: &dyn JwsSigner, typ: Option<&str>, claims: Map<String, Value>) -> String {
        let mut header = JwsHeader::new();
        if let Some(typ) = typ {
            header.set_token_type(typ);
        }
        let payload = JwtPayload::from_map(claims).unwrap();
        josekit::jwt::encode_with_signer(&payload, &header, key).unwrap()
    }

    fn sign(key: &TestKey, claims: Map<String, Value>) -> String {
        sign_with(key.signer.as_ref(), Some("at+jwt"), claims)
    }

    struct Setup {
        clock: Arc<ManualClock>,
        issuer: Arc<FakeIssuer>,
        verifier: Verifier,
    }

    async fn setup(keys: &[&TestKey], cache_control: Option<&str>) -> Setup {
        let clock = ManualClock::new(1_700_000_000_000);
        let issuer = FakeIssuer::new(keys, cache_control);
        let options = VerifierOptions::default()
            .with_clock(clock.clone())
            .with_fetcher(issuer.clone());
        let verifier = Verifier::discover(ISSUER, AUDIENCE, options).await.unwrap();
        Setup {
            clock,
            issuer,
            verifier,
        }
    }

    fn now(s: &Setup) -> i64 {
        s.clock.now()
    }

    #[tokio::test]
    async fn a_valid_token_yields_its_claims() {
        let key = ed_key("k1");
        let s = setup(&[&key], Some("public, max-age=300")).await;
        assert_eq!(s.verifier.jwks_uri(), format!("{ISSUER}/jwks"));
        let claims = s
            .verifier
            .verify(&sign(&key, claims_at(now(&s))))
            .await
            .unwrap();
        assert_eq!(claims.sub, "user-1");
        assert_eq!(claims.aud, vec![AUDIENCE.to_string()]);
        assert!(claims.has_scope("write") && !claims.has_scope("admin"));
        assert!(claims.has_role("user"));
        assert_eq!(claims.all["jti"], "j1");
    }

    #[tokio::test]
    async fn rs256_and_application_at_jwt_are_accepted() {
        let key = rsa_key("r1");
        let s = setup(&[&key], None).await;
        let token = sign_with(
            key.signer.as_ref(),
            Some("application/at+jwt"),
            claims_at(now(&s)),
        );
        assert_eq!(s.verifier.verify(&token).await.unwrap().sub, "user-1");
        assert_eq!(key.alg, "RS256");
    }

    #[tokio::test]
    async fn the_cache_lives_for_max_age_and_then_refreshes() {
        let key = ed_key("k1");
        let s = setup(&[&key], Some("public, max-age=120")).await;
        let token = sign(&key, claims_at(now(&s)));
        s.verifier.verify(&token).await.unwrap();
        s.verifier.verify(&token).await.unwrap();
        assert_eq!(s.issuer.fetches(), 1);
        s.clock.advance(Duration::from_secs(119));
        s.verifier.verify(&token).await.unwrap();
        assert_eq!(s.issuer.fetches(), 1, "still fresh at 119 s");
        s.clock.advance(Duration::from_secs(2));
        s.verifier.verify(&token).await.unwrap();
        assert_eq!(s.issuer.fetches(), 2, "refetched after max-age");
        assert_eq!(
            s.issuer.conditional.load(Ordering::SeqCst),
            1,
            "with If-None-Match"
        );
    }

    #[tokio::test]
    async fn max_age_is_bounded_by_the_options() {
        let key = ed_key("k1");
        // max-age=0: cached for min_cache (30 s) all the same.
        let s = setup(&[&key], Some("max-age=0")).await;
        let token = sign(&key, claims_at(now(&s)));
        s.verifier.verify(&token).await.unwrap();
        s.clock.advance(Duration::from_secs(29));
        s.verifier.verify(&token).await.unwrap();
        assert_eq!(s.issuer.fetches(), 1);
        s.clock.advance(Duration::from_secs(2));
        s.verifier.verify(&token).await.unwrap();
        assert_eq!(s.issuer.fetches(), 2);

        // A year of max-age is capped at max_cache (24 h).
        let s = setup(&[&key], Some("max-age=31536000")).await;
        s.verifier
            .verify(&sign(&key, claims_at(now(&s))))
            .await
            .unwrap();
        s.clock.advance(Duration::from_secs(24 * 3600 + 1));
        s.verifier
            .verify(&sign(&key, claims_at(now(&s))))
            .await
            .unwrap();
        assert_eq!(s.issuer.fetches(), 2);
    }

    #[test]
    fn cache_lifetime_reads_max_age_age_and_no_store() {
        let opts = VerifierOptions::default();
        let lifetime = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            cache_lifetime(&h, &opts).as_secs()
        };
        assert_eq!(lifetime(&[("cache-control", "public, max-age=600")]), 600);
        assert_eq!(
            lifetime(&[("cache-control", "max-age=600"), ("age", "100")]),
            500
        );
        assert_eq!(lifetime(&[("cache-control", "no-store")]), 30);
        assert_eq!(lifetime(&[]), 300);
        assert_eq!(lifetime(&[("cache-control", "max-age=\"90\"")]), 90);
    }

    #[tokio::test]
    async fn an_unknown_kid_refetches_once_then_is_rate_limited() {
        let old = ed_key("old");
        let new = ed_key("new");
        let s = setup(&[&old], Some("max-age=3600")).await;
        s.verifier
            .verify(&sign(&old, claims_at(now(&s))))
            .await
            .unwrap();
        assert_eq!(s.issuer.fetches(), 1);

        // A kid nobody publishes: one refetch, then refused without asking again.
        let stranger = ed_key("stranger");
        let token = sign(&stranger, claims_at(now(&s)));
        assert!(matches!(
            s.verifier.verify(&token).await,
            Err(VerifierError::UnknownKid(k)) if k == "stranger"
        ));
        assert_eq!(s.issuer.fetches(), 2);
        for _ in 0..5 {
            assert!(s.verifier.verify(&token).await.is_err());
        }
        assert_eq!(s.issuer.fetches(), 2, "rate-limited");

        // The issuer publishes a new key: within the interval it is still unknown...
        s.issuer.publish(&[&old, &new]);
        s.clock.advance(Duration::from_secs(10));
        let fresh = sign(&new, claims_at(now(&s)));
        assert!(matches!(
            s.verifier.verify(&fresh).await,
            Err(VerifierError::UnknownKid(_))
        ));
        assert_eq!(s.issuer.fetches(), 2);
        // ...and once the interval has passed, one refetch finds it.
        s.clock.advance(Duration::from_secs(21));
        let fresh = sign(&new, claims_at(now(&s)));
        assert_eq!(s.verifier.verify(&fresh).await.unwrap().sub, "user-1");
        assert_eq!(s.issuer.fetches(), 3);
        assert_eq!(s.verifier.cached_kids(), vec!["new", "old"]);
    }

    #[tokio::test]
    async fn the_refetch_interval_is_configurable() {
        let key = ed_key("k1");
        let clock = ManualClock::new(1_700_000_000_000);
        let issuer = FakeIssuer::new(&[&key], Some("max-age=3600"));
        let options = VerifierOptions::default()
            .with_clock(clock.clone())
            .with_fetcher(issuer.clone())
            .with_refetch_interval(Duration::from_secs(5));
        let verifier = Verifier::discover(ISSUER, AUDIENCE, options).await.unwrap();
        let token = sign(&ed_key("other"), claims_at(clock.now()));
        assert!(verifier.verify(&token).await.is_err());
        assert!(verifier.verify(&token).await.is_err());
        assert_eq!(issuer.fetches(), 2, "first fetch, one refetch");
        clock.advance(Duration::from_secs(5));
        assert!(verifier.verify(&token).await.is_err());
        assert_eq!(issuer.fetches(), 3);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_stale_keys() {
        let key = ed_key("k1");
        let s = setup(&[&key], Some("max-age=60")).await;
        s.verifier
            .verify(&sign(&key, claims_at(now(&s))))
            .await
            .unwrap();
        s.issuer.served.lock().unwrap().jwks_status = 503;
        s.clock.advance(Duration::from_secs(61));
        s.verifier
            .verify(&sign(&key, claims_at(now(&s))))
            .await
            .unwrap();
        s.verifier
            .verify(&sign(&key, claims_at(now(&s))))
            .await
            .unwrap();
        assert_eq!(
            s.issuer.fetches(),
            2,
            "failed refresh retried only after the interval"
        );
    }

    #[tokio::test]
    async fn wrong_algorithms_are_refused() {
        let key = ed_key("k1");
        let s = setup(&[&key], None).await;
        // HS256 with the kid of a published key.
        let mut hs = HS256
            .signer_from_bytes(b"0123456789abcdef0123456789abcdef")
            .unwrap();
        hs.set_key_id("k1");
        let token = sign_with(&hs, Some("at+jwt"), claims_at(now(&s)));
        assert!(matches!(
            s.verifier.verify(&token).await,
            Err(VerifierError::Algorithm(a)) if a == "HS256"
        ));
        // alg none.
        let unsigned = {
            use base64::Engine;
            let enc =
                |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
            format!(
                "{}.{}.",
                enc(&json!({"alg": "none", "typ": "at+jwt", "kid": "k1"})),
                enc(&Value::Object(claims_at(now(&s))))
            )
        };
        assert!(matches!(
            s.verifier.verify(&unsigned).await,
            Err(VerifierError::Algorithm(_))
        ));
        // RS256 refused when only EdDSA is allowed.
        let rsa = rsa_key("r1");
        s.issuer.publish(&[&key, &rsa]);
        let clock = ManualClock::new(1_700_000_000_000);
        let only_ed = VerifierOptions {
            algorithms: vec![Alg::EdDSA],
            ..VerifierOptions::default()
        }
        .with_clock(clock.clone())
        .with_fetcher(s.issuer.clone());
        let v = Verifier::discover(ISSUER, AUDIENCE, only_ed).await.unwrap();
        assert!(matches!(
            v.verify(&sign(&rsa, claims_at(clock.now()))).await,
            Err(VerifierError::Algorithm(_))
        ));
        // An EdDSA header on an RSA kid.
        let mut forged = EdDSA
            .signer_from_jwk(
                &EdDSA
                    .generate_key_pair(EdCurve::Ed25519)
                    .unwrap()
                    .to_jwk_private_key(),
            )
            .unwrap();
        forged.set_key_id("r1");
        let token = sign_with(&forged, Some("at+jwt"), claims_at(now(&s)));
        assert!(matches!(
            s.verifier.verify(&token).await,
            Err(VerifierError::KeyMismatch(_))
        ));
    }

    #[tokio::test]
    async fn wrong_types_are_refused() {
        let key = ed_key("k1");
        let s = setup(&[&key], None).await;
        for typ in [Some("rt+jwt"), Some("JWT"), None] {
            let token = sign_with(key.signer.as_ref(), typ, claims_at(now(&s)));
            let err = s.verifier.verify(&token).await.unwrap_err();
            assert!(matches!(err, VerifierError::Type(_)), "{typ:?}: {err}");
            assert!(err.is_invalid_token());
        }
    }

    #[tokio::test]
    async fn wrong_claims_are_refused() {
        let key = ed_key("k1");
        let s = setup(&[&key], None).await;
        let t = now(&s);
        let with = |name: &str, value: Value| {
            let mut c = claims_at(t);
            c.insert(name.into(), value);
            sign(&key, c)
        };
        let cases = [
            (with("iss", json!("https://evil.test")), "issuer"),
            (with("aud", json!("other-api")), "audience"),
            (with("aud", json!(["a", "b"])), "audience"),
            (with("exp", json!(t - 31)), "expired"),
            (with("nbf", json!(t + 31)), "not_yet_valid"),
            (with("roles", json!("admin")), "claims"),
        ];
        for (token, reason) in cases {
            let err = s.verifier.verify(&token).await.unwrap_err();
            assert_eq!(err.reason(), reason, "{err}");
        }
        // Within the leeway.
        s.verifier
            .verify(&with("exp", json!(t - 29)))
            .await
            .unwrap();
        s.verifier
            .verify(&with("aud", json!(["x", AUDIENCE])))
            .await
            .unwrap();
        // Moving time expires a token.
        let token = sign(&key, claims_at(t));
        s.clock.advance(Duration::from_secs(900 + 31));
        assert!(matches!(
            s.verifier.verify(&token).await,
            Err(VerifierError::Expired)
        ));
    }

    #[tokio::test]
    async fn a_tampered_token_fails_its_signature() {
        let key = ed_key("k1");
        let s = setup(&[&key], None).await;
        let token = sign(&key, claims_at(now(&s)));
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut c = claims_at(now(&s));
        c.insert("sub".into(), json!("admin"));
        {
            use base64::Engine;
            parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Value::Object(c).to_string());
        }
        assert!(matches!(
            s.verifier.verify(&parts.join(".")).await,
            Err(VerifierError::Signature)
        ));
        assert!(matches!(
            s.verifier.verify("not-a-token").await,
            Err(VerifierError::Malformed)
        ));
    }

    #[tokio::test]
    async fn discovery_must_name_the_same_issuer() {
        let key = ed_key("k1");
        let issuer = Arc::new(FakeIssuer {
            discovery_issuer: "https://other.test".into(),
            ..Arc::try_unwrap(FakeIssuer::new(&[&key], None))
                .ok()
                .unwrap()
        });
        let options = VerifierOptions::default().with_fetcher(issuer);
        let err = Verifier::discover(ISSUER, AUDIENCE, options)
            .await
            .unwrap_err();
        assert!(matches!(err, VerifierError::Discovery { .. }), "{err}");
        assert!(!err.is_invalid_token());
    }

    #[test]
    fn the_act_claim_of_an_exchanged_token_is_read_with_its_chain() {
        let mut map = claims_at(1_800_000_000);
        assert_eq!(Claims::from_map(map.clone()).unwrap().act, None);
        map.insert(
            "act".into(),
            json!({"sub": "gateway", "client_id": "gateway",
                   "act": {"sub": "edge", "client_id": "edge"}}),
        );
        let claims = Claims::from_map(map.clone()).unwrap();
        let actor = claims.actor().unwrap();
        assert_eq!(actor.sub, "gateway");
        assert_eq!(actor.client_id.as_deref(), Some("gateway"));
        let chain: Vec<&str> = actor.chain().map(|a| a.sub.as_str()).collect();
        assert_eq!(chain, ["gateway", "edge"]);
        for bad in [
            json!("gateway"),
            json!({"client_id": "x"}),
            json!({"sub": 7}),
        ] {
            map.insert("act".into(), bad.clone());
            assert!(
                matches!(
                    Claims::from_map(map.clone()),
                    Err(VerifierError::Claim("act"))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn discovery_urls_follow_oidc_and_rfc_8414() {
        assert_eq!(
            discovery_urls("https://id.example.com/tenant1").unwrap(),
            vec![
                "https://id.example.com/tenant1/.well-known/openid-configuration",
                "https://id.example.com/.well-known/oauth-authorization-server/tenant1",
            ]
        );
        assert!(discovery_urls("ftp://x").is_err());
    }

    #[test]
    fn leeway_is_capped() {
        let options = VerifierOptions {
            leeway: Duration::from_secs(60),
            ..VerifierOptions::default()
        };
        assert!(matches!(
            Verifier::with_jwks_uri(ISSUER, AUDIENCE, "https://issuer.test/jwks", options),
            Err(VerifierError::Config(_))
        ));
    }

    #[test]
    fn a_proof_is_remembered_while_it_could_be_replayed_then_forgotten() {
        let mut cache = ReplayCache::default();
        let t = 1_800_000_000_000;
        assert!(cache.first_use("jkt", "a", t));
        assert!(!cache.first_use("jkt", "a", t + ReplayCache::TTL_MS - 1));
        assert!(cache.first_use("jkt", "b", t), "another jti");
        assert!(cache.first_use("other", "a", t), "another key");
        assert!(cache.first_use("jkt", "a", t + ReplayCache::TTL_MS));
        // Swept: what expired is gone from the map.
        assert!(cache.first_use("jkt", "c", t + 10 * ReplayCache::TTL_MS));
        assert_eq!(cache.seen.len(), 1);
    }

    #[test]
    fn refusals_answer_the_challenge_of_their_scheme() {
        let c = VerifierError::Proof(ProofRefusal::Ath).challenge(Some(Scheme::DPoP));
        assert!(c.starts_with("DPoP error=\"invalid_dpop_proof\""), "{c}");
        assert!(c.ends_with("algs=\"ES256 EdDSA RS256 PS256\""), "{c}");
        let c = VerifierError::Expired.challenge(Some(Scheme::DPoP));
        assert!(c.starts_with("DPoP error=\"invalid_token\""), "{c}");
        let c = VerifierError::NotDpopBound.challenge(Some(Scheme::DPoP));
        assert!(c.starts_with("DPoP error=\"invalid_token\""), "{c}");
        let c = VerifierError::DpopBound.challenge(Some(Scheme::Bearer));
        assert!(c.starts_with("Bearer error=\"invalid_token\""), "{c}");
        let c = VerifierError::Expired.challenge(None);
        assert!(c.starts_with("Bearer "), "{c}");
    }

    #[test]
    fn bearer_tokens_are_read_from_authorization() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc.def.ghi"));
        h.insert(header::AUTHORIZATION, "bearer  x".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("x"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
    }
}
