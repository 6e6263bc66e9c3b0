//! Browser sign-in (docs/authorize.md): `/oauth/authorize`, the sign-in and consent pages,
//! `/oauth/userinfo`, RP-initiated logout `/oauth/logout`, and the consents of
//! `/users/me/consents`. The rules live in `domain::authorize`; this file turns its outcomes
//! into redirects, form posts and pages, and owns the cookies (the browser session and the
//! forms' CSRF token).

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::auth::{cookie, principal};
use super::pages::{self, ConsentView, ErrorView, FormPostView, LogoutConfirmView, ScopeView};
use super::state::AppState;
use super::{empty, json, read_body, ApiError, ApiResult};
use crate::domain::authorize::{
    Authorize, AuthorizeParams, LogoutOutcome, LogoutParams, Outcome, ResponseMode,
};
use crate::domain::device::UserCode;
use crate::domain::ids;

/// The browser session's cookie over HTTPS (RFC 6265bis §4.1.3.2: `Secure`, `Path=/`, no
/// `Domain`) and over plain HTTP (local use).
const SESSION_COOKIE_SECURE: &str = "__Host-tokend_session";
const SESSION_COOKIE_PLAIN: &str = "tokend_session";
/// The forms' CSRF cookie (double submit: the hidden `csrf_token` field must equal it).
const FORM_CSRF_COOKIE_SECURE: &str = "__Host-tokend_form";
const FORM_CSRF_COOKIE_PLAIN: &str = "tokend_form";

pub(super) fn session_cookie_name(state: &AppState) -> &'static str {
    if state.browser.secure {
        SESSION_COOKIE_SECURE
    } else {
        SESSION_COOKIE_PLAIN
    }
}

fn csrf_cookie_name(state: &AppState) -> &'static str {
    if state.browser.secure {
        FORM_CSRF_COOKIE_SECURE
    } else {
        FORM_CSRF_COOKIE_PLAIN
    }
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Path=/, Secure over HTTPS.
fn set_cookie(state: &AppState, name: &str, value: &str, max_age: u64) -> Option<HeaderValue> {
    let secure = if state.browser.secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax{secure}"
    ))
    .ok()
}

/// The query string or the form body of a request, decoded into `T` (an unreadable one as
/// empty, so that the domain names what is missing).
pub(super) async fn params<T: for<'de> Deserialize<'de> + Default>(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    if req.method() == Method::POST {
        let form = read_body(req, state.body_limit).await?;
        serde_urlencoded::from_bytes(&form)
            .map_err(|e| ApiError::InvalidRequest(format!("invalid form body: {e}")))
    } else {
        let q = req.uri().query().unwrap_or("");
        serde_urlencoded::from_str(q)
            .map_err(|e| ApiError::InvalidRequest(format!("invalid query: {e}")))
    }
}

/// A page for an error met while serving a page (never JSON to a person).
pub(crate) fn error_page(state: &AppState, e: ApiError) -> Response<Full<Bytes>> {
    let (status, code) = e.parts();
    let (title, message) = match &e {
        ApiError::TooManyRequests { retry_after } => (
            "Too many attempts".to_string(),
            format!("Please wait {retry_after} seconds and try again."),
        ),
        ApiError::Unavailable(_) => (
            "Temporarily unavailable".to_string(),
            "This page is unavailable for a moment. Please try again shortly.".to_string(),
        ),
        ApiError::Internal(cause) => {
            tracing::error!(cause = %cause, "internal error on a page");
            (
                "Something went wrong".to_string(),
                "Please try again.".to_string(),
            )
        }
        other => ("Invalid request".to_string(), other.description()),
    };
    let html = pages::error(
        &state.browser.branding,
        &ErrorView {
            title,
            message,
            error_code: Some(code.to_string()),
        },
    );
    let mut res = pages::html_response(status, html);
    if let ApiError::TooManyRequests { retry_after } = e {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    }
    res
}

/// A `303 See Other` to `location` (RFC 9110 §15.4.4), not cached.
pub(super) fn see_other(location: &str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    res
}

/// `location` with `params` added to its query.
fn with_query(location: &str, params: &[(String, String)]) -> String {
    match url::Url::parse(location) {
        Ok(mut u) => {
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in params {
                    q.append_pair(k, v);
                }
            }
            u.to_string()
        }
        Err(_) => location.to_string(),
    }
}

