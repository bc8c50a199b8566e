//! The plugin-author kit, as an author outside twill's repository uses it: `twill
//! plugin new` writes a crate that builds with cargo alone (the SDK and the WIT travel
//! inside it), whose unit tests run natively, whose component `twill plugin test` runs
//! through a node's life on a recording kernel (printing every kernel change), and
//! that `twill plugin inspect` loads; a config its `init` refuses fails the test run;
//! a plugin named so that `Backend.Type` could never select it is refused at load.
//!
//! Needs cargo and the `wasm32-wasip2` target; no root, no kernel state.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use twill_e2e::{build_plugin_crate, twill_bin, workspace_target_dir};

/// `twill <args>`: (exit status, stdout + stderr).
fn twill(args: &[&str]) -> (i32, String) {
    let out = Command::new(twill_bin())
        .args(args)
        .output()
        .expect("run twill");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A fresh directory for the new crate (under the workspace's target directory, so a
/// failed run leaves nothing elsewhere); removed at the end of a passing run.
fn scratch() -> PathBuf {
    let dir = workspace_target_dir().join(format!("plugin-kit-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_new_plugin_builds_tests_and_loads_without_the_repository() {
    let dir = scratch();
    let (code, out) = twill(&["plugin", "new", "my-gw", "--dir", path(&dir)]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("twill plugin test target/wasm32-wasip2/release/twill_plugin_my_gw.wasm"),
        "{out}"
    );
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "README.md",
        "sdk/Cargo.toml",
        "sdk/src/lib.rs",
        "sdk/wit/backend.wit",
    ] {
        assert!(dir.join(file).is_file(), "{file} written");
    }
    let manifest = fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
    assert!(
        manifest.contains(r#"twill-plugin-sdk = { path = "sdk" }"#) && !manifest.contains(".."),
        "depends on nothing outside the crate: {manifest}"
    );
    let (code, out) = twill(&["plugin", "new", "my-gw", "--dir", path(&dir)]);
    assert_eq!(code, 1, "a non-empty directory is refused: {out}");
    assert!(out.contains("is not empty"), "{out}");
    let (code, out) = twill(&["plugin", "new", "Gateway", "--dir", path(&dir.join("x"))]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("starts with a lowercase letter"), "{out}");

    // The generated unit tests, natively, as the README says.
    let test = twill_wasm_build::cargo_in(&dir)
        .args(["test", "--target-dir"])
        .arg(workspace_target_dir().join("test-plugins-native"))
        .output()
        .expect("run cargo test");
    assert!(
        test.status.success(),
        "cargo test in the new crate:\n{}",
        String::from_utf8_lossy(&test.stderr)
    );

    let wasm = build_plugin_crate(&dir);
    let (code, out) = twill(&["plugin", "test", path(&wasm)]);
    println!("{out}");
    assert_eq!(code, 0, "{out}");
    for line in [
        "plugin my-gw 0.1.0",
        r#"-> BackendType "my-gw", BackendData none, MTU 1500"#,
        "route replace 10.244.2.0/24 via 192.168.0.11 dev #2",
        "route replace 10.244.3.0/24 via 192.168.0.12 dev #2",
        "route del 10.244.3.0/24 via 192.168.0.12 dev #2",
        "result: every step succeeded",
    ] {
        assert!(out.contains(line), "plugin test prints {line:?}:\n{out}");
    }
    let config = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"my-gw","MTU":9000}}"#;
    let (code, out) = twill(&["plugin", "test", path(&wasm), "--config", config]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED") && out.contains("MTU 9000 is not between 576 and 1500"),
        "{out}"
    );
    let (code, out) = twill(&["plugin", "inspect", path(&wasm), "--plugin-cache-dir", ""]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(r#"{"Type":"my-gw","MTU":1500}"#),
        "the config example: {out}"
    );

    // The same crate renamed to a name Backend.Type (read lower-cased) cannot select.
    let lib = dir.join("src/lib.rs");
    let text = fs::read_to_string(&lib).expect("lib.rs");
    fs::write(
        &lib,
        text.replace(r#"name: "my-gw".into()"#, r#"name: "Gateway".into()"#),
    )
    .expect("rename");
    let renamed = build_plugin_crate(&dir);
    let (code, out) = twill(&[
        "plugin",
        "inspect",
        path(&renamed),
        "--plugin-cache-dir",
        "",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(r#"describe() names it "Gateway""#), "{out}");
    let (code, out) = twill(&["plugin", "test", path(&renamed)]);
    assert_eq!(code, 1, "{out}");
    fs::remove_dir_all(&dir).expect("clean up");
}
