// One file: over 600 of its lines are unit tests; the typestate decoder itself
// is under 400.
//! Compact JWS (RFC 7515 §7.1) decoding and verification.
//!
//! Decoding is strictly ordered so no parser sees input an earlier, simpler
//! check would have refused: size cap → byte charset → exactly three
//! non-empty segments → strict base64url → strict JSON → header rules.
//! The claims handed out after [`UnverifiedJws::verify`] are parsed from the
//! very bytes that were signed, never re-encoded or re-parsed.

use aws_lc_rs::digest;
use serde_json::{Map, Value};

use super::alg::Algorithm;
use super::b64url_decode;
use super::json::{self, JsonError};
use super::jwk::{SignatureError, VerifyingKey, MAX_KID_LEN};

/// Maximum size of a compact JWS in bytes. Checked before anything else.
pub const MAX_TOKEN_BYTES: usize = 8192;
/// Maximum length in bytes of the `typ` header value.
pub const MAX_TYP_LEN: usize = 128;

/// Header parameters whose presence makes a token unacceptable: key or
/// certificate references an attacker could point anywhere (`jku`, `x5u`,
/// `jwk`, `x5c`), extension machinery we do not implement (`crit`, `b64`),
/// JWE/compression parameters (`zip`, `enc`, `p2c`, `p2s`, `epk`, `apu`,
/// `apv`, `iv`, `tag`) and nested JWTs (`cty`).
pub const FORBIDDEN_HEADER_PARAMS: [&str; 16] = [
    "jku", "x5u", "jwk", "x5c", "crit", "b64", "zip", "enc", "p2c", "p2s", "epk", "apu", "apv",
    "iv", "tag", "cty",
];

/// Header parameters Tessera interprets.
const KNOWN_HEADER_PARAMS: [&str; 3] = ["alg", "kid", "typ"];

/// Which segment of the compact serialization failed to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// The protected header.
    Header,
    /// The payload.
    Payload,
    /// The signature.
    Signature,
}

/// Why a token was rejected before or during signature verification.
/// Carries no token content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("token too large")]
    TooLarge,
    /// A byte outside `[A-Za-z0-9_.-]`.
    #[error("token contains a character outside the base64url alphabet")]
    InvalidCharacter,
    /// Not exactly three dot-separated segments.
    #[error("token is not a three-segment compact JWS")]
    SegmentCount,
    /// A segment is empty.
    #[error("token has an empty segment")]
    EmptySegment(Segment),
    /// A segment is not strict unpadded base64url.
    #[error("token segment is not valid base64url")]
    Base64(Segment),
    /// The header is not a strict JSON object.
    #[error("token header JSON: {0}")]
    HeaderJson(JsonError),
    /// The payload is not a strict JSON object.
    #[error("token payload JSON: {0}")]
    PayloadJson(JsonError),
    /// The header has no `alg`.
    #[error("token header has no alg")]
    MissingAlg,
    /// `alg` is not a string.
    #[error("token alg is not a string")]
    InvalidAlg,
    /// `alg` is not a supported algorithm (`none`, `HS256`, ...).
    #[error("token alg is not supported")]
    UnsupportedAlgorithm,
    /// The header contains a forbidden parameter.
    #[error("token header contains forbidden parameter `{0}`")]
    ForbiddenHeader(&'static str),
    /// A header name differs only in case from a known/forbidden one.
    #[error("token header contains a case variant of a registered parameter")]
    CaseVariantHeader,
    /// `kid` is not a string of 1..=MAX_KID_LEN bytes.
    #[error("token kid is invalid")]
    InvalidKid,
    /// `typ` is not a string of at most [`MAX_TYP_LEN`] bytes.
    #[error("token typ is invalid")]
    InvalidTyp,
    /// The header `alg` differs from the key's algorithm.
    #[error("token alg does not match the key")]
    AlgorithmMismatch,
    /// Both the header and the key have a `kid` and they differ.
    #[error("token kid does not match the key")]
    KidMismatch,
    /// The signature did not verify.
    #[error("bad signature: {0}")]
    BadSignature(SignatureError),
    /// A DPoP proof without an embedded public `jwk` object.
    #[error("DPoP proof has no jwk header")]
    InvalidJwk,
}

