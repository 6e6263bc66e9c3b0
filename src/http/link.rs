//! The pages mailed links open (docs/mail.md): an email confirmation and a password reset
//! each show a form for their token. Opening one spends nothing; only the form's post does.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::authorize::{csrf_token, error_page, params, with_csrf};
use super::pages::{self, ErrorView};
use super::state::AppState;
use super::ApiResult;
use crate::domain::Error;

#[derive(Debug, Default, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// `GET` of a mailed link: the link's `token` looked up with `pending` (nothing spent); a live
/// one is shown by `render(csrf_token, token, what pending found)` with the form's CSRF cookie;
/// an unknown, used or expired one gets the invalid-link page, which says to
/// `ask_for_a_new` mail.
pub(super) async fn page<T>(
    state: &AppState,
    req: Request<Incoming>,
    pending: impl AsyncFnOnce(&str) -> Result<Option<T>, Error>,
    render: impl FnOnce(String, String, T) -> String,
    ask_for_a_new: &str,
) -> ApiResult {
    let (csrf, new) = match csrf_token(state, &req) {
        Ok(t) => t,
        Err(e) => return Ok(error_page(state, e)),
    };
    let q: TokenQuery = match params(state, req).await {
        Ok(q) => q,
        Err(e) => return Ok(error_page(state, e)),
    };
    let token = q.token.unwrap_or_default();
    let found = match pending(&token).await {
        Ok(Some(found)) => found,
        Ok(None) => return invalid(state, ask_for_a_new),
        Err(e) => return Ok(error_page(state, e.into())),
    };
    let html = render(csrf.clone(), token, found);
    Ok(with_csrf(
        state,
        pages::html_response(StatusCode::OK, html),
        &csrf,
        new,
    ))
}

/// The page of a link that is unknown, spent or expired (400).
pub(super) fn invalid(state: &AppState, ask_for_a_new: &str) -> ApiResult {
    Ok(pages::html_response(
        StatusCode::BAD_REQUEST,
        pages::error(
            &state.browser.branding,
            &ErrorView {
                title: "This link does not work".into(),
                message: format!("It is invalid, expired or already used. {ask_for_a_new}"),
                error_code: Some("invalid_grant".into()),
            },
        ),
    ))
}
