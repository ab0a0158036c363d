// One file: the axum extractor and its RFC 6750 / RFC 9449 / RFC 9728 answers,
// written by one challenge function.
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

//!
//! With [`super::VerifierBuilder::protected_resource`] every challenge
//! also names the resource's metadata (RFC 9728 §5.1,
//! `resource_metadata="…"`) and, when a token was sent, a generic
//! `error_description`; [`metadata_router`] serves that metadata, and
//! [`RequireScope`] requires scopes per route (a layer, so a route is
//! protected whether or not its handler asks for the token).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{FromRef, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{Presented, ProtectedResource, Scheme, VerifiedToken, Verifier, VerifyError};
use crate::jose::validate::ClaimError;

/// The DER client certificate of the request's TLS connection, inserted as
/// a request extension by the server's TLS layer.
///
/// ```
/// let cert = tessera::verify::ClientCertificate(vec![0x30, 0x82]);
/// assert_eq!(cert.0.len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate(pub Vec<u8>);

/// A request's verified bearer token (`.0`), and the protected resource it
/// was verified for (so that [`Bearer::require_scopes`] can point to its
/// metadata).
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
pub struct Bearer(pub VerifiedToken, Option<Arc<ProtectedResource>>);

impl From<VerifiedToken> for Bearer {
    fn from(token: VerifiedToken) -> Self {
        Bearer(token, None)
    }
}

impl Bearer {
    /// Requires every scope in `required`; the rejection names them in the
    /// challenge (`Bearer error="insufficient_scope", scope="a b"`, RFC 6750
    /// §3.1; with the resource's `resource_metadata` when it has one).
    ///
    /// # Errors
    /// [`Refusal::InsufficientScope`].
    ///
    /// ```
    /// # #[cfg(feature = "server")]
    /// # {
    /// # let (jwks, token) = tessera::verify::doc_support::fixture()?;
    /// # let v = tessera::verify::Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// use axum::response::IntoResponse;
    /// let bearer = tessera::verify::Bearer::from(rt.block_on(v.verify(&token))?);
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
            .map_err(|_| BearerRejection {
                refusal: Refusal::InsufficientScope(required.join(" ")),
                resource: self.1.clone(),
            })
    }

    /// The protected resource the token was verified for, if the verifier
    /// has one.
    #[must_use]
    pub fn protected_resource(&self) -> Option<&Arc<ProtectedResource>> {
        self.1.as_ref()
    }
}

/// Why a request was refused (RFC 6750 §3.1).
///
/// ```
/// use tessera::verify::{Refusal, VerifyError};
/// assert_eq!(Refusal::Token(VerifyError::Revoked).reason(), "revoked");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `Authorization` header: 401 with a challenge without `error`.
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

impl Refusal {
    /// A short stable code for logs and metrics.
    ///
    /// ```
    /// assert_eq!(tessera::verify::Refusal::Missing.reason(), "no_token");
    /// ```
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing => "no_token",
            Refusal::InvalidRequest => "invalid_request",
            Refusal::Token(e) => e.reason(),
            Refusal::InsufficientScope(_) => "insufficient_scope",
        }
    }
}

/// A refusal, answered per RFC 6750 §3 (and RFC 9728 §5.1 when the
/// verifier has protected resource metadata).
///
/// ```
/// use axum::response::IntoResponse;
/// use tessera::verify::{BearerRejection, Refusal, VerifyError};
/// let r = BearerRejection::from(VerifyError::InsufficientScope).into_response();
/// assert_eq!(r.status(), 403);
/// assert_eq!(r.headers()["www-authenticate"], r#"Bearer error="insufficient_scope""#);
/// let r = BearerRejection::from(Refusal::Missing).into_response();
/// assert_eq!(r.headers()["www-authenticate"], r#"Bearer, DPoP algs="ES256 ES384 EdDSA RS256 PS256""#);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{refusal}")]
pub struct BearerRejection {
    refusal: Refusal,
    resource: Option<Arc<ProtectedResource>>,
}

impl From<Refusal> for BearerRejection {
    fn from(refusal: Refusal) -> Self {
        BearerRejection {
            refusal,
            resource: None,
        }
    }
}

