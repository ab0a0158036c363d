// One file: the `Verifier` and its builder; the token reader, revocation
// follower, extractor and metadata already live apart.
//! Resource-server verification of Tessera access tokens.
//!
//! A resource server (an API that receives Tessera tokens) builds one
//! [`Verifier`] for its audience and calls [`Verifier::verify`] on every
//! bearer token. The verifier enforces, in this order: strict compact-JWS
//! structure, the algorithm allowlist, `typ: at+jwt`, a `kid` that names a
//! key of the issuer (refreshing the JWKS on an unknown `kid`, rate-limited
//! by [`JwksCache`]), the signature, the exact `iss`, the expected `aud`,
//! `exp` / `nbf` / `iat` with a small leeway, and finally the shape of
//! Tessera's own claims. What comes back is a [`VerifiedToken`] with typed
//! claims; nothing is read from a token before its signature is checked.
//!
//! Sender-constrained tokens (`cnf.x5t#S256`, RFC 8705) are checked with
//! [`VerifiedToken::check_certificate`]; revocation with a
//! `RevocationFollower` (feature `verifier-http`), which follows the
//! broker's `/revocations` feed.
//!
//! The module builds without the broker (`default-features = false`); the
//! HTTPS parts (OIDC discovery, the revocation follower) need the
//! `verifier-http` feature, the axum extractor `Bearer` the `axum` feature.
//!
//! ```
//! # #[cfg(feature = "server")]
//! # {
//! # let (jwks, token) = tessera::verify::doc_support::fixture()?;
//! use tessera::verify::Verifier;
//!
//! let verifier = Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?
//!     .build()?;
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let token = verifier.verify(&token).await?;
//! token.require_scopes(&["tickets:read"])?;
//! assert_eq!(token.subject(), "spiffe://example.org/agent/demo");
//! # Ok::<(), tessera::verify::VerifyError>(())
//! # })?;
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::jose::alg::Algorithm;
use crate::jose::jwk::{parse_jwk_set, JwkError, JwkSet, VerifyingKey};
use crate::jose::jws::{self, JwsError};
use crate::jose::validate::{self, ClaimError, ClaimRules, RulesError};
use crate::jwks::{JwksCache, KeyLookupError};

mod resource;
mod token;
pub use resource::{ProtectedResource, PROTECTED_RESOURCE_WELL_KNOWN};
pub use token::VerifiedToken;

#[cfg(feature = "verifier-http")]
mod introspect;
mod request;
#[cfg(feature = "verifier-http")]
mod revocation;
pub use request::{Presented, Scheme};
#[cfg(feature = "verifier-http")]
pub use revocation::{
    FollowerError, FollowerTls, RevocationFollower, FEED_PATH, MAX_FEED_BODY_BYTES,
    MAX_FEED_SILENCE, MAX_LIVE_ENTRIES, MAX_SSE_LINE_BYTES, POLL_INTERVAL, STREAM_RETRY_DELAY,
};

#[cfg(feature = "axum")]
mod extract;
#[cfg(feature = "axum")]
pub use extract::{
    metadata_router, Bearer, BearerRejection, ClientCertificate, Refusal, RejectionReason,
    RequireScope, RequireScopeService,
};

#[cfg(feature = "server")]
#[doc(hidden)]
pub mod doc_support;

#[cfg(all(test, feature = "server"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

/// Default clock-skew allowance.
///
/// ```
/// assert_eq!(tessera::verify::DEFAULT_LEEWAY, std::time::Duration::from_secs(30));
/// ```
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(validate::DEFAULT_LEEWAY_SECS);

/// Largest leeway accepted by [`VerifierBuilder::leeway`].
///
/// ```
/// assert!(tessera::verify::MAX_LEEWAY >= tessera::verify::DEFAULT_LEEWAY);
/// ```
pub const MAX_LEEWAY: Duration = Duration::from_secs(validate::MAX_LEEWAY_SECS);

