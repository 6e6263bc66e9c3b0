//! One connection's clock (docs/hardening.md, "Connections"): how long it may take to send a request head,
//! how long it may sit idle, and closing it when either runs out.
//!
//! hyper's own HTTP/1 header-read timer starts only once the auto builder has told HTTP/1 from
//! HTTP/2, and it also runs between keep-alive requests, so it would cap the idle timeout at the
//! header timeout; HTTP/2 has no idle timeout at all. So the deadlines live here, for both
//! protocols and from the moment of accept:
//!
//! - until the first request head is complete: `TOKEND_HEADER_READ_TIMEOUT` from accept (TLS
//!   handshake and protocol detection included);
//! - while no request is in flight: `TOKEND_IDLE_TIMEOUT` from the end of the last one (HTTP/1
//!   between keep-alive requests, HTTP/2 with no open stream);
//! - HTTP/1 only: from the first byte of the next request, `TOKEND_HEADER_READ_TIMEOUT` to
//!   complete its head (README, "Security notes").
//!
//! A request is in flight from the moment hyper hands its head to the service until its response
//! body is dropped (fully written, or the stream reset).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::ServiceExt;

use super::server::PeerAddr;

/// What a connection owes the server next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owes {
    /// A complete request head: the first one, or an HTTP/1 one whose first byte has arrived.
    Head,
    /// Only its next request, if any: the connection is idle.
    Nothing,
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    owes: Owes,
    /// When `owes` started: accept, the end of the last request, or the next request's first byte.
    since: Instant,
    /// Learned from the first request; HTTP/2 bytes while idle (PING, SETTINGS) start no head.
    http2: bool,
}

/// The activity of one connection, shared by its IO, its service and the task that drives it.
#[derive(Debug)]
pub(super) struct Activity {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    state: Mutex<State>,
    /// Set while an HTTP/1 connection is idle: the next byte read starts the header timer.
    idle_http1: AtomicBool,
    /// The task driving the connection. HTTP/1 requests start and end inside its own poll of
    /// the connection, and so do HTTP/2 requests start; only an HTTP/2 request, served on a task
    /// of its own, needs to wake it when it ends.
    driver: AtomicWaker,
}

/// Why a connection's time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Head,
    Idle,
}

impl Activity {
    pub(super) fn new(
        accepted_at: Instant,
        header_read_timeout: Duration,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Activity {
            header_read_timeout,
            idle_timeout,
            state: Mutex::new(State {
                in_flight: 0,
                owes: Owes::Head,
                since: accepted_at,
                http2: false,
            }),
            idle_http1: AtomicBool::new(false),
            driver: AtomicWaker::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the connection runs out of time and why; `None` while a request is in flight.
    fn deadline(&self) -> Option<(Instant, Expired)> {
        let s = self.state();
        if s.in_flight > 0 {
            return None;
        }
        Some(match s.owes {
            Owes::Head => (s.since + self.header_read_timeout, Expired::Head),
            Owes::Nothing => (s.since + self.idle_timeout, Expired::Idle),
        })
    }

    /// When a connection asked to close at `asked` must be gone: the header-read timeout after
    /// `asked` or after its last request ended, whichever is later; `None` while one is in flight.
    fn close_due(&self, asked: Instant) -> Option<Instant> {
        let s = self.state();
        (s.in_flight == 0).then(|| s.since.max(asked) + self.header_read_timeout)
    }

    /// A request head arrived and goes to the service (on the driving task).
    fn start(self: &Arc<Self>, version: Version) -> InFlight {
        self.idle_http1.store(false, Ordering::Relaxed);
        let mut s = self.state();
        s.in_flight += 1;
        s.http2 = version == Version::HTTP_2;
        InFlight(self.clone())
    }

    fn finish(&self) {
        let http2 = {
            let mut s = self.state();
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.owes = Owes::Nothing;
                s.since = Instant::now();
                self.idle_http1.store(!s.http2, Ordering::Relaxed);
            }
            s.http2
        };
        if http2 {
            self.driver.wake();
        }
    }

    /// Bytes arrived (on the driving task). On an idle HTTP/1 connection they begin the next
    /// request head. Bytes of a pipelined request read while one is in flight do not: its head
    /// is then bounded by the idle timeout.
    fn read_some(&self) {
        if !self.idle_http1.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut s = self.state();
        if s.in_flight == 0 && s.owes == Owes::Nothing {
            s.owes = Owes::Head;
            s.since = Instant::now();
        }
    }
}

/// One request in flight; dropping it ends the request.
#[derive(Debug)]
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finish();
    }
}

