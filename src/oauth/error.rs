//! The single place where outcomes become OAuth error responses on the wire
//! (RFC 6749 §5.2, RFC 8693 §2.2.2). Descriptions are generic by design: the
//! precise reason goes to the log and audit record, never to the caller.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The error codes Tessera answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed request, or a subject/actor token that is unacceptable.
    InvalidRequest,
    /// Client authentication failed (a client certificate that is not a usable identity).
    InvalidClient,
    /// A JIT grant or approval that does not apply.
    InvalidGrant,
    /// A scope the matching policy does not allow.
    InvalidScope,
    /// An audience/resource the matching policy does not allow.
    InvalidTarget,
    /// `grant_type` other than token exchange or client credentials.
    UnsupportedGrantType,
    /// `token_type_hint` not understood (RFC 7009).
    UnsupportedTokenType,
    /// A human approval is pending.
    AuthorizationPending,
    /// The human approver said no.
    AccessDenied,
    /// The approval expired.
    ExpiredToken,
    /// Too fast: polling faster than `interval`, or rate limited.
    SlowDown,
    /// Malformed RFC 9396 `authorization_details`.
    InvalidAuthorizationDetails,
    /// A DPoP proof that is invalid (RFC 9449 §5).
    InvalidDpopProof,
    /// A DPoP proof must carry the server nonce (RFC 9449 §8).
    UseDpopNonce,
    /// A dependency (store, key, issuer) is unavailable: fail closed.
    TemporarilyUnavailable,
    /// Unexpected internal failure.
    ServerError,
}

impl ErrorCode {
    /// Every code, in declaration order (docs/troubleshooting.md has a
    /// section for each; a test keeps it so).
    pub const ALL: [ErrorCode; 16] = [
        Self::InvalidRequest,
        Self::InvalidClient,
        Self::InvalidGrant,
        Self::InvalidScope,
        Self::InvalidTarget,
        Self::UnsupportedGrantType,
        Self::UnsupportedTokenType,
        Self::AuthorizationPending,
        Self::AccessDenied,
        Self::ExpiredToken,
        Self::SlowDown,
        Self::InvalidAuthorizationDetails,
        Self::InvalidDpopProof,
        Self::UseDpopNonce,
        Self::TemporarilyUnavailable,
        Self::ServerError,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::UnsupportedTokenType => "unsupported_token_type",
            Self::AuthorizationPending => "authorization_pending",
            Self::AccessDenied => "access_denied",
            Self::ExpiredToken => "expired_token",
            Self::SlowDown => "slow_down",
            Self::InvalidAuthorizationDetails => "invalid_authorization_details",
            Self::InvalidDpopProof => "invalid_dpop_proof",
            Self::UseDpopNonce => "use_dpop_nonce",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::ServerError => "server_error",
        }
    }

    /// The HTTP status for this code.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidClient => StatusCode::UNAUTHORIZED,
            Self::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The fixed, generic description: never echoes input or policy. A
    /// refusal's points the operator to its audit record, which holds the
    /// precise reason (`tessera audit tail --error CODE`).
    pub fn description(self) -> &'static str {
        match self {
            Self::InvalidRequest => "the request or a token in it was rejected; the reason is in the broker's audit record (tessera audit tail --error invalid_request)",
            Self::InvalidClient => "client authentication failed; the reason is in the broker's audit record (tessera audit tail --error invalid_client)",
            Self::InvalidGrant => "the grant does not apply to this request; the reason is in the broker's audit record (tessera audit tail --error invalid_grant)",
            Self::InvalidScope => "a requested scope is not permitted; the reason is in the broker's audit record (tessera audit tail --error invalid_scope)",
            Self::InvalidTarget => "the requested target is not permitted; the reason is in the broker's audit record (tessera audit tail --error invalid_target)",
            Self::UnsupportedGrantType => "unsupported grant_type",
            Self::UnsupportedTokenType => "unsupported token_type_hint",
            Self::AuthorizationPending => "waiting for human approval",
            Self::AccessDenied => "the request was denied; the reason is in the broker's audit record (tessera audit tail --error access_denied)",
            Self::ExpiredToken => "the approval expired",
            Self::SlowDown => "slow down",
            Self::InvalidAuthorizationDetails => "authorization_details rejected; the reason is in the broker's audit record (tessera audit tail --error invalid_authorization_details)",
            Self::InvalidDpopProof => "DPoP proof rejected; the reason is in the broker's audit record (tessera audit tail --error invalid_dpop_proof)",
            Self::UseDpopNonce => "retry with the DPoP-Nonce given",
            Self::TemporarilyUnavailable => "temporarily unavailable, retry later",
            Self::ServerError => "internal error",
        }
    }
}

/// An OAuth error response, with optional extra members (`approval_id`,
/// `interval`) and a `Retry-After` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// The code.
    pub code: ErrorCode,
    /// Seconds for `Retry-After` (503 and 429).
    pub retry_after: Option<u64>,
    /// HTTP status override (429 for rate-limit `slow_down`).
    pub status: Option<StatusCode>,
    /// `approval_id` member for `authorization_pending`.
    pub approval_id: Option<String>,
    /// `interval` member for `authorization_pending`.
    pub interval: Option<u64>,
}

