//! Shared fixtures for the fuzz targets.
//!
//! Everything is deterministic, so the committed seed corpus stays valid:
//! a fixed Ed25519 test key (Ed25519 signatures are deterministic, so the
//! same claims always mint the same token), a fixed clock ([`NOW`]), and the
//! known-good tokens and DPoP proofs that `examples/write_seeds.rs` writes
//! into `corpus/`. A target may then assert "verifies ⇒ is one of the
//! known-good inputs": any other input that verifies is a forgery.

use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use tessera::clock::ManualClock;
use tessera::jose::VerifyingKey;
use tessera::mint::claims::{AccessTokenClaims, Actor};
use tessera::mint::keyring::{KeyRing, SigningAlgorithm, SigningKey};
use tessera::mint::TokenMinter;
use tessera::verify::{VerifiedToken, Verifier, VerifyError};

/// Token issuer the verifier accepts.
pub const ISS: &str = "https://tessera.fuzz";
/// Audience the verifier accepts.
pub const AUD: &str = "https://api.fuzz";
/// The fixed "now" of every target (2027-01-15).
pub const NOW: u64 = 1_800_000_000;
/// The `/token` URL a broker-side DPoP proof names.
pub const TOKEN_HTU: &str = "https://tessera.fuzz/token";
/// The resource URL a resource-side DPoP proof names.
pub const RESOURCE_HTU: &str = "https://api.fuzz/resource";
/// Longest acceptable error message: errors name their cause, they never
/// echo (long) input back.
pub const MAX_ERROR_LEN: usize = 160;

/// A key made for these fuzz targets only (PKCS#8 v1 Ed25519). It signs the
/// seed tokens and nothing else; no deployment trusts it.
const FUZZ_ONLY_KEY_PKCS8: &str =
    "MC4CAQAwBQYDK2VwBCIEIPCDjNfDD7rYY/36Ict3jUME/aIR/SzAGKhWpu17haeG";

fn load_key() -> SigningKey {
    let der = STANDARD.decode(FUZZ_ONLY_KEY_PKCS8).expect("key base64");
    SigningKey::from_pkcs8_der(&der).expect("fuzz key parses")
}

/// The fixed signing key.
pub fn key() -> &'static SigningKey {
    static K: OnceLock<SigningKey> = OnceLock::new();
    K.get_or_init(load_key)
}

/// The fixed key's RFC 7638 thumbprint, as a verifier computes it.
pub fn key_thumbprint() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| {
        let Value::Object(jwk) = key().public_jwk() else {
            panic!("public JWK is an object")
        };
        VerifyingKey::from_jwk(&jwk)
            .expect("own JWK parses")
            .thumbprint()
    })
}

/// The JWK Set with the fixed key.
pub fn jwks_bytes() -> Vec<u8> {
    serde_json::to_vec(&json!({ "keys": [key().public_jwk()] })).expect("jwks")
}

/// A verifier for [`ISS`]/[`AUD`] with the fixed key and clock.
pub fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        Verifier::with_static_jwks(ISS, AUD, &jwks_bytes())
            .expect("static jwks")
            .clock(Arc::new(ManualClock::new(NOW)))
            .build()
            .expect("verifier")
    })
}

/// Verifies `t` now (a static-key verification never waits).
pub fn verify_now(t: &str) -> Result<VerifiedToken, VerifyError> {
    use futures_util::FutureExt;
    verifier()
        .verify(t)
        .now_or_never()
        .expect("a static-key verification never waits")
}

fn base_claims(jti: &str) -> AccessTokenClaims {
    AccessTokenClaims {
        iss: ISS.into(),
        sub: "spiffe://example.org/agent/fuzz".into(),
        aud: AUD.into(),
        exp: NOW + 600,
        iat: NOW - 10,
        nbf: NOW - 10,
        jti: jti.into(),
        client_id: "fuzz".into(),
        scope: "read write".into(),
        txn: "task-1".into(),
        act: None,
        cnf: None,
        grant: None,
        owner: None,
        authorization_details: None,
        policy: None,
        ancestors: Vec::new(),
        may_act: None,
    }
}

