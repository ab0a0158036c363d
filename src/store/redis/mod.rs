// One file today, NOT by design: issue 18 item 4 (split by job:
// connection/topology, errors, scripts, one file per trait) is open.
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
//! The connection is a `Con`: the manager above, or for a cluster a
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
//! # Keys
//! `P` is the configured prefix (`[A-Za-z0-9_.-]{1,32}`, so it never holds a
//! `{` and the hash tag is always the one shown). `H(x)` is
//! `hex(sha256(x))`: identifiers from users (subjects, jti, task and grant
//! ids, namespaces) never appear raw in a key name, so no value can collide
//! with another key type, inject a pattern or grow a key. Keys are built only
//! by the `key_*` functions below; `KEYS`/`SCAN` are never used.
//!
//! | key | type | TTL | written by |
//! |-----|------|-----|------------|
//! | `P:{rev}:e:<kind>:H(value)` | string `"<revoked_at> <expires_at>"` | `EXAT expires_at` (the max of all revocations of it) | revoke script |
//! | `P:{rev}:feed` | stream, fields `k v r x`, `MAXLEN ~` [`FEED_MAXLEN`] | `EXPIREAT` the latest entry's `expires_at` (refreshed on each write, only ever extended) | revoke script |
//! | `P:{rev}:blk:H(subject)` | string `until` | `EXAT until` (the max) | block script; unblock script deletes it |
//! | `P:{rev}:epoch` | string `ID AT new\|recovered` (the data epoch, [`super::epoch`]) | none | `SET NX` by the first broker; `SET` by `tessera store recover` |
//! | `P:{rev}:blocks` | hash subject → until (for `tessera blocks list`; ended ones pruned) | `EXPIREAT` the latest block's end (only ever extended) | block, unblock and list scripts |
//! | `P:rp:H(len(ns) ‖ ns ‖ id)` | string `1` | `EXAT expires_at` | `SET NX EXAT` |
//! | `P:{g:H(subject)}:gr:H(id)` | hash `j` (grant JSON), `r` (uses left or `u`), `x` (expires_at) | `EXAT expires_at` | grant create script; consume script decrements `r` |
//! | `P:{g:H(subject)}:idx` | set of `H(id)` of the subject's grants | `EXPIREAT` the latest grant's expiry (only ever extended) | grant create / consume / revoke scripts |
//! | `P:{gx}:id:H(id)` | string subject | `EXAT expires_at` | grant pointer script |
//! | `P:{gx}:all` | sorted set id → expires_at | `EXPIREAT` the latest grant's expiry | grant pointer script |
//! | `P:{ap}:a:H(id)` | hash `j` (approval JSON as created), `s` (state), `p` (last poll), `x` (expires_at), `r` (requester), `h` (request hash), `b`/`t`/`w` (decided by, at, reason) | `EXAT expires_at + APPROVAL_RETAIN_SECS` | approval create script; decide and poll scripts change `s`, `p`, `b`, `t`, `w` |
//! | `P:{ap}:all` | sorted set id → expires_at + retention | `EXPIREAT` the latest (only ever extended) | approval create script |
//! | `P:{ap}:rq:H(requester)` | sorted set id → expires_at (the requester's live approvals, for the cap) | `EXPIREAT` the latest | approval create script |
//! | `P:{ap}:rh:H(len(requester) ‖ requester ‖ request hash)` | hash `i` (id), `d` (`H(id)`) of the latest approval of that request by that requester (asking twice while it is pending finds it) | `EXPIREAT expires_at` | approval create script |
//! | `P:{gd:H(identity)}:s` | hash: the anomaly guard's state of one identity (window, buckets, learned rate, streak; `redis/guard.rs`) | 7 days (at least) after its last exchange, refreshed by each | guard script |
//! | `P:{gd:H(identity)}:a` | sorted set: the identity's known audiences (digests), at most `max_audiences` | as the hash | guard script |
//! | `P:{audit}:stream` | stream, field `rec` (one sealed audit record, JSON), `MAXLEN ~ [audit] stream_max_len` | [`AUDIT_STREAM_IDLE_TTL`] after the last append (refreshed by each) | audit append script (records past their chain's checkpoint only) |
//! | `P:{audit}:checkpoint` | hash node → `"seq hash"` of the chain's last record in the stream (at most [`super::MAX_AUDIT_CHECKPOINTS`] nodes) | [`AUDIT_STREAM_IDLE_TTL`] after the last append | audit append script, atomically with the `XADD`s |
//! | `P:{audit}:checkpoint:t` | sorted set node → time of its last append (prunes the checkpoints idle past the TTL, then the oldest past the cap) | as above | audit append script |
//!
//! Why the hash tags: all revocation keys and the feed share the tag `{rev}`,
//! so the revoke script (entry + feed) touches one cluster slot. Each
//! subject's grants and their index share `{g:H(subject)}`, so consume, which
//! reads the index and then every grant in it, is one slot (the script builds
//! the grant keys from the index; they are in the slot of `KEYS[1]` by
//! construction). The id → subject pointers and the global list share `{gx}`
//! (written by one script). A grant therefore spans two slots: the pointer is
//! written first (refusing an id already used by another subject), then the
//! grant; a pointer left behind by a failed create points at nothing.
//!
//! The grant create and consume scripts touch grant keys they did not
//! declare in `KEYS` (they are only known from the index, inside the
//! script). Redis Cluster formally wants every key declared; what Redis 7
//! checks is that each key the script touches is served by the node
//! (`non local key` otherwise), and later versions also that it is in the
//! declared slot (without `allow-cross-slot-keys`). Built as `KEYS[1]`'s
//! prefix (an `ARGV`) followed by a hex digest, these keys are always in the
//! slot of `KEYS[1]`, so both checks pass. While that slot migrates, a key
//! already moved is "non local" to the script: it fails (503), it never
//! reads a half-moved slot (declared keys would get `ASK`/`TRYAGAIN`, also a
//! 503). Declaring them would cost a round trip before every consume (read
//! the index, then run the script on what it named), for no change in
//! atomicity; `cluster_tests` checks the slots by CRC16 and under `MONITOR`,
//! and runs the conformance suite on a real cluster. Pipelines stay in one
//! slot too:
//! the one exception, reading grants of many subjects, issues one command
//! per grant on a cluster.
//!
//! Approvals share the tag `{ap}`: the create script (record and the
//! three indexes, plus the record the same-request index names, built from
//! the prefix and its digest as for grants) is one slot, and decide and poll
//! touch the record alone.
//!
//! Timestamps from the caller (`now`) are checked against the stored
//! `expires_at` on every read (defence in depth even if a TTL was lost); TTLs
//! use the Redis server's clock.
//!
//! One file: every store trait's Redis form shares the key schema, the Lua
//! scripts' common prelude, the connection, the breaker and the data epoch
//! below, and the key table above is only true if it sits next to the
//! `key_*` functions. Jobs with their own state live apart: `block_cache`,
//! `breaker`, `epoch`, `feed`; tests are in `redis_tests` / `cluster_tests`.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use block_cache::{BlockCache, Lookup};
use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use ::redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use ::redis::{
    Client, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError, RedisFuture,
    Script, ServerErrorKind, Value,
};
use async_trait::async_trait;

use super::*;

/// Approximate cap on feed entries (`XADD … MAXLEN ~`).
pub const FEED_MAXLEN: u64 = 100_000;
/// Most feed entries `list_since` returns at once (larger limits are cut).
pub const MAX_FEED_PAGE: usize = 10_000;
/// Most raw feed entries one `list_since` reads (expired ones included)
/// before it returns what it has with a cursor to resume from.
pub const MAX_FEED_SCAN: usize = 20_000;
/// Feed entries read per round trip.
const FEED_BATCH: usize = 1_000;
/// Longest revocation value (jti / subject / task / grant id) stored.
pub const MAX_REVOCATION_VALUE_BYTES: usize = 1024 * 1024;
/// Largest stored grant (its JSON). A request whose subject, audience, task
/// or scope is longer than this cannot match any grant.
pub const MAX_GRANT_BYTES: usize = 64 * 1024;
/// Longest grant id.
pub const MAX_GRANT_ID_BYTES: usize = 256;
/// Most scopes in a grant or a consume request.
pub const MAX_GRANT_SCOPES: usize = 256;
/// Most live grants in all (the `{gx}` index).
pub const MAX_GRANTS_TOTAL: usize = 100_000;
/// Most grants `list` returns.
pub const MAX_GRANTS_LISTED: usize = 1_000;
/// Most actors `is_revoked` checks; a longer chain is an error (fail closed).
pub const MAX_ACTORS: usize = 32;
/// Latest timestamp accepted (9999-12-31T23:59:59Z); Redis refuses larger
/// expiry times.
pub const MAX_UNIX_SECS: u64 = 253_402_300_799;
/// The audit stream expires this long after its last append (it is bounded
/// by length; the TTL only keeps the "every key expires" rule for a broker
/// fleet that is gone).
pub const AUDIT_STREAM_IDLE_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Least time between two replacements of the connection manager.
pub const REBUILD_MIN_INTERVAL: Duration = Duration::from_secs(1);

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

fn config_error(msg: &str) -> StoreError {
    StoreError::Unavailable(format!("invalid redis store configuration: {msg}"))
}

/// Splits our own `?ca=` parameter off the URL; any other parameter or a
/// fragment (`#insecure`) is refused.
fn split_url(url: &str) -> Result<(String, Option<String>), String> {
    if url.contains('#') {
        return Err("URL fragments (such as #insecure) are not accepted".into());
    }
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut ca = None;
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("ca", path)) if !path.is_empty() => ca = Some(path.to_string()),
                _ => {
                    return Err(
                        "the only URL parameter accepted is ca=<path> (TLS is chosen by \
                         the scheme: rediss://, rediss+cluster://, rediss+sentinel://)"
                            .into(),
                    )
                }
            }
        }
    }
    Ok((base.to_string(), ca))
}

/// `hex(sha256(x))` (64 lowercase hex digits).
fn h(x: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, x);
    let mut out = String::with_capacity(64);
    for b in d.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// `H(len(a) ‖ a ‖ b)` (the length as 8 bytes big-endian): a digest of two
/// strings that no other pair shares.
fn h_pair(a: &str, b: &str) -> String {
    let mut buf = Vec::with_capacity(8 + a.len() + b.len());
    buf.extend_from_slice(&(a.len() as u64).to_be_bytes());
    buf.extend_from_slice(a.as_bytes());
    buf.extend_from_slice(b.as_bytes());
    h(&buf)
}

/// Number of slots of a Redis Cluster.
const CLUSTER_SLOTS: u16 = 16384;

