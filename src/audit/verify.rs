//! Checking audit chains: each record's hash, `seq` continuity and `prev`
//! links, per `node`; every missing record by its `seq` and place (first,
//! between two records, last against a checkpoint).

use std::collections::BTreeMap;

use serde::Serialize;

use super::record::{AuditRecord, GENESIS};
use crate::store::AuditCheckpoint;

/// Where and why a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    /// Position of the record in the input (1-based: a line of a file, or
    /// the n-th record read from the stream); for records missing at the
    /// end of a chain, the position after the last record read.
    pub position: u64,
    /// The chain, when the record could be read.
    pub node: Option<String>,
    /// The record's `seq`, when it could be read.
    pub seq: Option<u64>,
    /// The `seq`s of the records that are missing (first and last), when
    /// records are missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<(u64, u64)>,
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
    /// The `seq` of the store's checkpoint of this chain, when one was
    /// given ([`ChainVerifier::with_checkpoints`]): the input must reach it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_seq: Option<u64>,
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
    /// Every break, in input order (at most [`MAX_BREAKS`]; chains ending
    /// short of their checkpoint last).
    pub breaks: Vec<Break>,
}

impl Report {
    /// Whether every chain is intact.
    pub fn intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// Most breaks a report lists (the first stays in `broken`).
pub const MAX_BREAKS: usize = 1_000;

/// Verifies records fed in order. Reports every break and goes on: a
/// record that is missing is named by its `seq` and where it should be
/// (between which two records), whether it was the first of a chain
/// ([`ChainVerifier::strict_start`]), in the middle, or the last (against a
/// checkpoint kept apart, [`ChainVerifier::with_checkpoints`]).
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
    checkpoints: BTreeMap<String, AuditCheckpoint>,
    strict_start: bool,
    breaks: Vec<Break>,
}

impl ChainVerifier {
    /// A chain whose first record in the input is past `seq` 1 is a break
    /// ("first records missing"), not a trimmed start. For an audit file,
    /// which holds every chain it continues from its first record (unless
    /// rotated); not for the bounded stream, which trims its oldest records.
    pub fn strict_start(mut self, strict: bool) -> Self {
        self.strict_start = strict;
        self
    }

    /// Checks each chain against its checkpoint (from the store, kept apart
    /// from the input): a chain of the input that ends before its
    /// checkpoint's `seq` lost its last records; a record at the
    /// checkpoint's `seq` must carry its hash. Chains of the input without a
    /// checkpoint, and checkpoints of chains not in the input (other
    /// brokers' chains), are not compared.
    pub fn with_checkpoints(mut self, cps: impl IntoIterator<Item = AuditCheckpoint>) -> Self {
        self.checkpoints = cps.into_iter().map(|c| (c.node.clone(), c)).collect();
        self
    }

    fn add(&mut self, b: Break) {
        if self.breaks.len() < MAX_BREAKS {
            self.breaks.push(b);
        }
    }

    /// Feeds one JSON line (blank lines are skipped).
    pub fn push_line(&mut self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        match serde_json::from_str::<AuditRecord>(line) {
            Ok(r) => self.push(&r),
            Err(e) => {
                self.position += 1;
                let b = Break {
                    position: self.position,
                    node: None,
                    seq: None,
                    missing: None,
                    why: format!("not an audit record: {e}"),
                };
                self.add(b);
            }
        }
    }

    /// Feeds one parsed record.
    pub fn push(&mut self, r: &AuditRecord) {
        self.position += 1;
        for (why, missing) in self.check(r) {
            let b = Break {
                position: self.position,
                node: Some(r.node.clone()),
                seq: Some(r.seq),
                missing,
                why,
            };
            self.add(b);
        }
    }

