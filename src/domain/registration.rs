//! The `Registration` service: dynamic client registration (RFC 7591) and its management
//! protocol (RFC 7592), as docs/registration.md describes them. Who may register
//! (`TOKEND_CLIENT_REGISTRATION`), the initial access tokens of `token` mode, which metadata a
//! registered client may have, and the registration access tokens that read, replace and delete
//! a registered client. No HTTP here: `http/registration.rs` reads the request and renders what
//! these functions decide.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::authorize::OIDC_SCOPES;
use super::clients::{
    hash_secret, is_scope_token, redirect_uri_problem, secret_matches, validate_client,
    AUTH_METHODS, GRANT_AUTHORIZATION_CODE, GRANT_CLIENT_CREDENTIALS, GRANT_PASSWORD,
    GRANT_REFRESH_TOKEN, GRANT_TOKEN_EXCHANGE, GRANT_TYPES,
};
use super::events::{EventType, Events, NewEvent};
use super::limits::Limits;
use super::tokens::LEEWAY_SECS;
use super::{ids, Error};
use crate::clock::SharedClock;
use crate::config::RegistrationMode;
use crate::keys::{Alg, Keys};
use crate::metrics::Metrics;
use crate::store::{
    ClientMetadata, ClientRecord, ClientStore, RegistrationRecord, StoreError, PRIVATE_KEY_JWT,
};

/// The JOSE `typ` of an initial access token (RFC 7591 §3, docs/registration.md). No other
/// token tokend issues has it, and nothing that expects an access (`at+jwt`), refresh
/// (`rt+jwt`) or ID (`JWT`) token accepts it, nor the reverse.
pub(crate) const INITIAL_ACCESS_TYP: &str = "tokend-registration+jwt";
/// The path of the registration endpoint; a registered client's configuration endpoint is
/// this path, `/` and its id (RFC 7592 §1).
pub(crate) const REGISTER_PATH: &str = "/oauth/register";
/// The response type of the authorization code grant, the only one tokend serves.
const RESPONSE_TYPE_CODE: &str = "code";
/// The most redirect URIs (and post-logout redirect URIs) a client may have, and their
/// longest length; the same bounds as `validate_client`'s.
const MAX_URIS: usize = 32;
const MAX_URI_LEN: usize = 2048;

/// What the service needs from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct RegistrationSettings {
    pub(crate) issuer: String,
    /// `TOKEND_CLIENT_REGISTRATION`.
    pub(crate) mode: RegistrationMode,
    /// `TOKEND_SIGNING_ALGS` (for `id_token_signed_response_alg`).
    pub(crate) signing_algs: Vec<Alg>,
}

/// Why a registration or management request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegistrationError {
    /// `TOKEND_CLIENT_REGISTRATION=off`: the endpoints do not exist.
    #[error("client registration is off")]
    Disabled,
    /// A missing, invalid or expired initial access token, or a registration access token that
    /// is not the client's (RFC 6750 §3.1; RFC 7592 §2).
    #[error("{0}")]
    InvalidToken(String),
    /// RFC 7591 §3.2.2 `invalid_redirect_uri`.
    #[error("{0}")]
    InvalidRedirectUri(String),
    /// RFC 7591 §3.2.2 `invalid_client_metadata` (bad JSON included).
    #[error("{0}")]
    InvalidClientMetadata(String),
    /// Rate limited, a store down, anything else.
    #[error(transparent)]
    Other(#[from] Error),
}

impl From<StoreError> for RegistrationError {
    fn from(e: StoreError) -> Self {
        RegistrationError::Other(e.into())
    }
}

fn metadata_error(msg: impl Into<String>) -> RegistrationError {
    RegistrationError::InvalidClientMetadata(msg.into())
}

fn uri_error(msg: impl Into<String>) -> RegistrationError {
    RegistrationError::InvalidRedirectUri(msg.into())
}

