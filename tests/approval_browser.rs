//! The approval pages in a real browser: headless Chromium driven over the
//! W3C WebDriver protocol by chromedriver, against a real broker and the
//! test IdP. The browser trusts exactly the broker's and the IdP's test
//! certificates (`--ignore-certificate-errors-spki-list` with their key
//! hashes, a fresh `--user-data-dir`), nothing else.
//!
//! Skips loudly when `chromium` or `chromedriver` is missing, unless
//! `TESSERA_REQUIRE_BROWSER=1` (CI installs Debian's `chromium` and
//! `chromium-driver`). With `TESSERA_WRITE_SCREENSHOTS=1` the list and
//! detail pages are saved to `docs/img/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tessera::testkit::{ChildGuard, TestIssuer};

const POLICIES: &str = r#"
[[policies]]
name = "agents"
owner = "alice@example.com"
approvers = ["alice@example.com"]
match = { issuer = "mtls", subject = "spiffe://example.org/agent/*" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read", "tickets:delete"]
approval_scopes = ["tickets:delete"]
may_act_for = ["ci"]

[[policies]]
name = "people"
owner = "alice@example.com"
match = { issuer = "ci", subject = "user-alice@example.com" }
audiences = ["https://api.example.com"]
scopes = ["tickets:delete"]

[[policies]]
name = "payments"
owner = "carol@example.com"
approvers = ["carol@example.com"]
match = { issuer = "mtls", subject = "spiffe://example.org/service/payments-api" }
audiences = ["https://bank.example.com"]
scopes = ["payments:read", "payments:send"]
approval_scopes = ["payments:send"]
"#;

const LOGIN: &str = r#"
[approvals]
ttl = "30m"
interval = "0s"
login_issuer = "ci"
login_client_id = "tessera"
groups_claim = "groups"
"#;

/// The hostile details an agent sends: markup in every place.
const XSS_DETAILS: &str = r#"[{"type":"ticket_deletion","identifier":"T-4711<script>alert(1)</script>","note":"<img src=x onerror=alert(2)>","actions":["delete"]}]"#;

fn find_bin(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// chromium and chromedriver, or None (skip) unless the browser is required.
fn browser_or_skip() -> Option<(PathBuf, PathBuf)> {
    let found = (find_bin("chromium"), find_bin("chromedriver"));
    match found {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            assert!(
                std::env::var("TESSERA_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "TESSERA_REQUIRE_BROWSER=1 but chromium or chromedriver is missing \
                 (apt-get install -y chromium chromium-driver)"
            );
            eprintln!(
                "SKIPPED: chromium or chromedriver not found; the browser tests did not run \
                 (apt-get install -y chromium chromium-driver)"
            );
            None
        }
    }
}

/// base64 SHA-256 of a PEM certificate's SubjectPublicKeyInfo (what
/// Chromium's `--ignore-certificate-errors-spki-list` takes).
fn spki_hash(pem_path: &Path) -> String {
    use base64::Engine;
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(pem_path).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        cert.tbs_certificate.subject_pki.raw,
    );
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

/// A minimal W3C WebDriver client: the handful of commands these tests
/// need, as JSON over HTTP to chromedriver on loopback.
struct Driver {
    http: reqwest::Client,
    base: String,
    _process: ChildGuard,
}

struct Session<'d> {
    d: &'d Driver,
    id: String,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Driver {
    async fn start(driver: &Path) -> Driver {
        let port = tessera::testkit::free_port();
        let process = ChildGuard(
            std::process::Command::new(driver)
                .arg(format!("--port={port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let d = Driver {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            _process: process,
        };
        for _ in 0..100 {
            if let Ok(r) = d.http.get(format!("{}/status", d.base)).send().await {
                if r.status().is_success() {
                    return d;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start");
    }

    async fn session(&self, chromium: &Path, trusted: &[String]) -> Session<'_> {
        let profile = tempfile::tempdir().unwrap();
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=412,915".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!(
                "--ignore-certificate-errors-spki-list={}",
                trusted.join(",")
            ),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.display().to_string(), "args": args}
        }}});
        let v = self
            .call(reqwest::Method::POST, "/session", Some(caps))
            .await;
        Session {
            d: self,
            id: v["sessionId"].as_str().expect("a session").to_string(),
            _profile: profile,
        }
    }

    async fn call(&self, m: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut rq = self.http.request(m, format!("{}{path}", self.base));
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let r = rq.send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        assert!(v["value"]["error"].is_null(), "webdriver {path}: {v}");
        v["value"].clone()
    }
}

