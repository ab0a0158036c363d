//! What an operator may ask for, checked in one place: the admin API
//! refuses what these refuse, and the CLI runs the same checks before any
//! round trip (bad usage, exit 2, even with the broker down).
//!
//! One file: the operator verbs share their input checks and their error
//! type, and about 200 of its lines are the unit tests of those checks; the
//! verbs and checks alone are under 800 lines.

use std::time::Duration;

use super::request::valid_task;
use crate::identity::spiffe::SpiffeId;
use crate::store::RevocationKind;

/// Longest revocation value (a jti, subject, task or grant id).
pub const MAX_VALUE_LEN: usize = 2048;

/// Shortest kill-switch block.
pub const MIN_BLOCK: Duration = Duration::from_secs(1);
/// Longest kill-switch block.
pub const MAX_BLOCK: Duration = Duration::from_secs(365 * 24 * 3600);

/// The syntax of an identity an operator names (a revocation or block
/// subject, a grant's subject): a `spiffe://` ID must be a valid SPIFFE ID;
/// anything else (a DNS name, an OIDC `sub` such as
/// `system:serviceaccount:ci:deployer`) is 1..=[`MAX_VALUE_LEN`] bytes with
/// no white space and no control or format characters. Identities Tessera
/// issues tokens for never hold those, so such input is a typo or a paste
/// gone wrong.
pub fn check_identity(s: &str) -> Result<(), InvalidOrder> {
    if s.is_empty() {
        return Err(InvalidOrder::EmptyIdentity);
    }
    if s.len() > MAX_VALUE_LEN {
        return Err(InvalidOrder::IdentityTooLong);
    }
    if s.len() >= 9 && s[..9].eq_ignore_ascii_case("spiffe://") {
        return SpiffeId::parse(s)
            .map(|_| ())
            .map_err(|e| InvalidOrder::SpiffeId {
                value: s.to_string(),
                reason: e.to_string(),
            });
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || crate::text::is_terminal_unsafe(*c))
    {
        return Err(InvalidOrder::NotAnIdentity {
            value: s.to_string(),
            white_space: c.is_whitespace(),
        });
    }
    Ok(())
}

/// The value of a revocation of `kind`: a jti is a UUID (Tessera issues no
/// other), a task id is `[A-Za-z0-9._:-]{1,128}`, a grant id is a UUID, a
/// subject passes [`check_identity`].
pub fn check_revocation(kind: RevocationKind, value: &str) -> Result<(), InvalidOrder> {
    match kind {
        RevocationKind::Jti if uuid::Uuid::parse_str(value).is_err() => {
            Err(InvalidOrder::NotAJti(value.to_string()))
        }
        RevocationKind::Grant if uuid::Uuid::parse_str(value).is_err() => {
            Err(InvalidOrder::NotAGrantId(value.to_string()))
        }
        RevocationKind::Task if !valid_task(value) => {
            Err(InvalidOrder::NotATaskId(value.to_string()))
        }
        RevocationKind::Subject => check_identity(value),
        _ => Ok(()),
    }
}

/// A kill-switch duration (`--block-for`): a duration within
/// [`MIN_BLOCK`]..=[`MAX_BLOCK`].
pub fn parse_block_for(s: &str) -> Result<Duration, InvalidOrder> {
    let d = crate::duration::parse_duration(s).map_err(|e| InvalidOrder::Duration {
        flag: "--block-for",
        source: e,
    })?;
    if d < MIN_BLOCK || d > MAX_BLOCK {
        return Err(InvalidOrder::BlockOutOfRange(s.to_string()));
    }
    Ok(d)
}

/// Longest a JIT grant may live.
pub const MAX_GRANT_TTL: Duration = Duration::from_secs(24 * 3600);

/// A JIT grant's lifetime (`--ttl`): a duration within 1s..=24h.
pub fn check_grant_ttl(s: &str) -> Result<Duration, InvalidOrder> {
    let d = crate::duration::parse_duration(s).map_err(|e| InvalidOrder::Duration {
        flag: "--ttl",
        source: e,
    })?;
    if d < Duration::from_secs(1) || d > MAX_GRANT_TTL {
        return Err(InvalidOrder::GrantTtlOutOfRange(s.to_string()));
    }
    Ok(d)
}

