//! `ApiError`: every failure an HTTP client can see, mapped once to a status and an
//! RFC 6749 §5.2 / RFC 6750 §3 JSON body `{"error","error_description"}`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tokend_token_shape::bearer::BearerError;

use crate::domain::dpop::{ProofRefusal, CLIENT_ALGS};
use crate::domain::Error as DomainError;
use crate::domain::RefreshError;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400 `invalid_request`: malformed or invalid input.
    InvalidRequest(String),
    /// 401 `invalid_token` with `WWW-Authenticate: Bearer` (RFC 6750 §3.1), and a `DPoP`
    /// challenge beside it (RFC 9449 §7.1: tokend takes either scheme).
    InvalidToken(String),
    /// 401 `invalid_token` in the body for a request without any token; its challenges name
    /// no error (RFC 6750 §3.1: a request without authentication gets none): `Bearer
    /// realm="tokend"` and the `DPoP` challenge beside it.
    MissingToken,
    /// 401 `invalid_token` with `WWW-Authenticate: DPoP`: a token presented with the `DPoP`
    /// scheme was refused (RFC 9449 §7.1).
    DpopInvalidToken(String),
    /// 403 `insufficient_scope` for a DPoP-bound token, with the error in a `DPoP` challenge
    /// (RFC 9449 §7.1: the refusal of a bound token names the scheme it was presented with).
    DpopInsufficientScope(String),
    /// A DPoP proof refused: `invalid_dpop_proof`, or `use_dpop_nonce` for
    /// [`ProofRefusal::Nonce`] (RFC 9449 §5, §8, §9). At the token endpoint 400 (RFC 6749
    /// §5.2); on a protected route (`resource`) 401 with a `WWW-Authenticate: DPoP` challenge
    /// naming the error (RFC 9449 §7.1, §9).
    DpopProof {
        refusal: ProofRefusal,
        resource: bool,
    },
    /// 401 `invalid_grant`: wrong email or password on `/auth/login`.
    InvalidCredentials,
    /// 400 `invalid_grant` (RFC 6749 §5.2).
    InvalidGrant(String),
    /// 401 `invalid_grant` with `WWW-Authenticate: Bearer`: a refresh token presented as Bearer
    /// (the seed's `/auth/token/refresh`) was refused.
    BearerInvalidGrant(String),
    /// 401 `invalid_client` with `WWW-Authenticate: Basic` (RFC 6749 §5.2).
    InvalidClient(String),
    /// 400 `unauthorized_client`.
    UnauthorizedClient(String),
    /// 400 `unsupported_grant_type`.
    UnsupportedGrantType(String),
    /// 400 `invalid_scope`.
    InvalidScope(String),
    /// 400 `invalid_target` (RFC 8707 §2, RFC 8693 §2.2.2).
    InvalidTarget(String),
    /// 400 `invalid_redirect_uri` (RFC 7591 §3.2.2).
    InvalidRedirectUri(String),
    /// 400 `invalid_client_metadata` (RFC 7591 §3.2.2).
    InvalidClientMetadata(String),
    /// 400 with another code refusing an authorization request (`unsupported_response_type`,
    /// `request_not_supported`) where the client reads it directly (RFC 9126 §2.3).
    AuthorizationRefused {
        code: &'static str,
        description: String,
    },
    /// 400 with an RFC 8628 §3.5 code (`authorization_pending`, `slow_down`, `access_denied`,
    /// `expired_token`); `slow_down` also says the new `interval` in seconds.
    DeviceGrant {
        code: &'static str,
        description: String,
        interval: Option<i64>,
    },
    /// 403 with a specific code (`fresh_token_required`, `insufficient_role`).
    Forbidden {
        code: &'static str,
        description: String,
    },
    /// 404 `not_found`.
    NotFound,
    /// 405 `method_not_allowed` with `Allow`.
    MethodNotAllowed { allow: &'static str },
    /// 409 `conflict`.
    Conflict(String),
    /// 413 `payload_too_large`.
    PayloadTooLarge { limit: usize },
    /// 415 `unsupported_media_type`.
    UnsupportedMediaType { expected: &'static str },
    /// 429 `too_many_requests` with `Retry-After` seconds.
    TooManyRequests { retry_after: u64 },
    /// 503 `temporarily_unavailable`: a store is down; fail closed.
    Unavailable(String),
    /// 500 `server_error`; the cause is logged, never sent.
    Internal(String),
}

impl ApiError {
    /// The one mapping table: status and RFC `error` code.
    pub(crate) fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::InvalidToken(_) | ApiError::MissingToken | ApiError::DpopInvalidToken(_) => {
                (StatusCode::UNAUTHORIZED, "invalid_token")
            }
            ApiError::DpopInsufficientScope(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
            ApiError::DpopProof { refusal, resource } => {
                let status = if *resource {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::BAD_REQUEST
                };
                let code = if *refusal == ProofRefusal::Nonce {
                    "use_dpop_nonce"
                } else {
                    "invalid_dpop_proof"
                };
                (status, code)
            }
            ApiError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_grant"),
            ApiError::InvalidGrant(_) => (StatusCode::BAD_REQUEST, "invalid_grant"),
            ApiError::BearerInvalidGrant(_) => (StatusCode::UNAUTHORIZED, "invalid_grant"),
            ApiError::InvalidClient(_) => (StatusCode::UNAUTHORIZED, "invalid_client"),
            ApiError::UnauthorizedClient(_) => (StatusCode::BAD_REQUEST, "unauthorized_client"),
            ApiError::UnsupportedGrantType(_) => {
                (StatusCode::BAD_REQUEST, "unsupported_grant_type")
            }
            ApiError::InvalidScope(_) => (StatusCode::BAD_REQUEST, "invalid_scope"),
            ApiError::InvalidTarget(_) => (StatusCode::BAD_REQUEST, "invalid_target"),
            ApiError::InvalidRedirectUri(_) => (StatusCode::BAD_REQUEST, "invalid_redirect_uri"),
            ApiError::InvalidClientMetadata(_) => {
                (StatusCode::BAD_REQUEST, "invalid_client_metadata")
            }
            ApiError::AuthorizationRefused { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::DeviceGrant { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Forbidden { code, .. } => (StatusCode::FORBIDDEN, code),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::UnsupportedMediaType { .. } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::TooManyRequests { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
            }
            ApiError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        }
    }

    /// The `error_description` sent to the client (never internals).
    pub(crate) fn description(&self) -> String {
        match self {
            ApiError::InvalidRequest(d)
            | ApiError::InvalidToken(d)
            | ApiError::DpopInvalidToken(d)
            | ApiError::DpopInsufficientScope(d)
            | ApiError::InvalidGrant(d)
            | ApiError::BearerInvalidGrant(d)
            | ApiError::InvalidClient(d)
            | ApiError::UnauthorizedClient(d)
            | ApiError::UnsupportedGrantType(d)
            | ApiError::InvalidScope(d)
            | ApiError::InvalidTarget(d)
            | ApiError::InvalidRedirectUri(d)
            | ApiError::InvalidClientMetadata(d)
            | ApiError::Conflict(d) => d.clone(),
            ApiError::Forbidden { description, .. }
            | ApiError::AuthorizationRefused { description, .. }
            | ApiError::DeviceGrant { description, .. } => description.clone(),
            ApiError::DpopProof { refusal, .. } => refusal.description().into(),
            ApiError::InvalidCredentials => "invalid email or password".into(),
            ApiError::MissingToken => "missing bearer token".into(),
            ApiError::NotFound => "no such resource".into(),
            ApiError::MethodNotAllowed { allow } => format!("method not allowed; allowed: {allow}"),
            ApiError::PayloadTooLarge { limit } => {
                format!("request body larger than {limit} bytes")
            }
            ApiError::UnsupportedMediaType { expected } => {
                format!("expected Content-Type: {expected}")
            }
            ApiError::TooManyRequests { retry_after } => {
                format!("too many requests; retry after {retry_after} s")
            }
            ApiError::Unavailable(_) => "a backing store is unavailable; try again shortly".into(),
            ApiError::Internal(_) => "internal error".into(),
        }
    }

    /// Renders the response, logging server-side causes once.
    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let (status, code) = self.parts();
        match &self {
            ApiError::Internal(cause) => tracing::error!(cause = %cause, "internal error"),
            ApiError::Unavailable(cause) => tracing::warn!(cause = %cause, "store unavailable"),
            _ => {}
        }
        let mut body =
            serde_json::json!({ "error": code, "error_description": self.description() });
        if let ApiError::DeviceGrant {
            interval: Some(interval),
            ..
        } = &self
        {
            body["interval"] = serde_json::json!(interval);
        }
        let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            ApiError::InvalidToken(d) | ApiError::BearerInvalidGrant(d) => {
                let v = format!(
                    "Bearer realm=\"tokend\", error=\"invalid_token\", error_description=\"{}\"",
                    d.replace(['"', '\\'], "'")
                );
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
                if matches!(self, ApiError::InvalidToken(_)) {
                    if let Ok(v) = HeaderValue::from_str(&dpop_challenge(None)) {
                        h.append(header::WWW_AUTHENTICATE, v);
                    }
                }
            }
            ApiError::MissingToken => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tokend\""),
                );
                if let Ok(v) = HeaderValue::from_str(&dpop_challenge(None)) {
                    h.append(header::WWW_AUTHENTICATE, v);
                }
            }
            ApiError::DpopInvalidToken(d) => {
                let v = dpop_challenge(Some(("invalid_token", d)));
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            ApiError::DpopInsufficientScope(d) => {
                let v = dpop_challenge(Some(("insufficient_scope", d)));
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            ApiError::DpopProof {
                refusal,
                resource: true,
            } => {
                let v = dpop_challenge(Some((code, refusal.description())));
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            ApiError::Forbidden {
                code: "insufficient_scope",
                description,
            } => {
                let v = format!(
                    "Bearer realm=\"tokend\", error=\"insufficient_scope\", error_description=\"{}\"",
                    description.replace(['"', '\\'], "'")
                );
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            ApiError::InvalidClient(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"tokend\""),
                );
            }
            ApiError::MethodNotAllowed { allow } => {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::TooManyRequests { retry_after } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ApiError::Unavailable(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        res
    }
}

/// The `DPoP` challenge of RFC 9449 §7.1: the algorithms tokend accepts in proofs, and the
/// error when there is one.
fn dpop_challenge(error: Option<(&str, &str)>) -> String {
    let algs = CLIENT_ALGS.join(" ");
    match error {
        None => format!("DPoP algs=\"{algs}\""),
        Some((code, description)) => format!(
            "DPoP error=\"{code}\", error_description=\"{}\", algs=\"{algs}\"",
            description.replace(['"', '\\'], "'")
        ),
    }
}

/// The refusal of a request whose `Authorization` header holds no usable token: without one
/// at all, [`ApiError::MissingToken`]; otherwise `invalid_token` saying what is wrong.
pub(crate) fn bearer_refusal(e: BearerError) -> ApiError {
    match e {
        BearerError::Missing => ApiError::MissingToken,
        e => ApiError::InvalidToken(e.to_string()),
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Invalid(d) => ApiError::InvalidRequest(d),
            DomainError::Duplicate(field) => {
                ApiError::Conflict(format!("{field} already registered"))
            }
            DomainError::InvalidCredentials => ApiError::InvalidCredentials,
            DomainError::TokenRejected(refusal) => {
                ApiError::InvalidToken(refusal.description().into())
            }
            DomainError::DpopTokenRejected(refusal) => {
                ApiError::DpopInvalidToken(refusal.description().into())
            }
            DomainError::DpopProof(refusal) => ApiError::DpopProof {
                refusal,
                resource: true,
            },
            DomainError::FreshTokenRequired => ApiError::Forbidden {
                code: "fresh_token_required",
                description: "this action needs a token from a password login".into(),
            },
            DomainError::EmailNotVerified => ApiError::Forbidden {
                code: "email_not_verified",
                description: "confirm your email address first: open the link of the mail we \
                              sent, or ask for a new one at /auth/verify-email/resend"
                    .into(),
            },
            DomainError::InvalidLink => ApiError::InvalidGrant(
                "the link is invalid, expired or already used; ask for a new one".into(),
            ),
            DomainError::InsufficientRole(role) => ApiError::Forbidden {
                code: "insufficient_role",
                description: format!("requires role {role}"),
            },
            DomainError::InsufficientScope { scope, dpop: true } => {
                ApiError::DpopInsufficientScope(format!("the access token needs scope {scope}"))
            }
            DomainError::InsufficientScope { scope, dpop: false } => ApiError::Forbidden {
                code: "insufficient_scope",
                description: format!("the access token needs scope {scope}"),
            },
            DomainError::InvalidTarget(d) => ApiError::InvalidTarget(d),
            DomainError::Refresh(r) => ApiError::BearerInvalidGrant(r.to_string()),
            DomainError::NotFound => ApiError::NotFound,
            DomainError::RateLimited(retry_after) => ApiError::TooManyRequests { retry_after },
            DomainError::Unavailable(d) => ApiError::Unavailable(d),
            DomainError::Internal(d) => ApiError::Internal(d),
        }
    }
}

impl From<RefreshError> for ApiError {
    fn from(e: RefreshError) -> Self {
        ApiError::BearerInvalidGrant(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_table() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::InvalidRequest("x".into()), 400, "invalid_request"),
            (ApiError::InvalidToken("x".into()), 401, "invalid_token"),
            (ApiError::DpopInvalidToken("x".into()), 401, "invalid_token"),
            (
                ApiError::DpopProof {
                    refusal: ProofRefusal::Ath,
                    resource: false,
                },
                400,
                "invalid_dpop_proof",
            ),
            (
                ApiError::DpopProof {
                    refusal: ProofRefusal::Nonce,
                    resource: false,
                },
                400,
                "use_dpop_nonce",
            ),
            (
                ApiError::DpopProof {
                    refusal: ProofRefusal::Replay,
                    resource: true,
                },
                401,
                "invalid_dpop_proof",
            ),
            (
                ApiError::DpopProof {
                    refusal: ProofRefusal::Nonce,
                    resource: true,
                },
                401,
                "use_dpop_nonce",
            ),
            (ApiError::InvalidCredentials, 401, "invalid_grant"),
            (ApiError::InvalidGrant("x".into()), 400, "invalid_grant"),
            (
                ApiError::BearerInvalidGrant("x".into()),
                401,
                "invalid_grant",
            ),
            (ApiError::InvalidClient("x".into()), 401, "invalid_client"),
            (
                ApiError::UnauthorizedClient("x".into()),
                400,
                "unauthorized_client",
            ),
            (
                ApiError::UnsupportedGrantType("x".into()),
                400,
                "unsupported_grant_type",
            ),
            (ApiError::InvalidScope("x".into()), 400, "invalid_scope"),
            (ApiError::InvalidTarget("x".into()), 400, "invalid_target"),
            (
                ApiError::InvalidRedirectUri("x".into()),
                400,
                "invalid_redirect_uri",
            ),
            (
                ApiError::InvalidClientMetadata("x".into()),
                400,
                "invalid_client_metadata",
            ),
            (
                ApiError::AuthorizationRefused {
                    code: "unsupported_response_type",
                    description: "x".into(),
                },
                400,
                "unsupported_response_type",
            ),
            (
                ApiError::DeviceGrant {
                    code: "slow_down",
                    description: "x".into(),
                    interval: Some(10),
                },
                400,
                "slow_down",
            ),
            (
                ApiError::Forbidden {
                    code: "fresh_token_required",
                    description: "x".into(),
                },
                403,
                "fresh_token_required",
            ),
            (ApiError::NotFound, 404, "not_found"),
            (
                ApiError::MethodNotAllowed { allow: "GET" },
                405,
                "method_not_allowed",
            ),
            (ApiError::Conflict("x".into()), 409, "conflict"),
            (
                ApiError::PayloadTooLarge { limit: 1 },
                413,
                "payload_too_large",
            ),
            (
                ApiError::UnsupportedMediaType {
                    expected: "application/json",
                },
                415,
                "unsupported_media_type",
            ),
            (
                ApiError::TooManyRequests { retry_after: 3 },
                429,
                "too_many_requests",
            ),
            (
                ApiError::Unavailable("redis".into()),
                503,
                "temporarily_unavailable",
            ),
            (ApiError::Internal("boom".into()), 500, "server_error"),
        ];
        for (err, status, code) in cases {
            let res = err.clone().into_response();
            assert_eq!(res.status().as_u16(), status, "{err:?}");
            assert_eq!(err.parts().1, code);
            assert_eq!(
                res.headers()[header::CONTENT_TYPE],
                "application/json",
                "{err:?}"
            );
        }
    }

    /// The `WWW-Authenticate` values of an answer, in order.
    fn challenges_of(r: &Response<Full<Bytes>>) -> Vec<String> {
        r.headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn headers_required_by_the_rfcs() {
        let r = ApiError::InvalidToken("expired".into()).into_response();
        let v = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(v.starts_with("Bearer ") && v.contains("error=\"invalid_token\""));
        let challenges = challenges_of(&r);
        assert_eq!(
            challenges[1], "DPoP algs=\"ES256 EdDSA RS256 PS256\"",
            "RFC 9449 §7.1: the DPoP scheme is offered beside Bearer"
        );
        let r = ApiError::DpopProof {
            refusal: ProofRefusal::Nonce,
            resource: true,
        }
        .into_response();
        let v = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(v.starts_with("DPoP error=\"use_dpop_nonce\""), "{v}");
        assert!(v.ends_with("algs=\"ES256 EdDSA RS256 PS256\""), "{v}");
        let r = ApiError::DpopProof {
            refusal: ProofRefusal::Htu,
            resource: false,
        }
        .into_response();
        assert!(
            r.headers().get(header::WWW_AUTHENTICATE).is_none(),
            "the token endpoint answers 400 without a challenge"
        );
        let r = ApiError::DpopInvalidToken("expired".into()).into_response();
        let v = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(v.starts_with("DPoP error=\"invalid_token\""), "{v}");
        let r = ApiError::DpopInsufficientScope("needs openid".into()).into_response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let v = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(v.starts_with("DPoP error=\"insufficient_scope\""), "{v}");
        let r = ApiError::MissingToken.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let challenges = challenges_of(&r);
        assert_eq!(
            challenges,
            [
                "Bearer realm=\"tokend\"",
                "DPoP algs=\"ES256 EdDSA RS256 PS256\""
            ],
            "RFC 6750 §3.1: no error code for a request without a token"
        );
        let r = ApiError::InvalidClient("bad".into()).into_response();
        assert!(r.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic"));
        let r = ApiError::MethodNotAllowed { allow: "GET, PUT" }.into_response();
        assert_eq!(r.headers()[header::ALLOW], "GET, PUT");
        let r = ApiError::TooManyRequests { retry_after: 7 }.into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
    }

    #[test]
    fn internal_causes_are_never_sent() {
        let e = ApiError::Internal("mongodb password=hunter2".into());
        assert!(!e.description().contains("hunter2"));
        let e = ApiError::Unavailable("redis at 10.0.0.1 refused".into());
        assert!(!e.description().contains("10.0.0.1"));
    }
}
