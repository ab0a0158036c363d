//! Error classification of the Redis store: what a Redis error means for
//! the caller (unavailable, so fail closed, or a protocol error), and its
//! class without its free text.

use ::redis::{ErrorKind, RedisError};

use crate::store::StoreError;

pub(super) fn config_error(msg: &str) -> StoreError {
    StoreError::Unavailable(format!("invalid redis store configuration: {msg}"))
}

/// A failure inside one call.
pub(super) enum Fail {
    Redis(RedisError),
    Store(StoreError),
}

impl From<RedisError> for Fail {
    fn from(e: RedisError) -> Self {
        Self::Redis(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

pub(super) fn protocol(msg: &str) -> Fail {
    Fail::Store(StoreError::Protocol(msg.to_string()))
}

/// The class of a Redis error, without its free text (which could echo data).
pub(crate) fn describe(e: &RedisError) -> String {
    if e.is_connection_refusal() {
        return "connection refused".into();
    }
    if e.is_timeout() {
        return "timed out".into();
    }
    if e.is_connection_dropped() {
        return "connection dropped".into();
    }
    if e.is_io_error() {
        return "i/o error".into();
    }
    match e.code() {
        Some(code) => format!("server error {}", code.chars().take(32).collect::<String>()),
        None => format!("{:?}", e.kind()),
    }
}

/// Server error codes that mean "cannot serve now" rather than "bad request".
const UNAVAILABLE_CODES: &[&str] = &[
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MOVED",
    "ASK",
    "OOM",
    "BUSY",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "MISCONF",
];

/// Whether an error means the store is unavailable (rather than that it
/// answered something unexpected).
pub(super) fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::AuthenticationFailed
                | ErrorKind::Client
                | ErrorKind::InvalidClientConfig
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::EmptySentinelList
        )
        || e.code().is_some_and(|c| UNAVAILABLE_CODES.contains(&c))
}

/// Whether an error means Redis could not be reached at all (what the
/// circuit breaker counts), as opposed to an answer, even a refusal such
/// as `OOM` or `READONLY`.
pub(super) fn is_unreachable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}
