//! One conformance suite for every backend: the memory and Redis stores run
//! the same functions. Times are relative to the real clock (a Redis backend
//! sets TTLs with the server's clock), and every identifier is unique per run.
//!
//! One file on purpose: it is the one suite every backend runs
//! ([`run_all`]); splitting it would let a backend run half of it.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use super::*;

fn facts(jti: &str, sub: &str, txn: &str, iat: u64) -> TokenFacts {
    TokenFacts {
        jti: jti.into(),
        sub: sub.into(),
        actors: vec![],
        client_id: None,
        ancestors: vec![],
        txn: txn.into(),
        grant: None,
        iat,
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A task revocation of `value`, made now, live for ten minutes.
pub fn task_revocation(value: &str) -> Revocation {
    let now = unix_now();
    Revocation {
        kind: RevocationKind::Task,
        value: value.into(),
        revoked_at: now,
        expires_at: now + 600,
    }
}

/// A name unique to this run.
fn uniq(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4())
}

/// Runs every check against `s`.
pub async fn run_all(s: Stores) {
    revocation_semantics(&s).await;
    feed_cursor(&s).await;
    feed_paging(&s).await;
    replay_guard(&s).await;
    kill_switch(&s).await;
    subject_covers_client_id(&s).await;
    grant_crud(&s).await;
    grant_coverage(&s).await;
    grant_expiry(&s).await;
    grant_concurrent_consume(&s).await;
    grant_unlimited(&s).await;
    approval_lifecycle(&s).await;
    approval_binding_and_denial(&s).await;
    approval_expiry(&s).await;
    approval_concurrent_redeem(&s).await;
    approval_requester_cap(&s).await;
    approval_same_request_twice(&s).await;
    audit_stream(&s).await;
    audit_chain_append_is_idempotent(&s).await;
    s.health.ping().await.unwrap();
}

async fn revocation_semantics(s: &Stores) {
    let now = unix_now();
    let r = |kind, value: &str| Revocation {
        kind,
        value: value.into(),
        revoked_at: now,
        expires_at: now + 900,
    };
    let (j1, b, a) = (uniq("j1"), uniq("spiffe://td/b"), uniq("spiffe://td/a"));
    let t = facts(&j1, &a, &uniq("task-1"), now - 10);
    assert!(!s.revocations.is_revoked(&t, now).await.unwrap());
    // a token derived from j1 by re-exchange
    let mut child = facts(&uniq("child"), &a, &uniq("task-1c"), now + 5);
    child.ancestors = vec![uniq("grandparent"), j1.clone()];
    assert!(!s.revocations.is_revoked(&child, now).await.unwrap());
    s.revocations
        .revoke(r(RevocationKind::Jti, &j1))
        .await
        .unwrap();
    assert!(
        s.revocations.is_revoked(&child, now).await.unwrap(),
        "revoking a token revokes every token derived from it, whatever their iat"
    );
    assert!(s.revocations.is_revoked(&t, now).await.unwrap());
    // a jti entry covers its token whatever its iat
    let mut late = t.clone();
    late.iat = now + 5;
    assert!(s.revocations.is_revoked(&late, now + 5).await.unwrap());
    // an unaffected token stays active
    let other = facts(&uniq("j2"), &b, &uniq("task-2"), now - 10);
    assert!(!s.revocations.is_revoked(&other, now).await.unwrap());
    // subject revocation covers tokens issued until then, and actors
    s.revocations
        .revoke(r(RevocationKind::Subject, &b))
        .await
        .unwrap();
    assert!(s.revocations.is_revoked(&other, now).await.unwrap());
    let later = facts(&uniq("j3"), &b, &uniq("task-3"), now + 1);
    assert!(!s.revocations.is_revoked(&later, now + 1).await.unwrap());
    let mut via_actor = facts(&uniq("j4"), "user", &uniq("task-4"), now - 1);
    via_actor.actors = vec![uniq("x"), b.clone()];
    assert!(s.revocations.is_revoked(&via_actor, now).await.unwrap());
    // task
    let task5 = uniq("task-5");
    s.revocations
        .revoke(r(RevocationKind::Task, &task5))
        .await
        .unwrap();
    assert!(s
        .revocations
        .is_revoked(&facts(&uniq("j5"), "x", &task5, now), now)
        .await
        .unwrap());
    assert!(!s
        .revocations
        .is_revoked(&facts(&uniq("j5"), "x", &task5, now + 1), now + 1)
        .await
        .unwrap());
    // grant
    let g1 = uniq("g-1");
    let mut g = facts(&uniq("j6"), "x", &uniq("task-6"), now);
    g.grant = Some(g1.clone());
    assert!(!s.revocations.is_revoked(&g, now).await.unwrap());
    s.revocations
        .revoke(r(RevocationKind::Grant, &g1))
        .await
        .unwrap();
    assert!(s.revocations.is_revoked(&g, now).await.unwrap());
    // the kinds are separate namespaces: a subject named like the grant id
    // is not covered by the grant entry
    let same_name = facts(&uniq("j7"), &g1, &uniq("t"), now - 1);
    assert!(!s.revocations.is_revoked(&same_name, now).await.unwrap());
    // a second revocation widens the entry (latest revoked_at, expiry)
    let wide = uniq("task-w");
    s.revocations
        .revoke(r(RevocationKind::Task, &wide))
        .await
        .unwrap();
    s.revocations
        .revoke(Revocation {
            kind: RevocationKind::Task,
            value: wide.clone(),
            revoked_at: now + 10,
            expires_at: now + 100,
        })
        .await
        .unwrap();
    let t_wide = facts(&uniq("j8"), "x", &wide, now + 10);
    assert!(s.revocations.is_revoked(&t_wide, now + 10).await.unwrap());
    assert!(s.revocations.is_revoked(&t_wide, now + 800).await.unwrap());
    // entries expire
    assert!(!s.revocations.is_revoked(&t, now + 901).await.unwrap());
}

async fn feed_cursor(s: &Stores) {
    let now = unix_now();
    let (all, c0) = s.revocations.list_since(None, 1000, now).await.unwrap();
    let before = all.len();
    let v = uniq("feed-1");
    let c1 = s
        .revocations
        .revoke(Revocation {
            kind: RevocationKind::Jti,
            value: v.clone(),
            revoked_at: now,
            expires_at: now + 60,
        })
        .await
        .unwrap();
    assert!(c1 > c0);
    let (since, last) = s
        .revocations
        .list_since(Some(&c0), 1000, now)
        .await
        .unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].0, c1);
    assert_eq!(since[0].1.value, v);
    assert_eq!(since[0].1.kind, RevocationKind::Jti);
    assert_eq!(since[0].1.expires_at, now + 60);
    assert_eq!(last, c1);
    let (none, last2) = s
        .revocations
        .list_since(Some(&c1), 1000, now)
        .await
        .unwrap();
    assert!(none.is_empty(), "since is exclusive");
    assert_eq!(last2, c1);
    let (all2, _) = s.revocations.list_since(None, 1000, now).await.unwrap();
    assert_eq!(all2.len(), before + 1);
    // expired entries are skipped
    let (later, _) = s
        .revocations
        .list_since(Some(&c0), 1000, now + 61)
        .await
        .unwrap();
    assert!(later.iter().all(|(_, r)| r.value != v));
    // a cursor that is not one is an error, not "everything"
    assert!(matches!(
        s.revocations.list_since(Some("nope"), 10, now).await,
        Err(StoreError::Protocol(_))
    ));
}

