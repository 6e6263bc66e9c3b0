//! The `Authorize` service: the authorization code flow with PKCE (RFC 6749 §4.1, RFC 7636,
//! OAuth 2.1 rules), pushed authorization requests (RFC 9126), OpenID Connect (ID tokens,
//! userinfo, RP-initiated logout), the browser session and consents (docs/authorize.md), and
//! codes bound to a DPoP key (RFC 9449 §10, docs/dpop.md). No HTTP here: handlers turn an
//! [`Outcome`] into a redirect, a form post or a page.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::digest;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::accounts::{Accounts, Principal, SignInVia, TokenPair};
use super::clients::{is_loopback, GRANT_AUTHORIZATION_CODE};
use super::dpop::{is_jkt, ProofHeader, ProofRefusal, Proven, Target};
use super::events::{EventType, Events, NewEvent, Origin};
use super::ids;
use super::oauth::{scope_tokens, Client, OAuthError, TokenResponse};
use super::resources::Targets;
use super::sessions::{FamilyStart, Sessions};
use super::tokens::Refusal;
use super::Error;
use crate::clock::SharedClock;
use crate::keys::{Alg, Keys};
use crate::metrics::Metrics;
use crate::store::{
    AuthorizeStore, ClientRecord, ClientStore, ConsentRecord, ConsentStore, Redemption, UserMarks,
    UserRecord, UserStore,
};

/// The scopes of OpenID Connect Core §5.4 that every client with the authorization code grant
/// may ask for.
pub(crate) const OIDC_SCOPES: [&str; 3] = ["openid", "profile", "email"];
/// How long a code lives (docs/authorize.md: 60 s).
const CODE_TTL_MS: i64 = 60_000;
/// How long a pending authorization request waits for sign-in and consent.
const REQUEST_TTL_MS: i64 = 600_000;
/// How long a redeemed code is remembered, so that a replay is recognised.
const USED_CODE_TTL_MS: i64 = 600_000;
/// How long a pushed authorization request waits for the browser (RFC 9126 §2.2;
/// docs/authorize.md, "Pushed authorization requests").
const PUSHED_REQUEST_TTL_MS: i64 = 60_000;
/// The form of the request URIs tokend hands out (RFC 9126 §2.2), followed by 256 random bits,
/// base64url.
const REQUEST_URI_PREFIX: &str = "urn:ietf:params:oauth:request_uri:";
/// The pushed authorization request endpoint's path: the `htu` of its proofs is the issuer
/// and this (RFC 9449 §10.1).
pub(crate) const PAR_PATH: &str = "/oauth/par";
/// Longest `state`, `nonce` and `login_hint` accepted.
const MAX_PARAM_LEN: usize = 2048;

/// What the service needs from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct AuthorizeSettings {
    pub(crate) issuer: String,
    pub(crate) id_token_ttl: Duration,
    pub(crate) browser_session_ttl: Duration,
    /// `TOKEND_SIGNING_ALGS`, in order.
    pub(crate) signing_algs: Vec<Alg>,
}

/// An authorization request's parameters as received (RFC 6749 §4.1.1, RFC 7636 §4.3,
/// OpenID Connect Core §3.1.2.1). Empty values count as omitted.
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct AuthorizeParams {
    pub(crate) response_type: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) redirect_uri: Option<String>,
    pub(crate) scope: Option<String>,
    pub(crate) state: Option<String>,
    pub(crate) response_mode: Option<String>,
    pub(crate) code_challenge: Option<String>,
    pub(crate) code_challenge_method: Option<String>,
    pub(crate) nonce: Option<String>,
    pub(crate) prompt: Option<String>,
    pub(crate) max_age: Option<String>,
    pub(crate) login_hint: Option<String>,
    pub(crate) request_uri: Option<String>,
    pub(crate) request: Option<String>,
    /// RFC 9449 §10: the thumbprint of the DPoP key the code is to be bound to.
    pub(crate) dpop_jkt: Option<String>,
    /// RFC 8707 §2: the resources the tokens are for, as often as `resource` was sent. Not
    /// read by the form decoder (which takes each parameter once): the HTTP layer collects
    /// every value.
    #[serde(skip)]
    pub(crate) resource: Vec<String>,
}

/// How the answer reaches the client (OAuth 2.0 Multiple Response Types §2.1, Form Post
/// Response Mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ResponseMode {
    Query,
    FormPost,
}

/// A validated authorization request, kept while the user signs in and consents.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingRequest {
    client_id: String,
    redirect_uri: String,
    /// Whether the request named the redirect URI (then the token request must repeat it,
    /// RFC 6749 §4.1.3).
    redirect_uri_given: bool,
    scope: String,
    state: Option<String>,
    response_mode: ResponseMode,
    code_challenge: String,
    nonce: Option<String>,
    login_hint: Option<String>,
    /// `max_age` in seconds (OpenID Connect Core §3.1.2.1).
    max_age: Option<i64>,
    /// `prompt=none`: answer at once, never show a page.
    prompt_none: bool,
    /// `prompt=consent`: ask even when a consent is remembered.
    prompt_consent: bool,
    /// `prompt=login`: the user must sign in again, whatever session the browser has.
    force_login: bool,
    /// With `force_login`, the browser session (hashed id) the request found: the sign-in must
    /// be a new one (every sign-in creates a new session).
    stale_session: Option<String>,
    /// The DPoP key the code is bound to (RFC 9449 §10): `dpop_jkt`, or the key of the proof
    /// that came with a pushed request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dpop_jkt: Option<String>,
    /// The resources asked for (RFC 8707 §2), each one of the client's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    resources: Vec<String>,
}

/// A pushed authorization request (RFC 9126 §2), validated when it was pushed and kept until
/// the browser brings its request URI or it expires.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PushedRequest {
    /// The client that pushed it; the request URI is bound to it (RFC 9126 §2.2).
    client_id: String,
    /// Unix milliseconds at which it expires, by the service's clock (the store's TTL only
    /// cleans up).
    expires_at_ms: i64,
    request: PendingRequest,
}

/// The answer to a pushed authorization request (RFC 9126 §2.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PushedAuthorization {
    /// `urn:ietf:params:oauth:request_uri:` and the reference.
    pub(crate) request_uri: String,
    /// Seconds the request URI lives.
    pub(crate) expires_in: i64,
}

/// Why a request's redirect URI is not to be trusted: such an error is never sent to it
/// (RFC 6749 §4.1.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedirectProblem {
    /// Not one the client registered.
    Unregistered,
    /// Missing, and the client registered more than one.
    Missing,
}

impl RedirectProblem {
    /// What the person sees: an error page that does not link the address.
    fn page(self) -> Outcome {
        match self {
            RedirectProblem::Unregistered => Authorize::error_page(
                "Invalid redirect URI",
                "This sign-in link would send you to an address the application did not \
                 register. For your safety you are not being redirected.",
                Some("invalid_request"),
            ),
            RedirectProblem::Missing => Authorize::error_page(
                "Invalid request",
                "The application did not say where to return after sign-in \
                 (redirect_uri is missing).",
                Some("invalid_request"),
            ),
        }
    }

    /// What a client that pushed the request is told (RFC 9126 §2.3: `invalid_request`).
    fn description(self) -> &'static str {
        match self {
            RedirectProblem::Unregistered => "redirect_uri is not registered for this client",
            RedirectProblem::Missing => {
                "redirect_uri is required: the client has more than one registered"
            }
        }
    }
}

/// The redirect URI of a request: the one named if the client registered it, else the only one
/// registered.
fn redirect_uri_for(client: &ClientRecord, given: Option<&str>) -> Result<String, RedirectProblem> {
    let registered = &client.meta.redirect_uris;
    match given {
        Some(uri) => registered
            .iter()
            .any(|r| redirect_matches(r, uri))
            .then(|| uri.to_string())
            .ok_or(RedirectProblem::Unregistered),
        None => match registered.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err(RedirectProblem::Missing),
        },
    }
}

