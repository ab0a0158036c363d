//! The operator-facing token verbs, HTTP-free: RFC 7662 introspection
//! (which tokens a resource server may see, and whether one is revoked) and
//! RFC 7009 holder revocation (who may revoke a token, what is recorded).
//! `routes::introspect` only reads the form and maps these answers to the
//! wire.

use crate::audit::{AuditRecord, Auditor, Event};
use crate::identity::own::{OwnToken, OwnTokenVerifier};
use crate::mint::claims::AccessTokenClaims;
use crate::store::{Revocation, RevocationKind, StoreError, Stores};

/// What introspection says about a token.
#[derive(Debug)]
pub enum Introspected {
    /// One of ours, valid now, meant for the caller, not revoked.
    Active(Box<AccessTokenClaims>),
    /// Anything else: `{"active": false}` (RFC 7662 §2.2 says no more).
    Inactive,
}

/// Introspects `token` for a caller allowed to see tokens for `audiences`
/// (`None`: every audience). A token longer than `max_token_bytes`, not
/// ours, expired, for another audience (RFC 7662 §4) or revoked is
/// inactive. A store that cannot say whether it is revoked is an error
/// (fail closed: the caller answers 503, never `active`).
pub async fn introspect(
    own_tokens: &OwnTokenVerifier,
    stores: &Stores,
    audiences: Option<&[String]>,
    token: &str,
    max_token_bytes: usize,
    now: u64,
) -> Result<Introspected, StoreError> {
    if token.len() > max_token_bytes {
        return Ok(Introspected::Inactive);
    }
    let Ok(own) = own_tokens.verify(token, now) else {
        return Ok(Introspected::Inactive);
    };
    if let Some(auds) = audiences {
        if !auds.iter().any(|a| a == &own.claims.aud) {
            return Ok(Introspected::Inactive);
        }
    }
    if stores.revocations.is_revoked(&own.facts(), now).await? {
        return Ok(Introspected::Inactive);
    }
    Ok(Introspected::Active(Box::new(own.claims)))
}

/// A holder's revocation request (RFC 7009).
#[derive(Debug, Clone, Copy)]
pub struct HolderRequest<'a> {
    /// The token to revoke.
    pub token: &'a str,
    /// The thumbprint of the caller's client certificate, if any.
    pub thumbprint: Option<&'a str>,
    /// The caller, for the audit record.
    pub client: &'a str,
    /// Longer tokens are not ours (`[limits] max_token_bytes`).
    pub max_token_bytes: usize,
}

/// Revokes a token on its holder's request (RFC 7009): a certificate-bound
/// token is revoked only over that same certificate.
/// Anything that is not a live token of ours is a no-op (RFC 7009 answers
/// 200 either way); a refused holder is audited. The revocation is audited
/// too; a failed record is logged, the revocation stands. `Err`: the store
/// could not record it (the caller answers 503).
pub async fn revoke_by_holder(
    own_tokens: &OwnTokenVerifier,
    stores: &Stores,
    auditor: &Auditor,
    req: HolderRequest<'_>,
    now: u64,
) -> Result<(), StoreError> {
    let HolderRequest {
        token,
        thumbprint,
        client,
        max_token_bytes,
    } = req;
    if token.len() > max_token_bytes {
        return Ok(());
    }
    let Ok(own) = own_tokens.verify(token, now) else {
        return Ok(());
    };
    if let Some(bound) = own.claims.cnf.as_ref().and_then(|c| c.x5t_s256.as_deref()) {
        if thumbprint != Some(bound) {
            auditor.submit(
                AuditRecord::new(Event::Refused)
                    .reason("revoke_not_holder")
                    .client(client)
                    .subject(&own.claims.sub)
                    .jti(&own.claims.jti)
                    .token(token),
            );
            return Ok(());
        }
    }
    let cursor = stores
        .revocations
        .revoke(holder_revocation(&own, now))
        .await?;
    crate::telemetry::metrics()
        .revocations
        .with_label_values(&[RevocationKind::Jti.as_str()])
        .inc();
    let rec = AuditRecord::new(Event::Revoked)
        .reason("holder")
        .client(client)
        .subject(&own.claims.sub)
        .task(&own.claims.txn)
        .jti(&own.claims.jti)
        .token(token)
        .detail(&format!("cursor={cursor}"));
    if let Err(e) = auditor.record(rec).await {
        tracing::error!(error = %e, jti = %own.claims.jti, "holder revocation not audited");
    }
    Ok(())
}

/// The revocation of one token: its `jti`, kept until the token expires.
fn holder_revocation(own: &OwnToken, now: u64) -> Revocation {
    Revocation {
        kind: RevocationKind::Jti,
        value: own.claims.jti.clone(),
        revoked_at: now,
        expires_at: own.claims.exp.max(now + 1),
    }
}
