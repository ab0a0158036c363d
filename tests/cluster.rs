#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The broker on a real Redis Cluster (three masters) and through a real
//! Redis Sentinel: the whole exchange path works, a dead master fails
//! closed for the keys it holds, and a failover is followed.
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::invariants::{Expect, Ledger, Phase};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tessera::testkit_redis::{cluster_or_skip, sentinel_or_skip};

fn jit_policies() -> String {
    DEFAULT_POLICIES.replace(
        "scopes = [\"tickets:read\", \"tickets:write\"]",
        "scopes = [\"tickets:read\", \"tickets:write\", \"tickets:delete\"]\njit_scopes = [\"tickets:delete\"]",
    )
}

async fn broker(url: String) -> TestBroker {
    TestBroker::start_with(Options {
        store_url: Some(url),
        policies: jit_policies(),
        ..Default::default()
    })
    .await
}

/// One `/token` exchange over mTLS, recorded in the ledger.
async fn exchange(b: &TestBroker, l: &Ledger, scope: &str, task: Option<&str>) -> (u16, Value) {
    let (s, v) = b.agent_token(scope, task).await;
    l.record(s.as_u16(), &v);
    (s.as_u16(), v)
}

/// Creates a single-use grant of `tickets:delete` for the agent; its id.
async fn grant(b: &TestBroker) -> (StatusCode, String) {
    let (s, v) = b
        .admin(
            Method::POST,
            "/admin/v1/grants",
            Some(json!({"subject": AGENT, "scope": "tickets:delete", "audience": API, "ttl": "60s", "uses": 1})),
        )
        .await;
    (s, v["id"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_exchange_revoke_single_use_grant_and_audit() {
    let Some(cluster) = cluster_or_skip(3).unwrap() else {
        return;
    };
    let b = broker(cluster.url()).await;
    let ledger = Arc::new(Ledger::new());
    ledger.phase(Phase::Normal);

    // mTLS exchange, two tasks
    let (s, v1) = exchange(&b, &ledger, "tickets:read", Some("t-1")).await;
    assert_eq!(s, 200, "{v1}");
    let (s, v2) = exchange(&b, &ledger, "tickets:read", Some("t-2")).await;
    assert_eq!(s, 200, "{v2}");
    let t1 = v1["access_token"].as_str().unwrap();
    let t2 = v2["access_token"].as_str().unwrap();
    assert_eq!(b.introspect(t1).await["active"], true);

    // revoke task t-1: its token is refused, the other is not
    let (s, v) = b
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"kind": "task", "value": "t-1"})),
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    assert_eq!(b.introspect(t1).await["active"], false);
    assert_eq!(b.introspect(t2).await["active"], true);

    // a single-use grant, 20 concurrent redemptions: exactly one token (I2)
    let (s, gid) = grant(&b).await;
    assert_eq!(s, StatusCode::CREATED);
    let b = Arc::new(b);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (b, l) = (b.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            exchange(&b, &l, "tickets:delete", None).await.0
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 400).count(), 19, "{codes:?}");

    // the audit stream is readable, and I1–I5 hold
    let records = b.audit_records().await;
    assert!(
        records.iter().any(|r| r["event"] == "issued"),
        "{records:?}"
    );
    let summary = ledger.check(
        &records,
        &Expect {
            cap_secs: 15 * 60,
            grant_uses: HashMap::from([(gid, 1)]),
            ..Default::default()
        },
    );
    assert_eq!(summary.tokens, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_down_fails_closed_for_its_keys_and_recovers() {
    let Some(mut cluster) = cluster_or_skip(3).unwrap() else {
        return;
    };
    // Where the agent's grants live, and where revocations and audit live.
    let grants = cluster
        .node_for(&format!(
            "{{g:{}}}",
            tessera::audit::sha256_hex(AGENT.as_bytes())
        ))
        .unwrap();
    let pointers = cluster.node_for("{gx}").unwrap();
    let rev = cluster.node_for("{rev}").unwrap();
    let audit = cluster.node_for("{audit}").unwrap();
    assert!(
        grants == pointers && grants != rev && grants != audit,
        "the slot layout this test relies on changed: grants {grants}, pointers \
         {pointers}, revocations {rev}, audit {audit}"
    );
    let b = broker(cluster.url()).await;
    let ledger = Ledger::new();
    ledger.phase(Phase::Normal);
    let (s, gid) = grant(&b).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(exchange(&b, &ledger, "tickets:read", None).await.0, 200);

    // The master of the agent's grants dies (SIGKILL).
    cluster.nodes[grants].kill();
    // Redemptions of the grant need it: 503, no token (fail closed).
    ledger.phase(Phase::StoreDown);
    for _ in 0..3 {
        let (s, v) = exchange(&b, &ledger, "tickets:delete", None).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (503, Some("temporarily_unavailable")),
            "{v}"
        );
    }
    let (s, _) = grant(&b).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    // Exchanges that need only the live masters still work.
    ledger.phase(Phase::Normal);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = exchange(&b, &ledger, "tickets:read", None).await;
        if s == 200 {
            break;
        }
        assert_eq!(s, 503, "{v}");
        assert!(
            Instant::now() < deadline,
            "the live masters did not serve: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The master comes back (empty: the test servers persist nothing, so
    // the grant is gone); the broker recovers by itself.
    cluster.nodes[grants].restart().unwrap();
    cluster.wait_ok(Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let gid2 = loop {
        let (s, id) = grant(&b).await;
        if s == StatusCode::CREATED {
            break id;
        }
        assert!(Instant::now() < deadline, "grants did not recover: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (s, v) = exchange(&b, &ledger, "tickets:delete", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        exchange(&b, &ledger, "tickets:delete", None).await.0,
        400,
        "a one-use grant yields one token"
    );
    let summary = ledger.check(
        &b.audit_records().await,
        &Expect {
            cap_secs: 15 * 60,
            grant_uses: HashMap::from([(gid, 1), (gid2, 1)]),
            ..Default::default()
        },
    );
    assert!(summary.by_status.get(&503).copied().unwrap_or(0) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed_and_fails_closed_meanwhile() {
    let Some(mut sentinel) = sentinel_or_skip().unwrap() else {
        return;
    };
    let b = Arc::new(broker(sentinel.url()).await);
    let ledger = Arc::new(Ledger::new());
    ledger.phase(Phase::Normal);
    assert_eq!(
        exchange(&b, &ledger, "tickets:read", Some("t-a")).await.0,
        200
    );
    let (s, gid) = grant(&b).await;
    assert_eq!(s, StatusCode::CREATED);
    // Everything written so far has reached the replica (replication is
    // asynchronous: what it has not received is lost in a failover).
    sentinel.wait_replicated(Duration::from_secs(10)).unwrap();
    // The primary dies; the sentinel promotes the replica.
    sentinel.nodes[0].kill();
    let started = Instant::now();
    let mut followed = None;
    while started.elapsed() < Duration::from_secs(30) {
        let (s, v) = exchange(&b, &ledger, "tickets:read", None).await;
        assert!(s == 200 || s == 503, "{s} {v}");
        if s == 503 {
            assert_eq!(v["error"], "temporarily_unavailable", "{v}");
        }
        if s == 200 {
            followed = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let followed = followed.expect("the broker did not follow the new primary within 30 s");
    assert_eq!(
        sentinel.primary_index().unwrap(),
        1,
        "the replica was promoted"
    );
    eprintln!("sentinel failover followed in {followed:?}");

    // The grant (replicated before the failover) yields its one token, even
    // to concurrent redemptions on the new primary (I2).
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (b, l) = (b.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            exchange(&b, &l, "tickets:delete", None).await.0
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 400), "{codes:?}");

    let summary = ledger.check(
        &b.audit_records().await,
        &Expect {
            cap_secs: 15 * 60,
            grant_uses: HashMap::from([(gid, 1)]),
            ..Default::default()
        },
    );
    assert!(summary.tokens >= 3);
    assert!(
        summary.by_status.get(&503).copied().unwrap_or(0) >= 1,
        "the failover was not seen: {:?}",
        summary.by_status
    );
}

/// The connection is lazy: a broker starts while the whole cluster is down
/// (503, no token), and serves once it is back, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_starts_while_the_cluster_is_down_and_recovers() {
    let Some(mut cluster) = cluster_or_skip(3).unwrap() else {
        return;
    };
    for n in &mut cluster.nodes {
        n.kill();
    }
    let b = broker(cluster.url()).await;
    let ledger = Ledger::new();
    ledger.phase(Phase::StoreDown);
    let (s, v) = exchange(&b, &ledger, "tickets:read", None).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{v}"
    );
    for n in &mut cluster.nodes {
        n.restart().unwrap();
    }
    cluster.wait_ok(Duration::from_secs(10)).unwrap();
    ledger.phase(Phase::Normal);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = exchange(&b, &ledger, "tickets:read", None).await;
        if s == 200 {
            break;
        }
        assert_eq!(s, 503, "{v}");
        assert!(Instant::now() < deadline, "did not recover: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ledger.check(
        &b.audit_records().await,
        &Expect {
            cap_secs: 15 * 60,
            ..Default::default()
        },
    );
}
