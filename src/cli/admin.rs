// One file: every admin verb is a thin request/print pair over one client and
// one table printer; split per verb, each file would be mostly imports.
//! Operator verbs that talk to a running broker over the admin API:
//! `revoke`, `grant create|list|revoke`, `approvals list`, `approve`, `deny`. mTLS with the operator's
//! certificate; the broker decides whether that identity is an operator.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

/// How long one admin call may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to reach the broker.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Base URL (`https://127.0.0.1:8443`).
    pub url: String,
    /// Operator certificate (PEM).
    pub cert: PathBuf,
    /// Operator key (PEM).
    pub key: PathBuf,
    /// CA that signed the broker's server certificate (PEM).
    pub ca: PathBuf,
}

/// Builds an HTTPS client trusting `ca` only and presenting `chain`/`key`.
pub fn mtls_client(
    ca: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    h2: bool,
    timeout: Duration,
) -> Result<reqwest::Client, ConnError> {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let cfg =
        crate::jwks::http::tls_client_config(&ca, false, identity, alpn).map_err(ConnError::Tls)?;
    let rb = reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout);
    let rb = if h2 {
        rb.http2_prior_knowledge()
    } else {
        rb.http1_only()
    };
    rb.build().map_err(ConnError::Client)
}

/// Why the CLI could not get an answer from the broker (or the answer was
/// a refusal): what the operator is told, after `error: `.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// `--url` is not an `https://HOST[:PORT]` URL.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A connection file cannot be read; for a relative path, where it was
    /// looked for (the defaults are relative to the current directory).
    #[error(
        "cannot read {what} {}{}: {source}; give {what} (or run from the checkout for the dev material)",
        path.display(),
        looked.as_ref().map(|l| format!(" (looked at {})", l.display())).unwrap_or_default()
    )]
    Unreadable {
        /// `--ca`, `--cert` or `--key`.
        what: &'static str,
        /// The file as given.
        path: PathBuf,
        /// The absolute path looked at, when `path` is relative.
        looked: Option<PathBuf>,
        /// Why.
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file that is not PEM.
    #[error("{what} {} is not PEM: {source}", path.display())]
    NotPem {
        /// `--ca` or `--cert`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file without a certificate.
    #[error("{what} {} holds no certificate", path.display())]
    NoCertificate {
        /// `--ca` or `--cert`.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The TLS client configuration is refused.
    #[error("{0}")]
    Tls(&'static str),
    /// The HTTPS client cannot be built.
    #[error("{0}")]
    Client(reqwest::Error),
    /// The request did not get an answer.
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    /// 401 or 403: the certificate's identity is not an operator.
    #[error("operator certificate not authorised (its identity is not in [admin] subjects)")]
    NotAuthorised,
    /// 503 to a change: it was not made (the broker's message).
    #[error("the change was not made: {0}")]
    NotMade(String),
    /// Any other refusal: the broker's message (or its status).
    #[error("{0}")]
    Refused(String),
    /// An answer that is not what the broker sends.
    #[error("unexpected {what} from the broker: {source}")]
    Unexpected {
        /// What was asked for.
        what: &'static str,
        /// Why it does not parse.
        source: serde_json::Error,
    },
}

/// Why a request got no answer from the broker, for people.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// Nothing listens at `--url`.
    #[error("cannot reach {url}: connection refused")]
    ConnectionRefused {
        /// The broker URL.
        url: String,
    },
    /// The broker's certificate is not one `--ca` vouches for.
    #[error("TLS with {url} failed: the broker's certificate not trusted (check --ca): {source}")]
    Untrusted {
        /// The broker URL.
        url: String,
        /// The TLS error.
        source: rustls::Error,
    },
    /// Another TLS failure.
    #[error("TLS with {url} failed: {source}")]
    Tls {
        /// The broker URL.
        url: String,
        /// The TLS error.
        source: rustls::Error,
    },
    /// No answer in time.
    #[error("cannot reach {url}: timed out")]
    Timeout {
        /// The broker URL.
        url: String,
    },
    /// Anything else.
    #[error("cannot reach {url}: {source}")]
    Other {
        /// The broker URL.
        url: String,
        /// The HTTP client's error.
        source: reqwest::Error,
    },
}

/// [`ConnError::Unreadable`] for `p`.
fn cannot_read(what: &'static str, p: &Path, e: rustls_pki_types::pem::Error) -> ConnError {
    let looked = if p.is_relative() {
        std::env::current_dir().ok().map(|d| d.join(p))
    } else {
        None
    };
    ConnError::Unreadable {
        what,
        path: p.to_path_buf(),
        looked,
        source: e,
    }
}

fn read_pem_certs(what: &'static str, p: &Path) -> Result<Vec<CertificateDer<'static>>, ConnError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(p)
        .map_err(|e| cannot_read(what, p, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| ConnError::NotPem {
            what,
            path: p.to_path_buf(),
            source: e,
        })?;
    if certs.is_empty() {
        return Err(ConnError::NoCertificate {
            what,
            path: p.to_path_buf(),
        });
    }
    Ok(certs)
}

impl Connection {
    /// Checks `url` before any round trip: the admin API is served over
    /// HTTPS only, so `127.0.0.1:8443` is bad usage ("missing https://").
    pub fn new(url: &str, cert: PathBuf, key: PathBuf, ca: PathBuf) -> Result<Self, UrlError> {
        check_url(url)?;
        Ok(Connection {
            url: url.to_string(),
            cert,
            key,
            ca,
        })
    }

    fn client(&self) -> Result<reqwest::Client, ConnError> {
        self.https(true, ADMIN_TIMEOUT)
    }

    /// An HTTPS client trusting `--ca` only, presenting `--cert`/`--key`
    /// when `identity` (the `tessera token` verbs: a workload's
    /// certificate, or none for a bearer subject token).
    pub fn https(&self, identity: bool, timeout: Duration) -> Result<reqwest::Client, ConnError> {
        let ca = read_pem_certs("--ca", &self.ca)?;
        let id = if identity {
            let chain = read_pem_certs("--cert", &self.cert)?;
            let key = PrivateKeyDer::from_pem_file(&self.key)
                .map_err(|e| cannot_read("--key", &self.key, e))?;
            Some((chain, key))
        } else {
            None
        };
        mtls_client(ca, id, false, timeout)
    }

    /// Why a request to the broker failed, for people (connection refused,
    /// an untrusted certificate, a timeout).
    pub fn explain(&self, e: reqwest::Error) -> Unreachable {
        self.describe(e)
    }

    /// Says what went wrong with TLS; a certificate the `--ca` does not
    /// vouch for is named as such.
    fn tls_failed(&self, tls: &rustls::Error) -> Unreachable {
        let (url, source) = (self.url.clone(), tls.clone());
        match tls {
            rustls::Error::InvalidCertificate(_) => Unreachable::Untrusted { url, source },
            _ => Unreachable::Tls { url, source },
        }
    }

    fn describe(&self, e: reqwest::Error) -> Unreachable {
        // The rustls error sits inside io::Errors (wrapped twice by hyper
        // and tokio-rustls), which carry it as their payload, not a source.
        let mut src: Option<&dyn std::error::Error> = e.source();
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::ConnectionRefused {
                    return Unreachable::ConnectionRefused {
                        url: self.url.clone(),
                    };
                }
                if let Some(inner) = io.get_ref() {
                    src = Some(inner);
                    continue;
                }
            }
            if let Some(tls) = s.downcast_ref::<rustls::Error>() {
                return self.tls_failed(tls);
            }
            src = s.source();
        }
        if e.is_timeout() {
            return Unreachable::Timeout {
                url: self.url.clone(),
            };
        }
        Unreachable::Other {
            url: self.url.clone(),
            source: e,
        }
    }

    /// Sends one admin request; `Ok(body)` on 2xx, `Err(message)` otherwise.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ConnError> {
        let client = self.client()?;
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut rb = client.request(method.clone(), &url);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let change = method != reqwest::Method::GET;
        let resp = rb.send().await.map_err(|e| self.describe(e))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let msg = v
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("the broker answered {status}"));
        Err(match status.as_u16() {
            403 if v.get("error").and_then(Value::as_str) == Some("self_approval") => {
                ConnError::Refused(msg)
            }
            401 | 403 => ConnError::NotAuthorised,
            503 if change => ConnError::NotMade(msg),
            _ => ConnError::Refused(msg),
        })
    }
}

