//! End to end: the host-gw and directrouting backends on namespace clusters.

use std::time::Duration;

use twill_e2e::{Cluster, wait_for};

fn start_all(c: &mut Cluster) {
    for k in 1..=c.nodes.len() {
        c.start_twill(k);
    }
    c.wire_pods();
}

fn route(c: &Cluster, on: usize, to: usize) -> String {
    c.nodes[on - 1].exec(&["ip", "route", "show", &c.nodes[to - 1].subnet()])
}

/// Every lease value, after checking there is one per node.
fn every_lease(c: &Cluster) -> Vec<String> {
    let leases = c.leases();
    assert_eq!(
        leases.len(),
        c.nodes.len(),
        "one lease per node: {leases:?}"
    );
    leases.into_values().collect()
}

#[test]
fn host_gw_routes_via_peers_and_moves_data() {
    let mut c = Cluster::new(3);
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#);
    start_all(&mut c);
    c.assert_full_mesh(Duration::from_secs(30));
    for on in 1..=3 {
        let env = c.nodes[on - 1].subnet_env().expect("subnet.env");
        assert_eq!(
            env["FLANNEL_MTU"], "1500",
            "host-gw keeps the interface MTU"
        );
        for to in (1..=3).filter(|t| *t != on) {
            let r = route(&c, on, to);
            assert!(
                r.contains(&format!("via {} dev eth0", c.nodes[to - 1].ip())),
                "node {on} route to node {to}: {r}"
            );
        }
        let links = c.nodes[on - 1].exec(&["ip", "-o", "link", "show"]);
        assert!(
            !links.contains("flannel"),
            "host-gw creates no device:\n{links}"
        );
    }
    for lease in every_lease(&c) {
        assert!(
            lease.contains(r#""BackendType":"host-gw""#) && !lease.contains("BackendData"),
            "{lease}"
        );
    }

    // A route someone deletes comes back after a restart.
    assert_eq!(c.nodes[0].stop(), Some(0));
    let net2 = c.nodes[1].subnet();
    c.nodes[0].exec(&["ip", "route", "del", &net2]);
    c.start_twill(1);
    c.assert_full_mesh(Duration::from_secs(30));

    let bps = c.iperf(1, 2, 2, 1);
    assert!(bps > 1e6, "iperf3 between pods moved {bps} bit/s");
}

#[test]
fn host_gw_refuses_a_nat_public_ip() {
    let mut c = Cluster::new(1);
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#);
    c.start_twill_with(1, &["--iface", "eth0", "--public-ip", "203.0.113.7"]);
    // 6: the backend refused (docs/operations.md, "Exit status").
    assert_eq!(c.nodes[0].wait_exit(Duration::from_secs(30)), Some(6));
    let log = c.nodes[0].log_text();
    assert!(
        log.contains("meaning that probably you're on a NAT"),
        "{log}"
    );
}

#[test]
fn host_gw_reports_peers_behind_a_router() {
    // Nodes 1 and 2 share a segment; node 3 is behind the router.
    let mut c = Cluster::segmented(&[2, 1]);
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#);
    start_all(&mut c);
    wait_for("pod 1 to reach pod 2", Duration::from_secs(30), || {
        c.pod_ping(1, 2).then_some(())
    });
    let net3 = c.nodes[2].subnet();
    wait_for(
        "node 1 to report node 3 as not on-link",
        Duration::from_secs(20),
        || {
            let log = c.nodes[0].log_text();
            log.lines()
                .any(|l| {
                    l.contains("peer not programmed")
                        && l.contains(&net3)
                        && l.contains("not on-link")
                        && l.contains("192.168.77.254")
                })
                .then_some(())
        },
    );
    assert!(
        route(&c, 1, 3).trim().is_empty(),
        "no route to the unreachable peer"
    );
    assert_eq!(c.nodes[0].exited(), None, "the daemon goes on");
}

#[test]
fn directrouting_routes_on_link_peers_directly_and_tunnels_the_rest() {
    // Nodes 1, 2 on segment 192.168.77.0/24; nodes 3, 4 on 192.168.78.0/24.
    let mut c = Cluster::segmented(&[2, 2]);
    for config in [
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"directrouting"}}"#,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
    ] {
        c.put_config(config);
        start_all(&mut c);
        c.assert_full_mesh(Duration::from_secs(40));
        for (on, to, direct) in [
            (1, 2, true),
            (3, 4, true),
            (1, 3, false),
            (2, 4, false),
            (4, 1, false),
        ] {
            let r = route(&c, on, to);
            let want = if direct {
                format!("via {} dev eth0", c.nodes[to - 1].ip())
            } else {
                let net = c.nodes[to - 1].subnet();
                format!(
                    "via {} dev flannel.1 proto 167 onlink",
                    net.split('/').next().expect("addr")
                )
            };
            assert!(
                r.contains(&want),
                "[{config}] node {on} → node {to}: want {want:?}, got {r:?}"
            );
        }
        let fdb = c.nodes[0].exec(&["bridge", "fdb", "show", "dev", "flannel.1"]);
        assert!(
            fdb.contains(&format!("dst {} self permanent", c.nodes[2].ip())),
            "vxlan FDB for node 3: {fdb}"
        );
        assert!(
            !fdb.contains(&format!("dst {} ", c.nodes[1].ip())),
            "no FDB for the direct peer: {fdb}"
        );
        for lease in every_lease(&c) {
            assert!(
                lease.contains(r#""BackendType":"vxlan""#),
                "flannel-compatible type: {lease}"
            );
        }
        let bps = c.iperf(1, 3, 2, 1);
        assert!(bps > 1e6, "iperf3 across the router moved {bps} bit/s");
        // A restart keeps the VTEP MAC (the lease says vxlan, the config directrouting).
        let mac_of = |c: &Cluster| {
            let link = c.nodes[2].exec(&["ip", "link", "show", "flannel.1"]);
            link.split("link/ether ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .map(str::to_owned)
        };
        let before = mac_of(&c).expect("flannel.1 has a MAC");
        assert_eq!(c.nodes[2].stop(), Some(0));
        // As after a reboot: the device is gone, only the lease remembers the MAC.
        c.nodes[2].exec(&["ip", "link", "del", "flannel.1"]);
        c.start_twill(3);
        c.assert_full_mesh(Duration::from_secs(30));
        assert_eq!(
            mac_of(&c),
            Some(before),
            "[{config}] same VTEP MAC after a restart"
        );
        // Stop, and clear what this round programmed, so the next round proves itself.
        // Its routes (twill's protocol), subnet.env (so wire_pods waits for the next
        // round's), the leases (so the next round's lease check sees its own) and the
        // pods' addresses (the next round's subnets differ).
        for node in &mut c.nodes {
            assert_eq!(node.stop(), Some(0));
            node.exec(&["ip", "link", "del", "flannel.1"]);
            node.exec(&[
                "ip",
                "route",
                "flush",
                "root",
                "10.244.0.0/16",
                "proto",
                &twill_net::ROUTE_PROTOCOL.to_string(),
            ]);
            let _ = std::fs::remove_file(&node.subnet_file);
            twill_lab::pods::unwire(node.net()).expect("unwire the pod");
        }
        c.etcdctl(&["del", "--prefix", &format!("{}/subnets/", c.prefix)]);
    }
}
