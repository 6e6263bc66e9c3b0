//! `/healthz` (alive) and `/readyz` (stores reachable, an active key per algorithm).

use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::state::AppState;
use super::{json, ApiResult};

pub(crate) fn healthz() -> ApiResult {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

pub(crate) async fn metrics(state: &AppState, _req: Request<Incoming>) -> ApiResult {
    let text = state.published.metrics_text();
    let mut res = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(res)
}

pub(crate) async fn readyz(state: &AppState, _req: Request<Incoming>) -> ApiResult {
    let report = state.readiness().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &report)
}