pin_project! {
    /// A response body that ends its request when hyper drops it.
    pub(super) struct Tracked<B> {
        #[pin]
        body: B,
        in_flight: InFlight,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket (plain or TLS), telling its [`Activity`] when bytes arrive.
pub(super) struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub(super) fn new(io: T, activity: Arc<Activity>) -> Self {
        Watched { io, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read_some();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves one connection until it ends, its time runs out, or `stop` asks it to finish.
///
/// Out of time waiting for a request head, the connection is dropped at once (a slow or silent
/// client). Idle too long, it is closed gracefully: HTTP/1 closes at once since nothing is in
/// progress, HTTP/2 sends GOAWAY (RFC 9113 §6.8) so the client knows no request was lost; a
/// peer that does not complete that close within the header-read timeout is dropped.
pub(super) async fn drive<I, S, B>(
    io: Watched<I>,
    peer: SocketAddr,
    builder: &auto::Builder<TokioExecutor>,
    service: S,
    activity: Arc<Activity>,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tracker = activity.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        let in_flight = tracker.start(req.version());
        let call = service.clone().oneshot(req);
        async move {
            let res = call.await?;
            Ok::<_, S::Error>(res.map(|body| Tracked { body, in_flight }))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let mut stop_signal = std::pin::pin!(stop.changed());
    let mut stopping = false;
    // Set when an idle connection was asked to close; it then has the header-read timeout to do
    // so once nothing is in flight.
    let mut closing_since: Option<Instant> = None;
    // The timer is armed no later than the deadline, and only moved earlier as the deadline
    // moves: a keep-alive connection's deadline moves later with every request, and re-arming
    // the timer each time would cost more than one early wake-up per timeout period.
    let mut timer = std::pin::pin!(tokio::time::sleep_until(Instant::now()));
    let mut armed: Option<Instant> = None;
    std::future::poll_fn(|cx| loop {
        activity.driver.register(cx.waker());
        if !stopping && stop_signal.as_mut().poll(cx).is_ready() {
            stopping = true;
            conn.as_mut().graceful_shutdown();
        }
        if let Poll::Ready(ended) = conn.as_mut().poll(cx) {
            if let Err(e) = ended {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            return Poll::Ready(());
        }
        let due = match closing_since {
            Some(asked) => activity.close_due(asked).map(|at| (at, None)),
            None => activity.deadline().map(|(at, why)| (at, Some(why))),
        };
        let Some((at, why)) = due else {
            return Poll::Pending;
        };
        if armed.is_none_or(|armed| armed > at) {
            timer.as_mut().reset(at);
            armed = Some(at);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        armed = None;
        if at > Instant::now() {
            continue; // woke early: re-arm for the deadline as it is now
        }
        match why {
            Some(Expired::Head) => {
                tracing::debug!(peer = %peer, "no complete request head within the header-read timeout; closed");
                return Poll::Ready(());
            }
            Some(Expired::Idle) => {
                tracing::debug!(peer = %peer, "idle timeout; closing");
                conn.as_mut().graceful_shutdown();
                closing_since = Some(Instant::now());
            }
            None => {
                tracing::debug!(peer = %peer, "idle connection did not close in time; dropped");
                return Poll::Ready(());
            }
        }
    })
    .await;
}
