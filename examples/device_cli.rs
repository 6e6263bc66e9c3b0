//! A command-line tool that signs in through tokend with the device authorization grant
//! (RFC 8628), keeps its tokens in a file only its user can read, and refreshes them when they
//! run out (RFC 6749 §6). See docs/device.md.
//!
//! ```text
//! cargo run --example device_cli -- --issuer http://localhost:5000 --client-id my-cli login
//! cargo run --example device_cli -- --client-id my-cli whoami
//! cargo run --example device_cli -- --client-id my-cli token     # for scripts: prints a live token
//! cargo run --example device_cli -- --client-id my-cli logout
//! ```
//!
//! `login` prints a short code and an address to open on any device with a browser; once the
//! user approves there, the tokens are saved to the cache file (mode 0600, written whole and
//! renamed into place, so a crash never leaves half a file). Every other command reads the
//! cache and refreshes the access token first when it expires within a minute; a refresh token
//! that was revoked or ran out means "log in again". The client is public (no secret), as every
//! program a user installs is (RFC 8252 §8.4).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The device code grant type (RFC 8628 §3.4).
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// An access token closer than this to its expiry is refreshed before use.
const REFRESH_MARGIN_SECS: i64 = 60;

/// Command line (each flag also read from the environment).
#[derive(Debug, Parser)]
#[command(about = "A CLI signing in through tokend with the device authorization grant")]
pub struct Args {
    /// The issuer URL, exactly as tokend's TOKEND_ISSUER.
    #[arg(
        long,
        env = "DEVICE_CLI_ISSUER",
        default_value = "http://localhost:5000"
    )]
    pub issuer: String,
    /// This program's client id at tokend (a public client with the device_code grant).
    #[arg(long, env = "DEVICE_CLI_CLIENT_ID", default_value = "my-cli")]
    pub client_id: String,
    /// The scopes to ask for at `login`.
    #[arg(long, env = "DEVICE_CLI_SCOPE", default_value = "openid profile")]
    pub scope: String,
    /// Where the tokens are kept (default: $XDG_CACHE_HOME or ~/.cache, then
    /// tokend-device-cli/<client id>.json).
    #[arg(long, env = "DEVICE_CLI_CACHE")]
    pub cache: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Sign in: show a code to enter in a browser, wait for approval, save the tokens.
    Login,
    /// Print a live access token (refreshed first if needed), for `curl -H "Authorization:
    /// Bearer $(…)"`.
    Token,
    /// Print who is signed in (the provider's userinfo endpoint).
    Whoami,
    /// Revoke the refresh token (and so its whole family) and forget the tokens.
    Logout,
}

/// What `login` shows the user (RFC 8628 §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
}

/// The cache file's content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tokens {
    pub issuer: String,
    pub client_id: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    pub scope: Option<String>,
    /// Unix seconds at which the access token expires.
    pub expires_at: i64,
}

/// Why a command failed, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// Not signed in, or the sign-in ran out: run `login`.
    LoginNeeded(String),
    /// The user pressed Deny.
    Denied,
    /// The code expired before the user approved it.
    Expired,
    Other(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::LoginNeeded(why) => write!(f, "{why}: run `login` first"),
            CliError::Denied => write!(f, "the sign-in was denied in the browser"),
            CliError::Expired => write!(f, "the code expired before it was approved: try again"),
            CliError::Other(e) => write!(f, "{e}"),
        }
    }
}

fn other(e: impl std::fmt::Display) -> CliError {
    CliError::Other(e.to_string())
}

/// Unix seconds (a program of its own: the server's clock abstraction is not here).
#[allow(clippy::disallowed_methods)]
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The default cache file of a client.
fn default_cache(client_id: &str) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let safe: String = client_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    base.join("tokend-device-cli").join(format!("{safe}.json"))
}

/// The device flow client: the provider's metadata and the cache file.
pub struct DeviceCli {
    issuer: String,
    client_id: String,
    cache: PathBuf,
    meta: Value,
    http: reqwest::Client,
}

