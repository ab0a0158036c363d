// One file: about 240 of its lines are unit tests; the rule (which triggers
// apply, what a hit answers) stays here while its state lives in the store.
//! The anomaly guard: per-identity issuance rates, first use of a new
//! audience, and streaks of refusals, each answered by a configured action
//! (`slow_down`, human `approval`, or `revoke`).
//!
//! # What is tracked, and where
//! Per authenticated identity (the subject, and for a delegation also the
//! actor; never an unverified claim), in this process (per replica) with the
//! memory store, or fleet-wide in the store ([`SharedState`]) with Redis:
//! - a sliding window of admitted exchanges: two fixed buckets of `window`
//!   seconds, the previous one weighted by how much of it still overlaps the
//!   window ending now (`prev * (W - e) / W + cur`, `e` seconds into the
//!   current bucket);
//! - the learned baseline (optional): an exponentially weighted moving
//!   average of the identity's completed windows (`ewma = 0.3 * count +
//!   0.7 * ewma`, an idle window counts as 0); after `learn_warmup` windows
//!   the limit is `max(learn_floor, learn_multiplier * ewma)`. A window in
//!   which that learned limit was hit is not learned from, so a sustained
//!   burst cannot teach the guard that it is normal;
//! - the audiences the identity was issued tokens for (at most
//!   `max_audiences`, oldest forgotten first, stored as 64-bit keyed hashes);
//!   the audience of its first issuance is learned without action;
//! - its streak of consecutive refusals after authentication (`invalid_scope`,
//!   `invalid_target`, no matching policy): an issuance resets it.
//!
//! Memory is bounded: at most `max_identities` entries (about 150 bytes plus
//! 8 per audience each), in 16 shards behind their own mutex; a full shard
//! first forgets identities idle for two windows, then the least recently
//! seen one. A forgotten identity starts afresh (its audiences are learned
//! again).
//!
//! # Fleet-wide (issue 17 item 6)
//! With a shared state ([`Guard::with_shared`]; the Redis store gives one),
//! the same state lives in the store instead, one atomic script call per
//! check, so every replica counts against one budget and a restart keeps
//! the baselines. This module stays the one owner of the rule: it derives
//! the [`Settings`] each call applies and turns the [`Step`] the state
//! answers into a [`Hit`] (`retry_after` included); the store only holds
//! the state and applies the same steps atomically (a test runs both
//! engines side by side). When the shared state cannot answer (down, slow
//! past `[store] timeout`, breaker open), [`Guard::decide`] fails and the
//! exchange answers 503 with no token: the guard never falls back to
//! per-process counters, which would hand each replica a full budget again.
//!
//! # Leases
//! A check per exchange costs about one ES256 signature of broker CPU, so a
//! check that admits an exchange of a settled identity (audience known, no
//! streak) may also count up to [`LEASE_MAX`] more in advance, as long as
//! the identity's sliding count stays within half of every limit in force
//! ([`Lease`]; the script decides how many). This process then admits that
//! many of the identity's exchanges without a store call: same bucket,
//! same settings, an audience the store confirmed known, confirmed settled
//! less than [`LEASE_FOR`] ago. Unused ones go back with the identity's next
//! check. Nothing is admitted uncounted, so the fleet limit stays exact;
//! what moves is bounded: leased-but-unused exchanges count against the
//! budget (another replica may refuse that many early), a streak tripped
//! elsewhere holds here once the lease ends (at most [`LEASE_FOR`]), and an
//! issuance on a lease does not reset a streak running elsewhere until the
//! next exact check. [`Guard::with_lease_max`]`(0)` makes every check exact.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::StoreError;
// The store-facing half of the guard (its settings, the step one call
// takes, the shared-state trait) lives in the store, which implements it.
pub use crate::store::guard_state::{Learned, Lease, Settings, SharedState, Step};

/// What the guard does when a trigger fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardAction {
    /// Nothing (the trigger is off).
    Allow,
    /// `429 slow_down` with `Retry-After`.
    SlowDown,
    /// The request waits for a human approval (`authorization_pending`).
    Approval,
    /// Revoke the identity's live tokens, block it for `block_for`, refuse.
    Revoke,
}

impl GuardAction {
    /// The config and metric name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::SlowDown => "slow_down",
            Self::Approval => "approval",
            Self::Revoke => "revoke",
        }
    }
}

/// A guard action name that is not one of `allow`, `slow_down`,
/// `approval`, `revoke` (the value as given).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not one of allow, slow_down, approval, revoke")]
pub struct UnknownAction(pub String);

impl std::str::FromStr for GuardAction {
    type Err = UnknownAction;
    fn from_str(s: &str) -> Result<Self, UnknownAction> {
        match s {
            "allow" => Ok(Self::Allow),
            "slow_down" => Ok(Self::SlowDown),
            "approval" => Ok(Self::Approval),
            "revoke" => Ok(Self::Revoke),
            _ => Err(UnknownAction(s.to_string())),
        }
    }
}

/// What made the guard act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The configured `max_rate` was exceeded.
    Rate,
    /// The learned baseline times `learn_multiplier` was exceeded.
    LearnedRate,
    /// First use of an audience by an identity.
    NewAudience,
    /// `refusal_streak` consecutive refusals.
    RefusalStreak,
}

