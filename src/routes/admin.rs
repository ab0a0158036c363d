//! `/admin/v1/...`: the JSON API the operator CLI uses. mTLS identities in
//! `[admin] subjects` only. Every change is audited with the operator's
//! identity; a store failure means the change was NOT made (503).
//!
//! HTTP in and out only. Every handler is the same shape and shares the
//! helpers at the top: the operator's identity, a bounded JSON body, one
//! domain call, and its outcome through the admin error table
//! ([`crate::routes::admin_error`]). A change is an operator verb in
//! [`crate::exchange::operator`] (checks, store calls in order, audit
//! records) or the approval decision ([`crate::exchange::approval::decide`]);
//! a read is one store read shaped for the wire.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::exchange::approval::{Approver, DecideError};
use crate::exchange::operator::{self, OperatorError};
use crate::exchange::Peer;
use crate::routes::admin_error::{response, AdminCode};
use crate::routes::auth::{authorize, Role};
use crate::store::{Revoked, StoreError};

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

/// The store failed: 503. The message names the cause only; the CLI says
/// "the change was not made" for a change (not for a read).
fn store_err(e: StoreError) -> Response {
    tracing::warn!(error = %e, "admin: store unavailable");
    response(
        AdminCode::TemporarilyUnavailable,
        format!("the store is unavailable: {e}"),
    )
}

/// An operator verb's failure, through the wire table.
fn operator_err(e: OperatorError) -> Response {
    let code = match &e {
        OperatorError::Invalid(_) => AdminCode::InvalidRequest,
        OperatorError::UnusableGrant(_) => AdminCode::UnusableGrant,
        OperatorError::NoSuchGrant(_) => AdminCode::NotFound,
        OperatorError::Store(_) => {
            tracing::warn!(error = %e, "admin: store unavailable");
            AdminCode::TemporarilyUnavailable
        }
        OperatorError::AuditFirst(_) | OperatorError::Unfinished(_) => {
            AdminCode::TemporarilyUnavailable
        }
        OperatorError::NotAudited(_) => AdminCode::AuditUnavailable,
        OperatorError::NotBlocked(_) => AdminCode::NotBlocked,
        OperatorError::NotLost => AdminCode::NotLost,
    };
    response(code, e.to_string())
}

// Admin calls are rare: returning the ready Response keeps handlers flat.
#[allow(clippy::result_large_err)]
fn caller(app: &AppState, peer: Option<Extension<Peer>>) -> Result<String, Response> {
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    authorize(app, &peer, Role::Admin).map_err(|_| {
        response(
            AdminCode::NotAuthorised,
            "operator certificate not authorised (its identity is not in [admin] subjects)",
        )
    })
}

#[allow(clippy::result_large_err)]
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    let obj = crate::jose::json::parse_object(body).map_err(|e| {
        response(
            AdminCode::InvalidRequest,
            format!("body is not a JSON object: {}", e.reason()),
        )
    })?;
    serde_json::from_value(serde_json::Value::Object(obj))
        .map_err(|e| response(AdminCode::InvalidRequest, format!("{e}")))
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
pub use crate::exchange::operator::RevokeOrder as RevokeBody;

