//! Installing and running twill as a service (docs/operations.md): `scripts/install`
//! into a staging root and back out of it, and a node running with exactly the
//! capabilities the systemd unit leaves it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use twill_e2e::{Cluster, run, twill_bin, wait_for};

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
