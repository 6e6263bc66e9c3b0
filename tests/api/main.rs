//! The one integration test binary: a module per surface, all on real stores.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

mod accounts;
mod authorize;
mod browser;
mod cluster;
mod connections;
mod deploy;
mod device;
mod device_cli;
mod dpop;
mod faults;
mod foundation;
mod fuzz;
mod hardening;
mod helpers;
mod interop_rp;
mod keys;
mod layout;
mod lifecycle_mail;
mod mail;
mod multi_instance;
mod oauth;
mod openapi;
mod ops;
mod pages;
mod par;
mod races;
mod registration;
mod relying_party;
mod services;
mod sessions;
mod soak;
mod stores;
mod tour;
mod verifier;
