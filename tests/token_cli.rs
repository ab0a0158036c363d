//! `tessera token exchange` and `tessera token verify` (issue 22 item 4),
//! the real binary against a real broker over TLS: the certificate or a
//! subject token file as the subject, delegation, a human approval waited
//! for by polling, and verification that names the failing check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// Writes the agent's certificate and key into the broker's directory.
fn agent_files(b: &TestBroker) -> (std::path::PathBuf, std::path::PathBuf) {
    let d = b.home();
    let (c, k) = (d.join("agent.pem"), d.join("agent-key.pem"));
    std::fs::write(&c, &b.agent.cert_pem).unwrap();
    std::fs::write(&k, &b.agent.key_pem).unwrap();
    (c, k)
}

/// The binary with `--url` and `--ca` for `b`, and `cert` when given.
fn tessera(b: &TestBroker, cert: Option<(&Path, &Path)>, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .arg("--url")
        .arg(b.url(""))
        .arg("--ca")
        .arg(b.home().join("ca.pem"))
        .env_remove("TESSERA_CERT")
        .env_remove("TESSERA_KEY")
        .current_dir(b.home());
    if let Some((cert, key)) = cert {
        c.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    c
}

fn run(mut c: Command) -> (i32, String, String) {
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_prints_a_token_and_verify_names_the_failing_check() {
    // the agent may act for CI identities (delegation with --actor-cert)
    let policies = DEFAULT_POLICIES
        .replace(
            "max_ttl = \"10m\"",
            "max_ttl = \"10m\"\nmay_act_for = [\"ci\"]",
        )
        .replace(
            "audiences = [\"https://deploy.example.com\"]\nscopes = [\"deploy:read\", \"deploy:write\"]",
            "audiences = [\"https://deploy.example.com\", \"https://api.example.com\"]\nscopes = [\"deploy:read\", \"deploy:write\", \"tickets:read\"]",
        );
    let b = TestBroker::start_with(Options {
        policies,
        ..Default::default()
    })
    .await;
    let (cert, key) = agent_files(&b);

    // 1. the certificate is the subject: the token alone on stdout
    let (code, out, err) = run(tessera(
        &b,
        Some((&cert, &key)),
        &[
            "token",
            "exchange",
            "--audience",
            API,
            "--scope",
            "tickets:read",
            "--task",
            "triage-1",
        ],
    ));
    assert_eq!(code, 0, "{err}");
    let token = out.trim().to_string();
    assert_eq!(out.lines().count(), 1, "{out}");
    let (_, claims) = decode(&token);
    assert_eq!(claims["sub"], AGENT);
    assert_eq!(claims["txn"], "triage-1");
    assert!(claims["cnf"]["x5t#S256"].is_string(), "bound: {claims}");

    // 2. verify: valid for its audience, naming subject, task and binding
    let (code, out, err) = run(tessera(
        &b,
        None,
        &["token", "verify", &token, "--audience", API],
    ));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("VALID"), "{out}");
    assert!(out.contains(AGENT) && out.contains("triage-1"), "{out}");
    assert!(out.contains("x5t#S256"), "{out}");
    assert!(out.contains("not checked: revocation"), "{out}");

    // ... for another audience: which check, and what it means
    let (code, out, _) = run(tessera(
        &b,
        None,
        &[
            "token",
            "verify",
            &token,
            "--audience",
            "https://other.example.com",
        ],
    ));
    assert_eq!(code, 1);
    assert!(
        out.contains("aud_mismatch") && out.contains("another resource"),
        "{out}"
    );
    // ... altered: the signature
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let sig = parts[2].clone();
    parts[2] = format!(
        "{}{}",
        if sig.starts_with('A') { "B" } else { "A" },
        &sig[1..]
    );
    let (code, out, _) = run(tessera(
        &b,
        None,
        &[
            "--json",
            "token",
            "verify",
            &parts.join("."),
            "--audience",
            API,
        ],
    ));
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["valid"], false);
    assert!(
        v["explanation"].as_str().unwrap().contains("signature"),
        "{v}"
    );
    // ... a CI token (another issuer's JWT) is not a Tessera access token
    let ci = b.ci_token();
    let (code, out, _) = run(tessera(
        &b,
        None,
        &["token", "verify", &ci, "--audience", "tessera"],
    ));
    assert_eq!(code, 1);
    assert!(out.contains("typ_mismatch"), "{out}");
    // ... a wrong expected issuer
    let (code, out, _) = run(tessera(
        &b,
        None,
        &[
            "token",
            "verify",
            &token,
            "--audience",
            API,
            "--issuer",
            "https://elsewhere.test",
        ],
    ));
    assert_eq!(code, 1);
    assert!(out.contains("iss_mismatch"), "{out}");

    // 3. a subject token file (an OIDC JWT), no certificate presented (the
    // operator defaults are not sent): an unbound token, JSON answer
    let ci_file = b.home().join("ci.jwt");
    std::fs::write(&ci_file, format!("{ci}\n")).unwrap();
    let (code, out, err) = run(tessera(
        &b,
        None,
        &[
            "--json",
            "token",
            "exchange",
            "--audience",
            "https://deploy.example.com",
            "--scope",
            "deploy:read",
            "--subject-token-file",
            ci_file.to_str().unwrap(),
        ],
    ));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["token_type"], "Bearer");
    let (_, c) = decode(v["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], "repo:acme/app:ref:refs/heads/main");
    assert!(c.get("cnf").is_none(), "no certificate was presented: {c}");
    assert!(!err.contains(&ci), "the subject token is never printed");

    // 4. delegation: the CI identity as subject, the agent certificate as actor
    let (code, out, err) = run(tessera(
        &b,
        Some((&cert, &key)),
        &[
            "token",
            "exchange",
            "--audience",
            API,
            "--scope",
            "tickets:read",
            "--subject-token-file",
            ci_file.to_str().unwrap(),
            "--actor-cert",
        ],
    ));
    assert_eq!(code, 0, "{err}");
    let (_, c) = decode(out.trim());
    assert_eq!(c["sub"], "repo:acme/app:ref:refs/heads/main");
    assert_eq!(c["act"]["sub"], AGENT);

    // 5. refused: the broker's code and description, exit 1
    let (code, out, err) = run(tessera(
        &b,
        Some((&cert, &key)),
        &[
            "token",
            "exchange",
            "--audience",
            API,
            "--scope",
            "tickets:admin",
        ],
    ));
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("invalid_scope"), "{err}");
    // the generic description names the command that finds the reason;
    // run it as printed (operator flags added)
    let hint = err
        .split("(tessera ")
        .nth(1)
        .and_then(|h| h.split(')').next())
        .expect("a command in the description");
    assert_eq!(hint, "audit tail --error invalid_scope");
    let args: Vec<&str> = hint.split(' ').collect();
    let (code, out, err) = b.cli(&args);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "header and the one refusal: {out}");
    assert!(
        lines[1].contains("refused") && lines[1].contains("scope"),
        "{out}"
    );
    // tables fit 120 columns; -o wide shows every column in full
    let (code, out, _) = b.cli(&["audit", "tail", "-n", "50"]);
    assert_eq!(code, 0);
    assert!(out.lines().count() > 3, "{out}");
    for l in out.lines() {
        assert!(
            l.chars().count() <= 120,
            "{} columns: {l}",
            l.chars().count()
        );
    }
    let (code, out, _) = b.cli(&["-o", "wide", "audit", "tail", "-n", "50"]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().contains("CLIENT"), "{out}");
    assert!(out.contains(AGENT), "{out}");
    // filters: one token's records by jti
    let jti = claims["jti"].as_str().unwrap();
    let (code, out, _) = b.cli(&["--json", "audit", "tail", "--jti", jti]);
    assert_eq!(code, 0);
    let recs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !recs.is_empty() && recs.iter().all(|r| r["jti"] == jti),
        "{out}"
    );
    // bad usage before any round trip
    let (code, _, err) = run(tessera(
        &b,
        Some((&cert, &key)),
        &[
            "token",
            "exchange",
            "--audience",
            API,
            "--scope",
            "tickets:read",
            "--actor-cert",
        ],
    ));
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(tessera(
        &b,
        None,
        &[
            "token",
            "exchange",
            "--audience",
            API,
            "--scope",
            "tickets:read",
            "--subject-token-file",
            "no-such-file",
        ],
    ));
    assert_eq!(code, 1);
    assert!(err.contains("no-such-file"), "{err}");
    b.stop().await;
}

