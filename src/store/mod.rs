//! Stores: what tokend remembers, behind traits, with a memory implementation (embedded mode)
//! and real ones (MongoDB for users, clients and the keyset; Redis for sessions, revocations,
//! rate limits and the rotation lease). One contract suite runs against each implementation.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub mod agent;
pub mod authorize;
pub mod device;
pub mod events;
pub(crate) mod instrumented;
pub mod mail;
pub mod memory;
pub mod mongo;
pub mod redis;
pub mod replay;

pub use authorize::{AuthorizeStore, ConsentRecord, ConsentStore, Redemption};
pub use device::{
    DecideOutcome, DeviceDecision, DevicePoll, DeviceStatus, DeviceStore, DeviceView, NewDevice,
};
pub use events::{EventQuery, EventRecord, EventStore};
pub use mail::{ClaimedMail, MailStore, MailToken, OutgoingMail};
pub use replay::ReplayStore;

/// What can go wrong in a store, named for what happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A unique field (`email`, `username`, `client_id`) is already taken.
    #[error("duplicate {0}")]
    Duplicate(&'static str),
    /// The backing server cannot be reached or answered with an error.
    #[error("{store} unavailable: {message}")]
    Unavailable {
        /// The store: `mongodb` or `redis`.
        store: &'static str,
        /// The driver's message.
        message: String,
    },
    /// Data in the store could not be understood.
    #[error("corrupt record in {store}: {message}")]
    Corrupt {
        /// The store: `mongodb` or `redis`.
        store: &'static str,
        /// What could not be understood.
        message: String,
    },
}

impl StoreError {
    pub(crate) fn unavailable(store: &'static str, e: impl std::fmt::Display) -> Self {
        StoreError::Unavailable {
            store,
            message: e.to_string(),
        }
    }
    pub(crate) fn corrupt(store: &'static str, e: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            store,
            message: e.to_string(),
        }
    }
}

/// A stored user. `password_hash` is a PHC string and never leaves the domain layer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// UUIDv7.
    pub id: String,
    /// Unique, as given at registration.
    pub username: String,
    /// Lower-cased email.
    pub email: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Roles (`admin`); checked against the role list on every write.
    pub roles: Vec<String>,
    /// Whether the owner proved control of `email` (false until confirmed).
    pub email_verified: bool,
    /// Raised by one at every write of the password or the roles. A login remembers the value
    /// it read in the family it starts; a credential change ends the families that read an
    /// older value (see `docs/sessions.md`).
    pub credentials_version: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// What a conditional write of a user record expects the record to be; `Default` expects
/// nothing. A credential write decided on one state of the record lands only on that state
/// (docs/mail.md, "What is atomic").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// The record's `credentials_version` (0 for records from before it existed).
    pub credentials_version: Option<i64>,
    /// The record's address.
    pub email: Option<String>,
}

impl Expected {
    /// Whether `user` is what this expects.
    pub fn holds(&self, user: &UserRecord) -> bool {
        self.credentials_version
            .is_none_or(|v| v == user.credentials_version)
            && self.email.as_deref().is_none_or(|e| e == user.email)
    }
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("email", &self.email)
            .field("password_hash", &"<redacted>")
            .field("roles", &self.roles)
            .field("email_verified", &self.email_verified)
            .field("credentials_version", &self.credentials_version)
            .finish()
    }
}

