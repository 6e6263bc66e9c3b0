//! The only place that knows HTTP: the server, the layer stack, the route table, the router,
//! the error mapping, one thin handler file per surface, and the one outbound fetch (a
//! `private_key_jwt` client's `jwks_uri`, `fetch.rs`).

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod authorize;
mod conn;
pub(crate) mod device;
pub(crate) mod error;
pub(crate) mod fetch;
mod link;
pub(crate) mod oauth;
pub(crate) mod openapi;
pub(crate) mod ops;
pub mod pages;
pub(crate) mod registration;
pub(crate) mod reset;
pub mod router;
pub mod routes;
pub(crate) mod server;
pub(crate) mod stack;
pub mod state;
pub(crate) mod users;
pub(crate) mod verify;
pub mod wellknown;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub(crate) use error::ApiError;

/// What every handler returns.
pub(crate) type ApiResult = Result<Response<Full<Bytes>>, ApiError>;

/// Reads a body of at most `limit` bytes.
pub(crate) async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(ApiError::PayloadTooLarge { limit });
        }
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(e) => Err(ApiError::InvalidRequest(format!(
            "could not read body: {e}"
        ))),
    }
}

fn media_type(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
}

/// Reads the bytes of a JSON body: 415 unless `Content-Type: application/json`, 413 when too
/// large. What they mean is for the caller to parse.
pub(crate) async fn read_json_bytes(
    req: Request<Incoming>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let ok = media_type(&req).is_some_and(|m| m == "application/json" || m.ends_with("+json"));
    if !ok {
        return Err(ApiError::UnsupportedMediaType {
            expected: "application/json",
        });
    }
    read_body(req, limit).await
}

/// Reads a JSON body into `T`: 415 unless `Content-Type: application/json`, 413 when too large,
/// 400 naming the problem when it does not parse.
pub(crate) async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, ApiError> {
    let body = read_json_bytes(req, limit).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
}

/// Reads an `application/x-www-form-urlencoded` body into `T`.
pub(crate) async fn read_form<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, ApiError> {
    let ok = media_type(&req).is_some_and(|m| m == "application/x-www-form-urlencoded");
    if !ok {
        return Err(ApiError::UnsupportedMediaType {
            expected: "application/x-www-form-urlencoded",
        });
    }
    let body = read_body(req, limit).await?;
    serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid form body: {e}")))
}

/// A form (`F`) with the parameters that may be sent more than once: `resource` (RFC 8707
/// §2) and `audience` (RFC 8693 §2.1). The form decoder reads each other parameter once and
/// refuses one sent twice (RFC 6749 §3.2); these two are collected in order, empty values
/// dropped (RFC 6749 §3.1: a parameter without a value counts as omitted).
#[derive(Debug, Default)]
pub(crate) struct WithLists<F> {
    pub(crate) form: F,
    pub(crate) resource: Vec<String>,
    pub(crate) audience: Vec<String>,
}

/// The parameters [`WithLists`] collects.
const LIST_PARAMS: [&str; 2] = ["resource", "audience"];

impl<'de, F: DeserializeOwned> serde::Deserialize<'de> for WithLists<F> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let pairs = <Vec<(String, String)> as serde::Deserialize>::deserialize(d)?;
        let mut resource = Vec::new();
        let mut audience = Vec::new();
        let mut rest: Vec<&(String, String)> = Vec::with_capacity(pairs.len());
        for pair in &pairs {
            match pair.0.as_str() {
                "resource" if !pair.1.is_empty() => resource.push(pair.1.clone()),
                "audience" if !pair.1.is_empty() => audience.push(pair.1.clone()),
                k if LIST_PARAMS.contains(&k) => {}
                _ => rest.push(pair),
            }
        }
        // The other parameters, decoded as the form always was.
        let encoded = serde_urlencoded::to_string(&rest).map_err(D::Error::custom)?;
        let form = serde_urlencoded::from_str(&encoded).map_err(D::Error::custom)?;
        Ok(WithLists {
            form,
            resource,
            audience,
        })
    }
}

