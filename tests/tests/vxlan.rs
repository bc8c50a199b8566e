//! End to end: three nodes on the vxlan backend, a real etcd, the real twill binary.

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_e2e::{Cluster, UNDERLAY, wait_for};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn is_mac(s: &str) -> bool {
    s.len() == 17
        && s.split(':')
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
}

/// The lease value of node `n` by its public IP: (key, parsed value).
fn lease_of(c: &Cluster, ip: &str) -> (String, Value) {
    c.leases()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                serde_json::from_str::<Value>(&v).expect("lease value is JSON"),
            )
        })
        .find(|(_, v)| v["PublicIP"] == ip)
        .unwrap_or_else(|| panic!("no lease with PublicIP {ip}"))
}

/// Put the vxlan config, start twill on every node, wire the pods, wait for the mesh.
fn start_vxlan(c: &mut Cluster) {
    c.put_config(CONFIG);
    for k in 1..=c.nodes.len() {
        c.start_twill(k);
    }
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
}

/// SIGTERM twill everywhere; every one exits 0.
fn stop_cleanly(c: &mut Cluster) {
    for (n, code) in c.stop_all_twill() {
        assert_eq!(code, Some(0), "twill on node {n} exits 0");
    }
}

#[test]
fn vxlan_cluster_end_to_end() {
    let mut c = Cluster::new(3);
    c.put_config(CONFIG);
    for k in 1..=3 {
        c.start_twill(k);
    }
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));

    // Leases: flannel's exact fields and types, a 24 h TTL, and subnet.env matching.
    let leases = c.leases();
    assert_eq!(leases.len(), 3, "one lease per node: {leases:?}");
    for node in &c.nodes {
        let (key, v) = lease_of(&c, &node.ip());
        let raw = &leases[&key];
        let mac = v["BackendData"]["VtepMAC"].as_str().unwrap_or_default();
        assert_eq!(
            raw,
            &format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#,
                node.ip()
            ),
            "the value is byte for byte what flannel writes"
        );
        let obj = v.as_object().expect("lease is an object");
        let fields: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            BTreeSet::from(["PublicIP", "PublicIPv6", "BackendType", "BackendData"]),
            "{v}"
        );
        assert!(obj["PublicIPv6"].is_null());
        assert_eq!(obj["BackendType"], "vxlan");
        let data = obj["BackendData"]
            .as_object()
            .expect("BackendData is an object");
        assert_eq!(data.len(), 2, "{v}");
        assert_eq!(data["VNI"], 1);
        assert!(data["VtepMAC"].as_str().is_some_and(is_mac), "{v}");
        assert_eq!(
            key,
            node.subnet().replace('/', "-"),
            "key is the subnet in flannel's form"
        );
        let ttl = c.lease_ttl(&key).expect("lease has a TTL");
        assert!(
            (86_000..=86_400).contains(&ttl),
            "TTL {ttl}s is flannel's 24 h"
        );
        let env = node.subnet_env().expect("subnet.env");
        assert_eq!(env["FLANNEL_NETWORK"], "10.244.0.0/16");
        assert_eq!(env["FLANNEL_MTU"], "1450", "veth MTU 1500 − 50");
        assert_eq!(env["FLANNEL_IPMASQ"], "false");
        assert!(env["FLANNEL_SUBNET"].ends_with(".1/24"));

        // Kernel objects as flannel makes them.
        let link = node.exec(&["ip", "-d", "link", "show", "flannel.1"]);
        for want in [
            "vxlan id 1",
            &format!("local {}", node.ip()),
            "dstport 8472",
            "nolearning",
            "mtu 1450",
        ] {
            assert!(link.contains(want), "flannel.1 lacks {want:?}:\n{link}");
        }
        assert!(
            link.contains(data["VtepMAC"].as_str().expect("mac")),
            "device MAC is the lease's VtepMAC"
        );
        let addr = node.exec(&["ip", "-4", "addr", "show", "dev", "flannel.1"]);
        let own_net = node.subnet().replace("/24", "/32");
        assert!(addr.contains(&own_net), "flannel.1 has {own_net}:\n{addr}");
    }
    for node in &c.nodes {
        for peer in c.nodes.iter().filter(|p| p.n != node.n) {
            let (_, v) = lease_of(&c, &peer.ip());
            let mac = v["BackendData"]["VtepMAC"]
                .as_str()
                .expect("mac")
                .to_owned();
            let peer_net = peer.subnet();
            let gw = peer_net.split('/').next().expect("addr").to_owned();
            let routes = node.exec(&["ip", "route", "show", &peer_net]);
            assert!(
                routes.contains(&format!(
                    "{peer_net} via {gw} dev flannel.1 proto 167 onlink"
                )),
                "node {} route to {peer_net}: {routes}",
                node.n
            );
            let neigh = node.exec(&["ip", "neigh", "show", "dev", "flannel.1", &gw]);
            assert!(
                neigh.contains(&mac) && neigh.contains("PERMANENT"),
                "neighbour {gw}: {neigh}"
            );
            let fdb = node.exec(&["bridge", "fdb", "show", "dev", "flannel.1"]);
            assert!(
                fdb.contains(&format!("{mac} dst {} self permanent", peer.ip())),
                "fdb for {mac}: {fdb}"
            );
        }
    }

    // The HTTP API tells the same story: ready, the subnet, every peer programmed.
    let node1 = &c.nodes[0];
    assert_eq!(node1.api_get("/readyz").0, 200);
    let (code, status) = node1.api_get("/v1/status");
    assert_eq!(code, 200, "{status}");
    let status: Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(status["subnet"], node1.subnet(), "{status}");
    assert_eq!(status["backend_type"], "vxlan", "{status}");
    let (_, peers) = node1.api_get("/v1/peers");
    let peers: Value = serde_json::from_str(&peers).expect("peers JSON");
    let peers = peers["peers"]
        .as_array()
        .cloned()
        .expect("/v1/peers is {\"peers\": [...]}");
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(
        peers.iter().all(|p| p["state"] == "programmed"),
        "{peers:?}"
    );
    let (_, metrics) = node1.api_get("/metrics");
    assert!(metrics.contains("twill_leases_known 3"), "{metrics}");
    let routes_replaced: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"twill_netlink_operations_total{kind="replace_route"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no replace_route count:\n{metrics}"));
    assert!(
        routes_replaced >= 2.0,
        "two peers, a route each: {routes_replaced}"
    );
    wait_for("the watch-connect counter", Duration::from_secs(15), || {
        let (_, metrics) = node1.api_get("/metrics");
        metrics
            .lines()
            .any(|l| l.starts_with("twill_etcd_watch_connects_total ") && !l.ends_with(" 0"))
            .then_some(())
    });
    assert_eq!(node1.api_get("/nope").0, 404);
    let bin = twill_e2e::twill_bin();
    let summary = node1.exec(&[bin.to_str().expect("utf-8 path"), "status"]);
    assert!(
        summary.contains(&format!("subnet {}", node1.subnet())),
        "{summary}"
    );
    assert!(summary.contains("2 peers, 2 programmed"), "{summary}");
    for peer in &c.nodes[1..] {
        assert!(summary.contains(&peer.subnet()), "{summary}");
    }
    let down = twill_e2e::run(&[
        "ip",
        "netns",
        "exec",
        &c.nodes[0].pod_ns,
        bin.to_str().expect("utf-8"),
        "status",
    ]);
    assert!(!down.status.success(), "status without a node fails");
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("cannot reach the twill API"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );

    // Restart node 2 under a running ping: same subnet, same MAC, traffic keeps flowing.
    // The kernel forwards while no twill runs, so what this shows is that stopping
    // removes nothing and starting again flushes nothing.
    let (key2, before) = lease_of(&c, &format!("{UNDERLAY}.2"));
    let ping = c.start_ping(1, 2, 80);
    thread::sleep(Duration::from_secs(2));
    assert_eq!(c.nodes[1].stop(), Some(0), "twill exits 0 on SIGTERM");
    let link_after_stop = c.nodes[1].exec(&["ip", "link", "show", "flannel.1"]);
    assert!(
        link_after_stop.contains("flannel.1"),
        "SIGTERM leaves the device in place"
    );
    thread::sleep(Duration::from_secs(1));
    std::fs::write(&c.nodes[1].log, "").expect("truncate node 2 log");
    c.start_twill(2);
    let (_, received, summary) = ping.finish();
    assert!(
        received >= 78,
        "ping across the restart lost {} of 80 packets:\n{summary}",
        80 - received
    );
    wait_for(
        "node 2 to reuse its lease after the restart",
        Duration::from_secs(30),
        || {
            c.nodes[1]
                .log_text()
                .contains("reusing our lease")
                .then_some(())
        },
    );
    assert_eq!(c.leases().len(), 3, "the restart took no second lease");
    let (key2_after, after) = lease_of(&c, &format!("{UNDERLAY}.2"));
    assert_eq!(key2, key2_after, "same subnet after restart");
    assert_eq!(
        before["BackendData"]["VtepMAC"], after["BackendData"]["VtepMAC"],
        "same VTEP MAC after restart"
    );
    c.assert_full_mesh(Duration::from_secs(20));

    // Restart again after someone removed node 2's device and node 1's objects for it:
    // a restart re-programs whatever is missing, with the same MAC.
    let mac2 = before["BackendData"]["VtepMAC"]
        .as_str()
        .expect("mac")
        .to_owned();
    assert_eq!(c.nodes[1].stop(), Some(0));
    c.nodes[1].exec(&["ip", "link", "del", "flannel.1"]);
    assert_eq!(c.nodes[0].stop(), Some(0));
    let net2 = c.nodes[1].subnet();
    c.nodes[0].exec(&["ip", "route", "del", &net2]);
    c.nodes[0].exec(&[
        "bridge",
        "fdb",
        "del",
        &mac2,
        "dev",
        "flannel.1",
        "dst",
        &format!("{UNDERLAY}.2"),
    ]);
    assert!(
        !c.pod_ping(1, 2),
        "pod 2 is cut off once its objects are gone"
    );
    c.start_twill(1);
    c.start_twill(2);
    c.assert_full_mesh(Duration::from_secs(30));
    let link2 = c.nodes[1].exec(&["ip", "-d", "link", "show", "flannel.1"]);
    assert!(
        link2.contains(&mac2),
        "flannel.1 recreated with the lease's MAC {mac2}:\n{link2}"
    );
    assert!(
        c.nodes[0]
            .exec(&["ip", "route", "show", &net2])
            .contains("dev flannel.1 proto 167 onlink"),
        "route to node 2 re-added"
    );

    // Stop node 3 and delete its lease: the others remove its route, neighbour and FDB entry.
    let (key3, v3) = lease_of(&c, &format!("{UNDERLAY}.3"));
    let mac3 = v3["BackendData"]["VtepMAC"]
        .as_str()
        .expect("mac")
        .to_owned();
    let net3 = c.nodes[2].subnet();
    assert_eq!(c.nodes[2].stop(), Some(0));
    let deleted = Instant::now();
    c.etcdctl(&["del", &format!("{}/subnets/{key3}", c.prefix)]);
    for node in &c.nodes[..2] {
        wait_for(
            &format!("node {} to remove {net3}", node.n),
            Duration::from_secs(20),
            || {
                let routes = node.exec(&["ip", "route", "show", &net3]);
                let fdb = node.exec(&["bridge", "fdb", "show", "dev", "flannel.1"]);
                let gw = net3.split('/').next().expect("addr").to_owned();
                let neigh = node.exec(&["ip", "neigh", "show", "dev", "flannel.1", &gw]);
                (routes.trim().is_empty() && !fdb.contains(&mac3) && neigh.trim().is_empty())
                    .then_some(())
            },
        );
    }
    let took = deleted.elapsed();
    eprintln!("a deleted peer's objects gone from both nodes {took:.2?} after the delete");
    assert!(took < Duration::from_secs(3), "removal took {took:?}");
    // The metric counts what happened: one removal on each remaining node.
    for node in &c.nodes[..2] {
        assert_eq!(
            node.metric(r#"twill_lease_events_total{kind="removed"}"#),
            1.0,
            "node {}: one removal",
            node.n
        );
    }
    assert!(
        c.pod_ping(1, 2),
        "the remaining nodes still reach each other"
    );
    for k in [1, 2] {
        assert_eq!(
            c.nodes[k - 1].exited(),
            None,
            "twill on node {k} is still running"
        );
    }
}

