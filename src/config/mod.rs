// One file: the typed `Config` and its one conversion from `RawConfig`; the
// parser (`raw`), durations, lint and tests already live apart.
//! Configuration: [`RawConfig`] (the TOML as written) → [`Config`] (typed and
//! checked). Every error names the file, the key and the reason.
//!
//! ```
//! let cfg = tessera::config::Config::from_toml_str(
//!     "tessera.toml",
//!     r#"
//!     [tokens]
//!     default_ttl = "2m"
//!     "#,
//! ).unwrap();
//! assert_eq!(cfg.tokens.default_ttl.as_secs(), 120);
//! ```
//!
//! One file for the typed configuration and its validation: every check
//! needs the whole `Config` (cross-section rules such as TTL ceilings and
//! trust domains). The parts with a job of their own are already apart:
//! `raw` (the TOML shape), `lint` (warnings), `tests`; durations are
//! parsed by the leaf module `crate::duration`.

pub(crate) mod lint;
pub(crate) mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Each subsystem owns its settings types; the configuration composes them
/// (and keeps their old paths here).
pub use crate::audit::AuditSink;
/// The duration parser lives in a leaf module (`crate::duration`); its old
/// path stays.
pub(crate) use crate::duration;
pub use crate::duration::{parse_duration, DurationError};
pub use crate::identity::login::ApprovalLogin;
pub use crate::identity::IssuerConfig;
pub use lint::{ConfigWarning, WarningKind};
pub use raw::RawConfig;

use crate::exchange::guard::{GuardAction, GuardConfig, Learned, PolicyActions};
use crate::jose::alg::Algorithm;
use crate::mint::SigningAlgorithm;
use crate::policy::PolicySpec;

/// Longest lifetime any token may be configured to have.
pub const MAX_TOKEN_TTL_CAP: Duration = Duration::from_secs(24 * 3600);
/// The issuer name reserved for client certificates in `match.issuer`
/// (the policy layer owns it).
pub use crate::policy::MTLS_ISSUER;
/// Bounds of `[server] max_clock_step`.
pub const CLOCK_STEP_BOUNDS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);
/// Bounds of `[server] clock_quarantine`.
pub const CLOCK_QUARANTINE_BOUNDS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);
/// Longest `[approvals] ttl`.
pub const MAX_APPROVAL_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest `[guard] window`.
pub const MAX_GUARD_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Most identities `[guard] max_identities` may track.
pub const MAX_GUARD_IDENTITIES: u64 = 10_000_000;
/// Most audiences `[guard] max_audiences` may remember per identity.
pub const MAX_GUARD_AUDIENCES: u64 = 4096;
/// Longest `[server] shutdown_grace`.
pub const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
/// Longest `[server] drain_timeout`.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Most `[server] worker_threads`.
pub const MAX_WORKER_THREADS: u32 = 1024;
/// Longest `[approvals] interval`.
pub const MAX_APPROVAL_INTERVAL: Duration = Duration::from_secs(300);

/// A configuration error: which file, which key, and why.
/// Shown `FILE: KEY: REASON`, or `FILE: REASON` when no key is concerned
/// (the file could not be read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{reason}", if key.is_empty() { String::new() } else { format!("{key}: ") })]
pub struct ConfigError {
    /// The file the error is in.
    pub file: String,
    /// The key (dotted path, `policies[2].match.subject`), `-` for a parse
    /// error, empty when the file itself could not be read.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub source: PathBuf,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[tokens]`.
    pub tokens: TokensConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[admin] subjects`.
    pub admin_subjects: Vec<String>,
    /// `[introspection] subjects`.
    pub introspection_subjects: Vec<String>,
    /// `[introspection] audiences`: identity → audiences it may see active.
    pub introspection_audiences: std::collections::BTreeMap<String, Vec<String>>,
    /// `[approvals] ttl`.
    pub approvals_ttl: Duration,
    /// `[approvals] interval` (zero: no `slow_down`).
    pub approvals_interval: Duration,
    /// `[approvals] webhook` (an `https://` URL).
    pub approvals_webhook: Option<String>,
    /// `[approvals] webhook_ca`.
    pub approvals_webhook_ca: Option<PathBuf>,
    /// `[approvals] login_*`: the approval web pages' sign-in (none: no pages).
    pub approvals_login: Option<ApprovalLogin>,
    /// `policies[].approvers`, by policy name, for the policies that set it.
    pub policy_approvers: std::collections::BTreeMap<String, Vec<String>>,
    /// `[dev] generate_missing`.
    pub dev_generate_missing: bool,
    /// `[dpop] nonce`.
    pub dpop_nonce: bool,
    /// `[limits]`.
    pub limits: Limits,
    /// `[audit]`.
    pub audit: AuditConfig,
    /// `[[issuers]]`.
    pub issuers: Vec<IssuerConfig>,
    /// `[[policies]]`, in file order.
    pub policies: Vec<PolicySpec>,
    /// `[guard]` with the policies' overrides.
    pub guard: GuardConfig,
}

