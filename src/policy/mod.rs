// One file: the policy set and its matching; delegation, claims and globs
// already live apart (`policy::{delegation, claims, glob}`).
//! Policy engine: which subject may obtain which audience and scopes.
//!
//! Policies are compiled once from [`PolicySpec`]s ([`PolicySet::compile`])
//! and evaluated per request ([`PolicySet::decide`]). Evaluation is deny by
//! default: a request is granted only when a **single** policy matches the
//! subject, allows the audience and allows every requested scope. Grants are
//! never combined across policies; the first such policy in file order wins.
//!
//! One file for the compiled policy set and its decisions (match, audience,
//! scopes, grants); patterns (`glob`), scopes (`scope`), claim conditions
//! (`claims`) and delegation (`delegation`) are their own modules.

pub(crate) mod claims;
pub(crate) mod delegation;
pub(crate) mod glob;
pub mod scope;

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

pub use crate::policy::claims::{claim_path_lookup, ClaimCondition, ClaimPathError};
use crate::policy::glob::Pattern;
use crate::policy::scope::{Scope, ScopeSet};

/// Issuer name used for subjects authenticated by an mTLS client certificate.
pub const MTLS_ISSUER: &str = "mtls";

/// Default for [`PolicySpec::max_depth`].
pub const DEFAULT_MAX_DEPTH: u32 = 1;

/// Smallest allowed [`PolicySpec::max_depth`].
pub const MIN_MAX_DEPTH: u32 = 1;

/// Largest allowed [`PolicySpec::max_depth`].
pub const MAX_MAX_DEPTH: u32 = 8;

/// Maximum number of policies in one set.
pub const MAX_POLICIES: usize = 1024;

/// Maximum number of entries in any list field of one policy.
pub const MAX_LIST_ENTRIES: usize = 256;

/// Maximum length of a policy name, owner or issuer name in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// One policy as read from the configuration (not yet validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// Unique, non-empty policy name.
    pub name: String,
    /// Team or person responsible for the policy.
    pub owner: Option<String>,
    /// Issuer name from the configuration, or [`MTLS_ISSUER`].
    pub match_issuer: String,
    /// Subject pattern; `None` accepts any non-empty subject.
    pub match_subject: Option<String>,
    /// `(claim path, pattern)` pairs that must all match.
    pub match_claims: Vec<(String, String)>,
    /// Audience patterns.
    pub audiences: Vec<String>,
    /// Scope patterns.
    pub scopes: Vec<String>,
    /// Upper bound on the lifetime of issued tokens.
    pub max_ttl: Option<Duration>,
    /// Scopes (entries of `scopes`) that are only granted just in time.
    pub jit_scopes: Vec<String>,
    /// Scopes (entries of `scopes`) that need an approval.
    pub approval_scopes: Vec<String>,
    /// Issuer names whose subjects this policy's subject may act for.
    pub may_act_for: Vec<String>,
    /// Maximum delegation depth (1..=8).
    pub max_depth: u32,
    /// Whether requests must carry `authorization_details`.
    pub require_authorization_details: bool,
    /// Whether issued tokens must be sender-constrained.
    pub require_binding: bool,
}

impl Default for PolicySpec {
    fn default() -> Self {
        PolicySpec {
            name: String::new(),
            owner: None,
            match_issuer: String::new(),
            match_subject: None,
            match_claims: Vec::new(),
            audiences: Vec::new(),
            scopes: Vec::new(),
            max_ttl: None,
            jit_scopes: Vec::new(),
            approval_scopes: Vec::new(),
            may_act_for: Vec::new(),
            max_depth: DEFAULT_MAX_DEPTH,
            require_authorization_details: false,
            require_binding: false,
        }
    }
}

/// A configuration error in one policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy #{index} {policy:?}: {field}: {reason}")]
pub struct PolicyError {
    /// Zero-based position of the policy in the configuration.
    pub index: usize,
    /// Policy name as written (may be empty when that is the error).
    pub policy: String,
    /// Offending field, e.g. `match.subject` or `scopes[2]`.
    pub field: String,
    /// Human-readable reason.
    pub reason: String,
}

