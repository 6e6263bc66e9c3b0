//! The `Devices` service: the device authorization grant (RFC 8628, docs/device.md), the
//! sign-in of CLIs and TVs. A device asks for a device code and a user code
//! ([`Devices::start`]); the user enters the user code on the `/device` page, signs in if
//! needed, and approves or denies ([`Devices::page`], [`Devices::decide`]); the device polls
//! the token endpoint until it gets its tokens, once ([`Devices::redeem`]). No HTTP here:
//! handlers turn a [`DevicePage`] into a page or a redirect.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::authorize::{hashed, scope_description, Authorize, IdTokenFacts, OIDC_SCOPES};
use super::clients::GRANT_DEVICE_CODE;
use super::dpop::Proven;
use super::events::Origin;
use super::ids;
use super::limits::Limits;
use super::oauth::{scope_tokens, Client, OAuthError, TokenResponse};
use super::resources::Targets;
use super::sessions::{FamilyStart, Sessions};
use super::Error;
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::store::{
    ClientRecord, ClientStore, ConsentStore, DecideOutcome, DeviceDecision, DevicePoll,
    DeviceStatus, DeviceStore, DeviceView, NewDevice, UserMarks, UserStore,
};

/// How long a device code and its user code live: `expires_in` (RFC 8628 §3.2; docs/device.md).
pub(crate) const DEVICE_CODE_TTL_SECS: i64 = 600;
/// The polling interval a device starts with: `interval` (RFC 8628 §3.2).
pub(crate) const INTERVAL_SECS: i64 = 5;
/// How long an authorization (and its user code) is remembered after it expired, so that a
/// late poll is answered `expired_token` (RFC 8628 §3.5) rather than `invalid_grant`, and the
/// page says "expired" rather than "not right".
const EXPIRED_KEPT_MS: i64 = 600_000;
/// The user-code alphabet of RFC 8628 §6.1: consonants only (no vowels, so no words; no
/// easily confused letters), upper case.
const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
/// User-code length: 20^8 ≈ 2^34.6 codes (RFC 8628 §6.1).
const USER_CODE_LEN: usize = 8;
/// Longest text the code field may hold before it is refused unread.
const MAX_USER_CODE_INPUT: usize = 64;
/// How many user codes are drawn before giving up (a clash needs a live code among 20^8).
const USER_CODE_DRAWS: usize = 8;
/// The `grant` label of the issued-tokens metric for this grant.
const GRANT_LABEL: &str = "device_code";

/// A user code, normalised: 8 letters of [`USER_CODE_ALPHABET`]. Shown as `XXXX-XXXX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserCode(String);

impl UserCode {
    /// Reads what a person typed, forgiving case, spaces and dashes (RFC 8628 §6.1); `None`
    /// when it cannot be a user code.
    pub(crate) fn parse(input: &str) -> Option<UserCode> {
        if input.len() > MAX_USER_CODE_INPUT {
            return None;
        }
        let code: String = input
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let ok =
            code.len() == USER_CODE_LEN && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b));
        ok.then_some(UserCode(code))
    }

    /// A new random user code, every letter equally likely.
    fn generate() -> Result<UserCode, Error> {
        let mut code = String::with_capacity(USER_CODE_LEN);
        while code.len() < USER_CODE_LEN {
            for b in ids::random_bytes::<16>()? {
                // 240 = 12 × 20: taking bytes below it keeps the letters uniform.
                if b < 240 && code.len() < USER_CODE_LEN {
                    if let Some(letter) = USER_CODE_ALPHABET.get(usize::from(b % 20)) {
                        code.push(char::from(*letter));
                    }
                }
            }
        }
        Ok(UserCode(code))
    }

    /// `XXXX-XXXX`, as shown to people and put in links.
    pub(crate) fn display(&self) -> String {
        let (head, tail) = self.0.split_at(USER_CODE_LEN / 2);
        format!("{head}-{tail}")
    }

    /// What the store keys it by.
    fn key(&self) -> String {
        hashed(&self.0)
    }
}

