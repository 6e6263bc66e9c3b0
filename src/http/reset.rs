//! Password reset (docs/mail.md, "Password reset"): `POST /auth/password/forgot` (JSON
//! `{email}`, always 202), the page a reset link opens (`GET /auth/password/reset?token=…`,
//! which spends nothing), its CSRF-checked form (`POST /auth/password/reset/confirm`) and the
//! JSON twin for apps (`POST /auth/password/reset`).

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::authorize::{csrf_token, error_page, params, with_csrf, FormHeaders};
use super::pages::{self, ErrorView, ForgotPasswordView, MessageView, ResetPasswordView};
use super::state::AppState;
use super::{empty, read_json, ApiResult};
use crate::domain::Error;

#[derive(Default, Deserialize)]
struct ResetForm {
    csrf_token: Option<String>,
    token: Option<String>,
    new_password: Option<String>,
    new_password_confirm: Option<String>,
}

#[derive(Default, Deserialize)]
struct ForgotForm {
    csrf_token: Option<String>,
    email: Option<String>,
}

#[derive(Deserialize)]
struct ForgotBody {
    email: String,
}

#[derive(Deserialize)]
struct ResetBody {
    token: String,
    new_password: String,
}

/// What the invalid-link page tells the reader to do.
const INVALID_LINK: &str = "Ask the application for a new password reset mail.";

/// The page of a link that is unknown, spent or expired.
fn invalid_link(state: &AppState) -> ApiResult {
    super::link::invalid(state, INVALID_LINK)
}

/// The form again, with one line saying what went wrong; the link is still good.
fn form_again(state: &AppState, csrf: String, token: String, error: String) -> ApiResult {
    Ok(pages::html_response(
        StatusCode::BAD_REQUEST,
        pages::reset_password(
            &state.browser.branding,
            &ResetPasswordView {
                csrf_token: csrf,
                token,
                email: None,
                error: Some(error),
            },
        ),
    ))
}

/// `POST /auth/password/forgot` (JSON `{email}`, no authentication): always 202, whether or
/// not the address has an account and a mail goes out.
pub(crate) async fn forgot(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let body: ForgotBody = read_json(req, state.body_limit).await?;
    state.resets.forgot(&body.email).await?;
    empty(StatusCode::ACCEPTED)
}

/// The page that asks for the address, with a CSRF token.
fn forgot_form_page(
    state: &AppState,
    status: StatusCode,
    csrf: String,
    view: ForgotPasswordView,
) -> ApiResult {
    let html = pages::forgot_password(
        &state.browser.branding,
        &ForgotPasswordView {
            csrf_token: csrf,
            ..view
        },
    );
    Ok(pages::html_response(status, html))
}

/// `GET /auth/password/forgot`: the page that asks for the address of a reset, linked from the
/// sign-in page. Without a mail transport there is no reset to ask for: an error page.
pub(crate) async fn forgot_page(state: &AppState, req: Request<Incoming>) -> ApiResult {
    if !state.resets.available() {
        return Ok(pages::html_response(
            StatusCode::NOT_FOUND,
            pages::error(
                &state.browser.branding,
                &ErrorView {
                    title: "Password reset is not available".into(),
                    message: "This server sends no mail, so it cannot send a reset link. Ask \
                              its operator to reset your password."
                        .into(),
                    error_code: None,
                },
            ),
        ));
    }
    let (csrf, new) = match csrf_token(state, &req) {
        Ok(t) => t,
        Err(e) => return Ok(error_page(state, e)),
    };
    let res = forgot_form_page(state, StatusCode::OK, csrf.clone(), Default::default())?;
    Ok(with_csrf(state, res, &csrf, new))
}

/// `POST /auth/password/forgot/send`: the page's form (CSRF double submit). The answer is the
/// same page for every address, as the JSON endpoint's is the same 202; only something that is
/// not an address at all brings the form back.
pub(crate) async fn forgot_form(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let h = FormHeaders::of(state, &req);
    let form: ForgotForm = match params(state, req).await {
        Ok(f) => f,
        Err(e) => return Ok(error_page(state, e)),
    };
    if let Err(e) = h.check_csrf(state, form.csrf_token.as_deref()) {
        return Ok(error_page(state, e));
    }
    let csrf = form.csrf_token.unwrap_or_default();
    let email = form.email.unwrap_or_default();
    match state.resets.ask(&email).await {
        Ok(()) => Ok(pages::html_response(
            StatusCode::OK,
            pages::message(
                &state.browser.branding,
                &MessageView {
                    title: "Check your mail".into(),
                    message: format!(
                        "If {} belongs to an account, a link to choose a new password is on \
                         its way. It works for 30 minutes, once.",
                        email.trim()
                    ),
                },
            ),
        )),
        Err(Error::Invalid(_)) => forgot_form_page(
            state,
            StatusCode::BAD_REQUEST,
            csrf,
            ForgotPasswordView {
                email,
                error: Some("Enter an email address, like name@example.com.".into()),
                ..Default::default()
            },
        ),
        Err(e) => Ok(error_page(state, e.into())),
    }
}

/// `GET /auth/password/reset?token=…`: the form for the new password; a GET never spends the
/// token, so a mail scanner that opens the link changes nothing.
pub(crate) async fn page(state: &AppState, req: Request<Incoming>) -> ApiResult {
    super::link::page(
        state,
        req,
        async |token| state.resets.pending(token).await,
        |csrf_token, token, email| {
            pages::reset_password(
                &state.browser.branding,
                &ResetPasswordView {
                    csrf_token,
                    token,
                    email: Some(email),
                    error: None,
                },
            )
        },
        INVALID_LINK,
    )
    .await
}

/// `POST /auth/password/reset/confirm`: the page's form (CSRF double submit, as every form).
/// Two passwords that differ, or one the policy refuses, show the form again with the reason;
/// the link stays good.
pub(crate) async fn reset_form(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let h = FormHeaders::of(state, &req);
    let form: ResetForm = match params(state, req).await {
        Ok(f) => f,
        Err(e) => return Ok(error_page(state, e)),
    };
    if let Err(e) = h.check_csrf(state, form.csrf_token.as_deref()) {
        return Ok(error_page(state, e));
    }
    let csrf = form.csrf_token.unwrap_or_default();
    let token = form.token.unwrap_or_default();
    let password = form.new_password.unwrap_or_default();
    if form.new_password_confirm.as_deref() != Some(password.as_str()) {
        return form_again(state, csrf, token, "The two passwords differ.".into());
    }
    match state.resets.reset(&token, &password).await {
        Ok(email) => Ok(pages::html_response(
            StatusCode::OK,
            pages::message(
                &state.browser.branding,
                &MessageView {
                    title: "Password changed".into(),
                    message: format!(
                        "The password of {email} is changed and every session was signed out. \
                         Sign in with the new password."
                    ),
                },
            ),
        )),
        Err(Error::InvalidLink) => invalid_link(state),
        Err(Error::Invalid(why)) => form_again(state, csrf, token, why),
        Err(e) => Ok(error_page(state, e.into())),
    }
}

/// `POST /auth/password/reset` (JSON `{token,new_password}`): the same reset for apps; 204.
pub(crate) async fn reset_json(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let body: ResetBody = read_json(req, state.body_limit).await?;
    state.resets.reset(&body.token, &body.new_password).await?;
    empty(StatusCode::NO_CONTENT)
}
