//! The quickstarts (docs/quickstart-*.md), run for real: each page's
//! policy block is the broker's policy, each page's `tessera token
//! exchange` command is run (only the URL, CA and file paths changed), and
//! the subject tokens have the shape the real identity sources issue — a
//! projected Kubernetes service-account token, a GitHub Actions OIDC token,
//! a SPIFFE X.509-SVID. The test issuer stands in for the cluster's and
//! GitHub's issuers (renamed `ci` in the policy).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::docs::{read, tested_block, toml_block, with_values, words};
use common::*;
use serde_json::{json, Value};
use tessera::pki::LeafSpec;

/// A projected service-account token's claims (audience `tessera`), as the
/// API server issues them.
fn k8s_claims(b: &TestBroker, namespace: &str, sa: &str) -> Value {
    let mut c = b.issuer().claims(
        &format!("system:serviceaccount:{namespace}:{sa}"),
        "tessera",
    );
    c["aud"] = json!(["tessera"]);
    c["kubernetes.io"] = json!({
        "namespace": namespace,
        "pod": {"name": format!("{sa}-7d9f8c"), "uid": "0f6a6b3e-52a0-4c1e-9d57-3f7c0e8f1a01"},
        "serviceaccount": {"name": sa, "uid": "8b1e5d2a-5f3c-4d8e-a6b7-1c2d3e4f5a6b"},
    });
    c
}

/// `tessera token exchange` from a page, pointed at `b`.
fn exchange(b: &TestBroker, cmd: &str, values: &[(&str, &str)]) -> (i32, String, String) {
    let ca = b.home().join("ca.pem");
    let mut v = vec![("--url", b.url("")), ("--ca", ca.display().to_string())];
    v.extend(values.iter().map(|(f, x)| (*f, (*x).to_string())));
    let v: Vec<(&str, &str)> = v.iter().map(|(f, x)| (*f, x.as_str())).collect();
    common::docs::run_tessera(&with_values(words(cmd), &v), &b.home())
}

