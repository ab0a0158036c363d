//! Structure-aware JWS fuzzing around the known-good tokens.
//!
//! The first byte picks a token and a mode; the rest is an edit script
//! (`tessera_fuzz::edit`):
//! * tamper (mode 0, 1): edit the token text, or one decoded segment
//!   re-encoded, WITHOUT re-signing. The result verifies only if it is
//!   unchanged: any change breaks the signature.
//! * re-sign (mode 2, 3): edit the header or payload JSON and sign it with
//!   the fixed key, so the claim checks behind the signature are reached.
//!   Whatever verifies then satisfies the access-token contract.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tessera::jose::json::parse_object;
use tessera_fuzz::{assert_short_error, edit, good_tokens, sign_raw, verify_now, AUD, ISS, NOW};

fn segments(t: &str) -> [Vec<u8>; 3] {
    let mut it = t
        .split('.')
        .map(|s| URL_SAFE_NO_PAD.decode(s).expect("good segment"));
    [it.next().unwrap(), it.next().unwrap(), it.next().unwrap()]
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, script)) = data.split_first() else {
        return;
    };
    let good = &good_tokens()[usize::from(sel >> 4) % good_tokens().len()];
    let mode = sel & 0x3;
    let which = usize::from((sel >> 2) & 0x3) % 3;
    let [h, p, s] = segments(good);
    let candidate = match mode {
        0 => String::from_utf8_lossy(&edit(good.as_bytes(), script)).into_owned(),
        1 => {
            let mut segs = [h, p, s];
            segs[which] = edit(&segs[which], script);
            segs.iter()
                .map(|b| URL_SAFE_NO_PAD.encode(b))
                .collect::<Vec<_>>()
                .join(".")
        }
        2 => sign_raw(&edit(&h, script), &p),
        _ => sign_raw(&h, &edit(&p, script)),
    };
    let result = verify_now(&candidate);
    if let Err(e) = &result {
        assert_short_error(&e.to_string());
    }
    if mode < 2 {
        assert_eq!(
            result.is_ok(),
            candidate == *good,
            "tampered token verified (or original refused): {candidate}"
        );
        return;
    }
    let Ok(v) = result else { return };
    // Re-signed and accepted: the header and claims satisfy the contract.
    let mut parts = candidate.split('.');
    let header = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    let payload = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    let header = parse_object(&header).expect("accepted header is strict JSON");
    let claims = parse_object(&payload).expect("accepted payload is strict JSON");
    let typ = header.get("typ").and_then(Value::as_str).unwrap_or("");
    assert!(
        typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt"),
        "typ {typ}"
    );
    assert_eq!(header.get("alg").and_then(Value::as_str), Some("EdDSA"));
    assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISS));
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == AUD,
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(AUD)),
        _ => false,
    };
    assert!(aud_ok, "aud {:?}", claims.get("aud"));
    let exp = claims.get("exp").and_then(Value::as_u64).expect("exp");
    assert_eq!(exp, v.exp());
    assert!(exp + 120 > NOW, "expired token accepted: exp {exp}");
    if let Some(nbf) = claims.get("nbf") {
        assert!(
            nbf.as_u64().expect("nbf is a number") <= NOW + 120,
            "future nbf"
        );
    }
    let sub = claims.get("sub").and_then(Value::as_str).expect("sub");
    assert_eq!(sub, v.subject());
    assert!(!v.subject().is_empty() && !v.jti().is_empty());
    assert_eq!(claims.get("jti").and_then(Value::as_str), Some(v.jti()));
});
