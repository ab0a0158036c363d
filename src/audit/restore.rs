//! What an audit trail says must still be revoked and blocked: the plan of
//! `tessera store recover --from-audit FILE`, after the store lost its data
//! (`store::epoch`).
//!
//! Read, in order: `revoked` records (an operator's, with `reason` the kind
//! and the value in its field; a holder's, `reason = "holder"`, by `jti`;
//! the anomaly guard's, by `subject`), each with its time; `grant_revoked`
//! records (by `grant`); blocks from a `revoked` record's `detail`
//! (`blocked until UNIX`); `unblocked` records lift the blocks before them.
//! Which entries can still matter (a token they cover may be alive) is the
//! broker's decision: it knows `[tokens] max_ttl`.

use serde_json::Value;

use crate::revocation::RevocationKind;

/// The `detail` text of a revocation that also blocked its subject (the
/// operator's and the anomaly guard's records), and what a recovery reads
/// the block back from: written and parsed only here.
pub fn block_note(until: u64) -> String {
    format!("blocked until {until}")
}

/// One revocation to re-apply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlannedRevocation {
    /// What it covers.
    pub kind: RevocationKind,
    /// The value.
    pub value: String,
    /// When it was first recorded (Unix seconds).
    pub revoked_at: u64,
}

/// One block to re-apply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlannedBlock {
    /// The blocked identity.
    pub subject: String,
    /// Until when (Unix seconds).
    pub until: u64,
}

/// Everything an audit trail asks to restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestorePlan {
    /// Revocations, oldest first.
    pub revocations: Vec<PlannedRevocation>,
    /// Blocks in force at the end of the trail (after `unblocked` records).
    pub blocks: Vec<PlannedBlock>,
}

/// Unix seconds of a record's `time` (`2026-11-22T14:25:32.123Z`).
pub fn record_time(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let month = time::Month::try_from(u8::try_from(n(5..7)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(n(0..4)?).ok()?,
        month,
        u8::try_from(n(8..10)?).ok()?,
    )
    .ok()?;
    let t = time::Time::from_hms(
        u8::try_from(n(11..13)?).ok()?,
        u8::try_from(n(14..16)?).ok()?,
        u8::try_from(n(17..19)?).ok()?,
    )
    .ok()?;
    u64::try_from(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
    .ok()
}

fn blocked_until(detail: &str) -> Option<u64> {
    let marker = block_note(0);
    let marker = marker.trim_end_matches('0');
    let rest = &detail[detail.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Why an audit trail cannot be planned for restoring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// A revocation, grant revocation or unblock record whose `time` is
    /// missing or unreadable (the trail is not one this broker wrote).
    #[error("line {line}: a {event} record without a readable time")]
    NoTime {
        /// The line (from 1).
        line: usize,
        /// The record's event.
        event: String,
    },
}

impl RestorePlan {
    /// The plan of a JSON-lines audit trail. Lines that are not records
    /// (blank, torn) are skipped; a record without a readable `time` is an
    /// error (the trail is not one this broker wrote).
    pub fn from_lines<'a>(
        lines: impl IntoIterator<Item = &'a str>,
    ) -> Result<RestorePlan, RestoreError> {
        let mut plan = RestorePlan::default();
        let mut blocks: Vec<PlannedBlock> = Vec::new();
        for (i, line) in lines.into_iter().enumerate() {
            let Ok(r) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let field = |k: &str| r.get(k).and_then(Value::as_str);
            let event = field("event").unwrap_or("");
            if !matches!(event, "revoked" | "grant_revoked" | "unblocked") {
                continue;
            }
            let at = field("time")
                .and_then(record_time)
                .ok_or_else(|| RestoreError::NoTime {
                    line: i + 1,
                    event: event.to_string(),
                })?;
            let mut add = |kind: RevocationKind, value: Option<&str>| {
                if let Some(v) = value.filter(|v| !v.is_empty()) {
                    plan.revocations.push(PlannedRevocation {
                        kind,
                        value: v.into(),
                        revoked_at: at,
                    });
                }
            };
            match (event, field("reason").unwrap_or("")) {
                ("grant_revoked", _) => add(RevocationKind::Grant, field("grant")),
                ("unblocked", _) => {
                    let s = field("subject").unwrap_or("");
                    blocks.retain(|b| b.subject != s);
                }
                ("revoked", "holder") => add(RevocationKind::Jti, field("jti")),
                ("revoked", reason) => match RevocationKind::parse(reason) {
                    // An operator's: the reason is the kind.
                    Some(k) => add(k, field(k.as_str())),
                    // The anomaly guard's: the trigger is the reason.
                    None => add(RevocationKind::Subject, field("subject")),
                },
                _ => {}
            }
            if event == "revoked" {
                if let (Some(s), Some(u)) =
                    (field("subject"), field("detail").and_then(blocked_until))
                {
                    blocks.retain(|b| b.subject != s);
                    blocks.push(PlannedBlock {
                        subject: s.into(),
                        until: u,
                    });
                }
            }
        }
        plan.blocks = blocks;
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(record_time("2023-11-14T22:13:20.123Z"), Some(1_700_000_000));
        assert_eq!(record_time("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(record_time("2023-13-14T22:13:20Z"), None);
        assert_eq!(record_time("yesterday"), None);
    }

    #[test]
    fn a_trail_becomes_a_plan() {
        let t = "2023-11-14T22:13:20.000Z";
        let lines = [
            format!(r#"{{"event":"issued","time":"{t}","jti":"j0"}}"#),
            format!(r#"{{"event":"revoked","time":"{t}","reason":"jti","jti":"j1"}}"#),
            format!(
                r#"{{"event":"revoked","time":"{t}","reason":"holder","jti":"j2","subject":"s"}}"#
            ),
            format!(r#"{{"event":"revoked","time":"{t}","reason":"task","task":"t1"}}"#),
            format!(
                r#"{{"event":"revoked","time":"{t}","reason":"subject","subject":"a","detail":"oops (blocked until 1700000600)"}}"#
            ),
            format!(
                r#"{{"event":"revoked","time":"{t}","reason":"burst","subject":"b","detail":"anomaly guard: every token of the subject revoked, {}"}}"#,
                block_note(1_700_000_900)
            ),
            format!(r#"{{"event":"grant_revoked","time":"{t}","grant":"g1"}}"#),
            format!(r#"{{"event":"unblocked","time":"{t}","subject":"a"}}"#),
            "torn {".to_string(),
        ];
        let plan = RestorePlan::from_lines(lines.iter().map(String::as_str)).unwrap();
        let got: Vec<(&str, &str)> = plan
            .revocations
            .iter()
            .map(|r| (r.kind.as_str(), r.value.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("jti", "j1"),
                ("jti", "j2"),
                ("task", "t1"),
                ("subject", "a"),
                ("subject", "b"),
                ("grant", "g1")
            ]
        );
        assert!(plan
            .revocations
            .iter()
            .all(|r| r.revoked_at == 1_700_000_000));
        assert_eq!(
            plan.blocks,
            [PlannedBlock {
                subject: "b".into(),
                until: 1_700_000_900
            }]
        );
        let bad = [r#"{"event":"revoked","reason":"jti","jti":"x"}"#];
        assert!(RestorePlan::from_lines(bad).is_err());
    }
}
