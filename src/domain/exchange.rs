//! The `TokenExchange` service: token exchange (RFC 8693; docs/token_exchange.md). A
//! confidential client allowed the grant presents an access token tokend issued (the subject
//! token, checked as protected routes check it) and, optionally, its own access token as the
//! actor token, and gets an access token for the same subject: for an audience of its
//! `token_exchange_audiences`, with a scope no wider than the subject token's or its own, with
//! `act` naming who acts, bound to the request's DPoP key when it carries a proof, and never
//! outliving the subject token. No refresh token. No HTTP here: `OAuth::token_grant`
//! dispatches to [`TokenExchange::exchange`].

use std::sync::Arc;

use super::dpop::{ProofRefusal, Proven};
use super::oauth::{scope_tokens, OAuthError, TokenRequest, TokenResponse};
use super::resources::{audience_problem, resource_problem, MAX_RESOURCES};
use super::sessions::{token_type, Exchanged, Sessions};
use super::tokens::{AccessClaims, Actor, Audience, Refusal};
use super::Error;
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::store::ClientRecord;

/// RFC 8693 §3: an OAuth 2.0 access token.
pub(crate) const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 §3: a JWT; tokend's access tokens are JWTs (RFC 9068), so this names the same
/// tokens.
pub(crate) const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 8693 §3: a refresh token (never exchanged here).
const TOKEN_TYPE_REFRESH: &str = "urn:ietf:params:oauth:token-type:refresh_token";
/// RFC 8693 §3: an ID token (never exchanged here).
const TOKEN_TYPE_ID: &str = "urn:ietf:params:oauth:token-type:id_token";
/// The longest delegation chain a token may carry (actors in `act`, RFC 8693 §4.1): an
/// exchange that would make it longer is refused, so that tokens stay small.
pub(crate) const MAX_ACT_DEPTH: usize = 8;

/// Why an exchange was refused: at once the `result` label of
/// `tokend_token_exchanges_total`, the log field and the start of the `error_description`
/// (docs/token_exchange.md, "Refusals").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExchangeRefusal {
    /// A public client, or one not allowed the grant (`unauthorized_client`).
    UnauthorizedClient,
    /// A parameter missing or malformed, or a token type tokend does not exchange
    /// (`invalid_request`, RFC 8693 §2.2.2).
    InvalidRequest,
    /// The subject token is not a live access token of tokend's (`invalid_request`).
    SubjectToken,
    /// The actor token is not a live access token of this client's (`invalid_request`).
    ActorToken,
    /// A DPoP-bound subject or actor token without a proof of its key (`invalid_dpop_proof`
    /// without a proof, `invalid_request` with another key's).
    Binding,
    /// An audience or resource the client may not exchange for (`invalid_target`,
    /// RFC 8693 §2.2.2).
    Target,
    /// A scope wider than the subject token's or the client's (`invalid_scope`).
    Scope,
    /// The delegation chain would grow beyond [`MAX_ACT_DEPTH`] (`invalid_request`).
    ChainTooLong,
}

impl ExchangeRefusal {
    /// Every refusal, for the metric's series.
    pub(crate) const ALL: [ExchangeRefusal; 8] = [
        ExchangeRefusal::UnauthorizedClient,
        ExchangeRefusal::InvalidRequest,
        ExchangeRefusal::SubjectToken,
        ExchangeRefusal::ActorToken,
        ExchangeRefusal::Binding,
        ExchangeRefusal::Target,
        ExchangeRefusal::Scope,
        ExchangeRefusal::ChainTooLong,
    ];

