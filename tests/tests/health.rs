//! End to end: the peer probes. Three nodes on each backend with a real etcd and the
//! real binary, probing every second; one peer's overlay traffic is then dropped (not
//! its underlay: a plain ping between the nodes still answers), and node 1 must call
//! exactly that peer unreachable in `/v1/peers`, `/v1/status` and `/metrics`, then
//! reachable again once the drop is lifted.

use std::time::{Duration, Instant};

use serde_json::Value;
use twill_e2e::{Cluster, wait_for};

/// Node 1's `/v1/peers`, as (subnet → health object).
fn health_of(c: &Cluster) -> Vec<(String, Value)> {
    let (code, body) = c.nodes[0].api_get("/v1/peers");
    assert_eq!(code, 200, "/v1/peers: {body}");
    let peers: Value = serde_json::from_str(&body).expect("/v1/peers is JSON");
    peers["peers"]
        .as_array()
        .expect("peers array")
        .iter()
        .map(|p| {
            (
                p["subnet"].as_str().expect("subnet").to_owned(),
                p["health"].clone(),
            )
        })
        .collect()
}

/// Wait until node 1 says `reachable` of every peer in `want` (subnet → expected).
fn wait_health(c: &Cluster, want: &[(String, bool)], what: &str) -> Duration {
    let start = Instant::now();
    wait_for(what, Duration::from_secs(30), || {
        let health = health_of(c);
        want.iter()
            .all(|(subnet, reachable)| {
                health
                    .iter()
                    .any(|(s, h)| s == subnet && h["reachable"].as_bool() == Some(*reachable))
            })
            .then_some(())
    });
    start.elapsed()
}

fn probes_follow_the_overlay(backend: &str) {
    let mut c = Cluster::new(3);
    c.twill_env
        .push(("TWILL_PEER_PROBE_INTERVAL".into(), "1".into()));
    c.put_config(&format!(
        r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"{backend}"}}}}"#
    ));
    for k in 1..=3 {
        c.start_twill(k);
    }
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
    let (two, three) = (c.nodes[1].subnet(), c.nodes[2].subnet());

    let took = wait_health(
        &c,
        &[(two.clone(), true), (three.clone(), true)],
        "both peers reachable",
    );
    println!(
        "{backend}: both peers reachable {} ms after the mesh",
        took.as_millis()
    );
    for (subnet, h) in health_of(&c) {
        let rtt = h["rtt_ms"].as_f64().expect("rtt_ms of a reachable peer");
        assert!(rtt > 0.0 && rtt < 1000.0, "{subnet}: rtt_ms {rtt}");
        assert!(h["checked_at"].is_string() && h["since"].is_string(), "{h}");
        assert_eq!(h["lost_in_a_row"], 0, "{h}");
    }
    let node1 = &c.nodes[0];
    assert_eq!(
        node1.metric(&format!("twill_peer_reachable{{subnet=\"{three}\"}}")),
        1.0
    );
    let rtt = node1.metric(&format!("twill_peer_rtt_seconds{{subnet=\"{three}\"}}"));
    assert!(rtt > 0.0 && rtt < 1.0, "twill_peer_rtt_seconds {rtt}");
    assert_eq!(node1.metric("twill_peers_unreachable"), 0.0);
    assert!(node1.metric("twill_peer_probes_total{result=\"answered\"}") >= 2.0);

    // Drop what node 1's overlay sends to node 3, at node 3, and nothing else:
    // vxlan and udp packets by their port, host-gw's and directrouting's by their
    // source inside node 1's subnet.
    let (node1_ip, node1_subnet) = (c.nodes[0].ip(), c.nodes[0].subnet());
    let rule: Vec<&str> = match backend {
        "vxlan" => vec!["INPUT", "-s", &node1_ip, "-p", "udp", "--dport", "8472"],
        "udp" => vec!["INPUT", "-s", &node1_ip, "-p", "udp", "--dport", "8285"],
        _ => vec!["INPUT", "-s", &node1_subnet],
    };
    let with = |op: &'static str| [&[op][..], &rule, &["-j", "DROP"]].concat();
    c.nodes[2].iptables(&with("-I"));
    // The underlay still answers: what the probes see is the overlay.
    let underlay = c.nodes[0].exec(&["ping", "-c", "1", "-W", "2", &c.nodes[2].ip()]);
    assert!(underlay.contains("1 received"), "underlay ping: {underlay}");

    let took = wait_health(
        &c,
        &[(three.clone(), false), (two.clone(), true)],
        "node 3 unreachable, node 2 still reachable",
    );
    println!(
        "{backend}: node 3 unreachable {} ms after its overlay was cut",
        took.as_millis()
    );
    let node1 = &c.nodes[0];
    assert_eq!(
        node1.metric(&format!("twill_peer_reachable{{subnet=\"{three}\"}}")),
        0.0
    );
    assert_eq!(
        node1.metric(&format!("twill_peer_reachable{{subnet=\"{two}\"}}")),
        1.0
    );
    assert_eq!(node1.metric("twill_peers_unreachable"), 1.0);
    assert!(node1.metric("twill_peer_probes_total{result=\"lost\"}") >= 3.0);
    assert_eq!(
        node1.metric_opt(&format!("twill_peer_rtt_seconds{{subnet=\"{three}\"}}")),
        None,
        "an unreachable peer has no RTT series"
    );
    let (_, status) = node1.api_get("/v1/status");
    let status: Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(
        status["peer_health"],
        serde_json::json!({"reachable": 1, "unreachable": 1, "unchecked": 0}),
        "{status}"
    );
    assert!(
        node1
            .log_text()
            .contains("peer unreachable through the overlay"),
        "a warning names the unreachable peer"
    );
    let bin = twill_e2e::twill_bin();
    let summary = node1.exec(&[bin.to_str().expect("utf-8 path"), "status"]);
    assert!(
        summary.contains("probes: 1 reachable, 1 unreachable, 0 not decided"),
        "{summary}"
    );
    let line = summary
        .lines()
        .find(|l| l.starts_with(&three))
        .unwrap_or_else(|| panic!("no line for {three}: {summary}"));
    assert!(
        line.contains("UNREACHABLE"),
        "twill status marks it: {line}"
    );

    c.nodes[2].iptables(&with("-D"));
    let took = wait_health(&c, &[(three.clone(), true)], "node 3 reachable again");
    println!(
        "{backend}: node 3 reachable again {} ms after the drop was lifted",
        took.as_millis()
    );
    assert_eq!(c.nodes[0].metric("twill_peers_unreachable"), 0.0);
}

