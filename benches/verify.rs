//! Verifier benchmark: verifications per second per core with
//! `tessera::verify::Verifier`, against the raw signature check (aws-lc-rs
//! with a pre-parsed public key: the physical limit; the same tokens, the
//! same run) and against the `jsonwebtoken` crate
//! verifying the same tokens with equivalent checks (alg, iss, aud, exp,
//! nbf). One thread, so the figures are per core. Each contender runs 15
//! interleaved batches over 1,000 distinct tokens; the median batch counts.
//!
//! With `--propagation N` it also measures revocation propagation: a real
//! `tessera serve` (the dev config on free ports), a `RevocationFollower`,
//! and N times: exchange a token for a fresh task, run the CLI
//! `tessera revoke --task …`, and time from spawning the CLI until the
//! follower refuses the token.
//!
//! ```sh
//! cargo bench --bench verify -- --seconds 6 --propagation 50
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera::testkit::{free_port, ChildGuard};

use base64::Engine;
use futures_util::FutureExt;
use serde_json::Value;
use tessera::mint::claims::AccessTokenClaims;
use tessera::mint::keyring::{KeyRing, SigningAlgorithm, SigningKey};
use tessera::mint::TokenMinter;
use tessera::verify::Verifier;

const ISS: &str = "https://tessera.bench";
const AUD: &str = "https://api.example.com";
const TOKENS: usize = 1000;

struct Args {
    seconds: u64,
    propagation: usize,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 6,
        propagation: 0,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let next = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--seconds" => {
                a.seconds = next.parse().expect("--seconds S");
                i += 1;
            }
            "--propagation" => {
                a.propagation = next.parse().expect("--propagation N");
                i += 1;
            }
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
        i += 1;
    }
    a
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

struct Case {
    alg: SigningAlgorithm,
    tokens: Vec<String>,
    jwks: Value,
    /// (signing input, signature) of each token, decoded ahead of time.
    raw: Vec<(Vec<u8>, Vec<u8>)>,
    raw_key: aws_lc_rs::signature::ParsedPublicKey,
}

fn case(alg: SigningAlgorithm) -> Case {
    let (key, _) = SigningKey::generate(alg).unwrap();
    let jwk = key.public_jwk();
    let ring = Arc::new(KeyRing::from_keys(vec![key], alg).unwrap());
    let minter = TokenMinter::new(ring.clone());
    let t = now();
    let tokens: Vec<String> = (0..TOKENS)
        .map(|i| {
            let claims = AccessTokenClaims {
                iss: ISS.into(),
                sub: "spiffe://example.org/agent/demo".into(),
                aud: AUD.into(),
                exp: t + 3600,
                iat: t,
                nbf: t,
                jti: format!("bench-{i}"),
                client_id: "spiffe://example.org/agent/demo".into(),
                scope: "tickets:read tickets:write".into(),
                txn: format!("task-{i}"),
                act: None,
                cnf: None,
                grant: None,
                owner: Some("alice@example.com".into()),
                authorization_details: None,
                policy: Some("demo-agent".into()),
                ancestors: Vec::new(),
                may_act: None,
            };
            minter.mint(&claims).unwrap()
        })
        .collect();
    let raw = tokens
        .iter()
        .map(|t| {
            let (input, sig) = t.rsplit_once('.').unwrap();
            (input.as_bytes().to_vec(), b64(sig))
        })
        .collect();
    let raw_key = match alg {
        SigningAlgorithm::ES256 => {
            let mut pt = vec![4u8];
            pt.extend(b64(jwk["x"].as_str().unwrap()));
            pt.extend(b64(jwk["y"].as_str().unwrap()));
            aws_lc_rs::signature::ParsedPublicKey::new(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                pt,
            )
            .unwrap()
        }
        SigningAlgorithm::EdDSA => aws_lc_rs::signature::ParsedPublicKey::new(
            &aws_lc_rs::signature::ED25519,
            b64(jwk["x"].as_str().unwrap()),
        )
        .unwrap(),
        other => panic!("unsupported {other:?}"),
    };
    Case {
        alg,
        tokens,
        jwks: ring.jwks(),
        raw,
        raw_key,
    }
}

