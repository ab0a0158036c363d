//! rustls configuration: TLS 1.2+, client certificates optional at the
//! handshake but verified against the configured CAs when presented.

use std::path::Path;
use std::sync::Arc;

use std::collections::BTreeMap;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::UnixTime;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Reads every certificate in a PEM file; the error names the key and path.
pub fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let file = |source| TlsFile {
        key: key.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsSetupError::ReadCerts(file(TlsFileError::Pem(e))))?;
    let certs: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|e| TlsSetupError::NotPem(file(TlsFileError::Pem(e))))?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            key: key.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// A TLS file named by a config key, and what is wrong with it.
#[derive(Debug)]
pub struct TlsFile {
    /// The config key (`server.tls_cert`, `server.client_ca[0]`).
    pub key: String,
    /// The file.
    pub path: std::path::PathBuf,
    /// Why.
    pub source: TlsFileError,
}

/// What is wrong with a TLS file.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// It cannot be read or parsed as PEM.
    #[error(transparent)]
    Pem(rustls_pki_types::pem::Error),
    /// rustls refuses what it holds.
    #[error(transparent)]
    Rustls(rustls::Error),
}

/// Why the listener's TLS configuration cannot be built; each names the
/// config key (and file).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A certificate file cannot be read.
    #[error("{}: cannot read `{}`: {}", .0.key, .0.path.display(), .0.source)]
    ReadCerts(TlsFile),
    /// A certificate file is not PEM.
    #[error("{}: `{}` is not PEM: {}", .0.key, .0.path.display(), .0.source)]
    NotPem(TlsFile),
    /// A certificate file holds no certificate.
    #[error("{key}: `{}` holds no certificate", path.display())]
    NoCertificate {
        /// The config key.
        key: String,
        /// The file.
        path: std::path::PathBuf,
    },
    /// `server.tls_key` cannot be read.
    #[error("server.tls_key: cannot read `{}`: {}", .0.path.display(), .0.source)]
    ReadKey(TlsFile),
    /// A CA certificate is not a usable trust anchor.
    #[error("{}: `{}`: {}", .0.key, .0.path.display(), .0.source)]
    Anchor(TlsFile),
    /// The client certificate verifier cannot be built from these anchors.
    #[error("{key}: {source}")]
    Verifier {
        /// The config key.
        key: String,
        /// Why.
        source: rustls::server::VerifierBuilderError,
    },
    /// The protocol versions are refused.
    #[error("tls: {0}")]
    Protocol(rustls::Error),
    /// The certificate and key do not make a server identity.
    #[error("server.tls_cert/server.tls_key: {0}")]
    CertKey(rustls::Error),
}

/// Builds the HTTPS listener's TLS configuration.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &[std::path::PathBuf],
    trust_domains: &BTreeMap<String, Vec<std::path::PathBuf>>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = read_certs("server.tls_cert", cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        TlsSetupError::ReadKey(TlsFile {
            key: "server.tls_key".into(),
            path: key.to_path_buf(),
            source: TlsFileError::Pem(e),
        })
    })?;
    let anchor = |key: &str, path: &Path, e| {
        TlsSetupError::Anchor(TlsFile {
            key: key.to_string(),
            path: path.to_path_buf(),
            source: TlsFileError::Rustls(e),
        })
    };
    let mut roots = RootCertStore::empty();
    for (i, p) in client_ca.iter().enumerate() {
        let key = format!("server.client_ca[{i}]");
        for c in read_certs(&key, p)? {
            roots.add(c).map_err(|e| anchor(&key, p, e))?;
        }
    }
    let build = |roots: RootCertStore, key: &str| {
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsSetupError::Verifier {
                key: key.to_string(),
                source: e,
            })
    };
    let verifier: Arc<dyn ClientCertVerifier> = if trust_domains.is_empty() {
        build(roots, "server.client_ca")?
    } else {
        // The handshake offers every anchor; each leaf is then held to the
        // anchors of its own trust domain.
        let mut all = roots.clone();
        let mut per_domain = BTreeMap::new();
        for (td, files) in trust_domains {
            let mut td_roots = RootCertStore::empty();
            for (i, p) in files.iter().enumerate() {
                let key = format!("server.trust_domains.\"{td}\"[{i}]");
                for c in read_certs(&key, p)? {
                    all.add(c.clone()).map_err(|e| anchor(&key, p, e))?;
                    td_roots.add(c).map_err(|e| anchor(&key, p, e))?;
                }
            }
            per_domain.insert(
                td.clone(),
                build(td_roots, &format!("server.trust_domains.\"{td}\""))?,
            );
        }
        Arc::new(TrustDomainVerifier {
            any: build(all, "server.trust_domains")?,
            no_spiffe_id: build(roots, "server.client_ca")?,
            per_domain,
        })
    };
    // Every path is also held to the RFC 5280 rules webpki leaves out.
    let verifier: Arc<dyn ClientCertVerifier> = Arc::new(PathRulesVerifier { inner: verifier });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsSetupError::Protocol)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(TlsSetupError::CertKey)?;
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