async fn feed_paging(s: &Stores) {
    let now = unix_now();
    let (_, start) = s.revocations.list_since(None, 1000, now).await.unwrap();
    let mut cursors = Vec::new();
    let vals: Vec<String> = (0..5).map(|i| uniq(&format!("page-{i}"))).collect();
    for v in &vals {
        cursors.push(
            s.revocations
                .revoke(Revocation {
                    kind: RevocationKind::Subject,
                    value: v.clone(),
                    revoked_at: now,
                    expires_at: now + 60,
                })
                .await
                .unwrap(),
        );
    }
    // strictly increasing as strings
    assert!(cursors.windows(2).all(|w| w[0] < w[1]));
    // page through two at a time, in order
    let mut cur = start;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (page, next) = s.revocations.list_since(Some(&cur), 2, now).await.unwrap();
        assert!(page.len() <= 2);
        if page.is_empty() {
            assert_eq!(next, cur);
            break;
        }
        assert_eq!(next, page.last().unwrap().0);
        seen.extend(page.into_iter().map(|(_, r)| r.value));
        cur = next;
    }
    assert_eq!(seen, vals);
    assert_eq!(cur, *cursors.last().unwrap());
    // limit 0 returns nothing
    let (empty, _) = s
        .revocations
        .list_since(Some(&cursors[0]), 0, now)
        .await
        .unwrap();
    assert!(empty.is_empty());
}

