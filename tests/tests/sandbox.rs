//! End to end: plugins that misbehave on purpose (tests/plugins/misbehave, dropped into
//! a plugin directory). Each outcome is asserted from the outside: kernel state, the
//! metrics, the daemon still running (and its exit status at the end).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use twill_e2e::{
    Cluster, Node, build_plugin_crate, build_plugin_crate_with, test_plugin_dir, wait_for,
};

fn misbehave_wasm() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build_plugin_crate(&test_plugin_dir("misbehave")))
}

/// A plugin directory in the cluster's scratch dir holding the misbehave component.
fn plugin_dir(c: &Cluster) -> String {
    let dir = c.dir().join("plugins");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    std::fs::copy(misbehave_wasm(), dir.join("misbehave.wasm")).expect("copy the plugin");
    dir.display().to_string()
}

/// How long a metric may take to reach its value (restarts back off up to seconds).
const WAIT: Duration = Duration::from_secs(40);

fn config(mode: &str) -> String {
    format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"misbehave","Mode":"{mode}"}}}}"#)
}

/// Start twill on every node with the plugin directory and these extra arguments.
fn start_all(c: &mut Cluster, extra: &[&str]) {
    let dir = plugin_dir(c);
    for k in 1..=c.nodes.len() {
        let mut args = vec!["--iface", "eth0", "--plugin-dir", &dir];
        args.extend_from_slice(extra);
        c.start_twill_with(k, &args);
    }
    c.wire_pods();
}