/// Users, unique by email and by username (case-insensitively).
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Inserts a new user; `Duplicate("email")` or `Duplicate("username")` when taken.
    async fn insert(&self, user: &UserRecord) -> Result<(), StoreError>;
    /// The user with this id.
    async fn by_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError>;
    /// `email` is already lower-cased.
    async fn by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Case-insensitive.
    async fn by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Renames a user; `Duplicate("username")` when another user holds the name. `None` if no
    /// such user.
    async fn update_username(
        &self,
        id: &str,
        username: &str,
        now_ms: i64,
    ) -> Result<Option<UserRecord>, StoreError>;
    /// Replaces the password hash and raises `credentials_version` by one, atomically; the
    /// record as written, `None` if no such user or if the record is not what `expected` says
    /// (a change decided on a record that another change has since replaced does not land).
    async fn update_password_hash(
        &self,
        id: &str,
        hash: &str,
        now_ms: i64,
        expected: &Expected,
    ) -> Result<Option<UserRecord>, StoreError>;
    /// Replaces the roles and raises `credentials_version` by one, atomically; `None` if no
    /// such user.
    async fn set_roles(
        &self,
        id: &str,
        roles: &[String],
        now_ms: i64,
    ) -> Result<Option<UserRecord>, StoreError>;
    /// Marks `email` verified for user `id` in one atomic step, only while the user still has
    /// that address and it is not verified yet; with `grant_admin`, role `admin` is added in
    /// the same write (docs/mail.md, "Admins by verified address"). The record as written when
    /// this call verified it, else `None` (verified already, address changed, no such user).
    async fn confirm_email(
        &self,
        id: &str,
        email: &str,
        grant_admin: bool,
        now_ms: i64,
    ) -> Result<Option<UserRecord>, StoreError>;
    /// Replaces the user's address by `email` (already lower-cased), marked verified, in one
    /// atomic step; with `grant_admin`, role `admin` is added in the same write (docs/mail.md,
    /// "Email change"). `Duplicate("email")` when another user holds the address; `None` if no
    /// such user, or if the record is not what `expected` says (a password change or reset
    /// since the change was asked for ends it).
    async fn change_email(
        &self,
        id: &str,
        email: &str,
        grant_admin: bool,
        now_ms: i64,
        expected: &Expected,
    ) -> Result<Option<UserRecord>, StoreError>;
    /// Removes a user record; true if there was one. Registration takes back an account
    /// whose verification mail could not be queued (docs/mail.md, "What is atomic").
    async fn delete(&self, id: &str) -> Result<bool, StoreError>;
    /// Users ordered by id, starting after `after`, at most `limit`.
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<UserRecord>, StoreError>;
    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// An OAuth client (RFC 6749 §2).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Unique.
    pub client_id: String,
    /// Lower-case hex SHA-256 of the secret; `None` for a public client.
    pub secret_sha256: Option<String>,
    /// The grants the client may use (RFC 6749 §4).
    pub grant_types: Vec<String>,
    /// The scopes the client may ask for.
    pub scopes: Vec<String>,
    /// Signing algorithm for this client's tokens (`EdDSA`, `RS256`); default when `None`.
    pub alg: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// What browser sign-in needs to know (docs/authorize.md, "Clients").
    #[serde(default)]
    pub meta: ClientMetadata,
    /// Set for a client registered at `POST /oauth/register` (RFC 7591), the only clients that
    /// RFC 7592 management may read, replace or delete (docs/registration.md).
    #[serde(default)]
    pub registration: Option<RegistrationRecord>,
}

/// What tokend remembers of a dynamic registration (RFC 7591, RFC 7592; docs/registration.md).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationRecord {
    /// Lower-case hex SHA-256 of the registration access token (RFC 7592 §1): a 256-bit random
    /// value, so a digest compared in constant time is the right check, as for client secrets.
    pub access_token_sha256: String,
    /// The scopes beyond the OpenID Connect ones that the registration was allowed (those of
    /// its initial access token); an update may ask for these and no others.
    #[serde(default)]
    pub allowed_scopes: Vec<String>,
    /// Unix milliseconds of the last update (RFC 7592 §2.2), or of the registration.
    pub updated_at: i64,
}

