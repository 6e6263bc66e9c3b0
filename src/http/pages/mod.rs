//! The hosted pages: sign-in, consent, errors, sign-out, the form-post page and the device
//! pages (code entry, approval, done), rendered on the server from the templates in
//! `templates/` (compiled into the binary, HTML-escaped), with one stylesheet and one script of
//! tokend's own ([`assets`]). This module only renders; the handlers of the flows choose the
//! page, its data and its status.
//!
//! Every page is served by [`html_response`] with a Content Security Policy that allows no
//! inline script or style and no framing: the pages load only tokend's own stylesheet and
//! script, and images from tokend or over HTTPS (the logo) (docs/api.md, "Hosted pages").

// Until the handlers of the sign-in, consent and logout flows call these, only the tests do.
#![cfg_attr(not(test), allow(dead_code))]

pub mod assets;

use askama::Template;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The `Content-Security-Policy` of every page. No `form-action`: the form-post page and the
/// redirects after a form submission go to the clients' redirect URIs.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; \
     script-src 'self'; img-src 'self' https: data:; base-uri 'none'; frame-ancestors 'none'";

/// What every page says about the product around it.
#[derive(Debug, Clone)]
pub(crate) struct Branding {
    /// The product name: heads every page and ends every title.
    pub display_name: String,
    /// A logo shown next to the name (decorative: `alt=""`, the name is beside it).
    pub logo_url: Option<String>,
}

/// The sign-in form, posted to `/login`.
#[derive(Debug, Clone, Default)]
pub(crate) struct SignInView {
    pub csrf_token: String,
    /// The pending authorization request, sent back as the hidden field `req`.
    pub request_id: Option<String>,
    /// The username field's value (a `login_hint`, or what was typed before an error).
    pub username: String,
    /// One line saying what went wrong.
    pub error: Option<String>,
    /// "to continue to {client_name}".
    pub client_name: Option<String>,
    /// The user code of a device being approved (`XXXX-XXXX`), sent back as the hidden field
    /// `user_code`: after signing in, the browser returns to its device page (docs/device.md).
    pub user_code: Option<String>,
    /// Whether the page links to "Forgot your password?" (only when reset mails can be sent).
    pub forgot_password: bool,
}

/// The device page's code entry form (RFC 8628 §3.3), submitted with `GET /device`: the code
/// travels in the query, as in `verification_uri_complete`, so the form needs no CSRF token.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeviceEntryView {
    /// What the field holds (what was typed before an error).
    pub code: String,
    /// One line saying what went wrong.
    pub error: Option<String>,
}

/// The device approval form, posted to `/device` with `decision=approve` or `decision=deny`.
#[derive(Debug, Clone)]
pub(crate) struct DeviceConfirmView {
    pub csrf_token: String,
    /// `XXXX-XXXX`: shown for the user to compare with the device, and sent back as the
    /// hidden field `user_code`.
    pub user_code: String,
    pub client_name: String,
    pub client_id: String,
    /// Who is signed in.
    pub user_name: String,
    pub scopes: Vec<ScopeView>,
}

/// The page after the decision.
#[derive(Debug, Clone)]
pub(crate) struct DeviceDoneView {
    pub approved: bool,
    pub client_name: String,
}

/// One scope on the consent page.
#[derive(Debug, Clone)]
pub(crate) struct ScopeView {
    pub name: String,
    /// What the scope lets the client do, in words a user understands.
    pub description: String,
}

/// The consent form, posted to `/consent` with `decision=allow` or `decision=deny`.
#[derive(Debug, Clone)]
pub(crate) struct ConsentView {
    pub csrf_token: String,
    /// The pending authorization request, the hidden field `req`.
    pub request_id: String,
    pub client_name: String,
    pub client_id: String,
    /// Who is signed in.
    pub user_name: String,
    pub scopes: Vec<ScopeView>,
}

/// A page that ends a flow with an error that must not go back to the client (an unknown
/// client, a redirect URI that is not registered): it says what happened and that the page can
/// be closed, and links nowhere.
#[derive(Debug, Clone)]
pub(crate) struct ErrorView {
    pub title: String,
    pub message: String,
    /// The OAuth error code, for someone reporting the problem.
    pub error_code: Option<String>,
}

/// The page after signing out.
#[derive(Debug, Clone)]
pub(crate) struct LoggedOutView {
    pub message: String,
}