/// The cluster slot of a key: CRC16 of its hash tag (the text between the
/// first `{` and the next `}`, when not empty) or of the whole key.
pub(crate) fn cluster_slot(key: &str) -> u16 {
    let k = key.as_bytes();
    let tagged = k.iter().position(|&b| b == b'{').and_then(|s| {
        let rest = &k[s + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&e| e > 0)
            .map(|e| &rest[..e])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(k)) % CLUSTER_SLOTS
}

/// What the store URL names; makes fresh connections.
#[derive(Clone)]
enum Target {
    /// `redis://` / `rediss://`: one server.
    Single {
        client: Client,
        config: ConnectionManagerConfig,
    },
    /// `redis(s)+cluster://`: the seed nodes of a Redis Cluster, and what
    /// the URL gives every node (TLS, credentials) for a connection of its
    /// own to one node.
    Cluster {
        client: ClusterClient,
        node: Box<ConnectionInfo>,
        /// The URL's nodes, for the block cache's own lookups.
        seeds: Vec<(String, u16)>,
    },
    /// `redis(s)+sentinel://`: the sentinels that name the primary.
    Sentinel {
        sentinel: Arc<tokio::sync::Mutex<SentinelClient>>,
        config: ConnectionManagerConfig,
    },
}

impl Target {
    /// A fresh connection that does no I/O until its first command.
    fn lazy(&self) -> Result<Con, StoreError> {
        match self {
            Self::Single { client, config } => {
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map(Con::Single)
                    .map_err(|e| StoreError::Unavailable(format!("redis client: {}", describe(&e))))
            }
            Self::Cluster { client, .. } => Ok(Con::Cluster(Arc::new(LazyCluster {
                client: client.clone(),
                conn: tokio::sync::Mutex::new(None),
            }))),
            Self::Sentinel { sentinel, config } => Ok(Con::Sentinel(Arc::new(LazySentinel {
                sentinel: sentinel.clone(),
                config: config.clone(),
                primary: Mutex::new(None),
            }))),
        }
    }
}

/// A Redis Cluster connection made on first use (under the caller's
/// timeout). It follows `MOVED`/`ASK` and reconnects to a node by itself.
struct LazyCluster {
    client: ClusterClient,
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
}

impl LazyCluster {
    async fn get(&self) -> ::redis::RedisResult<ClusterConnection> {
        let mut g = self.conn.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let c = self.client.get_async_connection().await?;
        *g = Some(c.clone());
        Ok(c)
    }
}

/// A connection to the primary that the sentinels name, resolved on first
/// use, checked with the sentinels again at most every
/// [`SENTINEL_RECHECK`] (a failover that left the old primary reachable is
/// noticed), and resolved again after any failure that may mean a failover
/// (the old primary is unreachable, or answers `READONLY` as a replica).
struct LazySentinel {
    sentinel: Arc<tokio::sync::Mutex<SentinelClient>>,
    config: ConnectionManagerConfig,
    primary: Mutex<Option<Primary>>,
}

/// The primary in use, where it is, and when the sentinels last named it.
struct Primary {
    manager: ConnectionManager,
    addr: ::redis::ConnectionAddr,
    checked: Instant,
}

/// How often the store asks the sentinels whether the primary it uses is
/// still the one they name.
pub const SENTINEL_RECHECK: Duration = Duration::from_secs(1);

impl LazySentinel {
    /// The primary in use, and whether it was named recently.
    fn current(&self) -> Option<(ConnectionManager, ::redis::ConnectionAddr, bool)> {
        let g = self.primary.lock().ok()?;
        g.as_ref().map(|p| {
            (
                p.manager.clone(),
                p.addr.clone(),
                p.checked.elapsed() < SENTINEL_RECHECK,
            )
        })
    }

    fn set(&self, manager: &ConnectionManager, addr: ::redis::ConnectionAddr) {
        if let Ok(mut g) = self.primary.lock() {
            *g = Some(Primary {
                manager: manager.clone(),
                addr,
                checked: Instant::now(),
            });
        }
    }

    async fn get(&self) -> ::redis::RedisResult<ConnectionManager> {
        let mut s = match self.current() {
            Some((m, _, true)) => return Ok(m),
            // Due for a check: one caller asks, the others go on meanwhile.
            Some((m, _, false)) => match self.sentinel.try_lock() {
                Ok(s) => s,
                Err(_) => return Ok(m),
            },
            None => self.sentinel.lock().await,
        };
        let known = match self.current() {
            Some((m, _, true)) => return Ok(m),
            other => other,
        };
        // Asks the sentinels, then checks with `ROLE` that it is a primary.
        let client = match s.async_get_client().await {
            Ok(c) => c,
            Err(e) => match known {
                // The sentinels or the check failed: keep the primary; a
                // failure of its own will make it go.
                Some((m, addr, _)) => {
                    self.set(&m, addr);
                    return Ok(m);
                }
                None => return Err(e),
            },
        };
        let addr = client.get_connection_info().addr().clone();
        if let Some((m, a, _)) = known {
            if a == addr {
                self.set(&m, addr);
                return Ok(m);
            }
            tracing::warn!("redis store: the sentinels name another primary; switching");
        }
        let m = ConnectionManager::new_lazy_with_config(client, self.config.clone())?;
        self.set(&m, addr);
        tracing::debug!("redis store: primary resolved through the sentinels");
        Ok(m)
    }

    /// Forgets the primary after an error that may mean it moved.
    fn after<T>(&self, r: &::redis::RedisResult<T>) {
        if let Err(e) = r {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || e.code()
                    .is_some_and(|c| matches!(c, "READONLY" | "MASTERDOWN" | "LOADING" | "NOAUTH"))
            {
                if let Ok(mut g) = self.primary.lock() {
                    *g = None;
                }
            }
        }
    }
}

/// One connection to the store, whatever its topology; cheap to clone.
#[derive(Clone)]
enum Con {
    /// One server, through a connection manager.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(Arc<LazyCluster>),
    /// The primary named by Redis Sentinel.
    Sentinel(Arc<LazySentinel>),
}

impl Con {
    /// Whether commands of one pipeline must all be in one slot.
    fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for Con {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a ::redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(m) => m.req_packed_command(cmd),
            Self::Cluster(c) => Box::pin(async move {
                let mut k = c.get().await?;
                k.req_packed_command(cmd).await
            }),
            Self::Sentinel(s) => Box::pin(async move {
                let r = async {
                    let mut k = s.get().await?;
                    k.req_packed_command(cmd).await
                }
                .await;
                s.after(&r);
                r
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a ::redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(m) => m.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => Box::pin(async move {
                let mut k = c.get().await?;
                k.req_packed_commands(pipeline, offset, count).await
            }),
            Self::Sentinel(s) => Box::pin(async move {
                let r = async {
                    let mut k = s.get().await?;
                    k.req_packed_commands(pipeline, offset, count).await
                }
                .await;
                s.after(&r);
                r
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(m) => m.get_db(),
            Self::Cluster(_) | Self::Sentinel(_) => 0,
        }
    }
}

/// One connection, replaced when it may be stuck.
struct Conn {
    target: Target,
    slot: Mutex<(Con, Instant)>,
}

impl Conn {
    fn manager(&self) -> Result<Con, StoreError> {
        self.slot
            .lock()
            .map(|g| g.0.clone())
            .map_err(|_| StoreError::Unavailable("redis connection lock poisoned".into()))
    }

    /// Replaces the connection with a fresh lazy one, at most once per
    /// [`REBUILD_MIN_INTERVAL`].
    fn rebuild(&self) {
        self.replace(false);
    }

    /// Replaces the connection with a fresh lazy one now, whatever the
    /// interval: the breaker has just opened (or a probe failed), so the
    /// next call is the probe, and it must not await the connection attempt
    /// the old manager made (and cached as failed) while Redis was down.
    /// A lazy connection does no I/O until the probe uses it.
    fn renew_for_probe(&self) {
        self.replace(true);
    }

    fn replace(&self, now: bool) {
        let Ok(mut g) = self.slot.lock() else {
            return;
        };
        if !now && g.1.elapsed() < REBUILD_MIN_INTERVAL {
            return;
        }
        if let Ok(m) = self.target.lazy() {
            *g = (m, Instant::now());
            tracing::debug!("redis store: connection manager replaced");
        }
    }
}

/// Most nodes (cluster seeds or sentinels) a store URL may list.
pub const MAX_URL_NODES: usize = 16;

/// The parts of `redis+cluster://[user:password@]h:p,h:p[,…]` or
/// `redis+sentinel://[user:password@]h:p[,h:p…]/mastername`.
struct Topology {
    /// `user:password` (as written, percent-encoded), for the data nodes.
    userinfo: Option<String>,
    /// `host:port`, each.
    nodes: Vec<String>,
    /// What follows the first `/` (the master name for Sentinel).
    path: String,
}

fn parse_topology(rest: &str) -> Result<Topology, String> {
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    let mut nodes = Vec::new();
    for n in hosts.split(',') {
        let ok = host_port(n).is_some_and(|(h, _)| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b))
        });
        if !ok {
            return Err("every node must be host:port (comma-separated, port required)".into());
        }
        nodes.push(n.to_string());
    }
    if nodes.len() > MAX_URL_NODES {
        return Err("at most 16 nodes in a store URL".into());
    }
    Ok(Topology {
        userinfo,
        nodes,
        path: path.to_string(),
    })
}

/// Which servers a store URL names.
enum UrlKind {
    /// `redis://` / `rediss://`: one server.
    Single,
    /// `redis+cluster://` / `rediss+cluster://`: the seed nodes.
    Cluster(Topology),
    /// `redis+sentinel://` / `rediss+sentinel://`: the sentinels and the
    /// master name.
    Sentinel(Topology),
}

/// A store URL, checked without I/O: the one owner of the URL rules, used
/// by [`RedisStore::new`] and by the configuration (`config check` refuses
/// what `serve` would). `rediss…` means TLS on every connection the URL
/// leads to: each cluster node (the seeds and every node the cluster names),
/// each sentinel and the primary the sentinels name; there is no form with
/// TLS on some of them only.
pub struct StoreUrl {
    /// The URL without our `?ca=`.
    base: String,
    /// The `?ca=` path, when given.
    ca_path: Option<String>,
    /// Whether every connection is TLS.
    tls: bool,
    kind: UrlKind,
}

/// The schemes a Redis store URL may have: `(scheme, TLS)`.
const SCHEMES: [(&str, bool); 6] = [
    ("redis://", false),
    ("rediss://", true),
    ("redis+cluster://", false),
    ("rediss+cluster://", true),
    ("redis+sentinel://", false),
    ("rediss+sentinel://", true),
];

impl StoreUrl {
    /// Parses `url`; the error is the rule it breaks, never the URL (which
    /// may hold a password).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (base, ca_path) = split_url(url)?;
        let Some(&(scheme, tls)) = SCHEMES.iter().find(|(s, _)| base.starts_with(s)) else {
            return Err(
                "URL must start with redis://, rediss://, redis+cluster://, \
                 rediss+cluster://, redis+sentinel:// or rediss+sentinel://"
                    .into(),
            );
        };
        if ca_path.is_some() && !tls {
            return Err(
                "a CA (?ca=) is only used with rediss://, rediss+cluster:// or \
                 rediss+sentinel://"
                    .into(),
            );
        }
        let rest = &base[scheme.len()..];
        if rest.contains("://") {
            return Err(
                "a store URL has one scheme; its nodes are host:port (TLS or not is \
                 said once, for every node: rediss+cluster:// or rediss+sentinel://)"
                    .into(),
            );
        }
        let kind = match scheme {
            "redis+cluster://" | "rediss+cluster://" => {
                let t = parse_topology(rest)?;
                if !t.path.is_empty() {
                    return Err(format!(
                        "a {scheme} URL has no path (a cluster has only database 0)"
                    ));
                }
                UrlKind::Cluster(t)
            }
            "redis+sentinel://" | "rediss+sentinel://" => {
                let t = parse_topology(rest)?;
                let name = t.path.as_str();
                if name.is_empty()
                    || name.len() > 64
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
                {
                    return Err(format!(
                        "a {scheme} URL ends in /mastername (1-64 of [A-Za-z0-9_.-])"
                    ));
                }
                UrlKind::Sentinel(t)
            }
            _ => {
                let authority = rest.split(['/', '?']).next().unwrap_or("");
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                if host.contains(',') {
                    return Err(
                        "several nodes need rediss+cluster:// or rediss+sentinel:// \
                         (redis+cluster:// or redis+sentinel:// without TLS)"
                            .into(),
                    );
                }
                UrlKind::Single
            }
        };
        Ok(Self {
            base,
            ca_path,
            tls,
            kind,
        })
    }

    /// Whether every connection is TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The `?ca=` file, when given.
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        self.ca_path.as_ref().map(std::path::PathBuf::from)
    }
}

/// The TLS material of a store URL: the CA that replaces the system roots,
/// if any (no client certificate: Redis `tls-auth-clients no`, or a
/// password).
fn certificates(ca_pem: &[u8]) -> ::redis::TlsCertificates {
    ::redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca_pem.to_vec()),
    }
}

/// `scheme://[userinfo@]node` for one node of a topology URL.
fn node_url(tls: bool, userinfo: &Option<String>, n: &str) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    match userinfo {
        Some(u) => format!("{scheme}://{u}@{n}"),
        None => format!("{scheme}://{n}"),
    }
}

/// The connection target for a `redis(s)+cluster://` URL: every node over
/// TLS when `tls`, trusting `ca_pem` (else the system roots).
fn cluster_target(
    t: &Topology,
    tls: bool,
    ca_pem: Option<&[u8]>,
    timeout: Duration,
) -> Result<Target, StoreError> {
    let urls: Vec<String> = t
        .nodes
        .iter()
        .map(|n| node_url(tls, &t.userinfo, n))
        .collect();
    let mut builder = ClusterClientBuilder::new(urls)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        // Redirections (MOVED/ASK) and reconnections; every call is
        // bounded by the store timeout anyway.
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(100);
    if tls {
        // `rediss://` seeds: every node the cluster names is reached over
        // TLS too (the mode is the client's, not the seed's).
        builder = builder.tls(::redis::TlsMode::Secure);
        if let Some(pem) = ca_pem {
            builder = builder.certs(certificates(pem));
        }
    }
    let client = builder
        .build()
        .map_err(|e| config_error(&format!("bad cluster URL or TLS material ({:?})", e.kind())))?;
    // What the cluster client sends each node (TLS, user, password,
    // database 0), for the connections of its own to one node
    // (`revoke_acked`, the block cache): [`node_client`] keeps all but
    // the address.
    let template = node_url(tls, &t.userinfo, "127.0.0.1:1");
    let node = match ca_pem {
        Some(pem) if tls => Client::build_with_tls(template, certificates(pem))
            .map(|c| c.get_connection_info().clone()),
        _ => template.into_connection_info(),
    }
    .map_err(|e| config_error(&format!("bad credentials or TLS material ({:?})", e.kind())))?;
    Ok(Target::Cluster {
        client,
        node: Box::new(node),
        seeds: t
            .nodes
            .iter()
            .filter_map(|n| host_port(n).map(|(h, p)| (h.to_string(), p)))
            .collect(),
    })
}

