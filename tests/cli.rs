//! The binary as a newcomer and an operator use it: first start on a fresh
//! directory generates dev material and serves; `config check`,
//! `keys generate|list`, `token decode` with their exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
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

#[test]
fn config_check_reports_file_key_and_reason() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("bad.toml"), "[[policies]]\nname = \"p\"\nmatch = { issuer = \"gh\" }\naudiences = [\"a\"]\nscopes = [\"s\"]\n").unwrap();
    let (code, _, err) = run(d.path(), &["config", "check", "--config", "bad.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.toml: policies[0].match.issuer:"), "{err}");

    let (code, _, err) = run(d.path(), &["config", "check", "--config", "missing.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.toml"), "{err}");

    // a production-style config with a missing file names the key and path
    std::fs::write(
        d.path().join("prod.toml"),
        "[server]\ntls_cert = \"nowhere/server.pem\"\n",
    )
    .unwrap();
    let (code, _, err) = run(d.path(), &["config", "check", "--config", "prod.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("server.tls_cert") && err.contains("nowhere/server.pem"),
        "{err}"
    );

    // the shipped dev config is valid (files will be generated)
    let repo = env!("CARGO_MANIFEST_DIR");
    let (code, out, err) = run(
        Path::new(repo),
        &["config", "check", "--config", "config/tessera.toml"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK"));
}

#[test]
fn bad_usage_exits_2() {
    let d = tempfile::tempdir().unwrap();
    assert_eq!(run(d.path(), &["no-such-verb"]).0, 2);
    assert_eq!(
        run(
            d.path(),
            &["keys", "generate", "--algorithm", "HS256", "--dir", "k"]
        )
        .0,
        2
    );
}

#[test]
fn keys_generate_list_and_token_decode() {
    let d = tempfile::tempdir().unwrap();
    for alg in ["ES256", "EdDSA", "RS256"] {
        let (code, out, err) = run(
            d.path(),
            &[
                "keys",
                "generate",
                "--algorithm",
                alg,
                "--dir",
                &format!("k-{alg}"),
                "--json",
            ],
        );
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["algorithm"], alg);
        assert!(v["kid"].as_str().unwrap().len() >= 43);
        let (code, out, _) = run(
            d.path(),
            &[
                "keys",
                "list",
                "--dir",
                &format!("k-{alg}"),
                "--algorithm",
                alg,
            ],
        );
        assert_eq!(code, 0);
        assert!(out.contains(v["kid"].as_str().unwrap()));
    }
    let (code, _, err) = run(d.path(), &["keys", "list", "--dir", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("nope"), "{err}");

    // decode says it did not verify
    let tok = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJ4IiwiZXhwIjoxfQ.c2ln";
    let (code, out, _) = run(d.path(), &["token", "decode", tok]);
    assert_eq!(code, 0);
    assert!(out.contains("NOT VERIFIED"));
    assert!(out.contains("at+jwt"));
    let (code, out, _) = run(d.path(), &["--json", "token", "decode", tok]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verified"], false);
    assert_eq!(run(d.path(), &["token", "decode", "not-a-jwt"]).0, 1);
}

/// Issue 17 item 3: `keys generate` twice and `keys generate --next` in the
/// same second write three distinct files, each an intact key; `keys
/// promote` renames the next key without `mv` and refuses (exit 1, naming
/// the path) to overwrite a file; the printed steps never say `mv` and say
/// when an old key may be removed.
#[test]
fn keys_generate_never_reuses_a_name_and_promote_never_overwrites() {
    let d = tempfile::tempdir().unwrap();
    let gen = |next: bool| {
        let mut args = vec!["--json", "keys", "generate", "--dir", "k"];
        if next {
            args.push("--next");
        }
        let (code, out, err) = run(d.path(), &args);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let started = std::time::SystemTime::now();
    let made = [gen(false), gen(false), gen(true)];
    let paths: Vec<&str> = made.iter().map(|v| v["path"].as_str().unwrap()).collect();
    let kids: Vec<&str> = made.iter().map(|v| v["kid"].as_str().unwrap()).collect();
    eprintln!("generated in {:?}: {paths:?}", started.elapsed().unwrap());
    let distinct: std::collections::BTreeSet<_> = paths.iter().collect();
    assert_eq!(distinct.len(), 3, "{paths:?}");
    // every key is intact: listed from its own file with its own kid
    let (code, out, err) = run(d.path(), &["--json", "keys", "list", "--dir", "k"]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let listed = listed["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{out}");
    for (p, kid) in paths.iter().zip(&kids) {
        assert!(
            listed
                .iter()
                .any(|k| k["kid"] == *kid && k["path"].as_str().unwrap().ends_with(p)),
            "{p} {kid}: {out}"
        );
    }

    // the printed rotation steps
    let (_, out, _) = run(d.path(), &["keys", "generate", "--dir", "k2", "--next"]);
    assert!(!out.contains("mv "), "{out}");
    assert!(out.contains("tessera keys promote"), "{out}");
    assert!(out.contains("max_ttl"), "when to remove the old key: {out}");

    // promote: the next key signs after a reload, under a name of its own
    let next = d.path().join(paths[2]);
    let (code, out, err) = run(d.path(), &["keys", "promote", paths[2]]);
    assert_eq!(code, 0, "{err}");
    assert!(!next.exists(), "{out}");
    let promoted = paths[2].replace(".next.pem", ".pem");
    let (_, out, _) = run(d.path(), &["--json", "keys", "list", "--dir", "k"]);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let signing: Vec<&serde_json::Value> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["signing"] == true)
        .collect();
    assert_eq!(signing.len(), 1, "{out}");
    assert_eq!(
        signing[0]["kid"], kids[2],
        "the promoted key is the newest: {out}"
    );

    // a next key whose promoted name is taken: refused, nothing overwritten
    let before = std::fs::read(d.path().join(&promoted)).unwrap();
    let clash = d.path().join(paths[2]);
    std::fs::copy(d.path().join(paths[0]), &clash).unwrap();
    let (code, _, err) = run(d.path(), &["keys", "promote", paths[2]]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&promoted) && err.contains("overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(d.path().join(&promoted)).unwrap(), before);
    assert!(clash.exists());
    // not a next key: refused
    let (code, _, err) = run(d.path(), &["keys", "promote", paths[0]]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a next key"), "{err}");
}

/// The newcomer's first minutes: `serve` on a fresh directory with the
/// shipped config generates dev material, logs it, and issues a token to
/// the generated demo agent certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_clone_serve_generates_dev_material_and_exchanges() {
    common::init();
    let d = tempfile::tempdir().unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    let (port, ops) = (free_port(), free_port());
    let cfg = std::fs::read_to_string(Path::new(repo).join("config/tessera.toml"))
        .unwrap()
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{ops}"));
    std::fs::create_dir_all(d.path().join("config")).unwrap();
    std::fs::write(d.path().join("config/tessera.toml"), cfg).unwrap();
    let log = std::fs::File::create(d.path().join("serve.log")).unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .current_dir(d.path())
        .stdout(std::fs::File::create(d.path().join("audit.out")).unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ready = false;
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{ops}/readyz")).await {
            if r.status() == 200 {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = std::fs::read_to_string(d.path().join("serve.log")).unwrap();
    assert!(ready, "broker did not become ready: {logs}");
    for f in [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "agent.pem",
        "agent-key.pem",
        "operator.pem",
        "operator-key.pem",
    ] {
        assert!(d.path().join("keys/dev").join(f).exists(), "{f}");
    }
    assert!(
        logs.contains("generated missing development material"),
        "{logs}"
    );
    assert!(
        std::fs::read_dir(d.path().join("keys/signing"))
            .unwrap()
            .count()
            >= 1
    );

    // the README's curl, done with the generated agent certificate
    let ca =
        rustls_pki_types::CertificateDer::from_pem_file(d.path().join("keys/dev/ca.pem")).unwrap();
    let agent = tessera::pki::IssuedCert {
        cert_pem: std::fs::read_to_string(d.path().join("keys/dev/agent.pem")).unwrap(),
        key_pem: std::fs::read_to_string(d.path().join("keys/dev/agent-key.pem")).unwrap(),
        cert_der: rustls_pki_types::CertificateDer::from_pem_file(
            d.path().join("keys/dev/agent.pem"),
        )
        .unwrap()
        .to_vec(),
        key_der: vec![],
    };
    let client = common::client_for(&ca, Some(&agent));
    let r = client
        .post(format!("https://127.0.0.1:{port}/token"))
        .form(&[
            ("grant_type", common::TE),
            ("subject_token_type", common::MTLS),
            ("audience", "https://api.example.com"),
            ("scope", "tickets:read"),
            ("task", "triage-4711"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let (_, claims) = common::decode(v["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "spiffe://example.org/agent/demo");
    assert_eq!(claims["txn"], "triage-4711");

    // the default audit sink is stdout, and stdout carries audit records
    // only (logs go to stderr); the token's record was written before the
    // token was returned
    let out = std::fs::read_to_string(d.path().join("audit.out")).unwrap();
    let recs: Vec<tessera::audit::AuditRecord> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(recs[0].event, tessera::audit::Event::ConfigLoaded);
    let issued = recs
        .iter()
        .find(|r| r.event == tessera::audit::Event::Issued)
        .unwrap();
    assert_eq!(issued.jti.as_deref(), claims["jti"].as_str());
    let report = tessera::audit::verify_file(&d.path().join("audit.out")).unwrap();
    assert!(report.intact(), "{report:?}");

    // a second start creates nothing new
    let _ = child.kill();
    let _ = child.wait();
    let before = std::fs::read_dir(d.path().join("keys/dev"))
        .unwrap()
        .count();
    let (code, _, err) = run(d.path(), &["config", "check"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_dir(d.path().join("keys/dev"))
            .unwrap()
            .count(),
        before
    );
}

use rustls_pki_types::pem::PemObject;

/// M117: dangerous configurations. Refused outright, naming file, key and
/// reason: an issuer or JWKS over `http://`, an HS256 or `none` allowlist,
/// a `[tokens] max_ttl` above the 24 h hard cap. Valid but too wide (a `*`
/// audience, a rule without a subject, a `**` subject) or capped (a policy
/// TTL above `[tokens] max_ttl`, issue 17 item 5): a warning, and
/// `--deny-warnings` refuses it
/// (`serve` logs the same warnings and starts; see the README).
#[test]
fn m117_dangerous_configs_are_refused_or_flagged() {
    let d = tempfile::tempdir().unwrap();
    let dev = "[dev]\ngenerate_missing = true\n";
    let issuer = "[[issuers]]\nname = \"ci\"\nissuer = \"https://ci.example\"\naudiences = [\"tessera\"]\njwks_uri = \"https://ci.example/jwks\"\n";
    let policy = "[[policies]]\nname = \"p\"\nowner = \"o@example.com\"\nmatch = { issuer = \"ci\", subject = \"repo:acme/*\" }\naudiences = [\"https://api.example\"]\nscopes = [\"read\"]\n";
    let check = |text: String, deny: bool| {
        std::fs::write(d.path().join("c.toml"), text).unwrap();
        let mut args = vec!["config", "check", "--config", "c.toml"];
        if deny {
            args.insert(2, "--deny-warnings");
        }
        run(d.path(), &args)
    };
    let (code, out, err) = check(format!("{dev}{issuer}{policy}"), true);
    assert_eq!(code, 0, "the baseline is clean: {out}{err}");
    for (text, key, reason) in [
        (
            issuer.replace("https://ci.example\"", "http://ci.example\""),
            "issuers[0].issuer",
            "https://",
        ),
        (
            issuer.replace("https://ci.example/jwks", "http://ci.example/jwks"),
            "issuers[0].jwks_uri",
            "https://",
        ),
        (
            format!("{issuer}algorithms = [\"HS256\"]\n"),
            "issuers[0].algorithms[0]",
            "never none or HS*",
        ),
        (
            format!("{issuer}algorithms = [\"none\"]\n"),
            "issuers[0].algorithms[0]",
            "never none or HS*",
        ),
        (
            format!("[tokens]\nmax_ttl = \"25h\"\n{issuer}"),
            "tokens.max_ttl",
            "at most",
        ),
    ] {
        let text = if text.contains("[[policies]]") {
            format!("{dev}{text}")
        } else {
            format!("{dev}{text}{policy}")
        };
        let (code, _, err) = check(text, false);
        assert_eq!(code, 1, "{key}: {err}");
        assert!(
            err.contains(&format!("c.toml: {key}:")) && err.contains(reason),
            "{key}: {err}"
        );
    }
    for wide in [
        policy.replace("https://api.example", "*"),
        policy.replace(", subject = \"repo:acme/*\"", ""),
        policy.replace("repo:acme/*", "**"),
        format!("{policy}max_ttl = \"2h\"\n"),
    ] {
        let text = format!("{dev}{issuer}{wide}");
        let (code, out, err) = check(text.clone(), false);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("1 warning"), "{out}{err}");
        assert_eq!(check(text, true).0, 1, "--deny-warnings refuses: {wide}");
    }
}

/// `tessera … | head` where the reader has gone: the CLI ends quietly with
/// 141 (as a process killed by SIGPIPE), not with a panic's backtrace; a
/// stdout that fails otherwise (a full disk: /dev/full) is reported with
/// status 1.
#[test]
fn a_closed_or_failing_stdout_ends_the_cli_without_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let tok = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJ4IiwiZXhwIjoxfQ.c2ln";
    let (r, w) = std::io::pipe().unwrap();
    drop(r);
    let o = Command::new(BIN)
        .args(["token", "decode", tok])
        .current_dir(d.path())
        .stdout(w)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.is_empty(),
        "a closed pipe is not an error to report: {err}"
    );

    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = Command::new(BIN)
        .args(["token", "decode", tok])
        .current_dir(d.path())
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("cannot write to stdout"), "{err}");
}

/// `config check` names the store without its credentials, in text and in
/// JSON: its output goes to terminals, CI logs and tickets.
#[test]
fn config_check_shows_the_store_url_without_its_password() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("c.toml"),
        "[dev]\ngenerate_missing = true\n[store]\nurl = \"redis+sentinel://tessera:Hunter2-pw@s1:26379,s2:26379/main\"\n",
    )
    .unwrap();
    let (code, out, err) = run(d.path(), &["config", "check", "--config", "c.toml"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!format!("{out}{err}").contains("Hunter2"), "{out}{err}");
    assert!(
        out.contains("store redis+sentinel://***@s1:26379,s2:26379/main"),
        "{out}"
    );
    let (code, out, err) = run(
        d.path(),
        &["config", "check", "--json", "--config", "c.toml"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!format!("{out}{err}").contains("Hunter2"), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["store"], "redis+sentinel://***@s1:26379,s2:26379/main");
}

/// Issue 21 item 7: `config check` loads what `serve` loads (one function),
/// so each of these is refused by both with the same message, naming the
/// key; under `[dev] generate_missing` only what start-up generates (absent
/// files, a signing directory without a PEM) is let through.
#[test]
fn config_check_refuses_what_serve_refuses() {
    let d = tempfile::tempdir().unwrap();
    let dev = d.path().join("dev");
    let signing = d.path().join("signing");
    tessera::pki::ensure_dev_material(&dev, &signing).unwrap();
    let cert_only = d.path().join("cert-only");
    std::fs::create_dir(&cert_only).unwrap();
    std::fs::copy(dev.join("ca.pem"), cert_only.join("key.pem")).unwrap();
    std::fs::create_dir(d.path().join("empty")).unwrap();
    let config = |tls_key: &str, client_ca: &str, signing_keys: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\nops_listen = \"127.0.0.1:{}\"\n\
             tls_cert = \"dev/server.pem\"\ntls_key = \"{tls_key}\"\nclient_ca = [\"{client_ca}\"]\n\
             [tokens]\nsigning_keys = \"{signing_keys}\"\n[store]\nurl = \"memory://\"\n",
            free_port(),
            free_port()
        )
    };
    let check = |name: &str, text: String| {
        let file = format!("{name}.toml");
        std::fs::write(d.path().join(&file), text).unwrap();
        let (code, out, err) = run(d.path(), &["config", "check", "--config", &file]);
        (file, code, out, err)
    };
    let error_line = |err: &str| {
        err.lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_default()
            .to_owned()
    };
    // the valid base passes, so each case below fails for its own reason
    let (_, code, out, err) = check("ok", config("dev/server-key.pem", "dev/ca.pem", "signing"));
    assert_eq!(code, 0, "{out}{err}");
    // (name, tls_key, client_ca, signing_keys, the key named, the cause named)
    let cases = [
        (
            "mismatch",
            "dev/agent-key.pem",
            "dev/ca.pem",
            "signing",
            "server.tls_key",
            "KeyMismatch",
        ),
        (
            "ca-is-a-key",
            "dev/server-key.pem",
            "dev/ca-key.pem",
            "signing",
            "server.client_ca[0]",
            "dev/ca-key.pem",
        ),
        (
            "no-private-key",
            "dev/server-key.pem",
            "dev/ca.pem",
            "cert-only",
            "tokens.signing_keys",
            "cert-only",
        ),
        (
            "empty-signing",
            "dev/server-key.pem",
            "dev/ca.pem",
            "empty",
            "tokens.signing_keys",
            "empty",
        ),
    ]
    .map(|(name, k, ca, sig, key, cause)| (name, config(k, ca, sig), key, cause));
    for (name, text, key, cause) in cases.clone() {
        let (file, code, out, err) = check(name, text);
        assert_eq!(code, 1, "{name}: check passed: {out}{err}");
        let msg = error_line(&err);
        assert!(
            msg.contains(&file) && msg.contains(key) && msg.contains(cause),
            "{name}: check does not name {file}, {key} and {cause}: {err}"
        );
        let (code, _, serve_err) = run(d.path(), &["serve", "--config", &file]);
        assert_eq!(code, 1, "{name}: serve started: {serve_err}");
        assert_eq!(error_line(&serve_err), msg, "{name}: {serve_err}");
    }
    // [dev] generate_missing generates a key into a directory without one
    // (so an empty one passes), never over a PEM that is not a key
    let dev_on = "[dev]\ngenerate_missing = true\n";
    for (name, text, _, _) in &cases[..2] {
        let (_, code, out, err) = check(name, format!("{text}{dev_on}"));
        assert_eq!(code, 1, "{name} under generate_missing: {out}{err}");
    }
    let (_, code, out, err) = check("no-private-key-dev", format!("{}{dev_on}", cases[2].1));
    assert_eq!(code, 1, "{out}{err}");
    assert!(error_line(&err).contains("tokens.signing_keys"), "{err}");
    let (_, code, out, err) = check("empty-signing-dev", format!("{}{dev_on}", cases[3].1));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("has no key (will be generated at start-up"),
        "{out}"
    );
    // absent files start-up generates are noted, not refused
    let (_, code, out, err) = check(
        "absent-dev",
        config("dev2/server-key.pem", "dev2/ca.pem", "signing2").replace("dev/", "dev2/") + dev_on,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("will be generated at start-up"), "{out}");
}

/// Issue 21 item 6: the first-hour messages name the cause, offline.
#[test]
fn first_hour_messages_name_the_cause() {
    let d = tempfile::tempdir().unwrap();
    // a URL without its scheme is bad usage, found before any round trip
    for verb in [&["blocks", "list"][..], &["audit", "tail"], &["reload"]] {
        let mut args = vec!["--url", "127.0.0.1:8443"];
        args.extend_from_slice(verb);
        let (code, _, err) = run(d.path(), &args);
        assert_eq!(code, 2, "{verb:?}: {err}");
        assert!(
            err.contains("missing https://") && err.contains("https://127.0.0.1:8443"),
            "{err}"
        );
    }
    let (code, _, err) = run(
        d.path(),
        &["--url", "http://127.0.0.1:8443", "blocks", "list"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("https:// only"), "{err}");
    let (code, _, err) = run(
        d.path(),
        &["--json", "--url", "127.0.0.1:8443", "blocks", "list"],
    );
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert!(v["error"].as_str().unwrap().contains("missing https://"));

    // a token pasted with its header prefix
    let tok = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
    for pasted in [format!("Bearer {tok}"), format!("bearer {tok}")] {
        let (code, out, err) = run(d.path(), &["token", "decode", &pasted]);
        assert_eq!(code, 1);
        assert!(out.is_empty(), "{out}");
        assert!(err.contains("drop the `Bearer ` prefix"), "{err}");
    }

    // an unreadable config: the real I/O error with the path, no `-:` key
    std::fs::create_dir(d.path().join("cfg.toml")).unwrap();
    let (code, _, err) = run(d.path(), &["config", "check", "--config", "cfg.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cfg.toml: cannot read the config file:") && err.contains("directory"),
        "{err}"
    );
    assert!(!err.contains(": -:"), "{err}");

    // counts agree with their number
    let repo = env!("CARGO_MANIFEST_DIR");
    let (code, out, err) = run(
        Path::new(repo),
        &["config", "check", "--config", "config/tessera.toml"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("(s)"), "{out}");
    assert!(
        out.contains("(1 issuer,") || out.contains(" issuers,"),
        "{out}"
    );

    // default certificate paths outside the checkout: where they were looked for
    let (code, _, err) = run(d.path(), &["blocks", "list"]);
    assert_eq!(code, 1);
    let looked = d.path().canonicalize().unwrap().join("keys/dev/ca.pem");
    assert!(
        err.contains("--ca") && err.contains(&format!("looked at {}", looked.display())),
        "{err}"
    );

    // an empty audit file verifies nothing: a failure unless --allow-empty
    std::fs::write(d.path().join("empty.jsonl"), "").unwrap();
    let (code, out, err) = run(d.path(), &["audit", "verify", "--file", "empty.jsonl"]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("verified nothing"), "{err}");
    assert!(!out.contains("intact"), "{out}");
    let (code, out, _) = run(
        d.path(),
        &["audit", "verify", "--file", "empty.jsonl", "--allow-empty"],
    );
    assert_eq!(code, 0);
    assert!(out.contains("verified nothing"), "{out}");
}

/// Issue 21 item 9: `keys list` marks the key the configured algorithm
/// signs with, and takes the algorithm in any case.
#[test]
fn keys_list_reads_the_configured_algorithm_in_any_case() {
    let d = tempfile::tempdir().unwrap();
    let (code, out, err) = run(
        d.path(),
        &[
            "keys",
            "generate",
            "--algorithm",
            "eddsa",
            "--dir",
            "k",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let kid = serde_json::from_str::<serde_json::Value>(&out).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let signs = |out: &str| {
        out.lines()
            .any(|l| l.starts_with(&kid) && l.contains("EdDSA") && l.contains(" yes "))
    };
    // the shipped config, with EdDSA keys in `k`
    let cfg =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tessera.toml"))
            .unwrap()
            .replace("signing_keys = \"keys/signing\"", "signing_keys = \"k\"")
            .replace("algorithm = \"ES256\"", "algorithm = \"EdDSA\"");
    assert!(cfg.contains("algorithm = \"EdDSA\""));
    std::fs::create_dir_all(d.path().join("config")).unwrap();
    std::fs::write(d.path().join("config/tessera.toml"), cfg).unwrap();
    // no flag: the config's algorithm and directory
    let (code, out, err) = run(d.path(), &["keys", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(signs(&out), "{out}");
    // any case
    for alg in ["eddsa", "EDDSA", "EdDSA"] {
        let (code, out, err) = run(
            d.path(),
            &["keys", "list", "--dir", "k", "--algorithm", alg],
        );
        assert_eq!(code, 0, "{alg}: {err}");
        assert!(signs(&out), "{out}");
    }
    // an explicit config that cannot be read is an error naming it
    let (code, _, err) = run(d.path(), &["keys", "list", "--config", "nope.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("nope.toml"), "{err}");
}

/// Issue 21 items 6 and 9 against a running broker: a CA that does not
/// vouch for the broker is named as such; `audit tail -n 0` prints
/// nothing; every counter with known labels is on /metrics at 0 right
/// after start-up (so `increase()` sees the first event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_broker_tls_trust_tail_zero_and_counters_at_zero() {
    common::init();
    let b = common::TestBroker::start().await;

    // right after start: the series exist, at 0
    let text = b.metrics_text().await;
    for sample in [
        r#"tessera_exchanges_total{outcome="issued",reason="ok"} 0"#,
        r#"tessera_audit_records_total{event="approved"} 0"#,
        r#"tessera_audit_records_total{event="unblocked"} 0"#,
        r#"tessera_revocations_total{kind="subject"} 0"#,
        r#"tessera_revocations_total{kind="jti"} 0"#,
        r#"tessera_approvals_total{event="requested"} 0"#,
        r#"tessera_approvals_total{event="webhook_failed"} 0"#,
        r#"tessera_guard_actions_total{action="revoke",trigger="rate"} 0"#,
        r#"tessera_jit_grants_consumed_total 0"#,
        r#"tessera_config_reloads_total{outcome="rejected"} 0"#,
    ] {
        assert!(
            text.lines().any(|l| l == sample),
            "{sample} missing from /metrics"
        );
    }

    // -n 0: nothing at all, not even a header
    let (code, out, err) = b.cli(&["audit", "tail", "-n", "0"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (code, out, _) = b.cli(&["audit", "tail", "-n", "1"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "header and one record: {out}");

    // a --ca that did not sign the broker's certificate
    let ca_file = b.home().join("ca.pem");
    let real = std::fs::read_to_string(&ca_file).unwrap();
    let other = tessera::pki::Ca::generate("another CA").unwrap();
    std::fs::write(&ca_file, other.cert_pem()).unwrap();
    let (code, _, err) = b.cli(&["blocks", "list"]);
    std::fs::write(&ca_file, real).unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains("certificate not trusted (check --ca)"),
        "{err}"
    );
    b.stop().await;
}

/// Issue 18 item 1: `config check` applies the store's own prefix rule, so
/// a 40-character prefix (which the Redis store refuses at start-up) is
/// refused by `config check` with the key named.
#[test]
fn config_check_refuses_a_prefix_the_store_refuses() {
    let d = tempfile::tempdir().unwrap();
    let prefix = "p".repeat(40);
    std::fs::write(
        d.path().join("c.toml"),
        format!(
            "[dev]\ngenerate_missing = true\n[store]\nurl = \"redis://127.0.0.1:6379\"\nprefix = \"{prefix}\"\n"
        ),
    )
    .unwrap();
    let (code, out, err) = run(d.path(), &["config", "check", "--config", "c.toml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("c.toml: store.prefix:"), "{err}");
    assert!(err.contains("1 to 32 characters"), "{err}");
}
