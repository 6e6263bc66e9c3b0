//! `/.well-known/*`: the JWKS document, served from pre-serialised bytes with a strong ETag.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::ApiResult;
use crate::startup::AppState;

/// True when `If-None-Match` names `etag` (or `*`).
pub fn etag_matches<B>(req: &Request<B>, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

/// A cacheable document with ETag/304 handling.
pub fn cacheable<B>(
    req: &Request<B>,
    body: Bytes,
    etag: &str,
    cache_control: &HeaderValue,
) -> ApiResult {
    let not_modified = etag_matches(req, etag);
    let mut res = Response::new(if not_modified {
        Full::new(Bytes::new())
    } else {
        Full::new(body)
    });
    if not_modified {
        *res.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, cache_control.clone());
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    Ok(res)
}

pub async fn jwks(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let doc = state.core.keys.jwks();
    cacheable(&req, doc.body.clone(), &doc.etag, &state.public_cache_control)
}
