//! The device authorization grant's HTTP surface (RFC 8628, docs/device.md): the device
//! authorization endpoint `POST /oauth/device_authorization` (JSON, like the token endpoint)
//! and the `/device` page where a person enters the user code and approves or denies. The
//! rules live in `domain::device`; this file reads requests and renders its answers. The
//! token endpoint's device grant is in `oauth.rs`.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;

use super::auth::cookie;
use super::authorize::{
    csrf_token, error_page, params, see_other, session_cookie_name, with_csrf, FormHeaders,
};
use super::oauth::{authenticated, OAuthForm};
use super::pages::{self, DeviceConfirmView, DeviceDoneView, DeviceEntryView, ScopeView};
use super::state::AppState;
use super::{json_no_store, ApiError, ApiResult};
use crate::domain::device::{CodeProblem, DevicePage};
use crate::domain::oauth::PublicClients;

/// `POST /oauth/device_authorization` (RFC 8628 §3.1, §3.2): clients authenticate as at the
/// token endpoint; public clients send `client_id` alone.
pub(crate) async fn device_authorization(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let (client, form) = authenticated::<OAuthForm>(state, req, PublicClients::Allowed).await?;
    let form = form.normalized();
    let answer = state.devices.start(&client, form.scope.as_deref()).await?;
    json_no_store(StatusCode::OK, &answer)
}

#[derive(Debug, Default, Deserialize)]
struct DeviceQuery {
    user_code: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct DeviceForm {
    csrf_token: Option<String>,
    user_code: Option<String>,
    decision: Option<String>,
}

/// What the entry form says about a code it cannot use.
fn problem_text(problem: CodeProblem) -> String {
    match problem {
        CodeProblem::Missing => "Enter the code shown on your device.".into(),
        CodeProblem::Malformed => {
            "That is not a code from a device: it has 8 letters, like BCDF-GHJK.".into()
        }
        CodeProblem::Unknown => {
            "That code is not right. Check the code on your device and try again.".into()
        }
        CodeProblem::Expired => {
            "That code has expired. Start again on your device to get a new one.".into()
        }
        CodeProblem::Used => {
            "That code has already been used. Start again on your device to get a new one.".into()
        }
        CodeProblem::TooManyAttempts(secs) => {
            format!("Too many wrong codes. Wait {secs} seconds and try again.")
        }
    }
}

/// A [`DevicePage`] as the browser sees it.
fn render(state: &AppState, page: DevicePage, token: &str, new_csrf: bool) -> ApiResult {
    let branding = &state.browser.branding;
    let res = match page {
        DevicePage::Enter { code, problem } => {
            let status = match problem {
                None => StatusCode::OK,
                Some(CodeProblem::TooManyAttempts(_)) => StatusCode::TOO_MANY_REQUESTS,
                Some(_) => StatusCode::BAD_REQUEST,
            };
            let html = pages::device_entry(
                branding,
                &DeviceEntryView {
                    code,
                    error: problem.map(problem_text),
                },
            );
            let mut res = pages::html_response(status, html);
            if let Some(CodeProblem::TooManyAttempts(secs)) = problem {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            res
        }
        // The way back is built from the validated code, never taken from the request.
        DevicePage::SignIn { user_code } => {
            see_other(&format!("/login?user_code={}", user_code.display()))
        }
        DevicePage::Confirm(c) => {
            let html = pages::device_confirm(
                branding,
                &DeviceConfirmView {
                    csrf_token: token.to_string(),
                    user_code: c.user_code,
                    client_name: c.client_name,
                    client_id: c.client_id,
                    user_name: c.user_name,
                    scopes: c
                        .scopes
                        .into_iter()
                        .map(|(name, description)| ScopeView { name, description })
                        .collect(),
                },
            );
            return Ok(with_csrf(
                state,
                pages::html_response(StatusCode::OK, html),
                token,
                new_csrf,
            ));
        }
        DevicePage::Approved { client_name } => done(state, true, client_name),
        DevicePage::Denied { client_name } => done(state, false, client_name),
    };
    Ok(res)
}

/// The page after the decision.
fn done(state: &AppState, approved: bool, client_name: String) -> Response<Full<Bytes>> {
    pages::html_response(
        StatusCode::OK,
        pages::device_done(
            &state.browser.branding,
            &DeviceDoneView {
                approved,
                client_name,
            },
        ),
    )
}

/// `GET /device`: the code entry form; with `user_code` (typed, or from
/// `verification_uri_complete`), the approval page once the browser is signed in.
pub(crate) async fn device_page(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let q: DeviceQuery = match super::authorize::page_query(&req) {
        Ok(q) => q,
        Err(e) => return Ok(error_page(state, e)),
    };
    let source = super::client_ip(&req, &state.trusted_proxies);
    let session = cookie(&req, session_cookie_name(state));
    let (token, new) = match csrf_token(state, &req) {
        Ok(t) => t,
        Err(e) => return Ok(error_page(state, e)),
    };
    match state
        .devices
        .page(q.user_code.as_deref(), source, session.as_deref())
        .await
    {
        Ok(page) => render(state, page, &token, new),
        Err(e) => Ok(error_page(state, e.into())),
    }
}

/// `POST /device`: approve or deny (the approval page's form, CSRF-checked).
pub(crate) async fn device_submit(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let h = FormHeaders::of(state, &req);
    let source = super::client_ip(&req, &state.trusted_proxies);
    let (token, new) = match csrf_token(state, &req) {
        Ok(t) => t,
        Err(e) => return Ok(error_page(state, e)),
    };
    let form: DeviceForm = match params(state, req).await {
        Ok(f) => f,
        Err(e) => return Ok(error_page(state, e)),
    };
    if let Err(e) = h.check_csrf(state, form.csrf_token.as_deref()) {
        return Ok(error_page(state, e));
    }
    let approve = match form.decision.as_deref() {
        Some("approve") => true,
        Some("deny") => false,
        _ => {
            return Ok(error_page(
                state,
                ApiError::InvalidRequest("decision must be approve or deny".into()),
            ))
        }
    };
    let code = form.user_code.unwrap_or_default();
    match state
        .devices
        .decide(&code, source, h.session.as_deref(), approve)
        .await
    {
        Ok(page) => render(state, page, &token, new),
        Err(e) => Ok(error_page(state, e.into())),
    }
}
