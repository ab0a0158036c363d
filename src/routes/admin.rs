//! `/admin/v1/...`: the JSON API the operator CLI uses. mTLS identities in
//! `[admin] subjects` only. Every change is audited with the operator's
//! identity; a store failure means the change was NOT made (503).
//!
//! One file: every handler here is the same shape (operator identity, a
//! bounded JSON body, one domain call, an audit record, the admin error
//! format) and shares the helpers at the top. The next step is issue 18's:
//! move each handler's sequencing into the domain layer, after which this
//! file shrinks to HTTP in/out.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::audit::{AuditError, AuditRecord, Event};
use crate::exchange::Peer;
use crate::oauth::request::valid_task;
use crate::policy::scope::ScopeSet;
use crate::routes::auth::{authorize, Role};
use crate::store::{Grant, Revocation, RevocationKind, Revoked, StoreError};

/// Most uses a grant may be created with.
pub const MAX_GRANT_USES: u32 = 1_000_000;

/// An admin API error: HTTP status, a stable code and a human message that
/// the CLI prints (operators are trusted callers; this is not the token
/// endpoint, so the message may name the cause).
fn err(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

/// The change was made but its audit record could not be written: the
/// operator must know (the CLI prints the message and exits 1).
fn audit_err(e: AuditError) -> Response {
    tracing::error!(error = %e, "admin: change made but not audited");
    err(
        StatusCode::INTERNAL_SERVER_ERROR,
        "audit_unavailable",
        format!("the change WAS made, but its audit record could not be written: {e}"),
    )
}

/// The durability fields of a revocation answer: `durable` (enough replicas
/// acknowledged it, or none are required), `replicas_acked` (`null` when the
/// store did not wait) and `replicas_required`.
fn durability(done: &Revoked) -> serde_json::Value {
    json!({
        "durable": done.durable(),
        "replicas_acked": done.replicas.map(|a| a.acked),
        "replicas_required": done.replicas.map_or(0, |a| a.required),
    })
}

/// The success status of a revocation: `ok`, or `202 Accepted` when it is in
/// force on the primary but fewer replicas than required acknowledged it.
fn revoked_status(done: &Revoked, ok: StatusCode) -> StatusCode {
    if done.durable() {
        ok
    } else {
        StatusCode::ACCEPTED
    }
}

/// The audit note of a revocation's durability.
fn durability_note(done: &Revoked) -> String {
    match done.replicas {
        None => String::new(),
        Some(a) if a.durable() => format!(" [durable: {}/{} replicas acked]", a.acked, a.required),
        Some(a) => format!(" [NOT durable: {}/{} replicas acked]", a.acked, a.required),
    }
}

/// The store failed: 503. The message names the cause only; the CLI says
/// "the change was not made" for a change (not for a read).
fn store_err(e: StoreError) -> Response {
    tracing::warn!(error = %e, "admin: store unavailable");
    err(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        format!("the store is unavailable: {e}"),
    )
}

// Admin calls are rare: returning the ready Response keeps handlers flat.
#[allow(clippy::result_large_err)]
fn caller(app: &AppState, peer: Option<Extension<Peer>>) -> Result<String, Response> {
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    authorize(app, &peer, Role::Admin).map_err(|_| {
        err(
            StatusCode::UNAUTHORIZED,
            "not_authorised",
            "operator certificate not authorised (its identity is not in [admin] subjects)",
        )
    })
}

#[allow(clippy::result_large_err)]
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    let obj = crate::jose::json::parse_object(body).map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("body is not a JSON object: {}", e.reason()),
        )
    })?;
    serde_json::from_value(serde_json::Value::Object(obj))
        .map_err(|e| err(StatusCode::BAD_REQUEST, "invalid_request", format!("{e}")))
}

/// An operator's change: the caller must be an operator, and the body the
/// JSON object `T` (every admin change starts here).
#[allow(clippy::result_large_err)]
fn operator_request<T: serde::de::DeserializeOwned>(
    app: &AppState,
    peer: Option<Extension<Peer>>,
    body: &[u8],
) -> Result<(String, T), Response> {
    let who = caller(app, peer)?;
    Ok((who, parse_body(body)?))
}

/// Adds the fields of the object `extra` to the object `body`.
fn merge(body: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(b), serde_json::Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
}

/// `POST /admin/v1/revocations` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
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

