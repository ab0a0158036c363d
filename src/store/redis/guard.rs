//! The anomaly guard's fleet-wide state in Redis (issue 17 item 6): the
//! [`SharedState`] of [`RedisStore`]. Every call is one atomic script
//! (`guard.lua`) on one identity's two keys, which share the hash tag
//! `{gd:H(identity)}` (one cluster slot per identity, spread over the
//! masters), run through the store's timeout, breaker and data epoch like
//! every other call: a store that cannot answer is an error, and the
//! exchange fails closed.
//!
//! | key | type | TTL | bound |
//! |-----|------|-----|-------|
//! | `P:{gd:H(identity)}:s` | hash `W` window, `b` bucket, `c`/`p` current and previous counts, `e` learned average, `n` windows learned, `k` spiked, `l` last seen, `s` streak, `t` streak holds until, `q` audiences added | [`Settings::keep`] from the last call (refreshed by each): at least [`SHARED_KEEP_MIN`](crate::exchange::guard::SHARED_KEEP_MIN), 66 windows, the cooldown | 11 fields |
//! | `P:{gd:H(identity)}:a` | sorted set: `H(audience)` (first 32 hex digits) → insertion order | the same, refreshed with the hash | `max_audiences` (oldest dropped first) |

use std::sync::LazyLock;

use ::redis::Script;
use async_trait::async_trait;

use super::{h, Fail, RedisStore};
use crate::store::guard_state::{Lease, Settings, SharedState, Step};
use crate::store::StoreError;

/// The one script of the guard (KEYS: state, audiences).
static GUARD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("guard.lua")));

/// The script's operations: (metric label, script op).
const CHECK: (&str, &str) = ("guard_check", "c");
const ISSUED: (&str, &str) = ("guard_issued", "i");
const REFUSED: (&str, &str) = ("guard_refused", "r");

/// Hex digits of `H(audience)` kept per known audience (128 bits).
const AUDIENCE_DIGEST_HEX: usize = 32;

impl RedisStore {
    /// The hash tag of an identity's guard keys (ends with `:`).
    fn key_guard_prefix(&self, identity: &str) -> String {
        format!("{}:{{gd:{}}}:", self.prefix, h(identity.as_bytes()))
    }

    /// An identity's guard state (hash).
    pub(crate) fn key_guard_state(&self, identity: &str) -> String {
        self.key_guard_prefix(identity) + "s"
    }

    /// An identity's known audiences (sorted set).
    pub(crate) fn key_guard_audiences(&self, identity: &str) -> String {
        self.key_guard_prefix(identity) + "a"
    }

    /// One step of the guard script on `identity`'s state.
    async fn guard_step(
        &self,
        (op, code): (&'static str, &'static str),
        s: &Settings,
        identity: &str,
        audience: &str,
        now: u64,
        lease: Lease,
    ) -> Result<Vec<u64>, StoreError> {
        let aud = h(audience.as_bytes());
        let aud = aud.get(..AUDIENCE_DIGEST_HEX).unwrap_or(&aud);
        let (mult, warmup, floor) = s
            .learned
            .map_or((0, 0, 0), |l| (l.multiplier, l.warmup, l.floor));
        let flag = |b: bool| if b { "1" } else { "0" };
        let (state, audiences) = (
            self.key_guard_state(identity),
            self.key_guard_audiences(identity),
        );
        let mut con = self.conn.manager()?;
        self.run(op, async {
            let v: ::redis::Value = GUARD_SCRIPT
                .key(&state)
                .key(&audiences)
                .arg(code)
                .arg(now)
                .arg(s.window.max(1))
                .arg(s.keep.max(1))
                .arg(s.max_rate)
                .arg(mult)
                .arg(warmup)
                .arg(floor)
                .arg(flag(s.new_audience))
                .arg(aud)
                .arg(s.max_audiences.max(1))
                .arg(s.refusal_streak.max(1))
                .arg(flag(s.streak_holds))
                .arg(s.cooldown)
                .arg(lease.want)
                .arg(lease.back)
                .arg(lease.back_bucket)
                .invoke_async(&mut con)
                .await?;
            match v {
                ::redis::Value::Int(n) => Ok(vec![u64::try_from(n).unwrap_or(0)]),
                ::redis::Value::Array(items) => items
                    .into_iter()
                    .map(|x| match x {
                        ::redis::Value::Int(n) => {
                            u64::try_from(n).map_err(|_| super::protocol("negative guard counter"))
                        }
                        _ => Err(super::protocol("unexpected guard reply")),
                    })
                    .collect::<Result<Vec<u64>, Fail>>(),
                _ => Err(super::protocol("unexpected guard reply")),
            }
        })
        .await
    }
}