impl From<VerifyError> for BearerRejection {
    fn from(e: VerifyError) -> Self {
        Refusal::Token(e).into()
    }
}

/// Generic descriptions: what a client can act on, never which check
/// failed (that is [`RejectionReason`], for the server's log).
const DESC_INVALID: &str = "the access token is not valid for this resource";
const DESC_EXPIRED: &str = "the access token has expired";
const DESC_SCOPE: &str = "the access token lacks a scope this request needs";
const DESC_DPOP_PROOF: &str = "the DPoP proof is not valid for this request";
const DESC_DPOP_REQUIRED: &str = "a DPoP-bound access token is required";

impl BearerRejection {
    /// This refusal, answered for `resource` (its challenges name the
    /// resource's metadata).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use axum::response::IntoResponse;
    /// use tessera::verify::{BearerRejection, ProtectedResource, Refusal};
    /// let res = Arc::new(ProtectedResource::new("https://mcp.example.com/mcp")?);
    /// let r = BearerRejection::from(Refusal::Missing).for_resource(Some(res)).into_response();
    /// assert!(r.headers()["www-authenticate"].to_str()?.starts_with(
    ///     r#"Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn for_resource(mut self, resource: Option<Arc<ProtectedResource>>) -> Self {
        self.resource = resource;
        self
    }

    /// Why.
    #[must_use]
    pub fn refusal(&self) -> &Refusal {
        &self.refusal
    }

    /// A short stable code for logs and metrics.
    ///
    /// ```
    /// use tessera::verify::{BearerRejection, Refusal};
    /// assert_eq!(BearerRejection::from(Refusal::Missing).reason(), "no_token");
    /// ```
    #[must_use]
    pub fn reason(&self) -> &'static str {
        self.refusal.reason()
    }

    /// The HTTP status of the answer.
    ///
    /// ```
    /// use tessera::verify::{BearerRejection, VerifyError};
    /// assert_eq!(BearerRejection::from(VerifyError::Revoked).status(), 401);
    /// ```
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match &self.refusal {
            Refusal::Missing => StatusCode::UNAUTHORIZED,
            Refusal::InvalidRequest => StatusCode::BAD_REQUEST,
            Refusal::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Refusal::Token(e) if e.is_insufficient_scope() => StatusCode::FORBIDDEN,
            Refusal::Token(e) if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Token(_) => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `WWW-Authenticate` value (none for 503): the one place every
    /// challenge is written.
    fn challenge(&self) -> Option<String> {
        let resource = self.resource.as_deref();
        let dpop_required = resource.is_some_and(ProtectedResource::dpop_required);
        let metadata = resource.map(ProtectedResource::metadata_url);
        let algs = dpop_algs();
        // (DPoP scheme?, error, description, scope)
        let (dpop, error, description, scope) = match &self.refusal {
            Refusal::Missing => {
                let mut dpop_challenge = vec![("algs", algs)];
                let mut bearer = String::from("Bearer");
                if let Some(m) = &metadata {
                    dpop_challenge.push(("resource_metadata", m.clone()));
                    bearer = render("Bearer", &[("resource_metadata", m.clone())]);
                }
                let dpop_challenge = render("DPoP", &dpop_challenge);
                return Some(if dpop_required {
                    dpop_challenge
                } else {
                    format!("{bearer}, {dpop_challenge}")
                });
            }
            Refusal::InvalidRequest => (dpop_required, "invalid_request", None, None),
            Refusal::InsufficientScope(scope) => (
                dpop_required,
                "insufficient_scope",
                Some(DESC_SCOPE),
                Some(scope.as_str()),
            ),
            Refusal::Token(e) if e.is_insufficient_scope() => {
                (dpop_required, "insufficient_scope", Some(DESC_SCOPE), None)
            }
            Refusal::Token(e) if e.is_unavailable() => return None,
            Refusal::Token(VerifyError::DpopProof(_)) => {
                (true, "invalid_dpop_proof", Some(DESC_DPOP_PROOF), None)
            }
            Refusal::Token(VerifyError::SchemeMismatch | VerifyError::DpopRequired) => {
                (true, "invalid_token", Some(DESC_DPOP_REQUIRED), None)
            }
            Refusal::Token(VerifyError::Claims(ClaimError::Expired)) => {
                (dpop_required, "invalid_token", Some(DESC_EXPIRED), None)
            }
            Refusal::Token(_) => (dpop_required, "invalid_token", Some(DESC_INVALID), None),
        };
        let mut params = vec![("error", error.to_owned())];
        if let Some(s) = scope {
            params.push(("scope", s.to_owned()));
        }
        // Descriptions only in RFC 9728 mode: the bare answers stay as
        // they were (clients and docs match them exactly).
        if let (Some(d), Some(_)) = (description, &metadata) {
            params.push(("error_description", d.to_owned()));
        }
        if dpop {
            params.push(("algs", algs));
        }
        if let Some(m) = metadata {
            params.push(("resource_metadata", m));
        }
        Some(render(if dpop { "DPoP" } else { "Bearer" }, &params))
    }
}