/// `POST /admin/v1/revocations`.
pub async fn revoke(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    body: Bytes,
) -> Response {
    let (who, b): (String, RevokeBody) = match operator_request(&app, peer, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Err(m) = crate::exchange::operator::check_revocation(b.kind, &b.value) {
        return err(StatusCode::BAD_REQUEST, "invalid_request", m);
    }
    let block = match (&b.block_for, b.kind) {
        (None, _) => None,
        (Some(d), RevocationKind::Subject) => match crate::exchange::operator::parse_block_for(d) {
            Ok(d) => Some(d),
            Err(m) => return err(StatusCode::BAD_REQUEST, "invalid_request", m),
        },
        (Some(_), _) => {
            return err(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "block_for applies to subject revocations only",
            )
        }
    };
    let now = app.clock.now();
    // Every token a revocation can cover was issued by now and lives at most
    // [tokens] max_ttl: the entry needs to live no longer than that.
    let mut expires_at = app.snapshot().exchanger.revocation_expiry(now);
    if b.kind == RevocationKind::Grant {
        match app.stores.grants.get(&b.value, now).await {
            Ok(Some(g)) => {
                if let Err(e) = app.stores.grants.revoke(&g.id, &g.subject).await {
                    return store_err(e);
                }
                expires_at = expires_at.min(g.expires_at.max(now + 1));
            }
            // The same answer as `DELETE /admin/v1/grants/{id}`.
            Ok(None) => return no_such_grant(&b.value),
            Err(e) => return store_err(e),
        }
    }
    let r = Revocation {
        kind: b.kind,
        value: b.value.clone(),
        revoked_at: now,
        expires_at,
    };
    // The block first: the acknowledged revocation below is written after
    // it, so replicas that acknowledge the revocation hold the block too.
    let mut blocked_until = None;
    if let Some(d) = block {
        let until = now + d.as_secs();
        match app.stores.revocations.block_subject(&b.value, until).await {
            // A longer block already in force stays: say until when.
            Ok(u) => blocked_until = Some(u.max(until)),
            Err(e) => return store_err(e),
        }
    }
    let done = match app.stores.revocations.revoke_acked(r.clone()).await {
        Ok(d) => d,
        Err(e) => return store_err(e),
    };
    crate::telemetry::metrics()
        .revocations
        .with_label_values(&[b.kind.as_str()])
        .inc();
    // The revocation stands whatever happens to its record (it only ever
    // takes authority away); a failed record is reported to the operator.
    let mut rec = AuditRecord::new(Event::Revoked)
        .reason(b.kind.as_str())
        .client(&who)
        .detail(&format!(
            "{}{}{}",
            b.reason.as_deref().unwrap_or(""),
            blocked_until
                .map(|u| format!(" ({})", crate::audit::restore::block_note(u)))
                .unwrap_or_default(),
            durability_note(&done)
        ));
    rec = match b.kind {
        RevocationKind::Jti => rec.jti(&b.value),
        RevocationKind::Subject => rec.subject(&b.value),
        RevocationKind::Task => rec.task(&b.value),
        RevocationKind::Grant => rec.grant(Some(&b.value)),
    };
    if let Err(e) = app.auditor.record(rec).await {
        return audit_err(e);
    }
    let mut body = json!({
        "cursor": done.cursor,
        "revocation": {"kind": r.kind.as_str(), "value": r.value, "revoked_at": r.revoked_at, "expires_at": r.expires_at},
        "blocked_until": blocked_until,
    });
    if b.kind == RevocationKind::Subject {
        if let Some(w) = unmatched_identity_warning(&app, &b.value) {
            merge(&mut body, json!({ "warnings": [w] }));
        }
    }
    merge(&mut body, durability(&done));
    (revoked_status(&done, StatusCode::CREATED), Json(body)).into_response()
}

/// The warning for an identity no policy could match (a typo, most likely:
/// the real identity keeps minting). The change is made anyway: a
/// revocation or block only takes authority away.
fn unmatched_identity_warning(app: &AppState, identity: &str) -> Option<String> {
    let snap = app.snapshot();
    snap.exchanger
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

fn no_such_grant(id: &str) -> Response {
    err(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no live grant {id}"),
    )
}

/// `GET /admin/v1/blocks`: the live kill-switch blocks, soonest end first:
/// `{"blocks": [{"subject": "...", "until": 1700000000}]}`.
pub async fn list_blocks(State(app): State<AppState>, peer: Option<Extension<Peer>>) -> Response {
    if let Err(r) = caller(&app, peer) {
        return r;
    }
    match app.stores.revocations.list_blocks(app.clock.now()).await {
        Ok(list) => Json(json!({
            "blocks": list
                .into_iter()
                .map(|(subject, until)| json!({"subject": subject, "until": until}))
                .collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => store_err(e),
    }
}

/// `POST /admin/v1/unblock` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnblockBody {
    /// The blocked identity.
    pub subject: String,
    /// Why (audited).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /admin/v1/unblock`: lifts a kill-switch block at once, on every
/// replica (through the store, and Redis's invalidation of every replica's
/// block cache). Tokens revoked with the block stay revoked. 404 when the
/// subject was not blocked.
pub async fn unblock(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    body: Bytes,
) -> Response {
    let (who, b): (String, UnblockBody) = match operator_request(&app, peer, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Err(m) = crate::exchange::operator::check_identity(&b.subject) {
        return err(StatusCode::BAD_REQUEST, "invalid_request", m);
    }
    if let Err(r) = check_reason(b.reason.as_deref()) {
        return r;
    }
    let now = app.clock.now();
    let lifted = match app
        .stores
        .revocations
        .unblock_subject(&b.subject, now)
        .await
    {
        Ok(l) => l,
        Err(e) => return store_err(e),
    };
    if !lifted {
        return err(
            StatusCode::NOT_FOUND,
            "not_blocked",
            format!("{} is not blocked", b.subject),
        );
    }
    let rec = AuditRecord::new(Event::Unblocked)
        .client(&who)
        .subject(&b.subject)
        .detail(b.reason.as_deref().unwrap_or(""));
    if let Err(e) = app.auditor.record(rec).await {
        return audit_err(e);
    }
    Json(json!({"subject": b.subject, "unblocked": true})).into_response()
}

/// `POST /admin/v1/store/recover` body: what the operator's audit trail
/// says must be restored, or `accept_loss` with nothing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverBody {
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

/// `POST /admin/v1/store/recover`: after the store lost its data (its
/// data epoch; every call answers 503 until then), re-applies the plan's
/// revocations and blocks, writes a new epoch, and audits it. 409 when the
/// store has not lost its data.
pub async fn recover_store(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    body: Bytes,
) -> Response {
    let (who, b): (String, RecoverBody) = match operator_request(&app, peer, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let plan = match (b.plan, b.accept_loss) {
        (Some(p), false) => p,
        (None, true) => crate::audit::restore::RestorePlan::default(),
        _ => {
            return err(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "give a plan (from an audit trail) or accept_loss, not both",
            )
        }
    };
    if !app.stores.health.data_lost() {
        return err(
            StatusCode::CONFLICT,
            "not_lost",
            "the store has not lost its data (its data epoch is the one this broker knows): nothing to recover",
        );
    }
    let now = app.clock.now();
    let snap = app.snapshot();
    let report =
        match crate::exchange::operator::restore(&app.stores, &plan, &snap.exchanger, now).await {
            Ok(r) => r,
            Err(m) => {
                return err(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    format!("the recovery did not finish (run it again: it is idempotent): {m}"),
                )
            }
        };
    let rec = AuditRecord::new(Event::Unavailable)
        .reason(if b.accept_loss {
            "store_epoch_loss_accepted"
        } else {
            "store_epoch_recovered"
        })
        .client(&who)
        .detail(&format!(
            "source={} revocations={} (expired {}) blocks={} (over {}) epoch={}",
            b.source
                .as_deref()
                .unwrap_or(if b.accept_loss { "none" } else { "-" }),
            report.revocations,
            report.expired,
            report.blocks,
            report.blocks_over,
            report.epoch
        ));
    if let Err(e) = app.auditor.record(rec).await {
        return audit_err(e);
    }
    Json(json!({"recovered": report, "accept_loss": b.accept_loss})).into_response()
}

/// An operator's reason: at most [`MAX_REASON_LEN`] printable characters.
#[allow(clippy::result_large_err)]
fn check_reason(reason: Option<&str>) -> Result<(), Response> {
    if reason.is_some_and(|r| r.len() > MAX_REASON_LEN || r.chars().any(char::is_control)) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("reason must be at most {MAX_REASON_LEN} printable characters"),
        ));
    }
    Ok(())
}

/// `POST /admin/v1/grants` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
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

/// `POST /admin/v1/grants`.
pub async fn create_grant(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    body: Bytes,
) -> Response {
    let (who, b): (String, GrantBody) = match operator_request(&app, peer, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Err(m) = crate::exchange::operator::check_identity(&b.subject) {
        return err(StatusCode::BAD_REQUEST, "invalid_request", m);
    }
    if b.audience.is_empty() || b.audience.len() > 1024 || b.audience.chars().any(char::is_control)
    {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "audience must be 1..=1024 printable characters",
        );
    }
    let scopes: ScopeSet = match b.scope.parse() {
        Ok(s) => s,
        Err(_) => {
            return err(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "scope must be space-separated RFC 6749 scope tokens",
            )
        }
    };
    // Grants are literal: a `*` would read as a wildcard to whoever lists
    // them, and match nothing but itself (SECURITY #120).
    if scopes.iter().any(|s| s.as_str().contains('*')) || b.audience.contains('*') {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a grant names exact scopes and one exact audience: `*` is not allowed",
        );
    }
    let ttl = match crate::exchange::operator::check_grant_ttl(&b.ttl) {
        Ok(d) => d.as_secs(),
        Err(m) => return err(StatusCode::BAD_REQUEST, "invalid_request", m),
    };
    if let Some(u) = b.uses {
        if u == 0 || u > MAX_GRANT_USES {
            return err(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("uses must be between 1 and {MAX_GRANT_USES}"),
            );
        }
    }
    if let Some(t) = &b.task {
        if !valid_task(t) {
            return err(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "a task id is 1..=128 of [A-Za-z0-9._:-]",
            );
        }
    }
    let unusable = app
        .snapshot()
        .exchanger
        .policies()
        .grant_use(&b.subject, &b.audience, &scopes)
        .err()
        .map(|why| format!("no policy could ever use this grant: {why}"));
    if let (Some(why), true) = (&unusable, b.strict) {
        return err(StatusCode::BAD_REQUEST, "unusable_grant", why.clone());
    }
    let now = app.clock.now();
    let g = Grant {
        id: uuid::Uuid::new_v4().to_string(),
        subject: b.subject,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        audience: b.audience,
        task: b.task,
        uses: b.uses,
        remaining: b.uses,
        created_at: now,
        expires_at: now + ttl,
        created_by: who.clone(),
    };
    // Audited before it exists: no grant without its record (fail closed).
    let rec = AuditRecord::new(Event::Granted)
        .client(&who)
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
    if let Err(e) = app.auditor.record(rec).await {
        tracing::error!(error = %e, "admin: grant not created: audit unavailable");
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            format!("the audit trail is unavailable: {e}"),
        );
    }
    if let Err(e) = app.stores.grants.create(&g).await {
        // The trail says it did not happen after all (best effort).
        let undo = AuditRecord::new(Event::Unavailable)
            .reason("grant_not_stored")
            .client(&who)
            .grant(Some(&g.id))
            .detail(&e.to_string());
        let _ = app.auditor.record(undo).await;
        return store_err(e);
    }
    let mut body = serde_json::to_value(&g).unwrap_or_default();
    if let Some(w) = unusable {
        merge(&mut body, json!({ "warnings": [w] }));
    }
    (StatusCode::CREATED, Json(body)).into_response()
}

/// Query of `GET /admin/v1/grants`.
#[derive(Debug, Deserialize)]
pub struct GrantQuery {
    /// Only this subject's grants.
    pub subject: Option<String>,
}

/// `GET /admin/v1/grants`.
pub async fn list_grants(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    Query(q): Query<GrantQuery>,
) -> Response {
    if let Err(r) = caller(&app, peer) {
        return r;
    }
    match app
        .stores
        .grants
        .list(
            q.subject.as_deref().filter(|s| !s.is_empty()),
            app.clock.now(),
        )
        .await
    {
        Ok(gs) => Json(json!({ "grants": gs })).into_response(),
        Err(e) => store_err(e),
    }
}

/// `DELETE /admin/v1/grants/{id}`: removes the grant and revokes its tokens.
pub async fn revoke_grant(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
) -> Response {
    let who = match caller(&app, peer) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let now = app.clock.now();
    let g = match app.stores.grants.get(&id, now).await {
        Ok(Some(g)) => g,
        Ok(None) => {
            return err(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no live grant {id}"),
            )
        }
        Err(e) => return store_err(e),
    };
    if let Err(e) = app.stores.grants.revoke(&g.id, &g.subject).await {
        return store_err(e);
    }
    let r = Revocation {
        kind: RevocationKind::Grant,
        value: g.id.clone(),
        revoked_at: now,
        expires_at: app
            .snapshot()
            .exchanger
            .revocation_expiry(now)
            .min(g.expires_at)
            .max(now + 1),
    };
    let done = match app.stores.revocations.revoke_acked(r).await {
        Ok(d) => d,
        Err(e) => return store_err(e),
    };
    crate::telemetry::metrics()
        .revocations
        .with_label_values(&["grant"])
        .inc();
    let mut rec = AuditRecord::new(Event::GrantRevoked)
        .client(&who)
        .subject(&g.subject)
        .audience(&g.audience)
        .scopes(&g.scopes.join(" "))
        .grant(Some(&g.id));
    let note = durability_note(&done);
    if !note.is_empty() {
        rec = rec.detail(note.trim_start());
    }
    if let Err(e) = app.auditor.record(rec).await {
        return audit_err(e);
    }
    let mut body = json!({"revoked": g.id, "cursor": done.cursor});
    merge(&mut body, durability(&done));
    (revoked_status(&done, StatusCode::OK), Json(body)).into_response()
}

/// Longest reason an operator may give for a decision.
pub const MAX_REASON_LEN: usize = 1024;

/// Query of `GET /admin/v1/approvals`.
#[derive(Debug, Deserialize)]
pub struct ApprovalQuery {
    /// `pending` (the default) or `all` (decided and expired ones too, while
    /// they are retained).
    pub state: Option<String>,
}

/// An approval as the admin API shows it: the record plus `age` (seconds
/// since it was asked) and `expired`.
fn approval_view(a: &crate::store::Approval, now: u64) -> serde_json::Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("request_hash");
        o.insert("age".into(), json!(now.saturating_sub(a.created_at)));
        o.insert("expired".into(), json!(a.expires_at <= now));
    }
    v
}