/// Algorithms accepted unless [`VerifierBuilder::algorithms`] says otherwise.
///
/// ```
/// use tessera::jose::Algorithm;
/// assert_eq!(tessera::verify::DEFAULT_ALGORITHMS, [Algorithm::ES256, Algorithm::EdDSA]);
/// ```
pub const DEFAULT_ALGORITHMS: [Algorithm; 2] = [Algorithm::ES256, Algorithm::EdDSA];

/// Accepted header `typ` values (RFC 9068 §2.1), compared ASCII
/// case-insensitively.
///
/// ```
/// assert!(tessera::verify::ACCEPTED_TYPS.contains(&"at+jwt"));
/// ```
pub const ACCEPTED_TYPS: [&str; 2] = ["at+jwt", "application/at+jwt"];

/// Deepest `act` chain accepted (the broker refuses to mint deeper ones):
/// the one limit of the shared claims schema ([`crate::claims`]).
///
/// ```
/// assert_eq!(tessera::verify::MAX_ACTOR_DEPTH, 8);
/// ```
pub use crate::claims::MAX_ACTOR_DEPTH;

/// Most scopes accepted in one token.
///
/// ```
/// assert!(tessera::verify::MAX_SCOPES >= 16);
/// ```
pub const MAX_SCOPES: usize = 256;

/// Why a [`Verifier`] could not be built.
///
/// ```
/// use tessera::verify::{BuildError, Verifier};
/// let err = Verifier::with_static_jwks("", "aud", br#"{"keys":[]}"#).err();
/// assert_eq!(err.map(|e| e.reason()), Some("empty_issuer"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The issuer is empty.
    #[error("issuer must not be empty")]
    EmptyIssuer,
    /// The audience is empty.
    #[error("audience must not be empty")]
    EmptyAudience,
    /// The static JWK Set is invalid.
    #[error("invalid JWK Set: {0}")]
    Jwks(JwkError),
    /// The static JWK Set holds no key.
    #[error("JWK Set holds no key")]
    NoKeys,
    /// The algorithm allowlist is empty.
    #[error("no algorithm allowed")]
    NoAlgorithms,
    /// The leeway exceeds [`MAX_LEEWAY`].
    #[error("leeway too large")]
    LeewayTooLarge,
    /// The HTTPS client could not be built.
    #[error("HTTP client: {0}")]
    Client(&'static str),
    /// The introspection endpoint is not an https URL.
    #[error("introspection endpoint must be an https URL without credentials, query or fragment")]
    InvalidUrl,
    /// The mTLS identity is unusable (introspection mode).
    #[error("TLS: {0}")]
    Tls(&'static str),
    /// The protected resource metadata is invalid: the resource or an
    /// authorization server is not an https URL without credentials, query
    /// or fragment, or a scope is not an RFC 6749 scope token.
    #[error("invalid protected resource metadata")]
    InvalidResource,
}

impl BuildError {
    /// A short stable code for logs and metrics.
    ///
    /// ```
    /// assert_eq!(tessera::verify::BuildError::NoKeys.reason(), "no_keys");
    /// ```
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self {
            BuildError::EmptyIssuer => "empty_issuer",
            BuildError::EmptyAudience => "empty_audience",
            BuildError::Jwks(_) => "invalid_jwks",
            BuildError::NoKeys => "no_keys",
            BuildError::NoAlgorithms => "no_algorithms",
            BuildError::LeewayTooLarge => "leeway_too_large",
            BuildError::Client(_) => "client_config",
            BuildError::InvalidUrl => "invalid_url",
            BuildError::Tls(_) => "tls",
            BuildError::InvalidResource => "invalid_resource",
        }
    }
}

impl From<RulesError> for BuildError {
    fn from(e: RulesError) -> Self {
        match e {
            RulesError::EmptyIssuer => BuildError::EmptyIssuer,
            RulesError::NoAudience => BuildError::EmptyAudience,
        }
    }
}

