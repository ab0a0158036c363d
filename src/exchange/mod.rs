//! The exchange pipeline, free of HTTP: authenticate the subject (client
//! certificate or OIDC token), decide by policy, consult the store, mint.
//!
//! Order matters and is fixed: parse → authenticate → kill switch → policy →
//! tiers → lifetime → mint. Nothing is minted unless every step said yes;
//! a dependency that fails makes the whole exchange fail (closed).
//!
//! `Exchanger::pipeline` (below) runs the steps in that order, top to
//! bottom; each step is a named function handing on what it established
//! (the request `Context`, an `AuthenticatedSubject`, a `Decision`).
//! The steps live by what they are about: `authenticate` (clock trust,
//! client certificate, DPoP, actor, subject, kill switch), `decide`
//! (policy, delegation, tiers), `approval_gate` (human approval, JIT grant),
//! `token` (binding, lifetime, claims, signing), `reexchange` (attenuation).
//! What has a job of its own is apart: `approval`, `approver_session`
//! (the approval pages' sign-in and sessions), `guard`, `operator`
//! (operator input and verbs), `error`; the delegation rule is
//! `policy::delegation`.

pub(crate) mod approval;
mod approval_gate;
pub(crate) mod approver_session;
mod authenticate;
pub(crate) mod ciba;
mod decide;
pub(crate) mod error;
pub mod guard;
pub(crate) mod introspection;
pub mod operator;
pub(crate) mod outcome;
mod reexchange;
pub(crate) mod request;
mod token;

use std::collections::HashMap;
use std::sync::Arc;

pub use error::{
    ClientAuthReason, DetailsReason, DpopReason, ExchangeError, MalformedReason, TokenReason,
};

use crate::clock::Clock;
use crate::identity::dpop::{self, DpopProof};
use crate::identity::oidc::IssuerVerifier;
use crate::identity::own::OwnTokenVerifier;
use crate::identity::peer::PeerIdentity;
use crate::mint::claims::{AccessTokenClaims, Confirmation};
use crate::mint::TokenMinter;
use crate::policy::PolicySet;
use crate::store::Stores;
use authenticate::{usable_peer, AuthenticatedActor, SubjectCredential};
use decide::Decision;
use request::{TokenRequest, TokenType};
use token::{binding, TokenContent};

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

/// Why the exchange pipeline cannot be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The policies do not compile.
    #[error(transparent)]
    Policies(#[from] crate::policy::PolicyError),
    /// The signing key directory cannot be listed (DPoP nonces).
    #[error("tokens.signing_keys: {0}")]
    SigningKeys(std::io::Error),
    /// A signing key file cannot be read (DPoP nonces).
    #[error("{}: {source}", path.display())]
    SigningKeyFile {
        /// The key file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The approvals webhook cannot be set up.
    #[error(transparent)]
    Webhook(#[from] approval::WebhookSetupError),
}

/// The secret DPoP nonces are derived from: the signing key files, which
/// every replica shares (hashed, never used as such).
fn nonce_secret(dir: &std::path::Path) -> Result<Vec<u8>, SetupError> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(SetupError::SigningKeys)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    files.sort();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for f in files {
        let bytes = std::fs::read(&f).map_err(|source| SetupError::SigningKeyFile {
            path: f.clone(),
            source,
        })?;
        ctx.update(&bytes);
    }
    Ok(ctx.finish().as_ref().to_vec())
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
    ) -> Result<Self, SetupError> {
        let policies = PolicySet::compile(cfg.policies.to_vec())?;
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
}