/// Our own lease deleted by hand (or run out during a long etcd outage) is taken back:
/// the same subnet and value (VTEP MAC), under a TTL again; twill keeps running and the
/// pods keep reaching each other. A value changed under us is written back. (flannel
/// exits in both cases, flannel #904, #1240.)
#[test]
fn a_deleted_or_changed_own_lease_is_taken_back() {
    let mut c = Cluster::new(2);
    start_vxlan(&mut c);
    let ip = c.nodes[0].ip();
    let (key, value) = lease_of(&c, &ip);
    let full_key = format!("{}/subnets/{key}", c.prefix);
    let env_before = std::fs::read_to_string(&c.nodes[0].subnet_file).expect("subnet.env");
    const RECLAIMS: &str = "twill_lease_reclaims_total";
    let ping = c.start_ping(2, 1, 60);

    let started = Instant::now();
    c.etcdctl(&["del", &full_key]);
    wait_for(
        "the deleted lease to be re-created",
        Duration::from_secs(20),
        || {
            let (k, v) = lease_of(&c, &ip);
            (k == key && v == value).then_some(())
        },
    );
    println!(
        "own lease re-created {:.2} s after its deletion",
        started.elapsed().as_secs_f64()
    );
    c.nodes[0].wait_metric(RECLAIMS, 1.0, Duration::from_secs(10));
    let ttl = c.lease_ttl(&key).expect("the re-created lease has a TTL");
    assert!(ttl > 86_000, "a fresh 24 h TTL, not {ttl} s");

    // Another VTEP MAC written under our key: ours comes back.
    let mut forged = value.clone();
    forged["BackendData"]["VtepMAC"] = Value::from("02:00:00:00:00:99");
    c.etcdctl(&["put", &full_key, &forged.to_string()]);
    wait_for("our value written back", Duration::from_secs(20), || {
        let (k, v) = lease_of(&c, &ip);
        (k == key && v == value).then_some(())
    });
    c.nodes[0].wait_metric(RECLAIMS, 2.0, Duration::from_secs(10));

    let (sent, received, summary) = ping.finish();
    println!("pod ping across both: {summary}");
    assert!(received + 2 >= sent, "traffic kept flowing: {summary}");
    assert_eq!(c.nodes[0].exited(), None, "twill keeps running");
    assert_eq!(
        std::fs::read_to_string(&c.nodes[0].subnet_file).expect("subnet.env"),
        env_before,
        "subnet.env untouched"
    );
    assert!(
        c.nodes[0].log_text().contains("re-created it (same subnet"),
        "the log says so"
    );
    c.assert_full_mesh(Duration::from_secs(10));
    stop_cleanly(&mut c);
}