/// The client metadata of a registration or update request (RFC 7591 §2, RFC 7592 §2.2).
/// Members tokend does not know are ignored (RFC 7591 §2); a member sent as `null` counts as
/// omitted.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct ClientMetadataRequest {
    redirect_uris: Option<Vec<String>>,
    post_logout_redirect_uris: Option<Vec<String>>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
    client_name: Option<String>,
    scope: Option<String>,
    id_token_signed_response_alg: Option<String>,
    /// RFC 9126 §6: this client's authorization requests must be pushed.
    require_pushed_authorization_requests: Option<bool>,
    /// RFC 9449 §5.2: this client always sends DPoP proofs to the token endpoint.
    dpop_bound_access_tokens: Option<bool>,
    /// `private_key_jwt` (RFC 7591 §2, RFC 7523 §2.2): the client's public keys, inline.
    jwks: Option<Value>,
    /// `private_key_jwt`: where the client publishes its public keys.
    jwks_uri: Option<String>,
    /// `private_key_jwt`: the algorithm of the client's assertions.
    token_endpoint_auth_signing_alg: Option<String>,
    /// Never granted by registration (docs/token_exchange.md, "Clients"): read only to refuse
    /// it plainly rather than ignore it.
    token_exchange_audiences: Option<Value>,
    /// Never granted by registration, as `token_exchange_audiences`.
    resources: Option<Value>,
    /// Only in an update, where it must be the client's own id (RFC 7592 §2.2).
    client_id: Option<String>,
    /// Only in an update, where it must be the client's current secret (RFC 7592 §2.2).
    client_secret: Option<String>,
}

impl ClientMetadataRequest {
    /// Parses a request body: a JSON object, else `invalid_client_metadata`.
    pub(crate) fn parse(body: &[u8]) -> Result<ClientMetadataRequest, RegistrationError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| metadata_error(format!("the body is not JSON: {e}")))?;
        if !value.is_object() {
            return Err(metadata_error(
                "the body must be a JSON object of client metadata",
            ));
        }
        serde_json::from_value(value).map_err(|e| metadata_error(format!("{e}")))
    }
}

/// A client information response (RFC 7591 §3.2.1, RFC 7592 §3). The secret is there only in
/// the answer to the registration that created it.
#[derive(Serialize)]
pub(crate) struct ClientInformation {
    client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    client_id_issued_at: i64,
    /// `0` (the secret does not expire), for a confidential client only.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret_expires_at: Option<i64>,
    registration_access_token: String,
    registration_client_uri: String,
    redirect_uris: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    post_logout_redirect_uris: Vec<String>,
    token_endpoint_auth_method: String,
    grant_types: Vec<String>,
    response_types: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_name: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token_signed_response_alg: Option<String>,
    /// RFC 9126 §6.
    require_pushed_authorization_requests: bool,
    /// RFC 9449 §5.2.
    dpop_bound_access_tokens: bool,
    /// `private_key_jwt` clients: their keys, as registered (public keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    jwks: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwks_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_endpoint_auth_signing_alg: Option<String>,
}

impl ClientInformation {
    /// `registration_client_uri`, where RFC 7592 manages the client.
    pub(crate) fn registration_client_uri(&self) -> &str {
        &self.registration_client_uri
    }
}

/// The claims of an initial access token.
#[derive(Debug, Serialize, Deserialize)]
struct InitialAccessClaims {
    iss: String,
    /// The registration endpoint's URL.
    aud: String,
    iat: i64,
    exp: i64,
    jti: String,
    /// Scopes beyond the OpenID Connect ones that clients registered with this token may have.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    scope: String,
}

/// What a registration is allowed: by an initial access token, or anonymously (`open` mode).
struct Permit {
    /// No initial access token: public clients only.
    anonymous: bool,
    /// Scopes beyond the OpenID Connect ones.
    allowed_scopes: Vec<String>,
}

/// Validated metadata, ready to be stored.
struct Metadata {
    grant_types: Vec<String>,
    scopes: Vec<String>,
    meta: ClientMetadata,
    /// Not a public client: it authenticates with a secret or with its keys.
    confidential: bool,
    /// It authenticates with a secret, which registration generates.
    secret: bool,
}

/// What a client authenticates with, which an update cannot change: nothing (`none`), a
/// secret, or its keys (`private_key_jwt`).
fn credential_kind(method: &str) -> &'static str {
    match method {
        "none" => "none",
        PRIVATE_KEY_JWT => PRIVATE_KEY_JWT,
        _ => "secret",
    }
}

/// The registration endpoint's URL for `issuer` (the `aud` of initial access tokens).
pub(crate) fn registration_endpoint(issuer: &str) -> String {
    format!("{issuer}{REGISTER_PATH}")
}

