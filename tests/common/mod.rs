//! Shared test harness: a real broker on 127.0.0.1:0 with its own CA, a real
//! HTTPS OIDC issuer, and mTLS clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

pub mod docs;
pub mod invariants;
pub mod latency_proxy;

use std::net::SocketAddr;
use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::Value;
use tessera::app::Running;
use tessera::config::Config;
use tessera::mint::keyring::{generate_key_file, SigningAlgorithm};
use tessera::pki::{Ca, IssuedCert, LeafSpec};
use tessera::testkit::TestIssuer;

pub const TE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const MTLS: &str = "urn:ietf:params:oauth:token-type:mtls";
pub const BROKER_ISS: &str = "https://tessera.test";
pub const AGENT: &str = "spiffe://example.org/agent/demo";
pub const API: &str = "https://api.example.com";
pub const OPERATOR: &str = "spiffe://example.org/operator/alice";
pub const PAYMENTS: &str = "spiffe://example.org/service/payments-api";

/// Default policies: the demo agent over mTLS, and CI jobs from the test issuer.
pub const DEFAULT_POLICIES: &str = r#"
[[policies]]
name = "agents"
owner = "alice@example.com"
match = { issuer = "mtls", subject = "spiffe://example.org/agent/*" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read", "tickets:write"]
max_ttl = "10m"

[[policies]]
name = "ci"
owner = "bob@example.com"
match = { issuer = "ci", subject = "repo:acme/app:ref:refs/heads/*", claims = { "env" = "prod" } }
audiences = ["https://deploy.example.com"]
scopes = ["deploy:read", "deploy:write"]
max_ttl = "5m"
"#;

pub struct Options {
    pub policies: String,
    pub issuer_extra: String,
    pub issuer_algorithm: SigningAlgorithm,
    pub broker_algorithm: SigningAlgorithm,
    pub extra: String,
    pub with_issuer: bool,
    /// `[store] url` (memory:// when None).
    pub store_url: Option<String>,
    /// Extra lines under `[store]` (breaker, revocation acknowledgements).
    pub store_extra: String,
    /// Reuse this directory's CA, keys and certificates (a second replica).
    pub share_with: Option<std::path::PathBuf>,
    /// Extra lines under `[introspection]`.
    pub introspection_extra: String,
    /// Find the test issuer's JWKS by OIDC discovery instead of `jwks_uri`.
    pub discovery: bool,
    /// Lines under `[audit]` (default `sink = "off"`: tests keep stdout
    /// quiet; the store's audit stream is written in every case).
    pub audit: String,
    /// The broker's clock (the system clock when None).
    pub clock: Option<std::sync::Arc<dyn tessera::clock::Clock>>,
    /// Lines under `[server]`; `{dir}` is replaced by the broker's directory.
    pub server_extra: String,
    /// Listen on this port with `issuer = "https://127.0.0.1:PORT"` (pages
    /// whose Origin and redirect URI are the broker's own), instead of a
    /// random port and `BROKER_ISS`.
    pub public_port: Option<u16>,
    /// The host of that issuer URL (default `127.0.0.1`; `localhost` makes
    /// the broker another site than the test IdP at 127.0.0.1).
    pub public_host: Option<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            policies: DEFAULT_POLICIES.into(),
            issuer_extra: String::new(),
            issuer_algorithm: SigningAlgorithm::RS256,
            broker_algorithm: SigningAlgorithm::ES256,
            extra: String::new(),
            with_issuer: true,
            store_url: None,
            store_extra: String::new(),
            share_with: None,
            introspection_extra: String::new(),
            discovery: false,
            audit: "sink = \"off\"".into(),
            clock: None,
            server_extra: String::new(),
            public_port: None,
            public_host: None,
        }
    }
}

