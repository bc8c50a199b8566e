//! twill-wasm-build: a `cargo build --release --target wasm32-wasip2` as a plugin's
//! author would run it, from an environment without the outer build's settings (a
//! build script's or a test's `CARGO_*`, `RUSTFLAGS`, wrappers are for the host, not
//! for the plugin). No dependencies, so `twill-builtin`'s build script can use it.
//!
//! It only builds commands and reads manifests; it never runs anything itself.
#![forbid(unsafe_code)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The plugins' target triple.
pub const TARGET: &str = "wasm32-wasip2";

/// `cargo build --release --target wasm32-wasip2 --target-dir <target_dir>` in
/// `dir`, with the outer cargo's environment removed; callers add `-p` or profile
/// settings and run it.
pub fn cargo_build(dir: &Path, target_dir: &Path) -> Command {
    let mut cmd = cargo_in(dir);
    cmd.args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(target_dir);
    cmd
}

/// `cargo` in `dir`, with the outer cargo's environment removed (as [`cargo_build`]);
/// callers add the subcommand and its arguments.
pub fn cargo_in(dir: &Path) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let outer = (key.starts_with("CARGO_") && !key.starts_with("CARGO_HOME"))
            || key == "RUSTFLAGS"
            || key == "RUSTC_WRAPPER"
            || key == "RUSTC_WORKSPACE_WRAPPER";
        if outer {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The `name = "…"` of the package whose manifest is `dir/Cargo.toml`.
pub fn package_name(dir: &Path) -> io::Result<String> {
    let manifest = dir.join("Cargo.toml");
    let text = fs::read_to_string(&manifest)?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("name = "))
        .map(|v| v.trim_matches('"').to_owned())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} names no package", manifest.display()),
            )
        })
}

/// Where cargo puts package `package`'s component under `target_dir`.
pub fn component_path(target_dir: &Path, package: &str) -> PathBuf {
    target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", package.replace('-', "_")))
}
