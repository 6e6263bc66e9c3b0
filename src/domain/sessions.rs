//! The `Sessions` service (docs/sessions.md): the access-token check (bearer or DPoP-bound,
//! docs/dpop.md), refresh families (a login starts one, each refresh exchanges its current token
//! atomically, reuse revokes it), logout, and ending all of a user's sessions.

use std::sync::Arc;

use tokend_token_shape::Scheme;

use super::accounts::{Principal, TokenPair};
use super::clients::GRANT_REFRESH_TOKEN;
use super::dpop::{CheckedProof, Dpop, ProofHeader, ProofRefusal, Proven, Target};
use super::events::{EventType, Events, NewEvent, Origin};
use super::resources::Targets;
use super::tokens::{
    AccessClaims, Actor, Audience, Confirmation, RefreshClaims, Refusal, LEEWAY_SECS,
};
use super::{ids, Error, RefreshError, Tokens};
use crate::clock::{ms, secs, SharedClock};
use crate::config::Config;
use crate::keys::Alg;
use crate::metrics::Metrics;
use crate::store::{
    AccessStatus, ClientRecord, ClientStore, FamilyStarted, NewFamily, RotateOutcome,
    RotateRequest, SessionStore, UserClaims, UserMarks, UserRecord, UserStore,
};

/// The claims of one pair, derived only from the family and the issue instant, so that a replay
/// inside the leeway re-signs byte-identical tokens.
struct PairSpec<'a> {
    user_id: &'a str,
    /// The user's username, roles and record version, carried in both tokens.
    user: &'a UserClaims,
    client_id: &'a str,
    scope: &'a str,
    sid: &'a str,
    auth_time: i64,
    fresh: bool,
    /// The refresh token's `jti`; the access token's is derived from it
    /// ([`crate::store::access_jti_of`]).
    refresh_jti: String,
    issued_at: i64,
    session_ends: i64,
    /// `password` or `refresh_token`, for the issued-tokens metric.
    grant: &'static str,
    /// Whether the client may have a refresh token (its `refresh_token` grant); without it
    /// the pair's refresh token is left empty.
    with_refresh: bool,
    /// The DPoP key the access token is bound to (`cnf.jkt`, RFC 9449 §6.1).
    jkt: Option<&'a str>,
    /// The DPoP key the family is bound to, carried in its refresh tokens (RFC 9449 §5).
    family_jkt: Option<&'a str>,
    /// The resources the family is granted (kept in its refresh tokens) and those the access
    /// token is for (its `aud`; RFC 8707).
    targets: &'a Targets,
}

/// The `token_type` of a token response (RFC 6749 §5.1, RFC 9449 §5): `DPoP` for an access
/// token bound to a key.
pub(crate) fn token_type(bound: bool) -> &'static str {
    if bound {
        "DPoP"
    } else {
        "Bearer"
    }
}

/// How a request presented its access token (RFC 6750 §2.1, RFC 9449 §7.1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Presented<'a> {
    pub(crate) scheme: Scheme,
    pub(crate) token: &'a str,
    /// The request's `DPoP` header.
    pub(crate) proof: &'a ProofHeader,
    /// The route it was sent to (a proof's `htm` and `htu`).
    pub(crate) target: Target<'a>,
}

/// How a new family starts.
#[derive(Debug, Clone)]
pub(crate) struct FamilyStart {
    pub(crate) sid: String,
    /// Unix seconds of the authentication the family rests on.
    pub(crate) auth_time: i64,
    /// The grant, for the issued-tokens metric.
    pub(crate) grant: &'static str,
    /// Whether the first access token is fresh (a password login just now).
    pub(crate) fresh: bool,
    /// The request that starts the family: its address and `User-Agent` are kept with it for
    /// the sessions list (docs/sessions.md).
    pub(crate) origin: Origin,
    /// The DPoP proof of the token request (docs/dpop.md): its key binds the access token, and
    /// the family too when the client is public (RFC 9449 §5).
    pub(crate) proof: Option<Proven>,
    /// The resources the family is granted and its first access token is for (RFC 8707;
    /// docs/token_exchange.md); empty for the configured audience.
    pub(crate) targets: Targets,
}

/// The ids and times of a family's first pair, drawn before the family is written.
struct FirstIds {
    refresh_jti: String,
    /// Unix ms of the start.
    now_ms: i64,
    /// Unix seconds at which the family ends whatever happens.
    session_ends: i64,
}

/// An access token issued by token exchange (RFC 8693; docs/token_exchange.md).
#[derive(Debug, Clone)]
pub(crate) struct Exchanged<'a> {
    /// The subject token's claims, checked: its `sub`, `sid`, roles and `auth_time` carry
    /// over, and the new token never outlives it.
    pub(crate) subject: &'a AccessClaims,
    /// The new token's audiences.
    pub(crate) aud: Audience,
    pub(crate) scope: &'a str,
    /// Who acts (the outermost `act`).
    pub(crate) act: Actor,
    /// The key of the request's DPoP proof, if any.
    pub(crate) jkt: Option<&'a str>,
}