impl JwsError {
    /// A short stable code for audit logs and metrics.
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self {
            JwsError::TooLarge => "token_too_large",
            JwsError::InvalidCharacter => "token_bad_charset",
            JwsError::SegmentCount => "token_bad_segments",
            JwsError::EmptySegment(_) => "token_empty_segment",
            JwsError::Base64(_) => "token_bad_base64",
            JwsError::HeaderJson(_) => "token_bad_header_json",
            JwsError::PayloadJson(_) => "token_bad_payload_json",
            JwsError::MissingAlg => "missing_alg",
            JwsError::InvalidAlg => "invalid_alg",
            JwsError::UnsupportedAlgorithm => "unsupported_alg",
            JwsError::ForbiddenHeader(_) => "forbidden_header",
            JwsError::CaseVariantHeader => "case_variant_header",
            JwsError::InvalidKid => "invalid_kid",
            JwsError::InvalidTyp => "invalid_typ",
            JwsError::AlgorithmMismatch => "alg_mismatch",
            JwsError::KidMismatch => "kid_mismatch",
            JwsError::BadSignature(_) => "bad_signature",
            JwsError::InvalidJwk => "dpop_jwk_missing",
        }
    }
}

/// The validated protected header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The signature algorithm.
    pub alg: Algorithm,
    /// Key id: an opaque lookup key, never a path or URL.
    pub kid: Option<String>,
    /// Media type of the complete JWS (e.g. `at+jwt`).
    pub typ: Option<String>,
}

/// A structurally valid token whose signature has NOT been checked.
/// `Debug` shows the header only, never claims or signature.
pub struct UnverifiedJws {
    header: Header,
    claims: Map<String, Value>,
    signing_input: String,
    signature: Vec<u8>,
}

/// A token whose signature verified with a trusted key. Its claims have not
/// been validated yet (see [`mod@crate::jose::validate`]). `Debug` shows the
/// header only.
pub struct VerifiedJws {
    header: Header,
    claims: Map<String, Value>,
    signing_input: String,
}

impl std::fmt::Debug for UnverifiedJws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnverifiedJws")
            .field("header", &self.header)
            .field("claim_count", &self.claims.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for VerifiedJws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedJws")
            .field("header", &self.header)
            .field("claim_count", &self.claims.len())
            .finish_non_exhaustive()
    }
}

fn is_token_byte(b: u8) -> bool {
    // Branch-free so that checking a whole token vectorises: A-Z/a-z (the
    // 0x20 bit folds case), 0-9, `-`, `_`, `.`.
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    let digit = b.wrapping_sub(b'0') < 10;
    letter | digit | (b == b'-') | (b == b'_') | (b == b'.')
}

/// Whether every byte is a base64url character or `.`, without
/// short-circuiting (the compiler turns the fold into SIMD).
fn all_token_bytes(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &b| ok & is_token_byte(b))
}

/// Decodes a compact JWS. No signature is checked.
///
/// # Errors
/// A [`JwsError`] naming the first rule broken.
pub fn decode(token: &str) -> Result<UnverifiedJws, JwsError> {
    decode_inner(token, false).map(|(j, _)| j)
}

/// Decodes a DPoP proof (RFC 9449 §4.2): like [`decode`], except that the
/// header MUST carry the proof's public key as `jwk`, returned beside the
/// token. Every other forbidden header parameter stays forbidden.
///
/// # Errors
/// A [`JwsError`]; a missing or non-object `jwk` is `InvalidJwk`.
pub fn decode_dpop_proof(token: &str) -> Result<(UnverifiedJws, Map<String, Value>), JwsError> {
    let (j, jwk) = decode_inner(token, true)?;
    match jwk {
        Some(Value::Object(m)) => Ok((j, m)),
        _ => Err(JwsError::InvalidJwk),
    }
}

fn decode_inner(
    token: &str,
    embedded_jwk: bool,
) -> Result<(UnverifiedJws, Option<Value>), JwsError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwsError::TooLarge);
    }
    if !all_token_bytes(token.as_bytes()) {
        return Err(JwsError::InvalidCharacter);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::SegmentCount);
    };
    for (seg, which) in [
        (h, Segment::Header),
        (p, Segment::Payload),
        (s, Segment::Signature),
    ] {
        if seg.is_empty() {
            return Err(JwsError::EmptySegment(which));
        }
    }
    let header_bytes = b64url_decode(h).ok_or(JwsError::Base64(Segment::Header))?;
    let payload_bytes = b64url_decode(p).ok_or(JwsError::Base64(Segment::Payload))?;
    let signature = b64url_decode(s).ok_or(JwsError::Base64(Segment::Signature))?;

    let mut header_map = json::parse_object(&header_bytes).map_err(JwsError::HeaderJson)?;
    let jwk = if embedded_jwk {
        header_map.remove("jwk")
    } else {
        None
    };
    let header = parse_header(&header_map)?;
    let claims = json::parse_object(&payload_bytes).map_err(JwsError::PayloadJson)?;

    // h and p are ASCII and adjacent in `token`; the signing input is
    // exactly `h.p` as received.
    let signing_input_len = h.len().saturating_add(1).saturating_add(p.len());
    let signing_input = token
        .get(..signing_input_len)
        .ok_or(JwsError::SegmentCount)?
        .to_owned();
    Ok((
        UnverifiedJws {
            header,
            claims,
            signing_input,
            signature,
        },
        jwk,
    ))
}

