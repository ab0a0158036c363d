//! Identity of an mTLS peer, extracted from its (already chain-verified)
//! leaf certificate.
//!
//! Rules:
//!
//! * more than one URI SAN is an error; exactly one URI SAN must be a valid
//!   [`SpiffeId`] and becomes the subject;
//! * without a URI SAN the first DNS SAN is the subject;
//! * without either the certificate is refused (a SPIFFE ID in the subject
//!   CN is **not** accepted);
//! * X509-SVID leaf rules: `cA=true`, or a KeyUsage with `keyCertSign` /
//!   `cRLSign`, or a KeyUsage without `digitalSignature`, are refused;
//! * malformed, undecodable or duplicated SAN / basicConstraints / KeyUsage
//!   extensions are refused, as are SAN entries that cannot be decoded.
//!
//! The thumbprint is the RFC 8705 `x5t#S256` value: base64url (no padding) of
//! the SHA-256 of the exact DER bytes.

use aws_lc_rs::digest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension, X509Extension};
use x509_parser::oid_registry::{
    Oid, OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
};

use crate::identity::spiffe::{SpiffeId, SpiffeIdError};

/// Maximum size of a leaf certificate accepted for identity extraction.
pub const MAX_LEAF_DER_LEN: usize = 64 * 1024;

/// Maximum length of a DNS name in bytes.
pub const MAX_DNS_NAME_LEN: usize = 253;

/// Maximum length of one DNS label in bytes.
pub const MAX_DNS_LABEL_LEN: usize = 63;

/// What the TLS layer established about the caller.
#[derive(Debug, Clone, Default)]
pub enum Peer {
    /// No client certificate.
    #[default]
    Anonymous,
    /// A verified client certificate that is a usable identity.
    Identified(std::sync::Arc<PeerIdentity>),
    /// A client certificate that chained to a trusted CA but is not a usable
    /// workload identity (the reason code says why).
    Unusable(&'static str),
}

/// Identity of an mTLS client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Policy subject: the SPIFFE ID if present, else the first DNS SAN.
    pub subject: String,
    /// The SPIFFE ID from the single URI SAN, if any.
    pub spiffe_id: Option<SpiffeId>,
    /// The first DNS SAN, if any.
    pub dns_name: Option<String>,
    /// base64url (no padding) SHA-256 of the leaf DER (`x5t#S256`).
    pub thumbprint: String,
    /// Certificate `notAfter` as seconds since the Unix epoch.
    pub not_after: u64,
}

/// Why a peer certificate yields no identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The DER is larger than [`MAX_LEAF_DER_LEN`].
    #[error("certificate larger than {MAX_LEAF_DER_LEN} bytes")]
    TooLarge,
    /// The DER does not parse as an X.509 certificate.
    #[error("malformed certificate")]
    Malformed,
    /// Bytes follow the certificate.
    #[error("trailing data after certificate")]
    TrailingData,
    /// A SAN, basicConstraints or KeyUsage extension is duplicated or malformed.
    #[error("invalid {0} extension")]
    InvalidExtension(&'static str),
    /// A SAN entry could not be decoded.
    #[error("undecodable subjectAltName entry")]
    InvalidSanEntry,
    /// More than one URI SAN.
    #[error("more than one URI SAN")]
    MultipleUriSans,
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(SpiffeIdError),
    /// The first DNS SAN is not a valid DNS name.
    #[error("invalid DNS SAN")]
    InvalidDnsName,
    /// Neither a URI SAN nor a DNS SAN.
    #[error("certificate has no URI or DNS SAN")]
    NoIdentity,
    /// basicConstraints has `cA=true`.
    #[error("leaf certificate is a CA")]
    CaCertificate,
    /// KeyUsage allows `keyCertSign` or `cRLSign`.
    #[error("leaf key usage allows certificate or CRL signing")]
    SigningKeyUsage,
    /// KeyUsage is present without `digitalSignature`.
    #[error("leaf key usage lacks digitalSignature")]
    MissingDigitalSignature,
    /// `notAfter` is before the Unix epoch.
    #[error("invalid validity period")]
    InvalidValidity,
}

impl PeerError {
    /// Stable machine-readable code for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PeerError::TooLarge => "cert_too_large",
            PeerError::Malformed => "cert_malformed",
            PeerError::TrailingData => "cert_trailing_data",
            PeerError::InvalidExtension(_) => "cert_invalid_extension",
            PeerError::InvalidSanEntry => "cert_invalid_san_entry",
            PeerError::MultipleUriSans => "cert_multiple_uri_sans",
            PeerError::InvalidSpiffeId(_) => "cert_invalid_spiffe_id",
            PeerError::InvalidDnsName => "cert_invalid_dns_name",
            PeerError::NoIdentity => "cert_no_identity",
            PeerError::CaCertificate => "cert_is_ca",
            PeerError::SigningKeyUsage => "cert_key_usage_signing",
            PeerError::MissingDigitalSignature => "cert_key_usage_no_digital_signature",
            PeerError::InvalidValidity => "cert_invalid_validity",
        }
    }
}

