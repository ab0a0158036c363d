//! The embedded in-memory store: one process, nothing persisted. The default
//! for development; a fleet needs Redis.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::*;

/// Most entries each map may hold; past it the store refuses writes (fail closed)
/// rather than growing without bound.
pub const MAX_ENTRIES: usize = 1_000_000;

#[derive(Default)]
struct Inner {
    revocations: HashMap<(RevocationKind, String), Revocation>,
    feed: BTreeMap<u64, Revocation>,
    next_cursor: u64,
    blocked: HashMap<String, u64>,
    seen: HashMap<(String, String), u64>,
    grants: HashMap<String, Grant>,
    /// Approvals by id, with the time of their last poll.
    approvals: HashMap<String, (Approval, u64)>,
}

impl Inner {
    fn purge(&mut self, now: u64) {
        self.revocations.retain(|_, r| r.expires_at > now);
        self.feed.retain(|_, r| r.expires_at > now);
        self.blocked.retain(|_, until| *until > now);
        self.seen.retain(|_, exp| *exp > now);
        self.grants.retain(|_, g| g.expires_at > now);
        self.approvals
            .retain(|_, (a, _)| a.expires_at.saturating_add(APPROVAL_RETAIN_SECS) > now);
    }
}

/// Feed cursors are zero-padded so they sort as strings.
fn cursor_string(c: u64) -> String {
    format!("{c:020}")
}

/// The audit ring buffer: (cursor, record), oldest first.
#[derive(Default)]
struct AuditRing {
    records: std::collections::VecDeque<(u64, String)>,
    next: u64,
    /// Chain checkpoints: node -> (seq, hash, when written: `next`).
    heads: HashMap<String, (u64, String, u64)>,
}

/// In-memory backend for every store trait.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    audit: Mutex<AuditRing>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))
    }
}

#[async_trait]
impl RevocationStore for MemoryStore {
    async fn revoke(&self, r: Revocation) -> Result<String, StoreError> {
        let mut g = self.lock()?;
        g.purge(r.revoked_at);
        if g.revocations.len() >= MAX_ENTRIES {
            return Err(StoreError::Unavailable("memory store full".into()));
        }
        let key = (r.kind, r.value.clone());
        // Keep the widest entry: the latest revoked_at and expiry.
        let merged = match g.revocations.get(&key) {
            Some(old) => Revocation {
                revoked_at: old.revoked_at.max(r.revoked_at),
                expires_at: old.expires_at.max(r.expires_at),
                ..r.clone()
            },
            None => r.clone(),
        };
        g.revocations.insert(key, merged.clone());
        g.next_cursor += 1;
        let c = g.next_cursor;
        g.feed.insert(c, merged);
        Ok(cursor_string(c))
    }

    async fn is_revoked(&self, t: &TokenFacts, now: u64) -> Result<bool, StoreError> {
        let g = self.lock()?;
        Ok(t.covered().revoked_with(now, |k, v| {
            g.revocations
                .get(&(k, v.to_string()))
                .map(|r| crate::revocation::Entry {
                    revoked_at: r.revoked_at,
                    expires_at: r.expires_at,
                })
        }))
    }

    async fn list_since(
        &self,
        cursor: Option<&str>,
        limit: usize,
        now: u64,
    ) -> Result<(Vec<(String, Revocation)>, String), StoreError> {
        let cursor = match cursor {
            None => None,
            Some(c) => Some(
                c.parse::<u64>()
                    .map_err(|_| StoreError::Protocol("invalid cursor".into()))?,
            ),
        };
        let g = self.lock()?;
        let from = cursor.map(|c| c.saturating_add(1)).unwrap_or(0);
        let entries: Vec<(String, Revocation)> = g
            .feed
            .range(from..)
            .filter(|(_, r)| r.expires_at > now)
            .take(limit)
            .map(|(c, r)| (cursor_string(*c), r.clone()))
            .collect();
        let last = match entries.last() {
            Some((c, _)) => c.clone(),
            None => cursor_string(cursor.unwrap_or(g.next_cursor)),
        };
        Ok((entries, last))
    }

    async fn block_subject(&self, subject: &str, until: u64) -> Result<u64, StoreError> {
        let mut g = self.lock()?;
        let e = g.blocked.entry(subject.to_string()).or_insert(0);
        *e = (*e).max(until);
        Ok(*e)
    }

