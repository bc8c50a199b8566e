//! Switching a cluster's backend, from each backend to each other (audit G-3): after the
//! switch each node has exactly the kernel objects a node of the new backend has, and
//! none of the previous one's, and the pods reach each other.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use twill_e2e::{Cluster, Node};

const BACKENDS: [&str; 4] = ["vxlan", "directrouting", "host-gw", "udp"];

/// A walk through every ordered pair of backends once (an Euler circuit of the complete
/// directed graph on the four): 13 configs, 12 switches.
const WALK: [usize; 13] = [0, 1, 0, 2, 0, 3, 1, 2, 1, 3, 2, 3, 0];

fn config(backend: &str) -> String {
    format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"{backend}"}}}}"#)
}

/// The node's view of the overlay, reduced to what decides where packets go:
/// devices named `flannel*`, routes into the cluster network other than its own
/// subnet's (destination, gateway, device), neighbours and FDB entries on flannel.1,
/// and cluster-network addresses on lo.
#[derive(Debug, PartialEq, Eq)]
struct Overlay {
    links: BTreeSet<String>,
    routes: BTreeSet<String>,
    neighbours: BTreeSet<String>,
    fdb: BTreeSet<String>,
    lo: BTreeSet<String>,
}

fn overlay(node: &Node) -> Overlay {
    let own = node.subnet();
    let links = node
        .exec(&["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .filter(|n| n.starts_with("flannel"))
        .collect();
    let routes = node
        .exec(&["ip", "-o", "route", "show"])
        .lines()
        .filter(|l| l.starts_with("10.244.") && !l.starts_with(&format!("{own} ")))
        .filter(|l| !l.contains("dev cni0") && !l.contains("dev twpod"))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let after = |key: &str| {
                words
                    .iter()
                    .position(|w| *w == key)
                    .and_then(|i| words.get(i + 1))
                    .map_or(String::new(), |v| format!(" {key} {v}"))
            };
            format!("{}{}{}", words[0], after("via"), after("dev"))
        })
        .collect();
    let has_vtep = node
        .exec(&["ip", "-o", "link", "show"])
        .contains("flannel.1");
    let on_vtep = |cmd: &[&str]| -> BTreeSet<String> {
        if !has_vtep {
            return BTreeSet::new();
        }
        node.exec(cmd)
            .lines()
            .filter(|l| l.contains("dst ") || l.contains("lladdr"))
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let lo = node
        .exec(&["ip", "-4", "-o", "addr", "show", "dev", "lo"])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter(|a| a.starts_with("10.244."))
        .map(str::to_owned)
        .collect();
    Overlay {
        links,
        routes,
        neighbours: on_vtep(&["ip", "neigh", "show", "dev", "flannel.1"]),
        fdb: on_vtep(&["bridge", "fdb", "show", "dev", "flannel.1"]),
        lo,
    }
}

/// What a node of `backend` has towards its one peer, on one segment.
fn expected(backend: &str, node: &Node, peer: &Node) -> Overlay {
    let peer_subnet = peer.subnet();
    let peer_vtep = peer_subnet.split('/').next().expect("address").to_owned();
    let set = |items: &[String]| items.iter().cloned().collect::<BTreeSet<String>>();
    let own_addr = node.subnet().split('/').next().expect("address").to_owned();
    let none = BTreeSet::new;
    match backend {
        "vxlan" => Overlay {
            links: set(&["flannel.1".into()]),
            routes: set(&[format!("{peer_subnet} via {peer_vtep} dev flannel.1")]),
            // "<vtep> lladdr <mac>" and "<mac> dst <ip>": the MACs differ per node,
            // so these are checked by count and address below, not here.
            neighbours: none(),
            fdb: none(),
            lo: none(),
        },
        // Every peer is on-link here: plain routes, no vxlan objects for it.
        "directrouting" => Overlay {
            links: set(&["flannel.1".into()]),
            routes: set(&[format!("{peer_subnet} via {} dev eth0", peer.ip())]),
            neighbours: none(),
            fdb: none(),
            lo: none(),
        },
        "host-gw" => Overlay {
            links: none(),
            routes: set(&[format!("{peer_subnet} via {} dev eth0", peer.ip())]),
            neighbours: none(),
            fdb: none(),
            lo: set(&[format!("{own_addr}/32")]),
        },
        "udp" => Overlay {
            links: set(&["flannel0".into()]),
            routes: set(&["10.244.0.0/16 dev flannel0".into()]),
            neighbours: none(),
            fdb: none(),
            lo: none(),
        },
        other => panic!("no expectation for {other}"),
    }
}

fn check(backend: &str, previous: &str, node: &Node, peer: &Node) -> Result<(), String> {
    let mut have = overlay(node);
    let want = expected(backend, node, peer);
    if backend == "vxlan" {
        let peer_vtep = peer.subnet().split('/').next().expect("address").to_owned();
        let neighbour_ok = have.neighbours.len() == 1
            && have
                .neighbours
                .iter()
                .all(|n| n.starts_with(&format!("{peer_vtep} lladdr ")));
        let fdb_ok = have.fdb.len() == 1
            && have
                .fdb
                .iter()
                .all(|f| f.ends_with(&format!("dst {}", peer.ip())));
        if !(neighbour_ok && fdb_ok) {
            return Err(format!(
                "{previous} → vxlan on {}: neighbours {:?}, FDB {:?}",
                node.ns, have.neighbours, have.fdb
            ));
        }
        have.neighbours.clear();
        have.fdb.clear();
    }
    if have == want {
        Ok(())
    } else {
        Err(format!(
            "{previous} → {backend} on {}:\n have {have:#?}\n want {want:#?}",
            node.ns
        ))
    }
}

/// Every ordered pair of {vxlan, directrouting, host-gw, udp}, on two nodes: stop both,
/// change the config, start both; then each node has the new backend's objects and
/// nothing else, and the pods reach each other.
#[test]
fn every_backend_switches_to_every_other_and_leaves_nothing_of_the_previous() {
    let mut c = Cluster::new(2);
    let first = BACKENDS[WALK[0]];
    c.put_config(&config(first));
    c.start_twill(1);
    c.start_twill(2);
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
    let mut failures = Vec::new();
    for step in WALK.windows(2) {
        let (from, to) = (BACKENDS[step[0]], BACKENDS[step[1]]);
        for k in 1..=2 {
            assert_eq!(c.nodes[k - 1].stop(), Some(0), "node {k} stops on {from}");
            // So that wire_pods waits for the new backend's subnet.env (and MTU).
            let _ = std::fs::remove_file(&c.nodes[k - 1].subnet_file);
        }
        c.put_config(&config(to));
        let started = Instant::now();
        c.start_twill(1);
        c.start_twill(2);
        c.wire_pods();
        c.assert_full_mesh(Duration::from_secs(30));
        let took = started.elapsed();
        // The objects settle with the first replay; wait a little for both nodes.
        let outcome = wait_for_ok(|| {
            check(to, from, &c.nodes[0], &c.nodes[1])
                .and_then(|()| check(to, from, &c.nodes[1], &c.nodes[0]))
        });
        eprintln!(
            "{from:>13} → {to:<13} pods reach after {took:.2?}: {}",
            if outcome.is_ok() {
                "clean"
            } else {
                "LEFTOVERS"
            }
        );
        if let Err(e) = outcome {
            failures.push(e);
        }
    }
    for node in &mut c.nodes {
        assert_eq!(node.stop(), Some(0));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A switch made while the nodes' leases ran out (down longer than the 24 h TTL; here
/// the leases are deleted while both are stopped): no lease says what ran before, so
/// the previous backend's devices are what tell. vxlan → udp leaves no flannel.1,
/// then udp → host-gw leaves no flannel0.
#[test]
fn a_switch_after_the_leases_ran_out_leaves_nothing_of_the_previous() {
    let mut c = Cluster::new(2);
    c.put_config(&config("vxlan"));
    c.start_twill(1);
    c.start_twill(2);
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
    for (from, to) in [("vxlan", "udp"), ("udp", "host-gw")] {
        for k in 1..=2 {
            assert_eq!(c.nodes[k - 1].stop(), Some(0), "node {k} stops on {from}");
            let _ = std::fs::remove_file(&c.nodes[k - 1].subnet_file);
        }
        c.etcdctl(&["del", "--prefix", &format!("{}/subnets/", c.prefix)]);
        c.put_config(&config(to));
        c.start_twill(1);
        c.start_twill(2);
        c.wire_pods();
        c.assert_full_mesh(Duration::from_secs(30));
        let outcome = wait_for_ok(|| {
            check(to, from, &c.nodes[0], &c.nodes[1])
                .and_then(|()| check(to, from, &c.nodes[1], &c.nodes[0]))
        });
        assert_eq!(outcome, Ok(()), "{from} → {to} without leases");
        assert!(
            c.nodes[0]
                .log_text()
                .contains("removed the previous backend's objects"),
            "{from} → {to}: the purge is logged:\n{}",
            c.nodes[0].log_tail()
        );
        eprintln!("{from:>7} → {to:<7} after the leases ran out: clean");
    }
    for node in &mut c.nodes {
        assert_eq!(node.stop(), Some(0));
    }
}

/// `check` until it passes, for up to 5 s; its last answer.
fn wait_for_ok(mut check: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let outcome = check();
        if outcome.is_ok() || Instant::now() > deadline {
            return outcome;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
