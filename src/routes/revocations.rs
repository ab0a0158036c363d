//! `GET /revocations?since=CURSOR`: the revocation feed for verifiers, as
//! JSON pages or (with `Accept: text/event-stream`) a live stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::exchange::Peer;
use crate::oauth::{ErrorCode, OAuthError};
use crate::routes::auth::{authorize, Role};
use crate::store::feed::FeedEvent;
use crate::store::Revocation;

/// Most entries in one JSON page or one stream poll.
pub const PAGE_LIMIT: usize = 1000;
/// Longest a single stream stays open before the client must resume.
pub const STREAM_MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest cursor accepted.
pub const MAX_CURSOR_LEN: usize = 64;

/// Query of `/revocations`.
#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    /// Exclusive cursor.
    pub since: Option<String>,
}

fn entry_json(r: &Revocation) -> serde_json::Value {
    json!({"kind": r.kind.as_str(), "value": r.value, "revoked_at": r.revoked_at, "expires_at": r.expires_at})
}

/// The handler.
pub async fn revocations(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Query(q): Query<FeedQuery>,
) -> Response {
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    if let Err(e) = authorize(&app, &peer, Role::Introspection) {
        return e.into_response();
    }
    let since = q.since.filter(|s| !s.is_empty());
    if since.as_ref().is_some_and(|s| {
        s.len() > MAX_CURSOR_LEN || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }) {
        return OAuthError::new(ErrorCode::InvalidRequest).into_response();
    }
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if !wants_stream {
        let now = app.clock.now();
        return match app
            .stores
            .revocations
            .list_since(since.as_deref(), PAGE_LIMIT, now)
            .await
        {
            Ok((entries, cursor)) => Json(json!({
                "cursor": cursor,
                "entries": entries.iter().map(|(_, r)| entry_json(r)).collect::<Vec<_>>(),
            }))
            .into_response(),
            Err(crate::store::StoreError::Protocol(_)) => {
                OAuthError::new(ErrorCode::InvalidRequest).into_response()
            }
            Err(e) => {
                tracing::warn!(error = %e, "revocations: store unavailable");
                OAuthError::new(ErrorCode::TemporarilyUnavailable).into_response()
            }
        };
    }
    // Live stream: the process's one feed poller (shared by every stream)
    // pushes new entries as `id: CURSOR / event: revocation / data: ENTRY`;
    // the subscription first catches up from the store after `since`.
    struct St {
        sub: crate::store::feed::FeedSubscription,
        started: tokio::time::Instant,
    }
    let init = St {
        sub: app
            .stores
            .revocation_feed
            .subscribe(since, app.clock.clone()),
        started: tokio::time::Instant::now(),
    };
    let stream = futures_util::stream::unfold(init, |mut st| async move {
        let left = STREAM_MAX_LIFETIME.checked_sub(st.started.elapsed())?;
        let ev = match tokio::time::timeout(left, st.sub.next()).await {
            Err(_) => return None,
            Ok(FeedEvent::Entry(c, r)) => Event::default()
                .id(c)
                .event("revocation")
                .data(entry_json(&r).to_string()),
            // Tell the follower; it keeps its cursor and resumes.
            Ok(FeedEvent::Unavailable(_)) => {
                Event::default().event("error").data("store unavailable")
            }
        };
        Some((Ok::<Event, Infallible>(ev), st))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
