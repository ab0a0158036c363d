//! [`SessionStore`](crate::store::SessionStore) for the Redis store: the
//! approval pages' session records.

use async_trait::async_trait;

use super::{check_time, RedisStore};
use crate::store::StoreError;

#[async_trait]
impl crate::store::SessionStore for RedisStore {
    async fn put_session(
        &self,
        ns: &str,
        id: &str,
        value: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        if value.len() > crate::store::MAX_SESSION_BYTES {
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