async fn replay_guard(s: &Stores) {
    let now = unix_now();
    let (ns, id) = (uniq("iss"), uniq("jti"));
    assert!(s.replay.first_use(&ns, &id, now + 200, now).await.unwrap());
    assert!(!s
        .replay
        .first_use(&ns, &id, now + 200, now + 50)
        .await
        .unwrap());
    // other namespace is separate
    assert!(s
        .replay
        .first_use(&uniq("iss2"), &id, now + 200, now + 50)
        .await
        .unwrap());
    // namespace and id do not run into each other
    assert!(s
        .replay
        .first_use(&format!("{ns}a"), &id[1..], now + 200, now)
        .await
        .unwrap());
    // a record that is expired already never blocks anything
    let old = uniq("old");
    assert!(s.replay.first_use(&ns, &old, now - 1, now).await.unwrap());
    assert!(s.replay.first_use(&ns, &old, now - 1, now).await.unwrap());
}

/// A subject revocation covers the tokens the identity holds as
/// `client_id` (it presented another subject's token): the kill switch
/// covers every token the identity holds.
async fn subject_covers_client_id(s: &Stores) {
    let now = unix_now();
    let agent = uniq("spiffe://td/agent");
    let mut t = facts(&uniq("j"), "user:alice", &uniq("t"), now - 10);
    t.client_id = Some(agent.clone());
    assert!(!s.revocations.is_revoked(&t, now).await.unwrap());
    s.revocations
        .revoke(Revocation {
            kind: RevocationKind::Subject,
            value: agent.clone(),
            revoked_at: now,
            expires_at: now + 600,
        })
        .await
        .unwrap();
    assert!(s.revocations.is_revoked(&t, now).await.unwrap());
    // issued after the revocation: not covered
    t.iat = now + 1;
    assert!(!s.revocations.is_revoked(&t, now + 1).await.unwrap());
}

async fn kill_switch(s: &Stores) {
    let now = unix_now();
    let k = uniq("spiffe://td/k");
    assert!(!s.revocations.is_blocked(&k, now).await.unwrap());
    s.revocations.block_subject(&k, now + 100).await.unwrap();
    assert!(s.revocations.is_blocked(&k, now + 99).await.unwrap());
    assert!(!s.revocations.is_blocked(&k, now + 100).await.unwrap());
    // a shorter block never shortens a longer one, and says so
    assert_eq!(
        s.revocations.block_subject(&k, now + 50).await.unwrap(),
        now + 100
    );
    assert!(s.revocations.is_blocked(&k, now + 99).await.unwrap());
    // others are not blocked
    assert!(!s.revocations.is_blocked(&uniq("other"), now).await.unwrap());
    // the block is listed, by subject (store-side time: a block ending
    // before the store's clock is not live)
    let k2 = uniq("spiffe://td/k2");
    assert_eq!(
        s.revocations.block_subject(&k2, now + 200).await.unwrap(),
        now + 200
    );
    let listed = s.revocations.list_blocks(now).await.unwrap();
    let mine: Vec<_> = listed.iter().filter(|(x, _)| *x == k || *x == k2).collect();
    assert_eq!(mine, [&(k.clone(), now + 100), &(k2.clone(), now + 200)]);
    // the undo: lifted at once, unlisted, and a second unblock finds nothing
    assert!(s.revocations.unblock_subject(&k, now).await.unwrap());
    assert!(!s.revocations.is_blocked(&k, now).await.unwrap());
    assert!(!s.revocations.unblock_subject(&k, now).await.unwrap());
    let listed = s.revocations.list_blocks(now).await.unwrap();
    assert!(!listed.iter().any(|(x, _)| *x == k), "{listed:?}");
    assert!(listed.iter().any(|(x, _)| *x == k2), "{listed:?}");
    // after an unblock, a shorter block takes effect
    s.revocations.block_subject(&k, now + 30).await.unwrap();
    assert!(s.revocations.is_blocked(&k, now + 29).await.unwrap());
    assert!(!s.revocations.is_blocked(&k, now + 30).await.unwrap());
}

/// A grant for tests.
pub fn grant(subject: &str, audience: &str, scopes: &[&str], uses: Option<u32>) -> Grant {
    let now = unix_now();
    Grant {
        id: uuid::Uuid::new_v4().to_string(),
        subject: subject.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        audience: audience.into(),
        task: None,
        uses,
        remaining: uses,
        created_at: now,
        expires_at: now + 600,
        created_by: "operator@example".into(),
    }
}