impl Trigger {
    /// Every trigger.
    pub const ALL: [Trigger; 4] = [
        Self::Rate,
        Self::LearnedRate,
        Self::NewAudience,
        Self::RefusalStreak,
    ];

    /// The audit `reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Rate => "guard_rate",
            Self::LearnedRate => "guard_rate_learned",
            Self::NewAudience => "guard_new_audience",
            Self::RefusalStreak => "guard_refusal_streak",
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Rate => "rate",
            Self::LearnedRate => "rate_learned",
            Self::NewAudience => "new_audience",
            Self::RefusalStreak => "refusal_streak",
        }
    }
}

/// The actions of the triggers decided with a policy at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyActions {
    /// When a rate (configured or learned) is exceeded.
    pub on_rate: GuardAction,
    /// When an identity uses an audience it was never issued a token for.
    pub on_new_audience: GuardAction,
}

/// `[guard]`, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    /// The guard runs at all.
    pub enabled: bool,
    /// Sliding window length in seconds.
    pub window: u64,
    /// Most exchanges admitted per identity per window (0: no configured limit).
    pub max_rate: u32,
    /// The learned baseline, when on.
    pub learned: Option<Learned>,
    /// Default actions (policies may override them).
    pub actions: PolicyActions,
    /// Consecutive refusals that trip the streak trigger (0: off).
    pub refusal_streak: u32,
    /// What a tripped streak does.
    pub on_refusal_streak: GuardAction,
    /// How long a tripped streak keeps slowing down or stepping up, seconds.
    pub cooldown: u64,
    /// How long `revoke` blocks the identity, seconds.
    pub block_for: u64,
    /// Most identities tracked.
    pub max_identities: usize,
    /// Most audiences remembered per identity.
    pub max_audiences: usize,
    /// Per-policy action overrides, by policy name.
    pub policies: HashMap<String, PolicyActions>,
}

impl Default for GuardConfig {
    /// Off; the values are the `[guard]` defaults.
    fn default() -> Self {
        Self {
            enabled: false,
            window: 60,
            max_rate: 0,
            learned: None,
            actions: PolicyActions {
                on_rate: GuardAction::SlowDown,
                on_new_audience: GuardAction::Allow,
            },
            refusal_streak: 0,
            on_refusal_streak: GuardAction::SlowDown,
            cooldown: 300,
            block_for: 900,
            max_identities: 100_000,
            max_audiences: 64,
            policies: HashMap::new(),
        }
    }
}

/// Smoothing of the learned baseline (weight of the newest window).
pub const LEARN_ALPHA: f64 = 0.3;
/// Idle windows folded into the baseline at most (older history is gone).
const MAX_IDLE_WINDOWS: u64 = 64;
/// Shards of the identity table (fewer when `max_identities` is small).
const SHARDS: usize = 16;

/// The guard's decision about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// Why.
    pub trigger: Trigger,
    /// What to do.
    pub action: GuardAction,
    /// The identity it is about.
    pub identity: String,
    /// Seconds until the identity may try again (for `slow_down`).
    pub retry_after: u64,
}

/// Least time an identity's fleet-wide state is kept after its last
/// exchange (longer when `MAX_IDLE_WINDOWS + 2` windows or the cooldown are
/// longer): its known audiences and streak outlive a quiet week.
pub const SHARED_KEEP_MIN: u64 = 7 * 24 * 3600;

#[derive(Debug, Default)]
struct Entry {
    /// Index of the current bucket (`now / window`).
    bucket: u64,
    cur: u64,
    prev: u64,
    ewma: f64,
    windows: u32,
    /// The learned limit was hit in the current bucket.
    spiked: bool,
    audiences: VecDeque<u64>,
    streak: u32,
    tripped_until: u64,
    last_seen: u64,
}

impl Entry {
    /// Moves the buckets to `now`, folding completed windows into the baseline.
    fn roll(&mut self, now: u64, window: u64) {
        let b = now / window;
        if b <= self.bucket {
            return;
        }
        if self.last_seen > 0 {
            if !self.spiked {
                self.learn(self.cur as f64);
            }
            let idle = (b - self.bucket - 1).min(MAX_IDLE_WINDOWS);
            for _ in 0..idle {
                self.learn(0.0);
            }
        }
        self.prev = if b == self.bucket + 1 { self.cur } else { 0 };
        self.cur = 0;
        self.spiked = false;
        self.bucket = b;
    }

    fn learn(&mut self, sample: f64) {
        self.ewma = if self.windows == 0 {
            sample
        } else {
            LEARN_ALPHA * sample + (1.0 - LEARN_ALPHA) * self.ewma
        };
        self.windows = self.windows.saturating_add(1);
    }

    /// The learned limit once warm.
    fn learned_limit(&self, l: &Learned) -> Option<u64> {
        (self.windows >= l.warmup).then(|| {
            let m = (self.ewma * f64::from(l.multiplier)).ceil();
            // `as` saturates for floats; the value is non-negative.
            (m as u64).max(u64::from(l.floor))
        })
    }
}

