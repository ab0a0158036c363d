//! Human approval support for the pipeline: the hash that binds an approval
//! to exactly one request, and the best-effort webhook that tells humans a
//! new approval is waiting.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::store::Approval;

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
/// token or credential.
pub fn summary(a: &Approval) -> Value {
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
    client: reqwest::Client,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("url", &self.url).finish()
    }
}

impl Webhook {
    /// A notifier for `url` (https), trusting the public roots plus `ca`.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Self, String> {
        use rustls_pki_types::pem::PemObject;
        let extra: Vec<rustls_pki_types::CertificateDer<'static>> = match ca {
            Some(p) => rustls_pki_types::CertificateDer::pem_file_iter(p)
                .map_err(|e| format!("approvals.webhook_ca: {}: {e}", p.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("approvals.webhook_ca: {}: {e}", p.display()))?,
            None => Vec::new(),
        };
        let tls = crate::jwks::http::tls_client_config(&extra, true, None, &[b"http/1.1"])
            .map_err(|e| format!("approvals.webhook: {e}"))?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(WEBHOOK_TIMEOUT)
            .build()
            .map_err(|e| format!("approvals.webhook: {e}"))?;
        Ok(Self {
            url: url.to_string(),
            client,
            permits: Arc::new(Semaphore::new(MAX_WEBHOOKS_IN_FLIGHT)),
        })
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
        let body = summary(a);
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

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
        let s = summary(&a);
        assert_eq!(s["approval_id"], a.id.as_str());
        assert_eq!(s["scopes"][0], "deploy:prod");
        assert_eq!(s["authorization_details"][0]["type"], "deploy");
        let text = s.to_string();
        assert!(!text.contains("request_hash") && !text.contains("token"));
    }
}