impl std::fmt::Debug for RegistrationRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationRecord")
            .field("access_token_sha256", &"<redacted>")
            .field("allowed_scopes", &self.allowed_scopes)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// A client's metadata for the authorization code flow and OpenID Connect (RFC 7591 §2 names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientMetadata {
    /// Where codes may be sent, compared exactly (RFC 6749 §3.1.2; loopback ports may differ,
    /// RFC 8252 §7.3).
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may send the browser back to, compared exactly.
    pub post_logout_redirect_uris: Vec<String>,
    /// A first-party client signs users in without a consent page.
    pub first_party: bool,
    /// The name shown on the sign-in and consent pages.
    pub client_name: Option<String>,
    /// `client_secret_basic`, `client_secret_post` or `none`; any that fits when unset.
    pub token_endpoint_auth_method: Option<String>,
    /// The signing algorithm of this client's ID tokens.
    pub id_token_signed_response_alg: Option<String>,
    /// The client must push its authorization requests (RFC 9126 §6): a plain request to the
    /// authorization endpoint is refused.
    pub require_pushed_authorization_requests: bool,
    /// The client always uses DPoP at the token endpoint (RFC 9449 §5.2): a token request
    /// without a proof is refused.
    pub dpop_bound_access_tokens: bool,
    /// `private_key_jwt` (RFC 7523 §2.2, RFC 7591 §2): the client's public keys, a JWK Set
    /// (RFC 7517 §5) held here. Exactly one of this and `jwks_uri` for such a client, neither
    /// for any other (docs/private_key_jwt.md).
    pub jwks: Option<serde_json::Value>,
    /// `private_key_jwt`: where the client publishes its JWK Set (https, or http on a loopback
    /// address), fetched and cached by tokend.
    pub jwks_uri: Option<String>,
    /// `private_key_jwt`: the one JWS algorithm the client's assertions may use (RFC 7591 §2);
    /// any of ES256, EdDSA, RS256, PS256 that fits the key when unset.
    pub token_endpoint_auth_signing_alg: Option<String>,
    /// The audiences this client may exchange tokens for (RFC 8693 §2.1, `audience` and
    /// `resource`; exact match). Empty: it may exchange none (docs/token_exchange.md).
    pub token_exchange_audiences: Vec<String>,
    /// The resources this client may name in authorization and token requests (RFC 8707 §2;
    /// exact match). Empty: none.
    pub resources: Vec<String>,
}

/// The `token_endpoint_auth_method` of clients that authenticate with a signed JWT (RFC 7523
/// §2.2, OpenID Connect Core §9).
pub const PRIVATE_KEY_JWT: &str = "private_key_jwt";

impl ClientRecord {
    /// Whether the client authenticates at the token endpoint (RFC 6749 §2.1 "confidential"):
    /// with a secret, or with assertions signed by its keys (`private_key_jwt`).
    pub fn is_confidential(&self) -> bool {
        self.secret_sha256.is_some() || self.uses_private_key_jwt()
    }

    /// Whether the client authenticates with `private_key_jwt` (and has no secret).
    pub fn uses_private_key_jwt(&self) -> bool {
        self.meta.token_endpoint_auth_method.as_deref() == Some(PRIVATE_KEY_JWT)
    }
}

impl std::fmt::Debug for ClientRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRecord")
            .field("client_id", &self.client_id)
            .field("confidential", &self.is_confidential())
            .field("grant_types", &self.grant_types)
            .field("scopes", &self.scopes)
            .field("alg", &self.alg)
            .field("meta", &self.meta)
            .field("registered", &self.registration.is_some())
            .finish()
    }
}

/// OAuth clients, unique by `client_id`.
#[async_trait]
pub trait ClientStore: Send + Sync {
    /// The client with this id.
    async fn get(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError>;
    /// `Duplicate("client_id")` when taken.
    async fn insert(&self, client: &ClientRecord) -> Result<(), StoreError>;
    /// Every client, ordered by id.
    async fn list(&self) -> Result<Vec<ClientRecord>, StoreError>;
    /// True if a client was deleted.
    async fn delete(&self, client_id: &str) -> Result<bool, StoreError>;
    /// Replaces the client with the same `client_id` in one step, if it still exists; never
    /// creates one (so an update racing a delete cannot bring the client back). True if a
    /// client was replaced.
    async fn replace(&self, client: &ClientRecord) -> Result<bool, StoreError>;
    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// What a user's tokens and introspection say about them (`roles` in access tokens, `username` in
/// introspection), kept in the session store so that a refresh or an introspection needs no
/// user-store read. `version` is the `updated_at` of the user record the copy was taken from:
/// where two copies meet (the family's, taken at login, and the user's mark, written at every
/// change), the newer wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserClaims {
    /// The user's username.
    pub username: String,
    /// The user's roles.
    pub roles: Vec<String>,
    /// `updated_at` (Unix ms) of the user record this copy was taken from.
    pub version: i64,
}

impl UserClaims {
    pub(crate) fn of(user: &UserRecord) -> UserClaims {
        UserClaims {
            username: user.username.clone(),
            roles: user.roles.clone(),
            version: user.updated_at,
        }
    }

