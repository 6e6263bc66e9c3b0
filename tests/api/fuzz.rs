//! Bad input, as property tests (proptest): the JWT parser and validator, the input parsers,
//! the router, and the JSON and form decoders behind a running server. Whatever comes in:
//! never a panic, never a 5xx, and no token accepted unless it is one tokend signed.
//!
//! The HTTP properties share one embedded-mode app (rate limits off) per test; requests of the
//! router property go over a raw TCP connection so that odd paths reach tokend as written.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tokend::clock::{Clock, ManualClock};
use tokend::domain::input::{Email, Password, Username};
use tokend::domain::tokens::{AccessClaims, Audience, RefreshClaims, Tokens};
use tokend::http::router::{Listener, MatchedRoute};
use tokend::http::routes::routes;
use tokend::keys::{Alg, Keys, KeysConfig, MemoryKeyStore};

use crate::helpers::{spawn_app_with, Mode, TestApp};
use crate::multi_instance::{clients_file, SVC_SECRET};

const ISSUER: &str = "http://tokend.test";
const AUDIENCE: &str = "tokend";

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // A failure prints its minimal case; nothing is written next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The JWT parser and validator
// ---------------------------------------------------------------------------------------------

/// Key rings for EdDSA and RS256 in memory, and genuine tokens signed with them.
struct Signed {
    tokens: Tokens,
    now: i64,
    /// (token, typ, its claims) for an access and a refresh token of each algorithm.
    genuine: Vec<(String, &'static str, Map<String, Value>)>,
    /// The public JWKS bytes (alg-confusion attacks use them as an HMAC key).
    jwks: Vec<u8>,
}

fn signed() -> &'static Signed {
    static SIGNED: OnceLock<Signed> = OnceLock::new();
    SIGNED.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let clock = ManualClock::starting_now();
        let now = clock.now();
        let keys = rt
            .block_on(Keys::open(
                KeysConfig {
                    algs: vec![Alg::EdDSA, Alg::RS256],
                    rotation: Duration::from_secs(7 * 86_400),
                    prepublish: Duration::from_secs(3600),
                    retention: Duration::from_secs(86_400),
                    reload: Duration::from_secs(30),
                    rsa_bits: 2048,
                },
                Arc::new(MemoryKeyStore::new()),
                None,
                clock,
            ))
            .unwrap();
        let tokens = Tokens::new(ISSUER.into(), AUDIENCE.into(), keys.clone());
        let mut genuine = Vec::new();
        for alg in [Alg::EdDSA, Alg::RS256] {
            let access = AccessClaims {
                iss: ISSUER.into(),
                sub: "user-1".into(),
                aud: Audience::One(AUDIENCE.into()),
                exp: now + 900,
                iat: now,
                nbf: now,
                jti: format!("at-{alg}"),
                client_id: "tokend".into(),
                scope: "read".into(),
                sid: Some("sid-1".into()),
                fresh: true,
                auth_time: Some(now),
                roles: vec!["user".into()],
                username: Some("ada".into()),
                cnf: None,
                act: None,
            };
            let t = tokens.sign_access(alg, &access).unwrap();
            genuine.push((t, "at+jwt", to_map(&access)));
            let refresh = RefreshClaims {
                iss: ISSUER.into(),
                sub: "user-1".into(),
                aud: Audience::One(ISSUER.into()),
                exp: now + 3600,
                iat: now,
                jti: format!("rt-{alg}"),
                sid: "sid-1".into(),
                client_id: "tokend".into(),
                scope: "read".into(),
                resources: vec![],
                auth_time: Some(now),
                username: Some("ada".into()),
                roles: Some(vec!["user".into()]),
                user_version: Some(now * 1000),
                cnf: None,
            };
            let t = tokens.sign_refresh(alg, &refresh).unwrap();
            genuine.push((t, "rt+jwt", to_map(&refresh)));
        }
        let jwks = keys.jwks().body.to_vec();
        Signed {
            tokens,
            now,
            genuine,
            jwks,
        }
    })
}

