//! Tessera's strict JOSE layer.
//!
//! * [`alg`]: the closed set of accepted signature algorithms.
//! * [`json`]: strict JSON object parsing (no duplicate members, bounded depth).
//! * [`jwk`]: JWK / JWK Set parsing into ready-to-use verifying keys.
//! * [`jws`]: compact JWS decoding and signature verification.
//! * [`mod@validate`]: JWT claim validation.
//!
//! The intended flow is `jws::decode` → look up a key by the header's `kid`
//! → `UnverifiedJws::verify` → `validate::validate`. Nothing read from a
//! token is trusted before `verify` succeeds, and claims are only ever taken
//! from the exact bytes whose signature was checked.

pub mod alg;
pub mod json;
pub mod jwk;
pub mod jws;
pub mod validate;

pub use alg::Algorithm;
pub use jwk::{parse_jwk_set, JwkError, JwkSet, SignatureError, VerifyingKey};
pub use jws::{decode, Header, JwsError, UnverifiedJws, VerifiedJws, MAX_TOKEN_BYTES};
pub use validate::{validate, ClaimError, ClaimRules, ValidatedClaims};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Strict base64url decoding: URL-safe alphabet, no padding, no whitespace,
/// and non-zero trailing bits rejected (so every value has exactly one
/// accepted encoding).
pub(crate) fn b64url_decode(input: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(input).ok()
}

/// base64url encoding without padding.
pub(crate) fn b64url_encode(input: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(input)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64url_is_strict() {
        assert_eq!(b64url_decode("AQAB"), Some(vec![1, 0, 1]));
        assert_eq!(b64url_decode("_-8"), Some(vec![0xff, 0xef]));
        for bad in ["AQAB=", "AQ==", "AQ", "A", "+/8", "A QAB", "AQAB\n", "AR"] {
            // "AQ" is valid (0x01); "AR" has non-zero trailing bits.
            if bad == "AQ" {
                assert_eq!(b64url_decode(bad), Some(vec![1]));
            } else {
                assert_eq!(b64url_decode(bad), None, "{bad:?}");
            }
        }
    }
}
