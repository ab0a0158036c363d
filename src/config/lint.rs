//! Warnings about trust that is valid but too wide (`tessera config check`,
//! and one log line each at `serve` start-up).
//!
//! A warning never makes a config invalid: errors are [`super::ConfigError`]s.
//! The rules:
//!
//! | kind | when |
//! |---|---|
//! | `shared_issuer_without_claims` | a policy trusts a shared issuer ([`SHARED_ISSUERS`]) with no `match.claims` |
//! | `any_subject` | a policy has neither `match.subject` nor `match.claims` |
//! | `subject_double_star` | `match.subject` contains `**` |
//! | `wildcard_audience` | an `audiences` entry is exactly `*` or `**` |
//! | `wildcard_scope` | a `scopes` entry is exactly `*` or `**` |
//! | `no_owner` | a policy has no `owner` |
//! | `long_issuer_token_lifetime` | an issuer's `max_token_lifetime` is above [`LONG_ISSUER_TOKEN_LIFETIME`] |
//! | `ttl_capped` | a policy `max_ttl`, or `[tokens] default_ttl`, is above `[tokens] max_ttl` (tokens get `[tokens] max_ttl`) |

use std::fmt;
use std::time::Duration;

use super::Config;
use crate::policy::{LintKind, PolicySet};

/// One shared (multi-tenant) OIDC issuer: anyone can get a token from it.
#[derive(Debug, Clone, Copy)]
pub struct SharedIssuer {
    /// The exact `iss` URL (compared without a trailing `/`).
    pub url: &'static str,
    /// Who shares it, for the message.
    pub shared_by: &'static str,
    /// A claim that narrows trust to one tenant, for the message.
    pub narrowing_claim: &'static str,
}

/// Issuers whose tokens are minted for many unrelated tenants, so that a
/// policy trusting them must also pin a tenant with a claim condition.
///
/// The rule: an issuer is shared when any stranger can obtain a token from it
/// whose `aud` they choose, without the relying party's involvement. The
/// subject alone is not enough on these issuers: GitHub and GitLab let each
/// organisation customise the `sub` template (so `environment:prod` can come
/// from any organisation), and Google's `sub` is an opaque number.
pub const SHARED_ISSUERS: &[SharedIssuer] = &[
    SharedIssuer {
        url: "https://token.actions.githubusercontent.com",
        shared_by: "every GitHub Actions workflow of every repository",
        narrowing_claim: "repository_owner",
    },
    SharedIssuer {
        url: "https://gitlab.com",
        shared_by: "every GitLab.com CI job of every project",
        narrowing_claim: "namespace_path",
    },
    SharedIssuer {
        url: "https://accounts.google.com",
        shared_by: "every Google account and every Google Cloud service account",
        narrowing_claim: "email",
    },
    SharedIssuer {
        url: "https://app.terraform.io",
        shared_by: "every HCP Terraform organisation",
        narrowing_claim: "terraform_organization_name",
    },
];

/// An issuer `max_token_lifetime` above this is unusually long: a stolen
/// subject token stays exchangeable that long. It is the default (`24h`), and
/// the longest lifetime Tessera gives its own tokens.
pub const LONG_ISSUER_TOKEN_LIFETIME: Duration = super::MAX_TOKEN_TTL_CAP;

/// The shared issuer `iss` is, if any.
pub fn shared_issuer(iss: &str) -> Option<&'static SharedIssuer> {
    let iss = iss.trim_end_matches('/');
    SHARED_ISSUERS.iter().find(|s| s.url == iss)
}

/// What a [`ConfigWarning`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarningKind {
    /// A risky policy construct.
    Policy(LintKind),
    /// An issuer accepts subject tokens living longer than
    /// [`LONG_ISSUER_TOKEN_LIFETIME`].
    LongIssuerTokenLifetime,
    /// A policy `max_ttl` or `[tokens] default_ttl` above `[tokens] max_ttl`:
    /// the tokens live `[tokens] max_ttl` (a ceiling), not what is written.
    TtlCapped,
}

impl WarningKind {
    /// Stable machine-readable name (`--json` output, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            WarningKind::Policy(k) => k.as_str(),
            WarningKind::LongIssuerTokenLifetime => "long_issuer_token_lifetime",
            WarningKind::TtlCapped => "ttl_capped",
        }
    }
}

/// A valid but risky configuration: which file, where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The file.
    pub file: String,
    /// The table entry: `policies[2]` or `issuers[0]`.
    pub section: String,
    /// The policy name, for policy warnings.
    pub policy: Option<String>,
    /// The key inside the entry: `match.claims`, `audiences[0]`.
    pub field: String,
    /// The rule.
    pub kind: WarningKind,
    /// Why, and what to do.
    pub message: String,
}

impl ConfigWarning {
    /// The dotted key, like a [`super::ConfigError`]'s: `policies[2].match.claims`.
    pub fn key(&self) -> String {
        format!("{}.{}", self.section, self.field)
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.policy {
            Some(p) => write!(
                f,
                "{}: {} {:?}.{}: {}",
                self.file, self.section, p, self.field, self.message
            ),
            None => write!(f, "{}: {}: {}", self.file, self.key(), self.message),
        }
    }
}

