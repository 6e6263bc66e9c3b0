//! The tower layer stack around the router, outermost first, and tokend's own layers (route,
//! metrics, timeout).
//!
//! 1. request id: set `x-request-id` (a UUID) unless the client sent one, so every log line of
//!    the request carries it;
//! 2. route: the request's route resolved once from the table (`routes.rs`), as far as this
//!    listener serves it, into a `MatchedRoute` in the request's extensions, which everything
//!    below reads;
//! 3. trace: one span per request labelled by route template (never the raw path), with status
//!    and latency on completion: at `info`, except for the documents answered from memory (JWKS,
//!    discovery, OpenAPI, `/healthz`, the pages' assets), which caches, resource servers,
//!    probes and browsers fetch all the time: those are logged at `debug` (and counted in the
//!    request metrics like every route);
//! 4. propagate request id: echo `x-request-id` on the response;
//! 5. CORS, only when `TOKEND_CORS_ORIGINS` lists origins (off by default): answers preflights
//!    before anything else runs (they are not API requests and are not counted);
//! 6. metrics: `tokend_http_requests_total{route,method,status}` and the latency histogram, by
//!    route template; outside catch-panic and timeout, so a handler that panics is counted with
//!    its 500 and one that overruns with its 503;
//! 7. catch-panic: a handler bug becomes a JSON 500, never a dropped connection;
//! 8. timeout: `TOKEND_REQUEST_TIMEOUT` for the routes of the request timeout class, a 503
//!    `temporarily_unavailable` when it passes; no timer at all for what is answered from memory;
//! 9. body limit: `TOKEND_BODY_LIMIT`, applied where a handler reads the body
//!    (`http::read_body`: `Content-Length` first, then the bytes as they come), not as a layer,
//!    so that handlers keep reading `Request<Incoming>` and a request refused for its token,
//!    its media type or the rate limit is refused for that before its size is considered;
//! 10. router: dispatch on the matched route and method, the per-IP rate limit, and the common
//!     response headers.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::{Level, Span};

use super::error::ApiError;
use super::router::{finish, Listener, MatchedRoute, Router};
use super::routes::Timeout;
use crate::metrics::Metrics;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: random (version 4) UUIDs from a per-thread generator seeded once from the
/// system's randomness, so a request costs no system call for its id. Ids only need to be
/// unique, not secret.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MakeRequestUuid;

thread_local! {
    static REQUEST_ID_STATE: std::cell::Cell<u64> = std::cell::Cell::new(request_id_seed());
}

fn request_id_seed() -> u64 {
    let mut seed = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).is_err() {
        // The standard library's per-process random hash keys, as a last resort.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        seed = h.finish().to_le_bytes();
    }
    u64::from_le_bytes(seed)
}

/// SplitMix64: a full-period 64-bit sequence with well mixed outputs.
fn next_random() -> u64 {
    REQUEST_ID_STATE.with(|state| {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

impl MakeRequestId for MakeRequestUuid {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let bits = (u128::from(next_random()) << 64) | u128::from(next_random());
        let id = uuid::Builder::from_random_bytes(bits.to_le_bytes()).into_uuid();
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = id.hyphenated().encode_lower(&mut buf);
        HeaderValue::from_str(text).ok().map(RequestId::new)
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response<Full<Bytes>> {
    ApiError::Internal("handler panicked".into()).into_response()
}

fn cors_layer(origins: Vec<String>) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT])
            .allow_headers([
                http::header::AUTHORIZATION,
                http::header::CONTENT_TYPE,
                HeaderName::from_static("x-csrf-token"),
                // RFC 9449 §4.1: a browser app's proof.
                HeaderName::from_static("dpop"),
            ])
            // RFC 9449 §8.1, §7.1: what a browser app must read to follow a nonce request.
            .expose_headers([
                HeaderName::from_static("dpop-nonce"),
                http::header::WWW_AUTHENTICATE,
            ])
            .allow_credentials(true)
            .max_age(Duration::from_secs(600)),
    )
}

