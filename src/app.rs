//! Wiring: a validated [`Config`] becomes a running broker.
//!
//! [`prepare`] generates development material (only with `[dev]
//! generate_missing`) and checks every referenced file; [`App::build`] loads
//! keys, opens the store and builds the pipeline; [`start`] binds the
//! listeners (port 0 works, for tests) and serves until shut down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audit::{AuditRecord, Auditor, Event};
use crate::clock::{Clock, ClockTrust, SystemClock};
use crate::config::Config;
use crate::exchange::Exchanger;
use crate::identity::oidc::IssuerVerifier;
use crate::mint::keyring::KeyRing;
use crate::mint::TokenMinter;
use crate::store::Stores;

/// Why the broker cannot start, or a reload was rejected. Each names the
/// config key (and file) at fault; the text is what `serve` prints, the
/// admin API answers and the `reload_rejected` audit record holds.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration file is invalid, or a file it names is missing.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The store cannot be opened.
    #[error("store.url: {0}")]
    Store(crate::store::StoreError),
    /// The audit sink cannot be started.
    #[error("audit.path: {0}")]
    Audit(crate::audit::AuditError),
    /// The audit file refused the first record (`config_loaded`).
    #[error("audit.path: the first audit record failed: {0}")]
    FirstAuditRecord(crate::audit::AuditError),
    /// The signing key ring cannot be loaded.
    #[error("tokens.signing_keys: {0}")]
    SigningKeys(crate::mint::keyring::KeyRingError),
    /// The listener's TLS material cannot be loaded.
    #[error(transparent)]
    Tls(#[from] crate::server::tls::TlsSetupError),
    /// An `[[issuers]]` entry cannot be set up.
    #[error(transparent)]
    Issuer(#[from] crate::identity::oidc::IssuerSetupError),
    /// The key ring cannot verify Tessera's own tokens.
    #[error(transparent)]
    OwnTokens(#[from] crate::identity::own::OwnKeyError),
    /// The exchange pipeline cannot be built ([`Exchanger::new`]).
    #[error(transparent)]
    Pipeline(#[from] crate::exchange::SetupError),
    /// `[approvals] login_issuer` names no `[[issuers]]` entry.
    #[error("approvals.login_issuer: no issuer {0}")]
    NoLoginIssuer(String),
    /// The approval pages' sign-in client cannot be set up.
    #[error(transparent)]
    Login(#[from] crate::identity::login::LoginSetupError),
    /// A reload changes restart-only keys ([`restart_only_changes`]).
    #[error(
        "{}: {} cannot change without a restart (the configuration in force stays)",
        path.display(),
        keys.join(", ")
    )]
    RestartOnly {
        /// The configuration file.
        path: PathBuf,
        /// The keys changed.
        keys: Vec<&'static str>,
    },
    /// The blocking task that builds a reloaded snapshot failed.
    #[error("reload task failed: {0}")]
    ReloadTask(tokio::task::JoinError),
    /// `[dev] generate_missing` could not generate the material.
    #[error("generating development material: {0}")]
    DevMaterial(crate::pki::PkiError),
    /// [`load_material`]: what failed, under the configuration file's name.
    #[error("{}: {source}", file.display())]
    Material {
        /// The configuration file.
        file: PathBuf,
        /// Why.
        source: Box<AppError>,
    },
    /// Material start-up would generate is still missing (one note each).
    #[error("{}", .0.join("; "))]
    Pending(Vec<String>),
    /// A listener cannot bind its address (`key` is the config key).
    #[error("{key}: cannot bind {addr}: {source}")]
    Bind {
        /// `server.listen` or `server.ops_listen`.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A bound listener has no local address.
    #[error(transparent)]
    LocalAddr(std::io::Error),
}

/// Everything derived from one configuration file: swapped as a whole on
/// reload (SIGHUP), so a request that loaded it once sees one consistent
/// configuration from start to end.
pub struct Snapshot {
    /// The validated configuration.
    pub config: Config,
    /// The exchange pipeline (policies, issuers, token settings).
    pub exchanger: Exchanger,
    /// Signing keys (published at `/jwks.json`).
    pub keyring: Arc<KeyRing>,
    /// The minter (newest active key of the configured algorithm).
    pub minter: Arc<TokenMinter>,
    /// Verifies tokens Tessera issued (introspection, revocation).
    pub own_tokens: Arc<crate::identity::own::OwnTokenVerifier>,
    /// 1 at start, +1 for every reload applied.
    pub generation: u64,
    /// The approval pages' sign-in client (`[approvals] login_issuer`).
    pub login: Option<Arc<crate::identity::login::LoginClient>>,
}

impl Snapshot {
    /// Builds everything `config` describes. With `previous`, the verifiers
    /// (and their JWKS caches) of issuers whose settings did not change are
    /// kept, and so is the anomaly guard's state when its settings did not
    /// change.
    fn build(
        config: Config,
        stores: &Stores,
        clock: &Arc<dyn Clock>,
        clock_trust: &Arc<ClockTrust>,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, AppError> {
        let keyring = Arc::new(load_keyring(&config)?);
        let minter = Arc::new(TokenMinter::new(keyring.clone()));
        let mut issuers = Vec::new();
        for i in &config.issuers {
            let kept = previous.and_then(|p| {
                p.exchanger
                    .issuers()
                    .find(|v| same_issuer(v.config(), i))
                    .cloned()
            });
            match kept {
                Some(v) => issuers.push(v),
                None => issuers.push(Arc::new(IssuerVerifier::new(i.clone(), clock.clone())?)),
            }
        }
        let own_tokens = Arc::new(crate::identity::own::OwnTokenVerifier::new(
            &config.server.issuer,
            &keyring,
        )?);
        let mut exchanger = Exchanger::new(
            &config.exchange_settings(),
            issuers,
            minter.clone(),
            own_tokens.clone(),
            stores.clone(),
            clock.clone(),
        )?;
        if let Some(p) = previous {
            exchanger.keep_state_of(&p.exchanger);
        }
        let exchanger = exchanger.with_clock_trust(clock_trust.clone());
        let login = match &config.approvals_login {
            Some(l) => {
                let is = config
                    .issuers
                    .iter()
                    .find(|i| i.name == l.issuer_name)
                    .ok_or_else(|| AppError::NoLoginIssuer(l.issuer_name.clone()))?;
                Some(Arc::new(crate::identity::login::LoginClient::new(l, is)?))
            }
            None => None,
        };
        Ok(Snapshot {
            login,
            config,
            exchanger,
            keyring,
            minter,
            own_tokens,
            generation: previous.map_or(1, |p| p.generation + 1),
        })
    }
}

/// Whether an issuer's settings are unchanged (its verifier and JWKS cache
/// can be kept). Compared through `Debug`, which prints every field: a
/// field added later is compared too.
fn same_issuer(a: &crate::config::IssuerConfig, b: &crate::config::IssuerConfig) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// Everything a request needs.
pub struct App {
    /// The configuration in force and all that is derived from it. Load it
    /// once per request ([`App::snapshot`]).
    current: ArcSwap<Snapshot>,
    /// The stores.
    pub stores: Stores,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Whether the wall clock can be trusted to mint (`/readyz`, `/token`).
    pub clock_trust: Arc<ClockTrust>,
    /// Set when shutdown began: `/readyz` answers 503.
    pub draining: AtomicBool,
    /// The audit trail.
    pub auditor: Auditor,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

/// Shared handle to the [`App`].
pub type AppState = Arc<App>;

mod reload;
pub use reload::{restart_only_changes, ReloadDiff};

/// Audits the store's loss of its data (`store_epoch_lost`, SECURITY R6)
/// when this broker notices it. The record reaches the file sink; the
/// store's own stream refuses it, as every other store call. (The
/// recovery is audited by the operator's `store recover`.)
fn watch_data_loss(stores: &Stores, auditor: &Auditor) {
    let Some(mut rx) = stores.health.data_lost_changes() else {
        return;
    };
    let auditor = auditor.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let lost = *rx.borrow_and_update();
            if lost {
                let rec = AuditRecord::new(Event::Unavailable)
                    .reason("store_epoch_lost")
                    .detail(
                        "the store lost its data (its data epoch vanished or changed): every \
                         store call fails closed until an operator runs `tessera store recover`",
                    );
                if let Err(e) = auditor.record(rec).await {
                    tracing::error!(error = %e, "store_epoch_lost not audited");
                }
            }
        }
    });
}

impl App {
    /// Loads keys, opens the store and builds the pipeline.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> Result<App, AppError> {
        log_warnings(&config);
        let stores = Stores::open_with(
            &config.store.url,
            &config.store.prefix,
            config.store.timeout,
            &config.store.options,
        )
        .await
        .map_err(AppError::Store)?;
        let auditor = Auditor::start(
            &config.audit.sink,
            Some((stores.audit.clone(), config.audit.stream_max_len)),
            config.audit.timeout,
        )
        .map_err(AppError::Audit)?;
        // Clock trust is restart-only ([server]): one monitor per process.
        let clock_trust = Arc::new(ClockTrust::new(
            clock.clone(),
            config.server.max_clock_step,
            config.server.clock_quarantine,
        ));
        clock_trust.spawn_monitor();
        let snapshot = Snapshot::build(config, &stores, &clock, &clock_trust, None)?;
        // The first record of every start: which configuration is in force.
        let rec = AuditRecord::new(Event::ConfigLoaded)
            .detail(&config_summary(&snapshot.config))
            .reason("startup");
        if let Err(e) = auditor.record(rec).await {
            // The store may be down at start-up (the broker starts anyway and
            // fails closed until it answers: SECURITY R1); a file sink that
            // cannot be written is an error.
            let store_only = matches!(e, crate::audit::AuditError::Stream(_));
            if !store_only
                && matches!(
                    snapshot.config.audit.sink,
                    crate::config::AuditSink::File(_)
                )
            {
                return Err(AppError::FirstAuditRecord(e));
            }
            tracing::warn!(error = %e, "the config_loaded audit record could not be written");
        }
        watch_data_loss(&stores, &auditor);
        Ok(App {
            current: ArcSwap::from_pointee(snapshot),
            stores,
            clock,
            clock_trust,
            draining: AtomicBool::new(false),
            auditor,
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The configuration in force and everything derived from it. A request
    /// loads it once and uses that one snapshot throughout.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// What an approval decision works with
    /// ([`crate::exchange::approval::decide`]): the stores, the audit
    /// trail, the clock, and `snap`'s rules and policies.
    pub(crate) fn deciding<'a>(
        &'a self,
        snap: &'a Snapshot,
    ) -> crate::exchange::approval::Deciding<'a> {
        crate::exchange::approval::Deciding {
            stores: &self.stores,
            auditor: &self.auditor,
            clock: self.clock.as_ref(),
            rules: snap.config.approval_rules(),
            policies: snap.exchanger.policies(),
        }
    }

    /// Re-reads the configuration file the broker started with and, if it
    /// is valid (policies, issuers, keys) and changes no restart-only key,
    /// swaps it in atomically. Otherwise the configuration in force stays,
    /// and the error names the cause. Either way the outcome is counted
    /// (`tessera_config_reloads_total{outcome}`), logged and audited
    /// (`config_loaded`, reason `reload` or `reload_rejected`).
    pub async fn reload(&self) -> Result<ReloadDiff, AppError> {
        self.reload_as("signal:SIGHUP").await
    }

    /// [`App::reload`] on behalf of `who` (the audit record's `client`: the
    /// operator of `POST /admin/v1/reload`, or `signal:SIGHUP`).
    pub async fn reload_as(&self, who: &str) -> Result<ReloadDiff, AppError> {
        let source = self.snapshot().config.source.clone();
        self.reload_file(&source, who).await
    }

    /// [`App::reload`] from another file (tests; the restart-only keys are
    /// compared with the configuration in force all the same).
    pub async fn reload_from(&self, path: &std::path::Path) -> Result<ReloadDiff, AppError> {
        self.reload_file(path, "test").await
    }

    async fn reload_file(&self, path: &std::path::Path, who: &str) -> Result<ReloadDiff, AppError> {
        let _one = self.reloading.lock().await;
        let old = self.snapshot();
        let built = {
            let path = path.to_path_buf();
            let stores = self.stores.clone();
            let clock = self.clock.clone();
            let clock_trust = self.clock_trust.clone();
            let old = old.clone();
            // Key files and CA files are read from disk: off the runtime.
            tokio::task::spawn_blocking(move || -> Result<Snapshot, AppError> {
                let cfg = Config::load(&path)?;
                cfg.check_files()?;
                let fixed = restart_only_changes(&old.config, &cfg);
                if !fixed.is_empty() {
                    return Err(AppError::RestartOnly { path, keys: fixed });
                }
                Snapshot::build(cfg, &stores, &clock, &clock_trust, Some(&old))
            })
            .await
            .map_err(AppError::ReloadTask)
            .and_then(|r| r)
        };
        let m = &crate::telemetry::metrics().config_reloads;
        match built {
            Ok(new) => {
                log_warnings(&new.config);
                let diff = ReloadDiff::between(&old, &new);
                let summary = format!("{}; {diff}", config_summary(&new.config));
                let generation = new.generation;
                self.current.store(Arc::new(new));
                m.with_label_values(&["ok"]).inc();
                tracing::info!(generation, changes = %diff, "configuration reloaded");
                // The new configuration is in force whether or not its record
                // can be written (refusing to apply, say, a removed policy
                // because the audit store is down would be worse).
                let rec = AuditRecord::new(Event::ConfigLoaded)
                    .reason("reload")
                    .client(who)
                    .detail(&summary);
                if let Err(e) = self.auditor.record(rec).await {
                    tracing::warn!(error = %e, "the config_loaded (reload) audit record could not be written");
                }
                Ok(diff)
            }
            Err(e) => {
                m.with_label_values(&["rejected"]).inc();
                tracing::error!(error = %e, generation = old.generation,
                    "configuration reload rejected; the configuration in force stays");
                let rec = AuditRecord::new(Event::ConfigLoaded)
                    .reason("reload_rejected")
                    .client(who)
                    .detail(&e.to_string());
                if let Err(ae) = self.auditor.record(rec).await {
                    tracing::warn!(error = %ae, "the config_loaded (reload_rejected) audit record could not be written");
                }
                Err(e)
            }
        }
    }
}

/// Trust that is valid but too wide: one line each, as `config check` says.
fn log_warnings(config: &Config) {
    for w in config.warnings() {
        tracing::warn!(
            file = %w.file,
            key = %w.key(),
            policy = w.policy.as_deref().unwrap_or("-"),
            kind = w.kind.as_str(),
            "config warning: {}",
            w.message
        );
    }
}

/// `file=… sha256=… policies=N issuers=N store=…` for the
/// `config_loaded` record (the store URL without credentials).
fn config_summary(c: &Config) -> String {
    let hash = std::fs::read(&c.source)
        .map(|b| crate::audit::sha256_hex(&b))
        .unwrap_or_else(|_| "-".into());
    let store = c.store.url.split_once("://").map(|(s, _)| s).unwrap_or("-");
    format!(
        "file={} sha256={} policies={} issuers={} store={}",
        c.source.display(),
        hash,
        c.policies.len(),
        c.issuers.len(),
        store
    )
}

/// Generates missing development material when the config allows it, then
/// checks that every referenced file exists. Returns the files created.
pub fn prepare(config: &Config) -> Result<Vec<PathBuf>, AppError> {
    let mut created = Vec::new();
    if config.dev_generate_missing {
        let dev_dir = config
            .server
            .tls_cert
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("keys/dev"));
        created = crate::pki::ensure_dev_material(&dev_dir, &config.tokens.signing_keys)
            .map_err(AppError::DevMaterial)?;
        for f in &created {
            tracing::info!(path = %f.display(), "generated missing development material ([dev] generate_missing = true)");
        }
    }
    config.check_files()?;
    Ok(created)
}

/// The token signing key ring `[tokens] signing_keys` describes; the error
/// names the key.
fn load_keyring(config: &Config) -> Result<KeyRing, AppError> {
    KeyRing::load_dir(&config.tokens.signing_keys, config.tokens.algorithm)
        .map_err(AppError::SigningKeys)
}

/// What [`load_material`] loaded, and what it could not load yet because
/// `[dev] generate_missing` creates it at start-up.
pub struct Material {
    /// The listener's TLS configuration; `None` while pending.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// One note per part start-up will generate first (empty once
    /// [`prepare`] has run).
    pub pending: Vec<String>,
}

/// Loads the files `serve` needs before it can serve, exactly as `serve`
/// does: the listener's certificate, key and client CAs (a certificate and
/// key that do not match, a CA file without a certificate) and the signing
/// key ring (an empty directory, no usable private key). `serve` and
/// `tessera config check` both call it, so a config that passes the check
/// starts; the error names the config file and the key. Under `[dev] generate_missing` a part whose files are absent (TLS)
/// or whose directory holds no PEM (signing keys) is not loaded but named in
/// [`Material::pending`]: start-up generates it before loading it.
pub fn load_material(config: &Config) -> Result<Material, AppError> {
    load_material_parts(config).map_err(|e| AppError::Material {
        file: config.source.clone(),
        source: Box::new(e),
    })
}

fn load_material_parts(config: &Config) -> Result<Material, AppError> {
    let generated = "will be generated at start-up: [dev] generate_missing = true";
    let mut pending = Vec::new();
    let s = &config.server;
    let absent_tls = [&s.tls_cert, &s.tls_key]
        .into_iter()
        .chain(&s.client_ca)
        .chain(s.trust_domains.values().flatten())
        .find(|p| !p.exists());
    let tls = match absent_tls {
        Some(p) if config.dev_generate_missing => {
            pending.push(format!(
                "server TLS: `{}` does not exist ({generated})",
                p.display()
            ));
            None
        }
        _ => Some(crate::server::tls::server_config(
            &s.tls_cert,
            &s.tls_key,
            &s.client_ca,
            &s.trust_domains,
        )?),
    };
    let signing = &config.tokens.signing_keys;
    if config.dev_generate_missing && !crate::mint::keyring::dir_has_pem(signing).unwrap_or(false) {
        pending.push(format!(
            "tokens.signing_keys: `{}` has no key ({generated})",
            signing.display()
        ));
    } else {
        load_keyring(config)?;
    }
    Ok(Material { tls, pending })
}

/// A running broker.
pub struct Running {
    /// The HTTPS address actually bound.
    pub addr: SocketAddr,
    /// The ops address actually bound.
    pub ops_addr: SocketAddr,
    /// The shared state.
    pub app: AppState,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Marks the broker as draining (`/readyz` → 503), waits `grace` so load
    /// balancers notice, stops accepting (new connections are refused), and
    /// drains in-flight requests for up to `[server] drain_timeout`. Returns
    /// within `grace + drain_timeout` (plus a second for the ops listener).
    pub async fn shutdown(self, grace: Duration) {
        self.app.draining.store(true, Ordering::SeqCst);
        tokio::time::sleep(grace).await;
        tracing::info!("shutdown: the listener closes now; draining in-flight requests");
        let _ = self.shutdown.send(true);
        let drain = self.app.snapshot().config.server.drain_timeout;
        let deadline = tokio::time::Instant::now() + drain + Duration::from_secs(1);
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                tracing::warn!("shutdown: a listener did not stop in time; aborting it");
                t.abort();
            }
        }
    }

    /// [`Running::shutdown`] with the configured `[server] shutdown_grace`.
    pub async fn shutdown_configured(self) {
        let grace = self.app.snapshot().config.server.shutdown_grace;
        self.shutdown(grace).await;
    }
}

