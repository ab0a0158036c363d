//! Human approval support for the pipeline: the hash that binds an approval
//! to exactly one request, the best-effort webhook that tells humans a
//! new approval is waiting, and the one decision function ([`decide`]) that
//! both the admin API (an operator certificate) and the web pages (a
//! signed-in human) call, with the one rule of who may decide
//! ([`may_decide`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::audit::{AuditError, AuditRecord, Auditor, Event};
use crate::clock::Clock;
use crate::identity::login::{ApprovalLogin, Human};
use crate::policy::{PolicySet, PolicySpec};
use crate::store::{Approval, ApprovalState, DecideOutcome, StoreError, Stores};

/// Version tag of the request hash input (changing the input changes it).
const HASH_VERSION: &str = "tessera-approval-v1";
/// How long one webhook delivery may take.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(3);
/// Most webhook deliveries in flight; past it new ones are dropped (logged),
/// so a slow receiver can never pile up tasks.
pub const MAX_WEBHOOKS_IN_FLIGHT: usize = 32;

/// What an approval is bound to. Two requests get the same hash exactly when
/// they name the same subject, actor, scopes (as a set), audience, task and
/// `authorization_details` (compared as JSON values).
#[derive(Debug, Clone)]
pub struct BoundRequest<'a> {
    /// The subject's issuer name (`mtls` for a certificate).
    pub subject_issuer: &'a str,
    /// The subject.
    pub subject: &'a str,
    /// The actor's issuer name and subject, when delegated.
    pub actor: Option<(&'a str, &'a str)>,
    /// Scopes, sorted.
    pub scopes: Vec<&'a str>,
    /// The audience.
    pub audience: &'a str,
    /// The task.
    pub task: Option<&'a str>,
    /// RFC 9396 details.
    pub details: Option<&'a Value>,
}

