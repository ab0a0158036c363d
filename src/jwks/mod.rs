// One file: about 400 of its lines are unit tests; the cache and its
// single-flight refresh share one lock.
//! JWKS caching with rate-limited, single-flight refresh.
//!
//! [`JwksCache`] keeps the current [`JwkSet`] behind a `std::sync::RwLock`
//! holding an `Arc` snapshot: a hit costs one uncontended read-lock and an
//! `Arc` clone, no async lock. A miss (unknown `kid`) may trigger a refresh,
//! but at most one per cooldown period (counted from the start of the last
//! attempt, successful or not), and concurrent misses share that single
//! fetch (a `tokio::sync::Mutex` serializes refreshers; waiters re-check the
//! new snapshot instead of fetching again). A failed or empty refresh never
//! replaces the keys already held.
//!
//! Expiry is stale-while-revalidate: lookups never wait for a scheduled
//! refresh; [`JwksCache::spawn_refresh_task`] refetches in the background.
//! Only a miss (unknown `kid`) or an empty cache waits, for one fetch at
//! most (bounded by the fetcher's timeout) and at most once per cooldown.
//! Keys held keep working while the upstream is down, for at most
//! `max_stale` (see [`DEFAULT_MAX_STALE`]) after the last successful fetch,
//! measured on the monotonic face of the injected [`Clock`]; after that
//! every lookup fails with [`KeyLookupError::Stale`] (fail closed) until a
//! fetch succeeds again.
//!
//! The HTTPS fetcher, OIDC discovery and TLS client construction live in
//! [`http`] (behind the `verifier-http` feature, which brings in reqwest;
//! `server` enables it).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::{Clock, SystemClock};
use crate::jose::jwk::{parse_jwk_set, JwkError, JwkSet, KeyMatchError, VerifyingKey};

#[cfg(feature = "verifier-http")]
pub mod http;
#[cfg(feature = "verifier-http")]
pub use http::{
    discover_jwks_uri, https_client, HttpJwksFetcher, OidcIssuerKeys, CONNECT_TIMEOUT,
    FETCH_TIMEOUT, MAX_DISCOVERY_BYTES,
};

/// Maximum size of a fetched JWK Set document; enforced while streaming.
///
/// ```
/// assert!(tessera::jwks::MAX_JWKS_BYTES >= 16 * 1024);
/// ```
pub const MAX_JWKS_BYTES: usize = crate::jose::jwk::MAX_JWK_SET_BYTES;
/// Default minimum time between two refresh attempts triggered by misses.
///
/// ```
/// assert_eq!(tessera::jwks::DEFAULT_REFRESH_COOLDOWN.as_secs(), 30);
/// ```
pub const DEFAULT_REFRESH_COOLDOWN: Duration = Duration::from_secs(30);
/// Bounds of a configured refresh cooldown.
///
/// ```
/// use tessera::jwks::{DEFAULT_REFRESH_COOLDOWN, REFRESH_COOLDOWN_BOUNDS};
/// assert!(REFRESH_COOLDOWN_BOUNDS.contains(&DEFAULT_REFRESH_COOLDOWN));
/// ```
pub const REFRESH_COOLDOWN_BOUNDS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);
/// Default max-stale window: how long keys stay usable after the last
/// successful fetch while the upstream cannot be reached.
///
/// ```
/// assert_eq!(tessera::jwks::DEFAULT_MAX_STALE.as_secs(), 24 * 3600);
/// ```
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(24 * 60 * 60);
/// Bounds of a configured max-stale window.
///
/// ```
/// use tessera::jwks::{DEFAULT_MAX_STALE, MAX_STALE_BOUNDS};
/// assert!(MAX_STALE_BOUNDS.contains(&DEFAULT_MAX_STALE));
/// ```
pub const MAX_STALE_BOUNDS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(7 * 24 * 3600);
/// Background refresh interval when the server sends no `max-age`.
///
/// ```
/// assert_eq!(tessera::jwks::DEFAULT_REFRESH_INTERVAL.as_secs(), 900);
/// ```
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Lower clamp for a server-provided `max-age`.
///
/// ```
/// assert!(tessera::jwks::MIN_REFRESH_INTERVAL < tessera::jwks::DEFAULT_REFRESH_INTERVAL);
/// ```
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// Upper clamp for a server-provided `max-age`.
///
/// ```
/// assert!(tessera::jwks::MAX_REFRESH_INTERVAL > tessera::jwks::DEFAULT_REFRESH_INTERVAL);
/// ```
pub const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// A boxed, `Send` future (object-safe async without extra crates).
///
/// ```
/// let f: tessera::jwks::BoxFuture<'_, u8> = Box::pin(async { 7 });
/// # let _ = f;
/// ```
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A raw JWK Set document as fetched.
///
/// ```
/// let doc = tessera::jwks::FetchedJwks { body: br#"{"keys":[]}"#.to_vec(), max_age: None };
/// assert!(doc.max_age.is_none());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedJwks {
    /// The response body (at most [`MAX_JWKS_BYTES`]).
    pub body: Vec<u8>,
    /// `Cache-Control: max-age`, if the server sent one.
    pub max_age: Option<Duration>,
}