    /// `user` with the username and roles of `claims` when they are newer than the record
    /// (a change written after the record was read).
    pub(crate) fn applied(claims: Option<UserClaims>, mut user: UserRecord) -> UserRecord {
        if let Some(c) = claims.filter(|c| c.version > user.updated_at) {
            user.username = c.username;
            user.roles = c.roles;
            user.updated_at = c.version;
        }
        user
    }

    /// The newer of two copies; on a tie, `mark` (written at a change, never older than a
    /// family started from the same record).
    pub(crate) fn newest(
        mark: Option<UserClaims>,
        family: Option<UserClaims>,
    ) -> Option<UserClaims> {
        match (mark, family) {
            (Some(m), Some(f)) if f.version > m.version => Some(f),
            (Some(m), _) => Some(m),
            (None, f) => f,
        }
    }
}

/// The `sid` of a new family: an 8-character id of 48 random bits (unique among the user's
/// families) and the user's id, `<id>.<user id>`, so that every lookup by `sid` finds the
/// user's record (docs/sessions.md, "The records").
pub fn family_sid(id: &str, user_id: &str) -> String {
    format!("{id}.{user_id}")
}

/// The family id and the user a [`family_sid`] names; `None` for a sid from before sids named
/// their user (22 characters, no `.`).
pub fn split_sid(sid: &str) -> Option<(&str, &str)> {
    sid.split_once('.')
        .filter(|(id, user)| !id.is_empty() && !user.is_empty())
}

/// The `jti` of the access token issued with the refresh token `refresh_jti`: 128 bits of
/// SHA-256 over it, base64url. Deriving it lets a family keep one `jti` for its current pair,
/// and a retry within the leeway get the same pair again (docs/sessions.md).
pub fn access_jti_of(refresh_jti: &str) -> String {
    use base64::Engine;
    let mut input = Vec::with_capacity(16 + refresh_jti.len());
    input.extend_from_slice(b"tokend access:");
    input.extend_from_slice(refresh_jti.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16])
}

/// What a family keeps of its login's address: an IPv4 address whole (4 bytes), an IPv6
/// address's /64 network (its first 8 bytes); nothing for no address or one that does not parse.
pub fn ip_bytes(ip: Option<&str>) -> Vec<u8> {
    use std::net::IpAddr;
    match ip.and_then(|ip| ip.parse::<IpAddr>().ok()) {
        Some(IpAddr::V4(v4)) => v4.octets().to_vec(),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets()[..8].to_vec(),
        },
        None => Vec::new(),
    }
}

