// One file: the key ring's parsing, ids and rotation share one on-disk format;
// about 140 lines are tests.
//! Token signing keys: parsing, RFC 7638 key ids, the on-disk key ring and
//! key generation.
//!
//! Key material is never logged and never appears in error messages or
//! `Debug` output; only file paths, algorithms and key ids do.
//!
//! One file: parsing a key, naming its file, loading the directory and
//! generating or promoting a key are one job (the on-disk key ring), and
//! share the file-name and kid rules; close to half the lines are tests.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    RSA_PKCS1_SHA256,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::PrivateKeyDer;
use serde_json::json;

use super::MintError;

/// Largest key file accepted by [`KeyRing::load_dir`] and [`SigningKey::from_pem`].
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Largest number of `*.pem` files a key directory may hold.
pub const MAX_KEYS_PER_RING: usize = 64;

/// Largest RSA signature (8192-bit modulus, the aws-lc-rs maximum) in bytes.
pub const MAX_RSA_SIGNATURE_BYTES: usize = 1024;

/// Smallest RSA modulus accepted for signing, in bytes (2048 bits).
pub const MIN_RSA_MODULUS_BYTES: usize = 256;

/// File extension of key files in a key directory.
pub const KEY_FILE_EXTENSION: &str = "pem";

/// Suffix of a *next* key's file name (`20261122T101500.123456Z-es256-AbCd1234.next.pem`):
/// published in the JWK Set but never signing. Renaming it to drop `.next`
/// (and reloading) promotes it; the rotation procedure is in the README.
pub const NEXT_KEY_SUFFIX: &str = ".next.pem";

/// PEM line length used when writing key files.
const PEM_LINE_LEN: usize = 64;

/// JWS signature algorithm of a token signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigningAlgorithm {
    /// ECDSA over P-256 with SHA-256; signatures are raw `r || s` (64 bytes).
    ES256,
    /// Ed25519 (RFC 8037).
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
}

impl SigningAlgorithm {
    /// The JWS `alg` name (`"ES256"`, `"EdDSA"`, `"RS256"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::ES256 => "ES256",
            SigningAlgorithm::EdDSA => "EdDSA",
            SigningAlgorithm::RS256 => "RS256",
        }
    }

    /// Lower-case tag used in generated key file names (`es256`, `eddsa`, `rs256`).
    pub const fn file_tag(self) -> &'static str {
        match self {
            SigningAlgorithm::ES256 => "es256",
            SigningAlgorithm::EdDSA => "eddsa",
            SigningAlgorithm::RS256 => "rs256",
        }
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error returned when parsing an unknown algorithm name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported signing algorithm {0:?} (expected ES256, EdDSA or RS256)")]
pub struct UnknownAlgorithm(pub String);

impl SigningAlgorithm {
    /// An operator's spelling (`es256`, `eddsa`, `RS256`): the JWS name in
    /// any case. Tokens and JWKS use the exact name ([`FromStr`]).
    pub fn parse_any_case(s: &str) -> Result<Self, UnknownAlgorithm> {
        [Self::ES256, Self::EdDSA, Self::RS256]
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownAlgorithm(s.chars().take(32).collect()))
    }
}

impl FromStr for SigningAlgorithm {
    type Err = UnknownAlgorithm;

    /// Parses the exact JWS name (case-sensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ES256" => Ok(SigningAlgorithm::ES256),
            "EdDSA" => Ok(SigningAlgorithm::EdDSA),
            "RS256" => Ok(SigningAlgorithm::RS256),
            other => Err(UnknownAlgorithm(other.chars().take(32).collect())),
        }
    }
}