/// `t` relative to now: `in 29m 12s`, `2h 5m ago`.
fn fmt_time(t: u64) -> String {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    if t > now {
        format!("in {}", human(t - now))
    } else {
        format!("{} ago", human(now - t))
    }
}

/// `t` as an absolute UTC time and relative to now:
/// `2026-12-05T16:40:00Z (in 30m)`.
fn fmt_until(t: u64) -> String {
    let abs = crate::audit::rfc3339_millis(i128::from(t) * 1000);
    format!(
        "{}Z ({})",
        abs.trim_end_matches('Z').trim_end_matches(".000"),
        fmt_time(t)
    )
}

/// A duration for people, to two units: `45s`, `29m 12s`, `2h 5m`, `3d 4h`.
pub fn human(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) if sec == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}

/// What to revoke.
#[derive(Debug, Clone)]
pub struct RevokeArgs {
    /// `jti`, `subject`, `task` or `grant`.
    pub kind: &'static str,
    /// The value.
    pub value: String,
    /// Why.
    pub reason: Option<String>,
    /// Kill switch duration (subject only).
    pub block_for: Option<String>,
}

/// Exit code of a revocation that is in force on the primary but was
/// acknowledged by fewer replicas than `[store] revocation_replicas`
/// (distinct from 1, "not made").
pub const EXIT_NOT_DURABLE: i32 = 3;