pub struct TestBroker {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub agent: IssuedCert,
    pub operator: IssuedCert,
    pub payments: IssuedCert,
    pub issuer: Option<TestIssuer>,
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub config_path: PathBuf,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(o: Options) -> TestBroker {
        init();
        let dir = tempfile::tempdir().unwrap();
        let d = match &o.share_with {
            Some(p) => p.clone(),
            None => dir.path().to_path_buf(),
        };
        let d = d.as_path();
        let ca = if o.share_with.is_some() {
            Ca::from_pem(
                &std::fs::read_to_string(d.join("ca.pem")).unwrap(),
                &std::fs::read_to_string(d.join("ca-key.pem")).unwrap(),
            )
            .unwrap()
        } else {
            let ca = Ca::generate("tessera test CA").unwrap();
            std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
            std::fs::write(d.join("ca-key.pem"), ca.key_pem()).unwrap();
            let server = ca
                .issue(&LeafSpec::server(
                    &["localhost"],
                    &["127.0.0.1".parse().unwrap()],
                ))
                .unwrap();
            std::fs::write(d.join("server.pem"), &server.cert_pem).unwrap();
            std::fs::write(d.join("server-key.pem"), &server.key_pem).unwrap();
            generate_key_file(&d.join("signing"), o.broker_algorithm).unwrap();
            ca
        };
        let agent = ca.issue(&LeafSpec::client_spiffe(AGENT)).unwrap();
        let operator = ca.issue(&LeafSpec::client_spiffe(OPERATOR)).unwrap();
        let payments = ca.issue(&LeafSpec::client_spiffe(PAYMENTS)).unwrap();

        let issuer = if o.with_issuer {
            Some(
                TestIssuer::start(&d.join("issuer"), o.issuer_algorithm)
                    .await
                    .unwrap(),
            )
        } else {
            None
        };
        let issuer_toml = match &issuer {
            Some(i) => format!(
                "[[issuers]]\nname = \"ci\"\nissuer = \"{}\"\naudiences = [\"tessera\"]\n{}ca = \"{}\"\nalgorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\n{}\n",
                i.url,
                if o.discovery { String::new() } else { format!("jwks_uri = \"{}\"\n", i.jwks_uri()) },
                i.ca_path.display(),
                o.issuer_extra
            ),
            // A placeholder so policies naming "ci" still load; never contacted.
            None => "[[issuers]]\nname = \"ci\"\nissuer = \"https://ci.invalid\"\naudiences = [\"tessera\"]\njwks_uri = \"https://ci.invalid/jwks\"\n".to_string(),
        };
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
ops_listen = "127.0.0.1:0"
issuer = "{iss}"
tls_cert = "{d}/server.pem"
tls_key = "{d}/server-key.pem"
client_ca = ["{d}/ca.pem"]
{server_extra}

[tokens]
signing_keys = "{d}/signing"
algorithm = "{alg}"

[store]
url = "{store}"
{store_extra}

[admin]
subjects = ["spiffe://example.org/operator/alice"]

[introspection]
subjects = ["spiffe://example.org/service/payments-api"]
{introspection_extra}

[audit]
{audit}

{extra}

{issuer_toml}
{policies}
"#,
            d = d.display(),
            port = o.public_port.unwrap_or(0),
            iss = match o.public_port {
                Some(p) => format!("https://{}:{p}", o.public_host.unwrap_or("127.0.0.1")),
                None => BROKER_ISS.to_string(),
            },
            server_extra = o.server_extra.replace("{dir}", &d.display().to_string()),
            alg = o.broker_algorithm.as_str(),
            extra = o.extra,
            introspection_extra = o.introspection_extra,
            audit = o.audit,
            policies = o.policies,
            store = o.store_url.clone().unwrap_or_else(|| "memory://".into()),
            store_extra = o.store_extra,
        );
        let config_path = d.join(format!("tessera-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&config_path, &text).unwrap();
        let cfg = Config::load(&config_path).unwrap();
        tessera::app::prepare(&cfg).unwrap();
        let running = match o.clock.clone() {
            Some(c) => tessera::app::start_with_clock(cfg, c).await.unwrap(),
            None => tessera::app::start(cfg).await.unwrap(),
        };
        TestBroker {
            addr: running.addr,
            ops_addr: running.ops_addr,
            dir,
            ca,
            agent,
            operator,
            payments,
            issuer,
            running: Some(running),
            config_path,
        }
    }

    pub fn issuer(&self) -> &TestIssuer {
        self.issuer.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops_addr)
    }

