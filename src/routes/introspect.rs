//! `POST /introspect` (RFC 7662) and `POST /revoke` (RFC 7009).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::app::AppState;
use crate::exchange::introspection::{self, Introspected};
use crate::exchange::Peer;
use crate::oauth::error::no_store;
use crate::oauth::request::{check_content_type, parse_form};
use crate::oauth::{ErrorCode, OAuthError};
use crate::routes::auth::{authorize_in, Role};

fn form_token(headers: &HeaderMap, body: &[u8]) -> Result<(String, Option<String>), OAuthError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    check_content_type(ct).map_err(|e| OAuthError::new(e.code))?;
    let form = parse_form(body).map_err(|e| OAuthError::new(e.code))?;
    if form.iter().any(|(_, v)| v.len() > 1) {
        return Err(OAuthError::new(ErrorCode::InvalidRequest));
    }
    let get = |k: &str| {
        form.get(k)
            .and_then(|v| v.first())
            .filter(|s| !s.is_empty())
            .cloned()
    };
    let token = get("token").ok_or(OAuthError::new(ErrorCode::InvalidRequest))?;
    Ok((token, get("token_type_hint")))
}

fn json_no_store(v: Value) -> Response {
    let mut r = Json(v).into_response();
    no_store(&mut r);
    r
}

/// `POST /introspect`: `{"active": false}` for anything not currently valid.
pub async fn introspect(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    let snap = app.snapshot();
    let caller = match authorize_in(&app, &snap, &peer, Role::Introspection) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let (token, _hint) = match form_token(&headers, &body) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let audiences = snap
        .config
        .introspection_audiences
        .get(&caller)
        .map(Vec::as_slice);
    let c = match introspection::introspect(
        &snap.own_tokens,
        &app.stores,
        audiences,
        &token,
        snap.config.limits.max_token_bytes,
        app.clock.now(),
    )
    .await
    {
        Ok(Introspected::Active(c)) => c,
        Ok(Introspected::Inactive) => return json_no_store(json!({"active": false})),
        Err(e) => {
            tracing::warn!(error = %e, "introspection: store unavailable");
            return OAuthError::new(ErrorCode::TemporarilyUnavailable).into_response();
        }
    };
    let mut v = json!({
        "active": true,
        "iss": c.iss, "sub": c.sub, "aud": c.aud, "exp": c.exp, "iat": c.iat, "nbf": c.nbf,
        "jti": c.jti, "client_id": c.client_id, "scope": c.scope, "txn": c.txn,
        "token_type": if c.cnf.as_ref().is_some_and(|x| x.jkt.is_some()) { "DPoP" } else { "Bearer" },
    });
    for (k, val) in [
        ("act", serde_json::to_value(&c.act).ok()),
        ("cnf", serde_json::to_value(&c.cnf).ok()),
        ("grant", serde_json::to_value(&c.grant).ok()),
        ("owner", serde_json::to_value(&c.owner).ok()),
        ("authorization_details", c.authorization_details.clone()),
    ] {
        if let Some(val) = val.filter(|x| !x.is_null()) {
            v[k] = val;
        }
    }
    json_no_store(v)
}

/// `POST /revoke`: a holder revokes its own token; 200 even for unknown tokens.
/// A certificate-bound token can only be revoked over the same certificate.
pub async fn revoke(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    let (token, hint) = match form_token(&headers, &body) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    if let Some(h) = hint.as_deref() {
        if h != "access_token" && h != "refresh_token" {
            return OAuthError::new(ErrorCode::UnsupportedTokenType).into_response();
        }
    }
    let snap = app.snapshot();
    let thumbprint = match &peer {
        Peer::Identified(p) => Some(p.thumbprint.as_str()),
        _ => None,
    };
    let req = introspection::HolderRequest {
        token: &token,
        thumbprint,
        client: &crate::routes::token::peer_name(&peer),
        max_token_bytes: snap.config.limits.max_token_bytes,
    };
    match introspection::revoke_by_holder(
        &snap.own_tokens,
        &app.stores,
        &app.auditor,
        req,
        app.clock.now(),
    )
    .await
    {
        // RFC 7009 answers 200 either way (unknown tokens included).
        Ok(()) => {
            let mut r = axum::http::StatusCode::OK.into_response();
            no_store(&mut r);
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "revoke: store unavailable");
            OAuthError::new(ErrorCode::TemporarilyUnavailable).into_response()
        }
    }
}
