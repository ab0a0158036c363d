//! Consent by backchannel: OpenID CIBA Core 1.0, poll mode. An agent (its
//! client certificate) asks a person, named by `login_hint`, to consent to
//! one action; the person decides on the approval pages; the agent polls
//! `/token` with the CIBA grant and gets, once, a token whose `sub` is the
//! person and `act.sub` the agent.
//!
//! The request is stored as an [`Approval`] with [`CibaRequest`] set, bound
//! (`request_hash`) to exactly the person, the agent, scopes, audience,
//! task and `authorization_details`. Whether the person exists is never
//! looked up: unknown and known people get the same answer.

use serde_json::Value;

use super::authenticate::AuthenticatedActor;
use super::request::{BackchannelRequest, CibaPoll, GrantType, Target, TokenRequest, TokenType};
use super::token::TokenContent;
use super::{
    approval, ClientAuthReason, ExchangeError, Exchanger, Issued, MalformedReason, Noted, Peer,
};
use crate::identity::login::ApprovalLogin;
use crate::policy::delegation::Delegation;
use crate::policy::MTLS_ISSUER;
use crate::store::{Approval, ApprovalCreated, ApprovalState, CibaRequest, PollOutcome};

/// The CIBA grant type at `/token`.
pub const GRANT_CIBA: &str = "urn:openid:params:grant-type:ciba";
/// Longest `binding_message` (characters).
pub const MAX_BINDING_MESSAGE: usize = 64;
/// Longest `login_hint` (bytes).
pub const MAX_LOGIN_HINT: usize = 256;

/// A `/bc-authorize` refusal: HTTP status, CIBA §13 error code, and the
/// precise reason (for the audit record and the log, not the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CibaError {
    /// 400, 401, 403 or 503.
    pub status: u16,
    /// `invalid_request`, `invalid_scope`, `invalid_client`,
    /// `access_denied`, `temporarily_unavailable`.
    pub error: &'static str,
    /// Stable reason code.
    pub reason: &'static str,
}

fn refuse(status: u16, error: &'static str, reason: &'static str) -> CibaError {
    CibaError {
        status,
        error,
        reason,
    }
}

/// A successful `/bc-authorize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CibaStarted {
    /// `auth_req_id`.
    pub auth_req_id: String,
    /// `expires_in`.
    pub expires_in: u64,
    /// `interval`.
    pub interval: u64,
    /// The agent.
    pub agent: String,
    /// The person (as the agent named them).
    pub person: String,
}