/// `response_mode` (OAuth 2.0 Multiple Response Types §2.1, Form Post Response Mode).
fn response_mode_of(p: &AuthorizeParams) -> Result<ResponseMode, &'static str> {
    match nonempty(&p.response_mode) {
        None | Some("query") => Ok(ResponseMode::Query),
        Some("form_post") => Ok(ResponseMode::FormPost),
        Some(_) => Err("response_mode must be query or form_post"),
    }
}

/// The store's id of a pushed request: the hash of the client id and the reference, so a
/// request URI presented with another client's id finds nothing (RFC 9126 §4) and leaves the
/// request for its own client. Client ids never hold `:` (`clients::is_client_id`).
fn pushed_request_id(client_id: &str, reference: &str) -> String {
    hashed(&format!("{client_id}:{reference}"))
}

/// Whether a request URI's reference can be one tokend made (43 base64url characters).
fn is_reference(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An authorization request's refusal as the pushed authorization request endpoint answers it
/// (RFC 9126 §2.3: the codes of RFC 6749 §4.1.2.1 and of the extensions involved).
fn pushed_refusal(error: &'static str, description: String) -> OAuthError {
    match error {
        "invalid_request" => OAuthError::InvalidRequest(description),
        "invalid_scope" => OAuthError::InvalidScope(description),
        "unauthorized_client" => OAuthError::UnauthorizedClient(description),
        _ => OAuthError::AuthorizationRefused { error, description },
    }
}

/// A code's grant: everything the token request is checked against and the tokens carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    redirect_uri_given: bool,
    code_challenge: String,
    scope: String,
    nonce: Option<String>,
    user_id: String,
    auth_time: i64,
    amr: Vec<String>,
    /// The family the code's tokens start, chosen when the code is issued so that a replay can
    /// revoke it whenever it happens (RFC 6749 §4.1.2).
    sid: String,
    /// The browser session (hashed id) that signed the user in.
    browser_session: Option<String>,
    /// The DPoP key the code is bound to (RFC 9449 §10): only a token request proving it may
    /// redeem the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dpop_jkt: Option<String>,
    /// The resources the code is granted for (RFC 8707 §2.1): the token request may ask for
    /// these or some of them, and the family keeps them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    resources: Vec<String>,
    /// The user as the authorization read them, with the session marks of the sign-in: the
    /// redemption checks the marks against the user's and needs no user-store read. A code
    /// written before codes carried it is redeemed by reading the user (docs/authorize.md,
    /// "The code").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<UserSnapshot>,
}

/// What a code keeps of its user: what the tokens and the ID token say of them, and the marks
/// a later "end all sessions" or credential change raises (docs/sessions.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserSnapshot {
    username: String,
    email: String,
    email_verified: bool,
    roles: Vec<String>,
    credentials_version: i64,
    updated_at: i64,
    /// The user's session generation at sign-in.
    gen: i64,
}

impl UserSnapshot {
    fn of(s: &SignedIn) -> Self {
        let u = &s.user;
        UserSnapshot {
            username: u.username.clone(),
            email: u.email.clone(),
            email_verified: u.email_verified,
            roles: u.roles.clone(),
            credentials_version: u.credentials_version,
            updated_at: u.updated_at,
            gen: s.session.gen,
        }
    }

    /// The user as the snapshot has them (the family start adds a newer change of username
    /// and roles, `Sessions::start_session_since`). The record carries no password hash;
    /// nothing downstream of a redemption reads it.
    fn record(&self, user_id: &str) -> UserRecord {
        UserRecord {
            id: user_id.to_string(),
            username: self.username.clone(),
            email: self.email.clone(),
            password_hash: String::new(),
            roles: self.roles.clone(),
            email_verified: self.email_verified,
            credentials_version: self.credentials_version,
            created_at: 0,
            updated_at: self.updated_at,
        }
    }
}

/// A browser session (docs/authorize.md, "Browser session").
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BrowserSession {
    user_id: String,
    /// Unix seconds of the sign-in.
    auth_time: i64,
    amr: Vec<String>,
    /// The user's session generation and credentials version at sign-in: a later "end all
    /// sessions" or credential change ends this session too (docs/sessions.md).
    gen: i64,
    cv: i64,
    /// Unix milliseconds at which it ends.
    expires_at_ms: i64,
}

/// A signed-in browser, read from its cookie.
#[derive(Debug, Clone)]
pub(crate) struct SignedIn {
    /// The store's id of the session (the hash of the cookie value).
    id: String,
    session: BrowserSession,
    user: UserRecord,
}

impl SignedIn {
    /// Who is signed in.
    pub(crate) fn user(&self) -> &UserRecord {
        &self.user
    }

    /// Unix seconds of the sign-in.
    pub(crate) fn auth_time(&self) -> i64 {
        self.session.auth_time
    }

    /// How the user signed in (RFC 8176).
    pub(crate) fn amr(&self) -> &[String] {
        &self.session.amr
    }

    /// The user's session generation and credentials version at sign-in (docs/sessions.md).
    pub(crate) fn marks(&self) -> (i64, i64) {
        (self.session.gen, self.session.cv)
    }
}

/// What an ID token says about the authentication behind it (OpenID Connect Core §2).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdTokenFacts<'a> {
    pub(crate) scope: &'a str,
    pub(crate) nonce: Option<&'a str>,
    pub(crate) auth_time: i64,
    pub(crate) amr: &'a [String],
    /// The refresh family the tokens start.
    pub(crate) sid: &'a str,
    /// The grant, for the issued-tokens metric.
    pub(crate) grant: &'static str,
}

/// Where the browser goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// An error page, never a redirect: the client or the redirect URI could not be trusted
    /// (RFC 6749 §4.1.2.1).
    ErrorPage {
        title: String,
        message: String,
        code: Option<String>,
    },
    /// Back to the client with these parameters (`iss` included, RFC 9207).
    ToClient {
        redirect_uri: String,
        mode: ResponseMode,
        params: Vec<(String, String)>,
    },
    /// The sign-in page for this pending request.
    SignIn { request_id: String },
    /// The consent page for this pending request.
    Consent { request_id: String },
}

/// What the sign-in page shows for a pending request.
#[derive(Debug, Clone, Default)]
pub(crate) struct SignInContext {
    pub(crate) client_name: Option<String>,
    pub(crate) login_hint: Option<String>,
}

/// What the consent page shows.
#[derive(Debug, Clone)]
pub(crate) struct ConsentContext {
    pub(crate) client_id: String,
    pub(crate) client_name: String,
    pub(crate) user_name: String,
    pub(crate) scopes: Vec<(String, String)>,
}

/// The result of a sign-in form.
#[derive(Debug)]
pub(crate) struct SignInResult {
    /// The new browser session's cookie value (a fresh one at every sign-in, RFC 6749 §10.12
    /// and session fixation).
    pub(crate) cookie: String,
    /// Where to go next; `None` when the sign-in was not part of an authorization.
    pub(crate) next: Option<Outcome>,
    pub(crate) username: String,
}

/// RP-initiated logout's parameters (OpenID Connect RP-Initiated Logout 1.0 §2).
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct LogoutParams {
    pub(crate) id_token_hint: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) post_logout_redirect_uri: Option<String>,
    pub(crate) state: Option<String>,
}

/// What a logout request leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogoutOutcome {
    /// The request cannot be honoured: an error page.
    ErrorPage { title: String, message: String },
    /// Ask the user first (no valid `id_token_hint` naming the signed-in user).
    Confirm { client_name: Option<String> },
    /// Signed out: redirect here (with `state`), or show the signed-out page when `None`.
    Done { redirect: Option<String> },
}

