//! An MCP server (Model Context Protocol, streamable HTTP transport, the
//! official Rust SDK `rmcp`) protected by Tessera: the demo "tickets" tool
//! server.
//!
//! - It is an OAuth resource server (MCP authorization spec): it publishes
//!   its Protected Resource Metadata (RFC 9728) at
//!   `/.well-known/oauth-protected-resource/mcp` (and the bare well-known
//!   path), answers a request without a valid token with `401` and
//!   `WWW-Authenticate: Bearer resource_metadata="…"`, and accepts only
//!   tokens whose `aud` is its own resource URL (RFC 8707).
//! - Every tool needs its own scope ([`TOOL_SCOPES`]); a `tools/call`
//!   whose token lacks it is answered `403` with
//!   `Bearer error="insufficient_scope", scope="…"` before the tool runs
//!   (and every tool checks again):
//!   `read_tickets` (`tickets:read`), `write_ticket` (`tickets:write`),
//!   `delete_ticket` (`tickets:delete`, an approval scope in
//!   `config/mcp.toml`: the agent's token request waits for a human, and
//!   carries the call as `authorization_details`, which the tool checks:
//!   `[{"type":"mcp_tool_call","tool":"delete_ticket","arguments":{"id":N}}]`),
//!   and `read_archive` (`tickets:read`), which calls the downstream API
//!   (`examples/downstream_api.rs`) by EXCHANGING the token it received
//!   (RFC 8693: `subject_token` = that token, the actor = this server's
//!   own client certificate over mTLS, `audience` = the downstream API).
//!   It never forwards the token it received.
//! - It follows the broker's revocation feed: a revoked token stops the
//!   next call.
//!
//! Only an unbound (bearer) token can be exchanged by this server: the
//! broker accepts a certificate-bound token as `subject_token` only over
//! the certificate it is bound to, which this server does not hold. An
//! agent whose base identity is a platform OIDC token, exchanging it over
//! TLS without a client certificate, gets one (see `config/mcp.toml`); an
//! agent using its client certificate gets a token bound to it, which the
//! other tools accept (over that certificate) but `read_archive` cannot
//! exchange.
//!
//! Against a broker running `config/mcp.toml`, from the checkout:
//!
//! ```text
//! cargo run --release -- serve --config config/mcp.toml    # the broker, https://127.0.0.1:8443
//! cargo run --release --example downstream_api             # https://127.0.0.1:8446
//! cargo run --release --example mcp_server                 # https://127.0.0.1:8445/mcp
//! ```
//!
//! Options (no environment variables): `--broker URL` (default
//! `https://127.0.0.1:8443`), `--listen ADDR` (default `127.0.0.1:8445`),
//! `--resource URL` (default `https://ADDR/mcp`: the MCP endpoint's URL,
//! the `resource` of its metadata and the `aud` its tokens must carry),
//! `--keys DIR` (default `keys/dev`: `ca.pem` trusted for the broker and
//! for client certificates, `server.pem`/`server-key.pem` served),
//! `--cert PEM`/`--key PEM` (default `DIR/payments-api.pem` and
//! `DIR/payments-api-key.pem`: this server's own identity, the actor of
//! its exchanges and the follower of revocations, which must be in the
//! broker's `[introspection] subjects`), `--downstream URL` (default
//! `https://127.0.0.1:8446`), `--downstream-audience AUD` (default: the
//! downstream URL). It prints `mcp server on URL` once it is listening,
//! and one line per request (never a token: the `jti`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension as AxumExtension, Router};
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, ServerHandler};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tessera::verify::{
    metadata_router, Bearer, FollowerTls, ProtectedResource, RejectionReason, RequireScope,
    RevocationFollower, Verifier,
};

/// The scope each tool needs: the one table both the HTTP check and the
/// tools read. A tool missing here makes the server refuse to start.
pub const TOOL_SCOPES: &[(&str, &str)] = &[
    ("read_tickets", "tickets:read"),
    ("write_ticket", "tickets:write"),
    ("delete_ticket", "tickets:delete"),
    ("read_archive", "tickets:read"),
];

/// Largest MCP request body read (JSON-RPC messages are small).
const MAX_BODY: usize = 1024 * 1024;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

fn scope_of(tool: &str) -> Option<&'static str> {
    TOOL_SCOPES
        .iter()
        .find(|(name, _)| *name == tool)
        .map(|(_, scope)| *scope)
}

