#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::store::memory::MemoryStore;
use crate::store::StoreError;

fn lines(n: usize) -> Vec<String> {
    let mut head = ChainHead::fresh();
    (0..n)
        .map(|i| {
            let mut r = AuditRecord::new(Event::Issued)
                .subject("spiffe://example.org/agent/demo")
                .jti(&format!("jti-{i}"))
                .scopes("tickets:read tickets:write")
                .token(&format!("token-{i}"));
            head.seal(&mut r, rfc3339_now())
        })
        .collect()
}

fn verify(ls: &[String]) -> Report {
    let mut v = ChainVerifier::default();
    for l in ls {
        v.push_line(l);
    }
    v.finish()
}

#[test]
fn sealed_records_verify_and_hash_is_over_the_canonical_form() {
    let ls = lines(5);
    let r = verify(&ls);
    assert!(r.intact(), "{r:?}");
    assert_eq!(r.records, 5);
    assert_eq!(r.chains.len(), 1);
    assert_eq!((r.chains[0].first_seq, r.chains[0].last_seq), (1, 5));
    assert!(!r.chains[0].start_missing);
    // the line ends with the hash, which is over everything before it
    let rec: AuditRecord = serde_json::from_str(&ls[0]).unwrap();
    assert_eq!(rec.prev, GENESIS);
    assert_eq!(rec.compute_hash(), rec.hash);
    assert!(ls[0].ends_with(&format!(",\"hash\":\"{}\"}}", rec.hash)));
    // empty optional fields are left out; the token is not there, its hash is
    assert!(!ls[0].contains("\"owner\""));
    assert!(!ls[0].contains("token-0\""));
    assert!(ls[0].contains(&sha256_hex(b"token-0")));
}

#[test]
fn a_tampered_field_is_reported() {
    let mut ls = lines(4);
    ls[2] = ls[2].replace("tickets:write", "tickets:admin");
    let r = verify(&ls);
    let b = r.broken.unwrap();
    assert_eq!((b.position, b.seq), (3, Some(3)));
    assert!(b.why.contains("altered"), "{}", b.why);
}

#[test]
fn a_deleted_middle_line_is_reported() {
    let mut ls = lines(5);
    ls.remove(2);
    let b = verify(&ls).broken.unwrap();
    assert_eq!(b.seq, Some(4));
    assert!(b.why.contains("missing"), "{}", b.why);
}

#[test]
fn reordered_lines_are_reported() {
    let mut ls = lines(5);
    ls.swap(1, 2);
    let b = verify(&ls).broken.unwrap();
    assert_eq!(b.position, 2);
}

#[test]
fn a_record_resealed_after_tampering_breaks_the_next_link() {
    // An attacker who recomputes the altered record's hash still breaks the
    // chain at the next record (its prev no longer matches).
    let mut ls = lines(4);
    let mut rec: AuditRecord = serde_json::from_str(&ls[1]).unwrap();
    rec.subject = Some("spiffe://example.org/agent/other".into());
    rec.hash = rec.compute_hash();
    ls[1] = serde_json::to_string(&rec).unwrap();
    let b = verify(&ls).broken.unwrap();
    assert_eq!(b.seq, Some(3));
    assert!(b.why.contains("prev"), "{}", b.why);
}

#[test]
fn garbage_and_unknown_fields_are_reported() {
    let mut ls = lines(3);
    ls[1] = ls[1].replacen('{', "{\"extra\":1,", 1);
    assert!(verify(&ls)
        .broken
        .unwrap()
        .why
        .contains("not an audit record"));
    let b = verify(&["{not json".to_string()]).broken.unwrap();
    assert_eq!(b.position, 1);
}

#[test]
fn a_trimmed_start_is_not_tampering() {
    let ls = lines(6);
    let r = verify(&ls[3..]);
    assert!(r.intact(), "{r:?}");
    assert!(r.chains[0].start_missing);
    assert_eq!(r.chains[0].first_seq, 4);
}

#[test]
fn interleaved_chains_verify_separately() {
    let a = lines(3);
    let b = lines(3);
    let mixed = vec![
        a[0].clone(),
        b[0].clone(),
        b[1].clone(),
        a[1].clone(),
        a[2].clone(),
        b[2].clone(),
    ];
    let r = verify(&mixed);
    assert!(r.intact(), "{r:?}");
    assert_eq!(r.chains.len(), 2);
}

