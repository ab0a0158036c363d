//! Fleet benchmark: revocation propagation across three `tessera serve`
//! processes sharing one redis-server (started here), plus a verifier's
//! `RevocationFollower` on replica 3's `/revocations` feed.
//!
//! N times: exchange a token for a fresh task at replica 1, spawn the CLI
//! `tessera revoke --task …` against replica 1, and time from the spawn
//! until replica 2 and replica 3 answer `active: false` to introspection
//! (each polled every millisecond) and until the follower refuses the token.
//! Each run starts after a random 0–250 ms pause, so that the revocation
//! lands at a random point of replica 3's 200 ms feed poll (which Redis's
//! invalidation of the feed key now short-cuts, `store::block_cache`).
//!
//! ```sh
//! cargo bench --bench fleet -- --runs 100
//! ```
//! Options: `--runs N` (100), `--json`. `BENCH_BROKER_BIN=path` runs another
//! build of `tessera` as the replicas and the CLI (to compare two builds).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera::testkit::{free_port, ChildGuard};

use serde_json::{json, Value};
use tessera::mint::keyring::{generate_key_file, SigningAlgorithm};
use tessera::pki::{Ca, IssuedCert, LeafSpec};
use tessera::testkit_redis::RedisServer;
use tessera::verify::{FollowerTls, RevocationFollower, Verifier};

/// The `tessera` binary for the replicas and the CLI: this build's, or
/// `BENCH_BROKER_BIN` (another build, to compare two in one window).
fn bin() -> String {
    std::env::var("BENCH_BROKER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tessera").into())
}
const ISS: &str = "https://tessera.fleet";
const AUD: &str = "https://api.example.com";
const AGENT: &str = "spiffe://example.org/agent/bench";
const OPERATOR: &str = "spiffe://example.org/operator/bench";
const PAYMENTS: &str = "spiffe://example.org/service/payments-api";

struct Args {
    runs: usize,
    json: bool,
}

fn args() -> Args {
    let mut a = Args {
        runs: 100,
        json: false,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let next = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--runs" => {
                a.runs = next.parse().expect("--runs N");
                i += 1;
            }
            "--json" => a.json = true,
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
        i += 1;
    }
    assert!(a.runs > 0, "--runs must be at least 1");
    a
}

fn pct(v: &[f64], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn write_cert(d: &Path, name: &str, c: &IssuedCert) {
    std::fs::write(d.join(format!("{name}.pem")), &c.cert_pem).unwrap();
    std::fs::write(d.join(format!("{name}-key.pem")), &c.key_pem).unwrap();
}

/// One replica on free ports; returns (guard, port, ops port).
fn serve(d: &Path, name: &str, redis: &str) -> (ChildGuard, u16, u16) {
    let (port, ops) = (free_port(), free_port());
    let cfg = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
ops_listen = "127.0.0.1:{ops}"
issuer = "{ISS}"
tls_cert = "{d}/server.pem"
tls_key = "{d}/server-key.pem"
client_ca = ["{d}/ca.pem"]
[tokens]
signing_keys = "{d}/signing"
[store]
url = "{redis}"
[limits]
peer_rate = 0
[admin]
subjects = ["{OPERATOR}"]
[introspection]
subjects = ["{PAYMENTS}"]
[[policies]]
name = "agents"
match = {{ issuer = "mtls", subject = "spiffe://example.org/agent/*" }}
audiences = ["{AUD}"]
scopes = ["tickets:read"]
"#,
        d = d.display()
    );
    let path = d.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    let log = std::fs::File::create(d.join(format!("{name}.log"))).unwrap();
    let child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start tessera serve");
    (ChildGuard(child), port, ops)
}

