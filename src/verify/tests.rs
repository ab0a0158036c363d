//! Verifier unit tests with tokens minted by the broker's own minter.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::clock::ManualClock;
use crate::jose::b64url_encode;
use crate::mint::claims::{AccessTokenClaims, Actor, Confirmation};
use crate::mint::keyring::{KeyRing, SigningAlgorithm, SigningKey};
use crate::mint::TokenMinter;

const ISS: &str = "https://tessera.test";
const AUD: &str = "https://api.example.com";
const NOW: u64 = 1_800_000_000;

struct Fx {
    key: Arc<SigningKey>,
    minter: TokenMinter,
    jwks: Vec<u8>,
    clock: Arc<ManualClock>,
}

fn fx(alg: SigningAlgorithm) -> Fx {
    let (key, _) = SigningKey::generate(alg).unwrap();
    let ring = Arc::new(KeyRing::from_keys(vec![key], alg).unwrap());
    Fx {
        key: ring.signing_key().clone(),
        minter: TokenMinter::new(ring.clone()),
        jwks: serde_json::to_vec(&ring.jwks()).unwrap(),
        clock: Arc::new(ManualClock::new(NOW)),
    }
}

fn claims() -> AccessTokenClaims {
    AccessTokenClaims {
        iss: ISS.into(),
        sub: "spiffe://example.org/agent/demo".into(),
        aud: AUD.into(),
        exp: NOW + 300,
        iat: NOW,
        nbf: NOW,
        jti: "jti-1".into(),
        client_id: "demo".into(),
        scope: "tickets:read tickets:write".into(),
        txn: "task-1".into(),
        act: Some(Actor {
            sub: "spiffe://example.org/agent/planner".into(),
            iss: None,
            act: Some(Box::new(Actor::new("spiffe://example.org/user/alice"))),
        }),
        cnf: None,
        grant: Some("tickets".into()),
        owner: Some("team-support".into()),
        authorization_details: None,
        policy: Some("p".into()),
        ancestors: vec!["parent-jti".into()],
        may_act: None,
    }
}

impl Fx {
    fn builder(&self) -> VerifierBuilder {
        Verifier::with_static_jwks(ISS, AUD, &self.jwks)
            .unwrap()
            .clock(self.clock.clone())
    }
    fn verifier(&self) -> Verifier {
        self.builder().build().unwrap()
    }
    fn mint(&self, c: &AccessTokenClaims) -> String {
        self.minter.mint(c).unwrap()
    }
    /// A token with an arbitrary header and payload, correctly signed.
    fn craft(&self, header: Value, payload: Value) -> String {
        let input = format!(
            "{}.{}",
            b64url_encode(&serde_json::to_vec(&header).unwrap()),
            b64url_encode(&serde_json::to_vec(&payload).unwrap())
        );
        let sig = self.key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64url_encode(&sig))
    }
    fn header(&self) -> Value {
        json!({"alg": self.key.algorithm().as_str(), "typ": "at+jwt", "kid": self.key.kid()})
    }
}

async fn err(v: &Verifier, token: &str) -> VerifyError {
    v.verify(token).await.expect_err("token must be refused")
}

#[tokio::test]
async fn verify_accepts_minted_token_with_typed_claims() {
    let f = fx(SigningAlgorithm::ES256);
    let t = f.verifier().verify(&f.mint(&claims())).await.unwrap();
    assert_eq!(t.subject(), "spiffe://example.org/agent/demo");
    assert_eq!(
        t.actors(),
        [
            "spiffe://example.org/agent/planner",
            "spiffe://example.org/user/alice"
        ]
    );
    assert!(t.scopes().contains("tickets:read") && t.scopes().contains("tickets:write"));
    assert_eq!(t.scopes().len(), 2);
    assert_eq!(t.task(), "task-1");
    assert_eq!(t.grant(), Some("tickets"));
    assert_eq!(t.owner(), Some("team-support"));
    assert_eq!(t.client_id(), Some("demo"));
    assert_eq!(t.jti(), "jti-1");
    assert_eq!(t.exp(), NOW + 300);
    assert_eq!(t.iat(), Some(NOW));
    assert_eq!(t.ancestors(), ["parent-jti"]);
    assert!(!t.is_bound());
    assert!(t.require_scopes(&["tickets:read"]).is_ok());
    assert!(t.require_scopes(&[]).is_ok());
    assert_eq!(
        t.require_scopes(&["tickets:read", "admin"]),
        Err(VerifyError::InsufficientScope)
    );
}

