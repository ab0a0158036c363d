//! [`AuditStream`] for the Redis store: the audit stream and the chains'
//! checkpoints.

use std::time::Duration;

use async_trait::async_trait;

use super::cursor::{decode_cursor, encode_cursor};
use super::error::{protocol, Fail};
use super::RedisStore;
use crate::store::{
    AuditCheckpoint, AuditLine, AuditStream, StoreError, MAX_AUDIT_PAGE, MAX_AUDIT_RECORD_BYTES,
};

/// The audit stream expires this long after its last append (it is bounded
/// by length; the TTL only keeps the "every key expires" rule for a broker
/// fleet that is gone).
pub const AUDIT_STREAM_IDLE_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// Most records one audit append script carries (a longer backlog goes in
/// several, each atomic and idempotent).
const AUDIT_APPEND_CHUNK: usize = 1_024;

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
            .any(|r| r.line.len() > crate::store::MAX_AUDIT_RECORD_BYTES)
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
                    .arg(crate::store::MAX_AUDIT_CHECKPOINTS);
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
        for (node, v) in rows.into_iter().take(crate::store::MAX_AUDIT_CHECKPOINTS) {
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
