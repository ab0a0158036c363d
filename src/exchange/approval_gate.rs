//! The store-side gates right before signing: a human approval of exactly
//! this request (asked for, or redeemed once), then one use of a JIT grant.

use super::authenticate::AuthenticatedSubject;
use super::{approval, Context, ExchangeError, Exchanger};

impl Exchanger {
    /// Approval: asks for one, or redeems the approved one (atomically,
    /// once). Without `approval_id`: records a pending approval of exactly
    /// this request (and tells the webhook) and answers
    /// `authorization_pending`. With it: one poll; the approval is returned
    /// only when it was approved and this poll consumed it.
    pub(super) async fn approval_gate(
        &self,
        ctx: &Context<'_>,
        subject: &AuthenticatedSubject,
        policy: &crate::policy::CompiledPolicy,
    ) -> Result<crate::store::Approval, ExchangeError> {
        use crate::store::{Approval, ApprovalCreated, ApprovalState, PollOutcome};
        let (req, now, actor) = (ctx.req, ctx.now, ctx.actor.as_ref());
        let requester = match (ctx.peer, actor) {
            (Some(p), _) => p.subject.clone(),
            (None, Some(a)) => a.sub.clone(),
            (None, None) => subject.sub.clone(),
        };
        let bound = approval::BoundRequest {
            subject_issuer: &subject.issuer_name,
            subject: &subject.sub,
            actor: actor.map(|a| (a.issuer_name.as_str(), a.sub.as_str())),
            scopes: req.scope.iter().map(|s| s.as_str()).collect(),
            audience: req.target.as_str(),
            task: req.task.as_deref(),
            details: req.authorization_details.as_ref(),
        };
        let request_hash = bound.hash();
        let interval = self.approvals_interval;
        // RFC 8628 §3.2: clients default to 5 s when no interval is given;
        // tell them at least 1 s even when slow_down is disabled.
        let shown_interval = interval.max(1);
        let Some(id) = req.approval_id.as_deref() else {
            let a = Approval {
                id: uuid::Uuid::new_v4().to_string(),
                request_hash,
                requester,
                subject: subject.sub.clone(),
                actors: actor.map(|a| vec![a.sub.clone()]).unwrap_or_default(),
                owner: policy.owner().map(str::to_string),
                policy: policy.name().to_string(),
                scopes: req.scope.iter().map(|s| s.to_string()).collect(),
                audience: req.target.as_str().to_string(),
                task: req.task.clone(),
                authorization_details: req.authorization_details.clone(),
                created_at: now,
                expires_at: now.saturating_add(self.approvals_ttl),
                state: ApprovalState::Pending,
                decided_by: None,
                decided_at: None,
                reason: None,
                ciba: None,
            };
            match self.stores.approvals.create_approval(&a).await? {
                ApprovalCreated::Created => {}
                // The same request asked again while the first ask waits:
                // one approval, one decision (no second webhook).
                ApprovalCreated::Existing(id) => {
                    return Err(ExchangeError::ApprovalPending {
                        id,
                        interval: shown_interval,
                    });
                }
                ApprovalCreated::Full => return Err(ExchangeError::ApprovalsFull),
            }
            // The pending answer itself is audited by the token route
            // (a refusal with reason `authorization_pending`, naming the
            // approval id in its detail).
            tracing::info!(approval = %a.id, policy = %a.policy, expires_at = a.expires_at,
                "human approval requested");
            crate::telemetry::metrics()
                .approvals
                .with_label_values(&["requested"])
                .inc();
            if let Some(w) = &self.webhook {
                w.notify(&a);
            }
            return Err(ExchangeError::ApprovalPending {
                id: a.id,
                interval: shown_interval,
            });
        };
        match self
            .stores
            .approvals
            .poll(id, &requester, &request_hash, interval, now)
            .await?
        {
            PollOutcome::Redeemed(a) => {
                crate::telemetry::metrics()
                    .approvals
                    .with_label_values(&["redeemed"])
                    .inc();
                Ok(*a)
            }
            PollOutcome::Pending => Err(ExchangeError::ApprovalPending {
                id: id.to_string(),
                interval: shown_interval,
            }),
            PollOutcome::SlowDown => Err(ExchangeError::ApprovalSlowDown {
                interval: shown_interval,
            }),
            PollOutcome::Denied => Err(ExchangeError::ApprovalDenied),
            PollOutcome::Expired => Err(ExchangeError::ApprovalExpired),
            PollOutcome::Invalid => Err(ExchangeError::ApprovalInvalid),
        }
    }

    /// JIT scopes: one use of a live grant covering subject, audience and
    /// those scopes is consumed atomically, last, right before signing; the
    /// grant's end caps `exp`.
    pub(super) async fn consume_grant(
        &self,
        ctx: &Context<'_>,
        subject: &str,
        jit: &[String],
        exp: &mut u64,
    ) -> Result<Option<crate::store::Grant>, ExchangeError> {
        if jit.is_empty() {
            return Ok(None);
        }
        let req = ctx.req;
        let g = self
            .stores
            .grants
            .consume(
                subject,
                req.target.as_str(),
                jit,
                req.task.as_deref(),
                ctx.now,
            )
            .await?
            .ok_or_else(|| ExchangeError::GrantRequired(jit.join(" ")))?;
        *exp = (*exp).min(g.expires_at);
        if *exp <= ctx.now {
            return Err(ExchangeError::NoLifetime);
        }
        crate::telemetry::metrics().grants_consumed.inc();
        Ok(Some(g))
    }
}
