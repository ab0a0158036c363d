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
async fn j106_verifier_accepts_broker_tokens_and_checks_binding() {
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
    // J106: the same SPIFFE ID with a rotated key is another certificate.
    let rotated =
        b.ca.issue(&tessera::pki::LeafSpec::client_spiffe(AGENT))
            .unwrap();
    assert_eq!(
        t.check_certificate(&rotated.cert_der)
            .map_err(|e| e.reason()),
        Err("certificate_mismatch")
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

/// A feed server whose event stream always fails (503): the follower must
/// poll the JSON form about once a second and still see new entries.
#[tokio::test]
async fn follower_falls_back_to_polling_when_the_stream_fails() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    init();
    let ca = tessera::pki::Ca::generate("feed CA").unwrap();
    let leaf = ca
        .issue(&tessera::pki::LeafSpec::server(
            &["localhost"],
            &["127.0.0.1".parse().unwrap()],
        ))
        .unwrap();
    let client = ca
        .issue(&tessera::pki::LeafSpec::client_spiffe(PAYMENTS))
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.cert_der.clone().into()],
            rustls_pki_types::PrivatePkcs8KeyDer::from(leaf.key_der.clone()).into(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let entries: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
    let (json_hits, stream_hits) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    {
        let (entries, json_hits, stream_hits) =
            (entries.clone(), json_hits.clone(), stream_hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let resp = if head.contains("text/event-stream") {
                    stream_hits.fetch_add(1, Ordering::SeqCst);
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
                } else {
                    json_hits.fetch_add(1, Ordering::SeqCst);
                    let all = entries.lock().unwrap().clone();
                    let n = all.len();
                    let since = format!("since={n}");
                    let body = if head.contains(&since) {
                        json!({"cursor": n.to_string(), "entries": []})
                    } else {
                        json!({"cursor": n.to_string(), "entries": all})
                    }
                    .to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
    }

    let tls = FollowerTls {
        roots: vec![ca.cert_der().to_vec().into()],
        cert_chain: vec![client.cert_der.clone().into()],
        key: Some(rustls_pki_types::PrivatePkcs8KeyDer::from(client.key_der.clone()).into()),
    };
    let f = RevocationFollower::start(&format!("https://127.0.0.1:{}", addr.port()), tls).unwrap();
    assert!(f.wait_synced(Duration::from_secs(5)).await);
    until("stream attempted", Duration::from_secs(5), || {
        stream_hits.load(Ordering::SeqCst) >= 1
    })
    .await;

    // A real token whose task the feed server then revokes.
    let b = TestBroker::start().await;
    let v = verifier(&b).await;
    let t = verified(&v, &b, "task-polled").await;
    assert!(!f.is_revoked(&t));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    entries.lock().unwrap().push(json!({
        "kind": "task", "value": "task-polled", "revoked_at": now + 1, "expires_at": now + 600
    }));
    let start = Instant::now();
    until("polled revocation", Duration::from_millis(2500), || {
        f.is_revoked(&t)
    })
    .await;
    println!("revocation latency while polling: {:?}", start.elapsed());
    assert!(!f.is_streaming());
    assert_eq!(
        stream_hits.load(Ordering::SeqCst),
        1,
        "stream retried only after the delay"
    );
    assert!(json_hits.load(Ordering::SeqCst) >= 2);
    drop(f);
    b.stop().await;
}

/// Introspection mode: the broker's `/introspect` decides, so a revocation
/// applies at once; refusals and outages are told apart (401 vs 503).
#[tokio::test]
async fn introspection_mode_asks_the_broker() {
    let b = TestBroker::start().await;
    let tls = |cert: &tessera::pki::IssuedCert| FollowerTls {
        roots: vec![b.ca.cert_der().to_vec().into()],
        cert_chain: vec![cert.cert_der.clone().into()],
        key: Some(rustls_pki_types::PrivatePkcs8KeyDer::from(cert.key_der.clone()).into()),
    };
    let endpoint = b.url("/introspect");
    let v = Verifier::with_introspection(BROKER_ISS, API, &endpoint, tls(&b.payments))
        .unwrap()
        .build()
        .unwrap();
    let (s, body) = b.agent_token("tickets:read", Some("task-online")).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let token = tok(&body);
    let t = v.verify(&token).await.unwrap();
    assert_eq!(t.subject(), AGENT);
    assert_eq!(t.task(), "task-online");
    assert!(t.scopes().contains("tickets:read"));
    assert!(t.x5t_s256().is_some(), "cnf comes back from introspection");
    assert!(t.check_certificate(&b.agent.cert_der).is_ok());

    // Garbage and revoked tokens are inactive (401), at once.
    assert_eq!(
        v.verify("not.a.token").await.err().map(|e| e.reason()),
        Some("inactive")
    );
    revoke(&b, "task", "task-online").await;
    let e = v.verify(&token).await.unwrap_err();
    assert_eq!(e.reason(), "inactive");
    assert!(!e.is_unavailable());

    // Another audience's verifier refuses the token.
    let (_, body) = b.agent_token("tickets:read", Some("task-aud")).await;
    let other = Verifier::with_introspection(
        BROKER_ISS,
        "https://other.example.com",
        &endpoint,
        tls(&b.payments),
    )
    .unwrap()
    .build()
    .unwrap();
    assert_eq!(
        other.verify(&tok(&body)).await.err().map(|e| e.reason()),
        Some("aud_mismatch")
    );

    // An identity the broker does not allow to introspect: unavailable, not
    // "inactive" (the resource server is misconfigured, the token may be fine).
    let agent_as_rs = Verifier::with_introspection(BROKER_ISS, API, &endpoint, tls(&b.agent))
        .unwrap()
        .build()
        .unwrap();
    let e = agent_as_rs.verify(&tok(&body)).await.unwrap_err();
    assert_eq!(e.reason(), "introspection_refused");
    assert!(e.is_unavailable());

    // The broker gone: unavailable (503), never accepted.
    let port = tessera::testkit::free_port();
    let gone = Verifier::with_introspection(
        BROKER_ISS,
        API,
        &format!("https://127.0.0.1:{port}/introspect"),
        tls(&b.payments),
    )
    .unwrap()
    .build()
    .unwrap();
    let e = gone.verify(&tok(&body)).await.unwrap_err();
    assert_eq!(e.reason(), "introspection_unreachable");
    assert!(e.is_unavailable());

    // Not https: refused at build time.
    assert_eq!(
        Verifier::with_introspection(
            BROKER_ISS,
            API,
            "http://127.0.0.1/introspect",
            tls(&b.payments)
        )
        .err()
        .map(|e| e.reason()),
        Some("invalid_url")
    );
}
