//! The Redis backend on Redis Cluster and Redis Sentinel: every key a call
//! or script touches is in one slot, and the conformance suite passes on a
//! real three-master cluster and through a real sentinel. Skipped loudly
//! when `redis-server` is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use super::conformance;
use super::redis::{RedisConfig, RedisStore};
use super::*;
use crate::testkit_redis::{cluster_or_skip, command, sentinel_or_skip};

/// Per-call timeout of these tests (a first call connects to every node).
const T: Duration = Duration::from_secs(2);

fn store(url: &str) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::new(&RedisConfig {
            url: url.to_string(),
            prefix: "tessera".into(),
            timeout: T,
            ca_pem: None,
        })
        .unwrap(),
    )
}

/// CRC16/XMODEM, as Redis Cluster computes it.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The cluster slot of a key: CRC16 of its hash tag (the text between the
/// first `{` and the next `}`, when not empty) or of the whole key.
fn slot(key: &str) -> u16 {
    let k = key.as_bytes();
    let tagged = k.iter().position(|&b| b == b'{').and_then(|s| {
        let rest = &k[s + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&e| e > 0)
            .map(|e| &rest[..e])
    });
    crc16(tagged.unwrap_or(k)) % 16384
}

#[test]
fn slot_function_matches_redis() {
    // CRC16/XMODEM check value, and `CLUSTER KEYSLOT` answers of Redis 7.
    assert_eq!(crc16(b"123456789"), 0x31c3);
    assert_eq!(slot("foo"), 12182);
    assert_eq!(slot("{user1000}.following"), slot("user1000"));
    assert_eq!(slot("foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
    assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
}

/// Asserts every key is in one slot.
fn one_slot(what: &str, keys: &[String]) {
    let s = slot(&keys[0]);
    for k in keys {
        assert_eq!(slot(k), s, "{what}: {k} is not in the slot of {}", keys[0]);
    }
}

/// For hostile sample inputs (braces, colons, the other tags), the keys
/// of every script and of every pipeline are in one slot, those built
/// inside a script included.
#[tokio::test]
async fn every_script_and_pipeline_touches_one_slot() {
    let st = store("redis://127.0.0.1:1");
    let samples = [
        "",
        "spiffe://example.org/agent/demo",
        "{rev}",
        "}{gx}",
        "a:{ap}:b",
        "{g:00}",
        "\u{e9}{",
    ];
    let digest = |x: &str| conformance::unix_now().to_string() + x; // any id
    for a in samples {
        for b in samples {
            // revoke script (entry, feed) and the is_revoked pipeline
            let mut rev = vec![st.key_feed()];
            for kind in [
                RevocationKind::Jti,
                RevocationKind::Subject,
                RevocationKind::Task,
                RevocationKind::Grant,
            ] {
                rev.push(st.key_revocation(kind, a));
                rev.push(st.key_revocation(kind, b));
            }
            rev.push(st.key_block(a)); // block script, is_blocked
            one_slot("revocations", &rev);
            // grant pointer script; list's pipeline; revoke's cleanup
            one_slot(
                "grant pointers",
                &[
                    st.key_grant_all(),
                    st.key_grant_pointer(a),
                    st.key_grant_pointer(b),
                ],
            );
            // grant create / revoke / consume scripts: the grant, the index,
            // and every grant key the script builds as ARGV prefix .. H(id)
            let prefix = st.key_grant_prefix(a);
            assert!(st.key_grant(a, b).starts_with(&prefix));
            one_slot(
                "a subject's grants",
                &[
                    st.key_grant_index(a),
                    st.key_grant(a, b),
                    format!("{prefix}{}", "0".repeat(64)),
                    format!("{prefix}{}", "f".repeat(64)),
                    st.key_grant(a, &digest(b)),
                ],
            );
            // approval create script; decide / poll; the list pipeline
            one_slot(
                "approvals",
                &[
                    st.key_approval(a),
                    st.key_approval(b),
                    st.key_approval_all(),
                    st.key_approval_requester(a),
                    st.key_approval_requester(b),
                ],
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_conformance_and_keys_spread_over_the_masters() {
    let Some(cluster) = cluster_or_skip(3).unwrap() else {
        return;
    };
    let st = store(&cluster.url());
    st.ping().await.unwrap();
    conformance::run_all(Stores::from_backend(st)).await;
    // The suite's keys are on more than one master (it is really a cluster).
    let used = cluster
        .nodes
        .iter()
        .filter(|n| matches!(command(n.port(), &["DBSIZE"]), Ok(::redis::Value::Int(k)) if k > 0))
        .count();
    assert!(used >= 2, "keys on {used} of 3 masters");
    // Opened through the config path too.
    let stores = Stores::open(&cluster.url(), "other", T).await.unwrap();
    stores.health.ping().await.unwrap();
}

/// What Redis cluster does with a script that touches keys it did not
/// declare in `KEYS` (the grant create and consume scripts build grant keys
/// from the index): one in the declared slot runs; one on another master is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_runs_undeclared_script_keys_only_in_the_declared_slot() {
    let Some(cluster) = cluster_or_skip(3).unwrap() else {
        return;
    };
    let client = ::redis::cluster::ClusterClient::new(
        cluster
            .nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port()))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mut con = client.get_async_connection().await.unwrap();
    let body = "redis.call('SET', ARGV[1], 'x') return redis.call('GET', ARGV[1])";
    let same: String = ::redis::Script::new(body)
        .key("t:{same}:declared")
        .arg("t:{same}:built")
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert_eq!(same, "x");
    // A key on another master: refused ("non local key").
    let home = cluster.node_for("t:{same}:declared").unwrap();
    let tagged = |i: usize| format!("t:{{other{i}}}:built");
    let remote = (0..)
        .map(tagged)
        .find(|k| cluster.node_for(k).unwrap() != home)
        .unwrap();
    let e = ::redis::Script::new(body)
        .key("t:{same}:declared")
        .arg(remote.as_str())
        .invoke_async::<String>(&mut con)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("non local key"), "{e}");
    // A key in another slot of the same master: Redis 7.0 runs it, later
    // versions refuse it ("do not hash to the same slot"); and a resharding
    // can move either slot at any time. Either answer is acceptable here:
    // the point is that the store's scripts never do this.
    let local = (0..)
        .map(tagged)
        .find(|k| slot(k) != slot("t:{same}:declared") && cluster.node_for(k).unwrap() == home)
        .unwrap();
    let r = ::redis::Script::new(body)
        .key("t:{same}:declared")
        .arg(local.as_str())
        .invoke_async::<String>(&mut con)
        .await;
    if let Err(e) = r {
        assert!(e.to_string().contains("same slot"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_conformance() {
    let Some(s) = sentinel_or_skip().unwrap() else {
        return;
    };
    let st = store(&s.url());
    st.ping().await.unwrap();
    conformance::run_all(Stores::from_backend(st)).await;
    // The writes went to the primary and reached the replica.
    let primary = s.primary_index().unwrap();
    assert_eq!(primary, 0);
    let Ok(::redis::Value::Int(n)) = command(s.nodes[0].port(), &["DBSIZE"]) else {
        panic!("DBSIZE")
    };
    assert!(n > 10, "the suite wrote keys on the primary ({n})");
}

/// The quoted arguments of one `MONITOR` line (`"GET" "k"`), unescaped
/// enough to compare key names (which are ASCII without quotes).
fn monitor_args(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (&mut cur, c) {
            (None, '"') => cur = Some(String::new()),
            (Some(s), '\\') => {
                if let Some(n) = chars.next() {
                    s.push('\\');
                    s.push(n);
                }
            }
            (Some(_), '"') => out.push(cur.take().unwrap()),
            (Some(s), c) => s.push(c),
            (None, _) => {}
        }
    }
    out
}

/// The keys a script call declares: `EVALSHA sha numkeys key…`.
fn declared_keys(args: &[String]) -> Vec<String> {
    let n: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
    args.iter().skip(3).take(n).cloned().collect()
}

/// Every key each script really touches (seen with `MONITOR` while the
/// conformance suite runs on one server) is in the slot of the keys the
/// call declared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_touch_only_their_declared_slot_under_monitor() {
    let srv = crate::require_redis!();
    let log = srv.dir().join("monitor.log");
    let mut monitor = std::process::Command::new("redis-cli")
        .args(["-p", &srv.port().to_string(), "monitor"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-cli");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap().starts_with("OK") {
        assert!(
            std::time::Instant::now() < deadline,
            "MONITOR did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = store(&srv.url());
    conformance::run_all(Stores::from_backend(st)).await;
    // until the monitor has seen the suite's last command
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = monitor.kill();
    let _ = monitor.wait();

    let lines: Vec<(bool, Vec<String>)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains('"'))
        .map(|l| (l.contains(" lua] "), monitor_args(l)))
        .collect();
    let is_script = |i: usize| {
        lines.get(i).is_some_and(|(lua, a)| {
            !lua && a.first().is_some_and(|c| {
                c.eq_ignore_ascii_case("EVALSHA") || c.eq_ignore_ascii_case("EVAL")
            })
        })
    };
    let (mut runs, mut touched, mut i) = (0, 0, 0);
    while i < lines.len() {
        if !lines[i].0 {
            i += 1;
            continue;
        }
        // a run of commands from one script, next to its EVALSHA line
        let start = i;
        let mut keys = Vec::new();
        while i < lines.len() && lines[i].0 {
            let a = &lines[i].1;
            if !a[0].eq_ignore_ascii_case("TIME") {
                keys.push(a[1].clone());
            }
            i += 1;
        }
        let mut callers = Vec::new();
        if start > 0 && is_script(start - 1) {
            callers.push(start - 1);
        }
        if is_script(i) {
            callers.push(i);
        }
        assert!(
            !callers.is_empty(),
            "script commands without their call: {keys:?}"
        );
        let declared_slots: Vec<u16> = callers
            .iter()
            .filter_map(|&c| declared_keys(&lines[c].1).first().map(|k| slot(k)))
            .collect();
        for k in &keys {
            assert!(
                declared_slots.contains(&slot(k)),
                "a script touched {k} outside its declared slot"
            );
        }
        for &c in &callers {
            let d = declared_keys(&lines[c].1);
            if !d.is_empty() {
                one_slot("declared keys", &d);
            }
        }
        runs += 1;
        touched += keys.len();
    }
    eprintln!("MONITOR: {runs} script runs, {touched} keys touched from Lua");
    assert!(
        runs > 20 && touched > runs,
        "{runs} script runs, {touched} keys seen"
    );
}

/// `SENTINEL FAILOVER`: the old primary becomes a replica (and refuses
/// writes with `READONLY`); the store asks the sentinel again and writes to
/// the new primary. Meanwhile every failure is `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_manual_failover_moves_the_store_to_the_new_primary() {
    let Some(s) = sentinel_or_skip().unwrap() else {
        return;
    };
    let st = store(&s.url());
    let now = conformance::unix_now();
    let rev = |value: &str| Revocation {
        kind: RevocationKind::Task,
        value: value.into(),
        revoked_at: now,
        expires_at: now + 600,
    };
    RevocationStore::revoke(&*st, rev("before")).await.unwrap();
    s.wait_replicated(Duration::from_secs(10)).unwrap();
    command(
        s.sentinel.port(),
        &[
            "SENTINEL",
            "FAILOVER",
            crate::testkit_redis::SENTINEL_MASTER,
        ],
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        match RevocationStore::revoke(&*st, rev(&format!("during-{n}"))).await {
            Ok(_) if s.primary_index().ok() == Some(1) => break,
            Ok(_) => {}
            Err(e) => assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not follow the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Sentinel has a window: between the promotion and the old primary's
    // demotion (up to its next INFO poll, ~10 s) the old one still accepts
    // writes, which its demotion discards (README: what Sentinel does not
    // give). The store asks the sentinels again every SENTINEL_RECHECK, so
    // a write after that lands on the new primary even while the old one
    // still takes writes.
    tokio::time::sleep(super::redis::SENTINEL_RECHECK + Duration::from_millis(200)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Err(e) = RevocationStore::revoke(&*st, rev("after")).await {
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        assert!(std::time::Instant::now() < deadline, "{e:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let facts = |txn: &str| TokenFacts {
        jti: "j".into(),
        sub: "s".into(),
        txn: txn.into(),
        iat: now,
        ..Default::default()
    };
    assert!(st.is_revoked(&facts("before"), now).await.unwrap());
    assert!(st.is_revoked(&facts("after"), now).await.unwrap());
    let key = st.key_revocation(RevocationKind::Task, "after");
    assert!(matches!(
        command(s.nodes[1].port(), &["EXISTS", &key]),
        Ok(::redis::Value::Int(1))
    ));
    assert_eq!(s.primary_index().unwrap(), 1);
}
