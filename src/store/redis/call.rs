//! How every call of the Redis store runs: under the timeout, through the
//! circuit breaker and the data epoch, its failure mapped to a
//! [`StoreError`].

use std::future::Future;
use std::time::Duration;

use super::error::{describe, is_unavailable, is_unreachable, Fail};
use super::health::EPOCH_OP;
use super::RedisStore;
use crate::store::{StoreError, StoreOptions};

/// The circuit breaker and the revocation acknowledgement settings.
pub(super) struct Resilience {
    pub(super) breaker: crate::store::breaker::Breaker,
    pub(super) revocation_replicas: u32,
    pub(super) revocation_wait: Duration,
}

impl Resilience {
    pub(super) fn new(o: &StoreOptions) -> Self {
        Self {
            breaker: crate::store::breaker::Breaker::new(o.breaker),
            revocation_replicas: o.revocation_replicas,
            revocation_wait: o.revocation_wait,
        }
    }
}

/// A failed call: the error for the caller, and whether Redis was
/// unreachable (a timeout or a connection failure: what the breaker counts)
/// rather than answering with an error.
struct Failed {
    error: StoreError,
    unreachable: bool,
}

impl RedisStore {
    // ---- calls ----

    /// Runs one operation under the timeout and maps its failure.
    pub(super) async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, Fail>>,
    {
        self.run_for(op, self.timeout, f).await
    }

    /// Runs one operation under `timeout`, through the circuit breaker: while
    /// it is open the call fails at once without touching Redis (and is
    /// counted in `tessera_store_fast_failures_total`, not in the latency
    /// histogram, which measures Redis operations only).
    pub(super) async fn run_for<T, F>(
        &self,
        op: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, Fail>>,
    {
        let m = crate::telemetry::metrics();
        // The store lost its data: nothing it says can be trusted to hold
        // every revocation (R6). The epoch check itself still runs.
        if op != EPOCH_OP && self.epoch.refuses() {
            m.store_fast_failures.with_label_values(&[op]).inc();
            return Err(self.epoch.refusal(op));
        }
        let breaker = &self.resilience.breaker;
        let permit = match breaker.admit() {
            Ok(p) => p,
            Err(rejected) => {
                m.store_fast_failures.with_label_values(&[op]).inc();
                m.store_breaker_open.set(1);
                return Err(StoreError::Unavailable(format!(
                    "redis {op}: circuit open after repeated timeouts or connection failures; \
                     not tried (next probe in {} ms)",
                    rejected.retry_in.as_millis()
                )));
            }
        };
        let started = std::time::Instant::now();
        let r = self.run_inner(op, timeout, f).await;
        m.store_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        match &r {
            Err(Failed {
                error: e,
                unreachable,
            }) => {
                let kind = match e {
                    StoreError::Unavailable(_) => "unavailable",
                    StoreError::Protocol(_) => "protocol",
                };
                m.store_errors.with_label_values(&[op, kind]).inc();
                if *unreachable {
                    permit.unreachable();
                    if breaker.is_open() {
                        // The next call through is the probe: on a fresh
                        // connection, so that it succeeds if Redis answers.
                        self.conn.renew_for_probe();
                    }
                } else {
                    permit.answered();
                }
            }
            Ok(_) => permit.answered(),
        }
        m.store_breaker_open.set(i64::from(breaker.is_open()));
        r.map_err(|f| f.error)
    }

    /// The call's result; a failure says whether Redis was unreachable.
    async fn run_inner<T, F>(&self, op: &'static str, timeout: Duration, f: F) -> Result<T, Failed>
    where
        F: Future<Output = Result<T, Fail>>,
    {
        match tokio::time::timeout(timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Fail::Store(e))) => Err(Failed {
                error: e,
                unreachable: false,
            }),
            Ok(Err(Fail::Redis(e))) => {
                let what = describe(&e);
                if is_unavailable(&e) {
                    // I/O errors: the manager reconnects by itself. Anything
                    // else may be a cached failed connection: start afresh.
                    if !e.is_io_error() || e.is_timeout() {
                        self.conn.rebuild();
                    }
                    Err(Failed {
                        error: StoreError::Unavailable(format!("redis {op}: {what}")),
                        unreachable: is_unreachable(&e),
                    })
                } else {
                    Err(Failed {
                        error: StoreError::Protocol(format!("redis {op}: {what}")),
                        unreachable: false,
                    })
                }
            }
            Err(_) => {
                // A server that does not answer may sit behind a half-open
                // connection the manager cannot see: start afresh.
                self.conn.rebuild();
                Err(Failed {
                    error: StoreError::Unavailable(format!(
                        "redis {op}: no answer within {} ms",
                        timeout.as_millis()
                    )),
                    unreachable: true,
                })
            }
        }
    }
}
