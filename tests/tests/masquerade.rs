//! End to end: flannel's `--ip-masq` and `--iptables-forward-rules` on real iptables
//! (nf_tables) in the node namespaces. A host outside the cluster network sees a pod's
//! traffic from the node's address; a pod on another node sees the pod's own address;
//! the rules are flannel's set in chains of our own, repaired when deleted, removed
//! when twill starts without the flag; and with FORWARD's policy at DROP (as Docker
//! sets it) overlay traffic flows only thanks to the forward rules.

use std::time::Duration;

use twill_e2e::{Cluster, Node, sh, wait_for};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const OUTSIDE_IP: &str = "192.168.77.200";

/// Packets counted by the INPUT rule matching `-p icmp -s <source>` in namespace `ns`.
fn icmp_from(ns: &str, source: &str) -> u64 {
    let listing = sh(&[
        "ip", "netns", "exec", ns, "iptables", "-w", "5", "-L", "INPUT", "-v", "-n", "-x",
    ]);
    listing
        .lines()
        .find(|l| {
            // pkts bytes [target] prot opt in out source destination: no target here.
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 4 && f[f.len() - 2] == source
        })
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counting rule for {source} in {ns}:\n{listing}"))
}

/// Count ICMP from each of `sources` arriving in `ns`.
fn count_icmp(ns: &str, sources: &[&str]) {
    for s in sources {
        sh(&[
            "ip", "netns", "exec", ns, "iptables", "-w", "5", "-A", "INPUT", "-p", "icmp", "-s", s,
        ]);
    }
}

fn ping_from_pod(node: &Node, dst: &str) -> bool {
    twill_lab::traffic::ping(&node.pod_ns, dst)
}

