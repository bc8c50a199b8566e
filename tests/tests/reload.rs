//! End to end: hot reload. A copy of the built-in vxlan component in a plugin
//! directory is replaced on one node and SIGHUP is sent to the other, while a pod pings
//! a pod on the other node ten times a second: the backend instance is swapped without
//! restarting the daemon or touching kernel state, and at most 2 packets are lost.

use std::time::Duration;

use twill_e2e::{Cluster, Node, sh, wait_for};

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn builtin_vxlan() -> &'static [u8] {
    twill_builtin::component("vxlan").expect("vxlan is built in")
}

/// The same component with a custom section appended: other bytes, same behaviour.
fn with_custom_section(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"twill-reload-test";
    let size = 1 + name.len() + tag.len();
    assert!(size < 128, "one-byte LEB128 sizes only");
    let mut out = bytes.to_vec();
    out.extend_from_slice(&[0, size as u8, name.len() as u8]);
    out.extend_from_slice(name);
    out.extend_from_slice(tag.as_bytes());
    out
}

fn reloads(node: &Node) -> usize {
    node.log_text()
        .matches("backend plugin reloaded; current leases replayed")
        .count()
}

fn ifindex(node: &Node) -> String {
    node.exec(&["cat", "/sys/class/net/flannel.1/ifindex"])
        .trim()
        .to_owned()
}

/// The netlink requests that would show kernel state torn down and rebuilt.
const TEARING: [&str; 5] = [
    "create_link",
    "delete_link",
    "delete_route",
    "delete_neighbour",
    "delete_fdb",
];

/// Their counts; `None` for a kind never requested (its series does not exist yet).
fn tearing_counts(node: &Node) -> Vec<Option<f64>> {
    TEARING
        .iter()
        .map(|kind| {
            node.metric_opt(&format!(
                r#"twill_netlink_operations_total{{kind="{kind}"}}"#
            ))
        })
        .collect()
}

fn plugin_sha(node: &Node) -> String {
    let (code, body) = node.api_get("/v1/plugins");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    v["plugins"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|p| p["sha256"].as_str())
        .expect("a plugin with sha256")
        .to_owned()
}

/// A reload swaps the component without touching kernel state: the same flannel.1
/// (ifindex), no link created or deleted, no route, neighbour or FDB entry deleted (the
/// netlink counters), the same daemons, and a pod ping across it loses nothing.
#[test]
fn reloading_the_vxlan_plugin_touches_no_kernel_object_and_loses_nothing() {
    let mut c = Cluster::new(2);
    c.put_config(VXLAN);
    let dir = c.dir().join("plugins");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    let file = dir.join("vxlan.wasm");
    std::fs::write(&file, builtin_vxlan()).expect("write vxlan.wasm");
    let dir_arg = dir.display().to_string();
    for k in 1..=2 {
        c.start_twill_with(k, &["--iface", "eth0", "--plugin-dir", &dir_arg]);
    }
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
    let pids: Vec<u32> = c
        .nodes
        .iter()
        .map(|n| n.twill_pid().expect("running"))
        .collect();
    let ifindexes: Vec<String> = c.nodes.iter().map(ifindex).collect();
    let tearing: Vec<Vec<Option<f64>>> = c.nodes.iter().map(tearing_counts).collect();
    let sha_before = plugin_sha(&c.nodes[0]);

    // 10 pings a second for 10 s, from pod 1 to pod 2, across both reloads.
    let ping = c.start_ping(1, 2, 100);
    std::thread::sleep(Duration::from_secs(2));

    // Node 1 (and node 2, which shares the directory): the file is replaced.
    let tmp = dir.join("vxlan.wasm.new");
    std::fs::write(&tmp, with_custom_section(builtin_vxlan(), "v2")).expect("write");
    std::fs::rename(&tmp, &file).expect("replace vxlan.wasm");
    for node in &c.nodes {
        wait_for(
            "the reload after the file changed",
            Duration::from_secs(20),
            || (reloads(node) >= 1).then_some(()),
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    // Node 2: SIGHUP reloads even an unchanged plugin.
    sh(&["kill", "-HUP", &pids[1].to_string()]);
    wait_for("the reload after SIGHUP", Duration::from_secs(20), || {
        (reloads(&c.nodes[1]) >= 2).then_some(())
    });

    let (sent, received, summary) = ping.finish();
    eprintln!("hot reload under a 10/s ping: {summary}");
    assert!(
        sent >= 95 && sent == received,
        "lost {} of {sent} packets across the reloads: {summary}",
        sent - received
    );

    // The same daemons, the same kernel objects, the new component.
    for (k, node) in c.nodes.iter_mut().enumerate() {
        assert_eq!(node.exited(), None, "node {} still runs", k + 1);
        assert_eq!(ifindex(node), ifindexes[k], "node {} kept flannel.1", k + 1);
        assert_eq!(
            tearing_counts(node),
            tearing[k],
            "node {}: {TEARING:?} requests during the reloads",
            k + 1
        );
        for line in node
            .log_text()
            .lines()
            .filter(|l| l.contains("plugin reloaded"))
        {
            eprintln!("node {}: {line}", k + 1);
        }
    }
    assert_ne!(plugin_sha(&c.nodes[0]), sha_before);
    c.assert_full_mesh(Duration::from_secs(10));
    for k in 1..=2 {
        assert_eq!(c.nodes[k - 1].stop(), Some(0));
    }
}