impl Config {
    /// The pipeline's settings, composed from this file (the exchange owns
    /// their shape: [`crate::exchange::Settings`]).
    pub fn exchange_settings(&self) -> crate::exchange::Settings<'_> {
        crate::exchange::Settings {
            issuer: &self.server.issuer,
            default_ttl: self.tokens.default_ttl,
            max_ttl: self.tokens.max_ttl,
            signing_keys: &self.tokens.signing_keys,
            policies: &self.policies,
            dpop_nonce: self.dpop_nonce,
            approvals_ttl: self.approvals_ttl,
            approvals_interval: self.approvals_interval,
            approvals_webhook: self.approvals_webhook.as_deref(),
            approvals_webhook_ca: self.approvals_webhook_ca.as_deref(),
            approval_pages: self.approvals_login.is_some(),
            guard: &self.guard,
        }
    }

    /// Who may decide approvals, from this file (the exchange owns the
    /// rule: `exchange::approval::may_decide`).
    pub(crate) fn approval_rules(&self) -> crate::exchange::approval::Rules<'_> {
        crate::exchange::approval::Rules {
            login: self.approvals_login.as_ref(),
            policy_approvers: &self.policy_approvers,
            policies: &self.policies,
        }
    }
}

/// `[server]`, typed.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// HTTPS listen address.
    pub listen: SocketAddr,
    /// `iss` of issued tokens (no trailing slash).
    pub issuer: String,
    /// Server certificate chain.
    pub tls_cert: PathBuf,
    /// Server key.
    pub tls_key: PathBuf,
    /// Client certificate trust anchors.
    pub client_ca: Vec<PathBuf>,
    /// Ops listener.
    pub ops_listen: SocketAddr,
    /// SPIFFE trust domain → its CA files (empty: any `client_ca` CA may
    /// assert any trust domain).
    pub trust_domains: std::collections::BTreeMap<String, Vec<PathBuf>>,
    /// Largest tolerated wall-clock step relative to monotonic time.
    pub max_clock_step: Duration,
    /// How long minting stops after a larger step.
    pub clock_quarantine: Duration,
    /// On SIGTERM: how long `/readyz` fails before the listener closes.
    pub shutdown_grace: Duration,
    /// On SIGTERM, after the grace: the longest wait for in-flight requests.
    pub drain_timeout: Duration,
    /// Threads serving requests (`0`: one per CPU this process may use; see
    /// [`ServerConfig::threads`]).
    pub worker_threads: usize,
}

impl ServerConfig {
    /// How many threads serve requests: `worker_threads`, or when that is
    /// `0` the CPUs this process may use (its affinity mask and cgroup CPU
    /// quota, as [`std::thread::available_parallelism`] reads them), at
    /// least 1.
    pub fn threads(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }
}

impl StoreConfig {
    /// The URL with any `user:password@` replaced by `***@`, for logs and
    /// `config check` (the URL itself may hold a password).
    ///
    /// ```
    /// # let mut c = tessera::config::Config::from_toml_str("t.toml", "").unwrap();
    /// c.store.url = "redis+sentinel://app:s3cret@10.0.0.1:26379,10.0.0.2:26379/main".into();
    /// assert_eq!(c.store.display_url(), "redis+sentinel://***@10.0.0.1:26379,10.0.0.2:26379/main");
    /// ```
    pub fn display_url(&self) -> String {
        redacted_url(&self.url)
    }
}

/// `scheme://user:password@rest` → `scheme://***@rest`; anything else as is.
/// The authority ends at the first `/`, `?` or `#`; its last `@` ends the
/// user information (so an unencoded `@` in a password is hidden too).
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://***@{}{tail}", &authority[at + 1..]),
        None => url.to_string(),
    }
}

/// `[tokens]`, typed.
#[derive(Debug, Clone)]
pub struct TokensConfig {
    /// Signing key directory.
    pub signing_keys: PathBuf,
    /// Signing algorithm.
    pub algorithm: SigningAlgorithm,
    /// Default lifetime.
    pub default_ttl: Duration,
    /// Lifetime cap.
    pub max_ttl: Duration,
}

/// `[store]`, typed.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Store URL.
    pub url: String,
    /// Key prefix.
    pub prefix: String,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Circuit breaker and revocation acknowledgement settings.
    pub options: crate::store::StoreOptions,
}

/// `[audit]`, typed.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The JSON-lines sink.
    pub sink: AuditSink,
    /// About how many records the store's audit stream keeps.
    pub stream_max_len: u64,
    /// Longest a decision waits for its record.
    pub timeout: Duration,
}

/// Most records `[audit] stream_max_len` may keep.
pub const MAX_AUDIT_STREAM_LEN: u64 = 100_000_000;
/// Longest `[audit] timeout`.
pub const MAX_AUDIT_TIMEOUT: Duration = Duration::from_secs(30);

/// `[limits]`, typed.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request body cap.
    pub max_body_bytes: usize,
    /// Subject/actor token cap.
    pub max_token_bytes: usize,
    /// TLS handshake timeout.
    pub handshake_timeout: Duration,
    /// Header read timeout.
    pub header_read_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Connection cap.
    pub max_connections: usize,
    /// Pre-authentication events (connections + requests) per second per
    /// peer IP; 0: off.
    pub peer_rate: u32,
    /// Burst above `peer_rate`.
    pub peer_burst: u32,
}

impl Default for Limits {
    /// The `[limits]` defaults (see `config/tessera.example.toml`).
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024,
            max_token_bytes: 8 * 1024,
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_connections: 4096,
            peer_rate: 1000,
            peer_burst: 2000,
        }
    }
}

