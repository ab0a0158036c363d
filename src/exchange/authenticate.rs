//! Who is asking: the steps that authenticate before anything is decided.
//! The clock is trusted, the client certificate current, a DPoP proof
//! fresh and unused; then the actor (when delegated) and the subject (a
//! client certificate, an OIDC token, or one of Tessera's own for a
//! re-exchange); then the kill switch.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::request::{GrantType, TokenRequest, TokenType};
use super::{
    ClientAuthReason, Context, DpopReason, ExchangeError, Exchanger, MalformedReason, Peer,
    TokenReason,
};
use crate::identity::dpop::{self, DpopProof};
use crate::identity::oidc::OidcError;
use crate::identity::peer::PeerIdentity;
use crate::jose::jws;
use crate::policy::MTLS_ISSUER;

/// The authenticated subject of an exchange.
#[derive(Debug, Clone)]
pub(super) struct AuthenticatedSubject {
    pub(super) issuer_name: String,
    /// The issuer URL (`None` for a client certificate).
    pub(super) iss: Option<String>,
    pub(super) sub: String,
    pub(super) claims: Option<Map<String, Value>>,
    /// The subject credential's own end of life.
    pub(super) not_after: u64,
}

/// The authenticated actor of a delegation.
#[derive(Debug, Clone)]
pub(super) struct AuthenticatedActor {
    pub(super) issuer_name: String,
    /// The issuer URL (`None` for a client certificate).
    pub(super) iss: Option<String>,
    pub(super) sub: String,
    pub(super) claims: Option<Map<String, Value>>,
    pub(super) not_after: u64,
    /// The actor is the TLS client itself.
    pub(super) via_mtls: bool,
}

/// The client certificate, when the exchange runs over one. A resumed TLS
/// session keeps the original certificate: its validity is checked on
/// every request, not only at the handshake.
pub(super) fn usable_peer(
    peer: &Peer,
    now: u64,
) -> Result<Option<&Arc<PeerIdentity>>, ExchangeError> {
    match peer {
        Peer::Unusable(r) => Err(ExchangeError::ClientAuth(ClientAuthReason::Peer(r))),
        Peer::Identified(p) if p.not_after <= now => Err(ExchangeError::ClientAuth(
            ClientAuthReason::CertificateExpired,
        )),
        Peer::Identified(p) => Ok(Some(p)),
        Peer::Anonymous => Ok(None),
    }
}

/// The subject credential, once looked at: one of Tessera's own tokens
/// (verified by the re-exchange) or an authenticated subject.
pub(super) enum SubjectCredential {
    Ours(jws::UnverifiedJws),
    Authenticated(AuthenticatedSubject),
}

impl Exchanger {
    /// Fails closed on an untrusted wall clock before reading it; every
    /// `iat`/`exp` of the exchange comes from the one reading returned.
    pub(super) fn trusted_now(&self) -> Result<u64, ExchangeError> {
        if let Some(t) = &self.clock_trust {
            t.check()
                .map_err(|e| ExchangeError::ClockUntrusted(e.to_string()))?;
        }
        Ok(self.clock.now())
    }

    /// DPoP (RFC 9449) for callers without a client certificate: a proof of
    /// this request, with a current nonce when nonces are required, used once.
    pub(super) async fn check_dpop(
        &self,
        req: &TokenRequest,
        peer: Option<&Arc<PeerIdentity>>,
        now: u64,
    ) -> Result<Option<DpopProof>, ExchangeError> {
        let Some(p) = req.dpop.as_deref() else {
            return Ok(None);
        };
        if peer.is_some() {
            return Err(ExchangeError::Malformed(
                MalformedReason::DpopWithClientCertificate,
            ));
        }
        let htu = format!("{}/token", self.issuer);
        let proof = dpop::verify_proof(p, &dpop::ProofCheck::new("POST", &htu, now))
            .map_err(|e| ExchangeError::DpopProof(DpopReason::Proof(e)))?;
        if let Some(n) = &self.nonces {
            if !proof.nonce.as_deref().is_some_and(|x| n.accepts(x, now)) {
                return Err(ExchangeError::UseDpopNonce);
            }
        }
        let key = format!("{}:{}", proof.jkt, proof.jti);
        let until = proof.iat.saturating_add(dpop::DPOP_IAT_WINDOW_SECS + 1);
        if !self
            .stores
            .replay
            .first_use("dpop", &key, until, now)
            .await?
        {
            return Err(ExchangeError::DpopProof(DpopReason::Replayed));
        }
        Ok(Some(proof))
    }

