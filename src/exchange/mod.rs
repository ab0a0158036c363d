// One file for the pipeline: its steps share the request state and must run in
// the order below (see "Why one file" further down).
//! The exchange pipeline, free of HTTP: authenticate the subject (client
//! certificate or OIDC token), decide by policy, consult the store, mint.
//!
//! Order matters and is fixed: parse → authenticate → kill switch → policy →
//! tiers → lifetime → mint. Nothing is minted unless every step said yes;
//! a dependency that fails makes the whole exchange fail (closed).
//!
//! One file for the pipeline: its steps share the request state and must
//! run in the order above, and reading them top to bottom is the point.
//! What has a job of its own is apart: `approval`, `guard`, `operator`
//! (operator input), `error`; the delegation rule is `policy::delegation`.

pub(crate) mod approval;
pub(crate) mod ciba;
pub(crate) mod error;
pub mod guard;
pub(crate) mod introspection;
pub mod operator;
pub(crate) mod outcome;
pub(crate) mod request;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

pub use error::ExchangeError;

use crate::clock::Clock;
use crate::identity::dpop::{self, DpopProof};
use crate::identity::oidc::{IssuerVerifier, OidcError};
use crate::identity::own::OwnTokenVerifier;
use crate::identity::peer::PeerIdentity;
use crate::jose::jws;
use crate::mint::claims::{AccessTokenClaims, Actor, Confirmation, MayAct};
use crate::mint::TokenMinter;
use crate::policy::delegation::{may_act_of, ChainActor, Delegation, DelegationDenial};
use crate::policy::{Denial, PolicySet, Subject, MTLS_ISSUER};
use crate::store::Stores;
use request::{GrantType, TokenRequest, TokenType};

/// What the TLS layer established about the caller (it lives with the
/// other connection identities in `identity::peer`, below `server`).
pub use crate::identity::peer::Peer;

/// A successful exchange.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The signed JWT.
    pub access_token: String,
    /// `issued_token_type`.
    pub issued_token_type: TokenType,
    /// `token_type` (`Bearer`).
    pub token_type: &'static str,
    /// Seconds until `exp`.
    pub expires_in: u64,
    /// Granted scopes.
    pub scope: String,
    /// The claims minted (for the audit record).
    pub claims: AccessTokenClaims,
    /// The policy that granted it.
    pub policy: String,
    /// The human approval redeemed for it, when one was.
    pub approval: Option<String>,
}

/// Who an exchange was about, as far as it got: filled in as the subject
/// and actor are authenticated (for the audit record of a refusal).
#[derive(Debug, Clone, Default)]
pub struct Noted {
    /// The authenticated subject.
    pub subject: Option<String>,
    /// The authenticated actor.
    pub actor: Option<String>,
    /// What the anomaly guard did about this exchange (for its audit records).
    pub guard: Vec<GuardNote>,
    /// The audience whose issuance the guard's shared state already knows
    /// (checked admitted and settled): its record is skipped.
    pub guard_settled: Option<String>,
}

/// What a token says that depends on how it was asked for (first
/// exchange or re-exchange); [`Exchanger::claims_for`] adds the rest.
struct TokenContent<'a> {
    sub: String,
    audience: &'a str,
    exp: u64,
    client_id: String,
    scope: String,
    txn: String,
    act: Option<Actor>,
    cnf: Option<Confirmation>,
    grant: Option<String>,
    authorization_details: Option<Value>,
    ancestors: Vec<String>,
    may_act: Option<MayAct>,
}

/// One action of the anomaly guard during an exchange.
#[derive(Debug, Clone)]
pub struct GuardNote {
    /// What fired.
    pub trigger: guard::Trigger,
    /// What the guard did.
    pub action: guard::GuardAction,
    /// The identity it was about.
    pub identity: String,
    /// For `revoke`: until when the identity is blocked.
    pub blocked_until: Option<u64>,
    /// A refusal streak tripped with this refusal (the action applies to
    /// the identity's next requests).
    pub tripped: bool,
}

/// Refusals after authentication that make up a streak (probing for what
/// policy allows, or guessing approvals).
fn counts_as_probe(e: &ExchangeError) -> bool {
    matches!(
        e,
        ExchangeError::NoPolicy
            | ExchangeError::Target
            | ExchangeError::Scope(_)
            | ExchangeError::GrantRequired(_)
            | ExchangeError::ApprovalRequired(_)
            | ExchangeError::ApprovalInvalid
    )
}

/// The authenticated subject of an exchange.
#[derive(Debug, Clone)]
struct AuthenticatedSubject {
    issuer_name: String,
    /// The issuer URL (`None` for a client certificate).
    iss: Option<String>,
    sub: String,
    claims: Option<Map<String, Value>>,
    /// The subject credential's own end of life.
    not_after: u64,
}

/// The secret DPoP nonces are derived from: the signing key files, which
/// every replica shares (hashed, never used as such).
fn nonce_secret(dir: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("tokens.signing_keys: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    files.sort();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for f in files {
        ctx.update(&std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?);
    }
    Ok(ctx.finish().as_ref().to_vec())
}

/// The authenticated actor of a delegation.
#[derive(Debug, Clone)]
struct AuthenticatedActor {
    issuer_name: String,
    /// The issuer URL (`None` for a client certificate).
    iss: Option<String>,
    sub: String,
    claims: Option<Map<String, Value>>,
    not_after: u64,
    /// The actor is the TLS client itself.
    via_mtls: bool,
}

/// `cnf` of an issued token: bound to the client certificate whenever the
/// exchange ran over one; for a delegation whose actor is a JWT, unbound
/// (the contract's rule: the actor, not the presenter, will hold it);
/// with a DPoP proof (never together with a certificate), bound to its key.
fn binding(
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

/// One exchange's request and what the transport and the first steps
/// established: read once, handed to every later step.
struct Context<'r> {
    req: &'r TokenRequest,
    /// The one clock reading every `iat`/`exp` comes from.
    now: u64,
    /// The client certificate, when the exchange runs over one (current).
    peer: Option<&'r Arc<PeerIdentity>>,
    /// The verified DPoP proof, when one was sent.
    dpop: Option<DpopProof>,
    /// The authenticated actor, when the request delegates.
    actor: Option<AuthenticatedActor>,
}

