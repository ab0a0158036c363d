//! The hostile cases of ../shared/SECURITY.md §2 (A–G and I) that apply to
//! the exchange core, each named by its catalogue number. Every case goes
//! through the real broker over real TLS; each asserts the status and code,
//! that no token came back, and (where it matters) that the broker made no
//! outbound request because of the input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tessera::mint::keyring::SigningAlgorithm;
use tessera::pki::LeafSpec;
use tessera::testkit::{now, TestIssuer};

fn b64(s: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// Good CI claims (match the "ci" policy).
fn good_claims(b: &TestBroker) -> Value {
    let mut c = b
        .issuer()
        .claims("repo:acme/app:ref:refs/heads/main", "tessera");
    c["env"] = "prod".into();
    c
}

fn header(b: &TestBroker) -> Value {
    let k = b.issuer().signer();
    json!({"alg": k.algorithm().as_str(), "kid": k.kid(), "typ": "JWT"})
}

/// Presents `st` as an OIDC subject token; asserts the refusal code and that no token came back.
async fn refused(b: &TestBroker, st: &str, code: &str) {
    let (s, v) = b.token(&b.anon(), &TestBroker::oidc_form(st)).await;
    assert_eq!(v["error"], code, "status {s}, body {v}");
    assert!(v.get("access_token").is_none());
    assert!(s.is_client_error(), "{s}");
}

async fn accepted(b: &TestBroker, st: &str) -> Value {
    let (s, v) = b.token(&b.anon(), &TestBroker::oidc_form(st)).await;
    assert_eq!(s, 200, "{v}");
    v
}

// ---------------- A. Compact-JWS framing and parsing ----------------

#[tokio::test]
async fn a01_a02_a03_framing() {
    let b = TestBroker::start().await;
    let good = b.ci_token();
    let p: Vec<&str> = good.split('.').collect();
    for bad in [
        format!("{}.{}", p[0], p[1]),
        format!("{}.{}.", p[0], p[1]),
        format!("{good}."),
        format!("{good}.foo"),
    ] {
        refused(&b, &bad, "invalid_request").await;
    }
    accepted(&b, &good).await;
}

#[tokio::test]
async fn a04_jwe_five_segments_rejected_before_any_crypto() {
    let b = TestBroker::start().await;
    for alg in ["RSA-OAEP", "dir", "PBES2-HS256+A128KW"] {
        let h = b64(
            json!({"alg": alg, "enc": "A128GCM", "p2c": 2_000_000_000u64})
                .to_string()
                .as_bytes(),
        );
        let jwe = format!("{h}.AAAA.AAAA.AAAA.AAAA");
        let t = std::time::Instant::now();
        refused(&b, &jwe, "invalid_request").await;
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
}

#[tokio::test]
async fn a05_json_serialization_rejected() {
    let b = TestBroker::start().await;
    let good = b.ci_token();
    let p: Vec<&str> = good.split('.').collect();
    let js = json!({"payload": p[1], "signatures": [{"protected": p[0], "signature": p[2]}]})
        .to_string();
    refused(&b, &js, "invalid_request").await;
}

#[tokio::test]
async fn a06_charset_gate() {
    let b = TestBroker::start().await;
    let good = b.ci_token();
    for ins in ["=", "+", "/", " ", "\r\n", "%2E", "{", "\""] {
        let mut bad = good.clone();
        bad.insert_str(10, ins);
        refused(&b, &bad, "invalid_request").await;
    }
}

#[tokio::test]
async fn a07_utf16_and_invalid_utf8() {
    let b = TestBroker::start().await;
    let h = header(&b).to_string();
    let c = good_claims(&b).to_string();
    let utf16: Vec<u8> = [0xFEu8, 0xFF]
        .into_iter()
        .chain(h.encode_utf16().flat_map(|u| u.to_be_bytes()))
        .collect();
    let k = b.issuer().signer();
    for (hb, pb) in [
        (utf16, c.as_bytes().to_vec()),
        (h.as_bytes().to_vec(), vec![b'{', 0xC3, 0x28, b'}']),
    ] {
        let input = format!("{}.{}", b64(&hb), b64(&pb));
        let sig = k.sign(input.as_bytes()).unwrap();
        refused(&b, &format!("{input}.{}", b64(&sig)), "invalid_request").await;
    }
}

#[tokio::test]
async fn a08_non_object_json() {
    let b = TestBroker::start().await;
    let h = header(&b).to_string();
    for p in ["[]", "\"x\"", "1", "null"] {
        refused(&b, &b.issuer().sign_raw(&h, p), "invalid_request").await;
        refused(
            &b,
            &b.issuer().sign_raw(p, &good_claims(&b).to_string()),
            "invalid_request",
        )
        .await;
    }
}

#[tokio::test]
async fn a09_duplicate_member_names() {
    let b = TestBroker::start().await;
    let k = b.issuer().signer();
    let h = format!(r#"{{"alg":"RS256","kid":"{}","alg":"none"}}"#, k.kid());
    refused(
        &b,
        &b.issuer().sign_raw(&h, &good_claims(&b).to_string()),
        "invalid_request",
    )
    .await;
    let c = good_claims(&b).to_string();
    let dup = format!("{},\"sub\":\"admin\"}}", &c[..c.len() - 1]);
    refused(
        &b,
        &b.issuer().sign_raw(&header(&b).to_string(), &dup),
        "invalid_request",
    )
    .await;
}

#[tokio::test]
async fn a10_case_variant_registered_names() {
    let b = TestBroker::start().await;
    let mut c = good_claims(&b);
    c["Sub"] = "admin".into();
    refused(&b, &b.issuer().sign(&c), "invalid_request").await;
    let mut c = good_claims(&b);
    c["AUD"] = "tessera".into();
    refused(&b, &b.issuer().sign(&c), "invalid_request").await;
}

#[tokio::test]
async fn a11_deep_nesting_bounded() {
    let b = TestBroker::start().await;
    let c = good_claims(&b).to_string();
    let deep = format!(
        "{},\"x\":{}{}}}",
        &c[..c.len() - 1],
        "[".repeat(3000),
        "]".repeat(3000)
    );
    refused(
        &b,
        &b.issuer().sign_raw(&header(&b).to_string(), &deep),
        "invalid_request",
    )
    .await;
    accepted(&b, &b.ci_token()).await;
}

#[tokio::test]
async fn a12_oversized_subject_token_never_falls_back_to_the_certificate() {
    let b = TestBroker::start().await;
    for size in [9 * 1024, 60 * 1024] {
        let big = "a".repeat(size);
        // over mTLS: the broker must not fall back to the client certificate
        let (s, v) = b
            .token(
                &b.agent_client(),
                &[
                    ("grant_type", TE),
                    ("subject_token_type", JWT),
                    ("subject_token", &big),
                    ("audience", API),
                    ("scope", "tickets:read"),
                ],
            )
            .await;
        assert_eq!(s, 400);
        assert_eq!(v["error"], "invalid_request");
    }
    // 1 MiB: over the body cap
    let big = "a".repeat(1024 * 1024);
    let r = b
        .anon()
        .post(b.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&TestBroker::oidc_form(&big)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a13_huge_time_values_do_not_panic() {
    let b = TestBroker::start().await;
    for v in ["1e20", "9.3e18", "1.5e300", "18446744073709551615"] {
        for claim in ["exp", "iat", "nbf"] {
            let c = good_claims(&b).to_string();
            let raw = format!("{},\"{claim}x\":0}}", &c[..c.len() - 1])
                .replace(&format!("\"{claim}x\":0"), "\"zz\":0");
            let mut obj: Value = serde_json::from_str(&raw).unwrap();
            obj.as_object_mut().unwrap().remove(claim);
            let s = obj.to_string();
            let with = format!("{},\"{claim}\":{v}}}", &s[..s.len() - 1]);
            refused(
                &b,
                &b.issuer().sign_raw(&header(&b).to_string(), &with),
                "invalid_request",
            )
            .await;
        }
    }
    accepted(&b, &b.ci_token()).await;
}

#[tokio::test]
async fn a14_wrong_type_time_claims_are_not_absent() {
    let b = TestBroker::start().await;
    for v in [
        json!("9999999999"),
        json!(true),
        json!(null),
        json!({}),
        json!(-1),
    ] {
        for claim in ["exp", "nbf", "iat"] {
            let mut c = good_claims(&b);
            c[claim] = v.clone();
            refused(&b, &b.issuer().sign(&c), "invalid_request").await;
        }
    }
}

#[tokio::test]
async fn a15_malformed_aud() {
    let b = TestBroker::start().await;
    for v in [
        json!([]),
        json!([1]),
        json!([null]),
        json!({"a": 1}),
        json!(""),
    ] {
        let mut c = good_claims(&b);
        c["aud"] = v;
        refused(&b, &b.issuer().sign(&c), "invalid_request").await;
    }
}

// ---------------- B. Algorithm handling ----------------

#[tokio::test]
async fn b16_b17_alg_none_in_every_spelling() {
    let b = TestBroker::start().await;
    let c = b64(good_claims(&b).to_string().as_bytes());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = b64(json!({"alg": alg, "kid": b.issuer().signer().kid()})
            .to_string()
            .as_bytes());
        refused(&b, &format!("{h}.{c}."), "invalid_request").await;
        refused(&b, &format!("{h}.{c}.AAAA"), "invalid_request").await;
    }
}

fn hs256(key: &[u8], input: &str) -> String {
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    b64(aws_lc_rs::hmac::sign(&k, input.as_bytes()).as_ref())
}

#[tokio::test]
async fn b18_b19_hmac_key_confusion_and_weak_secrets() {
    let b = TestBroker::start().await;
    let k = b.issuer().signer();
    let jwk = k.public_jwk();
    let h = b64(json!({"alg": "HS256", "kid": k.kid(), "typ": "JWT"})
        .to_string()
        .as_bytes());
    let c = b64(good_claims(&b).to_string().as_bytes());
    let input = format!("{h}.{c}");
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    for secret in [
        jwk.to_string().into_bytes(),
        n,
        vec![],
        b"secret".to_vec(),
        b"password".to_vec(),
    ] {
        refused(
            &b,
            &format!("{input}.{}", hs256(&secret, &input)),
            "invalid_request",
        )
        .await;
    }
}

#[tokio::test]
async fn b20_b21_one_key_one_alg() {
    let b = TestBroker::start().await;
    let k = b.issuer().signer(); // RS256
    let c = good_claims(&b).to_string();
    for alg in ["PS256", "RS512", "ES256", "ES384", "EdDSA"] {
        let h = json!({"alg": alg, "kid": k.kid(), "typ": "JWT"}).to_string();
        refused(&b, &b.issuer().sign_raw(&h, &c), "invalid_request").await;
    }
}

#[tokio::test]
async fn b22_malformed_alg() {
    let b = TestBroker::start().await;
    let k = b.issuer().signer();
    let c = good_claims(&b).to_string();
    for alg in [json!(null), json!(["RS256"]), json!(0), json!(true)] {
        let h = json!({"alg": alg, "kid": k.kid()}).to_string();
        refused(&b, &b.issuer().sign_raw(&h, &c), "invalid_request").await;
    }
    let h = json!({"kid": k.kid()}).to_string();
    refused(&b, &b.issuer().sign_raw(&h, &c), "invalid_request").await;
}

#[test]
fn b23_config_refuses_none_and_hmac_allowlists() {
    for alg in ["none", "HS256", "HS512"] {
        let t = format!(
            "[[issuers]]\nname=\"x\"\nissuer=\"https://x\"\naudiences=[\"a\"]\nalgorithms=[\"{alg}\"]\n"
        );
        let e = tessera::config::Config::from_toml_str("t.toml", &t).unwrap_err();
        assert_eq!(e.key, "issuers[0].algorithms[0]");
    }
}

#[tokio::test]
async fn b24_eddsa_exact_identifier() {
    let b = TestBroker::start_with(Options {
        issuer_algorithm: SigningAlgorithm::EdDSA,
        ..Default::default()
    })
    .await;
    accepted(&b, &b.ci_token()).await;
    let k = b.issuer().signer();
    let c = good_claims(&b).to_string();
    for alg in ["Ed25519", "Ed448", "eddsa"] {
        let h = json!({"alg": alg, "kid": k.kid()}).to_string();
        refused(&b, &b.issuer().sign_raw(&h, &c), "invalid_request").await;
    }
}

// ---------------- C. Header parameters and key selection ----------------

#[tokio::test]
async fn c25_embedded_jwk_never_used() {
    let b = TestBroker::start().await;
    let rogue = TestIssuer::rogue_key(SigningAlgorithm::RS256).unwrap();
    let h = json!({"alg": "RS256", "kid": rogue.kid(), "jwk": rogue.public_jwk()}).to_string();
    refused(
        &b,
        &TestIssuer::sign_raw_with(&rogue, &h, &good_claims(&b).to_string()),
        "invalid_request",
    )
    .await;
    // even with the issuer's own kid
    let h = json!({"alg": "RS256", "kid": b.issuer().signer().kid(), "jwk": rogue.public_jwk()})
        .to_string();
    refused(
        &b,
        &TestIssuer::sign_raw_with(&rogue, &h, &good_claims(&b).to_string()),
        "invalid_request",
    )
    .await;
}

#[tokio::test]
async fn c26_c27_c28_jku_x5u_x5c_never_fetched() {
    let b = TestBroker::start().await;
    accepted(&b, &b.ci_token()).await;
    let hits = b.issuer().jwks_hits();
    let k = b.issuer().signer();
    let c = good_claims(&b).to_string();
    let jku = format!("{}/jwks", b.issuer().url);
    for (name, val) in [
        ("jku", json!(jku)),
        ("jku", json!("https://attacker.invalid/jwks.json")),
        ("x5u", json!("http://169.254.169.254/latest")),
        ("x5u", json!("file:///etc/passwd")),
        ("x5u", json!("http://127.0.0.1:6379/")),
        ("x5c", json!(["MIIBszCCAVmgAwIBAgIUEXAMPLE"])),
    ] {
        let mut h = json!({"alg": "RS256", "kid": k.kid()});
        h[name] = val;
        refused(
            &b,
            &b.issuer().sign_raw(&h.to_string(), &c),
            "invalid_request",
        )
        .await;
    }
    assert_eq!(
        b.issuer().jwks_hits(),
        hits,
        "no outbound request because of the input"
    );
}

#[tokio::test]
async fn c29_kid_injection_is_an_opaque_miss() {
    let b = TestBroker::start().await;
    accepted(&b, &b.ci_token()).await;
    let c = good_claims(&b).to_string();
    let long = "k".repeat(10_000);
    let kids = [
        "../../../../dev/null",
        "/dev/null",
        "",
        "/invalid_path",
        "|sleep 10",
        "| curl http://127.0.0.1:1",
        "x' UNION SELECT '1';--",
        &long,
        "\u{0}",
        "\r\nX-Injected: 1",
    ];
    let t = std::time::Instant::now();
    for kid in kids {
        let h = json!({"alg": "RS256", "kid": kid}).to_string();
        refused(&b, &b.issuer().sign_raw(&h, &c), "invalid_request").await;
    }
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "flat latency, no sleep"
    );
    assert!(
        b.issuer().jwks_hits() <= 2,
        "at most one refresh per cooldown"
    );
}

#[tokio::test]
async fn c30_f55_key_lookup_is_per_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let other = TestIssuer::start(dir.path(), SigningAlgorithm::RS256)
        .await
        .unwrap();
    let extra = format!(
        "[[issuers]]\nname = \"other\"\nissuer = \"{}\"\naudiences = [\"tessera\"]\njwks_uri = \"{}\"\nca = \"{}\"\n",
        other.url,
        other.jwks_uri(),
        other.ca_path.display()
    );
    let b = TestBroker::start_with(Options {
        extra,
        ..Default::default()
    })
    .await;
    // iss = our CI issuer, signed by the other trusted issuer with its kid
    let c = good_claims(&b);
    let h = json!({"alg": "RS256", "kid": other.signer().kid()}).to_string();
    refused(
        &b,
        &TestIssuer::sign_raw_with(&other.signer(), &h, &c.to_string()),
        "invalid_request",
    )
    .await;
    // F55: and the other way round: iss = other, signed with the CI issuer's key
    let mut c2 = c.clone();
    c2["iss"] = other.url.clone().into();
    refused(&b, &b.issuer().sign(&c2), "invalid_request").await;
}

#[tokio::test]
async fn c31_l116_bursts_of_random_kids_and_signatures_stay_cheap() {
    let b = TestBroker::start().await;
    accepted(&b, &b.ci_token()).await;
    assert_eq!(b.issuer().jwks_hits(), 1);
    let c = good_claims(&b).to_string();
    let random_kids = (0..200)
        .map(|i| {
            let h = json!({"alg": "RS256", "kid": format!("random-{i}")}).to_string();
            b.issuer().sign_raw(&h, &c)
        })
        .collect();
    for status in burst(&b, random_kids).await {
        assert_eq!(status, 400);
    }
    assert!(
        b.issuer().jwks_hits() <= 2,
        "hits: {}",
        b.issuer().jwks_hits()
    );
    // good keys were not evicted
    accepted(&b, &b.ci_token()).await;
    // L116: the known kid with random signatures: each is one cheap failed
    // verification, and no refetch.
    let hits = b.issuer().jwks_hits();
    let good = b.ci_token();
    let (signing_input, _) = good.rsplit_once('.').unwrap();
    let random_signatures = (0..200u32)
        .map(|i| {
            let sig: Vec<u8> = (0..256u32)
                .map(|j| (i.wrapping_mul(31).wrapping_add(j * 7) & 0xff) as u8)
                .collect();
            format!("{signing_input}.{}", b64(&sig))
        })
        .collect();
    for status in burst(&b, random_signatures).await {
        assert_eq!(status, 400);
    }
    assert_eq!(
        b.issuer().jwks_hits(),
        hits,
        "a bad signature never refetches"
    );
    accepted(&b, &b.ci_token()).await;
}

/// Presents every subject token at once (one task each); their statuses.
async fn burst(b: &TestBroker, subject_tokens: Vec<String>) -> Vec<StatusCode> {
    let tasks: Vec<_> = subject_tokens
        .into_iter()
        .map(|st| {
            let client = b.anon();
            let url = b.url("/token");
            tokio::spawn(async move {
                client
                    .post(url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(encode_form(&TestBroker::oidc_form(&st)))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn c32_no_kid_with_several_keys_is_refused() {
    let b = TestBroker::start().await;
    let c = good_claims(&b).to_string();
    // one published key: a token without kid is accepted
    let h = json!({"alg": "RS256"}).to_string();
    accepted(&b, &b.issuer().sign_raw(&h, &c)).await;
    // after rotation two keys are published: no try-every-key
    b.issuer().rotate(SigningAlgorithm::RS256).unwrap();
    let b2 = TestBroker::start_with(Options::default()).await; // fresh cache
    let _ = b2;
    let h = json!({"alg": "RS256"}).to_string();
    let dir = tempfile::tempdir().unwrap();
    let iss = TestIssuer::start(dir.path(), SigningAlgorithm::RS256)
        .await
        .unwrap();
    iss.rotate(SigningAlgorithm::RS256).unwrap();
    let extra = format!(
        "[[issuers]]\nname = \"two\"\nissuer = \"{}\"\naudiences = [\"tessera\"]\njwks_uri = \"{}\"\nca = \"{}\"\n\n[[policies]]\nname = \"two\"\nmatch = {{ issuer = \"two\" }}\naudiences = [\"a\"]\nscopes = [\"s\"]\n",
        iss.url,
        iss.jwks_uri(),
        iss.ca_path.display()
    );
    let b3 = TestBroker::start_with(Options {
        extra,
        ..Default::default()
    })
    .await;
    let claims = iss.claims("x", "tessera");
    let st = iss.sign_raw(&h, &claims.to_string());
    let (s, v) = b3
        .token(
            &b3.anon(),
            &[
                ("grant_type", TE),
                ("subject_token_type", JWT),
                ("subject_token", &st),
                ("audience", "a"),
                ("scope", "s"),
            ],
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_request"))
    );
    // with its kid it works
    let st = iss.sign(&claims);
    let (s, _) = b3
        .token(
            &b3.anon(),
            &[
                ("grant_type", TE),
                ("subject_token_type", JWT),
                ("subject_token", &st),
                ("audience", "a"),
                ("scope", "s"),
            ],
        )
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn c34_c35_c36_c37_forbidden_header_parameters() {
    let b = TestBroker::start().await;
    let k = b.issuer().signer();
    let c = good_claims(&b).to_string();
    for (name, val) in [
        ("crit", json!(["x-unknown"])),
        ("crit", json!([])),
        ("crit", json!("b64")),
        ("crit", json!([1])),
        ("crit", json!(["kid"])),
        ("crit", json!(["exp"])),
        ("b64", json!(false)),
        ("zip", json!("DEF")),
        ("enc", json!("A128GCM")),
        ("p2c", json!(2_000_000_000u64)),
        ("epk", json!({"kty": "EC"})),
        ("cty", json!("JWT")),
    ] {
        let mut h = json!({"alg": "RS256", "kid": k.kid()});
        h[name] = val;
        refused(
            &b,
            &b.issuer().sign_raw(&h.to_string(), &c),
            "invalid_request",
        )
        .await;
    }
}

// ---------------- D. Signature and cryptographic edge cases ----------------

#[tokio::test]
async fn d38_d40_ecdsa_signature_edge_cases() {
    let b = TestBroker::start_with(Options {
        issuer_algorithm: SigningAlgorithm::ES256,
        ..Default::default()
    })
    .await;
    let good = b.ci_token();
    accepted(&b, &b.ci_token()).await;
    let p: Vec<&str> = good.split('.').collect();
    let input = format!("{}.{}", p[0], p[1]);
    let sig = URL_SAFE_NO_PAD.decode(p[2]).unwrap();
    assert_eq!(sig.len(), 64);
    // r = s = 0 (psychic signature)
    refused(
        &b,
        &format!("{input}.{}", b64(&[0u8; 64])),
        "invalid_request",
    )
    .await;
    // r = n, s = n
    let n = hex32("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551");
    let mut rn = n.to_vec();
    rn.extend_from_slice(&n);
    refused(&b, &format!("{input}.{}", b64(&rn)), "invalid_request").await;
    // r = 0 with a valid s
    let mut r0 = vec![0u8; 32];
    r0.extend_from_slice(&sig[32..]);
    refused(&b, &format!("{input}.{}", b64(&r0)), "invalid_request").await;
    // DER-encoded signature instead of raw r||s
    let der = der_ecdsa(&sig[..32], &sig[32..]);
    refused(&b, &format!("{input}.{}", b64(&der)), "invalid_request").await;
    // 96-byte signature
    let mut long = sig.clone();
    long.extend_from_slice(&[0u8; 32]);
    refused(&b, &format!("{input}.{}", b64(&long)), "invalid_request").await;
}

fn hex32(h: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn der_ecdsa(r: &[u8], s: &[u8]) -> Vec<u8> {
    fn int(x: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = x.iter().copied().skip_while(|b| *b == 0).collect();
        if v.first().is_some_and(|b| *b & 0x80 != 0) {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    }
    let body: Vec<u8> = int(r).into_iter().chain(int(s)).collect();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

/// n - s over 32-byte big-endian numbers.
fn neg_mod_n(s: &[u8]) -> Vec<u8> {
    let n = hex32("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551");
    let mut out = vec![0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = n[i] as i16 - s[i] as i16 - borrow;
        borrow = if d < 0 {
            d += 256;
            1
        } else {
            0
        };
        out[i] = d as u8;
    }
    out
}

#[tokio::test]
async fn d39_high_s_twin_is_the_same_token_for_replay() {
    let b = TestBroker::start_with(Options {
        issuer_algorithm: SigningAlgorithm::ES256,
        issuer_extra: "single_use = true".into(),
        ..Default::default()
    })
    .await;
    let good = b.ci_token();
    let p: Vec<&str> = good.split('.').collect();
    let sig = URL_SAFE_NO_PAD.decode(p[2]).unwrap();
    let mut twin = sig[..32].to_vec();
    twin.extend(neg_mod_n(&sig[32..]));
    let twin_token = format!("{}.{}.{}", p[0], p[1], b64(&twin));
    accepted(&b, &good).await;
    // whether or not the crypto accepts the malleated twin, it is not a new token
    refused(&b, &twin_token, "invalid_request").await;
}

#[tokio::test]
async fn d44_integrity() {
    let b = TestBroker::start().await;
    let good = b.ci_token();
    let p: Vec<&str> = good.split('.').collect();
    // header changed after signing
    let mut h = header(&b);
    h["typ"] = "at+jwt".into();
    refused(
        &b,
        &format!("{}.{}.{}", b64(h.to_string().as_bytes()), p[1], p[2]),
        "invalid_request",
    )
    .await;
    // payload bit flip
    let mut payload = URL_SAFE_NO_PAD.decode(p[1]).unwrap();
    let last = payload.len() - 3;
    payload[last] ^= 0x01;
    refused(
        &b,
        &format!("{}.{}.{}", p[0], b64(&payload), p[2]),
        "invalid_request",
    )
    .await;
    // last 4 signature characters cut
    refused(&b, &good[..good.len() - 4], "invalid_request").await;
    // signed by an unpublished key under the issuer's kid
    let rogue = TestIssuer::rogue_key(SigningAlgorithm::RS256).unwrap();
    refused(
        &b,
        &TestIssuer::sign_raw_with(
            &rogue,
            &header(&b).to_string(),
            &good_claims(&b).to_string(),
        ),
        "invalid_request",
    )
    .await;
}

// ---------------- E. Claims and time ----------------

#[tokio::test]
async fn e46_e47_e48_e49_time_rules() {
    let b = TestBroker::start().await;
    let n = now();
    // expired beyond the 30 s leeway
    let mut c = good_claims(&b);
    c["exp"] = (n - 31).into();
    refused(&b, &b.issuer().sign(&c), "invalid_request").await;
    // expired within the leeway: the token is valid, but a minted token may
    // never outlive it, so there is no lifetime left: still refused
    let mut c = good_claims(&b);
    c["exp"] = (n - 10).into();
    refused(&b, &b.issuer().sign(&c), "invalid_request").await;
    // exp absent (legacy Kubernetes secret tokens)
    let mut c = good_claims(&b);
    c.as_object_mut().unwrap().remove("exp");
    refused(&b, &b.issuer().sign(&c), "invalid_request").await;
    // nbf / iat in the future beyond leeway
    for claim in ["nbf", "iat"] {
        let mut c = good_claims(&b);
        c[claim] = (n + 120).into();
        refused(&b, &b.issuer().sign(&c), "invalid_request").await;
    }
    // lifetime over the issuer's cap (24 h)
    let mut c = good_claims(&b);
    c["exp"] = (n + 25 * 3600).into();
    refused(&b, &b.issuer().sign(&c), "invalid_request").await;
    // within the leeway on nbf: fine
    let mut c = good_claims(&b);
    c["nbf"] = (n + 10).into();
    accepted(&b, &b.issuer().sign(&c)).await;
}

#[tokio::test]
async fn e50_single_use_issuer_rejects_replayed_jti() {
    let b = TestBroker::start_with(Options {
        issuer_extra: "single_use = true".into(),
        ..Default::default()
    })
    .await;
    let st = b.ci_token();
    accepted(&b, &st).await;
    refused(&b, &st, "invalid_request").await;
    // a different token with a new jti is fine
    accepted(&b, &b.ci_token()).await;
    // without single_use both succeed with distinct minted jti
    let b2 = TestBroker::start().await;
    let st = b2.ci_token();
    let v1 = accepted(&b2, &st).await;
    let v2 = accepted(&b2, &st).await;
    let j1 = decode(v1["access_token"].as_str().unwrap()).1["jti"].clone();
    let j2 = decode(v2["access_token"].as_str().unwrap()).1["jti"].clone();
    assert_ne!(j1, j2);
}

#[tokio::test]
async fn e51_lookalike_subjects_match_no_policy() {
    let b = TestBroker::start().await;
    for sub in [
        "repo：acme/app:ref:refs/heads/main",
        "repo:acmе/app:ref:refs/heads/main",
        "repo:acme/app :ref:refs/heads/main",
        "repo:acme/app\t:ref:refs/heads/main",
        " repo:acme/app:ref:refs/heads/main",
        "repo:acme/app\u{0}:ref",
        "repo:acme/app:\u{202E}niam",
        "REPO:acme/app:ref:refs/heads/main",
    ] {
        let mut c = good_claims(&b);
        c["sub"] = sub.into();
        refused(&b, &b.issuer().sign(&c), "invalid_request").await;
    }
}

#[tokio::test]
async fn e52_e53_claim_conditions_are_literal_and_never_wildcards() {
    let b = TestBroker::start().await;
    for v in [
        json!("*"),
        json!("pro*"),
        json!(".*"),
        json!(null),
        json!(true),
        json!(0),
        json!(""),
        json!(["staging"]),
    ] {
        let mut c = good_claims(&b);
        c["env"] = v;
        refused(&b, &b.issuer().sign(&c), "invalid_request").await;
    }
    let mut c = good_claims(&b);
    c.as_object_mut().unwrap().remove("env");
    refused(&b, &b.issuer().sign(&c), "invalid_request").await;
    // an array claim matches when one element matches
    let mut c = good_claims(&b);
    c["env"] = json!(["staging", "prod"]);
    accepted(&b, &b.issuer().sign(&c)).await;
}

#[tokio::test]
async fn e54_upstream_act_claim_is_not_copied() {
    let b = TestBroker::start().await;
    let mut c = good_claims(&b);
    c["act"] = json!({"sub": "admin"});
    c["may_act"] = json!({"sub": "admin"});
    let v = accepted(&b, &b.issuer().sign(&c)).await;
    let (_, minted) = decode(v["access_token"].as_str().unwrap());
    assert!(minted.get("act").is_none());
    assert_eq!(minted["sub"], "repo:acme/app:ref:refs/heads/main");
}

// ---------------- F. Issuer, audience and type confusion ----------------

#[tokio::test]
async fn f56_f57_unknown_and_variant_issuers_without_outbound() {
    let b = TestBroker::start().await;
    let url = b.issuer().url.clone();
    let variants = [
        format!("{url}/"),
        url.replace("https://", "HTTPS://"),
        url.replace("https://", "http://"),
        url.replace("127.0.0.1", "localhost"),
        url.replace("https://", "https://user@"),
        "https://attacker.example".to_string(),
    ];
    for iss in variants {
        let mut c = good_claims(&b);
        c["iss"] = iss.into();
        refused(&b, &b.issuer().sign(&c), "invalid_request").await;
    }
    assert_eq!(
        b.issuer().jwks_hits() + b.issuer().discovery_hits(),
        0,
        "no outbound"
    );
}

#[tokio::test]
async fn f58_f59_f60_audience_binding() {
    let b = TestBroker::start().await;
    let mut c = good_claims(&b);
    c.as_object_mut().unwrap().remove("aud");
    refused(&b, &b.issuer().sign(&c), "invalid_request").await;
    let mut c = good_claims(&b);
    c["aud"] = json!(["x"]);
    refused(&b, &b.issuer().sign(&c), "invalid_request").await;
    for aud in ["https://kubernetes.default.svc", "https://github.com/acme"] {
        let mut c = good_claims(&b);
        c["aud"] = aud.into();
        refused(&b, &b.issuer().sign(&c), "invalid_request").await;
    }
    let mut c = good_claims(&b);
    c["aud"] = json!(["tessera", "x"]);
    accepted(&b, &b.issuer().sign(&c)).await;
}

#[tokio::test]
async fn f61_f62_f63_type_confusion() {
    let b = TestBroker::start().await;
    // a token minted by this broker presented as a subject token
    let (s, v) = b
        .token(
            &b.agent_client(),
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", API),
                ("scope", "tickets:read"),
            ],
        )
        .await;
    assert_eq!(s, 200);
    let minted = v["access_token"].as_str().unwrap().to_string();
    for tt in [JWT, ACCESS] {
        let (s, v) = b
            .token(
                &b.anon(),
                &[
                    ("grant_type", TE),
                    ("subject_token_type", tt),
                    ("subject_token", &minted),
                    ("audience", API),
                    ("scope", "tickets:read"),
                ],
            )
            .await;
        assert_eq!(
            (s.as_u16(), v["error"].as_str()),
            (400, Some("invalid_request"))
        );
    }
    // typ of another kind of token, signed by the trusted issuer
    for typ in [
        "at+jwt",
        "application/at+jwt",
        "secevent+jwt",
        "dpop+jwt",
        "logout+jwt",
    ] {
        let mut h = header(&b);
        h["typ"] = typ.into();
        refused(
            &b,
            &b.issuer()
                .sign_raw(&h.to_string(), &good_claims(&b).to_string()),
            "invalid_request",
        )
        .await;
    }
    // subject_token_type inconsistent / unknown / missing
    let st = b.ci_token();
    for tt in [
        Some(ACCESS),
        Some("urn:ietf:params:oauth:token-type:saml2"),
        Some("urn:x"),
        None,
    ] {
        let mut f = vec![
            ("grant_type", TE),
            ("subject_token", st.as_str()),
            ("audience", "https://deploy.example.com"),
            ("scope", "deploy:read"),
        ];
        if let Some(t) = tt {
            f.push(("subject_token_type", t));
        }
        let (s, v) = b.token(&b.anon(), &f).await;
        assert_eq!(
            (s.as_u16(), v["error"].as_str()),
            (400, Some("invalid_request")),
            "{tt:?}"
        );
    }
    // id_token type is accepted for an OIDC token
    let mut f = TestBroker::oidc_form(&st);
    f[1] = ("subject_token_type", ID_TOKEN);
    let (s, _) = b.token(&b.anon(), &f).await;
    assert_eq!(s, 200);
}

// ---------------- G. RFC 8693 protocol and deny by default ----------------

#[tokio::test]
async fn g64_grant_types() {
    let b = TestBroker::start().await;
    let (s, v) = b
        .token(&b.anon(), &[("audience", API), ("scope", "a")])
        .await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_request"))
    );
    for g in [
        "password",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "authorization_code",
        "refresh_token",
    ] {
        let (s, v) = b
            .token(
                &b.anon(),
                &[("grant_type", g), ("audience", API), ("scope", "a")],
            )
            .await;
        assert_eq!(
            (s.as_u16(), v["error"].as_str()),
            (400, Some("unsupported_grant_type")),
            "{g}"
        );
    }
}

#[tokio::test]
async fn g65_repeated_parameters() {
    let b = TestBroker::start().await;
    let st = b.ci_token();
    for dup in [
        "grant_type",
        "subject_token",
        "subject_token_type",
        "scope",
        "task",
    ] {
        let mut f = TestBroker::oidc_form(&st);
        let v = f
            .iter()
            .find(|(k, _)| *k == dup)
            .map(|(_, v)| *v)
            .unwrap_or("t1");
        f.push((dup, v));
        if dup == "task" {
            f.push(("task", "t1"));
        }
        let (s, body) = b.token(&b.anon(), &f).await;
        assert_eq!(
            (s.as_u16(), body["error"].as_str()),
            (400, Some("invalid_request")),
            "{dup}"
        );
    }
    let mut f = TestBroker::oidc_form(&st);
    f.push(("actor_token", "a"));
    f.push(("actor_token", "b"));
    f.push(("actor_token_type", JWT));
    let (s, _) = b.token(&b.anon(), &f).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn g66_more_than_one_target() {
    let b = TestBroker::start().await;
    let st = b.ci_token();
    let mut f = TestBroker::oidc_form(&st);
    f.push(("audience", "https://other.example.com"));
    let (s, v) = b.token(&b.anon(), &f).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_target"))
    );
    let mut f = TestBroker::oidc_form(&st);
    f.push(("resource", "https://deploy.example.com"));
    let (s, v) = b.token(&b.anon(), &f).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_target"))
    );
    // resource alone is a target
    let mut f = TestBroker::oidc_form(&st);
    f[3] = ("resource", "https://deploy.example.com");
    let (s, _) = b.token(&b.anon(), &f).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn g67_transport_rules() {
    let b = TestBroker::start().await;
    let st = b.ci_token();
    let form = encode_form(&TestBroker::oidc_form(&st));
    let c = b.anon();
    // parameters in the query string
    let r = c
        .post(format!("{}?{form}", b.url("/token")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(format!("{}?x=1", b.url("/token")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // JSON, multipart, odd charset, no content type
    for ct in [
        Some("application/json"),
        Some("multipart/form-data; boundary=x"),
        Some("application/x-www-form-urlencoded; charset=iso-8859-1"),
        Some("text/plain"),
        None,
    ] {
        let mut rb = c.post(b.url("/token")).body(form.clone());
        if let Some(ct) = ct {
            rb = rb.header("content-type", ct);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 400, "{ct:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "invalid_request");
    }
    // GET
    let r = c.get(b.url("/token")).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn g68_audience_exact_match() {
    let b = TestBroker::start().await;
    for aud in [
        "*",
        "https://api.example.com/",
        "HTTPS://API.EXAMPLE.COM",
        "https://api.example.com/.",
        "https://user@api.example.com",
        "https://api.example.com#frag",
        "api.example.com",
    ] {
        let (s, v) = b
            .token(
                &b.agent_client(),
                &[
                    ("grant_type", TE),
                    ("subject_token_type", MTLS),
                    ("audience", aud),
                    ("scope", "tickets:read"),
                ],
            )
            .await;
        assert_eq!(
            (s.as_u16(), v["error"].as_str()),
            (400, Some("invalid_target")),
            "{aud}"
        );
    }
    // empty audience is treated as omitted: no target
    let (s, v) = b
        .token(
            &b.agent_client(),
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", ""),
                ("scope", "tickets:read"),
            ],
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_target"))
    );
}

#[tokio::test]
async fn g69_scope_superset_is_rejected_not_narrowed() {
    let b = TestBroker::start().await;
    let (s, v) = b
        .token(
            &b.agent_client(),
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", API),
                ("scope", "tickets:read tickets:write admin"),
            ],
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_scope"))
    );
}

#[tokio::test]
async fn g70_no_matching_policy_is_generic() {
    let b = TestBroker::start().await;
    let other =
        b.ca.issue(&LeafSpec::client_spiffe(
            "spiffe://example.org/service/unknown",
        ))
        .unwrap();
    let c = b.client(Some(&other));
    let (s, v) = b
        .token(
            &c,
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", API),
                ("scope", "tickets:read"),
            ],
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let body = v.to_string();
    assert!(
        !body.contains("agent") && !body.contains("tickets") && !body.contains("example"),
        "no policy echo: {body}"
    );
}

#[tokio::test]
async fn g74_actor_token_pairing() {
    let b = TestBroker::start().await;
    let st = b.ci_token();
    let mut f = TestBroker::oidc_form(&st);
    f.push(("actor_token", "x.y.z"));
    let (s, v) = b.token(&b.anon(), &f).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let mut f = TestBroker::oidc_form(&st);
    f.push(("actor_token_type", JWT));
    let (s, v) = b.token(&b.anon(), &f).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_request"))
    );
}

#[tokio::test]
async fn g77_lifetime_caps() {
    let b = TestBroker::start().await;
    let mut c = good_claims(&b);
    c["exp"] = (now() + 60).into();
    let st = b.issuer().sign(&c);
    let mut f = TestBroker::oidc_form(&st);
    f.push(("expires_in", "900"));
    let (s, v) = b.token(&b.anon(), &f).await;
    assert_eq!(s, 200);
    let ei = v["expires_in"].as_u64().unwrap();
    assert!(ei <= 60, "expires_in tells the truth: {ei}");
    let (_, claims) = decode(v["access_token"].as_str().unwrap());
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(
        claims["exp"].as_u64().unwrap(),
        c["exp"].as_u64().unwrap().min(iat + 300)
    );
    assert_eq!(claims["exp"].as_u64().unwrap() - iat, ei);
}

/// P2 / I1: a token obtained with a client certificate never outlives the
/// certificate (`notAfter`), whatever the policy would allow.
#[tokio::test]
async fn g77_certificate_not_after_caps_the_lifetime() {
    let b = TestBroker::start().await;
    let not_after = std::time::SystemTime::now() + std::time::Duration::from_secs(90);
    let short =
        b.ca.issue(&LeafSpec::client_spiffe(AGENT).valid_between(
            std::time::SystemTime::now() - std::time::Duration::from_secs(60),
            not_after,
        ))
        .unwrap();
    let f = [
        ("grant_type", TE),
        ("subject_token_type", MTLS),
        ("audience", API),
        ("scope", "tickets:read"),
        ("expires_in", "600"),
    ];
    let (s, v) = b.token(&b.client(Some(&short)), &f).await;
    assert_eq!(s, 200, "{v}");
    let (_, claims) = decode(v["access_token"].as_str().unwrap());
    let cert_end = not_after
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp <= cert_end, "exp {exp} outlives notAfter {cert_end}");
    assert!(v["expires_in"].as_u64().unwrap() <= 90);
    // the same identity with a long-lived certificate gets the policy's 5 min
    let (s, v) = b.token(&b.agent_client(), &f).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["expires_in"].as_u64().unwrap() > 200);
}

#[tokio::test]
async fn g78_no_refresh_tokens() {
    let b = TestBroker::start().await;
    let (s, v) = b
        .token(
            &b.agent_client(),
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", API),
                ("scope", "tickets:read"),
                (
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:refresh_token",
                ),
            ],
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (s, v) = b
        .token(
            &b.agent_client(),
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", API),
                ("scope", "tickets:read"),
            ],
        )
        .await;
    assert_eq!(s, 200);
    assert!(v.get("refresh_token").is_none());
}

#[tokio::test]
async fn g79_two_client_authentication_mechanisms() {
    let b = TestBroker::start().await;
    let r = b
        .agent_client()
        .post(b.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .body(encode_form(&[
            ("grant_type", TE),
            ("subject_token_type", MTLS),
            ("audience", API),
            ("scope", "tickets:read"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_request");
}

#[tokio::test]
async fn g80_binding_required_refuses_unauthenticated_callers() {
    let policies = DEFAULT_POLICIES.replace(
        "max_ttl = \"5m\"",
        "max_ttl = \"5m\"\nrequire_binding = true",
    );
    let b = TestBroker::start_with(Options {
        policies,
        ..Default::default()
    })
    .await;
    let st = b.ci_token();
    let (s, v) = b.token(&b.anon(), &TestBroker::oidc_form(&st)).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (s, _) = b
        .token(&b.agent_client(), &TestBroker::oidc_form(&st))
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn g81_g82_g84_github_style_globs() {
    let policies = r#"
[[policies]]
name = "gh"
match = { issuer = "ci", subject = "repo:acme/app:ref:refs/heads/main", claims = { "repository_id" = "123" } }
audiences = ["https://deploy.example.com"]
scopes = ["deploy:read"]
"#;
    let b = TestBroker::start_with(Options {
        policies: policies.into(),
        ..Default::default()
    })
    .await;
    let mk = |sub: &str, rid: Value| {
        let mut c = b.issuer().claims(sub, "tessera");
        if !rid.is_null() {
            c["repository_id"] = rid;
        }
        b.issuer().sign(&c)
    };
    accepted(&b, &mk("repo:acme/app:ref:refs/heads/main", json!("123"))).await;
    for (sub, rid) in [
        ("repo:acme/app-evil:ref:refs/heads/main", json!("123")),
        ("repo:acme/app:pull_request", json!("123")),
        ("repo:AcMe/App:ref:refs/heads/main", json!("123")),
        ("repo:acme/app:ref:refs/heads/main", json!("999")), // G82: re-registered name, other id
        ("repo:acme/app:ref:refs/heads/main", Value::Null),  // G84: claim missing
    ] {
        refused(&b, &mk(sub, rid), "invalid_request").await;
    }
}

/// G83: CI tokens from the wrong kind of run (a self-hosted runner, a
/// `pull_request_target` event, an unpinned reusable workflow) are refused
/// when the rule requires those attributes. (The Kubernetes half of #83,
/// a deleted pod or service account, needs TokenReview, which Tessera
/// does not call: projected tokens are accepted until their short `exp`.)
#[tokio::test]
async fn g83_ci_run_attributes_are_enforced_when_required() {
    let policies = r#"
[[policies]]
name = "gh-deploy"
owner = "bob@example.com"
match = { issuer = "ci", subject = "repo:acme/app:ref:refs/heads/main", claims = { "runner_environment" = "github-hosted", "event_name" = "push", "job_workflow_ref" = "acme/app/.github/workflows/deploy.yml@refs/heads/main" } }
audiences = ["https://deploy.example.com"]
scopes = ["deploy:read"]
"#;
    let b = TestBroker::start_with(Options {
        policies: policies.into(),
        ..Default::default()
    })
    .await;
    let mk = |field: &str, value: Value| {
        let mut c = b
            .issuer()
            .claims("repo:acme/app:ref:refs/heads/main", "tessera");
        c["runner_environment"] = "github-hosted".into();
        c["event_name"] = "push".into();
        c["job_workflow_ref"] = "acme/app/.github/workflows/deploy.yml@refs/heads/main".into();
        if value.is_null() {
            c.as_object_mut().unwrap().remove(field);
        } else {
            c[field] = value;
        }
        b.issuer().sign(&c)
    };
    accepted(&b, &mk("none", Value::Null)).await;
    for (field, value) in [
        ("runner_environment", json!("self-hosted")),
        ("runner_environment", Value::Null),
        ("event_name", json!("pull_request_target")),
        ("event_name", json!("workflow_dispatch")),
        (
            "job_workflow_ref",
            json!("acme/app/.github/workflows/deploy.yml@refs/heads/feature"),
        ),
        (
            "job_workflow_ref",
            json!("evil/fork/.github/workflows/deploy.yml@refs/heads/main"),
        ),
    ] {
        refused(&b, &mk(field, value.clone()), "invalid_request").await;
    }
}

// ---------------- I. mTLS and X.509-SVID ----------------

async fn handshake_fails(b: &TestBroker, cert: &tessera::pki::IssuedCert) {
    let r = b.client(Some(cert)).get(b.url("/jwks.json")).send().await;
    assert!(
        r.is_err(),
        "handshake must fail, got {:?}",
        r.map(|r| r.status())
    );
}

async fn mtls_status(b: &TestBroker, cert: &tessera::pki::IssuedCert) -> (u16, Value) {
    let (s, v) = b
        .token(
            &b.client(Some(cert)),
            &[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", API),
                ("scope", "tickets:read"),
            ],
        )
        .await;
    (s.as_u16(), v)
}

#[tokio::test]
async fn i92_certificate_from_an_untrusted_ca_fails_the_handshake() {
    let b = TestBroker::start().await;
    let rogue_ca = tessera::pki::Ca::generate("rogue").unwrap();
    let rogue = rogue_ca.issue(&LeafSpec::client_spiffe(AGENT)).unwrap();
    handshake_fails(&b, &rogue).await;
    // the server keeps serving good clients
    assert_eq!(mtls_status(&b, &b.agent).await.0, 200);
}

#[tokio::test]
async fn i94_uri_san_rules() {
    let b = TestBroker::start().await;
    let two = b
        .ca
        .issue(&LeafSpec::client_spiffe(AGENT).with_extra_uri("spiffe://example.org/agent/other"))
        .unwrap();
    let https =
        b.ca.issue(&LeafSpec::client_spiffe("https://example.org/agent/demo"))
            .unwrap();
    let cn_only =
        b.ca.issue(&LeafSpec::new("spiffe://example.org/agent/demo").client_auth_only())
            .unwrap();
    for c in [&two, &https, &cn_only] {
        let (s, v) = mtls_status(&b, c).await;
        assert_eq!((s, v["error"].as_str()), (401, Some("invalid_client")));
    }
    // no URI SAN: the first DNS SAN is the identity (no policy for it here)
    let dns =
        b.ca.issue(&LeafSpec::client_dns("worker.example.org"))
            .unwrap();
    let (s, v) = mtls_status(&b, &dns).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")));
}

#[tokio::test]
async fn i95_leaf_key_usage_and_ca_flag() {
    let b = TestBroker::start().await;
    let ca_leaf =
        b.ca.issue(&LeafSpec::client_spiffe(AGENT).with_ca_flag())
            .unwrap();
    let r = b
        .client(Some(&ca_leaf))
        .post(b.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&[
            ("grant_type", TE),
            ("subject_token_type", MTLS),
            ("audience", API),
            ("scope", "tickets:read"),
        ]))
        .send()
        .await;
    match r {
        Err(_) => {} // handshake failure (webpki: CA used as end entity)
        Ok(r) => assert_eq!(r.status(), 401),
    }
    for spec in [
        LeafSpec::client_spiffe(AGENT).with_key_cert_sign(),
        LeafSpec::client_spiffe(AGENT).without_digital_signature(),
    ] {
        let c = b.ca.issue(&spec).unwrap();
        match b
            .client(Some(&c))
            .post(b.url("/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode_form(&[
                ("grant_type", TE),
                ("subject_token_type", MTLS),
                ("audience", API),
                ("scope", "tickets:read"),
            ]))
            .send()
            .await
        {
            Err(_) => {}
            Ok(r) => {
                assert_eq!(r.status(), 401);
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["error"], "invalid_client");
            }
        }
    }
}

#[tokio::test]
async fn i96_extended_key_usage() {
    let b = TestBroker::start().await;
    let server_only =
        b.ca.issue(&LeafSpec::client_spiffe(AGENT).server_auth_only())
            .unwrap();
    handshake_fails(&b, &server_only).await;
    // no EKU extension passes (webpki RequiredIfPresent), documented
    let no_eku =
        b.ca.issue(&LeafSpec::client_spiffe(AGENT).without_eku())
            .unwrap();
    assert_eq!(mtls_status(&b, &no_eku).await.0, 200);
}

#[tokio::test]
async fn i97_spiffe_id_syntax_in_the_certificate() {
    let b = TestBroker::start().await;
    for id in [
        "spiffe://example.org",
        "spiffe://example.org/",
        "spiffe://example.org/agent/../admin",
        "spiffe://EXAMPLE.org/agent/demo",
        "spiffe://example.org/agent%2Fdemo",
        "spiffe://example.org:443/agent/demo",
    ] {
        let c = match b.ca.issue(&LeafSpec::client_spiffe(id)) {
            Ok(c) => c,
            Err(_) => continue, // not even encodable as a URI SAN
        };
        let (s, v) = mtls_status(&b, &c).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (401, Some("invalid_client")),
            "{id}"
        );
    }
}

#[tokio::test]
async fn i98_expired_and_not_yet_valid_certificates() {
    let b = TestBroker::start().await;
    handshake_fails(
        &b,
        &b.ca
            .issue(&LeafSpec::client_spiffe(AGENT).expired())
            .unwrap(),
    )
    .await;
    handshake_fails(
        &b,
        &b.ca
            .issue(&LeafSpec::client_spiffe(AGENT).not_yet_valid())
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn i103_j107_identity_headers_are_ignored() {
    let b = TestBroker::start().await;
    let r = b
        .anon()
        .post(b.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "x-forwarded-client-cert",
            "By=spiffe://example.org/agent/demo;Hash=abc;URI=spiffe://example.org/agent/demo",
        )
        .header("x-ssl-client-cert", "-----BEGIN CERTIFICATE-----")
        .header("client-cert", ":MIIB:")
        .body(encode_form(&[
            ("grant_type", TE),
            ("subject_token_type", MTLS),
            ("audience", API),
            ("scope", "tickets:read"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // and a JWT-path exchange carrying such headers gets no cnf (J107)
    let st = b.ci_token();
    let r = b
        .anon()
        .post(b.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-client-cert", "Hash=abc")
        .body(encode_form(&TestBroker::oidc_form(&st)))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let (_, c) = decode(v["access_token"].as_str().unwrap());
    assert!(c.get("cnf").is_none());
}

/// A rustls client for the broker limited to one protocol version, with
/// session resumption on (rustls' default in-memory store).
fn tls_client(
    b: &TestBroker,
    cert: Option<&tessera::pki::IssuedCert>,
    version: &'static rustls::SupportedProtocolVersion,
) -> std::sync::Arc<rustls::ClientConfig> {
    let identity = cert.map(|c| {
        (
            vec![rustls_pki_types::CertificateDer::from(c.cert_der.clone())],
            c,
        )
    });
    client_config(b, identity, version)
}

/// [`tls_client`] presenting `chain` (leaf first) with the key of a leaf.
fn client_config(
    b: &TestBroker,
    identity: Option<(
        Vec<rustls_pki_types::CertificateDer<'static>>,
        &tessera::pki::IssuedCert,
    )>,
    version: &'static rustls::SupportedProtocolVersion,
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(
            b.ca.cert_der().to_vec(),
        ))
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match identity {
        Some((chain, leaf)) => builder
            .with_client_auth_cert(
                chain,
                rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    std::sync::Arc::new(cfg)
}

/// One HTTP/1.1 request over a fresh TLS connection made with `cfg`: the
/// kind of handshake it took and the response's status line, or `None` when
/// the handshake failed. (With TLS 1.3 the server judges the client
/// certificate after the client thinks the handshake is done: a refused
/// certificate shows as an empty answer.)
async fn try_request(
    b: &TestBroker,
    cfg: std::sync::Arc<rustls::ClientConfig>,
) -> Option<(rustls::HandshakeKind, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .ok()?;
    let _ = tls
        .write_all(b"GET /jwks.json HTTP/1.1\r\nhost: broker\r\nconnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let kind = tls.get_ref().1.handshake_kind()?;
    let text = String::from_utf8_lossy(&out);
    Some((kind, text.lines().next().unwrap_or("").to_string()))
}

/// [`try_request`] that must complete its handshake.
async fn one_request(
    b: &TestBroker,
    cfg: std::sync::Arc<rustls::ClientConfig>,
) -> (rustls::HandshakeKind, String) {
    try_request(b, cfg).await.expect("the TLS handshake")
}

/// A TLS 1.3 mTLS handshake presenting `chain` (leaf first) with the key of
/// `leaf`; whether it was accepted, and how long it took.
async fn present_chain(
    b: &TestBroker,
    leaf: &tessera::pki::IssuedCert,
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
) -> (bool, std::time::Duration) {
    let cfg = client_config(b, Some((chain, leaf)), &rustls::version::TLS13);
    let t0 = std::time::Instant::now();
    let answer = try_request(b, cfg).await;
    let ok = answer.is_some_and(|(_, status)| status.starts_with("HTTP/1.1 200"));
    (ok, t0.elapsed())
}

/// I93: with `[server] trust_domains`, a CA can only vouch for its own
/// trust domain. example.org's CA asserting a partner.org ID, partner.org's
/// CA asserting an example.org ID, and an ID in a domain with no bundle all
/// fail the handshake; each CA's own IDs are accepted; a certificate without
/// a SPIFFE ID chains to `client_ca` only.
#[tokio::test]
async fn i93_a_ca_vouches_only_for_its_own_trust_domain() {
    let extra = tempfile::tempdir().unwrap();
    let partner = tessera::pki::Ca::generate("partner.org CA").unwrap();
    let partner_pem = extra.path().join("partner.pem");
    std::fs::write(&partner_pem, partner.cert_pem()).unwrap();
    let b = TestBroker::start_with(Options {
        server_extra: format!(
            "trust_domains = {{ \"example.org\" = [\"{{dir}}/ca.pem\"], \"partner.org\" = [\"{}\"] }}",
            partner_pem.display()
        ),
        ..Default::default()
    })
    .await;
    let accepted_chain = |leaf: &tessera::pki::IssuedCert| {
        let der = rustls_pki_types::CertificateDer::from(leaf.cert_der.clone());
        let leaf = leaf.clone();
        let b = &b;
        async move { present_chain(b, &leaf, vec![der]).await.0 }
    };
    let own = b.ca.issue(&LeafSpec::client_spiffe(AGENT)).unwrap();
    assert!(accepted_chain(&own).await, "example.org by its own CA");
    let theirs = partner
        .issue(&LeafSpec::client_spiffe("spiffe://partner.org/agent/x"))
        .unwrap();
    assert!(accepted_chain(&theirs).await, "partner.org by its own CA");
    for (what, leaf) in [
        (
            "example.org's CA asserting partner.org",
            b.ca.issue(&LeafSpec::client_spiffe("spiffe://partner.org/agent/x"))
                .unwrap(),
        ),
        (
            "partner.org's CA asserting example.org",
            partner.issue(&LeafSpec::client_spiffe(AGENT)).unwrap(),
        ),
        (
            "a trust domain without a bundle",
            b.ca.issue(&LeafSpec::client_spiffe("spiffe://other.org/agent/x"))
                .unwrap(),
        ),
        (
            "a DNS-named client from a CA outside client_ca",
            partner
                .issue(&LeafSpec::client_dns("svc.partner.org"))
                .unwrap(),
        ),
    ] {
        assert!(!accepted_chain(&leaf).await, "{what} must be refused");
    }
    let dns =
        b.ca.issue(&LeafSpec::client_dns("svc.example.org"))
            .unwrap();
    assert!(
        accepted_chain(&dns).await,
        "a DNS-named client from client_ca"
    );
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
}

/// I100: pathological client chains. A chain 50 sub-CAs deep, and a chain
/// with six cross-signed twins at each of four levels (1,296 paths, none
/// valid, ending at an untrusted root) are refused within the
/// path-building budget of rustls-webpki;
/// a normal two-level chain is accepted, and other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i100_pathological_chains_fail_within_budget() {
    use rustls_pki_types::CertificateDer;
    let b = TestBroker::start().await;
    // baseline: root -> sub -> leaf is accepted
    let sub = b.ca.issue_sub_ca("Sub 1").unwrap();
    let leaf = sub.issue(&LeafSpec::client_spiffe(AGENT)).unwrap();
    let chain = vec![
        CertificateDer::from(leaf.cert_der.clone()),
        CertificateDer::from(sub.cert_der().to_vec()),
    ];
    let (ok, _) = present_chain(&b, &leaf, chain).await;
    assert!(ok, "a normal chain through a sub-CA is accepted");

    // deep: 50 sub-CAs
    let mut cas = vec![b.ca.issue_sub_ca("Deep 1").unwrap()];
    for i in 2..=50 {
        let next = cas
            .last()
            .unwrap()
            .issue_sub_ca(&format!("Deep {i}"))
            .unwrap();
        cas.push(next);
    }
    let leaf = cas
        .last()
        .unwrap()
        .issue(&LeafSpec::client_spiffe(AGENT))
        .unwrap();
    let mut chain = vec![CertificateDer::from(leaf.cert_der.clone())];
    chain.extend(
        cas.iter()
            .rev()
            .map(|c| CertificateDer::from(c.cert_der().to_vec())),
    );
    let (ok, took) = present_chain(&b, &leaf, chain).await;
    assert!(!ok, "a 50-deep chain is refused");
    println!("50-deep chain refused in {took:?}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");

    // wide: four levels of cross-signed twins (six certificates for one
    // key and name at each level, each a valid signature), 6^4 = 1,296
    // paths, all ending at a root the broker does not trust
    let rogue = tessera::pki::Ca::generate("Rogue root").unwrap();
    let mut parent = rogue;
    let mut presented: Vec<CertificateDer<'static>> = Vec::new();
    for depth in 1..=4 {
        let name = format!("Twin {depth}");
        let key = parent.issue_sub_ca(&name).unwrap().key_pem().to_string();
        let twins: Vec<tessera::pki::Ca> = (0..6)
            .map(|_| parent.issue_sub_ca_with_key(&name, &key).unwrap())
            .collect();
        presented.extend(
            twins
                .iter()
                .map(|c| CertificateDer::from(c.cert_der().to_vec())),
        );
        parent = twins.into_iter().next().unwrap();
    }
    let leaf = parent.issue(&LeafSpec::client_spiffe(AGENT)).unwrap();
    let mut chain = vec![CertificateDer::from(leaf.cert_der.clone())];
    chain.extend(presented.into_iter().rev());
    let (ok, took) = present_chain(&b, &leaf, chain).await;
    assert!(!ok, "no valid path among the candidates");
    println!("wide chain refused in {took:?}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
}

/// I102: a resumed TLS session would carry the identity of its first
/// handshake past the leaf's expiry, revocation or CA removal. The broker
/// keeps no session state (no TLS 1.3 tickets, no TLS 1.2 cache): a client
/// that tries to resume gets a full handshake, and presents and verifies
/// its certificate again, every time.
#[tokio::test]
async fn i102_sessions_are_never_resumed() {
    let b = TestBroker::start().await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        for cert in [Some(&b.agent), None] {
            let cfg = tls_client(&b, cert, version);
            for attempt in 0..3 {
                let (kind, status) = one_request(&b, cfg.clone()).await;
                assert_eq!(status, "HTTP/1.1 200 OK");
                assert_eq!(
                    kind,
                    rustls::HandshakeKind::Full,
                    "{version:?}, client cert {}, attempt {attempt}",
                    cert.is_some()
                );
            }
        }
    }
}

/// Sends `bytes` to the broker's TLS port and returns what came back before
/// it closed (waiting at most `wait`).
async fn raw_tls_exchange(
    b: &TestBroker,
    chunks: &[Vec<u8>],
    wait: std::time::Duration,
) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    for c in chunks {
        if tcp.write_all(c).await.is_err() {
            break;
        }
        tcp.flush().await.unwrap();
    }
    let mut out = vec![0u8; 64 * 1024];
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + wait;
    while got < out.len() {
        match tokio::time::timeout_at(deadline, tcp.read(&mut out[got..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                got += n;
                // a ServerHello flight or an alert is all the test needs
                if got >= 6 {
                    break;
                }
            }
        }
    }
    out.truncate(got);
    out
}

/// The ClientHello a real rustls client sends, as one TLS record.
fn modern_client_hello(b: &TestBroker) -> Vec<u8> {
    let cfg = tls_client(b, None, &rustls::version::TLS13);
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    assert_eq!(out[0], 0x16, "a handshake record");
    out
}

/// A TLS 1.0 / 1.1 ClientHello (no supported_versions extension).
fn legacy_client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version);
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 4, 0xc0, 0x13, 0x00, 0x2f]); // two CBC suites
    body.extend_from_slice(&[1, 0]); // null compression
    let mut hs = vec![1u8, 0, 0, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, 0, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

/// I101: TLS 1.0 and 1.1 are refused with an alert; a ClientHello split
/// into many records, or into one-byte TCP segments, still completes; a
/// `close_notify` or garbage mid-handshake closes that connection only.
/// The broker keeps serving good clients (rustls does not implement
/// renegotiation, and TLS 1.3 post-handshake auth is never requested).
#[tokio::test]
async fn i101_old_versions_fragmented_hellos_and_aborted_handshakes() {
    const FIVE: std::time::Duration = std::time::Duration::from_secs(5);
    let b = TestBroker::start().await;
    for v in [[3u8, 1u8], [3, 2], [3, 0]] {
        let got = raw_tls_exchange(&b, &[legacy_client_hello(v)], FIVE).await;
        assert!(!got.is_empty(), "{v:?}: an alert, not silence");
        assert_eq!(got[0], 0x15, "{v:?}: an alert record, got {got:02x?}");
    }
    // A modern hello, re-framed as records of 7 bytes each.
    let hello = modern_client_hello(&b);
    let payload = &hello[5..];
    let mut reframed = Vec::new();
    for piece in payload.chunks(7) {
        reframed.extend_from_slice(&[0x16, 0x03, 0x01, 0, piece.len() as u8]);
        reframed.extend_from_slice(piece);
    }
    let got = raw_tls_exchange(&b, &[reframed], FIVE).await;
    assert!(
        got.len() >= 6 && got[0] == 0x16 && got[5] == 0x02,
        "a ServerHello for a fragmented ClientHello, got {got:02x?}"
    );
    // The same hello in one-byte TCP segments.
    let bytes: Vec<Vec<u8>> = hello.iter().map(|b| vec![*b]).collect();
    let got = raw_tls_exchange(&b, &bytes, FIVE).await;
    assert!(
        got.len() >= 6 && got[0] == 0x16 && got[5] == 0x02,
        "{got:02x?}"
    );
    // close_notify instead of a hello, half a hello then close_notify, and
    // an SSLv2-style hello.
    let close_notify = vec![0x15, 0x03, 0x03, 0, 2, 1, 0];
    let mut half = hello[..hello.len() / 2].to_vec();
    half.extend_from_slice(&close_notify);
    for junk in [
        close_notify.clone(),
        half,
        vec![0x80, 0x2e, 0x01, 0x03, 0x01, 0, 0x15, 0, 0, 0, 0x10],
    ] {
        let _ = raw_tls_exchange(&b, &[junk], std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
}

/// L114: HTTP/2 abuse on one connection: 10,000 streams opened and reset at
/// once (rapid reset), and more concurrent streams than allowed. The
/// server advertises its stream cap ([`tessera::server::MAX_H2_STREAMS`]),
/// ends an abusive connection (h2 ≥ 0.4.16 counts resets and sends
/// GOAWAY), and keeps serving other clients. (CONTINUATION floods are
/// bounded by the h2 crate's header-list limit; the lock file pins h2
/// 0.4.20.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l114_http2_rapid_reset_and_stream_floods() {
    let b = TestBroker::start().await;
    let mut cfg = (*tls_client(&b, Some(&b.agent), &rustls::version::TLS13)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = h2::client::Builder::new()
        .max_concurrent_reset_streams(100_000)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    // One whole request first, so the server's SETTINGS have arrived.
    send = send.ready().await.unwrap();
    let req = axum::http::Request::get(b.url("/jwks.json"))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    send = send.ready().await.unwrap();
    assert_eq!(
        send.current_max_send_streams(),
        tessera::server::MAX_H2_STREAMS as usize,
        "the server's stream cap"
    );
    let mut opened = 0u32;
    let mut ended = None;
    for _ in 0..10_000 {
        send = match send.ready().await {
            Ok(s) => s,
            Err(e) => {
                ended = Some(e.to_string());
                break;
            }
        };
        let req = axum::http::Request::post(b.url("/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(())
            .unwrap();
        match send.send_request(req, false) {
            Ok((resp, mut body)) => {
                opened += 1;
                // Reset at once: the rapid-reset pattern.
                body.send_reset(h2::Reason::CANCEL);
                drop(resp);
            }
            Err(e) => {
                ended = Some(e.to_string());
                break;
            }
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), driver).await;
    assert!(opened > 0, "streams were opened");
    println!("rapid reset: {opened} streams opened; connection ended: {ended:?}");
    assert!(
        opened < 10_000 && ended.is_some(),
        "the server ends a connection that resets stream after stream"
    );
    // Other clients are served, over HTTP/2 and HTTP/1.1.
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
    let h2c = tessera::testkit::https_client(b.ca.cert_der(), Some(&b.agent), true).unwrap();
    let r = h2c.get(b.url("/jwks.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
}

// ---------------- K. Published keys / L. limits ----------------

#[tokio::test]
async fn k111_jwks_hygiene_for_every_algorithm() {
    for alg in [
        SigningAlgorithm::ES256,
        SigningAlgorithm::EdDSA,
        SigningAlgorithm::RS256,
    ] {
        let b = TestBroker::start_with(Options {
            broker_algorithm: alg,
            with_issuer: false,
            ..Default::default()
        })
        .await;
        let v: Value = b
            .anon()
            .get(b.url("/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for k in v["keys"].as_array().unwrap() {
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(k.get(private).is_none(), "{private} published");
            }
            assert!(k["kid"].is_string());
            assert_eq!(k["alg"], alg.as_str());
            assert_eq!(k["use"], "sig");
        }
    }
}

#[tokio::test]
async fn l112_body_limit_is_global() {
    let b = TestBroker::start().await;
    let big = "a".repeat(70 * 1024);
    for path in ["/token", "/introspect", "/revoke", "/admin/v1/revocations"] {
        let r = b
            .agent_client()
            .post(b.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("x={big}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
    }
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
}

/// A TLS connection to the broker that has sent `bytes` and nothing more.
async fn stalled_connection(
    b: &TestBroker,
    bytes: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let cfg = tessera::jwks::http::tls_client_config(
        &[b.ca.cert_der().to_vec().into()],
        false,
        None,
        &[b"http/1.1"],
    )
    .unwrap();
    let port: u16 = b.url("").rsplit(':').next().unwrap().parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(bytes).await.unwrap();
    tls.flush().await.unwrap();
    tls
}

/// L113 slowloris: connections that dribble their headers are closed after
/// the header-read timeout, and good clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l113_slowloris_connections_are_cut_and_good_clients_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = TestBroker::start_with(Options {
        extra: "[limits]\nheader_read_timeout = \"1s\"\n".into(),
        ..Default::default()
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..30 {
        slow.push(stalled_connection(&b, b"POST /token HTTP/1.1\r\nHost: x\r\n").await);
    }
    let started = std::time::Instant::now();
    // Dribble one header byte every 200 ms on every connection, and watch
    // for the server closing it.
    let watchers: Vec<_> = slow
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let t0 = std::time::Instant::now();
                let mut buf = [0u8; 512];
                loop {
                    if c.write_all(b"X").await.is_err() {
                        return t0.elapsed();
                    }
                    match tokio::time::timeout(
                        std::time::Duration::from_millis(200),
                        c.read(&mut buf),
                    )
                    .await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
                        // 408 or similar: the server answered and closes.
                        Ok(Ok(_)) => return t0.elapsed(),
                        Err(_) => {}
                    }
                    if t0.elapsed() > std::time::Duration::from_secs(10) {
                        return t0.elapsed();
                    }
                }
            })
        })
        .collect();
    // Good clients are served while the slow ones hang on.
    for _ in 0..10 {
        assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    for w in watchers {
        let closed_after = w.await.unwrap();
        assert!(
            closed_after < std::time::Duration::from_secs(4),
            "a slowloris connection lived {closed_after:?} despite a 1 s header timeout"
        );
        assert!(
            closed_after > std::time::Duration::from_millis(500),
            "closed after {closed_after:?}: not by the header timeout"
        );
    }
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
}

/// L115: the pre-authentication limit keys on the peer address only and
/// answers 429 `slow_down` with `Retry-After`; the peer is served again once
/// its bucket refills. (Per-identity limits on *verified* identities are the
/// anomaly guard's.)
#[tokio::test]
async fn l115_pre_authentication_limit_is_per_peer() {
    let b = TestBroker::start_with(Options {
        extra: "[limits]\npeer_rate = 5\npeer_burst = 5\n".into(),
        ..Default::default()
    })
    .await;
    let c = b.agent_client();
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..12 {
        let r = c
            .post(b.url("/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=nonsense")
            .send()
            .await;
        match r {
            Ok(r) => {
                statuses.push(r.status().as_u16());
                if r.status() == 429 && limited.is_none() {
                    let retry = r.headers().get("retry-after").cloned();
                    let v: Value = r.json().await.unwrap();
                    limited = Some((retry, v));
                }
            }
            // A new connection beyond the rate is closed before TLS.
            Err(_) => statuses.push(0),
        }
    }
    assert!(
        statuses.iter().filter(|s| **s == 400).count() <= 5,
        "{statuses:?}"
    );
    let (retry, v) = limited.expect("no 429 within 12 fast requests");
    assert!(retry.is_some(), "Retry-After");
    assert_eq!(v["error"], "slow_down");
    // A refilled bucket serves the peer again.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(b.agent_token("tickets:read", None).await.0, 200);
    let m = reqwest::get(b.ops_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m
        .lines()
        .any(|l| l.starts_with("tessera_peer_rate_limited_total ") && !l.ends_with(" 0")));
}

/// Issue 21 item 5: a POST with a body to a path that answers early (404
/// unknown path, 405 wrong method, 413 over the body limit) gets a clean
/// answer over HTTP/2 every time. The server must not reset the stream with
/// an error code (curl: "(92) Stream error in the HTTP/2 framing layer")
/// before or after the answer: the body it did not read is either drained
/// or the stream is ended with RST_STREAM(NO_ERROR) after a complete
/// response (RFC 9113 §8.1). Bodies of several sizes, including more than
/// one flow-control window and more than `limits.max_body_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_early_answers_to_requests_with_bodies_are_clean() {
    let b = TestBroker::start().await;
    let mut cfg = (*tls_client(&b, Some(&b.agent), &rustls::version::TLS13)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let cfg = std::sync::Arc::new(cfg);
    let cases: [(&str, u16); 4] = [
        ("/nope", 404),
        ("/jwks.json", 405),
        ("/revocations", 405),
        ("/token", 413),
    ];
    let sizes = [1usize, 1024, 70_000, 200_000];
    let mut failures = Vec::new();
    let mut sent = 0;
    for (path, want) in cases {
        for &size in &sizes {
            if want == 413 && size <= 64 * 1024 {
                continue;
            }
            for (with_length, rep) in (0..25).map(|i| (i % 2 == 0, i)) {
                // A fresh connection now and then, and many streams on one.
                let send = h2_connect(&b, &cfg).await;
                for _ in 0..2 {
                    sent += 1;
                    // A declared length over the limit is refused first.
                    let want = if with_length && size > 64 * 1024 {
                        413
                    } else {
                        want
                    };
                    if let Err(e) = h2_post(&send, &b, path, size, with_length, want).await {
                        failures.push(format!("POST {path} ({size} bytes, #{rep}): {e}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} early answers were not clean:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

async fn h2_connect(
    b: &TestBroker,
    cfg: &std::sync::Arc<rustls::ClientConfig>,
) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    send
}

/// One POST of `size` bytes (at most the server's drain bound) on `send`:
/// the status must be `want`, the response body must end cleanly, and the
/// stream must not be reset.
async fn h2_post(
    send: &h2::client::SendRequest<bytes::Bytes>,
    b: &TestBroker,
    path: &str,
    size: usize,
    with_length: bool,
    want: u16,
) -> Result<(), String> {
    use std::time::Duration;
    let mut ready = send
        .clone()
        .ready()
        .await
        .map_err(|e| format!("ready: {e}"))?;
    let mut req = axum::http::Request::post(b.url(path))
        .header("content-type", "application/x-www-form-urlencoded");
    if with_length {
        req = req.header("content-length", size.to_string());
    }
    let (resp, mut tx) = ready
        .send_request(req.body(()).unwrap(), false)
        .map_err(|e| format!("send_request: {e}"))?;
    // The body goes out as flow control allows, while the answer is read.
    let upload = tokio::spawn(async move {
        let mut left = size;
        while left > 0 {
            let n = left.min(16 * 1024);
            tx.reserve_capacity(n);
            let granted = match std::future::poll_fn(|cx| tx.poll_capacity(cx)).await {
                Some(Ok(g)) => g.min(n),
                Some(Err(e)) => return (tx, Some(e)),
                None => return (tx, None),
            };
            if granted == 0 {
                continue;
            }
            left -= granted;
            if let Err(e) = tx.send_data(bytes::Bytes::from(vec![b'a'; granted]), left == 0) {
                return (tx, Some(e));
            }
        }
        (tx, None)
    });
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| format!("answer: {e}"))?;
    if resp.status().as_u16() != want {
        return Err(format!("status {} (want {want})", resp.status()));
    }
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("response body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    // The whole upload goes out and the stream ends without any
    // RST_STREAM: the server reads bodies up to its drain bound (curl 7.88
    // fails even on a NO_ERROR reset while it is still uploading).
    let (mut tx, upload_err) = tokio::time::timeout(Duration::from_secs(10), upload)
        .await
        .map_err(|_| "upload never ended".to_string())?
        .unwrap();
    if let Some(e) = upload_err {
        return Err(format!("upload: {e}"));
    }
    let reset = tokio::time::timeout(
        Duration::from_millis(20),
        std::future::poll_fn(|cx| tx.poll_reset(cx)),
    )
    .await;
    match reset {
        Ok(Ok(reason)) => return Err(format!("stream reset: {reason}")),
        Ok(Err(e)) if e.reason().is_some() => return Err(format!("stream reset: {e}")),
        _ => {}
    }
    Ok(())
}

/// An intermediate CA signed by `root` with the usual CA profile
/// (unconstrained `cA`, KeyUsage keyCertSign + cRLSign) changed by `edit`.
fn custom_intermediate(
    root: &tessera::pki::Ca,
    name: &str,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> tessera::pki::Ca {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    // The root as an rcgen issuer: its subject (a common name, as
    // `Ca::generate` writes it) and its key.
    let (_, root_x509) = x509_parser::parse_x509_certificate(root.cert_der()).unwrap();
    let root_cn = root_x509
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    let mut root_params = CertificateParams::default();
    root_params
        .distinguished_name
        .push(DnType::CommonName, root_cn);
    let issuer = rcgen::Issuer::new(root_params, KeyPair::from_pem(root.key_pem()).unwrap());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    edit(&mut params);
    let cert = params.signed_by(&key, &issuer).unwrap();
    tessera::pki::Ca::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
}

/// Issue 23 item 2 and its family (SECURITY.md "Certificate paths"): client
/// chains root → intermediate(s) → leaf, each judged at a real TLS
/// handshake. KeyUsage on intermediates (RFC 5280 §6.1.4 (n)), path length
/// constraints, a CA used as a leaf, EKU on intermediates and DNS name
/// constraints each have an accepted and a refused case; the refused
/// KeyUsage chain cannot get the agent a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_path_rules_are_enforced_at_the_handshake() {
    use rcgen::{ExtendedKeyUsagePurpose as Eku, GeneralSubtree, KeyUsagePurpose as Ku};
    use rustls_pki_types::CertificateDer;
    let b = TestBroker::start().await;
    let der = |d: &[u8]| CertificateDer::from(d.to_vec());
    let spiffe = LeafSpec::client_spiffe(AGENT);
    // (what, chain of CAs under the root, leaf spec, accepted?)
    let digital_only = custom_intermediate(&b.ca, "KU digitalSignature", |p| {
        p.key_usages = vec![Ku::DigitalSignature];
    });
    let no_ku = custom_intermediate(&b.ca, "no KU", |p| p.key_usages = vec![]);
    let good = custom_intermediate(&b.ca, "KU keyCertSign", |_| {});
    let len0 = b.ca.issue_intermediate("pathLen 0").unwrap();
    let under_len0 = len0.issue_sub_ca("under pathLen 0").unwrap();
    let eku_server = custom_intermediate(&b.ca, "EKU serverAuth", |p| {
        p.extended_key_usages = vec![Eku::ServerAuth];
    });
    let eku_client = custom_intermediate(&b.ca, "EKU clientAuth", |p| {
        p.extended_key_usages = vec![Eku::ClientAuth];
    });
    let dns_example = custom_intermediate(&b.ca, "permitted DNS example.org", |p| {
        p.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName("example.org".into())],
            excluded_subtrees: vec![],
        });
    });
    let cases: Vec<(&str, Vec<&tessera::pki::Ca>, LeafSpec, bool)> = vec![
        (
            "intermediate KU without keyCertSign",
            vec![&digital_only],
            spiffe.clone(),
            false,
        ),
        (
            "intermediate KU with keyCertSign",
            vec![&good],
            spiffe.clone(),
            true,
        ),
        (
            "intermediate without KU",
            vec![&no_ku],
            spiffe.clone(),
            true,
        ),
        (
            "pathLen 0 with a CA below it",
            vec![&len0, &under_len0],
            spiffe.clone(),
            false,
        ),
        (
            "pathLen 0 issuing the leaf",
            vec![&len0],
            spiffe.clone(),
            true,
        ),
        (
            "a CA certificate as the leaf",
            vec![&good],
            spiffe.clone().with_ca_flag(),
            false,
        ),
        (
            "intermediate EKU serverAuth only",
            vec![&eku_server],
            spiffe.clone(),
            false,
        ),
        (
            "intermediate EKU clientAuth",
            vec![&eku_client],
            spiffe.clone(),
            true,
        ),
        (
            "leaf EKU serverAuth only",
            vec![&good],
            spiffe.clone().server_auth_only(),
            false,
        ),
        (
            "DNS name outside a permitted subtree",
            vec![&dns_example],
            LeafSpec::client_dns("svc.evil.org"),
            false,
        ),
        (
            "DNS name inside a permitted subtree",
            vec![&dns_example],
            LeafSpec::client_dns("svc.example.org"),
            true,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, cas, spec, want) in cases {
        let issuer = cas.last().unwrap();
        let leaf = issuer.issue(&spec).unwrap();
        let mut chain = vec![der(&leaf.cert_der)];
        chain.extend(cas.iter().rev().map(|c| der(c.cert_der())));
        let (ok, _) = present_chain(&b, &leaf, chain).await;
        if ok != want {
            wrong.push(format!("{what}: accepted={ok}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The attack of issue 23 item 2: the refused chain gets no token, the
    // agent's own certificate still does.
    let leaf = digital_only.issue(&spiffe).unwrap();
    let chain = vec![der(&leaf.cert_der), der(digital_only.cert_der())];
    let cfg = client_config(&b, Some((chain, &leaf)), &rustls::version::TLS13);
    let forged = token_over_http1(&b, cfg).await;
    assert!(!forged.starts_with("HTTP/1.1 200"), "{forged}");
    // The same request through a keyCertSign intermediate is served.
    let leaf = good.issue(&spiffe).unwrap();
    let chain = vec![der(&leaf.cert_der), der(good.cert_der())];
    let cfg = client_config(&b, Some((chain, &leaf)), &rustls::version::TLS13);
    let honest = token_over_http1(&b, cfg).await;
    assert!(honest.starts_with("HTTP/1.1 200"), "{honest}");
}

/// A token request for the agent's scope over HTTP/1.1 with `cfg`; the
/// status line, or "" when the handshake failed.
async fn token_over_http1(b: &TestBroker, cfg: std::sync::Arc<rustls::ClientConfig>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
    else {
        return String::new();
    };
    let body = encode_form(&[
        ("grant_type", TE),
        ("subject_token_type", MTLS),
        ("audience", API),
        ("scope", "tickets:read"),
    ]);
    let req = format!(
        "POST /token HTTP/1.1\r\nhost: broker\r\nconnection: close\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}
