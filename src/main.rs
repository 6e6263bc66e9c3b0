//! `tokend`: parse the command line, load and validate configuration (every bad value on a line
//! of its own, then exit 2), initialise logging, run.

use std::process::ExitCode;

use clap::Parser;
use tokend::cli::{self, Cli};
use tokend::config::{Config, ProcessEnv};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match ProcessEnv::load().and_then(|env| Config::from_env(&env)) {
        Ok(c) => c,
        Err(e) => {
            for line in e.errors() {
                eprintln!("tokend: {line}");
            }
            return ExitCode::from(2);
        }
    };
    let _logs = tokend::telemetry::init(&config.log, config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokend: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli::run(cli, config))
}
