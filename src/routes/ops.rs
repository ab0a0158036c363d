//! `/healthz`, `/readyz`, `/metrics` on the ops listener.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;

/// Liveness: the process answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the store answers within its timeout, the broker is not
/// draining, and the wall clock is trusted (no recent step).
pub async fn readyz(State(app): State<AppState>) -> Response {
    if app.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if let Err(e) = app.clock_trust.check() {
        tracing::warn!(error = %e, "readyz: clock untrusted");
        return (StatusCode::SERVICE_UNAVAILABLE, "clock untrusted\n").into_response();
    }
    // The ping is bounded by the store timeout itself, and goes through the
    // store's circuit breaker: while the breaker is open it fails at once
    // (not ready), and after the cool-off it may be the one probe that closes
    // it. This outer bound is a backstop, longer than the store's own so the
    // store classifies a slow answer itself (a cancelled probe also counts
    // as failed, so a probe slot is never held).
    let backstop = app
        .snapshot()
        .config
        .store
        .timeout
        .saturating_mul(2)
        .max(std::time::Duration::from_millis(100));
    if app.stores.health.data_lost() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "store lost its data (data epoch): run `tessera store recover`\n",
        )
            .into_response();
    }
    match tokio::time::timeout(backstop, app.stores.health.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readyz: store unavailable");
            let body = if e.to_string().contains("circuit open") {
                "store unavailable (circuit breaker open)\n"
            } else {
                "store unavailable\n"
            };
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store timed out\n").into_response(),
    }
}

/// Prometheus text. Gauges that live in the store (pending approvals) are
/// read now, within the store timeout; a store that does not answer leaves
/// them at their last value.
pub async fn metrics(State(app): State<AppState>) -> Response {
    let now = app.clock.now();
    if let Ok(Ok(list)) = tokio::time::timeout(
        app.snapshot().config.store.timeout,
        app.stores.approvals.list_approvals(now),
    )
    .await
    {
        let pending = list
            .iter()
            .filter(|a| a.state == crate::store::ApprovalState::Pending && a.expires_at > now)
            .count();
        crate::telemetry::metrics()
            .approvals_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::metrics().render(),
    )
        .into_response()
}
