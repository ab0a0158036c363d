//! Attenuation by re-exchange: a Tessera token exchanged for a narrower
//! one. Never wider, never longer, bound tokens only over their certificate,
//! and revoking a parent revokes every descendant.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use tessera::pki::LeafSpec;

fn tok(v: &Value) -> String {
    v["access_token"].as_str().unwrap().to_string()
}

fn re<'a>(parent: &'a str, aud: &'a str, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", TE),
        ("subject_token_type", ACCESS),
        ("subject_token", parent),
        ("audience", aud),
        ("scope", scope),
    ]
}

#[tokio::test]
async fn narrower_token_inherits_task_binding_and_lineage() {
    let b = TestBroker::start().await;
    let (s, v) = b
        .agent_token("tickets:read tickets:write", Some("triage-1"))
        .await;
    assert_eq!(s, 200);
    let parent = tok(&v);
    let (_, pc) = decode(&parent);
    let mut f = re(&parent, API, "tickets:read");
    f.push(("expires_in", "86400"));
    let (s, v) = b.token(&b.agent_client(), &f).await;
    assert_eq!(s, 200, "{v}");
    let child = tok(&v);
    let (_, cc) = decode(&child);
    assert_eq!(cc["sub"], AGENT);
    assert_eq!(cc["scope"], "tickets:read");
    assert_eq!(cc["txn"], "triage-1");
    assert_eq!(cc["cnf"], pc["cnf"]);
    assert_eq!(cc["ancestors"], json!([pc["jti"]]));
    assert!(
        cc["exp"].as_u64().unwrap() <= pc["exp"].as_u64().unwrap(),
        "never outlives its parent"
    );
    assert_ne!(cc["jti"], pc["jti"]);
    // and again: the lineage grows
    let (s, v) = b
        .token(&b.agent_client(), &re(&child, API, "tickets:read"))
        .await;
    assert_eq!(s, 200);
    let (_, gc) = decode(&tok(&v));
    assert_eq!(gc["ancestors"], json!([cc["jti"], pc["jti"]]));
    // the jwt token type works too
    let mut f = re(&parent, API, "tickets:read");
    f[1] = ("subject_token_type", JWT);
    assert_eq!(b.token(&b.agent_client(), &f).await.0, 200);
}

#[tokio::test]
async fn g71_g72_never_wider() {
    let b = TestBroker::start().await;
    let (_, v) = b.agent_token("tickets:read", None).await;
    let parent = tok(&v);
    // a scope the parent lacks, even one the policy allows
    let (s, v) = b
        .token(
            &b.agent_client(),
            &re(&parent, API, "tickets:read tickets:write"),
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    // an audience the granting policy does not allow (no A -> B edge)
    let (s, v) = b
        .token(
            &b.agent_client(),
            &re(&parent, "https://deploy.example.com", "tickets:read"),
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_target"))
    );
    // a different task
    let mut f = re(&parent, API, "tickets:read");
    f.push(("task", "other-task"));
    let (s, v) = b.token(&b.agent_client(), &f).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_request"))
    );
}

#[tokio::test]
async fn j108_g73_bound_parent_only_over_its_certificate() {
    let b = TestBroker::start().await;
    let (_, v) = b.agent_token("tickets:read", None).await;
    let parent = tok(&v);
    // no certificate
    let (s, v) = b.token(&b.anon(), &re(&parent, API, "tickets:read")).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_request"))
    );
    // same SPIFFE ID, rotated key: a different certificate
    let rotated = b.ca.issue(&LeafSpec::client_spiffe(AGENT)).unwrap();
    let (s, v) = b
        .token(&b.client(Some(&rotated)), &re(&parent, API, "tickets:read"))
        .await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_request"))
    );
    // another workload entirely (G73)
    let other =
        b.ca.issue(&LeafSpec::client_spiffe("spiffe://example.org/agent/other"))
            .unwrap();
    let (s, v) = b
        .token(&b.client(Some(&other)), &re(&parent, API, "tickets:read"))
        .await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_request"))
    );
}