/// RFC 8705 `x5t#S256` thumbprint of DER bytes.
pub fn thumbprint_sha256(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, der).as_ref())
}

/// Finds the single extension with `oid`; duplicates and parse failures are errors.
fn unique_extension<'c, 'a>(
    cert: &'c X509Certificate<'a>,
    oid: &Oid<'_>,
    what: &'static str,
) -> Result<Option<&'c X509Extension<'a>>, PeerError> {
    let mut found = None;
    for ext in cert.extensions() {
        if ext.oid == *oid {
            if found.is_some() {
                return Err(PeerError::InvalidExtension(what));
            }
            found = Some(ext);
        }
    }
    Ok(found)
}

/// Whether `name` is an acceptable DNS name (letters, digits, `-`, `_`,
/// non-empty labels; no wildcard; no trailing dot). Case is kept as is.
fn is_valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_DNS_NAME_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_DNS_LABEL_LEN
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Extracts the peer identity from a leaf certificate's DER.
///
/// The certificate chain must already have been verified (by the TLS stack);
/// this only applies the application-level leaf rules described in the module
/// documentation.
pub fn from_leaf_der(der: &[u8]) -> Result<PeerIdentity, PeerError> {
    if der.len() > MAX_LEAF_DER_LEN {
        return Err(PeerError::TooLarge);
    }
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| PeerError::Malformed)?;
    if !rest.is_empty() {
        return Err(PeerError::TrailingData);
    }

    if let Some(ext) = unique_extension(&cert, &OID_X509_EXT_BASIC_CONSTRAINTS, "basicConstraints")?
    {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => {
                if bc.ca {
                    return Err(PeerError::CaCertificate);
                }
            }
            _ => return Err(PeerError::InvalidExtension("basicConstraints")),
        }
    }
    if let Some(ext) = unique_extension(&cert, &OID_X509_EXT_KEY_USAGE, "keyUsage")? {
        match ext.parsed_extension() {
            ParsedExtension::KeyUsage(ku) => {
                if ku.key_cert_sign() || ku.crl_sign() {
                    return Err(PeerError::SigningKeyUsage);
                }
                if !ku.digital_signature() {
                    return Err(PeerError::MissingDigitalSignature);
                }
            }
            _ => return Err(PeerError::InvalidExtension("keyUsage")),
        }
    }

    let mut uri: Option<&str> = None;
    let mut dns: Option<&str> = None;
    if let Some(ext) = unique_extension(&cert, &OID_X509_EXT_SUBJECT_ALT_NAME, "subjectAltName")? {
        let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
            return Err(PeerError::InvalidExtension("subjectAltName"));
        };
        for name in &san.general_names {
            match name {
                GeneralName::URI(u) => {
                    if uri.is_some() {
                        return Err(PeerError::MultipleUriSans);
                    }
                    uri = Some(u);
                }
                GeneralName::DNSName(d) if dns.is_none() => dns = Some(d),
                GeneralName::Invalid(..) => return Err(PeerError::InvalidSanEntry),
                _ => {}
            }
        }
    }

    let dns_name = match dns {
        Some(d) if is_valid_dns_name(d) => Some(d.to_owned()),
        Some(_) => return Err(PeerError::InvalidDnsName),
        None => None,
    };
    let spiffe_id = uri
        .map(SpiffeId::parse)
        .transpose()
        .map_err(PeerError::InvalidSpiffeId)?;
    let subject = match (&spiffe_id, &dns_name) {
        (Some(id), _) => id.as_str().to_owned(),
        (None, Some(d)) => d.clone(),
        (None, None) => return Err(PeerError::NoIdentity),
    };
    let not_after = u64::try_from(cert.validity().not_after.timestamp())
        .map_err(|_| PeerError::InvalidValidity)?;

    Ok(PeerIdentity {
        subject,
        spiffe_id,
        dns_name,
        thumbprint: thumbprint_sha256(der),
        not_after,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn dns(s: &str) -> SanType {
        SanType::DnsName(s.try_into().unwrap())
    }

    fn build(f: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "spiffe://example.org/in-cn");
        f(&mut params);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn spiffe_leaf_ok() {
        let der = build(|p| {
            p.subject_alt_names = vec![uri("spiffe://example.org/agent/demo"), dns("agent.local")];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.is_ca = IsCa::ExplicitNoCa;
        });
        let id = from_leaf_der(&der).unwrap();
        assert_eq!(id.subject, "spiffe://example.org/agent/demo");
        assert_eq!(
            id.spiffe_id.as_ref().map(SpiffeId::trust_domain),
            Some("example.org")
        );
        assert_eq!(id.dns_name.as_deref(), Some("agent.local"));
        // independently computed thumbprint
        let expected = {
            let d = digest::digest(&digest::SHA256, &der);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
        };
        assert_eq!(id.thumbprint, expected);
        assert_eq!(id.thumbprint.len(), 43);
        assert!(!id.thumbprint.contains(['=', '+', '/']));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(id.not_after as i64, cert.validity().not_after.timestamp());
        assert!(id.not_after > 0);
    }

    #[test]
    fn dns_subject_when_no_uri() {
        let der = build(|p| {
            p.subject_alt_names = vec![dns("first.example.com"), dns("second.example.com")];
        });
        let id = from_leaf_der(&der).unwrap();
        assert_eq!(id.subject, "first.example.com");
        assert_eq!(id.spiffe_id, None);
        assert_eq!(id.dns_name.as_deref(), Some("first.example.com"));
    }

    #[test]
    fn rejections() {
        let cases: Vec<(Vec<u8>, PeerError)> = vec![
            (
                build(|p| {
                    p.subject_alt_names =
                        vec![uri("spiffe://example.org/a"), uri("spiffe://example.org/b")]
                }),
                PeerError::MultipleUriSans,
            ),
            (
                build(|p| p.subject_alt_names = vec![uri("https://example.org/a")]),
                PeerError::InvalidSpiffeId(SpiffeIdError::BadScheme),
            ),
            (
                build(|p| {
                    p.subject_alt_names =
                        vec![uri("spiffe://example.org/a/../b"), dns("ok.example")]
                }),
                PeerError::InvalidSpiffeId(SpiffeIdError::DotSegment),
            ),
            (build(|_| {}), PeerError::NoIdentity),
            (
                build(|p| {
                    p.subject_alt_names =
                        vec![SanType::Rfc822Name("a@example.org".try_into().unwrap())]
                }),
                PeerError::NoIdentity,
            ),
            (
                build(|p| {
                    p.subject_alt_names = vec![uri("spiffe://example.org/a")];
                    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                }),
                PeerError::CaCertificate,
            ),
            (
                build(|p| {
                    p.subject_alt_names = vec![uri("spiffe://example.org/a")];
                    p.key_usages = vec![
                        KeyUsagePurpose::DigitalSignature,
                        KeyUsagePurpose::KeyCertSign,
                    ];
                }),
                PeerError::SigningKeyUsage,
            ),
            (
                build(|p| {
                    p.subject_alt_names = vec![uri("spiffe://example.org/a")];
                    p.key_usages =
                        vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
                }),
                PeerError::SigningKeyUsage,
            ),
            (
                build(|p| {
                    p.subject_alt_names = vec![uri("spiffe://example.org/a")];
                    p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
                }),
                PeerError::MissingDigitalSignature,
            ),
            (
                build(|p| p.subject_alt_names = vec![dns("*.example.com")]),
                PeerError::InvalidDnsName,
            ),
            (
                build(|p| p.subject_alt_names = vec![dns("a..example.com")]),
                PeerError::InvalidDnsName,
            ),
        ];
        for (i, (der, want)) in cases.into_iter().enumerate() {
            let got = from_leaf_der(&der);
            assert_eq!(got.as_ref().err(), Some(&want), "case {i}: {got:?}");
            assert!(!want.reason().is_empty());
        }
    }

    #[test]
    fn malformed_input() {
        assert_eq!(from_leaf_der(&[]), Err(PeerError::Malformed));
        assert_eq!(
            from_leaf_der(&[0x30, 0x03, 1, 2]),
            Err(PeerError::Malformed)
        );
        assert_eq!(
            from_leaf_der(&vec![0u8; MAX_LEAF_DER_LEN + 1]),
            Err(PeerError::TooLarge)
        );
        let mut der = build(|p| p.subject_alt_names = vec![dns("a.example")]);
        der.push(0);
        assert_eq!(from_leaf_der(&der), Err(PeerError::TrailingData));
        // truncation anywhere never panics
        let der = build(|p| p.subject_alt_names = vec![uri("spiffe://example.org/a")]);
        for len in 0..der.len() {
            assert!(from_leaf_der(&der[..len]).is_err());
        }
        // single bit flips never panic
        for i in 0..der.len() {
            let mut d = der.clone();
            d[i] ^= 0x01;
            let _ = from_leaf_der(&d);
        }
    }

    #[test]
    fn dns_name_validation() {
        assert!(is_valid_dns_name("a.example.com"));
        assert!(is_valid_dns_name("A-1_b.Example"));
        assert!(is_valid_dns_name("localhost"));
        for bad in ["", "a.", ".a", "a..b", "*.a", "a b", "a/b", "a:1", "é.a"] {
            assert!(!is_valid_dns_name(bad), "{bad:?}");
        }
        assert!(!is_valid_dns_name(&"a".repeat(MAX_DNS_LABEL_LEN + 1)));
        assert!(is_valid_dns_name(&"a".repeat(MAX_DNS_LABEL_LEN)));
    }
}
