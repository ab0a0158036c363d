// One file: the block cache and its invalidation listener share one map and
// one lock; about 170 lines are tests.
//! Subject blocks held in the broker, kept exact by Redis's server-assisted
//! client-side caching, so that an exchange does not wait for a Redis round
//! trip to learn that its subject is not blocked.
//!
//! Every exchange asks whether its subject (and the presenting workload) is
//! blocked. Blocks are rare and subjects repeat, so with a Redis store that
//! question was one `GET` per exchange, answered "no" nearly always: a
//! network round trip on every token, and about a seventh of the broker's
//! CPU per exchange on this project's benchmark machine (the `GET` through
//! the client, its socket writes and reads, and the wake-ups they cause).
//!
//! # How the cache stays exact
//! - A connection of its own (RESP3) asks Redis for
//!   `CLIENT TRACKING ON BCAST PREFIX P:{rev}:blk:`: from then on Redis
//!   pushes an `invalidate` message naming every block key that any client
//!   writes, expires or deletes (a `FLUSHALL` is a flush of everything), on
//!   that connection, whoever wrote it. Redis keeps no per-key state for this
//!   (broadcast mode), and blocks are rare, so the stream is nearly silent.
//! - An answer is cached only by an exchange that read it with `GET` and
//!   found no invalidation, flush or reconnection since it looked (a
//!   sequence number, [`Lookup::Miss`]): a block written while that `GET`
//!   was on the wire cannot be cached as "not blocked".
//! - The tracking connection is checked with `PING` every
//!   [`HEARTBEAT`]. A `PONG` proves that every invalidation for a write Redis
//!   made before that `PING` has been applied (pushes and replies share the
//!   connection, in order, and redis-rs hands pushes over before the reply).
//!   The cache answers only within [`LEASE`] of the last such `PING` being
//!   sent: if the connection fails silently (a partition, a paused server),
//!   the cache turns itself off within [`LEASE`], and the exchange reads
//!   Redis again, and fails closed if Redis does not answer.
//! - A dropped connection turns the cache off at once (redis-rs reports the
//!   disconnection as a push), empties it, and reconnects with back-off.
//! - A block written through this broker empties its entry before the write
//!   is acknowledged (strict here); a block written through another broker
//!   takes effect here when the invalidation arrives: the time for one
//!   message to cross the network, under a millisecond on a LAN, never more
//!   than [`LEASE`].
//!
//! With Redis Sentinel the tracking connection goes to the primary the
//! sentinels name, checks with `ROLE` that it still is one, and asks the
//! sentinels again every [`super::SENTINEL_RECHECK`]: when they name
//! another primary (a failover) the cache turns off, empties, and follows.
//! A failover is a window, as for the store's own connection: until the
//! broker learns of the new primary (at most that recheck, or at once if
//! the old primary's connection drops), a block written through a broker
//! that already moved may not be seen here (README: what Sentinel does not
//! give).
//!
//! With Redis Cluster every block key has the hash tag `{rev}`, so they are
//! all on the master that owns that slot: the tracking connection goes
//! there (`CLUSTER SLOTS`, asked of the URL's nodes), and every
//! [`super::SENTINEL_RECHECK`] checks with `CLUSTER NODES` that
//! the node still owns the slot and is not migrating it away, and asks the
//! URL's nodes again who owns it. A migration of the slot turns the cache
//! off until it completes (keys already moved are written on the importing
//! node, which the tracking connection does not see); a failover or a
//! finished migration moves it to the new owner.
//!
//! The same connection also tracks the revocation feed's key
//! (`P:{rev}:feed`): Redis's invalidation of it, sent on every revocation
//! made anywhere, wakes this process's feed poller
//! ([`crate::store::feed`]) at once instead of at its next poll, so followers of
//! this broker's `/revocations` stream learn of another replica's
//! revocation within milliseconds.
//!
//! `[store] block_cache = false` turns it off.
//!
//! redis-rs's own client-side cache (feature `cache-aio`) is not used: it is
//! marked experimental, it needs the whole store connection on RESP3, it
//! tracks every key read (server memory per key), and it has no freshness
//! bound for a connection that fails silently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::sentinel::SentinelClient;
use ::redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ProtocolVersion, PushInfo,
    PushKind, RedisResult, Value,
};