/// Signs an initial access token for `tokend clients registration-token`: valid for `ttl` from
/// `now` (Unix seconds), allowing `scopes` beyond the OpenID Connect ones. Returns the token
/// and its expiry (Unix seconds). Signed like every token with the active key of `alg` (the
/// first configured algorithm), so the server checks it with the keyset it already has
/// (docs/registration.md).
pub(crate) fn issue_initial_access_token(
    keys: &Keys,
    alg: Alg,
    issuer: &str,
    ttl: Duration,
    scopes: &[String],
    now: i64,
) -> Result<(String, i64), Error> {
    for s in scopes {
        if !is_scope_token(s) {
            return Err(Error::Invalid(format!("{s:?} is not a scope")));
        }
    }
    let exp = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
    let scopes: BTreeSet<&str> = scopes.iter().map(String::as_str).collect();
    let claims = InitialAccessClaims {
        iss: issuer.to_string(),
        aud: registration_endpoint(issuer),
        iat: now,
        exp,
        jti: ids::random_id()?,
        scope: scopes.into_iter().collect::<Vec<_>>().join(" "),
    };
    let Value::Object(map) =
        serde_json::to_value(&claims).map_err(|e| Error::Internal(e.to_string()))?
    else {
        return Err(Error::Internal("claims are not an object".into()));
    };
    let token = keys.sign(alg, INITIAL_ACCESS_TYP, &map, now)?;
    Ok((token, exp))
}

/// Deduplicates, keeping the first of each.
fn unique(list: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    list.into_iter()
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

/// The grant types a registered client may have: every one tokend implements but `password`
/// and token exchange.
fn registrable_grants() -> Vec<&'static str> {
    GRANT_TYPES
        .iter()
        .copied()
        .filter(|g| *g != GRANT_PASSWORD && *g != GRANT_TOKEN_EXCHANGE)
        .collect()
}