#[test]
fn no_record_can_grow_past_the_cap() {
    let huge = "\u{7}\"é".repeat(5_000);
    let many = format!("{huge} ").repeat(50) + &"s ".repeat(10_000);
    let mut r = AuditRecord::new(Event::Refused)
        .reason(&huge)
        .error(&huge)
        .client(&huge)
        .subject(&huge)
        .actors(vec![huge.clone(); 1000])
        .owner(Some(&huge))
        .task(&huge)
        .scopes(&many)
        .audience(&huge)
        .policy(&huge)
        .grant(Some(&huge))
        .jti(&huge)
        .token(&huge)
        .detail(&huge);
    assert_eq!(r.scopes.len(), MAX_LIST_ENTRIES + 1);
    assert_eq!(r.scopes.last().unwrap(), "...(+10018 more)");
    let line = ChainHead::fresh().seal(&mut r, rfc3339_now());
    assert!(line.len() <= MAX_RECORD_BYTES, "{}", line.len());
    assert!(
        line.is_ascii(),
        "records are ASCII: easy to re-serialise byte for byte elsewhere"
    );
    assert!(verify(&[line]).intact());
}

#[test]
fn starting_outside_a_runtime_is_an_error_not_a_panic() {
    assert!(Auditor::start(&AuditSink::Off, None, Duration::from_secs(1)).is_err());
}

#[test]
fn time_format() {
    assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(
        rfc3339_millis(1_700_000_000_123),
        "2023-11-14T22:13:20.123Z"
    );
    let now = rfc3339_now();
    assert_eq!(now.len(), 24, "{now}");
    assert!(now.ends_with('Z'));
}

fn stream() -> Option<(Arc<dyn crate::store::AuditStream>, u64)> {
    Some((Arc::new(MemoryStore::new()), 1000))
}

#[tokio::test]
async fn a_restarted_writer_continues_the_file_chain() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("audit.jsonl");
    let sink = AuditSink::File(path.clone());
    let a = Auditor::start(&sink, stream(), Duration::from_secs(2)).unwrap();
    for _ in 0..3 {
        a.record(AuditRecord::new(Event::Refused).reason("r"))
            .await
            .unwrap();
    }
    drop(a);
    let b = Auditor::start(&sink, stream(), Duration::from_secs(2)).unwrap();
    for _ in 0..2 {
        b.record(AuditRecord::new(Event::Issued).jti("j"))
            .await
            .unwrap();
    }
    let r = verify_file(&path).unwrap();
    assert!(r.intact(), "{r:?}");
    assert_eq!(r.chains.len(), 1, "one chain across the restart: {r:?}");
    assert_eq!((r.chains[0].first_seq, r.chains[0].last_seq), (1, 5));
    // a torn last line (crash mid-write) starts a new chain on a fresh line
    drop(b);
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"seq\":6,\"ti")
        .unwrap();
    let c = Auditor::start(&sink, stream(), Duration::from_secs(2)).unwrap();
    c.record(AuditRecord::new(Event::Issued)).await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let last: AuditRecord = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!((last.seq, last.prev.as_str()), (1, GENESIS));
    // the torn line itself is reported
    let r = verify_file(&path).unwrap();
    assert_eq!(r.broken.unwrap().position, 6);
}

