//! `rediss+cluster://` and `rediss+sentinel://` (issue 17 item 7): the
//! store on a real TLS-only Redis Cluster (`tls-cluster yes`,
//! `tls-replication yes`, `port 0`) and through a real TLS-only Sentinel
//! (sentinel `tls-port`, TLS primary and replica), both with a private CA.
//! Every connection the store makes goes over TLS: the seeds and the nodes
//! the cluster names, the sentinels and the primary they name, the
//! block cache's tracking connection and the revocation's own connection
//! to the primary (`revoke_acked`). The same servers refuse clear text, the
//! plain URL form reaches nothing, and the TLS form without the CA fails
//! closed. Skipped loudly when `redis-server` is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{RedisConfig, RedisStore};
use crate::store::conformance::{self, task_revocation};
use crate::store::*;
use crate::testkit_redis::{
    plaintext_answers, tls_cluster_or_skip, tls_sentinel_or_skip, TlsFiles, SENTINEL_MASTER,
};

/// Per-call timeout (a first call connects to every node, with handshakes).
const T: Duration = Duration::from_secs(2);

/// A store for `url` trusting `ca` (the system roots when `None`).
fn store(url: &str, ca: Option<&[u8]>) -> RedisStore {
    RedisStore::new(&RedisConfig {
        url: url.to_string(),
        prefix: "tessera".into(),
        timeout: T,
        ca_pem: ca.map(<[u8]>::to_vec),
    })
    .unwrap()
}

/// A store trusting `ca` that asks one replica to acknowledge each
/// revocation, with the block cache on.
fn acked_store(url: &str, ca: &[u8]) -> Arc<RedisStore> {
    Arc::new(
        store(url, Some(ca))
            .with_options(&StoreOptions {
                revocation_replicas: 1,
                revocation_wait: Duration::from_secs(2),
                ..StoreOptions::default()
            })
            .unwrap(),
    )
}

