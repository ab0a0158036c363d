//! HTTPS fetching of JWK Sets and OIDC discovery documents.
//!
//! The client is locked down: rustls with the aws-lc-rs provider, explicit
//! trust anchors, HTTPS only, no redirects, connect and total timeouts, and
//! response bodies capped while streaming.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CACHE_CONTROL};
use reqwest::Url;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use tokio::time::Instant;

use super::{
    BoxFuture, FetchError, FetchedJwks, JwksCache, JwksFetcher, KeyLookupError, MAX_JWKS_BYTES,
    MAX_REFRESH_INTERVAL,
};
use crate::jose::json;
use crate::jose::jwk::VerifyingKey;

/// Total time allowed for one fetch (connect, TLS, headers and body).
///
/// ```
/// assert!(tessera::jwks::FETCH_TIMEOUT > tessera::jwks::CONNECT_TIMEOUT);
/// ```
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed to establish the TCP + TLS connection.
///
/// ```
/// assert_eq!(tessera::jwks::CONNECT_TIMEOUT.as_secs(), 3);
/// ```
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Maximum size of an OIDC discovery document.
///
/// ```
/// assert_eq!(tessera::jwks::MAX_DISCOVERY_BYTES, 64 * 1024);
/// ```
pub const MAX_DISCOVERY_BYTES: usize = 64 * 1024;
/// Path appended to the issuer for OIDC discovery.
///
/// ```
/// assert_eq!(tessera::jwks::http::DISCOVERY_PATH, "/.well-known/openid-configuration");
/// ```
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// User-Agent sent with every request.
///
/// ```
/// assert!(tessera::jwks::http::USER_AGENT.starts_with("tessera/"));
/// ```
pub const USER_AGENT: &str = concat!("tessera/", env!("CARGO_PKG_VERSION"));

/// Builds the HTTPS client used for JWKS and discovery fetches: rustls with
/// the aws-lc-rs provider, trusting `extra_roots` plus (when
/// `public_roots`) the webpki root set; HTTPS only; no redirects;
/// [`CONNECT_TIMEOUT`] and [`FETCH_TIMEOUT`].
///
/// # Errors
/// [`FetchError::Config`] if a root is invalid, no root is configured, or
/// the client cannot be built.
///
/// ```
/// // Public WebPKI roots only; pass extra anchors (DER) for a private CA.
/// let client = tessera::jwks::https_client(&[], true)?;
/// # let _ = client;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn https_client(
    extra_roots: &[CertificateDer<'static>],
    public_roots: bool,
) -> Result<reqwest::Client, FetchError> {
    let tls = tls_client_config(extra_roots, public_roots, None, &[b"h2", b"http/1.1"])
        .map_err(FetchError::Config)?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(FETCH_TIMEOUT)
        .user_agent(USER_AGENT)
        .build()
        .map_err(|_| FetchError::Config("HTTP client build failed"))
}

/// The one place TLS client configurations are built (JWKS fetching, the
/// operator CLI, the verifier's revocation follower, tests): the aws-lc-rs
/// provider, safe protocol versions, exactly the given trust anchors (plus
/// the public WebPKI roots when asked), an optional client identity, and
/// the given ALPN protocols. Errors are fixed texts that never contain
/// key material.
///
/// ```
/// let cfg = tessera::jwks::http::tls_client_config(&[], true, None, &[b"h2"])?;
/// assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec()]);
/// assert!(tessera::jwks::http::tls_client_config(&[], false, None, &[]).is_err()); // no anchors
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn tls_client_config(
    extra_roots: &[CertificateDer<'static>],
    public_roots: bool,
    identity: Option<(
        Vec<CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    )>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, &'static str> {
    let mut roots = rustls::RootCertStore::empty();
    if public_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|_| "invalid root certificate")?;
    }
    if roots.is_empty() {
        return Err("no trust anchors configured");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| "TLS protocol versions")?
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|_| "client certificate or key rejected")?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Parses and checks an https URL without embedded credentials.
fn https_url(raw: &str) -> Result<Url, FetchError> {
    let url = Url::parse(raw).map_err(|_| FetchError::InvalidUrl)?;
    if url.scheme() != "https"
        || url.host().is_none()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(FetchError::InvalidUrl);
    }
    Ok(url)
}

/// Maximum number of error-chain links inspected when classifying errors.
const MAX_ERROR_CHAIN: usize = 16;

