//! The audit trail: one structured record per decision (issued, refused,
//! revoked, granted, …), hash-chained so tampering shows.
//!
//! An [`Auditor`] owns one chain per process (its `node`). Callers hand it an
//! [`AuditRecord`]; a single writer task links records in arrival order
//! (`seq`, `prev`, `hash`), writes every record queued so far as one batch to
//! each sink — a JSON-lines sink (stdout or a file, `[audit] sink`) and the
//! store's bounded audit stream ([`crate::store::AuditStream`]: a Redis
//! stream, or a ring buffer in memory) — and only then acknowledges each
//! record. [`Auditor::record`] waits for that acknowledgement, so the token
//! endpoint returns a token only after its `issued` record is written (fail
//! closed: a full queue, a failed sink or a timeout is an [`AuditError`]).
//!
//! When a batch fails on any sink, its records are refused (the caller
//! withholds the token and queues a withdrawal, [`is_withdrawal`]) but the
//! chain goes on: the sink that failed keeps the sealed records it missed
//! as its backlog and gets them first, in chain order, on its next write
//! (a retry every [`BACKLOG_RETRY`] while behind). Both sinks therefore
//! hold the same gapless chain once they work, and a missing record is
//! always a deletion. Writes are idempotent by `seq`: the stream appends
//! only records past its chain's checkpoint
//! ([`AuditStream::append_chain`], one atomic script), the line sink only
//! records past the last `seq` it wrote (checked under its lock), so a
//! write that lands after its deadline (a paused Redis that wakes up, a
//! stalled disk) never duplicates a record.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use tessera::audit::{AuditRecord, Auditor, Event};
//! use tessera::config::AuditSink;
//! use tessera::store::{memory::MemoryStore, AuditStream};
//!
//! let stream = Arc::new(MemoryStore::new());
//! let auditor = Auditor::start(
//!     &AuditSink::Off,
//!     Some((stream.clone() as Arc<dyn AuditStream>, 1000)),
//!     std::time::Duration::from_secs(2),
//! )
//! .unwrap();
//! auditor
//!     .record(AuditRecord::new(Event::Refused).reason("scope_not_allowed"))
//!     .await
//!     .unwrap();
//! let (records, _cursor) = stream.read(Some("0"), 10).await.unwrap();
//! assert_eq!(records.len(), 1);
//! assert!(records[0].1.contains(r#""seq":1"#));
//! # });
//! ```

mod lines;
mod record;
pub(crate) mod restore;
mod verify;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use record::{
    rfc3339_millis, rfc3339_now, sha256_hex, AuditRecord, ChainHead, Event, GENESIS,
    MAX_FIELD_CHARS, MAX_LIST_ENTRIES, MAX_RECORD_BYTES,
};
pub use verify::{head_from_line, Break, ChainSummary, ChainVerifier, Report, MAX_BREAKS};

use crate::store::{AuditCheckpoint, AuditLine, AuditStream};
use lines::Lines;

/// Where audit records are written as JSON lines (`[audit] sink`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// Standard output (logs go to standard error).
    Stdout,
    /// Appended to this file.
    File(PathBuf),
    /// Nowhere (only the store's bounded stream).
    Off,
}

/// Records queued for the writer; past it [`Auditor::record`] fails at once.
pub const QUEUE_LEN: usize = 65_536;
/// Most records written in one batch.
pub const MAX_BATCH: usize = 4_096;
/// Most scheduler rounds the writer waits for more records before writing
/// a batch (group commit; it stops as soon as a round brings none).
pub const GROUP_YIELDS: usize = 4;

/// Most sealed records kept for a sink that missed them (see the module
/// docs); past it, new records other than withdrawals are refused before
/// they join the chain.
pub const MAX_BACKLOG: usize = QUEUE_LEN;
/// How often the writer retries a sink that is behind when no record comes.
pub const BACKLOG_RETRY: Duration = Duration::from_secs(1);

/// How much of an existing audit file's end is read to find its last record.
pub const TAIL_READ_BYTES: u64 = 256 * 1024;

/// Why a record could not be written. The caller fails closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The writer's queue is full.
    #[error("audit queue full")]
    QueueFull,
    /// The writer is gone (shutting down).
    #[error("audit writer stopped")]
    Closed,
    /// The record was not acknowledged in time.
    #[error("audit write not acknowledged within {0} ms")]
    Timeout(u128),
    /// The line sink (stdout or file) refused the batch.
    #[error("audit sink failed: {0}")]
    Sink(String),
    /// The store's audit stream refused the batch (the lines, if any, were
    /// written).
    #[error("audit sink failed: audit stream: {0}")]
    Stream(String),
    /// The audit file cannot be opened.
    #[error("cannot open the audit file {path}: {reason}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

