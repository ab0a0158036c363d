//! `tessera token exchange` and `tessera token verify`: what an agent or a
//! script needs without hand-written curl (in the spirit of `step oauth`
//! and `gcloud auth print-access-token`).
//!
//! `exchange` sends one RFC 8693 request to `--url`'s `/token` and prints
//! the access token (with `--json`, the broker's whole answer). A request
//! waiting for a human (`authorization_pending`) is repeated with its
//! `approval_id` every `interval` seconds (5 more after a `slow_down`, RFC
//! 8628 §3.5) with one progress line per poll on stderr, until the token,
//! `access_denied`, `expired_token` or `--wait`.
//!
//! `verify` checks a token against the broker's published keys with the
//! same [`crate::verify::Verifier`] resource servers use, and names the
//! check that failed.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::admin::Connection;
use crate::jose::Algorithm;
use crate::verify::{Verifier, VerifyError};

/// How long one request to the broker may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest subject or actor token file read.
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Token types, as RFC 8693 names them.
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The verified TLS client certificate is the subject (or the actor).
pub const MTLS_TYPE: &str = "urn:ietf:params:oauth:token-type:mtls";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// `slow_down` adds this to the polling interval (RFC 8628 §3.5).
const SLOW_DOWN_STEP: u64 = 5;
/// Interval used when the broker names none (RFC 8628's default).
const DEFAULT_INTERVAL: u64 = 5;
/// The longest interval honoured (a broker asking for more is capped).
const MAX_INTERVAL: u64 = 60;

/// What `tessera token exchange` asks for.
#[derive(Debug, Clone, Default)]
pub struct ExchangeArgs {
    /// The one audience.
    pub audience: String,
    /// Space-separated scopes.
    pub scope: String,
    /// A file holding the subject token (an OIDC JWT or a Tessera token;
    /// `-` reads standard input); without it the client certificate is the
    /// subject.
    pub subject_token_file: Option<std::path::PathBuf>,
    /// `subject_token_type` for the file's token (default: `jwt`).
    pub subject_token_type: Option<String>,
    /// A file holding the actor's token (delegation).
    pub actor_token_file: Option<std::path::PathBuf>,
    /// The client certificate is the actor (delegation over mTLS).
    pub actor_is_certificate: bool,
    /// Present `--cert`/`--key` (always when there is no subject token file).
    pub present_certificate: bool,
    /// The task id.
    pub task: Option<String>,
    /// Requested lifetime in seconds.
    pub expires_in: Option<u64>,
    /// RFC 9396 details (JSON array text).
    pub authorization_details: Option<String>,
    /// Give up waiting for an approval after this long.
    pub wait: Duration,
    /// Bind the token to this DPoP key (RFC 9449): an ES256 PKCS#8 PEM
    /// file, created (mode 0600) when absent.
    pub dpop_key: Option<std::path::PathBuf>,
}

