//! The OAuth2 rules (docs/api.md): client authentication (RFC 6749 §2.3; `private_key_jwt`,
//! RFC 7523 §2.2, in `assertion.rs`), the token endpoint's grants (RFC 6749 §4.3, §4.4, §6;
//! token exchange, RFC 8693, in `exchange.rs`) with resource indicators (RFC 8707,
//! `resources.rs`), revocation (RFC 7009) and introspection (RFC 7662). No HTTP here:
//! `http/oauth.rs` parses the request and renders what these functions decide.

use serde::Serialize;

use std::sync::Arc;

use super::accounts::{Accounts, SignInVia};
use super::assertion::{AssertionRefusal, ClientAssertions, PresentedAssertion};
use super::authorize::Authorize;
use super::clients::{
    secret_matches, GRANT_AUTHORIZATION_CODE, GRANT_CLIENT_CREDENTIALS, GRANT_DEVICE_CODE,
    GRANT_PASSWORD, GRANT_REFRESH_TOKEN, GRANT_TOKEN_EXCHANGE,
};
use super::device::Devices;
use super::dpop::{ProofHeader, ProofRefusal, Proven, Target};
use super::exchange::{ExchangeRefusal, TokenExchange};
use super::limits::Limits;
use super::resources::Targets;
use super::sessions::{token_type, Sessions};
use super::tokens::{Actor, Audience, Confirmation};
use super::Error;
use crate::clock::SharedClock;
use crate::store::{ClientRecord, ClientStore, UserClaims, UserStore};

/// A client that authenticated at an OAuth endpoint (opaque outside the domain).
#[derive(Debug, Clone)]
pub struct Client(ClientRecord);

impl Client {
    /// A client whose authentication happened elsewhere (benchmarks of the grants).
    pub fn authenticated_elsewhere(record: ClientRecord) -> Client {
        Client(record)
    }

    pub(crate) fn record(&self) -> &ClientRecord {
        &self.0
    }
}

/// The `OAuth` service: client authentication and the token, revocation and introspection
/// endpoints' rules.
pub struct OAuth {
    clients: Arc<dyn ClientStore>,
    /// Read only for families written before families carried the user.
    users: Arc<dyn UserStore>,
    accounts: Arc<Accounts>,
    sessions: Arc<Sessions>,
    limits: Arc<Limits>,
    authorize: Arc<Authorize>,
    devices: Arc<Devices>,
    /// `private_key_jwt` client authentication (docs/private_key_jwt.md).
    assertions: Arc<ClientAssertions>,
    exchange: Arc<TokenExchange>,
    clock: SharedClock,
}

/// An RFC 6749 §5.2 error, or a domain error that is not one (store down, internal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// `invalid_request` (RFC 6749 §5.2).
    #[error("{0}")]
    InvalidRequest(String),
    /// `invalid_client` (RFC 6749 §5.2): answered 401.
    #[error("{0}")]
    InvalidClient(String),
    /// `invalid_grant` (RFC 6749 §5.2).
    #[error("{0}")]
    InvalidGrant(String),
    /// `unauthorized_client` (RFC 6749 §5.2).
    #[error("{0}")]
    UnauthorizedClient(String),
    /// `unsupported_grant_type` (RFC 6749 §5.2).
    #[error("{0}")]
    UnsupportedGrantType(String),
    /// `invalid_scope` (RFC 6749 §5.2).
    #[error("{0}")]
    InvalidScope(String),
    /// `invalid_target` (RFC 8707 §2, RFC 8693 §2.2.2): a resource or audience the client may
    /// not ask for.
    #[error("{0}")]
    InvalidTarget(String),
    /// An authorization request refused with another code of RFC 6749 §4.1.2.1 or of an
    /// extension (`unsupported_response_type`, `request_not_supported`), where it is answered
    /// to the client directly (RFC 9126 §2.3).
    #[error("{description}")]
    AuthorizationRefused {
        /// The error code.
        error: &'static str,
        /// The `error_description`.
        description: String,
    },
    /// RFC 8628 §3.5: the user has not approved or denied yet; poll again.
    #[error("{0}")]
    AuthorizationPending(String),
    /// RFC 8628 §3.5: polled sooner than the interval allows; the interval is now `interval`
    /// seconds.
    #[error("{description}")]
    SlowDown {
        /// The `error_description`.
        description: String,
        /// The interval now, seconds.
        interval: i64,
    },
    /// RFC 8628 §3.5: the user denied the request.
    #[error("{0}")]
    AccessDenied(String),
    /// RFC 8628 §3.5: the device code expired.
    #[error("{0}")]
    ExpiredToken(String),
    /// RFC 9449 §5, §8: the DPoP proof was refused (`invalid_dpop_proof`), or lacks the
    /// server's nonce (`use_dpop_nonce`, [`ProofRefusal::Nonce`]).
    #[error("{0}")]
    DpopProof(ProofRefusal),
    /// Not an RFC 6749 error: a store down (503) or a fault of the server's own (500).
    #[error(transparent)]
    Other(Error),
}

