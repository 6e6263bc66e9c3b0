//! The accept loop: each connection (plain TCP, or TLS with rustls) served by hyper-util's auto
//! builder (HTTP/1 with a header-read timeout, HTTP/2), watched for graceful shutdown; on
//! shutdown stop accepting and drain in-flight requests within a grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// The TCP peer of a request, put in its extensions by the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
}

/// Builds a TLS acceptor from PEM files (certificate chain, private key), with ALPN for HTTP/2
/// and HTTP/1.1. Uses rustls with the ring provider.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("TOKEND_TLS_CERT: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("TOKEND_TLS_CERT: {e}"))?;
    if certs.is_empty() {
        return Err("TOKEND_TLS_CERT: no certificate in the file".into());
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("TOKEND_TLS_KEY: {e}"))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TOKEND_TLS_KEY: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `service` on `listener` until `shutdown` resolves, then drains.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    tls: Option<TlsAcceptor>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = service.clone().map_request(move |mut req: http::Request<Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    req
                });
                let svc = TowerToHyperService::new(svc);
                let builder = builder.clone();
                match tls.clone() {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                        let conn = graceful.watch(conn);
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        let watcher = graceful.watcher();
                        let handshake_timeout = limits.header_read_timeout;
                        tokio::spawn(async move {
                            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(peer = %peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let conn = builder.serve_connection(TokioIo::new(tls), svc).into_owned();
                            if let Err(e) = watcher.watch(conn).await {
                                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                            }
                        });
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(grace = ?limits.shutdown_grace, "grace period over; closing remaining connections");
        }
    }
}