/// For a revocation answer that says `"durable": false`: prints why on
/// stderr and returns [`EXIT_NOT_DURABLE`]; else 0.
fn durability_exit(v: &Value) -> i32 {
    if v["durable"].as_bool() != Some(false) {
        return 0;
    }
    let acked = v["replicas_acked"].as_u64().unwrap_or(0);
    let required = v["replicas_required"].as_u64().unwrap_or(0);
    errln!(
        "warning: not durable: the revocation is in force on the primary, but only {acked} of \
         {required} required replicas acknowledged it; a failover now could lose it (check the \
         replicas, then repeat the revocation: it is idempotent)"
    );
    EXIT_NOT_DURABLE
}

/// Prints an error and returns exit code 1.
fn fail(msg: impl std::fmt::Display) -> i32 {
    errln!("error: {msg}");
    1
}

/// `tessera revoke ...`.
pub async fn revoke(conn: &Connection, a: RevokeArgs, as_json: bool) -> i32 {
    let body =
        json!({"kind": a.kind, "value": a.value, "reason": a.reason, "block_for": a.block_for});
    match conn
        .call(reqwest::Method::POST, "/admin/v1/revocations", Some(body))
        .await
    {
        Ok(v) => {
            if as_json {
                outln!("{v}");
            } else {
                let r = &v["revocation"];
                outln!(
                    "revoked {} {} (entry expires {}; feed cursor {})",
                    r["kind"].as_str().unwrap_or(""),
                    r["value"].as_str().unwrap_or(""),
                    fmt_time(r["expires_at"].as_u64().unwrap_or(0)),
                    v["cursor"].as_str().unwrap_or("")
                );
                if let Some(u) = v["blocked_until"].as_u64() {
                    outln!(
                        "new exchanges for it are refused until {} (undo: tessera unblock --subject {})",
                        fmt_until(u),
                        r["value"].as_str().unwrap_or("")
                    );
                }
                if let (Some(true), Some(a)) =
                    (v["durable"].as_bool(), v["replicas_acked"].as_u64())
                {
                    outln!(
                        "durable: {a} of {} required replicas acknowledged it",
                        v["replicas_required"].as_u64().unwrap_or(0)
                    );
                }
            }
            print_warnings(&v);
            durability_exit(&v)
        }
        Err(m) => fail(m),
    }
}

/// The broker's `warnings` of an answer, one `warning: …` line each on
/// stderr (the change was made).
fn print_warnings(v: &Value) {
    for w in v["warnings"].as_array().into_iter().flatten() {
        errln!("warning: {}", w.as_str().unwrap_or(""));
    }
}

