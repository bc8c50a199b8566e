//! A node over time, on the real binary and a real etcd: the periodic resync repairs
//! what was deleted under a running daemon, and the node's own lease is renewed at the
//! margin `--subnet-lease-renew-margin` sets, with a failed renewal retried.

use std::time::{Duration, Instant};

use twill_e2e::{Cluster, ETCD_IP, Node, run, sh, wait_for};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// Wait until `check` holds on `node`, and return how long that took.
fn time_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    wait_for(what, timeout, || check().then_some(()));
    started.elapsed()
}

/// `cmd`'s output in the node's namespace; empty if it fails (flannel.1 is gone).
fn output(node: &Node, cmd: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", &node.ns];
    full.extend_from_slice(cmd);
    String::from_utf8_lossy(&run(&full).stdout).into_owned()
}

/// Node 1's objects for node 2: (its route, its neighbour, its FDB entry) are there.
fn programmed(node: &Node, peer_subnet: &str, peer_vtep: &str, peer_ip: &str) -> [bool; 3] {
    let route = output(node, &["ip", "route", "show", peer_subnet]);
    let neigh = output(node, &["ip", "neigh", "show", "dev", "flannel.1"]);
    let fdb = output(node, &["bridge", "fdb", "show", "dev", "flannel.1"]);
    [
        route.contains("dev flannel.1"),
        neigh
            .lines()
            .any(|l| l.starts_with(&format!("{peer_vtep} "))),
        fdb.lines().any(|l| l.contains(&format!("dst {peer_ip} "))),
    ]
}

fn mac(node: &Node) -> String {
    let out = node.exec(&["cat", "/sys/class/net/flannel.1/address"]);
    out.trim().to_owned()
}