#[tokio::test]
async fn a_failing_file_sink_fails_every_record_but_the_chain_goes_on() {
    if !std::path::Path::new("/dev/full").exists() {
        return;
    }
    let mem = Arc::new(MemoryStore::new());
    let a = Auditor::start(
        &AuditSink::File("/dev/full".into()),
        Some((mem.clone(), 1000)),
        Duration::from_secs(2),
    )
    .unwrap();
    let e = a.record(AuditRecord::new(Event::Issued)).await.unwrap_err();
    assert!(matches!(e, AuditError::Sink(_)), "{e:?}");
    let e = a.record(AuditRecord::new(Event::Issued)).await.unwrap_err();
    assert!(matches!(e, AuditError::Sink(_)), "{e:?}");
    // the stream got each failed record, in one chain that does not restart
    // on the file's failure (the file keeps them as its backlog)
    let (rows, _) = crate::store::AuditStream::read(&*mem, Some("0"), 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let r = verify(&rows.into_iter().map(|(_, l)| l).collect::<Vec<_>>());
    assert!(r.intact(), "{r:?}");
    assert_eq!(r.chains.len(), 1);
    assert_eq!((r.chains[0].first_seq, r.chains[0].last_seq), (1, 2));
}

/// A memory stream that fails while `down` is set, and, while `late` is
/// set, appends only after its caller gave up (a paused Redis that wakes).
#[derive(Default)]
struct Flaky {
    mem: MemoryStore,
    down: std::sync::atomic::AtomicBool,
    late: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl crate::store::AuditStream for Flaky {
    async fn append(&self, r: &[String], m: u64) -> Result<(), StoreError> {
        self.mem.append(r, m).await
    }
    async fn read(
        &self,
        a: Option<&str>,
        l: usize,
    ) -> Result<(Vec<(String, String)>, String), StoreError> {
        self.mem.read(a, l).await
    }
    async fn append_chain(
        &self,
        node: &str,
        records: &[crate::store::AuditLine],
        max_len: u64,
    ) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.down.load(SeqCst) {
            return Err(StoreError::Unavailable("down".into()));
        }
        if self.late.load(SeqCst) {
            // the write reaches the store, the answer never comes in time
            self.mem.append_chain(node, records, max_len).await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        self.mem.append_chain(node, records, max_len).await
    }
    async fn checkpoints(&self) -> Result<Vec<crate::store::AuditCheckpoint>, StoreError> {
        self.mem.checkpoints().await
    }
}

/// An auditor on `sink` with `flaky` as its stream (a restart is another
/// call on the same file and stream).
fn start_on(sink: &AuditSink, flaky: &Arc<Flaky>, timeout_ms: u64) -> Auditor {
    Auditor::start(
        sink,
        Some((flaky.clone(), 1000)),
        Duration::from_millis(timeout_ms),
    )
    .unwrap()
}

async fn stream_lines(f: &Flaky) -> Vec<String> {
    let (rows, _) = f.mem.read(Some("0"), 10_000).await.unwrap();
    rows.into_iter().map(|(_, l)| l).collect()
}

/// R15: a stream that fails, then one whose write lands after the deadline:
/// the records are refused each time, yet the chain never restarts, no
/// record is written twice, and once the stream answers it holds exactly
/// the file's records, in order, with its checkpoint at the last one.
#[tokio::test]
async fn r15_a_failing_or_late_stream_gets_the_same_gapless_chain_as_the_file() {
    use std::sync::atomic::Ordering::SeqCst;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("audit.jsonl");
    let flaky = Arc::new(Flaky::default());
    let a = Auditor::start(
        &AuditSink::File(path.clone()),
        Some((flaky.clone(), 100_000)),
        Duration::from_millis(200),
    )
    .unwrap();
    a.record(AuditRecord::new(Event::Issued).jti("a"))
        .await
        .unwrap();
    flaky.down.store(true, SeqCst);
    let e = a
        .record(AuditRecord::new(Event::Issued).jti("b"))
        .await
        .unwrap_err();
    assert!(matches!(e, AuditError::Stream(_)), "{e:?}");
    assert!(a.submit(
        AuditRecord::new(Event::Unavailable)
            .reason(WITHDRAWAL_REASON)
            .jti("b")
    ));
    flaky.down.store(false, SeqCst);
    flaky.late.store(true, SeqCst);
    let e = a
        .record(AuditRecord::new(Event::Issued).jti("c"))
        .await
        .unwrap_err();
    assert!(matches!(e, AuditError::Timeout(_)), "{e:?}");
    flaky.late.store(false, SeqCst);
    a.record(AuditRecord::new(Event::Refused).reason("r"))
        .await
        .unwrap();
    let file: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let stream = stream_lines(&flaky).await;
    assert_eq!(
        stream, file,
        "the stream holds the file's records, once each"
    );
    let r = verify_file(&path).unwrap();
    assert!(r.intact(), "{r:?}");
    assert_eq!(r.chains.len(), 1, "{r:?}");
    assert_eq!(r.chains[0].last_seq, file.len() as u64);
    let cps = flaky.checkpoints().await.unwrap();
    assert_eq!(cps.len(), 1);
    assert_eq!(cps[0].seq, file.len() as u64);
    let last: AuditRecord = serde_json::from_str(file.last().unwrap()).unwrap();
    assert_eq!(cps[0].hash, last.hash);
}

/// A sink that is down gets what it missed without waiting for a new
/// record (the writer retries its backlog).
#[tokio::test]
async fn a_stream_behind_catches_up_by_itself() {
    use std::sync::atomic::Ordering::SeqCst;
    let flaky = Arc::new(Flaky::default());
    let a = Auditor::start(
        &AuditSink::Off,
        Some((flaky.clone(), 100_000)),
        Duration::from_millis(200),
    )
    .unwrap();
    flaky.down.store(true, SeqCst);
    assert!(a.record(AuditRecord::new(Event::Refused)).await.is_err());
    flaky.down.store(false, SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while stream_lines(&flaky).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = verify(&stream_lines(&flaky).await);
    assert!(r.intact(), "{r:?}");
    assert_eq!(r.records, 1);
}

/// A broker stopped after its file got records the stream did not: the
/// next start on the same file sends the stream what it lacks, first.
#[tokio::test]
async fn a_restart_sends_the_stream_what_the_file_has_past_its_checkpoint() {
    use std::sync::atomic::Ordering::SeqCst;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("audit.jsonl");
    let sink = AuditSink::File(path.clone());
    let flaky = Arc::new(Flaky::default());
    let a = start_on(&sink, &flaky, 200);
    a.record(AuditRecord::new(Event::Refused)).await.unwrap();
    flaky.down.store(true, SeqCst);
    assert!(a.record(AuditRecord::new(Event::Refused)).await.is_err());
    drop(a);
    // the stopped writer's last try fails too (the stream is still down)
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stream_lines(&flaky).await.len(), 1);
    let b = start_on(&sink, &flaky, 200);
    flaky.down.store(false, SeqCst);
    b.record(AuditRecord::new(Event::Refused)).await.unwrap();
    let file: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(file.len(), 3);
    assert_eq!(stream_lines(&flaky).await, file);
}

/// R7/R15: a kill between the stream's write and the file's leaves the
/// stream ahead of the file. The restarted writer reads the records the
/// file lacks back from the stream, writes them to the file first, and the
/// chain goes on after the stream's checkpoint: both sinks hold the same
/// records, one chain, nothing twice.
#[tokio::test]
async fn a_restart_writes_the_file_what_the_stream_has_past_the_file() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("audit.jsonl");
    let sink = AuditSink::File(path.clone());
    let flaky = Arc::new(Flaky::default());
    let a = start_on(&sink, &flaky, 500);
    for _ in 0..4 {
        a.record(AuditRecord::new(Event::Issued)).await.unwrap();
    }
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // the kill: the file lost its last two records, the stream has them
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text.lines().take(2).collect();
    std::fs::write(&path, format!("{}\n", kept.join("\n"))).unwrap();
    assert_eq!(stream_lines(&flaky).await.len(), 4);

    let b = start_on(&sink, &flaky, 500);
    b.record(AuditRecord::new(Event::Issued)).await.unwrap();
    let file: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(file.len(), 5, "{file:#?}");
    assert_eq!(stream_lines(&flaky).await, file);
    let r = verify(&file);
    assert!(r.intact(), "{r:?}");
    assert_eq!(r.chains.len(), 1);
    assert_eq!((r.chains[0].first_seq, r.chains[0].last_seq), (1, 5));
}

/// The records past the file are used only when the stream still holds
/// all of them and they link on: a trimmed stream or a broken link is
/// refused (the broker logs it; `audit verify` names the gap).
#[tokio::test]
async fn records_past_the_file_are_used_only_whole_and_linked() {
    let rec = |seq: u64, prev: &str, hash: &str| {
        format!(r#"{{"node":"n1","seq":{seq},"prev":"{prev}","hash":"{hash}"}}"#)
    };
    let head = ChainHead {
        node: "n1".into(),
        seq: 1,
        hash: "h1".into(),
    };
    let cp = |seq: u64, hash: &str| crate::store::AuditCheckpoint {
        node: "n1".into(),
        seq,
        hash: hash.into(),
    };
    let t = Duration::from_secs(1);
    // whole and linked: seq 2 and 3 come back, in order
    let whole = MemoryStore::new();
    let other = r#"{"node":"n2","seq":9,"prev":"x","hash":"y"}"#.to_string();
    whole
        .append(&[rec(2, "h1", "h2"), other, rec(3, "h2", "h3")], 1000)
        .await
        .unwrap();
    let got = super::stream_past_file(&whole, &head, &cp(3, "h3"), t)
        .await
        .unwrap();
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3]);
    // trimmed: seq 2 is gone
    let trimmed = MemoryStore::new();
    trimmed.append(&[rec(3, "h2", "h3")], 1000).await.unwrap();
    let e = super::stream_past_file(&trimmed, &head, &cp(3, "h3"), t)
        .await
        .unwrap_err();
    assert_eq!(e, "the stream no longer holds every record past the file");
    // a record that does not link on from the file's last one
    let broken = MemoryStore::new();
    broken
        .append(&[rec(2, "other", "h2"), rec(3, "h2", "h3")], 1000)
        .await
        .unwrap();
    let e = super::stream_past_file(&broken, &head, &cp(3, "h3"), t)
        .await
        .unwrap_err();
    assert_eq!(
        e,
        "the stream's records do not link on from the file's last one"
    );
}