/// What an [`Outcome`] looks like to the browser.
fn render(state: &AppState, outcome: Outcome) -> Response<Full<Bytes>> {
    match outcome {
        Outcome::ErrorPage {
            title,
            message,
            code,
        } => pages::html_response(
            StatusCode::BAD_REQUEST,
            pages::error(
                &state.browser.branding,
                &ErrorView {
                    title,
                    message,
                    error_code: code,
                },
            ),
        ),
        Outcome::ToClient {
            redirect_uri,
            mode: ResponseMode::Query,
            params,
        } => see_other(&with_query(&redirect_uri, &params)),
        Outcome::ToClient {
            redirect_uri,
            mode: ResponseMode::FormPost,
            params,
        } => pages::html_response(
            StatusCode::OK,
            pages::form_post(
                &state.browser.branding,
                &FormPostView {
                    action: redirect_uri,
                    fields: params,
                },
            ),
        ),
        // Relative references (RFC 9110 §10.2.2): the pages live beside this endpoint. The
        // request id is base64url, safe in a query as it is.
        Outcome::SignIn { request_id } => see_other(&format!("/login?req={request_id}")),
        Outcome::Consent { request_id } => see_other(&format!("/consent?req={request_id}")),
    }
}

/// The forms' CSRF token of this browser: its cookie, or a new one to set.
pub(super) fn csrf_token<B>(
    state: &AppState,
    req: &Request<B>,
) -> Result<(String, bool), ApiError> {
    match cookie(req, csrf_cookie_name(state)).filter(|c| c.len() == 43) {
        Some(c) => Ok((c, false)),
        None => Ok((ids::random_secret()?, true)),
    }
}