fn to_map<T: serde::Serialize>(v: &T) -> Map<String, Value> {
    match serde_json::to_value(v).unwrap() {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Every way tokend reads a token; returns the claims of each accepted reading.
fn every_reading(token: &str) -> Vec<Map<String, Value>> {
    let s = signed();
    let mut accepted = Vec::new();
    if let Ok(c) = s.tokens.decode_access(token, s.now) {
        accepted.push(to_map(&c));
    }
    if let Ok(c) = s.tokens.decode_refresh(token, s.now) {
        accepted.push(to_map(&c));
    }
    for typ in ["at+jwt", "rt+jwt"] {
        if let Ok(v) = s.tokens.keys.verify(token, typ, s.now) {
            accepted.push(v.claims);
        }
    }
    accepted
}

/// A JSON value of bounded size.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A header as an attacker would write one.
fn hostile_header() -> impl Strategy<Value = Value> {
    let alg = prop_oneof![
        Just(json!("none")),
        Just(json!("None")),
        Just(json!("HS256")),
        Just(json!("HS512")),
        Just(json!("RS256")),
        Just(json!("EdDSA")),
        Just(json!("ES256")),
        Just(json!("eddsa")),
        Just(json!("")),
        json_value(),
    ];
    let kid = prop_oneof![
        Just(json!("../../../../etc/passwd")),
        Just(json!("https://evil.example/jwks.json")),
        Just(json!("")),
        "[A-Za-z0-9_-]{43}".prop_map(Value::String),
        json_value(),
    ];
    let typ = prop_oneof![
        Just(json!("at+jwt")),
        Just(json!("rt+jwt")),
        Just(json!("JWT")),
        Just(json!("application/at+jwt")),
        json_value(),
    ];
    (alg, kid, typ, prop::option::of(json_value()), any::<u8>()).prop_map(
        |(alg, kid, typ, extra, present)| {
            let mut h = Map::new();
            if present & 1 == 0 {
                h.insert("alg".into(), alg);
            }
            if present & 2 == 0 {
                h.insert("kid".into(), kid);
            }
            if present & 4 == 0 {
                h.insert("typ".into(), typ);
            }
            if let Some(x) = extra {
                h.insert("jku".into(), x);
            }
            Value::Object(h)
        },
    )
}

proptest! {
    #![proptest_config(config(512))]

    /// Any string at all: refused, and no panic.
    #[test]
    fn arbitrary_strings_are_never_tokens(token in ".{0,600}") {
        prop_assert!(every_reading(&token).is_empty());
    }

    /// Three segments of base64url with hostile headers, any payload, any signature.
    #[test]
    fn forged_tokens_are_refused(
        header in hostile_header(),
        payload in prop_oneof![json_value().prop_map(|v| v.to_string().into_bytes()),
                               prop::collection::vec(any::<u8>(), 0..200)],
        signature in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let token = format!(
            "{}.{}.{}",
            b64(header.to_string().as_bytes()),
            b64(&payload),
            b64(&signature)
        );
        prop_assert!(every_reading(&token).is_empty());
    }

    /// A genuine token changed anywhere (a character replaced, inserted or removed) is either
    /// refused or, where base64 has spare bits, read as exactly the claims that were signed.
    #[test]
    fn a_tampered_token_is_refused_or_unchanged(
        which in 0usize..4,
        at in any::<prop::sample::Index>(),
        edit in 0u8..3,
        ch in prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ %".chars().collect::<Vec<_>>()
        ),
    ) {
        let (token, _, claims) = &signed().genuine[which];
        let mut chars: Vec<char> = token.chars().collect();
        let i = at.index(chars.len());
        match edit {
            0 => chars[i] = ch,
            1 => chars.insert(i, ch),
            _ => { chars.remove(i); }
        }
        let tampered: String = chars.into_iter().collect();
        for accepted in every_reading(&tampered) {
            prop_assert_eq!(&accepted, claims, "accepted a changed token as different claims");
        }
    }

    /// Genuine header and signature over other claims: refused.
    #[test]
    fn a_genuine_signature_over_other_claims_is_refused(
        which in 0usize..4,
        changes in prop::collection::btree_map(
            prop::sample::select(vec!["sub", "exp", "iat", "nbf", "jti", "sid", "aud", "iss",
                                      "roles", "fresh", "scope", "client_id"]),
            json_value(),
            1..4,
        ),
    ) {
        let (token, _, claims) = &signed().genuine[which];
        let mut forged = claims.clone();
        for (k, v) in changes {
            forged.insert(k.to_string(), v);
        }
        prop_assume!(&forged != claims);
        let parts: Vec<&str> = token.split('.').collect();
        let payload = b64(Value::Object(forged).to_string().as_bytes());
        let token = format!("{}.{payload}.{}", parts[0], parts[2]);
        prop_assert!(every_reading(&token).is_empty());
    }

    /// The classic confusions: `none`, HMAC keyed with the public JWKS, the other algorithm's
    /// name on a genuine signature, and the other type.
    #[test]
    fn algorithm_and_type_confusion_is_refused(which in 0usize..4, variant in 0u8..4) {
        let s = signed();
        let (token, typ, _) = &s.genuine[which];
        let parts: Vec<&str> = token.split('.').collect();
        let header = crate::helpers::header(token);
        let kid = header["kid"].clone();
        let forged = match variant {
            0 => format!(
                "{}.{}.",
                b64(json!({"alg": "none", "kid": kid, "typ": typ}).to_string().as_bytes()),
                parts[1]
            ),
            1 => {
                let h = b64(json!({"alg": "HS256", "kid": kid, "typ": typ}).to_string().as_bytes());
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &s.jwks);
                let tag = ring::hmac::sign(&key, format!("{h}.{}", parts[1]).as_bytes());
                format!("{h}.{}.{}", parts[1], b64(tag.as_ref()))
            }
            2 => {
                let other = if header["alg"] == "EdDSA" { "RS256" } else { "EdDSA" };
                format!(
                    "{}.{}.{}",
                    b64(json!({"alg": other, "kid": kid, "typ": typ}).to_string().as_bytes()),
                    parts[1],
                    parts[2]
                )
            }
            _ => {
                let other = if *typ == "at+jwt" { "rt+jwt" } else { "at+jwt" };
                let s = signed();
                prop_assert!(s.tokens.keys.verify(token, other, s.now).is_err());
                return Ok(());
            }
        };
        prop_assert!(every_reading(&forged).is_empty());
    }
}

