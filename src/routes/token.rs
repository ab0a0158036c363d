//! `POST /token` (RFC 8693 token exchange, and `client_credentials` over mTLS).

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::app::{AppState, Snapshot};
use crate::exchange::outcome::{self, Asked};
use crate::exchange::{DpopReason, ExchangeError, Issued, Peer};
use crate::oauth::error::{no_store, OAuthError};
use crate::oauth::request::{check_content_type, parse_form, token_request, RequestError};
use crate::oauth::ErrorCode;

enum Refusal {
    Request(RequestError),
    Exchange(ExchangeError),
}

/// The `/token` handler: extract, run the exchange, map the outcome (its
/// audit records and metrics are `exchange::outcome`'s).
pub async fn token(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    let client = peer_name(&peer);
    let mut asked = Asked::default();
    // One configuration for the whole request, even if a reload lands now.
    let snap = app.snapshot();
    // Boxed: the exchange's state is kilobytes, and the handler's future is
    // moved (copied) while axum and tower box and wrap it.
    let result = Box::pin(run(&snap, &peer, &uri, &headers, &body, &mut asked)).await;
    // No token leaves before its `issued` record is written (fail closed).
    let result = match result {
        Ok(issued) => match outcome::record_issued(
            &app.auditor,
            &issued,
            &client,
            ErrorCode::TemporarilyUnavailable.as_str(),
        )
        .await
        {
            Ok(()) => Ok(issued),
            Err(e) => Err(Refusal::Exchange(ExchangeError::AuditUnavailable(
                e.to_string(),
            ))),
        },
        Err(r) => Err(r),
    };
    match result {
        Ok(issued) => {
            outcome::count_issued(started.elapsed());
            let mut resp = success(&issued);
            add_nonce(&snap, &mut resp);
            resp
        }
        Err(refusal) => {
            let (err, reason, detail) = match &refusal {
                Refusal::Request(e) => (OAuthError::from(e), e.reason, String::new()),
                Refusal::Exchange(e) => (OAuthError::from(e), e.reason(), e.to_string()),
            };
            let refused = outcome::Refused {
                reason,
                error: err.code.as_str(),
                unavailable: err.code == ErrorCode::TemporarilyUnavailable,
                detail,
                approval_pending: matches!(
                    &refusal,
                    Refusal::Exchange(ExchangeError::ApprovalPending { .. })
                ),
                // A withheld token was recorded by `record_issued`.
                audited: matches!(
                    &refusal,
                    Refusal::Exchange(ExchangeError::AuditUnavailable(_))
                ),
            };
            outcome::record_refused(&app.auditor, refused, &asked, &client, started.elapsed())
                .await;
            let dpop = err.code == ErrorCode::UseDpopNonce;
            let mut resp = err.into_response();
            if dpop {
                add_nonce(&snap, &mut resp);
            }
            resp
        }
    }
}

/// `DPoP-Nonce` on every `/token` answer when nonces are required.
fn add_nonce(snap: &Snapshot, resp: &mut Response) {
    if let Some(n) = snap.exchanger.dpop_nonce() {
        if let Ok(v) = axum::http::HeaderValue::from_str(&n) {
            resp.headers_mut().insert("dpop-nonce", v);
        }
    }
}

