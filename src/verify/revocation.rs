// One file: about 200 of its lines are unit tests; the follower's cursor and
// cache share one lock.
//! Following the broker's revocation feed.
//!
//! [`RevocationFollower`] catches up with the JSON form of `/revocations`
//! (page after page from its cursor), then holds the `text/event-stream`
//! form open and applies each `revocation` event as it arrives, recording
//! the event `id` as its cursor. When an established stream ends it
//! catches up again from the cursor and reopens the stream; when the stream
//! cannot be opened it polls the JSON form every [`POLL_INTERVAL`] and
//! retries the stream after [`STREAM_RETRY_DELAY`].
//!
//! Entries live in memory until their `expires_at`. Matching follows the
//! broker: a `jti` entry revokes that token and every token derived from it
//! (`ancestors`); `subject` (also matching any actor), `task` and `grant`
//! entries revoke tokens issued at or before `revoked_at`.
//!
//! One file: catching up (JSON pages), following (the event stream) and the
//! local entry set are one follower with one lock and one cursor; the
//! coverage rule itself is `crate::revocation`. About half are tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::Url;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{VerifiedToken, VerifyError};
use crate::clock::{Clock, SystemClock};
use crate::jwks::{CONNECT_TIMEOUT, FETCH_TIMEOUT};

/// Path of the feed on the broker.
///
/// ```
/// assert_eq!(tessera::verify::FEED_PATH, "/revocations");
/// ```
pub const FEED_PATH: &str = "/revocations";
/// Interval of JSON polling while the stream is unavailable, and the pause
/// after a failed catch-up.
///
/// ```
/// assert_eq!(tessera::verify::POLL_INTERVAL, std::time::Duration::from_secs(1));
/// ```
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long to poll before trying to open the stream again after it could
/// not be opened.
///
/// ```
/// assert!(tessera::verify::STREAM_RETRY_DELAY >= tessera::verify::POLL_INTERVAL);
/// ```
pub const STREAM_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Largest JSON page accepted.
///
/// ```
/// assert_eq!(tessera::verify::MAX_FEED_BODY_BYTES, 4 * 1024 * 1024);
/// ```
pub const MAX_FEED_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Longest SSE line accepted; a longer one drops the stream.
///
/// ```
/// assert_eq!(tessera::verify::MAX_SSE_LINE_BYTES, 64 * 1024);
/// ```
pub const MAX_SSE_LINE_BYTES: usize = 64 * 1024;
/// Most live entries held; further entries are counted in
/// [`RevocationFollower::dropped_entries`] and not held.
///
/// ```
/// assert_eq!(tessera::verify::MAX_LIVE_ENTRIES, 1_000_000);
/// ```
pub const MAX_LIVE_ENTRIES: usize = 1_000_000;
/// Longest the follower may go without hearing from the broker (an event,
/// a keep-alive comment, or a successful catch-up) before
/// [`RevocationFollower::check`] fails closed. The broker sends a
/// keep-alive every 15 s.
///
/// ```
/// assert_eq!(tessera::verify::MAX_FEED_SILENCE, std::time::Duration::from_secs(60));
/// ```
pub const MAX_FEED_SILENCE: Duration = Duration::from_secs(60);
/// An open stream that brings nothing (not even a keep-alive) for this
/// long is dropped and reopened.
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Expired entries are also purged every this many applied entries (and
/// after every catch-up), so a long-lived stream does not accumulate them.
const PURGE_EVERY_APPLIED: u64 = 1024;
/// Longest cursor accepted from the broker.
const MAX_CURSOR_LEN: usize = 64;
/// Most JSON pages fetched in one catch-up before streaming anyway.
const MAX_PAGES_PER_SYNC: usize = 1000;

/// Why a follower could not be started.
///
/// ```
/// use tessera::verify::{FollowerError, FollowerTls, RevocationFollower};
/// let tls = FollowerTls { roots: vec![], cert_chain: vec![], key: None };
/// let err = RevocationFollower::start("http://broker", tls).err();
/// assert_eq!(err.map(|e| e.reason()), Some("invalid_url"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FollowerError {
    /// The broker URL is not an https URL without credentials or query.
    #[error("broker URL must be https without credentials, query or fragment")]
    InvalidUrl,
    /// The TLS client could not be configured.
    #[error("TLS configuration: {0}")]
    Tls(&'static str),
}

impl FollowerError {
    /// A short stable code for logs and metrics.
    ///
    /// ```
    /// assert_eq!(tessera::verify::FollowerError::Tls("x").reason(), "tls_config");
    /// ```
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self {
            FollowerError::InvalidUrl => "invalid_url",
            FollowerError::Tls(_) => "tls_config",
        }
    }
}

