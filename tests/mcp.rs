#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The MCP example, run for real: the broker (`config/mcp.toml`, ports
//! changed), `examples/downstream_api` and `examples/mcp_server` (rmcp,
//! streamable HTTP) as processes, an OIDC issuer for the agent's platform
//! identity in this process, and an agent speaking MCP's JSON-RPC over
//! HTTPS.
//!
//! It proves: a request without a token gets `401` with
//! `resource_metadata`; that metadata document (RFC 9728) names the broker;
//! a tool call without the tool's scope gets `403 insufficient_scope` with
//! the scope; a call with the right token runs the tool; the tool that
//! calls the downstream API exchanges the received token, so the
//! downstream sees `act` (the MCP server) and refuses the agent's original
//! token; the destructive tool runs only with a token a human approved for
//! exactly that call; a revoked token stops the next call.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tessera::mint::keyring::SigningAlgorithm;
use tessera::testkit::{free_port, ChildGuard, TestIssuer};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const TE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const MCP_SERVER_ID: &str = "spiffe://example.org/service/payments-api";
const AGENT: &str = "agent:triage";

/// `target/<profile>/examples/<name>` (`cargo test` builds the examples;
/// `cargo test --test mcp` alone does not: `cargo build --examples` first).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let p = profile_dir.join("examples").join(name);
    assert!(
        p.exists(),
        "{} missing: run the tests with `cargo test`, which builds the examples",
        p.display()
    );
    p
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn wait_for(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what} did not come up; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn log_says(log: &Path, text: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|l| l.contains(text))
}

fn connects(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn decode(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// An MCP client session (JSON-RPC over streamable HTTP) with one token.
struct Mcp {
    http: reqwest::Client,
    url: String,
    session: Option<String>,
    next_id: u64,
}

/// What the server answered: status, `WWW-Authenticate`, the JSON-RPC
/// message (from a JSON body or the SSE stream).
struct Answer {
    status: u16,
    challenge: String,
    message: Value,
}

impl Mcp {
    async fn post(&mut self, token: Option<&str>, body: Value) -> Answer {
        let mut req = self
            .http
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-06-18")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        if let Some(s) = resp.headers().get("mcp-session-id") {
            self.session = Some(s.to_str().unwrap().to_owned());
        }
        let text = resp.text().await.unwrap();
        let message = serde_json::from_str(&text).unwrap_or_else(|_| {
            // An SSE stream: the last `data:` line that is a JSON-RPC message.
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                .rfind(|m| m.get("jsonrpc").is_some())
                .unwrap_or(Value::Null)
        });
        Answer {
            status,
            challenge,
            message,
        }
    }

    async fn initialize(&mut self, token: &str) {
        let a = self
            .post(
                Some(token),
                json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "tessera-test", "version": "1"}}}),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.message);
        assert!(
            a.message["result"]["serverInfo"].is_object(),
            "{}",
            a.message
        );
        let a = self
            .post(
                Some(token),
                json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            )
            .await;
        assert_eq!(a.status, 202);
    }

    async fn call(&mut self, token: &str, tool: &str, args: Value) -> Answer {
        self.next_id += 1;
        let id = self.next_id;
        self.post(
            Some(token),
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                   "params": {"name": tool, "arguments": args}}),
        )
        .await
    }
}

/// The text a successful tool call returned, parsed as JSON.
fn tool_output(a: &Answer) -> Value {
    assert_eq!(a.status, 200, "{}", a.message);
    let result = &a.message["result"];
    assert_ne!(result["isError"], true, "{}", a.message);
    serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap()
}

struct Broker {
    url: String,
    http: reqwest::Client,
}

impl Broker {
    async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/token", self.url))
            .form(form)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_server_example_is_an_oauth_resource_server_that_exchanges_downstream() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (port, ops, mcp_port, down_port) = (free_port(), free_port(), free_port(), free_port());
    let issuer = TestIssuer::start(&d.join("issuer"), SigningAlgorithm::ES256)
        .await
        .unwrap();

    // The example config, on free ports, trusting this test's OIDC issuer.
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mcp.toml"))
            .unwrap();
    for s in [
        "[approvals]\n",
        "127.0.0.1:8443",
        "127.0.0.1:9090",
        "127.0.0.1:8445",
        "127.0.0.1:8446",
        "issuer = \"https://127.0.0.1:8447\"",
    ] {
        assert!(shipped.contains(s), "{s}");
    }
    let cfg = shipped
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{ops}"))
        .replace("127.0.0.1:8445", &format!("127.0.0.1:{mcp_port}"))
        .replace("127.0.0.1:8446", &format!("127.0.0.1:{down_port}"))
        .replace(
            "issuer = \"https://127.0.0.1:8447\"",
            &format!(
                "issuer = \"{}\"\nca = \"{}\"",
                issuer.url,
                issuer.ca_path.display()
            ),
        )
        .replace("[approvals]\n", "[approvals]\ninterval = \"1s\"\n");
    std::fs::create_dir_all(d.join("config")).unwrap();
    std::fs::write(d.join("config/mcp.toml"), &cfg).unwrap();