impl Entry {
    /// One check of this identity's state (the in-process engine of the
    /// rule; the Redis script is the other, kept equal by a test).
    fn step(&mut self, s: &Settings, aud: u64, now: u64) -> Step {
        if self.tripped_until > now && s.streak_holds {
            return Step::Streak {
                left: self.tripped_until - now,
            };
        }
        let (w, into) = (s.window, now % s.window);
        let (prev, cur) = (self.prev, self.cur);
        if s.max_rate > 0 && !admits(prev, cur, into, w, s.max_rate) {
            return Step::Rate {
                prev,
                cur,
                limit: s.max_rate,
            };
        }
        if let Some(limit) = s.learned.as_ref().and_then(|x| self.learned_limit(x)) {
            if !admits(prev, cur, into, w, limit) {
                self.spiked = true;
                return Step::LearnedRate { prev, cur, limit };
            }
        }
        if s.new_audience && !self.audiences.is_empty() && !self.audiences.contains(&aud) {
            return Step::NewAudience;
        }
        self.cur = self.cur.saturating_add(1);
        Step::Admitted
    }
}

/// Whether one more exchange at `now` keeps the sliding estimate within
/// `limit`: `prev * (W - e) / W + cur + 1 <= limit`, in integers.
fn admits(prev: u64, cur: u64, e: u64, window: u64, limit: u64) -> bool {
    let lhs = prev
        .saturating_mul(window.saturating_sub(e))
        .saturating_add(cur.saturating_add(1).saturating_mul(window));
    lhs <= limit.saturating_mul(window)
}

/// Seconds from `e` (into the current bucket) until [`admits`] holds, if
/// nothing else is admitted meanwhile (at least 1).
fn retry_after(prev: u64, cur: u64, e: u64, window: u64, limit: u64) -> u64 {
    let room = limit.saturating_sub(1);
    // Later in this bucket: prev * (W - e') <= (limit - 1 - cur) * W.
    if cur <= room {
        let free = (room - cur).saturating_mul(window);
        let need = match free.checked_div(prev) {
            Some(q) => window.saturating_sub(q),
            None => 0,
        };
        if need < window {
            return need.saturating_sub(e).max(1);
        }
    }
    // In the next bucket (prev = cur, cur = 0): cur * (W - e2) <= (limit - 1) * W.
    let free = room.saturating_mul(window);
    let need = match free.checked_div(cur) {
        Some(q) => window.saturating_sub(q),
        None => 0,
    };
    window.saturating_sub(e).saturating_add(need).max(1)
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Box<str>, Entry>,
}

/// Most exchanges one check may lease (count in advance) for one identity.
pub const LEASE_MAX: u64 = 64;
/// How long a lease is used: past this, what the shared state confirmed
/// when it was granted (no streak runs or holds, the audiences are known)
/// is no longer trusted and the identity is checked again.
pub const LEASE_FOR: Duration = Duration::from_secs(1);
/// Longest a request waits for a lease another request of its identity is
/// asking for (then it checks itself).
const LEASE_WAIT: Duration = Duration::from_millis(20);
/// Audiences remembered per leased identity (confirmed known).
const LEASE_AUDIENCES: usize = 8;

/// One shard of the leases this process holds, by identity.
type LeaseShard = Mutex<HashMap<Box<str>, Held>>;

/// One identity's lease in this process (fleet-wide state only).
#[derive(Debug)]
struct Held {
    /// The bucket the leased exchanges were counted in.
    bucket: u64,
    /// The settings they were counted under.
    settings: Settings,
    /// Leased exchanges not used yet.
    left: u64,
    /// When the shared state last said the identity is settled.
    since: Instant,
    /// Audiences (keyed hashes) the shared state confirmed known.
    known: Vec<u64>,
    /// Extra exchanges the next check asks for.
    want: u64,
    /// Leased exchanges to give back with the next check, and their bucket.
    back: u64,
    back_bucket: u64,
    /// A check asking for a lease is under way (since).
    asking: Option<Instant>,
    /// Wakes the requests waiting for that check's answer.
    wake: Arc<tokio::sync::Notify>,
}

/// What [`Guard::take_leased`] found.
enum Taken {
    /// Admitted on the lease.
    Yes,
    /// No lease covers this request: check.
    No,
    /// The lease is used up and another request is asking for more.
    Wait(Arc<tokio::sync::Notify>),
}

impl Held {
    /// Stops using what is left: it goes back with the next check.
    fn give_back(&mut self) {
        if self.left == 0 {
            return;
        }
        if self.back > 0 && self.back_bucket != self.bucket {
            // Units of an older bucket are no longer worth returning.
            self.back = 0;
        }
        self.back += self.left;
        self.back_bucket = self.bucket;
        self.left = 0;
    }
}

/// The guard: its config and its state (per process, or shared through
/// the store). Cheap to call: one short lock, or one store call, per
/// identity per request.
pub struct Guard {
    cfg: GuardConfig,
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
    hasher: RandomState,
    /// The fleet-wide state; `None`: the state is this process's.
    shared: Option<Arc<dyn SharedState>>,
    /// With a fleet-wide state: the leases this process holds, by identity
    /// (as `shards`, and as bounded).
    leases: Box<[LeaseShard]>,
    /// Most exchanges one check may lease (0: every check is exact).
    lease_max: u64,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("cfg", &self.cfg)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// A guard with empty state, or `None` when the config turns it off.
    pub fn new(cfg: &GuardConfig) -> Option<Self> {
        if !cfg.enabled {
            return None;
        }
        let n = if cfg.max_identities >= 1024 {
            SHARDS
        } else {
            1
        };
        Some(Self {
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            leases: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
            lease_max: LEASE_MAX,
            shard_cap: (cfg.max_identities / n).max(1),
            cfg: cfg.clone(),
            hasher: RandomState::new(),
            shared: None,
        })
    }