    /// The metric label and log field: short and stable.
    pub(crate) fn as_label(self) -> &'static str {
        match self {
            ExchangeRefusal::UnauthorizedClient => "unauthorized_client",
            ExchangeRefusal::InvalidRequest => "invalid_request",
            ExchangeRefusal::SubjectToken => "subject_token",
            ExchangeRefusal::ActorToken => "actor_token",
            ExchangeRefusal::Binding => "dpop_binding",
            ExchangeRefusal::Target => "invalid_target",
            ExchangeRefusal::Scope => "invalid_scope",
            ExchangeRefusal::ChainTooLong => "chain_too_long",
        }
    }

    /// The start of the `error_description`: what is wrong, before the detail of this request.
    fn description(self) -> &'static str {
        match self {
            ExchangeRefusal::UnauthorizedClient => "this client may not exchange tokens",
            ExchangeRefusal::InvalidRequest => "invalid token exchange request",
            ExchangeRefusal::SubjectToken => "subject_token is not a live access token of tokend",
            ExchangeRefusal::ActorToken => "actor_token is not a live access token of this client",
            ExchangeRefusal::Binding => {
                "a DPoP-bound token is exchanged only with a proof of its key"
            }
            ExchangeRefusal::Target => "this client may not exchange tokens for that audience",
            ExchangeRefusal::Scope => "the scope is wider than the subject token's or the client's",
            ExchangeRefusal::ChainTooLong => "the delegation chain is too long",
        }
    }

    /// The RFC 6749 §5.2 error that carries it, with `detail` after the description.
    fn error(self, detail: &str) -> OAuthError {
        let d = if detail.is_empty() {
            self.description().to_string()
        } else {
            format!("{}: {detail}", self.description())
        };
        match self {
            ExchangeRefusal::UnauthorizedClient => OAuthError::UnauthorizedClient(d),
            ExchangeRefusal::Target => OAuthError::InvalidTarget(d),
            ExchangeRefusal::Scope => OAuthError::InvalidScope(d),
            ExchangeRefusal::InvalidRequest
            | ExchangeRefusal::SubjectToken
            | ExchangeRefusal::ActorToken
            | ExchangeRefusal::Binding
            | ExchangeRefusal::ChainTooLong => OAuthError::InvalidRequest(d),
        }
    }
}

/// The `result` label of an exchange that issued a token.
const ISSUED: &str = "issued";

/// Which token of the request a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Subject,
    Actor,
}

impl Role {
    fn param(self) -> &'static str {
        match self {
            Role::Subject => "subject_token",
            Role::Actor => "actor_token",
        }
    }

    fn refusal(self) -> ExchangeRefusal {
        match self {
            Role::Subject => ExchangeRefusal::SubjectToken,
            Role::Actor => ExchangeRefusal::ActorToken,
        }
    }
}

/// The `TokenExchange` service.
pub(crate) struct TokenExchange {
    sessions: Arc<Sessions>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
}

