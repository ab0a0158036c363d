//! Revocation, introspection, the feed and JIT grants, end to end. Every
//! scenario runs against the memory store and against a private
//! `redis-server` the test starts itself (skipped loudly when redis-server is
//! missing, failing when TESSERA_REQUIRE_REDIS=1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tessera::testkit_redis::{redis_or_skip, RedisServer};

const JIT_POLICIES: &str = r#"
[[policies]]
name = "agents"
owner = "alice@example.com"
match = { issuer = "mtls", subject = "spiffe://example.org/agent/*" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read", "tickets:write", "tickets:delete"]
jit_scopes = ["tickets:delete"]
max_ttl = "10m"
"#;

/// Memory and (when available) Redis variants of the same options.
async fn backends() -> Vec<(Options, Option<RedisServer>)> {
    let mut v = vec![(
        Options {
            policies: JIT_POLICIES.into(),
            ..Default::default()
        },
        None,
    )];
    if let Some(r) = redis_or_skip().unwrap() {
        v.push((
            Options {
                policies: JIT_POLICIES.into(),
                store_url: Some(r.url()),
                ..Default::default()
            },
            Some(r),
        ));
    }
    v
}

fn tok(v: &Value) -> String {
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn introspection_is_for_listed_callers_and_reports_active_tokens() {
    for (o, _r) in backends().await {
        let b = TestBroker::start_with(o).await;
        let (s, v) = b.agent_token("tickets:read", Some("t-1")).await;
        assert_eq!(s, 200);
        let t = tok(&v);
        let i = b.introspect(&t).await;
        assert_eq!(i["active"], true);
        assert_eq!(i["sub"], AGENT);
        assert_eq!(i["scope"], "tickets:read");
        assert_eq!(i["txn"], "t-1");
        assert_eq!(i["token_type"], "Bearer");
        // garbage, foreign and tampered tokens are simply inactive, with no other members
        for bad in ["x", "a.b.c", &t[..t.len() - 3], &b.ci_token()] {
            let i = b.introspect(bad).await;
            assert_eq!(i, json!({"active": false}));
        }
        // callers not listed: 401
        for c in [b.anon(), b.agent_client()] {
            let r = c
                .post(b.url("/introspect"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(encode_form(&[("token", &t)]))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401);
        }
    }
}

#[tokio::test]
async fn revoke_by_jti_subject_and_task() {
    for (o, _r) in backends().await {
        let b = TestBroker::start_with(o).await;
        let (_, a) = b.agent_token("tickets:read", Some("task-a")).await;
        let (_, bb) = b.agent_token("tickets:read", Some("task-b")).await;
        let (_, c) = b.agent_token("tickets:read", Some("task-c")).await;
        let (a, bb, c) = (tok(&a), tok(&bb), tok(&c));
        let jti_a = decode(&a).1["jti"].as_str().unwrap().to_string();

        // by jti: only that token
        let (s, v) = b
            .admin(
                Method::POST,
                "/admin/v1/revocations",
                Some(json!({"kind": "jti", "value": jti_a})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(b.introspect(&a).await["active"], false);
        assert_eq!(
            b.introspect(&bb).await["active"],
            true,
            "unaffected token stays active"
        );

        // by task
        let (s, _) = b
            .admin(
                Method::POST,
                "/admin/v1/revocations",
                Some(json!({"kind": "task", "value": "task-b"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(b.introspect(&bb).await["active"], false);
        assert_eq!(b.introspect(&c).await["active"], true);

        // by subject: every token issued until now
        let (s, _) = b
            .admin(
                Method::POST,
                "/admin/v1/revocations",
                Some(json!({"kind": "subject", "value": AGENT})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(b.introspect(&c).await["active"], false);
        // a token issued after the revocation second is active again
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (s, d) = b.agent_token("tickets:read", None).await;
        assert_eq!(s, 200);
        assert_eq!(b.introspect(&tok(&d)).await["active"], true);

        // the feed lists all three, in order, with a cursor
        let r = b
            .client(Some(&b.payments))
            .get(b.url("/revocations"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let feed: Value = r.json().await.unwrap();
        let kinds: Vec<&str> = feed["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["jti", "task", "subject"]);
        let e = &feed["entries"][0];
        assert_eq!(e["value"], jti_a);
        assert!(e["expires_at"].as_u64().unwrap() > e["revoked_at"].as_u64().unwrap());
        let cursor = feed["cursor"].as_str().unwrap().to_string();
        let r = b
            .client(Some(&b.payments))
            .get(b.url(&format!("/revocations?since={cursor}")))
            .send()
            .await
            .unwrap();
        let after: Value = r.json().await.unwrap();
        assert_eq!(
            after["entries"].as_array().unwrap().len(),
            0,
            "since is exclusive"
        );
        assert_eq!(after["cursor"], cursor);
        // not for everyone
        let r = b
            .agent_client()
            .get(b.url("/revocations"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
}

/// Kill switch on the demo agent: its tokens revoked, the agent blocked 30 min.
async fn block_agent(b: &TestBroker) {
    let (s, _) = b
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"kind": "subject", "value": AGENT, "block_for": "30m"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn kill_switch_blocks_new_exchanges() {
    for (o, _r) in backends().await {
        let b = TestBroker::start_with(o).await;
        block_agent(&b).await;
        let (s, v) = b.agent_token("tickets:read", None).await;
        assert_eq!(
            (s.as_u16(), v["error"].as_str()),
            (400, Some("invalid_request"))
        );
    }
}

#[tokio::test]
async fn holder_revocation_rfc7009() {
    for (o, _r) in backends().await {
        let b = TestBroker::start_with(o).await;
        let (_, v) = b.agent_token("tickets:read", None).await;
        let t = tok(&v);
        let post = |c: reqwest::Client, form: Vec<(&'static str, String)>| {
            let url = b.url("/revoke");
            async move {
                let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
                c.post(url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(encode_form(&f))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        };
        // a bound token cannot be revoked by someone else (200, but no effect)
        assert_eq!(post(b.anon(), vec![("token", t.clone())]).await, 200);
        assert_eq!(b.introspect(&t).await["active"], true);
        // unknown hint
        assert_eq!(
            post(
                b.agent_client(),
                vec![("token", t.clone()), ("token_type_hint", "saml".into())]
            )
            .await,
            400
        );
        // its holder can
        assert_eq!(
            post(
                b.agent_client(),
                vec![
                    ("token", t.clone()),
                    ("token_type_hint", "access_token".into())
                ]
            )
            .await,
            200
        );
        assert_eq!(b.introspect(&t).await["active"], false);
        // unknown tokens: 200
        assert_eq!(
            post(b.anon(), vec![("token", "nonsense".into())]).await,
            200
        );
    }
}

#[tokio::test]
async fn jit_grants_are_consumed_exactly_and_revocable() {
    for (o, _r) in backends().await {
        let b = TestBroker::start_with(o).await;
        // without a grant the JIT scope is refused
        let (s, v) = b.agent_token("tickets:read tickets:delete", None).await;
        assert_eq!(
            (s.as_u16(), v["error"].as_str()),
            (400, Some("invalid_scope"))
        );
        // a 2-use grant for 60 s
        let (s, g) = b
            .admin(
                Method::POST,
                "/admin/v1/grants",
                Some(json!({"subject": AGENT, "scope": "tickets:delete", "audience": API, "ttl": "60s", "uses": 2})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{g}");
        let gid = g["id"].as_str().unwrap().to_string();
        let mut tokens = Vec::new();
        for _ in 0..2 {
            let (s, v) = b.agent_token("tickets:read tickets:delete", None).await;
            assert_eq!(s, 200, "{v}");
            let (_, c) = decode(&tok(&v));
            assert_eq!(c["grant"], gid.as_str());
            assert!(
                c["exp"].as_u64().unwrap() <= g["expires_at"].as_u64().unwrap(),
                "never outlives the grant"
            );
            tokens.push(tok(&v));
        }
        let (s, v) = b.agent_token("tickets:delete", None).await;
        assert_eq!(
            (s.as_u16(), v["error"].as_str()),
            (400, Some("invalid_scope")),
            "uses exhausted"
        );
        // non-JIT scopes never touch grants
        assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
        // listed, then revoked with its tokens
        let (_, l) = b
            .admin(
                Method::GET,
                &format!("/admin/v1/grants?subject={}", urlenc(AGENT)),
                None,
            )
            .await;
        assert_eq!(l["grants"][0]["remaining"], 0);
        let (s, _) = b
            .admin(Method::DELETE, &format!("/admin/v1/grants/{gid}"), None)
            .await;
        assert_eq!(s, 200);
        for t in &tokens {
            assert_eq!(b.introspect(t).await["active"], false);
        }
        let (s, _) = b
            .admin(Method::DELETE, &format!("/admin/v1/grants/{gid}"), None)
            .await;
        assert_eq!(s, 404);
    }
}

fn urlenc(s: &str) -> String {
    encode_form(&[("x", s)])[2..].to_string()
}

#[tokio::test]
async fn h86_ten_n_concurrent_exchanges_consume_exactly_n_uses() {
    for (o, _r) in backends().await {
        let b = TestBroker::start_with(o).await;
        let n = 5;
        let (s, v) = b
            .admin(
                Method::POST,
                "/admin/v1/grants",
                Some(json!({"subject": AGENT, "scope": "tickets:delete", "audience": API, "ttl": "60s", "uses": n})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let mut tasks = Vec::new();
        for _ in 0..10 * n {
            let c = b.agent_client();
            let url = b.url("/token");
            tasks.push(tokio::spawn(async move {
                c.post(url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(encode_form(&[
                        ("grant_type", TE),
                        ("subject_token_type", MTLS),
                        ("audience", API),
                        ("scope", "tickets:delete"),
                    ]))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap() == 200 {
                ok += 1;
            }
        }
        assert_eq!(ok, n, "exactly N tokens from an N-use grant");
    }
}

#[tokio::test]
async fn m119_m120_admin_api_is_for_operators_only_and_bounds_grants() {
    let b = TestBroker::start_with(Options {
        policies: JIT_POLICIES.into(),
        ..Default::default()
    })
    .await;
    for c in [b.anon(), b.agent_client(), b.client(Some(&b.payments))] {
        let r = c
            .post(b.url("/admin/v1/revocations"))
            .json(&json!({"kind": "task", "value": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert!(v["message"].as_str().unwrap().contains("not authorised"));
    }
    // bad input names the cause
    for body in [
        json!({"kind": "jti", "value": "not-a-uuid"}),
        json!({"kind": "bogus", "value": "x"}),
        json!({"kind": "task", "value": "a b"}),
        json!({"kind": "task", "value": "t", "block_for": "30m"}),
        json!({"kind": "subject", "value": "x", "extra": 1}),
    ] {
        let (s, v) = b
            .admin(Method::POST, "/admin/v1/revocations", Some(body.clone()))
            .await;
        assert_eq!(s, 400, "{body} -> {v}");
        assert!(v["message"].is_string());
    }
    for body in [
        json!({"subject": AGENT, "scope": "a", "audience": API, "ttl": "48h"}),
        json!({"subject": AGENT, "scope": "a", "audience": API, "ttl": "1m", "uses": 0}),
        json!({"subject": "", "scope": "a", "audience": API, "ttl": "1m"}),
        json!({"subject": AGENT, "scope": "", "audience": API, "ttl": "1m"}),
        json!({"subject": AGENT, "scope": "*", "audience": API, "ttl": "1m"}),
        json!({"subject": AGENT, "scope": "tickets:*", "audience": API, "ttl": "1m"}),
        json!({"subject": AGENT, "scope": "a", "audience": "*", "ttl": "1m"}),
        json!({"subject": AGENT, "scope": "a", "audience": API, "ttl": "1m", "uses": 1_000_000_000u64}),
    ] {
        let (s, _) = b.admin(Method::POST, "/admin/v1/grants", Some(body)).await;
        assert_eq!(s, 400);
    }
}

#[tokio::test]
async fn live_feed_streams_new_revocations() {
    for (o, _r) in backends().await {
        let b = TestBroker::start_with(o).await;
        let mut resp = b
            .client(Some(&b.payments))
            .get(b.url("/revocations"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let (s, _) = b
            .admin(
                Method::POST,
                "/admin/v1/revocations",
                Some(json!({"kind": "task", "value": "streamed-task"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        let mut buf = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !buf.contains("streamed-task") {
            let chunk = tokio::time::timeout_at(deadline, resp.chunk())
                .await
                .expect("event within 5 s")
                .unwrap()
                .unwrap();
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(buf.contains("event: revocation"));
        assert!(buf.contains("id: "));
    }
}

#[tokio::test]
async fn k109_k110_introspection_privacy_and_inactive_tokens() {
    let b = TestBroker::start_with(Options {
        introspection_extra: format!(
            "audiences = {{ \"{PAYMENTS}\" = [\"https://payments.example.com\"] }}"
        ),
        ..Default::default()
    })
    .await;
    let (_, v) = b.agent_token("tickets:read", None).await;
    let t = tok(&v);
    // payments-api may only see tokens for its own audience
    assert_eq!(b.introspect(&t).await, json!({"active": false}));
    // an operator sees every audience
    let r = b
        .client(Some(&b.operator))
        .post(b.url("/introspect"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&[("token", &t)]))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["active"], true);
    // expired (a token signed by the broker's own key with exp in the past is
    // hard to forge from outside: use a 1 s token and wait)
    let (_, v) = b
        .token(
            &b.agent_client(),
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", API),
                ("scope", "tickets:read"),
                ("expires_in", "1"),
            ],
        )
        .await;
    let short = tok(&v);
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let r = b
        .client(Some(&b.operator))
        .post(b.url("/introspect"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&[("token", &short)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"active": false}));
}

/// H90: revocation values are validated and bounded server-side: an
/// oversized, binary or pattern-like `jti` is refused with a reason; a
/// well-formed jti the broker never minted is accepted (harmless: its key
/// is a fixed-size hash that expires with the longest token lifetime) and
/// changes nothing for other tokens.
#[tokio::test]
async fn h90_revocation_values_are_validated_and_bounded() {
    let b = TestBroker::start_with(Options {
        policies: JIT_POLICIES.into(),
        ..Default::default()
    })
    .await;
    let (_, v) = b.agent_token("tickets:read", Some("h90")).await;
    let live = tok(&v);
    for value in [
        "x".repeat(5000),
        "\u{0}\u{1}binary".to_string(),
        "a:b*{c}".to_string(),
        "6f1c2a4e-0000-4000-8000-00000000000*".to_string(),
        String::new(),
    ] {
        let (s, v) = b
            .admin(
                Method::POST,
                "/admin/v1/revocations",
                Some(json!({"kind": "jti", "value": value})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        let m = v["message"].as_str().unwrap();
        assert!(m.contains("jti") || m.contains("value"), "the cause: {v}");
    }
    for (kind, value) in [("task", "t".repeat(5000)), ("subject", "s".repeat(5000))] {
        let (s, v) = b
            .admin(
                Method::POST,
                "/admin/v1/revocations",
                Some(json!({"kind": kind, "value": value})),
            )
            .await;
        assert_eq!(s, 400, "{kind}: {v}");
    }
    let never = uuid::Uuid::new_v4().to_string();
    let (s, v) = b
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"kind": "jti", "value": never})),
        )
        .await;
    assert!(s.is_success(), "{v}");
    assert_eq!(b.introspect(&live).await["active"], true);
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
}

/// The kill switch can be undone (issue 21 item 1): `tessera unblock` lifts
/// a block at once (audited), `tessera blocks list` shows what is in force
/// with an absolute end and the time left, `tessera revocations list` shows
/// the live revocations; a block never shortens a longer one, and the CLI
/// says until when the block really runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch_is_listed_and_undone_from_the_cli() {
    for (o, _r) in backends().await {
        let b = TestBroker::start_with(o).await;
        let (c, out, err) = b.cli(&["revoke", "--subject", AGENT, "--block-for", "30m"]);
        assert_eq!(c, 0, "{err}");
        assert!(
            out.contains("refused until 20") && out.contains("(in 30m)"),
            "{out}"
        );
        assert!(out.contains("tessera unblock --subject"), "{out}");
        assert!(!out.contains("until in"), "{out}");
        assert!(err.is_empty(), "a matched subject gets no warning: {err}");
        let (s, _) = b.agent_token("tickets:read", None).await;
        assert_eq!(s, 400);

        // a shorter block does not shorten it, and the answer says so
        let (c, out, err) = b.cli(&["revoke", "--subject", AGENT, "--block-for", "1s"]);
        assert_eq!(c, 0, "{err}");
        assert!(out.contains("(in 30m)") || out.contains("(in 29m"), "{out}");

        let (c, out, err) = b.cli(&["blocks", "list"]);
        assert_eq!(c, 0, "{err}");
        assert!(out.contains(AGENT) && out.contains("1 block"), "{out}");
        let (c, out, _) = b.cli(&["blocks", "list", "--json"]);
        assert_eq!(c, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["blocks"][0]["subject"], AGENT);

        let (c, out, err) = b.cli(&["revocations", "list"]);
        assert_eq!(c, 0, "{err}");
        assert!(out.contains("subject") && out.contains(AGENT), "{out}");
        assert!(out.contains("2 revocations"), "{out}");

        // the undo
        let (c, out, err) = b.cli(&["unblock", "--subject", AGENT, "--reason", "demo"]);
        assert_eq!(c, 0, "{err}");
        assert!(out.contains("unblocked"), "{out}");
        let (s, v) = b.agent_token("tickets:read", None).await;
        assert_eq!(s, 200, "{v}");
        let (c, out, _) = b.cli(&["blocks", "list"]);
        assert_eq!(c, 0);
        assert!(out.contains("no blocks in force"), "{out}");
        // nothing to lift: exit 1, naming why
        let (c, _, err) = b.cli(&["unblock", "--subject", AGENT]);
        assert_eq!(c, 1);
        assert!(err.contains("is not blocked"), "{err}");
        let records = b.audit_records().await;
        let unblocked: Vec<_> = records
            .iter()
            .filter(|r| r["event"] == "unblocked")
            .collect();
        assert_eq!(unblocked.len(), 1, "{records:?}");
        assert_eq!(unblocked[0]["subject"], AGENT);
        assert_eq!(
            unblocked[0]["client"],
            "spiffe://example.org/operator/alice"
        );
    }
}

/// Operator input that cannot mean anything (issue 21 items 6 and 8): bad
/// usage exits 2 before any round trip (the broker here is down), with the
/// precise reason, as JSON under `--json`; a subject no policy matches is
/// revoked with a warning; an unknown grant gets one answer from both verbs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_input_is_checked_before_the_round_trip() {
    let b = TestBroker::start_with(backends().await.remove(0).0).await;
    let down = format!("https://127.0.0.1:{}", tessera::testkit::free_port());
    // No broker at --url, and no operator certificate where the CLI looks.
    let offline = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .args(["--url", &down])
            .current_dir(b.home())
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let usage = |args: &[&str], want: &str| {
        let (c, err) = offline(args);
        assert_eq!(c, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("cannot reach"), "{args:?}: {err}");
    };
    usage(&["revoke", "--jti", "nope"], "UUID");
    usage(
        &["revoke", "--subject", AGENT, "--block-for", "0s"],
        "out of range: a block lasts 1s to 365d",
    );
    usage(&["revoke", "--subject", "not a spiffe id"], "white space");
    usage(
        &["revoke", "--subject", "spiffe://example.org"],
        "SPIFFE ID",
    );
    usage(&["revoke", "--task", "a b"], "task id");
    let grant = [
        "grant",
        "create",
        "--subject",
        AGENT,
        "--scope",
        "tickets:delete",
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut v = grant.to_vec();
        v.extend(["--audience", API]);
        v.extend(extra);
        v
    };
    usage(&with(&["--ttl", "10x"]), "not a unit");
    usage(&with(&["--ttl", "10 minutes"]), "`10 minutes`: write 10m");
    usage(&with(&["--ttl", "0s"]), "1s to 24h");
    usage(&with(&["--ttl", "10m", "--uses", "0"]), "--uses");
    usage(&["unblock", "--subject", "bad id"], "white space");
    // --json: the error is a JSON object too
    let (c, err) = offline(&["--json", "revoke", "--jti", "nope"]);
    assert_eq!(c, 2);
    let v: Value = serde_json::from_str(err.trim()).unwrap();
    assert!(v["error"].as_str().unwrap().contains("UUID"), "{v}");
    assert_eq!(v["exit"], 2);

    // a subject no policy matches: revoked and blocked anyway, with a warning
    let typo = "spiffe://example.org/agnet/demo";
    let (c, _, err) = b.cli(&["revoke", "--subject", typo, "--block-for", "1m"]);
    assert_eq!(c, 0, "{err}");
    assert!(
        err.contains("warning: no policy matches the subject"),
        "{err}"
    );

    // one answer for an unknown grant, from both verbs
    let unknown = uuid::Uuid::new_v4().to_string();
    for args in [
        vec!["revoke", "--grant", unknown.as_str()],
        vec!["grant", "revoke", unknown.as_str()],
    ] {
        let (c, _, err) = b.cli(&args);
        assert_eq!(c, 1, "{args:?}");
        assert!(
            err.contains(&format!("no live grant {unknown}")),
            "{args:?}: {err}"
        );
    }
}

/// A grant no policy could ever use is created with a warning naming why,
/// and refused with `--strict` (issue 21 item 2); a usable one is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_create_warns_about_grants_no_policy_could_use() {
    let b = TestBroker::start_with(backends().await.remove(0).0).await;
    let create = |subject: &str, scope: &str, aud: &str, strict: bool| {
        let mut a = vec![
            "grant",
            "create",
            "--subject",
            subject,
            "--scope",
            scope,
            "--audience",
            aud,
            "--ttl",
            "5m",
        ];
        if strict {
            a.push("--strict");
        }
        b.cli(&a)
    };
    for (subject, scope, aud, why) in [
        (
            "spiffe://example.org/robot/x",
            "tickets:delete",
            API,
            "no policy matches the subject",
        ),
        (
            AGENT,
            "tickets:delete",
            "https://other.example.com",
            "allows the audience",
        ),
        (AGENT, "tickets:read", API, "it is allowed without a grant"),
        (
            AGENT,
            "tickets:admin",
            API,
            "no policy for this subject and audience allows it",
        ),
    ] {
        let (c, _, err) = create(subject, scope, aud, false);
        assert_eq!(c, 0, "{err}");
        assert!(
            err.contains("warning: no policy could ever use this grant") && err.contains(why),
            "{scope} {aud}: {err}"
        );
        let (c, _, err) = create(subject, scope, aud, true);
        assert_eq!(c, 1, "{err}");
        assert!(err.contains(why), "{err}");
    }
    // the strict refusals created nothing; the warned ones exist
    let (_, out, _) = b.cli(&["--json", "grant", "list"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["grants"].as_array().unwrap().len(), 4, "{v}");

    let (c, out, err) = create(AGENT, "tickets:delete", API, true);
    assert_eq!(c, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    assert!(out.contains("created grant"), "{out}");
    let (s, v) = b.agent_token("tickets:delete", None).await;
    assert_eq!(s, 200, "{v}");
}

/// The shipped dev config and the README's grant example agree: the
/// example's scope is a `jit_scopes` scope of the demo policy, and the
/// approval scope is not one a grant can unlock.
#[test]
fn shipped_config_makes_the_readme_grant_example_usable() {
    let cfg = tessera::config::Config::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/tessera.toml"
    )))
    .unwrap();
    let set = tessera::policy::PolicySet::compile(cfg.policies).unwrap();
    let scopes = |s: &str| s.parse::<tessera::policy::scope::ScopeSet>().unwrap();
    assert_eq!(
        set.grant_use(AGENT, API, &scopes("tickets:close")),
        Ok("demo-agent")
    );
    assert!(set
        .grant_use(AGENT, API, &scopes("tickets:delete"))
        .unwrap_err()
        .to_string()
        .contains("approval scope"));
    let readme = include_str!("../docs/tokens.md");
    assert!(readme.contains("--scope tickets:close --audience https://api.example.com --ttl 10m"));
}

/// Issue 23 item 5 (decision recorded in SECURITY.md): a token the blocked
/// identity holds only as `client_id` (it presented another subject's token
/// over its certificate) can no longer be re-exchanged, and the subject
/// revocation covers it: the kill switch ends every token it holds.
#[tokio::test]
async fn kill_switch_and_tokens_held_only_as_client_id() {
    let b = TestBroker::start().await;
    let ci = b.ci_token();
    let (s, v) = b
        .token(&b.agent_client(), &TestBroker::oidc_form(&ci))
        .await;
    assert_eq!(s, 200, "{v}");
    let held = tok(&v);
    let (_, c) = decode(&held);
    assert_eq!(c["client_id"], AGENT);
    assert_ne!(c["sub"], AGENT);
    assert!(c.get("act").is_none());
    let form = [
        ("grant_type", TE),
        ("subject_token_type", ACCESS),
        ("subject_token", held.as_str()),
        ("audience", "https://deploy.example.com"),
        ("scope", "deploy:read"),
    ];
    assert_eq!(b.token(&b.agent_client(), &form).await.0, 200);
    block_agent(&b).await;
    let (s, v) = b.token(&b.agent_client(), &form).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(b.introspect(&held).await["active"], false);
}
