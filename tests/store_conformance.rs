//! The store conformance suite (`tessera::store::conformance`, feature
//! `testkit`) run from `tests/` against both backends (issue 18 item 5):
//! the suite is test support outside the shipped library, usable by any
//! integration test, not a `#[cfg(test)]` module only the crate can reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tessera::store::{conformance, Stores};
use tessera::testkit_redis::redis_or_skip;

const T: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_passes_the_conformance_suite() {
    let stores = Stores::open("memory://", "tessera", T).await.unwrap();
    conformance::run_all(stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_passes_the_conformance_suite() {
    let Some(srv) = redis_or_skip().unwrap() else {
        return;
    };
    let stores = Stores::open(&srv.url(), "conformance", T).await.unwrap();
    conformance::run_all(stores).await;
}