struct Options {
    broker: String,
    listen: SocketAddr,
    resource: Option<String>,
    keys: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    downstream: String,
    downstream_audience: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: mcp_server [--broker URL] [--listen ADDR] [--resource URL] [--keys DIR] \
         [--cert PEM --key PEM] [--downstream URL] [--downstream-audience AUD]"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut o = Options {
        broker: "https://127.0.0.1:8443".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 8445)),
        resource: None,
        keys: PathBuf::from("keys/dev"),
        cert: None,
        key: None,
        downstream: "https://127.0.0.1:8446".into(),
        downstream_audience: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--broker" => o.broker = value.trim_end_matches('/').to_owned(),
            "--listen" => o.listen = value.parse().unwrap_or_else(|_| usage()),
            "--resource" => o.resource = Some(value),
            "--keys" => o.keys = PathBuf::from(value),
            "--cert" => o.cert = Some(PathBuf::from(value)),
            "--key" => o.key = Some(PathBuf::from(value)),
            "--downstream" => o.downstream = value.trim_end_matches('/').to_owned(),
            "--downstream-audience" => o.downstream_audience = Some(value),
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

/// What every tool handler shares.
struct App {
    tickets: Mutex<BTreeMap<u64, String>>,
    next_id: Mutex<u64>,
    /// HTTPS client presenting this server's own certificate.
    http: reqwest::Client,
    /// base64url SHA-256 of that certificate (the `actor_token`).
    thumbprint: String,
    broker: String,
    downstream: String,
    downstream_audience: String,
}

/// The MCP service (one per session; the state is shared).
#[derive(Clone)]
struct Tickets {
    app: Arc<App>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct WriteArgs {
    /// The new ticket's title (at most 200 characters).
    title: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct DeleteArgs {
    /// The ticket to delete.
    id: u64,
}

/// The token the HTTP layer verified for this request, if it holds the
/// tool's scope (a second check behind the HTTP one: a tool never runs
/// without its scope, whatever the routing).
fn authorized(parts: &Parts, tool: &str) -> Result<Bearer, ErrorData> {
    let bearer = parts
        .extensions
        .get::<Bearer>()
        .ok_or_else(|| ErrorData::invalid_request("no verified token", None))?;
    let scope =
        scope_of(tool).ok_or_else(|| ErrorData::invalid_request("tool without a scope", None))?;
    bearer
        .require_scopes(&[scope])
        .map_err(|_| ErrorData::invalid_request("insufficient_scope", None))?;
    Ok(bearer.clone())
}

fn text(v: Value) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(v.to_string())])
}

#[tool_router]
impl Tickets {
    #[tool(description = "List the open tickets (scope tickets:read).")]
    async fn read_tickets(
        &self,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let b = authorized(&parts, "read_tickets")?;
        let tickets: Vec<Value> = match self.app.tickets.lock() {
            Ok(t) => t
                .iter()
                .map(|(id, title)| json!({"id": id, "title": title}))
                .collect(),
            Err(_) => return Err(ErrorData::internal_error("state poisoned", None)),
        };
        Ok(text(
            json!({"tickets": tickets, "caller": b.0.subject(), "task": b.0.task()}),
        ))
    }

    #[tool(description = "Open a ticket (scope tickets:write).")]
    async fn write_ticket(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(args): Parameters<WriteArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let b = authorized(&parts, "write_ticket")?;
        if args.title.is_empty() || args.title.chars().count() > 200 {
            return Err(ErrorData::invalid_params(
                "title: 1 to 200 characters",
                None,
            ));
        }
        let id = match self.app.next_id.lock() {
            Ok(mut n) => {
                *n += 1;
                *n
            }
            Err(_) => return Err(ErrorData::internal_error("state poisoned", None)),
        };
        if let Ok(mut t) = self.app.tickets.lock() {
            t.insert(id, args.title);
        }
        Ok(text(json!({"id": id, "caller": b.0.subject()})))
    }

