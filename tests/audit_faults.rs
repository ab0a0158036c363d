//! Issue 17 item 2: an audit chain that cannot lose a record silently.
//! With a real `redis-server` the test starts (and pauses, and kills):
//! a store fault never restarts the chain, both sinks (the JSON-lines file
//! and the Redis audit stream) end up holding the same gapless chain, in
//! each `issued` records minus withdrawn ones are exactly the tokens
//! delivered, and `tessera audit verify` names every missing record by its
//! place: first, at the seam of an outage, last (against the store's
//! checkpoint, kept apart from the file).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tessera::testkit_redis::{persistent_redis_or_skip, redis_or_skip};

fn file_audit(dir: &std::path::Path) -> String {
    format!(
        "sink = \"file\"\npath = \"{}\"\n",
        dir.join("audit.jsonl").display()
    )
}

fn file_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn hashes_of_lines(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["hash"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn hashes_of_values(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["hash"].as_str().unwrap().to_string())
        .collect()
}

/// Count equality in one sink: every `issued` jti once; the issued jtis
/// minus the withdrawn ones (`unavailable` / `audit_unavailable` naming the
/// jti) are exactly the tokens delivered.
fn account(records: &[Value], delivered: &BTreeSet<String>, sink: &str) {
    let mut issued = BTreeSet::new();
    for r in records.iter().filter(|r| r["event"] == "issued") {
        let j = r["jti"].as_str().unwrap().to_string();
        assert!(issued.insert(j.clone()), "{sink}: jti {j} issued twice");
    }
    let withdrawn: BTreeSet<String> = records
        .iter()
        .filter(|r| r["event"] == "unavailable" && r["reason"] == "audit_unavailable")
        .filter_map(|r| r["jti"].as_str().map(str::to_string))
        .collect();
    let kept: BTreeSet<String> = issued.difference(&withdrawn).cloned().collect();
    assert_eq!(
        &kept,
        delivered,
        "{sink}: issued ({}) minus withdrawn ({}) must be the tokens delivered ({})",
        issued.len(),
        withdrawn.len(),
        delivered.len()
    );
}

/// Agents exchanging until `stop`: every answer is a 200 with a token or a
/// 503 without one; the jtis delivered are collected.
struct Load {
    stop: Arc<AtomicBool>,
    delivered: Arc<Mutex<BTreeSet<String>>>,
    refused: Arc<Mutex<u64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(b: &TestBroker, tasks: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(Mutex::new(BTreeSet::new()));
        let refused = Arc::new(Mutex::new(0u64));
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let c = b.agent_client();
            let url = b.url("/token");
            let (stop, delivered, refused) = (stop.clone(), delivered.clone(), refused.clone());
            handles.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let r = c
                        .post(&url)
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
                    let s = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    match s {
                        200 => {
                            let t = v["access_token"].as_str().expect("a 200 carries a token");
                            let jti = decode(t).1["jti"].as_str().unwrap().to_string();
                            delivered.lock().unwrap().insert(jti);
                        }
                        503 => {
                            assert!(v.get("access_token").is_none(), "{v}");
                            assert_eq!(v["error"], "temporarily_unavailable", "{v}");
                            *refused.lock().unwrap() += 1;
                        }
                        other => panic!("unexpected status {other}: {v}"),
                    }
                    // keep the two shared cores for the broker
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        Load {
            stop,
            delivered,
            refused,
            tasks: handles,
        }
    }

    fn delivered_now(&self) -> usize {
        self.delivered.lock().unwrap().len()
    }

    /// Waits until `more` tokens beyond `from` were delivered.
    async fn wait_tokens(&self, from: usize, more: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.delivered_now() < from + more {
            assert!(Instant::now() < deadline, "service did not come back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> (BTreeSet<String>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let d = self.delivered.lock().unwrap().clone();
        let r = *self.refused.lock().unwrap();
        (d, r)
    }
}

/// Waits until the stream holds as many records as the file (the sink
/// that was behind gets its backlog within a second or so), then returns
/// both.
async fn settled(b: &TestBroker, path: &std::path::Path) -> (Vec<String>, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let file = file_lines(path);
        let stream = b.audit_records().await;
        if file.len() == stream.len() {
            return (file, stream);
        }
        assert!(
            Instant::now() < deadline,
            "the sinks never agreed: {} lines in the file, {} records in the stream",
            file.len(),
            stream.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Both sinks hold one chain, the same records in the same order, intact,
/// with the stream's checkpoint at its last record; counts are exact in
/// each; the CLI's `audit verify` agrees (stream, and file against the
/// checkpoint).
async fn both_sinks_agree(b: &TestBroker, path: &std::path::Path, delivered: &BTreeSet<String>) {
    let (file, stream) = settled(b, path).await;
    assert_eq!(
        hashes_of_lines(&file),
        hashes_of_values(&stream),
        "the stream holds exactly the file's records, in order"
    );
    let report = tessera::audit::verify_file(path).unwrap();
    assert!(report.intact(), "{report:?}");
    assert_eq!(
        report.chains.len(),
        1,
        "the fault did not restart the chain"
    );
    let file_values: Vec<Value> = file
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    account(&file_values, delivered, "file");
    account(&stream, delivered, "stream");
    let (code, out, err) = b.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("intact"), "{out}");
    let p = path.display().to_string();
    let (code, out, err) = b.cli(&["audit", "verify", "--file", &p, "--checkpoint-from-store"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("intact"), "{out}");
}

async fn audit_failures(b: &TestBroker) -> f64 {
    metric_at(&b.ops_url("/metrics"), "tessera_audit_failures_total").await
}

/// R3/R15: Redis paused (SIGSTOP) while agents exchange: audit writes in
/// flight stall past their deadline and are refused (the token withheld and
/// withdrawn); the late write, when Redis wakes, is not a second copy; the
/// chain goes on; the stream catches up with the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_r15_a_paused_redis_during_load_leaves_one_chain_and_exact_counts_in_both_sinks() {
    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let b = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        audit: file_audit(dir.path()),
        ..Default::default()
    })
    .await;
    let load = Load::start(&b, 4);
    load.wait_tokens(0, 5).await;
    let failures_before = audit_failures(&b).await;
    redis.suspend().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.resume().unwrap();
    let n = load.delivered_now();
    load.wait_tokens(n, 10).await;
    let (delivered, refused) = load.stop().await;
    assert!(refused > 0, "the pause was felt");
    assert!(
        audit_failures(&b).await > failures_before,
        "audit writes failed during the pause"
    );
    both_sinks_agree(&b, &path, &delivered).await;
}

/// R2/R15: Redis killed with SIGKILL mid-load (it keeps its data: AOF,
/// fsync always), then started again: the audit script that was running
/// may have landed without its answer; nothing is doubled, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_r15_redis_killed_mid_load_leaves_one_chain_and_exact_counts_in_both_sinks() {
    let Some(mut redis) = persistent_redis_or_skip().unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let b = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        audit: file_audit(dir.path()),
        ..Default::default()
    })
    .await;
    let load = Load::start(&b, 4);
    load.wait_tokens(0, 5).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.restart().unwrap();
    let n = load.delivered_now();
    load.wait_tokens(n, 10).await;
    let (delivered, refused) = load.stop().await;
    assert!(refused > 0, "the outage was felt");
    both_sinks_agree(&b, &path, &delivered).await;
}