impl Context<'_> {
    /// `cnf` of the token this exchange would issue ([`binding`]).
    fn binding(&self) -> Option<Confirmation> {
        binding(self.peer, self.actor.as_ref(), self.dpop.as_ref())
    }

    /// The client certificate's end (no cap without one).
    fn peer_end(&self) -> u64 {
        self.peer.map_or(u64::MAX, |p| p.not_after)
    }

    /// The authenticated actor's subject, when delegated.
    fn actor_sub(&self) -> Option<&str> {
        self.actor.as_ref().map(|a| a.sub.as_str())
    }
}

/// The client certificate, when the exchange runs over one. A resumed TLS
/// session keeps the original certificate: its validity is checked on
/// every request, not only at the handshake.
fn usable_peer(peer: &Peer, now: u64) -> Result<Option<&Arc<PeerIdentity>>, ExchangeError> {
    match peer {
        Peer::Unusable(r) => Err(ExchangeError::ClientAuth(r)),
        Peer::Identified(p) if p.not_after <= now => {
            Err(ExchangeError::ClientAuth("client_certificate_expired"))
        }
        Peer::Identified(p) => Ok(Some(p)),
        Peer::Anonymous => Ok(None),
    }
}

/// The subject credential, once looked at: one of Tessera's own tokens
/// (verified by the re-exchange) or an authenticated subject.
enum SubjectCredential {
    Ours(jws::UnverifiedJws),
    Authenticated(AuthenticatedSubject),
}

/// What policy decided for a first exchange.
struct Decision<'p> {
    /// The granting policy.
    policy: &'p crate::policy::CompiledPolicy,
    /// For a delegation: the actor's policy and the new `act`.
    delegation: Option<(&'p crate::policy::CompiledPolicy, Actor)>,
    /// The subject token's `may_act` (carried into the token).
    may_act: Option<MayAct>,
}

impl Decision<'_> {
    fn actor_policy(&self) -> Option<&crate::policy::CompiledPolicy> {
        self.delegation.as_ref().map(|d| d.0)
    }
}

/// The tiers a granted request falls in, and its binding.
struct Tiers {
    /// A human approval is needed (approval scopes, or the guard stepped up).
    needs_approval: bool,
    /// The JIT scopes: one use of a grant is needed.
    jit: Vec<String>,
    /// `cnf` of the token.
    cnf: Option<Confirmation>,
}

/// What the anomaly guard is asked about: who, for which audience under
/// which policy, whether the request may wait for a human (`can_ask`) and
/// whether it is a poll of such a wait (`polling`).
struct GuardAsk<'a> {
    subject: &'a str,
    actor: Option<&'a str>,
    audience: &'a str,
    policy: &'a str,
    can_ask: bool,
    polling: bool,
    now: u64,
}

/// What the pipeline is configured with. The exchange owns this shape;
/// `config` composes it from the file ([`crate::config::Config::exchange_settings`]).
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// `[server] issuer`: `iss` of issued tokens.
    pub issuer: &'a str,
    /// `[tokens] default_ttl`.
    pub default_ttl: std::time::Duration,
    /// `[tokens] max_ttl`.
    pub max_ttl: std::time::Duration,
    /// `[tokens] signing_keys` (the DPoP nonce secret is derived from it).
    pub signing_keys: &'a std::path::Path,
    /// `[[policies]]`, in file order.
    pub policies: &'a [crate::policy::PolicySpec],
    /// `[dpop] nonce`.
    pub dpop_nonce: bool,
    /// `[approvals] ttl`.
    pub approvals_ttl: std::time::Duration,
    /// `[approvals] interval`.
    pub approvals_interval: std::time::Duration,
    /// `[approvals] webhook`.
    pub approvals_webhook: Option<&'a str>,
    /// `[approvals] webhook_ca`.
    pub approvals_webhook_ca: Option<&'a std::path::Path>,
    /// Whether the approval pages are on (`[approvals] login_*`): webhook
    /// summaries then carry the page's URL.
    pub approval_pages: bool,
    /// `[guard]` with the policies' overrides.
    pub guard: &'a guard::GuardConfig,
}

/// Runs exchanges. Built once at start-up; cheap to share.
pub struct Exchanger {
    issuer: String,
    default_ttl: u64,
    max_ttl: u64,
    /// The latest `exp` a token minted under an earlier configuration can
    /// have (its reload time + its `[tokens] max_ttl`): revocations made
    /// after lowering `max_ttl` still outlive those tokens.
    earlier_tokens_until: u64,
    issuers: HashMap<String, Arc<IssuerVerifier>>,
    policies: PolicySet,
    minter: Arc<TokenMinter>,
    own: Arc<OwnTokenVerifier>,
    stores: Stores,
    clock: Arc<dyn Clock>,
    nonces: Option<dpop::NonceSource>,
    approvals_ttl: u64,
    approvals_interval: u64,
    webhook: Option<approval::Webhook>,
    guard: Option<Arc<guard::Guard>>,
    /// When set, nothing is minted while the wall clock is in quarantine.
    clock_trust: Option<Arc<crate::clock::ClockTrust>>,
}

impl Exchanger {
    /// Until when a revocation recorded `now` must be kept: until every
    /// token it can cover has expired. That is `now + [tokens] max_ttl`,
    /// or later while tokens minted before a reload that lowered
    /// `max_ttl` can still be alive. The one rule every revocation (the
    /// operator's, the guard's, a recovery's) uses.
    pub fn revocation_expiry(&self, now: u64) -> u64 {
        now.saturating_add(self.max_ttl.max(1))
            .max(self.earlier_tokens_until)
    }

    /// The policies in force.
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }
}

