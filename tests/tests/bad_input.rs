//! End to end: bad input and faults give a clear one-line error and a non-zero exit, or
//! a retry with a log line where waiting is right — never a panic or a backtrace.

use std::time::Duration;

use twill_e2e::{Cluster, wait_for};

/// Run twill on node 1 until it exits; assert a failure with exit status `code` whose
/// only error line contains `want`.
fn expect_failure(c: &mut Cluster, args: &[&str], code: i32, want: &str) {
    c.expect_failure(1, args, code, want);
}

/// The exit statuses of docs/operations.md, "Exit status".
const CONFIG: i32 = 3;
const LEASE: i32 = 5;
const BACKEND: i32 = 6;
const NODE: i32 = 7;

#[test]
fn bad_configs_interfaces_and_backends_fail_with_one_line() {
    let mut c = Cluster::new(1);
    let eth0 = ["--iface", "eth0"];

    c.put_config(r#"{"Network":"10.244.0.0/16","#);
    expect_failure(&mut c, &eth0, CONFIG, "network config is not a JSON object");

    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"nope"}}"#);
    expect_failure(
        &mut c,
        &eth0,
        BACKEND,
        r#"unknown backend type "nope" in Backend.Type (available: directrouting, host-gw, udp, vxlan)"#,
    );

    c.put_config(r#"{"Network":"10.244.0.0/16","SubnetLen":17,"Backend":{"Type":"vxlan"}}"#);
    expect_failure(&mut c, &eth0, CONFIG, "network config field SubnetLen");

    c.put_config(r#"{"Network":"10.244.0.0/30","Backend":{"Type":"vxlan"}}"#);
    expect_failure(
        &mut c,
        &eth0,
        CONFIG,
        "network config field Network: 10.244.0.0/30 is too small",
    );

    // Security review M-1: a network over the host's own ranges or its own address.
    c.put_config(r#"{"Network":"0.0.0.0/0","Backend":{"Type":"vxlan"}}"#);
    expect_failure(
        &mut c,
        &eth0,
        CONFIG,
        "overlaps the loopback range 127.0.0.0/8",
    );
    c.put_config(r#"{"Network":"192.168.0.0/16","Backend":{"Type":"vxlan"}}"#);
    expect_failure(
        &mut c,
        &eth0,
        CONFIG,
        "contains this node's public IP 192.168.77.1",
    );

    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":"x"}}"#);
    expect_failure(&mut c, &eth0, BACKEND, "Backend.VNI");

    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    expect_failure(
        &mut c,
        &["--iface", "eth9"],
        NODE,
        "interface eth9 not found",
    );
    expect_failure(
        &mut c,
        &["--iface", "10.9.9.9"],
        NODE,
        "interface 10.9.9.9 not found",
    );
    // A network whose only subnet another node holds: a lease error.
    c.put_config(
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.1.0","Backend":{"Type":"vxlan"}}"#,
    );
    c.etcdctl(&[
        "put",
        &format!("{}/subnets/10.244.1.0-24", c.prefix),
        r#"{"PublicIP":"192.168.77.99","BackendType":"vxlan"}"#,
    ]);
    expect_failure(&mut c, &eth0, LEASE, "acquire a subnet lease");
    assert!(
        !c.nodes[0].subnet_file.exists(),
        "no subnet.env after failures"
    );
}

#[test]
fn missing_config_and_unreachable_etcd_are_waited_for() {
    let mut c = Cluster::new(1);
    // No config yet: twill says it waits, and goes on once the config appears.
    c.start_twill(1);
    wait_for(
        "the waiting-for-config log line",
        Duration::from_secs(20),
        || {
            c.nodes[0]
                .log_text()
                .contains("waiting for the network config at /coreos.com/network/config")
                .then_some(())
        },
    );
    assert_eq!(c.nodes[0].exited(), None, "twill keeps waiting");
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    wait_for(
        "subnet.env once the config exists",
        Duration::from_secs(30),
        || c.nodes[0].subnet_file.exists().then_some(()),
    );
    assert_eq!(c.nodes[0].stop(), Some(0));
    std::fs::write(&c.nodes[0].log, "").expect("truncate log");

    // etcd down at start: retries with a log line, then carries on when etcd is back.
    c.stop_etcd();
    std::fs::remove_file(&c.nodes[0].subnet_file).expect("remove subnet.env");
    c.start_twill(1);
    wait_for(
        "a retry log line while etcd is down",
        Duration::from_secs(30),
        || {
            c.nodes[0]
                .log_text()
                .contains("cannot read the network config from the store")
                .then_some(())
        },
    );
    assert_eq!(c.nodes[0].exited(), None, "twill keeps retrying");
    c.restart_etcd();
    wait_for(
        "subnet.env once etcd is back",
        Duration::from_secs(40),
        || c.nodes[0].subnet_file.exists().then_some(()),
    );
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// SIGTERM while twill still waits (here for the network config, as it would for etcd)
/// stops it at once with exit status 0, as it does once running; before, a SIGTERM
/// before the main loop killed the process by the signal's default action.
#[test]
fn a_sigterm_during_startup_stops_cleanly() {
    let mut c = Cluster::new(1);
    c.start_twill(1);
    wait_for(
        "twill waiting for the config",
        Duration::from_secs(20),
        || {
            c.nodes[0]
                .log_text()
                .contains("waiting for the network config")
                .then_some(())
        },
    );
    let started = std::time::Instant::now();
    assert_eq!(c.nodes[0].stop(), Some(0), "exit status 0");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        c.nodes[0]
            .log_text()
            .contains("SIGTERM received during startup; stopping"),
        "{}",
        c.nodes[0].log_text()
    );
}
