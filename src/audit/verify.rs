//! Checking audit chains: each record's hash, `seq` continuity and `prev`
//! links, per `node`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::record::{AuditRecord, GENESIS};

/// Where and why a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    /// Position of the record in the input (1-based: a line of a file, or
    /// the n-th record read from the stream).
    pub position: u64,
    /// The chain, when the record could be read.
    pub node: Option<String>,
    /// The record's `seq`, when it could be read.
    pub seq: Option<u64>,
    /// What is wrong.
    pub why: String,
}

/// What is known of one chain after verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainSummary {
    /// The chain id.
    pub node: String,
    /// `seq` of the first record seen.
    pub first_seq: u64,
    /// `seq` of the last record seen.
    pub last_seq: u64,
    /// Records seen.
    pub records: u64,
    /// The chain's first records are not in the input (trimmed from the
    /// bounded stream, or a rotated file): its first link cannot be checked.
    pub start_missing: bool,
}

/// The outcome of [`ChainVerifier::finish`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Records read.
    pub records: u64,
    /// Every chain seen, by node.
    pub chains: Vec<ChainSummary>,
    /// The first break, if any.
    pub broken: Option<Break>,
}

impl Report {
    /// Whether every chain is intact.
    pub fn intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// Verifies records fed in order. Stops at the first break.
///
/// ```
/// use tessera::audit::{AuditRecord, ChainHead, ChainVerifier, Event};
/// let mut head = ChainHead::fresh();
/// let mut v = ChainVerifier::default();
/// for _ in 0..3 {
///     let mut r = AuditRecord::new(Event::Refused).reason("scope_not_allowed");
///     let line = head.seal(&mut r, "2026-01-01T00:00:00.000Z".into());
///     v.push_line(&line);
/// }
/// let report = v.finish();
/// assert!(report.intact());
/// assert_eq!(report.chains[0].last_seq, 3);
/// ```
#[derive(Debug, Default)]
pub struct ChainVerifier {
    position: u64,
    chains: BTreeMap<String, ChainSummary>,
    heads: BTreeMap<String, String>,
    broken: Option<Break>,
}

impl ChainVerifier {
    /// Feeds one JSON line (blank lines are skipped).
    pub fn push_line(&mut self, line: &str) {
        if self.broken.is_some() || line.trim().is_empty() {
            return;
        }
        match serde_json::from_str::<AuditRecord>(line) {
            Ok(r) => self.push(&r),
            Err(e) => {
                self.position += 1;
                self.broken = Some(Break {
                    position: self.position,
                    node: None,
                    seq: None,
                    why: format!("not an audit record: {e}"),
                });
            }
        }
    }

    /// Feeds one parsed record.
    pub fn push(&mut self, r: &AuditRecord) {
        if self.broken.is_some() {
            return;
        }
        self.position += 1;
        let brk = |why: String| Break {
            position: 0,
            node: Some(r.node.clone()),
            seq: Some(r.seq),
            why,
        };
        let problem = self.check(r).err().map(brk);
        if let Some(mut b) = problem {
            b.position = self.position;
            self.broken = Some(b);
        }
    }

    fn check(&mut self, r: &AuditRecord) -> Result<(), String> {
        if r.node.is_empty() || r.seq == 0 || r.hash.len() != 64 || r.prev.len() != 64 {
            return Err("record lacks node, seq, prev or hash".into());
        }
        if r.compute_hash() != r.hash {
            return Err("hash does not match the record (altered)".into());
        }
        match self.heads.get(&r.node) {
            None => {
                let start_missing = r.seq != 1;
                if !start_missing && r.prev != GENESIS {
                    return Err("seq 1 does not start from the genesis hash".into());
                }
                self.chains.insert(
                    r.node.clone(),
                    ChainSummary {
                        node: r.node.clone(),
                        first_seq: r.seq,
                        last_seq: r.seq,
                        records: 1,
                        start_missing,
                    },
                );
            }
            Some(prev_hash) => {
                let Some(c) = self.chains.get_mut(&r.node) else {
                    return Err("internal: chain without summary".into());
                };
                if r.seq != c.last_seq + 1 {
                    return Err(format!(
                        "seq {} follows seq {}: records are missing or out of order",
                        r.seq, c.last_seq
                    ));
                }
                if &r.prev != prev_hash {
                    return Err(format!(
                        "prev does not match the hash of seq {} (a record was replaced)",
                        c.last_seq
                    ));
                }
                c.last_seq = r.seq;
                c.records += 1;
            }
        }
        self.heads.insert(r.node.clone(), r.hash.clone());
        Ok(())
    }

    /// The report.
    pub fn finish(self) -> Report {
        Report {
            records: self.position,
            chains: self.chains.into_values().collect(),
            broken: self.broken,
        }
    }
}

/// The head to continue from, given the last line of an audit file: `None`
/// when the line is not a sealed record (then a new chain starts).
pub fn head_from_line(line: &str) -> Option<super::ChainHead> {
    let r: AuditRecord = serde_json::from_str(line.trim()).ok()?;
    if r.node.is_empty() || r.seq == 0 || r.compute_hash() != r.hash {
        return None;
    }
    Some(super::ChainHead {
        node: r.node,
        seq: r.seq,
        hash: r.hash,
    })
}