/// The bearer token of the `Authorization` header (RFC 6750 §2.1), parsed by the rules the
/// resource-server verifier shares (`tokend_token_shape::bearer`).
pub(crate) fn bearer<B>(req: &Request<B>) -> Result<String, ApiError> {
    tokend_token_shape::bearer::from_headers(req.headers())
        .map(str::to_string)
        .map_err(error::bearer_refusal)
}

/// The request's `DPoP` header (RFC 9449 §4.1), parsed by the rules the resource-server
/// verifier shares (`tokend_token_shape::dpop`).
pub(crate) fn proof_header<B>(req: &Request<B>) -> crate::domain::dpop::ProofHeader {
    use crate::domain::dpop::ProofHeader;
    match tokend_token_shape::dpop::proof_header(req.headers()) {
        Ok(None) => ProofHeader::Absent,
        Ok(Some(p)) => ProofHeader::One(p.to_string()),
        Err(r) => ProofHeader::Unusable(r),
    }
}

/// A JSON response.
pub(crate) fn json<T: Serialize>(status: StatusCode, body: &T) -> ApiResult {
    let bytes = serde_json::to_vec(body)
        .map_err(|e| ApiError::Internal(format!("serialising response: {e}")))?;
    let mut res = Response::new(Full::new(Bytes::from(bytes)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

/// A JSON response carrying tokens: never cached (RFC 6749 §5.1).
pub(crate) fn json_no_store<T: Serialize>(status: StatusCode, body: &T) -> ApiResult {
    let mut res = json(status, body)?;
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(res)
}

/// An empty response.
pub(crate) fn empty(status: StatusCode) -> ApiResult {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = status;
    Ok(res)
}

/// The rate-limit key of every client behind a trusted proxy whose `X-Forwarded-For` names no
/// usable address (absent, empty or all junk): one shared bucket, never the proxy's own address.
/// Proxies that follow the convention always append the address they received the request from,
/// so only a misconfigured proxy lands here.
pub(crate) const UNKNOWN_CLIENT: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// The client's IP (docs/hardening.md): the TCP peer, unless the peer is in `TOKEND_TRUSTED_PROXIES`.
///
/// From a trusted peer the client comes from `X-Forwarded-For`: every such header in order,
/// read as one comma-separated list, entry by entry from the right. An entry may carry a port
/// (`192.0.2.1:5678`, `[2001:db8::1]:80`); an entry that is not an address is skipped. The client
/// is the right-most entry that is not itself a trusted proxy; when every entry is a trusted
/// proxy, the left-most one (the request started inside the trusted network). With no usable
/// entry at all the client is [`UNKNOWN_CLIENT`].
pub(crate) fn client_ip<B>(req: &Request<B>, trusted: &[crate::config::IpNet]) -> Option<IpAddr> {
    let peer = req
        .extensions()
        .get::<server::PeerAddr>()?
        .0
        .ip()
        .to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let headers = req.headers().get_all("x-forwarded-for");
    let entries = headers
        .iter()
        .rev()
        .flat_map(|v| v.as_bytes().rsplit(|b| *b == b','))
        .filter_map(forwarded_ip);
    let mut leftmost_proxy = None;
    for ip in entries {
        if !is_trusted(ip) {
            return Some(ip);
        }
        leftmost_proxy = Some(ip);
    }
    Some(leftmost_proxy.unwrap_or(UNKNOWN_CLIENT))
}

/// Where a request came from, as a new session and an account event record it: the client
/// address of [`client_ip`] (none when unknown) and the `User-Agent` (docs/sessions.md).
pub(crate) fn origin<B>(
    req: &Request<B>,
    trusted: &[crate::config::IpNet],
) -> crate::domain::events::Origin {
    let ip = client_ip(req, trusted).filter(|ip| *ip != UNKNOWN_CLIENT);
    let user_agent = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    crate::domain::events::Origin::new(ip, user_agent)
}

/// One `X-Forwarded-For` entry as an address: `192.0.2.1`, `2001:db8::1`, with or without a
/// port (`192.0.2.1:80`, `[2001:db8::1]:80`, `[2001:db8::1]`); `None` for anything else.
fn forwarded_ip(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?.trim();
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse::<Ipv6Addr>().ok())
                .map(IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpNet;

    const PROXY: &str = "10.0.0.1:40000";

    fn trusted() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]
    }

    fn ip_of(peer: &str, xff: &[&str]) -> IpAddr {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(server::PeerAddr(peer.parse().unwrap()));
        for v in xff {
            req.headers_mut().append(
                "x-forwarded-for",
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        client_ip(&req, &trusted()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[derive(Debug, Default, serde::Deserialize)]
    struct Form {
        scope: Option<String>,
        grant_type: Option<String>,
    }

    #[test]
    fn resource_and_audience_may_repeat_and_everything_else_decodes_as_before() {
        let f: WithLists<Form> = serde_urlencoded::from_str(
            "grant_type=x&resource=https%3A%2F%2Fa.example&audience=orders&resource=\
             https%3A%2F%2Fb.example&resource=&scope=read+write&other=1&other=2",
        )
        .unwrap();
        assert_eq!(f.form.grant_type.as_deref(), Some("x"));
        assert_eq!(f.form.scope.as_deref(), Some("read write"));
        assert_eq!(f.resource, ["https://a.example", "https://b.example"]);
        assert_eq!(f.audience, ["orders"]);
        // A parameter of the form sent twice is still refused (RFC 6749 §3.2).
        assert!(serde_urlencoded::from_str::<WithLists<Form>>("scope=a&scope=b").is_err());
        let empty: WithLists<Form> = serde_urlencoded::from_str("").unwrap();
        assert!(empty.resource.is_empty() && empty.form.scope.is_none());
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(ip_of("192.0.2.9:1234", &["198.51.100.1"]), ip("192.0.2.9"));
        assert_eq!(ip_of("[::ffff:192.0.2.9]:1234", &[]), ip("192.0.2.9"));
    }

    #[test]
    fn the_client_is_the_right_most_entry_that_is_not_a_trusted_proxy() {
        assert_eq!(ip_of(PROXY, &["198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(
            ip_of(PROXY, &["203.0.113.66, 198.51.100.1, 10.0.0.2"]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn junk_entries_are_skipped_not_taken_for_the_proxy() {
        assert_eq!(ip_of(PROXY, &["198.51.100.1, junk"]), ip("198.51.100.1"));
        assert_eq!(
            ip_of(PROXY, &["198.51.100.1,,unknown, "]),
            ip("198.51.100.1")
        );
        assert_eq!(
            ip_of(PROXY, &["198.51.100.1, 300.1.2.3"]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(ip_of(PROXY, &["198.51.100.1:5678"]), ip("198.51.100.1"));
        assert_eq!(ip_of(PROXY, &["[2001:db8::7]:80"]), ip("2001:db8::7"));
        assert_eq!(ip_of(PROXY, &["[2001:db8::7]"]), ip("2001:db8::7"));
        assert_eq!(ip_of(PROXY, &["2001:db8::7"]), ip("2001:db8::7"));
        // A trusted proxy, and the only entry: see all_trusted_entries_give_the_left_most.
        assert_eq!(ip_of(PROXY, &["[::1]:80"]), ip("::1"));
    }

    #[test]
    fn several_headers_are_one_list_in_order() {
        assert_eq!(
            ip_of(PROXY, &["203.0.113.66", "198.51.100.1, 10.0.0.3"]),
            ip("198.51.100.1")
        );
        assert_eq!(ip_of(PROXY, &["203.0.113.66", "junk"]), ip("203.0.113.66"));
        assert_eq!(
            ip_of(PROXY, &["198.51.100.1", "10.0.0.3"]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn all_trusted_entries_give_the_left_most() {
        assert_eq!(ip_of(PROXY, &["10.0.0.7, 10.0.0.3"]), ip("10.0.0.7"));
        assert_eq!(ip_of(PROXY, &["junk, 10.0.0.7"]), ip("10.0.0.7"));
    }

    #[test]
    fn nothing_usable_is_the_shared_unknown_key_never_the_proxy() {
        for xff in [&[][..], &[""], &["junk"], &["junk, , nonsense:99"]] {
            assert_eq!(ip_of(PROXY, xff), UNKNOWN_CLIENT, "{xff:?}");
        }
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(server::PeerAddr(PROXY.parse().unwrap()));
        req.headers_mut().append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.1, \xc3").unwrap(),
        );
        assert_eq!(client_ip(&req, &trusted()), Some(ip("198.51.100.1")));
    }
}
