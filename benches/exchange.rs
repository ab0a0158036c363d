//! Exchange benchmark: drives `/token` (and `/introspect`) over keep-alive
//! HTTPS with N concurrent clients against a real `tessera serve` process,
//! and reports operations/s, latency percentiles, the broker's CPU time per
//! operation (from /proc/PID/stat of the broker process), and — measured in
//! the same run — the raw cost of the signature operations one operation
//! needs.
//!
//! Paths: `mtls` (certificate in, token out), `oidc` (an OIDC subject
//! token), `reexchange` (a Tessera token exchanged for a narrower one over
//! its certificate), `delegation` (a user's OIDC token with the agent's
//! certificate as `actor_token`), `introspect` (RFC 7662 by a resource
//! server).
//!
//! ```sh
//! cargo bench --bench exchange -- --clients 32 --seconds 10
//! cargo bench --bench exchange -- --store redis --state revocations=1000000,grants=100000
//! ```
//! Options: `--clients N` (32), `--seconds S` (10), `--path
//! mtls,oidc,reexchange,delegation,introspect|both|all` (both = mtls,oidc),
//! `--alg ES256|EdDSA` (ES256, the broker's signing algorithm), `--h2`
//! (HTTP/2 instead of HTTP/1.1 keep-alive), `--store memory|redis`
//! (memory; redis starts a private redis-server), `--state
//! revocations=N,grants=M` (redis: two brokers, one on an empty
//! redis-server and one on a redis-server seeded through the store API with
//! N live revocations and M live grants; every path is measured on both,
//! interleaved, side by side; also reports Redis memory per entry),
//! `--rounds N` (each path's time is split into N rounds interleaved across
//! the stores, and the median round counts; 5 with `--state`, else 1),
//! `--rate R` (open loop: R exchanges/s offered across all clients, each
//! latency counted from its scheduled send time; default closed loop),
//! `--path floor` (not in `all`: the stack's own cost, no Tessera logic:
//! the mTLS clients POST the mTLS body to a path no route serves and get
//! the router's 404, so TLS records, HTTP, the router and the kernel's
//! loopback TCP are all that is measured; its CPU/raw is against one ES256
//! signature), `--worker-threads N` (the broker's `[server] worker_threads`; 0, the
//! default, is one per CPU), `--json`. Environment: `BENCH_BROKER_LOG` (the broker's `RUST_LOG`, `info`),
//! `BENCH_AUDIT_SINK` (`stdout`, the default sink; `off` to measure without it),
//! `BENCH_GUARD` (`on`: the anomaly guard on, limits never reached, so each
//! exchange pays its check and record; fleet-wide with `--store redis`),
//! `BENCH_BROKER_BIN` (run another build of `tessera` as the broker, e.g.
//! the previous commit's, to compare builds in one window),
//! `BENCH_STDOUT` (`pipe`, the default: the broker's stdout is a pipe the
//! benchmark drains, as under a container runtime or systemd; `null`:
//! `/dev/null`), `BENCH_CALLGRIND=1` (run the broker under valgrind's
//! callgrind and count the instructions it executes per operation, in
//! user space, and of those the signature operations' (aws-lc's
//! `EVP_DigestSign` and `EVP_DigestVerify`, inclusive): the same for the
//! same build and load whatever else the machine is doing, so two builds
//! compare on a noisy VM; times and rates are meaningless in this mode, and
//! the kernel's share is not counted; `BENCH_CALLGRIND_KEEP=DIR` keeps
//! each dump for `callgrind_annotate`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera::testkit::{free_port, ChildGuard};

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
    redis: bool,
    /// (revocations, grants) to seed.
    state: Option<(u64, u64)>,
    /// Interleaved rounds per path (the median round counts).
    rounds: Option<u32>,
    /// Offered load, exchanges/s across all clients (open loop); `None`:
    /// each client sends its next request as soon as the last is answered.
    rate: Option<f64>,
    /// The broker's `[server] worker_threads` (0: one per CPU).
    worker_threads: u32,
}

const ALL_PATHS: [&str; 5] = ["mtls", "oidc", "reexchange", "delegation", "introspect"];

