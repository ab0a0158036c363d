//! A circuit breaker for the Redis store (SECURITY.md §3 R3).
//!
//! A slow or unreachable Redis would otherwise make every request wait for
//! the full per-call timeout, so requests pile up. The breaker counts
//! consecutive *unreachable* outcomes (a timeout, a refused, dropped or
//! failed connection; never an answer, even an error answer): after
//! [`BreakerConfig::failures`] of them it opens, and calls fail at once
//! without touching Redis. After a cool-off it lets exactly one probe call
//! through (half-open): success closes it, failure reopens it for twice the
//! previous cool-off (capped at [`BreakerConfig::cool_off_max`]), plus up to
//! 25 % random jitter so that a fleet of brokers does not probe in step.
//!
//! The state machine takes its time from an injected clock, so it is tested
//! without sleeping. A probe that is dropped before it reports (its caller
//! was cancelled, for example by an outer timeout) counts as a failed probe,
//! so the half-open slot is never held forever.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Breaker settings (`[store] breaker_failures`, `breaker_cooloff`,
/// `breaker_cooloff_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive unreachable outcomes that open the breaker; 0 turns it off.
    pub failures: u32,
    /// First cool-off after opening.
    pub cool_off: Duration,
    /// Longest cool-off (after repeated failed probes).
    pub cool_off_max: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            cool_off: Duration::from_millis(500),
            cool_off_max: Duration::from_secs(5),
        }
    }
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls go through; `failures` consecutive unreachable outcomes so far.
    Closed {
        /// Consecutive unreachable outcomes.
        failures: u32,
    },
    /// Calls fail fast until `until`; then one probe goes through.
    Open {
        /// End of the cool-off.
        until: Instant,
        /// The cool-off this opening used (before jitter).
        backoff: Duration,
    },
    /// One probe is in flight; every other call fails fast.
    HalfOpen {
        /// The cool-off of the opening that led here.
        backoff: Duration,
    },
}

/// Where time comes from (a manual clock in tests).
pub type Now = Arc<dyn Fn() -> Instant + Send + Sync>;

struct Inner {
    state: State,
    rng: u64,
}

/// The breaker. Cheap to consult: one uncontended mutex, never held across
/// an await.
pub struct Breaker {
    cfg: BreakerConfig,
    now: Now,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("cfg", &self.cfg)
            .field("state", &self.state())
            .finish()
    }
}

/// Permission to make one call. Report its outcome with
/// [`Permit::answered`] or [`Permit::unreachable`]; a probe permit dropped
/// without a report counts as unreachable.
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Permit<'_> {
    /// Whether this call is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Redis answered (successfully or with an error reply).
    pub fn answered(mut self) {
        self.reported = true;
        self.breaker.on_answered(self.probe);
    }

    /// Redis could not be reached or did not answer in time.
    pub fn unreachable(mut self) {
        self.reported = true;
        self.breaker.on_unreachable(self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            self.breaker.on_unreachable(true);
        }
    }
}

/// A call refused because the breaker is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// About how long until a probe is allowed (zero while one is in flight).
    pub retry_in: Duration,
}

impl Breaker {
    /// A closed breaker on the system clock.
    pub fn new(cfg: BreakerConfig) -> Self {
        Self::with_clock(cfg, Arc::new(Instant::now))
    }

