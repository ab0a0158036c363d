//! The admin API's one error-to-wire table (the OAuth one is
//! `oauth::error`): every admin error is an [`AdminCode`] with its status,
//! and the body `{"error": code, "message": …}`. Operators are trusted
//! callers, so the message may name the cause. The CLI keys on the code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An admin API error code, with its one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCode {
    /// 400: the request is malformed or out of bounds.
    InvalidRequest,
    /// 400: the grant asked for could not issue any token.
    UnusableGrant,
    /// 401: the operator certificate is not in `[admin] subjects`.
    NotAuthorised,
    /// 403: an operator may not approve their own request.
    SelfApproval,
    /// 403: the policy names its `approvers`; they decide on the approval
    /// pages, not an operator certificate.
    PolicyHasApprovers,
    /// 403: a CIBA request is decided only by the person it names.
    CibaNeedsThePerson,
    /// 404: no such live grant, approval or block.
    NotFound,
    /// 404: the subject was not blocked.
    NotBlocked,
    /// 409: the store has not lost its data (nothing to recover).
    NotLost,
    /// 409: the approval was already decided.
    NotPending,
    /// 409: the approval expired before the decision.
    Expired,
    /// 409: a reload was refused; the configuration in force stays.
    ReloadRejected,
    /// 500: the change WAS made but its audit record could not be written.
    AuditUnavailable,
    /// 503: the store or the audit trail is unavailable; no change made.
    TemporarilyUnavailable,
}

impl AdminCode {
    /// Every code, in table order (the snapshot test walks it).
    pub const ALL: [AdminCode; 14] = [
        AdminCode::InvalidRequest,
        AdminCode::UnusableGrant,
        AdminCode::NotAuthorised,
        AdminCode::SelfApproval,
        AdminCode::PolicyHasApprovers,
        AdminCode::CibaNeedsThePerson,
        AdminCode::NotFound,
        AdminCode::NotBlocked,
        AdminCode::NotLost,
        AdminCode::NotPending,
        AdminCode::Expired,
        AdminCode::ReloadRejected,
        AdminCode::AuditUnavailable,
        AdminCode::TemporarilyUnavailable,
    ];

    /// The code on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminCode::InvalidRequest => "invalid_request",
            AdminCode::UnusableGrant => "unusable_grant",
            AdminCode::NotAuthorised => "not_authorised",
            AdminCode::SelfApproval => "self_approval",
            AdminCode::PolicyHasApprovers => "policy_has_approvers",
            AdminCode::CibaNeedsThePerson => "ciba_needs_the_person",
            AdminCode::NotFound => "not_found",
            AdminCode::NotBlocked => "not_blocked",
            AdminCode::NotLost => "not_lost",
            AdminCode::NotPending => "not_pending",
            AdminCode::Expired => "expired",
            AdminCode::ReloadRejected => "reload_rejected",
            AdminCode::AuditUnavailable => "audit_unavailable",
            AdminCode::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    /// Its HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            AdminCode::InvalidRequest | AdminCode::UnusableGrant => StatusCode::BAD_REQUEST,
            AdminCode::NotAuthorised => StatusCode::UNAUTHORIZED,
            AdminCode::SelfApproval
            | AdminCode::PolicyHasApprovers
            | AdminCode::CibaNeedsThePerson => StatusCode::FORBIDDEN,
            AdminCode::NotFound | AdminCode::NotBlocked => StatusCode::NOT_FOUND,
            AdminCode::NotLost
            | AdminCode::NotPending
            | AdminCode::Expired
            | AdminCode::ReloadRejected => StatusCode::CONFLICT,
            AdminCode::AuditUnavailable => StatusCode::INTERNAL_SERVER_ERROR,
            AdminCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The code for a wire string, if it is one.
    pub fn from_wire(s: &str) -> Option<AdminCode> {
        AdminCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// An admin API error: a code from the table and a message for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    /// The code (and so the status).
    pub code: AdminCode,
    /// What the CLI prints.
    pub message: String,
}

impl AdminError {
    /// An error with this code and message.
    pub fn new(code: AdminCode, message: impl Into<String>) -> Self {
        AdminError {
            code,
            message: message.into(),
        }
    }

    /// The response body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": self.code.as_str(), "message": self.message})
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.code.status(), Json(self.body())).into_response()
    }
}

/// The response of an admin error (the handlers' shorthand).
pub fn response(code: AdminCode, message: impl Into<String>) -> Response {
    AdminError::new(code, message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshot of the whole table: a misspelt code or a changed status
    /// cannot ship unnoticed (the CLI keys on these codes).
    #[test]
    fn every_admin_error_body_and_status() {
        let got: Vec<String> = AdminCode::ALL
            .iter()
            .map(|c| {
                let e = AdminError::new(*c, "m");
                format!("{} {}", c.status().as_u16(), e.body())
            })
            .collect();
        assert_eq!(
            got,
            [
                r#"400 {"error":"invalid_request","message":"m"}"#,
                r#"400 {"error":"unusable_grant","message":"m"}"#,
                r#"401 {"error":"not_authorised","message":"m"}"#,
                r#"403 {"error":"self_approval","message":"m"}"#,
                r#"403 {"error":"policy_has_approvers","message":"m"}"#,
                r#"403 {"error":"ciba_needs_the_person","message":"m"}"#,
                r#"404 {"error":"not_found","message":"m"}"#,
                r#"404 {"error":"not_blocked","message":"m"}"#,
                r#"409 {"error":"not_lost","message":"m"}"#,
                r#"409 {"error":"not_pending","message":"m"}"#,
                r#"409 {"error":"expired","message":"m"}"#,
                r#"409 {"error":"reload_rejected","message":"m"}"#,
                r#"500 {"error":"audit_unavailable","message":"m"}"#,
                r#"503 {"error":"temporarily_unavailable","message":"m"}"#,
            ]
        );
        for c in AdminCode::ALL {
            assert_eq!(AdminCode::from_wire(c.as_str()), Some(c));
        }
        assert_eq!(AdminCode::from_wire("nope"), None);
    }

    /// No admin handler spells an error inline: it names no error status
    /// and builds no error body itself, so every error goes through this
    /// table.
    #[test]
    fn admin_handlers_spell_no_error_inline() {
        let src = include_str!("admin.rs");
        let src = src.split("#[cfg(test)]").next().unwrap_or(src);
        for c in AdminCode::ALL {
            let status = c
                .status()
                .canonical_reason()
                .unwrap_or("")
                .to_uppercase()
                .replace(' ', "_");
            let spelt = format!("StatusCode::{status}");
            assert!(
                !src.contains(&spelt),
                "admin.rs answers {spelt} itself: use AdminCode::{c:?}"
            );
        }
        assert!(
            !src.contains("\"error\""),
            "admin.rs builds an error body itself: use admin_error::response"
        );
    }
}
