//! An axum extractor for verified access tokens with RFC 6750 / RFC 9449
//! answers.
//!
//! [`Bearer`] reads `Authorization: Bearer <token>` or
//! `Authorization: DPoP <token>` (with its `DPoP` proof header), verifies
//! it with the `Arc<Verifier>` found in the router state through
//! [`Verifier::verify_request`] (which checks the DPoP proof and the RFC 8705
//! certificate binding against a [`ClientCertificate`] request extension
//! that the TLS layer must insert; a bound token without it is refused),
//! and, with `verifier-http`, asks an `Arc<RevocationFollower>` request
//! extension when one is present ([`super::RevocationFollower::check`],
//! which fails closed). Failures answer with [`BearerRejection`].

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{Presented, Scheme, VerifiedToken, Verifier, VerifyError};

/// The DER client certificate of the request's TLS connection, inserted as
/// a request extension by the server's TLS layer.
///
/// ```
/// let cert = tessera::verify::ClientCertificate(vec![0x30, 0x82]);
/// assert_eq!(cert.0.len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate(pub Vec<u8>);

/// A request's verified bearer token.
///
/// ```
/// use std::sync::Arc;
/// use axum::{routing::get, Router};
/// use tessera::verify::{Bearer, BearerRejection, Verifier};
///
/// async fn handler(bearer: Bearer) -> Result<String, BearerRejection> {
///     // 403 with `scope="tickets:read"` in the challenge when missing.
///     bearer.require_scopes(&["tickets:read"])?;
///     Ok(bearer.0.subject().to_owned())
/// }
/// # fn app(verifier: Arc<Verifier>) -> Router {
/// Router::new().route("/tickets", get(handler)).with_state(verifier)
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Bearer(pub VerifiedToken);

impl Bearer {
    /// Requires every scope in `required`; the rejection names them in the
    /// challenge (`Bearer error="insufficient_scope", scope="a b"`, RFC 6750
    /// §3.1).
    ///
    /// # Errors
    /// [`BearerRejection::InsufficientScope`].
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// use axum::response::IntoResponse;
    /// let bearer = tessera::verify::Bearer(rt.block_on(v.verify(&token))?);
    /// assert!(bearer.require_scopes(&["tickets:read"]).is_ok());
    /// let r = bearer.require_scopes(&["tickets:read", "tickets:delete"]).unwrap_err().into_response();
    /// assert_eq!(r.status(), 403);
    /// assert_eq!(r.headers()["www-authenticate"],
    ///     r#"Bearer error="insufficient_scope", scope="tickets:read tickets:delete""#);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn require_scopes(&self, required: &[&str]) -> Result<(), BearerRejection> {
        self.0
            .require_scopes(required)
            .map_err(|_| BearerRejection::InsufficientScope(required.join(" ")))
    }
}

/// Why a request was refused, answered per RFC 6750 §3.
///
/// ```
/// use axum::response::IntoResponse;
/// use tessera::verify::{BearerRejection, VerifyError};
/// let r = BearerRejection::from(VerifyError::InsufficientScope).into_response();
/// assert_eq!(r.status(), 403);
/// assert_eq!(r.headers()["www-authenticate"], r#"Bearer error="insufficient_scope""#);
/// let r = BearerRejection::Missing.into_response();
/// assert_eq!(r.headers()["www-authenticate"], r#"Bearer, DPoP algs="ES256 ES384 EdDSA RS256 PS256""#);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BearerRejection {
    /// No `Authorization` header: 401 with a bare `Bearer` challenge.
    #[error("no bearer token")]
    Missing,
    /// An `Authorization` header that is not one well-formed `Bearer`
    /// credential: 400 `invalid_request`.
    #[error("malformed authorization header")]
    InvalidRequest,
    /// The token was refused: 401 `invalid_token` (or, for a DPoP proof,
    /// `invalid_dpop_proof`), 403 `insufficient_scope`, or 503 when the
    /// issuer's keys, the revocation status or the introspection endpoint
    /// are unavailable.
    #[error("{0}")]
    Token(VerifyError),
    /// The token lacks the listed scopes (space-separated): 403
    /// `insufficient_scope` with `scope="…"`.
    #[error("insufficient scope: {0}")]
    InsufficientScope(String),
}