impl DeviceCli {
    /// Reads `{issuer}/.well-known/openid-configuration` (OpenID Connect Discovery 1.0); its
    /// `issuer` must be the one asked for (§4.3) and it must offer the device grant.
    pub async fn discover(
        issuer: &str,
        client_id: &str,
        cache: Option<PathBuf>,
    ) -> Result<DeviceCli, CliError> {
        let http = reqwest::Client::new();
        let url = format!("{issuer}/.well-known/openid-configuration");
        let meta: Value = http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| other(format!("discovery at {url}: {e}")))?
            .json()
            .await
            .map_err(|e| other(format!("discovery at {url}: {e}")))?;
        if meta["issuer"] != issuer {
            return Err(other(format!(
                "{url} names another issuer: {}",
                meta["issuer"]
            )));
        }
        if meta["device_authorization_endpoint"].as_str().is_none() {
            return Err(other(format!("{issuer} does not offer the device grant")));
        }
        Ok(DeviceCli {
            issuer: issuer.to_string(),
            client_id: client_id.to_string(),
            cache: cache.unwrap_or_else(|| default_cache(client_id)),
            meta,
            http,
        })
    }

    fn endpoint(&self, name: &str) -> Result<&str, CliError> {
        self.meta[name]
            .as_str()
            .ok_or_else(|| other(format!("the provider's metadata has no {name}")))
    }

    /// The cache file's path.
    pub fn cache_path(&self) -> &Path {
        &self.cache
    }

    /// Posts a form to the token endpoint: the tokens, or the error's `error` code and
    /// description (RFC 6749 §5.2).
    async fn token_request(
        &self,
        form: &[(&str, &str)],
    ) -> Result<Result<Value, (String, String)>, CliError> {
        let res = self
            .http
            .post(self.endpoint("token_endpoint")?)
            .form(form)
            .send()
            .await
            .map_err(other)?;
        let status = res.status();
        let body: Value = res.json().await.map_err(other)?;
        if status.is_success() {
            return Ok(Ok(body));
        }
        let error = body["error"]
            .as_str()
            .unwrap_or("unknown_error")
            .to_string();
        let description = body["error_description"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok(Err((error, description)))
    }

    /// `login`: asks for a device code (RFC 8628 §3.1), shows it through `show`, then polls the
    /// token endpoint at the interval asked for, 5 s longer after every `slow_down` (§3.5),
    /// until the user approves or denies or the code expires; saves the tokens.
    pub async fn login(&self, scope: &str, show: impl Fn(&Prompt)) -> Result<Tokens, CliError> {
        let res = self
            .http
            .post(self.endpoint("device_authorization_endpoint")?)
            .form(&[("client_id", self.client_id.as_str()), ("scope", scope)])
            .send()
            .await
            .map_err(other)?;
        let status = res.status();
        let body: Value = res.json().await.map_err(other)?;
        if !status.is_success() {
            return Err(other(format!(
                "the device authorization request was refused: {} {}",
                body["error"].as_str().unwrap_or_default(),
                body["error_description"].as_str().unwrap_or_default()
            )));
        }
        let text = |name: &str| body[name].as_str().map(String::from);
        let (Some(device_code), Some(user_code), Some(verification_uri)) = (
            text("device_code"),
            text("user_code"),
            text("verification_uri"),
        ) else {
            return Err(other("the device authorization answer is incomplete"));
        };
        let expires_in = body["expires_in"].as_u64().unwrap_or(600);
        show(&Prompt {
            user_code,
            verification_uri,
            verification_uri_complete: text("verification_uri_complete"),
            expires_in,
        });
        let mut interval = body["interval"].as_u64().unwrap_or(5).max(1);
        let deadline = now().saturating_add(i64::try_from(expires_in).unwrap_or(600));
        loop {
            tokio::time::sleep(Duration::from_secs(interval)).await;
            let answer = self
                .token_request(&[
                    ("grant_type", DEVICE_GRANT),
                    ("device_code", device_code.as_str()),
                    ("client_id", self.client_id.as_str()),
                ])
                .await?;
            match answer {
                Ok(tokens) => return self.save(&tokens, None),
                Err((e, _)) if e == "authorization_pending" => {}
                Err((e, _)) if e == "slow_down" => interval += 5,
                Err((e, _)) if e == "access_denied" => return Err(CliError::Denied),
                Err((e, _)) if e == "expired_token" => return Err(CliError::Expired),
                Err((e, d)) => return Err(other(format!("the token endpoint answered {e}: {d}"))),
            }
            if now() > deadline {
                return Err(CliError::Expired);
            }
        }
    }

    /// Keeps a token response in the cache file; a response without a refresh token keeps the
    /// one it replaces (RFC 6749 §6 lets the server omit it).
    fn save(&self, answer: &Value, previous: Option<&Tokens>) -> Result<Tokens, CliError> {
        let text = |name: &str| answer[name].as_str().map(String::from);
        let access_token =
            text("access_token").ok_or_else(|| other("the token answer has no access_token"))?;
        let tokens = Tokens {
            issuer: self.issuer.clone(),
            client_id: self.client_id.clone(),
            access_token,
            refresh_token: text("refresh_token")
                .or_else(|| previous.and_then(|p| p.refresh_token.clone())),
            id_token: text("id_token").or_else(|| previous.and_then(|p| p.id_token.clone())),
            scope: text("scope").or_else(|| previous.and_then(|p| p.scope.clone())),
            expires_at: now().saturating_add(answer["expires_in"].as_i64().unwrap_or(0)),
        };
        write_private(
            &self.cache,
            &serde_json::to_vec_pretty(&tokens).map_err(other)?,
        )
        .map_err(|e| other(format!("cannot write {}: {e}", self.cache.display())))?;
        Ok(tokens)
    }

    /// The cached tokens, if they are this provider's and this client's.
    pub fn cached(&self) -> Result<Tokens, CliError> {
        let bytes = std::fs::read(&self.cache)
            .map_err(|_| CliError::LoginNeeded("not signed in".into()))?;
        let tokens: Tokens = serde_json::from_slice(&bytes)
            .map_err(|_| CliError::LoginNeeded("the token cache is unreadable".into()))?;
        if tokens.issuer != self.issuer || tokens.client_id != self.client_id {
            return Err(CliError::LoginNeeded(
                "the token cache belongs to another provider or client".into(),
            ));
        }
        Ok(tokens)
    }

    /// A live access token: the cached one, or a refreshed one saved in its place.
    pub async fn access_token(&self) -> Result<String, CliError> {
        let tokens = self.cached()?;
        if tokens.expires_at - REFRESH_MARGIN_SECS > now() {
            return Ok(tokens.access_token);
        }
        Ok(self.refresh(&tokens).await?.access_token)
    }

    /// Refreshes now (RFC 6749 §6): the new pair replaces the old one in the cache (the old
    /// refresh token is spent, docs/sessions.md).
    pub async fn refresh(&self, tokens: &Tokens) -> Result<Tokens, CliError> {
        let Some(refresh_token) = tokens.refresh_token.as_deref() else {
            return Err(CliError::LoginNeeded(
                "the access token expired and there is no refresh token".into(),
            ));
        };
        match self
            .token_request(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", self.client_id.as_str()),
            ])
            .await?
        {
            Ok(answer) => self.save(&answer, Some(tokens)),
            Err((e, _)) if e == "invalid_grant" => {
                // Revoked, reused or run out: the cache is of no use any more.
                let _ = std::fs::remove_file(&self.cache);
                Err(CliError::LoginNeeded("the sign-in has ended".into()))
            }
            Err((e, d)) => Err(other(format!("refresh refused: {e}: {d}"))),
        }
    }

    /// The signed-in user's claims (OpenID Connect Core §5.3).
    pub async fn whoami(&self) -> Result<Value, CliError> {
        let token = self.access_token().await?;
        let res = self
            .http
            .get(self.endpoint("userinfo_endpoint")?)
            .bearer_auth(token)
            .send()
            .await
            .map_err(other)?;
        if res.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(CliError::LoginNeeded(
                "the provider refused the token".into(),
            ));
        }
        res.error_for_status()
            .map_err(other)?
            .json()
            .await
            .map_err(other)
    }

    /// Revokes the refresh token (RFC 7009 §2.1: its family goes with it) and forgets the
    /// tokens. Signing out when not signed in is not an error.
    pub async fn logout(&self) -> Result<(), CliError> {
        let Ok(tokens) = self.cached() else {
            return Ok(());
        };
        let (token, hint) = match &tokens.refresh_token {
            Some(r) => (r.as_str(), "refresh_token"),
            None => (tokens.access_token.as_str(), "access_token"),
        };
        self.http
            .post(self.endpoint("revocation_endpoint")?)
            .form(&[
                ("token", token),
                ("token_type_hint", hint),
                ("client_id", self.client_id.as_str()),
            ])
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(other)?;
        std::fs::remove_file(&self.cache).map_err(other)
    }
}

