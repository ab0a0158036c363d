//! Structure-aware DPoP fuzzing: a client signs whatever it likes with its
//! own key, so the checks behind the signature are the real surface. The
//! first byte picks a known-good proof and whether to edit its header or
//! payload JSON; the rest is an edit script (`tessera_fuzz::edit`). The
//! edited proof is re-signed with the fixed key and checked as a broker and
//! as a resource server would; whatever passes satisfies RFC 9449 §4.3.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tessera::dpop::{access_token_hash, verify_proof, ProofCheck, DPOP_IAT_WINDOW_SECS};
use tessera::jose::json::parse_object;
use tessera_fuzz::{
    edit, good_proofs, good_tokens, is_reason_code, key_thumbprint, sign_raw, NOW, RESOURCE_HTU,
    TOKEN_HTU,
};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, script)) = data.split_first() else {
        return;
    };
    let good = &good_proofs()[usize::from(sel >> 1) % good_proofs().len()];
    let mut it = good
        .split('.')
        .map(|s| URL_SAFE_NO_PAD.decode(s).expect("good segment"));
    let (mut h, mut p) = (it.next().unwrap(), it.next().unwrap());
    if sel & 1 == 0 {
        h = edit(&h, script);
    } else {
        p = edit(&p, script);
    }
    let proof = sign_raw(&h, &p);
    let token = &good_tokens()[0];
    let checks = [
        ProofCheck::new("POST", TOKEN_HTU, NOW),
        ProofCheck::new("GET", RESOURCE_HTU, NOW).access_token(token),
    ];
    for check in &checks {
        let r = verify_proof(&proof, check);
        let Ok(ok) = r else {
            assert!(is_reason_code(r.unwrap_err().as_str()));
            continue;
        };
        let header = parse_object(&h).expect("accepted header is strict JSON");
        let claims = parse_object(&p).expect("accepted payload is strict JSON");
        let typ = header.get("typ").and_then(Value::as_str).expect("typ");
        assert!(typ.eq_ignore_ascii_case("dpop+jwt"));
        // Signed by the fixed key, so the embedded jwk is that key.
        assert_eq!(ok.jkt, key_thumbprint());
        assert_eq!(claims.get("htm").and_then(Value::as_str), Some(check.htm));
        let htu = claims.get("htu").and_then(Value::as_str).expect("htu");
        assert_eq!(htu.split(['?', '#']).next(), Some(check.htu));
        assert_eq!(
            claims.get("jti").and_then(Value::as_str),
            Some(ok.jti.as_str())
        );
        assert_eq!(claims.get("iat").and_then(Value::as_u64), Some(ok.iat));
        assert!(ok.iat + DPOP_IAT_WINDOW_SECS >= NOW && ok.iat <= NOW + DPOP_IAT_WINDOW_SECS);
        if let Some(t) = check.access_token {
            let ath = claims.get("ath").and_then(Value::as_str);
            assert_eq!(ath, Some(access_token_hash(t).as_str()));
        }
        assert_eq!(
            claims.get("nonce").and_then(Value::as_str),
            ok.nonce.as_deref()
        );
    }
});
