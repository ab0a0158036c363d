//! Upstream IdP keys and clock trust (SECURITY.md §3 R10, R11, R12): key
//! rotation costs one JWKS fetch; an upstream that is down, slow, huge,
//! redirecting or lying in discovery never makes the broker wait or trust
//! what it should not; cached keys are used up to the max-stale window and
//! then fail closed; a stepped wall clock stops minting for a quarantine.
//! Every scenario records its `/token` answers in a Ledger and checks I1–I5.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode as AxStatus};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use common::invariants::{Expect, Ledger};
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tessera::clock::{Clock, ManualClock};
use tessera::mint::keyring::{SigningAlgorithm, SigningKey};
use tessera::testkit::{TestHttps, TestIssuer};

/// One `/token` answer: status, `Retry-After`, body.
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
}

/// POSTs an OIDC exchange of `subject_token` (anonymous TLS client) and
/// records the answer in `ledger`.
async fn exchange(b: &TestBroker, ledger: &Ledger, subject_token: &str) -> Answer {
    let r = b
        .anon()
        .post(b.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&TestBroker::oidc_form(subject_token)))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    ledger.record(status.as_u16(), &body);
    Answer {
        status,
        retry_after,
        body,
    }
}

/// Like [`exchange`] for the demo agent over mTLS.
async fn agent(b: &TestBroker, ledger: &Ledger) -> (StatusCode, Value) {
    let (s, v) = b.agent_token("tickets:read", None).await;
    ledger.record(s.as_u16(), &v);
    (s, v)
}

/// Claims of a CI token matching the "ci" policy, valid from `now` for
/// `ttl` seconds (`now` is the broker's clock, which tests may move).
fn ci_claims(iss: &str, now: u64, ttl: u64) -> Value {
    json!({"iss": iss, "sub": "repo:acme/app:ref:refs/heads/main", "aud": "tessera",
           "env": "prod", "iat": now, "nbf": now, "exp": now + ttl,
           "jti": uuid::Uuid::new_v4().to_string()})
}

