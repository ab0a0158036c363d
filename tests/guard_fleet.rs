//! The anomaly guard fleet-wide (issue 17 item 6): three `tessera serve`
//! processes on one Redis (started by the test) enforce one budget per
//! identity, whichever replica each request reaches; a restarted replica
//! keeps the identity's spent budget and its known audiences (they live in
//! Redis, not in the process); another identity is not affected; a refusal
//! streak spread over two replicas trips once and holds on both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tessera::mint::keyring::{generate_key_file, SigningAlgorithm};
use tessera::pki::{Ca, IssuedCert, LeafSpec};
use tessera::testkit::{free_port, ChildGuard};
use tessera::testkit_redis::redis_or_skip;

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const OTHER: &str = "https://other.example.com";
const AGENT_B: &str = "spiffe://example.org/agent/b";
/// The budget per identity per window, fleet-wide.
const MAX_RATE: usize = 6;

/// One replica: `(process, port, ops port)`.
fn serve(d: &Path, name: &str, redis: &str) -> (ChildGuard, u16, u16) {
    let (port, ops) = (free_port(), free_port());
    // A day-long window: the test never straddles a bucket that matters.
    let cfg = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
ops_listen = "127.0.0.1:{ops}"
issuer = "https://tessera.fleet"
tls_cert = "{d}/server.pem"
tls_key = "{d}/server-key.pem"
client_ca = ["{d}/ca.pem"]
[tokens]
signing_keys = "{d}/signing"
[store]
url = "{redis}"
[guard]
enabled = true
window = "24h"
max_rate = {MAX_RATE}
on_rate = "slow_down"
on_new_audience = "approval"
[[policies]]
name = "agents"
owner = "alice@example.com"
match = {{ issuer = "mtls", subject = "spiffe://example.org/agent/*" }}
audiences = ["{API}", "{OTHER}"]
scopes = ["tickets:read"]
"#,
        d = d.display()
    );
    let path = d.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    let log = std::fs::File::create(d.join(format!("{name}.log"))).unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (ChildGuard(child), port, ops)
}

/// Waits for a replica's `/readyz`. A replica that exits fails at once with
/// its status and log; one that lives but is not ready fails after a
/// start-up bound generous enough for a loaded 2-core box (a bound on
/// start-up, not a timing assertion).
async fn wait_ready(child: &mut ChildGuard, d: &Path, name: &str, ops: u16) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let log = || std::fs::read_to_string(d.join(format!("{name}.log"))).unwrap_or_default();
    while Instant::now() < deadline {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!(
                "replica {name} exited ({status}) before it was ready:\n{}",
                log()
            );
        }
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{ops}/readyz")).await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "replica {name} on ops port {ops} did not become ready:\n{}",
        log()
    );
}

/// `/token` for an mTLS agent (`tickets:read`): status, `Retry-After`, body.
async fn exchange(c: &reqwest::Client, port: u16, aud: &str) -> (u16, Option<String>, Value) {
    post_token(
        c,
        &format!("https://127.0.0.1:{port}/token"),
        aud,
        "tickets:read",
    )
    .await
}

/// A TCP (L4, TLS passthrough) load balancer on one address: each new
/// connection goes to the next replica in turn. Returns its port and the
/// connections each replica got.
async fn balancer(ports: Vec<u16>) -> (u16, Arc<Vec<AtomicU64>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let counts: Arc<Vec<AtomicU64>> = Arc::new(ports.iter().map(|_| AtomicU64::new(0)).collect());
    let seen = counts.clone();
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((mut down, _)) = l.accept().await else {
                return;
            };
            let i = n % ports.len();
            seen[i].fetch_add(1, Ordering::SeqCst);
            let up = ports[i];
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", up)).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    (port, counts)
}

/// Sum of the rate slow-downs counted by these replicas.
async fn slow_downs(ops: &[u16]) -> f64 {
    let mut n = 0.0;
    for o in ops {
        n += metric_at(
            &format!("http://127.0.0.1:{o}/metrics"),
            r#"tessera_guard_actions_total{action="slow_down",trigger="rate"}"#,
        )
        .await;
    }
    n
}