/// Wraps the router in the stack; `cors_origins` empty means CORS off.
pub(crate) fn build(
    router: Router,
    cors_origins: Vec<String>,
) -> impl tower::Service<
    Request<hyper::body::Incoming>,
    Response = Response<
        impl http_body::Body<Data = Bytes, Error = impl Into<tower::BoxError>> + Send,
    >,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let listener = router.listener();
    let metrics = router.state().metrics.clone();
    let request_timeout = router.state().request_timeout;
    stack(router, listener, metrics, request_timeout, cors_origins)
}

/// The stack of the module documentation around any inner service answering like the router.
fn stack<S, B>(
    inner: S,
    listener: Listener,
    metrics: Arc<Metrics>,
    request_timeout: Duration,
    cors_origins: Vec<String>,
) -> impl tower::Service<
    Request<B>,
    Response = Response<
        impl http_body::Body<Data = Bytes, Error = impl Into<tower::BoxError>> + Send,
    >,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static
where
    S: Service<Request<B>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
{
    ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(MatchRouteLayer::new(listener))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(RouteSpan)
                .on_response(LogResponse)
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(tower::util::option_layer(cors_layer(cors_origins)))
        .layer(RequestMetricsLayer::new(metrics))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(RequestTimeoutLayer::new(request_timeout))
        .service(inner)
}

/// The request span, labelled by the matched route's template.
#[derive(Debug, Clone, Copy)]
struct RouteSpan;

impl<B> MakeSpan<B> for RouteSpan {
    fn make_span(&mut self, req: &Request<B>) -> Span {
        let request_id = req
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let route = req
            .extensions()
            .get::<MatchedRoute>()
            .copied()
            .unwrap_or_default();
        if route.served_from_memory() {
            tracing::debug_span!(
                "request",
                method = %req.method(),
                route = route.template(),
                request_id = %request_id,
            )
        } else {
            tracing::info_span!(
                "request",
                method = %req.method(),
                route = route.template(),
                request_id = %request_id,
            )
        }
    }
}

/// The line that ends a request: status and latency, at the span's level.
#[derive(Debug, Clone, Copy)]
struct LogResponse;

impl<B> OnResponse<B> for LogResponse {
    fn on_response(self, res: &Response<B>, latency: Duration, span: &Span) {
        let (status, latency_ms) = (res.status().as_u16(), latency.as_secs_f64() * 1000.0);
        // A disabled span has no metadata.
        if span.metadata().is_some_and(|m| *m.level() == Level::INFO) {
            tracing::info!(status, latency_ms, "request finished");
        } else {
            tracing::debug!(status, latency_ms, "request finished");
        }
    }
}

/// Resolves the request's route once, from the table, into its extensions.
#[derive(Debug, Clone)]
pub(crate) struct MatchRoute<S> {
    inner: S,
    listener: Listener,
}

/// Layer of [`MatchRoute`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatchRouteLayer {
    listener: Listener,
}

impl MatchRouteLayer {
    pub(crate) fn new(listener: Listener) -> Self {
        MatchRouteLayer { listener }
    }
}

impl<S> Layer<S> for MatchRouteLayer {
    type Service = MatchRoute<S>;

    fn layer(&self, inner: S) -> MatchRoute<S> {
        MatchRoute {
            inner,
            listener: self.listener,
        }
    }
}

impl<S, B> Service<Request<B>> for MatchRoute<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let route = MatchedRoute::resolve(self.listener, req.uri().path());
        req.extensions_mut().insert(route);
        self.inner.call(req)
    }
}

/// Counts each answered request and observes its latency by route template, method and status.
#[derive(Clone)]
pub(crate) struct RequestMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Layer of [`RequestMetrics`].
#[derive(Clone)]
pub(crate) struct RequestMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RequestMetricsLayer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        RequestMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> RequestMetrics<S> {
        RequestMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The label of a method, and its place in the metric handle cache key.
fn method_label(method: &Method) -> (u32, &'static str) {
    match *method {
        Method::GET => (0, "GET"),
        Method::HEAD => (1, "HEAD"),
        Method::POST => (2, "POST"),
        Method::PUT => (3, "PUT"),
        Method::DELETE => (4, "DELETE"),
        Method::OPTIONS => (5, "OPTIONS"),
        Method::PATCH => (6, "PATCH"),
        _ => (7, "other"),
    }
}

impl<S, B, ResBody> Service<Request<B>> for RequestMetrics<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let route = req
            .extensions()
            .get::<MatchedRoute>()
            .copied()
            .unwrap_or_default();
        let method = method_label(req.method());
        RequestMetricsFuture {
            inner: self.inner.call(req),
            metrics: self.metrics.clone(),
            route,
            method,
            start,
        }
    }
}

