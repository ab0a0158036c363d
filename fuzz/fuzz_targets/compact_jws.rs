//! Compact JWS text → strict decode (`jws::decode`, `decode_dpop_proof`) and
//! full verification by a `Verifier` with the fixed test key and clock.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::jose::jws::{decode, decode_dpop_proof};
use tessera::jose::MAX_TOKEN_BYTES;
use tessera_fuzz::{assert_short_error, good_tokens, is_reason_code, verify_now, AUD, ISS};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let decoded = decode(s);
    match &decoded {
        Err(e) => {
            assert_short_error(&e.to_string());
            assert!(is_reason_code(e.reason()));
        }
        Ok(jws) => {
            assert!(s.len() <= MAX_TOKEN_BYTES);
            assert_eq!(s.matches('.').count(), 2);
            assert!(s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
            assert!(jws.header().kid.as_ref().is_none_or(|k| !k.is_empty()));
        }
    }
    // The DPoP decoder differs only by the embedded `jwk`: it never accepts
    // what the plain decoder rejects for another reason than `jwk` itself.
    if decode_dpop_proof(s).is_ok() {
        assert!(
            decoded.is_ok()
                || decoded
                    .as_ref()
                    .is_err_and(|e| e.reason() == "forbidden_header"),
            "{decoded:?}"
        );
    }
    match verify_now(s) {
        Err(e) => {
            assert_short_error(&e.to_string());
            assert!(is_reason_code(e.reason()));
            // A known-good token always verifies (the fixture is sound).
            assert!(
                !good_tokens().iter().any(|t| t == s),
                "good token refused: {e}"
            );
        }
        Ok(v) => {
            // Nothing but a token signed by the fixed key verifies: any other
            // accepted text is a forgery.
            assert!(
                good_tokens().iter().any(|t| t == s),
                "forged token verified: {s}"
            );
            assert!(decoded.is_ok());
            let claims = decoded.expect("decoded").unverified_claims().clone();
            assert_eq!(claims.get("iss").and_then(|v| v.as_str()), Some(ISS));
            assert_eq!(claims.get("aud").and_then(|v| v.as_str()), Some(AUD));
            assert_eq!(claims.get("jti").and_then(|v| v.as_str()), Some(v.jti()));
        }
    }
});
