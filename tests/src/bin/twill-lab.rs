//! `twill-lab`: a whole twill cluster on this machine, for a first look. It builds the
//! end-to-end harness's topology — an etcd namespace, N node namespaces on an underlay
//! bridge, a pod behind each node — runs the real `twill run` on every node, prints the
//! pod-to-pod reachability matrix and the leases, then waits for Ctrl-C (or
//! `--duration` seconds) and removes everything it made.
//!
//! Usage: `twill-lab [--nodes N] [--duration SECONDS]` (as root).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use twill_e2e::Cluster;

fn arg(args: &[String], name: &str) -> Option<u64> {
    let at = args.iter().position(|a| a == name)?;
    let value = args
        .get(at + 1)
        .unwrap_or_else(|| fail(&format!("{name} needs a value")));
    Some(
        value
            .parse()
            .unwrap_or_else(|_| fail(&format!("{name}: {value:?} is not a number"))),
    )
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "usage: twill-lab [--nodes N] [--duration SECONDS]\n\nA twill cluster in network namespaces on this machine (needs root)."
        );
        return;
    }
    let nodes = arg(&args, "--nodes").unwrap_or(3);
    if !(2..=50).contains(&nodes) {
        fail("--nodes must be between 2 and 50");
    }
    let duration = arg(&args, "--duration").map(Duration::from_secs);
    let (stop_tx, stop_rx) = mpsc::channel();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    }) {
        fail(&format!("cannot install the Ctrl-C handler: {e}"));
    }

    let started = Instant::now();
    println!("building {nodes} node namespaces, an underlay bridge and etcd …");
    let mut c = Cluster::new(u8::try_from(nodes).unwrap_or(3));
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    println!("starting twill on every node (vxlan backend) …");
    for k in 1..=c.nodes.len() {
        c.start_twill(k);
    }
    c.wire_pods();
    println!("waiting for the overlay to converge …");
    c.assert_full_mesh(Duration::from_secs(60));

    println!("\nleases in etcd ({}/subnets/):", c.prefix);
    for (key, value) in c.leases() {
        println!("  {key}  {value}");
    }
    println!("\npod-to-pod reachability (ping from row to column):");
    let n = c.nodes.len();
    print!("{:>16}", "");
    for to in &c.nodes {
        print!("{:>16}", to.pod_ip());
    }
    println!();
    let mut ok = 0;
    for from in 1..=n {
        print!("{:>16}", c.nodes[from - 1].pod_ip());
        for to in 1..=n {
            if from == to {
                print!("{:>16}", "-");
            } else if c.pod_ping(from, to) {
                ok += 1;
                print!("{:>16}", "ok");
            } else {
                print!("{:>16}", "FAIL");
            }
        }
        println!();
    }
    println!(
        "reachable {ok}/{}  (cluster up in {:.1}s)",
        n * (n - 1),
        started.elapsed().as_secs_f64()
    );
    println!("namespaces: {}-*   logs: {}", c.id, c.dir().display());
    match duration {
        Some(d) => {
            println!("running for {}s …", d.as_secs());
            let _ = stop_rx.recv_timeout(d);
        }
        None => {
            println!("press Ctrl-C to stop and remove everything");
            let _ = stop_rx.recv();
        }
    }
    println!("stopping: removing namespaces, devices, processes and files …");
    drop(c);
    if ok != n * (n - 1) {
        std::process::exit(1);
    }
}
