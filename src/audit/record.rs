//! The audit record, its canonical form and the hash chain.

use serde::{Deserialize, Serialize};

/// `prev` of the first record of a chain: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A token was issued (and is returned only after this record is written).
    Issued,
    /// A request was refused (`reason` says why, `error` is the OAuth code).
    Refused,
    /// A request was refused because a dependency failed (fail closed).
    Unavailable,
    /// A revocation was recorded (by an operator or a token's holder).
    Revoked,
    /// A just-in-time grant was created.
    Granted,
    /// A just-in-time grant was removed together with its tokens.
    GrantRevoked,
    /// A kill-switch block was lifted by an operator.
    Unblocked,
    /// A pending approval was approved.
    Approved,
    /// A pending approval was denied.
    Denied,
    /// The broker started with a configuration.
    ConfigLoaded,
}

impl Event {
    /// Every event (their counters are exported at 0 from start-up).
    pub const ALL: [Event; 10] = [
        Self::Issued,
        Self::Refused,
        Self::Unavailable,
        Self::Revoked,
        Self::Granted,
        Self::GrantRevoked,
        Self::Unblocked,
        Self::Approved,
        Self::Denied,
        Self::ConfigLoaded,
    ];

    /// The wire name (`issued`, `grant_revoked`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Refused => "refused",
            Self::Unavailable => "unavailable",
            Self::Revoked => "revoked",
            Self::Granted => "granted",
            Self::GrantRevoked => "grant_revoked",
            Self::Unblocked => "unblocked",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::ConfigLoaded => "config_loaded",
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One audit record: a JSON object on one line. Empty optional fields are
/// left out. `seq`, `time`, `node`, `prev` and `hash` are set by the
/// [`Auditor`](super::Auditor) when the record joins its chain; callers fill
/// the rest with [`AuditRecord::new`] and the builder methods.
///
/// `hash` is `hex(SHA-256(canonical))`, where `canonical` is the record
/// serialised without `hash` (fields in declaration order, as
/// `serde_json` writes them); `prev` is the `hash` of the previous record of
/// the same `node` (64 zeros for the first), so deleting, reordering or
/// altering a record breaks the chain.
///
/// ```
/// use tessera::audit::{AuditRecord, Event};
/// let r = AuditRecord::new(Event::Refused)
///     .reason("scope_not_allowed")
///     .error("invalid_scope")
///     .client("spiffe://example.org/agent/demo");
/// let line = serde_json::to_string(&r).unwrap();
/// assert!(line.contains(r#""event":"refused""#));
/// assert!(!line.contains("jti"), "empty fields are left out");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the chain of `node`, from 1.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
    /// When the record was written: RFC 3339, UTC, milliseconds.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub time: String,
    /// The chain (one per broker process, or continued from an audit file).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// What was decided.
    pub event: Event,
    /// Precise reason code (`scope_not_allowed`, `subject_token_expired`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The OAuth error code answered, for refusals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The caller: SPIFFE ID or DNS name of its certificate, or `anonymous`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The token's (or grant's, or revocation's) subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The actor chain, current actor first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actors: Vec<String>,
    /// The accountable human (policy `owner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The task (`txn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Scopes granted (or covered by a grant).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The policy that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The JIT grant id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// The token's `jti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// `hex(SHA-256(token))`: the whole digest, never the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// Free text, log-safe (control characters escaped, length capped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `hash` of the previous record of this node ([`GENESIS`] for the first).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prev: String,
    /// `hex(SHA-256)` of this record serialised without `hash`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

/// Longest text kept in a field, after escaping (values longer are cut).
/// Control characters and non-ASCII are escaped (`\u{e9}`), so a field is
/// ASCII and at most twice this in JSON.
pub const MAX_FIELD_CHARS: usize = 1024;
/// Most entries kept in a list field (`scopes`, `actors`); the rest are
/// counted in a last entry `...(+N more)` (records stay ASCII).
pub const MAX_LIST_ENTRIES: usize = 32;
/// No sealed record is longer than this: every field and list is capped, so
/// one oversized record can never fail a batch holding other callers'
/// records.
pub const MAX_RECORD_BYTES: usize = crate::store::MAX_AUDIT_RECORD_BYTES;

fn safe(s: &str) -> String {
    // Fast path (nearly every value): printable ASCII that `escape_default`
    // leaves alone is copied as is; the output is the same.
    if s.len() <= MAX_FIELD_CHARS
        && s.bytes()
            .all(|b| (0x20..0x7f).contains(&b) && !matches!(b, b'\\' | b'\'' | b'"'))
    {
        return s.to_owned();
    }
    s.chars()
        .flat_map(char::escape_default)
        .take(MAX_FIELD_CHARS)
        .collect()
}

fn capped_list(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut more = 0usize;
    for i in items {
        if out.len() < MAX_LIST_ENTRIES {
            out.push(safe(&i));
        } else {
            more += 1;
        }
    }
    if more > 0 {
        out.push(format!("...(+{more} more)"));
    }
    out
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| safe(s))
}

impl AuditRecord {
    /// An empty record of `event`.
    pub fn new(event: Event) -> Self {
        Self {
            seq: 0,
            time: String::new(),
            node: String::new(),
            event,
            reason: None,
            error: None,
            client: None,
            subject: None,
            actors: Vec::new(),
            owner: None,
            task: None,
            scopes: Vec::new(),
            audience: None,
            policy: None,
            grant: None,
            jti: None,
            token_sha256: None,
            detail: None,
            prev: String::new(),
            hash: String::new(),
        }
    }

