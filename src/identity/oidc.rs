//! Subject and actor tokens from configured OIDC issuers: key lookup by
//! (issuer, kid), the issuer's algorithm allowlist, and claim validation.
//! Keys come only from the configured JWKS URL or discovery under the
//! configured issuer, never from anything the token says.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;

use rustls_pki_types::{pem::PemObject, CertificateDer};
use tokio::sync::{Mutex, OnceCell};

use crate::jose::alg::Algorithm;
use crate::jose::jws::UnverifiedJws;
use crate::jose::validate::{validate_owned, ClaimRules, ValidatedClaims};
use crate::jwks::{https_client, HttpJwksFetcher, JwksCache, KeyLookupError};

/// One trusted OIDC issuer, typed.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Short name.
    pub name: String,
    /// Exact `iss`.
    pub issuer: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// JWKS URL, or `None` for discovery.
    pub jwks_uri: Option<String>,
    /// Extra HTTPS trust anchor.
    pub ca: Option<PathBuf>,
    /// Allowed algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Replay protection on `jti`.
    pub single_use: bool,
    /// Longest accepted token lifetime.
    pub max_token_lifetime: Duration,
    /// Clock leeway.
    pub leeway: Duration,
    /// Least time between miss-triggered JWKS refetches.
    pub jwks_refresh_cooldown: Duration,
    /// How long keys stay usable after the last successful fetch.
    pub jwks_max_stale: Duration,
    /// Sent as `Authorization: Bearer` with discovery and JWKS fetches.
    pub bearer_token_file: Option<PathBuf>,
}

/// Why an `[[issuers]]` entry cannot be set up (its CA file, its HTTPS
/// client, its claim rules); each names the issuer.
#[derive(Debug, thiserror::Error)]
pub enum IssuerSetupError {
    /// The `ca` file cannot be read (`read`) or holds a bad certificate.
    #[error("issuer {issuer}: {} ca {}: {source}", if *read { "cannot read" } else { "bad" }, path.display())]
    Ca {
        /// The issuer's name.
        issuer: String,
        /// The file could not be read (else: a certificate in it is bad).
        read: bool,
        /// The CA file.
        path: std::path::PathBuf,
        /// Why.
        source: rustls_pki_types::pem::Error,
    },
    /// The HTTPS client cannot be built.
    #[error("issuer {issuer}: {source}")]
    Client {
        /// The issuer's name.
        issuer: String,
        /// Why.
        source: crate::jwks::FetchError,
    },
    /// The issuer or audiences are unusable.
    #[error("issuer {issuer}: {source}")]
    Rules {
        /// The issuer's name.
        issuer: String,
        /// Why.
        source: crate::jose::validate::RulesError,
    },
}

/// Why a token from an OIDC issuer was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OidcError {
    /// The token is not acceptable (signature, claims, algorithm, key); the
    /// string is a stable reason code for the audit record.
    #[error("token rejected: {0}")]
    Rejected(&'static str),
    /// The issuer's keys cannot be had right now: fail closed (503).
    #[error("issuer keys unavailable: {0}")]
    Unavailable(String),
    /// The issuer's keys are older than its max-stale window and cannot be
    /// refreshed: fail closed (503).
    #[error("issuer keys stale: {0}")]
    Stale(String),
}

/// Verifies tokens of one configured issuer.
pub struct IssuerVerifier {
    cfg: IssuerConfig,
    rules: ClaimRules,
    client: reqwest::Client,
    keys: OnceCell<Arc<JwksCache>>,
    refresher: std::sync::atomic::AtomicBool,
    discovery_failed_at: Mutex<Option<tokio::time::Instant>>,
    cooldown: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for IssuerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerVerifier")
            .field("name", &self.cfg.name)
            .field("issuer", &self.cfg.issuer)
            .finish()
    }
}