/// `tessera unblock --subject S [--reason TEXT]`.
pub async fn unblock(
    conn: &Connection,
    subject: &str,
    reason: Option<String>,
    as_json: bool,
) -> i32 {
    match conn
        .call(
            reqwest::Method::POST,
            "/admin/v1/unblock",
            Some(json!({"subject": subject, "reason": reason})),
        )
        .await
    {
        Ok(v) => {
            if as_json {
                outln!("{v}");
            } else {
                outln!(
                    "unblocked {subject}: new exchanges are accepted again on every replica \
                     (tokens revoked with the block stay revoked)"
                );
            }
            0
        }
        Err(m) => fail(m),
    }
}

/// `tessera blocks list`.
pub async fn blocks_list(conn: &Connection, as_json: bool) -> i32 {
    match conn
        .call(reqwest::Method::GET, "/admin/v1/blocks", None)
        .await
    {
        Ok(v) => {
            if as_json {
                outln!("{v}");
                return 0;
            }
            let list = v["blocks"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                outln!("no blocks in force");
                return 0;
            }
            outln!("{:<60}  BLOCKED UNTIL", "SUBJECT");
            for b in &list {
                outln!(
                    "{:<60}  {}",
                    b["subject"].as_str().unwrap_or(""),
                    fmt_until(b["until"].as_u64().unwrap_or(0))
                );
            }
            outln!("{}", count(list.len(), "block", "blocks"));
            0
        }
        Err(m) => fail(m),
    }
}

/// `tessera revocations list`: the live entries of the revocation feed.
pub async fn revocations_list(conn: &Connection, as_json: bool) -> i32 {
    match conn.call(reqwest::Method::GET, "/revocations", None).await {
        Ok(v) => {
            if as_json {
                outln!("{v}");
                return 0;
            }
            let list = v["entries"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                outln!("no revocations in force");
                return 0;
            }
            // -o wide: values in full; else cut to fit 120 columns
            let w = if crate::cli::wide_output() { 60 } else { 40 };
            outln!(
                "{:<8}  {:<w$}  {:<24}  KEPT UNTIL",
                "KIND",
                "VALUE",
                "REVOKED"
            );
            for e in &list {
                let value = e["value"].as_str().unwrap_or("");
                let value = if crate::cli::wide_output() {
                    value.to_string()
                } else {
                    crate::cli::fit(value, w)
                };
                outln!(
                    "{:<8}  {:<w$}  {:<24}  {}",
                    e["kind"].as_str().unwrap_or(""),
                    value,
                    fmt_time(e["revoked_at"].as_u64().unwrap_or(0)),
                    fmt_until(e["expires_at"].as_u64().unwrap_or(0))
                );
            }
            outln!("{}", count(list.len(), "revocation", "revocations"));
            0
        }
        Err(m) => fail(m),
    }
}

/// `tessera store recover --from-audit FILE | --accept-loss`.
pub async fn store_recover(
    conn: &Connection,
    from_audit: Option<&Path>,
    accept_loss: bool,
    as_json: bool,
) -> i32 {
    let body = match from_audit {
        Some(path) => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
            };
            // The chain tells whether records were removed; the plan is made
            // either way (what is there still has to be restored).
            match crate::audit::verify_file(path) {
                Ok(r) if r.intact() => {}
                Ok(r) => errln!(
                    "warning: {}: the hash chain is broken ({:?}); restoring what it holds",
                    path.display(),
                    r.broken
                ),
                Err(e) => errln!("warning: {e}"),
            }
            let plan = match crate::audit::restore::RestorePlan::from_lines(text.lines()) {
                Ok(p) => p,
                Err(e) => return fail(format!("{}: {e}", path.display())),
            };
            json!({"plan": plan, "source": path.display().to_string()})
        }
        None if accept_loss => json!({"accept_loss": true}),
        None => return fail("give --from-audit FILE or --accept-loss"),
    };
    match conn
        .call(reqwest::Method::POST, "/admin/v1/store/recover", Some(body))
        .await
    {
        Ok(v) => {
            if as_json {
                outln!("{v}");
                return 0;
            }
            let r = &v["recovered"];
            let n = |k: &str| usize::try_from(r[k].as_u64().unwrap_or(0)).unwrap_or(0);
            if accept_loss {
                outln!(
                    "accepted the loss: nothing restored; serving again (epoch {})",
                    r["epoch"].as_str().unwrap_or("")
                );
            } else {
                outln!(
                    "restored {} and {} ({} and {} left out: every token they covered has expired); \
                     serving again (epoch {})",
                    count(n("revocations"), "revocation", "revocations"),
                    count(n("blocks"), "block", "blocks"),
                    count(n("expired"), "revocation", "revocations"),
                    count(n("blocks_over"), "block", "blocks"),
                    r["epoch"].as_str().unwrap_or("")
                );
            }
            0
        }
        Err(m) => fail(m),
    }
}