/// Why an operator's order is malformed or out of bounds (nothing was
/// done): the admin API's `invalid_request`, the CLI's exit 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOrder {
    /// An empty identity.
    #[error("an identity cannot be empty")]
    EmptyIdentity,
    /// An identity longer than [`MAX_VALUE_LEN`].
    #[error("an identity is at most {MAX_VALUE_LEN} bytes")]
    IdentityTooLong,
    /// A `spiffe://` identity that is not a valid SPIFFE ID.
    #[error("`{value}` is not a valid SPIFFE ID: {reason}")]
    SpiffeId {
        /// The identity.
        value: String,
        /// Why not.
        reason: String,
    },
    /// An identity holding white space or a control character.
    #[error(
        "`{}` is not an identity: it holds {} (a SPIFFE ID, a DNS name or an OIDC subject has none)",
        value.escape_debug(),
        if *white_space { "white space" } else { "a control character" }
    )]
    NotAnIdentity {
        /// The identity.
        value: String,
        /// White space (else a control or format character).
        white_space: bool,
    },
    /// A jti that is not a UUID.
    #[error("`{}` is not a jti issued by Tessera (a UUID)", .0.escape_debug())]
    NotAJti(String),
    /// A grant id that is not a UUID.
    #[error("`{}` is not a grant id (a UUID)", .0.escape_debug())]
    NotAGrantId(String),
    /// A task id outside `[A-Za-z0-9._:-]{1,128}` (the revocation's value).
    #[error("`{}` is not a task id: 1..=128 of [A-Za-z0-9._:-]", .0.escape_debug())]
    NotATaskId(String),
    /// A duration flag that does not parse.
    #[error("{flag}: {source}")]
    Duration {
        /// `--block-for` or `--ttl`.
        flag: &'static str,
        /// Why.
        source: crate::duration::DurationError,
    },
    /// A kill-switch block outside [`MIN_BLOCK`]..=[`MAX_BLOCK`].
    #[error(
        "--block-for `{0}` is out of range: a block lasts 1s to 365d (to lift one early: \
         tessera unblock --subject …)"
    )]
    BlockOutOfRange(String),
    /// `block_for` on a revocation of another kind than subject.
    #[error("block_for applies to subject revocations only")]
    BlockNotForSubject,
    /// A grant's lifetime outside 1s..=[`MAX_GRANT_TTL`].
    #[error("--ttl `{0}` is out of range: a grant lives 1s to 24h")]
    GrantTtlOutOfRange(String),
    /// A grant's audience that is empty, too long or not printable.
    #[error("audience must be 1..=1024 printable characters")]
    Audience,
    /// A grant's scope that is not RFC 6749 scope tokens.
    #[error("scope must be space-separated RFC 6749 scope tokens")]
    Scope,
    /// A `*` in a grant's scopes or audience.
    #[error("a grant names exact scopes and one exact audience: `*` is not allowed")]
    Wildcard,
    /// A grant's uses outside 1..=[`MAX_GRANT_USES`].
    #[error("uses must be between 1 and {MAX_GRANT_USES}")]
    Uses,
    /// A reason longer than [`MAX_REASON_LEN`] or holding control characters.
    #[error("reason must be at most {MAX_REASON_LEN} printable characters")]
    Reason,
    /// A store recovery that gives both a plan and `accept_loss`, or neither.
    #[error("give a plan (from an audit trail) or accept_loss, not both")]
    RecoverPlanOrLoss,
    /// A grant's task id outside `[A-Za-z0-9._:-]{1,128}`.
    #[error("a task id is 1..=128 of [A-Za-z0-9._:-]")]
    TaskId,
}

/// How long [`revoke_and_block`] waits for the revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// In force on the primary (the anomaly guard, inside an exchange).
    Primary,
    /// Then waits (boundedly) for the configured replicas to acknowledge
    /// it (an operator, who is told whether it is durable).
    Replicas,
}

/// What [`revoke_and_block`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedAndBlocked {
    /// The revocation as written, with its durability.
    pub revoked: crate::store::Revoked,
    /// Until when new exchanges are refused (a longer block already in
    /// force stays and is reported), when a block was asked for.
    pub blocked_until: Option<u64>,
}