impl OAuthError {
    /// An error with just a code.
    pub fn new(code: ErrorCode) -> Self {
        let retry_after = (code == ErrorCode::TemporarilyUnavailable).then_some(1);
        Self {
            code,
            retry_after,
            status: None,
            approval_id: None,
            interval: None,
        }
    }

    /// `429 slow_down` with `Retry-After`.
    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            code: ErrorCode::SlowDown,
            retry_after: Some(retry_after),
            status: Some(StatusCode::TOO_MANY_REQUESTS),
            approval_id: None,
            interval: None,
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'static str,
    error_description: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<u64>,
}

/// Adds `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1).
pub fn no_store(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.code.as_str(),
            error_description: self.code.description(),
            approval_id: self.approval_id.as_deref(),
            interval: self.interval,
        };
        let status = self.status.unwrap_or_else(|| self.code.status());
        let mut resp = (status, axum::Json(body)).into_response();
        no_store(&mut resp);
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.code == ErrorCode::InvalidClient {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Mutual-TLS realm=\"tessera\""),
            );
        }
        resp
    }
}

/// `Retry-After` when a requester has too many live approvals.
pub const APPROVALS_FULL_RETRY_SECS: u64 = 30;

impl From<ErrorCode> for OAuthError {
    fn from(code: ErrorCode) -> Self {
        Self::new(code)
    }
}

/// The one table from domain outcomes to wire codes (RFC 8693 §2.2.2: a bad
/// subject or actor token is `invalid_request`, never `invalid_grant`).
impl From<&crate::exchange::ExchangeError> for OAuthError {
    fn from(e: &crate::exchange::ExchangeError) -> Self {
        use crate::exchange::ExchangeError as E;
        match e {
            E::ApprovalPending { id, interval } => {
                return OAuthError {
                    approval_id: Some(id.clone()),
                    interval: Some(*interval),
                    ..OAuthError::new(ErrorCode::AuthorizationPending)
                }
            }
            E::ApprovalSlowDown { interval } => {
                return OAuthError {
                    interval: Some(*interval),
                    ..OAuthError::new(ErrorCode::SlowDown)
                }
            }
            E::ApprovalsFull => return OAuthError::rate_limited(APPROVALS_FULL_RETRY_SECS),
            E::Guard {
                action: crate::exchange::guard::GuardAction::SlowDown,
                retry_after,
                ..
            } => return OAuthError::rate_limited((*retry_after).max(1)),
            _ => {}
        }
        let code = match e {
            E::Malformed(_)
            | E::SubjectToken(_)
            | E::ActorToken(_)
            | E::NoPolicy
            | E::Blocked
            | E::NoLifetime => ErrorCode::InvalidRequest,
            E::ClientAuth(_) => ErrorCode::InvalidClient,
            E::Target => ErrorCode::InvalidTarget,
            E::Scope(_) | E::GrantRequired(_) | E::ApprovalRequired(_) => ErrorCode::InvalidScope,
            E::ApprovalPending { .. } => ErrorCode::AuthorizationPending,
            E::ApprovalSlowDown { .. } | E::ApprovalsFull => ErrorCode::SlowDown,
            E::ApprovalDenied => ErrorCode::AccessDenied,
            // `revoke`: like the kill switch; `approval` where none can be
            // asked for (a re-exchange): denied.
            E::Guard { action, .. } => match action {
                crate::exchange::guard::GuardAction::Revoke => ErrorCode::InvalidRequest,
                _ => ErrorCode::AccessDenied,
            },
            E::ApprovalExpired => ErrorCode::ExpiredToken,
            E::ApprovalInvalid => ErrorCode::InvalidGrant,
            E::AuthorizationDetails(_) => ErrorCode::InvalidAuthorizationDetails,
            E::DpopProof(_) => ErrorCode::InvalidDpopProof,
            E::UseDpopNonce => ErrorCode::UseDpopNonce,
            E::StoreUnavailable(_)
            | E::KeysUnavailable(_)
            | E::KeysStale(_)
            | E::ClockUntrusted(_)
            | E::Signing(_)
            | E::AuditUnavailable(_) => ErrorCode::TemporarilyUnavailable,
        };
        OAuthError::new(code)
    }
}