/// A hand-written key covering the whole network (`10.244.0.0-16` with SubnetLen 24) is
/// no lease: it blocks no node from joining (before: every new node exited "out of
/// subnets") and no backend sees it; it stays in the store, untouched.
#[test]
fn a_key_covering_the_network_blocks_no_join() {
    let mut c = Cluster::new(2);
    c.put_config(CONFIG);
    let hostile = format!("{}/subnets/10.244.0.0-16", c.prefix);
    let value = r#"{"PublicIP":"192.168.77.66","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:66"}}"#;
    c.etcdctl(&["put", &hostile, value]);
    for k in 1..=2 {
        c.start_twill(k);
    }
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
    for node in &mut c.nodes {
        assert_eq!(node.exited(), None, "twill runs on {}", node.ns);
        assert!(
            node.log_text()
                .contains("ignoring a key that is no /24 lease"),
            "the log names the key:\n{}",
            node.log_tail()
        );
        let route = node.exec(&["ip", "route", "show", "10.244.0.0/16"]);
        assert!(route.trim().is_empty(), "no route for the key: {route}");
    }
    assert!(c.leases().contains_key("10.244.0.0-16"), "the key stays");
    stop_cleanly(&mut c);
}

/// Leases no node may program are skipped with why, on the real binary: PublicIP
/// loopback, this node's own PublicIP under another subnet, BackendData over the cap.
/// Nothing is routed for them, and the cluster keeps working.
#[test]
fn hostile_lease_values_are_skipped_with_why() {
    let mut c = Cluster::new(2);
    start_vxlan(&mut c);
    let put = |subnet: &str, value: &str| {
        c.etcdctl(&["put", &format!("{}/subnets/{subnet}", c.prefix), value]);
    };
    let lease = |ip: &str, data: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{data}}}"#
        )
    };
    let mac = r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:42"}"#;
    let big = format!(
        r#"{{"VNI":1,"VtepMAC":"02:00:00:00:00:43","Pad":"{}"}}"#,
        "x".repeat(5000)
    );
    put("10.244.200.0-24", &lease("127.0.0.1", mac));
    put("10.244.201.0-24", &lease(&c.nodes[0].ip(), mac));
    put("10.244.202.0-24", &lease("192.168.77.42", &big));
    let node = &c.nodes[0];
    wait_for(
        "the skip reasons in node 1's log",
        Duration::from_secs(20),
        || {
            let log = node.log_text();
            [
                r#"reason="public_ip""#,
                r#"reason="our_public_ip""#,
                r#"reason="backend_data_too_large""#,
            ]
            .iter()
            .all(|r| log.contains(r))
            .then_some(())
        },
    );
    for dst in ["10.244.200.0/24", "10.244.201.0/24", "10.244.202.0/24"] {
        let route = node.exec(&["ip", "route", "show", dst]);
        assert!(route.trim().is_empty(), "node 1 routes {dst}: {route}");
    }
    // Counted by reason, and listed with it.
    for reason in ["public_ip", "our_public_ip", "backend_data_too_large"] {
        let series = format!(r#"twill_leases_invalid{{reason="{reason}"}}"#);
        node.wait_metric(&series, 1.0, Duration::from_secs(10));
    }
    let (code, body) = node.api_get("/v1/leases");
    assert_eq!(code, 200);
    let listed: Value = serde_json::from_str(&body).expect("JSON");
    let reason_of = |subnet: &str| {
        listed["leases"]
            .as_array()
            .expect("leases")
            .iter()
            .find(|l| l["subnet"] == subnet)
            .map(|l| l["invalid"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(reason_of("10.244.200.0/24"), "public_ip");
    assert_eq!(reason_of("10.244.201.0/24"), "our_public_ip");
    assert_eq!(reason_of("10.244.202.0/24"), "backend_data_too_large");
    for dst in ["10.244.200.0/24", "10.244.202.0/24"] {
        let route = c.nodes[1].exec(&["ip", "route", "show", dst]);
        assert!(route.trim().is_empty(), "node 2 routes {dst}: {route}");
    }
    c.assert_full_mesh(Duration::from_secs(10));
    stop_cleanly(&mut c);
}

/// flannel's reservations on etcd v3 (flannel #1329): a lease key without a TTL that
/// holds this node's PublicIP is its reservation. twill takes that subnet, writes its
/// attributes without attaching a TTL, never deletes it, and leaves it without a TTL
/// across a restart.
#[test]
fn a_reservation_is_used_and_stays_without_a_ttl() {
    let mut c = Cluster::new(2);
    c.put_config(CONFIG);
    let ip = c.nodes[0].ip();
    let key = "10.244.77.0-24";
    c.etcdctl(&[
        "put",
        &format!("{}/subnets/{key}", c.prefix),
        &format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan"}}"#),
    ]);
    for k in 1..=2 {
        c.start_twill(k);
    }
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
    assert_eq!(c.nodes[0].subnet(), "10.244.77.0/24", "the reserved subnet");
    let (k, v) = lease_of(&c, &ip);
    assert_eq!(k, key);
    assert!(
        is_mac(v["BackendData"]["VtepMAC"].as_str().unwrap_or("")),
        "{v}"
    );
    assert_eq!(c.lease_ttl(key), None, "still a reservation");
    assert_eq!(c.nodes[0].stop(), Some(0));
    c.start_twill(1);
    c.assert_full_mesh(Duration::from_secs(30));
    assert_eq!(c.nodes[0].subnet(), "10.244.77.0/24");
    assert_eq!(c.lease_ttl(key), None, "no TTL after a restart either");
    assert_eq!(c.leases().len(), 2, "no second lease for node 1");
    stop_cleanly(&mut c);
}

/// Two leases announcing one PublicIP: both stay programmed (neither evicts the other),
/// each shows the conflict as its error in /v1/peers, and when one goes the other is
/// plainly programmed again.
#[test]
fn two_peers_on_one_public_ip_are_both_programmed_and_flagged() {
    let mut c = Cluster::new(2);
    start_vxlan(&mut c);
    let put = |subnet: &str, mac: &str| {
        let value = format!(
            r#"{{"PublicIP":"192.168.77.50","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        );
        c.etcdctl(&["put", &format!("{}/subnets/{subnet}", c.prefix), &value]);
    };
    put("10.244.210.0-24", "02:00:00:00:02:10");
    put("10.244.211.0-24", "02:00:00:00:02:11");
    let node = &c.nodes[0];
    let peer = |subnet: &str| -> Value {
        let (_, body) = node.api_get("/v1/peers");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v["peers"]
            .as_array()
            .and_then(|l| l.iter().find(|p| p["subnet"] == subnet).cloned())
            .unwrap_or(Value::Null)
    };
    wait_for("both peers flagged", Duration::from_secs(20), || {
        ["10.244.210.0/24", "10.244.211.0/24"]
            .iter()
            .all(|s| {
                let p = peer(s);
                p["state"] == "error"
                    && p["last_error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("is also announced by"))
            })
            .then_some(())
    });
    for dst in ["10.244.210.0/24", "10.244.211.0/24"] {
        let route = node.exec(&["ip", "route", "show", dst]);
        assert!(
            route.contains("dev flannel.1"),
            "{dst} still programmed: {route}"
        );
    }
    c.etcdctl(&["del", &format!("{}/subnets/10.244.211.0-24", c.prefix)]);
    wait_for(
        "the other one programmed again",
        Duration::from_secs(20),
        || (peer("10.244.210.0/24")["state"] == "programmed").then_some(()),
    );
    c.assert_full_mesh(Duration::from_secs(10));
    stop_cleanly(&mut c);
}

/// A peer's lease that runs out (etcd deletes it when its TTL ends, as when a node
/// dies and stops renewing) is removed at daemon level: route, neighbour and FDB entry
/// go, `/v1/peers` forgets it. The lease here has a 5 s etcd lease instead of 24 h.
#[test]
fn a_peer_lease_that_runs_out_is_removed() {
    let mut c = Cluster::new(1);
    start_vxlan(&mut c);
    let granted = c.etcdctl(&["lease", "grant", "5"]);
    // "lease 694d7c1fd2b6a60b granted with TTL(5s)"
    let id = granted
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("lease id in {granted:?}"))
        .to_owned();
    let put_at = Instant::now();
    c.etcdctl(&[
        "put",
        &format!("--lease={id}"),
        &format!("{}/subnets/10.244.200.0-24", c.prefix),
        r#"{"PublicIP":"192.168.77.200","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:c8:01"}}"#,
    ]);
    gone_after_programmed(&c.nodes[0], put_at, "etcd");
    stop_cleanly(&mut c);
}

/// The peer 10.244.200.0/24 at 192.168.77.200, whose lease was written at `put_at` with
/// a 5 s TTL: programmed on `node` (route and FDB entry), then gone (route, FDB entry
/// and `/v1/peers`) once the lease runs out; the time is printed.
fn gone_after_programmed(node: &twill_e2e::Node, put_at: Instant, store: &str) {
    wait_for("the peer programmed", Duration::from_secs(10), || {
        node.exec(&["ip", "route", "show", "10.244.200.0/24"])
            .contains("dev flannel.1")
            .then_some(())
    });
    assert!(
        node.exec(&["bridge", "fdb", "show", "dev", "flannel.1"])
            .contains("dst 192.168.77.200")
    );
    wait_for("the expired peer removed", Duration::from_secs(30), || {
        let route = node.exec(&["ip", "route", "show", "10.244.200.0/24"]);
        let fdb = node.exec(&["bridge", "fdb", "show", "dev", "flannel.1"]);
        let (_, peers) = node.api_get("/v1/peers");
        (route.trim().is_empty()
            && !fdb.contains("192.168.77.200")
            && !peers.contains("10.244.200.0"))
        .then_some(())
    });
    let gone = put_at.elapsed().as_secs_f64();
    println!(
        "{store}: a peer lease with a 5 s TTL gone from the node {gone:.1} s after it was written"
    );
    // (etcd's TTL starts at `lease grant`, a moment before the put.)
    assert!(
        gone >= 4.5,
        "{store}: removed before its TTL ran out ({gone:.1} s)"
    );
}

/// The same on the embedded store (audit G-1): a node on `--store embedded` and a peer
/// lease with a 5 s TTL written into the same SQLite file by another writer, as a node
/// sharing the file writes it; the running daemon removes the peer once it runs out.
#[test]
fn a_peer_lease_that_runs_out_in_the_embedded_store_is_removed() {
    use twill_store::LeaseStore;
    let mut c = Cluster::new(1);
    let path = c.dir().join("leases.db");
    let path_arg = path.display().to_string();
    let store = twill_store::EmbeddedStore::open_creating(&path, twill_store::DEFAULT_PREFIX)
        .expect("create the embedded store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(store.put_config(CONFIG))
        .expect("put the config");
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
    wait_for("node 1 ready", Duration::from_secs(30), || {
        (c.nodes[0].api_get("/readyz").0 == 200).then_some(())
    });
    let attrs = twill_core::LeaseAttrs {
        public_ip: "192.168.77.200".parse().expect("IP"),
        backend_type: "vxlan".into(),
        backend_data: Some(r#"{"VNI":1,"VtepMAC":"0e:00:00:00:c8:01"}"#.into()),
    };
    let put_at = Instant::now();
    let created = runtime
        .block_on(store.create_lease(
            "10.244.200.0/24".parse().expect("subnet"),
            &attrs,
            Duration::from_secs(5),
        ))
        .expect("write the peer's lease");
    assert!(
        matches!(created, twill_store::Created::Won(_)),
        "{created:?}"
    );
    gone_after_programmed(&c.nodes[0], put_at, "embedded");
    stop_cleanly(&mut c);
}

/// Audit G-6, `--public-ip` on vxlan for a node behind NAT: the lease publishes the
/// public IP and the peer's FDB entry sends to it; flannel.1 sends from the interface
/// address, since the kernel cannot send from an address the node does not have; with
/// the NAT in place, the pods reach each other both ways.
#[test]
fn a_public_ip_is_published_while_the_tunnel_uses_the_interface_address() {
    let mut c = Cluster::new(2);
    c.put_config(CONFIG);
    let public = "203.0.113.7";
    c.start_twill_with(1, &["--iface", "eth0", "--public-ip", public]);
    c.start_twill(2);
    c.wire_pods();
    let (_, lease) = lease_of(&c, public);
    assert_eq!(lease["BackendType"], "vxlan");
    let mac = lease["BackendData"]["VtepMAC"]
        .as_str()
        .expect("VtepMAC")
        .to_owned();
    // The public IP is not node 1's: flannel.1 sends from the interface address
    // (sending from the public IP fails in the kernel).
    let link = c.nodes[0].exec(&["ip", "-d", "link", "show", "flannel.1"]);
    assert!(
        link.contains(&format!("local {} ", c.nodes[0].ip())),
        "flannel.1 sends from the interface address:\n{link}"
    );
    wait_for(
        "node 2's FDB entry for node 1",
        Duration::from_secs(20),
        || {
            let fdb = c.nodes[1].exec(&["bridge", "fdb", "show", "dev", "flannel.1"]);
            fdb.lines()
                .any(|l| l.starts_with(&mac) && l.contains(&format!("dst {public} ")))
                .then_some(())
        },
    );
    // The NAT, played by node 2's own OUTPUT chain: the public IP maps to node 1.
    c.nodes[1].iptables(&[
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-d",
        public,
        "-p",
        "udp",
        "--dport",
        "8472",
        "-j",
        "DNAT",
        "--to-destination",
        &c.nodes[0].ip(),
    ]);
    c.assert_full_mesh(Duration::from_secs(20));
    for node in &mut c.nodes {
        assert_eq!(node.stop(), Some(0));
    }
}

/// Audit F-4: the counters against what really happened, counted by the test itself.
/// With the resync an hour away and the probes off, nothing but the test's own writes
/// moves them: five peer leases written one at a time (each waited for), then two
/// deleted. Every counter moves by exactly what the test did, the histogram of plugin
/// call times counts the same calls, and the gauges agree with the kernel's objects.
#[test]
fn the_counters_move_by_exactly_what_happened() {
    let mut c = Cluster::new(1);
    c.put_config(CONFIG);
    c.start_twill_with(
        1,
        &[
            "--iface",
            "eth0",
            "--resync-interval",
            "3600",
            "--peer-probe-interval",
            "0",
        ],
    );
    let node = &c.nodes[0];
    wait_for("node 1 ready", Duration::from_secs(30), || {
        (node.api_get("/readyz").0 == 200).then_some(())
    });
    const COUNTERS: [&str; 10] = [
        r#"twill_netlink_operations_total{kind="replace_route"}"#,
        r#"twill_netlink_operations_total{kind="replace_neighbour"}"#,
        r#"twill_netlink_operations_total{kind="replace_fdb"}"#,
        r#"twill_netlink_operations_total{kind="delete_route"}"#,
        r#"twill_netlink_operations_total{kind="delete_neighbour"}"#,
        r#"twill_netlink_operations_total{kind="delete_fdb"}"#,
        r#"twill_lease_events_total{kind="added"}"#,
        r#"twill_lease_events_total{kind="removed"}"#,
        r#"twill_plugin_calls_total{plugin="vxlan",function="on-leases"}"#,
        r#"twill_plugin_call_duration_seconds_count{function="on-leases"}"#,
    ];
    // Before the first event a counter's series may not exist yet: that is its 0.
    // Afterwards every series must be there (`metric` fails on a missing one).
    let before: Vec<f64> = COUNTERS
        .iter()
        .map(|s| node.metric_opt(s).unwrap_or(0.0))
        .collect();
    // Every series of the netlink error counter, whatever its kind: none may appear
    // or move.
    let errors = || -> Vec<String> {
        let (_, text) = node.api_get("/metrics");
        text.lines()
            .filter(|l| l.starts_with("twill_netlink_errors_total"))
            .map(str::to_owned)
            .collect()
    };
    let errors_before = errors();
    let key = |k: u8| format!("{}/subnets/10.244.{}.0-24", c.prefix, 200 + k);
    let peer_route = |k: u8| format!("10.244.{}.0/24", 200 + k);
    for k in 0..5u8 {
        c.etcdctl(&[
            "put",
            &key(k),
            &format!(
                r#"{{"PublicIP":"192.168.77.{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:c8:0{k}"}}}}"#,
                200 + k
            ),
        ]);
        wait_for("the peer programmed", Duration::from_secs(10), || {
            node.exec(&["ip", "route", "show", &peer_route(k)])
                .contains("dev flannel.1")
                .then_some(())
        });
    }
    for k in 0..2u8 {
        c.etcdctl(&["del", &key(k)]);
        wait_for("the peer removed", Duration::from_secs(10), || {
            node.exec(&["ip", "route", "show", &peer_route(k)])
                .trim()
                .is_empty()
                .then_some(())
        });
    }
    // Each event's call ends before its route shows; its counters are bumped right
    // after. Wait for the last one, then read every counter once.
    node.wait_metric(COUNTERS[7], before[7] + 2.0, Duration::from_secs(5));
    let expected = [5.0, 5.0, 5.0, 2.0, 2.0, 2.0, 5.0, 2.0, 7.0, 7.0];
    let moved: Vec<f64> = COUNTERS
        .iter()
        .zip(&before)
        .map(|(s, b)| node.metric(s) - b)
        .collect();
    for ((series, moved), want) in COUNTERS.iter().zip(&moved).zip(expected) {
        println!("{series}: +{moved}");
        assert_eq!(
            *moved, want,
            "{series} moved by {moved}, the test did {want}"
        );
    }
    assert_eq!(errors(), errors_before, "no netlink error");
    let took = node.metric(r#"twill_plugin_call_duration_seconds_sum{function="on-leases"}"#);
    assert!(
        took > 0.0 && took < 7.0 * 2.0,
        "seven on-leases calls took {took} s in all"
    );
    // The gauges against the kernel: three peers left, each with its route, FDB entry
    // and neighbour on flannel.1.
    let routes = node.exec(&["ip", "route", "show", "proto", "167", "dev", "flannel.1"]);
    let fdb = node.exec(&["bridge", "fdb", "show", "dev", "flannel.1"]);
    let neighbours = node.exec(&["ip", "neigh", "show", "dev", "flannel.1"]);
    let count = |text: &str, needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count(&routes, "10.244.2"), 3, "{routes}");
    assert_eq!(count(&fdb, "dst 192.168.77.2"), 3, "{fdb}");
    assert_eq!(
        count(&neighbours, "lladdr 0e:00:00:00:c8"),
        3,
        "{neighbours}"
    );
    assert_eq!(node.metric(r#"twill_peers{state="programmed"}"#), 3.0);
    assert_eq!(node.metric("twill_leases_known"), 4.0);
    stop_cleanly(&mut c);
}
