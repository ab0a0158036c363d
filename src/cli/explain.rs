// One file: about 300 of its lines are unit tests; the dry run itself walks
// the exchange's steps in order and reads best in one place.
//! `tessera policy explain`: an offline dry run of one request against a
//! config's policies. It says, per policy, whether `match` fits (and which
//! condition fails), whether the audience and each scope are allowed, and
//! the final verdict the broker's policy step would reach: the ONE policy
//! that grants (first in file order, [`PolicySet::decide`]) with its tiers,
//! or the OAuth error and the precise reason.
//!
//! With an actor (`--actor-issuer`, `--actor`), it also checks delegation
//! with the broker's own rule ([`PolicySet::delegate`]): the actor is not
//! the subject, fits the subject's `may_act` claim when there is one, has a
//! policy of its own allowing the same audience and scopes that lists the
//! subject's issuer in `may_act_for`, and the chain fits its `max_depth`.
//!
//! It evaluates policies only: it never sees a token, the kill switch, JIT
//! grants or approvals (it says which of those the request would need).
//!
//! One file: the explain verb is one job (read a config, build a dry-run
//! request, ask the broker's own rules, print the verdict); the rules it
//! asks live elsewhere (`policy`, `policy::delegation`). About a third of
//! the lines are its tests.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::config::lint::fmt_duration;
use crate::config::Config;
use crate::exchange::{ExchangeError, TokenReason};
use crate::policy::claims::{claim_path_lookup, validate_claim_path};
use crate::policy::delegation::{may_act_of, ChainActor, Delegation, DelegationDenial};
use crate::policy::scope::ScopeSet;
use crate::policy::{
    CompiledPolicy, Denial, PolicySet, Subject, SubjectMismatch, VerdictOutcome, MTLS_ISSUER,
};

/// The command line of `tessera policy explain`.
#[derive(Debug, Clone)]
pub struct ExplainArgs {
    /// Config file.
    pub config: PathBuf,
    /// Issuer name, or `mtls`.
    pub issuer: String,
    /// The subject (`sub`, SPIFFE ID or DNS name).
    pub subject: String,
    /// `path=value` claims; paths step into objects at `/`, values are
    /// strings, a path given twice makes an array.
    pub claims: Vec<String>,
    /// The audience (one).
    pub audience: String,
    /// Space-separated scopes.
    pub scope: String,
    /// The actor's issuer name, or `mtls` (delegation).
    pub actor_issuer: Option<String>,
    /// The actor's subject.
    pub actor: Option<String>,
    /// The actor's claims, as `claims`.
    pub actor_claims: Vec<String>,
}

/// The actor of a delegated request.
#[derive(Debug, Clone)]
pub struct ActorRun {
    /// Issuer name, or `mtls`.
    pub issuer: String,
    /// The actor's subject.
    pub subject: String,
    /// The actor token's claims (`None` for mTLS).
    pub claims: Option<Map<String, Value>>,
    /// The `iss` the actor's token would carry (`None` for mTLS), for `may_act`.
    pub iss: Option<String>,
}

/// The request being dry-run, parsed.
#[derive(Debug, Clone)]
pub struct DryRun {
    /// Issuer name, or `mtls`.
    pub issuer: String,
    /// The subject.
    pub subject: String,
    /// Token claims (`None` for mTLS, as in the broker).
    pub claims: Option<Map<String, Value>>,
    /// The audience.
    pub audience: String,
    /// The scopes.
    pub scopes: ScopeSet,
    /// The actor, for a delegated request.
    pub actor: Option<ActorRun>,
}

/// Something the request needs besides the policy (a tier of the granting
/// policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `jit_grant`, `approval`, `authorization_details` or `binding`.
    pub kind: &'static str,
    /// The scopes concerned (empty when it is about the whole request).
    pub scopes: Vec<String>,
    /// What is needed, and the error without it.
    pub message: String,
}

/// One policy's view of the request.
#[derive(Debug, Clone)]
pub struct PolicyReport {
    /// Position in the file.
    pub index: usize,
    /// Name.
    pub name: String,
    /// What [`PolicySet::explain`] says.
    pub outcome: VerdictOutcome,
    /// Whether this is the policy the broker would pick.
    pub selected: bool,
    /// Why `match` does not fit: `(condition, message)`.
    pub mismatch: Option<(&'static str, String)>,
    /// Whether an audience pattern allows the audience.
    pub audience_allowed: bool,
    /// The requested scopes no pattern of this policy allows.
    pub refused_scopes: Vec<String>,
}

/// The final answer.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// One policy grants.
    Granted {
        /// Its name.
        policy: String,
        /// The actor's policy, for a delegated request.
        actor_policy: Option<String>,
        /// Its owner.
        owner: Option<String>,
        /// The longest lifetime a token can get: `min(policy max_ttl, [tokens] max_ttl)`.
        max_ttl: Duration,
        /// The lifetime when the request names none.
        default_ttl: Duration,
        /// What the request still needs (tiers).
        conditions: Vec<Condition>,
    },
    /// Refused.
    Refused {
        /// The OAuth `error` the broker answers.
        error: &'static str,
        /// The reason code of the audit record.
        reason: &'static str,
        /// The precise reason (the broker never tells the caller this).
        message: String,
    },
}