/// Most block answers held; when full the cache starts empty again
/// (each entry is a key of about 80 bytes and an `Option<u64>`).
pub const MAX_ENTRIES: usize = 16_384;

/// How often the tracking connection is checked.
pub const HEARTBEAT: Duration = Duration::from_millis(100);

/// How long after a successful check was sent the cache may still answer.
/// Bounds how late a block written elsewhere can be honoured here when the
/// tracking connection fails without being seen to close.
pub const LEASE: Duration = Duration::from_millis(350);

/// Back-off between reconnection attempts: first, and at most.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Back-off when the server refused tracking (too old, or not Redis).
const REFUSED_RETRY: Duration = Duration::from_secs(60);

/// The name the tracking connection gives itself (`CLIENT LIST`).
pub const CONNECTION_NAME: &str = "tessera-block-cache";

/// What [`BlockCache::lookup`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The cached answer: `Some(until)` for a block, `None` for none.
    Hit(Option<u64>),
    /// Not cached: read Redis, then [`BlockCache::fill`] with this sequence.
    Miss(u64),
    /// The cache is off (not connected, or its lease ran out): read Redis.
    Off,
}

/// Counts of lookups by result, for tests and diagnostics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Answered from the cache.
    pub hits: u64,
    /// Read from Redis, to be cached.
    pub misses: u64,
    /// Read from Redis with the cache off.
    pub off: u64,
    /// Invalidation messages and flushes applied.
    pub invalidations: u64,
    /// Times the tracking connection went live.
    pub sessions: u64,
}

struct Inner {
    /// Bumped by every invalidation, flush, and change of `live`.
    seq: u64,
    live: bool,
    entries: HashMap<Box<[u8]>, Option<u64>>,
}

/// The cache of block answers (see the module documentation).
pub struct BlockCache {
    inner: Mutex<Inner>,
    /// The revocation feed's key, also tracked: its invalidations bump
    /// `feed` instead of touching the cache.
    feed_key: Option<Box<[u8]>>,
    feed: tokio::sync::watch::Sender<u64>,
    base: Instant,
    /// Nanoseconds after `base` until which the cache may answer; 0: off.
    fresh_until: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    off: AtomicU64,
    invalidations: AtomicU64,
    sessions: AtomicU64,
}

impl Default for BlockCache {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockCache {
    /// An empty cache, off until [`BlockCache::go_live`].
    pub fn new() -> Self {
        Self::build(None)
    }

    /// [`BlockCache::new`], whose tracking connection also watches the
    /// revocation feed `key` ([`BlockCache::feed_changes`]).
    pub fn with_feed_key(key: &str) -> Self {
        Self::build(Some(key.as_bytes().into()))
    }

    fn build(feed_key: Option<Box<[u8]>>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                seq: 0,
                live: false,
                entries: HashMap::new(),
            }),
            feed_key,
            feed: tokio::sync::watch::Sender::new(0),
            base: Instant::now(),
            fresh_until: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            off: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The cached answer for a block key, if the cache may answer.
    pub fn lookup(&self, key: &str) -> Lookup {
        let l = self.lookup_inner(key);
        let (counter, metric) = match l {
            Lookup::Hit(_) => (&self.hits, 0),
            Lookup::Miss(_) => (&self.misses, 1),
            Lookup::Off => (&self.off, 2),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::metrics().block_cache_lookups[metric].inc();
        l
    }

    fn lookup_inner(&self, key: &str) -> Lookup {
        if self.nanos(Instant::now()) >= self.fresh_until.load(Ordering::Acquire) {
            return Lookup::Off;
        }
        let Ok(g) = self.inner.lock() else {
            return Lookup::Off;
        };
        if !g.live {
            return Lookup::Off;
        }
        match g.entries.get(key.as_bytes()) {
            Some(v) => Lookup::Hit(*v),
            None => Lookup::Miss(g.seq),
        }
    }

    /// Caches what Redis answered for `key`, unless anything was invalidated
    /// (or the connection changed) since the [`Lookup::Miss`] that gave `seq`.
    pub fn fill(&self, key: &str, seq: u64, until: Option<u64>) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        if !g.live || g.seq != seq {
            return;
        }
        if g.entries.len() >= MAX_ENTRIES {
            g.entries.clear();
        }
        g.entries.insert(key.as_bytes().into(), until);
    }

