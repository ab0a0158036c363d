//! What policy grants a first exchange: the granting policy, the
//! delegation rule for an actor, and the tiers the request falls in
//! (human approval, JIT grant, required binding).

use super::authenticate::{AuthenticatedActor, AuthenticatedSubject};
use super::{
    ClientAuthReason, Context, DetailsReason, ExchangeError, Exchanger, MalformedReason,
    TokenReason,
};
use crate::mint::claims::{Actor, Confirmation, MayAct};
use crate::policy::delegation::{may_act_of, ChainActor, Delegation, DelegationDenial};
use crate::policy::{Denial, Subject, MTLS_ISSUER};

/// What policy decided for a first exchange.
pub(super) struct Decision<'p> {
    /// The granting policy.
    pub(super) policy: &'p crate::policy::CompiledPolicy,
    /// For a delegation: the actor's policy and the new `act`.
    pub(super) delegation: Option<(&'p crate::policy::CompiledPolicy, Actor)>,
    /// The subject token's `may_act` (carried into the token).
    pub(super) may_act: Option<MayAct>,
}

impl Decision<'_> {
    pub(super) fn actor_policy(&self) -> Option<&crate::policy::CompiledPolicy> {
        self.delegation.as_ref().map(|d| d.0)
    }
}

/// The tiers a granted request falls in, and its binding.
pub(super) struct Tiers {
    /// A human approval is needed (approval scopes, or the guard stepped up).
    pub(super) needs_approval: bool,
    /// The JIT scopes: one use of a grant is needed.
    pub(super) jit: Vec<String>,
    /// `cnf` of the token.
    pub(super) cnf: Option<Confirmation>,
}

impl Exchanger {
    /// Policy: one policy must allow the audience and every scope.
    /// Delegation: the actor's own policy must allow the same audience and
    /// scopes and list the subject's issuer in `may_act_for`; the subject
    /// token's `may_act` binds this hop and every later one (it is carried
    /// into the token).
    pub(super) fn decide(
        &self,
        ctx: &Context<'_>,
        subject: &AuthenticatedSubject,
    ) -> Result<Decision<'_>, ExchangeError> {
        let req = ctx.req;
        let subj = Subject {
            issuer: &subject.issuer_name,
            subject: &subject.sub,
            claims: subject.claims.as_ref(),
        };
        let audience = req.target.as_str();
        let policy = self
            .policies
            .decide(&subj, audience, &req.scope)
            .map_err(|d| match d {
                Denial::NoMatchingPolicy => ExchangeError::NoPolicy,
                Denial::AudienceNotAllowed => ExchangeError::Target,
                Denial::ScopeNotAllowed { refused } => ExchangeError::Scope(refused.to_string()),
            })?;
        let may_act = may_act_of(subject.claims.as_ref())
            .map_err(|_| ExchangeError::SubjectToken(TokenReason::MayActMalformed))?;
        let delegation = self.delegate(
            &Delegation {
                subject_issuer: &subject.issuer_name,
                subject: &subject.sub,
                may_act: may_act.as_ref(),
                audience,
                scopes: &req.scope,
            },
            None,
            ctx.actor.as_ref(),
        )?;
        Ok(Decision {
            policy,
            delegation,
            may_act,
        })
    }

    /// The delegation rule ([`PolicySet::delegate`], the one the CLI's
    /// `policy explain` runs too) for `d` and this request's actor, if any, on top of
    /// the prior actors of the subject token's `act`: every actor of the
    /// chain is checked against the current policies. Returns the new
    /// actor's policy and the new `act`, when there is a new actor.
    pub(super) fn delegate<'a>(
        &'a self,
        d: &Delegation<'_>,
        prior: Option<&Actor>,
        actor: Option<&AuthenticatedActor>,
    ) -> Result<Option<(&'a crate::policy::CompiledPolicy, Actor)>, ExchangeError> {
        let mut chain = Vec::new();
        if let Some(a) = actor {
            chain.push(ChainActor {
                issuer: &a.issuer_name,
                iss: a.iss.as_deref(),
                sub: &a.sub,
                claims: a.claims.as_ref(),
            });
        }
        let mut link = prior;
        while let Some(l) = link {
            // MAX_REEXCHANGE_DEPTH and max_depth bound real chains; a longer
            // one is refused by the depth check below anyway.
            if chain.len() > crate::mint::claims::MAX_ACTOR_DEPTH {
                return Err(ExchangeError::ActorToken(TokenReason::ActChainTooDeep));
            }
            let issuer = match l.iss.as_deref() {
                None => MTLS_ISSUER,
                Some(iss) => self
                    .issuers
                    .get(iss)
                    .map(|v| v.config().name.as_str())
                    .ok_or(ExchangeError::ActorToken(TokenReason::ActorIssuerUnknown))?,
            };
            chain.push(ChainActor {
                issuer,
                iss: l.iss.as_deref(),
                sub: &l.sub,
                claims: None,
            });
            link = l.act.as_deref();
        }
        let pa = self.policies.delegate(d, &chain).map_err(|e| match e {
            DelegationDenial::Policy {
                denial: Denial::AudienceNotAllowed,
                ..
            } => ExchangeError::Target,
            DelegationDenial::Policy {
                denial: Denial::ScopeNotAllowed { refused },
                ..
            } => ExchangeError::Scope(refused.to_string()),
            other => ExchangeError::ActorToken(TokenReason::of_delegation(&other)),
        })?;
        Ok(match (pa, actor) {
            (Some(pa), Some(a)) => Some((
                pa,
                Actor {
                    sub: a.sub.clone(),
                    iss: a.iss.clone(),
                    act: prior.cloned().map(Box::new),
                },
            )),
            _ => None,
        })
    }

    /// The tiers of a granted request. Approval: such scopes only through a
    /// human approval of exactly this request (or when the guard steps up);
    /// policies may require RFC 9396 details for them. JIT: such scopes only
    /// with a grant. And a policy may require a bound token.
    pub(super) fn tiers(
        &self,
        ctx: &Context<'_>,
        d: &Decision<'_>,
        guard_step_up: bool,
    ) -> Result<Tiers, ExchangeError> {
        let req = ctx.req;
        let (policy, actor_policy) = (d.policy, d.actor_policy());
        let scope_approval = req.scope.iter().any(|s| {
            policy.is_approval_scope(s) || actor_policy.is_some_and(|p| p.is_approval_scope(s))
        });
        let needs_approval = scope_approval || guard_step_up;
        if scope_approval
            && req.authorization_details.is_none()
            && (policy.require_authorization_details()
                || actor_policy.is_some_and(|p| p.require_authorization_details()))
        {
            return Err(ExchangeError::AuthorizationDetails(DetailsReason::Required));
        }
        if !needs_approval && req.approval_id.is_some() {
            return Err(ExchangeError::Malformed(
                MalformedReason::ApprovalIdNotApplicable,
            ));
        }
        let jit: Vec<String> = req
            .scope
            .iter()
            .filter(|s| policy.is_jit_scope(s) || actor_policy.is_some_and(|p| p.is_jit_scope(s)))
            .map(|s| s.to_string())
            .collect();
        let cnf = ctx.binding();
        if policy.require_binding() && cnf.is_none() {
            return Err(ExchangeError::ClientAuth(ClientAuthReason::BindingRequired));
        }
        Ok(Tiers {
            needs_approval,
            jit,
            cnf,
        })
    }
}