impl BearerRejection {
    /// A short stable code for logs and metrics.
    ///
    /// ```
    /// assert_eq!(tessera::verify::BearerRejection::Missing.reason(), "no_token");
    /// ```
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            BearerRejection::Missing => "no_token",
            BearerRejection::InvalidRequest => "invalid_request",
            BearerRejection::Token(e) => e.reason(),
            BearerRejection::InsufficientScope(_) => "insufficient_scope",
        }
    }

    /// The HTTP status of the answer.
    ///
    /// ```
    /// use tessera::verify::{BearerRejection, VerifyError};
    /// assert_eq!(BearerRejection::from(VerifyError::Revoked).status(), 401);
    /// ```
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            BearerRejection::Missing => StatusCode::UNAUTHORIZED,
            BearerRejection::InvalidRequest => StatusCode::BAD_REQUEST,
            BearerRejection::InsufficientScope(_) => StatusCode::FORBIDDEN,
            BearerRejection::Token(e) if e.is_insufficient_scope() => StatusCode::FORBIDDEN,
            BearerRejection::Token(e) if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            BearerRejection::Token(_) => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `WWW-Authenticate` value (none for 503).
    fn challenge(&self) -> Option<String> {
        let algs = dpop_algs();
        Some(match self {
            BearerRejection::Missing => format!(r#"Bearer, DPoP algs="{algs}""#),
            BearerRejection::InvalidRequest => r#"Bearer error="invalid_request""#.to_owned(),
            BearerRejection::InsufficientScope(scope) => {
                // Scope tokens are NQCHAR (RFC 6749 §3.3): no `"` or `\`.
                format!(r#"Bearer error="insufficient_scope", scope="{scope}""#)
            }
            BearerRejection::Token(e) if e.is_insufficient_scope() => {
                r#"Bearer error="insufficient_scope""#.to_owned()
            }
            BearerRejection::Token(e) if e.is_unavailable() => return None,
            BearerRejection::Token(VerifyError::DpopProof(_)) => {
                format!(r#"DPoP error="invalid_dpop_proof", algs="{algs}""#)
            }
            BearerRejection::Token(VerifyError::SchemeMismatch) => {
                format!(r#"DPoP error="invalid_token", algs="{algs}""#)
            }
            BearerRejection::Token(_) => r#"Bearer error="invalid_token""#.to_owned(),
        })
    }
}

impl From<VerifyError> for BearerRejection {
    fn from(e: VerifyError) -> Self {
        BearerRejection::Token(e)
    }
}

fn dpop_algs() -> String {
    crate::dpop::DPOP_ALGS
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The stable reason code of a refusal, attached to the response's
/// extensions (never sent to the client) so a logging layer can say why.
///
/// ```
/// use axum::response::IntoResponse;
/// use tessera::verify::{BearerRejection, RejectionReason, VerifyError};
/// let r = BearerRejection::from(VerifyError::Revoked).into_response();
/// assert_eq!(r.extensions().get::<RejectionReason>(), Some(&RejectionReason("revoked")));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RejectionReason(pub &'static str);

impl IntoResponse for BearerRejection {
    fn into_response(self) -> Response {
        let mut r = self.status().into_response();
        r.extensions_mut().insert(RejectionReason(self.reason()));
        if let Some(c) = self.challenge() {
            if let Ok(v) = HeaderValue::from_str(&c) {
                r.headers_mut().insert(WWW_AUTHENTICATE, v);
            }
        }
        r
    }
}

/// The scheme and token of exactly one `Authorization` header.
fn authorization(headers: &HeaderMap) -> Result<(Scheme, &str), BearerRejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(BearerRejection::Missing)?;
    if values.next().is_some() {
        return Err(BearerRejection::InvalidRequest);
    }
    let value = value
        .to_str()
        .map_err(|_| BearerRejection::InvalidRequest)?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(BearerRejection::InvalidRequest)?;
    let scheme = Scheme::parse(scheme).ok_or(BearerRejection::InvalidRequest)?;
    if token.is_empty() || token.contains(' ') {
        return Err(BearerRejection::InvalidRequest);
    }
    Ok((scheme, token))
}

/// The value of at most one `DPoP` header.
fn dpop_header(headers: &HeaderMap) -> Result<Option<&str>, BearerRejection> {
    let mut values = headers.get_all("dpop").iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BearerRejection::Token(VerifyError::DpopProof(
            "dpop_multiple_headers",
        )));
    }
    v.to_str()
        .map(Some)
        .map_err(|_| BearerRejection::Token(VerifyError::DpopProof("dpop_malformed")))
}

impl<S> FromRequestParts<S> for Bearer
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = BearerRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Arc::<Verifier>::from_ref(state);
        let (scheme, token) = authorization(&parts.headers)?;
        let mut presented = Presented::new(scheme, token, parts.method.as_str(), parts.uri.path());
        presented.dpop_proof = dpop_header(&parts.headers)?;
        presented.client_certificate = parts
            .extensions
            .get::<ClientCertificate>()
            .map(|c| c.0.as_slice());
        let token = verifier.verify_request(&presented).await?;
        #[cfg(feature = "verifier-http")]
        if let Some(f) = parts.extensions.get::<Arc<super::RevocationFollower>>() {
            f.check(&token)?;
        }
        Ok(Bearer(token))
    }
}