async fn ready(b: &TestBroker) -> u16 {
    reqwest::get(b.ops_url("/readyz"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls `/readyz` until it answers `want` (fail-safe deadline 10 s).
async fn wait_ready(b: &TestBroker, want: u16) {
    let t0 = Instant::now();
    while ready(b).await != want {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "readyz did not become {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Audit records of refusals (`refused`, or `unavailable` for a 503) with
/// `reason`.
fn refusals(records: &[Value], reason: &str) -> usize {
    records
        .iter()
        .filter(|r| {
            (r["event"] == "refused" || r["event"] == "unavailable") && r["reason"] == reason
        })
        .count()
}

// ---------------------------------------------------------------- R10

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r10_upstream_rotation_triggers_one_refresh() {
    let b = TestBroker::start_with(Options {
        issuer_extra: "jwks_refresh_cooldown = \"1s\"".into(),
        ..Default::default()
    })
    .await;
    let ledger = Ledger::new();
    let iss = b.issuer();

    let a = exchange(&b, &ledger, &b.ci_token()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let cold = iss.jwks_hits();
    assert_eq!(cold, 1);

    // The IdP rotates; once the cooldown since the last fetch has passed,
    // the first token with the new kid costs exactly one fetch and succeeds.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    iss.rotate(SigningAlgorithm::RS256).unwrap();
    let a = exchange(&b, &ledger, &b.ci_token()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(iss.jwks_hits(), cold + 1);
    // Further tokens with it are cache hits.
    for _ in 0..5 {
        assert_eq!(exchange(&b, &ledger, &b.ci_token()).await.status, 200);
    }
    assert_eq!(iss.jwks_hits(), cold + 1);

    // A further rotation hit by a burst of 50 concurrent requests: one
    // refresh (single flight), every request succeeds.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    iss.rotate(SigningAlgorithm::ES256).unwrap();
    let b = Arc::new(b);
    let ledger = Arc::new(ledger);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (b, ledger) = (b.clone(), ledger.clone());
        let tok = b.ci_token();
        tasks.push(tokio::spawn(async move {
            exchange(&b, &ledger, &tok).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        b.issuer().jwks_hits(),
        cold + 2,
        "a burst with a new kid must cause exactly one refresh"
    );

    let records = b.audit_records().await;
    let s = ledger.check(
        &records,
        &Expect {
            cap_secs: 300,
            ..Default::default()
        },
    );
    assert_eq!(s.tokens, 57);
}

// ---------------------------------------------------------------- R11

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_upstream_down_uses_cached_keys_until_max_stale_then_fails_closed_and_recovers() {
    let start = tessera::testkit::now();
    let clock = Arc::new(ManualClock::new(start));
    let b = TestBroker::start_with(Options {
        issuer_extra: "jwks_refresh_cooldown = \"1s\"\njwks_max_stale = \"10m\"".into(),
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    let ledger = Ledger::new();
    let iss = b.issuer();
    let tok = |ttl: u64| iss.sign(&ci_claims(&iss.url, clock.now(), ttl));

    assert_eq!(exchange(&b, &ledger, &tok(600)).await.status, 200);
    let hits = iss.jwks_hits();

    // The upstream fails: cached keys keep working, nothing is refetched.
    iss.set_failing(true);
    for _ in 0..5 {
        let a = exchange(&b, &ledger, &tok(600)).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    clock.advance(600); // exactly the window: still usable
    let a = exchange(&b, &ledger, &tok(600)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(iss.jwks_hits(), hits);

    // Past max-stale: 503 temporarily_unavailable with Retry-After, no token.
    clock.advance(1);
    for _ in 0..5 {
        let a = exchange(&b, &ledger, &tok(600)).await;
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(a.body["error"], "temporarily_unavailable");
        assert!(a.retry_after.is_some());
        assert!(a.body.get("access_token").is_none());
    }

    // The upstream is back: the broker recovers without a restart.
    iss.set_failing(false);
    let t0 = Instant::now();
    loop {
        let a = exchange(&b, &ledger, &tok(600)).await;
        if a.status == 200 {
            break;
        }
        assert_eq!(a.status, 503, "{}", a.body);
        assert!(t0.elapsed() < Duration::from_secs(10), "no recovery");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(iss.jwks_hits() > hits);

    let records = b.audit_records().await;
    assert!(refusals(&records, "issuer_keys_stale") >= 5);
    assert_eq!(refusals(&records, "invalid_grant"), 0);
    ledger.check(
        &records,
        &Expect {
            cap_secs: 300,
            not_after: Some(clock.now() + 600),
            ..Default::default()
        },
    );
}

/// A configurable upstream IdP: discovery, JWKS, and a canary that counts
/// whether anything followed a redirect to it.
#[derive(Default)]
struct Up {
    url: RwLock<String>,
    /// The `issuer` its discovery document claims.
    claimed_issuer: RwLock<String>,
    jwks: RwLock<Value>,
    /// 0 normal, 1 slow (30 s), 2 redirect to the canary, 3 a 50 MB body.
    mode: AtomicU8,
    jwks_hits: AtomicU64,
    discovery_hits: AtomicU64,
    canary_hits: AtomicU64,
    /// Requests currently held by the slow mode.
    hanging: AtomicU64,
}

const NORMAL: u8 = 0;
const SLOW: u8 = 1;
const REDIRECT: u8 = 2;
const HUGE: u8 = 3;

async fn up_discovery(State(s): State<Arc<Up>>) -> Response {
    s.discovery_hits.fetch_add(1, Ordering::SeqCst);
    let url = s.url.read().unwrap().clone();
    let claimed = s.claimed_issuer.read().unwrap().clone();
    Json(json!({"issuer": claimed, "jwks_uri": format!("{url}/jwks")})).into_response()
}

async fn up_jwks(State(s): State<Arc<Up>>) -> Response {
    s.jwks_hits.fetch_add(1, Ordering::SeqCst);
    match s.mode.load(Ordering::SeqCst) {
        SLOW => {
            s.hanging.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(30)).await;
            s.hanging.fetch_sub(1, Ordering::SeqCst);
        }
        REDIRECT => {
            let url = s.url.read().unwrap().clone();
            return (
                AxStatus::FOUND,
                [(header::LOCATION, format!("{url}/canary"))],
            )
                .into_response();
        }
        HUGE => {
            // 50 MB, streamed without Content-Length.
            let chunks = (0..800).map(|_| {
                Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(vec![b' '; 65536]))
            });
            return axum::body::Body::from_stream(futures_util::stream::iter(chunks))
                .into_response();
        }
        _ => {}
    }
    let doc = s.jwks.read().unwrap().clone();
    Json(doc).into_response()
}

async fn up_canary(State(s): State<Arc<Up>>) -> Response {
    s.canary_hits.fetch_add(1, Ordering::SeqCst);
    let doc = s.jwks.read().unwrap().clone();
    Json(doc).into_response()
}

/// A broker trusting issuer "up" served by an [`Up`] (keys by discovery
/// when `discovery`, else from `/jwks` directly), with policy "up".
struct UpSetup {
    b: TestBroker,
    up: Arc<Up>,
    _server: TestHttps,
    key: SigningKey,
}

impl UpSetup {
    async fn start(discovery: bool, claimed_issuer: Option<&str>) -> UpSetup {
        init();
        let dir = tempfile::tempdir().unwrap();
        let up = Arc::new(Up::default());
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(up_discovery))
            .route("/jwks", get(up_jwks))
            .route("/canary", get(up_canary))
            .with_state(up.clone());
        let server = TestHttps::start(dir.path(), "up", router).await.unwrap();
        *up.url.write().unwrap() = server.url.clone();
        *up.claimed_issuer.write().unwrap() = claimed_issuer.unwrap_or(&server.url).to_string();
        let (key, _) = SigningKey::generate(SigningAlgorithm::ES256).unwrap();
        *up.jwks.write().unwrap() = json!({"keys": [key.public_jwk()]});
        let jwks_line = if discovery {
            String::new()
        } else {
            format!("jwks_uri = \"{}/jwks\"\n", server.url)
        };
        let extra = format!(
            "[[issuers]]\nname = \"up\"\nissuer = \"{url}\"\naudiences = [\"tessera\"]\n{jwks_line}ca = \"{ca}\"\nalgorithms = [\"ES256\"]\njwks_refresh_cooldown = \"1s\"\n",
            url = server.url,
            ca = server.ca_path.display(),
        );
        let policies = format!(
            "{DEFAULT_POLICIES}\n[[policies]]\nname = \"up\"\nowner = \"carol@example.com\"\nmatch = {{ issuer = \"up\", subject = \"workload-*\" }}\naudiences = [\"https://deploy.example.com\"]\nscopes = [\"deploy:read\"]\nmax_ttl = \"5m\"\n"
        );
        let b = TestBroker::start_with(Options {
            with_issuer: false,
            extra,
            policies,
            ..Default::default()
        })
        .await;
        // The upstream's files live in the broker's directory from now on.
        std::mem::forget(dir);
        UpSetup {
            b,
            up,
            _server: server,
            key,
        }
    }

    fn url(&self) -> String {
        self.up.url.read().unwrap().clone()
    }

    fn token(&self) -> String {
        up_token(&self.url(), &self.key)
    }
}

/// A token of issuer `iss` for `workload-1`, signed with `key` (its kid in
/// the header), valid 10 minutes.
fn up_token(iss: &str, key: &SigningKey) -> String {
    let n = tessera::testkit::now();
    let header = json!({"alg": "ES256", "kid": key.kid(), "typ": "JWT"});
    let claims = json!({"iss": iss, "sub": "workload-1", "aud": "tessera",
        "iat": n, "nbf": n, "exp": n + 600, "jti": uuid::Uuid::new_v4().to_string()});
    TestIssuer::sign_raw_with(key, &header.to_string(), &claims.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_slow_upstream_does_not_stall_requests_whose_kid_is_cached() {
    let u = UpSetup::start(false, None).await;
    let ledger = Arc::new(Ledger::new());
    assert_eq!(exchange(&u.b, &ledger, &u.token()).await.status, 200);
    assert_eq!(u.up.jwks_hits.load(Ordering::SeqCst), 1);

    // The upstream now takes 30 s to answer. An unknown kid (the IdP
    // rotating, or an attacker) makes the broker refetch once.
    u.up.mode.store(SLOW, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the cooldown
    let (other, _) = SigningKey::generate(SigningAlgorithm::ES256).unwrap();
    let unknown = up_token(&u.url(), &other);
    let iss = u.url();
    let b = Arc::new(u.b);
    let miss = {
        let (b, ledger) = (b.clone(), ledger.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            let a = exchange(&b, &ledger, &unknown).await;
            (a.status, t0.elapsed())
        })
    };
    let t0 = Instant::now();
    while u.up.hanging.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "no refetch started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // While that fetch hangs, requests whose kid is cached are answered at
    // once: each within a generous 2 s, several before the miss (waiting on
    // the fetch) is answered.
    let mut during_hang = 0;
    for _ in 0..20 {
        if miss.is_finished() {
            break;
        }
        let t = Instant::now();
        let a = exchange(&b, &ledger, &up_token(&iss, &u.key)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        if !miss.is_finished() {
            during_hang += 1;
        }
    }
    assert!(
        during_hang >= 3,
        "only {during_hang} answers while the fetch hung"
    );

    // The miss itself waits at most the fetch timeout (5 s), then is refused.
    let (status, took) = miss.await.unwrap();
    assert_eq!(status, 400);
    assert!(
        took < tessera::jwks::FETCH_TIMEOUT + Duration::from_secs(3),
        "{took:?}"
    );

    let records = b.audit_records().await;
    ledger.check(
        &records,
        &Expect {
            cap_secs: 300,
            ..Default::default()
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_redirecting_and_huge_jwks_are_refused_then_recovered() {
    let u = UpSetup::start(false, None).await;
    let ledger = Ledger::new();

    // A redirect (to a URL that would serve valid keys) is not followed.
    u.up.mode.store(REDIRECT, Ordering::SeqCst);
    let a = exchange(&u.b, &ledger, &u.token()).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.body["error"], "temporarily_unavailable");
    assert!(a.retry_after.is_some());
    assert_eq!(u.up.canary_hits.load(Ordering::SeqCst), 0);

    // A 50 MB body is cut off at the size cap, well within the timeout.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    u.up.mode.store(HUGE, Ordering::SeqCst);
    let t0 = Instant::now();
    let a = exchange(&u.b, &ledger, &u.token()).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(t0.elapsed() < tessera::jwks::FETCH_TIMEOUT + Duration::from_secs(3));
    assert_eq!(u.up.jwks_hits.load(Ordering::SeqCst), 2);

    // A sane answer after the cooldown: tokens flow.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    u.up.mode.store(NORMAL, Ordering::SeqCst);
    let a = exchange(&u.b, &ledger, &u.token()).await;
    assert_eq!(a.status, 200, "{}", a.body);

    let records = u.b.audit_records().await;
    assert_eq!(refusals(&records, "issuer_keys_unavailable"), 2);
    ledger.check(
        &records,
        &Expect {
            cap_secs: 300,
            ..Default::default()
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_discovery_naming_another_issuer_is_refused() {
    let u = UpSetup::start(true, Some("https://evil.example")).await;
    let ledger = Ledger::new();
    for _ in 0..3 {
        let a = exchange(&u.b, &ledger, &u.token()).await;
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(a.body["error"], "temporarily_unavailable");
        assert!(a.body.get("access_token").is_none());
    }
    assert!(u.up.discovery_hits.load(Ordering::SeqCst) >= 1);
    // The jwks_uri of a document naming another issuer is never fetched.
    assert_eq!(u.up.jwks_hits.load(Ordering::SeqCst), 0);

    // Fixed upstream: the broker retries discovery after the cooldown.
    *u.up.claimed_issuer.write().unwrap() = u.url();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = exchange(&u.b, &ledger, &u.token()).await;
    assert_eq!(a.status, 200, "{}", a.body);

    let records = u.b.audit_records().await;
    assert_eq!(refusals(&records, "issuer_keys_unavailable"), 3);
    ledger.check(
        &records,
        &Expect {
            cap_secs: 300,
            ..Default::default()
        },
    );
}

// ---------------------------------------------------------------- R12

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r12_clock_steps_quarantine_minting_and_keep_i1_and_leeway() {
    // Defaults: [server] max_clock_step = "5s", clock_quarantine = "1m".
    let clock = Arc::new(ManualClock::new(tessera::testkit::now()));
    let b = TestBroker::start_with(Options {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    let ledger = Ledger::new();
    let iss = b.issuer();
    let mut bases = Vec::new();

    // Mints one CI token whose subject token lives 120 s from the broker's
    // now, and checks I1 for it on the spot.
    let ci_ok = |bases: &mut Vec<(u64, u64)>| {
        let now = clock.now();
        let st_exp = now + 120;
        bases.push((now, st_exp));
        iss.sign(&ci_claims(&iss.url, now, 120))
    };
    let check_i1 = |v: &Value, st_exp: u64| {
        let (_, c) = decode(v["access_token"].as_str().unwrap());
        let (iat, exp) = (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap());
        assert!(exp > iat && exp - iat <= 300, "I1: {iat}..{exp}");
        assert!(
            exp <= st_exp,
            "I1: exp {exp} past the subject token's {st_exp}"
        );
        assert_eq!(iat, clock.now(), "iat is the broker's wall clock");
    };
    // A subject token that expired `ago` seconds ago by the broker's clock.
    let expired = |ago: u64| {
        let now = clock.now();
        iss.sign(&ci_claims(&iss.url, now - 600, 600 - ago))
    };
    // Leeway stays 30 s: expired 31 s ago is refused as `expired`; 29 s ago
    // passes validation but leaves no lifetime (`no_lifetime_left`).
    let leeway_is_fixed = || {
        let t31 = expired(31);
        let t29 = expired(29);
        let (b, ledger) = (&b, &ledger);
        async move {
            let a = exchange(b, ledger, &t31).await;
            assert_eq!(a.status, 400, "{}", a.body);
            assert_eq!(a.body["error"], "invalid_request");
            let a = exchange(b, ledger, &t29).await;
            assert_eq!(a.status, 400, "{}", a.body);
        }
    };

    wait_ready(&b, 200).await;
    let tok = ci_ok(&mut bases);
    let a = exchange(&b, &ledger, &tok).await;
    assert_eq!(a.status, 200, "{}", a.body);
    check_i1(&a.body, bases.last().unwrap().1);
    assert_eq!(agent(&b, &ledger).await.0, 200);
    leeway_is_fixed().await;

    // Small steps (within max_clock_step) are tolerated.
    for step in [3i64, -3, 4, -4] {
        clock.step(step);
        tokio::time::sleep(Duration::from_millis(1200)).await; // one sample
        assert_eq!(ready(&b).await, 200);
        let tok = ci_ok(&mut bases);
        let a = exchange(&b, &ledger, &tok).await;
        assert_eq!(a.status, 200, "step {step}: {}", a.body);
        check_i1(&a.body, bases.last().unwrap().1);
    }

    for step in [300i64, -300] {
        clock.step(step);
        // The monitor notices within a sample: readyz 503 and no minting.
        wait_ready(&b, 503).await;
        for _ in 0..3 {
            let tok = ci_ok(&mut bases);
            let a = exchange(&b, &ledger, &tok).await;
            assert_eq!(a.status, 503, "step {step}: {}", a.body);
            assert_eq!(a.body["error"], "temporarily_unavailable");
            assert!(a.retry_after.is_some());
            let (s, v) = agent(&b, &ledger).await;
            assert_eq!(s, 503, "{v}");
        }
        // Still within the quarantine after 30 s of (monotonic) time.
        clock.advance(30);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(ready(&b).await, 503);
        let tok = ci_ok(&mut bases);
        assert_eq!(exchange(&b, &ledger, &tok).await.status, 503);
        // The quarantine ends by itself with no further step.
        clock.advance(31);
        wait_ready(&b, 200).await;
        let tok = ci_ok(&mut bases);
        let a = exchange(&b, &ledger, &tok).await;
        assert_eq!(a.status, 200, "after step {step}: {}", a.body);
        check_i1(&a.body, bases.last().unwrap().1);
        assert_eq!(agent(&b, &ledger).await.0, 200);
        leeway_is_fixed().await;
    }

    let records = b.audit_records().await;
    assert_eq!(refusals(&records, "clock_untrusted"), 2 * (3 * 2 + 1));
    assert_eq!(refusals(&records, "expired"), 3);
    assert_eq!(refusals(&records, "no_lifetime_left"), 3);
    // I1 per CI token is checked above (exp ≤ its subject token's exp);
    // here the cap over every token, mTLS ones included (policy 10m).
    ledger.check(
        &records,
        &Expect {
            cap_secs: 600,
            ..Default::default()
        },
    );
}
