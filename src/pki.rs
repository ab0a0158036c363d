// One file: about 380 of its lines are unit tests and the hostile half
// (feature `testkit` only); the shipped CA is under 600.
//! Development PKI: a small CA, leaf certificate issuance (including hostile
//! variants for tests) and creation of the development material used by
//! `tessera serve` in dev mode.
//!
//! All keys are ECDSA P-256. Private keys are PKCS#8 PEM written with mode
//! 0600 on unix; they never appear in logs, errors or `Debug` output.

use std::fmt;
use std::fs;
use std::io::{self, Read as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::string::{BmpString, UniversalString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::mint::keyring::{self, KeyRingError, SigningAlgorithm};

/// Validity of a CA made by [`Ca::generate`] (10 years).
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Default validity of an issued leaf (1 year).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How far `notBefore` is back-dated to tolerate clock skew.
pub const BACKDATE: Duration = Duration::from_secs(3600);

/// Offset used by [`LeafSpec::expired`] and [`LeafSpec::not_yet_valid`].
#[cfg(any(test, feature = "testkit"))]
pub const HOSTILE_VALIDITY_OFFSET: Duration = Duration::from_secs(2 * 24 * 3600);

/// Largest PEM file read by this module.
pub const MAX_PEM_FILE_BYTES: u64 = 256 * 1024;

/// Length of random certificate serial numbers in bytes.
const SERIAL_BYTES: usize = 16;

/// Unix mode of certificate files.
const CERT_FILE_MODE: u32 = 0o644;

/// Dev CA certificate file name.
pub const DEV_CA_CERT: &str = "ca.pem";
/// Dev CA private key file name.
pub const DEV_CA_KEY: &str = "ca-key.pem";
/// Common name of the dev CA.
pub const DEV_CA_COMMON_NAME: &str = "Tessera Development CA";
/// File stem of the dev TLS server certificate (`server.pem`, `server-key.pem`).
pub const DEV_SERVER: &str = "server";
/// File stem of the dev agent client certificate.
pub const DEV_AGENT: &str = "agent";
/// File stem of the dev operator client certificate.
pub const DEV_OPERATOR: &str = "operator";
/// File stem of the dev payments-api client certificate.
pub const DEV_PAYMENTS_API: &str = "payments-api";
/// File stem of the second dev agent's client certificate.
pub const DEV_REVIEWER: &str = "reviewer";
/// SPIFFE ID of the second dev agent.
pub const DEV_REVIEWER_SPIFFE_ID: &str = "spiffe://example.org/agent/reviewer";
/// SPIFFE ID of the dev agent.
pub const DEV_AGENT_SPIFFE_ID: &str = "spiffe://example.org/agent/demo";
/// SPIFFE ID of the dev operator.
pub const DEV_OPERATOR_SPIFFE_ID: &str = "spiffe://example.org/operator/alice";
/// SPIFFE ID of the dev payments-api service.
pub const DEV_PAYMENTS_API_SPIFFE_ID: &str = "spiffe://example.org/service/payments-api";

/// Errors of certificate generation, parsing and dev material creation.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or failed to sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A name (SAN or CN) is not representable.
    #[error("invalid {what} {value:?}")]
    InvalidName {
        /// Which kind of name.
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// A certificate or key could not be parsed.
    #[error("cannot parse {what}: {reason}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// Why (fixed text, never key material).
        reason: &'static str,
    },
    /// A validity time is outside the representable range.
    #[error("certificate validity time out of range")]
    InvalidValidity,
    /// The certificate given as a CA does not assert `cA: true`.
    #[error("CA certificate does not have basicConstraints cA=true")]
    NotCa,
    /// The CA key does not belong to the CA certificate.
    #[error("CA private key does not match the CA certificate")]
    KeyMismatch,
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// A file is larger than [`MAX_PEM_FILE_BYTES`].
    #[error("{} is larger than {max} bytes", path.display())]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// Only one half of a certificate/key pair exists.
    #[error(
        "{} exists but {} is missing; restore it or remove both to regenerate",
        present.display(),
        missing.display()
    )]
    IncompletePair {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// Leaves must be issued but the CA key is gone.
    #[error(
        "cannot issue {}: the CA key {} is missing",
        needed.display(),
        ca_key.display()
    )]
    CaKeyMissing {
        /// The missing CA key file.
        ca_key: PathBuf,
        /// A leaf certificate that needs issuing.
        needed: PathBuf,
    },
    /// The CA is missing while leaves issued by it still exist.
    #[error(
        "{} is missing but {} exists; a new CA would not match existing leaves (remove the directory to regenerate)",
        ca.display(),
        leaf.display()
    )]
    OrphanLeaves {
        /// The missing CA certificate.
        ca: PathBuf,
        /// An existing leaf file.
        leaf: PathBuf,
    },
    /// Creating the token signing key failed.
    #[error(transparent)]
    SigningKey(#[from] KeyRingError),
}

/// Key usages that can be placed on an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    /// digitalSignature
    DigitalSignature,
    /// contentCommitment (nonRepudiation)
    ContentCommitment,
    /// keyEncipherment
    KeyEncipherment,
    /// dataEncipherment
    DataEncipherment,
    /// keyAgreement
    KeyAgreement,
    /// keyCertSign
    KeyCertSign,
    /// cRLSign
    CrlSign,
}

