//! Test support shared by the integration tests and the benchmark: a real
//! OIDC issuer served over HTTPS on 127.0.0.1 with its own CA, discovery and
//! JWKS, that signs whatever tests ask it to (including hostile tokens).
//! Not used by the broker itself.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::mint::keyring::{SigningAlgorithm, SigningKey};
use crate::pki::{Ca, LeafSpec};

struct Shared {
    issuer: String,
    keys: RwLock<Vec<Arc<SigningKey>>>,
    jwks_hits: AtomicU64,
    discovery_hits: AtomicU64,
    failing: AtomicBool,
    idp: std::sync::Mutex<IdpState>,
    /// When set, discovery and JWKS answer 401 unless the request carries
    /// `Authorization: Bearer <this>` (as the Kubernetes API server's
    /// `/openid/v1/jwks` does for anonymous callers).
    required_bearer: RwLock<Option<String>>,
    unauthorized_hits: AtomicU64,
}

impl Shared {
    /// `None` when the request may be answered, else the 401 to send.
    fn refuse_unauthenticated(&self, headers: &axum::http::HeaderMap) -> Option<Response> {
        let need = match self.required_bearer.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }?;
        let got = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if got == Some(need.as_str()) {
            return None;
        }
        self.unauthorized_hits.fetch_add(1, Ordering::SeqCst);
        Some(StatusCode::UNAUTHORIZED.into_response())
    }
}

/// The test IdP's sign-in state: who is "signed in" at the IdP, the codes
/// handed out, and what the last authorization request asked.
#[derive(Default)]
struct IdpState {
    /// Answer the authorization request with a page whose link the person
    /// follows (a navigation started on the IdP's site), not a redirect.
    interactive: bool,
    person: Option<TestPerson>,
    codes: std::collections::HashMap<String, IssuedCode>,
    last_authorize: Vec<(String, String)>,
}

/// A person the test IdP signs in.
#[derive(Debug, Clone)]
pub struct TestPerson {
    /// `sub`.
    pub sub: String,
    /// `email`.
    pub email: String,
    /// `groups`.
    pub groups: Vec<String>,
    /// `amr` (RFC 8176).
    pub amr: Vec<String>,
    /// When they last authenticated at the IdP (Unix seconds).
    pub auth_time: u64,
}

struct IssuedCode {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    person: TestPerson,
}

/// A running test OIDC issuer.
pub struct TestIssuer {
    /// `https://127.0.0.1:PORT` — the `iss` of its tokens.
    pub url: String,
    /// Path of the PEM CA that signed its server certificate.
    pub ca_path: PathBuf,
    /// The CA (to issue more certificates in tests).
    pub ca: Ca,
    signer: RwLock<Arc<SigningKey>>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

fn b64(s: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for tests and
/// benchmarks that start `tessera serve` processes on chosen ports).
///
/// # Panics
/// When no port can be bound (a test helper: never on a request path).
#[allow(clippy::expect_used)]
#[must_use]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A child process that is killed and reaped when dropped, so a failing
/// test or benchmark never leaves a broker running.
#[derive(Debug)]
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    crate::clock::Clock::now(&crate::clock::SystemClock)
}

/// A fresh CA and a `localhost` / 127.0.0.1 server certificate for a test
/// HTTPS endpoint, written under `dir` as `{stem}-ca.pem`,
/// `{stem}-server.pem` and `{stem}-server-key.pem`; returns the CA and
/// those paths.
fn server_material(
    dir: &Path,
    stem: &str,
    ca_name: &str,
) -> Result<
    (
        Ca,
        std::path::PathBuf,
        std::path::PathBuf,
        std::path::PathBuf,
    ),
    TestkitError,
> {
    let ca = Ca::generate(ca_name)?;
    let leaf = ca.issue(&LeafSpec::server(
        &["localhost"],
        &[std::net::IpAddr::from([127, 0, 0, 1])],
    ))?;
    std::fs::create_dir_all(dir)?;
    let ca_path = dir.join(format!("{stem}-ca.pem"));
    std::fs::write(&ca_path, ca.cert_pem())?;
    let cert_path = dir.join(format!("{stem}-server.pem"));
    let key_path = dir.join(format!("{stem}-server-key.pem"));
    std::fs::write(&cert_path, &leaf.cert_pem)?;
    std::fs::write(&key_path, &leaf.key_pem)?;
    Ok((ca, ca_path, cert_path, key_path))
}

/// Serves `router` over HTTPS on `listener` with the default limits until
/// the returned sender is set to `true` (or dropped).
fn serve_test_https(
    listener: tokio::net::TcpListener,
    cert_path: &Path,
    key_path: &Path,
    router: Router,
) -> Result<watch::Sender<bool>, TestkitError> {
    let tls = server_tls(cert_path, key_path)?;
    let (stop, mut rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::server::serve_https(
            listener,
            tls,
            router,
            crate::config::Limits::default(),
            async move {
                let _ = rx.wait_for(|v| *v).await;
            },
        )
        .await;
    });
    Ok(stop)
}