/// The one "revoke and block" sequence (admin API and anomaly guard): the
/// block first, then the revocation, so that replicas that acknowledge the
/// revocation hold the block too, and a failure between the two leaves the
/// identity blocked (new exchanges refused) rather than revoked and free to
/// mint again. `block_until: None` revokes only. A store failure at either
/// step is returned; nothing after it is attempted.
pub async fn revoke_and_block(
    stores: &crate::store::Stores,
    revocation: crate::store::Revocation,
    block_until: Option<u64>,
    ack: Ack,
) -> Result<RevokedAndBlocked, crate::store::StoreError> {
    let mut blocked_until = None;
    if let Some(until) = block_until {
        let held = stores
            .revocations
            .block_subject(&revocation.value, until)
            .await?;
        blocked_until = Some(held.max(until));
    }
    let revoked = match ack {
        Ack::Replicas => stores.revocations.revoke_acked(revocation).await?,
        Ack::Primary => crate::store::Revoked {
            cursor: stores.revocations.revoke(revocation).await?,
            replicas: None,
        },
    };
    Ok(RevokedAndBlocked {
        revoked,
        blocked_until,
    })
}

/// Most uses a grant may be created with.
pub const MAX_GRANT_USES: u32 = 1_000_000;

/// Why an operator verb did not (fully) succeed. The admin API maps each
/// to one row of its wire table.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The request is malformed or out of bounds; nothing was done.
    #[error(transparent)]
    Invalid(#[from] InvalidOrder),
    /// `strict` was asked and no policy could ever use the grant.
    #[error("no policy could ever use this grant: {0}")]
    UnusableGrant(crate::policy::GrantUnusable),
    /// No live grant with this id.
    #[error("no live grant {0}")]
    NoSuchGrant(String),
    /// The store failed; the change was not made (or not completed).
    #[error("the store is unavailable: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The audit trail is down and the change needs its record first: it
    /// was NOT made.
    #[error("the audit trail is unavailable: {0}")]
    AuditFirst(crate::audit::AuditError),
    /// The change WAS made, but its audit record could not be written.
    #[error("the change WAS made, but its audit record could not be written: {0}")]
    NotAudited(crate::audit::AuditError),
    /// The subject was not blocked: nothing to lift.
    #[error("{0} is not blocked")]
    NotBlocked(String),
    /// The store has not lost its data: nothing to recover.
    #[error(
        "the store has not lost its data (its data epoch is the one this broker knows): \
         nothing to recover"
    )]
    NotLost,
    /// A recovery stopped part-way; it is idempotent, so running it again
    /// finishes it.
    #[error("the recovery did not finish (run it again: it is idempotent): {0}")]
    Unfinished(Box<OperatorError>),
}

/// Longest reason an operator may give (an unblock, an approval decision).
pub const MAX_REASON_LEN: usize = 1024;

/// An operator's reason: at most [`MAX_REASON_LEN`] printable characters.
pub fn check_reason(reason: Option<&str>) -> Result<(), InvalidOrder> {
    if reason.is_some_and(|r| r.len() > MAX_REASON_LEN || r.chars().any(char::is_control)) {
        return Err(InvalidOrder::Reason);
    }
    Ok(())
}

/// The audit trail refused the record of a change already made: logged
/// here, reported as [`OperatorError::NotAudited`].
fn not_audited(e: crate::audit::AuditError) -> OperatorError {
    tracing::error!(error = %e, "admin: change made but not audited");
    OperatorError::NotAudited(e)
}

/// An operator's revocation (`POST /admin/v1/revocations`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeOrder {
    /// `jti`, `subject`, `task` or `grant`.
    pub kind: RevocationKind,
    /// The value.
    pub value: String,
    /// Why (audited).
    #[serde(default)]
    pub reason: Option<String>,
    /// Subject only: also refuse new exchanges for this long (`30m`).
    #[serde(default)]
    pub block_for: Option<String>,
}

/// What an operator's revocation did.
#[derive(Debug, Clone)]
pub struct RevokeDone {
    /// The revocation as written.
    pub revocation: crate::store::Revocation,
    /// Its cursor and durability.
    pub revoked: crate::store::Revoked,
    /// Until when new exchanges are refused, when a block was asked for.
    pub blocked_until: Option<u64>,
    /// A subject no policy could match (a typo?): the change was made.
    pub warning: Option<String>,
}

/// The audit note of a revocation's durability.
pub fn durability_note(done: &crate::store::Revoked) -> String {
    match done.replicas {
        None => String::new(),
        Some(a) if a.durable() => format!(" [durable: {}/{} replicas acked]", a.acked, a.required),
        Some(a) => format!(" [NOT durable: {}/{} replicas acked]", a.acked, a.required),
    }
}

