//! Password reset and email change (docs/mail.md), in both modes: every link a user gets is
//! followed through its page (form posts with the CSRF token) and through JSON, and what a
//! reset or a change ends is shown refused afterwards. Mail goes to a directory of `.eml`
//! files; deliveries are waited for by polling it with a deadline, nothing is timed.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::authorize::{CHALLENGE, REDIRECT, WEB_SECRET};
use crate::helpers::*;
use crate::in_both_modes;
use crate::mail::{
    address, app_with_mail_dir, decoded_text, metric, wait_outbox_empty, Mailbox, Received,
};

const PASSWORD: &str = "correct horse battery";
const NEW_PASSWORD: &str = "a brand new passphrase";

in_both_modes!(
    a_reset_link_sets_a_new_password_through_the_page_and_ends_every_session,
    a_reset_token_is_spent_once_and_concurrent_redemptions_have_one_winner,
    a_reset_token_dies_when_another_is_issued_or_the_password_changes,
    dead_and_malformed_reset_links_answer_a_clear_error,
    the_sign_in_page_leads_to_a_reset_through_pages,
    forgetting_a_password_answers_alike_for_every_address_and_is_throttled,
    an_email_change_happens_at_confirmation_and_the_old_address_is_told,
    an_email_change_confirms_through_json_and_is_refused_if_the_address_was_taken,
    a_reset_and_an_email_change_are_account_events,
    a_password_change_or_reset_ends_a_pending_email_change,
    an_email_change_and_a_reset_in_a_race_never_both_land,
    of_concurrent_password_changes_one_lands_and_the_others_are_refused,
);

/// A first-party web client, so that a browser signs in without a consent page.
fn clients() -> Value {
    json!([
        {"client_id": "web", "client_secret": WEB_SECRET,
         "grant_types": ["authorization_code", "refresh_token"],
         "redirect_uris": [REDIRECT], "first_party": true, "client_name": "Example Web App"},
    ])
}

/// An app with mail in a directory and the client above.
async fn spawn(
    mode: Mode,
    adjust: impl FnOnce(&mut HashMap<String, String>),
) -> (TestApp, Mailbox, tempfile::TempDir, tempfile::NamedTempFile) {
    let file = write_clients_file(&clients());
    let path = file.path().to_string_lossy().into_owned();
    let (app, mailbox, dir) = app_with_mail_dir(mode, |env| {
        env.insert("TOKEND_CLIENTS_FILE".into(), path);
        adjust(env);
    })
    .await;
    (app, mailbox, dir, file)
}