/// Writes `bytes` to `path` readable by its owner only: into a new file beside it, then renamed
/// over it, so readers see the old content or the new, never a part.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Shows the code the way a CLI does (RFC 8628 §3.3).
fn print_prompt(p: &Prompt) {
    eprintln!("To sign in, open {} and enter the code", p.verification_uri);
    eprintln!();
    eprintln!("    {}", p.user_code);
    eprintln!();
    if let Some(complete) = &p.verification_uri_complete {
        eprintln!("(or open {complete})");
    }
    eprintln!(
        "Waiting for approval; the code expires in {} minutes.",
        p.expires_in / 60
    );
}

async fn run(args: Args) -> Result<(), CliError> {
    let cli = DeviceCli::discover(&args.issuer, &args.client_id, args.cache).await?;
    match args.command {
        Command::Login => {
            let tokens = cli.login(&args.scope, print_prompt).await?;
            eprintln!(
                "Signed in (scope: {}). Tokens saved to {}.",
                tokens.scope.as_deref().unwrap_or(""),
                cli.cache_path().display()
            );
        }
        Command::Token => println!("{}", cli.access_token().await?),
        Command::Whoami => {
            let claims = cli.whoami().await?;
            println!("{}", serde_json::to_string_pretty(&claims).map_err(other)?);
        }
        Command::Logout => {
            cli.logout().await?;
            eprintln!("Signed out.");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("device_cli: {e}");
            ExitCode::FAILURE
        }
    }
}