impl KeyUsage {
    fn to_rcgen(self) -> KeyUsagePurpose {
        match self {
            KeyUsage::DigitalSignature => KeyUsagePurpose::DigitalSignature,
            KeyUsage::ContentCommitment => KeyUsagePurpose::ContentCommitment,
            KeyUsage::KeyEncipherment => KeyUsagePurpose::KeyEncipherment,
            KeyUsage::DataEncipherment => KeyUsagePurpose::DataEncipherment,
            KeyUsage::KeyAgreement => KeyUsagePurpose::KeyAgreement,
            KeyUsage::KeyCertSign => KeyUsagePurpose::KeyCertSign,
            KeyUsage::CrlSign => KeyUsagePurpose::CrlSign,
        }
    }
}

/// What to put in an issued leaf certificate.
///
/// The builders make well-formed certificates; the `with_*`/`without_*`
/// setters produce the hostile variants tests need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// Subject common name.
    pub common_name: String,
    /// URI SANs (e.g. SPIFFE IDs).
    pub uri_sans: Vec<String>,
    /// DNS SANs.
    pub dns_sans: Vec<String>,
    /// IP address SANs.
    pub ip_sans: Vec<IpAddr>,
    /// Include EKU serverAuth.
    pub server: bool,
    /// Include EKU clientAuth.
    pub client: bool,
    /// `notBefore`; `None` = now minus [`BACKDATE`].
    pub not_before: Option<SystemTime>,
    /// `notAfter`; `None` = now plus [`LEAF_VALIDITY`].
    pub not_after: Option<SystemTime>,
    /// Assert basicConstraints `cA: true` (hostile for a leaf).
    pub is_ca: bool,
    /// Key usages; `None` = digitalSignature only, `Some(vec![])` = no
    /// keyUsage extension at all.
    pub key_usage: Option<Vec<KeyUsage>>,
    /// Omit the extendedKeyUsage extension regardless of `server`/`client`.
    pub no_eku: bool,
}

impl LeafSpec {
    /// A bare spec: the given CN, no SANs, no EKU, default validity.
    pub fn new(common_name: impl Into<String>) -> LeafSpec {
        LeafSpec {
            common_name: common_name.into(),
            uri_sans: Vec::new(),
            dns_sans: Vec::new(),
            ip_sans: Vec::new(),
            server: false,
            client: false,
            not_before: None,
            not_after: None,
            is_ca: false,
            key_usage: None,
            no_eku: false,
        }
    }

    /// A TLS server certificate (EKU serverAuth) for the given names.
    /// The CN is the first DNS name (or `server`).
    pub fn server(dns: &[&str], ips: &[IpAddr]) -> LeafSpec {
        let mut spec = LeafSpec::new(dns.first().copied().unwrap_or("server"));
        spec.dns_sans = dns.iter().map(|s| (*s).to_owned()).collect();
        spec.ip_sans = ips.to_vec();
        spec.server = true;
        spec
    }

    /// A client certificate (EKU clientAuth) with one URI SAN, e.g. a SPIFFE
    /// ID. The CN is the last path segment of the URI.
    pub fn client_spiffe(uri: &str) -> LeafSpec {
        let cn = uri.rsplit('/').find(|s| !s.is_empty()).unwrap_or("client");
        let mut spec = LeafSpec::new(cn);
        spec.uri_sans = vec![uri.to_owned()];
        spec.client = true;
        spec
    }

    /// A client certificate (EKU clientAuth) with one DNS SAN and that CN.
    pub fn client_dns(name: &str) -> LeafSpec {
        let mut spec = LeafSpec::new(name);
        spec.dns_sans = vec![name.to_owned()];
        spec.client = true;
        spec
    }

    /// Sets the subject common name.
    pub fn with_common_name(mut self, cn: impl Into<String>) -> LeafSpec {
        self.common_name = cn.into();
        self
    }

    /// Sets an explicit validity window.
    pub fn valid_between(mut self, not_before: SystemTime, not_after: SystemTime) -> LeafSpec {
        self.not_before = Some(not_before);
        self.not_after = Some(not_after);
        self
    }

    /// Validity ended [`HOSTILE_VALIDITY_OFFSET`]/2 ago.
    #[cfg(any(test, feature = "testkit"))]
    pub fn expired(self) -> LeafSpec {
        let now = SystemTime::now();
        let nb = now.checked_sub(HOSTILE_VALIDITY_OFFSET).unwrap_or(now);
        let na = now.checked_sub(HOSTILE_VALIDITY_OFFSET / 2).unwrap_or(now);
        self.valid_between(nb, na)
    }

    /// Validity starts [`HOSTILE_VALIDITY_OFFSET`]/2 from now.
    #[cfg(any(test, feature = "testkit"))]
    pub fn not_yet_valid(self) -> LeafSpec {
        let now = SystemTime::now();
        let nb = now.checked_add(HOSTILE_VALIDITY_OFFSET / 2).unwrap_or(now);
        let na = now.checked_add(HOSTILE_VALIDITY_OFFSET).unwrap_or(now);
        self.valid_between(nb, na)
    }