impl BoundRequest<'_> {
    /// Hex SHA-256 of the canonical JSON of the request's parts.
    pub fn hash(&self) -> String {
        let mut scopes = self.scopes.clone();
        scopes.sort_unstable();
        scopes.dedup();
        let v = json!([
            HASH_VERSION,
            self.subject_issuer,
            self.subject,
            self.actor.map(|(i, s)| json!([i, s])),
            scopes,
            self.audience,
            self.task,
            self.details,
        ]);
        let mut text = String::new();
        canonical(&v, &mut text);
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// JSON with object members sorted by name at every depth (whatever the
/// map type serde_json was built with), so equal values hash equally.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(child) = m.get(k) {
                    canonical(child, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, child) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(child, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The JSON summary a webhook receives: what is asked and by whom, never a
/// token or credential; with `pages` (the broker's public URL, when the
/// approval pages are on) the `approval_url` = `{pages}/approvals/{id}` a
/// human opens to decide.
pub fn summary_with_url(a: &Approval, pages: Option<&str>) -> Value {
    let mut v = summary_fields(a);
    if let (Some(base), Some(o)) = (pages, v.as_object_mut()) {
        o.insert(
            "approval_url".into(),
            Value::String(format!("{base}/approvals/{}", a.id)),
        );
    }
    v
}

fn summary_fields(a: &Approval) -> Value {
    json!({
        "event": "approval.pending",
        "approval_id": a.id,
        "requester": a.requester,
        "subject": a.subject,
        "actors": a.actors,
        "owner": a.owner,
        "policy": a.policy,
        "scopes": a.scopes,
        "audience": a.audience,
        "task": a.task,
        "authorization_details": a.authorization_details,
        "created_at": a.created_at,
        "expires_at": a.expires_at,
    })
}

/// Posts a summary of each new pending approval to `[approvals] webhook`,
/// from a spawned task with a short timeout: never blocks or fails a request.
pub struct Webhook {
    url: String,
    /// The broker's public URL when the approval pages are on.
    pages: Option<String>,
    client: reqwest::Client,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("url", &self.url).finish()
    }
}

/// Why the approvals webhook cannot be set up (at start-up or reload).
#[derive(Debug, thiserror::Error)]
pub enum WebhookSetupError {
    /// `[approvals] webhook_ca` cannot be read or holds a bad certificate.
    #[error("approvals.webhook_ca: {}: {source}", path.display())]
    Ca {
        /// The CA file.
        path: std::path::PathBuf,
        /// Why.
        source: rustls_pki_types::pem::Error,
    },
    /// The TLS client configuration cannot be built.
    #[error("approvals.webhook: {0}")]
    Tls(&'static str),
    /// The HTTPS client cannot be built.
    #[error("approvals.webhook: {0}")]
    Client(reqwest::Error),
}

/// The CA path of a webhook (empty when none: never reached then).
fn p_buf(ca: Option<&Path>) -> std::path::PathBuf {
    ca.map(Path::to_path_buf).unwrap_or_default()
}

impl Webhook {
    /// A notifier for `url` (https), trusting the public roots plus `ca`.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Self, WebhookSetupError> {
        use rustls_pki_types::pem::PemObject;
        let bad_ca = |source| WebhookSetupError::Ca {
            path: p_buf(ca),
            source,
        };
        let extra: Vec<rustls_pki_types::CertificateDer<'static>> = match ca {
            Some(p) => rustls_pki_types::CertificateDer::pem_file_iter(p)
                .map_err(bad_ca)?
                .collect::<Result<_, _>>()
                .map_err(bad_ca)?,
            None => Vec::new(),
        };
        let tls = crate::jwks::http::tls_client_config(&extra, true, None, &[b"http/1.1"])
            .map_err(WebhookSetupError::Tls)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(WEBHOOK_TIMEOUT)
            .build()
            .map_err(WebhookSetupError::Client)?;
        Ok(Self {
            url: url.to_string(),
            pages: None,
            client,
            permits: Arc::new(Semaphore::new(MAX_WEBHOOKS_IN_FLIGHT)),
        })
    }

    /// Summaries carry `approval_url` under `base` (the approval pages).
    pub fn with_pages(mut self, base: Option<&str>) -> Self {
        self.pages = base.map(str::to_string);
        self
    }

    /// Sends the summary of `a` in the background; failures are logged only.
    pub fn notify(&self, a: &Approval) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            crate::telemetry::metrics()
                .approvals
                .with_label_values(&["webhook_failed"])
                .inc();
            tracing::warn!(approval = %a.id, "approval webhook skipped: too many deliveries in flight");
            return;
        };
        let body = summary_with_url(a, self.pages.as_deref());
        let id = a.id.clone();
        let req = self.client.post(&self.url).json(&body);
        tokio::spawn(async move {
            let _permit = permit;
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    tracing::debug!(approval = %id, "approval webhook delivered");
                }
                Ok(r) => {
                    crate::telemetry::metrics()
                        .approvals
                        .with_label_values(&["webhook_failed"])
                        .inc();
                    tracing::warn!(approval = %id, status = r.status().as_u16(), "approval webhook refused");
                }
                Err(e) => {
                    crate::telemetry::metrics()
                        .approvals
                        .with_label_values(&["webhook_failed"])
                        .inc();
                    tracing::warn!(approval = %id, error = %e.without_url(), "approval webhook failed");
                }
            }
        });
    }
}

/// Who decides an approval.
#[derive(Debug, Clone)]
pub enum Approver {
    /// An operator certificate in `[admin] subjects` (already checked by
    /// the admin API): only approvals of policies without `approvers`.
    Operator(String),
    /// A human signed in through `[approvals] login_issuer`.
    Human(Human),
}

impl Approver {
    /// The name recorded as `decided_by` and as the audit record's client.
    pub fn name(&self) -> &str {
        match self {
            Approver::Operator(s) => s,
            Approver::Human(h) => &h.name,
        }
    }

    /// How they authenticated, for the audit record.
    fn provenance(&self) -> String {
        match self {
            Approver::Operator(_) => "operator certificate".into(),
            Approver::Human(h) => format!(
                "human {} via IdP {} (amr {})",
                h.name,
                h.idp,
                if h.amr.is_empty() {
                    "none".to_string()
                } else {
                    h.amr.join(",")
                }
            ),
        }
    }
}