    /// Bumped whenever Redis says the feed key changed (a revocation made
    /// anywhere), when everything is flushed, and when the tracking
    /// connection goes live (changes may have been missed while it was off).
    pub fn feed_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed.subscribe()
    }

    fn feed_changed(&self) {
        self.feed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Applies Redis's invalidation of one key.
    fn invalidated(&self, key: &[u8]) {
        if self.feed_key.as_deref() == Some(key) {
            self.feed_changed();
        } else {
            self.invalidate(key);
        }
    }

    /// Forgets one key (an invalidation, or a block written here).
    pub fn invalidate(&self, key: &[u8]) {
        if let Ok(mut g) = self.inner.lock() {
            g.seq = g.seq.wrapping_add(1);
            g.entries.remove(key);
        }
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets everything (a flush, or a message it cannot read).
    pub fn flush(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.seq = g.seq.wrapping_add(1);
            g.entries.clear();
        }
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        self.feed_changed();
    }

    /// Starts answering: tracking is on, and a check sent at `sent` came back.
    pub fn go_live(&self, sent: Instant) {
        if let Ok(mut g) = self.inner.lock() {
            g.seq = g.seq.wrapping_add(1);
            g.entries.clear();
            g.live = true;
            self.fresh_until
                .store(self.nanos(sent + LEASE), Ordering::Release);
        }
        self.sessions.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::metrics().block_cache_live.set(1);
        self.feed_changed();
    }

    /// Extends the lease: a check sent at `sent` came back.
    pub fn renew(&self, sent: Instant) {
        if let Ok(g) = self.inner.lock() {
            if g.live {
                self.fresh_until
                    .fetch_max(self.nanos(sent + LEASE), Ordering::AcqRel);
            }
        }
    }

    /// Stops answering and forgets everything (the connection is gone).
    pub fn go_dead(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.seq = g.seq.wrapping_add(1);
            g.entries.clear();
            g.live = false;
            self.fresh_until.store(0, Ordering::Release);
        }
        crate::telemetry::metrics().block_cache_live.set(0);
    }

    /// Whether the cache may answer now.
    pub fn is_live(&self) -> bool {
        self.nanos(Instant::now()) < self.fresh_until.load(Ordering::Acquire)
            && self.inner.lock().is_ok_and(|g| g.live)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.entries.len()).unwrap_or(0)
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lookups by result so far.
    pub fn stats(&self) -> Stats {
        Stats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            off: self.off.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
        }
    }

    /// Applies a message pushed on the tracking connection.
    fn on_push(&self, p: PushInfo) {
        match p.kind {
            PushKind::Invalidate => {
                // `invalidate` carries an array of keys, or null for a flush.
                let mut keys = Vec::new();
                let mut readable = p.data.len() == 1;
                for v in &p.data {
                    match v {
                        Value::Array(items) => {
                            for k in items {
                                match k {
                                    Value::BulkString(b) => keys.push(b.as_slice()),
                                    Value::SimpleString(s) => keys.push(s.as_bytes()),
                                    _ => readable = false,
                                }
                            }
                        }
                        _ => readable = false,
                    }
                }
                if readable {
                    for k in keys {
                        self.invalidated(k);
                    }
                } else {
                    self.flush();
                }
            }
            PushKind::Disconnection => self.go_dead(),
            _ => {}
        }
    }
}

