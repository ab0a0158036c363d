// One file: the store traits and their shared types, the one contract both
// backends implement.
//! State that outlives a request: revocations, replay records, JIT grants
//! and pending human approvals. Every call is async and fallible: a store that
//! cannot answer makes the caller fail closed (503, no token).
//!
//! Backends: [`memory::MemoryStore`] (embedded, single process, the default)
//! and [`redis::RedisStore`] (shared by a fleet; `redis://`, `rediss://`,
//! `redis+cluster://` and `redis+sentinel://`).

pub mod breaker;
pub mod epoch;
pub mod feed;
pub mod guard_state;
pub mod memory;
pub mod redis;

/// The Redis backend's subject block cache, at its old path.
pub use redis::block_cache;

use std::sync::Arc;
use std::time::Duration;

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

pub use crate::revocation::RevocationKind;

/// Longest configurable per-call timeout (`[store] timeout`).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest key prefix (`[store] prefix`).
pub const MAX_PREFIX_LEN: usize = 32;
/// Most replicas a revocation may be required to reach (`WAIT numreplicas`).
pub const MAX_REVOCATION_REPLICAS: u32 = 64;
/// Longest wait for replica acknowledgements of a revocation.
pub const MAX_REVOCATION_WAIT: Duration = Duration::from_secs(10);
/// Longest breaker cool-off.
pub const MAX_BREAKER_COOL_OFF: Duration = Duration::from_secs(600);
/// Largest audit record (its JSON line) the store's audit stream takes. The
/// audit layer caps every record below it (`audit::MAX_RECORD_BYTES` is this
/// constant), so the limit lives here, where both can reach it.
pub const MAX_AUDIT_RECORD_BYTES: usize = 256 * 1024;

/// A store setting out of its bounds. The message states the rule; the
/// caller names the key (`store.prefix`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettingError(String);

/// The store's key-prefix rule, the one `config check` and the Redis
/// backend's start-up both apply: 1 to [`MAX_PREFIX_LEN`] bytes of ASCII
/// letters, digits, `-`, `_` and `.`.
pub fn check_prefix(prefix: &str) -> Result<(), SettingError> {
    let charset_ok = prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN || !charset_ok {
        return Err(SettingError(format!(
            "must be 1 to {MAX_PREFIX_LEN} characters, only letters, digits, '-', '_' and '.' \
             (got {} characters)",
            prefix.chars().count()
        )));
    }
    Ok(())
}

/// The store's per-call timeout rule: above 0 and at most [`MAX_TIMEOUT`].
pub fn check_timeout(timeout: Duration) -> Result<(), SettingError> {
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return Err(SettingError(format!(
            "must be above 0 and at most {}s",
            MAX_TIMEOUT.as_secs()
        )));
    }
    Ok(())
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

/// How many replicas acknowledged a revocation (`[store]
/// revocation_replicas`, Redis `WAIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaAck {
    /// Replicas that acknowledged the write within `revocation_wait`.
    pub acked: u32,
    /// Replicas required (`revocation_replicas`).
    pub required: u32,
}

impl ReplicaAck {
    /// Whether enough replicas acknowledged it.
    pub fn durable(&self) -> bool {
        self.acked >= self.required
    }
}

/// A recorded revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Its feed cursor.
    pub cursor: String,
    /// Replica acknowledgements, when the store waited for them (`None`: no
    /// replicas are required, or the backend has none).
    pub replicas: Option<ReplicaAck>,
}

impl Revoked {
    /// Whether the revocation meets the configured durability: true when no
    /// replicas are required, else when enough acknowledged it.
    pub fn durable(&self) -> bool {
        self.replicas.as_ref().is_none_or(ReplicaAck::durable)
    }
}

