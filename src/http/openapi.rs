//! `GET /openapi.json`: the OpenAPI 3.1 document of the whole HTTP API, checked into the
//! repository root and embedded at build time. `tests/api/openapi.rs` keeps it true to the
//! router: every route documented, nothing documented that is not served.

use http::Request;

use super::state::AppState;
use super::ApiResult;

/// The document, as checked in.
pub(crate) const DOCUMENT: &[u8] = include_bytes!("../../openapi.json");

/// `GET /openapi.json`, cacheable like JWKS.
pub(crate) fn openapi<B>(state: &AppState, req: &Request<B>) -> ApiResult {
    state
        .documents
        .openapi
        .serve(req, &state.public_cache_control)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_openapi_3_1_json() {
        let v: serde_json::Value = serde_json::from_slice(super::DOCUMENT).unwrap();
        assert!(v["openapi"].as_str().unwrap().starts_with("3.1"));
        assert!(v["paths"].is_object());
    }
}
