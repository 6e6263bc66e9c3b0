//! The router: a `tower::Service` dispatching a request to the handler its route declares in
//! the table (`routes.rs`), with JSON 404 and 405-with-`Allow`, the per-IP rate limit where the
//! table asks for it, and the headers every response carries. The route is resolved once per
//! request, by the stack's route layer, into a [`MatchedRoute`] in the request's extensions.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use super::routes::{self, AsyncHandler, Handler, RateLimit, Route, Surface, Timeout};
use super::state::AppState;
use super::{ApiError, ApiResult};

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Every route (no `TOKEND_METRICS_LISTEN`).
    All,
    /// The routes of [`Surface::Api`].
    Api,
    /// The routes of [`Surface::Ops`]: `/metrics`, `/healthz`, `/readyz`.
    Ops,
}

impl Listener {
    pub(crate) fn serves(self, surface: Surface) -> bool {
        match self {
            Listener::All => true,
            Listener::Api => surface == Surface::Api,
            Listener::Ops => surface == Surface::Ops,
        }
    }
}

/// The route of a request as far as its listener serves it (`None`: a 404), resolved once and
/// kept in the request's extensions for the trace and metrics layers and the router.
#[derive(Debug, Clone, Copy, Default)]
pub struct MatchedRoute(Option<&'static Route>);

impl MatchedRoute {
    /// The route of `path` on `listener`.
    pub fn resolve(listener: Listener, path: &str) -> MatchedRoute {
        MatchedRoute(routes::find(path).filter(|r| listener.serves(r.surface())))
    }

    /// The route of a request: the one the route layer put in its extensions, else resolved
    /// here.
    pub(crate) fn of<B>(req: &Request<B>, listener: Listener) -> MatchedRoute {
        match req.extensions().get::<MatchedRoute>() {
            Some(m) => *m,
            None => MatchedRoute::resolve(listener, req.uri().path()),
        }
    }

    /// The route of the table, or `None` when no route matched.
    pub fn route(self) -> Option<&'static Route> {
        self.0
    }

    /// The label of logs and metrics: the route's template, `unmatched` for a 404.
    pub(crate) fn template(self) -> &'static str {
        self.0.map_or("unmatched", Route::template)
    }

    /// Whether the route is answered from memory (logged at `debug`, no timer).
    pub(crate) fn served_from_memory(self) -> bool {
        self.0.is_some_and(Route::served_from_memory)
    }

    /// The timeout class: none for a 404, answered at once.
    pub(crate) fn timeout(self) -> Timeout {
        self.0.map_or(Timeout::None, Route::timeout)
    }

    /// The route's position in the table, `u8::MAX` for a 404: stands for the template in the
    /// metric handle cache.
    pub(crate) fn index(self) -> u8 {
        self.0.map_or(u8::MAX, Route::index)
    }
}

/// The router service.
#[derive(Clone)]
pub(crate) struct Router {
    state: Arc<AppState>,
    listener: Listener,
}

impl Router {
    pub(crate) fn new(state: Arc<AppState>, listener: Listener) -> Self {
        Router { state, listener }
    }

    pub(crate) fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    pub(crate) fn listener(&self) -> Listener {
        self.listener
    }
}

/// Runs a handler future, after the per-IP rate limit when the route has one. On a page
/// route a refusal of the limit is a page too (a person reads it).
async fn run(
    state: &AppState,
    rate_limit: RateLimit,
    page: bool,
    handler: AsyncHandler,
    req: Request<Incoming>,
) -> ApiResult {
    if rate_limit == RateLimit::PerIp {
        // A JSON request to a page route (an app confirming an address) gets JSON back.
        let page = page
            && !req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/json"));
        if let Some(ip) = super::client_ip(&req, &state.trusted_proxies) {
            match state.limits.limit_ip(ip).await {
                Ok(()) => {}
                Err(e) if page => return Ok(super::authorize::error_page(state, e.into())),
                Err(e) => return Err(e.into()),
            }
        }
    }
    // RFC 9449 §8.2, §9: while nonces are required, every answer to a request with a proof
    // carries a fresh one, errors included (a `use_dpop_nonce` refusal above all).
    let nonce = req
        .headers()
        .contains_key(tokend_token_shape::dpop::DPOP_HEADER)
        .then(|| state.sessions.dpop().nonce())
        .flatten();
    let outcome = handler(state, req).await;
    match nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
        None => outcome,
        Some(nonce) => {
            let mut res = outcome.unwrap_or_else(ApiError::into_response);
            res.headers_mut()
                .insert(tokend_token_shape::dpop::NONCE_HEADER, nonce);
            Ok(res)
        }
    }
}

/// What every answer gets: errors rendered, the common headers, no body for `HEAD`.
pub(crate) fn finish(outcome: ApiResult, head: bool) -> Response<Full<Bytes>> {
    let mut res = outcome.unwrap_or_else(ApiError::into_response);
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if head {
        *res.body_mut() = Full::new(Bytes::new());
    }
    res
}

impl tower::Service<Request<Incoming>> for Router {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    /// Ready at once for 404, 405 and the routes answered from memory; otherwise the boxed
    /// handler.
    type Future = futures_util::future::Either<
        std::future::Ready<Result<Self::Response, Infallible>>,
        Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        use futures_util::future::Either;
        let head = req.method() == Method::HEAD;
        let now = |outcome| Either::Left(std::future::ready(Ok(finish(outcome, head))));
        let Some(route) = MatchedRoute::of(&req, self.listener).route() else {
            return now(Err(ApiError::NotFound));
        };
        match route.handler(req.method()) {
            None => now(Err(ApiError::MethodNotAllowed {
                allow: route.allow(),
            })),
            // Nothing to wait for: no timer, no task-sized future to allocate.
            Some(Handler::Memory(answer)) => now(answer(&self.state, &req)),
            Some(Handler::Async(handler)) => {
                let state = self.state.clone();
                let rate_limit = route.rate_limit();
                let page = route.is_page();
                Either::Right(Box::pin(async move {
                    let outcome = run(&state, rate_limit, page, handler, req).await;
                    Ok(finish(outcome, head))
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_serve_their_surfaces() {
        let on = |l, p| MatchedRoute::resolve(l, p).template();
        assert_eq!(on(Listener::All, "/metrics"), "/metrics");
        assert_eq!(on(Listener::Api, "/metrics"), "unmatched");
        assert_eq!(on(Listener::Ops, "/metrics"), "/metrics");
        assert_eq!(on(Listener::Ops, "/.well-known/jwks.json"), "unmatched");
        assert_eq!(
            on(Listener::Api, "/admin/users/u-1/roles"),
            "/admin/users/{id}/roles"
        );
        assert_eq!(on(Listener::All, "/nope"), "unmatched");
        assert!(MatchedRoute::resolve(Listener::All, "/healthz").served_from_memory());
        assert_eq!(
            MatchedRoute::resolve(Listener::All, "/nope").timeout(),
            Timeout::None
        );
        assert_eq!(
            MatchedRoute::resolve(Listener::All, "/auth/login").timeout(),
            Timeout::Request
        );
    }
}
