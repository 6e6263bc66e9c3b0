//! The hand-written router: a `tower::Service` matching (method, path) to handler functions,
//! with JSON 404 and 405-with-`Allow`, a per-request timeout, and the headers every response
//! carries.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use super::state::AppState;
use super::{admin, auth, oauth, openapi, ops, users, wellknown, ApiError, ApiResult};

/// Every route tokend serves. The template labels logs and metrics (never the raw path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Register,
    Login,
    Refresh,
    Logout,
    LogoutAll,
    Verify,
    Me,
    MePassword,
    Jwks,
    AuthorizationServer,
    OpenIdConfiguration,
    OAuthToken,
    OAuthRevoke,
    OAuthIntrospect,
    OpenApi,
    Healthz,
    Readyz,
    Metrics,
    AdminUsers,
    AdminUserRoles,
    AdminUserRevokeSessions,
    NotFound,
}

impl Route {
    /// Every route, for documentation checks.
    pub const ALL: &'static [Route] = &[
        Route::Register,
        Route::Login,
        Route::Refresh,
        Route::Logout,
        Route::LogoutAll,
        Route::Verify,
        Route::Me,
        Route::MePassword,
        Route::Jwks,
        Route::AuthorizationServer,
        Route::OpenIdConfiguration,
        Route::OAuthToken,
        Route::OAuthRevoke,
        Route::OAuthIntrospect,
        Route::OpenApi,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::AdminUsers,
        Route::AdminUserRoles,
        Route::AdminUserRevokeSessions,
    ];

    /// Finds the route of a path (methods are checked by [`Route::allows`]).
    pub fn resolve(path: &str) -> Route {
        match path {
            "/auth/register" => Route::Register,
            "/auth/login" => Route::Login,
            "/auth/token/refresh" => Route::Refresh,
            "/auth/logout" => Route::Logout,
            "/auth/logout/all" => Route::LogoutAll,
            "/auth/verify" => Route::Verify,
            "/users/me" => Route::Me,
            "/users/me/password" => Route::MePassword,
            "/.well-known/jwks.json" => Route::Jwks,
            "/.well-known/oauth-authorization-server" => Route::AuthorizationServer,
            "/.well-known/openid-configuration" => Route::OpenIdConfiguration,
            "/oauth/token" => Route::OAuthToken,
            "/oauth/revoke" => Route::OAuthRevoke,
            "/oauth/introspect" => Route::OAuthIntrospect,
            "/openapi.json" => Route::OpenApi,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            "/admin/users" => Route::AdminUsers,
            p if admin::user_id_of(p, "/roles").is_some() => Route::AdminUserRoles,
            p if admin::user_id_of(p, "/revoke-sessions").is_some() => {
                Route::AdminUserRevokeSessions
            }
            _ => Route::NotFound,
        }
    }

    pub fn template(self) -> &'static str {
        match self {
            Route::Register => "/auth/register",
            Route::Login => "/auth/login",
            Route::Refresh => "/auth/token/refresh",
            Route::Logout => "/auth/logout",
            Route::LogoutAll => "/auth/logout/all",
            Route::Verify => "/auth/verify",
            Route::Me => "/users/me",
            Route::MePassword => "/users/me/password",
            Route::Jwks => "/.well-known/jwks.json",
            Route::AuthorizationServer => "/.well-known/oauth-authorization-server",
            Route::OpenIdConfiguration => "/.well-known/openid-configuration",
            Route::OAuthToken => "/oauth/token",
            Route::OAuthRevoke => "/oauth/revoke",
            Route::OAuthIntrospect => "/oauth/introspect",
            Route::OpenApi => "/openapi.json",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::AdminUsers => "/admin/users",
            Route::AdminUserRoles => "/admin/users/{id}/roles",
            Route::AdminUserRevokeSessions => "/admin/users/{id}/revoke-sessions",
            Route::NotFound => "unmatched",
        }
    }

    /// The `Allow` header value of the route.
    pub fn allow(self) -> &'static str {
        match self {
            Route::Register | Route::Login | Route::Refresh | Route::Logout | Route::LogoutAll => {
                "POST"
            }
            Route::OAuthToken | Route::OAuthRevoke | Route::OAuthIntrospect => "POST",
            Route::AuthorizationServer | Route::OpenIdConfiguration | Route::OpenApi => "GET, HEAD",
            Route::Me => "GET, HEAD, PUT",
            Route::MePassword => "PUT",
            Route::Verify | Route::Jwks | Route::Healthz | Route::Readyz | Route::Metrics => {
                "GET, HEAD"
            }
            Route::AdminUsers => "GET, HEAD",
            Route::AdminUserRoles => "PUT",
            Route::AdminUserRevokeSessions => "POST",
            Route::NotFound => "",
        }
    }

    /// Operational routes (`/metrics`, `/healthz`, `/readyz`) that `TOKEND_METRICS_LISTEN` moves
    /// to their own listener.
    pub fn is_ops(self) -> bool {
        matches!(self, Route::Metrics | Route::Healthz | Route::Readyz)
    }

    /// Routes under the per-IP rate limit (SPEC §9).
    pub fn is_rate_limited(self) -> bool {
        matches!(
            self,
            Route::Login | Route::Register | Route::Refresh | Route::OAuthToken
        )
    }

    /// Routes answered from memory, never waiting on a store, a body or a lock: the documents
    /// and `/healthz`. They need no request timeout.
    pub fn is_immediate(self) -> bool {
        matches!(
            self,
            Route::Jwks
                | Route::AuthorizationServer
                | Route::OpenIdConfiguration
                | Route::OpenApi
                | Route::Healthz
        )
    }

    pub fn allows(self, method: &Method) -> bool {
        let name = method.as_str();
        self.allow().split(", ").any(|m| m == name)
    }
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Everything (no `TOKEND_METRICS_LISTEN`).
    All,
    /// Everything but the operational routes.
    Public,
    /// Only `/metrics`, `/healthz`, `/readyz`.
    Ops,
}

