//! `POST /bc-authorize` (OpenID CIBA Core 1.0, poll mode): HTTP in and out
//! only; [`crate::exchange::ciba`] owns the rules.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use crate::app::AppState;
use crate::audit::{AuditRecord, Event};
use crate::exchange::Peer;
use crate::oauth::request::{bc_authorize_request, check_content_type, parse_form};

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn error(status: u16, code: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    no_store(
        (
            status,
            Json(json!({"error": code, "error_description": "the backchannel authentication request was refused"})),
        )
            .into_response(),
    )
}

/// `POST /bc-authorize`.
pub async fn bc_authorize(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    let snap = app.snapshot();
    let Some(login) = snap.config.approvals_login.as_ref() else {
        return crate::routes::metadata::not_found().await;
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let form = match check_content_type(ct).and_then(|()| parse_form(&body)) {
        Ok(f) => f,
        Err(e) => return error(400, crate::oauth::OAuthError::from(&e).code.as_str()),
    };
    let who = crate::routes::token::peer_name(&peer);
    let parsed = bc_authorize_request(&form);
    match snap.exchanger.ciba_authorize(parsed, &peer, login).await {
        Ok(s) => {
            tracing::info!(auth_req_id = %s.auth_req_id, agent = %s.agent,
                "CIBA consent requested");
            no_store(
                Json(json!({
                    "auth_req_id": s.auth_req_id,
                    "expires_in": s.expires_in,
                    "interval": s.interval,
                }))
                .into_response(),
            )
        }
        Err(e) => {
            let rec = AuditRecord::new(if e.status == 503 {
                Event::Unavailable
            } else {
                Event::Refused
            })
            .reason(e.reason)
            .error(e.error)
            .client(&who)
            .detail("POST /bc-authorize");
            if let Err(err) = app.auditor.record(rec).await {
                tracing::error!(error = %err, "bc-authorize refusal not audited");
            }
            error(e.status, e.error)
        }
    }
}
