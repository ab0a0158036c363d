//! Operator verbs that work offline: `config check`, `keys generate`,
//! `keys list`, `token decode`, `policy explain` (in [`explain`]) (and, in [`admin`], the verbs that talk to a
//! running broker). Each returns the process exit code
//! (0 success, 1 refused or failed, 2 bad usage) and prints errors to stderr.
//!
//! Output goes through `outln!`: a closed stdout (`tessera audit tail
//! --follow | head`) ends the process quietly with status 141, as a SIGPIPE
//! would, instead of `println!`'s panic; any other write error is reported
//! on stderr with status 1.

/// `println!` for the CLI (see the module docs).
macro_rules! outln {
    () => {
        $crate::cli::out_line(format_args!(""))
    };
    ($($t:tt)*) => {
        $crate::cli::out_line(format_args!($($t)*))
    };
}

/// `eprintln!` for the CLI: one line to stderr, made [`terminal_safe`](crate::text::terminal_safe)
/// (error messages can quote what a workload or the broker sent).
macro_rules! errln {
    ($($t:tt)*) => {
        $crate::cli::err_line(format_args!($($t)*))
    };
}

pub mod admin;
pub mod audit;
pub mod dev;
pub mod explain;
pub mod token;

use std::io::{Read, Write};
use std::path::Path;

use base64::Engine;
use serde_json::json;

use crate::config::Config;
use crate::mint::keyring::{generate_key_file, KeyRing};
use crate::mint::SigningAlgorithm;

/// `tessera config check [--config PATH] [--deny-warnings]`: errors exit 1;
/// warnings (trust that is valid but too wide, see [`crate::config::lint`])
/// go to stderr, one `warning: FILE: KEY: REASON` line each, and exit 0
/// unless `deny_warnings`. With `--json`, stdout carries one object
/// (`ok`, `warnings`: `[{policy, field, kind, message}]`) and stderr only
/// the reason of a failure.
pub fn config_check(path: &Path, as_json: bool, deny_warnings: bool) -> i32 {
    config_check_with(path, as_json, deny_warnings, false)
}

/// [`config_check`]; with `no_files`, the files the config names (TLS
/// material, keys, CAs, token files) are neither looked for nor read: the
/// syntax, values and policies of a deployment's config are checked where
/// its secrets are not (CI). Says so in a note.
pub fn config_check_with(path: &Path, as_json: bool, deny_warnings: bool, no_files: bool) -> i32 {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            errln!("error: {e}");
            return 1;
        }
    };
    if no_files {
        let n = cfg.referenced_files().len();
        return report_check(
            path,
            &cfg,
            vec![format!(
                "--no-files: the {} the config names were not checked (run without it where they are mounted)",
                admin::count(n, "file", "files")
            )],
            as_json,
            deny_warnings,
        );
    }
    let missing = cfg.check_files();
    if let (Err(e), false) = (&missing, cfg.dev_generate_missing) {
        errln!("error: {e}");
        return 1;
    }
    // What `serve` loads, loaded the same way (one function); what start-up
    // generates first is noted instead.
    let notes = match crate::app::load_material(&cfg) {
        Ok(m) => m.pending,
        Err(e) => {
            errln!("error: {e}");
            return 1;
        }
    };
    if let (Err(e), true) = (missing, notes.is_empty()) {
        // absent, and not something start-up generates: `serve` stops too
        errln!("error: {e}");
        return 1;
    }
    report_check(path, &cfg, notes, as_json, deny_warnings)
}

/// The verdict of `config check` once the files are dealt with: warnings,
/// notes, the summary line (or JSON), and the exit code.
fn report_check(
    path: &Path,
    cfg: &Config,
    mut notes: Vec<String>,
    as_json: bool,
    deny_warnings: bool,
) -> i32 {
    if cfg.dev_generate_missing {
        notes.push("[dev] generate_missing = true: development only, never in production".into());
    }
    let warnings = cfg.warnings();
    let failed = deny_warnings && !warnings.is_empty();
    if as_json {
        let ws: Vec<_> = warnings
            .iter()
            .map(|w| {
                json!({"policy": w.policy, "field": w.key(), "kind": w.kind.as_str(),
                       "message": w.message})
            })
            .collect();
        outln!(
            "{}",
            json!({"ok": !failed, "file": path.display().to_string(), "issuers": cfg.issuers.len(),
                   "policies": cfg.policies.len(), "store": cfg.store.display_url(), "notes": notes,
                   "warnings": ws})
        );
    } else {
        for w in &warnings {
            errln!("warning: {w}");
        }
        outln!(
            "{}: OK ({}, {}, store {}){}",
            path.display(),
            admin::count(cfg.issuers.len(), "issuer", "issuers"),
            admin::count(cfg.policies.len(), "policy", "policies"),
            cfg.store.display_url(),
            match warnings.len() {
                0 => String::new(),
                n => format!(", {}", admin::count(n, "warning", "warnings")),
            }
        );
        for n in notes {
            outln!("note: {n}");
        }
    }
    if failed {
        errln!(
            "error: {}: {} and --deny-warnings",
            path.display(),
            admin::count(warnings.len(), "warning", "warnings")
        );
        return 1;
    }
    0
}

