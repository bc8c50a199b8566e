//! End to end with etcd as a cluster: three members in their own namespaces, every
//! endpoint given to twill. Losing one member disturbs nothing (no exit, no lost lease,
//! no lost ping, the watch goes on: the test measures how long until a change made
//! after the loss reaches a node). Losing quorum is a whole outage: traffic keeps
//! flowing, `/readyz` and `twill_store_unreachable_seconds` say so once it lasts longer
//! than `--store-unready-after`, and afterwards everything resumes and a new node joins.

use std::time::{Duration, Instant};

use twill_e2e::{Cluster, Etcd, wait_for};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const UNREADY_AFTER: u64 = 8;

/// When node `k` lists `subnet` (`10.244.x.0/24`) in /v1/leases, polled every 50 ms.
fn seen_at(c: &Cluster, k: usize, subnet: &str, timeout: Duration) -> Instant {
    wait_for(&format!("node {k} to see lease {subnet}"), timeout, || {
        let (_, body) = c.nodes[k - 1].api_get("/v1/leases");
        body.contains(&format!("\"{subnet}\"")).then(Instant::now)
    })
}

/// Write a lease for `subnet` (as `10.244.x.0-24`) for an outside node, retrying
/// while the members elect a new leader (as any client would).
fn put_foreign_lease(c: &Cluster, key: &str, ip: &str) {
    let key = format!("{}/subnets/{key}", c.prefix);
    let value = format!(
        r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}}}}"#
    );
    wait_for(
        &format!("etcd to take {key}"),
        Duration::from_secs(30),
        || c.try_etcdctl(&["put", &key, &value]).ok(),
    );
}

#[test]
fn losing_one_member_disturbs_nothing_losing_quorum_is_reported_and_survived() {
    let mut c = Cluster::with_etcd(3, Etcd::Members(3));
    assert!(
        c.etcd_args[1].contains(','),
        "every member is an endpoint: {:?}",
        c.etcd_args
    );
    c.put_config(CONFIG);
    let args = ["--iface", "eth0", "--store-unready-after", "8"];
    c.start_twill_with(1, &args);
    c.start_twill_with(2, &args);
    c.wire_pod(1);
    c.wire_pod(2);
    c.wait_pair(1, 2);
    let leases_before = c.leases();
    assert_eq!(leases_before.len(), 2);

    // One member away at a time, each of the three in turn: one of them carries the
    // lease watch, so one turn measures a real switch.
    for (i, third) in [(0usize, 201u8), (1, 202), (2, 203)] {
        let connects_before = c.nodes[0].metric("twill_etcd_watch_connects_total");
        let ping = c.start_ping(1, 2, 100);
        let lost_at = Instant::now();
        c.etcd_member(i).stop();
        put_foreign_lease(
            &c,
            &format!("10.244.{third}.0-24"),
            &format!("192.168.77.{third}"),
        );
        let written = lost_at.elapsed();
        let subnet = format!("10.244.{third}.0/24");
        let to_1 = seen_at(&c, 1, &subnet, Duration::from_secs(60)) - lost_at;
        let to_2 = seen_at(&c, 2, &subnet, Duration::from_secs(60)) - lost_at;
        let connects = c.nodes[0].metric("twill_etcd_watch_connects_total") - connects_before;
        eprintln!(
            "member e{i} stopped: etcd took a write {written:.2?} later; node 1 had it \
             {to_1:.2?} after the stop ({connects} watch reconnects), node 2 {to_2:.2?}"
        );
        let (sent, received, summary) = ping.finish();
        assert_eq!(
            sent, received,
            "pod traffic lost while e{i} was away: {summary}"
        );
        for k in [1, 2] {
            assert_eq!(c.nodes[k - 1].exited(), None, "node {k} keeps running");
            let (code, body) = c.nodes[k - 1].api_get("/readyz");
            assert_eq!(
                code, 200,
                "node {k} stays ready with two of three members: {body}"
            );
        }
        let leases = c.leases();
        for (key, value) in &leases_before {
            assert_eq!(leases.get(key), Some(value), "lease {key} kept");
        }
        c.etcd_member(i).start().expect("member back");
    }

    // Quorum lost: a whole outage.
    c.etcd_member(0).stop();
    c.etcd_member(1).stop();
    let outage = Instant::now();
    let ping = c.start_ping(1, 2, 150);
    let (code, body) = wait_for(
        "node 1's /readyz to report the store",
        Duration::from_secs(UNREADY_AFTER + 30),
        || {
            let (code, body) = c.nodes[0].api_get("/readyz");
            (code == 503).then_some((code, body))
        },
    );
    let unready_after = outage.elapsed();
    assert_eq!(code, 503);
    assert!(body.contains("lease store unreachable for"), "{body}");
    assert!(
        unready_after >= Duration::from_secs(UNREADY_AFTER),
        "unready after {unready_after:?}, before the {UNREADY_AFTER}s grace"
    );
    let unreachable = c.nodes[0].metric("twill_store_unreachable_seconds");
    assert!(unreachable > UNREADY_AFTER as f64, "metric {unreachable}");
    eprintln!(
        "quorum lost: node 1 unready after {unready_after:.1?}; metric {unreachable}s; {body}"
    );
    let (sent, received, summary) = ping.finish();
    assert_eq!(
        sent, received,
        "pod traffic lost during the outage: {summary}"
    );
    for k in [1, 2] {
        assert_eq!(
            c.nodes[k - 1].exited(),
            None,
            "node {k} survives the outage"
        );
    }

    // Back: ready again, the watch delivers, and a new node joins.
    c.etcd_member(0).start().expect("e0 back");
    c.etcd_member(1).start().expect("e1 back");
    wait_for("node 1 ready again", Duration::from_secs(60), || {
        (c.nodes[0].api_get("/readyz").0 == 200).then_some(())
    });
    assert_eq!(c.nodes[0].metric("twill_store_unreachable_seconds"), 0.0);
    put_foreign_lease(&c, "10.244.204.0-24", "192.168.77.204");
    seen_at(&c, 1, "10.244.204.0/24", Duration::from_secs(60));
    c.start_twill_with(3, &args);
    c.wire_pod(3);
    c.assert_full_mesh(Duration::from_secs(30));
    let leases = c.leases();
    for (key, value) in &leases_before {
        assert_eq!(
            leases.get(key),
            Some(value),
            "lease {key} kept through the outage"
        );
    }
    for k in 1..=3 {
        assert_eq!(c.nodes[k - 1].stop(), Some(0));
    }
}
