//! A demo agent: proves its identity with its mTLS client certificate
//! (a SPIFFE X.509-SVID), exchanges it at the broker for a task token
//! (RFC 8693, `subject_token_type=...:mtls`) and calls the tickets API
//! with it over the same certificate (the token is bound to it,
//! `cnf.x5t#S256`).
//!
//! The agent keeps its task token in `--token-file` (default
//! `target/demo-agent.token`, mode 0600) and reuses it while it is valid
//! for the same task, scope and audience, as an agent working through a
//! multi-step task would; `--fresh` asks the broker for a new one. It asks
//! for a new one too when the scope or audience it needs changed, and when
//! the API refuses the cached token as `invalid_token` (revoked): a dead
//! token is dropped, never retried.
//!
//! ```sh
//! cargo run --release --example agent
//! ```
//!
//! Options: `--broker URL` (default `https://127.0.0.1:8443`), `--api URL`
//! (default `https://127.0.0.1:8444`), `--keys DIR` (default `keys/dev`),
//! `--task ID` (default `triage-4711`), `--scope S` (default
//! `tickets:read`), `--audience AUD` (default `https://api.example.com`),
//! `--token-file PATH`, `--fresh`. Exit status: 0 when the API answered
//! 2xx, 1 when the broker or the API refused.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

struct Options {
    broker: String,
    api: String,
    keys: PathBuf,
    task: String,
    scope: String,
    audience: String,
    token_file: PathBuf,
    fresh: bool,
}

fn usage() -> ! {
    eprintln!("usage: agent [--broker URL] [--api URL] [--keys DIR] [--task ID] [--scope S] [--audience AUD] [--token-file PATH] [--fresh]");
    std::process::exit(2)
}

fn options() -> Options {
    let mut o = Options {
        broker: "https://127.0.0.1:8443".into(),
        api: "https://127.0.0.1:8444".into(),
        keys: PathBuf::from("keys/dev"),
        task: "triage-4711".into(),
        scope: "tickets:read".into(),
        audience: "https://api.example.com".into(),
        token_file: PathBuf::from("target/demo-agent.token"),
        fresh: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--fresh" {
            o.fresh = true;
            continue;
        }
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--broker" => o.broker = value.trim_end_matches('/').to_owned(),
            "--api" => o.api = value.trim_end_matches('/').to_owned(),
            "--keys" => o.keys = PathBuf::from(value),
            "--task" => o.task = value,
            "--scope" => o.scope = value,
            "--audience" => o.audience = value,
            "--token-file" => o.token_file = PathBuf::from(value),
            _ => usage(),
        }
    }
    o
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// An HTTPS client that trusts the dev CA and presents the agent's
/// certificate.
fn client(keys: &Path) -> Result<reqwest::Client, String> {
    let pem = |name: &str| -> Result<Vec<CertificateDer<'static>>, String> {
        CertificateDer::pem_slice_iter(&read(&keys.join(name))?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{name}: {e}"))
    };
    let key = PrivateKeyDer::from_pem_slice(&read(&keys.join("agent-key.pem"))?)
        .map_err(|e| format!("agent-key.pem: {e}"))?;
    let tls = tessera::jwks::http::tls_client_config(
        &pem("ca.pem")?,
        false,
        Some((pem("agent.pem")?, key)),
        &[b"http/1.1"],
    )?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(true)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A cached token for this task, scope and audience that is still valid
/// for a while (a token for another scope or audience is not reused).
fn cached(o: &Options) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(&o.token_file).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let (token, exp) = (v["token"].as_str()?, v["exp"].as_u64()?);
    let same = v["task"].as_str()? == o.task
        && v["scope"].as_str()? == o.scope
        && v["audience"].as_str()? == o.audience;
    (same && exp > now() + 10).then(|| (token.to_owned(), exp))
}

fn save(o: &Options, token: &str, exp: u64) -> Result<(), String> {
    if let Some(dir) = o.token_file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let body = serde_json::json!({"task": o.task, "scope": o.scope, "audience": o.audience,
                                  "token": token, "exp": exp})
    .to_string();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&o.token_file)
        .map_err(|e| format!("{}: {e}", o.token_file.display()))?;
    std::io::Write::write_all(&mut f, body.as_bytes())
        .map_err(|e| format!("{}: {e}", o.token_file.display()))
}

async fn exchange(o: &Options, http: &reqwest::Client) -> Result<(String, u64), String> {
    let form = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:mtls",
        ),
        ("audience", o.audience.as_str()),
        ("scope", o.scope.as_str()),
        ("task", o.task.as_str()),
    ];
    let resp = http
        .post(format!("{}/token", o.broker))
        .form(&form)
        .send()
        .await
        .map_err(|e| format!("cannot reach the broker at {}: {e}", o.broker))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!(
            "the broker refused: {} {}",
            status.as_u16(),
            body["error"].as_str().unwrap_or("(no error code)")
        ));
    }
    let token = body["access_token"]
        .as_str()
        .ok_or("the broker answered without access_token")?
        .to_owned();
    let exp = now() + body["expires_in"].as_u64().unwrap_or(0);
    println!(
        "exchanged my certificate for a task token: task={} scope={} expires_in={}s",
        o.task,
        body["scope"].as_str().unwrap_or(""),
        body["expires_in"]
    );
    Ok((token, exp))
}

async fn run(o: Options) -> Result<(), String> {
    let http = client(&o.keys)?;
    let reused = match (o.fresh, cached(&o)) {
        (false, Some((t, exp))) => {
            println!(
                "reusing my task token for task={} (expires in {}s)",
                o.task,
                exp.saturating_sub(now())
            );
            Some(t)
        }
        _ => None,
    };
    if let Some(token) = reused {
        match call_api(&o, &http, &token).await? {
            Answer::Refused(challenge) if challenge.contains("invalid_token") => {
                // Revoked (or otherwise dead): never reuse it again.
                let _ = std::fs::remove_file(&o.token_file);
                println!(
                    "my cached token was refused ({challenge}); asking the broker for a new one"
                );
            }
            answer => return answer.into_result(),
        }
    }
    let (token, exp) = exchange(&o, &http).await?;
    save(&o, &token, exp)?;
    call_api(&o, &http, &token).await?.into_result()
}

/// What the API answered.
enum Answer {
    /// 2xx.
    Served,
    /// Anything else, with the status and the `WWW-Authenticate` challenge.
    Refused(String),
}

impl Answer {
    fn into_result(self) -> Result<(), String> {
        match self {
            Answer::Served => Ok(()),
            Answer::Refused(why) => Err(format!("the API refused: GET /tickets -> {why}")),
        }
    }
}

async fn call_api(o: &Options, http: &reqwest::Client, token: &str) -> Result<Answer, String> {
    let resp = http
        .get(format!("{}/tickets", o.api))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("cannot reach the API at {}: {e}", o.api))?;
    let status = resp.status();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() {
        println!("GET /tickets -> {} {body}", status.as_u16());
        Ok(Answer::Served)
    } else {
        Ok(Answer::Refused(format!("{} {challenge}", status.as_u16())))
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(options()).await {
        eprintln!("agent: {e}");
        std::process::exit(1);
    }
}
