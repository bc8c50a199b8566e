//! End to end: a plugin directory (`twill run --plugin-dir`) holding a copy of the
//! built-in vxlan component, a junk file and a component built against
//! `twill:backend@0.2.0`. The directory's vxlan replaces the built-in (and says so), the
//! two bad files are skipped with their reasons without stopping anything, the pods
//! reach each other, the API shows the plugin's file, and a restart reads the compiled
//! plugin from the cache. `twill plugin list` and `twill plugin inspect` (no root
//! needed) show the same.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use twill_e2e::{Cluster, build_plugin_crate, run, sh, test_plugin_dir, twill_bin, wait_for};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn builtin(dir: &str) -> &'static [u8] {
    twill_builtin::component(dir).unwrap_or_else(|| panic!("no built-in {dir}"))
}

/// The `twill:backend@0.2.0` test plugin, built once per test process.
fn wit_v2_component() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build_plugin_crate(&test_plugin_dir("wit-v2")))
}

/// `dir/plugins` with vxlan.wasm (the built-in's bytes), junk.wasm and v2.wasm.
fn plugin_dir(dir: &Path) -> PathBuf {
    let plugins = dir.join("plugins");
    fs::create_dir_all(&plugins).expect("plugin dir");
    fs::write(plugins.join("vxlan.wasm"), builtin("vxlan")).expect("write vxlan.wasm");
    fs::write(plugins.join("junk.wasm"), b"#!/bin/sh\necho not wasm\n").expect("write junk");
    fs::copy(wit_v2_component(), plugins.join("v2.wasm")).expect("copy v2.wasm");
    plugins
}

/// The user the plugin commands run as: nobody, with no groups and no capabilities.
const NOBODY: &str = "65534";