/// A page with a title and one message ("Signed in as alice").
#[derive(Debug, Clone)]
pub(crate) struct MessageView {
    pub title: String,
    pub message: String,
}

/// "Sign out of {display name}?", posted to `/oauth/logout` with `decision=logout` or
/// `decision=cancel`.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogoutConfirmView {
    pub csrf_token: String,
    /// The logout request's parameters, carried through as hidden fields.
    pub hidden: Vec<(String, String)>,
    /// The client that asked for the sign-out, when known.
    pub client_name: Option<String>,
}

/// An authorization response posted to the client's redirect URI as a form (the form post
/// response mode): submitted by [`assets::form_post_script_path`] as soon as the page loads, or
/// by its "Continue" button without scripts. It carries no CSRF token of tokend's: the form
/// goes to the client.
#[derive(Debug, Clone)]
pub(crate) struct FormPostView {
    /// The redirect URI.
    pub action: String,
    /// The response parameters (`code`, `state`, `iss`, ...).
    pub fields: Vec<(String, String)>,
}

/// "Confirm your email address": the page a verification link opens (docs/mail.md). Its form
/// posts the token to `/auth/verify-email/confirm`; opening the page spends nothing.
#[derive(Debug, Clone)]
pub(crate) struct VerifyEmailView {
    pub csrf_token: String,
    /// The link's token, the hidden field `token`.
    pub token: String,
    /// The address the link confirms.
    pub email: String,
    /// Whether the link confirms an email change (the page says the address replaces the
    /// account's) rather than a verification.
    pub change: bool,
}

/// "Choose a new password": the page a password reset link opens (docs/mail.md, "Password
/// reset"). Its form posts the token and the new password, twice, to
/// `/auth/password/reset/confirm`; opening the page spends nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResetPasswordView {
    pub csrf_token: String,
    /// The link's token, the hidden field `token`.
    pub token: String,
    /// The account's address, when known.
    pub email: Option<String>,
    /// One line saying what went wrong (the password policy, two passwords that differ).
    pub error: Option<String>,
}

/// "Reset your password": the page that asks for the address a reset link goes to
/// (docs/mail.md, "Password reset"), linked from the sign-in page. Its form posts to
/// `/auth/password/forgot/send`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ForgotPasswordView {
    pub csrf_token: String,
    /// The field's value (what was typed before an error).
    pub email: String,
    /// One line saying what went wrong.
    pub error: Option<String>,
}

/// What the base layout (`templates/base.html`) shows around every page.
struct Layout<'a> {
    /// The page's part of the title; the layout adds " · {display_name}".
    title: &'a str,
    branding: &'a Branding,
    stylesheet: &'static str,
    script: Option<&'static str>,
}

impl<'a> Layout<'a> {
    fn new(title: &'a str, branding: &'a Branding) -> Layout<'a> {
        Layout {
            title,
            branding,
            stylesheet: assets::stylesheet_path(),
            script: None,
        }
    }
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage<'a> {
    layout: Layout<'a>,
    view: &'a SignInView,
}

#[derive(Template)]
#[template(path = "consent.html")]
struct ConsentPage<'a> {
    layout: Layout<'a>,
    view: &'a ConsentView,
}

#[derive(Template)]
#[template(path = "device.html")]
struct DeviceEntryPage<'a> {
    layout: Layout<'a>,
    view: &'a DeviceEntryView,
}

#[derive(Template)]
#[template(path = "device_confirm.html")]
struct DeviceConfirmPage<'a> {
    layout: Layout<'a>,
    view: &'a DeviceConfirmView,
}

#[derive(Template)]
#[template(path = "device_done.html")]
struct DeviceDonePage<'a> {
    layout: Layout<'a>,
    view: &'a DeviceDoneView,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    layout: Layout<'a>,
    view: &'a ErrorView,
}

#[derive(Template)]
#[template(path = "logged_out.html")]
struct LoggedOutPage<'a> {
    layout: Layout<'a>,
    view: &'a LoggedOutView,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    layout: Layout<'a>,
    view: &'a MessageView,
}

#[derive(Template)]
#[template(path = "logout_confirm.html")]
struct LogoutConfirmPage<'a> {
    layout: Layout<'a>,
    view: &'a LogoutConfirmView,
}

#[derive(Template)]
#[template(path = "verify_email.html")]
struct VerifyEmailPage<'a> {
    layout: Layout<'a>,
    view: &'a VerifyEmailView,
}