/// Longest `[approvals] session_ttl`.
pub const MAX_APPROVER_SESSION: Duration = Duration::from_secs(3600);
/// Longest `[approvals] max_auth_age`.
pub const MAX_AUTH_AGE: Duration = Duration::from_secs(24 * 3600);

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: String::new(),
            reason: format!("cannot read the config file: {e}"),
        })?;
        let mut cfg = Self::from_toml_str(&file, &text)?;
        cfg.source = path.to_path_buf();
        Ok(cfg)
    }

    /// Parses and validates TOML text; `file` is used in error messages.
    pub fn from_toml_str(file: &str, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|pe| {
                // The key whose value was refused (`server.worker_threads`),
                // when the error is about a value and not the syntax.
                let path = pe.path().to_string();
                let e = pe.into_inner();
                let reason = match e.message().trim() {
                    // toml gives no message for some syntax errors, such as a
                    // control character in a comment (found by fuzzing).
                    "" => "invalid TOML on this line (the parser gave no detail; \
                           a control character in a comment does this)"
                        .to_string(),
                    m => bounded_reason(m),
                };
                let line = toml_error_key(&e, text);
                match path.as_str() {
                    "" | "." | "?" => ConfigError {
                        file: file.to_string(),
                        key: line,
                        reason,
                    },
                    // Both bounded: the path holds the key as written,
                    // which may be a long misspelling.
                    key => ConfigError {
                        file: file.to_string(),
                        key: bounded_reason(key),
                        reason: bounded_reason(&format!("{line}: {reason}")),
                    },
                }
            })?;
        Self::from_raw(file, raw)
    }

    /// Validates a parsed [`RawConfig`]. A reason that quotes a long value
    /// is cut to [`MAX_ERROR_REASON_LEN`] bytes.
    pub fn from_raw(file: &str, raw: RawConfig) -> Result<Config, ConfigError> {
        Self::from_raw_unbounded(file, raw).map_err(|mut e| {
            e.reason = bounded_reason(&e.reason);
            e
        })
    }

    fn from_raw_unbounded(file: &str, raw: RawConfig) -> Result<Config, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        let dur = |key: &str, v: &str| -> Result<Duration, ConfigError> {
            let d = parse_duration(v).map_err(|r| err(key, r.to_string()))?;
            if d.is_zero() {
                return Err(err(key, "must be greater than zero".into()));
            }
            Ok(d)
        };
        let bounded = |key: &str,
                       v: &str,
                       range: &std::ops::RangeInclusive<Duration>|
         -> Result<Duration, ConfigError> {
            let d = parse_duration(v).map_err(|r| err(key, r.to_string()))?;
            if !range.contains(&d) {
                return Err(err(
                    key,
                    format!(
                        "`{v}` is out of bounds: must be between {}s and {}s",
                        range.start().as_secs(),
                        range.end().as_secs()
                    ),
                ));
            }
            Ok(d)
        };
        let addr = |key: &str, v: &str| -> Result<SocketAddr, ConfigError> {
            v.parse()
                .map_err(|_| err(key, format!("`{v}` is not an address like 127.0.0.1:8443")))
        };
        let nonempty_path = |key: &str, v: &str| -> Result<PathBuf, ConfigError> {
            if v.trim().is_empty() {
                return Err(err(key, "must not be empty".into()));
            }
            Ok(PathBuf::from(v))
        };

        // [server]
        let s = &raw.server;
        let issuer = s.issuer.trim_end_matches('/').to_string();
        if !issuer.starts_with("https://") || issuer.len() <= "https://".len() {
            return Err(err(
                "server.issuer",
                format!("`{}` must be an https:// URL", s.issuer),
            ));
        }
        if issuer.contains(['?', '#']) {
            return Err(err(
                "server.issuer",
                "must not contain a query or fragment".into(),
            ));
        }
        if s.client_ca.is_empty() {
            return Err(err(
                "server.client_ca",
                "needs at least one CA file (client certificates are verified against it)".into(),
            ));
        }
        // SPIFFE trust domain → 1..=16 CA files.
        let mut trust_domains = std::collections::BTreeMap::new();
        for (td, files) in &s.trust_domains {
            let key = format!("server.trust_domains.\"{td}\"");
            let valid = crate::identity::spiffe::SpiffeId::parse(&format!("spiffe://{td}/x"))
                .is_ok_and(|id| id.trust_domain() == td);
            if !valid {
                return Err(err(
                    &key,
                    "is not a SPIFFE trust domain name (lower-case letters, digits, `.`, `-`, `_`)"
                        .into(),
                ));
            }
            if files.is_empty() || files.len() > 16 {
                return Err(err(&key, "needs 1 to 16 CA files".into()));
            }
            let paths = files
                .iter()
                .enumerate()
                .map(|(i, p)| nonempty_path(&format!("{key}[{i}]"), p))
                .collect::<Result<Vec<_>, _>>()?;
            trust_domains.insert(td.clone(), paths);
        }
        let server = ServerConfig {
            listen: addr("server.listen", &s.listen)?,
            issuer,
            tls_cert: nonempty_path("server.tls_cert", &s.tls_cert)?,
            tls_key: nonempty_path("server.tls_key", &s.tls_key)?,
            client_ca: s
                .client_ca
                .iter()
                .enumerate()
                .map(|(i, p)| nonempty_path(&format!("server.client_ca[{i}]"), p))
                .collect::<Result<_, _>>()?,
            ops_listen: addr("server.ops_listen", &s.ops_listen)?,
            trust_domains,
            max_clock_step: bounded(
                "server.max_clock_step",
                &s.max_clock_step,
                &CLOCK_STEP_BOUNDS,
            )?,
            clock_quarantine: bounded(
                "server.clock_quarantine",
                &s.clock_quarantine,
                &CLOCK_QUARANTINE_BOUNDS,
            )?,
            shutdown_grace: parse_duration(&s.shutdown_grace)
                .map_err(|r| err("server.shutdown_grace", r.to_string()))?,
            drain_timeout: dur("server.drain_timeout", &s.drain_timeout)?,
            worker_threads: s.worker_threads as usize,
        };
        if s.worker_threads > MAX_WORKER_THREADS {
            return Err(err(
                "server.worker_threads",
                format!(
                    "{} is more than {MAX_WORKER_THREADS}; 0 means one per CPU",
                    s.worker_threads
                ),
            ));
        }
        if server.shutdown_grace > MAX_SHUTDOWN_GRACE {
            return Err(err("server.shutdown_grace", "must be at most 60s".into()));
        }
        if server.drain_timeout < Duration::from_secs(1) || server.drain_timeout > MAX_DRAIN_TIMEOUT
        {
            return Err(err(
                "server.drain_timeout",
                "must be between 1s and 5m".into(),
            ));
        }

        // [tokens]
        let t = &raw.tokens;
        let algorithm: SigningAlgorithm = t.algorithm.parse().map_err(|_| {
            err(
                "tokens.algorithm",
                format!("`{}` is not one of ES256, EdDSA, RS256", t.algorithm),
            )
        })?;
        let default_ttl = dur("tokens.default_ttl", &t.default_ttl)?;
        let max_ttl = dur("tokens.max_ttl", &t.max_ttl)?;
        if max_ttl > MAX_TOKEN_TTL_CAP {
            return Err(err(
                "tokens.max_ttl",
                format!("must be at most {}s", MAX_TOKEN_TTL_CAP.as_secs()),
            ));
        }
        // `max_ttl` is a ceiling (CONTRACT.md: the lifetime is the minimum
        // of every cap): a longer `default_ttl` is capped when a token is
        // minted, with a `config check` warning, not a load error, so that
        // lowering `max_ttl` alone by SIGHUP takes effect at once.
        let tokens = TokensConfig {
            signing_keys: nonempty_path("tokens.signing_keys", &t.signing_keys)?,
            algorithm,
            default_ttl,
            max_ttl,
        };

        // [store]
        let st = &raw.store;
        // The Redis URL rules have one owner, the store's parser: what it
        // refuses here, `serve` would refuse (the reason never shows the URL).
        if !st.url.starts_with("memory://") {
            if let Err(why) = crate::store::redis::StoreUrl::parse(&st.url) {
                let why = why
                    .to_string()
                    .replace("URL must start with", "must start with memory://,");
                return Err(err("store.url", why));
            }
        }
        // The store owns its settings' rules; a prefix or timeout it would
        // refuse at start-up is refused here, naming the key.
        crate::store::check_prefix(&st.prefix).map_err(|e| err("store.prefix", e.to_string()))?;
        let breaker_cooloff = dur("store.breaker_cooloff", &st.breaker_cooloff)?;
        let breaker_cooloff_max = dur("store.breaker_cooloff_max", &st.breaker_cooloff_max)?;
        if breaker_cooloff_max < breaker_cooloff
            || breaker_cooloff_max > crate::store::MAX_BREAKER_COOL_OFF
        {
            return Err(err(
                "store.breaker_cooloff_max",
                format!(
                    "must be at least store.breaker_cooloff and at most {}",
                    lint::fmt_duration(crate::store::MAX_BREAKER_COOL_OFF)
                ),
            ));
        }
        if st.breaker_failures > 1000 {
            return Err(err(
                "store.breaker_failures",
                "must be at most 1000 (0 turns the breaker off)".into(),
            ));
        }
        if st.revocation_replicas > crate::store::MAX_REVOCATION_REPLICAS {
            return Err(err(
                "store.revocation_replicas",
                format!("must be at most {}", crate::store::MAX_REVOCATION_REPLICAS),
            ));
        }
        if st.revocation_replicas > 0 && st.url.starts_with("memory://") {
            return Err(err(
                "store.revocation_replicas",
                "needs a Redis store (memory:// has no replicas)".into(),
            ));
        }
        let revocation_wait = dur("store.revocation_wait", &st.revocation_wait)?;
        if revocation_wait > crate::store::MAX_REVOCATION_WAIT {
            return Err(err(
                "store.revocation_wait",
                format!(
                    "must be at most {}",
                    lint::fmt_duration(crate::store::MAX_REVOCATION_WAIT)
                ),
            ));
        }
        let store = StoreConfig {
            url: st.url.clone(),
            prefix: st.prefix.clone(),
            timeout: {
                let t = dur("store.timeout", &st.timeout)?;
                crate::store::check_timeout(t).map_err(|e| err("store.timeout", e.to_string()))?;
                t
            },
            options: crate::store::StoreOptions {
                breaker: crate::store::breaker::BreakerConfig {
                    failures: st.breaker_failures,
                    cool_off: breaker_cooloff,
                    cool_off_max: breaker_cooloff_max,
                },
                revocation_replicas: st.revocation_replicas,
                revocation_wait,
                block_cache: st.block_cache,
            },
        };

        // [limits]
        let l = &raw.limits;
        if l.max_body_bytes < 1024 || l.max_body_bytes > 16 * 1024 * 1024 {
            return Err(err(
                "limits.max_body_bytes",
                "must be between 1024 and 16777216".into(),
            ));
        }
        if l.max_token_bytes < 512 || l.max_token_bytes > l.max_body_bytes {
            return Err(err(
                "limits.max_token_bytes",
                "must be at least 512 and at most limits.max_body_bytes".into(),
            ));
        }
        if l.max_connections == 0 || l.max_connections > 1_000_000 {
            return Err(err(
                "limits.max_connections",
                "must be between 1 and 1000000".into(),
            ));
        }
        let limits = Limits {
            max_body_bytes: l.max_body_bytes as usize,
            max_token_bytes: l.max_token_bytes as usize,
            handshake_timeout: dur("limits.handshake_timeout", &l.handshake_timeout)?,
            header_read_timeout: dur("limits.header_read_timeout", &l.header_read_timeout)?,
            request_timeout: dur("limits.request_timeout", &l.request_timeout)?,
            max_connections: l.max_connections as usize,
            peer_rate: l.peer_rate,
            peer_burst: l.peer_burst,
        };

        // [audit]
        let a = &raw.audit;
        let sink = match (a.sink.as_str(), &a.path) {
            ("stdout", _) => AuditSink::Stdout,
            ("off", _) => AuditSink::Off,
            ("file", Some(p)) => AuditSink::File(nonempty_path("audit.path", p)?),
            ("file", None) => {
                return Err(err(
                    "audit.path",
                    "is required when audit.sink = \"file\"".into(),
                ))
            }
            (other, _) => {
                return Err(err(
                    "audit.sink",
                    format!("`{other}` is not one of stdout, file, off"),
                ))
            }
        };
        if a.stream_max_len < 1000 || a.stream_max_len > MAX_AUDIT_STREAM_LEN {
            return Err(err(
                "audit.stream_max_len",
                format!("must be between 1000 and {MAX_AUDIT_STREAM_LEN}"),
            ));
        }
        let audit_timeout = dur("audit.timeout", &a.timeout)?;
        if audit_timeout > MAX_AUDIT_TIMEOUT {
            return Err(err("audit.timeout", "must be at most 30s".into()));
        }
        let audit = AuditConfig {
            sink,
            stream_max_len: a.stream_max_len,
            timeout: audit_timeout,
        };

        // [[issuers]]
        let mut issuers: Vec<IssuerConfig> = Vec::new();
        for (i, ri) in raw.issuers.iter().enumerate() {
            let k = |f: &str| format!("issuers[{i}].{f}");
            if ri.name.is_empty()
                || !ri
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(err(
                    &k("name"),
                    "must be non-empty and use only letters, digits, '-', '_' and '.'".into(),
                ));
            }
            if ri.name == MTLS_ISSUER {
                return Err(err(
                    &k("name"),
                    "`mtls` is reserved for client certificates".into(),
                ));
            }
            if issuers.iter().any(|x| x.name == ri.name) {
                return Err(err(&k("name"), format!("`{}` is used twice", ri.name)));
            }
            if !ri.issuer.starts_with("https://") {
                return Err(err(&k("issuer"), "must be an https:// URL".into()));
            }
            if ri.issuer.trim_end_matches('/') == server.issuer {
                return Err(err(
                    &k("issuer"),
                    "must differ from server.issuer (Tessera's own tokens are trusted without configuration)"
                        .into(),
                ));
            }
            if issuers.iter().any(|x| x.issuer == ri.issuer) {
                return Err(err(
                    &k("issuer"),
                    "the same issuer is configured twice".into(),
                ));
            }
            if ri.audiences.is_empty() || ri.audiences.iter().any(|a| a.is_empty()) {
                return Err(err(
                    &k("audiences"),
                    "needs at least one non-empty audience (tokens without a matching aud are refused)"
                        .into(),
                ));
            }
            if let Some(u) = &ri.jwks_uri {
                if !u.starts_with("https://") {
                    return Err(err(&k("jwks_uri"), "must be an https:// URL".into()));
                }
            }
            let algs = ri
                .algorithms
                .clone()
                .unwrap_or_else(|| vec!["RS256".into(), "ES256".into()]);
            if algs.is_empty() {
                return Err(err(&k("algorithms"), "must not be empty".into()));
            }
            let mut algorithms = Vec::new();
            for (j, a) in algs.iter().enumerate() {
                let parsed: Algorithm = a.parse().map_err(|_| {
                    err(
                        &k(&format!("algorithms[{j}]")),
                        format!("`{a}` is not an accepted signature algorithm (never none or HS*)"),
                    )
                })?;
                algorithms.push(parsed);
            }
            issuers.push(IssuerConfig {
                name: ri.name.clone(),
                issuer: ri.issuer.clone(),
                audiences: ri.audiences.clone(),
                jwks_uri: ri.jwks_uri.clone(),
                ca: ri.ca.as_deref().map(PathBuf::from),
                algorithms,
                single_use: ri.single_use,
                max_token_lifetime: dur(&k("max_token_lifetime"), &ri.max_token_lifetime)?,
                leeway: parse_duration(&ri.leeway).map_err(|r| err(&k("leeway"), r.to_string()))?,
                jwks_refresh_cooldown: bounded(
                    &k("jwks_refresh_cooldown"),
                    &ri.jwks_refresh_cooldown,
                    &crate::jwks::REFRESH_COOLDOWN_BOUNDS,
                )?,
                jwks_max_stale: bounded(
                    &k("jwks_max_stale"),
                    &ri.jwks_max_stale,
                    &crate::jwks::MAX_STALE_BOUNDS,
                )?,
                bearer_token_file: ri.bearer_token_file.as_deref().map(PathBuf::from),
            });
        }

        // [guard]
        let g = &raw.guard;
        let action = |key: &str, v: &str| -> Result<GuardAction, ConfigError> {
            v.parse()
                .map_err(|r: crate::exchange::guard::UnknownAction| err(key, r.to_string()))
        };
        let guard_window = dur("guard.window", &g.window)?;
        if guard_window > MAX_GUARD_WINDOW {
            return Err(err("guard.window", "must be at most 24h".into()));
        }
        if g.learn && (g.learn_multiplier < 2 || g.learn_warmup == 0 || g.learn_floor == 0) {
            return Err(err(
                "guard.learn_multiplier",
                "with learn = true: learn_multiplier >= 2, learn_warmup >= 1 and learn_floor >= 1"
                    .into(),
            ));
        }
        if g.max_identities == 0 || g.max_identities > MAX_GUARD_IDENTITIES {
            return Err(err(
                "guard.max_identities",
                format!("must be between 1 and {MAX_GUARD_IDENTITIES}"),
            ));
        }
        if g.max_audiences == 0 || g.max_audiences > MAX_GUARD_AUDIENCES {
            return Err(err(
                "guard.max_audiences",
                format!("must be between 1 and {MAX_GUARD_AUDIENCES}"),
            ));
        }
        let on_refusal_streak = action("guard.on_refusal_streak", &g.on_refusal_streak)?;
        let guard_defaults = PolicyActions {
            on_rate: action("guard.on_rate", &g.on_rate)?,
            on_new_audience: action("guard.on_new_audience", &g.on_new_audience)?,
        };
        let mut guard_policies = std::collections::HashMap::new();

        // [[policies]]
        let known_issuer = |n: &str| n == MTLS_ISSUER || issuers.iter().any(|x| x.name == n);
        let mut policies = Vec::new();
        for (i, rp) in raw.policies.iter().enumerate() {
            let k = |f: &str| format!("policies[{i}].{f}");
            if !known_issuer(&rp.match_.issuer) {
                return Err(err(
                    &k("match.issuer"),
                    format!(
                        "`{}` is neither `mtls` nor the name of an [[issuers]] entry",
                        rp.match_.issuer
                    ),
                ));
            }
            for (j, n) in rp.may_act_for.iter().enumerate() {
                if !known_issuer(n) {
                    return Err(err(
                        &k(&format!("may_act_for[{j}]")),
                        format!("`{n}` is neither `mtls` nor the name of an [[issuers]] entry"),
                    ));
                }
            }
            let max_ttl = match &rp.max_ttl {
                // Above `[tokens] max_ttl` it is capped at minting (and
                // warned about), not refused: see `[tokens]` above.
                Some(v) => Some(dur(&k("max_ttl"), v)?),
                None => None,
            };
            if let Some(pg) = &rp.guard {
                let base = guard_defaults;
                let pa = PolicyActions {
                    on_rate: match &pg.on_rate {
                        Some(v) => action(&k("guard.on_rate"), v)?,
                        None => base.on_rate,
                    },
                    on_new_audience: match &pg.on_new_audience {
                        Some(v) => action(&k("guard.on_new_audience"), v)?,
                        None => base.on_new_audience,
                    },
                };
                guard_policies.insert(rp.name.clone(), pa);
            }
            policies.push(PolicySpec {
                name: rp.name.clone(),
                owner: rp.owner.clone(),
                match_issuer: rp.match_.issuer.clone(),
                match_subject: rp.match_.subject.clone(),
                match_claims: rp
                    .match_
                    .claims
                    .iter()
                    .map(|(a, b)| (a.clone(), b.clone()))
                    .collect(),
                audiences: rp.audiences.clone(),
                scopes: rp.scopes.clone(),
                max_ttl,
                jit_scopes: rp.jit_scopes.clone(),
                approval_scopes: rp.approval_scopes.clone(),
                may_act_for: rp.may_act_for.clone(),
                max_depth: rp.max_depth,
                require_authorization_details: rp.require_authorization_details,
                require_binding: rp.require_binding,
            });
        }
        // Compile once here so pattern errors surface with the file name.
        crate::policy::PolicySet::compile(policies.clone()).map_err(|e| ConfigError {
            file: file.to_string(),
            key: "policies".into(),
            reason: e.to_string(),
        })?;

        let guard = GuardConfig {
            enabled: g.enabled,
            window: guard_window.as_secs().max(1),
            max_rate: g.max_rate,
            learned: g.learn.then_some(Learned {
                multiplier: g.learn_multiplier,
                warmup: g.learn_warmup,
                floor: g.learn_floor,
            }),
            actions: guard_defaults,
            refusal_streak: g.refusal_streak,
            on_refusal_streak,
            cooldown: dur("guard.cooldown", &g.cooldown)?.as_secs().max(1),
            block_for: dur("guard.block_for", &g.block_for)?.as_secs().max(1),
            max_identities: g.max_identities as usize,
            max_audiences: g.max_audiences as usize,
            policies: guard_policies,
        };

        // [approvals]
        let approvals_ttl = dur("approvals.ttl", &raw.approvals.ttl)?;
        if approvals_ttl > MAX_APPROVAL_TTL {
            return Err(err("approvals.ttl", "must be at most 24h".into()));
        }
        let approvals_interval = parse_duration(&raw.approvals.interval)
            .map_err(|r| err("approvals.interval", r.to_string()))?;
        if approvals_interval > MAX_APPROVAL_INTERVAL {
            return Err(err("approvals.interval", "must be at most 5m".into()));
        }
        if let Some(w) = &raw.approvals.webhook {
            let ok = reqwest::Url::parse(w).is_ok_and(|u| {
                u.scheme() == "https"
                    && u.host().is_some()
                    && u.username().is_empty()
                    && u.password().is_none()
                    && u.fragment().is_none()
            });
            if !ok {
                return Err(err(
                    "approvals.webhook",
                    "must be an https:// URL without credentials or fragment".into(),
                ));
            }
        }
        let approvals_webhook_ca = match &raw.approvals.webhook_ca {
            Some(p) => {
                if raw.approvals.webhook.is_none() {
                    return Err(err(
                        "approvals.webhook_ca",
                        "is only used with approvals.webhook".into(),
                    ));
                }
                Some(nonempty_path("approvals.webhook_ca", p)?)
            }
            None => None,
        };

        let (approvals_login, policy_approvers) = approval_login(file, &raw, &issuers)?;

        Ok(Config {
            source: PathBuf::from(file),
            server,
            tokens,
            store,
            admin_subjects: raw.admin.subjects.clone(),
            introspection_subjects: raw.introspection.subjects.clone(),
            introspection_audiences: raw.introspection.audiences.clone(),
            approvals_ttl,
            approvals_interval,
            approvals_webhook: raw.approvals.webhook.clone(),
            approvals_webhook_ca,
            approvals_login,
            policy_approvers,
            dev_generate_missing: raw.dev.generate_missing,
            dpop_nonce: raw.dpop.nonce,
            limits,
            audit,
            issuers,
            policies,
            guard,
        })
    }

    /// Every file the config refers to, with the key that names it.
    pub fn referenced_files(&self) -> Vec<(String, PathBuf)> {
        let mut v = vec![
            ("server.tls_cert".to_string(), self.server.tls_cert.clone()),
            ("server.tls_key".to_string(), self.server.tls_key.clone()),
        ];
        for (i, p) in self.server.client_ca.iter().enumerate() {
            v.push((format!("server.client_ca[{i}]"), p.clone()));
        }
        for (td, files) in &self.server.trust_domains {
            for (i, p) in files.iter().enumerate() {
                v.push((format!("server.trust_domains.\"{td}\"[{i}]"), p.clone()));
            }
        }
        v.push((
            "tokens.signing_keys".to_string(),
            self.tokens.signing_keys.clone(),
        ));
        if let Some(ca) = &self.approvals_webhook_ca {
            v.push(("approvals.webhook_ca".to_string(), ca.clone()));
        }
        if let Some(ca) = crate::store::redis::StoreUrl::parse(&self.store.url)
            .ok()
            .and_then(|u| u.ca_file())
        {
            v.push(("store.url (?ca=)".to_string(), ca));
        }
        if let Some(f) = self
            .approvals_login
            .as_ref()
            .and_then(|l| l.client_secret_file.as_ref())
        {
            v.push(("approvals.login_client_secret_file".to_string(), f.clone()));
        }
        for (i, is) in self.issuers.iter().enumerate() {
            if let Some(ca) = &is.ca {
                v.push((format!("issuers[{i}].ca"), ca.clone()));
            }
            if let Some(t) = &is.bearer_token_file {
                v.push((format!("issuers[{i}].bearer_token_file"), t.clone()));
            }
        }
        v
    }

    /// Checks that every referenced file exists; the error names the key and path.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        for (key, path) in self.referenced_files() {
            if !path.exists() {
                return Err(ConfigError {
                    file: self.source.display().to_string(),
                    key,
                    reason: format!("`{}` does not exist", path.display()),
                });
            }
        }
        Ok(())
    }
}