/// Writes a duration the way the config does (`90s`, `5m`, `48h`).
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        format!("{}ms", d.as_millis())
    } else if s.is_multiple_of(86_400) && s >= 86_400 * 2 {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

impl Config {
    /// Every warning about this (valid) config, policies in file order, then
    /// issuers.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let file = self.source.display().to_string();
        let mut out = Vec::new();
        // Names of the configured issuers that are shared.
        let shared: Vec<&str> = self
            .issuers
            .iter()
            .filter(|i| shared_issuer(&i.issuer).is_some())
            .map(|i| i.name.as_str())
            .collect();
        // The config was validated, so this compiles; should it not, there is
        // nothing to lint (the error is reported by the loader).
        if let Ok(set) = PolicySet::compile(self.policies.clone()) {
            for w in set.lint(&shared) {
                let Some(p) = set.get(&w.policy) else {
                    continue;
                };
                let message = self.policy_message(p, &w.field, w.kind);
                out.push(ConfigWarning {
                    file: file.clone(),
                    section: format!("policies[{}]", p.index()),
                    policy: Some(w.policy),
                    field: w.field,
                    kind: WarningKind::Policy(w.kind),
                    message,
                });
            }
        }
        out.extend(self.ttl_cap_warnings(&file));
        for (i, is) in self.issuers.iter().enumerate() {
            if is.max_token_lifetime > LONG_ISSUER_TOKEN_LIFETIME {
                out.push(ConfigWarning {
                    file: file.clone(),
                    section: format!("issuers[{i}]"),
                    policy: None,
                    field: "max_token_lifetime".into(),
                    kind: WarningKind::LongIssuerTokenLifetime,
                    message: format!(
                        "`{}` accepts subject tokens from `{}` living longer than {}: a leaked one stays exchangeable that long; lower it to the issuer's real token lifetime",
                        fmt_duration(is.max_token_lifetime),
                        is.name,
                        fmt_duration(LONG_ISSUER_TOKEN_LIFETIME)
                    ),
                });
            }
        }
        out
    }

    /// `[tokens] max_ttl` is a ceiling: every lifetime written above it
    /// (the default, a policy's `max_ttl`) is capped, which is valid (so
    /// that lowering `max_ttl` alone is the emergency lever) but says
    /// something the tokens will not do.
    fn ttl_cap_warnings(&self, file: &str) -> Vec<ConfigWarning> {
        let cap = self.tokens.max_ttl;
        let mut out = Vec::new();
        if self.tokens.default_ttl > cap {
            out.push(ConfigWarning {
                file: file.to_owned(),
                section: "tokens".into(),
                policy: None,
                field: "default_ttl".into(),
                kind: WarningKind::TtlCapped,
                message: format!(
                    "`{}` is above tokens.max_ttl `{}`: tokens get at most {}; lower default_ttl",
                    fmt_duration(self.tokens.default_ttl),
                    fmt_duration(cap),
                    fmt_duration(cap)
                ),
            });
        }
        for (i, p) in self.policies.iter().enumerate() {
            let Some(d) = p.max_ttl.filter(|d| *d > cap) else {
                continue;
            };
            out.push(ConfigWarning {
                file: file.to_owned(),
                section: format!("policies[{i}]"),
                policy: Some(p.name.clone()),
                field: "max_ttl".into(),
                kind: WarningKind::TtlCapped,
                message: format!(
                    "policy `{}` max_ttl `{}` is above tokens.max_ttl `{}`: its tokens get at most {}",
                    p.name,
                    fmt_duration(d),
                    fmt_duration(cap),
                    fmt_duration(cap)
                ),
            });
        }
        out
    }

    /// The message of one policy warning, naming the offending value.
    fn policy_message(
        &self,
        p: &crate::policy::CompiledPolicy,
        field: &str,
        kind: LintKind,
    ) -> String {
        let spec = self.policies.get(p.index());
        // `audiences[3]` → entry 3 of that list, as written.
        let entry = |list: Option<&Vec<String>>| -> String {
            let idx = field
                .split_once('[')
                .and_then(|(_, r)| r.trim_end_matches(']').parse::<usize>().ok());
            list.zip(idx)
                .and_then(|(l, i)| l.get(i).cloned())
                .unwrap_or_default()
        };
        match kind {
            LintKind::SharedIssuerWithoutClaims => {
                let iss = self.issuers.iter().find(|i| i.name == p.issuer());
                let url = iss.map(|i| i.issuer.as_str()).unwrap_or_default();
                match shared_issuer(url) {
                    Some(s) => format!(
                        "issuer `{}` ({}) is shared by {}; add a claim condition such as {}",
                        p.issuer(),
                        s.url,
                        s.shared_by,
                        s.narrowing_claim
                    ),
                    None => format!(
                        "issuer `{}` is shared by many tenants; add a claim condition",
                        p.issuer()
                    ),
                }
            }
            LintKind::AnySubject if p.issuer() == crate::policy::MTLS_ISSUER => {
                "no subject pattern and no claim condition: every client certificate the client CA signed matches; add match.subject".into()
            }
            LintKind::AnySubject => format!(
                "no subject pattern and no claim condition: every subject of issuer `{}` matches; add match.subject or match.claims",
                p.issuer()
            ),
            LintKind::SubjectDoubleStar => format!(
                "`{}`: `**` matches across `/` and `:` (any repository, namespace or path below); use `*`, which stays within one segment",
                spec.and_then(|s| s.match_subject.clone()).unwrap_or_default()
            ),
            LintKind::WildcardAudience => format!(
                "`{}` allows almost any audience; list the audiences",
                entry(spec.map(|s| &s.audiences))
            ),
            LintKind::WildcardScope => format!(
                "`{}` allows almost any scope; list the scopes",
                entry(spec.map(|s| &s.scopes))
            ),
            LintKind::NoOwner => {
                "no owner: nobody is accountable for this policy and its tokens carry no owner claim; set owner".into()
            }
        }
    }
}