/// Waits (at most 15 s) until the block cache of `st` is live.
async fn until_cache_live(st: &RedisStore) {
    let cache = st.block_cache().expect("the block cache is on");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cache.is_live() {
        assert!(Instant::now() < deadline, "the block cache never went live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a task revocation of `value` is in force for a token issued a
/// minute ago.
async fn task_revoked(st: &RedisStore, value: &str) -> bool {
    let now = conformance::unix_now();
    let facts = TokenFacts {
        jti: "j".into(),
        sub: "s".into(),
        txn: value.into(),
        iat: now - 60,
        ..Default::default()
    };
    st.is_revoked(&facts, now).await.unwrap()
}

/// The URL of a TLS topology without TLS (`rediss+…` → `redis+…`).
fn plain(url: &str) -> String {
    url.replacen("rediss+", "redis+", 1)
}

/// What the test proves first on every TLS set-up: each server answers
/// nothing in clear text, the plain URL form gets no answer, and the TLS
/// form that trusts only the system roots fails closed (`Unavailable`).
async fn only_tls_with_the_ca_gets_in(url: &str, ports: &[u16]) {
    for p in ports {
        assert!(!plaintext_answers(*p), "port {p} answered in clear text");
    }
    let e = store(&plain(url), None).ping().await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    let e = store(url, None).ping().await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
}

/// A TLS-only cluster of three masters, each with a replica (replication
/// and the cluster bus over TLS): the conformance suite passes through
/// `rediss+cluster://` with the CA; the keys are spread over the masters
/// (the nodes the cluster named were reached over TLS); an acknowledged
/// revocation runs on the `{rev}` master over a TLS connection of its own
/// and is durable; the block cache's tracking connection is live over TLS;
/// the config path (`?ca=`) opens it too. Clear text gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_store_conformance_acked_revocation_and_block_cache() {
    let files = TlsFiles::generate().unwrap();
    let Some(cluster) = tls_cluster_or_skip(3, true, &files).unwrap() else {
        return;
    };
    let url = cluster.url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    // only the first master is named: the others are found through it
    let one_seed = format!("rediss+cluster://127.0.0.1:{}", cluster.nodes[0].port());
    let ports: Vec<u16> = cluster
        .nodes
        .iter()
        .chain(&cluster.replicas)
        .map(|n| n.port())
        .collect();
    only_tls_with_the_ca_gets_in(&url, &ports).await;

    let st = Arc::new(store(&one_seed, Some(&files.ca_pem)));
    st.ping().await.unwrap();
    conformance::run_all(Stores::from_backend(st)).await;
    let used = cluster
        .nodes
        .iter()
        .filter(|n| matches!(n.command(&["DBSIZE"]), Ok(::redis::Value::Int(k)) if k > 0))
        .count();
    assert!(used >= 2, "keys on {used} of 3 masters");

    let acked = acked_store(&url, &files.ca_pem);
    let done = acked
        .revoke_acked(task_revocation("over-tls"))
        .await
        .unwrap();
    assert!(done.durable(), "{done:?}");
    assert_eq!(done.replicas.map(|r| r.acked), Some(1), "{done:?}");
    assert!(task_revoked(&acked, "over-tls").await);
    until_cache_live(&acked).await;
    let now = conformance::unix_now();
    acked
        .block_subject("spiffe://td/tls", now + 600)
        .await
        .unwrap();
    assert!(acked.is_blocked("spiffe://td/tls", now).await.unwrap());

    let with_ca = format!("{url}?ca={}", cluster.ca_file().display());
    let stores = Stores::open(&with_ca, "other", T).await.unwrap();
    stores.health.ping().await.unwrap();
}

/// A TLS-only Sentinel set-up (the sentinel on its `tls-port`, a TLS
/// primary and replica, the sentinel's own links over TLS): the
/// conformance suite passes through `rediss+sentinel://` with the CA; an
/// acknowledged revocation (its own connection to the primary the
/// sentinel names) is durable; the block cache is live; after a failover
/// the store writes to the new primary (an address only the sentinel
/// named), over TLS. Clear text gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sentinel_store_conformance_acked_revocation_and_failover() {
    let files = TlsFiles::generate().unwrap();
    let Some(s) = tls_sentinel_or_skip(&files).unwrap() else {
        return;
    };
    let url = s.url();
    assert!(url.starts_with("rediss+sentinel://"), "{url}");
    let ports = [s.sentinel.port(), s.nodes[0].port(), s.nodes[1].port()];
    only_tls_with_the_ca_gets_in(&url, &ports).await;

    let st = Arc::new(store(&url, Some(&files.ca_pem)));
    st.ping().await.unwrap();
    conformance::run_all(Stores::from_backend(st.clone())).await;
    assert_eq!(s.primary_index().unwrap(), 0);
    let Ok(::redis::Value::Int(n)) = s.nodes[0].command(&["DBSIZE"]) else {
        panic!("DBSIZE")
    };
    assert!(n > 10, "the suite wrote keys on the primary ({n})");

    let acked = acked_store(&url, &files.ca_pem);
    let done = acked
        .revoke_acked(task_revocation("over-tls"))
        .await
        .unwrap();
    assert!(done.durable(), "{done:?}");
    assert!(task_revoked(&acked, "over-tls").await);
    until_cache_live(&acked).await;

    // A failover: the replica, which the URL never named, becomes the
    // primary; the store follows it over TLS.
    s.wait_replicated(Duration::from_secs(10)).unwrap();
    s.sentinel
        .command(&["SENTINEL", "FAILOVER", SENTINEL_MASTER])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        let r = RevocationStore::revoke(&*st, task_revocation(&format!("during-{n}"))).await;
        match r {
            Ok(_) if s.primary_index().ok() == Some(1) => break,
            Ok(_) => {}
            Err(e) => assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}"),
        }
        assert!(Instant::now() < deadline, "the store did not follow");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // past the recheck, a write lands on the new primary
    tokio::time::sleep(super::SENTINEL_RECHECK + Duration::from_millis(200)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = RevocationStore::revoke(&*st, task_revocation("after")).await {
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        assert!(Instant::now() < deadline, "{e:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let key = st.key_revocation(RevocationKind::Task, "after");
    assert!(matches!(
        s.nodes[1].command(&["EXISTS", &key]),
        Ok(::redis::Value::Int(1))
    ));
    assert!(task_revoked(&st, "after").await);
}