    #[tool(
        description = "Delete a ticket (scope tickets:delete, which needs a human's approval of \
                       exactly this call: authorization_details \
                       [{\"type\":\"mcp_tool_call\",\"tool\":\"delete_ticket\",\"arguments\":{\"id\":N}}])."
    )]
    async fn delete_ticket(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(args): Parameters<DeleteArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let b = authorized(&parts, "delete_ticket")?;
        // The approved call, and only it: the token's authorization_details
        // must name this tool with these arguments.
        let wanted =
            json!({"type": "mcp_tool_call", "tool": "delete_ticket", "arguments": {"id": args.id}});
        let approved =
            b.0.authorization_details()
                .and_then(Value::as_array)
                .is_some_and(|d| d.contains(&wanted));
        if !approved {
            return Err(ErrorData::invalid_request(
                "the token's authorization_details do not approve this call",
                Some(json!({"needed_authorization_details": [wanted]})),
            ));
        }
        let removed = self
            .app
            .tickets
            .lock()
            .map(|mut t| t.remove(&args.id).is_some())
            .unwrap_or(false);
        Ok(text(
            json!({"deleted": removed, "id": args.id, "approved_for": b.0.subject()}),
        ))
    }

    #[tool(
        description = "Read the ticket archive from the downstream archive API, on the caller's \
                       behalf (scope tickets:read; the server exchanges the caller's token)."
    )]
    async fn read_archive(
        &self,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let b = authorized(&parts, "read_archive")?;
        // The received token is the subject of the exchange; it is read
        // from the request (the verified Bearer holds claims, not the JWT).
        let received = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .map(|(_, t)| t.to_owned())
            .ok_or_else(|| ErrorData::invalid_request("no token", None))?;
        let token = self
            .exchange(&received)
            .await
            .map_err(|e| ErrorData::internal_error(e, None))?;
        let resp = self
            .app
            .http
            .get(format!("{}/archive", self.app.downstream))
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| ErrorData::internal_error(format!("downstream: {e}"), None))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        println!(
            "read_archive sub={} jti={}: exchanged for the downstream API, which answered {status}",
            b.0.subject(),
            b.0.jti()
        );
        if status != 200 {
            return Err(ErrorData::internal_error(
                format!("the downstream API answered {status}"),
                None,
            ));
        }
        Ok(text(json!({"downstream": body})))
    }
}

impl Tickets {
    /// RFC 8693: the received token for one for the downstream API, with
    /// this server's certificate as the actor (so the new token's `act`
    /// names this server, and its `sub` is still the caller).
    async fn exchange(&self, subject_token: &str) -> Result<String, String> {
        let form = [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", subject_token),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("actor_token", self.app.thumbprint.as_str()),
            ("actor_token_type", "urn:ietf:params:oauth:token-type:mtls"),
            ("audience", self.app.downstream_audience.as_str()),
            ("scope", "tickets:read"),
        ];
        let resp = self
            .app
            .http
            .post(format!("{}/token", self.app.broker))
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("cannot reach the broker: {e}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!(
                "the broker refused the exchange: {} {}",
                status.as_u16(),
                body["error"].as_str().unwrap_or("(no error code)")
            ));
        }
        body["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "the broker answered without access_token".to_owned())
    }
}

#[tool_handler(
    name = "tessera-tickets",
    instructions = "Ticket tools. Each tool needs its own scope; a 403 names it."
)]
impl ServerHandler for Tickets {}

