//! `/admin/*`: user administration for role `admin`.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::auth::principal;
use super::state::AppState;
use super::{empty, json, read_json, ApiError, ApiResult};
use crate::domain::events::EventFilter;

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

#[derive(Deserialize)]
struct RolesBody {
    roles: Vec<String>,
}

/// The `{id}` of `/admin/users/{id}/<suffix>`.
pub(crate) fn user_id_of(path: &str, suffix: &str) -> Option<String> {
    let id = path.strip_prefix("/admin/users/")?.strip_suffix(suffix)?;
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok.then(|| id.to_string())
}

pub(crate) async fn list_users(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    let q: ListQuery = serde_urlencoded::from_str(req.uri().query().unwrap_or(""))
        .map_err(|e| ApiError::InvalidRequest(format!("invalid query: {e}")))?;
    let page = state
        .admin
        .list_users(&p, q.after.as_deref(), q.limit.unwrap_or(50))
        .await?;
    json(StatusCode::OK, &page)
}

pub(crate) async fn set_roles(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    let id = user_id_of(req.uri().path(), "/roles").ok_or(ApiError::NotFound)?;
    let body: RolesBody = read_json(req, state.body_limit).await?;
    let user = state.admin.set_roles(&p, &id, &body.roles).await?;
    json(StatusCode::OK, &user)
}

/// `DELETE /admin/users/{id}` (docs/events.md, "Deleting an account").
pub(crate) async fn delete_user(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    let id = user_id_of(req.uri().path(), "").ok_or(ApiError::NotFound)?;
    let origin = super::origin(&req, &state.trusted_proxies);
    state
        .lifecycle
        .delete_by_admin(&p, &id, origin.ip_text().as_deref())
        .await?;
    empty(StatusCode::NO_CONTENT)
}

/// The query of `GET /admin/events`; anything else is refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    user_id: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

/// `GET /admin/events?type=&user_id=&after=&limit=` (docs/events.md).
pub(crate) async fn events(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    let q: EventsQuery = serde_urlencoded::from_str(req.uri().query().unwrap_or(""))
        .map_err(|e| ApiError::InvalidRequest(format!("invalid query: {e}")))?;
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => Some(l.parse::<usize>().map_err(|_| {
            ApiError::InvalidRequest(format!(
                "limit: a whole number from 1 to {}",
                crate::domain::events::MAX_PAGE
            ))
        })?),
    };
    let filter = EventFilter {
        kind: q.kind,
        user_id: q.user_id,
        after: q.after,
        limit,
    };
    let page = state.events.query(&p, &filter).await?;
    json(StatusCode::OK, &page)
}

pub(crate) async fn revoke_sessions(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    let id = user_id_of(req.uri().path(), "/revoke-sessions").ok_or(ApiError::NotFound)?;
    state.admin.revoke_sessions(&p, &id).await?;
    empty(StatusCode::NO_CONTENT)
}
