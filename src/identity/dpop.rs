//! DPoP proofs (RFC 9449) for callers without a client certificate: the
//! proof's embedded public key becomes the token's `cnf.jkt`.

use serde_json::Value;

use crate::jose::alg::Algorithm;
use crate::jose::jwk::VerifyingKey;
use crate::jose::jws;

/// Algorithms accepted for DPoP proofs (advertised in the metadata).
pub const DPOP_ALGS: [Algorithm; 5] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::RS256,
    Algorithm::PS256,
];
/// How old (or how far in the future) a proof's `iat` may be, in seconds.
pub const DPOP_IAT_WINDOW_SECS: u64 = 60;
/// Longest proof `jti`.
pub const MAX_DPOP_JTI_LEN: usize = 256;

/// A verified DPoP proof.
#[derive(Debug, Clone)]
pub struct DpopProof {
    /// RFC 7638 thumbprint of the proof key (`cnf.jkt`).
    pub jkt: String,
    /// The proof's `jti` (for the replay cache).
    pub jti: String,
    /// The proof's `iat`.
    pub iat: u64,
    /// The proof's `nonce`, if any.
    pub nonce: Option<String>,
}

/// How long one server nonce window lasts; a nonce is accepted in its
/// window and the next.
pub const NONCE_WINDOW_SECS: u64 = 300;

/// Server nonces (RFC 9449 §8), derived with HMAC-SHA256 from a secret and
/// the time window, so replicas sharing the secret agree without state.
#[derive(Debug)]
pub struct NonceSource {
    key: aws_lc_rs::hmac::Key,
}

impl NonceSource {
    /// A source keyed by `secret` (domain-separated).
    pub fn new(secret: &[u8]) -> Self {
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"tessera dpop nonce v1");
        let derived = aws_lc_rs::hmac::sign(&k, secret);
        Self {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    fn for_window(&self, w: u64) -> String {
        use base64::Engine;
        let tag = aws_lc_rs::hmac::sign(&self.key, &w.to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..18])
    }

    /// The nonce to hand out now.
    pub fn current(&self, now: u64) -> String {
        self.for_window(now / NONCE_WINDOW_SECS)
    }

    /// Whether `nonce` is this window's or the previous one's.
    pub fn accepts(&self, nonce: &str, now: u64) -> bool {
        let w = now / NONCE_WINDOW_SECS;
        nonce == self.for_window(w) || nonce == self.for_window(w.saturating_sub(1))
    }
}

/// Verifies a proof for a request with method `htm` to `htu` at `now`.
/// Errors are stable reason codes.
pub fn verify_proof(
    proof: &str,
    htm: &str,
    htu: &str,
    now: u64,
) -> Result<DpopProof, &'static str> {
    let (parsed, jwk) = jws::decode_dpop_proof(proof).map_err(|e| e.reason())?;
    if !parsed
        .header()
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err("dpop_typ");
    }
    if !DPOP_ALGS.contains(&parsed.header().alg) {
        return Err("dpop_alg");
    }
    let key = VerifyingKey::from_jwk(&jwk).map_err(|_| "dpop_jwk_invalid")?;
    let jkt = key.thumbprint();
    let verified = parsed.verify(&key).map_err(|e| e.reason())?;
    let c = verified.claims();
    let jti = match c.get("jti") {
        Some(Value::String(j)) if !j.is_empty() && j.len() <= MAX_DPOP_JTI_LEN => j.clone(),
        _ => return Err("dpop_jti"),
    };
    if c.get("htm").and_then(Value::as_str) != Some(htm) {
        return Err("dpop_htm");
    }
    // RFC 9449 §4.3: compare without query and fragment.
    let claimed = c.get("htu").and_then(Value::as_str).ok_or("dpop_htu")?;
    let claimed = claimed.split(['?', '#']).next().unwrap_or("");
    if claimed != htu {
        return Err("dpop_htu");
    }
    let iat = match c.get("iat") {
        Some(Value::Number(n)) => n.as_u64().filter(|v| *v < (1u64 << 53)).ok_or("dpop_iat")?,
        _ => return Err("dpop_iat"),
    };
    if iat.saturating_add(DPOP_IAT_WINDOW_SECS) < now
        || iat > now.saturating_add(DPOP_IAT_WINDOW_SECS)
    {
        return Err("dpop_iat_window");
    }
    let nonce = match c.get("nonce") {
        None => None,
        Some(Value::String(n)) if n.len() <= 256 => Some(n.clone()),
        Some(_) => return Err("dpop_nonce_malformed"),
    };
    Ok(DpopProof {
        jkt,
        jti,
        iat,
        nonce,
    })
}
