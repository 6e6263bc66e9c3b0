//! Micro-benchmarks of whole request paths, without a load generator: the JWKS response (the
//! document with its ETag check, and a full HTTP/1 round trip over loopback through the layer
//! stack), and the domain side of `/auth/verify`, a refresh exchange, a `client_credentials`
//! grant and an introspection, against the memory stores of embedded mode.
//!
//! The application is built the way `Application::build_with_backends` builds it, over memory
//! stores and a memory keystore. `cargo bench --bench requests`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark aborts on any failure

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{header, HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokend::clock::{SharedClock, SystemClock};
use tokend::config::Config;
use tokend::domain::clients::hash_secret;
use tokend::domain::events::Origin;
use tokend::domain::oauth::{Client, TokenRequest};
use tokend::http::state::AppState;
use tokend::http::wellknown::cacheable;
use tokend::keys::MemoryKeyStore;
use tokend::startup::{Application, Backends};
use tokend::store::memory::{
    MemoryAuthorize, MemoryClients, MemoryConsents, MemoryDevices, MemoryEvents, MemoryLimits,
    MemoryMail, MemoryReplay, MemorySessions, MemoryUsers, EVENTS_CAPACITY,
};
use tokend::store::ClientRecord;

const EMAIL: &str = "bench@example.com";
const PASSWORD: &str = "correct horse battery";

struct Bench {
    rt: tokio::runtime::Runtime,
    state: Arc<AppState>,
    addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Builds and starts an embedded-mode application on 127.0.0.1:0 over memory stores.
fn app() -> Bench {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env: HashMap<&str, &str> = [
        ("TOKEND_LISTEN", "127.0.0.1:0"),
        ("TOKEND_SIGNING_ALGS", "EdDSA,RS256"),
        ("TOKEND_ARGON2", "m=256,t=1,p=1"),
        ("TOKEND_RATE_LIMIT", "off"),
        ("TOKEND_LOG", "warn"),
        // Registrations queue no verification mail (no .eml files in the working directory).
        ("TOKEND_EMAIL_VERIFICATION", "off"),
    ]
    .into_iter()
    .collect();
    let config = Config::from_env(&env).unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let backends = Backends {
        users: Arc::new(MemoryUsers::new()),
        clients: Arc::new(MemoryClients::new()),
        sessions: Arc::new(MemorySessions::new(clock.clone())),
        authorize: Arc::new(MemoryAuthorize::new(clock.clone())),
        consents: Arc::new(MemoryConsents::new()),
        device: Arc::new(MemoryDevices::new(clock.clone())),
        mail: Arc::new(MemoryMail::new()),
        events: Arc::new(MemoryEvents::new(EVENTS_CAPACITY)),
        keystore: Arc::new(MemoryKeyStore::new()),
        lease: None,
        limits: Arc::new(MemoryLimits::new(clock.clone())),
        replay: Arc::new(MemoryReplay::new(clock.clone())),
        mode_name: "embedded",
    };
    let app = rt
        .block_on(Application::build_with_backends(config, clock, backends))
        .unwrap();
    let state = app.state();
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Bench {
        rt,
        state,
        addr,
        _stop: stop,
    }
}

fn jwks(c: &mut Criterion) {
    let bench = app();
    let state = &bench.state;
    let doc = state.published.jwks();
    let mut g = c.benchmark_group("jwks");
    let plain = Request::get("/.well-known/jwks.json").body(()).unwrap();
    g.bench_function("document_200", |b| {
        b.iter(|| {
            cacheable(
                black_box(&plain),
                doc.body.clone(),
                &doc.etag,
                &state.public_cache_control,
            )
            .unwrap()
        })
    });
    let conditional = Request::get("/.well-known/jwks.json")
        .header(header::IF_NONE_MATCH, doc.etag.as_str())
        .body(())
        .unwrap();
    g.bench_function("document_304", |b| {
        b.iter(|| {
            cacheable(
                black_box(&conditional),
                doc.body.clone(),
                &doc.etag,
                &state.public_cache_control,
            )
            .unwrap()
        })
    });

    // One keep-alive HTTP/1 connection through the whole server: accept loop, layer stack,
    // router, handler; the client side is included.
    let mut sender = bench.rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(bench.addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender
    });
    for (name, etag) in [("http_200", None), ("http_304", Some(doc.etag.clone()))] {
        g.bench_function(name, |b| {
            b.iter(|| {
                bench.rt.block_on(async {
                    let mut req =
                        Request::get("/.well-known/jwks.json").header(header::HOST, "localhost");
                    if let Some(e) = &etag {
                        req = req.header(header::IF_NONE_MATCH, HeaderValue::from_str(e).unwrap());
                    }
                    sender.ready().await.unwrap();
                    let res = sender
                        .send_request(req.body(Empty::new()).unwrap())
                        .await
                        .unwrap();
                    let status = res.status();
                    let body = res.into_body().collect().await.unwrap().to_bytes();
                    black_box((status, body))
                })
            })
        });
    }
    g.finish();
}

fn domain(c: &mut Criterion) {
    let bench = app();
    let state = &bench.state;
    let rt = &bench.rt;
    rt.block_on(state.accounts.register("bencher", EMAIL, PASSWORD))
        .unwrap();
    let first = rt
        .block_on(
            state
                .accounts
                .login(EMAIL, PASSWORD, &Origin::default(), &Default::default()),
        )
        .unwrap();
    let mut g = c.benchmark_group("domain");

    // `/auth/verify`: signature, claims, revocation check.
    let access = first.access_token.clone();
    g.bench_function("authenticate_EdDSA", |b| {
        b.iter(|| {
            rt.block_on(state.sessions.authenticate(black_box(&access)))
                .unwrap()
        })
    });

    // A refresh exchange: each token is single-use, so every iteration presents the token the
    // previous one received.
    let mut refresh = first.refresh_token.clone();
    g.bench_function("refresh_EdDSA", |b| {
        b.iter(|| {
            let pair = rt.block_on(state.sessions.refresh(&refresh, None)).unwrap();
            refresh = pair.refresh_token;
        })
    });

    for alg in ["EdDSA", "RS256"] {
        let client = Client::authenticated_elsewhere(ClientRecord {
            client_id: format!("svc-{alg}"),
            secret_sha256: Some(hash_secret("s3cret-s3cret-s3cret-s3cret-s3cret")),
            grant_types: vec!["client_credentials".into()],
            scopes: vec!["read".into(), "write".into()],
            alg: Some(alg.into()),
            created_at: 0,
            meta: Default::default(),
            registration: None,
        });
        let req = TokenRequest {
            grant_type: Some("client_credentials".into()),
            ..TokenRequest::default()
        };
        g.bench_function(format!("client_credentials_{alg}"), |b| {
            b.iter(|| {
                rt.block_on(state.oauth.token_grant(&client, black_box(&req)))
                    .unwrap()
            })
        });
    }

    g.bench_function("introspect_access_EdDSA", |b| {
        b.iter(|| {
            rt.block_on(state.oauth.introspect(black_box(&access), None))
                .unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4));
    targets = jwks, domain
}
criterion_main!(benches);