/// The tracking task; stops when dropped.
pub struct Tracker {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where the tracking connection goes.
pub enum Source {
    /// One server (`redis://`, `rediss://`): the store's client.
    Single(Box<Client>),
    /// The primary that these sentinels name (`redis(s)+sentinel://`).
    Sentinel(Arc<tokio::sync::Mutex<SentinelClient>>),
    /// The master that owns `slot` (the block keys' `{rev}`) in the
    /// cluster these seeds belong to; `node` is what to send each node
    /// (TLS, user, password).
    Cluster {
        /// The URL's nodes.
        seeds: Vec<(String, u16)>,
        /// TLS, credentials and database for every node.
        node: Box<ConnectionInfo>,
        /// The hash slot of the block keys.
        slot: u16,
    },
}

/// Where the master of `slot` listens, asked with `CLUSTER SLOTS` on
/// `asker` (a connection to one of the URL's nodes, kept between calls),
/// or else of the first of the URL's nodes that answers (which becomes
/// `asker`).
async fn slot_owner(
    seeds: &[(String, u16)],
    node: &ConnectionInfo,
    slot: u16,
    timeout: Duration,
    asker: &mut Option<::redis::aio::MultiplexedConnection>,
) -> Result<(String, u16), End> {
    let ask = |mut con: ::redis::aio::MultiplexedConnection| async move {
        let slots = tokio::time::timeout(
            timeout,
            ::redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut con),
        )
        .await;
        (con, slots)
    };
    let answer = |slots: Result<RedisResult<Value>, tokio::time::error::Elapsed>| match slots {
        Ok(Ok(slots)) => super::topology::slot_master(&slots, slot)
            .map_err(|w| End::Lost(format!("CLUSTER SLOTS: {w}"))),
        Ok(Err(e)) => Err(lost("CLUSTER SLOTS", &e)),
        Err(_) => Err(End::Lost("CLUSTER SLOTS: timed out".into())),
    };
    if let Some(con) = asker.take() {
        let (con, slots) = ask(con).await;
        if let Ok(owner) = answer(slots) {
            *asker = Some(con);
            return Ok(owner);
        }
    }
    let mut why = End::Lost("no cluster node to ask".into());
    for (h, p) in seeds {
        let connect = async {
            super::topology::node_client(h, *p, node)?
                .get_multiplexed_async_connection()
                .await
        };
        let con = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(con)) => con,
            Ok(Err(e)) => {
                why = lost("CLUSTER SLOTS", &e);
                continue;
            }
            Err(_) => {
                why = End::Lost("CLUSTER SLOTS: connect timed out".into());
                continue;
            }
        };
        let (con, slots) = ask(con).await;
        match answer(slots) {
            Ok(owner) => {
                *asker = Some(con);
                return Ok(owner);
            }
            Err(w) => why = w,
        }
    }
    Err(why)
}

/// Whether the node behind `con` owns `slot` now and is not migrating it
/// away (`CLUSTER NODES`: its own line lists the slot, without `[slot->-`).
async fn owns_slot(con: &mut ::redis::aio::MultiplexedConnection, slot: u16) -> Result<bool, End> {
    let nodes: RedisResult<String> = ::redis::cmd("CLUSTER").arg("NODES").query_async(con).await;
    let nodes = match nodes {
        Ok(n) => n,
        Err(e) => return Err(lost("CLUSTER NODES", &e)),
    };
    let Some(me) = nodes.lines().find(|l| {
        l.split(' ')
            .nth(2)
            .is_some_and(|f| f.split(',').any(|f| f == "myself"))
    }) else {
        return Ok(false);
    };
    let migrating = format!("[{slot}->-");
    if me.contains(&migrating) {
        return Ok(false);
    }
    Ok(me.split(' ').skip(8).any(|r| {
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
    }))
}

/// `client`, speaking RESP3 (pushes need it).
fn resp3(client: &Client) -> RedisResult<Client> {
    let info = client.get_connection_info().clone();
    let redis = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Client::open(info.set_redis_settings(redis))
}

/// Starts the tracking connection for `cache`: block keys start with
/// `prefix`; `timeout` bounds each connection attempt and command.
pub fn spawn(cache: Arc<BlockCache>, source: Source, prefix: String, timeout: Duration) -> Tracker {
    let task = tokio::spawn(track(cache, source, prefix, timeout));
    Tracker { task }
}

/// Why a tracking session ended.
enum End {
    /// The connection failed (or never came up): retry soon.
    Lost(String),
    /// The server refused tracking: retry rarely.
    Refused(String),
}

async fn track(cache: Arc<BlockCache>, source: Source, prefix: String, timeout: Duration) {
    let mut backoff = RECONNECT_FIRST;
    let mut warned = false;
    loop {
        let went_live = cache.stats().sessions;
        let end = session(&cache, &source, &prefix, timeout).await;
        let was_live = cache.stats().sessions > went_live;
        cache.go_dead();
        if was_live {
            backoff = RECONNECT_FIRST;
            warned = false;
        }
        let (why, wait) = match end {
            End::Lost(why) => {
                let w = backoff;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                (why, w)
            }
            End::Refused(why) => (why, REFUSED_RETRY),
        };
        if was_live || !warned {
            tracing::warn!(reason = %why, retry_ms = wait.as_millis() as u64,
                "redis block cache off: subject blocks are read from Redis on each exchange until it reconnects");
            warned = true;
        }
        tokio::time::sleep(wait).await;
    }
}

