//! Time as a parameter: everything that issues, validates or rotates asks a [`Clock`]. The clock
//! types live in `tokend-token-shape`, which the resource-server verifier shares, so one manual
//! clock drives the server and a verifier in the same test.

pub use tokend_token_shape::clock::{ms, secs, Clock, ManualClock, SharedClock, SystemClock};
