//! The anomaly guard end to end over real TLS: a configured rate answers
//! `429 slow_down` with `Retry-After` and lets the identity through once the
//! window has moved; a new audience steps up to a human approval while a
//! known one does not; a refusal streak revokes the identity's tokens and
//! blocks it. Every action is audited and counted; other identities are
//! not affected. Time is a manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tessera::clock::{Clock, ManualClock, SystemClock};

const OTHER: &str = "https://other.example.com";

const GUARD_POLICIES: &str = r#"
[[policies]]
name = "agents"
owner = "alice@example.com"
match = { issuer = "mtls", subject = "spiffe://example.org/agent/*" }
audiences = ["https://api.example.com", "https://other.example.com"]
scopes = ["tickets:read", "tickets:write"]
max_ttl = "10m"

[[policies]]
name = "ci"
owner = "bob@example.com"
match = { issuer = "ci", subject = "repo:acme/app:ref:refs/heads/*", claims = { "env" = "prod" } }
audiences = ["https://deploy.example.com"]
scopes = ["deploy:read", "deploy:write"]
max_ttl = "5m"
"#;

/// A broker with `guard` under `[guard]` and a manual clock standing at the
/// start of a 10-second bucket.
async fn broker(guard: &str, extra: &str) -> (TestBroker, Arc<ManualClock>) {
    let now = SystemClock.now();
    let clock = Arc::new(ManualClock::new(now - now % 10));
    let b = TestBroker::start_with(Options {
        policies: GUARD_POLICIES.into(),
        extra: format!("[guard]\nenabled = true\n{guard}\n{extra}\n"),
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    (b, clock)
}

/// `/token` with the response headers.
async fn raw_token(
    b: &TestBroker,
    client: &reqwest::Client,
    form: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let r = client
        .post(b.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(form))
        .send()
        .await
        .unwrap();
    let s = r.status();
    let h = r.headers().clone();
    (s, h, r.json().await.unwrap_or(Value::Null))
}

fn agent_form<'a>(aud: &'a str, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", TE),
        ("subject_token_type", MTLS),
        ("audience", aud),
        ("scope", scope),
    ]
}

/// The value of one sample on `/metrics` (0 when absent).
async fn metric(b: &TestBroker, sample: &str) -> f64 {
    metric_at(&b.ops_url("/metrics"), sample).await
}

fn guard_sample(action: &str, trigger: &str) -> String {
    format!("tessera_guard_actions_total{{action=\"{action}\",trigger=\"{trigger}\"}}")
}

async fn ci_ok(b: &TestBroker) {
    let t = b.ci_token();
    let (s, v) = b.token(&b.anon(), &TestBroker::oidc_form(&t)).await;
    assert_eq!(s, 200, "another identity is not affected: {v}");
}

#[tokio::test]
async fn rate_above_max_rate_slows_down_until_the_window_moves() {
    let (b, clock) = broker("window = \"10s\"\nmax_rate = 3", "").await;
    let before = metric(&b, &guard_sample("slow_down", "rate")).await;
    let agent = b.agent_client();
    for _ in 0..3 {
        let (s, _, v) = raw_token(&b, &agent, &agent_form(API, "tickets:read")).await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, h, v) = raw_token(&b, &agent, &agent_form(API, "tickets:read")).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"], "slow_down");
    // 3 in this bucket: one more fits once 3 * (10 - e) / 10 <= 2, i.e. 4 s
    // into the next bucket: 14 s from now.
    assert_eq!(h["retry-after"], "14");
    assert_eq!(h["cache-control"], "no-store");
    ci_ok(&b).await;

    // Not yet ...
    clock.advance(13);
    let (s, _, _) = raw_token(&b, &agent, &agent_form(API, "tickets:read")).await;
    assert_eq!(s, 429);
    // ... now.
    clock.advance(1);
    let (s, _, v) = raw_token(&b, &agent, &agent_form(API, "tickets:read")).await;
    assert_eq!(s, 200, "{v}");

    // audited with the precise reason, and counted
    let recs = b.audit_records().await;
    let limited: Vec<_> = recs
        .iter()
        .filter(|r| r["reason"] == "guard_rate")
        .collect();
    assert_eq!(limited.len(), 2, "{recs:?}");
    for r in limited {
        assert_eq!(r["event"], "refused");
        assert_eq!(r["error"], "slow_down");
        assert_eq!(r["subject"], AGENT);
        assert_eq!(r["audience"], API);
    }
    let after = metric(&b, &guard_sample("slow_down", "rate")).await;
    assert!(after >= before + 2.0, "{before} -> {after}");
    b.stop().await;
}

