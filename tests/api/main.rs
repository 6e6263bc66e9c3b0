//! The one integration test binary: a module per surface, all on real stores.

mod accounts;
mod foundation;
mod helpers;
mod services;
mod sessions;
mod stores;