    /// Delegation: the actor is authenticated first, like the subject.
    pub(super) async fn actor_of(
        &self,
        req: &TokenRequest,
        peer: Option<&Arc<PeerIdentity>>,
        now: u64,
    ) -> Result<Option<AuthenticatedActor>, ExchangeError> {
        match (req.actor_token.as_deref(), req.actor_token_type) {
            (Some(t), Some(tt)) => Ok(Some(self.authenticate_actor(t, tt, peer, now).await?)),
            _ => Ok(None),
        }
    }

    /// The subject: the client certificate (`client_credentials`, or the
    /// `mtls` token type naming its thumbprint), or a JWT: one of Tessera's
    /// own (handed back for a re-exchange) or an OIDC token from a
    /// configured issuer.
    pub(super) async fn authenticate_subject(
        &self,
        ctx: &Context<'_>,
    ) -> Result<SubjectCredential, ExchangeError> {
        let req = ctx.req;
        match (req.grant_type, req.subject_token_type) {
            (GrantType::ClientCredentials, _) | (_, TokenType::Mtls) => {
                let p = ctx.peer.ok_or(ExchangeError::ClientAuth(
                    ClientAuthReason::CertificateRequired,
                ))?;
                if let Some(t) = &req.subject_token {
                    if t != &p.thumbprint {
                        return Err(ExchangeError::SubjectToken(
                            TokenReason::MtlsThumbprintMismatch,
                        ));
                    }
                }
                Ok(SubjectCredential::Authenticated(AuthenticatedSubject {
                    issuer_name: MTLS_ISSUER.to_string(),
                    iss: None,
                    sub: p.subject.clone(),
                    claims: None,
                    not_after: p.not_after,
                }))
            }
            (_, TokenType::Jwt | TokenType::IdToken | TokenType::AccessToken) => {
                let token = req
                    .subject_token
                    .as_deref()
                    .ok_or(ExchangeError::Malformed(
                        MalformedReason::SubjectTokenMissing,
                    ))?;
                let parsed = jws::decode(token)
                    .map_err(|e| ExchangeError::SubjectToken(TokenReason::Jws(e)))?;
                let ours = parsed
                    .unverified_claims()
                    .get("iss")
                    .and_then(Value::as_str)
                    == Some(self.issuer.as_str());
                if ours {
                    return Ok(SubjectCredential::Ours(parsed));
                }
                if req.subject_token_type == TokenType::AccessToken {
                    return Err(ExchangeError::SubjectToken(
                        TokenReason::AccessTokenNotIssuedHere,
                    ));
                }
                Ok(SubjectCredential::Authenticated(
                    self.authenticate_jwt(parsed, ctx.now).await?,
                ))
            }
        }
    }

    /// Kill switch: the subject, and the presenting workload.
    pub(super) async fn check_blocks(
        &self,
        ctx: &Context<'_>,
        subject: &str,
    ) -> Result<(), ExchangeError> {
        if self.stores.revocations.is_blocked(subject, ctx.now).await? {
            return Err(ExchangeError::Blocked);
        }
        if let Some(p) = ctx.peer {
            if p.subject != subject
                && self
                    .stores
                    .revocations
                    .is_blocked(&p.subject, ctx.now)
                    .await?
            {
                return Err(ExchangeError::Blocked);
            }
        }
        Ok(())
    }

