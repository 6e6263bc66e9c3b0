//! The accept loop: each connection (plain TCP, or TLS with rustls) served by hyper-util's auto
//! builder (HTTP/1, HTTP/2), under the connection rules of docs/hardening.md: at most
//! `TOKEND_MAX_CONNECTIONS` open (the loop waits for a free slot before it accepts), at most
//! `TOKEND_MAX_CONNECTIONS_PER_IP` from one peer, and the header-read and idle deadlines of
//! [`super::conn`]. On shutdown it stops accepting and drains in-flight requests within a grace
//! period.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::conn::{self, Activity, Watched};
use crate::config::IpNet;

/// The TCP peer of a request, put in its extensions by the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerAddr(pub SocketAddr);

/// Connection-level limits.
#[derive(Debug, Clone)]
pub(crate) struct ServerLimits {
    /// From accept to the first complete request head; from the first byte of a later HTTP/1
    /// request to its complete head. Also how long a PING may go unanswered on HTTP/2.
    pub(crate) header_read_timeout: Duration,
    /// How long a connection with no request in flight stays open; on HTTP/2 also how long
    /// without a frame from the peer before a keep-alive PING.
    pub(crate) idle_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) shutdown_grace: Duration,
    /// Open connections of this listener; at the cap the accept loop waits.
    pub(crate) max_connections: usize,
    /// Open connections from one peer address; more are closed at once.
    pub(crate) max_connections_per_ip: usize,
    /// Peers exempt from the per-IP cap: a proxy carries many clients' connections.
    pub(crate) trusted_proxies: Arc<[IpNet]>,
}

/// Builds a TLS acceptor from PEM files (certificate chain, private key), with ALPN for HTTP/2
/// and HTTP/1.1. Uses rustls with the ring provider.
pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
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

/// Open connections per peer address.
#[derive(Debug, Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection from `ip`; dropping it frees the slot.
#[derive(Debug)]
struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn admit(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self
            .per_ip
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then drains.
pub(crate) async fn serve<S, B>(
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
    // No hyper header-read timer: it starts only after protocol detection and also runs between
    // keep-alive requests; `conn` keeps both deadlines instead.
    builder
        .http1()
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192));
    // Keep-alive PINGs find dead peers (RFC 9113 §6.7): after the idle timeout without a frame
    // from the peer, one PING; no answer within the header-read timeout closes the connection.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.idle_timeout)
        .keep_alive_timeout(limits.header_read_timeout)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // A free slot first, then accept: at the cap, new connections wait in the kernel's
        // backlog instead of being accepted and dropped, and no descriptor is spent on them.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let accepted_at = Instant::now();
        let ip = peer.ip().to_canonical();
        let ip_slot = if limits.trusted_proxies.iter().any(|n| n.contains(ip)) {
            None
        } else {
            match per_ip.admit(ip, limits.max_connections_per_ip) {
                Some(ip_slot) => Some(ip_slot),
                None => {
                    tracing::debug!(peer = %peer, "per-IP connection cap reached; closed");
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = connection(
            stream,
            peer,
            accepted_at,
            tls.clone(),
            builder.clone(),
            service.clone(),
            limits.clone(),
            stop_rx.clone(),
        );
        tokio::spawn(async move {
            connection.await;
            drop((slot, ip_slot));
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    drop(stop_rx);
    tokio::select! {
        () = stop_tx.closed() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(grace = ?limits.shutdown_grace, "grace period over; closing remaining connections");
        }
    }
}

/// One connection, from accept to close: the TLS handshake when configured, then HTTP.
#[allow(clippy::too_many_arguments)]
async fn connection<S, B>(
    stream: TcpStream,
    peer: SocketAddr,
    accepted_at: Instant,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: S,
    limits: ServerLimits,
    mut stop: watch::Receiver<bool>,
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
    let activity = Activity::new(accepted_at, limits.header_read_timeout, limits.idle_timeout);
    let Some(acceptor) = tls else {
        let io = Watched::new(stream, activity.clone());
        conn::drive(io, peer, &builder, service, activity, stop).await;
        return;
    };
    // The handshake counts against the first request's header-read deadline.
    let handshake = tokio::time::timeout_at(
        accepted_at + limits.header_read_timeout,
        acceptor.accept(stream),
    );
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %peer, "TLS handshake timed out");
                return;
            }
        },
        _ = stop.changed() => return,
    };
    let io = Watched::new(stream, activity.clone());
    let service = tower::ServiceExt::map_response(service, strict_transport::<B>);
    conn::drive(io, peer, &builder, service, activity, stop).await;
}

/// What every answer over tokend's own TLS carries: `Strict-Transport-Security` (RFC 6797
/// §6.1), one year, this host only. Behind a proxy that terminates TLS, the proxy sets it.
fn strict_transport<B>(mut res: http::Response<B>) -> http::Response<B> {
    res.headers_mut().insert(
        http::header::STRICT_TRANSPORT_SECURITY,
        http::HeaderValue::from_static("max-age=31536000"),
    );
    res
}