#[test]
fn genuine_tokens_are_accepted() {
    // The properties above would hold vacuously if nothing were ever accepted.
    for (token, typ, claims) in &signed().genuine {
        let accepted = every_reading(token);
        assert_eq!(
            accepted.len(),
            2,
            "{typ}: read once by its decoder, once by verify"
        );
        assert!(accepted.iter().all(|c| c == claims));
    }
}

// ---------------------------------------------------------------------------------------------
// Input parsers and the route table
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn input_parsers_accept_only_what_the_rules_allow(raw in ".{0,300}") {
        if let Ok(e) = Email::parse(&raw) {
            let e = e.as_str();
            prop_assert!(e.len() <= 254 && e.contains('@'));
            prop_assert_eq!(e.to_lowercase(), e);
            prop_assert!(!e.chars().any(char::is_whitespace));
        }
        if let Ok(u) = Username::parse(&raw) {
            let n = u.as_str().chars().count();
            prop_assert!((3..=32).contains(&n));
            prop_assert!(u.as_str().chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
        }
        if Password::parse(&raw).is_ok() {
            prop_assert!((8..=128).contains(&raw.chars().count()));
        }
    }

    #[test]
    fn every_path_resolves_to_a_template_or_not_found(
        path in prop_oneof![
            ".{0,80}",
            "/(auth|users|admin|oauth|\\.well-known)(/[a-zA-Z0-9._%~-]{0,20}){0,4}",
            "/admin/users/[^/]{0,70}/(roles|revoke-sessions)",
            "/assets/[^/]{0,70}",
            "/oauth/register(/[^/]{0,40}){0,2}",
        ]
    ) {
        if let Some(route) = MatchedRoute::resolve(Listener::All, &path).route() {
            let template = route.template();
            let variable = ["{id}", "{name}", "{client_id}"]
                .into_iter()
                .find_map(|v| template.split_once(v).map(|(head, tail)| (v, head, tail)));
            match variable {
                None => prop_assert_eq!(template, path.as_str()),
                Some(("{client_id}", head, tail)) => {
                    // A percent-encoded client id: 1 to 384 visible ASCII characters, no `/`.
                    let value = path.strip_prefix(head).and_then(|p| p.strip_suffix(tail));
                    prop_assert!(
                        value.is_some_and(|v| (1..=384).contains(&v.len())
                            && v.bytes().all(|b| b.is_ascii_graphic() && b != b'/')),
                        "{path} resolved to {template}"
                    );
                }
                Some((variable, head, tail)) => {
                    let value = path.strip_prefix(head).and_then(|p| p.strip_suffix(tail));
                    // Both rules: 1 to 64 ASCII letters, digits, `-`, `_`; an asset name may
                    // also hold dots, but not first.
                    let dots = variable == "{name}";
                    prop_assert!(
                        value.is_some_and(|v| !v.is_empty()
                            && v.len() <= 64
                            && !v.starts_with('.')
                            && v.chars().all(|c| c.is_ascii_alphanumeric()
                                || c == '-'
                                || c == '_'
                                || (dots && c == '.'))),
                        "{path} resolved to {template}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The running server: router, JSON and form decoders
// ---------------------------------------------------------------------------------------------

/// A runtime and an embedded-mode app for the HTTP properties of one test, with a user and a
/// fresh access token.
struct Served {
    rt: tokio::runtime::Runtime,
    app: TestApp,
    access: String,
    refresh: String,
    _clients: tempfile::NamedTempFile,
}

fn serve() -> Served {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clients = clients_file();
    let path = clients.path().to_string_lossy().into_owned();
    let (app, access, refresh) = rt.block_on(async {
        let app = spawn_app_with(Mode::Embedded, |env| {
            env.insert("TOKEND_RATE_LIMIT".into(), "off".into());
            env.insert("TOKEND_CLIENTS_FILE".into(), path);
            // The registration endpoint's decoder is fuzzed too.
            env.insert("TOKEND_CLIENT_REGISTRATION".into(), "open".into());
        })
        .await;
        let s = app.new_session().await;
        (app, s.access, s.refresh)
    });
    Served {
        rt,
        app,
        access,
        refresh,
        _clients: clients,
    }
}

/// Whether a raw request path names a route people see, whose errors are HTML pages
/// (docs/authorize.md).
fn is_page(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    MatchedRoute::resolve(Listener::All, path)
        .route()
        .is_some_and(|r| r.is_page())
}

/// Asserts the rules every answer follows: below 500, and an error is a JSON body naming it —
/// or, on a page route, an HTML page with a heading saying what went wrong.
fn check_answer(
    status: u16,
    content_type: &str,
    body: &[u8],
    head: bool,
    page: bool,
) -> Result<(), TestCaseError> {
    prop_assert!(
        status < 500,
        "answered {status}: {}",
        String::from_utf8_lossy(body)
    );
    if status >= 400 && !head && page && content_type.starts_with("text/html") {
        let html = String::from_utf8_lossy(body);
        prop_assert!(html.contains("<h1"), "{status}: a page without a heading");
        return Ok(());
    }
    if status >= 400 && !head {
        prop_assert!(
            content_type.starts_with("application/json"),
            "{status} as {content_type}"
        );
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| TestCaseError::fail(format!("{status}: not JSON ({e})")))?;
        prop_assert!(v["error"].is_string(), "{status}: {v}");
    }
    Ok(())
}

/// Sends raw bytes over a new connection and reads the answer's status line, content type and
/// body (the server closes the connection: `Connection: close`).
async fn raw_exchange(
    addr: std::net::SocketAddr,
    request: &[u8],
) -> Option<(u16, String, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("an answer or a closed connection within 20 s")
        .ok()?;
    let text = String::from_utf8_lossy(&out);
    let (head, _) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let body_start = out.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some((status, content_type, out[body_start..].to_vec()))
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"
        ])
        .prop_map(String::from),
        "[A-Z]{1,8}",
    ]
}

fn raw_path() -> impl Strategy<Value = String> {
    let known: Vec<String> = routes().map(|r| r.example_path()).collect();
    prop_oneof![
        prop::sample::select(known.clone()),
        (prop::sample::select(known), "[!-~]{0,12}").prop_map(|(p, tail)| format!("{p}{tail}")),
        "/[!-~]{0,60}",
        "/(%[0-9A-Fa-f]{2}|[a-z./]){0,30}",
    ]
}

fn authorization() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        "Bearer [!-~]{0,80}",
        "Basic [A-Za-z0-9+/=]{0,40}",
        "[!-~]{0,20}( [!-~]{0,40})?",
    ])
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        Just("application/json".to_string()),
        Just("application/x-www-form-urlencoded".to_string()),
        Just("application/json; charset=utf-8".to_string()),
        "[a-z]{1,10}/[a-z+.-]{1,15}",
    ])
}

