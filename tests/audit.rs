//! The audit trail end to end: one record per decision, the count of
//! `issued` records equals the count of tokens, records carry the token's
//! jti and SHA-256 but never the token, chains verify, and a token is never
//! returned when its record cannot be written (fail closed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tessera::audit::{sha256_hex, AuditRecord, ChainVerifier};
use tessera::testkit_redis::redis_or_skip;

fn file_audit(b_dir: &std::path::Path) -> String {
    format!(
        "sink = \"file\"\npath = \"{}\"",
        b_dir.join("audit.jsonl").display()
    )
}

fn count(records: &[Value], event: &str) -> usize {
    records.iter().filter(|r| r["event"] == event).count()
}

fn verify_values(records: &[Value]) -> tessera::audit::Report {
    let mut v = ChainVerifier::default();
    for r in records {
        v.push(&serde_json::from_value::<AuditRecord>(r.clone()).unwrap());
    }
    v.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_issued_token_has_exactly_one_record_and_no_record_holds_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(Options {
        audit: file_audit(dir.path()),
        ..Default::default()
    })
    .await;
    const N: usize = 25;
    let mut tokens: BTreeMap<String, String> = BTreeMap::new(); // jti -> token
    for i in 0..N {
        let task = format!("audit-task-{i}");
        let (s, v) = b.agent_token("tickets:read", Some(&task)).await;
        assert_eq!(s, 200, "{v}");
        let t = v["access_token"].as_str().unwrap().to_string();
        let jti = decode(&t).1["jti"].as_str().unwrap().to_string();
        tokens.insert(jti, t);
    }
    // an OIDC exchange (another policy and owner)
    let (s, v) = b
        .token(&b.anon(), &TestBroker::oidc_form(&b.ci_token()))
        .await;
    assert_eq!(s, 200, "{v}");
    let t = v["access_token"].as_str().unwrap().to_string();
    tokens.insert(decode(&t).1["jti"].as_str().unwrap().to_string(), t);
    // refusals, each with its precise reason
    assert_eq!(b.agent_token("tickets:delete", None).await.0, 400); // invalid_scope
    let (s, _) = b
        .token(
            &b.anon(),
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", API),
                ("scope", "tickets:read"),
            ],
        )
        .await;
    assert_eq!(s, 401); // invalid_client: mtls without a certificate
    let (s, _) = b
        .token(
            &b.agent_client(),
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", "https://elsewhere.example.com"),
                ("scope", "tickets:read"),
            ],
        )
        .await;
    assert_eq!(s, 400); // invalid_target
                        // an operator revocation and a grant
    let (s, _) = b
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"kind": "task", "value": "audit-task-0", "reason": "test"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, g) = b
        .admin(Method::POST, "/admin/v1/grants", Some(json!({"subject": AGENT, "scope": "tickets:write", "audience": API, "ttl": "60s", "uses": 1})))
        .await;
    assert_eq!(s, StatusCode::CREATED);

    let records = b.audit_records().await;
    // the count of issue records equals the count of tokens issued
    assert_eq!(count(&records, "issued"), tokens.len());
    for r in records.iter().filter(|r| r["event"] == "issued") {
        let jti = r["jti"].as_str().unwrap();
        let token = tokens
            .get(jti)
            .expect("a record for a token that was issued");
        assert_eq!(r["token_sha256"], sha256_hex(token.as_bytes()));
        assert!(r["subject"].is_string() && r["policy"].is_string() && r["task"].is_string());
        assert!(r["client"].is_string() && r["audience"].is_string() && r["owner"].is_string());
    }
    let jtis: std::collections::BTreeSet<&str> = records
        .iter()
        .filter(|r| r["event"] == "issued")
        .map(|r| r["jti"].as_str().unwrap())
        .collect();
    assert_eq!(jtis.len(), tokens.len(), "one record per token");
    // refusals name the precise reason and the OAuth error
    let refused: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["event"] == "refused")
        .map(|r| (r["reason"].as_str().unwrap(), r["error"].as_str().unwrap()))
        .collect();
    assert!(
        refused.contains(&("scope_not_allowed", "invalid_scope")),
        "{refused:?}"
    );
    assert!(
        refused.contains(&("target_not_allowed", "invalid_target")),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|(_, e)| *e == "invalid_client"),
        "{refused:?}"
    );
    let scope = records
        .iter()
        .find(|r| r["reason"] == "scope_not_allowed")
        .unwrap();
    assert_eq!(scope["audience"], API, "the refusal says what was asked");
    assert_eq!(scope["scopes"], json!(["tickets:delete"]));
    assert_eq!(scope["subject"], AGENT, "and who the subject was");
    let anon = records
        .iter()
        .find(|r| r["error"] == "invalid_client")
        .unwrap();
    assert_eq!(anon["client"], "anonymous");
    assert_eq!(count(&records, "config_loaded"), 1);
    assert_eq!(records[0]["event"], "config_loaded");
    let rev = records.iter().find(|r| r["event"] == "revoked").unwrap();
    assert_eq!(
        (rev["task"].as_str(), rev["client"].as_str()),
        (Some("audit-task-0"), Some(OPERATOR))
    );
    let gr = records.iter().find(|r| r["event"] == "granted").unwrap();
    assert_eq!(gr["grant"], g["id"]);
    // the stream's chain verifies
    let report = verify_values(&records);
    assert!(report.intact(), "{report:?}");
    assert_eq!(report.chains.len(), 1);

    // the file holds the same records, and never a token
    let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert_eq!(text.lines().count(), records.len());
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("\"event\":\"issued\""))
            .count(),
        tokens.len()
    );
    for t in tokens.values() {
        let sig = t.rsplit('.').next().unwrap();
        assert!(
            !text.contains(sig),
            "a token's signature is in the audit file"
        );
    }
    let all = serde_json::to_string(&records).unwrap();
    for t in tokens.values() {
        assert!(!all.contains(t.rsplit('.').next().unwrap()));
    }
    let report = tessera::audit::verify_file(&dir.path().join("audit.jsonl")).unwrap();
    assert!(report.intact(), "{report:?}");
    // metrics count the records
    // metrics count the records (process-wide: other tests add to them)
    let m = reqwest::get(b.ops_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let issued: usize = m
        .lines()
        .find_map(|l| l.strip_prefix("tessera_audit_records_total{event=\"issued\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(issued >= tokens.len(), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_on_the_same_file_continues_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let b = TestBroker::start_with(Options {
            audit: file_audit(dir.path()),
            with_issuer: false,
            ..Default::default()
        })
        .await;
        assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
        b.stop().await;
    }
    let report = tessera::audit::verify_file(&dir.path().join("audit.jsonl")).unwrap();
    assert!(report.intact(), "{report:?}");
    assert_eq!(report.chains.len(), 1, "{report:?}");
    assert_eq!(report.records, 4); // config_loaded + issued, twice
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("signing");
    tessera::mint::keyring::generate_key_file(
        &keys,
        tessera::mint::keyring::SigningAlgorithm::ES256,
    )
    .unwrap();
    let text = format!(
        "[tokens]\nsigning_keys = \"{}\"\n[audit]\nsink = \"file\"\npath = \"{}\"\n",
        keys.display(),
        dir.path().join("no/such/dir/audit.jsonl").display()
    );
    let cfg = tessera::config::Config::from_toml_str("t.toml", &text).unwrap();
    let e = match tessera::app::App::build(cfg, std::sync::Arc::new(tessera::clock::SystemClock))
        .await
    {
        Ok(_) => panic!("started without an audit file"),
        Err(e) => e,
    };
    let e = e.to_string();
    assert!(
        e.starts_with("audit.path: cannot open the audit file"),
        "{e}"
    );
}

