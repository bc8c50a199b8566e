//! End to end (security review M-1): twill replaces and deletes only its own routes
//! (protocol 167) and flannel's (protocol boot, through its device), never an
//! operator's. Two vxlan nodes, node 1 repairing every second.

use std::time::Duration;

use serde_json::Value;
use twill_e2e::{Cluster, wait_for};

/// Node 1's route to `subnet`, as `ip route show` prints it.
fn route_on_1(c: &Cluster, subnet: &str) -> String {
    c.nodes[0]
        .exec(&["ip", "route", "show", subnet])
        .trim()
        .to_owned()
}

/// Node 2 as node 1's `/v1/peers` has it.
fn peer(c: &Cluster, subnet: &str) -> Value {
    let (_, body) = c.nodes[0].api_get("/v1/peers");
    let v: Value = serde_json::from_str(&body).expect("/v1/peers JSON");
    v["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["subnet"] == subnet)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn an_operators_route_is_never_replaced_or_deleted() {
    let mut c = Cluster::new(2);
    c.twill_env
        .push(("TWILL_RESYNC_INTERVAL".into(), "1".into()));
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    c.start_twill(1);
    c.start_twill(2);
    c.wire_pods();
    c.wait_pair(1, 2);
    let two = c.nodes[1].subnet();
    let ours = route_on_1(&c, &two);
    assert!(
        ours.contains("dev flannel.1") && ours.contains("proto 167"),
        "{ours}"
    );

    // An operator routes node 2's subnet elsewhere (as a static route).
    c.nodes[0].exec(&[
        "ip",
        "route",
        "replace",
        &two,
        "via",
        "192.168.77.254",
        "dev",
        "eth0",
        "proto",
        "static",
    ]);
    wait_for("node 2 in error on node 1", Duration::from_secs(20), || {
        let p = peer(&c, &two);
        (p["state"] == "error").then_some(p)
    });
    // Several repairs later, the operator's route is still there.
    std::thread::sleep(Duration::from_secs(3));
    let now = route_on_1(&c, &two);
    assert!(
        now.contains("via 192.168.77.254") && now.contains("proto static"),
        "{now}"
    );
    let p = peer(&c, &two);
    let message = p["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("is not twill's"), "{p}");
    assert!(
        c.nodes[0].log_text().contains("is not twill's"),
        "the conflict is logged"
    );

    // Node 2 leaves: its removal deletes nothing of the operator's.
    let key = two.replace('/', "-");
    assert_eq!(c.nodes[1].stop(), Some(0));
    c.etcdctl(&["del", &format!("{}/subnets/{key}", c.prefix)]);
    wait_for("node 1 drops node 2", Duration::from_secs(20), || {
        peer(&c, &two).is_null().then_some(())
    });
    let after = route_on_1(&c, &two);
    assert!(
        after.contains("via 192.168.77.254"),
        "the operator's route stays: {after:?}"
    );

    // Node 2 back, the operator's route gone: twill's route returns at the next repair.
    c.nodes[0].exec(&["ip", "route", "del", &two]);
    c.start_twill(2);
    let two = {
        c.wait_pair(1, 2);
        c.nodes[1].subnet()
    };
    wait_for("node 2 programmed again", Duration::from_secs(20), || {
        (peer(&c, &two)["state"] == "programmed").then_some(())
    });
    assert!(route_on_1(&c, &two).contains("proto 167"));

    // A route as flannel writes it (protocol boot, through flannel.1) is adopted.
    let gw = two.replace(".0/24", ".0");
    c.nodes[0].exec(&[
        "ip",
        "route",
        "replace",
        &two,
        "via",
        &gw,
        "dev",
        "flannel.1",
        "onlink",
        "proto",
        "boot",
    ]);
    wait_for(
        "flannel's route adopted and tagged",
        Duration::from_secs(20),
        || route_on_1(&c, &two).contains("proto 167").then_some(()),
    );
    assert_eq!(peer(&c, &two)["state"], "programmed");
    for (n, code) in c.stop_all_twill() {
        assert_eq!(code, Some(0), "twill on node {n} exits 0");
    }
}
