//! "Operators see why": `tessera config check` warnings (and
//! `--deny-warnings`), and `tessera policy explain` dry runs, driving the real
//! binary on temporary config files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use tessera::testkit::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Every warning kind at least once. `[dev] generate_missing` keeps the
/// missing key files from being errors.
const RISKY: &str = r#"
[dev]
generate_missing = true

[[issuers]]
name = "gh"
issuer = "https://token.actions.githubusercontent.com"
audiences = ["tessera"]

[[issuers]]
name = "k8s"
issuer = "https://k8s.example"
audiences = ["tessera"]
max_token_lifetime = "7d"

[[policies]]
name = "ci-deploy"
owner = "alice"
match = { issuer = "gh", subject = "repo:acme/**" }
audiences = ["https://deploy.example.com"]
scopes = ["deploy:read"]

[[policies]]
name = "anything"
match = { issuer = "mtls" }
audiences = ["*"]
scopes = ["**"]
"#;

const CLEAN: &str = r#"
[dev]
generate_missing = true

[[issuers]]
name = "gh"
issuer = "https://token.actions.githubusercontent.com"
audiences = ["tessera"]

[[issuers]]
name = "k8s"
issuer = "https://k8s.example"
audiences = ["tessera"]

[[policies]]
name = "ci-deploy"
owner = "alice@example.com"
match = { issuer = "gh", subject = "repo:acme/app:ref:refs/heads/main", claims = { repository_owner = "acme" } }
audiences = ["https://deploy.example.com"]
scopes = ["deploy:read", "deploy:write", "deploy:prod"]
jit_scopes = ["deploy:write"]
approval_scopes = ["deploy:prod"]
max_ttl = "10m"

[[policies]]
name = "ci-read"
owner = "bob@example.com"
match = { issuer = "k8s", subject = "system:serviceaccount:ci:*", claims = { "kubernetes.io/namespace" = "ci" } }
audiences = ["https://deploy.example.com", "https://status.example.com"]
scopes = ["deploy:read", "status:read"]

[[policies]]
name = "agents"
owner = "carol@example.com"
match = { issuer = "mtls", subject = "spiffe://example.org/agent/*" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read"]
"#;

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(d.path().join(name), text).unwrap();
    }
    d
}

