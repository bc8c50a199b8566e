//! Installing and operating twill (docs/operations.md): `scripts/install` into a
//! staging root and back out of it; a node running with exactly the capabilities the
//! systemd unit leaves it; `twill leave`; `twill status` and its exit statuses;
//! `twill config get|check` against etcd; JSON log lines and refused log levels.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use twill_e2e::{Cluster, path_arg, run, twill_bin, wait_for};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

fn install(args: &[&str]) -> String {
    let out = Command::new(repo().join("scripts/install"))
        .args(args)
        .output()
        .expect("run scripts/install");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "scripts/install {args:?}:\n{text}");
    text
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The capabilities the unit's `CapabilityBoundingSet=` keeps.
fn unit_capabilities() -> Vec<String> {
    let unit = fs::read_to_string(repo().join("deploy/twill.service")).expect("the unit");
    unit.lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a CapabilityBoundingSet line")
        .split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .expect("CAP_ names")
                .to_ascii_lowercase()
        })
        .collect()
}

/// Install into a staging root: every file where docs/operations.md says, the binary
/// stripped, the settings file private and never overwritten; uninstall keeps the
/// settings and the plugin directory, `--purge` removes them, and nothing is left.
#[test]
fn install_and_uninstall_in_a_staging_root() {
    let root = std::env::temp_dir().join(format!(
        "twill-install-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    ));
    let root_arg = root.display().to_string();
    let bin = twill_bin();
    let bin_arg = bin.display().to_string();
    let said = install(&["--root", &root_arg, "--binary", &bin_arg]);
    assert!(said.contains("systemctl enable --now twill"), "{said}");

    let installed = root.join("usr/local/bin/twill");
    assert_eq!(mode(&installed), 0o755);
    let sections = run(&["readelf", "-S", &installed.display().to_string()]);
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(
        !sections.contains(".debug_info"),
        "the installed binary keeps its debug info"
    );
    let (before, after) = (
        fs::metadata(&bin).expect("built").len(),
        fs::metadata(&installed).expect("installed").len(),
    );
    eprintln!(
        "installed twill: {} MiB (built: {} MiB)",
        after >> 20,
        before >> 20
    );
    let version = Command::new(&installed)
        .arg("--version")
        .output()
        .expect("the installed binary runs");
    assert!(version.status.success());

    let unit = root.join("etc/systemd/system/twill.service");
    assert_eq!(
        fs::read_to_string(&unit).expect("unit"),
        fs::read_to_string(repo().join("deploy/twill.service")).expect("deploy unit")
    );
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/twill run",
        "EnvironmentFile=-/etc/default/twill",
        "RuntimeDirectoryPreserve=yes",
        "Restart=always",
    ] {
        assert!(
            fs::read_to_string(&unit)
                .expect("unit")
                .lines()
                .any(|l| l == line),
            "the unit has {line}"
        );
    }
    let settings = root.join("etc/default/twill");
    assert_eq!(mode(&settings), 0o600, "settings may hold etcd credentials");
    assert!(root.join("etc/twill/plugins").is_dir());
    assert!(
        root.join("usr/local/share/doc/twill/operations.md")
            .is_file()
    );

    // An operator's settings survive a reinstall.
    fs::write(&settings, "FLANNELD_ETCD_ENDPOINTS=http://10.0.0.10:2379\n").expect("edit");
    install(&["--root", &root_arg, "--binary", &bin_arg]);
    assert_eq!(
        fs::read_to_string(&settings).expect("settings"),
        "FLANNELD_ETCD_ENDPOINTS=http://10.0.0.10:2379\n"
    );

    let said = install(&["--uninstall", "--root", &root_arg]);
    assert!(said.contains("kept"), "{said}");
    assert!(!installed.exists() && !unit.exists());
    assert!(settings.exists() && root.join("etc/twill/plugins").is_dir());
    install(&["--uninstall", "--purge", "--root", &root_arg]);
    let left: Vec<PathBuf> = walk(&root).into_iter().filter(|p| p.is_file()).collect();
    assert!(left.is_empty(), "files left after --purge: {left:?}");
    fs::remove_dir_all(&root).expect("clean up");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("read").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// A node run with only the unit's capabilities (and no new privileges) does
/// everything a node does: the vxlan device, routes, FDB and neighbours (netlink), the
/// masquerade rules (iptables), the probes' raw ICMP socket; its pod reaches the other
/// node's.
#[test]
fn a_node_runs_with_only_the_units_capabilities() {
    let mut c = Cluster::new(2);
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    c.start_twill(2);
    let caps = unit_capabilities();
    assert_eq!(caps, ["net_admin", "net_raw", "net_bind_service"]);
    let bounding = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let node = &c.nodes[0];
    let log = fs::File::create(c.dir().join("capped-twill.log")).expect("log");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.ns, "setpriv"])
        .arg(format!("--bounding-set={bounding}"))
        .args(["--inh-caps=-all", "--no-new-privs", "--"])
        .arg(twill_bin())
        .arg("run")
        .args(&c.etcd_args)
        .arg("--subnet-file")
        .arg(&node.subnet_file)
        .args(["--iface", "eth0", "--ip-masq", "--peer-probe-interval", "1"])
        .env("TWILL_PLUGIN_CACHE_DIR", c.dir().join("plugin-cache"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start twill under setpriv");
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
    // `ip netns exec` and setpriv exec in place: the child is twill.
    let status = fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(str::trim)
        .unwrap_or("");
    eprintln!("twill's bounding set: {bounding}");
    // NET_BIND_SERVICE (10), NET_ADMIN (12), NET_RAW (13).
    assert_eq!(bounding, "0000000000003400", "{status}");
    let node = &c.nodes[0];
    assert!(
        node.iptables(&["-t", "nat", "-S"])
            .contains("TWILL-POSTRTG"),
        "the masquerade rules were written"
    );
    let text = || fs::read_to_string(c.dir().join("capped-twill.log")).unwrap_or_default();
    wait_for("a probe answered", Duration::from_secs(20), || {
        let (_, body) = node.api_get("/v1/peers");
        body.contains(r#""reachable":true"#).then_some(())
    });
    let log = text();
    assert!(
        !log.contains("Operation not permitted") && !log.contains("ERROR"),
        "{log}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    assert!(
        status.success(),
        "twill exits 0 on SIGTERM: {status}\n{}",
        text()
    );
    assert_eq!(c.nodes[1].stop(), Some(0));
}

/// `twill <args>` in node `k`'s namespace: (exit status, stdout, stderr).
fn twill_in(c: &Cluster, k: usize, args: &[&str]) -> (i32, String, String) {
    let bin = twill_bin();
    let mut cmd = vec!["ip", "netns", "exec", &c.nodes[k - 1].ns];
    cmd.push(bin.to_str().expect("UTF-8 path"));
    cmd.extend_from_slice(args);
    let out = run(&cmd);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `twill leave` retires a node: refused while the daemon runs; once it is stopped,
/// the lease is deleted, the other node drops its route, neighbour and FDB entry at
/// once, and the node's own devices, routes, probe address, rules and subnet.env go.
/// `twill status` says ready with exit 0 (and `--json`), and exit 1 once nothing answers.
#[test]
fn leave_releases_the_lease_and_peers_drop_the_node_at_once() {
    let mut c = Cluster::running(
        2,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    let (code, out, err) = twill_in(&c, 1, &["status", "--json"]);
    assert_eq!(code, 0, "a ready node: {out}{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert_eq!(json["status"]["ready"], true, "{out}");
    assert_eq!(json["peers"].as_array().map(Vec::len), Some(1), "{out}");

    let subnet = c.nodes[0].subnet();
    let store: Vec<&str> = c.etcd_args.iter().map(String::as_str).collect();
    let subnet_file = path_arg(&c.nodes[0].subnet_file);
    let mut leave = vec!["leave", "--subnet-file", &subnet_file, "--iface", "eth0"];
    leave.extend(&store);
    let (code, _, err) = twill_in(&c, 1, &leave);
    assert_eq!(code, 1, "leave refuses while twill runs: {err}");
    assert!(err.contains("still running"), "{err}");

    assert_eq!(c.nodes[0].stop(), Some(0));
    let (code, _, err) = twill_in(&c, 1, &["status"]);
    assert_eq!(code, 1, "no node to ask: {err}");
    let node2_has_route = |c: &Cluster| {
        !c.nodes[1]
            .exec(&["ip", "route", "show", &subnet])
            .trim()
            .is_empty()
    };
    assert!(
        node2_has_route(&c),
        "node 2 routes to node 1 before it leaves"
    );

    let started = std::time::Instant::now();
    let (code, out, err) = twill_in(&c, 1, &leave);
    assert_eq!(code, 0, "{out}{err}");
    println!("{out}");
    assert!(
        out.contains(&format!("released the lease of {subnet}")),
        "{out}"
    );
    wait_for("node 2 to drop node 1", Duration::from_secs(5), || {
        (!node2_has_route(&c)).then_some(())
    });
    println!(
        "node 2 dropped node 1 {:?} after leave started",
        started.elapsed()
    );
    let key = subnet.replace('/', "-");
    assert!(
        !c.leases().contains_key(&key),
        "the lease is gone: {:?}",
        c.leases()
    );
    let node2 = &c.nodes[1];
    assert!(
        !node2
            .exec(&["ip", "neigh", "show", "dev", "flannel.1"])
            .contains(&subnet[..subnet.len() - 3]),
        "node 2's neighbour entry for node 1 went"
    );
    let node1 = &c.nodes[0];
    let left = node1.exec(&["ip", "-d", "link", "show"]);
    assert!(!left.contains("flannel.1"), "the vxlan device went: {left}");
    let routes = node1.exec(&["ip", "route", "show", "proto", "167"]);
    assert!(routes.trim().is_empty(), "twill's routes went: {routes}");
    assert!(!node1.subnet_file.exists(), "subnet.env went");
    assert!(
        !node1.iptables(&["-S"]).contains("TWILL-FWD"),
        "the forward chain went"
    );
    for line in ["device flannel.1 (vxlan)", "iptables Forward chain"] {
        assert!(out.contains(line), "leave says {line:?}: {out}");
    }
    // Again: nothing left to do, and it says so.
    let (code, out, err) = twill_in(&c, 1, &leave);
    assert_ne!(code, 0, "no subnet.env and no --public-ip: {out}{err}");
    assert!(err.contains("pass --public-ip"), "{err}");
    let mut by_ip = leave.clone();
    let ip = node1.ip();
    by_ip.extend(["--public-ip", &ip]);
    let (code, out, err) = twill_in(&c, 1, &by_ip);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("holds no lease"), "{out}");
}

/// A node that answers but is not ready (it waits for the network config) makes
/// `twill status` exit 8, with `"ready": false` in `--json`.
#[test]
fn status_exits_8_while_the_node_is_not_ready() {
    let mut c = Cluster::new(1);
    c.start_twill(1);
    let (code, out, err) = wait_for("the API to answer", Duration::from_secs(20), || {
        let answer = twill_in(&c, 1, &["status", "--json"]);
        (answer.0 != 1).then_some(answer)
    });
    assert_eq!(code, 8, "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["status"]["ready"], false, "{out}");
    let (code, out, _) = twill_in(&c, 1, &["status"]);
    assert_eq!(code, 8);
    assert!(out.contains("NOT READY"), "{out}");
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// `twill config get` and `twill config check` against the cluster's etcd: the stored
/// text, the effective config, a config refused by the backend's own keys (exit 3),
/// an unknown key warned about, and leases that would not fit a new Network.
#[test]
fn config_get_and_check_read_the_store_and_ask_the_backend() {
    let mut c = Cluster::running(
        1,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":7}}"#,
    );
    let store: Vec<String> = c.etcd_args.clone();
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|a| (*a).to_owned())
            .chain(store.iter().cloned())
            .collect()
    };
    let twill = |c: &Cluster, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        twill_in(c, 1, &args)
    };
    let (code, out, err) = twill(&c, with(&["config", "get"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":7}}"#
    );
    let (code, out, err) = twill(&c, with(&["config", "get", "--json"]));
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["SubnetLen"], 24, "the default is filled in: {out}");
    assert_eq!(json["SubnetMax"], "10.244.255.0", "{out}");
    assert_eq!(json["Backend"]["VNI"], 7, "{out}");

    let (code, out, err) = twill(&c, with(&["config", "check"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 leases in the store, all fit"), "{out}");
    assert!(out.contains("backend vxlan (built-in:vxlan"), "{out}");

    c.put_config(r#"{"Network":"10.99.0.0/16","Typo":1,"Backend":{"Type":"vxlan","VNI":-1}}"#);
    let (code, out, err) = twill(&c, with(&["config", "check"]));
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains(r#"warn  unknown key "Typo""#), "{out}");
    assert!(
        out.contains("1 of 1 leases do not fit this config"),
        "{out}"
    );
    assert!(
        out.contains("FAIL  backend vxlan (built-in:vxlan) refuses"),
        "{out}"
    );
    assert!(out.contains("Backend.VNI"), "{out}");
    // A config given on the command line is checked without the store.
    let (code, out, _) = twill_in(
        &c,
        1,
        &[
            "config",
            "check",
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("leases"), "{out}");
    let (code, out, _) = twill_in(&c, 1, &["config", "check", "{"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("FAIL  invalid network config"), "{out}");
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// Logging: `--log-format json` writes one JSON object per line (level, message,
/// fields); a `--log-level` or `TWILL_LOG_FORMAT` that is no such thing is a usage
/// error (exit 2) naming what is accepted, never silence.
#[test]
fn log_lines_as_json_and_bad_levels_refused_loudly() {
    let bin = twill_bin();
    let twill = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(&bin)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("TWILL_LOG")
            .output()
            .expect("run twill");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let check = [
        "config",
        "check",
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    ];
    let mut args = vec!["--log-format", "json"];
    args.extend(check);
    let (code, err) = twill(&args, &[]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let device = lines
        .iter()
        .find(|l| l["message"] == "creating vxlan device")
        .unwrap_or_else(|| panic!("the plugin's line, as JSON: {err}"));
    assert_eq!(device["level"], "INFO", "{device}");
    assert_eq!(device["device"], "flannel.1", "fields are keys: {device}");
    assert!(device["timestamp"].is_string(), "{device}");
    // The same through the environment, and --log-level warning (Go's word) hides it.
    let (code, err) = twill(&check, &[("TWILL_LOG_FORMAT", "json")]);
    assert_eq!(code, 0);
    assert!(err.lines().all(|l| l.starts_with('{')), "{err}");
    let mut quiet = vec!["--log-level", "warning"];
    quiet.extend(check);
    let (code, err) = twill(&quiet, &[]);
    assert_eq!(code, 0);
    assert!(!err.contains("creating vxlan device"), "{err}");
    for (args, env, want) in [
        (
            vec!["--log-level", "loud", "config", "get"],
            vec![],
            "one of error, warn (warning), info, debug, trace, off",
        ),
        (
            vec!["config", "get"],
            vec![("TWILL_LOG_FORMAT", "xml")],
            "[possible values: text, json]",
        ),
    ] {
        let (code, err) = twill(&args, &env);
        assert_eq!(code, 2, "{args:?} {env:?}: {err}");
        assert!(err.contains(want), "{args:?} {env:?}: {err}");
    }
}