/// What the rule of who may decide reads from the configuration in force
/// (`config` composes it: `Config::approval_rules`).
#[derive(Debug, Clone, Copy)]
pub struct Rules<'c> {
    /// `[approvals] login_*` (none: no human sign-in).
    pub login: Option<&'c ApprovalLogin>,
    /// `policies[].approvers`, by policy name, for the policies that set it.
    pub policy_approvers: &'c std::collections::BTreeMap<String, Vec<String>>,
    /// `[[policies]]` (their `owner`).
    pub policies: &'c [PolicySpec],
}

/// The approvers of `a`: the granting policy's `approvers`, else its
/// `owner`; nobody when the policy is gone or has neither.
pub fn approvers_of<'c>(cfg: &Rules<'c>, a: &Approval) -> Vec<&'c str> {
    if let Some(list) = cfg.policy_approvers.get(&a.policy) {
        return list.iter().map(String::as_str).collect();
    }
    cfg.policies
        .iter()
        .find(|p| p.name == a.policy)
        .and_then(|p| p.owner.as_deref())
        .into_iter()
        .collect()
}

/// Whether `h` is named by `a`'s approvers (as a person or through a
/// `group:` entry). What the web list shows; [`may_decide`] adds the rest.
pub fn is_approver(cfg: &Rules<'_>, h: &Human, a: &Approval) -> bool {
    let Some(login) = cfg.login else {
        return false;
    };
    if h.idp != login.issuer_name {
        return false;
    }
    // A CIBA request: the person it names, and nobody else.
    if let Some(c) = &a.ciba {
        return c.person_issuer == h.idp && a.subject == h.name;
    }
    approvers_of(cfg, a)
        .iter()
        .any(|e| match e.strip_prefix("group:") {
            Some(g) => h.groups.iter().any(|x| x == g),
            None => *e == h.name,
        })
}

/// Whether a sign-in with `amr` is multi-factor enough (`require_mfa`).
pub fn mfa_ok(cfg: &Rules<'_>, amr: &[String]) -> bool {
    match cfg.login {
        Some(l) => !l.require_mfa || amr.iter().any(|m| l.mfa_amr.contains(m)),
        None => false,
    }
}

/// Whether a sign-in at `auth_time` is recent enough to decide at `now`.
pub fn fresh_enough(cfg: &Rules<'_>, auth_time: u64, now: u64) -> bool {
    match cfg.login {
        Some(l) => now.saturating_sub(auth_time) <= l.max_auth_age.as_secs(),
        None => false,
    }
}

/// Why an approver may not decide an approval ([`may_decide`]); its
/// [`Self::as_str`] is the `refused` audit record's reason and, for some,
/// the admin API's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAllowedReason {
    /// A CIBA request is decided only by the person it names.
    CibaNeedsThePerson,
    /// The policy names its approvers: an operator may not decide.
    PolicyHasApprovers,
    /// The person is not one of the policy's approvers.
    NotAnApprover,
    /// The policy requires multi-factor sign-in.
    MfaRequired,
    /// The sign-in is older than `max_auth_age`.
    AuthTooOld,
    /// The approver is the requester, the subject or an actor.
    SelfApproval,
    /// The person's own policies do not allow a CIBA request.
    PersonPolicyDenies,
}

impl NotAllowedReason {
    /// Every variant (the test pinning the codes checks it covers them).
    #[cfg(test)]
    const ALL: &'static [Self] = &[
        Self::CibaNeedsThePerson,
        Self::PolicyHasApprovers,
        Self::NotAnApprover,
        Self::MfaRequired,
        Self::AuthTooOld,
        Self::SelfApproval,
        Self::PersonPolicyDenies,
    ];

    /// The stable reason code.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CibaNeedsThePerson => "ciba_needs_the_person",
            Self::PolicyHasApprovers => "policy_has_approvers",
            Self::NotAnApprover => "not_an_approver",
            Self::MfaRequired => "mfa_required",
            Self::AuthTooOld => "auth_too_old",
            Self::SelfApproval => "self_approval",
            Self::PersonPolicyDenies => "person_policy_denies",
        }
    }
}