impl Session<'_> {
    async fn cmd(&self, m: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.d
            .call(m, &format!("/session/{}{path}", self.id), body)
            .await
    }
    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }
    async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }
    async fn source(&self) -> String {
        self.cmd(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }
    async fn find_all(&self, css: &str) -> Vec<String> {
        self.cmd(
            reqwest::Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[ELEMENT].as_str().unwrap().to_string())
        .collect()
    }
    async fn find(&self, css: &str) -> String {
        let all = self.find_all(css).await;
        assert_eq!(all.len(), 1, "exactly one {css}");
        all[0].clone()
    }
    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }
    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }
    async fn text(&self) -> String {
        let body = self.find("body").await;
        self.cmd(reqwest::Method::GET, &format!("/element/{body}/text"), None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }
    async fn screenshot(&self, name: &str) {
        use base64::Engine;
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        let out = if std::env::var("TESSERA_WRITE_SCREENSHOTS").as_deref() == Ok("1") {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/img")
        } else {
            std::env::temp_dir().join("tessera-screenshots")
        };
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join(name), png).unwrap();
    }
    async fn close(self) {
        self.d
            .call(
                reqwest::Method::DELETE,
                &format!("/session/{}", self.id),
                None,
            )
            .await;
    }
}

async fn pending(
    b: &TestBroker,
    cert: &tessera::pki::IssuedCert,
    aud: &str,
    scope: &str,
    details: &str,
) -> String {
    let r = b
        .token(
            &b.client(Some(cert)),
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", aud),
                ("scope", scope),
                ("task", "cleanup-42"),
                ("authorization_details", details),
            ],
        )
        .await;
    assert_eq!(r.1["error"], "authorization_pending", "{}", r.1);
    r.1["approval_id"].as_str().unwrap().to_string()
}

