//! The token an exchange issues: its binding (`cnf`), its lifetime, its
//! claims (the one builder for every path) and its signature.

use std::sync::Arc;

use serde_json::Value;

use super::authenticate::AuthenticatedActor;
use super::request::{TokenRequest, TokenType};
use super::{ExchangeError, Exchanger, Issued};
use crate::identity::dpop::DpopProof;
use crate::identity::peer::PeerIdentity;
use crate::mint::claims::{AccessTokenClaims, Actor, Confirmation, MayAct};

/// What a token says that depends on how it was asked for (first
/// exchange, re-exchange or CIBA redemption); [`Exchanger::claims_for`]
/// adds the rest.
pub(super) struct TokenContent<'a> {
    pub(super) sub: String,
    pub(super) audience: &'a str,
    pub(super) exp: u64,
    pub(super) client_id: String,
    pub(super) scope: String,
    pub(super) txn: String,
    pub(super) act: Option<Actor>,
    pub(super) cnf: Option<Confirmation>,
    pub(super) grant: Option<String>,
    pub(super) authorization_details: Option<Value>,
    pub(super) ancestors: Vec<String>,
    pub(super) may_act: Option<MayAct>,
}

/// `cnf` of an issued token: bound to the client certificate whenever the
/// exchange ran over one; for a delegation whose actor is a JWT, unbound
/// (the contract's rule: the actor, not the presenter, will hold it);
/// with a DPoP proof (never together with a certificate), bound to its key.
pub(super) fn binding(
    peer: Option<&Arc<PeerIdentity>>,
    actor: Option<&AuthenticatedActor>,
    dpop: Option<&DpopProof>,
) -> Option<Confirmation> {
    if let Some(d) = dpop {
        return Some(Confirmation {
            x5t_s256: None,
            jkt: Some(d.jkt.clone()),
        });
    }
    if actor.is_some_and(|a| !a.via_mtls) {
        return None;
    }
    peer.map(|p| Confirmation {
        x5t_s256: Some(p.thumbprint.clone()),
        jkt: None,
    })
}

impl Exchanger {
    /// The actor's credential end and its policy's lifetime cap (or no cap).
    pub(super) fn actor_caps(
        &self,
        actor: Option<&AuthenticatedActor>,
        actor_policy: Option<&crate::policy::CompiledPolicy>,
        now: u64,
    ) -> (u64, u64) {
        let end = actor.map_or(u64::MAX, |a| a.not_after);
        let policy_end = actor_policy
            .and_then(|p| p.max_ttl())
            .map_or(u64::MAX, |d| now.saturating_add(d.as_secs()));
        (end, policy_end)
    }

    /// The token's `exp`: `min(expires_in or default, policy max_ttl,
    /// [tokens] max_ttl, every cap given)`; refused when nothing is left.
    /// The one place a lifetime is capped: the first exchange (with its
    /// approval or grant) and the re-exchange both call it. `[tokens]
    /// max_ttl` is a ceiling here, so a policy `max_ttl` or `default_ttl`
    /// above it (which loads, with a `ttl_capped` warning) is capped.
    pub(super) fn expiry(
        &self,
        req: &TokenRequest,
        policy: &crate::policy::CompiledPolicy,
        caps: &[u64],
        now: u64,
    ) -> Result<u64, ExchangeError> {
        let asked = req.expires_in.unwrap_or(self.default_ttl);
        let policy_max = policy
            .max_ttl()
            .map(|d| d.as_secs())
            .unwrap_or(self.max_ttl);
        let start = now.saturating_add(asked.min(policy_max).min(self.max_ttl));
        let exp = caps.iter().fold(start, |e, c| e.min(*c));
        if exp <= now {
            return Err(ExchangeError::NoLifetime);
        }
        Ok(exp)
    }

    /// The one claims builder (first exchange, re-exchange and the CIBA redemption): the issuer,
    /// `iat`/`nbf` from this exchange's one clock reading, a fresh `jti`, and
    /// the granting policy with its owner are filled in here; what differs
    /// between the two paths comes in as [`TokenContent`].
    pub(super) fn claims_for(
        &self,
        policy: &crate::policy::CompiledPolicy,
        c: TokenContent<'_>,
        now: u64,
    ) -> AccessTokenClaims {
        AccessTokenClaims {
            iss: self.issuer.clone(),
            sub: c.sub,
            aud: c.audience.to_string(),
            exp: c.exp,
            iat: now,
            nbf: now,
            jti: crate::mint::random_uuid().to_string(),
            client_id: c.client_id,
            scope: c.scope,
            txn: c.txn,
            act: c.act,
            cnf: c.cnf,
            grant: c.grant,
            owner: policy.owner().map(str::to_string),
            authorization_details: c.authorization_details,
            policy: Some(policy.name().to_string()),
            ancestors: c.ancestors,
            may_act: c.may_act,
        }
    }

    /// Signs the claims and describes the result.
    pub(super) fn sign(
        &self,
        req: &TokenRequest,
        claims: AccessTokenClaims,
        now: u64,
    ) -> Result<Issued, ExchangeError> {
        let access_token = self
            .minter
            .mint(&claims)
            .map_err(|e| ExchangeError::Signing(e.to_string()))?;
        Ok(Issued {
            access_token,
            issued_token_type: req.requested_token_type.unwrap_or(TokenType::AccessToken),
            token_type: if claims.cnf.as_ref().is_some_and(|c| c.jkt.is_some()) {
                "DPoP"
            } else {
                "Bearer"
            },
            expires_in: claims.exp.saturating_sub(now),
            scope: claims.scope.clone(),
            policy: claims.policy.clone().unwrap_or_default(),
            claims,
            approval: None,
        })
    }
}