/// Per-policy reports and the verdict.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// Every policy, in file order.
    pub policies: Vec<PolicyReport>,
    /// Every policy for the actor (empty without one).
    pub actor_policies: Vec<PolicyReport>,
    /// The verdict.
    pub verdict: Verdict,
}

/// Why a `--claim path=value` argument is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimArgError {
    /// No `=`.
    #[error("--claim `{0}` is not path=value")]
    NotPathValue(String),
    /// The path is not a claim path.
    #[error("--claim `{item}`: {source}")]
    Path {
        /// The argument.
        item: String,
        /// Why.
        source: crate::policy::ClaimPathError,
    },
    /// The path steps through a value another `--claim` set (or sets an
    /// object another one steps into).
    #[error("--claim `{0}` conflicts with another --claim")]
    Conflict(String),
}

/// Why `tessera policy explain` cannot run the request it was given
/// (bad usage, exit 2), or cannot compile the config's policies.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The policies do not compile.
    #[error(transparent)]
    Policies(#[from] crate::policy::PolicyError),
    /// `--issuer` or `--actor-issuer` is neither `mtls` nor a configured
    /// issuer (`names`: the ones that are, joined).
    #[error("{flag} `{name}` is neither `mtls` nor an [[issuers]] name in {} (one of: {names})", file.display())]
    UnknownIssuer {
        /// The flag.
        flag: &'static str,
        /// The name given.
        name: String,
        /// The config file.
        file: std::path::PathBuf,
        /// The names allowed.
        names: String,
    },
    /// A flag that must not be empty (`--subject`, `--audience`, `--actor`).
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// `--claim` with an mTLS subject.
    #[error("--claim goes with an OIDC --issuer: an mTLS subject has no claims")]
    ClaimsForMtls,
    /// `--actor-claim` with an mTLS actor.
    #[error("--actor-claim goes with an OIDC --actor-issuer: an mTLS actor has no claims")]
    ActorClaimsForMtls,
    /// `--actor-issuer` without `--actor` or the other way round.
    #[error("--actor-issuer and --actor go together (and --actor-claim with them)")]
    ActorFlags,
    /// A `--claim` or `--actor-claim` argument.
    #[error(transparent)]
    Claim(#[from] ClaimArgError),
    /// `--scope` is not scope tokens.
    #[error("--scope: {0}")]
    Scope(crate::policy::scope::ScopeError),
}

/// Parses `--claim path=value` arguments into a claims object: `/` steps
/// into nested objects (as in `match.claims`), values are strings, and a
/// path given twice makes an array of strings.
pub fn parse_claims(items: &[String]) -> Result<Map<String, Value>, ClaimArgError> {
    let mut map = Map::new();
    for item in items {
        let Some((path, value)) = item.split_once('=') else {
            return Err(ClaimArgError::NotPathValue(item.clone()));
        };
        validate_claim_path(path).map_err(|e| ClaimArgError::Path {
            item: item.clone(),
            source: e,
        })?;
        let mut segments: Vec<&str> = path.split('/').collect();
        let last = segments.pop().unwrap_or_default();
        let conflict = || ClaimArgError::Conflict(item.clone());
        let mut cur = &mut map;
        for s in segments {
            let next = cur
                .entry(s.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            cur = next.as_object_mut().ok_or_else(conflict)?;
        }
        let value = Value::String(value.to_string());
        match cur.get_mut(last) {
            None => {
                cur.insert(last.to_string(), value);
            }
            Some(Value::Array(a)) => a.push(value),
            Some(old @ Value::String(_)) => {
                let first = old.take();
                *old = Value::Array(vec![first, value]);
            }
            Some(_) => return Err(conflict()),
        }
    }
    Ok(map)
}

/// Why `policy` does not match, in words naming the failed condition.
fn mismatch(
    p: &CompiledPolicy,
    who: &Subject<'_>,
    why: &SubjectMismatch,
) -> (&'static str, String) {
    match why {
        SubjectMismatch::Issuer => (
            "issuer",
            format!("match.issuer is `{}`, not `{}`", p.issuer(), who.issuer),
        ),
        SubjectMismatch::EmptySubject => ("subject", "the subject is empty".into()),
        SubjectMismatch::Subject => (
            "subject",
            format!(
                "subject `{}` does not match match.subject `{}`",
                who.subject,
                p.subject_pattern()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
        ),
        SubjectMismatch::ClaimsUnavailable => (
            "claims",
            "the policy has claim conditions and an mTLS subject has no claims".into(),
        ),
        SubjectMismatch::Claim { path } => {
            let pattern = p
                .claim_conditions()
                .iter()
                .find(|c| c.path() == path)
                .map(|c| c.pattern().to_string())
                .unwrap_or_default();
            let got = who.claims.and_then(|c| claim_path_lookup(c, path));
            let message = match got {
                None => format!("claim `{path}` is missing (match.claims wants `{pattern}`)"),
                Some(v) => format!("claim `{path}` = {v} does not match `{pattern}`"),
            };
            ("claim", message)
        }
    }
}

/// The tiers of the granting policy that apply to this request, in the
/// order the broker checks them.
fn conditions(p: &CompiledPolicy, pa: Option<&CompiledPolicy>, req: &DryRun) -> Vec<Condition> {
    let mut out = Vec::new();
    let approval: Vec<String> = req
        .scopes
        .iter()
        .filter(|s| p.is_approval_scope(s) || pa.is_some_and(|a| a.is_approval_scope(s)))
        .map(ToString::to_string)
        .collect();
    let jit: Vec<String> = req
        .scopes
        .iter()
        .filter(|s| p.is_jit_scope(s) || pa.is_some_and(|a| a.is_jit_scope(s)))
        .map(ToString::to_string)
        .collect();
    if !approval.is_empty()
        && (p.require_authorization_details()
            || pa.is_some_and(CompiledPolicy::require_authorization_details))
    {
        out.push(Condition {
            kind: "authorization_details",
            scopes: approval.clone(),
            message: "the request must carry authorization_details (RFC 9396, require_authorization_details); without them: invalid_authorization_details".into(),
        });
    }
    if p.require_binding() {
        let over_mtls = req.issuer == MTLS_ISSUER
            || req.actor.as_ref().is_some_and(|a| a.issuer == MTLS_ISSUER);
        let message = if over_mtls {
            "require_binding: met, an mTLS request is bound to its client certificate".into()
        } else {
            "require_binding: the request must come over a client certificate or carry a DPoP proof; unbound: invalid_client".into()
        };
        out.push(Condition {
            kind: "binding",
            scopes: Vec::new(),
            message,
        });
    }
    if !approval.is_empty() {
        out.push(Condition {
            kind: "approval",
            message: format!(
                "{} needs a human approval of this exact request (approval_scopes): the broker answers authorization_pending with an approval_id until an operator runs `tessera approve ID`",
                approval.join(" ")
            ),
            scopes: approval,
        });
    }
    if !jit.is_empty() {
        out.push(Condition {
            kind: "jit_grant",
            message: format!(
                "{} needs a live JIT grant (jit_scopes), e.g. `tessera grant create --subject {} --audience {} --scope \"{}\" --ttl 10m`; without one: invalid_scope",
                jit.join(" "),
                req.subject,
                req.audience,
                jit.join(" ")
            ),
            scopes: jit,
        });
    }
    out
}

/// Per-policy reports for one identity.
fn reports(set: &PolicySet, who: &Subject<'_>, req: &DryRun) -> Vec<PolicyReport> {
    let verdicts = set.explain(who, &req.audience, &req.scopes);
    set.policies()
        .iter()
        .zip(verdicts)
        .map(|(p, v)| PolicyReport {
            index: p.index(),
            name: p.name().to_string(),
            mismatch: match &v.outcome {
                VerdictOutcome::SubjectMismatch(why) => Some(mismatch(p, who, why)),
                _ => None,
            },
            outcome: v.outcome,
            selected: v.selected,
            audience_allowed: p.allows_audience(&req.audience),
            refused_scopes: p
                .refused_scopes(&req.scopes)
                .iter()
                .map(ToString::to_string)
                .collect(),
        })
        .collect()
}

/// A refusal worded as the broker words it: the wire code from the one
/// OAuth table (`oauth::error`) and the reason of the same
/// [`ExchangeError`] the exchange returns, so a dry run cannot name a code
/// the broker would not send.
fn broker_refusal(e: ExchangeError, message: String) -> Verdict {
    Verdict::Refused {
        error: crate::oauth::OAuthError::from(&e).code.as_str(),
        reason: e.reason(),
        message,
    }
}

/// The refusal for a policy denial of `who` (the subject, or the actor).
fn refusal(
    denial: Denial,
    reports: &[PolicyReport],
    who: &Subject<'_>,
    role: &str,
    audience: &str,
) -> Verdict {
    let matching: Vec<&str> = reports
        .iter()
        .filter(|p| p.mismatch.is_none())
        .map(|p| p.name.as_str())
        .collect();
    match denial {
        // The exchange's own mapping of a denial (`Exchanger::pipeline` for
        // the subject, the delegation rule's `ActorToken` for the actor).
        Denial::NoMatchingPolicy => broker_refusal(
            if role == "actor" {
                ExchangeError::ActorToken(TokenReason::ActorNoPolicy)
            } else {
                ExchangeError::NoPolicy
            },
            format!(
                "no policy matches {role} issuer `{}` subject `{}`",
                who.issuer, who.subject
            ),
        ),
        Denial::AudienceNotAllowed => broker_refusal(
            ExchangeError::Target,
            format!(
                "polic{} {} match the {role} but none allows audience `{audience}`",
                if matching.len() == 1 { "y" } else { "ies" },
                quoted(&matching),
            ),
        ),
        Denial::ScopeNotAllowed { refused } => {
            let refused_list: Vec<String> = refused.iter().map(ToString::to_string).collect();
            let closest = reports
                .iter()
                .find(|p| {
                    p.mismatch.is_none() && p.audience_allowed && p.refused_scopes == refused_list
                })
                .map(|p| format!(" ({:?})", p.name))
                .unwrap_or_default();
            broker_refusal(
                ExchangeError::Scope(refused.to_string()),
                format!(
                    "no policy matching the {role} and allowing audience `{audience}` allows every scope; the closest{closest} refuses: {refused}"
                ),
            )
        }
    }
}

/// The broker's delegation rule ([`PolicySet::delegate`], the same
/// function) for the request's actor: the actor's policy, or the refusal.
fn delegation<'p>(
    set: &'p PolicySet,
    req: &DryRun,
    actor: &ActorRun,
    asubj: &Subject<'_>,
    actor_policies: &[PolicyReport],
) -> Result<Option<&'p CompiledPolicy>, Box<Verdict>> {
    let refuse = |e: ExchangeError, message: String| Box::new(broker_refusal(e, message));
    let may_act = may_act_of(req.claims.as_ref()).map_err(|e| {
        refuse(
            ExchangeError::SubjectToken(TokenReason::MayActMalformed),
            format!("the subject's {e}"),
        )
    })?;
    let d = Delegation {
        subject_issuer: &req.issuer,
        subject: &req.subject,
        may_act: may_act.as_ref(),
        audience: &req.audience,
        scopes: &req.scopes,
    };
    let chain = [ChainActor {
        issuer: &actor.issuer,
        iss: actor.iss.as_deref(),
        sub: &actor.subject,
        claims: actor.claims.as_ref(),
    }];
    set.delegate(&d, &chain).map_err(|e| match e {
        DelegationDenial::Policy { denial, .. } => Box::new(refusal(
            denial,
            actor_policies,
            asubj,
            "actor",
            &req.audience,
        )),
        other => refuse(
            ExchangeError::ActorToken(TokenReason::of_delegation(&other)),
            other.to_string(),
        ),
    })
}

/// Dry-runs `req` against the config's policies.
pub fn explain(cfg: &Config, req: &DryRun) -> Result<Explanation, ExplainError> {
    let set = PolicySet::compile(cfg.policies.clone())?;
    let subject = Subject {
        issuer: &req.issuer,
        subject: &req.subject,
        claims: req.claims.as_ref(),
    };
    let actor_subject = req.actor.as_ref().map(|a| Subject {
        issuer: &a.issuer,
        subject: &a.subject,
        claims: a.claims.as_ref(),
    });
    let policies = reports(&set, &subject, req);
    let actor_policies = actor_subject
        .as_ref()
        .map(|a| reports(&set, a, req))
        .unwrap_or_default();
    let cap = cfg.tokens.max_ttl;
    let verdict = match set.decide(&subject, &req.audience, &req.scopes) {
        Err(d) => refusal(d, &policies, &subject, "subject", &req.audience),
        Ok(p) => {
            let delegated = match (&req.actor, &actor_subject) {
                (Some(actor), Some(asubj)) => delegation(&set, req, actor, asubj, &actor_policies),
                _ => Ok(None),
            };
            match delegated {
                Err(v) => *v,
                Ok(pa) => {
                    let max_ttl = [p.max_ttl(), pa.and_then(CompiledPolicy::max_ttl)]
                        .into_iter()
                        .flatten()
                        .fold(cap, Duration::min);
                    Verdict::Granted {
                        policy: p.name().to_string(),
                        actor_policy: pa.map(|a| a.name().to_string()),
                        owner: p.owner().map(str::to_string),
                        max_ttl,
                        default_ttl: cfg.tokens.default_ttl.min(max_ttl),
                        conditions: conditions(p, pa, req),
                    }
                }
            }
        }
    };
    Ok(Explanation {
        policies,
        actor_policies,
        verdict,
    })
}

/// `"a", "b"`.
fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line about one policy.
fn describe(p: &PolicyReport, all: &[PolicyReport]) -> String {
    if let Some((_, why)) = &p.mismatch {
        return format!("no match: {why}");
    }
    let audience = if p.audience_allowed {
        "audience ok".to_string()
    } else {
        "audience NOT allowed".to_string()
    };
    let scopes = if p.refused_scopes.is_empty() {
        "scopes ok".to_string()
    } else {
        format!("scope(s) NOT allowed: {}", p.refused_scopes.join(" "))
    };
    let tail = match (&p.outcome, p.selected) {
        (VerdictOutcome::Granted, true) => " => grants (selected)".to_string(),
        (VerdictOutcome::Granted, false) => {
            let first = all
                .iter()
                .find(|q| q.selected)
                .map(|q| q.name.as_str())
                .unwrap_or_default();
            format!(" => would grant, shadowed by {first:?} (first in file order wins)")
        }
        _ => String::new(),
    };
    format!("match ok; {audience}; {scopes}{tail}")
}

/// The structured explanation (`--json`).
fn reports_json(reports: &[PolicyReport]) -> Vec<Value> {
    reports
        .iter()
        .map(|p| {
            json!({
                "index": p.index,
                "name": p.name,
                "outcome": match p.outcome {
                    VerdictOutcome::Granted => "granted",
                    VerdictOutcome::SubjectMismatch(_) => "subject_mismatch",
                    VerdictOutcome::AudienceNotAllowed => "audience_not_allowed",
                    VerdictOutcome::ScopesNotAllowed { .. } => "scopes_not_allowed",
                },
                "selected": p.selected,
                "match": p.mismatch.is_none(),
                "mismatch": p.mismatch.as_ref().map(|(c, m)| json!({"condition": c, "message": m})),
                "audience_allowed": p.audience_allowed,
                "refused_scopes": p.refused_scopes,
            })
        })
        .collect()
}

/// The structured explanation (`--json`).
pub fn to_json(req: &DryRun, e: &Explanation) -> Value {
    let policies = reports_json(&e.policies);
    let actor_policies = reports_json(&e.actor_policies);
    let actor = req
        .actor
        .as_ref()
        .map(|a| json!({"issuer": a.issuer, "subject": a.subject, "claims": a.claims}));
    let request = json!({
        "issuer": req.issuer,
        "subject": req.subject,
        "claims": req.claims,
        "audience": req.audience,
        "scopes": req.scopes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "actor": actor,
    });
    match &e.verdict {
        Verdict::Granted {
            policy,
            actor_policy,
            owner,
            max_ttl,
            default_ttl,
            conditions,
        } => json!({
            "request": request,
            "granted": true,
            "policy": policy,
            "actor_policy": actor_policy,
            "owner": owner,
            "max_ttl": max_ttl.as_secs(),
            "default_ttl": default_ttl.as_secs(),
            "conditions": conditions.iter().map(|c| json!({"kind": c.kind, "scopes": c.scopes, "message": c.message})).collect::<Vec<_>>(),
            "error": null,
            "reason": null,
            "message": null,
            "policies": policies,
            "actor_policies": actor_policies,
        }),
        Verdict::Refused {
            error,
            reason,
            message,
        } => json!({
            "request": request,
            "granted": false,
            "policy": null,
            "actor_policy": null,
            "error": error,
            "reason": reason,
            "message": message,
            "conditions": [],
            "policies": policies,
            "actor_policies": actor_policies,
        }),
    }
}

/// The human-readable explanation.
pub fn to_text(req: &DryRun, e: &Explanation) -> String {
    let mut out = format!(
        "dry run: issuer {}, subject {}, audience {}, scope \"{}\"\n",
        req.issuer, req.subject, req.audience, req.scopes
    );
    if e.policies.is_empty() {
        out.push_str("  (the config has no policy)\n");
    }
    for p in &e.policies {
        out.push_str(&format!(
            "  policies[{}] {:?}: {}\n",
            p.index,
            p.name,
            describe(p, &e.policies)
        ));
    }
    if let Some(a) = &req.actor {
        out.push_str(&format!(
            "actor: issuer {}, subject {}\n",
            a.issuer, a.subject
        ));
        for p in &e.actor_policies {
            out.push_str(&format!(
                "  policies[{}] {:?}: {}\n",
                p.index,
                p.name,
                describe(p, &e.actor_policies)
            ));
        }
    }
    match &e.verdict {
        Verdict::Granted {
            policy,
            actor_policy,
            owner,
            max_ttl,
            default_ttl,
            conditions,
        } => {
            out.push_str(&format!(
                "GRANTED by policy {policy:?}{} (owner {}, max_ttl {}, default lifetime {})\n",
                actor_policy
                    .as_ref()
                    .map(|a| format!(", actor policy {a:?}"))
                    .unwrap_or_default(),
                owner.as_deref().unwrap_or("none"),
                fmt_duration(*max_ttl),
                fmt_duration(*default_ttl)
            ));
            for c in conditions {
                out.push_str(&format!("  {}: {}\n", c.kind, c.message));
            }
        }
        Verdict::Refused {
            error,
            reason,
            message,
        } => {
            out.push_str(&format!("REFUSED: {error} ({reason}): {message}\n"));
        }
    }
    out.push_str("(offline: tokens, the kill switch, grants and approvals are not checked)");
    out
}

/// `tessera policy explain`: exit 0 when the request would be granted, 1
/// when refused (the reason also on stderr) or the config is invalid, 2 on
/// bad usage.
pub fn policy_explain(args: &ExplainArgs, as_json: bool) -> i32 {
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            errln!("error: {e}");
            return 1;
        }
    };
    let req = match dry_run(&cfg, args) {
        Ok(r) => r,
        Err(e) => {
            errln!("error: {e}");
            return 2;
        }
    };
    let e = match explain(&cfg, &req) {
        Ok(e) => e,
        Err(e) => {
            errln!("error: {e}");
            return 1;
        }
    };
    if as_json {
        outln!("{}", to_json(&req, &e));
    } else {
        outln!("{}", to_text(&req, &e));
    }
    match &e.verdict {
        Verdict::Granted { .. } => 0,
        Verdict::Refused {
            error,
            reason,
            message,
        } => {
            errln!("error: refused: {error} ({reason}): {message}");
            1
        }
    }
}