/// `scheme k="v", k="v"`, each value a quoted-string (RFC 9110 §5.6.4):
/// `"` and `\` escaped, control characters dropped.
fn render(scheme: &str, params: &[(&str, String)]) -> String {
    let params: Vec<String> = params
        .iter()
        .map(|(k, v)| {
            let mut q = String::with_capacity(v.len() + 2);
            for c in v.chars().filter(|c| !c.is_control()) {
                if c == '"' || c == '\\' {
                    q.push('\\');
                }
                q.push(c);
            }
            format!(r#"{k}="{q}""#)
        })
        .collect();
    if params.is_empty() {
        scheme.to_owned()
    } else {
        format!("{scheme} {}", params.join(", "))
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
fn authorization(headers: &HeaderMap) -> Result<(Scheme, &str), Refusal> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(Refusal::Missing)?;
    if values.next().is_some() {
        return Err(Refusal::InvalidRequest);
    }
    let value = value.to_str().map_err(|_| Refusal::InvalidRequest)?;
    let (scheme, token) = value.split_once(' ').ok_or(Refusal::InvalidRequest)?;
    let scheme = Scheme::parse(scheme).ok_or(Refusal::InvalidRequest)?;
    if token.is_empty() || token.contains(' ') {
        return Err(Refusal::InvalidRequest);
    }
    Ok((scheme, token))
}

/// The value of at most one `DPoP` header.
fn dpop_header(headers: &HeaderMap) -> Result<Option<&str>, Refusal> {
    let mut values = headers.get_all("dpop").iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refusal::Token(VerifyError::DpopProof(
            "dpop_multiple_headers",
        )));
    }
    v.to_str()
        .map(Some)
        .map_err(|_| Refusal::Token(VerifyError::DpopProof("dpop_malformed")))
}

/// A token already verified for this request by `verifier` (by
/// [`RequireScope`] or an earlier extractor): verifying again would spend
/// the DPoP proof twice. Private, so only this module can vouch.
#[derive(Clone)]
struct Authenticated {
    verifier: Arc<Verifier>,
    bearer: Bearer,
}

/// Verifies the request's token with `verifier`: the one path every
/// extractor and layer of this module takes.
async fn authenticate(
    parts: &mut Parts,
    verifier: &Arc<Verifier>,
) -> Result<Bearer, BearerRejection> {
    if let Some(a) = parts.extensions.get::<Authenticated>() {
        if Arc::ptr_eq(&a.verifier, verifier) {
            return Ok(a.bearer.clone());
        }
    }
    let resource = verifier.protected_resource().cloned();
    let reject = |r: Refusal| BearerRejection::from(r).for_resource(resource.clone());
    let (scheme, token) = authorization(&parts.headers).map_err(reject)?;
    let mut presented = Presented::new(scheme, token, parts.method.as_str(), parts.uri.path());
    presented.dpop_proof = dpop_header(&parts.headers).map_err(reject)?;
    presented.client_certificate = parts
        .extensions
        .get::<ClientCertificate>()
        .map(|c| c.0.as_slice());
    let token = verifier
        .verify_request(&presented)
        .await
        .map_err(|e| reject(Refusal::Token(e)))?;
    #[cfg(feature = "verifier-http")]
    if let Some(f) = parts.extensions.get::<Arc<super::RevocationFollower>>() {
        f.check(&token).map_err(|e| reject(Refusal::Token(e)))?;
    }
    let bearer = Bearer(token, resource);
    parts.extensions.insert(Authenticated {
        verifier: verifier.clone(),
        bearer: bearer.clone(),
    });
    Ok(bearer)
}