    /// Keeps the state in `shared` (fleet-wide) instead of this process;
    /// `None` keeps it here.
    #[must_use]
    pub fn with_shared(mut self, shared: Option<Arc<dyn SharedState>>) -> Self {
        self.shared = shared;
        self
    }

    /// Leases at most `n` exchanges per check (0: every exchange is one
    /// exact check of the shared state).
    #[must_use]
    pub fn with_lease_max(mut self, n: u64) -> Self {
        self.lease_max = n;
        self
    }

    /// Leased exchanges this process holds and has not used (fleet-wide
    /// state only).
    pub fn leased(&self) -> u64 {
        self.leases
            .iter()
            .map(|m| {
                let m = m.lock().unwrap_or_else(|e| e.into_inner());
                m.values().map(|h| h.left).sum::<u64>()
            })
            .sum()
    }

    /// The lease shard of an identity.
    fn lease_shard(&self, id: &str) -> Option<&LeaseShard> {
        let i = (self.hasher.hash_one(id) % self.leases.len() as u64) as usize;
        self.leases.get(i)
    }

    /// Admits one exchange of `id` on its lease, if it holds one that
    /// covers this request: the same bucket and settings, a known
    /// audience, confirmed settled less than [`LEASE_FOR`] ago.
    fn take_leased(&self, id: &str, aud: u64, bucket: u64, s: &Settings) -> Taken {
        let Some(m) = self.lease_shard(id) else {
            return Taken::No;
        };
        let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
        let Some(h) = m.get_mut(id) else {
            return Taken::No;
        };
        if h.bucket == bucket
            && h.settings == *s
            && h.known.contains(&aud)
            && h.since.elapsed() <= LEASE_FOR
        {
            let asking = h.asking.is_some_and(|t| t.elapsed() < LEASE_FOR);
            if h.left == 0 {
                // Another request of this identity is asking for more:
                // wait for its answer rather than check one by one.
                return if asking {
                    Taken::Wait(h.wake.clone())
                } else {
                    Taken::No
                };
            }
            // Down to a quarter: this one asks for more (an exact check)
            // while the others go on with what is left.
            if h.left * 4 <= h.want && !asking {
                return Taken::No;
            }
            h.left -= 1;
            return Taken::Yes;
        }
        Taken::No
    }

    /// [`Guard::take_leased`], waiting (a little) for a lease being asked
    /// for by another request of the same identity.
    async fn take_leased_or_wait(&self, id: &str, aud: u64, bucket: u64, s: &Settings) -> bool {
        let wake = match self.take_leased(id, aud, bucket, s) {
            Taken::Yes => return true,
            Taken::No => return false,
            Taken::Wait(w) => w,
        };
        // Registered before the second look, so an answer between the two
        // is not missed.
        let answered = wake.notified();
        match self.take_leased(id, aud, bucket, s) {
            Taken::Yes => return true,
            Taken::No => return false,
            Taken::Wait(_) => {}
        }
        if tokio::time::timeout(LEASE_WAIT, answered).await.is_err() {
            return false;
        }
        matches!(self.take_leased(id, aud, bucket, s), Taken::Yes)
    }

    /// The lease terms of `id`'s next check: what it gives back, and how
    /// many it asks for: double while leases are used (down to a quarter)
    /// before they end, half when one ended unused.
    fn lease_terms(&self, id: &str, bucket: u64, s: &Settings) -> Lease {
        let Some(m) = self.lease_shard(id) else {
            return Lease::default();
        };
        let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
        let Some(h) = m.get_mut(id) else {
            return Lease::default();
        };
        let age = h.since.elapsed();
        if h.bucket != bucket || h.settings != *s || age > LEASE_FOR {
            if h.left > 0 {
                h.want /= 2;
            }
            h.give_back();
        } else if h.left * 4 <= h.want {
            h.want = (h.want.max(1) * 2).min(self.lease_max);
        }
        // One check asks at a time (the others are exact meanwhile).
        let want = match h.asking {
            Some(t) if t.elapsed() < LEASE_FOR => 0,
            _ => h.want.min(self.lease_max),
        };
        if want > 0 {
            h.asking = Some(Instant::now());
        }
        let terms = Lease {
            want,
            back: h.back,
            back_bucket: h.back_bucket,
        };
        h.back = 0;
        terms
    }

    /// A check with `terms` did not answer. It may still run later (a
    /// timeout does not unsend it), so what it gave back is not sent again:
    /// those leased exchanges stay counted (stricter, never looser).
    fn lease_failed(&self, id: &str, terms: Lease) {
        if terms.want == 0 {
            return;
        }
        let Some(m) = self.lease_shard(id) else {
            return;
        };
        let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = m.get_mut(id) {
            h.asking = None;
            h.wake.notify_waiters();
        }
    }