/// The `Authorize` service.
pub(crate) struct Authorize {
    clients: Arc<dyn ClientStore>,
    users: Arc<dyn UserStore>,
    store: Arc<dyn AuthorizeStore>,
    consents: Arc<dyn ConsentStore>,
    accounts: Arc<Accounts>,
    sessions: Arc<Sessions>,
    keys: Keys,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    settings: AuthorizeSettings,
    events: Events,
}

fn invalid(d: impl Into<String>) -> OAuthError {
    OAuthError::InvalidRequest(d.into())
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// `BASE64URL(SHA256(verifier))` (RFC 7636 §4.2).
pub(crate) fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
}

/// Whether a PKCE verifier or challenge has the RFC 7636 §4.1 shape: 43–128 unreserved
/// characters.
fn is_pkce_value(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Lower-case hex SHA-256: how codes and cookie values are named in the store.
pub(crate) fn hashed(secret: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, secret.as_bytes()))
}

/// The left half of the hash of the access token, base64url (OpenID Connect Core §3.1.3.6),
/// with the hash of the ID token's algorithm: SHA-256 for RS256, SHA-512 for EdDSA (Ed25519).
pub(crate) fn at_hash(alg: Alg, access_token: &str) -> String {
    let algorithm = match alg {
        Alg::EdDSA => &digest::SHA512,
        _ => &digest::SHA256,
    };
    let d = digest::digest(algorithm, access_token.as_bytes());
    let bytes = d.as_ref();
    URL_SAFE_NO_PAD.encode(bytes.get(..bytes.len() / 2).unwrap_or(bytes))
}

/// Whether `presented` matches the registered redirect URI `registered`: exactly, or, for a
/// loopback `http` URI, in everything but the port (RFC 8252 §7.3).
fn redirect_matches(registered: &str, presented: &str) -> bool {
    if registered == presented {
        return true;
    }
    let (Ok(r), Ok(p)) = (url::Url::parse(registered), url::Url::parse(presented)) else {
        return false;
    };
    r.scheme() == "http"
        && p.scheme() == "http"
        && is_loopback(&r)
        && r.host() == p.host()
        && r.path() == p.path()
        && r.query() == p.query()
        && p.fragment().is_none()
        && r.username() == p.username()
        && r.password().is_none()
        && p.password().is_none()
}

/// What a scope means, for the consent page.
pub(crate) fn scope_description(scope: &str) -> String {
    match scope {
        "openid" => "Know who you are (your account id)".into(),
        "profile" => "See your username".into(),
        "email" => "See your email address".into(),
        other => format!("Use the “{other}” permission"),
    }
}

