//! Logging: the filter and the line format, and how long account events are kept (the audit
//! trail, docs/events.md).

use std::time::Duration;

use super::env::Reader;
use super::values::parse_duration;
use super::vars;

/// The settings of this concern, validated.
pub(super) struct Logging {
    pub(super) log: String,
    pub(super) log_format: LogFormat,
    pub(super) events_retention: Duration,
}

pub(super) fn read(r: &mut Reader<'_>) -> Option<Logging> {
    let log = r.value(&vars::LOG, |v| {
        tracing_subscriber::EnvFilter::try_new(v)
            .map(|_| v.to_string())
            .map_err(|e| e.to_string())
    });
    let log_format = r.value(&vars::LOG_FORMAT, parse_log_format);
    let events_retention = r.value(&vars::EVENTS_RETENTION, parse_retention);
    Some(Logging {
        log: log?,
        log_format: log_format?,
        events_retention: events_retention?,
    })
}

/// A duration of at least one hour (and, like every duration, at most ten years).
fn parse_retention(v: &str) -> Result<Duration, String> {
    let d = parse_duration(v)?;
    if d < Duration::from_secs(3600) {
        return Err("must be at least 1h".into());
    }
    Ok(d)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The name `TOKEND_LOG_FORMAT` takes.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

fn parse_log_format(v: &str) -> Result<LogFormat, String> {
    match v.to_ascii_lowercase().as_str() {
        "text" | "pretty" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".into()),
    }
}