/// SPIFFE trust-domain binding (SECURITY #93): a leaf whose SPIFFE ID is in
/// trust domain T must chain to T's own anchors, so a CA of one domain
/// cannot assert another domain's IDs. Leaves without a SPIFFE ID chain to
/// `client_ca`; a trust domain with no bundle is refused.
#[derive(Debug)]
struct TrustDomainVerifier {
    /// Every anchor: the hints sent to clients, and handshake signatures.
    any: Arc<dyn ClientCertVerifier>,
    /// `client_ca` alone, for leaves without a SPIFFE ID.
    no_spiffe_id: Arc<dyn ClientCertVerifier>,
    /// Trust domain → its anchors.
    per_domain: BTreeMap<String, Arc<dyn ClientCertVerifier>>,
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.any.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let spiffe = crate::identity::peer::from_leaf_der(end_entity.as_ref())
            .ok()
            .and_then(|p| p.spiffe_id);
        let verifier = match &spiffe {
            None => &self.no_spiffe_id,
            Some(id) => self.per_domain.get(id.trust_domain()).ok_or_else(|| {
                tracing::debug!(
                    trust_domain = id.trust_domain(),
                    "no bundle for this trust domain"
                );
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                )
            })?,
        };
        verifier.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.any.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.any.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.any.supported_verify_schemes()
    }
}

/// The certificate-path rules rustls-webpki does not enforce, checked after
/// it accepted a client chain (SECURITY.md "Certificate paths"). webpki
/// already enforces basicConstraints `cA` on every issuer, pathLenConstraint,
/// a leaf that is not a CA, EKU `clientAuth` (when present) on every
/// certificate, and name constraints (a URI constraint refuses every URI
/// SAN). It ignores KeyUsage: RFC 5280 §6.1.4 (n) requires `keyCertSign` on
/// every CA certificate in the path that has a KeyUsage extension, so a CA
/// whose key was only meant for signatures cannot vouch for a client.
#[derive(Debug)]
struct PathRulesVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

/// Refuses a presented chain in which a certificate other than the leaf has
/// a KeyUsage extension without `keyCertSign`, or cannot be parsed. Every
/// presented intermediate is checked, on the path or not (fail closed).
fn check_issuer_key_usage(intermediates: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
    let refuse = |why: &'static str| {
        tracing::debug!(reason = why, "client certificate path refused");
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(PathRuleError(why)))),
        ))
    };
    for der in intermediates {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
            return refuse("an intermediate certificate cannot be parsed");
        };
        match cert.key_usage() {
            Ok(None) => {}
            Ok(Some(ku)) if ku.value.key_cert_sign() => {}
            Ok(Some(_)) => return refuse("an issuing CA's KeyUsage lacks keyCertSign"),
            Err(_) => return refuse("an intermediate's KeyUsage is malformed or duplicated"),
        }
    }
    Ok(())
}

/// Why [`PathRulesVerifier`] refused a chain.
#[derive(Debug)]
struct PathRuleError(&'static str);

impl std::fmt::Display for PathRuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for PathRuleError {}

impl ClientCertVerifier for PathRulesVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_issuer_key_usage(intermediates)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
