//! End to end with real podman (CNI backend) on two twill nodes, using twill as
//! flannel's CNI plugin (`twill install-cni`, invoked as `flannel`) with kube-flannel's
//! conflist: containers get addresses in their node's subnet, reach each other across
//! nodes, and DEL releases the address; a bad config and a missing subnet.env are CNI
//! errors that say what is wrong.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_e2e::{Cluster, path_arg, sh, twill_bin, wait_for};
use twill_lab::podman::Podman;

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// kube-flannel's conflist as `twill install-cni` writes it, with the network renamed
/// for this test and the flannel plugin pointed at this node's subnet.env, data
/// directory and host-local directory (all nodes share this machine's files).
fn conflist(installed: &str, name: &str, subnet_file: &Path, data: &Path) -> String {
    let mut v: Value = serde_json::from_str(installed).expect("the installed conflist is JSON");
    v["name"] = name.into();
    if name.ends_with("-v1") {
        // A CNI 1.0.0 network (kube-flannel's is 0.3.1, which has no CHECK).
        v["cniVersion"] = "1.0.0".into();
    }
    let flannel = &mut v["plugins"][0];
    assert_eq!(flannel["type"], "flannel");
    flannel["subnetFile"] = path_arg(subnet_file).into();
    flannel["dataDir"] = path_arg(&data.join("flannel")).into();
    flannel["ipam"] = serde_json::json!({"dataDir": path_arg(&data.join("ipam"))});
    v.to_string()
}

/// Run `bin` as a CNI plugin with `command` and `stdin`; (exit success, stdout).
fn cni(bin: &Path, command: &str, cni_path: &Path, stdin: &str) -> (bool, Value) {
    let mut child = Command::new(bin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "twill-e2e-direct")
        .env("CNI_NETNS", "/nonexistent")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), v)
}