/// Fail closed: with the audit stream refusing writes (a Redis ACL makes
/// that one key read-only, everything else works), /token answers 503 and
/// never a token; a grant is not made; a revocation is made and the operator
/// learns it was not audited; service resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_issued_whose_record_cannot_be_written() {
    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        with_issuer: false,
        audit: file_audit(dir.path()),
        ..Default::default()
    })
    .await;
    let ledger = common::invariants::Ledger::new();
    let (s, v) = b.agent_token("tickets:read", None).await;
    ledger.record(s.as_u16(), &v);
    assert_eq!(s, 200);
    let before = b.audit_records().await;
    assert_eq!(count(&before, "issued"), 1);
    ledger.phase(common::invariants::Phase::StoreDown);

    // Redis refuses writes to the audit stream only; every other key works
    let deny = [
        "ACL",
        "SETUSER",
        "default",
        "resetkeys",
        "%R~*",
        "~tessera:{rev}:*",
        "~tessera:{g*",
        "~tessera:rp:*",
    ];
    assert_eq!(redis_cli(&redis.url(), &deny).trim(), "OK");
    for _ in 0..3 {
        let r = b
            .agent_client()
            .post(b.url("/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode_form(&[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", API),
                ("scope", "tickets:read"),
            ]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let text = r.text().await.unwrap();
        assert!(!text.contains("access_token"), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        ledger.record(503, &v);
        assert_eq!(v["error"], "temporarily_unavailable");
    }
    // an operator's grant is not made without its record
    let (s, v) = b
        .admin(
            Method::POST,
            "/admin/v1/grants",
            Some(
                json!({"subject": AGENT, "scope": "tickets:write", "audience": API, "ttl": "60s"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let (_, list) = b.admin(Method::GET, "/admin/v1/grants", None).await;
    assert_eq!(list["grants"].as_array().unwrap().len(), 0);
    // a revocation stands (it only takes authority away), and the operator
    // learns its record is missing: the CLI exits 1 saying so
    let (code, _, err) = b.cli(&["revoke", "--task", "unaudited-task"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("WAS made") && err.contains("audit"), "{err}");
    let feed: Value = b
        .client(Some(&b.payments))
        .get(b.url("/revocations"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(feed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["value"] == "unaudited-task"));
    let m = reqwest::get(b.ops_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(
            "tessera_exchanges_total{outcome=\"unavailable\",reason=\"audit_unavailable\"} 3"
        ),
        "{m}"
    );

    assert_eq!(
        redis_cli(
            &redis.url(),
            &["ACL", "SETUSER", "default", "resetkeys", "~*"]
        )
        .trim(),
        "OK"
    );
    ledger.phase(common::invariants::Phase::Normal);
    let (s, v) = b.agent_token("tickets:read", None).await;
    ledger.record(s.as_u16(), &v);
    assert_eq!(s, 200, "{v}");
    let after = b.audit_records().await;
    // The stream caught up with what it missed (the sink that failed gets
    // its backlog, in chain order): the `issued` records of the three
    // withheld tokens, each withdrawn by an `unavailable` record, so issued
    // minus withdrawn is the count of tokens returned here too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut after = after;
    while count(&after, "issued") < 5 {
        assert!(std::time::Instant::now() < deadline, "{after:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after = b.audit_records().await;
    }
    assert_eq!(count(&after, "issued"), 5);
    // I1–I5 over the run, against the stream (the records that gate issue)
    let summary = ledger.check(&after, &common::invariants::Expect::default());
    assert_eq!(summary.tokens, 2);
    let report = verify_values(&after);
    assert!(report.intact(), "{report:?}");
    // the failed batches did not restart the chain
    assert_eq!(report.chains.len(), 1, "{report:?}");
    // every key in Redis is bounded: the audit stream by length and an idle TTL
    let ttl: i64 = redis_cli(&redis.url(), &["TTL", "tessera:{audit}:stream"])
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0, "{ttl}");

    // The file sink kept working: it holds the `issued` records of the three
    // withheld tokens, each followed by an `unavailable` record naming the
    // same jti, so issued minus withheld is the count of tokens returned.
    let file = dir.path().join("audit.jsonl");
    let recs: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let withheld: std::collections::BTreeSet<&str> = recs
        .iter()
        .filter(|r| r["event"] == "unavailable" && r["reason"] == "audit_unavailable")
        .map(|r| r["jti"].as_str().unwrap())
        .collect();
    assert_eq!(withheld.len(), 3, "{recs:?}");
    let issued: Vec<&str> = recs
        .iter()
        .filter(|r| r["event"] == "issued")
        .map(|r| r["jti"].as_str().unwrap())
        .collect();
    assert_eq!(issued.len(), 5);
    assert!(withheld.iter().all(|j| issued.contains(j)));
    assert_eq!(issued.len() - withheld.len(), 2, "tokens returned");
    let report = tessera::audit::verify_file(&file).unwrap();
    assert!(report.intact(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_audit_tail_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_with(Options {
        audit: file_audit(dir.path()),
        with_issuer: false,
        ..Default::default()
    })
    .await;
    let mut jtis = Vec::new();
    for _ in 0..3 {
        let (_, v) = b.agent_token("tickets:read", Some("cli-task")).await;
        jtis.push(
            decode(v["access_token"].as_str().unwrap()).1["jti"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(b.agent_token("tickets:delete", None).await.0, 400);

    // tail --json: one record per line, the newest last
    let (code, out, err) = b.cli(&["audit", "tail", "--json", "-n", "2"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["jti"], jtis[2].as_str());
    assert_eq!(lines[1]["reason"], "scope_not_allowed");
    // flags before the verb work too; the table by default
    let (code, out, _) = b.cli(&["--json", "audit", "tail"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 5);
    let (code, out, _) = b.cli(&["audit", "tail"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("TIME") && out.contains("issued") && out.contains(&jtis[0]),
        "{out}"
    );

    // verify the broker's stream and the file
    let (code, out, err) = b.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("intact (5 records in 1 chain)"), "{out}");
    let file = dir.path().join("audit.jsonl");
    let (code, out, err) = b.cli(&[
        "audit",
        "verify",
        "--file",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["intact"].as_bool(), v["records"].as_u64()),
        (Some(true), Some(5))
    );
    // one record is "1 record", not "1 records"
    let one = dir.path().join("one.jsonl");
    let first = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&one, first.lines().next().unwrap().to_string() + "\n").unwrap();
    let (code, out, err) = b.cli(&["audit", "verify", "--file", one.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("seq 1..1 (1 record)") && out.contains("intact (1 record in 1 chain)"),
        "{out}"
    );

    // tamper with the file: one field of the third record
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[2] = lines[2].replace("tickets:read", "tickets:write");
    let bad = dir.path().join("tampered.jsonl");
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let (code, _, err) = b.cli(&["audit", "verify", "--file", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("record 3") && err.contains("seq 3") && err.contains("altered"),
        "{err}"
    );
    // delete a middle line
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.remove(2);
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let (code, _, err) = b.cli(&["audit", "verify", "--file", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("seq 4") && err.contains("missing"), "{err}");
    // a missing file is a failure, bad usage is 2
    assert_eq!(b.cli(&["audit", "verify", "--file", "/no/such/file"]).0, 1);
    assert_eq!(b.cli(&["audit", "nope"]).0, 2);
    // not an operator
    let d = b.home();
    std::fs::write(d.join("op.pem"), &b.agent.cert_pem).unwrap();
    std::fs::write(d.join("op-key.pem"), &b.agent.key_pem).unwrap();
    let (code, _, err) = b.cli(&["audit", "tail"]);
    assert_eq!(code, 1);
    assert!(err.contains("not authorised"), "{err}");
}