/// Session lifetimes and what a family may hold, from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct SessionSettings {
    pub(crate) access_ttl: std::time::Duration,
    pub(crate) refresh_ttl: std::time::Duration,
    pub(crate) session_ttl: std::time::Duration,
    pub(crate) refresh_reuse_leeway: std::time::Duration,
    pub(crate) max_sessions_per_user: u32,
    /// `TOKEND_SIGNING_ALGS`; the first signs by default.
    pub(crate) signing_algs: Vec<Alg>,
}

impl SessionSettings {
    pub(crate) fn from_config(config: &Config) -> SessionSettings {
        SessionSettings {
            access_ttl: config.access_ttl,
            refresh_ttl: config.refresh_ttl,
            session_ttl: config.session_ttl,
            refresh_reuse_leeway: config.refresh_reuse_leeway,
            max_sessions_per_user: config.max_sessions_per_user,
            signing_algs: config.signing_algs.clone(),
        }
    }

    pub(crate) fn default_alg(&self) -> Alg {
        self.signing_algs[0]
    }
}

/// The `Sessions` service: token checks, refresh families, logout and revocation
/// (docs/sessions.md).
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    /// Read only for families written before families carried the user.
    users: Arc<dyn UserStore>,
    clients: Arc<dyn ClientStore>,
    tokens: Tokens,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    settings: SessionSettings,
    events: Events,
    dpop: Arc<Dpop>,
}

