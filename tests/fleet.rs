//! Two `tessera serve` processes on one Redis (started by the test) see each
//! other's revocations and grants at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tessera::mint::keyring::{generate_key_file, SigningAlgorithm};
use tessera::pki::{Ca, LeafSpec};
use tessera::testkit_redis::redis_or_skip;

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(d: &Path, name: &str, redis: &str) -> (Proc, u16, u16) {
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
    (Proc(child), port, ops)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_share_state_through_redis() {
    init();
    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
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
}