    /// The broker's `/metrics` page (Prometheus text).
    pub async fn metrics_text(&self) -> String {
        reqwest::get(self.ops_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A client trusting the broker's CA, presenting `cert` if given.
    pub fn client(&self, cert: Option<&IssuedCert>) -> reqwest::Client {
        client_for(self.ca.cert_der(), cert)
    }

    pub fn anon(&self) -> reqwest::Client {
        self.client(None)
    }

    pub fn agent_client(&self) -> reqwest::Client {
        self.client(Some(&self.agent))
    }

    /// The directory holding this broker's CA, keys and config.
    pub fn home(&self) -> std::path::PathBuf {
        self.config_path.parent().unwrap().to_path_buf()
    }

    /// Calls the admin API as the operator.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self
            .client(Some(&self.operator))
            .request(method, self.url(path));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Runs the real `tessera` binary as the operator against this broker
    /// (its CA, the operator's certificate): exit code, stdout, stderr.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let d = self.home();
        if !d.join("op.pem").exists() {
            std::fs::write(d.join("op.pem"), &self.operator.cert_pem).unwrap();
            std::fs::write(d.join("op-key.pem"), &self.operator.key_pem).unwrap();
        }
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .args(["--url", &self.url(""), "--ca"])
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

    /// Every record of the broker's audit stream, oldest first (pages
    /// through `GET /admin/v1/audit`).
    pub async fn audit_records(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = "0".to_string();
        loop {
            let (s, v) = self
                .admin(
                    reqwest::Method::GET,
                    &format!("/admin/v1/audit?after={after}&limit=500"),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            let page = v["records"].as_array().unwrap().clone();
            if page.is_empty() {
                return out;
            }
            out.extend(page);
            after = v["cursor"].as_str().unwrap().to_string();
        }
    }

    /// Introspects `token` as the payments API (an introspection client).
    pub async fn introspect(&self, token: &str) -> Value {
        let r = self
            .client(Some(&self.payments))
            .post(self.url("/introspect"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode_form(&[("token", token)]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// An mTLS exchange as the demo agent.
    pub async fn agent_token(&self, scope: &str, task: Option<&str>) -> (StatusCode, Value) {
        let mut f = vec![
            ("grant_type", TE),
            ("subject_token_type", MTLS),
            ("audience", API),
            ("scope", scope),
        ];
        if let Some(t) = task {
            f.push(("task", t));
        }
        self.token(&self.agent_client(), &f).await
    }

    pub async fn token(
        &self,
        client: &reqwest::Client,
        form: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let body = encode_form(form);
        let r = client
            .post(self.url("/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        (status, v)
    }

    /// A good OIDC exchange form for `subject_token`.
    pub fn oidc_form(subject_token: &str) -> Vec<(&str, &str)> {
        vec![
            ("grant_type", TE),
            ("subject_token_type", JWT),
            ("subject_token", subject_token),
            ("audience", "https://deploy.example.com"),
            ("scope", "deploy:read"),
        ]
    }

    /// A good CI token from the test issuer (matches the "ci" policy).
    pub fn ci_token(&self) -> String {
        let mut c = self
            .issuer()
            .claims("repo:acme/app:ref:refs/heads/main", "tessera");
        c["env"] = "prod".into();
        self.issuer().sign(&c)
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(std::time::Duration::from_millis(0)).await;
        }
    }
}

pub fn encode_form(form: &[(&str, &str)]) -> String {
    form.iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn client_for(ca_der: &[u8], cert: Option<&IssuedCert>) -> reqwest::Client {
    tessera::testkit::https_client(ca_der, cert, false).unwrap()
}

/// Decodes a JWT's header and claims without verification (test helper).
pub fn decode(token: &str) -> (Value, Value) {
    use base64::Engine;
    let p: Vec<&str> = token.split('.').collect();
    let d = |s: &str| -> Value {
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .unwrap(),
        )
        .unwrap()
    };
    (d(p[0]), d(p[1]))
}

/// base64url(SHA-256(DER)) computed independently of the broker.
pub fn thumbprint(der: &[u8]) -> String {
    use base64::Engine;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// Installs the aws-lc-rs provider as the process default (reqwest clients
/// built without a preconfigured TLS config need one).
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Runs `redis-cli -u URL ARGS…` and returns its stdout (tests that
/// reconfigure their private redis-server).
pub fn redis_cli(url: &str, args: &[&str]) -> String {
    let o = std::process::Command::new("redis-cli")
        .arg("-u")
        .arg(url)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The value of one sample (name and labels, as exported) on a `/metrics`
/// page at `url`; 0 when absent.
pub async fn metric_at(url: &str, sample: &str) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}
