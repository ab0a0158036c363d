//! The configuration file exactly as written: serde types with
//! `deny_unknown_fields`, so a misspelt key is an error that names it.
//!
//! Nothing here is validated; [`super::Config::from_raw`] turns a
//! [`RawConfig`] into a typed, checked [`super::Config`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole `tessera.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`: listeners, TLS material and the issuer name.
    #[serde(default)]
    pub server: RawServer,
    /// `[tokens]`: signing keys and lifetimes.
    #[serde(default)]
    pub tokens: RawTokens,
    /// `[store]`: where revocations, grants and replay records live.
    #[serde(default)]
    pub store: RawStore,
    /// `[admin]`: operator identities allowed on the admin API.
    #[serde(default)]
    pub admin: RawSubjects,
    /// `[approvals]`: human approval settings.
    #[serde(default)]
    pub approvals: RawApprovals,
    /// `[dev]`: development conveniences.
    #[serde(default)]
    pub dev: RawDev,
    /// `[introspection]`: identities allowed to introspect and read the feed.
    #[serde(default)]
    pub introspection: RawIntrospection,
    /// `[limits]`: request, connection and timeout bounds.
    #[serde(default)]
    pub limits: RawLimits,
    /// `[dpop]`: DPoP (RFC 9449) options.
    #[serde(default)]
    pub dpop: RawDpop,
    /// `[audit]`: where audit records go.
    #[serde(default)]
    pub audit: RawAudit,
    /// `[guard]`: the anomaly guard (off by default).
    #[serde(default)]
    pub guard: RawGuard,
    /// `[[issuers]]`: trusted OIDC issuers.
    #[serde(default)]
    pub issuers: Vec<RawIssuer>,
    /// `[[policies]]`: who may get which tokens.
    #[serde(default)]
    pub policies: Vec<RawPolicy>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// HTTPS listen address. Defaults to `127.0.0.1:8443`.
    #[serde(default = "d_listen")]
    pub listen: String,
    /// `iss` of issued tokens and base of the metadata. Defaults to `https://127.0.0.1:8443`.
    #[serde(default = "d_issuer")]
    pub issuer: String,
    /// Server certificate chain (PEM). Defaults to `keys/dev/server.pem`.
    #[serde(default = "d_tls_cert")]
    pub tls_cert: String,
    /// Server private key (PEM). Defaults to `keys/dev/server-key.pem`.
    #[serde(default = "d_tls_key")]
    pub tls_key: String,
    /// Trust anchors for client certificates. Defaults to `["keys/dev/ca.pem"]`.
    #[serde(default = "d_client_ca")]
    pub client_ca: Vec<String>,
    /// Plain-HTTP listener for `/healthz`, `/readyz`, `/metrics`. Defaults to `127.0.0.1:9090`.
    #[serde(default = "d_ops_listen")]
    pub ops_listen: String,
    /// SPIFFE trust domain → its CA files. When set, a certificate whose
    /// SPIFFE ID is in a trust domain must chain to that domain's CAs.
    #[serde(default)]
    pub trust_domains: BTreeMap<String, Vec<String>>,
    /// Largest wall-clock step (relative to monotonic time, sampled every
    /// second) that is tolerated; a larger one stops minting for
    /// `clock_quarantine`. Defaults to `5s`; 1s..=1h.
    #[serde(default = "d_max_clock_step")]
    pub max_clock_step: String,
    /// How long minting stays stopped after a clock step. Defaults to `1m`; 1s..=1h.
    #[serde(default = "d_clock_quarantine")]
    pub clock_quarantine: String,
    /// On SIGTERM: how long `/readyz` answers 503 before the listener stops
    /// accepting (0s to 60s). Defaults to `1s`.
    #[serde(default = "d_shutdown_grace")]
    pub shutdown_grace: String,
    /// On SIGTERM, after the grace: how long in-flight requests may take to
    /// finish before their connections are closed (1s to 5m). Defaults to `10s`.
    #[serde(default = "d_drain_timeout")]
    pub drain_timeout: String,
    /// Threads serving requests: `0` (the default) is one per CPU this
    /// process may use; `1` gives the lowest CPU per exchange (no
    /// wake-ups between threads) and at most one core's throughput. 0..=1024.
    #[serde(default)]
    pub worker_threads: u32,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: d_listen(),
            issuer: d_issuer(),
            tls_cert: d_tls_cert(),
            tls_key: d_tls_key(),
            client_ca: d_client_ca(),
            ops_listen: d_ops_listen(),
            trust_domains: BTreeMap::new(),
            max_clock_step: d_max_clock_step(),
            clock_quarantine: d_clock_quarantine(),
            shutdown_grace: d_shutdown_grace(),
            drain_timeout: d_drain_timeout(),
            worker_threads: 0,
        }
    }
}