/// Builds the app and serves it on the configured addresses.
pub async fn start(config: Config) -> Result<Running, AppError> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// Creates every counter series whose labels are known in advance, at 0,
/// so that `increase()` and `rate()` alerts see the first event (a series
/// born at 1 has no increase). Refusal reasons, store operations and fetch
/// failure kinds are open-ended and appear on first use.
fn export_known_series_at_zero() {
    use crate::exchange::guard::{GuardAction, Trigger};
    let m = crate::telemetry::metrics();
    m.exchanges.with_label_values(&["issued", "ok"]);
    for outcome in ["issued", "refused", "unavailable"] {
        m.exchange_seconds.with_label_values(&[outcome]);
    }
    for e in crate::audit::Event::ALL {
        m.audit_records.with_label_values(&[e.as_str()]);
    }
    for k in crate::revocation::RevocationKind::ALL {
        m.revocations.with_label_values(&[k.as_str()]);
    }
    for e in [
        "requested",
        "approved",
        "denied",
        "redeemed",
        "webhook_failed",
    ] {
        m.approvals.with_label_values(&[e]);
    }
    for a in [
        GuardAction::SlowDown,
        GuardAction::Approval,
        GuardAction::Revoke,
    ] {
        for t in Trigger::ALL {
            m.guard_actions.with_label_values(&[a.as_str(), t.label()]);
        }
    }
    m.jwks_refreshes.with_label_values(&["ok"]);
}