/// A page response that also sets the CSRF cookie when it was new.
pub(super) fn with_csrf(
    state: &AppState,
    mut res: Response<Full<Bytes>>,
    token: &str,
    new: bool,
) -> Response<Full<Bytes>> {
    if new {
        if let Some(v) = set_cookie(state, csrf_cookie_name(state), token, 86_400) {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    res
}

/// What a form post's checks read from the headers, taken before the body is read.
pub(super) struct FormHeaders {
    origin: Option<String>,
    csrf_cookie: Option<String>,
    pub(super) session: Option<String>,
}

impl FormHeaders {
    pub(super) fn of<B>(state: &AppState, req: &Request<B>) -> FormHeaders {
        FormHeaders {
            origin: req
                .headers()
                .get(header::ORIGIN)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim_end_matches('/').to_string()),
            csrf_cookie: cookie(req, csrf_cookie_name(state)),
            session: cookie(req, session_cookie_name(state)),
        }
    }

    /// The CSRF check of every form post: the `Origin`, when sent, is the issuer's, and the
    /// hidden `csrf_token` equals this browser's CSRF cookie. Under the pages'
    /// `Referrer-Policy: no-referrer` browsers send `Origin: null` for their own forms, so
    /// `null` is left to the token.
    pub(super) fn check_csrf(
        &self,
        state: &AppState,
        presented: Option<&str>,
    ) -> Result<(), ApiError> {
        let refused = || ApiError::Forbidden {
            code: "csrf_failed",
            description: "This form has expired. Go back, reload the page and try again.".into(),
        };
        if self
            .origin
            .as_deref()
            .is_some_and(|o| o != "null" && o != state.cookies.issuer_origin)
        {
            return Err(refused());
        }
        let expected = self.csrf_cookie.as_deref().ok_or_else(refused)?;
        let presented = presented.ok_or_else(refused)?;
        if ids::constant_time_eq(expected.as_bytes(), presented.as_bytes()) {
            Ok(())
        } else {
            Err(refused())
        }
    }
}

/// `GET|POST /oauth/authorize` (RFC 6749 §4.1.1).
pub(crate) async fn authorize(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let session = cookie(&req, session_cookie_name(state));
    // `resource` may be sent more than once (RFC 8707 §2).
    let p: AuthorizeParams = match params::<super::WithLists<AuthorizeParams>>(state, req).await {
        Ok(lists) => AuthorizeParams {
            resource: lists.resource,
            ..lists.form
        },
        Err(e) => return Ok(error_page(state, e)),
    };
    match state.authorize.authorize(&p, session.as_deref()).await {
        Ok(outcome) => Ok(render(state, outcome)),
        Err(e) => Ok(error_page(state, e.into())),
    }
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    req: Option<String>,
    /// The sign-in page only: the device code being approved (docs/device.md), to come back to.
    user_code: Option<String>,
}

/// The device page of a user code, built here from the validated code (never a path taken
/// from the request): where a sign-in for a device goes next.
fn device_page_of(user_code: &UserCode) -> String {
    format!("/device?user_code={}", user_code.display())
}

/// The query of a page. One that does not parse (a parameter given twice, say) is refused, and
/// the page answers the error page saying so, never a page that quietly lost where the
/// sign-in was going.
pub(crate) fn page_query<T: serde::de::DeserializeOwned, B>(
    req: &Request<B>,
) -> Result<T, ApiError> {
    serde_urlencoded::from_str(req.uri().query().unwrap_or(""))
        .map_err(|e| ApiError::InvalidRequest(format!("invalid query: {e}")))
}

/// `GET /login`: the sign-in page.
pub(crate) async fn login_page(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let q: PageQuery = match page_query(&req) {
        Ok(q) => q,
        Err(e) => return Ok(error_page(state, e)),
    };
    let request_id = q.req.filter(|r| !r.is_empty());
    let user_code = q.user_code.as_deref().and_then(UserCode::parse);
    let (token, new) = match csrf_token(state, &req) {
        Ok(t) => t,
        Err(e) => return Ok(error_page(state, e)),
    };
    let context = match state.authorize.sign_in_context(request_id.as_deref()).await {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(render(state, Authorize::expired_request())),
        Err(e) => return Ok(error_page(state, e.into())),
    };
    let html = pages::sign_in(
        &state.browser.branding,
        &pages::SignInView {
            csrf_token: token.clone(),
            request_id,
            username: context.login_hint.unwrap_or_default(),
            error: None,
            client_name: context.client_name,
            user_code: user_code.map(|c| c.display()),
            forgot_password: state.resets.available(),
        },
    );
    Ok(with_csrf(
        state,
        pages::html_response(StatusCode::OK, html),
        &token,
        new,
    ))
}

#[derive(Debug, Default, Deserialize)]
struct SignInForm {
    csrf_token: Option<String>,
    req: Option<String>,
    user_code: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// `POST /login`: the sign-in form.
pub(crate) async fn login_submit(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let h = FormHeaders::of(state, &req);
    let origin = super::origin(&req, &state.trusted_proxies);
    let form: SignInForm = match params(state, req).await {
        Ok(f) => f,
        Err(e) => return Ok(error_page(state, e)),
    };
    if let Err(e) = h.check_csrf(state, form.csrf_token.as_deref()) {
        return Ok(error_page(state, e));
    }
    let request_id = form.req.filter(|r| !r.is_empty());
    let user_code = form.user_code.as_deref().and_then(UserCode::parse);
    let username = form.username.unwrap_or_default();
    let password = form.password.unwrap_or_default();
    let again = |error: &str, status: StatusCode, client_name: Option<String>| {
        let token = h.csrf_cookie.clone().unwrap_or_default();
        let html = pages::sign_in(
            &state.browser.branding,
            &pages::SignInView {
                csrf_token: token,
                request_id: request_id.clone(),
                username: username.clone(),
                error: Some(error.to_string()),
                client_name,
                user_code: user_code.as_ref().map(UserCode::display),
                forgot_password: state.resets.available(),
            },
        );
        pages::html_response(status, html)
    };
    // The client's name again, for a page shown after a failure.
    let client_name = || async {
        state
            .authorize
            .sign_in_context(request_id.as_deref())
            .await
            .ok()
            .flatten()
            .and_then(|c| c.client_name)
    };
    if username.trim().is_empty() || password.is_empty() {
        return Ok(again(
            "Enter your username or email and your password.",
            StatusCode::BAD_REQUEST,
            client_name().await,
        ));
    }
    let result = state
        .authorize
        .sign_in(username.trim(), &password, request_id.as_deref(), &origin)
        .await;
    let signed = match result {
        Ok(r) => r,
        Err(crate::domain::Error::InvalidCredentials) => {
            return Ok(again(
                "Wrong username, email or password.",
                StatusCode::UNAUTHORIZED,
                client_name().await,
            ))
        }
        Err(crate::domain::Error::EmailNotVerified) => {
            return Ok(again(
                "Confirm your email address first: open the link in the mail we sent you.",
                StatusCode::FORBIDDEN,
                client_name().await,
            ))
        }
        Err(crate::domain::Error::RateLimited(secs)) => {
            let mut res = again(
                &format!("Too many attempts. Wait {secs} seconds and try again."),
                StatusCode::TOO_MANY_REQUESTS,
                client_name().await,
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return Ok(res);
        }
        Err(e) => return Ok(error_page(state, e.into())),
    };
    if signed.cookie.is_empty() {
        return Ok(render(
            state,
            signed.next.unwrap_or_else(Authorize::expired_request),
        ));
    }
    let mut res = match (signed.next, &user_code) {
        (Some(outcome), _) => render(state, outcome),
        // Signed in to approve a device: back to its page.
        (None, Some(code)) => see_other(&device_page_of(code)),
        (None, None) => pages::html_response(
            StatusCode::OK,
            pages::message(
                &state.browser.branding,
                &pages::MessageView {
                    title: "You are signed in".into(),
                    message: format!("Signed in as {}.", signed.username),
                },
            ),
        ),
    };
    if let Some(v) = set_cookie(
        state,
        session_cookie_name(state),
        &signed.cookie,
        state.authorize.browser_session_secs(),
    ) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(res)
}

/// `GET /consent`: what the client asks for, for the signed-in user.
pub(crate) async fn consent_page(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let q: PageQuery = match page_query(&req) {
        Ok(q) => q,
        Err(e) => return Ok(error_page(state, e)),
    };
    let Some(request_id) = q.req.filter(|r| !r.is_empty()) else {
        return Ok(render(state, Authorize::expired_request()));
    };
    let session = cookie(&req, session_cookie_name(state));
    let (token, new) = match csrf_token(state, &req) {
        Ok(t) => t,
        Err(e) => return Ok(error_page(state, e)),
    };
    let signed_in = match state.authorize.signed_in(session.as_deref()).await {
        Ok(s) => s,
        Err(e) => return Ok(error_page(state, e.into())),
    };
    let Some(s) = signed_in else {
        // Signed out in between: sign in again for the same request.
        return match state.authorize.resume(&request_id, None).await {
            Ok(o) => Ok(render(state, o)),
            Err(e) => Ok(error_page(state, e.into())),
        };
    };
    let context = match state.authorize.consent_context(&request_id, &s).await {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(render(state, Authorize::expired_request())),
        Err(e) => return Ok(error_page(state, e.into())),
    };
    let html = pages::consent(
        &state.browser.branding,
        &ConsentView {
            csrf_token: token.clone(),
            request_id,
            client_name: context.client_name,
            client_id: context.client_id,
            user_name: context.user_name,
            scopes: context
                .scopes
                .into_iter()
                .map(|(name, description)| ScopeView { name, description })
                .collect(),
        },
    );
    Ok(with_csrf(
        state,
        pages::html_response(StatusCode::OK, html),
        &token,
        new,
    ))
}

#[derive(Debug, Default, Deserialize)]
struct ConsentForm {
    csrf_token: Option<String>,
    req: Option<String>,
    decision: Option<String>,
}

/// `POST /consent`: allow or deny.
pub(crate) async fn consent_submit(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let h = FormHeaders::of(state, &req);
    let form: ConsentForm = match params(state, req).await {
        Ok(f) => f,
        Err(e) => return Ok(error_page(state, e)),
    };
    if let Err(e) = h.check_csrf(state, form.csrf_token.as_deref()) {
        return Ok(error_page(state, e));
    }
    let Some(request_id) = form.req.filter(|r| !r.is_empty()) else {
        return Ok(render(state, Authorize::expired_request()));
    };
    let allow = match form.decision.as_deref() {
        Some("allow") => true,
        Some("deny") => false,
        _ => {
            return Ok(error_page(
                state,
                ApiError::InvalidRequest("decision must be allow or deny".into()),
            ))
        }
    };
    let signed_in = match state.authorize.signed_in(h.session.as_deref()).await {
        Ok(s) => s,
        Err(e) => return Ok(error_page(state, e.into())),
    };
    let outcome = match signed_in {
        Some(s) => state.authorize.decide_consent(&request_id, &s, allow).await,
        None => state.authorize.resume(&request_id, None).await,
    };
    match outcome {
        Ok(o) => Ok(render(state, o)),
        Err(e) => Ok(error_page(state, e.into())),
    }
}

/// `GET|POST /oauth/userinfo` (OpenID Connect Core §5.3).
pub(crate) async fn userinfo(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    let claims = state.authorize.userinfo(&p).await?;
    let mut res = json(StatusCode::OK, &claims)?;
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

#[derive(Debug, Default, Deserialize)]
struct LogoutForm {
    id_token_hint: Option<String>,
    client_id: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
    csrf_token: Option<String>,
    decision: Option<String>,
}

/// `GET|POST /oauth/logout` (OpenID Connect RP-Initiated Logout 1.0).
pub(crate) async fn logout(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let h = FormHeaders::of(state, &req);
    let is_post = req.method() == Method::POST;
    let (token, new) = match csrf_token(state, &req) {
        Ok(t) => t,
        Err(e) => return Ok(error_page(state, e)),
    };
    let form: LogoutForm = match params(state, req).await {
        Ok(f) => f,
        Err(e) => return Ok(error_page(state, e)),
    };
    // The confirmation form's answer: CSRF-checked; "cancel" leaves the session alone.
    let confirmed = match form.decision.as_deref() {
        Some(d) if is_post => {
            if let Err(e) = h.check_csrf(state, form.csrf_token.as_deref()) {
                return Ok(error_page(state, e));
            }
            if d != "logout" {
                return Ok(pages::html_response(
                    StatusCode::OK,
                    pages::message(
                        &state.browser.branding,
                        &pages::MessageView {
                            title: "You are still signed in".into(),
                            message: "Nothing was changed. You can close this page.".into(),
                        },
                    ),
                ));
            }
            true
        }
        _ => false,
    };
    let p = LogoutParams {
        id_token_hint: form.id_token_hint.clone(),
        client_id: form.client_id.clone(),
        post_logout_redirect_uri: form.post_logout_redirect_uri.clone(),
        state: form.state.clone(),
    };
    let outcome = match state
        .authorize
        .logout(&p, h.session.as_deref(), confirmed)
        .await
    {
        Ok(o) => o,
        Err(e) => return Ok(error_page(state, e.into())),
    };
    let mut res = match outcome {
        LogoutOutcome::ErrorPage { title, message } => {
            return Ok(pages::html_response(
                StatusCode::BAD_REQUEST,
                pages::error(
                    &state.browser.branding,
                    &ErrorView {
                        title,
                        message,
                        error_code: Some("invalid_request".into()),
                    },
                ),
            ))
        }
        LogoutOutcome::Confirm { client_name } => {
            let hidden: Vec<(String, String)> = [
                ("id_token_hint", form.id_token_hint),
                ("client_id", form.client_id),
                ("post_logout_redirect_uri", form.post_logout_redirect_uri),
                ("state", form.state),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k.to_string(), v)))
            .collect();
            let html = pages::logout_confirm(
                &state.browser.branding,
                &LogoutConfirmView {
                    csrf_token: token.clone(),
                    hidden,
                    client_name,
                },
            );
            return Ok(with_csrf(
                state,
                pages::html_response(StatusCode::OK, html),
                &token,
                new,
            ));
        }
        LogoutOutcome::Done { redirect: Some(to) } => see_other(&to),
        LogoutOutcome::Done { redirect: None } => pages::html_response(
            StatusCode::OK,
            pages::logged_out(
                &state.browser.branding,
                &pages::LoggedOutView {
                    message: "You have been signed out.".into(),
                },
            ),
        ),
    };
    if let Some(v) = set_cookie(state, session_cookie_name(state), "", 0) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(res)
}

/// One consent as `GET /users/me/consents` lists it.
#[derive(Serialize)]
struct ConsentItem {
    client_id: String,
    scopes: Vec<String>,
    /// Unix seconds.
    granted_at: i64,
    updated_at: i64,
}

/// `GET /users/me/consents`.
pub(crate) async fn list_consents(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    let list = state.authorize.consents(&p).await?;
    let items: Vec<ConsentItem> = list
        .into_iter()
        .map(|c| ConsentItem {
            client_id: c.client_id,
            scopes: c.scopes,
            granted_at: c.granted_at.div_euclid(1000),
            updated_at: c.updated_at.div_euclid(1000),
        })
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "consents": items }))
}

/// `DELETE /users/me/consents/{client_id}`: withdraws the consent and ends that client's
/// sessions of the user.
pub(crate) async fn withdraw_consent(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    let raw = req
        .uri()
        .path()
        .strip_prefix("/users/me/consents/")
        .ok_or(ApiError::NotFound)?;
    let client_id = percent_decode(raw).ok_or(ApiError::NotFound)?;
    state.authorize.withdraw_consent(&p, &client_id).await?;
    empty(StatusCode::NO_CONTENT)
}

/// Decodes `%XX` escapes of a path segment (RFC 3986 §2.1); `None` if malformed or not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