impl TokenFacts {
    /// The token as the one coverage rule ([`crate::revocation`]) reads it.
    pub fn covered(&self) -> crate::revocation::Covered<'_> {
        crate::revocation::Covered {
            jti: &self.jti,
            ancestors: &self.ancestors,
            sub: &self.sub,
            actors: &self.actors,
            client_id: self.client_id.as_deref(),
            txn: &self.txn,
            grant: self.grant.as_deref(),
            iat: self.iat,
        }
    }
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
    /// `client_id`: the workload the token was issued to.
    pub client_id: Option<String>,
    /// `jti` of every token this one was derived from by re-exchange: a
    /// revoked ancestor revokes its descendants.
    pub ancestors: Vec<String>,
    /// `txn`.
    pub txn: String,
    /// `grant`, if any.
    pub grant: Option<String>,
    /// `iat`.
    pub iat: u64,
}

/// Most blocks [`RevocationStore::list_blocks`] returns (blocks are rare;
/// a longer list is cut, soonest end first kept).
pub const MAX_LISTED_BLOCKS: usize = 10_000;

/// Revocations and the kill switch.
#[async_trait]
pub trait RevocationStore: Send + Sync {
    /// Records a revocation; returns its feed cursor. The entry lives until
    /// `r.expires_at` (the longest a covered token can live) and no longer.
    async fn revoke(&self, r: Revocation) -> Result<String, StoreError>;
    /// Like [`RevocationStore::revoke`], then waits (boundedly) until the
    /// configured number of replicas acknowledged it, and says how many did.
    /// Fewer than required is not an error: the revocation is in force on
    /// the primary, but not durable. Used by the operator paths (admin API).
    async fn revoke_acked(&self, r: Revocation) -> Result<Revoked, StoreError> {
        Ok(Revoked {
            cursor: self.revoke(r).await?,
            replicas: None,
        })
    }
    /// Whether any live entry covers the token.
    async fn is_revoked(&self, t: &TokenFacts, now: u64) -> Result<bool, StoreError>;
    /// Entries after `cursor` (exclusive; `None`: every live entry), oldest
    /// first, at most `limit`; with the cursor to resume from (the last entry
    /// returned, or the given cursor when there is nothing new). Cursors are
    /// opaque strings that sort in feed order.
    async fn list_since(
        &self,
        cursor: Option<&str>,
        limit: usize,
        now: u64,
    ) -> Result<(Vec<(String, Revocation)>, String), StoreError>;
    /// Refuses new exchanges for `subject` until `until` (the kill switch).
    /// A block never shortens a longer one already in force (two operators,
    /// or the guard and an operator, never undo each other by accident;
    /// [`RevocationStore::unblock_subject`] is the undo). Returns the time
    /// the subject is now blocked until (`until` or the longer block's).
    async fn block_subject(&self, subject: &str, until: u64) -> Result<u64, StoreError>;
    /// Whether `subject` is blocked now.
    async fn is_blocked(&self, subject: &str, now: u64) -> Result<bool, StoreError>;
    /// Lifts a block at once (the undo of the kill switch); tokens already
    /// revoked stay revoked. Returns whether a live block was lifted.
    async fn unblock_subject(&self, subject: &str, now: u64) -> Result<bool, StoreError>;
    /// The live blocks, `(subject, until)`, soonest end first, at most
    /// [`MAX_LISTED_BLOCKS`].
    async fn list_blocks(&self, now: u64) -> Result<Vec<(String, u64)>, StoreError>;
    /// A signal bumped when the feed may have new entries, whoever wrote
    /// them (for the Redis store: Redis's invalidation of the feed key on
    /// the block cache's tracking connection). `None`: no such signal; the
    /// feed is polled.
    fn feed_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
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

/// A just-in-time grant: `subject` may receive `scopes` for `audience`
/// until `expires_at`, at most `uses` times (unlimited when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Grant id (UUID).
    pub id: String,
    /// The identity it is for (SPIFFE ID, DNS name or OIDC `sub`).
    pub subject: String,
    /// Scopes it covers.
    pub scopes: Vec<String>,
    /// The one audience it covers.
    pub audience: String,
    /// When set, only exchanges for this task may use it.
    pub task: Option<String>,
    /// Uses allowed at creation (`None`: unlimited until expiry).
    pub uses: Option<u32>,
    /// Uses left (`None`: unlimited).
    pub remaining: Option<u32>,
    /// Creation time (Unix seconds).
    pub created_at: u64,
    /// End of the grant (Unix seconds); tokens never outlive it.
    pub expires_at: u64,
    /// Who created it (the operator's identity).
    pub created_by: String,
}

