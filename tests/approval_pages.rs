//! The approval web pages (contract: "Approvers are the accountable
//! humans"), end to end over real TLS: a real broker, the test IdP (a real
//! HTTPS OIDC provider with discovery, JWKS, an authorization endpoint that
//! signs in a configured person with a chosen `amr`, and a token endpoint
//! checking PKCE), and a real HTTP client with a cookie jar acting as the
//! browser. One test per rule: the approver decides and the agent gets its
//! token; a non-approver gets 403, audited, nothing decided; no MFA is
//! refused; a stale sign-in must sign in again with max_age; CSRF-less and
//! cross-origin POSTs are 403; XSS renders as text; no open redirect;
//! logout ends the session in the store (memory and Redis).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use reqwest::header::{HeaderMap, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::Value;
use tessera::testkit::TestIssuer;
use tessera::testkit_redis::redis_or_skip;

const DETAILS: &str =
    r#"[{"type":"ticket_deletion","identifier":"T-4711","actions":["delete"],"reason":"dup"}]"#;
const PAY_DETAILS: &str = r#"[{"type":"payment_initiation","amount":"120.00","currency":"EUR"}]"#;

const POLICIES: &str = r#"
[[policies]]
name = "agents"
owner = "alice@example.com"
approvers = ["alice@example.com", "group:payments-leads"]
match = { issuer = "mtls", subject = "spiffe://example.org/agent/*" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read", "tickets:delete"]
approval_scopes = ["tickets:delete"]
may_act_for = ["ci"]

[[policies]]
name = "people"
owner = "alice@example.com"
match = { issuer = "ci", subject = "user-alice@example.com" }
audiences = ["https://api.example.com"]
scopes = ["tickets:read", "tickets:delete"]

[[policies]]
name = "payments"
owner = "carol@example.com"
match = { issuer = "mtls", subject = "spiffe://example.org/service/payments-api" }
audiences = ["https://bank.example.com"]
scopes = ["payments:read", "payments:send"]
approval_scopes = ["payments:send"]
"#;

const LOGIN: &str = r#"
[approvals]
ttl = "30m"
interval = "0s"
login_issuer = "ci"
login_client_id = "tessera"
groups_claim = "groups"
max_auth_age = "15m"
"#;

async fn start(store_url: Option<String>) -> (TestBroker, String) {
    start_with(store_url, "").await
}

async fn start_with(store_url: Option<String>, approvals_extra: &str) -> (TestBroker, String) {
    let port = tessera::testkit::free_port();
    let b = TestBroker::start_with(Options {
        policies: POLICIES.into(),
        extra: format!("{LOGIN}{approvals_extra}\n"),
        public_port: Some(port),
        store_url,
        ..Default::default()
    })
    .await;
    (b, format!("https://127.0.0.1:{port}"))
}

/// A browser: trusts the broker's and the IdP's CAs, keeps cookies, does
/// not follow redirects by itself (each hop is checked).
struct Browser {
    client: reqwest::Client,
    base: String,
}

fn ca_der(path: &std::path::Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

impl Browser {
    fn new(b: &TestBroker, base: &str) -> Browser {
        let roots = vec![
            rustls_pki_types::CertificateDer::from(b.ca.cert_der().to_vec()),
            rustls_pki_types::CertificateDer::from(ca_der(&b.issuer().ca_path)),
        ];
        let tls =
            tessera::jwks::http::tls_client_config(&roots, false, None, &[b"http/1.1"]).unwrap();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Browser {
            client,
            base: base.to_string(),
        }
    }

    async fn get(&self, url: &str) -> (StatusCode, HeaderMap, String) {
        let url = if url.starts_with("https://") {
            url.to_string()
        } else {
            format!("{}{url}", self.base)
        };
        let r = self.client.get(url).send().await.unwrap();
        let (s, h) = (r.status(), r.headers().clone());
        (s, h, r.text().await.unwrap())
    }

    /// Follows 303s from `path` (across the broker and the IdP) to the end.
    async fn follow(&self, path: &str) -> (StatusCode, HeaderMap, String, Vec<String>) {
        let mut url = format!("{}{path}", self.base);
        let mut hops = Vec::new();
        for _ in 0..10 {
            let (s, h, body) = self.get(&url).await;
            if s != StatusCode::SEE_OTHER {
                return (s, h, body, hops);
            }
            let loc = h[LOCATION].to_str().unwrap().to_string();
            hops.push(loc.clone());
            url = if loc.starts_with('/') {
                format!("{}{loc}", self.base)
            } else {
                loc
            };
        }
        panic!("redirect loop: {hops:?}");
    }

    /// Signs in (the IdP signs in whoever it was told to); the final page.
    async fn sign_in(&self) -> (StatusCode, String, Vec<String>) {
        let (s, _, body, hops) = self.follow("/approvals/login").await;
        (s, body, hops)
    }

    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> (StatusCode, HeaderMap, String) {
        let mut rq = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode_form(form));
        if let Some(o) = origin {
            rq = rq.header(ORIGIN, o);
        }
        let r = rq.send().await.unwrap();
        let (s, h) = (r.status(), r.headers().clone());
        (s, h, r.text().await.unwrap())
    }
}

/// The CSRF token of a page's forms.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..at + page[at..].find('"').unwrap()].to_string()
}

