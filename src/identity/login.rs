//! Signing approvers in: the OpenID Connect authorization code flow with
//! PKCE S256, `state` and `nonce`, against `[approvals] login_issuer`. The
//! ID token is validated by that issuer's [`IssuerVerifier`] (discovery,
//! JWKS, signature, `iss`, `exp`), then here: `aud` = the client id,
//! `nonce`, the person's claim, `amr` and `auth_time`.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::Url;
use serde_json::Value;

use std::path::PathBuf;

use crate::identity::oidc::{IssuerVerifier, OidcError};
use crate::identity::IssuerConfig;

/// Largest token endpoint answer read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// How long one code exchange may take.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `amr` / groups list kept from an ID token.
const MAX_LIST: usize = 64;
/// Longest claim value kept from an ID token.
const MAX_CLAIM_LEN: usize = 256;

/// `[approvals] login_*`: how approvers sign in (OIDC code flow + PKCE).
#[derive(Debug, Clone)]
pub struct ApprovalLogin {
    /// The `[[issuers]]` entry's name.
    pub issuer_name: String,
    /// Its exact `iss`.
    pub issuer: String,
    /// The client id (the ID token's `aud`).
    pub client_id: String,
    /// The client secret's file (a confidential client), if any.
    pub client_secret_file: Option<PathBuf>,
    /// The ID-token claim naming the human.
    pub approver_claim: String,
    /// The array claim `group:NAME` approvers are matched against.
    pub groups_claim: Option<String>,
    /// Whether `amr` must hold one of `mfa_amr`.
    pub require_mfa: bool,
    /// `amr` values accepted as multi-factor.
    pub mfa_amr: Vec<String>,
    /// Oldest `auth_time` that may decide.
    pub max_auth_age: Duration,
    /// Session lifetime.
    pub session_ttl: Duration,
}

/// A signed-in human, as the ID token says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Human {
    /// The `approver_claim` value (e.g. the e-mail address).
    pub name: String,
    /// The IdP (`[[issuers]]` name).
    pub idp: String,
    /// The ID token's `amr`.
    pub amr: Vec<String>,
    /// The groups claim's values.
    pub groups: Vec<String>,
    /// When the human authenticated at the IdP (Unix seconds).
    pub auth_time: u64,
    /// The ID token's claims (for the person's own policies when they
    /// consent to a CIBA request); empty when they were too large to keep.
    #[serde(default)]
    pub claims: serde_json::Map<String, Value>,
}

/// Most bytes of ID-token claims kept in a session.
const MAX_KEPT_CLAIMS: usize = 4096;

