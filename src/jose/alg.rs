//! The closed set of JWS signature algorithms Tessera accepts.
//!
//! There is deliberately no `none`, no HMAC (`HS*`) and no "family" matching:
//! an algorithm name either matches one of these exact, case-sensitive strings
//! or it is rejected.

use std::fmt;
use std::str::FromStr;

/// A JWS signature algorithm (RFC 7518 §3.1, RFC 8037 §3.1) that Tessera
/// can verify. Only asymmetric algorithms are representable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// ECDSA using P-256 and SHA-256, raw `r || s` signature (64 bytes).
    ES256,
    /// ECDSA using P-384 and SHA-384, raw `r || s` signature (96 bytes).
    ES384,
    /// EdDSA; Tessera supports only the Ed25519 curve.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 using SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 using SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 using SHA-512.
    RS512,
    /// RSASSA-PSS using SHA-256 and MGF1 with SHA-256.
    PS256,
    /// RSASSA-PSS using SHA-384 and MGF1 with SHA-384.
    PS384,
    /// RSASSA-PSS using SHA-512 and MGF1 with SHA-512.
    PS512,
}

impl Algorithm {
    /// Every supported algorithm, in a stable order.
    pub const ALL: [Algorithm; 9] = [
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ];

    /// The registered JOSE name of the algorithm (the `alg` header value).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
        }
    }

    /// True for the RSA algorithms (`RS*` and `PS*`).
    #[must_use]
    pub const fn is_rsa(self) -> bool {
        matches!(
            self,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        )
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `alg` value is not one of the supported algorithms. The rejected
/// value is intentionally not kept (it is attacker-controlled input).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unsupported JWS algorithm")]
pub struct UnsupportedAlgorithm;

impl FromStr for Algorithm {
    type Err = UnsupportedAlgorithm;

    /// Exact, case-sensitive match against the registered names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or(UnsupportedAlgorithm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_algorithm() {
        for alg in Algorithm::ALL {
            assert_eq!(alg.as_str().parse::<Algorithm>(), Ok(alg));
            assert_eq!(alg.to_string(), alg.as_str());
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "none", "None", "NONE", "nOnE", "", "HS256", "HS384", "HS512", "Ed25519", "ed25519",
            "es256", "Es256", "ES256 ", " ES256", "ES256\0", "RS1", "ES512", "EDDSA", "eddsa",
            "ES256K", "PS256\n", "RSA-OAEP", "dir",
        ] {
            assert_eq!(
                bad.parse::<Algorithm>(),
                Err(UnsupportedAlgorithm),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rsa_classification() {
        assert!(Algorithm::PS512.is_rsa());
        assert!(Algorithm::RS256.is_rsa());
        assert!(!Algorithm::ES256.is_rsa());
        assert!(!Algorithm::EdDSA.is_rsa());
    }
}
