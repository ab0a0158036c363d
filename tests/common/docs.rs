//! Reading the docs' blocks in tests: what a page tells people to type or
//! to configure is what the tests run.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The text of a file of the repository (`docs/x.md`).
pub fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// One fenced block: its info string, its text, and the `tested-by`
/// reference of the comment on the line before (if any).
#[derive(Debug, Clone)]
pub struct Block {
    pub info: String,
    pub text: String,
    pub tested_by: Option<String>,
    pub line: usize,
}

/// Every fenced (```) block of a Markdown text.
pub fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim_start();
        if let Some(info) = l.strip_prefix("```") {
            let tested_by = i
                .checked_sub(1)
                .map(|p| lines[p].trim())
                .and_then(|p| p.strip_prefix("<!-- tested-by:"))
                .and_then(|p| p.strip_suffix("-->"))
                .map(|p| p.trim().to_string());
            let start = i;
            let mut text = String::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                text.push_str(lines[i]);
                text.push('\n');
                i += 1;
            }
            out.push(Block {
                info: info.trim().to_string(),
                text,
                tested_by,
                line: start + 1,
            });
        }
        i += 1;
    }
    out
}

/// The first ```toml block of `md` whose text starts with `prefix`.
pub fn toml_block(md: &str, prefix: &str) -> String {
    blocks(md)
        .into_iter()
        .find(|b| b.info == "toml" && b.text.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no toml block starting with {prefix}"))
        .text
}

/// The command block marked `<!-- tested-by: FILE::FN -->`.
pub fn tested_block(md: &str, reference: &str) -> String {
    blocks(md)
        .into_iter()
        .find(|b| b.tested_by.as_deref() == Some(reference))
        .unwrap_or_else(|| panic!("no block marked tested-by: {reference}"))
        .text
}

/// Shell words of one command line (backslash continuations joined; double
/// quotes grouped; no other shell syntax).
pub fn words(cmd: &str) -> Vec<String> {
    let joined = cmd.replace("\\\n", " ");
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in joined.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// `args` with the value after each `flag` in `values` replaced.
pub fn with_values(mut args: Vec<String>, values: &[(&str, &str)]) -> Vec<String> {
    for (flag, v) in values {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} not in {args:?}"));
        args[i + 1] = (*v).to_string();
    }
    args
}

/// Runs the real binary with `args` (the first word, `tessera`, dropped).
pub fn run_tessera(args: &[String], dir: &Path) -> (i32, String, String) {
    assert_eq!(
        args.first().map(String::as_str),
        Some("tessera"),
        "{args:?}"
    );
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(&args[1..])
        .env_remove("TESSERA_CERT")
        .env_remove("TESSERA_KEY")
        .env_remove("TESSERA_URL")
        .env_remove("TESSERA_CA")
        .current_dir(dir)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