/// Why the approval pages' sign-in client cannot be set up; each names
/// the config key.
#[derive(Debug, thiserror::Error)]
pub enum LoginSetupError {
    /// The issuer's `ca` file cannot be read.
    #[error("approvals.login_issuer: ca {}: {source}", path.display())]
    ReadCa {
        /// The CA file.
        path: std::path::PathBuf,
        /// Why.
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate in the issuer's `ca` file is bad.
    #[error("approvals.login_issuer: ca: {0}")]
    BadCa(rustls_pki_types::pem::Error),
    /// The HTTPS client cannot be built.
    #[error("approvals.login_issuer: {0}")]
    Client(crate::jwks::FetchError),
    /// The client secret file cannot be read.
    #[error("approvals.login_client_secret_file: {}: {source}", path.display())]
    ReadSecret {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The client secret file holds nothing but white space.
    #[error("approvals.login_client_secret_file: {}: empty", .0.display())]
    EmptySecret(std::path::PathBuf),
}

/// Why a sign-in failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoginError {
    /// The IdP cannot be reached or answered nonsense: try again later.
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
    /// The answer or the ID token is not acceptable (stable reason code).
    #[error("sign-in refused: {0}")]
    Rejected(&'static str),
}

/// Random URL-safe text of `n` random bytes (ids, state, nonce, PKCE).
pub fn random_token(n: usize) -> Result<String, LoginError> {
    let mut b = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| LoginError::Unavailable("no randomness".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// Hex SHA-256 of `s` (store keys of secrets, log-safe ids).
pub fn sha256_hex(s: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The PKCE S256 challenge of `verifier` (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// The relying party: discovery of the IdP's endpoints, the authorization
/// URL, the code exchange and the ID token's rules.
pub struct LoginClient {
    cfg: ApprovalLogin,
    client: reqwest::Client,
    secret: Option<String>,
    endpoints: tokio::sync::Mutex<Option<(Url, Url)>>,
}

impl std::fmt::Debug for LoginClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginClient")
            .field("issuer", &self.cfg.issuer)
            .field("client_id", &self.cfg.client_id)
            .finish_non_exhaustive()
    }
}

impl LoginClient {
    /// Builds the client (no network yet): the issuer's extra CA is
    /// trusted, the client secret (if any) is read now.
    pub fn new(cfg: &ApprovalLogin, issuer: &IssuerConfig) -> Result<Self, LoginSetupError> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = Vec::new();
        if let Some(ca) = &issuer.ca {
            for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| {
                LoginSetupError::ReadCa {
                    path: ca.clone(),
                    source: e,
                }
            })? {
                roots.push(c.map_err(LoginSetupError::BadCa)?);
            }
        }
        let client = crate::jwks::https_client(&roots, true).map_err(LoginSetupError::Client)?;
        let secret = match &cfg.client_secret_file {
            Some(p) => {
                let s = std::fs::read_to_string(p).map_err(|e| LoginSetupError::ReadSecret {
                    path: p.clone(),
                    source: e,
                })?;
                let s = s.trim().to_string();
                if s.is_empty() {
                    return Err(LoginSetupError::EmptySecret(p.clone()));
                }
                Some(s)
            }
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            client,
            secret,
            endpoints: tokio::sync::Mutex::new(None),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ApprovalLogin {
        &self.cfg
    }

    /// The IdP's authorization and token endpoints (discovered once, again
    /// after a failure).
    async fn endpoints(&self) -> Result<(Url, Url), LoginError> {
        let mut g = self.endpoints.lock().await;
        if let Some(e) = g.as_ref() {
            return Ok(e.clone());
        }
        let e = crate::jwks::http::discover_login_endpoints(&self.client, &self.cfg.issuer)
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        *g = Some(e.clone());
        Ok(e)
    }

    /// The URL that starts a sign-in: `response_type=code`, PKCE S256,
    /// `state`, `nonce`, `scope=openid email` (plus the groups claim's
    /// name), and `max_age` when the last sign-in was too old.
    pub async fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        verifier: &str,
        max_age: Option<u64>,
    ) -> Result<Url, LoginError> {
        let (mut url, _) = self.endpoints().await?;
        let mut scope = String::from("openid email");
        if let Some(g) = &self.cfg.groups_claim {
            scope.push(' ');
            scope.push_str(g);
        }
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.cfg.client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("scope", &scope)
                .append_pair("state", state)
                .append_pair("nonce", nonce)
                .append_pair("code_challenge", &pkce_challenge(verifier))
                .append_pair("code_challenge_method", "S256");
            if let Some(m) = max_age {
                q.append_pair("max_age", &m.to_string());
            }
        }
        Ok(url)
    }

    /// Exchanges `code` at the token endpoint (with the PKCE verifier and,
    /// for a confidential client, the secret); returns the ID token.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<String, LoginError> {
        let (_, token_url) = self.endpoints().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", self.cfg.client_id.as_str()),
            ("code_verifier", verifier),
        ];
        if let Some(s) = &self.secret {
            form.push(("client_secret", s.as_str()));
        }
        let body = encode_form(&form);
        let resp = self
            .client
            .post(token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .timeout(TOKEN_TIMEOUT)
            .body(body)
            .send()
            .await
            .map_err(|e| LoginError::Unavailable(e.without_url().to_string()))?;
        let status = resp.status();
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_TOKEN_RESPONSE as u64)
        {
            return Err(LoginError::Rejected("token_response_too_large"));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| LoginError::Unavailable(e.without_url().to_string()))?;
        if bytes.len() > MAX_TOKEN_RESPONSE {
            return Err(LoginError::Rejected("token_response_too_large"));
        }
        if status.is_server_error() {
            return Err(LoginError::Unavailable(format!(
                "token endpoint answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(LoginError::Rejected("code_refused"));
        }
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|_| LoginError::Rejected("token_response"))?;
        match v.get("id_token") {
            Some(Value::String(t)) => Ok(t.clone()),
            _ => Err(LoginError::Rejected("no_id_token")),
        }
    }

    /// Validates `id_token`: signature and `iss`/`exp` by `verifier` (the
    /// login issuer's), then `aud` holds the client id (and `azp`, when
    /// several audiences), `nonce` equals `nonce`, the person's claim is a
    /// non-empty string, `auth_time` is present. MFA and freshness are
    /// [`crate::exchange::approval`]'s rules, checked by the caller.
    pub async fn validate_id_token(
        &self,
        verifier: &IssuerVerifier,
        id_token: &str,
        nonce: &str,
        now: u64,
    ) -> Result<Human, LoginError> {
        let jws = crate::jose::jws::decode(id_token)
            .map_err(|_| LoginError::Rejected("id_token_malformed"))?;
        let claims = verifier.verify(jws, now).await.map_err(|e| match e {
            OidcError::Rejected(r) => LoginError::Rejected(r),
            OidcError::Unavailable(m) | OidcError::Stale(m) => LoginError::Unavailable(m),
        })?;
        if !claims.aud.iter().any(|a| a == &self.cfg.client_id) {
            return Err(LoginError::Rejected("id_token_audience"));
        }
        if claims.aud.len() > 1
            && claims.claims.get("azp").and_then(Value::as_str) != Some(&self.cfg.client_id)
        {
            return Err(LoginError::Rejected("id_token_azp"));
        }
        let got_nonce = claims.claims.get("nonce").and_then(Value::as_str);
        if got_nonce.is_none_or(|n| !constant_time_eq(n, nonce)) {
            return Err(LoginError::Rejected("id_token_nonce"));
        }
        let name = match claims.claims.get(&self.cfg.approver_claim) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_CLAIM_LEN => s.clone(),
            _ => return Err(LoginError::Rejected("id_token_no_approver_claim")),
        };
        if self.cfg.approver_claim == "email"
            && claims.claims.get("email_verified") == Some(&Value::Bool(false))
        {
            return Err(LoginError::Rejected("email_not_verified"));
        }
        let auth_time = match claims.claims.get("auth_time").and_then(Value::as_u64) {
            Some(t) => t,
            None => return Err(LoginError::Rejected("id_token_no_auth_time")),
        };
        let strings = |v: Option<&Value>| -> Vec<String> {
            match v {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|s| s.len() <= MAX_CLAIM_LEN)
                    .take(MAX_LIST)
                    .map(str::to_string)
                    .collect(),
                _ => Vec::new(),
            }
        };
        let amr = strings(claims.claims.get("amr"));
        let groups = match &self.cfg.groups_claim {
            Some(g) => strings(claims.claims.get(g)),
            None => Vec::new(),
        };
        let kept = serde_json::to_string(&claims.claims).map_or(usize::MAX, |t| t.len());
        Ok(Human {
            name,
            idp: self.cfg.issuer_name.clone(),
            amr,
            groups,
            auth_time,
            claims: if kept <= MAX_KEPT_CLAIMS {
                claims.claims
            } else {
                serde_json::Map::new()
            },
        })
    }
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn encode_form(pairs: &[(&str, &str)]) -> String {
    Url::parse("https://x.invalid/")
        .map(|mut u| {
            u.query_pairs_mut().extend_pairs(pairs.iter().copied());
            u.query().unwrap_or("").to_string()
        })
        .unwrap_or_default()
}

/// Equality of two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn random_tokens_differ_and_form_encoding_escapes() {
        assert_ne!(random_token(32).unwrap(), random_token(32).unwrap());
        assert_eq!(random_token(32).unwrap().len(), 43);
        assert_eq!(encode_form(&[("a", "b c&d")]), "a=b+c%26d");
        assert!(constant_time_eq("x", "x") && !constant_time_eq("x", "y"));
    }
}
