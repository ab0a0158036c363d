// One file: tests only, sharing one set of private-server helpers (also
// used by `cluster_tests`), compiled under `cfg(test)`.
//! Tests of the Redis backend, each against its own private `redis-server`
//! (see [`crate::testkit_redis`]); skipped loudly when none is installed.
//! Cluster and Sentinel tests are in `cluster_tests`, TLS topologies in
//! `tls_topology_tests`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{RedisConfig, RedisStore};
use crate::require_redis;
use crate::store::conformance::{self, unix_now};
use crate::store::*;
use crate::testkit_redis::{RedisServer, TlsFiles};

/// Per-call timeout used by these tests.
const T: Duration = Duration::from_millis(300);
/// Longest key the schema makes (prefix of 32 + tags + a 64-hex digest).
const MAX_KEY_LEN: usize = 160;

fn cfg(url: &str) -> RedisConfig {
    RedisConfig {
        url: url.to_string(),
        prefix: "tessera".into(),
        timeout: T,
        ca_pem: None,
    }
}

fn store(s: &RedisServer) -> Arc<RedisStore> {
    Arc::new(RedisStore::new(&cfg(&s.url())).unwrap())
}

async fn raw(s: &RedisServer) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(s.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every key on the server.
async fn all_keys(con: &mut ::redis::aio::MultiplexedConnection) -> Vec<Vec<u8>> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// Asserts every key has a TTL and a bounded name; returns how many.
async fn assert_keys_bounded(s: &RedisServer) -> usize {
    let mut con = raw(s).await;
    let keys = all_keys(&mut con).await;
    for k in &keys {
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut con)
            .await
            .unwrap();
        let name = String::from_utf8_lossy(k);
        // One key lives as long as the data it vouches for: the data epoch.
        assert!(
            ttl != -1 || name.ends_with(":{rev}:epoch"),
            "key without TTL: {name}"
        );
        assert!(k.len() <= MAX_KEY_LEN, "key too long: {name}");
        assert!(
            name.starts_with("tessera:"),
            "key outside the prefix: {name}"
        );
    }
    keys.len()
}

fn is_unavailable<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Unavailable(_)))
}