/// Checks a request's metadata against RFC 7591 §2 and tokend's rules (docs/registration.md,
/// "Metadata"); `allowed_scopes` are the scopes beyond the OpenID Connect ones.
fn validate_metadata(
    req: &ClientMetadataRequest,
    allowed_scopes: &[String],
) -> Result<Metadata, RegistrationError> {
    let grant_types = unique(
        req.grant_types
            .clone()
            .unwrap_or_else(|| vec![GRANT_AUTHORIZATION_CODE.to_string()]),
    );
    if grant_types.is_empty() {
        return Err(metadata_error(
            "grant_types must name at least one grant type",
        ));
    }
    for g in &grant_types {
        if g == GRANT_PASSWORD {
            return Err(metadata_error(
                "a registered client may not use the password grant: a third-party application \
                 must never collect passwords; sign users in with authorization_code",
            ));
        }
        if g == GRANT_TOKEN_EXCHANGE {
            return Err(metadata_error(
                "a registered client may not use token exchange: which audiences a client may \
                 exchange tokens for is the operator's to grant (token_exchange_audiences in the \
                 clients file or tokend clients create)",
            ));
        }
        if !GRANT_TYPES.contains(&g.as_str()) {
            return Err(metadata_error(format!(
                "unsupported grant type {g:?} (supported: {})",
                registrable_grants().join(", ")
            )));
        }
    }
    // A client never grants itself audiences (docs/token_exchange.md, "Clients").
    for (member, value) in [
        ("token_exchange_audiences", &req.token_exchange_audiences),
        ("resources", &req.resources),
    ] {
        if value.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(metadata_error(format!(
                "{member} cannot be registered: the resources and audiences a client may ask \
                 tokens for are granted by the operator (the clients file or tokend clients \
                 create)"
            )));
        }
    }
    let code = grant_types.iter().any(|g| g == GRANT_AUTHORIZATION_CODE);
    let signs_users_in = grant_types
        .iter()
        .any(|g| g != GRANT_REFRESH_TOKEN && g != GRANT_CLIENT_CREDENTIALS);
    if grant_types.iter().any(|g| g == GRANT_REFRESH_TOKEN) && !signs_users_in {
        return Err(metadata_error(
            "the refresh_token grant needs a grant that signs a user in (authorization_code or \
             the device grant)",
        ));
    }
    // RFC 7591 §2.1: the code response type goes with the authorization_code grant. Omitted,
    // the response types follow the grant types.
    let response_types = unique(req.response_types.clone().unwrap_or_else(|| {
        if code {
            vec![RESPONSE_TYPE_CODE.to_string()]
        } else {
            Vec::new()
        }
    }));
    if let Some(r) = response_types.iter().find(|r| *r != RESPONSE_TYPE_CODE) {
        return Err(metadata_error(format!(
            "unsupported response type {r:?}: tokend serves only \"code\""
        )));
    }
    if code != response_types.iter().any(|r| r == RESPONSE_TYPE_CODE) {
        return Err(metadata_error(
            "grant_types and response_types disagree: the \"code\" response type goes with the \
             authorization_code grant, and only with it (RFC 7591 §2.1)",
        ));
    }
    // RFC 7591 §2: client_secret_basic when omitted.
    let method = req
        .token_endpoint_auth_method
        .clone()
        .unwrap_or_else(|| "client_secret_basic".to_string());
    if !AUTH_METHODS.contains(&method.as_str()) {
        return Err(metadata_error(format!(
            "unsupported token_endpoint_auth_method {method:?} (supported: {})",
            AUTH_METHODS.join(", ")
        )));
    }
    let confidential = method != "none";
    let secret = confidential && method != PRIVATE_KEY_JWT;
    let keys_given = req.jwks.is_some() || req.jwks_uri.is_some();
    if method == PRIVATE_KEY_JWT && !keys_given {
        return Err(metadata_error(
            "token_endpoint_auth_method \"private_key_jwt\" needs the client's public keys: \
             jwks (a JWK Set) or jwks_uri (RFC 7591 §2)",
        ));
    }
    if method != PRIVATE_KEY_JWT && (keys_given || req.token_endpoint_auth_signing_alg.is_some()) {
        return Err(metadata_error(
            "jwks, jwks_uri and token_endpoint_auth_signing_alg go with \
             token_endpoint_auth_method \"private_key_jwt\"",
        ));
    }
    let redirect_uris = unique(req.redirect_uris.clone().unwrap_or_default());
    check_uris(&redirect_uris, "redirect URI", uri_error)?;
    if code && redirect_uris.is_empty() {
        return Err(uri_error(
            "the authorization_code grant needs at least one redirect URI",
        ));
    }
    let post_logout_redirect_uris =
        unique(req.post_logout_redirect_uris.clone().unwrap_or_default());
    check_uris(
        &post_logout_redirect_uris,
        "post-logout redirect URI",
        metadata_error,
    )?;
    let scopes = match &req.scope {
        None => OIDC_SCOPES.iter().map(|s| s.to_string()).collect(),
        Some(scope) => {
            let mut scopes = Vec::new();
            for s in scope.split(' ').filter(|s| !s.is_empty()) {
                if !is_scope_token(s) {
                    return Err(metadata_error(format!("{s:?} is not a scope")));
                }
                if !OIDC_SCOPES.contains(&s) && !allowed_scopes.iter().any(|a| a == s) {
                    return Err(metadata_error(format!(
                        "scope {s:?} is not available to this registration: registered clients \
                         may have {}{}",
                        OIDC_SCOPES.join(", "),
                        if allowed_scopes.is_empty() {
                            String::new()
                        } else {
                            format!(", {}", allowed_scopes.join(", "))
                        }
                    )));
                }
                scopes.push(s.to_string());
            }
            unique(scopes)
        }
    };
    Ok(Metadata {
        grant_types,
        scopes,
        meta: ClientMetadata {
            redirect_uris,
            post_logout_redirect_uris,
            // Registered clients always see the consent page (docs/registration.md).
            first_party: false,
            client_name: req.client_name.clone(),
            token_endpoint_auth_method: Some(method),
            id_token_signed_response_alg: req.id_token_signed_response_alg.clone(),
            require_pushed_authorization_requests: req
                .require_pushed_authorization_requests
                .unwrap_or(false),
            dpop_bound_access_tokens: req.dpop_bound_access_tokens.unwrap_or(false),
            jwks: req.jwks.clone(),
            jwks_uri: req.jwks_uri.clone(),
            token_endpoint_auth_signing_alg: req.token_endpoint_auth_signing_alg.clone(),
            // Never from a registration (above).
            token_exchange_audiences: Vec::new(),
            resources: Vec::new(),
        },
        secret,
        confidential,
    })
}

/// The redirect URI rules of docs/authorize.md ("Redirect URIs"), each failure answered with
/// `error`.
fn check_uris(
    uris: &[String],
    what: &str,
    error: fn(String) -> RegistrationError,
) -> Result<(), RegistrationError> {
    if uris.len() > MAX_URIS {
        return Err(error(format!("more than {MAX_URIS} {what}s")));
    }
    for uri in uris {
        if uri.len() > MAX_URI_LEN {
            return Err(error(format!(
                "a {what} is longer than {MAX_URI_LEN} characters"
            )));
        }
        if let Some(problem) = redirect_uri_problem(uri) {
            return Err(error(format!("{what} {uri:?} {problem}")));
        }
    }
    Ok(())
}