    /// Asserts basicConstraints `cA: true` on the leaf.
    #[cfg(any(test, feature = "testkit"))]
    pub fn with_ca_flag(mut self) -> LeafSpec {
        self.is_ca = true;
        self
    }

    /// Adds keyCertSign to the key usages.
    #[cfg(any(test, feature = "testkit"))]
    pub fn with_key_cert_sign(mut self) -> LeafSpec {
        let mut usages = self
            .key_usage
            .take()
            .unwrap_or_else(|| vec![KeyUsage::DigitalSignature]);
        if !usages.contains(&KeyUsage::KeyCertSign) {
            usages.push(KeyUsage::KeyCertSign);
        }
        self.key_usage = Some(usages);
        self
    }

    /// Replaces digitalSignature by keyEncipherment (keyUsage present, no
    /// digitalSignature).
    #[cfg(any(test, feature = "testkit"))]
    pub fn without_digital_signature(mut self) -> LeafSpec {
        let mut usages = self
            .key_usage
            .take()
            .unwrap_or_else(|| vec![KeyUsage::DigitalSignature]);
        usages.retain(|u| *u != KeyUsage::DigitalSignature);
        if usages.is_empty() {
            usages.push(KeyUsage::KeyEncipherment);
        }
        self.key_usage = Some(usages);
        self
    }

    /// Sets the exact key usages (`vec![]` omits the extension).
    #[cfg(any(test, feature = "testkit"))]
    pub fn with_key_usage(mut self, usages: Vec<KeyUsage>) -> LeafSpec {
        self.key_usage = Some(usages);
        self
    }

    /// Adds another URI SAN (two URI SANs is hostile for SPIFFE).
    #[cfg(any(test, feature = "testkit"))]
    pub fn with_extra_uri(mut self, uri: impl Into<String>) -> LeafSpec {
        self.uri_sans.push(uri.into());
        self
    }

    /// Adds a DNS SAN.
    pub fn with_dns(mut self, name: impl Into<String>) -> LeafSpec {
        self.dns_sans.push(name.into());
        self
    }

    /// EKU serverAuth only (hostile for a client certificate).
    #[cfg(any(test, feature = "testkit"))]
    pub fn server_auth_only(mut self) -> LeafSpec {
        self.server = true;
        self.client = false;
        self.no_eku = false;
        self
    }

    /// EKU clientAuth only.
    #[cfg(any(test, feature = "testkit"))]
    pub fn client_auth_only(mut self) -> LeafSpec {
        self.server = false;
        self.client = true;
        self.no_eku = false;
        self
    }

    /// Omits the extendedKeyUsage extension.
    #[cfg(any(test, feature = "testkit"))]
    pub fn without_eku(mut self) -> LeafSpec {
        self.no_eku = true;
        self
    }
}

/// A certificate and its private key as issued by [`Ca::issue`].
#[derive(Clone)]
pub struct IssuedCert {
    /// Certificate PEM.
    pub cert_pem: String,
    /// PKCS#8 private key PEM.
    pub key_pem: String,
    /// Certificate DER.
    pub cert_der: Vec<u8>,
    /// PKCS#8 private key DER.
    pub key_der: Vec<u8>,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A certificate authority able to issue leaves.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Generates a self-signed ECDSA P-256 root CA (basicConstraints cA,
    /// keyUsage keyCertSign + cRLSign, 10-year validity).
    pub fn generate(common_name: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(common_name, BasicConstraints::Unconstrained)?;
        let cert = params.self_signed(&key)?;
        Ok(Ca::assemble(cert.der().to_vec(), key, params))
    }

    /// Issues an intermediate CA (pathLenConstraint 0) signed by this CA.
    #[cfg(any(test, feature = "testkit"))]
    pub fn issue_intermediate(&self, common_name: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params(common_name, BasicConstraints::Constrained(0))?;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Ca::assemble(cert.der().to_vec(), key, params))
    }

