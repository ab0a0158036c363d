//! Costs of two pieces on the exchange path, measured alone (release
//! build): the audit writer (64 concurrent callers, a file sink plus the
//! in-memory stream, group commit) and the anomaly guard (check + record
//! for one exchange, 10,000 identities), and the fleet-wide guard over a
//! private `redis-server` (check + record for one exchange: its latency, the
//! broker's and Redis's CPU per exchange, exact and with leases, over 10,000
//! and over 256 identities) next to one ES256 signature.
//!
//! ```sh
//! cargo bench --bench components
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera::audit::{verify_file, AuditRecord, Auditor, Event};
use tessera::config::AuditSink;
use tessera::exchange::guard::{Guard, GuardAction, GuardConfig, Learned, PolicyActions};
use tessera::store::memory::MemoryStore;

async fn audit_writer() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryStore::new());
    let a = Auditor::start(
        &AuditSink::File(d.path().join("a.jsonl")),
        Some((mem, 100_000)),
        Duration::from_secs(5),
    )
    .unwrap();
    const CALLERS: usize = 64;
    const EACH: usize = 2_000;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CALLERS {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let r = AuditRecord::new(Event::Issued)
                    .client("spiffe://example.org/agent/demo")
                    .subject("spiffe://example.org/agent/demo")
                    .owner(Some("alice@example.com"))
                    .task(&format!("task-{c}"))
                    .scopes("tickets:read tickets:write")
                    .audience("https://api.example.com")
                    .policy("agents")
                    .jti(&uuid::Uuid::new_v4().to_string())
                    .token(&format!("eyJ.{c}.{i}"));
                a.record(r).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = CALLERS * EACH;
    let secs = t0.elapsed().as_secs_f64();
    // The chain the writer produced under that load is intact.
    let r = verify_file(&d.path().join("a.jsonl")).unwrap();
    assert!(r.intact());
    assert_eq!(r.records, n as u64);
    println!(
        "audit writer: {n} records from {CALLERS} callers in {secs:.2} s = {:.0} records/s",
        n as f64 / secs
    );
}

fn guard() {
    let actions = PolicyActions {
        on_rate: GuardAction::SlowDown,
        on_new_audience: GuardAction::Approval,
    };
    let g = Guard::new(&GuardConfig {
        enabled: true,
        window: 10,
        max_rate: 1_000_000,
        refusal_streak: 10,
        learned: Some(Learned {
            multiplier: 10,
            warmup: 10,
            floor: 20,
        }),
        ..GuardConfig::default()
    })
    .unwrap();
    let ids: Vec<String> = (0..10_000)
        .map(|i| format!("spiffe://example.org/agent/{i}"))
        .collect();
    let n = 1_000_000u64;
    let start = Instant::now();
    for i in 0..n {
        let id = ids[(i % 10_000) as usize].as_str();
        let now = 1_000 + i / 100_000;
        // Far below every limit: nothing fires.
        assert!(black_box(g.check(&[id], "https://api.example.com", actions, now)).is_none());
        g.issued(&[id], "https://api.example.com", now);
    }
    let per = start.elapsed().as_nanos() as f64 / n as f64;
    println!("anomaly guard: check + issued = {per:.0} ns per exchange (10,000 identities)");
}

/// CPU seconds this process used so far (user + system, from
/// `/proc/self/stat`; 0 where there is none).
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is 3rd.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (indices 11 and 12 here), in
    // clock ticks of 1/100 s.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds a redis-server used so far (`INFO cpu`).
