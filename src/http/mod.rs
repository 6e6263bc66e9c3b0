//! The only place that knows HTTP: the server, the layer stack, the route table, the router,
//! the error mapping and one thin handler file per surface.

pub mod admin;
pub mod auth;
pub mod error;
pub mod oauth;
pub mod openapi;
pub mod ops;
pub mod router;
pub mod routes;
pub mod server;
pub mod stack;
pub mod state;
pub mod users;
pub mod wellknown;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use error::ApiError;

use crate::domain::Refusal;

/// What every handler returns.
pub type ApiResult = Result<Response<Full<Bytes>>, ApiError>;

/// Reads a body of at most `limit` bytes.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(ApiError::PayloadTooLarge { limit });
        }
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(e) => Err(ApiError::InvalidRequest(format!(
            "could not read body: {e}"
        ))),
    }
}

fn media_type(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
}

/// Reads a JSON body into `T`: 415 unless `Content-Type: application/json`, 413 when too large,
/// 400 naming the problem when it does not parse.
pub async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, ApiError> {
    let ok = media_type(&req).is_some_and(|m| m == "application/json" || m.ends_with("+json"));
    if !ok {
        return Err(ApiError::UnsupportedMediaType {
            expected: "application/json",
        });
    }
    let body = read_body(req, limit).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
}

/// Reads an `application/x-www-form-urlencoded` body into `T`.
pub async fn read_form<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, ApiError> {
    let ok = media_type(&req).is_some_and(|m| m == "application/x-www-form-urlencoded");
    if !ok {
        return Err(ApiError::UnsupportedMediaType {
            expected: "application/x-www-form-urlencoded",
        });
    }
    let body = read_body(req, limit).await?;
    serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid form body: {e}")))
}

/// The bearer token of the `Authorization` header (RFC 6750 §2.1).
pub fn bearer<B>(req: &Request<B>) -> Result<String, ApiError> {
    let v = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::InvalidToken(Refusal::Missing.description().into()))?;
    let v = v
        .to_str()
        .map_err(|_| ApiError::InvalidToken("malformed Authorization header".into()))?;
    let (scheme, token) = v
        .split_once(' ')
        .ok_or_else(|| ApiError::InvalidToken("expected Authorization: Bearer <token>".into()))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::InvalidToken(
            "expected Authorization: Bearer <token>".into(),
        ));
    }
    Ok(token.to_string())
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> ApiResult {
    let bytes = serde_json::to_vec(body)
        .map_err(|e| ApiError::Internal(format!("serialising response: {e}")))?;
    let mut res = Response::new(Full::new(Bytes::from(bytes)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

/// A JSON response carrying tokens: never cached (RFC 6749 §5.1).
pub fn json_no_store<T: Serialize>(status: StatusCode, body: &T) -> ApiResult {
    let mut res = json(status, body)?;
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(res)
}

/// An empty response.
pub fn empty(status: StatusCode) -> ApiResult {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = status;
    Ok(res)
}

/// The client's IP: the TCP peer, or — when the peer is a trusted proxy — the right-most
/// address of `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip<B>(
    req: &Request<B>,
    trusted: &[crate::config::IpNet],
) -> Option<std::net::IpAddr> {
    let peer = req.extensions().get::<server::PeerAddr>()?.0.ip();
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let mut client = peer;
    for v in req.headers().get_all("x-forwarded-for").iter().rev() {
        let Ok(v) = v.to_str() else {
            return Some(client);
        };
        for hop in v.split(',').rev() {
            match hop.trim().parse::<std::net::IpAddr>() {
                Ok(ip) if is_trusted(ip) => client = ip,
                Ok(ip) => return Some(ip),
                Err(_) => return Some(client),
            }
        }
    }
    Some(client)
}