    /// Issues a sub-CA without a path length constraint, signed by this CA
    /// (tests build long and wide chains with it).
    #[cfg(any(test, feature = "testkit"))]
    pub fn issue_sub_ca(&self, common_name: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params(common_name, BasicConstraints::Unconstrained)?;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Ca::assemble(cert.der().to_vec(), key, params))
    }

    /// Issues a sub-CA (unconstrained) for an existing key: called several
    /// times with one key it makes cross-signed twins (same subject and key,
    /// other certificates), for tests of path-building budgets.
    #[cfg(any(test, feature = "testkit"))]
    pub fn issue_sub_ca_with_key(&self, common_name: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let mut params = ca_params(common_name, BasicConstraints::Unconstrained)?;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Ca::assemble(cert.der().to_vec(), key, params))
    }

    fn assemble(cert_der: Vec<u8>, key: KeyPair, params: CertificateParams) -> Ca {
        Ca {
            cert_pem: keyring::pem_encode("CERTIFICATE", &cert_der),
            key_pem: key.serialize_pem(),
            cert_der,
            issuer: Issuer::new(params, key),
        }
    }

    /// Loads a CA from its certificate and PKCS#8 private key PEM.
    ///
    /// The certificate must assert `cA: true` and match the key. Its subject
    /// is reproduced exactly in issued certificates (multi-valued RDNs and
    /// repeated attribute types are not supported).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| PkiError::Parse {
                what: "CA certificate",
                reason: "no valid CERTIFICATE PEM block",
            })?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|_| PkiError::Parse {
                what: "CA certificate",
                reason: "malformed X.509 DER",
            })?;
        let is_ca = x509
            .basic_constraints()
            .map_err(|_| PkiError::Parse {
                what: "CA certificate",
                reason: "malformed basicConstraints",
            })?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(PkiError::NotCa);
        }
        let key = KeyPair::from_pem(key_pem).map_err(|_| PkiError::Parse {
            what: "CA private key",
            reason: "not a supported PKCS#8 private key PEM",
        })?;
        if key.subject_public_key_info().as_slice() != x509.public_key().raw {
            return Err(PkiError::KeyMismatch);
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = dn_from_x509(x509.subject())?;
        params.key_identifier_method = subject_key_id(&x509)
            .map(KeyIdMethod::PreSpecified)
            .unwrap_or(KeyIdMethod::Sha256);
        if let Ok(Some(ku)) = x509.key_usage() {
            let ku = ku.value;
            let flags = [
                (ku.digital_signature(), KeyUsagePurpose::DigitalSignature),
                (ku.non_repudiation(), KeyUsagePurpose::ContentCommitment),
                (ku.key_encipherment(), KeyUsagePurpose::KeyEncipherment),
                (ku.data_encipherment(), KeyUsagePurpose::DataEncipherment),
                (ku.key_agreement(), KeyUsagePurpose::KeyAgreement),
                (ku.key_cert_sign(), KeyUsagePurpose::KeyCertSign),
                (ku.crl_sign(), KeyUsagePurpose::CrlSign),
            ];
            params.key_usages = flags
                .into_iter()
                .filter_map(|(set, p)| set.then_some(p))
                .collect();
        }
        let cert_der = cert_der.to_vec();
        Ok(Ca {
            cert_pem: keyring::pem_encode("CERTIFICATE", &cert_der),
            key_pem: key.serialize_pem(),
            cert_der,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key as PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Issues a leaf certificate with a fresh ECDSA P-256 key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.as_str());
        let mut sans =
            Vec::with_capacity(spec.dns_sans.len() + spec.uri_sans.len() + spec.ip_sans.len());
        for name in &spec.dns_sans {
            sans.push(SanType::DnsName(ia5("DNS SAN", name)?));
        }
        for uri in &spec.uri_sans {
            sans.push(SanType::URI(ia5("URI SAN", uri)?));
        }
        sans.extend(spec.ip_sans.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;

        let now = SystemTime::now();
        let not_before = spec
            .not_before
            .unwrap_or_else(|| now.checked_sub(BACKDATE).unwrap_or(now));
        let not_after = spec
            .not_after
            .unwrap_or_else(|| now.checked_add(LEAF_VALIDITY).unwrap_or(now));
        params.not_before = to_offset(not_before)?;
        params.not_after = to_offset(not_after)?;
        params.serial_number = Some(random_serial()?);
        params.is_ca = if spec.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = match &spec.key_usage {
            None => vec![KeyUsagePurpose::DigitalSignature],
            Some(usages) => usages.iter().map(|u| u.to_rcgen()).collect(),
        };
        if !spec.no_eku {
            if spec.server {
                params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ServerAuth);
            }
            if spec.client {
                params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ClientAuth);
            }
        }
        params.use_authority_key_identifier_extension = true;

        let cert = params.signed_by(&key, &self.issuer)?;
        let cert_der = cert.der().to_vec();
        Ok(IssuedCert {
            cert_pem: keyring::pem_encode("CERTIFICATE", &cert_der),
            key_pem: key.serialize_pem(),
            cert_der,
            key_der: key.serialize_der(),
        })
    }
}

fn ca_params(
    common_name: &str,
    constraints: BasicConstraints,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = to_offset(now.checked_sub(BACKDATE).unwrap_or(now))?;
    params.not_after = to_offset(now.checked_add(CA_VALIDITY).unwrap_or(now))?;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// Converts without panicking on times outside the X.509 / `time` range.
fn to_offset(t: SystemTime) -> Result<time::OffsetDateTime, PkiError> {
    let secs: i64 = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok(),
        Err(e) => i64::try_from(e.duration().as_secs()).ok().map(|s| -s),
    }
    .ok_or(PkiError::InvalidValidity)?;
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| PkiError::InvalidValidity)
}

fn ia5(what: &'static str, value: &str) -> Result<rcgen::string::Ia5String, PkiError> {
    rcgen::string::Ia5String::try_from(value).map_err(|_| PkiError::InvalidName {
        what,
        value: value.chars().take(256).collect(),
    })
}

