//! Time, injected: every `exp`, `iat` and window reads a [`Clock`], so tests
//! can hold time still or move it.
//!
//! A clock has two faces: the wall clock ([`Clock::now`], Unix seconds, for
//! everything that ends up in a token or an audit record) and a monotonic
//! clock ([`Clock::monotonic`], for elapsed time: how stale a key set is,
//! and whether the wall clock stepped; see [`ClockTrust`]).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of the current Unix time in seconds, and of monotonic time.
///
/// ```
/// use tessera::clock::{Clock, SystemClock};
/// assert!(SystemClock.now() > 1_700_000_000);
/// let a = SystemClock.monotonic();
/// assert!(SystemClock.monotonic() >= a);
/// ```
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Seconds since the Unix epoch.
    fn now(&self) -> u64;

    /// The wall clock with sub-second precision (default: [`Self::now`]).
    fn wall(&self) -> Duration {
        Duration::from_secs(self.now())
    }

    /// Monotonic time since an arbitrary fixed origin: never goes back and
    /// does not follow steps of the wall clock. The default is the process'
    /// [`Instant`] since its first use.
    fn monotonic(&self) -> Duration {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }

    /// `(wall, monotonic)` read together (a test clock reads both under
    /// one lock, so a concurrent `advance` is never seen half done).
    fn both(&self) -> (Duration, Duration) {
        (self.wall(), self.monotonic())
    }
}

/// The system clock.
///
/// ```
/// use tessera::clock::{Clock, SystemClock};
/// let now = SystemClock.now();
/// # let _ = now;
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        self.wall().as_secs()
    }
    fn wall(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }
}

/// A clock that moves only when told to (for tests). [`Self::advance`] is
/// time passing (wall and monotonic move together); [`Self::step`] and
/// [`Self::set`] move the wall clock only, like an operator or a bad NTP
/// server stepping it.
///
/// ```
/// use tessera::clock::{Clock, ManualClock};
/// let c = ManualClock::new(1000);
/// c.advance(5);
/// assert_eq!(c.now(), 1005);
/// c.step(-300);
/// assert_eq!(c.now(), 705);
/// assert_eq!(c.monotonic().as_secs(), 5);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    /// (wall seconds, monotonic seconds), moved together under one lock so
    /// that no reader sees one moved without the other.
    state: Mutex<(u64, u64)>,
}

