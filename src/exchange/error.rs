//! The domain outcome of a refused exchange, with full detail for the log and
//! audit record. `oauth::error` maps it to the wire in one table.
//!
//! Every reason is a type with a stable `as_str` (the audit record's
//! `reason`): the exchange's own reasons are named variants, a lower
//! layer's reason is wrapped as that layer's type.

use crate::identity::dpop::DpopError;
use crate::identity::own::OwnTokenRefusal;
use crate::jose::jws::JwsError;
use crate::policy::delegation::DelegationDenial;
use crate::policy::Denial;

/// Defines a reason enum of unit variants with a stable `as_str`, `ALL`
/// (every variant, for tests) and `Display` (the `as_str`).
macro_rules! reasons {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vm])* $v,)+
        }

        impl $name {
            /// Every variant.
            pub const ALL: &'static [Self] = &[$(Self::$v),+];

            /// The stable reason code (audit records, metrics).
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => $s,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

reasons! {
    /// Why a request's shape is refused ([`ExchangeError::Malformed`]).
    MalformedReason {
        /// A JWT subject token type without `subject_token`.
        SubjectTokenMissing => "subject_token_missing",
        /// A DPoP proof together with a client certificate.
        DpopWithClientCertificate => "dpop_with_client_certificate",
        /// `approval_id` on a request that needs no approval.
        ApprovalIdNotApplicable => "approval_id_not_applicable",
        /// A re-exchange names another task than its parent's.
        TaskDiffersFromParent => "task_differs_from_parent",
        /// A re-exchange asks for other `authorization_details` than its
        /// parent's.
        AuthorizationDetailsDifferFromParent => "authorization_details_differ_from_parent",
        /// A CIBA poll without `auth_req_id`.
        AuthReqIdMissing => "auth_req_id_missing",
    }
}

reasons! {
    /// Why RFC 9396 details are refused ([`ExchangeError::AuthorizationDetails`]).
    DetailsReason {
        /// A policy requires `authorization_details` and there are none.
        Required => "authorization_details_required",
    }
}

/// Why client authentication failed ([`ExchangeError::ClientAuth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthReason {
    /// No client certificate where one is required.
    CertificateRequired,
    /// The client certificate has expired.
    CertificateExpired,
    /// The policy requires a sender-constrained token and the request
    /// offers no binding.
    BindingRequired,
    /// The client certificate is not a usable identity (`Peer::Unusable`'s
    /// reason code, such as `cert_no_identity`).
    Peer(&'static str),
}

impl ClientAuthReason {
    /// The stable reason code (audit records, metrics).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CertificateRequired => "client_certificate_required",
            Self::CertificateExpired => "client_certificate_expired",
            Self::BindingRequired => "binding_required",
            Self::Peer(r) => r,
        }
    }
}

/// Why a DPoP proof is refused ([`ExchangeError::DpopProof`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpopReason {
    /// More than one `DPoP` header, or one that is not text.
    HeaderMalformed,
    /// The proof's `jti` was seen before.
    Replayed,
    /// The proof does not verify.
    Proof(DpopError),
}

impl DpopReason {
    /// The stable reason code (audit records, metrics).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HeaderMalformed => "dpop_header_malformed",
            Self::Replayed => "dpop_replayed",
            Self::Proof(e) => e.as_str(),
        }
    }
}

