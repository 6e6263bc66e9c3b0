//! `examples/device_cli.rs` end to end, as the README's "Devices and CLIs" runs it: the CLI
//! asks for codes and polls while a person approves on the `/device` page (played as a browser
//! would), keeps its tokens in a file only its user can read, refreshes them, and signs out by
//! revoking its refresh family (docs/device.md).

use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_at_own_address, Mode, TestApp};

#[allow(dead_code, unreachable_pub)]
#[path = "../../examples/device_cli.rs"]
mod example;

use example::{CliError, DeviceCli, Prompt};

const PASSWORD: &str = "correct horse battery";

async fn spawn() -> (TestApp, String, tempfile::NamedTempFile) {
    let (app, issuer, file) = spawn_at_own_address(
        Mode::Embedded,
        &json!([
            {"client_id": "my-cli",
             "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
             "client_name": "My CLI"}
        ]),
        |_| {},
    )
    .await;
    let res = app.register("ada", "ada@example.com", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    (app, issuer, file)
}

/// Runs `login` and, once the CLI shows its code, answers `decision` on the page as `ada`.
async fn login_with(app: &TestApp, cli: &DeviceCli, decision: &str) -> Result<(), CliError> {
    let shown: Arc<Mutex<Option<Prompt>>> = Arc::new(Mutex::new(None));
    let (tx, rx) = tokio::sync::oneshot::channel::<Prompt>();
    let tx = Mutex::new(Some(tx));
    let seen = shown.clone();
    let login = cli.login("openid profile", move |p| {
        *seen.lock().unwrap() = Some(p.clone());
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send(p.clone());
        }
    });
    let person = async {
        let p = rx.await.expect("the CLI shows a code");
        assert_eq!(p.user_code.len(), 9, "{p:?}");
        assert!(p.verification_uri.ends_with("/device"), "{p:?}");
        let d = json!({
            "user_code": p.user_code,
            "verification_uri_complete": p.verification_uri_complete.clone().unwrap(),
        });
        crate::device::decide_as(app, &d, "ada", PASSWORD, decision).await;
    };
    let (result, ()) = tokio::join!(login, person);
    assert!(shown.lock().unwrap().is_some());
    result.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_cli_signs_in_with_the_device_grant_refreshes_and_signs_out() {
    let (app, issuer, _file) = spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("nested").join("tokens.json");
    let cli = DeviceCli::discover(&issuer, "my-cli", Some(cache.clone()))
        .await
        .unwrap();

    // Not signed in yet.
    assert!(matches!(
        cli.access_token().await,
        Err(CliError::LoginNeeded(_))
    ));

    login_with(&app, &cli, "approve").await.unwrap();
    let saved = cli.cached().unwrap();
    assert!(saved.refresh_token.is_some() && saved.id_token.is_some());
    assert_eq!(saved.scope.as_deref(), Some("openid profile"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the cache is the user's alone");
    }
    // A live token comes from the cache, unchanged.
    assert_eq!(cli.access_token().await.unwrap(), saved.access_token);
    let me: Value = cli.whoami().await.unwrap();
    assert_eq!(me["preferred_username"], "ada", "{me}");

    // A refresh replaces the pair in the cache (the old refresh token is spent, docs/sessions.md).
    let refreshed = cli.refresh(&saved).await.unwrap();
    assert_ne!(refreshed.refresh_token, saved.refresh_token);
    assert_eq!(cli.cached().unwrap(), refreshed);

    // An expired access token is refreshed on use and saved.
    let mut expired = cli.cached().unwrap();
    expired.expires_at = 0;
    std::fs::write(&cache, serde_json::to_vec(&expired).unwrap()).unwrap();
    let fresh = cli.access_token().await.unwrap();
    assert_ne!(fresh, expired.access_token);
    assert_eq!(cli.cached().unwrap().access_token, fresh);

    // Signing out revokes the family: its refresh token is refused and the cache is gone.
    let last = cli.cached().unwrap();
    cli.logout().await.unwrap();
    assert!(!cache.exists());
    let res = app
        .http
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", last.refresh_token.as_deref().unwrap()),
            ("client_id", "my-cli"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(matches!(cli.whoami().await, Err(CliError::LoginNeeded(_))));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_cli_reports_a_denied_sign_in_and_saves_nothing() {
    let (app, issuer, _file) = spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("tokens.json");
    let cli = DeviceCli::discover(&issuer, "my-cli", Some(cache.clone()))
        .await
        .unwrap();
    assert_eq!(login_with(&app, &cli, "deny").await, Err(CliError::Denied));
    assert!(!cache.exists());
    // A cache of another provider is not used.
    let other = DeviceCli::discover(&issuer, "my-cli", Some(cache.clone()))
        .await
        .unwrap();
    std::fs::write(
        &cache,
        serde_json::to_vec(&json!({
            "issuer": "https://elsewhere.example", "client_id": "my-cli",
            "access_token": "x", "refresh_token": null, "id_token": null, "scope": null,
            "expires_at": i64::MAX
        }))
        .unwrap(),
    )
    .unwrap();
    assert!(matches!(
        other.access_token().await,
        Err(CliError::LoginNeeded(_))
    ));
    app.stop().await;
}
