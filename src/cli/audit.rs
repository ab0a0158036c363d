//! `tessera audit tail [--follow] [-n N]` and `tessera audit verify [--file
//! PATH [--rotated] [--checkpoint-from-store]]`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::admin::{count, Connection};
use crate::audit::{AuditRecord, ChainVerifier, Report};
use crate::store::AuditCheckpoint;

/// How often `audit tail --follow` polls.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
/// Records fetched per page by `audit verify` and `--follow`.
pub const PAGE: usize = 10_000;

fn cell(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Which records `audit tail` shows, and how wide its table is.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// Only records with this `jti`.
    pub jti: Option<String>,
    /// Only records with this `reason` (e.g. `no_matching_policy`).
    pub reason: Option<String>,
    /// Only records with this OAuth `error` (e.g. `invalid_request`).
    pub error: Option<String>,
    /// Only records whose `subject` (or `client`) is this.
    pub subject: Option<String>,
    /// Only records of this `event` (e.g. `refused`).
    pub event: Option<String>,
    /// `-o wide`: every column in full (default: a table of at most
    /// [`NARROW_WIDTH`] columns).
    pub wide: bool,
}

/// Widest line of the default (not `-o wide`) tables.
pub const NARROW_WIDTH: usize = 120;

impl TailOptions {
    fn filters(&self) -> bool {
        self.jti.is_some()
            || self.reason.is_some()
            || self.error.is_some()
            || self.subject.is_some()
            || self.event.is_some()
    }

    /// Whether record `r` passes every filter given.
    fn keeps(&self, r: &Value) -> bool {
        let is = |k: &str, want: &Option<String>| match want {
            None => true,
            Some(w) => r[k].as_str() == Some(w.as_str()),
        };
        is("jti", &self.jti)
            && is("reason", &self.reason)
            && is("error", &self.error)
            && is("event", &self.event)
            && (self.subject.is_none()
                || is("subject", &self.subject)
                || is("client", &self.subject))
    }
}

use super::fit;

/// The narrow table's time: `2026-12-05 18:54:18` (UTC, no fraction).
fn short_time(t: &str) -> String {
    t.get(..19).unwrap_or(t).replace('T', " ")
}

fn print_narrow(records: &[Value], header: &mut bool) {
    // 19 + 13 + 20 + 24 + 36 (a UUID) + 4 separators of 2 = 120
    if !*header {
        outln!(
            "{:<19}  {:<13}  {:<20}  {:<24}  JTI",
            "TIME (UTC)",
            "EVENT",
            "REASON",
            "SUBJECT"
        );
        *header = true;
    }
    for r in records {
        outln!(
            "{:<19}  {:<13}  {:<20}  {:<24}  {}",
            short_time(&cell(r, "time")),
            fit(&cell(r, "event"), 13),
            fit(&cell(r, "reason"), 20),
            fit(&cell(r, "subject"), 24),
            fit(&cell(r, "jti"), 36),
        );
    }
}

fn print_records_as(records: &[Value], as_json: bool, wide: bool, header: &mut bool) {
    if !as_json && !wide {
        print_narrow(records, header);
        return;
    }
    print_records(records, as_json, header);
}

fn print_records(records: &[Value], as_json: bool, header: &mut bool) {
    for r in records {
        if as_json {
            // in the record's own field order when it is one
            match serde_json::from_value::<AuditRecord>(r.clone()) {
                Ok(rec) => outln!("{}", serde_json::to_string(&rec).unwrap_or_default()),
                Err(_) => outln!("{r}"),
            }
            continue;
        }
        if !*header {
            outln!(
                "{:<24}  {:<13}  {:<28}  {:<36}  {:<36}  {:<28}  {:<24}  JTI",
                "TIME",
                "EVENT",
                "REASON",
                "CLIENT",
                "SUBJECT",
                "AUDIENCE",
                "SCOPES"
            );
            *header = true;
        }
        outln!(
            "{:<24}  {:<13}  {:<28}  {:<36}  {:<36}  {:<28}  {:<24}  {}",
            cell(r, "time"),
            cell(r, "event"),
            cell(r, "reason"),
            cell(r, "client"),
            cell(r, "subject"),
            cell(r, "audience"),
            cell(r, "scopes"),
            cell(r, "jti"),
        );
    }
}