fn redis_cpu(port: u16) -> f64 {
    let text = tessera::testkit_redis::command_text(port, &["INFO", "cpu"]).unwrap();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == "used_cpu_sys" || k == "used_cpu_user").then(|| v.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// One ES256 signature over a token-sized message, in microseconds.
fn es256_us() -> f64 {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let msg = vec![b'x'; 600];
    let n = 20_000;
    let start = Instant::now();
    for _ in 0..n {
        black_box(key.sign(&rng, black_box(&msg)).unwrap());
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

/// One exchange's guard calls: the check, then the issuance's record.
async fn one(g: Arc<Guard>, i: u64, identities: u64) {
    let actions = PolicyActions {
        on_rate: GuardAction::SlowDown,
        on_new_audience: GuardAction::Approval,
    };
    let aud = "https://api.example.com";
    let id = format!("spiffe://example.org/agent/{}", i % identities);
    let now = tessera::testkit::now();
    // As the broker does: the record is skipped when the check says it
    // would change nothing.
    let (hit, settled) = g.decide_noting(&[&id], aud, actions, now).await.unwrap();
    assert!(hit.is_none());
    if !settled {
        g.record_issued(&[&id], aud, now).await.unwrap();
    }
}

/// The fleet-wide guard (Redis): per exchange one check and one record,
/// sequentially (latency) and from 32 concurrent callers (CPU per exchange,
/// the broker's and Redis's apart), against one ES256 signature; exact
/// (every exchange one check) and with leases, over 10,000 identities and
/// over 256 (the exchange bench's OIDC pool: each identity busier).
async fn guard_redis() {
    use tessera::exchange::guard::SharedState;
    use tessera::store::redis::{RedisConfig, RedisStore};
    let srv = match tessera::testkit_redis::RedisServer::start() {
        Ok(s) => s,
        Err(e) => {
            println!("fleet-wide guard: SKIPPED (no redis-server: {e})");
            return;
        }
    };
    let sig_us = es256_us();
    println!("one ES256 signature = {sig_us:.1} us");
    for (mode, lease_max) in [
        ("exact", 0),
        ("leases", tessera::exchange::guard::LEASE_MAX),
    ] {
        for identities in [10_000u64, 256] {
            let store = Arc::new(
                RedisStore::new(&RedisConfig {
                    url: srv.url(),
                    prefix: format!("bench-{mode}-{identities}"),
                    timeout: Duration::from_secs(2),
                    ca_pem: None,
                })
                .unwrap(),
            );
            let g = Arc::new(
                Guard::new(&GuardConfig {
                    enabled: true,
                    window: 60,
                    max_rate: 1_000_000_000,
                    refusal_streak: 10,
                    learned: Some(Learned {
                        multiplier: 1_000_000,
                        warmup: 10,
                        floor: 1_000_000_000,
                    }),
                    ..GuardConfig::default()
                })
                .unwrap()
                .with_shared(Some(store as Arc<dyn SharedState>))
                .with_lease_max(lease_max),
            );
            for i in 0..identities.max(2_000) {
                one(g.clone(), i, identities).await;
            }
            let n = 5_000u64;
            let start = Instant::now();
            for i in 0..n {
                one(g.clone(), i, identities).await;
            }
            let seq_us = start.elapsed().as_secs_f64() * 1e6 / n as f64;

            const CALLERS: u64 = 32;
            let each: u64 = if lease_max == 0 { 1_000 } else { 4_000 };
            let calls0 = tessera::testkit_redis::command_calls(srv.port(), "evalsha").unwrap();
            let (cpu0, rcpu0) = (own_cpu(), redis_cpu(srv.port()));
            let start = Instant::now();
            let tasks: Vec<_> = (0..CALLERS)
                .map(|c| {
                    let g = g.clone();
                    tokio::spawn(async move {
                        for i in 0..each {
                            one(g.clone(), c * each + i, identities).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let total = (CALLERS * each) as f64;
            let wall = start.elapsed().as_secs_f64();
            let broker_us = (own_cpu() - cpu0) * 1e6 / total;
            let redis_us = (redis_cpu(srv.port()) - rcpu0) * 1e6 / total;
            let calls =
                tessera::testkit_redis::command_calls(srv.port(), "evalsha").unwrap() - calls0;
            println!(
                "fleet-wide guard ({mode}, redis, {identities} identities): {seq_us:.1} us per \
                 exchange sequentially; from {CALLERS} callers {:.0} exchanges/s, \
                 {:.3} store calls, broker CPU {broker_us:.1} us + redis CPU {redis_us:.1} us \
                 per exchange (broker CPU of the guard = {:.0}% of a signature)",
                total / wall,
                calls as f64 / total,
                100.0 * broker_us / sig_us
            );
        }
    }
}

/// The fleet-wide guard with leases under the exchange bench's load shape:
/// 32 callers each cycling through 256 identities (caller `c` starts at
/// identity `c`), one exchange per caller every 2 ms: store calls per
/// exchange.
async fn guard_redis_paced() {
    use tessera::exchange::guard::SharedState;
    use tessera::store::redis::{RedisConfig, RedisStore};
    let Ok(srv) = tessera::testkit_redis::RedisServer::start() else {
        return;
    };
    let store = Arc::new(
        RedisStore::new(&RedisConfig {
            url: srv.url(),
            prefix: "paced".into(),
            timeout: Duration::from_secs(2),
            ca_pem: None,
        })
        .unwrap(),
    );
    let g = Arc::new(
        Guard::new(&GuardConfig {
            enabled: true,
            window: 60,
            max_rate: 100_000_000,
            ..GuardConfig::default()
        })
        .unwrap()
        .with_shared(Some(store as Arc<dyn SharedState>)),
    );
    let calls0 = tessera::testkit_redis::command_calls(srv.port(), "evalsha").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let tasks: Vec<_> = (0..32u64)
        .map(|c| {
            let g = g.clone();
            tokio::spawn(async move {
                let mut n = c;
                let mut done = 0u64;
                while Instant::now() < deadline {
                    one(g.clone(), n, 256).await;
                    n += 1;
                    done += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let calls = tessera::testkit_redis::command_calls(srv.port(), "evalsha").unwrap() - calls0;
    println!(
        "fleet-wide guard (leases, paced: 32 callers over 256 identities, one exchange per caller \
         per 2 ms): {total} exchanges in 10 s, {:.3} store calls per exchange",
        calls as f64 / total as f64
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(audit_writer());
    guard();
    rt.block_on(guard_redis());
    rt.block_on(guard_redis_paced());
}
