//! Moving nodes from flanneld to twill in place (docs/operations.md, "Move a node from
//! flanneld to twill"), under a running pod ping.
//!
//! No flanneld can run here (Debian 12 has no flannel package and its Go is too old to
//! build one), so the two nodes are first made exactly as flanneld's vxlan backend
//! leaves a node (`../shared/reference/flannel.md`): its lease in etcd with a 24 h TTL
//! (`{"PublicIP", "PublicIPv6": null, "BackendType": "vxlan", "BackendData": {"VNI",
//! "VtepMAC"}}`), `flannel.1` (VNI 1, dstport 8472, nolearning, the lease's MAC, MTU
//! 1450, the subnet's `.0/32`), per peer a route `via <subnet>.0 dev flannel.1 onlink`
//! (protocol boot), a permanent neighbour and FDB entry, and its subnet.env. Pods are
//! wired from that subnet.env and reach each other through flannel's objects alone.
//!
//! Then twill starts on node 1, later on node 2, while node 1's pod pings node 2's
//! 10 times a second: no ping may be lost; each node keeps its subnet, its VTEP MAC and
//! its `flannel.1` (same ifindex: adopted, not made again), and flannel's routes
//! become twill's (protocol 167).

use std::time::Duration;

use serde_json::Value;
use twill_e2e::{Cluster, path_arg, wait_for};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// Node `k`'s flannel subnet index, MAC and the subnet itself.
fn flannel_node(k: usize) -> (String, String) {
    (
        format!("10.244.{}.0", 10 + k),
        format!("0e:00:00:0f:00:{k:02x}"),
    )
}

/// Make node `k` of `n` as flanneld makes a vxlan node: lease, device, peers' objects,
/// subnet.env.
fn make_flannel_node(c: &Cluster, k: usize, n: usize) {
    let node = &c.nodes[k - 1];
    let (addr, mac) = flannel_node(k);
    let lease = c.etcdctl(&["lease", "grant", "86400"]);
    let id = lease
        .split_whitespace()
        .nth(1)
        .expect("etcdctl lease grant prints the lease ID");
    let value = format!(
        r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#,
        node.ip()
    );
    c.etcdctl(&[
        "put",
        "--lease",
        id,
        &format!("{}/subnets/{addr}-24", c.prefix),
        &value,
    ]);
    let ip = node.ip();
    node.exec(&[
        "ip",
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &ip,
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    node.exec(&[
        "ip",
        "link",
        "set",
        "flannel.1",
        "address",
        &mac,
        "mtu",
        "1450",
    ]);
    node.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{addr}/32"),
        "dev",
        "flannel.1",
    ]);
    node.exec(&["ip", "link", "set", "flannel.1", "up"]);
    for j in (1..=n).filter(|j| *j != k) {
        let (peer, peer_mac) = flannel_node(j);
        let peer_ip = c.nodes[j - 1].ip();
        node.exec(&[
            "ip",
            "neigh",
            "replace",
            &peer,
            "lladdr",
            &peer_mac,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ]);
        node.exec(&[
            "bridge",
            "fdb",
            "replace",
            &peer_mac,
            "dev",
            "flannel.1",
            "dst",
            &peer_ip,
            "self",
            "permanent",
        ]);
        node.exec(&[
            "ip",
            "route",
            "replace",
            &format!("{peer}/24"),
            "via",
            &peer,
            "dev",
            "flannel.1",
            "onlink",
        ]);
    }
    let host = addr.trim_end_matches(".0");
    std::fs::write(
        &node.subnet_file,
        format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={host}.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        ),
    )
    .expect("write flannel's subnet.env");
}

fn ifindex(c: &Cluster, k: usize) -> String {
    c.nodes[k - 1].ifindex("flannel.1")
}

fn lease_value(c: &Cluster, k: usize) -> Value {
    let (addr, _) = flannel_node(k);
    let leases = c.leases();
    let value = leases
        .get(&format!("{addr}-24"))
        .unwrap_or_else(|| panic!("node {k}'s lease {addr}-24 is still there: {leases:?}"));
    serde_json::from_str(value).expect("lease JSON")
}

#[test]
fn flannel_nodes_move_to_twill_one_by_one_without_losing_a_ping() {
    let mut c = Cluster::new(2);
    c.put_config(CONFIG);
    for k in 1..=2 {
        make_flannel_node(&c, k, 2);
    }
    c.wire_pods();
    c.wait_pair(1, 2);
    let before: Vec<String> = (1..=2).map(|k| ifindex(&c, k)).collect();
    for k in 1..=2 {
        let routes = c.nodes[k - 1].exec(&["ip", "route", "show", "dev", "flannel.1"]);
        assert!(
            routes.contains("proto boot") || !routes.contains("proto"),
            "flannel's routes are protocol boot: {routes}"
        );
    }

    let ping = c.start_ping(1, 2, 150);
    std::thread::sleep(Duration::from_secs(2));
    for k in 1..=2 {
        let started = std::time::Instant::now();
        c.start_twill(k);
        wait_for(
            &format!("node {k} ready on twill"),
            Duration::from_secs(30),
            || {
                let (code, _) = c.nodes[k - 1].api_get("/readyz");
                (code == 200).then_some(())
            },
        );
        println!("node {k} ready on twill after {:.2?}", started.elapsed());
        std::thread::sleep(Duration::from_secs(3));
    }
    let (sent, received, summary) = ping.finish();
    println!("ping across both moves: {received}/{sent}");
    assert!(sent >= 140, "{summary}");
    assert_eq!(
        sent, received,
        "no ping lost while the nodes moved: {summary}"
    );

    for k in 1..=2 {
        let (addr, mac) = flannel_node(k);
        let node = &c.nodes[k - 1];
        assert_eq!(
            ifindex(&c, k),
            before[k - 1],
            "node {k}'s flannel.1 was adopted"
        );
        let lease = lease_value(&c, k);
        assert_eq!(
            lease["BackendData"]["VtepMAC"], mac,
            "node {k} kept its VTEP MAC"
        );
        assert_eq!(lease["PublicIP"], node.ip());
        let env = std::fs::read_to_string(&node.subnet_file).expect("subnet.env");
        let host = addr.trim_end_matches(".0");
        assert!(
            env.contains(&format!("FLANNEL_SUBNET={host}.1/24")),
            "{env}"
        );
        let (other, _) = flannel_node(3 - k);
        let route = node.exec(&["ip", "route", "show", &format!("{other}/24")]);
        assert!(
            route.contains("proto 167"),
            "flannel's route is twill's now: {route}"
        );
        let link = node.exec(&["ip", "-d", "link", "show", "flannel.1"]);
        assert!(link.contains(&mac), "{link}");
        assert!(
            node.log_text().contains("holding lease"),
            "{}",
            path_arg(&node.log)
        );
    }
    assert_eq!(c.leases().len(), 2, "no new lease: {:?}", c.leases());
    c.assert_full_mesh(Duration::from_secs(10));
    for k in 1..=2 {
        assert_eq!(c.nodes[k - 1].stop(), Some(0));
    }
}
