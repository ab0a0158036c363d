//! The domain outcome of a refused exchange, with full detail for the log and
//! audit record. `oauth::error` maps it to the wire in one table.

/// Why an exchange was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    /// The request's shape (a parse-level reason code).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The subject token is invalid, expired, revoked, untrusted or unusable.
    #[error("subject token rejected: {0}")]
    SubjectToken(&'static str),
    /// The actor token is invalid or not acceptable.
    #[error("actor token rejected: {0}")]
    ActorToken(&'static str),
    /// Client authentication failed (client certificate missing where
    /// required, or not a usable identity).
    #[error("client authentication failed: {0}")]
    ClientAuth(&'static str),
    /// No policy matches the subject.
    #[error("no policy matches the subject")]
    NoPolicy,
    /// Matching policies exist but none allows the audience.
    #[error("no matching policy allows the target")]
    Target,
    /// A requested scope is not allowed (names the refused scopes for the log).
    #[error("scope refused: {0}")]
    Scope(String),
    /// A JIT scope was asked for and no live grant covers it (names the scopes).
    #[error("no live JIT grant covers: {0}")]
    GrantRequired(String),
    /// A scope needs a human approval that this path cannot ask for (an
    /// actor's approval scope on a re-exchange).
    #[error("approval required for: {0}")]
    ApprovalRequired(String),
    /// A human approval is pending: poll again with `approval_id`.
    #[error("approval {id} pending")]
    ApprovalPending {
        /// The approval id to poll with.
        id: String,
        /// Seconds to wait between polls.
        interval: u64,
    },
    /// Polled a pending approval faster than the interval (RFC 8628).
    #[error("approval polled too fast")]
    ApprovalSlowDown {
        /// Seconds to wait between polls.
        interval: u64,
    },
    /// The approver denied the request.
    #[error("approval denied")]
    ApprovalDenied,
    /// The approval expired before it was decided or redeemed.
    #[error("approval expired")]
    ApprovalExpired,
    /// The approval id is unknown, someone else's, bound to another request
    /// or already redeemed (one reason code for all: nothing leaks).
    #[error("approval not usable for this request")]
    ApprovalInvalid,
    /// The requester has too many live approvals.
    #[error("too many live approvals for this requester")]
    ApprovalsFull,
    /// RFC 9396 details missing where a policy requires them, or unusable.
    #[error("authorization_details rejected: {0}")]
    AuthorizationDetails(&'static str),
    /// The DPoP proof is invalid or replayed.
    #[error("DPoP proof rejected: {0}")]
    DpopProof(&'static str),
    /// The DPoP proof lacks a valid server nonce: retry with the one given.
    #[error("DPoP nonce required")]
    UseDpopNonce,
    /// The subject is blocked by the kill switch.
    #[error("subject is blocked")]
    Blocked,
    /// No lifetime is left (the subject credential expires too soon).
    #[error("no lifetime left")]
    NoLifetime,
    /// The store could not answer: fail closed.
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// An issuer's keys could not be fetched: fail closed.
    #[error("issuer keys unavailable: {0}")]
    KeysUnavailable(String),
    /// An issuer's keys are older than its max-stale window: fail closed.
    #[error("issuer keys stale: {0}")]
    KeysStale(String),
    /// The wall clock stepped recently (clock-trust quarantine): fail closed.
    #[error("clock untrusted: {0}")]
    ClockUntrusted(String),
    /// Signing failed: fail closed.
    #[error("signing failed: {0}")]
    Signing(String),
    /// The anomaly guard acted on this request (`slow_down`: 429 with
    /// `Retry-After`; `revoke`: the identity's tokens were revoked and it is
    /// blocked; `approval` where no human approval can be asked for).
    #[error("anomaly guard: {} for {identity}: {}", .trigger.reason(), .action.as_str())]
    Guard {
        /// What fired.
        trigger: super::guard::Trigger,
        /// What the guard did.
        action: super::guard::GuardAction,
        /// The identity it was about.
        identity: String,
        /// Seconds until the identity may try again.
        retry_after: u64,
    },
    /// The decision's audit record could not be written: fail closed.
    #[error("audit unavailable: {0}")]
    AuditUnavailable(String),
}

impl ExchangeError {
    /// A stable reason code for metrics and audit records.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(r)
            | Self::SubjectToken(r)
            | Self::ActorToken(r)
            | Self::ClientAuth(r) => r,
            Self::DpopProof(r) => r,
            Self::NoPolicy => "no_matching_policy",
            Self::UseDpopNonce => "dpop_nonce_required",
            Self::Target => "target_not_allowed",
            Self::Scope(_) => "scope_not_allowed",
            Self::GrantRequired(_) => "jit_grant_required",
            Self::ApprovalRequired(_) => "approval_required",
            Self::ApprovalPending { .. } => "approval_pending",
            Self::ApprovalSlowDown { .. } => "approval_polled_too_fast",
            Self::ApprovalDenied => "approval_denied",
            Self::ApprovalExpired => "approval_expired",
            Self::ApprovalInvalid => "approval_not_usable",
            Self::ApprovalsFull => "too_many_approvals",
            Self::AuthorizationDetails(r) => r,
            Self::Blocked => "subject_blocked",
            Self::NoLifetime => "no_lifetime_left",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::KeysUnavailable(_) => "issuer_keys_unavailable",
            Self::KeysStale(_) => "issuer_keys_stale",
            Self::ClockUntrusted(_) => "clock_untrusted",
            Self::Signing(_) => "signing_failed",
            Self::AuditUnavailable(_) => "audit_unavailable",
            Self::Guard { trigger, .. } => trigger.reason(),
        }
    }
}

impl From<crate::store::StoreError> for ExchangeError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::StoreUnavailable(e.to_string())
    }
}