/// Why a subject or actor token is refused ([`ExchangeError::SubjectToken`],
/// [`ExchangeError::ActorToken`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenReason {
    /// Not a well-formed JWS.
    Jws(JwsError),
    /// One of Tessera's own tokens, refused on re-exchange.
    Own(OwnTokenRefusal),
    /// An OIDC issuer's token, refused by its verifier (`OidcError::Rejected`'s
    /// reason code).
    Oidc(&'static str),
    /// The header `typ` is not accepted for this issuer.
    TypNotAccepted,
    /// No `iss` claim.
    IssMissing,
    /// `iss` names no trusted issuer.
    IssuerNotTrusted,
    /// No `jti` where the issuer requires replay protection.
    JtiMissing,
    /// The `jti` was seen before.
    JtiReplayed,
    /// An mTLS token that is not the client certificate's thumbprint.
    MtlsThumbprintMismatch,
    /// An access token type whose token Tessera did not issue.
    AccessTokenNotIssuedHere,
    /// An actor token that Tessera issued.
    ActorTokenIssuedHere,
    /// An actor token type that is not accepted.
    ActorTokenTypeUnsupported,
    /// The parent token is revoked.
    Revoked,
    /// The parent is bound to another certificate.
    BindingMismatch,
    /// The parent is bound to another DPoP key.
    DpopBindingMismatch,
    /// The parent's binding method is not accepted on re-exchange.
    BindingUnsupported,
    /// The presenter is not the parent's holder.
    PresenterNotHolder,
    /// The re-exchange chain is too deep.
    ReexchangeTooDeep,
    /// The parent's `scope` claim does not parse.
    ParentScopeMalformed,
    /// The subject's `may_act` claim does not parse.
    MayActMalformed,
    /// The actor chain is longer than allowed.
    ActChainTooDeep,
    /// A prior actor's issuer is not trusted.
    ActorIssuerUnknown,
    /// The actor is the subject.
    ActorIsSubject,
    /// The subject's `may_act` does not name the actor.
    ActorNotInMayAct,
    /// No policy matches the actor.
    ActorNoPolicy,
    /// The actor's policies do not allow the audience.
    ActorTargetNotAllowed,
    /// The actor's policies do not allow every scope.
    ActorScopeNotAllowed,
    /// The actor's policy does not list the subject's issuer in `may_act_for`.
    MayActForMissing,
}

impl TokenReason {
    /// The stable reason code (audit records, metrics).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Jws(e) => e.reason(),
            Self::Own(r) => r.as_str(),
            Self::Oidc(r) => r,
            Self::TypNotAccepted => "typ_not_accepted",
            Self::IssMissing => "iss_missing",
            Self::IssuerNotTrusted => "issuer_not_trusted",
            Self::JtiMissing => "jti_missing",
            Self::JtiReplayed => "jti_replayed",
            Self::MtlsThumbprintMismatch => "mtls_thumbprint_mismatch",
            Self::AccessTokenNotIssuedHere => "access_token_not_issued_here",
            Self::ActorTokenIssuedHere => "actor_token_issued_here",
            Self::ActorTokenTypeUnsupported => "actor_token_type_unsupported",
            Self::Revoked => "subject_token_revoked",
            Self::BindingMismatch => "binding_mismatch",
            Self::DpopBindingMismatch => "dpop_binding_mismatch",
            Self::BindingUnsupported => "binding_unsupported",
            Self::PresenterNotHolder => "presenter_not_holder",
            Self::ReexchangeTooDeep => "reexchange_too_deep",
            Self::ParentScopeMalformed => "parent_scope_malformed",
            Self::MayActMalformed => "may_act_malformed",
            Self::ActChainTooDeep => "act_chain_too_deep",
            Self::ActorIssuerUnknown => "actor_issuer_unknown",
            Self::ActorIsSubject => "actor_is_subject",
            Self::ActorNotInMayAct => "actor_not_in_may_act",
            Self::ActorNoPolicy => "actor_no_policy",
            Self::ActorTargetNotAllowed => "target_not_allowed",
            Self::ActorScopeNotAllowed => "scope_not_allowed",
            Self::MayActForMissing => "may_act_for_missing",
        }
    }

    /// The reason of a delegation refusal (its
    /// [`DelegationDenial::reason`]).
    #[must_use]
    pub fn of_delegation(d: &DelegationDenial) -> Self {
        match d {
            DelegationDenial::ActorIsSubject => Self::ActorIsSubject,
            DelegationDenial::NotInMayAct { .. } => Self::ActorNotInMayAct,
            DelegationDenial::Policy { denial, .. } => match denial {
                Denial::NoMatchingPolicy => Self::ActorNoPolicy,
                Denial::AudienceNotAllowed => Self::ActorTargetNotAllowed,
                Denial::ScopeNotAllowed { .. } => Self::ActorScopeNotAllowed,
            },
            DelegationDenial::MayActForMissing { .. } => Self::MayActForMissing,
            DelegationDenial::ChainTooDeep { .. } => Self::ActChainTooDeep,
        }
    }
}