fn args() -> Args {
    let mut a = Args {
        clients: 32,
        seconds: 10,
        paths: vec!["mtls", "oidc"],
        alg: SigningAlgorithm::ES256,
        h2: false,
        json: false,
        redis: false,
        state: None,
        rounds: None,
        rate: None,
        worker_threads: 0,
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
                    "both" => vec!["mtls", "oidc"],
                    "all" => ALL_PATHS.to_vec(),
                    list => list
                        .split(',')
                        .map(|p| {
                            *ALL_PATHS
                                .iter()
                                .chain(&["floor"])
                                .find(|x| **x == p)
                                .unwrap_or_else(|| panic!("unknown path {p}"))
                        })
                        .collect(),
                };
                i += 1;
            }
            "--rounds" => {
                a.rounds = Some(next.parse().expect("--rounds N"));
                i += 1;
            }
            "--rate" => {
                let r: f64 = next.parse().expect("--rate R (exchanges/s)");
                assert!(r > 0.0, "--rate must be above 0");
                a.rate = Some(r);
                i += 1;
            }
            "--store" => {
                a.redis = match next.as_str() {
                    "redis" => true,
                    "memory" => false,
                    other => panic!("--store memory|redis, not {other}"),
                };
                i += 1;
            }
            "--state" => {
                let (mut r, mut g) = (0, 0);
                for kv in next.split(',') {
                    match kv.split_once('=') {
                        Some(("revocations", n)) => r = n.parse().expect("revocations=N"),
                        Some(("grants", n)) => g = n.parse().expect("grants=N"),
                        _ => panic!("--state revocations=N,grants=M"),
                    }
                }
                a.state = Some((r, g));
                a.redis = true;
                i += 1;
            }
            "--alg" => {
                a.alg = next.parse().expect("--alg ES256|EdDSA|RS256");
                i += 1;
            }
            "--worker-threads" => {
                a.worker_threads = next.parse().expect("--worker-threads N");
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
    /// `BENCH_CALLGRIND=1`: (instructions, of them signature operations).
    instr: Option<(u64, u64)>,
}

