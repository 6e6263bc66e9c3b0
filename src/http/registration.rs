//! Dynamic client registration (RFC 7591) at `POST /oauth/register`, and the client
//! configuration endpoint of RFC 7592 at `GET|PUT|DELETE /oauth/register/{client_id}`
//! (docs/registration.md). JSON in and out; answers carry `Cache-Control: no-store`.

use http::{header, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;

use super::authorize::percent_decode;
use super::state::AppState;
use super::{bearer, client_ip, empty, json_no_store, read_json_bytes, ApiError, ApiResult};
use crate::domain::registration::{RegistrationError, REGISTER_PATH};

impl From<RegistrationError> for ApiError {
    fn from(e: RegistrationError) -> Self {
        match e {
            RegistrationError::Disabled => ApiError::NotFound,
            RegistrationError::InvalidToken(d) => ApiError::InvalidToken(d),
            RegistrationError::InvalidRedirectUri(d) => ApiError::InvalidRedirectUri(d),
            RegistrationError::InvalidClientMetadata(d) => ApiError::InvalidClientMetadata(d),
            RegistrationError::Other(e) => e.into(),
        }
    }
}

/// The client id of a configuration endpoint path (`/oauth/register/{client_id}`),
/// percent-decoded; an undecodable one names no client (404).
fn client_id_of<B>(req: &Request<B>) -> Result<String, ApiError> {
    req.uri()
        .path()
        .strip_prefix(REGISTER_PATH)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(percent_decode)
        .ok_or(ApiError::NotFound)
}

/// The bearer token of the request, if it sent an `Authorization` header; one that is not a
/// bearer token is refused (401).
fn optional_bearer<B>(req: &Request<B>) -> Result<Option<String>, ApiError> {
    if req.headers().contains_key(header::AUTHORIZATION) {
        bearer(req).map(Some)
    } else {
        Ok(None)
    }
}

/// `POST /oauth/register` (RFC 7591 §3): 201 with the client information, and its
/// configuration endpoint in `Location`.
pub(crate) async fn register(state: &AppState, req: Request<Incoming>) -> ApiResult {
    state.registration.check_enabled()?;
    let token = optional_bearer(&req)?;
    let source = client_ip(&req, &state.trusted_proxies);
    let body = read_json_bytes(req, state.body_limit).await?;
    let info = state
        .registration
        .register(token.as_deref(), source, &body)
        .await?;
    let mut res = json_no_store(StatusCode::CREATED, &info)?;
    if let Ok(v) = HeaderValue::from_str(info.registration_client_uri()) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// `GET /oauth/register/{client_id}` (RFC 7592 §2.1).
pub(crate) async fn read(state: &AppState, req: Request<Incoming>) -> ApiResult {
    state.registration.check_enabled()?;
    let client_id = client_id_of(&req)?;
    let token = bearer(&req)?;
    let info = state.registration.read(&client_id, &token).await?;
    json_no_store(StatusCode::OK, &info)
}

/// `PUT /oauth/register/{client_id}` (RFC 7592 §2.2).
pub(crate) async fn update(state: &AppState, req: Request<Incoming>) -> ApiResult {
    state.registration.check_enabled()?;
    let client_id = client_id_of(&req)?;
    let token = bearer(&req)?;
    let body = read_json_bytes(req, state.body_limit).await?;
    let info = state.registration.update(&client_id, &token, &body).await?;
    json_no_store(StatusCode::OK, &info)
}

/// `DELETE /oauth/register/{client_id}` (RFC 7592 §2.3): 204.
pub(crate) async fn delete(state: &AppState, req: Request<Incoming>) -> ApiResult {
    state.registration.check_enabled()?;
    let client_id = client_id_of(&req)?;
    let token = bearer(&req)?;
    state.registration.delete(&client_id, &token).await?;
    empty(StatusCode::NO_CONTENT)
}
