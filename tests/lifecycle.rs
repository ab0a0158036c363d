//! Process lifecycle with real `tessera serve` processes: SIGHUP reload
//! (R13), signing-key rotation under load (R8), SIGTERM drain and SIGKILL
//! (R7). Plus one in-process test that reloads between two configurations
//! while exchanges run, and checks that every answer came from one of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera::testkit::free_port;

use common::invariants::{Expect, Ledger};
use common::*;
use serde_json::{json, Value};
use tessera::mint::keyring::{generate_key_file, SigningAlgorithm, SigningKey};
use tessera::pki::{Ca, IssuedCert, LeafSpec};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const ISS: &str = "https://tessera.life";
/// Every wait in this file gives up after this long.
const DEADLINE: Duration = Duration::from_secs(20);

const AGENTS_POLICY: &str = r#"
[[policies]]
name = "agents"
match = { issuer = "mtls", subject = "spiffe://example.org/agent/*" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read", "tickets:write", "tickets:delete"]
jit_scopes = ["tickets:delete"]
"#;

/// Load tests send thousands of requests a second from one loopback address:
/// the per-peer pre-authentication limit is not what they test.
const NO_PEER_LIMIT: &str = "\n[limits]\npeer_rate = 0\n";

const PAYMENTS_POLICY: &str = r#"
[[policies]]
name = "payments"
match = { issuer = "mtls", subject = "spiffe://example.org/service/payments-api" }
audiences = ["https://api.example.com"]
scopes = ["ledger:read"]
"#;

/// A directory with a CA, the broker's TLS material, client certificates and
/// one active signing key (named as if generated long ago).
struct Home {
    dir: tempfile::TempDir,
    ca: Ca,
    agent: IssuedCert,
    operator: IssuedCert,
    payments: IssuedCert,
}

impl Home {
    fn new() -> Home {
        init();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = Ca::generate("lifecycle CA").unwrap();
        std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
        let server = ca
            .issue(&LeafSpec::server(
                &["localhost"],
                &["127.0.0.1".parse().unwrap()],
            ))
            .unwrap();
        std::fs::write(d.join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(d.join("server-key.pem"), &server.key_pem).unwrap();
        let k = generate_key_file(&d.join("signing"), SigningAlgorithm::ES256).unwrap();
        std::fs::rename(k, d.join("signing/20200101T000000Z-es256.pem")).unwrap();
        Home {
            agent: ca.issue(&LeafSpec::client_spiffe(AGENT)).unwrap(),
            operator: ca.issue(&LeafSpec::client_spiffe(OPERATOR)).unwrap(),
            payments: ca.issue(&LeafSpec::client_spiffe(PAYMENTS)).unwrap(),
            ca,
            dir,
        }
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn client(&self, cert: &IssuedCert) -> reqwest::Client {
        client_for(self.ca.cert_der(), Some(cert))
    }
}

/// What goes into one config file.
#[derive(Clone)]
struct Spec {
    port: u16,
    ops: u16,
    store: String,
    server_extra: String,
    tokens_extra: String,
    audit: String,
    rest: String,
}

impl Spec {
    fn new(rest: &str) -> Spec {
        Spec {
            port: free_port(),
            ops: free_port(),
            store: "memory://".into(),
            server_extra: String::new(),
            tokens_extra: String::new(),
            audit: "sink = \"off\"".into(),
            rest: rest.into(),
        }
    }

    fn render(&self, d: &Path) -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
ops_listen = "127.0.0.1:{ops}"
issuer = "{ISS}"
tls_cert = "{d}/server.pem"
tls_key = "{d}/server-key.pem"
client_ca = ["{d}/ca.pem"]
{server_extra}
[tokens]
signing_keys = "{d}/signing"
{tokens_extra}
[store]
url = "{store}"
[admin]
subjects = ["{OPERATOR}"]
[introspection]
subjects = ["{PAYMENTS}"]
[audit]
{audit}
{rest}
"#,
            port = self.port,
            ops = self.ops,
            d = d.display(),
            server_extra = self.server_extra,
            tokens_extra = self.tokens_extra,
            store = self.store,
            audit = self.audit,
            rest = self.rest,
        )
    }
}

/// A `tessera serve` child process, killed when dropped.
struct Broker {
    child: Child,
    port: u16,
    ops: u16,
    path: PathBuf,
    log: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    fn start(home: &Home, name: &str, spec: &Spec) -> Broker {
        let path = home.d().join(format!("{name}.toml"));
        std::fs::write(&path, spec.render(home.d())).unwrap();
        let log = home.d().join(format!("{name}.log"));
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Broker {
            child,
            port: spec.port,
            ops: spec.ops,
            path,
            log,
        }
    }

    /// Like [`Broker::start`], with standard output a pipe the test holds
    /// (as under a container runtime or systemd).
    fn start_piped(home: &Home, name: &str, spec: &Spec) -> (Broker, std::process::ChildStdout) {
        let path = home.d().join(format!("{name}.toml"));
        std::fs::write(&path, spec.render(home.d())).unwrap();
        let log = home.d().join(format!("{name}.log"));
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let b = Broker {
            child,
            port: spec.port,
            ops: spec.ops,
            path,
            log,
        };
        (b, out)
    }

    fn rewrite(&self, home: &Home, spec: &Spec) {
        std::fs::write(&self.path, spec.render(home.d())).unwrap();
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} failed");
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{}/readyz", self.ops)).await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("broker did not become ready; log:\n{}", self.logs());
    }

    /// `tessera_config_reloads_total{outcome="…"}` as the process reports it.
    async fn reloads(&self, outcome: &str) -> u64 {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.ops))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let series = format!("tessera_config_reloads_total{{outcome=\"{outcome}\"}}");
        text.lines()
            .find(|l| l.starts_with(&series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Sends SIGHUP and waits until the reload with `outcome` was counted.
    async fn reload(&self, outcome: &str) {
        let before = self.reloads(outcome).await;
        self.signal("HUP");
        let deadline = Instant::now() + DEADLINE;
        while self.reloads(outcome).await <= before {
            assert!(
                Instant::now() < deadline,
                "no {outcome} reload counted; log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    async fn audit(&self, operator: &reqwest::Client) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = "0".to_string();
        loop {
            let v: Value = operator
                .get(self.url(&format!("/admin/v1/audit?after={after}&limit=500")))
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

    async fn jwks_kids(&self, c: &reqwest::Client) -> Vec<String> {
        let v: Value = c
            .get(self.url("/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    }
}

/// An mTLS exchange at `port` for `scope` (the transport error, if any).
async fn exchange(
    c: &reqwest::Client,
    port: u16,
    scope: &str,
) -> Result<(u16, Value), reqwest::Error> {
    let r = c
        .post(format!("https://127.0.0.1:{port}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&[
            ("grant_type", TE),
            ("subject_token_type", MTLS),
            ("audience", API),
            ("scope", scope),
        ]))
        .send()
        .await?;
    let s = r.status().as_u16();
    let v: Value = r.json().await?;
    Ok((s, v))
}

async fn introspect(c: &reqwest::Client, b: &Broker, token: &str) -> Value {
    c.post(b.url("/introspect"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&[("token", token)]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn reload_records<'a>(records: &'a [Value], reason: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["event"] == "config_loaded" && r["reason"] == reason)
        .collect()
}

fn kid_of_file(p: &Path) -> String {
    SigningKey::from_pem(&std::fs::read(p).unwrap())
        .unwrap()
        .kid()
        .to_string()
}

// ---------------------------------------------------------------- R13 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_invalid_reload_is_rejected_and_the_old_config_keeps_serving() {
    let home = Home::new();
    let spec = Spec::new(AGENTS_POLICY);
    let b = Broker::start(&home, "a", &spec);
    b.wait_ready().await;
    let agent = home.client(&home.agent);
    let operator = home.client(&home.operator);
    let ledger = Ledger::new();
    let served = |(s, v): (u16, Value)| {
        ledger.record(s, &v);
        assert_eq!(s, 200, "the configuration in force must keep serving: {v}");
    };
    served(exchange(&agent, b.port, "tickets:read").await.unwrap());

    // A syntax error.
    std::fs::write(&b.path, "[server\nlisten = ").unwrap();
    b.reload("rejected").await;
    served(exchange(&agent, b.port, "tickets:read").await.unwrap());

    // Valid TOML, invalid meaning: a policy naming an issuer that does not exist.
    let mut bad = spec.clone();
    bad.rest = format!(
        "{AGENTS_POLICY}\n{}",
        AGENTS_POLICY
            .replace("\"agents\"", "\"ghost\"")
            .replace("issuer = \"mtls\"", "issuer = \"nobody\"")
    );
    b.rewrite(&home, &bad);
    b.reload("rejected").await;
    served(exchange(&agent, b.port, "tickets:read").await.unwrap());

    // A key that needs a restart: refused as a whole, naming the key, even
    // though the policy change in the same file is valid.
    let mut moved = spec.clone();
    moved.port = free_port();
    moved.rest = PAYMENTS_POLICY.into();
    b.rewrite(&home, &moved);
    b.reload("rejected").await;
    served(exchange(&agent, b.port, "tickets:read").await.unwrap());

    assert_eq!(b.reloads("rejected").await, 3);
    assert_eq!(b.reloads("ok").await, 0);
    let records = b.audit(&operator).await;
    let rejected = reload_records(&records, "reload_rejected");
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    let details: Vec<&str> = rejected
        .iter()
        .map(|r| r["detail"].as_str().unwrap())
        .collect();
    assert!(details[0].contains("line "), "{}", details[0]);
    assert!(
        details[1].contains("policies[1].match.issuer") && details[1].contains("nobody"),
        "{}",
        details[1]
    );
    assert!(
        details[2].contains("server.listen") && details[2].contains("restart"),
        "{}",
        details[2]
    );
    assert!(reload_records(&records, "reload").is_empty());
    assert!(b.logs().contains("configuration reload rejected"));
    ledger.check(&records, &Expect::default());

    // The same through the admin API (`tessera reload`): refused with the
    // cause, then applied once the file is fixed.
    let d = home.d();
    std::fs::write(d.join("operator.pem"), &home.operator.cert_pem).unwrap();
    std::fs::write(d.join("operator-key.pem"), &home.operator.key_pem).unwrap();
    let cli = || {
        let o = Command::new(BIN)
            .arg("reload")
            .args(["--url", &b.url("")])
            .arg("--ca")
            .arg(d.join("ca.pem"))
            .arg("--cert")
            .arg(d.join("operator.pem"))
            .arg("--key")
            .arg(d.join("operator-key.pem"))
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // Only operators may reload.
    let r = agent.post(b.url("/admin/v1/reload")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let (code, _, err) = cli();
    assert_eq!(code, Some(1));
    assert!(err.contains("server.listen"), "{err}");
    let mut fixed = spec.clone();
    fixed.rest = format!("{AGENTS_POLICY}\n{PAYMENTS_POLICY}");
    b.rewrite(&home, &fixed);
    let (code, out, err) = cli();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("policies +[payments] -[] ~[]"), "{out}");
    assert_eq!(b.reloads("rejected").await, 4);
    assert_eq!(b.reloads("ok").await, 1);
    let records = b.audit(&operator).await;
    let ok = reload_records(&records, "reload");
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0]["client"], OPERATOR, "the audit names who reloaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_removed_policy_denies_at_once_while_minted_tokens_live_until_exp() {
    let home = Home::new();
    let mut spec = Spec::new(&format!("{AGENTS_POLICY}\n{PAYMENTS_POLICY}"));
    let b = Broker::start(&home, "a", &spec);
    b.wait_ready().await;
    let agent = home.client(&home.agent);
    let payments = home.client(&home.payments);
    let ledger = Ledger::new();
    let (s, v) = exchange(&agent, b.port, "tickets:read").await.unwrap();
    ledger.record(s, &v);
    assert_eq!(s, 200, "{v}");
    let minted = v["access_token"].as_str().unwrap().to_string();

    spec.rest = PAYMENTS_POLICY.into();
    b.rewrite(&home, &spec);
    b.reload("ok").await;

    // The very next request is decided by the new policies.
    let (s, v) = exchange(&agent, b.port, "tickets:read").await.unwrap();
    ledger.record(s, &v);
    assert_ne!(s, 200, "a removed policy still grants: {v}");
    assert!(v["error"].is_string(), "{v}");
    // A token minted before the reload stays active until its exp (revoke
    // it explicitly to end it sooner).
    let i = introspect(&payments, &b, &minted).await;
    assert_eq!(i["active"], true, "{i}");
    assert!(i["exp"].as_u64().unwrap() > tessera::testkit::now());

    let records = b.audit(&home.client(&home.operator)).await;
    let ok = reload_records(&records, "reload");
    assert_eq!(ok.len(), 1);
    let detail = ok[0]["detail"].as_str().unwrap();
    assert!(detail.contains("policies +[] -[agents] ~[]"), "{detail}");
    assert!(detail.contains("keys +[] -[]"), "{detail}");
    ledger.check(&records, &Expect::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_added_issuer_is_usable_after_reload() {
    let home = Home::new();
    let issuer =
        tessera::testkit::TestIssuer::start(&home.d().join("issuer"), SigningAlgorithm::RS256)
            .await
            .unwrap();
    let mut spec = Spec::new(AGENTS_POLICY);
    let b = Broker::start(&home, "a", &spec);
    b.wait_ready().await;
    let mut claims = issuer.claims("repo:acme/app:ref:refs/heads/main", "tessera");
    claims["env"] = "prod".into();
    let ci = issuer.sign(&claims);
    let anon = client_for(home.ca.cert_der(), None);
    let form = |t: &str| {
        encode_form(&[
            ("grant_type", TE),
            ("subject_token_type", JWT),
            ("subject_token", t),
            ("audience", "https://deploy.example.com"),
            ("scope", "deploy:read"),
        ])
    };
    let ci_exchange_with = |t: &str| {
        let body = form(t);
        let (anon, url) = (anon.clone(), b.url("/token"));
        async move {
            let r = anon
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let ci_exchange = || ci_exchange_with(&ci);
    let ledger = Ledger::new();
    let (s, v) = ci_exchange().await;
    ledger.record(s, &v);
    assert_ne!(s, 200, "an unknown issuer must not be trusted: {v}");

    spec.rest = format!(
        "{AGENTS_POLICY}\n[[issuers]]\nname = \"ci\"\nissuer = \"{}\"\naudiences = [\"tessera\"]\njwks_uri = \"{}\"\nca = \"{}\"\nalgorithms = [\"RS256\"]\n\n[[policies]]\nname = \"ci\"\nmatch = {{ issuer = \"ci\", subject = \"repo:acme/app:ref:refs/heads/*\", claims = {{ \"env\" = \"prod\" }} }}\naudiences = [\"https://deploy.example.com\"]\nscopes = [\"deploy:read\"]\n",
        issuer.url,
        issuer.jwks_uri(),
        issuer.ca_path.display()
    );
    b.rewrite(&home, &spec);
    b.reload("ok").await;
    let (s, v) = ci_exchange().await;
    ledger.record(s, &v);
    assert_eq!(s, 200, "the added issuer is not usable: {v}");
    let (_, c) = decode(v["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], "repo:acme/app:ref:refs/heads/main");

    // A reload that leaves the issuer alone keeps its verifier and JWKS
    // cache: no refetch.
    let hits = issuer.jwks_hits();
    assert!(hits >= 1);
    spec.rest = format!("{}\n{PAYMENTS_POLICY}", spec.rest);
    b.rewrite(&home, &spec);
    b.reload("ok").await;
    let ci = issuer.sign(&claims);
    let (s, v) = ci_exchange_with(&ci).await;
    ledger.record(s, &v);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        issuer.jwks_hits(),
        hits,
        "an unchanged issuer's JWKS was refetched"
    );

    let records = b.audit(&home.client(&home.operator)).await;
    let ok = reload_records(&records, "reload");
    let detail = ok[0]["detail"].as_str().unwrap();
    assert!(detail.contains("policies +[ci]"), "{detail}");
    assert!(detail.contains("issuers +[ci] -[]"), "{detail}");
    let detail = ok[1]["detail"].as_str().unwrap();
    assert!(detail.contains("policies +[payments]"), "{detail}");
    assert!(detail.contains("issuers +[] -[] ~[]"), "{detail}");
    ledger.check(&records, &Expect::default());
}

/// Two configurations that differ in policy, lifetime and signing key: an
/// answer mixing them would show a kid of one with the lifetime, scopes or
/// policy of the other.
const V1: &str = r#"
[[policies]]
name = "v1"
match = { issuer = "mtls", subject = "spiffe://example.org/agent/*" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read", "v1:only"]
max_ttl = "5m"
"#;
const V2: &str = r#"
[[policies]]
name = "v2"
match = { issuer = "mtls", subject = "spiffe://example.org/agent/*" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read", "v2:only"]
max_ttl = "7m"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_exchanges_during_repeated_reloads_each_see_one_snapshot() {
    let broker = TestBroker::start_with(Options {
        policies: V1.into(),
        with_issuer: false,
        extra: NO_PEER_LIMIT.into(),
        ..Options::default()
    })
    .await;
    let home = broker.home();
    let signing2 = home.join("signing2");
    generate_key_file(&signing2, SigningAlgorithm::ES256).unwrap();
    let kid1 = kid_of_file(
        &std::fs::read_dir(home.join("signing"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    );
    let kid2 = kid_of_file(
        &std::fs::read_dir(&signing2)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    );
    let text = std::fs::read_to_string(&broker.config_path)
        .unwrap()
        .replace(
            "algorithm = \"ES256\"",
            "algorithm = \"ES256\"\ndefault_ttl = \"10m\"\nmax_ttl = \"15m\"",
        );
    let v1 = home.join("v1.toml");
    let v2 = home.join("v2.toml");
    std::fs::write(&v1, &text).unwrap();
    let signing1_line = format!("signing_keys = \"{}/signing\"", home.display());
    assert!(text.contains(&signing1_line));
    std::fs::write(
        &v2,
        text.replace(V1, V2).replace(
            &signing1_line,
            &format!("signing_keys = \"{}\"", signing2.display()),
        ),
    )
    .unwrap();
    let app = broker.running.as_ref().unwrap().app.clone();
    app.reload_from(&v1).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Ledger::new());
    let answers = Arc::new(Mutex::new(Vec::<(String, u16, Value)>::new()));
    let mut workers = Vec::new();
    for w in 0..3 {
        let c = broker.agent_client();
        let port = broker.addr.port();
        let (stop, ledger, answers) = (stop.clone(), ledger.clone(), answers.clone());
        workers.push(tokio::spawn(async move {
            let scopes = [
                "tickets:read",
                "tickets:read v1:only",
                "tickets:read v2:only",
            ];
            let mut i = w;
            // Bounded: the embedded store keeps the last 10,000 audit
            // records, and every answer here writes one; a fast idle
            // machine would otherwise push the first `issued` records out.
            while !stop.load(Ordering::Relaxed) && answers.lock().unwrap().len() < MAX_ANSWERS {
                let scope = scopes[i % scopes.len()];
                i += 1;
                let (s, v) = exchange(&c, port, scope).await.unwrap();
                ledger.record(s, &v);
                answers.lock().unwrap().push((scope.to_string(), s, v));
            }
        }));
    }
    let mut reloads = 0;
    let until = Instant::now() + Duration::from_millis(2500);
    const MAX_ANSWERS: usize = 4000;
    while Instant::now() < until {
        let f = if reloads % 2 == 0 { &v2 } else { &v1 };
        let diff = app.reload_from(f).await.unwrap();
        assert_eq!(diff.policies_added.len(), 1, "{diff}");
        reloads += 1;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(reloads >= 10, "only {reloads} reloads");

    let records = broker.audit_records().await;
    let policy_of: HashMap<&str, &str> = records
        .iter()
        .filter(|r| r["event"] == "issued")
        .map(|r| (r["jti"].as_str().unwrap(), r["policy"].as_str().unwrap()))
        .collect();
    let answers = answers.lock().unwrap().clone();
    let mut seen = HashMap::<&str, usize>::new();
    for (scope, s, v) in answers.iter() {
        if *s != 200 {
            // Only a scope the other version lacks may be refused.
            assert!(scope.contains(":only"), "{scope} refused: {v}");
            assert_eq!(v["error"], "invalid_scope", "{v}");
            continue;
        }
        let (h, c) = decode(v["access_token"].as_str().unwrap());
        let kid = h["kid"].as_str().unwrap();
        let version = if kid == kid1 {
            "v1"
        } else if kid == kid2 {
            "v2"
        } else {
            panic!("unknown kid {kid}")
        };
        let ttl = c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap();
        let want_ttl = if version == "v1" { 300 } else { 420 };
        assert_eq!(
            ttl, want_ttl,
            "{version} key with another version's lifetime"
        );
        let other = if version == "v1" {
            "v2:only"
        } else {
            "v1:only"
        };
        assert!(
            !v["scope"].as_str().unwrap().contains(other),
            "{version} key with another version's scope: {v}"
        );
        let jti = c["jti"].as_str().unwrap();
        assert_eq!(policy_of.get(jti).copied(), Some(version), "jti {jti}");
        *seen.entry(version).or_default() += 1;
    }
    assert!(seen.get("v1").copied().unwrap_or(0) > 0, "{seen:?}");
    assert!(seen.get("v2").copied().unwrap_or(0) > 0, "{seen:?}");
    let summary = ledger.check(
        &records,
        &Expect {
            cap_secs: 900,
            ..Expect::default()
        },
    );
    eprintln!(
        "{reloads} reloads, {} answers, {} tokens, by version {seen:?}",
        summary.answers, summary.tokens
    );
    broker.stop().await;
}

/// Issue 17 item 5: `[tokens] max_ttl` is a ceiling. A policy `max_ttl`
/// (1h) and a `default_ttl` (30m) above it (10m) load (a `ttl_capped`
/// warning in the log, naming the policy) and tokens live 10m; lowering
/// `max_ttl` alone to 1m by SIGHUP caps the very next token, no policy
/// edited, with a minter running throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_max_ttl_is_a_ceiling_and_lowering_it_by_sighup_caps_the_next_token() {
    let home = Home::new();
    let long = AGENTS_POLICY.replace("jit_scopes", "max_ttl = \"1h\"\njit_scopes");
    let mut spec = Spec::new(&format!("{long}{NO_PEER_LIMIT}"));
    spec.tokens_extra = "default_ttl = \"30m\"\nmax_ttl = \"10m\"".into();
    let b = Broker::start(&home, "a", &spec);
    b.wait_ready().await;
    let logs = b.logs();
    assert!(
        logs.contains("ttl_capped") && logs.contains("policy `agents` max_ttl `1h`"),
        "{logs}"
    );
    let agent = home.client(&home.agent);
    let lifetime = |v: &Value| {
        let (_, c) = decode(v["access_token"].as_str().unwrap());
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap()
    };
    let (s, v) = exchange(&agent, b.port, "tickets:read").await.unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(lifetime(&v), 600, "capped at [tokens] max_ttl: {v}");
    assert_eq!(v["expires_in"], 600, "{v}");
    let early = decode(v["access_token"].as_str().unwrap()).1;

    // The emergency lever, under load: only [tokens] max_ttl changes. A
    // minter runs throughout; every token whose request started after the
    // reload was counted lives 1m, every earlier one 10m, none is refused.
    let lowered = Arc::new(AtomicBool::new(false));
    let after = Arc::new(AtomicU64::new(0));
    let minter = {
        let (c, port, lowered, after) = (agent.clone(), b.port, lowered.clone(), after.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            // Bounded: stops 50 tokens after the reload (or after 10,000).
            while after.load(Ordering::Relaxed) < 50 && seen.len() < 10_000 {
                let started_after = lowered.load(Ordering::Relaxed);
                let (s, v) = exchange(&c, port, "tickets:read").await.unwrap();
                assert_eq!(s, 200, "{v}");
                let (_, claims) = decode(v["access_token"].as_str().unwrap());
                let life = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
                if started_after {
                    after.fetch_add(1, Ordering::Relaxed);
                }
                seen.push((started_after, life));
            }
            seen
        })
    };
    spec.tokens_extra = "default_ttl = \"30m\"\nmax_ttl = \"1m\"".into();
    b.rewrite(&home, &spec);
    b.reload("ok").await;
    lowered.store(true, Ordering::Relaxed);
    let seen = minter.await.unwrap();
    for (started_after, life) in &seen {
        if *started_after {
            assert_eq!(
                *life, 60,
                "a token after the reload is not capped: {seen:?}"
            );
        } else {
            assert!(*life == 600 || *life == 60, "{seen:?}");
        }
    }
    assert!(
        seen.iter().filter(|(a, _)| *a).count() >= 50,
        "{}",
        seen.len()
    );
    let (s, v) = exchange(&agent, b.port, "tickets:read").await.unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(lifetime(&v), 60, "the next token is capped: {v}");
    assert_eq!(v["expires_in"], 60, "{v}");

    // A revocation made now still outlives the 10-minute token minted
    // before the reload (its entry is kept until every token it can cover
    // has expired, not only the new 1-minute ones).
    let operator = home.client(&home.operator);
    let r: Value = operator
        .post(format!("https://127.0.0.1:{}/admin/v1/revocations", b.port))
        .json(&json!({"kind": "jti", "value": early["jti"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kept = r["revocation"]["expires_at"].as_u64().unwrap();
    assert!(
        kept >= early["exp"].as_u64().unwrap(),
        "the revocation ({kept}) ends before the token it revokes: {r} {early}"
    );
}

// ----------------------------------------------------------------- R8 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r8_key_rotation_under_load_has_zero_verification_failures() {
    use rustls_pki_types::CertificateDer;
    use tessera::jwks::{HttpJwksFetcher, JwksCache};
    use tessera::verify::Verifier;

    /// The resource server refetches the JWKS this often (its cache TTL).
    const RS_TTL: Duration = Duration::from_millis(800);

    // Two replicas sharing the key directory (as with a mounted secret).
    let home = Home::new();
    let fleet = [
        Broker::start(
            &home,
            "a",
            &Spec::new(&format!("{AGENTS_POLICY}{NO_PEER_LIMIT}")),
        ),
        Broker::start(
            &home,
            "b",
            &Spec::new(&format!("{AGENTS_POLICY}{NO_PEER_LIMIT}")),
        ),
    ];
    for r in &fleet {
        r.wait_ready().await;
    }
    let b = &fleet[0];
    let old_file = home.d().join("signing/20200101T000000Z-es256.pem");
    let kid_a = kid_of_file(&old_file);

    // The resource server: a JWKS cache on one replica's /jwks.json, refreshed every
    // RS_TTL, that never refetches on an unknown kid within the test (a
    // cooldown of an hour): a kid used before it was published fails.
    let roots = [CertificateDer::from(home.ca.cert_der().to_vec())];
    let fetcher = HttpJwksFetcher::new(
        tessera::jwks::https_client(&roots, false).unwrap(),
        &b.url("/jwks.json"),
    )
    .unwrap();
    let cache = Arc::new(JwksCache::new(Arc::new(fetcher), Duration::from_secs(3600)));
    cache.try_refresh().await.unwrap();
    let verifier = Arc::new(
        Verifier::with_jwks_cache(ISS, API, cache.clone())
            .unwrap()
            .build()
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let refresher = {
        let (cache, stop) = (cache.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(RS_TTL).await;
                cache.refresh().await;
            }
        })
    };

    // Minting continuously; every token verified at once.
    let ledger = Arc::new(Ledger::new());
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let by_kid = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let verified = Arc::new(AtomicU64::new(0));
    let mut minters = Vec::new();
    for r in &fleet {
        let c = home.client(&home.agent);
        let port = r.port;
        let (stop, ledger, failures, by_kid, verified, verifier) = (
            stop.clone(),
            ledger.clone(),
            failures.clone(),
            by_kid.clone(),
            verified.clone(),
            verifier.clone(),
        );
        minters.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (s, v) = match exchange(&c, port, "tickets:read").await {
                    Ok(x) => x,
                    Err(e) => {
                        failures.lock().unwrap().push(format!("transport: {e}"));
                        continue;
                    }
                };
                ledger.record(s, &v);
                let Some(t) = v["access_token"].as_str() else {
                    failures.lock().unwrap().push(format!("exchange {s}: {v}"));
                    continue;
                };
                let kid = decode(t).0["kid"].as_str().unwrap().to_string();
                match verifier.verify(t).await {
                    Ok(_) => {
                        verified.fetch_add(1, Ordering::Relaxed);
                        *by_kid.lock().unwrap().entry(kid).or_default() += 1;
                    }
                    Err(e) => failures.lock().unwrap().push(format!("kid {kid}: {e}")),
                }
            }
        }));
    }
    let count = |kid: &str| by_kid.lock().unwrap().get(kid).copied().unwrap_or(0);
    let anon = client_for(home.ca.cert_der(), None);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The documented steps, with the real CLI (issue 17 item 3).
    let keys_cli = |args: &[&str]| -> Value {
        let o = Command::new(BIN)
            .arg("--json")
            .arg("keys")
            .args(args)
            .current_dir(home.d())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "keys {args:?}: {err}");
        serde_json::from_slice(&o.stdout).unwrap()
    };

    // 1. Publish the next key: in the JWKS, not signing.
    let next = keys_cli(&["generate", "--next", "--dir", "signing"]);
    let next = home.d().join(next["path"].as_str().unwrap());
    let kid_b = kid_of_file(&next);
    for r in &fleet {
        r.reload("ok").await;
        assert!(r.jwks_kids(&anon).await.contains(&kid_b));
    }
    // Wait at least the resource servers' cache TTL.
    tokio::time::sleep(RS_TTL * 2 + Duration::from_millis(200)).await;
    assert!(cache.snapshot().unwrap().find(Some(&kid_b)).is_ok());
    assert_eq!(count(&kid_b), 0, "a next key signed");

    // 2. Promote it (`tessera keys promote`, never overwriting) and reload.
    let promoted = keys_cli(&["promote", next.to_str().unwrap()]);
    let promoted = PathBuf::from(promoted["path"].as_str().unwrap());
    assert!(promoted.exists() && !next.exists());
    assert_eq!(kid_of_file(&promoted), kid_b);
    // One replica after the other: for a while both keys sign.
    for r in &fleet {
        r.reload("ok").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deadline = Instant::now() + DEADLINE;
    while count(&kid_b) == 0 {
        assert!(Instant::now() < deadline, "the promoted key never signed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 3. Retire the old key once nothing it signed can still be in use (here:
    // every token is verified as soon as it is minted; in production, wait
    // the longest token lifetime plus skew).
    // Requests that loaded the previous snapshot may still finish with the
    // old key; wait until it has stopped signing.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let a_before = count(&kid_a);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if count(&kid_a) == a_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old key still signs after promotion"
        );
    }
    std::fs::remove_file(&old_file).unwrap();
    for r in &fleet {
        r.reload("ok").await;
        assert!(!r.jwks_kids(&anon).await.contains(&kid_a));
    }
    let b_after_retire = count(&kid_b);
    tokio::time::sleep(RS_TTL * 2).await;

    stop.store(true, Ordering::Relaxed);
    for m in minters {
        m.await.unwrap();
    }
    refresher.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "verification failures: {failures:?}");
    let (a, bb) = (count(&kid_a), count(&kid_b));
    eprintln!(
        "verified {} tokens: {a} by the old key, {bb} by the new one ({} after retiring the old)",
        verified.load(Ordering::Relaxed),
        bb - b_after_retire
    );
    assert!(a > 0 && bb > b_after_retire, "both keys must have signed");
    let operator = home.client(&home.operator);
    let mut records = fleet[1].audit(&operator).await;
    assert_eq!(reload_records(&records, "reload").len(), 3);
    records.extend(b.audit(&operator).await);
    let reloads = reload_records(&records, "reload");
    let reloads = &reloads[3..];
    let d: Vec<&str> = reloads
        .iter()
        .map(|r| r["detail"].as_str().unwrap())
        .collect();
    assert!(d[0].contains(&format!("keys +[{kid_b}] -[]")), "{}", d[0]);
    assert!(
        d[1].contains(&format!("signing kid now {kid_b}")),
        "{}",
        d[1]
    );
    assert!(d[2].contains(&format!("keys +[] -[{kid_a}]")), "{}", d[2]);
    ledger.check(&records, &Expect::default());
}

// ----------------------------------------------------------------- R7 ----

/// One raw HTTP/1.1 request over mTLS whose body is sent in two halves, so
/// it can be kept in flight across a SIGTERM.
struct SlowRequest {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    rest: Vec<u8>,
}

impl SlowRequest {
    async fn begin(home: &Home, port: u16, form: &str) -> SlowRequest {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        use tokio::io::AsyncWriteExt;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(home.ca.cert_der().to_vec()))
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(home.agent.key_pem.as_bytes()).unwrap();
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![CertificateDer::from(home.agent.cert_der.clone())], key)
            .unwrap();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let body = form.as_bytes();
        let head = format!(
            "POST /token HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let half = body.len() / 2;
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&body[..half]).await.unwrap();
        tls.flush().await.unwrap();
        SlowRequest {
            tls,
            rest: body[half..].to_vec(),
        }
    }

    /// Sends the rest of the body and reads the whole answer.
    async fn finish(mut self) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.tls.write_all(&self.rest).await.unwrap();
        self.tls.flush().await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(DEADLINE, self.tls.read_to_end(&mut buf))
            .await
            .expect("the in-flight request got no complete answer")
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("incomplete answer");
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("content-length");
        assert_eq!(body.len(), len, "truncated answer");
        (status, serde_json::from_str(body).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r7_sigterm_fails_readyz_first_then_refuses_then_drains_and_exits_zero() {
    let home = Home::new();
    let mut spec = Spec::new(AGENTS_POLICY);
    spec.server_extra = "shutdown_grace = \"2s\"\ndrain_timeout = \"10s\"".into();
    let audit_file = home.d().join("audit.jsonl");
    spec.audit = format!("sink = \"file\"\npath = \"{}\"", audit_file.display());
    let mut b = Broker::start(&home, "a", &spec);
    b.wait_ready().await;
    let ledger = Arc::new(Ledger::new());
    let form = encode_form(&[
        ("grant_type", TE),
        ("subject_token_type", MTLS),
        ("audience", API),
        ("scope", "tickets:read"),
    ]);

    // Concurrent load on fresh and kept-alive connections.
    let stop = Arc::new(AtomicBool::new(false));
    let term_sent = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..2 {
        let c = home.client(&home.agent);
        let port = b.port;
        let (stop, term_sent, ledger) = (stop.clone(), term_sent.clone(), ledger.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let before_term = !term_sent.load(Ordering::SeqCst);
                match exchange(&c, port, "tickets:read").await {
                    Ok((s, v)) => {
                        // Every answer that arrives is complete (it parsed).
                        ledger.record(s, &v);
                        assert_eq!(s, 200, "{v}");
                        ok += 1;
                        // Below the per-peer pre-authentication rate limit.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => {
                        assert!(!before_term, "request failed before SIGTERM: {e}");
                        assert!(!e.is_decode(), "a truncated answer: {e}");
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (ok, refused)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let slow = SlowRequest::begin(&home, b.port, &form).await;

    let t0 = Instant::now();
    term_sent.store(true, Ordering::SeqCst);
    b.signal("TERM");
    // readyz fails first, while the listener still accepts...
    let mut ready_failed_at = None;
    let mut accepted_while_draining = 0;
    let mut refused_at = None;
    while refused_at.is_none() {
        assert!(t0.elapsed() < DEADLINE, "the listener never closed");
        if ready_failed_at.is_none() {
            if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{}/readyz", b.ops)).await {
                if r.status() == 503 {
                    ready_failed_at = Some(t0.elapsed());
                }
            }
        }
        match tokio::net::TcpStream::connect(("127.0.0.1", b.port)).await {
            Ok(_) if ready_failed_at.is_some() => accepted_while_draining += 1,
            Ok(_) => {}
            Err(_) => refused_at = Some(t0.elapsed()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready_failed_at = ready_failed_at.expect("readyz never answered 503");
    let refused_at = refused_at.unwrap();
    assert!(
        ready_failed_at < refused_at,
        "readyz failed at {ready_failed_at:?}, connections refused at {refused_at:?}"
    );
    assert!(
        accepted_while_draining > 0,
        "no connection accepted during the grace"
    );
    assert!(
        refused_at >= Duration::from_millis(1500),
        "grace cut short: {refused_at:?}"
    );

    // ...then the in-flight request still gets its complete answer.
    let (s, v) = slow.finish().await;
    ledger.record(s, &v);
    assert_eq!(s, 200, "{v}");
    assert!(v["access_token"].is_string());

    // The process exits 0 within grace + drain.
    let status = loop {
        if let Some(st) = b.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2 + 10 + 3),
            "still running after grace + drain; log:\n{}",
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exited_after = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut totals = (0, 0);
    for l in load {
        let (ok, refused) = l.await.unwrap();
        totals.0 += ok;
        totals.1 += refused;
    }
    assert_eq!(status.code(), Some(0), "log:\n{}", b.logs());
    assert!(totals.0 > 0);
    eprintln!(
        "readyz 503 at {ready_failed_at:?}, refused at {refused_at:?}, exit 0 at {exited_after:?}; load: {} answered, {} refused",
        totals.0, totals.1
    );
    let records: Vec<Value> = std::fs::read_to_string(&audit_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    ledger.check(&records, &Expect::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r7_sigkill_mid_load_keeps_grants_single_use_and_every_delivered_token_audited() {
    let Some(redis) = tessera::testkit_redis::redis_or_skip().unwrap() else {
        return;
    };
    let home = Home::new();
    let mut spec_a = Spec::new(&format!("{AGENTS_POLICY}{NO_PEER_LIMIT}"));
    spec_a.store = redis.url();
    let mut spec_b = Spec::new(&format!("{AGENTS_POLICY}{NO_PEER_LIMIT}"));
    spec_b.store = redis.url();
    let a = Broker::start(&home, "a", &spec_a);
    let b = Broker::start(&home, "b", &spec_b);
    a.wait_ready().await;
    b.wait_ready().await;
    let operator = home.client(&home.operator);

    const GRANTS: usize = 80;
    let mut grant_uses = HashMap::new();
    for _ in 0..GRANTS {
        let r = operator
            .post(b.url("/admin/v1/grants"))
            .json(&json!({"subject": AGENT, "scope": "tickets:delete", "audience": API, "ttl": "5m", "uses": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let g: Value = r.json().await.unwrap();
        grant_uses.insert(g["id"].as_str().unwrap().to_string(), 1u64);
    }

    let ledger = Arc::new(Ledger::new());
    let stop = Arc::new(AtomicBool::new(false));
    let answered_a = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for (port, counter) in [
        (a.port, Some(answered_a.clone())),
        (a.port, Some(answered_a.clone())),
        (b.port, None),
        (b.port, None),
    ] {
        let c = home.client(&home.agent);
        let (stop, ledger) = (stop.clone(), ledger.clone());
        load.push(tokio::spawn(async move {
            let mut lost = 0u32;
            while !stop.load(Ordering::Relaxed) {
                match exchange(&c, port, "tickets:delete").await {
                    Ok((s, v)) => {
                        ledger.record(s, &v);
                        if let Some(n) = &counter {
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // The killed replica: answers lost, connections refused.
                    Err(_) => {
                        lost += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            lost
        }));
    }
    // Kill A mid-load, once it has answered a few.
    let deadline = Instant::now() + DEADLINE;
    while answered_a.load(Ordering::Relaxed) < 6 {
        assert!(Instant::now() < deadline, "replica A answered nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut a = a;
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    // B goes on until every grant is used up.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let v: Value = operator
            .get(b.url("/admin/v1/grants"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let left: u64 = v["grants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["remaining"].as_u64().unwrap_or(0))
            .sum();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} grant uses never consumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lost = 0;
    for l in load {
        lost += l.await.unwrap();
    }
    let records = b.audit(&operator).await;
    let summary = ledger.check(
        &records,
        &Expect {
            grant_uses,
            answers_may_be_lost: true,
            ..Expect::default()
        },
    );
    let issued = records.iter().filter(|r| r["event"] == "issued").count();
    let nodes: HashSet<&str> = records
        .iter()
        .filter(|r| r["event"] == "issued")
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    eprintln!(
        "{} answers, {} tokens delivered, {issued} issued records from {} nodes, {lost} requests lost to the kill",
        summary.answers,
        summary.tokens,
        nodes.len()
    );
    assert!(summary.tokens > 0 && summary.tokens <= GRANTS);
    assert!(issued <= GRANTS, "more tokens minted than grant uses");
    drop(redis);
}

/// R7/R15 (issue 17 item 2), a broker SIGKILLed mid-load and started
/// again on its audit file: the chain goes on across the kill (the file's
/// last record is its head), the restarted broker sends the stream what the
/// file holds past the stream's checkpoint, and the file and the stream end
/// up with the same records. In each, every delivered token has its
/// `issued` record; the only `issued` records not withdrawn and not
/// delivered are of requests whose answers the kill cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r7_r15_sigkill_mid_load_then_restart_on_the_file_leaves_one_chain_in_both_sinks() {
    let Some(redis) = tessera::testkit_redis::redis_or_skip().unwrap() else {
        return;
    };
    let home = Home::new();
    let file = home.d().join("audit.jsonl");
    let mut spec = Spec::new(&format!("{AGENTS_POLICY}{NO_PEER_LIMIT}"));
    spec.store = redis.url();
    spec.audit = format!("sink = \"file\"\npath = \"{}\"", file.display());
    let a = Broker::start(&home, "a", &spec);
    a.wait_ready().await;
    let operator = home.client(&home.operator);

    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(Mutex::new(HashSet::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let c = home.client(&home.agent);
        let (stop, delivered, port) = (stop.clone(), delivered.clone(), spec.port);
        load.push(tokio::spawn(async move {
            let mut lost = 0u32;
            while !stop.load(Ordering::Relaxed) {
                match exchange(&c, port, "tickets:read").await {
                    Ok((200, v)) => {
                        let t = v["access_token"].as_str().unwrap();
                        let jti = decode(t).1["jti"].as_str().unwrap().to_string();
                        delivered.lock().unwrap().insert(jti);
                    }
                    Ok((s, v)) => {
                        assert_eq!(s, 503, "{v}");
                        assert!(v.get("access_token").is_none(), "{v}");
                    }
                    Err(_) => {
                        lost += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            lost
        }));
    }
    let wait_for = |n: usize| {
        let delivered = delivered.clone();
        async move {
            let deadline = Instant::now() + DEADLINE;
            while delivered.lock().unwrap().len() < n {
                assert!(Instant::now() < deadline, "too few tokens delivered");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(10).await;
    let mut a = a;
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    let before_restart = delivered.lock().unwrap().len();
    let b = Broker::start(&home, "a", &spec);
    b.wait_ready().await;
    wait_for(before_restart + 10).await;
    stop.store(true, Ordering::Relaxed);
    let mut lost = 0;
    for l in load {
        lost += l.await.unwrap();
    }
    let delivered = delivered.lock().unwrap().clone();

    // the stream catches up with the file
    let deadline = Instant::now() + DEADLINE;
    let (lines, stream) = loop {
        let lines: Vec<String> = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        let stream = b.audit(&operator).await;
        if lines.len() == stream.len() {
            break (lines, stream);
        }
        assert!(
            Instant::now() < deadline,
            "{} lines in the file, {} records in the stream",
            lines.len(),
            stream.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let file_records: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hashes = |rs: &[Value]| -> Vec<String> {
        rs.iter()
            .map(|r| r["hash"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(hashes(&file_records), hashes(&stream), "the same records");
    let report = tessera::audit::verify_file(&file).unwrap();
    assert!(report.intact(), "{report:?}");
    assert_eq!(report.chains.len(), 1, "the chain goes on across the kill");
    for (sink, records) in [("file", &file_records), ("stream", &stream)] {
        let withdrawn: HashSet<&str> = records
            .iter()
            .filter(|r| r["event"] == "unavailable" && r["reason"] == "audit_unavailable")
            .filter_map(|r| r["jti"].as_str())
            .collect();
        let mut kept = HashSet::new();
        for r in records.iter().filter(|r| r["event"] == "issued") {
            let j = r["jti"].as_str().unwrap();
            if !withdrawn.contains(j) {
                assert!(kept.insert(j.to_string()), "{sink}: {j} issued twice");
            }
        }
        for j in &delivered {
            assert!(
                kept.contains(j),
                "{sink}: delivered token {j} has no issued record"
            );
        }
        let unanswered = kept.len() - delivered.len();
        eprintln!(
            "{sink}: {} issued and kept, {} delivered, {unanswered} cut off by the kill ({lost} requests lost)",
            kept.len(),
            delivered.len()
        );
        assert!(
            unanswered <= lost as usize,
            "{sink}: {unanswered} issued records without a delivered token, {lost} answers lost"
        );
    }
    drop(redis);
}

/// The default audit sink on a piped stdout (a container's log FIFO): a
/// reader that stops reading fills the pipe, and then exchanges fail closed
/// (503, no token) after the audit timeout while the broker stays
/// responsive (no thread is held waiting); once the reader drains, service
/// resumes without a restart. The output never holds a torn line, its
/// chains verify, and every delivered token's `issued` record is in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_stdout_pipe_fails_closed_when_its_reader_stalls_and_resumes() {
    let home = Home::new();
    let mut spec = Spec::new(&format!("{AGENTS_POLICY}{NO_PEER_LIMIT}"));
    spec.audit = "sink = \"stdout\"\ntimeout = \"300ms\"".into();
    let (b, out) = Broker::start_piped(&home, "piped", &spec);
    // The smallest pipe the kernel allows (a page): a few records fill it.
    rustix::pipe::fcntl_setpipe_size(&out, 4096).unwrap();
    b.wait_ready().await;
    let agent = home.client(&home.agent);

    let mut delivered = Vec::new();
    let mut refused = None;
    for _ in 0..200 {
        let (status, v) = exchange(&agent, b.port, "tickets:read").await.unwrap();
        match status {
            200 => delivered.push(v["access_token"].as_str().unwrap().to_string()),
            503 => {
                refused = Some(v);
                break;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let refused = refused.expect("a stalled stdout reader must stop issuance");
    assert_eq!(refused["error"], "temporarily_unavailable", "{refused}");
    assert!(refused.get("access_token").is_none());
    assert!(!delivered.is_empty(), "the pipe held some records first");

    // Still stalled: the broker keeps refusing tokens without a thread
    // per waiting batch (a blocking write per batch would leave one thread
    // stuck in write(2) for each), and answers at once on the ops listener.
    let threads = || {
        std::fs::read_to_string(format!("/proc/{}/status", b.child.id()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .unwrap()
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let before = threads();
    for _ in 0..10 {
        let (status, v) = exchange(&agent, b.port, "tickets:read").await.unwrap();
        assert_eq!(status, 503, "{v}");
    }
    assert!(
        threads() <= before + 2,
        "threads grew while stdout was stalled: {before} -> {}",
        threads()
    );
    let t0 = Instant::now();
    let h = reqwest::get(format!("http://127.0.0.1:{}/healthz", b.ops))
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let (status, v) = exchange(&agent, b.port, "tickets:read").await.unwrap();
    assert_eq!(status, 503, "{v}");

    // The reader comes back: service resumes.
    let reader = std::thread::spawn(move || {
        let mut out = out;
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut all).unwrap();
        all
    });
    let deadline = Instant::now() + DEADLINE;
    let mut resumed = 0;
    while resumed < 20 {
        assert!(
            Instant::now() < deadline,
            "service did not resume; log:\n{}",
            b.logs()
        );
        let (status, v) = exchange(&agent, b.port, "tickets:read").await.unwrap();
        if status == 200 {
            delivered.push(v["access_token"].as_str().unwrap().to_string());
            resumed += 1;
        }
    }

    b.signal("TERM");
    let all = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(all).unwrap();
    assert!(text.ends_with('\n'), "the output ends mid-line");
    let mut v = tessera::audit::ChainVerifier::default();
    let mut issued = HashSet::new();
    for line in text.lines() {
        let r: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a torn or invalid line ({e}): {line:?}"));
        if r["event"] == "issued" {
            issued.insert(r["jti"].as_str().unwrap().to_string());
        }
        v.push_line(line);
    }
    let report = v.finish();
    assert!(report.intact(), "{report:?}");
    assert_eq!(
        report.chains.len(),
        1,
        "the failed batch does not end the chain: the pipe gets it later: {report:?}"
    );
    for t in &delivered {
        let (_, claims) = decode(t);
        let jti = claims["jti"].as_str().unwrap();
        assert!(
            issued.contains(jti),
            "delivered token {jti} has no issued record on stdout"
        );
    }
}

/// The runtime's worker threads in a process (Linux): tokio names them
/// `tokio-rt-worker` (its blocking-pool threads, `tokio-runtime-worker`).
fn runtime_workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "tokio-rt-worker")
        .count()
}

/// `[server] worker_threads` sets how many threads serve (1 and 3 here, on
/// any machine), the startup line says how many, and a broker with one
/// thread serves exchanges concurrently. The startup line shows the store
/// URL without its password (with a Redis that requires one).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_sets_the_serving_threads_and_the_log_hides_the_store_password() {
    let home = Home::new();
    let c = home.client(&home.agent);
    for n in [1usize, 3] {
        let mut spec = Spec::new(AGENTS_POLICY);
        spec.server_extra = format!("worker_threads = {n}\n");
        let b = Broker::start(&home, &format!("w{n}"), &spec);
        b.wait_ready().await;
        assert_eq!(runtime_workers(b.child.id()), n, "log:\n{}", b.logs());
        assert!(
            b.logs().contains(&format!("worker_threads={n}")),
            "{}",
            b.logs()
        );
        let answers =
            futures_util::future::join_all((0..16).map(|_| exchange(&c, b.port, "tickets:read")))
                .await;
        for a in answers {
            let (status, body) = a.unwrap();
            assert_eq!(status, 200, "{body}");
        }
    }
    // The default: one per CPU this process may use.
    let b = Broker::start(&home, "wdefault", &Spec::new(AGENTS_POLICY));
    b.wait_ready().await;
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(runtime_workers(b.child.id()), cpus);

    if !tessera::testkit_redis::redis_available() && !tessera::testkit_redis::redis_required() {
        eprintln!(
            "SKIPPED: redis-server is not installed; the store URL redaction check did not run"
        );
        return;
    }
    let redis =
        tessera::testkit_redis::RedisServer::start_with(&["--requirepass", "s3cret-Pw-9"]).unwrap();
    let mut spec = Spec::new(AGENTS_POLICY);
    spec.store = format!("redis://:s3cret-Pw-9@127.0.0.1:{}", redis.port());
    let b = Broker::start(&home, "pw", &spec);
    b.wait_ready().await;
    let (status, body) = exchange(&c, b.port, "tickets:read").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let logs = b.logs();
    assert!(!logs.contains("s3cret-Pw-9"), "{logs}");
    assert!(
        logs.contains(&format!("store=redis://***@127.0.0.1:{}", redis.port())),
        "{logs}"
    );
}
