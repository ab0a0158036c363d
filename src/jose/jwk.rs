// One file: about 500 of its lines are unit tests (RFC vectors and hostile
// keys); the parser is under 700.
//! JSON Web Key parsing (RFC 7517/7518/8037) into ready-to-use verifying keys.
//!
//! Every accepted key is parsed exactly once into an aws-lc-rs
//! [`ParsedPublicKey`] and is bound to exactly one [`Algorithm`]: the JWK's
//! `alg` when present (it must fit the key type), otherwise the curve's
//! algorithm for EC/OKP and `RS256` for RSA. A token is only ever verified
//! with the key's own algorithm.
//!
//! Accepted key types: RSA (2048..=8192-bit modulus, odd exponent > 1),
//! EC P-256/P-384 (point validated on the curve), OKP Ed25519. Symmetric
//! (`oct`) keys, encryption keys (`use` ≠ `sig`), keys whose `key_ops` lack
//! `verify`, and JWKs carrying private-key members are rejected.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use serde_json::{Map, Value};

use super::alg::Algorithm;
use super::json::{self, JsonError};
use super::{b64url_decode, b64url_encode};

/// Maximum length in bytes of a `kid` (in JWKs and in JWS headers).
pub const MAX_KID_LEN: usize = 256;
/// Minimum RSA modulus size in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Maximum RSA modulus size in bits.
pub const MAX_RSA_BITS: usize = 8192;
/// Maximum length in bytes of an RSA public exponent (aws-lc allows ≤ 33 bits;
/// real keys use 65537).
pub const MAX_RSA_EXPONENT_BYTES: usize = 4;
/// Maximum number of entries in a JWK Set's `keys` array.
pub const MAX_JWKS_KEYS: usize = 100;
/// Maximum size in bytes of a serialized JWK Set.
pub const MAX_JWK_SET_BYTES: usize = 64 * 1024;

/// JWK members that only occur in private (or symmetric) keys.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a JWK (or JWK Set) was rejected. Never contains key material.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// A required member is absent.
    #[error("JWK member `{0}` is missing")]
    MissingMember(&'static str),
    /// A member has the wrong JSON type or is not strict base64url.
    #[error("JWK member `{0}` is malformed")]
    InvalidMember(&'static str),
    /// `kty` is `oct`: symmetric keys are never accepted.
    #[error("symmetric (oct) JWKs are not accepted")]
    SymmetricKey,
    /// `kty` is not RSA, EC or OKP.
    #[error("unsupported JWK key type")]
    UnsupportedKeyType,
    /// The curve is not P-256, P-384 or Ed25519.
    #[error("unsupported JWK curve")]
    UnsupportedCurve,
    /// The JWK carries private key members (`d`, `p`, ...).
    #[error("JWK contains private key material")]
    PrivateKeyMaterial,
    /// `use` is present and is not `sig`.
    #[error("JWK `use` is not `sig`")]
    UseNotSig,
    /// `key_ops` is present and does not contain `verify`.
    #[error("JWK `key_ops` does not allow `verify`")]
    KeyOpsWithoutVerify,
    /// `alg` is not a supported signature algorithm.
    #[error("unsupported JWK algorithm")]
    UnsupportedAlgorithm,
    /// `alg` does not fit the key type or curve.
    #[error("JWK `alg` does not match the key type")]
    AlgorithmMismatch,
    /// The RSA modulus is outside 2048..=8192 bits.
    #[error("RSA modulus size not allowed")]
    RsaModulusSize,
    /// The RSA public exponent is even, 1, or too large.
    #[error("RSA public exponent not allowed")]
    RsaExponent,
    /// An EC/OKP coordinate has the wrong length for the curve.
    #[error("wrong coordinate length for the curve")]
    CoordinateLength,
    /// The crypto library rejected the key (e.g. EC point not on the curve).
    #[error("public key rejected")]
    InvalidKey,
    /// An Ed25519 key of small order (under which forgeries verify).
    #[error("Ed25519 public key of small order")]
    SmallOrderKey,
    /// `kid` is not a string of 1..=MAX_KID_LEN bytes.
    #[error("invalid `kid`")]
    InvalidKid,
    /// The JWK Set is not valid strict JSON.
    #[error("JWK Set JSON: {0}")]
    Json(JsonError),
    /// The JWK Set exceeds [`MAX_JWK_SET_BYTES`].
    #[error("JWK Set too large")]
    TooLarge,
    /// The JWK Set has more than [`MAX_JWKS_KEYS`] keys.
    #[error("JWK Set has too many keys")]
    TooManyKeys,
}

impl JwkError {
    /// A short stable code for audit logs and metrics.
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self {
            JwkError::MissingMember(_) => "jwk_missing_member",
            JwkError::InvalidMember(_) => "jwk_invalid_member",
            JwkError::SymmetricKey => "jwk_symmetric",
            JwkError::UnsupportedKeyType => "jwk_unsupported_kty",
            JwkError::UnsupportedCurve => "jwk_unsupported_crv",
            JwkError::PrivateKeyMaterial => "jwk_private_material",
            JwkError::UseNotSig => "jwk_use_not_sig",
            JwkError::KeyOpsWithoutVerify => "jwk_key_ops",
            JwkError::UnsupportedAlgorithm => "jwk_unsupported_alg",
            JwkError::AlgorithmMismatch => "jwk_alg_mismatch",
            JwkError::RsaModulusSize => "jwk_rsa_size",
            JwkError::RsaExponent => "jwk_rsa_exponent",
            JwkError::CoordinateLength => "jwk_coordinate_length",
            JwkError::InvalidKey => "jwk_invalid_key",
            JwkError::SmallOrderKey => "jwk_small_order",
            JwkError::InvalidKid => "jwk_invalid_kid",
            JwkError::Json(_) => "jwks_json",
            JwkError::TooLarge => "jwks_too_large",
            JwkError::TooManyKeys => "jwks_too_many_keys",
        }
    }
}