impl TokenExchange {
    pub(crate) fn new(
        sessions: Arc<Sessions>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> TokenExchange {
        // Every series from the start, so that a dashboard's rate of refusals is 0, not absent.
        metrics.token_exchanges.with_label_values(&[ISSUED]);
        for r in ExchangeRefusal::ALL {
            metrics.token_exchanges.with_label_values(&[r.as_label()]);
        }
        TokenExchange {
            sessions,
            clock,
            metrics,
        }
    }

    /// Counts and logs a refusal.
    pub(crate) fn count(&self, reason: ExchangeRefusal) {
        self.metrics
            .token_exchanges
            .with_label_values(&[reason.as_label()])
            .inc();
        tracing::info!(reason = reason.as_label(), "token exchange refused");
    }

    /// Counts and logs a refusal; gives the error that answers it.
    fn refuse(&self, reason: ExchangeRefusal, detail: &str) -> OAuthError {
        self.count(reason);
        reason.error(detail)
    }

    /// `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` (RFC 8693 §2) for a
    /// client already authenticated and allowed the grant; `proof` is the request's DPoP
    /// proof, already checked and spent (docs/dpop.md).
    pub(crate) async fn exchange(
        &self,
        client: &ClientRecord,
        req: &TokenRequest,
        proof: Option<Proven>,
    ) -> Result<TokenResponse, OAuthError> {
        // Checked by `OAuth::token_grant` already; held here too, as the rule of this grant.
        if !client.is_confidential() {
            return Err(self.refuse(
                ExchangeRefusal::UnauthorizedClient,
                "token exchange needs a confidential client",
            ));
        }
        let allowed = &client.meta.token_exchange_audiences;
        if allowed.is_empty() {
            return Err(self.refuse(
                ExchangeRefusal::Target,
                "its token_exchange_audiences is empty, so it may exchange for none",
            ));
        }
        let issued_type = self.check_types(req)?;
        let named = self.named_audiences(req)?;
        let (subject_token, actor_token) = match (&req.subject_token, &req.actor_token) {
            (Some(s), a) => (s.as_str(), a.as_deref()),
            (None, _) => {
                return Err(self.refuse(
                    ExchangeRefusal::InvalidRequest,
                    "missing parameter subject_token",
                ))
            }
        };
        let jkt = proof.as_ref().map(|p| p.jkt.as_str());
        let subject = self.live_token(Role::Subject, subject_token, jkt).await?;
        let act = match actor_token {
            Some(token) => {
                let actor = self.live_token(Role::Actor, token, jkt).await?;
                if actor.client_id != client.client_id {
                    return Err(self.refuse(
                        ExchangeRefusal::ActorToken,
                        "it was issued to another client; an actor token must be the \
                         authenticated client's own",
                    ));
                }
                Actor::new(actor.sub, Some(actor.client_id))
            }
            None => Actor::new(client.client_id.clone(), Some(client.client_id.clone())),
        }
        .after(subject.act.clone());
        if act.depth() > MAX_ACT_DEPTH {
            return Err(self.refuse(
                ExchangeRefusal::ChainTooLong,
                &format!("at most {MAX_ACT_DEPTH} actors"),
            ));
        }
        // No audience named: the subject token's own, which the policy must allow as well.
        let audiences: Vec<String> = if named.is_empty() {
            subject.aud.values().into_iter().map(String::from).collect()
        } else {
            named
        };
        if let Some(a) = audiences.iter().find(|a| !allowed.contains(a)) {
            return Err(self.refuse(
                ExchangeRefusal::Target,
                &format!("{a:?} is not among its token_exchange_audiences"),
            ));
        }
        let scope = self.scope(req.scope.as_deref(), &subject, &client.scopes)?;
        let aud = match audiences.as_slice() {
            [one] => Audience::One(one.clone()),
            _ => Audience::Many(audiences),
        };
        let (access_token, expires_in) = self.sessions.sign_exchanged_access(
            client,
            Exchanged {
                subject: &subject,
                aud,
                scope: &scope,
                act,
                jkt,
            },
        )?;
        self.metrics
            .token_exchanges
            .with_label_values(&[ISSUED])
            .inc();
        tracing::info!(client_id = %client.client_id, sub = %subject.sub,
            bound = jkt.is_some(), "token exchanged");
        Ok(TokenResponse {
            access_token,
            token_type: token_type(jkt.is_some()),
            expires_in,
            refresh_token: None,
            scope,
            id_token: None,
            issued_token_type: Some(issued_type),
        })
    }

    /// The token types of the request (RFC 8693 §2.1, §3): the subject and actor tokens are
    /// access tokens (`access_token` or `jwt`, the same tokens), an actor token comes with
    /// its type and a type with its token, and the token asked for is an access token.
    /// Answers the `issued_token_type`.
    fn check_types(&self, req: &TokenRequest) -> Result<&'static str, OAuthError> {
        let bad = |d: &str| Err(self.refuse(ExchangeRefusal::InvalidRequest, d));
        let access_type = |t: &str| t == TOKEN_TYPE_ACCESS || t == TOKEN_TYPE_JWT;
        match req.subject_token_type.as_deref() {
            None => return bad("missing parameter subject_token_type"),
            Some(t) if access_type(t) => {}
            Some(TOKEN_TYPE_REFRESH | TOKEN_TYPE_ID) => {
                return bad(
                    "refresh tokens and ID tokens are never exchanged: the subject_token must \
                     be an access token (urn:ietf:params:oauth:token-type:access_token)",
                )
            }
            Some(_) => {
                return bad(
                    "unsupported subject_token_type: tokend exchanges its access tokens \
                     (urn:ietf:params:oauth:token-type:access_token or …:jwt)",
                )
            }
        }
        match (&req.actor_token, req.actor_token_type.as_deref()) {
            (None, None) => {}
            (Some(_), None) => return bad("actor_token_type is required with actor_token"),
            (None, Some(_)) => return bad("actor_token_type without actor_token"),
            (Some(_), Some(t)) if access_type(t) => {}
            (Some(_), Some(_)) => {
                return bad(
                    "unsupported actor_token_type: the actor token must be an access token of \
                     this client (urn:ietf:params:oauth:token-type:access_token or …:jwt)",
                )
            }
        }
        match req.requested_token_type.as_deref() {
            None | Some(TOKEN_TYPE_ACCESS) => Ok(TOKEN_TYPE_ACCESS),
            Some(TOKEN_TYPE_JWT) => Ok(TOKEN_TYPE_JWT),
            Some(_) => bad(
                "unsupported requested_token_type: an exchange issues an access token \
                 (urn:ietf:params:oauth:token-type:access_token or …:jwt), never a refresh \
                 or ID token",
            ),
        }
    }

    /// The audiences the request names, `audience` then `resource` (RFC 8693 §2.1), each
    /// well formed, duplicates dropped.
    fn named_audiences(&self, req: &TokenRequest) -> Result<Vec<String>, OAuthError> {
        let mut named: Vec<String> = Vec::new();
        for (param, values, problem) in [
            (
                "audience",
                &req.audience,
                audience_problem as fn(&str) -> Option<&'static str>,
            ),
            (
                "resource",
                &req.resource,
                resource_problem as fn(&str) -> Option<&'static str>,
            ),
        ] {
            for v in values {
                if let Some(p) = problem(v.as_str()) {
                    return Err(self.refuse(ExchangeRefusal::Target, &format!("{param} {v:?} {p}")));
                }
                if !named.contains(v) {
                    named.push(v.clone());
                }
            }
        }
        if named.len() > MAX_RESOURCES {
            return Err(self.refuse(
                ExchangeRefusal::Target,
                &format!("more than {MAX_RESOURCES} audiences"),
            ));
        }
        Ok(named)
    }

