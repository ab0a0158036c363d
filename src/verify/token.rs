//! The typed claims of a verified token.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::{VerifyError, MAX_ACTOR_DEPTH, MAX_SCOPES};
use crate::claims::{Actor, Confirmation};

/// A token that passed [`super::Verifier::verify`]: signature, `typ`,
/// `iss`, `aud` and times checked. Only the verifier creates one.
///
/// ```
/// # #[cfg(feature = "server")]
/// # {
/// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
/// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// let t = rt.block_on(v.verify(&token))?;
/// assert!(t.scopes().contains("tickets:read"));
/// assert_eq!(t.actors(), ["spiffe://example.org/agent/planner"]);
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    subject: String,
    actors: Vec<String>,
    scopes: BTreeSet<String>,
    task: String,
    grant: Option<String>,
    owner: Option<String>,
    client_id: Option<String>,
    x5t_s256: Option<String>,
    jkt: Option<String>,
    jti: String,
    exp: u64,
    iat: Option<u64>,
    ancestors: Vec<String>,
    authorization_details: Option<Value>,
}

fn malformed(name: &'static str) -> VerifyError {
    VerifyError::MalformedClaim(name)
}

impl VerifiedToken {
    pub(super) fn from_claims(mut claims: Map<String, Value>) -> Result<Self, VerifyError> {
        // Take each claim out of the map (no copies); the registered ones
        // were type-checked by `jose::validate` already, but nothing here
        // relies on that.
        fn string(
            claims: &mut Map<String, Value>,
            name: &'static str,
        ) -> Result<Option<String>, VerifyError> {
            match claims.remove(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(malformed(name)),
            }
        }
        fn number(
            claims: &Map<String, Value>,
            name: &'static str,
        ) -> Result<Option<u64>, VerifyError> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or(malformed(name)),
            }
        }
        // A member read through the shared claims schema ([`crate::claims`],
        // the types the broker mints with): any other shape is malformed.
        fn member<T: serde::de::DeserializeOwned>(
            claims: &mut Map<String, Value>,
            name: &'static str,
        ) -> Result<Option<T>, VerifyError> {
            match claims.remove(name) {
                None => Ok(None),
                Some(v) => serde_json::from_value(v)
                    .map(Some)
                    .map_err(|_| malformed(name)),
            }
        }
        let subject = string(&mut claims, "sub")?.ok_or(malformed("sub"))?;
        let jti = string(&mut claims, "jti")?.ok_or(malformed("jti"))?;
        let task = string(&mut claims, "txn")?
            .filter(|t| !t.is_empty())
            .ok_or(malformed("txn"))?;
        let exp = number(&claims, "exp")?.ok_or(malformed("exp"))?;
        let iat = number(&claims, "iat")?;
        let scope = string(&mut claims, "scope")?;
        let grant = string(&mut claims, "grant")?;
        let owner = string(&mut claims, "owner")?;
        let client_id = string(&mut claims, "client_id")?;

        // `act` is the schema's `Actor` chain; deeper than the broker mints
        // (the shared `MAX_ACTOR_DEPTH`) or with an empty `sub`: malformed.
        let mut actors = Vec::new();
        if let Some(act) = member::<Actor>(&mut claims, "act")? {
            if act.depth() > MAX_ACTOR_DEPTH {
                return Err(malformed("act"));
            }
            let mut cur = Some(&act);
            while let Some(a) = cur {
                if a.sub.is_empty() {
                    return Err(malformed("act"));
                }
                actors.push(a.sub.clone());
                cur = a.act.as_deref();
            }
        }

        let mut scopes = BTreeSet::new();
        for s in scope.as_deref().unwrap_or("").split(' ') {
            if s.is_empty() {
                continue;
            }
            if scopes.len() >= MAX_SCOPES {
                return Err(malformed("scope"));
            }
            scopes.insert(s.to_owned());
        }

        let Confirmation { x5t_s256, jkt } =
            member::<Confirmation>(&mut claims, "cnf")?.unwrap_or_default();
        if x5t_s256.as_deref().is_some_and(str::is_empty)
            || jkt.as_deref().is_some_and(str::is_empty)
        {
            return Err(malformed("cnf"));
        }

        let ancestors = member::<Vec<String>>(&mut claims, "ancestors")?.unwrap_or_default();
        let authorization_details = match claims.remove("authorization_details") {
            None => None,
            Some(v @ Value::Array(_)) => Some(v),
            Some(_) => return Err(malformed("authorization_details")),
        };

        Ok(VerifiedToken {
            subject,
            actors,
            scopes,
            task,
            grant,
            owner,
            client_id,
            x5t_s256,
            jkt,
            jti,
            exp,
            iat,
            ancestors,
            authorization_details,
        })
    }

    /// `sub`: the workload or user the token is about.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert_eq!(t.subject(), "spiffe://example.org/agent/demo");
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The `act` chain as actor subjects, current actor first (empty when
    /// the subject acts for itself).
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert_eq!(t.actors().first().map(String::as_str), Some("spiffe://example.org/agent/planner"));
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn actors(&self) -> &[String] {
        &self.actors
    }

    /// The granted scopes.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert_eq!(t.scopes().len(), 2);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn scopes(&self) -> &BTreeSet<String> {
        &self.scopes
    }

    /// The task (`txn`) shared by every token of one call chain.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert_eq!(t.task(), "task-1");
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn task(&self) -> &str {
        &self.task
    }

    /// The grant (policy rule) that allowed issuance, if any.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert_eq!(t.grant(), Some("tickets"));
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn grant(&self) -> Option<&str> {
        self.grant.as_deref()
    }

    /// The owner of the grant or subject, if any.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert_eq!(t.owner(), Some("team-support"));
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// The OAuth client the token was issued to, if present.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert_eq!(t.client_id(), Some("demo-client"));
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// `cnf.x5t#S256`: base64url SHA-256 of the certificate the token is
    /// bound to (RFC 8705), if bound.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert_eq!(t.x5t_s256(), None);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn x5t_s256(&self) -> Option<&str> {
        self.x5t_s256.as_deref()
    }

    /// `cnf.jkt`: the DPoP key thumbprint (RFC 9449), if bound.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert_eq!(t.jkt(), None);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn jkt(&self) -> Option<&str> {
        self.jkt.as_deref()
    }

    /// `jti`: the token's unique id.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert_eq!(t.jti(), "jti-1");
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn jti(&self) -> &str {
        &self.jti
    }

    /// `exp`, seconds since the Unix epoch.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert!(t.exp() > t.iat().unwrap_or(0));
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn exp(&self) -> u64 {
        self.exp
    }

    /// `iat`, seconds since the Unix epoch, if present.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert!(t.iat().is_some());
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn iat(&self) -> Option<u64> {
        self.iat
    }

    /// `jti` of every token this one was derived from by re-exchange,
    /// nearest first.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert!(t.ancestors().is_empty());
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn ancestors(&self) -> &[String] {
        &self.ancestors
    }

    /// Succeeds when the token holds every scope in `required`.
    ///
    /// # Errors
    /// [`VerifyError::InsufficientScope`] otherwise.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert!(t.require_scopes(&["tickets:read"]).is_ok());
    /// assert!(t.require_scopes(&["tickets:read", "tickets:delete"]).is_err());
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn require_scopes(&self, required: &[&str]) -> Result<(), VerifyError> {
        if required.iter().all(|s| self.scopes.contains(*s)) {
            Ok(())
        } else {
            Err(VerifyError::InsufficientScope)
        }
    }

    /// Checks the RFC 8705 certificate binding against the client
    /// certificate (`leaf_der`, DER) the request came with: a token bound
    /// with `cnf.x5t#S256` needs that exact certificate; an unbound token
    /// passes.
    ///
    /// # Errors
    /// [`VerifyError::CertificateMismatch`] when the token is bound and the
    /// certificate's base64url SHA-256 differs.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// // unbound: any (or no) certificate passes
    /// assert!(t.check_certificate(b"").is_ok());
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check_certificate(&self, leaf_der: &[u8]) -> Result<(), VerifyError> {
        let Some(expected) = self.x5t_s256.as_deref() else {
            return Ok(());
        };
        if leaf_der.is_empty() {
            return Err(VerifyError::CertificateMismatch);
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf_der);
        let actual = crate::jose::b64url_encode(digest.as_ref());
        if aws_lc_rs::constant_time::verify_slices_are_equal(actual.as_bytes(), expected.as_bytes())
            .is_ok()
        {
            Ok(())
        } else {
            Err(VerifyError::CertificateMismatch)
        }
    }

    /// `authorization_details` (RFC 9396): the exact action a human
    /// approved or the workload asked for, as the broker copied it.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert!(t.authorization_details().is_none());
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn authorization_details(&self) -> Option<&Value> {
        self.authorization_details.as_ref()
    }

    /// Whether the token is sender-constrained (`cnf.x5t#S256` or
    /// `cnf.jkt`).
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert!(!t.is_bound());
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn is_bound(&self) -> bool {
        self.x5t_s256.is_some() || self.jkt.is_some()
    }
}