/// Just-in-time grants.
#[async_trait]
pub trait GrantStore: Send + Sync {
    /// Stores a new grant (its key expires with it).
    async fn create(&self, g: &Grant) -> Result<(), StoreError>;
    /// One grant by id, if it exists and is live.
    async fn get(&self, id: &str, now: u64) -> Result<Option<Grant>, StoreError>;
    /// Live grants, optionally only those of one subject.
    async fn list(&self, subject: Option<&str>, now: u64) -> Result<Vec<Grant>, StoreError>;
    /// Removes a grant; `true` when it existed.
    async fn revoke(&self, id: &str, subject: &str) -> Result<bool, StoreError>;
    /// Atomically finds a live grant of `subject` for `audience` that covers
    /// every scope in `scopes` (and `task`, when the grant names one), takes
    /// one use of it, and returns it as it was before the use. `None` when no
    /// grant covers the request. N concurrent callers against an N-use grant
    /// get exactly N grants back.
    async fn consume(
        &self,
        subject: &str,
        audience: &str,
        scopes: &[String],
        task: Option<&str>,
        now: u64,
    ) -> Result<Option<Grant>, StoreError>;
}

/// Most live grants one subject may hold; `create` refuses more (bounds the
/// work of `consume`, which examines every grant of the subject).
pub const MAX_GRANTS_PER_SUBJECT: usize = 100;

/// Where a human approval stands. `expired` is not a state: an approval
/// whose `expires_at` has passed is expired whatever it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    /// Waiting for an operator.
    Pending,
    /// Approved: the next poll of exactly this request gets one token.
    Approved,
    /// Denied by an operator.
    Denied,
    /// Approved and redeemed: its one token was issued.
    Consumed,
}

impl ApprovalState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Consumed => "consumed",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Approved, Self::Denied, Self::Consumed]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// A request waiting for (or decided by) a human: bound to exactly what
/// was asked through `request_hash`, usable only by `requester`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// Approval id (UUID), the `approval_id` the workload polls with.
    pub id: String,
    /// Hex SHA-256 of the request it is bound to (subject, actors, scopes,
    /// audience, task, `authorization_details`).
    pub request_hash: String,
    /// The presenting workload (client certificate identity, else the subject).
    pub requester: String,
    /// On whose behalf: the subject of the request.
    pub subject: String,
    /// Actors of the request, current actor first.
    pub actors: Vec<String>,
    /// The accountable human of the policy that would grant it.
    pub owner: Option<String>,
    /// That policy's name.
    pub policy: String,
    /// Every requested scope.
    pub scopes: Vec<String>,
    /// The one audience.
    pub audience: String,
    /// The task, when the request named one.
    pub task: Option<String>,
    /// RFC 9396 details of the request, verbatim.
    pub authorization_details: Option<serde_json::Value>,
    /// Creation time (Unix seconds).
    pub created_at: u64,
    /// When it stops being decidable or redeemable (Unix seconds).
    pub expires_at: u64,
    /// Where it stands.
    pub state: ApprovalState,
    /// The operator who decided.
    pub decided_by: Option<String>,
    /// When it was decided.
    pub decided_at: Option<u64>,
    /// The operator's reason.
    pub reason: Option<String>,
    /// Set for an OpenID CIBA request (`/bc-authorize`): only the person
    /// it names (`subject`) decides, for themself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ciba: Option<CibaRequest>,
}