/// A signature did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature length is wrong for the algorithm/key (e.g. a DER
    /// ECDSA signature, or a 96-byte signature for ES256).
    #[error("signature has the wrong length")]
    WrongLength,
    /// The signature is well-formed but invalid.
    #[error("signature is invalid")]
    Invalid,
}

/// Supported elliptic curves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    Ed25519,
}

impl Curve {
    const fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::Ed25519 => "Ed25519",
        }
    }
}

/// The public components, kept for the thumbprint and JWK export.
enum Material {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { crv: Curve, x: Vec<u8>, y: Vec<u8> },
    Okp { x: Vec<u8> },
}

/// A public key bound to exactly one algorithm, parsed once and ready to
/// verify signatures. Cheap to share behind an [`Arc`].
pub struct VerifyingKey {
    alg: Algorithm,
    kid: Option<String>,
    material: Material,
    key: ParsedPublicKey,
    thumbprint: String,
    /// Exact signature length this key accepts.
    sig_len: usize,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

fn get_str<'a>(jwk: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, JwkError> {
    match jwk.get(name) {
        None => Err(JwkError::MissingMember(name)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(JwkError::InvalidMember(name)),
    }
}

fn get_b64(jwk: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, JwkError> {
    let s = get_str(jwk, name)?;
    b64url_decode(s).ok_or(JwkError::InvalidMember(name))
}

/// Validates `kid` as an opaque identifier.
fn parse_kid(jwk: &Map<String, Value>) -> Result<Option<String>, JwkError> {
    match jwk.get("kid") {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_KID_LEN => Ok(Some(s.clone())),
        Some(_) => Err(JwkError::InvalidKid),
    }
}

fn check_use_and_ops(jwk: &Map<String, Value>) -> Result<(), JwkError> {
    match jwk.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(Value::String(_)) => return Err(JwkError::UseNotSig),
        Some(_) => return Err(JwkError::InvalidMember("use")),
    }
    match jwk.get("key_ops") {
        None => Ok(()),
        Some(Value::Array(ops)) => {
            let mut verify = false;
            for op in ops {
                match op {
                    Value::String(s) => verify |= s == "verify",
                    _ => return Err(JwkError::InvalidMember("key_ops")),
                }
            }
            if verify {
                Ok(())
            } else {
                Err(JwkError::KeyOpsWithoutVerify)
            }
        }
        Some(_) => Err(JwkError::InvalidMember("key_ops")),
    }
}

fn declared_alg(jwk: &Map<String, Value>) -> Result<Option<Algorithm>, JwkError> {
    match jwk.get("alg") {
        None => Ok(None),
        Some(Value::String(s)) => s
            .parse::<Algorithm>()
            .map(Some)
            .map_err(|_| JwkError::UnsupportedAlgorithm),
        Some(_) => Err(JwkError::InvalidMember("alg")),
    }
}

/// Minimal big-endian bytes: non-empty and no leading zero octet.
/// The y-coordinates (little-endian, sign bit of x cleared) whose points
/// have an order dividing 8, in canonical and non-canonical spellings: 0
/// (order 4), 1 (the identity), the two of order 8, p − 1 (order 2), p (= 0)
/// and p + 1 (= 1). The same set libsodium refuses.
const ED25519_SMALL_ORDER_Y: [[u8; 32]; 7] = {
    let mut t = [[0u8; 32]; 7];
    t[1][0] = 1;
    t[2] = [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ];
    t[3] = [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ];
    let mut i = 4;
    while i < 7 {
        t[i] = [0xff; 32];
        t[i][31] = 0x7f;
        i += 1;
    }
    t[4][0] = 0xec; // p - 1
    t[5][0] = 0xed; // p
    t[6][0] = 0xee; // p + 1
    t
};

/// Whether an encoded Ed25519 point has small order (either sign of x).
/// Public values: not constant time.
fn ed25519_small_order(enc: &[u8]) -> bool {
    enc.len() == 32
        && ED25519_SMALL_ORDER_Y
            .iter()
            .any(|y| enc[..31] == y[..31] && (enc[31] & 0x7f) == y[31])
}

fn is_minimal(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|b| *b != 0)
}

fn bit_len(minimal_be: &[u8]) -> usize {
    match minimal_be.first() {
        None => 0,
        Some(first) => {
            let top = 8usize.saturating_sub(first.leading_zeros() as usize);
            minimal_be
                .len()
                .saturating_sub(1)
                .saturating_mul(8)
                .saturating_add(top)
        }
    }
}

fn rsa_params(alg: Algorithm) -> Option<&'static signature::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA => return None,
    })
}