fn sc(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn grant_crud(s: &Stores) {
    let now = unix_now();
    let (a, b) = (uniq("spiffe://td/ga"), uniq("spiffe://td/gb"));
    let g = grant(&a, "api", &["read", "write"], Some(3));
    s.grants.create(&g).await.unwrap();
    assert_eq!(s.grants.get(&g.id, now).await.unwrap(), Some(g.clone()));
    assert_eq!(s.grants.get(&uniq("nope"), now).await.unwrap(), None);
    // a second create with the same id is refused and changes nothing
    let mut dup = g.clone();
    dup.subject = b.clone();
    assert!(s.grants.create(&dup).await.is_err());
    assert!(s.grants.list(Some(&b), now).await.unwrap().is_empty());
    assert_eq!(s.grants.get(&g.id, now).await.unwrap(), Some(g.clone()));

    let g2 = grant(&a, "other", &["x"], None);
    s.grants.create(&g2).await.unwrap();
    let of_a = s.grants.list(Some(&a), now).await.unwrap();
    assert_eq!(of_a.len(), 2);
    assert!(of_a.contains(&g) && of_a.contains(&g2));
    let all = s.grants.list(None, now).await.unwrap();
    assert!(all.contains(&g) && all.contains(&g2));
    // revoking needs the right subject
    assert!(!s.grants.revoke(&g.id, &b).await.unwrap());
    assert!(s.grants.get(&g.id, now).await.unwrap().is_some());
    assert!(s.grants.revoke(&g.id, &a).await.unwrap());
    assert_eq!(s.grants.get(&g.id, now).await.unwrap(), None);
    assert!(!s.grants.revoke(&g.id, &a).await.unwrap());
    assert_eq!(
        s.grants.list(Some(&a), now).await.unwrap(),
        vec![g2.clone()]
    );
    assert!(!s.grants.list(None, now).await.unwrap().contains(&g));
    assert!(s
        .grants
        .consume(&a, "api", &sc(&["read"]), None, now)
        .await
        .unwrap()
        .is_none());
}

async fn grant_coverage(s: &Stores) {
    let now = unix_now();
    let subj = uniq("spiffe://td/cov");
    let mut g = grant(&subj, "api", &["a", "b"], Some(10));
    g.task = Some("t1".into());
    s.grants.create(&g).await.unwrap();
    let c = |sub: &str, aud: &str, scopes: &[&str], task: Option<&str>| {
        let (sub, aud, scopes, task) = (
            sub.to_string(),
            aud.to_string(),
            sc(scopes),
            task.map(str::to_string),
        );
        async move {
            s.grants
                .consume(&sub, &aud, &scopes, task.as_deref(), now)
                .await
                .unwrap()
        }
    };
    // not covered: other subject, audience, a scope outside, no/other task
    assert!(c(&uniq("spiffe://td/x"), "api", &["a"], Some("t1"))
        .await
        .is_none());
    assert!(c(&subj, "api2", &["a"], Some("t1")).await.is_none());
    assert!(c(&subj, "api", &["a", "c"], Some("t1")).await.is_none());
    assert!(c(&subj, "api", &["a"], None).await.is_none());
    assert!(c(&subj, "api", &["a"], Some("t2")).await.is_none());
    assert_eq!(
        s.grants.get(&g.id, now).await.unwrap().unwrap().remaining,
        Some(10),
        "refused requests take no use"
    );
    // covered: a subset of the scopes, the task; returns the grant before use
    let got = c(&subj, "api", &["b", "a"], Some("t1")).await.unwrap();
    assert_eq!(got.id, g.id);
    assert_eq!(got.remaining, Some(10));
    let got = c(&subj, "api", &["a"], Some("t1")).await.unwrap();
    assert_eq!(got.remaining, Some(9));
    let got = c(&subj, "api", &[], Some("t1")).await.unwrap();
    assert_eq!(got.remaining, Some(8));
    assert_eq!(
        s.grants.get(&g.id, now).await.unwrap().unwrap().remaining,
        Some(7)
    );
    // a grant without a task covers every task
    let free = grant(&subj, "api3", &["z"], Some(2));
    s.grants.create(&free).await.unwrap();
    assert!(c(&subj, "api3", &["z"], Some("any")).await.is_some());
    assert!(c(&subj, "api3", &["z"], None).await.is_some());
    assert!(c(&subj, "api3", &["z"], None).await.is_none(), "used up");
    // the soonest-expiring covering grant is used first
    let mut short = grant(&subj, "api4", &["s"], Some(1));
    short.expires_at = now + 100;
    let long = grant(&subj, "api4", &["s"], Some(1));
    s.grants.create(&long).await.unwrap();
    s.grants.create(&short).await.unwrap();
    assert_eq!(c(&subj, "api4", &["s"], None).await.unwrap().id, short.id);
    assert_eq!(c(&subj, "api4", &["s"], None).await.unwrap().id, long.id);
    assert!(c(&subj, "api4", &["s"], None).await.is_none());
}

async fn grant_expiry(s: &Stores) {
    let now = unix_now();
    let subj = uniq("spiffe://td/exp");
    let mut g = grant(&subj, "api", &["a"], Some(5));
    g.expires_at = now + 10;
    s.grants.create(&g).await.unwrap();
    // expired at `now` never covers, never shows
    assert!(s
        .grants
        .consume(&subj, "api", &sc(&["a"]), None, now + 10)
        .await
        .unwrap()
        .is_none());
    assert_eq!(s.grants.get(&g.id, now + 10).await.unwrap(), None);
    assert!(s
        .grants
        .list(Some(&subj), now + 10)
        .await
        .unwrap()
        .is_empty());
    assert!(!s.grants.list(None, now + 10).await.unwrap().contains(&g));
    // a grant created already expired is never usable
    let mut dead = grant(&subj, "api", &["a"], None);
    dead.expires_at = now - 1;
    dead.created_at = now - 100;
    s.grants.create(&dead).await.unwrap();
    assert_eq!(s.grants.get(&dead.id, now).await.unwrap(), None);
    // still live before its end
    let got = s
        .grants
        .consume(&subj, "api", &sc(&["a"]), None, now + 9)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.id, g.id);
}

