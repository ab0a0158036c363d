//! JWK Set documents (static JWKS, `jwks_uri` answers): bytes →
//! `parse_jwk_set`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tessera::jose::jwk::{MAX_JWKS_KEYS, MAX_JWK_SET_BYTES};
use tessera::jose::{parse_jwk_set, VerifyingKey};
use tessera_fuzz::{assert_short_error, is_reason_code};

fuzz_target!(|data: &[u8]| {
    let set = match parse_jwk_set(data) {
        Err(e) => {
            assert_short_error(&e.to_string());
            assert!(is_reason_code(e.reason()));
            return;
        }
        Ok(set) => set,
    };
    assert!(data.len() <= MAX_JWK_SET_BYTES);
    assert!(set.len() <= MAX_JWKS_KEYS);
    // Every accepted key re-exports as a public JWK that parses back to the
    // same key: same thumbprint, same algorithm, same kid.
    let mut exported = Vec::new();
    for k in set.keys() {
        let tp = k.thumbprint();
        assert_eq!(tp.len(), 43, "SHA-256 base64url");
        let Value::Object(jwk) = k.to_public_jwk() else {
            panic!("public JWK is an object")
        };
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(
                !jwk.contains_key(private),
                "exported private member {private}"
            );
        }
        let back = VerifyingKey::from_jwk(&jwk).expect("exported JWK parses");
        assert_eq!(back.thumbprint(), tp);
        assert_eq!(back.algorithm(), k.algorithm());
        assert_eq!(back.kid(), k.kid());
        exported.push(Value::Object(jwk));
    }
    let doc = serde_json::to_vec(&json!({ "keys": exported })).expect("json");
    let again = parse_jwk_set(&doc).expect("re-exported set parses");
    let tps =
        |s: &tessera::jose::JwkSet| s.keys().iter().map(|k| k.thumbprint()).collect::<Vec<_>>();
    assert_eq!(tps(&again), tps(&set));
});