async fn wait_ready(ops: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
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

async fn active(c: &reqwest::Client, port: u16, token: &str) -> bool {
    let v: Value = c
        .post(format!("https://127.0.0.1:{port}/introspect"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["active"].as_bool().unwrap()
}

/// Milliseconds from `start` until `port` answers inactive for `token`.
async fn until_inactive(c: reqwest::Client, port: u16, token: String, start: Instant) -> f64 {
    loop {
        if !active(&c, port, &token).await {
            return start.elapsed().as_secs_f64() * 1e3;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not propagated to {port}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

struct Summary {
    name: &'static str,
    ms: Vec<f64>,
}

fn main() {
    let a = args();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(a));
}

async fn run(a: Args) {
    let redis = RedisServer::start().expect("redis-server (install it to run this benchmark)");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::generate("fleet bench CA").unwrap();
    std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
    let server = ca
        .issue(&LeafSpec::server(
            &["localhost"],
            &["127.0.0.1".parse().unwrap()],
        ))
        .unwrap();
    write_cert(d, "server", &server);
    let agent = ca.issue(&LeafSpec::client_spiffe(AGENT)).unwrap();
    let operator = ca.issue(&LeafSpec::client_spiffe(OPERATOR)).unwrap();
    write_cert(d, "operator", &operator);
    let payments = ca.issue(&LeafSpec::client_spiffe(PAYMENTS)).unwrap();
    generate_key_file(&d.join("signing"), SigningAlgorithm::ES256).unwrap();

    let replicas: Vec<_> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| serve(d, n, &redis.url()))
        .collect();
    for r in &replicas {
        wait_ready(r.2).await;
    }
    let ports: Vec<u16> = replicas.iter().map(|r| r.1).collect();
    let url = |i: usize| format!("https://127.0.0.1:{}", ports[i]);
    let agent_c = tessera::testkit::https_client(ca.cert_der(), Some(&agent), false).unwrap();
    let pay_c = tessera::testkit::https_client(ca.cert_der(), Some(&payments), false).unwrap();

    let jwks = pay_c
        .get(format!("{}/jwks.json", url(0)))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let verifier = Verifier::with_static_jwks(ISS, AUD, &jwks)
        .unwrap()
        .build()
        .unwrap();
    let follower = Arc::new(
        RevocationFollower::start(
            &url(2),
            FollowerTls {
                roots: vec![ca.cert_der().to_vec().into()],
                cert_chain: vec![payments.cert_der.clone().into()],
                key: Some(
                    rustls_pki_types::PrivatePkcs8KeyDer::from(payments.key_der.clone()).into(),
                ),
            },
        )
        .unwrap(),
    );
    assert!(follower.wait_synced(Duration::from_secs(10)).await);

    let mut r2 = Summary {
        name: "replica 2: introspection inactive",
        ms: Vec::new(),
    };
    let mut r3 = Summary {
        name: "replica 3: introspection inactive",
        ms: Vec::new(),
    };
    let mut fo = Summary {
        name: "follower of replica 3's feed refuses",
        ms: Vec::new(),
    };
    let mut cli = Summary {
        name: "CLI exits (revocation recorded)",
        ms: Vec::new(),
    };
    for i in 0..a.runs {
        let task = format!("fleet-bench-{i}");
        let r: Value = agent_c
            .post(format!("{}/token", url(0)))
            .form(&[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:mtls",
                ),
                ("audience", AUD),
                ("scope", "tickets:read"),
                ("task", task.as_str()),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = r["access_token"].as_str().expect("a token").to_string();
        let vt = verifier.verify(&token).await.unwrap();
        assert!(follower.check(&vt).is_ok());
        for &p in &ports[1..] {
            assert!(active(&pay_c, p, &token).await);
        }

        // A random pause of 0–250 ms: otherwise every run would start just
        // after the previous one was seen, in the same phase of replica 3's
        // 200 ms feed poll, and measure that phase instead of the spread.
        let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 250 / 255;
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        let start = Instant::now();
        let mut child = Command::new(bin())
            .args(["revoke", "--task", &task, "--url", &url(0)])
            .arg("--ca")
            .arg(d.join("ca.pem"))
            .arg("--cert")
            .arg(d.join("operator.pem"))
            .arg("--key")
            .arg(d.join("operator-key.pem"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let t2 = tokio::spawn(until_inactive(
            pay_c.clone(),
            ports[1],
            token.clone(),
            start,
        ));
        let t3 = tokio::spawn(until_inactive(
            pay_c.clone(),
            ports[2],
            token.clone(),
            start,
        ));
        let f = follower.clone();
        let tf = tokio::spawn(async move {
            while !f.is_revoked(&vt) {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "not at the follower"
                );
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            start.elapsed().as_secs_f64() * 1e3
        });
        let tc = tokio::spawn(async move {
            loop {
                if let Some(st) = child.try_wait().unwrap() {
                    assert!(st.success(), "tessera revoke failed");
                    return start.elapsed().as_secs_f64() * 1e3;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        });
        r2.ms.push(t2.await.unwrap());
        r3.ms.push(t3.await.unwrap());
        fo.ms.push(tf.await.unwrap());
        cli.ms.push(tc.await.unwrap());
    }
    let rows: Vec<Summary> = [r2, r3, fo, cli]
        .into_iter()
        .map(|mut s| {
            s.ms.sort_by(|a, b| a.total_cmp(b));
            s
        })
        .collect();
    if a.json {
        let v: Vec<Value> = rows
            .iter()
            .map(|s| {
                json!({"measure": s.name, "p50_ms": pct(&s.ms, 0.5), "p99_ms": pct(&s.ms, 0.99),
                       "max_ms": s.ms[s.ms.len() - 1], "runs": s.ms.len()})
            })
            .collect();
        println!("{}", json!({ "runs": a.runs, "results": v }));
        return;
    }
    println!(
        "revocation propagation across a fleet of 3 replicas on one redis-server ({} runs): \
         from spawning `tessera revoke --task` against replica 1 to …",
        a.runs
    );
    println!("| … | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    for s in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} |",
            s.name,
            pct(&s.ms, 0.5),
            pct(&s.ms, 0.99),
            s.ms[s.ms.len() - 1]
        );
    }
}
