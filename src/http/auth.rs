//! The seed's `/auth/*` surface: register, login, refresh, logout, verify.

use http::{header, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::state::AppState;
use super::{empty, json, json_no_store, proof_header, read_json, ApiError, ApiResult};
use crate::domain::accounts::{Principal, TokenPair};
use crate::domain::dpop::Target;
use crate::domain::ids;
use crate::domain::sessions::Presented;

/// The refresh-token cookie of browser mode (`TOKEND_REFRESH_COOKIE=on`) when the issuer is
/// `http`; `Path=/auth`.
pub(crate) const REFRESH_COOKIE: &str = "tokend_refresh";
/// The double-submit CSRF cookie of browser mode, echoed in `X-CSRF-Token`, when the issuer
/// is `http`.
pub(crate) const CSRF_COOKIE: &str = "tokend_csrf";
/// The same two when the issuer is `https`: the `__Host-` prefix holds the browser to a
/// cookie set by this host itself, over HTTPS, for `Path=/` (RFC 6265bis §4.1.3.2), so a
/// sibling host cannot plant or shadow one.
const REFRESH_COOKIE_HOST: &str = "__Host-tokend_refresh";
const CSRF_COOKIE_HOST: &str = "__Host-tokend_csrf";

/// The browser-mode cookies of this server: names and path by the issuer's scheme.
struct Cookies {
    refresh: &'static str,
    csrf: &'static str,
    refresh_path: &'static str,
}

/// Behind an `http` issuer (local use).
const PLAIN: Cookies = Cookies {
    refresh: REFRESH_COOKIE,
    csrf: CSRF_COOKIE,
    refresh_path: "/auth",
};
/// Behind an `https` issuer.
const HOST: Cookies = Cookies {
    refresh: REFRESH_COOKIE_HOST,
    csrf: CSRF_COOKIE_HOST,
    refresh_path: "/",
};

impl Cookies {
    fn of(state: &AppState) -> &'static Cookies {
        if state.cookies.host_prefix {
            &HOST
        } else {
            &PLAIN
        }
    }

    /// The request's cookie `name` picks; behind an `https` issuer, one set before cookies had
    /// the prefix is still read (it is replaced at its next refresh).
    fn read<B>(&self, req: &Request<B>, name: fn(&Cookies) -> &'static str) -> Option<String> {
        cookie(req, name(self)).or_else(|| {
            (name(self) != name(&PLAIN))
                .then(|| cookie(req, name(&PLAIN)))
                .flatten()
        })
    }

    fn refresh_of<B>(&self, req: &Request<B>) -> Option<String> {
        self.read(req, |c| c.refresh)
    }

    fn csrf_of<B>(&self, req: &Request<B>) -> Option<String> {
        self.read(req, |c| c.csrf)
    }

    /// Sets the pair's cookies (empty values with `Max-Age=0` end them), and behind an `https`
    /// issuer ends the unprefixed ones.
    fn set(&self, res: &mut Response, refresh: &str, csrf: &str, max_age: u64) {
        set_cookie(
            res,
            &format!(
                "{}={refresh}; Path={}; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict",
                self.refresh, self.refresh_path
            ),
        );
        set_cookie(
            res,
            &format!(
                "{}={csrf}; Path=/; Max-Age={max_age}; Secure; SameSite=Strict",
                self.csrf
            ),
        );
        if self.refresh != PLAIN.refresh {
            PLAIN.set(res, "", "", 0);
        }
    }

    /// Ends the pair's cookies.
    fn clear(&self, res: &mut Response) {
        self.set(res, "", "", 0);
    }
}

type Response = http::Response<http_body_util::Full<bytes::Bytes>>;

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

/// Authenticates the request's access token: `Authorization: Bearer <token>`, or
/// `Authorization: DPoP <token>` with a `DPoP` proof for this request (RFC 9449 §7.1).
pub(crate) async fn principal<B>(
    state: &AppState,
    req: &Request<B>,
) -> Result<Principal, ApiError> {
    let (scheme, token) = tokend_token_shape::bearer::scheme_from_headers(req.headers())
        .map_err(super::error::bearer_refusal)?;
    let proof = proof_header(req);
    let presented = Presented {
        scheme,
        token,
        proof: &proof,
        target: Target {
            method: req.method().as_str(),
            path: req.uri().path(),
        },
    };
    Ok(state.sessions.authenticate_request(&presented).await?)
}

pub(crate) async fn register(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let body: RegisterBody = read_json(req, state.body_limit).await?;
    let user = state
        .accounts
        .register(&body.username, &body.email, &body.password)
        .await?;
    json(StatusCode::CREATED, &user)
}

