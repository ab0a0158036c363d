//! The exchange core end to end: real TLS with client certificates, a real
//! HTTPS OIDC issuer, and one test per error code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

fn mtls_form<'a>(aud: &'a str, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", TE),
        ("subject_token_type", MTLS),
        ("audience", aud),
        ("scope", scope),
    ]
}

#[tokio::test]
async fn j105_mtls_exchange_mints_rfc9068_token_bound_to_the_certificate() {
    let b = TestBroker::start().await;
    let mut form = mtls_form(API, "tickets:read");
    form.push(("task", "triage-4711"));
    let c = b.agent_client();
    let r = c
        .post(b.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&form))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["pragma"], "no-cache");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["issued_token_type"], ACCESS);
    assert_eq!(v["scope"], "tickets:read");
    let expires_in = v["expires_in"].as_u64().unwrap();
    assert!(
        expires_in > 0 && expires_in <= 300,
        "default ttl 5m: {expires_in}"
    );

    let (h, c) = decode(v["access_token"].as_str().unwrap());
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(h["alg"], "ES256");
    assert!(h["kid"].as_str().unwrap().len() >= 43);
    assert_eq!(c["iss"], BROKER_ISS);
    assert_eq!(c["sub"], AGENT);
    assert_eq!(c["aud"], API, "one audience, as a string");
    assert_eq!(c["client_id"], AGENT);
    assert_eq!(c["scope"], "tickets:read");
    assert_eq!(c["txn"], "triage-4711");
    assert_eq!(c["owner"], "alice@example.com");
    assert!(uuid::Uuid::parse_str(c["jti"].as_str().unwrap()).is_ok());
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        expires_in
    );
    assert_eq!(c["nbf"], c["iat"]);
    // RFC 8705 §3.1: base64url SHA-256 of the leaf DER, computed independently.
    assert_eq!(c["cnf"]["x5t#S256"], thumbprint(&b.agent.cert_der));
    assert!(c.get("act").is_none());
    b.stop().await;
}