    /// Sets `reason`.
    pub fn reason(mut self, v: &str) -> Self {
        self.reason = opt(v);
        self
    }
    /// Sets `error`.
    pub fn error(mut self, v: &str) -> Self {
        self.error = opt(v);
        self
    }
    /// Sets `client`.
    pub fn client(mut self, v: &str) -> Self {
        self.client = opt(v);
        self
    }
    /// Sets `subject`.
    pub fn subject(mut self, v: &str) -> Self {
        self.subject = opt(v);
        self
    }
    /// Sets `actors` (current actor first).
    pub fn actors(mut self, v: impl IntoIterator<Item = String>) -> Self {
        self.actors = capped_list(v.into_iter());
        self
    }
    /// Sets `owner` when present.
    pub fn owner(mut self, v: Option<&str>) -> Self {
        self.owner = v.and_then(opt);
        self
    }
    /// Sets `task`.
    pub fn task(mut self, v: &str) -> Self {
        self.task = opt(v);
        self
    }
    /// Sets `scopes` from a space-separated list.
    pub fn scopes(mut self, v: &str) -> Self {
        self.scopes = capped_list(v.split_ascii_whitespace().map(str::to_string));
        self
    }
    /// Sets `audience`.
    pub fn audience(mut self, v: &str) -> Self {
        self.audience = opt(v);
        self
    }
    /// Sets `policy`.
    pub fn policy(mut self, v: &str) -> Self {
        self.policy = opt(v);
        self
    }
    /// Sets `grant` when present.
    pub fn grant(mut self, v: Option<&str>) -> Self {
        self.grant = v.and_then(opt);
        self
    }
    /// Sets `jti`.
    pub fn jti(mut self, v: &str) -> Self {
        self.jti = opt(v);
        self
    }
    /// Sets `token_sha256` from the token itself (the token is not kept).
    pub fn token(mut self, token: &str) -> Self {
        self.token_sha256 = Some(sha256_hex(token.as_bytes()));
        self
    }
    /// Sets `detail`.
    pub fn detail(mut self, v: &str) -> Self {
        self.detail = opt(v);
        self
    }

    /// The hash this record should carry (over every field but `hash`).
    pub fn compute_hash(&self) -> String {
        let mut r = self.clone();
        r.hash.clear();
        // Serialising a struct of strings and integers cannot fail.
        let canonical = serde_json::to_vec(&r).unwrap_or_default();
        sha256_hex(&canonical)
    }
}

/// Lowercase hex of SHA-256.
///
/// ```
/// assert_eq!(
///     tessera::audit::sha256_hex(b"abc"),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
pub fn sha256_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = String::with_capacity(64);
    for b in d.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// The head of one chain: who writes next, and what it links to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// The chain id.
    pub node: String,
    /// `seq` of the last record written (0: none yet).
    pub seq: u64,
    /// `hash` of the last record written ([`GENESIS`]: none yet).
    pub hash: String,
}

impl ChainHead {
    /// A new chain with a random id.
    pub fn fresh() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            node: id.chars().take(12).collect(),
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }

    /// Links `rec` after the head (sets `seq`, `time`, `node`, `prev`,
    /// `hash`), advances the head, and returns the record's JSON line
    /// (without the newline). Serialises once: `hash` is the last field, so
    /// the line is the canonical form with `,"hash":"…"}` appended.
    pub fn seal(&mut self, rec: &mut AuditRecord, time: String) -> String {
        rec.seq = self.seq + 1;
        rec.time = time;
        rec.node.clone_from(&self.node);
        rec.prev.clone_from(&self.hash);
        rec.hash.clear();
        let mut canonical = serde_json::to_vec(&*rec).unwrap_or_default();
        let hash = sha256_hex(&canonical);
        canonical.pop(); // the closing brace
        canonical.extend_from_slice(b",\"hash\":\"");
        canonical.extend_from_slice(hash.as_bytes());
        canonical.extend_from_slice(b"\"}");
        rec.hash.clone_from(&hash);
        self.seq = rec.seq;
        self.hash = hash;
        // serde_json writes UTF-8 only.
        String::from_utf8(canonical).unwrap_or_default()
    }
}

/// `now` as RFC 3339 UTC with milliseconds (`2026-11-22T14:25:32.123Z`).
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339_millis(now.as_millis() as i128)
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
///
/// ```
/// assert_eq!(tessera::audit::rfc3339_millis(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
/// ```
pub fn rfc3339_millis(ms: i128) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => "1970-01-01T00:00:00.000Z".into(),
    }
}

#[cfg(test)]
mod safe_tests {
    use super::*;

    fn slow(s: &str) -> String {
        s.chars()
            .flat_map(char::escape_default)
            .take(MAX_FIELD_CHARS)
            .collect()
    }

    proptest::proptest! {
        /// The fast path of `safe` gives exactly what escaping gives.
        #[test]
        fn fast_path_is_the_same_escaping(s in "\\PC{0,40}|[ -~]{0,1100}") {
            proptest::prop_assert_eq!(safe(&s), slow(&s));
        }
    }

    #[test]
    fn quotes_backslashes_and_controls_are_escaped() {
        for s in [
            "a\"b",
            "a'b",
            "a\\b",
            "a\nb",
            "é",
            &"x".repeat(MAX_FIELD_CHARS + 1),
        ] {
            assert_eq!(safe(s), slow(s), "{s}");
        }
        assert_eq!(
            safe("spiffe://example.org/agent/demo"),
            "spiffe://example.org/agent/demo"
        );
    }
}
