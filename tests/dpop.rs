//! DPoP (RFC 9449) for callers without a client certificate: proof
//! validation, `cnf.jkt`, `token_type: DPoP`, the replay cache, binding
//! required by policy, and re-exchange of a DPoP-bound token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use tessera::jose::jwk::VerifyingKey;
use tessera::mint::keyring::{SigningAlgorithm, SigningKey};
use tessera::testkit::{now, TestIssuer};

const HTU: &str = "https://tessera.test/token";

fn proof_with(key: &SigningKey, header: Value, claims: Value) -> String {
    TestIssuer::sign_raw_with(key, &header.to_string(), &claims.to_string())
}

fn proof(key: &SigningKey) -> String {
    proof_with(
        key,
        json!({"typ": "dpop+jwt", "alg": key.algorithm().as_str(), "jwk": key.public_jwk()}),
        json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": "POST", "htu": HTU, "iat": now()}),
    )
}

fn jkt(key: &SigningKey) -> String {
    VerifyingKey::from_jwk(key.public_jwk().as_object().unwrap())
        .unwrap()
        .thumbprint()
}

async fn post(
    b: &TestBroker,
    client: &reqwest::Client,
    form: &[(&str, &str)],
    dpop: Option<&str>,
) -> (u16, Value) {
    let mut rb = client
        .post(b.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(form));
    if let Some(p) = dpop {
        rb = rb.header("dpop", p);
    }
    let r = rb.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn dpop_bound_token_for_a_caller_without_certificate() {
    let b = TestBroker::start().await;
    let key = SigningKey::generate(SigningAlgorithm::ES256).unwrap().0;
    let st = b.ci_token();
    let p = proof(&key);
    let (s, v) = post(&b, &b.anon(), &TestBroker::oidc_form(&st), Some(&p)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["token_type"], "DPoP");
    let (_, c) = decode(v["access_token"].as_str().unwrap());
    assert_eq!(c["cnf"], json!({"jkt": jkt(&key)}));
    // introspection reports it as a DPoP token
    assert_eq!(
        b.introspect(v["access_token"].as_str().unwrap()).await["token_type"],
        "DPoP"
    );
    // the same proof again: replay
    let (s, v) = post(&b, &b.anon(), &TestBroker::oidc_form(&st), Some(&p)).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_dpop_proof")));
    // EdDSA proofs work too
    let ed = SigningKey::generate(SigningAlgorithm::EdDSA).unwrap().0;
    let (s, v) = post(
        &b,
        &b.anon(),
        &TestBroker::oidc_form(&st),
        Some(&proof(&ed)),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // metadata advertises the algorithms
    let m: Value = b
        .anon()
        .get(b.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(m["dpop_signing_alg_values_supported"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "ES256"));
}

#[tokio::test]
async fn invalid_proofs_are_refused() {
    let b = TestBroker::start().await;
    let key = SigningKey::generate(SigningAlgorithm::ES256).unwrap().0;
    let other = SigningKey::generate(SigningAlgorithm::ES256).unwrap().0;
    let st = b.ci_token();
    let h = || json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk()});
    let c = |htm: &str, htu: &str, iat: u64| json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": htm, "htu": htu, "iat": iat});
    let n = now();
    let mut bad_jwk = key.public_jwk();
    bad_jwk["d"] = "AAAA".into();
    let cases = vec![
        ("wrong method", proof_with(&key, h(), c("GET", HTU, n))),
        (
            "wrong URI",
            proof_with(&key, h(), c("POST", "https://evil.example/token", n)),
        ),
        ("too old", proof_with(&key, h(), c("POST", HTU, n - 300))),
        (
            "in the future",
            proof_with(&key, h(), c("POST", HTU, n + 300)),
        ),
        (
            "wrong typ",
            proof_with(
                &key,
                json!({"typ": "JWT", "alg": "ES256", "jwk": key.public_jwk()}),
                c("POST", HTU, n),
            ),
        ),
        (
            "no jwk",
            proof_with(
                &key,
                json!({"typ": "dpop+jwt", "alg": "ES256"}),
                c("POST", HTU, n),
            ),
        ),
        (
            "private key in jwk",
            proof_with(
                &key,
                json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": bad_jwk}),
                c("POST", HTU, n),
            ),
        ),
        (
            "signed by another key",
            proof_with(&other, h(), c("POST", HTU, n)),
        ),
        (
            "alg none",
            format!(
                "{}.e30.",
                base64url(
                    &json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.public_jwk()}).to_string()
                )
            ),
        ),
        (
            "no jti",
            proof_with(&key, h(), json!({"htm": "POST", "htu": HTU, "iat": n})),
        ),
        ("garbage", "not-a-jwt".to_string()),
    ];
    for (what, p) in cases {
        let (s, v) = post(&b, &b.anon(), &TestBroker::oidc_form(&st), Some(&p)).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_dpop_proof")),
            "{what}"
        );
    }
    // a proof together with a client certificate: two binding mechanisms
    let (s, _) = post(
        &b,
        &b.agent_client(),
        &TestBroker::oidc_form(&st),
        Some(&proof(&key)),
    )
    .await;
    assert_eq!(s, 400);
    // the query string of htu is ignored (RFC 9449 §4.3)
    let p = proof_with(&key, h(), c("POST", &format!("{HTU}?x=1"), n));
    assert_eq!(
        post(&b, &b.anon(), &TestBroker::oidc_form(&st), Some(&p))
            .await
            .0,
        200
    );
}

