//! End to end: `twill doctor` on a node of a real two-node vxlan cluster. It first
//! finds nothing wrong (exit 0); then each test breaks exactly one thing in node 1's
//! namespace, runs doctor there and sees that check — and only that one — fail (or
//! warn) naming the thing, with exit status 1 for a failure; then mends it and sees
//! the check pass again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use twill_e2e::{Cluster, run, twill_bin, wait_for};

/// One check as `twill doctor --json` prints it: (result, message, fix).
type Checks = BTreeMap<String, (String, String, String)>;

/// Run doctor in node `k`'s namespace: its exit code and checks.
fn doctor_env(c: &Cluster, k: usize, env: &[(&str, &str)]) -> (i32, Checks) {
    let node = &c.nodes[k - 1];
    let bin = twill_bin();
    let subnet_file = node.subnet_file.display().to_string();
    let mut cmd = vec!["ip", "netns", "exec", &node.ns, "env"];
    let pairs: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    cmd.extend(pairs.iter().map(String::as_str));
    let bin = bin.display().to_string();
    cmd.extend([
        bin.as_str(),
        "doctor",
        "--json",
        "--subnet-file",
        &subnet_file,
    ]);
    let out = run(&cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let checks = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("check"), (s("result"), s("message"), s("fix")))
        })
        .collect();
    (out.status.code().unwrap_or(-1), checks)
}

fn doctor(c: &Cluster, k: usize) -> (i32, Checks) {
    doctor_env(c, k, &[])
}

/// Every check passes, with exit status 0.
fn assert_healthy(c: &Cluster, k: usize) {
    let (code, checks) = doctor(c, k);
    let bad: Vec<_> = checks.iter().filter(|(_, (r, _, _))| r != "ok").collect();
    assert!(bad.is_empty(), "node {k} not healthy: {bad:#?}");
    assert_eq!(code, 0, "{checks:#?}");
    for name in [
        "daemon",
        "subnet.env",
        "forwarding",
        "mtu",
        "rp_filter",
        "forward-policy",
        "checksum-offload",
        "peers",
        "stale",
    ] {
        assert!(checks.contains_key(name), "no {name} check: {checks:#?}");
    }
}

/// `check` has result `result` and its message names every word of `names`; every
/// other check still passes; the exit code follows.
fn assert_finds(c: &Cluster, k: usize, check: &str, result: &str, names: &[&str]) -> Checks {
    let (code, checks) = doctor(c, k);
    let (r, message, fix) = checks
        .get(check)
        .unwrap_or_else(|| panic!("no {check} check: {checks:#?}"));
    assert_eq!(r, result, "{check}: {message}");
    for n in names {
        assert!(
            message.contains(n),
            "{check} does not name {n:?}: {message}"
        );
    }
    assert!(!fix.is_empty(), "{check} says what to do: {message}");
    let others: Vec<_> = checks
        .iter()
        .filter(|(name, (r, _, _))| name.as_str() != check && r != "ok")
        .collect();
    assert!(others.is_empty(), "only {check} is affected: {others:#?}");
    assert_eq!(code, i32::from(result == "fail"), "exit status");
    println!("doctor names it: {check}: {message}");
    checks
}

/// Two vxlan nodes probing each other every second; node 1 without twill's forward
/// rules (so its FORWARD chain is the test's to break).
fn cluster() -> Cluster {
    twill_lab::require("twill doctor's tests", &[("ethtool", "ethtool")])
        .expect("twill doctor's tests need ethtool");
    let mut c = Cluster::new(2);
    c.twill_env
        .push(("TWILL_PEER_PROBE_INTERVAL".into(), "1".into()));
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    c.start_twill_with(1, &["--iface", "eth0", "--iptables-forward-rules=false"]);
    c.start_twill(2);
    c.wire_pods();
    c.wait_pair(1, 2);
    let two = c.nodes[1].subnet();
    wait_for(
        "node 2 reachable in node 1's probes",
        Duration::from_secs(30),
        || {
            let (_, body) = c.nodes[0].api_get("/v1/peers");
            body.contains(&two)
                .then_some(())
                .filter(|()| body.contains("\"reachable\":true"))
        },
    );
    assert_healthy(&c, 1);
    c
}

/// Commands in a node's namespace, without holding the cluster.
struct NodeShell<'a>(&'a str);

impl NodeShell<'_> {
    fn exec(&self, cmd: &[&str]) -> String {
        twill_e2e::sh(&[&["ip", "netns", "exec", self.0][..], cmd].concat())
    }
}