/// Median µs per operation over 15 interleaved batches of each contender.
fn race(budget: Duration, contenders: &mut [(&str, &mut dyn FnMut(usize))]) -> Vec<f64> {
    let per_batch = budget / (15 * contenders.len() as u32);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    for (_, f) in contenders.iter_mut() {
        for i in 0..200 {
            f(i % TOKENS);
        }
    }
    for _ in 0..15 {
        for (k, (_, f)) in contenders.iter_mut().enumerate() {
            let start = Instant::now();
            let mut n = 0usize;
            while start.elapsed() < per_batch {
                for _ in 0..50 {
                    f(n % TOKENS);
                    n += 1;
                }
            }
            samples[k].push(start.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(|a, b| a.total_cmp(b));
            s[s.len() / 2]
        })
        .collect()
}

fn verify_throughput(a: &Args) {
    println!("verifier: one thread, {TOKENS} distinct tokens, median of 15 interleaved batches");
    println!("| alg | tessera µs | raw signature µs | jsonwebtoken µs | tessera verifications/s/core | tessera / raw | tessera / jsonwebtoken |");
    println!("|---|---|---|---|---|---|---|");
    for alg in [SigningAlgorithm::ES256, SigningAlgorithm::EdDSA] {
        let c = case(alg);
        let jwks = serde_json::to_vec(&c.jwks).unwrap();
        let verifier = Verifier::with_static_jwks(ISS, AUD, &jwks)
            .unwrap()
            .build()
            .unwrap();
        // jsonwebtoken with equivalent checks.
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(c.jwks["keys"][0].clone()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let jalg = match alg {
            SigningAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            _ => jsonwebtoken::Algorithm::EdDSA,
        };
        let mut validation = jsonwebtoken::Validation::new(jalg);
        validation.set_audience(&[AUD]);
        validation.set_issuer(&[ISS]);
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);

        // Sanity: every contender accepts every token.
        for (i, t) in c.tokens.iter().enumerate() {
            assert!(verifier.verify(t).now_or_never().unwrap().is_ok());
            assert!(jsonwebtoken::decode::<Value>(t, &key, &validation).is_ok());
            assert!(c.raw_key.verify_sig(&c.raw[i].0, &c.raw[i].1).is_ok());
        }

        let mut tessera = |i: usize| {
            let r = verifier.verify(&c.tokens[i]).now_or_never();
            black_box(r.unwrap().unwrap());
        };
        let mut raw = |i: usize| {
            let (input, sig) = &c.raw[i];
            black_box(c.raw_key.verify_sig(input, sig)).unwrap();
        };
        let mut jwt = |i: usize| {
            let r = jsonwebtoken::decode::<Value>(&c.tokens[i], &key, &validation);
            black_box(r.unwrap());
        };
        // Deterministic cost (`valgrind --tool=callgrind`, see BENCHMARKS.md):
        // BENCH_PROFILE=tessera|raw|jsonwebtoken:N runs only that contender.
        if let Ok(spec) = std::env::var("BENCH_PROFILE") {
            let (who, n) = spec.split_once(':').expect("BENCH_PROFILE=who:N");
            let n: usize = n.parse().expect("BENCH_PROFILE=who:N");
            for i in 0..n {
                match who {
                    "tessera" => tessera(i % TOKENS),
                    "raw" => raw(i % TOKENS),
                    "jsonwebtoken" => jwt(i % TOKENS),
                    other => panic!("unknown contender {other}"),
                }
            }
            continue;
        }
        let us = race(
            Duration::from_secs(a.seconds),
            &mut [
                ("tessera", &mut tessera),
                ("raw", &mut raw),
                ("jsonwebtoken", &mut jwt),
            ],
        );
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.3} | {:.3} |",
            c.alg.as_str(),
            us[0],
            us[1],
            us[2],
            1e6 / us[0],
            us[0] / us[1],
            us[0] / us[2]
        );
    }
}