pin_project_lite::pin_project! {
    /// Future of [`RequestMetrics`].
    pub(crate) struct RequestMetricsFuture<F> {
        #[pin]
        inner: F,
        metrics: Arc<Metrics>,
        route: MatchedRoute,
        method: (u32, &'static str),
        start: Instant,
    }
}

impl<F, ResBody, E> Future for RequestMetricsFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let outcome = ready!(this.inner.poll(cx));
        // An error never reaches here from the router (its error type is `Infallible`); were
        // one to, hyper would answer it as a failed request.
        let status = match &outcome {
            Ok(res) => res.status(),
            Err(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
        };
        let (method_index, method) = *this.method;
        let key =
            u32::from(this.route.index()) << 24 | method_index << 16 | u32::from(status.as_u16());
        this.metrics.observe_request(
            key,
            [this.route.template(), method, status.as_str()],
            this.start.elapsed().as_secs_f64(),
        );
        Poll::Ready(outcome)
    }
}

/// Answers 503 `temporarily_unavailable` when a route of the request timeout class has not
/// answered within `TOKEND_REQUEST_TIMEOUT` (dropping the handler's future); sets no timer for
/// the others.
#[derive(Debug, Clone)]
pub(crate) struct RequestTimeout<S> {
    inner: S,
    timeout: Duration,
}

/// Layer of [`RequestTimeout`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestTimeoutLayer {
    timeout: Duration,
}

impl RequestTimeoutLayer {
    pub(crate) fn new(timeout: Duration) -> Self {
        RequestTimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;

    fn layer(&self, inner: S) -> RequestTimeout<S> {
        RequestTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

impl<S, B> Service<Request<B>> for RequestTimeout<S>
where
    S: Service<Request<B>, Response = Response<Full<Bytes>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let timeout = req
            .extensions()
            .get::<MatchedRoute>()
            .map_or(Timeout::Request, |m| m.timeout());
        let sleep = match timeout {
            Timeout::None => None,
            Timeout::Request => Some(tokio::time::sleep(self.timeout)),
        };
        let head = req.method() == Method::HEAD;
        RequestTimeoutFuture {
            inner: self.inner.call(req),
            sleep,
            head,
        }
    }
}

pin_project_lite::pin_project! {
    /// Future of [`RequestTimeout`].
    pub(crate) struct RequestTimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        head: bool,
    }
}