struct Job {
    rec: AuditRecord,
    ack: Option<oneshot::Sender<Result<(), AuditError>>>,
}

/// Handle to the audit writer; cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Job>,
    timeout: Duration,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Auditor {
    /// Opens the sinks and spawns the writer (inside a Tokio runtime; an
    /// error outside one).
    /// `stream` is the bounded stream with its approximate length cap.
    /// A file sink that exists continues its last chain; a new one starts a
    /// fresh chain. Errors when the file cannot be opened.
    pub fn start(
        sink: &AuditSink,
        stream: Option<(Arc<dyn AuditStream>, u64)>,
        timeout: Duration,
    ) -> Result<Self, AuditError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(AuditError::Sink(
                "the auditor must be started inside a Tokio runtime".into(),
            ));
        }
        let (lines, head) = match sink {
            AuditSink::Off => (Lines::Off, (ChainHead::fresh(), Vec::new())),
            AuditSink::Stdout => (Lines::stdout(), (ChainHead::fresh(), Vec::new())),
            AuditSink::File(path) => {
                let (file, head, tail) = open_file(path)?;
                (
                    Lines::File(Arc::new(Mutex::new(file))),
                    match head {
                        Some(h) => (h, tail),
                        None => (ChainHead::fresh(), Vec::new()),
                    },
                )
            }
        };
        let (head, tail) = head;
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        tokio::spawn(writer(rx, head, tail, lines, stream, timeout));
        Ok(Self { tx, timeout })
    }

    /// Queues `rec` and waits until every sink has it. Fails at once when
    /// the queue is full, and after the configured timeout at the latest.
    pub async fn record(&self, rec: AuditRecord) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .try_send(Job {
                rec,
                ack: Some(ack),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => AuditError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => AuditError::Closed,
            })?;
        match tokio::time::timeout(self.timeout, done).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(AuditError::Closed),
            Err(_) => Err(AuditError::Timeout(self.timeout.as_millis())),
        }
    }

    /// Queues `rec` without waiting (for decisions that grant nothing, from
    /// code that cannot wait). `false` when the queue is full or closed; the
    /// failure is logged and counted.
    pub fn submit(&self, rec: AuditRecord) -> bool {
        let ok = self.tx.try_send(Job { rec, ack: None }).is_ok();
        if !ok {
            crate::telemetry::metrics().audit_failures.inc();
            tracing::error!("audit queue full or closed: a record was not written");
        }
        ok
    }
}

/// What [`open_file`] found: the file, the chain to continue, and the
/// records of that chain at the file's end (oldest first).
type Opened = (std::fs::File, Option<ChainHead>, Vec<AuditLine>);

/// Opens (creating) the file for appending and finds the chain to continue.
fn open_file(path: &Path) -> Result<Opened, AuditError> {
    let open_err = |e: std::io::Error| AuditError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(open_err)?;
    let len = file.metadata().map_err(open_err)?.len();
    if len == 0 {
        return Ok((file, None, Vec::new()));
    }
    let from = len.saturating_sub(TAIL_READ_BYTES);
    file.seek(SeekFrom::Start(from)).map_err(open_err)?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(open_err)?;
    if tail.last() != Some(&b'\n') {
        // A torn last line (a crash mid-write): end it, start a new chain.
        tracing::warn!(path = %path.display(), "audit file ends in an incomplete line; starting a new chain");
        file.write_all(b"\n").map_err(open_err)?;
        return Ok((file, None, Vec::new()));
    }
    let text = String::from_utf8_lossy(&tail);
    let last = text.lines().rev().find(|l| !l.trim().is_empty());
    let head = last.and_then(head_from_line);
    match &head {
        Some(h) => {
            tracing::info!(path = %path.display(), node = %h.node, seq = h.seq, "audit file: continuing its chain")
        }
        None => {
            tracing::warn!(path = %path.display(), "audit file's last line is not a sealed record; starting a new chain")
        }
    }
    let tail = match &head {
        Some(h) => chain_tail(&text, h),
        None => Vec::new(),
    };
    Ok((file, head, tail))
}