/// What a CIBA request adds to an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CibaRequest {
    /// The `[[issuers]]` name the person signs in through.
    pub person_issuer: String,
    /// The agent's `binding_message` (≤ 64 characters), shown to the person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_message: Option<String>,
}

/// The answer to one poll of an approval by its workload.
#[derive(Debug, Clone, PartialEq)]
pub enum PollOutcome {
    /// Still pending; the poll was recorded.
    Pending,
    /// Still pending, and polled faster than the interval (RFC 8628 `slow_down`).
    SlowDown,
    /// Approved, and now consumed by this poll: mint exactly one token.
    Redeemed(Box<Approval>),
    /// An operator denied it.
    Denied,
    /// It expired before being decided or redeemed.
    Expired,
    /// Unknown, someone else's, bound to a different request, or already
    /// redeemed: the caller cannot tell which (nothing leaks).
    Invalid,
}

/// The result of an operator's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum DecideOutcome {
    /// Recorded; the approval as it is now.
    Decided(Box<Approval>),
    /// No such approval (or no longer retained).
    NotFound,
    /// Already decided (its state).
    NotPending(ApprovalState),
    /// Expired before the decision.
    Expired,
}

/// How long an approval is kept after `expires_at`, so that a late poll
/// still learns `expired_token` / `access_denied` rather than nothing.
pub const APPROVAL_RETAIN_SECS: u64 = 600;
/// Most live approvals (any state) one requester may have; more are refused.
pub const MAX_APPROVALS_PER_REQUESTER: usize = 20;
/// Most approvals kept in all.
pub const MAX_APPROVALS_TOTAL: usize = 10_000;
/// Most approvals `list` returns.
pub const MAX_APPROVALS_LISTED: usize = 1_000;
/// Largest stored approval (its JSON).
pub const MAX_APPROVAL_BYTES: usize = 64 * 1024;

/// What [`ApprovalStore::create_approval`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalCreated {
    /// Stored as a new pending approval.
    Created,
    /// Nothing stored: the same requester already has a pending, unexpired
    /// approval of the same request (same `request_hash`); its id.
    Existing(String),
    /// Nothing stored: the requester already has
    /// [`MAX_APPROVALS_PER_REQUESTER`] live approvals or the store holds
    /// [`MAX_APPROVALS_TOTAL`].
    Full,
}

/// Human approvals. Every transition is atomic: an approval is decided once
/// and redeemed at most once, whatever the concurrency.
#[async_trait]
pub trait ApprovalStore: Send + Sync {
    /// Stores a new pending approval, kept until `expires_at` +
    /// [`APPROVAL_RETAIN_SECS`], unless the same requester already has a
    /// pending, unexpired approval of the same request (then its id, so a
    /// request asked twice waits for one decision), or the caps are reached.
    /// Atomic: of N concurrent identical asks, one creates and the others
    /// find it.
    async fn create_approval(&self, a: &Approval) -> Result<ApprovalCreated, StoreError>;
    /// One approval by id while it is retained (expired ones included).
    async fn get_approval(&self, id: &str, now: u64) -> Result<Option<Approval>, StoreError>;
    /// Every retained approval, oldest first; when there are more than
    /// [`MAX_APPROVALS_LISTED`], the newest that many.
    async fn list_approvals(&self, now: u64) -> Result<Vec<Approval>, StoreError>;
    /// Moves a pending, unexpired approval to approved (`approve`) or denied,
    /// recording who and why.
    async fn decide(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        reason: Option<&str>,
        now: u64,
    ) -> Result<DecideOutcome, StoreError>;
    /// One poll by `requester` for the request hashing to `request_hash`:
    /// records the poll time of a pending approval (slow_down when the last
    /// poll is less than `interval` seconds ago), and consumes an approved
    /// one atomically (exactly one of N concurrent polls gets `Redeemed`).
    async fn poll(
        &self,
        id: &str,
        requester: &str,
        request_hash: &str,
        interval: u64,
        now: u64,
    ) -> Result<PollOutcome, StoreError>;
}