/// Whether a presented device code has the shape of the ones issued (256 random bits,
/// base64url without padding): anything else is refused without asking the store.
fn is_device_code(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The device authorization response (RFC 8628 §3.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct DeviceAuthorization {
    pub(crate) device_code: String,
    pub(crate) user_code: String,
    pub(crate) verification_uri: String,
    pub(crate) verification_uri_complete: String,
    pub(crate) expires_in: i64,
    pub(crate) interval: i64,
}

/// An approval, kept with the authorization until the device redeems it: who approved, how
/// they had signed in, and the session marks their browser session had (docs/sessions.md), so
/// that a logout everywhere or a credential change in between withdraws it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Approval {
    user_id: String,
    scope: String,
    auth_time: i64,
    amr: Vec<String>,
    gen: i64,
    cv: i64,
}

/// Why the code on the `/device` page cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeProblem {
    /// The field was empty.
    Missing,
    /// Not 8 letters of the alphabet.
    Malformed,
    /// No such code (never issued, or long gone).
    Unknown,
    Expired,
    /// Approved or denied already.
    Used,
    /// Too many wrong codes: from this address, or over the whole service. Seconds to wait.
    TooManyAttempts(u64),
}

/// What the page asks the user to approve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceConfirm {
    /// `XXXX-XXXX`, to compare with the device (RFC 8628 §5.4).
    pub(crate) user_code: String,
    pub(crate) client_name: String,
    pub(crate) client_id: String,
    /// Who is signed in.
    pub(crate) user_name: String,
    /// Each scope and what it means.
    pub(crate) scopes: Vec<(String, String)>,
}

/// What the `/device` page shows next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DevicePage {
    /// The code entry form, with what the user typed and what is wrong with it.
    Enter {
        code: String,
        problem: Option<CodeProblem>,
    },
    /// Sign in first, then come back to this code.
    SignIn { user_code: UserCode },
    /// Approve or deny.
    Confirm(DeviceConfirm),
    /// Approved: the device gets its tokens at its next poll.
    Approved { client_name: String },
    /// Denied: the device is told so at its next poll.
    Denied { client_name: String },
}

/// A code the page looked up.
enum Found {
    /// What is wrong, and what to show back in the field.
    Problem(CodeProblem, String),
    Pending(Box<PendingCode>),
}

/// A user code naming a pending authorization, with its client.
struct PendingCode {
    user_code: UserCode,
    view: DeviceView,
    client: ClientRecord,
}

/// The `Devices` service.
pub(crate) struct Devices {
    clients: Arc<dyn ClientStore>,
    users: Arc<dyn UserStore>,
    store: Arc<dyn DeviceStore>,
    consents: Arc<dyn ConsentStore>,
    authorize: Arc<Authorize>,
    sessions: Arc<Sessions>,
    limits: Arc<Limits>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    issuer: String,
}

fn name_of(client: &ClientRecord) -> String {
    client
        .meta
        .client_name
        .clone()
        .unwrap_or_else(|| client.client_id.clone())
}