impl<S> FromRequestParts<S> for Bearer
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = BearerRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Arc::<Verifier>::from_ref(state);
        authenticate(parts, &verifier).await
    }
}

/// Serves the verifier's protected resource metadata (RFC 9728) as JSON at
/// every path of [`ProtectedResource::metadata_paths`]; an empty router
/// when the verifier has none. Merge it into the resource's router (it
/// needs no token).
///
/// ```
/// # #[cfg(feature = "server")]
/// # {
/// # let (jwks, _) = tessera::verify::doc_support::fixture()?;
/// use tessera::verify::{metadata_router, ProtectedResource, Verifier};
/// let v = Verifier::with_static_jwks("https://tessera.test", "https://mcp.example.com/mcp", &jwks)?
///     .protected_resource(ProtectedResource::new("https://mcp.example.com/mcp")?)
///     .build()?;
/// let app: axum::Router = metadata_router(&v);
/// # let _ = app;
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn metadata_router<S>(verifier: &Verifier) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let mut router = axum::Router::new();
    let Some(resource) = verifier.protected_resource() else {
        return router;
    };
    let body = axum::body::Bytes::from(resource.document().to_string());
    for path in resource.metadata_paths() {
        let body = body.clone();
        router = router.route(
            &path,
            axum::routing::get(move || {
                let body = body.clone();
                async move {
                    (
                        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                        body,
                    )
                }
            }),
        );
    }
    router
}

/// A layer that requires a valid token with every one of its scopes
/// before the route runs: per-route scopes, enforced even when the handler
/// does not ask for the token (deny by default). The handler may still
/// take [`Bearer`]: it gets the token this layer verified (a DPoP proof is
/// not spent twice).
///
/// ```
/// # #[cfg(feature = "server")]
/// # {
/// # let (jwks, _) = tessera::verify::doc_support::fixture()?;
/// use std::sync::Arc;
/// use axum::{routing::{get, post}, Router};
/// use tessera::verify::{Bearer, RequireScope, Verifier};
///
/// let v = Arc::new(Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)?.build()?);
/// async fn list(b: Bearer) -> String { b.0.subject().to_owned() }
/// async fn create() -> &'static str { "created" }
/// let app: Router = Router::new()
///     .route("/tickets", get(list).layer(RequireScope::new(v.clone(), ["tickets:read"])))
///     .route("/tickets/new", post(create).layer(RequireScope::new(v.clone(), ["tickets:write"])))
///     .with_state(v);
/// # let _ = app;
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct RequireScope {
    verifier: Arc<Verifier>,
    scopes: Arc<[String]>,
}

impl RequireScope {
    /// Requires a token valid for `verifier` that holds every scope of
    /// `scopes` (none: any valid token).
    pub fn new<I, T>(verifier: Arc<Verifier>, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        RequireScope {
            verifier,
            scopes: scopes.into_iter().map(Into::into).collect(),
        }
    }

    /// Verifies the request's token and checks the scopes.
    ///
    /// # Errors
    /// The [`BearerRejection`] to answer with.
    pub async fn check(&self, parts: &mut Parts) -> Result<Bearer, BearerRejection> {
        let bearer = authenticate(parts, &self.verifier).await?;
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        bearer.require_scopes(&scopes)?;
        Ok(bearer)
    }
}

impl<S> tower_layer::Layer<S> for RequireScope {
    type Service = RequireScopeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScopeService {
            inner,
            require: self.clone(),
        }
    }
}

/// The service [`RequireScope`] wraps a route in.
#[derive(Clone, Debug)]
pub struct RequireScopeService<S> {
    inner: S,
    require: RequireScope,
}