    let check = Command::new(BIN)
        .args(["config", "check", "--config", "config/mcp.toml"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", show(&check));

    // 1. The broker.
    let broker_log = d.join("broker.log");
    let _broker = ChildGuard(
        Command::new(BIN)
            .args(["serve", "--config", "config/mcp.toml"])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&broker_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("the broker", &broker_log, || {
        connects(ops) && connects(port)
    })
    .await;
    let broker_url = format!("https://127.0.0.1:{port}");

    // 2. The downstream API and 3. the MCP server.
    let down_url = format!("https://127.0.0.1:{down_port}");
    let down_log = d.join("downstream.log");
    let _down = ChildGuard(
        Command::new(example("downstream_api"))
            .args(["--broker", &broker_url])
            .args(["--listen", &format!("127.0.0.1:{down_port}")])
            .current_dir(d)
            .stdout(std::fs::File::create(&down_log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mcp_log = d.join("mcp.log");
    let _mcp = ChildGuard(
        Command::new(example("mcp_server"))
            .args(["--broker", &broker_url])
            .args(["--listen", &format!("127.0.0.1:{mcp_port}")])
            .args(["--downstream", &down_url])
            .current_dir(d)
            .stdout(std::fs::File::create(&mcp_log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    wait_for("the downstream API", &down_log, || {
        log_says(&down_log, "downstream api on")
    })
    .await;
    wait_for("the MCP server", &mcp_log, || {
        log_says(&mcp_log, "mcp server on")
    })
    .await;

    // The agent: trusts the dev CA, no client certificate (its identity is
    // its platform's OIDC token, so its tokens are unbound).
    let ca = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_file(d.join("keys/dev/ca.pem")).unwrap()
    };
    let http = tessera::testkit::https_client(&ca, None, false).unwrap();
    let broker = Broker {
        url: broker_url.clone(),
        http: http.clone(),
    };
    let resource = format!("https://127.0.0.1:{mcp_port}/mcp");
    let metadata_url =
        format!("https://127.0.0.1:{mcp_port}/.well-known/oauth-protected-resource/mcp");
    let mut mcp = Mcp {
        http: http.clone(),
        url: resource.clone(),
        session: None,
        next_id: 0,
    };

    // No token: 401 pointing to the metadata (RFC 9728 §5.1).
    let a = mcp
        .post(
            None,
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}),
        )
        .await;
    assert_eq!(a.status, 401);
    assert!(
        a.challenge
            .starts_with(&format!(r#"Bearer resource_metadata="{metadata_url}""#)),
        "{}",
        a.challenge
    );

    // The metadata names the resource and the broker (then RFC 8414 from there).
    let doc: Value = http
        .get(&metadata_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["resource"], resource.as_str());
    assert_eq!(doc["authorization_servers"], json!([broker_url.as_str()]));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    for s in ["tickets:read", "tickets:write", "tickets:delete"] {
        assert!(
            doc["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(s)),
            "{doc}"
        );
    }
    let as_meta: Value = http
        .get(format!(
            "{broker_url}/.well-known/oauth-authorization-server"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(as_meta["token_endpoint"], format!("{broker_url}/token"));

    // The agent's token for the MCP server: its OIDC identity exchanged
    // for aud = the MCP server's URL, tickets:read only.
    let identity = issuer.sign(&issuer.claims(AGENT, "tessera"));
    let exchange = |scope: &'static str, audience: String| {
        let identity = identity.clone();
        let broker = &broker;
        async move {
            broker
                .token(&[
                    ("grant_type", TE),
                    ("subject_token", &identity),
                    ("subject_token_type", JWT),
                    ("audience", &audience),
                    ("scope", scope),
                    ("task", "triage-4711"),
                ])
                .await
        }
    };
    let (s, v) = exchange("tickets:read", resource.clone()).await;
    assert_eq!(s, 200, "{v}");
    let read_token = v["access_token"].as_str().unwrap().to_owned();
    let claims = decode(&read_token);
    assert_eq!(claims["aud"], resource.as_str());
    assert!(claims.get("cnf").is_none(), "unbound: {claims}");

    // A tool call with the right token.
    mcp.initialize(&read_token).await;
    let a = mcp.call(&read_token, "read_tickets", json!({})).await;
    let out = tool_output(&a);
    assert_eq!(out["tickets"][0]["title"], "printer on fire");
    assert_eq!(out["caller"], AGENT);

    // A tool whose scope the token lacks: 403 naming the scope, nothing runs.
    let a = mcp
        .call(&read_token, "write_ticket", json!({"title": "new"}))
        .await;
    assert_eq!(a.status, 403);
    assert!(
        a.challenge.starts_with(
            r#"Bearer error="insufficient_scope", scope="tickets:write", error_description="#
        ),
        "{}",
        a.challenge
    );
    assert!(
        a.challenge
            .ends_with(&format!(r#"resource_metadata="{metadata_url}""#)),
        "{}",
        a.challenge
    );
    let a = mcp.call(&read_token, "read_tickets", json!({})).await;
    assert_eq!(tool_output(&a)["tickets"].as_array().unwrap().len(), 1);

    // A token for another audience is refused (RFC 8707).
    let (s, v) = exchange("tickets:read", down_url.clone()).await;
    assert_eq!(s, 200, "{v}");
    let downstream_direct = v["access_token"].as_str().unwrap().to_owned();
    let a = mcp
        .call(&downstream_direct, "read_tickets", json!({}))
        .await;
    assert_eq!(a.status, 401);
    assert!(
        a.challenge.starts_with(r#"Bearer error="invalid_token""#),
        "{}",
        a.challenge
    );

    // The downstream tool: the MCP server exchanges the token it received.
    let a = mcp.call(&read_token, "read_archive", json!({})).await;
    let out = tool_output(&a);
    assert_eq!(out["downstream"]["caller"], AGENT, "{out}");
    assert_eq!(
        out["downstream"]["actors"],
        json!([MCP_SERVER_ID]),
        "the downstream sees the MCP server in act: {out}"
    );
    assert_eq!(out["downstream"]["task"], "triage-4711");
    let down = std::fs::read_to_string(&down_log).unwrap();
    assert!(
        down.contains(&format!(
            r#"200 GET /archive  sub={AGENT} act=["{MCP_SERVER_ID}"]"#
        )),
        "{down}"
    );
    assert!(
        !down.contains(claims["jti"].as_str().unwrap()),
        "the agent's own token never reached the downstream API: {down}"
    );

    // The downstream refuses the agent's original token (another audience,
    // no act), and a token for itself that the MCP server did not obtain.
    let r = http
        .get(format!("{down_url}/archive"))
        .bearer_auth(&read_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{down_url}/archive"))
        .bearer_auth(&downstream_direct)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let down = std::fs::read_to_string(&down_log).unwrap();
    assert!(down.contains("reason=aud_mismatch"), "{down}");
    assert!(down.contains("reason=actor_not_allowed"), "{down}");

    // The destructive tool: its scope needs a human's approval of exactly
    // this call, carried as authorization_details.
    let details =
        json!([{"type": "mcp_tool_call", "tool": "delete_ticket", "arguments": {"id": 4711}}])
            .to_string();
    let delete_form = |approval: Option<String>| {
        let mut f = vec![
            ("grant_type", TE.to_owned()),
            ("subject_token", identity.clone()),
            ("subject_token_type", JWT.to_owned()),
            ("audience", resource.clone()),
            ("scope", "tickets:delete".to_owned()),
            ("task", "triage-4711".to_owned()),
            ("authorization_details", details.clone()),
        ];
        if let Some(a) = approval {
            f.push(("approval_id", a));
        }
        f
    };
    let form = delete_form(None);
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (s, v) = broker.token(&form).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("authorization_pending")),
        "{v}"
    );
    let approval_id = v["approval_id"].as_str().unwrap().to_owned();
    let approve = Command::new(BIN)
        .args(["approve", &approval_id, "--reason", "duplicate ticket"])
        .args(["--url", &broker_url])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(approve.status.success(), "{}", show(&approve));
    let deadline = Instant::now() + Duration::from_secs(20);
    let delete_token = loop {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let form = delete_form(Some(approval_id.clone()));
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, v) = broker.token(&form).await;
        if s == 200 {
            break v["access_token"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline
                && matches!(
                    v["error"].as_str(),
                    Some("authorization_pending" | "slow_down")
                ),
            "{v}"
        );
    };
    // Another call than the approved one is refused by the tool ...
    let a = mcp
        .call(&delete_token, "delete_ticket", json!({"id": 1}))
        .await;
    assert_eq!(a.status, 200);
    assert!(a.message["error"].is_object(), "{}", a.message);
    // ... the approved one runs.
    let a = mcp
        .call(&delete_token, "delete_ticket", json!({"id": 4711}))
        .await;
    assert_eq!(tool_output(&a)["deleted"], true);

    // A revoked token stops the next call.
    let revoke = Command::new(BIN)
        .args(["revoke", "--jti", claims["jti"].as_str().unwrap()])
        .args(["--reason", "mcp test", "--url", &broker_url])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(revoke.status.success(), "{}", show(&revoke));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = mcp.call(&read_token, "read_tickets", json!({})).await;
        if a.status == 401 {
            assert!(a.challenge.contains(r#"error="invalid_token""#));
            break;
        }
        assert!(Instant::now() < deadline, "the revoked token still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(&mcp_log).unwrap();
    assert!(log.contains("reason=revoked"), "{log}");
    assert!(log.contains("tools/call read_archive"), "{log}");
    assert!(
        !log.contains(&read_token),
        "the MCP server never logs a token"
    );
}