fn materials(d: &Path) -> (Ca, IssuedCert, IssuedCert) {
    let ca = Ca::generate("guard fleet CA").unwrap();
    std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
    let server = ca
        .issue(&LeafSpec::server(
            &["localhost"],
            &["127.0.0.1".parse().unwrap()],
        ))
        .unwrap();
    std::fs::write(d.join("server.pem"), &server.cert_pem).unwrap();
    std::fs::write(d.join("server-key.pem"), &server.key_pem).unwrap();
    generate_key_file(&d.join("signing"), SigningAlgorithm::ES256).unwrap();
    let a = ca.issue(&LeafSpec::client_spiffe(AGENT)).unwrap();
    let b = ca.issue(&LeafSpec::client_spiffe(AGENT_B)).unwrap();
    (ca, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_enforce_one_budget_per_identity_and_a_restart_keeps_it() {
    init();
    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, agent, agent_b) = materials(d);
    let (mut a, port_a, ops_a) = serve(d, "a", &redis.url());
    let (mut b, port_b, ops_b) = serve(d, "b", &redis.url());
    let (mut c, port_c, ops_c) = serve(d, "c", &redis.url());
    wait_ready(&mut a, d, "a", ops_a).await;
    wait_ready(&mut b, d, "b", ops_b).await;
    wait_ready(&mut c, d, "c", ops_c).await;
    let ports = [port_a, port_b, port_c];
    let agent_c = client_for(ca.cert_der(), Some(&agent));
    let agent_b_c = client_for(ca.cert_der(), Some(&agent_b));

    // Behind one address (a round-robin L4 balancer), one identity sends
    // twice its budget at once, each request on a connection of its own, so
    // every replica gets a third: the fleet admits exactly the budget, once.
    let (lb, per_replica) = balancer(ports.to_vec()).await;
    let tasks: Vec<_> = (0..2 * MAX_RATE)
        .map(|_| {
            let c = client_for(ca.cert_der(), Some(&agent));
            tokio::spawn(async move { exchange(&c, lb, API).await })
        })
        .collect();
    let mut issued = 0;
    for t in tasks {
        let (s, ra, v) = t.await.unwrap();
        match s {
            200 => issued += 1,
            429 => {
                assert_eq!(v["error"], "slow_down", "{v}");
                let ra: u64 = ra.expect("Retry-After").parse().unwrap();
                assert!(ra >= 1, "{ra}");
            }
            _ => panic!("{s}: {v}"),
        }
    }
    assert_eq!(
        issued, MAX_RATE,
        "the fleet admitted {issued}, not {MAX_RATE}"
    );
    for (i, n) in per_replica.iter().enumerate() {
        // Each replica alone would have admitted all of its share.
        let n = n.load(Ordering::SeqCst);
        assert_eq!(n, (2 * MAX_RATE / 3) as u64, "replica {i} got {n}");
    }
    // Every replica refuses the next one (each alone would still admit it).
    for p in ports {
        assert_eq!(exchange(&agent_c, p, API).await.0, 429, "replica {p}");
    }
    assert_eq!(
        slow_downs(&[ops_a, ops_b, ops_c]).await,
        (MAX_RATE + 3) as f64,
        "every refusal counted once, by the replica that answered it"
    );
    // Another identity has its own budget; its first audience is learned.
    let (s, _, v) = exchange(&agent_b_c, port_b, API).await;
    assert_eq!(s, 200, "{v}");

    // A replica restarts (a new process on new ports): the spent budget and
    // the known audiences are still there.
    drop(a);
    let (mut a2, port_a2, ops_a2) = serve(d, "a2", &redis.url());
    wait_ready(&mut a2, d, "a2", ops_a2).await;
    let (s, _, v) = exchange(&agent_c, port_a2, API).await;
    assert_eq!((s, v["error"].as_str()), (429, Some("slow_down")), "{v}");
    // The restarted replica never saw agent B: it knows from Redis that API
    // is B's known audience and OTHER a new one (which steps up to a human;
    // with per-process state it would be learned silently as the first).
    let (s, _, v) = exchange(&agent_b_c, port_a2, OTHER).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("authorization_pending")),
        "{v}"
    );
    let (s, _, v) = exchange(&agent_b_c, port_a2, API).await;
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = exchange(&agent_b_c, port_c, API).await;
    assert_eq!(s, 200, "{v}");
}

/// `/token` through an in-process replica: status, `Retry-After`, body.
async fn token_at(b: &TestBroker, scope: &str) -> (u16, Option<String>, Value) {
    post_token(&b.agent_client(), &b.url("/token"), API, scope).await
}

/// `/token` for an mTLS agent at `url`: status, `Retry-After`, body.
async fn post_token(
    c: &reqwest::Client,
    url: &str,
    aud: &str,
    scope: &str,
) -> (u16, Option<String>, Value) {
    let r = c
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&[
            ("grant_type", TE),
            ("subject_token_type", MTLS),
            ("audience", aud),
            ("scope", scope),
        ]))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let ra = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (s, ra, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_streak_spread_over_two_replicas_trips_once_and_holds_on_both() {
    use tessera::clock::{Clock, ManualClock, SystemClock};
    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let now = SystemClock.now();
    let clock = Arc::new(ManualClock::new(now - now % 60));
    let options = || Options {
        store_url: Some(redis.url()),
        policies: format!(
            "[[policies]]\nname = \"agents\"\nmatch = {{ issuer = \"mtls\", subject = \
             \"spiffe://example.org/agent/*\" }}\naudiences = [\"{API}\"]\nscopes = \
             [\"tickets:read\"]\n"
        ),
        extra: "[guard]\nenabled = true\nrefusal_streak = 4\non_refusal_streak = \
                \"slow_down\"\ncooldown = \"30s\"\n"
            .into(),
        clock: Some(clock.clone()),
        ..Default::default()
    };
    let a = TestBroker::start_with(options()).await;
    let b = TestBroker::start_with(Options {
        share_with: Some(a.home()),
        with_issuer: false,
        ..options()
    })
    .await;
    // Four refusals, two at each replica: per replica that would be a
    // streak of two, fleet-wide it is four.
    for r in [&a, &b, &a] {
        let (s, _, v) = token_at(r, "admin:all").await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_scope")),
            "{v}"
        );
    }
    assert_eq!(token_at(&b, "tickets:read").await.0, 200, "not tripped yet");
    // An issuance ended that streak: four more, alternating.
    for r in [&a, &b, &a, &b] {
        assert_eq!(token_at(r, "admin:all").await.0, 400);
    }
    for r in [&a, &b] {
        let (s, ra, v) = token_at(r, "tickets:read").await;
        assert_eq!((s, v["error"].as_str()), (429, Some("slow_down")), "{v}");
        assert_eq!(ra.as_deref(), Some("30"));
    }
    clock.advance(30);
    assert_eq!(token_at(&a, "tickets:read").await.0, 200);
    assert_eq!(token_at(&b, "tickets:read").await.0, 200);
    a.stop().await;
    b.stop().await;
}
