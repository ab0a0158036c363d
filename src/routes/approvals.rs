// One file: the approval pages' handlers and their HTML templates, which must
// escape in one place (`text::html`).
//! The approval web pages (`/approvals…`): HTTP in and out only. A human
//! signs in through `[approvals] login_issuer`, sees the approvals their
//! policies give them (both sequenced in
//! [`crate::exchange::approver_session`]), and decides one through
//! [`crate::exchange::approval::decide`], which owns who may decide. Here:
//! query, form and cookie parsing, the CSRF and `Origin` checks, and the
//! HTML.
//!
//! Page security: server-rendered HTML without script, a strict CSP with
//! `frame-ancestors 'none'`, `Cache-Control: no-store`, no referrer to other sites, every
//! workload or IdP value through [`crate::text::html`], a CSRF token from
//! the session plus an `Origin` check on every POST, a `__Host-` session
//! cookie whose id is new at each sign-in and whose record lives in the
//! store (sign-out ends it on every replica), and no caller-chosen redirect
//! target anywhere (only an approval id, checked to be a UUID).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::app::{AppState, Snapshot};
use crate::exchange::approval::{self, Approver, DecideError, NotAllowedReason};
use crate::exchange::approver_session::{ApproverSessions, Session, SignInRefusal, Unavailable};
use crate::identity::login;
use crate::store::{Approval, ApprovalState};
use crate::text::html;

