//! Outbound HTTP: the `GET` of a `private_key_jwt` client's `jwks_uri` (docs/private_key_jwt.md,
//! "Fetching jwks_uri"). HTTP/1.1 on one connection per fetch, plain TCP for `http` (loopback
//! addresses only) and rustls with its ring provider and the web PKI roots for `https` (the TLS
//! stack the server and the mail client already use); the whole fetch within
//! [`FETCH_TIMEOUT`], at most [`MAX_JWKS_BYTES`] read, a redirect never followed. Fetches are
//! rare (cached, and refetched at most once a minute per client), so no connection pool.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::domain::client_keys::{Fetched, JwksFetch, FETCH_TIMEOUT, MAX_JWKS_BYTES};

/// Fetches `jwks_uri`s for the `ClientKeys` of the domain.
pub(crate) struct JwksFetcher {
    tls: TlsConnector,
}

impl JwksFetcher {
    /// A fetcher trusting the web PKI roots (the Mozilla set of `webpki-roots`).
    pub(crate) fn new() -> Result<JwksFetcher, String> {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(JwksFetcher {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    async fn get(&self, uri: &str) -> Result<Fetched, String> {
        let url = url::Url::parse(uri).map_err(|_| "not an absolute URL".to_string())?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err("not an http or https URL".into()),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| "no port".to_string())?;
        let (name, addrs): (String, Vec<SocketAddr>) = match url.host() {
            Some(url::Host::Ipv4(a)) => (a.to_string(), vec![SocketAddr::from((a, port))]),
            Some(url::Host::Ipv6(a)) => (a.to_string(), vec![SocketAddr::from((a, port))]),
            Some(url::Host::Domain(d)) => {
                let found = tokio::net::lookup_host((d, port))
                    .await
                    .map_err(|e| format!("cannot resolve {d}: {e}"))?;
                (d.to_string(), found.collect())
            }
            None => return Err("no host".into()),
        };
        // Plain http only to this machine (docs/private_key_jwt.md): whatever a name resolves
        // to, nothing else is connected to without TLS.
        let addrs: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| https || a.ip().is_loopback())
            .collect();
        if addrs.is_empty() {
            return Err(if https {
                "the host has no address".into()
            } else {
                "http is allowed to loopback addresses only".into()
            });
        }
        let stream = connect(&addrs).await?;
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let request = Request::get(target)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/jwk-set+json, application/json")
            .header(
                header::USER_AGENT,
                concat!("tokend/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad request: {e}"))?;
        if https {
            let server_name = rustls_pki_types::ServerName::try_from(name)
                .map_err(|_| "the host is not a valid TLS server name".to_string())?;
            let tls = self
                .tls
                .connect(server_name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(tls, request).await
        } else {
            exchange(stream, request).await
        }
    }
}

#[async_trait]
impl JwksFetch for JwksFetcher {
    async fn fetch(&self, uri: &str) -> Result<Fetched, String> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.get(uri)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!(
                "no complete answer within {} s",
                FETCH_TIMEOUT.as_secs()
            )),
        }
    }
}

/// The first of `addrs` that accepts a connection.
async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("cannot connect: {e}"),
        }
    }
    Err(last)
}

/// Stops a connection's task when the fetch ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One request on a fresh HTTP/1.1 connection over `io`; a 200 answer's body and max-age.
async fn exchange<S>(io: S, request: Request<Empty<Bytes>>) -> Result<Fetched, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let res = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = res.status();
    if status.is_redirection() {
        return Err(format!(
            "answered {} (a redirect, which is not followed)",
            status.as_u16()
        ));
    }
    if status != StatusCode::OK {
        return Err(format!("answered {}", status.as_u16()));
    }
    let too_big = || format!("the answer is larger than {MAX_JWKS_BYTES} bytes");
    let declared = res
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
        return Err(too_big());
    }
    let max_age = max_age(res.headers());
    let body = match Limited::new(res.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_big()),
        Err(e) => return Err(format!("HTTP: {e}")),
    };
    Ok(Fetched { body, max_age })
}

/// `Cache-Control: max-age` in seconds (RFC 9111 §5.2.2.1); `no-store` and `no-cache` count as
/// 0 (the caller's floor applies).
fn max_age(headers: &HeaderMap) -> Option<u64> {
    let mut found = None;
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for directive in value.split(',').map(str::trim) {
            let lower = directive.to_ascii_lowercase();
            if lower == "no-store" || lower == "no-cache" {
                return Some(0);
            }
            if let Some(v) = lower.strip_prefix("max-age=") {
                if let Ok(secs) = v.trim_matches('"').parse::<u64>() {
                    found = Some(secs);
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        let of = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
            }
            max_age(&h)
        };
        assert_eq!(of(&[]), None);
        assert_eq!(of(&["public, max-age=600"]), Some(600));
        assert_eq!(of(&["Max-Age=\"30\""]), Some(30));
        assert_eq!(of(&["max-age=600", "no-cache"]), Some(0));
        assert_eq!(of(&["no-store"]), Some(0));
        assert_eq!(of(&["max-age=soon"]), None);
    }

    /// A one-shot server on loopback that answers `response` to the first request.
    async fn answering(response: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(&response).await;
            let _ = s.shutdown().await;
        });
        format!("http://{addr}/jwks.json")
    }

    #[tokio::test]
    async fn a_set_is_fetched_with_its_max_age() {
        let body = r#"{"keys":[]}"#;
        let uri = answering(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nCache-Control: max-age=120\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
        .await;
        let fetched = JwksFetcher::new().unwrap().fetch(&uri).await.unwrap();
        assert_eq!(fetched.body, Bytes::from(body));
        assert_eq!(fetched.max_age, Some(120));
    }

    #[tokio::test]
    async fn redirects_errors_and_big_answers_are_refused_with_a_reason() {
        let fetcher = JwksFetcher::new().unwrap();
        let redirect = answering(
            b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        )
        .await;
        let e = fetcher.fetch(&redirect).await.unwrap_err();
        assert!(e.contains("redirect"), "{e}");
        let missing =
            answering(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()).await;
        assert!(fetcher.fetch(&missing).await.unwrap_err().contains("404"));
        let big = answering(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                MAX_JWKS_BYTES + 1
            )
            .into_bytes(),
        )
        .await;
        assert!(fetcher.fetch(&big).await.unwrap_err().contains("larger"));
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let chunk = vec![b'x'; 8192];
        for _ in 0..9 {
            chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            chunked.extend_from_slice(&chunk);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let streamed = answering(chunked).await;
        assert!(fetcher
            .fetch(&streamed)
            .await
            .unwrap_err()
            .contains("larger"));
    }

    #[tokio::test]
    async fn plain_http_goes_to_loopback_only_and_a_dead_port_is_an_error() {
        let fetcher = JwksFetcher::new().unwrap();
        let e = fetcher.fetch("http://192.0.2.1/jwks").await.unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = format!("http://{}/jwks", listener.local_addr().unwrap());
        drop(listener);
        let e = fetcher.fetch(&dead).await.unwrap_err();
        assert!(e.contains("connect"), "{e}");
        // TLS to something that does not speak it fails cleanly.
        let not_tls = answering(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()).await;
        let e = fetcher
            .fetch(&not_tls.replace("http://", "https://"))
            .await
            .unwrap_err();
        assert!(e.contains("TLS"), "{e}");
    }
}
