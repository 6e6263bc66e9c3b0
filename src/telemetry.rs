//! Logging set-up and the shutdown signal.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// How long a log line waits at most before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// Queued bytes that wake the writer before its time.
const WAKE_BYTES: usize = 256 * 1024;
/// Queued bytes at which loggers wait for the writer (memory stays bounded, no line is lost).
const MAX_BYTES: usize = 8 * 1024 * 1024;

/// Installs the global subscriber: `filter` as `TOKEND_LOG`, text or JSON lines on stderr
/// (coloured only when stderr is a terminal). A line is formatted where it is logged and
/// appended to a queue that one thread writes out every few milliseconds in one `write`, in
/// order: under load a request no longer pays a system call for its log line. Keep the returned
/// guard until exit: dropping it writes what is still queued.
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

/// The queue between loggers and the writer thread.
#[derive(Default)]
struct Queue {
    bytes: Mutex<Vec<u8>>,
    /// Wakes the writer early (much queued, or a flush).
    wake: Condvar,
    /// Wakes loggers waiting for room.
    drained: Condvar,
    /// Held while a batch is taken and written, so batches reach stderr in order.
    writing: Mutex<()>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes what is queued and writes it.
    fn write_out(&self) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let batch = std::mem::take(&mut *self.lock());
        self.drained.notify_all();
        if !batch.is_empty() {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&batch);
            let _ = err.flush();
        }
    }

    fn run(&self) {
        loop {
            {
                let queued = self.lock();
                if queued.len() < WAKE_BYTES {
                    let _ = self.wake.wait_timeout(queued, FLUSH_EVERY);
                }
            }
            self.write_out();
        }
    }
}

/// Where log lines go: the writer thread's queue, or stderr directly when no thread could be
/// started.
#[derive(Clone)]
pub(crate) struct LogWriter {
    queue: Option<Arc<Queue>>,
}

impl LogWriter {
    fn spawn() -> (LogWriter, LogGuard) {
        let queue = Arc::new(Queue::default());
        let worker = queue.clone();
        let started = std::thread::Builder::new()
            .name("tokend-log".into())
            .spawn(move || worker.run())
            .is_ok();
        let queue = started.then_some(queue);
        (
            LogWriter {
                queue: queue.clone(),
            },
            LogGuard { queue },
        )
    }
}

/// Appends formatted log output to the queue (the formatter writes each line in one call).
pub(crate) struct LineWriter<'a> {
    queue: Option<&'a Queue>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let Some(queue) = self.queue else {
            return std::io::stderr().write(bytes);
        };
        let mut queued = queue.lock();
        while queued.len() >= MAX_BYTES {
            queue.wake.notify_one();
            queued = queue
                .drained
                .wait(queued)
                .unwrap_or_else(|e| e.into_inner());
        }
        queued.extend_from_slice(bytes);
        if queued.len() >= WAKE_BYTES {
            queue.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            queue: self.queue.as_deref(),
        }
    }
}

/// Writes the queued log lines when dropped.
pub struct LogGuard {
    queue: Option<Arc<Queue>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(queue) = &self.queue {
            queue.write_out();
        }
    }
}

/// Installs SIGTERM and SIGINT handlers now and returns a future that resolves on the first
/// of them. Installing eagerly means a signal that arrives while the server is starting is not
/// lost.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
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
