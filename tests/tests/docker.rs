//! End to end with a real dockerd on each twill node, started with the options
//! `twill docker-opts` writes from subnet.env (flannel's mk-docker-opts.sh): `docker
//! run` containers get addresses in their node's subnet and reach each other across
//! nodes, with Docker's own FORWARD rules and a DROP policy in place — thanks to
//! twill's forward rules, as turning them off shows.

use std::time::Duration;

use twill_e2e::{Cluster, path_arg, sh, twill_bin, wait_for};
use twill_lab::docker::Dockerd;

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// dockerd's options for node `k`, from `twill docker-opts`.
fn docker_opts(c: &Cluster, k: usize) -> Vec<String> {
    let file = c.dir().join(format!("docker_opts-{k}.env"));
    sh(&[
        path_arg(&twill_bin()).as_str(),
        "docker-opts",
        "-f",
        &path_arg(&c.nodes[k - 1].subnet_file),
        "-d",
        &path_arg(&file),
    ]);
    let text = std::fs::read_to_string(&file).expect("docker_opts.env");
    let combined = text
        .lines()
        .find_map(|l| l.strip_prefix("DOCKER_OPTS="))
        .unwrap_or_else(|| panic!("no DOCKER_OPTS in:\n{text}"));
    combined
        .trim_matches('"')
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn pings(d: &Dockerd, container: &str, dst: &str) -> bool {
    d.docker(&["exec", container, "ping", "-c", "2", "-W", "2", dst])
        .is_ok()
}

#[test]
fn docker_containers_on_two_nodes_reach_each_other_through_dockers_forward_drop() {
    let mut c = Cluster::new(2);
    c.put_config(CONFIG);
    c.start_twill(1);
    c.start_twill(2);
    let mut dockers = Vec::new();
    let mut ips = Vec::new();
    for k in 1..=2 {
        let subnet_file = c.nodes[k - 1].subnet_file.clone();
        wait_for("subnet.env", Duration::from_secs(60), || {
            subnet_file.exists().then_some(())
        });
        let opts = docker_opts(&c, k);
        assert!(
            opts.iter().any(|o| o.starts_with("--bip=10.244.")),
            "{opts:?}"
        );
        assert!(opts.contains(&"--mtu=1450".to_owned()), "{opts:?}");
        assert!(opts.contains(&"--ip-masq=true".to_owned()), "{opts:?}");
        // What dockerd does on a host where it turns forwarding on.
        c.nodes[k - 1].iptables(&["-P", "FORWARD", "DROP"]);
        let dir = c.dir().join(format!("docker-{k}"));
        let d = Dockerd::start(&c.nodes[k - 1].ns, &dir, &opts).expect("start dockerd");
        d.import_busybox("bb:1").expect("busybox image");
        let ip = d
            .run(&format!("c{k}"), "bb:1", &["/bin/sleep", "600"])
            .expect("docker run");
        let subnet = c.nodes[k - 1].subnet();
        let prefix = subnet.rsplit_once('.').map(|(p, _)| p).expect("subnet");
        assert!(
            ip.starts_with(&format!("{prefix}.")),
            "container {ip} in {subnet}"
        );
        ips.push(ip);
        dockers.push(d);
    }
    let forward = c.nodes[0].iptables(&["-S", "FORWARD"]);
    assert!(
        forward.contains("-P FORWARD DROP") && forward.contains("DOCKER-USER"),
        "{forward}"
    );
    assert!(forward.contains("twill forward"), "{forward}");

    wait_for("c1 reaches c2", Duration::from_secs(30), || {
        pings(&dockers[0], "c1", &ips[1]).then_some(())
    });
    assert!(pings(&dockers[1], "c2", &ips[0]), "c2 reaches c1");

    // Without twill's forward rules, Docker's DROP stops the overlay into node 1.
    assert_eq!(c.nodes[0].stop(), Some(0));
    c.start_twill_with(1, &["--iface", "eth0", "--iptables-forward-rules=false"]);
    wait_for(
        "node 1's forward rules removed",
        Duration::from_secs(30),
        || {
            (!c.nodes[0]
                .iptables(&["-S", "FORWARD"])
                .contains("twill forward"))
            .then_some(())
        },
    );
    assert!(
        !pings(&dockers[1], "c2", &ips[0]),
        "DROP applies without the rules"
    );
    assert_eq!(c.nodes[0].stop(), Some(0));
    c.start_twill(1);
    wait_for("c2 reaches c1 again", Duration::from_secs(30), || {
        pings(&dockers[1], "c2", &ips[0]).then_some(())
    });
    drop(dockers);
    for (n, code) in c.stop_all_twill() {
        assert_eq!(code, Some(0), "twill on node {n} exits 0");
    }
}
