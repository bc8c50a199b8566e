//! End to end (issue 15, "no connection broken"): a long-lived TCP connection between
//! pods on two nodes (an 8-byte echo every 20 ms) across everything twill does to a
//! running node — a SIGTERM restart, a SIGKILL restart, a hot reload (SIGHUP), an etcd
//! outage, a peer joining and a peer leaving, the backend's periodic resync (every 2 s
//! here, so it also runs during every other event), and a plugin that traps and is
//! restarted.
//! Not one reset; each event's longest stall is printed and bounded.

use std::time::Duration;

use twill_e2e::{Cluster, sh, wait_for};
use twill_lab::tcp_probe::TcpProbe;

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
/// The longest an event may stall the connection (a retransmission or two).
const MAX_STALL: Duration = Duration::from_secs(2);

/// A long-lived connection from node 1's pod to node 2's, running for a second.
fn open_probe(c: &Cluster, port: u16) -> TcpProbe {
    let probe = TcpProbe::start(
        &c.nodes[0].pod_ns,
        &c.nodes[1].pod_ns,
        &c.nodes[1].pod_ip(),
        port,
    )
    .expect("open the connection");
    std::thread::sleep(Duration::from_secs(1));
    probe
}

fn ready(c: &Cluster, k: usize) {
    wait_for(&format!("node {k} ready"), Duration::from_secs(60), || {
        (c.nodes[k - 1].api_get("/readyz").0 == 200).then_some(())
    });
}

#[test]
fn a_pod_connection_survives_everything_twill_does() {
    let mut c = Cluster::new(3);
    c.twill_env
        .push(("TWILL_RESYNC_INTERVAL".into(), "2".into()));
    c.put_config(CONFIG);
    c.start_twill(1);
    c.start_twill(2);
    c.wire_pod(1);
    c.wire_pod(2);
    c.wait_pair(1, 2);
    let probe = open_probe(&c, 7777);
    let baseline = probe.take();
    assert!(
        baseline.error.is_none() && baseline.echoes > 10,
        "{baseline:?}"
    );

    let mut report = Vec::new();
    let mut check = |what: &str, probe: &TcpProbe| {
        // Let the event's effects settle, then read what the connection saw.
        std::thread::sleep(Duration::from_secs(2));
        let s = probe.take();
        eprintln!(
            "{what}: longest stall {:?}, {} echoes",
            s.longest_gap, s.echoes
        );
        assert!(
            s.error.is_none(),
            "{what}: the connection broke: {:?}",
            s.error
        );
        assert!(s.echoes > 0, "{what}: no echo at all");
        assert!(
            s.longest_gap < MAX_STALL,
            "{what}: stalled {:?}",
            s.longest_gap
        );
        report.push((what.to_owned(), s.longest_gap));
    };

    assert_eq!(c.nodes[0].stop(), Some(0));
    c.start_twill(1);
    ready(&c, 1);
    check("SIGTERM restart of node 1", &probe);

    let pid = c.nodes[1].twill_pid().expect("twill runs on node 2");
    sh(&["kill", "-KILL", &pid.to_string()]);
    c.nodes[1]
        .wait_exit(Duration::from_secs(10))
        .expect("twill killed");
    c.start_twill(2);
    ready(&c, 2);
    check("SIGKILL restart of node 2", &probe);

    let pid = c.nodes[0].twill_pid().expect("twill runs on node 1");
    sh(&["kill", "-HUP", &pid.to_string()]);
    wait_for("the reload", Duration::from_secs(30), || {
        c.nodes[0]
            .log_text()
            .contains("backend plugin reloaded")
            .then_some(())
    });
    check("hot reload (SIGHUP) on node 1", &probe);

    c.stop_etcd();
    std::thread::sleep(Duration::from_secs(5));
    c.restart_etcd();
    check("etcd away for 5 s", &probe);

    c.start_twill(3);
    c.wire_pod(3);
    wait_for("node 3 reaches node 1", Duration::from_secs(30), || {
        c.pod_ping(3, 1).then_some(())
    });
    check("a peer joins", &probe);

    let leaving = c.nodes[2].subnet().replace('/', "-");
    assert_eq!(c.nodes[2].stop(), Some(0));
    c.etcdctl(&["del", &format!("{}/subnets/{leaving}", c.prefix)]);
    wait_for("node 1 drops the peer", Duration::from_secs(30), || {
        let (_, body) = c.nodes[0].api_get("/v1/peers");
        (!body.contains(&c.nodes[2].subnet())).then_some(())
    });
    check("a peer leaves", &probe);

    // Resyncs (init, start, every peer again) ran all along; see two more on node 1.
    let resyncs = |c: &Cluster| c.nodes[0].log_text().matches("periodic resync").count();
    let before = resyncs(&c);
    assert!(before > 0, "node 1 logs its resyncs");
    wait_for(
        "two more resyncs on node 1",
        Duration::from_secs(30),
        || (resyncs(&c) >= before + 2).then_some(()),
    );
    check("two backend resyncs on node 1", &probe);

    drop(probe);
    eprintln!("longest stall per event: {report:?}");
    for (n, code) in c.stop_all_twill() {
        assert_eq!(code, Some(0), "twill on node {n} exits 0");
    }
}

/// The misbehave plugin (host-gw-like) in mode `trap-on-second`: a peer joining makes
/// its second `on-leases` trap; the daemon restarts it and replays the leases. The
/// connection between the first two nodes does not notice.
#[test]
fn a_pod_connection_survives_a_plugin_trap_and_restart() {
    let wasm = twill_e2e::build_plugin_crate(&twill_e2e::test_plugin_dir("misbehave"));
    let mut c = Cluster::new(3);
    c.put_config(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"misbehave","Mode":"trap-on-second"}}"#,
    );
    let dir = c.dir().join("plugins");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    std::fs::copy(&wasm, dir.join("misbehave.wasm")).expect("copy");
    let dir = dir.display().to_string();
    let args = ["--iface", "eth0", "--plugin-dir", dir.as_str()];
    c.start_twill_with(1, &args);
    c.start_twill_with(2, &args);
    c.wire_pod(1);
    c.wire_pod(2);
    c.wait_pair(1, 2);
    let probe = open_probe(&c, 7778);
    probe.take();
    let traps = r#"twill_plugin_traps_total{plugin="misbehave"}"#;
    let before = c.nodes[0].metric_opt(traps).unwrap_or(0.0);
    c.start_twill_with(3, &args);
    c.nodes[0].wait_metric(traps, before + 1.0, Duration::from_secs(40));
    c.nodes[0].wait_metric(
        r#"twill_plugin_restarts_total{plugin="misbehave"}"#,
        1.0,
        Duration::from_secs(40),
    );
    std::thread::sleep(Duration::from_secs(2));
    let s = probe.take();
    eprintln!(
        "plugin trap and restart on node 1: longest stall {:?}, {} echoes",
        s.longest_gap, s.echoes
    );
    assert!(s.error.is_none(), "the connection broke: {:?}", s.error);
    assert!(s.longest_gap < MAX_STALL, "stalled {:?}", s.longest_gap);
    drop(probe);
    for (n, code) in c.stop_all_twill() {
        assert_eq!(code, Some(0), "twill on node {n} exits 0");
    }
}