/// The connection target for a `redis(s)+sentinel://` URL: the sentinels
/// and the primary they name over TLS when `tls`, trusting `ca_pem` (else
/// the system roots); the URL's credentials are for the data nodes.
fn sentinel_target(
    t: &Topology,
    tls: bool,
    ca_pem: Option<&[u8]>,
    config: &ConnectionManagerConfig,
) -> Result<Target, StoreError> {
    let sentinels = t.nodes.iter().filter_map(|n| host_port(n)).map(|(h, p)| {
        if tls {
            ConnectionAddr::TcpTls {
                host: h.to_string(),
                port: p,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(h.to_string(), p)
        }
    });
    let mut b = SentinelClientBuilder::new(sentinels, &t.path, SentinelServerType::Master)
        .map_err(|e| config_error(&format!("bad sentinel URL ({:?})", e.kind())))?;
    if t.userinfo.is_some() {
        let info = node_url(false, &t.userinfo, "127.0.0.1:1")
            .into_connection_info()
            .map_err(|e| config_error(&format!("bad credentials in URL ({:?})", e.kind())))?;
        let redis = info.redis_settings();
        if let Some(u) = redis.username() {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = redis.password() {
            b = b.set_client_to_redis_password(p);
        }
    }
    if tls {
        b = b
            .set_client_to_sentinel_tls_mode(::redis::TlsMode::Secure)
            .set_client_to_redis_tls_mode(::redis::TlsMode::Secure);
        if let Some(pem) = ca_pem {
            b = b
                .set_client_to_sentinel_certificates(certificates(pem))
                .set_client_to_redis_certificates(certificates(pem));
        }
    }
    let client = b.build().map_err(|e| {
        config_error(&format!(
            "bad sentinel URL or TLS material ({:?})",
            e.kind()
        ))
    })?;
    Ok(Target::Sentinel {
        sentinel: Arc::new(tokio::sync::Mutex::new(client)),
        config: config.clone(),
    })
}

/// A failure inside one call.
enum Fail {
    Redis(RedisError),
    Store(StoreError),
}

impl From<RedisError> for Fail {
    fn from(e: RedisError) -> Self {
        Self::Redis(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

fn protocol(msg: &str) -> Fail {
    Fail::Store(StoreError::Protocol(msg.to_string()))
}

/// The class of a Redis error, without its free text (which could echo data).
pub(crate) fn describe(e: &RedisError) -> String {
    if e.is_connection_refusal() {
        return "connection refused".into();
    }
    if e.is_timeout() {
        return "timed out".into();
    }
    if e.is_connection_dropped() {
        return "connection dropped".into();
    }
    if e.is_io_error() {
        return "i/o error".into();
    }
    match e.code() {
        Some(code) => format!("server error {}", code.chars().take(32).collect::<String>()),
        None => format!("{:?}", e.kind()),
    }
}

/// Server error codes that mean "cannot serve now" rather than "bad request".
const UNAVAILABLE_CODES: &[&str] = &[
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MOVED",
    "ASK",
    "OOM",
    "BUSY",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "MISCONF",
];

/// Whether an error means the store is unavailable (rather than that it
/// answered something unexpected).
fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::AuthenticationFailed
                | ErrorKind::Client
                | ErrorKind::InvalidClientConfig
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::EmptySentinelList
        )
        || e.code().is_some_and(|c| UNAVAILABLE_CODES.contains(&c))
}

/// The circuit breaker and the revocation acknowledgement settings.
struct Resilience {
    breaker: super::breaker::Breaker,
    revocation_replicas: u32,
    revocation_wait: Duration,
}

impl Resilience {
    fn new(o: &StoreOptions) -> Self {
        Self {
            breaker: super::breaker::Breaker::new(o.breaker),
            revocation_replicas: o.revocation_replicas,
            revocation_wait: o.revocation_wait,
        }
    }
}

/// Whether an error means Redis could not be reached at all (what the
/// circuit breaker counts), as opposed to an answer, even a refusal such
/// as `OOM` or `READONLY`.
fn is_unreachable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// Redis backend for every store trait.
pub struct RedisStore {
    resilience: Resilience,
    conn: Conn,
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
    /// Subject blocks held here ([`block_cache`]), with the task
    /// that keeps them exact; `None` when off.
    block_cache: Option<(Arc<BlockCache>, block_cache::Tracker)>,
    /// The data epoch this broker saw ([`super::epoch`]).
    epoch: Arc<super::epoch::EpochState>,
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

/// Lua helper: extends a key's expiry to `t` (never shortens it; gives a key
/// without one an expiry of at least a second from now).
const LUA_EXTEND: &str = r#"
local function extend(k, t, now)
  if redis.call('TTL', k) == -1 then
    if t <= now then t = now + 1 end
    redis.call('EXPIREAT', k, t)
  else
    redis.call('EXPIREAT', k, t, 'GT')
  end
end
local now = tonumber(redis.call('TIME')[1])
"#;

/// KEYS: entry, feed. ARGV: revoked_at, expires_at, kind, value, maxlen.
/// Returns the feed id.
const LUA_REVOKE: &str = r#"
local ra = tonumber(ARGV[1])
local xa = tonumber(ARGV[2])
local old = redis.call('GET', KEYS[1])
if old then
  local ora, oxa = string.match(old, '^(%d+) (%d+)$')
  if ora then
    ora = tonumber(ora)
    oxa = tonumber(oxa)
    if ora > ra then ra = ora end
    if oxa > xa then xa = oxa end
  end
end
local ras = string.format('%d', ra)
local xas = string.format('%d', xa)
if xa > now then
  redis.call('SET', KEYS[1], ras .. ' ' .. xas, 'EXAT', xas)
else
  redis.call('DEL', KEYS[1])
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
  'k', ARGV[3], 'v', ARGV[4], 'r', ras, 'x', xas)
extend(KEYS[2], xa, now)
return id
"#;

/// KEYS: block key, block index. ARGV: until, subject.
/// Returns the until in force (the longer of the two), 0 when already past.
/// The index (subject → until) is what `tessera blocks list` reads: block
/// keys are hashes of the subject. It is pruned of ended blocks here once it
/// holds more than [`BLOCK_INDEX_PRUNE`] fields, and on every listing.
const LUA_BLOCK: &str = r#"
local u = tonumber(ARGV[1])
local old = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if old > u then u = old end
if u <= now then return 0 end
redis.call('SET', KEYS[1], string.format('%d', u), 'EXAT', string.format('%d', u))
redis.call('HSET', KEYS[2], ARGV[2], string.format('%d', u))
extend(KEYS[2], u, now)
if redis.call('HLEN', KEYS[2]) > tonumber(ARGV[3]) then
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    if (tonumber(all[i + 1]) or 0) <= now then redis.call('HDEL', KEYS[2], all[i]) end
  end
end
return u
"#;

/// Fields of the block index above which the block script prunes it.
const BLOCK_INDEX_PRUNE: usize = 1024;

/// KEYS: block key, block index. ARGV: subject. Returns 1 when a live block
/// was lifted. Deleting the key is what tells every replica's block cache
/// (Redis's invalidation of it on their tracking connections).
const LUA_UNBLOCK: &str = r#"
local old = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if old > now then return 1 end
return 0
"#;

/// KEYS: block index. Returns `subject, until, ...` of the live blocks and
/// removes the ended ones.
const LUA_BLOCKS_LIST: &str = r#"
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if (tonumber(all[i + 1]) or 0) > now then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
"#;

/// KEYS: pointer, all. ARGV: subject, id, expires_at, max total.
/// 1 stored, 0 already expired, -1 id used by another subject, -2 full.
const LUA_GRANT_POINTER: &str = r#"
local x = tonumber(ARGV[3])
if x <= now then return 0 end
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return -1 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if (not cur) and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return -2 end
redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
extend(KEYS[2], x, now)
return 1
"#;

/// KEYS: grant, index. ARGV: H(id), json, remaining ('u' = unlimited),
/// expires_at, max per subject, grant key prefix.
/// 1 stored, 0 already expired, -1 exists, -2 subject full.
const LUA_GRANT_CREATE: &str = r#"
local x = tonumber(ARGV[4])
if x <= now then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  for _, h in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local k = ARGV[6] .. h
    local gx = tonumber(redis.call('HGET', k, 'x') or '0') or 0
    if gx <= now then
      redis.call('DEL', k)
      redis.call('SREM', KEYS[2], h)
    end
  end
  if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[5]) then return -2 end
end
redis.call('HSET', KEYS[1], 'j', ARGV[2], 'r', ARGV[3], 'x', ARGV[4])
redis.call('EXPIREAT', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
extend(KEYS[2], x, now)
return 1
"#;

/// KEYS: grant, index. ARGV: H(id). 1 when the grant existed.
const LUA_GRANT_REVOKE: &str = r#"
local n = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return n
"#;

/// KEYS: index. ARGV: grant key prefix, now, subject, audience, has task
/// ('1'/'0'), task, scopes…. Returns nil or {json, remaining before}.
const LUA_GRANT_CONSUME: &str = r#"
local idx = KEYS[1]
local kp = ARGV[1]
local at = tonumber(ARGV[2])
local has_task = ARGV[5] == '1'
local best, best_x, best_j, best_r = nil, nil, nil, nil
for _, h in ipairs(redis.call('SMEMBERS', idx)) do
  local k = kp .. h
  local f = redis.call('HMGET', k, 'j', 'r', 'x')
  local j, r, x = f[1], f[2], tonumber(f[3] or '')
  if not j or not x then
    if redis.call('EXISTS', k) == 0 then redis.call('SREM', idx, h) end
  elseif x <= now then
    -- expired by the server clock but still here (its TTL was lost)
    redis.call('DEL', k)
    redis.call('SREM', idx, h)
  elseif x > at then
    local n = nil
    if r ~= 'u' then n = tonumber(r) end
    if r == 'u' or (n and n > 0) then
      local ok, g = pcall(cjson.decode, j)
      if ok and type(g) == 'table' and g.subject == ARGV[3] and g.audience == ARGV[4]
          and type(g.scopes) == 'table' then
        local task_ok = true
        if type(g.task) == 'string' then task_ok = has_task and g.task == ARGV[6] end
        if task_ok then
          local have = {}
          for _, s in ipairs(g.scopes) do
            if type(s) == 'string' then have[s] = true end
          end
          local all = true
          for i = 7, #ARGV do
            if not have[ARGV[i]] then all = false break end
          end
          if all and (best == nil or x < best_x or (x == best_x and h < best)) then
            best, best_x, best_j, best_r = h, x, j, r
          end
        end
      end
    end
  end
end
if best == nil then return false end
if best_r ~= 'u' then redis.call('HINCRBY', kp .. best, 'r', -1) end
return {best_j, best_r}
"#;

/// KEYS: record, all, requester index, same-request index. ARGV: id, json,
/// expires_at, keep_until, requester, request hash, created_at (caller's
/// now), max per requester, max total, record key prefix (`P:{ap}:a:`),
/// `H(id)`.
/// Returns {'1'} stored, {'0'} already gone, {'-1'} exists, {'-2'} requester
/// full, {'-3'} store full, {'=', id} the same request is already pending as
/// `id`. The pending approval named by the same-request index is read from
/// its record key, built from the prefix and the digest the index holds (in
/// the slot of `{ap}` by construction, like the grant keys of the consume
/// script).
const LUA_APPROVAL_CREATE: &str = r#"
local x = tonumber(ARGV[3])
local keep = tonumber(ARGV[4])
local at = tonumber(ARGV[7])
if keep <= now then return {'0'} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'-1'} end
local d = redis.call('HMGET', KEYS[4], 'i', 'd')
if d[1] and d[2] then
  local f = redis.call('HMGET', ARGV[10] .. d[2], 's', 'x', 'r', 'h')
  if f[1] == 'pending' and (tonumber(f[2] or '0') or 0) > at
    and f[3] == ARGV[5] and f[4] == ARGV[6] then
    return {'=', d[1]}
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[7])
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[8]) then return {'-2'} end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[9]) then return {'-3'} end
redis.call('HSET', KEYS[1], 'j', ARGV[2], 's', 'pending', 'p', ARGV[7], 'x', ARGV[3],
  'r', ARGV[5], 'h', ARGV[6])
redis.call('EXPIREAT', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
extend(KEYS[2], keep, now)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
extend(KEYS[3], x, now)
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[4], 'i', ARGV[1], 'd', ARGV[11])
if x <= now then x = now + 1 end
redis.call('EXPIREAT', KEYS[4], x)
return {'1'}
"#;