/// The warning for an identity no policy could match (a typo, most likely:
/// the real identity keeps minting). The change is made anyway: a
/// revocation or block only takes authority away.
fn unmatched_identity_warning(exchanger: &super::Exchanger, identity: &str) -> Option<String> {
    exchanger
        .policies()
        .could_match_identity(identity)
        .is_empty()
        .then(|| {
            format!(
                "no policy matches the subject `{identity}`: no token is issued to or through it \
                 (a typo?); the change was made anyway"
            )
        })
}

/// An operator revokes (`who` is the operator's identity): the order is
/// checked, a grant revocation also deletes the grant, a subject revocation
/// may also block ([`revoke_and_block`], waiting for the replicas), and the
/// revocation is audited. The revocation stands whatever happens to its
/// record (it only ever takes authority away); a failed record is
/// [`OperatorError::NotAudited`].
pub async fn revoke(
    stores: &crate::store::Stores,
    auditor: &crate::audit::Auditor,
    exchanger: &super::Exchanger,
    who: &str,
    order: RevokeOrder,
    now: u64,
) -> Result<RevokeDone, OperatorError> {
    use crate::audit::{AuditRecord, Event};
    check_revocation(order.kind, &order.value)?;
    let block = match (&order.block_for, order.kind) {
        (None, _) => None,
        (Some(d), RevocationKind::Subject) => Some(parse_block_for(d)?),
        (Some(_), _) => return Err(InvalidOrder::BlockNotForSubject.into()),
    };
    // Every token a revocation can cover was issued by now and lives at most
    // [tokens] max_ttl: the entry needs to live no longer than that.
    let mut expires_at = exchanger.revocation_expiry(now);
    if order.kind == RevocationKind::Grant {
        let g = stores
            .grants
            .get(&order.value, now)
            .await?
            // The same answer as `DELETE /admin/v1/grants/{id}`.
            .ok_or_else(|| OperatorError::NoSuchGrant(order.value.clone()))?;
        stores.grants.revoke(&g.id, &g.subject).await?;
        expires_at = expires_at.min(g.expires_at.max(now + 1));
    }
    let revocation = crate::store::Revocation {
        kind: order.kind,
        value: order.value.clone(),
        revoked_at: now,
        expires_at,
    };
    let done = revoke_and_block(
        stores,
        revocation.clone(),
        block.map(|d| now + d.as_secs()),
        Ack::Replicas,
    )
    .await?;
    crate::telemetry::metrics()
        .revocations
        .with_label_values(&[order.kind.as_str()])
        .inc();
    let mut rec = AuditRecord::new(Event::Revoked)
        .reason(order.kind.as_str())
        .client(who)
        .detail(&format!(
            "{}{}{}",
            order.reason.as_deref().unwrap_or(""),
            done.blocked_until
                .map(|u| format!(" ({})", crate::audit::restore::block_note(u)))
                .unwrap_or_default(),
            durability_note(&done.revoked)
        ));
    rec = match order.kind {
        RevocationKind::Jti => rec.jti(&order.value),
        RevocationKind::Subject => rec.subject(&order.value),
        RevocationKind::Task => rec.task(&order.value),
        RevocationKind::Grant => rec.grant(Some(&order.value)),
    };
    auditor.record(rec).await.map_err(not_audited)?;
    let warning = (order.kind == RevocationKind::Subject)
        .then(|| unmatched_identity_warning(exchanger, &order.value))
        .flatten();
    Ok(RevokeDone {
        revocation,
        revoked: done.revoked,
        blocked_until: done.blocked_until,
        warning,
    })
}

/// An operator's just-in-time grant (`POST /admin/v1/grants`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantOrder {
    /// The identity the grant is for.
    pub subject: String,
    /// Space-separated scopes.
    pub scope: String,
    /// The audience.
    pub audience: String,
    /// Lifetime (`10m`).
    pub ttl: String,
    /// Uses (unlimited until expiry when absent).
    #[serde(default)]
    pub uses: Option<u32>,
    /// Restrict to one task.
    #[serde(default)]
    pub task: Option<String>,
    /// Refuse a grant no policy could ever use (else: create it, with a
    /// warning).
    #[serde(default)]
    pub strict: bool,
}

/// A created grant, with a warning when no policy could ever use it.
#[derive(Debug, Clone)]
pub struct GrantCreated {
    /// The grant as stored.
    pub grant: crate::store::Grant,
    /// Why no policy could use it (`strict` was not asked).
    pub warning: Option<String>,
}