/// With `--resync-interval 2`: a route, neighbour and FDB entry deleted under the
/// running daemon are back within one interval (plus the call), and so is a deleted
/// flannel.1, with its MAC (the one its lease publishes), so the pods reach again.
#[test]
fn the_resync_repairs_what_was_deleted_under_a_running_daemon() {
    let mut c = Cluster::new(2);
    c.put_config(CONFIG);
    c.start_twill_with(1, &["--iface", "eth0", "--resync-interval", "2"]);
    c.start_twill(2);
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
    let (node, peer) = (&c.nodes[0], &c.nodes[1]);
    let peer_subnet = peer.subnet();
    let peer_vtep = peer_subnet.split('/').next().expect("address").to_owned();
    let peer_ip = peer.ip();
    assert_eq!(
        programmed(node, &peer_subnet, &peer_vtep, &peer_ip),
        [true; 3]
    );
    let bound = Duration::from_secs(5);

    node.exec(&["ip", "route", "del", &peer_subnet]);
    node.exec(&["ip", "neigh", "del", &peer_vtep, "dev", "flannel.1"]);
    let fdb = node.exec(&["bridge", "fdb", "show", "dev", "flannel.1"]);
    let mac_of_peer = fdb
        .lines()
        .find(|l| l.contains(&format!("dst {peer_ip} ")))
        .and_then(|l| l.split_whitespace().next())
        .expect("the peer's FDB entry")
        .to_owned();
    node.exec(&[
        "bridge",
        "fdb",
        "del",
        &mac_of_peer,
        "dev",
        "flannel.1",
        "dst",
        &peer_ip,
    ]);
    assert_eq!(
        programmed(node, &peer_subnet, &peer_vtep, &peer_ip),
        [false; 3],
        "all three deleted"
    );
    let took = time_until("the resync's repair", Duration::from_secs(20), || {
        programmed(node, &peer_subnet, &peer_vtep, &peer_ip) == [true; 3]
    });
    eprintln!("route, neighbour and FDB entry repaired after {took:.2?} (resync every 2 s)");
    assert!(
        took < bound,
        "repaired after {took:?}, not within {bound:?}"
    );

    let mac_before = mac(node);
    node.exec(&["ip", "link", "del", "flannel.1"]);
    let took = time_until("flannel.1 made again", Duration::from_secs(20), || {
        programmed(node, &peer_subnet, &peer_vtep, &peer_ip) == [true; 3]
    });
    eprintln!("flannel.1 and the peer's objects made again after {took:.2?}");
    assert!(
        took < bound,
        "made again after {took:?}, not within {bound:?}"
    );
    assert_eq!(mac(node), mac_before, "the MAC its lease publishes");
    c.assert_full_mesh(Duration::from_secs(10));
    assert!(
        c.nodes[0].log_text().contains("periodic resync"),
        "the resync did it"
    );
    // SIGINT (Ctrl-C in a terminal) stops as SIGTERM does: exit 0, objects kept.
    let pid = c.nodes[1].twill_pid().expect("node 2 runs");
    sh(&["kill", "-INT", &pid.to_string()]);
    assert_eq!(c.nodes[1].wait_exit(Duration::from_secs(15)), Some(0));
    assert!(
        c.nodes[1]
            .log_text()
            .contains("SIGINT received; stopping (kernel objects and lease stay in place)"),
        "{}",
        c.nodes[1].log_tail()
    );
    assert!(
        c.pod_ping(1, 2),
        "the kernel objects stay: pods still reach"
    );
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// The expiry a node reports, in seconds since the epoch.
fn expiry(node: &Node) -> f64 {
    node.metric("twill_own_lease_expiry_timestamp_seconds")
}

fn renewals(node: &Node) -> usize {
    node.log_text().matches("renewed lease").count()
}

/// `--subnet-lease-renew-margin 1439` renews a 24 h lease a minute after it was made:
/// the etcd lease's TTL goes back to 24 h and the reported expiry moves a minute on. A
/// renewal while etcd is down is logged, the store reported disconnected, and retried
/// a minute later, when it succeeds.
#[test]
fn the_lease_is_renewed_at_its_margin_and_a_failed_renewal_is_retried() {
    let mut c = Cluster::new(1);
    c.put_config(CONFIG);
    let started = Instant::now();
    c.start_twill_with(
        1,
        &["--iface", "eth0", "--subnet-lease-renew-margin", "1439"],
    );
    c.wire_pods();
    let key = c.nodes[0].subnet().replace('/', "-");
    let first = expiry(&c.nodes[0]);
    let ttl = c.lease_ttl(&key).expect("the lease has an etcd lease");
    assert!(ttl > 86_000, "a 24 h lease: {ttl} s left");

    let minute = Duration::from_secs(60);
    let took = time_until("the renewal", Duration::from_secs(120), || {
        renewals(&c.nodes[0]) >= 1
    });
    let after = started.elapsed();
    eprintln!("renewed {after:.1?} after the start (margin: 1439 of 1440 minutes)");
    assert!(
        after > Duration::from_secs(50) && after < Duration::from_secs(90),
        "renewed {after:?} after the start, not about a minute ({took:?} waited)"
    );
    let second = expiry(&c.nodes[0]);
    eprintln!("reported expiry moved {:.1} s", second - first);
    assert!(
        (50.0..90.0).contains(&(second - first)),
        "the expiry moved {} s",
        second - first
    );
    let ttl = c.lease_ttl(&key).expect("still an etcd lease");
    assert!(ttl > 86_300, "the etcd lease is back at 24 h: {ttl} s left");

    // The next renewal is due a minute after this one; etcd is down by then.
    std::thread::sleep(minute - Duration::from_secs(10));
    c.stop_etcd();
    let warned = Instant::now();
    wait_for("the failed renewal", Duration::from_secs(40), || {
        c.nodes[0]
            .log_text()
            .lines()
            .find(|l| l.contains("renewing lease") && l.contains("retrying in 60s"))
            .map(str::to_owned)
    });
    let (code, status) = c.nodes[0].api_get("/v1/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(status["store"]["state"], "disconnected", "{status}");
    c.restart_etcd();
    let took = time_until("the retried renewal", Duration::from_secs(90), || {
        renewals(&c.nodes[0]) >= 2
    });
    let retried = warned.elapsed();
    eprintln!("renewal retried {retried:.1?} after etcd went down");
    assert!(
        retried > Duration::from_secs(50),
        "retried after {retried:?} ({took:?} waited): the retry is a minute"
    );
    assert!(expiry(&c.nodes[0]) > second + 50.0);
    let (_, status) = c.nodes[0].api_get("/v1/status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(status["store"]["state"], "connected", "{status}");
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// A peer that left while this node's daemon was stopped: its route, neighbour and FDB
/// entry, which the stopped daemon left in place, go at the next start, once the first
/// full lease list has been replayed; a peer still there keeps its objects throughout.
#[test]
fn a_peer_that_left_while_the_daemon_was_stopped_is_removed_at_the_next_start() {
    let mut c = Cluster::running(3, CONFIG);
    let objects = |c: &Cluster, peer: usize| {
        let peer = &c.nodes[peer - 1];
        let subnet = peer.subnet();
        let vtep = subnet.split('/').next().expect("address").to_owned();
        programmed(&c.nodes[0], &subnet, &vtep, &peer.ip())
    };
    assert_eq!(objects(&c, 2), [true; 3]);
    assert_eq!(objects(&c, 3), [true; 3]);

    assert_eq!(c.nodes[0].stop(), Some(0));
    assert_eq!(c.nodes[2].stop(), Some(0));
    let key = c.nodes[2].subnet().replace('/', "-");
    c.etcdctl(&["del", &format!("{}/subnets/{key}", c.prefix)]);
    assert_eq!(objects(&c, 3), [true; 3], "a stopped daemon leaves them");

    let mut ping = c.start_ping(1, 2, 60);
    c.start_twill(1);
    let took = time_until("node 3's objects removed", Duration::from_secs(20), || {
        objects(&c, 3) == [false; 3]
    });
    eprintln!("a peer gone while stopped: its objects removed {took:.2?} after the start");
    assert!(took < Duration::from_secs(10), "removed after {took:?}");
    assert_eq!(objects(&c, 2), [true; 3], "node 2's stay");
    assert!(ping.running());
    let (sent, received, summary) = ping.finish();
    assert_eq!(
        sent, received,
        "node 2 reached throughout the start: {summary}"
    );
    assert!(
        c.nodes[0].log_text().contains("peers gone"),
        "the removal is logged:\n{}",
        c.nodes[0].log_tail()
    );
    assert_eq!(c.nodes[0].stop(), Some(0));
    assert_eq!(c.nodes[1].stop(), Some(0));
}

/// A request the kernel refuses is counted where it happened and retried: with
/// flannel.1 down, the route of a new peer (onlink through it) fails with the
/// kernel's error, `twill_netlink_errors_total{kind="replace_route"}` counts it, the
/// peer is in error in `/v1/peers`; once the device is up again, the retry of peers in
/// error (every 5 s) programs it.
#[test]
fn a_request_the_kernel_refuses_is_counted_and_retried() {
    let mut c = Cluster::new(1);
    c.put_config(CONFIG);
    c.start_twill(1);
    c.wire_pods();
    let node = &c.nodes[0];
    let errors = r#"twill_netlink_errors_total{kind="replace_route"}"#;
    assert_eq!(node.metric_opt(errors), None, "no error yet");
    node.exec(&["ip", "link", "set", "flannel.1", "down"]);
    let (subnet, key) = ("10.244.200.0/24", "10.244.200.0-24");
    let value = r#"{"PublicIP":"192.168.77.50","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:bb:cc:dd:ee"}}"#;
    c.etcdctl(&["put", &format!("{}/subnets/{key}", c.prefix), value]);
    let state = |node: &Node| {
        let (_, body) = node.api_get("/v1/peers");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v["peers"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["subnet"] == subnet))
            .map(|p| {
                (
                    p["state"].as_str().unwrap_or("").to_owned(),
                    p["last_error"]["message"].to_string(),
                )
            })
    };
    let (_, error) = wait_for("the peer in error", Duration::from_secs(20), || {
        state(node).filter(|(s, _)| s == "error")
    });
    eprintln!("the peer's error: {error}");
    assert!(
        error.contains("replace route"),
        "the kernel's refusal: {error}"
    );
    assert!(node.metric(errors) >= 1.0, "the refused request is counted");
    assert!(
        output(node, &["ip", "route", "show", subnet])
            .trim()
            .is_empty()
    );

    node.exec(&["ip", "link", "set", "flannel.1", "up"]);
    let took = time_until("the retry", Duration::from_secs(20), || {
        state(node).is_some_and(|(s, _)| s == "programmed")
    });
    eprintln!("programmed {took:.2?} after flannel.1 came up");
    assert!(took < Duration::from_secs(8), "retried after {took:?}");
    assert!(output(node, &["ip", "route", "show", subnet]).contains("dev flannel.1"));
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// Node 1 cut off from etcd (its connections reset, new ones refused) while a peer
/// leaves and another joins: once it reaches etcd again, it removes the one and
/// programs the other, without a restart; the watch-connect counter shows the
/// reconnect.
#[test]
fn changes_made_while_a_node_was_cut_off_from_etcd_are_applied_when_it_is_back() {
    let mut c = Cluster::running(3, CONFIG);
    let node = &c.nodes[0];
    let connects = node.metric("twill_etcd_watch_connects_total");
    let leaving = c.nodes[2].subnet();
    let leaving_vtep = leaving.split('/').next().expect("address").to_owned();
    let cut = [
        "-p",
        "tcp",
        "-d",
        ETCD_IP,
        "--dport",
        "2379",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ];
    let from_etcd = ["-p", "tcp", "-s", ETCD_IP, "--sport", "2379", "-j", "DROP"];
    node.iptables(&[&["-I", "INPUT"][..], &from_etcd[..]].concat());
    node.iptables(&[&["-I", "OUTPUT"][..], &cut[..]].concat());
    // Its open connections go too (ss -K: the kernel closes them, as a reset would).
    node.exec(&["ss", "-K", "dst", ETCD_IP, "dport", "=", "2379"]);
    let node3_ip = c.nodes[2].ip();
    assert_eq!(c.nodes[2].stop(), Some(0));
    let node = &c.nodes[0];
    c.etcdctl(&[
        "del",
        &format!("{}/subnets/{}", c.prefix, leaving.replace('/', "-")),
    ]);
    let (joining, joining_ip) = ("10.244.201.0/24", "192.168.77.201");
    let value = format!(
        r#"{{"PublicIP":"{joining_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:aa:bb:cc:dd:01"}}}}"#
    );
    c.etcdctl(&[
        "put",
        &format!("{}/subnets/10.244.201.0-24", c.prefix),
        &value,
    ]);
    let store_state = |node: &Node| {
        let (_, body) = node.api_get("/v1/status");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v["store"]["state"].as_str().unwrap_or("").to_owned()
    };
    let took = time_until("store.state disconnected", Duration::from_secs(30), || {
        store_state(node) == "disconnected"
    });
    eprintln!("cut off from etcd: /v1/status says disconnected after {took:.1?}");
    assert_eq!(
        programmed(node, &leaving, &leaving_vtep, &node3_ip),
        [true; 3],
        "cut off, node 1 does not know node 3 left"
    );
    node.iptables(&[&["-D", "OUTPUT"][..], &cut[..]].concat());
    node.iptables(&[&["-D", "INPUT"][..], &from_etcd[..]].concat());
    let took = time_until("both changes applied", Duration::from_secs(60), || {
        programmed(node, &leaving, &leaving_vtep, &node3_ip) == [false; 3]
            && programmed(node, joining, "10.244.201.0", joining_ip) == [true; 3]
    });
    eprintln!("changes made while cut off from etcd applied {took:.2?} after it was back");
    assert!(
        node.metric("twill_etcd_watch_connects_total") > connects,
        "the watch reconnected"
    );
    assert_eq!(store_state(node), "connected");
    assert!(c.pod_ping(1, 2), "node 2 stays reachable");
    assert_eq!(c.nodes[0].stop(), Some(0));
    assert_eq!(c.nodes[1].stop(), Some(0));
}

/// systemd's readiness protocol: with `NOTIFY_SOCKET` set (as a `Type=notify` unit
/// has it), twill sends `READY=1` once subnet.env is written and its peers are handed
/// to the backend, with a `STATUS=` line, and `STOPPING=1` on SIGTERM.
#[test]
fn systemd_is_told_when_the_node_is_ready_and_when_it_stops() {
    use std::os::unix::net::UnixDatagram;
    let mut c = Cluster::new(2);
    c.put_config(CONFIG);
    c.start_twill(2);
    // Node 2's lease in etcd before node 1 lists the leases (its subnet.env says so).
    c.wire_pod(2);
    let path = c.dir().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    c.twill_env
        .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    let started = Instant::now();
    c.start_twill(1);
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification within 30 s");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    eprintln!(
        "systemd told {:.2?} after the start: {ready:?}",
        started.elapsed()
    );
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(
        ready.contains(&format!(
            "STATUS=subnet {}, backend vxlan, peers 1",
            c.nodes[0].subnet()
        )),
        "{ready}"
    );
    assert!(c.nodes[0].subnet_file.exists(), "ready after subnet.env");
    assert_eq!(c.nodes[0].stop(), Some(0));
    let n = socket.recv(&mut buf).expect("the stop notification");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping}");
    assert_eq!(c.nodes[1].stop(), Some(0));
}

/// The network config changed in etcd under a running node (audit G-6): the node keeps
/// running on the one it started with and says so once per change, naming the way to
/// apply it; an invalid config is named as such. Pods keep reaching each other.
#[test]
fn a_config_changed_in_the_store_is_named_not_applied_in_silence() {
    let mut c = Cluster::running(2, CONFIG);
    let warnings = |c: &Cluster, what: &str| {
        c.nodes[0]
            .log_text()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(what))
            .count()
    };
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#);
    let changed = "the network config in the store changed";
    let took = time_until("the change named", Duration::from_secs(20), || {
        warnings(&c, changed) == 1
    });
    eprintln!("a config change named {took:.1?} after it was written");
    assert!(c.nodes[0].log_text().contains("restart twill to apply it"));
    c.put_config(r#"{"Network":"10.244.0.0/16","SubnetLen":33}"#);
    time_until("the invalid config named", Duration::from_secs(20), || {
        warnings(&c, "is not valid any more") == 1
    });
    // Once each: the next probes see the same text.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(warnings(&c, changed), 1);
    assert_eq!(warnings(&c, "is not valid any more"), 1);
    assert!(
        c.nodes[0]
            .exec(&["ip", "-o", "link", "show"])
            .contains("flannel.1"),
        "still vxlan"
    );
    c.assert_full_mesh(Duration::from_secs(5));
    for node in &mut c.nodes {
        assert_eq!(node.stop(), Some(0));
    }
}