/// True when some error in the chain is a rustls error. `io::Error` hides
/// its payload from `source()`, so it is unwrapped explicitly.
fn is_tls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    for _ in 0..MAX_ERROR_CHAIN {
        let Some(e) = cur else { break };
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        cur = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

fn map_reqwest(err: &reqwest::Error) -> FetchError {
    if err.is_timeout() {
        return FetchError::Timeout;
    }
    let msg = describe(err);
    if is_tls_error(err) {
        FetchError::Tls(msg)
    } else {
        FetchError::Transport(msg)
    }
}

/// The error and its causes on one line (reqwest's own message omits the
/// cause).
fn describe(err: &reqwest::Error) -> String {
    let mut out = err.to_string();
    let mut cur = std::error::Error::source(err);
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// Extracts `max-age` from `Cache-Control` (`no-store`/`no-cache` → 0),
/// capped at [`MAX_REFRESH_INTERVAL`].
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut result = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(text) = value.to_str() else { continue };
        for directive in text.split(',') {
            let directive = directive.trim();
            let lower = directive.to_ascii_lowercase();
            if lower == "no-store" || lower == "no-cache" {
                return Some(Duration::ZERO);
            }
            if let Some(v) = lower.strip_prefix("max-age=") {
                if let Ok(secs) = v.trim_matches('"').parse::<u64>() {
                    result = Some(Duration::from_secs(secs).min(MAX_REFRESH_INTERVAL));
                }
            }
        }
    }
    result
}

/// Largest bearer token file read (a projected service-account token is
/// about 1 KiB).
pub const MAX_BEARER_TOKEN_BYTES: u64 = 16 * 1024;

/// The `Authorization` value for a fetch that must authenticate (an
/// issuer whose JWKS or discovery document needs a caller, e.g. the
/// Kubernetes API server's `/openid/v1/jwks`): `Bearer ` and the content of
/// `path`, read on every fetch so a rotated (re-projected) token is used
/// from the next fetch on. Marked sensitive (never in Debug output); errors
/// name the file, never the token.
///
/// # Errors
/// [`FetchError::Credential`] when the file cannot be read, is empty, too
/// large or not a header-safe value.
pub fn bearer_header(path: &std::path::Path) -> Result<HeaderValue, FetchError> {
    use std::io::Read;
    let cred = |m: String| FetchError::Credential(format!("{}: {m}", path.display()));
    let mut buf = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_BEARER_TOKEN_BYTES + 1).read_to_string(&mut buf))
        .map_err(|e| cred(format!("cannot read: {}", e.kind())))?;
    if buf.len() as u64 > MAX_BEARER_TOKEN_BYTES {
        return Err(cred(format!("larger than {MAX_BEARER_TOKEN_BYTES} bytes")));
    }
    let token = buf.trim();
    if token.is_empty() {
        return Err(cred("empty".into()));
    }
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| cred("not a header-safe token".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// GETs `url` with a total `timeout`, refusing redirects, non-2xx answers
/// and bodies over `cap` bytes (checked on `Content-Length` and while
/// streaming); with `bearer`, authenticates with [`bearer_header`].
async fn get_capped(
    client: &reqwest::Client,
    url: Url,
    cap: usize,
    timeout: Duration,
    bearer: Option<&std::path::Path>,
) -> Result<(Vec<u8>, HeaderMap), FetchError> {
    let auth = bearer.map(bearer_header).transpose()?;
    let work = async {
        let mut rb = client
            .get(url)
            .header(ACCEPT, "application/json")
            .timeout(timeout);
        if let Some(v) = auth {
            rb = rb.header(AUTHORIZATION, v);
        }
        let mut resp = rb.send().await.map_err(|e| map_reqwest(&e))?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(FetchError::Redirect(status.as_u16()));
        }
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        if resp
            .content_length()
            .is_some_and(|len| len > u64::try_from(cap).unwrap_or(u64::MAX))
        {
            return Err(FetchError::TooLarge);
        }
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| map_reqwest(&e))? {
            if body.len().saturating_add(chunk.len()) > cap {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, headers))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FetchError::Timeout)?
}