impl TestIssuer {
    /// Starts an issuer signing with `alg`, writing its CA to `dir/issuer-ca.pem`.
    pub async fn start(dir: &Path, alg: SigningAlgorithm) -> Result<TestIssuer, TestkitError> {
        let (ca, ca_path, cert_path, key_path) =
            server_material(dir, "issuer", "tessera test issuer CA")?;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
        let (key, _) = SigningKey::generate(alg)?;
        let key = Arc::new(key);
        let shared = Arc::new(Shared {
            issuer: url.clone(),
            keys: RwLock::new(vec![key.clone()]),
            jwks_hits: AtomicU64::new(0),
            discovery_hits: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            idp: std::sync::Mutex::new(IdpState::default()),
            required_bearer: RwLock::new(None),
            unauthorized_hits: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", axum::routing::post(idp_token))
            .with_state(shared.clone());
        let stop = serve_test_https(listener, &cert_path, &key_path, router)?;
        Ok(TestIssuer {
            url,
            ca_path,
            ca,
            signer: RwLock::new(key),
            shared,
            stop,
        })
    }

    /// The JWKS URL.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.url)
    }

    /// The key that signs now.
    pub fn signer(&self) -> Arc<SigningKey> {
        match self.signer.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Claims of a good token for `sub` with audience `aud`, valid 10 minutes.
    pub fn claims(&self, sub: &str, aud: &str) -> Value {
        let n = now();
        json!({"iss": self.url, "sub": sub, "aud": aud, "iat": n, "nbf": n, "exp": n + 600,
               "jti": uuid::Uuid::new_v4().to_string()})
    }

    /// Signs `claims` with the current key (`alg`, `kid`, `typ: JWT`).
    pub fn sign(&self, claims: &Value) -> String {
        let k = self.signer();
        let header = json!({"alg": k.algorithm().as_str(), "kid": k.kid(), "typ": "JWT"});
        self.sign_raw(&header.to_string(), &claims.to_string())
    }

    /// Signs raw header and payload JSON text exactly as given (for hostile
    /// tests: duplicate keys, odd types) with the current key.
    pub fn sign_raw(&self, header_json: &str, payload_json: &str) -> String {
        Self::sign_raw_with(&self.signer(), header_json, payload_json)
    }

    /// Signs raw header and payload with any key.
    pub fn sign_raw_with(key: &SigningKey, header_json: &str, payload_json: &str) -> String {
        let input = format!(
            "{}.{}",
            b64(header_json.as_bytes()),
            b64(payload_json.as_bytes())
        );
        let sig = key.sign(input.as_bytes()).unwrap_or_default();
        format!("{input}.{}", b64(&sig))
    }

    /// Publishes a new key and makes it the signer (old keys stay published).
    pub fn rotate(&self, alg: SigningAlgorithm) -> Result<Arc<SigningKey>, TestkitError> {
        let (k, _) = SigningKey::generate(alg)?;
        let k = Arc::new(k);
        if let Ok(mut keys) = self.shared.keys.write() {
            keys.push(k.clone());
        }
        if let Ok(mut s) = self.signer.write() {
            *s = k.clone();
        }
        Ok(k)
    }

    /// A key that is NOT published (an attacker's), with the same algorithm.
    pub fn rogue_key(alg: SigningAlgorithm) -> Result<SigningKey, TestkitError> {
        Ok(SigningKey::generate(alg).map(|(k, _)| k)?)
    }

    /// Makes the JWKS and discovery endpoints answer 500 (or recover).
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// Makes discovery and the JWKS demand `Authorization: Bearer TOKEN`
    /// (401 otherwise), or accept anyone again (`None`).
    pub fn require_bearer(&self, token: Option<&str>) {
        if let Ok(mut g) = self.shared.required_bearer.write() {
            *g = token.map(str::to_string);
        }
    }

    /// How many discovery or JWKS requests were refused with 401.
    pub fn unauthorized_hits(&self) -> u64 {
        self.shared.unauthorized_hits.load(Ordering::SeqCst)
    }

    /// How many times `/jwks` was fetched.
    pub fn jwks_hits(&self) -> u64 {
        self.shared.jwks_hits.load(Ordering::SeqCst)
    }

    /// How many times discovery was fetched.
    pub fn discovery_hits(&self) -> u64 {
        self.shared.discovery_hits.load(Ordering::SeqCst)
    }

    /// From now on the authorization endpoint signs `person` in (or nobody:
    /// it answers `error=login_required`).
    pub fn sign_in_as(&self, person: Option<TestPerson>) {
        if let Ok(mut g) = self.shared.idp.lock() {
            g.person = person;
        }
    }

    /// With `true`, the authorization endpoint shows a page with a
    /// `#continue` link back to the client instead of redirecting at once
    /// (as a real IdP's sign-in page: the way back starts on its site).
    pub fn set_interactive(&self, interactive: bool) {
        if let Ok(mut g) = self.shared.idp.lock() {
            g.interactive = interactive;
        }
    }

    /// A person with `email`, `groups` and `amr`, authenticated now.
    pub fn person(email: &str, groups: &[&str], amr: &[&str]) -> TestPerson {
        TestPerson {
            sub: format!("user-{email}"),
            email: email.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            amr: amr.iter().map(|a| a.to_string()).collect(),
            auth_time: now(),
        }
    }

    /// The query parameters of the last authorization request.
    pub fn last_authorize(&self) -> Vec<(String, String)> {
        match self.shared.idp.lock() {
            Ok(g) => g.last_authorize.clone(),
            Err(_) => Vec::new(),
        }
    }
}

/// The authorization endpoint: signs the configured person in at once
/// (re-authenticating when `max_age` asks for it) and redirects to
/// `redirect_uri` with a one-time code and the `state`.
async fn authorize(
    State(s): State<Arc<Shared>>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    let q: Vec<(String, String)> =
        reqwest::Url::parse(&format!("https://x.invalid/?{}", q.unwrap_or_default()))
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (Some(redirect_uri), Some(client_id), Some(challenge)) =
        (get("redirect_uri"), get("client_id"), get("code_challenge"))
    else {
        return (StatusCode::BAD_REQUEST, "missing parameters").into_response();
    };
    if get("response_type").as_deref() != Some("code")
        || get("code_challenge_method").as_deref() != Some("S256")
    {
        return (StatusCode::BAD_REQUEST, "code flow with S256 only").into_response();
    }
    let state = get("state").unwrap_or_default();
    let Ok(mut g) = s.idp.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    g.last_authorize = q.clone();
    let Ok(mut target) = reqwest::Url::parse(&redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "bad redirect_uri").into_response();
    };
    let Some(mut person) = g.person.clone() else {
        target
            .query_pairs_mut()
            .append_pair("error", "login_required")
            .append_pair("state", &state);
        return (StatusCode::SEE_OTHER, [("location", target.to_string())]).into_response();
    };
    if let Some(max_age) = get("max_age").and_then(|m| m.parse::<u64>().ok()) {
        if now().saturating_sub(person.auth_time) >= max_age {
            person.auth_time = now();
            if let Some(p) = g.person.as_mut() {
                p.auth_time = person.auth_time;
            }
        }
    }
    let code = b64(uuid::Uuid::new_v4().as_bytes());
    g.codes.insert(
        code.clone(),
        IssuedCode {
            client_id,
            redirect_uri,
            challenge,
            nonce: get("nonce"),
            person,
        },
    );
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &state);
    if g.interactive {
        let href = crate::text::html(target.as_str());
        return (
            [("content-type", "text/html; charset=utf-8")],
            format!("<!doctype html><title>Test IdP</title><a id=\"continue\" href=\"{href}\">Continue</a>"),
        )
            .into_response();
    }
    (StatusCode::SEE_OTHER, [("location", target.to_string())]).into_response()
}