/// Why a token was refused. Carries no token content; [`VerifyError::reason`]
/// is a stable code, [`VerifyError::is_insufficient_scope`] tells the two
/// RFC 6750 error codes apart.
///
/// ```
/// use tessera::verify::VerifyError;
/// assert_eq!(VerifyError::TypMismatch.reason(), "typ_mismatch");
/// assert!(VerifyError::InsufficientScope.is_insufficient_scope());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a well-formed compact JWS (or a header the JOSE layer refuses).
    #[error("malformed token: {0}")]
    Malformed(JwsError),
    /// The header `alg` is not in the allowlist.
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// The header `typ` is missing or not `at+jwt`.
    #[error("typ is not at+jwt")]
    TypMismatch,
    /// The header has no `kid`.
    #[error("kid missing")]
    MissingKid,
    /// No usable key for the `kid`.
    #[error("key lookup failed: {0}")]
    Key(KeyLookupError),
    /// The signature (or the alg/kid binding to the key) did not verify.
    #[error("signature rejected: {0}")]
    Signature(JwsError),
    /// A registered claim failed validation (iss, aud, exp, nbf, ...).
    #[error("claims rejected: {0}")]
    Claims(ClaimError),
    /// A Tessera claim is missing or has the wrong shape.
    #[error("claim `{0}` is malformed")]
    MalformedClaim(&'static str),
    /// The token lacks a required scope.
    #[error("insufficient scope")]
    InsufficientScope,
    /// The token is bound to a certificate (`cnf.x5t#S256`) and the
    /// presented certificate is absent or differs.
    #[error("certificate does not match the token binding")]
    CertificateMismatch,
    /// The token has been revoked.
    #[error("token revoked")]
    Revoked,
    /// Whether the token is revoked cannot be known right now (the
    /// revocation follower has not synced, has lost the feed for too long,
    /// or had to drop entries): answer 503, not 401.
    #[error("revocation status unknown: {0}")]
    RevocationStatusUnknown(&'static str),
    /// A DPoP-bound token (`cnf.jkt`) presented without the `DPoP`
    /// authorization scheme, or a `DPoP`-scheme request with a token that is
    /// not DPoP-bound (RFC 9449 §7.1).
    #[error("token presented with the wrong authorization scheme")]
    SchemeMismatch,
    /// The DPoP proof is missing, invalid, replayed, for another request,
    /// or signed by a key other than the token's `cnf.jkt` (RFC 9449
    /// `invalid_dpop_proof`). The code names the check that failed.
    #[error("invalid DPoP proof: {0}")]
    DpopProof(&'static str),
    /// The introspection endpoint said the token is not active.
    #[error("token not active")]
    Inactive,
    /// The resource requires DPoP-bound tokens
    /// ([`ProtectedResource::require_dpop`]) and the token is not one.
    #[error("a DPoP-bound token is required")]
    DpopRequired,
    /// The verifier requires a delegated token whose current actor is a
    /// given identity ([`VerifierBuilder::require_actor`]), and the token
    /// has no `act` or another current actor.
    #[error("the token's actor is not the one required")]
    ActorNotAllowed,
    /// The introspection endpoint could not be asked (answer 503).
    #[error("introspection unavailable: {0}")]
    IntrospectionUnavailable(&'static str),
}

impl VerifyError {
    /// A short stable code for logs and metrics.
    ///
    /// ```
    /// assert_eq!(tessera::verify::VerifyError::Revoked.reason(), "revoked");
    /// ```
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self {
            VerifyError::Malformed(e) => e.reason(),
            VerifyError::AlgorithmNotAllowed => "alg_not_allowed",
            VerifyError::TypMismatch => "typ_mismatch",
            VerifyError::MissingKid => "kid_missing",
            VerifyError::Key(e) => e.reason(),
            VerifyError::Signature(e) => e.reason(),
            VerifyError::Claims(e) => e.reason(),
            VerifyError::MalformedClaim(_) => "claims_malformed",
            VerifyError::InsufficientScope => "insufficient_scope",
            VerifyError::CertificateMismatch => "certificate_mismatch",
            VerifyError::Revoked => "revoked",
            VerifyError::RevocationStatusUnknown(r)
            | VerifyError::DpopProof(r)
            | VerifyError::IntrospectionUnavailable(r) => r,
            VerifyError::SchemeMismatch => "scheme_mismatch",
            VerifyError::Inactive => "inactive",
            VerifyError::DpopRequired => "dpop_required",
            VerifyError::ActorNotAllowed => "actor_not_allowed",
        }
    }

    /// Whether this is RFC 6750 `insufficient_scope` (403) rather than
    /// `invalid_token` (401).
    ///
    /// ```
    /// assert!(!tessera::verify::VerifyError::Revoked.is_insufficient_scope());
    /// ```
    #[must_use]
    pub const fn is_insufficient_scope(self) -> bool {
        matches!(self, VerifyError::InsufficientScope)
    }

    /// Whether the failure is the verifier's (keys unavailable: answer 503,
    /// not 401).
    ///
    /// ```
    /// use tessera::jwks::KeyLookupError;
    /// use tessera::verify::VerifyError;
    /// assert!(VerifyError::Key(KeyLookupError::Unavailable).is_unavailable());
    /// ```
    #[must_use]
    pub const fn is_unavailable(self) -> bool {
        matches!(
            self,
            VerifyError::Key(KeyLookupError::Unavailable | KeyLookupError::Stale)
                | VerifyError::RevocationStatusUnknown(_)
                | VerifyError::IntrospectionUnavailable(_)
        )
    }
}

/// Where the issuer's keys come from.
enum Keys {
    Static(Arc<JwkSet>),
    Cache(Arc<JwksCache>),
    #[cfg(feature = "verifier-http")]
    Oidc(Arc<crate::jwks::OidcIssuerKeys>),
    /// No local keys: every token is sent to the broker's `/introspect`.
    #[cfg(feature = "verifier-http")]
    Introspection(Arc<introspect::Introspector>),
}

impl Keys {
    async fn key(&self, kid: &str) -> Result<Arc<VerifyingKey>, KeyLookupError> {
        match self {
            Keys::Static(set) => set.find(Some(kid)).map_err(KeyLookupError::from),
            Keys::Cache(cache) => cache.key(Some(kid)).await,
            #[cfg(feature = "verifier-http")]
            Keys::Oidc(oidc) => oidc.key(Some(kid)).await,
            #[cfg(feature = "verifier-http")]
            Keys::Introspection(_) => Err(KeyLookupError::Unavailable),
        }
    }
}

/// Configures a [`Verifier`]. Only obtainable from a constructor that takes
/// both the issuer (with its key source) and the expected audience, so a
/// verifier without either cannot exist.
///
/// ```
/// # #[cfg(feature = "server")]
/// # {
/// # let (jwks, _token) = tessera::verify::doc_support::fixture()?;
/// use std::time::Duration;
/// use tessera::jose::Algorithm;
/// use tessera::verify::Verifier;
///
/// let verifier = Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?
///     .algorithms(&[Algorithm::ES256])
///     .leeway(Duration::from_secs(10))
///     .build()?;
/// assert_eq!(verifier.audience(), "https://api.example.com");
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct VerifierBuilder {
    issuer: String,
    audience: String,
    keys: Keys,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    clock: Arc<dyn Clock>,
    resource_url: Option<String>,
    replay_capacity: usize,
    protected: Option<ProtectedResource>,
    required_actor: Option<String>,
}

impl std::fmt::Debug for VerifierBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifierBuilder")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithms", &self.algorithms)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl VerifierBuilder {
    fn new(issuer: String, audience: String, keys: Keys) -> Result<Self, BuildError> {
        if issuer.is_empty() {
            return Err(BuildError::EmptyIssuer);
        }
        if audience.is_empty() {
            return Err(BuildError::EmptyAudience);
        }
        Ok(VerifierBuilder {
            issuer,
            audience,
            keys,
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            leeway: DEFAULT_LEEWAY,
            clock: Arc::new(SystemClock),
            resource_url: None,
            replay_capacity: crate::dpop::DEFAULT_REPLAY_CAPACITY,
            protected: None,
            required_actor: None,
        })
    }

    /// The resource server's external base URL (scheme, host, port and
    /// any path prefix, e.g. `https://api.example.com`). DPoP proofs must
    /// name it plus the request path in `htu`; without it, DPoP-bound
    /// tokens are refused (`dpop_resource_url_unset`) rather than trusting
    /// the request's `Host` header.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, _) = tessera::verify::doc_support::fixture()?;
    /// let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?
    ///     .resource_url("https://api.example.com/")
    ///     .build()?;
    /// assert_eq!(v.resource_url(), Some("https://api.example.com"));
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn resource_url(mut self, url: impl Into<String>) -> Self {
        let url: String = url.into();
        self.resource_url = Some(url.trim_end_matches('/').to_owned());
        self
    }

    /// How many DPoP proofs the replay cache holds (default
    /// [`crate::dpop::DEFAULT_REPLAY_CAPACITY`]); when full of live proofs
    /// new ones are refused.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, _) = tessera::verify::doc_support::fixture()?;
    /// let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?
    ///     .dpop_replay_capacity(1000)
    ///     .build()?;
    /// # let _ = v;
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn dpop_replay_capacity(mut self, capacity: usize) -> Self {
        self.replay_capacity = capacity;
        self
    }

    /// Publishes this resource's metadata (RFC 9728) and points every
    /// refusal of the extractor to it (`resource_metadata="…"` in
    /// `WWW-Authenticate`). An empty `authorization_servers` becomes this
    /// verifier's issuer. With [`ProtectedResource::require_dpop`], tokens
    /// that are not DPoP-bound are refused ([`VerifyError::DpopRequired`]).
    /// For an MCP server the resource is its own URL, and the verifier's
    /// audience should be that same URL (RFC 8707).
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, _) = tessera::verify::doc_support::fixture()?;
    /// use tessera::verify::{ProtectedResource, Verifier};
    /// let v = Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?
    ///     .protected_resource(ProtectedResource::new("https://api.example.com")?.scopes_supported(["tickets:read"]))
    ///     .build()?;
    /// let r = v.protected_resource().unwrap();
    /// assert_eq!(r.authorization_servers(), ["https://tessera.test"]);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn protected_resource(mut self, resource: ProtectedResource) -> Self {
        self.protected = Some(resource);
        self
    }

    /// Accepts only delegated tokens whose current actor (the outermost
    /// `act.sub`, RFC 8693 §4.1) is `actor`: a downstream API that must
    /// only be called on someone's behalf by one service (which exchanged
    /// the token it received) refuses the original, undelegated token and
    /// tokens other services obtained ([`VerifyError::ActorNotAllowed`]).
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// use tessera::verify::Verifier;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let v = Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?
    ///     .require_actor("spiffe://example.org/agent/planner")
    ///     .build()?;
    /// assert!(rt.block_on(v.verify(&token)).is_ok());
    /// let v = Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?
    ///     .require_actor("spiffe://example.org/service/other")
    ///     .build()?;
    /// assert_eq!(rt.block_on(v.verify(&token)).err().map(|e| e.reason()), Some("actor_not_allowed"));
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn require_actor(mut self, actor: impl Into<String>) -> Self {
        self.required_actor = Some(actor.into());
        self
    }

    /// Replaces the algorithm allowlist (default [`DEFAULT_ALGORITHMS`]).
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, _) = tessera::verify::doc_support::fixture()?;
    /// use tessera::jose::Algorithm;
    /// use tessera::verify::Verifier;
    /// let b = Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?;
    /// assert!(b.algorithms(&[]).build().is_err());
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn algorithms(mut self, algs: &[Algorithm]) -> Self {
        self.algorithms = algs.to_vec();
        self
    }

    /// Clock-skew allowance for `exp`, `nbf` and `iat` (default
    /// [`DEFAULT_LEEWAY`], at most [`MAX_LEEWAY`]).
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, _) = tessera::verify::doc_support::fixture()?;
    /// use std::time::Duration;
    /// use tessera::verify::Verifier;
    /// let b = Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?;
    /// assert!(b.leeway(Duration::from_secs(3600)).build().is_err());
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The clock used for time checks (default: the system clock).
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, _) = tessera::verify::doc_support::fixture()?;
    /// use std::sync::Arc;
    /// use tessera::clock::ManualClock;
    /// use tessera::verify::Verifier;
    /// let v = Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?
    ///     .clock(Arc::new(ManualClock::new(0)))
    ///     .build()?;
    /// # let _ = v;
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the verifier.
    ///
    /// # Errors
    /// [`BuildError::NoAlgorithms`] for an empty allowlist,
    /// [`BuildError::LeewayTooLarge`] above [`MAX_LEEWAY`].
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, _) = tessera::verify::doc_support::fixture()?;
    /// let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?
    ///     .build()?;
    /// assert_eq!(v.issuer(), "https://tessera.test");
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn build(self) -> Result<Verifier, BuildError> {
        if self.algorithms.is_empty() {
            return Err(BuildError::NoAlgorithms);
        }
        if self.leeway > MAX_LEEWAY {
            return Err(BuildError::LeewayTooLarge);
        }
        let protected = match self.protected {
            Some(p) => Some(Arc::new(p.finish(&self.issuer)?)),
            None => None,
        };
        if self.required_actor.as_deref() == Some("") {
            return Err(BuildError::InvalidResource);
        }
        let rules = ClaimRules::new(self.issuer.clone(), vec![self.audience.clone()])?
            .leeway(self.leeway.as_secs())
            .required_typ(&ACCEPTED_TYPS)
            .require_jti(true);
        Ok(Verifier {
            issuer: self.issuer,
            audience: self.audience,
            keys: self.keys,
            algorithms: self.algorithms,
            rules,
            clock: self.clock,
            resource_url: self.resource_url,
            replay: crate::dpop::ReplayCache::new(self.replay_capacity),
            protected,
            required_actor: self.required_actor,
        })
    }
}