impl VerifyingKey {
    /// Builds a verifying key from one JWK object (see the module docs for
    /// the exact acceptance rules).
    ///
    /// # Errors
    /// A [`JwkError`] naming the first rule the JWK breaks.
    pub fn from_jwk(jwk: &Map<String, Value>) -> Result<VerifyingKey, JwkError> {
        let kty = get_str(jwk, "kty")?;
        match kty {
            "RSA" | "EC" | "OKP" => {}
            "oct" => return Err(JwkError::SymmetricKey),
            _ => return Err(JwkError::UnsupportedKeyType),
        }
        if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
            return Err(JwkError::PrivateKeyMaterial);
        }
        check_use_and_ops(jwk)?;
        let declared = declared_alg(jwk)?;
        let kid = parse_kid(jwk)?;
        let (alg, material, key, sig_len) = match kty {
            "RSA" => Self::rsa(jwk, declared)?,
            "EC" => Self::ec(jwk, declared)?,
            _ => Self::okp(jwk, declared)?,
        };
        let thumbprint = thumbprint_of(&material);
        Ok(VerifyingKey {
            alg,
            kid,
            material,
            key,
            thumbprint,
            sig_len,
        })
    }

    #[allow(clippy::type_complexity)]
    fn rsa(
        jwk: &Map<String, Value>,
        declared: Option<Algorithm>,
    ) -> Result<(Algorithm, Material, ParsedPublicKey, usize), JwkError> {
        let alg = declared.unwrap_or(Algorithm::RS256);
        let params = rsa_params(alg).ok_or(JwkError::AlgorithmMismatch)?;
        let n = get_b64(jwk, "n")?;
        let e = get_b64(jwk, "e")?;
        if !is_minimal(&n) {
            return Err(JwkError::InvalidMember("n"));
        }
        let bits = bit_len(&n);
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(JwkError::RsaModulusSize);
        }
        if n.last().is_some_and(|b| b & 1 == 0) {
            return Err(JwkError::InvalidKey);
        }
        let e_ok = is_minimal(&e)
            && e.len() <= MAX_RSA_EXPONENT_BYTES
            && e.last().is_some_and(|b| b & 1 == 1)
            && e.as_slice() != [1];
        if !e_ok {
            return Err(JwkError::RsaExponent);
        }
        let key = RsaPublicKeyComponents {
            n: n.as_slice(),
            e: e.as_slice(),
        }
        .to_parsed_public_key(params)
        .map_err(|_| JwkError::InvalidKey)?;
        let sig_len = n.len();
        Ok((alg, Material::Rsa { n, e }, key, sig_len))
    }

    #[allow(clippy::type_complexity)]
    fn ec(
        jwk: &Map<String, Value>,
        declared: Option<Algorithm>,
    ) -> Result<(Algorithm, Material, ParsedPublicKey, usize), JwkError> {
        let (crv, alg, coord_len, valg): (
            _,
            _,
            usize,
            &'static signature::EcdsaVerificationAlgorithm,
        ) = match get_str(jwk, "crv")? {
            "P-256" => (
                Curve::P256,
                Algorithm::ES256,
                32,
                &signature::ECDSA_P256_SHA256_FIXED,
            ),
            "P-384" => (
                Curve::P384,
                Algorithm::ES384,
                48,
                &signature::ECDSA_P384_SHA384_FIXED,
            ),
            _ => return Err(JwkError::UnsupportedCurve),
        };
        if declared.is_some_and(|d| d != alg) {
            return Err(JwkError::AlgorithmMismatch);
        }
        let x = get_b64(jwk, "x")?;
        let y = get_b64(jwk, "y")?;
        if x.len() != coord_len || y.len() != coord_len {
            return Err(JwkError::CoordinateLength);
        }
        let mut point = Vec::with_capacity(1 + 2 * coord_len);
        point.push(0x04);
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        let key = ParsedPublicKey::new(valg, &point).map_err(|_| JwkError::InvalidKey)?;
        Ok((alg, Material::Ec { crv, x, y }, key, 2 * coord_len))
    }

    #[allow(clippy::type_complexity)]
    fn okp(
        jwk: &Map<String, Value>,
        declared: Option<Algorithm>,
    ) -> Result<(Algorithm, Material, ParsedPublicKey, usize), JwkError> {
        if get_str(jwk, "crv")? != "Ed25519" {
            return Err(JwkError::UnsupportedCurve);
        }
        if declared.is_some_and(|d| d != Algorithm::EdDSA) {
            return Err(JwkError::AlgorithmMismatch);
        }
        let x = get_b64(jwk, "x")?;
        if x.len() != signature::ED25519_PUBLIC_KEY_LEN {
            return Err(JwkError::CoordinateLength);
        }
        if ed25519_small_order(&x) {
            return Err(JwkError::SmallOrderKey);
        }
        let key =
            ParsedPublicKey::new(&signature::ED25519, &x).map_err(|_| JwkError::InvalidKey)?;
        Ok((Algorithm::EdDSA, Material::Okp { x }, key, 64))
    }

    /// The one algorithm this key verifies.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The key's `kid`, if the JWK had one.
    #[must_use]
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Verifies `signature` over `signing_input` with this key's algorithm.
    /// ECDSA signatures must be raw `r || s` (RFC 7518 §3.4).
    ///
    /// # Errors
    /// [`SignatureError::WrongLength`] for a signature of the wrong size,
    /// [`SignatureError::Invalid`] for any other failure.
    pub fn verify(&self, signing_input: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        if signature.len() != self.sig_len {
            return Err(SignatureError::WrongLength);
        }
        self.key
            .verify_sig(signing_input, signature)
            .map_err(|_| SignatureError::Invalid)
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url without padding) over the
    /// required members only.
    #[must_use]
    pub fn thumbprint(&self) -> String {
        self.thumbprint.clone()
    }

    /// The public JWK for this key, including `alg`, `use: sig` and `kid`.
    #[must_use]
    pub fn to_public_jwk(&self) -> Value {
        let mut m = Map::new();
        match &self.material {
            Material::Rsa { n, e } => {
                m.insert("kty".into(), "RSA".into());
                m.insert("n".into(), b64url_encode(n).into());
                m.insert("e".into(), b64url_encode(e).into());
            }
            Material::Ec { crv, x, y } => {
                m.insert("kty".into(), "EC".into());
                m.insert("crv".into(), crv.name().into());
                m.insert("x".into(), b64url_encode(x).into());
                m.insert("y".into(), b64url_encode(y).into());
            }
            Material::Okp { x } => {
                m.insert("kty".into(), "OKP".into());
                m.insert("crv".into(), Curve::Ed25519.name().into());
                m.insert("x".into(), b64url_encode(x).into());
            }
        }
        m.insert("alg".into(), self.alg.as_str().into());
        m.insert("use".into(), "sig".into());
        if let Some(kid) = &self.kid {
            m.insert("kid".into(), kid.clone().into());
        }
        Value::Object(m)
    }
}

