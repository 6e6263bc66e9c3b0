//! The route table: every route tokend serves, declared once with its methods and handlers,
//! its path template, its rate-limit class, its timeout class, whether it is answered from
//! memory, and the listener surface that serves it. The router, the layer stack, the metrics
//! and the OpenAPI test all read this one table (docs/api.md).

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;

use http::{Method, Request};
use hyper::body::Incoming;

use super::state::AppState;
use super::{
    admin, auth, authorize, device, oauth, openapi, ops, pages, registration, reset, users, verify,
    wellknown, ApiResult,
};

/// The future of a handler, boxed so that every handler fits one table.
pub(crate) type HandlerFuture<'a> = Pin<Box<dyn Future<Output = ApiResult> + Send + 'a>>;

/// A handler function `async fn(&AppState, Request<Incoming>) -> ApiResult`, its future boxed.
pub(crate) type AsyncHandler = for<'a> fn(&'a AppState, Request<Incoming>) -> HandlerFuture<'a>;

/// A document answered from memory: `fn(&AppState, &Request<Incoming>) -> ApiResult`.
pub(crate) type MemoryHandler = fn(&AppState, &Request<Incoming>) -> ApiResult;

/// How a route answers one method.
#[derive(Clone, Copy)]
pub(crate) enum Handler {
    /// Answered in the call itself from bytes in memory: no task, no timer, no store, no body
    /// (the JWKS fast path of BENCHMARKS.md).
    Memory(MemoryHandler),
    /// Run as a future under the route's timeout.
    Async(AsyncHandler),
}

/// A handler function as a table entry.
macro_rules! handler {
    ($f:path) => {
        Handler::Async(|state, req| Box::pin($f(state, req)))
    };
}

/// Whether the per-IP rate limit applies before the handler (docs/operations.md, "Limits";
/// docs/hardening.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateLimit {
    None,
    /// `TOKEND_RATE_LIMIT_IP`, per client address.
    PerIp,
}

/// How long the route may take before it is answered 503 `temporarily_unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// No timer: the route is answered from memory, in the call itself.
    None,
    /// `TOKEND_REQUEST_TIMEOUT`.
    Request,
}

/// Which listener serves a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    /// The API listener (`TOKEND_LISTEN`).
    Api,
    /// The operational routes that `TOKEND_METRICS_LISTEN` moves to a listener of their own
    /// (docs/operations.md, "Health and metrics"); without it the API listener serves them too.
    Ops,
}

/// One route of the table.
pub struct Route {
    /// Position in the table; stands for the template in the metric handle cache.
    index: u8,
    template: &'static str,
    /// The variable segment, when the template has one.
    param: Option<Param>,
    /// The methods in the order of `Allow`; `HEAD` is answered by the `GET` handler
    /// (RFC 9110 §9.3.2).
    handlers: Vec<(Method, Handler)>,
    /// The `Allow` header of a 405 (RFC 9110 §15.5.6).
    allow: String,
    rate_limit: RateLimit,
    timeout: Timeout,
    surface: Surface,
    /// A page people see: its refusals are HTML pages, never JSON (docs/authorize.md).
    page: bool,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("template", &self.template)
            .field("allow", &self.allow)
            .field("rate_limit", &self.rate_limit)
            .field("timeout", &self.timeout)
            .field("served_from_memory", &self.served_from_memory())
            .field("surface", &self.surface)
            .field("page", &self.page)
            .finish()
    }
}

