//! Costs of two pieces on the exchange path, measured alone (release
//! build): the audit writer (64 concurrent callers, a file sink plus the
//! in-memory stream, group commit) and the anomaly guard (check + record
//! for one exchange, 10,000 identities), and the fleet-wide guard over a
//! private `redis-server` (check + record for one exchange: its latency, the
//! broker's and Redis's CPU per exchange) next to one ES256 signature.
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
async fn one(g: Arc<Guard>, i: u64) {
    let actions = PolicyActions {
        on_rate: GuardAction::SlowDown,
        on_new_audience: GuardAction::Approval,
    };
    let aud = "https://api.example.com";
    let id = format!("spiffe://example.org/agent/{}", i % 10_000);
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
/// the broker's and Redis's apart), against one ES256 signature.
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
    let store = Arc::new(
        RedisStore::new(&RedisConfig {
            url: srv.url(),
            prefix: "bench".into(),
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
        .with_shared(Some(store as Arc<dyn SharedState>)),
    );
    for i in 0..2_000 {
        one(g.clone(), i).await;
    }
    let n = 5_000u64;
    let start = Instant::now();
    for i in 0..n {
        one(g.clone(), i).await;
    }
    let seq_us = start.elapsed().as_secs_f64() * 1e6 / n as f64;

    const CALLERS: u64 = 32;
    const EACH: u64 = 1_000;
    let (cpu0, rcpu0) = (own_cpu(), redis_cpu(srv.port()));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let g = g.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    one(g.clone(), c * EACH + i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let total = (CALLERS * EACH) as f64;
    let wall = start.elapsed().as_secs_f64();
    let broker_us = (own_cpu() - cpu0) * 1e6 / total;
    let redis_us = (redis_cpu(srv.port()) - rcpu0) * 1e6 / total;
    let sig_us = es256_us();
    println!(
        "fleet-wide guard (redis, 10,000 identities): check (+ issued when not settled) = {seq_us:.0} us per \
         exchange sequentially; from {CALLERS} callers {:.0} exchanges/s, \
         broker CPU {broker_us:.1} us + redis CPU {redis_us:.1} us per exchange; one ES256 \
         signature = {sig_us:.1} us (broker CPU of the guard = {:.0}% of a signature)",
        total / wall,
        100.0 * broker_us / sig_us
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
}
