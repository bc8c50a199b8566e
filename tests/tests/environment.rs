//! End to end (audit G-4): twill configured by flanneld's environment variables alone,
//! as a kube-flannel or systemd deployment does it — no flag on the command line. Each
//! variable is checked by its effect: where the lease is written, the subnet file,
//! the interface and public IP, the masquerade and forward rules, the health listener,
//! the renew margin (the lease's renewal time), the API address.

use std::process::{Command, Stdio};
use std::time::Duration;

use twill_e2e::{Cluster, ETCD_IP, twill_bin, wait_for};

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
    let filter = node.iptables(&["-S"]);
    assert!(!filter.contains("TWILL-FWD"), "{filter}");
    // FLANNELD_HEALTHZ_IP/PORT and TWILL_API_ADDR.
    let curl = |url: &str| {
        let out = twill_e2e::run(&[
            "ip",
            "netns",
            "exec",
            &node.ns,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
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
