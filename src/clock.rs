//! Time, injected: every `exp`, `iat` and window reads a [`Clock`], so tests
//! can hold time still or move it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current Unix time in seconds.
///
/// ```
/// use tessera::clock::{Clock, SystemClock};
/// assert!(SystemClock.now() > 1_700_000_000);
/// ```
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Seconds since the Unix epoch.
    fn now(&self) -> u64;
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
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to (for tests).
///
/// ```
/// use tessera::clock::{Clock, ManualClock};
/// let c = ManualClock::new(1000);
/// c.advance(5);
/// assert_eq!(c.now(), 1005);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock standing at `now`.
    ///
    /// ```
    /// use tessera::clock::{Clock, ManualClock};
    /// assert_eq!(ManualClock::new(42).now(), 42);
    /// ```
    pub fn new(now: u64) -> Self {
        Self(AtomicU64::new(now))
    }
    /// Moves the clock forward.
    ///
    /// ```
    /// use tessera::clock::{Clock, ManualClock};
    /// let c = ManualClock::new(0);
    /// c.advance(3);
    /// assert_eq!(c.now(), 3);
    /// ```
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
    /// Sets the clock.
    ///
    /// ```
    /// use tessera::clock::{Clock, ManualClock};
    /// let c = ManualClock::new(0);
    /// c.set(9);
    /// assert_eq!(c.now(), 9);
    /// ```
    pub fn set(&self, now: u64) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