/// The HTTP gate in front of the MCP transport: a valid token for this
/// resource on every request (`401` with `resource_metadata` otherwise),
/// and for a `tools/call`, the tool's scope (`403 insufficient_scope` with
/// `scope="…"` otherwise). The verified token travels to the tools as a
/// request extension.
async fn gate(State(require): State<RequireScope>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let bearer = match require.check(&mut parts).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let needed = needed_scopes(&bytes);
    let needed: Vec<&str> = needed.iter().map(String::as_str).collect();
    if let Err(r) = bearer.require_scopes(&needed) {
        return r.into_response();
    }
    for tool in called_tools(&bytes) {
        println!(
            "tools/call {tool} sub={} jti={} actors={:?}",
            bearer.0.subject(),
            bearer.0.jti(),
            bearer.0.actors()
        );
    }
    parts.extensions.insert(bearer);
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// The names of the tools a JSON-RPC body calls (one message or a batch).
fn called_tools(body: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let messages = match v {
        Value::Array(a) => a,
        other => vec![other],
    };
    messages
        .iter()
        .filter(|m| m["method"] == "tools/call")
        .filter_map(|m| m["params"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// The scopes those calls need (a tool this server does not have needs
/// none: the SDK answers that it does not exist, and nothing runs).
fn needed_scopes(body: &[u8]) -> Vec<String> {
    let mut scopes: Vec<String> = called_tools(body)
        .iter()
        .filter_map(|t| scope_of(t))
        .map(str::to_owned)
        .collect();
    scopes.sort();
    scopes.dedup();
    scopes
}

/// Logs refusals with their reason (which stays on this side).
async fn log_refusals(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let resp = next.run(req).await;
    if resp.status().is_client_error() || resp.status().is_server_error() {
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let why = resp
            .extensions()
            .get::<RejectionReason>()
            .map_or("", |r| r.0);
        println!(
            "{} {method} {path}  {challenge}  reason={why}",
            resp.status().as_u16()
        );
    }
    resp
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(options()).await {
        eprintln!("mcp_server: {e}");
        std::process::exit(1);
    }
}

async fn run(o: Options) -> Result<(), String> {
    // Every tool has a scope, or the server does not start.
    for t in Tickets::tool_router().list_all() {
        if scope_of(&t.name).is_none() {
            return Err(format!("tool {} has no scope in TOOL_SCOPES", t.name));
        }
    }
    let resource = o
        .resource
        .clone()
        .unwrap_or_else(|| format!("https://{}/mcp", o.listen));
    let mcp_path = resource
        .strip_prefix("https://")
        .and_then(|r| r.find('/').map(|i| r[i..].to_owned()))
        .unwrap_or_else(|| "/".to_owned());
    let ca = certs(&o.keys.join("ca.pem"))?;
    let cert_path = o
        .cert
        .clone()
        .unwrap_or_else(|| o.keys.join("payments-api.pem"));
    let key_path = o
        .key
        .clone()
        .unwrap_or_else(|| o.keys.join("payments-api-key.pem"));
    let identity = certs(&cert_path)?;
    let identity_key = key(&key_path)?;
    let leaf = identity
        .first()
        .ok_or_else(|| format!("{}: no certificate", cert_path.display()))?;
    let thumbprint = tessera::identity::peer::thumbprint_sha256(leaf.as_ref());

    // Tokens for this resource only (aud = its URL), keys discovered from
    // the broker; the metadata names the broker as authorization server.
    let client = tessera::jwks::https_client(&ca, false).map_err(|e| e.to_string())?;
    let protected = ProtectedResource::new(&resource)
        .map_err(|e| format!("--resource {resource}: {e}"))?
        .resource_name("Tessera tickets MCP server")
        .scopes_supported(
            TOOL_SCOPES
                .iter()
                .map(|(_, s)| *s)
                .collect::<std::collections::BTreeSet<_>>(),
        );
    let verifier = Verifier::with_discovery(&o.broker, &resource, client)
        .and_then(|b| {
            b.resource_url(format!("https://{}", o.listen))
                .protected_resource(protected)
                .build()
        })
        .map_err(|e| e.to_string())?;
    let verifier = Arc::new(verifier);

    let tls = FollowerTls {
        roots: ca.clone(),
        cert_chain: identity.clone(),
        key: Some(identity_key.clone_key()),
    };
    let follower = RevocationFollower::start(&o.broker, tls).map_err(|e| e.to_string())?;
    if !follower.wait_synced(Duration::from_secs(10)).await {
        return Err(format!(
            "could not sync revocations from {} within 10 s (is the broker running, and {} in its [introspection] subjects?)",
            o.broker,
            cert_path.display()
        ));
    }

    let tls_client = tessera::jwks::http::tls_client_config(
        &ca,
        false,
        Some((identity, identity_key)),
        &[b"http/1.1"],
    )?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls_client)
        .https_only(true)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let app = Arc::new(App {
        tickets: Mutex::new(BTreeMap::from([(4711, "printer on fire".to_owned())])),
        next_id: Mutex::new(4711),
        http,
        thumbprint,
        broker: o.broker.clone(),
        downstream: o.downstream.clone(),
        downstream_audience: o
            .downstream_audience
            .clone()
            .unwrap_or_else(|| o.downstream.clone()),
    });

    let host = resource
        .strip_prefix("https://")
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
        .to_owned();
    let config = StreamableHttpServerConfig::default().with_allowed_hosts([
        host.clone(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ]);
    let service: StreamableHttpService<Tickets, LocalSessionManager> = StreamableHttpService::new(
        {
            let app = app.clone();
            move || Ok(Tickets { app: app.clone() })
        },
        Default::default(),
        config,
    );
    let mcp =
        Router::new()
            .nest_service(&mcp_path, service)
            .layer(axum::middleware::from_fn_with_state(
                RequireScope::new(verifier.clone(), Vec::<String>::new()),
                gate,
            ));
    let router = Router::new()
        .merge(mcp)
        .merge(metadata_router(&verifier))
        .layer(axum::middleware::from_fn(log_refusals))
        .layer(AxumExtension(Arc::new(follower)));

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
        "mcp server on {resource} (metadata {}), tokens from {}, downstream {}",
        verifier
            .protected_resource()
            .map(|r| r.metadata_url())
            .unwrap_or_default(),
        o.broker,
        o.downstream
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tessera::server::serve_https(
        listener,
        tls,
        router,
        tessera::config::Limits::default(),
        shutdown,
    )
    .await;
    Ok(())
}