/// `[tokens]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    /// Directory of PKCS#8 PEM signing keys. Defaults to `keys/signing`.
    #[serde(default = "d_signing_keys")]
    pub signing_keys: String,
    /// `ES256` (default), `EdDSA` or `RS256`.
    #[serde(default = "d_algorithm")]
    pub algorithm: String,
    /// Lifetime when the request names none. Defaults to `5m`.
    #[serde(default = "d_default_ttl")]
    pub default_ttl: String,
    /// Hard cap on every token's lifetime. Defaults to `15m`.
    #[serde(default = "d_max_ttl")]
    pub max_ttl: String,
}

impl Default for RawTokens {
    fn default() -> Self {
        Self {
            signing_keys: d_signing_keys(),
            algorithm: d_algorithm(),
            default_ttl: d_default_ttl(),
            max_ttl: d_max_ttl(),
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `memory://` (default) or a Redis URL.
    #[serde(default = "d_store_url")]
    pub url: String,
    /// Key prefix in the store. Defaults to `tessera`.
    #[serde(default = "d_prefix")]
    pub prefix: String,
    /// Timeout of every store call. Defaults to `250ms`.
    #[serde(default = "d_store_timeout")]
    pub timeout: String,
    /// Consecutive timeouts or connection failures that open the circuit
    /// breaker (0: no breaker). Defaults to 5.
    #[serde(default = "d_breaker_failures")]
    pub breaker_failures: u32,
    /// First cool-off of an open breaker. Defaults to `500ms`.
    #[serde(default = "d_breaker_cooloff")]
    pub breaker_cooloff: String,
    /// Longest cool-off after repeated failed probes. Defaults to `5s`.
    #[serde(default = "d_breaker_cooloff_max")]
    pub breaker_cooloff_max: String,
    /// Replicas that must acknowledge an operator's revocation (Redis
    /// `WAIT`) for it to be reported durable; 0 does not wait. Defaults to 0.
    #[serde(default)]
    pub revocation_replicas: u32,
    /// Longest wait for those acknowledgements. Defaults to `500ms`.
    #[serde(default = "d_revocation_wait")]
    pub revocation_wait: String,
    /// Hold subject blocks in the broker, kept exact by Redis client
    /// tracking (every Redis topology; see `store::block_cache`). Defaults
    /// to true.
    #[serde(default = "d_true")]
    pub block_cache: bool,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            url: d_store_url(),
            prefix: d_prefix(),
            timeout: d_store_timeout(),
            breaker_failures: d_breaker_failures(),
            breaker_cooloff: d_breaker_cooloff(),
            breaker_cooloff_max: d_breaker_cooloff_max(),
            revocation_replicas: 0,
            revocation_wait: d_revocation_wait(),
            block_cache: true,
        }
    }
}

/// `[admin]` and `[introspection]`: a list of mTLS identities.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubjects {
    /// SPIFFE IDs (or DNS names) of the allowed client certificates. Defaults to none.
    #[serde(default)]
    pub subjects: Vec<String>,
}

/// `[introspection]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    /// mTLS identities allowed to call `/introspect` and read `/revocations`. Defaults to none.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Optional: per identity, the audiences whose tokens it may see as
    /// active (RFC 7662 §4: no token scanning). An identity without an entry
    /// sees every audience. Defaults to none.
    #[serde(default)]
    pub audiences: BTreeMap<String, Vec<String>>,
}