/// The table. Templates are literal paths except for at most one variable segment, `{id}` (a
/// user id: 1 to 64 ASCII letters, digits, `-` or `_`), `{sid}` (a session id, [`is_sid`]),
/// `{client_id}` or `{name}` (an asset name, see
/// [`is_asset_name`]); no two routes match the same path.
fn table() -> Vec<Route> {
    vec![
        Route::at("/auth/register")
            .post(handler!(auth::register))
            .rate_limited(),
        Route::at("/auth/login")
            .post(handler!(auth::login))
            .rate_limited(),
        Route::at("/auth/token/refresh")
            .post(handler!(auth::refresh))
            .rate_limited(),
        Route::at("/auth/logout").post(handler!(auth::logout)),
        Route::at("/auth/logout/all").post(handler!(auth::logout_all)),
        Route::at("/auth/verify").get(handler!(auth::verify)),
        Route::at("/users/me")
            .get(handler!(users::me))
            .put(handler!(users::update_me))
            .delete(handler!(users::delete_me)),
        Route::at("/users/me/password").put(handler!(users::change_password)),
        Route::at("/users/me/email").put(handler!(users::change_email)),
        Route::at("/users/me/sessions").get(handler!(users::sessions)),
        Route::at("/users/me/sessions/{sid}").delete(handler!(users::end_session)),
        Route::at("/.well-known/jwks.json").memory(wellknown::jwks),
        Route::at("/.well-known/oauth-authorization-server")
            .memory(wellknown::authorization_server),
        Route::at("/.well-known/openid-configuration").memory(wellknown::openid_configuration),
        Route::at("/oauth/token")
            .post(handler!(oauth::token))
            .rate_limited(),
        Route::at("/oauth/revoke").post(handler!(oauth::revoke)),
        Route::at("/oauth/introspect").post(handler!(oauth::introspect)),
        Route::at("/oauth/par")
            .post(handler!(oauth::par))
            .rate_limited(),
        Route::at("/openapi.json").memory(openapi::openapi),
        Route::at("/healthz")
            .memory(|_, _| ops::healthz())
            .on(Surface::Ops),
        Route::at("/readyz")
            .get(handler!(ops::readyz))
            .on(Surface::Ops),
        Route::at("/metrics")
            .get(handler!(ops::metrics))
            .on(Surface::Ops),
        Route::at("/admin/users").get(handler!(admin::list_users)),
        Route::at("/admin/users/{id}/roles").put(handler!(admin::set_roles)),
        Route::at("/admin/users/{id}/revoke-sessions").post(handler!(admin::revoke_sessions)),
        Route::at("/admin/users/{id}").delete(handler!(admin::delete_user)),
        Route::at("/admin/events").get(handler!(admin::events)),
        Route::at("/assets/{name}").memory(pages::assets::serve),
        Route::at("/oauth/authorize")
            .get(handler!(authorize::authorize))
            .post(handler!(authorize::authorize))
            .rate_limited()
            .page(),
        Route::at("/login")
            .get(handler!(authorize::login_page))
            .post(handler!(authorize::login_submit))
            .rate_limited()
            .page(),
        Route::at("/consent")
            .get(handler!(authorize::consent_page))
            .post(handler!(authorize::consent_submit))
            .page(),
        Route::at("/oauth/userinfo")
            .get(handler!(authorize::userinfo))
            .post(handler!(authorize::userinfo)),
        Route::at("/oauth/logout")
            .get(handler!(authorize::logout))
            .post(handler!(authorize::logout))
            .page(),
        Route::at("/users/me/consents").get(handler!(authorize::list_consents)),
        Route::at("/users/me/consents/{client_id}").delete(handler!(authorize::withdraw_consent)),
        Route::at("/oauth/register")
            .post(handler!(registration::register))
            .rate_limited(),
        Route::at("/oauth/register/{client_id}")
            .get(handler!(registration::read))
            .put(handler!(registration::update))
            .delete(handler!(registration::delete)),
        Route::at("/oauth/device_authorization")
            .post(handler!(device::device_authorization))
            .rate_limited(),
        Route::at("/device")
            .get(handler!(device::device_page))
            .post(handler!(device::device_submit))
            .rate_limited()
            .page(),
        Route::at("/auth/verify-email")
            .get(handler!(verify::page))
            .post(handler!(verify::confirm_json))
            .rate_limited()
            .page(),
        Route::at("/auth/verify-email/confirm")
            .post(handler!(verify::confirm_form))
            .rate_limited()
            .page(),
        Route::at("/auth/verify-email/resend")
            .post(handler!(verify::resend))
            .rate_limited(),
        Route::at("/auth/password/forgot")
            .get(handler!(reset::forgot_page))
            .post(handler!(reset::forgot))
            .rate_limited()
            .page(),
        Route::at("/auth/password/forgot/send")
            .post(handler!(reset::forgot_form))
            .rate_limited()
            .page(),
        Route::at("/auth/password/reset")
            .get(handler!(reset::page))
            .post(handler!(reset::reset_json))
            .rate_limited()
            .page(),
        Route::at("/auth/password/reset/confirm")
            .post(handler!(reset::reset_form))
            .rate_limited()
            .page(),
    ]
}