/// R15: records deleted from the file or the stream are named by `seq` and
/// place: the first record, the record just before an outage of the stream
/// (the seam where an older version started a new chain), the last record
/// (only against the store's checkpoint). Exit 1 each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_deleted_records_are_reported_first_at_a_seam_and_last() {
    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let b = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        with_issuer: false,
        audit: file_audit(dir.path()),
        ..Default::default()
    })
    .await;
    let (s, v) = b.agent_token("tickets:read", None).await;
    assert_eq!(s, 200, "{v}");
    let before_outage = decode(v["access_token"].as_str().unwrap()).1["jti"]
        .as_str()
        .unwrap()
        .to_string();
    // the audit stream refuses writes (every other key works)
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
    let (s, v) = b.agent_token("tickets:read", None).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(
        redis_cli(
            &redis.url(),
            &["ACL", "SETUSER", "default", "resetkeys", "~*"]
        )
        .trim(),
        "OK"
    );
    let mut delivered = BTreeSet::from([before_outage.clone()]);
    for _ in 0..2 {
        let (s, v) = b.agent_token("tickets:read", None).await;
        assert_eq!(s, 200, "{v}");
        delivered.insert(
            decode(v["access_token"].as_str().unwrap()).1["jti"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    both_sinks_agree(&b, &path, &delivered).await;

    let lines = file_lines(&path);
    let seq_of = |l: &str| {
        serde_json::from_str::<Value>(l).unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    let verify = |kept: Vec<String>, name: &str, extra: &[&str]| {
        let p = dir.path().join(name);
        std::fs::write(&p, kept.join("\n") + "\n").unwrap();
        let ps = p.display().to_string();
        let mut args = vec!["audit", "verify", "--file", ps.as_str()];
        args.extend_from_slice(extra);
        b.cli(&args)
    };

    // at the seam: the `issued` record of the last token before the outage
    let i = lines
        .iter()
        .position(|l| l.contains("\"event\":\"issued\"") && l.contains(&before_outage))
        .unwrap();
    let seq = seq_of(&lines[i]);
    let mut kept = lines.clone();
    kept.remove(i);
    let (code, _, err) = verify(kept, "seam.jsonl", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "a record is missing: seq {seq}, between seq {} and seq {}",
            seq - 1,
            seq + 1
        )),
        "{err}"
    );

    // the first record
    let (code, _, err) = verify(lines[1..].to_vec(), "first.jsonl", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the first record is missing at the start of chain")
            && err.contains("seq 1 (the chain's first record here is seq 2)"),
        "{err}"
    );
    // ... unless the file says it was rotated
    let (code, out, err) = verify(lines[1..].to_vec(), "rotated.jsonl", &["--rotated"]);
    assert_eq!(code, 0, "{out}{err}");

    // the last record: the file alone cannot tell; the store's checkpoint can
    let last = seq_of(lines.last().unwrap());
    let short = lines[..lines.len() - 1].to_vec();
    let (code, out, err) = verify(short.clone(), "tail.jsonl", &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = verify(short, "tail2.jsonl", &["--checkpoint-from-store"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the last record is missing at the end of chain")
            && err.contains(&format!(
                "seq {last}, after seq {} (the store's checkpoint names seq {last})",
                last - 1
            )),
        "{err}"
    );

    // the stream's last entry deleted in Redis: `audit verify` reads the
    // checkpoint first, and names the missing record
    let top = redis_cli(
        &redis.url(),
        &[
            "XREVRANGE",
            "tessera:{audit}:stream",
            "+",
            "-",
            "COUNT",
            "1",
        ],
    );
    let id = top.lines().next().unwrap().trim().to_string();
    assert_eq!(
        redis_cli(&redis.url(), &["XDEL", "tessera:{audit}:stream", &id]).trim(),
        "1"
    );
    let (code, _, err) = b.cli(&["audit", "verify"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("seq {last}, after seq {}", last - 1)),
        "{err}"
    );
}