/// `[dpop]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDpop {
    /// Require a server nonce in DPoP proofs (RFC 9449 §8): proofs without a
    /// fresh nonce get `use_dpop_nonce` with a `DPoP-Nonce` header. Nonces are
    /// derived from the signing keys, so every replica sharing them accepts
    /// the same nonces. Defaults to `false`.
    #[serde(default)]
    pub nonce: bool,
}

/// `[audit]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// JSON-lines sink: `stdout` (default), `file` (needs `path`) or `off`.
    /// The bounded stream in the store is written in every case.
    #[serde(default = "d_audit_sink")]
    pub sink: String,
    /// The audit file when `sink = "file"`; an existing file's chain is
    /// continued. Defaults to none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// About how many records the store's audit stream keeps (oldest
    /// trimmed first). Defaults to `100000`.
    #[serde(default = "d_audit_stream_max_len")]
    pub stream_max_len: u64,
    /// Longest a decision waits for its record to be written before it
    /// fails closed (503). Defaults to `2s`.
    #[serde(default = "d_audit_timeout")]
    pub timeout: String,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            sink: d_audit_sink(),
            path: None,
            stream_max_len: d_audit_stream_max_len(),
            timeout: d_audit_timeout(),
        }
    }
}

/// `[guard]`: the anomaly guard. Its state is fleet-wide in a Redis store,
/// per process (per replica) with the memory store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    /// Run the guard. Defaults to `false`.
    #[serde(default)]
    pub enabled: bool,
    /// Length of the sliding window rates are measured over. Defaults to `1m`.
    #[serde(default = "d_guard_window")]
    pub window: String,
    /// Most exchanges admitted per identity per `window`; `0` sets no
    /// configured limit. Defaults to `0`.
    #[serde(default)]
    pub max_rate: u32,
    /// Learn each identity's normal rate (an EWMA of its windows) and act
    /// above `learn_multiplier` times it. Defaults to `false`.
    #[serde(default)]
    pub learn: bool,
    /// Act above this many times the learned rate. Defaults to `10`.
    #[serde(default = "d_guard_learn_multiplier")]
    pub learn_multiplier: u32,
    /// Windows observed before the learned rate is used. Defaults to `10`.
    #[serde(default = "d_guard_learn_warmup")]
    pub learn_warmup: u32,
    /// Never act on the learned rate at or below this many exchanges per
    /// window. Defaults to `20`.
    #[serde(default = "d_guard_learn_floor")]
    pub learn_floor: u32,
    /// When a rate is exceeded: `allow`, `slow_down`, `approval` or
    /// `revoke`. Defaults to `slow_down`.
    #[serde(default = "d_guard_slow_down")]
    pub on_rate: String,
    /// When an identity uses an audience it was never issued a token for.
    /// Defaults to `allow`.
    #[serde(default = "d_guard_allow")]
    pub on_new_audience: String,
    /// Consecutive refusals after authentication that trip the streak
    /// trigger; `0` turns it off. Defaults to `0`.
    #[serde(default)]
    pub refusal_streak: u32,
    /// When a refusal streak trips. Defaults to `slow_down`.
    #[serde(default = "d_guard_slow_down")]
    pub on_refusal_streak: String,
    /// How long a tripped streak keeps answering `slow_down` / `approval`.
    /// Defaults to `5m`.
    #[serde(default = "d_guard_cooldown")]
    pub cooldown: String,
    /// How long `revoke` blocks the identity. Defaults to `15m`.
    #[serde(default = "d_guard_block_for")]
    pub block_for: String,
    /// Most identities tracked (idle ones are forgotten first). Defaults to `100000`.
    #[serde(default = "d_guard_max_identities")]
    pub max_identities: u64,
    /// Most audiences remembered per identity. Defaults to `64`.
    #[serde(default = "d_guard_max_audiences")]
    pub max_audiences: u64,
}

impl Default for RawGuard {
    fn default() -> Self {
        Self {
            enabled: false,
            window: d_guard_window(),
            max_rate: 0,
            learn: false,
            learn_multiplier: d_guard_learn_multiplier(),
            learn_warmup: d_guard_learn_warmup(),
            learn_floor: d_guard_learn_floor(),
            on_rate: d_guard_slow_down(),
            on_new_audience: d_guard_allow(),
            refusal_streak: 0,
            on_refusal_streak: d_guard_slow_down(),
            cooldown: d_guard_cooldown(),
            block_for: d_guard_block_for(),
            max_identities: d_guard_max_identities(),
            max_audiences: d_guard_max_audiences(),
        }
    }
}

