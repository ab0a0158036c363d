//! The anomaly guard's state as the store keeps it: the settings one call
//! applies, the step it takes, and [`SharedState`], which the Redis store
//! implements so every replica shares one budget per identity. The rule
//! (which triggers apply, what a hit answers) is `exchange::guard`'s.

use async_trait::async_trait;

use super::StoreError;

/// The learned baseline's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Learned {
    /// Alert above this many times the learned average.
    pub multiplier: u32,
    /// Completed windows observed before the baseline is used.
    pub warmup: u32,
    /// Never alert at or below this many exchanges per window.
    pub floor: u32,
}

/// The rule's settings as one call applies them (derived from the config
/// and the granting policy's actions by `exchange::guard::Guard::settings`,
/// the one place that knows which trigger is on).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Window length, seconds.
    pub window: u64,
    /// Seconds the state is kept after this call (its TTL in the store).
    pub keep: u64,
    /// The configured rate limit to check (0: not checked).
    pub max_rate: u64,
    /// The learned limit to check (`None`: not checked).
    pub learned: Option<Learned>,
    /// Whether a new audience is a hit.
    pub new_audience: bool,
    /// Whether a tripped streak holds the identity (`slow_down` or
    /// `approval`; not `revoke`, which blocks instead).
    pub streak_holds: bool,
    /// Refusals that trip the streak.
    pub refusal_streak: u32,
    /// How long a tripped streak holds, seconds.
    pub cooldown: u64,
    /// Most audiences remembered per identity.
    pub max_audiences: usize,
}

/// What one identity's state says about one request (before the action is
/// chosen). The state is updated as the rule says: counted when admitted,
/// the window marked as spiked on a learned-rate hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing fired; the exchange was counted.
    Admitted,
    /// As [`Step::Admitted`], and an issuance for this audience now would
    /// change nothing (the audience is known, no streak runs): the shared
    /// state's record of it may be skipped (one round trip, not two).
    AdmittedSettled {
        /// Extra exchanges leased with it: counted in the shared state now,
        /// so the caller may admit that many more of this identity (same
        /// bucket, same settings) without asking (see [`Lease`]).
        lease: u64,
    },
    /// A tripped refusal streak holds for `left` more seconds.
    Streak {
        /// Seconds left.
        left: u64,
    },
    /// The configured rate: the window's buckets and the limit.
    Rate {
        /// Previous bucket's count.
        prev: u64,
        /// Current bucket's count.
        cur: u64,
        /// The limit.
        limit: u64,
    },
    /// The learned rate: the window's buckets and the learned limit.
    LearnedRate {
        /// Previous bucket's count.
        prev: u64,
        /// Current bucket's count.
        cur: u64,
        /// The learned limit.
        limit: u64,
    },
    /// An audience the identity was never issued a token for.
    NewAudience,
}

/// A check's lease terms (all 0: none; the check is exact).
///
/// A lease is exchanges counted in advance: the check that admits one
/// exchange of a settled identity may also count up to `want` more, as
/// long as the identity's sliding count then stays within half of every
/// limit in force; the caller admits those locally (same bucket) and gives
/// back the ones it did not use with a later call (`back`, counted in
/// bucket `back_bucket`). Nothing is ever admitted uncounted: a lease only
/// moves the count earlier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lease {
    /// Extra exchanges wanted.
    pub want: u64,
    /// Leased exchanges not used, given back.
    pub back: u64,
    /// The bucket (`now / window`) they were counted in.
    pub back_bucket: u64,
}

/// The guard's state kept outside the process (the Redis store), shared by
/// every replica. Each call is one atomic step on one identity's state;
/// an error means the state could not be read or written (the caller fails
/// closed).
#[async_trait]
pub trait SharedState: Send + Sync {
    /// Applies the check to `identity`'s state (counting it when admitted),
    /// with `lease`'s terms.
    async fn check(
        &self,
        s: &Settings,
        identity: &str,
        audience: &str,
        now: u64,
        lease: Lease,
    ) -> Result<Step, StoreError>;
    /// A token was issued: the streak ends, the audience is known.
    async fn issued(
        &self,
        s: &Settings,
        identity: &str,
        audience: &str,
        now: u64,
    ) -> Result<(), StoreError>;
    /// A refusal after authentication; `true` when it completes a streak.
    async fn refused(&self, s: &Settings, identity: &str, now: u64) -> Result<bool, StoreError>;
}