#[tokio::test]
async fn new_audience_steps_up_to_approval_and_a_known_one_does_not() {
    let (b, _clock) = broker(
        "on_new_audience = \"approval\"",
        "[approvals]\ninterval = \"0s\"",
    )
    .await;
    let before = metric(&b, &guard_sample("approval", "new_audience")).await;
    let agent = b.agent_client();
    // The first audience is learned.
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
    // A new one waits for a human, though tickets:read is no approval scope.
    let (s, _, v) = raw_token(&b, &agent, &agent_form(OTHER, "tickets:read")).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("authorization_pending")),
        "{v}"
    );
    let id = v["approval_id"].as_str().unwrap().to_string();
    // The known audience is not affected meanwhile.
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
    // Polling is pending until a human approves.
    let mut poll = agent_form(OTHER, "tickets:read");
    poll.push(("approval_id", &id));
    let (_, _, v) = raw_token(&b, &agent, &poll).await;
    assert_eq!(v["error"], "authorization_pending", "{v}");
    let (s, v) = b
        .admin(
            Method::POST,
            &format!("/admin/v1/approvals/{id}/approve"),
            Some(json!({"reason": "new integration, expected"})),
        )
        .await;
    assert!(s.is_success(), "{v}");
    let (s, _, v) = raw_token(&b, &agent, &poll).await;
    assert_eq!(s, 200, "{v}");
    let (_, claims) = decode(v["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], OTHER);
    // Now known.
    let (s, _, v) = raw_token(&b, &agent, &agent_form(OTHER, "tickets:read")).await;
    assert_eq!(s, 200, "{v}");

    let recs = b.audit_records().await;
    let stepped: Vec<_> = recs
        .iter()
        .filter(|r| r["reason"] == "guard_new_audience")
        .collect();
    assert_eq!(stepped.len(), 1, "only the step-up itself: {recs:?}");
    assert_eq!(stepped[0]["error"], "authorization_pending");
    assert_eq!(stepped[0]["subject"], AGENT);
    assert_eq!(stepped[0]["audience"], OTHER);
    let after = metric(&b, &guard_sample("approval", "new_audience")).await;
    assert!(after >= before + 1.0, "{before} -> {after}");
    b.stop().await;
}

#[tokio::test]
async fn rate_step_up_can_be_redeemed_after_the_window_moved() {
    let (b, clock) = broker(
        "window = \"10s\"\nmax_rate = 1\non_rate = \"approval\"",
        "[approvals]\ninterval = \"0s\"",
    )
    .await;
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
    let (_, v) = b.agent_token("tickets:read", None).await;
    assert_eq!(v["error"], "authorization_pending", "{v}");
    let id = v["approval_id"].as_str().unwrap().to_string();
    let (s, v) = b
        .admin(
            Method::POST,
            &format!("/admin/v1/approvals/{id}/approve"),
            Some(json!({"reason": "batch job, expected"})),
        )
        .await;
    assert!(s.is_success(), "{v}");
    // The rate no longer fires, yet the approved request is redeemed.
    clock.advance(30);
    let mut poll = agent_form(API, "tickets:read");
    poll.push(("approval_id", &id));
    let (s, _, v) = raw_token(&b, &b.agent_client(), &poll).await;
    assert_eq!(s, 200, "{v}");
    let recs = b.audit_records().await;
    assert!(recs
        .iter()
        .any(|r| r["reason"] == "guard_rate" && r["error"] == "authorization_pending"));
    b.stop().await;
}

#[tokio::test]
async fn refusal_streak_revokes_the_identity_and_blocks_it() {
    let (b, clock) = broker(
        "refusal_streak = 3\non_refusal_streak = \"revoke\"\nblock_for = \"1m\"",
        "",
    )
    .await;
    let before = metric(&b, &guard_sample("revoke", "refusal_streak")).await;
    let (s, v) = b.agent_token("tickets:read", None).await;
    assert_eq!(s, 200, "{v}");
    let earlier = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(b.introspect(&earlier).await["active"], true);

    // Probing: scopes and audiences policy does not allow.
    let agent = b.agent_client();
    let (s, _, v) = raw_token(&b, &agent, &agent_form(API, "admin:all")).await;
    assert_eq!(v["error"], "invalid_scope", "{s} {v}");
    let (_, _, v) = raw_token(
        &b,
        &agent,
        &agent_form("https://bank.example.com", "tickets:read"),
    )
    .await;
    assert_eq!(v["error"], "invalid_target");
    assert_eq!(b.introspect(&earlier).await["active"], true, "not yet");
    let (_, _, v) = raw_token(&b, &agent, &agent_form(API, "root")).await;
    assert_eq!(v["error"], "invalid_scope");

    // The third refusal revoked the earlier token and blocked the agent.
    assert_eq!(b.introspect(&earlier).await["active"], false);
    let (s, v) = b.agent_token("tickets:read", None).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_request"))
    );
    ci_ok(&b).await;
    // The block ends after block_for.
    clock.advance(61);
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);

    let recs = b.audit_records().await;
    let revoked: Vec<_> = recs
        .iter()
        .filter(|r| r["event"] == "revoked" && r["reason"] == "guard_refusal_streak")
        .collect();
    assert_eq!(revoked.len(), 1, "{recs:?}");
    assert_eq!(revoked[0]["subject"], AGENT);
    let after = metric(&b, &guard_sample("revoke", "refusal_streak")).await;
    assert!(after >= before + 1.0, "{before} -> {after}");
    b.stop().await;
}