/// `guard = { on_rate, on_new_audience }` of a policy: overrides of the
/// `[guard]` actions for requests this policy would grant.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyGuard {
    /// Overrides `[guard] on_rate`. Defaults to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_rate: Option<String>,
    /// Overrides `[guard] on_new_audience`. Defaults to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_new_audience: Option<String>,
}

/// `[approvals]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    /// How long a pending approval waits (and how long an approved one may
    /// be redeemed). Defaults to `10m`.
    #[serde(default = "d_approvals_ttl")]
    pub ttl: String,
    /// Least time between two polls of one pending approval; faster polls
    /// answer `slow_down` (RFC 8628 §3.5). `0s` disables the check.
    /// Defaults to `5s`.
    #[serde(default = "d_approvals_interval")]
    pub interval: String,
    /// `https://` URL that receives a JSON summary of every new pending
    /// approval (best effort, never blocking a request). Defaults to none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Extra trust anchor (PEM) for the webhook's HTTPS, besides the public
    /// WebPKI roots. Defaults to none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_ca: Option<String>,
    /// The `[[issuers]]` entry (by name) whose users approve on the web
    /// pages (the organisation's IdP). Defaults to none: no web pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_issuer: Option<String>,
    /// The OAuth client id Tessera signs approvers in with (the ID token's
    /// `aud`). Required with `login_issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_client_id: Option<String>,
    /// File holding the client secret; without it, a public client (PKCE
    /// only). Defaults to none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_client_secret_file: Option<String>,
    /// The ID-token claim that names the human. Defaults to `email`.
    #[serde(default = "d_approver_claim")]
    pub approver_claim: String,
    /// Array claim matched by `group:NAME` approvers. Defaults to none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_claim: Option<String>,
    /// The ID token's `amr` must hold one of `mfa_amr`. Defaults to `true`.
    #[serde(default = "d_true")]
    pub require_mfa: bool,
    /// RFC 8176 `amr` values accepted as multi-factor. Defaults to
    /// `["mfa", "hwk", "otp", "swk", "fpt"]`.
    #[serde(default = "d_mfa_amr")]
    pub mfa_amr: Vec<String>,
    /// An `auth_time` older than this cannot decide (the human signs in
    /// again, with `max_age`). Defaults to `15m`.
    #[serde(default = "d_max_auth_age")]
    pub max_auth_age: String,
    /// Lifetime of an approver's session (at most `1h`). Defaults to `1h`.
    #[serde(default = "d_session_ttl")]
    pub session_ttl: String,
}

impl Default for RawApprovals {
    fn default() -> Self {
        Self {
            ttl: d_approvals_ttl(),
            interval: d_approvals_interval(),
            webhook: None,
            webhook_ca: None,
            login_issuer: None,
            login_client_id: None,
            login_client_secret_file: None,
            approver_claim: d_approver_claim(),
            groups_claim: None,
            require_mfa: true,
            mfa_amr: d_mfa_amr(),
            max_auth_age: d_max_auth_age(),
            session_ttl: d_session_ttl(),
        }
    }
}

