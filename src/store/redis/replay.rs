//! [`ReplayGuard`] for the Redis store: `SET NX EXAT`.

use async_trait::async_trait;

use super::{check_time, RedisStore};
use crate::store::{ReplayGuard, StoreError};

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
