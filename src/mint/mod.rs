//! Minting of RFC 9068 JWT access tokens (`typ: at+jwt`).
//!
//! [`keyring`] loads and publishes the signing keys; [`TokenMinter`] turns an
//! [`AccessTokenClaims`] into a compact JWS with the ring's signing key.

/// The claims schema lives in [`crate::claims`] (shared with the verifier).
pub use crate::claims;
pub mod keyring;

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// A random (version 4) UUID for a `jti` or a task id, from aws-lc's DRBG
/// (`uuid::Uuid::new_v4` makes a `getrandom` system call per id). The DRBG
/// is asked for [`RANDOM_POOL_BYTES`] at a time, kept per thread, and each
/// id takes (and wipes) 16 of them: one DRBG call costs about as much as 60
/// ids (it mixes in fresh `RDRAND` output on every call), so a call per id
/// was about 1% of an exchange's CPU. Falls back to the OS if the DRBG
/// fails.
///
/// ```
/// let a = tessera::mint::random_uuid();
/// assert_eq!(a.get_version_num(), 4);
/// assert_ne!(a, tessera::mint::random_uuid());
/// ```
#[must_use]
pub fn random_uuid() -> uuid::Uuid {
    RANDOM_POOL
        .with(|p| p.borrow_mut().take16())
        .map_or_else(uuid::Uuid::new_v4, |b| {
            uuid::Builder::from_random_bytes(b).into_uuid()
        })
}

/// Bytes of DRBG output each thread fetches at once for [`random_uuid`].
pub const RANDOM_POOL_BYTES: usize = 1024;

struct RandomPool {
    buf: [u8; RANDOM_POOL_BYTES],
    /// Bytes of `buf` already handed out (and wiped).
    used: usize,
}

impl RandomPool {
    /// The next 16 unused bytes; `None` when the DRBG cannot refill.
    fn take16(&mut self) -> Option<[u8; 16]> {
        if self.used + 16 > self.buf.len() {
            aws_lc_rs::rand::fill(&mut self.buf).ok()?;
            self.used = 0;
        }
        let chunk = &mut self.buf[self.used..self.used + 16];
        let mut out = [0u8; 16];
        out.copy_from_slice(chunk);
        chunk.fill(0);
        self.used += 16;
        Some(out)
    }
}

thread_local! {
    static RANDOM_POOL: std::cell::RefCell<RandomPool> = const {
        std::cell::RefCell::new(RandomPool {
            buf: [0; RANDOM_POOL_BYTES],
            // Empty: the first id fills it.
            used: RANDOM_POOL_BYTES,
        })
    };
}

pub use claims::{AccessTokenClaims, Actor, Confirmation};
pub use keyring::{
    generate_key_file, KeyParseError, KeyRing, KeyRingError, SigningAlgorithm, SigningKey,
};

/// JOSE `typ` of access tokens (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Largest serialized claims set [`TokenMinter::mint`] will sign.
pub const MAX_CLAIMS_JSON_BYTES: usize = 16 * 1024;

/// Initial capacity of the claims serialization buffer; typical claims fit.
const CLAIMS_BUFFER_HINT: usize = 512;

