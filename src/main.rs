// One file: the clap command tree, which must be whole in one place for help
// and completions to be generated from it.
//! The `tessera` binary: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the broker allocates a few small buffers per request on many
/// threads; glibc malloc showed up as ~14% of broker CPU in the profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tessera: short-lived, narrowly scoped tokens for workloads (RFC 8693).
#[derive(Parser)]
#[command(name = "tessera", version, about)]
struct Cli {
    /// Machine-readable JSON output.
    #[arg(long, global = true, help_heading = "Output (any verb)")]
    json: bool,
    /// Broker URL.
    #[arg(
        long,
        global = true,
        help_heading = "Connection (any verb; flags or TESSERA_* variables)",
        env = "TESSERA_URL",
        default_value = "https://127.0.0.1:8443"
    )]
    url: String,
    /// Client certificate (PEM): the operator's for admin verbs, the
    /// workload's for `token exchange`.
    #[arg(
        long,
        global = true,
        help_heading = "Connection (any verb; flags or TESSERA_* variables)",
        env = "TESSERA_CERT",
        default_value = "keys/dev/operator.pem"
    )]
    cert: PathBuf,
    /// Private key (PEM) of --cert.
    #[arg(
        long,
        global = true,
        help_heading = "Connection (any verb; flags or TESSERA_* variables)",
        env = "TESSERA_KEY",
        default_value = "keys/dev/operator-key.pem"
    )]
    key: PathBuf,
    /// CA that signed the broker's certificate (PEM).
    #[arg(
        long,
        global = true,
        help_heading = "Connection (any verb; flags or TESSERA_* variables)",
        env = "TESSERA_CA",
        default_value = "keys/dev/ca.pem"
    )]
    ca: PathBuf,
    /// Table layout: `wide` shows every column in full (default: tables
    /// fit 120 columns).
    #[arg(short = 'o', long = "output", global = true, value_name = "FORMAT", value_parser = ["wide"], help_heading = "Output (any verb)")]
    output: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the broker.
    Serve {
        /// Config file.
        #[arg(long, default_value = "config/tessera.toml", env = "TESSERA_CONFIG")]
        config: PathBuf,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Token tools.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Revoke tokens by jti, subject, task or grant (through the admin API).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "subject", "task", "grant"])))]
    Revoke {
        /// One token.
        #[arg(long)]
        jti: Option<String>,
        /// Every token issued until now whose sub or any actor is this identity.
        #[arg(long)]
        subject: Option<String>,
        /// Every token of a task (txn).
        #[arg(long)]
        task: Option<String>,
        /// Every token issued under a JIT grant.
        #[arg(long)]
        grant: Option<String>,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
        /// With --subject: also refuse new exchanges for this long (the kill switch), e.g. 30m.
        #[arg(long, requires = "subject")]
        block_for: Option<String>,
    },
    /// Lift a kill-switch block at once, on every replica (tokens already
    /// revoked stay revoked).
    Unblock {
        /// The blocked identity.
        #[arg(long)]
        subject: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Kill-switch blocks in force.
    Blocks {
        #[command(subcommand)]
        cmd: BlocksCmd,
    },
    /// Revocations in force (the revocation feed's live entries).
    Revocations {
        #[command(subcommand)]
        cmd: RevocationsCmd,
    },
    /// The shared store: recover after it lost its data.
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
    /// Just-in-time grants.
    Grant {
        #[command(subcommand)]
        cmd: GrantCmd,
    },
    /// Human approvals waiting for an operator.
    Approvals {
        #[command(subcommand)]
        cmd: ApprovalsCmd,
    },
    /// Approve a pending request: it becomes one token for exactly what was asked.
    Approve {
        /// Approval id.
        id: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a pending request: its workload gets access_denied.
    Deny {
        /// Approval id.
        id: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Make the broker at --url re-read its configuration file (as SIGHUP
    /// does; one replica). Exit 1 naming the cause if it was refused.
    Reload,
    /// Print a shell completion script: `tessera completion bash >
    /// /etc/bash_completion.d/tessera`, `tessera completion zsh >
    /// "${fpath[1]}/_tessera"`, `tessera completion fish >
    /// ~/.config/fish/completions/tessera.fish`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Development helpers (only with `[dev] generate_missing = true`).
    Dev {
        #[command(subcommand)]
        cmd: DevCmd,
    },
}

#[derive(Subcommand)]
enum DevCmd {
    /// Serve a local OIDC issuer (the config's `dev` issuer: discovery and
    /// JWKS over HTTPS) and print a token it signed for --subject.
    Issuer {
        #[command(flatten)]
        token: DevTokenArgs,
    },
    /// Print another token of the dev issuer (which must be running for the
    /// broker to verify it).
    Token {
        #[command(flatten)]
        token: DevTokenArgs,
    },
}

#[derive(clap::Args)]
struct DevTokenArgs {
    /// Config file.
    #[arg(long, default_value = "config/tessera.toml", env = "TESSERA_CONFIG")]
    config: PathBuf,
    /// The [[issuers]] entry to serve.
    #[arg(long, default_value = "dev")]
    issuer: String,
    /// The token's subject.
    #[arg(long, default_value = "user:alice")]
    subject: String,
    /// A claim, `path=value` (repeatable; `/` steps into objects).
    #[arg(long = "claim", value_name = "PATH=VALUE")]
    claims: Vec<String>,
    /// The token's audience (default: the entry's first audience).
    #[arg(long)]
    audience: Option<String>,
    /// Lifetime, e.g. 10m.
    #[arg(long, default_value = "10m")]
    ttl: String,
}

impl DevTokenArgs {
    fn into_args(self) -> Result<tessera::cli::dev::TokenArgs, tessera::cli::DurationFlagError> {
        let ttl = tessera::cli::parse_duration_flag("--ttl", &self.ttl)?;
        Ok(tessera::cli::dev::TokenArgs {
            config: self.config,
            issuer: self.issuer,
            subject: self.subject,
            claims: self.claims,
            audience: self.audience,
            ttl,
        })
    }
}

#[derive(Subcommand)]
enum StoreCmd {
    /// After the store lost its data (every call answers 503, /readyz says
    /// so): re-apply every revocation and block an audit trail says can
    /// still matter, and serve again. Idempotent.
    #[command(group(clap::ArgGroup::new("from").required(true).args(["from_audit", "accept_loss"])))]
    Recover {
        /// A JSON-lines audit file of the broker (its `[audit] path`).
        #[arg(long, value_name = "FILE")]
        from_audit: Option<PathBuf>,
        /// Serve again WITHOUT restoring anything (no audit trail to hand):
        /// revoked tokens still alive become valid again. Audited as such.
        #[arg(long)]
        accept_loss: bool,
    },
}

#[derive(Subcommand)]
enum BlocksCmd {
    /// Every live block: subject and until when.
    List,
}

#[derive(Subcommand)]
enum RevocationsCmd {
    /// Every live revocation: kind, value, when, and until when it is kept.
    List,
}

#[derive(Subcommand)]
enum ApprovalsCmd {
    /// Pending approvals (with --all: decided and expired ones still retained).
    List {
        /// Also decided and expired approvals.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// The newest records of the broker's audit stream.
    Tail {
        /// Keep printing new records (polls every second).
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many of the newest records to print first.
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        n: usize,
        /// Only the records of this token (jti).
        #[arg(long)]
        jti: Option<String>,
        /// Only records with this reason (e.g. no_matching_policy).
        #[arg(long)]
        reason: Option<String>,
        /// Only records with this OAuth error (e.g. invalid_request): the
        /// refusals behind a generic error description, with their reason.
        #[arg(long)]
        error: Option<String>,
        /// Only records whose subject or client is this identity.
        #[arg(long)]
        subject: Option<String>,
        /// Only records of this event (e.g. refused, issued).
        #[arg(long)]
        event: Option<String>,
    },
    /// Check the hash chains of an audit file, or of the broker's audit stream.
    Verify {
        /// A JSON-lines audit file (default: the broker's stream).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Exit 0 when there is no record at all (default: exit 1, "verified nothing").
        #[arg(long)]
        allow_empty: bool,
        /// With --file: the file was rotated (its chains may start past seq 1;
        /// default: a chain that does not start at seq 1 lost its first records).
        #[arg(long, requires = "file")]
        rotated: bool,
        /// With --file: also check each chain against the store's checkpoint of
        /// its last record (read from the broker), so a removed tail shows.
        #[arg(long, requires = "file")]
        checkpoint_from_store: bool,
    },
}

#[derive(Subcommand)]
enum GrantCmd {
    /// Let SUBJECT receive SCOPE for AUDIENCE for TTL (at most N times).
    Create {
        /// The identity (SPIFFE ID, DNS name or OIDC sub).
        #[arg(long)]
        subject: String,
        /// Space-separated scopes.
        #[arg(long)]
        scope: String,
        /// The audience.
        #[arg(long)]
        audience: String,
        /// Lifetime, e.g. 10m.
        #[arg(long)]
        ttl: String,
        /// Uses, at least 1 (unlimited until expiry when absent).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        uses: Option<u32>,
        /// Only for this task.
        #[arg(long)]
        task: Option<String>,
        /// Refuse (exit 1) a grant that no policy could ever use, instead
        /// of creating it with a warning.
        #[arg(long)]
        strict: bool,
    },
    /// Live grants.
    List {
        /// Only this subject's.
        #[arg(long)]
        subject: Option<String>,
    },
    /// Remove a grant and revoke every token issued under it.
    Revoke {
        /// Grant id.
        id: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a config file without serving (exit 1 naming file, key and
    /// reason); warn (stderr) about trust that is valid but too wide.
    Check {
        /// Config file.
        #[arg(long, default_value = "config/tessera.toml", env = "TESSERA_CONFIG")]
        config: PathBuf,
        /// Exit 1 when there is any warning (for CI).
        #[arg(long)]
        deny_warnings: bool,
        /// Do not look for or read the files the config names (TLS
        /// material, keys, CAs, token files): check a deployment's config
        /// where its secrets are not mounted (CI).
        #[arg(long)]
        no_files: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Dry-run a request against the config's policies, offline: which
    /// policy would grant, or why it would be refused (exit 0 granted, 1 refused).
    Explain {
        /// Config file.
        #[arg(long, default_value = "config/tessera.toml", env = "TESSERA_CONFIG")]
        config: PathBuf,
        /// An [[issuers]] name, or `mtls` for a client certificate.
        #[arg(long)]
        issuer: String,
        /// The subject: `sub` of the token, or the certificate's SPIFFE ID / DNS name.
        #[arg(long)]
        subject: String,
        /// A token claim, `path=value` (repeatable); `/` steps into objects
        /// (`kubernetes.io/namespace=ci`), values are strings, a path given
        /// twice makes an array.
        #[arg(long = "claim", value_name = "PATH=VALUE")]
        claims: Vec<String>,
        /// The audience (one).
        #[arg(long)]
        audience: String,
        /// Space-separated scopes.
        #[arg(long)]
        scope: String,
        /// Delegation: the actor's [[issuers]] name, or `mtls`.
        #[arg(long, requires = "actor")]
        actor_issuer: Option<String>,
        /// Delegation: the actor's subject.
        #[arg(long, requires = "actor_issuer")]
        actor: Option<String>,
        /// A claim of the actor's token, like --claim (repeatable).
        #[arg(long = "actor-claim", value_name = "PATH=VALUE", requires = "actor")]
        actor_claims: Vec<String>,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Write a new PKCS#8 PEM signing key.
    Generate {
        /// ES256, EdDSA or RS256.
        #[arg(long, default_value = "ES256")]
        algorithm: String,
        /// Key directory.
        #[arg(long, default_value = "keys/signing")]
        dir: PathBuf,
        /// Write a *next* key (`….next.pem`): published after the next reload
        /// but never signing until `tessera keys promote` (key rotation).
        #[arg(long)]
        next: bool,
    },
    /// Promote a next key: rename `X.next.pem` to `X.pem` (it signs after
    /// the next reload); never overwrites an existing file.
    Promote {
        /// The next key file.
        file: PathBuf,
    },
    /// List the local key directory.
    List {
        /// Key directory (default: the config's `[tokens] signing_keys`, else keys/signing).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Which algorithm signs, any case (default: the config's `[tokens] algorithm`, else ES256).
        #[arg(long)]
        algorithm: Option<String>,
        /// Config file to read the algorithm and directory from (default:
        /// config/tessera.toml when it exists).
        #[arg(long, env = "TESSERA_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Decode a JWT offline, WITHOUT verifying it (`-` reads standard input).
    Decode {
        /// The token.
        token: String,
    },
    /// Exchange a subject token, or the client certificate (--cert/--key),
    /// for a Tessera access token and print it (with --json: the whole
    /// answer). Waits for a human approval when one is needed.
    Exchange {
        /// The audience (one).
        #[arg(long)]
        audience: String,
        /// Space-separated scopes.
        #[arg(long)]
        scope: String,
        /// A file holding the subject token (an OIDC JWT, e.g. a projected
        /// service-account token, or a Tessera token); `-` reads stdin.
        /// Without it the client certificate (--cert/--key) is the subject.
        #[arg(long, value_name = "FILE")]
        subject_token_file: Option<PathBuf>,
        /// subject_token_type: jwt, id_token, access_token or a full URN.
        #[arg(long, default_value = "jwt", requires = "subject_token_file")]
        subject_token_type: String,
        /// A file holding the actor's JWT (delegation: the actor acts for the subject).
        #[arg(long, value_name = "FILE")]
        actor_token_file: Option<PathBuf>,
        /// Delegation: the client certificate (--cert/--key) is the actor.
        #[arg(long)]
        actor_cert: bool,
        /// The task id (txn).
        #[arg(long)]
        task: Option<String>,
        /// Requested lifetime in seconds.
        #[arg(long)]
        expires_in: Option<u64>,
        /// RFC 9396 authorization_details (a JSON array).
        #[arg(long, value_name = "JSON")]
        authorization_details: Option<String>,
        /// Give up waiting for a human approval after this long (e.g. 10m).
        #[arg(long, default_value = "10m")]
        wait: String,
        /// Bind the token to a DPoP key (RFC 9449): an ES256 PEM file,
        /// created when absent; prove possession with `tessera token proof`.
        #[arg(long, value_name = "FILE")]
        dpop_key: Option<PathBuf>,
    },
    /// Print a DPoP proof (RFC 9449) for one request to a resource server,
    /// by the key a token was bound to with `token exchange --dpop-key`.
    Proof {
        /// The DPoP key file.
        #[arg(long, value_name = "FILE")]
        dpop_key: PathBuf,
        /// The request's method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// The request's URL (no query or fragment).
        #[arg(long = "for-url", value_name = "URL")]
        for_url: String,
        /// The access token the request carries (sets `ath`).
        #[arg(long)]
        token: Option<String>,
    },
    /// Verify a Tessera access token against the broker's JWKS (--url) and
    /// say which check fails (exit 0 valid, 1 invalid).
    Verify {
        /// The token (`-` reads standard input).
        token: String,
        /// The audience the token must be for.
        #[arg(long)]
        audience: String,
        /// The issuer expected (default: the one the broker's metadata names).
        #[arg(long)]
        issuer: Option<String>,
    },
}

/// The connection flags: listed once, in `tessera --help`.
const CONNECTION_FLAGS: [&str; 4] = ["url", "cert", "key", "ca"];

/// What a verb's help says in place of the connection flags.
const CONNECTION_POINTER: &str =
    "Connection options (--url, --cert, --key, --ca or TESSERA_* variables): see `tessera --help`";

/// The command tree as parsed: the connection flags stay global (accepted
/// before or after the verb, and from the environment) but each verb's
/// help names them in one pointer line instead of repeating them.
fn cli_command() -> clap::Command {
    let cmd = <Cli as clap::CommandFactory>::command();
    let conn: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| CONNECTION_FLAGS.contains(&a.get_id().as_str()))
        .cloned()
        .collect();
    hide_in_subcommands(cmd, &conn)
}

/// Give every subcommand, recursively, its own hidden copy of `args` (clap
/// then propagates nothing over it: it skips an id the subcommand already
/// has) and the pointer line.
fn hide_in_subcommands(cmd: clap::Command, args: &[clap::Arg]) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    names.iter().fold(cmd, |cmd, name| {
        cmd.mut_subcommand(name, |sc| {
            let sc = args
                .iter()
                .fold(sc, |sc, a| sc.arg(a.clone().hide(true)))
                .after_help(CONNECTION_POINTER);
            hide_in_subcommands(sc, args)
        })
    })
}

fn main() -> ExitCode {
    let matches = cli_command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // `token exchange` presents --cert/--key with a subject token only when
    // they were given (flag or environment), not the operator defaults.
    let cert_given = matches!(
        matches.value_source("cert"),
        Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
    );
    tessera::cli::set_json_output(cli.json);
    tessera::cli::set_wide_output(cli.output.as_deref() == Some("wide"));
    // One crypto provider for every TLS user in the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let code = match cli.cmd {
        Cmd::Serve { config } => serve(config),
        Cmd::Config {
            cmd:
                ConfigCmd::Check {
                    config,
                    deny_warnings,
                    no_files,
                },
        } => tessera::cli::config_check_with(&config, cli.json, deny_warnings, no_files),
        Cmd::Policy {
            cmd:
                PolicyCmd::Explain {
                    config,
                    issuer,
                    subject,
                    claims,
                    audience,
                    scope,
                    actor_issuer,
                    actor,
                    actor_claims,
                },
        } => {
            let args = tessera::cli::explain::ExplainArgs {
                config,
                issuer,
                subject,
                claims,
                audience,
                scope,
                actor_issuer,
                actor,
                actor_claims,
            };
            tessera::cli::explain::policy_explain(&args, cli.json)
        }
        Cmd::Keys {
            cmd:
                KeysCmd::Generate {
                    algorithm,
                    dir,
                    next,
                },
        } => tessera::cli::keys_generate_as(&algorithm, &dir, next, cli.json),
        Cmd::Keys {
            cmd: KeysCmd::Promote { file },
        } => tessera::cli::keys_promote(&file, cli.json),
        Cmd::Keys {
            cmd:
                KeysCmd::List {
                    dir,
                    algorithm,
                    config,
                },
        } => tessera::cli::keys_list(
            dir.as_deref(),
            algorithm.as_deref(),
            config.as_deref(),
            cli.json,
        ),
        Cmd::Token {
            cmd: TokenCmd::Decode { token },
        } => tessera::cli::token_decode(&token, cli.json),
        Cmd::Token {
            cmd:
                TokenCmd::Exchange {
                    audience,
                    scope,
                    subject_token_file,
                    subject_token_type,
                    actor_token_file,
                    actor_cert,
                    task,
                    expires_in,
                    authorization_details,
                    wait,
                    dpop_key,
                },
        } => {
            let wait = match tessera::cli::parse_duration_flag("--wait", &wait) {
                Ok(d) => d,
                Err(m) => return usage_error(m, cli.json),
            };
            let a = tessera::cli::token::ExchangeArgs {
                audience,
                scope,
                subject_token_file,
                subject_token_type: Some(subject_token_type),
                actor_token_file,
                actor_is_certificate: actor_cert,
                present_certificate: cert_given,
                task,
                expires_in,
                authorization_details,
                wait,
                dpop_key,
            };
            let conn = match connection(&cli.url, cli.cert, cli.key, cli.ca) {
                Ok(c) => c,
                Err(m) => return usage_error(m, cli.json),
            };
            block_on(tessera::cli::token::exchange(&conn, &a, cli.json))
        }
        Cmd::Token {
            cmd:
                TokenCmd::Proof {
                    dpop_key,
                    method,
                    for_url,
                    token,
                },
        } => tessera::cli::token::proof(&dpop_key, &method, &for_url, token.as_deref()),
        Cmd::Token {
            cmd:
                TokenCmd::Verify {
                    token,
                    audience,
                    issuer,
                },
        } => {
            let token = if token == "-" {
                let mut buf = String::new();
                use std::io::Read;
                if std::io::stdin()
                    .take(1 << 20)
                    .read_to_string(&mut buf)
                    .is_err()
                {
                    return usage_error("cannot read the token from standard input", cli.json);
                }
                buf
            } else {
                token
            };
            let conn = match connection(&cli.url, cli.cert, cli.key, cli.ca) {
                Ok(c) => c,
                Err(m) => return usage_error(m, cli.json),
            };
            block_on(tessera::cli::token::verify(
                &conn,
                &token,
                &audience,
                issuer.as_deref(),
                cli.json,
            ))
        }
        Cmd::Revoke {
            jti,
            subject,
            task,
            grant,
            reason,
            block_for,
        } => {
            if block_for.is_some() && subject.is_none() {
                tessera::cli::print_error("--block-for goes with --subject", 2, cli.json);
                return ExitCode::from(2);
            }
            use tessera::store::RevocationKind as K;
            let (kind, value) = match (jti, subject, task, grant) {
                (Some(v), _, _, _) => (K::Jti, v),
                (_, Some(v), _, _) => (K::Subject, v),
                (_, _, Some(v), _) => (K::Task, v),
                (_, _, _, Some(v)) => (K::Grant, v),
                _ => return ExitCode::from(2),
            };
            // Bad usage is found here, before any round trip.
            let checked =
                tessera::exchange::operator::check_revocation(kind, &value).and_then(|()| {
                    match &block_for {
                        Some(d) => tessera::exchange::operator::parse_block_for(d).map(|_| ()),
                        None => Ok(()),
                    }
                });
            if let Err(m) = checked {
                return usage_error(m, cli.json);
            }
            let conn = match connection(&cli.url, cli.cert, cli.key, cli.ca) {
                Ok(c) => c,
                Err(m) => return usage_error(m, cli.json),
            };
            let a = tessera::cli::admin::RevokeArgs {
                kind: kind.as_str(),
                value,
                reason,
                block_for,
            };
            block_on(tessera::cli::admin::revoke(&conn, a, cli.json))
        }
        Cmd::Grant { cmd } => {
            let conn = match connection(&cli.url, cli.cert, cli.key, cli.ca) {
                Ok(c) => c,
                Err(m) => return usage_error(m, cli.json),
            };
            match cmd {
                GrantCmd::Create {
                    subject,
                    scope,
                    audience,
                    ttl,
                    uses,
                    task,
                    strict,
                } => {
                    let checked =
                        tessera::exchange::operator::check_identity(&subject).and_then(|()| {
                            tessera::exchange::operator::check_grant_ttl(&ttl).map(|_| ())
                        });
                    if let Err(m) = checked {
                        return usage_error(m, cli.json);
                    }
                    let a = tessera::cli::admin::GrantArgs {
                        subject,
                        scope,
                        audience,
                        ttl,
                        uses,
                        task,
                        strict,
                    };
                    block_on(tessera::cli::admin::grant_create(&conn, a, cli.json))
                }
                GrantCmd::List { subject } => {
                    block_on(tessera::cli::admin::grant_list(&conn, subject, cli.json))
                }
                GrantCmd::Revoke { id } => {
                    block_on(tessera::cli::admin::grant_revoke(&conn, &id, cli.json))
                }
            }
        }
        Cmd::Unblock { subject, reason } => {
            if let Err(m) = tessera::exchange::operator::check_identity(&subject) {
                return usage_error(m, cli.json);
            }
            let conn = match connection(&cli.url, cli.cert, cli.key, cli.ca) {
                Ok(c) => c,
                Err(m) => return usage_error(m, cli.json),
            };
            block_on(tessera::cli::admin::unblock(
                &conn, &subject, reason, cli.json,
            ))
        }
        Cmd::Store {
            cmd:
                StoreCmd::Recover {
                    from_audit,
                    accept_loss,
                },
        } => {
            let conn = match connection(&cli.url, cli.cert, cli.key, cli.ca) {
                Ok(c) => c,
                Err(m) => return usage_error(m, cli.json),
            };
            block_on(tessera::cli::admin::store_recover(
                &conn,
                from_audit.as_deref(),
                accept_loss,
                cli.json,
            ))
        }
        Cmd::Blocks {
            cmd: BlocksCmd::List,
        } => {
            let conn = match connection(&cli.url, cli.cert, cli.key, cli.ca) {
                Ok(c) => c,
                Err(m) => return usage_error(m, cli.json),
            };
            block_on(tessera::cli::admin::blocks_list(&conn, cli.json))
        }
        Cmd::Revocations {
            cmd: RevocationsCmd::List,
        } => {
            let conn = match connection(&cli.url, cli.cert, cli.key, cli.ca) {
                Ok(c) => c,
                Err(m) => return usage_error(m, cli.json),
            };
            block_on(tessera::cli::admin::revocations_list(&conn, cli.json))
        }
        Cmd::Approvals {
            cmd: ApprovalsCmd::List { all },
        } => {
            let conn = match connection(&cli.url, cli.cert, cli.key, cli.ca) {
                Ok(c) => c,
                Err(m) => return usage_error(m, cli.json),
            };
            block_on(tessera::cli::admin::approvals_list(&conn, all, cli.json))
        }
        Cmd::Approve { id, reason } => {
            let conn = match connection(&cli.url, cli.cert, cli.key, cli.ca) {
                Ok(c) => c,
                Err(m) => return usage_error(m, cli.json),
            };
            block_on(tessera::cli::admin::approval_decide(
                &conn, &id, true, reason, cli.json,
            ))
        }
        Cmd::Deny { id, reason } => {
            let conn = match connection(&cli.url, cli.cert, cli.key, cli.ca) {
                Ok(c) => c,
                Err(m) => return usage_error(m, cli.json),
            };
            block_on(tessera::cli::admin::approval_decide(
                &conn, &id, false, reason, cli.json,
            ))
        }
        Cmd::Reload => {
            let conn = match connection(&cli.url, cli.cert, cli.key, cli.ca) {
                Ok(c) => c,
                Err(m) => return usage_error(m, cli.json),
            };
            block_on(tessera::cli::admin::reload(&conn, cli.json))
        }
        Cmd::Completion { shell } => {
            // The tree without hidden copies: completions offer the
            // connection flags after every verb too.
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "tessera", &mut out);
            use std::io::Write;
            match std::io::stdout().lock().write_all(&out) {
                Ok(()) => 0,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 141,
                Err(e) => {
                    eprintln!("error: cannot write to stdout: {e}");
                    1
                }
            }
        }
        Cmd::Dev { cmd } => {
            let (serve_it, args) = match cmd {
                DevCmd::Issuer { token } => (true, token),
                DevCmd::Token { token } => (false, token),
            };
            let a = match args.into_args() {
                Ok(a) => a,
                Err(m) => return usage_error(m, cli.json),
            };
            if serve_it {
                block_on(tessera::cli::dev::issuer(&a))
            } else {
                tessera::cli::dev::token(&a)
            }
        }
        Cmd::Audit { cmd } => match cmd {
            AuditCmd::Tail {
                follow,
                n,
                jti,
                reason,
                error,
                subject,
                event,
            } => {
                let conn = match connection(&cli.url, cli.cert, cli.key, cli.ca) {
                    Ok(c) => c,
                    Err(m) => return usage_error(m, cli.json),
                };
                let o = tessera::cli::audit::TailOptions {
                    jti,
                    reason,
                    error,
                    subject,
                    event,
                    wide: cli.output.as_deref() == Some("wide"),
                };
                block_on(tessera::cli::audit::tail_with(
                    &conn, n, follow, &o, cli.json,
                ))
            }
            AuditCmd::Verify {
                file: Some(f),
                allow_empty,
                rotated: false,
                checkpoint_from_store: false,
            } => tessera::cli::audit::verify_file(&f, cli.json, allow_empty),
            AuditCmd::Verify {
                file: Some(f),
                allow_empty,
                rotated,
                checkpoint_from_store,
            } => {
                let conn = if checkpoint_from_store {
                    match connection(&cli.url, cli.cert, cli.key, cli.ca) {
                        Ok(c) => Some(c),
                        Err(m) => return usage_error(m, cli.json),
                    }
                } else {
                    None
                };
                block_on(tessera::cli::audit::verify_file_checked(
                    &f,
                    rotated,
                    conn.as_ref(),
                    cli.json,
                    allow_empty,
                ))
            }
            AuditCmd::Verify {
                file: None,
                allow_empty,
                ..
            } => {
                let conn = match connection(&cli.url, cli.cert, cli.key, cli.ca) {
                    Ok(c) => c,
                    Err(m) => return usage_error(m, cli.json),
                };
                block_on(tessera::cli::audit::verify_stream(
                    &conn,
                    cli.json,
                    allow_empty,
                ))
            }
        },
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// Bad usage found before any round trip: the message on stderr (a JSON
/// object under `--json`), exit 2.
fn usage_error(msg: impl std::fmt::Display, json: bool) -> ExitCode {
    tessera::cli::print_error(&msg.to_string(), 2, json);
    ExitCode::from(2)
}

fn connection(
    url: &str,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
) -> Result<tessera::cli::admin::Connection, tessera::cli::admin::UrlError> {
    tessera::cli::admin::Connection::new(url, cert, key, ca)
}

fn block_on(f: impl std::future::Future<Output = i32>) -> i32 {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            1
        }
    }
}

fn serve(config: PathBuf) -> i32 {
    let _log_guard = tessera::telemetry::init_logging();
    // The configuration is read before the runtime exists: it says how many
    // threads the runtime has (`[server] worker_threads`). Parsing takes
    // milliseconds; the signal handlers are installed right after.
    let cfg = match tessera::config::Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let threads = cfg.server.threads();
    let dev = cfg.dev_generate_missing;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime ({threads} worker threads): {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        // First of all: a SIGHUP that arrives during start-up must not kill
        // the process (the default action); it reloads once serving.
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot install signal handlers: {e}");
                return 1;
            }
        };
        if let Err(e) = tessera::app::prepare(&cfg) {
            eprintln!("error: {e}");
            return 1;
        }
        let running = match tessera::app::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        };
        if dev {
            for l in tessera::cli::dev::banner(running.addr) {
                eprintln!("{l}");
            }
        }
        // SIGHUP reloads (outcome logged, counted and audited by `reload`);
        // SIGTERM or ctrl-c ends the loop.
        while let Signal::Reload = signals.next().await {
            tracing::info!("SIGHUP: reloading the configuration");
            let _ = running.app.reload().await;
        }
        let snap = running.app.snapshot();
        tracing::info!(
            grace = ?snap.config.server.shutdown_grace,
            drain_timeout = ?snap.config.server.drain_timeout,
            "shutting down: readyz now fails, then the listener closes and in-flight requests drain"
        );
        drop(snap);
        running.shutdown_configured().await;
        tracing::info!("shutdown complete");
        0
    })
}

/// What a signal asks of `serve`.
enum Signal {
    /// SIGHUP: re-read the configuration.
    Reload,
    /// SIGTERM or ctrl-c: drain and exit 0.
    Terminate,
}

/// The signals `serve` handles.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => Signal::Terminate,
                _ = self.term.recv() => Signal::Terminate,
                _ = self.hup.recv() => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Terminate
        }
    }
}