/// `POST /auth/login`; a `DPoP` proof binds the pair to its key (docs/dpop.md).
pub(crate) async fn login(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let origin = super::origin(&req, &state.trusted_proxies);
    let proof = proof_header(&req);
    let body: LoginBody = read_json(req, state.body_limit).await?;
    let pair = state
        .accounts
        .login(&body.email, &body.password, &origin, &proof)
        .await?;
    respond_with_pair(state, pair)
}

/// Answers a token pair; in cookie mode the refresh token goes into an `HttpOnly` cookie
/// instead of the body, with a fresh CSRF cookie beside it.
fn respond_with_pair(state: &AppState, pair: TokenPair) -> ApiResult {
    if !state.cookies.enabled {
        return json_no_store(StatusCode::OK, &pair);
    }
    let csrf = ids::random_id()?;
    let max_age = state.cookies.max_age_secs;
    let cookies = Cookies::of(state);
    let mut res = json_no_store(
        StatusCode::OK,
        &serde_json::json!({
            "access_token": pair.access_token,
            "token_type": pair.token_type,
            "expires_in": pair.expires_in,
            "csrf_token": csrf,
        }),
    )?;
    cookies.set(&mut res, &pair.refresh_token, &csrf, max_age);
    Ok(res)
}

fn set_cookie(res: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The value of cookie `name`.
pub(crate) fn cookie<B>(req: &Request<B>, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

/// The CSRF defence of cookie-authenticated requests: the `Origin` (when sent) must be the
/// issuer's or an allowed CORS origin, and `X-CSRF-Token` must equal the CSRF cookie
/// (double submit). A cross-site page can neither read the cookie nor set the header.
fn check_csrf<B>(state: &AppState, req: &Request<B>) -> Result<(), ApiError> {
    let forbidden = |why: &str| ApiError::Forbidden {
        code: "csrf_failed",
        description: why.to_string(),
    };
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
        let allowed = origin == state.cookies.issuer_origin
            || state.cookies.allowed_origins.iter().any(|o| o == origin);
        if !allowed {
            return Err(forbidden("cross-site request refused"));
        }
    }
    // An empty value is a missing one: a cookie planted empty (from a sibling host) and an
    // empty header must not pass as a match.
    let cookie = Cookies::of(state)
        .csrf_of(req)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| forbidden("missing CSRF cookie"))?;
    let header = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| forbidden("missing X-CSRF-Token header"))?;
    if ids::constant_time_eq(cookie.as_bytes(), header.as_bytes()) {
        Ok(())
    } else {
        Err(forbidden("X-CSRF-Token does not match"))
    }
}

/// The refresh token of a request: the Bearer header (or `DPoP`, the scheme of a bound
/// family's token), or in cookie mode the cookie (after the CSRF check).
fn refresh_token_of<B>(state: &AppState, req: &Request<B>) -> Result<String, ApiError> {
    if req.headers().contains_key(header::AUTHORIZATION) || !state.cookies.enabled {
        return tokend_token_shape::bearer::scheme_from_headers(req.headers())
            .map(|(_, token)| token.to_string())
            .map_err(super::error::bearer_refusal);
    }
    let token = Cookies::of(state)
        .refresh_of(req)
        .ok_or_else(|| ApiError::InvalidToken("missing refresh token".into()))?;
    check_csrf(state, req)?;
    Ok(token)
}

/// `POST /auth/token/refresh`; a `DPoP` proof binds the new access token, and a bound family
/// needs one (docs/dpop.md).
pub(crate) async fn refresh(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let token = refresh_token_of(state, &req)?;
    let proof = proof_header(&req);
    let target = Target {
        method: req.method().as_str(),
        path: req.uri().path(),
    };
    let pair = state.sessions.refresh_seed(&token, &proof, target).await?;
    respond_with_pair(state, pair)
}

pub(crate) async fn logout(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let cookie_logout = state.cookies.enabled
        && !req.headers().contains_key(header::AUTHORIZATION)
        && Cookies::of(state).refresh_of(&req).is_some();
    if cookie_logout {
        let token = refresh_token_of(state, &req)?;
        state.sessions.revoke_refresh_token(&token).await?;
    } else {
        let p = principal(state, &req).await?;
        state.sessions.logout(&p).await?;
    }
    let mut res = empty(StatusCode::NO_CONTENT)?;
    if state.cookies.enabled {
        Cookies::of(state).clear(&mut res);
    }
    Ok(res)
}

pub(crate) async fn logout_all(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    state.sessions.logout_all(&p).await?;
    empty(StatusCode::NO_CONTENT)
}

pub(crate) async fn verify(state: &AppState, req: Request<Incoming>) -> ApiResult {
    let p = principal(state, &req).await?;
    json_no_store(
        StatusCode::OK,
        &serde_json::json!({ "active": true, "claims": p.claims }),
    )
}