impl Devices {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        clients: Arc<dyn ClientStore>,
        users: Arc<dyn UserStore>,
        store: Arc<dyn DeviceStore>,
        consents: Arc<dyn ConsentStore>,
        authorize: Arc<Authorize>,
        sessions: Arc<Sessions>,
        limits: Arc<Limits>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        issuer: String,
    ) -> Devices {
        Devices {
            clients,
            users,
            store,
            consents,
            authorize,
            sessions,
            limits,
            clock,
            metrics,
            issuer,
        }
    }

    fn count(&self, event: &str) {
        self.metrics
            .device_authorizations
            .with_label_values(&[event])
            .inc();
    }

    fn answered(&self, answer: &str) {
        self.metrics.device_polls.with_label_values(&[answer]).inc();
    }

    /// The scope a device asks for: each scope allowed to the client or one of OpenID
    /// Connect's; everything the client may have when nothing was asked for.
    fn scope_for(client: &ClientRecord, requested: Option<&str>) -> Result<String, OAuthError> {
        let Some(requested) = requested else {
            return Ok(client.scopes.join(" "));
        };
        let mut out: Vec<&str> = Vec::new();
        for s in scope_tokens(requested) {
            if !OIDC_SCOPES.contains(&s) && !client.scopes.iter().any(|c| c == s) {
                return Err(OAuthError::InvalidScope(format!(
                    "scope {s:?} is not allowed for this client"
                )));
            }
            if !out.contains(&s) {
                out.push(s);
            }
        }
        Ok(out.join(" "))
    }

    /// `POST /oauth/device_authorization` (RFC 8628 §3.1, §3.2) for an authenticated client: a
    /// device code (256 random bits, kept hashed) and a user code unique among the live ones.
    pub(crate) async fn start(
        &self,
        client: &Client,
        scope: Option<&str>,
    ) -> Result<DeviceAuthorization, OAuthError> {
        let client = client.record();
        if !client.grant_types.iter().any(|g| g == GRANT_DEVICE_CODE) {
            return Err(OAuthError::UnauthorizedClient(
                "this client may not use the device authorization grant".into(),
            ));
        }
        let scope = Self::scope_for(client, scope)?;
        let device_code = ids::random_secret()?;
        let device = NewDevice {
            client_id: client.client_id.clone(),
            scope,
            expires_at_ms: self.clock.now_ms() + DEVICE_CODE_TTL_SECS * 1000,
            interval_secs: INTERVAL_SECS,
            keep_ms: DEVICE_CODE_TTL_SECS * 1000 + EXPIRED_KEPT_MS,
        };
        let mut user_code = None;
        for _ in 0..USER_CODE_DRAWS {
            let candidate = UserCode::generate()?;
            if self
                .store
                .start(&hashed(&device_code), &candidate.key(), &device)
                .await?
            {
                user_code = Some(candidate);
                break;
            }
        }
        let user_code = user_code
            .ok_or_else(|| Error::Internal("no free user code after several draws".into()))?
            .display();
        self.count("started");
        tracing::info!(client_id = %client.client_id, "device authorization started");
        let verification_uri = format!("{}/device", self.issuer);
        Ok(DeviceAuthorization {
            verification_uri_complete: format!("{verification_uri}?user_code={user_code}"),
            verification_uri,
            device_code,
            user_code,
            expires_in: DEVICE_CODE_TTL_SECS,
            interval: INTERVAL_SECS,
        })
    }

    /// Looks a typed code up, on the wrong-code budgets (RFC 8628 §5.1): reserved before the
    /// lookup, handed back when the code names a pending authorization.
    async fn find(&self, input: &str, source: Option<IpAddr>) -> Result<Found, Error> {
        let typed = input.trim();
        if typed.is_empty() {
            return Ok(Found::Problem(CodeProblem::Missing, String::new()));
        }
        // What is shown back in the field: never more than a code's worth of text.
        let shown: String = typed.chars().take(MAX_USER_CODE_INPUT).collect();
        let Some(user_code) = UserCode::parse(typed) else {
            return Ok(Found::Problem(CodeProblem::Malformed, shown));
        };
        let attempt = match self.limits.reserve_user_code(source).await {
            Ok(a) => a,
            Err(Error::RateLimited(secs)) => {
                return Ok(Found::Problem(CodeProblem::TooManyAttempts(secs), shown))
            }
            Err(e) => return Err(e),
        };
        let view = self.store.by_user_code(&user_code.key()).await?;
        let now = self.clock.now_ms();
        let found = match view {
            None => Err(CodeProblem::Unknown),
            Some(v) if now >= v.expires_at_ms => Err(CodeProblem::Expired),
            Some(v) if v.status != DeviceStatus::Pending => Err(CodeProblem::Used),
            // A client deleted since: its authorizations are as good as unknown.
            Some(v) => match self.clients.get(&v.client_id).await? {
                Some(c) => Ok((v, c)),
                None => Err(CodeProblem::Unknown),
            },
        };
        let (view, client) = match found {
            Ok(found) => found,
            Err(problem) => {
                let label = match problem {
                    CodeProblem::Expired => "expired",
                    CodeProblem::Used => "used",
                    _ => "unknown",
                };
                self.metrics.user_codes.with_label_values(&[label]).inc();
                return Ok(Found::Problem(problem, user_code.display()));
            }
        };
        self.limits.refund_user_code(attempt).await?;
        self.metrics.user_codes.with_label_values(&["valid"]).inc();
        Ok(Found::Pending(Box::new(PendingCode {
            user_code,
            view,
            client,
        })))
    }

    /// `GET /device`: the entry form without a code; with one (typed, or from
    /// `verification_uri_complete`), the approval page, once the browser is signed in.
    pub(crate) async fn page(
        &self,
        code: Option<&str>,
        source: Option<IpAddr>,
        cookie: Option<&str>,
    ) -> Result<DevicePage, Error> {
        let Some(code) = code else {
            return Ok(DevicePage::Enter {
                code: String::new(),
                problem: None,
            });
        };
        let (user_code, view, client) = match self.find(code, source).await? {
            Found::Problem(problem, code) => {
                return Ok(DevicePage::Enter {
                    code,
                    problem: Some(problem),
                })
            }
            Found::Pending(p) => (p.user_code, p.view, p.client),
        };
        let Some(s) = self.authorize.signed_in(cookie).await? else {
            return Ok(DevicePage::SignIn { user_code });
        };
        Ok(DevicePage::Confirm(DeviceConfirm {
            user_code: user_code.display(),
            client_name: name_of(&client),
            client_id: client.client_id,
            user_name: s.user().username.clone(),
            scopes: scope_tokens(&view.scope)
                .into_iter()
                .map(|sc| (sc.to_string(), scope_description(sc)))
                .collect(),
        }))
    }

    /// `POST /device`: the signed-in user approves or denies the authorization the code names.
    /// Of concurrent decisions exactly one is recorded.
    pub(crate) async fn decide(
        &self,
        code: &str,
        source: Option<IpAddr>,
        cookie: Option<&str>,
        approve: bool,
    ) -> Result<DevicePage, Error> {
        let (user_code, view, client) = match self.find(code, source).await? {
            Found::Problem(problem, code) => {
                return Ok(DevicePage::Enter {
                    code,
                    problem: Some(problem),
                })
            }
            Found::Pending(p) => (p.user_code, p.view, p.client),
        };
        let Some(s) = self.authorize.signed_in(cookie).await? else {
            return Ok(DevicePage::SignIn { user_code });
        };
        let user = s.user();
        let decision = if approve {
            let (gen, cv) = s.marks();
            let approval = Approval {
                user_id: user.id.clone(),
                scope: view.scope.clone(),
                auth_time: s.auth_time(),
                amr: s.amr().to_vec(),
                gen,
                cv,
            };
            DeviceDecision::Approve(
                serde_json::to_string(&approval)
                    .map_err(|e| Error::Internal(format!("serialising an approval: {e}")))?,
            )
        } else {
            DeviceDecision::Deny
        };
        let now = self.clock.now_ms();
        let problem = match self.store.decide(&view.device_hash, &decision, now).await? {
            DecideOutcome::Decided => None,
            DecideOutcome::Unknown => Some(CodeProblem::Unknown),
            DecideOutcome::Expired => Some(CodeProblem::Expired),
            DecideOutcome::AlreadyDecided(_) => Some(CodeProblem::Used),
        };
        if let Some(problem) = problem {
            return Ok(DevicePage::Enter {
                code: user_code.display(),
                problem: Some(problem),
            });
        }
        let client_name = name_of(&client);
        if !approve {
            self.count("denied");
            tracing::info!(user_id = %user.id, client_id = %client.client_id, "device authorization denied");
            return Ok(DevicePage::Denied { client_name });
        }
        // The approval is a consent like the consent page's: listed with the user's consents,
        // and withdrawing it ends the device's sessions (docs/authorize.md, "Consent").
        if !client.meta.first_party {
            let scopes: Vec<String> = scope_tokens(&view.scope)
                .into_iter()
                .map(String::from)
                .collect();
            self.consents
                .grant(&user.id, &client.client_id, &scopes, now)
                .await?;
        }
        self.count("approved");
        tracing::info!(user_id = %user.id, client_id = %client.client_id, "device authorization approved");
        Ok(DevicePage::Approved { client_name })
    }

    /// `grant_type=urn:ietf:params:oauth:grant-type:device_code` (RFC 8628 §3.4, §3.5): one
    /// poll, one store step. The tokens go out once, to the first poll after the approval.
    pub(crate) async fn redeem(
        &self,
        client: &Client,
        device_code: Option<&str>,
        origin: &Origin,
        proof: Option<Proven>,
        resource: &[String],
    ) -> Result<TokenResponse, OAuthError> {
        let client = client.record();
        let code = device_code
            .ok_or_else(|| OAuthError::InvalidRequest("missing parameter device_code".into()))?;
        // RFC 8707 §2: the device authorization names no resource, so the token request names
        // them, each one of the client's; checked before the poll, which spends an approval.
        let targets = Targets::requested(resource, &client.meta.resources)
            .map_err(OAuthError::InvalidTarget)?;
        if !is_device_code(code) {
            self.answered("invalid_grant");
            return Err(OAuthError::InvalidGrant("invalid device code".into()));
        }
        let now = self.clock.now_ms();
        let poll = self
            .store
            .poll(&hashed(code), &client.client_id, now)
            .await
            .map_err(Error::from)?;
        let grant = match poll {
            DevicePoll::Approved(grant) => grant,
            DevicePoll::Pending { interval_secs } => {
                self.answered("authorization_pending");
                return Err(OAuthError::AuthorizationPending(format!(
                    "the user has not answered yet; poll again in {interval_secs} s"
                )));
            }
            DevicePoll::SlowDown { interval_secs } => {
                self.answered("slow_down");
                return Err(OAuthError::SlowDown {
                    description: format!("polling too fast; the interval is now {interval_secs} s"),
                    interval: interval_secs,
                });
            }
            DevicePoll::Denied => {
                self.answered("access_denied");
                return Err(OAuthError::AccessDenied(
                    "the user denied the request".into(),
                ));
            }
            DevicePoll::Expired => {
                self.answered("expired_token");
                return Err(OAuthError::ExpiredToken(
                    "the device code has expired; start again".into(),
                ));
            }
            DevicePoll::Unknown => {
                self.answered("invalid_grant");
                return Err(OAuthError::InvalidGrant(
                    "invalid or expired device code".into(),
                ));
            }
            DevicePoll::OtherClient => {
                self.answered("invalid_grant");
                return Err(OAuthError::InvalidGrant(
                    "the device code was issued to another client".into(),
                ));
            }
            DevicePoll::Redeemed => {
                self.answered("invalid_grant");
                return Err(OAuthError::InvalidGrant(
                    "the device code was already used".into(),
                ));
            }
        };
        let response = self.issue(client, &grant, origin, proof, targets).await;
        let answer = match &response {
            Ok(_) => "tokens",
            Err(OAuthError::AccessDenied(_)) => "access_denied",
            Err(OAuthError::InvalidGrant(_)) => "invalid_grant",
            Err(_) => "error",
        };
        self.answered(answer);
        response
    }

    /// The tokens of an approval: a new refresh family, as the code flow starts one
    /// (docs/authorize.md), and an ID token when `openid` was granted.
    async fn issue(
        &self,
        client: &ClientRecord,
        grant: &str,
        origin: &Origin,
        proof: Option<Proven>,
        targets: Targets,
    ) -> Result<TokenResponse, OAuthError> {
        let a: Approval = serde_json::from_str(grant).map_err(|e| {
            OAuthError::Other(Error::Internal(format!(
                "a stored approval does not parse: {e}"
            )))
        })?;
        let withdrawn = || {
            OAuthError::AccessDenied(
                "the approval ended with the user's sessions (signed out everywhere, or the \
                 password changed)"
                    .into(),
            )
        };
        let Some(user) = self.users.by_id(&a.user_id).await.map_err(Error::from)? else {
            return Err(OAuthError::InvalidGrant("the user no longer exists".into()));
        };
        if user.credentials_version > a.cv {
            return Err(withdrawn());
        }
        let sid = self.sessions.new_sid(&user.id)?;
        let alg = self.sessions.client_alg(client);
        // Refused in the step that adds the family if an "end all sessions" or a credential
        // change came after the approval (docs/sessions.md).
        let since = UserMarks {
            generation: a.gen,
            credentials_version: a.cv,
        };
        let Some((pair, user)) = self
            .sessions
            .start_session_since(
                user,
                since,
                client,
                &a.scope,
                alg,
                FamilyStart {
                    sid: sid.clone(),
                    auth_time: a.auth_time,
                    grant: GRANT_LABEL,
                    fresh: false,
                    origin: origin.clone(),
                    proof,
                    targets,
                },
            )
            .await?
        else {
            return Err(withdrawn());
        };
        let id_token = if scope_tokens(&a.scope).contains(&"openid") {
            let facts = IdTokenFacts {
                scope: &a.scope,
                nonce: None,
                auth_time: a.auth_time,
                amr: &a.amr,
                sid: &sid,
                grant: GRANT_LABEL,
            };
            Some(
                self.authorize
                    .id_token_for(client, &user, facts, &pair.access_token)?,
            )
        } else {
            None
        };
        self.count("redeemed");
        tracing::info!(user_id = %user.id, client_id = %client.client_id, "device code redeemed");
        Ok(TokenResponse {
            access_token: pair.access_token,
            token_type: pair.token_type,
            expires_in: pair.expires_in,
            refresh_token: Some(pair.refresh_token).filter(|t| !t.is_empty()),
            scope: pair.scope,
            id_token,
            issued_token_type: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_forgive_case_spaces_and_dashes() {
        let want = Some(UserCode("BCDFGHJK".into()));
        for typed in [
            "BCDFGHJK",
            "bcdf-ghjk",
            " bcdf ghjk ",
            "BcDf-GhJk",
            "B-C-D-F-G-H-J-K",
        ] {
            assert_eq!(UserCode::parse(typed), want, "{typed:?}");
        }
        for bad in [
            "",
            "BCDFGHJ",
            "BCDFGHJKL",
            "ABCDFGHJ",
            "BCDF_GHJK",
            "BCDF1GHJ",
            "ＢCDFGHJK",
            &"B".repeat(65),
        ] {
            assert_eq!(UserCode::parse(bad), None, "{bad:?}");
        }
        assert_eq!(UserCode("BCDFGHJK".into()).display(), "BCDF-GHJK");
    }

    #[test]
    fn generated_user_codes_use_the_alphabet_and_differ() {
        let codes: Vec<UserCode> = (0..200).map(|_| UserCode::generate().unwrap()).collect();
        for c in &codes {
            assert_eq!(UserCode::parse(&c.display()).as_ref(), Some(c));
        }
        let distinct: std::collections::HashSet<_> = codes.iter().map(|c| &c.0).collect();
        assert_eq!(distinct.len(), codes.len());
        // Every letter turns up (200 × 8 draws from 20 letters).
        let letters: std::collections::HashSet<char> =
            codes.iter().flat_map(|c| c.0.chars()).collect();
        assert_eq!(letters.len(), USER_CODE_ALPHABET.len());
    }

    #[test]
    fn device_codes_have_one_shape() {
        assert!(is_device_code(&ids::random_secret().unwrap()));
        assert!(!is_device_code(""));
        assert!(!is_device_code(&"a".repeat(44)));
        assert!(!is_device_code(&format!("{}=", "a".repeat(42))));
    }
}