impl Authorize {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        clients: Arc<dyn ClientStore>,
        users: Arc<dyn UserStore>,
        store: Arc<dyn AuthorizeStore>,
        consents: Arc<dyn ConsentStore>,
        accounts: Arc<Accounts>,
        sessions: Arc<Sessions>,
        keys: Keys,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        settings: AuthorizeSettings,
        events: Events,
    ) -> Authorize {
        Authorize {
            clients,
            users,
            store,
            consents,
            accounts,
            sessions,
            keys,
            clock,
            metrics,
            settings,
            events,
        }
    }

    /// The issuer (the `iss` of every answer, RFC 9207).
    pub(crate) fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// How long the browser-session cookie lives, seconds.
    pub(crate) fn browser_session_secs(&self) -> u64 {
        self.settings.browser_session_ttl.as_secs()
    }

    fn client_type(client: &ClientRecord) -> &'static str {
        if client.is_confidential() {
            "confidential"
        } else {
            "public"
        }
    }

    fn count(&self, event: &str, client: &ClientRecord) {
        self.metrics
            .authorizations
            .with_label_values(&[event, Self::client_type(client)])
            .inc();
    }

    fn error_page(title: &str, message: impl Into<String>, code: Option<&str>) -> Outcome {
        Outcome::ErrorPage {
            title: title.into(),
            message: message.into(),
            code: code.map(String::from),
        }
    }

    /// An error sent back to a trusted redirect URI (RFC 6749 §4.1.2.1, RFC 9207).
    fn to_client_error(
        &self,
        redirect_uri: &str,
        mode: ResponseMode,
        state: Option<&str>,
        error: &str,
        description: &str,
    ) -> Outcome {
        let mut params = vec![
            ("error".to_string(), error.to_string()),
            ("error_description".to_string(), description.to_string()),
        ];
        if let Some(s) = state {
            params.push(("state".into(), s.into()));
        }
        params.push(("iss".into(), self.settings.issuer.clone()));
        Outcome::ToClient {
            redirect_uri: redirect_uri.to_string(),
            mode,
            params,
        }
    }

    /// `GET|POST /oauth/authorize`: validates the request, then signs in, asks consent or
    /// answers with a code, depending on the browser session and the remembered consents.
    pub(crate) async fn authorize(
        &self,
        p: &AuthorizeParams,
        cookie: Option<&str>,
    ) -> Result<Outcome, Error> {
        // Until the client and the redirect URI are known to be good, errors are pages.
        let Some(client_id) = nonempty(&p.client_id) else {
            return Ok(Self::error_page(
                "Invalid request",
                "The application did not say who it is (client_id is missing).",
                Some("invalid_request"),
            ));
        };
        let Some(client) = self.clients.get(client_id).await? else {
            return Ok(Self::error_page(
                "Unknown application",
                "This sign-in link names an application that is not registered here.",
                Some("invalid_client"),
            ));
        };
        // A pushed request (RFC 9126 §4): everything but client_id comes from what was pushed.
        if let Some(uri) = nonempty(&p.request_uri) {
            return self.authorize_pushed(&client, uri, cookie).await;
        }
        let redirect_uri = match redirect_uri_for(&client, nonempty(&p.redirect_uri)) {
            Ok(uri) => uri,
            Err(problem) => return Ok(problem.page()),
        };
        let state = nonempty(&p.state);
        let mode = match response_mode_of(p) {
            Ok(mode) => mode,
            Err(description) => {
                return Ok(self.to_client_error(
                    &redirect_uri,
                    ResponseMode::Query,
                    state,
                    "invalid_request",
                    description,
                ))
            }
        };
        self.count("started", &client);
        if client.meta.require_pushed_authorization_requests {
            self.count("refused", &client);
            return Ok(self.to_client_error(
                &redirect_uri,
                mode,
                state,
                "invalid_request",
                "this client must push its authorization requests (RFC 9126 §6): POST them to \
                 the pushed authorization request endpoint, then send only client_id and the \
                 request_uri it answers here",
            ));
        }
        match self.validate(p, &client, redirect_uri.clone(), mode) {
            Ok(pending) => self.proceed(pending, &client, cookie).await,
            Err((error, description)) => {
                self.count("refused", &client);
                Ok(self.to_client_error(&redirect_uri, mode, state, error, &description))
            }
        }
    }

    /// `POST /oauth/par` (RFC 9126 §2): the authorization parameters of an authenticated
    /// client, checked exactly as `/oauth/authorize` checks them, are kept for 60 seconds under
    /// a new request URI bound to the client. Refusals are the client's to read (RFC 9126 §2.3),
    /// never a redirect.
    pub(crate) async fn push(
        &self,
        client: &Client,
        p: &AuthorizeParams,
        proof: &ProofHeader,
    ) -> Result<PushedAuthorization, OAuthError> {
        let client = client.record();
        if nonempty(&p.request_uri).is_some() {
            return Err(OAuthError::InvalidRequest(
                "request_uri cannot be pushed: the pushed request is what a request_uri names \
                 (RFC 9126 §2.1)"
                    .into(),
            ));
        }
        // Before the redirect URI: a client without the grant may have none to name.
        if !client
            .grant_types
            .iter()
            .any(|g| g == GRANT_AUTHORIZATION_CODE)
        {
            self.count("refused", client);
            return Err(OAuthError::UnauthorizedClient(
                "this client may not use the authorization code flow".into(),
            ));
        }
        let redirect_uri = redirect_uri_for(client, nonempty(&p.redirect_uri))
            .map_err(|problem| OAuthError::InvalidRequest(problem.description().into()))?;
        let mode = response_mode_of(p).map_err(|d| OAuthError::InvalidRequest(d.into()))?;
        let mut request =
            self.validate(p, client, redirect_uri, mode)
                .map_err(|(error, description)| {
                    self.count("refused", client);
                    pushed_refusal(error, description)
                })?;
        // RFC 9449 §10.1: a proof with the push binds the code to its key, as `dpop_jkt` would;
        // when both are sent they must name the same key.
        let dpop = self.sessions.dpop();
        let checked = dpop
            .check(
                proof,
                Target {
                    method: "POST",
                    path: PAR_PATH,
                },
                None,
            )
            .map_err(OAuthError::DpopProof)?;
        if let Some(proven) = dpop.spend_if_any(checked).await? {
            match &request.dpop_jkt {
                Some(jkt) if *jkt != proven.jkt => {
                    self.count("refused", client);
                    return Err(OAuthError::InvalidRequest(
                        "dpop_jkt does not match the key of the DPoP proof (RFC 9449 §10.1)".into(),
                    ));
                }
                _ => request.dpop_jkt = Some(proven.jkt),
            }
            dpop.accepted();
        }
        let reference = ids::random_secret()?;
        let pushed = PushedRequest {
            client_id: client.client_id.clone(),
            expires_at_ms: self.clock.now_ms().saturating_add(PUSHED_REQUEST_TTL_MS),
            request,
        };
        let json = serde_json::to_string(&pushed)
            .map_err(|e| Error::Internal(format!("serialising a pushed request: {e}")))?;
        self.store
            .put_pushed_request(
                &pushed_request_id(&client.client_id, &reference),
                &json,
                PUSHED_REQUEST_TTL_MS,
            )
            .await
            .map_err(Error::from)?;
        self.count("pushed", client);
        tracing::info!(client_id = %client.client_id, "authorization request pushed");
        Ok(PushedAuthorization {
            request_uri: format!("{REQUEST_URI_PREFIX}{reference}"),
            expires_in: PUSHED_REQUEST_TTL_MS / 1000,
        })
    }

    /// The page for a request URI that is unknown, expired, spent or another client's. The
    /// redirect URI is the pushed request's, so without it nothing is known to be trusted: a
    /// page, never a redirect (RFC 6749 §4.1.2.1; docs/authorize.md).
    fn unusable_request_uri() -> Outcome {
        Self::error_page(
            "This sign-in link has expired",
            "The application's sign-in request was already used, is more than a minute old, or \
             was not made by this application. Go back to the application and sign in again.",
            Some("invalid_request_uri"),
        )
    }

    /// `/oauth/authorize?client_id=…&request_uri=…` (RFC 9126 §4): takes the pushed request
    /// once, atomically, and goes on with it as with any validated request. Every parameter
    /// but `client_id` and `request_uri` is ignored: the pushed ones are the request.
    async fn authorize_pushed(
        &self,
        client: &ClientRecord,
        request_uri: &str,
        cookie: Option<&str>,
    ) -> Result<Outcome, Error> {
        let Some(reference) = request_uri
            .strip_prefix(REQUEST_URI_PREFIX)
            .filter(|r| is_reference(r))
        else {
            return Ok(Self::unusable_request_uri());
        };
        let id = pushed_request_id(&client.client_id, reference);
        // Taken before anything else: of concurrent uses exactly one gets it.
        let Some(json) = self.store.take_pushed_request(&id).await? else {
            return Ok(Self::unusable_request_uri());
        };
        let pushed: PushedRequest = serde_json::from_str(&json)
            .map_err(|e| Error::Internal(format!("a stored pushed request does not parse: {e}")))?;
        if pushed.client_id != client.client_id || pushed.expires_at_ms <= self.clock.now_ms() {
            return Ok(Self::unusable_request_uri());
        }
        // The client's registration may have changed since the push (RFC 9126 §4).
        if !client
            .meta
            .redirect_uris
            .iter()
            .any(|r| redirect_matches(r, &pushed.request.redirect_uri))
        {
            return Ok(RedirectProblem::Unregistered.page());
        }
        self.count("started", client);
        self.proceed(pushed.request, client, cookie).await
    }

    /// The checks made once the redirect URI is trusted; failures go back to the client.
    fn validate(
        &self,
        p: &AuthorizeParams,
        client: &ClientRecord,
        redirect_uri: String,
        response_mode: ResponseMode,
    ) -> Result<PendingRequest, (&'static str, String)> {
        let bad = |d: &str| ("invalid_request", d.to_string());
        if nonempty(&p.request).is_some() {
            return Err((
                "request_not_supported",
                "request objects are not supported".into(),
            ));
        }
        match nonempty(&p.response_type) {
            Some("code") => {}
            None => return Err(bad("response_type is missing")),
            Some(_) => {
                return Err((
                    "unsupported_response_type",
                    "only response_type=code is supported".into(),
                ))
            }
        }
        if !client
            .grant_types
            .iter()
            .any(|g| g == GRANT_AUTHORIZATION_CODE)
        {
            return Err((
                "unauthorized_client",
                "this client may not use the authorization code flow".into(),
            ));
        }
        let Some(challenge) = nonempty(&p.code_challenge) else {
            return Err(bad("code_challenge is required (PKCE with S256, RFC 7636)"));
        };
        match nonempty(&p.code_challenge_method) {
            Some("S256") => {}
            Some("plain") | None => {
                return Err(bad(
                    "code_challenge_method must be S256 (plain is not allowed)",
                ))
            }
            Some(_) => return Err(bad("code_challenge_method must be S256")),
        }
        if challenge.len() != 43 || !is_pkce_value(challenge) {
            return Err(bad(
                "code_challenge must be the 43-character base64url SHA-256 of the verifier",
            ));
        }
        let scope = self.scope_for(client, nonempty(&p.scope))?;
        for (name, v) in [
            ("state", &p.state),
            ("nonce", &p.nonce),
            ("login_hint", &p.login_hint),
        ] {
            if v.as_ref().is_some_and(|v| v.len() > MAX_PARAM_LEN) {
                return Err(("invalid_request", format!("{name} is too long")));
            }
        }
        let max_age = match nonempty(&p.max_age) {
            None => None,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= 0 => Some(n),
                _ => return Err(bad("max_age must be a non-negative number of seconds")),
            },
        };
        let prompts: BTreeSet<&str> = p
            .prompt
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .collect();
        for v in &prompts {
            if !matches!(*v, "none" | "login" | "consent" | "select_account") {
                return Err((
                    "invalid_request",
                    format!("prompt value {v:?} is not supported"),
                ));
            }
        }
        let prompt_none = prompts.contains("none");
        if prompt_none && prompts.len() > 1 {
            return Err(bad("prompt=none cannot be combined with other values"));
        }
        let dpop_jkt = nonempty(&p.dpop_jkt).map(String::from);
        if dpop_jkt.as_deref().is_some_and(|j| !is_jkt(j)) {
            return Err(bad(
                "dpop_jkt must be the 43-character base64url SHA-256 JWK thumbprint of the \
                 DPoP key (RFC 9449 §10)",
            ));
        }
        // RFC 8707 §2: each resource one the client registered, else invalid_target.
        let resources = Targets::requested(&p.resource, &client.meta.resources)
            .map_err(|d| ("invalid_target", d))?
            .granted;
        Ok(PendingRequest {
            client_id: client.client_id.clone(),
            redirect_uri,
            redirect_uri_given: nonempty(&p.redirect_uri).is_some(),
            scope,
            state: nonempty(&p.state).map(String::from),
            response_mode,
            code_challenge: challenge.to_string(),
            nonce: nonempty(&p.nonce).map(String::from),
            login_hint: nonempty(&p.login_hint).map(String::from),
            max_age,
            prompt_none,
            prompt_consent: prompts.contains("consent"),
            force_login: prompts.contains("login") || prompts.contains("select_account"),
            stale_session: None,
            dpop_jkt,
            resources,
        })
    }

    /// The scope granted for an authorization request: what was asked for, each scope allowed
    /// to the client or one of OpenID Connect's; everything the client may have when nothing
    /// was asked for.
    fn scope_for(
        &self,
        client: &ClientRecord,
        requested: Option<&str>,
    ) -> Result<String, (&'static str, String)> {
        let Some(requested) = requested else {
            return Ok(client.scopes.join(" "));
        };
        let mut out: Vec<&str> = Vec::new();
        for s in scope_tokens(requested) {
            let allowed = OIDC_SCOPES.contains(&s) || client.scopes.iter().any(|c| c == s);
            if !allowed {
                return Err((
                    "invalid_scope",
                    format!("scope {s:?} is not allowed for this client"),
                ));
            }
            if !out.contains(&s) {
                out.push(s);
            }
        }
        Ok(out.join(" "))
    }

    /// Signs in, asks consent or answers, for a validated request.
    async fn proceed(
        &self,
        mut pending: PendingRequest,
        client: &ClientRecord,
        cookie: Option<&str>,
    ) -> Result<Outcome, Error> {
        let signed_in = self.signed_in(cookie).await?;
        if pending.force_login {
            pending.stale_session = signed_in.as_ref().map(|s| s.id.clone());
        }
        let request_id = ids::random_secret()?;
        let outcome = self
            .next_step(&request_id, &pending, client, signed_in.as_ref())
            .await?;
        if matches!(outcome, Outcome::SignIn { .. } | Outcome::Consent { .. }) {
            let json = serde_json::to_string(&pending)
                .map_err(|e| Error::Internal(format!("serialising a request: {e}")))?;
            self.store
                .put_request(&hashed(&request_id), &json, REQUEST_TTL_MS)
                .await?;
        }
        Ok(outcome)
    }

    /// What a request needs next, given who is signed in.
    async fn next_step(
        &self,
        request_id: &str,
        pending: &PendingRequest,
        client: &ClientRecord,
        signed_in: Option<&SignedIn>,
    ) -> Result<Outcome, Error> {
        let now = self.clock.now();
        let fresh_enough = |s: &SignedIn| {
            let new_sign_in = !pending.force_login || pending.stale_session.as_ref() != Some(&s.id);
            new_sign_in
                && pending
                    .max_age
                    .is_none_or(|m| now - s.session.auth_time <= m)
        };
        let Some(s) = signed_in.filter(|s| fresh_enough(s)) else {
            if pending.prompt_none {
                self.count("refused", client);
                return Ok(self.answer_error(
                    pending,
                    "login_required",
                    "the user is not signed in",
                ));
            }
            return Ok(Outcome::SignIn {
                request_id: request_id.to_string(),
            });
        };
        if !client.meta.first_party {
            let granted = self.consents.get(&s.user.id, &client.client_id).await?;
            let covered = granted.as_ref().is_some_and(|g| {
                scope_tokens(&pending.scope)
                    .iter()
                    .all(|sc| g.scopes.iter().any(|x| x == sc))
            });
            if !covered || pending.prompt_consent {
                if pending.prompt_none {
                    self.count("refused", client);
                    return Ok(self.answer_error(
                        pending,
                        "consent_required",
                        "the user has not consented to this client",
                    ));
                }
                return Ok(Outcome::Consent {
                    request_id: request_id.to_string(),
                });
            }
        }
        self.issue_code(pending, client, s).await
    }

    fn answer_error(&self, pending: &PendingRequest, error: &str, description: &str) -> Outcome {
        self.to_client_error(
            &pending.redirect_uri,
            pending.response_mode,
            pending.state.as_deref(),
            error,
            description,
        )
    }

    /// Issues a code for a signed-in user and answers the client (RFC 6749 §4.1.2).
    async fn issue_code(
        &self,
        pending: &PendingRequest,
        client: &ClientRecord,
        s: &SignedIn,
    ) -> Result<Outcome, Error> {
        let code = ids::random_secret()?;
        let grant = CodeGrant {
            client_id: client.client_id.clone(),
            redirect_uri: pending.redirect_uri.clone(),
            redirect_uri_given: pending.redirect_uri_given,
            code_challenge: pending.code_challenge.clone(),
            scope: pending.scope.clone(),
            nonce: pending.nonce.clone(),
            user_id: s.user.id.clone(),
            auth_time: s.session.auth_time,
            amr: s.session.amr.clone(),
            sid: self.sessions.new_sid(&s.user.id)?,
            browser_session: Some(s.id.clone()),
            dpop_jkt: pending.dpop_jkt.clone(),
            resources: pending.resources.clone(),
            user: Some(UserSnapshot::of(s)),
        };
        let json = serde_json::to_string(&grant)
            .map_err(|e| Error::Internal(format!("serialising a code: {e}")))?;
        self.store
            .put_code(&hashed(&code), &json, CODE_TTL_MS)
            .await?;
        self.metrics.codes.with_label_values(&["issued"]).inc();
        self.count("completed", client);
        let mut params = vec![("code".to_string(), code)];
        if let Some(st) = &pending.state {
            params.push(("state".into(), st.clone()));
        }
        params.push(("iss".into(), self.settings.issuer.clone()));
        Ok(Outcome::ToClient {
            redirect_uri: pending.redirect_uri.clone(),
            mode: pending.response_mode,
            params,
        })
    }

    async fn pending(
        &self,
        request_id: &str,
    ) -> Result<Option<(PendingRequest, ClientRecord)>, Error> {
        let Some(json) = self.store.request(&hashed(request_id)).await? else {
            return Ok(None);
        };
        let pending: PendingRequest = serde_json::from_str(&json)
            .map_err(|e| Error::Internal(format!("a stored request does not parse: {e}")))?;
        let Some(client) = self.clients.get(&pending.client_id).await? else {
            return Ok(None);
        };
        Ok(Some((pending, client)))
    }

    /// The page for a pending request that is unknown, expired or spent.
    pub(crate) fn expired_request() -> Outcome {
        Self::error_page(
            "This sign-in has expired",
            "Too much time passed, or the link was already used. Go back to the application \
             and sign in again.",
            Some("invalid_request"),
        )
    }

    /// What the sign-in page shows for a pending request (`None`: unknown or expired).
    pub(crate) async fn sign_in_context(
        &self,
        request_id: Option<&str>,
    ) -> Result<Option<SignInContext>, Error> {
        let Some(id) = request_id else {
            return Ok(Some(SignInContext::default()));
        };
        Ok(self.pending(id).await?.map(|(p, c)| SignInContext {
            client_name: Some(c.meta.client_name.clone().unwrap_or(c.client_id)),
            login_hint: p.login_hint,
        }))
    }

    /// The sign-in form: the login rules of docs/hardening.md (one budget per account, back-off,
    /// the same answer for unknown and wrong), then a new browser session, then the pending
    /// request if there is one.
    pub(crate) async fn sign_in(
        &self,
        login: &str,
        password: &str,
        request_id: Option<&str>,
        origin: &Origin,
    ) -> Result<SignInResult, Error> {
        let pending = match request_id {
            Some(id) => match self.pending(id).await? {
                Some(p) => Some(p),
                None => {
                    return Ok(SignInResult {
                        cookie: String::new(),
                        next: Some(Self::expired_request()),
                        username: String::new(),
                    })
                }
            },
            None => None,
        };
        let result = self
            .accounts
            .check_password(login, password, true, SignInVia::Page, origin)
            .await;
        let label = match &result {
            Ok(_) => "success",
            Err(Error::InvalidCredentials) => "invalid_credentials",
            Err(Error::RateLimited(_)) => "rate_limited",
            Err(Error::EmailNotVerified) => "email_not_verified",
            Err(_) => "error",
        };
        self.metrics.sign_ins.with_label_values(&[label]).inc();
        let user = result?;
        let cookie = ids::random_secret()?;
        let marks = self.sessions.user_marks(&user.id).await?;
        let now_ms = self.clock.now_ms();
        let ttl_ms =
            i64::try_from(self.settings.browser_session_ttl.as_millis()).unwrap_or(i64::MAX);
        let session = BrowserSession {
            user_id: user.id.clone(),
            auth_time: now_ms.div_euclid(1000),
            amr: vec!["pwd".into()],
            gen: marks.generation,
            cv: user.credentials_version.max(marks.credentials_version),
            expires_at_ms: now_ms.saturating_add(ttl_ms),
        };
        let json = serde_json::to_string(&session)
            .map_err(|e| Error::Internal(format!("serialising a session: {e}")))?;
        let id = hashed(&cookie);
        self.store.put_browser_session(&id, &json, ttl_ms).await?;
        tracing::info!(user_id = %user.id, "browser sign-in");
        let signed_in = SignedIn { id, session, user };
        let next = match (pending, request_id) {
            (Some((p, client)), Some(rid)) => {
                let outcome = self.next_step(rid, &p, &client, Some(&signed_in)).await?;
                Some(self.spent_if_answered(rid, outcome).await?)
            }
            _ => None,
        };
        Ok(SignInResult {
            cookie,
            next,
            username: signed_in.user.username.clone(),
        })
    }

    /// The browser session named by a cookie value, if it is alive: not expired, not ended by
    /// a logout everywhere or a credential change since, and its user still there.
    pub(crate) async fn signed_in(&self, cookie: Option<&str>) -> Result<Option<SignedIn>, Error> {
        let Some(cookie) = cookie.filter(|c| !c.is_empty() && c.len() <= 128) else {
            return Ok(None);
        };
        let id = hashed(cookie);
        let Some(json) = self.store.browser_session(&id).await? else {
            return Ok(None);
        };
        let Ok(session) = serde_json::from_str::<BrowserSession>(&json) else {
            return Ok(None);
        };
        if session.expires_at_ms <= self.clock.now_ms() {
            return Ok(None);
        }
        let marks = self.sessions.user_marks(&session.user_id).await?;
        if session.gen < marks.generation || session.cv < marks.credentials_version {
            return Ok(None);
        }
        let Some(user) = self.users.by_id(&session.user_id).await? else {
            return Ok(None);
        };
        if user.credentials_version > session.cv {
            return Ok(None);
        }
        Ok(Some(SignedIn { id, session, user }))
    }

    /// Continues a pending request after sign-in (the consent page's "back" path too).
    pub(crate) async fn resume(
        &self,
        request_id: &str,
        signed_in: Option<&SignedIn>,
    ) -> Result<Outcome, Error> {
        match self.pending(request_id).await? {
            Some((p, client)) => {
                let outcome = self.next_step(request_id, &p, &client, signed_in).await?;
                self.spent_if_answered(request_id, outcome).await
            }
            None => Ok(Self::expired_request()),
        }
    }

    /// Forgets a pending request once the client has its answer: a request yields one code.
    async fn spent_if_answered(
        &self,
        request_id: &str,
        outcome: Outcome,
    ) -> Result<Outcome, Error> {
        if matches!(outcome, Outcome::ToClient { .. }) {
            self.store.take_request(&hashed(request_id)).await?;
        }
        Ok(outcome)
    }

    /// What the consent page shows (`None`: the request is unknown or expired).
    pub(crate) async fn consent_context(
        &self,
        request_id: &str,
        s: &SignedIn,
    ) -> Result<Option<ConsentContext>, Error> {
        Ok(self
            .pending(request_id)
            .await?
            .map(|(p, c)| ConsentContext {
                client_name: c
                    .meta
                    .client_name
                    .clone()
                    .unwrap_or_else(|| c.client_id.clone()),
                client_id: c.client_id,
                user_name: s.user.username.clone(),
                scopes: scope_tokens(&p.scope)
                    .into_iter()
                    .map(|sc| (sc.to_string(), scope_description(sc)))
                    .collect(),
            }))
    }

    /// The consent form: remembers the grant and answers with a code, or answers
    /// `access_denied` (RFC 6749 §4.1.2.1).
    pub(crate) async fn decide_consent(
        &self,
        request_id: &str,
        s: &SignedIn,
        allow: bool,
    ) -> Result<Outcome, Error> {
        let Some((pending, client)) = self.pending(request_id).await? else {
            return Ok(Self::expired_request());
        };
        // The request is spent either way.
        self.store.take_request(&hashed(request_id)).await?;
        if !allow {
            self.count("denied", &client);
            tracing::info!(user_id = %s.user.id, client_id = %client.client_id, "consent denied");
            return Ok(self.answer_error(&pending, "access_denied", "the user denied the request"));
        }
        let scopes: Vec<String> = scope_tokens(&pending.scope)
            .into_iter()
            .map(String::from)
            .collect();
        self.consents
            .grant(&s.user.id, &client.client_id, &scopes, self.clock.now_ms())
            .await?;
        tracing::info!(user_id = %s.user.id, client_id = %client.client_id, "consent granted");
        self.events.record(
            NewEvent::new(EventType::ConsentGranted)
                .user(&s.user.id)
                .client(&client.client_id)
                .detail("scope", pending.scope.as_str()),
        );
        self.issue_code(&pending, &client, s).await
    }

    /// `grant_type=authorization_code` (RFC 6749 §4.1.3, RFC 7636 §4.6): a single-use code,
    /// bound to the client, the redirect URI and the PKCE challenge, and to a DPoP key when
    /// the request named one (RFC 9449 §10). A replayed code revokes the family its first use
    /// started (RFC 6749 §4.1.2). `proof` is the token request's, already spent. `resource`
    /// names what the access token is for: some of the code's resources, all when empty
    /// (RFC 8707 §2.2).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn redeem(
        &self,
        client: &Client,
        code: Option<&str>,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
        origin: &Origin,
        proof: Option<Proven>,
        resource: &[String],
    ) -> Result<TokenResponse, OAuthError> {
        let client = client.record();
        let code = code.ok_or_else(|| invalid("missing parameter code"))?;
        let verifier = verifier.ok_or_else(|| {
            invalid("missing parameter code_verifier (PKCE is required, RFC 7636)")
        })?;
        // A resource the client may never ask for is refused before the code is spent.
        Targets::requested(resource, &client.meta.resources).map_err(OAuthError::InvalidTarget)?;
        let bad_grant = |d: &str| OAuthError::InvalidGrant(d.to_string());
        if code.len() > 256 {
            return Err(bad_grant("invalid authorization code"));
        }
        let key = hashed(code);
        let grant_json = match self
            .store
            .redeem_code(&key, USED_CODE_TTL_MS)
            .await
            .map_err(Error::from)?
        {
            Redemption::Unknown => return Err(bad_grant("invalid or expired authorization code")),
            Redemption::Replayed(json) => {
                self.metrics.codes.with_label_values(&["replayed"]).inc();
                if let Ok(g) = serde_json::from_str::<CodeGrant>(&json) {
                    self.sessions.revoke_family(&g.sid).await?;
                    tracing::warn!(client_id = %g.client_id, user_id = %g.user_id,
                        "authorization code replayed: the tokens of its first use are revoked");
                }
                return Err(bad_grant("authorization code already used"));
            }
            Redemption::First(json) => json,
        };
        let g: CodeGrant = serde_json::from_str(&grant_json).map_err(|e| {
            OAuthError::Other(Error::Internal(format!(
                "a stored code does not parse: {e}"
            )))
        })?;
        if g.client_id != client.client_id {
            return Err(bad_grant("the code was issued to another client"));
        }
        // A code issued before a family's sid named its user (an upgrade within the code's
        // minute) cannot start a family: the user signs in again.
        if crate::store::split_sid(&g.sid).map(|(_, user)| user) != Some(g.user_id.as_str()) {
            return Err(bad_grant("invalid or expired authorization code"));
        }
        match redirect_uri {
            Some(r) if r != g.redirect_uri => {
                return Err(bad_grant(
                    "redirect_uri does not match the authorization request",
                ))
            }
            None if g.redirect_uri_given => {
                return Err(invalid(
                    "redirect_uri is required: the authorization request included it",
                ))
            }
            _ => {}
        }
        if !is_pkce_value(verifier) {
            return Err(invalid(
                "code_verifier must be 43-128 unreserved characters",
            ));
        }
        let computed = s256(verifier);
        if !ids::constant_time_eq(computed.as_bytes(), g.code_challenge.as_bytes()) {
            return Err(bad_grant("code_verifier does not match the code_challenge"));
        }
        if let Some(jkt) = &g.dpop_jkt {
            let dpop = self.sessions.dpop();
            match &proof {
                None => return Err(OAuthError::DpopProof(dpop.refused(ProofRefusal::Missing))),
                Some(p) if p.jkt != *jkt => {
                    dpop.refused(ProofRefusal::Key);
                    return Err(bad_grant(
                        "the authorization code is bound to another DPoP key (dpop_jkt)",
                    ));
                }
                Some(_) => {}
            }
        }
        let targets =
            Targets::narrowed(resource, &g.resources).map_err(OAuthError::InvalidTarget)?;
        let alg = self.sessions.client_alg(client);
        let start = FamilyStart {
            sid: g.sid.clone(),
            auth_time: g.auth_time,
            grant: GRANT_AUTHORIZATION_CODE,
            fresh: false,
            origin: origin.clone(),
            proof,
            targets,
        };
        // The family starts under the sign-in's session marks: refused, in the step that adds
        // it, if the user's sessions ended after the code was issued (docs/sessions.md).
        let begin = async {
            match &g.user {
                Some(snapshot) => {
                    let since = UserMarks {
                        generation: snapshot.gen,
                        credentials_version: snapshot.credentials_version,
                    };
                    let user = snapshot.record(&g.user_id);
                    Ok(self
                        .sessions
                        .start_session_since(user, since, client, &g.scope, alg, start)
                        .await?)
                }
                // A code from before codes carried their user.
                None => match self.users.by_id(&g.user_id).await.map_err(Error::from)? {
                    Some(user) => {
                        let pair = self
                            .sessions
                            .start_session_with(&user, client, &g.scope, alg, start)
                            .await?;
                        Ok(Some((pair, user)))
                    }
                    None => Err(bad_grant("the user no longer exists")),
                },
            }
        };
        // A replay racing this redemption revokes the family whether it lands before the
        // family is written (a revoked stub it starts from) or after; the family joins its
        // browser session meanwhile. Three keys, three slots: sent together.
        let listed = async {
            match &g.browser_session {
                Some(bs) => {
                    let ttl = i64::try_from(self.settings.browser_session_ttl.as_millis())
                        .unwrap_or(i64::MAX);
                    self.store.add_session_family(bs, &g.sid, ttl).await
                }
                None => Ok(()),
            }
        };
        let (begun, replayed, listed) = tokio::join!(begin, self.store.code_replayed(&key), listed);
        let begun: Option<(TokenPair, UserRecord)> = begun?;
        if replayed.map_err(Error::from)? {
            if begun.is_some() {
                self.sessions.revoke_family(&g.sid).await?;
            }
            return Err(bad_grant("authorization code already used"));
        }
        listed.map_err(Error::from)?;
        let Some((pair, user)) = begun else {
            return Err(bad_grant(
                "the user's sessions ended after the code was issued",
            ));
        };
        self.metrics.codes.with_label_values(&["redeemed"]).inc();
        let id_token = if scope_tokens(&g.scope).contains(&"openid") {
            Some(self.id_token(client, &user, &g, &pair.access_token)?)
        } else {
            None
        };
        tracing::info!(user_id = %user.id, client_id = %client.client_id, "authorization code redeemed");
        Ok(TokenResponse {
            access_token: pair.access_token,
            token_type: pair.token_type,
            expires_in: pair.expires_in,
            refresh_token: Some(pair.refresh_token).filter(|t| !t.is_empty()),
            scope: pair.scope,
            id_token,
            issued_token_type: None,
        })
    }

    /// The ID token's algorithm: the client's, else RS256 when configured, else the first
    /// configured (docs/authorize.md, "ID tokens").
    fn id_token_alg(&self, client: &ClientRecord) -> Alg {
        let algs = &self.settings.signing_algs;
        client
            .meta
            .id_token_signed_response_alg
            .as_deref()
            .and_then(Alg::parse)
            .filter(|a| algs.contains(a))
            .or_else(|| algs.iter().copied().find(|a| *a == Alg::RS256))
            .or_else(|| algs.first().copied())
            .unwrap_or(Alg::EdDSA)
    }

    /// An ID token (OpenID Connect Core §2, §3.1.3.6).
    fn id_token(
        &self,
        client: &ClientRecord,
        user: &UserRecord,
        g: &CodeGrant,
        access_token: &str,
    ) -> Result<String, Error> {
        let facts = IdTokenFacts {
            scope: &g.scope,
            nonce: g.nonce.as_deref(),
            auth_time: g.auth_time,
            amr: &g.amr,
            sid: &g.sid,
            grant: GRANT_AUTHORIZATION_CODE,
        };
        self.id_token_for(client, user, facts, access_token)
    }

    /// An ID token for tokens issued by any grant (OpenID Connect Core §2, §3.1.3.6).
    pub(crate) fn id_token_for(
        &self,
        client: &ClientRecord,
        user: &UserRecord,
        g: IdTokenFacts<'_>,
        access_token: &str,
    ) -> Result<String, Error> {
        let alg = self.id_token_alg(client);
        let now = self.clock.now();
        let ttl = i64::try_from(self.settings.id_token_ttl.as_secs()).unwrap_or(300);
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.settings.issuer));
        claims.insert("sub".into(), json!(user.id));
        claims.insert("aud".into(), json!(client.client_id));
        claims.insert("exp".into(), json!(now + ttl));
        claims.insert("iat".into(), json!(now));
        claims.insert("auth_time".into(), json!(g.auth_time));
        if let Some(n) = g.nonce {
            claims.insert("nonce".into(), json!(n));
        }
        claims.insert("sid".into(), json!(g.sid));
        claims.insert("at_hash".into(), json!(at_hash(alg, access_token)));
        claims.insert("amr".into(), json!(g.amr));
        claims.insert("azp".into(), json!(client.client_id));
        let scopes = scope_tokens(g.scope);
        Self::profile_claims(&mut claims, user, &scopes);
        let token = self.keys.sign(alg, "JWT", &claims, now)?;
        self.metrics.issued(g.grant, "id", alg.as_str());
        Ok(token)
    }

    /// The claims of the `profile` and `email` scopes (OpenID Connect Core §5.4).
    fn profile_claims(claims: &mut Map<String, Value>, user: &UserRecord, scopes: &[&str]) {
        if scopes.contains(&"profile") {
            claims.insert("preferred_username".into(), json!(user.username));
            claims.insert("name".into(), json!(user.username));
            claims.insert("updated_at".into(), json!(user.updated_at.div_euclid(1000)));
        }
        if scopes.contains(&"email") {
            claims.insert("email".into(), json!(user.email));
            claims.insert("email_verified".into(), json!(user.email_verified));
        }
    }

    /// `GET|POST /oauth/userinfo` (OpenID Connect Core §5.3): claims by the token's scopes.
    pub(crate) async fn userinfo(&self, p: &Principal) -> Result<Value, Error> {
        let scopes = scope_tokens(&p.claims.scope);
        if !scopes.contains(&"openid") {
            return Err(Error::InsufficientScope {
                scope: "openid",
                dpop: p.claims.cnf.is_some(),
            });
        }
        // A token without a user behind it (a client's own, or one whose account is gone) is
        // refused as `/users/me` refuses it: 401 `invalid_token` (OpenID Connect Core §5.3.3).
        let user = self
            .users
            .by_id(&p.claims.sub)
            .await?
            .ok_or(Error::TokenRejected(Refusal::UnknownUser))?;
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(user.id));
        Self::profile_claims(&mut claims, &user, &scopes);
        Ok(Value::Object(claims))
    }

    /// The user's consents (`GET /users/me/consents`).
    pub(crate) async fn consents(&self, p: &Principal) -> Result<Vec<ConsentRecord>, Error> {
        Ok(self.consents.list(&p.claims.sub).await?)
    }

    /// Withdraws a consent and ends that client's sessions for the user
    /// (`DELETE /users/me/consents/{client_id}`).
    pub(crate) async fn withdraw_consent(
        &self,
        p: &Principal,
        client_id: &str,
    ) -> Result<(), Error> {
        if !self.consents.withdraw(&p.claims.sub, client_id).await? {
            return Err(Error::NotFound);
        }
        let ended = self
            .sessions
            .revoke_client_families(&p.claims.sub, client_id)
            .await?;
        tracing::info!(user_id = %p.claims.sub, client_id, ended, "consent withdrawn");
        self.events.record(
            NewEvent::new(EventType::ConsentWithdrawn)
                .user(&p.claims.sub)
                .client(client_id)
                .detail("sessions_ended", ended),
        );
        Ok(())
    }

    /// RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0): checks the parameters;
    /// signs out at once when `confirmed` or when a valid `id_token_hint` names the signed-in
    /// user, else asks.
    pub(crate) async fn logout(
        &self,
        p: &LogoutParams,
        cookie: Option<&str>,
        confirmed: bool,
    ) -> Result<LogoutOutcome, Error> {
        let now = self.clock.now();
        let hint = match nonempty(&p.id_token_hint) {
            Some(t) => match self.keys.verify(t, "JWT", now) {
                Ok(v) if v.claims.get("iss").and_then(Value::as_str) == Some(self.issuer()) => {
                    Some(v.claims)
                }
                _ => {
                    return Ok(LogoutOutcome::ErrorPage {
                        title: "Sign-out failed".into(),
                        message: "The application sent an ID token that was not issued here."
                            .into(),
                    })
                }
            },
            None => None,
        };
        let hint_aud = hint
            .as_ref()
            .and_then(|c| c.get("aud"))
            .and_then(|a| match a {
                Value::String(s) => Some(s.clone()),
                Value::Array(v) => v.first().and_then(Value::as_str).map(String::from),
                _ => None,
            });
        let client_id = nonempty(&p.client_id)
            .map(String::from)
            .or(hint_aud.clone());
        if let (Some(a), Some(c)) = (&hint_aud, nonempty(&p.client_id)) {
            if a != c {
                return Ok(LogoutOutcome::ErrorPage {
                    title: "Sign-out failed".into(),
                    message: "client_id does not match the ID token.".into(),
                });
            }
        }
        let client = match &client_id {
            Some(id) => self.clients.get(id).await?,
            None => None,
        };
        let redirect = match nonempty(&p.post_logout_redirect_uri) {
            None => None,
            Some(uri) => {
                let ok = client
                    .as_ref()
                    .is_some_and(|c| c.meta.post_logout_redirect_uris.iter().any(|r| r == uri));
                if !ok {
                    return Ok(LogoutOutcome::ErrorPage {
                        title: "Sign-out failed".into(),
                        message: "The application asked to return to an address it did not \
                                  register. You have not been signed out."
                            .into(),
                    });
                }
                let mut u = url::Url::parse(uri).map_err(|e| {
                    Error::Internal(format!("a registered URI does not parse: {e}"))
                })?;
                if let Some(st) = nonempty(&p.state) {
                    u.query_pairs_mut().append_pair("state", st);
                }
                Some(u.to_string())
            }
        };
        let signed_in = self.signed_in(cookie).await?;
        let hint_names_user = match (&hint, &signed_in) {
            (Some(h), Some(s)) => h.get("sub").and_then(Value::as_str) == Some(s.user.id.as_str()),
            _ => false,
        };
        if signed_in.is_some() && !confirmed && !hint_names_user {
            return Ok(LogoutOutcome::Confirm {
                client_name: client.map(|c| c.meta.client_name.unwrap_or(c.client_id)),
            });
        }
        if let Some(s) = signed_in {
            self.end_browser_session(&s).await?;
        }
        Ok(LogoutOutcome::Done { redirect })
    }

    /// Ends a browser session and every family it started.
    async fn end_browser_session(&self, s: &SignedIn) -> Result<(), Error> {
        let families = self.store.end_browser_session(&s.id).await?;
        for sid in &families {
            self.sessions.revoke_family(sid).await?;
        }
        tracing::info!(user_id = %s.user.id, families = families.len(), "browser session ended");
        self.events.record(
            NewEvent::new(EventType::Logout)
                .user(&s.user.id)
                .detail("scope", "browser"),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn at_hash_is_the_left_half_of_the_algorithms_hash() {
        // OpenID Connect Core §3.1.3.6 with SHA-256: 16 bytes → 22 base64url characters.
        assert_eq!(at_hash(Alg::RS256, "token").len(), 22);
        // SHA-512 for Ed25519: 32 bytes → 43 characters.
        assert_eq!(at_hash(Alg::EdDSA, "token").len(), 43);
    }

    #[test]
    fn redirect_uris_match_exactly_or_on_loopback_in_all_but_the_port() {
        assert!(redirect_matches(
            "https://app.example/cb",
            "https://app.example/cb"
        ));
        assert!(!redirect_matches(
            "https://app.example/cb",
            "https://app.example/cb/"
        ));
        assert!(!redirect_matches(
            "https://app.example/cb",
            "https://app.example/cb?x=1"
        ));
        assert!(!redirect_matches(
            "https://app.example:443/cb",
            "https://app.example:8443/cb"
        ));
        assert!(redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:53122/cb"
        ));
        assert!(redirect_matches(
            "http://[::1]:8080/cb",
            "http://[::1]:9/cb"
        ));
        assert!(!redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:5/other"
        ));
        assert!(!redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.2:5/cb"
        ));
        assert!(!redirect_matches(
            "http://127.0.0.1/cb",
            "https://127.0.0.1:5/cb"
        ));
    }

    #[test]
    fn pkce_values_have_the_rfc_shape() {
        assert!(is_pkce_value(&"a".repeat(43)));
        assert!(!is_pkce_value(&"a".repeat(42)));
        assert!(!is_pkce_value(&"a".repeat(129)));
        assert!(!is_pkce_value(&format!("{}+", "a".repeat(43))));
    }
}
