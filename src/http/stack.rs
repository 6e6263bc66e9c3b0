//! The tower layer stack around the router, outermost first:
//!
//! 1. request id: set `x-request-id` (a UUID) unless the client sent one, so every log line of
//!    the request carries it;
//! 2. trace: one span per request labelled by route template (never the raw path), with status
//!    and latency on completion: at `info`, except for the documents answered from memory (JWKS,
//!    discovery, OpenAPI, `/healthz`), which caches, resource servers and probes fetch all the
//!    time: those are logged at `debug` (and counted in the request metrics like every route);
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
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use tracing::{Level, Span};

use super::error::ApiError;
use super::router::{Route, Router};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: random (version 4) UUIDs from a per-thread generator seeded once from the
/// system's randomness, so a request costs no system call for its id. Ids only need to be
/// unique, not secret.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeRequestUuid;

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
                    let route = Route::resolve(req.uri().path());
                    if route.is_immediate() {
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
                })
                .on_response(|res: &Response<_>, latency: Duration, span: &Span| {
                    let (status, latency_ms) =
                        (res.status().as_u16(), latency.as_secs_f64() * 1000.0);
                    // The line goes at the span's level (a disabled span has no metadata).
                    if span.metadata().is_some_and(|m| *m.level() == Level::INFO) {
                        tracing::info!(status, latency_ms, "request finished");
                    } else {
                        tracing::debug!(status, latency_ms, "request finished");
                    }
                })
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(tower::util::option_layer(cors_layer(cors_origins)))
        .layer(CatchPanicLayer::custom(panic_response))
        .service(router)
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
}
