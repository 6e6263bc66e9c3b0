//! Connections (docs/hardening.md, "Connections" and `X-Forwarded-For`): header-read and idle deadlines on
//! HTTP/1, HTTP/2 and TLS, keep-alive PINGs, the connection caps, and the client address behind a
//! trusted proxy. Every test talks over real sockets; a close is awaited under a generous outer
//! bound, never assumed after a sleep.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app_with, Mode, TestApp};

/// How long any close may take before the test calls it a hang.
const OUTER: Duration = Duration::from_secs(20);

async fn spawn(settings: &[(&str, &str)]) -> TestApp {
    let settings: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spawn_app_with(Mode::Embedded, move |env| env.extend(settings)).await
}

/// Reads until the server closes the connection (EOF or reset) and returns what it sent first.
/// Panics when the connection is still open after [`OUTER`].
async fn closed_by_server(s: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(OUTER, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server left the connection open");
    out
}

/// Sends one keep-alive `GET /healthz` and reads its whole response; returns the status.
async fn healthz(s: &mut TcpStream) -> u16 {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: tokend.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(OUTER, async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if got.len() >= end + 4 + length {
                    return head;
                }
            }
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response");
    read.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_within_the_header_read_timeout() {
    let app = spawn(&[("TOKEND_HEADER_READ_TIMEOUT", "1s")]).await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    assert!(closed_by_server(&mut s).await.is_empty());
    assert_eq!(
        healthz(&mut TcpStream::connect(app.addr).await.unwrap()).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_http2_preface_is_closed_within_the_header_read_timeout() {
    let app = spawn(&[("TOKEND_HEADER_READ_TIMEOUT", "1s")]).await;
    // The first 16 of the 24 preface bytes (RFC 9113 §3.4): still "might be HTTP/2".
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(closed_by_server(&mut s).await.is_empty());
}

/// An app serving TLS with a new self-signed certificate for `localhost` (and `settings`), and
/// a client connection to it past the handshake; the directory holds the certificate.
async fn over_tls(
    settings: &[(&str, &str)],
) -> (
    TestApp,
    tokio_rustls::client::TlsStream<TcpStream>,
    tempfile::TempDir,
) {
    use tokio_rustls::rustls;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mut settings = settings.to_vec();
    settings.push(("TOKEND_TLS_CERT", cert_path.to_str().unwrap()));
    settings.push(("TOKEND_TLS_KEY", key_path.to_str().unwrap()));
    let app = spawn(&settings).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("handshake");
    (app, tls, dir)
}

/// What tokend answers over its own TLS carries `Strict-Transport-Security` (RFC 6797
/// §6.1); over plain HTTP it does not (RFC 6797 §7.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_its_own_tls_carry_strict_transport_security() {
    let (_app, mut tls, _dir) = over_tls(&[]).await;
    tls.write_all(
        b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&closed_by_server(&mut tls).await).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(
        answer.contains("strict-transport-security: max-age=31536000\r\n"),
        "{answer}"
    );

    let plain = spawn(&[]).await;
    let res = plain
        .http
        .get(plain.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("strict-transport-security").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_silent_after_the_handshake_is_closed() {
    let (_app, mut tls, _dir) = over_tls(&[("TOKEND_HEADER_READ_TIMEOUT", "1s")]).await;
    assert!(closed_by_server(&mut tls).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // A header-read timeout far beyond the test's bound: only the idle timeout can close it.
    let app = spawn(&[
        ("TOKEND_HEADER_READ_TIMEOUT", "120s"),
        ("TOKEND_IDLE_TIMEOUT", "1s"),
    ])
    .await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(healthz(&mut s).await, 200);
    assert!(closed_by_server(&mut s).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_keep_alive_requests_the_idle_timeout_rules_and_a_started_head_the_header_timeout()
{
    let app = spawn(&[
        ("TOKEND_HEADER_READ_TIMEOUT", "1s"),
        ("TOKEND_IDLE_TIMEOUT", "120s"),
    ])
    .await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(healthz(&mut s).await, 200);
    // Idle for longer than the header-read timeout: the connection is still good. (The wait is
    // the subject of the test, not a stand-in for synchronisation.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(healthz(&mut s).await, 200);
    // Half a request line: from its first byte the header-read timeout runs.
    s.write_all(b"GET /healthz HT").await.unwrap();
    assert!(closed_by_server(&mut s).await.is_empty());
}

/// An HTTP/2 client with prior knowledge (h2c), its connection driven by a task whose end is
/// the end of the connection.
async fn h2c(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, driver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2c_connection_is_closed_after_the_idle_timeout() {
    let app = spawn(&[
        ("TOKEND_HEADER_READ_TIMEOUT", "120s"),
        ("TOKEND_IDLE_TIMEOUT", "1s"),
    ])
    .await;
    let (mut sender, driver) = h2c(app.addr).await;
    let req = http::Request::get(format!("http://{}/healthz", app.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);
    res.into_body().collect().await.unwrap();
    tokio::time::timeout(OUTER, driver)
        .await
        .expect("the server closes the idle HTTP/2 connection")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_connection_that_never_sends_a_request_is_closed() {
    let app = spawn(&[("TOKEND_HEADER_READ_TIMEOUT", "1s")]).await;
    // A full preface and SETTINGS, then nothing: HTTP/2 was detected, no request came.
    let (_sender, driver) = h2c(app.addr).await;
    tokio::time::timeout(OUTER, driver)
        .await
        .expect("the server closes the silent HTTP/2 connection")
        .unwrap();
}

/// An HPACK string literal without Huffman coding (RFC 7541 §5.2), for short strings.
fn hpack_literal(s: &str) -> Vec<u8> {
    let mut out = vec![u8::try_from(s.len()).unwrap()];
    out.extend_from_slice(s.as_bytes());
    out
}

/// An HTTP/2 frame header (RFC 9113 §4.1) followed by its payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_http2_peer_with_an_open_stream_is_found_by_keep_alive_pings() {
    // The request would wait a minute for its body; idle and header timeouts of 1 s make the
    // server PING after 1 s of silence and give up 1 s later.
    let app = spawn(&[
        ("TOKEND_HEADER_READ_TIMEOUT", "1s"),
        ("TOKEND_IDLE_TIMEOUT", "1s"),
        ("TOKEND_REQUEST_TIMEOUT", "120s"),
    ])
    .await;
    let mut headers = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
    headers.push(0x04); // :path, literal without indexing
    headers.extend(hpack_literal("/auth/register"));
    headers.push(0x01); // :authority
    headers.extend(hpack_literal("tokend.test"));
    headers.extend([0x0f, 0x10]); // content-type (static index 31)
    headers.extend(hpack_literal("application/json"));
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
    bytes.extend(h2_frame(0x1, 0x4, 1, &headers)); // HEADERS, END_HEADERS, stream open
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    // From here on the client is dead: it reads, but never answers (not even a PING).
    let sent = closed_by_server(&mut s).await;
    // The server's SETTINGS and at least one PING (type 0x6) came before the close.
    let mut frames = Vec::new();
    let mut rest = &sent[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        frames.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(frames.contains(&0x6), "frames sent: {frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_and_are_served_when_one_closes() {
    let app = spawn(&[("TOKEND_MAX_CONNECTIONS", "2")]).await;
    let mut a = TcpStream::connect(app.addr).await.unwrap();
    let mut b = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(healthz(&mut a).await, 200);
    assert_eq!(healthz(&mut b).await, 200);
    // The third connection is not refused: it waits in the listen backlog...
    let mut c = TcpStream::connect(app.addr).await.unwrap();
    let waiting = tokio::spawn(async move {
        let status = healthz(&mut c).await;
        (status, c)
    });
    // ...unanswered while both slots are held (correct code never answers it here, so this
    // negative check cannot fail spuriously)...
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "served beyond TOKEND_MAX_CONNECTIONS"
    );
    assert_eq!(healthz(&mut b).await, 200);
    // ...and served as soon as one closes.
    drop(a);
    let (status, _c) = tokio::time::timeout(OUTER, waiting)
        .await
        .expect("the waiting connection is served")
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_ip_cap_are_closed_at_once() {
    // A long header-read timeout: only the per-IP cap can close the third connection in time.
    let app = spawn(&[
        ("TOKEND_MAX_CONNECTIONS_PER_IP", "2"),
        ("TOKEND_HEADER_READ_TIMEOUT", "120s"),
    ])
    .await;
    let mut a = TcpStream::connect(app.addr).await.unwrap();
    let mut b = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(healthz(&mut a).await, 200);
    assert_eq!(healthz(&mut b).await, 200);
    let mut c = TcpStream::connect(app.addr).await.unwrap();
    assert!(closed_by_server(&mut c).await.is_empty());
    // The two admitted ones still work, and a closed one frees its slot.
    assert_eq!(healthz(&mut a).await, 200);
    drop(b);
    // The server notices the close asynchronously: a new connection is admitted once it has.
    let served = tokio::time::timeout(OUTER, async {
        loop {
            let mut d = TcpStream::connect(app.addr).await.unwrap();
            if d.write_all(b"GET /healthz HTTP/1.1\r\nHost: tokend.test\r\n\r\n")
                .await
                .is_ok()
            {
                let mut first = [0u8; 12];
                if d.read_exact(&mut first).await.is_ok() {
                    return first;
                }
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a slot frees up");
    assert_eq!(&served, b"HTTP/1.1 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_are_exempt_from_the_per_ip_cap() {
    let app = spawn(&[
        ("TOKEND_MAX_CONNECTIONS_PER_IP", "1"),
        ("TOKEND_TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let mut a = TcpStream::connect(app.addr).await.unwrap();
    let mut b = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(healthz(&mut a).await, 200);
    assert_eq!(healthz(&mut b).await, 200);
}

/// A login attempt through the proxy at 127.0.0.1 with these `X-Forwarded-For` headers (for an
/// account of its own, so only the IP limit can answer 429).
async fn login_via_proxy(app: &TestApp, xff: &[&str]) -> StatusCode {
    let email = format!("{}@example.com", crate::services::unique_name("nobody"));
    let mut req = app
        .http
        .post(app.url("/auth/login"))
        .json(&json!({"email": email, "password": "not the password"}));
    for v in xff {
        req = req.header("x-forwarded-for", *v);
    }
    req.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_ip_budget() {
    let app = spawn(&[
        ("TOKEND_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8"),
        ("TOKEND_RATE_LIMIT_IP", "2/min"),
    ])
    .await;
    // The same client in four spellings: a junk entry after it, a port, split over two
    // headers, another proxy of ours after it.
    let one = [
        &["198.51.100.1, junk"][..],
        &["198.51.100.1:5678"],
        &["203.0.113.9", "198.51.100.1"],
        &["198.51.100.1, 10.1.2.3"],
    ];
    for (i, xff) in one.iter().enumerate() {
        let status = login_via_proxy(&app, xff).await;
        let expected_limited = i >= 2;
        assert_eq!(
            status == StatusCode::TOO_MANY_REQUESTS,
            expected_limited,
            "{xff:?}: {status}"
        );
    }
    // Other clients behind the same proxy are not charged for it (the old parser fell back to
    // the proxy's address for junk and ports, so every one of these shared its budget).
    for xff in [
        &["198.51.100.2, junk"][..],
        &["[2001:db8::2]:443"],
        &["junk", "198.51.100.3"],
    ] {
        assert_ne!(
            login_via_proxy(&app, xff).await,
            StatusCode::TOO_MANY_REQUESTS,
            "{xff:?}"
        );
    }
    // When every entry is one of ours, the left-most is the client.
    assert_ne!(
        login_via_proxy(&app, &["10.9.9.9, 10.1.2.3"]).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}
