//! The Redis backend: every store trait over Redis, shared by a fleet of
//! brokers. Speaks `redis://` and `rediss://` to one primary (TLS with
//! rustls and the aws-lc-rs provider), `redis+cluster://h:p,h:p[,…]` to a
//! Redis Cluster and `redis+sentinel://h:p[,h:p…]/mastername` to the primary
//! that Redis Sentinel names; `rediss+cluster://` and `rediss+sentinel://`
//! are the same over TLS on every connection (each cluster node, each
//! sentinel, the primary), with the same `?ca=` as `rediss://`
//! ([`StoreUrl`] owns the URL rules). Needs Redis 7.0 or later
//! (`EXPIREAT … GT`, exclusive `XRANGE` bounds).
//!
//! # Failure model
//! Every call runs under [`tokio::time::timeout`] with the configured
//! timeout; a timeout, a refused or dropped connection, or a server that says
//! it cannot serve (`LOADING`, `READONLY`, `OOM`, …) is
//! [`StoreError::Unavailable`], so the caller fails closed. The connection is a
//! [`ConnectionManager`] created lazily (no I/O at construction, so the broker
//! starts while Redis is down). The manager reconnects by itself after I/O
//! errors, but it caches a failed connection attempt that was not an I/O error
//! (for example a refused `AUTH`) and it cannot notice a half-open TCP
//! connection; so after a timeout or such an error the store replaces the
//! manager with a fresh lazy one, at most once per [`REBUILD_MIN_INTERVAL`].
//! When the circuit breaker opens (or its probe fails) the manager is
//! replaced at once: the manager's own reconnection attempt, made while
//! Redis was down, stays cached as failed, and the breaker's first probe
//! after Redis returns would otherwise fail on it (issue 17 item 4).
//! Error messages name the operation and the class of failure, never a token,
//! key, value or the URL (which may hold a password).
//!
//! The connection is a `Connection`: the manager above, or for a cluster a
//! `cluster_async::ClusterConnection` (follows `MOVED`/`ASK`, reconnects to a
//! node by itself; a dead master fails only the calls whose slots it holds),
//! or for Sentinel a connection manager to the primary the sentinels name
//! (checked with `ROLE`), forgotten and asked for again after any error that
//! may mean a failover, and checked with the sentinels at most every
//! [`SENTINEL_RECHECK`] (an old primary keeps taking writes until it is
//! demoted). Both connect on first use, inside the caller's
//! timeout, and the replacement rule above applies to them too.
//!
//! `is_blocked` answers from [`block_cache`] when it is live (a
//! connection of its own with `CLIENT TRACKING` keeps it exact), and reads
//! Redis otherwise.
//!
//! [`ConnectionManager`]: ::redis::aio::ConnectionManager
//!
//! # Layout
//! One file per job: `url` (the URL rules), `topology` (what each URL form
//! connects to; cluster slots and redirections; TLS material),
//! `connection` (the live connection and its replacement), `error` (what a
//! Redis error means for the caller), `call` (timeout, breaker, data epoch
//! around every call), `keys` (the key schema and its table), `scripts`
//! (the Lua scripts, `scripts/*.lua`), `cursor`, then one file per store
//! trait: `revocations`, `replay`, `sessions`, `grants`, `approvals`,
//! `audit`, `health` (and the data epoch), `guard`. The block cache
//! ([`block_cache`]) uses `topology` and `error`, never the store. Tests:
//! `tests`, `cluster_tests`, `tls_topology_tests`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::ConnectionManagerConfig;
use ::redis::Script;

use block_cache::BlockCache;
use call::Resilience;
use connection::{RenewableConnection, Target};
use error::config_error;
use scripts::*;
use topology::{cluster_target, sentinel_target};
use url::UrlKind;

use super::*;

mod approvals;
mod audit;
mod call;
mod connection;
mod cursor;
mod error;
mod grants;
/// The anomaly guard's fleet-wide state (its keys, script and tests).
mod guard;
mod health;
mod keys;
mod replay;
mod revocations;
mod scripts;
mod sessions;
mod topology;
mod url;

pub mod block_cache;
#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_topology_tests;

