//! A fleet of `tessera serve` processes on one Redis (started by the test):
//! they see each other's revocations and grants, a CLI revocation made on
//! one replica is enforced by the others and by a verifier following the
//! feed of one of them, and each process serves any number of
//! `/revocations` streams from one store poller.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tessera::testkit::{free_port, ChildGuard};

use common::*;
use serde_json::Value;
use tessera::mint::keyring::{generate_key_file, SigningAlgorithm};
use tessera::pki::{Ca, LeafSpec};
use tessera::testkit_redis::redis_or_skip;

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

fn serve(d: &Path, name: &str, redis: &str) -> (ChildGuard, u16, u16) {
    let (port, ops) = (free_port(), free_port());
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
[admin]
subjects = ["{OPERATOR}"]
[introspection]
subjects = ["{PAYMENTS}"]
[[policies]]
name = "agents"
match = {{ issuer = "mtls", subject = "spiffe://example.org/agent/*" }}
audiences = ["{API}"]
scopes = ["tickets:read", "tickets:delete"]
jit_scopes = ["tickets:delete"]
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

async fn wait_ready(ops: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{ops}/readyz")).await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("replica on ops port {ops} did not become ready");
}

fn cli(d: &Path, port: u16, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(BIN)
        .args(args)
        .args(["--url", &format!("https://127.0.0.1:{port}")])
        .arg("--ca")
        .arg(d.join("ca.pem"))
        .arg("--cert")
        .arg(d.join("operator.pem"))
        .arg("--key")
        .arg(d.join("operator-key.pem"))
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// The CA, certificates and signing keys every replica of a test shares.
struct Materials {
    ca: Ca,
    agent: tessera::pki::IssuedCert,
    payments: tessera::pki::IssuedCert,
    operator: tessera::pki::IssuedCert,
}

fn materials(d: &Path) -> Materials {
    let ca = Ca::generate("fleet CA").unwrap();
    std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
    let server = ca
        .issue(&LeafSpec::server(
            &["localhost"],
            &["127.0.0.1".parse().unwrap()],
        ))
        .unwrap();
    std::fs::write(d.join("server.pem"), &server.cert_pem).unwrap();
    std::fs::write(d.join("server-key.pem"), &server.key_pem).unwrap();
    let op = ca.issue(&LeafSpec::client_spiffe(OPERATOR)).unwrap();
    std::fs::write(d.join("operator.pem"), &op.cert_pem).unwrap();
    std::fs::write(d.join("operator-key.pem"), &op.key_pem).unwrap();
    generate_key_file(&d.join("signing"), SigningAlgorithm::ES256).unwrap();
    let agent = ca.issue(&LeafSpec::client_spiffe(AGENT)).unwrap();
    let payments = ca.issue(&LeafSpec::client_spiffe(PAYMENTS)).unwrap();
    Materials {
        ca,
        agent,
        payments,
        operator: op,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_share_state_through_redis() {
    init();
    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Materials {
        ca,
        agent,
        payments,
        ..
    } = materials(d);

    let (_a, port_a, ops_a) = serve(d, "a", &redis.url());
    let (_b, port_b, ops_b) = serve(d, "b", &redis.url());
    wait_ready(ops_a).await;
    wait_ready(ops_b).await;

    let agent_c = client_for(ca.cert_der(), Some(&agent));
    let pay_c = client_for(ca.cert_der(), Some(&payments));
    let exchange = |port: u16, scope: &'static str, task: &'static str| {
        let c = agent_c.clone();
        async move {
            let r = c
                .post(format!("https://127.0.0.1:{port}/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(encode_form(&[
                    ("grant_type", TE),
                    ("subject_token_type", MTLS),
                    ("audience", API),
                    ("scope", scope),
                    ("task", task),
                ]))
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    let introspect = |port: u16, token: String| {
        let c = pay_c.clone();
        async move {
            c.post(format!("https://127.0.0.1:{port}/introspect"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(encode_form(&[("token", &token)]))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["active"]
                .clone()
        }
    };

    // a token issued by A, revoked with the CLI through B, is inactive at A at once
    let (s, v) = exchange(port_a, "tickets:read", "fleet-task").await;
    assert_eq!(s, 200, "{v}");
    let t = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(introspect(port_a, t.clone()).await, true);
    let (code, _, err) = cli(d, port_b, &["revoke", "--task", "fleet-task"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(introspect(port_a, t.clone()).await, false);
    assert_eq!(introspect(port_b, t).await, false);

    // a one-use grant created through A is consumed once, at B
    let (code, _, err) = cli(
        d,
        port_a,
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
            "5m",
            "--uses",
            "1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(exchange(port_b, "tickets:delete", "g1").await.0, 200);
    assert_eq!(exchange(port_a, "tickets:delete", "g2").await.0, 400);
    let (code, out, _) = cli(d, port_b, &["grant", "list", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["grants"][0]["remaining"], 0);

    // The kill switch made through A is enforced by B, although B answers
    // "not blocked" from its block cache (kept exact by Redis tracking).
    let metric = |ops: u16, name: &'static str| async move {
        metric_at(&format!("http://127.0.0.1:{ops}/metrics"), name).await
    };
    let live = r#"tessera_store_block_cache_live"#;
    let hits = r#"tessera_store_block_cache_lookups_total{result="hit"}"#;
    within("B's block cache live", Duration::from_secs(5), || async {
        metric(ops_b, live).await == 1.0
    })
    .await;
    for i in 0..3 {
        let task: &'static str = ["k0", "k1", "k2"][i];
        assert_eq!(exchange(port_b, "tickets:read", task).await.0, 200);
    }
    assert!(
        metric(ops_b, hits).await >= 1.0,
        "B never answered from its cache"
    );
    let (code, _, err) = cli(
        d,
        port_a,
        &["revoke", "--subject", AGENT, "--block-for", "5m"],
    );
    assert_eq!(code, 0, "{err}");
    let blocked = r#"tessera_exchanges_total{outcome="refused",reason="subject_blocked"}"#;
    within(
        "the block enforced at B",
        Duration::from_secs(1),
        || async { exchange(port_b, "tickets:read", "k3").await.0 != 200 },
    )
    .await;
    assert!(metric(ops_b, blocked).await >= 1.0);
    assert_ne!(exchange(port_a, "tickets:read", "k4").await.0, 200);
}

const ISS: &str = "https://tessera.fleet";

fn form(f: &[(&str, &str)]) -> String {
    encode_form(f)
}

async fn post_token(c: &reqwest::Client, port: u16, f: &[(&str, &str)]) -> (u16, Value) {
    let r = c
        .post(format!("https://127.0.0.1:{port}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(f))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn active(c: &reqwest::Client, port: u16, token: &str) -> bool {
    let v: Value = c
        .post(format!("https://127.0.0.1:{port}/introspect"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", token)]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["active"].as_bool().unwrap()
}

/// Every record of the fleet's shared audit stream, through one replica.
async fn audit_records(op: &reqwest::Client, port: u16) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = "0".to_string();
    loop {
        let v: Value = op
            .get(format!(
                "https://127.0.0.1:{port}/admin/v1/audit?after={after}&limit=500"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = v["records"].as_array().unwrap().clone();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
        after = v["cursor"].as_str().unwrap().to_string();
    }
}

/// Polls `f` until it holds, failing after `limit`.
async fn within<F, Fut>(what: &str, limit: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_revocation_on_one_replica_is_enforced_by_the_other_two_and_a_follower() {
    use common::invariants::{Expect, Ledger};
    use tessera::verify::{FollowerTls, RevocationFollower, Verifier};
    init();
    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = materials(d);
    let replicas: Vec<_> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| serve(d, n, &redis.url()))
        .collect();
    for (_, _, ops) in &replicas {
        wait_ready(*ops).await;
    }
    let ports: Vec<u16> = replicas.iter().map(|r| r.1).collect();
    let agent_c = client_for(m.ca.cert_der(), Some(&m.agent));
    let pay_c = client_for(m.ca.cert_der(), Some(&m.payments));
    let op_c = client_for(m.ca.cert_der(), Some(&m.operator));

    // a verifier with the fleet's keys, and a follower of replica 2's feed
    let jwks = pay_c
        .get(format!("https://127.0.0.1:{}/jwks.json", ports[0]))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let verifier = Verifier::with_static_jwks(ISS, API, &jwks)
        .unwrap()
        .build()
        .unwrap();
    let follower = RevocationFollower::start(
        &format!("https://127.0.0.1:{}", ports[1]),
        FollowerTls {
            roots: vec![m.ca.cert_der().to_vec().into()],
            cert_chain: vec![m.payments.cert_der.clone().into()],
            key: Some(
                rustls_pki_types::PrivatePkcs8KeyDer::from(m.payments.key_der.clone()).into(),
            ),
        },
    )
    .unwrap();
    assert!(follower.wait_synced(Duration::from_secs(10)).await);

    // one token of the task from every replica, and one of another task
    let ledger = Ledger::new();
    let mut tokens = Vec::new();
    for &port in &ports {
        let (s, v) = post_token(
            &agent_c,
            port,
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", API),
                ("scope", "tickets:read"),
                ("task", "fleet-revoked"),
            ],
        )
        .await;
        ledger.record(s, &v);
        assert_eq!(s, 200, "{v}");
        tokens.push(v["access_token"].as_str().unwrap().to_string());
    }
    let (s, v) = post_token(
        &agent_c,
        ports[2],
        &[
            ("grant_type", TE),
            ("subject_token_type", MTLS),
            ("audience", API),
            ("scope", "tickets:read"),
            ("task", "fleet-kept"),
        ],
    )
    .await;
    ledger.record(s, &v);
    assert_eq!(s, 200, "{v}");
    let kept = v["access_token"].as_str().unwrap().to_string();
    let mut verified = Vec::new();
    for t in &tokens {
        let vt = verifier.verify(t).await.unwrap();
        assert!(follower.check(&vt).is_ok());
        verified.push(vt);
        for &port in &ports {
            assert!(
                active(&pay_c, port, t).await,
                "active before the revocation"
            );
        }
    }
    let kept_v = verifier.verify(&kept).await.unwrap();

    // revoke the task with the CLI through replica 1
    let (code, _, err) = cli(d, ports[0], &["revoke", "--task", "fleet-revoked"]);
    assert_eq!(code, 0, "{err}");
    let limit = Duration::from_secs(10);
    // enforced by replicas 2 and 3: introspection inactive for every token...
    for &port in &ports[1..] {
        for t in &tokens {
            within("introspection inactive", limit, || {
                active_not(&pay_c, port, t)
            })
            .await;
        }
        // ...and a re-exchange of any of them refused
        for t in &tokens {
            let (s, v) = post_token(
                &agent_c,
                port,
                &[
                    ("grant_type", TE),
                    ("subject_token_type", ACCESS),
                    ("subject_token", t),
                    ("audience", API),
                    ("scope", "tickets:read"),
                ],
            )
            .await;
            ledger.record(s, &v);
            assert_eq!(s, 400, "re-exchange of a revoked token at {port}: {v}");
            assert_eq!(v["error"], "invalid_request", "{v}");
        }
    }
    // ...and by the follower of replica 2's feed
    for vt in &verified {
        within("follower refuses", limit, || {
            let r = follower.is_revoked(vt);
            async move { r }
        })
        .await;
        assert!(follower.check(vt).is_err());
    }
    // the other task is untouched everywhere
    for &port in &ports {
        assert!(active(&pay_c, port, &kept).await);
    }
    assert!(follower.check(&kept_v).is_ok());
    let (s, v) = post_token(
        &agent_c,
        ports[1],
        &[
            ("grant_type", TE),
            ("subject_token_type", ACCESS),
            ("subject_token", &kept),
            ("audience", API),
            ("scope", "tickets:read"),
        ],
    )
    .await;
    ledger.record(s, &v);
    assert_eq!(s, 200, "{v}");

    let records = audit_records(&op_c, ports[2]).await;
    let summary = ledger.check(&records, &Expect::default());
    assert_eq!(summary.tokens, 5);
    assert_eq!(summary.by_status.get(&400), Some(&6));
}

async fn active_not(c: &reqwest::Client, port: u16, t: &str) -> bool {
    !active(c, port, t).await
}

/// `tessera_store_duration_seconds_count{op="list_since"}` of one replica:
/// every store read of the revocation feed it made.
async fn feed_reads(ops: u16) -> u64 {
    metric_at(
        &format!("http://127.0.0.1:{ops}/metrics"),
        "tessera_store_duration_seconds_count{op=\"list_since\"}",
    )
    .await as u64
}

/// (cursor, value) of every entry a stream received, in order.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// One `/revocations` stream, parsed into `seen`.
fn open_stream(
    c: reqwest::Client,
    port: u16,
    since: Option<String>,
    seen: Seen,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let url = match since {
            Some(s) => format!("https://127.0.0.1:{port}/revocations?since={s}"),
            None => format!("https://127.0.0.1:{port}/revocations"),
        };
        let mut r = c
            .get(url)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut buf = String::new();
        while let Ok(Some(chunk)) = r.chunk().await {
            buf.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(i) = buf.find("\n\n") {
                let ev: String = buf.drain(..i + 2).collect();
                let (mut id, mut data, mut kind) = (None, None, None);
                for l in ev.lines() {
                    if let Some(v) = l.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = l.strip_prefix("data:") {
                        data = Some(v.trim().to_string());
                    } else if let Some(v) = l.strip_prefix("event:") {
                        kind = Some(v.trim().to_string());
                    }
                }
                if kind.as_deref() == Some("revocation") {
                    let v: Value = serde_json::from_str(&data.unwrap()).unwrap();
                    seen.lock()
                        .unwrap()
                        .push((id.unwrap(), v["value"].as_str().unwrap().to_string()));
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_streams_are_served_by_one_feed_poller_per_process() {
    use std::sync::Arc;
    init();
    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = materials(d);
    let (_a, port_a, ops_a) = serve(d, "a", &redis.url());
    let (_b, port_b, ops_b) = serve(d, "b", &redis.url());
    wait_ready(ops_a).await;
    wait_ready(ops_b).await;
    let pay_c = client_for(m.ca.cert_der(), Some(&m.payments));
    let op_c = client_for(m.ca.cert_der(), Some(&m.operator));
    let revoke = |port: u16, value: String| {
        let c = op_c.clone();
        async move {
            let r = c
                .post(format!("https://127.0.0.1:{port}/admin/v1/revocations"))
                .json(&serde_json::json!({"kind": "task", "value": value}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    };
    // entries made before the streams open: caught up from the store
    let mut expected: Vec<String> = Vec::new();
    for i in 0..3 {
        let v = format!("before-{i}");
        revoke(port_b, v.clone()).await;
        expected.push(v);
    }
    const STREAMS: usize = 20;
    let seen: Vec<Seen> = (0..STREAMS).map(|_| Arc::default()).collect();
    let _streams: Vec<_> = seen
        .iter()
        .map(|s| open_stream(pay_c.clone(), port_a, None, s.clone()))
        .collect();
    let all_have = |n: usize| {
        let seen = seen.clone();
        async move { seen.iter().all(|s| s.lock().unwrap().len() >= n) }
    };
    within("every stream caught up", Duration::from_secs(20), || {
        all_have(3)
    })
    .await;

    // 20 entries, alternately through the other replica and this one
    let reads0 = feed_reads(ops_a).await;
    let t0 = Instant::now();
    for i in 0..20 {
        let v = format!("live-{i}");
        let port = if i % 2 == 0 { port_b } else { port_a };
        revoke(port, v.clone()).await;
        expected.push(v);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    within(
        "every stream has every entry",
        Duration::from_secs(20),
        || all_have(expected.len()),
    )
    .await;
    // a resuming stream gets exactly the entries after its cursor
    let cursor = seen[0].lock().unwrap()[4].0.clone();
    let resumed: Seen = Arc::default();
    let _r = open_stream(pay_c.clone(), port_a, Some(cursor), resumed.clone());
    within(
        "the resumed stream caught up",
        Duration::from_secs(20),
        || {
            let r = resumed.clone();
            let n = expected.len() - 5;
            async move { r.lock().unwrap().len() >= n }
        },
    )
    .await;
    // time for duplicates to show
    tokio::time::sleep(Duration::from_millis(600)).await;
    let window = t0.elapsed();
    let reads = feed_reads(ops_a).await - reads0;

    for s in seen.iter() {
        let s = s.lock().unwrap();
        let values: Vec<&str> = s.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(values, expected, "every entry exactly once, in order");
        assert!(s.windows(2).all(|w| w[0].0 < w[1].0), "cursors increase");
    }
    let r: Vec<String> = resumed
        .lock()
        .unwrap()
        .iter()
        .map(|x| x.1.clone())
        .collect();
    assert_eq!(r, expected[5..].to_vec());

    // One poller: one read per 200 ms tick plus one per local revocation
    // (10) plus the resumed stream's catch-up. Twenty per-stream pollers
    // would make twenty times the ticks.
    let ticks = window.as_secs_f64() / 0.2;
    let one_poller = ticks + 10.0 + 5.0;
    eprintln!(
        "feed store reads at replica A over {window:?} with {STREAMS} streams: {reads} \
         (one poller: ~{one_poller:.0}; one per stream: ~{:.0})",
        ticks * STREAMS as f64
    );
    assert!(
        (reads as f64) <= one_poller * 1.5,
        "{reads} feed reads in {window:?}: more than one poller's ~{one_poller:.0}"
    );
}