/// Why a PEM or DER private key could not be used as a signing key.
///
/// Reasons are fixed strings: they never echo key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    /// No usable PEM private key block.
    #[error("no PRIVATE KEY PEM block found (encrypted keys are not supported)")]
    NoPrivateKey,
    /// The PEM armour or base64 is malformed.
    #[error("malformed PEM")]
    MalformedPem,
    /// The key is not a P-256 EC, Ed25519 or RSA (2048..8192 bit) private key.
    #[error("not a P-256 EC, Ed25519 or RSA (2048-8192 bit) private key")]
    Unsupported,
    /// The key's public part could not be encoded.
    #[error("cannot encode the public key")]
    PublicKey,
}

/// Errors of loading, using or generating a key ring.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    /// The key directory could not be listed.
    #[error("cannot read signing key directory {}: {source}", path.display())]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The key directory contains no `*.pem` file.
    #[error("signing key directory {} contains no *.pem key file", path.display())]
    Empty {
        /// The directory.
        path: PathBuf,
    },
    /// The key directory contains too many `*.pem` files.
    #[error("signing key directory {} holds more than {max} *.pem files", path.display())]
    TooManyKeys {
        /// The directory.
        path: PathBuf,
        /// The limit ([`MAX_KEYS_PER_RING`]).
        max: usize,
    },
    /// A key file could not be read.
    #[error("cannot read signing key file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// A key file is larger than [`MAX_KEY_FILE_BYTES`].
    #[error("signing key file {} is larger than {max} bytes", path.display())]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// A key file could not be parsed.
    #[error("cannot parse signing key file {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: KeyParseError,
    },
    /// No loaded key that may sign (not a `*.next.pem` key) has the
    /// configured algorithm.
    #[error("signing key directory {} has no active {algorithm} key (a *.next.pem key is published but never signs)", path.display())]
    NoKeyForAlgorithm {
        /// The directory.
        path: PathBuf,
        /// The configured algorithm.
        algorithm: SigningAlgorithm,
    },
    /// A key ring was built from an empty key list.
    #[error("key ring has no keys")]
    NoKeys,
    /// [`KeyRing::from_keys`] got no key of the configured algorithm.
    #[error("key ring has no {0} key")]
    NoKeyOfAlgorithm(SigningAlgorithm),
    /// Key generation failed in the crypto library.
    #[error("cannot generate a {0} key")]
    Generate(SigningAlgorithm),
    /// The target key file already exists.
    #[error("refusing to overwrite existing key file {}", path.display())]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// `keys promote` was given a file that is not a next key.
    #[error("{} is not a next key file (its name must end in .next.pem)", path.display())]
    NotNextKey {
        /// The file.
        path: PathBuf,
    },
    /// Creating the directory or writing the key file failed.
    #[error("cannot write signing key file {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
}

/// The parsed, cached aws-lc-rs key pair.
enum KeyPairInner {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Rs256(RsaKeyPair),
}