const APPROVAL_POLICY: &str = r#"
[[policies]]
name = "agents"
owner = "alice@example.com"
match = { issuer = "mtls", subject = "spiffe://example.org/agent/*" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read", "tickets:delete"]
approval_scopes = ["tickets:delete"]
"#;

/// A request that needs a human: the CLI prints a progress line, polls
/// with the approval id, and prints the token once an operator approves;
/// a denied request exits 1 saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_waits_for_a_human_approval() {
    let b = TestBroker::start_with(Options {
        policies: APPROVAL_POLICY.into(),
        extra: "[approvals]\ninterval = \"1s\"\n".into(),
        ..Default::default()
    })
    .await;
    let (cert, key) = agent_files(&b);
    for approve in [true, false] {
        let mut c = tessera(
            &b,
            Some((&cert, &key)),
            &[
                "token",
                "exchange",
                "--audience",
                API,
                "--scope",
                "tickets:read tickets:delete",
                "--task",
                "cleanup-9",
                "--wait",
                "2m",
            ],
        );
        let child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _guard_pid = child.id();
        // the pending approval appears
        let mut id = None;
        for _ in 0..200 {
            let (_, v) = b.admin(Method::GET, "/admin/v1/approvals", None).await;
            if let Some(a) = v["approvals"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["task"] == "cleanup-9"))
            {
                id = a["id"].as_str().map(str::to_string);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let id = id.expect("a pending approval");
        // the operator's table fits 120 columns; -o wide has every column
        let (code, out, _) = b.cli(&["approvals", "list"]);
        assert_eq!(code, 0);
        assert!(out.contains(&id) && out.contains("cleanup-9"), "{out}");
        assert!(out.lines().all(|l| l.chars().count() <= 120), "{out}");
        let (_, wide, _) = b.cli(&["-o", "wide", "approvals", "list"]);
        assert!(wide.contains("ON BEHALF OF"), "{wide}");
        let verb = if approve { "approve" } else { "deny" };
        let (s, v) = b
            .admin(
                Method::POST,
                &format!("/admin/v1/approvals/{id}/{verb}"),
                Some(serde_json::json!({"reason": "test"})),
            )
            .await;
        assert!(s.is_success(), "{v}");
        let o = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        assert!(
            err.contains(&format!("waiting for a human to approve {id}")),
            "{err}"
        );
        if approve {
            assert_eq!(o.status.code(), Some(0), "{err}");
            let (_, c) = decode(out.trim());
            assert_eq!(c["scope"], "tickets:delete tickets:read");
            assert_eq!(c["txn"], "cleanup-9");
        } else {
            assert_eq!(o.status.code(), Some(1), "{err}");
            assert!(out.is_empty());
            assert!(
                err.contains("access_denied") && err.contains("was denied"),
                "{err}"
            );
        }
    }
    b.stop().await;
}

/// Issue 22 item 5: completion scripts from the same command tree; the
/// connection and output flags under one heading each in a verb's help.
#[test]
fn completion_scripts_and_grouped_global_flags() {
    let d = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(BIN)
            .args(args)
            .env_remove("TESSERA_URL")
            .envs(env.iter().copied())
            .current_dir(d.path())
            .output()
            .unwrap()
    };
    let out = |args: &[&str]| {
        let o = run(args, &[]);
        assert!(o.status.success(), "{args:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let bash = out(&["completion", "bash"]);
    assert!(bash.contains("_tessera()") && bash.contains("--subject-token-file"));
    assert!(out(&["completion", "zsh"]).starts_with("#compdef tessera"));
    let fish = out(&["completion", "fish"]);
    assert!(fish.contains("complete -c tessera") && fish.contains("exchange"));
    // the connection flags are completed after a verb too
    let revoke = bash
        .split("tessera__subcmd__revoke)")
        .nth(1)
        .expect("the revoke verb in the bash script");
    let revoke = revoke.lines().find(|l| l.contains("opts=")).unwrap();
    for f in ["--url", "--cert", "--key", "--ca"] {
        assert!(revoke.contains(f), "{f} completed after revoke: {revoke}");
    }
    assert!(
        fish.lines()
            .any(|l| l.contains("__fish_tessera_using_subcommand revoke") && l.contains("-l ca")),
        "{fish}"
    );
    // the connection flags are listed once, in the top-level help, under
    // their heading
    let top = out(&["--help"]);
    assert_eq!(top.matches("Connection (any verb").count(), 1, "{top}");
    let conn = top.split("Connection (any verb").nth(1).unwrap();
    for f in ["--url <URL>", "--cert <CERT>", "--key <KEY>", "--ca <CA>"] {
        assert_eq!(top.matches(f).count(), 1, "{f}: {top}");
        assert!(conn.contains(f), "{f} under the heading: {top}");
    }
    // a verb's help points there in one line instead of repeating them
    for verb in [
        &["token", "exchange"][..],
        &["revoke"],
        &["audit", "tail"],
        &["token"],
    ] {
        let help = out(&[verb, &["--help"]].concat());
        assert!(!help.contains("Connection (any verb"), "{verb:?}: {help}");
        for f in ["--url <URL>", "--cert <CERT>", "--key <KEY>", "--ca <CA>"] {
            assert!(!help.contains(f), "{f} in {verb:?}: {help}");
        }
        assert_eq!(
            help.lines()
                .filter(|l| l.contains("see `tessera --help`"))
                .count(),
            1,
            "{verb:?}: {help}"
        );
        assert!(help.contains("Output (any verb)"), "{help}");
    }
    // still accepted before or after the verb, and from the environment
    // (an http:// URL is refused before any round trip, naming the URL)
    const JTI: &str = "3f0c8a52-7d3e-4c55-9b1a-2a6f0e4b9c11";
    for (args, env, host) in [
        (
            &["--url", "http://before.test", "revoke", "--jti", JTI][..],
            &[][..],
            "before.test",
        ),
        (
            &["revoke", "--jti", JTI, "--url", "http://after.test"],
            &[],
            "after.test",
        ),
        (
            &["grant", "list", "--url", "http://nested.test"],
            &[],
            "nested.test",
        ),
        (
            &["revoke", "--jti", JTI],
            &[("TESSERA_URL", "http://env.test")],
            "env.test",
        ),
    ] {
        let o = run(args, env);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("--url `http://{host}`")),
            "{args:?}: {err}"
        );
    }
}