/// The agent's request that needs approval; its approval id.
async fn agent_pending(b: &TestBroker, details: &str) -> String {
    let r = b
        .token(
            &b.agent_client(),
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", API),
                ("scope", "tickets:delete"),
                ("task", "cleanup-42"),
                ("authorization_details", details),
            ],
        )
        .await;
    assert_eq!(r.1["error"], "authorization_pending", "{}", r.1);
    r.1["approval_id"].as_str().unwrap().to_string()
}

async fn agent_poll(b: &TestBroker, id: &str, details: &str) -> (StatusCode, Value) {
    b.token(
        &b.agent_client(),
        &[
            ("grant_type", TE),
            ("subject_token_type", MTLS),
            ("audience", API),
            ("scope", "tickets:delete"),
            ("task", "cleanup-42"),
            ("authorization_details", details),
            ("approval_id", id),
        ],
    )
    .await
}

async fn payments_pending(b: &TestBroker) -> String {
    let r = b
        .token(
            &b.client(Some(&b.payments)),
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", "https://bank.example.com"),
                ("scope", "payments:send"),
                ("authorization_details", PAY_DETAILS),
            ],
        )
        .await;
    assert_eq!(r.1["error"], "authorization_pending", "{}", r.1);
    r.1["approval_id"].as_str().unwrap().to_string()
}

