//! Imports run one way (issue 18 item 3). Every `crate::<module>` path in
//! `src/` is checked against the rank table in `docs/architecture.md`: a
//! module may reach its own rank or a lower one, never a higher one. The
//! page's "known back edges" list holds the only exceptions, and it can
//! only get shorter: an exception that no longer occurs fails the test too.
//! Test code (`tests.rs`, `*_tests.rs`, `conformance.rs`, `doc_support.rs`,
//! and everything from `#[cfg(test)]` on) and comments are not read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const DOC: &str = "docs/architecture.md";

/// The rank table: `| rank | modules | job |` rows with backticked names.
fn ranks(doc: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 {
            continue;
        }
        let Ok(rank) = cells[1].parse::<u32>() else {
            continue;
        };
        for m in cells[2].split(',') {
            let m = m.trim().trim_matches('`');
            if !m.is_empty() {
                assert!(
                    out.insert(m.to_string(), rank).is_none(),
                    "{m} is ranked twice in {DOC}"
                );
            }
        }
    }
    out
}

/// The known back edges: `- \`from\` → \`to::…\`` lines.
fn exceptions(doc: &str) -> BTreeSet<(String, String)> {
    doc.lines()
        .filter(|l| l.starts_with("- `") && l.contains('→'))
        .map(|l| {
            let (from, to) = l.split_once('→').unwrap();
            let from = from.trim_start_matches("- ").trim().trim_matches('`');
            let to = to.trim().trim_start_matches('`');
            let to = to
                .split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .next()
                .unwrap();
            (from.to_string(), to.to_string())
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn is_test_support(rel: &Path) -> bool {
    let name = rel.file_name().unwrap().to_str().unwrap();
    name == "tests.rs"
        || name.ends_with("_tests.rs")
        || name == "conformance.rs"
        || name == "doc_support.rs"
        || rel.components().any(|c| c.as_os_str() == "tests")
}

/// The code of a file: no comments, nothing from `#[cfg(test)]` on.
fn code(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        out.push((i + 1, code.to_string()));
    }
    out
}

/// The top-level modules `line` reaches through `crate::`.
fn reached(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `tessera_crate::`, not ours
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let m: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !m.is_empty() {
                    out.push(m);
                }
            }
            continue;
        }
        let m: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !m.is_empty() {
            out.push(m);
        }
    }
    out
}

#[test]
fn imports_run_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join(DOC)).unwrap();
    let ranks = ranks(&doc);
    let allowed = exceptions(&doc);
    assert!(ranks.len() > 10, "no rank table found in {DOC}");

    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    // Every module of the crate must be ranked.
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let stem = p.file_stem()?.to_str()?.to_string();
            (p.is_dir() || p.extension().is_some_and(|x| x == "rs")).then_some(stem)
        })
        .filter(|m| m != "lib" && m != "main")
        .collect();
    for m in &modules {
        assert!(ranks.contains_key(m), "module `{m}` has no rank in {DOC}");
    }

    let mut back_edges = Vec::new();
    let mut seen_exceptions = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let from = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if from == "lib" || from == "main" || is_test_support(rel) {
            continue;
        }
        let from_rank = ranks[&from];
        for (n, line) in code(&std::fs::read_to_string(f).unwrap()) {
            for to in reached(&line) {
                if to == from || !modules.contains(&to) {
                    continue; // itself, or a root item such as a macro
                }
                let to_rank = ranks[&to];
                if to_rank <= from_rank {
                    continue;
                }
                if allowed.contains(&(from.clone(), to.clone())) {
                    seen_exceptions.insert((from.clone(), to.clone()));
                    continue;
                }
                back_edges.push(format!(
                    "src/{}:{n}: `{from}` (rank {from_rank}) reaches `{to}` (rank {to_rank})",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        back_edges.is_empty(),
        "imports against the layering of {DOC}:\n{}",
        back_edges.join("\n")
    );
    let stale: Vec<_> = allowed.difference(&seen_exceptions).collect();
    assert!(
        stale.is_empty(),
        "known back edges listed in {DOC} that no longer occur (remove them): {stale:?}"
    );
}

/// The checker itself finds a back edge, a grouped import and skips
/// comments and test code.
#[test]
fn the_checker_sees_what_it_must() {
    assert_eq!(reached("use crate::oauth::request::TokenType;"), ["oauth"]);
    assert_eq!(reached("use crate::{clock, jose::jws};"), ["clock", "jose"]);
    assert_eq!(
        reached("let x = crate::store::MAX; crate::audit::f()"),
        ["store", "audit"]
    );
    let c = code("use crate::a; // crate::b\n#[cfg(test)]\nmod tests { use crate::c; }\n");
    let all: Vec<String> = c.iter().flat_map(|(_, l)| reached(l)).collect();
    assert_eq!(all, ["a"]);
    let doc = "| 0 | `x`, `y` | leaves |\n| 3 | `z` | top |\n- `x` → `z::T`\n";
    assert_eq!(ranks(doc)["y"], 0);
    assert_eq!(ranks(doc)["z"], 3);
    assert!(exceptions(doc).contains(&("x".to_string(), "z".to_string())));
}