fn page(v: &Value) -> (Vec<Value>, Option<String>) {
    let records = v["records"].as_array().cloned().unwrap_or_default();
    let cursor = v["cursor"].as_str().map(str::to_string);
    (records, cursor)
}

/// `tessera audit tail`: the newest `n` records of the broker's audit
/// stream (a table, or one JSON record per line with `--json`); with
/// `follow`, then every new record, polling every second.
/// `-n 0` prints nothing (with `follow`, only records written from now on).
pub async fn tail(conn: &Connection, n: usize, follow: bool, as_json: bool) -> i32 {
    tail_with(conn, n, follow, &TailOptions::default(), as_json).await
}

/// [`tail`] with filters (`--jti`, `--reason`, `--error`, `--subject`,
/// `--event`: the newest `n` records that pass them, among the newest
/// [`PAGE`]) and the table width (`-o wide`).
pub async fn tail_with(
    conn: &Connection,
    n: usize,
    follow: bool,
    o: &TailOptions,
    as_json: bool,
) -> i32 {
    if n == 0 && !follow {
        return 0;
    }
    let mut header = false;
    let limit = if o.filters() { PAGE } else { n.clamp(1, PAGE) };
    let first = match conn
        .call(
            reqwest::Method::GET,
            // with -n 0, one record only to learn where the stream ends
            &format!("/admin/v1/audit?limit={limit}"),
            None,
        )
        .await
    {
        Ok(v) => v,
        Err(m) => {
            errln!("error: {m}");
            return 1;
        }
    };
    let (records, mut cursor) = page(&first);
    let mut records: Vec<Value> = records.into_iter().filter(|r| o.keeps(r)).collect();
    if records.len() > n {
        records.drain(..records.len() - n);
    }
    if records.is_empty() && !follow && !as_json {
        outln!(
            "{}",
            if o.filters() {
                "no audit record matches"
            } else {
                "no audit records"
            }
        );
    }
    if n > 0 {
        print_records_as(&records, as_json, o.wide, &mut header);
    }
    if !follow {
        return 0;
    }
    loop {
        tokio::time::sleep(FOLLOW_INTERVAL).await;
        let path = match &cursor {
            Some(c) => format!(
                "/admin/v1/audit?limit={PAGE}&after={}",
                percent_encoding::utf8_percent_encode(c, percent_encoding::NON_ALPHANUMERIC)
            ),
            None => format!("/admin/v1/audit?limit={PAGE}&after=0"),
        };
        match conn.call(reqwest::Method::GET, &path, None).await {
            Ok(v) => {
                let (records, c) = page(&v);
                let records: Vec<Value> = records.into_iter().filter(|r| o.keeps(r)).collect();
                print_records_as(&records, as_json, o.wide, &mut header);
                if c.is_some() {
                    cursor = c;
                }
            }
            // Keep following through a broker restart or a store outage.
            Err(m) => errln!("warning: {m} (retrying)"),
        }
    }
}

/// With `allow_empty` false, an input with no record at all is a failure
/// (exit 1, "verified nothing"): a wrong path or an emptied file must not
/// pass as an intact trail.
fn report_out(r: &Report, source: &str, as_json: bool, allow_empty: bool) -> i32 {
    if as_json {
        outln!(
            "{}",
            serde_json::json!({"source": source, "intact": r.intact(), "records": r.records,
                               "chains": r.chains, "broken": r.broken, "breaks": r.breaks})
        );
    } else {
        for c in &r.chains {
            outln!(
                "chain {}: seq {}..{} ({}){}",
                c.node,
                c.first_seq,
                c.last_seq,
                count(c.records, "record", "records"),
                if c.start_missing {
                    "; its earlier records are not in this input (trimmed or rotated), so its first link is unchecked"
                } else {
                    ""
                }
            );
        }
        if r.intact() && r.records > 0 {
            outln!(
                "{source}: intact ({} in {})",
                count(r.records, "record", "records"),
                count(r.chains.len(), "chain", "chains")
            );
        }
    }
    if r.broken.is_none() && r.records == 0 {
        if allow_empty {
            if !as_json {
                outln!("{source}: no records: verified nothing (--allow-empty)");
            }
            return 0;
        }
        errln!("error: {source}: no records: verified nothing (--allow-empty accepts that)");
        return 1;
    }
    if r.broken.is_none() {
        return 0;
    }
    for b in &r.breaks {
        errln!(
            "error: {source}: chain broken at record {} (node {}, seq {}): {}",
            b.position,
            b.node.as_deref().unwrap_or("?"),
            b.seq.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            b.why
        );
    }
    if r.breaks.len() >= crate::audit::MAX_BREAKS {
        errln!(
            "error: {source}: more breaks not listed (the first {} are above)",
            crate::audit::MAX_BREAKS
        );
    }
    1
}