#[test]
fn every_missing_record_is_named_first_between_and_last() {
    let ls = lines(8);
    let last: AuditRecord = serde_json::from_str(&ls[7]).unwrap();
    let cp = crate::store::AuditCheckpoint {
        node: last.node.clone(),
        seq: 8,
        hash: last.hash.clone(),
    };
    // first (seq 1), middle (seq 4 and 5), last (seq 8)
    let kept: Vec<String> = [1, 2, 5, 6].iter().map(|&i| ls[i].clone()).collect();
    let mut v = ChainVerifier::default()
        .strict_start(true)
        .with_checkpoints([cp.clone()]);
    for l in &kept {
        v.push_line(l);
    }
    let r = v.finish();
    assert!(!r.intact());
    let missing: Vec<Option<(u64, u64)>> = r.breaks.iter().map(|b| b.missing).collect();
    assert_eq!(
        missing,
        vec![Some((1, 1)), Some((4, 5)), Some((8, 8))],
        "{r:?}"
    );
    assert!(
        r.breaks[0].why.contains("at the start"),
        "{}",
        r.breaks[0].why
    );
    assert!(
        r.breaks[1]
            .why
            .contains("seq 4..5, between seq 3 and seq 6"),
        "{}",
        r.breaks[1].why
    );
    assert_eq!(r.breaks[1].position, 3);
    assert!(
        r.breaks[2].why.contains("at the end")
            && r.breaks[2].why.contains("checkpoint names seq 8"),
        "{}",
        r.breaks[2].why
    );
    // without the checkpoint a removed tail cannot show; with it, an
    // intact input passes
    let mut v = ChainVerifier::default().with_checkpoints([cp]);
    for l in &ls {
        v.push_line(l);
    }
    assert!(v.finish().intact());
    // a record at the checkpoint's seq that is not the checkpointed one
    let mut v = ChainVerifier::default().with_checkpoints([crate::store::AuditCheckpoint {
        node: last.node.clone(),
        seq: 8,
        hash: "f".repeat(64),
    }]);
    for l in &ls {
        v.push_line(l);
    }
    let r = v.finish();
    assert!(r.broken.unwrap().why.contains("checkpoint"));
}