#[test]
fn any_request_to_any_path_answers_below_500() {
    let served = serve();
    let addr = served.app.addr;
    let mut runner = proptest::test_runner::TestRunner::new(config(300));
    runner
        .run(
            &(
                method(),
                raw_path(),
                authorization(),
                content_type(),
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..300),
                    json_value().prop_map(|v| v.to_string().into_bytes()),
                ],
            ),
            |(method, path, auth, ctype, body)| {
                let mut req =
                    format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
                if let Some(a) = auth {
                    req.push_str(&format!("Authorization: {a}\r\n"));
                }
                if let Some(c) = ctype {
                    req.push_str(&format!("Content-Type: {c}\r\n"));
                }
                req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                let mut bytes = req.into_bytes();
                bytes.extend_from_slice(&body);
                // hyper itself refuses what is not HTTP (400 or a closed connection); whatever
                // reaches tokend is answered by it.
                if let Some((status, ct, body)) = served.rt.block_on(raw_exchange(addr, &bytes)) {
                    let refused_by_hyper = status == 400 && ct.is_empty() && body.is_empty();
                    if !refused_by_hyper {
                        check_answer(status, &ct, &body, method == "HEAD", is_page(&path))?;
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}

/// A JSON body for the user endpoints: arbitrary values, or objects with the expected fields
/// holding arbitrary values.
fn user_json() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        ".{0,40}".prop_map(Value::String),
        "[a-z0-9._-]{0,20}@[a-z]{1,8}\\.[a-z]{2,3}".prop_map(Value::String),
        json_value(),
    ];
    prop_oneof![
        json_value(),
        prop::collection::btree_map(
            prop::sample::select(vec![
                "username",
                "email",
                "password",
                "current_password",
                "new_password",
                "roles",
                "token",
            ]),
            field,
            0..5,
        )
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
    ]
}

