//! Fixtures for this module's documentation examples (not part of the API).

use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::mint::claims::{AccessTokenClaims, Actor};
use crate::mint::keyring::{KeyRing, SigningAlgorithm, SigningKey};
use crate::mint::TokenMinter;

/// A JWK Set document and a token signed by its key: issuer
/// `https://tessera.test`, audience `https://api.example.com`.
///
/// # Errors
/// Key generation or minting failures (as strings).
pub fn fixture() -> Result<(Vec<u8>, String), Box<dyn std::error::Error>> {
    let (key, _) = SigningKey::generate(SigningAlgorithm::ES256)?;
    let ring = Arc::new(KeyRing::from_keys(vec![key], SigningAlgorithm::ES256)?);
    let now = SystemClock.now();
    let claims = AccessTokenClaims {
        iss: "https://tessera.test".into(),
        sub: "spiffe://example.org/agent/demo".into(),
        aud: "https://api.example.com".into(),
        exp: now + 300,
        iat: now,
        nbf: now,
        jti: "jti-1".into(),
        client_id: "demo-client".into(),
        scope: "tickets:read tickets:write".into(),
        txn: "task-1".into(),
        act: Some(Actor::new("spiffe://example.org/agent/planner")),
        cnf: None,
        grant: Some("tickets".into()),
        owner: Some("team-support".into()),
        authorization_details: None,
        policy: None,
        ancestors: Vec::new(),
        may_act: None,
    };
    let token = TokenMinter::new(ring.clone()).mint(&claims)?;
    Ok((serde_json::to_vec(&ring.jwks())?, token))
}
