//! The command line: `serve`, `check-config`, and the operator commands.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::clock::{Clock, SharedClock, SystemClock};
use crate::config::vars::{CLIENTS_FILE, MONGODB_URI, REDIS_URL};
use crate::config::{Config, Mode};
use crate::domain::accounts::UserView;
use crate::domain::clients::{hash_secret, load_static_clients, validate_client, Clients};
use crate::domain::events::{EventType, Events, NewEvent};
use crate::domain::ids;
use crate::domain::lifecycle::{Actor, Lifecycle, LifecycleSettings, Verified};
use crate::keys::{Alg, Keys};
use crate::startup::{keys_config, Application, Backends, StartupError};
use crate::store::{
    ClientMetadata, ClientRecord, ClientStore, StoreError, UserRecord, PRIVATE_KEY_JWT,
};

/// The command line: `tokend serve`, `keys`, `clients`, `users` (docs/operations.md).
#[derive(Debug, Parser)]
#[command(
    name = "tokend",
    version,
    about = "A token server: rotating signing keys, JWKS, refresh-token families"
)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server.
    Serve,
    /// Validate the configuration and print it, secrets redacted.
    CheckConfig,
    /// Signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// OAuth clients stored in MongoDB (production mode).
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Users stored in MongoDB (production mode).
    #[command(subcommand)]
    Users(UsersCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum UsersCommand {
    /// Give an existing user the `admin` role (takes effect in their next token).
    GrantAdmin { email: String },
    /// List users ordered by id, a page at a time.
    List {
        /// Start after this user id (the `next` of the page before).
        #[arg(long, allow_hyphen_values = true)]
        after: Option<String>,
        /// Users per page (1 to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        /// Print `{"users":[…],"next":…}`.
        #[arg(long)]
        json: bool,
    },
    /// Show one user, named by id or email.
    Show {
        #[arg(allow_hyphen_values = true)]
        user: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a user, named by id or email, as `DELETE /admin/users/{id}` does: every session,
    /// browser session, consent and token of theirs ends, then the record goes.
    Delete {
        #[arg(allow_hyphen_values = true)]
        user: String,
    },
    /// Mark a user's email address verified, as its link would (an address in
    /// TOKEND_ADMIN_EMAILS earns `admin` then, once).
    VerifyEmail {
        #[arg(allow_hyphen_values = true)]
        user: String,
    },
}

// Parsed once per process, like `Command`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum ClientsCommand {
    /// Create a client. A confidential client's secret is printed once and stored only as its
    /// SHA-256.
    Create {
        /// The client id (default: a random one).
        #[arg(long)]
        id: Option<String>,
        /// An allowed grant type: password, refresh_token, client_credentials,
        /// authorization_code, urn:ietf:params:oauth:grant-type:device_code,
        /// urn:ietf:params:oauth:grant-type:token-exchange (repeat the flag or separate with
        /// commas).
        #[arg(long = "grant", required = true, value_delimiter = ',')]
        grants: Vec<String>,
        /// An allowed scope (repeat the flag, or separate with spaces).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Signing algorithm of this client's tokens (default: the first of TOKEND_SIGNING_ALGS).
        #[arg(long)]
        alg: Option<String>,
        /// A public client: no secret; it cannot use client_credentials or introspection.
        #[arg(long)]
        public: bool,
        /// A redirect URI for the authorization code flow (repeat the flag).
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// Where RP-initiated logout may send the browser back to (repeat the flag).
        #[arg(long = "post-logout-redirect-uri")]
        post_logout_redirect_uris: Vec<String>,
        /// Sign users in without a consent page (an application of the operator's own).
        #[arg(long)]
        first_party: bool,
        /// The name shown on the sign-in and consent pages.
        #[arg(long)]
        name: Option<String>,
        /// client_secret_basic, client_secret_post, none or private_key_jwt (default: any that
        /// fits; private_key_jwt with --jwks or --jwks-uri).
        #[arg(long)]
        auth_method: Option<String>,
        /// private_key_jwt: a file holding the client's public keys, a JWK Set
        /// ({"keys":[…]}; RFC 7517 §5). The client gets no secret.
        #[arg(long, conflicts_with_all = ["jwks_uri", "public"])]
        jwks: Option<std::path::PathBuf>,
        /// private_key_jwt: where the client publishes its JWK Set (https, or http on a
        /// loopback address); tokend fetches and caches it. The client gets no secret.
        #[arg(long, conflicts_with = "public")]
        jwks_uri: Option<String>,
        /// private_key_jwt: the one algorithm the client's assertions may use (ES256, EdDSA,
        /// RS256 or PS256; default: any that fits the key).
        #[arg(long)]
        auth_signing_alg: Option<String>,
        /// Signing algorithm of this client's ID tokens (default: RS256 when configured).
        #[arg(long)]
        id_token_alg: Option<String>,
        /// The client must push its authorization requests to /oauth/par first (RFC 9126 §6).
        #[arg(long)]
        require_par: bool,
        /// The client always sends a DPoP proof to the token endpoint, which refuses a token
        /// request without one (`dpop_bound_access_tokens`, RFC 9449 §5.2).
        #[arg(long)]
        dpop_bound: bool,
        /// An audience this client may exchange tokens for with the token-exchange grant
        /// (`token_exchange_audiences`, RFC 8693; repeat the flag).
        #[arg(long = "token-exchange-audience")]
        token_exchange_audiences: Vec<String>,
        /// A resource this client may ask tokens for (`resources`, RFC 8707: an absolute URI
        /// without a fragment; repeat the flag).
        #[arg(long = "resource")]
        resources: Vec<String>,
        /// Print `{"client_id","client_secret"}` only.
        #[arg(long)]
        json: bool,
    },
    /// List clients: those of TOKEND_CLIENTS_FILE and those in MongoDB (created here or
    /// registered at /oauth/register). Never shows a secret.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a client from MongoDB; its tokens stay valid until they expire.
    Delete {
        /// The client id (generated ids may start with '-').
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Print an initial access token for dynamic client registration
    /// (TOKEND_CLIENT_REGISTRATION=token; RFC 7591 §3). Works in both modes: it is signed with
    /// the server's own keys (the key directory or the MongoDB keyset).
    RegistrationToken {
        /// How long the token is valid, e.g. 30m, 1h, 7d (at most the longest token lifetime).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// A scope beyond openid, profile and email that clients registered with this token
        /// may have (repeat the flag, or separate with spaces).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Print `{"token","expires_at"}` (Unix seconds) only.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// List keys with their state and timestamps.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a successor now (it still waits out TOKEND_KEY_PREPUBLISH before it signs).
    Rotate {
        /// Only this algorithm (EdDSA or RS256).
        #[arg(long)]
        alg: Option<String>,
    },
    /// Revoke a compromised key: out of JWKS and verification at once.
    Revoke {
        /// The key id (a base64url thumbprint; it may start with '-').
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("tokend: {msg}");
    ExitCode::FAILURE
}

/// Runs a parsed command with a validated configuration.
pub async fn run(cli: Cli, config: Config) -> ExitCode {
    match cli.command {
        Command::CheckConfig => {
            println!("{}", config.describe());
            ExitCode::SUCCESS
        }
        Command::Serve => {
            let app = match Application::build(config).await {
                Ok(app) => app,
                Err(e @ StartupError::Config(_)) => {
                    eprintln!("tokend: {e}");
                    return ExitCode::from(2);
                }
                Err(e) => return fail(e),
            };
            app.run_until_stopped(crate::telemetry::shutdown_signal())
                .await;
            ExitCode::SUCCESS
        }
        Command::Keys(cmd) => match keys_command(cmd, config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Clients(cmd) => match clients_command(cmd, config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Users(cmd) => match users_command(cmd, config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
    }
}

/// The keyset, and the events its changes are recorded as (docs/events.md).
async fn open_keys(config: &Config) -> Result<(Keys, Events), String> {
    let clock: SharedClock = Arc::new(SystemClock);
    let b = Backends::connect(config, &clock)
        .await
        .map_err(|e| e.to_string())?;
    let events = cli_events(config, &b, &clock);
    let keys = Keys::open(
        keys_config(config),
        b.keystore.clone(),
        b.lease.clone(),
        clock,
    )
    .await
    .map_err(|e| e.to_string())?;
    keys.observe(events.key_observer());
    Ok((keys, events))
}

fn ts(secs: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn print_keys(keys: &[crate::keys::KeyInfo]) {
    println!(
        "{:<44} {:<6} {:<8} {:<21} {:<21} {:<21}",
        "KID", "ALG", "STATE", "ACTIVATES", "RETIRES", "EXPIRES"
    );
    for k in keys {
        println!(
            "{:<44} {:<6} {:<8} {:<21} {:<21} {:<21}",
            k.kid,
            k.alg.as_str(),
            format!("{:?}", k.state).to_lowercase(),
            ts(k.activates),
            ts(k.retires),
            ts(k.expires)
        );
    }
}

async fn keys_command(cmd: KeysCommand, config: Config) -> Result<(), String> {
    let (keys, events) = open_keys(&config).await?;
    let result = keys_subcommand(cmd, &keys).await;
    events.flush().await;
    result
}

async fn keys_subcommand(cmd: KeysCommand, keys: &Keys) -> Result<(), String> {
    match cmd {
        KeysCommand::List { json } => {
            let list = keys.list();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?
                );
            } else {
                print_keys(&list);
            }
        }
        KeysCommand::Rotate { alg } => {
            let alg = match alg {
                None => None,
                Some(a) => Some(Alg::parse(&a).ok_or_else(|| format!("unknown algorithm {a:?}"))?),
            };
            let created = keys.rotate_now(alg).await.map_err(|e| e.to_string())?;
            println!("started {} successor key(s):", created.len());
            print_keys(&created);
        }
        KeysCommand::Revoke { kid } => {
            if keys.revoke(&kid).await.map_err(|e| e.to_string())? {
                println!("revoked {kid}; it is out of JWKS and its tokens no longer verify");
            } else {
                return Err(format!("no key with kid {kid:?}"));
            }
        }
    }
    Ok(())
}

async fn users_command(cmd: UsersCommand, config: Config) -> Result<(), String> {
    if matches!(config.mode, Mode::Embedded { .. }) {
        return Err(format!(
            "`tokend users` needs production mode: set {mongodb_uri} and {redis_url}. \
             In embedded mode, start the server with TOKEND_BOOTSTRAP_ADMIN_EMAIL and \
             TOKEND_BOOTSTRAP_ADMIN_PASSWORD to create the first admin instead.",
            mongodb_uri = MONGODB_URI.name,
            redis_url = REDIS_URL.name,
        ));
    }
    let clock: SharedClock = Arc::new(SystemClock);
    let b = Backends::connect(&config, &clock)
        .await
        .map_err(|e| e.to_string())?;
    let events = cli_events(&config, &b, &clock);
    let lifecycle = Lifecycle::new(
        b.users.clone(),
        b.sessions.clone(),
        b.consents.clone(),
        b.mail.clone(),
        events.clone(),
        clock.clone(),
        LifecycleSettings {
            session_ttl: config.session_ttl,
            admin_emails: config.admin_emails.clone(),
        },
    );
    let result = users_subcommand(cmd, &config, &b, &clock, &events, &lifecycle).await;
    events.flush().await;
    result
}

/// The events of a command: kept in the mode's store, like the server's (docs/events.md).
fn cli_events(config: &Config, b: &Backends, clock: &SharedClock) -> Events {
    Events::new(
        b.events.clone(),
        clock.clone(),
        crate::metrics::Metrics::new(),
        config.events_retention,
    )
}

/// The user a command names, by id or email.
async fn named_user(lifecycle: &Lifecycle, key: &str) -> Result<UserRecord, String> {
    lifecycle
        .find(key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no user {key:?}"))
}

async fn users_subcommand(
    cmd: UsersCommand,
    config: &Config,
    b: &Backends,
    clock: &SharedClock,
    events: &Events,
    lifecycle: &Lifecycle,
) -> Result<(), String> {
    match cmd {
        UsersCommand::List { after, limit, json } => {
            let (users, next) = lifecycle
                .list(after.as_deref(), usize::from(limit))
                .await
                .map_err(|e| e.to_string())?;
            if json {
                println!("{}", serde_json::json!({ "users": users, "next": next }));
            } else {
                println!("{:<38} {:<24} {:<9} ROLES", "ID", "USERNAME", "VERIFIED");
                for u in &users {
                    println!(
                        "{:<38} {:<24} {:<9} {}",
                        u.id,
                        u.username,
                        if u.email_verified { "yes" } else { "no" },
                        u.roles.join(",")
                    );
                }
                if let Some(next) = next {
                    println!("more: --after {next}");
                }
            }
        }
        UsersCommand::Show { user, json } => {
            let u = UserView::from(&named_user(lifecycle, &user).await?);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&u).map_err(|e| e.to_string())?
                );
            } else {
                println!("id:             {}", u.id);
                println!("username:       {}", u.username);
                println!("email:          {}", u.email);
                println!("email_verified: {}", u.email_verified);
                println!("roles:          {}", u.roles.join(", "));
                println!("created_at:     {}", u.created_at);
                println!("updated_at:     {}", u.updated_at);
            }
        }
        UsersCommand::Delete { user } => {
            let u = named_user(lifecycle, &user).await?;
            lifecycle
                .delete(&u.id, Actor::Operator, None)
                .await
                .map_err(|e| match e {
                    crate::domain::Error::NotFound => format!("no user {user:?}"),
                    other => other.to_string(),
                })?;
            println!(
                "deleted user {}: their sessions, consents and tokens have ended",
                u.id
            );
        }
        UsersCommand::VerifyEmail { user } => {
            let u = named_user(lifecycle, &user).await?;
            match lifecycle
                .verify_email(&u)
                .await
                .map_err(|e| e.to_string())?
            {
                Verified::Already => println!("{} is verified already", u.email),
                Verified::Now { granted_admin } => {
                    println!("{} is now verified", u.email);
                    if granted_admin {
                        println!("it is in TOKEND_ADMIN_EMAILS: the user is now an admin");
                    }
                }
            }
        }
        UsersCommand::GrantAdmin { email } => {
            let email = crate::domain::input::Email::parse(&email).map_err(|e| e.to_string())?;
            let user = b
                .users
                .by_email(email.as_str())
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no user with email {}", email.as_str()))?;
            let already = user
                .roles
                .iter()
                .any(|r| r == crate::domain::accounts::ROLE_ADMIN);
            let user = crate::domain::admin::grant_admin(
                &*b.users,
                &*b.sessions,
                config.session_ttl,
                user,
                clock.now_ms(),
            )
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no user with email {}", email.as_str()))?;
            if already {
                println!("{} is already an admin", email.as_str());
            } else {
                events.record(
                    NewEvent::new(EventType::RolesChanged)
                        .user(&user.id)
                        .detail("by", "operator")
                        .detail("roles", user.roles.clone()),
                );
                println!(
                    "{} is now an admin (roles: {}); their next token carries the role",
                    email.as_str(),
                    user.roles.join(", ")
                );
            }
        }
    }
    Ok(())
}

/// The client registry of a production-mode configuration, and the events its changes are
/// recorded as.
async fn open_clients(config: &Config) -> Result<(Clients, Events), String> {
    if matches!(config.mode, Mode::Embedded { .. }) {
        return Err(format!(
            "`tokend clients` needs production mode: set {mongodb_uri} and {redis_url}. \
             In embedded mode, clients come from the JSON file named by {clients_file}.",
            mongodb_uri = MONGODB_URI.name,
            redis_url = REDIS_URL.name,
            clients_file = CLIENTS_FILE.name,
        ));
    }
    let statics = match &config.clients_file {
        Some(path) => load_static_clients(path, &config.signing_algs)?,
        None => Vec::new(),
    };
    let clock: SharedClock = Arc::new(SystemClock);
    let b = Backends::connect(config, &clock)
        .await
        .map_err(|e| e.to_string())?;
    let events = cli_events(config, &b, &clock);
    Ok((Clients::new(statics, b.clients), events))
}

/// One row of `tokend clients list`.
#[derive(serde::Serialize)]
struct ClientRow<'a> {
    client_id: &'a str,
    /// `file` (TOKEND_CLIENTS_FILE) or `mongodb`.
    source: &'static str,
    /// Registered at `POST /oauth/register` (RFC 7591), so managed by its registration access
    /// token (RFC 7592).
    registered: bool,
    confidential: bool,
    grant_types: &'a [String],
    scopes: &'a [String],
    alg: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    redirect_uris: &'a [String],
    first_party: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_name: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    require_pushed_authorization_requests: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dpop_bound_access_tokens: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_endpoint_auth_method: Option<&'a str>,
    /// `private_key_jwt` clients: where their keys are published (inline keys are not shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    jwks_uri: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    token_exchange_audiences: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    resources: &'a [String],
    /// RFC 3339; `None` for file clients.
    created_at: Option<String>,
}

fn client_row<'a>(c: &'a ClientRecord, source: &'static str) -> ClientRow<'a> {
    ClientRow {
        client_id: &c.client_id,
        source,
        registered: c.registration.is_some(),
        confidential: c.is_confidential(),
        grant_types: &c.grant_types,
        scopes: &c.scopes,
        alg: c.alg.as_deref(),
        redirect_uris: &c.meta.redirect_uris,
        first_party: c.meta.first_party,
        client_name: c.meta.client_name.as_deref(),
        require_pushed_authorization_requests: c.meta.require_pushed_authorization_requests,
        dpop_bound_access_tokens: c.meta.dpop_bound_access_tokens,
        token_endpoint_auth_method: c.meta.token_endpoint_auth_method.as_deref(),
        jwks_uri: c.meta.jwks_uri.as_deref(),
        token_exchange_audiences: &c.meta.token_exchange_audiences,
        resources: &c.meta.resources,
        created_at: (source == "mongodb").then(|| ts(c.created_at.div_euclid(1000))),
    }
}

/// `tokend clients registration-token`: an initial access token signed with the active key
/// of the first configured algorithm (docs/registration.md, "Initial access tokens").
async fn registration_token(
    config: &Config,
    ttl: &str,
    scopes: &[String],
    json: bool,
) -> Result<(), String> {
    let ttl = crate::config::parse_duration(ttl).map_err(|e| format!("--ttl: {e}"))?;
    // A retired key verifies for the longest token lifetime after it stops signing, so a token
    // no longer than that stays verifiable until it expires (docs/keys.md).
    let longest = config.access_ttl.max(config.refresh_ttl);
    if ttl > longest {
        return Err(format!(
            "--ttl must be at most {} (the longest token lifetime, TOKEND_REFRESH_TTL or \
             TOKEND_ACCESS_TTL): the signing key is kept only that long after it retires",
            crate::config::show_duration(longest)
        ));
    }
    let scopes: Vec<String> = scopes
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(String::from)
        .collect();
    let alg = *config
        .signing_algs
        .first()
        .ok_or("no signing algorithm configured")?;
    let (keys, _) = open_keys(config).await?;
    let (token, expires_at) = crate::domain::registration::issue_initial_access_token(
        &keys,
        alg,
        &config.issuer,
        ttl,
        &scopes,
        SystemClock.now(),
    )
    .map_err(|e| e.to_string())?;
    if config.client_registration == crate::config::RegistrationMode::Off {
        eprintln!(
            "tokend: note: {} is off in this configuration; the server accepts this token only \
             with TOKEND_CLIENT_REGISTRATION=token or open",
            crate::config::vars::CLIENT_REGISTRATION.name
        );
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "token": token, "expires_at": expires_at })
        );
    } else {
        println!("{token}");
        eprintln!("tokend: valid until {}", ts(expires_at));
    }
    Ok(())
}