/// Run `twill args` as nobody (`setpriv`, util-linux): these commands need no root.
fn twill(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(twill_bin())
        .args(args)
        .env_remove("TWILL_PLUGIN_DIR")
        .env_remove("TWILL_PLUGIN_CACHE_DIR")
        .output()
        .expect("run twill")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `twill plugin inspect` output as key → value.
fn fields(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn sha256sum(path: &Path) -> String {
    let out = run(&["sha256sum", &path.display().to_string()]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_owned()
}

#[test]
fn plugin_list_and_inspect_need_no_root() {
    let dir = std::env::temp_dir().join(format!(
        "twill-plugin-cli-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    ));
    let plugins = plugin_dir(&dir);
    // What nobody can read (the plugins) and write (only the cache).
    let unprivileged = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "id",
            "-u",
        ])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(String::from_utf8_lossy(&unprivileged.stdout).trim(), NOBODY);
    let cache = dir.join("cache");
    fs::create_dir_all(&cache).expect("cache dir");
    sh(&[
        "chown",
        &format!("{NOBODY}:{NOBODY}"),
        &cache.display().to_string(),
    ]);
    let (p, c) = (plugins.display().to_string(), cache.display().to_string());
    let vxlan = plugins.join("vxlan.wasm");

    let out = twill(&[
        "plugin",
        "list",
        "--plugin-dir",
        &p,
        "--plugin-cache-dir",
        &c,
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "plugin list failed: {stderr}");
    let cached = fs::read_dir(&cache).expect("cache").count();
    assert!(cached > 0, "nobody compiled into its cache directory");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let row = |name: &str, source: &str| -> String {
        let found = stdout
            .lines()
            .zip(&rows)
            .find(|(_, cells)| cells.first() == Some(&name) && cells.get(3) == Some(&source));
        found
            .map(|(line, _)| line.to_owned())
            .unwrap_or_else(|| panic!("no row {name} {source} in\n{stdout}"))
    };
    assert!(
        stdout.starts_with(&format!("plugin directory: {p} (3 *.wasm files)\n")),
        "{stdout}"
    );
    assert!(stdout.contains("NAME "), "{stdout}");
    assert!(
        row("vxlan", &vxlan.display().to_string()).ends_with(" ok, overrides built-in vxlan"),
        "{stdout}"
    );
    assert!(
        row("vxlan", "built-in").contains(&format!("overridden by {}", vxlan.display())),
        "{stdout}"
    );
    for builtin in ["host-gw", "directrouting", "udp"] {
        assert!(row(builtin, "built-in").ends_with(" ok"), "{stdout}");
    }
    let junk = row("-", &plugins.join("junk.wasm").display().to_string());
    assert!(
        junk.contains("skipped: not a loadable WebAssembly component: not a WebAssembly file"),
        "{junk}"
    );
    let v2 = row("-", &plugins.join("v2.wasm").display().to_string());
    assert!(v2.contains(" 0.2.0 "), "{v2}");
    assert!(
        v2.ends_with("skipped: targets twill:backend 0.2; this host speaks 0.1"),
        "{v2}"
    );

    // A loadable file: exit 0, everything about it.
    let out = twill(&[
        "plugin",
        "inspect",
        &vxlan.display().to_string(),
        "--plugin-cache-dir",
        &c,
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let f = fields(&stdout);
    assert_eq!(f["file"], vxlan.display().to_string());
    assert_eq!(f["name"], "vxlan");
    assert_eq!(f["version"], "0.1.0");
    assert_eq!(f["wit version"], "twill:backend@0.1.0");
    // The plugin's own example config (describe()'s config-hint), as the operator
    // writes it into Backend.
    assert!(
        f["config example"].starts_with(r#"{"Type":"vxlan","VNI":1,"Port":8472"#),
        "{stdout}"
    );
    assert_eq!(
        f["capabilities"],
        "addresses, fdb, links, log, neighbours, route-lookup, routes"
    );
    assert_eq!(f["data path"], "no");
    assert_eq!(f["sha256"], sha256sum(&vxlan));
    assert_eq!(f["loadable"], "yes");
    assert!(
        f["load time"].contains(&format!(
            "from the cache in {}",
            cache.canonicalize().expect("cache").display()
        )),
        "`plugin list` compiled it into the cache: {stdout}"
    );

    // The data path shows; built-ins by name.
    let out = twill(&[
        "plugin",
        "inspect",
        "built-in:udp",
        "--plugin-cache-dir",
        "",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let f = fields(&stdout);
    assert_eq!(f["data path"], "yes (exports twill:backend/datapath)");
    assert!(f["capabilities"].contains("datapath-host"), "{stdout}");
    assert!(f["load time"].ends_with("(compiled; no cache)"), "{stdout}");

    // Not loadable: exit 1 and why.
    let out = twill(&[
        "plugin",
        "inspect",
        &plugins.join("v2.wasm").display().to_string(),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let f = fields(&stdout);
    assert_eq!(f["wit version"], "twill:backend@0.2.0");
    assert_eq!(
        f["loadable"],
        "no: targets twill:backend 0.2; this host speaks 0.1"
    );
    assert_eq!(f["sha256"], sha256sum(&plugins.join("v2.wasm")));
    let out = twill(&[
        "plugin",
        "inspect",
        &plugins.join("junk.wasm").display().to_string(),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        fields(&stdout)["loadable"].starts_with("no: not a loadable WebAssembly component"),
        "{stdout}"
    );
    let missing = plugins.join("missing.wasm").display().to_string();
    let out = twill(&["plugin", "inspect", &missing]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!("error: read {missing}")),
        "{stderr}"
    );

    // No directory: the built-ins only.
    let nowhere = dir.join("nowhere").display().to_string();
    let out = twill(&[
        "plugin",
        "list",
        "--plugin-dir",
        &nowhere,
        "--plugin-cache-dir",
        "",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "plugin directory: {nowhere} (does not exist: built-in plugins only)"
        )),
        "{stdout}"
    );
    let builtin_rows = stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some("built-in"))
        .count();
    assert_eq!(builtin_rows, twill_builtin::BUILTIN.len(), "{stdout}");

    let help = text(&twill(&["--help"])).0;
    assert!(help.contains("plugin"), "{help}");
    let help = text(&twill(&["run", "--help"])).0;
    for flag in [
        "--plugin-dir",
        "--plugin-cache-dir",
        "TWILL_PLUGIN_DIR",
        "/etc/twill/plugins",
        "/var/cache/twill",
    ] {
        assert!(
            help.contains(flag),
            "{flag} missing from `twill run --help`:\n{help}"
        );
    }
    fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_plugin_directory_overrides_the_built_in_on_a_cluster() {
    let mut c = Cluster::new(2);
    let plugins = plugin_dir(c.dir());
    let cache = c.dir().join("cache");
    let (p, cache_arg) = (plugins.display().to_string(), cache.display().to_string());
    let args = [
        "--iface",
        "eth0",
        "--plugin-dir",
        &p,
        "--plugin-cache-dir",
        &cache_arg,
    ];
    c.put_config(CONFIG);
    for k in 1..=2 {
        c.start_twill_with(k, &args);
    }
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));

    let vxlan = plugins.join("vxlan.wasm").display().to_string();
    let junk = plugins.join("junk.wasm").display().to_string();
    let v2 = plugins.join("v2.wasm").display().to_string();
    for node in &c.nodes {
        let log = node.log_text();
        let line = |needle: &str| -> String {
            log.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{}: no log line with {needle:?}:\n{log}", node.ns))
                .to_owned()
        };
        let over = line(&format!(
            "plugin file {vxlan} (vxlan 0.1.0) overrides the built-in vxlan"
        ));
        assert!(
            over.contains("INFO") && over.contains("replaces=built-in:vxlan"),
            "{over}"
        );
        let skipped_junk = line(&format!("skipping plugin file {junk}: "));
        assert!(skipped_junk.contains("WARN"), "{skipped_junk}");
        assert!(
            skipped_junk.contains("not a loadable WebAssembly component: not a WebAssembly file"),
            "{skipped_junk}"
        );
        let skipped_v2 = line(&format!("skipping plugin file {v2}: "));
        assert!(skipped_v2.contains("WARN"), "{skipped_v2}");
        assert!(
            skipped_v2.ends_with("targets twill:backend 0.2; this host speaks 0.1"),
            "{skipped_v2}"
        );
        let loaded = line("loaded backend plugin");
        assert!(loaded.contains(&format!("source={vxlan}")), "{loaded}");

        let (code, body) = node.api_get("/v1/plugins");
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        let plugin = &v["plugins"][0];
        assert_eq!(plugin["name"], "vxlan", "{body}");
        assert_eq!(plugin["source"], vxlan.as_str(), "{body}");
        assert_eq!(plugin["wit_version"], "0.1.0", "{body}");
    }

    // A restart reads the compiled plugin from the cache.
    assert_eq!(c.nodes[0].stop(), Some(0));
    let before = c.nodes[0]
        .log_text()
        .matches("loaded backend plugin")
        .count();
    c.start_twill_with(1, &args);
    let loaded = wait_for(
        "node 1 to load its plugin again",
        Duration::from_secs(60),
        || {
            let log = c.nodes[0].log_text();
            log.lines()
                .filter(|l| l.contains("loaded backend plugin"))
                .nth(before)
                .map(str::to_owned)
        },
    );
    assert!(loaded.contains("from_cache=true"), "{loaded}");
    c.assert_full_mesh(Duration::from_secs(30));
}