fn base64url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn require_binding_accepts_dpop() {
    let policies = DEFAULT_POLICIES.replace(
        "max_ttl = \"5m\"",
        "max_ttl = \"5m\"\nrequire_binding = true",
    );
    let b = TestBroker::start_with(Options {
        policies,
        ..Default::default()
    })
    .await;
    let st = b.ci_token();
    let (s, _) = post(&b, &b.anon(), &TestBroker::oidc_form(&st), None).await;
    assert_eq!(s, 401, "unbound refused");
    let key = SigningKey::generate(SigningAlgorithm::ES256).unwrap().0;
    let (s, v) = post(
        &b,
        &b.anon(),
        &TestBroker::oidc_form(&st),
        Some(&proof(&key)),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn dpop_bound_parent_re_exchanges_only_with_its_key() {
    let b = TestBroker::start().await;
    let key = SigningKey::generate(SigningAlgorithm::ES256).unwrap().0;
    let st = b.ci_token();
    let mut f = TestBroker::oidc_form(&st);
    f[4] = ("scope", "deploy:read deploy:write");
    let (_, v) = post(&b, &b.anon(), &f, Some(&proof(&key))).await;
    let parent = v["access_token"].as_str().unwrap().to_string();
    let re = [
        ("grant_type", TE),
        ("subject_token_type", ACCESS),
        ("subject_token", parent.as_str()),
        ("audience", "https://deploy.example.com"),
        ("scope", "deploy:read"),
    ];
    // no proof, or a proof by another key: refused
    assert_eq!(post(&b, &b.anon(), &re, None).await.0, 400);
    let other = SigningKey::generate(SigningAlgorithm::ES256).unwrap().0;
    assert_eq!(post(&b, &b.anon(), &re, Some(&proof(&other))).await.0, 400);
    // a fresh proof by the same key: a narrower token, still bound to that key
    let (s, v) = post(&b, &b.anon(), &re, Some(&proof(&key))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["token_type"], "DPoP");
    assert_eq!(
        decode(v["access_token"].as_str().unwrap()).1["cnf"],
        json!({"jkt": jkt(&key)})
    );
}

#[tokio::test]
async fn use_dpop_nonce_when_nonces_are_required() {
    let b = TestBroker::start_with(Options {
        extra: "[dpop]\nnonce = true\n".into(),
        ..Default::default()
    })
    .await;
    let key = SigningKey::generate(SigningAlgorithm::ES256).unwrap().0;
    let st = b.ci_token();
    // without a nonce: use_dpop_nonce, with the nonce to use
    let r = b
        .anon()
        .post(b.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("dpop", proof(&key))
        .body(encode_form(&TestBroker::oidc_form(&st)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let nonce = r.headers()["dpop-nonce"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "use_dpop_nonce");
    let with = |n: &str| {
        proof_with(
            &key,
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk()}),
            json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": "POST", "htu": HTU, "iat": now(), "nonce": n}),
        )
    };
    // a made-up nonce is no better
    let (s, v) = post(
        &b,
        &b.anon(),
        &TestBroker::oidc_form(&st),
        Some(&with("made-up")),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("use_dpop_nonce")));
    // with the server's nonce it works
    let (s, v) = post(
        &b,
        &b.anon(),
        &TestBroker::oidc_form(&st),
        Some(&with(&nonce)),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["token_type"], "DPoP");
}

/// RFC 9449 §7 at the resource server: `tessera::verify` checks the scheme,
/// the proof's key, method, URL, `ath`, time window and single use.
#[tokio::test]
async fn resource_server_checks_dpop_proofs() {
    use tessera::verify::{Presented, Scheme, Verifier};
    const API_URL: &str = "https://api.test";
    let b = TestBroker::start().await;
    let key = SigningKey::generate(SigningAlgorithm::ES256).unwrap().0;
    let (s, v) = post(
        &b,
        &b.anon(),
        &TestBroker::oidc_form(&b.ci_token()),
        Some(&proof(&key)),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_string();
    let jwks = b
        .anon()
        .get(b.url("/jwks.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let verifier = Verifier::with_static_jwks(BROKER_ISS, "https://deploy.example.com", &jwks)
        .unwrap()
        .resource_url(API_URL)
        .build()
        .unwrap();
    let ath = tessera::dpop::access_token_hash(&token);
    let rs_proof = |k: &SigningKey, claims: Value| {
        proof_with(
            k,
            json!({"typ": "dpop+jwt", "alg": k.algorithm().as_str(), "jwk": k.public_jwk()}),
            claims,
        )
    };
    let good = |k: &SigningKey| {
        rs_proof(
            k,
            json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": "GET",
                   "htu": format!("{API_URL}/tickets"), "iat": now(), "ath": ath}),
        )
    };
    let check =
        |scheme: Scheme, proof: Option<String>, method: &'static str, path: &'static str| {
            let verifier = &verifier;
            let token = token.clone();
            async move {
                let mut p = Presented::new(scheme, &token, method, path);
                p.dpop_proof = proof.as_deref();
                verifier
                    .verify_request(&p)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.reason())
            }
        };

    // A fresh proof by the token's key for this request: accepted, once.
    let p = good(&key);
    assert_eq!(
        check(Scheme::DPoP, Some(p.clone()), "GET", "/tickets").await,
        Ok(())
    );
    assert_eq!(
        check(Scheme::DPoP, Some(p), "GET", "/tickets").await,
        Err("dpop_replayed")
    );
    // The query is not part of htu.
    assert_eq!(
        check(Scheme::DPoP, Some(good(&key)), "GET", "/tickets?page=2").await,
        Ok(())
    );
    // A DPoP-bound token as a bearer token, or without a proof.
    assert_eq!(
        check(Scheme::Bearer, None, "GET", "/tickets").await,
        Err("scheme_mismatch")
    );
    assert_eq!(
        check(Scheme::DPoP, None, "GET", "/tickets").await,
        Err("dpop_missing")
    );
    // Another key, method, URL, token hash, or an old proof.
    let other = SigningKey::generate(SigningAlgorithm::ES256).unwrap().0;
    assert_eq!(
        check(Scheme::DPoP, Some(good(&other)), "GET", "/tickets").await,
        Err("dpop_key_mismatch")
    );
    assert_eq!(
        check(Scheme::DPoP, Some(good(&key)), "POST", "/tickets").await,
        Err("dpop_htm")
    );
    assert_eq!(
        check(Scheme::DPoP, Some(good(&key)), "GET", "/admin").await,
        Err("dpop_htu")
    );
    let c = |extra: Value| {
        let mut base = json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": "GET",
                              "htu": format!("{API_URL}/tickets"), "iat": now()});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        rs_proof(&key, base)
    };
    assert_eq!(
        check(Scheme::DPoP, Some(c(json!({}))), "GET", "/tickets").await,
        Err("dpop_ath"),
        "ath is required at a resource server"
    );
    assert_eq!(
        check(
            Scheme::DPoP,
            Some(c(
                json!({"ath": tessera::dpop::access_token_hash("another token")})
            )),
            "GET",
            "/tickets"
        )
        .await,
        Err("dpop_ath")
    );
    assert_eq!(
        check(
            Scheme::DPoP,
            Some(c(json!({"ath": ath, "iat": now() - 600}))),
            "GET",
            "/tickets"
        )
        .await,
        Err("dpop_iat_window")
    );
    // The broker's token-endpoint proof is not a resource-server proof.
    assert_eq!(
        check(Scheme::DPoP, Some(proof(&key)), "GET", "/tickets").await,
        Err("dpop_htm")
    );

    // Without a configured resource URL, DPoP tokens are refused.
    let no_url = Verifier::with_static_jwks(BROKER_ISS, "https://deploy.example.com", &jwks)
        .unwrap()
        .build()
        .unwrap();
    let p = good(&key);
    let r = no_url
        .verify_request(&Presented::new(Scheme::DPoP, &token, "GET", "/tickets").dpop(&p))
        .await;
    assert_eq!(r.err().map(|e| e.reason()), Some("dpop_resource_url_unset"));

    // An unbound (certificate-less, proof-less) token with the DPoP scheme.
    let (s, v) = post(&b, &b.anon(), &TestBroker::oidc_form(&b.ci_token()), None).await;
    assert_eq!(s, 200, "{v}");
    let bearer = v["access_token"].as_str().unwrap();
    let r = verifier
        .verify_request(&Presented::new(Scheme::DPoP, bearer, "GET", "/tickets").dpop(&good(&key)))
        .await;
    assert_eq!(r.err().map(|e| e.reason()), Some("scheme_mismatch"));
    assert!(verifier
        .verify_request(&Presented::new(Scheme::Bearer, bearer, "GET", "/tickets"))
        .await
        .is_ok());
}