#[tokio::test]
async fn refusal_streak_slow_down_holds_for_the_cooldown() {
    let (b, clock) = broker("refusal_streak = 2\ncooldown = \"30s\"", "").await;
    let agent = b.agent_client();
    for _ in 0..2 {
        let (_, _, v) = raw_token(&b, &agent, &agent_form(API, "admin:all")).await;
        assert_eq!(v["error"], "invalid_scope");
    }
    let (s, h, v) = raw_token(&b, &agent, &agent_form(API, "tickets:read")).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(h["retry-after"], "30");
    ci_ok(&b).await;
    clock.advance(30);
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
    let recs = b.audit_records().await;
    assert!(recs
        .iter()
        .any(|r| r["reason"] == "guard_refusal_streak" && r["error"] == "slow_down"));
    // the refusal that tripped it says so
    assert!(recs.iter().any(|r| r["reason"] == "scope_not_allowed"
        && r["detail"]
            .as_str()
            .unwrap_or("")
            .contains("guard_refusal_streak")));
    b.stop().await;
}

#[tokio::test]
async fn guard_off_by_default_changes_nothing() {
    let b = TestBroker::start_with(Options {
        policies: GUARD_POLICIES.into(),
        ..Default::default()
    })
    .await;
    for _ in 0..30 {
        assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
    }
    let agent = b.agent_client();
    let (s, _, _) = raw_token(&b, &agent, &agent_form(OTHER, "tickets:read")).await;
    assert_eq!(s, 200);
    b.stop().await;
}