/// `GET /admin/v1/approvals[?state=pending|all]`.
pub async fn list_approvals(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    Query(q): Query<ApprovalQuery>,
) -> Response {
    if let Err(r) = caller(&app, peer) {
        return r;
    }
    let all = match q.state.as_deref() {
        None | Some("") | Some("pending") => false,
        Some("all") => true,
        Some(_) => {
            return err(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "state must be pending or all",
            )
        }
    };
    let now = app.clock.now();
    match app.stores.approvals.list_approvals(now).await {
        Ok(list) => {
            let shown: Vec<serde_json::Value> = list
                .iter()
                .filter(|a| {
                    all || (a.state == crate::store::ApprovalState::Pending && a.expires_at > now)
                })
                .map(|a| approval_view(a, now))
                .collect();
            Json(json!({ "approvals": shown })).into_response()
        }
        Err(e) => store_err(e),
    }
}

/// Body of `POST /admin/v1/approvals/{id}/approve|deny`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Why (audited, shown in `approvals list --all`).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /admin/v1/approvals/{id}/approve`.
pub async fn approve(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    decide(app, peer, id, body, true).await
}

/// `POST /admin/v1/approvals/{id}/deny`.
pub async fn deny(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    decide(app, peer, id, body, false).await
}

async fn decide(
    app: AppState,
    peer: Option<Extension<Peer>>,
    id: String,
    body: Bytes,
    approve: bool,
) -> Response {
    use crate::exchange::approval::{Approver, DecideError};
    let who = match caller(&app, peer) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let b: DecisionBody = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionBody::default()
    } else {
        match parse_body(&body) {
            Ok(b) => b,
            Err(r) => return r,
        }
    };
    let reason = b.reason.filter(|r| !r.is_empty());
    if let Err(r) = check_reason(reason.as_deref()) {
        return r;
    }
    let who = Approver::Operator(who);
    match crate::exchange::approval::decide(&app, &who, &id, approve, reason.as_deref()).await {
        Ok(a) => Json(approval_view(&a, app.clock.now())).into_response(),
        Err(DecideError::NotFound(_)) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            if uuid::Uuid::parse_str(&id).is_err() {
                "an approval id is a UUID".to_string()
            } else {
                format!("no approval {id}")
            },
        ),
        Err(DecideError::NotAllowed("self_approval")) => err(
            StatusCode::FORBIDDEN,
            "self_approval",
            "the approver cannot be the requester, the subject or an actor of the request",
        ),
        Err(DecideError::NotAllowed(code)) => err(
            StatusCode::FORBIDDEN,
            code,
            "this policy names its approvers: they decide on the approval pages, signed in \
             through [approvals] login_issuer",
        ),
        Err(DecideError::NotApplicable(out)) => decision_refused(&id, out),
        Err(DecideError::Store(e)) => store_err(e),
        Err(DecideError::AuditBefore(e)) => err(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            format!("the audit trail is unavailable: {e}"),
        ),
        Err(DecideError::AuditRefusal(e)) => audit_err(e),
    }
}