/// The follower's mTLS material: trust anchors for the broker, and the
/// client certificate chain and key (an identity listed under the
/// broker's `[introspection] subjects`).
///
/// ```
/// let tls = tessera::verify::FollowerTls { roots: vec![], cert_chain: vec![], key: None };
/// assert!(tls.key.is_none());
/// ```
#[derive(Debug)]
pub struct FollowerTls {
    /// Trust anchors for the broker's server certificate (DER).
    pub roots: Vec<CertificateDer<'static>>,
    /// Client certificate chain, leaf first (DER).
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// Client private key (DER).
    pub key: Option<PrivateKeyDer<'static>>,
}

use crate::revocation::RevocationKind as Kind;

#[derive(Deserialize)]
struct WireEntry {
    kind: String,
    value: String,
    revoked_at: u64,
    expires_at: u64,
}

#[derive(Deserialize)]
struct WirePage {
    cursor: String,
    entries: Vec<WireEntry>,
}

#[derive(Clone, Copy, Debug)]
struct Live {
    revoked_at: u64,
    expires_at: u64,
}

#[derive(Debug)]
struct Shared {
    entries: RwLock<HashMap<(Kind, String), Live>>,
    cursor: RwLock<Option<String>>,
    synced: AtomicBool,
    streaming: AtomicBool,
    streams_opened: AtomicU64,
    applied: AtomicU64,
    dropped: AtomicU64,
    /// Most entries held ([`MAX_LIVE_ENTRIES`]; smaller in tests).
    max_entries: usize,
    /// Until when a dropped entry could still cover a live token.
    overflow_until: AtomicU64,
    /// When the broker was last heard from (clock seconds).
    last_contact: AtomicU64,
    disconnect: Notify,
    synced_notify: Notify,
    clock: Arc<dyn Clock>,
}