/// The authenticated caller a decision is made for.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Issuer name, or [`MTLS_ISSUER`].
    pub issuer: &'a str,
    /// Subject identifier (`sub` claim, SPIFFE ID or DNS name).
    pub subject: &'a str,
    /// Token claims; `None` for mTLS (claim conditions then never match).
    pub claims: Option<&'a Map<String, Value>>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No policy matches the subject.
    #[error("no policy matches the subject")]
    NoMatchingPolicy,
    /// Policies match the subject but none allows the audience.
    #[error("audience not allowed")]
    AudienceNotAllowed,
    /// Policies allow the audience but none allows every requested scope.
    #[error("scope not allowed: {refused}")]
    ScopeNotAllowed {
        /// Requested scopes refused by the closest policy (the one refusing
        /// the fewest; first in file order on ties). Empty when the request
        /// asked for no scope at all. For logs only.
        refused: ScopeSet,
    },
}

impl Denial {
    /// Stable machine-readable code for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::NoMatchingPolicy => "no_matching_policy",
            Denial::AudienceNotAllowed => "audience_not_allowed",
            Denial::ScopeNotAllowed { .. } => "scope_not_allowed",
        }
    }
}

/// Why a policy does not match a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectMismatch {
    /// The issuer differs from `match.issuer`.
    Issuer,
    /// The subject is empty.
    EmptySubject,
    /// The subject does not match `match.subject`.
    Subject,
    /// The policy has claim conditions but the subject has no claims (mTLS).
    ClaimsUnavailable,
    /// The claim at this path is missing or does not match.
    Claim {
        /// The claim path of the failed condition.
        path: String,
    },
}

impl fmt::Display for SubjectMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectMismatch::Issuer => f.write_str("issuer does not match match.issuer"),
            SubjectMismatch::EmptySubject => f.write_str("subject is empty"),
            SubjectMismatch::Subject => f.write_str("subject does not match match.subject"),
            SubjectMismatch::ClaimsUnavailable => {
                f.write_str("policy has claim conditions but the subject has no claims")
            }
            SubjectMismatch::Claim { path } => {
                write!(f, "claim {path:?} is missing or does not match")
            }
        }
    }
}

/// Outcome of one policy in [`PolicySet::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerdictOutcome {
    /// This policy alone would grant the request.
    Granted,
    /// The policy does not match the subject.
    SubjectMismatch(SubjectMismatch),
    /// The policy matches the subject but not the audience.
    AudienceNotAllowed,
    /// The policy matches subject and audience but refuses these scopes.
    ScopesNotAllowed {
        /// The refused scopes (empty when none were requested).
        refused: ScopeSet,
    },
}

/// One line of [`PolicySet::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVerdict {
    /// Policy name.
    pub policy: String,
    /// What this policy says about the request.
    pub outcome: VerdictOutcome,
    /// Whether this is the policy [`PolicySet::decide`] would pick.
    pub selected: bool,
}

impl fmt::Display for PolicyVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.policy)?;
        match &self.outcome {
            VerdictOutcome::Granted if self.selected => f.write_str("grants (selected)"),
            VerdictOutcome::Granted => f.write_str("grants (shadowed by an earlier policy)"),
            VerdictOutcome::SubjectMismatch(why) => write!(f, "no match: {why}"),
            VerdictOutcome::AudienceNotAllowed => f.write_str("audience not allowed"),
            VerdictOutcome::ScopesNotAllowed { refused } if refused.is_empty() => {
                f.write_str("no scope requested")
            }
            VerdictOutcome::ScopesNotAllowed { refused } => {
                write!(f, "scopes not allowed: {refused}")
            }
        }
    }
}

