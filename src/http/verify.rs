//! Email verification (docs/mail.md): the page a verification link opens
//! (`GET /auth/verify-email?token=…`, which spends nothing), its CSRF-checked form
//! (`POST /auth/verify-email/confirm`), and the JSON endpoints for apps
//! (`POST /auth/verify-email`, `POST /auth/verify-email/resend`). The same link, page and
//! endpoint confirm an email change (docs/mail.md, "Email change").

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::authorize::{error_page, params, FormHeaders};
use super::pages::{self, MessageView, VerifyEmailView};
use super::state::AppState;
use super::{empty, json_no_store, read_json, ApiResult};
use crate::domain::Error;

#[derive(Debug, Default, Deserialize)]
struct ConfirmForm {
    csrf_token: Option<String>,
    token: Option<String>,
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
}

#[derive(Deserialize)]
struct ResendBody {
    email: String,
}

/// What the invalid-link page tells the reader to do.
const INVALID_LINK: &str = "Sign in or ask the application for a new confirmation mail.";

/// The page of a link that is unknown, spent or expired.
fn invalid_link(state: &AppState) -> ApiResult {
    super::link::invalid(state, INVALID_LINK)
}

/// `GET /auth/verify-email?token=…`: asks to confirm; a GET never spends the token, so a mail
/// scanner that opens the link confirms nothing.
pub(crate) async fn page(state: &AppState, req: Request<Incoming>) -> ApiResult {
    super::link::page(
        state,
        req,
        async |token| state.verification.pending(token).await,
        |csrf_token, token, pending| {
            pages::verify_email(
                &state.browser.branding,
                &VerifyEmailView {
                    csrf_token,
                    token,
                    email: pending.email,
                    change: pending.change,
                },
            )
        },
        INVALID_LINK,
    )
    .await
}

/// `POST /auth/verify-email/confirm`: the page's form (CSRF double submit, as every form).
pub(crate) async fn confirm_form(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let h = FormHeaders::of(state, &req);
    let form: ConfirmForm = match params(state, req).await {
        Ok(f) => f,
        Err(e) => return Ok(error_page(state, e)),
    };
    if let Err(e) = h.check_csrf(state, form.csrf_token.as_deref()) {
        return Ok(error_page(state, e));
    }
    match state
        .verification
        .confirm(form.token.as_deref().unwrap_or_default())
        .await
    {
        Ok(c) => Ok(pages::html_response(
            StatusCode::OK,
            pages::message(
                &state.browser.branding,
                &if c.changed {
                    MessageView {
                        title: "Email address changed".into(),
                        message: format!(
                            "{} is your account's address now. You can close this page.",
                            c.email
                        ),
                    }
                } else {
                    MessageView {
                        title: "Email address confirmed".into(),
                        message: format!("{} is confirmed. You can close this page.", c.email),
                    }
                },
            ),
        )),
        Err(Error::InvalidLink) => invalid_link(state),
        Err(e) => Ok(error_page(state, e.into())),
    }
}

/// `POST /auth/verify-email` (JSON `{token}`): the same confirmation for apps.
pub(crate) async fn confirm_json(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let body: TokenBody = read_json(req, state.body_limit).await?;
    let c = state.verification.confirm(&body.token).await?;
    json_no_store(
        StatusCode::OK,
        &serde_json::json!({ "email": c.email, "email_verified": true }),
    )
}

/// `POST /auth/verify-email/resend` (JSON `{email}`, no authentication): always 202, whether
/// or not a mail goes out (at most one a minute and five an hour per address).
pub(crate) async fn resend(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let body: ResendBody = read_json(req, state.body_limit).await?;
    state.verification.resend(&body.email).await?;
    empty(StatusCode::ACCEPTED)
}