fn d_approver_claim() -> String {
    "email".into()
}
fn d_mfa_amr() -> Vec<String> {
    ["mfa", "hwk", "otp", "swk", "fpt"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn d_max_auth_age() -> String {
    "15m".into()
}
fn d_session_ttl() -> String {
    "1h".into()
}

/// `[dev]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDev {
    /// Generate missing development material at start-up. Defaults to `false`;
    /// only the shipped development config sets it.
    #[serde(default)]
    pub generate_missing: bool,
}

/// `[limits]` (an extension of the contract): every bound in one place.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest request body accepted, in bytes (413 above). Defaults to `65536`.
    #[serde(default = "d_max_body")]
    pub max_body_bytes: u64,
    /// Largest `subject_token` / `actor_token`, in bytes. Defaults to `8192`.
    #[serde(default = "d_max_token")]
    pub max_token_bytes: u64,
    /// Time allowed for a TLS handshake. Defaults to `5s`.
    #[serde(default = "d_handshake_timeout")]
    pub handshake_timeout: String,
    /// Time allowed to read request headers. Defaults to `5s`.
    #[serde(default = "d_header_timeout")]
    pub header_read_timeout: String,
    /// Time allowed for a whole request. Defaults to `10s`.
    #[serde(default = "d_request_timeout")]
    pub request_timeout: String,
    /// Most concurrent connections on the HTTPS listener. Defaults to `4096`.
    #[serde(default = "d_max_connections")]
    pub max_connections: u64,
    /// Pre-authentication rate limit: new connections plus requests per
    /// second allowed from one peer IP address, before anything is parsed
    /// (429 `slow_down` above it; `0` turns it off, e.g. behind a proxy
    /// that hides client addresses). Defaults to `1000`.
    #[serde(default = "d_peer_rate")]
    pub peer_rate: u32,
    /// Burst allowed above `peer_rate`. Defaults to `2000`.
    #[serde(default = "d_peer_burst")]
    pub peer_burst: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: d_max_body(),
            max_token_bytes: d_max_token(),
            handshake_timeout: d_handshake_timeout(),
            header_read_timeout: d_header_timeout(),
            request_timeout: d_request_timeout(),
            max_connections: d_max_connections(),
            peer_rate: d_peer_rate(),
            peer_burst: d_peer_burst(),
        }
    }
}

/// One `[[issuers]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    /// Short name used by policies (`match.issuer`).
    pub name: String,
    /// Exact `iss` value of the issuer's tokens.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry one of them.
    pub audiences: Vec<String>,
    /// JWKS URL; defaults to OIDC discovery under `issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Extra trust anchor (PEM) for the issuer's HTTPS; public roots are also trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Accepted signature algorithms. Defaults to `["RS256", "ES256"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// Accept each token's `jti` only once. Defaults to `false`.
    #[serde(default)]
    pub single_use: bool,
    /// Longest `exp - iat` accepted from this issuer. Defaults to `24h`.
    #[serde(default = "d_issuer_max_lifetime")]
    pub max_token_lifetime: String,
    /// Clock leeway for `exp`/`nbf`/`iat`. Defaults to `30s`.
    #[serde(default = "d_leeway")]
    pub leeway: String,
    /// Least time between two JWKS refetches triggered by an unknown `kid`
    /// (and between retries after a failed fetch). Defaults to `30s`; 1s..=1h.
    #[serde(default = "d_jwks_refresh_cooldown")]
    pub jwks_refresh_cooldown: String,
    /// How long cached keys stay usable after the last successful JWKS
    /// fetch while the issuer cannot be reached; after that its tokens are
    /// refused with 503. Defaults to `24h`; 1m..=7d.
    #[serde(default = "d_jwks_max_stale")]
    pub jwks_max_stale: String,
    /// A file whose content is sent as `Authorization: Bearer` with the
    /// issuer's discovery and JWKS fetches (the Kubernetes API server's
    /// `/openid/v1/jwks` needs a caller: the pod's projected token). Re-read
    /// on every fetch; never logged. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<String>,
}

/// One `[[policies]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Unique name, shown in audit records.
    pub name: String,
    /// The accountable human; copied into tokens as `owner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Which identities this policy is for.
    #[serde(rename = "match")]
    pub match_: RawMatch,
    /// Audience patterns this policy grants.
    pub audiences: Vec<String>,
    /// Scope patterns this policy grants.
    pub scopes: Vec<String>,
    /// Lifetime cap for this policy's tokens. Defaults to `[tokens] max_ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<String>,
    /// Scopes issued only while a live JIT grant covers them. Defaults to none.
    #[serde(default)]
    pub jit_scopes: Vec<String>,
    /// Scopes issued only after a human approves the request. Defaults to none.
    #[serde(default)]
    pub approval_scopes: Vec<String>,
    /// Issuers whose subjects this workload may act for. Defaults to none.
    #[serde(default)]
    pub may_act_for: Vec<String>,
    /// Most actors an issued `act` chain may hold. Defaults to `1`.
    #[serde(default = "d_max_depth")]
    pub max_depth: u32,
    /// `approval_scopes` need RFC 9396 `authorization_details`. Defaults to `false`.
    #[serde(default)]
    pub require_authorization_details: bool,
    /// Refuse unbound (bearer) tokens for this policy. Defaults to `false`.
    #[serde(default)]
    pub require_binding: bool,
    /// Anomaly guard actions for this policy. Defaults to the `[guard]` ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<RawPolicyGuard>,
    /// Who decides this policy's approvals on the web pages: people (as
    /// `[approvals] approver_claim` names them) and `group:NAME` entries.
    /// Defaults to the `owner`; when set, operator certificates can no
    /// longer decide this policy's approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Vec<String>>,
}

