//! The `tessera` binary: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Tessera: short-lived, narrowly scoped tokens for workloads (RFC 8693).
#[derive(Parser)]
#[command(name = "tessera", version, about)]
struct Cli {
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
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
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a config file without serving (exit 1 naming file, key and reason).
    Check {
        /// Config file.
        #[arg(long, default_value = "config/tessera.toml", env = "TESSERA_CONFIG")]
        config: PathBuf,
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
    },
    /// List the local key directory.
    List {
        /// Key directory.
        #[arg(long, default_value = "keys/signing")]
        dir: PathBuf,
        /// Which algorithm signs (to mark the signing key).
        #[arg(long, default_value = "ES256")]
        algorithm: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Decode a JWT offline, WITHOUT verifying it (`-` reads standard input).
    Decode {
        /// The token.
        token: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for every TLS user in the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let code = match cli.cmd {
        Cmd::Serve { config } => serve(config),
        Cmd::Config {
            cmd: ConfigCmd::Check { config },
        } => tessera::cli::config_check(&config, cli.json),
        Cmd::Keys {
            cmd: KeysCmd::Generate { algorithm, dir },
        } => tessera::cli::keys_generate(&algorithm, &dir, cli.json),
        Cmd::Keys {
            cmd: KeysCmd::List { dir, algorithm },
        } => tessera::cli::keys_list(&dir, &algorithm, cli.json),
        Cmd::Token {
            cmd: TokenCmd::Decode { token },
        } => tessera::cli::token_decode(&token, cli.json),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn serve(config: PathBuf) -> i32 {
    tessera::telemetry::init_logging();
    let cfg = match tessera::config::Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    if let Err(e) = tessera::app::prepare(&cfg) {
        eprintln!("error: {e}");
        return 1;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let running = match tessera::app::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down: readyz now fails, draining in-flight requests");
        running.shutdown(Duration::from_secs(1)).await;
        0
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