    async fn is_blocked(&self, subject: &str, now: u64) -> Result<bool, StoreError> {
        let g = self.lock()?;
        Ok(g.blocked.get(subject).is_some_and(|u| *u > now))
    }

    async fn unblock_subject(&self, subject: &str, now: u64) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        Ok(g.blocked.remove(subject).is_some_and(|u| u > now))
    }

    async fn list_blocks(&self, now: u64) -> Result<Vec<(String, u64)>, StoreError> {
        let g = self.lock()?;
        let mut v: Vec<(String, u64)> = g
            .blocked
            .iter()
            .filter(|(_, u)| **u > now)
            .map(|(s, u)| (s.clone(), *u))
            .collect();
        v.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(super::MAX_LISTED_BLOCKS);
        Ok(v)
    }
}

#[async_trait]
impl ReplayGuard for MemoryStore {
    async fn first_use(
        &self,
        namespace: &str,
        id: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        if g.seen.len() >= MAX_ENTRIES {
            g.purge(now);
            if g.seen.len() >= MAX_ENTRIES {
                return Err(StoreError::Unavailable("memory store full".into()));
            }
        }
        let key = (namespace.to_string(), id.to_string());
        match g.seen.get(&key) {
            Some(exp) if *exp > now => Ok(false),
            _ => {
                g.seen.insert(key, expires_at);
                Ok(true)
            }
        }
    }
}

#[async_trait]
impl StoreHealth for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.lock().map(|_| ())
    }
}

/// Whether `g` covers a request (everything but the uses left).
fn grant_covers(
    g: &Grant,
    subject: &str,
    audience: &str,
    scopes: &[String],
    task: Option<&str>,
    now: u64,
) -> bool {
    g.expires_at > now
        && g.subject == subject
        && g.audience == audience
        && match g.task.as_deref() {
            Some(t) => task == Some(t),
            None => true,
        }
        && scopes.iter().all(|s| g.scopes.contains(s))
}

#[async_trait]
impl GrantStore for MemoryStore {
    async fn create(&self, g: &Grant) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        inner.purge(g.created_at);
        if inner.grants.contains_key(&g.id) {
            return Err(StoreError::Protocol("grant id already exists".into()));
        }
        if inner.grants.len() >= MAX_ENTRIES {
            return Err(StoreError::Unavailable("memory store full".into()));
        }
        let of_subject = inner
            .grants
            .values()
            .filter(|x| x.subject == g.subject)
            .count();
        if of_subject >= MAX_GRANTS_PER_SUBJECT {
            return Err(StoreError::Unavailable(
                "too many live grants for this subject".into(),
            ));
        }
        let mut stored = g.clone();
        stored.remaining = g.uses;
        inner.grants.insert(g.id.clone(), stored);
        Ok(())
    }

    async fn get(&self, id: &str, now: u64) -> Result<Option<Grant>, StoreError> {
        let inner = self.lock()?;
        Ok(inner.grants.get(id).filter(|g| g.expires_at > now).cloned())
    }

    async fn list(&self, subject: Option<&str>, now: u64) -> Result<Vec<Grant>, StoreError> {
        let inner = self.lock()?;
        let mut out: Vec<Grant> = inner
            .grants
            .values()
            .filter(|g| g.expires_at > now && subject.is_none_or(|s| g.subject == s))
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn revoke(&self, id: &str, subject: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        if inner.grants.get(id).is_some_and(|g| g.subject == subject) {
            inner.grants.remove(id);
            return Ok(true);
        }
        Ok(false)
    }

    async fn consume(
        &self,
        subject: &str,
        audience: &str,
        scopes: &[String],
        task: Option<&str>,
        now: u64,
    ) -> Result<Option<Grant>, StoreError> {
        let mut inner = self.lock()?;
        // The soonest-expiring covering grant with a use left, so longer
        // grants last; ties by id.
        let best = inner
            .grants
            .values()
            .filter(|g| grant_covers(g, subject, audience, scopes, task, now))
            .filter(|g| g.remaining != Some(0))
            .min_by(|a, b| (a.expires_at, &a.id).cmp(&(b.expires_at, &b.id)))
            .map(|g| g.id.clone());
        let Some(id) = best else {
            return Ok(None);
        };
        let Some(g) = inner.grants.get_mut(&id) else {
            return Ok(None);
        };
        let before = g.clone();
        if let Some(r) = g.remaining.as_mut() {
            *r = r.saturating_sub(1);
        }
        Ok(Some(before))
    }
}

