//! A resource server (the demo "tickets" API) that accepts Tessera tokens.
//!
//! It discovers the broker's keys (`/.well-known/openid-configuration` →
//! `/jwks.json`), verifies every request's token with
//! `tessera::verify::Verifier` (signature, `typ`, `iss`, `aud`, lifetime),
//! enforces the scopes each route needs, checks the RFC 8705 certificate
//! binding (`cnf.x5t#S256`) against the client certificate of the request's
//! TLS connection, and refuses revoked tokens by following the broker's
//! `/revocations` feed.
//!
//! Against the development broker (`cargo run --release -- serve`):
//!
//! ```sh
//! cargo run --release --example resource_server
//! ```
//!
//! Options: `--broker URL` (default `https://127.0.0.1:8443`), `--listen
//! ADDR` (default `127.0.0.1:8444`), `--keys DIR` (default `keys/dev`: the
//! CA, the server certificate this API reuses, and the `payments-api`
//! identity it follows revocations with), `--audience AUD` (default
//! `https://api.example.com`, the dev policy's audience).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Json, Router};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tessera::verify::{
    Bearer, BearerRejection, FollowerTls, RejectionReason, RevocationFollower, Verifier,
};

struct Options {
    broker: String,
    listen: SocketAddr,
    keys: PathBuf,
    audience: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: resource_server [--broker URL] [--listen ADDR] [--keys DIR] [--audience AUD]"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut o = Options {
        broker: "https://127.0.0.1:8443".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 8444)),
        keys: PathBuf::from("keys/dev"),
        audience: "https://api.example.com".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--broker" => o.broker = value.trim_end_matches('/').to_owned(),
            "--listen" => o.listen = value.parse().unwrap_or_else(|_| usage()),
            "--keys" => o.keys = PathBuf::from(value),
            "--audience" => o.audience = value,
            _ => usage(),
        }
    }
    o
}

fn certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// `GET /tickets`: needs `tickets:read`.
async fn list_tickets(bearer: Bearer) -> Result<impl IntoResponse, BearerRejection> {
    bearer.require_scopes(&["tickets:read"])?;
    let t = &bearer.0;
    println!(
        "200 GET /tickets  sub={} task={} actors={:?}",
        t.subject(),
        t.task(),
        t.actors()
    );
    Ok(Json(json!({
        "tickets": [{"id": 4711, "title": "printer on fire"}],
        "caller": t.subject(),
        "task": t.task(),
        "on_behalf_of_chain": t.actors(),
    })))
}

/// `POST /tickets`: needs `tickets:write`.
async fn create_ticket(bearer: Bearer) -> Result<impl IntoResponse, BearerRejection> {
    bearer.require_scopes(&["tickets:write"])?;
    println!(
        "201 POST /tickets  sub={} task={}",
        bearer.0.subject(),
        bearer.0.task()
    );
    Ok((axum::http::StatusCode::CREATED, Json(json!({"id": 4712}))))
}

/// Logs refusals (the extractor already answered with RFC 6750 headers).
async fn log_refusals(
    method: Method,
    uri: axum::http::Uri,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let resp = next.run(req).await;
    if !resp.status().is_success() {
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // The precise reason stays on this side (never in the answer).
        let why = resp
            .extensions()
            .get::<RejectionReason>()
            .map_or("", |r| r.0);
        println!(
            "{} {method} {}  {challenge}  reason={why}",
            resp.status().as_u16(),
            uri.path()
        );
    }
    resp
}

async fn health() -> &'static str {
    "ok"
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(options()).await {
        eprintln!("resource_server: {e}");
        std::process::exit(1);
    }
}

async fn run(o: Options) -> Result<(), String> {
    let ca = certs(&o.keys.join("ca.pem"))?;
    let public_url = format!("https://{}", o.listen);

    // Keys by discovery from the broker, trusting the dev CA only.
    let client = tessera::jwks::https_client(&ca, false).map_err(|e| e.to_string())?;
    let verifier = Verifier::with_discovery(&o.broker, &o.audience, client)
        .and_then(|b| b.resource_url(&public_url).build())
        .map_err(|e| e.to_string())?;

    // Revocations: follow the broker's feed as `payments-api`, an identity
    // listed in the dev config's [introspection] subjects.
    let tls = FollowerTls {
        roots: ca.clone(),
        cert_chain: certs(&o.keys.join("payments-api.pem"))?,
        key: Some(key(&o.keys.join("payments-api-key.pem"))?),
    };
    let follower = RevocationFollower::start(&o.broker, tls).map_err(|e| e.to_string())?;
    if !follower.wait_synced(Duration::from_secs(10)).await {
        return Err(format!(
            "could not sync revocations from {} within 10 s (is the broker running?)",
            o.broker
        ));
    }

    let app = Router::new()
        .route("/tickets", get(list_tickets).post(create_ticket))
        .route("/healthz", get(health))
        .layer(axum::middleware::from_fn(log_refusals))
        .layer(Extension(Arc::new(follower)))
        .with_state(Arc::new(verifier));

    // TLS that asks for (but does not require) a client certificate from
    // the dev CA, so certificate-bound tokens can be checked.
    let tls = tessera::server::tls::server_config(
        &o.keys.join("server.pem"),
        &o.keys.join("server-key.pem"),
        &[o.keys.join("ca.pem")],
        &Default::default(),
    )
    .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(o.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", o.listen))?;
    println!(
        "resource server on {public_url} (audience {}), keys and revocations from {}",
        o.audience, o.broker
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tessera::server::serve_https(
        listener,
        tls,
        app,
        tessera::config::Limits::default(),
        shutdown,
    )
    .await;
    Ok(())
}