impl From<&crate::oauth::request::RequestError> for OAuthError {
    fn from(e: &crate::oauth::request::RequestError) -> Self {
        OAuthError::new(e.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshot of every error body, so a misspelt code cannot ship.
    #[tokio::test]
    async fn every_error_body_snapshot() {
        let all = [
            (ErrorCode::InvalidRequest, 400, "invalid_request"),
            (ErrorCode::InvalidClient, 401, "invalid_client"),
            (ErrorCode::InvalidGrant, 400, "invalid_grant"),
            (ErrorCode::InvalidScope, 400, "invalid_scope"),
            (ErrorCode::InvalidTarget, 400, "invalid_target"),
            (
                ErrorCode::UnsupportedGrantType,
                400,
                "unsupported_grant_type",
            ),
            (
                ErrorCode::UnsupportedTokenType,
                400,
                "unsupported_token_type",
            ),
            (
                ErrorCode::AuthorizationPending,
                400,
                "authorization_pending",
            ),
            (ErrorCode::AccessDenied, 400, "access_denied"),
            (ErrorCode::ExpiredToken, 400, "expired_token"),
            (ErrorCode::SlowDown, 400, "slow_down"),
            (
                ErrorCode::InvalidAuthorizationDetails,
                400,
                "invalid_authorization_details",
            ),
            (
                ErrorCode::TemporarilyUnavailable,
                503,
                "temporarily_unavailable",
            ),
            (ErrorCode::ServerError, 500, "server_error"),
        ];
        for (code, status, wire) in all {
            let resp = OAuthError::new(code).into_response();
            assert_eq!(resp.status().as_u16(), status, "{wire}");
            assert_eq!(resp.headers()["cache-control"], "no-store");
            assert_eq!(resp.headers()["pragma"], "no-cache");
            let bytes = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["error"], wire);
            assert_eq!(v["error_description"], code.description());
            assert_eq!(v.as_object().unwrap().len(), 2);
        }
        // authorization_pending carries approval_id and interval (RFC 8628 §3.5 style)
        let e = crate::exchange::ExchangeError::ApprovalPending {
            id: "4f1c".into(),
            interval: 5,
        };
        let resp = OAuthError::from(&e).into_response();
        assert_eq!(resp.status(), 400);
        let bytes = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "authorization_pending",
                "error_description": "waiting for human approval", "approval_id": "4f1c", "interval": 5})
        );
        use crate::exchange::ExchangeError as E;
        for (e, wire) in [
            (E::ApprovalSlowDown { interval: 5 }, "slow_down"),
            (E::ApprovalDenied, "access_denied"),
            (E::ApprovalExpired, "expired_token"),
            (E::ApprovalInvalid, "invalid_grant"),
            (
                E::AuthorizationDetails(crate::exchange::DetailsReason::Required),
                "invalid_authorization_details",
            ),
        ] {
            assert_eq!(OAuthError::from(&e).code.as_str(), wire);
        }
        use crate::exchange::guard::{GuardAction, Trigger};
        let guard = |action| E::Guard {
            trigger: Trigger::Rate,
            action,
            identity: "x".into(),
            retry_after: 7,
        };
        let r = OAuthError::from(&guard(GuardAction::SlowDown)).into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "7");
        let bytes = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"], "slow_down");
        assert_eq!(
            OAuthError::from(&guard(GuardAction::Revoke)).code.as_str(),
            "invalid_request"
        );
        assert_eq!(
            OAuthError::from(&guard(GuardAction::Approval))
                .code
                .as_str(),
            "access_denied"
        );
        let r = OAuthError::from(&E::ApprovalsFull).into_response();
        assert_eq!(r.status(), 429);
        let r = OAuthError::rate_limited(3).into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "3");
        let r = OAuthError::new(ErrorCode::TemporarilyUnavailable).into_response();
        assert_eq!(r.headers()["retry-after"], "1");
    }

    /// A refusal's generic description names how the operator finds the
    /// precise reason: `tessera audit tail --error CODE` (the audit record
    /// carries `error` and `reason`); waiting and outage answers do not.
    #[test]
    fn refusals_point_to_their_audit_record() {
        use ErrorCode as C;
        for c in [
            C::InvalidRequest,
            C::InvalidClient,
            C::InvalidGrant,
            C::InvalidScope,
            C::InvalidTarget,
            C::AccessDenied,
            C::InvalidAuthorizationDetails,
            C::InvalidDpopProof,
        ] {
            let hint = format!("(tessera audit tail --error {})", c.as_str());
            assert!(c.description().ends_with(&hint), "{}", c.description());
        }
        for c in [
            C::AuthorizationPending,
            C::SlowDown,
            C::TemporarilyUnavailable,
        ] {
            assert!(!c.description().contains("audit"), "{}", c.description());
        }
    }

    /// docs/troubleshooting.md has a section for every code, naming its
    /// HTTP status; docs/openapi.yaml lists exactly these codes, in order.
    #[test]
    fn the_docs_name_every_code() {
        let t = include_str!("../../docs/troubleshooting.md");
        for c in ErrorCode::ALL {
            let head = format!("### `{}`\n", c.as_str());
            let section = t
                .split(&head)
                .nth(1)
                .unwrap_or_else(|| panic!("docs/troubleshooting.md has no {head}"));
            let section = section.split("\n#").next().unwrap_or_default();
            assert!(
                section.contains(&format!("HTTP {}", c.status().as_u16())),
                "{}: its section names another status than {}",
                c.as_str(),
                c.status()
            );
        }
        let api = include_str!("../../docs/openapi.yaml");
        let listed: Vec<&str> = api
            .split("          enum:\n")
            .nth(1)
            .unwrap_or_default()
            .lines()
            .map_while(|l| l.trim().strip_prefix("- "))
            .collect();
        let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, all, "docs/openapi.yaml OAuthError.error enum");
    }
}