/// [`start`] with an injected clock.
pub async fn start_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Running, AppError> {
    export_known_series_at_zero();
    let material = load_material(&config)?;
    let tls = material.tls.ok_or(AppError::Pending(material.pending))?;
    let listen = config.server.listen;
    let ops_listen = config.server.ops_listen;
    let app: AppState = Arc::new(App::build(config, clock).await?);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| AppError::Bind {
            key: "server.listen",
            addr: listen,
            source: e,
        })?;
    let ops = TcpListener::bind(ops_listen)
        .await
        .map_err(|e| AppError::Bind {
            key: "server.ops_listen",
            addr: ops_listen,
            source: e,
        })?;
    let addr = listener.local_addr().map_err(AppError::LocalAddr)?;
    let ops_addr = ops.local_addr().map_err(AppError::LocalAddr)?;
    let (tx, rx) = watch::channel(false);

    let router = crate::routes::router(app.clone());
    let snap = app.snapshot();
    let limits = snap.config.limits.clone();
    let drain = snap.config.server.drain_timeout;
    let mut rx1 = rx.clone();
    let https = tokio::spawn(async move {
        let stop = async move {
            let _ = rx1.wait_for(|v| *v).await;
        };
        crate::server::serve_https_draining(listener, tls, router, limits, stop, drain).await;
    });
    let ops_router = crate::routes::ops_router(app.clone());
    let mut rx2 = rx;
    let ops_task = tokio::spawn(async move {
        let r = axum::serve(ops, ops_router)
            .with_graceful_shutdown(async move {
                let _ = rx2.wait_for(|v| *v).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "ops listener failed");
        }
    });
    tracing::info!(%addr, %ops_addr, issuer = %snap.config.server.issuer, store = %snap.config.store.display_url(),
        worker_threads = snap.config.server.threads(), "tessera serving");
    drop(snap);
    Ok(Running {
        addr,
        ops_addr,
        app,
        shutdown: tx,
        tasks: vec![https, ops_task],
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::from_toml_str("t.toml", text).unwrap()
    }

    #[test]
    fn restart_only_changes_name_each_key_and_nothing_else() {
        let base = cfg("[tokens]\ndefault_ttl = \"1m\"\n");
        // Reloadable settings are not restart-only.
        let reloadable = cfg("[tokens]\ndefault_ttl = \"2m\"\n[admin]\nsubjects = [\"x\"]\n");
        assert!(restart_only_changes(&base, &reloadable).is_empty());
        let fixed = cfg(
            "[server]\nlisten = \"127.0.0.1:1\"\nshutdown_grace = \"5s\"\n\
             [store]\nprefix = \"other\"\n[limits]\npeer_rate = 0\n[audit]\nsink = \"off\"\n",
        );
        assert_eq!(
            restart_only_changes(&base, &fixed),
            vec![
                "server.listen",
                "server.shutdown_grace",
                "store.prefix",
                "audit.sink",
                "limits.peer_rate"
            ]
        );
    }

    #[test]
    fn reload_diff_reads_as_one_line() {
        let d = ReloadDiff {
            policies_added: vec!["a".into()],
            policies_removed: vec!["b".into(), "c".into()],
            keys_added: vec!["k2".into()],
            signing_kid: Some("k2".into()),
            ..ReloadDiff::default()
        };
        assert_eq!(
            d.to_string(),
            "policies +[a] -[b,c] ~[]; issuers +[] -[] ~[]; keys +[k2] -[]; signing kid now k2"
        );
    }
}
