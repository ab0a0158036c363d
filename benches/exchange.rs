//! Exchange benchmark: drives `/token` over keep-alive HTTPS with N
//! concurrent clients against a real `tessera serve` process, on the mTLS
//! path and the OIDC path, and reports exchanges/s, latency percentiles, the
//! broker's CPU time per exchange (from /proc/PID/stat of the broker process),
//! and — measured in the same run — the raw cost of the signature operations
//! one exchange needs.
//!
//! ```sh
//! cargo bench --bench exchange -- --clients 32 --seconds 10
//! ```
//! Options: `--clients N` (32), `--seconds S` (10), `--path mtls|oidc|both`
//! (both), `--alg ES256|EdDSA` (ES256, the broker's signing algorithm),
//! `--h2` (HTTP/2 instead of HTTP/1.1 keep-alive), `--json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tessera::jose::jwk::VerifyingKey;
use tessera::mint::keyring::{generate_key_file, KeyRing, SigningAlgorithm, SigningKey};
use tessera::pki::{Ca, IssuedCert, LeafSpec};
use tessera::testkit::TestIssuer;

struct Args {
    clients: usize,
    seconds: u64,
    paths: Vec<&'static str>,
    alg: SigningAlgorithm,
    h2: bool,
    json: bool,
}

fn args() -> Args {
    let mut a = Args {
        clients: 32,
        seconds: 10,
        paths: vec!["mtls", "oidc"],
        alg: SigningAlgorithm::ES256,
        h2: false,
        json: false,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let next = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--clients" => {
                a.clients = next.parse().expect("--clients N");
                i += 1;
            }
            "--seconds" => {
                a.seconds = next.parse().expect("--seconds S");
                i += 1;
            }
            "--path" => {
                a.paths = match next.as_str() {
                    "mtls" => vec!["mtls"],
                    "oidc" => vec!["oidc"],
                    _ => vec!["mtls", "oidc"],
                };
                i += 1;
            }
            "--alg" => {
                a.alg = next.parse().expect("--alg ES256|EdDSA|RS256");
                i += 1;
            }
            "--h2" => a.h2 = true,
            "--json" => a.json = true,
            "--bench" => {}
            other => eprintln!("ignoring unknown argument {other}"),
        }
        i += 1;
    }
    a
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields after ')' start at field 3 (state); utime is field 14, stime 15
    let utime: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let stime: f64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let tck = clock_ticks();
    (utime + stime) / tck
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Peak resident set size (VmHWM) of a process in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn client(ca: &[u8], cert: Option<&IssuedCert>, h2: bool) -> reqwest::Client {
    tessera::testkit::https_client(ca, cert, h2).unwrap()
}

struct Outcome {
    ok: u64,
    failed: u64,
    secs: f64,
    cpu: f64,
    lat_us: Vec<u32>,
}

async fn drive(
    url: String,
    body_for: Arc<dyn Fn(usize) -> String + Send + Sync>,
    clients: Vec<reqwest::Client>,
    seconds: u64,
    pid: u32,
) -> Outcome {
    // warm-up: connections open, JWKS cached
    for (i, c) in clients.iter().enumerate() {
        let _ = c
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body_for(i))
            .send()
            .await;
    }
    let cpu0 = cpu_seconds(pid);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let url = url.clone();
        let body_for = body_for.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::with_capacity(100_000));
            let mut n = i;
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = c
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body_for(n))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        ok += 1;
                    }
                    Ok(r) => {
                        if failed == 0 {
                            eprintln!(
                                "status {}: {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                        }
                        failed += 1;
                    }
                    Err(e) => {
                        if failed == 0 {
                            eprintln!("error: {e}");
                        }
                        failed += 1;
                    }
                }
                lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                n += 1;
            }
            (ok, failed, lat)
        }));
    }
    let mut out = Outcome {
        ok: 0,
        failed: 0,
        secs: 0.0,
        cpu: 0.0,
        lat_us: Vec::new(),
    };
    for t in tasks {
        let (ok, failed, lat) = t.await.unwrap();
        out.ok += ok;
        out.failed += failed;
        out.lat_us.extend(lat);
    }
    out.secs = start.elapsed().as_secs_f64();
    out.cpu = cpu_seconds(pid) - cpu0;
    out.lat_us.sort_unstable();
    out
}

