//! [`RevocationStore`] for the Redis store: revocations and their feed,
//! revocations acknowledged by replicas (on a cluster, on the master of the
//! revocation slot), and subject blocks.

use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use ::redis::{ConnectionInfo, RedisError};
use async_trait::async_trait;

use super::block_cache::Lookup;
use super::connection::{Connection, Target};
use super::cursor::{decode_cursor, encode_cursor};
use super::error::{protocol, Fail};
use super::scripts::{LUA_EXTEND, LUA_REVOKE};
use super::topology::{cluster_slot, node_client, redirection, slot_master};
use super::{check_time, CachedBlocks, RedisStore};
use crate::store::{
    ReplicaAck, Revocation, RevocationKind, RevocationStore, Revoked, StoreError, TokenFacts,
};

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

/// Most actors `is_revoked` checks; a longer chain is an error (fail closed).
pub const MAX_ACTORS: usize = 32;

/// Fields of the block index above which the block script prunes it.
const BLOCK_INDEX_PRUNE: usize = 1024;

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
        let Connection::Cluster(c) = self.conn.manager()? else {
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
            let RevokeFailed {
                error: e,
                connected,
            } = match revoke_at(node, config, &to, &pipe).await {
                Ok(v) => return Ok(v),
                Err(failed) => failed,
            };
            if retried {
                return Err(e.into());
            }
            retried = true;
            let (asked, _) = &to;
            if let Some((addr, ask)) = redirection(&e, asked) {
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

/// A revoke pipeline that failed on a connection of its own.
struct RevokeFailed {
    error: RedisError,
    /// Whether the connection was made (if not, nothing was sent).
    connected: bool,
}

/// Runs `pipe` (the revoke pipeline) on a new connection to `to` with the
/// URL's credentials.
async fn revoke_at(
    node: &ConnectionInfo,
    config: &::redis::AsyncConnectionConfig,
    to: &(String, u16),
    pipe: &::redis::Pipeline,
) -> Result<(String, i64), RevokeFailed> {
    let failed = |connected| move |error| RevokeFailed { error, connected };
    let (host, port) = to;
    let client = node_client(host, *port, node).map_err(failed(false))?;
    let mut con = client
        .get_multiplexed_async_connection_with_config(config)
        .await
        .map_err(failed(false))?;
    pipe.query_async(&mut con).await.map_err(failed(true))
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
    /// Why not the shared
    /// [`ConnectionManager`](::redis::aio::ConnectionManager): `WAIT` counts the replicas
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
        if let Some(CachedBlocks { cache: c, .. }) = &self.block_cache {
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
        if let Some(CachedBlocks { cache: c, .. }) = &self.block_cache {
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
        v.truncate(crate::store::MAX_LISTED_BLOCKS);
        Ok(v)
    }

    fn feed_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.block_cache.as_ref().map(|b| b.cache.feed_changes())
    }

    async fn is_blocked(&self, subject: &str, now: u64) -> Result<bool, StoreError> {
        let key = self.key_block(subject);
        // With the breaker open the store is failing: no cached answers.
        let lookup = match &self.block_cache {
            Some(CachedBlocks { cache: c, .. })
                if !self.resilience.breaker.is_open() && !self.epoch.refuses() =>
            {
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
        if let (Lookup::Miss(seq), Some(CachedBlocks { cache: c, .. })) =
            (lookup, &self.block_cache)
        {
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