/// Polls `ping` until it succeeds or `within` passes.
async fn wait_healthy(st: &RedisStore, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if st.ping().await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_conformance_and_every_key_has_a_ttl() {
    let srv = require_redis!();
    let st = store(&srv);
    conformance::run_all(Stores::from_backend(st)).await;
    let n = assert_keys_bounded(&srv).await;
    assert!(n > 10, "the suite wrote keys ({n})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_open_gives_redis_for_redis_urls() {
    let srv = require_redis!();
    let stores = Stores::open(&srv.url(), "tessera", T).await.unwrap();
    conformance::run_all(stores).await;
    assert_keys_bounded(&srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_follow_expiries() {
    let srv = require_redis!();
    let st = store(&srv);
    let mut con = raw(&srv).await;
    let now = unix_now();
    let ttl = |k: String| {
        let mut con = con.clone();
        async move {
            let t: i64 = ::redis::cmd("TTL")
                .arg(k)
                .query_async(&mut con)
                .await
                .unwrap();
            t
        }
    };
    let near = |got: i64, want: u64| {
        let want = want as i64;
        assert!(
            (want - 2..=want).contains(&got),
            "TTL {got} s, expected about {want} s"
        );
    };
    RevocationStore::revoke(
        &*st,
        Revocation {
            kind: RevocationKind::Subject,
            value: "spiffe://td/ttl".into(),
            revoked_at: now,
            expires_at: now + 300,
        },
    )
    .await
    .unwrap();
    near(
        ttl(st.key_revocation(RevocationKind::Subject, "spiffe://td/ttl")).await,
        300,
    );
    near(ttl(st.key_feed()).await, 300);
    // a later, longer revocation extends the entry and the feed; a shorter one
    // shortens neither
    RevocationStore::revoke(
        &*st,
        Revocation {
            kind: RevocationKind::Subject,
            value: "spiffe://td/ttl".into(),
            revoked_at: now,
            expires_at: now + 900,
        },
    )
    .await
    .unwrap();
    RevocationStore::revoke(
        &*st,
        Revocation {
            kind: RevocationKind::Jti,
            value: "short".into(),
            revoked_at: now,
            expires_at: now + 60,
        },
    )
    .await
    .unwrap();
    near(
        ttl(st.key_revocation(RevocationKind::Subject, "spiffe://td/ttl")).await,
        900,
    );
    near(
        ttl(st.key_revocation(RevocationKind::Jti, "short")).await,
        60,
    );
    near(ttl(st.key_feed()).await, 900);
    // blocks, replay records, grants
    st.block_subject("spiffe://td/blk", now + 120)
        .await
        .unwrap();
    near(ttl(st.key_block("spiffe://td/blk")).await, 120);
    assert!(st.first_use("iss", "j", now + 45, now).await.unwrap());
    near(ttl(st.key_replay("iss", "j")).await, 45);
    let mut g = conformance::grant("spiffe://td/g", "api", &["a"], Some(1));
    g.expires_at = now + 200;
    st.create(&g).await.unwrap();
    near(ttl(st.key_grant(&g.subject, &g.id)).await, 200);
    near(ttl(st.key_grant_index(&g.subject)).await, 200);
    near(ttl(st.key_grant_pointer(&g.id)).await, 200);
    near(ttl(st.key_grant_all()).await, 200);
    // a revocation entry holds what is_revoked needs, nothing more
    let v: String = ::redis::cmd("GET")
        .arg(st.key_revocation(RevocationKind::Jti, "short"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(v, format!("{now} {}", now + 60));
    assert_keys_bounded(&srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h91_hostile_identifiers_are_plain_values() {
    let srv = require_redis!();
    let st = store(&srv);
    let now = unix_now();
    let big = "s".repeat(512 * 1024);
    let hostile = [
        "grant:123",
        ":*{}",
        "*",
        "{rev}",
        "tessera:{rev}:feed",
        "",
        &big,
    ];
    let r = |kind, value: &str| Revocation {
        kind,
        value: value.into(),
        revoked_at: now,
        expires_at: now + 60,
    };
    // a subject named like another key type revokes only that subject
    RevocationStore::revoke(&*st, r(RevocationKind::Subject, "grant:123"))
        .await
        .unwrap();
    let mut t = TokenFacts {
        jti: "j".into(),
        sub: "x".into(),
        txn: "t".into(),
        grant: Some("123".into()),
        iat: now - 1,
        ..Default::default()
    };
    assert!(!st.is_revoked(&t, now).await.unwrap());
    t.sub = "grant:123".into();
    assert!(st.is_revoked(&t, now).await.unwrap());
    // a jti with pattern and hash-tag characters matches only itself
    RevocationStore::revoke(&*st, r(RevocationKind::Jti, ":*{}"))
        .await
        .unwrap();
    for jti in ["*", ":*", "{}", ":*{", ":*{}x"] {
        let t = TokenFacts {
            jti: jti.into(),
            sub: "x".into(),
            iat: now,
            ..Default::default()
        };
        assert!(!st.is_revoked(&t, now).await.unwrap(), "{jti}");
    }
    let t = TokenFacts {
        jti: ":*{}".into(),
        iat: now,
        ..Default::default()
    };
    assert!(st.is_revoked(&t, now).await.unwrap());
    // a 512 KiB subject: revoked, blocked, replay-checked like any other
    RevocationStore::revoke(&*st, r(RevocationKind::Subject, &big))
        .await
        .unwrap();
    let t = TokenFacts {
        jti: "k".into(),
        sub: big.clone(),
        iat: now,
        ..Default::default()
    };
    assert!(st.is_revoked(&t, now).await.unwrap());
    let mut shorter = t.clone();
    shorter.sub.pop();
    assert!(!st.is_revoked(&shorter, now).await.unwrap());
    for v in hostile {
        assert!(!st.is_blocked(v, now).await.unwrap());
        st.block_subject(v, now + 30).await.unwrap();
        assert!(st.is_blocked(v, now).await.unwrap());
        assert!(st.first_use(v, v, now + 30, now).await.unwrap());
        assert!(!st.first_use(v, v, now + 30, now).await.unwrap());
        assert!(st
            .consume(v, v, &[v.to_string()], Some(v), now)
            .await
            .unwrap()
            .is_none());
        assert!(st.get(v, now).await.unwrap().is_none());
        assert!(!GrantStore::revoke(&*st, v, v).await.unwrap());
    }
    assert!(!st.is_blocked("grant:1234", now).await.unwrap());
    // grants for a subject named like a key, with hostile ids and scopes
    let mut g = conformance::grant("grant:123", ":*{}", &["*", "{rev}"], Some(1));
    g.task = Some("*".into());
    st.create(&g).await.unwrap();
    assert!(st
        .consume("grant:123", ":*{}", &["x".into()], Some("*"), now)
        .await
        .unwrap()
        .is_none());
    assert!(st
        .consume("grant:123", ":*{}", &["*".into()], Some("*"), now)
        .await
        .unwrap()
        .is_some());
    // a grant too large to store is refused, not truncated
    let huge = conformance::grant(&big, "api", &["a"], Some(1));
    assert!(matches!(
        st.create(&huge).await,
        Err(StoreError::Protocol(_))
    ));
    // the feed carries the values as they were
    let (feed, _) = st.list_since(None, 100, now).await.unwrap();
    assert!(feed.iter().any(|(_, r)| r.value == big));
    assert!(feed.iter().any(|(_, r)| r.value == ":*{}"));
    // and no key holds a raw value or grows with it
    let mut con = raw(&srv).await;
    for k in all_keys(&mut con).await {
        let name = String::from_utf8_lossy(&k).to_string();
        assert!(
            !name.contains("grant:123") && !name.contains(":*"),
            "{name}"
        );
    }
    assert_keys_bounded(&srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_then_restart_same_store_recovers() {
    let mut srv = require_redis!();
    let st = store(&srv);
    let now = unix_now();
    let t = TokenFacts {
        jti: "crash".into(),
        sub: "spiffe://td/c".into(),
        iat: now,
        ..Default::default()
    };
    assert!(!st.is_revoked(&t, now).await.unwrap());
    srv.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let r = st.is_revoked(&t, now).await;
        let took = started.elapsed();
        assert!(is_unavailable(&r), "{r:?}");
        assert!(took < 2 * T, "answered in {took:?}");
        let started = Instant::now();
        assert!(is_unavailable(&st.ping().await));
        assert!(started.elapsed() < 2 * T);
        assert!(is_unavailable(&st.first_use("i", "j", now + 9, now).await));
        assert!(is_unavailable(&st.consume("s", "a", &[], None, now).await));
    }
    srv.restart().unwrap();
    assert!(
        wait_healthy(&st, Duration::from_secs(5)).await,
        "same store recovers"
    );
    // the restarted server is empty (no persistence); scripts load again
    assert!(!st.is_revoked(&t, now).await.unwrap());
    RevocationStore::revoke(
        &*st,
        Revocation {
            kind: RevocationKind::Jti,
            value: "crash".into(),
            revoked_at: now,
            expires_at: now + 60,
        },
    )
    .await
    .unwrap();
    assert!(st.is_revoked(&t, now).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_opened_while_redis_is_down_starts_and_recovers() {
    let mut srv = require_redis!();
    srv.kill();
    let started = Instant::now();
    let stores = Stores::open(&srv.url(), "tessera", T).await.unwrap();
    assert!(started.elapsed() < 2 * T, "open is bounded");
    let started = Instant::now();
    assert!(is_unavailable(&stores.health.ping().await));
    assert!(is_unavailable(
        &stores.revocations.is_blocked("x", unix_now()).await
    ));
    assert!(started.elapsed() < 4 * T);
    srv.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stores.health.ping().await.is_err() {
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!stores
        .revocations
        .is_blocked("x", unix_now())
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_server_is_unavailable_within_the_timeout() {
    let srv = require_redis!();
    let st = store(&srv);
    let now = unix_now();
    st.ping().await.unwrap();
    let mut admin = raw(&srv).await;
    let () = ::redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let t = TokenFacts {
        jti: "slow".into(),
        iat: now,
        ..Default::default()
    };
    let started = Instant::now();
    let r = st.is_revoked(&t, now).await;
    let took = started.elapsed();
    assert!(is_unavailable(&r), "{r:?}");
    assert!(took >= T && took < 2 * T, "answered in {took:?}");
    let started = Instant::now();
    assert!(is_unavailable(&st.ping().await));
    assert!(started.elapsed() < 2 * T);
    // and it serves again once the server does
    assert!(wait_healthy(&st, Duration::from_secs(5)).await);
    assert!(!st.is_revoked(&t, now).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_share_one_redis() {
    let srv = require_redis!();
    let (a, b) = (store(&srv), store(&srv));
    let now = unix_now();
    let t = TokenFacts {
        jti: "shared".into(),
        sub: "spiffe://td/shared".into(),
        iat: now,
        ..Default::default()
    };
    assert!(!b.is_revoked(&t, now).await.unwrap());
    let c = RevocationStore::revoke(
        &*a,
        Revocation {
            kind: RevocationKind::Subject,
            value: "spiffe://td/shared".into(),
            revoked_at: now,
            expires_at: now + 60,
        },
    )
    .await
    .unwrap();
    assert!(b.is_revoked(&t, now).await.unwrap());
    let (feed, last) = b.list_since(None, 100, now).await.unwrap();
    assert_eq!(last, c);
    assert_eq!(feed.len(), 1);
    a.block_subject("spiffe://td/k", now + 60).await.unwrap();
    assert!(b.is_blocked("spiffe://td/k", now).await.unwrap());
    assert!(a.first_use("iss", "j", now + 60, now).await.unwrap());
    assert!(!b.first_use("iss", "j", now + 60, now).await.unwrap());
    // a 3-use grant shared by two brokers hands out exactly 3 uses
    let g = conformance::grant("spiffe://td/g", "api", &["a"], Some(3));
    a.create(&g).await.unwrap();
    assert_eq!(b.get(&g.id, now).await.unwrap(), Some(g.clone()));
    let mut tasks = Vec::new();
    for i in 0..9 {
        let st = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            st.consume("spiffe://td/g", "api", &["a".into()], None, now)
                .await
                .unwrap()
                .is_some()
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += usize::from(t.await.unwrap());
    }
    assert_eq!(n, 3);
    assert!(GrantStore::revoke(&*b, &g.id, "spiffe://td/g")
        .await
        .unwrap());
    assert_eq!(a.get(&g.id, now).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h88_lost_ttl_grant_past_its_end_is_not_consumed() {
    let srv = require_redis!();
    let st = store(&srv);
    let mut con = raw(&srv).await;
    let now = unix_now();
    let mut g = conformance::grant("spiffe://td/lost", "api", &["a"], Some(5));
    g.expires_at = now + 1;
    st.create(&g).await.unwrap();
    let key = st.key_grant(&g.subject, &g.id);
    // lose the TTLs of the grant and of its index
    for k in [key.clone(), st.key_grant_index(&g.subject)] {
        let persisted: i64 = ::redis::cmd("PERSIST")
            .arg(&k)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(persisted, 1);
    }
    // a replay record lives as long as its expiry, by the real clock
    assert!(st.first_use("iss", "r", now + 1, now).await.unwrap());
    assert!(!st.first_use("iss", "r", now + 1, now).await.unwrap());
    while unix_now() <= g.expires_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let later = unix_now();
    let exists: i64 = ::redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(exists, 1, "the key outlived its grant");
    // even a caller whose clock lags does not get it: the store's own
    // expires_at check drops it
    assert!(st
        .consume(&g.subject, "api", &["a".into()], None, now)
        .await
        .unwrap()
        .is_none());
    assert!(st
        .consume(&g.subject, "api", &["a".into()], None, later)
        .await
        .unwrap()
        .is_none());
    let exists: i64 = ::redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(exists, 0, "consume removed the dead grant");
    assert!(st.first_use("iss", "r", later + 5, later).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_in_url_works_and_is_never_shown() {
    let _probe = require_redis!();
    let srv = RedisServer::start_with(&["--requirepass", "s3cret-pw"]).unwrap();
    let port = srv.port();
    let good = RedisStore::new(&cfg(&format!("redis://:s3cret-pw@127.0.0.1:{port}/0"))).unwrap();
    good.ping().await.unwrap();
    assert!(!format!("{good:?}").contains("s3cret"));
    assert!(!format!("{:?}", cfg("redis://:s3cret-pw@h")).contains("s3cret"));
    let bad = RedisStore::new(&cfg(&format!("redis://:wrong-pw@127.0.0.1:{port}"))).unwrap();
    let e = bad.ping().await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(!e.to_string().contains("wrong-pw"), "{e}");
    let none = RedisStore::new(&cfg(&srv.url())).unwrap();
    let e = none.ping().await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
}

#[tokio::test]
async fn configuration_errors_never_show_the_url() {
    for url in [
        "redis://:pw-1@127.0.0.1:1/?foo=bar",
        "rediss://:pw-1@127.0.0.1:1/#insecure",
        "redis://:pw-1@127.0.0.1:1/?ca=/etc/hosts",
        "rediss://:pw-1@127.0.0.1:1/?ca=/nonexistent/pw-1",
        "http://:pw-1@127.0.0.1:1/",
        "redis://:pw-1@[::1:1/",
    ] {
        let e = RedisStore::new(&cfg(url)).unwrap_err();
        assert!(!e.to_string().contains("pw-1"), "{e}");
        let e = Stores::open(url, "tessera", T).await.err().unwrap();
        assert!(!e.to_string().contains("pw-1"), "{e}");
    }
    for prefix in ["", "a{b}", "a:b", &"p".repeat(33)] {
        let mut c = cfg("redis://127.0.0.1:1");
        c.prefix = prefix.into();
        assert!(RedisStore::new(&c).is_err(), "{prefix}");
    }
    for timeout in [Duration::ZERO, Duration::from_secs(31)] {
        let mut c = cfg("redis://127.0.0.1:1");
        c.timeout = timeout;
        assert!(RedisStore::new(&c).is_err());
    }
    // cluster and sentinel URLs open lazily; malformed ones are refused,
    // naming the rule, never the URL
    for url in [
        "redis+cluster://127.0.0.1:1",
        "redis+sentinel://127.0.0.1:1/m",
        "rediss+cluster://127.0.0.1:1",
        "rediss+sentinel://127.0.0.1:1/m",
    ] {
        assert!(Stores::open(url, "tessera", T).await.is_ok(), "{url}");
    }
    for (url, why) in [
        // TLS is said once, by the scheme, for every node (issue 17 item 7)
        ("redis+cluster://rediss://:pw-1@h:1", "one scheme"),
        ("rediss+sentinel://:pw-1@h:1,rediss://h:2/m", "one scheme"),
        ("redis+sentinel://:pw-1@h:1/m?ca=/etc/hosts", "CA"),
        ("rediss+cluster://:pw-1@h:1?tls=true", "scheme"),
        ("rediss+cluster://:pw-1@h:1#insecure", "fragments"),
        ("rediss://:pw-1@h:1,h:2", "several nodes"),
        ("rediss+cluster://:pw-1@h:1/0", "no path"),
        ("rediss+sentinel://:pw-1@h:1", "mastername"),
        ("redis+cluster://:pw-1@h", "host:port"),
        ("redis+cluster://:pw-1@h:1,", "host:port"),
        ("redis+cluster://:pw-1@h:1/0", "no path"),
        ("redis+sentinel://:pw-1@h:1", "mastername"),
        ("redis+sentinel://:pw-1@h:1/m{x}", "mastername"),
        ("redis+cluster://:pw-1@h:1?ca=/etc/hosts", "CA"),
    ] {
        let e = RedisStore::new(&cfg(url)).unwrap_err();
        assert!(e.to_string().contains(why), "{url}: {e}");
        assert!(!e.to_string().contains("pw-1"), "{e}");
    }
    assert!(Stores::open("memory://", "tessera", T).await.is_ok());
    // outside a runtime: an error, not a panic
    let e = std::thread::spawn(|| RedisStore::new(&cfg("redis://127.0.0.1:1")).err())
        .join()
        .unwrap();
    assert!(e.is_some());
}

/// A CA and a `localhost` server certificate (PEM), made with rcgen.
fn tls_material() -> (TlsFiles, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tessera test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_pem = ca.pem().into_bytes();
    (
        TlsFiles {
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
            ca_pem: ca_pem.clone(),
        },
        ca_pem,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let _probe = require_redis!();
    let (files, ca_pem) = tls_material();
    let srv = RedisServer::start_tls(&files).unwrap();
    // CA given to the constructor
    let mut c = cfg(&srv.url());
    c.ca_pem = Some(ca_pem.clone());
    let st = Arc::new(RedisStore::new(&c).unwrap());
    st.ping().await.unwrap();
    conformance::run_all(Stores::from_backend(st)).await;
    // CA given in the URL
    let ca_path = srv.dir().join("client-ca.pem");
    std::fs::write(&ca_path, &ca_pem).unwrap();
    let url = format!("{}?ca={}", srv.url(), ca_path.display());
    let stores = Stores::open(&url, "tessera", T).await.unwrap();
    stores.health.ping().await.unwrap();
    // without the CA the server is not trusted: fail closed
    let untrusted = RedisStore::new(&cfg(&srv.url())).unwrap();
    assert!(is_unavailable(&untrusted.ping().await));
    // plain redis:// to a TLS port gets nowhere either
    let plain = RedisStore::new(&cfg(&format!("redis://127.0.0.1:{}", srv.port()))).unwrap();
    assert!(plain.ping().await.is_err());
}

/// The hash tag Redis Cluster would route `key` by.
fn hash_tag(key: &str) -> &str {
    match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    }
}

#[tokio::test]
async fn key_schema_slots_and_bounds() {
    let st = RedisStore::new(&cfg("redis://127.0.0.1:1")).unwrap();
    let big = "x".repeat(512 * 1024);
    let values = ["", "grant:123", ":*{}", "}{", "{rev}", big.as_str()];
    for v in values {
        let mut rev: Vec<String> = [
            RevocationKind::Jti,
            RevocationKind::Subject,
            RevocationKind::Task,
            RevocationKind::Grant,
        ]
        .into_iter()
        .map(|k| st.key_revocation(k, v))
        .collect();
        rev.push(st.key_feed());
        rev.push(st.key_block(v));
        for k in &rev {
            assert_eq!(hash_tag(k), "rev", "{k}");
        }
        let subject_keys = [
            st.key_grant(v, "id-1"),
            st.key_grant(v, v),
            st.key_grant_index(v),
        ];
        let tag = hash_tag(&subject_keys[0]).to_string();
        assert!(tag.starts_with("g:") && tag.len() == 66, "{tag}");
        assert!(subject_keys.iter().all(|k| hash_tag(k) == tag));
        assert_eq!(hash_tag(&st.key_grant_pointer(v)), "gx");
        assert_eq!(hash_tag(&st.key_grant_all()), "gx");
        let mut all = rev.clone();
        all.extend(subject_keys);
        all.push(st.key_replay(v, v));
        all.push(st.key_grant_pointer(v));
        for k in &all {
            assert!(k.len() <= MAX_KEY_LEN, "{k}");
            assert!(k.starts_with("tessera:"));
            assert!(!k.contains('*') && !k.contains(' '));
        }
        // kinds never share a key
        let mut uniq = rev.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), rev.len());
    }
    // replay keys: namespace and id are not concatenated ambiguously
    assert_ne!(st.key_replay("ab", "c"), st.key_replay("a", "bc"));
}

#[test]
fn cursors_sort_in_feed_order() {
    use super::cursor::{decode_cursor, encode_cursor};
    let ids = [
        "0-0",
        "9-0",
        "9-1",
        "9-10",
        "10-0",
        "1700000000000-2",
        "1700000000001-0",
    ];
    let cursors: Vec<String> = ids.iter().map(|i| encode_cursor(i).unwrap()).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    for (i, c) in ids.iter().zip(&cursors) {
        assert_eq!(decode_cursor(c).unwrap(), *i);
    }
    for bad in ["", "1-2", "00000000000000000001", "x", "-", &"9".repeat(41)] {
        assert!(decode_cursor(bad).is_err(), "{bad}");
    }
    assert!(encode_cursor("nope").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_auth_at_connect_recovers_once_fixed() {
    // A failed connection attempt that is not an I/O error (here AUTH) is
    // cached by the connection manager forever; the store must replace it.
    let _probe = require_redis!();
    let srv = RedisServer::start_with(&["--requirepass", "old-pw"]).unwrap();
    let port = srv.port();
    let st = RedisStore::new(&cfg(&format!("redis://:new-pw@127.0.0.1:{port}"))).unwrap();
    for _ in 0..3 {
        let e = st.ping().await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        assert!(!e.to_string().contains("pw"), "{e}");
    }
    let mut admin = ::redis::Client::open(format!("redis://:old-pw@127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("new-pw")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        wait_healthy(&st, Duration::from_secs(5)).await,
        "the same store recovers once the password matches"
    );
}

#[test]
fn digest_is_sha256_hex() {
    let st_key = |v: &str| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _g = rt.enter();
        RedisStore::new(&cfg("redis://127.0.0.1:1"))
            .unwrap()
            .key_block(v)
    };
    // sha256("abc")
    assert_eq!(
        st_key("abc"),
        "tessera:{rev}:blk:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

fn store_with(s: &RedisServer, o: &StoreOptions) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::new(&cfg(&s.url()))
            .unwrap()
            .with_options(o)
            .unwrap(),
    )
}

/// R3: consecutive connection failures open the breaker (calls then fail
/// without touching Redis, naming the open circuit); error answers such as
/// `OOM` never do; the breaker closes by itself once Redis answers a probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_unreachable_redis_only_and_closes_when_it_answers() {
    let mut srv = require_redis!();
    let st = store_with(
        &srv,
        &StoreOptions {
            breaker: crate::store::breaker::BreakerConfig {
                failures: 3,
                cool_off: Duration::from_millis(200),
                cool_off_max: Duration::from_secs(1),
            },
            ..Default::default()
        },
    );
    let now = unix_now();
    st.ping().await.unwrap();

    // answers, even refusals, never open it
    let mut admin = raw(&srv).await;
    let () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query_async(&mut admin)
        .await
        .unwrap();
    for i in 0..10 {
        let r = st.first_use("oom", &format!("{i}"), now + 60, now).await;
        assert!(is_unavailable(&r), "{r:?}");
    }
    assert!(!st.breaker().is_open(), "OOM is an answer");
    let () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(&mut admin)
        .await
        .unwrap();
    drop(admin);

    srv.kill();
    for _ in 0..3 {
        let e = st.ping().await.unwrap_err().to_string();
        assert!(!e.contains("circuit open"), "{e}");
    }
    assert!(st.breaker().is_open());
    for _ in 0..20 {
        let e = st.is_blocked("x", now).await.unwrap_err().to_string();
        assert!(e.contains("circuit open"), "{e}");
        assert!(e.contains("is_blocked"), "names the operation: {e}");
    }

    srv.restart().unwrap();
    assert!(
        wait_healthy(&st, Duration::from_secs(5)).await,
        "a probe closes it"
    );
    assert!(!st.breaker().is_open());
    assert!(!st.is_blocked("x", now).await.unwrap());
}

/// Sleeps until the open breaker allows its probe (no-op when not open).
async fn wait_out_cool_off(st: &RedisStore) {
    if let crate::store::breaker::State::Open { until, .. } = st.breaker().state() {
        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
    }
}

/// R3, issue 17 item 4: the breaker closes on the *first* probe that Redis
/// answers. Before the fix the probe awaited the reconnection attempt the
/// connection manager had made (and cached as failed) while Redis was down,
/// so recovery took a second cool-off. Counted in probes, not time: one
/// probe while Redis is down fails and reopens; Redis restarts on the same
/// port; the next probe (the first one Redis can answer) closes the breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_closes_on_the_first_probe_that_redis_answers() {
    let mut srv = require_redis!();
    let st = store_with(
        &srv,
        &StoreOptions {
            breaker: crate::store::breaker::BreakerConfig {
                failures: 2,
                cool_off: Duration::from_millis(100),
                cool_off_max: Duration::from_millis(200),
            },
            ..Default::default()
        },
    );
    st.ping().await.unwrap();
    srv.kill();
    for _ in 0..2 {
        let e = st.ping().await.unwrap_err().to_string();
        assert!(!e.contains("circuit open"), "{e}");
    }
    assert!(st.breaker().is_open());

    // probe 1: Redis still down, it fails and the breaker stays open
    wait_out_cool_off(&st).await;
    let e = st.ping().await.unwrap_err().to_string();
    assert!(!e.contains("circuit open"), "this call was the probe: {e}");
    assert!(matches!(
        st.breaker().state(),
        crate::store::breaker::State::Open { backoff, .. } if backoff == Duration::from_millis(200)
    ));

    // probe 2: the first one after Redis is back closes the breaker
    srv.restart().unwrap();
    wait_out_cool_off(&st).await;
    st.ping()
        .await
        .expect("the first probe that Redis can answer succeeds");
    assert_eq!(
        st.breaker().state(),
        crate::store::breaker::State::Closed { failures: 0 }
    );
    assert!(!st.is_blocked("x", unix_now()).await.unwrap());
}

/// R5: with no replica required nothing is waited for; with one required
/// and none attached, the revocation is made (and enforced) after at most
/// about `revocation_wait`, reported with 0 acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_acked_reports_replica_acknowledgements() {
    let srv = require_redis!();
    let now = unix_now();
    let rev = |v: &str| Revocation {
        kind: RevocationKind::Task,
        value: v.into(),
        revoked_at: now,
        expires_at: now + 60,
    };
    let plain = store(&srv);
    let done = plain.revoke_acked(rev("t0")).await.unwrap();
    assert_eq!(done.replicas, None);
    assert!(done.durable());

    let st = store_with(
        &srv,
        &StoreOptions {
            revocation_replicas: 1,
            revocation_wait: Duration::from_millis(100),
            ..Default::default()
        },
    );
    let started = Instant::now();
    let done = st.revoke_acked(rev("t1")).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(
        done.replicas,
        Some(ReplicaAck {
            acked: 0,
            required: 1
        })
    );
    assert!(!done.durable());
    let t = TokenFacts {
        txn: "t1".into(),
        iat: now,
        ..Default::default()
    };
    assert!(st.is_revoked(&t, now).await.unwrap(), "in force anyway");
    // the feed has it, after t0
    let (entries, _) = st.list_since(None, 10, now).await.unwrap();
    let values: Vec<&str> = entries.iter().map(|(_, r)| r.value.as_str()).collect();
    assert_eq!(values, ["t0", "t1"]);

    // bounds
    for o in [
        StoreOptions {
            revocation_replicas: 65,
            ..Default::default()
        },
        StoreOptions {
            revocation_wait: Duration::ZERO,
            ..Default::default()
        },
        StoreOptions {
            revocation_wait: Duration::from_secs(11),
            ..Default::default()
        },
    ] {
        assert!(RedisStore::new(&cfg(&srv.url()))
            .unwrap()
            .with_options(&o)
            .is_err());
    }
}

/// Replica acknowledgements are accepted with every kind of URL: a
/// single primary, Sentinel, and a cluster (where `WAIT` goes to the master
/// of the revocation slot; `cluster_tests` checks it on a real cluster). No
/// server is needed (connections are lazy).
#[tokio::test]
async fn revocation_replicas_are_accepted_on_every_url_kind() {
    let o = StoreOptions {
        revocation_replicas: 1,
        ..StoreOptions::default()
    };
    let t = Duration::from_millis(250);
    for url in [
        "redis://127.0.0.1:1",
        "redis+sentinel://127.0.0.1:1/mymaster",
        "redis+cluster://127.0.0.1:1,127.0.0.1:2",
        "redis+cluster://user:secret@127.0.0.1:1",
    ] {
        assert!(Stores::open_with(url, "t", t, &o).await.is_ok(), "{url}");
    }
}

// ---- the subject block cache (`super::block_cache`) ----

use super::block_cache::{CONNECTION_NAME, LEASE};
use crate::testkit_redis::command_calls;

/// A store with the block cache on, once its tracking connection is live.
async fn cached_store(s: &RedisServer) -> Arc<RedisStore> {
    let st = store_with(s, &StoreOptions::default());
    wait_live(&st, true).await;
    st
}

/// A store with the block cache off.
fn uncached_store(s: &RedisServer) -> Arc<RedisStore> {
    store_with(
        s,
        &StoreOptions {
            block_cache: false,
            ..Default::default()
        },
    )
}

/// Waits (at most 3 s) until the block cache is (or is not) live.
async fn wait_live(st: &RedisStore, live: bool) {
    let c = st.block_cache().expect("block cache on");
    let deadline = Instant::now() + Duration::from_secs(3);
    while c.is_live() != live {
        assert!(
            Instant::now() < deadline,
            "block cache live={} after 3 s, wanted {live}",
            c.is_live()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `is_blocked` (at most 2 s) until it says `want`.
async fn wait_blocked(st: &RedisStore, subject: &str, now: u64, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while st.is_blocked(subject, now).await.unwrap() != want {
        assert!(
            Instant::now() < deadline,
            "{subject}: is_blocked still {} after 2 s",
            !want
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The id of the block cache's tracking connection (`CLIENT LIST`).
pub(super) fn tracker_id(port: u16) -> Option<String> {
    let list = crate::testkit_redis::command_text(port, &["CLIENT", "LIST"]).unwrap();
    list.lines()
        .find(|l| l.contains(&format!(" name={CONNECTION_NAME} ")))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_string)
}

/// Repeated checks of one subject are answered here: one `GET` reaches
/// Redis, however many checks; the tracking connection is a broadcast one on
/// the block prefix only; and every store behaviour is unchanged (the
/// conformance suite with the cache live).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_cache_answers_repeat_checks_without_a_redis_read() {
    let srv = require_redis!();
    let st = cached_store(&srv).await;
    let now = unix_now();
    let gets = command_calls(srv.port(), "get").unwrap();
    for _ in 0..50 {
        assert!(!st.is_blocked("spiffe://td/a", now).await.unwrap());
    }
    assert_eq!(command_calls(srv.port(), "get").unwrap(), gets + 1);
    let s = st.block_cache().unwrap().stats();
    assert_eq!((s.misses, s.hits, s.off), (1, 49, 0));

    // A blocked subject is cached as blocked (once Redis's invalidations
    // of this store's own write have arrived), and its end is honoured
    // without asking Redis again.
    st.block_subject("spiffe://td/b", now + 100).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let hits = st.block_cache().unwrap().stats().hits;
        assert!(st.is_blocked("spiffe://td/b", now).await.unwrap());
        if st.block_cache().unwrap().stats().hits > hits {
            break;
        }
        assert!(Instant::now() < deadline, "the block was never cached");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let gets = command_calls(srv.port(), "get").unwrap();
    assert!(st.is_blocked("spiffe://td/b", now + 99).await.unwrap());
    assert!(!st.is_blocked("spiffe://td/b", now + 100).await.unwrap());
    assert_eq!(command_calls(srv.port(), "get").unwrap(), gets);

    let list = crate::testkit_redis::command_text(srv.port(), &["CLIENT", "LIST"]).unwrap();
    let line = list
        .lines()
        .find(|l| l.contains(&format!(" name={CONNECTION_NAME} ")))
        .expect("tracking connection listed");
    assert!(line.contains(" resp=3"), "{line}");
    let flags = line
        .split(' ')
        .find_map(|f| f.strip_prefix("flags="))
        .unwrap();
    assert!(flags.contains('t') && flags.contains('B'), "{line}");

    conformance::run_all(Stores::from_backend(st.clone())).await;
    assert!(st.block_cache().unwrap().stats().hits > 49);
    assert_keys_bounded(&srv).await;
}

/// Blocks written by another broker, by hand, by expiry or by a flush are
/// honoured as soon as Redis's invalidation arrives; a block written
/// through this store is honoured at once, with no wait at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_cache_follows_writes_from_anywhere() {
    let srv = require_redis!();
    let a = cached_store(&srv).await;
    let b = store(&srv); // another replica, without a cache
    let now = unix_now();
    let subject = "spiffe://td/elsewhere";
    assert!(!a.is_blocked(subject, now).await.unwrap());
    assert_eq!(a.block_cache().unwrap().len(), 1);

    // Another broker blocks the subject.
    b.block_subject(subject, now + 100).await.unwrap();
    wait_blocked(&a, subject, now, true).await;
    assert!(a.block_cache().unwrap().stats().invalidations >= 1);

    // Another broker lifts the block (`tessera unblock`): lifted here too.
    assert!(b.unblock_subject(subject, now).await.unwrap());
    wait_blocked(&a, subject, now, false).await;
    assert!(b.list_blocks(now).await.unwrap().is_empty());
    b.block_subject(subject, now + 100).await.unwrap();
    wait_blocked(&a, subject, now, true).await;

    // Deleted by hand: unblocked here too.
    let key = a.key_block(subject);
    let mut con = raw(&srv).await;
    let () = ::redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    wait_blocked(&a, subject, now, false).await;

    // Written by hand.
    let () = ::redis::cmd("SET")
        .arg(&key)
        .arg(now + 100)
        .query_async(&mut con)
        .await
        .unwrap();
    wait_blocked(&a, subject, now, true).await;

    // A flush of the database empties the cache.
    assert!(!a.block_cache().unwrap().is_empty());
    let () = ::redis::cmd("FLUSHALL")
        .query_async(&mut con)
        .await
        .unwrap();
    wait_blocked(&a, subject, now, false).await;

    // Through this store: strict, no polling.
    let here = "spiffe://td/here";
    assert!(!a.is_blocked(here, now).await.unwrap());
    assert!(!a.is_blocked(here, now).await.unwrap());
    a.block_subject(here, now + 100).await.unwrap();
    assert!(a.is_blocked(here, now).await.unwrap());
    // ... and so is an unblock through this store.
    assert!(a.unblock_subject(here, now).await.unwrap());
    assert!(!a.is_blocked(here, now).await.unwrap());
}

/// A read that was on the wire when a block was written is never cached as
/// "not blocked": hammered from several tasks while another store blocks
/// and unblocks, the cached answer ends right after every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_cache_never_keeps_an_answer_older_than_a_write() {
    let srv = require_redis!();
    let a = cached_store(&srv).await;
    let b = store(&srv);
    let mut con = raw(&srv).await;
    let now = unix_now();
    let subject = "spiffe://td/racy";
    let key = a.key_block(subject);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let a = a.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    a.is_blocked(subject, now).await.unwrap();
                    // A hit does no I/O: let the connections' tasks run.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for round in 0..40 {
        if round % 2 == 0 {
            b.block_subject(subject, now + 100).await.unwrap();
        } else {
            let () = ::redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut con)
                .await
                .unwrap();
        }
        wait_blocked(&a, subject, now, round % 2 == 0).await;
        // And it stays so: nothing older was cached after the change.
        for _ in 0..20 {
            assert_eq!(
                a.is_blocked(subject, now).await.unwrap(),
                round % 2 == 0,
                "round {round}: a stale answer came back"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    assert!(a.block_cache().unwrap().stats().hits > 0);
}

/// Losing the tracking connection turns the cache off at once (checks read
/// Redis, and see a block written meanwhile); it comes back by itself.
/// A server that stops answering turns it off within the lease, and the
/// check then fails closed instead of answering from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_cache_turns_off_when_its_connection_fails_and_fails_closed() {
    let mut srv = require_redis!();
    let a = cached_store(&srv).await;
    let b = store(&srv);
    let now = unix_now();
    let subject = "spiffe://td/conn";
    assert!(!a.is_blocked(subject, now).await.unwrap());
    assert!(!a.is_blocked(subject, now).await.unwrap());
    let cache = a.block_cache().unwrap();
    assert_eq!(cache.stats().sessions, 1);

    // Killed by the server: off, and empty.
    let id = tracker_id(srv.port()).expect("tracking connection listed");
    crate::testkit_redis::command(srv.port(), &["CLIENT", "KILL", "ID", &id]).unwrap();
    wait_live(&a, false).await;
    assert!(cache.is_empty());
    b.block_subject(subject, now + 100).await.unwrap();
    assert!(a.is_blocked(subject, now).await.unwrap());
    // Back by itself, on a new connection, starting empty.
    wait_live(&a, true).await;
    assert_eq!(cache.stats().sessions, 2);
    assert_ne!(tracker_id(srv.port()), Some(id));
    assert!(a.is_blocked(subject, now).await.unwrap());
    let hits = cache.stats().hits;
    assert!(a.is_blocked(subject, now).await.unwrap());
    assert_eq!(cache.stats().hits, hits + 1);

    // A server that stops answering: no cached answer after the lease, even
    // while the tracking connection still waits for its `PONG` (this store
    // waits 2 s for an answer, far longer than the lease).
    let slow = Arc::new(
        RedisStore::new(&RedisConfig {
            timeout: Duration::from_secs(2),
            ..cfg(&srv.url())
        })
        .unwrap()
        .with_options(&StoreOptions::default())
        .unwrap(),
    );
    wait_live(&slow, true).await;
    let other = "spiffe://td/cached";
    for st in [&a, &slow] {
        assert!(!st.is_blocked(other, now).await.unwrap());
        assert!(!st.is_blocked(other, now).await.unwrap());
    }
    srv.suspend().unwrap();
    tokio::time::sleep(LEASE + Duration::from_millis(150)).await;
    for st in [&a, &slow] {
        let cache = st.block_cache().unwrap();
        assert!(!cache.is_live());
        assert_eq!(
            cache.stats().sessions,
            if Arc::ptr_eq(st, &a) { 2 } else { 1 }
        );
        let e = st.is_blocked(other, now).await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    }
    srv.resume().unwrap();
    wait_live(&a, true).await;
    wait_live(&slow, true).await;
    assert!(!a.is_blocked(other, now).await.unwrap());

    // A restarted (empty) server: the cache follows.
    srv.restart().unwrap();
    wait_live(&a, true).await;
    // (The store's own connection may fail once on the dropped socket.)
    let deadline = Instant::now() + Duration::from_secs(2);
    while a.is_blocked(subject, now).await.is_err() {
        assert!(Instant::now() < deadline, "no answer after the restart");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!a.is_blocked(subject, now).await.unwrap());
}

/// Off when configured off; on for every topology otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_cache_can_be_turned_off() {
    let srv = require_redis!();
    let off = uncached_store(&srv);
    assert!(off.block_cache().is_none());
    let gets = command_calls(srv.port(), "get").unwrap();
    for _ in 0..3 {
        assert!(!off.is_blocked("spiffe://td/x", unix_now()).await.unwrap());
    }
    assert_eq!(command_calls(srv.port(), "get").unwrap(), gets + 3);
    assert!(tracker_id(srv.port()).is_none());
    for url in [
        "redis+cluster://127.0.0.1:1,127.0.0.1:2",
        "redis+sentinel://127.0.0.1:1/mymaster",
    ] {
        let st = RedisStore::new(&cfg(url))
            .unwrap()
            .with_options(&StoreOptions::default())
            .unwrap();
        // On, but not live: nothing answers there.
        assert!(st.block_cache().is_some_and(|c| !c.is_live()), "{url}");
    }
}

/// A revocation made through another broker wakes this process's feed
/// poller at once (Redis's invalidation of the feed key on the tracking
/// connection): a follower of this broker's feed gets it although the
/// poller would not read the store again for an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_elsewhere_reaches_the_feed_without_waiting_for_a_poll() {
    let srv = require_redis!();
    let a: Arc<RedisStore> = cached_store(&srv).await;
    let b = store(&srv);
    let mut signal = a.feed_changes().expect("a feed signal with the cache on");
    signal.borrow_and_update();
    let (events, _) = tokio::sync::watch::channel(0u64);
    let hub = Arc::new(feed::FeedHub::new(a.clone(), events).with_poll(Duration::from_secs(3600)));
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
    let mut sub = hub.subscribe(None, clock);
    let rev = crate::store::conformance::task_revocation;
    RevocationStore::revoke(&*b, rev("before")).await.unwrap();
    // Catch-up from the store (the poller starts at the feed's end).
    match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
        Ok(feed::FeedEvent::Entry(_, r)) => assert_eq!(r.value, "before"),
        other => panic!("{other:?}"),
    }
    // Caught up: from now on the subscription waits on the poller.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "nothing more to deliver"
    );
    for i in 0..3 {
        let v = format!("elsewhere-{i}");
        // Made while the subscription waits on the poller.
        let writer = {
            let (b, r) = (b.clone(), rev(&v));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                RevocationStore::revoke(&*b, r).await.unwrap();
            })
        };
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(feed::FeedEvent::Entry(_, r)) => assert_eq!(r.value, v),
            other => panic!("{v}: not delivered without a poll: {other:?}"),
        }
        writer.await.unwrap();
    }
    assert!(signal.has_changed().unwrap());
    // Without the cache there is no signal: the poller polls.
    let off = uncached_store(&srv);
    assert!(off.feed_changes().is_none());
}

/// A Redis user without `CLIENT` (ACL): the cache stays off, and every
/// check reads Redis (no error reaches the exchange).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_cache_without_the_client_permission_stays_off_and_checks_still_work() {
    let srv = require_redis!();
    crate::testkit_redis::command(
        srv.port(),
        &[
            "ACL",
            "SETUSER",
            "limited",
            "on",
            ">pw-limited",
            "~*",
            "+@all",
            "-client",
        ],
    )
    .unwrap();
    let url = format!("redis://limited:pw-limited@127.0.0.1:{}", srv.port());
    let st = Arc::new(
        RedisStore::new(&cfg(&url))
            .unwrap()
            .with_options(&StoreOptions::default())
            .unwrap(),
    );
    let now = unix_now();
    st.block_subject("spiffe://td/acl", now + 600)
        .await
        .unwrap();
    // Well past the first attempt (made at once, refused with NOPERM).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cache = st.block_cache().unwrap();
    assert!(!cache.is_live());
    assert_eq!(cache.stats().sessions, 0);
    let gets = command_calls(srv.port(), "get").unwrap();
    for _ in 0..3 {
        assert!(st.is_blocked("spiffe://td/acl", now).await.unwrap());
        assert!(!st.is_blocked("spiffe://td/ok", now).await.unwrap());
    }
    assert_eq!(command_calls(srv.port(), "get").unwrap(), gets + 6);
    assert_eq!(cache.stats().off, 6);
}

/// Over TLS with a private CA (`rediss://`), the tracking connection uses
/// the store's TLS settings: the cache goes live and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_cache_over_tls_with_a_private_ca() {
    let _probe = require_redis!();
    let (files, ca_pem) = tls_material();
    let srv = RedisServer::start_tls(&files).unwrap();
    let mut c = cfg(&srv.url());
    c.ca_pem = Some(ca_pem);
    let st = Arc::new(
        RedisStore::new(&c)
            .unwrap()
            .with_options(&StoreOptions::default())
            .unwrap(),
    );
    wait_live(&st, true).await;
    let now = unix_now();
    for _ in 0..3 {
        assert!(!st.is_blocked("spiffe://td/tls", now).await.unwrap());
    }
    let s = st.block_cache().unwrap().stats();
    assert_eq!((s.misses, s.hits), (1, 2));
    let other = Arc::new(RedisStore::new(&c).unwrap());
    other
        .block_subject("spiffe://td/tls", now + 600)
        .await
        .unwrap();
    wait_blocked(&st, "spiffe://td/tls", now, true).await;
}