fn pct(v: &[u32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)] as f64 / 1000.0
}

/// Microseconds per operation of `f`: the median of 15 batches of about
/// `ms / 15` milliseconds each (robust against a noisy neighbour).
fn per_op_us(ms: u64, mut f: impl FnMut()) -> f64 {
    for _ in 0..200 {
        f();
    }
    let mut batches = Vec::new();
    for _ in 0..15 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_millis(ms / 15) {
            for _ in 0..20 {
                f();
            }
            n += 20;
        }
        batches.push(start.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    batches.sort_by(|a, b| a.total_cmp(b));
    batches[batches.len() / 2]
}

fn wait_ready(ops: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", ops)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
            let mut b = String::new();
            let _ = s.read_to_string(&mut b);
            if b.starts_with("HTTP/1.0 200") || b.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("broker did not become ready");
}

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(a));
}

async fn run(a: Args) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::generate("bench CA").unwrap();
    std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
    let server = ca
        .issue(&LeafSpec::server(
            &["localhost"],
            &["127.0.0.1".parse().unwrap()],
        ))
        .unwrap();
    std::fs::write(d.join("server.pem"), &server.cert_pem).unwrap();
    std::fs::write(d.join("server-key.pem"), &server.key_pem).unwrap();
    let agent = ca
        .issue(&LeafSpec::client_spiffe("spiffe://example.org/agent/bench"))
        .unwrap();
    generate_key_file(&d.join("signing"), a.alg).unwrap();
    let issuer = TestIssuer::start(&d.join("issuer"), SigningAlgorithm::RS256)
        .await
        .unwrap();
    let (port, ops) = (free_port(), free_port());
    let cfg = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
