//! Verifying a token as a request presented it: the authorization scheme,
//! the DPoP proof (RFC 9449 §7) and the client certificate (RFC 8705 §3).

use super::{VerifiedToken, Verifier, VerifyError};
use crate::dpop::{self, ProofCheck};

/// The authorization scheme a token came with.
///
/// ```
/// use tessera::verify::Scheme;
/// assert_eq!(Scheme::parse("Authorization-less"), None);
/// assert_eq!(Scheme::parse("bearer"), Some(Scheme::Bearer));
/// assert_eq!(Scheme::parse("DPoP"), Some(Scheme::DPoP));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer` (RFC 6750).
    Bearer,
    /// `Authorization: DPoP` (RFC 9449 §7.1).
    DPoP,
}

impl Scheme {
    /// The scheme named by an `Authorization` header's first word
    /// (case-insensitive), if Tessera tokens use it.
    ///
    /// ```
    /// assert_eq!(tessera::verify::Scheme::parse("Basic"), None);
    /// ```
    #[must_use]
    pub fn parse(s: &str) -> Option<Scheme> {
        if s.eq_ignore_ascii_case("bearer") {
            Some(Scheme::Bearer)
        } else if s.eq_ignore_ascii_case("dpop") {
            Some(Scheme::DPoP)
        } else {
            None
        }
    }
}

/// Everything a request brought to prove it may use its token.
///
/// ```
/// use tessera::verify::{Presented, Scheme};
/// let p = Presented::new(Scheme::Bearer, "eyJ...", "GET", "/tickets");
/// assert!(p.dpop_proof.is_none() && p.client_certificate.is_none());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// The `Authorization` scheme.
    pub scheme: Scheme,
    /// The access token.
    pub token: &'a str,
    /// The `DPoP` header, if any.
    pub dpop_proof: Option<&'a str>,
    /// The request method.
    pub method: &'a str,
    /// The request path (without query); appended to the verifier's
    /// `resource_url` to form the DPoP `htu`.
    pub path: &'a str,
    /// The DER client certificate of the TLS connection, if any.
    pub client_certificate: Option<&'a [u8]>,
}

impl<'a> Presented<'a> {
    /// A presentation without proof or certificate.
    ///
    /// ```
    /// let p = tessera::verify::Presented::new(tessera::verify::Scheme::DPoP, "t", "POST", "/x");
    /// assert_eq!(p.method, "POST");
    /// ```
    #[must_use]
    pub fn new(scheme: Scheme, token: &'a str, method: &'a str, path: &'a str) -> Self {
        Self {
            scheme,
            token,
            dpop_proof: None,
            method,
            path,
            client_certificate: None,
        }
    }

    /// With the request's `DPoP` header.
    ///
    /// ```
    /// let p = tessera::verify::Presented::new(tessera::verify::Scheme::DPoP, "t", "GET", "/").dpop("proof");
    /// assert_eq!(p.dpop_proof, Some("proof"));
    /// ```
    #[must_use]
    pub fn dpop(mut self, proof: &'a str) -> Self {
        self.dpop_proof = Some(proof);
        self
    }

    /// With the connection's client certificate (DER).
    ///
    /// ```
    /// let p = tessera::verify::Presented::new(tessera::verify::Scheme::Bearer, "t", "GET", "/").certificate(b"\x30");
    /// assert!(p.client_certificate.is_some());
    /// ```
    #[must_use]
    pub fn certificate(mut self, der: &'a [u8]) -> Self {
        self.client_certificate = Some(der);
        self
    }
}

impl Verifier {
    /// Verifies a token as presented with a request: [`Verifier::verify`],
    /// then the sender constraint. A `cnf.jkt` (DPoP-bound) token must come
    /// with the `DPoP` scheme and a fresh proof by that key for this method
    /// and URL whose `ath` is the token's hash, used once; a `DPoP`-scheme
    /// request must carry a DPoP-bound token; a `cnf.x5t#S256` token must
    /// come over the certificate it names.
    ///
    /// # Errors
    /// The first [`VerifyError`] found.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// use tessera::verify::{Presented, Scheme, Verifier};
    /// let v = Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let ok = rt.block_on(v.verify_request(&Presented::new(Scheme::Bearer, &token, "GET", "/tickets")));
    /// assert!(ok.is_ok());
    /// // The fixture token is not DPoP-bound: the DPoP scheme is refused.
    /// let err = rt.block_on(v.verify_request(&Presented::new(Scheme::DPoP, &token, "GET", "/tickets"))).err();
    /// assert_eq!(err.map(|e| e.reason()), Some("scheme_mismatch"));
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn verify_request(&self, p: &Presented<'_>) -> Result<VerifiedToken, VerifyError> {
        let token = self.verify(p.token).await?;
        self.check_binding(&token, p)?;
        Ok(token)
    }

    fn check_binding(&self, token: &VerifiedToken, p: &Presented<'_>) -> Result<(), VerifyError> {
        match (p.scheme, token.jkt()) {
            (Scheme::Bearer, None) => {
                if p.dpop_proof.is_some() {
                    // RFC 9449 §7.2 allows ignoring it; refusing is clearer.
                    return Err(VerifyError::SchemeMismatch);
                }
            }
            (Scheme::Bearer, Some(_)) | (Scheme::DPoP, None) => {
                return Err(VerifyError::SchemeMismatch);
            }
            (Scheme::DPoP, Some(jkt)) => self.check_dpop(jkt, p)?,
        }
        token.check_certificate(p.client_certificate.unwrap_or_default())
    }

    fn check_dpop(&self, jkt: &str, p: &Presented<'_>) -> Result<(), VerifyError> {
        let proof = p.dpop_proof.ok_or(VerifyError::DpopProof("dpop_missing"))?;
        let base = self
            .resource_url
            .as_deref()
            .ok_or(VerifyError::DpopProof("dpop_resource_url_unset"))?;
        let path = p.path.split(['?', '#']).next().unwrap_or("");
        let htu = format!("{base}{path}");
        let now = self.clock.now();
        let check = ProofCheck::new(p.method, &htu, now).access_token(p.token);
        let proof =
            dpop::verify_proof(proof, &check).map_err(|e| VerifyError::DpopProof(e.as_str()))?;
        if aws_lc_rs::constant_time::verify_slices_are_equal(proof.jkt.as_bytes(), jkt.as_bytes())
            .is_err()
        {
            return Err(VerifyError::DpopProof("dpop_key_mismatch"));
        }
        let key = format!("{}:{}", proof.jkt, proof.jti);
        let until = proof.iat.saturating_add(dpop::DPOP_IAT_WINDOW_SECS + 1);
        match self.replay.first_use(&key, until, now) {
            Ok(true) => Ok(()),
            Ok(false) => Err(VerifyError::DpopProof("dpop_replayed")),
            Err(_) => Err(VerifyError::DpopProof("dpop_replay_cache_full")),
        }
    }
}