/// Our chain in `table`, as `iptables -S` lists it.
fn chain(node: &Node, table: &str, chain: &str) -> Vec<String> {
    let out = twill_e2e::run(&[
        "ip", "netns", "exec", &node.ns, "iptables", "-w", "5", "-t", table, "-S", chain,
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn jumps(node: &Node, table: &str, comment: &str) -> usize {
    node.iptables(&["-t", table, "-S"])
        .lines()
        .filter(|l| l.contains(&format!("--comment \"{comment}\" -j TWILL-")))
        .count()
}

#[test]
fn ip_masq_hides_pods_from_the_outside_only_and_forward_rules_beat_a_drop_policy() {
    let mut c = Cluster::new(2);
    let outside = c.add_outside_host("out", OUTSIDE_IP);
    c.put_config(CONFIG);
    let args = ["--iface", "eth0", "--ip-masq", "--iptables-resync", "1"];
    c.start_twill_with(1, &args);
    c.start_twill_with(2, &args);
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
    let (n1, pod1, pod2) = (c.nodes[0].ip(), c.nodes[0].pod_ip(), c.nodes[1].pod_ip());
    for node in &c.nodes {
        let env = node.subnet_env().expect("subnet.env");
        assert_eq!(env["FLANNEL_IPMASQ"], "true", "{}", node.ns);
    }

    // The rule set: flannel's, in our chain, one jump each.
    let own = c.nodes[0].subnet();
    let c1 = "-m comment --comment \"twill masq\"";
    let expected = [
        "-N TWILL-POSTRTG".to_owned(),
        format!("-A TWILL-POSTRTG -m mark --mark 0x4000/0x4000 {c1} -j RETURN"),
        format!("-A TWILL-POSTRTG -s {own} -d 10.244.0.0/16 {c1} -j RETURN"),
        format!("-A TWILL-POSTRTG -s 10.244.0.0/16 -d {own} {c1} -j RETURN"),
        format!("-A TWILL-POSTRTG ! -s 10.244.0.0/16 -d {own} {c1} -j RETURN"),
        format!(
            "-A TWILL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 {c1} -j MASQUERADE --random-fully"
        ),
        format!(
            "-A TWILL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 {c1} -j MASQUERADE --random-fully"
        ),
    ];
    assert_eq!(chain(&c.nodes[0], "nat", "TWILL-POSTRTG"), expected);
    assert_eq!(
        chain(&c.nodes[0], "filter", "TWILL-FWD"),
        [
            "-N TWILL-FWD",
            "-A TWILL-FWD -s 10.244.0.0/16 -m comment --comment \"twill forward\" -j ACCEPT",
            "-A TWILL-FWD -d 10.244.0.0/16 -m comment --comment \"twill forward\" -j ACCEPT",
        ]
    );
    assert_eq!(jumps(&c.nodes[0], "nat", "twill masq"), 1);
    assert_eq!(jumps(&c.nodes[0], "filter", "twill forward"), 1);

    // Outside the network: the node's address. Inside: the pod's own.
    count_icmp(&outside, &[&n1, "10.244.0.0/16"]);
    assert!(
        ping_from_pod(&c.nodes[0], OUTSIDE_IP),
        "pod 1 reaches the outside host"
    );
    assert!(
        icmp_from(&outside, &n1) >= 1,
        "the outside host saw node 1's address"
    );
    assert_eq!(
        icmp_from(&outside, "10.244.0.0/16"),
        0,
        "and no pod address"
    );
    count_icmp(&c.nodes[1].pod_ns, &[&pod1, &n1]);
    assert!(ping_from_pod(&c.nodes[0], &pod2));
    assert!(
        icmp_from(&c.nodes[1].pod_ns, &pod1) >= 1,
        "pod 2 saw pod 1's own address"
    );
    assert_eq!(icmp_from(&c.nodes[1].pod_ns, &n1), 0, "not node 1's");

    // Deleted rules and jumps come back within the resync period.
    c.nodes[0].iptables(&["-t", "nat", "-F", "TWILL-POSTRTG"]);
    c.nodes[0].iptables(&[
        "-t",
        "filter",
        "-D",
        "FORWARD",
        "-m",
        "comment",
        "--comment",
        "twill forward",
        "-j",
        "TWILL-FWD",
    ]);
    wait_for("the rules repaired", Duration::from_secs(10), || {
        (chain(&c.nodes[0], "nat", "TWILL-POSTRTG") == expected
            && jumps(&c.nodes[0], "filter", "twill forward") == 1)
            .then_some(())
    });
    assert!(c.nodes[0].log_text().contains("repaired"));

    // FORWARD's policy at DROP, as Docker sets it: the forward rules carry the overlay.
    for node in &c.nodes {
        node.iptables(&["-P", "FORWARD", "DROP"]);
    }
    assert!(
        ping_from_pod(&c.nodes[0], &pod2),
        "pods reach each other through DROP"
    );
    assert!(ping_from_pod(&c.nodes[1], &pod1));

    // --ip-masq-fully-random-disable: the same rules, MASQUERADE without --random-fully.
    assert_eq!(c.nodes[1].stop(), Some(0));
    c.start_twill_with(
        2,
        &[
            "--iface",
            "eth0",
            "--ip-masq",
            "--iptables-resync",
            "1",
            "--ip-masq-fully-random-disable",
        ],
    );
    let masquerades = |node: &Node| -> Vec<String> {
        chain(node, "nat", "TWILL-POSTRTG")
            .into_iter()
            .filter(|r| r.contains("-j MASQUERADE"))
            .collect()
    };
    let rules = wait_for(
        "node 2's rules without --random-fully",
        Duration::from_secs(30),
        || {
            let rules = masquerades(&c.nodes[1]);
            (rules.len() == 2 && rules.iter().all(|r| r.ends_with("-j MASQUERADE")))
                .then_some(rules)
        },
    );
    assert!(
        !rules.iter().any(|r| r.contains("random-fully")),
        "{rules:?}"
    );
    assert!(
        masquerades(&c.nodes[0])
            .iter()
            .all(|r| r.ends_with("--random-fully"))
    );

    // twill again without the flags: its chains and jumps go, subnet.env says so, and
    // the DROP policy now stops the overlay on node 1 (the rules were what let it in).
    assert_eq!(c.nodes[0].stop(), Some(0));
    assert_eq!(
        jumps(&c.nodes[0], "nat", "twill masq"),
        1,
        "SIGTERM leaves the rules"
    );
    c.start_twill_with(1, &["--iface", "eth0", "--iptables-forward-rules=false"]);
    wait_for("node 1's rules removed", Duration::from_secs(30), || {
        (jumps(&c.nodes[0], "nat", "twill masq") == 0
            && jumps(&c.nodes[0], "filter", "twill forward") == 0
            && chain(&c.nodes[0], "nat", "TWILL-POSTRTG").is_empty()
            && chain(&c.nodes[0], "filter", "TWILL-FWD").is_empty())
        .then_some(())
    });
    wait_for(
        "subnet.env without masquerade",
        Duration::from_secs(30),
        || {
            let env = c.nodes[0].subnet_env()?;
            (env["FLANNEL_IPMASQ"] == "false").then_some(())
        },
    );
    assert!(
        !ping_from_pod(&c.nodes[1], &pod1),
        "with DROP and no forward rules, node 1 forwards nothing to its pod"
    );
    for node in &c.nodes {
        node.iptables(&["-P", "FORWARD", "ACCEPT"]);
    }
    for (n, code) in c.stop_all_twill() {
        assert_eq!(code, Some(0), "twill on node {n} exits 0");
    }
}