/// Longest value a [`SessionStore`] keeps (one sign-in attempt or session).
pub const MAX_SESSION_BYTES: usize = 8 * 1024;
/// Most live session records the memory store keeps.
pub const MAX_SESSIONS: usize = 100_000;

/// Short-lived records of the approval pages (sign-in attempts, approver
/// sessions), by namespace and id, each with its own expiry. In the store,
/// not in the process: replicas share them and a sign-out ends a session
/// everywhere. Ids are hashed into key names (the store never holds a
/// cookie value as a key).
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores `value` under (`ns`, `id`) until `expires_at` (replacing any).
    async fn put_session(
        &self,
        ns: &str,
        id: &str,
        value: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<(), StoreError>;
    /// The live value under (`ns`, `id`).
    async fn get_session(&self, ns: &str, id: &str, now: u64)
        -> Result<Option<String>, StoreError>;
    /// The live value under (`ns`, `id`), removed atomically: of N
    /// concurrent takes, one gets it.
    async fn take_session(
        &self,
        ns: &str,
        id: &str,
        now: u64,
    ) -> Result<Option<String>, StoreError>;
    /// Removes (`ns`, `id`) (nothing when absent).
    async fn delete_session(&self, ns: &str, id: &str) -> Result<(), StoreError>;
}

/// The bounded audit stream: sealed audit records (JSON lines) shared by
/// every replica using the store, oldest trimmed first. A Redis stream with
/// the Redis backend, a ring buffer in memory.
#[async_trait]
pub trait AuditStream: Send + Sync {
    /// Appends `records` in order (one round trip), keeping about
    /// `max_len` records in all (older ones are trimmed).
    async fn append(&self, records: &[String], max_len: u64) -> Result<(), StoreError>;
    /// Records after `after` (exclusive; `"0"`: from the oldest kept; `None`:
    /// the newest `limit`), oldest first, at most `limit`, with the cursor to
    /// resume from (the last record returned, or `after` when nothing is new).
    /// Cursors are opaque strings that sort in stream order.
    async fn read(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, String)>, String), StoreError>;
    /// Appends the records of chain `node` (in `seq` order) whose `seq` is
    /// past the chain's checkpoint, and moves the checkpoint to the last one,
    /// atomically: a batch sent again after a failure, or one that lands
    /// late after its caller gave up, is never appended twice, so the
    /// stream holds each record of the chain once, in order. The default
    /// (a backend without checkpoints) appends every record.
    async fn append_chain(
        &self,
        node: &str,
        records: &[AuditLine],
        max_len: u64,
    ) -> Result<(), StoreError> {
        let _ = node;
        let lines: Vec<String> = records.iter().map(|r| r.line.clone()).collect();
        self.append(&lines, max_len).await
    }
    /// The checkpoint of every chain written with
    /// [`AuditStream::append_chain`] (at most [`MAX_AUDIT_CHECKPOINTS`],
    /// each kept as long as the stream): the `seq` and `hash` of its last
    /// record. Kept apart from the audit file, so a removed tail of the file
    /// (or of the stream) shows. Default: none.
    async fn checkpoints(&self) -> Result<Vec<AuditCheckpoint>, StoreError> {
        Ok(Vec::new())
    }
}

/// One sealed record of a chain, for [`AuditStream::append_chain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLine {
    /// Its `seq`.
    pub seq: u64,
    /// Its `hash`.
    pub hash: String,
    /// The record, one JSON line (no newline).
    pub line: String,
}

/// The last record of one chain that the audit stream holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditCheckpoint {
    /// The chain.
    pub node: String,
    /// `seq` of its last record.
    pub seq: u64,
    /// `hash` of its last record.
    pub hash: String,
}