/// Why fetching a document failed. Carries no response body.
///
/// ```
/// use tessera::jwks::FetchError;
/// assert_eq!(FetchError::Timeout.reason(), "fetch_timeout");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL is unparsable, not `https`, or carries credentials.
    #[error("invalid or non-https URL")]
    InvalidUrl,
    /// The server answered with a redirect; redirects are never followed.
    #[error("redirect refused (HTTP {0})")]
    Redirect(u16),
    /// The server answered with a non-2xx status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The body exceeded the size cap.
    #[error("response body too large")]
    TooLarge,
    /// The request did not complete within its timeout.
    #[error("request timed out")]
    Timeout,
    /// TLS failed (e.g. untrusted certificate).
    #[error("TLS error: {0}")]
    Tls(String),
    /// Any other transport failure.
    #[error("transport error: {0}")]
    Transport(String),
    /// The TLS client could not be built.
    #[error("client configuration error: {0}")]
    Config(&'static str),
    /// The discovery document is malformed or lacks an https `jwks_uri`.
    #[error("invalid discovery document: {0}")]
    InvalidDiscovery(&'static str),
    /// The discovery document's `issuer` differs from the configured issuer.
    #[error("discovery issuer mismatch")]
    IssuerMismatch,
    /// The issuer's `bearer_token_file` cannot be read (or is empty or too
    /// large); the message names the file, never its content.
    #[error("bearer token: {0}")]
    Credential(String),
}

impl FetchError {
    /// A short stable code for audit logs and metrics.
    ///
    /// ```
    /// assert_eq!(tessera::jwks::FetchError::TooLarge.reason(), "fetch_too_large");
    /// ```
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::InvalidUrl => "fetch_invalid_url",
            FetchError::Redirect(_) => "fetch_redirect",
            FetchError::Status(_) => "fetch_status",
            FetchError::TooLarge => "fetch_too_large",
            FetchError::Timeout => "fetch_timeout",
            FetchError::Tls(_) => "fetch_tls",
            FetchError::Transport(_) => "fetch_transport",
            FetchError::Config(_) => "fetch_config",
            FetchError::InvalidDiscovery(_) => "discovery_invalid",
            FetchError::IssuerMismatch => "discovery_issuer_mismatch",
            FetchError::Credential(_) => "fetch_credential",
        }
    }
}

/// Source of JWK Set documents.
///
/// ```
/// use std::sync::Arc;
/// use tessera::jwks::{BoxFuture, FetchError, FetchedJwks, JwksCache, JwksFetcher, DEFAULT_REFRESH_COOLDOWN};
///
/// /// A fetcher serving a fixed document (an issuer would serve it over HTTPS).
/// struct Fixed(&'static [u8]);
/// impl JwksFetcher for Fixed {
///     fn fetch(&self) -> BoxFuture<'_, Result<FetchedJwks, FetchError>> {
///         let body = self.0.to_vec();
///         Box::pin(async move { Ok(FetchedJwks { body, max_age: None }) })
///     }
/// }
/// const JWKS: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
/// let cache = JwksCache::new(Arc::new(Fixed(JWKS)), DEFAULT_REFRESH_COOLDOWN);
/// # let _ = cache;
/// ```
pub trait JwksFetcher: Send + Sync {
    /// Fetches the current JWK Set document.
    fn fetch(&self) -> BoxFuture<'_, Result<FetchedJwks, FetchError>>;
}

/// Why a refresh did not install a new key set.
///
/// ```
/// use tessera::jwks::RefreshError;
/// assert_eq!(RefreshError::NoUsableKeys.reason(), "jwks_no_usable_keys");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// Fetching failed.
    #[error("JWKS fetch failed: {0}")]
    Fetch(FetchError),
    /// The document is not a valid JWK Set.
    #[error("JWKS parse failed: {0}")]
    Parse(JwkError),
    /// The document has no usable key; the previous keys are kept.
    #[error("JWKS has no usable keys")]
    NoUsableKeys,
}

impl RefreshError {
    /// A short stable code for audit logs and metrics.
    ///
    /// ```
    /// assert_eq!(tessera::jwks::RefreshError::NoUsableKeys.reason(), "jwks_no_usable_keys");
    /// ```
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            RefreshError::Fetch(e) => e.reason(),
            RefreshError::Parse(e) => e.reason(),
            RefreshError::NoUsableKeys => "jwks_no_usable_keys",
        }
    }
}

/// Why [`JwksCache::key`] found no key.
///
/// ```
/// use tessera::jwks::KeyLookupError;
/// assert_eq!(KeyLookupError::Unavailable.reason(), "jwks_unavailable");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyLookupError {
    /// Keys are loaded but none has this `kid` (or, for a token without
    /// `kid`, the set is empty).
    #[error("unknown kid")]
    UnknownKid,
    /// Several keys share this `kid` (or, for a token without `kid`, the
    /// set has more than one key).
    #[error("ambiguous kid")]
    AmbiguousKid,
    /// No key set has ever been loaded and fetching failed (map to 503).
    #[error("signing keys unavailable")]
    Unavailable,
    /// Keys are held, but the last successful fetch is older than the
    /// max-stale window and the upstream still cannot be reached (map to
    /// 503).
    #[error("signing keys stale: no successful fetch within the max-stale window")]
    Stale,
}

impl KeyLookupError {
    /// A short stable code for audit logs and metrics.
    ///
    /// ```
    /// assert_eq!(tessera::jwks::KeyLookupError::UnknownKid.reason(), "unknown_kid");
    /// ```
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self {
            KeyLookupError::UnknownKid => "unknown_kid",
            KeyLookupError::AmbiguousKid => "ambiguous_kid",
            KeyLookupError::Unavailable => "jwks_unavailable",
            KeyLookupError::Stale => "issuer_keys_stale",
        }
    }
}

impl From<KeyMatchError> for KeyLookupError {
    fn from(e: KeyMatchError) -> Self {
        match e {
            KeyMatchError::UnknownKid => KeyLookupError::UnknownKid,
            KeyMatchError::AmbiguousKid => KeyLookupError::AmbiguousKid,
        }
    }
}

/// Resets a flag when dropped.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// State owned by whoever holds the refresh lock.
struct RefreshState {
    last_attempt: Option<Instant>,
    last_result: Result<(), RefreshError>,
    /// `max-age` of the last successfully installed document.
    max_age: Option<Duration>,
}