/// A stream that never answers.
struct Stuck;

#[async_trait]
impl crate::store::AuditStream for Stuck {
    async fn append(&self, _: &[String], _: u64) -> Result<(), StoreError> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }
    async fn read(
        &self,
        _: Option<&str>,
        _: usize,
    ) -> Result<(Vec<(String, String)>, String), StoreError> {
        Ok((vec![], String::new()))
    }
}

#[tokio::test]
async fn a_stuck_sink_times_out() {
    let a = Auditor::start(
        &AuditSink::Off,
        Some((Arc::new(Stuck), 1000)),
        Duration::from_millis(100),
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    let e = a.record(AuditRecord::new(Event::Issued)).await.unwrap_err();
    assert!(matches!(e, AuditError::Timeout(_)), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_records_form_one_gapless_chain() {
    let mem = Arc::new(MemoryStore::new());
    let a = Auditor::start(
        &AuditSink::Off,
        Some((mem.clone(), 100_000)),
        Duration::from_secs(5),
    )
    .unwrap();
    let mut tasks = Vec::new();
    for i in 0..2000 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            a.record(AuditRecord::new(Event::Issued).jti(&format!("j{i}")))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let (rows, _) = crate::store::AuditStream::read(&*mem, Some("0"), 10_000)
        .await
        .unwrap();
    let r = verify(&rows.into_iter().map(|(_, l)| l).collect::<Vec<_>>());
    assert!(r.intact(), "{r:?}");
    assert_eq!(r.records, 2000);
    assert_eq!(r.chains.len(), 1);
}
