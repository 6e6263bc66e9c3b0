//! The assets of the hosted pages (docs/api.md, "Hosted pages"): served from memory at paths
//! named by their content's hash, cacheable for good, 404 for any other name.

use reqwest::StatusCode;
use serde_json::Value;
use tokend::http::pages::assets::{form_post_script_path, stylesheet_path};

use crate::helpers::{spawn_app, Mode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_assets_are_served_immutable_at_their_hashed_paths() {
    let app = spawn_app(Mode::Embedded).await;
    for (path, stem, ext, content_type) in [
        (
            stylesheet_path(),
            "tokend",
            "css",
            "text/css; charset=utf-8",
        ),
        (
            form_post_script_path(),
            "form-post",
            "js",
            "text/javascript; charset=utf-8",
        ),
    ] {
        let res = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let h = res.headers().clone();
        assert_eq!(h["content-type"], content_type);
        assert_eq!(h["cache-control"], "public, max-age=31536000, immutable");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let body = res.bytes().await.unwrap();
        assert!(!body.is_empty());
        let digest = ring::digest::digest(&ring::digest::SHA256, &body);
        let hash = &hex::encode(digest.as_ref())[..10];
        assert_eq!(path, format!("/assets/{stem}.{hash}.{ext}"));

        let res = app.http.head(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], content_type);
        assert!(res.bytes().await.unwrap().is_empty());

        let res = app.http.post(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers()["allow"], "GET, HEAD");
    }
    let css = app
        .http
        .get(app.url(stylesheet_path()))
        .send()
        .await
        .unwrap();
    let css = css.text().await.unwrap();
    assert!(css.contains("prefers-color-scheme: dark") && css.contains(":focus-visible"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_assets_answer_404_for_any_other_name() {
    let app = spawn_app(Mode::Embedded).await;
    for path in [
        "/assets/tokend.0000000000.css",
        "/assets/tokend.css",
        "/assets/form-post.js",
        "/assets/",
        "/assets/.hidden",
        "/assets/%2e%2e%2fCargo.toml",
        "/assets/../Cargo.toml",
    ] {
        let res = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(res.headers()["content-type"], "application/json", "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "not_found", "{path}");
    }
}

/// A page route refused by the per-IP limit before its handler runs answers a page a person
/// can read (429 with `Retry-After`, HTML with a heading), while an API route refused by the
/// same limit answers JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ip_limit_on_a_page_answers_a_page() {
    let app = crate::helpers::spawn_app_with(Mode::Embedded, |env| {
        env.insert("TOKEND_RATE_LIMIT_IP".into(), "2/min".into());
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let res = app.http.get(app.url("/login")).send().await.unwrap();
        statuses.push(res.status());
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(res.headers().contains_key("retry-after"));
            let ct = res.headers()["content-type"].to_str().unwrap().to_string();
            assert!(ct.starts_with("text/html"), "{ct}");
            let html = res.text().await.unwrap();
            assert!(html.contains("<h1"), "{html}");
            assert!(html.contains("Too many attempts"), "{html}");
        }
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"], "too_many_requests");
}