impl ManualClock {
    /// A clock standing at `now`.
    ///
    /// ```
    /// use tessera::clock::{Clock, ManualClock};
    /// assert_eq!(ManualClock::new(42).now(), 42);
    /// ```
    pub fn new(now: u64) -> Self {
        Self {
            state: Mutex::new((now, 0)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut (u64, u64)) -> T) -> T {
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }
    /// Lets `secs` seconds pass (wall and monotonic).
    ///
    /// ```
    /// use tessera::clock::{Clock, ManualClock};
    /// let c = ManualClock::new(0);
    /// c.advance(3);
    /// assert_eq!(c.now(), 3);
    /// assert_eq!(c.monotonic().as_secs(), 3);
    /// ```
    pub fn advance(&self, secs: u64) {
        self.with(|(w, m)| {
            *w = w.saturating_add(secs);
            *m = m.saturating_add(secs);
        });
    }
    /// Sets the wall clock (monotonic time does not move: a step).
    ///
    /// ```
    /// use tessera::clock::{Clock, ManualClock};
    /// let c = ManualClock::new(0);
    /// c.set(9);
    /// assert_eq!(c.now(), 9);
    /// assert_eq!(c.monotonic().as_secs(), 0);
    /// ```
    pub fn set(&self, now: u64) {
        self.with(|(w, _)| *w = now);
    }
    /// Steps the wall clock by `secs` (either way) without time passing.
    ///
    /// ```
    /// use tessera::clock::{Clock, ManualClock};
    /// let c = ManualClock::new(100);
    /// c.step(5);
    /// c.step(-10);
    /// assert_eq!(c.now(), 95);
    /// ```
    pub fn step(&self, secs: i64) {
        self.with(|(w, _)| {
            *w = if secs >= 0 {
                w.saturating_add(secs.unsigned_abs())
            } else {
                w.saturating_sub(secs.unsigned_abs())
            };
        });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.with(|(w, _)| *w)
    }
    fn monotonic(&self) -> Duration {
        Duration::from_secs(self.with(|(_, m)| *m))
    }
    fn both(&self) -> (Duration, Duration) {
        self.with(|(w, m)| (Duration::from_secs(*w), Duration::from_secs(*m)))
    }
}

/// How often [`ClockTrust::spawn_monitor`] samples the clocks.
///
/// ```
/// assert_eq!(tessera::clock::CLOCK_SAMPLE_INTERVAL.as_secs(), 1);
/// ```
pub const CLOCK_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Whether the wall clock can be trusted to mint tokens.
///
/// Every sample compares how far the wall clock moved with how far the
/// monotonic clock moved since the previous sample. When they differ by
/// more than `max_step` (the wall clock was stepped, forward or back), the
/// broker stops minting for `quarantine` of monotonic time; each further
/// step restarts the quarantine. Recovery is automatic.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tessera::clock::{Clock, ClockTrust, ManualClock};
/// let clock = Arc::new(ManualClock::new(1_000_000));
/// let trust = ClockTrust::new(clock.clone(), Duration::from_secs(5), Duration::from_secs(60));
/// trust.sample();
/// clock.advance(1);
/// assert!(trust.sample().is_ok());
/// clock.step(300);
/// assert!(trust.sample().is_err());
/// clock.advance(61);
/// assert!(trust.sample().is_ok());
/// ```
#[derive(Debug)]
pub struct ClockTrust {
    clock: std::sync::Arc<dyn Clock>,
    max_step: Duration,
    quarantine: Duration,
    /// Previous sample: (wall, monotonic).
    last: Mutex<Option<(Duration, Duration)>>,
    /// Monotonic milliseconds + 1 at which the quarantine ends (0 = none).
    until_ms: AtomicU64,
    /// The last step seen, in milliseconds (signed), for the log.
    last_step_ms: AtomicI64,
    started: AtomicBool,
}

/// Why the clock is not trusted right now.
///
/// ```
/// let e = tessera::clock::ClockUntrusted { step_ms: -300_000, remaining: std::time::Duration::from_secs(10) };
/// assert!(e.to_string().contains("-300000 ms"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("wall clock stepped by {step_ms} ms relative to monotonic time; minting resumes in {remaining:?}")]
pub struct ClockUntrusted {
    /// The step, in milliseconds (negative: backwards).
    pub step_ms: i64,
    /// Quarantine left.
    pub remaining: Duration,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ClockTrust {
    /// A monitor of `clock`: steps above `max_step` quarantine minting for
    /// `quarantine`.
    pub fn new(
        clock: std::sync::Arc<dyn Clock>,
        max_step: Duration,
        quarantine: Duration,
    ) -> ClockTrust {
        ClockTrust {
            clock,
            max_step,
            quarantine,
            last: Mutex::new(None),
            until_ms: AtomicU64::new(0),
            last_step_ms: AtomicI64::new(0),
            started: AtomicBool::new(false),
        }
    }

    /// Takes one sample and reports the state after it.
    ///
    /// # Errors
    /// [`ClockUntrusted`] while a quarantine runs.
    pub fn sample(&self) -> Result<(), ClockUntrusted> {
        let (wall, mono) = self.clock.both();
        let prev = {
            let mut g = match self.last.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            g.replace((wall, mono))
        };
        if let Some((pw, pm)) = prev {
            let dw = i128::try_from(wall.as_millis()).unwrap_or(i128::MAX)
                - i128::try_from(pw.as_millis()).unwrap_or(i128::MAX);
            let dm = i128::try_from(mono.saturating_sub(pm).as_millis()).unwrap_or(i128::MAX);
            let step = dw - dm;
            let limit = i128::try_from(self.max_step.as_millis()).unwrap_or(i128::MAX);
            if step.abs() > limit {
                let step_ms =
                    i64::try_from(step).unwrap_or(if step < 0 { i64::MIN } else { i64::MAX });
                self.last_step_ms.store(step_ms, Ordering::Release);
                let until = millis(mono.saturating_add(self.quarantine)).saturating_add(1);
                self.until_ms.store(until, Ordering::Release);
                tracing::error!(
                    step_ms,
                    max_step_ms = millis(self.max_step),
                    quarantine_s = self.quarantine.as_secs(),
                    "wall clock stepped relative to monotonic time: minting stops for the quarantine"
                );
            }
        }
        self.check()
    }

    /// The current state, without sampling.
    ///
    /// # Errors
    /// [`ClockUntrusted`] while a quarantine runs.
    pub fn check(&self) -> Result<(), ClockUntrusted> {
        let until = self.until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Ok(());
        }
        let now = millis(self.clock.monotonic());
        let end = until.saturating_sub(1);
        if now >= end {
            return Ok(());
        }
        Err(ClockUntrusted {
            step_ms: self.last_step_ms.load(Ordering::Acquire),
            remaining: Duration::from_millis(end.saturating_sub(now)),
        })
    }

    /// Starts sampling every [`CLOCK_SAMPLE_INTERVAL`] (once; later calls do
    /// nothing). The task holds a weak reference and ends with the monitor.
    pub fn spawn_monitor(self: &std::sync::Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.sample();
        let weak: Weak<Self> = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CLOCK_SAMPLE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(t) = weak.upgrade() else { break };
                let was = t.check().is_ok();
                let now = t.sample().is_ok();
                if now && !was {
                    tracing::warn!("clock quarantine over: minting resumes");
                }
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn trust() -> (Arc<ManualClock>, ClockTrust) {
        let c = Arc::new(ManualClock::new(1_000_000));
        let t = ClockTrust::new(c.clone(), Duration::from_secs(5), Duration::from_secs(60));
        (c, t)
    }

    #[test]
    fn small_steps_and_time_passing_are_trusted() {
        let (c, t) = trust();
        t.sample().unwrap();
        for _ in 0..100 {
            c.advance(1);
            t.sample().unwrap();
        }
        c.step(5);
        t.sample().unwrap();
        c.step(-5);
        t.sample().unwrap();
        c.advance(3600);
        t.sample().unwrap();
    }

    #[test]
    fn steps_either_way_quarantine_and_restart_it() {
        for step in [300i64, -300, 6, -6] {
            let (c, t) = trust();
            t.sample().unwrap();
            c.step(step);
            let e = t.sample().unwrap_err();
            assert_eq!(e.step_ms, step * 1000);
            c.advance(30);
            assert!(t.sample().is_err());
            // A second step restarts the quarantine.
            c.step(step);
            assert!(t.sample().is_err());
            c.advance(59);
            assert!(t.sample().is_err());
            c.advance(1);
            t.sample().unwrap();
            assert!(t.check().is_ok());
        }
    }
}