/// Checks that `name` is `mtls` or a configured issuer name.
fn known_issuer(cfg: &Config, flag: &'static str, name: &str) -> Result<(), ExplainError> {
    if name == MTLS_ISSUER || cfg.issuers.iter().any(|i| i.name == name) {
        return Ok(());
    }
    let names: Vec<&str> = std::iter::once(MTLS_ISSUER)
        .chain(cfg.issuers.iter().map(|i| i.name.as_str()))
        .collect();
    Err(ExplainError::UnknownIssuer {
        flag,
        name: name.to_string(),
        file: cfg.source.clone(),
        names: names.join(", "),
    })
}

/// Checks the command line against the config and builds the request.
fn dry_run(cfg: &Config, args: &ExplainArgs) -> Result<DryRun, ExplainError> {
    known_issuer(cfg, "--issuer", &args.issuer)?;
    if args.subject.is_empty() {
        return Err(ExplainError::Empty("--subject"));
    }
    if args.audience.is_empty() {
        return Err(ExplainError::Empty("--audience"));
    }
    let claims = if args.issuer == MTLS_ISSUER {
        if !args.claims.is_empty() {
            return Err(ExplainError::ClaimsForMtls);
        }
        None
    } else {
        Some(parse_claims(&args.claims)?)
    };
    let scopes = ScopeSet::parse(&args.scope).map_err(ExplainError::Scope)?;
    let actor = match (&args.actor_issuer, &args.actor) {
        (None, None) if args.actor_claims.is_empty() => None,
        (Some(issuer), Some(subject)) => {
            known_issuer(cfg, "--actor-issuer", issuer)?;
            if subject.is_empty() {
                return Err(ExplainError::Empty("--actor"));
            }
            let (claims, iss) = if issuer == MTLS_ISSUER {
                if !args.actor_claims.is_empty() {
                    return Err(ExplainError::ActorClaimsForMtls);
                }
                (None, None)
            } else {
                let iss = cfg
                    .issuers
                    .iter()
                    .find(|i| i.name == *issuer)
                    .map(|i| i.issuer.clone());
                (Some(parse_claims(&args.actor_claims)?), iss)
            };
            Some(ActorRun {
                issuer: issuer.clone(),
                subject: subject.clone(),
                claims,
                iss,
            })
        }
        _ => return Err(ExplainError::ActorFlags),
    };
    Ok(DryRun {
        issuer: args.issuer.clone(),
        subject: args.subject.clone(),
        claims,
        audience: args.audience.clone(),
        scopes,
        actor,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const CFG: &str = r#"
[[issuers]]
name = "k8s"
issuer = "https://k8s.example"
audiences = ["tessera"]

[[policies]]
name = "ci"
owner = "alice"
match = { issuer = "k8s", subject = "system:serviceaccount:ci:*", claims = { "kubernetes.io/namespace" = "ci" } }
audiences = ["https://deploy"]
scopes = ["deploy:read", "deploy:write", "deploy:prod"]
jit_scopes = ["deploy:write"]
approval_scopes = ["deploy:prod"]
require_authorization_details = true
max_ttl = "10m"

[[policies]]
name = "agents"
owner = "bob"
match = { issuer = "mtls", subject = "spiffe://x/agent/*" }
audiences = ["https://api"]
scopes = ["read"]
require_binding = true

[[policies]]
name = "delegate"
owner = "dan"
match = { issuer = "mtls", subject = "spiffe://x/delegate/*" }
audiences = ["https://deploy"]
scopes = ["deploy:read"]
may_act_for = ["k8s"]
max_ttl = "2m"

[[policies]]
name = "no-delegation"
owner = "erin"
match = { issuer = "mtls", subject = "spiffe://x/nodelegate/*" }
audiences = ["https://deploy"]
scopes = ["deploy:read"]
"#;

    fn cfg() -> Config {
        Config::from_toml_str("t.toml", CFG).unwrap()
    }

    fn run(issuer: &str, sub: &str, claims: &[&str], aud: &str, scope: &str) -> Explanation {
        let args = ExplainArgs {
            config: "t.toml".into(),
            issuer: issuer.into(),
            subject: sub.into(),
            claims: claims.iter().map(|s| s.to_string()).collect(),
            audience: aud.into(),
            scope: scope.into(),
            actor_issuer: None,
            actor: None,
            actor_claims: vec![],
        };
        let c = cfg();
        explain(&c, &dry_run(&c, &args).unwrap()).unwrap()
    }

    #[test]
    fn claims_parse_nested_paths_and_arrays() {
        let m = parse_claims(&[
            "kubernetes.io/namespace=ci".into(),
            "groups=a".into(),
            "groups=b".into(),
            "x=a=b".into(),
        ])
        .unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"kubernetes.io": {"namespace": "ci"}, "groups": ["a", "b"], "x": "a=b"})
        );
        assert!(parse_claims(&["nokey".into()]).is_err());
        assert!(parse_claims(&["/a=b".into()]).is_err());
        assert!(parse_claims(&["a=b".into(), "a/c=d".into()]).is_err());
    }

    #[test]
    fn granted_with_tiers() {
        let e = run(
            "k8s",
            "system:serviceaccount:ci:deployer",
            &["kubernetes.io/namespace=ci"],
            "https://deploy",
            "deploy:read deploy:write deploy:prod",
        );
        let Verdict::Granted {
            policy,
            max_ttl,
            conditions,
            ..
        } = &e.verdict
        else {
            panic!("{:?}", e.verdict)
        };
        assert_eq!(policy, "ci");
        assert_eq!(max_ttl.as_secs(), 600);
        let kinds: Vec<&str> = conditions.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, ["authorization_details", "approval", "jit_grant"]);
        assert_eq!(conditions[2].scopes, ["deploy:write"]);
        assert!(e.policies[0].selected);
        assert_eq!(e.policies[1].mismatch.as_ref().unwrap().0, "issuer");
    }

    #[test]
    fn refusals_name_the_error_and_reason() {
        // claim missing → no policy
        let e = run(
            "k8s",
            "system:serviceaccount:ci:deployer",
            &[],
            "https://deploy",
            "deploy:read",
        );
        assert!(matches!(
            &e.verdict,
            Verdict::Refused {
                error: "invalid_request",
                reason: "no_matching_policy",
                ..
            }
        ));
        let (cond, msg) = e.policies[0].mismatch.clone().unwrap();
        assert_eq!(cond, "claim");
        assert!(
            msg.contains("kubernetes.io/namespace") && msg.contains("missing"),
            "{msg}"
        );
        // claim with the wrong value
        let e = run(
            "k8s",
            "system:serviceaccount:ci:d",
            &["kubernetes.io/namespace=prod"],
            "https://deploy",
            "deploy:read",
        );
        assert!(e.policies[0]
            .mismatch
            .as_ref()
            .unwrap()
            .1
            .contains("\"prod\""));
        // subject pattern
        let e = run("mtls", "spiffe://x/service/a", &[], "https://api", "read");
        assert!(e.policies[1]
            .mismatch
            .as_ref()
            .unwrap()
            .1
            .contains("spiffe://x/agent/*"));
        // audience
        let e = run("mtls", "spiffe://x/agent/a", &[], "https://other", "read");
        assert!(
            matches!(&e.verdict, Verdict::Refused { error: "invalid_target", message, .. } if message.contains("\"agents\""))
        );
        // scope
        let e = run(
            "mtls",
            "spiffe://x/agent/a",
            &[],
            "https://api",
            "read write",
        );
        assert!(
            matches!(&e.verdict, Verdict::Refused { error: "invalid_scope", message, .. } if message.ends_with("the closest (\"agents\") refuses: write"))
        );
        assert_eq!(e.policies[1].refused_scopes, ["write"]);
    }

    #[test]
    fn binding_is_met_over_mtls() {
        let e = run("mtls", "spiffe://x/agent/a", &[], "https://api", "read");
        let Verdict::Granted { conditions, .. } = &e.verdict else {
            panic!()
        };
        assert_eq!(conditions[0].kind, "binding");
        assert!(conditions[0].message.contains("met"));
    }

    #[test]
    fn bad_usage() {
        let c = cfg();
        let mut args = ExplainArgs {
            config: "t.toml".into(),
            issuer: "nope".into(),
            subject: "s".into(),
            claims: vec![],
            audience: "a".into(),
            scope: "read".into(),
            actor_issuer: None,
            actor: None,
            actor_claims: vec![],
        };
        assert!(dry_run(&c, &args).unwrap_err().to_string().contains("k8s"));
        args.issuer = "k8s".into();
        args.actor = Some("a".into());
        assert!(dry_run(&c, &args)
            .unwrap_err()
            .to_string()
            .contains("go together"));
        args.actor_issuer = Some("mtls".into());
        args.actor_claims = vec!["a=b".into()];
        assert!(dry_run(&c, &args).is_err());
        args.actor_claims = vec![];
        args.actor_issuer = Some("nope".into());
        assert!(dry_run(&c, &args)
            .unwrap_err()
            .to_string()
            .contains("--actor-issuer"));
        args.actor_issuer = None;
        args.actor = None;
        args.issuer = "mtls".into();
        args.claims = vec!["a=b".into()];
        assert!(dry_run(&c, &args).is_err());
        args.claims = vec![];
        args.scope = "bad\"scope".into();
        assert!(dry_run(&c, &args).is_err());
    }

    fn delegated(claims: &[&str], actor: &str) -> (DryRun, Explanation) {
        let args = ExplainArgs {
            config: "t.toml".into(),
            issuer: "k8s".into(),
            subject: "system:serviceaccount:ci:deployer".into(),
            claims: claims.iter().map(|s| s.to_string()).collect(),
            audience: "https://deploy".into(),
            scope: "deploy:read".into(),
            actor_issuer: Some("mtls".into()),
            actor: Some(actor.into()),
            actor_claims: vec![],
        };
        let c = cfg();
        let req = dry_run(&c, &args).unwrap();
        let e = explain(&c, &req).unwrap();
        (req, e)
    }

    fn refused_reason((_, e): &(DryRun, Explanation)) -> &'static str {
        match &e.verdict {
            Verdict::Refused { reason, .. } => reason,
            Verdict::Granted { .. } => "granted",
        }
    }

    #[test]
    fn delegation_follows_the_broker() {
        let ns = "kubernetes.io/namespace=ci";
        let (req, e) = delegated(&[ns], "spiffe://x/delegate/bot");
        let Verdict::Granted {
            policy,
            actor_policy,
            max_ttl,
            conditions,
            ..
        } = &e.verdict
        else {
            panic!("{:?}", e.verdict)
        };
        assert_eq!(
            (policy.as_str(), actor_policy.as_deref()),
            ("ci", Some("delegate"))
        );
        // the actor's policy caps the lifetime too
        assert_eq!(max_ttl.as_secs(), 120);
        assert!(conditions.is_empty());
        assert!(e.actor_policies[2].selected);
        let text = to_text(&req, &e);
        assert!(text.contains("actor policy \"delegate\""), "{text}");

        // no actor policy / audience / may_act_for / may_act / actor is subject
        assert_eq!(
            refused_reason(&delegated(&[ns], "spiffe://x/other/a")),
            "actor_no_policy"
        );
        assert_eq!(
            refused_reason(&delegated(&[ns], "spiffe://x/agent/a")),
            "target_not_allowed"
        );
        assert_eq!(
            refused_reason(&delegated(&[ns], "spiffe://x/nodelegate/a")),
            "may_act_for_missing"
        );
        assert_eq!(
            refused_reason(&delegated(
                &[ns, "may_act/sub=spiffe://x/delegate/other"],
                "spiffe://x/delegate/bot"
            )),
            "actor_not_in_may_act"
        );
        assert_eq!(
            refused_reason(&delegated(
                &[ns, "may_act/sub=spiffe://x/delegate/bot"],
                "spiffe://x/delegate/bot"
            )),
            "granted"
        );
        assert_eq!(
            refused_reason(&delegated(&[ns], "system:serviceaccount:ci:deployer")),
            "actor_is_subject"
        );
    }
}