    /// What a check answered, for `id`'s lease: a settled identity keeps
    /// (and tops up) its lease; anything else ends it.
    fn lease_answer(&self, id: &str, aud: u64, bucket: u64, s: &Settings, step: Step, asked: bool) {
        let Some(m) = self.lease_shard(id) else {
            return;
        };
        let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
        let Step::AdmittedSettled { lease } = step else {
            if let Some(h) = m.get_mut(id) {
                h.give_back();
                h.known.clear();
                if asked {
                    h.asking = None;
                    h.wake.notify_waiters();
                }
            }
            return;
        };
        if !m.contains_key(id) && m.len() >= self.shard_cap {
            m.retain(|_, h| h.since.elapsed() <= LEASE_FOR || h.back > 0);
            if m.len() >= self.shard_cap {
                // Its unused leased exchanges stay counted (stricter).
                let any = m.keys().next().cloned();
                if let Some(k) = any {
                    m.remove(&k);
                }
            }
        }
        let h = m.entry(id.into()).or_insert_with(|| Held {
            bucket,
            settings: *s,
            left: 0,
            since: Instant::now(),
            known: Vec::new(),
            want: 1,
            back: 0,
            back_bucket: 0,
            asking: None,
            wake: Arc::new(tokio::sync::Notify::new()),
        });
        if h.bucket != bucket || h.settings != *s {
            h.give_back();
            h.known.clear();
            h.bucket = bucket;
            h.settings = *s;
        }
        h.left += lease;
        h.since = Instant::now();
        if !h.known.contains(&aud) {
            if h.known.len() >= LEASE_AUDIENCES {
                h.known.remove(0);
            }
            h.known.push(aud);
        }
        if asked {
            h.asking = None;
            h.wake.notify_waiters();
        }
    }

    /// Ends `id`'s lease (a refusal: a streak may start).
    fn lease_end(&self, id: &str) {
        let Some(m) = self.lease_shard(id) else {
            return;
        };
        let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = m.get_mut(id) {
            h.give_back();
            h.known.clear();
        }
    }

    /// Whether the state is fleet-wide.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The settings a call applies: for a check, with the granting policy's
    /// `actions` (a trigger whose action is `allow` is not checked at all);
    /// for bookkeeping (`None`), every check off.
    pub fn settings(&self, actions: Option<PolicyActions>) -> Settings {
        let c = &self.cfg;
        let rate = actions.is_some_and(|a| a.on_rate != GuardAction::Allow);
        Settings {
            window: c.window.max(1),
            keep: c
                .window
                .saturating_mul(MAX_IDLE_WINDOWS + 2)
                .max(SHARED_KEEP_MIN)
                .max(c.cooldown)
                .saturating_add(1),
            max_rate: if rate { u64::from(c.max_rate) } else { 0 },
            learned: if rate { c.learned } else { None },
            new_audience: actions.is_some_and(|a| a.on_new_audience != GuardAction::Allow),
            streak_holds: c.on_refusal_streak != GuardAction::Revoke,
            refusal_streak: c.refusal_streak,
            cooldown: c.cooldown,
            max_audiences: c.max_audiences.max(1),
        }
    }

    /// The hit a step means for `identity` (`None`: admitted).
    fn hit_of(&self, step: Step, identity: &str, actions: PolicyActions, now: u64) -> Option<Hit> {
        let w = self.cfg.window.max(1);
        let into = now % w;
        let (trigger, action, retry_after) = match step {
            Step::Admitted | Step::AdmittedSettled { .. } => return None,
            Step::Streak { left } => (Trigger::RefusalStreak, self.cfg.on_refusal_streak, left),
            Step::Rate { prev, cur, limit } => (
                Trigger::Rate,
                actions.on_rate,
                retry_after(prev, cur, into, w, limit),
            ),
            Step::LearnedRate { prev, cur, limit } => (
                Trigger::LearnedRate,
                actions.on_rate,
                retry_after(prev, cur, into, w, limit),
            ),
            Step::NewAudience => (Trigger::NewAudience, actions.on_new_audience, 0),
        };
        Some(Hit {
            trigger,
            action,
            identity: identity.to_string(),
            retry_after,
        })
    }

    /// [`Guard::check`] against the state wherever it lives. With a shared
    /// state, one atomic call per identity (the subject first; an actor is
    /// not counted when the subject is stopped); an error when the store
    /// cannot answer (fail closed: there is no per-process fallback).
    pub async fn decide(
        &self,
        identities: &[&str],
        audience: &str,
        actions: PolicyActions,
        now: u64,
    ) -> Result<Option<Hit>, StoreError> {
        Ok(self
            .decide_noting(identities, audience, actions, now)
            .await?
            .0)
    }

