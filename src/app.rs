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

/// Everything a request needs.
pub struct App {
    /// The validated configuration.
    pub config: Config,
    /// The exchange pipeline.
    pub exchanger: Exchanger,
    /// Signing keys (published at `/jwks.json`).
    pub keyring: Arc<KeyRing>,
    /// The minter (newest key of the configured algorithm).
    pub minter: Arc<TokenMinter>,
    /// The stores.
    pub stores: Stores,
    /// Verifies tokens Tessera issued (introspection, revocation).
    pub own_tokens: Arc<crate::identity::own::OwnTokenVerifier>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Whether the wall clock can be trusted to mint (`/readyz`, `/token`).
    pub clock_trust: Arc<ClockTrust>,
    /// Set when shutdown began: `/readyz` answers 503.
    pub draining: AtomicBool,
    /// The audit trail.
    pub auditor: Auditor,
}

/// Shared handle to the [`App`].
pub type AppState = Arc<App>;

impl App {
    /// Loads keys, opens the store and builds the pipeline.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> Result<App, String> {
        // Trust that is valid but too wide: one line each, as `config check` says.
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
        let keyring = Arc::new(
            KeyRing::load_dir(&config.tokens.signing_keys, config.tokens.algorithm)
                .map_err(|e| format!("tokens.signing_keys: {e}"))?,
        );
        let minter = Arc::new(TokenMinter::new(keyring.clone()));
        let stores = Stores::open_with(
            &config.store.url,
            &config.store.prefix,
            config.store.timeout,
            &config.store.options,
        )
        .await
        .map_err(|e| format!("store.url: {e}"))?;
        let mut issuers = Vec::new();
        for i in &config.issuers {
            issuers.push(Arc::new(IssuerVerifier::new(i.clone(), clock.clone())?));
        }
        let own_tokens = Arc::new(crate::identity::own::OwnTokenVerifier::new(
            &config.server.issuer,
            &keyring,
        )?);
        let auditor = Auditor::start(
            &config.audit.sink,
            Some((stores.audit.clone(), config.audit.stream_max_len)),
            config.audit.timeout,
        )
        .map_err(|e| format!("audit.path: {e}"))?;
        let exchanger = Exchanger::new(
            &config,
            issuers,
            minter.clone(),
            own_tokens.clone(),
            stores.clone(),
            clock.clone(),
        )?;
        let clock_trust = Arc::new(ClockTrust::new(
            clock.clone(),
            config.server.max_clock_step,
            config.server.clock_quarantine,
        ));
        clock_trust.spawn_monitor();
        let exchanger = exchanger.with_clock_trust(clock_trust.clone());
        // The first record of every start: which configuration is in force.
        let rec = AuditRecord::new(Event::ConfigLoaded)
            .detail(&config_summary(&config))
            .reason("startup");
        if let Err(e) = auditor.record(rec).await {
            // The store may be down at start-up (the broker starts anyway and
            // fails closed until it answers); a file sink that cannot be
            // written is an error.
            if matches!(config.audit.sink, crate::config::AuditSink::File(_)) {
                return Err(format!("audit.path: the first audit record failed: {e}"));
            }
            tracing::warn!(error = %e, "the config_loaded audit record could not be written");
        }
        Ok(App {
            config,
            exchanger,
            keyring,
            minter,
            stores,
            own_tokens,
            clock,
            clock_trust,
            draining: AtomicBool::new(false),
            auditor,
        })
    }
}

/// `file=… sha256=… policies=N issuers=N store=…` for the `config_loaded`
/// record (the store URL without credentials).
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
pub fn prepare(config: &Config) -> Result<Vec<PathBuf>, String> {
    let mut created = Vec::new();
    if config.dev_generate_missing {
        let dev_dir = config
            .server
            .tls_cert
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("keys/dev"));
        created = crate::pki::ensure_dev_material(&dev_dir, &config.tokens.signing_keys)
            .map_err(|e| format!("generating development material: {e}"))?;
        for f in &created {
            tracing::info!(path = %f.display(), "generated missing development material ([dev] generate_missing = true)");
        }
    }
    config.check_files().map_err(|e| e.to_string())?;
    Ok(created)
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
    /// balancers notice, stops accepting, and drains in-flight requests.
    pub async fn shutdown(self, grace: Duration) {
        self.app.draining.store(true, Ordering::SeqCst);
        tokio::time::sleep(grace).await;
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Builds the app and serves it on the configured addresses.
pub async fn start(config: Config) -> Result<Running, String> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// [`start`] with an injected clock.
pub async fn start_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Running, String> {
    let tls = crate::server::tls::server_config(
        &config.server.tls_cert,
        &config.server.tls_key,
        &config.server.client_ca,
        &config.server.trust_domains,
    )?;
    let listen = config.server.listen;
    let ops_listen = config.server.ops_listen;
    let app: AppState = Arc::new(App::build(config, clock).await?);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("server.listen: cannot bind {listen}: {e}"))?;
    let ops = TcpListener::bind(ops_listen)
        .await
        .map_err(|e| format!("server.ops_listen: cannot bind {ops_listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let ops_addr = ops.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = watch::channel(false);

    let router = crate::routes::router(app.clone());
    let limits = app.config.limits.clone();
    let mut rx1 = rx.clone();
    let https = tokio::spawn(async move {
        crate::server::serve_https(listener, tls, router, limits, async move {
            let _ = rx1.wait_for(|v| *v).await;
        })
        .await;
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
    tracing::info!(%addr, %ops_addr, issuer = %app.config.server.issuer, store = %app.config.store.url, "tessera serving");
    Ok(Running {
        addr,
        ops_addr,
        app,
        shutdown: tx,
        tasks: vec![https, ops_task],
    })
}
