//! tokend: an OAuth2-style token server issuing signed JWTs from keys that rotate on their own.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod http;
pub mod keys;
pub(crate) mod mail;
pub mod metrics;
pub mod startup;
pub mod store;
pub mod telemetry;