/// A resource that requires DPoP (RFC 9728 `dpop_bound_access_tokens_required`)
/// refuses a real unbound broker token as `dpop_required`, answers with a
/// DPoP challenge naming its metadata, and accepts the DPoP-bound one with
/// a proof.
#[tokio::test]
async fn dpop_required_resource_refuses_unbound_tokens() {
    use axum::response::IntoResponse;
    use tessera::verify::{BearerRejection, Presented, ProtectedResource, Scheme, Verifier};
    const API_URL: &str = "https://api.test";
    let b = TestBroker::start().await;
    let key = SigningKey::generate(SigningAlgorithm::ES256).unwrap().0;
    let ci = b.ci_token();
    let form = TestBroker::oidc_form(&ci);
    let (s, v) = post(&b, &b.anon(), &form, Some(&proof(&key))).await;
    assert_eq!(s, 200, "{v}");
    let bound = v["access_token"].as_str().unwrap().to_string();
    let ci = b.ci_token();
    let (s, v) = b.token(&b.anon(), &TestBroker::oidc_form(&ci)).await;
    assert_eq!(s, 200, "{v}");
    let unbound = v["access_token"].as_str().unwrap().to_string();
    let jwks = b
        .anon()
        .get(b.url("/jwks.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let verifier = Verifier::with_static_jwks(BROKER_ISS, "https://deploy.example.com", &jwks)
        .unwrap()
        .resource_url(API_URL)
        .protected_resource(ProtectedResource::new(API_URL).unwrap().require_dpop(true))
        .build()
        .unwrap();

    // The unbound token, as Bearer: refused, with a DPoP challenge.
    let e = verifier
        .verify_request(&Presented::new(Scheme::Bearer, &unbound, "GET", "/x"))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "dpop_required");
    let r = BearerRejection::from(e)
        .for_resource(verifier.protected_resource().cloned())
        .into_response();
    assert_eq!(r.status(), 401);
    let c = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(c.starts_with(r#"DPoP error="invalid_token""#), "{c}");
    assert!(
        c.ends_with(r#"resource_metadata="https://api.test/.well-known/oauth-protected-resource""#),
        "{c}"
    );
    // ... and as DPoP: not DPoP-bound.
    let e = verifier
        .verify_request(&Presented::new(Scheme::DPoP, &unbound, "GET", "/x"))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "scheme_mismatch");

    // The DPoP-bound token with a fresh proof for this request: accepted.
    let ath = tessera::dpop::access_token_hash(&bound);
    let p = proof_with(
        &key,
        json!({"typ": "dpop+jwt", "alg": key.algorithm().as_str(), "jwk": key.public_jwk()}),
        json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": "GET",
               "htu": format!("{API_URL}/x"), "iat": now(), "ath": ath}),
    );
    let t = verifier
        .verify_request(&Presented::new(Scheme::DPoP, &bound, "GET", "/x").dpop(&p))
        .await
        .unwrap();
    assert!(t.jkt().is_some());
}
