//! What the exchange consumes: the `/token` and `/bc-authorize` requests as
//! types (built once by the HTTP layer's form parser, `oauth::request`,
//! which re-exports them). They live here, below `oauth`, so the exchange never imports
//! the layer above it.

use crate::policy::scope::ScopeSet;

/// Longest `task` value.
pub const MAX_TASK_LEN: usize = 128;

/// Token type URNs (RFC 8693 §3, plus Tessera's `mtls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// `urn:ietf:params:oauth:token-type:jwt`
    Jwt,
    /// `urn:ietf:params:oauth:token-type:id_token`
    IdToken,
    /// `urn:ietf:params:oauth:token-type:access_token`
    AccessToken,
    /// `urn:ietf:params:oauth:token-type:mtls`: the TLS client certificate.
    Mtls,
}

impl TokenType {
    /// Every type `/token` accepts as a `subject_token_type` (the discovery
    /// metadata lists exactly these).
    pub const ALL: [Self; 4] = [Self::Jwt, Self::IdToken, Self::AccessToken, Self::Mtls];

    /// The URN.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "urn:ietf:params:oauth:token-type:jwt",
            Self::IdToken => "urn:ietf:params:oauth:token-type:id_token",
            Self::AccessToken => "urn:ietf:params:oauth:token-type:access_token",
            Self::Mtls => "urn:ietf:params:oauth:token-type:mtls",
        }
    }

    /// Parses a URN exactly.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The grant types `/token` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantType {
    /// RFC 8693 token exchange.
    TokenExchange,
    /// `client_credentials` over mTLS: shorthand for an exchange whose subject is the certificate.
    ClientCredentials,
}

/// The requested target (RFC 8693 `audience` or RFC 8707 `resource`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A logical audience name.
    Audience(String),
    /// An absolute URI.
    Resource(String),
}

impl Target {
    /// The value that becomes `aud`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Audience(s) | Self::Resource(s) => s,
        }
    }
}

/// A parsed, shape-checked `/token` request.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `grant_type`.
    pub grant_type: GrantType,
    /// `subject_token` (absent for mTLS subjects).
    pub subject_token: Option<String>,
    /// `subject_token_type`.
    pub subject_token_type: TokenType,
    /// `actor_token`.
    pub actor_token: Option<String>,
    /// `actor_token_type`.
    pub actor_token_type: Option<TokenType>,
    /// The one target.
    pub target: Target,
    /// `scope`.
    pub scope: ScopeSet,
    /// `requested_token_type` (`None`: access token).
    pub requested_token_type: Option<TokenType>,
    /// `expires_in`.
    pub expires_in: Option<u64>,
    /// `task`.
    pub task: Option<String>,
    /// `approval_id`.
    pub approval_id: Option<String>,
    /// `authorization_details` (RFC 9396), shape-checked.
    pub authorization_details: Option<serde_json::Value>,
    /// The `DPoP` header (RFC 9449), when sent; set by the route.
    pub dpop: Option<String>,
}

/// A task id: 1..=128 characters of `[A-Za-z0-9._:-]`.
pub fn valid_task(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TASK_LEN
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// A parsed, shape-checked `/bc-authorize` request (OpenID CIBA Core 1.0
/// §7.1, poll mode).
#[derive(Debug, Clone, PartialEq)]
pub struct BackchannelRequest {
    /// `login_hint`: the person, as the agent names them.
    pub login_hint: String,
    /// `scope`.
    pub scope: ScopeSet,
    /// The one target (`audience` or `resource`).
    pub audience: String,
    /// `binding_message`.
    pub binding_message: Option<String>,
    /// `task`.
    pub task: Option<String>,
    /// `authorization_details` (RFC 9396), shape-checked.
    pub authorization_details: Option<serde_json::Value>,
    /// `requested_expiry` in seconds (more than 0; the exchange caps it at
    /// `[approvals] ttl`).
    pub requested_expiry: Option<u64>,
}

/// A `/token` request with the CIBA grant: one poll of a consent request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CibaPoll {
    /// `auth_req_id`, when sent once, non-empty and at most
    /// [`MAX_AUTH_REQ_ID_LEN`] bytes (otherwise `None`: the exchange
    /// refuses it as missing, after the client check).
    pub auth_req_id: Option<String>,
}

/// Longest `auth_req_id` (an approval id is a UUID).
pub const MAX_AUTH_REQ_ID_LEN: usize = 64;