#[test]
fn any_json_body_on_the_user_endpoints_answers_below_500() {
    let served = serve();
    let mut runner = proptest::test_runner::TestRunner::new(config(200));
    runner
        .run(
            &(
                prop::sample::select(vec![
                    ("POST", "/auth/register"),
                    ("POST", "/auth/login"),
                    ("PUT", "/users/me"),
                    ("PUT", "/users/me/password"),
                    ("PUT", "/admin/users/0193a1b2-user/roles"),
                    ("POST", "/auth/verify-email"),
                    ("POST", "/auth/verify-email/resend"),
                ]),
                user_json(),
                any::<bool>(),
            ),
            |((method, path), body, raw)| {
                let app = &served.app;
                let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let mut req = app
                    .http
                    .request(method.clone(), app.url(path))
                    .bearer_auth(&served.access)
                    .header("content-type", "application/json");
                // Either the value, or the value's text cut short (invalid JSON).
                let text = body.to_string().into_bytes();
                req = if raw {
                    req.body(text[..text.len() / 2].to_vec())
                } else {
                    req.body(text)
                };
                let (status, ct, bytes) = served.rt.block_on(answer(req));
                check_answer(status, &ct, &bytes, false, false)
            },
        )
        .unwrap();
}

#[test]
fn any_form_on_the_oauth_endpoints_answers_below_500() {
    let served = serve();
    let mut runner = proptest::test_runner::TestRunner::new(config(300));
    let refresh = served.refresh.clone();
    let access = served.access.clone();
    let value = prop_oneof![
        ".{0,40}",
        prop::sample::select(vec![
            "password".to_string(),
            "refresh_token".to_string(),
            "client_credentials".to_string(),
            "authorization_code".to_string(),
            "code".to_string(),
            "S256".to_string(),
            "urn:ietf:params:oauth:request_uri:x".to_string(),
            "svc".to_string(),
            SVC_SECRET.to_string(),
            "read write".to_string(),
            "access_token".to_string(),
            refresh,
            access,
        ]),
    ];
    let pairs = prop::collection::vec(
        (
            prop_oneof![
                prop::sample::select(vec![
                    "grant_type",
                    "username",
                    "password",
                    "refresh_token",
                    "scope",
                    "client_id",
                    "client_secret",
                    "token",
                    "token_type_hint",
                    "response_type",
                    "redirect_uri",
                    "code_challenge",
                    "code_challenge_method",
                    "request_uri",
                ])
                .prop_map(String::from),
                ".{0,12}",
            ],
            value,
        ),
        0..7,
    );
    let basic = prop::option::of(prop_oneof![
        Just(("svc".to_string(), SVC_SECRET.to_string())),
        (".{0,12}", ".{0,20}"),
    ]);
    runner
        .run(
            &(
                prop::sample::select(vec![
                    "/oauth/token",
                    "/oauth/revoke",
                    "/oauth/introspect",
                    "/oauth/par",
                ]),
                pairs,
                basic,
                any::<bool>(),
            ),
            |(path, pairs, basic, raw)| {
                let app = &served.app;
                let mut req = app
                    .http
                    .post(app.url(path))
                    .header("content-type", "application/x-www-form-urlencoded");
                if let Some((id, secret)) = basic {
                    req = req.basic_auth(id, Some(secret));
                }
                // Either a well-encoded form, or the pairs joined without any encoding.
                let body = if raw {
                    pairs
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join("&")
                } else {
                    serde_urlencoded::to_string(&pairs).unwrap()
                };
                let (status, ct, bytes) = served.rt.block_on(answer(req.body(body)));
                check_answer(status, &ct, &bytes, false, false)
            },
        )
        .unwrap();
}

/// Sends `req`: the status, the content type (empty when absent) and the body.
async fn answer(req: reqwest::RequestBuilder) -> (u16, String, Vec<u8>) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    (status, ct, res.bytes().await.unwrap().to_vec())
}
