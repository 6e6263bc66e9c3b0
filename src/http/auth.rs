//! The seed's `/auth/*` surface: register, login, refresh, logout, verify.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{bearer, empty, json, json_no_store, read_json, ApiError, ApiResult};
use crate::domain::accounts::Principal;
use crate::startup::AppState;

#[derive(Deserialize)]
struct RegisterBody {
    username: String,
    email: String,
    password: String,
}

#[derive(Deserialize)]
struct LoginBody {
    email: String,
    password: String,
}

/// Authenticates the request's bearer access token.
pub async fn principal<B>(state: &AppState, req: &Request<B>) -> Result<Principal, ApiError> {
    let token = bearer(req)?;
    Ok(state.core.authenticate(&token).await?)
}

pub async fn register(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let body: RegisterBody = read_json(req, state.body_limit).await?;
    let user = state
        .core
        .register(&body.username, &body.email, &body.password)
        .await?;
    json(StatusCode::CREATED, &user)
}

pub async fn login(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let body: LoginBody = read_json(req, state.body_limit).await?;
    let pair = state.core.login(&body.email, &body.password).await?;
    json_no_store(StatusCode::OK, &pair)
}

pub async fn refresh(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let token = bearer(&req)?;
    let pair = state.core.refresh(&token, None).await?;
    json_no_store(StatusCode::OK, &pair)
}

pub async fn logout(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    state.core.logout(&p).await?;
    empty(StatusCode::NO_CONTENT)
}

pub async fn logout_all(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    state.core.logout_all(&p).await?;
    empty(StatusCode::NO_CONTENT)
}

pub async fn verify(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    json_no_store(
        StatusCode::OK,
        &serde_json::json!({ "active": true, "claims": p.claims }),
    )
}
