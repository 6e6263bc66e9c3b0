//! OAuth clients (RFC 6749 §2): the registry that answers "who is this client" from three
//! sources, in this order: the built-in public first-party client `tokend`, the static clients
//! of `TOKEND_CLIENTS_FILE`, and the [`ClientStore`] (MongoDB in production mode, memory in
//! embedded mode). Secrets are ≥ 256-bit random, so a SHA-256 digest compared in constant time
//! is the right check (never Argon2 per request).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use ring::{digest, hmac};
use serde::Deserialize;

use super::resources::{audience_problem, resource_problem, MAX_RESOURCES};
use super::{ids, FIRST_PARTY_CLIENT};
use crate::config::vars::CLIENTS_FILE;
use crate::keys::Alg;
use crate::store::{ClientMetadata, ClientRecord, ClientStore, StoreError, PRIVATE_KEY_JWT};

/// `grant_type=password` (RFC 6749 §4.3).
pub(crate) const GRANT_PASSWORD: &str = "password";
/// `grant_type=refresh_token` (RFC 6749 §6).
pub(crate) const GRANT_REFRESH_TOKEN: &str = "refresh_token";
/// `grant_type=client_credentials` (RFC 6749 §4.4).
pub(crate) const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// `grant_type=authorization_code` (RFC 6749 §4.1).
pub(crate) const GRANT_AUTHORIZATION_CODE: &str = "authorization_code";
/// `grant_type=urn:ietf:params:oauth:grant-type:device_code` (RFC 8628 §3.4).
pub(crate) const GRANT_DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` (RFC 8693 §2.1).
pub(crate) const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Every grant type tokend implements.
pub(crate) const GRANT_TYPES: [&str; 6] = [
    GRANT_PASSWORD,
    GRANT_REFRESH_TOKEN,
    GRANT_CLIENT_CREDENTIALS,
    GRANT_AUTHORIZATION_CODE,
    GRANT_DEVICE_CODE,
    GRANT_TOKEN_EXCHANGE,
];
/// The client authentication methods at the token endpoint (RFC 7591 §2; `private_key_jwt`,
/// RFC 7523 §2.2, docs/private_key_jwt.md).
pub(crate) const AUTH_METHODS: [&str; 4] = [
    "client_secret_basic",
    "client_secret_post",
    "none",
    PRIVATE_KEY_JWT,
];

/// What is wrong with a redirect URI (RFC 6749 §3.1.2, RFC 8252 §7, OAuth 2.1 §2.3.1):
/// absolute, no fragment, and `https`, or `http` on a loopback address, or a private-use
/// scheme (reverse domain name, RFC 8252 §7.1).
pub(crate) fn redirect_uri_problem(uri: &str) -> Option<&'static str> {
    let Ok(u) = url::Url::parse(uri) else {
        return Some("is not an absolute URI");
    };
    if u.fragment().is_some() {
        return Some("must not have a fragment");
    }
    if u.as_str() != uri && u.as_str() != format!("{uri}/") {
        return Some("is not in normal form (write it as it will be sent)");
    }
    match u.scheme() {
        "https" if u.host().is_some() => None,
        "http" if is_loopback(&u) => None,
        "http" => Some("may use http only on a loopback address (127.0.0.1, [::1], localhost)"),
        "javascript" | "data" | "file" | "vbscript" => Some("uses a forbidden scheme"),
        s if s.contains('.') => None,
        _ => Some("must be https, http on loopback, or a private-use scheme like com.example.app"),
    }
}

/// Whether a URL's host is a loopback address (RFC 8252 §7.3).
pub(crate) fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Lower-case hex SHA-256 of a client secret, as stored.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, secret.as_bytes()))
}

/// Whether `presented` is the secret whose digest is `stored_hex`, compared in constant time.
///
/// Both digests go through HMAC-SHA256 under a one-off random key and ring's constant-time tag
/// check compares them, so the time taken says nothing about how many bytes matched.
pub(crate) fn secret_matches(presented: &str, stored_hex: &str) -> bool {
    let Ok(stored) = hex::decode(stored_hex) else {
        return false;
    };
    let Ok(key) = ids::random_bytes::<32>() else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let presented = digest::digest(&digest::SHA256, presented.as_bytes());
    let tag = hmac::sign(&key, &stored);
    hmac::verify(&key, presented.as_ref(), tag.as_ref()).is_ok()
}

/// Whether a string is a valid `scope-token` (RFC 6749 §3.3).
pub(crate) fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// Whether a string can be a client id: 1–128 visible ASCII characters without `:` (a Basic
/// credential separator), so it survives every client-authentication method.
pub(crate) fn is_client_id(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// What is wrong with a client definition.
pub(crate) fn validate_client(c: &ClientRecord, algs: &[Alg]) -> Result<(), String> {
    let id = &c.client_id;
    if !is_client_id(id) {
        return Err(format!(
            "client_id {id:?} must be 1-128 visible ASCII characters without ':'"
        ));
    }
    if id == FIRST_PARTY_CLIENT {
        return Err(format!(
            "client_id {id:?} is reserved for the built-in first-party client"
        ));
    }
    if c.grant_types.is_empty() {
        return Err(format!("client {id:?}: grant_types is empty"));
    }
    for g in &c.grant_types {
        if !GRANT_TYPES.contains(&g.as_str()) {
            return Err(format!(
                "client {id:?}: unknown grant type {g:?} (known: {})",
                GRANT_TYPES.join(", ")
            ));
        }
    }
    if !c.is_confidential() && c.grant_types.iter().any(|g| g == GRANT_CLIENT_CREDENTIALS) {
        return Err(format!(
            "client {id:?}: a public client (no secret, no private_key_jwt) cannot use \
             client_credentials"
        ));
    }
    if !c.is_confidential() && c.grant_types.iter().any(|g| g == GRANT_TOKEN_EXCHANGE) {
        return Err(format!(
            "client {id:?}: a public client (no secret, no private_key_jwt) cannot use token exchange \
             ({GRANT_TOKEN_EXCHANGE}; docs/token_exchange.md)"
        ));
    }
    for s in &c.scopes {
        if !is_scope_token(s) {
            return Err(format!("client {id:?}: invalid scope {s:?}"));
        }
    }
    if let Some(hash) = &c.secret_sha256 {
        let ok = hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(format!(
                "client {id:?}: client_secret_sha256 must be 64 lower-case hex characters"
            ));
        }
    }
    validate_metadata(c, algs)?;
    if let Some(alg) = &c.alg {
        match Alg::parse(alg) {
            Some(a) if algs.contains(&a) => {}
            _ => {
                let listed: Vec<&str> = algs.iter().map(|a| a.as_str()).collect();
                return Err(format!(
                    "client {id:?}: alg {alg:?} is not one of TOKEND_SIGNING_ALGS ({})",
                    listed.join(",")
                ));
            }
        }
    }
    Ok(())
}

/// What is wrong with a client's browser sign-in metadata.
fn validate_metadata(c: &ClientRecord, algs: &[Alg]) -> Result<(), String> {
    let id = &c.client_id;
    let m = &c.meta;
    let code = c.grant_types.iter().any(|g| g == GRANT_AUTHORIZATION_CODE);
    if code && m.redirect_uris.is_empty() {
        return Err(format!(
            "client {id:?}: the authorization_code grant needs at least one redirect URI"
        ));
    }
    for (what, list) in [
        ("redirect URI", &m.redirect_uris),
        ("post-logout redirect URI", &m.post_logout_redirect_uris),
    ] {
        if list.len() > 32 {
            return Err(format!("client {id:?}: more than 32 {what}s"));
        }
        for uri in list {
            if uri.len() > 2048 {
                return Err(format!("client {id:?}: {what} longer than 2048 characters"));
            }
            if let Some(problem) = redirect_uri_problem(uri) {
                return Err(format!("client {id:?}: {what} {uri:?} {problem}"));
            }
        }
    }
    if let Some(name) = &m.client_name {
        let len = name.chars().count();
        if !(1..=100).contains(&len) || name.chars().any(char::is_control) {
            return Err(format!(
                "client {id:?}: client_name must be 1-100 characters without control characters"
            ));
        }
    }
    if let Some(method) = &m.token_endpoint_auth_method {
        if !AUTH_METHODS.contains(&method.as_str()) {
            return Err(format!(
                "client {id:?}: token_endpoint_auth_method {method:?} is not one of {}",
                AUTH_METHODS.join(", ")
            ));
        }
        // `none` is a public client's, the secret methods need a secret, and a
        // `private_key_jwt` client has its keys instead (validate_key_metadata).
        let fits = match method.as_str() {
            "none" => c.secret_sha256.is_none(),
            PRIVATE_KEY_JWT => true,
            _ => c.secret_sha256.is_some(),
        };
        if !fits {
            return Err(format!(
                "client {id:?}: token_endpoint_auth_method \"none\" is for public clients only, \
                 and a public client must use it (or {PRIVATE_KEY_JWT} with its keys)"
            ));
        }
    }
    validate_key_metadata(c)?;
    validate_targets(c)?;
    if m.require_pushed_authorization_requests && !code {
        return Err(format!(
            "client {id:?}: require_pushed_authorization_requests is for clients with the \
             authorization_code grant (RFC 9126 §6)"
        ));
    }
    if let Some(alg) = &m.id_token_signed_response_alg {
        match Alg::parse(alg) {
            Some(a) if algs.contains(&a) => {}
            _ => {
                let listed: Vec<&str> = algs.iter().map(|a| a.as_str()).collect();
                return Err(format!(
                    "client {id:?}: id_token_signed_response_alg {alg:?} is not one of \
                     TOKEND_SIGNING_ALGS ({})",
                    listed.join(",")
                ));
            }
        }
    }
    Ok(())
}

/// What is wrong with a client's `private_key_jwt` metadata (docs/private_key_jwt.md,
/// "Registering a client"): such a client has no secret and exactly one of `jwks` (public
/// signing keys of supported types, unique `kid`s) and `jwks_uri` (https, or http on loopback);
/// `token_endpoint_auth_signing_alg` is one tokend accepts and, with `jwks`, fits a key. Other
/// clients have none of the three.
fn validate_key_metadata(c: &ClientRecord) -> Result<(), String> {
    let id = &c.client_id;
    let m = &c.meta;
    if !c.uses_private_key_jwt() {
        if m.jwks.is_some() || m.jwks_uri.is_some() || m.token_endpoint_auth_signing_alg.is_some() {
            return Err(format!(
                "client {id:?}: jwks, jwks_uri and token_endpoint_auth_signing_alg are for \
                 clients with token_endpoint_auth_method \"{PRIVATE_KEY_JWT}\""
            ));
        }
        return Ok(());
    }
    if c.secret_sha256.is_some() {
        return Err(format!(
            "client {id:?}: a {PRIVATE_KEY_JWT} client has no secret: it signs its assertions \
             with its own keys"
        ));
    }
    let keys = match (&m.jwks, &m.jwks_uri) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "client {id:?}: give jwks or jwks_uri, not both (RFC 7591 §2)"
            ))
        }
        (None, None) => {
            return Err(format!(
                "client {id:?}: token_endpoint_auth_method \"{PRIVATE_KEY_JWT}\" needs the \
                 client's public keys: jwks (a JWK Set) or jwks_uri"
            ))
        }
        (Some(jwks), None) => Some(
            super::client_keys::registered_keys(jwks)
                .map_err(|e| format!("client {id:?}: jwks: {e}"))?,
        ),
        (None, Some(uri)) => {
            if let Some(problem) = super::client_keys::jwks_uri_problem(uri) {
                return Err(format!("client {id:?}: jwks_uri {uri:?} {problem}"));
            }
            None
        }
    };
    if let Some(alg) = &m.token_endpoint_auth_signing_alg {
        if !super::dpop::CLIENT_ALGS.contains(&alg.as_str()) {
            return Err(format!(
                "client {id:?}: token_endpoint_auth_signing_alg {alg:?} is not one of {}",
                super::dpop::CLIENT_ALGS.join(", ")
            ));
        }
        if keys
            .as_deref()
            .is_some_and(|k| !super::client_keys::any_fits(k, alg))
        {
            return Err(format!(
                "client {id:?}: token_endpoint_auth_signing_alg {alg:?} fits none of its jwks"
            ));
        }
    }
    Ok(())
}

/// What is wrong with a client's resources (RFC 8707) and exchange audiences (RFC 8693;
/// docs/token_exchange.md, "Clients").
fn validate_targets(c: &ClientRecord) -> Result<(), String> {
    let id = &c.client_id;
    let m = &c.meta;
    for (what, list, problem) in [
        (
            "resource",
            &m.resources,
            resource_problem as fn(&str) -> Option<&'static str>,
        ),
        (
            "token exchange audience",
            &m.token_exchange_audiences,
            audience_problem as fn(&str) -> Option<&'static str>,
        ),
    ] {
        if list.len() > MAX_RESOURCES {
            return Err(format!("client {id:?}: more than {MAX_RESOURCES} {what}s"));
        }
        for (i, v) in list.iter().enumerate() {
            if let Some(p) = problem(v.as_str()) {
                return Err(format!("client {id:?}: {what} {v:?} {p}"));
            }
            if list.iter().take(i).any(|x| x == v) {
                return Err(format!("client {id:?}: {what} {v:?} is listed twice"));
            }
        }
    }
    if !m.token_exchange_audiences.is_empty()
        && !c.grant_types.iter().any(|g| g == GRANT_TOKEN_EXCHANGE)
    {
        return Err(format!(
            "client {id:?}: token_exchange_audiences is for clients with the \
             {GRANT_TOKEN_EXCHANGE} grant"
        ));
    }
    Ok(())
}

/// One entry of `TOKEND_CLIENTS_FILE`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticClient {
    client_id: String,
    #[serde(default)]
    client_secret_sha256: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
    grant_types: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
    #[serde(default)]
    first_party: bool,
    #[serde(default)]
    client_name: Option<String>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    id_token_signed_response_alg: Option<String>,
    #[serde(default)]
    require_pushed_authorization_requests: bool,
    #[serde(default)]
    dpop_bound_access_tokens: bool,
    #[serde(default)]
    jwks: Option<serde_json::Value>,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    token_endpoint_auth_signing_alg: Option<String>,
    #[serde(default)]
    token_exchange_audiences: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
}

/// Whether a secret reads the same whether or not a client form-encodes it for HTTP Basic.
///
/// RFC 6749 §2.3.1 has the client form-encode id and secret before joining them, and tokend
/// decodes them, but many clients send them raw; only `+` (decoded as a space) and `%` (the
/// start of an escape) differ between the two readings. Generated secrets (base64url, see
/// [`ids::random_secret`]) never contain either.
pub(crate) fn survives_raw_basic(secret: &str) -> bool {
    !secret.contains(['+', '%'])
}

/// Parses and validates the JSON list of static clients. Errors name the offending client.
pub(crate) fn parse_static_clients(json: &[u8], algs: &[Alg]) -> Result<Vec<ClientRecord>, String> {
    let list: Vec<StaticClient> =
        serde_json::from_slice(json).map_err(|e| format!("not a JSON list of clients: {e}"))?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(list.len());
    for c in list {
        let secret_sha256 = match (c.client_secret_sha256, c.client_secret) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "client {:?}: give client_secret_sha256 or client_secret, not both",
                    c.client_id
                ))
            }
            (Some(h), None) => Some(h),
            (None, Some(s)) if s.is_empty() => {
                return Err(format!("client {:?}: client_secret is empty", c.client_id))
            }
            (None, Some(s)) if !survives_raw_basic(&s) => {
                return Err(format!(
                    "client {:?}: client_secret must not contain '+' or '%': clients that put \
                     the secret into HTTP Basic without form-encoding it (curl -u, requests, \
                     authlib) send it raw, and tokend form-decodes Basic credentials \
                     (RFC 6749 §2.3.1), so '+' would arrive as a space and '%' as an escape; \
                     use letters, digits, '-', '_' and '.' (e.g. `openssl rand -hex 32`)",
                    c.client_id
                ))
            }
            (None, Some(s)) => Some(hash_secret(&s)),
            (None, None) => None,
        };
        let record = ClientRecord {
            client_id: c.client_id,
            secret_sha256,
            grant_types: c.grant_types,
            scopes: c.scopes,
            alg: c.alg,
            created_at: 0,
            meta: ClientMetadata {
                redirect_uris: c.redirect_uris,
                post_logout_redirect_uris: c.post_logout_redirect_uris,
                first_party: c.first_party,
                client_name: c.client_name,
                token_endpoint_auth_method: c.token_endpoint_auth_method,
                id_token_signed_response_alg: c.id_token_signed_response_alg,
                require_pushed_authorization_requests: c.require_pushed_authorization_requests,
                dpop_bound_access_tokens: c.dpop_bound_access_tokens,
                jwks: c.jwks,
                jwks_uri: c.jwks_uri,
                token_endpoint_auth_signing_alg: c.token_endpoint_auth_signing_alg,
                token_exchange_audiences: c.token_exchange_audiences,
                resources: c.resources,
            },
            registration: None,
        };
        validate_client(&record, algs)?;
        if !seen.insert(record.client_id.clone()) {
            return Err(format!("client_id {:?} appears twice", record.client_id));
        }
        out.push(record);
    }
    Ok(out)
}

/// Reads `TOKEND_CLIENTS_FILE`; the error is one line naming the variable.
pub(crate) fn load_static_clients(path: &Path, algs: &[Alg]) -> Result<Vec<ClientRecord>, String> {
    let var = CLIENTS_FILE.name;
    let bytes = std::fs::read(path).map_err(|e| format!("{var}={}: {e}", path.display()))?;
    parse_static_clients(&bytes, algs).map_err(|e| format!("{var}={}: {e}", path.display()))
}

/// The built-in public first-party client the seed endpoints act as: password and
/// refresh_token grants, no scopes.
pub(crate) fn first_party_client() -> ClientRecord {
    ClientRecord {
        client_id: FIRST_PARTY_CLIENT.to_string(),
        secret_sha256: None,
        grant_types: vec![GRANT_PASSWORD.into(), GRANT_REFRESH_TOKEN.into()],
        scopes: vec![],
        alg: None,
        created_at: 0,
        meta: ClientMetadata {
            first_party: true,
            client_name: Some("tokend".into()),
            ..ClientMetadata::default()
        },
        registration: None,
    }
}

/// Every client tokend knows: first-party, static, then stored. It is itself a
/// [`ClientStore`], so code that looks clients up by id sees all three sources; writes go to the
/// store only.
pub(crate) struct Clients {
    first_party: ClientRecord,
    statics: HashMap<String, ClientRecord>,
    store: Arc<dyn ClientStore>,
}

impl Clients {
    pub(crate) fn new(statics: Vec<ClientRecord>, store: Arc<dyn ClientStore>) -> Clients {
        Clients {
            first_party: first_party_client(),
            statics: statics
                .into_iter()
                .map(|c| (c.client_id.clone(), c))
                .collect(),
            store,
        }
    }

    /// The static clients, ordered by id.
    pub(crate) fn statics(&self) -> Vec<&ClientRecord> {
        let mut v: Vec<&ClientRecord> = self.statics.values().collect();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    /// Whether `client_id` is taken by the built-in or a static client.
    pub(crate) fn is_builtin_or_static(&self, client_id: &str) -> bool {
        client_id == self.first_party.client_id || self.statics.contains_key(client_id)
    }

    /// The union of the static clients' scopes, sorted (discovery's `scopes_supported`).
    pub(crate) fn static_scopes(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.statics.values().flat_map(|c| &c.scopes).collect();
        set.into_iter().cloned().collect()
    }
}

#[async_trait]
impl ClientStore for Clients {
    async fn get(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
        if client_id == self.first_party.client_id {
            return Ok(Some(self.first_party.clone()));
        }
        if let Some(c) = self.statics.get(client_id) {
            return Ok(Some(c.clone()));
        }
        self.store.get(client_id).await
    }

    async fn insert(&self, client: &ClientRecord) -> Result<(), StoreError> {
        if self.is_builtin_or_static(&client.client_id) {
            return Err(StoreError::Duplicate("client_id"));
        }
        self.store.insert(client).await
    }

    /// Stored clients only (the built-in and static ones are known from configuration).
    async fn list(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.store.list().await
    }

    async fn delete(&self, client_id: &str) -> Result<bool, StoreError> {
        if self.is_builtin_or_static(client_id) {
            return Ok(false);
        }
        self.store.delete(client_id).await
    }

    /// Stored clients only: the built-in and static ones are never replaced.
    async fn replace(&self, client: &ClientRecord) -> Result<bool, StoreError> {
        if self.is_builtin_or_static(&client.client_id) {
            return Ok(false);
        }
        self.store.replace(client).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALGS: &[Alg] = &[Alg::EdDSA, Alg::RS256];

    #[test]
    fn secrets_are_stored_as_hex_sha256_and_compared() {
        let h = hash_secret("s3cret");
        assert_eq!(h.len(), 64);
        assert!(secret_matches("s3cret", &h));
        assert!(!secret_matches("s3cret ", &h));
        assert!(!secret_matches("", &h));
        assert!(!secret_matches("s3cret", "not hex"));
    }

    #[test]
    fn a_static_file_is_parsed_and_plain_secrets_hashed() {
        let json = br#"[
          {"client_id":"svc","client_secret":"pw","grant_types":["client_credentials"],"scopes":["read","write"],"alg":"RS256"},
          {"client_id":"spa","grant_types":["password","refresh_token"],"scopes":["read"]}
        ]"#;
        let list = parse_static_clients(json, ALGS).unwrap();
        assert_eq!(
            list[0].secret_sha256.as_deref(),
            Some(hash_secret("pw").as_str())
        );
        assert_eq!(list[0].alg.as_deref(), Some("RS256"));
        assert!(list[1].secret_sha256.is_none());
    }

    #[test]
    fn bad_static_files_are_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("{}", "JSON list"),
            (
                r#"[{"client_id":"a","grant_types":["implicit"]}]"#,
                "unknown grant type",
            ),
            (
                r#"[{"client_id":"a","grant_types":["client_credentials"]}]"#,
                "public client",
            ),
            (
                r#"[{"client_id":"a","client_secret":"x","grant_types":["password"],"alg":"HS256"}]"#,
                "alg",
            ),
            (
                r#"[{"client_id":"a","client_secret_sha256":"ABC","grant_types":["password"]}]"#,
                "hex",
            ),
            (
                r#"[{"client_id":"a","client_secret":"x","client_secret_sha256":"00","grant_types":["password"]}]"#,
                "not both",
            ),
            (
                r#"[{"client_id":"a","grant_types":["password"]},{"client_id":"a","grant_types":["password"]}]"#,
                "twice",
            ),
            (
                r#"[{"client_id":"tokend","grant_types":["password"]}]"#,
                "reserved",
            ),
            (
                r#"[{"client_id":"a","grant_types":["password"],"scopes":["a b"]}]"#,
                "invalid scope",
            ),
            (
                r#"[{"client_id":"a","grant_types":["password"],"extra":1}]"#,
                "unknown field",
            ),
            (r#"[{"client_id":"a","grant_types":[]}]"#, "empty"),
            (
                r#"[{"client_id":"a","client_secret":"x","grant_types":["client_credentials"],
                     "require_pushed_authorization_requests":true}]"#,
                "require_pushed_authorization_requests",
            ),
        ];
        for (json, needle) in cases {
            let e = parse_static_clients(json.as_bytes(), ALGS).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
        let e = parse_static_clients(
            br#"[{"client_id":"a","client_secret":"x","grant_types":["password"],"alg":"RS256"}]"#,
            &[Alg::EdDSA],
        )
        .unwrap_err();
        assert!(e.contains("TOKEND_SIGNING_ALGS"), "{e}");
    }

    #[test]
    fn dpop_bound_access_tokens_is_read_from_the_static_file() {
        let json = br#"[{"client_id":"app","grant_types":["password","refresh_token"],
                         "dpop_bound_access_tokens":true},
                        {"client_id":"svc","client_secret":"s","grant_types":["client_credentials"]}]"#;
        let list = parse_static_clients(json, ALGS).unwrap();
        assert!(list[0].meta.dpop_bound_access_tokens);
        assert!(!list[1].meta.dpop_bound_access_tokens, "off unless set");
        let bad = br#"[{"client_id":"app","grant_types":["password"],
                        "dpop_bound_access_tokens":"yes"}]"#;
        assert!(parse_static_clients(bad, ALGS).is_err(), "a boolean only");
    }

    #[test]
    fn private_key_jwt_clients_are_read_from_the_static_file_and_checked() {
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let json = serde_json::json!([
            {"client_id": "inline", "grant_types": ["client_credentials"],
             "token_endpoint_auth_method": "private_key_jwt",
             "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1"}]},
             "token_endpoint_auth_signing_alg": "EdDSA"},
            {"client_id": "remote", "grant_types": ["client_credentials", "authorization_code"],
             "redirect_uris": ["https://svc.example/cb"],
             "token_endpoint_auth_method": "private_key_jwt",
             "jwks_uri": "https://svc.example/jwks.json"}
        ]);
        let list = parse_static_clients(json.to_string().as_bytes(), ALGS).unwrap();
        assert!(list
            .iter()
            .all(|c| c.is_confidential() && c.secret_sha256.is_none()));
        assert!(list[0].meta.jwks.is_some());
        assert_eq!(
            list[1].meta.jwks_uri.as_deref(),
            Some("https://svc.example/jwks.json")
        );
        let key = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x});
        let base = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"client_id": "svc", "grant_types": ["client_credentials"],
                                           "token_endpoint_auth_method": "private_key_jwt"});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            serde_json::json!([c]).to_string()
        };
        let cases: Vec<(String, &str)> = vec![
            (
                base(serde_json::json!({})),
                "needs the client's public keys",
            ),
            (
                base(
                    serde_json::json!({"jwks": {"keys": [key]}, "jwks_uri": "https://a.example/j"}),
                ),
                "not both",
            ),
            (
                base(serde_json::json!({"jwks": {"keys": [key], "x": 1}, "client_secret": "s"})),
                "no secret",
            ),
            (
                base(serde_json::json!({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}})),
                "symmetric",
            ),
            (
                base(serde_json::json!({"jwks": {"keys": [
                    {"kty": "OKP", "crv": "Ed25519", "x": x, "d": x}]}})),
                "private members",
            ),
            (
                base(
                    serde_json::json!({"jwks": {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}}),
                ),
                "not a supported public key",
            ),
            (
                base(serde_json::json!({"jwks_uri": "http://svc.example/jwks"})),
                "loopback",
            ),
            (
                base(serde_json::json!({"jwks": {"keys": [key]},
                                        "token_endpoint_auth_signing_alg": "HS256"})),
                "token_endpoint_auth_signing_alg",
            ),
            (
                base(serde_json::json!({"jwks": {"keys": [key]},
                                        "token_endpoint_auth_signing_alg": "ES256"})),
                "fits none",
            ),
            (
                serde_json::json!([{"client_id": "svc", "client_secret": "s",
                                     "grant_types": ["client_credentials"],
                                     "jwks": {"keys": [key]}}])
                .to_string(),
                "are for clients with token_endpoint_auth_method",
            ),
        ];
        for (json, needle) in cases {
            let e = parse_static_clients(json.as_bytes(), ALGS).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
            assert!(e.contains("\"svc\""), "names the client: {e}");
        }
    }

    #[test]
    fn resources_and_exchange_audiences_are_read_from_the_static_file_and_checked() {
        let json = br#"[{"client_id":"gw","client_secret":"s",
                         "grant_types":["client_credentials",
                                        "urn:ietf:params:oauth:grant-type:token-exchange"],
                         "token_exchange_audiences":["orders-api","https://orders.example"],
                         "resources":["https://api.example/"]}]"#;
        let list = parse_static_clients(json, ALGS).unwrap();
        assert_eq!(
            list[0].meta.token_exchange_audiences,
            ["orders-api", "https://orders.example"]
        );
        assert_eq!(list[0].meta.resources, ["https://api.example/"]);
        let cases: &[(&str, &str)] = &[
            (
                r#"[{"client_id":"a","grant_types":["password"],"resources":["api"]}]"#,
                "absolute URI",
            ),
            (
                r#"[{"client_id":"a","grant_types":["password"],
                     "resources":["https://api.example/#frag"]}]"#,
                "fragment",
            ),
            (
                r#"[{"client_id":"a","grant_types":["password"],
                     "resources":["https://a.example","https://a.example"]}]"#,
                "twice",
            ),
            (
                r#"[{"client_id":"a","client_secret":"s","grant_types":["client_credentials"],
                     "token_exchange_audiences":["orders"]}]"#,
                "token_exchange_audiences is for clients with the",
            ),
            (
                r#"[{"client_id":"a","grant_types":
                     ["urn:ietf:params:oauth:grant-type:token-exchange"],
                     "token_exchange_audiences":["orders"]}]"#,
                "public client (no secret, no private_key_jwt) cannot use token exchange",
            ),
            (
                r#"[{"client_id":"a","client_secret":"s","grant_types":
                     ["urn:ietf:params:oauth:grant-type:token-exchange"],
                     "token_exchange_audiences":["two words"]}]"#,
                "printable",
            ),
        ];
        for (json, needle) in cases {
            let e = parse_static_clients(json.as_bytes(), ALGS).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
    }

    #[test]
    fn a_plain_secret_with_plus_or_percent_is_refused_naming_the_client_and_the_rule() {
        for secret in ["abc+def", "abc%2Bdef", "%", "+"] {
            let json = serde_json::json!([{"client_id": "billing", "client_secret": secret,
                                           "grant_types": ["client_credentials"]}]);
            let e = parse_static_clients(json.to_string().as_bytes(), ALGS).unwrap_err();
            assert!(e.contains("\"billing\""), "{secret}: {e}");
            assert!(e.contains("'+' or '%'"), "{secret}: {e}");
            assert!(e.contains("RFC 6749 §2.3.1"), "{secret}: {e}");
        }
        // Characters a raw Basic credential keeps as they are stay allowed.
        let json = br#"[{"client_id":"billing","client_secret":"a-b_c.d~e!f*g:h/i=j",
                         "grant_types":["client_credentials"]}]"#;
        assert!(parse_static_clients(json, ALGS).is_ok());
    }

    #[test]
    fn generated_secrets_survive_raw_basic() {
        for _ in 0..1000 {
            let secret = ids::random_secret().unwrap();
            assert_eq!(secret.len(), 43);
            assert!(survives_raw_basic(&secret), "{secret}");
            assert!(
                secret
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{secret}"
            );
        }
    }

    #[test]
    fn scope_tokens_follow_rfc_6749() {
        assert!(is_scope_token("read:users"));
        assert!(!is_scope_token(""));
        assert!(!is_scope_token("a b"));
        assert!(!is_scope_token("a\"b"));
        assert!(!is_scope_token("a\\b"));
    }
}
