//! The OAuth2 surface (docs/api.md): `POST /oauth/token` (RFC 6749; the device grant of
//! RFC 8628, token exchange of RFC 8693 and the resource indicators of RFC 8707 too), `POST /oauth/revoke` (RFC 7009), `POST /oauth/introspect` (RFC 7662) and
//! `POST /oauth/par` (RFC 9126, docs/authorize.md). Form-encoded bodies only; clients
//! authenticate with HTTP Basic (`client_secret_basic`), with `client_id` + `client_secret` in
//! the body (`client_secret_post`), with a JWT signed by their key (`client_assertion_type` +
//! `client_assertion`, `private_key_jwt`: RFC 7523 §2.2, docs/private_key_jwt.md), or, when
//! public, with `client_id` alone.

use base64::Engine;
use http::{header, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use serde::de::DeserializeOwned;

use super::state::AppState;
use super::{empty, json_no_store, proof_header, read_form, ApiError, ApiResult, WithLists};
use crate::domain::assertion::PresentedAssertion;
use crate::domain::authorize::AuthorizeParams;
use crate::domain::oauth::{
    Client, ClientCredentials, OAuthError, PublicClients, TokenHint, TokenRequest,
};

/// Every parameter the three endpoints (and the device authorization endpoint) read. A
/// parameter sent twice is refused (RFC 6749 §3.2); one sent without a value counts as omitted
/// (RFC 6749 §3.1).
#[derive(Debug, Default, Deserialize)]
pub(super) struct OAuthForm {
    grant_type: Option<String>,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    pub(super) scope: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    token: Option<String>,
    token_type_hint: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    device_code: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    actor_token: Option<String>,
    actor_token_type: Option<String>,
    requested_token_type: Option<String>,
}

impl OAuthForm {
    pub(super) fn normalized(self) -> OAuthForm {
        let f = |v: Option<String>| v.filter(|s| !s.is_empty());
        OAuthForm {
            grant_type: f(self.grant_type),
            username: f(self.username),
            password: f(self.password),
            refresh_token: f(self.refresh_token),
            scope: f(self.scope),
            client_id: f(self.client_id),
            client_secret: f(self.client_secret),
            token: f(self.token),
            token_type_hint: f(self.token_type_hint),
            code: f(self.code),
            redirect_uri: f(self.redirect_uri),
            code_verifier: f(self.code_verifier),
            device_code: f(self.device_code),
            client_assertion_type: f(self.client_assertion_type),
            client_assertion: f(self.client_assertion),
            subject_token: f(self.subject_token),
            subject_token_type: f(self.subject_token_type),
            actor_token: f(self.actor_token),
            actor_token_type: f(self.actor_token_type),
            requested_token_type: f(self.requested_token_type),
        }
    }
}

/// The form of `POST /oauth/par` (RFC 9126 §2.1): the authorization request's parameters and
/// the client's credentials. A parameter sent twice is refused, as at the other endpoints.
#[derive(Debug, Default, Deserialize)]
struct ParForm {
    #[serde(flatten)]
    params: AuthorizeParams,
    client_secret: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
}

/// Where a form carries the client's credentials (RFC 6749 §2.3.1; RFC 7521 §4.2 for
/// assertions); empty counts as omitted.
pub(super) trait ClientFields {
    fn client_id(&self) -> Option<&str>;
    fn client_secret(&self) -> Option<&str>;
    fn client_assertion_type(&self) -> Option<&str>;
    fn client_assertion(&self) -> Option<&str>;
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

impl ClientFields for OAuthForm {
    fn client_id(&self) -> Option<&str> {
        given(&self.client_id)
    }
    fn client_secret(&self) -> Option<&str> {
        given(&self.client_secret)
    }
    fn client_assertion_type(&self) -> Option<&str> {
        given(&self.client_assertion_type)
    }
    fn client_assertion(&self) -> Option<&str> {
        given(&self.client_assertion)
    }
}

impl ClientFields for ParForm {
    fn client_id(&self) -> Option<&str> {
        given(&self.params.client_id)
    }
    fn client_secret(&self) -> Option<&str> {
        given(&self.client_secret)
    }
    fn client_assertion_type(&self) -> Option<&str> {
        given(&self.client_assertion_type)
    }
    fn client_assertion(&self) -> Option<&str> {
        given(&self.client_assertion)
    }
}

impl<F: ClientFields> ClientFields for WithLists<F> {
    fn client_id(&self) -> Option<&str> {
        self.form.client_id()
    }
    fn client_secret(&self) -> Option<&str> {
        self.form.client_secret()
    }
    fn client_assertion_type(&self) -> Option<&str> {
        self.form.client_assertion_type()
    }
    fn client_assertion(&self) -> Option<&str> {
        self.form.client_assertion()
    }
}

impl From<OAuthError> for ApiError {
    fn from(e: OAuthError) -> Self {
        match e {
            OAuthError::InvalidRequest(d) => ApiError::InvalidRequest(d),
            OAuthError::InvalidClient(d) => ApiError::InvalidClient(d),
            OAuthError::InvalidGrant(d) => ApiError::InvalidGrant(d),
            OAuthError::UnauthorizedClient(d) => ApiError::UnauthorizedClient(d),
            OAuthError::UnsupportedGrantType(d) => ApiError::UnsupportedGrantType(d),
            OAuthError::InvalidScope(d) => ApiError::InvalidScope(d),
            OAuthError::InvalidTarget(d) => ApiError::InvalidTarget(d),
            OAuthError::AuthorizationRefused { error, description } => {
                ApiError::AuthorizationRefused {
                    code: error,
                    description,
                }
            }
            OAuthError::AuthorizationPending(description) => ApiError::DeviceGrant {
                code: "authorization_pending",
                description,
                interval: None,
            },
            OAuthError::SlowDown {
                description,
                interval,
            } => ApiError::DeviceGrant {
                code: "slow_down",
                description,
                interval: Some(interval),
            },
            OAuthError::AccessDenied(description) => ApiError::DeviceGrant {
                code: "access_denied",
                description,
                interval: None,
            },
            OAuthError::ExpiredToken(description) => ApiError::DeviceGrant {
                code: "expired_token",
                description,
                interval: None,
            },
            OAuthError::DpopProof(refusal) => ApiError::DpopProof {
                refusal,
                resource: false,
            },
            OAuthError::Other(e) => e.into(),
        }
    }
}

/// Undoes the `application/x-www-form-urlencoded` encoding RFC 6749 §2.3.1 applies to the
/// client id and secret before they are joined for HTTP Basic.
fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The id and secret of an `Authorization: Basic` header (RFC 6749 §2.3.1, RFC 7617).
fn basic_credentials(value: &HeaderValue) -> Result<(String, String), OAuthError> {
    let bad =
        |what: &str| OAuthError::InvalidClient(format!("malformed Basic credentials: {what}"));
    let v = value.to_str().map_err(|_| bad("not ASCII"))?.trim();
    let (scheme, b64) = v.split_once(' ').unwrap_or((v, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::InvalidClient(
            "unsupported client authentication scheme; use Basic or client_secret_post".into(),
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| bad("not base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad("not UTF-8"))?;
    let (id, secret) = decoded.split_once(':').ok_or_else(|| bad("no ':'"))?;
    let id = form_decode(id).ok_or_else(|| bad("bad percent-encoding"))?;
    let secret = form_decode(secret).ok_or_else(|| bad("bad percent-encoding"))?;
    if id.is_empty() {
        return Err(bad("empty client id"));
    }
    Ok((id, secret))
}

/// Who the request says it is, from the header or the body, never both (RFC 6749 §2.3).
fn presented_client(
    authorization: Option<&HeaderValue>,
    form: &impl ClientFields,
) -> Result<ClientCredentials, OAuthError> {
    if let Some(value) = authorization {
        let (client_id, secret) = basic_credentials(value)?;
        if form.client_secret().is_some() {
            return Err(OAuthError::InvalidRequest(
                "use one client authentication method: Basic or client_secret in the body, not both"
                    .into(),
            ));
        }
        if form.client_id().is_some_and(|id| id != client_id) {
            return Err(OAuthError::InvalidRequest(
                "client_id in the body differs from the Basic credentials".into(),
            ));
        }
        let secret = Some(secret).filter(|s| !s.is_empty());
        return Ok(ClientCredentials {
            client_id,
            secret,
            basic: true,
        });
    }
    match (form.client_id(), form.client_secret()) {
        (Some(id), secret) => Ok(ClientCredentials {
            client_id: id.to_string(),
            secret: secret.map(String::from),
            basic: false,
        }),
        (None, Some(_)) => Err(OAuthError::InvalidRequest(
            "client_secret without client_id".into(),
        )),
        (None, None) => Err(OAuthError::InvalidClient(
            "client authentication required".into(),
        )),
    }
}

/// A client assertion, when the request carries one (RFC 7521 §4.2): it is then the only
/// credential (RFC 6749 §2.3: one method per request).
fn presented_assertion(
    authorization: Option<&HeaderValue>,
    form: &impl ClientFields,
) -> Result<Option<PresentedAssertion>, OAuthError> {
    if form.client_assertion().is_none() && form.client_assertion_type().is_none() {
        return Ok(None);
    }
    if authorization.is_some() || form.client_secret().is_some() {
        return Err(OAuthError::InvalidRequest(
            "use one client authentication method: a client assertion, Basic or client_secret, \
             not several"
                .into(),
        ));
    }
    Ok(Some(PresentedAssertion {
        client_id: form.client_id().map(String::from),
        assertion_type: form.client_assertion_type().map(String::from),
        assertion: form.client_assertion().map(String::from),
    }))
}

/// Reads the form and authenticates the client. An assertion may name the endpoint it is
/// sent to as its audience (docs/private_key_jwt.md, "aud"): that is this request's path.
pub(super) async fn authenticated<F: DeserializeOwned + ClientFields>(
    state: &AppState,
    req: Request<Incoming>,
    public: PublicClients,
) -> Result<(Client, F), ApiError> {
    let authorization = req.headers().get(header::AUTHORIZATION).cloned();
    let source = super::client_ip(&req, &state.trusted_proxies);
    let endpoint = req.uri().path().to_string();
    let form: F = read_form(req, state.body_limit).await?;
    let client = match presented_assertion(authorization.as_ref(), &form)? {
        Some(assertion) => {
            state
                .oauth
                .authenticate_assertion(&assertion, &endpoint)
                .await?
        }
        None => {
            let creds = presented_client(authorization.as_ref(), &form)?;
            state
                .oauth
                .authenticate_client(&creds, public, source)
                .await?
        }
    };
    Ok((client, form))
}

/// `POST /oauth/token` (RFC 6749 §4.3, §4.4, §6; RFC 8693 §2; `resource`, RFC 8707 §2), with a
/// `DPoP` proof when the client binds its tokens (RFC 9449 §5).
pub(crate) async fn token(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let origin = super::origin(&req, &state.trusted_proxies);
    let dpop = proof_header(&req);
    let (client, lists) =
        authenticated::<WithLists<OAuthForm>>(state, req, PublicClients::Allowed).await?;
    let form = lists.form.normalized();
    let request = TokenRequest {
        grant_type: form.grant_type,
        username: form.username,
        password: form.password,
        refresh_token: form.refresh_token,
        scope: form.scope,
        code: form.code,
        redirect_uri: form.redirect_uri,
        code_verifier: form.code_verifier,
        device_code: form.device_code,
        origin,
        dpop,
        resource: lists.resource,
        audience: lists.audience,
        subject_token: form.subject_token,
        subject_token_type: form.subject_token_type,
        actor_token: form.actor_token,
        actor_token_type: form.actor_token_type,
        requested_token_type: form.requested_token_type,
    };
    let response = state.oauth.token_grant(&client, &request).await?;
    json_no_store(StatusCode::OK, &response)
}

/// `POST /oauth/revoke` (RFC 7009): 200 with an empty body whether or not the token was known.
pub(crate) async fn revoke(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let (client, form) = authenticated::<OAuthForm>(state, req, PublicClients::Allowed).await?;
    let form = form.normalized();
    let token = form
        .token
        .ok_or_else(|| ApiError::InvalidRequest("missing parameter token".into()))?;
    let hint = TokenHint::parse(form.token_type_hint.as_deref());
    state.oauth.revoke_token(&client, &token, hint).await?;
    empty(StatusCode::OK)
}

/// `POST /oauth/introspect` (RFC 7662): confidential clients only.
pub(crate) async fn introspect(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let (_client, form) = authenticated::<OAuthForm>(state, req, PublicClients::Refused).await?;
    let form = form.normalized();
    let token = form
        .token
        .ok_or_else(|| ApiError::InvalidRequest("missing parameter token".into()))?;
    let hint = TokenHint::parse(form.token_type_hint.as_deref());
    let answer = state.oauth.introspect(&token, hint).await?;
    json_no_store(StatusCode::OK, &answer)
}

/// `POST /oauth/par` (RFC 9126 §2): a client, authenticated as at the token endpoint, pushes
/// an authorization request; 201 with the `request_uri` to send the browser with.
pub(crate) async fn par(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let proof = proof_header(&req);
    let (client, lists) =
        authenticated::<WithLists<ParForm>>(state, req, PublicClients::Allowed).await?;
    let mut params = lists.form.params;
    params.resource = lists.resource;
    let pushed = state.authorize.push(&client, &params, &proof).await?;
    json_no_store(StatusCode::CREATED, &pushed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(raw: &str) -> HeaderValue {
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        HeaderValue::from_str(&format!("Basic {b64}")).unwrap()
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let (id, secret) = basic_credentials(&basic("my%20app:a%2Bb+c%3A")).unwrap();
        assert_eq!(id, "my app");
        assert_eq!(secret, "a+b c:");
        let (id, secret) = basic_credentials(&basic("svc:pa:ss")).unwrap();
        assert_eq!((id.as_str(), secret.as_str()), ("svc", "pa:ss"));
    }

    #[test]
    fn malformed_basic_credentials_are_invalid_client() {
        for v in [
            HeaderValue::from_static("Basic !!!"),
            HeaderValue::from_static("Bearer abc"),
            basic("no-colon"),
            basic(":secret"),
            basic("id:%zz"),
        ] {
            assert!(
                matches!(basic_credentials(&v), Err(OAuthError::InvalidClient(_))),
                "{v:?}"
            );
        }
    }

    #[test]
    fn one_authentication_method_per_request() {
        let form = OAuthForm {
            client_id: Some("svc".into()),
            client_secret: Some("x".into()),
            ..OAuthForm::default()
        };
        assert!(matches!(
            presented_client(Some(&basic("svc:x")), &form),
            Err(OAuthError::InvalidRequest(_))
        ));
        let c = presented_client(None, &form).unwrap();
        assert_eq!(c.secret.as_deref(), Some("x"));
        let public = OAuthForm {
            client_id: Some("spa".into()),
            ..OAuthForm::default()
        };
        assert_eq!(presented_client(None, &public).unwrap().secret, None);
        assert!(matches!(
            presented_client(None, &OAuthForm::default()),
            Err(OAuthError::InvalidClient(_))
        ));
    }

    #[test]
    fn an_assertion_is_the_only_credential_of_its_request() {
        let form: OAuthForm = serde_urlencoded::from_str(
            "client_id=svc&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=a.b.c",
        )
        .unwrap();
        let p = presented_assertion(None, &form).unwrap().unwrap();
        assert_eq!(p.client_id.as_deref(), Some("svc"));
        assert_eq!(p.assertion.as_deref(), Some("a.b.c"));
        assert!(matches!(
            presented_assertion(Some(&basic("svc:x")), &form),
            Err(OAuthError::InvalidRequest(_))
        ));
        let with_secret = OAuthForm {
            client_secret: Some("x".into()),
            ..form
        };
        assert!(matches!(
            presented_assertion(None, &with_secret),
            Err(OAuthError::InvalidRequest(_))
        ));
        // Without either parameter (or with empty ones) the other methods apply.
        let plain: OAuthForm =
            serde_urlencoded::from_str("client_id=svc&client_assertion=&client_assertion_type=")
                .unwrap();
        assert!(presented_assertion(None, &plain).unwrap().is_none());
        let par: ParForm = serde_urlencoded::from_str(
            "client_id=web&response_type=code&client_assertion_type=t&client_assertion=a.b.c",
        )
        .unwrap();
        let p = presented_assertion(None, &par).unwrap().unwrap();
        assert_eq!(p.assertion_type.as_deref(), Some("t"));
        assert_eq!(p.client_id.as_deref(), Some("web"));
    }

    #[test]
    fn a_pushed_request_form_holds_the_authorization_parameters_and_the_credentials() {
        let form: ParForm = serde_urlencoded::from_str(
            "client_id=web&client_secret=s&response_type=code&scope=openid+read&unknown=1",
        )
        .unwrap();
        assert_eq!(form.params.response_type.as_deref(), Some("code"));
        assert_eq!(form.params.scope.as_deref(), Some("openid read"));
        let creds = presented_client(None, &form).unwrap();
        assert_eq!(creds.client_id, "web");
        assert_eq!(creds.secret.as_deref(), Some("s"));
        // A parameter sent twice is refused (RFC 6749 §3.1), inside the flattened part too.
        for twice in ["scope=a&scope=b", "client_secret=a&client_secret=b"] {
            assert!(
                serde_urlencoded::from_str::<ParForm>(twice).is_err(),
                "{twice}"
            );
        }
        // Empty credentials count as omitted.
        let form: ParForm = serde_urlencoded::from_str("client_id=&client_secret=").unwrap();
        assert!(matches!(
            presented_client(None, &form),
            Err(OAuthError::InvalidClient(_))
        ));
    }
}
