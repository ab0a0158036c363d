//! `POST /introspect` (RFC 7662) and `POST /revoke` (RFC 7009).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::app::AppState;
use crate::audit::{AuditRecord, Event};
use crate::exchange::Peer;
use crate::oauth::error::no_store;
use crate::oauth::request::{check_content_type, parse_form};
use crate::oauth::{ErrorCode, OAuthError};
use crate::routes::auth::{authorize_in, Role};
use crate::store::{Revocation, RevocationKind};

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
    if token.len() > snap.config.limits.max_token_bytes {
        return json_no_store(json!({"active": false}));
    }
    let now = app.clock.now();
    let own = match snap.own_tokens.verify(&token, now) {
        Ok(t) => t,
        Err(_) => return json_no_store(json!({"active": false})),
    };
    // RFC 7662 §4: a resource server sees only tokens meant for it.
    if let Some(auds) = snap.config.introspection_audiences.get(&caller) {
        if !auds.iter().any(|a| a == &own.claims.aud) {
            return json_no_store(json!({"active": false}));
        }
    }
    match app.stores.revocations.is_revoked(&own.facts(), now).await {
        Err(e) => {
            tracing::warn!(error = %e, "introspection: store unavailable");
            return OAuthError::new(ErrorCode::TemporarilyUnavailable).into_response();
        }
        Ok(true) => return json_no_store(json!({"active": false})),
        Ok(false) => {}
    }
    let c = &own.claims;
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
    let now = app.clock.now();
    let ok = || {
        let mut r = axum::http::StatusCode::OK.into_response();
        no_store(&mut r);
        r
    };
    let snap = app.snapshot();
    if token.len() > snap.config.limits.max_token_bytes {
        return ok();
    }
    let Ok(own) = snap.own_tokens.verify(&token, now) else {
        return ok();
    };
    if let Some(bound) = own.claims.cnf.as_ref().and_then(|c| c.x5t_s256.as_deref()) {
        let same = matches!(&peer, Peer::Identified(p) if p.thumbprint == bound);
        if !same {
            app.auditor.submit(
                AuditRecord::new(Event::Refused)
                    .reason("revoke_not_holder")
                    .client(&crate::routes::token::peer_name(&peer))
                    .subject(&own.claims.sub)
                    .jti(&own.claims.jti)
                    .token(&token),
            );
            return ok();
        }
    }
    let r = Revocation {
        kind: RevocationKind::Jti,
        value: own.claims.jti.clone(),
        revoked_at: now,
        expires_at: own.claims.exp.max(now + 1),
    };
    match app.stores.revocations.revoke(r).await {
        Ok(cursor) => {
            crate::telemetry::metrics()
                .revocations
                .with_label_values(&["jti"])
                .inc();
            let rec = AuditRecord::new(Event::Revoked)
                .reason("holder")
                .client(&crate::routes::token::peer_name(&peer))
                .subject(&own.claims.sub)
                .task(&own.claims.txn)
                .jti(&own.claims.jti)
                .token(&token)
                .detail(&format!("cursor={cursor}"));
            // RFC 7009 answers 200 either way; the revocation stands.
            if let Err(e) = app.auditor.record(rec).await {
                tracing::error!(error = %e, jti = %own.claims.jti, "holder revocation not audited");
            }
            ok()
        }
        Err(e) => {
            tracing::warn!(error = %e, "revoke: store unavailable");
            OAuthError::new(ErrorCode::TemporarilyUnavailable).into_response()
        }
    }
}
