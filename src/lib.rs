//! # Tessera
//!
//! A short-lived token broker for workload identity. A workload proves a base
//! identity — an mTLS client certificate (SPIFFE X.509-SVID) or a platform
//! OIDC token — and exchanges it, per task, for a narrowly scoped RFC 9068
//! JWT that expires in minutes (RFC 8693 token exchange).
//!
//! ## Layout
//! The data flows one way:
//! `server` (TLS accept, peer identity) → `routes` (HTTP in/out) → `oauth`
//! (RFC request parsing, the one error-to-wire table) → `exchange` (the
//! HTTP-free pipeline) → `identity` / `policy` / `store` / `mint`.
//!
//! - [`jose`], [`jwks`]: strict compact-JWS parsing and verification, JWK
//!   keys, claim validation, a JWKS cache (shared with verifiers).
//! - `config`: `RawConfig` (TOML as written) → `Config` (typed, checked).
//! - `identity`: SPIFFE IDs, client-certificate identities, OIDC issuers.
//! - `policy`: compiled policies, glob matching, scope sets.
//! - `mint`: the signing key ring and RFC 9068 minting.
//! - `store`: revocation / replay / grant / audit-stream traits with the
//!   in-memory and Redis backends.
//! - `audit`: the hash-chained audit trail (one record per decision).
//! - `exchange`: the pipeline (and `exchange::guard`, the anomaly guard);
//!   `oauth`, `routes`, `server`, `app`: the service.
//! - `cli`: operator verbs; `pki`: development and test certificates.
//!
//! The layers, who may import whom and where each rule lives:
//! `docs/architecture.md` (kept by `tests/layering.rs`). Test support
//! (`testkit`, `testkit_redis`, the hostile half of `pki`, the store
//! conformance suite) is behind the cargo feature `testkit`, which only the
//! crate's own tests, benches and examples turn on.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod claims;
pub mod clock;
pub mod dpop;
// Durations as written in the config (server-only, like `text`).
#[cfg(feature = "server")]
pub(crate) mod duration;
pub mod jose;
pub mod jwks;
pub mod revocation;
#[cfg(feature = "server")]
pub(crate) mod text;
pub mod verify;

#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod audit;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod exchange;
#[cfg(feature = "server")]
pub mod identity;
#[cfg(feature = "server")]
pub mod mint;
#[cfg(feature = "server")]
pub mod oauth;
#[cfg(feature = "server")]
pub mod pki;
#[cfg(feature = "server")]
pub mod policy;
#[cfg(feature = "server")]
pub(crate) mod routes;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(all(feature = "server", any(test, feature = "testkit")))]
pub mod testkit;
#[cfg(all(feature = "server", any(test, feature = "testkit")))]
pub mod testkit_redis;