fn lost(what: &str, e: &::redis::RedisError) -> End {
    let class = super::error::describe(e);
    if e.code().is_some() && !e.is_io_error() {
        End::Refused(format!("{what}: {class}"))
    } else {
        End::Lost(format!("{what}: {class}"))
    }
}

/// The primary the sentinels name now, and its address.
async fn named_primary(
    sentinel: &tokio::sync::Mutex<SentinelClient>,
    timeout: Duration,
) -> Result<(Client, ConnectionAddr), End> {
    let ask = async { sentinel.lock().await.async_get_client().await };
    match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(c)) => {
            let addr = c.get_connection_info().addr().clone();
            Ok((c, addr))
        }
        Ok(Err(e)) => Err(lost("asking the sentinels", &e)),
        Err(_) => Err(End::Lost("asking the sentinels: timed out".into())),
    }
}

/// Whether the server behind `con` says it is a primary (`ROLE`).
async fn is_primary(con: &mut ::redis::aio::MultiplexedConnection) -> Result<bool, End> {
    let role: RedisResult<Value> = ::redis::cmd("ROLE").query_async(con).await;
    match role {
        Ok(Value::Array(v)) => Ok(matches!(v.first(),
            Some(Value::BulkString(b)) if b.as_slice() == b"master")),
        Ok(_) => Ok(false),
        Err(e) => Err(lost("ROLE", &e)),
    }
}

/// The node the tracking connection is on, and how to check that it
/// still holds the block keys.
enum Holder<'a> {
    /// One server: always.
    Single,
    /// The primary these sentinels named, at `addr`.
    Sentinel {
        sentinel: &'a tokio::sync::Mutex<SentinelClient>,
        addr: ConnectionAddr,
    },
    /// The master of `slot`, at `owner`, found by asking `seeds` on `asker`.
    Cluster {
        seeds: &'a [(String, u16)],
        node: &'a ConnectionInfo,
        slot: u16,
        owner: (String, u16),
        asker: Option<::redis::aio::MultiplexedConnection>,
    },
}

impl<'a> Holder<'a> {
    /// The node to connect to for `source`, and the client for it.
    async fn find(source: &'a Source, timeout: Duration) -> Result<(Client, Self), End> {
        match source {
            Source::Single(c) => Ok((Client::clone(c), Self::Single)),
            Source::Sentinel(sentinel) => {
                let (c, addr) = named_primary(sentinel, timeout).await?;
                Ok((c, Self::Sentinel { sentinel, addr }))
            }
            Source::Cluster { seeds, node, slot } => {
                let mut asker = None;
                let owner = slot_owner(seeds, node, *slot, timeout, &mut asker).await?;
                let (host, port) = &owner;
                let c = super::topology::node_client(host, *port, node)
                    .map_err(|e| lost("cluster node", &e))?;
                let holder = Self::Cluster {
                    seeds,
                    node,
                    slot: *slot,
                    owner,
                    asker,
                };
                Ok((c, holder))
            }
        }
    }