#[cfg(all(test, feature = "server"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(auth: &[&str]) -> Parts {
        let mut b = Request::builder().uri("/");
        for a in auth {
            b = b.header(AUTHORIZATION, *a);
        }
        b.body(()).unwrap().into_parts().0
    }

    async fn extract(v: &Arc<Verifier>, p: &mut Parts) -> Result<Bearer, BearerRejection> {
        Bearer::from_request_parts(p, v).await
    }

    fn verifier() -> (Arc<Verifier>, String) {
        let (jwks, token) = super::super::doc_support::fixture().unwrap();
        let v =
            Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)
                .unwrap()
                .build()
                .unwrap();
        (Arc::new(v), token)
    }

    #[tokio::test]
    async fn verify_extractor_answers_rfc6750() {
        let (v, token) = verifier();
        let ok = extract(&v, &mut parts(&[&format!("Bearer {token}")])).await;
        assert_eq!(
            ok.map(|b| b.0.task().to_owned()).ok().as_deref(),
            Some("task-1")
        );
        let lower = extract(&v, &mut parts(&[&format!("bearer {token}")])).await;
        assert!(lower.is_ok());

        let e = extract(&v, &mut parts(&[])).await.unwrap_err();
        assert_eq!(e, BearerRejection::Missing);
        let r = e.into_response();
        assert_eq!(r.status(), 401);
        assert!(r.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer, DPoP algs="));

        for bad in ["Basic abc", "Bearer", "Bearer ", "Bearer a b"] {
            let e = extract(&v, &mut parts(&[bad])).await.unwrap_err();
            assert_eq!(e, BearerRejection::InvalidRequest, "{bad}");
            assert_eq!(e.status(), 400);
        }
        let two = format!("Bearer {token}");
        let e = extract(&v, &mut parts(&[&two, &two])).await.unwrap_err();
        assert_eq!(e, BearerRejection::InvalidRequest);

        let e = extract(&v, &mut parts(&["Bearer a.b.c"]))
            .await
            .unwrap_err();
        let r = e.into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );

        let r = BearerRejection::from(VerifyError::InsufficientScope).into_response();
        assert_eq!(r.status(), 403);
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="insufficient_scope""#
        );
        let r = BearerRejection::from(VerifyError::Key(crate::jwks::KeyLookupError::Unavailable))
            .into_response();
        assert_eq!(r.status(), 503);
        assert!(r.headers().get(WWW_AUTHENTICATE).is_none());
        let r = BearerRejection::InsufficientScope("a:b c".into()).into_response();
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="insufficient_scope", scope="a:b c""#
        );
    }

    #[tokio::test]
    async fn verify_extractor_applies_the_dpop_scheme_rules() {
        let (v, token) = verifier();
        // An unbound token with the DPoP scheme.
        let e = extract(&v, &mut parts(&[&format!("DPoP {token}")]))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "scheme_mismatch");
        let r = e.into_response();
        assert_eq!(r.status(), 401);
        assert!(r.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with(r#"DPoP error="invalid_token""#));
        // A proof with a bearer token is refused rather than ignored.
        let mut p = parts(&[&format!("Bearer {token}")]);
        p.headers.insert("dpop", HeaderValue::from_static("x.y.z"));
        let e = extract(&v, &mut p).await.unwrap_err();
        assert_eq!(e.reason(), "scheme_mismatch");
        // Two DPoP headers.
        let mut p = parts(&[&format!("DPoP {token}")]);
        p.headers.append("dpop", HeaderValue::from_static("a"));
        p.headers.append("dpop", HeaderValue::from_static("b"));
        let e = extract(&v, &mut p).await.unwrap_err();
        assert_eq!(e.reason(), "dpop_multiple_headers");
        assert!(e.into_response().headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with(r#"DPoP error="invalid_dpop_proof""#));
    }
}