pub use approvals::MAX_APPROVAL_ID_BYTES;
pub use audit::AUDIT_STREAM_IDLE_TTL;
pub use connection::{REBUILD_MIN_INTERVAL, SENTINEL_RECHECK};
pub use grants::{
    MAX_GRANTS_LISTED, MAX_GRANTS_TOTAL, MAX_GRANT_BYTES, MAX_GRANT_ID_BYTES, MAX_GRANT_SCOPES,
};
pub use revocations::{
    FEED_MAXLEN, MAX_ACTORS, MAX_FEED_PAGE, MAX_FEED_SCAN, MAX_REVOCATION_VALUE_BYTES,
};
pub(crate) use topology::cluster_slot;
pub use url::{StoreUrl, UrlError, MAX_URL_NODES};
// What the guard (`guard.rs`) reaches through `super::`.
use error::{protocol, Fail};
use keys::h;

/// Latest timestamp accepted (9999-12-31T23:59:59Z); Redis refuses larger
/// expiry times.
pub const MAX_UNIX_SECS: u64 = 253_402_300_799;

/// How to reach Redis. `Debug` never shows the URL (it may hold a password).
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[[user]:password@]host[:port][/db]` or `rediss://…`,
    /// `redis+cluster://…` or `rediss+cluster://…`, `redis+sentinel://…` or
    /// `rediss+sentinel://…` ([`StoreUrl`]); a TLS (`rediss…`) URL may end
    /// in `?ca=/path/to/ca.pem` (PEM bundle that replaces the system roots,
    /// for every connection the URL leads to).
    pub url: String,
    /// Key prefix (`[A-Za-z0-9_.-]{1,32}`).
    pub prefix: String,
    /// Bound on every call, connecting included (0 < timeout <= [`MAX_TIMEOUT`]).
    pub timeout: Duration,
    /// PEM CA bundle for a TLS URL (replaces the system roots; overrides `?ca=`).
    pub ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Redis backend for every store trait.
pub struct RedisStore {
    resilience: Resilience,
    conn: RenewableConnection,
    prefix: String,
    timeout: Duration,
    tls: bool,
    revoke_script: Script,
    block_script: Script,
    unblock_script: Script,
    blocks_list_script: Script,
    grant_create_script: Script,
    grant_pointer_script: Script,
    grant_consume_script: Script,
    grant_revoke_script: Script,
    approval_create_script: Script,
    approval_decide_script: Script,
    approval_poll_script: Script,
    audit_append_script: Script,
    /// Subject blocks held here ([`block_cache`]); `None` when off.
    block_cache: Option<CachedBlocks>,
    /// The data epoch this broker saw ([`super::epoch`]).
    epoch: Arc<super::epoch::EpochState>,
}