impl Shared {
    fn apply(&self, e: WireEntry) {
        let Some(kind) = Kind::parse(&e.kind) else {
            tracing::debug!(kind = %short(&e.kind), "ignoring unknown revocation kind");
            return;
        };
        let now = self.clock.now();
        if e.expires_at <= now {
            return;
        }
        let Ok(mut g) = self.entries.write() else {
            return;
        };
        let applied = self.applied.load(Ordering::Relaxed);
        if g.len() >= self.max_entries || applied.is_multiple_of(PURGE_EVERY_APPLIED) {
            g.retain(|_, l| l.expires_at > now);
        }
        let key = (kind, e.value);
        let full = g.len() >= self.max_entries;
        match g.get_mut(&key) {
            Some(old) => {
                old.revoked_at = old.revoked_at.max(e.revoked_at);
                old.expires_at = old.expires_at.max(e.expires_at);
            }
            None if full => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.overflow_until
                    .fetch_max(e.expires_at, Ordering::SeqCst);
                tracing::error!("revocation follower full; entry not held");
                return;
            }
            None => {
                g.insert(
                    key,
                    Live {
                        revoked_at: e.revoked_at,
                        expires_at: e.expires_at,
                    },
                );
            }
        }
        self.applied.fetch_add(1, Ordering::Relaxed);
    }

    fn touch(&self) {
        self.last_contact
            .fetch_max(self.clock.now(), Ordering::SeqCst);
    }

    fn check(&self, token: &VerifiedToken) -> Result<(), VerifyError> {
        if !self.synced.load(Ordering::SeqCst) {
            return Err(VerifyError::RevocationStatusUnknown(
                "revocations_not_synced",
            ));
        }
        let now = self.clock.now();
        let silent = now.saturating_sub(self.last_contact.load(Ordering::SeqCst));
        if silent > MAX_FEED_SILENCE.as_secs() {
            return Err(VerifyError::RevocationStatusUnknown("revocations_stale"));
        }
        if now < self.overflow_until.load(Ordering::SeqCst) {
            return Err(VerifyError::RevocationStatusUnknown("revocations_overflow"));
        }
        if self.is_revoked(token) {
            return Err(VerifyError::Revoked);
        }
        Ok(())
    }

    fn set_cursor(&self, c: String) {
        if let Ok(mut g) = self.cursor.write() {
            *g = Some(c);
        }
    }

    fn cursor(&self) -> Option<String> {
        self.cursor.read().ok().and_then(|g| g.clone())
    }

    fn is_revoked(&self, token: &VerifiedToken) -> bool {
        let now = self.clock.now();
        let Ok(g) = self.entries.read() else {
            // A poisoned lock means a writer panicked: fail closed.
            return true;
        };
        let covered = crate::revocation::Covered {
            jti: token.jti(),
            ancestors: token.ancestors(),
            sub: token.subject(),
            actors: token.actors(),
            client_id: token.client_id(),
            txn: token.task(),
            grant: token.grant(),
            // A token without iat is treated as issued at 0 (covered).
            iat: token.iat().unwrap_or(0),
        };
        covered.revoked_with(now, |k, v| {
            g.get(&(k, v.to_owned())).map(|l| crate::revocation::Entry {
                revoked_at: l.revoked_at,
                expires_at: l.expires_at,
            })
        })
    }

    fn purge(&self) {
        let now = self.clock.now();
        if let Ok(mut g) = self.entries.write() {
            g.retain(|_, l| l.expires_at > now);
        }
    }
}

/// At most 32 characters of an untrusted string, for logs.
fn short(s: &str) -> String {
    s.chars().take(32).collect()
}

/// Follows the broker's `/revocations` feed in a background task and
/// answers [`RevocationFollower::is_revoked`] from memory. Dropping the
/// follower stops the task.
///
/// ```no_run
/// use tessera::verify::{FollowerTls, RevocationFollower};
/// # async fn f(ca: Vec<u8>, cert: Vec<u8>, key: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
/// let tls = FollowerTls {
///     roots: vec![ca.into()],
///     cert_chain: vec![cert.into()],
///     key: Some(rustls_pki_types::PrivatePkcs8KeyDer::from(key).into()),
/// };
/// let follower = RevocationFollower::start("https://tessera.example.com", tls)?;
/// follower.wait_synced(std::time::Duration::from_secs(5)).await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RevocationFollower {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RevocationFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum StreamEnd {
    /// The stream was open and then ended: resume at once.
    Ended,
    /// The stream could not be opened: poll for a while.
    Unavailable,
}

struct Worker {
    client: reqwest::Client,
    feed: Url,
    shared: Arc<Shared>,
}

impl Worker {
    fn feed_url(&self) -> Url {
        let mut url = self.feed.clone();
        if let Some(c) = self.shared.cursor() {
            url.query_pairs_mut().append_pair("since", &c);
        }
        url
    }

