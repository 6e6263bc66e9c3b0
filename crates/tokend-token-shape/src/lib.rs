//! What tokend and a resource server check the same way, in one place (`docs/tokens.md`,
//! "Validation"): the `typ` of each token, the token of an `Authorization` header (`Bearer` or
//! `DPoP`), the clock skew tolerated on `exp` and `nbf`, the algorithm names and the shape of
//! the `act` claim of exchanged tokens (RFC 8693 §4.1); with the
//! `dpop` feature, client public keys and the store-free checks of a DPoP proof (docs/dpop.md).
//! The server (`tokend`) and the verifier (`tokend-verifier`) both use this crate instead of
//! keeping copies that could drift apart.
//!
//! It depends on `http` (for [`HeaderMap`](http::HeaderMap)), with the `serde` feature on
//! `serde`, and with the `dpop` feature on `ring`, `base64`, `serde_json` and `url`; nothing
//! else.

pub mod act;
pub mod alg;
pub mod bearer;
pub mod clock;
#[cfg(feature = "dpop")]
pub mod dpop;
#[cfg(feature = "dpop")]
pub mod jwk;
pub mod time;
pub mod typ;

pub use act::Actor;
pub use alg::Alg;
pub use bearer::{BearerError, Scheme};
pub use time::{LEEWAY, LEEWAY_SECS};
pub use typ::{is_access_typ, typ_matches, ACCESS_TYP, REFRESH_TYP};