/// An operator creates a grant: the order is checked, the grant is audited
/// before it exists (no grant without its record: fail closed), then
/// stored; if storing fails, the trail says so (best effort).
pub async fn create_grant(
    stores: &crate::store::Stores,
    auditor: &crate::audit::Auditor,
    exchanger: &super::Exchanger,
    who: &str,
    order: GrantOrder,
    now: u64,
) -> Result<GrantCreated, OperatorError> {
    use crate::audit::{AuditRecord, Event};
    use crate::policy::scope::ScopeSet;
    check_identity(&order.subject)?;
    if order.audience.is_empty()
        || order.audience.len() > 1024
        || order.audience.chars().any(char::is_control)
    {
        return Err(InvalidOrder::Audience.into());
    }
    let scopes: ScopeSet = order.scope.parse().map_err(|_| InvalidOrder::Scope)?;
    // Grants are literal: a `*` would read as a wildcard to whoever lists
    // them, and match nothing but itself (SECURITY #120).
    if scopes.iter().any(|s| s.as_str().contains('*')) || order.audience.contains('*') {
        return Err(InvalidOrder::Wildcard.into());
    }
    let ttl = check_grant_ttl(&order.ttl)?.as_secs();
    if let Some(u) = order.uses {
        if u == 0 || u > MAX_GRANT_USES {
            return Err(InvalidOrder::Uses.into());
        }
    }
    if order.task.as_deref().is_some_and(|t| !valid_task(t)) {
        return Err(InvalidOrder::TaskId.into());
    }
    let unusable = exchanger
        .policies()
        .grant_use(&order.subject, &order.audience, &scopes)
        .err();
    if let (Some(why), true) = (&unusable, order.strict) {
        return Err(OperatorError::UnusableGrant(why.clone()));
    }
    let warning = unusable.map(|why| format!("no policy could ever use this grant: {why}"));
    let g = crate::store::Grant {
        id: uuid::Uuid::new_v4().to_string(),
        subject: order.subject,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        audience: order.audience,
        task: order.task,
        uses: order.uses,
        remaining: order.uses,
        created_at: now,
        expires_at: now + ttl,
        created_by: who.to_string(),
    };
    let rec = AuditRecord::new(Event::Granted)
        .client(who)
        .subject(&g.subject)
        .scopes(&g.scopes.join(" "))
        .audience(&g.audience)
        .task(g.task.as_deref().unwrap_or(""))
        .grant(Some(&g.id))
        .detail(&format!(
            "uses={} expires_at={}",
            g.uses
                .map(|u| u.to_string())
                .unwrap_or_else(|| "unlimited".into()),
            g.expires_at
        ));
    if let Err(e) = auditor.record(rec).await {
        tracing::error!(error = %e, "admin: grant not created: audit unavailable");
        return Err(OperatorError::AuditFirst(e));
    }
    if let Err(e) = stores.grants.create(&g).await {
        // The trail says it did not happen after all (best effort).
        let undo = AuditRecord::new(Event::Unavailable)
            .reason("grant_not_stored")
            .client(who)
            .grant(Some(&g.id))
            .detail(&e.to_string());
        let _ = auditor.record(undo).await;
        return Err(e.into());
    }
    Ok(GrantCreated { grant: g, warning })
}

/// What revoking a grant did.
#[derive(Debug, Clone)]
pub struct GrantRevoked {
    /// The grant id.
    pub id: String,
    /// The revocation of its tokens: cursor and durability.
    pub revoked: crate::store::Revoked,
}

/// An operator removes a grant and revokes every token it issued (waiting
/// for the replicas), then audits it; a failed record is
/// [`OperatorError::NotAudited`] (the revocation stands).
pub async fn revoke_grant(
    stores: &crate::store::Stores,
    auditor: &crate::audit::Auditor,
    exchanger: &super::Exchanger,
    who: &str,
    id: &str,
    now: u64,
) -> Result<GrantRevoked, OperatorError> {
    use crate::audit::{AuditRecord, Event};
    let g = stores
        .grants
        .get(id, now)
        .await?
        .ok_or_else(|| OperatorError::NoSuchGrant(id.to_string()))?;
    stores.grants.revoke(&g.id, &g.subject).await?;
    let r = crate::store::Revocation {
        kind: RevocationKind::Grant,
        value: g.id.clone(),
        revoked_at: now,
        expires_at: exchanger
            .revocation_expiry(now)
            .min(g.expires_at)
            .max(now + 1),
    };
    let revoked = stores.revocations.revoke_acked(r).await?;
    crate::telemetry::metrics()
        .revocations
        .with_label_values(&[RevocationKind::Grant.as_str()])
        .inc();
    let mut rec = AuditRecord::new(Event::GrantRevoked)
        .client(who)
        .subject(&g.subject)
        .audience(&g.audience)
        .scopes(&g.scopes.join(" "))
        .grant(Some(&g.id));
    let note = durability_note(&revoked);
    if !note.is_empty() {
        rec = rec.detail(note.trim_start());
    }
    auditor.record(rec).await.map_err(not_audited)?;
    Ok(GrantRevoked { id: g.id, revoked })
}

