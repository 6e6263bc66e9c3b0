//! Logging set-up and the shutdown signal.

use std::io::{IsTerminal, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Log lines queued for the writer thread at most; a full queue makes loggers wait (no line is
/// ever dropped).
const QUEUE_LINES: usize = 16 * 1024;
/// Bytes the writer thread gathers into one `write` at most.
const BATCH_BYTES: usize = 256 * 1024;

/// Installs the global subscriber: `filter` as `TOKEND_LOG`, text or JSON lines on stderr
/// (coloured only when stderr is a terminal). Lines are formatted where they are logged and
/// written, in order, by one thread that gathers whatever is queued into one `write`: under
/// load a request no longer pays a system call for its log line. Keep the returned guard until
/// exit: dropping it waits for the queued lines to be written.
pub fn init(filter: &str, format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = LogWriter::spawn();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// Where log lines go: the writer thread's queue, or stderr directly when no thread could be
/// started.
#[derive(Clone)]
pub struct LogWriter {
    queue: Option<SyncSender<Msg>>,
}

impl LogWriter {
    fn spawn() -> (LogWriter, LogGuard) {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let started = std::thread::Builder::new()
            .name("tokend-log".into())
            .spawn(move || write_lines(rx))
            .is_ok();
        let queue = started.then_some(tx);
        (
            LogWriter {
                queue: queue.clone(),
            },
            LogGuard { queue },
        )
    }
}

/// The writer thread: waits for a line, takes every line queued behind it, writes them at once.
fn write_lines(rx: Receiver<Msg>) {
    let mut out = std::io::stderr();
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut acks = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(line) => batch.extend_from_slice(&line),
                Msg::Flush(ack) => acks.push(ack),
            }
            if batch.len() < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// One log line being formatted; queued as a whole when dropped.
pub struct LineWriter<'a> {
    queue: Option<&'a SyncSender<Msg>>,
    buf: Vec<u8>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self.queue {
            Some(_) => self.buf.extend_from_slice(bytes),
            None => std::io::stderr().write_all(bytes)?,
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if let Some(queue) = self.queue {
            if !self.buf.is_empty() {
                let line = std::mem::take(&mut self.buf);
                if let Err(mpsc::SendError(Msg::Line(line))) = queue.send(Msg::Line(line)) {
                    let _ = std::io::stderr().write_all(&line);
                }
            }
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            queue: self.queue.as_ref(),
            buf: Vec::new(),
        }
    }
}

/// Flushes the queued log lines when dropped.
pub struct LogGuard {
    queue: Option<SyncSender<Msg>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(queue) = &self.queue {
            let (ack, done) = mpsc::sync_channel(1);
            if queue.send(Msg::Flush(ack)).is_ok() {
                let _ = done.recv_timeout(Duration::from_secs(5));
            }
        }
    }
}

/// Installs SIGTERM and SIGINT handlers now and returns a future that resolves on the first
/// of them. Installing eagerly means a signal that arrives while the server is starting is not
/// lost.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("SIGTERM received"),
                        _ = int.recv() => tracing::info!("SIGINT received"),
                    }
                }
                _ => {
                    tracing::warn!("cannot install signal handlers; falling back to Ctrl-C");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
