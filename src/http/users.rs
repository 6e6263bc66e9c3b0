//! `/users/me`: the profile of the caller.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::auth::principal;
use super::state::AppState;
use super::{empty, json, read_json, ApiResult};

#[derive(Deserialize)]
struct UpdateMe {
    username: String,
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