/// KEYS: record. ARGV: new state, by, at (caller's now), reason, retention.
/// Returns 'ok', 'missing', 'expired' or the current (non-pending) state.
const LUA_APPROVAL_DECIDE: &str = r#"
local f = redis.call('HMGET', KEYS[1], 's', 'x')
if not f[1] then return 'missing' end
if (tonumber(f[2] or '0') or 0) + tonumber(ARGV[5]) <= tonumber(ARGV[3]) then return 'missing' end
if f[1] ~= 'pending' then return f[1] end
if (tonumber(f[2] or '0') or 0) <= tonumber(ARGV[3]) then return 'expired' end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'b', ARGV[2], 't', ARGV[3], 'w', ARGV[4])
return 'ok'
"#;

/// KEYS: record. ARGV: requester, request hash, interval, now (caller's),
/// retention. Returns {outcome} or {'redeemed', json, by, at, reason}.
const LUA_APPROVAL_POLL: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'r', 'h', 's', 'x', 'p')
if not f[1] or f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return {'invalid'} end
local s = f[3]
local x = tonumber(f[4] or '0') or 0
local at = tonumber(ARGV[4])
if x + tonumber(ARGV[5]) <= at then return {'invalid'} end
if s == 'consumed' then return {'invalid'} end
if s == 'denied' then return {'denied'} end
if x <= at then return {'expired'} end
if s == 'approved' then
  redis.call('HSET', KEYS[1], 's', 'consumed')
  local d = redis.call('HMGET', KEYS[1], 'j', 'b', 't', 'w')
  return {'redeemed', d[1] or '', d[2] or '', d[3] or '', d[4] or ''}
end
if s ~= 'pending' then return {'invalid'} end
local p = tonumber(f[5] or '0') or 0
redis.call('HSET', KEYS[1], 'p', ARGV[4])
if at < p + tonumber(ARGV[3]) then return {'slow_down'} end
return {'pending'}
"#;

/// KEYS: audit stream, checkpoints (hash node -> "seq hash"), checkpoint
/// times (sorted set node -> last write). ARGV: node, max_len, idle ttl,
/// most checkpoints, then (seq, hash, record) for each record in order.
/// Appends the records past the node's checkpoint and moves it: a batch sent
/// again, or landing late, is never appended twice. Returns how many were
/// appended.
const LUA_AUDIT_APPEND: &str = r#"
local node = ARGV[1]
local last = 0
local cur = redis.call('HGET', KEYS[2], node)
if cur then last = tonumber(string.match(cur, '^(%d+) ')) or 0 end
local seq = nil
local added = 0
for i = 5, #ARGV, 3 do
  local s = tonumber(ARGV[i])
  if s and s > last then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'rec', ARGV[i + 2])
    -- moved with each record: a script stopped by an error half-way
    -- leaves a checkpoint that matches the stream
    redis.call('HSET', KEYS[2], node, ARGV[i] .. ' ' .. ARGV[i + 1])
    last = s
    seq = ARGV[i]
    added = added + 1
  end
end
local ttl = tonumber(ARGV[3])
if seq then
  redis.call('ZADD', KEYS[3], now, node)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - ttl)
  local over = redis.call('ZCARD', KEYS[3]) - #gone - tonumber(ARGV[4])
  if over > 0 then
    local more = redis.call('ZRANGE', KEYS[3], #gone, #gone + over - 1)
    for _, n in ipairs(more) do gone[#gone + 1] = n end
  end
  for _, n in ipairs(gone) do
    redis.call('HDEL', KEYS[2], n)
    redis.call('ZREM', KEYS[3], n)
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ttl) end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ttl) end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ttl) end
return added
"#;

/// Most records one audit append script carries (a longer backlog goes in
/// several, each atomic and idempotent).
const AUDIT_APPEND_CHUNK: usize = 1_024;

/// The anomaly guard's fleet-wide state (its keys, script and tests).
mod guard;

pub mod block_cache;
#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_topology_tests;

fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_EXTEND}{body}"))
}

/// Feed cursor: the stream id `ms-seq` as two zero-padded numbers, so
/// cursors sort as strings in feed order.
pub(crate) fn encode_cursor(stream_id: &str) -> Result<String, StoreError> {
    let (ms, seq) = parse_stream_id(stream_id)
        .ok_or_else(|| StoreError::Protocol("unexpected stream id from redis".into()))?;
    Ok(format!("{ms:020}-{seq:020}"))
}

fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

pub(crate) fn decode_cursor(c: &str) -> Result<String, StoreError> {
    let invalid = || StoreError::Protocol("invalid cursor".into());
    let (ms, seq) = c.split_once('-').ok_or_else(invalid)?;
    if ms.len() != 20 || seq.len() != 20 {
        return Err(invalid());
    }
    let ms: u64 = ms.parse().map_err(|_| invalid())?;
    let seq: u64 = seq.parse().map_err(|_| invalid())?;
    Ok(format!("{ms}-{seq}"))
}

fn check_time(t: u64, what: &str) -> Result<(), StoreError> {
    if t > MAX_UNIX_SECS {
        return Err(StoreError::Protocol(format!("{what} out of range")));
    }
    Ok(())
}

/// Parses a revocation entry value `"<revoked_at> <expires_at>"`.
fn parse_entry(v: &str) -> Result<(u64, u64), StoreError> {
    let bad = || StoreError::Protocol("malformed revocation entry in redis".into());
    let (r, x) = v.split_once(' ').ok_or_else(bad)?;
    Ok((r.parse().map_err(|_| bad())?, x.parse().map_err(|_| bad())?))
}

fn kind_from(s: &[u8]) -> Option<RevocationKind> {
    match s {
        b"jti" => Some(RevocationKind::Jti),
        b"subject" => Some(RevocationKind::Subject),
        b"task" => Some(RevocationKind::Task),
        b"grant" => Some(RevocationKind::Grant),
        _ => None,
    }
}

/// A stored grant from its JSON and uses left (`u`: unlimited).
fn parse_grant(j: &[u8], r: &str) -> Result<Grant, StoreError> {
    let bad = || StoreError::Protocol("malformed grant in redis".into());
    let mut g: Grant = serde_json::from_slice(j).map_err(|_| bad())?;
    g.remaining = if r == "u" {
        None
    } else {
        Some(r.parse().map_err(|_| bad())?)
    };
    Ok(g)
}

