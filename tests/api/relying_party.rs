//! `examples/relying_party.rs` end to end, as the README's "A web app that signs in" runs it:
//! tokend, the example resource server and the example relying party on their own ports, and a
//! cookie-keeping client playing the browser (docs/authorize.md).

use std::sync::Arc;

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tokend_verifier::{Verifier, VerifierOptions};

use crate::helpers::{csrf_of, new_browser, spawn_at_own_address, Mode};

#[allow(dead_code, unreachable_pub)]
#[path = "../../examples/relying_party.rs"]
mod example;

use crate::verifier::resource_server;

const PASSWORD: &str = "correct horse battery";

fn location(res: &Response, base: &str) -> String {
    let loc = crate::helpers::location(res);
    url::Url::parse(base)
        .unwrap()
        .join(&loc)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_relying_party_signs_in_calls_the_api_and_signs_out() {
    let rp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rp = format!("http://{}", rp_listener.local_addr().unwrap());
    let clients = json!([
        {"client_id": "demo-rp", "grant_types": ["authorization_code"],
         "redirect_uris": [format!("{rp}/callback")], "post_logout_redirect_uris": [format!("{rp}/")],
         "client_name": "Demo relying party", "first_party": true}
    ]);
    let (app, issuer, _file) = spawn_at_own_address(Mode::Embedded, &clients, |_| {}).await;
    let res = app.register("ada", "ada@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user: Value = res.json().await.unwrap();

    // The resource server, as `cargo run --example resource_server -- --issuer ...` starts it.
    let verifier = Verifier::discover(&issuer, "tokend", VerifierOptions::default())
        .await
        .unwrap();
    let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_origin = format!("http://{}", api_listener.local_addr().unwrap());
    let api = format!("{api_origin}/hello");
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api_task = tokio::spawn(resource_server::serve(
        api_listener,
        Arc::new(resource_server::Resource {
            verifier,
            public_url: api_origin,
        }),
        async move {
            let _ = api_stopped.await;
        },
    ));

    // The relying party, with its command line.
    let args = <example::Args as clap::Parser>::parse_from([
        "relying_party",
        "--issuer",
        &issuer,
        "--listen",
        rp.trim_start_matches("http://"),
        "--api",
        &api,
    ]);
    let party = example::RelyingParty::discover(args).await.unwrap();
    let (stop_rp, rp_stopped) = tokio::sync::oneshot::channel::<()>();
    let rp_task = tokio::spawn(example::serve(rp_listener, Arc::new(party), async move {
        let _ = rp_stopped.await;
    }));

    let browser = new_browser();
    let get = |url: String| {
        let browser = browser.clone();
        async move { browser.get(url).send().await.unwrap() }
    };

    let home = get(format!("{rp}/")).await.text().await.unwrap();
    assert!(home.contains("Sign in"), "{home}");

    // A forged authorization response (another state) is refused.
    assert_eq!(
        get(format!("{rp}/login")).await.status(),
        StatusCode::SEE_OTHER
    );
    let res = get(format!("{rp}/callback?code=x&state=forged&iss={issuer}")).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("state does not match"));

    // /login → tokend's authorization endpoint → its sign-in page.
    let res = get(format!("{rp}/login")).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let authorize = location(&res, &rp);
    assert!(
        authorize.starts_with(&format!("{issuer}/oauth/authorize?")),
        "{authorize}"
    );
    assert!(authorize.contains("code_challenge_method=S256"));
    let res = get(authorize).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let login = location(&res, &issuer);
    let req = url::Url::parse(&login)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "req")
        .map(|(_, v)| v.into_owned())
        .expect("req");
    let csrf = csrf_of(&get(login).await.text().await.unwrap());

    // Signing in sends the browser back to the app's callback, which lands on its home page.
    let res = browser
        .post(format!("{issuer}/login"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("req", req.as_str()),
            ("username", "ada"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let callback = location(&res, &issuer);
    assert!(
        callback.starts_with(&format!("{rp}/callback?")),
        "{callback}"
    );
    let res = get(callback.clone()).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res, &rp), format!("{rp}/"));

    // A replayed authorization response finds no sign-in in progress, and changes nothing.
    assert_eq!(get(callback).await.status(), StatusCode::BAD_REQUEST);

    let home = get(format!("{rp}/")).await.text().await.unwrap();
    assert!(
        home.contains("ada") && home.contains("ada@example.com"),
        "{home}"
    );
    assert!(home.contains("Call the API"), "{home}");

    // The resource server accepts the access token and names the user.
    let answer = get(format!("{rp}/api")).await.text().await.unwrap();
    assert!(answer.contains("200 OK"), "{answer}");
    assert!(answer.contains(user["id"].as_str().unwrap()), "{answer}");

    // Signing out goes through tokend's end_session_endpoint and back to the app.
    let res = get(format!("{rp}/logout")).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let end_session = location(&res, &rp);
    assert!(
        end_session.starts_with(&format!("{issuer}/oauth/logout?")),
        "{end_session}"
    );
    let res = get(end_session).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res, &issuer), format!("{rp}/"));
    let home = get(format!("{rp}/")).await.text().await.unwrap();
    assert!(home.contains("Sign in"), "{home}");
    assert_eq!(
        get(format!("{rp}/api")).await.status(),
        StatusCode::SEE_OTHER
    );

    // tokend's browser session ended too: signing in again asks for the password.
    let res = get(format!("{rp}/login")).await;
    let res = get(location(&res, &rp)).await;
    let again = location(&res, &issuer);
    assert!(again.starts_with(&format!("{issuer}/login?")), "{again}");

    stop_rp.send(()).unwrap();
    stop_api.send(()).unwrap();
    rp_task.await.unwrap();
    api_task.await.unwrap();
    app.stop().await;
}
