//! Token exchange (RFC 8693) and resource indicators (RFC 8707; docs/token_exchange.md), in both
//! modes: a confidential client exchanges a user's access token for an audience of its
//! `token_exchange_audiences`, with `act` naming who acts (nested after an earlier exchange),
//! a scope never wider than the subject token's or its own, bound to the request's DPoP key,
//! dying with the user's session, even when an exchange races the sign-out; every refusal has
//! its reason. `resource` on the authorization endpoint, PAR and every token request makes the
//! access token's `aud` exactly the resources asked for, within the client's `resources`, the
//! code's and the family's grant.

use futures_util::future::join_all;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tokend::clock::Clock;

use crate::authorize::{
    authorize_url, location, query_of, spawn_with_clients, App, CHALLENGE, PASSWORD, REDIRECT,
    VERIFIER,
};
use crate::dpop::DpopKey;
use crate::helpers::*;
use crate::in_both_modes;
use crate::verifier::verifier_for_audience;

in_both_modes!(
    an_exchange_issues_a_token_for_the_audience_with_act_and_no_refresh_token,
    an_actor_token_of_the_client_names_the_actor,
    a_second_exchange_nests_the_first_actor_up_to_a_bound,
    the_scope_is_narrowed_never_widened,
    the_audience_is_what_was_asked_within_the_clients_list,
    only_a_confidential_client_allowed_the_grant_may_exchange,
    the_subject_token_must_be_a_live_access_token_of_tokend,
    the_new_token_never_outlives_the_subject_token,
    exchanges_bind_to_the_proof_key_and_bound_subjects_need_it,
    the_exchanged_token_dies_with_the_users_session_even_racing_the_sign_out,
    resources_flow_from_authorize_to_the_code_and_the_family,
    an_unregistered_resource_is_refused_on_authorize_and_par,
    resources_on_client_credentials_and_password_grants,
    resources_on_the_device_grant,
    registration_grants_neither_exchange_nor_resources,
);

const SECRET: &str = "exchange-secret-0123456789abcdef";
const TE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const DEVICE: &str = "urn:ietf:params:oauth:grant-type:device_code";
const AT: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const ORDERS: &str = "https://orders.example/";
const BILLING: &str = "https://billing.example/";
const OTHER: &str = "https://other.example/";
/// `TOKEND_ISSUER` of the test apps: DPoP proofs name it in `htu`.
const ISSUER: &str = "http://tokend.test";

fn clients() -> Value {
    json!([
        // A public app users sign in to.
        {"client_id": "app", "grant_types": ["password", "refresh_token"],
         "scopes": ["orders:read", "orders:write", "profile"], "resources": [ORDERS, BILLING],
         "client_name": "Example App"},
        // A web app of the code flow, first-party (no consent page).
        {"client_id": "web", "client_secret": SECRET,
         "grant_types": ["authorization_code", "refresh_token"], "scopes": ["orders:read"],
         "redirect_uris": [REDIRECT], "first_party": true, "client_name": "Example Web App",
         "resources": [ORDERS, BILLING]},
        // Services that exchange users' tokens.
        {"client_id": "gateway", "client_secret": SECRET,
         "grant_types": ["client_credentials", TE], "scopes": ["orders:read", "orders:write"],
         "token_exchange_audiences": [ORDERS, "tokend", "reports"]},
        {"client_id": "second", "client_secret": SECRET,
         "grant_types": ["client_credentials", TE], "scopes": ["orders:read"],
         "token_exchange_audiences": [ORDERS, "tokend"]},
        // An operator's console: its users' tokens are actor tokens.
        {"client_id": "ops", "client_secret": SECRET, "grant_types": ["password", TE],
         "scopes": ["orders:read"], "token_exchange_audiences": [ORDERS]},
        {"client_id": "nogrant", "client_secret": SECRET, "grant_types": ["client_credentials"],
         "scopes": ["orders:read"]},
        {"client_id": "noaud", "client_secret": SECRET, "grant_types": [TE],
         "scopes": ["orders:read"]},
        {"client_id": "svc", "client_secret": SECRET, "grant_types": ["client_credentials"],
         "scopes": ["orders:read"], "resources": [ORDERS]},
        // A TV of the device grant.
        {"client_id": "tv", "grant_types": [DEVICE, "refresh_token"], "scopes": ["orders:read"],
         "resources": [ORDERS], "client_name": "Example TV"},
    ])
}

async fn spawn(mode: Mode) -> App {
    spawn_with_clients(mode, &clients()).await
}

/// `POST /oauth/token` with `form`, as `client` (HTTP Basic with the shared secret) or, when
/// `None`, with whatever `form` carries; with a DPoP proof when given.
async fn token_request(
    app: &TestApp,
    client: Option<&str>,
    form: &[(&str, &str)],
    proof: Option<&str>,
) -> Response {
    let mut req = app.http.post(app.url("/oauth/token"));
    if let Some(c) = client {
        req = req.basic_auth(c, Some(SECRET));
    }
    if let Some(p) = proof {
        req = req.header("DPoP", p);
    }
    req.form(form).send().await.unwrap()
}

/// A token exchange of `subject` by `client`, with `extra` parameters.
async fn exchange(app: &TestApp, client: &str, subject: &str, extra: &[(&str, &str)]) -> Response {
    exchange_with(app, client, subject, extra, None).await
}

async fn exchange_with(
    app: &TestApp,
    client: &str,
    subject: &str,
    extra: &[(&str, &str)],
    proof: Option<&str>,
) -> Response {
    let mut form = vec![
        ("grant_type", TE),
        ("subject_token", subject),
        ("subject_token_type", AT),
    ];
    for &(k, v) in extra {
        // Repeatable parameters add up; any other replaces the default (empty: left out).
        form.retain(|&(fk, _)| fk != k || k == "audience" || k == "resource");
        if !v.is_empty() {
            form.push((k, v));
        }
    }
    token_request(app, Some(client), &form, proof).await
}

