// One file: tests only (Cluster and Sentinel against real servers), compiled
// under `cfg(test)`.
//! The Redis backend on Redis Cluster and Redis Sentinel: every key a call
//! or script touches is in one slot, and the conformance suite passes on a
//! real three-master cluster and through a real sentinel. Skipped loudly
//! when `redis-server` is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use super::{cluster_slot as slot, RedisConfig, RedisStore};
use crate::store::conformance::{self, task_revocation};
use crate::store::*;
use crate::testkit_redis::{cluster_or_skip, command, sentinel_or_skip};

/// Per-call timeout of these tests (a first call connects to every node).
const T: Duration = Duration::from_secs(2);

/// A store for `url` as constructed (no options applied: no block cache).
fn bare_store(url: &str) -> RedisStore {
    RedisStore::new(&RedisConfig {
        url: url.to_string(),
        prefix: "tessera".into(),
        timeout: T,
        ca_pem: None,
    })
    .unwrap()
}

/// A store with options `o`.
fn store_with(url: &str, o: &StoreOptions) -> Arc<RedisStore> {
    Arc::new(bare_store(url).with_options(o).unwrap())
}

/// A store with the default options (the block cache on).
fn cached_store(url: &str) -> Arc<RedisStore> {
    store_with(url, &StoreOptions::default())
}