async fn register(app: &TestApp) -> (String, String) {
    let (username, email) = address();
    let res = app.register(&username, &email, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    (username, email)
}

async fn forgot(app: &TestApp, email: &str) -> Response {
    app.post_json("/auth/password/forgot", &json!({ "email": email }))
        .await
}

/// The reset mails to `email`, waiting (bounded) until there are `n`.
async fn reset_mails(mailbox: &Mailbox, email: &str, n: usize) -> Vec<Received> {
    mailbox
        .wait_for_matching(email, n, Received::is_reset)
        .await
}

/// Asks for a reset of `email` and answers the token of the mail it brings (the `n`th).
async fn reset_token(app: &TestApp, mailbox: &Mailbox, email: &str, n: usize) -> String {
    assert_eq!(forgot(app, email).await.status(), StatusCode::ACCEPTED);
    let mails = reset_mails(mailbox, email, n).await;
    assert_eq!(mails.len(), n, "one reset mail per request");
    // The newest: Message-IDs are UUIDv7, ordered by time.
    mails
        .iter()
        .max_by(|a, b| a.message_id.cmp(&b.message_id))
        .unwrap()
        .reset_token()
}

async fn reset_json(app: &TestApp, token: &str, password: &str) -> Response {
    app.post_json(
        "/auth/password/reset",
        &json!({ "token": token, "new_password": password }),
    )
    .await
}

/// The one secret of a mail is its link's token: every `token=` in it carries that one (or,
/// for a notice, there is none), and no password is anywhere.
fn only_secret_is(m: &Received, token: Option<&str>) {
    let text = decoded_text(&m.raw);
    let tokens: Vec<&str> = text
        .split("token=")
        .skip(1)
        .map(|rest| rest.get(..43).unwrap_or(rest))
        .collect();
    match token {
        Some(t) => assert!(
            !tokens.is_empty() && tokens.iter().all(|x| *x == t),
            "{tokens:?}"
        ),
        None => assert!(tokens.is_empty(), "{text}"),
    }
    for secret in [PASSWORD, NEW_PASSWORD] {
        assert!(!text.contains(secret), "a mail holds a password");
    }
}

fn authorize_url(app: &TestApp, prompt: Option<&str>) -> String {
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", "web"),
        ("redirect_uri", REDIRECT),
        ("scope", "openid email"),
        ("state", "st"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    if let Some(p) = prompt {
        params.push(("prompt", p));
    }
    app.url(&format!(
        "/oauth/authorize?{}",
        serde_urlencoded::to_string(&params).unwrap()
    ))
}

/// Signs `login` in on the hosted page, in `b`: a browser session.
async fn browser_sign_in(app: &TestApp, b: &reqwest::Client, login: &str) {
    let res = b.get(authorize_url(app, None)).send().await.unwrap();
    let to = location(&res);
    assert!(to.starts_with("/login?req="), "{to}");
    let html = b
        .get(app.url(&to))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let res = b
        .post(app.url("/login"))
        .form(&[
            ("csrf_token", csrf_of(&html).as_str()),
            ("req", query_of(&to)["req"].as_str()),
            ("username", login),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(query_of(&location(&res)).contains_key("code"));
}

/// Whether the browser session of `b` is alive: `prompt=none` gets a code, else
/// `login_required`.
async fn browser_signed_in(app: &TestApp, b: &reqwest::Client) -> bool {
    let res = b
        .get(authorize_url(app, Some("none")))
        .send()
        .await
        .unwrap();
    let q = query_of(&location(&res));
    match q.get("error").map(String::as_str) {
        None => {
            assert!(q.contains_key("code"), "{q:?}");
            true
        }
        Some("login_required") => false,
        Some(other) => panic!("prompt=none answered {other}"),
    }
}

async fn me(app: &TestApp, access: &str) -> Value {
    let res = app.get_bearer("/users/me", access).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Password reset
// ---------------------------------------------------------------------------------------------

/// "Forgot your password?" on the sign-in page leads to a page asking for the address; its
/// form (CSRF-checked) answers the same page for an address with and without an account, and
/// the mail's link resets. A server that sends no mail offers no reset.
async fn the_sign_in_page_leads_to_a_reset_through_pages(mode: Mode) {
    let (app, mailbox, _dir, _file) = spawn(mode, |_| {}).await;
    let (_, email) = register(&app).await;
    let b = new_browser();
    let sign_in = b.get(app.url("/login")).send().await.unwrap();
    assert_eq!(sign_in.status(), StatusCode::OK);
    let html = sign_in.text().await.unwrap();
    assert!(
        html.contains("<a href=\"/auth/password/forgot\">Forgot your password?</a>"),
        "{html}"
    );
    let page = b
        .get(app.url("/auth/password/forgot"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("<h1>Reset your password</h1>"), "{html}");
    let csrf = csrf_of(&html);
    let send = |csrf: Option<String>, address: &str| {
        let mut form = vec![("email", address.to_string())];
        if let Some(t) = csrf {
            form.push(("csrf_token", t));
        }
        b.post(app.url("/auth/password/forgot/send"))
            .form(&form)
            .send()
    };

    // Without the CSRF token nothing is asked for.
    let res = send(None, &email).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // Not an address: the form again with the reason and what was typed.
    let res = send(Some(csrf.clone()), "hedy").await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let html = res.text().await.unwrap();
    assert!(html.contains("Enter an email address"), "{html}");
    assert!(html.contains("value=\"hedy\""), "{html}");

    // A known and an unknown address: the same page but for the address it repeats.
    let known = send(Some(csrf.clone()), &email).await.unwrap();
    assert_eq!(known.status(), StatusCode::OK);
    let known = known.text().await.unwrap();
    assert!(known.contains("<h1>Check your mail</h1>"), "{known}");
    let (_, stranger) = address();
    let unknown = send(Some(csrf.clone()), &stranger).await.unwrap();
    assert_eq!(unknown.status(), StatusCode::OK);
    assert_eq!(
        unknown.text().await.unwrap().replace(&stranger, "ADDRESS"),
        known.replace(&email, "ADDRESS")
    );

    // The mail that the known address got resets through the link's page.
    let mails = reset_mails(&mailbox, &email, 1).await;
    assert_eq!(mails.len(), 1);
    let token = mails[0].reset_token();
    let page = b
        .get(app.url(&format!("/auth/password/reset?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    let res = b
        .post(app.url("/auth/password/reset/confirm"))
        .form(&[
            ("csrf_token", csrf_of(&html).as_str()),
            ("token", token.as_str()),
            ("new_password", NEW_PASSWORD),
            ("new_password_confirm", NEW_PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        app.login(&email, NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
    assert!(
        mailbox.to(&stranger).is_empty(),
        "no mail to an unknown address"
    );
    app.stop().await;

    // Production mode without SMTP or a mail directory has no transport: no link, and the
    // page says there is no reset (embedded mode always mails, into `mail/` by default).
    if mode == Mode::Production {
        let app = spawn_app_with(mode, |env| {
            env.remove("TOKEND_MAIL_DIR");
            env.remove("TOKEND_SMTP_URL");
        })
        .await;
        let b = new_browser();
        let html = b
            .get(app.url("/login"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(html.contains("<h1>"), "{html}");
        assert!(!html.contains("Forgot your password?"), "{html}");
        let res = b
            .get(app.url("/auth/password/forgot"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let html = res.text().await.unwrap();
        assert!(html.contains("Password reset is not available"), "{html}");
        app.stop().await;
    }
}

async fn a_reset_link_sets_a_new_password_through_the_page_and_ends_every_session(mode: Mode) {
    let (app, mailbox, _dir, _file) = spawn(mode, |_| {}).await;
    let (username, email) = register(&app).await;
    // What the reset must end: a refresh family and its access token, and a browser session.
    let (access, refresh) = app.login_pair(&email, PASSWORD).await;
    let signed_in = new_browser();
    browser_sign_in(&app, &signed_in, &username).await;
    assert!(browser_signed_in(&app, &signed_in).await);

    let token = reset_token(&app, &mailbox, &email, 1).await;
    let mail = &reset_mails(&mailbox, &email, 1).await[0];
    assert!(
        mail.subject().contains("Reset your password"),
        "{}",
        mail.subject()
    );
    assert!(mail.raw.contains(&format!(
        "http://tokend.test/auth/password/reset?token={token}"
    )));
    only_secret_is(mail, Some(&token));

    let link = app.url(&format!("/auth/password/reset?token={token}"));
    // A mail scanner opening the link, twice: nothing is spent, nothing changes.
    for _ in 0..2 {
        assert_eq!(reqwest::get(&link).await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(me(&app, &access).await["email"], email.as_str());

    let b = new_browser();
    let page = b.get(&link).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains(&email), "{html}");
    assert!(html.contains("action=\"/auth/password/reset/confirm\""));
    let csrf = csrf_of(&html);
    let post = |form: Vec<(&'static str, String)>, client: reqwest::Client| {
        let url = app.url("/auth/password/reset/confirm");
        async move { client.post(url).form(&form).send().await.unwrap() }
    };
    let form = |csrf: &str, a: &str, b: &str| {
        vec![
            ("csrf_token", csrf.to_string()),
            ("token", token.clone()),
            ("new_password", a.to_string()),
            ("new_password_confirm", b.to_string()),
        ]
    };

    // Without the CSRF token, or with another browser's, the form is refused.
    let mut no_csrf = form("", NEW_PASSWORD, NEW_PASSWORD);
    no_csrf.remove(0);
    assert_eq!(
        post(no_csrf, b.clone()).await.status(),
        StatusCode::FORBIDDEN
    );
    let res = post(form(&csrf, NEW_PASSWORD, NEW_PASSWORD), new_browser()).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // Two passwords that differ, or one the policy refuses: the form again, with the reason,
    // and the link still good.
    let res = post(
        form(&csrf, NEW_PASSWORD, "something else entirely"),
        b.clone(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let html = res.text().await.unwrap();
    assert!(html.contains("The two passwords differ."), "{html}");
    assert!(html.contains("action=\"/auth/password/reset/confirm\""));
    let res = post(form(&csrf, "short", "short"), b.clone()).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let html = res.text().await.unwrap();
    assert!(html.contains("role=\"alert\""), "{html}");
    assert!(html.contains("password"), "{html}");
    assert_eq!(reqwest::get(&link).await.unwrap().status(), StatusCode::OK);
    // Nothing was changed by any of that.
    assert_eq!(
        app.get_bearer("/users/me", &access).await.status(),
        StatusCode::OK
    );

    let res = post(form(&csrf, NEW_PASSWORD, NEW_PASSWORD), b.clone()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("Password changed"));

    // Everything from before is over: the access token, the refresh token, the browser session
    // and the old password.
    assert_eq!(
        app.get_bearer("/users/me", &access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(&refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(!browser_signed_in(&app, &signed_in).await);
    assert_eq!(
        app.login(&email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (fresh, _) = app.login_pair(&email, NEW_PASSWORD).await;
    assert_eq!(me(&app, &fresh).await["username"], username.as_str());

    // The link is spent: its page and the form say so.
    let res = b.get(&link).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("This link does not work"));
    let res = post(
        form(&csrf, "yet another password", "yet another password"),
        b,
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("This link does not work"));
    assert_eq!(
        app.login(&email, "yet another password").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(
        app.metrics_text()
            .await
            .contains("tokend_password_resets_total{result=\"completed\"} 1"),
        "the reset is counted"
    );
}

async fn a_reset_token_is_spent_once_and_concurrent_redemptions_have_one_winner(mode: Mode) {
    let (app, mailbox, _dir, _file) = spawn(mode, |_| {}).await;
    let (_, email) = register(&app).await;
    let token = reset_token(&app, &mailbox, &email, 1).await;
    // A password the policy refuses spends nothing.
    let res = reset_json(&app, &token, "short").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "invalid_request");

    let passwords: Vec<String> = (0..8).map(|i| format!("parallel password {i}")).collect();
    let answers = join_all(passwords.iter().map(|p| reset_json(&app, &token, p))).await;
    let statuses: Vec<StatusCode> = answers.iter().map(Response::status).collect();
    let winners: Vec<usize> = statuses
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == StatusCode::NO_CONTENT)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "one redemption wins: {statuses:?}");
    for res in answers {
        if res.status() != StatusCode::NO_CONTENT {
            assert_eq!(res.status(), StatusCode::BAD_REQUEST);
            assert_eq!(error_code(res).await, "invalid_grant");
        }
    }
    // The winner's password is the account's; the losers' are not (two of them: more wrong
    // passwords would put the account into its failed-login back-off).
    let winner = &passwords[winners[0]];
    assert_eq!(app.login(&email, winner).await.status(), StatusCode::OK);
    for p in passwords.iter().filter(|p| *p != winner).take(2) {
        assert_eq!(
            app.login(&email, p).await.status(),
            StatusCode::UNAUTHORIZED,
            "{p}"
        );
    }
    // Spent.
    let res = reset_json(&app, &token, NEW_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "invalid_grant");
}

async fn a_reset_token_dies_when_another_is_issued_or_the_password_changes(mode: Mode) {
    let (app, mailbox, _dir, _file) = spawn(mode, |_| {}).await;
    let (_, email) = register(&app).await;
    let first = reset_token(&app, &mailbox, &email, 1).await;
    // A minute later (the address's budget), a second request: the first link is over.
    app.clock.advance(Duration::from_secs(61));
    let second = reset_token(&app, &mailbox, &email, 2).await;
    assert_ne!(first, second);
    let page = |t: &str| reqwest::get(app.url(&format!("/auth/password/reset?token={t}")));
    assert_eq!(
        page(&first).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    let res = reset_json(&app, &first, NEW_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "invalid_grant");
    assert_eq!(page(&second).await.unwrap().status(), StatusCode::OK);

    // The password changes by the other path: the second link is over too.
    let (access, _) = app.login_pair(&email, PASSWORD).await;
    let res = app
        .put_bearer(
            "/users/me/password",
            &access,
            &json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        page(&second).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    let res = reset_json(&app, &second, "the attacker's password").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        app.login(&email, NEW_PASSWORD).await.status(),
        StatusCode::OK
    );

    // And a reset ends the links of before it: two links, one used, the other dead.
    app.clock.advance(Duration::from_secs(61));
    let third = reset_token(&app, &mailbox, &email, 3).await;
    assert_eq!(
        reset_json(&app, &third, "the third password")
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        reset_json(&app, &third, "the fourth password")
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
}

async fn dead_and_malformed_reset_links_answer_a_clear_error(mode: Mode) {
    let (app, mailbox, _dir, _file) = spawn(mode, |_| {}).await;
    let (_, email) = register(&app).await;
    let token = reset_token(&app, &mailbox, &email, 1).await;
    // Unknown, malformed and empty tokens: an error page, and 400 invalid_grant in JSON.
    let unknown = "A".repeat(43);
    for bad in [
        "",
        "short",
        unknown.as_str(),
        "../../etc/passwd",
        &"x".repeat(5000),
    ] {
        let res =
            reqwest::get(app.url(&format!("/auth/password/reset?token={}", urlencoding(bad))))
                .await
                .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(res
            .text()
            .await
            .unwrap()
            .contains("This link does not work"));
        let res = reset_json(&app, bad, NEW_PASSWORD).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_code(res).await, "invalid_grant");
    }
    // No token at all on the page, and bodies that are not what the endpoint reads.
    let res = reqwest::get(app.url("/auth/password/reset")).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    for body in [
        json!({}),
        json!({"token": token}),
        json!({"token": 5, "new_password": []}),
    ] {
        let res = app.post_json("/auth/password/reset", &body).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_code(res).await, "invalid_request");
    }
    // Expired: the link works for 30 minutes.
    app.clock.advance(Duration::from_secs(31 * 60));
    let res = reqwest::get(app.url(&format!("/auth/password/reset?token={token}")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = reset_json(&app, &token, NEW_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "invalid_grant");
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
}

/// Percent-encodes a query value.
fn urlencoding(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// What a response shows a caller, less what differs between any two responses (the date and
/// the request id).
async fn answer(res: Response) -> (StatusCode, Vec<(String, String)>, String) {
    let status = res.status();
    let mut headers: Vec<(String, String)> = res
        .headers()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-request-id"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    headers.sort();
    (status, headers, res.text().await.unwrap())
}

async fn forgetting_a_password_answers_alike_for_every_address_and_is_throttled(mode: Mode) {
    let (app, mailbox, _dir, _file) = spawn(mode, |_| {}).await;
    let (_, email) = register(&app).await;
    let (_, nobody) = address();
    let known = answer(forgot(&app, &email).await).await;
    let unknown = answer(forgot(&app, &nobody).await).await;
    let malformed = answer(forgot(&app, "not an address").await).await;
    assert_eq!(known.0, StatusCode::ACCEPTED);
    assert_eq!(
        known, unknown,
        "an unknown address answers like a known one"
    );
    assert_eq!(known, malformed);
    assert!(known.2.is_empty());
    reset_mails(&mailbox, &email, 1).await;

    // Within the minute, ten more requests for the address: all 202, no mail.
    let answers = join_all((0..10).map(|_| forgot(&app, &email))).await;
    assert!(answers.iter().all(|r| r.status() == StatusCode::ACCEPTED));
    wait_outbox_empty(&app).await;
    assert_eq!(
        mailbox
            .to(&email)
            .into_iter()
            .filter(Received::is_reset)
            .count(),
        1
    );
    // A minute later, one of ten parallel requests gets a mail: five an hour in all.
    for expected in 2..=5 {
        app.clock.advance(Duration::from_secs(61));
        let answers = join_all((0..10).map(|_| forgot(&app, &email))).await;
        assert!(answers.iter().all(|r| r.status() == StatusCode::ACCEPTED));
        reset_mails(&mailbox, &email, expected).await;
    }
    app.clock.advance(Duration::from_secs(61));
    assert_eq!(forgot(&app, &email).await.status(), StatusCode::ACCEPTED);
    wait_outbox_empty(&app).await;
    let resets: Vec<Received> = mailbox
        .to(&email)
        .into_iter()
        .filter(Received::is_reset)
        .collect();
    assert_eq!(resets.len(), 5, "the sixth within the hour is refused");
    // Only the newest link works.
    let newest = resets
        .iter()
        .max_by(|a, b| a.message_id.cmp(&b.message_id))
        .unwrap()
        .reset_token();
    for m in &resets {
        let t = m.reset_token();
        if t != newest {
            assert_eq!(
                reset_json(&app, &t, NEW_PASSWORD).await.status(),
                StatusCode::BAD_REQUEST
            );
        }
    }
    // Nothing went to the unknown address; the metrics tell the cases apart for operators.
    assert!(mailbox.to(&nobody).is_empty());
    let text = app.metrics_text().await;
    assert!(
        text.contains("tokend_password_resets_total{result=\"unknown\"} 1"),
        "{text}"
    );
    assert!(text.contains("tokend_password_resets_total{result=\"requested\"} 5"));
    assert!(metric(&app, "tokend_mail_sent_total").await >= 6.0);
}

// ---------------------------------------------------------------------------------------------
// Email change
// ---------------------------------------------------------------------------------------------

async fn change_email(app: &TestApp, access: &str, password: &str, new_email: &str) -> Response {
    app.put_bearer(
        "/users/me/email",
        access,
        &json!({"current_password": password, "new_email": new_email}),
    )
    .await
}

/// Asks for a change of the address to a new one, with the fresh `access` token and
/// `password`; answers the new address and the token of the link mailed to it.
async fn pending_change(
    app: &TestApp,
    mailbox: &Mailbox,
    access: &str,
    password: &str,
) -> (String, String) {
    let (_, taker) = address();
    let res = change_email(app, access, password, &taker).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let link = mail_with_subject(mailbox, &taker, "Confirm your new email address")
        .await
        .token();
    (taker, link)
}

/// The newest mail to `to` whose subject contains `subject`, waiting (bounded) for it.
async fn mail_with_subject(mailbox: &Mailbox, to: &str, subject: &str) -> Received {
    mailbox
        .wait_for_matching(to, 1, |m| m.subject().contains(subject))
        .await
        .into_iter()
        .max_by(|a, b| a.message_id.cmp(&b.message_id))
        .unwrap()
}

async fn an_email_change_happens_at_confirmation_and_the_old_address_is_told(mode: Mode) {
    let (app, mailbox, _dir, _file) = spawn(mode, |_| {}).await;
    let (username, old) = register(&app).await;
    let (_, other) = register(&app).await;
    let (_, new) = address();
    let (access, refresh) = app.login_pair(&old, PASSWORD).await;

    // Refusals: a wrong password, a token that is not fresh, an address another account has,
    // the account's own address, and something that is not an address.
    let res = change_email(&app, &access, "not the password", &new).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let (refreshed, refresh) = app.refresh_pair(&refresh).await;
    let res = change_email(&app, &refreshed, PASSWORD, &new).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(res).await, "fresh_token_required");
    let res = change_email(&app, &access, PASSWORD, &other).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let res = change_email(&app, &access, PASSWORD, &old.to_uppercase()).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = change_email(&app, &access, PASSWORD, "not an address").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(mailbox.to(&new).is_empty());

    // A reset link mailed to the old address before the change.
    let old_reset = reset_token(&app, &mailbox, &old, 1).await;

    let res = change_email(&app, &access, PASSWORD, &new).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let mail = mail_with_subject(&mailbox, &new, "Confirm your new email address").await;
    let token = mail.token();
    only_secret_is(&mail, Some(&token));
    assert!(
        decoded_text(&mail.raw).contains(&old),
        "the mail names the address it replaces"
    );
    // Nothing changed yet.
    assert_eq!(me(&app, &access).await["email"], old.as_str());
    assert_eq!(
        app.login(&new, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // The link's page (a GET spends nothing), then its form.
    let link = app.url(&format!("/auth/verify-email?token={token}"));
    assert_eq!(reqwest::get(&link).await.unwrap().status(), StatusCode::OK);
    let b = new_browser();
    let html = b.get(&link).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("Confirm your new email address"), "{html}");
    assert!(html.contains(&new));
    assert_eq!(me(&app, &access).await["email"], old.as_str());
    let csrf = csrf_of(&html);
    let res = new_browser()
        .post(app.url("/auth/verify-email/confirm"))
        .form(&[("csrf_token", csrf.as_str()), ("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "another browser's form"
    );
    let res = b
        .post(app.url("/auth/verify-email/confirm"))
        .form(&[("csrf_token", csrf.as_str()), ("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("Email address changed"));

    // Changed and verified; sign-in goes by the new address. Sessions stay signed in, and what
    // they read shows the new address.
    let user = me(&app, &access).await;
    assert_eq!(user["email"], new.as_str());
    assert_eq!(user["email_verified"], true);
    assert_eq!(user["username"], username.as_str());
    assert_eq!(
        app.login(&old, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.login(&new, PASSWORD).await.status(), StatusCode::OK);
    let (after, _) = app.refresh_pair(&refresh).await;
    assert_eq!(me(&app, &after).await["email"], new.as_str());

    // The old address is told, without any link that holds a secret.
    let notice = mail_with_subject(&mailbox, &old, "was changed").await;
    only_secret_is(&notice, None);
    assert!(decoded_text(&notice.raw).contains(&new));
    // The reset link mailed to the old address is over; so is the confirmation link.
    let res = reset_json(&app, &old_reset, NEW_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = b.get(&link).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // A reset now goes to the new address.
    app.clock.advance(Duration::from_secs(61));
    assert_eq!(forgot(&app, &old).await.status(), StatusCode::ACCEPTED);
    let token = reset_token(&app, &mailbox, &new, 1).await;
    assert_eq!(
        reset_json(&app, &token, NEW_PASSWORD).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(reset_mails(&mailbox, &old, 1).await.len(), 1);
}

async fn an_email_change_confirms_through_json_and_is_refused_if_the_address_was_taken(mode: Mode) {
    let boss = format!("boss-{}@example.com", &address().0[..10]);
    let admins = boss.clone();
    let (app, mailbox, _dir, _file) = spawn(mode, move |env| {
        env.insert("TOKEND_ADMIN_EMAILS".into(), admins);
    })
    .await;
    let (_, a) = register(&app).await;
    let (_, wanted) = address();
    let (access, _) = app.login_pair(&a, PASSWORD).await;
    assert_eq!(
        change_email(&app, &access, PASSWORD, &wanted)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let token = mail_with_subject(&mailbox, &wanted, "Confirm your new email address")
        .await
        .token();
    // Someone registers the address before the link is confirmed.
    let res = app.register(&address().0, &wanted, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = app
        .post_json("/auth/verify-email", &json!({ "token": token }))
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(me(&app, &access).await["email"], a.as_str());
    assert!(
        !mailbox
            .to(&a)
            .iter()
            .any(|m| m.subject().contains("was changed")),
        "no notice: nothing changed"
    );

    // A second request ends the first link; the newest confirms through JSON, once, and an
    // address of TOKEND_ADMIN_EMAILS earns admin at that moment.
    assert_eq!(
        change_email(&app, &access, PASSWORD, &address().1)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        change_email(&app, &access, PASSWORD, &boss).await.status(),
        StatusCode::ACCEPTED
    );
    let token = mail_with_subject(&mailbox, &boss, "Confirm your new email address")
        .await
        .token();
    let body = json!({ "token": token });
    let answers = join_all((0..6).map(|_| app.post_json("/auth/verify-email", &body))).await;
    let ok: Vec<&Response> = answers
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .collect();
    assert_eq!(ok.len(), 1, "a token is spent once");
    assert!(answers
        .iter()
        .all(|r| r.status() == StatusCode::OK || r.status() == StatusCode::BAD_REQUEST));
    let user = me(&app, &access).await;
    assert_eq!(user["email"], boss.as_str());
    assert_eq!(user["email_verified"], true);
    let (fresh, _) = app.login_pair(&boss, PASSWORD).await;
    assert_eq!(claims(&fresh)["roles"], json!(["user", "admin"]));
    mail_with_subject(&mailbox, &a, "was changed").await;
    assert!(app
        .metrics_text()
        .await
        .contains("tokend_email_changes_total{result=\"taken\"} 1"));
}

/// Whoever asked for an email change held the password of then: the owner who takes the
/// account back by a reset, or changes the password, ends the link (docs/mail.md, "Email
/// change").
async fn a_password_change_or_reset_ends_a_pending_email_change(mode: Mode) {
    let (app, mailbox, _dir, _file) = spawn(mode, |_| {}).await;
    let (_, a) = register(&app).await;

    // A reset by the owner.
    let (access, _) = app.login_pair(&a, PASSWORD).await;
    let (_, link) = pending_change(&app, &mailbox, &access, PASSWORD).await;
    let reset = reset_token(&app, &mailbox, &a, 1).await;
    assert_eq!(
        reset_json(&app, &reset, NEW_PASSWORD).await.status(),
        StatusCode::NO_CONTENT
    );
    let res = app
        .post_json("/auth/verify-email", &json!({ "token": link }))
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "invalid_grant");
    let (access, _) = app.login_pair(&a, NEW_PASSWORD).await;
    assert_eq!(me(&app, &access).await["email"], a.as_str());

    // A password change by the owner.
    let (_, link) = pending_change(&app, &mailbox, &access, NEW_PASSWORD).await;
    let res = app
        .put_bearer(
            "/users/me/password",
            &access,
            &json!({"current_password": NEW_PASSWORD, "new_password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .post_json("/auth/verify-email", &json!({ "token": link }))
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let (access, _) = app.login_pair(&a, PASSWORD).await;
    assert_eq!(me(&app, &access).await["email"], a.as_str());
    assert_eq!(
        mailbox
            .to(&a)
            .iter()
            .filter(|m| m.subject().contains("was changed"))
            .count(),
        0,
        "nothing changed, nothing to tell"
    );
}

/// A confirmation and a reset sent at the same moment, for several accounts: for each, one
/// of the two lands and the other is refused — never an address moved after the owner's
/// reset, never a reset after the address moved (its link went to the old address).
async fn an_email_change_and_a_reset_in_a_race_never_both_land(mode: Mode) {
    let (app, mailbox, _dir, _file) = spawn(mode, |_| {}).await;
    let mut races = Vec::new();
    for _ in 0..6 {
        let (_, a) = register(&app).await;
        let (access, _) = app.login_pair(&a, PASSWORD).await;
        let (taker, link) = pending_change(&app, &mailbox, &access, PASSWORD).await;
        let reset = reset_token(&app, &mailbox, &a, 1).await;
        races.push((a, taker, link, reset));
    }
    let answers = join_all(races.iter().map(|(_, _, link, reset)| {
        let app = &app;
        async move {
            let body = json!({ "token": link });
            let confirm = app.post_json("/auth/verify-email", &body);
            let reset = reset_json(app, reset, NEW_PASSWORD);
            let (c, r) = futures_util::join!(confirm, reset);
            (c.status(), r.status())
        }
    }))
    .await;
    for ((a, taker, _, _), (confirmed, reset)) in races.iter().zip(answers) {
        match (confirmed, reset) {
            // The change first: the address is the taker's, the password the old one.
            (StatusCode::OK, StatusCode::BAD_REQUEST) => {
                let (access, _) = app.login_pair(taker, PASSWORD).await;
                assert_eq!(me(&app, &access).await["email"], taker.as_str());
            }
            // The reset first: the address stays, the password is the new one.
            (StatusCode::BAD_REQUEST, StatusCode::NO_CONTENT) => {
                let (access, _) = app.login_pair(a, NEW_PASSWORD).await;
                assert_eq!(me(&app, &access).await["email"], a.as_str());
            }
            other => panic!("both or neither landed: {other:?}"),
        }
    }
}

/// Three password changes at once with one fresh token: the first ends the session that
/// allowed the others, which are refused; the password is the one whose change was answered
/// 204.
async fn of_concurrent_password_changes_one_lands_and_the_others_are_refused(mode: Mode) {
    let (app, _mailbox, _dir, _file) = spawn(mode, |_| {}).await;
    let (_, a) = register(&app).await;
    let (access, _) = app.login_pair(&a, PASSWORD).await;
    let passwords: Vec<String> = (0..3).map(|i| format!("{NEW_PASSWORD} {i}")).collect();
    let answers = join_all(passwords.iter().map(|new| {
        let (app, access) = (&app, &access);
        async move {
            let body = json!({"current_password": PASSWORD, "new_password": new});
            app.put_bearer("/users/me/password", access, &body).await
        }
    }))
    .await;
    let statuses: Vec<StatusCode> = answers.iter().map(Response::status).collect();
    let landed: Vec<&String> = passwords
        .iter()
        .zip(&statuses)
        .filter(|(_, s)| **s == StatusCode::NO_CONTENT)
        .map(|(p, _)| p)
        .collect();
    assert_eq!(landed.len(), 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::NO_CONTENT || *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    for p in &passwords {
        let works = app.login(&a, p).await.status() == StatusCode::OK;
        assert_eq!(works, p == landed[0], "{p}");
    }
}

// ---------------------------------------------------------------------------------------------
// In a browser
// ---------------------------------------------------------------------------------------------

/// A person who forgot the password follows "Forgot your password?" from the sign-in page in
/// Chromium, asks for a link, opens the reset mail's link, sets a new password and signs in
/// with it; screenshots of each page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_opens_the_reset_link_sets_a_password_and_signs_in() {
    let Some(mut browser) = crate::browser::Browser::start("reset_password_in_a_browser").await
    else {
        return;
    };
    let port = crate::services::free_port();
    let (app, mailbox, _dir) = app_with_mail_dir(Mode::Embedded, |env| {
        env.insert("TOKEND_LISTEN".into(), format!("127.0.0.1:{port}"));
        env.insert("TOKEND_ISSUER".into(), format!("http://127.0.0.1:{port}"));
    })
    .await;
    let (username, email) = register(&app).await;
    // From the sign-in page: "Forgot your password?", the address, "Check your mail".
    browser
        .goto(&format!("http://127.0.0.1:{port}/login"))
        .await;
    browser.screenshot("sign-in").await;
    browser.click("Forgot your password?").await;
    assert!(browser.text("h1").await.contains("Reset your password"));
    browser.screenshot("forgot-password").await;
    browser.fill("Email address", &email).await;
    browser.click("Send reset link").await;
    assert!(browser.text("h1").await.contains("Check your mail"));
    assert!(browser.text("main").await.contains(&email));
    browser.screenshot("check-your-mail").await;
    let token = reset_mails(&mailbox, &email, 1).await[0].reset_token();
    let link = format!("http://127.0.0.1:{port}/auth/password/reset?token={token}");
    assert!(
        reset_mails(&mailbox, &email, 1).await[0]
            .raw
            .contains(&link),
        "the mail holds the link"
    );
    browser.goto(&link).await;
    assert!(browser.text("h1").await.contains("Choose a new password"));
    assert!(browser.text("main").await.contains(&email));
    browser.screenshot("reset-page").await;
    // Two passwords that differ: the page says so.
    browser.fill("New password", NEW_PASSWORD).await;
    browser
        .fill("New password, again", "not the same one")
        .await;
    browser.expect_status(400);
    browser.click("Set new password").await;
    assert!(browser
        .text("#error")
        .await
        .contains("The two passwords differ."));
    browser.screenshot("passwords-differ").await;
    browser.fill("New password", NEW_PASSWORD).await;
    browser.fill("New password, again", NEW_PASSWORD).await;
    browser.click("Set new password").await;
    assert!(browser.text("h1").await.contains("Password changed"));
    browser.screenshot("password-changed").await;

    browser
        .goto(&format!("http://127.0.0.1:{port}/login"))
        .await;
    browser.fill("Username or email", &username).await;
    browser.fill("Password", NEW_PASSWORD).await;
    browser.click("Sign in").await;
    assert!(browser.text("h1").await.contains("You are signed in"));
    assert!(browser.text("main").await.contains(&username));
    browser.screenshot("signed-in").await;
    assert_eq!(
        app.login(&email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    browser.finish().await;
}

/// A reset and a confirmed email change are account events (docs/events.md) that name the user
/// by id only: neither address, nor the link's token, nor a password is in them.
async fn a_reset_and_an_email_change_are_account_events(mode: Mode) {
    const ADMIN_EMAIL: &str = "warden@example.com";
    const ADMIN_PASSWORD: &str = "the warden's passphrase";
    let (app, mailbox, _dir, _file) = spawn(mode, |env| {
        env.insert("TOKEND_BOOTSTRAP_ADMIN_EMAIL".into(), ADMIN_EMAIL.into());
        env.insert(
            "TOKEND_BOOTSTRAP_ADMIN_PASSWORD".into(),
            ADMIN_PASSWORD.into(),
        );
    })
    .await;
    let (_, old) = register(&app).await;
    let (_, new) = address();
    let (access, _) = app.login_pair(&old, PASSWORD).await;
    let user_id = claims(&access)["sub"].as_str().unwrap().to_string();

    let reset = reset_token(&app, &mailbox, &old, 1).await;
    assert_eq!(
        reset_json(&app, &reset, NEW_PASSWORD).await.status(),
        StatusCode::NO_CONTENT
    );
    let (access, _) = app.login_pair(&old, NEW_PASSWORD).await;
    let res = change_email(&app, &access, NEW_PASSWORD, &new).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let change = mail_with_subject(&mailbox, &new, "Confirm your new email address")
        .await
        .token();
    let res = app
        .post_json("/auth/verify-email", &json!({ "token": change }))
        .await;
    assert_eq!(res.status(), StatusCode::OK);

    let (admin, _) = app.login_pair(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let events_of = |kind: &'static str| {
        let url = format!("/admin/events?type={kind}&user_id={user_id}");
        let (app, admin) = (&app, admin.clone());
        async move {
            let res = app.get_bearer(&url, &admin).await;
            assert_eq!(res.status(), StatusCode::OK);
            let page: Value = res.json().await.unwrap();
            page["events"].as_array().unwrap().clone()
        }
    };
    let resets = events_of("password.reset").await;
    assert_eq!(resets.len(), 1, "{resets:?}");
    let changes = events_of("email.changed").await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["detail"]["granted_admin"], json!(false));
    let text = serde_json::to_string(&[resets, changes]).unwrap();
    for secret in [
        old.as_str(),
        new.as_str(),
        reset.as_str(),
        change.as_str(),
        PASSWORD,
        NEW_PASSWORD,
    ] {
        assert!(!text.contains(secret), "an event holds {secret:?}: {text}");
    }
    app.stop().await;
}
