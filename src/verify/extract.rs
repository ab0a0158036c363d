//! An axum extractor for verified bearer tokens with RFC 6750 answers.
//!
//! [`Bearer`] reads `Authorization: Bearer <token>`, verifies it with the
//! `Arc<Verifier>` found in the router state, checks the RFC 8705
//! certificate binding against a [`ClientCertificate`] request extension
//! (which the TLS layer must insert; a bound token without it is refused),
//! and, with `verifier-http`, consults an `Arc<RevocationFollower>` request
//! extension when one is present. Failures answer with [`BearerRejection`].

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{VerifiedToken, Verifier, VerifyError};

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
/// async fn handler(Bearer(token): Bearer) -> Result<String, BearerRejection> {
///     token.require_scopes(&["tickets:read"])?;
///     Ok(token.subject().to_owned())
/// }
/// # fn app(verifier: Arc<Verifier>) -> Router {
/// Router::new().route("/tickets", get(handler)).with_state(verifier)
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Bearer(pub VerifiedToken);

/// Why a request was refused, answered per RFC 6750 §3.
///
/// ```
/// use axum::response::IntoResponse;
/// use tessera::verify::{BearerRejection, VerifyError};
/// let r = BearerRejection::from(VerifyError::InsufficientScope).into_response();
/// assert_eq!(r.status(), 403);
/// assert_eq!(r.headers()["www-authenticate"], r#"Bearer error="insufficient_scope""#);
/// let r = BearerRejection::Missing.into_response();
/// assert_eq!(r.headers()["www-authenticate"], "Bearer");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BearerRejection {
    /// No `Authorization` header: 401 with a bare `Bearer` challenge.
    #[error("no bearer token")]
    Missing,
    /// An `Authorization` header that is not one well-formed `Bearer`
    /// credential: 400 `invalid_request`.
    #[error("malformed authorization header")]
    InvalidRequest,
    /// The token was refused: 401 `invalid_token`, 403 `insufficient_scope`,
    /// or 503 when the issuer's keys are unavailable.
    #[error("{0}")]
    Token(VerifyError),
}

impl BearerRejection {
    /// A short stable code for logs and metrics.
    ///
    /// ```
    /// assert_eq!(tessera::verify::BearerRejection::Missing.reason(), "no_token");
    /// ```
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self {
            BearerRejection::Missing => "no_token",
            BearerRejection::InvalidRequest => "invalid_request",
            BearerRejection::Token(e) => e.reason(),
        }
    }

    /// The HTTP status of the answer.
    ///
    /// ```
    /// use tessera::verify::{BearerRejection, VerifyError};
    /// assert_eq!(BearerRejection::from(VerifyError::Revoked).status(), 401);
    /// ```
    #[must_use]
    pub fn status(self) -> StatusCode {
        match self {
            BearerRejection::Missing => StatusCode::UNAUTHORIZED,
            BearerRejection::InvalidRequest => StatusCode::BAD_REQUEST,
            BearerRejection::Token(e) if e.is_insufficient_scope() => StatusCode::FORBIDDEN,
            BearerRejection::Token(e) if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            BearerRejection::Token(_) => StatusCode::UNAUTHORIZED,
        }
    }

    fn challenge(self) -> Option<&'static str> {
        match self {
            BearerRejection::Missing => Some("Bearer"),
            BearerRejection::InvalidRequest => Some(r#"Bearer error="invalid_request""#),
            BearerRejection::Token(e) if e.is_insufficient_scope() => {
                Some(r#"Bearer error="insufficient_scope""#)
            }
            BearerRejection::Token(e) if e.is_unavailable() => None,
            BearerRejection::Token(_) => Some(r#"Bearer error="invalid_token""#),
        }
    }
}

impl From<VerifyError> for BearerRejection {
    fn from(e: VerifyError) -> Self {
        BearerRejection::Token(e)
    }
}

impl IntoResponse for BearerRejection {
    fn into_response(self) -> Response {
        let mut r = self.status().into_response();
        if let Some(c) = self.challenge() {
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        r
    }
}

/// The token of exactly one `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Result<&str, BearerRejection> {
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
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(BearerRejection::InvalidRequest);
    }
    Ok(token)
}

impl<S> FromRequestParts<S> for Bearer
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = BearerRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Arc::<Verifier>::from_ref(state);
        let token = bearer_token(&parts.headers)?;
        let token = verifier.verify(token).await?;
        let cert = parts
            .extensions
            .get::<ClientCertificate>()
            .map(|c| c.0.as_slice())
            .unwrap_or_default();
        token.check_certificate(cert)?;
        #[cfg(feature = "verifier-http")]
        if let Some(f) = parts.extensions.get::<Arc<super::RevocationFollower>>() {
            if f.is_revoked(&token) {
                return Err(BearerRejection::Token(VerifyError::Revoked));
            }
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
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer");

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
    }
}