/// The address [`ip_bytes`] kept, as the sessions list shows it: `203.0.113.9`, or
/// `2001:db8:1:2::/64`.
pub fn ip_text(kept: &[u8]) -> Option<String> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    match kept.len() {
        4 => Some(Ipv4Addr::new(kept[0], kept[1], kept[2], kept[3]).to_string()),
        8 => {
            let mut octets = [0u8; 16];
            octets[..8].copy_from_slice(kept);
            Some(format!("{}/64", Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

/// A new refresh family (docs/sessions.md), started by a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFamily {
    /// The family's id (`sid` in its tokens): [`family_sid`], which names the user.
    pub sid: String,
    /// The user signed in.
    pub user_id: String,
    /// The client the family belongs to (shown in the sessions list; withdrawing a consent
    /// ends the client's families).
    pub client_id: String,
    /// `jti` of the first refresh token; the access token's is derived from it
    /// ([`access_jti_of`]).
    pub refresh_jti: String,
    /// Unix seconds the first pair was issued at.
    pub issued_at: i64,
    /// Unix milliseconds at which the family ends whatever happens (login + session TTL).
    pub expires_at_ms: i64,
    /// Unix milliseconds of the login: the order in which the session cap ends families.
    pub started_at_ms: i64,
    /// How long the record lives from now (the refresh token's lifetime, capped by the family's).
    pub ttl_ms: i64,
    /// How long an ended family is remembered as revoked (the longest remaining lifetime of
    /// any access token of it).
    pub revoked_ttl_ms: i64,
    /// The `credentials_version` of the user record the login read.
    pub credentials_version: i64,
    /// At most this many live families per user: starting one more ends the oldest
    /// (`TOKEND_MAX_SESSIONS_PER_USER`).
    pub max_sessions: u32,
    /// The `User-Agent` of the request that started it; a family keeps only what
    /// [`agent::Agent`] makes of it (docs/sessions.md, "What a family remembers of its login").
    pub user_agent: Option<String>,
    /// The client address of that request.
    pub ip: Option<String>,
    /// For a family that rests on an earlier sign-in (an authorization code, a device
    /// approval): the user's session marks at that sign-in. The family starts only if no "end
    /// all sessions" or credential change came since — checked in the same atomic step that
    /// adds it (docs/sessions.md, "Families started from an earlier sign-in"); `None` starts it
    /// under whatever the marks are.
    pub expect: Option<UserMarks>,
}

/// What [`SessionStore::start_family`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FamilyStarted {
    /// The family was written.
    Started {
        /// How many of the user's older families were ended to keep the cap.
        evicted: u64,
        /// For a start with [`NewFamily::expect`]: the user's claims mark (the username and
        /// roles of the user's last change, [`SessionStore::set_user_claims`]), when there is
        /// one, read in the same step. `None` otherwise.
        claims: Option<UserClaims>,
    },
    /// The user's sessions ended after the sign-in named by [`NewFamily::expect`]: nothing
    /// was written.
    Ended,
}

impl FamilyStarted {
    /// How many older families the start ended (0 when it wrote nothing).
    pub fn evicted(&self) -> u64 {
        match self {
            FamilyStarted::Started { evicted, .. } => *evicted,
            FamilyStarted::Ended => 0,
        }
    }
}

/// One refresh exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateRequest {
    /// The family.
    pub sid: String,
    /// `jti` of the refresh token presented.
    pub presented_jti: String,
    /// `jti` of the refresh token to issue (the access token's is derived from it,
    /// [`access_jti_of`]).
    pub new_refresh_jti: String,
    /// Unix seconds the new pair is issued at.
    pub issued_at: i64,
    /// Unix milliseconds now.
    pub now_ms: i64,
    /// How long an exchanged token may be presented again as a retry (docs/sessions.md).
    pub leeway_ms: i64,
    /// How long the record lives from now (refresh TTL capped by the family's end).
    pub ttl_ms: i64,
    /// How long a revoked family is remembered when reuse is detected (the longest remaining
    /// lifetime of any token of it).
    pub revoked_ttl_ms: i64,
    /// The key of the request's DPoP proof, if it carried one. A family's binding travels in
    /// its refresh tokens (`cnf`, checked before the exchange); only a family written in the
    /// layout from before a sid named its user keeps it in its record, and is exchanged only
    /// with a proof of that key (docs/dpop.md).
    pub jkt: Option<String>,
}

/// What a refresh exchange did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The presented token was current; the new pair is now current.
    Rotated,
    /// The presented token was exchanged within the leeway: the successor it got, to be re-issued
    /// byte for byte.
    Replayed {
        /// `jti` of the refresh token issued then (the access token's is derived from it).
        refresh_jti: String,
        /// Unix seconds it was issued at.
        issued_at: i64,
    },
    /// The presented token was exchanged before, outside the leeway: the family is now revoked.
    Reused,
    /// The family had been revoked already.
    Revoked,
    /// No such family (expired or never existed).
    Unknown,
    /// The family is bound to a DPoP key and the request proved another key, or none: nothing
    /// changed (docs/dpop.md).
    WrongKey,
}

/// The revocation state an access token is checked against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessStatus {
    /// The token's own `jti` is revoked.
    pub jti_revoked: bool,
    /// The user's session marks (zero when the user has none).
    pub user: UserMarks,
    /// The family's marks, when a family was named; `None` when it is unknown or has expired.
    pub family: Option<FamilyMarks>,
    /// Only from [`SessionStore::access_status_with_user`]: the newest copy of the user's
    /// claims, the user's mark or the family's copy when a family was named. `None` also for a
    /// family written before families carried the user (the caller then reads the user store).
    pub claims: Option<UserClaims>,
}