/// RFC 7638 canonical JSON: required members, lexicographic order, no
/// whitespace. All values are base64url or fixed names, so no escaping is
/// needed.
fn thumbprint_of(material: &Material) -> String {
    let canonical = match material {
        Material::Rsa { n, e } => format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            b64url_encode(e),
            b64url_encode(n)
        ),
        Material::Ec { crv, x, y } => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            crv.name(),
            b64url_encode(x),
            b64url_encode(y)
        ),
        Material::Okp { x } => format!(
            r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
            b64url_encode(x)
        ),
    };
    b64url_encode(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
}

/// Why a key lookup in a [`JwkSet`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyMatchError {
    /// No usable key has this `kid` (or, without a `kid`, the set is empty).
    #[error("no key with this kid")]
    UnknownKid,
    /// Several usable keys share this `kid` (or, without a `kid`, the set
    /// has more than one key).
    #[error("kid matches more than one key")]
    AmbiguousKid,
}

/// The usable keys of a JWK Set, indexed by `kid`.
#[derive(Debug, Default)]
pub struct JwkSet {
    keys: Vec<Arc<VerifyingKey>>,
    by_kid: HashMap<String, Arc<VerifyingKey>>,
    ambiguous: HashSet<String>,
}

impl JwkSet {
    /// Builds a set from already-parsed keys. A `kid` carried by more than
    /// one key is recorded as ambiguous and never resolves.
    #[must_use]
    pub fn from_keys(keys: Vec<VerifyingKey>) -> JwkSet {
        let mut set = JwkSet::default();
        for key in keys {
            let key = Arc::new(key);
            if let Some(kid) = key.kid() {
                if set.ambiguous.contains(kid) {
                    // Already known to be ambiguous.
                } else if set.by_kid.remove(kid).is_some() {
                    set.ambiguous.insert(kid.to_owned());
                } else {
                    set.by_kid.insert(kid.to_owned(), Arc::clone(&key));
                }
            }
            set.keys.push(key);
        }
        set
    }

    /// Number of usable keys (with or without `kid`).
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the set has no usable key.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// All usable keys, in document order.
    #[must_use]
    pub fn keys(&self) -> &[Arc<VerifyingKey>] {
        &self.keys
    }

    /// Looks a key up. With `Some(kid)`: the unique key with exactly that
    /// `kid` (an opaque string compared byte for byte). With `None`: the only
    /// key of the set, if it has exactly one.
    ///
    /// # Errors
    /// [`KeyMatchError::UnknownKid`] or [`KeyMatchError::AmbiguousKid`].
    pub fn find(&self, kid: Option<&str>) -> Result<Arc<VerifyingKey>, KeyMatchError> {
        match kid {
            Some(kid) => {
                if self.ambiguous.contains(kid) {
                    return Err(KeyMatchError::AmbiguousKid);
                }
                self.by_kid
                    .get(kid)
                    .cloned()
                    .ok_or(KeyMatchError::UnknownKid)
            }
            None => match self.keys.as_slice() {
                [only] => Ok(Arc::clone(only)),
                [] => Err(KeyMatchError::UnknownKid),
                _ => Err(KeyMatchError::AmbiguousKid),
            },
        }
    }
}

