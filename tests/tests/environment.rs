//! End to end (audit G-4): twill configured by flanneld's environment variables alone,
//! as a kube-flannel or systemd deployment does it — no flag on the command line. Each
//! variable is checked by its effect: where the lease is written, the subnet file,
//! the interface and public IP, the masquerade and forward rules and how often they are
//! repaired, the health listener,
//! the renew margin (the lease's renewal time), the API address.

use std::process::{Command, Stdio};
use std::time::Duration;

use twill_e2e::{Cluster, ETCD_IP, twill_bin, wait_for};

/// The HTTP status `curl` gets for `url` from inside namespace `ns` (empty when none).
fn http_code(ns: &str, url: &str) -> String {
    let out = twill_e2e::run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        url,
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn flanneld_environment_variables_alone_configure_a_node() {
    let c = Cluster::new(2);
    let prefix = "/custom/network";
    c.etcdctl(&[
        "put",
        &format!("{prefix}/config"),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    ]);
    let node = &c.nodes[0];
    let subnet_file = c.dir().join("env-subnet.env");
    let log = std::fs::File::create(c.dir().join("env-twill.log")).expect("log");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.ns])
        .arg(twill_bin())
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FLANNELD_ETCD_ENDPOINTS", format!("http://{ETCD_IP}:2379"))
        .env("FLANNELD_ETCD_PREFIX", prefix)
        .env("FLANNELD_IFACE", "eth0")
        .env("FLANNELD_PUBLIC_IP", node.ip())
        .env("FLANNELD_SUBNET_FILE", &subnet_file)
        .env("FLANNELD_IP_MASQ", "true")
        .env("FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE", "true")
        .env("FLANNELD_IPTABLES_FORWARD_RULES", "false")
        .env("FLANNELD_IPTABLES_RESYNC", "1")
        .env("FLANNELD_HEALTHZ_IP", "127.0.0.1")
        .env("FLANNELD_HEALTHZ_PORT", "9476")
        .env("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "1439")
        .env("TWILL_API_ADDR", "127.0.0.1:9477")
        .env("TWILL_PLUGIN_CACHE_DIR", c.dir().join("plugin-cache"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start twill");
    let env = wait_for(
        "the subnet file at FLANNELD_SUBNET_FILE",
        Duration::from_secs(60),
        || twill_lab::pods::read_subnet_env(&subnet_file),
    );
    assert_eq!(env["FLANNEL_IPMASQ"], "true", "FLANNELD_IP_MASQ");
    // The lease under FLANNELD_ETCD_PREFIX, with FLANNELD_PUBLIC_IP.
    let leases = c.etcdctl(&["get", "--prefix", &format!("{prefix}/subnets/")]);
    assert!(
        leases.contains(&format!(r#""PublicIP":"{}""#, node.ip())),
        "{leases}"
    );
    // FLANNELD_IP_MASQ on, FLANNELD_IPTABLES_FORWARD_RULES off.
    let nat = node.iptables(&["-t", "nat", "-S"]);
    assert!(nat.contains("TWILL-POSTRTG"), "{nat}");
    // FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE: MASQUERADE without --random-fully.
    assert!(
        nat.contains("-j MASQUERADE") && !nat.contains("--random-fully"),
        "{nat}"
    );
    let filter = node.iptables(&["-S"]);
    assert!(!filter.contains("TWILL-FWD"), "{filter}");
    // FLANNELD_IPTABLES_RESYNC 1: the masquerade rules flushed under the node are back
    // within about a second. The first repair lines the test up with the check's tick,
    // so the second shows the period (the default 5 s would take about 5 s there).
    let repaired = || {
        node.iptables(&["-t", "nat", "-F", "TWILL-POSTRTG"]);
        let flushed = std::time::Instant::now();
        wait_for(
            "the masquerade rules repaired",
            Duration::from_secs(15),
            || {
                node.iptables(&["-t", "nat", "-S", "TWILL-POSTRTG"])
                    .contains("-j MASQUERADE")
                    .then_some(())
            },
        );
        flushed.elapsed()
    };
    repaired();
    let took = repaired();
    println!("FLANNELD_IPTABLES_RESYNC=1: flushed masquerade rules back after {took:?}");
    assert!(
        took < Duration::from_millis(2500),
        "repaired after {took:?} with FLANNELD_IPTABLES_RESYNC=1"
    );
    // FLANNELD_HEALTHZ_IP/PORT and TWILL_API_ADDR.
    let curl = |url: &str| http_code(&node.ns, url);
    wait_for("the health listener", Duration::from_secs(30), || {
        (curl("http://127.0.0.1:9476/readyz") == "200").then_some(())
    });
    assert_eq!(curl("http://127.0.0.1:9477/v1/status"), "200");
    // FLANNELD_SUBNET_LEASE_RENEW_MARGIN 1439 minutes of a 24 h lease: renewed a minute
    // after it was taken, so the log shows a renewal soon.
    wait_for(
        "a renewal (margin 1439 min)",
        Duration::from_secs(120),
        || {
            std::fs::read_to_string(c.dir().join("env-twill.log"))
                .ok()?
                .contains("renewed lease")
                .then_some(())
        },
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "twill exits 0 on SIGTERM: {status}");
}

/// A flanneld environment file migrated as it is: a `FLANNELD_*` variable twill has no
/// setting for is named in a warning, not dropped in silence; the node runs.
#[test]
fn an_unknown_flanneld_variable_is_named() {
    let mut c = Cluster::new(1);
    c.twill_env
        .push(("FLANNELD_KUBE_SUBNET_MGR".into(), "true".into()));
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    c.start_twill(1);
    wait_for("the warning", Duration::from_secs(20), || {
        c.nodes[0]
            .log_text()
            .lines()
            .any(|l| {
                l.contains("WARN")
                    && l.contains("FLANNELD_KUBE_SUBNET_MGR is set, but twill has no such setting")
            })
            .then_some(())
    });
    wait_for("node ready", Duration::from_secs(30), || {
        (c.nodes[0].api_get("/readyz").0 == 200).then_some(())
    });
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// `--store embedded --store-path` (node 1) and the same as `TWILL_STORE` and
/// `TWILL_STORE_PATH` (node 2): both nodes lease from one SQLite file with the config
/// `twill config set` wrote, reach each other, and the cluster's etcd (whose address
/// they are also given) stays empty.
#[test]
fn the_embedded_store_by_flag_and_by_environment() {
    let mut c = Cluster::new(2);
    let path = c.dir().join("leases.db");
    let path_arg = path.display().to_string();
    let set = Command::new(twill_bin())
        .args(["config", "set", "--store-path", &path_arg])
        .arg(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
        .output()
        .expect("twill config set");
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    c.start_twill_with(
        1,
        &[
            "--iface",
            "eth0",
            "--store",
            "embedded",
            "--store-path",
            &path_arg,
        ],
    );
    c.twill_env.push(("TWILL_STORE".into(), "embedded".into()));
    c.twill_env
        .push(("TWILL_STORE_PATH".into(), path_arg.clone()));
    c.start_twill(2);
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
    let etcd = c.etcdctl(&["get", "--prefix", "--keys-only", "/"]);
    assert!(etcd.trim().is_empty(), "nothing went to etcd: {etcd}");
    for node in &c.nodes {
        let (_, status) = node.api_get("/v1/status");
        assert!(
            status.contains(&format!(r#""endpoints":["file://{path_arg}"]"#)),
            "{}: {status}",
            node.ns
        );
    }
    for node in &mut c.nodes {
        assert_eq!(node.stop(), Some(0));
    }
}

/// `twill --version` names the version, as `flanneld --version` does.
#[test]
fn version_prints_the_version() {
    let out = Command::new(twill_bin())
        .arg("--version")
        .output()
        .expect("twill --version");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("twill {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Every option of `twill run` is used by some test as a flag, and as its `FLANNELD_*`
/// variable when it has one (audit G-4): a new option without a test fails here,
/// naming it.
#[test]
fn every_run_option_is_exercised_by_a_test() {
    let out = Command::new(twill_bin())
        .args(["run", "--help"])
        .output()
        .expect("twill run --help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = String::new();
    for dir in ["tests", "src"] {
        for entry in std::fs::read_dir(root.join(dir))
            .expect("test sources")
            .flatten()
        {
            if entry.path().extension().is_some_and(|e| e == "rs") {
                sources += &std::fs::read_to_string(entry.path()).expect("read");
            }
        }
    }
    // An option's entry: a line starting with its long flag, then its text up to the
    // next entry, where `[env: NAME=…]` names its variable.
    let mut untested = Vec::new();
    let mut options = 0;
    let lines: Vec<&str> = help.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(rest) = trimmed.strip_prefix("--") else {
            continue;
        };
        if !line.starts_with("      --") && !line.starts_with("  -") {
            continue;
        }
        let flag = format!(
            "--{}",
            rest.split([' ', '=', '<', '[']).next().unwrap_or("")
        );
        if flag == "--help" {
            continue;
        }
        options += 1;
        let entry: String = lines[i..]
            .iter()
            .skip(1)
            .take_while(|l| !l.trim_start().starts_with("--"))
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        let env = entry
            .split("[env: ")
            .nth(1)
            .and_then(|e| e.split(['=', ']']).next())
            .map(str::to_owned);
        // A string literal that is the flag (or starts `--flag=`), or the variable.
        let used = |name: &str| {
            sources.contains(&format!("\"{name}\"")) || sources.contains(&format!("\"{name}="))
        };
        // The flag itself, and a flanneld variable too: migrated env files use them.
        let flanneld = env.as_deref().filter(|e| e.starts_with("FLANNELD_"));
        if !used(&flag) || flanneld.is_some_and(|e| !used(e)) {
            untested.push(format!("{flag} ({})", env.unwrap_or_default()));
        }
    }
    assert!(options >= 25, "only {options} options found in:\n{help}");
    assert!(untested.is_empty(), "options no test uses: {untested:?}");
}

/// The same settings as flags: `--etcd-prefix`, `--api-addr`, `--healthz-ip`,
/// `--healthz-port`, each by its effect; and flanneld's single-dash spelling
/// (`-iface=eth0`).
#[test]
fn prefix_api_and_health_listeners_by_flag() {
    let mut c = Cluster::new(1);
    let prefix = "/flags/network";
    c.etcdctl(&[
        "put",
        &format!("{prefix}/config"),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    ]);
    c.start_twill_with(
        1,
        &[
            // flanneld's Go spelling, as a migrated unit file has it.
            "-iface=eth0",
            "--etcd-prefix",
            prefix,
            "--api-addr",
            "127.0.0.1:9478",
            "--healthz-ip",
            "127.0.0.1",
            "--healthz-port",
            "9479",
        ],
    );
    let node = &c.nodes[0];
    let curl = |url: &str| http_code(&node.ns, url);
    wait_for(
        "the health listener on 9479",
        Duration::from_secs(30),
        || (curl("http://127.0.0.1:9479/readyz") == "200").then_some(()),
    );
    assert_eq!(curl("http://127.0.0.1:9478/v1/status"), "200");
    let leases = c.etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        &format!("{prefix}/subnets/"),
    ]);
    assert_eq!(
        leases.lines().filter(|l| !l.is_empty()).count(),
        1,
        "{leases}"
    );
    let default = c.etcdctl(&["get", "--prefix", "--keys-only", "/coreos.com/network/"]);
    assert!(
        default.trim().is_empty(),
        "nothing under the default prefix: {default}"
    );
    assert_eq!(c.nodes[0].stop(), Some(0));
}