/// RFC 8628 polling against a scripted token endpoint: the approval id is
/// repeated, `slow_down` adds 5 s to the interval, a 429 waits its
/// `Retry-After`, and the token is printed at the end. The waits are read
/// from the CLI's progress lines (no clock is asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_honours_interval_slow_down_and_retry_after() {
    use axum::extract::State;
    use axum::response::IntoResponse;
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<String>>>;
    async fn token(State(seen): State<Seen>, body: String) -> axum::response::Response {
        let n = {
            let mut s = seen.lock().unwrap();
            s.push(body);
            s.len()
        };
        let json = |status: u16, v: Value| {
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                axum::Json(v),
            )
                .into_response()
        };
        match n {
            1 => json(
                400,
                serde_json::json!({"error": "authorization_pending", "error_description": "waiting",
                                   "approval_id": "ap-1", "interval": 1}),
            ),
            2 => json(400, serde_json::json!({"error": "slow_down"})),
            3 => {
                let mut r = json(429, serde_json::json!({"error": "slow_down"}));
                r.headers_mut()
                    .insert("retry-after", axum::http::HeaderValue::from_static("2"));
                r
            }
            _ => json(
                200,
                serde_json::json!({"access_token": "tok-123", "token_type": "Bearer",
                                   "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                                   "expires_in": 60, "scope": "s"}),
            ),
        }
    }
    common::init();
    let d = tempfile::tempdir().unwrap();
    let seen: Seen = Arc::default();
    let router = axum::Router::new()
        .route("/token", axum::routing::post(token))
        .with_state(seen.clone());
    let srv = tessera::testkit::TestHttps::start(d.path(), "tok", router)
        .await
        .unwrap();
    std::fs::write(d.path().join("subject.jwt"), "a.b.c").unwrap();
    let o = tokio::task::spawn_blocking({
        let (url, ca, dir) = (srv.url.clone(), srv.ca_path.clone(), d.path().to_path_buf());
        move || {
            Command::new(BIN)
                .args(["token", "exchange", "--audience", "a", "--scope", "s"])
                .arg("--subject-token-file")
                .arg(dir.join("subject.jwt"))
                .args(["--url", &url, "--ca"])
                .arg(ca)
                .env_remove("TESSERA_CERT")
                .env_remove("TESSERA_KEY")
                .current_dir(dir)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(out.trim(), "tok-123");
    let waits: Vec<&str> = err
        .lines()
        .filter_map(|l| l.split("next poll in ").nth(1))
        .collect();
    // pending: the interval (1 s); slow_down: 1 + 5; 429: its Retry-After
    assert_eq!(waits, ["1s", "6s", "2s"], "{err}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert!(!seen[0].contains("approval_id"));
    for body in &seen[1..] {
        assert!(body.contains("approval_id=ap-1"), "{body}");
    }
}