/// A token signing key with its RFC 7638 key id and public JWK.
pub struct SigningKey {
    inner: KeyPairInner,
    kid: String,
    jwk: serde_json::Value,
    path: Option<PathBuf>,
    next: bool,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm())
            .field("kid", &self.kid)
            .field("path", &self.path)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses a private key from PEM: PKCS#8 (`PRIVATE KEY`, the expected
    /// form), or for convenience SEC1 (`EC PRIVATE KEY`) and PKCS#1
    /// (`RSA PRIVATE KEY`) as written by older OpenSSL commands.
    pub fn from_pem(pem_bytes: &[u8]) -> Result<SigningKey, KeyParseError> {
        let der = PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|e| match e {
            pem::Error::NoItemsFound => KeyParseError::NoPrivateKey,
            _ => KeyParseError::MalformedPem,
        })?;
        Self::from_private_key_der(&der)
    }

    /// Parses a private key from DER (PKCS#8, SEC1 or PKCS#1).
    pub fn from_private_key_der(der: &PrivateKeyDer<'_>) -> Result<SigningKey, KeyParseError> {
        let inner = match der {
            PrivateKeyDer::Pkcs8(p) => parse_pkcs8(p.secret_pkcs8_der())?,
            PrivateKeyDer::Sec1(s) => EcdsaKeyPair::from_private_key_der(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                s.secret_sec1_der(),
            )
            .map(KeyPairInner::Es256)
            .map_err(|_| KeyParseError::Unsupported)?,
            PrivateKeyDer::Pkcs1(r) => RsaKeyPair::from_der(r.secret_pkcs1_der())
                .map(KeyPairInner::Rs256)
                .map_err(|_| KeyParseError::Unsupported)?,
            _ => return Err(KeyParseError::Unsupported),
        };
        Self::from_inner(inner)
    }

    /// Parses an unencrypted PKCS#8 (v1 or v2) DER private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, KeyParseError> {
        Self::from_inner(parse_pkcs8(der)?)
    }

    fn from_inner(inner: KeyPairInner) -> Result<SigningKey, KeyParseError> {
        if let KeyPairInner::Rs256(k) = &inner {
            if k.public_modulus_len() < MIN_RSA_MODULUS_BYTES
                || k.public_modulus_len() > MAX_RSA_SIGNATURE_BYTES
            {
                return Err(KeyParseError::Unsupported);
            }
        }
        let (thumbprint_input, mut jwk) = public_members(&inner)?;
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, thumbprint_input.as_bytes());
        let kid = URL_SAFE_NO_PAD.encode(digest.as_ref());
        let alg = algorithm_of(&inner);
        if let Some(obj) = jwk.as_object_mut() {
            obj.insert("kid".into(), json!(kid));
            obj.insert("alg".into(), json!(alg.as_str()));
            obj.insert("use".into(), json!("sig"));
        }
        Ok(SigningKey {
            inner,
            kid,
            jwk,
            path: None,
            next: false,
        })
    }

    /// Generates a new key and returns it with its PKCS#8 v1 DER encoding.
    ///
    /// RSA keys are 2048 bits.
    pub fn generate(alg: SigningAlgorithm) -> Result<(SigningKey, Vec<u8>), KeyRingError> {
        let gen_err = |_| KeyRingError::Generate(alg);
        let der: Vec<u8> = match alg {
            SigningAlgorithm::ES256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|k| k.to_pkcs8v1())
                .map_err(gen_err)?
                .as_ref()
                .to_vec(),
            SigningAlgorithm::EdDSA => Ed25519KeyPair::generate()
                .and_then(|k| k.to_pkcs8v1())
                .map_err(gen_err)?
                .as_ref()
                .to_vec(),
            SigningAlgorithm::RS256 => {
                let k = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(gen_err)?;
                let der: Pkcs8V1Der<'static> = k.as_der().map_err(gen_err)?;
                der.as_ref().to_vec()
            }
        };
        let key = SigningKey::from_pkcs8_der(&der).map_err(|_| KeyRingError::Generate(alg))?;
        if key.algorithm() != alg {
            return Err(KeyRingError::Generate(alg));
        }
        Ok((key, der))
    }

    /// The key's JWS algorithm.
    pub fn algorithm(&self) -> SigningAlgorithm {
        algorithm_of(&self.inner)
    }

    /// The key id: the RFC 7638 SHA-256 JWK thumbprint, base64url without padding.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The file the key was loaded from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether this is a *next* key: published, but never signing (its file
    /// name ends in [`NEXT_KEY_SUFFIX`]).
    pub fn is_next(&self) -> bool {
        self.next
    }

    /// Marks the key as a *next* key (published, never signing).
    #[must_use]
    pub fn into_next(mut self) -> SigningKey {
        self.next = true;
        self
    }

    /// The public JWK: `kty`, `crv`/`x`/`y` or `n`/`e`, `kid`, `alg`, `use: "sig"`.
    pub fn public_jwk(&self) -> serde_json::Value {
        self.jwk.clone()
    }

    /// Borrowed public JWK (no clone).
    pub fn public_jwk_ref(&self) -> &serde_json::Value {
        &self.jwk
    }

    /// Signs `msg` and returns the JWS signature bytes (ES256: raw `r || s`).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, MintError> {
        Ok(self.sign_raw(msg)?.as_ref().to_vec())
    }

    /// Length in bytes of this key's signatures.
    pub fn signature_len(&self) -> usize {
        match &self.inner {
            KeyPairInner::Es256(_) | KeyPairInner::EdDsa(_) => ECDSA_P256_ED25519_SIGNATURE_BYTES,
            KeyPairInner::Rs256(k) => k.public_modulus_len(),
        }
    }

    /// Signs `msg` into a stack buffer (no heap allocation in this crate).
    pub(crate) fn sign_raw(&self, msg: &[u8]) -> Result<RawSignature, MintError> {
        match &self.inner {
            KeyPairInner::Es256(k) => k
                .sign(&SystemRandom::new(), msg)
                .map(RawSignature::Fixed)
                .map_err(|_| MintError::Sign),
            KeyPairInner::EdDsa(k) => k
                .try_sign(msg)
                .map(RawSignature::Fixed)
                .map_err(|_| MintError::Sign),
            KeyPairInner::Rs256(k) => {
                let len = k.public_modulus_len();
                let mut buf = [0u8; MAX_RSA_SIGNATURE_BYTES];
                let out = buf.get_mut(..len).ok_or(MintError::Sign)?;
                k.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, out)
                    .map_err(|_| MintError::Sign)?;
                Ok(RawSignature::Rsa(buf, len))
            }
        }
    }
}