#[async_trait]
impl ApprovalStore for MemoryStore {
    async fn create_approval(&self, a: &Approval) -> Result<ApprovalCreated, StoreError> {
        let mut inner = self.lock()?;
        inner.purge(a.created_at);
        if inner.approvals.contains_key(&a.id) {
            return Err(StoreError::Protocol("approval id already exists".into()));
        }
        if let Some((first, _)) = inner.approvals.values().find(|(x, _)| {
            x.requester == a.requester
                && x.request_hash == a.request_hash
                && x.state == ApprovalState::Pending
                && x.expires_at > a.created_at
        }) {
            return Ok(ApprovalCreated::Existing(first.id.clone()));
        }
        let live_of_requester = inner
            .approvals
            .values()
            .filter(|(x, _)| x.requester == a.requester && x.expires_at > a.created_at)
            .count();
        if live_of_requester >= MAX_APPROVALS_PER_REQUESTER
            || inner.approvals.len() >= MAX_APPROVALS_TOTAL
        {
            return Ok(ApprovalCreated::Full);
        }
        let mut stored = a.clone();
        stored.state = ApprovalState::Pending;
        inner.approvals.insert(a.id.clone(), (stored, a.created_at));
        Ok(ApprovalCreated::Created)
    }

    async fn get_approval(&self, id: &str, now: u64) -> Result<Option<Approval>, StoreError> {
        let inner = self.lock()?;
        Ok(inner
            .approvals
            .get(id)
            .filter(|(a, _)| a.expires_at.saturating_add(APPROVAL_RETAIN_SECS) > now)
            .map(|(a, _)| a.clone()))
    }

    async fn list_approvals(&self, now: u64) -> Result<Vec<Approval>, StoreError> {
        let inner = self.lock()?;
        let mut out: Vec<Approval> = inner
            .approvals
            .values()
            .filter(|(a, _)| a.expires_at.saturating_add(APPROVAL_RETAIN_SECS) > now)
            .map(|(a, _)| a.clone())
            .collect();
        // The newest ones when there are too many (pending ones are recent).
        out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        out.truncate(MAX_APPROVALS_LISTED);
        out.reverse();
        Ok(out)
    }

    async fn decide(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        reason: Option<&str>,
        now: u64,
    ) -> Result<DecideOutcome, StoreError> {
        let mut inner = self.lock()?;
        let Some((a, _)) = inner
            .approvals
            .get_mut(id)
            .filter(|(a, _)| a.expires_at.saturating_add(APPROVAL_RETAIN_SECS) > now)
        else {
            return Ok(DecideOutcome::NotFound);
        };
        if a.state != ApprovalState::Pending {
            return Ok(DecideOutcome::NotPending(a.state));
        }
        if a.expires_at <= now {
            return Ok(DecideOutcome::Expired);
        }
        a.state = if approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Denied
        };
        a.decided_by = Some(by.to_string());
        a.decided_at = Some(now);
        a.reason = reason.map(str::to_string);
        Ok(DecideOutcome::Decided(Box::new(a.clone())))
    }

    async fn poll(
        &self,
        id: &str,
        requester: &str,
        request_hash: &str,
        interval: u64,
        now: u64,
    ) -> Result<PollOutcome, StoreError> {
        let mut inner = self.lock()?;
        let Some((a, last)) = inner.approvals.get_mut(id).filter(|(a, _)| {
            a.expires_at.saturating_add(APPROVAL_RETAIN_SECS) > now
                && a.requester == requester
                && a.request_hash == request_hash
        }) else {
            return Ok(PollOutcome::Invalid);
        };
        Ok(match a.state {
            ApprovalState::Consumed => PollOutcome::Invalid,
            ApprovalState::Denied => PollOutcome::Denied,
            _ if a.expires_at <= now => PollOutcome::Expired,
            ApprovalState::Approved => {
                a.state = ApprovalState::Consumed;
                PollOutcome::Redeemed(Box::new(a.clone()))
            }
            ApprovalState::Pending => {
                let too_fast = now < last.saturating_add(interval);
                *last = now;
                if too_fast {
                    PollOutcome::SlowDown
                } else {
                    PollOutcome::Pending
                }
            }
        })
    }
}

/// Most audit records the embedded store keeps in memory (about 6 MB at
/// ~600 bytes a record), whatever `[audit] stream_max_len` says: the
/// in-process ring serves `tessera audit tail` and `verify`; the complete
/// trail is the JSON-lines sink. A shared Redis stream keeps
/// `stream_max_len`.
pub const MEMORY_AUDIT_MAX_RECORDS: usize = 10_000;