    /// Authenticates the actor of a delegation: the TLS client certificate
    /// (`...:mtls`, the token being its thumbprint) or an OIDC token from a
    /// configured issuer. Tessera's own tokens are not accepted as actors.
    pub(super) async fn authenticate_actor(
        &self,
        token: &str,
        tt: TokenType,
        peer: Option<&Arc<PeerIdentity>>,
        now: u64,
    ) -> Result<AuthenticatedActor, ExchangeError> {
        match tt {
            TokenType::Mtls => {
                let p = peer.ok_or(ExchangeError::ClientAuth(
                    ClientAuthReason::CertificateRequired,
                ))?;
                if token != p.thumbprint {
                    return Err(ExchangeError::ActorToken(
                        TokenReason::MtlsThumbprintMismatch,
                    ));
                }
                if self.stores.revocations.is_blocked(&p.subject, now).await? {
                    return Err(ExchangeError::Blocked);
                }
                Ok(AuthenticatedActor {
                    issuer_name: MTLS_ISSUER.to_string(),
                    iss: None,
                    sub: p.subject.clone(),
                    claims: None,
                    not_after: p.not_after,
                    via_mtls: true,
                })
            }
            TokenType::Jwt | TokenType::IdToken => {
                let parsed = jws::decode(token)
                    .map_err(|e| ExchangeError::ActorToken(TokenReason::Jws(e)))?;
                if parsed
                    .unverified_claims()
                    .get("iss")
                    .and_then(Value::as_str)
                    == Some(self.issuer.as_str())
                {
                    return Err(ExchangeError::ActorToken(TokenReason::ActorTokenIssuedHere));
                }
                let a = self
                    .authenticate_jwt(parsed, now)
                    .await
                    .map_err(|e| match e {
                        ExchangeError::SubjectToken(r) => ExchangeError::ActorToken(r),
                        other => other,
                    })?;
                if self.stores.revocations.is_blocked(&a.sub, now).await? {
                    return Err(ExchangeError::Blocked);
                }
                Ok(AuthenticatedActor {
                    issuer_name: a.issuer_name,
                    iss: a.iss,
                    sub: a.sub,
                    claims: a.claims,
                    not_after: a.not_after,
                    via_mtls: false,
                })
            }
            TokenType::AccessToken => Err(ExchangeError::ActorToken(
                TokenReason::ActorTokenTypeUnsupported,
            )),
        }
    }

    pub(super) async fn authenticate_jwt(
        &self,
        parsed: jws::UnverifiedJws,
        now: u64,
    ) -> Result<AuthenticatedSubject, ExchangeError> {
        // Explicit typing (RFC 8725 §3.11): a subject token is a plain JWT or an
        // ID token, never an access token, a logout/SET or a DPoP proof.
        if let Some(typ) = parsed.header().typ.as_deref() {
            if !typ.eq_ignore_ascii_case("JWT") && !typ.eq_ignore_ascii_case("application/jwt") {
                return Err(ExchangeError::SubjectToken(TokenReason::TypNotAccepted));
            }
        }
        let iss = parsed
            .unverified_claims()
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(ExchangeError::SubjectToken(TokenReason::IssMissing))?;
        let verifier = self
            .issuers
            .get(iss)
            .cloned()
            .ok_or(ExchangeError::SubjectToken(TokenReason::IssuerNotTrusted))?;
        let v = verifier.verify(parsed, now).await.map_err(|e| match e {
            OidcError::Rejected(r) => ExchangeError::SubjectToken(TokenReason::Oidc(r)),
            OidcError::Unavailable(d) => ExchangeError::KeysUnavailable(d),
            OidcError::Stale(d) => ExchangeError::KeysStale(d),
        })?;
        let cfg = verifier.config();
        if cfg.single_use {
            let jti = v
                .jti
                .as_deref()
                .ok_or(ExchangeError::SubjectToken(TokenReason::JtiMissing))?;
            let until = v.exp.saturating_add(cfg.leeway.as_secs());
            if !self
                .stores
                .replay
                .first_use(&cfg.name, jti, until, now)
                .await?
            {
                return Err(ExchangeError::SubjectToken(TokenReason::JtiReplayed));
            }
        }
        Ok(AuthenticatedSubject {
            issuer_name: cfg.name.clone(),
            iss: Some(v.iss.clone()),
            sub: v.sub.clone(),
            not_after: v.exp,
            claims: Some(v.claims),
        })
    }
}
