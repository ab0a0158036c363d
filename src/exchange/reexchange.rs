//! Attenuation: one of Tessera's own tokens exchanged for a narrower one.

use super::token::TokenContent;
use super::{
    ClientAuthReason, Context, ExchangeError, Exchanger, GuardAsk, Issued, MalformedReason, Noted,
    TokenReason, MAX_REEXCHANGE_DEPTH,
};
use crate::jose::jws;
use crate::policy::delegation::Delegation;

impl Exchanger {
    /// Attenuation: a Tessera token exchanged for a narrower one. Scopes a
    /// subset of the parent's, audience and scopes allowed by the policy that
    /// granted the parent, lifetime within the parent's, `txn`, `act`,
    /// `grant` inherited, and the parent's `jti` recorded so that revoking
    /// it revokes this token too.
    pub(super) async fn reexchange(
        &self,
        ctx: &Context<'_>,
        parsed: jws::UnverifiedJws,
        noted: &mut Noted,
    ) -> Result<Issued, ExchangeError> {
        let (req, now, peer, actor) = (ctx.req, ctx.now, ctx.peer, ctx.actor.as_ref());
        let parent = self
            .own
            .check_decoded(parsed, now)
            .map_err(|r| ExchangeError::SubjectToken(TokenReason::Own(r)))?;
        let p = &parent.claims;
        noted.subject = Some(p.sub.clone());
        if self
            .stores
            .revocations
            .is_revoked(&parent.facts(), now)
            .await?
        {
            return Err(ExchangeError::SubjectToken(TokenReason::Revoked));
        }
        if self.stores.revocations.is_blocked(&p.sub, now).await? {
            return Err(ExchangeError::Blocked);
        }
        // Proof of possession: a certificate-bound parent only over that
        // certificate; other binding methods are not accepted here.
        if let Some(c) = &p.cnf {
            match (&c.x5t_s256, &c.jkt) {
                (Some(x5t), None) => {
                    if peer.is_none_or(|pe| &pe.thumbprint != x5t) {
                        return Err(ExchangeError::SubjectToken(TokenReason::BindingMismatch));
                    }
                }
                (None, Some(jkt)) => {
                    if ctx.dpop.as_ref().is_none_or(|d| &d.jkt != jkt) {
                        return Err(ExchangeError::SubjectToken(
                            TokenReason::DpopBindingMismatch,
                        ));
                    }
                }
                _ => return Err(ExchangeError::SubjectToken(TokenReason::BindingUnsupported)),
            }
        }
        // Holder: a workload presenting over mTLS must be the parent's client,
        // unless it acts for the subject under the delegation rules below.
        if let Some(pe) = peer {
            if actor.is_none() && pe.subject != p.client_id {
                return Err(ExchangeError::SubjectToken(TokenReason::PresenterNotHolder));
            }
            if pe.subject != p.sub && self.stores.revocations.is_blocked(&pe.subject, now).await? {
                return Err(ExchangeError::Blocked);
            }
        }
        if p.ancestors.len() >= MAX_REEXCHANGE_DEPTH {
            return Err(ExchangeError::SubjectToken(TokenReason::ReexchangeTooDeep));
        }
        // Never wider: scopes within the parent's ...
        let parent_scopes: crate::policy::scope::ScopeSet = p
            .scope
            .parse()
            .map_err(|_| ExchangeError::SubjectToken(TokenReason::ParentScopeMalformed))?;
        if !req.scope.is_subset(&parent_scopes) {
            let extra: Vec<String> = req
                .scope
                .iter()
                .filter(|s| !parent_scopes.contains(s))
                .map(|s| s.to_string())
                .collect();
            return Err(ExchangeError::Scope(extra.join(" ")));
        }
        // ... and within the policy that granted the parent, which must still exist.
        let policy = p
            .policy
            .as_deref()
            .and_then(|n| self.policies.get(n))
            .ok_or(ExchangeError::NoPolicy)?;
        let audience = req.target.as_str();
        if !policy.allows_audience(audience) {
            return Err(ExchangeError::Target);
        }
        let refused = policy.refused_scopes(&req.scope);
        if !refused.is_empty() {
            return Err(ExchangeError::Scope(refused.to_string()));
        }
        // Every actor of the chain (a new one, and those already in `act`)
        // against the current policies, and the original subject's may_act.
        let delegation = self.delegate(
            &Delegation {
                subject_issuer: policy.issuer(),
                subject: &p.sub,
                may_act: p.may_act.as_ref(),
                audience,
                scopes: &req.scope,
            },
            p.act.as_ref(),
            actor,
        )?;
        if let Some((ap, _)) = &delegation {
            if req.scope.iter().any(|s| ap.is_approval_scope(s)) {
                return Err(ExchangeError::ApprovalRequired(req.scope.to_string()));
            }
        }
        // Anomaly guard (a re-exchange cannot wait for a human: `approval`
        // refuses it).
        self.guard_check(
            GuardAsk {
                subject: &p.sub,
                actor: ctx.actor_sub(),
                audience,
                policy: policy.name(),
                can_ask: false,
                polling: false,
                now,
            },
            noted,
        )
        .await?;
        let cnf = ctx.binding();
        if policy.require_binding() && cnf.is_none() {
            return Err(ExchangeError::ClientAuth(ClientAuthReason::BindingRequired));
        }
        if req.task.as_deref().is_some_and(|t| t != p.txn) {
            return Err(ExchangeError::Malformed(
                MalformedReason::TaskDiffersFromParent,
            ));
        }
        if req.authorization_details.is_some()
            && req.authorization_details != p.authorization_details
        {
            return Err(ExchangeError::Malformed(
                MalformedReason::AuthorizationDetailsDifferFromParent,
            ));
        }
        let (actor_end, actor_policy_end) =
            self.actor_caps(actor, delegation.as_ref().map(|d| d.0), now);
        let exp = self.expiry(
            req,
            policy,
            &[p.exp, ctx.peer_end(), actor_end, actor_policy_end],
            now,
        )?;
        let mut ancestors = Vec::with_capacity(p.ancestors.len() + 1);
        ancestors.push(p.jti.clone());
        ancestors.extend(p.ancestors.iter().cloned());
        let claims = self.claims_for(
            policy,
            TokenContent {
                sub: p.sub.clone(),
                audience,
                exp,
                client_id: actor.map_or_else(|| p.client_id.clone(), |a| a.sub.clone()),
                scope: req.scope.to_string(),
                txn: p.txn.clone(),
                act: match delegation {
                    Some((_, act)) => Some(act),
                    None => p.act.clone(),
                },
                cnf,
                grant: p.grant.clone(),
                authorization_details: p.authorization_details.clone(),
                ancestors,
                may_act: p.may_act.clone(),
            },
            now,
        );
        self.sign(req, claims, now)
    }
}