/// The store's checkpoint of every chain (`GET /admin/v1/audit/checkpoints`).
pub async fn checkpoints(
    conn: &Connection,
) -> Result<Vec<AuditCheckpoint>, crate::cli::admin::ConnError> {
    let v = conn
        .call(reqwest::Method::GET, "/admin/v1/audit/checkpoints", None)
        .await?;
    serde_json::from_value(v["checkpoints"].clone()).map_err(|e| {
        crate::cli::admin::ConnError::Unexpected {
            what: "checkpoints",
            source: e,
        }
    })
}

/// `tessera audit verify --file PATH [--rotated] [--checkpoint-from-store]`:
/// [`verify_file`], where a rotated file's chains may start past `seq` 1,
/// and, with `conn`, each chain must reach the store's checkpoint (a
/// removed tail shows).
pub async fn verify_file_checked(
    path: &Path,
    rotated: bool,
    conn: Option<&Connection>,
    as_json: bool,
    allow_empty: bool,
) -> i32 {
    let mut v = ChainVerifier::default().strict_start(!rotated);
    if let Some(conn) = conn {
        match checkpoints(conn).await {
            Ok(cps) => v = v.with_checkpoints(cps),
            Err(m) => {
                errln!("error: cannot read the store's audit checkpoints: {m}");
                return 1;
            }
        }
    }
    match crate::audit::verify_file_with(path, v) {
        Ok(r) => report_out(&r, &path.display().to_string(), as_json, allow_empty),
        Err(e) => {
            errln!("error: {e}");
            1
        }
    }
}

/// `tessera audit verify --file PATH`: checks every chain of a JSON-lines
/// audit file. Exit 0 intact, 1 broken (the first broken record and why).
pub fn verify_file(path: &Path, as_json: bool, allow_empty: bool) -> i32 {
    match crate::audit::verify_file(path) {
        Ok(r) => report_out(&r, &path.display().to_string(), as_json, allow_empty),
        Err(e) => {
            errln!("error: {e}");
            1
        }
    }
}

/// `tessera audit verify` (no `--file`): checks every chain in the broker's
/// audit stream, from the oldest record kept. A chain whose start was trimmed
/// from the bounded stream is reported as such, not as tampering.
pub async fn verify_stream(conn: &Connection, as_json: bool, allow_empty: bool) -> i32 {
    // The checkpoints first: a record appended while the stream is read
    // then only moves the stream past them, never short of them.
    let cps = match checkpoints(conn).await {
        Ok(c) => c,
        Err(m) => {
            errln!("error: cannot read the store's audit checkpoints: {m}");
            return 1;
        }
    };
    let mut v = ChainVerifier::default().with_checkpoints(cps);
    let mut cursor = "0".to_string();
    loop {
        let path = format!(
            "/admin/v1/audit?limit={PAGE}&after={}",
            percent_encoding::utf8_percent_encode(&cursor, percent_encoding::NON_ALPHANUMERIC)
        );
        let page_v = match conn.call(reqwest::Method::GET, &path, None).await {
            Ok(v) => v,
            Err(m) => {
                errln!("error: {m}");
                return 1;
            }
        };
        let (records, next) = page(&page_v);
        if records.is_empty() {
            break;
        }
        for r in &records {
            match r {
                Value::String(s) => v.push_line(s),
                other => match serde_json::from_value::<AuditRecord>(other.clone()) {
                    Ok(rec) => v.push(&rec),
                    Err(_) => v.push_line(&other.to_string()),
                },
            }
        }
        match next {
            Some(c) if c != cursor => cursor = c,
            _ => break,
        }
    }
    report_out(&v.finish(), "audit stream", as_json, allow_empty)
}
