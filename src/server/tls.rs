//! rustls configuration: TLS 1.2+, client certificates optional at the
//! handshake but verified against the configured CAs when presented.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Reads every certificate in a PEM file; the error names the key and path.
pub fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{key}: cannot read `{}`: {e}", path.display()))?;
    let certs: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{key}: `{}` is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key}: `{}` holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Builds the HTTPS listener's TLS configuration.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &[std::path::PathBuf],
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = read_certs("server.tls_cert", cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("server.tls_key: cannot read `{}`: {e}", key.display()))?;
    let mut roots = RootCertStore::empty();
    for (i, p) in client_ca.iter().enumerate() {
        for c in read_certs(&format!("server.client_ca[{i}]"), p)? {
            roots
                .add(c)
                .map_err(|e| format!("server.client_ca[{i}]: `{}`: {e}", p.display()))?;
        }
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("server.client_ca: {e}"))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("server.tls_cert/server.tls_key: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumed sessions reuse the original authentication (RFC 8446 §2.2):
    // a session resumed after the leaf expired, was revoked, or its CA left
    // the bundle would still carry the old identity (SECURITY #102). No
    // TLS 1.3 tickets and no TLS 1.2 session cache: every connection
    // presents and verifies its certificate again.
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(cfg))
}