/// Most chain checkpoints kept (the least recently written go first).
pub const MAX_AUDIT_CHECKPOINTS: usize = 4_096;

/// Most audit records one [`AuditStream::read`] returns.
pub const MAX_AUDIT_PAGE: usize = 10_000;

/// Liveness of the backend (`/readyz`).
#[async_trait]
pub trait StoreHealth: Send + Sync {
    /// Succeeds when the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Whether the store is marked as having lost its data
    /// ([`epoch`]); never for a store that cannot lose it apart from the
    /// broker (memory).
    fn data_lost(&self) -> bool {
        false
    }
    /// `true` while the data is lost; changes on loss and on recovery.
    /// `None`: a store without a data epoch.
    fn data_lost_changes(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
    /// After an operator restored (or gave up) what was lost: writes a new
    /// `recovered` epoch, and this broker serves again (the others adopt it
    /// within [`epoch::CHECK_EVERY`]). Returns the new epoch's id.
    async fn rearm_epoch(&self) -> Result<String, StoreError> {
        Err(StoreError::Protocol(
            "this store keeps no data epoch (memory://): nothing to recover".into(),
        ))
    }
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
    /// Just-in-time grants.
    pub grants: Arc<dyn GrantStore>,
    /// Human approvals.
    pub approvals: Arc<dyn ApprovalStore>,
    /// The bounded audit stream.
    pub audit: Arc<dyn AuditStream>,
    /// Approver sessions and sign-in attempts.
    pub sessions: Arc<dyn SessionStore>,
    /// Bumped after every revocation this process records, so live
    /// `/revocations` streams push it at once instead of at their next poll
    /// (revocations made by other replicas arrive at the next poll).
    pub revocation_events: tokio::sync::watch::Sender<u64>,
    /// The process's one poller of the revocation feed, fanned out to every
    /// live `/revocations` stream.
    pub revocation_feed: Arc<feed::FeedHub>,
    /// The anomaly guard's fleet-wide state (the Redis store); `None`: the
    /// guard keeps its state in the process (the memory store).
    pub guard: Option<Arc<dyn guard_state::SharedState>>,
}

/// A [`RevocationStore`] that announces each recorded revocation on a
/// watch channel.
struct Announcing {
    inner: Arc<dyn RevocationStore>,
    events: tokio::sync::watch::Sender<u64>,
}

#[async_trait]
impl RevocationStore for Announcing {
    async fn revoke(&self, r: Revocation) -> Result<String, StoreError> {
        let cursor = self.inner.revoke(r).await?;
        self.events.send_modify(|n| *n = n.wrapping_add(1));
        Ok(cursor)
    }
    async fn revoke_acked(&self, r: Revocation) -> Result<Revoked, StoreError> {
        let done = self.inner.revoke_acked(r).await?;
        self.events.send_modify(|n| *n = n.wrapping_add(1));
        Ok(done)
    }
    async fn is_revoked(&self, t: &TokenFacts, now: u64) -> Result<bool, StoreError> {
        self.inner.is_revoked(t, now).await
    }
    async fn list_since(
        &self,
        cursor: Option<&str>,
        limit: usize,
        now: u64,
    ) -> Result<(Vec<(String, Revocation)>, String), StoreError> {
        self.inner.list_since(cursor, limit, now).await
    }
    async fn block_subject(&self, subject: &str, until: u64) -> Result<u64, StoreError> {
        self.inner.block_subject(subject, until).await
    }
    async fn is_blocked(&self, subject: &str, now: u64) -> Result<bool, StoreError> {
        self.inner.is_blocked(subject, now).await
    }
    async fn unblock_subject(&self, subject: &str, now: u64) -> Result<bool, StoreError> {
        self.inner.unblock_subject(subject, now).await
    }
    async fn list_blocks(&self, now: u64) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.list_blocks(now).await
    }
    fn feed_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.feed_changes()
    }
}