/// Fetches a JWK Set over HTTPS.
///
/// ```
/// use tessera::jwks::HttpJwksFetcher;
/// let client = tessera::jwks::https_client(&[], true)?;
/// let f = HttpJwksFetcher::new(client, "https://issuer.example.com/jwks.json")?;
/// assert_eq!(f.url(), "https://issuer.example.com/jwks.json");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct HttpJwksFetcher {
    client: reqwest::Client,
    url: Url,
    timeout: Duration,
    /// A file whose content authenticates each fetch (path only: the
    /// token is read per fetch and never kept or printed).
    bearer_token_file: Option<std::path::PathBuf>,
}

impl HttpJwksFetcher {
    /// A fetcher for `url` using `client` (normally from [`https_client`]).
    ///
    /// # Errors
    /// [`FetchError::InvalidUrl`] unless `url` is an https URL without
    /// credentials.
    ///
    /// ```
    /// use tessera::jwks::HttpJwksFetcher;
    /// let client = tessera::jwks::https_client(&[], true)?;
    /// assert!(HttpJwksFetcher::new(client.clone(), "http://issuer.example.com/jwks").is_err());
    /// assert!(HttpJwksFetcher::new(client, "https://user:pw@issuer.example.com/jwks").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(client: reqwest::Client, url: &str) -> Result<HttpJwksFetcher, FetchError> {
        Ok(HttpJwksFetcher {
            client,
            url: https_url(url)?,
            timeout: FETCH_TIMEOUT,
            bearer_token_file: None,
        })
    }

    /// Authenticates every fetch with `Authorization: Bearer` and the
    /// content of `path`, re-read per fetch (see [`bearer_header`]).
    ///
    /// ```
    /// let client = tessera::jwks::https_client(&[], true)?;
    /// let f = tessera::jwks::HttpJwksFetcher::new(client, "https://kubernetes.default.svc/openid/v1/jwks")?
    ///     .with_bearer_token_file(Some("/var/run/secrets/kubernetes.io/serviceaccount/token".into()));
    /// assert!(!format!("{f:?}").contains("Bearer"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_bearer_token_file(mut self, path: Option<std::path::PathBuf>) -> HttpJwksFetcher {
        self.bearer_token_file = path;
        self
    }

    /// Overrides the total fetch timeout (default [`FETCH_TIMEOUT`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// let client = tessera::jwks::https_client(&[], true)?;
    /// let f = tessera::jwks::HttpJwksFetcher::new(client, "https://issuer.example.com/jwks")?
    ///     .with_timeout(Duration::from_secs(2));
    /// # let _ = f;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> HttpJwksFetcher {
        self.timeout = timeout;
        self
    }

    /// The JWKS URL.
    ///
    /// ```
    /// let client = tessera::jwks::https_client(&[], true)?;
    /// let f = tessera::jwks::HttpJwksFetcher::new(client, "https://issuer.example.com/jwks")?;
    /// assert!(f.url().ends_with("/jwks"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn url(&self) -> &str {
        self.url.as_str()
    }
}

impl JwksFetcher for HttpJwksFetcher {
    fn fetch(&self) -> BoxFuture<'_, Result<FetchedJwks, FetchError>> {
        Box::pin(async move {
            let (body, headers) = get_capped(
                &self.client,
                self.url.clone(),
                MAX_JWKS_BYTES,
                self.timeout,
                self.bearer_token_file.as_deref(),
            )
            .await?;
            Ok(FetchedJwks {
                body,
                max_age: max_age(&headers),
            })
        })
    }
}

/// Resolves an issuer's `jwks_uri` via OIDC discovery:
/// GET `{issuer without one trailing slash}/.well-known/openid-configuration`
/// (size-capped); the document's `issuer` must equal `issuer` exactly and
/// `jwks_uri` must be an https URL.
///
/// # Errors
/// Any [`FetchError`] of the request, [`FetchError::InvalidDiscovery`] or
/// [`FetchError::IssuerMismatch`].
///
/// ```
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let client = tessera::jwks::https_client(&[], true)?;
/// let jwks_uri = tessera::jwks::discover_jwks_uri(&client, "https://token.actions.githubusercontent.com").await?;
/// println!("{jwks_uri}");
/// # Ok(())
/// # }
/// ```
pub async fn discover_jwks_uri(
    client: &reqwest::Client,
    issuer: &str,
) -> Result<String, FetchError> {
    discover_jwks_uri_with_timeout(client, issuer, FETCH_TIMEOUT, None).await
}

