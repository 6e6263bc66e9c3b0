//! What tokend and a resource server check the same way, in one place (`docs/tokens.md`,
//! "Validation"): the `typ` of each token, the bearer token of an `Authorization` header, the
//! clock skew tolerated on `exp` and `nbf`, and the algorithm names. The server
//! (`tokend`) and the verifier (`tokend-verifier`) both use this crate instead of keeping
//! copies that could drift apart.
//!
//! It depends on `http` (for [`HeaderMap`](http::HeaderMap)) and, with the `serde` feature, on
//! `serde`; nothing else.

pub mod alg;
pub mod bearer;
pub mod clock;
pub mod time;
pub mod typ;

pub use alg::Alg;
pub use bearer::BearerError;
pub use time::{LEEWAY, LEEWAY_SECS};
pub use typ::{is_access_typ, typ_matches, ACCESS_TYP, REFRESH_TYP};