/// Length of ES256 (`r || s`) and Ed25519 signatures.
const ECDSA_P256_ED25519_SIGNATURE_BYTES: usize = 64;

/// A signature held on the stack.
// aws-lc-rs's `Signature` is a fixed ~4.6 KiB buffer; the value lives only
// for the duration of one `mint`, so boxing would just add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum RawSignature {
    /// ECDSA or Ed25519 signature.
    Fixed(aws_lc_rs::signature::Signature),
    /// RSA signature in a fixed buffer with its length.
    Rsa([u8; MAX_RSA_SIGNATURE_BYTES], usize),
}

impl AsRef<[u8]> for RawSignature {
    fn as_ref(&self) -> &[u8] {
        match self {
            RawSignature::Fixed(s) => s.as_ref(),
            RawSignature::Rsa(buf, len) => buf.get(..*len).unwrap_or(&[]),
        }
    }
}

fn algorithm_of(inner: &KeyPairInner) -> SigningAlgorithm {
    match inner {
        KeyPairInner::Es256(_) => SigningAlgorithm::ES256,
        KeyPairInner::EdDsa(_) => SigningAlgorithm::EdDSA,
        KeyPairInner::Rs256(_) => SigningAlgorithm::RS256,
    }
}

fn parse_pkcs8(der: &[u8]) -> Result<KeyPairInner, KeyParseError> {
    if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
        return Ok(KeyPairInner::Es256(k));
    }
    if let Ok(k) = Ed25519KeyPair::from_pkcs8(der) {
        return Ok(KeyPairInner::EdDsa(k));
    }
    if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
        return Ok(KeyPairInner::Rs256(k));
    }
    Err(KeyParseError::Unsupported)
}

/// Returns the RFC 7638 thumbprint input (required members, lexicographic
/// order, no whitespace) and the public JWK members.
fn public_members(inner: &KeyPairInner) -> Result<(String, serde_json::Value), KeyParseError> {
    match inner {
        KeyPairInner::Es256(k) => {
            // Uncompressed SEC1 point: 0x04 || x (32) || y (32).
            let point = k.public_key().as_ref();
            let (x, y) = match point {
                [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
                _ => return Err(KeyParseError::PublicKey),
            };
            let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
            let tp = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
            Ok((tp, json!({"kty": "EC", "crv": "P-256", "x": x, "y": y})))
        }
        KeyPairInner::EdDsa(k) => {
            let x = URL_SAFE_NO_PAD.encode(k.public_key().as_ref());
            let tp = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
            Ok((tp, json!({"kty": "OKP", "crv": "Ed25519", "x": x})))
        }
        KeyPairInner::Rs256(k) => {
            let public = k.public_key();
            let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
            let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
            let tp = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
            Ok((tp, json!({"kty": "RSA", "n": n, "e": e})))
        }
    }
}

/// The set of signing keys loaded from a directory: one signs, all are published.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<Arc<SigningKey>>,
    signing: Arc<SigningKey>,
    jwks: serde_json::Value,
}