/// [`discover_jwks_uri`] authenticating with a bearer token file (see
/// [`bearer_header`]).
///
/// # Errors
/// As [`discover_jwks_uri`], and [`FetchError::Credential`].
pub async fn discover_jwks_uri_with_bearer(
    client: &reqwest::Client,
    issuer: &str,
    bearer_token_file: Option<&std::path::Path>,
) -> Result<String, FetchError> {
    discover_jwks_uri_with_timeout(client, issuer, FETCH_TIMEOUT, bearer_token_file).await
}

async fn discover_jwks_uri_with_timeout(
    client: &reqwest::Client,
    issuer: &str,
    timeout: Duration,
    bearer: Option<&std::path::Path>,
) -> Result<String, FetchError> {
    https_url(issuer)?;
    let base = issuer.strip_suffix('/').unwrap_or(issuer);
    let url = https_url(&format!("{base}{DISCOVERY_PATH}"))?;
    let (body, _) = get_capped(client, url, MAX_DISCOVERY_BYTES, timeout, bearer).await?;
    let doc = json::parse_object(&body).map_err(|_| FetchError::InvalidDiscovery("json"))?;
    match doc.get("issuer") {
        Some(Value::String(s)) if s == issuer => {}
        Some(Value::String(_)) => return Err(FetchError::IssuerMismatch),
        _ => return Err(FetchError::InvalidDiscovery("issuer")),
    }
    match doc.get("jwks_uri") {
        Some(Value::String(uri)) => {
            https_url(uri).map_err(|_| FetchError::InvalidDiscovery("jwks_uri"))?;
            Ok(uri.clone())
        }
        _ => Err(FetchError::InvalidDiscovery("jwks_uri")),
    }
}

/// The endpoints of an OIDC provider that a relying party signs people in
/// with (`authorization_endpoint`, `token_endpoint`), from its discovery
/// document under `issuer` (whose `issuer` must be exactly `issuer`; both
/// endpoints https, without credentials).
pub async fn discover_login_endpoints(
    client: &reqwest::Client,
    issuer: &str,
) -> Result<(Url, Url), FetchError> {
    https_url(issuer)?;
    let base = issuer.strip_suffix('/').unwrap_or(issuer);
    let url = https_url(&format!("{base}{DISCOVERY_PATH}"))?;
    let (body, _) = get_capped(client, url, MAX_DISCOVERY_BYTES, FETCH_TIMEOUT, None).await?;
    let doc = json::parse_object(&body).map_err(|_| FetchError::InvalidDiscovery("json"))?;
    match doc.get("issuer") {
        Some(Value::String(s)) if s == issuer => {}
        Some(Value::String(_)) => return Err(FetchError::IssuerMismatch),
        _ => return Err(FetchError::InvalidDiscovery("issuer")),
    }
    let endpoint = |name: &'static str| match doc.get(name) {
        Some(Value::String(u)) => https_url(u).map_err(|_| FetchError::InvalidDiscovery(name)),
        _ => Err(FetchError::InvalidDiscovery(name)),
    };
    Ok((
        endpoint("authorization_endpoint")?,
        endpoint("token_endpoint")?,
    ))
}

/// Keys of an OIDC issuer: discovery runs lazily on first use (single
/// flight, retried at most once per cooldown after a failure), then lookups
/// behave exactly like [`JwksCache::key`].
///
/// ```
/// use tessera::jwks::{OidcIssuerKeys, DEFAULT_REFRESH_COOLDOWN};
/// let client = tessera::jwks::https_client(&[], true)?;
/// let keys = OidcIssuerKeys::new(client, "https://issuer.example.com", DEFAULT_REFRESH_COOLDOWN);
/// assert!(keys.cache().is_none()); // discovery runs on first use
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct OidcIssuerKeys {
    client: reqwest::Client,
    issuer: String,
    cooldown: Duration,
    timeout: Duration,
    cache: tokio::sync::OnceCell<JwksCache>,
    last_discovery: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for OidcIssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcIssuerKeys")
            .field("issuer", &self.issuer)
            .field("cache", &self.cache.get())
            .finish_non_exhaustive()
    }
}