async fn grant_concurrent_consume(s: &Stores) {
    const N: u32 = 5;
    let now = unix_now();
    let subj = uniq("spiffe://td/conc");
    let g = grant(&subj, "api", &["a"], Some(N));
    s.grants.create(&g).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..3 * N {
        let grants = s.grants.clone();
        let subj = subj.clone();
        tasks.push(tokio::spawn(async move {
            grants
                .consume(&subj, "api", &sc(&["a"]), None, now)
                .await
                .unwrap()
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        if let Some(g) = t.await.unwrap() {
            got.push(g.remaining.unwrap());
        }
    }
    got.sort_unstable();
    assert_eq!(
        got,
        (1..=N).collect::<Vec<_>>(),
        "exactly N uses, each once"
    );
    assert_eq!(
        s.grants.get(&g.id, now).await.unwrap().unwrap().remaining,
        Some(0)
    );
    assert!(s
        .grants
        .consume(&subj, "api", &sc(&["a"]), None, now)
        .await
        .unwrap()
        .is_none());
}

async fn grant_unlimited(s: &Stores) {
    let now = unix_now();
    let subj = uniq("spiffe://td/unl");
    let g = grant(&subj, "api", &["a"], None);
    s.grants.create(&g).await.unwrap();
    for _ in 0..20 {
        let got = s
            .grants
            .consume(&subj, "api", &sc(&["a"]), None, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.remaining, None);
        assert_eq!(got.uses, None);
    }
    assert_eq!(s.grants.get(&g.id, now).await.unwrap(), Some(g));
}

/// A pending approval for `requester`, created now, expiring in 60 s.
pub fn approval(requester: &str, hash: &str) -> Approval {
    let now = unix_now();
    Approval {
        id: uuid::Uuid::new_v4().to_string(),
        request_hash: hash.into(),
        requester: requester.into(),
        subject: requester.into(),
        actors: vec![],
        owner: Some("alice@example.com".into()),
        policy: "p".into(),
        scopes: vec!["deploy:prod".into()],
        audience: "api".into(),
        task: Some("t-1".into()),
        authorization_details: Some(serde_json::json!([{"type": "deploy", "target": "prod"}])),
        created_at: now,
        expires_at: now + 60,
        state: ApprovalState::Pending,
        decided_by: None,
        decided_at: None,
        reason: None,
    }
}

async fn approval_lifecycle(s: &Stores) {
    let now = unix_now();
    let req = uniq("spiffe://td/apr");
    let a = approval(&req, "h1");
    assert_eq!(
        s.approvals.create_approval(&a).await.unwrap(),
        ApprovalCreated::Created
    );
    assert_eq!(
        s.approvals.get_approval(&a.id, now).await.unwrap(),
        Some(a.clone())
    );
    assert!(s.approvals.list_approvals(now).await.unwrap().contains(&a));
    // the creating request counts as a poll: at once is too fast, after the interval it is pending
    assert_eq!(
        s.approvals
            .poll(&a.id, &req, "h1", 5, now + 1)
            .await
            .unwrap(),
        PollOutcome::SlowDown
    );
    assert_eq!(
        s.approvals
            .poll(&a.id, &req, "h1", 5, now + 3)
            .await
            .unwrap(),
        PollOutcome::SlowDown,
        "a too-fast poll also counts as the last poll"
    );
    assert_eq!(
        s.approvals
            .poll(&a.id, &req, "h1", 5, now + 8)
            .await
            .unwrap(),
        PollOutcome::Pending
    );
    // approve, once
    let d = s
        .approvals
        .decide(
            &a.id,
            true,
            "spiffe://td/operator",
            Some("looks right"),
            now + 9,
        )
        .await
        .unwrap();
    let DecideOutcome::Decided(got) = d else {
        panic!("{d:?}")
    };
    assert_eq!(got.state, ApprovalState::Approved);
    assert_eq!(got.decided_by.as_deref(), Some("spiffe://td/operator"));
    assert_eq!(got.decided_at, Some(now + 9));
    assert_eq!(got.reason.as_deref(), Some("looks right"));
    assert_eq!(
        s.approvals
            .decide(&a.id, false, "spiffe://td/other", None, now + 9)
            .await
            .unwrap(),
        DecideOutcome::NotPending(ApprovalState::Approved)
    );
    // redeemed by the next poll, even a fast one (slow_down is a variant of pending)
    let PollOutcome::Redeemed(r) = s
        .approvals
        .poll(&a.id, &req, "h1", 5, now + 9)
        .await
        .unwrap()
    else {
        panic!("not redeemed")
    };
    assert_eq!(r.scopes, a.scopes);
    assert_eq!(r.audience, a.audience);
    assert_eq!(r.task, a.task);
    assert_eq!(r.authorization_details, a.authorization_details);
    assert_eq!(r.decided_by.as_deref(), Some("spiffe://td/operator"));
    // exactly once
    assert_eq!(
        s.approvals
            .poll(&a.id, &req, "h1", 5, now + 20)
            .await
            .unwrap(),
        PollOutcome::Invalid
    );
    assert_eq!(
        s.approvals
            .get_approval(&a.id, now + 20)
            .await
            .unwrap()
            .unwrap()
            .state,
        ApprovalState::Consumed
    );
    // unknown ids
    assert_eq!(
        s.approvals
            .poll(&uniq("nope"), &req, "h1", 5, now)
            .await
            .unwrap(),
        PollOutcome::Invalid
    );
    assert_eq!(
        s.approvals
            .decide(&uniq("nope"), true, "x", None, now)
            .await
            .unwrap(),
        DecideOutcome::NotFound
    );
    assert_eq!(
        s.approvals.get_approval(&uniq("nope"), now).await.unwrap(),
        None
    );
}

async fn approval_binding_and_denial(s: &Stores) {
    let now = unix_now();
    let req = uniq("spiffe://td/bind");
    let a = approval(&req, "h-bound");
    assert_eq!(
        s.approvals.create_approval(&a).await.unwrap(),
        ApprovalCreated::Created
    );
    // another requester, or another request, learns nothing and changes nothing
    for (who, hash) in [
        (uniq("spiffe://td/x").as_str(), "h-bound"),
        (req.as_str(), "h-other"),
    ] {
        assert_eq!(
            s.approvals
                .poll(&a.id, who, hash, 0, now + 10)
                .await
                .unwrap(),
            PollOutcome::Invalid
        );
    }
    s.approvals
        .decide(&a.id, true, "op", None, now + 1)
        .await
        .unwrap();
    assert_eq!(
        s.approvals
            .poll(&a.id, &req, "h-other", 0, now + 10)
            .await
            .unwrap(),
        PollOutcome::Invalid,
        "an approval is redeemed only by exactly the request it was made for"
    );
    assert!(matches!(
        s.approvals
            .poll(&a.id, &req, "h-bound", 0, now + 10)
            .await
            .unwrap(),
        PollOutcome::Redeemed(_)
    ));
    // denied stays denied
    let d = approval(&req, "h-deny");
    assert_eq!(
        s.approvals.create_approval(&d).await.unwrap(),
        ApprovalCreated::Created
    );
    let out = s
        .approvals
        .decide(&d.id, false, "op", Some("no"), now + 1)
        .await
        .unwrap();
    assert!(matches!(out, DecideOutcome::Decided(ref x) if x.state == ApprovalState::Denied));
    for t in [now + 2, now + 100] {
        assert_eq!(
            s.approvals.poll(&d.id, &req, "h-deny", 0, t).await.unwrap(),
            PollOutcome::Denied
        );
    }
}

async fn approval_expiry(s: &Stores) {
    let now = unix_now();
    let req = uniq("spiffe://td/aexp");
    let mut a = approval(&req, "h");
    a.expires_at = now + 10;
    assert_eq!(
        s.approvals.create_approval(&a).await.unwrap(),
        ApprovalCreated::Created
    );
    assert_eq!(
        s.approvals
            .poll(&a.id, &req, "h", 0, now + 10)
            .await
            .unwrap(),
        PollOutcome::Expired
    );
    assert_eq!(
        s.approvals
            .decide(&a.id, true, "op", None, now + 10)
            .await
            .unwrap(),
        DecideOutcome::Expired
    );
    // approved, then not redeemed in time
    let mut b = approval(&req, "h2");
    b.expires_at = now + 10;
    assert_eq!(
        s.approvals.create_approval(&b).await.unwrap(),
        ApprovalCreated::Created
    );
    s.approvals
        .decide(&b.id, true, "op", None, now + 1)
        .await
        .unwrap();
    assert_eq!(
        s.approvals
            .poll(&b.id, &req, "h2", 0, now + 11)
            .await
            .unwrap(),
        PollOutcome::Expired
    );
    // forgotten after the retention
    let gone = now + 10 + APPROVAL_RETAIN_SECS;
    assert_eq!(s.approvals.get_approval(&a.id, gone).await.unwrap(), None);
    assert!(!s
        .approvals
        .list_approvals(gone)
        .await
        .unwrap()
        .iter()
        .any(|x| x.id == a.id));
    assert_eq!(
        s.approvals.poll(&a.id, &req, "h", 0, gone).await.unwrap(),
        PollOutcome::Invalid
    );
}

async fn approval_concurrent_redeem(s: &Stores) {
    let now = unix_now();
    let req = uniq("spiffe://td/aconc");
    let a = approval(&req, "h");
    assert_eq!(
        s.approvals.create_approval(&a).await.unwrap(),
        ApprovalCreated::Created
    );
    s.approvals
        .decide(&a.id, true, "op", None, now)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let st = s.approvals.clone();
        let (id, req) = (a.id.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            st.poll(&id, &req, "h", 5, now).await.unwrap()
        }));
    }
    let mut redeemed = 0;
    for t in tasks {
        match t.await.unwrap() {
            PollOutcome::Redeemed(_) => redeemed += 1,
            PollOutcome::Invalid => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(redeemed, 1, "one approval, one token");
}

async fn approval_requester_cap(s: &Stores) {
    let req = uniq("spiffe://td/acap");
    for i in 0..MAX_APPROVALS_PER_REQUESTER {
        assert_eq!(
            s.approvals
                .create_approval(&approval(&req, &format!("h{i}")))
                .await
                .unwrap(),
            ApprovalCreated::Created,
            "{i}"
        );
    }
    assert_eq!(
        s.approvals
            .create_approval(&approval(&req, "one-too-many"))
            .await
            .unwrap(),
        ApprovalCreated::Full
    );
    // asking again for one already pending still finds it at the cap
    assert!(matches!(
        s.approvals
            .create_approval(&approval(&req, "h0"))
            .await
            .unwrap(),
        ApprovalCreated::Existing(_)
    ));
    // others are not affected
    assert_eq!(
        s.approvals
            .create_approval(&approval(&uniq("spiffe://td/acap2"), "h"))
            .await
            .unwrap(),
        ApprovalCreated::Created
    );
}

/// The same request (same hash, same requester) asked while the first ask
/// is pending finds it; another requester, another request, or an ask after
/// the first was decided or expired makes a new approval.
async fn approval_same_request_twice(s: &Stores) {
    let now = unix_now();
    let req = uniq("spiffe://td/atwice");
    let first = approval(&req, "h-twice");
    assert_eq!(
        s.approvals.create_approval(&first).await.unwrap(),
        ApprovalCreated::Created
    );
    let again = approval(&req, "h-twice");
    assert_eq!(
        s.approvals.create_approval(&again).await.unwrap(),
        ApprovalCreated::Existing(first.id.clone())
    );
    assert_eq!(
        s.approvals.get_approval(&again.id, now).await.unwrap(),
        None,
        "nothing stored for the second ask"
    );
    for other in [
        approval(&uniq("spiffe://td/atw2"), "h-twice"),
        approval(&req, "h-other"),
    ] {
        assert_eq!(
            s.approvals.create_approval(&other).await.unwrap(),
            ApprovalCreated::Created
        );
    }
    // once decided, a new ask is a new approval (and it is found in turn)
    s.approvals
        .decide(&first.id, false, "op", None, now)
        .await
        .unwrap();
    let after_decision = approval(&req, "h-twice");
    assert_eq!(
        s.approvals.create_approval(&after_decision).await.unwrap(),
        ApprovalCreated::Created
    );
    assert_eq!(
        s.approvals
            .create_approval(&approval(&req, "h-twice"))
            .await
            .unwrap(),
        ApprovalCreated::Existing(after_decision.id.clone())
    );
    // an ask after its expiry is a new approval
    let req2 = uniq("spiffe://td/atwexp");
    let mut short = approval(&req2, "h");
    short.expires_at = now + 5;
    assert_eq!(
        s.approvals.create_approval(&short).await.unwrap(),
        ApprovalCreated::Created
    );
    let mut later = approval(&req2, "h");
    later.created_at = now + 5;
    later.expires_at = now + 65;
    assert_eq!(
        s.approvals.create_approval(&later).await.unwrap(),
        ApprovalCreated::Created
    );
    // concurrent identical asks: one creates, the others find it
    let req3 = uniq("spiffe://td/atwconc");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let st = s.approvals.clone();
        let a = approval(&req3, "h");
        tasks.push(tokio::spawn(async move {
            st.create_approval(&a).await.unwrap()
        }));
    }
    let mut created = 0;
    let mut found = std::collections::HashSet::new();
    for t in tasks {
        match t.await.unwrap() {
            ApprovalCreated::Created => created += 1,
            ApprovalCreated::Existing(id) => {
                found.insert(id);
            }
            ApprovalCreated::Full => panic!("full"),
        }
    }
    assert_eq!(created, 1, "one pending approval for one request");
    assert!(found.len() <= 1, "{found:?}");
}

/// Issue 17 item 2: records of a chain are appended once each, in order,
/// however often (and however overlapping) a batch is sent again; the
/// checkpoint names the last one.
async fn audit_chain_append_is_idempotent(s: &Stores) {
    let (_, start) = s.audit.read(None, 1).await.unwrap();
    let node = uniq("node");
    let recs: Vec<AuditLine> = (1..=5u64)
        .map(|i| AuditLine {
            seq: i,
            hash: format!("{i:064}"),
            line: format!("{{\"node\":\"{node}\",\"seq\":{i}}}"),
        })
        .collect();
    s.audit
        .append_chain(&node, &recs[..3], 1_000_000)
        .await
        .unwrap();
    // a retry of the first batch with more, and a late copy of the first
    s.audit
        .append_chain(&node, &recs[..5], 1_000_000)
        .await
        .unwrap();
    s.audit
        .append_chain(&node, &recs[..3], 1_000_000)
        .await
        .unwrap();
    s.audit.append_chain(&node, &[], 1_000_000).await.unwrap();
    let (got, _) = s.audit.read(Some(&start), 100).await.unwrap();
    let mine: Vec<String> = got
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| l.contains(&node))
        .collect();
    assert_eq!(
        mine,
        recs.iter().map(|r| r.line.clone()).collect::<Vec<_>>(),
        "each record once, in order"
    );
    let cps = s.audit.checkpoints().await.unwrap();
    let cp = cps.iter().find(|c| c.node == node).expect("a checkpoint");
    assert_eq!((cp.seq, cp.hash.as_str()), (5, recs[4].hash.as_str()));
}