/// What a recovery restored.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreReport {
    /// Revocations re-applied.
    pub revocations: usize,
    /// Revocations left out: every token they covered has expired.
    pub expired: usize,
    /// Blocks re-applied.
    pub blocks: usize,
    /// Blocks left out: already over.
    pub blocks_over: usize,
    /// The new data epoch.
    pub epoch: String,
}

/// Restores after the store lost its data ([`crate::store::epoch`]):
/// re-applies every revocation of `plan` that can still cover a live token
/// (recorded less than the tokens' longest lifetime ago; kept as long
/// as when first made) and every block not yet over, then writes a new
/// `recovered` epoch so every broker serves again. The store's lost-data
/// refusal is lifted for these calls only. An empty plan is `--accept-loss`.
pub async fn restore(
    stores: &crate::store::Stores,
    plan: &crate::audit::restore::RestorePlan,
    exchanger: &super::Exchanger,
    now: u64,
) -> Result<RestoreReport, OperatorError> {
    use crate::store::Revocation;
    crate::store::epoch::recovering(async {
        let mut report = RestoreReport::default();
        for r in &plan.revocations {
            let kind = r.kind;
            check_revocation(kind, &r.value)?;
            let expires_at = exchanger.revocation_expiry(r.revoked_at);
            if expires_at <= now {
                report.expired += 1;
                continue;
            }
            stores
                .revocations
                .revoke(Revocation {
                    kind,
                    value: r.value.clone(),
                    revoked_at: r.revoked_at.min(now),
                    expires_at,
                })
                .await?;
            report.revocations += 1;
        }
        for b in &plan.blocks {
            check_identity(&b.subject)?;
            if b.until <= now {
                report.blocks_over += 1;
                continue;
            }
            stores
                .revocations
                .block_subject(&b.subject, b.until)
                .await?;
            report.blocks += 1;
        }
        report.epoch = stores.health.rearm_epoch().await?;
        Ok(report)
    })
    .await
}

/// An operator's lifting of a kill-switch block (`POST /admin/v1/unblock`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnblockOrder {
    /// The blocked identity.
    pub subject: String,
    /// Why (audited).
    #[serde(default)]
    pub reason: Option<String>,
}

/// An operator lifts a kill-switch block at once, on every replica (through
/// the store, and Redis's invalidation of every replica's block cache), then
/// audits it. Tokens revoked with the block stay revoked.
/// [`OperatorError::NotBlocked`] when the subject was not blocked; a failed
/// record is [`OperatorError::NotAudited`] (the block stays lifted).
pub async fn unblock(
    stores: &crate::store::Stores,
    auditor: &crate::audit::Auditor,
    who: &str,
    order: UnblockOrder,
    now: u64,
) -> Result<(), OperatorError> {
    use crate::audit::{AuditRecord, Event};
    check_identity(&order.subject).map_err(OperatorError::Invalid)?;
    check_reason(order.reason.as_deref()).map_err(OperatorError::Invalid)?;
    if !stores
        .revocations
        .unblock_subject(&order.subject, now)
        .await?
    {
        return Err(OperatorError::NotBlocked(order.subject));
    }
    let rec = AuditRecord::new(Event::Unblocked)
        .client(who)
        .subject(&order.subject)
        .detail(order.reason.as_deref().unwrap_or(""));
    auditor.record(rec).await.map_err(not_audited)?;
    Ok(())
}