impl std::fmt::Display for NotAllowedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one rule of who may decide `a` (a refusal's reason code when not):
/// an operator only for policies without `approvers`; a human named by the
/// approvers, multi-factor when required, signed in within `max_auth_age`;
/// never the requester, the subject or an actor (four eyes).
pub fn may_decide(
    cfg: &Rules<'_>,
    who: &Approver,
    a: &Approval,
    now: u64,
) -> Result<(), NotAllowedReason> {
    match who {
        Approver::Operator(_) if a.ciba.is_some() => {
            return Err(NotAllowedReason::CibaNeedsThePerson)
        }
        Approver::Operator(_) => {
            if cfg.policy_approvers.contains_key(&a.policy) {
                return Err(NotAllowedReason::PolicyHasApprovers);
            }
        }
        Approver::Human(h) => {
            if !is_approver(cfg, h, a) {
                return Err(NotAllowedReason::NotAnApprover);
            }
            if !mfa_ok(cfg, &h.amr) {
                return Err(NotAllowedReason::MfaRequired);
            }
            if !fresh_enough(cfg, h.auth_time, now) {
                return Err(NotAllowedReason::AuthTooOld);
            }
        }
    }
    let name = who.name();
    // Four eyes: never the requester or an actor; never the subject either,
    // except in CIBA, where the subject is the person whose consent is asked.
    let subject_decides = a.ciba.is_some();
    if name == a.requester
        || (name == a.subject && !subject_decides)
        || a.actors.iter().any(|x| x == name)
    {
        return Err(NotAllowedReason::SelfApproval);
    }
    Ok(())
}

/// CIBA consent: the person's own policies (a policy matching the login
/// issuer and their ID-token claims now) must allow the audience and every
/// scope, as for any delegation's subject.
pub fn person_policy_allows(policies: &PolicySet, h: &Human, a: &Approval) -> bool {
    let Some(sub) = h.claims.get("sub").and_then(Value::as_str) else {
        return false;
    };
    let Ok(scopes) = a.scopes.join(" ").parse::<crate::policy::scope::ScopeSet>() else {
        return false;
    };
    let subject = crate::policy::Subject {
        issuer: &h.idp,
        subject: sub,
        claims: Some(&h.claims),
    };
    policies.decide(&subject, &a.audience, &scopes).is_ok()
}

/// Why [`decide`] did not decide.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// No such approval (or not a UUID).
    #[error("no approval {0}")]
    NotFound(String),
    /// This approver may not decide it ([`may_decide`]'s reason); audited
    /// as `refused`.
    #[error("not allowed to decide: {0}")]
    NotAllowed(NotAllowedReason),
    /// It is no longer pending (or expired); audited as `refused`.
    #[error("the decision does not apply")]
    NotApplicable(DecideOutcome),
    /// The store failed: nothing was decided.
    #[error("{0}")]
    Store(StoreError),
    /// The audit trail failed before the decision: nothing was decided.
    #[error("the audit trail is unavailable: {0}")]
    AuditBefore(AuditError),
    /// A refusal could not be audited (nothing was decided either).
    #[error("the refusal could not be audited: {0}")]
    AuditRefusal(AuditError),
}

/// What [`decide`] works with: the stores, the audit trail, the clock, and
/// from the configuration snapshot in force the rule of who may decide and
/// the policies (a CIBA consent checks the person's own).
#[derive(Clone, Copy)]
pub struct Deciding<'a> {
    /// The stores (the approval lives there).
    pub stores: &'a Stores,
    /// The audit trail (no decision without its record).
    pub auditor: &'a Auditor,
    /// The clock.
    pub clock: &'a dyn Clock,
    /// Who may decide.
    pub rules: Rules<'a>,
    /// The policies in force.
    pub policies: &'a PolicySet,
}

/// Serialises approval decisions on one replica (they are rare and human).
static DECIDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn refused(who: &Approver, a: &Approval, reason_code: &str, note: &str) -> AuditRecord {
    AuditRecord::new(Event::Refused)
        .reason(reason_code)
        .client(who.name())
        .subject(&a.subject)
        .actors(a.actors.iter().cloned())
        .scopes(&a.scopes.join(" "))
        .audience(&a.audience)
        .policy(&a.policy)
        .detail(&format!(
            "approval {} by {}: {note}",
            a.id,
            who.provenance()
        ))
}

