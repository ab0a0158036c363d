//! State that outlives a request: revocations, replay records (and, with the
//! Redis backend, JIT grants). Every call is async and fallible: a store that
//! cannot answer makes the caller fail closed (503, no token).
//!
//! Backends: [`memory::MemoryStore`] (embedded, single process, the default).

pub mod memory;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A store failure. Callers map every variant to `503 temporarily_unavailable`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something Tessera does not understand.
    #[error("store protocol error: {0}")]
    Protocol(String),
}

/// What a revocation entry covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevocationKind {
    /// One token, by `jti`.
    Jti,
    /// Every token issued until now whose `sub` or any actor is this identity.
    Subject,
    /// Every token of a task (`txn`).
    Task,
    /// Every token issued under a JIT grant.
    Grant,
}

impl RevocationKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jti => "jti",
            Self::Subject => "subject",
            Self::Task => "task",
            Self::Grant => "grant",
        }
    }
}

/// One revocation (the feed's entry shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// What it covers.
    pub kind: RevocationKind,
    /// The jti / subject / task / grant id.
    pub value: String,
    /// When it was made (Unix seconds); tokens issued after it are not covered
    /// (except for `jti`, which names one token).
    pub revoked_at: u64,
    /// When the entry may be forgotten: the longest a covered token can live.
    pub expires_at: u64,
}

/// The facts of a token that revocation entries are matched against.
#[derive(Debug, Clone, Default)]
pub struct TokenFacts {
    /// `jti`.
    pub jti: String,
    /// `sub`.
    pub sub: String,
    /// Every actor `sub` in the `act` chain.
    pub actors: Vec<String>,
    /// `txn`.
    pub txn: String,
    /// `grant`, if any.
    pub grant: Option<String>,
    /// `iat`.
    pub iat: u64,
}

/// Revocations and the kill switch.
#[async_trait]
pub trait RevocationStore: Send + Sync {
    /// Records a revocation; returns its feed cursor.
    async fn revoke(&self, r: Revocation) -> Result<u64, StoreError>;
    /// Whether any live entry covers the token.
    async fn is_revoked(&self, t: &TokenFacts, now: u64) -> Result<bool, StoreError>;
    /// Entries after `cursor` (exclusive; `None`: every live entry), oldest
    /// first, at most `limit`; with the cursor of the last one returned.
    async fn list_since(
        &self,
        cursor: Option<u64>,
        limit: usize,
        now: u64,
    ) -> Result<(Vec<(u64, Revocation)>, u64), StoreError>;
    /// Refuses new exchanges for `subject` until `until` (the kill switch).
    async fn block_subject(&self, subject: &str, until: u64) -> Result<(), StoreError>;
    /// Whether `subject` is blocked now.
    async fn is_blocked(&self, subject: &str, now: u64) -> Result<bool, StoreError>;
}

/// Replay protection: remembers identifiers until they expire.
#[async_trait]
pub trait ReplayGuard: Send + Sync {
    /// Records `id` in `namespace` until `expires_at`; `true` when this is its
    /// first use, `false` when it was seen before. Atomic.
    async fn first_use(
        &self,
        namespace: &str,
        id: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<bool, StoreError>;
}

/// Liveness of the backend (`/readyz`).
#[async_trait]
pub trait StoreHealth: Send + Sync {
    /// Succeeds when the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The stores the broker uses, as trait objects.
#[derive(Clone)]
pub struct Stores {
    /// Revocations.
    pub revocations: Arc<dyn RevocationStore>,
    /// Replay records.
    pub replay: Arc<dyn ReplayGuard>,
    /// Health.
    pub health: Arc<dyn StoreHealth>,
}

impl Stores {
    /// All three from one backend.
    pub fn from_backend<T>(b: Arc<T>) -> Self
    where
        T: RevocationStore + ReplayGuard + StoreHealth + 'static,
    {
        Self {
            revocations: b.clone(),
            replay: b.clone(),
            health: b,
        }
    }

    /// Opens the backend named by a `[store] url`.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        if url == "memory://" || url.starts_with("memory://") {
            return Ok(Self::from_backend(Arc::new(memory::MemoryStore::new())));
        }
        Err(StoreError::Unavailable(format!(
            "store backend for `{}` is not built into this version (only memory:// is)",
            url.split("://").next().unwrap_or("?")
        )))
    }
}

#[cfg(test)]
pub(crate) mod conformance;
