//! RFC 8414 metadata and the JWKS.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::app::AppState;
use crate::oauth::request::{TokenType, GRANT_TOKEN_EXCHANGE};

/// How long verifiers may cache `/jwks.json`.
pub const JWKS_MAX_AGE_SECS: u64 = 60;

/// `GET /.well-known/oauth-authorization-server` (also served at
/// `/.well-known/openid-configuration`).
pub async fn metadata(State(app): State<AppState>) -> Response {
    let snap = app.snapshot();
    let iss = &snap.config.server.issuer;
    // RFC 8414 §2: every endpoint this listener serves, with how a caller
    // authenticates to it. `response_types_supported` is REQUIRED by RFC
    // 8414 and OpenID Discovery; Tessera has no authorization endpoint, so
    // the true list is empty (a value would advertise a flow not served).
    let mut body = json!({
        "issuer": iss,
        "token_endpoint": format!("{iss}/token"),
        "jwks_uri": format!("{iss}/jwks.json"),
        "introspection_endpoint": format!("{iss}/introspect"),
        "revocation_endpoint": format!("{iss}/revoke"),
        "grant_types_supported": [GRANT_TOKEN_EXCHANGE, "client_credentials"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["tls_client_auth", "none"],
        // /introspect: an mTLS identity in [introspection] or [admin] subjects.
        "introspection_endpoint_auth_methods_supported": ["tls_client_auth"],
        // /revoke: the holder of the token (a bound token over its certificate).
        "revocation_endpoint_auth_methods_supported": ["tls_client_auth", "none"],
        "tls_client_certificate_bound_access_tokens": true,
        "access_token_signing_alg_values_supported": [snap.minter.algorithm().as_str()],
        "dpop_signing_alg_values_supported": crate::identity::dpop::DPOP_ALGS.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        "subject_token_types_supported": TokenType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
    });
    // OpenID CIBA (poll mode) when the approval pages are on.
    if snap.config.approvals_login.is_some() {
        if let Some(o) = body.as_object_mut() {
            for (k, v) in crate::exchange::ciba::metadata(iss) {
                o.insert(k.to_string(), v);
            }
            if let Some(serde_json::Value::Array(g)) = o.get_mut("grant_types_supported") {
                g.push(json!(crate::exchange::ciba::GRANT_CIBA));
            }
        }
    }
    let mut r = Json(body).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

/// `GET /jwks.json`: every public key a live token can be signed with.
pub async fn jwks(State(app): State<AppState>) -> Response {
    let mut r = Json(app.snapshot().keyring.jwks_ref()).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={JWKS_MAX_AGE_SECS}")) {
        r.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    r
}

/// Anything else: 404 with an OAuth-style body.
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not_found", "error_description": "no such endpoint"})),
    )
        .into_response()
}