async fn state_of(b: &TestBroker, id: &str) -> String {
    let (s, v) = b
        .admin(reqwest::Method::GET, "/admin/v1/approvals?state=all", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    v["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .map(|a| a["state"].as_str().unwrap().to_string())
        .unwrap()
}

fn alice() -> tessera::testkit::TestPerson {
    TestIssuer::person("alice@example.com", &[], &["pwd", "otp"])
}

// The CLI runs as a child process while the test waits: the broker needs
// its own worker threads meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approver_signs_in_sees_only_hers_approves_and_the_agent_gets_its_token() {
    let (b, base) = start(None).await;
    let mine = agent_pending(&b, DETAILS).await;
    let not_mine = payments_pending(&b).await;
    b.issuer().sign_in_as(Some(alice()));
    let web = Browser::new(&b, &base);

    // Without a session: 303 to the sign-in.
    let (s, h, _) = web.get("/approvals").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[LOCATION], "/approvals/login");

    let (s, list, hops) = web.sign_in().await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(hops.last().unwrap(), "/approvals", "{hops:?}");
    assert!(list.contains(&mine), "{list}");
    assert!(
        !list.contains(&not_mine),
        "another policy's approval is not hers"
    );
    assert!(list.contains("alice@example.com"));

    let (s, _, page) = web.get(&format!("/approvals/{mine}")).await;
    assert_eq!(s, StatusCode::OK);
    for want in [
        "T-4711",
        "ticket_deletion",
        "cleanup-42",
        AGENT,
        "tickets:delete",
        API,
        "agents",
    ] {
        assert!(page.contains(want), "{want} missing from the detail page");
    }
    // Another policy's approval does not exist for her.
    assert_eq!(
        web.get(&format!("/approvals/{not_mine}")).await.0,
        StatusCode::NOT_FOUND
    );

    let token = csrf(&page);
    let (s, h, _) = web
        .post(
            &format!("/approvals/{mine}"),
            &[
                ("decision", "approve"),
                ("reason", "ticket is a duplicate"),
                ("csrf", &token),
            ],
            Some(&base),
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[LOCATION], "/approvals");

    // The agent's poll gets exactly one token.
    let r = agent_poll(&b, &mine, DETAILS).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let (_, claims) = decode(r.1["access_token"].as_str().unwrap());
    assert_eq!(claims["scope"], "tickets:delete");
    assert_eq!(claims["authorization_details"][0]["identifier"], "T-4711");

    // The audit names the human, the IdP, the amr and the reason.
    let recs = b.audit_records().await;
    let rec = recs
        .iter()
        .find(|r| r["event"] == "approved")
        .expect("an approved record");
    assert_eq!(rec["client"], "alice@example.com");
    let detail = rec["detail"].as_str().unwrap();
    for want in [
        "via IdP ci",
        "amr pwd,otp",
        "ticket is a duplicate",
        mine.as_str(),
    ] {
        assert!(detail.contains(want), "{want} missing from {detail}");
    }
    // `approvals list` shows who decided; the chain still verifies.
    let (c, out, err) = b.cli(&["approvals", "list", "--all"]);
    assert_eq!(c, 0, "{err}");
    assert!(
        out.contains("DECIDED BY") && out.contains("alice@example.com"),
        "{out}"
    );
    let (c, out, err) = b.cli(&["audit", "verify"]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("intact"), "{out}");
    // The operator certificate cannot decide a policy that names approvers,
    // but still decides the one that does not.
    let (s, v) = b
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/approvals/{not_mine}/approve"),
            Some(serde_json::json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let other = agent_pending(&b, r#"[{"type":"ticket_deletion","identifier":"T-1"}]"#).await;
    let (s, v) = b
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/approvals/{other}/approve"),
            Some(serde_json::json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"], "policy_has_approvers");
    assert_eq!(state_of(&b, &other).await, "pending");
    b.stop().await;
}

#[tokio::test]
async fn a_group_member_decides_but_a_non_approver_gets_403_audited_and_nothing_decided() {
    let hook_dir = tempfile::tempdir().unwrap();
    let hook = tessera::testkit::TestWebhook::start(hook_dir.path())
        .await
        .unwrap();
    let (b, base) = start_with(
        None,
        &format!(
            "webhook = \"{}\"\nwebhook_ca = \"{}\"",
            hook.url,
            hook.ca_path.display()
        ),
    )
    .await;
    let id = agent_pending(&b, DETAILS).await;
    // The webhook's summary leads to the decision page.
    let mut bodies = hook.bodies();
    for _ in 0..100 {
        if !bodies.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        bodies = hook.bodies();
    }
    assert_eq!(bodies[0]["approval_url"], format!("{base}/approvals/{id}"));

    // bob is no approver of "agents".
    b.issuer().sign_in_as(Some(TestIssuer::person(
        "bob@example.com",
        &["support"],
        &["mfa"],
    )));
    let bob = Browser::new(&b, &base);
    let (s, list, _) = bob.sign_in().await;
    assert_eq!(s, StatusCode::OK);
    assert!(!list.contains(&id), "bob must not see it");
    assert_eq!(
        bob.get(&format!("/approvals/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
    let token = csrf(&list);
    let (s, _, _) = bob
        .post(
            &format!("/approvals/{id}"),
            &[("decision", "approve"), ("csrf", &token)],
            Some(&base),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(state_of(&b, &id).await, "pending");
    let recs = b.audit_records().await;
    assert!(
        recs.iter().any(|r| r["event"] == "refused"
            && r["reason"] == "not_an_approver"
            && r["client"] == "bob@example.com"),
        "the refusal is audited"
    );
    assert!(!recs.iter().any(|r| r["event"] == "approved"));

    // carol is in group:payments-leads: she may decide.
    b.issuer().sign_in_as(Some(TestIssuer::person(
        "carol@example.com",
        &["payments-leads"],
        &["hwk"],
    )));
    let carol = Browser::new(&b, &base);
    let (_, list, _) = carol.sign_in().await;
    assert!(list.contains(&id));
    let (s, _, _) = carol
        .post(
            &format!("/approvals/{id}"),
            &[
                ("decision", "deny"),
                ("reason", "not now"),
                ("csrf", &csrf(&list)),
            ],
            Some(&base),
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(state_of(&b, &id).await, "denied");
    assert_eq!(
        agent_poll(&b, &id, DETAILS).await.1["error"],
        "access_denied"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_sign_in_without_mfa_is_refused() {
    let (b, base) = start(None).await;
    let id = agent_pending(&b, DETAILS).await;
    b.issuer()
        .sign_in_as(Some(TestIssuer::person("alice@example.com", &[], &["pwd"])));
    let web = Browser::new(&b, &base);
    let (s, body, _) = web.sign_in().await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(body.contains("Multi-factor sign-in required"), "{body}");
    // No session was made.
    let (s, h, _) = web.get("/approvals").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[LOCATION], "/approvals/login");
    assert_eq!(state_of(&b, &id).await, "pending");
    let recs = b.audit_records().await;
    assert!(recs
        .iter()
        .any(|r| r["event"] == "refused" && r["reason"] == "mfa_required"));
    b.stop().await;
}

#[tokio::test]
async fn a_stale_sign_in_cannot_decide_and_signs_in_again_with_max_age() {
    let (b, base) = start(None).await;
    let id = agent_pending(&b, DETAILS).await;
    let mut p = alice();
    p.auth_time -= 3600; // authenticated at the IdP an hour ago
    b.issuer().sign_in_as(Some(p));
    let web = Browser::new(&b, &base);
    let (s, list, _) = web.sign_in().await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        !web.b_last_has_max_age(&b),
        "the first sign-in does not ask for max_age"
    );
    let (_, _, page) = web.get(&format!("/approvals/{id}")).await;
    assert!(page.contains("Sign in again"), "{page}");
    let (s, _, body) = web
        .post(
            &format!("/approvals/{id}"),
            &[("decision", "approve"), ("csrf", &csrf(&list))],
            Some(&base),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        body.contains(&format!("/approvals/login?reauth=1&amp;id={id}")),
        "{body}"
    );
    assert_eq!(state_of(&b, &id).await, "pending");
    assert!(b
        .audit_records()
        .await
        .iter()
        .any(|r| r["event"] == "refused" && r["reason"] == "auth_too_old"));

    // Signing in again sends max_age; the IdP authenticates anew.
    let (s, _, page, hops) = web
        .follow(&format!("/approvals/login?reauth=1&id={id}"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(hops.last().unwrap(), &format!("/approvals/{id}"));
    assert!(web.b_last_has_max_age(&b));
    let (s, _, _) = web
        .post(
            &format!("/approvals/{id}"),
            &[("decision", "approve"), ("csrf", &csrf(&page))],
            Some(&base),
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(state_of(&b, &id).await, "approved");
    b.stop().await;
}

/// `GET /approvals` from a fresh client presenting only `cookie`.
async fn replay(b: &TestBroker, base: &str, cookie: &str) -> StatusCode {
    Browser::new(b, base)
        .client
        .get(format!("{base}/approvals"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
}

impl Browser {
    /// Signs in hop by hop; the session cookie (`name=value`) it set.
    async fn sign_in_cookie(&self) -> String {
        let (_, h, _) = self.get("/approvals/login").await;
        let (_, h, _) = self.get(h[LOCATION].to_str().unwrap()).await;
        let (s, h, _) = self.get(h[LOCATION].to_str().unwrap()).await;
        assert_eq!(s, StatusCode::SEE_OTHER);
        h.get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .find(|c| c.starts_with("__Host-tessera_approver="))
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    }

    fn b_last_has_max_age(&self, b: &TestBroker) -> bool {
        b.issuer()
            .last_authorize()
            .iter()
            .any(|(k, v)| k == "max_age" && v == "0")
    }
}

#[tokio::test]
async fn posts_without_the_csrf_token_or_from_another_origin_are_403_and_decide_nothing() {
    let (b, base) = start(None).await;
    let id = agent_pending(&b, DETAILS).await;
    b.issuer().sign_in_as(Some(alice()));
    let web = Browser::new(&b, &base);
    let (_, list, _) = web.sign_in().await;
    let token = csrf(&list);
    let path = format!("/approvals/{id}");
    for (form, origin) in [
        (vec![("decision", "approve")], Some(base.as_str())),
        (
            vec![("decision", "approve"), ("csrf", "forged")],
            Some(base.as_str()),
        ),
        (
            vec![("decision", "approve"), ("csrf", token.as_str())],
            Some("https://evil.example"),
        ),
        (
            vec![("decision", "approve"), ("csrf", token.as_str())],
            None,
        ),
    ] {
        let (s, h, _) = web.post(&path, &form, origin).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{form:?} {origin:?}");
        assert!(h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'"));
    }
    // Logout is a POST too.
    let (s, _, _) = web.post("/approvals/logout", &[], Some(&base)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(state_of(&b, &id).await, "pending");
    assert!(!b
        .audit_records()
        .await
        .iter()
        .any(|r| r["event"] == "approved"));
    b.stop().await;
}

#[tokio::test]
async fn workload_values_render_as_text_under_a_strict_csp() {
    let (b, base) = start(None).await;
    let xss = r#"[{"type":"<script>alert(1)</script>","note":"<img src=x onerror=alert(2)>","x\"><b>":"' onmouseover='alert(3)"}]"#;
    let id = agent_pending(&b, xss).await;
    b.issuer().sign_in_as(Some(alice()));
    let web = Browser::new(&b, &base);
    web.sign_in().await;
    let (s, h, page) = web.get(&format!("/approvals/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(page.contains("&lt;img src=x onerror=alert(2)&gt;"));
    assert!(page.contains("&#39; onmouseover=&#39;alert(3)"));
    assert!(!page.contains("<script") && !page.contains("<img") && !page.contains("<b>"));
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-content-type-options"], "nosniff");
    b.stop().await;
}

#[tokio::test]
async fn the_login_round_trip_uses_pkce_state_nonce_and_cannot_redirect_elsewhere() {
    let (b, base) = start(None).await;
    b.issuer().sign_in_as(Some(alice()));
    let web = Browser::new(&b, &base);
    // A hostile "return to" is ignored: only an approval id is accepted.
    let (s, h, _) = web
        .get("/approvals/login?id=https://evil.example/&next=https://evil.example/")
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let idp = reqwest::Url::parse(h[LOCATION].to_str().unwrap()).unwrap();
    assert!(idp
        .as_str()
        .starts_with(&format!("{}/authorize", b.issuer().url)));
    let q: std::collections::HashMap<String, String> = idp.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert_eq!(q["client_id"], "tessera");
    assert_eq!(q["scope"], "openid email groups");
    assert_eq!(q["redirect_uri"], format!("{base}/approvals/callback"));
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43);
    assert!(!q.contains_key("max_age"));
    let login_cookie = h[SET_COOKIE].to_str().unwrap();
    assert!(
        login_cookie.starts_with("__Host-tessera_login="),
        "{login_cookie}"
    );

    // The IdP answers; the callback's redirect is the broker's own list.
    let (s, h, _) = web.get(idp.as_str()).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let callback = h[LOCATION].to_str().unwrap().to_string();
    let (s, h, _) = web.get(&callback).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[LOCATION], "/approvals");
    let session = h
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("__Host-tessera_approver="))
        .unwrap()
        .to_string();
    for attr in [
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=3600",
    ] {
        assert!(session.contains(attr), "{attr} missing: {session}");
    }
    // The same callback again (a replayed code and state) signs nobody in.
    let (s, _, _) = web.get(&callback).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A callback in another browser (an attacker's code pushed to a victim)
    // is refused: the attempt is bound to the browser that started it.
    let (_, h, _) = web.get("/approvals/login").await;
    let (_, h2, _) = web.get(h[LOCATION].to_str().unwrap()).await;
    let victim = Browser::new(&b, &base);
    let (s, _, _) = victim.get(h2[LOCATION].to_str().unwrap()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(victim.get("/approvals").await.0, StatusCode::SEE_OTHER);
    b.stop().await;
}

#[tokio::test]
async fn logout_ends_the_session_in_the_store_and_a_new_sign_in_gets_a_new_id() {
    let mut stores = vec![None];
    let redis = redis_or_skip().unwrap();
    if let Some(r) = &redis {
        stores.push(Some(r.url()));
    }
    for store in stores {
        let (b, base) = start(store.clone()).await;
        b.issuer().sign_in_as(Some(alice()));
        let web = Browser::new(&b, &base);
        let first = web.sign_in_cookie().await;
        let (s, _, list) = web.get("/approvals").await;
        assert_eq!(s, StatusCode::OK, "{store:?}");

        // Signing in again gives a new session id (no fixation) and ends
        // the old one.
        let second = web.sign_in_cookie().await;
        assert_ne!(first, second);
        assert_eq!(
            replay(&b, &base, &first).await,
            StatusCode::SEE_OTHER,
            "the old id is dead"
        );
        assert_eq!(replay(&b, &base, &second).await, StatusCode::OK);
        // The Lax companion cookie shows pages but never changes anything.
        let nav = second.replace("__Host-tessera_approver=", "__Host-tessera_approver_nav=");
        assert_eq!(replay(&b, &base, &nav).await, StatusCode::OK);
        let (_, _, list_now) = web.get("/approvals").await;
        let only_nav = Browser::new(&b, &base)
            .client
            .post(format!("{base}/approvals/logout"))
            .header("cookie", nav.clone())
            .header(ORIGIN, base.as_str())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode_form(&[("csrf", &csrf(&list_now))]))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(only_nav, StatusCode::FORBIDDEN);

        let (_, _, list2) = web.get("/approvals").await;
        assert_ne!(csrf(&list), csrf(&list2));
        let (s, _, body) = web
            .post("/approvals/logout", &[("csrf", &csrf(&list2))], Some(&base))
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        // The store no longer knows the session: the cookie value, replayed
        // by anyone, is worthless.
        assert_eq!(
            replay(&b, &base, &second).await,
            StatusCode::SEE_OTHER,
            "{store:?}"
        );
        assert_eq!(web.get("/approvals").await.0, StatusCode::SEE_OTHER);
        b.stop().await;
    }
}

const CIBA: &str = "urn:openid:params:grant-type:ciba";

async fn bc_authorize(
    b: &TestBroker,
    cert: &tessera::pki::IssuedCert,
    person: &str,
) -> (StatusCode, Value) {
    let r = b
        .client(Some(cert))
        .post(b.url("/bc-authorize"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&[
            ("login_hint", person),
            ("scope", "tickets:delete"),
            ("audience", API),
            ("task", "refund-7"),
            ("binding_message", "<b>Delete T-4711</b> code 42"),
            ("authorization_details", DETAILS),
        ]))
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap())
}

async fn ciba_poll(
    b: &TestBroker,
    cert: &tessera::pki::IssuedCert,
    id: &str,
) -> (StatusCode, Value) {
    b.token(
        &b.client(Some(cert)),
        &[("grant_type", CIBA), ("auth_req_id", id)],
    )
    .await
}

#[tokio::test]
async fn ciba_consent_by_the_named_person_gives_the_agent_one_token_on_her_behalf() {
    let (b, base) = start(None).await;
    // Metadata advertises poll mode.
    let (_, meta) = {
        let r = b
            .anon()
            .get(b.url("/.well-known/oauth-authorization-server"))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(
        meta["backchannel_authentication_endpoint"],
        format!("{base}/bc-authorize")
    );
    assert_eq!(
        meta["backchannel_token_delivery_modes_supported"],
        serde_json::json!(["poll"])
    );
    assert!(meta["grant_types_supported"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g == CIBA));

    // Unknown and known people get the same answer.
    let (s1, known) = bc_authorize(&b, &b.agent, "alice@example.com").await;
    let (s2, unknown) = bc_authorize(&b, &b.agent, "nobody@example.com").await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&known), keys(&unknown));
    assert_eq!(known["interval"], unknown["interval"]);
    let id = known["auth_req_id"].as_str().unwrap().to_string();
    // An agent whose policy may not act for the IdP's users is refused.
    let (s, v) = bc_authorize(&b, &b.payments, "alice@example.com").await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("access_denied"))
    );

    assert_eq!(
        ciba_poll(&b, &b.agent, &id).await.1["error"],
        "authorization_pending"
    );
    // Nobody but alice decides: not the operator, not an approver of the
    // agent's policy.
    let (s, v) = b
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/approvals/{id}/approve"),
            Some(serde_json::json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    b.issuer().sign_in_as(Some(TestIssuer::person(
        "carol@example.com",
        &["payments-leads"],
        &["otp"],
    )));
    let carol = Browser::new(&b, &base);
    let (_, list, _) = carol.sign_in().await;
    assert!(!list.contains(&id));
    let (s, _, _) = carol
        .post(
            &format!("/approvals/{id}"),
            &[("decision", "approve"), ("csrf", &csrf(&list))],
            Some(&base),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(state_of(&b, &id).await, "pending");

    // alice sees the request with the agent's message, escaped, and consents.
    b.issuer().sign_in_as(Some(alice()));
    let web = Browser::new(&b, &base);
    let (_, list, _) = web.sign_in().await;
    assert!(list.contains(&id));
    let (_, _, page) = web.get(&format!("/approvals/{id}")).await;
    assert!(
        page.contains("&lt;b&gt;Delete T-4711&lt;/b&gt; code 42"),
        "{page}"
    );
    assert!(page.contains("consent"));
    let (s, _, _) = web
        .post(
            &format!("/approvals/{id}"),
            &[("decision", "approve"), ("csrf", &csrf(&page))],
            Some(&base),
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);

    // Another client cannot redeem it; the agent gets it exactly once.
    assert_eq!(
        ciba_poll(&b, &b.payments, &id).await.1["error"],
        "invalid_grant"
    );
    let (s, v) = ciba_poll(&b, &b.agent, &id).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, c) = decode(v["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], "alice@example.com");
    assert_eq!(c["act"]["sub"], AGENT);
    assert_eq!(c["scope"], "tickets:delete");
    assert_eq!(c["aud"], API);
    assert_eq!(c["txn"], "refund-7");
    assert_eq!(c["authorization_details"][0]["identifier"], "T-4711");
    assert!(
        c["cnf"]["x5t#S256"].is_string(),
        "bound to the agent's certificate"
    );
    assert_eq!(
        ciba_poll(&b, &b.agent, &id).await.1["error"],
        "invalid_grant"
    );
    b.stop().await;
}

#[tokio::test]
async fn ciba_consent_needs_the_persons_own_policy_too() {
    let (b, base) = start(None).await;
    // bob has no policy of his own: the agent may ask, bob cannot consent.
    let (s, v) = bc_authorize(&b, &b.agent, "bob@example.com").await;
    assert_eq!(s, StatusCode::OK);
    let id = v["auth_req_id"].as_str().unwrap().to_string();
    b.issuer()
        .sign_in_as(Some(TestIssuer::person("bob@example.com", &[], &["mfa"])));
    let web = Browser::new(&b, &base);
    let (_, list, _) = web.sign_in().await;
    assert!(list.contains(&id), "the request is his to see");
    let (s, _, _) = web
        .post(
            &format!("/approvals/{id}"),
            &[("decision", "approve"), ("csrf", &csrf(&list))],
            Some(&base),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(state_of(&b, &id).await, "pending");
    assert!(b
        .audit_records()
        .await
        .iter()
        .any(|r| r["reason"] == "person_policy_denies" && r["client"] == "bob@example.com"));
    // He may still refuse; the agent then learns access_denied.
    let (s, _, _) = web
        .post(
            &format!("/approvals/{id}"),
            &[("decision", "deny"), ("csrf", &csrf(&list))],
            Some(&base),
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(
        ciba_poll(&b, &b.agent, &id).await.1["error"],
        "access_denied"
    );
    b.stop().await;
}