/// `tessera keys generate [--algorithm ES256|EdDSA|RS256] [--dir DIR]`.
pub fn keys_generate(alg: &str, dir: &Path, as_json: bool) -> i32 {
    keys_generate_as(alg, dir, false, as_json)
}

/// `tessera keys generate [--next]`: with `next`, the key is written as a
/// next key (published, never signing until promoted by a rename).
pub fn keys_generate_as(alg: &str, dir: &Path, next: bool, as_json: bool) -> i32 {
    let Ok(alg) = SigningAlgorithm::parse_any_case(alg) else {
        errln!("error: --algorithm `{alg}` is not one of ES256, EdDSA, RS256");
        return 2;
    };
    let written = if next {
        crate::mint::keyring::generate_next_key_file(dir, alg)
    } else {
        generate_key_file(dir, alg)
    };
    match written {
        Ok(path) => {
            let kid = KeyRing::load_dir(dir, alg)
                .ok()
                .and_then(|k| {
                    k.keys()
                        .iter()
                        .find(|x| x.path() == Some(path.as_path()))
                        .map(|x| x.kid().to_string())
                })
                .unwrap_or_default();
            if as_json {
                outln!(
                    "{}",
                    json!({"path": path.display().to_string(), "algorithm": alg.as_str(), "kid": kid, "next": next})
                );
            } else if next {
                outln!("wrote {} ({}, kid {})", path.display(), alg.as_str(), kid);
                outln!("A next key: published in /jwks.json once the broker reloads (SIGHUP), never signing.");
                outln!("After resource servers have refetched the JWKS (their cache time), promote it and reload:");
                outln!(
                    "  tessera keys promote {} && kill -HUP <broker pid>",
                    path.display()
                );
                print_retire_step();
            } else {
                outln!("wrote {} ({}, kid {})", path.display(), alg.as_str(), kid);
                outln!("It is published and signs once the broker reloads (SIGHUP) or restarts (the newest active key of the configured algorithm signs).");
                outln!(
                    "To rotate without verification failures, use --next instead (see docs/operating.md, Signing-key rotation)."
                );
                print_retire_step();
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// The last rotation step: when an old key may go.
fn print_retire_step() {
    outln!("Remove a previous key only once it stopped signing (`tessera keys list`: SIGNS no)");
    outln!("at least [tokens] max_ttl + clock skew + the resource servers' JWKS cache time ago:");
    outln!("its tokens are alive until then, and fail verification once its kid is gone.");
}

/// `tessera keys promote FILE`: `X.next.pem` → `X.pem`, never overwriting.
pub fn keys_promote(file: &Path, as_json: bool) -> i32 {
    match crate::mint::keyring::promote_next_key_file(file) {
        Ok(path) => {
            if as_json {
                outln!(
                    "{}",
                    json!({"from": file.display().to_string(), "path": path.display().to_string()})
                );
            } else {
                outln!("promoted {} -> {}", file.display(), path.display());
                outln!(
                    "It signs once the broker reloads (kill -HUP <broker pid>), on every replica."
                );
                print_retire_step();
            }
            0
        }
        Err(e) => {
            errln!("error: {e}");
            1
        }
    }
}

/// The shipped config, read by `keys list` when no `--config` is given.
pub const DEFAULT_CONFIG: &str = "config/tessera.toml";

/// `tessera keys list [--dir DIR] [--algorithm ALG] [--config PATH]`: the
/// local key directory. Which algorithm signs (and, without `--dir`, where
/// the keys are) comes from the config, as `serve` reads them: `--config`,
/// else [`DEFAULT_CONFIG`] when it exists, else ES256 in `keys/signing`.
/// `--algorithm` (any case) overrides the config's.
pub fn keys_list(
    dir: Option<&Path>,
    algorithm: Option<&str>,
    config: Option<&Path>,
    as_json: bool,
) -> i32 {
    let given = match algorithm.map(SigningAlgorithm::parse_any_case) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => {
            errln!(
                "error: --algorithm `{}` is not one of ES256, EdDSA, RS256",
                algorithm.unwrap_or_default()
            );
            return 2;
        }
    };
    let cfg_path = config.unwrap_or(Path::new(DEFAULT_CONFIG));
    let needs_config = given.is_none() || dir.is_none();
    let cfg = if needs_config && (config.is_some() || cfg_path.exists()) {
        match Config::load(cfg_path) {
            Ok(c) => Some(c.tokens),
            Err(e) => {
                errln!("error: {e} (give --algorithm and --dir to list without a config)");
                return 1;
            }
        }
    } else {
        None
    };
    let alg = given
        .or(cfg.as_ref().map(|t| t.algorithm))
        .unwrap_or(SigningAlgorithm::ES256);
    let dir = dir
        .map(Path::to_path_buf)
        .or(cfg.map(|t| t.signing_keys))
        .unwrap_or_else(|| "keys/signing".into());
    let ring = match KeyRing::load_dir(&dir, alg) {
        Ok(r) => r,
        Err(e) => {
            errln!("error: {e}");
            return 1;
        }
    };
    let signing = ring.signing_key().kid().to_string();
    if as_json {
        let keys: Vec<_> = ring
            .keys()
            .iter()
            .map(|k| json!({"kid": k.kid(), "algorithm": k.algorithm().as_str(),
                            "path": k.path().map(|p| p.display().to_string()), "signing": k.kid() == signing, "next": k.is_next()}))
            .collect();
        outln!("{}", json!({"keys": keys}));
    } else {
        outln!("{:<45} {:<7} {:<8} PATH", "KID", "ALG", "SIGNS");
        for k in ring.keys() {
            outln!(
                "{:<45} {:<7} {:<8} {}",
                k.kid(),
                k.algorithm().as_str(),
                if k.kid() == signing {
                    "yes"
                } else if k.is_next() {
                    "next"
                } else {
                    "no"
                },
                k.path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
    }
    0
}

/// `tessera token decode TOKEN` (`-` reads standard input): offline, no
/// verification, and says so.
pub fn token_decode(token: &str, as_json: bool) -> i32 {
    let mut buf = String::new();
    let token = if token == "-" {
        if std::io::stdin()
            .take(1 << 20)
            .read_to_string(&mut buf)
            .is_err()
        {
            errln!("error: cannot read the token from standard input");
            return 1;
        }
        buf.trim()
    } else {
        token.trim()
    };
    if token
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
    {
        errln!("error: drop the `Bearer ` prefix: give the token alone");
        return 1;
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        errln!(
            "error: not a compact JWS (expected 3 dot-separated parts, found {})",
            parts.len()
        );
        return 1;
    }
    let dec = |s: &str, what: &'static str| -> Result<serde_json::Value, DecodeError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|e| DecodeError::Base64 { what, source: e })?;
        serde_json::from_slice(&bytes).map_err(|e| DecodeError::Json { what, source: e })
    };
    let (header, claims) = match (dec(parts[0], "header"), dec(parts[1], "payload")) {
        (Ok(h), Ok(c)) => (h, c),
        (Err(e), _) | (_, Err(e)) => {
            errln!("error: {e}");
            return 1;
        }
    };
    if as_json {
        outln!(
            "{}",
            json!({"verified": false, "header": header, "claims": claims})
        );
    } else {
        outln!("NOT VERIFIED: decoded offline; the signature was not checked.");
        outln!(
            "header: {}",
            serde_json::to_string_pretty(&header).unwrap_or_default()
        );
        outln!(
            "claims: {}",
            serde_json::to_string_pretty(&claims).unwrap_or_default()
        );
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        if let Some(exp) = claims.get("exp").and_then(|v| v.as_u64()) {
            if exp <= now {
                outln!("expired {}s ago", now - exp);
            } else {
                outln!("expires in {}s", exp - now);
            }
        }
    }
    0
}

/// Writes one line to stdout, made [`terminal_safe`](crate::text::terminal_safe); on failure ends the
/// process (see the module docs): 141 for a closed pipe, 1 otherwise.
pub fn out_line(args: std::fmt::Arguments<'_>) {
    let text = args.to_string();
    let text = crate::text::terminal_safe(&text);
    let mut o = std::io::stdout().lock();
    if let Err(e) = o
        .write_all(text.as_bytes())
        .and_then(|()| o.write_all(b"\n"))
    {
        drop(o);
        std::process::exit(stdout_failure_status(&e));
    }
}

/// A duration flag (`--wait 10m`, `--ttl 90s`) as the config writes them;
/// the error names the flag.
pub fn parse_duration_flag(
    flag: &'static str,
    s: &str,
) -> Result<std::time::Duration, DurationFlagError> {
    crate::config::duration::parse_duration(s).map_err(|e| DurationFlagError {
        flag,
        value: s.to_string(),
        source: e,
    })
}

/// A duration flag whose value does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} `{value}`: {source}")]
pub struct DurationFlagError {
    /// The flag (`--wait`).
    pub flag: &'static str,
    /// Its value as given.
    pub value: String,
    /// Why it is not a duration.
    pub source: crate::config::DurationError,
}

/// Why `tessera token decode` cannot decode a part of a token.
#[derive(Debug, thiserror::Error)]
enum DecodeError {
    /// Not base64url.
    #[error("{what} is not base64url: {source}")]
    Base64 {
        /// `header` or `payload`.
        what: &'static str,
        /// Why.
        source: base64::DecodeError,
    },
    /// Not JSON.
    #[error("{what} is not JSON: {source}")]
    Json {
        /// `header` or `payload`.
        what: &'static str,
        /// Why.
        source: serde_json::Error,
    },
}

/// Whether `-o wide` was given: tables show every column in full.
static WIDE_OUTPUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Called once by the binary with `-o wide`; without it, tables fit
/// [`audit::NARROW_WIDTH`] columns (long cells cut with `…`, some columns
/// left out).
pub fn set_wide_output(on: bool) {
    WIDE_OUTPUT.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether tables are wide (see [`set_wide_output`]).
pub fn wide_output() -> bool {
    WIDE_OUTPUT.load(std::sync::atomic::Ordering::Relaxed)
}

/// `s` in at most `w` characters: the end kept (where identities and ids
/// differ), `…` in front of what was cut.
pub fn fit(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w || w == 0 {
        return s.to_string();
    }
    let tail: String = s.chars().skip(n - (w - 1)).collect();
    format!("…{tail}")
}

/// Whether `--json` was given: errors and warnings on stderr are JSON too.
static JSON_OUTPUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Called once by the binary with `--json`: from then on every `error: …`
/// and `warning: …` line on stderr is a JSON object
/// (`{"error": "…"}`, `{"warning": "…"}`), so a script reads one format.
pub fn set_json_output(on: bool) {
    JSON_OUTPUT.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Writes one line to stderr, made [`terminal_safe`](crate::text::terminal_safe)
/// (a failure to write an error message is not reported further). Under
/// `--json` ([`set_json_output`]), `error: X` is written `{"error": "X"}`
/// and `warning: X` `{"warning": "X"}`.
pub fn err_line(args: std::fmt::Arguments<'_>) {
    let text = args.to_string();
    let text = if JSON_OUTPUT.load(std::sync::atomic::Ordering::Relaxed) {
        match text
            .strip_prefix("error: ")
            .map(|m| ("error", m))
            .or_else(|| text.strip_prefix("warning: ").map(|m| ("warning", m)))
        {
            Some((k, m)) => json!({ k: m }).to_string(),
            None => json!({ "message": text }).to_string(),
        }
    } else {
        text
    };
    let _ = writeln!(
        std::io::stderr().lock(),
        "{}",
        crate::text::terminal_safe(&text)
    );
}

/// An error for the operator: `error: MSG` (under `--json`
/// `{"error": "MSG", "exit": CODE}`) on stderr.
pub fn print_error(msg: &str, code: i32, json: bool) {
    if json {
        let line = json!({"error": msg, "exit": code}).to_string();
        let _ = writeln!(
            std::io::stderr().lock(),
            "{}",
            crate::text::terminal_safe(&line)
        );
    } else {
        err_line(format_args!("error: {msg}"));
    }
}

/// The exit status for a failed write to stdout, after saying why when it
/// is not a reader that went away.
fn stdout_failure_status(e: &std::io::Error) -> i32 {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        141
    } else {
        let _ = writeln!(std::io::stderr(), "error: cannot write to stdout: {e}");
        1
    }
}
