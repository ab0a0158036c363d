#![allow(clippy::unwrap_used, clippy::expect_used)]
//! TLS everywhere Redis goes (issue 17 item 7): the broker on a TLS-only
//! Redis Cluster (`rediss+cluster://…?ca=`) and through a TLS-only Redis
//! Sentinel (`rediss+sentinel://…?ca=`), both started by the tests with a
//! private CA. The broker exchanges, introspects and revokes through each;
//! the same servers answer nothing in clear text, and a broker given the
//! plain form of the same URL serves no token (fails closed: 503,
//! `/readyz` false). `config check` refuses the mixed forms. SECURITY.md
//! "Faults (issue 17)", R-TLS.
mod common;

use std::path::Path;

use common::*;
use reqwest::Method;
use serde_json::json;
use tessera::testkit_redis::{
    plaintext_answers, tls_cluster_or_skip, tls_sentinel_or_skip, TlsFiles,
};

async fn broker(url: String) -> TestBroker {
    TestBroker::start_with(Options {
        store_url: Some(url),
        ..Default::default()
    })
    .await
}

/// `url` with `?ca=` the test CA.
fn with_ca(url: &str, ca: &Path) -> String {
    format!("{url}?ca={}", ca.display())
}

/// Through the broker on `url`: a token is issued, introspected active,
/// revoked by its jti (`POST /admin/v1/revocations`), then introspected
/// inactive; the revocation is in the store's audit stream; `/readyz` is
/// green.
async fn exchange_introspect_revoke(url: String) {
    let b = broker(url).await;
    let (s, v) = b.agent_token("tickets:read", Some("tls-task")).await;
    assert_eq!(s, 200, "{v}");
    let token = v["access_token"].as_str().unwrap();
    assert_eq!(b.introspect(token).await["active"], true);
    let jti = decode(token).1["jti"].as_str().unwrap().to_string();
    let (s, v) = b
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(json!({"kind": "jti", "value": jti})),
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    assert_eq!(b.introspect(token).await["active"], false);
    let records = b.audit_records().await;
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "revoked" && r["jti"] == jti.as_str()),
        "{records:?}"
    );
    let ready = reqwest::get(b.ops_url("/readyz")).await.unwrap().status();
    assert_eq!(ready, 200);
}

/// The plain form of a TLS topology's URL: the broker starts (the store
/// connects lazily) but issues nothing and is not ready.
async fn plain_form_fails_closed(url: String) {
    let b = broker(url).await;
    let (s, v) = b.agent_token("tickets:read", None).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"], "temporarily_unavailable", "{v}");
    assert!(v.get("access_token").is_none(), "{v}");
    let ready = reqwest::get(b.ops_url("/readyz")).await.unwrap().status();
    assert_eq!(ready, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_on_a_tls_cluster_revokes_and_introspects() {
    let files = TlsFiles::generate().unwrap();
    let Some(cluster) = tls_cluster_or_skip(3, false, &files).unwrap() else {
        return;
    };
    for n in &cluster.nodes {
        assert!(
            !plaintext_answers(n.port()),
            "node {} speaks clear text",
            n.port()
        );
    }
    let url = cluster.url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    exchange_introspect_revoke(with_ca(&url, &cluster.ca_file())).await;
    plain_form_fails_closed(url.replacen("rediss+", "redis+", 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_through_a_tls_sentinel_revokes_and_introspects() {
    let files = TlsFiles::generate().unwrap();
    let Some(s) = tls_sentinel_or_skip(&files).unwrap() else {
        return;
    };
    for p in [s.sentinel.port(), s.nodes[0].port(), s.nodes[1].port()] {
        assert!(!plaintext_answers(p), "port {p} speaks clear text");
    }
    let url = s.url();
    assert!(url.starts_with("rediss+sentinel://"), "{url}");
    exchange_introspect_revoke(with_ca(&url, &s.ca_file())).await;
    plain_form_fails_closed(url.replacen("rediss+", "redis+", 1)).await;
}

/// `tessera config check` on the shipped development config with `[store]
/// url` replaced: the TLS forms pass (the password hidden in the output);
/// a mixed or ambiguous form exits 1 naming `store.url` and the rule.
#[test]
fn config_check_accepts_tls_forms_and_refuses_mixed_ones() {
    let d = tempfile::tempdir().unwrap();
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tessera.toml"))
            .unwrap();
    assert!(shipped.contains("url = \"memory://\""));
    let ca = d.path().join("redis-ca.pem");
    std::fs::write(&ca, TlsFiles::generate().unwrap().ca_pem).unwrap();
    let check = |url: &str| {
        let path = d.path().join("t.toml");
        std::fs::write(
            &path,
            shipped.replace("url = \"memory://\"", &format!("url = \"{url}\"")),
        )
        .unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["config", "check", "--config"])
            .arg(&path)
            .current_dir(d.path())
            .output()
            .unwrap();
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!out.contains("pw-1"), "{out}");
        (o.status.code().unwrap_or(-1), out)
    };
    for url in [
        format!("rediss+cluster://:pw-1@n1:7000,n2:7001?ca={}", ca.display()),
        format!("rediss+sentinel://:pw-1@s1:26379/main?ca={}", ca.display()),
    ] {
        let (code, out) = check(&url);
        assert_eq!(code, 0, "{url}: {out}");
        assert!(out.contains("OK") && out.contains("://***@"), "{out}");
    }
    for (url, why) in [
        ("redis+cluster://rediss://:pw-1@n1:7000", "one scheme"),
        (
            "redis+sentinel://:pw-1@s1:26379/main?ca=/ca.pem",
            "only used with rediss",
        ),
        (
            "rediss+cluster://:pw-1@n1:7000?tls=true",
            "TLS is chosen by the scheme",
        ),
    ] {
        let (code, out) = check(url);
        assert_eq!(code, 1, "{url}: {out}");
        assert!(
            out.contains("store.url") && out.contains(why),
            "{url}: {out}"
        );
    }
}
