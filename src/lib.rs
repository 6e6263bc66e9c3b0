//! tokend: an OAuth2-style token server issuing signed JWTs from keys that rotate on their own.
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod keys;
pub mod store;