/// The `[approvals] login_*` settings and every policy's `approvers`,
/// validated together: approvers need a login issuer, `group:` entries need
/// a groups claim, and the login issuer must accept the client id as `aud`.
type LoginSettings = (
    Option<ApprovalLogin>,
    std::collections::BTreeMap<String, Vec<String>>,
);

fn approval_login(
    file: &str,
    raw: &RawConfig,
    issuers: &[IssuerConfig],
) -> Result<LoginSettings, ConfigError> {
    let err = |key: &str, reason: String| ConfigError {
        file: file.to_string(),
        key: key.to_string(),
        reason,
    };
    let a = &raw.approvals;
    let login = match &a.login_issuer {
        None => {
            for (key, set) in [
                ("approvals.login_client_id", a.login_client_id.is_some()),
                (
                    "approvals.login_client_secret_file",
                    a.login_client_secret_file.is_some(),
                ),
                ("approvals.groups_claim", a.groups_claim.is_some()),
            ] {
                if set {
                    return Err(err(key, "is only used with approvals.login_issuer".into()));
                }
            }
            None
        }
        Some(name) => {
            let Some(is) = issuers.iter().find(|i| &i.name == name) else {
                return Err(err(
                    "approvals.login_issuer",
                    format!("`{name}` is not the name of an [[issuers]] entry"),
                ));
            };
            let client_id = match a.login_client_id.as_deref() {
                Some(c) if !c.trim().is_empty() => c.to_string(),
                _ => {
                    return Err(err(
                        "approvals.login_client_id",
                        "is required with approvals.login_issuer".into(),
                    ))
                }
            };
            if !is.audiences.iter().any(|x| x == &client_id) {
                return Err(err(
                    "approvals.login_client_id",
                    format!(
                        "the ID token's aud is the client id: add `{client_id}` to the audiences of issuer `{name}`"
                    ),
                ));
            }
            if a.approver_claim.trim().is_empty() {
                return Err(err("approvals.approver_claim", "must not be empty".into()));
            }
            if a.groups_claim
                .as_deref()
                .is_some_and(|g| g.trim().is_empty())
            {
                return Err(err("approvals.groups_claim", "must not be empty".into()));
            }
            if a.require_mfa && a.mfa_amr.iter().all(|m| m.trim().is_empty()) {
                return Err(err(
                    "approvals.mfa_amr",
                    "must name at least one amr value while require_mfa = true".into(),
                ));
            }
            let d = |key: &str, v: &str, max: Duration| -> Result<Duration, ConfigError> {
                let x = parse_duration(v).map_err(|r| err(key, r.to_string()))?;
                if x.is_zero() || x > max {
                    return Err(err(
                        key,
                        format!("must be greater than zero and at most {}s", max.as_secs()),
                    ));
                }
                Ok(x)
            };
            let client_secret_file = match &a.login_client_secret_file {
                Some(p) if p.trim().is_empty() => {
                    return Err(err(
                        "approvals.login_client_secret_file",
                        "must not be empty".into(),
                    ))
                }
                Some(p) => Some(PathBuf::from(p)),
                None => None,
            };
            Some(ApprovalLogin {
                issuer_name: name.clone(),
                issuer: is.issuer.clone(),
                client_id,
                client_secret_file,
                approver_claim: a.approver_claim.clone(),
                groups_claim: a.groups_claim.clone(),
                require_mfa: a.require_mfa,
                mfa_amr: a.mfa_amr.clone(),
                max_auth_age: d("approvals.max_auth_age", &a.max_auth_age, MAX_AUTH_AGE)?,
                session_ttl: d(
                    "approvals.session_ttl",
                    &a.session_ttl,
                    MAX_APPROVER_SESSION,
                )?,
            })
        }
    };
    let mut approvers = std::collections::BTreeMap::new();
    for (i, p) in raw.policies.iter().enumerate() {
        let Some(list) = &p.approvers else { continue };
        let key = format!("policies[{i}].approvers");
        if login.is_none() {
            return Err(err(
                &key,
                "approvers sign in through [approvals] login_issuer: set it".into(),
            ));
        }
        if list.is_empty() {
            return Err(err(
                &key,
                "must name at least one approver (omit it to default to the owner)".into(),
            ));
        }
        for (j, e) in list.iter().enumerate() {
            let k = format!("{key}[{j}]");
            if e.trim().is_empty() || e.trim() != e {
                return Err(err(
                    &k,
                    "must be a non-empty name without surrounding spaces".into(),
                ));
            }
            if let Some(g) = e.strip_prefix("group:") {
                if g.is_empty() {
                    return Err(err(&k, "`group:` needs a group name".into()));
                }
                if login.as_ref().is_some_and(|l| l.groups_claim.is_none()) {
                    return Err(err(
                        &k,
                        "group approvers need [approvals] groups_claim".into(),
                    ));
                }
            }
        }
        approvers.insert(p.name.clone(), list.clone());
    }
    Ok((login, approvers))
}

/// Longest `reason` of a [`ConfigError`]. Errors quote the offending value;
/// a long one is not echoed whole (found by fuzzing: a 400-byte `issuer`
/// came back in full).
pub const MAX_ERROR_REASON_LEN: usize = 240;

/// `reason` unchanged if short; else its start and its end (where the cause
/// is named, as in "`…` must be an https:// URL") around an ellipsis.
fn bounded_reason(reason: &str) -> String {
    if reason.len() <= MAX_ERROR_REASON_LEN {
        return reason.to_string();
    }
    let mut head = 120;
    while !reason.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = reason.len() - 100;
    while !reason.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{} … {}",
        reason.get(..head).unwrap_or_default(),
        reason.get(tail..).unwrap_or_default()
    )
}

/// Where a TOML error is: `line N` (the message itself names the key).
fn toml_error_key(e: &toml::de::Error, text: &str) -> String {
    match e.span() {
        Some(span) => {
            let upto = text.get(..span.start).unwrap_or(text);
            format!("line {}", upto.matches('\n').count() + 1)
        }
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests;
