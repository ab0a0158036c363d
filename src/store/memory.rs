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
}

impl Inner {
    fn purge(&mut self, now: u64) {
        self.revocations.retain(|_, r| r.expires_at > now);
        self.feed.retain(|_, r| r.expires_at > now);
        self.blocked.retain(|_, until| *until > now);
        self.seen.retain(|_, exp| *exp > now);
    }
}

/// In-memory backend for every store trait.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
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
    async fn revoke(&self, r: Revocation) -> Result<u64, StoreError> {
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
        Ok(c)
    }

    async fn is_revoked(&self, t: &TokenFacts, now: u64) -> Result<bool, StoreError> {
        let g = self.lock()?;
        let live = |k: RevocationKind, v: &str| {
            g.revocations
                .get(&(k, v.to_string()))
                .filter(|r| r.expires_at > now)
        };
        if live(RevocationKind::Jti, &t.jti).is_some() {
            return Ok(true);
        }
        let covers = |r: Option<&Revocation>| r.is_some_and(|r| t.iat <= r.revoked_at);
        if covers(live(RevocationKind::Subject, &t.sub))
            || t.actors
                .iter()
                .any(|a| covers(live(RevocationKind::Subject, a)))
            || covers(live(RevocationKind::Task, &t.txn))
            || t.grant
                .as_deref()
                .is_some_and(|g| covers(live(RevocationKind::Grant, g)))
        {
            return Ok(true);
        }
        Ok(false)
    }

    async fn list_since(
        &self,
        cursor: Option<u64>,
        limit: usize,
        now: u64,
    ) -> Result<(Vec<(u64, Revocation)>, u64), StoreError> {
        let g = self.lock()?;
        let from = cursor.map(|c| c.saturating_add(1)).unwrap_or(0);
        let entries: Vec<(u64, Revocation)> = g
            .feed
            .range(from..)
            .filter(|(_, r)| r.expires_at > now)
            .take(limit)
            .map(|(c, r)| (*c, r.clone()))
            .collect();
        let last = entries
            .last()
            .map(|(c, _)| *c)
            .unwrap_or_else(|| cursor.unwrap_or(g.next_cursor));
        Ok((entries, last))
    }

    async fn block_subject(&self, subject: &str, until: u64) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        let e = g.blocked.entry(subject.to_string()).or_insert(0);
        *e = (*e).max(until);
        Ok(())
    }

    async fn is_blocked(&self, subject: &str, now: u64) -> Result<bool, StoreError> {
        let g = self.lock()?;
        Ok(g.blocked.get(subject).is_some_and(|u| *u > now))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_conformance() {
        let s = std::sync::Arc::new(MemoryStore::new());
        super::super::conformance::run_all(Stores::from_backend(s)).await;
    }
}