impl Surface {
    fn serves(self, route: Route) -> bool {
        match self {
            Surface::All => true,
            Surface::Public => !route.is_ops(),
            Surface::Ops => route.is_ops(),
        }
    }
}

/// The router service.
#[derive(Clone)]
pub struct Router {
    state: Arc<AppState>,
    surface: Surface,
}

impl Router {
    pub fn new(state: Arc<AppState>) -> Self {
        Router {
            state,
            surface: Surface::All,
        }
    }

    pub fn with_surface(state: Arc<AppState>, surface: Surface) -> Self {
        Router { state, surface }
    }
}

async fn dispatch(state: Arc<AppState>, route: Route, req: Request<Incoming>) -> ApiResult {
    if route == Route::NotFound {
        return Err(ApiError::NotFound);
    }
    if !route.allows(req.method()) {
        return Err(ApiError::MethodNotAllowed {
            allow: route.allow(),
        });
    }
    if route.is_rate_limited() {
        if let Some(ip) = super::client_ip(&req, &state.trusted_proxies) {
            state.limits.limit_ip(ip).await?;
        }
    }
    let put = req.method() == Method::PUT;
    match route {
        Route::Register => auth::register(&state, req).await,
        Route::Login => auth::login(&state, req).await,
        Route::Refresh => auth::refresh(&state, req).await,
        Route::Logout => auth::logout(&state, req).await,
        Route::LogoutAll => auth::logout_all(&state, req).await,
        Route::Verify => auth::verify(&state, req).await,
        Route::Me if put => users::update_me(&state, req).await,
        Route::Me => users::me(&state, req).await,
        Route::MePassword => users::change_password(&state, req).await,
        Route::Jwks
        | Route::AuthorizationServer
        | Route::OpenIdConfiguration
        | Route::OpenApi
        | Route::Healthz => answer_immediate(&state, route, &req),
        Route::OAuthToken => oauth::token(&state, req).await,
        Route::OAuthRevoke => oauth::revoke(&state, req).await,
        Route::OAuthIntrospect => oauth::introspect(&state, req).await,
        Route::Readyz => ops::readyz(&state, req).await,
        Route::AdminUsers => admin::list_users(&state, req).await,
        Route::AdminUserRoles => admin::set_roles(&state, req).await,
        Route::AdminUserRevokeSessions => admin::revoke_sessions(&state, req).await,
        Route::Metrics => ops::metrics(&state, req).await,
        Route::NotFound => Err(ApiError::NotFound),
    }
}