/// Waits (at most `within`, retrying errors: a store may be between two
/// primaries) until `st` says `subject` is blocked.
async fn until_blocked(st: &RedisStore, subject: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while !matches!(
        st.is_blocked(subject, conformance::unix_now()).await,
        Ok(true)
    ) {
        assert!(
            std::time::Instant::now() < deadline,
            "{subject}: not blocked within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Blocks `subject` for 10 minutes through `st`, retrying (at most
/// `within`) while the store is between two primaries.
async fn block_retrying(st: &RedisStore, subject: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while let Err(e) = st
        .block_subject(subject, conformance::unix_now() + 600)
        .await
    {
        assert!(std::time::Instant::now() < deadline, "{subject}: {e:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts migrating `slot` from the master on port `from` to the one on
/// `to` (`SETSLOT IMPORTING` / `MIGRATING`); returns the target's node id.
fn start_migration(from: u16, to: u16, slot: &str) -> String {
    let node_id = |port: u16| {
        crate::testkit_redis::command_text(port, &["CLUSTER", "MYID"])
            .unwrap()
            .trim()
            .to_string()
    };
    let (fid, tid) = (node_id(from), node_id(to));
    command(to, &["CLUSTER", "SETSLOT", slot, "IMPORTING", &fid]).unwrap();
    command(from, &["CLUSTER", "SETSLOT", slot, "MIGRATING", &tid]).unwrap();
    tid
}

/// Moves every key of `slot` (at most 100) from `from` to `to`
/// (`MIGRATE … KEYS`); returns their names.
fn migrate_keys(from: u16, to: u16, slot: &str) -> Vec<String> {
    let Ok(::redis::Value::Array(keys)) = command(from, &["CLUSTER", "GETKEYSINSLOT", slot, "100"])
    else {
        panic!("GETKEYSINSLOT")
    };
    let keys: Vec<String> = keys
        .into_iter()
        .map(|k| match k {
            ::redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    if !keys.is_empty() {
        let tport = to.to_string();
        let mut migrate = vec!["MIGRATE", "127.0.0.1", &tport, "", "0", "5000", "KEYS"];
        migrate.extend(keys.iter().map(String::as_str));
        command(from, &migrate).unwrap();
    }
    keys
}

/// Waits until the replica has everything, then asks the sentinel for a
/// failover (`SENTINEL FAILOVER`: the replica is promoted).
fn failover(s: &crate::testkit_redis::RedisSentinel) {
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
}

fn store(url: &str) -> Arc<RedisStore> {
    Arc::new(bare_store(url))
}

#[test]
fn slot_function_matches_redis() {
    let crc16 = crc16::State::<crc16::XMODEM>::calculate;
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
    let rev = task_revocation;
    RevocationStore::revoke(&*st, rev("before")).await.unwrap();
    failover(&s);
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
    tokio::time::sleep(super::SENTINEL_RECHECK + Duration::from_millis(200)).await;
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

/// The block cache through Sentinel: its tracking connection is on the
/// primary, a block written through another store is seen, and after a
/// failover it follows the new primary (and sees blocks written there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_block_cache_follows_the_primary_through_a_failover() {
    let Some(s) = sentinel_or_skip().unwrap() else {
        return;
    };
    let cached = cached_store(&s.url());
    let other = store(&s.url());
    let cache = cached.block_cache().expect("block cache on with Sentinel");
    let live = |want: bool, sessions: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        async move {
            while cache.is_live() != want || cache.stats().sessions < sessions {
                assert!(
                    std::time::Instant::now() < deadline,
                    "block cache live={} sessions={}",
                    cache.is_live(),
                    cache.stats().sessions
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    live(true, 1).await;
    let primary = s.nodes[s.primary_index().unwrap()].port();
    assert!(super::tests::tracker_id(primary).is_some());
    let now = conformance::unix_now();
    assert!(!cached.is_blocked("spiffe://td/s1", now).await.unwrap());
    let gets = crate::testkit_redis::command_calls(primary, "get").unwrap();
    assert!(!cached.is_blocked("spiffe://td/s1", now).await.unwrap());
    assert_eq!(
        crate::testkit_redis::command_calls(primary, "get").unwrap(),
        gets
    );
    block_retrying(&other, "spiffe://td/s1", T).await;
    until_blocked(&cached, "spiffe://td/s1", Duration::from_secs(5)).await;

    // Failover: the cache goes to the new primary, on a new session.
    assert!(!cached.is_blocked("spiffe://td/s2", now).await.unwrap());
    failover(&s);
    live(true, 2).await;
    let new_primary = s.nodes[s.primary_index().unwrap()].port();
    assert_ne!(new_primary, primary);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while super::tests::tracker_id(new_primary).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "not on the new primary"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A block written on the new primary, by a store that followed it too.
    block_retrying(&other, "spiffe://td/s2", Duration::from_secs(20)).await;
    until_blocked(&cached, "spiffe://td/s2", Duration::from_secs(20)).await;
    until_blocked(&cached, "spiffe://td/s1", Duration::from_secs(20)).await;
}

/// When the sentinels start naming another primary while the old one is
/// still a reachable primary (nothing drops), the block cache's recheck
/// moves it there: the old primary would never see blocks written on the
/// new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_block_cache_moves_when_the_sentinels_name_another_primary() {
    let Some(s) = sentinel_or_skip().unwrap() else {
        return;
    };
    let Some(elsewhere) = crate::testkit_redis::redis_or_skip().unwrap() else {
        return;
    };
    let cached = cached_store(&s.url());
    let cache = cached.block_cache().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cache.is_live() {
        assert!(std::time::Instant::now() < deadline, "never live");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let now = conformance::unix_now();
    assert!(!cached.is_blocked("spiffe://td/m", now).await.unwrap());
    let old = s.nodes[s.primary_index().unwrap()].port();
    // The sentinels now watch another server under the same name.
    let m = crate::testkit_redis::SENTINEL_MASTER;
    command(s.sentinel.port(), &["SENTINEL", "REMOVE", m]).unwrap();
    let port = elsewhere.port().to_string();
    command(
        s.sentinel.port(),
        &["SENTINEL", "MONITOR", m, "127.0.0.1", &port, "1"],
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while super::tests::tracker_id(elsewhere.port()).is_none() || !cache.is_live() {
        assert!(
            std::time::Instant::now() < deadline,
            "the block cache stayed on the old primary"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(super::tests::tracker_id(old).is_none());
    assert!(cache.stats().sessions >= 2);
    // A block written on the newly named primary is honoured.
    let key = cached.key_block("spiffe://td/m");
    command(elsewhere.port(), &["SET", &key, &(now + 600).to_string()]).unwrap();
    until_blocked(&cached, "spiffe://td/m", Duration::from_secs(10)).await;
}

/// The block cache on a cluster: its tracking connection is on the master
/// of `{rev}`; it turns off while that slot migrates, and comes back on the
/// new owner once the migration completes, seeing blocks written there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_block_cache_follows_the_revocation_slot() {
    let Some(cluster) = cluster_or_skip(3).unwrap() else {
        return;
    };
    let cached = cached_store(&cluster.url());
    let other = store(&cluster.url());
    let cache = cached.block_cache().expect("block cache on with a cluster");
    let wait = |what: &'static str, f: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let from = rev_master(&cluster, &cached);
    let to = (from + 1) % cluster.nodes.len();
    let (fp, tp) = (cluster.nodes[from].port(), cluster.nodes[to].port());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !cache.is_live() {
        assert!(std::time::Instant::now() < deadline, "never live");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(super::tests::tracker_id(fp).is_some());
    // Its once-a-second check of the slot's owner reuses one connection.
    let accepted = || -> u64 {
        cluster
            .nodes
            .iter()
            .map(|n| {
                let info =
                    crate::testkit_redis::command_text(n.port(), &["INFO", "stats"]).unwrap();
                info.lines()
                    .find_map(|l| l.strip_prefix("total_connections_received:"))
                    .map_or(0, |v| v.trim().parse().unwrap())
            })
            .sum()
    };
    let before = accepted();
    tokio::time::sleep(super::SENTINEL_RECHECK * 3 + Duration::from_millis(300)).await;
    // (the INFO connections themselves are counted: one per node per call)
    let opened = accepted() - before - cluster.nodes.len() as u64;
    assert!(opened <= 1, "{opened} connections opened by the rechecks");
    let now = conformance::unix_now();
    // Seen once through the cluster, then answered here.
    assert!(!cached.is_blocked("spiffe://td/c1", now).await.unwrap());
    let gets = calls(fp, "get");
    assert!(!cached.is_blocked("spiffe://td/c1", now).await.unwrap());
    assert_eq!(calls(fp, "get"), gets);
    block_retrying(&other, "spiffe://td/c1", T).await;
    until_blocked(&cached, "spiffe://td/c1", Duration::from_secs(5)).await;

    // The slot starts migrating: the cache turns off.
    let s = slot(&cached.key_feed()).to_string();
    let tid = start_migration(fp, tp, &s);
    tokio::task::block_in_place(|| wait("off while migrating", &|| !cache.is_live()));
    migrate_keys(fp, tp, &s);
    assert!(!cache.is_live(), "live while the slot migrates");
    for m in &cluster.nodes {
        command(m.port(), &["CLUSTER", "SETSLOT", &s, "NODE", &tid]).unwrap();
    }
    // Back, on the new owner.
    tokio::task::block_in_place(|| {
        wait("live on the new owner", &|| {
            cache.is_live() && super::tests::tracker_id(tp).is_some()
        })
    });
    assert!(super::tests::tracker_id(fp).is_none());
    // The migrated block is still in force, and one written on the new
    // owner is seen.
    until_blocked(&cached, "spiffe://td/c1", Duration::from_secs(10)).await;
    assert!(!cached.is_blocked("spiffe://td/c2", now).await.unwrap());
    block_retrying(&other, "spiffe://td/c2", Duration::from_secs(10)).await;
    until_blocked(&cached, "spiffe://td/c2", Duration::from_secs(5)).await;
    assert!(cache.stats().sessions >= 2);
}

// ---- revocation_replicas on a cluster: WAIT on the master of `{rev}` ----

/// A cluster store that asks `replicas` acknowledgements of a revocation,
/// waiting at most `wait`.
fn acked_store(url: &str, replicas: u32, wait: Duration) -> Arc<RedisStore> {
    store_with(
        url,
        &StoreOptions {
            revocation_replicas: replicas,
            revocation_wait: wait,
            ..StoreOptions::default()
        },
    )
}

/// A token of task `value` issued a minute ago (before the revocation:
/// a task revocation covers the tokens issued up to it).
fn task_token(value: &str) -> TokenFacts {
    TokenFacts {
        jti: "j".into(),
        sub: "s".into(),
        txn: value.into(),
        iat: conformance::unix_now() - 60,
        ..Default::default()
    }
}

async fn task_revoked(st: &RedisStore, value: &str) -> bool {
    let now = conformance::unix_now();
    st.is_revoked(&task_token(value), now).await.unwrap()
}

fn calls(port: u16, cmd: &str) -> u64 {
    crate::testkit_redis::command_calls(port, cmd).unwrap()
}

/// The `{rev}` master of the test cluster, after checking that the store's
/// slot function agrees with the cluster's `CLUSTER KEYSLOT`.
fn rev_master(cluster: &crate::testkit_redis::RedisCluster, st: &RedisStore) -> usize {
    let feed = st.key_feed();
    let Ok(::redis::Value::Int(s)) =
        command(cluster.nodes[0].port(), &["CLUSTER", "KEYSLOT", &feed])
    else {
        panic!("CLUSTER KEYSLOT")
    };
    assert_eq!(i64::from(slot(&feed)), s);
    cluster.node_for(&feed).unwrap()
}

/// With every replica up, an acknowledged revocation on a cluster is
/// durable and in force, and its `WAIT` ran on the master of `{rev}` and on
/// no other. With only the `{rev}` master's replica left, it is still
/// acknowledged by exactly one replica (a `WAIT` sent to another master
/// would report 0); two required: acked 1, not durable. That replica
/// stopped: 0 (a `WAIT` with nothing written before it would say 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_revoke_acked_waits_on_the_rev_master() {
    let Some(mut cluster) = crate::testkit_redis::cluster_with_replicas_or_skip(3).unwrap() else {
        return;
    };
    let st = acked_store(&cluster.url(), 1, Duration::from_secs(2));
    let rev = rev_master(&cluster, &st);
    for m in &cluster.nodes {
        command(m.port(), &["CONFIG", "RESETSTAT"]).unwrap();
    }

    let done = st.revoke_acked(task_revocation("all-up")).await.unwrap();
    let ack = done.replicas.expect("replicas were asked for");
    assert_eq!(ack.required, 1);
    assert!(ack.acked >= 1, "{ack:?}");
    assert!(done.durable());
    assert!(task_revoked(&st, "all-up").await);
    for (i, m) in cluster.nodes.iter().enumerate() {
        let (wait, eval) = (calls(m.port(), "wait"), calls(m.port(), "eval"));
        if i == rev {
            assert_eq!((wait, eval), (1, 1), "WAIT and EVAL on the {{rev}} master");
        } else {
            assert_eq!(
                (wait, eval),
                (0, 0),
                "WAIT or EVAL on master {i}, not {rev}"
            );
        }
    }

    // Only the {rev} master keeps its replica.
    for (i, r) in cluster.replicas.iter_mut().enumerate() {
        if i != rev {
            r.kill();
        }
    }
    let done = st
        .revoke_acked(task_revocation("rev-replica-only"))
        .await
        .unwrap();
    assert_eq!(
        done.replicas,
        Some(ReplicaAck {
            acked: 1,
            required: 1
        })
    );
    assert!(task_revoked(&st, "rev-replica-only").await);

    let wait = Duration::from_millis(300);
    let two = acked_store(&cluster.url(), 2, wait);
    let started = std::time::Instant::now();
    let done = two
        .revoke_acked(task_revocation("two-required"))
        .await
        .unwrap();
    assert!(started.elapsed() >= wait, "WAIT waited for the second");
    assert_eq!(
        done.replicas,
        Some(ReplicaAck {
            acked: 1,
            required: 2
        })
    );
    assert!(!done.durable());
    assert!(task_revoked(&st, "two-required").await);
    assert_eq!(calls(cluster.nodes[rev].port(), "wait"), 3);

    // Its replica stopped (connected, acknowledging nothing): not
    // acknowledged. A WAIT with nothing written before it on its connection
    // would count the replica's old acknowledgement and say 1.
    let quick = acked_store(&cluster.url(), 1, wait);
    cluster.replicas[rev].suspend().unwrap();
    let done = quick.revoke_acked(task_revocation("stopped")).await;
    cluster.replicas[rev].resume().unwrap();
    assert_eq!(
        done.unwrap().replicas,
        Some(ReplicaAck {
            acked: 0,
            required: 1
        })
    );
    assert!(task_revoked(&st, "stopped").await);
}

/// The `{rev}` master's replica killed (the others up): the revocation is
/// made and in force on the master, and reported not durable (0 of 1)
/// after about `revocation_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_revoke_acked_without_the_rev_replica_is_not_durable() {
    let Some(mut cluster) = crate::testkit_redis::cluster_with_replicas_or_skip(3).unwrap() else {
        return;
    };
    let wait = Duration::from_millis(400);
    let st = acked_store(&cluster.url(), 1, wait);
    let rev = rev_master(&cluster, &st);
    // connected to the cluster, and durable while the replica is up
    assert!(st
        .revoke_acked(task_revocation("before"))
        .await
        .unwrap()
        .durable());

    cluster.replicas[rev].kill();
    let started = std::time::Instant::now();
    let done = st.revoke_acked(task_revocation("after")).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= wait && took < wait + Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(
        done.replicas,
        Some(ReplicaAck {
            acked: 0,
            required: 1
        })
    );
    assert!(!done.durable());
    assert!(task_revoked(&st, "after").await, "in force anyway");
    let key = st.key_revocation(RevocationKind::Task, "after");
    assert!(matches!(
        command(cluster.nodes[rev].port(), &["EXISTS", &key]),
        Ok(::redis::Value::Int(1))
    ));
}

/// While the revocation slot migrates and its keys have already moved,
/// the `{rev}` master answers `ASK`: the store follows it once (`ASKING`,
/// then the pipeline on the importing master), and `WAIT` runs there, where
/// the write went: acknowledged by the importing master's replica although
/// the old master's replica is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_revoke_acked_follows_ask_during_a_migration() {
    let Some(mut cluster) = crate::testkit_redis::cluster_with_replicas_or_skip(3).unwrap() else {
        return;
    };
    let st = acked_store(&cluster.url(), 1, Duration::from_millis(300));
    let from = rev_master(&cluster, &st);
    let to = (from + 1) % cluster.nodes.len();
    let (fp, tp) = (cluster.nodes[from].port(), cluster.nodes[to].port());
    // The entry and the feed exist, so both keys move (a script whose keys
    // are split between the two masters gets TRYAGAIN: 503).
    assert!(st
        .revoke_acked(task_revocation("moving"))
        .await
        .unwrap()
        .durable());
    cluster.replicas[from].kill();

    let s = slot(&st.key_feed()).to_string();
    let tid = start_migration(fp, tp, &s);
    let keys = migrate_keys(fp, tp, &s);
    assert_eq!(keys.len(), 2, "the entry and the feed: {keys:?}");
    for m in &cluster.nodes {
        command(m.port(), &["CONFIG", "RESETSTAT"]).unwrap();
    }

    let done = st.revoke_acked(task_revocation("moving")).await.unwrap();
    assert_eq!(
        done.replicas,
        Some(ReplicaAck {
            acked: 1,
            required: 1
        })
    );
    assert_eq!(calls(tp, "asking"), 1);
    assert_eq!((calls(tp, "wait"), calls(tp, "eval")), (1, 1));
    // the old master answered ASK to the script (a refused command is not
    // counted); the WAIT after it there was not reported
    assert_eq!(calls(fp, "eval"), 0);

    // The migration completes; the revocation is in force through the
    // cluster connection (which follows MOVED).
    for m in &cluster.nodes {
        command(m.port(), &["CLUSTER", "SETSLOT", &s, "NODE", &tid]).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let facts = task_token("moving");
    loop {
        match st.is_revoked(&facts, conformance::unix_now()).await {
            Ok(r) => {
                assert!(r);
                break;
            }
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `CLUSTER SLOTS` answers and `MOVED`/`ASK` errors as the store reads them.
#[test]
fn slot_master_and_redirections_are_parsed() {
    use super::topology::{redirection, slot_master};
    use ::redis::Value::{Array, BulkString, Int, Nil};
    let node = |h: Option<&str>, p: i64| {
        Array(vec![
            h.map_or(Nil, |h| BulkString(h.into())),
            Int(p),
            BulkString(b"id".to_vec()),
        ])
    };
    let slots = Array(vec![
        Array(vec![Int(0), Int(99), node(Some("10.0.0.1"), 7000)]),
        Array(vec![
            Int(100),
            Int(199),
            node(Some("redis-b.internal"), 7001),
            node(Some("10.0.0.9"), 7101),
        ]),
        Array(vec![Int(200), Int(299), node(Some(""), 7002)]),
        Array(vec![Int(300), Int(399), node(None, 7003)]),
        Array(vec![Int(400), Int(499), node(Some("?"), 7004)]),
    ]);
    assert_eq!(slot_master(&slots, 0), Ok(("10.0.0.1".into(), 7000)));
    assert_eq!(
        slot_master(&slots, 150),
        Ok(("redis-b.internal".into(), 7001))
    );
    for unknown in [250, 300, 499] {
        assert!(slot_master(&slots, unknown).is_err(), "{unknown}");
    }
    assert!(slot_master(&slots, 1000).is_err(), "no range");
    assert!(slot_master(&Nil, 0).is_err());

    let err = |wire: &[u8]| {
        ::redis::parse_redis_value(wire)
            .unwrap()
            .extract_error()
            .unwrap_err()
    };
    assert_eq!(
        redirection(&err(b"-MOVED 3999 10.0.0.2:6381\r\n"), "a"),
        Some((("10.0.0.2".into(), 6381), false))
    );
    assert_eq!(
        redirection(&err(b"-ASK 3999 [::1]:6381\r\n"), "a"),
        Some((("::1".into(), 6381), true))
    );
    assert_eq!(
        redirection(&err(b"-MOVED 3999 :6381\r\n"), "asked"),
        Some((("asked".into(), 6381), false))
    );
    assert_eq!(redirection(&err(b"-MOVED 3999 ?:6381\r\n"), "a"), None);
    assert_eq!(redirection(&err(b"-TRYAGAIN busy\r\n"), "a"), None);
}