impl From<Error> for OAuthError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidCredentials => {
                OAuthError::InvalidGrant("invalid username or password".into())
            }
            Error::Refresh(r) => OAuthError::InvalidGrant(r.to_string()),
            Error::DpopProof(r) => OAuthError::DpopProof(r),
            Error::InvalidTarget(d) => OAuthError::InvalidTarget(d),
            other => OAuthError::Other(other),
        }
    }
}

impl From<crate::store::StoreError> for OAuthError {
    fn from(e: crate::store::StoreError) -> Self {
        OAuthError::Other(e.into())
    }
}

/// The credentials a request presented (RFC 6749 §2.3.1), however they travelled.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ClientCredentials {
    pub(crate) client_id: String,
    /// `None` for a public client, which sends only its id.
    pub(crate) secret: Option<String>,
    /// Whether they came in HTTP Basic (`client_secret_basic`) rather than the body.
    pub(crate) basic: bool,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Whether an endpoint accepts public clients (identified by `client_id` alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublicClients {
    Allowed,
    Refused,
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenResponse {
    pub(crate) access_token: String,
    pub(crate) token_type: &'static str,
    /// Seconds until the access token expires.
    pub(crate) expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) refresh_token: Option<String>,
    /// The granted scope, space separated (omitted when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) scope: String,
    /// OpenID Connect Core §3.1.3.3, when `openid` was granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id_token: Option<String>,
    /// RFC 8693 §2.2.1: the type of the token a token exchange issued (only there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) issued_token_type: Option<&'static str>,
}

/// The parameters of `POST /oauth/token` that the grants read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRequest {
    /// The grant (RFC 6749 §4); required.
    pub grant_type: Option<String>,
    /// `grant_type=password` (RFC 6749 §4.3.2).
    pub username: Option<String>,
    /// `grant_type=password` (RFC 6749 §4.3.2).
    pub password: Option<String>,
    /// `grant_type=refresh_token` (RFC 6749 §6).
    pub refresh_token: Option<String>,
    /// The scope asked for; the client's or the grant's when absent (RFC 6749 §3.3).
    pub scope: Option<String>,
    /// `grant_type=authorization_code` (RFC 6749 §4.1.3, RFC 7636 §4.5).
    pub code: Option<String>,
    /// Must equal the authorization request's (RFC 6749 §4.1.3).
    pub redirect_uri: Option<String>,
    /// The PKCE verifier (RFC 7636 §4.5).
    pub code_verifier: Option<String>,
    /// `grant_type=urn:ietf:params:oauth:grant-type:device_code` (RFC 8628 §3.4).
    pub device_code: Option<String>,
    /// The request's address and `User-Agent`: a family started here keeps them for the
    /// sessions list, and a password sign-in's event the address.
    pub origin: super::events::Origin,
    /// The request's `DPoP` header (RFC 9449 §5): with a valid proof the access token is bound
    /// to its key.
    pub dpop: ProofHeader,
    /// `resource`, as often as it was sent (RFC 8707 §2): what the access token is for.
    pub resource: Vec<String>,
    /// `audience`, as often as it was sent (RFC 8693 §2.1): token exchange only.
    pub audience: Vec<String>,
    /// The token exchanged (RFC 8693 §2.1).
    pub subject_token: Option<String>,
    /// Its type (RFC 8693 §3).
    pub subject_token_type: Option<String>,
    /// The acting party's own token (RFC 8693 §2.1).
    pub actor_token: Option<String>,
    /// Its type (RFC 8693 §3).
    pub actor_token_type: Option<String>,
    /// The type of token asked for (RFC 8693 §2.1).
    pub requested_token_type: Option<String>,
}