async fn run(
    snap: &Snapshot,
    peer: &Peer,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    asked: &mut Asked,
) -> Result<Issued, Refusal> {
    let req_err = |code, reason| Refusal::Request(RequestError { code, reason });
    use crate::oauth::ErrorCode::InvalidRequest;
    // RFC 6749 §3.2: parameters travel in the body only.
    if uri.query().is_some() {
        return Err(req_err(InvalidRequest, "parameters_in_query"));
    }
    // Client authentication is by TLS only; any other mechanism alongside it
    // is refused rather than silently ignored (RFC 6749 §2.3).
    if headers.contains_key(header::AUTHORIZATION) {
        return Err(req_err(
            InvalidRequest,
            "authorization_header_not_supported",
        ));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    check_content_type(ct).map_err(Refusal::Request)?;
    let form = parse_form(body).map_err(Refusal::Request)?;
    // OpenID CIBA (poll mode): the agent redeems a person's consent.
    if form
        .get("grant_type")
        .is_some_and(|g| g.len() == 1 && g[0] == crate::exchange::ciba::GRANT_CIBA)
    {
        return snap
            .exchanger
            .ciba_redeem(
                crate::oauth::request::ciba_poll(&form),
                peer,
                &mut asked.who,
            )
            .await
            .map_err(Refusal::Exchange);
    }
    let mut req =
        token_request(&form, snap.config.limits.max_token_bytes).map_err(Refusal::Request)?;
    asked.audience = req.target.as_str().to_string();
    asked.scopes = req.scope.to_string();
    asked.task = req.task.clone().unwrap_or_default();
    let mut proofs = headers.get_all("dpop").iter();
    if let Some(p) = proofs.next() {
        let bad = || Refusal::Exchange(ExchangeError::DpopProof(DpopReason::HeaderMalformed));
        if proofs.next().is_some() {
            return Err(bad());
        }
        req.dpop = Some(p.to_str().map_err(|_| bad())?.to_string());
    }
    snap.exchanger
        .exchange_noting(req, peer, &mut asked.who)
        .await
        .map_err(Refusal::Exchange)
}

fn success(i: &Issued) -> Response {
    let mut resp = (
        [(header::CONTENT_TYPE, "application/json")],
        success_body(i),
    )
        .into_response();
    no_store(&mut resp);
    resp
}

/// The RFC 8693 §2.2.1 answer as JSON. The token is a compact JWS
/// (base64url and dots), which JSON needs no escaping for: it is copied as
/// is instead of escaped byte by byte (about 1% of an exchange's CPU). Any
/// other string goes through serde_json.
fn success_body(i: &Issued) -> Vec<u8> {
    use std::io::Write as _;
    /// Whether `s` is all base64url and `.` (a compact JWS), which JSON
    /// copies as is. No early exit: the compiler checks the token's
    /// hundreds of bytes 16 or 32 at a time.
    fn jws_plain(s: &[u8]) -> bool {
        s.iter().fold(true, |ok, &b| {
            let alpha = (b | 0x20).wrapping_sub(b'a') < 26;
            let digit = b.wrapping_sub(b'0') < 10;
            ok & (alpha | digit | (b == b'-') | (b == b'_') | (b == b'.'))
        })
    }
    fn string(out: &mut Vec<u8>, s: &str) {
        if jws_plain(s.as_bytes()) {
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        } else if serde_json::to_writer(&mut *out, s).is_err() {
            // Writing to a Vec cannot fail; keep the JSON well-formed anyway.
            out.extend_from_slice(b"\"\"");
        }
    }
    let mut out = Vec::with_capacity(i.access_token.len() + i.scope.len() + 192);
    out.extend_from_slice(b"{\"access_token\":");
    string(&mut out, &i.access_token);
    out.extend_from_slice(b",\"issued_token_type\":");
    string(&mut out, i.issued_token_type.as_str());
    out.extend_from_slice(b",\"token_type\":");
    string(&mut out, i.token_type);
    // Writing to a Vec cannot fail.
    let _ = write!(out, ",\"expires_in\":{},\"scope\":", i.expires_in);
    string(&mut out, &i.scope);
    out.push(b'}');
    out
}

/// The caller's identity for the audit record: the certificate's SPIFFE ID
/// or DNS name, `anonymous`, or why the certificate is not an identity.
pub fn peer_name(p: &Peer) -> String {
    match p {
        Peer::Anonymous => "anonymous".into(),
        Peer::Identified(p) => p.subject.clone(),
        Peer::Unusable(r) => format!("unusable-certificate:{r}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::request::TokenType;

    fn issued(token: &str, scope: &str, typ: TokenType) -> Issued {
        let claims: crate::mint::AccessTokenClaims = serde_json::from_value(serde_json::json!({
            "iss": "https://tessera.test", "sub": "spiffe://t/a", "aud": "api",
            "exp": 2, "iat": 1, "nbf": 1, "jti": "j", "client_id": "c",
            "scope": scope, "txn": "t",
        }))
        .expect("claims");
        Issued {
            access_token: token.into(),
            issued_token_type: typ,
            token_type: "Bearer",
            expires_in: 300,
            scope: scope.into(),
            claims,
            policy: String::new(),
            approval: None,
        }
    }

    /// The hand-written answer is the JSON serde would write, for a real
    /// compact JWS and for strings that need escaping (were one ever to
    /// get here): quotes, backslashes, controls, non-ASCII.
    #[test]
    fn the_success_body_is_the_json_of_the_answer() {
        let cases = [
            (
                "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln-_",
                "read:orders write",
            ),
            ("a\"b\\c\u{1}", "s\u{e9}\n\"x\""),
            ("", ""),
            ("</script>", "\u{2028}"),
        ];
        for (token, scope) in cases {
            for typ in [TokenType::AccessToken, TokenType::Jwt] {
                let i = issued(token, scope, typ);
                let body = success_body(&i);
                let got: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
                let want = serde_json::json!({
                    "access_token": token,
                    "issued_token_type": typ.as_str(),
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": scope,
                });
                assert_eq!(got, want, "{}", String::from_utf8_lossy(&body));
            }
        }
        // every single byte, in a token of the usual length
        for b in 1..=0x7fu8 {
            let token = format!("{}{}", "eyJ0".repeat(100), char::from(b));
            let got: serde_json::Value =
                serde_json::from_slice(&success_body(&issued(&token, "s", TokenType::Jwt)))
                    .expect("valid JSON");
            assert_eq!(got["access_token"], token.as_str(), "byte {b:#x}");
        }
        let resp = success(&issued("a.b.c", "s", TokenType::AccessToken));
        let h = resp.headers();
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(h[header::PRAGMA], "no-cache");
    }
}
