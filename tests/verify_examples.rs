//! The Python and Node.js verification examples (examples/verify_token.py,
//! examples/verify_token.mjs, shown in docs/resource-servers.md) run
//! against real Tessera tokens: a bound token is accepted with its client
//! certificate and refused without it or with another; a token for another
//! audience, an altered one and a non-Tessera JWT are refused by the check
//! the page names. Skips loudly when python3 with PyJWT, or node, is
//! missing (unless TESSERA_REQUIRE_EXAMPLE_RUNTIMES=1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::docs::repo;
use common::*;

fn available(program: &str, probe: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("TESSERA_REQUIRE_EXAMPLE_RUNTIMES").as_deref() != Ok("1"),
            "{program} {probe:?} is required"
        );
        eprintln!("SKIPPED: {program} {probe:?} failed: that example is not run");
    }
    ok
}

fn run(cmd: &[String], token: &str) -> (bool, String, String) {
    let mut c = Command::new(&cmd[0])
        .args(&cmd[1..])
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(token.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_node_examples_make_the_typ_aud_and_cnf_checks() {
    let b = TestBroker::start().await;
    let d = b.home();
    let jwks = b
        .anon()
        .get(b.url("/jwks.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    std::fs::write(d.join("jwks.json"), jwks).unwrap();
    std::fs::write(d.join("agent.pem"), &b.agent.cert_pem).unwrap();
    std::fs::write(d.join("other.pem"), &b.payments.cert_pem).unwrap();
    let (s, v) = b.agent_token("tickets:read", Some("t-1")).await;
    assert_eq!(s, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_string();
    let mut altered: Vec<char> = token.chars().collect();
    let n = altered.len();
    altered[n - 3] = if altered[n - 3] == 'A' { 'B' } else { 'A' };
    let altered: String = altered.into_iter().collect();
    let ci = b.ci_token();

    let mut runtimes = Vec::new();
    if available("python3", &["-c", "import jwt, cryptography"]) {
        runtimes.push(vec![
            "python3".to_string(),
            "examples/verify_token.py".into(),
        ]);
    }
    if available("node", &["--version"]) {
        runtimes.push(vec!["node".to_string(), "examples/verify_token.mjs".into()]);
    }
    for rt in runtimes {
        let cmd = |aud: &str, cert: Option<&str>| {
            let mut c = rt.clone();
            c.extend(
                [
                    "--jwks",
                    d.join("jwks.json").to_str().unwrap(),
                    "--issuer",
                    BROKER_ISS,
                    "--audience",
                    aud,
                ]
                .map(String::from),
            );
            if let Some(p) = cert {
                c.push("--client-cert".into());
                c.push(d.join(p).display().to_string());
            }
            c
        };
        let (ok, out, err) = run(&cmd(API, Some("agent.pem")), &token);
        assert!(ok, "{rt:?}: {err}");
        let claims: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(claims["sub"], AGENT);
        for (c, t, expect) in [
            (cmd(API, None), &token, "cnf"),
            (cmd(API, Some("other.pem")), &token, "cnf"),
            (
                cmd("https://other.example.com", Some("agent.pem")),
                &token,
                "aud",
            ),
            (cmd(API, Some("agent.pem")), &altered, "ignature"),
            (cmd("tessera", None), &ci, "typ"),
        ] {
            let (ok, _, err) = run(&c, t);
            assert!(!ok, "{rt:?} accepted what it must refuse ({expect})");
            assert!(
                err.to_lowercase().contains(&expect.to_lowercase()),
                "{rt:?}: expected `{expect}` in: {err}"
            );
        }
    }
    b.stop().await;
}