/// The sealed records of `head`'s chain that end `text`, oldest first (the
/// run of consecutive `seq`s up to `head.seq`).
fn chain_tail(text: &str, head: &ChainHead) -> Vec<AuditLine> {
    let mut out: Vec<AuditLine> = Vec::new();
    for l in text.lines().rev() {
        let l = l.trim();
        if l.is_empty() {
            continue;
        }
        let Some(h) = head_from_line(l) else { break };
        let want = out.last().map_or(head.seq, |r| r.seq.saturating_sub(1));
        if h.node != head.node || h.seq != want {
            break;
        }
        out.push(AuditLine {
            seq: h.seq,
            hash: h.hash,
            line: l.to_string(),
        });
    }
    out.reverse();
    out
}

/// What the writer keeps between batches.
struct Writer {
    head: ChainHead,
    lines: Lines,
    /// `seq` of the last record the line sink holds.
    lines_written: Arc<AtomicU64>,
    stream: Option<(Arc<dyn AuditStream>, u64)>,
    timeout: Duration,
    /// Sealed records the line sink does not hold yet (a failed or
    /// timed-out write): written first, before any newer record.
    lines_backlog: Vec<AuditLine>,
    /// The same for the stream.
    stream_backlog: Vec<AuditLine>,
}

impl Writer {
    fn backlog_full(&self) -> bool {
        self.lines_backlog.len() >= MAX_BACKLOG || self.stream_backlog.len() >= MAX_BACKLOG
    }

    /// Writes `fresh` (just sealed) after each sink's backlog, to both
    /// sinks at once, each bounded by the timeout. A sink that fails keeps
    /// everything it was given as its backlog; the chain goes on.
    async fn write(&mut self, fresh: Vec<AuditLine>) -> Result<(), AuditError> {
        let mut to_lines = std::mem::take(&mut self.lines_backlog);
        to_lines.extend(fresh.iter().cloned());
        let mut to_stream = std::mem::take(&mut self.stream_backlog);
        if self.stream.is_some() {
            to_stream.extend(fresh);
        }
        let timeout = self.timeout;
        let node = self.head.node.clone();
        let (sink, written, target) = (&mut self.lines, &self.lines_written, &self.stream);
        let lines = async {
            match tokio::time::timeout(timeout, sink.write(&to_lines, written)).await {
                Ok(r) => r.map_err(|e| AuditError::Sink(e.to_string())),
                Err(_) => Err(AuditError::Timeout(timeout.as_millis())),
            }
        };
        let stream = async {
            match target {
                Some((s, max_len)) if !to_stream.is_empty() => {
                    match tokio::time::timeout(timeout, s.append_chain(&node, &to_stream, *max_len))
                        .await
                    {
                        Ok(r) => r.map_err(|e| AuditError::Stream(e.to_string())),
                        Err(_) => Err(AuditError::Timeout(timeout.as_millis())),
                    }
                }
                _ => Ok(()),
            }
        };
        let (a, b) = tokio::join!(lines, stream);
        if a.is_err() {
            self.lines_backlog = to_lines;
        }
        if b.is_err() {
            self.stream_backlog = to_stream;
        }
        a.and(b)
    }
}

/// The records of `head`'s chain that the stream holds past the file
/// (`seq` `head.seq + 1 ..= cp.seq`), read back from the newest end of the
/// stream and checked to link on from `head` up to the checkpoint's hash;
/// `Err` says why they cannot be used (trimmed, too many, or not a chain).
async fn stream_past_file(
    s: &dyn AuditStream,
    head: &ChainHead,
    cp: &AuditCheckpoint,
    timeout: Duration,
) -> Result<Vec<AuditLine>, &'static str> {
    let need = cp.seq - head.seq;
    if need > crate::store::MAX_AUDIT_PAGE as u64 {
        return Err("more records than one read of the stream returns");
    }
    // Other chains (replicas) may have written after these: read more, up
    // to one page (a kill leaves at most a batch or a backlog behind).
    let limit = usize::try_from(need)
        .unwrap_or(usize::MAX)
        .saturating_mul(8)
        .clamp(1024, crate::store::MAX_AUDIT_PAGE);
    let (rows, _) = tokio::time::timeout(timeout, s.read(None, limit))
        .await
        .map_err(|_| "the stream did not answer in time")?
        .map_err(|_| "the stream cannot be read")?;
    let mut found: Vec<AuditLine> = Vec::new();
    let mut prev = head.hash.clone();
    for (_, line) in rows {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let seq = v["seq"].as_u64().unwrap_or(0);
        if v["node"].as_str() != Some(head.node.as_str()) || seq <= head.seq || seq > cp.seq {
            continue;
        }
        if found.is_empty() && seq > head.seq + 1 {
            return Err("the stream no longer holds every record past the file");
        }
        if seq != head.seq + 1 + found.len() as u64 || v["prev"].as_str() != Some(prev.as_str()) {
            return Err("the stream's records do not link on from the file's last one");
        }
        let hash = v["hash"].as_str().unwrap_or_default().to_string();
        prev.clone_from(&hash);
        found.push(AuditLine { seq, hash, line });
    }
    if found.len() as u64 != need || prev != cp.hash {
        return Err("the stream no longer holds every record past the file");
    }
    Ok(found)
}