/// Resilience settings of a shared store (`[store]`); the memory store
/// ignores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// The circuit breaker around every call.
    pub breaker: breaker::BreakerConfig,
    /// Replicas that must acknowledge an operator's revocation (`WAIT`);
    /// 0: do not wait.
    pub revocation_replicas: u32,
    /// Longest wait for those acknowledgements.
    pub revocation_wait: Duration,
    /// Hold subject blocks in the broker, kept exact by Redis client
    /// tracking ([`block_cache`]).
    pub block_cache: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            breaker: breaker::BreakerConfig::default(),
            revocation_replicas: 0,
            revocation_wait: Duration::from_millis(500),
            block_cache: true,
        }
    }
}

impl Stores {
    /// Every store from one backend.
    pub fn from_backend<T>(b: Arc<T>) -> Self
    where
        T: RevocationStore
            + ReplayGuard
            + StoreHealth
            + GrantStore
            + ApprovalStore
            + AuditStream
            + SessionStore
            + 'static,
    {
        let (events, _) = tokio::sync::watch::channel(0u64);
        let revocations: Arc<dyn RevocationStore> = Arc::new(Announcing {
            inner: b.clone(),
            events: events.clone(),
        });
        Self {
            revocation_feed: Arc::new(feed::FeedHub::new(revocations.clone(), events.clone())),
            revocations,
            revocation_events: events,
            replay: b.clone(),
            health: b.clone(),
            grants: b.clone(),
            approvals: b.clone(),
            sessions: b.clone(),
            audit: b,
            guard: None,
        }
    }

    /// Keeps the anomaly guard's state in `g` (fleet-wide).
    #[must_use]
    pub fn with_guard_state(mut self, g: Arc<dyn guard_state::SharedState>) -> Self {
        self.guard = Some(g);
        self
    }

    /// Opens the backend named by a `[store] url`: `memory://`, or
    /// `redis://[:password@]host[:port][/db]` and `rediss://…[?ca=/path/ca.pem]`
    /// (and the cluster and Sentinel forms, [`redis::StoreUrl`])
    /// (keys under `prefix`, every call bounded by `timeout`).
    ///
    /// A Redis that does not answer at startup is not an error: the store is
    /// returned anyway (calls fail with [`StoreError::Unavailable`] and
    /// `/readyz` fails until it answers), so the broker starts and recovers on
    /// its own. Malformed URLs, prefixes and timeouts are errors.
    pub async fn open(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        Self::open_with(url, prefix, timeout, &StoreOptions::default()).await
    }

    /// [`Stores::open`] with the breaker and replica-acknowledgement settings.
    pub async fn open_with(
        url: &str,
        prefix: &str,
        timeout: Duration,
        options: &StoreOptions,
    ) -> Result<Self, StoreError> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        match scheme {
            "memory" => Ok(Self::from_backend(Arc::new(memory::MemoryStore::new()))),
            "redis" | "rediss" | "redis+cluster" | "redis+sentinel" | "rediss+cluster"
            | "rediss+sentinel" => {
                let store = redis::RedisStore::new(&redis::RedisConfig {
                    url: url.to_string(),
                    prefix: prefix.to_string(),
                    timeout,
                    ca_pem: None,
                })?
                .with_options(options)?;
                if let Err(e) = store.ping().await {
                    tracing::warn!(
                        error = %e,
                        "redis store did not answer at startup; calls fail closed and /readyz \
                         fails until it does"
                    );
                }
                let store = Arc::new(store);
                redis::RedisStore::watch_epoch(&store);
                Ok(Self::from_backend(store.clone()).with_guard_state(store))
            }
            _ => Err(StoreError::Unavailable(
                "store url must start with memory://, redis://, rediss://, redis+cluster://, \
                 rediss+cluster://, redis+sentinel:// or rediss+sentinel://"
                    .into(),
            )),
        }
    }
}

#[cfg(any(test, feature = "testkit"))]
pub mod conformance;
