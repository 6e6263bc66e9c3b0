//! The tower layer stack around the router, outermost first:
//!
//! 1. request id: set `x-request-id` (a UUID) unless the client sent one, so every log line of
//!    the request carries it;
//! 2. trace: one span per request labelled by route template (never the raw path), with status
//!    and latency on completion;
//! 3. propagate request id: echo `x-request-id` on the response;
//! 4. CORS, only when `TOKEND_CORS_ORIGINS` lists origins (off by default): answers preflights
//!    before anything else runs;
//! 5. catch-panic: a handler bug becomes a JSON 500, never a dropped connection;
//! 6. router: method/path dispatch, with the per-request timeout and body limit applied where
//!    the body is read, request metrics by route template, and the common response headers.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::Full;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

use super::error::ApiError;
use super::router::{Route, Router};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
            ])
            .allow_credentials(true)
            .max_age(Duration::from_secs(600)),
    )
}

/// Wraps the router in the stack; `cors_origins` empty means CORS off.
pub fn build(
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
    ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<hyper::body::Incoming>| {
                    let request_id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        route = Route::resolve(req.uri().path()).template(),
                        request_id = %request_id,
                    )
                })
                .on_response(|res: &Response<_>, latency: Duration, _span: &Span| {
                    tracing::info!(
                        status = res.status().as_u16(),
                        latency_ms = latency.as_secs_f64() * 1000.0,
                        "request finished"
                    );
                })
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(tower::util::option_layer(cors_layer(cors_origins)))
        .layer(CatchPanicLayer::custom(panic_response))
        .service(router)
}