/// The token endpoint: a one-time code, the same client and redirect URI,
/// and the PKCE verifier of the code's challenge; answers an ID token.
async fn idp_token(State(s): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let f: Vec<(String, String)> = reqwest::Url::parse(&format!(
        "https://x.invalid/?{}",
        String::from_utf8_lossy(&body)
    ))
    .map(|u| u.query_pairs().into_owned().collect())
    .unwrap_or_default();
    let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let bad = |e: &str| (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response();
    if get("grant_type").as_deref() != Some("authorization_code") {
        return bad("unsupported_grant_type");
    }
    let issued = match (s.idp.lock(), get("code")) {
        (Ok(mut g), Some(c)) => g.codes.remove(&c),
        _ => None,
    };
    let Some(c) = issued else {
        return bad("invalid_grant");
    };
    let verifier = get("code_verifier").unwrap_or_default();
    let challenge =
        b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref());
    if challenge != c.challenge
        || get("client_id").as_deref() != Some(c.client_id.as_str())
        || get("redirect_uri").as_deref() != Some(c.redirect_uri.as_str())
    {
        return bad("invalid_grant");
    }
    let n = now();
    let claims = json!({
        "iss": s.issuer, "sub": c.person.sub, "aud": c.client_id, "iat": n, "nbf": n,
        "exp": n + 300, "nonce": c.nonce, "email": c.person.email, "email_verified": true,
        "groups": c.person.groups, "amr": c.person.amr, "auth_time": c.person.auth_time,
    });
    let key = match s.keys.read() {
        Ok(k) => k.last().cloned(),
        Err(_) => None,
    };
    let Some(key) = key else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let header = json!({"alg": key.algorithm().as_str(), "kid": key.kid(), "typ": "JWT"});
    let id_token = TestIssuer::sign_raw_with(&key, &header.to_string(), &claims.to_string());
    Json(
        json!({"access_token": "idp-access", "token_type": "Bearer", "expires_in": 300,
                "id_token": id_token}),
    )
    .into_response()
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn discovery(State(s): State<Arc<Shared>>, headers: axum::http::HeaderMap) -> Response {
    s.discovery_hits.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = s.refuse_unauthenticated(&headers) {
        return r;
    }
    if s.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    Json(
        json!({"issuer": s.issuer, "jwks_uri": format!("{}/jwks", s.issuer),
                "authorization_endpoint": format!("{}/authorize", s.issuer),
                "token_endpoint": format!("{}/token", s.issuer),
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"]}),
    )
    .into_response()
}

async fn jwks(State(s): State<Arc<Shared>>, headers: axum::http::HeaderMap) -> Response {
    s.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = s.refuse_unauthenticated(&headers) {
        return r;
    }
    if s.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let keys: Vec<Value> = match s.keys.read() {
        Ok(k) => k.iter().map(|k| k.public_jwk()).collect(),
        Err(_) => vec![],
    };
    Json(json!({ "keys": keys })).into_response()
}

/// A test HTTPS endpoint serving any router, with its own CA, on
/// 127.0.0.1 (slow, hostile or misconfigured upstreams in tests).
pub struct TestHttps {
    /// `https://127.0.0.1:PORT` (no trailing slash).
    pub url: String,
    /// Path of the PEM CA that signed its server certificate.
    pub ca_path: PathBuf,
    stop: watch::Sender<bool>,
}

impl TestHttps {
    /// Serves `router`, writing its CA to `dir/{stem}-ca.pem`.
    pub async fn start(dir: &Path, stem: &str, router: Router) -> Result<TestHttps, TestkitError> {
        let (_ca, ca_path, cert_path, key_path) =
            server_material(dir, stem, "tessera test upstream CA")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
        let stop = serve_test_https(listener, &cert_path, &key_path, router)?;
        Ok(TestHttps { url, ca_path, stop })
    }
}

impl Drop for TestHttps {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A test HTTPS endpoint (its own CA, on 127.0.0.1) that records the JSON
/// bodies POSTed to `/hook`: the receiver of `[approvals] webhook` in tests.
pub struct TestWebhook {
    /// `https://127.0.0.1:PORT/hook`.
    pub url: String,
    /// Path of the PEM CA that signed its server certificate.
    pub ca_path: PathBuf,
    bodies: Arc<std::sync::Mutex<Vec<Value>>>,
    stop: watch::Sender<bool>,
}

impl TestWebhook {
    /// Starts the endpoint, writing its CA to `dir/webhook-ca.pem`.
    pub async fn start(dir: &Path) -> Result<TestWebhook, TestkitError> {
        let (_ca, ca_path, cert_path, key_path) =
            server_material(dir, "webhook", "tessera test webhook CA")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://127.0.0.1:{}/hook", listener.local_addr()?.port());
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let router = Router::new()
            .route("/hook", axum::routing::post(record_hook))
            .with_state(bodies.clone());
        let stop = serve_test_https(listener, &cert_path, &key_path, router)?;
        Ok(TestWebhook {
            url,
            ca_path,
            bodies,
            stop,
        })
    }

    /// Every body received so far, oldest first.
    pub fn bodies(&self) -> Vec<Value> {
        match self.bodies.lock() {
            Ok(b) => b.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl Drop for TestWebhook {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn record_hook(
    State(b): State<Arc<std::sync::Mutex<Vec<Value>>>>,
    body: axum::body::Bytes,
) -> StatusCode {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Ok(mut g) = b.lock() {
        g.push(v);
    }
    StatusCode::NO_CONTENT
}

/// Why a test fixture could not be set up (each the underlying error,
/// as its text).
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// Certificates for the fixture.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// Files and sockets.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Signing keys.
    #[error(transparent)]
    Key(#[from] crate::mint::keyring::KeyRingError),
    /// The fixture's TLS files.
    #[error(transparent)]
    TlsFile(#[from] crate::server::tls::TlsSetupError),
    /// A PEM key.
    #[error(transparent)]
    Pem(#[from] rustls_pki_types::pem::Error),
    /// The TLS configuration.
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    /// The HTTPS client.
    #[error(transparent)]
    Client(#[from] crate::cli::admin::ConnError),
}

fn server_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TestkitError> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = crate::server::tls::read_certs("testkit", cert)?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// An HTTPS client that trusts `ca_der` only and presents `cert` (when
/// given) as its TLS client certificate; `h2` selects HTTP/2 with prior
/// knowledge instead of HTTP/1.1 keep-alive.
pub fn https_client(
    ca_der: &[u8],
    cert: Option<&crate::pki::IssuedCert>,
    h2: bool,
) -> Result<reqwest::Client, TestkitError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let identity = match cert {
        Some(c) => Some((
            vec![CertificateDer::from(c.cert_der.clone())],
            PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())?,
        )),
        None => None,
    };
    Ok(crate::cli::admin::mtls_client(
        vec![CertificateDer::from(ca_der.to_vec())],
        identity,
        h2,
        std::time::Duration::from_secs(10),
    )?)
}