async fn writer(
    mut rx: mpsc::Receiver<Job>,
    head: ChainHead,
    tail: Vec<AuditLine>,
    lines: Lines,
    stream: Option<(Arc<dyn AuditStream>, u64)>,
    timeout: Duration,
) {
    let mut w = Writer {
        lines_written: Arc::new(AtomicU64::new(head.seq)),
        head,
        lines,
        stream,
        timeout,
        lines_backlog: Vec::new(),
        stream_backlog: Vec::new(),
    };
    // A broker that stopped (a crash, a kill -9) after its file got records
    // the stream did not: the stream's checkpoint of this chain says how far
    // it got; the file's end gives the rest, first.
    // The other way round (a kill between the stream's write and the
    // file's): the stream holds records of this chain the file lacks. They
    // are read back and written to the file first, and the chain goes on
    // after the stream's checkpoint, so both sinks hold the same records.
    if let (Some((s, _)), false) = (&w.stream, tail.is_empty()) {
        match tokio::time::timeout(timeout, s.checkpoints()).await {
            Ok(Ok(cps)) => {
                if let Some(cp) = cps.iter().find(|c| c.node == w.head.node) {
                    if cp.seq < w.head.seq {
                        w.stream_backlog = tail.into_iter().filter(|r| r.seq > cp.seq).collect();
                        tracing::warn!(node = %w.head.node, stream_seq = cp.seq, file_seq = w.head.seq,
                            records = w.stream_backlog.len(),
                            "audit stream is behind the file: sending it the records it lacks");
                    } else if cp.seq > w.head.seq {
                        match stream_past_file(&**s, &w.head, cp, timeout).await {
                            Ok(missing) => {
                                tracing::warn!(node = %w.head.node, stream_seq = cp.seq,
                                    file_seq = w.head.seq, records = missing.len(),
                                    "audit file is behind the stream: writing it the records it lacks");
                                w.lines_backlog = missing;
                                w.head = ChainHead {
                                    node: cp.node.clone(),
                                    seq: cp.seq,
                                    hash: cp.hash.clone(),
                                };
                            }
                            Err(why) => tracing::error!(node = %w.head.node,
                                stream_seq = cp.seq, file_seq = w.head.seq, why,
                                "audit file is behind the stream and the records it lacks cannot be \
                                 read back: `audit verify` will name the gap"),
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "audit: cannot read the stream's checkpoints at start")
            }
            Err(_) => {
                tracing::warn!("audit: the stream's checkpoints did not come in time at start")
            }
        }
    }
    let mut batch: Vec<Job> = Vec::new();
    loop {
        let behind = !w.lines_backlog.is_empty() || !w.stream_backlog.is_empty();
        let first = if behind {
            tokio::select! {
                j = rx.recv() => match j {
                    Some(j) => Some(j),
                    None => {
                        // Closing: one last try to hand the sinks what they lack.
                        let _ = w.write(Vec::new()).await;
                        break;
                    }
                },
                () = tokio::time::sleep(BACKLOG_RETRY) => None,
            }
        } else {
            match rx.recv().await {
                Some(j) => Some(j),
                None => break,
            }
        };
        let Some(first) = first else {
            // Nothing new: retry the backlog alone.
            if let Err(e) = w.write(Vec::new()).await {
                tracing::warn!(error = %e, lines_behind = w.lines_backlog.len(),
                    stream_behind = w.stream_backlog.len(), "audit sink still failing");
            } else {
                tracing::info!(node = %w.head.node, seq = w.head.seq, "audit sinks caught up");
            }
            continue;
        };
        batch.push(first);
        // Group commit: let the tasks that are ready run first, so the
        // records they are about to queue join this batch: one write per
        // batch instead of one per record (a write to a piped stdout wakes
        // its reader: a system call and a wake-up each, and the acks of a
        // batch wake its tasks together). Yield again only while records
        // keep arriving, at most GROUP_YIELDS times; each round costs the
        // first record microseconds, and an idle broker yields once.
        for _ in 0..GROUP_YIELDS {
            let queued = rx.len();
            tokio::task::yield_now().await;
            if rx.len() == queued {
                break;
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let m = crate::telemetry::metrics();
        // A sink far behind: records that withdraw a token already in the
        // chain still join it (each follows its `issued` record); any other
        // is refused before it joins the chain, so no sink ever misses a
        // record of the chain.
        let mut refused: Vec<Job> = Vec::new();
        if w.backlog_full() {
            let (keep, out): (Vec<Job>, Vec<Job>) =
                batch.drain(..).partition(|j| is_withdrawal(&j.rec));
            batch = keep;
            refused = out;
        }
        let time = rfc3339_now();
        let mut fresh = Vec::with_capacity(batch.len());
        for j in &mut batch {
            let line = w.head.seal(&mut j.rec, time.clone());
            fresh.push(AuditLine {
                seq: j.rec.seq,
                hash: j.rec.hash.clone(),
                line,
            });
        }
        let result = if fresh.is_empty() {
            Ok(())
        } else {
            w.write(fresh).await
        };
        if let Err(e) = &result {
            m.audit_failures.inc_by(batch.len() as u64);
            tracing::error!(error = %e, records = batch.len(), node = %w.head.node, seq = w.head.seq,
                lines_behind = w.lines_backlog.len(), stream_behind = w.stream_backlog.len(),
                "audit write failed: the records are refused (the sink that missed them gets them later, in chain order)");
        }
        if !refused.is_empty() {
            m.audit_failures.inc_by(refused.len() as u64);
            tracing::error!(
                records = refused.len(),
                "audit backlog full: records refused before joining the chain"
            );
            let e = AuditError::Sink(format!("a sink is {MAX_BACKLOG} or more records behind"));
            for j in refused {
                if let Some(ack) = j.ack {
                    let _ = ack.send(Err(e.clone()));
                }
            }
        }
        for j in batch.drain(..) {
            if result.is_ok() {
                m.audit_records
                    .with_label_values(&[j.rec.event.as_str()])
                    .inc();
            }
            if let Some(ack) = j.ack {
                let _ = ack.send(result.clone());
            }
        }
    }
}

/// The record that says a token whose `issued` record was written was
/// withheld after all ([`Event::Unavailable`], reason `audit_unavailable`,
/// with the token's `jti`).
pub fn is_withdrawal(r: &AuditRecord) -> bool {
    r.event == Event::Unavailable
        && r.reason.as_deref() == Some(WITHDRAWAL_REASON)
        && r.jti.is_some()
}

/// `reason` of a withdrawal record ([`is_withdrawal`]).
pub const WITHDRAWAL_REASON: &str = "audit_unavailable";

/// Verifies a JSON-lines audit file: every chain must start at `seq` 1
/// ([`ChainVerifier::strict_start`]).
pub fn verify_file(path: &Path) -> Result<Report, AuditFileError> {
    verify_file_with(path, ChainVerifier::default().strict_start(true))
}

/// Verifies a JSON-lines audit file with `v` (its options: a rotated file's
/// start, checkpoints).
pub fn verify_file_with(path: &Path, mut v: ChainVerifier) -> Result<Report, AuditFileError> {
    let unreadable = |e| AuditFileError {
        path: path.to_path_buf(),
        source: e,
    };
    let f = std::fs::File::open(path).map_err(unreadable)?;
    let mut r = std::io::BufReader::new(f);
    let mut line = Vec::new();
    loop {
        line.clear();
        match std::io::BufRead::read_until(&mut r, b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => v.push_line(&String::from_utf8_lossy(&line)),
            Err(e) => return Err(unreadable(e)),
        }
    }
    Ok(v.finish())
}

/// An audit file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct AuditFileError {
    /// The file.
    pub path: std::path::PathBuf,
    /// Why.
    pub source: std::io::Error,
}

#[cfg(test)]
mod tests;
