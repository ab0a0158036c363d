#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The README's resource-server walkthrough, run for real: the dev broker
//! from `config/tessera.toml` (ports changed), `examples/resource_server`,
//! `examples/agent` and the `tessera` CLI, each as its own process.
//!
//! Start the broker → start the resource server → the agent succeeds →
//! `tessera revoke --task` → the agent's cached task token is refused, and
//! the agent drops it and asks the broker for a new one instead of reusing it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tessera::testkit::{free_port, ChildGuard};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// `target/<profile>/examples/<name>`: `cargo test` builds the examples next
/// to the test binaries' `deps` directory (`cargo test --test walkthrough`
/// alone does not: run `cargo build --examples` first).
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

fn wait_for(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{what} did not come up; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn connects(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn readme_walkthrough_a_revoked_task_token_is_refused_and_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (port, ops, api) = (free_port(), free_port(), free_port());

    // The shipped dev config, on free ports.
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tessera.toml"))
            .unwrap();
    assert!(shipped.contains("127.0.0.1:8443") && shipped.contains("127.0.0.1:9090"));
    let cfg = shipped
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{ops}"));
    std::fs::create_dir_all(d.join("config")).unwrap();
    std::fs::write(d.join("config/tessera.toml"), cfg).unwrap();

    // 1. The broker (generates keys/dev and keys/signing in `d`).
    let broker_log = d.join("broker.log");
    let _broker = ChildGuard(
        Command::new(BIN)
            .arg("serve")
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&broker_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("the broker", &broker_log, || {
        connects(ops) && connects(port)
    });

    // 2. The resource server.
    let broker = format!("https://127.0.0.1:{port}");
    let api_url = format!("https://127.0.0.1:{api}");
    let rs_log = d.join("resource_server.log");
    let _rs = ChildGuard(
        Command::new(example("resource_server"))
            .args(["--broker", &broker, "--listen", &format!("127.0.0.1:{api}")])
            .current_dir(d)
            .stdout(std::fs::File::create(&rs_log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    wait_for("the resource server", &rs_log, || connects(api));

    let agent = |extra: &[&str]| {
        Command::new(example("agent"))
            .args(["--broker", &broker, "--api", &api_url])
            .args(extra)
            .current_dir(d)
            .output()
            .unwrap()
    };

    // 3. The agent exchanges its certificate and is served.
    let ok = agent(&[]);
    assert!(ok.status.success(), "{}", show(&ok));
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(out.contains("exchanged my certificate"), "{out}");
    assert!(out.contains("GET /tickets -> 200"), "{out}");
    assert!(out.contains("spiffe://example.org/agent/demo"), "{out}");

    let token = std::fs::read_to_string(d.join("target/demo-agent.token")).unwrap();
    let token: serde_json::Value = serde_json::from_str(&token).unwrap();
    assert!(token["token"].as_str().unwrap().starts_with("ey"));

    // 4. The operator revokes the task with the CLI.
    let revoke = Command::new(BIN)
        .args(["revoke", "--task", "triage-4711", "--reason", "walkthrough"])
        .args(["--url", &broker])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(revoke.status.success(), "{}", show(&revoke));

    // A task revocation covers the tokens issued until its second (`iat`
    // has second granularity): a token minted in that same second is
    // revoked too. A person runs step 5 seconds later; so does this test.
    std::thread::sleep(Duration::from_millis(1100));

    // 5. The agent's cached task token is refused (the follower got the
    // revocation from the live feed; allow it a few seconds on a busy CI):
    // the agent drops it and asks for a new one (a task revocation covers
    // the tokens issued until then).
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        let o = agent(&[]);
        if String::from_utf8_lossy(&o.stdout).contains("asking the broker for a new one")
            || Instant::now() > deadline
        {
            break o;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(again.status.success(), "{}", show(&again));
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(out.contains("reusing my task token"), "{out}");
    assert!(
        out.contains(r#"my cached token was refused (401 Bearer error="invalid_token")"#),
        "{out}"
    );
    assert!(out.contains("exchanged my certificate"), "{out}");
    assert!(out.contains("GET /tickets -> 200"), "{out}");
    let fresh = std::fs::read_to_string(d.join("target/demo-agent.token")).unwrap();
    let fresh: serde_json::Value = serde_json::from_str(&fresh).unwrap();
    assert_ne!(
        fresh["token"], token["token"],
        "the revoked token is not kept"
    );

    // 6. Asking for another scope does not reuse the cached token either.
    let other = agent(&["--scope", "tickets:write"]);
    let out = String::from_utf8_lossy(&other.stdout);
    assert!(!out.contains("reusing my task token"), "{out}");

    // The resource server logged why.
    let log = std::fs::read_to_string(&rs_log).unwrap();
    assert!(log.contains("200 GET /tickets"), "{log}");
    assert!(log.contains("401 GET /tickets"), "{log}");
    assert!(log.contains("reason=revoked"), "{log}");
}