macro_rules! display_as_str {
    ($($t:ty),+) => {
        $(impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        })+
    };
}
display_as_str!(ClientAuthReason, DpopReason, TokenReason);

/// Why an exchange was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    /// The request's shape (a parse-level reason code).
    #[error("malformed request: {0}")]
    Malformed(MalformedReason),
    /// The subject token is invalid, expired, revoked, untrusted or unusable.
    #[error("subject token rejected: {0}")]
    SubjectToken(TokenReason),
    /// The actor token is invalid or not acceptable.
    #[error("actor token rejected: {0}")]
    ActorToken(TokenReason),
    /// Client authentication failed (client certificate missing where
    /// required, or not a usable identity).
    #[error("client authentication failed: {0}")]
    ClientAuth(ClientAuthReason),
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
    AuthorizationDetails(DetailsReason),
    /// The DPoP proof is invalid or replayed.
    #[error("DPoP proof rejected: {0}")]
    DpopProof(DpopReason),
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
            Self::Malformed(r) => r.as_str(),
            Self::SubjectToken(r) | Self::ActorToken(r) => r.as_str(),
            Self::ClientAuth(r) => r.as_str(),
            Self::DpopProof(r) => r.as_str(),
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
            Self::AuthorizationDetails(r) => r.as_str(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins every reason's code: these are the audit record's `reason` and
    /// metrics labels, so a rename must show up here (and in the changelog).
    #[test]
    fn reason_codes_are_stable() {
        let malformed = [
            (
                MalformedReason::SubjectTokenMissing,
                "subject_token_missing",
            ),
            (
                MalformedReason::DpopWithClientCertificate,
                "dpop_with_client_certificate",
            ),
            (
                MalformedReason::ApprovalIdNotApplicable,
                "approval_id_not_applicable",
            ),
            (
                MalformedReason::TaskDiffersFromParent,
                "task_differs_from_parent",
            ),
            (
                MalformedReason::AuthorizationDetailsDifferFromParent,
                "authorization_details_differ_from_parent",
            ),
            (MalformedReason::AuthReqIdMissing, "auth_req_id_missing"),
        ];
        assert_eq!(malformed.len(), MalformedReason::ALL.len());
        for (r, code) in malformed {
            assert_eq!(r.as_str(), code);
            assert_eq!(ExchangeError::Malformed(r).reason(), code);
        }
        let details = [(DetailsReason::Required, "authorization_details_required")];
        assert_eq!(details.len(), DetailsReason::ALL.len());
        for (r, code) in details {
            assert_eq!(r.as_str(), code);
            assert_eq!(ExchangeError::AuthorizationDetails(r).reason(), code);
        }
        for (r, code) in [
            (
                ClientAuthReason::CertificateRequired,
                "client_certificate_required",
            ),
            (
                ClientAuthReason::CertificateExpired,
                "client_certificate_expired",
            ),
            (ClientAuthReason::BindingRequired, "binding_required"),
            (
                ClientAuthReason::Peer("cert_no_identity"),
                "cert_no_identity",
            ),
        ] {
            assert_eq!(r.as_str(), code);
            assert_eq!(ExchangeError::ClientAuth(r).reason(), code);
        }
        for (r, code) in [
            (DpopReason::HeaderMalformed, "dpop_header_malformed"),
            (DpopReason::Replayed, "dpop_replayed"),
            (DpopReason::Proof(DpopError::Htm), "dpop_htm"),
            (
                DpopReason::Proof(DpopError::Jose(JwsError::SegmentCount)),
                "token_bad_segments",
            ),
        ] {
            assert_eq!(r.as_str(), code);
            assert_eq!(ExchangeError::DpopProof(r).reason(), code);
        }
        for (r, code) in [
            (TokenReason::Jws(JwsError::TooLarge), "token_too_large"),
            (TokenReason::Own(OwnTokenRefusal::Expired), "expired"),
            (
                TokenReason::Own(OwnTokenRefusal::Jws(JwsError::SegmentCount)),
                "token_bad_segments",
            ),
            (TokenReason::Oidc("aud_mismatch"), "aud_mismatch"),
            (TokenReason::TypNotAccepted, "typ_not_accepted"),
            (TokenReason::IssMissing, "iss_missing"),
            (TokenReason::IssuerNotTrusted, "issuer_not_trusted"),
            (TokenReason::JtiMissing, "jti_missing"),
            (TokenReason::JtiReplayed, "jti_replayed"),
            (
                TokenReason::MtlsThumbprintMismatch,
                "mtls_thumbprint_mismatch",
            ),
            (
                TokenReason::AccessTokenNotIssuedHere,
                "access_token_not_issued_here",
            ),
            (TokenReason::ActorTokenIssuedHere, "actor_token_issued_here"),
            (
                TokenReason::ActorTokenTypeUnsupported,
                "actor_token_type_unsupported",
            ),
            (TokenReason::Revoked, "subject_token_revoked"),
            (TokenReason::BindingMismatch, "binding_mismatch"),
            (TokenReason::DpopBindingMismatch, "dpop_binding_mismatch"),
            (TokenReason::BindingUnsupported, "binding_unsupported"),
            (TokenReason::PresenterNotHolder, "presenter_not_holder"),
            (TokenReason::ReexchangeTooDeep, "reexchange_too_deep"),
            (TokenReason::ParentScopeMalformed, "parent_scope_malformed"),
            (TokenReason::MayActMalformed, "may_act_malformed"),
            (TokenReason::ActChainTooDeep, "act_chain_too_deep"),
            (TokenReason::ActorIssuerUnknown, "actor_issuer_unknown"),
            (TokenReason::ActorIsSubject, "actor_is_subject"),
            (TokenReason::ActorNotInMayAct, "actor_not_in_may_act"),
            (TokenReason::ActorNoPolicy, "actor_no_policy"),
            (TokenReason::ActorTargetNotAllowed, "target_not_allowed"),
            (TokenReason::ActorScopeNotAllowed, "scope_not_allowed"),
            (TokenReason::MayActForMissing, "may_act_for_missing"),
        ] {
            assert_eq!(r.as_str(), code);
            assert_eq!(r.to_string(), code);
            assert_eq!(ExchangeError::SubjectToken(r).reason(), code);
            assert_eq!(ExchangeError::ActorToken(r).reason(), code);
        }
    }

    /// A delegation refusal keeps the policy layer's reason code.
    #[test]
    fn delegation_reasons_match_the_policy_layer() {
        let policy = |denial| DelegationDenial::Policy {
            actor: "a".into(),
            denial,
        };
        for d in [
            DelegationDenial::ActorIsSubject,
            DelegationDenial::NotInMayAct { actor: "a".into() },
            policy(Denial::NoMatchingPolicy),
            policy(Denial::AudienceNotAllowed),
            policy(Denial::ScopeNotAllowed {
                refused: crate::policy::scope::ScopeSet::new(),
            }),
            DelegationDenial::MayActForMissing {
                policy: "p".into(),
                issuer: "i".into(),
            },
            DelegationDenial::ChainTooDeep {
                policy: "p".into(),
                depth: 3,
                max_depth: 2,
            },
        ] {
            assert_eq!(TokenReason::of_delegation(&d).as_str(), d.reason());
        }
    }
}
