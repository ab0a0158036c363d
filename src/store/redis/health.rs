//! [`StoreHealth`] for the Redis store: `PING` and the data epoch
//! ([`crate::store::epoch`]), checked on a timer and carried along with
//! the answers that say "not revoked" / "not blocked".

use std::sync::Arc;

use async_trait::async_trait;

use super::RedisStore;
use crate::store::{StoreError, StoreHealth};

impl RedisStore {
    // ---- the data epoch ----

    /// Reads the epoch (writing a `new` one when this broker has seen none
    /// and there is none), and folds it into this broker's view.
    pub async fn check_epoch(&self) -> Result<crate::store::epoch::Verdict, StoreError> {
        use crate::store::epoch::{Epoch, Origin};
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
    pub(super) fn vouch(&self, found: Option<String>, op: &'static str) -> Result<(), StoreError> {
        if !self.epoch.is_armed() {
            return Ok(());
        }
        let found = found
            .map(|s| {
                crate::store::epoch::Epoch::parse(&s)
                    .ok_or_else(|| StoreError::Protocol("malformed data epoch in redis".into()))
            })
            .transpose()?;
        if let crate::store::epoch::Verdict::Lost(why) = self.epoch.observe(found) {
            tracing::error!(reason = %why, "store_epoch_lost");
        }
        if self.epoch.refuses() {
            return Err(self.epoch.refusal(op));
        }
        Ok(())
    }

    /// Checks the epoch every [`crate::store::epoch::CHECK_EVERY`] while `store`
    /// lives (a task holding only a weak reference), and once now.
    pub fn watch_epoch(store: &Arc<RedisStore>) {
        let weak = Arc::downgrade(store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::store::epoch::CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                match store.check_epoch().await {
                    Ok(crate::store::epoch::Verdict::Lost(why)) => {
                        tracing::error!(reason = %why, "store_epoch_lost");
                    }
                    Ok(crate::store::epoch::Verdict::Recovered) => {
                        tracing::warn!("store data epoch recovered by an operator: serving again");
                    }
                    Ok(crate::store::epoch::Verdict::Same) => {}
                    // Unreachable: the breaker and the readiness probe say so.
                    Err(e) => tracing::debug!(error = %e, "data epoch not checked"),
                }
            }
        });
    }
}

/// The operation name of the epoch check (runs while the store is lost).
pub(super) const EPOCH_OP: &str = "epoch";

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
        use crate::store::epoch::{Epoch, Origin};
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