fn parse_header(map: &Map<String, Value>) -> Result<Header, JwsError> {
    for name in map.keys() {
        if let Some(forbidden) = FORBIDDEN_HEADER_PARAMS.iter().find(|f| **f == name) {
            return Err(JwsError::ForbiddenHeader(forbidden));
        }
        // Every listed name is lower case, so only a name with an upper-case
        // letter can be a case variant of one.
        let is_variant = name.bytes().any(|b| b.is_ascii_uppercase())
            && FORBIDDEN_HEADER_PARAMS
                .iter()
                .chain(KNOWN_HEADER_PARAMS.iter())
                .any(|known| known.eq_ignore_ascii_case(name));
        if is_variant {
            return Err(JwsError::CaseVariantHeader);
        }
    }
    let alg = match map.get("alg") {
        None => return Err(JwsError::MissingAlg),
        Some(Value::String(s)) => s
            .parse::<Algorithm>()
            .map_err(|_| JwsError::UnsupportedAlgorithm)?,
        Some(_) => return Err(JwsError::InvalidAlg),
    };
    let kid = match map.get("kid") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_KID_LEN => Some(s.clone()),
        Some(_) => return Err(JwsError::InvalidKid),
    };
    let typ = match map.get("typ") {
        None => None,
        Some(Value::String(s)) if s.len() <= MAX_TYP_LEN => Some(s.clone()),
        Some(_) => return Err(JwsError::InvalidTyp),
    };
    Ok(Header { alg, kid, typ })
}

impl UnverifiedJws {
    /// The validated header (safe to use for key selection only).
    #[must_use]
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The claims, UNVERIFIED: attacker-controlled until [`Self::verify`]
    /// succeeds. Use only for routing decisions such as picking an issuer
    /// configuration, never for authorization.
    #[must_use]
    pub fn unverified_claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// Verifies the signature with `key`. The key's single algorithm must
    /// equal the header `alg` exactly; if both carry a `kid` they must match.
    ///
    /// # Errors
    /// [`JwsError::AlgorithmMismatch`], [`JwsError::KidMismatch`] or
    /// [`JwsError::BadSignature`].
    pub fn verify(self, key: &VerifyingKey) -> Result<VerifiedJws, JwsError> {
        if key.algorithm() != self.header.alg {
            return Err(JwsError::AlgorithmMismatch);
        }
        if let (Some(token_kid), Some(key_kid)) = (self.header.kid.as_deref(), key.kid()) {
            if token_kid != key_kid {
                return Err(JwsError::KidMismatch);
            }
        }
        key.verify(self.signing_input.as_bytes(), &self.signature)
            .map_err(JwsError::BadSignature)?;
        Ok(VerifiedJws {
            header: self.header,
            claims: self.claims,
            signing_input: self.signing_input,
        })
    }
}

impl VerifiedJws {
    /// The protected header.
    #[must_use]
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The signed claims (signature verified, claims not yet validated).
    #[must_use]
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// Consumes the token, returning header and claims.
    #[must_use]
    pub fn into_parts(self) -> (Header, Map<String, Value>) {
        (self.header, self.claims)
    }

