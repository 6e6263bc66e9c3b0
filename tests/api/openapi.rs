//! The OpenAPI document (docs/operations.md) stays true to the route table: every route and method is
//! documented, nothing is documented that is not served, and the server serves the checked-in
//! file.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::Value;
use tokend::http::routes::routes;

use crate::helpers::{spawn_app, Mode};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// (path, method) pairs of the route table. HEAD is implied by GET (RFC 9110 §9.3.2) and is
/// documented only through it.
fn served() -> BTreeSet<(String, String)> {
    let mut set = BTreeSet::new();
    for r in routes() {
        for m in r.methods() {
            if m != "HEAD" {
                set.insert((r.template().to_string(), m.as_str().to_ascii_lowercase()));
            }
        }
    }
    set
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut set = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (key, _) in item.as_object().unwrap() {
            if METHODS.contains(&key.as_str()) {
                set.insert((path.clone(), key.clone()));
            }
        }
    }
    set
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let doc = document();
    let served = served();
    let documented = documented(&doc);
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.json: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "openapi.json documents what the router does not serve: {unserved:?}"
    );
    // Every GET route answers HEAD too, as the document says.
    for r in routes() {
        if r.methods().any(|m| m == "GET") {
            assert!(r.methods().any(|m| m == "HEAD"), "{r:?}");
            assert!(r.allow().contains("HEAD"), "{r:?}");
        }
    }
}

/// Collects every `$ref` in the document.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn the_document_is_well_formed_openapi_3_1() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");
    assert_eq!(schemes["clientBasic"]["scheme"], "basic");
    // Every reference resolves.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "unresolved $ref {r}");
    }
    // Every operation has a unique operationId and at least one response; security names exist.
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}"));
            assert!(ids.insert(id.to_string()), "duplicate operationId {id}");
            assert!(!op["responses"].as_object().unwrap().is_empty());
            for req in op["security"].as_array().into_iter().flatten() {
                for name in req.as_object().unwrap().keys() {
                    assert!(
                        schemes.get(name).is_some(),
                        "unknown security scheme {name}"
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_the_checked_in_document() {
    let app = spawn_app(Mode::Embedded).await;
    let res = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert!(res.headers()["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("public, max-age="));
    let etag = res.headers()["etag"].to_str().unwrap().to_string();
    let body = res.bytes().await.unwrap();
    let file = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json")).unwrap();
    assert_eq!(body.as_ref(), file.as_slice());
    let res = app
        .http
        .get(app.url("/openapi.json"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
}