#[tokio::test]
async fn client_credentials_over_mtls_is_shorthand() {
    let b = TestBroker::start().await;
    let (s, v) = b
        .token(
            &b.agent_client(),
            &[
                ("grant_type", "client_credentials"),
                ("audience", API),
                ("scope", "tickets:read tickets:write"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, c) = decode(v["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], AGENT);
    assert_eq!(c["scope"], "tickets:read tickets:write");
    // without a certificate there is no client: 401
    let (s, v) = b
        .token(
            &b.anon(),
            &[
                ("grant_type", "client_credentials"),
                ("audience", API),
                ("scope", "tickets:read"),
            ],
        )
        .await;
    assert_eq!(s, 401);
    assert_eq!(v["error"], "invalid_client");
}

#[tokio::test]
async fn mtls_subject_token_must_be_the_thumbprint_when_sent() {
    let b = TestBroker::start().await;
    let tp = thumbprint(&b.agent.cert_der);
    let mut f = mtls_form(API, "tickets:read");
    f.push(("subject_token", &tp));
    let (s, _) = b.token(&b.agent_client(), &f).await;
    assert_eq!(s, 200);
    let mut f = mtls_form(API, "tickets:read");
    f.push(("subject_token", "AAAA"));
    let (s, v) = b.token(&b.agent_client(), &f).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"], "invalid_request");
}

#[tokio::test]
async fn oidc_exchange_over_https_issuer() {
    let b = TestBroker::start().await;
    let st = b.ci_token();
    let (s, v) = b.token(&b.anon(), &TestBroker::oidc_form(&st)).await;
    assert_eq!(s, 200, "{v}");
    let (_, c) = decode(v["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], "repo:acme/app:ref:refs/heads/main");
    assert_eq!(c["aud"], "https://deploy.example.com");
    assert_eq!(c["owner"], "bob@example.com");
    assert!(c.get("cnf").is_none(), "no certificate, no binding");
    // policy max_ttl 5m caps the default 5m and any ask above it
    let mut f = TestBroker::oidc_form(&st);
    f.push(("expires_in", "3600"));
    let (s, v) = b.token(&b.anon(), &f).await;
    assert_eq!(s, 200);
    assert!(v["expires_in"].as_u64().unwrap() <= 300);
    // one JWKS fetch served both, and it is counted
    assert_eq!(b.issuer().jwks_hits(), 1);
    let m = reqwest::get(b.ops_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("tessera_jwks_refreshes_total{outcome=\"ok\"} ")),
        "{m}"
    );
}

#[tokio::test]
async fn oidc_token_over_mtls_is_bound_to_the_presenting_certificate() {
    let b = TestBroker::start().await;
    let st = b.ci_token();
    let (s, v) = b
        .token(&b.agent_client(), &TestBroker::oidc_form(&st))
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, c) = decode(v["access_token"].as_str().unwrap());
    assert_eq!(c["cnf"]["x5t#S256"], thumbprint(&b.agent.cert_der));
    assert_eq!(c["client_id"], AGENT);
}

#[tokio::test]
async fn lifetime_never_exceeds_the_subject_token() {
    let b = TestBroker::start().await;
    let mut c = b
        .issuer()
        .claims("repo:acme/app:ref:refs/heads/main", "tessera");
    c["env"] = "prod".into();
    let exp = c["iat"].as_u64().unwrap() + 60;
    c["exp"] = exp.into();
    let st = b.issuer().sign(&c);
    let (s, v) = b.token(&b.anon(), &TestBroker::oidc_form(&st)).await;
    assert_eq!(s, 200, "{v}");
    let (_, claims) = decode(v["access_token"].as_str().unwrap());
    assert!(claims["exp"].as_u64().unwrap() <= exp);
    assert!(v["expires_in"].as_u64().unwrap() <= 60);
}

#[tokio::test]
async fn expires_in_is_honoured_below_the_caps() {
    let b = TestBroker::start().await;
    let mut f = mtls_form(API, "tickets:read");
    f.push(("expires_in", "42"));
    let (s, v) = b.token(&b.agent_client(), &f).await;
    assert_eq!(s, 200);
    assert_eq!(v["expires_in"], 42);
    let mut f = mtls_form(API, "tickets:read");
    f.push(("expires_in", "86400"));
    let (_, v) = b.token(&b.agent_client(), &f).await;
    assert_eq!(v["expires_in"], 600, "policy max_ttl 10m");
}

#[tokio::test]
async fn requested_token_type_jwt_is_reported() {
    let b = TestBroker::start().await;
    let mut f = mtls_form(API, "tickets:read");
    f.push(("requested_token_type", JWT));
    let (s, v) = b.token(&b.agent_client(), &f).await;
    assert_eq!(s, 200);
    assert_eq!(v["issued_token_type"], JWT);
}

// ---- one test per error code ----

#[tokio::test]
async fn error_invalid_request() {
    let b = TestBroker::start().await;
    let (s, v) = b
        .token(&b.anon(), &[("audience", API), ("scope", "x")])
        .await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert!(v["error_description"].is_string());
}

#[tokio::test]
async fn error_invalid_scope() {
    let b = TestBroker::start().await;
    let (s, v) = b
        .token(
            &b.agent_client(),
            &mtls_form(API, "tickets:read tickets:delete"),
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_scope"))
    );
}

#[tokio::test]
async fn error_invalid_target() {
    let b = TestBroker::start().await;
    let (s, v) = b
        .token(
            &b.agent_client(),
            &mtls_form("https://other.example.com", "tickets:read"),
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_target"))
    );
}

#[tokio::test]
async fn error_unsupported_grant_type() {
    let b = TestBroker::start().await;
    let (s, v) = b
        .token(
            &b.anon(),
            &[
                ("grant_type", "password"),
                ("audience", API),
                ("scope", "x"),
            ],
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
}

#[tokio::test]
async fn error_invalid_client() {
    let b = TestBroker::start().await;
    let (s, v) = b.token(&b.anon(), &mtls_form(API, "tickets:read")).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (401, Some("invalid_client"))
    );
}

#[tokio::test]
async fn error_invalid_authorization_details() {
    let b = TestBroker::start().await;
    let mut f = mtls_form(API, "tickets:read");
    f.push(("authorization_details", "{\"type\":\"x\"}"));
    let (s, v) = b.token(&b.agent_client(), &f).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_authorization_details"))
    );
}

#[tokio::test]
async fn error_temporarily_unavailable_when_issuer_keys_unreachable() {
    let b = TestBroker::start().await;
    b.issuer().set_failing(true);
    let st = b.ci_token();
    let r = b
        .anon()
        .post(b.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&TestBroker::oidc_form(&st)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "temporarily_unavailable");
    assert!(v.get("access_token").is_none());
}

#[tokio::test]
async fn authorization_details_are_copied_into_the_token() {
    let b = TestBroker::start().await;
    let mut f = mtls_form(API, "tickets:write");
    let details = r#"[{"type":"ticket_update","identifier":"T-1","actions":["close"]}]"#;
    f.push(("authorization_details", details));
    let (s, v) = b.token(&b.agent_client(), &f).await;
    assert_eq!(s, 200, "{v}");
    let (_, c) = decode(v["access_token"].as_str().unwrap());
    assert_eq!(c["authorization_details"][0]["identifier"], "T-1");
}

#[tokio::test]
async fn metadata_and_jwks() {
    let b = TestBroker::start().await;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let v: Value = b
            .anon()
            .get(b.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["issuer"], BROKER_ISS);
        assert_eq!(v["token_endpoint"], format!("{BROKER_ISS}/token"));
        assert_eq!(v["jwks_uri"], format!("{BROKER_ISS}/jwks.json"));
        assert_eq!(v["tls_client_certificate_bound_access_tokens"], true);
        assert!(v["grant_types_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == TE));
        // RFC 8414: every endpoint served is listed, and what is listed is
        // served (same paths on this listener: the test issuer is a name).
        assert_eq!(
            v["introspection_endpoint"],
            format!("{BROKER_ISS}/introspect")
        );
        assert_eq!(v["revocation_endpoint"], format!("{BROKER_ISS}/revoke"));
        assert_eq!(v["response_types_supported"], serde_json::json!([]));
        let types: Vec<&str> = v["subject_token_types_supported"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        for t in ["jwt", "id_token", "access_token", "mtls"] {
            assert!(
                types.contains(&format!("urn:ietf:params:oauth:token-type:{t}").as_str()),
                "{t} missing from {types:?}"
            );
        }
        for key in [
            "token_endpoint",
            "introspection_endpoint",
            "revocation_endpoint",
        ] {
            let path = v[key].as_str().unwrap().strip_prefix(BROKER_ISS).unwrap();
            let r = b
                .agent_client()
                .post(b.url(path))
                .form(&[("token", "x")])
                .send()
                .await
                .unwrap();
            assert_ne!(r.status(), 404, "{key} {path} is not served");
            assert_ne!(r.status(), 405, "{key} {path} is not served");
        }
    }
    let v: Value = b
        .anon()
        .get(b.url("/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["alg"], "ES256");
    assert!(keys[0].get("d").is_none(), "never publish private material");
}

#[tokio::test]
async fn ops_endpoints() {
    let b = TestBroker::start().await;
    let c = reqwest::Client::new();
    assert_eq!(
        c.get(b.ops_url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(b.ops_url("/readyz")).send().await.unwrap().status(),
        200
    );
    let _ = b
        .token(&b.agent_client(), &mtls_form(API, "tickets:read"))
        .await;
    let m = c
        .get(b.ops_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("tessera_exchanges_total"), "{m}");
}

#[tokio::test]
async fn broker_keeps_serving_after_refusals() {
    let b = TestBroker::start().await;
    for _ in 0..20 {
        let (s, _) = b.token(&b.anon(), &[("grant_type", "nope")]).await;
        assert_eq!(s, 400);
    }
    let (s, _) = b
        .token(&b.agent_client(), &mtls_form(API, "tickets:read"))
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn oidc_issuer_found_by_discovery() {
    let b = TestBroker::start_with(Options {
        discovery: true,
        ..Default::default()
    })
    .await;
    let (s, v) = b
        .token(&b.anon(), &TestBroker::oidc_form(&b.ci_token()))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = b
        .token(&b.anon(), &TestBroker::oidc_form(&b.ci_token()))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        b.issuer().discovery_hits(),
        1,
        "discovery once, then the JWKS cache"
    );
    assert_eq!(b.issuer().jwks_hits(), 1);
}