// ---------------------------------------------------------------------------
// Revocation propagation through the CLI.

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

fn pem_certs(p: &Path) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_file_iter(p)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn pem_key(p: &Path) -> rustls_pki_types::PrivateKeyDer<'static> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_file(p).unwrap()
}

fn pct(v: &[f64], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

async fn propagation(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (port, ops) = (free_port(), free_port());
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tessera.toml"))
            .unwrap();
    let cfg = shipped
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{ops}"));
    std::fs::create_dir_all(d.join("config")).unwrap();
    std::fs::write(d.join("config/tessera.toml"), cfg).unwrap();
    let _broker = ChildGuard(
        Command::new(BIN)
            .arg("serve")
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let broker = format!("https://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys = d.join("keys/dev");
    let ca = pem_certs(&keys.join("ca.pem"));
    let follower = tessera::verify::RevocationFollower::start(
        &broker,
        tessera::verify::FollowerTls {
            roots: ca.clone(),
            cert_chain: pem_certs(&keys.join("payments-api.pem")),
            key: Some(pem_key(&keys.join("payments-api-key.pem"))),
        },
    )
    .unwrap();
    assert!(follower.wait_synced(Duration::from_secs(10)).await);
    let verifier = Verifier::with_discovery(
        &broker,
        AUD,
        tessera::jwks::https_client(&ca, false).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let tls = tessera::jwks::http::tls_client_config(
        &ca,
        false,
        Some((
            pem_certs(&keys.join("agent.pem")),
            pem_key(&keys.join("agent-key.pem")),
        )),
        &[b"http/1.1"],
    )
    .unwrap();
    let agent = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();

    let mut total = Vec::new();
    let mut cli = Vec::new();
    for i in 0..n {
        let task = format!("propagation-{i}");
        let r: Value = agent
            .post(format!("{broker}/token"))
            .form(&[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:mtls",
                ),
                ("audience", AUD),
                ("scope", "tickets:read"),
                ("task", task.as_str()),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = verifier
            .verify(r["access_token"].as_str().unwrap())
            .await
            .unwrap();
        assert!(follower.check(&token).is_ok());
        // Tokens issued in the same second as a task revocation are covered
        // (revoked_at has one-second resolution): no wait needed.
        let start = Instant::now();
        let mut child = Command::new(BIN)
            .args(["revoke", "--task", &task, "--url", &broker])
            .current_dir(d)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut cli_done = None;
        loop {
            if cli_done.is_none() {
                if let Some(st) = child.try_wait().unwrap() {
                    assert!(st.success(), "tessera revoke failed");
                    cli_done = Some(start.elapsed());
                }
            }
            if follower.is_revoked(&token) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "not propagated");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let seen = start.elapsed();
        let cli_exit = match cli_done {
            Some(c) => c,
            None => {
                child.wait().unwrap();
                start.elapsed()
            }
        };
        total.push(seen.as_secs_f64() * 1e3);
        cli.push(cli_exit.as_secs_f64() * 1e3);
    }
    total.sort_by(|a, b| a.total_cmp(b));
    cli.sort_by(|a, b| a.total_cmp(b));
    println!();
    println!("revocation propagation: `tessera revoke --task` spawned → follower refuses the token ({n} runs)");
    println!("| measure | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    println!(
        "| CLI spawn → follower refuses | {:.1} | {:.1} | {:.1} |",
        pct(&total, 0.5),
        pct(&total, 0.99),
        total[total.len() - 1]
    );
    println!(
        "| CLI spawn → CLI exits | {:.1} | {:.1} | {:.1} |",
        pct(&cli, 0.5),
        pct(&cli, 0.99),
        cli[cli.len() - 1]
    );
}

fn main() {
    let a = args();
    verify_throughput(&a);
    if a.propagation > 0 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(propagation(a.propagation));
    }
}
