//! Costs of two pieces on the exchange path, measured alone (release
//! build): the audit writer (64 concurrent callers, a file sink plus the
//! in-memory stream, group commit) and the anomaly guard (check + record
//! for one exchange, 10,000 identities).
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

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(audit_writer());
    guard();
}