/// The token endpoint's path: the `htu` of its proofs is the issuer and this.
pub(crate) const TOKEN_PATH: &str = "/oauth/token";

/// An introspection answer (RFC 7662 §2.2). Inactive tokens are `{"active":false}` only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Introspection {
    pub(crate) active: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub(crate) details: Option<TokenDetails>,
}

impl Introspection {
    pub(crate) fn inactive() -> Introspection {
        Introspection {
            active: false,
            details: None,
        }
    }
}

/// The members of an active token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct TokenDetails {
    /// Omitted when the token has no scope (docs/tokens.md; RFC 7662 §2.2 makes it optional).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) scope: String,
    pub(crate) client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) username: Option<String>,
    /// `Bearer`, or `DPoP` for a token bound to a key (the RFC 6749 §5.1 type the token is
    /// used with; RFC 9449 §6.2).
    pub(crate) token_type: &'static str,
    /// `access_token` or `refresh_token`.
    pub(crate) token_use: &'static str,
    pub(crate) exp: i64,
    pub(crate) iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) nbf: Option<i64>,
    pub(crate) sub: String,
    pub(crate) aud: Audience,
    pub(crate) iss: String,
    pub(crate) jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sid: Option<String>,
    /// The DPoP key a bound token is bound to (RFC 9449 §6.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cnf: Option<Confirmation>,
    /// Who acts for the subject, for a token issued by token exchange (RFC 8693 §4.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) act: Option<Actor>,
}

/// Which kind of token a revocation or introspection request says it holds (RFC 7009 §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenHint {
    /// `access_token`.
    Access,
    /// `refresh_token`.
    Refresh,
}

impl TokenHint {
    /// `access_token` / `refresh_token`; anything else is no hint (RFC 7009 §2.1 lets the server
    /// search all its token types).
    pub(crate) fn parse(hint: Option<&str>) -> Option<TokenHint> {
        match hint {
            Some("access_token") => Some(TokenHint::Access),
            Some("refresh_token") => Some(TokenHint::Refresh),
            _ => None,
        }
    }

    fn order(hint: Option<TokenHint>) -> [TokenHint; 2] {
        match hint {
            Some(TokenHint::Refresh) => [TokenHint::Refresh, TokenHint::Access],
            _ => [TokenHint::Access, TokenHint::Refresh],
        }
    }
}

/// Splits a space-separated scope string into tokens (RFC 6749 §3.3).
pub(crate) fn scope_tokens(scope: &str) -> Vec<&str> {
    scope.split(' ').filter(|s| !s.is_empty()).collect()
}

/// The scope a request gets: the requested one if every token of it is allowed, else
/// `invalid_scope`; nothing requested means everything allowed.
pub(crate) fn grant_scope(
    requested: Option<&str>,
    allowed: &[String],
) -> Result<String, OAuthError> {
    let Some(requested) = requested else {
        return Ok(allowed.join(" "));
    };
    let mut granted: Vec<&str> = Vec::new();
    for s in scope_tokens(requested) {
        if !allowed.iter().any(|a| a == s) {
            return Err(OAuthError::InvalidScope(format!(
                "scope {s:?} is not allowed for this client"
            )));
        }
        if !granted.contains(&s) {
            granted.push(s);
        }
    }
    Ok(granted.join(" "))
}

fn required<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, OAuthError> {
    v.as_deref()
        .ok_or_else(|| OAuthError::InvalidRequest(format!("missing parameter {name}")))
}