/// The broker URL of the operator verbs: `https://HOST[:PORT]`, nothing
/// else (an error naming what is wrong otherwise).
pub fn check_url(url: &str) -> Result<(), UrlError> {
    let shown: String = url.chars().take(200).collect();
    if !url.contains("://") {
        return Err(UrlError::NoScheme(shown));
    }
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "https" && u.host().is_some() => Ok(()),
        Ok(u) if u.scheme() != "https" => Err(UrlError::NotHttps {
            url: shown,
            scheme: u.scheme().to_string(),
        }),
        Ok(_) => Err(UrlError::NoHost(shown)),
        Err(e) => Err(UrlError::NotAUrl {
            url: shown,
            source: e,
        }),
    }
}

/// What is wrong with `--url` (each shows its first 200 characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// No scheme at all (`127.0.0.1:8443`).
    #[error("--url `{0}`: missing https:// (write https://{0})")]
    NoScheme(String),
    /// Another scheme than https.
    #[error("--url `{url}`: the admin API is served over https:// only, not {scheme}://")]
    NotHttps {
        /// The URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// No host.
    #[error("--url `{0}`: no host")]
    NoHost(String),
    /// Not a URL.
    #[error("--url `{url}` is not a URL: {source}")]
    NotAUrl {
        /// The URL.
        url: String,
        /// Why.
        source: <reqwest::Url as std::str::FromStr>::Err,
    },
}

/// `1 record`, `2 records`.
pub fn count<N: TryInto<u64> + std::fmt::Display + Copy>(n: N, one: &str, many: &str) -> String {
    let is_one = n.try_into().ok() == Some(1);
    format!("{n} {}", if is_one { one } else { many })
}

/// `tessera grant create ...` arguments.
#[derive(Debug, Clone)]
pub struct GrantArgs {
    /// Subject.
    pub subject: String,
    /// Space-separated scopes.
    pub scope: String,
    /// Audience.
    pub audience: String,
    /// Lifetime.
    pub ttl: String,
    /// Uses.
    pub uses: Option<u32>,
    /// Task.
    pub task: Option<String>,
    /// Refuse a grant no policy could use (`--strict`).
    pub strict: bool,
}

/// A grant's `USES LEFT` cell: `remaining/uses`, or `unlimited`.
fn uses_left(g: &Value) -> String {
    match (g["remaining"].as_u64(), g["uses"].as_u64()) {
        (Some(r), Some(u)) => format!("{r}/{u}"),
        _ => "unlimited".into(),
    }
}

fn print_grants(gs: &[Value]) {
    if !crate::cli::wide_output() {
        // 36 + 30 + 24 + 9 + 13 + 4 separators of 2 = 120 (-o wide: audience too)
        outln!(
            "{:<36}  {:<30}  {:<24}  {:<9}  EXPIRES",
            "ID",
            "SUBJECT",
            "SCOPES",
            "USES LEFT"
        );
        for g in gs {
            outln!(
                "{:<36}  {:<30}  {:<24}  {:<9}  {}",
                g["id"].as_str().unwrap_or(""),
                crate::cli::fit(g["subject"].as_str().unwrap_or(""), 30),
                crate::cli::fit(&strings(&g["scopes"]), 24),
                uses_left(g),
                fmt_time(g["expires_at"].as_u64().unwrap_or(0))
            );
        }
        return;
    }
    outln!(
        "{:<36}  {:<40}  {:<28}  {:<24}  {:<9}  EXPIRES",
        "ID",
        "SUBJECT",
        "AUDIENCE",
        "SCOPES",
        "USES LEFT"
    );
    for g in gs {
        outln!(
            "{:<36}  {:<40}  {:<28}  {:<24}  {:<9}  {}",
            g["id"].as_str().unwrap_or(""),
            g["subject"].as_str().unwrap_or(""),
            g["audience"].as_str().unwrap_or(""),
            strings(&g["scopes"]),
            uses_left(g),
            fmt_time(g["expires_at"].as_u64().unwrap_or(0))
        );
    }
}

