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
//! | `P:{gd:H(identity)}:s` | hash `W` window, `b` bucket, `c`/`p` current and previous counts (leased exchanges included), `e` learned average, `n` windows learned, `k` spiked, `l` seen (first call under this window), `s` streak, `t` streak holds until, `q` audiences added, `x` TTLs last refreshed | [`Settings::keep`] + 1/16 of it, refreshed once per 1/16 of it: at least `keep` after the last call, itself at least [`SHARED_KEEP_MIN`](crate::exchange::guard::SHARED_KEEP_MIN), 66 windows, the cooldown | 12 fields |
//! | `P:{gd:H(identity)}:a` | sorted set: `H(audience)` (first 32 hex digits) → insertion order | the same, refreshed with the hash (and set when created) | `max_audiences` (oldest dropped first) |
//!
//! A check may also lease exchanges ([`Lease`]: counted now, admitted by
//! the caller later) and take back unused ones; the script writes back only
//! the fields that changed (an admitted check in a known bucket writes
//! one).

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
        let r = self
            .guard_step(REFUSED, s, identity, "", now, Lease::default())
            .await?;
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
        Guard, GuardAction as A, GuardConfig, Learned, PolicyActions, SharedState, LEASE_FOR,
    };
    use crate::require_redis;
    use crate::store::StoreError;

    fn store(url: &str, prefix: &str) -> Arc<RedisStore> {
        store_with(url, prefix, Duration::from_secs(2))
    }

    fn store_with(url: &str, prefix: &str, timeout: Duration) -> Arc<RedisStore> {
        Arc::new(
            RedisStore::new(&RedisConfig {
                url: url.to_string(),
                prefix: prefix.into(),
                timeout,
                ca_pem: None,
            })
            .unwrap(),
        )
    }

    /// One exchange's guard calls as the broker makes them: the check, and
    /// the issuance's record unless the check said it changes nothing.
    /// `Ok(true)`: admitted.
    async fn exchange(g: &Guard, id: &str, aud: &str, now: u64) -> Result<bool, StoreError> {
        let (hit, settled) = g.decide_noting(&[id], aud, ACTIONS[0], now).await?;
        if hit.is_none() && !settled {
            g.record_issued(&[id], aud, now).await?;
        }
        Ok(hit.is_none())
    }

    /// An identity's count in the current bucket, as Redis holds it.
    fn counted(port: u16, st: &RedisStore, id: &str) -> u64 {
        match crate::testkit_redis::command(port, &["HGET", &st.key_guard_state(id), "c"]).unwrap()
        {
            ::redis::Value::BulkString(b) => String::from_utf8(b).unwrap().parse().unwrap(),
            ::redis::Value::Nil => 0,
            v => panic!("{v:?}"),
        }
    }

    fn shared(cfg: &GuardConfig, st: &Arc<RedisStore>) -> Guard {
        Guard::new(cfg)
            .unwrap()
            .with_shared(Some(st.clone() as Arc<dyn SharedState>))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_replicas_lease_far_from_the_limit_and_are_exact_near_it() {
        let srv = require_redis!();
        let st = store(&srv.url(), "lease");
        let cfg = GuardConfig {
            enabled: true,
            window: 3600,
            max_rate: 600,
            ..GuardConfig::default()
        };
        let g: Vec<Guard> = (0..3).map(|_| shared(&cfg, &st)).collect();
        let (id, now) = ("spiffe://example.org/agent/busy", 7_200_000);
        let calls = || crate::testkit_redis::command_calls(srv.port(), "evalsha").unwrap();
        // Far from the limit (below half of it): mostly decided in the
        // process, on leases.
        let c0 = calls();
        let mut admitted = 0u64;
        for k in 0..240 {
            assert!(exchange(&g[k % 3], id, "x", now).await.unwrap(), "{k}");
            admitted += 1;
        }
        let far = calls() - c0;
        assert!(far <= 60, "{far} store calls for 240 exchanges");
        // Each admitted exchange is counted once, and so is each leased one
        // not used yet: nothing is admitted uncounted.
        let leased = |g: &[Guard]| g.iter().map(Guard::leased).sum::<u64>();
        assert!(leased(&g) > 0);
        assert_eq!(counted(srv.port(), &st, id), admitted + leased(&g));
        // Up to the limit, round robin: past half of it no lease is granted,
        // every exchange is one exact check, and the fleet admits exactly
        // max_rate, once.
        loop {
            let mut any = false;
            for r in &g {
                if exchange(r, id, "x", now).await.unwrap() {
                    admitted += 1;
                    any = true;
                }
            }
            if !any {
                break;
            }
            assert!(admitted <= 600, "{admitted}");
        }
        assert_eq!(admitted, 600);
        assert_eq!(leased(&g), 0);
        assert_eq!(counted(srv.port(), &st, id), 600);
        // Another identity is not affected, and the TTLs are set.
        assert!(
            exchange(&g[1], "spiffe://example.org/agent/other", "x", now)
                .await
                .unwrap()
        );
        for k in [st.key_guard_state(id), st.key_guard_audiences(id)] {
            let ttl = crate::testkit_redis::command(srv.port(), &["TTL", &k]).unwrap();
            assert!(
                matches!(ttl, ::redis::Value::Int(t) if t > 7 * 24 * 3600),
                "{k} {ttl:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_replica_keeps_the_learned_baseline_and_the_audiences() {
        let srv = require_redis!();
        let st = store(&srv.url(), "restart");
        let cfg = GuardConfig {
            enabled: true,
            window: 60,
            max_rate: 0,
            learned: Some(Learned {
                multiplier: 2,
                warmup: 3,
                floor: 1,
            }),
            ..GuardConfig::default()
        };
        let id = "spiffe://example.org/agent/steady";
        let t0 = 6_000_000; // a bucket start
        let a = shared(&cfg, &st);
        // Three windows of 10: the leased exchanges a window did not use
        // are given back before it is learned from, so the baseline is 10.
        for w in 0..3 {
            for _ in 0..10 {
                assert!(exchange(&a, id, "x", t0 + w * 60).await.unwrap());
            }
        }
        assert!(exchange(&a, id, "x", t0 + 180).await.unwrap());
        let unused = a.leased();
        drop(a); // a crash: its unused leased exchanges stay counted
        let b = shared(&cfg, &st);
        // The learned limit is 2 x 10, over the sliding window: 1 s into
        // this bucket the previous one weighs 10 x 59/60, so 10 fit in this
        // one, of which 1 + unused are spent.
        let mut more = 0;
        while exchange(&b, id, "x", t0 + 181).await.unwrap() {
            more += 1;
            assert!(more < 100, "the learned limit never applied");
        }
        assert_eq!(more, 10 - 1 - unused, "{unused} left unused");
        let (hit, _) = b
            .decide_noting(&[id], "x", ACTIONS[0], t0 + 182)
            .await
            .unwrap();
        assert_eq!(
            hit.unwrap().trigger,
            crate::exchange::guard::Trigger::LearnedRate
        );
        // Its known audience is known to the new process; another is new.
        let (hit, _) = b
            .decide_noting(&[id], "y", ACTIONS[0], t0 + 240)
            .await
            .unwrap();
        assert_eq!(
            hit.unwrap().trigger,
            crate::exchange::guard::Trigger::NewAudience
        );
        assert!(exchange(&b, id, "x", t0 + 240).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leases_across_a_store_outage_never_admit_uncounted() {
        let srv = require_redis!();
        let st = store_with(&srv.url(), "outage", Duration::from_millis(300));
        let cfg = GuardConfig {
            enabled: true,
            window: 3600,
            max_rate: 10_000,
            ..GuardConfig::default()
        };
        let g = shared(&cfg, &st);
        let (id, now) = ("spiffe://example.org/agent/o", 7_200_000);
        let mut admitted = 0u64;
        while g.leased() == 0 {
            assert!(exchange(&g, id, "x", now).await.unwrap());
            admitted += 1;
            assert!(admitted < 100);
        }
        // Each check that timed out may still run once the store answers
        // again (with its lease, and what it gave back): counted at most
        // this much more than admitted, never less.
        let late = 1 + crate::exchange::guard::LEASE_MAX;
        // A lease past its time is not used: with the store down the
        // exchange fails closed.
        tokio::time::sleep(LEASE_FOR + Duration::from_millis(200)).await;
        srv.suspend().unwrap();
        assert!(exchange(&g, id, "x", now).await.is_err());
        assert_eq!(g.leased(), 0);
        srv.resume().unwrap();
        while g.leased() == 0 {
            assert!(exchange(&g, id, "x", now).await.unwrap());
            admitted += 1;
            assert!(admitted < 200);
        }
        let c = counted(srv.port(), &st, id);
        assert!(
            c >= admitted + g.leased() && c <= admitted + g.leased() + late,
            "{c} counted, {admitted} admitted, {} leased",
            g.leased()
        );
        // A current lease: some of its exchanges, counted before the
        // outage, are admitted (until one asks the store for more); never
        // more than it holds; then the guard fails closed.
        let held = g.leased();
        srv.suspend().unwrap();
        let mut during = 0;
        while exchange(&g, id, "x", now).await.is_ok() {
            during += 1;
            assert!(during <= held, "{during} > {held}");
        }
        srv.resume().unwrap();
        admitted += during;
        let c = counted(srv.port(), &st, id);
        assert!(
            c >= admitted + g.leased() && c <= admitted + g.leased() + 2 * late,
            "{c} counted, {admitted} admitted, {} leased",
            g.leased()
        );
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
