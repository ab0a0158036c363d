//! What an exchange's outcome turns into: its audit records and its
//! metrics, in one place. `routes::token` only extracts, calls the exchange,
//! and maps the result to the wire. The refusal's audit record and metric,
//! the anomaly guard's notes (a step-up, a tripped streak, a revocation),
//! and the record of a token withheld because its audit failed are all
//! written here.

use std::time::Duration;

use super::guard::GuardAction;
use super::{Issued, Noted};
use crate::audit::{AuditError, AuditRecord, Auditor, Event};
use crate::telemetry::metrics;

/// What a request asked for, once parsed (for a refusal's audit record).
#[derive(Debug, Default)]
pub struct Asked {
    /// The requested audience (empty before the form was parsed).
    pub audience: String,
    /// The requested scopes.
    pub scopes: String,
    /// The requested task.
    pub task: String,
    /// Who was authenticated and what the guard did.
    pub who: Noted,
}

/// A refused exchange, as the wire answers it.
#[derive(Debug)]
pub struct Refused {
    /// The refusal's reason (`ExchangeError::reason`, `RequestError::reason`).
    pub reason: &'static str,
    /// The OAuth error code on the wire.
    pub error: &'static str,
    /// `temporarily_unavailable` (a store, key or audit outage), not a
    /// refusal on the request's merits.
    pub unavailable: bool,
    /// Detail for the audit record (never sent to the caller).
    pub detail: String,
    /// The answer is `authorization_pending` (an approval was asked for).
    pub approval_pending: bool,
    /// Already audited where it happened ([`record_issued`] failed and
    /// said so): no refusal record.
    pub audited: bool,
}

/// Writes the `issued` record of a token before it leaves (fail closed:
/// on `Err` the token must be withheld). If the failure was partial (one
/// sink has the `issued` record), a best-effort record says this `jti` was
/// withheld, with `withheld_error`: the wire code the caller gets instead
/// (the OAuth table's answer to `ExchangeError::AuditUnavailable`). Counts
/// nothing: the caller's answer is a refusal on `Err`, counted by
/// [`record_refused`], and [`count_issued`] on `Ok`.
pub async fn record_issued(
    auditor: &Auditor,
    i: &Issued,
    client: &str,
    withheld_error: &'static str,
) -> Result<(), AuditError> {
    match auditor.record(issued_record(i, client)).await {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, jti = %i.claims.jti,
                "token withheld: its audit record could not be written");
            // Best effort, without waiting: the audit is likely down.
            auditor.submit(
                AuditRecord::new(Event::Unavailable)
                    .reason("audit_unavailable")
                    .error(withheld_error)
                    .client(client)
                    .subject(&i.claims.sub)
                    .jti(&i.claims.jti)
                    .detail(&format!("token withheld: {e}")),
            );
            Err(e)
        }
    }
}

/// Counts an issued token and how long the exchange took.
pub fn count_issued(elapsed: Duration) {
    let m = metrics();
    m.exchanges.with_label_values(&["issued", "ok"]).inc();
    m.exchange_seconds
        .with_label_values(&["issued"])
        .observe(elapsed.as_secs_f64());
}

/// Audits and counts a refusal, with what the anomaly guard did: a step-up
/// is this refusal's reason; a tripped streak is said in its detail; a
/// revocation gets its own `revoked` record. A record that cannot be
/// written is logged: nothing was granted, the refusal stands.
pub async fn record_refused(
    auditor: &Auditor,
    refused: Refused,
    asked: &Asked,
    client: &str,
    elapsed: Duration,
) {
    let Refused {
        mut reason,
        error,
        unavailable,
        mut detail,
        approval_pending,
        audited,
    } = refused;
    for n in &asked.who.guard {
        match n.action {
            GuardAction::Revoke => {}
            GuardAction::Approval if approval_pending && !n.tripped => {
                reason = n.trigger.reason();
                detail = format!("{detail}; anomaly guard step-up for {}", n.identity);
            }
            _ if n.tripped => {
                detail = format!(
                    "{detail}; anomaly guard: {} of {} tripped, {} from now on",
                    n.trigger.reason(),
                    n.identity,
                    n.action.as_str()
                );
            }
            _ => {}
        }
    }
    let outcome = if unavailable {
        "unavailable"
    } else {
        "refused"
    };
    let m = metrics();
    m.exchanges.with_label_values(&[outcome, reason]).inc();
    m.exchange_seconds
        .with_label_values(&[outcome])
        .observe(elapsed.as_secs_f64());
    if !audited {
        let rec = AuditRecord::new(if unavailable {
            Event::Unavailable
        } else {
            Event::Refused
        })
        .reason(reason)
        .error(error)
        .client(client)
        .subject(asked.who.subject.as_deref().unwrap_or(""))
        .actors(asked.who.actor.clone())
        .audience(&asked.audience)
        .scopes(&asked.scopes)
        .task(&asked.task)
        .detail(&detail);
        if let Err(e) = auditor.record(rec).await {
            tracing::error!(error = %e, reason, "refusal not audited: audit unavailable");
        }
    }
    for n in asked
        .who
        .guard
        .iter()
        .filter(|n| n.action == GuardAction::Revoke)
    {
        let rec = AuditRecord::new(Event::Revoked)
            .reason(n.trigger.reason())
            .client(client)
            .subject(&n.identity)
            .detail(&format!(
                "anomaly guard: every token of the subject revoked, {}",
                crate::audit::restore::block_note(n.blocked_until.unwrap_or_default())
            ));
        if let Err(e) = auditor.record(rec).await {
            // The revocation stands (it only takes authority away).
            tracing::error!(error = %e, "guard revocation not audited: audit unavailable");
        }
    }
}

/// The `issued` record: who got what, under which policy, and the token's
/// `jti` and SHA-256 (never the token).
fn issued_record(i: &Issued, client: &str) -> AuditRecord {
    let c = &i.claims;
    let mut actors = Vec::new();
    let mut a = c.act.as_ref();
    while let Some(x) = a {
        actors.push(x.sub.clone());
        a = x.act.as_deref();
    }
    AuditRecord::new(Event::Issued)
        .client(client)
        .subject(&c.sub)
        .actors(actors)
        .owner(c.owner.as_deref())
        .task(&c.txn)
        .scopes(&i.scope)
        .audience(&c.aud)
        .policy(&i.policy)
        .grant(c.grant.as_deref())
        .jti(&c.jti)
        .token(&i.access_token)
        .detail(
            &i.approval
                .as_deref()
                .map(|a| format!("approved request {a}"))
                .unwrap_or_default(),
        )
}