/// `POST /admin/v1/revocations`: [`crate::exchange::operator::revoke`].
pub async fn revoke(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    body: Bytes,
) -> Response {
    let (who, b): (String, RevokeBody) = match operator_request(&app, peer, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let snap = app.snapshot();
    let done = match operator::revoke(
        &app.stores,
        &app.auditor,
        &snap.exchanger,
        &who,
        b,
        app.clock.now(),
    )
    .await
    {
        Ok(d) => d,
        Err(e) => return operator_err(e),
    };
    let r = &done.revocation;
    let mut body = json!({
        "cursor": done.revoked.cursor,
        "revocation": {"kind": r.kind.as_str(), "value": r.value, "revoked_at": r.revoked_at, "expires_at": r.expires_at},
        "blocked_until": done.blocked_until,
    });
    if let Some(w) = done.warning {
        merge(&mut body, json!({ "warnings": [w] }));
    }
    merge(&mut body, durability(&done.revoked));
    (
        revoked_status(&done.revoked, StatusCode::CREATED),
        Json(body),
    )
        .into_response()
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
pub use crate::exchange::operator::UnblockOrder as UnblockBody;

/// `POST /admin/v1/unblock`: [`crate::exchange::operator::unblock`]. 404
/// when the subject was not blocked.
pub async fn unblock(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    body: Bytes,
) -> Response {
    let (who, b): (String, UnblockBody) = match operator_request(&app, peer, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let subject = b.subject.clone();
    match operator::unblock(&app.stores, &app.auditor, &who, b, app.clock.now()).await {
        Ok(()) => Json(json!({"subject": subject, "unblocked": true})).into_response(),
        Err(e) => operator_err(e),
    }
}

/// `POST /admin/v1/store/recover` body.
pub use crate::exchange::operator::RecoverOrder as RecoverBody;

/// `POST /admin/v1/store/recover`: [`crate::exchange::operator::recover`].
/// 409 when the store has not lost its data.
pub async fn recover_store(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    body: Bytes,
) -> Response {
    let (who, b): (String, RecoverBody) = match operator_request(&app, peer, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let snap = app.snapshot();
    match operator::recover(
        &app.stores,
        &app.auditor,
        &snap.exchanger,
        &who,
        b,
        app.clock.now(),
    )
    .await
    {
        Ok(done) => {
            Json(json!({"recovered": done.report, "accept_loss": done.accept_loss})).into_response()
        }
        Err(e) => operator_err(e),
    }
}

/// `POST /admin/v1/grants` body.
pub use crate::exchange::operator::GrantOrder as GrantBody;

/// `POST /admin/v1/grants`: [`crate::exchange::operator::create_grant`].
pub async fn create_grant(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    body: Bytes,
) -> Response {
    let (who, b): (String, GrantBody) = match operator_request(&app, peer, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let snap = app.snapshot();
    let created = match operator::create_grant(
        &app.stores,
        &app.auditor,
        &snap.exchanger,
        &who,
        b,
        app.clock.now(),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return operator_err(e),
    };
    let mut body = serde_json::to_value(&created.grant).unwrap_or_default();
    if let Some(w) = created.warning {
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

/// `DELETE /admin/v1/grants/{id}`: removes the grant and revokes its tokens
/// ([`crate::exchange::operator::revoke_grant`]).
pub async fn revoke_grant(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
) -> Response {
    let who = match caller(&app, peer) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let snap = app.snapshot();
    let done = match operator::revoke_grant(
        &app.stores,
        &app.auditor,
        &snap.exchanger,
        &who,
        &id,
        app.clock.now(),
    )
    .await
    {
        Ok(d) => d,
        Err(e) => return operator_err(e),
    };
    let mut body = json!({"revoked": done.id, "cursor": done.revoked.cursor});
    merge(&mut body, durability(&done.revoked));
    (revoked_status(&done.revoked, StatusCode::OK), Json(body)).into_response()
}

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
        Some(_) => return response(AdminCode::InvalidRequest, "state must be pending or all"),
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
    if let Err(m) = operator::check_reason(reason.as_deref()) {
        return response(AdminCode::InvalidRequest, m.to_string());
    }
    let who = Approver::Operator(who);
    let snap = app.snapshot();
    let deciding = app.deciding(&snap);
    match crate::exchange::approval::decide(&deciding, &who, &id, approve, reason.as_deref()).await
    {
        Ok(a) => Json(approval_view(&a, app.clock.now())).into_response(),
        Err(e) => decide_err(&id, e),
    }
}

/// A decision's refusal or failure, through the wire table.
fn decide_err(id: &str, e: DecideError) -> Response {
    use crate::store::DecideOutcome;
    let (code, message) = match e {
        DecideError::NotFound(_) if uuid::Uuid::parse_str(id).is_err() => {
            (AdminCode::NotFound, "an approval id is a UUID".to_string())
        }
        DecideError::NotFound(_)
        | DecideError::NotApplicable(DecideOutcome::Decided(_) | DecideOutcome::NotFound) => {
            (AdminCode::NotFound, format!("no approval {id}"))
        }
        // may_decide's reason codes that are wire codes keep their names.
        DecideError::NotAllowed(reason) => match AdminCode::from_wire(reason.as_str()) {
            Some(c @ AdminCode::SelfApproval) => (
                c,
                "the approver cannot be the requester, the subject or an actor of the request"
                    .into(),
            ),
            Some(c @ AdminCode::CibaNeedsThePerson) => (
                c,
                "a CIBA request is decided only by the person it names, signed in on the \
                 approval pages"
                    .into(),
            ),
            _ => (
                AdminCode::PolicyHasApprovers,
                "this policy names its approvers: they decide on the approval pages, signed \
                 in through [approvals] login_issuer"
                    .into(),
            ),
        },
        DecideError::NotApplicable(DecideOutcome::NotPending(s)) => (
            AdminCode::NotPending,
            format!("approval {id} is already {}", s.as_str()),
        ),
        DecideError::NotApplicable(DecideOutcome::Expired) => (
            AdminCode::Expired,
            format!("approval {id} expired before the decision"),
        ),
        DecideError::Store(e) => return store_err(e),
        DecideError::AuditBefore(e) => (
            AdminCode::TemporarilyUnavailable,
            format!("the audit trail is unavailable: {e}"),
        ),
        // Nothing was decided: say so (this answer used to claim "the change
        // WAS made", which was false for a refused decision).
        e @ DecideError::AuditRefusal(_) => {
            tracing::error!(error = %e, "admin: a refused decision was not audited");
            (
                AdminCode::AuditUnavailable,
                format!("nothing was decided, and {e}"),
            )
        }
    };
    response(code, message)
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
        Err(StoreError::Protocol(m)) if m == "invalid cursor" => response(
            AdminCode::InvalidRequest,
            "after is not a cursor from this API",
        ),
        Err(e) => {
            tracing::warn!(error = %e, "admin: audit stream unavailable");
            response(
                AdminCode::TemporarilyUnavailable,
                format!("the audit stream cannot be read: {e}"),
            )
        }
    }
}

/// `GET /admin/v1/audit/checkpoints`: the `seq` and `hash` of the last
/// record of every chain in the store's audit stream, kept by the store
/// apart from any audit file: `{"checkpoints": [{"node", "seq", "hash"}]}`.
/// `tessera audit verify` reads them to find a removed tail.
pub async fn audit_checkpoints(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
) -> Response {
    if let Err(r) = caller(&app, peer) {
        return r;
    }
    match app.stores.audit.checkpoints().await {
        Ok(cps) => Json(json!({ "checkpoints": cps })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "admin: audit checkpoints unavailable");
            response(
                AdminCode::TemporarilyUnavailable,
                format!("the audit checkpoints cannot be read: {e}"),
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
        Err(e) => response(AdminCode::ReloadRejected, e.to_string()),
    }
}
