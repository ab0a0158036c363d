//! DPoP proofs (RFC 9449): text → `dpop::verify_proof`, checked once as a
//! broker does (POST /token) and once as a resource server does (GET with
//! `ath`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::dpop::{verify_proof, ProofCheck, DPOP_IAT_WINDOW_SECS, MAX_DPOP_JTI_LEN};
use tessera_fuzz::{
    good_proofs, good_tokens, is_reason_code, key_thumbprint, NOW, RESOURCE_HTU, TOKEN_HTU,
};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let checks = [
        ProofCheck::new("POST", TOKEN_HTU, NOW),
        ProofCheck::new("GET", RESOURCE_HTU, NOW).access_token(&good_tokens()[0]),
    ];
    for check in &checks {
        match verify_proof(s, check) {
            Err(reason) => assert!(is_reason_code(reason.as_str()), "{reason:?}"),
            Ok(p) => {
                // Only a proof signed by the fixed key's holder verifies:
                // anything else accepted is a forgery.
                assert!(
                    good_proofs().iter().any(|g| g == s),
                    "forged proof verified: {s}"
                );
                assert_eq!(p.jkt, key_thumbprint());
                assert!(!p.jti.is_empty() && p.jti.len() <= MAX_DPOP_JTI_LEN);
                assert!(p.iat + DPOP_IAT_WINDOW_SECS >= NOW && p.iat <= NOW + DPOP_IAT_WINDOW_SECS);
                assert!(p.nonce.as_ref().is_none_or(|n| n.len() <= 256));
            }
        }
    }
});