    /// SHA-256 of the signing input (`header.payload`). Use this, not the
    /// signature bytes, as a replay/dedup key: ECDSA signatures are
    /// malleable, the signed content is not. Computed on demand, so
    /// verifiers that never need it do not pay for the hash.
    #[must_use]
    pub fn signing_input_hash(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let d = digest::digest(&digest::SHA256, self.signing_input.as_bytes());
        out.copy_from_slice(d.as_ref());
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::jose::b64url_encode as b64;
    use crate::jose::testutil::{claims, header, token, token_raw, TestKey};
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn es256() -> (TestKey, VerifyingKey) {
        let k = TestKey::es256();
        let vk = k.verifying_key(Algorithm::ES256, Some("k1"));
        (k, vk)
    }

    fn good_es256() -> (String, VerifyingKey) {
        let (k, vk) = es256();
        let t = token(
            &header(Algorithm::ES256, Some("k1")),
            &claims(NOW),
            &k,
            Algorithm::ES256,
        );
        (t, vk)
    }

    fn decode_err(t: &str) -> JwsError {
        decode(t).unwrap_err()
    }

    #[test]
    fn good_tokens_verify() {
        for (k, alg) in [
            (TestKey::es256(), Algorithm::ES256),
            (TestKey::es384(), Algorithm::ES384),
            (TestKey::ed25519(), Algorithm::EdDSA),
            (TestKey::rsa(), Algorithm::RS256),
            (TestKey::rsa(), Algorithm::RS512),
            (TestKey::rsa(), Algorithm::PS256),
            (TestKey::rsa(), Algorithm::PS384),
        ] {
            let vk = k.verifying_key(alg, Some("kid-1"));
            let t = token(&header(alg, Some("kid-1")), &claims(NOW), &k, alg);
            let u = decode(&t).unwrap();
            assert_eq!(u.header().alg, alg);
            assert_eq!(u.header().kid.as_deref(), Some("kid-1"));
            assert_eq!(u.unverified_claims()["sub"], "workload-1");
            let v = u.verify(&vk).unwrap();
            assert_eq!(v.claims()["sub"], "workload-1");
            let (h, p, _) = split3(&t);
            let expected = digest::digest(&digest::SHA256, format!("{h}.{p}").as_bytes());
            assert_eq!(v.signing_input_hash().as_slice(), expected.as_ref());
        }
    }

    fn split3(t: &str) -> (&str, &str, &str) {
        let mut it = t.split('.');
        (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
    }

    #[test]
    fn framing_errors() {
        let (t, _) = good_es256();
        let (h, p, s) = split3(&t);
        assert_eq!(decode_err(&format!("{h}.{p}")), JwsError::SegmentCount);
        assert_eq!(
            decode_err(&format!("{h}.{p}.")),
            JwsError::EmptySegment(Segment::Signature)
        );
        assert_eq!(decode_err(&format!("{h}.{p}.{s}.")), JwsError::SegmentCount);
        assert_eq!(
            decode_err(&format!("{h}.{p}.{s}.foo")),
            JwsError::SegmentCount
        );
        assert_eq!(
            decode_err(&format!("{h}.{p}.{s}.{s}.{s}")),
            JwsError::SegmentCount
        );
        assert_eq!(
            decode_err(&format!("{h}..{s}")),
            JwsError::EmptySegment(Segment::Payload)
        );
        assert_eq!(
            decode_err(&format!(".{p}.{s}")),
            JwsError::EmptySegment(Segment::Header)
        );
        assert_eq!(decode_err(""), JwsError::SegmentCount);
        assert_eq!(decode_err(".."), JwsError::EmptySegment(Segment::Header));
        assert_eq!(decode_err("abc"), JwsError::SegmentCount);
        // JSON serialization.
        let json_ser = format!(r#"{{"payload":"{p}","protected":"{h}","signature":"{s}"}}"#);
        assert_eq!(decode_err(&json_ser), JwsError::InvalidCharacter);
        // Oversized.
        let big = format!("{h}.{}.{s}", "A".repeat(MAX_TOKEN_BYTES));
        assert_eq!(decode_err(&big), JwsError::TooLarge);
        // Just at the cap is decoded (and fails later for other reasons).
        let at_cap = "A".repeat(MAX_TOKEN_BYTES);
        assert_eq!(decode_err(&at_cap), JwsError::SegmentCount);
    }

    #[test]
    fn header_names_are_lower_case_so_the_variant_fast_path_holds() {
        for n in FORBIDDEN_HEADER_PARAMS
            .iter()
            .chain(KNOWN_HEADER_PARAMS.iter())
        {
            assert!(!n.bytes().any(|b| b.is_ascii_uppercase()), "{n}");
        }
        for n in crate::jose::validate::REGISTERED_CLAIMS {
            assert!(!n.bytes().any(|b| b.is_ascii_uppercase()), "{n}");
        }
    }

    #[test]
    fn token_byte_table_matches_the_definition() {
        for b in 0..=255u8 {
            let want = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
            assert_eq!(is_token_byte(b), want, "byte {b:#04x}");
            assert_eq!(all_token_bytes(&[b'a', b, b'Z']), want, "byte {b:#04x}");
        }
    }

    #[test]
    fn charset_gate() {
        let (t, _) = good_es256();
        let (h, p, s) = split3(&t);
        for bad in [
            "=", "+", "/", " ", "\r", "\n", "\t", "{", "\"", "%", "é", "\0", "\u{feff}",
        ] {
            let variants = [
                format!("{h}{bad}.{p}.{s}"),
                format!("{h}.{p}{bad}.{s}"),
                format!("{h}.{p}.{s}{bad}"),
                format!("{bad}{t}"),
            ];
            for v in variants {
                assert_eq!(decode_err(&v), JwsError::InvalidCharacter, "{bad:?}");
            }
        }
        // Padding inside a segment.
        let padded = format!("{h}.{p}.{s}==");
        assert_eq!(decode_err(&padded), JwsError::InvalidCharacter);
    }

    #[test]
    fn base64_strictness() {
        let (t, _) = good_es256();
        let (h, p, s) = split3(&t);
        // Length ≡ 1 (mod 4) is never valid base64.
        assert_eq!(
            decode_err(&format!("{h}.{p}.{s}AAA")),
            JwsError::Base64(Segment::Signature)
        );
        // Non-canonical trailing bits: "e30" is "{}"; "e31" decodes to the same
        // bytes with non-zero trailing bits.
        assert_eq!(
            decode_err("e31.e30.AAAA"),
            JwsError::Base64(Segment::Header)
        );
        assert_eq!(
            decode_err(&format!("{h}.e31.{s}")),
            JwsError::Base64(Segment::Payload)
        );
    }

    fn enc(raw: &[u8]) -> String {
        b64(raw)
    }

    #[test]
    fn header_and_payload_json_errors() {
        let sig = "AAAA";
        let p = enc(br#"{"sub":"x"}"#);
        let h = enc(br#"{"alg":"ES256"}"#);
        let cases: Vec<(String, JwsError)> = vec![
            (
                format!("{}.{p}.{sig}", enc(b"\xEF\xBB\xBF{\"alg\":\"ES256\"}")),
                JwsError::HeaderJson(JsonError::ByteOrderMark),
            ),
            (
                format!("{}.{p}.{sig}", enc(b"\xFF\xFE{\x00}\x00")),
                JwsError::HeaderJson(JsonError::InvalidUtf8),
            ),
            (
                format!(
                    "{}.{p}.{sig}",
                    enc(b"{\"alg\":\"ES256\",\"x\":\"\xC3\x28\"}")
                ),
                JwsError::HeaderJson(JsonError::InvalidUtf8),
            ),
            (
                format!("{}.{p}.{sig}", enc(b"[\"ES256\"]")),
                JwsError::HeaderJson(JsonError::NotAnObject),
            ),
            (
                format!("{}.{p}.{sig}", enc(b"\"ES256\"")),
                JwsError::HeaderJson(JsonError::NotAnObject),
            ),
            (
                format!("{}.{p}.{sig}", enc(br#"{"alg":"ES256","alg":"none"}"#)),
                JwsError::HeaderJson(JsonError::DuplicateKey),
            ),
            (
                format!("{}.{p}.{sig}", enc(br#"{"alg":"ES256","x":{"a":1,"a":2}}"#)),
                JwsError::HeaderJson(JsonError::DuplicateKey),
            ),
            (
                format!("{h}.{}.{sig}", enc(br#"{"sub":"a","sub":"b"}"#)),
                JwsError::PayloadJson(JsonError::DuplicateKey),
            ),
            (
                format!("{h}.{}.{sig}", enc(br#"{"act":{"sub":"a","sub":"b"}}"#)),
                JwsError::PayloadJson(JsonError::DuplicateKey),
            ),
            (
                format!("{h}.{}.{sig}", enc(b"[1]")),
                JwsError::PayloadJson(JsonError::NotAnObject),
            ),
            (
                format!("{h}.{}.{sig}", enc(b"hello")),
                JwsError::PayloadJson(JsonError::NotAnObject),
            ),
            (
                format!("{h}.{}.{sig}", enc(b"{\"sub\":\"x\"}garbage")),
                JwsError::PayloadJson(JsonError::Syntax),
            ),
            (
                format!("{h}.{}.{sig}", enc(b"\xFE\xFF\x00{\x00}")),
                JwsError::PayloadJson(JsonError::InvalidUtf8),
            ),
        ];
        for (t, err) in cases {
            assert_eq!(decode_err(&t), err);
        }
    }

    #[test]
    fn deep_nesting_in_token() {
        let h = enc(br#"{"alg":"ES256"}"#);
        // 10,000-deep would exceed the token cap once encoded; use the deepest
        // payload that fits and a 10,000-deep header-size-independent check in
        // json.rs. Here: 3,000 levels within 8 KiB of base64.
        let depth = 3000;
        let payload = format!("{{\"a\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
        let t = format!("{h}.{}.AAAA", enc(payload.as_bytes()));
        assert!(t.len() <= MAX_TOKEN_BYTES);
        assert_eq!(decode_err(&t), JwsError::PayloadJson(JsonError::TooDeep));
    }

    #[test]
    fn alg_none_and_friends() {
        let (_, vk) = es256();
        let p = enc(&serde_json::to_vec(&claims(NOW)).unwrap());
        for alg in [
            "none", "None", "NONE", "nOnE", "HS256", "", "ES256K", "Ed25519",
        ] {
            let h = enc(format!(r#"{{"alg":"{alg}"}}"#).as_bytes());
            // With an empty signature segment...
            assert_eq!(
                decode_err(&format!("{h}.{p}.")),
                JwsError::EmptySegment(Segment::Signature)
            );
            // ... and with a signature.
            assert_eq!(
                decode_err(&format!("{h}.{p}.AAAA")),
                JwsError::UnsupportedAlgorithm,
                "{alg}"
            );
        }
        for (hjson, err) in [
            (r#"{"typ":"JWT"}"#, JwsError::MissingAlg),
            (r#"{"alg":null}"#, JwsError::InvalidAlg),
            (r#"{"alg":["ES256"]}"#, JwsError::InvalidAlg),
            (r#"{"alg":0}"#, JwsError::InvalidAlg),
            (r#"{"alg":true}"#, JwsError::InvalidAlg),
            (r#"{"alg":{"name":"ES256"}}"#, JwsError::InvalidAlg),
            (
                r#"{"ALG":"ES256","alg":"ES256"}"#,
                JwsError::CaseVariantHeader,
            ),
            (r#"{"Alg":"none"}"#, JwsError::CaseVariantHeader),
        ] {
            let t = format!("{}.{p}.AAAA", enc(hjson.as_bytes()));
            assert_eq!(decode_err(&t), err, "{hjson}");
        }
        // `vk` unused beyond construction: an alg-none token never reaches it.
        assert_eq!(vk.algorithm(), Algorithm::ES256);
    }

    #[test]
    fn hs256_with_public_key_as_secret_is_rejected() {
        use aws_lc_rs::hmac;
        let rsa = TestKey::rsa();
        let vk = rsa.verifying_key(Algorithm::RS256, None);
        let jwk_text = serde_json::to_string(&vk.to_public_jwk()).unwrap();
        let secret = hmac::Key::new(hmac::HMAC_SHA256, jwk_text.as_bytes());
        let t = token_raw(r#"{"alg":"HS256"}"#, &claims(NOW).to_string(), |si| {
            hmac::sign(&secret, si).as_ref().to_vec()
        });
        assert_eq!(decode_err(&t), JwsError::UnsupportedAlgorithm);
    }

    #[test]
    fn algorithm_must_equal_key_algorithm() {
        let rsa = TestKey::rsa();
        let rs256_key = rsa.verifying_key(Algorithm::RS256, None);
        // A correctly PS256-signed token against an RS256-bound key.
        let t = token(
            &header(Algorithm::PS256, None),
            &claims(NOW),
            &rsa,
            Algorithm::PS256,
        );
        assert_eq!(
            decode(&t).unwrap().verify(&rs256_key).unwrap_err(),
            JwsError::AlgorithmMismatch
        );
        // ES384 header against a P-256 key.
        let (k, vk) = es256();
        let t = token_raw(r#"{"alg":"ES384"}"#, &claims(NOW).to_string(), |si| {
            k.sign(Algorithm::ES256, si)
        });
        assert_eq!(
            decode(&t).unwrap().verify(&vk).unwrap_err(),
            JwsError::AlgorithmMismatch
        );
        // EdDSA token against an ES256 key.
        let ed = TestKey::ed25519();
        let t = token(
            &header(Algorithm::EdDSA, None),
            &claims(NOW),
            &ed,
            Algorithm::EdDSA,
        );
        assert_eq!(
            decode(&t).unwrap().verify(&vk).unwrap_err(),
            JwsError::AlgorithmMismatch
        );
    }

    #[test]
    fn kid_mismatch_between_header_and_key() {
        let (k, vk) = es256();
        let t = token(
            &header(Algorithm::ES256, Some("other")),
            &claims(NOW),
            &k,
            Algorithm::ES256,
        );
        assert_eq!(
            decode(&t).unwrap().verify(&vk).unwrap_err(),
            JwsError::KidMismatch
        );
    }

    #[test]
    fn ecdsa_signature_shapes() {
        let (t, vk) = good_es256();
        let (h, p, s) = split3(&t);
        // 64 zero bytes (r = s = 0).
        let zero = format!("{h}.{p}.{}", b64(&[0u8; 64]));
        assert_eq!(
            decode(&zero).unwrap().verify(&vk).unwrap_err(),
            JwsError::BadSignature(SignatureError::Invalid)
        );
        // DER-encoded signature of the same input by the same key.
        let raw = crate::jose::b64url_decode(s).unwrap();
        let der = der_from_raw(&raw);
        let der_t = format!("{h}.{p}.{}", b64(&der));
        assert_eq!(
            decode(&der_t).unwrap().verify(&vk).unwrap_err(),
            JwsError::BadSignature(SignatureError::WrongLength)
        );
        // 96-byte signature.
        let mut long = raw.clone();
        long.extend_from_slice(&[0u8; 32]);
        let long_t = format!("{h}.{p}.{}", b64(&long));
        assert_eq!(
            decode(&long_t).unwrap().verify(&vk).unwrap_err(),
            JwsError::BadSignature(SignatureError::WrongLength)
        );
        // The original still verifies.
        assert!(decode(&t).unwrap().verify(&vk).is_ok());
    }

    /// Converts a raw P-256 `r || s` signature to ASN.1 DER.
    fn der_from_raw(raw: &[u8]) -> Vec<u8> {
        fn int(v: &[u8]) -> Vec<u8> {
            let mut v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
            if v.first().is_none_or(|b| *b & 0x80 != 0) {
                v.insert(0, 0);
            }
            let mut out = vec![0x02, u8::try_from(v.len()).unwrap()];
            out.extend(v);
            out
        }
        let mut body = int(&raw[..32]);
        body.extend(int(&raw[32..]));
        let mut out = vec![0x30, u8::try_from(body.len()).unwrap()];
        out.extend(body);
        out
    }

    #[test]
    fn tampering_is_detected() {
        let (t, vk) = good_es256();
        let (h, p, s) = split3(&t);
        // Header tampered after signing (add typ), original signature kept.
        let h2 = enc(br#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#);
        assert_eq!(
            decode(&format!("{h2}.{p}.{s}"))
                .unwrap()
                .verify(&vk)
                .unwrap_err(),
            JwsError::BadSignature(SignatureError::Invalid)
        );
        // Payload bit flip (re-encoded so it still decodes).
        let mut payload = crate::jose::b64url_decode(p).unwrap();
        let pos = payload.iter().position(|b| *b == b'w').unwrap();
        payload[pos] ^= 0x01;
        let p2 = b64(&payload);
        assert_eq!(
            decode(&format!("{h}.{p2}.{s}"))
                .unwrap()
                .verify(&vk)
                .unwrap_err(),
            JwsError::BadSignature(SignatureError::Invalid)
        );
        // Last 4 signature chars cut.
        // Depending on the (random) trailing bits the shortened segment is
        // either non-canonical base64 or a valid 61-byte signature.
        let cut = &s[..s.len() - 4];
        match decode(&format!("{h}.{p}.{cut}")) {
            Err(e) => assert_eq!(e, JwsError::Base64(Segment::Signature)),
            Ok(u) => assert_eq!(
                u.verify(&vk).unwrap_err(),
                JwsError::BadSignature(SignatureError::WrongLength)
            ),
        }
        // Cutting a whole 4-char group (3 bytes) always decodes.
        let (keep, last) = s.split_at(s.len() - 2);
        let cut3 = format!("{}{last}", &keep[..keep.len() - 4]);
        assert_eq!(
            decode(&format!("{h}.{p}.{cut3}"))
                .unwrap()
                .verify(&vk)
                .unwrap_err(),
            JwsError::BadSignature(SignatureError::WrongLength)
        );
        // Signature from a different key of the same type.
        let other = TestKey::es256();
        let forged = token(
            &header(Algorithm::ES256, Some("k1")),
            &claims(NOW),
            &other,
            Algorithm::ES256,
        );
        assert_eq!(
            decode(&forged).unwrap().verify(&vk).unwrap_err(),
            JwsError::BadSignature(SignatureError::Invalid)
        );
        // RSA: signature from another RSA key.
        let a = TestKey::rsa();
        let b = TestKey::rsa_b();
        let vka = a.verifying_key(Algorithm::RS256, None);
        let tb = token(
            &header(Algorithm::RS256, None),
            &claims(NOW),
            &b,
            Algorithm::RS256,
        );
        assert_eq!(
            decode(&tb).unwrap().verify(&vka).unwrap_err(),
            JwsError::BadSignature(SignatureError::Invalid)
        );
    }

    #[test]
    fn forbidden_headers() {
        let (k, vk) = es256();
        let jwk = serde_json::to_value(k.public_jwk()).unwrap();
        let cases: Vec<(Value, &str)> = vec![
            (json!({"jwk": jwk}), "jwk"),
            (json!({"jku": "https://attacker.example/jwks"}), "jku"),
            (json!({"x5u": "https://attacker.example/cert"}), "x5u"),
            (json!({"x5c": ["MIIB"]}), "x5c"),
            (json!({"crit": ["exp"]}), "crit"),
            (json!({"crit": []}), "crit"),
            (json!({"crit": "b64"}), "crit"),
            (json!({"crit": null}), "crit"),
            (json!({"b64": false, "crit": ["b64"]}), "crit"),
            (json!({"b64": true}), "b64"),
            (json!({"zip": "DEF"}), "zip"),
            (json!({"p2c": 1_000_000, "p2s": "AAAA"}), "p2c"),
            (json!({"p2s": "AAAA"}), "p2s"),
            (json!({"enc": "A128GCM"}), "enc"),
            (json!({"epk": {}}), "epk"),
            (json!({"apu": "AA"}), "apu"),
            (json!({"apv": "AA"}), "apv"),
            (json!({"iv": "AA"}), "iv"),
            (json!({"tag": "AA"}), "tag"),
            (json!({"cty": "JWT"}), "cty"),
        ];
        for (extra, name) in cases {
            let mut h = header(Algorithm::ES256, Some("k1"));
            for (key, v) in extra.as_object().unwrap() {
                h[key] = v.clone();
            }
            // Properly signed, so only the header rule can reject it.
            let t = token(&h, &claims(NOW), &k, Algorithm::ES256);
            let err = decode_err(&t);
            match err {
                JwsError::ForbiddenHeader(n) => {
                    assert!(extra.as_object().unwrap().contains_key(n), "{name}: {n}");
                }
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
        for variant in ["JKU", "Jwk", "X5C", "Crit", "CTY"] {
            let mut h = header(Algorithm::ES256, Some("k1"));
            h[variant] = json!("x");
            let t = token(&h, &claims(NOW), &k, Algorithm::ES256);
            assert_eq!(decode_err(&t), JwsError::CaseVariantHeader, "{variant}");
        }
        // Unknown, harmless parameters are allowed.
        let mut h = header(Algorithm::ES256, Some("k1"));
        h["x5t#S256"] = json!("abc");
        h["typ"] = json!("at+jwt");
        let t = token(&h, &claims(NOW), &k, Algorithm::ES256);
        let u = decode(&t).unwrap();
        assert_eq!(u.header().typ.as_deref(), Some("at+jwt"));
        assert!(u.verify(&vk).is_ok());
    }

    #[test]
    fn kid_and_typ_rules() {
        let (k, _) = es256();
        for (kid, err) in [
            (json!(""), JwsError::InvalidKid),
            (json!("a".repeat(MAX_KID_LEN + 1)), JwsError::InvalidKid),
            (json!(1), JwsError::InvalidKid),
            (json!(null), JwsError::InvalidKid),
            (json!(["k1"]), JwsError::InvalidKid),
        ] {
            let h = json!({"alg":"ES256","kid":kid});
            assert_eq!(
                decode_err(&token(&h, &claims(NOW), &k, Algorithm::ES256)),
                err
            );
        }
        for typ in [json!(1), json!(null), json!("t".repeat(MAX_TYP_LEN + 1))] {
            let h = json!({"alg":"ES256","typ":typ});
            assert_eq!(
                decode_err(&token(&h, &claims(NOW), &k, Algorithm::ES256)),
                JwsError::InvalidTyp
            );
        }
        // Weird kids are opaque strings and simply do not match a key set.
        let set =
            crate::jose::jwk::JwkSet::from_keys(
                vec![k.verifying_key(Algorithm::ES256, Some("k1"))],
            );
        for weird in [
            "../../etc/passwd",
            "k1\u{0}",
            "K1",
            " k1",
            "k1/",
            "' OR 1=1 --",
            "https://attacker.example/key",
            "%6b1",
            "k\u{0131}",
        ] {
            let h = json!({"alg":"ES256","kid":weird});
            let u = decode(&token(&h, &claims(NOW), &k, Algorithm::ES256)).unwrap();
            assert_eq!(u.header().kid.as_deref(), Some(weird));
            assert_eq!(
                set.find(u.header().kid.as_deref()).unwrap_err(),
                crate::jose::jwk::KeyMatchError::UnknownKid
            );
        }
    }

    #[test]
    fn debug_does_not_leak_claims() {
        let (t, vk) = good_es256();
        let u = decode(&t).unwrap();
        let dbg = format!("{u:?}");
        assert!(!dbg.contains("workload-1"));
        let v = u.verify(&vk).unwrap();
        assert!(!format!("{v:?}").contains("workload-1"));
    }

    #[test]
    fn reasons_are_stable() {
        assert_eq!(
            JwsError::BadSignature(SignatureError::Invalid).reason(),
            "bad_signature"
        );
        assert_eq!(JwsError::AlgorithmMismatch.reason(), "alg_mismatch");
        assert_eq!(
            JwsError::ForbiddenHeader("jku").reason(),
            "forbidden_header"
        );
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(s in "\\PC{0,300}") {
            let _ = decode(&s);
        }

        #[test]
        fn decode_never_panics_on_token_alphabet(s in "[A-Za-z0-9_.-]{0,400}") {
            let _ = decode(&s);
        }
    }
}
