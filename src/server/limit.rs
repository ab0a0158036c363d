//! The pre-authentication rate limit: a token bucket per peer IP address,
//! charged for every new connection and every request before anything is
//! parsed or verified. It keys on the network peer only — never on a claim
//! from an unverified token, which an attacker could forge to drain a
//! victim's budget (SECURITY.md L115). Per-identity limits on verified
//! identities are the anomaly guard's job.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Independent shards, so replicas of one hot peer do not serialise the
/// whole map.
const SHARDS: usize = 16;
/// Most peers tracked per shard; beyond it idle peers are forgotten first,
/// and a peer that still finds no room is not limited (the connection cap
/// still applies).
const PEERS_PER_SHARD: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets per peer IP.
///
/// ```
/// use std::net::IpAddr;
/// let l = tessera::server::limit::PeerLimiter::new(10, 2).unwrap();
/// let ip: IpAddr = "192.0.2.7".parse().unwrap();
/// assert!(l.check(ip).is_ok());
/// assert!(l.check(ip).is_ok());
/// assert!(l.check(ip).is_err()); // burst of 2 spent
/// assert!(l.check("192.0.2.8".parse().unwrap()).is_ok()); // others unaffected
/// assert!(tessera::server::limit::PeerLimiter::new(0, 10).is_none()); // 0: off
/// ```
#[derive(Debug)]
pub struct PeerLimiter {
    rate: f64,
    burst: f64,
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
}

impl PeerLimiter {
    /// `rate` events per second with bursts up to `burst`; `None` when
    /// `rate` is 0 (the limit is off).
    #[must_use]
    pub fn new(rate: u32, burst: u32) -> Option<PeerLimiter> {
        (rate > 0).then(|| PeerLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    /// Charges one event to `ip`.
    ///
    /// # Errors
    /// How long until the peer has a token again.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_at(ip, Instant::now())
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Bucket>> {
        use std::hash::BuildHasher;
        // A fixed hasher: the shard choice need not be secret (the maps
        // themselves use randomised hashing).
        let h =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one(ip);
        let i = usize::try_from(h % SHARDS as u64).unwrap_or(0);
        &self.shards[i]
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut g = self
            .shard(&ip)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !g.contains_key(&ip) && g.len() >= PEERS_PER_SHARD {
            // Forget peers whose bucket has refilled (idle ones).
            let (rate, burst) = (self.rate, self.burst);
            g.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
            });
            if g.len() >= PEERS_PER_SHARD {
                return Ok(());
            }
        }
        let b = g.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_the_rate_and_caps_at_the_burst() {
        let l = PeerLimiter::new(10, 5).unwrap();
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.check_at(ip, t0).is_ok());
        }
        let wait = l.check_at(ip, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        // 0.3 s later: 3 tokens
        let t1 = t0 + Duration::from_millis(300);
        for _ in 0..3 {
            assert!(l.check_at(ip, t1).is_ok());
        }
        assert!(l.check_at(ip, t1).is_err());
        // an hour later: the burst, not more
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..5 {
            assert!(l.check_at(ip, t2).is_ok());
        }
        assert!(l.check_at(ip, t2).is_err());
    }

    #[test]
    fn memory_is_bounded_and_idle_peers_are_forgotten() {
        let l = PeerLimiter::new(1, 1).unwrap();
        let t0 = Instant::now();
        for i in 0..(SHARDS * PEERS_PER_SHARD * 2) as u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = l.check_at(ip, t0);
        }
        let held: usize = l.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS * PEERS_PER_SHARD, "{held}");
        // later, idle peers make room for new ones, which are limited again
        let t1 = t0 + Duration::from_secs(5);
        let fresh: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(l.check_at(fresh, t1).is_ok());
        assert!(l.check_at(fresh, t1).is_err());
    }
}