/// A stored grant from its hash fields (`j`, `r`, `x`), if live at `now`.
fn grant_from_fields(
    j: Option<Vec<u8>>,
    r: Option<String>,
    x: Option<String>,
    now: u64,
) -> Result<Option<Grant>, StoreError> {
    let (Some(j), Some(r), Some(x)) = (j, r, x) else {
        return Ok(None);
    };
    let x: u64 = x
        .parse()
        .map_err(|_| StoreError::Protocol("malformed grant in redis".into()))?;
    if x <= now {
        return Ok(None);
    }
    parse_grant(&j, &r).map(Some)
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
        let url = StoreUrl::parse(&cfg.url).map_err(|m| config_error(&m))?;
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
        let manager = target.lazy()?;
        Ok(Self {
            resilience: Resilience::new(&StoreOptions::default()),
            conn: Conn {
                target,
                slot: Mutex::new((manager, Instant::now())),
            },
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

    /// The target for a `redis://` or `rediss://` URL (checked by
    /// [`StoreUrl::parse`]; `ca_pem` only with `rediss://`).
    fn single_target(
        url: &str,
        ca_pem: Option<Vec<u8>>,
        config: &ConnectionManagerConfig,
    ) -> Result<Target, StoreError> {
        let client = match ca_pem {
            Some(pem) => Client::build_with_tls(url, certificates(&pem)),
            None => Client::open(url),
        }
        .map_err(|e| config_error(&format!("bad URL or TLS material ({:?})", e.kind())))?;
        Ok(Target::Single {
            client,
            config: config.clone(),
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
            (Target::Cluster { node, seeds, .. }, true) => {
                Some(block_cache::Source::Cluster {
                    seeds: seeds.clone(),
                    node: node.clone(),
                    slot: cluster_slot(&self.key_feed()),
                })
            }
            _ => None,
        };
        self.block_cache = source.map(|source| {
            let cache = Arc::new(BlockCache::with_feed_key(&self.key_feed()));
            let tracker = block_cache::spawn(
                cache.clone(),
                source,
                self.key_block_prefix(),
                self.timeout,
            );
            (cache, tracker)
        });
        Ok(self)
    }

    /// The block cache, when on (for tests and diagnostics).
    pub fn block_cache(&self) -> Option<&BlockCache> {
        self.block_cache.as_ref().map(|(c, _)| c.as_ref())
    }

    /// The circuit breaker (its state, for tests and diagnostics).
    pub fn breaker(&self) -> &super::breaker::Breaker {
        &self.resilience.breaker
    }

    // ---- keys (the only places key names are made) ----

    pub(crate) fn key_revocation(&self, kind: RevocationKind, value: &str) -> String {
        format!(
            "{}:{{rev}}:e:{}:{}",
            self.prefix,
            kind.as_str(),
            h(value.as_bytes())
        )
    }

    pub(crate) fn key_feed(&self) -> String {
        format!("{}:{{rev}}:feed", self.prefix)
    }

    /// What every block key starts with (the block cache tracks it).
    fn key_block_prefix(&self) -> String {
        format!("{}:{{rev}}:blk:", self.prefix)
    }

    pub(crate) fn key_block(&self, subject: &str) -> String {
        self.key_block_prefix() + &h(subject.as_bytes())
    }

    /// The block index (subject → until), for listing. Not under the block
    /// prefix: the block cache does not track it.
    pub(crate) fn key_block_index(&self) -> String {
        format!("{}:{{rev}}:blocks", self.prefix)
    }

    /// A session record (approval pages): `H(len(ns) ‖ ns ‖ id)`.
    pub(crate) fn key_session(&self, ns: &str, id: &str) -> String {
        format!("{}:ss:{}", self.prefix, h_pair(ns, id))
    }

    pub(crate) fn key_replay(&self, namespace: &str, id: &str) -> String {
        format!("{}:rp:{}", self.prefix, h_pair(namespace, id))
    }

    /// The prefix of a subject's grant keys (ends with `:gr:`).
    pub(crate) fn key_grant_prefix(&self, subject: &str) -> String {
        format!("{}:{{g:{}}}:gr:", self.prefix, h(subject.as_bytes()))
    }

    pub(crate) fn key_grant(&self, subject: &str, id: &str) -> String {
        format!("{}{}", self.key_grant_prefix(subject), h(id.as_bytes()))
    }

    pub(crate) fn key_grant_index(&self, subject: &str) -> String {
        format!("{}:{{g:{}}}:idx", self.prefix, h(subject.as_bytes()))
    }

    pub(crate) fn key_approval(&self, id: &str) -> String {
        format!("{}{}", self.key_approval_prefix(), h(id.as_bytes()))
    }

    /// What every approval record key starts with (then `H(id)`).
    fn key_approval_prefix(&self) -> String {
        format!("{}:{{ap}}:a:", self.prefix)
    }

    pub(crate) fn key_approval_all(&self) -> String {
        format!("{}:{{ap}}:all", self.prefix)
    }

    pub(crate) fn key_approval_requester(&self, requester: &str) -> String {
        format!("{}:{{ap}}:rq:{}", self.prefix, h(requester.as_bytes()))
    }

    /// The pending approval of one request by one requester (for asking
    /// twice): `H(len(requester) ‖ requester ‖ request_hash)`.
    pub(crate) fn key_approval_request(&self, requester: &str, request_hash: &str) -> String {
        format!(
            "{}:{{ap}}:rh:{}",
            self.prefix,
            h_pair(requester, request_hash)
        )
    }

    pub(crate) fn key_grant_pointer(&self, id: &str) -> String {
        format!("{}:{{gx}}:id:{}", self.prefix, h(id.as_bytes()))
    }

    pub(crate) fn key_grant_all(&self) -> String {
        format!("{}:{{gx}}:all", self.prefix)
    }

    pub(crate) fn key_audit_stream(&self) -> String {
        format!("{}:{{audit}}:stream", self.prefix)
    }

    pub(crate) fn key_audit_checkpoints(&self) -> String {
        format!("{}:{{audit}}:checkpoint", self.prefix)
    }

    pub(crate) fn key_audit_checkpoint_times(&self) -> String {
        format!("{}:{{audit}}:checkpoint:t", self.prefix)
    }

    pub(crate) fn key_epoch(&self) -> String {
        format!("{}:{{rev}}:epoch", self.prefix)
    }

    // ---- the data epoch ----

    /// Reads the epoch (writing a `new` one when this broker has seen none
    /// and there is none), and folds it into this broker's view.
    pub async fn check_epoch(&self) -> Result<super::epoch::Verdict, StoreError> {
        use super::epoch::{Epoch, Origin};
        let key = self.key_epoch();
        let mut con = self.conn.manager()?;
        let first = !self.epoch.is_armed();
        let now = unix_now();
        let v: Option<String> = self
            .run(EPOCH_OP, async {
                if first {
                    let fresh = Epoch::fresh(Origin::New, now).encode();
                    let _: Option<String> = ::redis::cmd("SET")
                        .arg(&key)
                        .arg(&fresh)
                        .arg("NX")
                        .query_async(&mut con)
                        .await?;
                }
                Ok(::redis::cmd("GET").arg(&key).query_async(&mut con).await?)
            })
            .await?;
        let found = match v {
            None => None,
            Some(s) => Some(
                Epoch::parse(&s)
                    .ok_or_else(|| StoreError::Protocol("malformed data epoch in redis".into()))?,
            ),
        };
        Ok(self.epoch.observe(found))
    }

    /// Folds the epoch read along with an answer into this broker's view:
    /// an error when the store has lost its data (so the answer it came
    /// with is not used). Before the first check there is nothing to
    /// compare with.
    fn vouch(&self, found: Option<String>, op: &'static str) -> Result<(), StoreError> {
        if !self.epoch.is_armed() {
            return Ok(());
        }
        let found = found
            .map(|s| {
                super::epoch::Epoch::parse(&s)
                    .ok_or_else(|| StoreError::Protocol("malformed data epoch in redis".into()))
            })
            .transpose()?;
        if let super::epoch::Verdict::Lost(why) = self.epoch.observe(found) {
            tracing::error!(reason = %why, "store_epoch_lost");
        }
        if self.epoch.refuses() {
            return Err(self.epoch.refusal(op));
        }
        Ok(())
    }

    /// Checks the epoch every [`super::epoch::CHECK_EVERY`] while `store`
    /// lives (a task holding only a weak reference), and once now.
    pub fn watch_epoch(store: &Arc<RedisStore>) {
        let weak = Arc::downgrade(store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(super::epoch::CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                match store.check_epoch().await {
                    Ok(super::epoch::Verdict::Lost(why)) => {
                        tracing::error!(reason = %why, "store_epoch_lost");
                    }
                    Ok(super::epoch::Verdict::Recovered) => {
                        tracing::warn!("store data epoch recovered by an operator: serving again");
                    }
                    Ok(super::epoch::Verdict::Same) => {}
                    // Unreachable: the breaker and the readiness probe say so.
                    Err(e) => tracing::debug!(error = %e, "data epoch not checked"),
                }
            }
        });
    }

    // ---- calls ----

    /// Runs one operation under the timeout and maps its failure.
    async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, Fail>>,
    {
        self.run_for(op, self.timeout, f).await
    }

    /// Runs one operation under `timeout`, through the circuit breaker: while
    /// it is open the call fails at once without touching Redis (and is
    /// counted in `tessera_store_fast_failures_total`, not in the latency
    /// histogram, which measures Redis operations only).
    async fn run_for<T, F>(
        &self,
        op: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, Fail>>,
    {
        let m = crate::telemetry::metrics();
        // The store lost its data: nothing it says can be trusted to hold
        // every revocation (R6). The epoch check itself still runs.
        if op != EPOCH_OP && self.epoch.refuses() {
            m.store_fast_failures.with_label_values(&[op]).inc();
            return Err(self.epoch.refusal(op));
        }
        let breaker = &self.resilience.breaker;
        let permit = match breaker.admit() {
            Ok(p) => p,
            Err(rejected) => {
                m.store_fast_failures.with_label_values(&[op]).inc();
                m.store_breaker_open.set(1);
                return Err(StoreError::Unavailable(format!(
                    "redis {op}: circuit open after repeated timeouts or connection failures; \
                     not tried (next probe in {} ms)",
                    rejected.retry_in.as_millis()
                )));
            }
        };
        let started = std::time::Instant::now();
        let r = self.run_inner(op, timeout, f).await;
        m.store_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        match &r {
            Err((e, unreachable)) => {
                let kind = match e {
                    StoreError::Unavailable(_) => "unavailable",
                    StoreError::Protocol(_) => "protocol",
                };
                m.store_errors.with_label_values(&[op, kind]).inc();
                if *unreachable {
                    permit.unreachable();
                    if breaker.is_open() {
                        // The next call through is the probe: on a fresh
                        // connection, so that it succeeds if Redis answers.
                        self.conn.renew_for_probe();
                    }
                } else {
                    permit.answered();
                }
            }
            Ok(_) => permit.answered(),
        }
        m.store_breaker_open.set(i64::from(breaker.is_open()));
        r.map_err(|(e, _)| e)
    }

    /// The call's result; a failure says whether Redis was unreachable (a
    /// timeout or a connection failure: what the breaker counts) rather
    /// than answering with an error.
    async fn run_inner<T, F>(
        &self,
        op: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, (StoreError, bool)>
    where
        F: Future<Output = Result<T, Fail>>,
    {
        match tokio::time::timeout(timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Fail::Store(e))) => Err((e, false)),
            Ok(Err(Fail::Redis(e))) => {
                let what = describe(&e);
                if is_unavailable(&e) {
                    // I/O errors: the manager reconnects by itself. Anything
                    // else may be a cached failed connection: start afresh.
                    if !e.is_io_error() || e.is_timeout() {
                        self.conn.rebuild();
                    }
                    Err((
                        StoreError::Unavailable(format!("redis {op}: {what}")),
                        is_unreachable(&e),
                    ))
                } else {
                    Err((StoreError::Protocol(format!("redis {op}: {what}")), false))
                }
            }
            Err(_) => {
                // A server that does not answer may sit behind a half-open
                // connection the manager cannot see: start afresh.
                self.conn.rebuild();
                Err((
                    StoreError::Unavailable(format!(
                        "redis {op}: no answer within {} ms",
                        timeout.as_millis()
                    )),
                    true,
                ))
            }
        }
    }

    async fn get_grant(&self, con: &mut Con, id: &str, now: u64) -> Result<Option<Grant>, Fail> {
        let subject: Option<String> = ::redis::cmd("GET")
            .arg(self.key_grant_pointer(id))
            .query_async(con)
            .await?;
        let Some(subject) = subject else {
            return Ok(None);
        };
        let (j, r, x): (Option<Vec<u8>>, Option<String>, Option<String>) = ::redis::cmd("HMGET")
            .arg(self.key_grant(&subject, id))
            .arg("j")
            .arg("r")
            .arg("x")
            .query_async(con)
            .await?;
        let g = grant_from_fields(j, r, x, now)?;
        Ok(g.filter(|g| g.id == id && g.subject == subject))
    }

    async fn load_grants(
        &self,
        con: &mut Con,
        pairs: &[(String, String)],
        now: u64,
    ) -> Result<Vec<Grant>, Fail> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        type Fields = (Option<Vec<u8>>, Option<String>, Option<String>);
        let hmget = |subject: &str, id: &str| {
            let mut c = ::redis::cmd("HMGET");
            c.arg(self.key_grant(subject, id))
                .arg("j")
                .arg("r")
                .arg("x");
            c
        };
        let rows: Vec<Fields> = if con.is_cluster() {
            // The grants of different subjects are in different slots, and
            // a cluster pipeline must stay in one: one command each, at once.
            futures_util::future::try_join_all(pairs.iter().map(|(subject, id)| {
                let mut c = con.clone();
                let cmd = hmget(subject, id);
                async move { cmd.query_async::<Fields>(&mut c).await }
            }))
            .await?
        } else {
            let mut pipe = ::redis::pipe();
            for (subject, id) in pairs {
                pipe.add_command(hmget(subject, id));
            }
            pipe.query_async(con).await?
        };
        let mut out = Vec::new();
        for ((j, r, x), (subject, id)) in rows.into_iter().zip(pairs) {
            if let Some(g) = grant_from_fields(j, r, x, now)? {
                if &g.id == id && &g.subject == subject {
                    out.push(g);
                }
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }
}

impl RedisStore {
    /// The revoke script (`EVAL`, so a fresh connection needs no script
    /// load) then `WAIT required wait_ms`, as one pipeline; after `ASKING`
    /// when it goes to the node an `ASK` named (a slot being migrated).
    fn revoke_wait_pipe(
        &self,
        r: &Revocation,
        required: u32,
        wait_ms: u64,
        asking: bool,
    ) -> ::redis::Pipeline {
        let mut pipe = ::redis::pipe();
        if asking {
            pipe.cmd("ASKING").ignore();
        }
        pipe.cmd("EVAL")
            .arg(format!("{LUA_EXTEND}{LUA_REVOKE}"))
            .arg(2)
            .arg(self.key_revocation(r.kind, &r.value))
            .arg(self.key_feed())
            .arg(r.revoked_at)
            .arg(r.expires_at)
            .arg(r.kind.as_str())
            .arg(r.value.as_str())
            .arg(FEED_MAXLEN)
            .cmd("WAIT")
            .arg(required)
            .arg(wait_ms);
        pipe
    }

    /// Where the master that owns the slot of `{rev}` listens, as the
    /// cluster says now: `CLUSTER SLOTS`, asked (through the cluster
    /// connection) of the node that connection holds for that slot.
    async fn rev_master(&self) -> Result<(String, u16), Fail> {
        let Con::Cluster(c) = self.conn.manager()? else {
            return Err(protocol("revoke: not a cluster connection"));
        };
        let feed = self.key_feed();
        let mut cmd = ::redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
            &feed,
            SlotAddr::Master,
        )));
        let slots = c.get().await?.route_command(cmd, route).await?;
        slot_master(&slots, cluster_slot(&feed)).map_err(|why| {
            Fail::Store(StoreError::Unavailable(format!(
                "redis revoke: {why} (CLUSTER SLOTS)"
            )))
        })
    }

    /// [`RevocationStore::revoke_acked`] on a cluster: the revoke pipeline
    /// on a connection of its own to the master that owns the slot of
    /// `{rev}`, looked up just before ([`RedisStore::rev_master`]). The
    /// script succeeds only on the node that owns the slot at that moment
    /// (any other answers `MOVED` or `ASK`), so the `WAIT` after it on the
    /// same connection counts that master's replicas.
    ///
    /// One more try, and only when the first wrote nothing: after `MOVED`
    /// or `ASK` (the slot moved since the lookup; to the node the answer
    /// names, after `ASKING` for `ASK`), or after a connection that could not
    /// be made (to the master the cluster names then). Any other failure,
    /// or a second one, fails the call: the revocation is reported as not
    /// made, never as durable.
    async fn cluster_revoke_acked(
        &self,
        node: &ConnectionInfo,
        config: &::redis::AsyncConnectionConfig,
        r: &Revocation,
        required: u32,
        wait_ms: u64,
    ) -> Result<(String, i64), Fail> {
        let mut to = self.rev_master().await?;
        let mut asking = false;
        let mut retried = false;
        loop {
            let pipe = self.revoke_wait_pipe(r, required, wait_ms, asking);
            let (e, connected) = match revoke_at(node, config, &to, &pipe).await {
                Ok(v) => return Ok(v),
                Err(failed) => failed,
            };
            if retried {
                return Err(e.into());
            }
            retried = true;
            if let Some((addr, ask)) = redirection(&e, &to.0) {
                tracing::debug!(
                    ask,
                    "redis store: the revocation slot moved; following the redirection"
                );
                to = addr;
                asking = ask;
            } else if !connected {
                tracing::debug!(
                    "redis store: no connection to the master of the revocation slot; \
                     asking the cluster again"
                );
                to = self.rev_master().await?;
                asking = false;
            } else {
                return Err(e.into());
            }
        }
    }
}

/// Runs `pipe` (the revoke pipeline) on a new connection to `to` with the
/// URL's credentials. A failure says whether the connection was made (if
/// not, nothing was sent).
async fn revoke_at(
    node: &ConnectionInfo,
    config: &::redis::AsyncConnectionConfig,
    to: &(String, u16),
    pipe: &::redis::Pipeline,
) -> Result<(String, i64), (RedisError, bool)> {
    let client = node_client(&to.0, to.1, node).map_err(|e| (e, false))?;
    let mut con = client
        .get_multiplexed_async_connection_with_config(config)
        .await
        .map_err(|e| (e, false))?;
    pipe.query_async(&mut con).await.map_err(|e| (e, true))
}

/// `host:port` split, an IPv6 host's brackets dropped; `None` without a
/// port above 0.
pub(crate) fn host_port(s: &str) -> Option<(&str, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    let p = p.parse::<u16>().ok().filter(|p| *p > 0)?;
    Some((h.trim_start_matches('[').trim_end_matches(']'), p))
}

/// A client for one node, `host:port`, with what the URL gives every node
/// (`node`: credentials, database and, for `rediss+cluster://`, TLS with
/// the URL's CA); only the address is replaced.
pub(crate) fn node_client(
    host: &str,
    port: u16,
    node: &ConnectionInfo,
) -> ::redis::RedisResult<Client> {
    let addr = match node.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_string(), port),
    };
    Client::open(node.clone().set_addr(addr))
}

