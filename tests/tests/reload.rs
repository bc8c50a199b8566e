//! End to end: hot reload. A copy of the built-in vxlan component in a plugin
//! directory is replaced on one node and SIGHUP is sent to the other, while a pod pings
//! a pod on the other node ten times a second: the backend instance is swapped without
//! restarting the daemon, no device is created or deleted (same ifindex, netlink
//! create/delete counters unchanged), and no packet is lost.

use std::time::Duration;

use twill_e2e::{Cluster, Node, build_plugin_crate, sh, test_plugin_dir, wait_for};

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

/// The `took_ms` of every completed reload in the node's log.
fn reload_times(node: &Node) -> Vec<u64> {
    node.log_text()
        .lines()
        .filter(|l| l.contains("backend plugin reloaded; current leases replayed"))
        .filter_map(|l| {
            l.split("took_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn ifindex(node: &Node) -> String {
    node.ifindex("flannel.1")
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
    let sha_before = c.nodes[0].plugin_sha();

    // 10 pings a second for 15 s, from pod 1 to pod 2, across both reloads.
    let mut ping = c.start_ping(1, 2, 150);
    std::thread::sleep(Duration::from_secs(1));

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
    std::thread::sleep(Duration::from_secs(1));
    // Node 2: SIGHUP reloads even an unchanged plugin, still under the ping.
    assert!(ping.running(), "the ping ended before the SIGHUP");
    sh(&["kill", "-HUP", &pids[1].to_string()]);
    wait_for("the reload after SIGHUP", Duration::from_secs(20), || {
        (reloads(&c.nodes[1]) >= 2).then_some(())
    });
    assert!(
        ping.running(),
        "the ping ended before the reload after SIGHUP did"
    );

    let (sent, received, summary) = ping.finish();
    eprintln!("hot reload under a 10/s ping: {summary}");
    for node in &c.nodes {
        let times = reload_times(node);
        assert!(
            !times.is_empty(),
            "{}: no reload logged its took_ms",
            node.ns
        );
        for took in times {
            eprintln!("{}: a reload took {took} ms", node.ns);
            assert!(took < 2000, "{}: a reload took {took} ms", node.ns);
        }
    }
    assert!(
        sent >= 145 && sent == received,
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
    assert_ne!(c.nodes[0].plugin_sha(), sha_before);
    c.assert_full_mesh(Duration::from_secs(10));
    for k in 1..=2 {
        assert_eq!(c.nodes[k - 1].stop(), Some(0));
    }
}

/// Lines of a node's log that say a reload was given up.
fn kept(node: &Node) -> Vec<String> {
    node.log_text()
        .lines()
        .filter(|l| l.contains("keeping the running plugin"))
        .map(str::to_owned)
        .collect()
}

/// Replace `file` atomically with `bytes`, then wait until node `node` has logged one
/// more "keeping the running plugin" than `before`, and return that line.
fn replace_and_wait_kept(
    node: &Node,
    file: &std::path::Path,
    bytes: &[u8],
    before: usize,
) -> String {
    let tmp = file.with_extension("new");
    std::fs::write(&tmp, bytes).expect("write the replacement");
    std::fs::rename(&tmp, file).expect("replace the plugin file");
    wait_for("the refused reload", Duration::from_secs(20), || {
        kept(node).get(before).cloned()
    })
}

/// A replacement that cannot be loaded (junk, a WIT 0.2 component, a file now naming
/// another backend) leaves the running plugin in place: the same sha256 in
/// `/v1/plugins`, no reload, nothing torn down, the pods still reach each other. The
/// built-in is not swapped in behind the operator's back.
#[test]
fn a_replacement_that_cannot_load_keeps_the_running_plugin() {
    let mut c = Cluster::new(2);
    c.put_config(VXLAN);
    let dir = c.dir().join("plugins");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    let file = dir.join("vxlan.wasm");
    // Other bytes than the built-in, so a fallback to it would show in the sha256.
    std::fs::write(&file, with_custom_section(builtin_vxlan(), "v1")).expect("write");
    let dir_arg = dir.display().to_string();
    c.start_twill_with(1, &["--iface", "eth0", "--plugin-dir", &dir_arg]);
    c.start_twill_with(2, &["--iface", "eth0"]);
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
    let node = &c.nodes[0];
    let sha = node.plugin_sha();
    let ifindex_before = ifindex(node);
    let tearing = tearing_counts(node);

    let wit_v2 = std::fs::read(build_plugin_crate(&test_plugin_dir("wit-v2"))).expect("wit-v2");
    let misbehave =
        std::fs::read(build_plugin_crate(&test_plugin_dir("misbehave"))).expect("misbehave");
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "junk",
            b"\0asm junk, not a component",
            "skipping plugin file",
        ),
        ("a WIT 0.2 component", &wit_v2, "0.2"),
        (
            "another backend",
            &misbehave,
            "now provides backend misbehave, not vxlan",
        ),
    ];
    for (k, (what, bytes, why)) in cases.iter().enumerate() {
        let line = replace_and_wait_kept(node, &file, bytes, k);
        eprintln!("{what}: {line}");
        assert!(
            line.contains(why),
            "{what}: the warning says why ({why:?}): {line}"
        );
        assert!(
            line.contains("vxlan.wasm"),
            "{what}: the warning names the file: {line}"
        );
        assert_eq!(node.plugin_sha(), sha, "{what}: the running plugin stays");
        assert_eq!(reloads(node), 0, "{what}: nothing was reloaded");
        assert!(
            c.pod_ping(1, 2) && c.pod_ping(2, 1),
            "{what}: the pods still reach"
        );
    }
    assert_eq!(
        ifindex(node),
        ifindex_before,
        "flannel.1 is the same device"
    );
    assert_eq!(tearing_counts(node), tearing, "nothing was torn down");
    // Removing the file is the operator's choice of the built-in: that reload happens.
    std::fs::remove_file(&file).expect("remove vxlan.wasm");
    wait_for(
        "the reload to the built-in",
        Duration::from_secs(20),
        || (reloads(node) == 1).then_some(()),
    );
    assert_ne!(node.plugin_sha(), sha, "the built-in now runs");
    assert!(
        c.pod_ping(1, 2) && c.pod_ping(2, 1),
        "the pods reach after the fallback"
    );
    for node in &mut c.nodes {
        assert_eq!(node.stop(), Some(0));
    }
}

/// A replacement whose `init` fails (misbehave's `refuse-reload` fails every instance
/// after the first) leaves the running instance in place: SIGHUP is refused with the
/// plugin's error, and the node keeps working and serving.
#[test]
fn a_replacement_whose_init_fails_keeps_the_running_plugin() {
    let mut c = Cluster::new(2);
    c.put_config(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"misbehave","Mode":"refuse-reload"}}"#,
    );
    let dir = c.dir().join("plugins");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    std::fs::copy(
        build_plugin_crate(&test_plugin_dir("misbehave")),
        dir.join("misbehave.wasm"),
    )
    .expect("copy misbehave.wasm");
    let dir_arg = dir.display().to_string();
    for k in 1..=2 {
        c.start_twill_with(k, &["--iface", "eth0", "--plugin-dir", &dir_arg]);
    }
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
    let node = &c.nodes[0];
    let pid = node.twill_pid().expect("running");
    sh(&["kill", "-HUP", &pid.to_string()]);
    let line = wait_for("the refused reload", Duration::from_secs(20), || {
        kept(node).first().cloned()
    });
    eprintln!("init fails: {line}");
    assert!(
        line.contains("refusing to initialise a second instance"),
        "{line}"
    );
    assert_eq!(reloads(node), 0);
    assert!(c.pod_ping(1, 2) && c.pod_ping(2, 1), "the pods still reach");
    for node in &mut c.nodes {
        assert_eq!(node.exited(), None);
        assert_eq!(node.stop(), Some(0));
    }
}