    /// Whether the node behind `con` still holds the block keys: for
    /// Sentinel a primary (`ROLE`), for a cluster the slot's owner, not
    /// migrating it (`CLUSTER NODES`). With `ask_again`, also whether the
    /// sentinels or the URL's nodes still name it (when they cannot be
    /// asked, the node is kept: its own failure ends the session).
    async fn check(
        &mut self,
        con: &mut ::redis::aio::MultiplexedConnection,
        timeout: Duration,
        ask_again: bool,
    ) -> Result<(), End> {
        match self {
            Self::Single => Ok(()),
            Self::Sentinel { sentinel, addr } => {
                if !is_primary(con).await? {
                    return Err(End::Lost("the sentinels' primary is not a primary".into()));
                }
                if ask_again {
                    if let Ok((_, named)) = named_primary(sentinel, timeout).await {
                        if &named != addr {
                            return Err(End::Lost("the sentinels name another primary".into()));
                        }
                    }
                }
                Ok(())
            }
            Self::Cluster {
                seeds,
                node,
                slot,
                owner,
                asker,
            } => {
                if !owns_slot(con, *slot).await? {
                    return Err(End::Lost(
                        "the revocation slot is moving or not on this node".into(),
                    ));
                }
                if ask_again {
                    if let Ok(now) = slot_owner(seeds, node, *slot, timeout, asker).await {
                        if &now != owner {
                            return Err(End::Lost(
                                "the cluster names another master for the slot".into(),
                            ));
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

async fn session(cache: &Arc<BlockCache>, source: &Source, prefix: &str, timeout: Duration) -> End {
    let (client, mut holder) = match Holder::find(source, timeout).await {
        Ok(found) => found,
        Err(end) => return end,
    };
    let client = match resp3(&client) {
        Ok(c) => c,
        Err(e) => return lost("RESP3 client", &e),
    };
    let pushes = cache.clone();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_push_sender(move |p: PushInfo| -> Result<(), std::convert::Infallible> {
            pushes.on_push(p);
            Ok(())
        });
    let connect = client.get_multiplexed_async_connection_with_config(&config);
    let mut con = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return lost("connect", &e),
        Err(_) => return End::Lost("connect: timed out".into()),
    };
    let name: RedisResult<()> = ::redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(CONNECTION_NAME)
        .query_async(&mut con)
        .await;
    if let Err(e) = name {
        return lost("CLIENT SETNAME", &e);
    }
    if let Err(end) = holder.check(&mut con, timeout, false).await {
        return end;
    }
    let mut tracking = ::redis::cmd("CLIENT");
    tracking
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(prefix);
    if let Some(feed) = &cache.feed_key {
        tracking.arg("PREFIX").arg(feed.as_ref());
    }
    let on: RedisResult<()> = tracking.query_async(&mut con).await;
    if let Err(e) = on {
        return lost("CLIENT TRACKING", &e);
    }
    let sent = Instant::now();
    let pong: RedisResult<()> = ::redis::cmd("PING").query_async(&mut con).await;
    if let Err(e) = pong {
        return lost("PING", &e);
    }
    cache.go_live(sent);
    tracing::info!("redis block cache live: blocks are invalidated by CLIENT TRACKING (broadcast)");
    let mut checked = Instant::now();
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let sent = Instant::now();
        let pong: RedisResult<()> = ::redis::cmd("PING").query_async(&mut con).await;
        if let Err(e) = pong {
            return lost("PING", &e);
        }
        if !cache.inner.lock().is_ok_and(|g| g.live) {
            // The connection reported itself closed between replies.
            return End::Lost("connection closed".into());
        }
        if checked.elapsed() >= super::connection::SENTINEL_RECHECK {
            checked = Instant::now();
            if let Err(end) = holder.check(&mut con, timeout, true).await {
                return end;
            }
        }
        cache.renew(sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> BlockCache {
        let c = BlockCache::new();
        c.go_live(Instant::now());
        c
    }

    /// Looks `key` up (a miss) and fills it with `until`.
    fn cache(c: &BlockCache, key: &str, until: Option<u64>) {
        let Lookup::Miss(seq) = c.lookup(key) else {
            panic!("expected a miss for {key}")
        };
        c.fill(key, seq, until);
    }

    #[test]
    fn off_until_live_then_miss_fill_hit() {
        let c = BlockCache::new();
        assert_eq!(c.lookup("k"), Lookup::Off);
        c.fill("k", 0, None);
        assert!(c.is_empty(), "an off cache keeps nothing");
        c.go_live(Instant::now());
        let Lookup::Miss(seq) = c.lookup("k") else {
            panic!("expected a miss")
        };
        c.fill("k", seq, Some(42));
        assert_eq!(c.lookup("k"), Lookup::Hit(Some(42)));
        assert_eq!(c.lookup("other"), Lookup::Miss(seq));
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.off), (1, 2, 1));
    }

    #[test]
    fn a_fill_after_an_invalidation_is_dropped() {
        let c = live();
        let Lookup::Miss(seq) = c.lookup("k") else {
            panic!("expected a miss")
        };
        // A block is written (anywhere) while the GET is on the wire.
        c.invalidate(b"k");
        c.fill("k", seq, None);
        assert!(
            matches!(c.lookup("k"), Lookup::Miss(_)),
            "stale answer cached"
        );
        // Also for another key: any invalidation drops fills in flight.
        let Lookup::Miss(seq) = c.lookup("k") else {
            panic!("expected a miss")
        };
        c.invalidate(b"unrelated");
        c.fill("k", seq, None);
        assert!(matches!(c.lookup("k"), Lookup::Miss(_)));
    }

    #[test]
    fn an_invalidation_after_a_fill_removes_the_entry() {
        let c = live();
        cache(&c, "k", None);
        assert_eq!(c.lookup("k"), Lookup::Hit(None));
        c.on_push(PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(vec![Value::BulkString(b"k".to_vec())])],
        });
        assert!(matches!(c.lookup("k"), Lookup::Miss(_)));
    }

    #[test]
    fn a_null_or_unreadable_invalidation_flushes_everything() {
        for data in [
            vec![Value::Nil],
            vec![Value::Int(3)],
            vec![],
            vec![
                Value::Array(vec![Value::BulkString(b"a".to_vec())]),
                Value::Nil,
            ],
            vec![Value::Array(vec![Value::Int(1)])],
        ] {
            let c = live();
            for k in ["a", "b"] {
                cache(&c, k, None);
            }
            assert_eq!(c.len(), 2);
            c.on_push(PushInfo {
                kind: PushKind::Invalidate,
                data: data.clone(),
            });
            assert!(c.is_empty(), "not flushed by {data:?}");
        }
    }

    #[test]
    fn the_feed_key_signals_the_feed_and_leaves_the_cache_alone() {
        let c = BlockCache::with_feed_key("p:{rev}:feed");
        c.go_live(Instant::now());
        let mut feed = c.feed_changes();
        let Lookup::Miss(seq) = c.lookup("k") else {
            panic!("expected a miss")
        };
        c.on_push(PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(vec![Value::BulkString(
                b"p:{rev}:feed".to_vec(),
            )])],
        });
        assert!(feed.has_changed().unwrap());
        feed.borrow_and_update();
        // A fill in flight still lands: the feed is not a block key.
        c.fill("k", seq, None);
        assert_eq!(c.lookup("k"), Lookup::Hit(None));
        // A flush, and a new session, signal the feed too.
        c.flush();
        assert!(feed.has_changed().unwrap());
        feed.borrow_and_update();
        c.go_live(Instant::now());
        assert!(feed.has_changed().unwrap());
    }

    #[test]
    fn a_disconnection_turns_it_off_and_empties_it() {
        let c = live();
        let Lookup::Miss(seq) = c.lookup("k") else {
            panic!("expected a miss")
        };
        c.fill("k", seq, None);
        assert_eq!(c.lookup("k"), Lookup::Hit(None));
        c.on_push(PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        });
        assert_eq!(c.lookup("k"), Lookup::Off);
        assert!(c.is_empty());
        // A late renewal does not bring it back.
        c.renew(Instant::now());
        assert_eq!(c.lookup("k"), Lookup::Off);
        // Going live again starts empty, and drops fills from before.
        c.go_live(Instant::now());
        c.fill("k", seq, None);
        assert!(matches!(c.lookup("k"), Lookup::Miss(_)));
    }

    #[test]
    fn it_stops_answering_when_the_lease_runs_out() {
        let c = BlockCache::new();
        // A check sent longer ago than the lease.
        c.go_live(Instant::now() - LEASE - Duration::from_millis(1));
        assert_eq!(c.lookup("k"), Lookup::Off);
        assert!(!c.is_live());
        c.renew(Instant::now());
        assert!(c.is_live());
        assert!(matches!(c.lookup("k"), Lookup::Miss(_)));
        // An older renewal never shortens the lease.
        c.renew(Instant::now() - LEASE * 2);
        assert!(c.is_live());
    }

    #[test]
    fn it_is_bounded() {
        let c = live();
        for i in 0..MAX_ENTRIES + 10 {
            cache(&c, &format!("k{i}"), None);
            assert!(c.len() <= MAX_ENTRIES);
        }
        assert!(c.len() <= MAX_ENTRIES);
    }
}