/// The master of `slot` in a `CLUSTER SLOTS` answer (`[start, end,
/// [host, port, id, …], replicas…]` per range), or why there is none to
/// connect to.
pub(crate) fn slot_master(slots: &Value, slot: u16) -> Result<(String, u16), &'static str> {
    let Value::Array(ranges) = slots else {
        return Err("unexpected answer");
    };
    for range in ranges {
        let Value::Array(item) = range else {
            continue;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(master)) =
            (item.first(), item.get(1), item.get(2))
        else {
            continue;
        };
        if !(*start..=*end).contains(&i64::from(slot)) {
            continue;
        }
        let Value::Array(m) = master else {
            return Err("unexpected answer");
        };
        let host = match m.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => String::new(),
        };
        // Empty, NULL or "?": the node does not know where it is reachable
        // (set cluster-announce-ip); a wildcard is not an address.
        if host.is_empty() || matches!(host.as_str(), "?" | "0.0.0.0" | "::") {
            return Err("the master of the revocation slot announces no address");
        }
        let port = match m.get(1) {
            Some(Value::Int(p)) => u16::try_from(*p).ok().filter(|p| *p > 0),
            _ => None,
        };
        return port
            .map(|p| (host, p))
            .ok_or("the master of the revocation slot announces no port");
    }
    Err("no master serves the revocation slot")
}

/// Where a `MOVED` or `ASK` answer (alone or in a pipeline) sends the
/// command, and whether it was `ASK`. An empty host means the host of the
/// node that answered (`asked`).
pub(crate) fn redirection(e: &RedisError, asked: &str) -> Option<((String, u16), bool)> {
    let errors = e.clone().into_server_errors()?;
    errors.iter().find_map(|(_, s)| {
        let ask = match s.kind()? {
            ServerErrorKind::Moved => false,
            ServerErrorKind::Ask => true,
            _ => return None,
        };
        let addr = s.details()?.split_ascii_whitespace().nth(1)?;
        let (host, port) = host_port(addr)?;
        let host = match host {
            "" => asked,
            "?" => return None,
            h => h,
        };
        Some(((host.to_string(), port), ask))
    })
}

#[async_trait]
impl RevocationStore for RedisStore {
    async fn revoke(&self, r: Revocation) -> Result<String, StoreError> {
        if r.value.len() > MAX_REVOCATION_VALUE_BYTES {
            return Err(StoreError::Protocol("revocation value too long".into()));
        }
        check_time(r.expires_at, "expires_at")?;
        check_time(r.revoked_at, "revoked_at")?;
        let mut con = self.conn.manager()?;
        let id: String = self
            .run("revoke", async {
                Ok(self
                    .revoke_script
                    .key(self.key_revocation(r.kind, &r.value))
                    .key(self.key_feed())
                    .arg(r.revoked_at)
                    .arg(r.expires_at)
                    .arg(r.kind.as_str())
                    .arg(r.value.as_str())
                    .arg(FEED_MAXLEN)
                    .invoke_async(&mut con)
                    .await?)
            })
            .await?;
        encode_cursor(&id)
    }

    /// The revoke script and `WAIT revocation_replicas revocation_wait` as
    /// one pipeline on a connection of its own, opened for this call.
    ///
    /// Why not the shared [`ConnectionManager`]: `WAIT` counts the replicas
    /// that acknowledged the last write *of the connection it runs on*, so it
    /// must follow the script on the same connection with no reconnection in
    /// between (one pipeline on one connection guarantees both; a manager
    /// that reconnected between two calls would run `WAIT` on a fresh
    /// connection with nothing written, and report a false "durable"). And
    /// `WAIT` blocks the connection it runs on: on the multiplexed connection
    /// every other store call of the process would queue behind it for up to
    /// `revocation_wait`. Operator revocations are rare; the extra connect is
    /// cheap. Earlier writes of this process on the shared connection (a
    /// grant removal, a subject block) precede the script in the primary's
    /// replication stream, so an acknowledgement of the script covers them.
    ///
    /// On a cluster the connection goes to the master that owns the slot
    /// of `{rev}` (see [`RedisStore::cluster_revoke_acked`]): only its
    /// replicas receive the script's write, and `WAIT` on any other master
    /// would count replicas of a stream the script never entered.
    async fn revoke_acked(&self, r: Revocation) -> Result<Revoked, StoreError> {
        let required = self.resilience.revocation_replicas;
        if required == 0 {
            return Ok(Revoked {
                cursor: RevocationStore::revoke(self, r).await?,
                replicas: None,
            });
        }
        if r.value.len() > MAX_REVOCATION_VALUE_BYTES {
            return Err(StoreError::Protocol("revocation value too long".into()));
        }
        check_time(r.expires_at, "expires_at")?;
        check_time(r.revoked_at, "revoked_at")?;
        let wait = self.resilience.revocation_wait;
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let budget = match self.conn.target {
            // one more try after a redirection or a connection not made
            Target::Cluster { .. } => self.timeout.saturating_add(wait).saturating_mul(2),
            Target::Single { .. } | Target::Sentinel { .. } => self.timeout.saturating_add(wait),
        };
        let (id, acked): (String, i64) = self
            .run_for("revoke", budget, async {
                let config = ::redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(None);
                // A connection of its own, to the primary: with Sentinel,
                // the one the sentinels name now; on a cluster, the master
                // of the revocation slot.
                let client = match &self.conn.target {
                    Target::Single { client, .. } => client.clone(),
                    Target::Sentinel { sentinel, .. } => {
                        sentinel.lock().await.async_get_client().await?
                    }
                    Target::Cluster { node, .. } => {
                        return self
                            .cluster_revoke_acked(node, &config, &r, required, wait_ms)
                            .await;
                    }
                };
                let mut con = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok(self
                    .revoke_wait_pipe(&r, required, wait_ms, false)
                    .query_async(&mut con)
                    .await?)
            })
            .await?;
        let acked = u32::try_from(acked.max(0)).unwrap_or(u32::MAX);
        if acked < required {
            tracing::warn!(
                kind = r.kind.as_str(),
                acked,
                required,
                wait_ms,
                "redis store: revocation in force on the primary but NOT durable (too few \
                 replica acknowledgements)"
            );
        }
        Ok(Revoked {
            cursor: encode_cursor(&id)?,
            replicas: Some(ReplicaAck { acked, required }),
        })
    }

    async fn is_revoked(&self, t: &TokenFacts, now: u64) -> Result<bool, StoreError> {
        if t.actors.len() > MAX_ACTORS || t.ancestors.len() > MAX_ACTORS {
            return Err(StoreError::Protocol("actor chain too long to check".into()));
        }
        let covered = t.covered();
        let mut keys: Vec<String> = covered
            .lookups()
            .into_iter()
            .map(|(kind, value)| self.key_revocation(kind, value))
            .collect();
        // The data epoch rides along (same slot, `{rev}`): an answer from a
        // store that lost its data is never taken for "not revoked".
        let vouched = self.epoch.is_armed();
        if vouched {
            keys.push(self.key_epoch());
        }
        let mut con = self.conn.manager()?;
        let mut values: Vec<Option<String>> = self
            .run("is_revoked", async {
                let mut pipe = ::redis::pipe();
                for k in &keys {
                    pipe.get(k);
                }
                Ok(pipe.query_async(&mut con).await?)
            })
            .await?;
        if values.len() != keys.len() {
            return Err(StoreError::Protocol("short pipeline reply".into()));
        }
        if vouched {
            self.vouch(values.pop().flatten(), "is_revoked")?;
        }
        let found = values
            .iter()
            .map(|v| {
                v.as_deref().map(parse_entry).transpose().map(|e| {
                    e.map(|(revoked_at, expires_at)| crate::revocation::Entry {
                        revoked_at,
                        expires_at,
                    })
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(covered.revoked_by(found, now))
    }

    async fn list_since(
        &self,
        cursor: Option<&str>,
        limit: usize,
        now: u64,
    ) -> Result<(Vec<(String, Revocation)>, String), StoreError> {
        let start = cursor.map(decode_cursor).transpose()?;
        let limit = limit.min(MAX_FEED_PAGE);
        let feed = self.key_feed();
        let mut con = self.conn.manager()?;
        self.run("list_since", async {
            let mut out: Vec<(String, Revocation)> = Vec::new();
            let mut last_scanned: Option<String> = None;
            let mut scanned = 0usize;
            while out.len() < limit && scanned < MAX_FEED_SCAN {
                let from = match (&last_scanned, &start) {
                    (Some(id), _) | (None, Some(id)) => format!("({id}"),
                    (None, None) => "-".to_string(),
                };
                let batch = FEED_BATCH.min(MAX_FEED_SCAN - scanned);
                let rows: Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)> = ::redis::cmd("XRANGE")
                    .arg(&feed)
                    .arg(from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(batch)
                    .query_async(&mut con)
                    .await?;
                let n = rows.len();
                for (id, fields) in rows {
                    scanned += 1;
                    let rev = revocation_from_fields(&fields)?;
                    last_scanned = Some(id.clone());
                    if rev.expires_at > now {
                        out.push((encode_cursor(&id)?, rev));
                        if out.len() >= limit {
                            break;
                        }
                    }
                }
                if n < batch {
                    break;
                }
            }
            let next = match (last_scanned, cursor) {
                (Some(id), _) => encode_cursor(&id)?,
                (None, Some(c)) => c.to_string(),
                (None, None) => {
                    let last: Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)> = ::redis::cmd("XREVRANGE")
                        .arg(&feed)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut con)
                        .await?;
                    match last.first() {
                        Some((id, _)) => encode_cursor(id)?,
                        None => encode_cursor("0-0")?,
                    }
                }
            };
            Ok((out, next))
        })
        .await
    }

    async fn block_subject(&self, subject: &str, until: u64) -> Result<u64, StoreError> {
        check_time(until, "until")?;
        let key = self.key_block(subject);
        let index = self.key_block_index();
        let mut con = self.conn.manager()?;
        let r = self
            .run("block_subject", async {
                let u: u64 = self
                    .block_script
                    .key(&key)
                    .key(&index)
                    .arg(until)
                    .arg(subject)
                    .arg(BLOCK_INDEX_PRUNE)
                    .invoke_async(&mut con)
                    .await?;
                Ok(u)
            })
            .await;
        // Before the caller hears of it, and whatever the outcome (a write
        // may have landed): an exchange here reads the block from Redis.
        if let Some((c, _)) = &self.block_cache {
            c.invalidate(key.as_bytes());
        }
        r
    }

    async fn unblock_subject(&self, subject: &str, _now: u64) -> Result<bool, StoreError> {
        let key = self.key_block(subject);
        let index = self.key_block_index();
        let mut con = self.conn.manager()?;
        let r = self
            .run("unblock_subject", async {
                let n: i64 = self
                    .unblock_script
                    .key(&key)
                    .key(&index)
                    .arg(subject)
                    .invoke_async(&mut con)
                    .await?;
                Ok(n == 1)
            })
            .await;
        // As for a block: this replica's cache forgets the entry before the
        // operator hears of it; the others on Redis's invalidation.
        if let Some((c, _)) = &self.block_cache {
            c.invalidate(key.as_bytes());
        }
        r
    }

    async fn list_blocks(&self, _now: u64) -> Result<Vec<(String, u64)>, StoreError> {
        let index = self.key_block_index();
        let mut con = self.conn.manager()?;
        let flat: Vec<String> = self
            .run("list_blocks", async {
                Ok(self
                    .blocks_list_script
                    .key(&index)
                    .invoke_async(&mut con)
                    .await?)
            })
            .await?;
        let mut v = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            let until = pair[1]
                .parse::<u64>()
                .map_err(|_| StoreError::Protocol("malformed block index entry in redis".into()))?;
            v.push((pair[0].clone(), until));
        }
        v.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(super::MAX_LISTED_BLOCKS);
        Ok(v)
    }

    fn feed_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.block_cache.as_ref().map(|(c, _)| c.feed_changes())
    }