/// The claims of the known-good tokens: plain, delegated (nested `act`),
/// with RFC 9396 details, a grant and ancestors.
pub fn good_claims() -> Vec<AccessTokenClaims> {
    let plain = base_claims("fuzz-plain");
    let mut delegated = base_claims("fuzz-act");
    delegated.act = Some(Actor {
        sub: "spiffe://example.org/agent/helper".into(),
        iss: None,
        act: Some(Box::new(Actor::new("spiffe://example.org/agent/root"))),
    });
    let mut rich = base_claims("fuzz-rich");
    rich.authorization_details = Some(json!([
        {"type": "payment", "actions": ["initiate"], "amount": {"currency": "EUR", "value": "12.50"}}
    ]));
    rich.grant = Some("g-1".into());
    rich.owner = Some("user:alice".into());
    rich.policy = Some("payments".into());
    rich.ancestors = vec!["jti-parent".into()];
    vec![plain, delegated, rich]
}

/// Known-good access tokens (deterministic: Ed25519 and fixed claims).
pub fn good_tokens() -> &'static [String] {
    static T: OnceLock<Vec<String>> = OnceLock::new();
    T.get_or_init(|| {
        let ring =
            Arc::new(KeyRing::from_keys(vec![load_key()], SigningAlgorithm::EdDSA).expect("ring"));
        let minter = TokenMinter::new(ring);
        good_claims()
            .iter()
            .map(|c| minter.mint(c).expect("mint"))
            .collect()
    })
}

/// Signs `header.payload` (raw JSON texts) with the fixed key.
pub fn sign_raw(header: &[u8], payload: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = key().sign(input.as_bytes()).expect("sign");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// The header of a DPoP proof by the fixed key.
pub fn dpop_header() -> Value {
    json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": key().public_jwk()})
}

/// Known-good DPoP proofs: one for `POST` [`TOKEN_HTU`], one for
/// `GET` [`RESOURCE_HTU`] carrying `ath` of `good_tokens()[0]` and a nonce.
pub fn good_proofs() -> &'static [String] {
    static P: OnceLock<Vec<String>> = OnceLock::new();
    P.get_or_init(|| {
        let h = dpop_header().to_string();
        let broker = json!({"jti": "proof-1", "htm": "POST", "htu": TOKEN_HTU, "iat": NOW});
        let resource = json!({
            "jti": "proof-2", "htm": "GET", "htu": format!("{RESOURCE_HTU}?q=1"), "iat": NOW - 5,
            "ath": tessera::dpop::access_token_hash(&good_tokens()[0]), "nonce": "n-1",
        });
        vec![
            sign_raw(h.as_bytes(), broker.to_string().as_bytes()),
            sign_raw(h.as_bytes(), resource.to_string().as_bytes()),
        ]
    })
}

/// A stable reason code: 1..=64 bytes of `[a-z0-9_]`.
pub fn is_reason_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Panics if an error message is long enough to be echoing input.
pub fn assert_short_error(msg: &str) {
    assert!(
        !msg.is_empty() && msg.len() <= MAX_ERROR_LEN,
        "error message of {} bytes (echoes input?): {:.300}",
        msg.len(),
        msg
    );
}

/// Applies an edit script to `base`: each step is 4 bytes `op, pos_hi,
/// pos_lo, val` (replace, insert, delete, truncate, duplicate a chunk, or
/// insert `val % 16` literal bytes taken from the script). Lets libFuzzer
/// explore the neighbourhood of a valid input while staying near it.
pub fn edit(base: &[u8], script: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    let mut s = script;
    while s.len() >= 4 {
        let (op, pos, val) = (s[0], usize::from(u16::from_be_bytes([s[1], s[2]])), s[3]);
        s = &s[4..];
        if v.is_empty() {
            v.push(val);
            continue;
        }
        let i = pos % v.len();
        match op % 6 {
            0 => v[i] = val,
            1 => v.insert(i, val),
            2 => {
                v.remove(i);
            }
            3 => v.truncate(i),
            4 => {
                let j = (i + usize::from(val)) % v.len();
                let (a, b) = (i.min(j), i.max(j));
                let chunk = v[a..b].to_vec();
                v.splice(i..i, chunk);
            }
            _ => {
                let n = usize::from(val % 16).min(s.len());
                let lit = s[..n].to_vec();
                s = &s[n..];
                v.splice(i..i, lit);
            }
        }
    }
    v
}