    fn check(&mut self, r: &AuditRecord) -> Vec<(String, Option<(u64, u64)>)> {
        let mut out = Vec::new();
        if r.node.is_empty() || r.seq == 0 || r.hash.len() != 64 || r.prev.len() != 64 {
            out.push(("record lacks node, seq, prev or hash".into(), None));
            return out;
        }
        if r.compute_hash() != r.hash {
            out.push(("hash does not match the record (altered)".into(), None));
        }
        if let Some(cp) = self.checkpoints.get(&r.node) {
            if cp.seq == r.seq && cp.hash != r.hash {
                out.push((
                    format!(
                        "seq {} is not the record the store's checkpoint names (hash {}…)",
                        r.seq,
                        cp.hash.get(..12).unwrap_or("")
                    ),
                    None,
                ));
            }
        }
        match self.heads.get(&r.node) {
            None => {
                let start_missing = r.seq != 1;
                if !start_missing && r.prev != GENESIS {
                    out.push(("seq 1 does not start from the genesis hash".into(), None));
                }
                if start_missing && self.strict_start {
                    out.push((
                        format!(
                            "{} missing at the start of chain {}: seq {} (the chain's first record here is seq {})",
                            if r.seq == 2 { "the first record is" } else { "the first records are" },
                            r.node,
                            span(1, r.seq - 1),
                            r.seq
                        ),
                        Some((1, r.seq - 1)),
                    ));
                }
                let checkpoint_seq = self.checkpoints.get(&r.node).map(|c| c.seq);
                self.chains.insert(
                    r.node.clone(),
                    ChainSummary {
                        node: r.node.clone(),
                        first_seq: r.seq,
                        last_seq: r.seq,
                        records: 1,
                        start_missing,
                        checkpoint_seq,
                    },
                );
                self.heads.insert(r.node.clone(), r.hash.clone());
            }
            Some(prev_hash) => {
                let Some(c) = self.chains.get_mut(&r.node) else {
                    out.push(("internal: chain without summary".into(), None));
                    return out;
                };
                if r.seq <= c.last_seq {
                    out.push((
                        format!(
                            "seq {} follows seq {}: out of order or repeated",
                            r.seq, c.last_seq
                        ),
                        None,
                    ));
                    c.records += 1;
                    return out;
                }
                if r.seq > c.last_seq + 1 {
                    out.push((
                        format!(
                            "{} missing: seq {}, between seq {} and seq {}",
                            if r.seq == c.last_seq + 2 {
                                "a record is"
                            } else {
                                "records are"
                            },
                            span(c.last_seq + 1, r.seq - 1),
                            c.last_seq,
                            r.seq
                        ),
                        Some((c.last_seq + 1, r.seq - 1)),
                    ));
                } else if &r.prev != prev_hash {
                    out.push((
                        format!(
                            "prev does not match the hash of seq {} (a record was replaced)",
                            c.last_seq
                        ),
                        None,
                    ));
                }
                c.last_seq = r.seq;
                c.records += 1;
                self.heads.insert(r.node.clone(), r.hash.clone());
            }
        }
        out
    }

    /// The report.
    pub fn finish(mut self) -> Report {
        let mut ends = Vec::new();
        for c in self.chains.values() {
            let Some(cp) = self.checkpoints.get(&c.node) else {
                continue;
            };
            if c.last_seq < cp.seq {
                ends.push(Break {
                    position: self.position + 1,
                    node: Some(c.node.clone()),
                    seq: None,
                    missing: Some((c.last_seq + 1, cp.seq)),
                    why: format!(
                        "{} missing at the end of chain {}: seq {}, after seq {} (the store's checkpoint names seq {})",
                        if cp.seq == c.last_seq + 1 { "the last record is" } else { "the last records are" },
                        c.node,
                        span(c.last_seq + 1, cp.seq),
                        c.last_seq,
                        cp.seq
                    ),
                });
            }
        }
        for b in ends {
            self.add(b);
        }
        Report {
            records: self.position,
            chains: self.chains.into_values().collect(),
            broken: self.breaks.first().cloned(),
            breaks: self.breaks,
        }
    }
}

/// `a` or `a..b`.
fn span(a: u64, b: u64) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}..{b}")
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