/// Counts one action of the anomaly guard.
fn guard_counted(hit: &guard::Hit) {
    crate::telemetry::metrics()
        .guard_actions
        .with_label_values(&[hit.action.as_str(), hit.trigger.label()])
        .inc();
}

/// Most re-exchanges a chain of tokens may go through.
pub const MAX_REEXCHANGE_DEPTH: usize = 8;

impl std::fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchanger")
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl Exchanger {
    /// Builds the pipeline from its settings and its parts.
    pub fn new(
        cfg: &Settings<'_>,
        issuers: Vec<Arc<IssuerVerifier>>,
        minter: Arc<TokenMinter>,
        own: Arc<OwnTokenVerifier>,
        stores: Stores,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let policies = PolicySet::compile(cfg.policies.to_vec()).map_err(|e| e.to_string())?;
        let nonces = if cfg.dpop_nonce {
            Some(dpop::NonceSource::new(&nonce_secret(cfg.signing_keys)?))
        } else {
            None
        };
        let webhook = match cfg.approvals_webhook {
            Some(u) => Some(
                approval::Webhook::new(u, cfg.approvals_webhook_ca)?
                    .with_pages(cfg.approval_pages.then_some(cfg.issuer)),
            ),
            None => None,
        };
        Ok(Self {
            guard: guard::Guard::new(cfg.guard)
                .map(|g| Arc::new(g.with_shared(stores.guard.clone()))),
            nonces,
            approvals_ttl: cfg.approvals_ttl.as_secs(),
            approvals_interval: cfg.approvals_interval.as_secs(),
            webhook,
            issuer: cfg.issuer.to_string(),
            default_ttl: cfg.default_ttl.as_secs(),
            max_ttl: cfg.max_ttl.as_secs(),
            earlier_tokens_until: 0,
            issuers: issuers
                .into_iter()
                .map(|v| (v.config().issuer.clone(), v))
                .collect(),
            policies,
            minter,
            own,
            stores,
            clock,
            clock_trust: None,
        })
    }

    /// Refuses every exchange (503 `clock_untrusted`) while `trust` reports
    /// a recent wall-clock step.
    #[must_use]
    pub fn with_clock_trust(mut self, trust: Arc<crate::clock::ClockTrust>) -> Self {
        self.clock_trust = Some(trust);
        self
    }

    /// The DPoP nonce to hand out now, when nonces are required.
    pub fn dpop_nonce(&self) -> Option<String> {
        self.nonces.as_ref().map(|n| n.current(self.clock.now()))
    }

    /// The configured issuers' verifiers, by `iss`.
    pub fn issuers(&self) -> impl Iterator<Item = &Arc<IssuerVerifier>> {
        self.issuers.values()
    }

    /// Runs one exchange.
    pub async fn exchange(&self, req: TokenRequest, peer: &Peer) -> Result<Issued, ExchangeError> {
        self.exchange_noting(req, peer, &mut Noted::default()).await
    }

    /// The anomaly guard, when configured.
    pub fn guard(&self) -> Option<&guard::Guard> {
        self.guard.as_deref()
    }

    /// After a configuration reload: keeps what `previous` learned at run
    /// time (the anomaly guard's per-identity counters) when its settings
    /// did not change, so a reload is not a way to reset the guard.
    pub fn keep_state_of(&mut self, previous: &Exchanger) {
        // Tokens minted until now under the previous lifetimes live at most
        // until now + its max_ttl (and what it carried from before).
        self.earlier_tokens_until = previous
            .earlier_tokens_until
            .max(self.clock.now().saturating_add(previous.max_ttl));
        if let (Some(new), Some(old)) = (&self.guard, &previous.guard) {
            if new.config() == old.config() {
                self.guard = Some(old.clone());
            }
        }
    }

    /// [`Exchanger::exchange`], noting who the subject and actor were once
    /// authenticated (so a refusal's audit record can name them), and what
    /// the anomaly guard did.
    pub async fn exchange_noting(
        &self,
        req: TokenRequest,
        peer: &Peer,
        noted: &mut Noted,
    ) -> Result<Issued, ExchangeError> {
        let result = self.pipeline(req, peer, noted).await;
        let Some(g) = &self.guard else {
            return result;
        };
        // Only authenticated identities are tracked: garbage cannot move
        // another identity's counters.
        let buf;
        let ids: &[&str] = match (noted.subject.as_deref(), noted.actor.as_deref()) {
            (Some(s), Some(a)) => {
                buf = [s, a];
                &buf
            }
            (Some(x), None) | (None, Some(x)) => {
                buf = [x, x];
                &buf[..1]
            }
            (None, None) => return result,
        };
        let now = self.clock.now();
        // The decision stands when this bookkeeping cannot reach a shared
        // state (the token is issued, the refusal answered): the audience is
        // then not learned (the next use steps up again) and the streak not
        // reset or advanced; the next exchange needs the store anyway.
        let noted_state = match &result {
            Ok(issued) if noted.guard_settled.as_deref() == Some(issued.claims.aud.as_str()) => {
                Ok(Vec::new())
            }
            Ok(issued) => g
                .record_issued(ids, &issued.claims.aud, now)
                .await
                .map(|()| Vec::new()),
            Err(e) if counts_as_probe(e) => g.record_refused(ids, now).await,
            Err(_) => Ok(Vec::new()),
        };
        let hits = noted_state.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "anomaly guard: shared state not updated");
            Vec::new()
        });
        for hit in hits {
            if hit.action == guard::GuardAction::Revoke {
                // The refusal stands either way; a failed revocation
                // is logged (and the streak trips again later).
                if let Err(e) = self.guard_revoke(&hit, now, noted).await {
                    tracing::error!(error = %e, identity = %crate::telemetry::log_safe(&hit.identity),
                        "anomaly guard: revocation failed");
                }
            } else {
                tracing::warn!(identity = %crate::telemetry::log_safe(&hit.identity),
                    action = hit.action.as_str(), "anomaly guard: refusal streak tripped");
                noted.guard.push(GuardNote {
                    trigger: hit.trigger,
                    action: hit.action,
                    identity: hit.identity,
                    blocked_until: None,
                    tripped: true,
                });
            }
        }
        result
    }

    /// The anomaly guard on a request policy would grant. `Ok(true)`: the
    /// request must wait for a human approval (only when `can_ask`).
    async fn guard_check(
        &self,
        ask: GuardAsk<'_>,
        noted: &mut Noted,
    ) -> Result<bool, ExchangeError> {
        let GuardAsk {
            subject,
            actor,
            audience,
            policy,
            can_ask,
            polling,
            now,
        } = ask;
        use guard::GuardAction as A;
        let Some(g) = &self.guard else {
            return Ok(false);
        };
        let both = [subject, actor.unwrap_or_default()];
        let ids = if actor.is_some() {
            &both[..]
        } else {
            &both[..1]
        };
        // A poll of a step-up approval stays one after the trigger stopped
        // firing (the approval is bound to this exact request and requester,
        // and a human approved it or not).
        let keep_polling = can_ask && polling && g.may_step_up(policy);
        // Fail closed: a shared state that cannot answer refuses the
        // exchange (503), never lets it through uncounted.
        let (hit, settled) = g
            .decide_noting(ids, audience, g.actions_for(policy), now)
            .await?;
        if settled {
            noted.guard_settled = Some(audience.to_string());
        }
        let Some(hit) = hit else {
            return Ok(keep_polling);
        };
        if hit.action == A::Allow {
            return Ok(keep_polling);
        }
        if hit.action == A::Revoke {
            self.guard_revoke(&hit, now, noted).await?;
        } else if !(hit.action == A::Approval && polling) {
            // A poll of the step-up approval is not a new action.
            guard_counted(&hit);
        }
        if hit.action == A::Approval && can_ask {
            if !polling {
                noted.guard.push(GuardNote {
                    trigger: hit.trigger,
                    action: hit.action,
                    identity: hit.identity,
                    blocked_until: None,
                    tripped: false,
                });
            }
            return Ok(true);
        }
        Err(ExchangeError::Guard {
            trigger: hit.trigger,
            action: hit.action,
            identity: hit.identity,
            retry_after: hit.retry_after,
        })
    }

    /// `revoke`: every live token of the identity (as subject or actor) is
    /// revoked and the identity blocked for `[guard] block_for`.
    async fn guard_revoke(
        &self,
        hit: &guard::Hit,
        now: u64,
        noted: &mut Noted,
    ) -> Result<(), ExchangeError> {
        let block_for = self.guard.as_ref().map_or(0, |g| g.config().block_for);
        let done = operator::revoke_and_block(
            &self.stores,
            crate::store::Revocation {
                kind: crate::store::RevocationKind::Subject,
                value: hit.identity.clone(),
                revoked_at: now,
                expires_at: self.revocation_expiry(now),
            },
            Some(now.saturating_add(block_for)),
            operator::Ack::Primary,
        )
        .await?;
        let until = done
            .blocked_until
            .unwrap_or_else(|| now.saturating_add(block_for));
        crate::telemetry::metrics()
            .revocations
            .with_label_values(&["subject"])
            .inc();
        guard_counted(hit);
        tracing::warn!(identity = %crate::telemetry::log_safe(&hit.identity),
            trigger = hit.trigger.reason(), blocked_until = until,
            "anomaly guard: identity revoked and blocked");
        noted.guard.push(GuardNote {
            trigger: hit.trigger,
            action: hit.action,
            identity: hit.identity.clone(),
            blocked_until: Some(until),
            tripped: false,
        });
        Ok(())
    }

    /// The pipeline proper: the named steps below, in the module docs'
    /// order. Each step refuses or hands on what it established.
    async fn pipeline(
        &self,
        req: TokenRequest,
        peer: &Peer,
        noted: &mut Noted,
    ) -> Result<Issued, ExchangeError> {
        let now = self.trusted_now()?;
        let peer = usable_peer(peer, now)?;
        let dpop = self.check_dpop(&req, peer, now).await?;
        let actor = self.actor_of(&req, peer, now).await?;
        if let Some(a) = &actor {
            noted.actor = Some(a.sub.clone());
        }
        let ctx = Context {
            req: &req,
            now,
            peer,
            dpop,
            actor,
        };
        let subject = match self.authenticate_subject(&ctx).await? {
            // One of our own: attenuation by re-exchange.
            SubjectCredential::Ours(parsed) => return self.reexchange(&ctx, parsed, noted).await,
            SubjectCredential::Authenticated(s) => s,
        };
        noted.subject = Some(subject.sub.clone());
        self.check_blocks(&ctx, &subject.sub).await?;
        let decision = self.decide(&ctx, &subject)?;
        // Anomaly guard: the identities are authenticated and policy would
        // grant; it may slow down, step up to a human, or revoke.
        let guard_step_up = self
            .guard_check(
                GuardAsk {
                    subject: &subject.sub,
                    actor: ctx.actor_sub(),
                    audience: req.target.as_str(),
                    policy: decision.policy.name(),
                    can_ask: true,
                    polling: req.approval_id.is_some(),
                    now,
                },
                noted,
            )
            .await?;
        let tiers = self.tiers(&ctx, &decision, guard_step_up)?;
        // Lifetime: min(asked or default, policy max, global max, the subject
        // credential's own end, the client certificate's end, the actor's).
        let (actor_end, actor_policy_end) =
            self.actor_caps(ctx.actor.as_ref(), decision.actor_policy(), now);
        let mut exp = self.expiry(
            &req,
            decision.policy,
            &[
                subject.not_after,
                ctx.peer_end(),
                actor_end,
                actor_policy_end,
            ],
            now,
        )?;
        let approval = if tiers.needs_approval {
            Some(self.approval_gate(&ctx, &subject, decision.policy).await?)
        } else {
            None
        };
        let grant = self
            .consume_grant(&ctx, &subject.sub, &tiers.jit, &mut exp)
            .await?;
        let Decision {
            policy,
            delegation,
            may_act,
        } = decision;
        let claims = self.claims_for(
            policy,
            TokenContent {
                sub: subject.sub.clone(),
                audience: req.target.as_str(),
                exp,
                client_id: match &ctx.actor {
                    Some(a) => a.sub.clone(),
                    None => peer
                        .map(|p| p.subject.clone())
                        .unwrap_or_else(|| subject.sub.clone()),
                },
                scope: req.scope.to_string(),
                txn: req
                    .task
                    .clone()
                    .or_else(|| grant.as_ref().and_then(|g| g.task.clone()))
                    .unwrap_or_else(|| crate::mint::random_uuid().to_string()),
                cnf: tiers.cnf,
                act: delegation.map(|d| d.1),
                grant: grant.map(|g| g.id),
                authorization_details: req.authorization_details.clone(),
                ancestors: Vec::new(),
                may_act,
            },
            now,
        );
        let mut issued = self.sign(&req, claims, now)?;
        issued.approval = approval.map(|a| a.id);
        Ok(issued)
    }

    /// Fails closed on an untrusted wall clock before reading it; every
    /// `iat`/`exp` of the exchange comes from the one reading returned.
    fn trusted_now(&self) -> Result<u64, ExchangeError> {
        if let Some(t) = &self.clock_trust {
            t.check()
                .map_err(|e| ExchangeError::ClockUntrusted(e.to_string()))?;
        }
        Ok(self.clock.now())
    }

    /// DPoP (RFC 9449) for callers without a client certificate: a proof of
    /// this request, with a current nonce when nonces are required, used once.
    async fn check_dpop(
        &self,
        req: &TokenRequest,
        peer: Option<&Arc<PeerIdentity>>,
        now: u64,
    ) -> Result<Option<DpopProof>, ExchangeError> {
        let Some(p) = req.dpop.as_deref() else {
            return Ok(None);
        };
        if peer.is_some() {
            return Err(ExchangeError::Malformed("dpop_with_client_certificate"));
        }
        let htu = format!("{}/token", self.issuer);
        let proof = dpop::verify_proof(p, &dpop::ProofCheck::new("POST", &htu, now))
            .map_err(|e| ExchangeError::DpopProof(e.as_str()))?;
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
            return Err(ExchangeError::DpopProof("dpop_replayed"));
        }
        Ok(Some(proof))
    }

    /// Delegation: the actor is authenticated first, like the subject.
    async fn actor_of(
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
    async fn authenticate_subject(
        &self,
        ctx: &Context<'_>,
    ) -> Result<SubjectCredential, ExchangeError> {
        let req = ctx.req;
        match (req.grant_type, req.subject_token_type) {
            (GrantType::ClientCredentials, _) | (_, TokenType::Mtls) => {
                let p = ctx
                    .peer
                    .ok_or(ExchangeError::ClientAuth("client_certificate_required"))?;
                if let Some(t) = &req.subject_token {
                    if t != &p.thumbprint {
                        return Err(ExchangeError::SubjectToken("mtls_thumbprint_mismatch"));
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
                    .ok_or(ExchangeError::Malformed("subject_token_missing"))?;
                let parsed =
                    jws::decode(token).map_err(|e| ExchangeError::SubjectToken(e.reason()))?;
                let ours = parsed
                    .unverified_claims()
                    .get("iss")
                    .and_then(Value::as_str)
                    == Some(self.issuer.as_str());
                if ours {
                    return Ok(SubjectCredential::Ours(parsed));
                }
                if req.subject_token_type == TokenType::AccessToken {
                    return Err(ExchangeError::SubjectToken("access_token_not_issued_here"));
                }
                Ok(SubjectCredential::Authenticated(
                    self.authenticate_jwt(parsed, ctx.now).await?,
                ))
            }
        }
    }

    /// Kill switch: the subject, and the presenting workload.
    async fn check_blocks(&self, ctx: &Context<'_>, subject: &str) -> Result<(), ExchangeError> {
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

    /// Policy: one policy must allow the audience and every scope.
    /// Delegation: the actor's own policy must allow the same audience and
    /// scopes and list the subject's issuer in `may_act_for`; the subject
    /// token's `may_act` binds this hop and every later one (it is carried
    /// into the token).
    fn decide(
        &self,
        ctx: &Context<'_>,
        subject: &AuthenticatedSubject,
    ) -> Result<Decision<'_>, ExchangeError> {
        let req = ctx.req;
        let subj = Subject {
            issuer: &subject.issuer_name,
            subject: &subject.sub,
            claims: subject.claims.as_ref(),
        };
        let audience = req.target.as_str();
        let policy = self
            .policies
            .decide(&subj, audience, &req.scope)
            .map_err(|d| match d {
                Denial::NoMatchingPolicy => ExchangeError::NoPolicy,
                Denial::AudienceNotAllowed => ExchangeError::Target,
                Denial::ScopeNotAllowed { refused } => ExchangeError::Scope(refused.to_string()),
            })?;
        let may_act = may_act_of(subject.claims.as_ref())
            .map_err(|_| ExchangeError::SubjectToken("may_act_malformed"))?;
        let delegation = self.delegate(
            &Delegation {
                subject_issuer: &subject.issuer_name,
                subject: &subject.sub,
                may_act: may_act.as_ref(),
                audience,
                scopes: &req.scope,
            },
            None,
            ctx.actor.as_ref(),
        )?;
        Ok(Decision {
            policy,
            delegation,
            may_act,
        })
    }

    /// The tiers of a granted request. Approval: such scopes only through a
    /// human approval of exactly this request (or when the guard steps up);
    /// policies may require RFC 9396 details for them. JIT: such scopes only
    /// with a grant. And a policy may require a bound token.
    fn tiers(
        &self,
        ctx: &Context<'_>,
        d: &Decision<'_>,
        guard_step_up: bool,
    ) -> Result<Tiers, ExchangeError> {
        let req = ctx.req;
        let (policy, actor_policy) = (d.policy, d.actor_policy());
        let scope_approval = req.scope.iter().any(|s| {
            policy.is_approval_scope(s) || actor_policy.is_some_and(|p| p.is_approval_scope(s))
        });
        let needs_approval = scope_approval || guard_step_up;
        if scope_approval
            && req.authorization_details.is_none()
            && (policy.require_authorization_details()
                || actor_policy.is_some_and(|p| p.require_authorization_details()))
        {
            return Err(ExchangeError::AuthorizationDetails(
                "authorization_details_required",
            ));
        }
        if !needs_approval && req.approval_id.is_some() {
            return Err(ExchangeError::Malformed("approval_id_not_applicable"));
        }
        let jit: Vec<String> = req
            .scope
            .iter()
            .filter(|s| policy.is_jit_scope(s) || actor_policy.is_some_and(|p| p.is_jit_scope(s)))
            .map(|s| s.to_string())
            .collect();
        let cnf = ctx.binding();
        if policy.require_binding() && cnf.is_none() {
            return Err(ExchangeError::ClientAuth("binding_required"));
        }
        Ok(Tiers {
            needs_approval,
            jit,
            cnf,
        })
    }

    /// Approval: asks for one, or redeems the approved one (atomically,
    /// once). Without `approval_id`: records a pending approval of exactly
    /// this request (and tells the webhook) and answers
    /// `authorization_pending`. With it: one poll; the approval is returned
    /// only when it was approved and this poll consumed it.
    async fn approval_gate(
        &self,
        ctx: &Context<'_>,
        subject: &AuthenticatedSubject,
        policy: &crate::policy::CompiledPolicy,
    ) -> Result<crate::store::Approval, ExchangeError> {
        use crate::store::{Approval, ApprovalCreated, ApprovalState, PollOutcome};
        let (req, now, actor) = (ctx.req, ctx.now, ctx.actor.as_ref());
        let requester = match (ctx.peer, actor) {
            (Some(p), _) => p.subject.clone(),
            (None, Some(a)) => a.sub.clone(),
            (None, None) => subject.sub.clone(),
        };
        let bound = approval::BoundRequest {
            subject_issuer: &subject.issuer_name,
            subject: &subject.sub,
            actor: actor.map(|a| (a.issuer_name.as_str(), a.sub.as_str())),
            scopes: req.scope.iter().map(|s| s.as_str()).collect(),
            audience: req.target.as_str(),
            task: req.task.as_deref(),
            details: req.authorization_details.as_ref(),
        };
        let request_hash = bound.hash();
        let interval = self.approvals_interval;
        // RFC 8628 §3.2: clients default to 5 s when no interval is given;
        // tell them at least 1 s even when slow_down is disabled.
        let shown_interval = interval.max(1);
        let Some(id) = req.approval_id.as_deref() else {
            let a = Approval {
                id: uuid::Uuid::new_v4().to_string(),
                request_hash,
                requester,
                subject: subject.sub.clone(),
                actors: actor.map(|a| vec![a.sub.clone()]).unwrap_or_default(),
                owner: policy.owner().map(str::to_string),
                policy: policy.name().to_string(),
                scopes: req.scope.iter().map(|s| s.to_string()).collect(),
                audience: req.target.as_str().to_string(),
                task: req.task.clone(),
                authorization_details: req.authorization_details.clone(),
                created_at: now,
                expires_at: now.saturating_add(self.approvals_ttl),
                state: ApprovalState::Pending,
                decided_by: None,
                decided_at: None,
                reason: None,
                ciba: None,
            };
            match self.stores.approvals.create_approval(&a).await? {
                ApprovalCreated::Created => {}
                // The same request asked again while the first ask waits:
                // one approval, one decision (no second webhook).
                ApprovalCreated::Existing(id) => {
                    return Err(ExchangeError::ApprovalPending {
                        id,
                        interval: shown_interval,
                    });
                }
                ApprovalCreated::Full => return Err(ExchangeError::ApprovalsFull),
            }
            // The pending answer itself is audited by the token route
            // (a refusal with reason `authorization_pending`, naming the
            // approval id in its detail).
            tracing::info!(approval = %a.id, policy = %a.policy, expires_at = a.expires_at,
                "human approval requested");
            crate::telemetry::metrics()
                .approvals
                .with_label_values(&["requested"])
                .inc();
            if let Some(w) = &self.webhook {
                w.notify(&a);
            }
            return Err(ExchangeError::ApprovalPending {
                id: a.id,
                interval: shown_interval,
            });
        };
        match self
            .stores
            .approvals
            .poll(id, &requester, &request_hash, interval, now)
            .await?
        {
            PollOutcome::Redeemed(a) => {
                crate::telemetry::metrics()
                    .approvals
                    .with_label_values(&["redeemed"])
                    .inc();
                Ok(*a)
            }
            PollOutcome::Pending => Err(ExchangeError::ApprovalPending {
                id: id.to_string(),
                interval: shown_interval,
            }),
            PollOutcome::SlowDown => Err(ExchangeError::ApprovalSlowDown {
                interval: shown_interval,
            }),
            PollOutcome::Denied => Err(ExchangeError::ApprovalDenied),
            PollOutcome::Expired => Err(ExchangeError::ApprovalExpired),
            PollOutcome::Invalid => Err(ExchangeError::ApprovalInvalid),
        }
    }

    /// JIT scopes: one use of a live grant covering subject, audience and
    /// those scopes is consumed atomically, last, right before signing; the
    /// grant's end caps `exp`.
    async fn consume_grant(
        &self,
        ctx: &Context<'_>,
        subject: &str,
        jit: &[String],
        exp: &mut u64,
    ) -> Result<Option<crate::store::Grant>, ExchangeError> {
        if jit.is_empty() {
            return Ok(None);
        }
        let req = ctx.req;
        let g = self
            .stores
            .grants
            .consume(
                subject,
                req.target.as_str(),
                jit,
                req.task.as_deref(),
                ctx.now,
            )
            .await?
            .ok_or_else(|| ExchangeError::GrantRequired(jit.join(" ")))?;
        *exp = (*exp).min(g.expires_at);
        if *exp <= ctx.now {
            return Err(ExchangeError::NoLifetime);
        }
        crate::telemetry::metrics().grants_consumed.inc();
        Ok(Some(g))
    }

    /// Attenuation: a Tessera token exchanged for a narrower one. Scopes a
    /// subset of the parent's, audience and scopes allowed by the policy that
    /// granted the parent, lifetime within the parent's, `txn`, `act`,
    /// `grant` inherited, and the parent's `jti` recorded so that revoking
    /// it revokes this token too.
    async fn reexchange(
        &self,
        ctx: &Context<'_>,
        parsed: jws::UnverifiedJws,
        noted: &mut Noted,
    ) -> Result<Issued, ExchangeError> {
        let (req, now, peer, actor) = (ctx.req, ctx.now, ctx.peer, ctx.actor.as_ref());
        let parent = self
            .own
            .verify_decoded(parsed, now)
            .map_err(ExchangeError::SubjectToken)?;
        let p = &parent.claims;
        noted.subject = Some(p.sub.clone());
        if self
            .stores
            .revocations
            .is_revoked(&parent.facts(), now)
            .await?
        {
            return Err(ExchangeError::SubjectToken("subject_token_revoked"));
        }
        if self.stores.revocations.is_blocked(&p.sub, now).await? {
            return Err(ExchangeError::Blocked);
        }
        // Proof of possession: a certificate-bound parent only over that
        // certificate; other binding methods are not accepted here.
        if let Some(c) = &p.cnf {
            match (&c.x5t_s256, &c.jkt) {
                (Some(x5t), None) => {
                    if peer.is_none_or(|pe| &pe.thumbprint != x5t) {
                        return Err(ExchangeError::SubjectToken("binding_mismatch"));
                    }
                }
                (None, Some(jkt)) => {
                    if ctx.dpop.as_ref().is_none_or(|d| &d.jkt != jkt) {
                        return Err(ExchangeError::SubjectToken("dpop_binding_mismatch"));
                    }
                }
                _ => return Err(ExchangeError::SubjectToken("binding_unsupported")),
            }
        }
        // Holder: a workload presenting over mTLS must be the parent's client,
        // unless it acts for the subject under the delegation rules below.
        if let Some(pe) = peer {
            if actor.is_none() && pe.subject != p.client_id {
                return Err(ExchangeError::SubjectToken("presenter_not_holder"));
            }
            if pe.subject != p.sub && self.stores.revocations.is_blocked(&pe.subject, now).await? {
                return Err(ExchangeError::Blocked);
            }
        }
        if p.ancestors.len() >= MAX_REEXCHANGE_DEPTH {
            return Err(ExchangeError::SubjectToken("reexchange_too_deep"));
        }
        // Never wider: scopes within the parent's ...
        let parent_scopes: crate::policy::scope::ScopeSet = p
            .scope
            .parse()
            .map_err(|_| ExchangeError::SubjectToken("parent_scope_malformed"))?;
        if !req.scope.is_subset(&parent_scopes) {
            let extra: Vec<String> = req
                .scope
                .iter()
                .filter(|s| !parent_scopes.contains(s))
                .map(|s| s.to_string())
                .collect();
            return Err(ExchangeError::Scope(extra.join(" ")));
        }
        // ... and within the policy that granted the parent, which must still exist.
        let policy = p
            .policy
            .as_deref()
            .and_then(|n| self.policies.get(n))
            .ok_or(ExchangeError::NoPolicy)?;
        let audience = req.target.as_str();
        if !policy.allows_audience(audience) {
            return Err(ExchangeError::Target);
        }
        let refused = policy.refused_scopes(&req.scope);
        if !refused.is_empty() {
            return Err(ExchangeError::Scope(refused.to_string()));
        }
        // Every actor of the chain (a new one, and those already in `act`)
        // against the current policies, and the original subject's may_act.
        let delegation = self.delegate(
            &Delegation {
                subject_issuer: policy.issuer(),
                subject: &p.sub,
                may_act: p.may_act.as_ref(),
                audience,
                scopes: &req.scope,
            },
            p.act.as_ref(),
            actor,
        )?;
        if let Some((ap, _)) = &delegation {
            if req.scope.iter().any(|s| ap.is_approval_scope(s)) {
                return Err(ExchangeError::ApprovalRequired(req.scope.to_string()));
            }
        }
        // Anomaly guard (a re-exchange cannot wait for a human: `approval`
        // refuses it).
        self.guard_check(
            GuardAsk {
                subject: &p.sub,
                actor: ctx.actor_sub(),
                audience,
                policy: policy.name(),
                can_ask: false,
                polling: false,
                now,
            },
            noted,
        )
        .await?;
        let cnf = ctx.binding();
        if policy.require_binding() && cnf.is_none() {
            return Err(ExchangeError::ClientAuth("binding_required"));
        }
        if req.task.as_deref().is_some_and(|t| t != p.txn) {
            return Err(ExchangeError::Malformed("task_differs_from_parent"));
        }
        if req.authorization_details.is_some()
            && req.authorization_details != p.authorization_details
        {
            return Err(ExchangeError::Malformed(
                "authorization_details_differ_from_parent",
            ));
        }
        let (actor_end, actor_policy_end) =
            self.actor_caps(actor, delegation.as_ref().map(|d| d.0), now);
        let exp = self.expiry(
            req,
            policy,
            &[p.exp, ctx.peer_end(), actor_end, actor_policy_end],
            now,
        )?;
        let mut ancestors = Vec::with_capacity(p.ancestors.len() + 1);
        ancestors.push(p.jti.clone());
        ancestors.extend(p.ancestors.iter().cloned());
        let claims = self.claims_for(
            policy,
            TokenContent {
                sub: p.sub.clone(),
                audience,
                exp,
                client_id: actor.map_or_else(|| p.client_id.clone(), |a| a.sub.clone()),
                scope: req.scope.to_string(),
                txn: p.txn.clone(),
                act: match delegation {
                    Some((_, act)) => Some(act),
                    None => p.act.clone(),
                },
                cnf,
                grant: p.grant.clone(),
                authorization_details: p.authorization_details.clone(),
                ancestors,
                may_act: p.may_act.clone(),
            },
            now,
        );
        self.sign(req, claims, now)
    }

    /// Authenticates the actor of a delegation: the TLS client certificate
    /// (`...:mtls`, the token being its thumbprint) or an OIDC token from a
    /// configured issuer. Tessera's own tokens are not accepted as actors.
    async fn authenticate_actor(
        &self,
        token: &str,
        tt: TokenType,
        peer: Option<&Arc<PeerIdentity>>,
        now: u64,
    ) -> Result<AuthenticatedActor, ExchangeError> {
        match tt {
            TokenType::Mtls => {
                let p = peer.ok_or(ExchangeError::ClientAuth("client_certificate_required"))?;
                if token != p.thumbprint {
                    return Err(ExchangeError::ActorToken("mtls_thumbprint_mismatch"));
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
                let parsed =
                    jws::decode(token).map_err(|e| ExchangeError::ActorToken(e.reason()))?;
                if parsed
                    .unverified_claims()
                    .get("iss")
                    .and_then(Value::as_str)
                    == Some(self.issuer.as_str())
                {
                    return Err(ExchangeError::ActorToken("actor_token_issued_here"));
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
            TokenType::AccessToken => {
                Err(ExchangeError::ActorToken("actor_token_type_unsupported"))
            }
        }
    }

    /// The delegation rule ([`PolicySet::delegate`], the one the CLI's
    /// `policy explain` runs too) for `d` and this request's actor, if any, on top of
    /// the prior actors of the subject token's `act`: every actor of the
    /// chain is checked against the current policies. Returns the new
    /// actor's policy and the new `act`, when there is a new actor.
    fn delegate<'a>(
        &'a self,
        d: &Delegation<'_>,
        prior: Option<&Actor>,
        actor: Option<&AuthenticatedActor>,
    ) -> Result<Option<(&'a crate::policy::CompiledPolicy, Actor)>, ExchangeError> {
        let mut chain = Vec::new();
        if let Some(a) = actor {
            chain.push(ChainActor {
                issuer: &a.issuer_name,
                iss: a.iss.as_deref(),
                sub: &a.sub,
                claims: a.claims.as_ref(),
            });
        }
        let mut link = prior;
        while let Some(l) = link {
            // MAX_REEXCHANGE_DEPTH and max_depth bound real chains; a longer
            // one is refused by the depth check below anyway.
            if chain.len() > crate::mint::claims::MAX_ACTOR_DEPTH {
                return Err(ExchangeError::ActorToken("act_chain_too_deep"));
            }
            let issuer = match l.iss.as_deref() {
                None => MTLS_ISSUER,
                Some(iss) => self
                    .issuers
                    .get(iss)
                    .map(|v| v.config().name.as_str())
                    .ok_or(ExchangeError::ActorToken("actor_issuer_unknown"))?,
            };
            chain.push(ChainActor {
                issuer,
                iss: l.iss.as_deref(),
                sub: &l.sub,
                claims: None,
            });
            link = l.act.as_deref();
        }
        let pa = self.policies.delegate(d, &chain).map_err(|e| match e {
            DelegationDenial::Policy {
                denial: Denial::AudienceNotAllowed,
                ..
            } => ExchangeError::Target,
            DelegationDenial::Policy {
                denial: Denial::ScopeNotAllowed { refused },
                ..
            } => ExchangeError::Scope(refused.to_string()),
            other => ExchangeError::ActorToken(other.reason()),
        })?;
        Ok(match (pa, actor) {
            (Some(pa), Some(a)) => Some((
                pa,
                Actor {
                    sub: a.sub.clone(),
                    iss: a.iss.clone(),
                    act: prior.cloned().map(Box::new),
                },
            )),
            _ => None,
        })
    }

    /// The actor's credential end and its policy's lifetime cap (or no cap).
    fn actor_caps(
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
    fn expiry(
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

    /// The one claims builder (first exchange and re-exchange): the issuer,
    /// `iat`/`nbf` from this exchange's one clock reading, a fresh `jti`, and
    /// the granting policy with its owner are filled in here; what differs
    /// between the two paths comes in as [`TokenContent`].
    fn claims_for(
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
    fn sign(
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

    async fn authenticate_jwt(
        &self,
        parsed: jws::UnverifiedJws,
        now: u64,
    ) -> Result<AuthenticatedSubject, ExchangeError> {
        // Explicit typing (RFC 8725 §3.11): a subject token is a plain JWT or an
        // ID token, never an access token, a logout/SET or a DPoP proof.
        if let Some(typ) = parsed.header().typ.as_deref() {
            if !typ.eq_ignore_ascii_case("JWT") && !typ.eq_ignore_ascii_case("application/jwt") {
                return Err(ExchangeError::SubjectToken("typ_not_accepted"));
            }
        }
        let iss = parsed
            .unverified_claims()
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(ExchangeError::SubjectToken("iss_missing"))?;
        let verifier = self
            .issuers
            .get(iss)
            .cloned()
            .ok_or(ExchangeError::SubjectToken("issuer_not_trusted"))?;
        let v = verifier.verify(parsed, now).await.map_err(|e| match e {
            OidcError::Rejected(r) => ExchangeError::SubjectToken(r),
            OidcError::Unavailable(d) => ExchangeError::KeysUnavailable(d),
            OidcError::Stale(d) => ExchangeError::KeysStale(d),
        })?;
        let cfg = verifier.config();
        if cfg.single_use {
            let jti = v
                .jti
                .as_deref()
                .ok_or(ExchangeError::SubjectToken("jti_missing"))?;
            let until = v.exp.saturating_add(cfg.leeway.as_secs());
            if !self
                .stores
                .replay
                .first_use(&cfg.name, jti, until, now)
                .await?
            {
                return Err(ExchangeError::SubjectToken("jti_replayed"));
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