    /// A closed breaker on `now`.
    pub fn with_clock(cfg: BreakerConfig, now: Now) -> Self {
        // Seed the jitter from a random UUID: brokers must not probe in step.
        let seed = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
        Self {
            cfg,
            now,
            inner: Mutex::new(Inner {
                state: State::Closed { failures: 0 },
                rng: seed,
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> BreakerConfig {
        self.cfg
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the state invalid
        // (every update is one assignment): recover from poisoning.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Whether calls are being refused (open or half-open).
    pub fn is_open(&self) -> bool {
        !matches!(self.state(), State::Closed { .. })
    }

    /// Asks to make one call: a permit, or a refusal when the breaker is
    /// open (or half-open with its probe in flight).
    pub fn admit(&self) -> Result<Permit<'_>, Rejected> {
        if self.cfg.failures == 0 {
            return Ok(self.permit(false));
        }
        let now = (self.now)();
        let mut g = self.lock();
        match g.state {
            State::Closed { .. } => Ok(self.permit(false)),
            State::Open { until, backoff } if now >= until => {
                g.state = State::HalfOpen { backoff };
                Ok(self.permit(true))
            }
            State::Open { until, .. } => Err(Rejected {
                retry_in: until.saturating_duration_since(now),
            }),
            State::HalfOpen { .. } => Err(Rejected {
                retry_in: Duration::ZERO,
            }),
        }
    }

    fn permit(&self, probe: bool) -> Permit<'_> {
        Permit {
            breaker: self,
            probe,
            reported: false,
        }
    }

    fn on_answered(&self, probe: bool) {
        if self.cfg.failures == 0 {
            return;
        }
        let mut g = self.lock();
        match g.state {
            State::Closed { .. } => g.state = State::Closed { failures: 0 },
            State::HalfOpen { .. } if probe => {
                g.state = State::Closed { failures: 0 };
                tracing::info!("redis store: circuit breaker closed (probe answered)");
            }
            // A call admitted before the breaker opened: only the probe
            // decides while it is open.
            _ => {}
        }
    }

    fn on_unreachable(&self, probe: bool) {
        if self.cfg.failures == 0 {
            return;
        }
        let now = (self.now)();
        let mut g = self.lock();
        match g.state {
            State::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= self.cfg.failures {
                    let backoff = self.cfg.cool_off;
                    let until = now + Self::jittered(&mut g.rng, backoff);
                    g.state = State::Open { until, backoff };
                    tracing::warn!(
                        failures,
                        cool_off_ms = backoff.as_millis() as u64,
                        "redis store: circuit breaker opened; calls fail fast"
                    );
                } else {
                    g.state = State::Closed { failures };
                }
            }
            State::HalfOpen { backoff } if probe => {
                let backoff = backoff.saturating_mul(2).min(self.cfg.cool_off_max);
                let until = now + Self::jittered(&mut g.rng, backoff);
                g.state = State::Open { until, backoff };
                tracing::warn!(
                    cool_off_ms = backoff.as_millis() as u64,
                    "redis store: circuit breaker probe failed; still open"
                );
            }
            _ => {}
        }
    }

    /// `d` plus 0–25 % (xorshift64; jitter needs no cryptographic quality).
    fn jittered(rng: &mut u64, d: Duration) -> Duration {
        let mut x = *rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *rng = x;
        let quarter = d / 4;
        let nanos = u64::try_from(quarter.as_nanos()).unwrap_or(u64::MAX);
        let extra = if nanos == 0 { 0 } else { x % (nanos + 1) };
        d + Duration::from_nanos(extra)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A clock the test moves by hand.
    struct Manual(Mutex<Instant>);

    impl Manual {
        fn new() -> Arc<Self> {
            Arc::new(Self(Mutex::new(Instant::now())))
        }
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    fn breaker(clock: &Arc<Manual>, failures: u32) -> Breaker {
        let c = clock.clone();
        Breaker::with_clock(
            BreakerConfig {
                failures,
                cool_off: Duration::from_millis(500),
                cool_off_max: Duration::from_secs(5),
            },
            Arc::new(move || c.now()),
        )
    }

    fn fail(b: &Breaker) {
        b.admit().unwrap().unreachable();
    }

    #[test]
    fn opens_after_k_consecutive_unreachable_outcomes_only() {
        let clock = Manual::new();
        let b = breaker(&clock, 5);
        for _ in 0..4 {
            fail(&b);
        }
        assert_eq!(b.state(), State::Closed { failures: 4 });
        // an answer (even an error answer) resets the count
        b.admit().unwrap().answered();
        assert_eq!(b.state(), State::Closed { failures: 0 });
        for _ in 0..4 {
            fail(&b);
        }
        assert!(!b.is_open());
        fail(&b);
        assert!(b.is_open());
        let State::Open { until, backoff } = b.state() else {
            panic!("not open: {:?}", b.state());
        };
        assert_eq!(backoff, Duration::from_millis(500));
        let wait = until - clock.now();
        assert!(
            wait >= Duration::from_millis(500) && wait <= Duration::from_millis(625),
            "{wait:?}"
        );
    }

    #[test]
    fn open_fails_fast_then_exactly_one_probe() {
        let clock = Manual::new();
        let b = breaker(&clock, 2);
        fail(&b);
        fail(&b);
        let r = b.admit().err().expect("open: refused");
        assert!(r.retry_in >= Duration::from_millis(500));
        clock.advance(Duration::from_millis(300));
        assert!(b.admit().is_err(), "still cooling off");
        clock.advance(Duration::from_millis(400));
        let probe = b.admit().expect("the probe goes through");
        assert!(probe.is_probe());
        assert!(matches!(b.state(), State::HalfOpen { .. }));
        // every other call fails fast while the probe is in flight
        for _ in 0..10 {
            assert_eq!(
                b.admit().err(),
                Some(Rejected {
                    retry_in: Duration::ZERO
                })
            );
        }
        probe.answered();
        assert_eq!(b.state(), State::Closed { failures: 0 });
        assert!(!b.admit().unwrap().is_probe());
    }

    #[test]
    fn failed_probes_back_off_exponentially_with_jitter_up_to_the_cap() {
        let clock = Manual::new();
        let b = breaker(&clock, 1);
        fail(&b);
        let mut expected = Duration::from_millis(500);
        for _ in 0..8 {
            let State::Open { until, backoff } = b.state() else {
                panic!("not open");
            };
            assert_eq!(backoff, expected);
            let wait = until - clock.now();
            assert!(wait >= backoff && wait <= backoff + backoff / 4, "{wait:?}");
            clock.advance(wait);
            let p = b.admit().unwrap();
            assert!(p.is_probe());
            p.unreachable();
            expected = (expected * 2).min(Duration::from_secs(5));
        }
        assert_eq!(
            b.state(),
            State::Open {
                until: match b.state() {
                    State::Open { until, .. } => until,
                    _ => unreachable!(),
                },
                backoff: Duration::from_secs(5)
            }
        );
        // a successful probe resets the backoff too
        clock.advance(Duration::from_secs(7));
        b.admit().unwrap().answered();
        fail(&b);
        assert!(matches!(
            b.state(),
            State::Open { backoff, .. } if backoff == Duration::from_millis(500)
        ));
    }

    #[test]
    fn a_dropped_probe_counts_as_failed_and_frees_the_slot() {
        let clock = Manual::new();
        let b = breaker(&clock, 1);
        fail(&b);
        clock.advance(Duration::from_secs(1));
        {
            let p = b.admit().unwrap();
            assert!(p.is_probe());
            // cancelled: dropped without a report
        }
        assert!(matches!(
            b.state(),
            State::Open { backoff, .. } if backoff == Duration::from_secs(1)
        ));
        clock.advance(Duration::from_secs(2));
        assert!(b.admit().unwrap().is_probe(), "a new probe is allowed");
    }

    #[test]
    fn late_outcomes_of_calls_admitted_before_opening_are_ignored() {
        let clock = Manual::new();
        let b = breaker(&clock, 1);
        let early_ok = b.admit().unwrap();
        let early_fail = b.admit().unwrap();
        fail(&b);
        assert!(b.is_open());
        early_ok.answered();
        assert!(b.is_open(), "only the probe closes an open breaker");
        early_fail.unreachable();
        assert!(matches!(
            b.state(),
            State::Open { backoff, .. } if backoff == Duration::from_millis(500)
        ));
        // a non-probe permit dropped unreported changes nothing
        let b2 = breaker(&clock, 1);
        drop(b2.admit().unwrap());
        assert_eq!(b2.state(), State::Closed { failures: 0 });
    }

    #[test]
    fn zero_failures_turns_the_breaker_off() {
        let clock = Manual::new();
        let b = breaker(&clock, 0);
        for _ in 0..100 {
            fail(&b);
        }
        assert!(!b.is_open());
        assert!(b.admit().is_ok());
    }
}
