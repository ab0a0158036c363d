//! One conformance suite for every backend: the memory store runs it now, the
//! Redis store runs the same functions.

use super::*;

fn facts(jti: &str, sub: &str, txn: &str, iat: u64) -> TokenFacts {
    TokenFacts {
        jti: jti.into(),
        sub: sub.into(),
        actors: vec![],
        txn: txn.into(),
        grant: None,
        iat,
    }
}

/// Runs every check against `s`.
pub async fn run_all(s: Stores) {
    revocation_semantics(&s).await;
    feed_cursor(&s).await;
    replay_guard(&s).await;
    kill_switch(&s).await;
    s.health.ping().await.unwrap();
}

async fn revocation_semantics(s: &Stores) {
    let now = 1_000;
    let r = |kind, value: &str| Revocation {
        kind,
        value: value.into(),
        revoked_at: now,
        expires_at: now + 900,
    };
    let t = facts("j1", "spiffe://td/a", "task-1", now - 10);
    assert!(!s.revocations.is_revoked(&t, now).await.unwrap());
    s.revocations
        .revoke(r(RevocationKind::Jti, "j1"))
        .await
        .unwrap();
    assert!(s.revocations.is_revoked(&t, now).await.unwrap());
    // an unaffected token stays active
    let other = facts("j2", "spiffe://td/b", "task-2", now - 10);
    assert!(!s.revocations.is_revoked(&other, now).await.unwrap());
    // subject revocation covers tokens issued until then, and actors
    s.revocations
        .revoke(r(RevocationKind::Subject, "spiffe://td/b"))
        .await
        .unwrap();
    assert!(s.revocations.is_revoked(&other, now).await.unwrap());
    let later = facts("j3", "spiffe://td/b", "task-3", now + 1);
    assert!(!s.revocations.is_revoked(&later, now + 1).await.unwrap());
    let mut via_actor = facts("j4", "user", "task-4", now - 1);
    via_actor.actors = vec!["spiffe://td/b".into()];
    assert!(s.revocations.is_revoked(&via_actor, now).await.unwrap());
    // task
    s.revocations
        .revoke(r(RevocationKind::Task, "task-5"))
        .await
        .unwrap();
    assert!(s
        .revocations
        .is_revoked(&facts("j5", "x", "task-5", now), now)
        .await
        .unwrap());
    // grant
    let mut g = facts("j6", "x", "task-6", now);
    g.grant = Some("g-1".into());
    assert!(!s.revocations.is_revoked(&g, now).await.unwrap());
    s.revocations
        .revoke(r(RevocationKind::Grant, "g-1"))
        .await
        .unwrap();
    assert!(s.revocations.is_revoked(&g, now).await.unwrap());
    // entries expire
    assert!(!s.revocations.is_revoked(&t, now + 901).await.unwrap());
}

async fn feed_cursor(s: &Stores) {
    let now = 5_000;
    let (all, c0) = s.revocations.list_since(None, 1000, now).await.unwrap();
    let before = all.len();
    let c1 = s
        .revocations
        .revoke(Revocation {
            kind: RevocationKind::Jti,
            value: "feed-1".into(),
            revoked_at: now,
            expires_at: now + 60,
        })
        .await
        .unwrap();
    assert!(c1 > c0);
    let (since, last) = s.revocations.list_since(Some(c0), 1000, now).await.unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].1.value, "feed-1");
    assert_eq!(last, c1);
    let (none, last2) = s.revocations.list_since(Some(c1), 1000, now).await.unwrap();
    assert!(none.is_empty(), "since is exclusive");
    assert_eq!(last2, c1);
    let (all2, _) = s.revocations.list_since(None, 1000, now).await.unwrap();
    assert_eq!(all2.len(), before + 1);
}

async fn replay_guard(s: &Stores) {
    assert!(s.replay.first_use("iss", "jti-1", 200, 100).await.unwrap());
    assert!(!s.replay.first_use("iss", "jti-1", 200, 150).await.unwrap());
    // other namespace is separate
    assert!(s.replay.first_use("iss2", "jti-1", 200, 150).await.unwrap());
    // after expiry it may be used again (the token itself is expired by then)
    assert!(s.replay.first_use("iss", "jti-1", 300, 201).await.unwrap());
}

async fn kill_switch(s: &Stores) {
    assert!(!s.revocations.is_blocked("spiffe://td/k", 10).await.unwrap());
    s.revocations
        .block_subject("spiffe://td/k", 100)
        .await
        .unwrap();
    assert!(s.revocations.is_blocked("spiffe://td/k", 99).await.unwrap());
    assert!(!s
        .revocations
        .is_blocked("spiffe://td/k", 100)
        .await
        .unwrap());
}