    /// [`Guard::decide`], and whether recording an issuance for `audience`
    /// right after would change nothing in the shared state (every
    /// identity knows the audience and has no streak), so that
    /// [`Guard::record_issued`] may be skipped. Always `false` for the
    /// in-process state (its record costs no round trip).
    pub async fn decide_noting(
        &self,
        identities: &[&str],
        audience: &str,
        actions: PolicyActions,
        now: u64,
    ) -> Result<(Option<Hit>, bool), StoreError> {
        let Some(shared) = &self.shared else {
            return Ok((self.check(identities, audience, actions, now), false));
        };
        let s = self.settings(Some(actions));
        let leasing = self.lease_max > 0;
        let aud = self.hasher.hash_one(audience);
        let bucket = now / s.window;
        let mut settled = true;
        for id in identities {
            // Counted in the shared state already, by the check that
            // leased it.
            if leasing && self.take_leased_or_wait(id, aud, bucket, &s).await {
                continue;
            }
            let terms = if leasing {
                self.lease_terms(id, bucket, &s)
            } else {
                Lease::default()
            };
            let step = match shared.check(&s, id, audience, now, terms).await {
                Ok(step) => step,
                Err(e) => {
                    self.lease_failed(id, terms);
                    return Err(e);
                }
            };
            if leasing {
                self.lease_answer(id, aud, bucket, &s, step, terms.want > 0);
            }
            settled &= matches!(step, Step::AdmittedSettled { .. });
            if let Some(hit) = self.hit_of(step, id, actions, now) {
                return Ok((Some(hit), false));
            }
        }
        Ok((None, settled))
    }

    /// [`Guard::issued`] against the state wherever it lives.
    pub async fn record_issued(
        &self,
        identities: &[&str],
        audience: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        let Some(shared) = &self.shared else {
            self.issued(identities, audience, now);
            return Ok(());
        };
        let s = self.settings(None);
        for id in identities {
            shared.issued(&s, id, audience, now).await?;
        }
        Ok(())
    }

