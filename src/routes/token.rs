//! `POST /token` (RFC 8693 token exchange, and `client_credentials` over mTLS).

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;

use crate::app::AppState;
use crate::exchange::{ExchangeError, Issued, Peer};
use crate::oauth::error::{no_store, OAuthError};
use crate::oauth::request::{check_content_type, parse_form, token_request, RequestError};
use crate::telemetry::{log_safe, metrics, token_hash};

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    issued_token_type: &'static str,
    token_type: &'static str,
    expires_in: u64,
    scope: &'a str,
}

enum Refusal {
    Request(RequestError),
    Exchange(ExchangeError),
}

/// The `/token` handler.
pub async fn token(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    let result = run(&app, &peer, &uri, &headers, &body).await;
    let m = metrics();
    match result {
        Ok(issued) => {
            m.exchanges.with_label_values(&["issued", "ok"]).inc();
            m.exchange_seconds
                .with_label_values(&["issued"])
                .observe(started.elapsed().as_secs_f64());
            tracing::info!(
                target: "tessera::audit",
                decision = "issued",
                jti = %issued.claims.jti,
                token_sha256 = %token_hash(&issued.access_token),
                sub = %log_safe(&issued.claims.sub),
                client_id = %log_safe(&issued.claims.client_id),
                aud = %log_safe(&issued.claims.aud),
                scope = %issued.scope,
                txn = %issued.claims.txn,
                policy = %issued.policy,
                approval = issued.approval.as_deref().unwrap_or("-"),
                exp = issued.claims.exp,
                "token issued"
            );
            let mut resp = success(&issued);
            add_nonce(&app, &mut resp);
            resp
        }
        Err(refusal) => {
            let (err, reason, detail) = match &refusal {
                Refusal::Request(e) => (OAuthError::from(e), e.reason, String::new()),
                Refusal::Exchange(e) => (OAuthError::from(e), e.reason(), e.to_string()),
            };
            let outcome = if err.code == crate::oauth::ErrorCode::TemporarilyUnavailable {
                "unavailable"
            } else {
                "refused"
            };
            m.exchanges.with_label_values(&[outcome, reason]).inc();
            m.exchange_seconds
                .with_label_values(&[outcome])
                .observe(started.elapsed().as_secs_f64());
            tracing::info!(
                target: "tessera::audit",
                decision = outcome,
                error = err.code.as_str(),
                reason,
                detail = %log_safe(&detail),
                client = %peer_name(&peer),
                "token refused"
            );
            let dpop = err.code == crate::oauth::ErrorCode::UseDpopNonce;
            let mut resp = err.into_response();
            if dpop {
                add_nonce(&app, &mut resp);
            }
            resp
        }
    }
}

/// `DPoP-Nonce` on every `/token` answer when nonces are required.
fn add_nonce(app: &AppState, resp: &mut Response) {
    if let Some(n) = app.exchanger.dpop_nonce() {
        if let Ok(v) = axum::http::HeaderValue::from_str(&n) {
            resp.headers_mut().insert("dpop-nonce", v);
        }
    }
}

async fn run(
    app: &AppState,
    peer: &Peer,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Issued, Refusal> {
    let req_err = |code, reason| Refusal::Request(RequestError { code, reason });
    use crate::oauth::ErrorCode::InvalidRequest;
    // RFC 6749 §3.2: parameters travel in the body only.
    if uri.query().is_some() {
        return Err(req_err(InvalidRequest, "parameters_in_query"));
    }
    // Client authentication is by TLS only; any other mechanism alongside it
    // is refused rather than silently ignored (RFC 6749 §2.3).
    if headers.contains_key(header::AUTHORIZATION) {
        return Err(req_err(
            InvalidRequest,
            "authorization_header_not_supported",
        ));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    check_content_type(ct).map_err(Refusal::Request)?;
    let form = parse_form(body).map_err(Refusal::Request)?;
    let mut req =
        token_request(&form, app.config.limits.max_token_bytes).map_err(Refusal::Request)?;
    let mut proofs = headers.get_all("dpop").iter();
    if let Some(p) = proofs.next() {
        let bad = || Refusal::Exchange(ExchangeError::DpopProof("dpop_header_malformed"));
        if proofs.next().is_some() {
            return Err(bad());
        }
        req.dpop = Some(p.to_str().map_err(|_| bad())?.to_string());
    }
    app.exchanger
        .exchange(req, peer)
        .await
        .map_err(Refusal::Exchange)
}

fn success(i: &Issued) -> Response {
    let body = TokenResponse {
        access_token: &i.access_token,
        issued_token_type: i.issued_token_type.as_str(),
        token_type: i.token_type,
        expires_in: i.expires_in,
        scope: &i.scope,
    };
    let mut resp = Json(body).into_response();
    no_store(&mut resp);
    resp
}

fn peer_name(p: &Peer) -> String {
    match p {
        Peer::Anonymous => "-".into(),
        Peer::Identified(p) => log_safe(&p.subject),
        Peer::Unusable(r) => format!("unusable-certificate:{r}"),
    }
}