impl OidcIssuerKeys {
    /// Keys for `issuer`, fetched with `client`; `cooldown` applies both to
    /// discovery retries and to the JWKS cache.
    ///
    /// ```
    /// use tessera::jwks::{OidcIssuerKeys, DEFAULT_REFRESH_COOLDOWN};
    /// let client = tessera::jwks::https_client(&[], true)?;
    /// let keys = OidcIssuerKeys::new(client, "https://issuer.example.com/", DEFAULT_REFRESH_COOLDOWN);
    /// # let _ = keys;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn new(client: reqwest::Client, issuer: impl Into<String>, cooldown: Duration) -> Self {
        OidcIssuerKeys {
            client,
            issuer: issuer.into(),
            cooldown,
            timeout: FETCH_TIMEOUT,
            cache: tokio::sync::OnceCell::new(),
            last_discovery: tokio::sync::Mutex::new(None),
        }
    }

    /// Overrides the per-request timeout (default [`FETCH_TIMEOUT`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tessera::jwks::{OidcIssuerKeys, DEFAULT_REFRESH_COOLDOWN};
    /// let client = tessera::jwks::https_client(&[], true)?;
    /// let keys = OidcIssuerKeys::new(client, "https://issuer.example.com", DEFAULT_REFRESH_COOLDOWN)
    ///     .with_timeout(Duration::from_secs(2));
    /// # let _ = keys;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The issuer these keys belong to.
    ///
    /// ```
    /// use tessera::jwks::{OidcIssuerKeys, DEFAULT_REFRESH_COOLDOWN};
    /// let client = tessera::jwks::https_client(&[], true)?;
    /// let keys = OidcIssuerKeys::new(client, "https://issuer.example.com", DEFAULT_REFRESH_COOLDOWN);
    /// assert_eq!(keys.issuer(), "https://issuer.example.com");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The underlying cache once discovery has succeeded.
    ///
    /// ```
    /// use tessera::jwks::{OidcIssuerKeys, DEFAULT_REFRESH_COOLDOWN};
    /// let client = tessera::jwks::https_client(&[], true)?;
    /// let keys = OidcIssuerKeys::new(client, "https://issuer.example.com", DEFAULT_REFRESH_COOLDOWN);
    /// assert!(keys.cache().is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn cache(&self) -> Option<&JwksCache> {
        self.cache.get()
    }

    async fn resolved(&self) -> Result<&JwksCache, KeyLookupError> {
        if let Some(cache) = self.cache.get() {
            return Ok(cache);
        }
        let mut last = self.last_discovery.lock().await;
        if let Some(cache) = self.cache.get() {
            return Ok(cache);
        }
        if last.is_some_and(|t| Instant::now().saturating_duration_since(t) < self.cooldown) {
            return Err(KeyLookupError::Unavailable);
        }
        *last = Some(Instant::now());
        let uri = discover_jwks_uri_with_timeout(&self.client, &self.issuer, self.timeout, None)
            .await
            .map_err(|e| {
                tracing::warn!(issuer = %self.issuer, reason = e.reason(), error = %e, "OIDC discovery failed");
                KeyLookupError::Unavailable
            })?;
        let fetcher = HttpJwksFetcher::new(self.client.clone(), &uri)
            .map_err(|_| KeyLookupError::Unavailable)?
            .with_timeout(self.timeout);
        let cache = JwksCache::new(Arc::new(fetcher), self.cooldown);
        // We hold the discovery lock, so nobody else can have set it.
        let _ = self.cache.set(cache);
        self.cache.get().ok_or(KeyLookupError::Unavailable)
    }

    /// Looks up a key, running discovery first if needed.
    ///
    /// # Errors
    /// As [`JwksCache::key`]; [`KeyLookupError::Unavailable`] while
    /// discovery has not succeeded.
    ///
    /// ```
    /// use tessera::jwks::{KeyLookupError, OidcIssuerKeys, DEFAULT_REFRESH_COOLDOWN};
    /// let client = tessera::jwks::https_client(&[], true)?;
    /// // An issuer that cannot be reached: unavailable (503), never "unknown".
    /// let keys = OidcIssuerKeys::new(client, "https://127.0.0.1:9", DEFAULT_REFRESH_COOLDOWN);
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// assert_eq!(rt.block_on(keys.key(Some("k1"))).err(), Some(KeyLookupError::Unavailable));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn key(&self, kid: Option<&str>) -> Result<Arc<VerifyingKey>, KeyLookupError> {
        self.resolved().await?.key(kid).await
    }
}

#[cfg(all(test, feature = "server"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