/// `tessera grant create`.
pub async fn grant_create(conn: &Connection, a: GrantArgs, as_json: bool) -> i32 {
    let body = json!({"subject": a.subject, "scope": a.scope, "audience": a.audience, "ttl": a.ttl, "uses": a.uses, "task": a.task, "strict": a.strict});
    match conn
        .call(reqwest::Method::POST, "/admin/v1/grants", Some(body))
        .await
    {
        Ok(v) => {
            if as_json {
                outln!("{v}");
            } else {
                outln!("created grant {}", v["id"].as_str().unwrap_or(""));
                print_grants(std::slice::from_ref(&v));
            }
            print_warnings(&v);
            0
        }
        Err(m) => fail(m),
    }
}

/// `tessera grant list`.
pub async fn grant_list(conn: &Connection, subject: Option<String>, as_json: bool) -> i32 {
    let path = match subject {
        Some(s) => format!(
            "/admin/v1/grants?subject={}",
            percent_encoding::utf8_percent_encode(&s, percent_encoding::NON_ALPHANUMERIC)
        ),
        None => "/admin/v1/grants".to_string(),
    };
    match conn.call(reqwest::Method::GET, &path, None).await {
        Ok(v) => {
            if as_json {
                outln!("{v}");
            } else {
                let gs = v["grants"].as_array().cloned().unwrap_or_default();
                if gs.is_empty() {
                    outln!("no live grants");
                } else {
                    print_grants(&gs);
                }
            }
            0
        }
        Err(m) => fail(m),
    }
}

/// `tessera grant revoke ID`.
pub async fn grant_revoke(conn: &Connection, id: &str, as_json: bool) -> i32 {
    if uuid::Uuid::parse_str(id).is_err() {
        errln!("error: `{id}` is not a grant id (a UUID)");
        return 2;
    }
    match conn
        .call(
            reqwest::Method::DELETE,
            &format!("/admin/v1/grants/{id}"),
            None,
        )
        .await
    {
        Ok(v) => {
            if as_json {
                outln!("{v}");
            } else {
                outln!("revoked grant {id} and every token issued under it");
            }
            durability_exit(&v)
        }
        Err(m) => fail(m),
    }
}

/// `tessera reload`: the broker at `--url` re-reads its configuration file
/// (what SIGHUP does; one replica).
pub async fn reload(conn: &Connection, as_json: bool) -> i32 {
    match conn
        .call(reqwest::Method::POST, "/admin/v1/reload", None)
        .await
    {
        Ok(v) => {
            if as_json {
                outln!("{v}");
            } else {
                outln!(
                    "reloaded (generation {}): {}",
                    v["generation"],
                    v["changes"].as_str().unwrap_or("")
                );
                outln!("signing kid: {}", v["signing_kid"].as_str().unwrap_or("-"));
            }
            0
        }
        Err(m) => fail(m),
    }
}