#[async_trait]
impl SharedState for RedisStore {
    async fn check(
        &self,
        s: &Settings,
        identity: &str,
        audience: &str,
        now: u64,
        lease: Lease,
    ) -> Result<Step, StoreError> {
        let r = self
            .guard_step(CHECK, s, identity, audience, now, lease)
            .await?;
        let at = |i: usize| r.get(i).copied().unwrap_or(0);
        Ok(match at(0) {
            0 => Step::Admitted,
            1 => Step::Streak { left: at(1) },
            2 => Step::Rate {
                prev: at(1),
                cur: at(2),
                limit: at(3),
            },
            3 => Step::LearnedRate {
                prev: at(1),
                cur: at(2),
                limit: at(3),
            },
            4 => Step::NewAudience,
            5 => Step::AdmittedSettled { lease: at(1) },
            _ => return Err(StoreError::Protocol("unknown guard step".into())),
        })
    }

    async fn issued(
        &self,
        s: &Settings,
        identity: &str,
        audience: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        self.guard_step(ISSUED, s, identity, audience, now, Lease::default())
            .await
            .map(|_| ())
    }

    async fn refused(&self, s: &Settings, identity: &str, now: u64) -> Result<bool, StoreError> {
        let r = self.guard_step(REFUSED, s, identity, "", now, Lease::default()).await?;
        Ok(r.first().copied() == Some(1))
    }
}

#[cfg(test)]
mod tests {
    //! The Redis engine of the guard against the in-process one: the same
    //! random requests through both give the same decisions, hit for hit
    //! (`retry_after` included); the keys have TTLs and share one slot per
    //! identity; a cluster spreads identities and enforces each budget.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use super::super::{cluster_slot, RedisConfig, RedisStore};
    use crate::exchange::guard::{
        Guard, GuardAction as A, GuardConfig, Learned, PolicyActions, SharedState,
    };
    use crate::require_redis;

