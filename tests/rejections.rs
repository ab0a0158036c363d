//! Issue #7 item 1, across the catalogue: a refused request mints nothing
//! and writes nothing but counters and its audit record, and the broker
//! keeps serving. A Redis-backed broker gets one hostile request from each
//! section of SECURITY.md §2 that reaches `/token`. Before and after, the
//! test takes every key in its private Redis (with its `DUMP`) and the
//! exchange counters. Afterwards the only key that changed is the audit
//! stream; it gained exactly one `refused` record per refused exchange and
//! no `issued` record; the counters moved by exactly that many refusals. A
//! good exchange then succeeds, and the invariants I1–I5 hold over the run.
//!
//! This is its own test binary because the metrics registry is per process:
//! other tests running in parallel would move the counters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::invariants::{Expect, Ledger};
use common::*;
use serde_json::{json, Value};
use tessera::testkit::now;
use tessera::testkit_redis::redis_or_skip;

fn b64(s: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// Every key of the private Redis with its serialised value, except the
/// audit stream (which refusals are expected to append to).
fn keyspace(url: &str) -> BTreeMap<String, String> {
    let keys = redis_cli(url, &["--scan"]);
    keys.lines()
        // The audit stream and its checkpoint (the last record's seq and
        // hash, written with every append) are the audit trail itself.
        .filter(|k| !k.is_empty() && !k.contains(":{audit}:"))
        .map(|k| (k.to_string(), redis_cli(url, &["DUMP", k])))
        .collect()
}

/// Sum of `tessera_exchanges_total` by outcome.
async fn exchange_counters(b: &TestBroker) -> BTreeMap<String, u64> {
    let text = b.metrics_text().await;
    let mut out = BTreeMap::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("tessera_exchanges_total{") else {
            continue;
        };
        let outcome = rest
            .split("outcome=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_string();
        let n: u64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        *out.entry(outcome).or_default() += n;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_mint_nothing_and_write_only_counters_and_audit_records() {
    let Some(redis) = redis_or_skip().unwrap() else {
        return;
    };
    let b = TestBroker::start_with(Options {
        store_url: Some(redis.url()),
        ..Default::default()
    })
    .await;
    let url = redis.url();
    // Warm up: one good exchange of each kind (JWKS fetched, keys cached).
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
    let (s, v) = b
        .token(&b.anon(), &TestBroker::oidc_form(&b.ci_token()))
        .await;
    assert_eq!(s, 200, "{v}");

    // Some state for a refusal to disturb: a revocation (entry and feed)
    // and a blocked subject.
    for body in [
        json!({"kind": "task", "value": "unrelated-task", "reason": "test"}),
        json!({"kind": "subject", "value": "spiffe://example.org/agent/gone", "block_for": "10m"}),
    ] {
        let (s, v) = b
            .admin(reqwest::Method::POST, "/admin/v1/revocations", Some(body))
            .await;
        assert!(s.is_success(), "{v}");
    }

    let before_keys = keyspace(&url);
    assert!(before_keys.len() >= 3, "{:?}", before_keys.keys());
    let before_counters = exchange_counters(&b).await;
    let before_records = b.audit_records().await.len();
    let ledger = Ledger::new();

    // The corpus: one or more cases per catalogue section.
    let iss = b.issuer();
    let good = {
        let mut c = iss.claims("repo:acme/app:ref:refs/heads/main", "tessera");
        c["env"] = "prod".into();
        c
    };
    let kid = iss.signer().kid().to_string();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        iss.sign(&c)
    };
    let raw = |h: Value, c: &Value| iss.sign_raw(&h.to_string(), &c.to_string());
    let good_token = iss.sign(&good);
    let (signing_input, _) = good_token.rsplit_once('.').unwrap();
    let subject_tokens: Vec<(&str, String)> = vec![
        ("A01 two segments", signing_input.to_string()),
        ("A06 charset", format!("{good_token}!")),
        (
            "B16 alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(good.to_string().as_bytes())
            ),
        ),
        (
            "B18 HS256",
            format!(
                "{}.{}.{}",
                b64(format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#).as_bytes()),
                b64(good.to_string().as_bytes()),
                b64(&[7u8; 32])
            ),
        ),
        (
            "C26 jku",
            raw(
                json!({"alg": "RS256", "kid": kid, "jku": "https://evil.example/jwks"}),
                &good,
            ),
        ),
        (
            "C29 kid injection",
            raw(json!({"alg": "RS256", "kid": "../../../etc/passwd"}), &good),
        ),
        ("D44 bit flip", {
            let mut t = good_token.clone().into_bytes();
            let n = t.len();
            t[n - 5] = if t[n - 5] == b'A' { b'B' } else { b'A' };
            String::from_utf8(t).unwrap()
        }),
        (
            "E46 expired",
            with(&|c| {
                c["exp"] = (now() - 120).into();
                c["iat"] = (now() - 600).into();
            }),
        ),
        (
            "E51 lookalike subject",
            with(&|c| c["sub"] = "repo:acme/app-evil:ref:refs/heads/main".into()),
        ),
        ("E52 wildcard claim", with(&|c| c["env"] = "*".into())),
        (
            "F56 unknown issuer",
            with(&|c| c["iss"] = "https://evil.example".into()),
        ),
        (
            "F58 wrong audience",
            with(&|c| c["aud"] = "someone-else".into()),
        ),
    ];
    let mut forms: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let oidc = |st: &str| -> Vec<(String, String)> {
        TestBroker::oidc_form(st)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    for (name, st) in &subject_tokens {
        forms.push((name.to_string(), oidc(st)));
    }
    let mut f = oidc(&good_token);
    f[0].1 = "password".into();
    forms.push(("G64 grant type".into(), f));
    let mut f = oidc(&good_token);
    f.push(("audience".into(), "https://other.example.com".into()));
    forms.push(("G65 repeated audience".into(), f));
    let mut f = oidc(&good_token);
    f[4].1 = "deploy:read deploy:admin".into();
    forms.push(("G69 scope superset".into(), f));
    let mut f = oidc(&good_token);
    f[1].1 = ACCESS.into();
    forms.push(("F61 type confusion".into(), f));
    let mut f = oidc(&good_token);
    f.push((
        "requested_token_type".into(),
        "urn:ietf:params:oauth:token-type:refresh_token".into(),
    ));
    forms.push(("G78 refresh token".into(), f));
    let mut f = oidc(&good_token);
    f.push(("authorization_details".into(), "[{\"type\":1}]".into()));
    forms.push(("RFC 9396 details".into(), f));
    forms.push((
        "G80 mTLS without a certificate".into(),
        vec![
            ("grant_type".into(), TE.into()),
            ("subject_token_type".into(), MTLS.into()),
            ("audience".into(), API.into()),
            ("scope".into(), "tickets:read".into()),
        ],
    ));

    let mut refused = 0u64;
    for (name, form) in &forms {
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (s, v) = b.token(&b.anon(), &pairs).await;
        ledger.record(s.as_u16(), &v);
        assert!(s.is_client_error(), "{name}: {s} {v}");
        assert!(v.get("access_token").is_none(), "{name}: {v}");
        refused += 1;
    }
    // Requests refused before they are an exchange: counted by no exchange
    // counter, audited by nobody, and they must not write either.
    let big = "a".repeat(70 * 1024);
    let r = b
        .anon()
        .post(b.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("x={big}"))
        .send()
        .await;
    // 413, or the connection closed under the client while it still wrote
    // the body (the server answers and closes as soon as the cap is hit).
    match r {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request(), "{e}"),
    }

    // Nothing but the audit stream changed.
    assert_eq!(keyspace(&url), before_keys, "a refusal wrote to the store");
    // One `refused` record per refused exchange, and nothing issued.
    let records = b.audit_records().await;
    let new = &records[before_records..];
    assert_eq!(new.len() as u64, refused, "{new:#?}");
    assert!(
        new.iter()
            .all(|r| r["event"] == "refused" && r.get("jti").is_none()),
        "{new:#?}"
    );
    // The counters moved by exactly the refusals.
    let after_counters = exchange_counters(&b).await;
    let delta = |k: &str| {
        after_counters.get(k).copied().unwrap_or(0) - before_counters.get(k).copied().unwrap_or(0)
    };
    assert_eq!(
        delta("refused"),
        refused,
        "{before_counters:?} -> {after_counters:?}"
    );
    assert_eq!(delta("issued"), 0);

    // The broker keeps serving.
    let (s, v) = b
        .token(&b.anon(), &TestBroker::oidc_form(&b.ci_token()))
        .await;
    ledger.record(s.as_u16(), &v);
    assert_eq!(s, 200, "{v}");
    let (s, v) = b.agent_token("tickets:read", None).await;
    ledger.record(s.as_u16(), &v);
    assert_eq!(s, 200, "{v}");
    let records = b.audit_records().await;
    let summary = ledger.check(&records[before_records..], &Expect::default());
    assert_eq!(summary.tokens, 2);
}