/// The routes of [`Route::is_immediate`], answered on the spot.
fn answer_immediate<B>(state: &AppState, route: Route, req: &Request<B>) -> ApiResult {
    match route {
        Route::Jwks => wellknown::jwks(state, req),
        Route::AuthorizationServer => wellknown::authorization_server(state, req),
        Route::OpenIdConfiguration => wellknown::openid_configuration(state, req),
        Route::OpenApi => openapi::openapi(state, req),
        Route::Healthz => ops::healthz(),
        _ => Err(ApiError::NotFound),
    }
}

/// The route a request asks for, as far as this surface serves it.
fn route_of<B>(surface: Surface, req: &Request<B>) -> Route {
    let route = Route::resolve(req.uri().path());
    if surface.serves(route) {
        route
    } else {
        Route::NotFound
    }
}

/// Routes, runs the handler under the request timeout, renders errors, adds common headers,
/// and counts the request by route template and status.
pub async fn handle(
    state: Arc<AppState>,
    surface: Surface,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let start = std::time::Instant::now();
    let route = route_of(surface, &req);
    let method = req.method().clone();
    let timeout = state.request_timeout;
    let metrics = state.metrics.clone();
    let outcome = tokio::time::timeout(timeout, dispatch(state, route, req)).await;
    let res = match outcome {
        Ok(res) => res,
        Err(_) => Err(ApiError::Unavailable("request timed out".into())),
    };
    finish(res, route, &method, start, &metrics)
}

/// What every answer gets: errors rendered, the common headers, no body for `HEAD`, and the
/// request counted by route template, method and status.
fn finish(
    outcome: ApiResult,
    route: Route,
    method: &Method,
    start: std::time::Instant,
    metrics: &crate::metrics::Metrics,
) -> Response<Full<Bytes>> {
    let mut res = outcome.unwrap_or_else(ApiError::into_response);
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if method == Method::HEAD {
        *res.body_mut() = Full::new(Bytes::new());
    }
    let status = res.status();
    let (method_index, method_label) = match *method {
        Method::GET => (0, "GET"),
        Method::HEAD => (1, "HEAD"),
        Method::POST => (2, "POST"),
        Method::PUT => (3, "PUT"),
        Method::DELETE => (4, "DELETE"),
        Method::OPTIONS => (5, "OPTIONS"),
        Method::PATCH => (6, "PATCH"),
        _ => (7, "other"),
    };
    let key = (route as u32) << 24 | method_index << 16 | u32::from(status.as_u16());
    metrics.observe_request(
        key,
        [route.template(), method_label, status.as_str()],
        start.elapsed().as_secs_f64(),
    );
    res.extensions_mut().insert(route);
    res
}

impl tower::Service<Request<Incoming>> for Router {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    /// Ready at once for the routes answered from memory; otherwise the boxed handler.
    type Future = futures_util::future::Either<
        std::future::Ready<Result<Self::Response, Infallible>>,
        Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        use futures_util::future::Either;
        let route = route_of(self.surface, &req);
        if route.is_immediate() && route.allows(req.method()) {
            // Nothing to wait for: no timer, no task-sized future to allocate.
            let start = std::time::Instant::now();
            let outcome = answer_immediate(&self.state, route, &req);
            let metrics = &self.state.metrics;
            let res = finish(outcome, route, req.method(), start, metrics);
            return Either::Left(std::future::ready(Ok(res)));
        }
        let state = self.state.clone();
        let surface = self.surface;
        Either::Right(Box::pin(
            async move { Ok(handle(state, surface, req).await) },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_templates_and_methods() {
        assert_eq!(Route::resolve("/auth/login"), Route::Login);
        assert_eq!(Route::resolve("/auth/login/"), Route::NotFound);
        assert_eq!(Route::resolve("/../etc/passwd"), Route::NotFound);
        assert!(Route::Login.allows(&Method::POST));
        assert!(!Route::Login.allows(&Method::GET));
        assert!(Route::Me.allows(&Method::PUT) && Route::Me.allows(&Method::GET));
        for r in Route::ALL {
            let path = r.template().replace("{id}", "0193a1b2-user");
            assert_eq!(Route::resolve(&path), *r);
        }
        assert_eq!(Route::resolve("/admin/users//roles"), Route::NotFound);
        assert_eq!(Route::resolve("/admin/users/../../roles"), Route::NotFound);
    }
}
