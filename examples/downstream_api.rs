//! A downstream API behind the MCP server example (`examples/mcp_server.rs`):
//! the ticket archive. It accepts only tokens issued for itself (`aud` =
//! its URL) AND delegated to the MCP server: the token's current actor
//! (`act.sub`) must be the MCP server's identity
//! ([`tessera::verify::VerifierBuilder::require_actor`]). The token an
//! agent sent to the MCP server is refused (another audience, no `act`);
//! only the token the MCP server got by exchanging it is served.
//!
//! ```text
//! cargo run --release --example downstream_api             # https://127.0.0.1:8446
//! ```
//!
//! Options (no environment variables): `--broker URL` (default
//! `https://127.0.0.1:8443`), `--listen ADDR` (default `127.0.0.1:8446`),
//! `--audience AUD` (default `https://ADDR`), `--actor ID` (default
//! `spiffe://example.org/service/payments-api`, the MCP server's identity
//! in the dev material), `--keys DIR` (default `keys/dev`: `ca.pem`,
//! `server.pem`, `server-key.pem`). It prints `downstream api on URL` once
//! listening, and one line per request (`jti`, never a token).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::json;
use tessera::verify::{
    metadata_router, Bearer, ProtectedResource, RejectionReason, RequireScope, Verifier,
};

struct Options {
    broker: String,
    listen: SocketAddr,
    audience: Option<String>,
    actor: String,
    keys: PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: downstream_api [--broker URL] [--listen ADDR] [--audience AUD] [--actor ID] [--keys DIR]"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut o = Options {
        broker: "https://127.0.0.1:8443".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 8446)),
        audience: None,
        actor: "spiffe://example.org/service/payments-api".into(),
        keys: PathBuf::from("keys/dev"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--broker" => o.broker = value.trim_end_matches('/').to_owned(),
            "--listen" => o.listen = value.parse().unwrap_or_else(|_| usage()),
            "--audience" => o.audience = Some(value),
            "--actor" => o.actor = value,
            "--keys" => o.keys = PathBuf::from(value),
            _ => usage(),
        }
    }
    o
}

/// `GET /archive` (behind `RequireScope` `tickets:read`).
async fn archive(bearer: Bearer) -> impl IntoResponse {
    let t = &bearer.0;
    println!(
        "200 GET /archive  sub={} act={:?} jti={} task={}",
        t.subject(),
        t.actors(),
        t.jti(),
        t.task()
    );
    Json(json!({
        "archive": [{"id": 17, "title": "printer out of paper", "closed": true}],
        "caller": t.subject(),
        "actors": t.actors(),
        "task": t.task(),
    }))
}

async fn log_refusals(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let resp = next.run(req).await;
    if !resp.status().is_success() {
        let why = resp
            .extensions()
            .get::<RejectionReason>()
            .map_or("", |r| r.0);
        println!("{} {method} {path}  reason={why}", resp.status().as_u16());
    }
    resp
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(options()).await {
        eprintln!("downstream_api: {e}");
        std::process::exit(1);
    }
}

async fn run(o: Options) -> Result<(), String> {
    let ca_path = o.keys.join("ca.pem");
    let ca = CertificateDer::pem_file_iter(&ca_path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {}: {e}", ca_path.display()))?;
    let audience = o
        .audience
        .clone()
        .unwrap_or_else(|| format!("https://{}", o.listen));
    let client = tessera::jwks::https_client(&ca, false).map_err(|e| e.to_string())?;
    let verifier = Verifier::with_discovery(&o.broker, &audience, client)
        .and_then(|b| {
            let resource = ProtectedResource::new(&audience)?.scopes_supported(["tickets:read"]);
            b.protected_resource(resource)
                .require_actor(&o.actor)
                .build()
        })
        .map_err(|e| e.to_string())?;
    let verifier = Arc::new(verifier);
    let app = Router::new()
        .route(
            "/archive",
            get(archive).layer(RequireScope::new(verifier.clone(), ["tickets:read"])),
        )
        .merge(metadata_router(&verifier))
        .layer(axum::middleware::from_fn(log_refusals))
        .with_state(verifier);
    let tls = tessera::server::tls::server_config(
        &o.keys.join("server.pem"),
        &o.keys.join("server-key.pem"),
        &[ca_path],
        &Default::default(),
    )
    .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(o.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", o.listen))?;
    println!(
        "downstream api on https://{} (audience {audience}, actor {}), keys from {}",
        o.listen, o.actor, o.broker
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
