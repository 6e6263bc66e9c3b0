//! Listeners and connections: the API and metrics addresses, TLS, the connection caps and
//! deadlines, the body limit, the shutdown grace, and the proxies whose `X-Forwarded-For` is
//! believed (the README's security notes).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::env::Reader;
use super::values::{parse_duration, parse_in, parse_size, parse_socket_addr};
use super::vars::{self, Var};

/// Upper bound of both connection caps.
pub(crate) const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

/// The settings of this concern, validated.
pub(super) struct Server {
    pub(super) listen: SocketAddr,
    pub(super) metrics_listen: Option<SocketAddr>,
    pub(super) tls: Option<(PathBuf, PathBuf)>,
    pub(super) body_limit: usize,
    pub(super) request_timeout: Duration,
    pub(super) header_read_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) max_connections: usize,
    pub(super) max_connections_per_ip: usize,
    pub(super) shutdown_grace: Duration,
    pub(super) trusted_proxies: Vec<IpNet>,
}

pub(super) fn read(r: &mut Reader<'_>) -> Option<Server> {
    let listen = r.value(&vars::LISTEN, |v| parse_socket_addr(v, "127.0.0.1:5000"));
    let metrics_listen = r.optional(&vars::METRICS_LISTEN, |v| {
        parse_socket_addr(v, "127.0.0.1:9100")
    });
    let tls = read_tls(r);
    let body_limit = r.value(&vars::BODY_LIMIT, parse_size);
    let request_timeout = r.value(&vars::REQUEST_TIMEOUT, parse_duration);
    let header_read_timeout = r.value(&vars::HEADER_READ_TIMEOUT, parse_duration);
    let idle_timeout = r.value(&vars::IDLE_TIMEOUT, parse_duration);
    let max_connections = r.value(&vars::MAX_CONNECTIONS, parse_connection_cap);
    let max_connections_per_ip = r.value(&vars::MAX_CONNECTIONS_PER_IP, parse_connection_cap);
    let shutdown_grace = r.value(&vars::SHUTDOWN_GRACE, parse_duration);
    let trusted_proxies = r.optional(&vars::TRUSTED_PROXIES, parse_networks);
    Some(Server {
        listen: listen?,
        metrics_listen: metrics_listen?,
        tls: tls?,
        body_limit: body_limit?,
        request_timeout: request_timeout?,
        header_read_timeout: header_read_timeout?,
        idle_timeout: idle_timeout?,
        max_connections: max_connections?,
        max_connections_per_ip: max_connections_per_ip?,
        shutdown_grace: shutdown_grace?,
        trusted_proxies: trusted_proxies?.unwrap_or_default(),
    })
}

fn parse_connection_cap(v: &str) -> Result<usize, String> {
    parse_in(
        v,
        1..=MAX_CONNECTIONS_LIMIT,
        &format!("expected a whole number from 1 to {MAX_CONNECTIONS_LIMIT}"),
    )
}

/// `TOKEND_TLS_CERT` and `TOKEND_TLS_KEY`: both or neither, each a file.
fn read_tls(r: &mut Reader<'_>) -> Option<Option<(PathBuf, PathBuf)>> {
    let (cert_var, key_var): (&'static Var, &'static Var) = (&vars::TLS_CERT, &vars::TLS_KEY);
    match (r.trimmed(cert_var), r.trimmed(key_var)) {
        (None, None) => Some(None),
        (Some(_), None) => {
            r.fail(key_var, format!("required with {}", cert_var.name));
            None
        }
        (None, Some(_)) => {
            r.fail(cert_var, format!("required with {}", key_var.name));
            None
        }
        (Some(cert), Some(key)) => {
            let mut files = true;
            for (var, path) in [(cert_var, &cert), (key_var, &key)] {
                if !Path::new(path).is_file() {
                    r.fail(var, format!("{path:?} is not a readable file"));
                    files = false;
                }
            }
            files.then(|| Some((PathBuf::from(cert), PathBuf::from(key))))
        }
    }
}

/// A comma list of networks; blank items are skipped.
fn parse_networks(v: &str) -> Result<Vec<IpNet>, String> {
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// An IP network (`10.0.0.0/8`, `::1`), for `TOKEND_TRUSTED_PROXIES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub(crate) addr: IpAddr,
    pub(crate) prefix: u8,
}

impl IpNet {
    /// Whether `ip` is in this network; IPv4 and IPv4-mapped IPv6 addresses are one address.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            (IpAddr::V6(_), IpAddr::V4(v4)) => self.contains(IpAddr::V6(v4.to_ipv6_mapped())),
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has a bad prefix length"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_match() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        let one: IpNet = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        assert_eq!(one.to_string(), "::1/128");
    }
}
