//! `/healthz` (alive) and `/readyz` (stores reachable, an active key per algorithm).

use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::{json, ApiResult};
use crate::startup::AppState;

pub async fn healthz(_state: &AppState, _req: Request<Incoming>) -> ApiResult {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

pub async fn readyz(state: &AppState, _req: Request<Incoming>) -> ApiResult {
    let report = state.readiness().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &report)
}