#[test]
fn podman_containers_use_twill_as_flannels_cni_plugin() {
    let mut c = Cluster::new(2);
    c.put_config(CONFIG);
    c.start_twill(1);
    c.start_twill(2);
    let net = format!("{}-cbr0", c.id);

    // The CNI bin directory: Debian's plugins and twill installed as `flannel`.
    let bin = c.dir().join("cni-bin");
    let conf_dir = c.dir().join("cni-conf");
    sh(&[
        &path_arg(&twill_bin()),
        "install-cni",
        "--bin-dir",
        &path_arg(&bin),
        "--conf-dir",
        &path_arg(&conf_dir),
    ]);
    twill_lab::podman::link_cni_plugins(&bin).expect("link the CNI plugins");
    let installed = std::fs::read_to_string(conf_dir.join("10-flannel.conflist"))
        .expect("install-cni wrote the conflist");
    assert!(installed.contains(r#""type": "flannel""#), "{installed}");

    // VERSION, then a bad config: CNI error objects.
    let (ok, v) = cni(&bin.join("flannel"), "VERSION", &bin, "{}");
    assert!(
        ok && v["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.len() >= 5),
        "{v}"
    );
    let (ok, v) = cni(
        &bin.join("flannel"),
        "ADD",
        &bin,
        r#"{"cniVersion":"0.3.1","name":"x","type":"flannel","delegate":"bridge"}"#,
    );
    assert!(!ok);
    assert_eq!(v["code"], 7, "{v}");
    assert!(
        v["msg"]
            .as_str()
            .is_some_and(|m| m.contains("delegate must be an object")),
        "{v}"
    );
    let (ok, v) = cni(&bin.join("flannel"), "ADD", &bin, "not json");
    assert!(!ok);
    assert_eq!(v["code"], 6, "{v}");

    let mut podmans = Vec::new();
    let mut ips = Vec::new();
    for k in 1..=2 {
        let node = &c.nodes[k - 1];
        let subnet_file = node.subnet_file.clone();
        wait_for("subnet.env", Duration::from_secs(60), || {
            subnet_file.exists().then_some(())
        });
        let dir = c.dir().join(format!("podman-{k}"));
        let p = Podman::new(&node.ns, &dir, &bin).expect("podman");
        // Node 1: kube-flannel's conflist as it is (CNI 0.3.1); node 2: the same at 1.0.0.
        let name = if k == 1 {
            net.clone()
        } else {
            format!("{net}-v1")
        };
        std::fs::write(
            p.network_dir().join(format!("{name}.conflist")),
            conflist(&installed, &name, &node.subnet_file, &dir),
        )
        .expect("write the conflist");
        let ip = p
            .run(&format!("c{k}"), &name, &["/bin/sleep", "600"])
            .expect("podman run");
        let subnet = node.subnet();
        let prefix = subnet.rsplit_once('.').map(|(p, _)| p).expect("subnet");
        assert!(
            ip.starts_with(&format!("{prefix}.")),
            "container {ip} in {subnet}"
        );
        let mtu = p
            .podman(&["exec", &format!("c{k}"), "cat", "/sys/class/net/eth0/mtu"])
            .expect("mtu");
        assert_eq!(mtu.trim(), "1450", "the MTU from subnet.env");
        ips.push(ip);
        podmans.push(p);
    }
    wait_for("c1 reaches c2", Duration::from_secs(30), || {
        podmans[0]
            .podman(&["exec", "c1", "ping", "-c", "2", "-W", "2", &ips[1]])
            .ok()
    });
    podmans[1]
        .podman(&["exec", "c2", "ping", "-c", "2", "-W", "2", &ips[0]])
        .expect("c2 reaches c1");

    // CHECK, as a runtime calls it: the container's id, netns and the ADD's result as
    // prevResult (from podman's CNI cache). It passes, and fails for a wrong address.
    let id = podmans[1]
        .podman(&["inspect", "-f", "{{.Id}}", "c2"])
        .expect("id");
    let netns = podmans[1]
        .podman(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", "c2"])
        .expect("netns");
    let net2 = format!("{net}-v1");
    let cache = std::fs::read_to_string(format!("/var/lib/cni/results/{net2}-{}-eth0", id.trim()))
        .expect("podman's cached ADD result");
    let cached: Value = serde_json::from_str(&cache).expect("cache JSON");
    let mut conf: Value = serde_json::from_str(&conflist(
        &installed,
        &net2,
        &c.nodes[1].subnet_file,
        &c.dir().join("podman-2"),
    ))
    .expect("conf");
    let mut flannel = conf["plugins"][0].take();
    flannel["name"] = net2.clone().into();
    flannel["cniVersion"] = conf["cniVersion"].clone();
    flannel["prevResult"] = cached["result"].clone();
    // CHECK runs in the node's namespace, as the runtime's plugin calls do.
    let node2 = c.nodes[1].ns.clone();
    let check = |conf: &Value| {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &node2])
            .arg(bin.join("flannel"))
            .env("CNI_COMMAND", "CHECK")
            .env("CNI_CONTAINERID", id.trim())
            .env("CNI_NETNS", netns.trim())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run CHECK");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("stdin");
        let out = child.wait_with_output().expect("wait");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = check(&flannel);
    assert!(ok, "CHECK of a healthy container fails: {out}");
    let mut wrong = flannel.clone();
    let addrs = wrong["prevResult"]["ips"]
        .as_array_mut()
        .expect("prevResult.ips");
    addrs[0]["address"] = "10.244.254.9/24".into();
    let (ok, out) = check(&wrong);
    assert!(!ok, "CHECK passed a wrong address: {out}");
    eprintln!("CHECK with a wrong address: {out}");
    let mut old = flannel.clone();
    old["cniVersion"] = "0.3.1".into();
    let (ok, out) = check(&old);
    assert!(!ok && out.contains("does not allow CHECK"), "{out}");

    // DEL releases the address and the saved delegate config.
    let dir1 = c.dir().join("podman-1");
    let lease = dir1.join("ipam").join(&net).join(&ips[0]);
    assert!(lease.exists(), "host-local holds {}", lease.display());
    let saved = std::fs::read_dir(dir1.join("flannel"))
        .expect("flannel data dir")
        .count();
    assert_eq!(saved, 1, "one delegate config saved per container");
    podmans[0]
        .podman(&["rm", "-f", "-t", "0", "c1"])
        .expect("podman rm");
    assert!(!lease.exists(), "DEL released {}", ips[0]);
    assert_eq!(
        std::fs::read_dir(dir1.join("flannel"))
            .expect("dir")
            .count(),
        0
    );

    // subnet.env missing: ADD waits its bounded time, then says twill is not running.
    let missing = c.dir().join("no-such-subnet.env");
    let broken = format!("{net}-nosubnet");
    std::fs::write(
        podmans[0].network_dir().join(format!("{broken}.conflist")),
        conflist(&installed, &broken, &missing, &dir1),
    )
    .expect("write the conflist");
    let started = Instant::now();
    let out = podmans[0]
        .podman_output(&podmans[0].run_args("c3", &broken, &["/bin/sleep", "60"]))
        .expect("podman");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("does not exist after 10s: twill is not running on this node"),
        "{stderr}"
    );
    eprintln!(
        "missing subnet.env: podman failed after {:.1?}",
        started.elapsed()
    );

    drop(podmans);
    for (n, code) in c.stop_all_twill() {
        assert_eq!(code, Some(0), "twill on node {n} exits 0");
    }
}
