//! The live connection of the Redis store, whatever the topology: made
//! lazily, replaced when it may be stuck.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::sentinel::SentinelClient;
use ::redis::{Client, ConnectionInfo, RedisFuture, Value};

use super::error::describe;
use crate::store::StoreError;

/// Least time between two replacements of the connection manager.
pub const REBUILD_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What the store URL names; makes fresh connections.
#[derive(Clone)]
pub(super) enum Target {
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
    pub(super) fn lazy(&self) -> Result<Connection, StoreError> {
        match self {
            Self::Single { client, config } => {
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map(Connection::Single)
                    .map_err(|e| StoreError::Unavailable(format!("redis client: {}", describe(&e))))
            }
            Self::Cluster { client, .. } => Ok(Connection::Cluster(Arc::new(LazyCluster {
                client: client.clone(),
                conn: tokio::sync::Mutex::new(None),
            }))),
            Self::Sentinel { sentinel, config } => {
                Ok(Connection::Sentinel(Arc::new(LazySentinel {
                    sentinel: sentinel.clone(),
                    config: config.clone(),
                    primary: Mutex::new(None),
                })))
            }
        }
    }
}

/// A Redis Cluster connection made on first use (under the caller's
/// timeout). It follows `MOVED`/`ASK` and reconnects to a node by itself.
pub(super) struct LazyCluster {
    client: ClusterClient,
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
}

impl LazyCluster {
    pub(super) async fn get(&self) -> ::redis::RedisResult<ClusterConnection> {
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
pub(super) struct LazySentinel {
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

/// What [`LazySentinel::current`] answers: the primary in use.
struct InUse {
    manager: ConnectionManager,
    addr: ::redis::ConnectionAddr,
    /// Whether the sentinels named it within [`SENTINEL_RECHECK`].
    recent: bool,
}

impl LazySentinel {
    /// The primary in use, and whether it was named recently.
    fn current(&self) -> Option<InUse> {
        let g = self.primary.lock().ok()?;
        g.as_ref().map(|p| InUse {
            manager: p.manager.clone(),
            addr: p.addr.clone(),
            recent: p.checked.elapsed() < SENTINEL_RECHECK,
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
            Some(p) if p.recent => return Ok(p.manager),
            // Due for a check: one caller asks, the others go on meanwhile.
            Some(p) => match self.sentinel.try_lock() {
                Ok(s) => s,
                Err(_) => return Ok(p.manager),
            },
            None => self.sentinel.lock().await,
        };
        let known = match self.current() {
            Some(p) if p.recent => return Ok(p.manager),
            other => other,
        };
        // Asks the sentinels, then checks with `ROLE` that it is a primary.
        let client = match s.async_get_client().await {
            Ok(c) => c,
            Err(e) => match known {
                // The sentinels or the check failed: keep the primary; a
                // failure of its own will make it go.
                Some(p) => {
                    self.set(&p.manager, p.addr);
                    return Ok(p.manager);
                }
                None => return Err(e),
            },
        };
        let addr = client.get_connection_info().addr().clone();
        if let Some(p) = known {
            if p.addr == addr {
                self.set(&p.manager, addr);
                return Ok(p.manager);
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
pub(super) enum Connection {
    /// One server, through a connection manager.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(Arc<LazyCluster>),
    /// The primary named by Redis Sentinel.
    Sentinel(Arc<LazySentinel>),
}

impl Connection {
    /// Whether commands of one pipeline must all be in one slot.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for Connection {
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

/// The store's connection ([`Connection`]), replaced by a fresh lazy one
/// when it may be stuck (see the module docs of the Redis store).
/// `manager()` is the connection to use now.
pub(super) struct RenewableConnection {
    pub(super) target: Target,
    current: Mutex<Current>,
}

/// The connection in use and when it was made.
struct Current {
    connection: Connection,
    made: Instant,
}

impl RenewableConnection {
    /// A fresh lazy connection to `target` (no I/O).
    pub(super) fn new(target: Target) -> Result<Self, StoreError> {
        let connection = target.lazy()?;
        Ok(Self {
            target,
            current: Mutex::new(Current {
                connection,
                made: Instant::now(),
            }),
        })
    }

    pub(super) fn manager(&self) -> Result<Connection, StoreError> {
        self.current
            .lock()
            .map(|g| g.connection.clone())
            .map_err(|_| StoreError::Unavailable("redis connection lock poisoned".into()))
    }

    /// Replaces the connection with a fresh lazy one, at most once per
    /// [`REBUILD_MIN_INTERVAL`].
    pub(super) fn rebuild(&self) {
        self.replace(false);
    }

    /// Replaces the connection with a fresh lazy one now, whatever the
    /// interval: the breaker has just opened (or a probe failed), so the
    /// next call is the probe, and it must not await the connection attempt
    /// the old manager made (and cached as failed) while Redis was down.
    /// A lazy connection does no I/O until the probe uses it.
    pub(super) fn renew_for_probe(&self) {
        self.replace(true);
    }

    fn replace(&self, now: bool) {
        let Ok(mut g) = self.current.lock() else {
            return;
        };
        if !now && g.made.elapsed() < REBUILD_MIN_INTERVAL {
            return;
        }
        if let Ok(m) = self.target.lazy() {
            *g = Current {
                connection: m,
                made: Instant::now(),
            };
            tracing::debug!("redis store: connection manager replaced");
        }
    }
}