impl<S> tower_service::Service<Request> for RequireScopeService<S>
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The clone is the one polled ready (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let require = self.require.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            if let Err(r) = require.check(&mut parts).await {
                return Ok(r.into_response());
            }
            inner.call(Request::from_parts(parts, body)).await
        })
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
        assert_eq!(e.refusal(), &Refusal::Missing);
        let r = e.into_response();
        assert_eq!(r.status(), 401);
        assert!(r.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer, DPoP algs="));

        for bad in ["Basic abc", "Bearer", "Bearer ", "Bearer a b"] {
            let e = extract(&v, &mut parts(&[bad])).await.unwrap_err();
            assert_eq!(e.refusal(), &Refusal::InvalidRequest, "{bad}");
            assert_eq!(e.status(), 400);
        }
        let two = format!("Bearer {token}");
        let e = extract(&v, &mut parts(&[&two, &two])).await.unwrap_err();
        assert_eq!(e.refusal(), &Refusal::InvalidRequest);

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
        let r = BearerRejection::from(Refusal::InsufficientScope("a:b c".into())).into_response();
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

#[cfg(all(test, feature = "server"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod resource_tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request as HttpRequest;
    use axum::routing::get;
    use tower::ServiceExt;

    const METADATA: &str = "https://api.example.com/.well-known/oauth-protected-resource";

    fn verifier(dpop: bool) -> (Arc<Verifier>, String) {
        let (jwks, token) = super::super::doc_support::fixture().unwrap();
        let resource = ProtectedResource::new("https://api.example.com")
            .unwrap()
            .scopes_supported(["tickets:read", "tickets:write", "tickets:delete"])
            .require_dpop(dpop);
        let v =
            Verifier::with_static_jwks("https://tessera.test", "https://api.example.com", &jwks)
                .unwrap()
                .protected_resource(resource)
                .build()
                .unwrap();
        (Arc::new(v), token)
    }

    fn challenge(r: &Response) -> String {
        r.headers()[WWW_AUTHENTICATE].to_str().unwrap().to_owned()
    }

    async fn send(app: &axum::Router, path: &str, auth: Option<&str>) -> Response {
        let mut b = HttpRequest::builder().uri(path);
        if let Some(a) = auth {
            b = b.header(AUTHORIZATION, a);
        }
        app.clone()
            .oneshot(b.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn app(v: &Arc<Verifier>) -> axum::Router {
        async fn who(b: Bearer) -> String {
            b.0.subject().to_owned()
        }
        async fn open() -> &'static str {
            "ran"
        }
        axum::Router::new()
            .route(
                "/read",
                get(who).layer(RequireScope::new(v.clone(), ["tickets:read"])),
            )
            .route(
                "/delete",
                get(open).layer(RequireScope::new(v.clone(), ["tickets:delete"])),
            )
            .merge(metadata_router(v))
            .with_state(v.clone())
    }

    #[tokio::test]
    async fn verify_rfc9728_challenges_name_the_metadata() {
        let (v, token) = verifier(false);
        let app = app(&v);
        // No token: 401, both schemes offered, each pointing to the metadata.
        let r = send(&app, "/read", None).await;
        assert_eq!(r.status(), 401);
        assert_eq!(
            challenge(&r),
            format!(
                r#"Bearer resource_metadata="{METADATA}", DPoP algs="ES256 ES384 EdDSA RS256 PS256", resource_metadata="{METADATA}""#
            )
        );
        // A token that is not valid: invalid_token, a generic description.
        let r = send(&app, "/read", Some("Bearer a.b.c")).await;
        assert_eq!(r.status(), 401);
        assert_eq!(
            challenge(&r),
            format!(
                r#"Bearer error="invalid_token", error_description="the access token is not valid for this resource", resource_metadata="{METADATA}""#
            )
        );
        assert_eq!(
            r.extensions().get::<RejectionReason>(),
            Some(&RejectionReason("token_bad_base64"))
        );
        // The right scope: the handler runs with the token the layer verified.
        let auth = format!("Bearer {token}");
        let r = send(&app, "/read", Some(&auth)).await;
        assert_eq!(r.status(), 200);
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"spiffe://example.org/agent/demo");
        // Without the route's scope: 403 naming it, and the handler never runs.
        let r = send(&app, "/delete", Some(&auth)).await;
        assert_eq!(r.status(), 403);
        assert_eq!(
            challenge(&r),
            format!(
                r#"Bearer error="insufficient_scope", scope="tickets:delete", error_description="the access token lacks a scope this request needs", resource_metadata="{METADATA}""#
            )
        );
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        assert!(body.is_empty());
        // A malformed header: 400 invalid_request, still pointing to the metadata.
        let r = send(&app, "/read", Some("Basic x")).await;
        assert_eq!(r.status(), 400);
        assert_eq!(
            challenge(&r),
            format!(r#"Bearer error="invalid_request", resource_metadata="{METADATA}""#)
        );
    }

    #[tokio::test]
    async fn verify_rfc9728_metadata_document_is_served() {
        let (v, _) = verifier(false);
        let r = send(&app(&v), "/.well-known/oauth-protected-resource", None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(r.into_body(), 64 * 1024)
            .await
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["resource"], "https://api.example.com");
        assert_eq!(
            doc["authorization_servers"],
            serde_json::json!(["https://tessera.test"])
        );
        assert_eq!(
            doc["scopes_supported"],
            serde_json::json!(["tickets:read", "tickets:write", "tickets:delete"])
        );
        assert_eq!(
            doc["bearer_methods_supported"],
            serde_json::json!(["header"])
        );
        assert!(doc.get("dpop_bound_access_tokens_required").is_none());

        // A resource with a path: the suffixed path (RFC 9728 §3.1) and the bare one.
        let (jwks, _) = super::super::doc_support::fixture().unwrap();
        let v = Verifier::with_static_jwks("https://tessera.test", "https://h.test/mcp", &jwks)
            .unwrap()
            .protected_resource(ProtectedResource::new("https://h.test/mcp").unwrap())
            .build()
            .unwrap();
        let app: axum::Router = metadata_router(&v);
        for path in [
            "/.well-known/oauth-protected-resource/mcp",
            "/.well-known/oauth-protected-resource",
        ] {
            let r = send(&app, path, None).await;
            assert_eq!(r.status(), 200, "{path}");
            let body = axum::body::to_bytes(r.into_body(), 64 * 1024)
                .await
                .unwrap();
            let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(doc["resource"], "https://h.test/mcp");
        }
        // Without metadata, nothing is served.
        let (jwks, _) = super::super::doc_support::fixture().unwrap();
        let plain = Verifier::with_static_jwks("https://tessera.test", "https://h.test", &jwks)
            .unwrap()
            .build()
            .unwrap();
        let app: axum::Router = metadata_router(&plain);
        let r = send(&app, "/.well-known/oauth-protected-resource", None).await;
        assert_eq!(r.status(), 404);
    }

    #[tokio::test]
    async fn verify_rfc9728_dpop_required_refuses_bearer_tokens() {
        let (v, token) = verifier(true);
        let app = app(&v);
        let r = send(&app, "/read", None).await;
        assert_eq!(r.status(), 401);
        assert_eq!(
            challenge(&r),
            format!(r#"DPoP algs="ES256 ES384 EdDSA RS256 PS256", resource_metadata="{METADATA}""#)
        );
        // The fixture token is not DPoP-bound.
        let r = send(&app, "/read", Some(&format!("Bearer {token}"))).await;
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.extensions().get::<RejectionReason>(),
            Some(&RejectionReason("dpop_required"))
        );
        assert!(challenge(&r).starts_with(
            r#"DPoP error="invalid_token", error_description="a DPoP-bound access token is required", algs=""#
        ));
        let r = send(&app, "/.well-known/oauth-protected-resource", None).await;
        let body = axum::body::to_bytes(r.into_body(), 64 * 1024)
            .await
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["dpop_bound_access_tokens_required"], true);
        assert_eq!(doc["dpop_signing_alg_values_supported"][0], "ES256");
    }

    #[test]
    fn verify_challenge_values_are_quoted_strings() {
        let r =
            BearerRejection::from(Refusal::InsufficientScope("a\"b\\c\nd".into())).into_response();
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="insufficient_scope", scope="a\"b\\cd""#
        );
    }
}