impl IssuerVerifier {
    /// Builds the verifier (no network until the first token arrives). The
    /// refresh cooldown and max-stale window come from `cfg`; `clock`'s
    /// monotonic face measures how stale the keys are.
    pub fn new(cfg: IssuerConfig, clock: Arc<dyn Clock>) -> Result<Self, IssuerSetupError> {
        let cooldown = cfg.jwks_refresh_cooldown;
        let mut roots = Vec::new();
        let issuer = || cfg.name.clone();
        if let Some(ca) = &cfg.ca {
            let ca_error = |read: bool, source| IssuerSetupError::Ca {
                issuer: issuer(),
                read,
                path: ca.clone(),
                source,
            };
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| ca_error(true, e))? {
                roots.push(c.map_err(|e| ca_error(false, e))?);
            }
        }
        let client = https_client(&roots, true).map_err(|e| IssuerSetupError::Client {
            issuer: issuer(),
            source: e,
        })?;
        let rules = ClaimRules::new(cfg.issuer.clone(), cfg.audiences.clone())
            .map_err(|e| IssuerSetupError::Rules {
                issuer: issuer(),
                source: e,
            })?
            .leeway(cfg.leeway.as_secs())
            .max_lifetime(cfg.max_token_lifetime.as_secs())
            .require_jti(cfg.single_use);
        Ok(Self {
            cfg,
            rules,
            client,
            keys: OnceCell::new(),
            refresher: std::sync::atomic::AtomicBool::new(false),
            discovery_failed_at: Mutex::new(None),
            cooldown,
            clock,
        })
    }

    /// The issuer's configuration.
    pub fn config(&self) -> &IssuerConfig {
        &self.cfg
    }

    async fn cache(&self) -> Result<&Arc<JwksCache>, OidcError> {
        if let Some(c) = self.keys.get() {
            return Ok(c);
        }
        {
            let failed = self.discovery_failed_at.lock().await;
            if let Some(t) = *failed {
                if t.elapsed() < self.cooldown {
                    return Err(OidcError::Unavailable("discovery failed recently".into()));
                }
            }
        }
        let res = self
            .keys
            .get_or_try_init(|| async {
                let uri = match &self.cfg.jwks_uri {
                    Some(u) => u.clone(),
                    None => crate::jwks::http::discover_jwks_uri_with_bearer(
                        &self.client,
                        &self.cfg.issuer,
                        self.cfg.bearer_token_file.as_deref(),
                    )
                    .await
                    .map_err(|e| e.to_string())?,
                };
                let fetcher = HttpJwksFetcher::new(self.client.clone(), &uri)
                    .map_err(|e| e.to_string())?
                    .with_bearer_token_file(self.cfg.bearer_token_file.clone());
                Ok::<_, String>(Arc::new(
                    JwksCache::new(Arc::new(fetcher), self.cooldown)
                        .with_max_stale(self.cfg.jwks_max_stale)
                        .with_clock(self.clock.clone()),
                ))
            })
            .await;
        match res {
            Ok(c) => Ok(c),
            Err(e) => {
                *self.discovery_failed_at.lock().await = Some(tokio::time::Instant::now());
                Err(OidcError::Unavailable(e))
            }
        }
    }

    /// Verifies a decoded token: algorithm allowlist, key by kid from this
    /// issuer's JWKS, signature, then claims at `now`.
    pub async fn verify(&self, jws: UnverifiedJws, now: u64) -> Result<ValidatedClaims, OidcError> {
        let alg = jws.header().alg;
        if !self.cfg.algorithms.contains(&alg) {
            return Err(OidcError::Rejected("alg_not_allowed"));
        }
        let cache = self.cache().await?;
        let key = cache
            .key(jws.header().kid.as_deref())
            .await
            .map_err(|e| match e {
                KeyLookupError::Unavailable => {
                    OidcError::Unavailable("no usable keys could be fetched".into())
                }
                KeyLookupError::Stale => {
                    // Never wait on the upstream here: fetch in the
                    // background, so the next request can succeed.
                    cache.kick_refresh();
                    OidcError::Stale(format!(
                        "issuer {}: no successful JWKS fetch within jwks_max_stale ({}s)",
                        self.cfg.name,
                        self.cfg.jwks_max_stale.as_secs()
                    ))
                }
                other => OidcError::Rejected(other.reason()),
            })?;
        // Once keys are loaded, refresh them in the background so keys the
        // issuer removed stop being trusted (not only on an unknown kid).
        if !self
            .refresher
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            cache.spawn_refresh_task();
        }
        let verified = jws
            .verify(&key)
            .map_err(|e| OidcError::Rejected(e.reason()))?;
        validate_owned(verified, &self.rules, now).map_err(|e| OidcError::Rejected(e.reason()))
    }

    /// How many JWKS fetches this issuer has made (for tests and metrics).
    pub fn fetch_count(&self) -> u64 {
        self.keys.get().map(|c| c.fetch_count()).unwrap_or(0)
    }
}
