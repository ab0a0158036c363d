//! `tessera dev issuer` and `tessera dev token`: a local OIDC issuer for
//! trying the OIDC half of Tessera (human users, delegation, re-exchange)
//! from the development config. Only under `[dev] generate_missing = true`:
//! it signs whatever subject and claims it is asked for, which no
//! production configuration may trust.
//!
//! The issuer is the config's `[[issuers]]` entry named `dev` (or
//! `--issuer NAME`): it listens on that entry's `issuer` URL (an
//! `https://127.0.0.1:PORT` address), with a server certificate from the
//! development CA (`keys/dev/ca.pem`, which the entry's `ca` names), serves
//! `/.well-known/openid-configuration` and `/jwks`, and signs with a key
//! kept in `keys/dev/issuer/` so its tokens survive a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::config::{Config, IssuerConfig};
use crate::mint::keyring::{generate_key_file, KeyRing, SigningAlgorithm, SigningKey};
use crate::pki::{Ca, LeafSpec};

/// What `tessera dev issuer` and `tessera dev token` sign.
#[derive(Debug, Clone)]
pub struct TokenArgs {
    /// The config whose `[dev]` and `[[issuers]]` are read.
    pub config: PathBuf,
    /// The `[[issuers]]` entry to be (default `dev`).
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// Extra claims, `path=value` as in `policy explain --claim`.
    pub claims: Vec<String>,
    /// `aud` (default: the entry's first audience).
    pub audience: Option<String>,
    /// Lifetime.
    pub ttl: Duration,
}

/// The development issuer: its entry, signing key and directory.
struct DevIssuer {
    entry: IssuerConfig,
    key: Arc<SigningKey>,
    dev_dir: PathBuf,
}

/// Loads the config, refuses without `[dev]`, finds the entry and the key
/// (generated on first use).
fn load(a: &TokenArgs) -> Result<DevIssuer, DevError> {
    let cfg = Config::load(&a.config)?;
    if !cfg.dev_generate_missing {
        return Err(DevError::NotDev(a.config.clone()));
    }
    let entry = cfg
        .issuers
        .iter()
        .find(|i| i.name == a.issuer)
        .cloned()
        .ok_or_else(|| DevError::NoIssuer {
            config: a.config.clone(),
            name: a.issuer.clone(),
        })?;
    if entry.jwks_uri.is_some() {
        return Err(DevError::JwksUri(entry.name));
    }
    // The same directory `serve` generates the development material in.
    let dev_dir = cfg
        .server
        .tls_cert
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("keys/dev"));
    crate::pki::ensure_dev_material(&dev_dir, &cfg.tokens.signing_keys)
        .map_err(DevError::Material)?;
    let key_dir = dev_dir.join("issuer");
    let alg = SigningAlgorithm::ES256;
    let ring = match KeyRing::load_dir(&key_dir, alg) {
        Ok(r) => r,
        Err(_) => {
            generate_key_file(&key_dir, alg)?;
            KeyRing::load_dir(&key_dir, alg)?
        }
    };
    if !entry.algorithms.contains(&crate::jose::Algorithm::ES256) {
        return Err(DevError::NoEs256(entry.name));
    }
    Ok(DevIssuer {
        entry,
        key: ring.signing_key().clone(),
        dev_dir,
    })
}

/// A signed token for `a.subject` with `a.claims`.
fn sign(d: &DevIssuer, a: &TokenArgs) -> Result<String, DevError> {
    let extra = crate::cli::explain::parse_claims(&a.claims)?;
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let aud = match &a.audience {
        Some(x) => x.clone(),
        None => d.entry.audiences.first().cloned().unwrap_or_default(),
    };
    let mut claims = serde_json::Map::new();
    for (k, v) in extra {
        claims.insert(k, v);
    }
    for (k, v) in [
        ("iss", json!(d.entry.issuer)),
        ("sub", json!(a.subject)),
        ("aud", json!(aud)),
        ("iat", json!(now)),
        ("nbf", json!(now)),
        ("exp", json!(now + a.ttl.as_secs().max(1))),
        ("jti", json!(uuid::Uuid::new_v4().to_string())),
    ] {
        claims.insert(k.to_string(), v);
    }
    let header = json!({"alg": "ES256", "kid": d.key.kid(), "typ": "JWT"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string())
    );
    let sig = d.key.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// `tessera dev token …`: prints one token signed by the dev issuer's key
/// (the issuer itself must be running for the broker to verify it).
pub fn token(a: &TokenArgs) -> i32 {
    match load(a).and_then(|d| sign(&d, a)) {
        Ok(t) => {
            outln!("{t}");
            0
        }
        Err(m) => {
            errln!("error: {m}");
            1
        }
    }
}

/// Where the entry's `issuer` URL says to listen: `https://HOST:PORT`
/// with a loopback IP (the dev issuer is never reachable from elsewhere).
fn listen_addr(issuer: &str) -> Result<SocketAddr, DevError> {
    let rest = issuer.strip_prefix("https://").ok_or(DevError::NotHttps)?;
    let hostport = rest.trim_end_matches('/');
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|_| DevError::NotIpPort(issuer.to_string()))?;
    if !addr.ip().is_loopback() {
        return Err(DevError::NotLoopback(addr.ip()));
    }
    Ok(addr)
}

