//! Fail closed, recover by itself, and share state across replicas: with a
//! real `redis-server` the test starts on a free port, kills and restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

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

async fn ready(b: &TestBroker) -> u16 {
    reqwest::get(b.ops_url("/readyz"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_and_service_resumes_without_restart() {
    let Some(mut redis) = redis_or_skip().unwrap() else {
        return;
    };
    let b = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        policies: jit_policies(),
        ..Default::default()
    })
    .await;
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
    assert_eq!(ready(&b).await, 200);

    redis.kill();
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
    assert_eq!(v["error"], "temporarily_unavailable");
    assert!(v.get("access_token").is_none());
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "bounded by the store timeout"
    );
    let (s, v) = b.agent_token("tickets:delete", None).await;
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
    let o = cli(&b, &["revoke", "--task", "t-1"]);
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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = b.agent_token("tickets:read", None).await;
        if s == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "service did not resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ready(&b).await, 200);
    assert_eq!(cli(&b, &["revoke", "--task", "t-1"]).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_starts_while_redis_is_down_and_recovers() {
    let Some(mut redis) = redis_or_skip().unwrap() else {
        return;
    };
    redis.kill();
    let b = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        ..Default::default()
    })
    .await;
    assert_eq!(ready(&b).await, 503);
    assert_eq!(b.agent_token("tickets:read", None).await.0, 503);
    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.agent_token("tickets:read", None).await.0 != 200 {
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

fn cli(b: &TestBroker, args: &[&str]) -> (i32, String, String) {
    let d = b.home();
    if !d.join("op.pem").exists() {
        std::fs::write(d.join("op.pem"), &b.operator.cert_pem).unwrap();
        std::fs::write(d.join("op-key.pem"), &b.operator.key_pem).unwrap();
    }
    let o = Command::new(BIN)
        .args(args)
        .args(["--url", &b.url(""), "--ca"])
        .arg(d.join("ca.pem"))
        .arg("--cert")
        .arg(d.join("op.pem"))
        .arg("--key")
        .arg(d.join("op-key.pem"))
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
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
    let (code, out, err) = cli(
        &b,
        &[
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
        ],
    );
    assert_eq!(code, 0, "{err}");
    let g: Value = serde_json::from_str(&out).unwrap();
    let id = g["id"].as_str().unwrap().to_string();
    // list: a table by default
    let (code, out, _) = cli(&b, &["grant", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains(&id) && out.contains("SUBJECT"), "{out}");
    // the grant works once
    assert_eq!(b.agent_token("tickets:delete", None).await.0, 200);
    let (code, _, _) = cli(&b, &["grant", "revoke", &id]);
    assert_eq!(code, 0);
    let (code, _, err) = cli(&b, &["grant", "revoke", &id]);
    assert_eq!(code, 1, "already gone");
    assert!(err.contains("no live grant"), "{err}");
    // revoke verbs; flags after the verb work (contract)
    let (code, out, _) = cli(
        &b,
        &[
            "revoke",
            "--subject",
            AGENT,
            "--reason",
            "incident 42",
            "--block-for",
            "5m",
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains("refused until"), "{out}");
    assert_eq!(b.agent_token("tickets:read", None).await.0, 400);
    // usage errors exit 2
    assert_eq!(cli(&b, &["revoke"]).0, 2);
    assert_eq!(cli(&b, &["revoke", "--task", "a", "--jti", "b"]).0, 2);
    assert_eq!(
        cli(&b, &["revoke", "--task", "a", "--block-for", "5m"]).0,
        2
    );
    // an identity that is not an operator
    std::fs::write(d.join("op.pem"), &b.agent.cert_pem).unwrap();
    std::fs::write(d.join("op-key.pem"), &b.agent.key_pem).unwrap();
    let (code, _, err) = cli(&b, &["revoke", "--task", "x"]);
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
    let (s, _) = b
        .admin(Method::POST, "/admin/v1/grants", Some(json!({"subject": AGENT, "scope": "tickets:delete", "audience": API, "ttl": "60s", "uses": 1})))
        .await;
    assert_eq!(s, StatusCode::CREATED);

    // Every write is refused from now on; reads still answer.
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
        assert_eq!(s.as_u16(), 503, "{scope}: {v}");
        assert!(v.get("access_token").is_none(), "I5: no token with a 503");
        assert_eq!(v["error"], "temporarily_unavailable");
    }
    let o = cli(&b, &["revoke", "--task", "t-r4"]);
    assert_eq!(o.0, 1, "{o:?}");

    // Writes come back: the grant was never consumed, and yields one token.
    assert_eq!(
        redis_cli(&redis.url(), &["CONFIG", "SET", "maxmemory", "0"]).trim(),
        "OK"
    );
    let (s, v) = b.agent_token("tickets:delete", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = b.agent_token("tickets:delete", None).await;
    assert_eq!(s, 400, "I2: a one-use grant yields one token");
    assert_eq!(cli(&b, &["revoke", "--task", "t-r4"]).0, 0);
}