/// Loads the DPoP key at `path`, or creates one there (ES256, PKCS#8 PEM,
/// mode 0600, never overwriting).
pub fn dpop_key(path: &Path) -> Result<crate::mint::keyring::SigningKey, TokenCliError> {
    use crate::mint::keyring::{SigningAlgorithm, SigningKey};
    let file = |source| DpopKeyFile {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read(path) {
        Ok(pem) => SigningKey::from_pem(&pem).map_err(|e| TokenCliError::DpopKey {
            path: path.to_path_buf(),
            source: e,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (key, der) = SigningKey::generate(SigningAlgorithm::ES256)
                .map_err(TokenCliError::DpopKeyGenerate)?;
            let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
            let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
            for chunk in b64.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                pem.push('\n');
            }
            pem.push_str("-----END PRIVATE KEY-----\n");
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            std::io::Write::write_all(
                &mut o
                    .open(path)
                    .map_err(|e| TokenCliError::DpopKeyCreate(file(e)))?,
                pem.as_bytes(),
            )
            .map_err(|e| TokenCliError::DpopKeyWrite(file(e)))?;
            Ok(key)
        }
        Err(e) => Err(TokenCliError::DpopKeyRead(file(e))),
    }
}

/// A DPoP key file and the I/O error it met.
#[derive(Debug)]
pub struct DpopKeyFile {
    /// The file.
    pub path: std::path::PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// Why a `tessera token` verb failed before or while asking the broker
/// (after `error: ` on stderr; a refusal by the broker is reported apart).
#[derive(Debug, thiserror::Error)]
pub enum TokenCliError {
    /// `--dpop-key` holds no usable key.
    #[error("--dpop-key {}: {source}", path.display())]
    DpopKey {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: crate::mint::keyring::KeyParseError,
    },
    /// A new DPoP key cannot be generated.
    #[error("--dpop-key: {0}")]
    DpopKeyGenerate(crate::mint::keyring::KeyRingError),
    /// The new DPoP key file cannot be created.
    #[error("cannot create --dpop-key {}: {}", .0.path.display(), .0.source)]
    DpopKeyCreate(DpopKeyFile),
    /// The new DPoP key cannot be written.
    #[error("cannot write --dpop-key {}: {}", .0.path.display(), .0.source)]
    DpopKeyWrite(DpopKeyFile),
    /// The DPoP key file cannot be read.
    #[error("cannot read --dpop-key {}: {}", .0.path.display(), .0.source)]
    DpopKeyRead(DpopKeyFile),
    /// The DPoP proof cannot be signed.
    #[error("{0}")]
    Sign(crate::mint::MintError),
    /// A token file (`what` is its flag) cannot be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    TokenFileUnreadable {
        /// `--subject-token-file` or `--actor-token-file`.
        what: &'static str,
        /// The file (`-`: standard input).
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A token file larger than [`MAX_TOKEN_FILE_BYTES`].
    #[error("{what} {} is larger than {MAX_TOKEN_FILE_BYTES} bytes", path.display())]
    TokenFileTooLarge {
        /// The flag.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
    },
    /// A token file holding nothing but white space.
    #[error("{what} {} is empty", path.display())]
    TokenFileEmpty {
        /// The flag.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
    },
    /// `--cert` cannot be read (for `--actor-cert`'s thumbprint).
    #[error("cannot read --cert {}: {source}", path.display())]
    Cert {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: rustls_pki_types::pem::Error,
    },
    /// The broker could not be asked.
    #[error(transparent)]
    Unreachable(#[from] crate::cli::admin::Unreachable),
    /// The broker answered a document request with an error status.
    #[error("{url} answered {status}")]
    Status {
        /// The document's URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
}

/// A DPoP proof (RFC 9449 §4.2) by `key` for `method` `url`, with the
/// server's `nonce` and, for a resource request, `ath` of `token`.
pub fn dpop_proof(
    key: &crate::mint::keyring::SigningKey,
    method: &str,
    url: &str,
    nonce: Option<&str>,
    token: Option<&str>,
) -> Result<String, TokenCliError> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let header =
        json!({"typ": "dpop+jwt", "alg": key.algorithm().as_str(), "jwk": key.public_jwk()});
    let mut claims = json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": method, "htu": url,
                            "iat": crate::clock::Clock::now(&crate::clock::SystemClock)});
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    if let Some(t) = token {
        claims["ath"] = json!(crate::dpop::access_token_hash(t));
    }
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(input.as_bytes()).map_err(TokenCliError::Sign)?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// `tessera token proof --dpop-key FILE --method M --url URL [--token T]`:
/// prints a DPoP proof for one request to a resource server.
pub fn proof(key_file: &Path, method: &str, url: &str, token: Option<&str>) -> i32 {
    match dpop_key(key_file).and_then(|k| dpop_proof(&k, &method.to_uppercase(), url, None, token))
    {
        Ok(p) => {
            outln!("{p}");
            0
        }
        Err(m) => fail(m),
    }
}

/// Expands a short token type (`jwt`, `id_token`, `access_token`) to its URN.
fn token_type(t: &str) -> String {
    if t.starts_with("urn:") {
        t.to_string()
    } else {
        format!("urn:ietf:params:oauth:token-type:{t}")
    }
}

/// Reads a token from a file (`-`: standard input), bounded and trimmed.
/// The error names the file, never the content.
fn read_token_file(p: &Path, what: &'static str) -> Result<String, TokenCliError> {
    let mut buf = String::new();
    let read = if p == Path::new("-") {
        std::io::stdin()
            .take(MAX_TOKEN_FILE_BYTES + 1)
            .read_to_string(&mut buf)
    } else {
        std::fs::File::open(p)
            .and_then(|f| f.take(MAX_TOKEN_FILE_BYTES + 1).read_to_string(&mut buf))
    };
    read.map_err(|e| TokenCliError::TokenFileUnreadable {
        what,
        path: p.to_path_buf(),
        source: e,
    })?;
    if buf.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(TokenCliError::TokenFileTooLarge {
            what,
            path: p.to_path_buf(),
        });
    }
    let t = buf.trim().to_string();
    if t.is_empty() {
        return Err(TokenCliError::TokenFileEmpty {
            what,
            path: p.to_path_buf(),
        });
    }
    Ok(t)
}

/// The form of one exchange request (without `approval_id`).
fn form(a: &ExchangeArgs) -> Result<Vec<(&'static str, String)>, TokenCliError> {
    let mut f = vec![
        ("grant_type", GRANT.to_string()),
        ("audience", a.audience.clone()),
        ("scope", a.scope.clone()),
    ];
    match &a.subject_token_file {
        Some(p) => {
            f.push(("subject_token", read_token_file(p, "--subject-token-file")?));
            f.push((
                "subject_token_type",
                token_type(a.subject_token_type.as_deref().unwrap_or("jwt")),
            ));
        }
        None => f.push(("subject_token_type", MTLS_TYPE.to_string())),
    }
    if let Some(p) = &a.actor_token_file {
        f.push(("actor_token", read_token_file(p, "--actor-token-file")?));
        f.push(("actor_token_type", JWT_TYPE.to_string()));
    }
    if let Some(t) = &a.task {
        f.push(("task", t.clone()));
    }
    if let Some(s) = a.expires_in {
        f.push(("expires_in", s.to_string()));
    }
    if let Some(d) = &a.authorization_details {
        f.push(("authorization_details", d.clone()));
    }
    Ok(f)
}

/// Bad usage found before any round trip (exit 2), or `None`.
#[must_use]
pub fn check_exchange_usage(a: &ExchangeArgs) -> Option<String> {
    if a.actor_is_certificate && a.actor_token_file.is_some() {
        return Some("--actor-cert and --actor-token-file name two actors: give one".into());
    }
    if a.actor_is_certificate && a.subject_token_file.is_none() {
        return Some(
            "--actor-cert needs --subject-token-file (the certificate cannot act for itself)"
                .into(),
        );
    }
    if a.audience.trim().is_empty() || a.scope.trim().is_empty() {
        return Some("--audience and --scope must not be empty".into());
    }
    None
}

/// One answer of `/token`.
enum Answer {
    Token(Value),
    /// `use_dpop_nonce` with the nonce to retry with.
    DpopNonce(String),
    Pending {
        id: String,
        interval: u64,
    },
    SlowDown {
        retry_after: Option<u64>,
    },
    Refused(String),
}

async fn send(
    conn: &Connection,
    client: &reqwest::Client,
    form: &[(&'static str, String)],
    dpop: Option<&str>,
) -> Result<Answer, crate::cli::admin::Unreachable> {
    let url = format!("{}/token", conn.url.trim_end_matches('/'));
    let mut rb = client.post(&url).form(form);
    if let Some(p) = dpop {
        rb = rb.header("DPoP", p);
    }
    let r = rb.send().await.map_err(|e| conn.explain(e))?;
    let status = r.status();
    let nonce = r
        .headers()
        .get("DPoP-Nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let retry_after = r
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if status.is_success() && v["access_token"].is_string() {
        return Ok(Answer::Token(v));
    }
    let code = v["error"].as_str().unwrap_or("");
    let desc = v["error_description"].as_str().unwrap_or("");
    Ok(match code {
        "authorization_pending" => match v["approval_id"].as_str() {
            Some(id) => Answer::Pending {
                id: id.to_string(),
                interval: v["interval"]
                    .as_u64()
                    .unwrap_or(DEFAULT_INTERVAL)
                    .clamp(1, MAX_INTERVAL),
            },
            None => Answer::Refused(format!(
                "{status}: authorization_pending without an approval_id"
            )),
        },
        "slow_down" => Answer::SlowDown { retry_after },
        "use_dpop_nonce" if nonce.is_some() && dpop.is_some() => {
            Answer::DpopNonce(nonce.unwrap_or_default())
        }
        "" => Answer::Refused(format!("the broker answered {status}")),
        _ => Answer::Refused(if desc.is_empty() {
            format!("{code} ({status})")
        } else {
            format!("{code}: {desc} ({status})")
        }),
    })
}

/// `tessera token exchange …`: exit 0 with the token on stdout, 1 when
/// refused (the broker's error code and description on stderr).
pub async fn exchange(conn: &Connection, a: &ExchangeArgs, as_json: bool) -> i32 {
    if let Some(m) = check_exchange_usage(a) {
        crate::cli::print_error(&m, 2, as_json);
        return 2;
    }
    let mut base = match form(a) {
        Ok(f) => f,
        Err(m) => return fail(m),
    };
    if a.actor_is_certificate {
        // RFC 8693 wants actor_token with actor_token_type: the
        // certificate's thumbprint, which the broker compares.
        match certificate_thumbprint(&conn.cert) {
            Ok(t) => base.push(("actor_token", t)),
            Err(m) => return fail(m),
        }
        base.push(("actor_token_type", MTLS_TYPE.to_string()));
    }
    let identity =
        a.present_certificate || a.subject_token_file.is_none() || a.actor_is_certificate;
    let client = match conn.https(identity, REQUEST_TIMEOUT) {
        Ok(c) => c,
        Err(m) => return fail(m),
    };
    let key = match a.dpop_key.as_deref().map(dpop_key).transpose() {
        Ok(k) => k,
        Err(m) => return fail(m),
    };
    let token_url = format!("{}/token", conn.url.trim_end_matches('/'));
    let mut nonce: Option<String> = None;
    let mut nonce_retried = false;
    let started = tokio::time::Instant::now();
    let mut approval: Option<String> = None;
    // The broker's interval once it named one (RFC 8628 §3.5: slow_down
    // adds 5 s for good); before that, the RFC's default.
    let mut interval: Option<u64> = None;
    loop {
        let mut f = base.clone();
        if let Some(id) = &approval {
            f.push(("approval_id", id.clone()));
        }
        let proof = match &key {
            Some(k) => match dpop_proof(k, "POST", &token_url, nonce.as_deref(), None) {
                Ok(p) => Some(p),
                Err(m) => return fail(m),
            },
            None => None,
        };
        let answer = match send(conn, &client, &f, proof.as_deref()).await {
            Ok(a) => a,
            Err(m) => return fail(m),
        };
        let wait = match answer {
            Answer::DpopNonce(n) if !nonce_retried => {
                // RFC 9449 §8: once, with the server's nonce
                nonce = Some(n);
                nonce_retried = true;
                continue;
            }
            Answer::DpopNonce(_) => {
                return fail("the broker refused: use_dpop_nonce twice in a row");
            }
            Answer::Token(v) => {
                if as_json {
                    outln!("{v}");
                } else {
                    outln!("{}", v["access_token"].as_str().unwrap_or(""));
                }
                return 0;
            }
            Answer::Refused(m) => {
                let hint = match approval.as_deref() {
                    Some(id) if m.starts_with("access_denied") => {
                        format!(" (approval {id} was denied)")
                    }
                    Some(id) if m.starts_with("expired_token") => {
                        format!(" (approval {id} expired undecided)")
                    }
                    _ => String::new(),
                };
                return fail(format!("the broker refused: {m}{hint}"));
            }
            Answer::Pending { id, interval: i } => {
                if approval.is_none() {
                    errln!(
                        "waiting for a human to approve {id} (an operator runs `tessera approve {id}`); polling every {i}s"
                    );
                }
                approval = Some(id);
                let now = interval.map_or(i, |cur| cur.max(i));
                interval = Some(now);
                now
            }
            Answer::SlowDown {
                retry_after: Some(r),
            } => r.min(MAX_INTERVAL),
            Answer::SlowDown { retry_after: None } => {
                let now = (interval.unwrap_or(DEFAULT_INTERVAL) + SLOW_DOWN_STEP).min(MAX_INTERVAL);
                interval = Some(now);
                now
            }
        };
        let waited = started.elapsed();
        if waited + Duration::from_secs(wait) > a.wait {
            return fail(format!(
                "gave up after {}: still waiting{} (--wait)",
                crate::cli::admin::human(waited.as_secs()),
                approval
                    .as_deref()
                    .map(|id| format!(" for approval {id}"))
                    .unwrap_or_default()
            ));
        }
        errln!(
            "pending{}: {} waited, next poll in {wait}s",
            approval
                .as_deref()
                .map(|id| format!(" {id}"))
                .unwrap_or_default(),
            crate::cli::admin::human(waited.as_secs()),
        );
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

/// The base64url SHA-256 thumbprint of the first certificate in `path`.
fn certificate_thumbprint(path: &Path) -> Result<String, TokenCliError> {
    use rustls_pki_types::pem::PemObject;
    let cert =
        rustls_pki_types::CertificateDer::from_pem_file(path).map_err(|e| TokenCliError::Cert {
            path: path.to_path_buf(),
            source: e,
        })?;
    Ok(crate::identity::peer::thumbprint_sha256(&cert))
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    errln!("error: {msg}");
    1
}

/// What each verification failure means, for people.
fn explain_failure(e: VerifyError) -> &'static str {
    use crate::jose::validate::ClaimError as C;
    use crate::jwks::KeyLookupError as K;
    match e {
        VerifyError::Malformed(_) => "not a compact JWS token (three base64url parts)",
        VerifyError::AlgorithmNotAllowed => "signed with an algorithm Tessera does not use",
        VerifyError::TypMismatch => {
            "the header typ is not at+jwt: not a Tessera access token (an ID token or another issuer's JWT?)"
        }
        VerifyError::MissingKid => "the header has no kid",
        VerifyError::Key(K::UnknownKid | K::AmbiguousKid) => {
            "no key of the broker's JWKS has this kid: signed by another issuer, or by a key since removed"
        }
        VerifyError::Key(_) => "the broker's keys could not be fetched",
        VerifyError::Signature(_) => "the signature does not verify with the broker's key: the token was altered or forged",
        VerifyError::Claims(C::IssuerMismatch) => "iss is not the broker's issuer (see --issuer)",
        VerifyError::Claims(C::AudienceMismatch) => "aud is not the --audience given: the token is for another resource",
        VerifyError::Claims(C::Expired) => "the token has expired: exchange a new one",
        VerifyError::Claims(C::NotYetValid | C::IssuedInFuture) => {
            "the token is not valid yet: check the clocks (skew beyond the leeway)"
        }
        VerifyError::Claims(_) | VerifyError::MalformedClaim(_) => {
            "a claim is missing or malformed: not a token Tessera issued"
        }
        _ => "refused",
    }
}

/// Reads a JSON document from the broker at `path`.
async fn fetch(
    conn: &Connection,
    client: &reqwest::Client,
    path: &str,
) -> Result<Vec<u8>, TokenCliError> {
    let url = format!("{}{path}", conn.url.trim_end_matches('/'));
    let r = client.get(&url).send().await.map_err(|e| conn.explain(e))?;
    if !r.status().is_success() {
        return Err(TokenCliError::Status {
            url,
            status: r.status(),
        });
    }
    r.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| conn.explain(e).into())
}

/// `tessera token verify TOKEN --audience AUD [--issuer ISS]`: checks the
/// token with the resource servers' [`Verifier`] against the JWKS the
/// broker at `--url` publishes (its issuer from its metadata unless
/// `--issuer`). Exit 0 valid, 1 invalid (saying which check failed and
/// what that means), 1 when the broker cannot be asked. Revocation is not
/// checked (say so): `/introspect` knows it.
pub async fn verify(
    conn: &Connection,
    token: &str,
    audience: &str,
    issuer: Option<&str>,
    as_json: bool,
) -> i32 {
    let token = token.trim();
    let client = match conn.https(false, REQUEST_TIMEOUT) {
        Ok(c) => c,
        Err(m) => return fail(m),
    };
    let issuer = match issuer {
        Some(i) => i.to_string(),
        None => {
            let meta = match fetch(conn, &client, "/.well-known/oauth-authorization-server").await {
                Ok(b) => b,
                Err(m) => return fail(format!("cannot read the broker's metadata: {m}")),
            };
            match serde_json::from_slice::<Value>(&meta)
                .ok()
                .and_then(|v| v["issuer"].as_str().map(str::to_string))
            {
                Some(i) => i,
                None => return fail("the broker's metadata names no issuer"),
            }
        }
    };
    let jwks = match fetch(conn, &client, "/jwks.json").await {
        Ok(b) => b,
        Err(m) => return fail(format!("cannot read the broker's JWKS: {m}")),
    };
    let verifier = match Verifier::with_static_jwks(issuer.clone(), audience, &jwks).and_then(|b| {
        b.algorithms(&[Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256])
            .build()
    }) {
        Ok(v) => v,
        Err(e) => return fail(format!("cannot verify against {}: {e}", conn.url)),
    };
    match verifier.verify(token).await {
        Ok(t) => {
            let binding = match (t.x5t_s256(), t.jkt()) {
                (Some(x), _) => format!("certificate (x5t#S256 {x})"),
                (_, Some(j)) => format!("DPoP key (jkt {j})"),
                _ => "none (bearer)".to_string(),
            };
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            if as_json {
                outln!(
                    "{}",
                    json!({"valid": true, "issuer": issuer, "audience": audience, "sub": t.subject(),
                           "actors": t.actors(), "scope": t.scopes(), "task": t.task(), "jti": t.jti(),
                           "exp": t.exp(), "x5t#S256": t.x5t_s256(), "jkt": t.jkt(),
                           "revocation_checked": false})
                );
            } else {
                outln!("VALID: signature, iss, aud, exp and Tessera's claims check out");
                outln!("subject:  {}", t.subject());
                if !t.actors().is_empty() {
                    outln!("actors:   {}", t.actors().join(" <- "));
                }
                outln!(
                    "scope:    {}",
                    t.scopes().iter().cloned().collect::<Vec<_>>().join(" ")
                );
                outln!("audience: {audience}");
                outln!("task:     {}", t.task());
                outln!("jti:      {}", t.jti());
                outln!(
                    "expires:  in {}",
                    crate::cli::admin::human(t.exp().saturating_sub(now))
                );
                outln!("bound to: {binding}");
                outln!("not checked: revocation (ask /introspect, or follow /revocations)");
            }
            0
        }
        Err(e) => {
            let why = explain_failure(e);
            if as_json {
                outln!(
                    "{}",
                    json!({"valid": false, "reason": e.reason(), "error": e.to_string(), "explanation": why})
                );
            } else {
                outln!("INVALID: {} ({}): {why}", e, e.reason());
            }
            1
        }
    }
}