    /// Fetches JSON pages until one brings nothing new.
    async fn catch_up(&self) -> Result<(), SyncError> {
        for _ in 0..MAX_PAGES_PER_SYNC {
            let resp = self
                .client
                .get(self.feed_url())
                .header(ACCEPT, "application/json")
                .timeout(FETCH_TIMEOUT)
                .send()
                .await
                .map_err(SyncError::Request)?;
            if !resp.status().is_success() {
                return Err(SyncError::Status(resp.status().as_u16()));
            }
            let body = read_capped(resp, MAX_FEED_BODY_BYTES).await?;
            let page: WirePage =
                serde_json::from_slice(&body).map_err(|_| SyncError::MalformedPage)?;
            if page.cursor.len() > MAX_CURSOR_LEN {
                return Err(SyncError::CursorTooLong);
            }
            let before = self.shared.cursor();
            let empty = page.entries.is_empty();
            for e in page.entries {
                self.shared.apply(e);
            }
            self.shared.set_cursor(page.cursor.clone());
            if empty || before.as_deref() == Some(page.cursor.as_str()) {
                self.shared.purge();
                self.shared.touch();
                if !self.shared.synced.swap(true, Ordering::SeqCst) {
                    self.shared.synced_notify.notify_waiters();
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// Holds the event stream open, applying events, until it ends.
    async fn stream(&self) -> StreamEnd {
        let resp = self
            .client
            .get(self.feed_url())
            .header(ACCEPT, "text/event-stream")
            .send()
            .await;
        let mut resp = match resp {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                tracing::warn!(status = r.status().as_u16(), "revocation stream refused");
                return StreamEnd::Unavailable;
            }
            Err(e) => {
                tracing::warn!(error = %e, "revocation stream failed");
                return StreamEnd::Unavailable;
            }
        };
        let is_sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            tracing::warn!("revocation stream is not text/event-stream");
            return StreamEnd::Unavailable;
        }
        self.shared.streams_opened.fetch_add(1, Ordering::Relaxed);
        self.shared.streaming.store(true, Ordering::SeqCst);
        self.shared.touch();
        let mut parser = SseParser::default();
        loop {
            let chunk = tokio::select! {
                c = tokio::time::timeout(STREAM_IDLE_TIMEOUT, resp.chunk()) => match c {
                    Ok(c) => c,
                    Err(_) => {
                        tracing::warn!("revocation stream silent too long; reconnecting");
                        break;
                    }
                },
                () = self.shared.disconnect.notified() => break,
            };
            match chunk {
                Ok(Some(bytes)) => {
                    self.shared.touch();
                    if parser.feed(&bytes, &self.shared).is_err() {
                        tracing::warn!("revocation stream line too long; reconnecting");
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "revocation stream interrupted");
                    break;
                }
            }
        }
        self.shared.streaming.store(false, Ordering::SeqCst);
        StreamEnd::Ended
    }

    async fn run(self) {
        let mut stream_after: Option<Instant> = None;
        loop {
            if let Err(e) = self.catch_up().await {
                tracing::warn!(error = %e, "revocation feed catch-up failed");
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            if stream_after.is_some_and(|t| Instant::now() < t) {
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            match self.stream().await {
                StreamEnd::Ended => stream_after = None,
                StreamEnd::Unavailable => {
                    stream_after = Some(Instant::now() + STREAM_RETRY_DELAY);
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
        }
    }
}

/// Why a catch-up with the revocation feed failed (logged; the follower
/// retries).
#[derive(Debug, thiserror::Error)]
enum SyncError {
    /// The request failed.
    #[error("request: {0}")]
    Request(reqwest::Error),
    /// The broker answered with this status.
    #[error("status {0}")]
    Status(u16),
    /// The body failed mid-way.
    #[error("body: {0}")]
    Body(reqwest::Error),
    /// The body is larger than the cap.
    #[error("body too large")]
    BodyTooLarge,
    /// The body is not a feed page.
    #[error("malformed page")]
    MalformedPage,
    /// The page's cursor is longer than any the broker sends.
    #[error("cursor too long")]
    CursorTooLong,
}

async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, SyncError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(SyncError::Body)? {
        if body.len().saturating_add(chunk.len()) > cap {
            return Err(SyncError::BodyTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Incremental `text/event-stream` parsing (the subset the broker sends:
/// `id`, `event`, `data` fields and comments).
#[derive(Default)]
struct SseParser {
    line: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: String,
}

struct LineTooLong;

impl SseParser {
    fn feed(&mut self, bytes: &[u8], shared: &Shared) -> Result<(), LineTooLong> {
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line_done(&String::from_utf8_lossy(&line), shared);
            } else {
                if self.line.len() >= MAX_SSE_LINE_BYTES {
                    return Err(LineTooLong);
                }
                self.line.push(b);
            }
        }
        Ok(())
    }

    fn line_done(&mut self, line: &str, shared: &Shared) {
        if line.is_empty() {
            self.dispatch(shared);
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "id" => self.id = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                if self.data.len().saturating_add(value.len()) <= MAX_SSE_LINE_BYTES {
                    self.data.push_str(value);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, shared: &Shared) {
        let id = self.id.take();
        let event = self.event.take();
        let data = std::mem::take(&mut self.data);
        if event.as_deref() != Some("revocation") || data.is_empty() {
            return;
        }
        match serde_json::from_str::<WireEntry>(&data) {
            Ok(entry) => {
                shared.apply(entry);
                if let Some(id) = id.filter(|i| !i.is_empty() && i.len() <= MAX_CURSOR_LEN) {
                    shared.set_cursor(id);
                }
            }
            Err(_) => tracing::warn!("malformed revocation event ignored"),
        }
    }
}

pub(super) fn mtls_client(tls: FollowerTls) -> Result<reqwest::Client, FollowerError> {
    if tls.roots.is_empty() {
        return Err(FollowerError::Tls("no trust anchors"));
    }
    if tls.key.is_none() || tls.cert_chain.is_empty() {
        return Err(FollowerError::Tls("client certificate and key required"));
    }
    let identity = tls.key.map(|k| (tls.cert_chain, k));
    let config =
        crate::jwks::http::tls_client_config(&tls.roots, false, identity, &[b"h2", b"http/1.1"])
            .map_err(FollowerError::Tls)?;
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(Duration::from_secs(15))
        .user_agent(crate::jwks::http::USER_AGENT)
        .build()
        .map_err(|_| FollowerError::Tls("HTTP client build failed"))
}

impl RevocationFollower {
    /// Starts following `{broker}/revocations` with mTLS identity `tls`
    /// (must be called within a Tokio runtime).
    ///
    /// # Errors
    /// [`FollowerError`] for a bad URL or TLS material.
    ///
    /// ```
    /// use tessera::verify::{FollowerTls, RevocationFollower};
    /// let tls = FollowerTls { roots: vec![], cert_chain: vec![], key: None };
    /// assert!(RevocationFollower::start("https://broker", tls).is_err());
    /// ```
    pub fn start(broker: &str, tls: FollowerTls) -> Result<RevocationFollower, FollowerError> {
        Self::start_with_clock(broker, tls, Arc::new(SystemClock))
    }

    /// [`Self::start`] with an injected clock (for expiry).
    ///
    /// # Errors
    /// As [`Self::start`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tessera::clock::ManualClock;
    /// use tessera::verify::{FollowerTls, RevocationFollower};
    /// let tls = FollowerTls { roots: vec![], cert_chain: vec![], key: None };
    /// assert!(RevocationFollower::start_with_clock("https://broker", tls, Arc::new(ManualClock::new(0))).is_err());
    /// ```
    pub fn start_with_clock(
        broker: &str,
        tls: FollowerTls,
        clock: Arc<dyn Clock>,
    ) -> Result<RevocationFollower, FollowerError> {
        let base = Url::parse(broker).map_err(|_| FollowerError::InvalidUrl)?;
        if base.scheme() != "https"
            || base.host().is_none()
            || !base.username().is_empty()
            || base.password().is_some()
            || base.query().is_some()
            || base.fragment().is_some()
        {
            return Err(FollowerError::InvalidUrl);
        }
        let path = format!("{}{FEED_PATH}", base.path().trim_end_matches('/'));
        let mut feed = base;
        feed.set_path(&path);
        let client = mtls_client(tls)?;
        let shared = Arc::new(Shared {
            entries: RwLock::new(HashMap::new()),
            cursor: RwLock::new(None),
            synced: AtomicBool::new(false),
            streaming: AtomicBool::new(false),
            streams_opened: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            max_entries: MAX_LIVE_ENTRIES,
            overflow_until: AtomicU64::new(0),
            last_contact: AtomicU64::new(0),
            disconnect: Notify::new(),
            synced_notify: Notify::new(),
            clock,
        });
        let worker = Worker {
            client,
            feed,
            shared: shared.clone(),
        };
        let task = tokio::spawn(worker.run());
        Ok(RevocationFollower { shared, task })
    }

    /// Whether a live entry covers `token` (same rules as the broker). This
    /// is the raw lookup: it says `false` before the first sync; a server
    /// should call [`Self::check`], which fails closed.
    ///
    /// ```no_run
    /// # async fn f(follower: &tessera::verify::RevocationFollower, token: &tessera::verify::VerifiedToken) {
    /// if follower.is_revoked(token) {
    ///     // answer 401 invalid_token
    /// }
    /// # }
    /// ```
    #[must_use]
    pub fn is_revoked(&self, token: &VerifiedToken) -> bool {
        self.shared.is_revoked(token)
    }

    /// The resource server's revocation decision for `token`, failing
    /// closed: `Err(Revoked)` when a live entry covers it, and
    /// `Err(RevocationStatusUnknown)` (answer 503) before the first
    /// catch-up, after [`MAX_FEED_SILENCE`] without hearing from the
    /// broker, or while an entry the follower had to drop (beyond
    /// [`MAX_LIVE_ENTRIES`]) could still cover a live token.
    ///
    /// # Errors
    /// [`VerifyError::Revoked`] or [`VerifyError::RevocationStatusUnknown`].
    ///
    /// ```no_run
    /// # fn f(follower: &tessera::verify::RevocationFollower, token: &tessera::verify::VerifiedToken) -> Result<(), tessera::verify::VerifyError> {
    /// follower.check(token)?; // 401 when revoked, 503 when unknown
    /// # Ok(())
    /// # }
    /// ```
    pub fn check(&self, token: &VerifiedToken) -> Result<(), VerifyError> {
        self.shared.check(token)
    }

    /// Whether the first catch-up has completed (before it, the follower
    /// knows nothing; a cautious server refuses tokens until then).
    ///
    /// ```no_run
    /// # fn f(follower: &tessera::verify::RevocationFollower) {
    /// let ready = follower.is_synced();
    /// # let _ = ready;
    /// # }
    /// ```
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.shared.synced.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` for the first catch-up; returns
    /// [`Self::is_synced`].
    ///
    /// ```no_run
    /// # async fn f(follower: &tessera::verify::RevocationFollower) {
    /// assert!(follower.wait_synced(std::time::Duration::from_secs(5)).await);
    /// # }
    /// ```
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.synced_notify.notified();
            if self.is_synced() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_synced();
            }
        }
    }

    /// Whether the event stream is currently open.
    ///
    /// ```no_run
    /// # fn f(follower: &tessera::verify::RevocationFollower) {
    /// let live = follower.is_streaming();
    /// # let _ = live;
    /// # }
    /// ```
    #[must_use]
    pub fn is_streaming(&self) -> bool {
        self.shared.streaming.load(Ordering::SeqCst)
    }

    /// How many times the event stream has been opened.
    ///
    /// ```no_run
    /// # fn f(follower: &tessera::verify::RevocationFollower) {
    /// assert!(follower.streams_opened() <= 1);
    /// # }
    /// ```
    #[must_use]
    pub fn streams_opened(&self) -> u64 {
        self.shared.streams_opened.load(Ordering::Relaxed)
    }

    /// The feed cursor the follower resumes from.
    ///
    /// ```no_run
    /// # fn f(follower: &tessera::verify::RevocationFollower) {
    /// println!("{:?}", follower.cursor());
    /// # }
    /// ```
    #[must_use]
    pub fn cursor(&self) -> Option<String> {
        self.shared.cursor()
    }

    /// Number of entries held (including ones expired but not yet purged).
    ///
    /// ```no_run
    /// # fn f(follower: &tessera::verify::RevocationFollower) {
    /// println!("{} revocations held", follower.entry_count());
    /// # }
    /// ```
    #[must_use]
    pub fn entry_count(&self) -> usize {
        self.shared.entries.read().map(|g| g.len()).unwrap_or(0)
    }

    /// Entries not held because [`MAX_LIVE_ENTRIES`] was reached.
    ///
    /// ```no_run
    /// # fn f(follower: &tessera::verify::RevocationFollower) {
    /// assert_eq!(follower.dropped_entries(), 0);
    /// # }
    /// ```
    #[must_use]
    pub fn dropped_entries(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Drops the current stream connection (or the next one, if none is
    /// open); the follower catches up from its cursor and reopens it (for
    /// operations and tests).
    ///
    /// ```no_run
    /// # fn f(follower: &tessera::verify::RevocationFollower) {
    /// follower.reconnect();
    /// # }
    /// ```
    pub fn reconnect(&self) {
        // notify_one stores a permit, so a request made between two reads
        // of the stream is not lost.
        self.shared.disconnect.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn shared(now: u64) -> Shared {
        Shared {
            entries: RwLock::new(HashMap::new()),
            cursor: RwLock::new(None),
            synced: AtomicBool::new(false),
            streaming: AtomicBool::new(false),
            streams_opened: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            max_entries: MAX_LIVE_ENTRIES,
            overflow_until: AtomicU64::new(0),
            last_contact: AtomicU64::new(0),
            disconnect: Notify::new(),
            synced_notify: Notify::new(),
            clock: Arc::new(ManualClock::new(now)),
        }
    }

    #[test]
    fn verify_sse_parser_applies_events_and_cursor_across_chunks() {
        let s = shared(100);
        let mut p = SseParser::default();
        let text = "id: 7\r\nevent: revocation\ndata: {\"kind\":\"task\",\"value\":\"t1\",\"revoked_at\":90,\"expires_at\":200}\n\n: keepalive\n\nid: 8\nevent: other\ndata: {}\n\n";
        for chunk in text.as_bytes().chunks(5) {
            assert!(p.feed(chunk, &s).is_ok());
        }
        assert_eq!(s.cursor().as_deref(), Some("7"));
        assert_eq!(s.entries.read().map(|g| g.len()).unwrap_or(0), 1);
    }

    #[test]
    fn verify_sse_parser_refuses_long_lines() {
        let s = shared(100);
        let mut p = SseParser::default();
        let long = vec![b'a'; MAX_SSE_LINE_BYTES + 1];
        assert!(p.feed(&long, &s).is_err());
    }

    #[test]
    fn verify_apply_skips_expired_unknown_and_merges() {
        let s = shared(100);
        let e = |kind: &str, r: u64, x: u64| WireEntry {
            kind: kind.into(),
            value: "v".into(),
            revoked_at: r,
            expires_at: x,
        };
        s.apply(e("jti", 50, 100)); // expired
        s.apply(e("bogus", 50, 200)); // unknown kind
        assert_eq!(s.entries.read().map(|g| g.len()).unwrap_or(9), 0);
        s.apply(e("subject", 50, 150));
        s.apply(e("subject", 80, 120));
        let g = s.entries.read().unwrap_or_else(|p| p.into_inner());
        let l = g.get(&(Kind::Subject, "v".into())).copied();
        assert_eq!(l.map(|l| (l.revoked_at, l.expires_at)), Some((80, 150)));
    }

    #[test]
    fn verify_follower_check_fails_closed() {
        let clock = Arc::new(ManualClock::new(100));
        let mut s = shared(100);
        s.clock = clock.clone();
        s.max_entries = 2;
        let t = token(95, serde_json::json!({}));
        assert_eq!(
            s.check(&t),
            Err(VerifyError::RevocationStatusUnknown(
                "revocations_not_synced"
            ))
        );
        s.synced.store(true, Ordering::SeqCst);
        s.touch();
        assert_eq!(s.check(&t), Ok(()));
        // Silence beyond the limit: unknown, until the broker is heard again.
        clock.set(100 + MAX_FEED_SILENCE.as_secs() + 1);
        assert_eq!(
            s.check(&t),
            Err(VerifyError::RevocationStatusUnknown("revocations_stale"))
        );
        s.touch();
        assert_eq!(s.check(&t), Ok(()));
        let now = clock.now();
        let e = |v: &str, x: u64| WireEntry {
            kind: "jti".into(),
            value: v.into(),
            revoked_at: now,
            expires_at: x,
        };
        s.apply(e("a", now + 50));
        s.apply(e("b", now + 50));
        s.apply(e("c", now + 90)); // dropped: full
        assert_eq!(s.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(
            s.check(&t),
            Err(VerifyError::RevocationStatusUnknown("revocations_overflow"))
        );
        // Once every dropped entry would have expired, service resumes.
        clock.set(now + 90);
        s.touch();
        assert_eq!(s.check(&t), Ok(()));
        // A revoked token is refused as such.
        s.apply(e(t.jti(), now + 200));
        assert_eq!(s.check(&t), Err(VerifyError::Revoked));
    }

    #[test]
    fn verify_entries_expire_and_purge() {
        let clock = Arc::new(ManualClock::new(100));
        let mut s = shared(100);
        s.clock = clock.clone();
        s.apply(WireEntry {
            kind: "jti".into(),
            value: "j".into(),
            revoked_at: 90,
            expires_at: 150,
        });
        let live = |s: &Shared| s.entries.read().map(|g| g.len()).unwrap_or(9);
        assert_eq!(live(&s), 1);
        clock.set(150);
        s.purge();
        assert_eq!(live(&s), 0, "gone at expires_at");
    }

    fn token(iat: u64, extra: serde_json::Value) -> VerifiedToken {
        let mut c = serde_json::json!({
            "sub": "s", "exp": 1000, "iat": iat, "jti": "j", "txn": "t",
            "act": {"sub": "a1", "act": {"sub": "a0"}},
            "grant": "g", "ancestors": ["p1", "p0"],
        });
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        match c {
            serde_json::Value::Object(m) => VerifiedToken::from_claims(m).unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn verify_is_revoked_matches_the_broker_rules() {
        let cases = [
            ("jti", "j", true),
            ("jti", "p0", true),
            ("jti", "other", false),
            ("subject", "s", true),
            ("subject", "a0", true),
            ("subject", "a1", true),
            ("task", "t", true),
            ("grant", "g", true),
            ("grant", "h", false),
        ];
        for (kind, value, revoked) in cases {
            let s = shared(100);
            s.apply(WireEntry {
                kind: kind.into(),
                value: value.into(),
                revoked_at: 90,
                expires_at: 500,
            });
            assert_eq!(
                s.is_revoked(&token(90, serde_json::json!({}))),
                revoked,
                "{kind}={value}"
            );
            // Issued after revoked_at: only jti entries still apply.
            let later = token(91, serde_json::json!({}));
            assert_eq!(
                s.is_revoked(&later),
                revoked && kind == "jti",
                "{kind}={value} later"
            );
        }
        let s = shared(100);
        assert!(!s.is_revoked(&token(90, serde_json::json!({}))));
    }

    #[test]
    fn verify_follower_rejects_bad_urls_and_tls() {
        let none = || FollowerTls {
            roots: vec![],
            cert_chain: vec![],
            key: None,
        };
        for bad in [
            "http://b",
            "https://u:p@b",
            "https://b/?q=1",
            "https://b/#f",
            "nope",
        ] {
            assert_eq!(
                RevocationFollower::start(bad, none()).err(),
                Some(FollowerError::InvalidUrl),
                "{bad}"
            );
        }
        assert_eq!(
            RevocationFollower::start("https://b", none()).err(),
            Some(FollowerError::Tls("no trust anchors"))
        );
    }
}