#[test]
fn probes_follow_the_overlay_on_vxlan() {
    probes_follow_the_overlay("vxlan");
}

#[test]
fn probes_follow_the_overlay_on_udp() {
    probes_follow_the_overlay("udp");
}

#[test]
fn probes_follow_the_overlay_on_host_gw() {
    probes_follow_the_overlay("host-gw");
}

#[test]
fn probes_follow_the_overlay_on_directrouting() {
    probes_follow_the_overlay("directrouting");
}

/// Every probe sent, whatever its result.
fn probes_sent(node: &twill_e2e::Node) -> f64 {
    let (_, text) = node.api_get("/metrics");
    text.lines()
        .filter(|l| l.starts_with("twill_peer_probes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `--peer-probe-rate` bounds the probes a second whatever the interval asks for: 40
/// peers every second would be 40/s; with a rate of 10 it is 10/s.
#[test]
fn the_probe_rate_bounds_probes_per_second() {
    let mut c = Cluster::new(1);
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    for i in 0..40u8 {
        let value = format!(
            r#"{{"PublicIP":"192.168.77.{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:00:{i:02x}"}}}}"#,
            100 + i
        );
        c.etcdctl(&[
            "put",
            &format!("{}/subnets/10.244.{}.0-24", c.prefix, 100 + i),
            &value,
        ]);
    }
    c.start_twill_with(
        1,
        &[
            "--iface",
            "eth0",
            "--peer-probe-interval",
            "1",
            "--peer-probe-rate",
            "10",
        ],
    );
    c.wire_pods();
    let node = &c.nodes[0];
    wait_for("the probes to run", Duration::from_secs(20), || {
        (probes_sent(node) >= 5.0).then_some(())
    });
    let (before, started) = (probes_sent(node), Instant::now());
    std::thread::sleep(Duration::from_secs(4));
    let rate = (probes_sent(node) - before) / started.elapsed().as_secs_f64();
    eprintln!("probes with 40 peers, a 1 s interval and --peer-probe-rate 10: {rate:.1}/s");
    assert!((6.0..=12.0).contains(&rate), "{rate:.1} probes/s");
    assert_eq!(c.nodes[0].stop(), Some(0));
}
