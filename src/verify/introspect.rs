//! Introspection mode: the broker's `/introspect` (RFC 7662) decides.

use std::time::Duration;

use reqwest::header::ACCEPT;
use reqwest::Url;
use serde_json::{Map, Value};

use super::{BuildError, FollowerTls, VerifiedToken, VerifyError};

/// Largest introspection answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Time allowed for one introspection round trip.
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub(super) struct Introspector {
    client: reqwest::Client,
    endpoint: Url,
}

impl Introspector {
    pub(super) fn new(endpoint: &str, tls: FollowerTls) -> Result<Self, BuildError> {
        let endpoint = Url::parse(endpoint).map_err(|_| BuildError::InvalidUrl)?;
        if endpoint.scheme() != "https"
            || endpoint.host().is_none()
            || !endpoint.username().is_empty()
            || endpoint.password().is_some()
            || endpoint.query().is_some()
            || endpoint.fragment().is_some()
        {
            return Err(BuildError::InvalidUrl);
        }
        let client = super::revocation::mtls_client(tls).map_err(|e| match e {
            super::FollowerError::Tls(t) => BuildError::Tls(t),
            super::FollowerError::InvalidUrl => BuildError::InvalidUrl,
        })?;
        Ok(Self { client, endpoint })
    }

    pub(super) async fn introspect(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: u64,
    ) -> Result<VerifiedToken, VerifyError> {
        let unavailable = VerifyError::IntrospectionUnavailable;
        let resp = self
            .client
            .post(self.endpoint.clone())
            .header(ACCEPT, "application/json")
            .form(&[("token", token)])
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "introspection request failed");
                unavailable("introspection_unreachable")
            })?;
        if !resp.status().is_success() {
            tracing::warn!(
                status = resp.status().as_u16(),
                "introspection refused the request"
            );
            return Err(unavailable("introspection_refused"));
        }
        let mut resp = resp;
        let mut buf = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|_| unavailable("introspection_unreachable"))?
        {
            if buf.len().saturating_add(chunk.len()) > MAX_ANSWER_BYTES {
                return Err(unavailable("introspection_answer_too_large"));
            }
            buf.extend_from_slice(&chunk);
        }
        let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(&buf) else {
            return Err(unavailable("introspection_answer_malformed"));
        };
        check_answer(&mut m, issuer, audience, now)?;
        VerifiedToken::from_claims(m)
    }
}

/// The checks a local verification would make, on the broker's answer.
fn check_answer(
    m: &mut Map<String, Value>,
    issuer: &str,
    audience: &str,
    now: u64,
) -> Result<(), VerifyError> {
    if m.get("active") != Some(&Value::Bool(true)) {
        return Err(VerifyError::Inactive);
    }
    if m.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(VerifyError::Claims(
            crate::jose::validate::ClaimError::IssuerMismatch,
        ));
    }
    let aud_ok = match m.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(VerifyError::Claims(
            crate::jose::validate::ClaimError::AudienceMismatch,
        ));
    }
    match m.get("exp").and_then(Value::as_u64) {
        Some(exp) if exp > now => {}
        _ => return Err(VerifyError::Inactive),
    }
    for k in ["active", "token_type", "nbf"] {
        m.remove(k);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn verify_introspection_answer_is_checked_like_a_token() {
        let good = json!({"active": true, "iss": "https://b", "aud": "https://api", "exp": 200,
            "sub": "s", "jti": "j", "txn": "t", "scope": "a b", "token_type": "Bearer"});
        let mut m = answer(good.clone());
        assert_eq!(
            check_answer(&mut m, "https://b", "https://api", 100),
            Ok(())
        );
        let t = VerifiedToken::from_claims(m).unwrap();
        assert_eq!(t.task(), "t");
        assert!(t.scopes().contains("b"));

        let mut inactive = answer(json!({"active": false}));
        assert_eq!(
            check_answer(&mut inactive, "https://b", "https://api", 100),
            Err(VerifyError::Inactive)
        );
        let mut truthy = answer(json!({"active": "true"}));
        assert_eq!(
            check_answer(&mut truthy, "https://b", "https://api", 100),
            Err(VerifyError::Inactive)
        );
        let mut other_aud = answer(good.clone());
        assert!(check_answer(&mut other_aud, "https://b", "https://other", 100).is_err());
        let mut other_iss = answer(good.clone());
        assert!(check_answer(&mut other_iss, "https://evil", "https://api", 100).is_err());
        let mut expired = answer(good);
        assert_eq!(
            check_answer(&mut expired, "https://b", "https://api", 200),
            Err(VerifyError::Inactive)
        );
    }
}
