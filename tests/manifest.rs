//! Small truths about the package itself: the `rust-version` it declares
//! is what its locked dependencies need.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// `1.89` and `1.89.0` are the same version: three numbers, missing ones 0.
fn version(s: &str) -> [u64; 3] {
    let mut v = [0; 3];
    for (slot, p) in v.iter_mut().zip(s.split('.')) {
        *slot = p.parse().unwrap();
    }
    v
}

/// Every locked package built on this host declares its `rust-version` in
/// its manifest; ours must be at least the highest of them, or `cargo
/// build` on the declared toolchain fails in a dependency.
#[test]
fn rust_version_covers_every_locked_dependency() {
    let cargo = env!("CARGO");
    let vv = Command::new(cargo).arg("-vV").output().unwrap();
    let vv = String::from_utf8(vv.stdout).unwrap();
    let host = vv
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("cargo -vV names the host");
    let out = Command::new(cargo)
        .args(["metadata", "--offline", "--locked", "--format-version", "1"])
        .args(["--filter-platform", host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let ours = packages
        .iter()
        .find(|p| p["name"] == "tessera")
        .and_then(|p| p["rust_version"].as_str())
        .expect("Cargo.toml declares rust-version");
    let needed = packages
        .iter()
        .filter(|p| p["name"] != "tessera")
        .filter_map(|p| Some((version(p["rust_version"].as_str()?), p["name"].as_str()?)))
        .max()
        .expect("some dependency declares a rust-version");
    assert!(packages.len() > 100, "the whole locked graph was read");
    assert!(
        version(ours) >= needed.0,
        "Cargo.toml says rust-version = {ours} but {} needs {}",
        needed.1,
        needed
            .0
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    );
}