/// A JWK Set cache in front of a [`JwksFetcher`].
///
/// ```
/// use std::sync::Arc;
/// use tessera::jwks::{BoxFuture, FetchError, FetchedJwks, JwksCache, JwksFetcher, DEFAULT_REFRESH_COOLDOWN};
///
/// /// A fetcher serving a fixed document (an issuer would serve it over HTTPS).
/// struct Fixed(&'static [u8]);
/// impl JwksFetcher for Fixed {
///     fn fetch(&self) -> BoxFuture<'_, Result<FetchedJwks, FetchError>> {
///         let body = self.0.to_vec();
///         Box::pin(async move { Ok(FetchedJwks { body, max_age: None }) })
///     }
/// }
/// const JWKS: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
/// let cache = JwksCache::new(Arc::new(Fixed(JWKS)), DEFAULT_REFRESH_COOLDOWN);
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// assert!(rt.block_on(cache.key(Some("k1"))).is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct JwksCache {
    fetcher: Arc<dyn JwksFetcher>,
    cooldown: Duration,
    current: RwLock<Option<Arc<JwkSet>>>,
    refresh: tokio::sync::Mutex<RefreshState>,
    /// Incremented after every completed refresh attempt.
    generation: AtomicU64,
    fetches: AtomicU64,
    /// Reference point for `last_attempt_ms`.
    created: Instant,
    /// Milliseconds after `created` at which the last attempt started, plus
    /// one (0 = never). Lets misses during the cooldown skip the async lock.
    last_attempt_ms: AtomicU64,
    /// True while a fetch is running (misses then wait for its result).
    in_flight: AtomicBool,
    /// Wall and monotonic time (the monotonic face measures staleness).
    clock: Arc<dyn Clock>,
    /// How long keys stay usable after the last successful fetch.
    max_stale: Duration,
    /// `clock.monotonic()` in milliseconds at the last successful fetch,
    /// plus one (0 = never).
    last_success_ms: AtomicU64,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("cooldown", &self.cooldown)
            .field("max_stale", &self.max_stale)
            .field("keys", &self.snapshot().map(|s| s.len()))
            .field("fetches", &self.fetch_count())
            .finish_non_exhaustive()
    }
}

impl JwksCache {
    /// A cache with no keys yet; the first lookup (or [`Self::refresh`])
    /// fetches. `cooldown` is the minimum time between miss-triggered
    /// refresh attempts (see [`DEFAULT_REFRESH_COOLDOWN`]).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tessera::jwks::{BoxFuture, FetchError, FetchedJwks, JwksCache, JwksFetcher, DEFAULT_REFRESH_COOLDOWN};
    ///
    /// /// A fetcher serving a fixed document (an issuer would serve it over HTTPS).
    /// struct Fixed(&'static [u8]);
    /// impl JwksFetcher for Fixed {
    ///     fn fetch(&self) -> BoxFuture<'_, Result<FetchedJwks, FetchError>> {
    ///         let body = self.0.to_vec();
    ///         Box::pin(async move { Ok(FetchedJwks { body, max_age: None }) })
    ///     }
    /// }
    /// const JWKS: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    /// let cache = JwksCache::new(Arc::new(Fixed(JWKS)), DEFAULT_REFRESH_COOLDOWN);
    /// assert!(cache.snapshot().is_none()); // nothing fetched yet
    /// ```
    #[must_use]
    pub fn new(fetcher: Arc<dyn JwksFetcher>, cooldown: Duration) -> JwksCache {
        JwksCache {
            fetcher,
            cooldown,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(RefreshState {
                last_attempt: None,
                last_result: Ok(()),
                max_age: None,
            }),
            generation: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            created: Instant::now(),
            last_attempt_ms: AtomicU64::new(0),
            in_flight: AtomicBool::new(false),
            clock: Arc::new(SystemClock),
            max_stale: DEFAULT_MAX_STALE,
            last_success_ms: AtomicU64::new(0),
        }
    }

    /// Sets the max-stale window (default [`DEFAULT_MAX_STALE`]).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tessera::jwks::{BoxFuture, FetchError, FetchedJwks, JwksCache, JwksFetcher, DEFAULT_REFRESH_COOLDOWN};
    /// struct Down;
    /// impl JwksFetcher for Down {
    ///     fn fetch(&self) -> BoxFuture<'_, Result<FetchedJwks, FetchError>> {
    ///         Box::pin(async { Err(FetchError::Status(503)) })
    ///     }
    /// }
    /// let cache = JwksCache::new(Arc::new(Down), DEFAULT_REFRESH_COOLDOWN)
    ///     .with_max_stale(Duration::from_secs(3600));
    /// assert_eq!(cache.max_stale(), Duration::from_secs(3600));
    /// ```
    #[must_use]
    pub fn with_max_stale(mut self, max_stale: Duration) -> JwksCache {
        self.max_stale = max_stale;
        self
    }