/// The block cache and the task that keeps it exact (which stops when
/// this is dropped).
struct CachedBlocks {
    cache: Arc<BlockCache>,
    _tracker: block_cache::Tracker,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

fn check_time(t: u64, what: &str) -> Result<(), StoreError> {
    if t > MAX_UNIX_SECS {
        return Err(StoreError::Protocol(format!("{what} out of range")));
    }
    Ok(())
}

impl RedisStore {
    /// A store for `cfg`. Does no I/O: the connection is made on first use,
    /// each attempt bounded by the timeout. Must be called inside a Tokio
    /// runtime. Errors only for a malformed configuration (the message never
    /// contains the URL).
    pub fn new(cfg: &RedisConfig) -> Result<Self, StoreError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(config_error("must be created inside a Tokio runtime"));
        }
        check_prefix(&cfg.prefix).map_err(|e| config_error(&format!("prefix {e}")))?;
        check_timeout(cfg.timeout).map_err(|e| config_error(&format!("timeout {e}")))?;
        let url = StoreUrl::parse(&cfg.url).map_err(|e| config_error(&e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(None)
            .set_number_of_retries(0);
        let ca_pem = match (&cfg.ca_pem, &url.ca_path) {
            (Some(pem), _) => Some(pem.clone()),
            (None, Some(path)) => Some(
                std::fs::read(path)
                    .map_err(|e| config_error(&format!("cannot read ?ca= file: {}", e.kind())))?,
            ),
            (None, None) => None,
        };
        if ca_pem.is_some() && !url.tls {
            return Err(config_error(
                "a CA is only used with rediss://, rediss+cluster:// or rediss+sentinel://",
            ));
        }
        if url.tls {
            // redis-rs builds its rustls config with the process default
            // provider: make it aws-lc-rs unless the process chose one.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let tls = url.tls;
        let target = match &url.kind {
            UrlKind::Single => Self::single_target(&url.base, ca_pem, &config)?,
            UrlKind::Cluster(t) => cluster_target(t, tls, ca_pem.as_deref(), cfg.timeout)?,
            UrlKind::Sentinel(t) => sentinel_target(t, tls, ca_pem.as_deref(), &config)?,
        };
        Ok(Self {
            resilience: Resilience::new(&StoreOptions::default()),
            conn: RenewableConnection::new(target)?,
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout,
            tls,
            revoke_script: script(LUA_REVOKE),
            block_script: script(LUA_BLOCK),
            audit_append_script: script(LUA_AUDIT_APPEND),
            unblock_script: script(LUA_UNBLOCK),
            blocks_list_script: script(LUA_BLOCKS_LIST),
            grant_create_script: script(LUA_GRANT_CREATE),
            grant_pointer_script: script(LUA_GRANT_POINTER),
            grant_consume_script: script(LUA_GRANT_CONSUME),
            grant_revoke_script: script(LUA_GRANT_REVOKE),
            approval_create_script: script(LUA_APPROVAL_CREATE),
            approval_decide_script: script(LUA_APPROVAL_DECIDE),
            approval_poll_script: script(LUA_APPROVAL_POLL),
            block_cache: None,
            epoch: Arc::default(),
        })
    }
    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Applies the circuit breaker and revocation acknowledgement settings
    /// (the defaults of [`StoreOptions`] until then). Errors for values out
    /// of bounds.
    pub fn with_options(mut self, o: &StoreOptions) -> Result<Self, StoreError> {
        if o.revocation_replicas > MAX_REVOCATION_REPLICAS {
            return Err(config_error(&format!(
                "revocation_replicas must be at most {MAX_REVOCATION_REPLICAS}"
            )));
        }
        if o.revocation_wait.is_zero() || o.revocation_wait > MAX_REVOCATION_WAIT {
            return Err(config_error(
                "revocation_wait must be above 0 and at most 10 s",
            ));
        }
        let b = &o.breaker;
        if b.cool_off.is_zero()
            || b.cool_off > b.cool_off_max
            || b.cool_off_max > MAX_BREAKER_COOL_OFF
        {
            return Err(config_error(
                "breaker cool-off must be above 0, at most breaker_cooloff_max, which is at \
                 most 10 min",
            ));
        }
        self.resilience = Resilience::new(o);
        let source = match (&self.conn.target, o.block_cache) {
            (Target::Single { client, .. }, true) => {
                Some(block_cache::Source::Single(Box::new(client.clone())))
            }
            (Target::Sentinel { sentinel, .. }, true) => {
                Some(block_cache::Source::Sentinel(sentinel.clone()))
            }
            (Target::Cluster { node, seeds, .. }, true) => Some(block_cache::Source::Cluster {
                seeds: seeds.clone(),
                node: node.clone(),
                slot: cluster_slot(&self.key_feed()),
            }),
            _ => None,
        };
        self.block_cache = source.map(|source| {
            let cache = Arc::new(BlockCache::with_feed_key(&self.key_feed()));
            let tracker =
                block_cache::spawn(cache.clone(), source, self.key_block_prefix(), self.timeout);
            CachedBlocks {
                cache,
                _tracker: tracker,
            }
        });
        Ok(self)
    }

    /// The block cache, when on (for tests and diagnostics).
    pub fn block_cache(&self) -> Option<&BlockCache> {
        self.block_cache.as_ref().map(|b| b.cache.as_ref())
    }

    /// The circuit breaker (its state, for tests and diagnostics).
    pub fn breaker(&self) -> &super::breaker::Breaker {
        &self.resilience.breaker
    }
}