impl Sessions {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Arc<dyn SessionStore>,
        users: Arc<dyn UserStore>,
        clients: Arc<dyn ClientStore>,
        tokens: Tokens,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        settings: SessionSettings,
        events: Events,
        dpop: Arc<Dpop>,
    ) -> Sessions {
        Sessions {
            store,
            users,
            clients,
            tokens,
            clock,
            metrics,
            settings,
            events,
            dpop,
        }
    }

    /// The DPoP service the checks of this service use.
    pub(crate) fn dpop(&self) -> &Dpop {
        &self.dpop
    }

    /// The session settings (lifetimes, algorithms).
    pub(crate) fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    /// Validates a bearer access token: signature, header, times, then revocation (fails closed
    /// when the session store is down). A DPoP-bound token is refused (RFC 9449 §7.2).
    pub async fn authenticate(&self, token: &str) -> Result<Principal, Error> {
        let now = self.clock.now();
        let claims = self
            .tokens
            .decode_access(token, now)
            .map_err(|r| self.rejected(r))?;
        if claims.cnf.is_some() {
            return Err(self.rejected(Refusal::DpopBound));
        }
        self.check_revocation(claims).await
    }

    /// Validates the access token of a request to a protected route, as it was presented:
    /// a bearer token as [`Sessions::authenticate`]; a token under the `DPoP` scheme must be
    /// bound (`cnf.jkt`) and come with a proof of that key for this request, carrying `ath`,
    /// used once (RFC 9449 §7.1, §4.3). The proof's single use and the revocation check are
    /// one round trip each, made at once.
    pub(crate) async fn authenticate_request(&self, p: &Presented<'_>) -> Result<Principal, Error> {
        if p.scheme == Scheme::Bearer {
            return self.authenticate(p.token).await;
        }
        let dpop_rejected = |r: Refusal| Error::DpopTokenRejected(self.refused(r));
        let claims = self
            .tokens
            .decode_access(p.token, self.clock.now())
            .map_err(dpop_rejected)?;
        let Some(cnf) = claims.cnf.as_ref() else {
            return Err(dpop_rejected(Refusal::NotDpopBound));
        };
        let checked = self
            .dpop
            .check(p.proof, p.target, Some(p.token))
            .map_err(Error::DpopProof)?
            .ok_or_else(|| Error::DpopProof(self.dpop.refused(ProofRefusal::Missing)))?;
        if checked.jkt != cnf.jkt {
            return Err(Error::DpopProof(self.dpop.refused(ProofRefusal::Key)));
        }
        let (spent, status) = tokio::join!(
            self.dpop.spend(checked),
            self.store
                .access_status(&claims.jti, claims.sid.as_deref(), &claims.sub)
        );
        spent?;
        self.dpop.accepted();
        self.judge_revocation(claims, &status?)
            .map_err(|e| match e {
                Error::TokenRejected(r) => Error::DpopTokenRejected(r),
                other => other,
            })
    }

    /// The revocation checks of an access token whose signature and claims passed (fails closed
    /// when the session store is down).
    pub(crate) async fn check_revocation(&self, claims: AccessClaims) -> Result<Principal, Error> {
        let status = self
            .store
            .access_status(&claims.jti, claims.sid.as_deref(), &claims.sub)
            .await?;
        self.judge_revocation(claims, &status)
    }

    /// [`Core::check_revocation`], also giving the newest copy of the user's claims (for
    /// introspection), read in the same round trip.
    pub(crate) async fn check_revocation_with_user(
        &self,
        claims: AccessClaims,
    ) -> Result<(Principal, Option<UserClaims>), Error> {
        let status = self
            .store
            .access_status_with_user(&claims.jti, claims.sid.as_deref(), &claims.sub)
            .await?;
        let principal = self.judge_revocation(claims, &status)?;
        Ok((principal, status.claims))
    }

    fn judge_revocation(
        &self,
        claims: AccessClaims,
        status: &AccessStatus,
    ) -> Result<Principal, Error> {
        if status.jti_revoked {
            return Err(self.rejected(Refusal::Revoked));
        }
        if status.revoked(claims.sid.as_deref()) {
            return Err(self.rejected(Refusal::SessionRevoked));
        }
        Ok(Principal { claims })
    }

    /// Counts a refused bearer token by reason and turns it into the domain error.
    pub(crate) fn rejected(&self, refusal: Refusal) -> Error {
        Error::TokenRejected(self.refused(refusal))
    }

    /// Counts a refused token by reason and logs the reason; gives the refusal back for the
    /// error that carries it to the client.
    pub(crate) fn refused(&self, refusal: Refusal) -> Refusal {
        self.metrics
            .validation_failures
            .with_label_values(&[refusal.as_label()])
            .inc();
        tracing::debug!(reason = refusal.as_label(), "token refused");
        refusal
    }

    /// A fresh `jti`.
    pub(crate) fn new_id(&self) -> Result<String, Error> {
        ids::random_id()
    }

    /// A fresh `sid` for a family of `user_id` (it names the user: docs/sessions.md).
    pub(crate) fn new_sid(&self, user_id: &str) -> Result<String, Error> {
        ids::random_sid(user_id)
    }

    /// A family as it stands (for introspection of refresh tokens).
    pub(crate) async fn family(
        &self,
        sid: &str,
    ) -> Result<Option<crate::store::FamilyState>, Error> {
        Ok(self.store.family(sid).await?)
    }

    /// The revocation state of a refresh token's family, with the newest copy of the user's
    /// claims (for introspection).
    pub(crate) async fn refresh_status(
        &self,
        jti: &str,
        sid: &str,
        user_id: &str,
    ) -> Result<AccessStatus, Error> {
        Ok(self
            .store
            .access_status_with_user(jti, Some(sid), user_id)
            .await?)
    }

    /// `POST /oauth/revoke` of an access token: its `jti` until it expires.
    pub(crate) async fn revoke_access_jti(&self, jti: &str, exp: i64) -> Result<(), Error> {
        let now = self.clock.now();
        let ttl_ms = (exp - now + LEEWAY_SECS).max(1) * 1000;
        self.store.revoke_jti(jti, ttl_ms).await?;
        Ok(())
    }

    /// The user's session marks: what ends every session of theirs at once (a browser session
    /// started before a raise is over, docs/sessions.md).
    pub(crate) async fn user_marks(&self, user_id: &str) -> Result<UserMarks, Error> {
        Ok(self.store.access_status("", None, user_id).await?.user)
    }

    /// Revokes the user's families of one client (a withdrawn consent); answers how many.
    pub(crate) async fn revoke_client_families(
        &self,
        user_id: &str,
        client_id: &str,
    ) -> Result<u64, Error> {
        let mut ended = 0;
        for sid in self.store.user_families(user_id).await? {
            let Some(f) = self.store.family(&sid).await? else {
                continue;
            };
            if f.client_id == client_id && !f.revoked {
                self.revoke_family(&sid).await?;
                ended += 1;
            }
        }
        if ended > 0 {
            self.metrics
                .revocations
                .with_label_values(&["family"])
                .inc_by(ended);
        }
        Ok(ended)
    }

    /// `POST /oauth/revoke` of a refresh token: its family.
    pub(crate) async fn revoke_family(&self, sid: &str) -> Result<(), Error> {
        self.store
            .revoke_family(sid, self.revocation_ttl_ms())
            .await?;
        Ok(())
    }

    /// Decodes a refresh token (no revocation checks).
    pub(crate) fn decode_refresh(&self, token: &str) -> Option<super::RefreshClaims> {
        self.tokens.decode_refresh(token, self.clock.now()).ok()
    }

    /// Decodes an access token tokend issued, for any audience (no revocation checks): what
    /// revocation and introspection are asked about, a token for another resource
    /// (RFC 8707) included.
    pub(crate) fn decode_access(&self, token: &str) -> Option<AccessClaims> {
        self.tokens
            .decode_access_any_audience(token, self.clock.now())
            .ok()
    }

    /// Signs an access token for a client itself (`client_credentials`), for `resources`
    /// (its `aud`, RFC 8707) or, when there are none, the configured audience.
    pub(crate) fn sign_client_access(
        &self,
        client: &ClientRecord,
        scope: &str,
        jkt: Option<&str>,
        resources: &[String],
    ) -> Result<(String, i64), Error> {
        let now = self.clock.now();
        let ttl = secs(self.settings.access_ttl);
        let claims = AccessClaims {
            iss: self.tokens.issuer.clone(),
            sub: client.client_id.clone(),
            aud: Audience::for_resources(resources, &self.tokens.audience),
            exp: now + ttl,
            iat: now,
            nbf: now,
            jti: self.new_id()?,
            client_id: client.client_id.clone(),
            scope: scope.to_string(),
            sid: None,
            fresh: false,
            auth_time: None,
            roles: vec![],
            username: None,
            cnf: jkt.map(|jkt| Confirmation {
                jkt: jkt.to_string(),
            }),
            act: None,
        };
        let alg = self.client_alg(client);
        let token = self.tokens.sign_access(alg, &claims)?;
        self.metrics
            .issued("client_credentials", "access", alg.as_str());
        Ok((token, ttl))
    }

    /// Validates an access token tokend issued, for any audience: the signature, header and
    /// time checks, then the revocation checks of [`Sessions::authenticate`] (its `jti`, its
    /// family, the user's session marks; fails closed when the store is down). A DPoP-bound
    /// token is not refused here: the caller decides what its binding asks for. For tokens
    /// tokend is asked about rather than called with (the subject and actor of a token
    /// exchange, docs/token_exchange.md).
    pub(crate) async fn check_issued_access(&self, token: &str) -> Result<Principal, Error> {
        let claims = self
            .tokens
            .decode_access_any_audience(token, self.clock.now())
            .map_err(|r| self.rejected(r))?;
        self.check_revocation(claims).await
    }

    /// Signs the access token of a token exchange (RFC 8693 §2.2.1; docs/token_exchange.md)
    /// for `client`: the subject's `sub`, `sid`, roles and `auth_time`, never fresh, with
    /// `act`, and no later expiry than the subject token's. Answers the token and its
    /// lifetime in seconds.
    pub(crate) fn sign_exchanged_access(
        &self,
        client: &ClientRecord,
        e: Exchanged<'_>,
    ) -> Result<(String, i64), Error> {
        let now = self.clock.now();
        let exp = (now + secs(self.settings.access_ttl)).min(e.subject.exp);
        let claims = AccessClaims {
            iss: self.tokens.issuer.clone(),
            sub: e.subject.sub.clone(),
            aud: e.aud,
            exp,
            iat: now,
            nbf: now,
            jti: self.new_id()?,
            client_id: client.client_id.clone(),
            scope: e.scope.to_string(),
            sid: e.subject.sid.clone(),
            fresh: false,
            auth_time: e.subject.auth_time,
            roles: e.subject.roles.clone(),
            username: e.subject.username.clone(),
            cnf: e.jkt.map(|jkt| Confirmation {
                jkt: jkt.to_string(),
            }),
            act: Some(e.act),
        };
        let alg = self.client_alg(client);
        let token = self.tokens.sign_access(alg, &claims)?;
        self.metrics
            .issued("token_exchange", "access", alg.as_str());
        Ok((token, exp - now))
    }

    /// The signing algorithm of a client (its own, else the default).
    pub(crate) fn client_alg(&self, client: &ClientRecord) -> Alg {
        client
            .alg
            .as_deref()
            .and_then(Alg::parse)
            .filter(|a| self.settings.signing_algs.contains(a))
            .unwrap_or_else(|| self.settings.default_alg())
    }

    /// How long a revocation record must live: the longest remaining lifetime of anything it
    /// revokes, plus the validation leeway.
    pub(crate) fn revocation_ttl_ms(&self) -> i64 {
        ms(self.settings.refresh_ttl.max(self.settings.access_ttl)) + LEEWAY_SECS * 1000
    }

    fn sign_pair(&self, alg: Alg, spec: &PairSpec<'_>) -> Result<TokenPair, Error> {
        let access_ttl = secs(self.settings.access_ttl);
        let refresh_exp = (spec.issued_at + secs(self.settings.refresh_ttl)).min(spec.session_ends);
        let access = AccessClaims {
            iss: self.tokens.issuer.clone(),
            sub: spec.user_id.to_string(),
            aud: Audience::for_resources(&spec.targets.audience, &self.tokens.audience),
            exp: spec.issued_at + access_ttl,
            iat: spec.issued_at,
            nbf: spec.issued_at,
            jti: crate::store::access_jti_of(&spec.refresh_jti),
            client_id: spec.client_id.to_string(),
            scope: spec.scope.to_string(),
            sid: Some(spec.sid.to_string()),
            fresh: spec.fresh,
            auth_time: Some(spec.auth_time),
            roles: spec.user.roles.clone(),
            username: Some(spec.user.username.clone()),
            cnf: spec.jkt.map(|jkt| Confirmation {
                jkt: jkt.to_string(),
            }),
            act: None,
        };
        let refresh = RefreshClaims {
            iss: self.tokens.issuer.clone(),
            sub: spec.user_id.to_string(),
            aud: Audience::One(self.tokens.issuer.clone()),
            exp: refresh_exp,
            iat: spec.issued_at,
            jti: spec.refresh_jti.clone(),
            sid: spec.sid.to_string(),
            client_id: spec.client_id.to_string(),
            scope: spec.scope.to_string(),
            resources: spec.targets.granted.clone(),
            auth_time: Some(spec.auth_time),
            username: Some(spec.user.username.clone()),
            roles: Some(spec.user.roles.clone()),
            user_version: Some(spec.user.version),
            cnf: spec.family_jkt.map(|jkt| Confirmation {
                jkt: jkt.to_string(),
            }),
        };
        let refresh_token = if spec.with_refresh {
            self.metrics.issued(spec.grant, "refresh", alg.as_str());
            self.tokens.sign_refresh(alg, &refresh)?
        } else {
            String::new()
        };
        let pair = TokenPair {
            access_token: self.tokens.sign_access(alg, &access)?,
            refresh_token,
            token_type: token_type(spec.jkt.is_some()),
            expires_in: access_ttl,
            scope: spec.scope.to_string(),
        };
        self.metrics.issued(spec.grant, "access", alg.as_str());
        Ok(pair)
    }

    /// Starts a family for a password login and issues its first (fresh) pair, bound to the
    /// key of `proof` when there is one, for `targets` (RFC 8707).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start_session(
        &self,
        user: &UserRecord,
        client: &ClientRecord,
        scope: &str,
        alg: Alg,
        origin: &Origin,
        proof: Option<Proven>,
        targets: Targets,
    ) -> Result<TokenPair, Error> {
        let start = FamilyStart {
            sid: self.new_sid(&user.id)?,
            auth_time: self.clock.now(),
            grant: "password",
            fresh: true,
            origin: origin.clone(),
            proof,
            targets,
        };
        self.start_session_with(user, client, scope, alg, start)
            .await
    }

    /// Starts a family as `start` says and issues its first pair.
    pub(crate) async fn start_session_with(
        &self,
        user: &UserRecord,
        client: &ClientRecord,
        scope: &str,
        alg: Alg,
        start: FamilyStart,
    ) -> Result<TokenPair, Error> {
        let first = self.first_ids()?;
        self.write_family(user, client, &start, &first, None)
            .await?;
        self.sign_first(user, client, scope, alg, &start, &first)
    }

    /// Starts a family resting on an earlier sign-in (an authorization code, a device
    /// approval) that was made under the user's session marks `since`: in the same store step
    /// that adds it, the family is refused if an "end all sessions" or a credential change
    /// came after that sign-in (`None`; docs/sessions.md, "Families started from an earlier
    /// sign-in"). Otherwise its first pair, and `user` as the tokens carry them: with the
    /// username and roles of a newer change, read in the same step.
    pub(crate) async fn start_session_since(
        &self,
        user: UserRecord,
        since: UserMarks,
        client: &ClientRecord,
        scope: &str,
        alg: Alg,
        start: FamilyStart,
    ) -> Result<Option<(TokenPair, UserRecord)>, Error> {
        let first = self.first_ids()?;
        let started = self
            .write_family(&user, client, &start, &first, Some(since))
            .await?;
        let FamilyStarted::Started { claims, .. } = started else {
            return Ok(None);
        };
        let user = UserClaims::applied(claims, user);
        let pair = self.sign_first(&user, client, scope, alg, &start, &first)?;
        Ok(Some((pair, user)))
    }

    /// The ids and times of a family's first pair.
    fn first_ids(&self) -> Result<FirstIds, Error> {
        let now_ms = self.clock.now_ms();
        let now = now_ms.div_euclid(1000);
        Ok(FirstIds {
            refresh_jti: self.new_id()?,
            now_ms,
            session_ends: now + secs(self.settings.session_ttl),
        })
    }

    /// Writes the family of `start` (see [`SessionStore::start_family`]).
    async fn write_family(
        &self,
        user: &UserRecord,
        client: &ClientRecord,
        start: &FamilyStart,
        first: &FirstIds,
        expect: Option<UserMarks>,
    ) -> Result<FamilyStarted, Error> {
        let started = self
            .store
            .start_family(&NewFamily {
                sid: start.sid.clone(),
                user_id: user.id.clone(),
                client_id: client.client_id.clone(),
                refresh_jti: first.refresh_jti.clone(),
                issued_at: first.now_ms.div_euclid(1000),
                expires_at_ms: first.session_ends * 1000,
                started_at_ms: first.now_ms,
                ttl_ms: ms(self.settings.refresh_ttl) + LEEWAY_SECS * 1000,
                revoked_ttl_ms: self.revocation_ttl_ms(),
                credentials_version: user.credentials_version,
                max_sessions: self.settings.max_sessions_per_user,
                user_agent: start.origin.user_agent.clone(),
                ip: start.origin.ip_text(),
                expect,
            })
            .await?;
        let ended = started.evicted();
        if ended > 0 {
            self.metrics
                .revocations
                .with_label_values(&["family"])
                .inc_by(ended);
            tracing::info!(user_id = %user.id, ended, "oldest sessions ended: too many live sessions");
        }
        Ok(started)
    }

    /// The first pair of a family written by [`Sessions::write_family`].
    fn sign_first(
        &self,
        user: &UserRecord,
        client: &ClientRecord,
        scope: &str,
        alg: Alg,
        start: &FamilyStart,
        first: &FirstIds,
    ) -> Result<TokenPair, Error> {
        let jkt = start.proof.as_ref().map(|p| p.jkt.as_str());
        let spec = PairSpec {
            user_id: &user.id,
            user: &UserClaims::of(user),
            client_id: &client.client_id,
            scope,
            sid: &start.sid,
            auth_time: start.auth_time,
            fresh: start.fresh,
            refresh_jti: first.refresh_jti.clone(),
            issued_at: first.now_ms.div_euclid(1000),
            session_ends: first.session_ends,
            grant: start.grant,
            with_refresh: client.grant_types.iter().any(|g| g == GRANT_REFRESH_TOKEN),
            jkt,
            // RFC 9449 §5: a public client's refresh tokens are bound to its key; a
            // confidential client's are bound to its authentication already.
            family_jkt: jkt.filter(|_| !client.is_confidential()),
            targets: &start.targets,
        };
        self.sign_pair(alg, &spec)
    }

    /// `POST /auth/token/refresh`: the seed route, which authenticates no client (only public
    /// clients' tokens are exchanged there; docs/hardening.md). A DPoP proof, when sent, binds
    /// the new access token; a bound family needs one (docs/dpop.md).
    pub(crate) async fn refresh_seed(
        &self,
        refresh_token: &str,
        proof: &ProofHeader,
        target: Target<'_>,
    ) -> Result<TokenPair, Error> {
        let checked = self
            .dpop
            .check(proof, target, None)
            .map_err(Error::DpopProof)?;
        self.refresh_with(refresh_token, None, checked, &[]).await
    }

    /// Exchanges a refresh token (docs/sessions.md) without a DPoP proof. `expected_client`,
    /// when given, must be the client the token was issued to.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        expected_client: Option<&ClientRecord>,
    ) -> Result<TokenPair, Error> {
        self.refresh_with(refresh_token, expected_client, None, &[])
            .await
    }

    /// Exchanges a refresh token with the DPoP proof of the request, checked but not yet
    /// spent: it is spent in the same round trip as the revocation marks are read. A bound
    /// family (a public client's, RFC 9449 §5) is refreshed only with a proof of its key, and
    /// the new access token is bound to the proof's key. `resource` names what the new access
    /// token is for: some of the resources the family was granted (RFC 8707 §2.2), all of them
    /// when empty; anything else is refused before the family moves.
    pub(crate) async fn refresh_with(
        &self,
        refresh_token: &str,
        expected_client: Option<&ClientRecord>,
        proof: Option<CheckedProof>,
        resource: &[String],
    ) -> Result<TokenPair, Error> {
        let now_ms = self.clock.now_ms();
        let now = now_ms.div_euclid(1000);
        let claims = self
            .tokens
            .decode_refresh(refresh_token, now)
            .map_err(|r| RefreshError::InvalidToken(self.refused(r)))?;
        if let Some(c) = expected_client {
            if c.client_id != claims.client_id {
                return Err(RefreshError::InvalidToken(Refusal::OtherClient).into());
            }
        }
        let targets =
            Targets::narrowed(resource, &claims.resources).map_err(Error::InvalidTarget)?;
        let client = match expected_client {
            Some(c) => c.clone(),
            None if claims.client_id == super::FIRST_PARTY_CLIENT => {
                super::clients::first_party_client()
            }
            None => {
                let client = self
                    .clients
                    .get(&claims.client_id)
                    .await?
                    .ok_or(RefreshError::Unknown)?;
                // The seed route authenticates no client: only public clients' tokens are
                // exchanged there (docs/hardening.md).
                if client.is_confidential() {
                    return Err(RefreshError::NotAllowed(
                        "this refresh token belongs to a confidential client: exchange it at \
                         /oauth/token with the client's credentials",
                    )
                    .into());
                }
                client
            }
        };
        if !client.grant_types.iter().any(|g| g == GRANT_REFRESH_TOKEN) {
            return Err(RefreshError::NotAllowed("this client may not use refresh tokens").into());
        }
        // A family's binding travels in its refresh tokens (RFC 9449 §5): a bound family is
        // refreshed only with a proof of its key, and nothing moves otherwise. (A family from
        // before keeps the key in its record, and the store checks it.)
        let proven_key = proof.as_ref().map(|p| p.jkt.as_str());
        if let Some(cnf) = &claims.cnf {
            if proven_key != Some(cnf.jkt.as_str()) {
                let refusal = if proven_key.is_some() {
                    ProofRefusal::Key
                } else {
                    ProofRefusal::Missing
                };
                tracing::info!(sid = %claims.sid, reason = refusal.as_str(),
                    "refresh of a DPoP-bound family refused");
                return Err(Error::DpopProof(self.dpop.refused(refusal)));
            }
        }
        // The revocation marks come with the user's claims as last changed, so a role change
        // shows at the next refresh without a user-store read; the token's own copy (taken
        // at login, carried from token to token) counts when no change came since. A proof is
        // spent meanwhile.
        let (proven, status) = tokio::join!(
            self.dpop.spend_if_any(proof),
            self.store
                .access_status_with_user(&claims.jti, Some(&claims.sid), &claims.sub)
        );
        let (proven, status) = (proven?, status?);
        let jkt = proven.as_ref().map(|p| p.jkt.clone());
        if status.revoked(Some(&claims.sid)) {
            return Err(RefreshError::Revoked.into());
        }
        let user = match UserClaims::newest(status.claims, claims.user()) {
            Some(user) => user,
            // A token and family from before either carried the user.
            None => UserClaims::of(
                &self
                    .users
                    .by_id(&claims.sub)
                    .await?
                    .ok_or(RefreshError::Unknown)?,
            ),
        };
        let alg = self.client_alg(&client);
        let new_refresh_jti = self.new_id()?;
        // One store step reads the family, checks its session is not over, and exchanges the
        // token; the record lives the refresh TTL, capped at the family's end.
        let (family, outcome) = self
            .store
            .exchange(&RotateRequest {
                sid: claims.sid.clone(),
                presented_jti: claims.jti.clone(),
                new_refresh_jti: new_refresh_jti.clone(),
                issued_at: now,
                now_ms,
                leeway_ms: ms(self.settings.refresh_reuse_leeway),
                ttl_ms: ms(self.settings.refresh_ttl) + LEEWAY_SECS * 1000,
                revoked_ttl_ms: self.revocation_ttl_ms(),
                jkt: jkt.clone(),
            })
            .await?
            .ok_or(RefreshError::Unknown)?;
        let session_ends = family.expires_at_ms.div_euclid(1000);
        let (refresh_jti, issued_at) = match outcome {
            RotateOutcome::Rotated => (new_refresh_jti, now),
            RotateOutcome::Replayed {
                refresh_jti,
                issued_at,
            } => (refresh_jti, issued_at),
            RotateOutcome::Reused => {
                tracing::warn!(sid = %claims.sid, user_id = %claims.sub, "refresh token reuse detected; family revoked");
                self.events.record(
                    NewEvent::new(EventType::RefreshReuseDetected)
                        .user(&claims.sub)
                        .client(&claims.client_id)
                        .detail("sid", claims.sid.as_str()),
                );
                self.metrics.refresh_reuse.inc();
                self.metrics
                    .revocations
                    .with_label_values(&["family"])
                    .inc();
                return Err(RefreshError::Reused.into());
            }
            RotateOutcome::Revoked => return Err(RefreshError::Revoked.into()),
            RotateOutcome::Unknown => return Err(RefreshError::Unknown.into()),
            RotateOutcome::WrongKey => {
                let refusal = if jkt.is_some() {
                    ProofRefusal::Key
                } else {
                    ProofRefusal::Missing
                };
                tracing::info!(sid = %claims.sid, reason = refusal.as_str(),
                    "refresh of a DPoP-bound family refused");
                return Err(Error::DpopProof(self.dpop.refused(refusal)));
            }
        };
        if jkt.is_some() {
            self.dpop.accepted();
        }
        self.sign_pair(
            alg,
            &PairSpec {
                user_id: &claims.sub,
                user: &user,
                client_id: &claims.client_id,
                scope: &claims.scope,
                sid: &claims.sid,
                auth_time: claims.auth_time.unwrap_or(family.auth_time),
                fresh: false,
                refresh_jti,
                issued_at,
                session_ends,
                grant: "refresh_token",
                with_refresh: true,
                jkt: jkt.as_deref(),
                family_jkt: claims.cnf.as_ref().map(|c| c.jkt.as_str()),
                targets: &targets,
            },
        )
    }

    /// [`publish_user_claims`] on this service's session store.
    pub(crate) async fn publish_user_claims(&self, user: &UserRecord) -> Result<(), Error> {
        publish_user_claims(&*self.store, self.settings.session_ttl, user).await
    }

    /// `POST /auth/logout`: this access token and its family.
    pub(crate) async fn logout(&self, p: &Principal) -> Result<(), Error> {
        let now = self.clock.now();
        let remaining = (p.claims.exp - now + LEEWAY_SECS).max(1) * 1000;
        self.store.revoke_jti(&p.claims.jti, remaining).await?;
        self.metrics.revocations.with_label_values(&["token"]).inc();
        if let Some(sid) = &p.claims.sid {
            self.store
                .revoke_family(sid, self.revocation_ttl_ms())
                .await?;
            self.metrics
                .revocations
                .with_label_values(&["family"])
                .inc();
        }
        self.events.record(
            NewEvent::new(EventType::Logout)
                .user(&p.claims.sub)
                .client(&p.claims.client_id)
                .detail("scope", "session"),
        );
        Ok(())
    }

    /// Revokes the family of a refresh token (cookie logout). Invalid or expired tokens revoke
    /// nothing and are not an error.
    pub(crate) async fn revoke_refresh_token(&self, token: &str) -> Result<(), Error> {
        let Ok(claims) = self.tokens.decode_refresh(token, self.clock.now()) else {
            return Ok(());
        };
        self.store
            .revoke_family(&claims.sid, self.revocation_ttl_ms())
            .await?;
        self.metrics
            .revocations
            .with_label_values(&["family"])
            .inc();
        self.events.record(
            NewEvent::new(EventType::Logout)
                .user(&claims.sub)
                .client(&claims.client_id)
                .detail("scope", "session"),
        );
        Ok(())
    }

    /// `POST /auth/logout/all`: every session of the user.
    pub(crate) async fn logout_all(&self, p: &Principal) -> Result<(), Error> {
        self.revoke_all_sessions(&p.claims.sub, None).await?;
        self.events.record(
            NewEvent::new(EventType::Logout)
                .user(&p.claims.sub)
                .client(&p.claims.client_id)
                .detail("scope", "all"),
        );
        Ok(())
    }

    /// `GET /users/me/sessions`: the caller's live sessions, oldest login first, each with the
    /// address and user agent of its login; `current` marks the session of the caller's token
    /// (docs/sessions.md, "The sessions list").
    pub(crate) async fn list_sessions(&self, p: &Principal) -> Result<Vec<SessionView>, Error> {
        let user_id = &p.claims.sub;
        let listed = self.store.user_family_logins(user_id).await?;
        let marks = self.user_marks(user_id).await?;
        let families = futures_util::future::try_join_all(
            listed.iter().map(|(sid, _)| self.store.family(sid)),
        )
        .await?;
        let now_ms = self.clock.now_ms();
        Ok(listed
            .into_iter()
            .zip(families)
            .filter_map(|((sid, login_ms), family)| {
                let f = family.filter(|f| &f.user_id == user_id && !f.ended(&marks, now_ms))?;
                let created_ms = if login_ms > 0 {
                    login_ms
                } else {
                    f.auth_time.saturating_mul(1000)
                };
                Some(SessionView {
                    current: p.claims.sid.as_deref() == Some(sid.as_str()),
                    sid,
                    client_id: f.client_id,
                    created_at: rfc3339_ms(created_ms),
                    last_refreshed_at: f.last_refreshed_at_ms.map(rfc3339_ms),
                    user_agent: f.user_agent,
                    ip: f.ip,
                })
            })
            .collect())
    }

    /// `DELETE /users/me/sessions/{sid}`: ends one of the caller's sessions (its refresh token
    /// and every access token of it). A session that is not the caller's, or is over, is
    /// [`Error::NotFound`]: whose it is stays unsaid.
    pub(crate) async fn end_session(
        &self,
        p: &Principal,
        sid: &str,
        origin: &Origin,
    ) -> Result<(), Error> {
        let marks = self.user_marks(&p.claims.sub).await?;
        let family = self
            .store
            .family(sid)
            .await?
            .filter(|f| f.user_id == p.claims.sub && !f.ended(&marks, self.clock.now_ms()))
            .ok_or(Error::NotFound)?;
        self.revoke_family(sid).await?;
        self.metrics
            .revocations
            .with_label_values(&["family"])
            .inc();
        self.events.record(
            NewEvent::new(EventType::Logout)
                .user(&p.claims.sub)
                .client(&family.client_id)
                .ip(origin.ip_text().as_deref())
                .detail("scope", "session")
                .detail("sid", sid),
        );
        Ok(())
    }

    /// Ends every session of a user, and every token of them, in one store step however many
    /// there are. After a credential change, `credentials_version` (of the record the change
    /// wrote) also ends the sessions of logins that read the record before it, including those
    /// still in flight (docs/sessions.md).
    pub(crate) async fn revoke_all_sessions(
        &self,
        user_id: &str,
        credentials_version: Option<i64>,
    ) -> Result<(), Error> {
        // The marks must outlive every family of the user.
        let ttl = ms(self.settings.session_ttl) + LEEWAY_SECS * 1000;
        let n = self
            .store
            .revoke_user_sessions(user_id, credentials_version, ttl)
            .await?;
        self.metrics.revocations.with_label_values(&["user"]).inc();
        tracing::info!(user_id = %user_id, families = n, "all sessions revoked");
        Ok(())
    }
}

/// A session as its user sees it (`GET /users/me/sessions`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct SessionView {
    pub(crate) sid: String,
    pub(crate) client_id: String,
    /// RFC 3339, UTC: the login.
    pub(crate) created_at: String,
    /// RFC 3339, UTC: the last refresh; `null` before the first.
    pub(crate) last_refreshed_at: Option<String>,
    /// As seen at login; `null` when unknown.
    pub(crate) user_agent: Option<String>,
    pub(crate) ip: Option<String>,
    /// The session of the token that asked.
    pub(crate) current: bool,
}

/// Unix ms as RFC 3339, UTC, whole seconds.
fn rfc3339_ms(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Tells the session store that the user's claims changed (a role, the username), so
/// refreshes and introspection of families already started see the change. The mark lives as
/// long as a family started before it can.
pub(crate) async fn publish_user_claims(
    sessions: &dyn SessionStore,
    session_ttl: std::time::Duration,
    user: &UserRecord,
) -> Result<(), Error> {
    let ttl_ms = ms(session_ttl) + LEEWAY_SECS * 1000;
    sessions
        .set_user_claims(&user.id, &UserClaims::of(user), ttl_ms)
        .await?;
    Ok(())
}