    /// Sets the clock whose monotonic face measures staleness (default
    /// [`SystemClock`]).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> JwksCache {
        self.clock = clock;
        self
    }

    /// The max-stale window.
    #[must_use]
    pub fn max_stale(&self) -> Duration {
        self.max_stale
    }

    /// Time since the last successful fetch (`None` before the first).
    #[must_use]
    pub fn age(&self) -> Option<Duration> {
        let stamp = self.last_success_ms.load(Ordering::Acquire);
        if stamp == 0 {
            return None;
        }
        let at = Duration::from_millis(stamp.saturating_sub(1));
        Some(self.clock.monotonic().saturating_sub(at))
    }

    /// True when keys are held but older than the max-stale window.
    fn is_stale(&self) -> bool {
        self.age().is_some_and(|a| a > self.max_stale)
    }

    fn millis_since_created(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.created).as_millis()).unwrap_or(u64::MAX)
    }

    /// Lock-free check: an attempt started less than `cooldown` ago and no
    /// fetch is running, so a miss cannot trigger or await anything.
    fn cooling_down_idle(&self) -> bool {
        if self.in_flight.load(Ordering::Acquire) {
            return false;
        }
        let stamp = self.last_attempt_ms.load(Ordering::Acquire);
        if stamp == 0 {
            return false;
        }
        let last = stamp.saturating_sub(1);
        let now = self.millis_since_created(Instant::now());
        let cooldown = u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(last) < cooldown
    }

    /// The current key set, if one was ever loaded.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tessera::jwks::{BoxFuture, FetchError, FetchedJwks, JwksCache, JwksFetcher, DEFAULT_REFRESH_COOLDOWN};
    ///
    /// /// A fetcher serving a fixed document (an issuer would serve it over HTTPS).
    /// struct Fixed(&'static [u8]);
    /// impl JwksFetcher for Fixed {
    ///     fn fetch(&self) -> BoxFuture<'_, Result<FetchedJwks, FetchError>> {
    ///         let body = self.0.to_vec();
    ///         Box::pin(async move { Ok(FetchedJwks { body, max_age: None }) })
    ///     }
    /// }
    /// const JWKS: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    /// let cache = JwksCache::new(Arc::new(Fixed(JWKS)), DEFAULT_REFRESH_COOLDOWN);
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// rt.block_on(cache.refresh());
    /// assert_eq!(cache.snapshot().map(|s| s.len()), Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn snapshot(&self) -> Option<Arc<JwkSet>> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            // Writers only swap an Arc, so a poisoned lock still holds a
            // consistent value.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn install(&self, set: JwkSet) {
        let set = Some(Arc::new(set));
        match self.current.write() {
            Ok(mut guard) => *guard = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    /// Number of fetches started so far (for tests and metrics).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tessera::jwks::{BoxFuture, FetchError, FetchedJwks, JwksCache, JwksFetcher, DEFAULT_REFRESH_COOLDOWN};
    ///
    /// /// A fetcher serving a fixed document (an issuer would serve it over HTTPS).
    /// struct Fixed(&'static [u8]);
    /// impl JwksFetcher for Fixed {
    ///     fn fetch(&self) -> BoxFuture<'_, Result<FetchedJwks, FetchError>> {
    ///         let body = self.0.to_vec();
    ///         Box::pin(async move { Ok(FetchedJwks { body, max_age: None }) })
    ///     }
    /// }
    /// const JWKS: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    /// let cache = JwksCache::new(Arc::new(Fixed(JWKS)), DEFAULT_REFRESH_COOLDOWN);
    /// assert_eq!(cache.fetch_count(), 0);
    /// ```
    #[must_use]
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Finds the verifying key for a token's `kid`. A miss triggers at most
    /// one refresh per cooldown, shared by all concurrent callers; then the
    /// lookup is retried once. With `kid == None` the set must hold exactly
    /// one key.
    ///
    /// # Errors
    /// [`KeyLookupError::UnknownKid`], [`KeyLookupError::AmbiguousKid`], or
    /// [`KeyLookupError::Unavailable`] when no key set was ever loaded,
    /// [`KeyLookupError::Stale`] when the keys are older than the
    /// max-stale window (a stale cache does not fetch on the request path;
    /// the background task keeps retrying).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tessera::jwks::{BoxFuture, FetchError, FetchedJwks, JwksCache, JwksFetcher, DEFAULT_REFRESH_COOLDOWN};
    ///
    /// /// A fetcher serving a fixed document (an issuer would serve it over HTTPS).
    /// struct Fixed(&'static [u8]);
    /// impl JwksFetcher for Fixed {
    ///     fn fetch(&self) -> BoxFuture<'_, Result<FetchedJwks, FetchError>> {
    ///         let body = self.0.to_vec();
    ///         Box::pin(async move { Ok(FetchedJwks { body, max_age: None }) })
    ///     }
    /// }
    /// const JWKS: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    /// use tessera::jwks::KeyLookupError;
    /// let cache = JwksCache::new(Arc::new(Fixed(JWKS)), DEFAULT_REFRESH_COOLDOWN);
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// assert!(rt.block_on(cache.key(Some("k1"))).is_ok());
    /// // Unknown kids within the cooldown of the last fetch do not refetch:
    /// // a burst of random kids costs the issuer nothing.
    /// assert_eq!(rt.block_on(cache.key(Some("k9"))).err(), Some(KeyLookupError::UnknownKid));
    /// assert_eq!(rt.block_on(cache.key(Some("k8"))).err(), Some(KeyLookupError::UnknownKid));
    /// assert_eq!(cache.fetch_count(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn key(&self, kid: Option<&str>) -> Result<Arc<VerifyingKey>, KeyLookupError> {
        // Read the generation before the snapshot: if a refresh lands in
        // between, we notice and do not refresh again.
        let seen = self.generation.load(Ordering::Acquire);
        if let Some(set) = self.snapshot() {
            if self.is_stale() {
                return Err(KeyLookupError::Stale);
            }
            if let Ok(key) = set.find(kid) {
                return Ok(key);
            }
        }
        self.refresh_after_miss(seen).await;
        match self.snapshot() {
            None => Err(KeyLookupError::Unavailable),
            Some(_) if self.is_stale() => Err(KeyLookupError::Stale),
            Some(set) => set.find(kid).map_err(KeyLookupError::from),
        }
    }

    async fn refresh_after_miss(&self, seen: u64) {
        if self.cooling_down_idle() {
            return;
        }
        let mut state = self.refresh.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            // Another caller refreshed while we waited: just re-check.
            return;
        }
        if let Some(last) = state.last_attempt {
            if Instant::now().saturating_duration_since(last) < self.cooldown {
                return;
            }
        }
        // Failures are logged and recorded inside; the caller re-checks.
        let _ = self.refresh_locked(&mut state).await;
    }

    /// Starts one refresh in the background, unless one is running or the
    /// cooldown since the last attempt has not elapsed; returns at once.
    /// Callers that got [`KeyLookupError::Stale`] use it so that the cache
    /// recovers as soon as the upstream does, without any request waiting
    /// on the upstream. Must be called inside a Tokio runtime.
    pub fn kick_refresh(self: &Arc<Self>) {
        if self.in_flight.load(Ordering::Acquire) || self.cooling_down_idle() {
            return;
        }
        let seen = self.generation.load(Ordering::Acquire);
        let me = Arc::clone(self);
        tokio::spawn(async move { me.refresh_after_miss(seen).await });
    }

    /// Fetches and installs the key set now, ignoring the cooldown (for
    /// start-up and the background task). Failures are logged; the current
    /// keys are kept.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tessera::jwks::{BoxFuture, FetchError, FetchedJwks, JwksCache, JwksFetcher, DEFAULT_REFRESH_COOLDOWN};
    ///
    /// /// A fetcher serving a fixed document (an issuer would serve it over HTTPS).
    /// struct Fixed(&'static [u8]);
    /// impl JwksFetcher for Fixed {
    ///     fn fetch(&self) -> BoxFuture<'_, Result<FetchedJwks, FetchError>> {
    ///         let body = self.0.to_vec();
    ///         Box::pin(async move { Ok(FetchedJwks { body, max_age: None }) })
    ///     }
    /// }
    /// const JWKS: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    /// let cache = JwksCache::new(Arc::new(Fixed(JWKS)), DEFAULT_REFRESH_COOLDOWN);
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// rt.block_on(cache.refresh());
    /// assert_eq!(cache.fetch_count(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn refresh(&self) {
        // The outcome is already logged by `try_refresh`.
        let _ = self.try_refresh().await;
    }

    /// Like [`Self::refresh`] but reports the outcome. If another refresh
    /// completes while this call waits for the lock, its outcome is
    /// returned instead of fetching again.
    ///
    /// # Errors
    /// The [`RefreshError`] of the attempt; the current keys are kept.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tessera::jwks::{BoxFuture, FetchError, FetchedJwks, JwksCache, JwksFetcher, DEFAULT_REFRESH_COOLDOWN};
    ///
    /// /// A fetcher serving a fixed document (an issuer would serve it over HTTPS).
    /// struct Fixed(&'static [u8]);
    /// impl JwksFetcher for Fixed {
    ///     fn fetch(&self) -> BoxFuture<'_, Result<FetchedJwks, FetchError>> {
    ///         let body = self.0.to_vec();
    ///         Box::pin(async move { Ok(FetchedJwks { body, max_age: None }) })
    ///     }
    /// }
    /// const JWKS: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    /// let cache = JwksCache::new(Arc::new(Fixed(JWKS)), DEFAULT_REFRESH_COOLDOWN);
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// assert!(rt.block_on(cache.try_refresh()).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn try_refresh(&self) -> Result<(), RefreshError> {
        let seen = self.generation.load(Ordering::Acquire);
        let mut state = self.refresh.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return state.last_result.clone();
        }
        self.refresh_locked(&mut state).await
    }

    async fn refresh_locked(&self, state: &mut RefreshState) -> Result<(), RefreshError> {
        let started = Instant::now();
        state.last_attempt = Some(started);
        self.in_flight.store(true, Ordering::Release);
        // Cleared on every exit, including cancellation of this future.
        let _in_flight = ClearOnDrop(&self.in_flight);
        self.last_attempt_ms.store(
            self.millis_since_created(started).saturating_add(1),
            Ordering::Release,
        );
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = match self.fetcher.fetch().await {
            Err(e) => Err(RefreshError::Fetch(e)),
            Ok(doc) => match parse_jwk_set(&doc.body) {
                Err(e) => Err(RefreshError::Parse(e)),
                Ok(set) if set.is_empty() => Err(RefreshError::NoUsableKeys),
                Ok(set) => {
                    tracing::info!(keys = set.len(), "installed JWKS");
                    self.install(set);
                    self.last_success_ms.store(
                        u64::try_from(self.clock.monotonic().as_millis())
                            .unwrap_or(u64::MAX)
                            .saturating_add(1),
                        Ordering::Release,
                    );
                    state.max_age = doc.max_age;
                    Ok(())
                }
            },
        };
        if let Err(e) = &result {
            tracing::warn!(reason = e.reason(), error = %e, "JWKS refresh failed; keeping current keys");
        }
        #[cfg(feature = "server")]
        crate::telemetry::metrics()
            .jwks_refreshes
            .with_label_values(&[match &result {
                Ok(()) => "ok",
                Err(e) => e.reason(),
            }])
            .inc();
        state.last_result = result.clone();
        self.generation.fetch_add(1, Ordering::Release);
        result
    }

    /// How long the background task should wait before its next refresh:
    /// the last `max-age` clamped to
    /// [`MIN_REFRESH_INTERVAL`]..=[`MAX_REFRESH_INTERVAL`] (default
    /// [`DEFAULT_REFRESH_INTERVAL`]) after a success, the cooldown after a
    /// failure. Never more than half the max-stale window, so keys are
    /// renewed before they go stale.
    async fn next_refresh_delay(&self) -> Duration {
        let state = self.refresh.lock().await;
        if state.last_result.is_err() {
            return self.cooldown.max(Duration::from_secs(1));
        }
        state
            .max_age
            .unwrap_or(DEFAULT_REFRESH_INTERVAL)
            .clamp(MIN_REFRESH_INTERVAL, MAX_REFRESH_INTERVAL)
            .min(self.max_stale / 2)
            .max(Duration::from_secs(1))
    }

    /// Spawns a task that refreshes immediately (unless keys are already
    /// loaded) and then periodically (after
    /// the last `max-age` clamped to [`MIN_REFRESH_INTERVAL`]..=
    /// [`MAX_REFRESH_INTERVAL`], default [`DEFAULT_REFRESH_INTERVAL`]; after
    /// a failure, after the cooldown), so keys removed by the issuer
    /// stop being trusted. The task holds only a weak reference and ends
    /// when the cache is dropped. Must be called inside a Tokio runtime.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tessera::jwks::{BoxFuture, FetchError, FetchedJwks, JwksCache, JwksFetcher, DEFAULT_REFRESH_COOLDOWN};
    ///
    /// /// A fetcher serving a fixed document (an issuer would serve it over HTTPS).
    /// struct Fixed(&'static [u8]);
    /// impl JwksFetcher for Fixed {
    ///     fn fetch(&self) -> BoxFuture<'_, Result<FetchedJwks, FetchError>> {
    ///         let body = self.0.to_vec();
    ///         Box::pin(async move { Ok(FetchedJwks { body, max_age: None }) })
    ///     }
    /// }
    /// const JWKS: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    /// let cache = Arc::new(JwksCache::new(Arc::new(Fixed(JWKS)), DEFAULT_REFRESH_COOLDOWN));
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// rt.block_on(async {
    ///     let task = cache.spawn_refresh_task();
    ///     while cache.snapshot().is_none() {
    ///         tokio::task::yield_now().await;
    ///     }
    ///     task.abort();
    /// });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn_refresh_task(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(cache) = weak.upgrade() else { break };
                // With keys already loaded, wait a full interval first.
                if cache.snapshot().is_none() {
                    cache.refresh().await;
                }
                let delay = cache.next_refresh_delay().await;
                drop(cache);
                tokio::time::sleep(delay).await;
                let Some(cache) = weak.upgrade() else { break };
                cache.refresh().await;
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::jose::alg::Algorithm;
    use crate::jose::testutil::TestKey;
    use serde_json::{json, Value};
    use std::sync::Mutex;

    /// A fetcher that serves whatever `doc` currently holds, or fails when
    /// it holds `None`, after a simulated network delay.
    struct ScriptedFetcher {
        doc: Mutex<Option<Vec<u8>>>,
        max_age: Option<Duration>,
        delay: Duration,
    }

    impl ScriptedFetcher {
        fn new(doc: Option<Value>) -> Arc<Self> {
            Arc::new(ScriptedFetcher {
                doc: Mutex::new(doc.map(|d| d.to_string().into_bytes())),
                max_age: None,
                delay: Duration::from_millis(100),
            })
        }
        fn set(&self, doc: Option<Value>) {
            *self.doc.lock().unwrap() = doc.map(|d| d.to_string().into_bytes());
        }
        fn set_raw(&self, doc: &[u8]) {
            *self.doc.lock().unwrap() = Some(doc.to_vec());
        }
    }

    impl JwksFetcher for ScriptedFetcher {
        fn fetch(&self) -> BoxFuture<'_, Result<FetchedJwks, FetchError>> {
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                match self.doc.lock().unwrap().clone() {
                    Some(body) => Ok(FetchedJwks {
                        body,
                        max_age: self.max_age,
                    }),
                    None => Err(FetchError::Status(500)),
                }
            })
        }
    }

    fn set_of(keys: &[(&TestKey, Option<&str>)]) -> Value {
        let keys: Vec<Value> = keys
            .iter()
            .map(|(k, kid)| Value::Object(k.jwk(None, *kid)))
            .collect();
        json!({ "keys": keys })
    }

    fn cache(f: &Arc<ScriptedFetcher>) -> Arc<JwksCache> {
        let fetcher: Arc<dyn JwksFetcher> = f.clone();
        Arc::new(JwksCache::new(fetcher, DEFAULT_REFRESH_COOLDOWN))
    }

    #[tokio::test(start_paused = true)]
    async fn hit_after_initial_load() {
        let a = TestKey::es256();
        let f = ScriptedFetcher::new(Some(set_of(&[(&a, Some("a"))])));
        let c = cache(&f);
        let k = c.key(Some("a")).await.unwrap();
        assert_eq!(k.algorithm(), Algorithm::ES256);
        assert_eq!(c.fetch_count(), 1);
        for _ in 0..100 {
            assert!(c.key(Some("a")).await.is_ok());
        }
        assert_eq!(c.fetch_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn burst_of_unknown_kids_causes_one_fetch_then_one_more_after_cooldown() {
        let a = TestKey::es256();
        let f = ScriptedFetcher::new(Some(set_of(&[(&a, Some("a"))])));
        let c = cache(&f);
        c.refresh().await;
        assert_eq!(c.fetch_count(), 1);
        // Cooldown from the initial load elapses.
        tokio::time::advance(DEFAULT_REFRESH_COOLDOWN).await;

        let mut tasks = Vec::new();
        for i in 0..1000u32 {
            let c = Arc::clone(&c);
            tasks.push(tokio::spawn(async move {
                let kid = format!("unknown-{i}-{}", i.wrapping_mul(2_654_435_761));
                c.key(Some(&kid)).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap_err(), KeyLookupError::UnknownKid);
        }
        assert_eq!(c.fetch_count(), 2);
        // Still within the cooldown: no new fetch.
        assert_eq!(
            c.key(Some("nope")).await.unwrap_err(),
            KeyLookupError::UnknownKid
        );
        assert_eq!(c.fetch_count(), 2);
        // The known key stays a hit throughout.
        assert!(c.key(Some("a")).await.is_ok());

        tokio::time::advance(DEFAULT_REFRESH_COOLDOWN + Duration::from_secs(1)).await;
        assert_eq!(
            c.key(Some("nope")).await.unwrap_err(),
            KeyLookupError::UnknownKid
        );
        assert_eq!(c.fetch_count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn misses_wait_for_an_in_flight_fetch_that_brings_the_kid() {
        let a = TestKey::es256();
        let b = TestKey::es256();
        let f = ScriptedFetcher::new(Some(set_of(&[(&a, Some("a"))])));
        let c = cache(&f);
        c.refresh().await;
        tokio::time::advance(DEFAULT_REFRESH_COOLDOWN).await;
        // Rotation: the new kid appears; many requests carry it at once.
        f.set(Some(set_of(&[(&a, Some("a")), (&b, Some("b"))])));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let c = Arc::clone(&c);
            tasks.push(tokio::spawn(async move { c.key(Some("b")).await }));
        }
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(c.fetch_count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_refresh_does_not_wedge_the_cache() {
        let a = TestKey::es256();
        let f = ScriptedFetcher::new(Some(set_of(&[(&a, Some("a"))])));
        let c = cache(&f);
        // Cancel the first lookup while its fetch is in flight.
        let r = tokio::time::timeout(Duration::from_millis(10), c.key(Some("a"))).await;
        assert!(r.is_err());
        assert_eq!(c.fetch_count(), 1);
        assert!(!c.in_flight.load(Ordering::Acquire));
        // Within the cooldown nothing is fetched; afterwards it recovers.
        assert_eq!(
            c.key(Some("a")).await.unwrap_err(),
            KeyLookupError::Unavailable
        );
        tokio::time::advance(DEFAULT_REFRESH_COOLDOWN).await;
        assert!(c.key(Some("a")).await.is_ok());
        assert_eq!(c.fetch_count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn cold_burst_causes_one_fetch() {
        let a = TestKey::es256();
        let f = ScriptedFetcher::new(Some(set_of(&[(&a, Some("a"))])));
        let c = cache(&f);
        let mut tasks = Vec::new();
        for i in 0..1000u32 {
            let c = Arc::clone(&c);
            tasks.push(tokio::spawn(async move {
                let kid = if i % 2 == 0 {
                    "a".to_string()
                } else {
                    format!("x{i}")
                };
                (i, c.key(Some(&kid)).await)
            }));
        }
        for t in tasks {
            let (i, r) = t.await.unwrap();
            if i % 2 == 0 {
                assert!(r.is_ok());
            } else {
                assert_eq!(r.unwrap_err(), KeyLookupError::UnknownKid);
            }
        }
        assert_eq!(c.fetch_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn new_kid_is_picked_up_after_rotation() {
        let a = TestKey::es256();
        let b = TestKey::ed25519();
        let f = ScriptedFetcher::new(Some(set_of(&[(&a, Some("a"))])));
        let c = cache(&f);
        assert!(c.key(Some("a")).await.is_ok());
        f.set(Some(set_of(&[(&a, Some("a")), (&b, Some("b"))])));
        // Within cooldown the new kid is not fetched yet.
        assert_eq!(
            c.key(Some("b")).await.unwrap_err(),
            KeyLookupError::UnknownKid
        );
        tokio::time::advance(DEFAULT_REFRESH_COOLDOWN).await;
        assert_eq!(
            c.key(Some("b")).await.unwrap().algorithm(),
            Algorithm::EdDSA
        );
        assert_eq!(c.fetch_count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_refresh_keeps_good_keys() {
        let a = TestKey::es256();
        let f = ScriptedFetcher::new(Some(set_of(&[(&a, Some("a"))])));
        let c = cache(&f);
        c.refresh().await;
        for bad in [
            None,
            Some(json!({"keys": []})),
            Some(json!({"keys": [{"kty":"oct","k":"AAAA","kid":"a"}]})),
            Some(json!({"nokeys": true})),
        ] {
            let expect_err = bad.clone();
            f.set(bad);
            let r = c.try_refresh().await.unwrap_err();
            match expect_err {
                None => assert_eq!(r, RefreshError::Fetch(FetchError::Status(500))),
                Some(v) if v.get("keys").is_some() => assert_eq!(r, RefreshError::NoUsableKeys),
                Some(_) => assert_eq!(
                    r,
                    RefreshError::Parse(crate::jose::jwk::JwkError::MissingMember("keys"))
                ),
            }
            assert!(c.key(Some("a")).await.is_ok());
        }
        f.set_raw(br#"{"keys":[],"keys":[]}"#);
        assert_eq!(
            c.try_refresh().await.unwrap_err(),
            RefreshError::Parse(crate::jose::jwk::JwkError::Json(
                crate::jose::json::JsonError::DuplicateKey
            ))
        );
        assert!(c.key(Some("a")).await.is_ok());
        // A miss-triggered failing refresh also keeps them.
        f.set(None);
        tokio::time::advance(DEFAULT_REFRESH_COOLDOWN).await;
        assert_eq!(
            c.key(Some("zz")).await.unwrap_err(),
            KeyLookupError::UnknownKid
        );
        assert!(c.key(Some("a")).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_until_first_success_and_cooldown_applies_to_failures() {
        let a = TestKey::es256();
        let f = ScriptedFetcher::new(None);
        let c = cache(&f);
        assert_eq!(
            c.key(Some("a")).await.unwrap_err(),
            KeyLookupError::Unavailable
        );
        assert_eq!(c.key(None).await.unwrap_err(), KeyLookupError::Unavailable);
        // The failure started the cooldown: no second fetch.
        assert_eq!(c.fetch_count(), 1);
        f.set(Some(set_of(&[(&a, Some("a"))])));
        assert_eq!(
            c.key(Some("a")).await.unwrap_err(),
            KeyLookupError::Unavailable
        );
        assert_eq!(c.fetch_count(), 1);
        tokio::time::advance(DEFAULT_REFRESH_COOLDOWN).await;
        assert!(c.key(Some("a")).await.is_ok());
        assert_eq!(c.fetch_count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn ambiguous_and_kidless_lookups() {
        let a = TestKey::es256();
        let b = TestKey::es256();
        let f = ScriptedFetcher::new(Some(set_of(&[(&a, Some("dup")), (&b, Some("dup"))])));
        let c = cache(&f);
        assert_eq!(
            c.key(Some("dup")).await.unwrap_err(),
            KeyLookupError::AmbiguousKid
        );
        assert_eq!(c.key(None).await.unwrap_err(), KeyLookupError::AmbiguousKid);

        let f1 = ScriptedFetcher::new(Some(set_of(&[(&a, None)])));
        let c1 = cache(&f1);
        assert!(c1.key(None).await.is_ok());
        assert_eq!(
            c1.key(Some("a")).await.unwrap_err(),
            KeyLookupError::UnknownKid
        );

        let f2 = ScriptedFetcher::new(Some(set_of(&[(&a, Some("a")), (&b, None)])));
        let c2 = cache(&f2);
        assert_eq!(
            c2.key(None).await.unwrap_err(),
            KeyLookupError::AmbiguousKid
        );
        assert!(c2.key(Some("a")).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn background_task_refreshes_on_max_age() {
        let a = TestKey::es256();
        let b = TestKey::es256();
        let f = Arc::new(ScriptedFetcher {
            doc: Mutex::new(Some(set_of(&[(&a, Some("a"))]).to_string().into_bytes())),
            max_age: Some(Duration::from_secs(120)),
            delay: Duration::from_millis(10),
        });
        let c = cache(&f);
        let task = c.spawn_refresh_task();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(c.fetch_count(), 1);
        assert!(c.key(Some("a")).await.is_ok());
        // The issuer removes key a (e.g. compromised) and adds b.
        f.set(Some(set_of(&[(&b, Some("b"))])));
        tokio::time::sleep(Duration::from_secs(121)).await;
        assert_eq!(c.fetch_count(), 2);
        assert!(c.key(Some("b")).await.is_ok());
        assert_eq!(c.fetch_count(), 2);
        // Dropping the cache ends the task.
        drop(c);
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert!(task.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn end_to_end_verify_through_cache() {
        let k = TestKey::es256();
        let f = ScriptedFetcher::new(Some(set_of(&[(&k, Some("k1"))])));
        let c = cache(&f);
        let now = 1_700_000_000;
        let t = crate::jose::testutil::token(
            &crate::jose::testutil::header(Algorithm::ES256, Some("k1")),
            &crate::jose::testutil::claims(now),
            &k,
            Algorithm::ES256,
        );
        let u = crate::jose::jws::decode(&t).unwrap();
        let key = c.key(u.header().kid.as_deref()).await.unwrap();
        let v = u.verify(&key).unwrap();
        let rules = crate::jose::validate::ClaimRules::new(
            "https://issuer.example",
            vec!["tessera".into()],
        )
        .unwrap();
        let claims = crate::jose::validate::validate(&v, &rules, now).unwrap();
        assert_eq!(claims.sub, "workload-1");
    }

    #[tokio::test(start_paused = true)]
    async fn stale_keys_fail_closed_until_a_fetch_succeeds() {
        let a = TestKey::es256();
        let f = ScriptedFetcher::new(Some(set_of(&[(&a, Some("a"))])));
        let clock = Arc::new(crate::clock::ManualClock::new(1_700_000_000));
        let fetcher: Arc<dyn JwksFetcher> = f.clone();
        let c = Arc::new(
            JwksCache::new(fetcher, DEFAULT_REFRESH_COOLDOWN)
                .with_max_stale(Duration::from_secs(600))
                .with_clock(clock.clone()),
        );
        assert!(c.key(Some("a")).await.is_ok());
        f.set(None); // the upstream goes down
        clock.advance(600);
        tokio::time::advance(DEFAULT_REFRESH_COOLDOWN).await;
        // Exactly at the window's end the keys still work...
        assert!(c.key(Some("a")).await.is_ok());
        assert_eq!(c.age(), Some(Duration::from_secs(600)));
        // ...one second later they do not, for known and unknown kids alike,
        // and the lookup does not fetch.
        clock.advance(1);
        let fetches = c.fetch_count();
        assert_eq!(c.key(Some("a")).await.unwrap_err(), KeyLookupError::Stale);
        assert_eq!(c.key(Some("zz")).await.unwrap_err(), KeyLookupError::Stale);
        assert_eq!(c.fetch_count(), fetches);
        assert_eq!(KeyLookupError::Stale.reason(), "issuer_keys_stale");
        // A kick fetches in the background; while the upstream is down the
        // keys stay stale.
        c.kick_refresh();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(c.fetch_count(), fetches + 1);
        assert_eq!(c.key(Some("a")).await.unwrap_err(), KeyLookupError::Stale);
        // Within the cooldown a kick does nothing.
        c.kick_refresh();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(c.fetch_count(), fetches + 1);
        // The upstream is back: the next kick after the cooldown recovers.
        f.set(Some(set_of(&[(&a, Some("a"))])));
        tokio::time::advance(DEFAULT_REFRESH_COOLDOWN).await;
        c.kick_refresh();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(c.fetch_count(), fetches + 2);
        assert!(c.key(Some("a")).await.is_ok());
        assert_eq!(c.age(), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn background_refresh_runs_within_half_the_max_stale_window() {
        let a = TestKey::es256();
        let f = ScriptedFetcher::new(Some(set_of(&[(&a, Some("a"))])));
        let fetcher: Arc<dyn JwksFetcher> = f.clone();
        let c = Arc::new(
            JwksCache::new(fetcher, DEFAULT_REFRESH_COOLDOWN)
                .with_max_stale(Duration::from_secs(120)),
        );
        let task = c.spawn_refresh_task();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(c.fetch_count(), 1);
        // Default interval is 15 min, but the window is 2 min: every 1 min.
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(c.fetch_count(), 2);
        task.abort();
    }

    #[test]
    fn reasons_are_stable() {
        assert_eq!(KeyLookupError::Unavailable.reason(), "jwks_unavailable");
        assert_eq!(KeyLookupError::UnknownKid.reason(), "unknown_kid");
        assert_eq!(FetchError::TooLarge.reason(), "fetch_too_large");
    }
}