impl Exchanger {
    /// `POST /bc-authorize`: checks the agent (client certificate) and its
    /// policy (it may act for `login_issuer` users, for this audience and
    /// every scope), then records the consent request and notifies.
    pub async fn ciba_authorize(
        &self,
        parsed: Result<BackchannelRequest, CibaError>,
        peer: &Peer,
        login: &ApprovalLogin,
    ) -> Result<CibaStarted, CibaError> {
        let now = self.clock.now();
        let agent = match peer {
            Peer::Identified(p) if p.not_after > now => p.clone(),
            _ => return Err(refuse(401, "invalid_client", "client_certificate_required")),
        };
        // A malformed request is refused after the client check (the form
        // was parsed by the HTTP layer, `oauth::request::bc_authorize_request`).
        let BackchannelRequest {
            login_hint,
            scope,
            audience,
            binding_message,
            task,
            authorization_details: details,
            requested_expiry,
        } = parsed?;
        let person = login_hint.as_str();
        let expiry = requested_expiry.map_or(self.approvals_ttl, |e| e.min(self.approvals_ttl));
        // The agent's policy must allow acting for this IdP's users, for
        // exactly this audience and every scope (the person's own policies
        // are checked when they consent: their claims are known only then).
        let actor = AuthenticatedActor {
            issuer_name: MTLS_ISSUER.to_string(),
            iss: None,
            sub: agent.subject.clone(),
            claims: None,
            not_after: agent.not_after,
            via_mtls: true,
        };
        let delegated = self
            .delegate(
                &Delegation {
                    subject_issuer: &login.issuer_name,
                    subject: person,
                    may_act: None,
                    audience: &audience,
                    scopes: &scope,
                },
                None,
                Some(&actor),
            )
            .map_err(|_| refuse(403, "access_denied", "agent_policy_denies"))?;
        let Some((policy, _)) = delegated else {
            return Err(refuse(403, "access_denied", "agent_policy_denies"));
        };
        if self
            .stores
            .revocations
            .is_blocked(&agent.subject, now)
            .await
            .map_err(|_| refuse(503, "temporarily_unavailable", "store_unavailable"))?
        {
            return Err(refuse(403, "access_denied", "blocked"));
        }
        let bound = approval::BoundRequest {
            subject_issuer: &login.issuer_name,
            subject: person,
            actor: Some((MTLS_ISSUER, agent.subject.as_str())),
            scopes: scope.iter().map(|s| s.as_str()).collect(),
            audience: &audience,
            task: task.as_deref(),
            details: details.as_ref(),
        };
        let a = Approval {
            id: uuid::Uuid::new_v4().to_string(),
            request_hash: bound.hash(),
            requester: agent.subject.clone(),
            subject: person.to_string(),
            actors: vec![agent.subject.clone()],
            owner: policy.owner().map(str::to_string),
            policy: policy.name().to_string(),
            scopes: scope.iter().map(|s| s.to_string()).collect(),
            audience: audience.clone(),
            task,
            authorization_details: details,
            created_at: now,
            expires_at: now.saturating_add(expiry),
            state: ApprovalState::Pending,
            decided_by: None,
            decided_at: None,
            reason: None,
            ciba: Some(CibaRequest {
                person_issuer: login.issuer_name.clone(),
                binding_message,
            }),
        };
        let id = match self.stores.approvals.create_approval(&a).await {
            Ok(ApprovalCreated::Created) => {
                if let Some(w) = &self.webhook {
                    w.notify(&a);
                }
                a.id.clone()
            }
            Ok(ApprovalCreated::Existing(id)) => id,
            Ok(ApprovalCreated::Full) => {
                return Err(refuse(503, "temporarily_unavailable", "approvals_full"))
            }
            Err(_) => return Err(refuse(503, "temporarily_unavailable", "store_unavailable")),
        };
        crate::telemetry::metrics()
            .approvals
            .with_label_values(&["requested"])
            .inc();
        Ok(CibaStarted {
            auth_req_id: id,
            expires_in: a.expires_at.saturating_sub(now),
            interval: self.approvals_interval.max(1),
            agent: agent.subject.clone(),
            person: a.subject,
        })
    }

