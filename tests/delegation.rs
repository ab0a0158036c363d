//! Delegation (RFC 8693 §4.1, §4.4): the agent acts with the user's
//! authority, never its own; a chain of three hops keeps the nested `act`
//! chain, the intersection of scopes and the shortest lifetime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use tessera::pki::{IssuedCert, LeafSpec};

const PLANNER: &str = "spiffe://example.org/agent/planner";
const TOOL: &str = "spiffe://example.org/tool/search";
const SHALLOW: &str = "spiffe://example.org/tool/shallow";
const PLAIN: &str = "spiffe://example.org/agent/plain";

const POLICIES: &str = r#"
[[policies]]
name = "users"
owner = "alice@example.com"
match = { issuer = "ci", subject = "user:*" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read", "tickets:write", "tickets:delete"]
max_ttl = "15m"

[[policies]]
name = "planner"
match = { issuer = "mtls", subject = "spiffe://example.org/agent/planner" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read", "tickets:write"]
may_act_for = ["ci"]
max_depth = 3
max_ttl = "10m"

[[policies]]
name = "coder"
match = { issuer = "ci", subject = "agent:coder" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read", "tickets:write"]
may_act_for = ["ci"]
max_depth = 3
max_ttl = "5m"

[[policies]]
name = "shallow-tool"
match = { issuer = "mtls", subject = "spiffe://example.org/tool/shallow" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read"]
may_act_for = ["ci"]
max_depth = 2

[[policies]]
name = "tools"
match = { issuer = "mtls", subject = "spiffe://example.org/tool/*" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read"]
may_act_for = ["ci"]
max_depth = 3
max_ttl = "2m"

[[policies]]
name = "plain"
match = { issuer = "mtls", subject = "spiffe://example.org/agent/plain" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read"]
"#;

struct Fixture {
    b: TestBroker,
    planner: IssuedCert,
    tool: IssuedCert,
}

async fn fixture() -> Fixture {
    let b = TestBroker::start_with(Options {
        policies: POLICIES.into(),
        ..Default::default()
    })
    .await;
    let planner = b.ca.issue(&LeafSpec::client_spiffe(PLANNER)).unwrap();
    let tool = b.ca.issue(&LeafSpec::client_spiffe(TOOL)).unwrap();
    Fixture { b, planner, tool }
}

fn user_token(b: &TestBroker, extra: Value) -> String {
    let mut c = b.issuer().claims("user:alice", "tessera");
    if let Value::Object(m) = extra {
        for (k, v) in m {
            c[k] = v;
        }
    }
    b.issuer().sign(&c)
}

fn coder_token(b: &TestBroker) -> String {
    b.issuer()
        .sign(&b.issuer().claims("agent:coder", "tessera"))
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    b: &TestBroker,
    client: &reqwest::Client,
    st: &str,
    st_type: &str,
    at: &str,
    at_type: &str,
    scope: &str,
) -> (u16, Value) {
    let (s, v) = b
        .token(
            client,
            &[
                ("grant_type", TE),
                ("subject_token", st),
                ("subject_token_type", st_type),
                ("actor_token", at),
                ("actor_token_type", at_type),
                ("audience", API),
                ("scope", scope),
            ],
        )
        .await;
    (s.as_u16(), v)
}

fn tok(v: &Value) -> String {
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn three_hops_user_planner_coder_tool() {
    let f = fixture().await;
    let b = &f.b;
    let planner = b.client(Some(&f.planner));
    let tool = b.client(Some(&f.tool));

    // hop 1: the planner (its certificate is the actor) acts for the user
    let user = user_token(b, json!({}));
    let (s, v) = exchange(
        b,
        &planner,
        &user,
        JWT,
        &thumbprint(&f.planner.cert_der),
        MTLS,
        "tickets:read tickets:write",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let t1 = tok(&v);
    let (_, c1) = decode(&t1);
    assert_eq!(c1["sub"], "user:alice", "the user stays the subject");
    assert_eq!(c1["act"], json!({"sub": PLANNER}));
    assert_eq!(c1["client_id"], PLANNER);
    assert_eq!(
        c1["cnf"]["x5t#S256"],
        thumbprint(&f.planner.cert_der),
        "bound to the actor's certificate"
    );

    // hop 2: the planner (holder of t1, proving it with its certificate)
    // hands the task to the coder, whose identity is an OIDC token
    let (s, v) = exchange(
        b,
        &planner,
        &t1,
        ACCESS,
        &coder_token(b),
        JWT,
        "tickets:read tickets:write",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let t2 = tok(&v);
    let (_, c2) = decode(&t2);
    assert_eq!(c2["act"]["sub"], "agent:coder");
    assert_eq!(c2["act"]["iss"], b.issuer().url);
    assert_eq!(c2["act"]["act"], json!({"sub": PLANNER}));
    assert!(c2.get("cnf").is_none(), "a JWT actor gets an unbound token");
    assert_eq!(c2["client_id"], "agent:coder");
    assert_eq!(c2["txn"], c1["txn"]);

    // hop 3: the tool (certificate actor) acts on the coder's token; it may only read
    let (s, v) = exchange(
        b,
        &tool,
        &t2,
        ACCESS,
        &thumbprint(&f.tool.cert_der),
        MTLS,
        "tickets:write",
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_scope")),
        "the tool's policy lacks write"
    );
    let (s, v) = exchange(
        b,
        &tool,
        &t2,
        ACCESS,
        &thumbprint(&f.tool.cert_der),
        MTLS,
        "tickets:read",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let t3 = tok(&v);
    let (_, c3) = decode(&t3);
    assert_eq!(
        c3["act"],
        json!({"sub": TOOL, "act": {"sub": "agent:coder", "iss": b.issuer().url, "act": {"sub": PLANNER}}}),
        "the full nested chain, current actor outermost"
    );
    assert_eq!(c3["sub"], "user:alice");
    assert_eq!(
        c3["scope"], "tickets:read",
        "intersection of every hop's scopes"
    );
    assert_eq!(c3["cnf"]["x5t#S256"], thumbprint(&f.tool.cert_der));
    // the shortest lifetime: the tool policy's 2 minutes, within every parent
    let (e1, e2, e3) = (
        c1["exp"].as_u64().unwrap(),
        c2["exp"].as_u64().unwrap(),
        c3["exp"].as_u64().unwrap(),
    );
    assert!(e3 <= e2 && e2 <= e1);
    assert!(e3 <= c3["iat"].as_u64().unwrap() + 120);
    assert!(e2 <= c2["iat"].as_u64().unwrap() + 300);
    assert_eq!(c3["ancestors"], json!([c2["jti"], c1["jti"]]));

    // revoking the planner (an actor anywhere in the chain) or hop 1 revokes hop 3
    assert_eq!(b.introspect(&t3).await["active"], true);
    let (s, _) = b
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"kind": "jti", "value": c1["jti"]})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(b.introspect(&t3).await["active"], false);
}

#[tokio::test]
async fn actor_needs_its_own_policy_with_may_act_for() {
    let f = fixture().await;
    let b = &f.b;
    let plain = b.ca.issue(&LeafSpec::client_spiffe(PLAIN)).unwrap();
    let user = user_token(b, json!({}));
    let (s, v) = exchange(
        b,
        &b.client(Some(&plain)),
        &user,
        JWT,
        &thumbprint(&plain.cert_der),
        MTLS,
        "tickets:read",
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_request")),
        "no may_act_for"
    );
    // an actor with no policy at all
    let nobody =
        b.ca.issue(&LeafSpec::client_spiffe(
            "spiffe://example.org/agent/nobody",
        ))
        .unwrap();
    let (s, _) = exchange(
        b,
        &b.client(Some(&nobody)),
        &user,
        JWT,
        &thumbprint(&nobody.cert_der),
        MTLS,
        "tickets:read",
    )
    .await;
    assert_eq!(s, 400);
    // a scope the subject's policy allows but the actor's does not
    let (s, v) = exchange(
        b,
        &b.client(Some(&f.planner)),
        &user,
        JWT,
        &thumbprint(&f.planner.cert_der),
        MTLS,
        "tickets:delete",
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_scope")));
}

#[tokio::test]
async fn g75_may_act_and_self_delegation() {
    let f = fixture().await;
    let b = &f.b;
    let planner = b.client(Some(&f.planner));
    // the subject token names who may act for it
    let user = user_token(b, json!({"may_act": {"sub": "agent:coder"}}));
    let (s, v) = exchange(
        b,
        &planner,
        &user,
        JWT,
        &thumbprint(&f.planner.cert_der),
        MTLS,
        "tickets:read",
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_request")),
        "planner is not in may_act"
    );
    let (s, v) = exchange(
        b,
        &b.anon(),
        &user,
        JWT,
        &coder_token(b),
        JWT,
        "tickets:read",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // may_act that is not an object
    let bad = user_token(b, json!({"may_act": "agent:coder"}));
    let (s, _) = exchange(
        b,
        &b.anon(),
        &bad,
        JWT,
        &coder_token(b),
        JWT,
        "tickets:read",
    )
    .await;
    assert_eq!(s, 400);
    // the actor is the subject
    let (s, v) = exchange(
        b,
        &planner,
        &thumbprint(&f.planner.cert_der),
        MTLS,
        &thumbprint(&f.planner.cert_der),
        MTLS,
        "tickets:read",
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")));
}

#[tokio::test]
async fn g76_max_depth_caps_the_chain_and_upstream_act_is_never_trusted() {
    let f = fixture().await;
    let b = &f.b;
    let planner = b.client(Some(&f.planner));
    // a subject token that claims a delegation of its own: ignored
    let user = user_token(
        b,
        json!({"act": {"sub": "spiffe://example.org/agent/admin", "act": {"sub": "x"}}}),
    );
    let (s, v) = exchange(
        b,
        &planner,
        &user,
        JWT,
        &thumbprint(&f.planner.cert_der),
        MTLS,
        "tickets:read tickets:write",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let t1 = tok(&v);
    assert_eq!(
        decode(&t1).1["act"],
        json!({"sub": PLANNER}),
        "only the authenticated actor"
    );
    let (_, v) = exchange(
        b,
        &planner,
        &t1,
        ACCESS,
        &coder_token(b),
        JWT,
        "tickets:read",
    )
    .await;
    let t2 = tok(&v);
    // the shallow tool's policy allows a chain of 2: this would be 3
    let shallow = b.ca.issue(&LeafSpec::client_spiffe(SHALLOW)).unwrap();
    let (s, v) = exchange(
        b,
        &b.client(Some(&shallow)),
        &t2,
        ACCESS,
        &thumbprint(&shallow.cert_der),
        MTLS,
        "tickets:read",
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")));
    // a Tessera token is not accepted as an actor token
    let (s, _) = exchange(
        b,
        &b.anon(),
        &user_token(b, json!({})),
        JWT,
        &t2,
        JWT,
        "tickets:read",
    )
    .await;
    assert_eq!(s, 400);
    // a bound parent cannot be delegated over another certificate
    let (s, _) = exchange(
        b,
        &b.client(Some(&f.tool)),
        &t1,
        ACCESS,
        &thumbprint(&f.tool.cert_der),
        MTLS,
        "tickets:read",
    )
    .await;
    assert_eq!(s, 400);
}

/// The planner's policy block as the configuration file has it.
fn planner_policy(b: &TestBroker) -> String {
    let text = std::fs::read_to_string(&b.config_path).unwrap();
    let start = text.find("[[policies]]\nname = \"planner\"").unwrap();
    let len = text[start..].find("\n\n").unwrap() + 1;
    text[start..start + len].to_string()
}

/// Rewrites the broker's configuration file (the planner's policy replaced
/// by `planner`) and reloads it through the admin API (`tessera reload`).
async fn reload_with_planner(b: &TestBroker, planner: &str) {
    let original = planner_policy(b);
    let text = std::fs::read_to_string(&b.config_path).unwrap();
    std::fs::write(&b.config_path, text.replace(&original, planner)).unwrap();
    let (s, v) = b.admin(Method::POST, "/admin/v1/reload", None).await;
    assert_eq!(s, 200, "{v}");
    // and back, for the next case (the file, not yet the broker)
    std::fs::write(&b.config_path, text).unwrap();
}

/// The planner acts (over its certificate) for the subject of `st`.
async fn planner_acts(f: &Fixture, st: &str, st_type: &str, scope: &str) -> (u16, Value) {
    let planner = f.b.client(Some(&f.planner));
    let thumb = thumbprint(&f.planner.cert_der);
    exchange(&f.b, &planner, st, st_type, &thumb, MTLS, scope).await
}

/// The planner re-exchanges `held` (no actor token) for `tickets:read`.
async fn planner_reexchanges(f: &Fixture, held: &str) -> (u16, Value) {
    let form = [
        ("grant_type", TE),
        ("subject_token", held),
        ("subject_token_type", ACCESS),
        ("audience", API),
        ("scope", "tickets:read"),
    ];
    let (s, v) = f.b.token(&f.b.client(Some(&f.planner)), &form).await;
    (s.as_u16(), v)
}

/// Issue 23 item 1: re-exchanging a delegated token re-runs the delegation
/// rule for every actor of its chain against the configuration in force.
#[tokio::test]
async fn reexchange_rechecks_every_actor_after_a_reload() {
    let f = fixture().await;
    let b = &f.b;
    let user = user_token(b, json!({}));
    let (s, v) = planner_acts(&f, &user, JWT, "tickets:read tickets:write").await;
    assert_eq!(s, 200, "{v}");
    let held = tok(&v);
    assert_eq!(decode(&held).1["act"], json!({"sub": PLANNER}));
    let unchanged = planner_policy(b);
    assert!(unchanged.contains("may_act_for = [\"ci\"]"), "{unchanged}");
    // nothing changed: still works, and keeps the chain
    reload_with_planner(b, &unchanged).await;
    let (s, v) = planner_reexchanges(&f, &held).await;
    assert_eq!(s, 200, "{v}");
    let (_, c) = decode(&tok(&v));
    assert_eq!(c["sub"], "user:alice");
    assert_eq!(c["act"], json!({"sub": PLANNER}));

    let cases = [
        // (a) may_act_for switched to another issuer
        (
            unchanged.replace(r#"may_act_for = ["ci"]"#, r#"may_act_for = ["mtls"]"#),
            "invalid_request",
        ),
        // (b) the agent's policy deleted
        (String::new(), "invalid_request"),
        // (c) the scope removed from it
        (
            unchanged.replace(r#""tickets:read", "tickets:write""#, r#""tickets:write""#),
            "invalid_scope",
        ),
    ];
    for (policy, error) in cases {
        reload_with_planner(b, &policy).await;
        let (s, v) = planner_reexchanges(&f, &held).await;
        assert_eq!((s, v["error"].as_str()), (400, Some(error)), "{policy}");
        // a new delegation is refused the same way
        let (s, v) = planner_acts(&f, &user, JWT, "tickets:read").await;
        assert_eq!((s, v["error"].as_str()), (400, Some(error)), "{policy}");
    }
    // rights restored: the held token works again
    reload_with_planner(b, &unchanged).await;
    assert_eq!(planner_reexchanges(&f, &held).await.0, 200);
}

/// Issue 23 item 3: the subject token's `may_act` binds the whole chain.
#[tokio::test]
async fn may_act_is_carried_and_binds_every_later_hop() {
    let f = fixture().await;
    let b = &f.b;
    let planner = b.client(Some(&f.planner));
    let user = user_token(b, json!({"may_act": {"sub": PLANNER}}));
    let (s, v) = planner_acts(&f, &user, JWT, "tickets:read").await;
    assert_eq!(s, 200, "{v}");
    let t1 = tok(&v);
    assert_eq!(decode(&t1).1["may_act"], json!({"sub": PLANNER}));
    // the coder (max_depth 3, may_act_for ci) acts on the planner's token:
    // the person named only the planner
    let coder = coder_token(b);
    let (s, v) = exchange(b, &planner, &t1, ACCESS, &coder, JWT, "tickets:read").await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
    // the planner re-exchanging its own token is fine, and the restriction stays
    let (s, v) = planner_reexchanges(&f, &t1).await;
    assert_eq!(s, 200, "{v}");
    let t2 = tok(&v);
    assert_eq!(decode(&t2).1["may_act"], json!({"sub": PLANNER}));
    // introspection accepts the claim
    assert_eq!(b.introspect(&t2).await["active"], true);
    // without may_act the same second hop is allowed (the refusal above is may_act's)
    let (s, v) = planner_acts(&f, &user_token(b, json!({})), JWT, "tickets:read").await;
    assert_eq!(s, 200, "{v}");
    let free = tok(&v);
    assert!(decode(&free).1.get("may_act").is_none());
    let (s, v) = exchange(b, &planner, &free, ACCESS, &coder, JWT, "tickets:read").await;
    assert_eq!(s, 200, "{v}");
}