async fn audit_stream(s: &Stores) {
    // other runs may have written to the same stream: work from its end
    let (_, start) = s.audit.read(None, 1).await.unwrap();
    let recs: Vec<String> = (0..3)
        .map(|i| format!("{{\"n\":{i},\"u\":\"{}\"}}", uniq("a")))
        .collect();
    s.audit.append(&recs, 1_000_000).await.unwrap();
    s.audit.append(&[], 1_000_000).await.unwrap();
    let (got, c1) = s.audit.read(Some(&start), 10).await.unwrap();
    assert_eq!(
        got.iter().map(|x| x.1.clone()).collect::<Vec<_>>(),
        recs,
        "in order, as written"
    );
    assert!(got[0].0 > start && got[0].0 < got[1].0 && got[1].0 < got[2].0);
    assert_eq!(c1, got[2].0);
    // paging: limit, then resume from the cursor
    let (p1, c) = s.audit.read(Some(&start), 2).await.unwrap();
    assert_eq!(p1.len(), 2);
    let (p2, _) = s.audit.read(Some(&c), 2).await.unwrap();
    assert_eq!(p2.len(), 1);
    assert_eq!(p2[0].1, recs[2]);
    // nothing new: the cursor stays
    let (none, c2) = s.audit.read(Some(&c1), 10).await.unwrap();
    assert!(none.is_empty());
    assert_eq!(c2, c1);
    // without a cursor: the newest, oldest first
    let (last, _) = s.audit.read(None, 2).await.unwrap();
    assert_eq!(last[1].1, recs[2]);
    assert_eq!(last[0].1, recs[1]);
    // bounded: about max_len records are kept, the oldest trimmed first
    let many: Vec<String> = (0..1200).map(|i| format!("{{\"m\":{i}}}")).collect();
    for chunk in many.chunks(100) {
        s.audit.append(chunk, 200).await.unwrap();
    }
    let (kept, _) = s.audit.read(Some("0"), 10_000).await.unwrap();
    assert!(
        kept.len() >= 200 && kept.len() <= 400,
        "kept {} records",
        kept.len()
    );
    assert_eq!(kept.last().unwrap().1, many[1199]);
    assert!(s.audit.read(Some("not-a-cursor"), 1).await.is_err());
}