/// Kubernetes: the page's issuer entry (with `bearer_token_file`) and
/// policy; an issuer whose discovery and JWKS demand a bearer token, as
/// the API server's `/openid/v1/jwks` does; the file re-read when it
/// changes (the kubelet rotates it); the reader token never in the audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_pod_projected_token_gets_a_task_token() {
    let page = read("docs/quickstart-kubernetes.md");
    let issuer_block = toml_block(&page, "[[issuers]]");
    assert!(issuer_block.contains("bearer_token_file"), "{issuer_block}");
    let policy = toml_block(&page, "[[policies]]").replace("issuer = \"k8s\"", "issuer = \"ci\"");
    let t = tempfile::tempdir().unwrap();
    let reader = t.path().join("broker-sa-token");
    std::fs::write(&reader, "reader-1\n").unwrap();
    let b = TestBroker::start_with(Options {
        policies: policy,
        discovery: true,
        issuer_extra: format!(
            "bearer_token_file = \"{}\"\njwks_refresh_cooldown = \"1s\"",
            reader.display()
        ),
        ..Default::default()
    })
    .await;
    b.issuer().require_bearer(Some("reader-1"));
    let cmd = tested_block(
        &page,
        "tests/quickstarts.rs::kubernetes_pod_projected_token_gets_a_task_token",
    );
    let token_file = t.path().join("token");
    let tf = token_file.display().to_string();
    let write_token = |c: &Value| std::fs::write(&token_file, b.issuer().sign(c)).unwrap();

    write_token(&k8s_claims(&b, "agents", "ticket-agent"));
    let (code, out, err) = exchange(&b, &cmd, &[("--subject-token-file", &tf)]);
    assert_eq!(code, 0, "{err}");
    let (_, c) = decode(out.trim());
    assert_eq!(c["sub"], "system:serviceaccount:agents:ticket-agent");
    assert_eq!(c["aud"], "https://api.example.com");
    assert_eq!(c["txn"], "triage-4711");
    assert_eq!(b.issuer().unauthorized_hits(), 0);

    // the same service account name in another namespace: refused
    write_token(&k8s_claims(&b, "default", "ticket-agent"));
    let (code, _, err) = exchange(&b, &cmd, &[("--subject-token-file", &tf)]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid_request"), "{err}");

    // the issuer rotates its key and now wants another reader token, which
    // the broker's file does not hold yet: keys cannot be fetched (503)
    b.issuer().require_bearer(Some("reader-2"));
    b.issuer()
        .rotate(tessera::mint::keyring::SigningAlgorithm::RS256)
        .unwrap();
    write_token(&k8s_claims(&b, "agents", "ticket-agent"));
    let mut refused = String::new();
    for _ in 0..40 {
        let (code, _, err) = exchange(&b, &cmd, &[("--subject-token-file", &tf)]);
        assert_eq!(code, 1, "the old reader token cannot fetch the new key");
        if b.issuer().unauthorized_hits() > 0 {
            refused = err;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(b.issuer().unauthorized_hits() > 0, "the JWKS was refetched");
    assert!(!refused.contains("reader-"), "{refused}");

    // the file changes (as the kubelet rewrites it): the next fetch uses it
    std::fs::write(&reader, "reader-2\n").unwrap();
    let mut ok = None;
    for _ in 0..40 {
        let (code, out, _) = exchange(&b, &cmd, &[("--subject-token-file", &tf)]);
        if code == 0 {
            ok = Some(out);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = ok.expect("an exchange succeeds once the file holds the new token");
    let (_, c) = decode(out.trim());
    assert_eq!(c["sub"], "system:serviceaccount:agents:ticket-agent");

    // the reader token is never recorded
    let audit = serde_json::to_string(&b.audit_records().await).unwrap();
    assert!(!audit.contains("reader-1") && !audit.contains("reader-2"));
    b.stop().await;
}

/// A GitHub Actions OIDC token's claims for `acme/app`.
fn github_claims(b: &TestBroker, git_ref: &str, environment: Option<&str>) -> Value {
    let sub = match environment {
        Some(e) => format!("repo:acme/app:environment:{e}"),
        None => format!("repo:acme/app:ref:{git_ref}"),
    };
    let mut c = b.issuer().claims(&sub, "tessera");
    for (k, v) in [
        ("repository", "acme/app"),
        ("repository_owner", "acme"),
        ("repository_visibility", "private"),
        ("ref", git_ref),
        ("ref_type", "branch"),
        ("sha", "9f3c2b1a0e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"),
        ("workflow", "deploy"),
        (
            "job_workflow_ref",
            "acme/app/.github/workflows/deploy.yml@refs/heads/main",
        ),
        ("event_name", "push"),
        ("actor", "octocat"),
        ("run_id", "4711"),
        ("run_attempt", "1"),
        ("runner_environment", "github-hosted"),
    ] {
        c[k] = json!(v);
    }
    if let Some(e) = environment {
        c["environment"] = json!(e);
    }
    c
}

/// GitHub Actions: the page's policy decides on `repository`, `ref` and
/// `environment`; the page's command and the example workflow's exchange
/// step both get a token for the main branch deploying to production, and
/// nothing for another branch or without the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_actions_job_claims_decide() {
    let page = read("docs/quickstart-github-actions.md");
    let policy =
        toml_block(&page, "[[policies]]").replace("issuer = \"github\"", "issuer = \"ci\"");
    let b = TestBroker::start_with(Options {
        policies: policy,
        ..Default::default()
    })
    .await;
    let cmd = tested_block(
        &page,
        "tests/quickstarts.rs::github_actions_job_claims_decide",
    );
    let workflow = read("deploy/github/deploy.yml");
    assert!(workflow.contains("id-token: write"));
    assert!(workflow.contains("environment: production"));
    assert!(workflow.contains("audience=tessera"));
    let step = workflow
        .lines()
        .find_map(|l| {
            let i = l.find("tessera token exchange")?;
            Some(
                l[i..]
                    .trim_end_matches(')')
                    .replace("${GITHUB_RUN_ID}", "4711"),
            )
        })
        .expect("the workflow's exchange step");
    let jwt = b.home().join("oidc.jwt");
    let jf = jwt.display().to_string();

    for command in [cmd.as_str(), step.as_str()] {
        std::fs::write(
            &jwt,
            b.issuer()
                .sign(&github_claims(&b, "refs/heads/main", Some("production"))),
        )
        .unwrap();
        let (code, out, err) = exchange(&b, command, &[("--subject-token-file", &jf)]);
        if code != 0 {
            let last = b.audit_records().await.pop();
            panic!("{command}: {err}; audit: {last:?}");
        }
        let (_, c) = decode(out.trim());
        assert_eq!(c["sub"], "repo:acme/app:environment:production");
        assert_eq!(c["scope"], "deploy:write");
        assert_eq!(c["owner"], "bob@example.com");
        assert!(c["txn"].as_str().unwrap().starts_with("gh-"), "{c}");
    }
    for (git_ref, env) in [
        ("refs/heads/feature", Some("production")),
        ("refs/heads/main", None),
        ("refs/heads/main", Some("staging")),
    ] {
        std::fs::write(&jwt, b.issuer().sign(&github_claims(&b, git_ref, env))).unwrap();
        let (code, _, err) = exchange(&b, &cmd, &[("--subject-token-file", &jf)]);
        assert_eq!(code, 1, "{git_ref} {env:?}");
        assert!(err.contains("invalid_request"), "{err}");
    }
    b.stop().await;
}

/// SPIFFE: an X.509-SVID (URI SAN = the SPIFFE ID, signed by the trusted
/// bundle) is the subject; the token is bound to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_svid_gets_a_bound_task_token() {
    let page = read("docs/quickstart-spiffe.md");
    let b = TestBroker::start_with(Options {
        policies: toml_block(&page, "[[policies]]"),
        ..Default::default()
    })
    .await;
    let svid =
        b.ca.issue(&LeafSpec::client_spiffe(
            "spiffe://example.org/ns/agents/sa/ticket-agent",
        ))
        .unwrap();
    let (cert, key) = (b.home().join("svid.pem"), b.home().join("svid_key.pem"));
    std::fs::write(&cert, &svid.cert_pem).unwrap();
    std::fs::write(&key, &svid.key_pem).unwrap();
    let cmd = tested_block(
        &page,
        "tests/quickstarts.rs::spiffe_svid_gets_a_bound_task_token",
    );
    let (code, out, err) = exchange(
        &b,
        &cmd,
        &[
            ("--cert", cert.to_str().unwrap()),
            ("--key", key.to_str().unwrap()),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (_, c) = decode(out.trim());
    assert_eq!(c["sub"], "spiffe://example.org/ns/agents/sa/ticket-agent");
    assert_eq!(c["cnf"]["x5t#S256"], thumbprint(&svid.cert_der));

    // another workload's SVID from the same bundle: no policy
    let other =
        b.ca.issue(&LeafSpec::client_spiffe(
            "spiffe://example.org/ns/agents/sa/other",
        ))
        .unwrap();
    std::fs::write(&cert, &other.cert_pem).unwrap();
    std::fs::write(&key, &other.key_pem).unwrap();
    let (code, _, _) = exchange(
        &b,
        &cmd,
        &[
            ("--cert", cert.to_str().unwrap()),
            ("--key", key.to_str().unwrap()),
        ],
    );
    assert_eq!(code, 1);
    b.stop().await;
}

/// docs/quickstart-dev.md, every command block run for real in a fresh
/// directory with the shipped development config (ports changed): `serve`
/// (and its start-up banner), the agent's token, re-exchange, the dev OIDC
/// issuer, delegation by two agents, a refused scope, the audit tail.
#[test]
fn dev_quickstart_blocks_run() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use tessera::testkit::{free_port, ChildGuard};

    let page = read("docs/quickstart-dev.md");
    let d = tempfile::tempdir().unwrap();
    let (port, ops, iss) = (free_port(), free_port(), free_port());
    let cfg = read("config/tessera.toml")
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{ops}"))
        .replace("127.0.0.1:8445", &format!("127.0.0.1:{iss}"));
    std::fs::create_dir_all(d.path().join("config")).unwrap();
    std::fs::write(d.path().join("config/tessera.toml"), cfg).unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_tessera"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let url = format!("https://127.0.0.1:{port}");
    let wait_port = |p: u16| {
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", p)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("port {p} never opened");
    };

    let blocks: Vec<_> = common::docs::blocks(&page)
        .into_iter()
        .filter(|b| b.info == "sh")
        .collect();
    assert!(blocks.len() >= 6, "{blocks:?}");
    let mut children = Vec::new();
    for b in &blocks {
        let text = b.text.trim();
        if text == "cargo run --release -- serve" {
            // the same binary `cargo run` builds and runs
            let child = Command::new(bin)
                .arg("serve")
                .current_dir(d.path())
                .stdout(std::fs::File::create(d.path().join("audit.out")).unwrap())
                .stderr(std::fs::File::create(d.path().join("serve.log")).unwrap())
                .spawn()
                .unwrap();
            children.push(ChildGuard(child));
            wait_port(port);
            let log = || std::fs::read_to_string(d.path().join("serve.log")).unwrap();
            for _ in 0..100 {
                if log().contains("Next, in another terminal") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let log = log();
            assert!(log.contains("is ready on"), "{log}");
            assert!(
                log.contains(&format!("tessera token exchange --url {url} --cert")),
                "{log}"
            );
            continue;
        }
        if text.starts_with("tessera dev issuer") {
            let words = words(text);
            let mut child = Command::new(bin)
                .args(&words[1..])
                .current_dir(d.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            children.push(ChildGuard(child));
            let (_, c) = decode(line.trim());
            assert_eq!(c["sub"], "user:alice");
            assert_eq!(c["iss"], format!("https://127.0.0.1:{iss}"));
            wait_port(iss);
            continue;
        }
        let o = Command::new("sh")
            .arg("-ec")
            .arg(text)
            .current_dir(d.path())
            .env("PATH", &path)
            .env("TESSERA_URL", &url)
            .env_remove("TESSERA_CERT")
            .env_remove("TESSERA_KEY")
            .env_remove("TESSERA_CA")
            .env_remove("TESSERA_CONFIG")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "docs/quickstart-dev.md line {}:\n{text}\n{}{}",
            b.line,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let claims = |f: &str| decode(std::fs::read_to_string(d.path().join(f)).unwrap().trim()).1;
    let agent = claims("agent.jwt");
    assert_eq!(agent["sub"], "spiffe://example.org/agent/demo");
    assert_eq!(claims("narrowed.jwt")["scope"], "tickets:read");
    assert_eq!(claims("narrowed.jwt")["txn"], "triage-4711");
    assert_eq!(claims("alice-own.jwt")["sub"], "user:alice");
    let delegated = claims("delegated.jwt");
    assert_eq!(delegated["sub"], "user:alice");
    assert_eq!(delegated["act"]["sub"], "spiffe://example.org/agent/demo");
    assert_eq!(
        claims("reviewed.jwt")["act"]["sub"],
        "spiffe://example.org/agent/reviewer"
    );
    // DPoP: the token is bound to the key; the proof is by that key, for
    // that request and that token
    let dpop_token = std::fs::read_to_string(d.path().join("alice-dpop.jwt")).unwrap();
    let dpop_token = dpop_token.trim();
    let bound = decode(dpop_token).1;
    let proof = std::fs::read_to_string(d.path().join("proof.jwt")).unwrap();
    let now = tessera::testkit::now();
    let p = tessera::dpop::verify_proof(
        proof.trim(),
        &tessera::dpop::ProofCheck::new("GET", "https://api.example.com/tickets", now)
            .access_token(dpop_token),
    )
    .unwrap();
    assert_eq!(bound["cnf"]["jkt"], p.jkt.as_str());
    assert_eq!(bound["sub"], "user:alice");
    drop(children);
}

/// `tessera dev` signs anything: it refuses a config without `[dev]`.
#[test]
fn dev_issuer_refuses_a_production_config() {
    let d = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["dev", "token", "--config"])
        .arg(common::docs::repo().join("deploy/tessera.toml"))
        .current_dir(d.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("only with [dev] generate_missing = true"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
}