#[async_trait]
impl AuditStream for MemoryStore {
    async fn append(&self, records: &[String], max_len: u64) -> Result<(), StoreError> {
        let mut a = self
            .audit
            .lock()
            .map_err(|_| StoreError::Unavailable("memory audit lock poisoned".into()))?;
        for r in records {
            a.next += 1;
            let c = a.next;
            a.records.push_back((c, r.clone()));
        }
        let max = usize::try_from(max_len.max(1))
            .unwrap_or(usize::MAX)
            .min(MEMORY_AUDIT_MAX_RECORDS);
        while a.records.len() > max {
            a.records.pop_front();
        }
        Ok(())
    }

    async fn append_chain(
        &self,
        node: &str,
        records: &[AuditLine],
        max_len: u64,
    ) -> Result<(), StoreError> {
        let fresh: Vec<String> = {
            let a = self
                .audit
                .lock()
                .map_err(|_| StoreError::Unavailable("memory audit lock poisoned".into()))?;
            let last = a.heads.get(node).map_or(0, |h| h.0);
            let mut seen = last;
            records
                .iter()
                .filter(|r| {
                    let new = r.seq > seen;
                    if new {
                        seen = r.seq;
                    }
                    new
                })
                .map(|r| r.line.clone())
                .collect()
        };
        let Some(last) = records.iter().map(|r| r.seq).max() else {
            return Ok(());
        };
        self.append(&fresh, max_len).await?;
        let mut a = self
            .audit
            .lock()
            .map_err(|_| StoreError::Unavailable("memory audit lock poisoned".into()))?;
        let at = a.next;
        let hash = records
            .iter()
            .find(|r| r.seq == last)
            .map(|r| r.hash.clone())
            .unwrap_or_default();
        let keep = a.heads.get(node).is_none_or(|h| h.0 < last);
        if keep {
            a.heads.insert(node.to_string(), (last, hash, at));
        }
        while a.heads.len() > MAX_AUDIT_CHECKPOINTS {
            let Some(oldest) = a
                .heads
                .iter()
                .min_by_key(|(_, h)| h.2)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            a.heads.remove(&oldest);
        }
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<AuditCheckpoint>, StoreError> {
        let a = self
            .audit
            .lock()
            .map_err(|_| StoreError::Unavailable("memory audit lock poisoned".into()))?;
        let mut out: Vec<AuditCheckpoint> = a
            .heads
            .iter()
            .map(|(node, (seq, hash, _))| AuditCheckpoint {
                node: node.clone(),
                seq: *seq,
                hash: hash.clone(),
            })
            .collect();
        out.sort_by(|x, y| x.node.cmp(&y.node));
        Ok(out)
    }

    async fn read(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, String)>, String), StoreError> {
        let limit = limit.min(MAX_AUDIT_PAGE);
        let after = after
            .map(|c| {
                c.parse::<u64>()
                    .map_err(|_| StoreError::Protocol("invalid cursor".into()))
            })
            .transpose()?;
        let a = self
            .audit
            .lock()
            .map_err(|_| StoreError::Unavailable("memory audit lock poisoned".into()))?;
        let out: Vec<(String, String)> = match after {
            Some(c) => {
                // cursors are consecutive: skip straight to the first after c
                let first = a.records.front().map(|x| x.0).unwrap_or(0);
                let skip = usize::try_from(c.saturating_add(1).saturating_sub(first))
                    .unwrap_or(usize::MAX);
                a.records
                    .iter()
                    .skip(skip)
                    .take(limit)
                    .map(|(c, r)| (cursor_string(*c), r.clone()))
                    .collect()
            }
            None => {
                let skip = a.records.len().saturating_sub(limit);
                a.records
                    .iter()
                    .skip(skip)
                    .map(|(c, r)| (cursor_string(*c), r.clone()))
                    .collect()
            }
        };
        let cursor = match (out.last(), after) {
            (Some((c, _)), _) => c.clone(),
            (None, Some(c)) => cursor_string(c),
            (None, None) => cursor_string(a.next),
        };
        Ok((out, cursor))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_conformance() {
        let s = std::sync::Arc::new(MemoryStore::new());
        super::super::conformance::run_all(Stores::from_backend(s)).await;
    }
}
