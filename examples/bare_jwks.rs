//! The reference for the JWKS load scenario: a bare hyper 1 HTTP/1 server, on the same tokio
//! runtime settings as tokend, answering every request with fixed JWKS bytes and the same headers
//! tokend sends (`Content-Type`, `Cache-Control`, `ETag`, `X-Content-Type-Options`), and `304`
//! for a matching `If-None-Match`. No routing, no layers, no metrics, no logs: the ceiling that
//! tokend's JWKS endpoint is measured against.
//!
//! ```text
//! cargo run --release --example bare_jwks -- --listen 127.0.0.1:5999 --body-file jwks.json
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:5999")]
    listen: SocketAddr,
    /// The JWKS document to serve (as fetched from tokend).
    #[arg(long)]
    body_file: std::path::PathBuf,
    #[arg(long, default_value_t = 300)]
    max_age: u64,
}

struct Doc {
    body: Bytes,
    etag: HeaderValue,
    cache_control: HeaderValue,
}

fn answer(doc: &Doc, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == doc.etag.as_bytes());
    let mut res = Response::new(Full::new(if not_modified {
        Bytes::new()
    } else {
        doc.body.clone()
    }));
    if not_modified {
        *res.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, doc.cache_control.clone());
    h.insert(header::ETAG, doc.etag.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

fn main() -> ExitCode {
    let args = Args::parse();
    let body = match std::fs::read(&args.body_file) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            eprintln!("bare_jwks: {}: {e}", args.body_file.display());
            return ExitCode::FAILURE;
        }
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, &body);
    let etag = {
        use base64::Engine;
        format!(
            "\"{}\"",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
        )
    };
    let doc = Arc::new(Doc {
        body,
        etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")),
        cache_control: HeaderValue::from_str(&format!("public, max-age={}", args.max_age))
            .unwrap_or(HeaderValue::from_static("public")),
    });
    // The runtime tokend's main builds: multi-threaded, one worker per core.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bare_jwks: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bare_jwks: bind {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        eprintln!("bare_jwks listening on {}", args.listen);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let doc = doc.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let res = answer(&doc, &req);
                    async move { Ok::<_, Infallible>(res) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