/// Decides approval `id` (`approve` or deny) for `who`, with `reason`:
/// checks [`may_decide`], audits the decision before making it (no
/// decision without its record: fail closed), then moves the approval in
/// the store. Refusals (not allowed, not pending, expired) are audited as
/// `refused` and decide nothing. HTTP-free: both the admin API and the web
/// pages call this.
pub async fn decide(
    app: &Deciding<'_>,
    who: &Approver,
    id: &str,
    approve: bool,
    reason: Option<&str>,
) -> Result<Approval, DecideError> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(DecideError::NotFound(id.to_string()));
    }
    let cfg = &app.rules;
    // One decision at a time on this replica: the state read below is then
    // the state the store decides on (barring another replica deciding the
    // same approval in the same instant), so a decision that cannot apply is
    // recorded as `refused` only, never as `approved`/`denied`.
    let _one_at_a_time = DECIDING.lock().await;
    let now = app.clock.now();
    let a = match app.stores.approvals.get_approval(id, now).await {
        Ok(Some(a)) => a,
        Ok(None) => return Err(DecideError::NotFound(id.to_string())),
        Err(e) => return Err(DecideError::Store(e)),
    };
    let what = if approve { "approval" } else { "denial" };
    let not_applicable = if a.state != ApprovalState::Pending {
        Some(DecideOutcome::NotPending(a.state))
    } else if a.expires_at <= now {
        Some(DecideOutcome::Expired)
    } else {
        None
    };
    if let Some(out) = not_applicable {
        let code = match out {
            DecideOutcome::Expired => "approval_expired",
            _ => "approval_not_pending",
        };
        let state = if a.state == ApprovalState::Pending {
            "expired"
        } else {
            a.state.as_str()
        };
        let rec = refused(who, &a, code, &format!("it is {state}: {what} not applied"));
        app.auditor
            .record(rec)
            .await
            .map_err(DecideError::AuditRefusal)?;
        return Err(DecideError::NotApplicable(out));
    }
    let mut allowed = may_decide(cfg, who, &a, now);
    if let (Ok(()), Approver::Human(h), true) = (&allowed, who, approve && a.ciba.is_some()) {
        if !person_policy_allows(app.policies, h, &a) {
            allowed = Err(NotAllowedReason::PersonPolicyDenies);
        }
    }
    if let Err(code) = allowed {
        let rec = refused(
            who,
            &a,
            code.as_str(),
            &format!("{what} not allowed ({code})"),
        );
        app.auditor
            .record(rec)
            .await
            .map_err(DecideError::AuditRefusal)?;
        return Err(DecideError::NotAllowed(code));
    }
    let rec = AuditRecord::new(if approve {
        Event::Approved
    } else {
        Event::Denied
    })
    .client(who.name())
    .subject(&a.subject)
    .actors(a.actors.iter().cloned())
    .owner(a.owner.as_deref())
    .task(a.task.as_deref().unwrap_or(""))
    .scopes(&a.scopes.join(" "))
    .audience(&a.audience)
    .policy(&a.policy)
    .detail(&format!(
        "approval {} requested by {} (request sha256 {}) decided by {}{}{}",
        a.id,
        a.requester,
        a.request_hash,
        who.provenance(),
        if reason.is_some() { ": " } else { "" },
        reason.unwrap_or("")
    ));
    if let Err(e) = app.auditor.record(rec).await {
        tracing::error!(error = %e, "approval not decided: audit unavailable");
        return Err(DecideError::AuditBefore(e));
    }
    let out = match app
        .stores
        .approvals
        .decide(id, approve, who.name(), reason, now)
        .await
    {
        Ok(o) => o,
        Err(e) => {
            let undo = AuditRecord::new(Event::Unavailable)
                .reason("approval_not_decided")
                .client(who.name())
                .detail(&format!("approval {id}: {e}"));
            let _ = app.auditor.record(undo).await;
            return Err(DecideError::Store(e));
        }
    };
    match out {
        DecideOutcome::Decided(a) => {
            crate::telemetry::metrics()
                .approvals
                .with_label_values(&[if approve { "approved" } else { "denied" }])
                .inc();
            Ok(*a)
        }
        // Another replica decided it between our read and our write: the
        // record above stands, and this one says it did not apply.
        out => {
            let undo = AuditRecord::new(Event::Refused)
                .reason("approval_not_pending")
                .client(who.name())
                .detail(&format!("approval {id}: the decision above did not apply"));
            let _ = app.auditor.record(undo).await;
            Err(DecideError::NotApplicable(out))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Pins the `refused` audit reasons (and the admin API's codes among
    /// them): a rename must show up here.
    #[test]
    fn not_allowed_reasons_are_stable() {
        let pinned = [
            (
                NotAllowedReason::CibaNeedsThePerson,
                "ciba_needs_the_person",
            ),
            (NotAllowedReason::PolicyHasApprovers, "policy_has_approvers"),
            (NotAllowedReason::NotAnApprover, "not_an_approver"),
            (NotAllowedReason::MfaRequired, "mfa_required"),
            (NotAllowedReason::AuthTooOld, "auth_too_old"),
            (NotAllowedReason::SelfApproval, "self_approval"),
            (NotAllowedReason::PersonPolicyDenies, "person_policy_denies"),
        ];
        assert_eq!(pinned.len(), NotAllowedReason::ALL.len());
        for (r, code) in pinned {
            assert_eq!(r.as_str(), code);
            assert_eq!(r.to_string(), code);
            assert_eq!(
                DecideError::NotAllowed(r).to_string(),
                format!("not allowed to decide: {code}")
            );
        }
    }

    #[test]
    fn webhook_setup_errors_name_the_key_and_file() {
        let missing = Path::new("/nonexistent/webhook-ca.pem");
        let e = Webhook::new("https://hooks.example.com/x", Some(missing)).unwrap_err();
        assert!(matches!(e, WebhookSetupError::Ca { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with("approvals.webhook_ca: /nonexistent/webhook-ca.pem: "),
            "{text}"
        );
        assert!(Webhook::new("https://hooks.example.com/x", None).is_ok());
    }

    fn base<'a>(details: Option<&'a Value>) -> BoundRequest<'a> {
        BoundRequest {
            subject_issuer: "mtls",
            subject: "spiffe://td/a",
            actor: None,
            scopes: vec!["b", "a"],
            audience: "api",
            task: Some("t"),
            details,
        }
    }

    #[test]
    fn hash_binds_every_part_and_ignores_order() {
        let d1: Value = serde_json::from_str(r#"[{"type":"x","a":1,"b":2}]"#).unwrap();
        let d2: Value = serde_json::from_str(r#"[{"b":2,"type":"x","a":1}]"#).unwrap();
        let h = base(Some(&d1)).hash();
        assert_eq!(h.len(), 64);
        assert_eq!(h, base(Some(&d2)).hash(), "member order does not matter");
        let mut r = base(Some(&d1));
        r.scopes = vec!["a", "b"];
        assert_eq!(h, r.hash(), "scope order does not matter");
        let d3: Value = serde_json::from_str(r#"[{"type":"x","a":1,"b":3}]"#).unwrap();
        let variants = [
            BoundRequest {
                subject: "spiffe://td/b",
                ..base(Some(&d1))
            },
            BoundRequest {
                subject_issuer: "ci",
                ..base(Some(&d1))
            },
            BoundRequest {
                actor: Some(("mtls", "spiffe://td/c")),
                ..base(Some(&d1))
            },
            BoundRequest {
                scopes: vec!["a"],
                ..base(Some(&d1))
            },
            BoundRequest {
                audience: "api2",
                ..base(Some(&d1))
            },
            BoundRequest {
                task: None,
                ..base(Some(&d1))
            },
            base(None),
            base(Some(&d3)),
        ];
        for v in variants {
            assert_ne!(h, v.hash(), "{v:?}");
        }
    }

    #[test]
    fn summary_names_the_request_and_no_credential() {
        let a = crate::store::conformance::approval("spiffe://td/a", "h");
        let s = summary_with_url(&a, None);
        assert_eq!(s["approval_id"], a.id.as_str());
        assert_eq!(s["scopes"][0], "deploy:prod");
        assert_eq!(s["authorization_details"][0]["type"], "deploy");
        let text = s.to_string();
        assert!(!text.contains("request_hash") && !text.contains("token"));
        assert!(s.get("approval_url").is_none());
        let s = summary_with_url(&a, Some("https://tessera.example.com"));
        assert_eq!(
            s["approval_url"],
            format!("https://tessera.example.com/approvals/{}", a.id)
        );
    }
}