/// The `Registration` service.
pub(crate) struct Registration {
    /// Every known client (built-in and static ones are never managed here).
    clients: Arc<dyn ClientStore>,
    keys: Keys,
    limits: Arc<Limits>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    settings: RegistrationSettings,
    events: Events,
}

impl Registration {
    pub(crate) fn new(
        clients: Arc<dyn ClientStore>,
        keys: Keys,
        limits: Arc<Limits>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        settings: RegistrationSettings,
        events: Events,
    ) -> Registration {
        Registration {
            clients,
            keys,
            limits,
            clock,
            metrics,
            settings,
            events,
        }
    }

    /// `Disabled` while `TOKEND_CLIENT_REGISTRATION=off`: then the endpoints do not exist, and
    /// a request is answered before its body is read.
    pub(crate) fn check_enabled(&self) -> Result<(), RegistrationError> {
        match self.settings.mode {
            RegistrationMode::Off => Err(RegistrationError::Disabled),
            RegistrationMode::Token | RegistrationMode::Open => Ok(()),
        }
    }

    fn count(&self, event: &str) {
        self.metrics.registrations.with_label_values(&[event]).inc();
    }

    /// Counts a refused request by why it was refused.
    fn counted<T>(&self, r: Result<T, RegistrationError>) -> Result<T, RegistrationError> {
        match &r {
            Err(RegistrationError::InvalidToken(_)) => self.count("unauthorized"),
            Err(RegistrationError::InvalidRedirectUri(_))
            | Err(RegistrationError::InvalidClientMetadata(_)) => self.count("refused"),
            _ => {}
        }
        r
    }

