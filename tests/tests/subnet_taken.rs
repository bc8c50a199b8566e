//! End to end: another node takes this node's subnet (its lease ran out during a long
//! partition and the subnet was handed out, or an operator's mistake). flanneld exits;
//! twill moves the node to a new subnet without stopping, says so loudly (the log,
//! `/v1/status`, `/readyz`, `twill_subnet_moves_total`), and once the node's pod has an
//! address in the new subnet, all three nodes reach each other — the new holder of the
//! old subnet included.

use std::time::Duration;

use serde_json::Value;
use twill_e2e::{Cluster, wait_for};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

#[test]
fn a_node_whose_subnet_is_taken_moves_to_a_new_one_and_says_so() {
    let mut c = Cluster::new(3);
    c.put_config(CONFIG);
    c.start_twill(1);
    c.start_twill(2);
    c.wire_pod(1);
    c.wire_pod(2);
    c.wait_pair(1, 2);
    let old = c.nodes[0].subnet();
    let old_key = old.replace('/', "-");
    let ours: Value = serde_json::from_str(&c.leases()[&old_key]).expect("lease JSON");

    // Node 3 "took" node 1's subnet: its lease on that key, as if it had acquired it.
    let node3 = c.nodes[2].ip();
    c.etcdctl(&[
        "put",
        &format!("{}/subnets/{old_key}", c.prefix),
        &format!(r#"{{"PublicIP":"{node3}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:03:03"}}}}"#),
    ]);
    let status: Value = wait_for("node 1 to move", Duration::from_secs(30), || {
        let (_, body) = c.nodes[0].api_get("/v1/status");
        let status: Value = serde_json::from_str(&body).ok()?;
        (status["subnet"] != old.as_str()).then_some(status)
    });
    let new = status["subnet"].as_str().expect("a subnet").to_owned();
    assert_eq!(c.nodes[0].exited(), None, "node 1 keeps running");
    let moved = &status["subnet_moved"];
    assert_eq!(moved["from"], old.as_str());
    assert_eq!(moved["to"], new.as_str());
    assert_eq!(moved["taken_by"], node3.as_str());
    let (code, body) = c.nodes[0].api_get("/readyz");
    assert_eq!(code, 503);
    assert!(
        body.contains(&format!("subnet moved from {old} to {new}")),
        "{body}"
    );
    assert_eq!(c.nodes[0].metric("twill_subnet_moves_total"), 1.0);
    let env = c.nodes[0].subnet_env().expect("subnet.env");
    assert_eq!(
        env["FLANNEL_SUBNET"].rsplit_once('.').map(|(net, _)| net),
        new.rsplit_once('.').map(|(net, _)| net),
        "subnet.env names the new subnet: {env:?}"
    );
    let log = c.nodes[0].log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(&format!("this node moved to {new}"))),
        "an error-level line says so:\n{log}"
    );
    // Our new lease carries the same attributes (the VTEP MAC stays).
    let leases = c.leases();
    let mine: Value =
        serde_json::from_str(&leases[&new.replace('/', "-")]).expect("new lease JSON");
    assert_eq!(mine, ours, "the new lease publishes what the old one did");

    // Node 3 starts on the old subnet (its lease is there); node 1's pod gets an
    // address in the new subnet; everyone reaches everyone.
    c.start_twill(3);
    c.wire_pod(3);
    assert_eq!(c.nodes[2].subnet(), old, "node 3 uses the subnet it holds");
    c.rewire_pod(1);
    assert_eq!(c.nodes[0].subnet(), new);
    c.assert_full_mesh(Duration::from_secs(30));
    for (n, code) in c.stop_all_twill() {
        assert_eq!(code, Some(0), "twill on node {n} exits 0");
    }
}