impl AccessStatus {
    /// Whether a token of the named family (`sid`) is dead: its `jti` or its family revoked,
    /// or its family started before the user's last "log out everywhere" (generation) or read
    /// the user before their last credential change (version). See `docs/sessions.md`.
    pub fn revoked(&self, sid: Option<&str>) -> bool {
        if self.jti_revoked {
            return true;
        }
        if sid.is_none() {
            return false;
        }
        let family = self.family.unwrap_or_default();
        family.revoked || self.user.end(family.generation, family.credentials_version)
    }
}

/// What ends all of a user's sessions at once (one write, however many families there are).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserMarks {
    /// Raised by every "end all sessions" (logout-all, password change, role removal); a
    /// family started under a lower generation is over.
    pub generation: i64,
    /// The `credentials_version` of the user record written by the last credential change
    /// (password, roles taken away); a family whose login read an older record is over, even
    /// if it was started after the change (a login in flight while the change happened).
    pub credentials_version: i64,
}

impl UserMarks {
    /// Whether these marks end what started under `generation` and read the record of
    /// `credentials_version`: a family, or a sign-in a family is yet to start from
    /// (docs/sessions.md).
    pub(crate) fn end(&self, generation: i64, credentials_version: i64) -> bool {
        generation < self.generation || credentials_version < self.credentials_version
    }
}

/// The marks of one family that the access check reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FamilyMarks {
    pub(crate) revoked: bool,
    /// The user's session generation when the family started (0 for families from before).
    pub(crate) generation: i64,
    /// The `credentials_version` of the user record the login read (0 for families from
    /// before).
    pub(crate) credentials_version: i64,
}

/// A family as introspection, revocation and the sessions list see it. What the tokens of a
/// family carry (scope, `auth_time`, the user's claims, the DPoP key) is not kept in it
/// (docs/sessions.md, "The records"); a family written in the layout from before a sid named
/// its user still has them, and gives `auth_time` and `user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyState {
    /// The user signed in.
    pub user_id: String,
    /// The client the family belongs to (empty when the store no longer knows its name).
    pub client_id: String,
    /// `jti` of the family's current refresh token.
    pub current_refresh_jti: String,
    /// Unix seconds the current pair was issued at.
    pub issued_at: i64,
    /// Unix milliseconds at which the family ends.
    pub expires_at_ms: i64,
    /// Whether the family was revoked.
    pub revoked: bool,
    /// Only a family from before: Unix seconds of the password authentication (0 otherwise).
    pub auth_time: i64,
    /// Only a family from before: the user as the login read them.
    pub user: Option<UserClaims>,
    /// What the family kept of the login's `User-Agent`, as the sessions list shows it
    /// ([`agent::Agent::describe`]); `None` when the agent named nothing known.
    pub user_agent: Option<String>,
    /// The client address of the login (for IPv6, the /64 network it came from).
    pub ip: Option<String>,
    /// Unix ms of the last refresh exchange (`None` before the first).
    pub last_refreshed_at_ms: Option<i64>,
    /// The user's session generation at the login (0 for families from before the marks):
    /// with the user's marks, whether the family still lives.
    pub generation: i64,
    /// The credentials version the login read (0 for families from before the marks).
    pub credentials_version: i64,
}

impl FamilyState {
    /// Whether the family is over by its own marks or the user's (docs/sessions.md).
    pub(crate) fn ended(&self, user: &UserMarks, now_ms: i64) -> bool {
        self.revoked
            || self.expires_at_ms <= now_ms
            || user.end(self.generation, self.credentials_version)
    }
}

