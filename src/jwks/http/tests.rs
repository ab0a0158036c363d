//! Tests against a real local HTTPS server (rcgen CA + tokio-rustls + a
//! minimal hand-written HTTP/1.1 responder).

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::jose::alg::Algorithm;
use crate::jose::jwk::parse_jwk_set;
use crate::jose::testutil::TestKey;

fn new_ca(name: &str) -> (Issuer<'static, KeyPair>, CertificateDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (Issuer::new(params, key), cert.der().clone())
}

fn server_config(ca: &Issuer<'static, KeyPair>) -> Arc<rustls::ServerConfig> {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, ca).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    Arc::new(cfg)
}

struct TestServer {
    base: String,
    ca: CertificateDer<'static>,
}

const BIG: usize = 70 * 1024;

async fn respond<S: AsyncWriteExt + Unpin>(io: &mut S, path: &str, base: &str, jwks: &str) {
    let simple = |status: &str, extra: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let discovery = |issuer: String, jwks_uri: String| {
        simple(
            "200 OK",
            "",
            &json!({"issuer": issuer, "jwks_uri": jwks_uri}).to_string(),
        )
    };
    let out = match path {
        "/jwks" => simple("200 OK", "Cache-Control: public, max-age=120\r\n", jwks),
        "/redirect" => simple("302 Found", &format!("Location: {base}/jwks\r\n"), ""),
        "/missing" => simple("404 Not Found", "", "{}"),
        "/big" => {
            // No Content-Length: the body runs until the connection closes.
            let head =
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
            if io.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b' '; 1024];
            for _ in 0..(BIG / 1024) {
                if io.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            return;
        }
        "/big-cl" => {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\nConnection: close\r\n\r\n");
            let _ = io.write_all(head.as_bytes()).await;
            let _ = io.write_all(&vec![b' '; BIG]).await;
            return;
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            simple("200 OK", "", jwks)
        }
        "/good/.well-known/openid-configuration" => {
            discovery(format!("{base}/good"), format!("{base}/jwks"))
        }
        "/slash/.well-known/openid-configuration" => {
            discovery(format!("{base}/slash/"), format!("{base}/jwks"))
        }
        "/bad/.well-known/openid-configuration" => {
            discovery("https://evil.example".into(), format!("{base}/jwks"))
        }
        "/plain/.well-known/openid-configuration" => {
            discovery(format!("{base}/plain"), "http://127.0.0.1/jwks".into())
        }
        _ => simple("404 Not Found", "", "{}"),
    };
    let _ = io.write_all(out.as_bytes()).await;
}