    fn store(url: &str, prefix: &str) -> Arc<RedisStore> {
        Arc::new(
            RedisStore::new(&RedisConfig {
                url: url.to_string(),
                prefix: prefix.into(),
                timeout: Duration::from_secs(2),
                ca_pem: None,
            })
            .unwrap(),
        )
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    fn configs() -> Vec<GuardConfig> {
        let base = GuardConfig {
            enabled: true,
            window: 10,
            max_rate: 6,
            ..GuardConfig::default()
        };
        vec![
            base.clone(),
            GuardConfig {
                max_rate: 0,
                learned: Some(Learned {
                    multiplier: 2,
                    warmup: 2,
                    floor: 2,
                }),
                refusal_streak: 3,
                cooldown: 15,
                max_audiences: 2,
                ..base.clone()
            },
            GuardConfig {
                window: 7,
                max_rate: 9,
                learned: Some(Learned {
                    multiplier: 3,
                    warmup: 0,
                    floor: 1,
                }),
                refusal_streak: 2,
                on_refusal_streak: A::Revoke,
                ..base
            },
        ]
    }

    const ACTIONS: [PolicyActions; 3] = [
        PolicyActions {
            on_rate: A::SlowDown,
            on_new_audience: A::Approval,
        },
        PolicyActions {
            on_rate: A::Allow,
            on_new_audience: A::Approval,
        },
        PolicyActions {
            on_rate: A::Revoke,
            on_new_audience: A::Allow,
        },
    ];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_engine_decides_exactly_as_the_in_process_one() {
        let srv = require_redis!();
        for (n, cfg) in configs().into_iter().enumerate() {
            let st = store(&srv.url(), &format!("diff{n}"));
            let local = Guard::new(&cfg).unwrap();
            // Exact (no leases): the script against the rule, call for call.
            let shared = Guard::new(&cfg)
                .unwrap()
                .with_shared(Some(st.clone() as Arc<dyn SharedState>))
                .with_lease_max(0);
            assert!(shared.is_shared() && !local.is_shared());
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
            let mut now = 1_000_000u64;
            let (mut hits, mut admitted, mut tripped) = (0, 0, 0);
            for step in 0..1_500 {
                now += match rng.below(20) {
                    0 => rng.below(60),
                    1..=6 => rng.below(3),
                    _ => 0,
                };
                let ids: &[&str] = match rng.below(4) {
                    0 => &["b"],
                    1 => &["a", "c"],
                    _ => &["a"],
                };
                let aud = ["x", "y", "z"][rng.below(3) as usize];
                let what = format!("config {n}, step {step}, t {now}, {ids:?} {aud}");
                match rng.below(10) {
                    0..=5 => {
                        let act = ACTIONS[rng.below(3) as usize];
                        let l = local.decide(ids, aud, act, now).await.unwrap();
                        let r = shared.decide(ids, aud, act, now).await.unwrap();
                        assert_eq!(l, r, "check: {what}");
                        if l.is_some() {
                            hits += 1;
                        } else {
                            admitted += 1;
                        }
                    }
                    6..=7 => {
                        local.record_issued(ids, aud, now).await.unwrap();
                        shared.record_issued(ids, aud, now).await.unwrap();
                    }
                    _ => {
                        let l = local.record_refused(ids, now).await.unwrap();
                        let r = shared.record_refused(ids, now).await.unwrap();
                        assert_eq!(l, r, "refused: {what}");
                        tripped += l.len();
                    }
                }
            }
            // The sequences exercised every outcome, not one of them.
            assert!(
                hits > 50 && admitted > 50,
                "config {n}: {hits} hits, {admitted} admitted"
            );
            if cfg.refusal_streak > 0 {
                assert!(tripped > 0, "config {n}: no streak tripped");
            }
        }
        // Every key the guard wrote expires, within the keep time.
        let keys = match crate::testkit_redis::command(srv.port(), &["KEYS", "diff*"]).unwrap() {
            ::redis::Value::Array(k) => k,
            v => panic!("{v:?}"),
        };
        assert!(keys.len() >= 6, "{keys:?}");
        for k in keys {
            let ::redis::Value::BulkString(k) = k else {
                panic!()
            };
            let k = String::from_utf8(k).unwrap();
            let ttl = crate::testkit_redis::command(srv.port(), &["TTL", &k]).unwrap();
            let ::redis::Value::Int(ttl) = ttl else {
                panic!("{ttl:?}")
            };
            assert!(ttl > 0 && ttl <= 8 * 24 * 3600, "{k}: ttl {ttl}");
        }
    }

    #[tokio::test]
    async fn one_identitys_keys_share_one_slot_and_hold_no_raw_identity() {
        let st = store("redis://127.0.0.1:1", "t");
        for id in [
            "",
            "spiffe://example.org/agent/a",
            "{rev}",
            "}{gd:",
            "\u{e9}{",
        ] {
            let (s, a) = (st.key_guard_state(id), st.key_guard_audiences(id));
            assert_eq!(cluster_slot(&s), cluster_slot(&a), "{s} {a}");
            assert!(s.starts_with("t:{gd:") && a.starts_with("t:{gd:"));
            if !id.is_empty() {
                assert!(!s.contains(id), "{s}");
            }
        }
        // Identities spread over the slots (not one tag for the fleet).
        let slots: std::collections::HashSet<u16> = (0..64)
            .map(|i| cluster_slot(&st.key_guard_state(&format!("agent-{i}"))))
            .collect();
        assert!(slots.len() > 32, "{}", slots.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cluster_enforces_each_identitys_budget_once() {
        let Some(cluster) = crate::testkit_redis::cluster_or_skip(3).unwrap() else {
            return;
        };
        let st = store(&cluster.url(), "gc");
        let cfg = GuardConfig {
            enabled: true,
            window: 3600,
            max_rate: 4,
            ..GuardConfig::default()
        };
        // Two guards (two replicas) on one cluster.
        let a = Guard::new(&cfg)
            .unwrap()
            .with_shared(Some(st.clone() as Arc<dyn SharedState>));
        let b = Guard::new(&cfg)
            .unwrap()
            .with_shared(Some(st.clone() as Arc<dyn SharedState>));
        let now = 7_200_000;
        for i in 0..12 {
            let id = format!("agent-{i}");
            let mut ok = 0;
            for k in 0..10 {
                let g = if k % 2 == 0 { &a } else { &b };
                if g.decide(&[&id], "x", ACTIONS[0], now)
                    .await
                    .unwrap()
                    .is_none()
                {
                    ok += 1;
                }
            }
            assert_eq!(ok, 4, "{id}");
        }
    }
}