impl KeyRing {
    /// Loads every `*.pem` file in `dir` (sorted by file name). Any unreadable
    /// or unparsable key file is an error naming it. The signing key is the
    /// last key, in lexical file-name order, whose algorithm is `algorithm`
    /// and whose name does not end in [`NEXT_KEY_SUFFIX`] (next keys are
    /// published only).
    pub fn load_dir(dir: &Path, algorithm: SigningAlgorithm) -> Result<KeyRing, KeyRingError> {
        let files = pem_files(dir)?;
        if files.is_empty() {
            return Err(KeyRingError::Empty {
                path: dir.to_path_buf(),
            });
        }
        if files.len() > MAX_KEYS_PER_RING {
            return Err(KeyRingError::TooManyKeys {
                path: dir.to_path_buf(),
                max: MAX_KEYS_PER_RING,
            });
        }
        let mut keys = Vec::with_capacity(files.len());
        for path in files {
            let bytes = read_limited(&path)?;
            let mut key = SigningKey::from_pem(&bytes).map_err(|source| KeyRingError::Parse {
                path: path.clone(),
                source,
            })?;
            key.next = is_next_key_file(&path);
            key.path = Some(path);
            keys.push(key);
        }
        Self::from_keys(keys, algorithm).map_err(|e| match e {
            KeyRingError::NoKeyOfAlgorithm(algorithm) => KeyRingError::NoKeyForAlgorithm {
                path: dir.to_path_buf(),
                algorithm,
            },
            other => other,
        })
    }

    /// Builds a ring from keys in age order (oldest first). The last key of
    /// `algorithm` that is not a next key ([`SigningKey::is_next`]) signs.
    /// Keys sharing a kid are published once.
    pub fn from_keys(
        keys: Vec<SigningKey>,
        algorithm: SigningAlgorithm,
    ) -> Result<KeyRing, KeyRingError> {
        if keys.is_empty() {
            return Err(KeyRingError::NoKeys);
        }
        let keys: Vec<Arc<SigningKey>> = keys.into_iter().map(Arc::new).collect();
        let signing = keys
            .iter()
            .rev()
            .find(|k| k.algorithm() == algorithm && !k.is_next())
            .cloned()
            .ok_or(KeyRingError::NoKeyOfAlgorithm(algorithm))?;
        let mut published: Vec<serde_json::Value> = Vec::with_capacity(keys.len());
        let mut seen: Vec<&str> = Vec::with_capacity(keys.len());
        for key in &keys {
            if seen.contains(&key.kid()) {
                tracing::warn!(
                    kid = key.kid(),
                    path = ?key.path(),
                    "duplicate signing key in key ring; publishing it once"
                );
                continue;
            }
            seen.push(key.kid());
            published.push(key.public_jwk());
        }
        let jwks = json!({ "keys": published });
        Ok(KeyRing {
            keys,
            signing,
            jwks,
        })
    }

    /// The key that signs new tokens.
    pub fn signing_key(&self) -> &Arc<SigningKey> {
        &self.signing
    }

    /// All loaded keys, in file-name order.
    pub fn keys(&self) -> &[Arc<SigningKey>] {
        &self.keys
    }

    /// The key with the given kid, if loaded.
    pub fn key_by_kid(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.keys.iter().find(|k| k.kid() == kid)
    }