#[test]
fn doctor_names_each_broken_thing_on_the_node() {
    let mut c = cluster();
    let ns1 = c.nodes[0].ns.clone();
    let n1 = NodeShell(&ns1);
    let rp_before = n1.exec(&["sysctl", "-n", "net.ipv4.conf.eth0.rp_filter"]);

    // IP forwarding off.
    n1.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    assert_finds(&c, 1, "forwarding", "fail", &["ip_forward=0"]);
    n1.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

    // An underlay MTU lowered under the tunnel's (the kernel keeps flannel.1 at 1450).
    n1.exec(&["ip", "link", "set", "eth0", "mtu", "1400"]);
    assert_finds(&c, 1, "mtu", "fail", &["flannel.1", "1450", "eth0", "1400"]);
    n1.exec(&["ip", "link", "set", "eth0", "mtu", "1500"]);
    // A bridge whose pods send more than the tunnel carries.
    n1.exec(&["ip", "link", "set", "cni0", "mtu", "1500"]);
    assert_finds(&c, 1, "mtu", "fail", &["cni0", "1500"]);
    n1.exec(&["ip", "link", "set", "cni0", "mtu", "1450"]);

    // FORWARD policy DROP with nothing accepting the network (twill's rules are off on
    // node 1).
    c.nodes[0].iptables(&["-P", "FORWARD", "DROP"]);
    assert_finds(&c, 1, "forward-policy", "fail", &["DROP", "10.244.0.0/16"]);
    c.nodes[0].iptables(&["-P", "FORWARD", "ACCEPT"]);
    // On node 2, twill's own rules accept the network under a DROP policy.
    c.nodes[1].iptables(&["-P", "FORWARD", "DROP"]);
    let (_, checks) = doctor(&c, 2);
    assert_eq!(
        checks["forward-policy"].0, "ok",
        "{:?}",
        checks["forward-policy"]
    );
    c.nodes[1].iptables(&["-P", "FORWARD", "ACCEPT"]);

    // vxlan checksum offload on a kernel without the fix (judged as on 5.4).
    let old = [("TWILL_DOCTOR_KERNEL", "5.4.0-150-generic")];
    let (code, checks) = doctor_env(&c, 1, &old);
    assert_eq!(
        checks["checksum-offload"].0, "fail",
        "{:?}",
        checks["checksum-offload"]
    );
    assert!(checks["checksum-offload"].1.contains("flannel #1279"));
    assert_eq!(code, 1);
    n1.exec(&[
        "ethtool",
        "-K",
        "flannel.1",
        "tx-checksum-ip-generic",
        "off",
    ]);
    let (_, checks) = doctor_env(&c, 1, &old);
    assert_eq!(
        checks["checksum-offload"].0, "ok",
        "{:?}",
        checks["checksum-offload"]
    );
    n1.exec(&["ethtool", "-K", "flannel.1", "tx-checksum-ip-generic", "on"]);

    // A route and an FDB entry of a node that holds no lease.
    let route = [
        "10.244.250.0/24",
        "via",
        "10.244.250.0",
        "dev",
        "flannel.1",
        "onlink",
    ];
    n1.exec(&[&["ip", "route", "add"][..], &route].concat());
    let fdb = [
        "0e:11:22:33:44:55",
        "dev",
        "flannel.1",
        "dst",
        "192.168.77.99",
    ];
    n1.exec(&[&["bridge", "fdb", "append"][..], &fdb].concat());
    let checks = assert_finds(
        &c,
        1,
        "stale",
        "fail",
        &["10.244.250.0/24", "192.168.77.99"],
    );
    assert!(checks["stale"].2.contains("ip route del 10.244.250.0/24"));
    n1.exec(&[&["ip", "route", "del"][..], &route].concat());
    n1.exec(&[&["bridge", "fdb", "del"][..], &fdb].concat());

    // subnet.env that does not match the lease.
    let path = c.nodes[0].subnet_file.clone();
    let good = std::fs::read_to_string(&path).expect("subnet.env");
    let own = c.nodes[0].subnet();
    let wrong = good.replace(
        &format!("FLANNEL_SUBNET={}", own.replace(".0/", ".1/")),
        "FLANNEL_SUBNET=10.244.251.1/24",
    );
    assert_ne!(wrong, good, "subnet.env has FLANNEL_SUBNET: {good}");
    std::fs::write(&path, wrong).expect("write subnet.env");
    assert_finds(&c, 1, "subnet.env", "fail", &["10.244.251.1/24", &own]);
    std::fs::write(&path, &good).expect("restore subnet.env");

    assert_healthy(&c, 1);

    // A peer whose overlay traffic is dropped (at node 2, udp/8472 from node 1).
    let rule = [
        "INPUT",
        "-s",
        &c.nodes[0].ip(),
        "-p",
        "udp",
        "--dport",
        "8472",
        "-j",
        "DROP",
    ];
    c.nodes[1].iptables(&[&["-I"][..], &rule].concat());
    let two = c.nodes[1].subnet();
    wait_for(
        "doctor to see node 2 unreachable",
        Duration::from_secs(30),
        || (doctor(&c, 1).1["peers"].0 == "fail").then_some(()),
    );
    assert_finds(&c, 1, "peers", "fail", &[&two, "192.168.77.2"]);
    c.nodes[1].iptables(&[&["-D"][..], &rule].concat());
    wait_for("node 2 reachable again", Duration::from_secs(30), || {
        (doctor(&c, 1).1["peers"].0 == "ok").then_some(())
    });

    // Strict reverse-path filtering with the route to the peer on another device.
    n1.exec(&[
        "ip", "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p",
    ]);
    n1.exec(&["ip", "link", "set", "eth9", "up"]);
    n1.exec(&["ip", "route", "add", "192.168.77.2/32", "dev", "eth9"]);
    n1.exec(&["sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=1"]);
    let (code, checks) = doctor(&c, 1);
    let (r, message, _) = &checks["rp_filter"];
    assert_eq!(r, "fail", "{message}");
    assert!(
        message.contains("eth9") && message.contains(&two),
        "{message}"
    );
    assert_eq!(code, 1);
    println!("doctor names it: rp_filter: {message}");
    n1.exec(&["sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=2"]);
    assert_eq!(
        doctor(&c, 1).1["rp_filter"].0,
        "warn",
        "loose filtering: asymmetric, not dropped"
    );
    n1.exec(&["ip", "link", "del", "eth9"]);
    n1.exec(&[
        "sysctl",
        "-qw",
        &format!("net.ipv4.conf.eth0.rp_filter={}", rp_before.trim()),
    ]);

    // The daemon stopped: doctor says so (and what it cannot check without it).
    c.nodes[0].stop();
    let (code, checks) = doctor(&c, 1);
    assert_eq!(checks["daemon"].0, "fail", "{:?}", checks["daemon"]);
    assert!(
        checks["daemon"].1.contains("does not answer"),
        "{:?}",
        checks["daemon"]
    );
    assert_eq!(code, 1);
}