    async fn is_blocked(&self, subject: &str, now: u64) -> Result<bool, StoreError> {
        let key = self.key_block(subject);
        // With the breaker open the store is failing: no cached answers.
        let lookup = match &self.block_cache {
            Some((c, _)) if !self.resilience.breaker.is_open() && !self.epoch.refuses() => {
                c.lookup(&key)
            }
            _ => Lookup::Off,
        };
        if let Lookup::Hit(until) = lookup {
            return Ok(until.is_some_and(|u| u > now));
        }
        let mut con = self.conn.manager()?;
        // With the data epoch when this broker holds one (see is_revoked).
        let epoch_key = self.epoch.is_armed().then(|| self.key_epoch());
        let (v, epoch): (Option<String>, Option<String>) = self
            .run("is_blocked", async {
                Ok(match &epoch_key {
                    Some(e) => {
                        ::redis::pipe()
                            .get(&key)
                            .get(e)
                            .query_async(&mut con)
                            .await?
                    }
                    None => (
                        ::redis::cmd("GET").arg(&key).query_async(&mut con).await?,
                        None,
                    ),
                })
            })
            .await?;
        if epoch_key.is_some() {
            self.vouch(epoch, "is_blocked")?;
        }
        let until = match v {
            None => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .map_err(|_| StoreError::Protocol("malformed block entry in redis".into()))?,
            ),
        };
        if let (Lookup::Miss(seq), Some((c, _))) = (lookup, &self.block_cache) {
            c.fill(&key, seq, until);
        }
        Ok(until.is_some_and(|u| u > now))
    }
}

fn revocation_from_fields(fields: &[(Vec<u8>, Vec<u8>)]) -> Result<Revocation, Fail> {
    let get = |name: &[u8]| {
        fields
            .iter()
            .find(|(k, _)| k.as_slice() == name)
            .map(|(_, v)| v.as_slice())
    };
    let num = |name: &[u8]| -> Option<u64> { std::str::from_utf8(get(name)?).ok()?.parse().ok() };
    let kind = get(b"k").and_then(kind_from);
    let value = get(b"v").and_then(|v| String::from_utf8(v.to_vec()).ok());
    match (kind, value, num(b"r"), num(b"x")) {
        (Some(kind), Some(value), Some(revoked_at), Some(expires_at)) => Ok(Revocation {
            kind,
            value,
            revoked_at,
            expires_at,
        }),
        _ => Err(protocol("malformed feed entry in redis")),
    }
}

#[async_trait]
impl ReplayGuard for RedisStore {
    async fn first_use(
        &self,
        namespace: &str,
        id: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        if expires_at <= now {
            // Nothing to remember: the record would be dead already.
            return Ok(true);
        }
        check_time(expires_at, "expires_at")?;
        let mut con = self.conn.manager()?;
        let set: Option<String> = self
            .run("first_use", async {
                Ok(::redis::cmd("SET")
                    .arg(self.key_replay(namespace, id))
                    .arg(1)
                    .arg("NX")
                    .arg("EXAT")
                    .arg(expires_at)
                    .query_async(&mut con)
                    .await?)
            })
            .await?;
        Ok(set.is_some())
    }
}

#[async_trait]
impl super::SessionStore for RedisStore {
    async fn put_session(
        &self,
        ns: &str,
        id: &str,
        value: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        if value.len() > super::MAX_SESSION_BYTES {
            return Err(StoreError::Protocol("session record too large".into()));
        }
        if expires_at <= now {
            return Ok(());
        }
        check_time(expires_at, "expires_at")?;
        let mut con = self.conn.manager()?;
        self.run("session put", async {
            let _: () = ::redis::cmd("SET")
                .arg(self.key_session(ns, id))
                .arg(value)
                .arg("EXAT")
                .arg(expires_at)
                .query_async(&mut con)
                .await?;
            Ok(())
        })
        .await
    }

    async fn get_session(
        &self,
        ns: &str,
        id: &str,
        _now: u64,
    ) -> Result<Option<String>, StoreError> {
        let mut con = self.conn.manager()?;
        self.run("session get", async {
            Ok(::redis::cmd("GET")
                .arg(self.key_session(ns, id))
                .query_async(&mut con)
                .await?)
        })
        .await
    }

    async fn take_session(
        &self,
        ns: &str,
        id: &str,
        _now: u64,
    ) -> Result<Option<String>, StoreError> {
        let mut con = self.conn.manager()?;
        self.run("session take", async {
            Ok(::redis::cmd("GETDEL")
                .arg(self.key_session(ns, id))
                .query_async(&mut con)
                .await?)
        })
        .await
    }

    async fn delete_session(&self, ns: &str, id: &str) -> Result<(), StoreError> {
        let mut con = self.conn.manager()?;
        self.run("session delete", async {
            let _: i64 = ::redis::cmd("DEL")
                .arg(self.key_session(ns, id))
                .query_async(&mut con)
                .await?;
            Ok(())
        })
        .await
    }
}

/// The operation name of the epoch check (runs while the store is lost).
const EPOCH_OP: &str = "epoch";

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[async_trait]
impl StoreHealth for RedisStore {
    fn data_lost(&self) -> bool {
        self.epoch.is_lost()
    }

    fn data_lost_changes(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.epoch.watch())
    }

    async fn rearm_epoch(&self) -> Result<String, StoreError> {
        use super::epoch::{Epoch, Origin};
        let e = Epoch::fresh(Origin::Recovered, unix_now());
        let key = self.key_epoch();
        let value = e.encode();
        let mut con = self.conn.manager()?;
        let () = self
            .run(EPOCH_OP, async {
                Ok(::redis::cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .query_async(&mut con)
                    .await?)
            })
            .await?;
        let id = e.id.clone();
        self.epoch.rearmed(e);
        Ok(id)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut con = self.conn.manager()?;
        let pong: String = self
            .run("ping", async {
                Ok(::redis::cmd("PING").query_async(&mut con).await?)
            })
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Protocol("unexpected PING reply".into()))
        }
    }
}

#[async_trait]
impl GrantStore for RedisStore {
    async fn create(&self, g: &Grant) -> Result<(), StoreError> {
        if g.id.is_empty() || g.id.len() > MAX_GRANT_ID_BYTES {
            return Err(StoreError::Protocol("grant id empty or too long".into()));
        }
        if g.scopes.len() > MAX_GRANT_SCOPES {
            return Err(StoreError::Protocol("too many scopes in grant".into()));
        }
        check_time(g.expires_at, "expires_at")?;
        let mut stored = g.clone();
        stored.remaining = g.uses;
        let json = serde_json::to_vec(&stored)
            .map_err(|_| StoreError::Protocol("grant does not serialize".into()))?;
        if json.len() > MAX_GRANT_BYTES {
            return Err(StoreError::Protocol("grant too large".into()));
        }
        let remaining = match g.uses {
            Some(n) => n.to_string(),
            None => "u".to_string(),
        };
        let mut con = self.conn.manager()?;
        let (p, c): (i64, i64) = self
            .run("grant create", async {
                let p: i64 = self
                    .grant_pointer_script
                    .key(self.key_grant_pointer(&g.id))
                    .key(self.key_grant_all())
                    .arg(g.subject.as_str())
                    .arg(g.id.as_str())
                    .arg(g.expires_at)
                    .arg(MAX_GRANTS_TOTAL)
                    .invoke_async(&mut con)
                    .await?;
                if p != 1 {
                    return Ok((p, 0));
                }
                let c: i64 = self
                    .grant_create_script
                    .key(self.key_grant(&g.subject, &g.id))
                    .key(self.key_grant_index(&g.subject))
                    .arg(h(g.id.as_bytes()))
                    .arg(json.as_slice())
                    .arg(remaining.as_str())
                    .arg(g.expires_at)
                    .arg(MAX_GRANTS_PER_SUBJECT)
                    .arg(self.key_grant_prefix(&g.subject))
                    .invoke_async(&mut con)
                    .await?;
                Ok((p, c))
            })
            .await?;
        match (p, c) {
            (-1, _) | (1, -1) => Err(StoreError::Protocol("grant id already exists".into())),
            (-2, _) => Err(StoreError::Unavailable("too many live grants".into())),
            (1, -2) => Err(StoreError::Unavailable(
                "too many live grants for this subject".into(),
            )),
            // 0: already expired by the server clock; stored as nothing.
            _ => Ok(()),
        }
    }

    async fn get(&self, id: &str, now: u64) -> Result<Option<Grant>, StoreError> {
        if id.is_empty() || id.len() > MAX_GRANT_ID_BYTES {
            return Ok(None);
        }
        let mut con = self.conn.manager()?;
        self.run("grant get", self.get_grant(&mut con, id, now))
            .await
    }

    async fn list(&self, subject: Option<&str>, now: u64) -> Result<Vec<Grant>, StoreError> {
        if subject.is_some_and(|s| s.len() > MAX_GRANT_BYTES) {
            return Ok(Vec::new());
        }
        let mut con = self.conn.manager()?;
        self.run("grant list", async {
            let pairs: Vec<(String, String)> = match subject {
                None => {
                    let ids: Vec<String> = ::redis::cmd("ZRANGE")
                        .arg(self.key_grant_all())
                        .arg(format!("({now}"))
                        .arg("+inf")
                        .arg("BYSCORE")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(MAX_GRANTS_LISTED)
                        .query_async(&mut con)
                        .await?;
                    if ids.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut pipe = ::redis::pipe();
                    for id in &ids {
                        pipe.get(self.key_grant_pointer(id));
                    }
                    let subjects: Vec<Option<String>> = pipe.query_async(&mut con).await?;
                    ids.into_iter()
                        .zip(subjects)
                        .filter_map(|(id, s)| s.map(|s| (s, id)))
                        .collect()
                }
                Some(s) => {
                    // Members are H(id); the ids are in the grants themselves.
                    let members: Vec<String> = ::redis::cmd("SMEMBERS")
                        .arg(self.key_grant_index(s))
                        .query_async(&mut con)
                        .await?;
                    if members.is_empty() {
                        return Ok(Vec::new());
                    }
                    let prefix = self.key_grant_prefix(s);
                    let mut pipe = ::redis::pipe();
                    for m in members.iter().take(MAX_GRANTS_LISTED) {
                        // members are hex digests written by us; refuse others
                        if m.len() != 64 || !m.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(protocol("malformed grant index in redis"));
                        }
                        pipe.cmd("HMGET")
                            .arg(format!("{prefix}{m}"))
                            .arg("j")
                            .arg("r")
                            .arg("x");
                    }
                    type Fields = (Option<Vec<u8>>, Option<String>, Option<String>);
                    let rows: Vec<Fields> = pipe.query_async(&mut con).await?;
                    let mut out = Vec::new();
                    for (j, r, x) in rows {
                        if let Some(g) = grant_from_fields(j, r, x, now)? {
                            if g.subject == s {
                                out.push(g);
                            }
                        }
                    }
                    out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
                    return Ok(out);
                }
            };
            self.load_grants(&mut con, &pairs, now).await
        })
        .await
    }

    async fn revoke(&self, id: &str, subject: &str) -> Result<bool, StoreError> {
        if id.is_empty() || id.len() > MAX_GRANT_ID_BYTES || subject.len() > MAX_GRANT_BYTES {
            return Ok(false);
        }
        let mut con = self.conn.manager()?;
        self.run("grant revoke", async {
            let n: i64 = self
                .grant_revoke_script
                .key(self.key_grant(subject, id))
                .key(self.key_grant_index(subject))
                .arg(h(id.as_bytes()))
                .invoke_async(&mut con)
                .await?;
            if n == 1 {
                // The pointer and list entry; only when the grant was this
                // subject's (so another subject's pointer is never removed).
                let mut pipe = ::redis::pipe();
                pipe.del(self.key_grant_pointer(id))
                    .ignore()
                    .zrem(self.key_grant_all(), id)
                    .ignore();
                let () = pipe.query_async(&mut con).await?;
            }
            Ok(n == 1)
        })
        .await
    }

    async fn consume(
        &self,
        subject: &str,
        audience: &str,
        scopes: &[String],
        task: Option<&str>,
        now: u64,
    ) -> Result<Option<Grant>, StoreError> {
        // Nothing longer than a stored grant can match one: no round trip.
        let too_long = |s: &str| s.len() > MAX_GRANT_BYTES;
        if too_long(subject)
            || too_long(audience)
            || task.is_some_and(too_long)
            || scopes.len() > MAX_GRANT_SCOPES
            || scopes.iter().any(|s| too_long(s))
        {
            return Ok(None);
        }
        let mut con = self.conn.manager()?;
        let reply: Option<(Vec<u8>, String)> = self
            .run("grant consume", async {
                let mut inv = self.grant_consume_script.key(self.key_grant_index(subject));
                inv.arg(self.key_grant_prefix(subject))
                    .arg(now)
                    .arg(subject)
                    .arg(audience)
                    .arg(if task.is_some() { "1" } else { "0" })
                    .arg(task.unwrap_or(""));
                for s in scopes {
                    inv.arg(s.as_str());
                }
                Ok(inv.invoke_async(&mut con).await?)
            })
            .await?;
        let Some((j, r)) = reply else {
            return Ok(None);
        };
        let g = parse_grant(&j, &r)?;
        Ok(Some(g).filter(|g| g.subject == subject && g.audience == audience))
    }
}

/// Longest approval id the Redis store looks up.
pub const MAX_APPROVAL_ID_BYTES: usize = 128;

/// The hash fields an approval is read from, in this order.
const APPROVAL_FIELDS: [&str; 6] = ["j", "s", "x", "b", "t", "w"];