static TABLE: LazyLock<Vec<Route>> = LazyLock::new(|| {
    let mut routes = table();
    for (i, r) in routes.iter_mut().enumerate() {
        // The metric handle cache keeps 8 bits for the route (a unit test holds the table to it).
        r.index = u8::try_from(i).unwrap_or(u8::MAX);
    }
    routes
});

/// Every route tokend serves, in table order.
pub fn routes() -> impl Iterator<Item = &'static Route> {
    TABLE.iter()
}

/// The route whose template matches `path` exactly, on any listener.
pub(crate) fn find(path: &str) -> Option<&'static Route> {
    TABLE.iter().find(|r| r.matches(path))
}

/// Whether `s` may stand for `{id}` in a path.
fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `s` may stand for `{sid}` in a path: a family id, a dot and the user's id
/// (docs/sessions.md), or a sid from before sids named their user; 1 to 128 ASCII letters,
/// digits, `-`, `_` or `.`.
pub(crate) fn is_sid(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `s` may stand for `{name}` in a path: 1 to 64 ASCII letters, digits, `-`, `_` or
/// `.`, starting with a letter or digit (so never `..` nor a hidden name). The handler then
/// looks the name up among the assets held in memory; it is never a file path.
fn is_asset_name(s: &str) -> bool {
    s.len() <= 64
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Whether `s` may stand for `{client_id}`: a client id as one path segment, percent-encoded
/// where needed (at most 3 × 128 characters, visible ASCII without `/`); the handler decodes it.
fn is_client_id_segment(s: &str) -> bool {
    (1..=384).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

/// Whether a value may stand for a template's variable segment.
type Rule = fn(&str) -> bool;

/// The variable segment of a template: the literal text around it and the rule its value
/// follows.
#[derive(Clone, Copy)]
struct Param {
    head: &'static str,
    tail: &'static str,
    rule: Rule,
}

impl Param {
    /// The variables a template may hold, each with its rule.
    const VARIABLES: [(&'static str, Rule); 4] = [
        ("{id}", is_id),
        ("{sid}", is_sid),
        ("{name}", is_asset_name),
        ("{client_id}", is_client_id_segment),
    ];

    fn of(template: &'static str) -> Option<Param> {
        Param::VARIABLES.iter().find_map(|&(variable, rule)| {
            template
                .split_once(variable)
                .map(|(head, tail)| Param { head, tail, rule })
        })
    }
}

impl Route {
    /// A route at `template` with no method yet, rate-limit free, under the request timeout,
    /// on the API listener.
    fn at(template: &'static str) -> Route {
        Route {
            index: u8::MAX,
            template,
            param: Param::of(template),
            handlers: Vec::new(),
            allow: String::new(),
            rate_limit: RateLimit::None,
            timeout: Timeout::Request,
            surface: Surface::Api,
            page: false,
        }
    }

    fn method(mut self, method: Method, handler: Handler) -> Route {
        if !self.allow.is_empty() {
            self.allow.push_str(", ");
        }
        self.allow.push_str(method.as_str());
        if method == Method::GET {
            self.allow.push_str(", HEAD");
        }
        self.handlers.push((method, handler));
        self
    }

    fn get(self, handler: Handler) -> Route {
        self.method(Method::GET, handler)
    }

    fn post(self, handler: Handler) -> Route {
        self.method(Method::POST, handler)
    }

    fn put(self, handler: Handler) -> Route {
        self.method(Method::PUT, handler)
    }

    fn delete(self, handler: Handler) -> Route {
        self.method(Method::DELETE, handler)
    }

    /// `GET` and `HEAD` answered from memory in the call itself, so without a timer.
    fn memory(self, answer: MemoryHandler) -> Route {
        Route {
            timeout: Timeout::None,
            ..self.get(Handler::Memory(answer))
        }
    }

    fn rate_limited(self) -> Route {
        Route {
            rate_limit: RateLimit::PerIp,
            ..self
        }
    }

    /// A page people see (docs/authorize.md): what refuses it before its handler runs (the
    /// per-IP limit, a store that cannot answer) is an HTML page too.
    fn page(self) -> Route {
        Route { page: true, ..self }
    }

    fn on(self, surface: Surface) -> Route {
        Route { surface, ..self }
    }

    /// The path template (`/admin/users/{id}/roles`): the label of logs and metrics, never the
    /// raw path.
    pub fn template(&self) -> &'static str {
        self.template
    }

    /// The methods the route answers, `HEAD` included wherever `GET` is.
    pub fn methods(&self) -> impl Iterator<Item = Method> + '_ {
        self.handlers.iter().flat_map(|(m, _)| {
            let head = (*m == Method::GET).then_some(Method::HEAD);
            std::iter::once(m.clone()).chain(head)
        })
    }

    /// The `Allow` header value (`GET, HEAD, PUT`).
    pub fn allow(&self) -> &str {
        &self.allow
    }

    /// Whether the route is a page people see, whose errors are HTML pages.
    pub fn is_page(&self) -> bool {
        self.page
    }

    pub(crate) fn rate_limit(&self) -> RateLimit {
        self.rate_limit
    }

    pub(crate) fn timeout(&self) -> Timeout {
        self.timeout
    }

    pub(crate) fn surface(&self) -> Surface {
        self.surface
    }

    /// Whether the route is answered from memory in the call itself (JWKS, discovery, OpenAPI,
    /// `/healthz`, the pages' assets).
    pub(crate) fn served_from_memory(&self) -> bool {
        self.handlers
            .iter()
            .any(|(_, h)| matches!(h, Handler::Memory(_)))
    }

    pub(crate) fn index(&self) -> u8 {
        self.index
    }

    /// The handler of `method`, if the route answers it.
    pub(crate) fn handler(&self, method: &Method) -> Option<Handler> {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        self.handlers
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, h)| *h)
    }

    /// Whether `path` is this route's template, with a value its rule accepts in place of the
    /// variable segment.
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self.param {
            None => path == self.template,
            Some(p) => path
                .strip_prefix(p.head)
                .and_then(|rest| rest.strip_suffix(p.tail))
                .is_some_and(p.rule),
        }
    }

    /// A path this route serves: the template with a valid value in place of its variable
    /// segment, an asset that exists for `{name}` (for tests that walk the table).
    pub fn example_path(&self) -> String {
        let asset = pages::assets::stylesheet_path();
        self.template
            .replace("{id}", "0193a1b2-user")
            .replace("{sid}", "a-session-id")
            .replace(
                "{name}",
                asset.rsplit_once('/').map_or(asset, |(_, name)| name),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_unique_and_the_table_fits_the_metric_key() {
        let templates: std::collections::HashSet<_> = routes().map(Route::template).collect();
        assert_eq!(templates.len(), routes().count());
        assert!(routes().count() < usize::from(u8::MAX));
        for (i, r) in routes().enumerate() {
            assert_eq!(usize::from(r.index()), i);
            assert!(!r.allow().is_empty(), "{r:?} has no method");
        }
    }

    #[test]
    fn each_template_matches_itself_only() {
        for r in routes() {
            let path = r.example_path();
            let matching: Vec<_> = routes().filter(|o| o.matches(&path)).collect();
            assert_eq!(matching.len(), 1, "{path}: {matching:?}");
            assert_eq!(find(&path).map(Route::template), Some(r.template()));
        }
        assert!(find("/auth/login/").is_none());
        assert!(find("/../etc/passwd").is_none());
        assert!(find("/admin/users//roles").is_none());
        assert!(find("/admin/users/../../roles").is_none());
        assert!(find(&format!("/admin/users/{}/roles", "a".repeat(65))).is_none());
        for name in ["", ".css", "..", "../x", "a/b", "a b", "é", &"a".repeat(65)] {
            assert!(find(&format!("/assets/{name}")).is_none(), "{name:?}");
        }
        assert!(find("/assets/form-post.0123456789.js").is_some());
    }

    #[test]
    fn ids_follow_the_admin_handlers_rule() {
        let (longest, too_long) = ("x".repeat(64), "x".repeat(65));
        let ids = [
            "u-1", "A_b", "", "a/b", "a.b", "é", "..", &longest, &too_long,
        ];
        for id in ids {
            let path = format!("/admin/users/{id}/roles");
            assert_eq!(
                find(&path).is_some(),
                admin::user_id_of(&path, "/roles").is_some(),
                "{id:?}"
            );
        }
    }

    #[test]
    fn methods_and_allow_agree() {
        let me = find("/users/me").unwrap();
        assert_eq!(me.allow(), "GET, HEAD, PUT, DELETE");
        let methods: Vec<_> = me.methods().map(|m| m.to_string()).collect();
        assert_eq!(methods.join(", "), me.allow());
        assert!(me.handler(&Method::HEAD).is_some());
        assert!(me.handler(&Method::POST).is_none());
        assert_eq!(find("/auth/login").unwrap().allow(), "POST");
        for r in routes() {
            let methods: Vec<_> = r.methods().map(|m| m.to_string()).collect();
            assert_eq!(methods.join(", "), r.allow());
        }
    }

    #[test]
    fn the_classes_are_those_of_the_design_notes() {
        let limited: Vec<_> = routes()
            .filter(|r| r.rate_limit() == RateLimit::PerIp)
            .map(Route::template)
            .collect();
        assert_eq!(
            limited,
            [
                "/auth/register",
                "/auth/login",
                "/auth/token/refresh",
                "/oauth/token",
                "/oauth/par",
                "/oauth/authorize",
                "/login",
                "/oauth/register",
                "/oauth/device_authorization",
                "/device",
                "/auth/verify-email",
                "/auth/verify-email/confirm",
                "/auth/verify-email/resend",
                "/auth/password/forgot",
                "/auth/password/forgot/send",
                "/auth/password/reset",
                "/auth/password/reset/confirm"
            ]
        );
        let memory: Vec<_> = routes()
            .filter(|r| r.served_from_memory())
            .map(Route::template)
            .collect();
        assert_eq!(
            memory,
            [
                "/.well-known/jwks.json",
                "/.well-known/oauth-authorization-server",
                "/.well-known/openid-configuration",
                "/openapi.json",
                "/healthz",
                "/assets/{name}"
            ]
        );
        let ops: Vec<_> = routes()
            .filter(|r| r.surface() == Surface::Ops)
            .map(Route::template)
            .collect();
        assert_eq!(ops, ["/healthz", "/readyz", "/metrics"]);
        for r in routes() {
            // What is answered from memory serves nothing else, needs no timer and is never
            // rate limited (it is answered before the limit would be asked).
            if r.served_from_memory() {
                assert!(
                    r.handlers
                        .iter()
                        .all(|(_, h)| matches!(h, Handler::Memory(_))),
                    "{r:?}"
                );
                assert_eq!(r.timeout(), Timeout::None, "{r:?}");
                assert_eq!(r.rate_limit(), RateLimit::None, "{r:?}");
            } else {
                assert_eq!(r.timeout(), Timeout::Request, "{r:?}");
            }
        }
    }
}