/// Why `tessera dev issuer|token` cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The configuration is not a development one.
    #[error("{}: `tessera dev` runs only with [dev] generate_missing = true (it signs any subject: never trust it in production)", .0.display())]
    NotDev(PathBuf),
    /// No `[[issuers]]` entry of that name.
    #[error("{}: no [[issuers]] entry named `{name}` (the development config has one named `dev`)", config.display())]
    NoIssuer {
        /// The config file.
        config: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// The entry sets `jwks_uri`.
    #[error("issuer `{0}` sets jwks_uri: the dev issuer is found by discovery, remove it")]
    JwksUri(String),
    /// The entry's algorithms leave out ES256.
    #[error("issuer `{0}`: its algorithms must include ES256 (the dev issuer signs with it)")]
    NoEs256(String),
    /// The development material cannot be generated.
    #[error("development material: {0}")]
    Material(crate::pki::PkiError),
    /// The dev issuer's key cannot be generated or loaded.
    #[error(transparent)]
    Key(#[from] crate::mint::keyring::KeyRingError),
    /// A `--claim` argument.
    #[error(transparent)]
    Claim(#[from] crate::cli::explain::ClaimArgError),
    /// The token cannot be signed.
    #[error(transparent)]
    Sign(#[from] crate::mint::MintError),
    /// The entry's issuer URL is not https.
    #[error("the dev issuer URL must be https://127.0.0.1:PORT")]
    NotHttps,
    /// The entry's issuer URL is not a loopback IP and a port.
    #[error(
        "the dev issuer URL must be https://127.0.0.1:PORT (a loopback IP and a port), not {0}"
    )]
    NotIpPort(String),
    /// The entry's issuer URL is not on loopback.
    #[error("the dev issuer listens on loopback only, not {0}")]
    NotLoopback(std::net::IpAddr),
    /// A development CA file cannot be read.
    #[error("{}: {source}", path.display())]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The development CA cannot issue the issuer's certificate.
    #[error(transparent)]
    Pki(crate::pki::PkiError),
    /// The TLS configuration is refused.
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    /// The listener cannot bind.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

fn tls(dev_dir: &Path, addr: SocketAddr) -> Result<Arc<rustls::ServerConfig>, DevError> {
    let read = |f: &str| {
        std::fs::read_to_string(dev_dir.join(f)).map_err(|e| DevError::ReadCa {
            path: dev_dir.join(f),
            source: e,
        })
    };
    let ca = Ca::from_pem(
        &read(crate::pki::DEV_CA_CERT)?,
        &read(crate::pki::DEV_CA_KEY)?,
    )
    .map_err(DevError::Pki)?;
    let leaf = ca
        .issue(&LeafSpec::server(&["localhost"], &[addr.ip()]))
        .map_err(DevError::Pki)?;
    let chain = vec![rustls_pki_types::CertificateDer::from(
        leaf.cert_der.clone(),
    )];
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf.key_der.clone().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// `tessera dev issuer …`: serves discovery and the JWKS on the entry's
/// URL until ctrl-c / SIGTERM, after printing one token for `a.subject`
/// on stdout (more with `tessera dev token`).
pub async fn issuer(a: &TokenArgs) -> i32 {
    let fail = |m: DevError| {
        errln!("error: {m}");
        1
    };
    let d = match load(a) {
        Ok(d) => d,
        Err(m) => return fail(m),
    };
    let addr = match listen_addr(&d.entry.issuer) {
        Ok(x) => x,
        Err(m) => return fail(m),
    };
    let tls = match tls(&d.dev_dir, addr) {
        Ok(t) => t,
        Err(m) => return fail(m),
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => return fail(DevError::Listen { addr, source: e }),
    };
    let iss = d.entry.issuer.trim_end_matches('/').to_string();
    let discovery = json!({
        "issuer": d.entry.issuer, "jwks_uri": format!("{iss}/jwks"),
        "id_token_signing_alg_values_supported": ["ES256"],
        "subject_types_supported": ["public"], "response_types_supported": ["id_token"],
    });
    let jwks = json!({"keys": [d.key.public_jwk()]});
    let router = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let v = discovery.clone();
                async move { Json(v) }
            }),
        )
        .route(
            "/jwks",
            get(move || {
                let v = jwks.clone();
                async move { Json(v) }
            }),
        );
    let token = match sign(&d, a) {
        Ok(t) => t,
        Err(m) => return fail(m),
    };
    errln!(
        "dev issuer `{}` serving {iss} (discovery, /jwks); a token for {} on stdout; more: tessera dev token --subject …; ctrl-c stops",
        d.entry.name,
        a.subject
    );
    outln!("{token}");
    crate::server::serve_https(
        listener,
        tls,
        router,
        crate::config::Limits::default(),
        async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{signal, SignalKind};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
        },
    )
    .await;
    0
}

/// The lines `serve` prints on stderr once a development broker (`[dev]
/// generate_missing = true`) is ready: the next three commands to try.
/// `--url` is named only when the broker is not on the CLI's default.
#[must_use]
pub fn banner(addr: SocketAddr) -> Vec<String> {
    let url = format!("https://{addr}");
    let flag = if url == "https://127.0.0.1:8443" {
        String::new()
    } else {
        format!(" --url {url}")
    };
    vec![
        format!("Tessera (development config) is ready on {url}. Next, in another terminal:"),
        format!("  1. a task token for the demo agent:  tessera token exchange{flag} --cert keys/dev/agent.pem --key keys/dev/agent-key.pem --audience https://api.example.com --scope tickets:read"),
        "  2. a local OIDC issuer for human users:  tessera dev issuer --subject user:alice  (docs/quickstart-dev.md)".to_string(),
        format!("  3. what happened, from the audit trail:  tessera audit tail{flag} -n 5"),
    ]
}