/// Errors of signing and minting.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The crypto library failed to produce a signature.
    #[error("signing failed")]
    Sign,
    /// The claims could not be serialized.
    #[error("cannot serialize token claims: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The serialized claims exceed [`MAX_CLAIMS_JSON_BYTES`].
    #[error("token claims are {len} bytes, more than the {max} byte limit")]
    ClaimsTooLarge {
        /// Serialized size.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Mints compact-serialized JWT access tokens with one signing key.
///
/// The protected header `{"alg":..,"typ":"at+jwt","kid":..}` is encoded once
/// at construction.
#[derive(Debug, Clone)]
pub struct TokenMinter {
    key: Arc<SigningKey>,
    keyring: Option<Arc<KeyRing>>,
    header_b64: String,
}

impl TokenMinter {
    /// Builds a minter that signs with the ring's signing key.
    pub fn new(keyring: Arc<KeyRing>) -> TokenMinter {
        let mut minter = TokenMinter::from_key(Arc::clone(keyring.signing_key()));
        minter.keyring = Some(keyring);
        minter
    }

    /// Builds a minter for a single key.
    pub fn from_key(key: Arc<SigningKey>) -> TokenMinter {
        // `alg` is a fixed name and `kid` is base64url, so neither needs
        // JSON escaping; written by hand to keep the member order.
        let header_json = format!(
            r#"{{"alg":"{}","typ":"{ACCESS_TOKEN_TYP}","kid":"{}"}}"#,
            key.algorithm().as_str(),
            key.kid()
        );
        let header_b64 = URL_SAFE_NO_PAD.encode(header_json.as_bytes());
        TokenMinter {
            key,
            keyring: None,
            header_b64,
        }
    }

    /// The signing key.
    pub fn signing_key(&self) -> &Arc<SigningKey> {
        &self.key
    }

    /// The key ring this minter was built from, if any.
    pub fn keyring(&self) -> Option<&Arc<KeyRing>> {
        self.keyring.as_ref()
    }

    /// The kid placed in every token header.
    pub fn kid(&self) -> &str {
        self.key.kid()
    }

    /// The JWS algorithm of minted tokens.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.key.algorithm()
    }

    /// Serializes, signs and assembles `header.payload.signature`.
    pub fn mint(&self, claims: &AccessTokenClaims) -> Result<String, MintError> {
        let mut payload = Vec::with_capacity(CLAIMS_BUFFER_HINT);
        serde_json::to_writer(&mut payload, claims).map_err(MintError::Serialize)?;
        if payload.len() > MAX_CLAIMS_JSON_BYTES {
            return Err(MintError::ClaimsTooLarge {
                len: payload.len(),
                max: MAX_CLAIMS_JSON_BYTES,
            });
        }
        let capacity = self.header_b64.len()
            + 1
            + b64_nopad_len(payload.len())
            + 1
            + b64_nopad_len(self.key.signature_len());
        let mut token = String::with_capacity(capacity);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self.key.sign_raw(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }
}

/// Length of unpadded base64 for `n` input bytes.
const fn b64_nopad_len(n: usize) -> usize {
    (n / 3) * 4
        + match n % 3 {
            0 => 0,
            1 => 2,
            _ => 3,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const ALL: [SigningAlgorithm; 3] = [
        SigningAlgorithm::ES256,
        SigningAlgorithm::EdDSA,
        SigningAlgorithm::RS256,
    ];

    /// Ids drawn across many pool refills are distinct version-4 UUIDs, and
    /// every byte handed out is wiped from the pool.
    #[test]
    fn random_uuids_span_refills_and_leave_no_copy_behind() {
        let n = 10 * RANDOM_POOL_BYTES / 16;
        let ids: std::collections::HashSet<uuid::Uuid> = (0..n).map(|_| random_uuid()).collect();
        assert_eq!(ids.len(), n);
        assert!(ids
            .iter()
            .all(|u| u.get_version_num() == 4 && u.get_variant() == uuid::Variant::RFC4122));

        let mut pool = RandomPool {
            buf: [0; RANDOM_POOL_BYTES],
            used: RANDOM_POOL_BYTES,
        };
        let a = pool.take16().expect("drbg");
        let b = pool.take16().expect("drbg");
        assert_ne!(a, b);
        assert_ne!(a, [0; 16]);
        assert_eq!(pool.used, 32);
        assert!(pool.buf[..32].iter().all(|x| *x == 0));
        // The rest is random, not yet handed out.
        assert!(pool.buf[32..].iter().any(|x| *x != 0));
    }

    fn claims() -> AccessTokenClaims {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        AccessTokenClaims {
            iss: "https://tessera.test".into(),
            sub: "spiffe://example.org/agent/demo".into(),
            aud: "payments-api".into(),
            exp: now + 300,
            iat: now,
            nbf: now,
            jti: random_uuid().to_string(),
            client_id: "agent-demo".into(),
            scope: "payments:read".into(),
            txn: "txn-1".into(),
            act: Some(Actor {
                sub: "spiffe://example.org/agent/demo".into(),
                iss: None,
                act: Some(Box::new(Actor::new("spiffe://example.org/operator/alice"))),
            }),
            cnf: Some(Confirmation {
                x5t_s256: Some("bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2".into()),
                jkt: None,
            }),
            grant: Some("demo".into()),
            owner: None,
            authorization_details: None,
            policy: None,
            ancestors: Vec::new(),
            may_act: None,
        }
    }

    fn jwt_alg(alg: SigningAlgorithm) -> Algorithm {
        match alg {
            SigningAlgorithm::ES256 => Algorithm::ES256,
            SigningAlgorithm::EdDSA => Algorithm::EdDSA,
            SigningAlgorithm::RS256 => Algorithm::RS256,
        }
    }

    fn b64(v: &serde_json::Value, member: &str) -> Result<String, Box<dyn std::error::Error>> {
        Ok(v.get(member)
            .and_then(|m| m.as_str())
            .ok_or_else(|| format!("JWK lacks {member}"))?
            .to_owned())
    }

    /// RFC 7638 thumbprint computed independently of the implementation,
    /// from the published JWK via serde_json with sorted keys.
    fn thumbprint(jwk: &serde_json::Value) -> Result<String, Box<dyn std::error::Error>> {
        let kty = b64(jwk, "kty")?;
        let required: &[&str] = match kty.as_str() {
            "EC" => &["crv", "kty", "x", "y"],
            "OKP" => &["crv", "kty", "x"],
            "RSA" => &["e", "kty", "n"],
            other => return Err(format!("unexpected kty {other}").into()),
        };
        // serde_json::Map is a BTreeMap (no preserve_order), so keys serialize sorted.
        let mut map = serde_json::Map::new();
        for m in required {
            map.insert((*m).to_owned(), serde_json::Value::String(b64(jwk, m)?));
        }
        let canonical = serde_json::to_vec(&serde_json::Value::Object(map))?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical);
        Ok(URL_SAFE_NO_PAD.encode(digest.as_ref()))
    }

    fn verify(token: &str, jwk_value: &serde_json::Value, alg: SigningAlgorithm) -> TestResult {
        let header = decode_header(token)?;
        assert_eq!(header.typ.as_deref(), Some(ACCESS_TOKEN_TYP));
        assert_eq!(
            header.kid.as_deref(),
            jwk_value.get("kid").and_then(|k| k.as_str())
        );
        assert_eq!(header.alg, jwt_alg(alg));
        let jwk: Jwk = serde_json::from_value(jwk_value.clone())?;
        let key = DecodingKey::from_jwk(&jwk)?;
        let mut validation = Validation::new(jwt_alg(alg));
        validation.set_audience(&["payments-api"]);
        validation.set_issuer(&["https://tessera.test"]);
        let data = decode::<AccessTokenClaims>(token, &key, &validation)?;
        assert_eq!(data.claims, claims_without_time(&data.claims));
        Ok(())
    }

    fn claims_without_time(c: &AccessTokenClaims) -> AccessTokenClaims {
        let mut expected = claims();
        expected.exp = c.exp;
        expected.iat = c.iat;
        expected.nbf = c.nbf;
        expected.jti = c.jti.clone();
        expected
    }

    fn write(dir: &Path, name: &str, contents: &[u8]) -> TestResult {
        std::fs::write(dir.join(name), contents)?;
        Ok(())
    }

    fn pem_of(alg: SigningAlgorithm) -> Result<String, Box<dyn std::error::Error>> {
        let (_k, der) = SigningKey::generate(alg)?;
        Ok(keyring::pem_encode("PRIVATE KEY", &der))
    }

    #[test]
    fn each_algorithm_mints_verifiable_tokens() -> TestResult {
        for alg in ALL {
            let dir = tempfile::tempdir()?;
            let path = generate_key_file(dir.path(), alg)?;
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or("no file name")?;
            let ring = Arc::new(KeyRing::load_dir(dir.path(), alg)?);
            // `…Z-<alg>-<first 8 characters of the kid>.pem`
            let kid = ring.signing_key().kid();
            assert!(
                name.ends_with(&format!("Z-{}-{}.pem", alg.file_tag(), &kid[..8])),
                "{name}"
            );
            let minter = TokenMinter::new(Arc::clone(&ring));
            assert_eq!(minter.algorithm(), alg);
            let jwks = ring.jwks();
            let keys = jwks
                .get("keys")
                .and_then(|k| k.as_array())
                .ok_or("no keys")?;
            assert_eq!(keys.len(), 1);
            let jwk = keys.first().ok_or("empty")?;
            assert_eq!(jwk.get("use").and_then(|v| v.as_str()), Some("sig"));
            assert_eq!(jwk.get("alg").and_then(|v| v.as_str()), Some(alg.as_str()));
            assert_eq!(thumbprint(jwk)?, minter.kid());
            assert!(jwk.get("d").is_none(), "private member published");
            let token = minter.mint(&claims())?;
            assert_eq!(token.split('.').count(), 3);
            verify(&token, jwk, alg)?;

            // A tampered payload must not verify.
            let mut parts: Vec<&str> = token.split('.').collect();
            let mut other = claims();
            other.sub = "spiffe://example.org/evil".into();
            let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other)?);
            if let Some(p) = parts.get_mut(1) {
                *p = &forged_payload;
            }
            assert!(verify(&parts.join("."), jwk, alg).is_err());
        }
        Ok(())
    }

    #[test]
    fn signature_lengths_match() -> TestResult {
        for alg in ALL {
            let (key, _) = SigningKey::generate(alg)?;
            let sig = key.sign(b"message")?;
            assert_eq!(sig.len(), key.signature_len());
            let expected = match alg {
                SigningAlgorithm::RS256 => 256,
                _ => 64,
            };
            assert_eq!(sig.len(), expected);
        }
        Ok(())
    }

    #[test]
    fn es256_signature_verifies_as_fixed_rs() -> TestResult {
        use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
        let (key, _) = SigningKey::generate(SigningAlgorithm::ES256)?;
        let jwk = key.public_jwk();
        let mut point = vec![0x04];
        point.extend(URL_SAFE_NO_PAD.decode(b64(&jwk, "x")?)?);
        point.extend(URL_SAFE_NO_PAD.decode(b64(&jwk, "y")?)?);
        let sig = key.sign(b"hello")?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
            .verify(b"hello", &sig)
            .map_err(|_| "bad signature")?;
        Ok(())
    }

    #[test]
    fn ring_signs_with_last_key_of_algorithm_and_publishes_all() -> TestResult {
        let dir = tempfile::tempdir()?;
        write(
            dir.path(),
            "20240101T000000Z-es256.pem",
            pem_of(SigningAlgorithm::ES256)?.as_bytes(),
        )?;
        write(
            dir.path(),
            "20250101T000000Z-es256.pem",
            pem_of(SigningAlgorithm::ES256)?.as_bytes(),
        )?;
        write(
            dir.path(),
            "20260101T000000Z-rs256.pem",
            pem_of(SigningAlgorithm::RS256)?.as_bytes(),
        )?;
        write(
            dir.path(),
            "20230101T000000Z-eddsa.pem",
            pem_of(SigningAlgorithm::EdDSA)?.as_bytes(),
        )?;
        write(dir.path(), "README.txt", b"not a key")?;
        write(dir.path(), "backup.pem.bak", b"not a key either")?;

        let ring = KeyRing::load_dir(dir.path(), SigningAlgorithm::ES256)?;
        assert_eq!(ring.keys().len(), 4);
        let names: Vec<String> = ring
            .keys()
            .iter()
            .filter_map(|k| k.path()?.file_name()?.to_str().map(str::to_owned))
            .collect();
        assert_eq!(
            names,
            [
                "20230101T000000Z-eddsa.pem",
                "20240101T000000Z-es256.pem",
                "20250101T000000Z-es256.pem",
                "20260101T000000Z-rs256.pem"
            ]
        );
        let signing = ring.signing_key();
        assert_eq!(signing.algorithm(), SigningAlgorithm::ES256);
        assert_eq!(
            signing
                .path()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str()),
            Some("20250101T000000Z-es256.pem")
        );
        let jwks = ring.jwks();
        let published: Vec<&str> = jwks
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or("no keys")?
            .iter()
            .filter_map(|k| k.get("kid")?.as_str())
            .collect();
        let loaded: Vec<&str> = ring.keys().iter().map(|k| k.kid()).collect();
        assert_eq!(published, loaded);
        assert!(ring.key_by_kid(signing.kid()).is_some());

        let ed = KeyRing::load_dir(dir.path(), SigningAlgorithm::EdDSA)?;
        assert_eq!(ed.signing_key().algorithm(), SigningAlgorithm::EdDSA);
        let rs = KeyRing::load_dir(dir.path(), SigningAlgorithm::RS256)?;
        let token = TokenMinter::new(Arc::new(rs)).mint(&claims())?;
        let rs_ring = KeyRing::load_dir(dir.path(), SigningAlgorithm::RS256)?;
        verify(
            &token,
            &rs_ring.signing_key().public_jwk(),
            SigningAlgorithm::RS256,
        )?;
        Ok(())
    }

    #[test]
    fn unparsable_pem_is_an_error_naming_the_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        write(
            dir.path(),
            "a-good.pem",
            pem_of(SigningAlgorithm::ES256)?.as_bytes(),
        )?;
        write(
            dir.path(),
            "b-broken.pem",
            b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
        )?;
        let err = KeyRing::load_dir(dir.path(), SigningAlgorithm::ES256)
            .err()
            .ok_or("broken key accepted")?;
        assert!(matches!(err, KeyRingError::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains("b-broken.pem"), "{err}");

        std::fs::remove_file(dir.path().join("b-broken.pem"))?;
        write(
            dir.path(),
            "c-cert.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )?;
        let err = KeyRing::load_dir(dir.path(), SigningAlgorithm::ES256)
            .err()
            .ok_or("certificate accepted as key")?;
        assert!(err.to_string().contains("c-cert.pem"), "{err}");
        Ok(())
    }

    #[test]
    fn missing_empty_and_wrong_algorithm_dirs_are_errors() -> TestResult {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("nope");
        let err = KeyRing::load_dir(&missing, SigningAlgorithm::ES256)
            .err()
            .ok_or("missing dir accepted")?;
        assert!(err.to_string().contains("nope"), "{err}");

        let err = KeyRing::load_dir(dir.path(), SigningAlgorithm::ES256)
            .err()
            .ok_or("empty dir accepted")?;
        assert!(matches!(err, KeyRingError::Empty { .. }), "{err:?}");

        generate_key_file(dir.path(), SigningAlgorithm::EdDSA)?;
        let err = KeyRing::load_dir(dir.path(), SigningAlgorithm::RS256)
            .err()
            .ok_or("wrong algorithm accepted")?;
        let msg = err.to_string();
        assert!(msg.contains("RS256"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn generated_key_file_is_private_and_not_overwritten() -> TestResult {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir()?;
        let sub = dir.path().join("keys");
        let path = generate_key_file(&sub, SigningAlgorithm::ES256)?;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let before = std::fs::read(&path)?;
        let err = keyring::write_new_private_file(&path, b"x")
            .err()
            .ok_or("overwrote")?;
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path)?, before);
        Ok(())
    }

    #[test]
    fn oversized_claims_are_rejected() -> TestResult {
        let (key, _) = SigningKey::generate(SigningAlgorithm::ES256)?;
        let minter = TokenMinter::from_key(Arc::new(key));
        let mut c = claims();
        c.scope = "s".repeat(MAX_CLAIMS_JSON_BYTES);
        assert!(matches!(
            minter.mint(&c),
            Err(MintError::ClaimsTooLarge { .. })
        ));
        Ok(())
    }

    #[test]
    fn header_is_exact() -> TestResult {
        let (key, _) = SigningKey::generate(SigningAlgorithm::EdDSA)?;
        let minter = TokenMinter::from_key(Arc::new(key));
        let token = minter.mint(&claims())?;
        let header = token.split('.').next().ok_or("no header")?;
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(header)?)?;
        assert_eq!(
            json,
            format!(
                r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}"}}"#,
                minter.kid()
            )
        );
        let _: serde_json::Value = serde_json::from_str(&json)?;
        Ok(())
    }

    #[test]
    fn b64_len_matches_engine() {
        for n in 0..20 {
            assert_eq!(b64_nopad_len(n), URL_SAFE_NO_PAD.encode(vec![0u8; n]).len());
        }
    }

    /// Keys produced by the OpenSSL CLI (PKCS#8 v1, SEC1) load and verify.
    #[test]
    fn openssl_generated_keys_load() -> TestResult {
        let cases: &[(&str, &[&str], SigningAlgorithm)] = &[
            (
                "ed25519.pem",
                &["genpkey", "-algorithm", "ed25519"],
                SigningAlgorithm::EdDSA,
            ),
            (
                "p256.pem",
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ],
                SigningAlgorithm::ES256,
            ),
            (
                "rsa.pem",
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ],
                SigningAlgorithm::RS256,
            ),
            (
                "sec1.pem",
                &["ecparam", "-name", "prime256v1", "-genkey"],
                SigningAlgorithm::ES256,
            ),
        ];
        let dir = tempfile::tempdir()?;
        for (name, args, alg) in cases {
            let out = dir.path().join(name);
            let status = match std::process::Command::new("openssl")
                .args(*args)
                .arg("-out")
                .arg(&out)
                .stderr(std::process::Stdio::null())
                .status()
            {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    eprintln!("openssl CLI not found; skipping");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            assert!(status.success(), "openssl {args:?} failed");
            let key = SigningKey::from_pem(&std::fs::read(&out)?)?;
            assert_eq!(key.algorithm(), *alg, "{name}");
            let sub = tempfile::tempdir()?;
            std::fs::copy(&out, sub.path().join(name))?;
            let ring = Arc::new(KeyRing::load_dir(sub.path(), *alg)?);
            let token = TokenMinter::new(Arc::clone(&ring)).mint(&claims())?;
            verify(&token, &ring.signing_key().public_jwk(), *alg)?;
        }
        Ok(())
    }

    #[test]
    fn unsupported_curves_are_rejected() -> TestResult {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("p384.pem");
        let status = match std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
            ])
            .arg(&out)
            .stderr(std::process::Stdio::null())
            .status()
        {
            Ok(s) => s,
            Err(_) => return Ok(()),
        };
        assert!(status.success());
        let err = KeyRing::load_dir(dir.path(), SigningAlgorithm::ES256)
            .err()
            .ok_or("P-384 accepted")?;
        assert!(err.to_string().contains("p384.pem"));
        Ok(())
    }
}