async fn clients_command(cmd: ClientsCommand, config: Config) -> Result<(), String> {
    if let ClientsCommand::RegistrationToken { ttl, scopes, json } = &cmd {
        return registration_token(&config, ttl, scopes, *json).await;
    }
    let (clients, events) = open_clients(&config).await?;
    let result = clients_subcommand(cmd, &config, &clients, &events).await;
    events.flush().await;
    result
}

async fn clients_subcommand(
    cmd: ClientsCommand,
    config: &Config,
    clients: &Clients,
    events: &Events,
) -> Result<(), String> {
    match cmd {
        ClientsCommand::Create {
            id,
            grants,
            scopes,
            alg,
            public,
            redirect_uris,
            post_logout_redirect_uris,
            first_party,
            name,
            auth_method,
            jwks,
            jwks_uri,
            auth_signing_alg,
            id_token_alg,
            require_par,
            dpop_bound,
            token_exchange_audiences,
            resources,
            json,
        } => {
            let client_id = match id {
                Some(id) => id,
                None => ids::random_id().map_err(|e| e.to_string())?,
            };
            // Keys given: the client authenticates with them (private_key_jwt), not a secret.
            let keys_given = jwks.is_some() || jwks_uri.is_some();
            let auth_method =
                auth_method.or_else(|| keys_given.then(|| PRIVATE_KEY_JWT.to_string()));
            let key_client = auth_method.as_deref() == Some(PRIVATE_KEY_JWT);
            let jwks = match jwks {
                None => None,
                Some(path) => {
                    let bytes = std::fs::read(&path)
                        .map_err(|e| format!("--jwks {}: {e}", path.display()))?;
                    Some(
                        serde_json::from_slice::<serde_json::Value>(&bytes)
                            .map_err(|e| format!("--jwks {}: not JSON: {e}", path.display()))?,
                    )
                }
            };
            let secret = if public || key_client {
                None
            } else {
                Some(ids::random_secret().map_err(|e| e.to_string())?)
            };
            let record = ClientRecord {
                client_id,
                secret_sha256: secret.as_deref().map(hash_secret),
                grant_types: grants,
                scopes: scopes
                    .iter()
                    .flat_map(|s| s.split_whitespace())
                    .map(String::from)
                    .collect(),
                alg,
                created_at: SystemClock.now_ms(),
                meta: ClientMetadata {
                    redirect_uris,
                    post_logout_redirect_uris,
                    first_party,
                    client_name: name,
                    token_endpoint_auth_method: auth_method,
                    id_token_signed_response_alg: id_token_alg,
                    require_pushed_authorization_requests: require_par,
                    dpop_bound_access_tokens: dpop_bound,
                    jwks,
                    jwks_uri,
                    token_endpoint_auth_signing_alg: auth_signing_alg,
                    token_exchange_audiences,
                    resources,
                },
                registration: None,
            };
            validate_client(&record, &config.signing_algs)?;
            match clients.insert(&record).await {
                Ok(()) => {}
                Err(StoreError::Duplicate(_)) => {
                    return Err(format!("client_id {:?} already exists", record.client_id))
                }
                Err(e) => return Err(e.to_string()),
            }
            events.record(
                NewEvent::new(EventType::ClientCreated)
                    .client(&record.client_id)
                    .detail("via", "operator")
                    .detail("confidential", record.is_confidential()),
            );
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "client_id": record.client_id, "client_secret": secret })
                );
            } else {
                println!("client_id:     {}", record.client_id);
                match &secret {
                    Some(s) => {
                        println!("client_secret: {s}");
                        println!("Store the secret now: it is not shown again.");
                    }
                    None if key_client => println!(
                        "private_key_jwt client: no secret; it signs its client assertions with \
                         its own key"
                    ),
                    None => println!("public client: no secret"),
                }
            }
        }
        ClientsCommand::List { json } => {
            let stored = clients.list().await.map_err(|e| e.to_string())?;
            let mut rows: Vec<ClientRow<'_>> = clients
                .statics()
                .into_iter()
                .map(|c| client_row(c, "file"))
                .collect();
            rows.extend(stored.iter().map(|c| client_row(c, "mongodb")));
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
                );
            } else {
                println!(
                    "{:<32} {:<10} {:<12} {:<6} {:<40} SCOPES",
                    "CLIENT_ID", "SOURCE", "TYPE", "ALG", "GRANTS"
                );
                for r in rows {
                    println!(
                        "{:<32} {:<10} {:<12} {:<6} {:<40} {}",
                        r.client_id,
                        if r.registered { "registered" } else { r.source },
                        if r.confidential {
                            "confidential"
                        } else {
                            "public"
                        },
                        r.alg.unwrap_or("-"),
                        r.grant_types.join(","),
                        r.scopes.join(" ")
                    );
                }
            }
        }
        ClientsCommand::Delete { id } => {
            if clients.is_builtin_or_static(&id) {
                return Err(format!(
                    "client {id:?} is not stored in MongoDB (built in, or from {clients_file}); \
                     remove it from the file instead",
                    clients_file = CLIENTS_FILE.name,
                ));
            }
            if clients.delete(&id).await.map_err(|e| e.to_string())? {
                events.record(
                    NewEvent::new(EventType::ClientDeleted)
                        .client(&id)
                        .detail("via", "operator"),
                );
                println!("deleted client {id}");
            } else {
                return Err(format!("no client with id {id:?}"));
            }
        }
        ClientsCommand::RegistrationToken { .. } => {}
    }
    Ok(())
}