/// The names of a node's network devices.
fn link_names(node: &Node) -> Vec<String> {
    node.exec(&["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn denied_requests_change_nothing_and_are_counted() {
    let mut c = Cluster::new(2);
    c.put_config(&config("deny"));
    let node = &c.nodes[0];
    let routes_before = node.exec(&["ip", "route", "show"]);
    let addr_before = node.exec(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    let links_before = link_names(node);
    start_all(&mut c, &["--resync-interval", "2"]);
    c.assert_full_mesh(Duration::from_secs(30));
    let node = &c.nodes[0];
    node.wait_metric(
        r#"twill_plugin_denied_host_calls_total{capability="routes"}"#,
        2.0,
        WAIT,
    );
    // The plugin tries its four refused requests in every `start`, and the resync calls
    // `start` again, so the counts are per start: exact whatever the timing.
    // The node runs with a 2 s resync so that this is checked over several starts; the
    // counts are read between two equal readings of the start count.
    let starts = || node.metric(r#"twill_plugin_calls_total{plugin="misbehave",function="start"}"#);
    let denied = |capability: &str| {
        node.metric(&format!(
            r#"twill_plugin_denied_host_calls_total{{capability="{capability}"}}"#
        ))
    };
    thread::sleep(Duration::from_secs(3));
    let (n, counts) = loop {
        let before = starts();
        let counts = ["routes", "addresses", "links"].map(denied);
        if starts() == before {
            break (before, counts);
        }
    };
    assert!(n >= 2.0, "a resync ran start again: {n} starts");
    assert_eq!(
        counts,
        [2.0 * n, n, n],
        "routes, addresses, links denials for {n} starts"
    );
    // Nothing it asked for happened.
    let routes = node.exec(&["ip", "route", "show"]);
    assert!(!routes.contains("172.31.0.0/16"), "{routes}");
    let default_before = routes_before.lines().find(|l| l.starts_with("default"));
    let default_now = routes.lines().find(|l| l.starts_with("default"));
    assert!(default_before.is_some());
    assert_eq!(default_before, default_now, "the default route stays");
    assert_eq!(
        node.exec(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]),
        addr_before
    );
    assert_eq!(link_names(node), links_before, "no device was created");
    // Each refusal is logged with the plugin's name.
    let log = node.log_text();
    for what in [
        "outside the cluster network",
        "is not one this plugin created",
        "does not start with",
    ] {
        assert!(
            log.lines().any(|l| l.contains("denied")
                && l.contains("plugin=misbehave")
                && l.contains(what)),
            "no denial log line about {what:?}:\n{log}"
        );
    }
    // Denials are answers, not failures: no trap, no restart.
    assert_eq!(node.metric_opt(TRAPS), None, "no trap, so no series");
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// Security review H-3: a pod's address on a plugin's device would put a local route
/// for it before the pod's, handing its traffic to the host's services.
#[test]
fn a_plugin_cannot_take_a_pods_address() {
    let mut c = Cluster::new(2);
    c.put_config(&config("hijack-address"));
    start_all(&mut c, &[]);
    c.assert_full_mesh(Duration::from_secs(30));
    let node = &c.nodes[0];
    let pod = node.pod_ip();
    wait_for("the denial", WAIT, || {
        node.metric_opt(r#"twill_plugin_denied_host_calls_total{capability="addresses"}"#)
            .filter(|n| *n >= 1.0)
    });
    let route = node.exec(&["ip", "route", "get", &pod]);
    assert!(
        !route.starts_with("local") && route.contains("cni0"),
        "the pod's address still routes to the pod: {route}"
    );
    let local = node.exec(&["ip", "route", "show", "table", "local"]);
    assert!(
        !local
            .lines()
            .any(|l| l.starts_with(&format!("local {pod} "))),
        "no local route for the pod: {local}"
    );
    assert!(
        node.log_text()
            .lines()
            .any(|l| l.contains("denied") && l.contains("is not the node's subnet address")),
        "the denial is logged"
    );
    assert!(c.pod_ping(2, 1), "node 2's pod still reaches node 1's pod");
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// Security review H-5: a plugin may send peers' traffic only to peers — not route a
/// peer's subnet via another host, nor add an FDB entry towards one.
#[test]
fn next_hops_are_bound_to_peers() {
    let mut c = Cluster::new(2);
    let observer = "192.168.77.201";
    c.add_outside_host("obs", observer);
    c.put_config(&format!(
        r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"misbehave","Mode":"exfil","Observer":"{observer}"}}}}"#
    ));
    start_all(&mut c, &[]);
    c.assert_full_mesh(Duration::from_secs(30));
    let node = &c.nodes[0];
    for capability in ["routes", "fdb"] {
        wait_for(&format!("a {capability} denial"), WAIT, || {
            node.metric_opt(&format!(
                r#"twill_plugin_denied_host_calls_total{{capability="{capability}"}}"#
            ))
            .filter(|n| *n >= 1.0)
        });
    }
    let log = node.log_text();
    assert!(!log.contains("allowed (it should not be)"), "{log}");
    assert!(log.contains("is not a current peer's public IP"), "{log}");
    let route = node.exec(&["ip", "route", "get", &c.nodes[1].pod_ip()]);
    assert!(
        route.contains(&format!("via {}", c.nodes[1].ip())) && !route.contains(observer),
        "pod 2 is reached via node 2: {route}"
    );
    let fdb = node.exec(&["bridge", "fdb", "show", "dev", "flannel.8"]);
    assert!(
        !fdb.contains(observer),
        "no FDB entry to the observer: {fdb}"
    );
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// Security review M-2: the kernel objects a plugin may hold are bounded — four
/// devices, and per kind two entries per peer plus 64.
#[test]
fn kernel_objects_a_plugin_holds_are_bounded() {
    let mut c = Cluster::new(2);
    c.put_config(&config("flood"));
    start_all(&mut c, &[]);
    c.assert_full_mesh(Duration::from_secs(30));
    let node = &c.nodes[0];
    // Six devices and 1000 − (2 × 1 + 64) FDB entries refused, counted (their log
    // lines mostly suppressed by the log budget).
    wait_for("the FDB flood refused", WAIT, || {
        node.metric_opt(r#"twill_plugin_denied_host_calls_total{capability="fdb"}"#)
            .filter(|n| *n >= 934.0)
    });
    assert_eq!(
        node.metric(r#"twill_plugin_denied_host_calls_total{capability="fdb"}"#),
        934.0
    );
    assert_eq!(
        node.metric(r#"twill_plugin_denied_host_calls_total{capability="links"}"#),
        6.0
    );
    let devices = link_names(node)
        .iter()
        .filter(|n| n.starts_with("flannel.f"))
        .count();
    assert_eq!(devices, 4);
    let fdb = node.exec(&["bridge", "fdb", "show", "dev", "flannel.f0"]);
    let entries = fdb.lines().filter(|l| l.contains(" dst ")).count();
    assert_eq!(entries, 66, "{fdb}");
    assert!(c.pod_ping(1, 2), "the plugin keeps working");
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// Security review M-6: a plugin cannot flood the log or forge lines in it.
#[test]
fn a_plugin_cannot_flood_or_forge_the_log() {
    let mut c = Cluster::new(2);
    c.put_config(&config("log-flood"));
    start_all(&mut c, &[]);
    c.assert_full_mesh(Duration::from_secs(30));
    let node = &c.nodes[0];
    wait_for("the denials counted", WAIT, || {
        node.metric_opt(r#"twill_plugin_denied_host_calls_total{capability="routes"}"#)
            .filter(|n| *n >= 5000.0)
    });
    // One more second, for the report of the last window.
    std::thread::sleep(Duration::from_millis(1500));
    c.pod_ping(1, 2);
    let log = node.log_text();
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("plugin=misbehave"))
        .collect();
    assert!(
        ours.len() < 200,
        "{} lines from the plugin (10,000 asked for)",
        ours.len()
    );
    assert!(
        log.lines()
            .any(|l| l.contains("log lines a second from this plugin: suppressing")),
        "no suppression report"
    );
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-12-02T00:00:00.000000Z  INFO forged")),
        "a forged line made it into the log"
    );
    assert!(
        log.contains("\\n2026-12-02T00:00:00.000000Z  INFO forged line\\u{1b}[31m"),
        "the newline and escape are written as escapes"
    );
    assert!(!log.contains('\x1b'), "no raw terminal escape");
    assert!(log.len() < 2 << 20, "log is {} bytes", log.len());
    assert_eq!(c.nodes[0].stop(), Some(0));
}

fn describe_attack_wasm() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build_plugin_crate(&test_plugin_dir("describe-attack")))
}

/// `(ifindex, MAC)` of `dev` on `node`, from `ip -o link show`.
fn link_identity(node: &Node, dev: &str) -> (String, String) {
    let line = node.exec(&["ip", "-o", "link", "show", "dev", dev]);
    let index = line.split(':').next().unwrap_or("").trim().to_owned();
    let mac = line
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or("")
        .to_owned();
    (index, mac)
}

/// Security review H-1: every component in the plugin directory is asked to
/// `describe()` itself, configured or not, at start and on every change of the
/// directory. That call must not reach the kernel: the real backend's `flannel.1` stays
/// as it is, no other device appears, twill runs on, the pods reach each other.
#[test]
fn describe_runs_without_kernel_access() {
    let mut c = Cluster::new(2);
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let dir = c.dir().join("plugins");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    let dir_arg = dir.display().to_string();
    let args = ["--iface", "eth0", "--plugin-dir", dir_arg.as_str()];
    c.start_twill_with(1, &args);
    c.start_twill_with(2, &args);
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
    let before = link_identity(&c.nodes[0], "flannel.1");

    // Dropped in while twill runs: the directory change makes twill describe it.
    std::fs::copy(describe_attack_wasm(), dir.join("attack.wasm")).expect("copy");
    wait_for("the attack's describe() to run", WAIT, || {
        c.nodes[0]
            .log_text()
            .contains("describe-attack: flannel.99: refused")
            .then_some(())
    });
    // And at the next start, with the file in place from the beginning: its describe()
    // spins after the attempts, and is stopped after 2 s (not the 30 s call timeout).
    assert_eq!(c.nodes[0].stop(), Some(0));
    let started = std::time::Instant::now();
    c.start_twill_with(1, &args);
    wait_for("node 1 up again", WAIT, || {
        (c.nodes[0].api_get("/readyz").0 == 200).then_some(())
    });
    let took = started.elapsed();
    println!(
        "node 1 ready {} ms after its start, a spinning describe() in the directory",
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(10),
        "the spinning describe() held the start {took:?}"
    );
    assert_eq!(c.nodes[0].exited(), None, "twill runs");
    let node = &c.nodes[0];
    let log = node.log_text();
    assert!(!log.contains("allowed (it should not be)"), "{log}");
    assert!(
        log.lines()
            .filter(|l| l.contains("describe-attack: flannel.1: refused"))
            .count()
            >= 2,
        "describe() was refused both times:\n{log}"
    );
    assert_eq!(
        link_identity(node, "flannel.1"),
        before,
        "flannel.1 is the same device"
    );
    assert!(
        !link_names(node).iter().any(|n| n == "flannel.99"),
        "describe() created no device"
    );
    c.assert_full_mesh(Duration::from_secs(30));
    for (n, code) in c.stop_all_twill() {
        assert_eq!(code, Some(0), "twill on node {n} exits 0");
    }
}

/// The plugin's trap and restart counters on a node.
const TRAPS: &str = r#"twill_plugin_traps_total{plugin="misbehave"}"#;
const RESTARTS: &str = r#"twill_plugin_restarts_total{plugin="misbehave"}"#;

/// Wait until `node` counted `traps` traps and at least one restart of the plugin, and
/// check the daemon still serves its API.
fn wait_trapped_and_restarted(node: &Node, traps: f64) {
    node.wait_metric(TRAPS, traps, WAIT);
    node.wait_metric(RESTARTS, 1.0, WAIT);
    let (code, _) = node.api_get("/healthz");
    assert_eq!(code, 200, "the daemon still serves its API");
}

#[test]
fn an_endless_call_is_interrupted_and_the_daemon_goes_on() {
    let mut c = Cluster::new(2);
    c.put_config(&config("loop"));
    start_all(&mut c, &["--plugin-call-timeout", "2"]);
    let node = &c.nodes[0];
    // The first on-leases never returns: the epoch deadline ends it, the plugin is
    // restarted (and loops again on the replay, so it keeps being restarted).
    wait_trapped_and_restarted(node, 2.0);
    let log = node.log_text();
    assert!(
        log.contains("interrupt"),
        "the trap names the interrupt:\n{log}"
    );
    // The first on-leases starts right after subnet.env is written; the deadline of
    // --plugin-call-timeout 2 ends it about 2 s later (the default would be 30 s).
    let written = log_time(&log, "wrote subnet file");
    let trapped = log_time(&log, "backend plugin failed");
    let took = trapped - written;
    println!("an endless call was interrupted {took:.2} s after it began");
    assert!(
        (1.8..=5.0).contains(&took),
        "interrupted after {took:.2} s, not the 2 s of --plugin-call-timeout"
    );
    assert_eq!(c.nodes[0].stop(), Some(0), "and stops cleanly");
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    let mut c = Cluster::new(2);
    c.put_config(&config("alloc"));
    start_all(&mut c, &["--plugin-memory-mib", "16"]);
    let node = &c.nodes[0];
    wait_trapped_and_restarted(node, 1.0);
    let log = node.log_text();
    assert!(
        log.contains("trapped") && log.contains("forcing trap when growing memory"),
        "the trap names the memory limit:\n{log}"
    );
    // The grow that trapped is the one past --plugin-memory-mib 16 (the default would
    // let it reach 64 MiB).
    let to: u64 = log
        .split("growing memory to ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .expect("the size the plugin tried to grow to");
    println!("the plugin's memory trapped growing to {to} bytes");
    assert!(
        (16 << 20) < to && to <= (17 << 20),
        "trapped growing to {to} bytes, not just past 16 MiB"
    );
    // twill itself stayed small: the plugin's memory is capped at 16 MiB.
    let pid = node.twill_pid().expect("twill runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    assert!(rss_kib < 512 * 1024, "twill's RSS {rss_kib} KiB");
    assert_eq!(c.nodes[0].stop(), Some(0));
}

#[test]
fn a_trapping_plugin_is_restarted_with_the_leases_replayed_and_pods_keep_reaching() {
    let mut c = Cluster::new(3);
    c.put_config(&config("trap-on-second"));
    start_all(&mut c, &[]);
    c.assert_full_mesh(Duration::from_secs(30));

    // A new lease makes every node's plugin run its second on-leases: it panics.
    let key = format!("{}/subnets/10.244.250.0-24", c.prefix);
    c.etcdctl(&[
        "put",
        &key,
        r#"{"PublicIP":"192.168.77.99","PublicIPv6":null,"BackendType":"misbehave"}"#,
    ]);
    for node in &c.nodes {
        node.wait_metric(TRAPS, 1.0, WAIT);
        node.wait_metric(RESTARTS, 1.0, WAIT);
        // The panic's message reaches the log (the SDK's hook), not only the trap.
        let log = node.log_text();
        assert!(
            log.lines().any(|l| l.contains("plugin=misbehave")
                && l.contains("plugin panicked at")
                && l.contains("misbehave: trapping on purpose")),
            "the panic message is logged:\n{}",
            node.log_tail()
        );
    }
    // The fresh instance got every current lease, the new one included.
    for node in &c.nodes {
        wait_for(
            "the replayed lease's route",
            Duration::from_secs(20),
            || {
                node.exec(&["ip", "route", "show", "10.244.250.0/24"])
                    .contains("via 192.168.77.99 dev eth0")
                    .then_some(())
            },
        );
        assert!(node.log_text().contains("current leases replayed"));
    }
    c.assert_full_mesh(Duration::from_secs(10));
    for k in 1..=3 {
        assert_eq!(c.nodes[k - 1].stop(), Some(0), "node {k} exits 0");
    }
}

#[test]
fn a_peer_that_leaves_while_the_plugin_is_down_is_removed_after_the_restart() {
    let mut c = Cluster::new(2);
    c.put_config(&config("trap-on-second"));
    start_all(&mut c, &[]);
    c.assert_full_mesh(Duration::from_secs(30));
    let node = &c.nodes[0];
    let put = |subnet: &str, ip: &str| {
        let key = format!("{}/subnets/{subnet}", c.prefix);
        let value = format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"misbehave"}}"#);
        c.etcdctl(&["put", &key, &value]);
    };
    let route = |dst: &str| node.exec(&["ip", "route", "show", dst]);

    // Lease A: the second batch traps; the restart replays A, so A gets its route.
    put("10.244.240.0-24", "192.168.77.98");
    node.wait_metric(RESTARTS, 1.0, WAIT);
    wait_for("lease A's route", Duration::from_secs(20), || {
        route("10.244.240.0/24")
            .contains("via 192.168.77.98")
            .then_some(())
    });
    // Lease B traps it again (the next restart waits 2 s); A leaves meanwhile.
    put("10.244.241.0-24", "192.168.77.99");
    node.wait_metric(TRAPS, 2.0, WAIT);
    c.etcdctl(&["del", &format!("{}/subnets/10.244.240.0-24", c.prefix)]);
    node.wait_metric(RESTARTS, 2.0, WAIT);
    // The fresh instance was told A is gone, and got B.
    wait_for(
        "lease B's route and A's removal",
        Duration::from_secs(20),
        || {
            (route("10.244.241.0/24").contains("via 192.168.77.99")
                && route("10.244.240.0/24").trim().is_empty())
            .then_some(())
        },
    );
    c.assert_full_mesh(Duration::from_secs(10));
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// A removal whose batch traps the plugin is not lost: the fresh instance is told the
/// peer is gone (before the fix the daemon forgot it had handed the peer before the
/// call, so the replay left its route in place for good).
#[test]
fn a_removal_in_a_batch_that_traps_reaches_the_fresh_instance() {
    let mut c = Cluster::new(2);
    c.put_config(&config("trap-on-removal"));
    start_all(&mut c, &[]);
    c.assert_full_mesh(Duration::from_secs(30));
    let node = &c.nodes[0];
    let key = format!("{}/subnets/10.244.240.0-24", c.prefix);
    let route = || node.exec(&["ip", "route", "show", "10.244.240.0/24"]);
    c.etcdctl(&[
        "put",
        &key,
        r#"{"PublicIP":"192.168.77.98","PublicIPv6":null,"BackendType":"misbehave"}"#,
    ]);
    wait_for("the lease's route", Duration::from_secs(20), || {
        route().contains("via 192.168.77.98").then_some(())
    });
    assert_eq!(node.metric_opt(TRAPS), None, "no trap before the removal");
    // The batch carrying the removal traps the plugin; the restart must replay it.
    c.etcdctl(&["del", &key]);
    wait_trapped_and_restarted(node, 1.0);
    wait_for(
        "the removed lease's route to go",
        Duration::from_secs(20),
        || route().trim().is_empty().then_some(()),
    );
    c.assert_full_mesh(Duration::from_secs(10));
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// The time of day (seconds) of the first log line containing `text`.
fn log_time(log: &str, text: &str) -> f64 {
    let line = log
        .lines()
        .find(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no log line with {text:?}"));
    // 2026-12-02T00:59:22.087024Z …
    let clock = line
        .split('T')
        .nth(1)
        .and_then(|t| t.split('Z').next())
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    clock
        .split(':')
        .map(|part| part.parse::<f64>().expect("a number"))
        .fold(0.0, |acc, part| acc * 60.0 + part)
}

/// Security review L-3: a registered MTU no link can carry (0) ends startup with one
/// line; subnet.env is never written with it.
#[test]
fn a_registered_mtu_outside_the_links_range_is_refused() {
    let mut c = Cluster::new(1);
    c.put_config(&config("mtu"));
    let dir = plugin_dir(&c);
    let (line, _) = c.expect_failure(
        1,
        &["--iface", "eth0", "--plugin-dir", &dir],
        6, // a backend error (docs/operations.md, "Exit status")
        "registered MTU 0, outside 68..=1500",
    );
    println!("{line}");
    assert!(
        c.nodes[0].subnet_env().is_none(),
        "no subnet.env with MTU 0"
    );
}

/// Security review M-2, cleanup: what a trapped instance made and its restarted
/// successor does not make again is removed once the leases are replayed. The plugin
/// (mode `litter-then-trap`) adds eight /27 routes inside the first peer's subnet on
/// its first call, then traps on the second; the fresh instance's replay makes only the
/// peers' own routes.
#[test]
fn what_a_trapped_instance_left_behind_is_removed_after_the_restart() {
    let mut c = Cluster::new(1);
    c.put_config(&config("litter-then-trap"));
    start_all(&mut c, &[]);
    let node = &c.nodes[0];
    let put = |subnet: &str, ip: &str| {
        let key = format!("{}/subnets/{subnet}", c.prefix);
        let value = format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"misbehave"}}"#);
        c.etcdctl(&["put", &key, &value]);
    };
    let litter = |node: &Node| {
        node.exec(&["ip", "route", "show", "root", "10.244.250.0/24"])
            .lines()
            .filter(|l| l.contains("/27"))
            .count()
    };
    put("10.244.250.0-24", "192.168.77.99");
    wait_for("eight litter routes", Duration::from_secs(20), || {
        (litter(node) == 8).then_some(())
    });
    put("10.244.251.0-24", "192.168.77.98");
    node.wait_metric(TRAPS, 1.0, WAIT);
    node.wait_metric(RESTARTS, 1.0, WAIT);
    wait_for("the litter removed", Duration::from_secs(20), || {
        (litter(node) == 0).then_some(())
    });
    for (dst, via) in [
        ("10.244.250.0/24", "192.168.77.99"),
        ("10.244.251.0/24", "192.168.77.98"),
    ] {
        let route = node.exec(&["ip", "route", "show", dst]);
        assert!(
            route.contains(&format!("via {via} dev eth0")),
            "{dst}: {route:?}"
        );
    }
    assert!(
        node.log_text()
            .contains("removed kernel entries an earlier instance or run made"),
        "the removal is logged"
    );
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// One node on the `udp-open` test plugin (from a plugin directory) in `Backend.Mode`
/// `mode` (empty: none), its pod wired.
fn udp_open_node(mode: &str) -> Cluster {
    static OPEN: OnceLock<PathBuf> = OnceLock::new();
    let open = OPEN.get_or_init(|| build_plugin_crate(&test_plugin_dir("udp-open")));
    let mut c = Cluster::new(1);
    c.put_config(&format!(
        r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"udp-open","Mode":"{mode}"}}}}"#
    ));
    let dir = c.dir().join("plugins");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    std::fs::copy(open, dir.join("udp-open.wasm")).expect("copy the plugin");
    let dir = dir.display().to_string();
    c.start_twill_with(1, &["--iface", "eth0", "--plugin-dir", &dir]);
    c.wire_pods();
    c
}

/// Security review L-1: whatever a data-path plugin answers, the host writes into
/// flannel0 only a packet in place of a datagram from a current peer whose subnet holds
/// its inner source. The `udp-open` plugin passes every datagram; a lease makes one
/// outside host a peer (10.244.2.0/24), another sends without one.
#[test]
fn only_a_peers_own_packets_reach_the_pods_whatever_the_plugin_says() {
    let mut c = udp_open_node("");
    let peer = c.add_outside_host("peer", "192.168.77.50");
    let stranger = c.add_outside_host("stranger", "192.168.77.51");
    lease_a_peer(&c);
    let node = &c.nodes[0];
    let pod_rx = || udp_no_ports(node);
    let send = |ns: &str, src: Ipv4Addr| send_inner(node, ns, src);
    let denied = || {
        node.metric_opt(r#"twill_udp_dropped_packets_total{reason="denied"}"#)
            .unwrap_or(0.0)
    };
    // Each case: (sender, inner source, reaches the pod).
    for (what, ns, src, reaches) in [
        (
            "from the peer, its own subnet",
            &peer,
            [10, 244, 2, 7],
            true,
        ),
        ("from a stranger", &stranger, [10, 244, 2, 7], false),
        (
            "from the peer, another subnet's source",
            &peer,
            [10, 244, 3, 7],
            false,
        ),
    ] {
        let (rx, denied_before) = (pod_rx(), denied());
        send(ns, Ipv4Addr::from(src));
        if reaches {
            wait_for(what, Duration::from_secs(10), || {
                (pod_rx() > rx).then_some(())
            });
        } else {
            wait_for(what, Duration::from_secs(10), || {
                (denied() > denied_before).then_some(())
            });
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(pod_rx(), rx, "{what}: nothing reached the pod");
        }
        println!(
            "{what}: {}",
            if reaches { "reached the pod" } else { "denied" }
        );
    }
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// UDP datagrams `node`'s pod received for a closed port (ours go to port 9): the pod's
/// `Udp: NoPorts` counter, untouched by ARP, IPv6 or anything else.
fn udp_no_ports(node: &Node) -> u64 {
    let snmp = twill_e2e::sh(&["ip", "netns", "exec", &node.pod_ns, "cat", "/proc/net/snmp"]);
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        udp.next().expect("Udp names"),
        udp.next().expect("Udp values"),
    );
    let at = names
        .split_whitespace()
        .position(|n| n == "NoPorts")
        .expect("NoPorts column");
    values
        .split_whitespace()
        .nth(at)
        .and_then(|v| v.parse().ok())
        .expect("NoPorts value")
}

/// One datagram to `node`'s :8285 carrying an IPv4/UDP packet from `src` to its pod,
/// sent from namespace `ns` (a socket made inside the sender's namespace keeps it).
fn send_inner(node: &Node, ns: &str, src: Ipv4Addr) {
    let inner = ipv4_udp(src, node.pod_ip().parse().expect("pod IP"));
    let to = std::net::SocketAddrV4::new(node.ip().parse().expect("node IP"), 8285);
    let socket = twill_lab::netns::in_netns(Some(ns), || std::net::UdpSocket::bind("0.0.0.0:0"))
        .expect("a socket in the sender's namespace");
    socket.send_to(&inner, to).expect("send the datagram");
}

/// A lease making the outside host at 192.168.77.50 a udp-open peer with 10.244.2.0/24,
/// and the node knowing it.
fn lease_a_peer(c: &Cluster) {
    c.etcdctl(&[
        "put",
        &format!("{}/subnets/10.244.2.0-24", c.prefix),
        r#"{"PublicIP":"192.168.77.50","PublicIPv6":null,"BackendType":"udp-open"}"#,
    ]);
    wait_for("the peer known", Duration::from_secs(20), || {
        c.nodes[0]
            .api_get("/v1/peers")
            .1
            .contains("10.244.2.0/24")
            .then_some(())
    });
}

/// Audit G-2: a replacement component that loads and initialises but whose data path
/// refuses to attach is refused as a whole: the running plugin, its data path included,
/// stays (same sha256, flannel0 and :8285 socket), and a peer's datagram still reaches
/// the pod afterwards.
#[test]
fn a_reload_whose_data_path_cannot_attach_keeps_the_running_one() {
    let mut c = udp_open_node("");
    let peer = c.add_outside_host("peer", "192.168.77.50");
    lease_a_peer(&c);
    let node = &c.nodes[0];
    let delivered = |what: &str| {
        let before = udp_no_ports(node);
        wait_for(what, Duration::from_secs(10), || {
            send_inner(node, &peer, Ipv4Addr::new(10, 244, 2, 7));
            std::thread::sleep(Duration::from_millis(200));
            (udp_no_ports(node) > before).then_some(())
        });
    };
    delivered("a peer's datagram to reach the pod");
    let ifindex = || node.ifindex("flannel0");
    let (sha, index, socket) = (node.plugin_sha(), ifindex(), node.udp_socket_inode(8285));

    let refusing = build_plugin_crate_with(&test_plugin_dir("udp-open"), &["refuse-attach"]);
    let file = c.dir().join("plugins").join("udp-open.wasm");
    let tmp = file.with_extension("new");
    std::fs::copy(&refusing, &tmp).expect("write the replacement beside");
    std::fs::rename(&tmp, &file).expect("move it in");
    let line = wait_for("the refused reload", Duration::from_secs(20), || {
        node.log_text()
            .lines()
            .find(|l| l.contains("keeping the running plugin"))
            .map(str::to_owned)
    });
    println!("{line}");
    assert!(
        line.contains("refuses to attach its data path on purpose"),
        "the warning carries the plugin's error: {line}"
    );
    assert_eq!(node.plugin_sha(), sha, "the running plugin stays");
    assert_eq!(ifindex(), index, "the same flannel0");
    assert_eq!(node.udp_socket_inode(8285), socket, "the same :8285 socket");
    assert!(
        !node.log_text().contains("backend plugin reloaded"),
        "nothing was reloaded:\n{}",
        node.log_tail()
    );
    delivered("a peer's datagram to reach the pod after the refused reload");
    assert_eq!(c.nodes[0].exited(), None, "the daemon goes on");
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// An IPv4 header (valid checksum) and an 8-byte UDP datagram to port 9.
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 32, 0, 1, 0x40, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let mut sum: u32 = p
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let sum = !u16::try_from(sum).expect("folded");
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&[0x04, 0xd2, 0, 9, 0, 12, 0, 0, b'p', b'i', b'n', b'g']);
    p
}

/// The restart backoff as it happens: a plugin that traps on every batch is restarted
/// after 1 s, then 2 s, then 4 s (doubling up to 30 s while it keeps trapping), each
/// wait announced in the log and kept, measured from the log's own timestamps.
#[test]
fn restarts_back_off_one_two_four_seconds() {
    let mut c = Cluster::new(1);
    c.put_config(&config("trap-always"));
    start_all(&mut c, &[]);
    c.etcdctl(&[
        "put",
        &format!("{}/subnets/10.244.250.0-24", c.prefix),
        r#"{"PublicIP":"192.168.77.99","PublicIPv6":null,"BackendType":"misbehave"}"#,
    ]);
    // (when, announced wait) of each failure; a message may span lines (a wasm
    // backtrace), so the time is that of the last line that starts with one.
    let failures = |c: &Cluster| -> Vec<(f64, u64)> {
        let mut last_at = None;
        let mut found = Vec::new();
        for l in c.nodes[0].log_text().lines() {
            if l.starts_with("20") {
                last_at = l
                    .split('T')
                    .nth(1)
                    .and_then(|t| t.split('Z').next())
                    .and_then(|clock| {
                        let mut hms = clock.split(':');
                        let (h, m, s) = (hms.next()?, hms.next()?, hms.next()?);
                        Some(
                            h.parse::<f64>().ok()? * 3600.0
                                + m.parse::<f64>().ok()? * 60.0
                                + s.parse::<f64>().ok()?,
                        )
                    });
            }
            let wait = l
                .split("restarting it from a fresh instance in ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|w| w.trim_end_matches('s').parse().ok());
            if let (Some(at), Some(wait)) = (last_at, wait) {
                found.push((at, wait));
            }
        }
        found
    };
    let seen = wait_for("four traps", Duration::from_secs(40), || {
        let f = failures(&c);
        (f.len() >= 4).then_some(f)
    });
    let waits: Vec<u64> = seen.iter().take(4).map(|(_, w)| *w).collect();
    assert_eq!(waits, [1, 2, 4, 8], "the announced waits");
    for pair in seen.windows(2).take(3) {
        let (gap, announced) = (pair[1].0 - pair[0].0, pair[0].1 as f64);
        println!("announced {announced} s, next trap {gap:.2} s later");
        assert!(
            gap >= announced && gap < announced + 1.5,
            "restart after {gap:.2} s, announced {announced} s"
        );
    }
    assert_eq!(c.nodes[0].exited(), None, "twill runs on");
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// Audit G-2: a trap in a data-path instance restarts the backend like a control-plane
/// trap, on the same flannel0 and the same :8285 socket: the device keeps its index and
/// route, and the fresh data path receives (and, in this mode, traps on) the next
/// datagram.
#[test]
fn a_trap_in_the_udp_data_path_restarts_it_on_the_same_device_and_socket() {
    let mut c = udp_open_node("trap-in-decap");
    let peer = c.add_outside_host("peer", "192.168.77.50");
    let node = &c.nodes[0];
    let ifindex = || node.ifindex("flannel0");
    let index = ifindex();
    let socket = node.udp_socket_inode(8285);
    let send = || send_inner(node, &peer, Ipv4Addr::new(10, 244, 2, 7));
    const TRAPS: &str = r#"twill_plugin_traps_total{plugin="udp-open"}"#;
    const RESTARTS: &str = r#"twill_plugin_restarts_total{plugin="udp-open"}"#;
    send();
    node.wait_metric(TRAPS, 1.0, WAIT);
    node.wait_metric(RESTARTS, 1.0, WAIT);
    let log = node.log_text();
    assert!(
        log.contains("plugin panicked at") && log.contains("trapping in decap on purpose"),
        "the data path's trap is logged:\n{}",
        node.log_tail()
    );
    assert_eq!(ifindex(), index, "the same flannel0");
    assert!(
        node.exec(&["ip", "route", "show", "10.244.0.0/16"])
            .contains("dev flannel0"),
        "its route stays"
    );
    assert_eq!(
        node.udp_socket_inode(8285),
        socket,
        "the same :8285 socket (inode)"
    );
    // The fresh data path gets the next datagram: in this mode, a second trap.
    wait_for("a second trap from the fresh data path", WAIT, || {
        send();
        std::thread::sleep(Duration::from_millis(500));
        (node.metric(TRAPS) >= 2.0).then_some(())
    });
    assert_eq!(c.nodes[0].exited(), None, "the daemon goes on");
    assert_eq!(c.nodes[0].stop(), Some(0));
}
