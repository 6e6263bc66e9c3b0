//! `/users/me`: the profile of the caller, their sessions, and the end of their account.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::auth::principal;
use super::state::AppState;
use super::{empty, json, read_json, ApiError, ApiResult};

#[derive(Deserialize)]
struct UpdateMe {
    username: String,
}

#[derive(Deserialize)]
struct DeleteMe {
    current_password: String,
}

#[derive(serde::Serialize)]
struct SessionList {
    sessions: Vec<crate::domain::sessions::SessionView>,
}

#[derive(Deserialize)]
struct ChangePassword {
    current_password: String,
    new_password: String,
}

#[derive(Deserialize)]
struct ChangeEmail {
    current_password: String,
    new_email: String,
}

pub(crate) async fn me(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    let user = state.accounts.me(&p).await?;
    json(StatusCode::OK, &user)
}

pub(crate) async fn update_me(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    p.require_fresh()?;
    let body: UpdateMe = read_json(req, state.body_limit).await?;
    let user = state.accounts.rename(&p, &body.username).await?;
    json(StatusCode::OK, &user)
}

pub(crate) async fn change_password(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    p.require_fresh()?;
    let body: ChangePassword = read_json(req, state.body_limit).await?;
    state
        .accounts
        .change_password(&p, &body.current_password, &body.new_password)
        .await?;
    empty(StatusCode::NO_CONTENT)
}

/// `PUT /users/me/email` (fresh token): 202; the new address gets a confirmation link and the
/// change happens when it is confirmed (docs/mail.md, "Email change").
pub(crate) async fn change_email(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    p.require_fresh()?;
    let body: ChangeEmail = read_json(req, state.body_limit).await?;
    state
        .accounts
        .change_email(&p, &body.current_password, &body.new_email)
        .await?;
    empty(StatusCode::ACCEPTED)
}

/// `DELETE /users/me` (docs/events.md, "Deleting an account").
pub(crate) async fn delete_me(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    p.require_fresh()?;
    let origin = super::origin(&req, &state.trusted_proxies);
    let body: DeleteMe = read_json(req, state.body_limit).await?;
    state
        .accounts
        .delete_me(&p, &body.current_password, &origin)
        .await?;
    empty(StatusCode::NO_CONTENT)
}

/// `GET /users/me/sessions` (docs/sessions.md, "The sessions list").
pub(crate) async fn sessions(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    let sessions = state.sessions.list_sessions(&p).await?;
    json(StatusCode::OK, &SessionList { sessions })
}

/// The `{sid}` of `/users/me/sessions/{sid}`.
fn sid_of(path: &str) -> Option<&str> {
    let sid = path.strip_prefix("/users/me/sessions/")?;
    let ok = super::routes::is_sid(sid);
    ok.then_some(sid)
}

/// `DELETE /users/me/sessions/{sid}`: 204, or 404 for a session that is not the caller's.
pub(crate) async fn end_session(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    let sid = sid_of(req.uri().path()).ok_or(ApiError::NotFound)?;
    let origin = super::origin(&req, &state.trusted_proxies);
    state.sessions.end_session(&p, sid, &origin).await?;
    empty(StatusCode::NO_CONTENT)
}
