//! `/.well-known/*` and `/openapi.json`: the JWKS document, discovery (RFC 8414, OpenID Connect
//! Discovery) and the OpenAPI document, all served from pre-serialised bytes with a strong ETag.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::state::AppState;
use super::ApiResult;
use crate::config::{Config, RegistrationMode};
use crate::domain::authorize::OIDC_SCOPES;
use crate::domain::clients::GRANT_TYPES;

/// True when `If-None-Match` names `etag` (or `*`).
pub(crate) fn etag_matches<B>(req: &Request<B>, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

/// A cacheable document with ETag/304 handling.
pub fn cacheable<B>(
    req: &Request<B>,
    body: Bytes,
    etag: &str,
    cache_control: &HeaderValue,
) -> ApiResult {
    let not_modified = etag_matches(req, etag);
    let mut res = Response::new(if not_modified {
        Full::new(Bytes::new())
    } else {
        Full::new(body)
    });
    if not_modified {
        *res.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, cache_control.clone());
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    Ok(res)
}

pub(crate) fn jwks<B>(state: &AppState, req: &Request<B>) -> ApiResult {
    let doc = state.published.jwks();
    cacheable(
        req,
        doc.body.clone(),
        &doc.etag,
        &state.public_cache_control,
    )
}

/// A document serialised once at start-up, with its strong ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StaticDocument {
    pub(crate) body: Bytes,
    /// The quoted base64url SHA-256 of `body`.
    pub(crate) etag: String,
}

impl StaticDocument {
    pub(crate) fn new(body: impl Into<Bytes>) -> StaticDocument {
        use base64::Engine;
        let body = body.into();
        let digest = ring::digest::digest(&ring::digest::SHA256, &body);
        let etag = format!(
            "\"{}\"",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
        );
        StaticDocument { body, etag }
    }

    /// Serves the document with `Cache-Control`, `ETag` and `304` for `If-None-Match`.
    pub(crate) fn serve<B>(&self, req: &Request<B>, cache_control: &HeaderValue) -> ApiResult {
        cacheable(req, self.body.clone(), &self.etag, cache_control)
    }
}

/// The documents that never change while the process runs: discovery and OpenAPI.
#[derive(Debug, Clone)]
pub(crate) struct Documents {
    /// `/.well-known/oauth-authorization-server` (RFC 8414).
    pub(crate) authorization_server: StaticDocument,
    /// `/.well-known/openid-configuration` (OpenID Connect Discovery 1.0).
    pub(crate) openid_configuration: StaticDocument,
    /// `/openapi.json`.
    pub(crate) openapi: StaticDocument,
}

impl Documents {
    /// Builds every document from the configuration and the static clients' scopes.
    pub(crate) fn build(
        config: &Config,
        scopes: Vec<String>,
    ) -> Result<Documents, serde_json::Error> {
        let base = discovery(config, scopes);
        let mut oidc = base.clone();
        if let Value::Object(m) = &mut oidc {
            let algs = m
                .get("token_signing_alg_values_supported")
                .cloned()
                .unwrap_or(Value::Null);
            let issuer = &config.issuer;
            // OpenID Connect Discovery 1.0 §3 (docs/authorize.md, "Discovery").
            m.insert("id_token_signing_alg_values_supported".into(), algs);
            m.insert("subject_types_supported".into(), json!(["public"]));
            m.insert(
                "userinfo_endpoint".into(),
                json!(format!("{issuer}/oauth/userinfo")),
            );
            m.insert(
                "end_session_endpoint".into(),
                json!(format!("{issuer}/oauth/logout")),
            );
            m.insert(
                "claims_supported".into(),
                json!([
                    "sub",
                    "iss",
                    "aud",
                    "exp",
                    "iat",
                    "auth_time",
                    "nonce",
                    "sid",
                    "at_hash",
                    "amr",
                    "azp",
                    "preferred_username",
                    "name",
                    "updated_at",
                    "email",
                    "email_verified"
                ]),
            );
            m.insert("claim_types_supported".into(), json!(["normal"]));
            m.insert("request_parameter_supported".into(), json!(false));
            m.insert("request_uri_parameter_supported".into(), json!(false));
        }
        Ok(Documents {
            authorization_server: StaticDocument::new(serde_json::to_vec(&base)?),
            openid_configuration: StaticDocument::new(serde_json::to_vec(&oidc)?),
            openapi: StaticDocument::new(Bytes::from_static(super::openapi::DOCUMENT)),
        })
    }
}

/// The RFC 8414 §2 metadata of this issuer.
fn discovery(config: &Config, static_scopes: Vec<String>) -> Value {
    let issuer = &config.issuer;
    let mut scopes: Vec<String> = OIDC_SCOPES.iter().map(|s| s.to_string()).collect();
    for s in static_scopes {
        if !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    let algs: Vec<&str> = config.signing_algs.iter().map(|a| a.as_str()).collect();
    let mut doc = json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth/token"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{issuer}/oauth/revoke"),
        "introspection_endpoint": format!("{issuer}/oauth/introspect"),
        "authorization_endpoint": format!("{issuer}/oauth/authorize"),
        // RFC 9126 §5: per-client policy only (`require_pushed_authorization_requests` in the
        // client's metadata, §6).
        "pushed_authorization_request_endpoint": format!("{issuer}/oauth/par"),
        "require_pushed_authorization_requests": false,
        "device_authorization_endpoint": format!("{issuer}/oauth/device_authorization"),
        "grant_types_supported": GRANT_TYPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "token_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "revocation_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "introspection_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        // RFC 8414 §2: the algorithms of private_key_jwt assertions (docs/private_key_jwt.md).
        "token_endpoint_auth_signing_alg_values_supported": crate::domain::dpop::CLIENT_ALGS,
        "revocation_endpoint_auth_signing_alg_values_supported": crate::domain::dpop::CLIENT_ALGS,
        "introspection_endpoint_auth_signing_alg_values_supported":
            crate::domain::dpop::CLIENT_ALGS,
        "scopes_supported": scopes,
        "token_signing_alg_values_supported": algs,
        // RFC 9449 §5.1: the algorithms of the proofs tokend checks (docs/dpop.md).
        "dpop_signing_alg_values_supported": crate::domain::dpop::CLIENT_ALGS,
    });
    // RFC 8414 §2 / RFC 7591 §3: only while registration is on (docs/registration.md).
    if config.client_registration != RegistrationMode::Off {
        if let Value::Object(m) = &mut doc {
            m.insert(
                "registration_endpoint".into(),
                json!(crate::domain::registration::registration_endpoint(issuer)),
            );
        }
    }
    doc
}

/// `GET /.well-known/oauth-authorization-server`.
pub(crate) fn authorization_server<B>(state: &AppState, req: &Request<B>) -> ApiResult {
    state
        .documents
        .authorization_server
        .serve(req, &state.public_cache_control)
}

/// `GET /.well-known/openid-configuration`.
pub(crate) fn openid_configuration<B>(state: &AppState, req: &Request<B>) -> ApiResult {
    state
        .documents
        .openid_configuration
        .serve(req, &state.public_cache_control)
}