async fn drive(
    url: String,
    body_for: Arc<dyn Fn(usize) -> String + Send + Sync>,
    clients: Vec<reqwest::Client>,
    seconds: f64,
    pid: u32,
    rate: Option<f64>,
    expect: u16,
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
    if callgrind() {
        callgrind_control("-z", pid);
    }
    let cpu0 = cpu_seconds(pid);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    let n_clients = clients.len().max(1);
    for (i, c) in clients.into_iter().enumerate() {
        let url = url.clone();
        let body_for = body_for.clone();
        // Open loop (--rate): client i sends its k-th request at
        // start + (i + k * clients) / rate, and its latency counts from that
        // scheduled moment, so a slow answer that delays the next send is
        // charged to the latency (no coordinated omission).
        let every = rate.map(|r| Duration::from_secs_f64(n_clients as f64 / r));
        let first = rate.map(|r| start + Duration::from_secs_f64(i as f64 / r));
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::with_capacity(100_000));
            let mut n = i;
            let mut k = 0u32;
            while Instant::now() < deadline {
                let t = match (first, every) {
                    (Some(f), Some(e)) => {
                        let at = f + e * k;
                        k += 1;
                        if at >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    _ => Instant::now(),
                };
                let r = c
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body_for(n))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == expect => {
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
        instr: None,
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
    if callgrind() {
        // every client has its answer: nothing is in flight at the dump
        out.instr = Some(callgrind_counts(pid));
    }
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
    // valgrind starts the broker about 50 times slower
    let wait = if callgrind() { 300 } else { 30 };
    let deadline = Instant::now() + Duration::from_secs(wait);
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

/// `BENCH_CALLGRIND=1`: the broker runs under callgrind.
fn callgrind() -> bool {
    std::env::var("BENCH_CALLGRIND").is_ok_and(|v| v == "1")
}

/// Where callgrind writes the broker `name`'s dumps (`<file>.1`, `.2`, …).
fn callgrind_out(d: &Path, name: &str) -> Option<std::path::PathBuf> {
    callgrind().then(|| d.join(format!("{name}.callgrind")))
}

fn callgrind_control(flag: &str, pid: u32) {
    let st = Command::new("callgrind_control")
        .args([flag, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("callgrind_control (valgrind) installed");
    assert!(st.success(), "callgrind_control {flag} {pid} failed");
}

/// Instructions (total, signature operations) counted since the last
/// `callgrind_control -z`: dumps them and reads the dump with
/// `callgrind_annotate --inclusive=yes`.
fn callgrind_counts(pid: u32) -> (u64, u64) {
    callgrind_control("-d", pid);
    // the newest dump
    let dir = CALLGRIND_DIR.get().expect("callgrind dir");
    let newest = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".callgrind"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("a callgrind dump");
    let out = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100", "--auto=no"])
        .arg(&newest)
        .output()
        .expect("callgrind_annotate");
    let text = String::from_utf8_lossy(&out.stdout);
    // BENCH_CALLGRIND_KEEP=DIR: keep each dump there for callgrind_annotate
    if let Ok(keep) = std::env::var("BENCH_CALLGRIND_KEEP") {
        let name = newest.file_name().unwrap_or_default();
        let _ = std::fs::create_dir_all(&keep);
        std::fs::copy(&newest, Path::new(&keep).join(name)).expect("BENCH_CALLGRIND_KEEP");
    }
    let count = |l: &str| -> u64 {
        l.split_whitespace()
            .next()
            .unwrap_or("0")
            .replace(',', "")
            .parse()
            .unwrap_or(0)
    };
    let total = text
        .lines()
        .find(|l| l.contains("PROGRAM TOTALS"))
        .map(count)
        .expect("callgrind totals");
    // inclusive cost of the signature operations (their hashing included,
    // as in the raw measurement)
    // function lines: `  554,586,161 (56.74%)  /aws-lc/…/digestsign.c:aws_lc_0_47_0_EVP_DigestSign [/path/to/tessera]`
    let sig: u64 = text
        .lines()
        .filter(|l| l.contains("%)") && l.trim_end().ends_with(']'))
        .filter(|l| {
            let f = l.rsplit_once(" [").map_or("", |x| x.0);
            f.ends_with("_EVP_DigestSign") || f.ends_with("_EVP_DigestVerify")
        })
        .map(count)
        .sum();
    (total, sig)
}

static CALLGRIND_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(a));
}

const AGENT: &str = "spiffe://example.org/agent/bench";
const PLANNER: &str = "spiffe://example.org/planner/bench";
const PAYMENTS: &str = "spiffe://example.org/service/payments-api";
const API: &str = "https://api.example.com";

/// Starts one `tessera serve` on free ports; returns (guard, port, pid).
fn start_broker(
    d: &Path,
    name: &str,
    alg: SigningAlgorithm,
    store: &str,
    issuer: &TestIssuer,
    worker_threads: u32,
) -> (ChildGuard, u16, u32) {
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
worker_threads = {worker_threads}
[tokens]
signing_keys = "{d}/signing"
algorithm = "{alg}"
[store]
url = "{store}"
# The load generator is one peer driving ~10k requests/s: the per-peer
# pre-authentication limit would measure itself, not the broker.
[limits]
peer_rate = 0
# Audit lines go to stdout as by default (a pipe the benchmark drains, or
# /dev/null with BENCH_STDOUT=null); BENCH_AUDIT_SINK=off
# measures the broker without its line sink (the store stream stays).
[audit]
sink = "{audit_sink}"
{guard}
[introspection]
subjects = ["{PAYMENTS}"]
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
audiences = ["{API}"]
scopes = ["tickets:read", "tickets:write"]
[[policies]]
name = "ci"
owner = "bench@example.com"
match = {{ issuer = "ci", subject = "repo:acme/app:ref:refs/heads/*", claims = {{ "env" = "prod" }} }}
audiences = ["https://deploy.example.com"]
scopes = ["deploy:read", "deploy:write"]
[[policies]]
name = "users"
owner = "bench@example.com"
match = {{ issuer = "ci", subject = "user:*" }}
audiences = ["{API}"]
scopes = ["tickets:read", "tickets:write"]
[[policies]]
name = "planner"
match = {{ issuer = "mtls", subject = "{PLANNER}" }}
audiences = ["{API}"]
scopes = ["tickets:read", "tickets:write"]
may_act_for = ["ci"]
max_depth = 3
"#,
        d = d.display(),
        alg = alg.as_str(),
        audit_sink = std::env::var("BENCH_AUDIT_SINK").unwrap_or_else(|_| "stdout".into()),
        // BENCH_GUARD=on: the anomaly guard on, with limits no client
        // reaches, so every exchange pays its check and its record (with
        // --store redis, in Redis) and nothing else changes.
        guard = if std::env::var("BENCH_GUARD").is_ok_and(|v| v == "on") {
            "[guard]\nenabled = true\nwindow = \"1m\"\nmax_rate = 100000000\n"
        } else {
            ""
        },
        iss = issuer.url,
        jwks = issuer.jwks_uri(),
        ica = issuer.ca_path.display()
    );
    let cfg_path = d.join(format!("{name}.toml"));
    std::fs::write(&cfg_path, cfg).unwrap();
    // The broker logs at its default level (audit lines included) to a file,
    // as in production; only the location differs.
    let log = std::fs::File::create(d.join(format!("{name}.log"))).unwrap();
    let mut cmd = match callgrind_out(d, name) {
        Some(out) => {
            let mut c = Command::new("valgrind");
            c.args([
                "--tool=callgrind",
                "--quiet",
                &format!("--callgrind-out-file={}", out.display()),
                &broker_bin(),
            ]);
            c
        }
        None => Command::new(broker_bin()),
    };
    let child = cmd
        .args(["serve", "--config", cfg_path.to_str().unwrap()])
        .env(
            "RUST_LOG",
            std::env::var("BENCH_BROKER_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(match bench_stdout() {
            BenchStdout::Pipe => Stdio::piped(),
            BenchStdout::Null => Stdio::null(),
        })
        .stderr(log)
        .spawn()
        .expect("start tessera serve");
    let mut child = child;
    if let Some(mut out) = child.stdout.take() {
        // The log collector: drains the pipe as a container runtime or
        // journald would (its CPU is not the broker's).
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while matches!(std::io::Read::read(&mut out, &mut buf), Ok(n) if n > 0) {}
        });
    }
    let pid = child.id();
    let guard = ChildGuard(child);
    wait_ready(ops);
    (guard, port, pid)
}