ops_listen = "127.0.0.1:{ops}"
issuer = "https://tessera.bench"
tls_cert = "{d}/server.pem"
tls_key = "{d}/server-key.pem"
client_ca = ["{d}/ca.pem"]
[tokens]
signing_keys = "{d}/signing"
algorithm = "{alg}"
# The load generator is one peer driving ~10k requests/s: the per-peer
# pre-authentication limit would measure itself, not the broker.
[limits]
peer_rate = 0
[[issuers]]
name = "ci"
issuer = "{iss}"
audiences = ["tessera"]
jwks_uri = "{jwks}"
ca = "{ica}"
[[policies]]
name = "agents"
owner = "bench@example.com"
match = {{ issuer = "mtls", subject = "spiffe://example.org/agent/*" }}
audiences = ["https://api.example.com"]
scopes = ["tickets:read", "tickets:write"]
[[policies]]
name = "ci"
owner = "bench@example.com"
match = {{ issuer = "ci", subject = "repo:acme/app:ref:refs/heads/*", claims = {{ "env" = "prod" }} }}
audiences = ["https://deploy.example.com"]
scopes = ["deploy:read", "deploy:write"]
"#,
        d = d.display(),
        alg = a.alg.as_str(),
        iss = issuer.url,
        jwks = issuer.jwks_uri(),
        ica = issuer.ca_path.display()
    );
    let cfg_path = d.join("bench.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    // The broker logs at its default level (audit lines included) to a file,
    // as in production; only the location differs.
    let log = std::fs::File::create(d.join("broker.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--config", cfg_path.to_str().unwrap()])
        .env(
            "RUST_LOG",
            std::env::var("BENCH_BROKER_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start tessera serve");
    let pid = child.id();
    let _guard = Guard(child);
    wait_ready(ops);
    let url = format!("https://127.0.0.1:{port}/token");

    // Raw signature cost, measured in this run on this machine.
    let ring = KeyRing::load_dir(&d.join("signing"), a.alg).unwrap();
    let signer: Arc<SigningKey> = ring.signing_key().clone();
    let sign_us = per_op_us(1500, || {
        let _ = signer.sign(b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0");
    });
    let st = {
        let mut c = issuer.claims("repo:acme/app:ref:refs/heads/main", "tessera");
        c["env"] = "prod".into();
        c["exp"] = (tessera::testkit::now() + 3600).into();
        issuer.sign(&c)
    };
    let (input, sig) = st.rsplit_once('.').unwrap();
    let sig =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
    let vk = VerifyingKey::from_jwk(issuer.signer().public_jwk().as_object().unwrap()).unwrap();
    let verify_us = per_op_us(1500, || {
        vk.verify(input.as_bytes(), &sig).unwrap();
    });

    let mut results = Vec::new();
    for path in &a.paths {
        let (clients, body_for): (
            Vec<reqwest::Client>,
            Arc<dyn Fn(usize) -> String + Send + Sync>,
        ) = match *path {
            "mtls" => (
                (0..a.clients)
                    .map(|_| client(ca.cert_der(), Some(&agent), a.h2))
                    .collect(),
                Arc::new(|_| {
                    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Amtls&audience=https%3A%2F%2Fapi.example.com&scope=tickets%3Aread".to_string()
                }),
            ),
            _ => {
                // a pool of distinct subject tokens, as many workloads would present
                let pool: Vec<String> = (0..256).map(|i| {
                    let mut c = issuer.claims(&format!("repo:acme/app:ref:refs/heads/b{i}"), "tessera");
                    c["env"] = "prod".into();
                    c["exp"] = (tessera::testkit::now() + 3600).into();
                    format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&subject_token={}&audience=https%3A%2F%2Fdeploy.example.com&scope=deploy%3Aread", issuer.sign(&c))
                }).collect();
                let pool = Arc::new(pool);
                (
                    (0..a.clients)
                        .map(|_| client(ca.cert_der(), None, a.h2))
                        .collect(),
                    Arc::new(move |n| pool[n % pool.len()].clone()),
                )
            }
        };
        let o = drive(url.clone(), body_for, clients, a.seconds, pid).await;
        let raw = if *path == "oidc" {
            verify_us + sign_us
        } else {
            sign_us
        };
        let per_s = o.ok as f64 / o.secs;
        let cpu_us = o.cpu * 1e6 / o.ok.max(1) as f64;
        results.push(json!({
            "path": path, "clients": a.clients, "seconds": o.secs, "exchanges": o.ok, "failed": o.failed,
            "exchanges_per_s": per_s, "p50_ms": pct(&o.lat_us, 0.50), "p99_ms": pct(&o.lat_us, 0.99), "p999_ms": pct(&o.lat_us, 0.999),
            "broker_cpu_us_per_exchange": cpu_us, "broker_cores_busy": o.cpu / o.secs,
            "raw_signature_us": raw, "cpu_to_raw_ratio": cpu_us / raw,
        }));
    }
    let rss = peak_rss_kib(pid);
    let summary = json!({
        "alg": a.alg.as_str(), "http": if a.h2 { "h2" } else { "http/1.1 keep-alive" },
        "raw_sign_us": sign_us, "raw_verify_rs256_us": verify_us, "broker_peak_rss_mib": rss as f64 / 1024.0,
        "results": results,
    });
    if a.json {
        println!("{summary}");
        return;
    }
    println!(
        "tessera exchange benchmark: {} clients, {} s per path, broker signs {}, {}",
        a.clients,
        a.seconds,
        a.alg.as_str(),
        summary["http"].as_str().unwrap()
    );
    println!(
        "raw cost in this run: sign {} {:.1} µs, verify RS256 {:.1} µs; broker peak RSS {:.1} MiB",
        a.alg.as_str(),
        sign_us,
        verify_us,
        rss as f64 / 1024.0
    );
    println!("| path | exchanges/s | p50 ms | p99 ms | p99.9 ms | broker CPU µs/exchange | raw signature µs | CPU / raw | failed |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in summary["results"].as_array().unwrap() {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2}× | {} |",
            r["path"].as_str().unwrap(),
            r["exchanges_per_s"].as_f64().unwrap(),
            r["p50_ms"].as_f64().unwrap(),
            r["p99_ms"].as_f64().unwrap(),
            r["p999_ms"].as_f64().unwrap(),
            r["broker_cpu_us_per_exchange"].as_f64().unwrap(),
            r["raw_signature_us"].as_f64().unwrap(),
            r["cpu_to_raw_ratio"].as_f64().unwrap(),
            r["failed"]
        );
    }
    let _ = Path::new("");
}
