//! [`GrantStore`] for the Redis store: JIT grants, their per-subject index
//! and their global id pointers.

use async_trait::async_trait;

use super::connection::Connection;
use super::error::{protocol, Fail};
use super::keys::h;
use super::{check_time, RedisStore};
use crate::store::{Grant, GrantStore, StoreError, MAX_GRANTS_PER_SUBJECT};

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
    async fn get_grant(
        &self,
        con: &mut Connection,
        id: &str,
        now: u64,
    ) -> Result<Option<Grant>, Fail> {
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
        con: &mut Connection,
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
