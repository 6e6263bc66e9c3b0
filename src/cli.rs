//! The command line: `serve`, `check-config`, and the operator commands.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::keys::{Alg, Keys, KeysConfig};
use crate::startup::{Application, Backends};

#[derive(Debug, Parser)]
#[command(name = "tokend", version, about = "A token server: rotating signing keys, JWKS, refresh-token families")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve,
    /// Validate the configuration and print it, secrets redacted.
    CheckConfig,
    /// Signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
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
    Revoke { kid: String },
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
    }
}

async fn open_keys(config: &Config) -> Result<Keys, String> {
    let clock: SharedClock = Arc::new(SystemClock);
    let b = Backends::connect(config, &clock)
        .await
        .map_err(|e| e.to_string())?;
    Keys::open(
        KeysConfig {
            algs: config.signing_algs.clone(),
            rotation: config.key_rotation,
            prepublish: config.key_prepublish,
            retention: config.access_ttl.max(config.refresh_ttl)
                + std::time::Duration::from_secs(crate::domain::tokens::LEEWAY_SECS as u64),
            reload: config.keyset_reload,
            rsa_bits: 3072,
        },
        b.keystore,
        b.lease,
        clock,
    )
    .await
    .map_err(|e| e.to_string())
}

fn ts(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
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
    let keys = open_keys(&config).await?;
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