/// The broker binary: this build's, or `BENCH_BROKER_BIN` (another build,
/// to compare two builds in one window on a noisy machine).
fn broker_bin() -> String {
    std::env::var("BENCH_BROKER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tessera").into())
}

/// Where the broker's standard output (its audit lines) goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BenchStdout {
    /// A pipe the benchmark drains, as a container runtime's log FIFO or
    /// journald's socket (the default: what production looks like).
    Pipe,
    /// `/dev/null`.
    Null,
}

fn bench_stdout() -> BenchStdout {
    match std::env::var("BENCH_STDOUT").as_deref() {
        Ok("null") => BenchStdout::Null,
        Ok("pipe") | Err(_) => BenchStdout::Pipe,
        Ok(other) => panic!("BENCH_STDOUT must be pipe or null, not {other:?}"),
    }
}

/// `used_memory` of a redis-server, bytes.
fn used_memory(url: &str) -> u64 {
    let o = Command::new("redis-cli")
        .args(["-u", url, "INFO", "memory"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO memory")
}

/// Seeds `url` through the store API (the broker's own key format) with
/// live revocations (70% jti, 20% task, 10% subject, none covering the
/// benchmark's tokens) and live grants of other subjects. Returns a JSON
/// report with the bytes of Redis memory per entry.
async fn seed(url: &str, revocations: u64, grants: u64) -> serde_json::Value {
    use tessera::store::{Grant, Revocation, RevocationKind, Stores};
    const WORKERS: u64 = 64;
    let stores = Stores::open(url, "tessera", Duration::from_secs(10))
        .await
        .unwrap();
    let now = tessera::testkit::now();
    let m0 = used_memory(url);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let st = stores.revocations.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < revocations {
                let (kind, value) = match i % 10 {
                    0..=6 => (RevocationKind::Jti, uuid::Uuid::new_v4().to_string()),
                    7 | 8 => (RevocationKind::Task, format!("seed-task-{i}")),
                    _ => (
                        RevocationKind::Subject,
                        format!("spiffe://example.org/seed/s{i}"),
                    ),
                };
                st.revoke(Revocation {
                    kind,
                    value,
                    revoked_at: now,
                    expires_at: now + 3 * 3600,
                })
                .await
                .unwrap();
                i += WORKERS;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rev_secs = t.elapsed().as_secs_f64();
    let m1 = used_memory(url);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let st = stores.grants.clone();
        tasks.push(tokio::spawn(async move {
            let (mut i, mut refused) = (w, 0u64);
            while i < grants {
                let g = Grant {
                    id: uuid::Uuid::new_v4().to_string(),
                    subject: format!("spiffe://example.org/seed/g{}", i / 50),
                    scopes: vec!["tickets:read".into(), "tickets:write".into()],
                    audience: API.into(),
                    task: None,
                    uses: Some(5),
                    remaining: Some(5),
                    created_at: now,
                    expires_at: now + 3 * 3600,
                    created_by: "spiffe://example.org/operator/bench".into(),
                };
                if st.create(&g).await.is_err() {
                    refused += 1;
                }
                i += WORKERS;
            }
            refused
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    let grant_secs = t.elapsed().as_secs_f64();
    let m2 = used_memory(url);
    let live = stores.grants.list(None, now).await.map(|g| g.len()).ok();
    json!({
        "revocations": revocations, "grants": grants, "grants_refused": refused,
        "grants_listed_sample": live,
        "seed_revocations_s": rev_secs, "seed_grants_s": grant_secs,
        "used_memory_empty": m0, "used_memory_after_revocations": m1, "used_memory_after_grants": m2,
        "bytes_per_revocation": if revocations > 0 { (m1 - m0) as f64 / revocations as f64 } else { 0.0 },
        "bytes_per_grant": if grants > refused { (m2 - m1) as f64 / (grants - refused) as f64 } else { 0.0 },
    })
}

/// A pool of 256 tokens of the agent minted by the broker at `port`
/// (parents for re-exchange, tokens to introspect).
async fn broker_tokens(c: &reqwest::Client, port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..256 {
        let r: serde_json::Value = c
            .post(format!("https://127.0.0.1:{port}/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Amtls&audience=https%3A%2F%2Fapi.example.com&scope=tickets%3Aread%20tickets%3Awrite&task=bench-{i}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.push(
            r["access_token"]
                .as_str()
                .expect("a parent token")
                .to_string(),
        );
    }
    out
}

fn pct_enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The pid of a redis-server (`INFO server` `process_id`).
fn redis_pid(url: &str) -> u32 {
    let o = Command::new("redis-cli")
        .args(["-u", url, "INFO", "server"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("process_id in INFO server")
}

/// Scripts (`EVALSHA`) a redis-server ran so far (`INFO commandstats`):
/// the audit append's and, with BENCH_GUARD=on, the anomaly guard's.
fn redis_scripts(url: &str) -> u64 {
    let o = Command::new("redis-cli")
        .args(["-u", url, "INFO", "commandstats"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

struct Broker {
    label: &'static str,
    port: u16,
    pid: u32,
    /// Its redis-server's pid, if any.
    redis_pid: Option<u32>,
    /// Its redis-server's URL, if any.
    redis_url: Option<String>,
    /// Agent tokens this broker minted.
    tokens: Arc<Vec<String>>,
}

async fn run(a: Args) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _ = CALLGRIND_DIR.set(d.to_path_buf());
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
    let agent = ca.issue(&LeafSpec::client_spiffe(AGENT)).unwrap();
    let planner = ca.issue(&LeafSpec::client_spiffe(PLANNER)).unwrap();
    let payments = ca.issue(&LeafSpec::client_spiffe(PAYMENTS)).unwrap();
    generate_key_file(&d.join("signing"), a.alg).unwrap();
    let issuer = TestIssuer::start(&d.join("issuer"), SigningAlgorithm::RS256)
        .await
        .unwrap();

    // Stores: memory, one redis-server, or (with --state) an empty one and a
    // seeded one side by side.
    let mut redis_servers = Vec::new();
    let mut seeded = serde_json::Value::Null;
    let stores: Vec<(&'static str, String)> = if !a.redis {
        vec![("memory", "memory://".to_string())]
    } else {
        let empty = tessera::testkit_redis::RedisServer::start().expect("redis-server");
        let mut v = vec![(
            if a.state.is_some() { "empty" } else { "redis" },
            empty.url(),
        )];
        redis_servers.push(empty);
        if let Some((r, g)) = a.state {
            let full = tessera::testkit_redis::RedisServer::start().expect("redis-server");
            eprintln!("seeding {r} revocations and {g} grants…");
            seeded = seed(&full.url(), r, g).await;
            eprintln!("seeded: {seeded}");
            v.push(("seeded", full.url()));
            redis_servers.push(full);
        }
        v
    };
    let agent_c = client(ca.cert_der(), Some(&agent), a.h2);
    let mut guards = Vec::new();
    let mut brokers = Vec::new();
    for (label, url) in &stores {
        let (g, port, pid) = start_broker(d, label, a.alg, url, &issuer, a.worker_threads);
        guards.push(g);
        let tokens = if a
            .paths
            .iter()
            .any(|p| *p == "reexchange" || *p == "introspect")
        {
            broker_tokens(&agent_c, port).await
        } else {
            Vec::new()
        };
        brokers.push(Broker {
            label,
            port,
            pid,
            redis_pid: url.starts_with("redis://").then(|| redis_pid(url)),
            redis_url: url.starts_with("redis://").then(|| url.to_string()),
            tokens: Arc::new(tokens),
        });
    }

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
    // the broker's own signature, verified (re-exchange, introspection)
    let own = signer.sign(input.as_bytes()).unwrap();
    let own_vk = VerifyingKey::from_jwk(signer.public_jwk().as_object().unwrap()).unwrap();
    let own_verify_us = per_op_us(1500, || {
        own_vk.verify(input.as_bytes(), &own).unwrap();
    });

    let te = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange";
    let mut results = Vec::new();
    let rounds = a
        .rounds
        .unwrap_or(if a.state.is_some() { 5 } else { 1 })
        .max(1);
    let round_secs = a.seconds as f64 / f64::from(rounds);
    for path in &a.paths {
        // the load for every store, built once
        let mut loads = Vec::new();
        for b in &brokers {
            let url = if *path == "introspect" {
                format!("https://127.0.0.1:{}/introspect", b.port)
            } else if *path == "floor" {
                format!("https://127.0.0.1:{}/bench-floor", b.port)
            } else {
                format!("https://127.0.0.1:{}/token", b.port)
            };
            let (clients, body_for): (
                Vec<reqwest::Client>,
                Arc<dyn Fn(usize) -> String + Send + Sync>,
            ) = match *path {
                "mtls" | "floor" => (
                    (0..a.clients)
                        .map(|_| client(ca.cert_der(), Some(&agent), a.h2))
                        .collect(),
                    Arc::new(move |_| {
                        format!("{te}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Amtls&audience=https%3A%2F%2Fapi.example.com&scope=tickets%3Aread")
                    }),
                ),
                "oidc" => {
                    // a pool of distinct subject tokens, as many workloads would present
                    let pool: Vec<String> = (0..256).map(|i| {
                        let mut c = issuer.claims(&format!("repo:acme/app:ref:refs/heads/b{i}"), "tessera");
                        c["env"] = "prod".into();
                        c["exp"] = (tessera::testkit::now() + 3600).into();
                        format!("{te}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&subject_token={}&audience=https%3A%2F%2Fdeploy.example.com&scope=deploy%3Aread", issuer.sign(&c))
                    }).collect();
                    let pool = Arc::new(pool);
                    (
                        (0..a.clients)
                            .map(|_| client(ca.cert_der(), None, a.h2))
                            .collect(),
                        Arc::new(move |n| pool[n % pool.len()].clone()),
                    )
                }
                "reexchange" => {
                    // the agent narrows one of its own tokens, over its certificate
                    let pool: Arc<Vec<String>> = Arc::new(b.tokens.iter().map(|t| {
                        format!("{te}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token&subject_token={t}&audience=https%3A%2F%2Fapi.example.com&scope=tickets%3Aread")
                    }).collect());
                    (
                        (0..a.clients)
                            .map(|_| client(ca.cert_der(), Some(&agent), a.h2))
                            .collect(),
                        Arc::new(move |n| pool[n % pool.len()].clone()),
                    )
                }
                "delegation" => {
                    // the planner (its certificate is the actor) acts for users
                    let actor = pct_enc(&tessera::identity::peer::thumbprint_sha256(
                        &planner.cert_der,
                    ));
                    let pool: Vec<String> = (0..256).map(|i| {
                        let mut c = issuer.claims(&format!("user:u{i}"), "tessera");
                        c["exp"] = (tessera::testkit::now() + 3600).into();
                        format!("{te}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&subject_token={}&actor_token={actor}&actor_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Amtls&audience=https%3A%2F%2Fapi.example.com&scope=tickets%3Aread", issuer.sign(&c))
                    }).collect();
                    let pool = Arc::new(pool);
                    (
                        (0..a.clients)
                            .map(|_| client(ca.cert_der(), Some(&planner), a.h2))
                            .collect(),
                        Arc::new(move |n| pool[n % pool.len()].clone()),
                    )
                }
                _ => {
                    let pool: Arc<Vec<String>> =
                        Arc::new(b.tokens.iter().map(|t| format!("token={t}")).collect());
                    (
                        (0..a.clients)
                            .map(|_| client(ca.cert_der(), Some(&payments), a.h2))
                            .collect(),
                        Arc::new(move |n| pool[n % pool.len()].clone()),
                    )
                }
            };
            loads.push((url, clients, body_for));
        }
        // interleaved rounds: every store in turn, `rounds` times
        let mut outcomes: Vec<Vec<(Outcome, Option<f64>)>> =
            brokers.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (k, b) in brokers.iter().enumerate() {
                let (url, clients, body_for) = &loads[k];
                let redis_cpu0 = b.redis_pid.map(cpu_seconds);
                let scripts0 = b.redis_url.as_deref().map(redis_scripts);
                let o = drive(
                    url.clone(),
                    body_for.clone(),
                    clients.clone(),
                    round_secs,
                    b.pid,
                    a.rate,
                    if *path == "floor" { 404 } else { 200 },
                )
                .await;
                let redis_cpu_us = match (b.redis_pid, redis_cpu0) {
                    (Some(p), Some(c0)) => Some((cpu_seconds(p) - c0) * 1e6 / o.ok.max(1) as f64),
                    _ => None,
                };
                if let (Some(u), Some(s0)) = (b.redis_url.as_deref(), scripts0) {
                    eprintln!(
                        "{path} {}: {:.3} EVALSHA per exchange (audit append, and the guard's checks)",
                        b.label,
                        (redis_scripts(u) - s0) as f64 / o.ok.max(1) as f64
                    );
                }
                outcomes[k].push((o, redis_cpu_us));
            }
        }
        let raw = match *path {
            "oidc" | "delegation" => verify_us + sign_us,
            "reexchange" => own_verify_us + sign_us,
            "introspect" => own_verify_us,
            _ => sign_us,
        };
        for (b, runs) in brokers.iter().zip(outcomes) {
            let median = |mut v: Vec<f64>| {
                v.sort_by(|x, y| x.total_cmp(y));
                v[v.len() / 2]
            };
            let per_s = median(runs.iter().map(|(o, _)| o.ok as f64 / o.secs).collect());
            let cpu_us = median(
                runs.iter()
                    .map(|(o, _)| o.cpu * 1e6 / o.ok.max(1) as f64)
                    .collect(),
            );
            let busy = median(runs.iter().map(|(o, _)| o.cpu / o.secs).collect());
            let redis_cpu_us = if b.redis_pid.is_some() {
                Some(median(runs.iter().map(|(_, r)| r.unwrap_or(0.0)).collect()))
            } else {
                None
            };
            let (ok, failed, secs) = runs.iter().fold((0, 0, 0.0), |(k, f, t), (o, _)| {
                (k + o.ok, f + o.failed, t + o.secs)
            });
            // callgrind: instructions over every round (deterministic: no median needed)
            let (instr, sig_instr) = runs
                .iter()
                .filter_map(|(o, _)| o.instr)
                .fold((0u64, 0u64), |(t, s), (a, b)| (t + a, s + b));
            let instr = runs.iter().any(|(o, _)| o.instr.is_some()).then(|| {
                let per = |x: u64| x as f64 / ok.max(1) as f64;
                json!({
                    "instructions_per_op": per(instr),
                    "signature_instructions_per_op": per(sig_instr),
                    "instructions_to_signature_ratio": instr as f64 / sig_instr.max(1) as f64,
                })
            });
            let mut lat: Vec<u32> = runs.into_iter().flat_map(|(o, _)| o.lat_us).collect();
            lat.sort_unstable();
            results.push(json!({
                "store": b.label, "path": path, "clients": a.clients, "seconds": secs, "rounds": rounds, "exchanges": ok, "failed": failed,
                "exchanges_per_s": per_s, "p50_ms": pct(&lat, 0.50), "p99_ms": pct(&lat, 0.99), "p999_ms": pct(&lat, 0.999),
                "broker_cpu_us_per_exchange": cpu_us, "broker_cores_busy": busy,
                "redis_cpu_us_per_op": redis_cpu_us,
                "raw_signature_us": raw, "cpu_to_raw_ratio": cpu_us / raw,
                "callgrind": instr,
            }));
        }
    }
    let rss: Vec<serde_json::Value> = brokers
        .iter()
        .map(|b| json!({"store": b.label, "peak_rss_mib": peak_rss_kib(b.pid) as f64 / 1024.0}))
        .collect();
    let summary = json!({
        "alg": a.alg.as_str(), "http": if a.h2 { "h2" } else { "http/1.1 keep-alive" },
        "audit_sink": std::env::var("BENCH_AUDIT_SINK").unwrap_or_else(|_| "stdout".into()),
        "stdout": if bench_stdout() == BenchStdout::Pipe { "pipe" } else { "/dev/null" },
        "broker_bin": broker_bin(),
        "offered_rate": a.rate, "worker_threads": a.worker_threads,
        "raw_sign_us": sign_us, "raw_verify_rs256_us": verify_us, "raw_verify_own_us": own_verify_us,
        "broker_peak_rss": rss, "state": seeded,
        "results": results,
    });
    drop(guards);
    if a.json {
        println!("{summary}");
        return;
    }
    println!(
        "tessera exchange benchmark: {} clients, {}, {} s per path and store ({} interleaved rounds, median round), broker signs {}, {}, audit sink {} (stdout: {})",
        a.clients,
        match a.rate {
            Some(r) => format!("open loop at {r} exchanges/s offered"),
            None => "closed loop".into(),
        },
        a.seconds,
        rounds,
        a.alg.as_str(),
        summary["http"].as_str().unwrap(),
        summary["audit_sink"].as_str().unwrap(),
        summary["stdout"].as_str().unwrap(),
    );
    println!(
        "broker: {} (worker threads: {})\nraw cost in this run: sign {alg} {:.1} µs, verify {alg} {:.1} µs, verify RS256 {:.1} µs; broker peak RSS {}",
        summary["broker_bin"].as_str().unwrap(),
        match a.worker_threads {
            0 => format!(
                "{} (one per CPU)",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
            n => n.to_string(),
        },
        sign_us,
        own_verify_us,
        verify_us,
        rss.iter()
            .map(|r| format!(
                "{} {:.1} MiB",
                r["store"].as_str().unwrap(),
                r["peak_rss_mib"].as_f64().unwrap()
            ))
            .collect::<Vec<_>>()
            .join(", "),
        alg = a.alg.as_str(),
    );
    if !seeded.is_null() {
        println!(
            "state: {} revocations seeded in {:.1} s, {:.0} bytes of Redis memory each; {} grants ({} refused) in {:.1} s, {:.0} bytes each",
            seeded["revocations"],
            seeded["seed_revocations_s"].as_f64().unwrap(),
            seeded["bytes_per_revocation"].as_f64().unwrap(),
            seeded["grants"],
            seeded["grants_refused"],
            seeded["seed_grants_s"].as_f64().unwrap(),
            seeded["bytes_per_grant"].as_f64().unwrap(),
        );
    }
    println!("| store | path | ops/s | p50 ms | p99 ms | p99.9 ms | broker CPU µs/op | raw signature µs | CPU / raw | redis CPU µs/op | failed |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let rows = summary["results"].as_array().unwrap();
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2}× | {} | {} |",
            r["store"].as_str().unwrap(),
            r["path"].as_str().unwrap(),
            r["exchanges_per_s"].as_f64().unwrap(),
            r["p50_ms"].as_f64().unwrap(),
            r["p99_ms"].as_f64().unwrap(),
            r["p999_ms"].as_f64().unwrap(),
            r["broker_cpu_us_per_exchange"].as_f64().unwrap(),
            r["raw_signature_us"].as_f64().unwrap(),
            r["cpu_to_raw_ratio"].as_f64().unwrap(),
            r["redis_cpu_us_per_op"]
                .as_f64()
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "—".into()),
            r["failed"]
        );
    }
    if callgrind() {
        println!();
        println!("callgrind (user-space instructions executed by the broker per operation; times above are under valgrind)");
        println!("(valgrind hides AVX-512 and ADX from aws-lc, so its signatures take more instructions than natively: compare builds on the overhead column, not this ratio with the native CPU/raw)");
        println!("| store | path | operations | instructions/op | signature ops | overhead (the rest) | instructions / signature |");
        println!("|---|---|---|---|---|---|---|");
        for r in rows {
            let c = &r["callgrind"];
            let total = c["instructions_per_op"].as_f64().unwrap_or(0.0);
            let sig = c["signature_instructions_per_op"].as_f64().unwrap_or(0.0);
            println!(
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2}× |",
                r["store"].as_str().unwrap(),
                r["path"].as_str().unwrap(),
                r["exchanges"],
                total,
                sig,
                total - sig,
                c["instructions_to_signature_ratio"].as_f64().unwrap_or(0.0),
            );
        }
    }
    if !seeded.is_null() {
        println!();
        println!("cost vs state: empty redis-server vs seeded");
        println!("| path | empty ops/s | seeded ops/s | Δ ops/s | empty CPU µs/op | seeded CPU µs/op | Δ CPU | empty redis µs/op | seeded redis µs/op |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for path in &a.paths {
            let find = |store: &str| {
                rows.iter()
                    .find(|r| r["store"] == store && r["path"] == *path)
                    .unwrap()
            };
            let (e, f) = (find("empty"), find("seeded"));
            let (eo, fo) = (
                e["exchanges_per_s"].as_f64().unwrap(),
                f["exchanges_per_s"].as_f64().unwrap(),
            );
            let (ec, fc) = (
                e["broker_cpu_us_per_exchange"].as_f64().unwrap(),
                f["broker_cpu_us_per_exchange"].as_f64().unwrap(),
            );
            let redis = |r: &serde_json::Value| r["redis_cpu_us_per_op"].as_f64().unwrap_or(0.0);
            println!(
                "| {path} | {eo:.0} | {fo:.0} | {:+.1}% | {ec:.1} | {fc:.1} | {:+.1}% | {:.1} | {:.1} |",
                (fo / eo - 1.0) * 100.0,
                (fc / ec - 1.0) * 100.0,
                redis(e),
                redis(f)
            );
        }
    }
    drop(redis_servers);
}
