#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::SystemClock;
use crate::store::memory::MemoryStore;
use crate::store::{RevocationKind, Stores};

fn stores() -> Stores {
    Stores::from_backend(Arc::new(MemoryStore::new()))
}

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

async fn revoke(s: &Stores, value: &str) -> String {
    let now = SystemClock.now();
    s.revocations
        .revoke(Revocation {
            kind: RevocationKind::Task,
            value: value.into(),
            revoked_at: now,
            expires_at: now + 600,
        })
        .await
        .unwrap()
}

/// The next `n` entries of `sub` (values), failing after a generous deadline.
async fn take(sub: &mut FeedSubscription, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(FeedEvent::Entry(c, r)) => out.push((c, r.value)),
            Ok(FeedEvent::Unavailable(e)) => panic!("unexpected store error: {e}"),
            Err(_) => panic!("only {} of {n} entries arrived: {out:?}", out.len()),
        }
    }
    out
}

/// Nothing more arrives within `wait`.
async fn quiet(sub: &mut FeedSubscription, wait: Duration) {
    if let Ok(ev) = tokio::time::timeout(wait, sub.next()).await {
        panic!("unexpected extra event {ev:?}");
    }
}

#[tokio::test]
async fn one_poller_fans_out_every_entry_once_in_order() {
    let s = stores();
    let hub = s.revocation_feed.clone();
    let mut expected = Vec::new();
    for i in 0..3 {
        expected.push(format!("before-{i}"));
        revoke(&s, &format!("before-{i}")).await;
    }
    let mut subs: Vec<FeedSubscription> = (0..20).map(|_| hub.subscribe(None, clock())).collect();
    // every subscriber catches up on the entries made before it
    for sub in &mut subs {
        let got = take(sub, 3).await;
        assert_eq!(
            got.iter().map(|x| x.1.clone()).collect::<Vec<_>>(),
            expected
        );
        // caught up: it follows the broadcast from now on
        quiet(sub, Duration::from_millis(20)).await;
    }
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                revoke(&s, &format!("live-{i}")).await;
                if i % 7 == 0 {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
        })
    };
    expected.extend((0..40).map(|i| format!("live-{i}")));
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut sub| {
            tokio::spawn(async move {
                let got = take(&mut sub, 40).await;
                quiet(&mut sub, Duration::from_millis(300)).await;
                got
            })
        })
        .collect();
    writer.await.unwrap();
    for r in readers {
        let got = r.await.unwrap();
        let values: Vec<String> = got.iter().map(|x| x.1.clone()).collect();
        assert_eq!(values, expected[3..].to_vec());
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "cursors in order");
    }
    assert_eq!(hub.pollers_started(), 1, "one poller for 20 subscribers");
}

#[tokio::test]
async fn resumes_after_a_cursor_without_gaps_or_duplicates() {
    let s = stores();
    let hub = s.revocation_feed.clone();
    let mut cursors = Vec::new();
    for i in 0..5 {
        cursors.push(revoke(&s, &format!("e{i}")).await);
    }
    // a live subscriber keeps the poller running while the other resumes
    let mut live = hub.subscribe(Some(cursors[4].clone()), clock());
    revoke(&s, "e5").await;
    assert_eq!(take(&mut live, 1).await[0].1, "e5");
    let mut resumed = hub.subscribe(Some(cursors[1].clone()), clock());
    let got = take(&mut resumed, 4).await;
    assert_eq!(
        got.iter().map(|x| x.1.as_str()).collect::<Vec<_>>(),
        ["e2", "e3", "e4", "e5"]
    );
    revoke(&s, "e6").await;
    assert_eq!(take(&mut resumed, 1).await[0].1, "e6");
    assert_eq!(take(&mut live, 1).await[0].1, "e6");
    quiet(&mut resumed, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_lagging_subscriber_resyncs_from_the_store_and_blocks_nobody() {
    let s = stores();
    // one batch of backlog: any subscriber that misses a batch lags
    let hub = Arc::new(FeedHub::with_backlog(
        s.revocations.clone(),
        s.revocation_events.clone(),
        1,
    ));
    let mut fast = hub.subscribe(None, clock());
    let mut slow = hub.subscribe(None, clock());
    // both joined (empty feed): the poller runs
    revoke(&s, "first").await;
    assert_eq!(take(&mut fast, 1).await[0].1, "first");
    assert_eq!(take(&mut slow, 1).await[0].1, "first");
    // both caught up: from now on they follow the broadcast
    quiet(&mut fast, Duration::from_millis(300)).await;
    quiet(&mut slow, Duration::from_millis(300)).await;
    let mut expected = Vec::new();
    for i in 0..30 {
        let v = format!("burst-{i}");
        revoke(&s, &v).await;
        expected.push(v);
        // the fast one keeps up while the slow one does not read at all
        assert_eq!(take(&mut fast, 1).await[0].1, expected[i]);
    }
    let got = take(&mut slow, 30).await;
    assert_eq!(
        got.iter().map(|x| x.1.clone()).collect::<Vec<_>>(),
        expected
    );
    quiet(&mut slow, Duration::from_millis(300)).await;
    assert!(
        hub.resyncs() >= 1,
        "the slow subscriber lagged and resynced"
    );
}

#[tokio::test]
async fn the_poller_stops_with_the_last_subscriber_and_restarts_with_the_next() {
    let s = stores();
    let hub = s.revocation_feed.clone();
    let mut sub = hub.subscribe(None, clock());
    revoke(&s, "a").await;
    let cursor = take(&mut sub, 1).await[0].0.clone();
    drop(sub);
    // idle within a poll interval or two
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hub.live.lock().await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "poller still running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let polls = hub.polls();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hub.polls(), polls, "no store reads without subscribers");
    // entries made while nobody listened are caught up on
    revoke(&s, "b").await;
    let mut sub = hub.subscribe(Some(cursor), clock());
    assert_eq!(take(&mut sub, 1).await[0].1, "b");
    revoke(&s, "c").await;
    assert_eq!(take(&mut sub, 1).await[0].1, "c");
    assert_eq!(hub.pollers_started(), 2);
}