/// Refresh families and revocations, each record with a TTL (docs/sessions.md).
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Starts a family: adds it to the user's families (ending the oldest beyond
    /// `max_sessions`), then writes it under the user's current session generation — unless
    /// `family.expect` is set and the user's marks have passed it, which writes nothing and
    /// answers [`FamilyStarted::Ended`].
    async fn start_family(&self, family: &NewFamily) -> Result<FamilyStarted, StoreError>;
    /// The atomic exchange of docs/sessions.md: exactly one successor per refresh token.
    async fn rotate(&self, req: &RotateRequest) -> Result<RotateOutcome, StoreError>;
    /// The family, while its record lives.
    async fn family(&self, sid: &str) -> Result<Option<FamilyState>, StoreError>;
    /// A refresh exchange together with the family it happens in: `None` when the family is
    /// unknown or its session is over (`now_ms` at or past `expires_at_ms`, in whole seconds);
    /// otherwise the family as it was before, and the outcome of [`SessionStore::rotate`] with
    /// the record's lifetime capped at the family's end. Stores that can do this in one round
    /// trip override it; this default reads the family, then rotates.
    async fn exchange(
        &self,
        req: &RotateRequest,
    ) -> Result<Option<(FamilyState, RotateOutcome)>, StoreError> {
        let Some(family) = self.family(&req.sid).await? else {
            return Ok(None);
        };
        if req.now_ms.div_euclid(1000) >= family.expires_at_ms.div_euclid(1000) {
            return Ok(None);
        }
        let capped = RotateRequest {
            ttl_ms: req.ttl_ms.min(family.expires_at_ms - req.now_ms),
            ..req.clone()
        };
        let outcome = self.rotate(&capped).await?;
        Ok(Some((family, outcome)))
    }
    /// The ids of a user's live families, oldest login first (at most the session cap).
    async fn user_families(&self, user_id: &str) -> Result<Vec<String>, StoreError>;
    /// [`SessionStore::user_families`] with the time of each family's login (Unix ms; 0 for a
    /// family listed by a version that did not record it).
    async fn user_family_logins(&self, user_id: &str) -> Result<Vec<(String, i64)>, StoreError>;
    /// Marks a family revoked, remembered for `ttl_ms`. Unknown families are remembered too.
    async fn revoke_family(&self, sid: &str, ttl_ms: i64) -> Result<(), StoreError>;
    /// Ends every session of a user in one step, however many there are: raises the user's
    /// session generation, records `credentials_version` (never lowering it) when given, and
    /// forgets the user's family list. The marks live at least `ttl_ms` (the longest a family
    /// can). Returns how many families the user had.
    async fn revoke_user_sessions(
        &self,
        user_id: &str,
        credentials_version: Option<i64>,
        ttl_ms: i64,
    ) -> Result<u64, StoreError>;
    /// Remembers a revoked access-token `jti` for `ttl_ms`.
    async fn revoke_jti(&self, jti: &str, ttl_ms: i64) -> Result<(), StoreError>;
    /// Records a change of the user's claims (roles, username) for the families already
    /// started, remembered for `ttl_ms` (the longest a family lives); an older `version` never
    /// replaces a newer one.
    async fn set_user_claims(
        &self,
        user_id: &str,
        claims: &UserClaims,
        ttl_ms: i64,
    ) -> Result<(), StoreError>;
    /// Everything an access-token check needs, in one round trip where the backend allows;
    /// `claims` is left `None`.
    async fn access_status(
        &self,
        jti: &str,
        sid: Option<&str>,
        user_id: &str,
    ) -> Result<AccessStatus, StoreError>;
    /// [`SessionStore::access_status`] with the newest copy of the user's claims in `claims`, in
    /// the same round trip (refresh and introspection need them; a plain token check does not).
    async fn access_status_with_user(
        &self,
        jti: &str,
        sid: Option<&str>,
        user_id: &str,
    ) -> Result<AccessStatus, StoreError>;
    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Cross-instance coordination: the rotation lease.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes the lease `name` for `holder` for `ttl_ms` if nobody holds it (`SET NX PX`).
    async fn try_acquire(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool, StoreError>;
    /// Gives the lease back if `holder` still holds it.
    async fn release(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}

/// Rate limits and failed-login back-off (docs/hardening.md), shared by every instance in production
/// mode. Keys are opaque (the caller hashes anything personal).
#[async_trait]
pub trait LimitStore: Send + Sync {
    /// One GCRA step for `key`: a request is allowed when it conforms to one every
    /// `emission_ms` with bursts of `burst`. `Ok(None)` allowed; `Ok(Some(ms))` refused, retry
    /// after `ms`.
    async fn rate_check(
        &self,
        key: &str,
        now_ms: i64,
        emission_ms: i64,
        burst: u32,
    ) -> Result<Option<i64>, StoreError>;
    /// Gives back one request allowed by [`LimitStore::rate_check`] on `key` (one that turned
    /// out not to count, such as a right user code): the key's budget grows by one emission
    /// interval, never beyond full.
    async fn rate_refund(&self, key: &str, now_ms: i64, emission_ms: i64)
        -> Result<(), StoreError>;
    /// Until when (Unix ms) the account backs off, if it does.
    async fn backoff_until(&self, account: &str) -> Result<Option<i64>, StoreError>;
    /// Reserves one password check for `account` in one atomic step: refused (`Ok(Some(until))`,
    /// Unix ms) while the account backs off; otherwise the attempt is counted as a failure
    /// before it is made ([`LimitStore::record_failure`]), so N concurrent guesses get no more
    /// checks than N sequential ones. A right password then clears the failures.
    async fn reserve_attempt(
        &self,
        account: &str,
        now_ms: i64,
        policy: BackoffPolicy,
    ) -> Result<Option<i64>, StoreError>;
    /// Records a failed login: after `free` failures each one doubles the back-off, starting
    /// at `base_ms`, capped at `cap_ms`. The count is forgotten `window_ms` after the back-off
    /// ends. Returns the back-off end (Unix ms; 0 when none).
    async fn record_failure(
        &self,
        account: &str,
        now_ms: i64,
        policy: BackoffPolicy,
    ) -> Result<i64, StoreError>;
    /// A successful login clears the account's failures.
    async fn clear_failures(&self, account: &str) -> Result<(), StoreError>;
}

/// How failed logins slow an account down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Failures allowed before any back-off.
    pub(crate) free: u32,
    pub(crate) base_ms: i64,
    pub(crate) cap_ms: i64,
    pub(crate) window_ms: i64,
}