fn strings(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn print_approvals(list: &[Value]) {
    if !crate::cli::wide_output() {
        // 36 + 8 + 5 + 18 + 12 + 10 + 19 + 6 separators of 2 = 120: who
        // decided stays in the narrow table (accountability); -o wide has
        // every column in full.
        outln!(
            "{:<36}  {:<8}  {:<5}  {:<18}  {:<12}  {:<10}  DECIDED BY",
            "ID",
            "STATE",
            "AGE",
            "REQUESTER",
            "SCOPES",
            "TASK"
        );
        for a in list {
            let mut state = a["state"].as_str().unwrap_or("").to_string();
            if a["expired"].as_bool() == Some(true) && (state == "pending" || state == "approved") {
                state = "expired".into();
            }
            outln!(
                "{:<36}  {:<8}  {:<5}  {:<18}  {:<12}  {:<10}  {}",
                a["id"].as_str().unwrap_or(""),
                state,
                human(a["age"].as_u64().unwrap_or(0)),
                crate::cli::fit(a["requester"].as_str().unwrap_or(""), 18),
                crate::cli::fit(&strings(&a["scopes"]), 12),
                crate::cli::fit(a["task"].as_str().unwrap_or("-"), 10),
                crate::cli::fit(a["decided_by"].as_str().unwrap_or("-"), 19),
            );
        }
        return;
    }
    outln!(
        "{:<36}  {:<9}  {:<5}  {:<36}  {:<22}  {:<36}  {:<16}  {:<24}  {:<28}  {:<22}  AUTHORIZATION_DETAILS",
        "ID", "STATE", "AGE", "REQUESTER", "OWNER", "ON BEHALF OF", "TASK", "SCOPES", "AUDIENCE", "DECIDED BY"
    );
    for a in list {
        let mut state = a["state"].as_str().unwrap_or("").to_string();
        if a["expired"].as_bool() == Some(true) && (state == "pending" || state == "approved") {
            state = "expired".into();
        }
        let behalf = match strings(&a["actors"]).as_str() {
            "" => a["subject"].as_str().unwrap_or("").to_string(),
            actors => format!("{} (via {actors})", a["subject"].as_str().unwrap_or("")),
        };
        let details = match &a["authorization_details"] {
            Value::Null => "-".to_string(),
            d => d.to_string(),
        };
        outln!(
            "{:<36}  {:<9}  {:<5}  {:<36}  {:<22}  {:<36}  {:<16}  {:<24}  {:<28}  {:<22}  {}",
            a["id"].as_str().unwrap_or(""),
            state,
            human(a["age"].as_u64().unwrap_or(0)),
            a["requester"].as_str().unwrap_or(""),
            a["owner"].as_str().unwrap_or("-"),
            behalf,
            a["task"].as_str().unwrap_or("-"),
            strings(&a["scopes"]),
            a["audience"].as_str().unwrap_or(""),
            a["decided_by"].as_str().unwrap_or("-"),
            details,
        );
    }
}

/// `tessera approvals list [--all]`.
pub async fn approvals_list(conn: &Connection, all: bool, as_json: bool) -> i32 {
    let path = if all {
        "/admin/v1/approvals?state=all"
    } else {
        "/admin/v1/approvals"
    };
    match conn.call(reqwest::Method::GET, path, None).await {
        Ok(v) => {
            if as_json {
                outln!("{v}");
            } else {
                let list = v["approvals"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    outln!("no {}approvals", if all { "retained " } else { "pending " });
                } else {
                    print_approvals(&list);
                }
            }
            0
        }
        Err(m) => fail(m),
    }
}

/// `tessera approve ID [--reason TEXT]` (`approve = true`) and
/// `tessera deny ID [--reason TEXT]`.
pub async fn approval_decide(
    conn: &Connection,
    id: &str,
    approve: bool,
    reason: Option<String>,
    as_json: bool,
) -> i32 {
    if uuid::Uuid::parse_str(id).is_err() {
        errln!("error: `{id}` is not an approval id (a UUID)");
        return 2;
    }
    let verb = if approve { "approve" } else { "deny" };
    match conn
        .call(
            reqwest::Method::POST,
            &format!("/admin/v1/approvals/{id}/{verb}"),
            Some(json!({ "reason": reason })),
        )
        .await
    {
        Ok(v) => {
            if as_json {
                outln!("{v}");
            } else if approve {
                outln!(
                    "approved {id}: {} may now receive {} for {} (one token; the approval expires {})",
                    v["requester"].as_str().unwrap_or(""),
                    strings(&v["scopes"]),
                    v["audience"].as_str().unwrap_or(""),
                    fmt_time(v["expires_at"].as_u64().unwrap_or(0))
                );
            } else {
                outln!(
                    "denied {id}: {} will get access_denied",
                    v["requester"].as_str().unwrap_or("")
                );
            }
            0
        }
        Err(m) => fail(m),
    }
}