    /// The subject or actor token, checked as protected routes check an access token
    /// (`Sessions::check_issued_access`: signature, times, its `jti`, its family, the user's
    /// session marks), unexpired without leeway (the new token must not outlive it), and,
    /// when bound to a DPoP key, proven by the request's proof (docs/token_exchange.md,
    /// "DPoP").
    async fn live_token(
        &self,
        role: Role,
        token: &str,
        jkt: Option<&str>,
    ) -> Result<AccessClaims, OAuthError> {
        let claims = match self.sessions.check_issued_access(token).await {
            Ok(p) => p.claims,
            Err(Error::TokenRejected(r)) => {
                return Err(self.refuse(role.refusal(), r.description()));
            }
            Err(e) => return Err(e.into()),
        };
        if claims.exp <= self.clock.now() {
            return Err(self.refuse(role.refusal(), Refusal::Expired.description()));
        }
        if let Some(cnf) = &claims.cnf {
            let dpop = self.sessions.dpop();
            match jkt {
                None => {
                    self.count(ExchangeRefusal::Binding);
                    return Err(OAuthError::DpopProof(dpop.refused(ProofRefusal::Missing)));
                }
                Some(k) if k != cnf.jkt => {
                    dpop.refused(ProofRefusal::Key);
                    return Err(self.refuse(
                        ExchangeRefusal::Binding,
                        &format!("{} is bound to another key than the proof's", role.param()),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(claims)
    }

    /// The scope of the new token: the one asked for, each scope both the subject token's
    /// and the client's; nothing asked for, every scope of the subject token the client may
    /// have (RFC 8693 §2.1, RFC 6749 §3.3).
    fn scope(
        &self,
        requested: Option<&str>,
        subject: &AccessClaims,
        client_scopes: &[String],
    ) -> Result<String, OAuthError> {
        let held = scope_tokens(&subject.scope);
        let allowed = |s: &str| held.contains(&s) && client_scopes.iter().any(|c| c == s);
        let Some(requested) = requested else {
            let kept: Vec<&str> = held.iter().copied().filter(|s| allowed(s)).collect();
            return Ok(dedup(kept).join(" "));
        };
        let mut out: Vec<&str> = Vec::new();
        for s in scope_tokens(requested) {
            if !held.contains(&s) {
                return Err(self.refuse(
                    ExchangeRefusal::Scope,
                    &format!("the subject token does not hold {s:?}"),
                ));
            }
            if !client_scopes.iter().any(|c| c == s) {
                return Err(self.refuse(
                    ExchangeRefusal::Scope,
                    &format!("{s:?} is not one of this client's scopes"),
                ));
            }
            out.push(s);
        }
        Ok(dedup(out).join(" "))
    }
}

/// Drops repeated scope tokens, keeping the first of each.
fn dedup(list: Vec<&str>) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::with_capacity(list.len());
    for s in list {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_refusals_map_to_their_rfc_errors() {
        let labels: std::collections::HashSet<_> =
            ExchangeRefusal::ALL.iter().map(|r| r.as_label()).collect();
        assert_eq!(labels.len(), ExchangeRefusal::ALL.len());
        assert!(!labels.contains(ISSUED));
        assert!(matches!(
            ExchangeRefusal::Target.error("x"),
            OAuthError::InvalidTarget(d) if d.ends_with(": x")
        ));
        assert!(matches!(
            ExchangeRefusal::Scope.error(""),
            OAuthError::InvalidScope(_)
        ));
        assert!(matches!(
            ExchangeRefusal::UnauthorizedClient.error(""),
            OAuthError::UnauthorizedClient(_)
        ));
        for r in [
            ExchangeRefusal::InvalidRequest,
            ExchangeRefusal::SubjectToken,
            ExchangeRefusal::ActorToken,
            ExchangeRefusal::Binding,
            ExchangeRefusal::ChainTooLong,
        ] {
            assert!(
                matches!(r.error(""), OAuthError::InvalidRequest(_)),
                "{r:?}"
            );
        }
    }

    #[test]
    fn repeated_scopes_are_dropped_in_order() {
        assert_eq!(dedup(vec!["b", "a", "b"]), ["b", "a"]);
    }
}