/// `match = { issuer, subject, claims }` of a policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// An issuer `name`, or `"mtls"` for client certificates.
    pub issuer: String,
    /// Subject pattern; any subject when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Claim path → pattern; all must match.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

fn d_listen() -> String {
    "127.0.0.1:8443".into()
}
fn d_issuer() -> String {
    "https://127.0.0.1:8443".into()
}
fn d_tls_cert() -> String {
    "keys/dev/server.pem".into()
}
fn d_tls_key() -> String {
    "keys/dev/server-key.pem".into()
}
fn d_client_ca() -> Vec<String> {
    vec!["keys/dev/ca.pem".into()]
}
fn d_ops_listen() -> String {
    "127.0.0.1:9090".into()
}
fn d_shutdown_grace() -> String {
    "1s".into()
}
fn d_drain_timeout() -> String {
    "10s".into()
}
fn d_signing_keys() -> String {
    "keys/signing".into()
}
fn d_algorithm() -> String {
    "ES256".into()
}
fn d_default_ttl() -> String {
    "5m".into()
}
fn d_max_ttl() -> String {
    "15m".into()
}
fn d_store_url() -> String {
    "memory://".into()
}
fn d_prefix() -> String {
    "tessera".into()
}
fn d_store_timeout() -> String {
    "250ms".into()
}
fn d_breaker_failures() -> u32 {
    5
}
fn d_breaker_cooloff() -> String {
    "500ms".into()
}
fn d_breaker_cooloff_max() -> String {
    "5s".into()
}
fn d_revocation_wait() -> String {
    "500ms".into()
}
fn d_audit_sink() -> String {
    "stdout".into()
}
fn d_audit_stream_max_len() -> u64 {
    100_000
}
fn d_audit_timeout() -> String {
    "2s".into()
}
fn d_approvals_ttl() -> String {
    "10m".into()
}
fn d_approvals_interval() -> String {
    "5s".into()
}
fn d_max_body() -> u64 {
    65536
}
fn d_max_token() -> u64 {
    8192
}
fn d_handshake_timeout() -> String {
    "5s".into()
}
fn d_header_timeout() -> String {
    "5s".into()
}
fn d_request_timeout() -> String {
    "10s".into()
}
fn d_peer_rate() -> u32 {
    1000
}
fn d_peer_burst() -> u32 {
    2000
}
fn d_max_connections() -> u64 {
    4096
}
fn d_issuer_max_lifetime() -> String {
    "24h".into()
}
fn d_leeway() -> String {
    "30s".into()
}
fn d_jwks_refresh_cooldown() -> String {
    "30s".into()
}
fn d_jwks_max_stale() -> String {
    "24h".into()
}
fn d_max_clock_step() -> String {
    "5s".into()
}
fn d_clock_quarantine() -> String {
    "1m".into()
}
fn d_max_depth() -> u32 {
    1
}
fn d_guard_window() -> String {
    "1m".into()
}
fn d_guard_learn_multiplier() -> u32 {
    10
}
fn d_guard_learn_warmup() -> u32 {
    10
}
fn d_guard_learn_floor() -> u32 {
    20
}
fn d_guard_slow_down() -> String {
    "slow_down".into()
}
fn d_guard_allow() -> String {
    "allow".into()
}
fn d_guard_cooldown() -> String {
    "5m".into()
}
fn d_guard_block_for() -> String {
    "15m".into()
}
fn d_guard_max_identities() -> u64 {
    100_000
}
fn d_guard_max_audiences() -> u64 {
    64
}

fn d_true() -> bool {
    true
}