#[derive(Template)]
#[template(path = "reset_password.html")]
struct ResetPasswordPage<'a> {
    layout: Layout<'a>,
    view: &'a ResetPasswordView,
}

#[derive(Template)]
#[template(path = "forgot_password.html")]
struct ForgotPasswordPage<'a> {
    layout: Layout<'a>,
    view: &'a ForgotPasswordView,
}

#[derive(Template)]
#[template(path = "form_post.html")]
struct FormPostPage<'a> {
    layout: Layout<'a>,
    view: &'a FormPostView,
}

/// Served should a template ever fail to render (only a failing `Display` can make it fail;
/// every value here is a string).
const FALLBACK: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Error</title></head><body><main><h1>Something went wrong</h1>\
<p role=\"alert\">This page could not be shown. You can close this page.</p></main></body></html>";

fn render(page: &impl Template) -> String {
    page.render().unwrap_or_else(|e| {
        tracing::error!(error = %e, "rendering a page failed");
        FALLBACK.to_string()
    })
}

/// The sign-in page.
pub(crate) fn sign_in(branding: &Branding, view: &SignInView) -> String {
    render(&SignInPage {
        layout: Layout::new("Sign in", branding),
        view,
    })
}

/// The consent page.
pub(crate) fn consent(branding: &Branding, view: &ConsentView) -> String {
    render(&ConsentPage {
        layout: Layout::new("Allow access", branding),
        view,
    })
}

/// The device page's code entry form.
pub(crate) fn device_entry(branding: &Branding, view: &DeviceEntryView) -> String {
    render(&DeviceEntryPage {
        layout: Layout::new("Connect a device", branding),
        view,
    })
}

/// The device approval page.
pub(crate) fn device_confirm(branding: &Branding, view: &DeviceConfirmView) -> String {
    render(&DeviceConfirmPage {
        layout: Layout::new("Connect a device", branding),
        view,
    })
}

/// The page after approving or denying a device.
pub(crate) fn device_done(branding: &Branding, view: &DeviceDoneView) -> String {
    let title = if view.approved {
        "Device connected"
    } else {
        "Request denied"
    };
    render(&DeviceDonePage {
        layout: Layout::new(title, branding),
        view,
    })
}

/// The error page.
pub(crate) fn error(branding: &Branding, view: &ErrorView) -> String {
    render(&ErrorPage {
        layout: Layout::new(&view.title, branding),
        view,
    })
}

/// The signed-out page.
pub(crate) fn logged_out(branding: &Branding, view: &LoggedOutView) -> String {
    render(&LoggedOutPage {
        layout: Layout::new("Signed out", branding),
        view,
    })
}

/// A page with a title and a message.
pub(crate) fn message(branding: &Branding, view: &MessageView) -> String {
    render(&MessagePage {
        layout: Layout::new(&view.title, branding),
        view,
    })
}

/// The sign-out confirmation.
pub(crate) fn logout_confirm(branding: &Branding, view: &LogoutConfirmView) -> String {
    render(&LogoutConfirmPage {
        layout: Layout::new("Sign out", branding),
        view,
    })
}

/// The email confirmation page.
pub(crate) fn verify_email(branding: &Branding, view: &VerifyEmailView) -> String {
    render(&VerifyEmailPage {
        layout: Layout::new("Confirm your email address", branding),
        view,
    })
}

/// The password reset page.
pub(crate) fn reset_password(branding: &Branding, view: &ResetPasswordView) -> String {
    render(&ResetPasswordPage {
        layout: Layout::new("Choose a new password", branding),
        view,
    })
}

/// The page that asks for the address of a password reset.
pub(crate) fn forgot_password(branding: &Branding, view: &ForgotPasswordView) -> String {
    render(&ForgotPasswordPage {
        layout: Layout::new("Reset your password", branding),
        view,
    })
}

/// The form-post page, with its script.
pub(crate) fn form_post(branding: &Branding, view: &FormPostView) -> String {
    render(&FormPostPage {
        layout: Layout {
            script: Some(assets::form_post_script_path()),
            ..Layout::new("Continue", branding)
        },
        view,
    })
}

/// A page as a response, with the headers every page carries: never cached, never framed, never
/// sniffed, no referrer, and the [`CONTENT_SECURITY_POLICY`].
pub(crate) fn html_response(status: StatusCode, html: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(html)));
    *res.status_mut() = status;
    let h = res.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}

#[cfg(test)]
mod tests;