/// The admin answer for a decision that did not apply.
fn decision_refused(id: &str, out: crate::store::DecideOutcome) -> Response {
    use crate::store::DecideOutcome;
    match out {
        DecideOutcome::Decided(_) | DecideOutcome::NotFound => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no approval {id}"),
        ),
        DecideOutcome::NotPending(s) => err(
            StatusCode::CONFLICT,
            "not_pending",
            format!("approval {id} is already {}", s.as_str()),
        ),
        DecideOutcome::Expired => err(
            StatusCode::CONFLICT,
            "expired",
            format!("approval {id} expired before the decision"),
        ),
    }
}

/// Query of `GET /admin/v1/audit`.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    /// Records after this cursor (`0`: from the oldest kept); without it,
    /// the newest `limit`.
    pub after: Option<String>,
    /// Most records returned (default 100, at most 10,000).
    pub limit: Option<usize>,
}

/// Default page of `GET /admin/v1/audit`.
pub const AUDIT_PAGE: usize = 100;

/// `GET /admin/v1/audit?after=CURSOR&limit=N`: records from the store's
/// bounded audit stream, oldest first, with the cursor to resume from:
/// `{"cursor": "...", "records": [{...}, ...]}`.
pub async fn audit(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    Query(q): Query<AuditQuery>,
) -> Response {
    if let Err(r) = caller(&app, peer) {
        return r;
    }
    let limit = q
        .limit
        .unwrap_or(AUDIT_PAGE)
        .clamp(1, crate::store::MAX_AUDIT_PAGE);
    let after = q.after.as_deref().filter(|s| !s.is_empty());
    match app.stores.audit.read(after, limit).await {
        Ok((rows, cursor)) => {
            // Records go out as written (field order kept); anything in the
            // stream that is not JSON goes out as a string, so `audit verify`
            // reports it instead of it vanishing.
            let mut body = String::with_capacity(64 + rows.len() * 512);
            body.push_str("{\"cursor\":");
            body.push_str(&json!(cursor).to_string());
            body.push_str(",\"records\":[");
            for (i, (_, r)) in rows.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                if serde_json::from_str::<serde::de::IgnoredAny>(r).is_ok() {
                    body.push_str(r);
                } else {
                    body.push_str(&json!(r).to_string());
                }
            }
            body.push_str("]}");
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Err(StoreError::Protocol(m)) if m == "invalid cursor" => err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "after is not a cursor from this API",
        ),
        Err(e) => {
            tracing::warn!(error = %e, "admin: audit stream unavailable");
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                format!("the audit stream cannot be read: {e}"),
            )
        }
    }
}

/// `POST /admin/v1/reload`: what SIGHUP does, on this replica only. 200 with
/// the changes, or 409 naming why the configuration in force stays.
pub async fn reload(State(app): State<AppState>, peer: Option<Extension<Peer>>) -> Response {
    let who = match caller(&app, peer) {
        Ok(w) => w,
        Err(r) => return r,
    };
    match app.reload_as(&who).await {
        Ok(d) => Json(json!({
            "reloaded": true,
            "generation": app.snapshot().generation,
            "changes": d.to_string(),
            "policies_added": d.policies_added,
            "policies_removed": d.policies_removed,
            "policies_changed": d.policies_changed,
            "issuers_added": d.issuers_added,
            "issuers_removed": d.issuers_removed,
            "issuers_changed": d.issuers_changed,
            "keys_added": d.keys_added,
            "keys_removed": d.keys_removed,
            "signing_kid": app.snapshot().keyring.signing_key().kid(),
        }))
        .into_response(),
        Err(e) => err(StatusCode::CONFLICT, "reload_rejected", e),
    }
}