    /// What an initial access token allows, if it is one of this issuer's and still valid.
    fn check_initial_token(&self, token: &str) -> Result<Permit, RegistrationError> {
        let invalid = |why: &str| RegistrationError::InvalidToken(why.to_string());
        let now = self.clock.now();
        let verified = self
            .keys
            .verify(token, INITIAL_ACCESS_TYP, now)
            .map_err(|_| invalid("not an initial access token of this server"))?;
        let claims: InitialAccessClaims = serde_json::from_value(Value::Object(verified.claims))
            .map_err(|_| invalid("not an initial access token of this server"))?;
        if claims.iss != self.settings.issuer
            || claims.aud != registration_endpoint(&self.settings.issuer)
        {
            return Err(invalid("not an initial access token of this server"));
        }
        if now > claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(invalid("the initial access token has expired"));
        }
        if claims.iat > now.saturating_add(LEEWAY_SECS) {
            return Err(invalid("the initial access token is not valid yet"));
        }
        Ok(Permit {
            anonymous: false,
            allowed_scopes: claims
                .scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        })
    }

    /// `POST /oauth/register` (RFC 7591 §3.1): `initial_token` is the bearer token sent, if
    /// any; `source` the client's address (the rate limit of `open` mode).
    pub(crate) async fn register(
        &self,
        initial_token: Option<&str>,
        source: Option<IpAddr>,
        body: &[u8],
    ) -> Result<ClientInformation, RegistrationError> {
        let r = self.register_inner(initial_token, source, body).await;
        self.counted(r)
    }

    async fn register_inner(
        &self,
        initial_token: Option<&str>,
        source: Option<IpAddr>,
        body: &[u8],
    ) -> Result<ClientInformation, RegistrationError> {
        let permit = match (self.settings.mode, initial_token) {
            (RegistrationMode::Off, _) => return Err(RegistrationError::Disabled),
            (_, Some(token)) => self.check_initial_token(token)?,
            (RegistrationMode::Token, None) => {
                return Err(RegistrationError::InvalidToken(
                    "registration needs an initial access token (Authorization: Bearer), \
                     from `tokend clients registration-token`"
                        .into(),
                ))
            }
            (RegistrationMode::Open, None) => {
                self.limits.limit_registration(source).await?;
                Permit {
                    anonymous: true,
                    allowed_scopes: Vec::new(),
                }
            }
        };
        let req = ClientMetadataRequest::parse(body)?;
        let m = validate_metadata(&req, &permit.allowed_scopes)?;
        if permit.anonymous && m.confidential {
            return Err(metadata_error(
                "open registration is for public clients only: send \
                 \"token_endpoint_auth_method\": \"none\" (the default is client_secret_basic, \
                 RFC 7591 §2), or register with an initial access token",
            ));
        }
        let secret = if m.secret {
            Some(ids::random_secret()?)
        } else {
            None
        };
        let access_token = ids::random_secret()?;
        let now_ms = self.clock.now_ms();
        let record = ClientRecord {
            client_id: ids::random_id()?,
            secret_sha256: secret.as_deref().map(hash_secret),
            grant_types: m.grant_types,
            scopes: m.scopes,
            alg: None,
            created_at: now_ms,
            meta: m.meta,
            registration: Some(RegistrationRecord {
                access_token_sha256: hash_secret(&access_token),
                allowed_scopes: permit.allowed_scopes,
                updated_at: now_ms,
            }),
        };
        validate_client(&record, &self.settings.signing_algs).map_err(metadata_error)?;
        match self.clients.insert(&record).await {
            Ok(()) => {}
            // 128 random bits: a clash means the randomness is broken.
            Err(StoreError::Duplicate(_)) => {
                return Err(Error::Internal("a generated client_id was taken".into()).into())
            }
            Err(e) => return Err(e.into()),
        }
        self.count("registered");
        tracing::info!(
            client_id = %record.client_id,
            confidential = record.is_confidential(),
            anonymous = permit.anonymous,
            "client registered"
        );
        self.events.record(
            NewEvent::new(EventType::ClientCreated)
                .client(&record.client_id)
                .detail("via", "registration")
                .detail("confidential", record.is_confidential()),
        );
        Ok(self.information(&record, secret, access_token))
    }

    /// The registered client `client_id` if `token` is its registration access token; a
    /// client that does not exist, was not registered here, or has another token is the same
    /// 401 (RFC 7592 §2).
    async fn managed(
        &self,
        client_id: &str,
        token: &str,
    ) -> Result<(ClientRecord, RegistrationRecord), RegistrationError> {
        self.check_enabled()?;
        let refused = || {
            RegistrationError::InvalidToken(
                "the registration access token is not valid for this client".into(),
            )
        };
        let client = self.clients.get(client_id).await?.ok_or_else(refused)?;
        let registration = client.registration.clone().ok_or_else(refused)?;
        if !secret_matches(token, &registration.access_token_sha256) {
            return Err(refused());
        }
        Ok((client, registration))
    }

    /// `GET /oauth/register/{client_id}` (RFC 7592 §2.1): the client's current metadata,
    /// never its secret (only its digest is kept).
    pub(crate) async fn read(
        &self,
        client_id: &str,
        token: &str,
    ) -> Result<ClientInformation, RegistrationError> {
        let r = self.managed(client_id, token).await;
        let (client, _) = self.counted(r)?;
        self.count("read");
        Ok(self.information(&client, None, token.to_string()))
    }

    /// `PUT /oauth/register/{client_id}` (RFC 7592 §2.2): replaces the metadata, validated as
    /// at registration; the id, the secret and the registration access token stay.
    pub(crate) async fn update(
        &self,
        client_id: &str,
        token: &str,
        body: &[u8],
    ) -> Result<ClientInformation, RegistrationError> {
        let r = self.update_inner(client_id, token, body).await;
        self.counted(r)
    }

    async fn update_inner(
        &self,
        client_id: &str,
        token: &str,
        body: &[u8],
    ) -> Result<ClientInformation, RegistrationError> {
        let (current, registration) = self.managed(client_id, token).await?;
        let req = ClientMetadataRequest::parse(body)?;
        if req.client_id.as_deref() != Some(client_id) {
            return Err(metadata_error(
                "client_id must be sent, and be this client's id (RFC 7592 §2.2)",
            ));
        }
        if let Some(presented) = &req.client_secret {
            let matches = current
                .secret_sha256
                .as_deref()
                .is_some_and(|stored| secret_matches(presented, stored));
            if !matches {
                return Err(metadata_error(
                    "client_secret is not this client's secret; a client cannot choose its own \
                     secret (RFC 7592 §2.2)",
                ));
            }
        }
        let m = validate_metadata(&req, &registration.allowed_scopes)?;
        let before = match current.meta.token_endpoint_auth_method.as_deref() {
            Some(method) => credential_kind(method),
            None if current.secret_sha256.is_some() => "secret",
            None => "none",
        };
        let after = credential_kind(m.meta.token_endpoint_auth_method.as_deref().unwrap_or(""));
        if before != after {
            return Err(metadata_error(
                "token_endpoint_auth_method cannot change between \"none\", a method with a \
                 secret and \"private_key_jwt\"; register a new client instead",
            ));
        }
        let record = ClientRecord {
            grant_types: m.grant_types,
            scopes: m.scopes,
            meta: m.meta,
            registration: Some(RegistrationRecord {
                updated_at: self.clock.now_ms(),
                ..registration
            }),
            ..current
        };
        validate_client(&record, &self.settings.signing_algs).map_err(metadata_error)?;
        if !self.clients.replace(&record).await? {
            // Deleted meanwhile: it stays deleted.
            return Err(RegistrationError::InvalidToken(
                "the registration access token is not valid for this client".into(),
            ));
        }
        self.count("updated");
        tracing::info!(client_id = %record.client_id, "registered client updated");
        Ok(self.information(&record, None, token.to_string()))
    }

    /// `DELETE /oauth/register/{client_id}` (RFC 7592 §2.3): the client is gone; it can no
    /// longer authenticate, redeem codes, refresh or start a flow (docs/registration.md,
    /// "Deleting").
    pub(crate) async fn delete(
        &self,
        client_id: &str,
        token: &str,
    ) -> Result<(), RegistrationError> {
        let r = self.delete_inner(client_id, token).await;
        self.counted(r)
    }

    async fn delete_inner(&self, client_id: &str, token: &str) -> Result<(), RegistrationError> {
        self.managed(client_id, token).await?;
        if !self.clients.delete(client_id).await? {
            // Another request deleted it first.
            return Err(RegistrationError::InvalidToken(
                "the registration access token is not valid for this client".into(),
            ));
        }
        self.count("deleted");
        tracing::info!(client_id = %client_id, "registered client deleted");
        self.events.record(
            NewEvent::new(EventType::ClientDeleted)
                .client(client_id)
                .detail("via", "registration"),
        );
        Ok(())
    }

    /// The client information response for `client`.
    fn information(
        &self,
        client: &ClientRecord,
        secret: Option<String>,
        registration_access_token: String,
    ) -> ClientInformation {
        let code = client
            .grant_types
            .iter()
            .any(|g| g == GRANT_AUTHORIZATION_CODE);
        let confidential = client.secret_sha256.is_some();
        ClientInformation {
            client_id: client.client_id.clone(),
            client_secret: secret,
            client_id_issued_at: client.created_at.div_euclid(1000),
            client_secret_expires_at: confidential.then_some(0),
            registration_access_token,
            registration_client_uri: format!(
                "{}/{}",
                registration_endpoint(&self.settings.issuer),
                client.client_id
            ),
            redirect_uris: client.meta.redirect_uris.clone(),
            post_logout_redirect_uris: client.meta.post_logout_redirect_uris.clone(),
            token_endpoint_auth_method: client
                .meta
                .token_endpoint_auth_method
                .clone()
                .unwrap_or_else(|| {
                    if confidential {
                        "client_secret_basic".into()
                    } else {
                        "none".into()
                    }
                }),
            grant_types: client.grant_types.clone(),
            response_types: if code {
                vec![RESPONSE_TYPE_CODE]
            } else {
                Vec::new()
            },
            client_name: client.meta.client_name.clone(),
            scope: client.scopes.join(" "),
            id_token_signed_response_alg: client.meta.id_token_signed_response_alg.clone(),
            require_pushed_authorization_requests: client
                .meta
                .require_pushed_authorization_requests,
            dpop_bound_access_tokens: client.meta.dpop_bound_access_tokens,
            jwks: client.meta.jwks.clone(),
            jwks_uri: client.meta.jwks_uri.clone(),
            token_endpoint_auth_signing_alg: client.meta.token_endpoint_auth_signing_alg.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> ClientMetadataRequest {
        ClientMetadataRequest::parse(json.as_bytes()).unwrap()
    }

    fn err(json: &str) -> RegistrationError {
        match validate_metadata(&req(json), &[]) {
            Ok(_) => panic!("{json} was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn defaults_follow_rfc_7591() {
        let m =
            validate_metadata(&req(r#"{"redirect_uris":["https://a.example/cb"]}"#), &[]).unwrap();
        assert_eq!(m.grant_types, ["authorization_code"]);
        assert_eq!(
            m.meta.token_endpoint_auth_method.as_deref(),
            Some("client_secret_basic")
        );
        assert!(m.confidential);
        assert!(!m.meta.first_party);
        assert_eq!(m.scopes, OIDC_SCOPES);
    }

    #[test]
    fn unknown_members_are_ignored_and_bad_json_is_invalid_client_metadata() {
        let m = validate_metadata(
            &req(
                r#"{"redirect_uris":["https://a.example/cb"],"logo_uri":"https://x","software_id":7,"client_name#ja":"x"}"#,
            ),
            &[],
        );
        assert!(m.is_ok());
        for bad in [
            "{",
            "[]",
            "\"x\"",
            "null",
            r#"{"redirect_uris":"https://a.example/cb"}"#,
        ] {
            assert!(
                matches!(
                    ClientMetadataRequest::parse(bad.as_bytes()),
                    Err(RegistrationError::InvalidClientMetadata(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_metadata_is_refused_with_the_right_code() {
        let uri = |json| matches!(err(json), RegistrationError::InvalidRedirectUri(_));
        let meta = |json| matches!(err(json), RegistrationError::InvalidClientMetadata(_));
        assert!(uri(r#"{}"#), "authorization_code needs a redirect URI");
        assert!(uri(r#"{"redirect_uris":["http://app.example/cb"]}"#));
        assert!(uri(r#"{"redirect_uris":["https://app.example/cb#frag"]}"#));
        assert!(uri(r#"{"redirect_uris":["javascript:alert(1)"]}"#));
        assert!(uri(r#"{"redirect_uris":["/relative"]}"#));
        assert!(meta(
            r#"{"redirect_uris":["https://a.example/cb"],"grant_types":["password"]}"#
        ));
        assert!(meta(
            r#"{"redirect_uris":["https://a.example/cb"],"grant_types":["implicit"]}"#
        ));
        assert!(meta(
            r#"{"redirect_uris":["https://a.example/cb"],"response_types":["token"]}"#
        ));
        assert!(meta(
            r#"{"redirect_uris":["https://a.example/cb"],"grant_types":["client_credentials"],"response_types":["code"]}"#
        ));
        assert!(meta(
            r#"{"redirect_uris":["https://a.example/cb"],"grant_types":["authorization_code"],"response_types":[]}"#
        ));
        assert!(meta(
            r#"{"grant_types":["refresh_token","client_credentials"]}"#
        ));
        assert!(meta(
            r#"{"redirect_uris":["https://a.example/cb"],"token_endpoint_auth_method":"private_key_jwt"}"#
        ));
        assert!(meta(
            r#"{"redirect_uris":["https://a.example/cb"],"scope":"openid admin"}"#
        ));
        assert!(meta(
            r#"{"redirect_uris":["https://a.example/cb"],"post_logout_redirect_uris":["http://x.example/"]}"#
        ));
        assert!(meta(r#"{"grant_types":[]}"#));
    }

    #[test]
    fn a_registration_grants_itself_no_exchange_and_no_resources() {
        let meta = |json| matches!(err(json), RegistrationError::InvalidClientMetadata(d) if d.contains("operator"));
        assert!(meta(
            r#"{"grant_types":["client_credentials","urn:ietf:params:oauth:grant-type:token-exchange"]}"#
        ));
        assert!(meta(
            r#"{"grant_types":["client_credentials"],"token_exchange_audiences":["orders"]}"#
        ));
        assert!(meta(
            r#"{"redirect_uris":["https://a.example/cb"],"resources":["https://api.example/"]}"#
        ));
        assert!(meta(
            r#"{"redirect_uris":["https://a.example/cb"],"resources":[]}"#
        ));
        // Sent as null, the members count as omitted.
        let m = validate_metadata(
            &req(r#"{"redirect_uris":["https://a.example/cb"],"resources":null}"#),
            &[],
        )
        .unwrap();
        assert!(m.meta.resources.is_empty() && m.meta.token_exchange_audiences.is_empty());
        assert!(!registrable_grants().contains(&GRANT_TOKEN_EXCHANGE));
    }

    #[test]
    fn extra_scopes_need_a_token_that_allows_them() {
        let r = req(r#"{"redirect_uris":["https://a.example/cb"],"scope":"openid api:read"}"#);
        assert!(validate_metadata(&r, &[]).is_err());
        let m = validate_metadata(&r, &["api:read".to_string()]).unwrap();
        assert_eq!(m.scopes, ["openid", "api:read"]);
    }

    #[test]
    fn a_client_credentials_client_needs_no_redirect_uri_nor_response_type() {
        let m = validate_metadata(&req(r#"{"grant_types":["client_credentials"]}"#), &[]).unwrap();
        assert!(m.meta.redirect_uris.is_empty());
        assert!(m.confidential);
    }

    #[test]
    fn initial_access_claims_serialise_without_an_empty_scope() {
        let c = InitialAccessClaims {
            iss: "i".into(),
            aud: "a".into(),
            iat: 1,
            exp: 2,
            jti: "j".into(),
            scope: String::new(),
        };
        let v = serde_json::to_value(&c).unwrap();
        assert!(v.get("scope").is_none(), "{v}");
    }
}
