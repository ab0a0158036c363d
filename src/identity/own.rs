//! Tokens Tessera itself issued: verified against the key ring's public keys
//! (by kid), with `typ: at+jwt`, exact `iss`, and `exp`. Used by
//! introspection, revocation and re-exchange.

use std::collections::HashMap;
use std::sync::Arc;

use crate::jose::jwk::VerifyingKey;
use crate::jose::jws;
use crate::mint::claims::AccessTokenClaims;
use crate::mint::keyring::KeyRing;
use crate::store::TokenFacts;

/// Clock leeway for the `nbf` of Tessera's own tokens (another replica's
/// clock may run slightly ahead). There is none for `exp`: see [`expired`].
pub const OWN_LEEWAY_SECS: u64 = 5;

/// Whether a Tessera token is expired at `now`: from `exp` on, with no
/// leeway. The one rule for introspection (`/introspect`, `/revoke`) and
/// re-exchange: a token introspection calls active can be re-exchanged, and
/// one it calls inactive cannot (a re-exchanged token never outlives its
/// parent, so a leeway past `exp` could only give it no lifetime).
pub fn expired(exp: u64, now: u64) -> bool {
    exp <= now
}

/// A verified Tessera token.
#[derive(Debug, Clone)]
pub struct OwnToken {
    /// Its claims, parsed from exactly the verified bytes.
    pub claims: AccessTokenClaims,
}

impl OwnToken {
    /// The facts revocation entries are matched against.
    pub fn facts(&self) -> TokenFacts {
        let mut actors = Vec::new();
        let mut a = self.claims.act.as_ref();
        while let Some(x) = a {
            actors.push(x.sub.clone());
            a = x.act.as_deref();
        }
        TokenFacts {
            jti: self.claims.jti.clone(),
            sub: self.claims.sub.clone(),
            actors,
            client_id: Some(self.claims.client_id.clone()),
            ancestors: self.claims.ancestors.clone(),
            txn: self.claims.txn.clone(),
            grant: self.claims.grant.clone(),
            iat: self.claims.iat,
        }
    }
}

/// Why the key ring's published keys cannot verify Tessera's tokens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OwnKeyError {
    /// A key without a public JWK.
    #[error("signing key has no JWK form")]
    NoJwk,
    /// A public JWK that does not load as a verifying key.
    #[error("signing key {kid}: {source}")]
    Key {
        /// The key id.
        kid: String,
        /// Why.
        source: crate::jose::jwk::JwkError,
    },
}

/// Verifies Tessera's own access tokens.
#[derive(Debug)]
pub struct OwnTokenVerifier {
    issuer: String,
    keys: HashMap<String, Arc<VerifyingKey>>,
}

impl OwnTokenVerifier {
    /// Builds the verifier from the key ring's published keys.
    pub fn new(issuer: &str, ring: &KeyRing) -> Result<Self, OwnKeyError> {
        let mut keys = HashMap::new();
        for k in ring.keys() {
            let jwk = k.public_jwk();
            let obj = jwk.as_object().ok_or(OwnKeyError::NoJwk)?;
            let vk = VerifyingKey::from_jwk(obj).map_err(|e| OwnKeyError::Key {
                kid: k.kid().to_string(),
                source: e,
            })?;
            keys.insert(k.kid().to_string(), Arc::new(vk));
        }
        Ok(Self {
            issuer: issuer.to_string(),
            keys,
        })
    }

    /// Whether `token` (unverified) claims to come from this issuer.
    pub fn claims_to_be_ours(&self, token: &str) -> bool {
        jws::decode(token)
            .ok()
            .and_then(|j| {
                j.unverified_claims()
                    .get("iss")
                    .and_then(|v| v.as_str())
                    .map(|i| i == self.issuer)
            })
            .unwrap_or(false)
    }

    /// Verifies signature, `typ`, `iss` and `exp` at `now`.
    pub fn verify(&self, token: &str, now: u64) -> Result<OwnToken, OwnTokenRefusal> {
        let parsed = jws::decode(token).map_err(OwnTokenRefusal::Jws)?;
        self.check_decoded(parsed, now)
    }

    /// [`Self::verify`] for a token already decoded.
    pub fn check_decoded(
        &self,
        parsed: jws::UnverifiedJws,
        now: u64,
    ) -> Result<OwnToken, OwnTokenRefusal> {
        use OwnTokenRefusal as R;
        match parsed.header().typ.as_deref() {
            Some(t)
                if t.eq_ignore_ascii_case("at+jwt")
                    || t.eq_ignore_ascii_case("application/at+jwt") => {}
            _ => return Err(R::TypNotAtJwt),
        }
        let kid = parsed.header().kid.as_deref().ok_or(R::KidMissing)?;
        let key = self.keys.get(kid).ok_or(R::UnknownKid)?;
        let verified = parsed.verify(key).map_err(R::Jws)?;
        let (_, map) = verified.into_parts();
        let claims: AccessTokenClaims = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|_| R::ClaimsMalformed)?;
        if claims.iss != self.issuer {
            return Err(R::IssMismatch);
        }
        if expired(claims.exp, now) {
            return Err(R::Expired);
        }
        if claims.nbf > now.saturating_add(OWN_LEEWAY_SECS) {
            return Err(R::NotYetValid);
        }
        Ok(OwnToken { claims })
    }
}

/// Why a token that claims to be Tessera's is refused. [`Self::as_str`]
/// is the stable reason recorded in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.as_str())]
pub enum OwnTokenRefusal {
    /// Not a well-formed JWS, or its signature does not verify.
    Jws(jws::JwsError),
    /// The header `typ` is not `at+jwt`.
    TypNotAtJwt,
    /// No `kid` in the header.
    KidMissing,
    /// No key of the ring has this `kid`.
    UnknownKid,
    /// The claims are not an access token's.
    ClaimsMalformed,
    /// Another issuer.
    IssMismatch,
    /// Past `exp`.
    Expired,
    /// Before `nbf` (beyond the leeway).
    NotYetValid,
}

impl OwnTokenRefusal {
    /// The stable reason (`expired`, `unknown_kid`, a JWS reason such as
    /// `bad_signature`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            OwnTokenRefusal::Jws(e) => e.reason(),
            OwnTokenRefusal::TypNotAtJwt => "typ_not_at_jwt",
            OwnTokenRefusal::KidMissing => "kid_missing",
            OwnTokenRefusal::UnknownKid => "unknown_kid",
            OwnTokenRefusal::ClaimsMalformed => "claims_malformed",
            OwnTokenRefusal::IssMismatch => "iss_mismatch",
            OwnTokenRefusal::Expired => "expired",
            OwnTokenRefusal::NotYetValid => "not_yet_valid",
        }
    }
}
