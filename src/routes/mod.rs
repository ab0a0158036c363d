//! HTTP in and out only: each handler turns a request into a call on the
//! domain types and the result into a response.

pub mod admin;
pub mod admin_error;
pub mod auth;
pub mod introspect;
pub mod metadata;
pub mod ops;
pub mod revocations;
pub mod token;

use axum::routing::{delete, get, post};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::app::AppState;

/// The HTTPS router.
pub fn router(state: AppState) -> Router {
    // Restart-only: a reload that changes [limits] is refused.
    let limits = state.snapshot().config.limits.clone();
    Router::new()
        .route("/token", post(token::token))
        .route("/introspect", post(introspect::introspect))
        .route("/revoke", post(introspect::revoke))
        .route("/revocations", get(revocations::revocations))
        .route("/admin/v1/revocations", post(admin::revoke))
        .route(
            "/admin/v1/grants",
            post(admin::create_grant).get(admin::list_grants),
        )
        .route("/admin/v1/grants/{id}", delete(admin::revoke_grant))
        .route("/admin/v1/blocks", get(admin::list_blocks))
        .route("/admin/v1/unblock", post(admin::unblock))
        .route("/admin/v1/store/recover", post(admin::recover_store))
        .route("/admin/v1/approvals", get(admin::list_approvals))
        .route("/admin/v1/approvals/{id}/approve", post(admin::approve))
        .route("/admin/v1/approvals/{id}/deny", post(admin::deny))
        .route("/admin/v1/audit", get(admin::audit))
        .route("/admin/v1/audit/checkpoints", get(admin::audit_checkpoints))
        .route("/admin/v1/reload", post(admin::reload))
        .route("/jwks.json", get(metadata::jwks))
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata::metadata),
        )
        .route("/.well-known/openid-configuration", get(metadata::metadata))
        .fallback(metadata::not_found)
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .with_state(state)
}

/// The plain-HTTP ops router (`/healthz`, `/readyz`, `/metrics`).
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .with_state(state)
}