impl BackoffPolicy {
    /// The back-off after `failures` consecutive failures.
    pub(crate) fn delay_ms(&self, failures: u32) -> i64 {
        if failures <= self.free {
            return 0;
        }
        let exp = (failures - self.free - 1).min(40);
        self.base_ms.saturating_mul(1i64 << exp).min(self.cap_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sid_names_its_user_and_one_from_before_names_none() {
        let sid = family_sid("AbCdEfGh", "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
        assert_eq!(
            split_sid(&sid),
            Some(("AbCdEfGh", "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"))
        );
        assert_eq!(split_sid("q3bN0xw1l8mJ4Cj2YbKp9A"), None);
        assert_eq!(split_sid(".user"), None);
        assert_eq!(split_sid("id."), None);
    }

    #[test]
    fn the_access_jti_is_derived_from_the_refresh_jti() {
        let a = access_jti_of("q3bN0xw1l8mJ4Cj2YbKp9A");
        assert_eq!(a, access_jti_of("q3bN0xw1l8mJ4Cj2YbKp9A"));
        assert_ne!(a, access_jti_of("q3bN0xw1l8mJ4Cj2YbKp9B"));
        assert_ne!(a, "q3bN0xw1l8mJ4Cj2YbKp9A");
        assert_eq!(a.len(), 22);
    }

    #[test]
    fn an_address_is_kept_whole_for_ipv4_and_as_its_64_network_for_ipv6() {
        assert_eq!(ip_bytes(Some("203.0.113.9")), [203, 0, 113, 9]);
        assert_eq!(
            ip_text(&ip_bytes(Some("203.0.113.9"))).as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(
            ip_text(&ip_bytes(Some("::ffff:203.0.113.9"))).as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(
            ip_text(&ip_bytes(Some("2001:db8:85a3:8d3:1319:8a2e:370:7348"))).as_deref(),
            Some("2001:db8:85a3:8d3::/64")
        );
        assert!(ip_bytes(None).is_empty());
        assert!(ip_bytes(Some("not an address")).is_empty());
        assert_eq!(ip_text(&[]), None);
    }
}
