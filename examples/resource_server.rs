//! A resource server that accepts tokend access tokens: `GET /hello` answers
//! `{"hello": "<sub>", ...}` for a valid `Authorization: Bearer` token, or for a DPoP-bound
//! token sent as `Authorization: DPoP` with a `DPoP` proof of its key for this request (RFC 9449,
//! docs/dpop.md), and 401 with a `WWW-Authenticate` challenge otherwise (`Bearer`, or `DPoP`
//! naming `invalid_token` or `invalid_dpop_proof`).
//!
//! ```text
//! cargo run --example resource_server -- --issuer http://localhost:5000 --listen 127.0.0.1:8080
//! curl -H "Authorization: Bearer $ACCESS" http://127.0.0.1:8080/hello
//! curl -H "Authorization: DPoP $ACCESS" -H "DPoP: $PROOF" http://127.0.0.1:8080/hello
//! ```
//!
//! A proof names the URL the client called (`htu`): the server compares it with
//! `--public-url` and the path, so behind a proxy give the URL clients see.
//!
//! The verifier discovers the JWKS from `{issuer}/.well-known/openid-configuration`, caches it for
//! its `max-age`, and refetches at most once per 30 s when a token names an unknown key. The
//! issuer must be the exact `TOKEND_ISSUER` of the server (it is checked against `iss`). The
//! built-in fetcher speaks plain HTTP; see `tokend_verifier::HyperFetcher::with_client` for
//! HTTPS.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokend_verifier::{presented_scheme, Scheme, Verifier, VerifierError, VerifierOptions};
use tokio::net::TcpListener;

/// Command line (each flag also read from the environment).
#[derive(Debug, Parser)]
#[command(about = "A resource server protecting GET /hello with tokend access tokens")]
pub struct Args {
    /// The issuer URL, exactly as tokend's TOKEND_ISSUER.
    #[arg(long, env = "RESOURCE_ISSUER", default_value = "http://localhost:5000")]
    pub issuer: String,
    /// The audience tokens must carry (tokend's TOKEND_AUDIENCE).
    #[arg(long, env = "RESOURCE_AUDIENCE", default_value = "tokend")]
    pub audience: String,
    /// Where to listen.
    #[arg(long, env = "RESOURCE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The URL clients reach this server at, which their DPoP proofs name (default
    /// `http://` and the listen address).
    #[arg(long, env = "RESOURCE_PUBLIC_URL")]
    pub public_url: Option<String>,
}

/// The verifier and what the handler needs beside it.
pub struct Resource {
    pub verifier: Verifier,
    /// The scheme, host and port clients call, without a trailing slash.
    pub public_url: String,
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// 401 with the challenge of RFC 6750 §3 or RFC 9449 §7.1 that fits the refusal.
fn unauthorized(e: &VerifierError, scheme: Option<Scheme>) -> Response<Full<Bytes>> {
    let error = match e {
        VerifierError::Proof(_) => "invalid_dpop_proof",
        _ => "invalid_token",
    };
    let description = match e {
        VerifierError::Expired => "token expired".to_string(),
        VerifierError::Authorization(_)
        | VerifierError::DpopBound
        | VerifierError::NotDpopBound
        | VerifierError::Proof(_) => e.to_string(),
        _ => "token not accepted".to_string(),
    };
    let mut res = json_response(
        StatusCode::UNAUTHORIZED,
        json!({"error": error, "error_description": description}),
    );
    if let Ok(v) = HeaderValue::from_str(&e.challenge(scheme)) {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    res
}

/// Answers one request.
pub async fn handle<B>(resource: &Resource, req: Request<B>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/hello" {
        return json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"}));
    }
    if req.method() != Method::GET {
        let mut res = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "method_not_allowed"}),
        );
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return res;
    }
    let scheme = presented_scheme(req.headers());
    let uri = format!("{}{}", resource.public_url, req.uri().path());
    match resource
        .verifier
        .verify_request(req.headers(), req.method().as_str(), &uri)
        .await
    {
        Ok(claims) => json_response(
            StatusCode::OK,
            json!({
                "hello": claims.sub,
                "sub": claims.sub,
                "client_id": claims.client_id,
                "scope": claims.scope,
                "roles": claims.roles,
            }),
        ),
        Err(e) if e.is_invalid_token() => {
            tracing::info!(reason = e.reason(), "token refused");
            unauthorized(&e, scheme)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot verify tokens");
            let mut res = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "temporarily_unavailable"}),
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            res
        }
    }
}

/// Serves on `listener` until `shutdown` resolves, then lets open connections finish (10 s at
/// most).
pub async fn serve(
    listener: TcpListener,
    resource: Arc<Resource>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let resource = resource.clone();
                let service = service_fn(move |req| {
                    let resource = resource.clone();
                    async move { Ok::<_, Infallible>(handle(&resource, req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let verifier =
        match Verifier::discover(&args.issuer, &args.audience, VerifierOptions::default()).await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("resource_server: {e}");
                return ExitCode::FAILURE;
            }
        };
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.listen))
        .trim_end_matches('/')
        .to_string();
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("resource_server: cannot bind {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(listen = %args.listen, issuer = %args.issuer, jwks_uri = verifier.jwks_uri(), "resource server ready");
    let resource = Arc::new(Resource {
        verifier,
        public_url,
    });
    serve(listener, resource, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    ExitCode::SUCCESS
}
