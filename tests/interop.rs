//! Issued tokens verify in an independent JWT library (`jsonwebtoken`),
//! using the JWKS fetched from the broker over HTTPS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tessera::mint::keyring::SigningAlgorithm;

async fn verify_with_jsonwebtoken(alg: SigningAlgorithm, jwt_alg: Algorithm) {
    let b = TestBroker::start_with(Options {
        broker_algorithm: alg,
        ..Default::default()
    })
    .await;
    let (s, v) = b
        .token(
            &b.agent_client(),
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", API),
                ("scope", "tickets:read"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let token = v["access_token"].as_str().unwrap();
    let jwks: JwkSet = b
        .anon()
        .get(b.url("/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = decode_header(token).unwrap();
    assert_eq!(header.alg, jwt_alg);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let kid = header.kid.unwrap();
    let jwk = jwks.find(&kid).expect("kid published");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut val = Validation::new(jwt_alg);
    val.set_issuer(&[BROKER_ISS]);
    val.set_audience(&[API]);
    val.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = decode::<Value>(token, &key, &val).unwrap();
    assert_eq!(data.claims["sub"], AGENT);
    // a wrong audience fails in the independent library too
    let mut wrong = Validation::new(jwt_alg);
    wrong.set_audience(&["https://other"]);
    assert!(decode::<Value>(token, &key, &wrong).is_err());
}

#[tokio::test]
async fn es256_tokens_verify_in_jsonwebtoken() {
    verify_with_jsonwebtoken(SigningAlgorithm::ES256, Algorithm::ES256).await;
}

#[tokio::test]
async fn eddsa_tokens_verify_in_jsonwebtoken() {
    verify_with_jsonwebtoken(SigningAlgorithm::EdDSA, Algorithm::EdDSA).await;
}

#[tokio::test]
async fn rs256_tokens_verify_in_jsonwebtoken() {
    verify_with_jsonwebtoken(SigningAlgorithm::RS256, Algorithm::RS256).await;
}