#[tokio::test]
async fn g73_unbound_oidc_token_re_exchanges_anonymously_within_its_policy() {
    let b = TestBroker::start().await;
    let st = b.ci_token();
    let mut f = TestBroker::oidc_form(&st);
    f[4] = ("scope", "deploy:read deploy:write");
    let (s, v) = b.token(&b.anon(), &f).await;
    assert_eq!(s, 200, "{v}");
    let parent = tok(&v);
    let (s, v) = b
        .token(
            &b.anon(),
            &re(&parent, "https://deploy.example.com", "deploy:read"),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, c) = decode(&tok(&v));
    assert_eq!(c["sub"], "repo:acme/app:ref:refs/heads/main");
    assert!(c.get("cnf").is_none());
    // presented over mTLS by a workload that is not its holder: refused (G73)
    let (s, _) = b
        .token(
            &b.agent_client(),
            &re(&parent, "https://deploy.example.com", "deploy:read"),
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn h89_revoking_a_parent_revokes_every_descendant() {
    let b = TestBroker::start().await;
    let (_, v) = b.agent_token("tickets:read tickets:write", None).await;
    let parent = tok(&v);
    let (_, v) = b
        .token(
            &b.agent_client(),
            &re(&parent, API, "tickets:read tickets:write"),
        )
        .await;
    let child = tok(&v);
    let (_, v) = b
        .token(&b.agent_client(), &re(&child, API, "tickets:read"))
        .await;
    let grandchild = tok(&v);
    let (_, other) = b.agent_token("tickets:read", None).await;
    let other = tok(&other);
    for t in [&parent, &child, &grandchild, &other] {
        assert_eq!(b.introspect(t).await["active"], true);
    }
    let jti = decode(&parent).1["jti"].as_str().unwrap().to_string();
    let (s, _) = b
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"kind": "jti", "value": jti})),
        )
        .await;
    assert_eq!(s, 201);
    for t in [&parent, &child, &grandchild] {
        assert_eq!(b.introspect(t).await["active"], false);
    }
    assert_eq!(
        b.introspect(&other).await["active"],
        true,
        "an unaffected token stays active"
    );
    // a revoked token, or a descendant of one, is refused as a subject token
    for t in [&parent, &grandchild] {
        let (s, v) = b
            .token(&b.agent_client(), &re(t, API, "tickets:read"))
            .await;
        assert_eq!(
            (s.as_u16(), v["error"].as_str()),
            (400, Some("invalid_request"))
        );
    }
}

#[tokio::test]
async fn revoking_the_task_or_grant_covers_derived_tokens() {
    let policies = DEFAULT_POLICIES.replace(
        "scopes = [\"tickets:read\", \"tickets:write\"]",
        "scopes = [\"tickets:read\", \"tickets:write\", \"tickets:delete\"]\njit_scopes = [\"tickets:delete\"]",
    );
    let b = TestBroker::start_with(Options {
        policies,
        ..Default::default()
    })
    .await;
    let (s, g) = b
        .admin(Method::POST, "/admin/v1/grants", Some(json!({"subject": AGENT, "scope": "tickets:delete", "audience": API, "ttl": "5m", "uses": 1})))
        .await;
    assert_eq!(s, 201);
    let (s, v) = b
        .agent_token("tickets:read tickets:delete", Some("jit-task"))
        .await;
    assert_eq!(s, 200, "{v}");
    let parent = tok(&v);
    // the derived token keeps the grant (no new use consumed) and the task
    let (s, v) = b
        .token(&b.agent_client(), &re(&parent, API, "tickets:delete"))
        .await;
    assert_eq!(s, 200, "{v}");
    let child = tok(&v);
    let (_, c) = decode(&child);
    assert_eq!(c["grant"], g["id"]);
    assert_eq!(c["txn"], "jit-task");
    let (s, _) = b
        .admin(
            Method::DELETE,
            &format!("/admin/v1/grants/{}", g["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b.introspect(&child).await["active"], false);
}

/// Issue 23 item 5: one expiry rule for introspection and re-exchange — a
/// token is live until the second before `exp` and dead from `exp` on, for
/// both (no leeway in one and not the other).
#[tokio::test]
async fn introspection_and_reexchange_agree_at_the_expiry_boundary() {
    use std::sync::Arc;
    use tessera::clock::ManualClock;
    let start = tessera::testkit::now();
    let clock = Arc::new(ManualClock::new(start));
    let b = TestBroker::start_with(Options {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    let (s, v) = b.agent_token("tickets:read", None).await;
    assert_eq!(s, 200, "{v}");
    let parent = tok(&v);
    let exp = decode(&parent).1["exp"].as_u64().unwrap();

    clock.set(exp - 1);
    assert_eq!(b.introspect(&parent).await["active"], true);
    let (s, v) = b
        .token(&b.agent_client(), &re(&parent, API, "tickets:read"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["expires_in"], 1);

    clock.set(exp);
    assert_eq!(b.introspect(&parent).await["active"], false);
    let (s, v) = b
        .token(&b.agent_client(), &re(&parent, API, "tickets:read"))
        .await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
}