/// The session cookie (host-only, Secure, HttpOnly, SameSite=Strict).
pub const SESSION_COOKIE: &str = "__Host-tessera_approver";
/// The same session id in a `SameSite=Lax` cookie, read by the GET pages
/// only: after the IdP's redirect (a navigation started on another site)
/// browsers withhold Strict cookies, and the list would send the human back
/// to sign in for ever. POSTs read the Strict cookie only.
pub const NAV_COOKIE: &str = "__Host-tessera_approver_nav";
/// The cookie binding a sign-in attempt to the browser that started it
/// (SameSite=Lax: it must come back on the IdP's redirect).
pub const LOGIN_COOKIE: &str = "__Host-tessera_login";
/// How long a sign-in attempt may take at the IdP.
pub use crate::exchange::approver_session::LOGIN_TTL_SECS;
/// Longest reason a human may give.
pub const MAX_REASON_LEN: usize = 1024;
/// Longest `code` / `state` accepted on the callback.
const MAX_PARAM_LEN: usize = 2048;

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b;background:#f6f6f4}\
header{display:flex;flex-wrap:wrap;gap:.5rem;align-items:center;justify-content:space-between;\
padding:.75rem 1rem;background:#20313f;color:#fff}header a{color:#fff}\
header form{margin:0}main{max-width:46rem;margin:0 auto;padding:1rem}\
.card{background:#fff;border:1px solid #ddd;border-radius:.5rem;padding:.75rem 1rem;margin:.75rem 0}\
.card h2{font-size:1.05rem;margin:.2rem 0 .5rem}dl{display:grid;grid-template-columns:max-content 1fr;\
gap:.25rem .75rem;margin:0}dt{font-weight:600;color:#444}dd{margin:0;overflow-wrap:anywhere}\
code,pre{font-family:ui-monospace,monospace;white-space:pre-wrap;overflow-wrap:anywhere}\
.why{background:#fff4d6;border-left:4px solid #d49b00;padding:.5rem .75rem}\
textarea{width:100%;box-sizing:border-box;min-height:4rem;font:inherit}\
.actions{display:flex;gap:.75rem;margin-top:.75rem}button{font:inherit;padding:.6rem 1.2rem;\
border-radius:.4rem;border:1px solid #888;background:#fff}button.approve{background:#1f7a3a;\
color:#fff;border-color:#1f7a3a}button.deny{background:#a32020;color:#fff;border-color:#a32020}\
.muted{color:#666}.state{font-weight:600}@media (max-width:30rem){dl{grid-template-columns:1fr}\
dt{margin-top:.4rem}}";

/// A page response with the pages' security headers.
fn page(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    secure_headers(r.headers_mut(), "text/html; charset=utf-8");
    r
}

fn secure_headers(h: &mut HeaderMap, content_type: &'static str) {
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// `303 See Other` to a path of this site (never a caller-chosen URL).
fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(r.headers_mut(), "text/plain; charset=utf-8");
    r
}

/// The HTML document around `main`; with a session, the header shows who
/// is signed in and a sign-out button.
fn shell(title: &str, session: Option<&Session>, main: &str) -> String {
    let who = match session {
        Some(s) => format!(
            "<span>Signed in as <strong>{}</strong> <span class=\"muted\">({})</span></span>\
             <form method=\"post\" action=\"/approvals/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            html(&s.human.name),
            html(&s.human.idp),
            html(&s.csrf)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Tessera approvals</title>\
         <link rel=\"stylesheet\" href=\"/approvals/style.css\"></head><body>\
         <header><a href=\"/approvals\"><strong>Tessera approvals</strong></a>{who}</header>\
         <main>{main}</main></body></html>",
        html(title)
    )
}

fn message(status: StatusCode, title: &str, text: &str, session: Option<&Session>) -> Response {
    page(
        status,
        shell(
            title,
            session,
            &format!("<h1>{}</h1><p>{}</p>", html(title), html(text)),
        ),
    )
}

fn not_found(session: Option<&Session>) -> Response {
    message(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such approval for you to decide.",
        session,
    )
}

fn unavailable(_: Unavailable) -> Response {
    message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "Tessera cannot reach its store or the identity provider right now. Nothing was \
         decided; try again in a minute.",
        None,
    )
}

/// The value of cookie `name`.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

fn set_cookie(r: &mut Response, name: &str, value: &str, max_age: u64, same_site: &str) {
    let c = format!(
        "{name}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite={same_site}"
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Form or query pairs of `raw` (`application/x-www-form-urlencoded`).
fn pairs(raw: &str) -> Vec<(String, String)> {
    match reqwest::Url::parse(&format!("https://x.invalid/?{raw}")) {
        Ok(u) => u.query_pairs().into_owned().collect(),
        Err(_) => Vec::new(),
    }
}

fn param<'p>(p: &'p [(String, String)], name: &str) -> Option<&'p str> {
    let mut it = p.iter().filter(|(k, _)| k == name);
    match (it.next(), it.next()) {
        // A repeated parameter is ambiguous: refused as absent.
        (Some((_, v)), None) => Some(v.as_str()),
        _ => None,
    }
}

/// The approver sessions of this request: the stores, the audit trail, the
/// snapshot's login client (`None`, so a 404, when the pages are off) and now.
fn sessions<'a>(app: &'a AppState, snap: &'a Snapshot) -> Option<ApproverSessions<'a>> {
    Some(ApproverSessions {
        stores: &app.stores,
        auditor: &app.auditor,
        rules: snap.config.approval_rules(),
        exchanger: &snap.exchanger,
        login: snap.login.as_deref()?,
        now: app.clock.now(),
    })
}

/// Which cookies may name the session: a page (GET) also reads the Lax
/// companion; a change (POST) only the Strict cookie.
#[derive(Clone, Copy, PartialEq, Eq)]
enum For {
    Page,
    Change,
}

/// The signed-in session, if the cookie names a live one.
async fn session(
    pages: &ApproverSessions<'_>,
    headers: &HeaderMap,
    purpose: For,
) -> Result<Option<Session>, Response> {
    let id = match purpose {
        For::Change => cookie(headers, SESSION_COOKIE),
        For::Page => cookie(headers, SESSION_COOKIE).or_else(|| cookie(headers, NAV_COOKIE)),
    };
    match id {
        Some(id) => pages.session(id).await.map_err(unavailable),
        None => Ok(None),
    }
}

/// The origin (`scheme://host[:port]`) of the broker's public URL.
fn own_origin(snap: &Snapshot) -> Option<String> {
    reqwest::Url::parse(&snap.config.server.issuer)
        .ok()
        .map(|u| u.origin().ascii_serialization())
}

/// A POST is from this site: its `Origin` is the broker's own.
fn same_origin(snap: &Snapshot, headers: &HeaderMap) -> bool {
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        own_origin(snap),
    ) {
        (Some(o), Some(own)) => o == own,
        _ => false,
    }
}

fn forbidden(text: &str, session: Option<&Session>) -> Response {
    message(StatusCode::FORBIDDEN, "Forbidden", text, session)
}

fn redirect_uri(snap: &Snapshot) -> String {
    format!("{}/approvals/callback", snap.config.server.issuer)
}

/// `GET /approvals/style.css`.
pub async fn style() -> Response {
    let mut r = STYLE.into_response();
    secure_headers(r.headers_mut(), "text/css; charset=utf-8");
    r
}

/// `GET /approvals/login[?id=UUID][&reauth=1]`: starts a sign-in at the
/// IdP (`303`), binding it to this browser.
pub async fn login(State(app): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let snap = app.snapshot();
    let Some(pages) = sessions(&app, &snap) else {
        return crate::routes::metadata::not_found().await;
    };
    let q = pairs(q.as_deref().unwrap_or(""));
    // A sign-in that is too old to decide: the IdP must authenticate again.
    let reauth = param(&q, "reauth") == Some("1");
    match pages
        .begin_sign_in(&redirect_uri(&snap), param(&q, "id"), reauth)
        .await
    {
        Ok(started) => {
            let mut r = see_other(started.url.as_str());
            set_cookie(
                &mut r,
                LOGIN_COOKIE,
                &started.browser,
                LOGIN_TTL_SECS,
                "Lax",
            );
            r
        }
        Err(e) => unavailable(e),
    }
}

/// `GET /approvals/callback?code&state`: the IdP's answer. Exchanges the
/// code, validates the ID token, applies the MFA and freshness rules, and
/// starts a NEW session (`303` to the list, or to the approval that asked
/// for the sign-in).
pub async fn callback(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let snap = app.snapshot();
    let Some(pages) = sessions(&app, &snap) else {
        return crate::routes::metadata::not_found().await;
    };
    let q = pairs(q.as_deref().unwrap_or(""));
    let restart = "<p><a href=\"/approvals/login\">Sign in again</a></p>";
    let bad = |text: &str| {
        page(
            StatusCode::BAD_REQUEST,
            shell(
                "Sign-in failed",
                None,
                &format!("<h1>Sign-in failed</h1><p>{}</p>{restart}", html(text)),
            ),
        )
    };
    let (Some(code), Some(state)) = (param(&q, "code"), param(&q, "state")) else {
        return bad("The identity provider did not sign you in.");
    };
    if code.len() > MAX_PARAM_LEN || state.len() > MAX_PARAM_LEN {
        return bad("The sign-in answer is malformed.");
    }
    let signed_in = pages
        .finish_sign_in(
            &redirect_uri(&snap),
            code,
            state,
            cookie(&headers, LOGIN_COOKIE),
            cookie(&headers, SESSION_COOKIE).or_else(|| cookie(&headers, NAV_COOKIE)),
        )
        .await;
    let new = match signed_in {
        Ok(s) => s,
        Err(SignInRefusal::Expired) => return bad("This sign-in has expired or was already used."),
        Err(SignInRefusal::OtherBrowser) => {
            return bad("This sign-in was started in another browser.")
        }
        Err(SignInRefusal::CodeRefused) => {
            return bad("The identity provider refused the sign-in.")
        }
        Err(SignInRefusal::IdTokenRefused) => {
            return bad("The identity provider's answer was not acceptable.")
        }
        Err(SignInRefusal::MfaRequired(name)) => {
            return page(
                StatusCode::FORBIDDEN,
                shell(
                    "Multi-factor sign-in required",
                    None,
                    &format!(
                        "<h1>Multi-factor sign-in required</h1><p>{} signed in without a second \
                         factor. Approvals need a multi-factor sign-in at your identity provider.</p>\
                         {restart}",
                        html(&name)
                    ),
                ),
            )
        }
        Err(SignInRefusal::Unavailable(e)) => return unavailable(e),
    };
    let to = match &new.then {
        Some(id) => format!("/approvals/{id}"),
        None => "/approvals".to_string(),
    };
    let mut r = see_other(&to);
    set_cookie(&mut r, SESSION_COOKIE, &new.session_id, new.ttl, "Strict");
    set_cookie(&mut r, NAV_COOKIE, &new.session_id, new.ttl, "Lax");
    set_cookie(&mut r, LOGIN_COOKIE, "", 0, "Lax");
    r
}

fn time_left(a: &Approval, now: u64) -> String {
    let left = a.expires_at.saturating_sub(now);
    if left == 0 {
        "expired".into()
    } else {
        format!("{}m {:02}s", left / 60, left % 60)
    }
}

/// Why this request needs a human.
fn why(pages: &ApproverSessions<'_>, a: &Approval) -> String {
    if let Some(c) = &a.ciba {
        return format!(
            "{} asks for your consent to act on your behalf (OpenID CIBA){}",
            html(&a.requester),
            c.binding_message
                .as_deref()
                .map(|m| format!(". Its message: <strong>{}</strong>", html(m)))
                .unwrap_or_default()
        );
    }
    let approval_scopes = pages.approval_scopes(a);
    if approval_scopes.is_empty() {
        "The anomaly guard asked for a human decision on this request (unusual rate or a new \
         audience for this identity)."
            .into()
    } else {
        format!(
            "Policy {} requires a human decision for: {}.",
            html(&a.policy),
            approval_scopes
                .iter()
                .map(|s| format!("<code>{}</code>", html(s)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// `GET /approvals`: the pending approvals this human may decide.
pub async fn list(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let snap = app.snapshot();
    let Some(pages) = sessions(&app, &snap) else {
        return crate::routes::metadata::not_found().await;
    };
    let s = match session(&pages, &headers, For::Page).await {
        Ok(Some(s)) => s,
        Ok(None) => return see_other("/approvals/login"),
        Err(r) => return r,
    };
    let now = pages.now;
    let mine = match pages.pending_for(&s.human).await {
        Ok(l) => l,
        Err(e) => return unavailable(e),
    };
    let mut main = String::from("<h1>Waiting for your decision</h1>");
    if mine.is_empty() {
        main.push_str("<p class=\"muted\">Nothing is waiting for you.</p>");
    }
    for a in mine {
        main.push_str(&format!(
            "<div class=\"card\"><h2><a href=\"/approvals/{id}\">{scopes}</a></h2><dl>\
             <dt>Requester</dt><dd>{req}</dd><dt>Audience</dt><dd>{aud}</dd>\
             <dt>Task</dt><dd>{task}</dd><dt>Policy</dt><dd>{pol}</dd>\
             <dt>Time left</dt><dd>{left}</dd></dl></div>",
            id = html(&a.id),
            scopes = html(&a.scopes.join(" ")),
            req = html(&a.requester),
            aud = html(&a.audience),
            task = html(a.task.as_deref().unwrap_or("-")),
            pol = html(&a.policy),
            left = time_left(&a, now),
        ));
    }
    page(StatusCode::OK, shell("Approvals", Some(&s), &main))
}

/// One `authorization_details` entry as fields.
fn detail_entry(e: &Value) -> String {
    match e {
        Value::Object(m) => {
            let mut out = String::from("<dl>");
            for (k, v) in m {
                let shown = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out.push_str(&format!(
                    "<dt>{}</dt><dd><code>{}</code></dd>",
                    html(k),
                    html(&shown)
                ));
            }
            out.push_str("</dl>");
            out
        }
        other => format!("<pre>{}</pre>", html(&other.to_string())),
    }
}

/// `GET /approvals/{id}`: one approval in full, with the decision form.
pub async fn detail(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let snap = app.snapshot();
    let Some(pages) = sessions(&app, &snap) else {
        return crate::routes::metadata::not_found().await;
    };
    let s = match session(&pages, &headers, For::Page).await {
        Ok(Some(s)) => s,
        Ok(None) if uuid::Uuid::parse_str(&id).is_ok() => {
            return see_other(&format!("/approvals/login?id={id}"))
        }
        Ok(None) => return see_other("/approvals/login"),
        Err(r) => return r,
    };
    let now = pages.now;
    let a = match pages.approval_for(&s.human, &id).await {
        Ok(Some(a)) => a,
        Ok(None) => return not_found(Some(&s)),
        Err(e) => return unavailable(e),
    };
    let details = match &a.authorization_details {
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, e)| {
                format!(
                    "<div class=\"card\"><h2>Action {}</h2>{}</div>",
                    i + 1,
                    detail_entry(e)
                )
            })
            .collect::<String>(),
        Some(other) => detail_entry(other),
        None => "<p class=\"muted\">No authorization_details.</p>".into(),
    };
    let actors = if a.actors.is_empty() {
        "-".to_string()
    } else {
        a.actors
            .iter()
            .map(|x| html(x))
            .collect::<Vec<_>>()
            .join(" ← ")
    };
    let decision = if a.state == ApprovalState::Pending && a.expires_at > now {
        if pages.may_decide_now(&s.human) {
            format!(
                "<form method=\"post\" action=\"/approvals/{id}\" class=\"card\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <label for=\"reason\">Reason (recorded in the audit trail)</label>\
                 <textarea id=\"reason\" name=\"reason\" maxlength=\"{MAX_REASON_LEN}\"></textarea>\
                 <div class=\"actions\"><button class=\"approve\" type=\"submit\" name=\"decision\" \
                 value=\"approve\">Approve</button><button class=\"deny\" type=\"submit\" \
                 name=\"decision\" value=\"deny\">Deny</button></div></form>",
                id = html(&a.id),
                csrf = html(&s.csrf)
            )
        } else {
            format!(
                "<p class=\"why\">Your sign-in is older than allowed for a decision. \
                 <a href=\"/approvals/login?reauth=1&amp;id={}\">Sign in again</a> to decide.</p>",
                html(&a.id)
            )
        }
    } else {
        format!(
            "<p class=\"state\">{}{}</p>",
            html(
                if a.expires_at <= now && a.state == ApprovalState::Pending {
                    "expired"
                } else {
                    a.state.as_str()
                }
            ),
            a.decided_by
                .as_deref()
                .map(|d| format!(" by {}", html(d)))
                .unwrap_or_default()
        )
    };
    let main = format!(
        "<h1>Approval request</h1><p class=\"why\">{why}</p><div class=\"card\"><dl>\
         <dt>Requester</dt><dd>{req}</dd><dt>On behalf of</dt><dd>{sub}</dd>\
         <dt>Actors (act chain)</dt><dd>{actors}</dd><dt>Owner</dt><dd>{owner}</dd>\
         <dt>Policy</dt><dd>{pol}</dd><dt>Task</dt><dd><code>{task}</code></dd>\
         <dt>Scopes</dt><dd><code>{scopes}</code></dd><dt>Audience</dt><dd>{aud}</dd>\
         <dt>Asked</dt><dd>{age}s ago</dd><dt>Time left</dt><dd>{left}</dd>\
         <dt>Id</dt><dd><code>{id}</code></dd></dl></div>\
         <h2>Exact action (authorization_details)</h2>{details}{decision}",
        why = why(&pages, &a),
        req = html(&a.requester),
        sub = html(&a.subject),
        owner = html(a.owner.as_deref().unwrap_or("-")),
        pol = html(&a.policy),
        task = html(a.task.as_deref().unwrap_or("-")),
        scopes = html(&a.scopes.join(" ")),
        aud = html(&a.audience),
        age = now.saturating_sub(a.created_at),
        left = time_left(&a, now),
        id = html(&a.id),
    );
    page(StatusCode::OK, shell("Approval request", Some(&s), &main))
}

/// `POST /approvals/{id}` (form `decision`, `reason`, `csrf`): decides as
/// the signed-in human; `303` back to the list.
pub async fn decide(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let snap = app.snapshot();
    let Some(pages) = sessions(&app, &snap) else {
        return crate::routes::metadata::not_found().await;
    };
    if !same_origin(&snap, &headers) {
        return forbidden("This form was not sent from Tessera's own pages.", None);
    }
    let s = match session(&pages, &headers, For::Change).await {
        Ok(Some(s)) => s,
        Ok(None) => return forbidden("You are not signed in.", None),
        Err(r) => return r,
    };
    let form = pairs(std::str::from_utf8(&body).unwrap_or(""));
    let csrf_ok = param(&form, "csrf").is_some_and(|c| login::constant_time_eq(c, &s.csrf));
    if !csrf_ok {
        return forbidden(
            "This form is stale or was not sent from Tessera's own pages.",
            Some(&s),
        );
    }
    let approve = match param(&form, "decision") {
        Some("approve") => true,
        Some("deny") => false,
        _ => {
            return message(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "Choose approve or deny.",
                Some(&s),
            )
        }
    };
    let reason = param(&form, "reason")
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if reason.is_some_and(|r| r.len() > MAX_REASON_LEN || r.chars().any(char::is_control)) {
        return message(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The reason is too long or holds control characters.",
            Some(&s),
        );
    }
    let who = Approver::Human(s.human.clone());
    match approval::decide(&app.deciding(&snap), &who, &id, approve, reason).await {
        Ok(_) => see_other("/approvals"),
        Err(DecideError::NotFound(_)) => not_found(Some(&s)),
        Err(DecideError::NotAllowed(NotAllowedReason::AuthTooOld)) => page(
            StatusCode::FORBIDDEN,
            shell(
                "Sign in again",
                Some(&s),
                &format!(
                    "<h1>Sign in again</h1><p>Your sign-in is older than allowed for a \
                     decision; nothing was decided.</p><p><a href=\"/approvals/login?reauth=1&amp;id={}\">\
                     Sign in again</a></p>",
                    html(&id)
                ),
            ),
        ),
        Err(DecideError::NotAllowed(_)) => {
            forbidden("You may not decide this approval. Nothing was decided.", Some(&s))
        }
        Err(DecideError::NotApplicable(_)) => message(
            StatusCode::CONFLICT,
            "Already decided",
            "This approval is no longer pending (decided or expired). Nothing was changed.",
            Some(&s),
        ),
        Err(DecideError::Store(_)) | Err(DecideError::AuditBefore(_)) => unavailable(Unavailable),
        Err(DecideError::AuditRefusal(_)) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Audit unavailable",
            "Nothing was decided, but the refusal could not be audited.",
            Some(&s),
        ),
    }
}

/// `POST /approvals/logout` (form `csrf`): ends the session in the store.
pub async fn logout(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let snap = app.snapshot();
    let Some(pages) = sessions(&app, &snap) else {
        return crate::routes::metadata::not_found().await;
    };
    if !same_origin(&snap, &headers) {
        return forbidden("This form was not sent from Tessera's own pages.", None);
    }
    let s = match session(&pages, &headers, For::Change).await {
        Ok(Some(s)) => s,
        Ok(None) => return forbidden("You are not signed in.", None),
        Err(r) => return r,
    };
    let form = pairs(std::str::from_utf8(&body).unwrap_or(""));
    if !param(&form, "csrf").is_some_and(|c| login::constant_time_eq(c, &s.csrf)) {
        return forbidden(
            "This form is stale or was not sent from Tessera's own pages.",
            Some(&s),
        );
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        if let Err(e) = pages.sign_out(id).await {
            return unavailable(e);
        }
    }
    let mut r = page(
        StatusCode::OK,
        shell(
            "Signed out",
            None,
            "<h1>Signed out</h1><p><a href=\"/approvals/login\">Sign in</a></p>",
        ),
    );
    set_cookie(&mut r, SESSION_COOKIE, "", 0, "Strict");
    set_cookie(&mut r, NAV_COOKIE, "", 0, "Lax");
    r
}