#[tokio::test]
async fn verify_accepts_eddsa_by_default() {
    let f = fx(SigningAlgorithm::EdDSA);
    assert!(f.verifier().verify(&f.mint(&claims())).await.is_ok());
}

#[tokio::test]
async fn verify_refuses_algorithms_outside_the_allowlist() {
    let f = fx(SigningAlgorithm::EdDSA);
    let v = f.builder().algorithms(&[Algorithm::ES256]).build().unwrap();
    assert_eq!(
        err(&v, &f.mint(&claims())).await,
        VerifyError::AlgorithmNotAllowed
    );
    // RS256 is not in the default allowlist.
    let f = fx(SigningAlgorithm::RS256);
    let e = err(&f.verifier(), &f.mint(&claims())).await;
    assert_eq!(e, VerifyError::AlgorithmNotAllowed);
    assert_eq!(e.reason(), "alg_not_allowed");
}

#[tokio::test]
async fn verify_refuses_malformed_tokens() {
    let f = fx(SigningAlgorithm::ES256);
    let v = f.verifier();
    for bad in ["", "abc", "a.b", "a.b.c", "a.b.c.d", "é.b.c"] {
        assert!(
            matches!(err(&v, bad).await, VerifyError::Malformed(_)),
            "{bad:?}"
        );
    }
    let none = format!(
        "{}.{}.",
        b64url_encode(br#"{"alg":"none","typ":"at+jwt"}"#),
        b64url_encode(br#"{"sub":"x"}"#)
    );
    assert!(matches!(err(&v, &none).await, VerifyError::Malformed(_)));
}

#[tokio::test]
async fn verify_requires_typ_at_jwt() {
    let f = fx(SigningAlgorithm::ES256);
    let v = f.verifier();
    let payload = serde_json::to_value(claims()).unwrap();
    for typ in [Some("JWT"), Some("jwt"), Some("at+jwt2"), None] {
        let mut h = f.header();
        match typ {
            Some(t) => h["typ"] = t.into(),
            None => {
                h.as_object_mut().unwrap().remove("typ");
            }
        }
        let e = err(&v, &f.craft(h, payload.clone())).await;
        assert_eq!(e, VerifyError::TypMismatch, "{typ:?}");
        assert_eq!(e.reason(), "typ_mismatch");
    }
    let mut h = f.header();
    h["typ"] = "application/AT+JWT".into();
    assert!(v.verify(&f.craft(h, payload)).await.is_ok());
}

#[tokio::test]
async fn verify_requires_a_known_kid() {
    let f = fx(SigningAlgorithm::ES256);
    let v = f.verifier();
    let payload = serde_json::to_value(claims()).unwrap();
    let mut h = f.header();
    h.as_object_mut().unwrap().remove("kid");
    assert_eq!(
        err(&v, &f.craft(h, payload.clone())).await,
        VerifyError::MissingKid
    );
    let mut h = f.header();
    h["kid"] = "someone-else".into();
    let e = err(&v, &f.craft(h, payload)).await;
    assert_eq!(e, VerifyError::Key(KeyLookupError::UnknownKid));
    assert_eq!(e.reason(), "unknown_kid");
    // A token signed by another key with the same kid fails the signature.
    let other = fx(SigningAlgorithm::ES256);
    let forged = other.craft(f.header(), serde_json::to_value(claims()).unwrap());
    assert!(matches!(err(&v, &forged).await, VerifyError::Signature(_)));
}

#[tokio::test]
async fn verify_refuses_a_tampered_token() {
    let f = fx(SigningAlgorithm::ES256);
    let token = f.mint(&claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut c = claims();
    c.scope = "tickets:read tickets:write admin".into();
    parts[1] = b64url_encode(&serde_json::to_vec(&c).unwrap());
    let e = err(&f.verifier(), &parts.join(".")).await;
    assert!(matches!(e, VerifyError::Signature(_)), "{e:?}");
    assert_eq!(e.reason(), "bad_signature");
}

#[tokio::test]
async fn verify_checks_iss_and_aud_exactly() {
    let f = fx(SigningAlgorithm::ES256);
    let v = f.verifier();
    for iss in [
        "https://tessera.test/",
        "https://TESSERA.test",
        "https://evil",
    ] {
        let mut c = claims();
        c.iss = iss.into();
        assert_eq!(
            err(&v, &f.mint(&c)).await,
            VerifyError::Claims(ClaimError::IssuerMismatch),
            "{iss}"
        );
    }
    let mut c = claims();
    c.aud = "https://api.example.com.evil".into();
    let e = err(&v, &f.mint(&c)).await;
    assert_eq!(e, VerifyError::Claims(ClaimError::AudienceMismatch));
    assert_eq!(e.reason(), "aud_mismatch");
    // An array audience containing ours is accepted.
    let mut p = serde_json::to_value(claims()).unwrap();
    p["aud"] = json!(["https://other", AUD]);
    assert!(v.verify(&f.craft(f.header(), p)).await.is_ok());
}

#[tokio::test]
async fn verify_checks_times_with_leeway() {
    let f = fx(SigningAlgorithm::ES256);
    let v = f.verifier();
    let mut c = claims();
    c.iat = NOW - 400;
    c.nbf = NOW - 400;
    c.exp = NOW - 10; // within the 30 s default leeway
    let t = f.mint(&c);
    assert!(v.verify(&t).await.is_ok());
    let strict = f.builder().leeway(Duration::ZERO).build().unwrap();
    assert_eq!(
        err(&strict, &t).await,
        VerifyError::Claims(ClaimError::Expired)
    );
    c.exp = NOW - 31;
    assert_eq!(
        err(&v, &f.mint(&c)).await,
        VerifyError::Claims(ClaimError::Expired)
    );
    let mut c = claims();
    c.nbf = NOW + 31;
    c.iat = NOW;
    let e = err(&v, &f.mint(&c)).await;
    assert_eq!(e, VerifyError::Claims(ClaimError::NotYetValid));
    assert_eq!(e.reason(), "not_yet_valid");
    let mut c = claims();
    c.iat = NOW + 31;
    c.nbf = NOW;
    assert_eq!(
        err(&v, &f.mint(&c)).await,
        VerifyError::Claims(ClaimError::IssuedInFuture)
    );
    // The clock moves: the same token expires.
    let t = f.mint(&claims());
    assert!(v.verify(&t).await.is_ok());
    f.clock.advance(330);
    assert_eq!(err(&v, &t).await, VerifyError::Claims(ClaimError::Expired));
}

#[tokio::test]
async fn verify_requires_tessera_claims() {
    let f = fx(SigningAlgorithm::ES256);
    let v = f.verifier();
    let base = serde_json::to_value(claims()).unwrap();
    let mut p = base.clone();
    p.as_object_mut().unwrap().remove("jti");
    assert_eq!(
        err(&v, &f.craft(f.header(), p)).await,
        VerifyError::Claims(ClaimError::Missing("jti"))
    );
    let mut p = base.clone();
    p.as_object_mut().unwrap().remove("txn");
    assert_eq!(
        err(&v, &f.craft(f.header(), p)).await,
        VerifyError::MalformedClaim("txn")
    );
    for (name, bad) in [
        ("act", json!("planner")),
        ("act", json!({"iss": "x"})),
        ("cnf", json!([1])),
        ("cnf", json!({"x5t#S256": ""})),
        ("scope", json!(["a"])),
        ("grant", json!(7)),
        ("txn", json!("")),
        ("ancestors", json!("p")),
    ] {
        let mut p = base.clone();
        p[name] = bad.clone();
        let e = err(&v, &f.craft(f.header(), p)).await;
        assert!(matches!(e, VerifyError::MalformedClaim(_)), "{name}={bad}");
        assert_eq!(e.reason(), "claims_malformed");
    }
    // An act chain deeper than the limit.
    let mut act = json!({"sub": "a0"});
    for i in 1..=MAX_ACTOR_DEPTH {
        act = json!({"sub": format!("a{i}"), "act": act});
    }
    let mut p = base;
    p["act"] = act;
    assert_eq!(
        err(&v, &f.craft(f.header(), p)).await,
        VerifyError::MalformedClaim("act")
    );
}

#[tokio::test]
async fn verify_certificate_binding() {
    let f = fx(SigningAlgorithm::ES256);
    let v = f.verifier();
    let cert = b"a DER certificate".to_vec();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cert);
    let mut c = claims();
    c.cnf = Some(Confirmation {
        x5t_s256: Some(b64url_encode(digest.as_ref())),
        jkt: None,
    });
    let t = v.verify(&f.mint(&c)).await.unwrap();
    assert!(t.is_bound());
    assert!(t.x5t_s256().is_some());
    assert_eq!(t.check_certificate(&cert), Ok(()));
    assert_eq!(
        t.check_certificate(b"another certificate"),
        Err(VerifyError::CertificateMismatch)
    );
    assert_eq!(
        t.check_certificate(b""),
        Err(VerifyError::CertificateMismatch)
    );
    assert_eq!(
        VerifyError::CertificateMismatch.reason(),
        "certificate_mismatch"
    );
    // Unbound tokens pass with any certificate or none.
    let unbound = v.verify(&f.mint(&claims())).await.unwrap();
    assert_eq!(unbound.check_certificate(&cert), Ok(()));
    assert_eq!(unbound.check_certificate(b""), Ok(()));
    // A DPoP-bound token reports jkt.
    let mut c = claims();
    c.cnf = Some(Confirmation {
        x5t_s256: None,
        jkt: Some("thumb".into()),
    });
    let t = v.verify(&f.mint(&c)).await.unwrap();
    assert_eq!(t.jkt(), Some("thumb"));
    assert!(t.is_bound());
}

#[test]
fn verify_builder_refuses_incomplete_configuration() {
    let f = fx(SigningAlgorithm::ES256);
    assert_eq!(
        Verifier::with_static_jwks("", AUD, &f.jwks).err(),
        Some(BuildError::EmptyIssuer)
    );
    assert_eq!(
        Verifier::with_static_jwks(ISS, "", &f.jwks).err(),
        Some(BuildError::EmptyAudience)
    );
    assert_eq!(
        Verifier::with_static_jwks(ISS, AUD, br#"{"keys":[]}"#).err(),
        Some(BuildError::NoKeys)
    );
    assert!(matches!(
        Verifier::with_static_jwks(ISS, AUD, b"not json").err(),
        Some(BuildError::Jwks(_))
    ));
    assert_eq!(
        f.builder().algorithms(&[]).build().err(),
        Some(BuildError::NoAlgorithms)
    );
    assert_eq!(
        f.builder()
            .leeway(MAX_LEEWAY + Duration::from_secs(1))
            .build()
            .err(),
        Some(BuildError::LeewayTooLarge)
    );
    assert!(f.builder().leeway(MAX_LEEWAY).build().is_ok());
}

#[test]
fn verify_error_reasons_are_stable() {
    use crate::jose::jws::JwsError;
    let all = [
        VerifyError::Malformed(JwsError::SegmentCount),
        VerifyError::AlgorithmNotAllowed,
        VerifyError::TypMismatch,
        VerifyError::MissingKid,
        VerifyError::Key(KeyLookupError::Unavailable),
        VerifyError::Signature(JwsError::AlgorithmMismatch),
        VerifyError::Claims(ClaimError::Expired),
        VerifyError::MalformedClaim("txn"),
        VerifyError::InsufficientScope,
        VerifyError::CertificateMismatch,
        VerifyError::Revoked,
    ];
    for e in all {
        assert!(!e.reason().is_empty());
        assert_eq!(
            e.is_insufficient_scope(),
            e == VerifyError::InsufficientScope
        );
    }
    assert!(VerifyError::Key(KeyLookupError::Unavailable).is_unavailable());
    assert!(!VerifyError::Revoked.is_unavailable());
}