/// A positive, non-zero, 16-byte random serial number.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; SERIAL_BYTES];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| PkiError::Parse {
        what: "serial number",
        reason: "random generator failed",
    })?;
    if let Some(first) = bytes.first_mut() {
        // Positive (high bit clear) and minimal DER encoding (non-zero first byte).
        *first = (*first & 0x7f) | 0x40;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

fn subject_key_id(x509: &x509_parser::certificate::X509Certificate<'_>) -> Option<Vec<u8>> {
    x509.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(kid) => {
                Some(kid.0.to_vec())
            }
            _ => None,
        })
}

/// Rebuilds a parsed subject name as an rcgen name with identical encoding.
fn dn_from_x509(name: &x509_parser::x509::X509Name<'_>) -> Result<DistinguishedName, PkiError> {
    use x509_parser::der_parser::asn1_rs::Tag;
    const WHAT: &str = "CA certificate subject";
    let unsupported = |reason| PkiError::Parse { what: WHAT, reason };
    let mut dn = DistinguishedName::new();
    let mut seen: Vec<DnType> = Vec::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let attr = attrs
            .next()
            .ok_or_else(|| unsupported("empty relative distinguished name"))?;
        if attrs.next().is_some() {
            return Err(unsupported("multi-valued RDNs are not supported"));
        }
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| unsupported("attribute OID out of range"))?
            .collect();
        let dn_type = DnType::from_oid(&oid);
        if seen.contains(&dn_type) {
            return Err(unsupported("repeated attribute types are not supported"));
        }
        seen.push(dn_type.clone());
        let value = attr.attr_value();
        let data = value.data;
        let text =
            || std::str::from_utf8(data).map_err(|_| unsupported("attribute is not valid text"));
        let bad = |_| unsupported("attribute value is not valid for its string type");
        let dn_value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(text()?.try_into().map_err(bad)?),
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(bad)?),
            Tag::T61String => DnValue::TeletexString(text()?.try_into().map_err(bad)?),
            Tag::BmpString => {
                DnValue::BmpString(BmpString::from_utf16be(data.to_vec()).map_err(bad)?)
            }
            Tag::UniversalString => {
                DnValue::UniversalString(UniversalString::from_utf32be(data.to_vec()).map_err(bad)?)
            }
            _ => return Err(unsupported("unsupported attribute string type")),
        };
        dn.push(dn_type, dn_value);
    }
    Ok(dn)
}

fn read_pem_file(path: &Path) -> Result<String, PkiError> {
    let read_err = |source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    file.take(MAX_PEM_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(PkiError::FileTooLarge {
            path: path.to_path_buf(),
            max: MAX_PEM_FILE_BYTES,
        });
    }
    Ok(text)
}

fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let result = if private {
        keyring::write_new_private_file(path, contents.as_bytes())
    } else {
        keyring::write_new_file(path, contents.as_bytes(), CERT_FILE_MODE)
    };
    result.map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn exists(path: &Path) -> Result<bool, PkiError> {
    path.try_exists().map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The development leaves: (file stem, spec).
fn dev_leaves() -> [(&'static str, LeafSpec); 5] {
    [
        (
            DEV_SERVER,
            LeafSpec::server(
                &["localhost"],
                &[
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ],
            ),
        ),
        (DEV_AGENT, LeafSpec::client_spiffe(DEV_AGENT_SPIFFE_ID)),
        (
            DEV_OPERATOR,
            LeafSpec::client_spiffe(DEV_OPERATOR_SPIFFE_ID),
        ),
        (
            DEV_PAYMENTS_API,
            LeafSpec::client_spiffe(DEV_PAYMENTS_API_SPIFFE_ID),
        ),
        (
            DEV_REVIEWER,
            LeafSpec::client_spiffe(DEV_REVIEWER_SPIFFE_ID),
        ),
    ]
}

/// Creates whatever development material is missing and returns the files
/// it created (empty when everything exists).
///
/// Under `dev_dir`: `ca.pem`/`ca-key.pem` (dev CA), `server.pem`/`server-key.pem`
/// (serverAuth; DNS `localhost`, IPs 127.0.0.1 and ::1) and clientAuth
/// certificates `agent`, `operator`, `payments-api` with their SPIFFE IDs.
/// In `signing_dir`, one ES256 token signing key if it has no `*.pem`.
///
/// Existing files are never overwritten. Missing leaves are issued by the
/// existing CA; it is an error if the CA key is gone, if only half of a
/// certificate/key pair exists, or if the CA is gone while leaves remain.
pub fn ensure_dev_material(dev_dir: &Path, signing_dir: &Path) -> Result<Vec<PathBuf>, PkiError> {
    let mut created = Vec::new();
    create_dir(dev_dir)?;
    let ca_cert_path = dev_dir.join(DEV_CA_CERT);
    let ca_key_path = dev_dir.join(DEV_CA_KEY);

    let mut missing_leaves = Vec::new();
    let mut existing_leaf: Option<PathBuf> = None;
    for (stem, spec) in dev_leaves() {
        let cert_path = dev_dir.join(format!("{stem}.pem"));
        let key_path = dev_dir.join(format!("{stem}-key.pem"));
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => {
                existing_leaf.get_or_insert(cert_path);
            }
            (false, false) => missing_leaves.push((cert_path, key_path, spec)),
            (true, false) => {
                return Err(PkiError::IncompletePair {
                    present: cert_path,
                    missing: key_path,
                })
            }
            (false, true) => {
                return Err(PkiError::IncompletePair {
                    present: key_path,
                    missing: cert_path,
                })
            }
        }
    }

    let ca_cert_exists = exists(&ca_cert_path)?;
    let ca_key_exists = exists(&ca_key_path)?;
    let ca = match (ca_cert_exists, ca_key_exists) {
        (false, false) => {
            if let Some(leaf) = existing_leaf {
                return Err(PkiError::OrphanLeaves {
                    ca: ca_cert_path,
                    leaf,
                });
            }
            let ca = Ca::generate(DEV_CA_COMMON_NAME)?;
            write_new(&ca_key_path, ca.key_pem(), true)?;
            created.push(ca_key_path.clone());
            write_new(&ca_cert_path, ca.cert_pem(), false)?;
            created.push(ca_cert_path.clone());
            Some(ca)
        }
        (false, true) => {
            return Err(PkiError::IncompletePair {
                present: ca_key_path,
                missing: ca_cert_path,
            })
        }
        (true, false) => {
            if let Some((needed, _, _)) = missing_leaves.first() {
                return Err(PkiError::CaKeyMissing {
                    ca_key: ca_key_path,
                    needed: needed.clone(),
                });
            }
            None
        }
        (true, true) if missing_leaves.is_empty() => None,
        (true, true) => Some(Ca::from_pem(
            &read_pem_file(&ca_cert_path)?,
            &read_pem_file(&ca_key_path)?,
        )?),
    };

    if let Some(ca) = ca {
        for (cert_path, key_path, spec) in missing_leaves {
            let issued = ca.issue(&spec)?;
            write_new(&key_path, &issued.key_pem, true)?;
            created.push(key_path);
            write_new(&cert_path, &issued.cert_pem, false)?;
            created.push(cert_path);
        }
    }

    if !keyring::dir_has_pem(signing_dir)? {
        created.push(keyring::generate_key_file(
            signing_dir,
            SigningAlgorithm::ES256,
        )?);
    }
    Ok(created)
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn parse(der: &[u8]) -> Result<X509Certificate<'_>, Box<dyn std::error::Error>> {
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        assert!(rest.is_empty());
        Ok(cert)
    }

    fn uris(cert: &X509Certificate<'_>) -> Vec<String> {
        cert.subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some((*u).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn verify_signed_by(leaf: &X509Certificate<'_>, ca: &X509Certificate<'_>) -> TestResult {
        // All certificates here are ecdsa-with-SHA256 over P-256.
        use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
        UnparsedPublicKey::new(
            &ECDSA_P256_SHA256_ASN1,
            &ca.public_key().subject_public_key.data,
        )
        .verify(leaf.tbs_certificate.as_ref(), &leaf.signature_value.data)
        .map_err(|_| "leaf signature does not verify with the CA key")?;
        assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
        Ok(())
    }

    #[test]
    fn ca_is_a_ca() -> TestResult {
        let ca = Ca::generate("Test CA")?;
        let cert = parse(ca.cert_der())?;
        let bc = cert.basic_constraints()?.ok_or("no basicConstraints")?;
        assert!(bc.value.ca);
        let ku = cert.key_usage()?.ok_or("no keyUsage")?;
        assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
        assert!(!ku.value.digital_signature());
        let secs = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(secs >= CA_VALIDITY.as_secs() as i64);
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
        Ok(())
    }

    #[test]
    fn spiffe_client_leaf_has_expected_extensions() -> TestResult {
        let ca = Ca::generate("Test CA")?;
        let leaf = ca.issue(&LeafSpec::client_spiffe(DEV_AGENT_SPIFFE_ID))?;
        let cert = parse(&leaf.cert_der)?;
        let ca_cert = parse(ca.cert_der())?;
        verify_signed_by(&cert, &ca_cert)?;
        assert_eq!(uris(&cert), [DEV_AGENT_SPIFFE_ID]);
        let eku = cert.extended_key_usage()?.ok_or("no EKU")?;
        assert!(eku.value.client_auth && !eku.value.server_auth);
        let bc = cert.basic_constraints()?.ok_or("no basicConstraints")?;
        assert!(!bc.value.ca);
        let ku = cert.key_usage()?.ok_or("no keyUsage")?;
        assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
        assert!(cert.validity().is_valid());
        // The key PEM is PKCS#8 and matches the certificate.
        let key = KeyPair::from_pem(&leaf.key_pem)?;
        assert_eq!(key.subject_public_key_info(), cert.public_key().raw);
        assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{leaf:?}").contains("PRIVATE KEY"));
        Ok(())
    }

    #[test]
    fn hostile_variants() -> TestResult {
        let ca = Ca::generate("Test CA")?;
        let base = LeafSpec::client_spiffe(DEV_AGENT_SPIFFE_ID);

        let expired = parse_owned(&ca, &base.clone().expired())?;
        let c = parse(&expired)?;
        assert!(c.validity().not_after.timestamp() < now_secs());

        let future = parse_owned(&ca, &base.clone().not_yet_valid())?;
        let c = parse(&future)?;
        assert!(c.validity().not_before.timestamp() > now_secs());

        let ca_flag = parse_owned(&ca, &base.clone().with_ca_flag())?;
        let c = parse(&ca_flag)?;
        assert!(c.basic_constraints()?.ok_or("no bc")?.value.ca);

        let kcs = parse_owned(&ca, &base.clone().with_key_cert_sign())?;
        let c = parse(&kcs)?;
        let ku = c.key_usage()?.ok_or("no ku")?.value;
        assert!(ku.key_cert_sign() && ku.digital_signature());

        let no_ds = parse_owned(&ca, &base.clone().without_digital_signature())?;
        let c = parse(&no_ds)?;
        let ku = c.key_usage()?.ok_or("no ku")?.value;
        assert!(!ku.digital_signature() && ku.key_encipherment());

        let two = parse_owned(
            &ca,
            &base.clone().with_extra_uri("spiffe://example.org/other"),
        )?;
        assert_eq!(uris(&parse(&two)?).len(), 2);

        let server_only = parse_owned(&ca, &base.clone().server_auth_only())?;
        let c = parse(&server_only)?;
        let eku = c.extended_key_usage()?.ok_or("no eku")?.value;
        assert!(eku.server_auth && !eku.client_auth);

        let no_eku = parse_owned(&ca, &base.clone().without_eku())?;
        assert!(parse(&no_eku)?.extended_key_usage()?.is_none());

        let no_ku = parse_owned(&ca, &base.clone().with_key_usage(vec![]))?;
        assert!(parse(&no_ku)?.key_usage()?.is_none());

        assert!(matches!(
            ca.issue(&LeafSpec::client_spiffe("spiffe://exämple.org/x")),
            Err(PkiError::InvalidName { .. })
        ));
        Ok(())
    }

    fn parse_owned(ca: &Ca, spec: &LeafSpec) -> Result<Vec<u8>, PkiError> {
        Ok(ca.issue(spec)?.cert_der)
    }

    fn now_secs() -> i64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }

    #[test]
    fn ca_round_trips_through_pem_and_keeps_issuing() -> TestResult {
        let ca = Ca::generate("Round Trip CA")?;
        let loaded = Ca::from_pem(ca.cert_pem(), ca.key_pem())?;
        assert_eq!(loaded.cert_der(), ca.cert_der());
        let leaf = loaded.issue(&LeafSpec::server(&["localhost"], &[]))?;
        let cert = parse(&leaf.cert_der)?;
        verify_signed_by(&cert, &parse(ca.cert_der())?)?;

        // Intermediate chain.
        let inter = ca.issue_intermediate("Intermediate")?;
        let leaf2 = inter.issue(&LeafSpec::client_dns("svc.example"))?;
        verify_signed_by(&parse(&leaf2.cert_der)?, &parse(inter.cert_der())?)?;
        verify_signed_by(&parse(inter.cert_der())?, &parse(ca.cert_der())?)?;
        let reloaded = Ca::from_pem(inter.cert_pem(), inter.key_pem())?;
        let leaf3 = reloaded.issue(&LeafSpec::client_dns("svc.example"))?;
        verify_signed_by(&parse(&leaf3.cert_der)?, &parse(inter.cert_der())?)?;

        // Wrong key, non-CA certificate, garbage.
        let other = Ca::generate("Other")?;
        assert!(matches!(
            Ca::from_pem(ca.cert_pem(), other.key_pem()),
            Err(PkiError::KeyMismatch)
        ));
        assert!(matches!(
            Ca::from_pem(&leaf.cert_pem, &leaf.key_pem),
            Err(PkiError::NotCa)
        ));
        assert!(matches!(
            Ca::from_pem("garbage", ca.key_pem()),
            Err(PkiError::Parse { .. })
        ));
        assert!(matches!(
            Ca::from_pem(ca.cert_pem(), "garbage"),
            Err(PkiError::Parse { .. })
        ));
        Ok(())
    }

    #[test]
    fn openssl_ca_with_multi_attribute_subject_loads() -> TestResult {
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("k.pem");
        let cert = dir.path().join("c.pem");
        let status = match std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args(["-subj", "/C=US/O=Example Org/CN=OpenSSL CA", "-days", "30"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
        {
            Ok(s) => s,
            Err(_) => return Ok(()), // no openssl CLI
        };
        assert!(status.success());
        let ca = Ca::from_pem(&fs::read_to_string(&cert)?, &fs::read_to_string(&key)?)?;
        let leaf = ca.issue(&LeafSpec::client_spiffe(DEV_OPERATOR_SPIFFE_ID))?;
        let ca_cert = parse(ca.cert_der())?;
        let leaf_cert = parse(&leaf.cert_der)?;
        verify_signed_by(&leaf_cert, &ca_cert)?;
        // AKI of the leaf equals SKI of the CA.
        let ski = subject_key_id(&ca_cert).ok_or("no SKI")?;
        let aki = leaf_cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
            .ok_or("no AKI")?;
        assert_eq!(aki, ski);
        Ok(())
    }

    #[test]
    fn dev_material_is_created_once() -> TestResult {
        let dir = tempfile::tempdir()?;
        let dev = dir.path().join("dev");
        let signing = dir.path().join("signing");
        let created = ensure_dev_material(&dev, &signing)?;
        // CA pair + 5 leaf pairs + 1 signing key.
        assert_eq!(created.len(), 13, "{created:?}");
        for name in [
            "ca.pem",
            "ca-key.pem",
            "server.pem",
            "server-key.pem",
            "agent.pem",
            "agent-key.pem",
            "operator.pem",
            "operator-key.pem",
            "payments-api.pem",
            "payments-api-key.pem",
        ] {
            assert!(created.contains(&dev.join(name)), "{name} not created");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for p in &created {
                let mode = fs::metadata(p)?.permissions().mode() & 0o777;
                let is_key = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with("-key.pem") || p.starts_with(&signing));
                assert_eq!(mode, if is_key { 0o600 } else { CERT_FILE_MODE }, "{p:?}");
            }
        }

        let snapshot: Vec<Vec<u8>> = created.iter().map(fs::read).collect::<Result<_, _>>()?;
        assert!(ensure_dev_material(&dev, &signing)?.is_empty());
        let again: Vec<Vec<u8>> = created.iter().map(fs::read).collect::<Result<_, _>>()?;
        assert_eq!(snapshot, again);

        // The signing key loads.
        let ring = crate::mint::KeyRing::load_dir(&signing, SigningAlgorithm::ES256)?;
        assert_eq!(ring.keys().len(), 1);

        // Leaves have the right names and chain to the CA.
        let ca_der = CertificateDer::from_pem_file(dev.join(DEV_CA_CERT))?;
        let ca = parse(&ca_der)?;
        let server_der = CertificateDer::from_pem_file(dev.join("server.pem"))?;
        let server = parse(&server_der)?;
        verify_signed_by(&server, &ca)?;
        let san = server.subject_alternative_name()?.ok_or("no SAN")?;
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert!(names.contains(&"dns:localhost".to_owned()), "{names:?}");
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            server
                .extended_key_usage()?
                .ok_or("no eku")?
                .value
                .server_auth
        );
        for (stem, id) in [
            (DEV_AGENT, DEV_AGENT_SPIFFE_ID),
            (DEV_OPERATOR, DEV_OPERATOR_SPIFFE_ID),
            (DEV_PAYMENTS_API, DEV_PAYMENTS_API_SPIFFE_ID),
        ] {
            let der = CertificateDer::from_pem_file(dev.join(format!("{stem}.pem")))?;
            let cert = parse(&der)?;
            verify_signed_by(&cert, &ca)?;
            assert_eq!(uris(&cert), [id]);
            assert!(
                cert.extended_key_usage()?
                    .ok_or("no eku")?
                    .value
                    .client_auth
            );
        }
        Ok(())
    }

    #[test]
    fn missing_leaf_is_issued_by_existing_ca() -> TestResult {
        let dir = tempfile::tempdir()?;
        let dev = dir.path().join("dev");
        let signing = dir.path().join("signing");
        ensure_dev_material(&dev, &signing)?;
        fs::remove_file(dev.join("operator.pem"))?;
        fs::remove_file(dev.join("operator-key.pem"))?;
        let created = ensure_dev_material(&dev, &signing)?;
        assert_eq!(
            created,
            [dev.join("operator-key.pem"), dev.join("operator.pem")]
        );
        let ca_der = CertificateDer::from_pem_file(dev.join(DEV_CA_CERT))?;
        let der = CertificateDer::from_pem_file(dev.join("operator.pem"))?;
        verify_signed_by(&parse(&der)?, &parse(&ca_der)?)?;

        // Without the CA key a missing leaf is an error naming the key file...
        fs::remove_file(dev.join(DEV_CA_KEY))?;
        assert!(ensure_dev_material(&dev, &signing)?.is_empty());
        fs::remove_file(dev.join("agent.pem"))?;
        fs::remove_file(dev.join("agent-key.pem"))?;
        let err = ensure_dev_material(&dev, &signing)
            .err()
            .ok_or("issued without CA key")?;
        assert!(matches!(err, PkiError::CaKeyMissing { .. }), "{err:?}");
        assert!(err.to_string().contains(DEV_CA_KEY), "{err}");

        // ...half a pair is an error...
        fs::write(dev.join("agent.pem"), b"x")?;
        assert!(matches!(
            ensure_dev_material(&dev, &signing),
            Err(PkiError::IncompletePair { .. })
        ));
        fs::remove_file(dev.join("agent.pem"))?;

        // ...and a missing CA with remaining leaves is refused.
        fs::remove_file(dev.join(DEV_CA_CERT))?;
        assert!(matches!(
            ensure_dev_material(&dev, &signing),
            Err(PkiError::OrphanLeaves { .. })
        ));
        Ok(())
    }

    #[test]
    fn existing_signing_key_is_kept() -> TestResult {
        let dir = tempfile::tempdir()?;
        let signing = dir.path().join("signing");
        let key = keyring::generate_key_file(&signing, SigningAlgorithm::EdDSA)?;
        let created = ensure_dev_material(&dir.path().join("dev"), &signing)?;
        assert!(!created.iter().any(|p| p.starts_with(&signing)));
        assert!(key.exists());
        Ok(())
    }
}