/// What an operator's recovery asks for (`POST /admin/v1/store/recover`):
/// what the operator's audit trail says must be restored, or `accept_loss`
/// with nothing.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverOrder {
    /// The plan (`tessera store recover --from-audit FILE` reads it).
    #[serde(default)]
    pub plan: Option<crate::audit::restore::RestorePlan>,
    /// Serve again without restoring anything (no audit trail to hand).
    #[serde(default)]
    pub accept_loss: bool,
    /// Where the plan came from (audited).
    #[serde(default)]
    pub source: Option<String>,
}

/// What an operator's recovery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// What was restored, and the new epoch.
    pub report: RestoreReport,
    /// Whether the loss was accepted (nothing restored on purpose).
    pub accept_loss: bool,
}

/// An operator recovers the store after it lost its data (its data epoch;
/// every call fails until then): [`restore`] re-applies the plan's
/// revocations and blocks and writes a new epoch, then the recovery is
/// audited. [`OperatorError::NotLost`] when the store has not lost its
/// data; [`OperatorError::Unfinished`] when the restore stopped part-way.
pub async fn recover(
    stores: &crate::store::Stores,
    auditor: &crate::audit::Auditor,
    exchanger: &super::Exchanger,
    who: &str,
    order: RecoverOrder,
    now: u64,
) -> Result<Recovered, OperatorError> {
    use crate::audit::{AuditRecord, Event};
    let plan = match (order.plan, order.accept_loss) {
        (Some(p), false) => p,
        (None, true) => crate::audit::restore::RestorePlan::default(),
        _ => return Err(OperatorError::Invalid(InvalidOrder::RecoverPlanOrLoss)),
    };
    if !stores.health.data_lost() {
        return Err(OperatorError::NotLost);
    }
    let report = restore(stores, &plan, exchanger, now)
        .await
        .map_err(|e| OperatorError::Unfinished(Box::new(e)))?;
    let rec = AuditRecord::new(Event::Unavailable)
        .reason(if order.accept_loss {
            "store_epoch_loss_accepted"
        } else {
            "store_epoch_recovered"
        })
        .client(who)
        .detail(&format!(
            "source={} revocations={} (expired {}) blocks={} (over {}) epoch={}",
            order
                .source
                .as_deref()
                .unwrap_or(if order.accept_loss { "none" } else { "-" }),
            report.revocations,
            report.expired,
            report.blocks,
            report.blocks_over,
            report.epoch
        ));
    auditor.record(rec).await.map_err(not_audited)?;
    Ok(Recovered {
        report,
        accept_loss: order.accept_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        for ok in [
            "spiffe://example.org/agent/demo",
            "payments.example.com",
            "system:serviceaccount:ci:deployer",
            "alice@example.com",
            "repo:acme/app:ref:refs/heads/main",
        ] {
            assert_eq!(check_identity(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("not a spiffe id", "white space"),
            ("spiffe://example.org", "SPIFFE"),
            ("spiffe://Example.org/agent", "SPIFFE"),
            ("spiffe://example.org/agent/../x", "SPIFFE"),
            ("SPIFFE://example.org/a b", "SPIFFE"),
            ("agent\u{202e}", "control"),
            ("agent\t", "white space"),
        ] {
            let e = check_identity(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(check_identity(&"a".repeat(MAX_VALUE_LEN + 1)).is_err());
    }

    #[test]
    fn revocation_values() {
        let id = uuid::Uuid::new_v4().to_string();
        assert!(check_revocation(RevocationKind::Jti, &id).is_ok());
        assert!(check_revocation(RevocationKind::Jti, "nope")
            .unwrap_err()
            .to_string()
            .contains("UUID"));
        assert!(check_revocation(RevocationKind::Grant, "nope").is_err());
        assert!(check_revocation(RevocationKind::Task, "deploy-42").is_ok());
        assert!(check_revocation(RevocationKind::Task, "a b").is_err());
        assert!(check_revocation(RevocationKind::Subject, "not a spiffe id").is_err());
    }

    /// The one revoke-and-block sequence (admin API and guard): the block is
    /// in force and the revocation covers the subject's tokens; a longer
    /// block already in force stays and is what is reported; without a
    /// block it only revokes.
    #[tokio::test]
    async fn revoke_and_block_blocks_revokes_and_keeps_a_longer_block() {
        use crate::store::{memory::MemoryStore, Revocation, Stores, TokenFacts};
        let stores = Stores::from_backend(std::sync::Arc::new(MemoryStore::new()));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let sub = "spiffe://td/agent";
        let r = |kind, value: &str, at: u64| Revocation {
            kind,
            value: value.into(),
            revoked_at: at,
            expires_at: at + 600,
        };
        let facts = |jti: &str| TokenFacts {
            jti: jti.into(),
            sub: sub.into(),
            actors: vec![],
            client_id: None,
            ancestors: vec![],
            txn: "t".into(),
            grant: None,
            iat: now - 1,
        };
        assert!(!stores.revocations.is_blocked(sub, now).await.unwrap());
        let done = revoke_and_block(
            &stores,
            r(RevocationKind::Subject, sub, now),
            Some(now + 60),
            Ack::Primary,
        )
        .await
        .unwrap();
        assert_eq!(done.blocked_until, Some(now + 60));
        assert!(stores.revocations.is_blocked(sub, now).await.unwrap());
        assert!(stores
            .revocations
            .is_revoked(&facts("j1"), now)
            .await
            .unwrap());
        // A shorter block does not shorten the one in force.
        let done = revoke_and_block(
            &stores,
            r(RevocationKind::Subject, sub, now),
            Some(now + 10),
            Ack::Replicas,
        )
        .await
        .unwrap();
        assert_eq!(done.blocked_until, Some(now + 60));
        assert!(done.revoked.durable());
        // Without a block: a revocation only.
        let id = uuid::Uuid::new_v4().to_string();
        let done = revoke_and_block(
            &stores,
            r(RevocationKind::Jti, &id, now),
            None,
            Ack::Primary,
        )
        .await
        .unwrap();
        assert_eq!(done.blocked_until, None);
        assert!(stores
            .revocations
            .is_revoked(&facts(&id), now)
            .await
            .unwrap());
    }

    /// Unblock: checks before any store call, a typed refusal when nothing
    /// is blocked, and the audit record of a lifted block.
    #[tokio::test]
    async fn unblock_refuses_typed_and_audits() {
        use crate::store::{memory::MemoryStore, Stores};
        let stores = Stores::from_backend(std::sync::Arc::new(MemoryStore::new()));
        let auditor = crate::audit::Auditor::start(
            &crate::audit::AuditSink::Off,
            Some((stores.audit.clone(), 1000)),
            Duration::from_secs(5),
        )
        .unwrap();
        let now = 1_700_000_000;
        let order = |subject: &str, reason: Option<&str>| UnblockOrder {
            subject: subject.into(),
            reason: reason.map(str::to_string),
        };
        let unblock = |o| unblock(&stores, &auditor, "spiffe://td/op", o, now);
        assert!(matches!(
            unblock(order("not an identity", None)).await,
            Err(OperatorError::Invalid(_))
        ));
        assert!(matches!(
            unblock(order("spiffe://td/a", Some("bad\u{7}"))).await,
            Err(OperatorError::Invalid(m)) if m.to_string().contains("printable")
        ));
        let e = unblock(order("spiffe://td/a", None)).await.unwrap_err();
        assert!(matches!(e, OperatorError::NotBlocked(_)));
        assert_eq!(e.to_string(), "spiffe://td/a is not blocked");
        stores
            .revocations
            .block_subject("spiffe://td/a", now + 60)
            .await
            .unwrap();
        unblock(order("spiffe://td/a", Some("false alarm")))
            .await
            .unwrap();
        assert!(!stores
            .revocations
            .is_blocked("spiffe://td/a", now)
            .await
            .unwrap());
        let (rows, _) = stores.audit.read(None, 10).await.unwrap();
        let last = &rows.last().unwrap().1;
        assert!(
            last.contains("\"unblocked\"") && last.contains("false alarm"),
            "{last}"
        );
    }

    #[test]
    fn block_durations() {
        assert_eq!(parse_block_for("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_block_for("1s"), Ok(Duration::from_secs(1)));
        let e = parse_block_for("0s").unwrap_err().to_string();
        assert!(
            e.contains("out of range") && e.contains("1s to 365d"),
            "{e}"
        );
        assert!(parse_block_for("500ms")
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert!(parse_block_for("366d")
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert!(!parse_block_for("30x")
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert_eq!(check_grant_ttl("10m"), Ok(Duration::from_secs(600)));
        assert!(check_grant_ttl("0s")
            .unwrap_err()
            .to_string()
            .contains("1s to 24h"));
        assert!(check_grant_ttl("25h")
            .unwrap_err()
            .to_string()
            .contains("1s to 24h"));
        assert!(check_grant_ttl("10x")
            .unwrap_err()
            .to_string()
            .contains("not a unit"));
    }
}
