//! Build every backend plugin under `plugins/` (all but the SDK) for `wasm32-wasip2`
//! with cargo, into a target directory of its own, and generate the table that
//! `include_bytes!`s them. A plain `cargo build` is then all it takes to get a `twill`
//! binary with its backends inside.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use twill_wasm_build::{TARGET, cargo_build, component_path, package_name};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest
        .join("../..")
        .canonicalize()
        .expect("workspace root");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed={}", root.join("plugins").display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    let plugins = backend_packages(&root.join("plugins"));
    let target_dir = plugin_target_dir(&out);
    build(&root, &target_dir, &plugins);

    let mut table = String::from("/// Built-in plugins: (package directory, component bytes).\n");
    table.push_str("pub static BUILTIN: &[(&str, &[u8])] = &[\n");
    for (dir, package) in &plugins {
        let wasm = component_path(&target_dir, package);
        assert!(wasm.exists(), "plugin build produced no {}", wasm.display());
        table.push_str(&format!(
            "    ({dir:?}, include_bytes!({:?})),\n",
            wasm.display().to_string()
        ));
    }
    table.push_str("];\n");
    fs::write(out.join("builtin.rs"), table).expect("write builtin.rs");
}

/// `(directory name, package name)` of every plugin crate but the SDK.
fn backend_packages(plugins: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in fs::read_dir(plugins).expect("read plugins/") {
        let path = entry.expect("plugins/ entry").path();
        let dir = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if dir == "sdk" || !path.join("Cargo.toml").exists() {
            continue;
        }
        let name = package_name(&path).expect("plugin Cargo.toml has a package name");
        found.push((dir, name));
    }
    found.sort();
    found
}

/// A target directory next to the outer build's profile directories, so it survives
/// rebuilds of this crate and is shared by build, test and clippy.
fn plugin_target_dir(out: &Path) -> PathBuf {
    // OUT_DIR is <target>/<profile>/build/twill-builtin-<hash>/out.
    out.ancestors()
        .nth(4)
        .map(|t| t.join("wasm-plugins"))
        .unwrap_or_else(|| out.join("wasm-plugins"))
}

/// One cargo run per plugin: features must not unify across plugins (directrouting
/// uses the vxlan crate without its export).
fn build(root: &Path, target_dir: &Path, plugins: &[(String, String)]) {
    for (_, package) in plugins {
        build_one(root, target_dir, package);
    }
}

fn build_one(root: &Path, target_dir: &Path, package: &str) {
    let mut cmd = cargo_build(root, target_dir);
    cmd.args(["-p", package])
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    let status = cmd.status().expect("run cargo to build the plugins");
    assert!(
        status.success(),
        "building plugin {package} for {TARGET} failed (is the target installed? `rustup target add {TARGET}`)"
    );
}