    /// [`Guard::refused`] against the state wherever it lives.
    pub async fn record_refused(
        &self,
        identities: &[&str],
        now: u64,
    ) -> Result<Vec<Hit>, StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(self.refused(identities, now));
        };
        let cfg = &self.cfg;
        if cfg.refusal_streak == 0 || cfg.on_refusal_streak == GuardAction::Allow {
            return Ok(Vec::new());
        }
        let s = self.settings(None);
        let mut hits = Vec::new();
        for id in identities {
            self.lease_end(id);
            if shared.refused(&s, id, now).await? {
                hits.push(self.streak_hit(id));
            }
        }
        Ok(hits)
    }

    /// The hit of a streak that just tripped.
    fn streak_hit(&self, identity: &str) -> Hit {
        Hit {
            trigger: Trigger::RefusalStreak,
            action: self.cfg.on_refusal_streak,
            identity: identity.to_string(),
            retry_after: self.cfg.cooldown,
        }
    }

    /// The config in force.
    pub fn config(&self) -> &GuardConfig {
        &self.cfg
    }

    /// The actions for a policy (its override, or the defaults).
    pub fn actions_for(&self, policy: &str) -> PolicyActions {
        self.cfg
            .policies
            .get(policy)
            .copied()
            .unwrap_or(self.cfg.actions)
    }

    /// Whether the guard may step a request of this policy up to a human
    /// approval (so a poll with `approval_id` is valid even once the
    /// trigger no longer fires: the window moved on, the cooldown ended).
    pub fn may_step_up(&self, policy: &str) -> bool {
        let a = self.actions_for(policy);
        a.on_rate == GuardAction::Approval
            || a.on_new_audience == GuardAction::Approval
            || (self.cfg.refusal_streak > 0 && self.cfg.on_refusal_streak == GuardAction::Approval)
    }

    /// Identities tracked now.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }

    fn with<R>(&self, id: &str, now: u64, f: impl FnOnce(&mut Entry) -> R) -> R {
        let h = self.hasher.hash_one(id);
        let i = (h % self.shards.len() as u64) as usize;
        let Some(m) = self.shards.get(i) else {
            // Unreachable (i < len); act as a fresh identity.
            return f(&mut Entry::default());
        };
        let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
        if !s.map.contains_key(id) && s.map.len() >= self.shard_cap {
            let idle_before = now.saturating_sub(self.cfg.window.saturating_mul(2));
            s.map
                .retain(|_, e| e.last_seen > idle_before || e.tripped_until > now);
            if s.map.len() >= self.shard_cap {
                let oldest = s
                    .map
                    .iter()
                    .min_by_key(|(_, e)| e.last_seen)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    s.map.remove(&k);
                }
            }
        }
        if !s.map.contains_key(id) {
            s.map.insert(id.into(), Entry::default());
        }
        let Some(e) = s.map.get_mut(id) else {
            return f(&mut Entry::default());
        };
        e.roll(now, self.cfg.window);
        let r = f(e);
        e.last_seen = now;
        r
    }

    /// Decides about a request that policy would grant: a tripped refusal
    /// streak, the rate (configured and learned), then a new audience. When
    /// nothing fires, the exchange is counted against every identity.
    pub fn check(
        &self,
        identities: &[&str],
        audience: &str,
        actions: PolicyActions,
        now: u64,
    ) -> Option<Hit> {
        let aud = self.hasher.hash_one(audience);
        let s = self.settings(Some(actions));
        for id in identities {
            let step = self.with(id, now, |e| e.step(&s, aud, now));
            if let Some(hit) = self.hit_of(step, id, actions, now) {
                return Some(hit);
            }
        }
        None
    }

    /// A token was issued to these identities for `audience`: the streak
    /// ends and the audience is known from now on.
    pub fn issued(&self, identities: &[&str], audience: &str, now: u64) {
        let aud = self.hasher.hash_one(audience);
        let cap = self.cfg.max_audiences;
        for id in identities {
            self.with(id, now, |e| {
                e.streak = 0;
                if !e.audiences.contains(&aud) {
                    if e.audiences.len() >= cap {
                        e.audiences.pop_front();
                    }
                    e.audiences.push_back(aud);
                }
            });
        }
    }

    /// A request by these identities was refused after authentication.
    /// Returns the hit when this refusal completes a streak (the streak
    /// starts over; `slow_down` and `approval` then hold for `cooldown`).
    pub fn refused(&self, identities: &[&str], now: u64) -> Vec<Hit> {
        let cfg = &self.cfg;
        if cfg.refusal_streak == 0 || cfg.on_refusal_streak == GuardAction::Allow {
            return Vec::new();
        }
        let mut hits = Vec::new();
        for id in identities {
            let tripped = self.with(id, now, |e| {
                e.streak = e.streak.saturating_add(1);
                if e.streak < cfg.refusal_streak {
                    return false;
                }
                e.streak = 0;
                if cfg.on_refusal_streak != GuardAction::Revoke {
                    e.tripped_until = now.saturating_add(cfg.cooldown);
                }
                true
            });
            if tripped {
                hits.push(self.streak_hit(id));
            }
        }
        hits
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn cfg() -> GuardConfig {
        GuardConfig {
            enabled: true,
            window: 10,
            max_rate: 5,
            ..GuardConfig::default()
        }
    }

    const SLOW: PolicyActions = PolicyActions {
        on_rate: GuardAction::SlowDown,
        on_new_audience: GuardAction::Approval,
    };

    #[test]
    fn off_by_default() {
        assert!(Guard::new(&GuardConfig::default()).is_none());
    }

    #[test]
    fn sliding_window_counts_and_forgets() {
        let g = Guard::new(&cfg()).unwrap();
        let t0 = 1_000; // bucket start (1000 % 10 == 0)
        for _ in 0..5 {
            assert!(g.check(&["a"], "aud", SLOW, t0).is_none());
        }
        let h = g.check(&["a"], "aud", SLOW, t0 + 3).unwrap();
        assert_eq!(h.trigger, Trigger::Rate);
        assert_eq!(h.action, GuardAction::SlowDown);
        // Next bucket, 0 s in: the previous 5 still weigh fully.
        assert!(g.check(&["a"], "aud", SLOW, t0 + 10).is_some());
        // 2 s in: 5 * 8/10 = 4, one more fits.
        assert!(g.check(&["a"], "aud", SLOW, t0 + 12).is_none());
        assert!(g.check(&["a"], "aud", SLOW, t0 + 12).is_some());
        // Two windows later everything is forgotten.
        for _ in 0..5 {
            assert!(g.check(&["a"], "aud", SLOW, t0 + 40).is_none());
        }
        // Another identity is not affected.
        assert!(g.check(&["b"], "aud", SLOW, t0 + 40).is_none());
    }

    #[test]
    fn retry_after_is_exactly_when_one_more_fits() {
        for w in [1u64, 7, 10, 60] {
            for limit in 1u64..6 {
                for prev in 0u64..8 {
                    for cur in 0u64..8 {
                        for e in 0..w {
                            if admits(prev, cur, e, w, limit) {
                                continue;
                            }
                            // Brute force over the future (nothing admitted meanwhile).
                            let mut t = 1;
                            loop {
                                let at = e + t;
                                let ok = if at < w {
                                    admits(prev, cur, at, w, limit)
                                } else if at < 2 * w {
                                    admits(cur, 0, at - w, w, limit)
                                } else {
                                    true
                                };
                                if ok {
                                    break;
                                }
                                t += 1;
                            }
                            assert_eq!(
                                retry_after(prev, cur, e, w, limit),
                                t,
                                "w={w} limit={limit} prev={prev} cur={cur} e={e}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn learned_baseline_alerts_after_warmup_and_does_not_learn_the_spike() {
        let c = GuardConfig {
            max_rate: 0,
            learned: Some(Learned {
                multiplier: 3,
                warmup: 3,
                floor: 4,
            }),
            ..cfg()
        };
        let g = Guard::new(&c).unwrap();
        // Warm-up: 4 windows of 2 exchanges each; no limit applies yet, so
        // a burst in the first window is admitted.
        for _ in 0..20 {
            assert!(g.check(&["a"], "aud", SLOW, 1_000).is_none());
        }
        for b in 1..4u64 {
            for _ in 0..2 {
                assert!(g.check(&["a"], "aud", SLOW, 1_000 + b * 10 + 9).is_none());
            }
        }
        // ewma after windows 20, 2, 2, 2: 20 -> 14.6 -> 10.8 -> 8.2; six idle
        // windows (0.7^6 ~ 0.12) bring it to ~1: limit max(floor 4, 3 * 1).
        let t = 1_000 + 100 + 9;
        let mut admitted = 0;
        while g.check(&["a"], "aud", SLOW, t).is_none() {
            admitted += 1;
            assert!(admitted < 100, "the learned limit never applied");
        }
        let h = g.check(&["a"], "aud", SLOW, t).unwrap();
        assert_eq!(h.trigger, Trigger::LearnedRate);
        assert!(admitted >= 4, "floor respected: {admitted}");
        assert!(admitted <= 8, "about 3x the quiet baseline: {admitted}");
        // The spiking window is not learned from: the next window's limit is
        // no higher than this one's.
        let mut again = 0;
        while g.check(&["a"], "aud", SLOW, t + 10).is_none() {
            again += 1;
            assert!(again < 100);
        }
        assert!(again <= admitted, "{again} > {admitted}");
    }

    #[test]
    fn new_audience_after_the_first_issuance() {
        let g = Guard::new(&cfg()).unwrap();
        assert!(g.check(&["a"], "one", SLOW, 1_000).is_none());
        g.issued(&["a"], "one", 1_000);
        assert!(g.check(&["a"], "one", SLOW, 1_001).is_none());
        let h = g.check(&["a"], "two", SLOW, 1_001).unwrap();
        assert_eq!(
            (h.trigger, h.action),
            (Trigger::NewAudience, GuardAction::Approval)
        );
        g.issued(&["a"], "two", 1_002);
        assert!(g.check(&["a"], "two", SLOW, 1_002).is_none());
        let allow = PolicyActions {
            on_new_audience: GuardAction::Allow,
            ..SLOW
        };
        assert!(g.check(&["a"], "three", allow, 1_003).is_none());
    }

    #[test]
    fn refusal_streak_trips_then_cools_down() {
        let c = GuardConfig {
            refusal_streak: 3,
            cooldown: 30,
            ..cfg()
        };
        let g = Guard::new(&c).unwrap();
        assert!(g.refused(&["a"], 1_000).is_empty());
        g.issued(&["a"], "x", 1_000); // an issuance resets the streak
        assert!(g.refused(&["a"], 1_001).is_empty());
        assert!(g.refused(&["a"], 1_001).is_empty());
        let hits = g.refused(&["a"], 1_002);
        assert_eq!(hits.len(), 1);
        let h = g.check(&["a"], "x", SLOW, 1_010).unwrap();
        assert_eq!(h.trigger, Trigger::RefusalStreak);
        assert_eq!(h.retry_after, 22);
        assert!(g.check(&["b"], "x", SLOW, 1_010).is_none());
        assert!(g.check(&["a"], "x", SLOW, 1_032).is_none());
    }

    /// A shared state that cannot answer (a store down or slow past its
    /// timeout).
    struct Down;

    #[async_trait::async_trait]
    impl SharedState for Down {
        async fn check(
            &self,
            _: &Settings,
            _: &str,
            _: &str,
            _: u64,
            _: Lease,
        ) -> Result<Step, StoreError> {
            Err(StoreError::Unavailable("down".into()))
        }
        async fn issued(&self, _: &Settings, _: &str, _: &str, _: u64) -> Result<(), StoreError> {
            Err(StoreError::Unavailable("down".into()))
        }
        async fn refused(&self, _: &Settings, _: &str, _: u64) -> Result<bool, StoreError> {
            Err(StoreError::Unavailable("down".into()))
        }
    }

    #[tokio::test]
    async fn a_shared_state_that_cannot_answer_fails_closed_with_no_local_fallback() {
        let c = GuardConfig {
            refusal_streak: 2,
            ..cfg()
        };
        let g = Guard::new(&c).unwrap().with_shared(Some(Arc::new(Down)));
        for _ in 0..10 {
            // Never "admitted": the caller refuses the exchange (503).
            assert!(g.decide(&["a"], "aud", SLOW, 1_000).await.is_err());
        }
        assert!(g.record_issued(&["a"], "aud", 1_000).await.is_err());
        assert!(g.record_refused(&["a"], 1_000).await.is_err());
        // Nothing was counted in this process instead.
        assert_eq!(g.tracked(), 0);
    }

    #[test]
    fn tracking_is_capped_and_idle_identities_go_first() {
        let c = GuardConfig {
            max_identities: 4,
            ..cfg()
        };
        let g = Guard::new(&c).unwrap();
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            g.check(&[*id], "x", SLOW, 1_000 + i as u64);
        }
        assert_eq!(g.tracked(), 4);
        // Full: the least recently seen ("a") is evicted.
        g.check(&["e"], "x", SLOW, 1_005);
        assert_eq!(g.tracked(), 4);
        // "a" starts afresh: it has its full rate again.
        for _ in 0..5 {
            assert!(g.check(&["a"], "x", SLOW, 1_006).is_none());
        }
        // Much later, every idle identity goes at once.
        g.check(&["f"], "x", SLOW, 2_000);
        assert_eq!(g.tracked(), 1);
        // A large table is sharded and still capped.
        let c = GuardConfig {
            max_identities: 2048,
            ..cfg()
        };
        let g = Guard::new(&c).unwrap();
        for i in 0..10_000 {
            g.check(&[format!("id-{i}").as_str()], "x", SLOW, 1_000);
        }
        assert!(g.tracked() <= 2048, "{}", g.tracked());
    }
}