async fn state_of(b: &TestBroker, id: &str) -> String {
    let (_, v) = b
        .admin(reqwest::Method::GET, "/admin/v1/approvals?state=all", None)
        .await;
    v["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .map(|a| a["state"].as_str().unwrap().to_string())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_signs_in_and_decides_in_a_real_browser() {
    let Some((chromium, chromedriver)) = browser_or_skip() else {
        return;
    };
    let port = tessera::testkit::free_port();
    let b = TestBroker::start_with(Options {
        policies: POLICIES.into(),
        extra: LOGIN.into(),
        public_port: Some(port),
        // Another site than the IdP (127.0.0.1): the sign-in comes back
        // through a cross-site redirect, as in a real deployment, where
        // browsers withhold SameSite=Strict cookies.
        public_host: Some("localhost"),
        ..Default::default()
    })
    .await;
    let base = format!("https://localhost:{port}");
    let trusted = vec![
        spki_hash(&b.home().join("server.pem")),
        spki_hash(&b.home().join("issuer/issuer-server.pem")),
    ];
    let mine = pending(&b, &b.agent, API, "tickets:delete", XSS_DETAILS).await;
    let not_mine = pending(
        &b,
        &b.payments,
        "https://bank.example.com",
        "payments:send",
        r#"[{"type":"payment_initiation","amount":"120.00","currency":"EUR"}]"#,
    )
    .await;
    let driver = Driver::start(&chromedriver).await;

    // alice, with a second factor: sees exactly her approval.
    b.issuer().sign_in_as(Some(TestIssuer::person(
        "alice@example.com",
        &[],
        &["pwd", "otp"],
    )));
    let s = driver.session(&chromium, &trusted).await;
    // The IdP shows a sign-in page whose link leads back: the way back to
    // the broker starts on another site, as with a real IdP.
    b.issuer().set_interactive(true);
    s.goto(&format!("{base}/approvals")).await;
    s.click("#continue").await;
    for _ in 0..50 {
        if s.url().await == format!("{base}/approvals") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.url().await, format!("{base}/approvals"));
    b.issuer().set_interactive(false);
    let list = s.source().await;
    assert!(list.contains(&mine), "{list}");
    assert!(
        !list.contains(&not_mine),
        "only the approvals she may decide"
    );
    s.screenshot("approvals-list.png").await;

    // The detail page shows the hostile details as text: no script element,
    // no image, no alert (an open alert would fail every command below).
    s.goto(&format!("{base}/approvals/{mine}")).await;
    assert!(s.find_all("script").await.is_empty());
    assert!(s.find_all("img").await.is_empty());
    let text = s.text().await;
    assert!(text.contains("T-4711<script>alert(1)</script>"), "{text}");
    assert!(text.contains("<img src=x onerror=alert(2)>"));
    s.screenshot("approval-detail.png").await;

    // A cross-site form posting to the broker decides nothing.
    let forged = format!(
        "data:text/html,<form method=post action='{base}/approvals/{mine}'>\
         <input name=decision value=approve><button id=go>go</button></form>"
    );
    s.goto(&forged).await;
    s.click("#go").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.text().await.contains("Forbidden"), "{}", s.source().await);
    assert_eq!(state_of(&b, &mine).await, "pending");

    // The real form approves; the agent's poll gets its token.
    s.goto(&format!("{base}/approvals/{mine}")).await;
    s.type_into("#reason", "duplicate ticket, checked").await;
    s.click("button.approve").await;
    let list_url = format!("{base}/approvals");
    for _ in 0..50 {
        if s.url().await == list_url {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.url().await, list_url, "{}", s.text().await);
    assert_eq!(state_of(&b, &mine).await, "approved");
    let r = b
        .token(
            &b.agent_client(),
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", API),
                ("scope", "tickets:delete"),
                ("task", "cleanup-42"),
                ("authorization_details", XSS_DETAILS),
                ("approval_id", &mine),
            ],
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);

    // CIBA end to end: the agent asks alice's consent over the backchannel,
    // she gives it in the browser, the agent's poll gets a token for her.
    let r = b
        .client(Some(&b.agent))
        .post(b.url("/bc-authorize"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&[
            ("login_hint", "alice@example.com"),
            ("scope", "tickets:delete"),
            ("audience", API),
            ("binding_message", "Delete T-9 <now>"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let auth_req_id = v["auth_req_id"].as_str().unwrap().to_string();
    s.goto(&format!("{base}/approvals/{auth_req_id}")).await;
    assert!(s.text().await.contains("Delete T-9 <now>"));
    s.click("button.approve").await;
    for _ in 0..50 {
        if s.url().await == list_url {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = b
        .token(
            &b.agent_client(),
            &[
                ("grant_type", "urn:openid:params:grant-type:ciba"),
                ("auth_req_id", &auth_req_id),
            ],
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let (_, c) = decode(r.1["access_token"].as_str().unwrap());
    assert_eq!(
        (c["sub"].as_str(), c["act"]["sub"].as_str()),
        (Some("alice@example.com"), Some(AGENT))
    );
    s.close().await;

    // alice cannot decide carol's approval even by typing its URL.
    let s = driver.session(&chromium, &trusted).await;
    s.goto(&format!("{base}/approvals/{not_mine}")).await;
    assert!(s.text().await.contains("Not found"));
    assert!(s.find_all("button.approve").await.is_empty());
    assert_eq!(state_of(&b, &not_mine).await, "pending");
    s.close().await;

    // A password-only sign-in is refused.
    b.issuer()
        .sign_in_as(Some(TestIssuer::person("carol@example.com", &[], &["pwd"])));
    let s = driver.session(&chromium, &trusted).await;
    s.goto(&format!("{base}/approvals")).await;
    assert!(s.text().await.contains("Multi-factor sign-in required"));
    s.close().await;
    assert_eq!(state_of(&b, &not_mine).await, "pending");
    b.stop().await;
}
