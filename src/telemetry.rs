//! Logging set-up and Prometheus metrics (served on the ops listener).
//! Tokens and keys are never logged: log `jti` and [`token_hash`].

use std::sync::OnceLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric Tessera exports.
pub struct Metrics {
    registry: Registry,
    /// `tessera_exchanges_total{outcome, reason}`.
    pub exchanges: IntCounterVec,
    /// `tessera_exchange_duration_seconds{outcome}`.
    pub exchange_seconds: HistogramVec,
    /// `tessera_tls_handshake_failures_total`.
    pub handshake_failures: IntCounter,
    /// `tessera_connections_refused_total` (connection cap).
    pub connections_refused: IntCounter,
    /// `tessera_revocations_total{kind}`.
    pub revocations: IntCounterVec,
    /// `tessera_jit_grants_consumed_total`.
    pub grants_consumed: IntCounter,
    /// `tessera_approvals_total{event}`: `requested`, `approved`, `denied`,
    /// `redeemed`, `webhook_failed`.
    pub approvals: IntCounterVec,
    /// `tessera_audit_records_total{event}`: records written to every sink.
    pub audit_records: IntCounterVec,
    /// `tessera_audit_failures_total`: records that could not be written.
    pub audit_failures: IntCounter,
    /// `tessera_store_duration_seconds{op}`: time of each Redis operation.
    pub store_seconds: HistogramVec,
    /// `tessera_store_errors_total{op,kind}`: failed store operations
    /// (`unavailable` or `protocol`).
    pub store_errors: IntCounterVec,
    /// `tessera_store_breaker_open`: 1 while the store's circuit breaker
    /// is open or half-open (calls fail fast), else 0.
    pub store_breaker_open: IntGauge,
    /// `tessera_store_epoch_lost`: 1 while the store is marked as having
    /// lost its data (its data epoch vanished or changed; see
    /// `store::epoch`): everything fails closed until `tessera store recover`.
    pub store_epoch_lost: IntGauge,
    /// `tessera_store_fast_failures_total{op}`: store calls refused at once
    /// by the open circuit breaker, without touching Redis.
    pub store_fast_failures: IntCounterVec,
    /// `tessera_store_block_cache_lookups_total{result}`: subject block
    /// checks answered by the block cache (`hit`), read from Redis and
    /// cached (`miss`), or read from Redis with the cache off (`off`);
    /// indexed in that order.
    pub block_cache_lookups: [IntCounter; 3],
    /// `tessera_store_block_cache_live`: 1 while the block cache answers
    /// (its tracking connection is up and checked), else 0.
    pub block_cache_live: IntGauge,
    /// `tessera_jwks_refreshes_total{outcome}`: JWKS fetches of trusted
    /// issuers, `ok` or the failure reason.
    pub jwks_refreshes: IntCounterVec,
    /// `tessera_approvals_pending`: approvals waiting for a human (updated
    /// when `/metrics` is scraped).
    pub approvals_pending: IntGauge,
    /// `tessera_peer_rate_limited_total`: connections closed and requests
    /// answered 429 by the pre-authentication limit.
    pub peer_rate_limited: IntCounter,
    /// `tessera_guard_actions_total{action, trigger}`: what the anomaly
    /// guard did (`slow_down`, `approval`, `revoke`) and why (`rate`,
    /// `rate_learned`, `new_audience`, `refusal_streak`).
    pub guard_actions: IntCounterVec,
    /// `tessera_config_reloads_total{outcome}`: configuration reloads
    /// (SIGHUP), `ok` or `rejected` (the configuration in force stayed).
    pub config_reloads: IntCounterVec,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let exchanges = IntCounterVec::new(
        Opts::new(
            "tessera_exchanges_total",
            "Token exchanges by outcome and reason",
        ),
        &["outcome", "reason"],
    )?;
    let exchange_seconds = HistogramVec::new(
        HistogramOpts::new("tessera_exchange_duration_seconds", "Time to answer /token").buckets(
            vec![
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ],
        ),
        &["outcome"],
    )?;
    let handshake_failures = IntCounter::new(
        "tessera_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out",
    )?;
    let connections_refused = IntCounter::new(
        "tessera_connections_refused_total",
        "Connections closed because the connection cap was reached",
    )?;
    let revocations = IntCounterVec::new(
        Opts::new("tessera_revocations_total", "Revocations recorded, by kind"),
        &["kind"],
    )?;
    let grants_consumed = IntCounter::new(
        "tessera_jit_grants_consumed_total",
        "Uses of just-in-time grants consumed by exchanges",
    )?;
    let approvals = IntCounterVec::new(
        Opts::new(
            "tessera_approvals_total",
            "Human approvals requested, decided and redeemed, and failed webhook deliveries",
        ),
        &["event"],
    )?;
    registry.register(Box::new(approvals.clone()))?;
    let audit_records = IntCounterVec::new(
        Opts::new(
            "tessera_audit_records_total",
            "Audit records written to every sink, by event",
        ),
        &["event"],
    )?;
    let audit_failures = IntCounter::new(
        "tessera_audit_failures_total",
        "Audit records that could not be written (the decision failed closed)",
    )?;
    let store_seconds = HistogramVec::new(
        HistogramOpts::new(
            "tessera_store_duration_seconds",
            "Time of each shared-store (Redis) operation",
        )
        .buckets(vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ]),
        &["op"],
    )?;
    let store_errors = IntCounterVec::new(
        Opts::new(
            "tessera_store_errors_total",
            "Failed shared-store operations, by operation and kind",
        ),
        &["op", "kind"],
    )?;
    let jwks_refreshes = IntCounterVec::new(
        Opts::new(
            "tessera_jwks_refreshes_total",
            "JWKS fetches of trusted issuers, by outcome (ok or the failure reason)",
        ),
        &["outcome"],
    )?;
    let approvals_pending = IntGauge::new(
        "tessera_approvals_pending",
        "Approvals waiting for a human decision (as of the last scrape)",
    )?;
    let peer_rate_limited = IntCounter::new(
        "tessera_peer_rate_limited_total",
        "Connections closed and requests answered 429 by the per-peer pre-authentication limit",
    )?;
    registry.register(Box::new(peer_rate_limited.clone()))?;
    registry.register(Box::new(store_seconds.clone()))?;
    registry.register(Box::new(store_errors.clone()))?;
    let store_breaker_open = IntGauge::new(
        "tessera_store_breaker_open",
        "1 while the store circuit breaker is open (calls fail fast without touching Redis)",
    )?;
    let store_fast_failures = IntCounterVec::new(
        Opts::new(
            "tessera_store_fast_failures_total",
            "Store calls refused at once by the open circuit breaker, by operation",
        ),
        &["op"],
    )?;
    registry.register(Box::new(store_breaker_open.clone()))?;
    let store_epoch_lost = IntGauge::new(
        "tessera_store_epoch_lost",
        "1 while the store is marked as having lost its data (its data epoch vanished or changed): every call fails closed until `tessera store recover`",
    )?;
    registry.register(Box::new(store_epoch_lost.clone()))?;
    registry.register(Box::new(store_fast_failures.clone()))?;
    let lookups = IntCounterVec::new(
        Opts::new(
            "tessera_store_block_cache_lookups_total",
            "Subject block checks: answered by the block cache (hit), read from Redis and \
             cached (miss), or read from Redis with the cache off (off)",
        ),
        &["result"],
    )?;
    registry.register(Box::new(lookups.clone()))?;
    let block_cache_lookups = [
        lookups.with_label_values(&["hit"]),
        lookups.with_label_values(&["miss"]),
        lookups.with_label_values(&["off"]),
    ];
    let block_cache_live = IntGauge::new(
        "tessera_store_block_cache_live",
        "1 while the subject block cache answers (its Redis tracking connection is up), else 0",
    )?;
    registry.register(Box::new(block_cache_live.clone()))?;
    registry.register(Box::new(jwks_refreshes.clone()))?;
    registry.register(Box::new(approvals_pending.clone()))?;
    let guard_actions = IntCounterVec::new(
        Opts::new(
            "tessera_guard_actions_total",
            "Actions of the anomaly guard, by action and trigger",
        ),
        &["action", "trigger"],
    )?;
    registry.register(Box::new(guard_actions.clone()))?;
    let config_reloads = IntCounterVec::new(
        Opts::new(
            "tessera_config_reloads_total",
            "Configuration reloads by outcome (ok, or rejected: the configuration in force stayed)",
        ),
        &["outcome"],
    )?;
    registry.register(Box::new(config_reloads.clone()))?;
    // Both series exist from the start (at 0), so an alert on `rejected`
    // needs no `absent()`.
    for outcome in ["ok", "rejected"] {
        config_reloads.with_label_values(&[outcome]);
    }
    registry.register(Box::new(audit_records.clone()))?;
    registry.register(Box::new(audit_failures.clone()))?;
    registry.register(Box::new(revocations.clone()))?;
    registry.register(Box::new(grants_consumed.clone()))?;
    registry.register(Box::new(exchanges.clone()))?;
    registry.register(Box::new(exchange_seconds.clone()))?;
    registry.register(Box::new(handshake_failures.clone()))?;
    registry.register(Box::new(connections_refused.clone()))?;
    Ok(Metrics {
        registry,
        exchanges,
        exchange_seconds,
        handshake_failures,
        connections_refused,
        revocations,
        grants_consumed,
        approvals,
        audit_records,
        audit_failures,
        store_seconds,
        store_errors,
        store_breaker_open,
        store_epoch_lost,
        store_fast_failures,
        block_cache_lookups,
        block_cache_live,
        jwks_refreshes,
        approvals_pending,
        peer_rate_limited,
        guard_actions,
        config_reloads,
    })
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| match build() {
        Ok(m) => m,
        // Metric names are constants: this cannot fail at run time.
        Err(e) => unreachable!("metric registration failed: {e}"),
    })
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A short SHA-256 hash of a token for logs (first 16 hex characters).
///
/// ```
/// assert_eq!(tessera::telemetry::token_hash("abc").len(), 16);
/// ```
pub fn token_hash(token: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    d.as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Neutralises control characters (and caps length) before a value reaches a log line.
pub fn log_safe(s: &str) -> String {
    s.chars().take(256).flat_map(char::escape_default).collect()
}

/// Installs the tracing subscriber (`RUST_LOG` filters; default `info`).
/// `TESSERA_LOG_FORMAT=json` switches to JSON lines. Lines are written by a
/// background thread through a buffer that is flushed whenever the queue
/// drains, so a request never waits on a write syscall; keep the returned
/// guard alive until exit so buffered lines are flushed.
pub fn init_logging() -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("TESSERA_LOG_FORMAT").is_ok_and(|v| v == "json");
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Never drop audit lines: block (briefly) rather than lose them.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let r = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
    r.ok().map(|_| guard)
}

/// Log lines queued for the writer thread before callers wait.
pub const LOG_QUEUE_LINES: usize = 65_536;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_cannot_be_forged_or_flooded() {
        assert_eq!(log_safe("a\r\nX-Injected: 1"), "a\\r\\nX-Injected: 1");
        assert_eq!(log_safe("\u{0}\u{202E}"), "\\u{0}\\u{202e}");
        assert!(log_safe(&"x".repeat(10_000)).len() <= 256);
        assert_eq!(token_hash("abc").len(), 16);
        assert_ne!(token_hash("abc"), token_hash("abd"));
    }
}