    /// The published JWK Set: `{"keys": [...]}` with every loaded key.
    pub fn jwks(&self) -> serde_json::Value {
        self.jwks.clone()
    }

    /// Borrowed JWK Set (no clone).
    pub fn jwks_ref(&self) -> &serde_json::Value {
        &self.jwks
    }
}

/// Whether `path` names a next key (`*.next.pem`).
pub fn is_next_key_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(NEXT_KEY_SUFFIX))
}

/// Lists `*.pem` regular files in `dir`, sorted by file name.
fn pem_files(dir: &Path) -> Result<Vec<PathBuf>, KeyRingError> {
    let read_dir_err = |source| KeyRingError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_dir_err)? {
        let entry = entry.map_err(read_dir_err)?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(KEY_FILE_EXTENSION) {
            continue;
        }
        // Follows symlinks: a dangling or unreadable entry surfaces when read.
        if path.is_dir() {
            continue;
        }
        files.push(path);
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// True if `dir` holds at least one `*.pem` file (false if it does not exist).
pub fn dir_has_pem(dir: &Path) -> Result<bool, KeyRingError> {
    match pem_files(dir) {
        Ok(files) => Ok(!files.is_empty()),
        Err(KeyRingError::ReadDir { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, KeyRingError> {
    let read_err = |source| KeyRingError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(KeyRingError::FileTooLarge {
            path: path.to_path_buf(),
            max: MAX_KEY_FILE_BYTES,
        });
    }
    Ok(bytes)
}

/// Generates a new key of `alg` and writes it as a PKCS#8 PEM file named
/// `YYYYMMDDTHHMMSS.ffffffZ-<alg>-<kid prefix>.pem` (UTC to the microsecond,
/// so lexical order is age order, then the first characters of the key's
/// kid, so two keys never share a name even within one microsecond) in
/// `dir`, creating the directory (mode 0700 on unix) if needed. The file is
/// created with mode 0600 on unix; an existing file is never overwritten.
pub fn generate_key_file(dir: &Path, alg: SigningAlgorithm) -> Result<PathBuf, KeyRingError> {
    write_generated_key(dir, alg, false)
}

/// Like [`generate_key_file`], but the key is a *next* key
/// (`….next.pem`): published in the JWK Set once the broker reloads, never
/// signing until [`promote_next_key_file`] drops the `.next`.
pub fn generate_next_key_file(dir: &Path, alg: SigningAlgorithm) -> Result<PathBuf, KeyRingError> {
    write_generated_key(dir, alg, true)
}

/// Characters of the kid kept in a generated file name.
const KID_IN_FILE_NAME: usize = 8;

fn write_generated_key(
    dir: &Path,
    alg: SigningAlgorithm,
    next: bool,
) -> Result<PathBuf, KeyRingError> {
    let (key, der) = SigningKey::generate(alg)?;
    let kid: String = key
        .kid()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(KID_IN_FILE_NAME)
        .collect();
    let name = format!(
        "{}-{}-{kid}{}",
        utc_stamp(SystemTime::now()),
        alg.file_tag(),
        if next {
            NEXT_KEY_SUFFIX.to_string()
        } else {
            format!(".{KEY_FILE_EXTENSION}")
        }
    );
    let path = dir.join(name);
    create_private_dir(dir)?;
    write_new_private_file(&path, pem_encode("PRIVATE KEY", &der).as_bytes())
        .map_err(|source| write_error(&path, source))?;
    Ok(path)
}

/// `AlreadyExists` (the path is named) or another write error.
fn write_error(path: &Path, source: io::Error) -> KeyRingError {
    if source.kind() == io::ErrorKind::AlreadyExists {
        KeyRingError::AlreadyExists {
            path: path.to_path_buf(),
        }
    } else {
        KeyRingError::Write {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Promotes a next key: renames `X.next.pem` to `X.pem` (it signs after the
/// next reload) and never overwrites: the new name is linked first, which
/// fails if it exists (exclusive, like `O_EXCL`), then the old one removed.
/// Returns the new path. A path that is not a next key file is refused.
pub fn promote_next_key_file(next: &Path) -> Result<PathBuf, KeyRingError> {
    let name = next
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(NEXT_KEY_SUFFIX))
        .filter(|stem| !stem.is_empty())
        .ok_or_else(|| KeyRingError::NotNextKey {
            path: next.to_path_buf(),
        })?;
    // Refuse anything that is not a readable key before touching the name.
    let bytes = read_limited(next)?;
    SigningKey::from_pem(&bytes).map_err(|source| KeyRingError::Parse {
        path: next.to_path_buf(),
        source,
    })?;
    let promoted = next.with_file_name(format!("{name}.{KEY_FILE_EXTENSION}"));
    fs::hard_link(next, &promoted).map_err(|e| write_error(&promoted, e))?;
    fs::remove_file(next).map_err(|source| KeyRingError::Write {
        path: next.to_path_buf(),
        source,
    })?;
    Ok(promoted)
}

fn create_private_dir(dir: &Path) -> Result<(), KeyRingError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| KeyRingError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// Creates `path` exclusively (never overwriting) with mode 0600 on unix,
/// writes `contents` and syncs it.
pub(crate) fn write_new_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_new_file(path, contents, 0o600)
}

/// Creates `path` exclusively (never overwriting) with the given unix mode,
/// writes `contents` and syncs it. On failure after creation the partial
/// file is removed.
pub(crate) fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = opts.open(path)?;
    let result = file.write_all(contents).and_then(|()| file.sync_all());
    if result.is_err() {
        drop(file);
        let _ = fs::remove_file(path);
    }
    result
}

/// PEM-encodes `der` with the given label and 64-column lines.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out =
        String::with_capacity(b64.len() + b64.len() / PEM_LINE_LEN + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(PEM_LINE_LEN));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Formats a time as `YYYYMMDDTHHMMSS.ffffffZ` (UTC, microseconds); times
/// before 1970 clamp to the epoch.
fn utc_stamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// Days since 1970-01-01 to a (year, month, day) proleptic Gregorian date
/// (H. Hinnant's `civil_from_days`, restricted to non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn algorithm_names_round_trip() {
        for alg in [
            SigningAlgorithm::ES256,
            SigningAlgorithm::EdDSA,
            SigningAlgorithm::RS256,
        ] {
            assert_eq!(alg.as_str().parse::<SigningAlgorithm>(), Ok(alg));
        }
        assert!("es256".parse::<SigningAlgorithm>().is_err());
        for (spelled, alg) in [
            ("es256", SigningAlgorithm::ES256),
            ("EDDSA", SigningAlgorithm::EdDSA),
            ("Rs256", SigningAlgorithm::RS256),
        ] {
            assert_eq!(SigningAlgorithm::parse_any_case(spelled), Ok(alg));
        }
        assert!(SigningAlgorithm::parse_any_case("hs256").is_err());
        assert!("HS256".parse::<SigningAlgorithm>().is_err());
        assert!("".parse::<SigningAlgorithm>().is_err());
    }

    #[test]
    fn utc_stamp_formats() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000.000000Z");
        // 2024-02-29T23:59:59Z (leap day)
        let t = UNIX_EPOCH + Duration::from_micros(1_709_251_199_000_042);
        assert_eq!(utc_stamp(t), "20240229T235959.000042Z");
        // 2000-03-01T00:00:00Z
        let t = UNIX_EPOCH + Duration::from_secs(951_868_800);
        assert_eq!(utc_stamp(t), "20000301T000000.000000Z");
    }

    /// Issue 17 item 3: keys generated back to back (same second, same
    /// algorithm, with and without `--next`) get distinct names; promoting a
    /// next key never overwrites an existing file.
    #[test]
    fn generated_names_are_unique_and_promotion_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let a = generate_key_file(dir.path(), SigningAlgorithm::ES256).unwrap();
        let b = generate_key_file(dir.path(), SigningAlgorithm::ES256).unwrap();
        let n = generate_next_key_file(dir.path(), SigningAlgorithm::ES256).unwrap();
        assert_ne!(a, b);
        let promoted = promote_next_key_file(&n).unwrap();
        assert!(!n.exists() && promoted.exists());
        assert!(![&a, &b].contains(&&promoted));
        assert!(matches!(
            promote_next_key_file(&a),
            Err(KeyRingError::NotNextKey { .. })
        ));
        // a next key whose promoted name is taken: refused, both files intact
        let taken = fs::read(&promoted).unwrap();
        let again = promoted.with_file_name(
            promoted
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .replace(".pem", NEXT_KEY_SUFFIX),
        );
        fs::copy(&a, &again).unwrap();
        match promote_next_key_file(&again) {
            Err(KeyRingError::AlreadyExists { path }) => assert_eq!(path, promoted),
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read(&promoted).unwrap(), taken);
        assert!(again.exists());
    }

    #[test]
    fn pem_encode_round_trips() -> Result<(), Box<dyn std::error::Error>> {
        let (_k, der) = SigningKey::generate(SigningAlgorithm::EdDSA)?;
        let pem = pem_encode("PRIVATE KEY", &der);
        assert!(pem.lines().all(|l| l.len() <= PEM_LINE_LEN));
        let back = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())?;
        assert_eq!(back.secret_pkcs8_der(), der.as_slice());
        Ok(())
    }

    #[test]
    fn garbage_is_rejected_without_panic() {
        assert_eq!(
            SigningKey::from_pem(b"hello").err(),
            Some(KeyParseError::NoPrivateKey)
        );
        let bad = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            SigningKey::from_pem(bad).err(),
            Some(KeyParseError::Unsupported)
        );
        assert!(SigningKey::from_pkcs8_der(&[]).is_err());
        assert!(SigningKey::from_pkcs8_der(&[0x30, 0x82, 0xff, 0xff]).is_err());
    }

    #[test]
    fn next_key_is_published_but_never_signs_until_renamed(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let (a, der_a) = SigningKey::generate(SigningAlgorithm::ES256)?;
        let (b, der_b) = SigningKey::generate(SigningAlgorithm::ES256)?;
        std::fs::write(d.join("1-es256.pem"), pem_encode("PRIVATE KEY", &der_a))?;
        // Newer by name, but a next key: published only.
        std::fs::write(
            d.join("2-es256.next.pem"),
            pem_encode("PRIVATE KEY", &der_b),
        )?;
        let ring = KeyRing::load_dir(d, SigningAlgorithm::ES256)?;
        assert_eq!(ring.signing_key().kid(), a.kid());
        assert!(ring.key_by_kid(b.kid()).is_some_and(|k| k.is_next()));
        assert_eq!(ring.jwks()["keys"].as_array().map(Vec::len), Some(2));
        // Promotion is a rename.
        std::fs::rename(d.join("2-es256.next.pem"), d.join("2-es256.pem"))?;
        let ring = KeyRing::load_dir(d, SigningAlgorithm::ES256)?;
        assert_eq!(ring.signing_key().kid(), b.kid());
        // Only next keys: nothing may sign, and the error says why.
        std::fs::remove_file(d.join("1-es256.pem"))?;
        std::fs::rename(d.join("2-es256.pem"), d.join("2-es256.next.pem"))?;
        let e = KeyRing::load_dir(d, SigningAlgorithm::ES256)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("next.pem")));
        Ok(())
    }

    #[test]
    fn debug_does_not_leak_key() -> Result<(), Box<dyn std::error::Error>> {
        let (k, _) = SigningKey::generate(SigningAlgorithm::ES256)?;
        let dbg = format!("{k:?}");
        assert!(dbg.contains(k.kid()));
        assert!(!dbg.contains("d\""));
        Ok(())
    }
}
