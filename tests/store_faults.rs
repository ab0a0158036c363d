//! Fail closed, recover by itself, and share state across replicas: with a
//! real `redis-server` the test starts on a free port, kills and restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::invariants;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tessera::testkit_redis::redis_or_skip;

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

fn jit_policies() -> String {
    DEFAULT_POLICIES.replace(
        "scopes = [\"tickets:read\", \"tickets:write\"]",
        "scopes = [\"tickets:read\", \"tickets:write\", \"tickets:delete\"]\njit_scopes = [\"tickets:delete\"]",
    )
}

/// `[audit]` lines for a JSON-lines file in `dir` (the records outlive a
/// Redis restart, which empties the test server's audit stream).
fn file_audit(dir: &std::path::Path) -> String {
    format!(
        "sink = \"file\"\npath = \"{}\"\n",
        dir.join("audit.jsonl").display()
    )
}

/// The records of the audit file written by [`file_audit`].
fn file_records(dir: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn ready(b: &TestBroker) -> u16 {
    reqwest::get(b.ops_url("/readyz"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_and_service_resumes_without_restart() {
    // A Redis that keeps its data (AOF): the outage is an outage only. One
    // that comes back empty is R6 (`r6_*` below).
    let Some(mut redis) = tessera::testkit_redis::persistent_redis_or_skip().unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        policies: jit_policies(),
        audit: file_audit(dir.path()),
        ..Default::default()
    })
    .await;
    let ledger = invariants::Ledger::new();
    let (s, v) = b.agent_token("tickets:read", None).await;
    ledger.record(s.as_u16(), &v);
    assert_eq!(s, 200);
    assert_eq!(ready(&b).await, 200);

    redis.kill();
    ledger.phase(invariants::Phase::StoreDown);
    // every path that needs the store answers 503 with Retry-After, never a token
    let t0 = Instant::now();
    let r = b
        .agent_client()
        .post(b.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&[
            ("grant_type", TE),
            ("subject_token_type", MTLS),
            ("audience", API),
            ("scope", "tickets:read"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    ledger.record(503, &v);
    assert_eq!(v["error"], "temporarily_unavailable");
    assert!(v.get("access_token").is_none());
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "bounded by the store timeout"
    );
    let (s, v) = b.agent_token("tickets:delete", None).await;
    ledger.record(s.as_u16(), &v);
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
    assert_eq!(ready(&b).await, 503);

    // the outage is visible on /metrics: store errors by operation and kind,
    // and store latency
    let m = reqwest::get(b.ops_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted = |name: &str, needle: &str| {
        m.lines().any(|l| {
            l.starts_with(name)
                && l.contains(needle)
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) > Some(0.0)
        })
    };
    assert!(
        counted("tessera_store_errors_total{", "kind=\"unavailable\""),
        "{m}"
    );
    assert!(
        counted("tessera_store_duration_seconds_count{", "op=\""),
        "{m}"
    );

    // the CLI says the change was not made and exits 1
    let o = b.cli(&["revoke", "--task", "t-1"]);
    assert_eq!(o.0, 1, "{o:?}");
    assert!(o.2.contains("not made"), "{}", o.2);

    // introspection fails closed too
    let r = b
        .client(Some(&b.payments))
        .post(b.url("/introspect"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=a.b.c")
        .send()
        .await
        .unwrap();
    assert!(
        r.status() == 200 || r.status() == 503,
        "an invalid token needs no store"
    );

    redis.restart().unwrap();
    ledger.phase(invariants::Phase::Normal);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = b.agent_token("tickets:read", None).await;
        ledger.record(s.as_u16(), &v);
        if s == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "service did not resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ready(&b).await, 200);
    assert_eq!(b.cli(&["revoke", "--task", "t-1"]).0, 0);
    let s = ledger.check(&file_records(dir.path()), &invariants::Expect::default());
    assert_eq!(s.tokens, 2, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_starts_while_redis_is_down_and_recovers() {
    let Some(mut redis) = redis_or_skip().unwrap() else {
        return;
    };
    redis.kill();
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        audit: file_audit(dir.path()),
        ..Default::default()
    })
    .await;
    let ledger = invariants::Ledger::new();
    ledger.phase(invariants::Phase::StoreDown);
    assert_eq!(ready(&b).await, 503);
    let (s, v) = b.agent_token("tickets:read", None).await;
    ledger.record(s.as_u16(), &v);
    assert_eq!(s, 503);
    // /livez-style liveness: the process answers while not ready
    let live = reqwest::get(b.ops_url("/healthz")).await.unwrap().status();
    assert_eq!(live, 200);
    redis.restart().unwrap();
    ledger.phase(invariants::Phase::Normal);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = b.agent_token("tickets:read", None).await;
        ledger.record(s.as_u16(), &v);
        if s == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = ledger.check(&file_records(dir.path()), &invariants::Expect::default());
    assert_eq!(s.tokens, 1, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_revocations_and_grants() {
    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let a = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        policies: jit_policies(),
        ..Default::default()
    })
    .await;
    let b = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        policies: jit_policies(),
        share_with: Some(a.home()),
        with_issuer: false,
        ..Default::default()
    })
    .await;
    // a token from replica A, revoked through replica B, is inactive at A at once
    let (_, v) = a.agent_token("tickets:read", Some("shared-task")).await;
    let t = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        b.introspect(&t).await["active"],
        true,
        "B verifies A's token (shared keys)"
    );
    let (s, _) = b
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"kind": "task", "value": "shared-task"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(a.introspect(&t).await["active"], false);
    // a grant created at A is consumed at B, once
    let (s, _) = a
        .admin(Method::POST, "/admin/v1/grants", Some(json!({"subject": AGENT, "scope": "tickets:delete", "audience": API, "ttl": "60s", "uses": 1})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(b.agent_token("tickets:delete", None).await.0, 200);
    assert_eq!(a.agent_token("tickets:delete", None).await.0, 400);
    // the feed at A shows B's revocation
    let feed: Value = a
        .client(Some(&a.payments))
        .get(a.url("/revocations"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(feed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["value"] == "shared-task"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_entries_expire_with_the_tokens_they_cover() {
    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let b = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        ..Default::default()
    })
    .await;
    for (kind, value) in [("task", "ttl-task"), ("subject", AGENT)] {
        let (s, _) = b
            .admin(
                Method::POST,
                "/admin/v1/revocations",
                Some(json!({"kind": kind, "value": value})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (_, v) = b.agent_token("tickets:read", None).await;
    let jti = decode(v["access_token"].as_str().unwrap()).1["jti"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = b
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"kind": "jti", "value": jti})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // read every key's TTL back from Redis: none is persistent, none outlives max_ttl (15m)
    let keys = redis_cli(&redis.url(), &["--scan"]);
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert!(!keys.is_empty());
    for k in keys {
        let ttl: i64 = redis_cli(&redis.url(), &["TTL", k]).trim().parse().unwrap();
        if k.contains(":{audit}:") {
            // the audit stream is bounded by length (MAXLEN ~), and expires
            // only when no broker has written to it for a long time
            assert!(ttl > 15 * 60, "{k}: ttl {ttl}");
            continue;
        }
        if k.ends_with(":{rev}:epoch") {
            // one key, as long-lived as the data it vouches for (R6)
            assert_eq!(ttl, -1, "{k}");
            continue;
        }
        assert!(ttl > 0 && ttl <= 15 * 60 + 1, "{k}: ttl {ttl}");
    }
}

fn redis_cli(url: &str, args: &[&str]) -> String {
    let o = Command::new("redis-cli")
        .arg("-u")
        .arg(url)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cli_verbs() {
    let b = TestBroker::start_with(Options {
        policies: jit_policies(),
        ..Default::default()
    })
    .await;
    let d = b.home();
    std::fs::write(d.join("op.pem"), &b.operator.cert_pem).unwrap();
    std::fs::write(d.join("op-key.pem"), &b.operator.key_pem).unwrap();
    // grant create --json prints an object with id
    let (code, out, err) = b.cli(&[
        "grant",
        "create",
        "--subject",
        AGENT,
        "--scope",
        "tickets:delete",
        "--audience",
        API,
        "--ttl",
        "10m",
        "--uses",
        "1",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let g: Value = serde_json::from_str(&out).unwrap();
    let id = g["id"].as_str().unwrap().to_string();
    // list: a table by default
    let (code, out, _) = b.cli(&["grant", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains(&id) && out.contains("SUBJECT"), "{out}");
    // the grant works once
    assert_eq!(b.agent_token("tickets:delete", None).await.0, 200);
    let (code, _, _) = b.cli(&["grant", "revoke", &id]);
    assert_eq!(code, 0);
    let (code, _, err) = b.cli(&["grant", "revoke", &id]);
    assert_eq!(code, 1, "already gone");
    assert!(err.contains("no live grant"), "{err}");
    // revoke verbs; flags after the verb work (contract)
    let (code, out, _) = b.cli(&[
        "revoke",
        "--subject",
        AGENT,
        "--reason",
        "incident 42",
        "--block-for",
        "5m",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("refused until"), "{out}");
    assert_eq!(b.agent_token("tickets:read", None).await.0, 400);
    // usage errors exit 2
    assert_eq!(b.cli(&["revoke"]).0, 2);
    assert_eq!(b.cli(&["revoke", "--task", "a", "--jti", "b"]).0, 2);
    assert_eq!(b.cli(&["revoke", "--task", "a", "--block-for", "5m"]).0, 2);
    // an identity that is not an operator
    std::fs::write(d.join("op.pem"), &b.agent.cert_pem).unwrap();
    std::fs::write(d.join("op-key.pem"), &b.agent.key_pem).unwrap();
    let (code, _, err) = b.cli(&["revoke", "--task", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("operator certificate not authorised"), "{err}");
    // nobody listening
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = Command::new(BIN)
        .args([
            "revoke",
            "--task",
            "x",
            "--url",
            &format!("https://127.0.0.1:{port}"),
            "--ca",
        ])
        .arg(d.join("ca.pem"))
        .arg("--cert")
        .arg(d.join("op.pem"))
        .arg("--key")
        .arg(d.join("op-key.pem"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "cannot reach https://127.0.0.1:{port}: connection refused"
        )),
        "{err}"
    );
}

/// H85: a single-use grant redeemed by 50 concurrent requests spread over
/// three replicas on one Redis: exactly one token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h85_single_use_grant_across_three_replicas() {
    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let a = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        policies: jit_policies(),
        ..Default::default()
    })
    .await;
    let mut replicas = vec![];
    for _ in 0..2 {
        replicas.push(
            TestBroker::start_with(Options {
                store_url: Some(redis.url()),
                policies: jit_policies(),
                share_with: Some(a.home()),
                with_issuer: false,
                ..Default::default()
            })
            .await,
        );
    }
    let (s, _) = a
        .admin(Method::POST, "/admin/v1/grants", Some(json!({"subject": AGENT, "scope": "tickets:delete", "audience": API, "ttl": "60s", "uses": 1})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let urls = [
        a.url("/token"),
        replicas[0].url("/token"),
        replicas[1].url("/token"),
    ];
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = a.agent_client();
        let url = urls[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            c.post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(encode_form(&[
                    ("grant_type", TE),
                    ("subject_token_type", MTLS),
                    ("audience", API),
                    ("scope", "tickets:delete"),
                ]))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 400).count(), 49, "{codes:?}");
}

/// R-class fault: Redis alive but slower than the store timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_fails_closed_within_the_timeout() {
    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let b = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        ..Default::default()
    })
    .await;
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
    redis_cli(&redis.url(), &["CLIENT", "PAUSE", "3000", "ALL"]);
    let t0 = Instant::now();
    let (s, v) = b.agent_token("tickets:read", None).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "answered in {:?}",
        t0.elapsed()
    );
    assert_eq!(ready(&b).await, 503);
    // after the pause, service resumes by itself
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.agent_token("tickets:read", None).await.0 != 200 {
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// R4: Redis reads work but writes fail (OOM under `maxmemory`). No token is
/// minted whose grant was not consumed, or whose audit record was not
/// written; the CLI says the revocation was not made; after recovery the
/// grant yields exactly its one token (I2, I3, I4, I5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_writes_failing_fail_closed_and_the_grant_survives() {
    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let b = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        policies: jit_policies(),
        ..Default::default()
    })
    .await;
    let (s, v) = b
        .admin(Method::POST, "/admin/v1/grants", Some(json!({"subject": AGENT, "scope": "tickets:delete", "audience": API, "ttl": "60s", "uses": 1})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let grant_id = v["id"].as_str().unwrap().to_string();
    let records_before = b.audit_records().await.len();
    let ledger = invariants::Ledger::new();

    // Every write is refused from now on; reads still answer.
    ledger.phase(invariants::Phase::StoreDown);
    assert_eq!(
        redis_cli(
            &redis.url(),
            &["CONFIG", "SET", "maxmemory-policy", "noeviction"]
        )
        .trim(),
        "OK"
    );
    assert_eq!(
        redis_cli(&redis.url(), &["CONFIG", "SET", "maxmemory", "1"]).trim(),
        "OK"
    );
    assert!(redis_cli(&redis.url(), &["SET", "probe", "x"]).contains("OOM"));
    for scope in ["tickets:delete", "tickets:read"] {
        let (s, v) = b.agent_token(scope, None).await;
        ledger.record(s.as_u16(), &v);
        assert_eq!(s.as_u16(), 503, "{scope}: {v}");
        assert!(v.get("access_token").is_none(), "I5: no token with a 503");
        assert_eq!(v["error"], "temporarily_unavailable");
    }
    let o = b.cli(&["revoke", "--task", "t-r4"]);
    assert_eq!(o.0, 1, "{o:?}");

    // Writes come back: the grant was never consumed, and yields one token.
    assert_eq!(
        redis_cli(&redis.url(), &["CONFIG", "SET", "maxmemory", "0"]).trim(),
        "OK"
    );
    ledger.phase(invariants::Phase::Normal);
    let (s, v) = b.agent_token("tickets:delete", None).await;
    ledger.record(s.as_u16(), &v);
    assert_eq!(s, 200, "{v}");
    let (s, v) = b.agent_token("tickets:delete", None).await;
    ledger.record(s.as_u16(), &v);
    assert_eq!(s, 400, "I2: a one-use grant yields one token");
    assert_eq!(b.cli(&["revoke", "--task", "t-r4"]).0, 0);
    let records = b.audit_records().await;
    let mut expect = invariants::Expect::default();
    expect.grant_uses.insert(grant_id, 1);
    let s = ledger.check(&records[records_before..], &expect);
    assert_eq!(s.tokens, 1, "{s:?}");
}

/// One mTLS exchange as the agent: status, whether `Retry-After` was sent,
/// the body, and how long the answer took.
async fn timed_exchange(c: &reqwest::Client, url: &str) -> (u16, bool, Value, Duration) {
    let t0 = Instant::now();
    let r = c
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&[
            ("grant_type", TE),
            ("subject_token_type", MTLS),
            ("audience", API),
            ("scope", "tickets:read"),
        ]))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r.headers().contains_key("retry-after");
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (status, retry_after, v, t0.elapsed())
}

/// `tasks` concurrent agents exchanging for `run_for`, every answer checked
/// (a 200 with a token, or a 503 `temporarily_unavailable` with
/// `Retry-After`) and recorded in `ledger`. Returns (status, latency) of each.
async fn load(
    b: &TestBroker,
    ledger: &std::sync::Arc<invariants::Ledger>,
    tasks: usize,
    run_for: Duration,
) -> Vec<(u16, Duration)> {
    let until = Instant::now() + run_for;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let c = b.agent_client();
        let url = b.url("/token");
        let ledger = ledger.clone();
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while Instant::now() < until {
                let (s, retry_after, v, took) = timed_exchange(&c, &url).await;
                ledger.record(s, &v);
                match s {
                    200 => assert!(v["access_token"].is_string(), "{v}"),
                    503 => {
                        assert_eq!(v["error"], "temporarily_unavailable", "{v}");
                        assert!(retry_after, "503 without Retry-After");
                        assert!(v.get("access_token").is_none());
                    }
                    other => panic!("unexpected status {other}: {v}"),
                }
                out.push((s, took));
                // keep the two shared cores for the broker
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            out
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

/// Sum of every sample of a metric family on `/metrics` (all label sets).
async fn metric_sum(b: &TestBroker, name: &str) -> f64 {
    let m = reqwest::get(b.ops_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    m.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

async fn ready_body(b: &TestBroker) -> (u16, String) {
    let r = reqwest::get(b.ops_url("/readyz")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// R3: Redis alive but slow, behind a latency-injecting proxy. Under load,
/// every answer is a token or a 503 with `Retry-After`; once calls keep
/// timing out the circuit breaker opens and requests fail fast without
/// reaching Redis (the proxy sees almost no traffic while hundreds of
/// requests are answered); `/readyz` says so; with the delay removed the
/// service recovers by itself; I1–I5 hold throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_slow_redis_opens_the_breaker_and_requests_fail_fast() {
    use common::invariants::{Expect, Ledger, Phase};
    use common::latency_proxy::LatencyProxy;
    use std::sync::Arc;

    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let proxy = LatencyProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let b = TestBroker::start_with(Options {
        store_url: Some(format!("redis://127.0.0.1:{}", proxy.port())),
        ..Default::default()
    })
    .await;
    let timeout = Duration::from_millis(250); // [store] timeout default
    let ledger = Arc::new(Ledger::new());
    let records_before = b.audit_records().await.len();
    ledger.phase(Phase::Normal);
    let (s, v) = b.agent_token("tickets:read", None).await;
    ledger.record(s.as_u16(), &v);
    assert_eq!(s, 200, "{v}");

    // Phase 1a: 200 ms ± 150 ms per request, around the 250 ms timeout.
    // Answers may still carry tokens: the store answers some calls in time.
    proxy.set_delay(Duration::from_millis(200));
    proxy.set_jitter(Duration::from_millis(150));
    let a = load(&b, &ledger, 16, Duration::from_secs(3)).await;
    let ok_a = a.iter().filter(|(s, _)| *s == 200).count();
    let mut admitted: Vec<Duration> = a
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, t)| *t)
        .collect();
    admitted.sort();
    // Reported, not asserted (performance is measured by benchmarks). On one
    // multiplexed connection the proxy's delays queue behind each other, so
    // most calls exceed the timeout and the breaker opens early in this phase.
    eprintln!(
        "200 ms ± 150 ms: {} answers, {ok_a} tokens (p99 {:?}), {} 503",
        a.len(),
        admitted.get(admitted.len().saturating_sub(1) * 99 / 100),
        a.len() - ok_a
    );

    // Phase 1b: 2 s, far above the timeout: the store cannot answer (I3).
    proxy.set_jitter(Duration::ZERO);
    proxy.set_delay(Duration::from_secs(2));
    // chunks already queued with the old delay are out within 350 ms
    tokio::time::sleep(Duration::from_millis(500)).await;
    ledger.phase(Phase::StoreDown);
    // let the breaker open (5 consecutive timeouts) before measuring
    let warm = load(&b, &ledger, 16, Duration::from_secs(1)).await;
    assert!(warm.iter().all(|(s, _)| *s == 503));
    let fast_before = metric_sum(&b, "tessera_store_fast_failures_total").await;
    let forwarded_before = proxy.forwarded();
    let down = load(&b, &ledger, 16, Duration::from_secs(3)).await;
    let forwarded = proxy.forwarded() - forwarded_before;
    let fast = metric_sum(&b, "tessera_store_fast_failures_total").await - fast_before;
    assert!(down.iter().all(|(s, _)| *s == 503));
    let mut took: Vec<Duration> = down.iter().map(|(_, t)| *t).collect();
    took.sort();
    let median = took[took.len() / 2];
    let under_timeout = took.iter().filter(|t| **t < timeout).count();
    eprintln!(
        "2 s: {} answers (all 503), {under_timeout} under the {} ms timeout, median {median:?}, \
         max {:?}; {forwarded} chunks reached Redis; fast failures +{fast}",
        down.len(),
        timeout.as_millis(),
        took.last().unwrap()
    );
    // Without the breaker every answer would wait for a timeout and send at
    // least one command to Redis. With it, at most a probe per cool-off
    // (500 ms growing to 5 s, plus a reconnect attempt) reaches Redis.
    assert!(down.len() >= 100, "too few answers: {}", down.len());
    assert!(
        (forwarded as usize) * 10 < down.len(),
        "{forwarded} chunks reached Redis for {} answers",
        down.len()
    );
    assert!(
        fast >= 0.8 * down.len() as f64,
        "fast failures +{fast} for {} answers",
        down.len()
    );
    assert!(under_timeout * 2 > down.len(), "most 503s fail fast");
    assert!(median < timeout, "median {median:?}");
    // readiness follows the breaker
    let (rs, body) = ready_body(&b).await;
    assert_eq!(rs, 503, "{body}");
    assert!(body.contains("circuit breaker open"), "{body}");
    let m = reqwest::get(b.ops_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("tessera_store_breaker_open "), "{m}");

    // Phase 2: the delay goes away; service recovers by itself.
    proxy.set_delay(Duration::ZERO);
    ledger.phase(Phase::Normal);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = b.agent_token("tickets:read", None).await;
        ledger.record(s.as_u16(), &v);
        if s == 200 {
            break;
        }
        assert_eq!(v["error"], "temporarily_unavailable", "{v}");
        assert!(Instant::now() < deadline, "service did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = load(&b, &ledger, 16, Duration::from_secs(1)).await;
    assert!(
        after.iter().all(|(s, _)| *s == 200),
        "after recovery every exchange succeeds"
    );
    assert_eq!(ready_body(&b).await.0, 200);

    // I1–I5 over every answer. A timed-out audit append can still land in
    // Redis after its answer came too late (the command reached the server):
    // the token was withheld and its `issued` record is withdrawn by an
    // `unavailable` record, and a re-sent append never doubles a record
    // (issue 17 item 2), so the counts are exact in the stream too.
    let records = b.audit_records().await;
    let summary = ledger.check(&records[records_before..], &Expect::default());
    eprintln!("ledger: {summary:?}");
}

/// Waits until the replica at `url` reports `master_link_status:up`.
fn wait_link_up(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !redis_cli(url, &["INFO", "replication"]).contains("master_link_status:up") {
        assert!(Instant::now() < deadline, "the replica never synced");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the Redis at `url` holds a task revocation entry.
fn has_task_entry(url: &str) -> bool {
    redis_cli(url, &["--scan", "--pattern", "*{rev}:e:task:*"])
        .lines()
        .any(|l| !l.trim().is_empty())
}

fn re_exchange(parent: &str) -> Vec<(&str, &str)> {
    vec![
        ("grant_type", TE),
        ("subject_token_type", ACCESS),
        ("subject_token", parent),
        ("audience", API),
        ("scope", "tickets:read"),
    ]
}

/// R5 / P7 with `[store] revocation_replicas = 1`: a revocation is reported
/// durable only once the replica acknowledged it (and the replica holds
/// it); with the replica gone, the CLI says "not durable", naming the acks,
/// and exits 3 (not 1: the revocation IS in force on the primary, so the
/// revoked token is refused as a subject token and introspects inactive);
/// the admin API answers 202 with `durable: false`; the audit record notes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_revocation_waits_for_a_replica_and_says_when_not_durable() {
    let Some(primary) = redis_or_skip().unwrap() else {
        return;
    };
    let port = primary.port().to_string();
    let mut replica =
        tessera::testkit_redis::RedisServer::start_with(&["--replicaof", "127.0.0.1", &port])
            .unwrap();
    wait_link_up(&replica.url());
    let b = TestBroker::start_with(Options {
        store_url: Some(primary.url()),
        store_extra: "revocation_replicas = 1\nrevocation_wait = \"500ms\"\n".into(),
        policies: jit_policies(),
        ..Default::default()
    })
    .await;

    // both up: durable, exit 0, and the replica holds the entry
    let (s, v) = b.agent_token("tickets:read", Some("r5-a")).await;
    assert_eq!(s, 200, "{v}");
    let (code, out, err) = b.cli(&["revoke", "--task", "r5-a"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("durable: 1 of 1"), "{out}");
    assert!(!err.contains("not durable"), "{err}");
    assert!(
        has_task_entry(&replica.url()),
        "acknowledged: on the replica"
    );

    // the replica dies: in force on the primary, but not durable
    let (s, v) = b.agent_token("tickets:read", Some("r5-b")).await;
    assert_eq!(s, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_string();
    replica.kill();
    let (code, out, err) = b.cli(&["revoke", "--task", "r5-b"]);
    assert_eq!(code, 3, "distinct from 1 (not made): {out}{err}");
    assert!(err.contains("not durable"), "{err}");
    assert!(err.contains("only 0 of 1 required replicas"), "{err}");
    assert!(out.contains("revoked task r5-b"), "{out}");
    assert_eq!(b.introspect(&token).await["active"], false);
    let (s, v) = b.token(&b.agent_client(), &re_exchange(&token)).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_request")),
        "the revoked token is refused as a subject token: {v}"
    );

    // the admin API: 202 with the durability fields. WAIT blocks the
    // connection it runs on for up to revocation_wait (500 ms, twice the
    // store timeout): exchanges running meanwhile are not stuck behind it.
    let (revoked, exchanged) = tokio::join!(
        b.admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"kind": "task", "value": "r5-c"})),
        ),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            b.agent_token("tickets:read", None).await
        }
    );
    assert_eq!(exchanged.0, 200, "{}", exchanged.1);
    let (s, v) = revoked;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["durable"], false);
    assert_eq!(v["replicas_acked"], 0);
    assert_eq!(v["replicas_required"], 1);

    // grant revoke shares the path
    let (s, g) = b
        .admin(Method::POST, "/admin/v1/grants", Some(json!({"subject": AGENT, "scope": "tickets:delete", "audience": API, "ttl": "60s", "uses": 1})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (code, _, err) = b.cli(&["grant", "revoke", g["id"].as_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not durable"), "{err}");
    assert_eq!(b.agent_token("tickets:delete", None).await.0, 400);

    // the audit records say which revocations are durable
    let records = b.audit_records().await;
    let detail = |task: &str| {
        records
            .iter()
            .find(|r| r["event"] == "revoked" && r["task"] == task)
            .map(|r| r["detail"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("no revoked record for {task}"))
    };
    assert!(
        detail("r5-a").contains("durable: 1/1"),
        "{}",
        detail("r5-a")
    );
    assert!(
        detail("r5-b").contains("NOT durable: 0/1"),
        "{}",
        detail("r5-b")
    );
    assert!(records.iter().any(|r| r["event"] == "grant_revoked"
        && r["detail"].as_str().unwrap_or("").contains("NOT durable")));

    // the replica comes back (empty, resyncs): durable again
    replica.restart().unwrap();
    wait_link_up(&replica.url());
    let (code, out, err) = b.cli(&["revoke", "--task", "r5-d"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// R5 without `WAIT` (`revocation_replicas = 0`, the default): Redis
/// replication is asynchronous, so a revocation the CLI reported made can be
/// lost by a failover. The replica's link is held back by a proxy (the
/// window is then seconds instead of the usual sub-millisecond), the
/// revocation succeeds on the primary, the replica is promoted at once, and
/// a broker on the promoted replica finds the revoked token active again.
/// With `revocation_replicas = 1` the same window is reported: "not durable".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_without_wait_a_failover_can_lose_a_reported_revocation() {
    use common::latency_proxy::LatencyProxy;

    let Some(primary) = redis_or_skip().unwrap() else {
        return;
    };
    let proxy = LatencyProxy::start(([127, 0, 0, 1], primary.port()).into()).await;
    let port = proxy.port().to_string();
    let replica =
        tessera::testkit_redis::RedisServer::start_with(&["--replicaof", "127.0.0.1", &port])
            .unwrap();
    wait_link_up(&replica.url());
    let a = TestBroker::start_with(Options {
        store_url: Some(primary.url()),
        ..Default::default()
    })
    .await;
    let (s, v) = a.agent_token("tickets:read", Some("r5-lost")).await;
    assert_eq!(s, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_string();

    // the replication stream (primary -> replica) now lags by 5 s
    proxy.set_answer_delay(Duration::from_secs(5));
    let (code, out, err) = a.cli(&["revoke", "--task", "r5-lost", "--json"]);
    assert_eq!(code, 0, "reported made: {out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["durable"], true, "nothing required, nothing waited for");
    assert_eq!(v["replicas_required"], 0);
    assert!(v["replicas_acked"].is_null());
    assert_eq!(a.introspect(&token).await["active"], false);
    assert!(has_task_entry(&primary.url()));
    assert!(
        !has_task_entry(&replica.url()),
        "the window: the replica does not have it yet"
    );

    // with WAIT the same window is reported, not hidden
    let waiting = TestBroker::start_with(Options {
        store_url: Some(primary.url()),
        store_extra: "revocation_replicas = 1\nrevocation_wait = \"300ms\"\n".into(),
        share_with: Some(a.home()),
        with_issuer: false,
        ..Default::default()
    })
    .await;
    let (code, _, err) = waiting.cli(&["revoke", "--task", "r5-other"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not durable"), "{err}");

    // failover: the replica is promoted before the revocation reached it
    assert_eq!(
        redis_cli(&replica.url(), &["REPLICAOF", "NO", "ONE"]).trim(),
        "OK"
    );
    let b = TestBroker::start_with(Options {
        store_url: Some(replica.url()),
        share_with: Some(a.home()),
        with_issuer: false,
        ..Default::default()
    })
    .await;
    assert_eq!(
        b.introspect(&token).await["active"],
        true,
        "R5: the revocation was lost with the failover"
    );
}

/// Polls `/readyz` until it answers `want` (the epoch is checked every
/// second), or fails after 10 s.
async fn wait_ready(b: &TestBroker, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready(b).await != want {
        assert!(Instant::now() < deadline, "/readyz never answered {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `token` is active at `/introspect` (`None`: not a 200 answer).
async fn introspect_active(b: &TestBroker, token: &str) -> Option<bool> {
    // The operator may introspect every token (the payments service only
    // those for its own audience).
    let r = b
        .client(Some(&b.operator))
        .post(b.url("/introspect"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    if r.status() != 200 {
        assert_eq!(r.status(), 503, "introspection fails closed");
        return None;
    }
    let v: Value = r.json().await.unwrap();
    v["active"].as_bool()
}

/// R6: the store loses its data (`FLUSHALL`; then a restart without
/// persistence) while two brokers share it. Both notice within a second or
/// two (the data epoch), fail closed everywhere — `/token`, `/introspect`,
/// the admin API, `/readyz` — and audit `store_epoch_lost`; `tessera store
/// recover --from-audit` on one restores the revocation and the block from
/// the audit file, the other broker adopts the recovered epoch, and the
/// revoked token stays refused everywhere (introspection, re-exchange),
/// the blocked identity stays blocked. `--accept-loss` is the other way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r6_lost_redis_data_fails_closed_until_recovered_from_the_audit_trail() {
    let Some(mut redis) = redis_or_skip().unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        policies: jit_policies(),
        audit: file_audit(dir.path()),
        ..Default::default()
    })
    .await;
    // another replica: same CA and signing keys
    let other = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        policies: jit_policies(),
        share_with: Some(b.home()),
        with_issuer: false,
        ..Default::default()
    })
    .await;
    let (s, v) = b.agent_token("tickets:read", None).await;
    assert_eq!(s, 200, "{v}");
    let revoked = v["access_token"].as_str().unwrap().to_string();
    let jti = decode(&revoked).1["jti"].as_str().unwrap().to_string();
    assert_eq!(b.cli(&["revoke", "--jti", &jti]).0, 0);
    let blocked = "spiffe://example.org/agent/rogue";
    assert_eq!(
        b.cli(&["revoke", "--subject", blocked, "--block-for", "10m"])
            .0,
        0
    );
    assert_eq!(introspect_active(&b, &revoked).await, Some(false));
    wait_ready(&b, 200).await;
    wait_ready(&other, 200).await;

    // The data is gone.
    redis_cli(&redis.url(), &["FLUSHALL"]);
    // At once, before any periodic check: the epoch rides along with every
    // revocation read, so the empty answer is never taken for "not revoked".
    assert_eq!(introspect_active(&b, &revoked).await, None);
    for x in [&b, &other] {
        wait_ready(x, 503).await;
        let (s, v) = x.agent_token("tickets:read", None).await;
        assert_eq!(
            (s.as_u16(), v["error"].as_str()),
            (503, Some("temporarily_unavailable"))
        );
        // never `active: true` for a token that might be revoked
        assert_eq!(introspect_active(x, &revoked).await, None);
        let (c, _, err) = x.cli(&["revoke", "--task", "t-9"]);
        assert_eq!(c, 1, "{err}");
        let m = metric_at(&x.ops_url("/metrics"), "tessera_store_epoch_lost").await;
        assert_eq!(m, 1.0);
    }
    let body = reqwest::get(b.ops_url("/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("store lost its data"), "{body}");
    assert!(
        file_records(dir.path())
            .iter()
            .any(|r| r["reason"] == "store_epoch_lost"),
        "the loss is audited"
    );
    // a broker started now against the empty store does not clear it
    let late = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        policies: jit_policies(),
        share_with: Some(b.home()),
        with_issuer: false,
        ..Default::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ready(&b).await, 503);
    drop(late);

    // Recovery from the audit file, through one broker.
    let audit = dir.path().join("audit.jsonl");
    let (c, out, err) = b.cli(&["store", "recover", "--from-audit", audit.to_str().unwrap()]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("restored 2 revocations and 1 block"), "{out}");
    wait_ready(&b, 200).await;
    wait_ready(&other, 200).await;
    for x in [&b, &other] {
        assert_eq!(introspect_active(x, &revoked).await, Some(false));
        let (s, v) = x
            .token(
                &x.agent_client(),
                &[
                    ("grant_type", TE),
                    ("subject_token_type", ACCESS),
                    ("subject_token", revoked.as_str()),
                    ("audience", API),
                    ("scope", "tickets:read"),
                ],
            )
            .await;
        assert_eq!(
            (s.as_u16(), v["error"].as_str()),
            (400, Some("invalid_request")),
            "{v}"
        );
        let (s, v) = x.agent_token("tickets:read", None).await;
        assert_eq!(s, 200, "{v}");
    }
    let (_, out, _) = b.cli(&["blocks", "list"]);
    assert!(out.contains(blocked), "{out}");
    // not lost any more: nothing to recover
    let (c, _, err) = b.cli(&["store", "recover", "--accept-loss"]);
    assert_eq!(c, 1);
    assert!(err.contains("has not lost its data"), "{err}");

    // A restart without persistence: the same, and --accept-loss.
    redis.kill();
    redis.restart().unwrap();
    // (503 at first for the outage itself; then for the loss)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = reqwest::get(b.ops_url("/readyz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body.contains("store lost its data") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the loss was not noticed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (c, out, err) = b.cli(&["store", "recover", "--accept-loss"]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("accepted the loss"), "{out}");
    wait_ready(&b, 200).await;
    wait_ready(&other, 200).await;
    assert!(file_records(dir.path())
        .iter()
        .any(|r| r["reason"] == "store_epoch_loss_accepted"
            && r["client"] == "spiffe://example.org/operator/alice"));
}
