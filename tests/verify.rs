//! The resource-server verifier against a real broker: tokens from `/token`
//! verified with the broker's JWKS, and the revocation follower consuming
//! `/revocations` over mTLS as the payments API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tessera::verify::{FollowerTls, RevocationFollower, VerifiedToken, Verifier};

fn tok(v: &Value) -> String {
    v["access_token"].as_str().unwrap().to_string()
}

async fn verifier(b: &TestBroker) -> Verifier {
    let jwks = b
        .anon()
        .get(b.url("/jwks.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    Verifier::with_static_jwks(BROKER_ISS, API, &jwks)
        .unwrap()
        .build()
        .unwrap()
}

fn follower(b: &TestBroker) -> RevocationFollower {
    let tls = FollowerTls {
        roots: vec![b.ca.cert_der().to_vec().into()],
        cert_chain: vec![b.payments.cert_der.clone().into()],
        key: Some(rustls_pki_types::PrivatePkcs8KeyDer::from(b.payments.key_der.clone()).into()),
    };
    RevocationFollower::start(&b.url(""), tls).unwrap()
}

async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

async fn verified(v: &Verifier, b: &TestBroker, task: &str) -> VerifiedToken {
    let (s, body) = b.agent_token("tickets:read", Some(task)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    v.verify(&tok(&body)).await.unwrap()
}

async fn revoke(b: &TestBroker, kind: &str, value: &str) -> Instant {
    let start = Instant::now();
    let (s, body) = b
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"kind": kind, "value": value})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    start
}

#[tokio::test]
async fn verifier_accepts_broker_tokens_and_checks_binding() {
    let b = TestBroker::start().await;
    let v = verifier(&b).await;
    let t = verified(&v, &b, "task-plain").await;
    assert_eq!(t.subject(), AGENT);
    assert!(t.scopes().contains("tickets:read"));
    assert_eq!(t.task(), "task-plain");
    assert!(t.require_scopes(&["tickets:read"]).is_ok());
    assert!(t.require_scopes(&["tickets:delete"]).is_err());
    // mTLS exchanges are bound to the agent's certificate (RFC 8705).
    assert_eq!(t.x5t_s256(), Some(thumbprint(&b.agent.cert_der).as_str()));
    assert!(t.check_certificate(&b.agent.cert_der).is_ok());
    assert_eq!(
        t.check_certificate(&b.payments.cert_der)
            .map_err(|e| e.reason()),
        Err("certificate_mismatch")
    );
    assert!(
        t.check_certificate(b"").is_err(),
        "bound token without a certificate"
    );
    // The wrong audience is refused.
    let jwks = b
        .anon()
        .get(b.url("/jwks.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let other = Verifier::with_static_jwks(BROKER_ISS, "https://other.example.com", &jwks)
        .unwrap()
        .build()
        .unwrap();
    let (_, body) = b.agent_token("tickets:read", None).await;
    let e = other.verify(&tok(&body)).await.unwrap_err();
    assert_eq!(e.reason(), "aud_mismatch");
    b.stop().await;
}

#[tokio::test]
async fn follower_sees_revocations_within_a_second_and_resumes_after_a_drop() {
    let b = TestBroker::start().await;
    let v = verifier(&b).await;
    // One revocation exists before the follower starts: the catch-up finds it.
    let early = verified(&v, &b, "task-early").await;
    revoke(&b, "task", "task-early").await;

    let f = follower(&b);
    assert!(f.wait_synced(Duration::from_secs(5)).await, "initial sync");
    assert!(f.is_revoked(&early), "entry from the JSON catch-up");
    until("stream open", Duration::from_secs(5), || f.is_streaming()).await;

    // Revoke by jti: the stream delivers it.
    let a = verified(&v, &b, "task-a").await;
    let c = verified(&v, &b, "task-c").await;
    assert!(!f.is_revoked(&a));
    let start = revoke(&b, "jti", a.jti()).await;
    let after_answer = until("jti revocation", Duration::from_secs(1), || {
        f.is_revoked(&a)
    })
    .await;
    let total = start.elapsed();
    println!(
        "revocation latency: {total:?} from the admin call, {after_answer:?} after its answer"
    );
    assert!(total < Duration::from_secs(1), "{total:?}");
    assert!(!f.is_revoked(&c), "other tokens stay valid");
    let cursor_before = f.cursor();

    // Drop the stream, revoke while it is down, and see the follower resume
    // from its cursor.
    let opened = f.streams_opened();
    f.reconnect();
    let start = revoke(&b, "task", "task-c").await;
    until(
        "task revocation after reconnect",
        Duration::from_secs(2),
        || f.is_revoked(&c),
    )
    .await;
    println!(
        "revocation latency across a reconnect: {:?}",
        start.elapsed()
    );
    until("stream reopened", Duration::from_secs(5), || {
        f.streams_opened() > opened && f.is_streaming()
    })
    .await;
    assert_ne!(f.cursor(), cursor_before, "cursor advanced");
    assert!(f.is_revoked(&a), "entries survive the reconnect");

    // And the reopened stream delivers new entries too.
    let d = verified(&v, &b, "task-d").await;
    assert!(!f.is_revoked(&d));
    let start = revoke(&b, "jti", d.jti()).await;
    until("jti after reopen", Duration::from_secs(1), || {
        f.is_revoked(&d)
    })
    .await;
    println!(
        "revocation latency on the reopened stream: {:?}",
        start.elapsed()
    );

    // Subject revocation covers every token of the agent issued until now.
    let e = verified(&v, &b, "task-e").await;
    revoke(&b, "subject", AGENT).await;
    until("subject revocation", Duration::from_secs(1), || {
        f.is_revoked(&e)
    })
    .await;
    assert_eq!(f.dropped_entries(), 0);
    // Dropping the follower closes its stream, so the broker drains at once.
    drop(f);
    b.stop().await;
}