/// Kind of [`PolicyWarning`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LintKind {
    /// `**` in the subject pattern.
    SubjectDoubleStar,
    /// An audience pattern that is exactly `*` or `**`.
    WildcardAudience,
    /// A scope pattern that is exactly `*` or `**`.
    WildcardScope,
    /// The policy has no owner.
    NoOwner,
    /// The policy trusts a shared issuer without any claim condition.
    SharedIssuerWithoutClaims,
    /// Neither a subject pattern nor a claim condition: every subject of the
    /// issuer matches (for `mtls`: every certificate the client CA signed).
    AnySubject,
}

impl LintKind {
    /// Stable machine-readable name (`--json` output, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            LintKind::SubjectDoubleStar => "subject_double_star",
            LintKind::WildcardAudience => "wildcard_audience",
            LintKind::WildcardScope => "wildcard_scope",
            LintKind::NoOwner => "no_owner",
            LintKind::SharedIssuerWithoutClaims => "shared_issuer_without_claims",
            LintKind::AnySubject => "any_subject",
        }
    }
}

/// A risky but valid policy construct, reported by [`PolicySet::lint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWarning {
    /// Policy name.
    pub policy: String,
    /// Field concerned.
    pub field: String,
    /// What is risky.
    pub kind: LintKind,
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            LintKind::SubjectDoubleStar => {
                "'**' in a subject pattern crosses ':' and '/' boundaries"
            }
            LintKind::WildcardAudience => "audience pattern allows any audience",
            LintKind::WildcardScope => "scope pattern allows any scope",
            LintKind::NoOwner => "policy has no owner",
            LintKind::SharedIssuerWithoutClaims => {
                "issuer is shared by many tenants but the policy has no claim condition"
            }
            LintKind::AnySubject => {
                "no subject pattern and no claim condition: every subject of the issuer matches"
            }
        };
        write!(f, "policy {:?}: {}: {}", self.policy, self.field, what)
    }
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    index: usize,
    name: String,
    owner: Option<String>,
    issuer: String,
    subject: Option<Pattern>,
    claims: Vec<ClaimCondition>,
    audiences: Vec<Pattern>,
    scopes: Vec<Pattern>,
    max_ttl: Option<Duration>,
    jit_scopes: Vec<Pattern>,
    approval_scopes: Vec<Pattern>,
    may_act_for: Vec<String>,
    max_depth: u32,
    require_authorization_details: bool,
    require_binding: bool,
}

impl CompiledPolicy {
    /// Zero-based position in the configuration.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Policy name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Owner, if configured.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// Issuer name this policy applies to.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Subject pattern, if any.
    pub fn subject_pattern(&self) -> Option<&Pattern> {
        self.subject.as_ref()
    }

    /// Claim conditions.
    pub fn claim_conditions(&self) -> &[ClaimCondition] {
        &self.claims
    }

    /// Maximum token lifetime, if configured.
    pub fn max_ttl(&self) -> Option<Duration> {
        self.max_ttl
    }

    /// Whether `scope` is a just-in-time scope of this policy.
    pub fn is_jit_scope(&self, scope: &Scope) -> bool {
        self.jit_scopes.iter().any(|p| p.matches(scope.as_str()))
    }

    /// Whether `scope` needs an approval under this policy.
    pub fn is_approval_scope(&self, scope: &Scope) -> bool {
        self.approval_scopes
            .iter()
            .any(|p| p.matches(scope.as_str()))
    }

    /// Issuer names whose subjects this policy's subject may act for.
    pub fn may_act_for(&self) -> &[String] {
        &self.may_act_for
    }

    /// Maximum delegation depth.
    pub fn max_depth(&self) -> u32 {
        self.max_depth
    }

    /// Whether requests must carry `authorization_details`.
    pub fn require_authorization_details(&self) -> bool {
        self.require_authorization_details
    }

    /// Whether issued tokens must be sender-constrained.
    pub fn require_binding(&self) -> bool {
        self.require_binding
    }

    /// Whether an audience pattern matches `audience`.
    pub fn allows_audience(&self, audience: &str) -> bool {
        self.audiences.iter().any(|p| p.matches(audience))
    }

