//! [`ApprovalStore`] for the Redis store: pending human approvals, their
//! indexes and their decisions.

use async_trait::async_trait;

use super::keys::h;
use super::{check_time, RedisStore};
use crate::store::{
    Approval, ApprovalCreated, ApprovalState, ApprovalStore, DecideOutcome, PollOutcome,
    StoreError, APPROVAL_RETAIN_SECS, MAX_APPROVALS_LISTED, MAX_APPROVALS_PER_REQUESTER,
    MAX_APPROVALS_TOTAL, MAX_APPROVAL_BYTES,
};

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