/// The body of a 200, asserting it.
async fn ok(res: Response) -> Value {
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The `error_description` of a refusal with this status and code, asserting them.
async fn refused(res: Response, status: StatusCode, code: &str) -> String {
    let got = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (got, body["error"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    body["error_description"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A password grant for `ada` by the public `app`, with `extra` parameters.
async fn ada_tokens(app: &TestApp, extra: &[(&str, &str)], proof: Option<&str>) -> Value {
    let mut form = vec![
        ("grant_type", "password"),
        ("client_id", "app"),
        ("username", "ada"),
        ("password", PASSWORD),
    ];
    form.extend_from_slice(extra);
    ok(token_request(app, None, &form, proof).await).await
}

fn access_of(body: &Value) -> String {
    body["access_token"].as_str().unwrap().to_string()
}

/// Introspection by `client` (RFC 7662).
async fn introspect(app: &TestApp, client: &str, token: &str) -> Value {
    let res = app
        .http
        .post(app.url("/oauth/introspect"))
        .basic_auth(client, Some(SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    ok(res).await
}

/// `tokend_token_exchanges_total{result}` now.
async fn exchanges(app: &TestApp, result: &str) -> u64 {
    let text = app.metrics_text().await;
    let prefix = format!("tokend_token_exchanges_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no series {prefix}"))
        .parse()
        .unwrap()
}

/// A DPoP proof of `key` for the token endpoint now.
fn token_proof(app: &TestApp, key: &DpopKey) -> String {
    key.proof_at(
        "POST",
        &format!("{ISSUER}/oauth/token"),
        app.clock.now(),
        &json!({}),
    )
}

// ---------------------------------------------------------------------------------------------
// Token exchange
// ---------------------------------------------------------------------------------------------

async fn an_exchange_issues_a_token_for_the_audience_with_act_and_no_refresh_token(mode: Mode) {
    let app = spawn(mode).await;
    assert_eq!(
        exchanges(&app, "issued").await,
        0,
        "every series from the start"
    );
    let user = ada_tokens(&app, &[], None).await;
    let subject = access_of(&user);
    let body = ok(exchange(&app, "gateway", &subject, &[("audience", ORDERS)]).await).await;
    assert_eq!(body["issued_token_type"], AT, "RFC 8693 §2.2.1");
    assert_eq!(body["token_type"], "Bearer");
    assert!(
        body.get("refresh_token").is_none(),
        "no refresh token: {body}"
    );
    assert!(body.get("id_token").is_none(), "{body}");
    // The subject's scope, within the gateway's own (profile is not one of the gateway's).
    assert_eq!(body["scope"], "orders:read orders:write");

    let exchanged = access_of(&body);
    assert_eq!(header(&exchanged)["typ"], "at+jwt");
    let (c, s) = (claims(&exchanged), claims(&subject));
    assert_eq!(c["sub"], s["sub"], "the subject stays the user");
    assert_eq!(c["sid"], s["sid"], "the user's session");
    assert_eq!(c["aud"], ORDERS);
    assert_eq!(c["client_id"], "gateway", "RFC 8693 §4.3");
    assert_eq!(c["act"], json!({"sub": "gateway", "client_id": "gateway"}));
    assert_eq!(c["fresh"], false, "an exchange is no password sign-in");
    assert_eq!(c["roles"], json!(["user"]));
    assert_eq!(c["auth_time"], s["auth_time"]);
    assert!(c["exp"].as_i64().unwrap() <= s["exp"].as_i64().unwrap());
    assert_eq!(
        body["expires_in"].as_i64().unwrap(),
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap()
    );
    assert_ne!(c["jti"], s["jti"]);
    assert!(s.get("act").is_none());

    // Introspection answers for a token of another audience, with act (RFC 8693 §4.1).
    let i = introspect(&app, "gateway", &exchanged).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(
        i["act"],
        json!({"sub": "gateway", "client_id": "gateway"}),
        "{i}"
    );
    assert_eq!(i["aud"], ORDERS);
    assert_eq!(i["username"], "ada");
    assert_eq!(i["client_id"], "gateway");

    // Meant for the orders API: tokend's own routes refuse it, the orders API's verifier takes
    // it and reads act.
    let res = app.get_bearer("/auth/verify", &exchanged).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (orders_api, _) = verifier_for_audience(&app, ORDERS).await;
    let verified = orders_api.verify(&exchanged).await.unwrap();
    assert_eq!(verified.sub, s["sub"].as_str().unwrap());
    let actor = verified.actor().expect("act");
    assert_eq!(
        (actor.sub.as_str(), actor.client_id.as_deref()),
        ("gateway", Some("gateway"))
    );
    let (tokend_api, _) = verifier_for_audience(&app, "tokend").await;
    assert!(tokend_api.verify(&exchanged).await.is_err());
    assert!(tokend_api.verify(&subject).await.unwrap().act.is_none());

    // The jwt token type names the same tokens (RFC 8693 §3).
    let body = ok(exchange(
        &app,
        "gateway",
        &subject,
        &[
            ("subject_token_type", JWT),
            ("requested_token_type", JWT),
            ("audience", ORDERS),
        ],
    )
    .await)
    .await;
    assert_eq!(body["issued_token_type"], JWT);
    assert_eq!(exchanges(&app, "issued").await, 2);
}

async fn an_actor_token_of_the_client_names_the_actor(mode: Mode) {
    let app = spawn(mode).await;
    let res = app.register("bob", "bob@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    // Bob signs in to the operator's console; his token there is the console's own.
    let bob = ok(token_request(
        &app,
        Some("ops"),
        &[
            ("grant_type", "password"),
            ("username", "bob"),
            ("password", PASSWORD),
        ],
        None,
    )
    .await)
    .await;
    let bob_token = access_of(&bob);
    let bob_id = claims(&bob_token)["sub"].clone();
    let subject = access_of(&ada_tokens(&app, &[], None).await);

    let actor = [
        ("audience", ORDERS),
        ("actor_token", bob_token.as_str()),
        ("actor_token_type", AT),
    ];
    let body = ok(exchange(&app, "ops", &subject, &actor).await).await;
    let c = claims(&access_of(&body));
    assert_eq!(c["sub"], claims(&subject)["sub"], "still ada's");
    assert_eq!(c["act"], json!({"sub": bob_id, "client_id": "ops"}));
    assert_eq!(c["client_id"], "ops");

    // An actor token must be the authenticated client's own.
    let d = refused(
        exchange(&app, "gateway", &subject, &actor).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert!(
        d.contains("actor_token") && d.contains("another client"),
        "{d}"
    );
    // The gateway's own client_credentials token is its own: accepted, and names it.
    let cc = ok(token_request(
        &app,
        Some("gateway"),
        &[("grant_type", "client_credentials")],
        None,
    )
    .await)
    .await;
    let cc_token = access_of(&cc);
    let body = ok(exchange(
        &app,
        "gateway",
        &subject,
        &[
            ("audience", ORDERS),
            ("actor_token", cc_token.as_str()),
            ("actor_token_type", JWT),
        ],
    )
    .await)
    .await;
    assert_eq!(
        claims(&access_of(&body))["act"],
        json!({"sub": "gateway", "client_id": "gateway"})
    );
    // The type goes with the token, both or neither (RFC 8693 §2.1); a bad actor token is
    // refused for itself.
    for (extra, needle) in [
        (
            vec![("actor_token", cc_token.as_str())],
            "actor_token_type is required",
        ),
        (vec![("actor_token_type", AT)], "without actor_token"),
        (
            vec![
                ("actor_token", cc_token.as_str()),
                (
                    "actor_token_type",
                    "urn:ietf:params:oauth:token-type:refresh_token",
                ),
            ],
            "unsupported actor_token_type",
        ),
        (
            vec![("actor_token", "not.a.token"), ("actor_token_type", AT)],
            "actor_token is not a live access token",
        ),
    ] {
        let mut extra = extra;
        extra.push(("audience", ORDERS));
        let d = refused(
            exchange(&app, "gateway", &subject, &extra).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(d.contains(needle), "{needle}: {d}");
    }
    assert_eq!(exchanges(&app, "actor_token").await, 2);
    assert_eq!(exchanges(&app, "invalid_request").await, 3);
}

async fn a_second_exchange_nests_the_first_actor_up_to_a_bound(mode: Mode) {
    let app = spawn(mode).await;
    let subject = access_of(&ada_tokens(&app, &[], None).await);
    let first =
        access_of(&ok(exchange(&app, "gateway", &subject, &[("audience", ORDERS)]).await).await);
    // No audience named: the subject token's own, which `second` may exchange for.
    let body = ok(exchange(&app, "second", &first, &[]).await).await;
    assert_eq!(body["scope"], "orders:read", "within second's scopes");
    let second = access_of(&body);
    let c = claims(&second);
    assert_eq!(c["aud"], ORDERS);
    assert_eq!(c["sub"], claims(&subject)["sub"]);
    assert_eq!(c["sid"], claims(&subject)["sid"]);
    assert_eq!(
        c["act"],
        json!({"sub": "second", "client_id": "second",
               "act": {"sub": "gateway", "client_id": "gateway"}}),
        "RFC 8693 §4.1: the current actor outermost, the earlier one inside"
    );
    let i = introspect(&app, "second", &second).await;
    assert_eq!(i["act"]["act"]["sub"], "gateway", "{i}");
    // An audience outside second's list is refused, whatever the subject token's.
    refused(
        exchange(&app, "second", &first, &[("audience", "reports")]).await,
        StatusCode::BAD_REQUEST,
        "invalid_target",
    )
    .await;

    // A chain of at most 8 actors: the two clients take turns until the ninth is refused.
    let mut token = subject;
    for depth in 1..=8 {
        let client = if depth % 2 == 1 { "gateway" } else { "second" };
        let body = ok(exchange(&app, client, &token, &[("audience", ORDERS)]).await).await;
        token = access_of(&body);
        let c = claims(&token);
        let mut n = 0;
        let mut act = &c["act"];
        while act.is_object() {
            n += 1;
            act = &act["act"];
        }
        assert_eq!(n, depth);
    }
    let d = refused(
        exchange(&app, "gateway", &token, &[("audience", ORDERS)]).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert!(d.contains("delegation chain"), "{d}");
    assert_eq!(exchanges(&app, "chain_too_long").await, 1);
}

async fn the_scope_is_narrowed_never_widened(mode: Mode) {
    let app = spawn(mode).await;
    let subject = access_of(&ada_tokens(&app, &[], None).await);
    assert_eq!(
        claims(&subject)["scope"],
        "orders:read orders:write profile"
    );
    let narrower = ok(exchange(
        &app,
        "gateway",
        &subject,
        &[("audience", ORDERS), ("scope", "orders:read")],
    )
    .await)
    .await;
    assert_eq!(narrower["scope"], "orders:read");
    assert_eq!(claims(&access_of(&narrower))["scope"], "orders:read");
    let both = ok(exchange(
        &app,
        "gateway",
        &subject,
        &[
            ("audience", ORDERS),
            ("scope", "orders:write orders:read orders:write"),
        ],
    )
    .await)
    .await;
    assert_eq!(both["scope"], "orders:write orders:read");
    // Held by the subject token, but not one of the gateway's scopes.
    let d = refused(
        exchange(
            &app,
            "gateway",
            &subject,
            &[("audience", ORDERS), ("scope", "profile")],
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    )
    .await;
    assert!(d.contains("not one of this client's scopes"), "{d}");
    refused(
        exchange(
            &app,
            "gateway",
            &subject,
            &[("audience", ORDERS), ("scope", "orders:admin")],
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    )
    .await;
    // One of the gateway's scopes, but wider than the subject token's.
    let read_only = access_of(&ada_tokens(&app, &[("scope", "orders:read")], None).await);
    let d = refused(
        exchange(
            &app,
            "gateway",
            &read_only,
            &[("audience", ORDERS), ("scope", "orders:read orders:write")],
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    )
    .await;
    assert!(d.contains("does not hold"), "{d}");
    let kept = ok(exchange(&app, "gateway", &read_only, &[("audience", ORDERS)]).await).await;
    assert_eq!(
        kept["scope"], "orders:read",
        "omitted: the subject's, within the client's"
    );
    assert_eq!(exchanges(&app, "invalid_scope").await, 3);
}

async fn the_audience_is_what_was_asked_within_the_clients_list(mode: Mode) {
    let app = spawn(mode).await;
    let subject = access_of(&ada_tokens(&app, &[], None).await);
    // `audience` and `resource` together: the new token's aud is every one, in order.
    let body = ok(exchange(
        &app,
        "gateway",
        &subject,
        &[("audience", "reports"), ("resource", ORDERS)],
    )
    .await)
    .await;
    assert_eq!(claims(&access_of(&body))["aud"], json!(["reports", ORDERS]));
    // Repeated audiences (RFC 8693 §2.1 allows several) are one each.
    let body = ok(exchange(
        &app,
        "gateway",
        &subject,
        &[("audience", ORDERS), ("audience", ORDERS)],
    )
    .await)
    .await;
    assert_eq!(claims(&access_of(&body))["aud"], ORDERS);
    // None named: the subject token's own audience, when the list allows it.
    let body = ok(exchange(&app, "gateway", &subject, &[]).await).await;
    let same = access_of(&body);
    assert_eq!(claims(&same)["aud"], "tokend");
    let res = app.get_bearer("/auth/verify", &same).await;
    assert_eq!(res.status(), StatusCode::OK, "a token for tokend itself");
    // Refusals: an audience not listed, a malformed resource, the subject's audience not
    // listed, a client whose list is empty.
    for (client, extra, needle) in [
        (
            "gateway",
            vec![("audience", BILLING)],
            "not among its token_exchange_audiences",
        ),
        (
            "gateway",
            vec![("resource", "https://orders.example/#x")],
            "fragment",
        ),
        ("gateway", vec![("resource", "orders")], "absolute URI"),
        ("gateway", vec![("audience", "two words")], "printable"),
        ("ops", vec![], "\"tokend\" is not among"),
        (
            "noaud",
            vec![("audience", ORDERS)],
            "token_exchange_audiences is empty",
        ),
    ] {
        let d = refused(
            exchange(&app, client, &subject, &extra).await,
            StatusCode::BAD_REQUEST,
            "invalid_target",
        )
        .await;
        assert!(d.contains(needle), "{client} {extra:?}: {d}");
    }
    assert_eq!(exchanges(&app, "invalid_target").await, 6);
}

async fn only_a_confidential_client_allowed_the_grant_may_exchange(mode: Mode) {
    let app = spawn(mode).await;
    let subject = access_of(&ada_tokens(&app, &[], None).await);
    let d = refused(
        exchange(&app, "nogrant", &subject, &[("audience", ORDERS)]).await,
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
    )
    .await;
    assert!(d.contains("may not use grant_type"), "{d}");
    // A public client, identified by its id alone.
    let res = token_request(
        &app,
        None,
        &[
            ("grant_type", TE),
            ("client_id", "app"),
            ("subject_token", &subject),
            ("subject_token_type", AT),
            ("audience", ORDERS),
        ],
        None,
    )
    .await;
    let d = refused(res, StatusCode::BAD_REQUEST, "unauthorized_client").await;
    assert!(d.contains("confidential client"), "{d}");
    // A wrong secret never reaches the grant.
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("gateway", Some("wrong"))
        .form(&[
            ("grant_type", TE),
            ("subject_token", subject.as_str()),
            ("subject_token_type", AT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(exchanges(&app, "unauthorized_client").await, 2);
    assert_eq!(exchanges(&app, "issued").await, 0);
}

async fn the_subject_token_must_be_a_live_access_token_of_tokend(mode: Mode) {
    let app = spawn(mode).await;
    let user = ada_tokens(&app, &[], None).await;
    let subject = access_of(&user);
    let refresh = user["refresh_token"].as_str().unwrap().to_string();
    // Another first character of the signature: other bytes, whatever the encoder's padding.
    let (signed, signature) = subject.rsplit_once('.').unwrap();
    let first = if signature.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{signed}.{first}{}", &signature[1..]);
    let garbage = "x".repeat(40);
    for (token, needle) in [
        (garbage.as_str(), "subject_token is not a live access token"),
        (refresh.as_str(), "wrong token type"),
        (tampered.as_str(), "bad signature"),
    ] {
        let d = refused(
            exchange(&app, "gateway", token, &[("audience", ORDERS)]).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(d.contains(needle), "{needle}: {d}");
    }
    // Types tokend never exchanges, and parameters missing.
    for (extra, needle) in [
        (
            vec![(
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:refresh_token",
            )],
            "never exchanged",
        ),
        (
            vec![(
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:id_token",
            )],
            "never exchanged",
        ),
        (
            vec![(
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:saml2",
            )],
            "unsupported subject_token_type",
        ),
        (
            vec![("subject_token_type", "")],
            "missing parameter subject_token_type",
        ),
        (
            vec![("subject_token", "")],
            "missing parameter subject_token",
        ),
        (
            vec![(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:refresh_token",
            )],
            "unsupported requested_token_type",
        ),
    ] {
        let d = refused(
            exchange(&app, "gateway", &subject, &extra).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(d.contains(needle), "{extra:?}: {d}");
    }
    // Revoked: ada signs out of that session.
    let live = access_of(&ada_tokens(&app, &[], None).await);
    let from_live =
        access_of(&ok(exchange(&app, "gateway", &live, &[("audience", "tokend")]).await).await);
    assert_eq!(
        app.get_bearer("/auth/verify", &from_live).await.status(),
        StatusCode::OK
    );
    let res = app.post_bearer("/auth/logout", &live).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // That session's family is revoked, and the token exchanged from it with it.
    assert_eq!(
        app.get_bearer("/auth/verify", &from_live).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let d = refused(
        exchange(&app, "gateway", &live, &[("audience", ORDERS)]).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert!(d.contains("revoked"), "{d}");
    // Expired: past its exp, even within the leeway other checks allow.
    app.clock
        .advance(std::time::Duration::from_secs(15 * 60 + 1));
    let d = refused(
        exchange(&app, "gateway", &subject, &[("audience", ORDERS)]).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert!(d.contains("expired"), "{d}");
    assert_eq!(exchanges(&app, "subject_token").await, 5);
    assert_eq!(exchanges(&app, "invalid_request").await, 6);
}

async fn the_new_token_never_outlives_the_subject_token(mode: Mode) {
    let app = spawn(mode).await;
    let subject = access_of(&ada_tokens(&app, &[], None).await);
    let subject_exp = claims(&subject)["exp"].as_i64().unwrap();
    // 14 of the subject token's 15 minutes have gone.
    app.clock.advance(std::time::Duration::from_secs(14 * 60));
    let body = ok(exchange(&app, "gateway", &subject, &[("audience", ORDERS)]).await).await;
    let c = claims(&access_of(&body));
    assert_eq!(
        c["exp"].as_i64().unwrap(),
        subject_exp,
        "cut to the subject's exp"
    );
    let expires_in = body["expires_in"].as_i64().unwrap();
    assert!((1..=60).contains(&expires_in), "{expires_in}");
}

async fn exchanges_bind_to_the_proof_key_and_bound_subjects_need_it(mode: Mode) {
    let app = spawn(mode).await;
    // An unbound subject and a proof: the new token is bound to the proof's key (RFC 9449 §5).
    let subject = access_of(&ada_tokens(&app, &[], None).await);
    let key = DpopKey::p256();
    let body = ok(exchange_with(
        &app,
        "gateway",
        &subject,
        &[("audience", ORDERS)],
        Some(&token_proof(&app, &key)),
    )
    .await)
    .await;
    assert_eq!(body["token_type"], "DPoP");
    let bound = access_of(&body);
    assert_eq!(claims(&bound)["cnf"]["jkt"], key.jkt());
    let i = introspect(&app, "gateway", &bound).await;
    assert_eq!(
        (i["token_type"].as_str(), i["cnf"]["jkt"].as_str()),
        (Some("DPoP"), Some(key.jkt().as_str()))
    );

    // A bound subject token (ada's app keeps a key): exchanged only with a proof of that key.
    let app_key = DpopKey::ed25519();
    let user = ada_tokens(&app, &[], Some(&token_proof(&app, &app_key))).await;
    assert_eq!(user["token_type"], "DPoP");
    let bound_subject = access_of(&user);
    refused(
        exchange(&app, "gateway", &bound_subject, &[("audience", ORDERS)]).await,
        StatusCode::BAD_REQUEST,
        "invalid_dpop_proof",
    )
    .await;
    let d = refused(
        exchange_with(
            &app,
            "gateway",
            &bound_subject,
            &[("audience", ORDERS)],
            Some(&token_proof(&app, &DpopKey::ed25519())),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert!(d.contains("bound to another key"), "{d}");
    let body = ok(exchange_with(
        &app,
        "gateway",
        &bound_subject,
        &[("audience", ORDERS)],
        Some(&token_proof(&app, &app_key)),
    )
    .await)
    .await;
    assert_eq!(body["token_type"], "DPoP");
    assert_eq!(
        claims(&access_of(&body))["cnf"]["jkt"],
        app_key.jkt(),
        "the new token stays on the subject's key"
    );
    assert_eq!(exchanges(&app, "dpop_binding").await, 2);
}

async fn the_exchanged_token_dies_with_the_users_session_even_racing_the_sign_out(mode: Mode) {
    let app = spawn(mode).await;
    let subject = access_of(&ada_tokens(&app, &[], None).await);
    let exchanged =
        access_of(&ok(exchange(&app, "gateway", &subject, &[("audience", "tokend")]).await).await);
    let res = app.get_bearer("/auth/verify", &exchanged).await;
    assert_eq!(res.status(), StatusCode::OK);
    let verified: Value = res.json().await.unwrap();
    assert_eq!(verified["claims"]["act"]["sub"], "gateway", "{verified}");
    let me: Value = app
        .get_bearer("/users/me", &exchanged)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "ada", "on the user's behalf");

    // Exchanges racing the user's "sign out everywhere": whatever each got, nothing lives after.
    let racing =
        join_all((0..8).map(|_| exchange(&app, "gateway", &subject, &[("audience", "tokend")])));
    let (answers, logout) = tokio::join!(racing, app.post_bearer("/auth/logout/all", &subject));
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let mut issued = vec![exchanged];
    for res in answers {
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        match status {
            StatusCode::OK => issued.push(access_of(&body)),
            _ => assert_eq!(body["error"], "invalid_request", "{body}"),
        }
    }
    for token in &issued {
        let res = app.get_bearer("/auth/verify", token).await;
        assert_eq!(
            res.status(),
            StatusCode::UNAUTHORIZED,
            "an exchanged token outlived logout-all"
        );
        assert_eq!(
            introspect(&app, "gateway", token).await,
            json!({"active": false})
        );
    }
    refused(
        exchange(&app, "gateway", &subject, &[("audience", "tokend")]).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;

    // A password change ends them too.
    let (fresh, _) = app.login_pair("ada@example.com", PASSWORD).await;
    let exchanged =
        access_of(&ok(exchange(&app, "gateway", &fresh, &[("audience", "tokend")]).await).await);
    assert_eq!(
        app.get_bearer("/auth/verify", &exchanged).await.status(),
        StatusCode::OK
    );
    let res = app
        .put_bearer(
            "/users/me/password",
            &fresh,
            &json!({"current_password": PASSWORD, "new_password": "another long passphrase"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get_bearer("/auth/verify", &exchanged).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

// ---------------------------------------------------------------------------------------------
// Resource indicators
// ---------------------------------------------------------------------------------------------

/// The code flow for `web` with `extra` authorization parameters (and a `resource` for each of
/// `resources`), signed in as ada; answers the callback's parameters.
async fn code_with(
    app: &App,
    resources: &[&str],
    extra: &[(&str, &str)],
) -> std::collections::HashMap<String, String> {
    let mut params = vec![("scope", "openid orders:read")];
    params.extend_from_slice(extra);
    let mut url = authorize_url(app, "web", &params);
    for r in resources {
        url.push_str(&format!("&resource={}", urlencode(r)));
    }
    let res = app.get(&url).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let to = location(&res);
    let res = if to.starts_with("/login") {
        app.sign_in(&to, PASSWORD).await
    } else {
        res
    };
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let to = location(&res);
    assert!(to.starts_with(REDIRECT), "{to}");
    query_of(&to)
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).unwrap()[2..].to_string()
}

/// Redeems a code of `web` asking for `resources`.
async fn redeem(app: &TestApp, code: &str, resources: &[&str]) -> Response {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    form.extend(resources.iter().map(|r| ("resource", *r)));
    token_request(app, Some("web"), &form, None).await
}

/// Refreshes a family of `client` (HTTP Basic for `web`, `client_id` for the public `app`)
/// asking for `resources`.
async fn refresh(app: &TestApp, client: &str, refresh_token: &str, resources: &[&str]) -> Response {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ];
    form.extend(resources.iter().map(|r| ("resource", *r)));
    if client == "web" {
        token_request(app, Some("web"), &form, None).await
    } else {
        form.push(("client_id", client));
        token_request(app, None, &form, None).await
    }
}

fn aud_of(body: &Value) -> Value {
    claims(&access_of(body))["aud"].clone()
}

async fn resources_flow_from_authorize_to_the_code_and_the_family(mode: Mode) {
    let app = spawn(mode).await;
    let cb = code_with(&app, &[ORDERS, BILLING], &[]).await;
    let body = ok(redeem(&app, &cb["code"], &[ORDERS]).await).await;
    assert_eq!(aud_of(&body), ORDERS, "exactly the resource asked for");
    assert!(body["id_token"].is_string());
    let id_token = body["id_token"].as_str().unwrap().to_string();
    let mut rt = body["refresh_token"].as_str().unwrap().to_string();

    // The family keeps both resources: a refresh asking none is for both, one for that one.
    let body = ok(refresh(&app, "web", &rt, &[]).await).await;
    assert_eq!(aud_of(&body), json!([ORDERS, BILLING]));
    rt = body["refresh_token"].as_str().unwrap().to_string();
    let body = ok(refresh(&app, "web", &rt, &[BILLING]).await).await;
    assert_eq!(aud_of(&body), BILLING);
    rt = body["refresh_token"].as_str().unwrap().to_string();
    // A resource the family was not granted: invalid_target, and the family does not move
    // (the same refresh token then works).
    let d = refused(
        refresh(&app, "web", &rt, &[OTHER]).await,
        StatusCode::BAD_REQUEST,
        "invalid_target",
    )
    .await;
    assert!(
        d.contains("not one the authorization was granted for"),
        "{d}"
    );
    let body = ok(refresh(&app, "web", &rt, &[ORDERS, BILLING]).await).await;
    assert_eq!(aud_of(&body), json!([ORDERS, BILLING]));

    // A code granted for one resource: a registered resource it was not granted is refused.
    let cb = code_with(&app, &[ORDERS], &[]).await;
    refused(
        redeem(&app, &cb["code"], &[BILLING]).await,
        StatusCode::BAD_REQUEST,
        "invalid_target",
    )
    .await;
    // A resource the client may never ask for is refused before the code is spent.
    let cb = code_with(&app, &[ORDERS], &[]).await;
    refused(
        redeem(&app, &cb["code"], &[OTHER]).await,
        StatusCode::BAD_REQUEST,
        "invalid_target",
    )
    .await;
    let body = ok(redeem(&app, &cb["code"], &[]).await).await;
    assert_eq!(
        aud_of(&body),
        ORDERS,
        "none asked: every resource of the code"
    );

    // No resource at authorization: the configured audience, and no resource later.
    let cb = code_with(&app, &[], &[]).await;
    let body = ok(redeem(&app, &cb["code"], &[]).await).await;
    assert_eq!(aud_of(&body), "tokend");
    let d = refused(
        refresh(
            &app,
            "web",
            body["refresh_token"].as_str().unwrap(),
            &[ORDERS],
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_target",
    )
    .await;
    assert!(d.contains("named no resource"), "{d}");

    // An ID token is never a subject token.
    let d = refused(
        exchange(&app, "gateway", &id_token, &[("audience", ORDERS)]).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert!(d.contains("wrong token type"), "{d}");
}

async fn an_unregistered_resource_is_refused_on_authorize_and_par(mode: Mode) {
    let app = spawn(mode).await;
    // After the redirect URI is trusted, back to the client with invalid_target.
    for bad in [OTHER, "orders", "https://orders.example/#top"] {
        let mut url = authorize_url(&app, "web", &[("scope", "openid orders:read")]);
        url.push_str(&format!("&resource={}", urlencode(bad)));
        let res = app.get(&url).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "{bad}");
        let to = location(&res);
        assert!(to.starts_with(REDIRECT), "{to}");
        let q = query_of(&to);
        assert_eq!(q["error"], "invalid_target", "{bad}: {to}");
        assert_eq!(q["state"], "st-123");
        assert_eq!(q["iss"], ISSUER);
    }
    // Pushed (RFC 9126): refused to the client directly; a registered one is remembered.
    let par = |resource: &'static str| {
        app.http
            .post(app.url("/oauth/par"))
            .basic_auth("web", Some(SECRET))
            .form(&[
                ("response_type", "code"),
                ("redirect_uri", REDIRECT),
                ("scope", "openid orders:read"),
                ("state", "st-par"),
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "S256"),
                ("resource", resource),
            ])
            .send()
    };
    refused(
        par(OTHER).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_target",
    )
    .await;
    let res = par(BILLING).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let pushed: Value = res.json().await.unwrap();
    let uri = format!(
        "/oauth/authorize?client_id=web&request_uri={}",
        urlencode(pushed["request_uri"].as_str().unwrap())
    );
    let res = app.get(&uri).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = app.sign_in(&location(&res), PASSWORD).await;
    let cb = query_of(&location(&res));
    assert_eq!(cb["state"], "st-par");
    let body = ok(redeem(&app, &cb["code"], &[]).await).await;
    assert_eq!(aud_of(&body), BILLING);
}

/// A client_credentials grant of `svc`, asking for `resource` when given.
async fn client_credentials(app: &TestApp, resource: Option<&str>) -> Response {
    let mut form = vec![("grant_type", "client_credentials")];
    form.extend(resource.map(|r| ("resource", r)));
    token_request(app, Some("svc"), &form, None).await
}

async fn resources_on_client_credentials_and_password_grants(mode: Mode) {
    let app = spawn(mode).await;
    let body = ok(client_credentials(&app, Some(ORDERS)).await).await;
    assert_eq!(aud_of(&body), ORDERS);
    let orders_token = access_of(&body);
    let body = ok(client_credentials(&app, None).await).await;
    assert_eq!(
        aud_of(&body),
        "tokend",
        "no resource: the configured audience"
    );
    let d = refused(
        client_credentials(&app, Some(BILLING)).await,
        StatusCode::BAD_REQUEST,
        "invalid_target",
    )
    .await;
    assert!(d.contains("not one this client may ask for"), "{d}");
    // A token for the orders API: tokend's own routes refuse it; introspection answers for it.
    let res = app.get_bearer("/auth/verify", &orders_token).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let i = introspect(&app, "gateway", &orders_token).await;
    assert_eq!(
        (i["active"].as_bool(), i["aud"].as_str()),
        (Some(true), Some(ORDERS))
    );

    // The password grant: two resources, an array; the family keeps them.
    let body = ada_tokens(&app, &[("resource", ORDERS), ("resource", BILLING)], None).await;
    assert_eq!(aud_of(&body), json!([ORDERS, BILLING]));
    let body = ada_tokens(&app, &[("resource", BILLING)], None).await;
    assert_eq!(aud_of(&body), BILLING);
    let rt = body["refresh_token"].as_str().unwrap().to_string();
    refused(
        refresh(&app, "app", &rt, &[ORDERS]).await,
        StatusCode::BAD_REQUEST,
        "invalid_target",
    )
    .await;
    let body = ok(refresh(&app, "app", &rt, &[]).await).await;
    assert_eq!(aud_of(&body), BILLING, "the family's resource");
    let res = token_request(
        &app,
        None,
        &[
            ("grant_type", "password"),
            ("client_id", "app"),
            ("username", "ada"),
            ("password", PASSWORD),
            ("resource", OTHER),
        ],
        None,
    )
    .await;
    refused(res, StatusCode::BAD_REQUEST, "invalid_target").await;
}

/// A poll of the device grant by `tv`, asking for `resource`.
async fn device_poll(app: &TestApp, device_code: &str, resource: &str) -> Response {
    let form = [
        ("grant_type", DEVICE),
        ("client_id", "tv"),
        ("device_code", device_code),
        ("resource", resource),
    ];
    token_request(app, None, &form, None).await
}

async fn resources_on_the_device_grant(mode: Mode) {
    let app = spawn(mode).await;
    let res = app
        .http
        .post(app.url("/oauth/device_authorization"))
        .form(&[("client_id", "tv"), ("scope", "orders:read")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let d: Value = res.json().await.unwrap();
    crate::device::approve_as(&app, &d, "ada", PASSWORD).await;
    let device_code = d["device_code"].as_str().unwrap();
    // Refused before the poll: the approval is still there to redeem.
    refused(
        device_poll(&app, device_code, OTHER).await,
        StatusCode::BAD_REQUEST,
        "invalid_target",
    )
    .await;
    let body = ok(device_poll(&app, device_code, ORDERS).await).await;
    assert_eq!(aud_of(&body), ORDERS);
    let body = ok(refresh(&app, "tv", body["refresh_token"].as_str().unwrap(), &[]).await).await;
    assert_eq!(aud_of(&body), ORDERS, "the family keeps the resource");
}

async fn registration_grants_neither_exchange_nor_resources(mode: Mode) {
    let app = spawn_app_with(mode, |env| {
        env.insert("TOKEND_CLIENT_REGISTRATION".into(), "open".into());
    })
    .await;
    let base =
        json!({"redirect_uris": ["https://app.example/cb"], "token_endpoint_auth_method": "none"});
    for (member, value) in [
        ("resources", json!([ORDERS])),
        ("token_exchange_audiences", json!([ORDERS])),
        ("grant_types", json!(["authorization_code", TE])),
    ] {
        let mut body = base.clone();
        body[member] = value;
        let res = app.post_json("/oauth/register", &body).await;
        let d = refused(res, StatusCode::BAD_REQUEST, "invalid_client_metadata").await;
        assert!(d.contains("operator"), "{member}: {d}");
    }
    let res = app.post_json("/oauth/register", &base).await;
    assert_eq!(res.status(), StatusCode::CREATED);
}

/// `tokend clients create --token-exchange-audience … --resource …` stores both in MongoDB;
/// the server holds the client to them (production mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_cli_creates_exchange_and_resource_metadata() {
    use crate::oauth::{listed_client, tokend_cli, tokend_cli_ok};
    let (env, _) = test_env(Mode::Production);
    let grants = format!("client_credentials,{TE}");
    let out = tokend_cli_ok(
        &env,
        &[
            "clients",
            "create",
            "--id",
            "cli-gateway",
            "--grant",
            &grants,
            "--scope",
            "orders:read",
            "--token-exchange-audience",
            ORDERS,
            "--resource",
            ORDERS,
            "--json",
        ],
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = created["client_secret"].as_str().unwrap().to_string();
    let (row, _) = listed_client(&env, "cli-gateway");
    assert_eq!(row["token_exchange_audiences"], json!([ORDERS]), "{row}");
    assert_eq!(row["resources"], json!([ORDERS]), "{row}");
    // Validated like the file: a resource with a fragment, audiences without the grant.
    for bad in [
        vec![
            "--grant",
            "client_credentials",
            "--resource",
            "https://a.example/#f",
        ],
        vec![
            "--grant",
            "client_credentials",
            "--token-exchange-audience",
            ORDERS,
        ],
        vec!["--public", "--grant", TE],
    ] {
        let mut args = vec!["clients", "create"];
        args.extend(bad.iter().copied());
        let out = tokend_cli(&env, &args);
        assert!(!out.status.success(), "{bad:?}");
    }

    let app = spawn_env(
        Mode::Production,
        env.clone(),
        None,
        tokend::clock::ManualClock::starting_now(),
    )
    .await;
    let token = |form: Vec<(&'static str, String)>| {
        app.http
            .post(app.url("/oauth/token"))
            .basic_auth("cli-gateway", Some(secret.clone()))
            .form(&form)
            .send()
    };
    let cc = ok(token(vec![
        ("grant_type", "client_credentials".into()),
        ("resource", ORDERS.into()),
    ])
    .await
    .unwrap())
    .await;
    assert_eq!(aud_of(&cc), ORDERS);
    let (user, _) = {
        let s = app.new_session().await;
        (s.access, s.refresh)
    };
    let body = ok(token(vec![
        ("grant_type", TE.into()),
        ("subject_token", user.clone()),
        ("subject_token_type", AT.into()),
        ("audience", ORDERS.into()),
    ])
    .await
    .unwrap())
    .await;
    assert_eq!(
        claims(&access_of(&body))["act"],
        json!({"sub": "cli-gateway", "client_id": "cli-gateway"})
    );
    refused(
        token(vec![
            ("grant_type", TE.into()),
            ("subject_token", user),
            ("subject_token_type", AT.into()),
            ("audience", BILLING.into()),
        ])
        .await
        .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_target",
    )
    .await;
    app.stop().await;
}

/// With Redis down the subject token cannot be checked: 503, never a token issued unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_an_exchange_answers_503_never_a_token() {
    let mut redis = crate::services::OwnedRedis::start().await;
    let url = redis.url();
    let file = write_clients_file(&clients());
    let path = file.path().to_string_lossy().into_owned();
    let app = spawn_app_with(Mode::Production, move |env| {
        env.insert("TOKEND_REDIS_URL".into(), url);
        env.insert("TOKEND_CLIENTS_FILE".into(), path);
    })
    .await;
    let res = app.register("ada", "ada@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let subject = access_of(&ada_tokens(&app, &[], None).await);
    assert!(
        ok(exchange(&app, "gateway", &subject, &[("audience", ORDERS)]).await).await
            ["access_token"]
            .is_string()
    );
    redis.stop().await;
    let res = exchange(&app, "gateway", &subject, &[("audience", ORDERS)]).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(res).await, "temporarily_unavailable");
    app.stop().await;
}