/// Parses a JWK Set document. Entries that are not usable verification
/// keys are skipped with a warning (kid and reason only); the document
/// itself must be strict JSON with a `keys` array of at most
/// [`MAX_JWKS_KEYS`] entries.
///
/// # Errors
/// [`JwkError::TooLarge`], [`JwkError::Json`], [`JwkError::MissingMember`] /
/// [`JwkError::InvalidMember`] for `keys`, or [`JwkError::TooManyKeys`].
pub fn parse_jwk_set(bytes: &[u8]) -> Result<JwkSet, JwkError> {
    if bytes.len() > MAX_JWK_SET_BYTES {
        return Err(JwkError::TooLarge);
    }
    let doc = json::parse_object(bytes).map_err(JwkError::Json)?;
    let entries = match doc.get("keys") {
        None => return Err(JwkError::MissingMember("keys")),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(JwkError::InvalidMember("keys")),
    };
    if entries.len() > MAX_JWKS_KEYS {
        return Err(JwkError::TooManyKeys);
    }
    let mut keys = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let Value::Object(jwk) = entry else {
            tracing::warn!(index, reason = "jwk_not_object", "skipping unusable JWK");
            continue;
        };
        match VerifyingKey::from_jwk(jwk) {
            Ok(key) => keys.push(key),
            Err(err) => {
                let kid = match jwk.get("kid") {
                    Some(Value::String(k)) if k.len() <= MAX_KID_LEN => k.as_str(),
                    Some(_) => "<invalid>",
                    None => "<none>",
                };
                tracing::warn!(index, kid, reason = err.reason(), "skipping unusable JWK");
            }
        }
    }
    Ok(JwkSet::from_keys(keys))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::jose::testutil::TestKey;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    #[test]
    fn rfc7638_thumbprint_example() {
        let jwk =
            obj(json!({"kty":"RSA","n":RFC7638_N,"e":"AQAB","alg":"RS256","kid":"2011-04-29"}));
        let key = VerifyingKey::from_jwk(&jwk).unwrap();
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert_eq!(key.algorithm(), Algorithm::RS256);
        assert_eq!(key.kid(), Some("2011-04-29"));
        // Optional members do not influence the thumbprint.
        let bare = obj(json!({"kty":"RSA","n":RFC7638_N,"e":"AQAB"}));
        assert_eq!(
            VerifyingKey::from_jwk(&bare).unwrap().thumbprint(),
            key.thumbprint()
        );
    }

    #[test]
    fn exported_jwk_round_trips() {
        for k in [
            TestKey::es256(),
            TestKey::es384(),
            TestKey::ed25519(),
            TestKey::rsa(),
        ] {
            let vk = VerifyingKey::from_jwk(&k.jwk(None, Some("k1"))).unwrap();
            assert_eq!(vk.algorithm(), k.default_alg());
            let exported = obj(vk.to_public_jwk());
            assert_eq!(exported["use"], "sig");
            assert_eq!(exported["alg"], k.default_alg().as_str());
            let again = VerifyingKey::from_jwk(&exported).unwrap();
            assert_eq!(again.thumbprint(), vk.thumbprint());
            assert_eq!(again.kid(), Some("k1"));
            // Debug output does not contain the key bytes.
            let dbg = format!("{vk:?}");
            for member in ["x", "n"] {
                if let Some(Value::String(s)) = exported.get(member) {
                    assert!(!dbg.contains(s.as_str()));
                }
            }
        }
    }

    #[test]
    fn default_and_explicit_algorithms() {
        let rsa = TestKey::rsa();
        for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
            let vk = VerifyingKey::from_jwk(&rsa.jwk(Some(alg), None)).unwrap();
            assert_eq!(vk.algorithm().as_str(), alg);
            let sig = rsa.sign(vk.algorithm(), b"msg");
            assert_eq!(vk.verify(b"msg", &sig), Ok(()));
        }
        let ec = TestKey::es256();
        let vk = VerifyingKey::from_jwk(&ec.jwk(Some("ES256"), None)).unwrap();
        assert_eq!(vk.algorithm(), Algorithm::ES256);
    }

    #[test]
    fn rejects_symmetric_and_unknown_types() {
        let oct = obj(json!({"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0","alg":"HS256"}));
        assert_eq!(
            VerifyingKey::from_jwk(&oct).unwrap_err(),
            JwkError::SymmetricKey
        );
        for kty in ["rsa", "ec", "OCT", "AKP", ""] {
            let j = obj(json!({"kty":kty}));
            assert_eq!(
                VerifyingKey::from_jwk(&j).unwrap_err(),
                JwkError::UnsupportedKeyType
            );
        }
        assert_eq!(
            VerifyingKey::from_jwk(&obj(json!({"n":"AQAB"}))).unwrap_err(),
            JwkError::MissingMember("kty")
        );
        assert_eq!(
            VerifyingKey::from_jwk(&obj(json!({"kty":1}))).unwrap_err(),
            JwkError::InvalidMember("kty")
        );
    }

    #[test]
    fn rejects_private_key_material() {
        let mut j = TestKey::es256().jwk(None, None);
        j.insert("d".into(), "AAAA".into());
        assert_eq!(
            VerifyingKey::from_jwk(&j).unwrap_err(),
            JwkError::PrivateKeyMaterial
        );
    }

    fn rsa_jwk_with(n: &[u8], e: &[u8]) -> Map<String, Value> {
        obj(json!({"kty":"RSA","n":b64url_encode(n),"e":b64url_encode(e)}))
    }

    #[test]
    fn d42_rsa_size_and_exponent_rules() {
        let k = TestKey::rsa().public_jwk();
        let n = b64url_decode(k["n"].as_str().unwrap()).unwrap();
        assert_eq!(bit_len(&n), 2048);
        // 1024-bit modulus.
        let small = &n[..128];
        assert_eq!(
            VerifyingKey::from_jwk(&rsa_jwk_with(small, &[1, 0, 1])).unwrap_err(),
            JwkError::RsaModulusSize
        );
        // 2047-bit modulus (top bit cleared).
        let mut n2047 = n.clone();
        n2047[0] = 0x7f;
        assert_eq!(
            VerifyingKey::from_jwk(&rsa_jwk_with(&n2047, &[1, 0, 1])).unwrap_err(),
            JwkError::RsaModulusSize
        );
        // 8200-bit modulus.
        let mut huge = vec![0xffu8; 1025];
        huge[1024] = 0xfb;
        assert_eq!(
            VerifyingKey::from_jwk(&rsa_jwk_with(&huge, &[1, 0, 1])).unwrap_err(),
            JwkError::RsaModulusSize
        );
        // Leading zero octet.
        let mut padded = vec![0u8];
        padded.extend_from_slice(&n);
        assert_eq!(
            VerifyingKey::from_jwk(&rsa_jwk_with(&padded, &[1, 0, 1])).unwrap_err(),
            JwkError::InvalidMember("n")
        );
        for e in [
            &[1u8][..],
            &[2],
            &[1, 0, 0],
            &[0, 1, 0, 1],
            &[],
            &[1, 0, 0, 0, 1],
        ] {
            assert_eq!(
                VerifyingKey::from_jwk(&rsa_jwk_with(&n, e)).unwrap_err(),
                JwkError::RsaExponent,
                "e = {e:?}"
            );
        }
        assert!(VerifyingKey::from_jwk(&rsa_jwk_with(&n, &[3])).is_ok());
        // Not base64url.
        let mut bad = k.clone();
        bad.insert("e".into(), "AQAB=".into());
        assert_eq!(
            VerifyingKey::from_jwk(&bad).unwrap_err(),
            JwkError::InvalidMember("e")
        );
    }

    #[test]
    fn d43_ec_rules() {
        let k = TestKey::es256().public_jwk();
        // Off-curve point: flip a bit of y.
        let mut y = b64url_decode(k["y"].as_str().unwrap()).unwrap();
        y[31] ^= 1;
        let mut off = k.clone();
        off.insert("y".into(), b64url_encode(&y).into());
        assert_eq!(
            VerifyingKey::from_jwk(&off).unwrap_err(),
            JwkError::InvalidKey
        );
        // Point at x = y = 0.
        let mut zero = k.clone();
        zero.insert("x".into(), b64url_encode(&[0; 32]).into());
        zero.insert("y".into(), b64url_encode(&[0; 32]).into());
        assert_eq!(
            VerifyingKey::from_jwk(&zero).unwrap_err(),
            JwkError::InvalidKey
        );
        // Wrong coordinate lengths.
        let x = b64url_decode(k["x"].as_str().unwrap()).unwrap();
        let mut short = k.clone();
        short.insert("x".into(), b64url_encode(&x[1..]).into());
        assert_eq!(
            VerifyingKey::from_jwk(&short).unwrap_err(),
            JwkError::CoordinateLength
        );
        let mut long = k.clone();
        let mut x33 = vec![0u8];
        x33.extend_from_slice(&x);
        long.insert("x".into(), b64url_encode(&x33).into());
        assert_eq!(
            VerifyingKey::from_jwk(&long).unwrap_err(),
            JwkError::CoordinateLength
        );
        // P-256 coordinates labelled P-384.
        let mut wrong_crv = k.clone();
        wrong_crv.insert("crv".into(), "P-384".into());
        assert_eq!(
            VerifyingKey::from_jwk(&wrong_crv).unwrap_err(),
            JwkError::CoordinateLength
        );
        for crv in ["P-521", "secp256k1", "p-256", "Ed25519"] {
            let mut c = k.clone();
            c.insert("crv".into(), crv.into());
            assert_eq!(
                VerifyingKey::from_jwk(&c).unwrap_err(),
                JwkError::UnsupportedCurve
            );
        }
        let mut no_y = k.clone();
        no_y.remove("y");
        assert_eq!(
            VerifyingKey::from_jwk(&no_y).unwrap_err(),
            JwkError::MissingMember("y")
        );
    }

    /// SECURITY.md #41: an Ed25519 key of small order verifies forgeries.
    /// aws-lc-rs 1.x accepts the identity key and then verifies R = identity,
    /// S = 0 for any message (checked by hand on 2026-11-22), so such keys
    /// are refused at load, in every spelling; and a signature
    /// with a non-canonical S (S ≥ L) never verifies.
    #[test]
    fn d41_ed25519_small_order_keys_and_non_canonical_s() {
        let base = TestKey::ed25519().public_jwk();
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut order2 = [0xffu8; 32];
        order2[0] = 0xec;
        order2[31] = 0x7f;
        let mut p_plus_1 = [0xffu8; 32];
        p_plus_1[0] = 0xee;
        p_plus_1[31] = 0x7f;
        let order8 = [
            0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef,
            0x98, 0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88,
            0x6d, 0x53, 0xfc, 0x05,
        ];
        for (name, enc) in [
            ("zero", [0u8; 32]),
            ("identity", identity),
            ("order 2", order2),
            ("identity as p+1", p_plus_1),
            ("order 8", order8),
        ] {
            for sign in [false, true] {
                let mut e = enc;
                if sign {
                    e[31] |= 0x80;
                }
                let mut j = base.clone();
                j.insert("x".into(), b64url_encode(&e).into());
                assert_eq!(
                    VerifyingKey::from_jwk(&j).err(),
                    Some(JwkError::SmallOrderKey),
                    "{name}, sign bit {sign}"
                );
            }
        }
        // Non-canonical S: S + L verifies nowhere.
        let k = TestKey::ed25519();
        let vk = k.verifying_key(Algorithm::EdDSA, None);
        let sig = k.sign(Algorithm::EdDSA, b"m");
        assert_eq!(vk.verify(b"m", &sig), Ok(()));
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut high = sig.clone();
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(high[32 + i]) + u16::from(L[i]) + carry;
            high[32 + i] = (v & 0xff) as u8;
            carry = v >> 8;
        }
        assert_eq!(carry, 0, "S + L fits in 32 bytes for a fresh signature");
        assert_eq!(vk.verify(b"m", &high), Err(SignatureError::Invalid));
    }

    #[test]
    fn okp_rules() {
        let k = TestKey::ed25519().public_jwk();
        let mut x25519 = k.clone();
        x25519.insert("crv".into(), "X25519".into());
        assert_eq!(
            VerifyingKey::from_jwk(&x25519).unwrap_err(),
            JwkError::UnsupportedCurve
        );
        let mut short = k.clone();
        short.insert("x".into(), b64url_encode(&[7; 31]).into());
        assert_eq!(
            VerifyingKey::from_jwk(&short).unwrap_err(),
            JwkError::CoordinateLength
        );
    }

    #[test]
    fn c33_use_and_key_ops() {
        let k = TestKey::es256();
        let mut enc = k.public_jwk();
        enc.insert("use".into(), "enc".into());
        assert_eq!(
            VerifyingKey::from_jwk(&enc).unwrap_err(),
            JwkError::UseNotSig
        );
        let mut sig = k.public_jwk();
        sig.insert("use".into(), "sig".into());
        assert!(VerifyingKey::from_jwk(&sig).is_ok());
        let mut ops = k.public_jwk();
        ops.insert("key_ops".into(), json!(["sign", "encrypt"]));
        assert_eq!(
            VerifyingKey::from_jwk(&ops).unwrap_err(),
            JwkError::KeyOpsWithoutVerify
        );
        ops.insert("key_ops".into(), json!([]));
        assert_eq!(
            VerifyingKey::from_jwk(&ops).unwrap_err(),
            JwkError::KeyOpsWithoutVerify
        );
        ops.insert("key_ops".into(), json!("verify"));
        assert_eq!(
            VerifyingKey::from_jwk(&ops).unwrap_err(),
            JwkError::InvalidMember("key_ops")
        );
        ops.insert("key_ops".into(), json!(["verify"]));
        assert!(VerifyingKey::from_jwk(&ops).is_ok());
    }

    #[test]
    fn alg_must_fit_key_type() {
        let cases: [(TestKey, &str, JwkError); 9] = [
            (TestKey::es256(), "ES384", JwkError::AlgorithmMismatch),
            (TestKey::es256(), "RS256", JwkError::AlgorithmMismatch),
            (TestKey::es256(), "EdDSA", JwkError::AlgorithmMismatch),
            (TestKey::es384(), "ES256", JwkError::AlgorithmMismatch),
            (TestKey::ed25519(), "ES256", JwkError::AlgorithmMismatch),
            (TestKey::rsa(), "ES256", JwkError::AlgorithmMismatch),
            (TestKey::rsa(), "EdDSA", JwkError::AlgorithmMismatch),
            (TestKey::rsa(), "HS256", JwkError::UnsupportedAlgorithm),
            (
                TestKey::ed25519(),
                "Ed25519",
                JwkError::UnsupportedAlgorithm,
            ),
        ];
        for (key, alg, err) in cases {
            assert_eq!(
                VerifyingKey::from_jwk(&key.jwk(Some(alg), None)).unwrap_err(),
                err,
                "{alg}"
            );
        }
        let mut j = TestKey::es256().public_jwk();
        j.insert("alg".into(), Value::Null);
        assert_eq!(
            VerifyingKey::from_jwk(&j).unwrap_err(),
            JwkError::InvalidMember("alg")
        );
    }

    #[test]
    fn kid_rules() {
        let k = TestKey::es256();
        assert_eq!(
            VerifyingKey::from_jwk(&k.jwk(None, Some(""))).unwrap_err(),
            JwkError::InvalidKid
        );
        let long = "a".repeat(MAX_KID_LEN + 1);
        assert_eq!(
            VerifyingKey::from_jwk(&k.jwk(None, Some(&long))).unwrap_err(),
            JwkError::InvalidKid
        );
        let mut j = k.public_jwk();
        j.insert("kid".into(), json!(5));
        assert_eq!(
            VerifyingKey::from_jwk(&j).unwrap_err(),
            JwkError::InvalidKid
        );
        let max = "a".repeat(MAX_KID_LEN);
        assert!(VerifyingKey::from_jwk(&k.jwk(None, Some(&max))).is_ok());
    }

    #[test]
    fn signature_length_and_zero_rules() {
        let k = TestKey::es256();
        let vk = k.verifying_key(Algorithm::ES256, None);
        let good = k.sign(Algorithm::ES256, b"m");
        assert_eq!(vk.verify(b"m", &good), Ok(()));
        assert_eq!(vk.verify(b"n", &good), Err(SignatureError::Invalid));
        assert_eq!(vk.verify(b"m", &[0u8; 64]), Err(SignatureError::Invalid));
        assert_eq!(
            vk.verify(b"m", &[0u8; 96]),
            Err(SignatureError::WrongLength)
        );
        assert_eq!(vk.verify(b"m", &[]), Err(SignatureError::WrongLength));
        // r = 0 with a valid s, and s = 0 with a valid r.
        let mut r0 = good.clone();
        r0[..32].fill(0);
        assert_eq!(vk.verify(b"m", &r0), Err(SignatureError::Invalid));
        let mut s0 = good.clone();
        s0[32..].fill(0);
        assert_eq!(vk.verify(b"m", &s0), Err(SignatureError::Invalid));
        // ES384 / Ed25519 / RSA length checks.
        let k384 = TestKey::es384();
        let vk384 = k384.verifying_key(Algorithm::ES384, None);
        assert_eq!(
            vk384.verify(b"m", &[1u8; 64]),
            Err(SignatureError::WrongLength)
        );
        assert_eq!(
            vk384.verify(b"m", &k384.sign(Algorithm::ES384, b"m")),
            Ok(())
        );
        let ed = TestKey::ed25519();
        let vked = ed.verifying_key(Algorithm::EdDSA, None);
        assert_eq!(vked.verify(b"m", &[0u8; 64]), Err(SignatureError::Invalid));
        let rsa = TestKey::rsa();
        let vkr = rsa.verifying_key(Algorithm::RS256, None);
        let sig = rsa.sign(Algorithm::RS256, b"m");
        assert_eq!(
            vkr.verify(b"m", &sig[1..]),
            Err(SignatureError::WrongLength)
        );
        // A PSS signature does not verify under an RS256-only key.
        let pss = rsa.sign(Algorithm::PS256, b"m");
        assert_eq!(vkr.verify(b"m", &pss), Err(SignatureError::Invalid));
    }

    #[test]
    fn c33_jwk_set_parsing_refuses_ambiguous_kids() {
        let a = TestKey::es256();
        let b = TestKey::ed25519();
        let c = TestKey::es256();
        let doc = json!({"keys":[
            a.jwk(None, Some("a")),
            b.jwk(None, Some("dup")),
            c.jwk(None, Some("dup")),
            {"kty":"oct","k":"AAAA","kid":"sym"},
            TestKey::es384().jwk(Some("ES256"), Some("bad")),
            "not an object",
            TestKey::rsa().jwk(None, None),
        ]});
        let set = parse_jwk_set(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 4);
        assert_eq!(set.find(Some("a")).unwrap().kid(), Some("a"));
        assert_eq!(
            set.find(Some("dup")).unwrap_err(),
            KeyMatchError::AmbiguousKid
        );
        assert_eq!(
            set.find(Some("sym")).unwrap_err(),
            KeyMatchError::UnknownKid
        );
        assert_eq!(
            set.find(Some("bad")).unwrap_err(),
            KeyMatchError::UnknownKid
        );
        assert_eq!(set.find(None).unwrap_err(), KeyMatchError::AmbiguousKid);
        // Ambiguity is not resolved by a third key either.
        let set3 = JwkSet::from_keys(vec![
            a.verifying_key(Algorithm::ES256, Some("x")),
            c.verifying_key(Algorithm::ES256, Some("x")),
            b.verifying_key(Algorithm::EdDSA, Some("x")),
        ]);
        assert_eq!(
            set3.find(Some("x")).unwrap_err(),
            KeyMatchError::AmbiguousKid
        );
        // A lone key without kid is found by kid None, not by any kid.
        let single =
            parse_jwk_set(json!({"keys":[a.jwk(None, None)]}).to_string().as_bytes()).unwrap();
        assert!(single.find(None).is_ok());
        assert_eq!(
            single.find(Some("a")).unwrap_err(),
            KeyMatchError::UnknownKid
        );
        let empty = parse_jwk_set(br#"{"keys":[]}"#).unwrap();
        assert_eq!(empty.find(None).unwrap_err(), KeyMatchError::UnknownKid);
    }

    #[test]
    fn jwk_set_document_errors() {
        assert_eq!(
            parse_jwk_set(b"{}").unwrap_err(),
            JwkError::MissingMember("keys")
        );
        assert_eq!(
            parse_jwk_set(br#"{"keys":{}}"#).unwrap_err(),
            JwkError::InvalidMember("keys")
        );
        assert_eq!(
            parse_jwk_set(br#"{"keys":[],"keys":[]}"#).unwrap_err(),
            JwkError::Json(JsonError::DuplicateKey)
        );
        assert_eq!(
            parse_jwk_set(br#"{"keys":[{"kty":"EC","kty":"RSA"}]}"#).unwrap_err(),
            JwkError::Json(JsonError::DuplicateKey)
        );
        let many = json!({"keys": vec![json!({}); MAX_JWKS_KEYS + 1]});
        assert_eq!(
            parse_jwk_set(many.to_string().as_bytes()).unwrap_err(),
            JwkError::TooManyKeys
        );
        let big = vec![b' '; MAX_JWK_SET_BYTES + 1];
        assert_eq!(parse_jwk_set(&big).unwrap_err(), JwkError::TooLarge);
    }
}