/// Verifies Tessera access tokens for one audience. Cheap to share
/// (`Arc<Verifier>`); every method takes `&self`.
///
/// ```
/// # #[cfg(feature = "server")]
/// # {
/// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
/// let verifier = tessera::verify::Verifier::with_static_jwks(
///     "https://tessera.test",
///     "https://other.example.com",
///     &jwks,
/// )?
/// .build()?;
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// let err = rt.block_on(verifier.verify(&token)).err();
/// assert_eq!(err.map(|e| e.reason()), Some("aud_mismatch"));
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Verifier {
    issuer: String,
    audience: String,
    keys: Keys,
    algorithms: Vec<Algorithm>,
    rules: ClaimRules,
    clock: Arc<dyn Clock>,
    resource_url: Option<String>,
    replay: crate::dpop::ReplayCache,
    protected: Option<Arc<ProtectedResource>>,
    required_actor: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for tokens from `issuer` (exact match) addressed to
    /// `audience`, with keys from a static JWK Set document.
    ///
    /// # Errors
    /// [`BuildError`] for an empty issuer or audience, or an invalid or
    /// empty JWK Set.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, _) = tessera::verify::doc_support::fixture()?;
    /// use tessera::verify::Verifier;
    /// assert!(Verifier::with_static_jwks("https://tessera.test", "", &jwks).is_err());
    /// assert!(Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks).is_ok());
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_static_jwks(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        jwks: &[u8],
    ) -> Result<VerifierBuilder, BuildError> {
        let issuer = issuer.into();
        let audience = audience.into();
        if issuer.is_empty() {
            return Err(BuildError::EmptyIssuer);
        }
        if audience.is_empty() {
            return Err(BuildError::EmptyAudience);
        }
        let set = parse_jwk_set(jwks).map_err(BuildError::Jwks)?;
        if set.is_empty() {
            return Err(BuildError::NoKeys);
        }
        VerifierBuilder::new(issuer, audience, Keys::Static(Arc::new(set)))
    }

    /// A verifier whose keys come from a [`JwksCache`] (any
    /// [`crate::jwks::JwksFetcher`]; an unknown `kid` triggers a
    /// rate-limited refresh).
    ///
    /// # Errors
    /// [`BuildError`] for an empty issuer or audience.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tessera::jwks::{BoxFuture, FetchError, FetchedJwks, JwksCache, JwksFetcher, DEFAULT_REFRESH_COOLDOWN};
    /// use tessera::verify::Verifier;
    ///
    /// struct Empty;
    /// impl JwksFetcher for Empty {
    ///     fn fetch(&self) -> BoxFuture<'_, Result<FetchedJwks, FetchError>> {
    ///         Box::pin(async { Err(FetchError::Timeout) })
    ///     }
    /// }
    /// let cache = Arc::new(JwksCache::new(Arc::new(Empty), DEFAULT_REFRESH_COOLDOWN));
    /// let v = Verifier::with_jwks_cache("https://tessera.test", "https://api.example.com", cache)?.build()?;
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let err = rt.block_on(v.verify("a.b.c")).err();
    /// assert!(err.is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_jwks_cache(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        cache: Arc<JwksCache>,
    ) -> Result<VerifierBuilder, BuildError> {
        VerifierBuilder::new(issuer.into(), audience.into(), Keys::Cache(cache))
    }

    /// A verifier that discovers the issuer's `jwks_uri` from
    /// `{issuer}/.well-known/openid-configuration` (lazily, on first use)
    /// and caches its keys. `client` should come from
    /// [`crate::jwks::https_client`].
    ///
    /// # Errors
    /// [`BuildError`] for an empty issuer or audience.
    ///
    /// ```no_run
    /// use tessera::verify::Verifier;
    /// let client = tessera::jwks::https_client(&[], true)?;
    /// let v = Verifier::with_discovery("https://tessera.example.com", "https://api.example.com", client)?
    ///     .build()?;
    /// # let _ = v;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "verifier-http")]
    pub fn with_discovery(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        client: reqwest::Client,
    ) -> Result<VerifierBuilder, BuildError> {
        let issuer = issuer.into();
        let oidc = crate::jwks::OidcIssuerKeys::new(
            client,
            issuer.clone(),
            crate::jwks::DEFAULT_REFRESH_COOLDOWN,
        );
        VerifierBuilder::new(issuer, audience.into(), Keys::Oidc(Arc::new(oidc)))
    }

    /// A verifier that asks the broker's `/introspect` (RFC 7662) at
    /// `endpoint` (e.g. `https://tessera.example.com/introspect`) about
    /// every token instead of checking signatures locally: an online check
    /// that also sees revocations at once, at the cost of a round trip per
    /// request. `tls` is the resource server's mTLS identity, which must be
    /// listed in the broker's `[introspection] subjects`. The answer's
    /// `iss`, `aud` and `exp` are still checked against this verifier's.
    /// A broker that cannot be asked makes verification fail with
    /// [`VerifyError::IntrospectionUnavailable`] (answer 503).
    ///
    /// # Errors
    /// [`BuildError`] for an empty issuer or audience, a non-https
    /// endpoint or unusable TLS material.
    ///
    /// ```
    /// use tessera::verify::{FollowerTls, Verifier};
    /// let tls = FollowerTls { roots: vec![], cert_chain: vec![], key: None };
    /// let err = Verifier::with_introspection(
    ///     "https://tessera.example.com", "https://api.example.com",
    ///     "https://tessera.example.com/introspect", tls).err();
    /// assert_eq!(err.map(|e| e.reason()), Some("tls"));
    /// ```
    #[cfg(feature = "verifier-http")]
    pub fn with_introspection(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        endpoint: &str,
        tls: FollowerTls,
    ) -> Result<VerifierBuilder, BuildError> {
        let i = introspect::Introspector::new(endpoint, tls)?;
        VerifierBuilder::new(
            issuer.into(),
            audience.into(),
            Keys::Introspection(Arc::new(i)),
        )
    }

    /// The resource server's base URL for DPoP `htu`, if configured.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, _) = tessera::verify::doc_support::fixture()?;
    /// let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// assert_eq!(v.resource_url(), None);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn resource_url(&self) -> Option<&str> {
        self.resource_url.as_deref()
    }

    /// The protected resource metadata, when configured
    /// ([`VerifierBuilder::protected_resource`]).
    #[must_use]
    pub fn protected_resource(&self) -> Option<&Arc<ProtectedResource>> {
        self.protected.as_ref()
    }

    /// The expected issuer.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, _) = tessera::verify::doc_support::fixture()?;
    /// let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// assert_eq!(v.issuer(), "https://tessera.test");
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The expected audience.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, _) = tessera::verify::doc_support::fixture()?;
    /// let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// assert_eq!(v.audience(), "https://api.example.com");
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Verifies `token` at the verifier clock's current time.
    ///
    /// # Errors
    /// The first [`VerifyError`] found.
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let t = rt.block_on(v.verify(&token))?;
    /// assert_eq!(t.task(), "task-1");
    /// assert_eq!(rt.block_on(v.verify("not-a-token")).err().map(|e| e.reason()), Some("token_bad_segments"));
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, VerifyError> {
        let verified = self.verify_token(token).await?;
        if let Some(actor) = &self.required_actor {
            if verified.actors().first() != Some(actor) {
                return Err(VerifyError::ActorNotAllowed);
            }
        }
        Ok(verified)
    }

    async fn verify_token(&self, token: &str) -> Result<VerifiedToken, VerifyError> {
        #[cfg(feature = "verifier-http")]
        if let Keys::Introspection(i) = &self.keys {
            return i
                .introspect(token, &self.issuer, &self.audience, self.clock.now())
                .await;
        }
        let parsed = jws::decode(token).map_err(VerifyError::Malformed)?;
        let header = parsed.header();
        if !self.algorithms.contains(&header.alg) {
            return Err(VerifyError::AlgorithmNotAllowed);
        }
        match header.typ.as_deref() {
            Some(t) if ACCEPTED_TYPS.iter().any(|a| a.eq_ignore_ascii_case(t)) => {}
            _ => return Err(VerifyError::TypMismatch),
        }
        let kid = header.kid.as_deref().ok_or(VerifyError::MissingKid)?;
        let key = self.keys.key(kid).await.map_err(VerifyError::Key)?;
        if !self.algorithms.contains(&key.algorithm()) {
            return Err(VerifyError::AlgorithmNotAllowed);
        }
        let verified = parsed.verify(&key).map_err(VerifyError::Signature)?;
        let now = self.clock.now();
        validate::check(&verified, &self.rules, now).map_err(|e| match e {
            ClaimError::TypMismatch => VerifyError::TypMismatch,
            other => VerifyError::Claims(other),
        })?;
        let (_, claims) = verified.into_parts();
        VerifiedToken::from_claims(claims)
    }
}