    /// Whether a scope pattern matches `scope`.
    pub fn allows_scope(&self, scope: &Scope) -> bool {
        self.scopes.iter().any(|p| p.matches(scope.as_str()))
    }

    /// The requested scopes this policy does not allow.
    pub fn refused_scopes(&self, scopes: &ScopeSet) -> ScopeSet {
        scopes
            .iter()
            .filter(|s| !self.allows_scope(s))
            .cloned()
            .collect()
    }

    /// Whether this policy matches `subject` (issuer, subject and claims).
    pub fn matches_subject(&self, subject: &Subject<'_>) -> bool {
        self.check_subject(subject).is_ok()
    }

    /// Like [`CompiledPolicy::matches_subject`], saying why not.
    pub fn check_subject(&self, subject: &Subject<'_>) -> Result<(), SubjectMismatch> {
        if subject.issuer != self.issuer {
            return Err(SubjectMismatch::Issuer);
        }
        if subject.subject.is_empty() {
            return Err(SubjectMismatch::EmptySubject);
        }
        if let Some(pattern) = &self.subject {
            if !pattern.matches(subject.subject) {
                return Err(SubjectMismatch::Subject);
            }
        }
        if self.claims.is_empty() {
            return Ok(());
        }
        let Some(claims) = subject.claims else {
            return Err(SubjectMismatch::ClaimsUnavailable);
        };
        match self.claims.iter().find(|c| !c.matches(claims)) {
            Some(failed) => Err(SubjectMismatch::Claim {
                path: failed.path().to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Full verdict of this policy alone for a request.
    fn verdict(&self, subject: &Subject<'_>, audience: &str, scopes: &ScopeSet) -> VerdictOutcome {
        if let Err(why) = self.check_subject(subject) {
            return VerdictOutcome::SubjectMismatch(why);
        }
        if !self.allows_audience(audience) {
            return VerdictOutcome::AudienceNotAllowed;
        }
        let refused = self.refused_scopes(scopes);
        if scopes.is_empty() || !refused.is_empty() {
            return VerdictOutcome::ScopesNotAllowed { refused };
        }
        VerdictOutcome::Granted
    }
}

/// All policies, in configuration order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySet {
    policies: Vec<CompiledPolicy>,
}

/// Builds [`PolicyError`]s for one policy.
struct ErrCtx<'a> {
    index: usize,
    name: &'a str,
}

impl ErrCtx<'_> {
    fn err(&self, field: impl Into<String>, reason: impl fmt::Display) -> PolicyError {
        PolicyError {
            index: self.index,
            policy: self.name.to_owned(),
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

/// Validates a name-like field: non-empty, bounded, no control characters.
fn check_name(ctx: &ErrCtx<'_>, field: &str, value: &str) -> Result<(), PolicyError> {
    if value.is_empty() {
        return Err(ctx.err(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(ctx.err(field, format!("longer than {MAX_NAME_LEN} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(ctx.err(field, "contains a control character"));
    }
    Ok(())
}

/// Compiles a list of patterns, naming the failing entry `field[i]`.
fn compile_list(
    ctx: &ErrCtx<'_>,
    field: &str,
    items: &[String],
    required: bool,
) -> Result<Vec<Pattern>, PolicyError> {
    if required && items.is_empty() {
        return Err(ctx.err(field, "at least one entry is required"));
    }
    if items.len() > MAX_LIST_ENTRIES {
        return Err(ctx.err(field, format!("more than {MAX_LIST_ENTRIES} entries")));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, s)| Pattern::parse(s).map_err(|e| ctx.err(format!("{field}[{i}]"), e)))
        .collect()
}

/// Compiles one spec.
fn compile_one(index: usize, spec: PolicySpec) -> Result<CompiledPolicy, PolicyError> {
    let ctx = ErrCtx {
        index,
        name: &spec.name,
    };
    check_name(&ctx, "name", &spec.name)?;
    if let Some(owner) = &spec.owner {
        check_name(&ctx, "owner", owner)?;
    }
    check_name(&ctx, "match.issuer", &spec.match_issuer)?;
    let subject = spec
        .match_subject
        .as_deref()
        .map(Pattern::parse)
        .transpose()
        .map_err(|e| ctx.err("match.subject", e))?;
    if spec.match_claims.len() > MAX_LIST_ENTRIES {
        return Err(ctx.err(
            "match.claims",
            format!("more than {MAX_LIST_ENTRIES} entries"),
        ));
    }
    let mut claims = Vec::with_capacity(spec.match_claims.len());
    let mut seen_paths = HashSet::new();
    for (path, pattern) in &spec.match_claims {
        let field = format!("match.claims[{path:?}]");
        claims::validate_claim_path(path).map_err(|e| ctx.err(&field, e))?;
        if !seen_paths.insert(path.as_str()) {
            return Err(ctx.err(&field, "claim path listed twice"));
        }
        let pattern = Pattern::parse(pattern).map_err(|e| ctx.err(&field, e))?;
        claims.push(ClaimCondition::new(path.clone(), pattern));
    }
    let audiences = compile_list(&ctx, "audiences", &spec.audiences, true)?;
    let scopes = compile_list(&ctx, "scopes", &spec.scopes, true)?;
    let jit_scopes = compile_list(&ctx, "jit_scopes", &spec.jit_scopes, false)?;
    let approval_scopes = compile_list(&ctx, "approval_scopes", &spec.approval_scopes, false)?;
    for (field, list) in [
        ("jit_scopes", &spec.jit_scopes),
        ("approval_scopes", &spec.approval_scopes),
    ] {
        for (i, entry) in list.iter().enumerate() {
            if !spec.scopes.iter().any(|s| s == entry) {
                return Err(ctx.err(
                    format!("{field}[{i}]"),
                    format!("{entry:?} is not listed in scopes"),
                ));
            }
        }
    }
    if spec.may_act_for.len() > MAX_LIST_ENTRIES {
        return Err(ctx.err(
            "may_act_for",
            format!("more than {MAX_LIST_ENTRIES} entries"),
        ));
    }
    for (i, issuer) in spec.may_act_for.iter().enumerate() {
        check_name(&ctx, &format!("may_act_for[{i}]"), issuer)?;
    }
    if !(MIN_MAX_DEPTH..=MAX_MAX_DEPTH).contains(&spec.max_depth) {
        return Err(ctx.err(
            "max_depth",
            format!("must be between {MIN_MAX_DEPTH} and {MAX_MAX_DEPTH}"),
        ));
    }
    if spec.max_ttl == Some(Duration::ZERO) {
        return Err(ctx.err("max_ttl", "must be greater than zero"));
    }
    Ok(CompiledPolicy {
        index,
        name: spec.name,
        owner: spec.owner,
        issuer: spec.match_issuer,
        subject,
        claims,
        audiences,
        scopes,
        max_ttl: spec.max_ttl,
        jit_scopes,
        approval_scopes,
        may_act_for: spec.may_act_for,
        max_depth: spec.max_depth,
        require_authorization_details: spec.require_authorization_details,
        require_binding: spec.require_binding,
    })
}

impl PolicySet {
    /// Validates and compiles policies, keeping their order.
    pub fn compile(specs: Vec<PolicySpec>) -> Result<PolicySet, PolicyError> {
        if specs.len() > MAX_POLICIES {
            return Err(PolicyError {
                index: MAX_POLICIES,
                policy: String::new(),
                field: "policies".to_owned(),
                reason: format!("more than {MAX_POLICIES} policies"),
            });
        }
        let mut names = HashSet::new();
        let mut policies = Vec::with_capacity(specs.len());
        for (index, spec) in specs.into_iter().enumerate() {
            let policy = compile_one(index, spec)?;
            if !names.insert(policy.name.clone()) {
                return Err(PolicyError {
                    index,
                    policy: policy.name,
                    field: "name".to_owned(),
                    reason: "duplicate policy name".to_owned(),
                });
            }
            policies.push(policy);
        }
        Ok(PolicySet { policies })
    }

    /// All policies in configuration order.
    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    /// Looks a policy up by name.
    pub fn get(&self, name: &str) -> Option<&CompiledPolicy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// Names of the policies that could match `identity` as a subject or an
    /// actor, whatever its issuer: those whose `match.subject` pattern
    /// matches it, and those with no subject pattern (claims only). Empty:
    /// no token could ever be issued to or through it (an operator's typo).
    pub fn could_match_identity(&self, identity: &str) -> Vec<&str> {
        self.policies
            .iter()
            .filter(|p| p.subject.as_ref().is_none_or(|pat| pat.matches(identity)))
            .map(|p| p.name.as_str())
            .collect()
    }

    /// Whether a JIT grant of `scopes` for `audience` to `identity` could
    /// ever be used: one policy that could match the identity must allow
    /// the audience and have every scope among its allowed `jit_scopes`
    /// (a grant unlocks nothing else: other scopes need no grant, and an
    /// approval scope waits for `tessera approve`). `Ok(policy name)`, or
    /// why not.
    pub fn grant_use(
        &self,
        identity: &str,
        audience: &str,
        scopes: &ScopeSet,
    ) -> Result<&str, GrantUnusable> {
        let names = self.could_match_identity(identity);
        if names.is_empty() {
            return Err(GrantUnusable::NoPolicyForSubject(identity.to_string()));
        }
        let candidates: Vec<&CompiledPolicy> = self
            .policies
            .iter()
            .filter(|p| names.contains(&p.name.as_str()) && p.allows_audience(audience))
            .collect();
        if candidates.is_empty() {
            return Err(GrantUnusable::NoPolicyForAudience {
                policies: names.join(", "),
                audience: audience.to_string(),
            });
        }
        let usable = |p: &CompiledPolicy, s: &Scope| p.allows_scope(s) && p.is_jit_scope(s);
        if let Some(p) = candidates
            .iter()
            .find(|p| scopes.iter().all(|s| usable(p, s)))
        {
            return Ok(p.name.as_str());
        }
        for s in scopes.iter() {
            if candidates.iter().any(|p| usable(p, s)) {
                continue;
            }
            let why = match candidates.iter().find(|p| p.is_approval_scope(s)) {
                Some(p) => NotJitScope::ApprovalScope(p.name.clone()),
                None if candidates.iter().any(|p| p.allows_scope(s)) => NotJitScope::NeedsNoGrant,
                None => NotJitScope::NotAllowed,
            };
            return Err(GrantUnusable::NotJitScope {
                scope: s.as_str().to_string(),
                why,
            });
        }
        Err(GrantUnusable::MixedPolicies)
    }

    /// Policies matching `subject`, in configuration order.
    pub fn matching<'a>(&'a self, subject: &Subject<'_>) -> Vec<&'a CompiledPolicy> {
        self.policies
            .iter()
            .filter(|p| p.matches_subject(subject))
            .collect()
    }

    /// Decides a request: the first policy (in configuration order) that
    /// matches the subject, allows the audience and allows every requested
    /// scope. An empty scope set is refused.
    pub fn decide(
        &self,
        subject: &Subject<'_>,
        audience: &str,
        scopes: &ScopeSet,
    ) -> Result<&CompiledPolicy, Denial> {
        let mut any_subject = false;
        let mut closest: Option<ScopeSet> = None;
        for policy in &self.policies {
            if !policy.matches_subject(subject) {
                continue;
            }
            any_subject = true;
            if !policy.allows_audience(audience) {
                continue;
            }
            let refused = policy.refused_scopes(scopes);
            if refused.is_empty() && !scopes.is_empty() {
                tracing::debug!(policy = %policy.name, issuer = subject.issuer, "policy grants request");
                return Ok(policy);
            }
            if closest.as_ref().is_none_or(|c| refused.len() < c.len()) {
                closest = Some(refused);
            }
        }
        let denial = match closest {
            Some(refused) => Denial::ScopeNotAllowed { refused },
            None if any_subject => Denial::AudienceNotAllowed,
            None => Denial::NoMatchingPolicy,
        };
        tracing::debug!(
            reason = denial.reason(),
            issuer = subject.issuer,
            "request denied"
        );
        Err(denial)
    }

    /// Per-policy verdicts for a request (for `tessera policy explain`).
    pub fn explain(
        &self,
        subject: &Subject<'_>,
        audience: &str,
        scopes: &ScopeSet,
    ) -> Vec<PolicyVerdict> {
        let mut selected_done = false;
        self.policies
            .iter()
            .map(|p| {
                let outcome = p.verdict(subject, audience, scopes);
                let selected = outcome == VerdictOutcome::Granted && !selected_done;
                selected_done |= selected;
                PolicyVerdict {
                    policy: p.name.clone(),
                    outcome,
                    selected,
                }
            })
            .collect()
    }

    /// Risky constructs worth a warning. `shared_issuers` names issuers whose
    /// tokens are minted for many unrelated tenants (e.g. GitHub Actions).
    pub fn lint(&self, shared_issuers: &[&str]) -> Vec<PolicyWarning> {
        let mut out = Vec::new();
        for p in &self.policies {
            let mut warn = |field: String, kind| {
                out.push(PolicyWarning {
                    policy: p.name.clone(),
                    field,
                    kind,
                })
            };
            if p.owner.is_none() {
                warn("owner".to_owned(), LintKind::NoOwner);
            }
            if p.subject.as_ref().is_some_and(Pattern::has_double_star) {
                warn("match.subject".to_owned(), LintKind::SubjectDoubleStar);
            }
            if p.subject.is_none() && p.claims.is_empty() {
                warn("match.subject".to_owned(), LintKind::AnySubject);
            }
            if shared_issuers.contains(&p.issuer.as_str()) && p.claims.is_empty() {
                warn(
                    "match.claims".to_owned(),
                    LintKind::SharedIssuerWithoutClaims,
                );
            }
            for (i, a) in p.audiences.iter().enumerate() {
                if a.is_match_all() {
                    warn(format!("audiences[{i}]"), LintKind::WildcardAudience);
                }
            }
            for (i, s) in p.scopes.iter().enumerate() {
                if s.is_match_all() {
                    warn(format!("scopes[{i}]"), LintKind::WildcardScope);
                }
            }
        }
        out
    }
}

/// Why no policy could ever use a JIT grant ([`PolicySet::grant_use`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantUnusable {
    /// No policy could match the grant's subject.
    #[error("no policy matches the subject `{0}`")]
    NoPolicyForSubject(String),
    /// The policies that could match the subject (`policies`, joined)
    /// allow another audience.
    #[error("no policy for this subject ({policies}) allows the audience `{audience}`")]
    NoPolicyForAudience {
        /// The names of the policies that could match the subject.
        policies: String,
        /// The grant's audience.
        audience: String,
    },
    /// A scope no candidate policy lets a grant unlock.
    #[error(
        "`{scope}` is not among the jit_scopes of any policy for this subject and audience: {why}"
    )]
    NotJitScope {
        /// The scope.
        scope: String,
        /// What the policies say of it instead.
        why: NotJitScope,
    },
    /// Each scope is some policy's jit scope, but no one policy has them all.
    #[error("no single policy has every scope among its jit_scopes (grants are never mixed across policies)")]
    MixedPolicies,
}

/// What the candidate policies say of a scope a grant could not unlock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotJitScope {
    /// An approval scope of this policy.
    #[error(
        "it is an approval scope of policy `{0}` (approvals are decided with tessera approve)"
    )]
    ApprovalScope(String),
    /// Allowed without any grant.
    #[error("it is allowed without a grant")]
    NeedsNoGrant,
    /// No candidate policy allows it at all.
    #[error("no policy for this subject and audience allows it")]
    NotAllowed,
}

#[cfg(test)]
mod tests;