async fn start(jwks: String) -> TestServer {
    let (ca, ca_der) = new_ca("Tessera Test CA");
    let acceptor = TlsAcceptor::from(server_config(&ca));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let state = Arc::new((base.clone(), jwks));
    tokio::spawn(async move {
        // Bounded: the server lives only as long as the test's runtime.
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    let n = match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                    if buf.len() > 16 * 1024 {
                        return;
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                respond(&mut tls, &path, &state.0, &state.1).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TestServer { base, ca: ca_der }
}

fn jwks_doc(key: &TestKey) -> String {
    json!({"keys": [key.jwk(None, Some("k1"))]}).to_string()
}

async fn server() -> (TestServer, reqwest::Client) {
    let srv = start(jwks_doc(&TestKey::es256())).await;
    let client = https_client(std::slice::from_ref(&srv.ca), false).unwrap();
    (srv, client)
}

#[tokio::test]
async fn fetch_works_with_extra_ca() {
    let (srv, client) = server().await;
    let f = HttpJwksFetcher::new(client, &format!("{}/jwks", srv.base)).unwrap();
    let got = f.fetch().await.unwrap();
    assert_eq!(got.max_age, Some(Duration::from_secs(120)));
    let set = parse_jwk_set(&got.body).unwrap();
    assert_eq!(set.find(Some("k1")).unwrap().algorithm(), Algorithm::ES256);
}

#[tokio::test]
async fn untrusted_ca_fails() {
    let (srv, _) = server().await;
    let (_, other_ca) = new_ca("Some Other CA");
    let client = https_client(&[other_ca], false).unwrap();
    let f = HttpJwksFetcher::new(client, &format!("{}/jwks", srv.base)).unwrap();
    let err = f.fetch().await.unwrap_err();
    assert!(matches!(err, FetchError::Tls(_)), "{err:?}");
    // Public roots alone do not trust the private CA either.
    let client = https_client(&[], true).unwrap();
    let f = HttpJwksFetcher::new(client, &format!("{}/jwks", srv.base)).unwrap();
    let err = f.fetch().await.unwrap_err();
    assert!(matches!(err, FetchError::Tls(_)), "{err:?}");
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let (srv, client) = server().await;
    let f = HttpJwksFetcher::new(client, &format!("{}/redirect", srv.base)).unwrap();
    assert_eq!(f.fetch().await.unwrap_err(), FetchError::Redirect(302));
}

#[tokio::test]
async fn non_2xx_is_an_error() {
    let (srv, client) = server().await;
    let f = HttpJwksFetcher::new(client, &format!("{}/missing", srv.base)).unwrap();
    assert_eq!(f.fetch().await.unwrap_err(), FetchError::Status(404));
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let (srv, client) = server().await;
    let f = HttpJwksFetcher::new(client.clone(), &format!("{}/big", srv.base)).unwrap();
    assert_eq!(f.fetch().await.unwrap_err(), FetchError::TooLarge);
    let f = HttpJwksFetcher::new(client, &format!("{}/big-cl", srv.base)).unwrap();
    assert_eq!(f.fetch().await.unwrap_err(), FetchError::TooLarge);
}

#[tokio::test]
async fn slow_server_times_out() {
    let (srv, client) = server().await;
    let f = HttpJwksFetcher::new(client, &format!("{}/slow", srv.base))
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    assert_eq!(f.fetch().await.unwrap_err(), FetchError::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn only_https_urls_without_credentials() {
    let client = https_client(&[], true).unwrap();
    for url in [
        "http://127.0.0.1/jwks",
        "ftp://example.com/jwks",
        "https://user:pw@example.com/jwks",
        "not a url",
        "",
    ] {
        assert_eq!(
            HttpJwksFetcher::new(client.clone(), url).unwrap_err(),
            FetchError::InvalidUrl,
            "{url}"
        );
    }
    assert_eq!(
        https_client(&[], false).unwrap_err(),
        FetchError::Config("no trust anchors configured")
    );
}

#[tokio::test]
async fn discovery() {
    let (srv, client) = server().await;
    let good = discover_jwks_uri(&client, &format!("{}/good", srv.base))
        .await
        .unwrap();
    assert_eq!(good, format!("{}/jwks", srv.base));
    // Configured with a trailing slash: URL built without it, issuer
    // compared exactly.
    let slash = discover_jwks_uri(&client, &format!("{}/slash/", srv.base))
        .await
        .unwrap();
    assert_eq!(slash, format!("{}/jwks", srv.base));
    // The document's issuer differs from ours (exact match required).
    assert_eq!(
        discover_jwks_uri(&client, &format!("{}/bad", srv.base))
            .await
            .unwrap_err(),
        FetchError::IssuerMismatch
    );
    assert_eq!(
        discover_jwks_uri(&client, &format!("{}/good/", srv.base))
            .await
            .unwrap_err(),
        FetchError::IssuerMismatch
    );
    assert_eq!(
        discover_jwks_uri(&client, &format!("{}/plain", srv.base))
            .await
            .unwrap_err(),
        FetchError::InvalidDiscovery("jwks_uri")
    );
    assert_eq!(
        discover_jwks_uri(&client, &format!("{}/nothing", srv.base))
            .await
            .unwrap_err(),
        FetchError::Status(404)
    );
    assert_eq!(
        discover_jwks_uri(&client, "http://127.0.0.1/good")
            .await
            .unwrap_err(),
        FetchError::InvalidUrl
    );
}

#[tokio::test]
async fn oidc_issuer_keys_end_to_end() {
    let (srv, client) = server().await;
    let keys = OidcIssuerKeys::new(
        client.clone(),
        format!("{}/good", srv.base),
        Duration::from_secs(30),
    );
    assert!(keys.key(Some("k1")).await.is_ok());
    assert_eq!(
        keys.key(Some("k2")).await.unwrap_err(),
        KeyLookupError::UnknownKid
    );
    assert_eq!(keys.cache().map(JwksCache::fetch_count), Some(1));

    let bad = OidcIssuerKeys::new(client, format!("{}/bad", srv.base), Duration::from_secs(30));
    assert_eq!(
        bad.key(Some("k1")).await.unwrap_err(),
        KeyLookupError::Unavailable
    );
    assert!(bad.cache().is_none());
}

#[tokio::test]
async fn cache_over_https() {
    let (srv, client) = server().await;
    let f = HttpJwksFetcher::new(client, &format!("{}/jwks", srv.base)).unwrap();
    let cache = JwksCache::new(Arc::new(f), Duration::from_secs(30));
    assert!(cache.key(Some("k1")).await.is_ok());
    assert!(cache.key(None).await.is_ok());
    assert_eq!(cache.fetch_count(), 1);
}

#[test]
fn cache_control_parsing() {
    use reqwest::header::HeaderValue;
    let mut h = HeaderMap::new();
    assert_eq!(max_age(&h), None);
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    assert_eq!(max_age(&h), Some(Duration::from_secs(300)));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("Max-Age=\"60\""));
    assert_eq!(max_age(&h), Some(Duration::from_secs(60)));
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("max-age=99999999999"),
    );
    assert_eq!(max_age(&h), Some(MAX_REFRESH_INTERVAL));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=-1"));
    assert_eq!(max_age(&h), None);
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-store, max-age=300"),
    );
    assert_eq!(max_age(&h), Some(Duration::ZERO));
}