type ApprovalFields = (
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// An approval from its stored JSON and its decision fields.
fn approval_from(
    j: &[u8],
    state: Option<&str>,
    by: Option<String>,
    at: Option<String>,
    reason: Option<String>,
) -> Result<Approval, StoreError> {
    let bad = || StoreError::Protocol("malformed approval in redis".into());
    let mut a: Approval = serde_json::from_slice(j).map_err(|_| bad())?;
    if let Some(s) = state {
        a.state = ApprovalState::parse(s).ok_or_else(bad)?;
    }
    a.decided_by = by.filter(|b| !b.is_empty());
    a.decided_at = match at.filter(|t| !t.is_empty()) {
        Some(t) => Some(t.parse().map_err(|_| bad())?),
        None => None,
    };
    a.reason = reason.filter(|r| !r.is_empty());
    Ok(a)
}

/// A retained approval from its hash fields, if present and retained at `now`.
fn approval_from_fields(f: ApprovalFields, now: u64) -> Result<Option<Approval>, StoreError> {
    let (Some(j), Some(s), Some(x), b, t, w) = f else {
        return Ok(None);
    };
    let x: u64 = x
        .parse()
        .map_err(|_| StoreError::Protocol("malformed approval in redis".into()))?;
    if x.saturating_add(APPROVAL_RETAIN_SECS) <= now {
        return Ok(None);
    }
    approval_from(&j, Some(&s), b, t, w).map(Some)
}

fn valid_approval_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_APPROVAL_ID_BYTES
}

#[async_trait]
impl ApprovalStore for RedisStore {
    async fn create_approval(&self, a: &Approval) -> Result<ApprovalCreated, StoreError> {
        if !valid_approval_id(&a.id) {
            return Err(StoreError::Protocol("approval id empty or too long".into()));
        }
        let keep = a.expires_at.saturating_add(APPROVAL_RETAIN_SECS);
        check_time(keep, "expires_at")?;
        let mut stored = a.clone();
        stored.state = ApprovalState::Pending;
        let json = serde_json::to_vec(&stored)
            .map_err(|_| StoreError::Protocol("approval does not serialize".into()))?;
        if json.len() > MAX_APPROVAL_BYTES {
            return Err(StoreError::Protocol("approval too large".into()));
        }
        let mut con = self.conn.manager()?;
        let r: Vec<String> = self
            .run("approval create", async {
                Ok(self
                    .approval_create_script
                    .key(self.key_approval(&a.id))
                    .key(self.key_approval_all())
                    .key(self.key_approval_requester(&a.requester))
                    .key(self.key_approval_request(&a.requester, &a.request_hash))
                    .arg(a.id.as_str())
                    .arg(json.as_slice())
                    .arg(a.expires_at)
                    .arg(keep)
                    .arg(a.requester.as_str())
                    .arg(a.request_hash.as_str())
                    .arg(a.created_at)
                    .arg(MAX_APPROVALS_PER_REQUESTER)
                    .arg(MAX_APPROVALS_TOTAL)
                    .arg(self.key_approval_prefix())
                    .arg(h(a.id.as_bytes()))
                    .invoke_async(&mut con)
                    .await?)
            })
            .await?;
        match r.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["-1"] => Err(StoreError::Protocol("approval id already exists".into())),
            ["-2"] | ["-3"] => Ok(ApprovalCreated::Full),
            ["=", id] if valid_approval_id(id) => Ok(ApprovalCreated::Existing(id.to_string())),
            // 0: already past retention by the server clock; nothing stored.
            ["1"] | ["0"] => Ok(ApprovalCreated::Created),
            _ => Err(StoreError::Protocol(
                "unexpected answer from the approval create script".into(),
            )),
        }
    }

    async fn get_approval(&self, id: &str, now: u64) -> Result<Option<Approval>, StoreError> {
        if !valid_approval_id(id) {
            return Ok(None);
        }
        let mut con = self.conn.manager()?;
        self.run("approval get", async {
            let f: ApprovalFields = ::redis::cmd("HMGET")
                .arg(self.key_approval(id))
                .arg(&APPROVAL_FIELDS[..])
                .query_async(&mut con)
                .await?;
            Ok(approval_from_fields(f, now)?.filter(|a| a.id == id))
        })
        .await
    }

    async fn list_approvals(&self, now: u64) -> Result<Vec<Approval>, StoreError> {
        let mut con = self.conn.manager()?;
        self.run("approval list", async {
            // The latest-expiring (newest) ones when there are too many.
            let ids: Vec<String> = ::redis::cmd("ZRANGE")
                .arg(self.key_approval_all())
                .arg("+inf")
                .arg(format!("({now}"))
                .arg("BYSCORE")
                .arg("REV")
                .arg("LIMIT")
                .arg(0)
                .arg(MAX_APPROVALS_LISTED)
                .query_async(&mut con)
                .await?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut pipe = ::redis::pipe();
            for id in &ids {
                pipe.cmd("HMGET")
                    .arg(self.key_approval(id))
                    .arg(&APPROVAL_FIELDS[..]);
            }
            let rows: Vec<ApprovalFields> = pipe.query_async(&mut con).await?;
            let mut out = Vec::new();
            for (f, id) in rows.into_iter().zip(&ids) {
                if let Some(a) = approval_from_fields(f, now)? {
                    if &a.id == id {
                        out.push(a);
                    }
                }
            }
            out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(out)
        })
        .await
    }

    async fn decide(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        reason: Option<&str>,
        now: u64,
    ) -> Result<DecideOutcome, StoreError> {
        if !valid_approval_id(id) {
            return Ok(DecideOutcome::NotFound);
        }
        let state = if approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Denied
        };
        let mut con = self.conn.manager()?;
        let r: String = self
            .run("approval decide", async {
                Ok(self
                    .approval_decide_script
                    .key(self.key_approval(id))
                    .arg(state.as_str())
                    .arg(by)
                    .arg(now)
                    .arg(reason.unwrap_or(""))
                    .arg(APPROVAL_RETAIN_SECS)
                    .invoke_async(&mut con)
                    .await?)
            })
            .await?;
        match r.as_str() {
            "ok" => match self.get_approval(id, now).await? {
                Some(a) => Ok(DecideOutcome::Decided(Box::new(a))),
                None => Ok(DecideOutcome::NotFound),
            },
            "missing" => Ok(DecideOutcome::NotFound),
            "expired" => Ok(DecideOutcome::Expired),
            other => Ok(DecideOutcome::NotPending(
                ApprovalState::parse(other).ok_or_else(|| {
                    StoreError::Protocol("malformed approval state in redis".into())
                })?,
            )),
        }
    }

    async fn poll(
        &self,
        id: &str,
        requester: &str,
        request_hash: &str,
        interval: u64,
        now: u64,
    ) -> Result<PollOutcome, StoreError> {
        if !valid_approval_id(id) {
            return Ok(PollOutcome::Invalid);
        }
        let mut con = self.conn.manager()?;
        let r: Vec<Vec<u8>> = self
            .run("approval poll", async {
                Ok(self
                    .approval_poll_script
                    .key(self.key_approval(id))
                    .arg(requester)
                    .arg(request_hash)
                    .arg(interval)
                    .arg(now)
                    .arg(APPROVAL_RETAIN_SECS)
                    .invoke_async(&mut con)
                    .await?)
            })
            .await?;
        let text = |i: usize| {
            r.get(i)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        Ok(match text(0).as_str() {
            "pending" => PollOutcome::Pending,
            "slow_down" => PollOutcome::SlowDown,
            "denied" => PollOutcome::Denied,
            "expired" => PollOutcome::Expired,
            "invalid" => PollOutcome::Invalid,
            "redeemed" => {
                let j = r.get(1).map(Vec::as_slice).unwrap_or_default();
                let mut a = approval_from(
                    j,
                    Some("consumed"),
                    Some(text(2)),
                    Some(text(3)),
                    Some(text(4)),
                )?;
                if a.id != id || a.requester != requester || a.request_hash != request_hash {
                    return Err(StoreError::Protocol(
                        "approval record mismatch in redis".into(),
                    ));
                }
                a.state = ApprovalState::Consumed;
                PollOutcome::Redeemed(Box::new(a))
            }
            _ => {
                return Err(StoreError::Protocol(
                    "unexpected approval poll reply".into(),
                ))
            }
        })
    }
}

type StreamRows = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

fn audit_rows(rows: StreamRows) -> Result<Vec<(String, String)>, Fail> {
    let mut out = Vec::with_capacity(rows.len());
    for (id, fields) in rows {
        let rec = fields
            .iter()
            .find(|(k, _)| k.as_slice() == b"rec")
            .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
            .ok_or_else(|| protocol("malformed audit stream entry in redis"))?;
        out.push((encode_cursor(&id)?, rec));
    }
    Ok(out)
}

#[async_trait]
impl AuditStream for RedisStore {
    async fn append(&self, records: &[String], max_len: u64) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        if records.iter().any(|r| r.len() > MAX_AUDIT_RECORD_BYTES) {
            return Err(StoreError::Protocol("audit record too large".into()));
        }
        let key = self.key_audit_stream();
        let mut con = self.conn.manager()?;
        self.run("audit append", async {
            let mut pipe = ::redis::pipe();
            for r in records {
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(max_len.max(1))
                    .arg("*")
                    .arg("rec")
                    .arg(r.as_str())
                    .ignore();
            }
            pipe.cmd("EXPIRE")
                .arg(&key)
                .arg(AUDIT_STREAM_IDLE_TTL.as_secs())
                .ignore();
            let () = pipe.query_async(&mut con).await?;
            Ok(())
        })
        .await
    }

    async fn append_chain(
        &self,
        node: &str,
        records: &[AuditLine],
        max_len: u64,
    ) -> Result<(), StoreError> {
        if records
            .iter()
            .any(|r| r.line.len() > super::MAX_AUDIT_RECORD_BYTES)
        {
            return Err(StoreError::Protocol("audit record too large".into()));
        }
        let keys = [
            self.key_audit_stream(),
            self.key_audit_checkpoints(),
            self.key_audit_checkpoint_times(),
        ];
        for chunk in records.chunks(AUDIT_APPEND_CHUNK) {
            let mut con = self.conn.manager()?;
            self.run("audit append", async {
                let mut inv = self.audit_append_script.prepare_invoke();
                inv.key(&keys[0]).key(&keys[1]).key(&keys[2]);
                inv.arg(node)
                    .arg(max_len.max(1))
                    .arg(AUDIT_STREAM_IDLE_TTL.as_secs())
                    .arg(super::MAX_AUDIT_CHECKPOINTS);
                for r in chunk {
                    inv.arg(r.seq).arg(r.hash.as_str()).arg(r.line.as_str());
                }
                let _added: u64 = inv.invoke_async(&mut con).await?;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<AuditCheckpoint>, StoreError> {
        let key = self.key_audit_checkpoints();
        let mut con = self.conn.manager()?;
        let rows: Vec<(String, String)> = self
            .run("audit checkpoints", async {
                let rows: Vec<(String, String)> = ::redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut con)
                    .await?;
                Ok(rows)
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (node, v) in rows.into_iter().take(super::MAX_AUDIT_CHECKPOINTS) {
            let (seq, hash) = v
                .split_once(' ')
                .and_then(|(s, h)| Some((s.parse::<u64>().ok()?, h.to_string())))
                .ok_or_else(|| StoreError::Protocol("malformed audit checkpoint".into()))?;
            out.push(AuditCheckpoint { node, seq, hash });
        }
        out.sort_by(|x, y| x.node.cmp(&y.node));
        Ok(out)
    }

    async fn read(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, String)>, String), StoreError> {
        let limit = limit.clamp(1, MAX_AUDIT_PAGE);
        let start = match after {
            None => None,
            Some("0") => Some("-".to_string()),
            Some(c) => Some(format!("({}", decode_cursor(c)?)),
        };
        let key = self.key_audit_stream();
        let mut con = self.conn.manager()?;
        self.run("audit read", async {
            let out = match &start {
                Some(from) => {
                    let rows: StreamRows = ::redis::cmd("XRANGE")
                        .arg(&key)
                        .arg(from)
                        .arg("+")
                        .arg("COUNT")
                        .arg(limit)
                        .query_async(&mut con)
                        .await?;
                    audit_rows(rows)?
                }
                None => {
                    let mut rows: StreamRows = ::redis::cmd("XREVRANGE")
                        .arg(&key)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(limit)
                        .query_async(&mut con)
                        .await?;
                    rows.reverse();
                    audit_rows(rows)?
                }
            };
            let cursor = match (out.last(), after) {
                (Some((c, _)), _) => c.clone(),
                (None, Some(c)) if c != "0" => c.to_string(),
                _ => encode_cursor("0-0")?,
            };
            Ok((out, cursor))
        })
        .await
    }
}
