//! Test-only helpers: key generation, JWK export and token signing.

use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, RsaPublicKeyComponents,
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use serde_json::{json, Map, Value};

use super::alg::Algorithm;
use super::b64url_encode as b64;
use super::jwk::VerifyingKey;

/// A private key usable for signing test tokens.
pub(crate) enum TestKey {
    Ec256(EcdsaKeyPair),
    Ec384(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(&'static RsaKeyPair),
}

static RSA_A: OnceLock<RsaKeyPair> = OnceLock::new();
static RSA_B: OnceLock<RsaKeyPair> = OnceLock::new();

fn rsa_static(cell: &'static OnceLock<RsaKeyPair>) -> &'static RsaKeyPair {
    cell.get_or_init(|| RsaKeyPair::generate(KeySize::Rsa2048).unwrap())
}

impl TestKey {
    pub(crate) fn es256() -> Self {
        TestKey::Ec256(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }
    pub(crate) fn es384() -> Self {
        TestKey::Ec384(EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap())
    }
    pub(crate) fn ed25519() -> Self {
        TestKey::Ed(Ed25519KeyPair::generate().unwrap())
    }
    /// A shared 2048-bit RSA key (generated once per test binary).
    pub(crate) fn rsa() -> Self {
        TestKey::Rsa(rsa_static(&RSA_A))
    }
    /// A second, different shared RSA key.
    pub(crate) fn rsa_b() -> Self {
        TestKey::Rsa(rsa_static(&RSA_B))
    }

    /// The natural algorithm of the key (RS256 for RSA).
    pub(crate) fn default_alg(&self) -> Algorithm {
        match self {
            TestKey::Ec256(_) => Algorithm::ES256,
            TestKey::Ec384(_) => Algorithm::ES384,
            TestKey::Ed(_) => Algorithm::EdDSA,
            TestKey::Rsa(_) => Algorithm::RS256,
        }
    }

    /// Public JWK members (no alg, no kid).
    pub(crate) fn public_jwk(&self) -> Map<String, Value> {
        let v = match self {
            TestKey::Ec256(k) | TestKey::Ec384(k) => {
                let pt = k.public_key().as_ref();
                let n = (pt.len() - 1) / 2;
                let crv = if n == 32 { "P-256" } else { "P-384" };
                json!({"kty":"EC","crv":crv,"x":b64(&pt[1..1 + n]),"y":b64(&pt[1 + n..])})
            }
            TestKey::Ed(k) => json!({"kty":"OKP","crv":"Ed25519","x":b64(k.public_key().as_ref())}),
            TestKey::Rsa(k) => {
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"kty":"RSA","n":b64(&c.n),"e":b64(&c.e)})
            }
        };
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    /// Public JWK with optional `alg` and `kid`.
    pub(crate) fn jwk(&self, alg: Option<&str>, kid: Option<&str>) -> Map<String, Value> {
        let mut m = self.public_jwk();
        if let Some(a) = alg {
            m.insert("alg".into(), a.into());
        }
        if let Some(k) = kid {
            m.insert("kid".into(), k.into());
        }
        m
    }

    /// A verifying key for this key with the given algorithm and kid.
    pub(crate) fn verifying_key(&self, alg: Algorithm, kid: Option<&str>) -> VerifyingKey {
        VerifyingKey::from_jwk(&self.jwk(Some(alg.as_str()), kid)).unwrap()
    }

    /// Signs `msg` with `alg` (which must suit the key type).
    pub(crate) fn sign(&self, alg: Algorithm, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            TestKey::Ec256(k) | TestKey::Ec384(k) => k.sign(&rng, msg).unwrap().as_ref().to_vec(),
            TestKey::Ed(k) => k.sign(msg).as_ref().to_vec(),
            TestKey::Rsa(k) => {
                use aws_lc_rs::signature as s;
                let enc: &'static dyn s::RsaEncoding = match alg {
                    Algorithm::RS256 => &s::RSA_PKCS1_SHA256,
                    Algorithm::RS384 => &s::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &s::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &s::RSA_PSS_SHA256,
                    Algorithm::PS384 => &s::RSA_PSS_SHA384,
                    Algorithm::PS512 => &s::RSA_PSS_SHA512,
                    _ => panic!("not an RSA alg"),
                };
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(enc, &rng, msg, &mut sig).unwrap();
                sig
            }
        }
    }
}

/// Builds `b64(header).b64(payload).b64(sig)` from raw JSON texts, with the
/// signature produced by `signer` over the signing input.
pub(crate) fn token_raw(header: &str, payload: &str, signer: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let si = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = signer(si.as_bytes());
    format!("{si}.{}", b64(&sig))
}

/// Signs a token with `key` under `alg`, using the given header and claims.
pub(crate) fn token(header: &Value, claims: &Value, key: &TestKey, alg: Algorithm) -> String {
    token_raw(&header.to_string(), &claims.to_string(), |si| {
        key.sign(alg, si)
    })
}

/// A header `{"alg":alg,"kid":kid}`.
pub(crate) fn header(alg: Algorithm, kid: Option<&str>) -> Value {
    let mut h = json!({ "alg": alg.as_str() });
    if let Some(k) = kid {
        h["kid"] = k.into();
    }
    h
}

/// Standard valid claims for issuer `https://issuer.example` and audience
/// `tessera`, valid around `now`.
pub(crate) fn claims(now: u64) -> Value {
    json!({
        "iss": "https://issuer.example",
        "sub": "workload-1",
        "aud": "tessera",
        "exp": now + 300,
        "iat": now - 10,
        "nbf": now - 10,
        "jti": "id-1",
    })
}