impl OAuth {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        clients: Arc<dyn ClientStore>,
        users: Arc<dyn UserStore>,
        accounts: Arc<Accounts>,
        sessions: Arc<Sessions>,
        limits: Arc<Limits>,
        authorize: Arc<Authorize>,
        devices: Arc<Devices>,
        assertions: Arc<ClientAssertions>,
        exchange: Arc<TokenExchange>,
        clock: SharedClock,
    ) -> OAuth {
        OAuth {
            clients,
            users,
            accounts,
            sessions,
            limits,
            authorize,
            devices,
            assertions,
            exchange,
            clock,
        }
    }

    /// Authenticates a client by a JWT assertion signed with one of its keys
    /// (`private_key_jwt`, RFC 7523 §2.2; docs/private_key_jwt.md) sent to the endpoint
    /// `endpoint_path`. Every refusal is `invalid_client`, counted by reason.
    pub(crate) async fn authenticate_assertion(
        &self,
        presented: &PresentedAssertion,
        endpoint_path: &str,
    ) -> Result<Client, OAuthError> {
        let parsed = self.assertions.parse(presented)?;
        let Some(client) = self.clients.get(&parsed.client_id).await? else {
            return Err(self
                .assertions
                .refuse(AssertionRefusal::Client, "unknown client"));
        };
        if !client.uses_private_key_jwt() {
            let how = match (
                client.meta.token_endpoint_auth_method.as_deref(),
                client.secret_sha256.is_some(),
            ) {
                (Some(method), _) => format!("with {method}"),
                (None, true) => {
                    "with its secret (client_secret_basic or client_secret_post)".into()
                }
                (None, false) => "with client_id alone (a public client)".into(),
            };
            return Err(self.assertions.refuse(
                AssertionRefusal::Method,
                format!("this client does not use private_key_jwt: it authenticates {how}"),
            ));
        }
        self.assertions
            .verify(&client, &parsed, endpoint_path)
            .await?;
        Ok(Client(client))
    }

    /// Authenticates a client (RFC 6749 §2.3): a confidential client by its secret, a public
    /// client by its id alone where `public` allows it. Every failure is `invalid_client`.
    pub(crate) async fn authenticate_client(
        &self,
        creds: &ClientCredentials,
        public: PublicClients,
        source: Option<std::net::IpAddr>,
    ) -> Result<Client, OAuthError> {
        let client = self
            .clients
            .get(&creds.client_id)
            .await?
            .ok_or_else(|| OAuthError::InvalidClient("unknown client or bad secret".into()))?;
        if client.uses_private_key_jwt() {
            return Err(self.assertions.refuse(
                AssertionRefusal::Method,
                "this client authenticates with private_key_jwt: send client_assertion_type and \
                 client_assertion, signed with its key (never a secret)",
            ));
        }
        // A registered method is the only one the client may use (RFC 7591 §2).
        let used = match (&creds.secret, creds.basic) {
            (None, _) => "none",
            (Some(_), true) => "client_secret_basic",
            (Some(_), false) => "client_secret_post",
        };
        if let Some(method) = client.meta.token_endpoint_auth_method.as_deref() {
            if method != used {
                return Err(OAuthError::InvalidClient(format!(
                    "this client authenticates with {method}"
                )));
            }
        }
        match (&client.secret_sha256, &creds.secret) {
            (Some(stored), Some(presented)) => {
                // Failures count against this client from this source only: strangers who
                // guess wrong never lock the real client out (docs/hardening.md).
                let key = super::limits::client_key(&client.client_id, source);
                self.limits.check_client_backoff(&key).await?;
                if secret_matches(presented, stored) {
                    Ok(Client(client))
                } else {
                    tracing::info!(client_id = %client.client_id, "client authentication failed");
                    self.limits.client_auth_failed(&key).await?;
                    Err(OAuthError::InvalidClient(
                        "unknown client or bad secret".into(),
                    ))
                }
            }
            (Some(_), None) => Err(OAuthError::InvalidClient(
                "this client must authenticate with its secret".into(),
            )),
            (None, Some(_)) => Err(OAuthError::InvalidClient(
                "this is a public client: send client_id without a secret".into(),
            )),
            (None, None) if public == PublicClients::Refused => Err(OAuthError::InvalidClient(
                "this endpoint needs a confidential client".into(),
            )),
            (None, None) => Ok(Client(client)),
        }
    }

    /// `POST /oauth/token` for an authenticated client: dispatches on `grant_type`.
    pub async fn token_grant(
        &self,
        client: &Client,
        req: &TokenRequest,
    ) -> Result<TokenResponse, OAuthError> {
        let client = &client.0;
        let grant = required(&req.grant_type, "grant_type")?;
        if !matches!(
            grant,
            GRANT_PASSWORD
                | GRANT_REFRESH_TOKEN
                | GRANT_CLIENT_CREDENTIALS
                | GRANT_AUTHORIZATION_CODE
                | GRANT_DEVICE_CODE
                | GRANT_TOKEN_EXCHANGE
        ) {
            return Err(OAuthError::UnsupportedGrantType(format!(
                "grant_type {grant:?} is not supported"
            )));
        }
        if grant == GRANT_TOKEN_EXCHANGE && !client.is_confidential() {
            self.exchange.count(ExchangeRefusal::UnauthorizedClient);
            return Err(OAuthError::UnauthorizedClient(
                "token exchange needs a confidential client (docs/token_exchange.md)".into(),
            ));
        }
        if !client.grant_types.iter().any(|g| g == grant) {
            if grant == GRANT_TOKEN_EXCHANGE {
                self.exchange.count(ExchangeRefusal::UnauthorizedClient);
            }
            return Err(OAuthError::UnauthorizedClient(format!(
                "this client may not use grant_type {grant}"
            )));
        }
        // RFC 9449 §5: the proof is checked before the grant; every grant binds the access
        // token it issues to the proof's key.
        let dpop = self.sessions.dpop();
        let target = Target {
            method: "POST",
            path: TOKEN_PATH,
        };
        let checked = dpop
            .check(&req.dpop, target, None)
            .map_err(OAuthError::DpopProof)?;
        if checked.is_none() && client.meta.dpop_bound_access_tokens {
            return Err(OAuthError::DpopProof(dpop.refused(ProofRefusal::Missing)));
        }
        if grant == GRANT_REFRESH_TOKEN {
            // Spent in the refresh's own round trip; counted there.
            return self.refresh_grant(client, req, checked).await;
        }
        let proof = dpop.spend_if_any(checked).await?;
        let bound = proof.is_some();
        let response = match grant {
            GRANT_AUTHORIZATION_CODE => {
                self.authorize
                    .redeem(
                        &Client(client.clone()),
                        req.code.as_deref(),
                        req.redirect_uri.as_deref(),
                        req.code_verifier.as_deref(),
                        &req.origin,
                        proof,
                        &req.resource,
                    )
                    .await
            }
            GRANT_DEVICE_CODE => {
                self.devices
                    .redeem(
                        &Client(client.clone()),
                        req.device_code.as_deref(),
                        &req.origin,
                        proof,
                        &req.resource,
                    )
                    .await
            }
            GRANT_TOKEN_EXCHANGE => self.exchange.exchange(client, req, proof).await,
            GRANT_PASSWORD => self.password_grant(client, req, proof).await,
            _ => self.client_credentials_grant(client, req, proof),
        };
        if bound && response.is_ok() {
            dpop.accepted();
        }
        response
    }

    /// RFC 6749 §4.3: username (or email) and password; starts a refresh family.
    async fn password_grant(
        &self,
        client: &ClientRecord,
        req: &TokenRequest,
        proof: Option<Proven>,
    ) -> Result<TokenResponse, OAuthError> {
        let login = required(&req.username, "username")?;
        let password = required(&req.password, "password")?;
        let scope = grant_scope(req.scope.as_deref(), &client.scopes)?;
        let targets = Targets::requested(&req.resource, &client.meta.resources)
            .map_err(OAuthError::InvalidTarget)?;
        let user = self
            .accounts
            .check_password(login, password, true, SignInVia::PasswordGrant, &req.origin)
            .await?;
        let pair = self
            .sessions
            .start_session(
                &user,
                client,
                &scope,
                self.sessions.client_alg(client),
                &req.origin,
                proof,
                targets,
            )
            .await?;
        tracing::info!(user_id = %user.id, client_id = %client.client_id, "password grant");
        Ok(TokenResponse {
            access_token: pair.access_token,
            token_type: pair.token_type,
            expires_in: pair.expires_in,
            // Only a client allowed the refresh_token grant gets one.
            refresh_token: Some(pair.refresh_token).filter(|t| !t.is_empty()),
            scope: pair.scope,
            id_token: None,
            issued_token_type: None,
        })
    }

    /// RFC 6749 §6: the family rules of docs/sessions.md. A requested scope must be within the one
    /// originally granted; the family keeps its scope. A requested resource must be one the
    /// family was granted (RFC 8707 §2.2); the family keeps them all.
    async fn refresh_grant(
        &self,
        client: &ClientRecord,
        req: &TokenRequest,
        proof: Option<super::dpop::CheckedProof>,
    ) -> Result<TokenResponse, OAuthError> {
        let token = required(&req.refresh_token, "refresh_token")?;
        if let Some(requested) = req.scope.as_deref() {
            if let Some(claims) = self.sessions.decode_refresh(token) {
                let original: Vec<String> = scope_tokens(&claims.scope)
                    .into_iter()
                    .map(String::from)
                    .collect();
                grant_scope(Some(requested), &original)?;
            }
        }
        let pair = self
            .sessions
            .refresh_with(token, Some(client), proof, &req.resource)
            .await?;
        Ok(TokenResponse {
            access_token: pair.access_token,
            token_type: pair.token_type,
            expires_in: pair.expires_in,
            refresh_token: Some(pair.refresh_token),
            scope: pair.scope,
            id_token: None,
            issued_token_type: None,
        })
    }

    /// RFC 6749 §4.4: an access token for the client itself (`sub` = client id, no `sid`, no
    /// refresh token, no roles), for the resources named (RFC 8707 §2), each one of the client's.
    fn client_credentials_grant(
        &self,
        client: &ClientRecord,
        req: &TokenRequest,
        proof: Option<Proven>,
    ) -> Result<TokenResponse, OAuthError> {
        if !client.is_confidential() {
            return Err(OAuthError::UnauthorizedClient(
                "client_credentials needs a confidential client".into(),
            ));
        }
        let scope = grant_scope(req.scope.as_deref(), &client.scopes)?;
        let targets = Targets::requested(&req.resource, &client.meta.resources)
            .map_err(OAuthError::InvalidTarget)?;
        let jkt = proof.as_ref().map(|p| p.jkt.as_str());
        let (access_token, ttl) =
            self.sessions
                .sign_client_access(client, &scope, jkt, &targets.audience)?;
        tracing::debug!(client_id = %client.client_id, "client_credentials grant");
        Ok(TokenResponse {
            access_token,
            token_type: token_type(jkt.is_some()),
            expires_in: ttl,
            refresh_token: None,
            scope,
            id_token: None,
            issued_token_type: None,
        })
    }

    /// RFC 7009: revokes a token issued to `client`. A refresh token revokes its family (and so
    /// every access token of it), an access token its `jti`. Unknown, invalid, expired or
    /// foreign tokens are ignored: the answer is the same either way.
    pub(crate) async fn revoke_token(
        &self,
        client: &Client,
        token: &str,
        hint: Option<TokenHint>,
    ) -> Result<(), OAuthError> {
        let client = &client.0;
        for kind in TokenHint::order(hint) {
            match kind {
                TokenHint::Access => {
                    if let Some(c) = self.sessions.decode_access(token) {
                        if c.client_id == client.client_id {
                            self.sessions.revoke_access_jti(&c.jti, c.exp).await?;
                            tracing::info!(client_id = %client.client_id, "access token revoked");
                        }
                        return Ok(());
                    }
                }
                TokenHint::Refresh => {
                    if let Some(c) = self.sessions.decode_refresh(token) {
                        if c.client_id == client.client_id {
                            self.sessions.revoke_family(&c.sid).await?;
                            tracing::info!(client_id = %client.client_id, sid = %c.sid, "refresh family revoked");
                        }
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// RFC 7662: whether a token is active, and its members when it is. Expired, revoked,
    /// forged, unknown and superseded refresh tokens are all just inactive; a store that cannot
    /// answer is an error (fail closed), never a guess.
    pub async fn introspect(
        &self,
        token: &str,
        hint: Option<TokenHint>,
    ) -> Result<Introspection, OAuthError> {
        for kind in TokenHint::order(hint) {
            let found = match kind {
                TokenHint::Access => self.introspect_access(token).await?,
                TokenHint::Refresh => self.introspect_refresh(token).await?,
            };
            if let Some(i) = found {
                return Ok(i);
            }
        }
        Ok(Introspection::inactive())
    }

    /// `None` when the token is not a valid access token at all; inactive when it was one.
    async fn introspect_access(&self, token: &str) -> Result<Option<Introspection>, OAuthError> {
        let Some(claims) = self.sessions.decode_access(token) else {
            return Ok(None);
        };
        let (claims, user) = match self.sessions.check_revocation_with_user(claims).await {
            Ok((p, user)) => (p.claims, user),
            Err(Error::TokenRejected(_)) => return Ok(Some(Introspection::inactive())),
            Err(e) => return Err(e.into()),
        };
        // A user's token (client_credentials tokens have no `sid` and no user): the username
        // of the user's last change, read with the revocation marks, else the token's own;
        // from the user store only for a token from before tokens carried it.
        let username = match (&claims.sid, user, &claims.username) {
            (None, _, _) => None,
            (Some(_), Some(user), _) => Some(user.username),
            (Some(_), None, Some(name)) => Some(name.clone()),
            (Some(_), None, None) => match self.users.by_id(&claims.sub).await? {
                Some(u) => Some(u.username),
                None => return Ok(Some(Introspection::inactive())),
            },
        };
        Ok(Some(Introspection {
            active: true,
            details: Some(TokenDetails {
                scope: claims.scope,
                client_id: claims.client_id,
                username,
                token_type: token_type(claims.cnf.is_some()),
                token_use: "access_token",
                exp: claims.exp,
                iat: claims.iat,
                nbf: Some(claims.nbf),
                sub: claims.sub,
                aud: claims.aud,
                iss: claims.iss,
                jti: claims.jti,
                sid: claims.sid,
                cnf: claims.cnf,
                act: claims.act,
            }),
        }))
    }

    /// A refresh token is active only while it is its family's current token.
    async fn introspect_refresh(&self, token: &str) -> Result<Option<Introspection>, OAuthError> {
        let now_ms = self.clock.now_ms();
        let Some(claims) = self.sessions.decode_refresh(token) else {
            return Ok(None);
        };
        let inactive = Ok(Some(Introspection::inactive()));
        let status = self
            .sessions
            .refresh_status(&claims.jti, &claims.sid, &claims.sub)
            .await?;
        if status.revoked(Some(&claims.sid)) {
            return inactive;
        }
        let Some(family) = self.sessions.family(&claims.sid).await? else {
            return inactive;
        };
        if family.revoked
            || family.current_refresh_jti != claims.jti
            || now_ms >= family.expires_at_ms
        {
            return inactive;
        }
        let username = match UserClaims::newest(status.claims, claims.user().or(family.user)) {
            Some(user) => user.username,
            // A token and family from before either carried the user.
            None => match self.users.by_id(&claims.sub).await? {
                Some(u) => u.username,
                None => return inactive,
            },
        };
        Ok(Some(Introspection {
            active: true,
            details: Some(TokenDetails {
                scope: claims.scope,
                client_id: claims.client_id,
                username: Some(username),
                token_type: token_type(claims.cnf.is_some()),
                token_use: "refresh_token",
                exp: claims.exp,
                iat: claims.iat,
                nbf: None,
                sub: claims.sub,
                aud: claims.aud,
                iss: claims.iss,
                jti: claims.jti,
                sid: Some(claims.sid),
                cnf: claims.cnf,
                act: None,
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_must_be_a_subset_and_default_to_all() {
        let allowed = vec!["read".to_string(), "write".to_string()];
        assert_eq!(grant_scope(None, &allowed).unwrap(), "read write");
        assert_eq!(grant_scope(Some("write"), &allowed).unwrap(), "write");
        assert_eq!(grant_scope(Some(" read  read "), &allowed).unwrap(), "read");
        assert!(matches!(
            grant_scope(Some("read admin"), &allowed),
            Err(OAuthError::InvalidScope(_))
        ));
        assert_eq!(grant_scope(Some(""), &allowed).unwrap(), "");
    }

    #[test]
    fn hints_order_the_search() {
        assert_eq!(
            TokenHint::order(TokenHint::parse(Some("refresh_token"))),
            [TokenHint::Refresh, TokenHint::Access]
        );
        assert_eq!(
            TokenHint::order(TokenHint::parse(Some("id_token"))),
            [TokenHint::Access, TokenHint::Refresh]
        );
    }

    #[test]
    fn an_inactive_answer_has_no_other_member() {
        let v = serde_json::to_value(Introspection::inactive()).unwrap();
        assert_eq!(v, serde_json::json!({"active": false}));
    }

    #[test]
    fn domain_refusals_become_invalid_grant() {
        use crate::domain::RefreshError;
        assert!(matches!(
            OAuthError::from(Error::InvalidCredentials),
            OAuthError::InvalidGrant(_)
        ));
        assert!(matches!(
            OAuthError::from(Error::Refresh(RefreshError::Reused)),
            OAuthError::InvalidGrant(_)
        ));
    }
}
