//! Value syntaxes shared by several variables: durations, sizes, switches, bounded numbers,
//! socket addresses. Each returns the message of its error; the reader adds the variable.

use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

/// Parses `90s`, `15m`, `1h`, `7d` (also compound humantime forms like `1h30m`); zero is refused.
pub(crate) fn parse_duration(v: &str) -> Result<Duration, String> {
    let d = parse_duration_allow_zero(v)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// [`parse_duration`], zero included.
pub(crate) fn parse_duration_allow_zero(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    if v.chars().all(|c| c.is_ascii_digit()) && !v.is_empty() {
        return Err(format!("{v:?} needs a unit: s, m, h or d"));
    }
    let d = humantime::parse_duration(v)
        .map_err(|e| format!("{v:?} is not a duration like 30s, 15m, 1h, 7d ({e})"))?;
    if d > Duration::from_secs(10 * 365 * 86_400) {
        return Err("must be at most ten years".into());
    }
    Ok(d)
}

/// A duration as `tokend check-config` shows it (`15m`, `14days`).
pub(crate) fn show_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Bytes, `KiB`/`k` or `MiB`/`m`, from 256 bytes to 16 MiB.
pub(crate) fn parse_size(v: &str) -> Result<usize, String> {
    let v = v.trim();
    let (num, mult) = if let Some(n) = v.strip_suffix("KiB").or_else(|| v.strip_suffix('k')) {
        (n, 1024)
    } else if let Some(n) = v.strip_suffix("MiB").or_else(|| v.strip_suffix('m')) {
        (n, 1024 * 1024)
    } else {
        (v, 1)
    };
    let n: usize = num
        .trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a size like 16384 or 16KiB"))?;
    let size = n.saturating_mul(mult);
    if !(256..=16 * 1024 * 1024).contains(&size) {
        return Err("must be between 256 bytes and 16 MiB".into());
    }
    Ok(size)
}

/// `on`/`true`/`1` or `off`/`false`/`0`, any case.
pub(crate) fn parse_switch(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err("expected on or off".into()),
    }
}

/// A switch as `tokend check-config` shows it.
pub(crate) fn show_switch(on: bool) -> String {
    if on { "on" } else { "off" }.to_string()
}

/// A number within `range`; anything else is refused with `expected`.
pub(crate) fn parse_in<T>(v: &str, range: RangeInclusive<T>, expected: &str) -> Result<T, String>
where
    T: FromStr + PartialOrd,
{
    v.trim()
        .parse::<T>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| expected.to_string())
}

/// `HOST:PORT`; `example` completes the message.
pub(crate) fn parse_socket_addr(v: &str, example: &str) -> Result<SocketAddr, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("expected HOST:PORT, e.g. {example}"))
}

/// A comma list as `tokend check-config` shows it.
pub(crate) fn show_list<T: Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_documented_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("").is_err());
    }
}
