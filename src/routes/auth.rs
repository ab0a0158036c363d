//! Caller authorisation for the operator and resource-server endpoints: the
//! mTLS identity must be listed in the config. Identity comes only from the
//! TLS session, never from a header.

use crate::app::AppState;
use crate::exchange::Peer;
use crate::oauth::{ErrorCode, OAuthError};

/// Which list a caller must be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `[admin] subjects`.
    Admin,
    /// `[introspection] subjects` or `[admin] subjects`.
    Introspection,
}

/// The caller's identity when it is on the list for `role`.
pub fn authorize(app: &AppState, peer: &Peer, role: Role) -> Result<String, OAuthError> {
    authorize_in(app, &app.snapshot(), peer, role)
}

/// [`authorize`] against the configuration snapshot the request already
/// loaded (one request, one configuration).
pub fn authorize_in(
    app: &AppState,
    snap: &crate::app::Snapshot,
    peer: &Peer,
    role: Role,
) -> Result<String, OAuthError> {
    let Peer::Identified(p) = peer else {
        return Err(OAuthError::new(ErrorCode::InvalidClient));
    };
    if p.not_after <= app.clock.now() {
        return Err(OAuthError::new(ErrorCode::InvalidClient));
    }
    let admin = snap.config.admin_subjects.iter().any(|s| s == &p.subject);
    let ok = match role {
        Role::Admin => admin,
        Role::Introspection => {
            admin
                || snap
                    .config
                    .introspection_subjects
                    .iter()
                    .any(|s| s == &p.subject)
        }
    };
    if ok {
        Ok(p.subject.clone())
    } else {
        // Grants nothing: queued without waiting (authorisation is synchronous).
        app.auditor.submit(
            crate::audit::AuditRecord::new(crate::audit::Event::Refused)
                .reason("caller_not_authorised")
                .error(ErrorCode::InvalidClient.as_str())
                .client(&p.subject)
                .detail(match role {
                    Role::Admin => "role=admin",
                    Role::Introspection => "role=introspection",
                }),
        );
        Err(OAuthError::new(ErrorCode::InvalidClient))
    }
}