    /// `POST /token` with the CIBA grant: one poll of `auth_req_id` by the
    /// agent that asked (same client certificate). Approved: the token, once
    /// (`sub` = the person, `act.sub` = the agent, exactly the approved
    /// scope, audience, details and task, bound to the agent's certificate),
    /// with the agent's policy checked again now.
    pub async fn ciba_redeem(
        &self,
        poll: CibaPoll,
        peer: &Peer,
        noted: &mut Noted,
    ) -> Result<Issued, ExchangeError> {
        let now = self.clock.now();
        let agent = match peer {
            Peer::Identified(p) if p.not_after > now => p.clone(),
            Peer::Unusable(r) => return Err(ExchangeError::ClientAuth(ClientAuthReason::Peer(r))),
            _ => {
                return Err(ExchangeError::ClientAuth(
                    ClientAuthReason::CertificateRequired,
                ))
            }
        };
        noted.actor = Some(agent.subject.clone());
        let Some(id) = poll.auth_req_id else {
            return Err(ExchangeError::Malformed(MalformedReason::AuthReqIdMissing));
        };
        let a = match self.stores.approvals.get_approval(&id, now).await? {
            Some(a) if a.ciba.is_some() && a.requester == agent.subject => a,
            _ => return Err(ExchangeError::ApprovalInvalid),
        };
        noted.subject = Some(a.subject.clone());
        let Some(ciba) = a.ciba.clone() else {
            return Err(ExchangeError::ApprovalInvalid);
        };
        let a = match self
            .stores
            .approvals
            .poll(
                &id,
                &agent.subject,
                &a.request_hash,
                self.approvals_interval,
                now,
            )
            .await?
        {
            PollOutcome::Redeemed(a) => *a,
            PollOutcome::Pending => {
                return Err(ExchangeError::ApprovalPending {
                    id,
                    interval: self.approvals_interval.max(1),
                })
            }
            PollOutcome::SlowDown => {
                return Err(ExchangeError::ApprovalSlowDown {
                    interval: self.approvals_interval.max(1),
                })
            }
            PollOutcome::Denied => return Err(ExchangeError::ApprovalDenied),
            PollOutcome::Expired => return Err(ExchangeError::ApprovalExpired),
            PollOutcome::Invalid => return Err(ExchangeError::ApprovalInvalid),
        };
        crate::telemetry::metrics()
            .approvals
            .with_label_values(&["redeemed"])
            .inc();
        let scope: crate::policy::scope::ScopeSet = a
            .scopes
            .join(" ")
            .parse()
            .map_err(|_| ExchangeError::ApprovalInvalid)?;
        // The agent's policy, as it stands now.
        let actor = AuthenticatedActor {
            issuer_name: MTLS_ISSUER.to_string(),
            iss: None,
            sub: agent.subject.clone(),
            claims: None,
            not_after: agent.not_after,
            via_mtls: true,
        };
        let (policy, act) = self
            .delegate(
                &Delegation {
                    subject_issuer: &ciba.person_issuer,
                    subject: &a.subject,
                    may_act: None,
                    audience: &a.audience,
                    scopes: &scope,
                },
                None,
                Some(&actor),
            )?
            .ok_or(ExchangeError::NoPolicy)?;
        if self
            .stores
            .revocations
            .is_blocked(&agent.subject, now)
            .await?
            || self.stores.revocations.is_blocked(&a.subject, now).await?
        {
            return Err(ExchangeError::Blocked);
        }
        let req = TokenRequest {
            grant_type: GrantType::ClientCredentials,
            subject_token: None,
            subject_token_type: TokenType::AccessToken,
            actor_token: None,
            actor_token_type: None,
            target: Target::Audience(a.audience.clone()),
            scope,
            requested_token_type: None,
            expires_in: None,
            task: a.task.clone(),
            approval_id: Some(a.id.clone()),
            authorization_details: a.authorization_details.clone(),
            dpop: None,
        };
        let exp = self.expiry(&req, policy, &[agent.not_after], now)?;
        let claims = self.claims_for(
            policy,
            TokenContent {
                sub: a.subject.clone(),
                audience: &a.audience,
                exp,
                client_id: agent.subject.clone(),
                scope: req.scope.to_string(),
                txn: a
                    .task
                    .clone()
                    .unwrap_or_else(|| crate::mint::random_uuid().to_string()),
                act: Some(act),
                cnf: super::token::binding(Some(&agent), Some(&actor), None),
                grant: None,
                authorization_details: a.authorization_details.clone(),
                ancestors: Vec::new(),
                may_act: None,
            },
            now,
        );
        let mut issued = self.sign(&req, claims, now)?;
        issued.approval = Some(a.id);
        Ok(issued)
    }
}

/// The CIBA metadata fields (RFC 8414 / CIBA §4) for `issuer`.
pub fn metadata(issuer: &str) -> [(&'static str, Value); 2] {
    [
        (
            "backchannel_authentication_endpoint",
            Value::String(format!("{issuer}/bc-authorize")),
        ),
        (
            "backchannel_token_delivery_modes_supported",
            serde_json::json!(["poll"]),
        ),
    ]
}
