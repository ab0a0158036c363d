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
//! When a batch fails on any sink, its records are refused and the writer
//! starts a new chain (a fresh `node`), so every chain stays verifiable on
//! every sink: the failed sink simply ends the old chain earlier.
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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use record::{
    rfc3339_millis, rfc3339_now, sha256_hex, AuditRecord, ChainHead, Event, GENESIS,
    MAX_FIELD_CHARS, MAX_LIST_ENTRIES, MAX_RECORD_BYTES,
};
pub use verify::{head_from_line, Break, ChainSummary, ChainVerifier, Report};

use crate::config::AuditSink;
use crate::store::AuditStream;
use lines::Lines;

/// Records queued for the writer; past it [`Auditor::record`] fails at once.
pub const QUEUE_LEN: usize = 65_536;
/// Most records written in one batch.
pub const MAX_BATCH: usize = 4_096;
/// Most scheduler rounds the writer waits for more records before writing
/// a batch (group commit; it stops as soon as a round brings none).
pub const GROUP_YIELDS: usize = 4;

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
            AuditSink::Off => (Lines::Off, ChainHead::fresh()),
            AuditSink::Stdout => (Lines::stdout(), ChainHead::fresh()),
            AuditSink::File(path) => {
                let (file, head) = open_file(path)?;
                (
                    Lines::File(Arc::new(Mutex::new(file))),
                    head.unwrap_or_else(ChainHead::fresh),
                )
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        tokio::spawn(writer(rx, head, lines, stream, timeout));
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

/// Opens (creating) the file for appending and finds the chain to continue.
fn open_file(path: &Path) -> Result<(std::fs::File, Option<ChainHead>), AuditError> {
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
        return Ok((file, None));
    }
    let from = len.saturating_sub(TAIL_READ_BYTES);
    file.seek(SeekFrom::Start(from)).map_err(open_err)?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(open_err)?;
    if tail.last() != Some(&b'\n') {
        // A torn last line (a crash mid-write): end it, start a new chain.
        tracing::warn!(path = %path.display(), "audit file ends in an incomplete line; starting a new chain");
        file.write_all(b"\n").map_err(open_err)?;
        return Ok((file, None));
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
    Ok((file, head))
}

async fn writer(
    mut rx: mpsc::Receiver<Job>,
    mut head: ChainHead,
    mut lines: Lines,
    stream: Option<(Arc<dyn AuditStream>, u64)>,
    timeout: Duration,
) {
    let mut batch: Vec<Job> = Vec::new();
    while let Some(first) = rx.recv().await {
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
        let time = rfc3339_now();
        let mut buf = Vec::with_capacity(batch.len() * 512);
        let mut sealed = Vec::with_capacity(batch.len());
        for j in &mut batch {
            let line = head.seal(&mut j.rec, time.clone());
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            sealed.push(line);
        }
        let to_stream = async {
            match &stream {
                Some((s, max_len)) => s
                    .append(&sealed, *max_len)
                    .await
                    .map_err(|e| AuditError::Stream(e.to_string())),
                None => Ok(()),
            }
        };
        let both = async {
            let (a, b) = tokio::join!(lines.write(buf), to_stream);
            a.map_err(AuditError::Sink).and(b)
        };
        let result = match tokio::time::timeout(timeout, both).await {
            Ok(r) => r,
            Err(_) => Err(AuditError::Timeout(timeout.as_millis())),
        };
        let m = crate::telemetry::metrics();
        if let Err(e) = &result {
            m.audit_failures.inc_by(batch.len() as u64);
            let old = std::mem::replace(&mut head, ChainHead::fresh());
            tracing::error!(error = %e, records = batch.len(), old_node = %old.node, new_node = %head.node,
                "audit write failed: the records are refused and a new chain starts");
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

/// Verifies a JSON-lines audit file.
pub fn verify_file(path: &Path) -> Result<Report, String> {
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut v = ChainVerifier::default();
    let mut r = std::io::BufReader::new(f);
    let mut line = Vec::new();
    loop {
        line.clear();
        match std::io::BufRead::read_until(&mut r, b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => v.push_line(&String::from_utf8_lossy(&line)),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    }
    Ok(v.finish())
}

#[cfg(test)]
mod tests;
