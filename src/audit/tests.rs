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
async fn a_failing_file_sink_fails_every_record_and_starts_a_new_chain() {
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
    // the stream got each failed record, each as the first of its own chain,
    // so the stream still verifies
    let (rows, _) = crate::store::AuditStream::read(&*mem, Some("0"), 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let r = verify(&rows.into_iter().map(|(_, l)| l).collect::<Vec<_>>());
    assert!(r.intact(), "{r:?}");
    assert_eq!(r.chains.len(), 2);
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