impl<F, E> Future for RequestTimeoutFuture<F>
where
    F: Future<Output = Result<Response<Full<Bytes>>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Poll::Ready(outcome) = this.inner.poll(cx) {
            return Poll::Ready(outcome);
        }
        match this.sleep.as_pin_mut() {
            None => Poll::Pending,
            Some(sleep) => {
                ready!(sleep.poll(cx));
                let timed_out = Err(ApiError::Unavailable("request timed out".into()));
                Poll::Ready(Ok(finish(timed_out, *this.head)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_version_4_uuids() {
        let req = Request::new(());
        let mut make = MakeRequestUuid;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = make.make_request_id(&req).unwrap();
            let text = id.header_value().to_str().unwrap().to_string();
            let parsed = uuid::Uuid::parse_str(&text).unwrap();
            assert_eq!(parsed.get_version_num(), 4);
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
            assert!(seen.insert(text), "ids repeat");
        }
    }

    /// What the inner service of a test stack does.
    #[derive(Clone, Copy)]
    enum Inner {
        /// Panics in `call`, as a handler answered from memory would.
        PanicsAtOnce,
        /// Panics when its future is polled, as an `async` handler would.
        PanicsLater,
        /// Never answers.
        Hangs,
        /// Answers 200 with the matched route's template as the body.
        EchoesTheRoute,
    }

    type TestFuture =
        Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

    impl Service<Request<Full<Bytes>>> for Inner {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = TestFuture;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<Full<Bytes>>) -> TestFuture {
            match self {
                Inner::PanicsAtOnce => panic!("a handler bug"),
                Inner::PanicsLater => Box::pin(async { panic!("a handler bug") }),
                Inner::Hangs => Box::pin(std::future::pending()),
                Inner::EchoesTheRoute => {
                    let route = req.extensions().get::<MatchedRoute>().copied();
                    let body = route.map_or("no route", MatchedRoute::template);
                    Box::pin(async move { Ok(Response::new(Full::new(Bytes::from(body)))) })
                }
            }
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(2);

    /// One request through the stack of `listener` around `inner`; the status, the body and the
    /// metrics.
    async fn send(
        inner: Inner,
        listener: Listener,
        method: Method,
        path: &str,
    ) -> (http::StatusCode, String, Arc<Metrics>) {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let metrics = Metrics::new();
        let svc = stack(inner, listener, metrics.clone(), TIMEOUT, Vec::new());
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.ok().unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned(), metrics)
    }

    fn counted(metrics: &Metrics, route: &str, method: &str, status: &str) -> (u64, u64) {
        let count = metrics
            .http_requests
            .with_label_values(&[route, method, status])
            .get();
        let observed = metrics
            .http_duration
            .with_label_values(&[route, status])
            .get_sample_count();
        (count, observed)
    }

    #[tokio::test]
    async fn a_handler_that_panics_is_answered_500_and_counted() {
        for inner in [Inner::PanicsAtOnce, Inner::PanicsLater] {
            let (status, body, metrics) =
                send(inner, Listener::All, Method::POST, "/auth/login").await;
            assert_eq!(status, 500);
            assert!(body.contains("server_error"), "{body}");
            assert_eq!(counted(&metrics, "/auth/login", "POST", "500"), (1, 1));
        }
        let (status, _, metrics) = send(
            Inner::PanicsAtOnce,
            Listener::All,
            Method::GET,
            "/.well-known/jwks.json",
        )
        .await;
        assert_eq!(status, 500);
        assert_eq!(
            counted(&metrics, "/.well-known/jwks.json", "GET", "500"),
            (1, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_that_overruns_is_answered_503_and_counted() {
        let (status, body, metrics) = send(
            Inner::Hangs,
            Listener::All,
            Method::PUT,
            "/admin/users/u-1/roles",
        )
        .await;
        assert_eq!(status, 503);
        assert!(body.contains("temporarily_unavailable"), "{body}");
        assert_eq!(
            counted(&metrics, "/admin/users/{id}/roles", "PUT", "503"),
            (1, 1)
        );
        // HEAD gets the status without the body.
        let (status, body, _) = send(Inner::Hangs, Listener::All, Method::HEAD, "/readyz").await;
        assert_eq!((status.as_u16(), body.as_str()), (503, ""));
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_answered_from_memory_runs_without_a_timer() {
        let answer = send(Inner::Hangs, Listener::All, Method::GET, "/healthz");
        let waited = tokio::time::timeout(TIMEOUT * 100, answer).await;
        assert!(
            waited.is_err(),
            "a timer answered a route served from memory"
        );
    }

    #[tokio::test]
    async fn the_route_is_resolved_once_and_labels_by_template() {
        let (status, body, metrics) = send(
            Inner::EchoesTheRoute,
            Listener::All,
            Method::POST,
            "/admin/users/0193a1b2-user/revoke-sessions?x=1",
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body, "/admin/users/{id}/revoke-sessions");
        assert_eq!(
            counted(&metrics, "/admin/users/{id}/revoke-sessions", "POST", "200"),
            (1, 1)
        );
        // A route of another listener is no route here.
        let (_, body, metrics) = send(
            Inner::EchoesTheRoute,
            Listener::Ops,
            Method::GET,
            "/auth/verify",
        )
        .await;
        assert_eq!(body, "unmatched");
        assert_eq!(counted(&metrics, "unmatched", "GET", "200"), (1, 1));
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(!text.contains("/auth/verify"), "{text}");
    }
}