#[test]
fn config_check_warns_about_each_kind() {
    let d = dir_with(&[("risky.toml", RISKY)]);
    let (code, out, err) = run(d.path(), &["config", "check", "--config", "risky.toml"]);
    assert_eq!(code, 0, "warnings do not make a config invalid: {err}");
    assert!(
        out.contains("risky.toml: OK") && out.contains("7 warnings"),
        "{out}"
    );
    for line in [
        "warning: risky.toml: policies[0] \"ci-deploy\".match.claims: issuer `gh` (https://token.actions.githubusercontent.com) is shared by every GitHub Actions workflow",
        "warning: risky.toml: policies[0] \"ci-deploy\".match.subject: `repo:acme/**`: `**` matches across",
        "warning: risky.toml: policies[1] \"anything\".owner: no owner",
        "warning: risky.toml: policies[1] \"anything\".match.subject: no subject pattern and no claim condition: every client certificate",
        "warning: risky.toml: policies[1] \"anything\".audiences[0]: `*` allows almost any audience",
        "warning: risky.toml: policies[1] \"anything\".scopes[0]: `**` allows almost any scope",
        "warning: risky.toml: issuers[1].max_token_lifetime: `7d`",
    ] {
        assert!(err.contains(line), "missing {line:?} in:\n{err}");
    }
    // warnings go to stderr only: stdout stays the one OK line (and notes)
    assert!(!out.contains("warning:"), "{out}");

    let (code, out, err) = run(
        d.path(),
        &[
            "config",
            "check",
            "--config",
            "risky.toml",
            "--deny-warnings",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("--deny-warnings"), "{err}");
}

#[test]
fn config_check_json_lists_warnings() {
    let d = dir_with(&[("risky.toml", RISKY), ("clean.toml", CLEAN)]);
    let (code, out, err) = run(
        d.path(),
        &["--json", "config", "check", "--config", "risky.toml"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "--json keeps stderr for failures: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    let ws = v["warnings"].as_array().unwrap();
    let kinds: Vec<&str> = ws.iter().map(|w| w["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "subject_double_star",
            "shared_issuer_without_claims",
            "no_owner",
            "any_subject",
            "wildcard_audience",
            "wildcard_scope",
            "long_issuer_token_lifetime",
        ]
    );
    assert_eq!(ws[1]["policy"], "ci-deploy");
    assert_eq!(ws[1]["field"], "policies[0].match.claims");
    assert!(ws[1]["message"]
        .as_str()
        .unwrap()
        .contains("add a claim condition such as repository_owner"));
    assert_eq!(ws[6]["policy"], serde_json::Value::Null);
    assert_eq!(ws[6]["field"], "issuers[1].max_token_lifetime");

    let (code, out, _) = run(
        d.path(),
        &[
            "config",
            "check",
            "--config",
            "risky.toml",
            "--json",
            "--deny-warnings",
        ],
    );
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);

    // a clean config: no warnings, even denied
    let (code, out, err) = run(
        d.path(),
        &[
            "config",
            "check",
            "--config",
            "clean.toml",
            "--deny-warnings",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
    let (_, out, _) = run(
        d.path(),
        &["--json", "config", "check", "--config", "clean.toml"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["warnings"], serde_json::json!([]));
}

#[test]
fn shipped_config_has_no_warnings() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let (code, out, err) = run(
        Path::new(repo),
        &[
            "config",
            "check",
            "--config",
            "config/tessera.toml",
            "--deny-warnings",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
}

fn explain(d: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["policy", "explain", "--config", "clean.toml"];
    all.extend_from_slice(args);
    run(d, &all)
}

#[test]
fn policy_explain_granted_names_the_policy_and_tiers() {
    let d = dir_with(&[("clean.toml", CLEAN)]);
    let (code, out, err) = explain(
        d.path(),
        &[
            "--issuer",
            "k8s",
            "--subject",
            "system:serviceaccount:ci:builder",
            "--claim",
            "kubernetes.io/namespace=ci",
            "--audience",
            "https://status.example.com",
            "--scope",
            "status:read",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("GRANTED by policy \"ci-read\" (owner bob@example.com, max_ttl 15m"),
        "{out}"
    );
    assert!(
        out.contains("policies[0] \"ci-deploy\": no match: match.issuer is `gh`, not `k8s`"),
        "{out}"
    );

    // tiers: the approval and JIT scopes of the granting policy
    let (code, out, err) = explain(
        d.path(),
        &[
            "--issuer",
            "gh",
            "--subject",
            "repo:acme/app:ref:refs/heads/main",
            "--claim",
            "repository_owner=acme",
            "--audience",
            "https://deploy.example.com",
            "--scope",
            "deploy:write deploy:prod",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("GRANTED by policy \"ci-deploy\""), "{out}");
    assert!(
        out.contains("approval: deploy:prod needs a human approval"),
        "{out}"
    );
    assert!(
        out.contains("jit_grant: deploy:write needs a live JIT grant"),
        "{out}"
    );
}

#[test]
fn policy_explain_refusals_exit_1_with_the_oauth_error() {
    let d = dir_with(&[("clean.toml", CLEAN)]);
    // subject: the claim condition fails
    let (code, out, err) = explain(
        d.path(),
        &[
            "--issuer",
            "gh",
            "--subject",
            "repo:acme/app:ref:refs/heads/main",
            "--claim",
            "repository_owner=evil",
            "--audience",
            "https://deploy.example.com",
            "--scope",
            "deploy:read",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("REFUSED: invalid_request (no_matching_policy)"),
        "{out}"
    );
    assert!(
        out.contains("claim `repository_owner` = \"evil\" does not match `acme`"),
        "{out}"
    );
    assert!(err.contains("refused: invalid_request"), "{err}");

    // subject: the pattern fails
    let (code, out, _) = explain(
        d.path(),
        &[
            "--issuer",
            "mtls",
            "--subject",
            "spiffe://example.org/service/x",
            "--audience",
            "https://api.example.com",
            "--scope",
            "tickets:read",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("does not match match.subject `spiffe://example.org/agent/*`"),
        "{out}"
    );

    // audience
    let (code, out, _) = explain(
        d.path(),
        &[
            "--issuer",
            "mtls",
            "--subject",
            "spiffe://example.org/agent/a",
            "--audience",
            "https://other.example.com",
            "--scope",
            "tickets:read",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("REFUSED: invalid_target (target_not_allowed)"),
        "{out}"
    );
    assert!(out.contains("audience NOT allowed"), "{out}");

    // scope
    let (code, out, _) = explain(
        d.path(),
        &[
            "--issuer",
            "mtls",
            "--subject",
            "spiffe://example.org/agent/a",
            "--audience",
            "https://api.example.com",
            "--scope",
            "tickets:read tickets:write",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("REFUSED: invalid_scope (scope_not_allowed)"),
        "{out}"
    );
    assert!(out.contains("scope(s) NOT allowed: tickets:write"), "{out}");
}

#[test]
fn policy_explain_json_and_bad_usage() {
    let d = dir_with(&[("clean.toml", CLEAN)]);
    let (code, out, _) = explain(
        d.path(),
        &[
            "--json",
            "--issuer",
            "mtls",
            "--subject",
            "spiffe://example.org/agent/a",
            "--audience",
            "https://api.example.com",
            "--scope",
            "tickets:read",
        ],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["granted"], true);
    assert_eq!(v["policy"], "agents");
    assert_eq!(v["owner"], "carol@example.com");
    assert_eq!(v["max_ttl"], 900);
    assert_eq!(v["error"], serde_json::Value::Null);
    assert_eq!(v["policies"].as_array().unwrap().len(), 3);
    assert_eq!(v["policies"][2]["selected"], true);
    assert_eq!(v["policies"][0]["outcome"], "subject_mismatch");
    assert_eq!(v["policies"][0]["mismatch"]["condition"], "issuer");

    let (code, out, _) = explain(
        d.path(),
        &[
            "--json",
            "--issuer",
            "k8s",
            "--subject",
            "system:serviceaccount:ci:x",
            "--claim",
            "kubernetes.io/namespace=ci",
            "--audience",
            "https://deploy.example.com",
            "--scope",
            "deploy:read deploy:write",
        ],
    );
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["granted"], false);
    assert_eq!(v["error"], "invalid_scope");
    assert_eq!(v["reason"], "scope_not_allowed");
    assert_eq!(
        v["request"]["claims"],
        serde_json::json!({"kubernetes.io": {"namespace": "ci"}})
    );
    assert_eq!(
        v["policies"][1]["refused_scopes"],
        serde_json::json!(["deploy:write"])
    );

    // bad usage: unknown issuer, claims on mtls, a malformed claim, no scope
    for args in [
        &[
            "--issuer",
            "nope",
            "--subject",
            "s",
            "--audience",
            "a",
            "--scope",
            "x",
        ][..],
        &[
            "--issuer",
            "mtls",
            "--subject",
            "s",
            "--claim",
            "a=b",
            "--audience",
            "a",
            "--scope",
            "x",
        ],
        &[
            "--issuer",
            "k8s",
            "--subject",
            "s",
            "--claim",
            "novalue",
            "--audience",
            "a",
            "--scope",
            "x",
        ],
        &["--issuer", "k8s", "--subject", "s", "--audience", "a"],
    ] {
        let (code, _, err) = explain(d.path(), args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}

const DELEGATION: &str = r#"
[dev]
generate_missing = true

[[issuers]]
name = "corp"
issuer = "https://idp.example.com"
audiences = ["tessera"]

[[policies]]
name = "humans"
owner = "it@example.com"
match = { issuer = "corp", subject = "*@example.com" }
audiences = ["https://mail.example.com"]
scopes = ["mail:read"]

[[policies]]
name = "assistant"
owner = "ai@example.com"
match = { issuer = "mtls", subject = "spiffe://example.org/agent/assistant" }
audiences = ["https://mail.example.com"]
scopes = ["mail:read"]
may_act_for = ["corp"]
max_ttl = "2m"

[[policies]]
name = "other-agent"
owner = "ai@example.com"
match = { issuer = "mtls", subject = "spiffe://example.org/agent/other" }
audiences = ["https://mail.example.com"]
scopes = ["mail:read"]
"#;

#[test]
fn policy_explain_delegation() {
    let d = dir_with(&[("deleg.toml", DELEGATION)]);
    let base = [
        "--json",
        "policy",
        "explain",
        "--config",
        "deleg.toml",
        "--issuer",
        "corp",
        "--subject",
        "ann@example.com",
        "--audience",
        "https://mail.example.com",
        "--scope",
        "mail:read",
        "--actor-issuer",
        "mtls",
        "--actor",
    ];
    let with = |actor: &str| {
        let mut a = base.to_vec();
        a.push(actor);
        run(d.path(), &a)
    };
    let (code, out, err) = with("spiffe://example.org/agent/assistant");
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["policy"], "humans");
    assert_eq!(v["actor_policy"], "assistant");
    assert_eq!(v["max_ttl"], 120);
    assert_eq!(v["actor_policies"][1]["selected"], true);
    assert_eq!(
        v["request"]["actor"]["subject"],
        "spiffe://example.org/agent/assistant"
    );

    let (code, out, err) = with("spiffe://example.org/agent/other");
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"], "invalid_request");
    assert_eq!(v["reason"], "may_act_for_missing");
    assert!(err.contains("may_act_for"), "{err}");

    // --actor without --actor-issuer is bad usage
    let (code, _, _) = run(
        d.path(),
        &[
            "policy",
            "explain",
            "--config",
            "deleg.toml",
            "--issuer",
            "corp",
            "--subject",
            "ann@example.com",
            "--audience",
            "https://mail.example.com",
            "--scope",
            "mail:read",
            "--actor",
            "spiffe://example.org/agent/assistant",
        ],
    );
    assert_eq!(code, 2);
}

/// `serve` logs each warning once at start-up, one line each.
#[test]
fn serve_logs_each_warning_once() {
    let server = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nops_listen = \"127.0.0.1:{}\"\n",
        free_port(),
        free_port()
    );
    let d = dir_with(&[("risky.toml", &format!("{server}{RISKY}"))]);
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "risky.toml"])
        .current_dir(d.path())
        .stdout(std::fs::File::create(d.path().join("audit.out")).unwrap())
        .stderr(std::fs::File::create(d.path().join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut logs = String::new();
    while std::time::Instant::now() < deadline {
        logs = std::fs::read_to_string(d.path().join("serve.log")).unwrap();
        if logs.contains("tessera serving") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(logs.contains("tessera serving"), "{logs}");
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("config warning:"))
        .collect();
    assert_eq!(lines.len(), 7, "{logs}");
    assert!(lines.iter().all(|l| l.contains("WARN")), "{logs}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("key=policies[0].match.claims")
                && l.contains("kind=\"shared_issuer_without_claims\"")),
        "{logs}"
    );
}
