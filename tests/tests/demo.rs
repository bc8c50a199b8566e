//! `twill demo`: a run for `--duration` converges (every node running the real
//! `twill run` on one shared embedded-store file) and exits 0, and neither it nor a demo
//! killed with SIGTERM halfway leaves a namespace, device, process or file behind.
//! Also `twill config set`, which writes the embedded store's config.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use twill_e2e::{require_privileges_and_tools, run, sh, twill_bin};

/// A started demo whose stdout lines arrive on a channel.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(twill_bin())
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start twill demo");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("demo: {line}");
                // Keep reading after the test let go, so the demo never writes into a
                // closed pipe while it cleans up.
                let _ = tx.send(line);
            }
        });
        Demo {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Read lines until one contains `text`; panic after `timeout` or at the end.
    fn wait_line(&mut self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line with {text:?} from the demo ({e}); it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The rest of the output and the exit code, within `timeout`.
    fn finish(mut self, timeout: Duration) -> (i32, Vec<String>) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
                    self.seen.push(line);
                }
                return (status.code().unwrap_or(-1), std::mem::take(&mut self.seen));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the demo did not exit within {timeout:?}; it printed:\n{}",
                    self.seen.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn sigterm(&self) {
        sh(&["kill", "-TERM", &self.child.id().to_string()]);
    }
}

impl Drop for Demo {
    /// A test that fails halfway still stops its demo, which removes what it made.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = run(&["kill", "-TERM", &self.child.id().to_string()]);
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The demo's id and directory from its first lines:
/// `twill demo <id>: …` and `namespaces <id>-*, files in <dir>`.
fn identity(demo: &mut Demo) -> (String, PathBuf) {
    let first = demo.wait_line("twill demo ", Duration::from_secs(30));
    let id = first
        .trim_start_matches("twill demo ")
        .split(':')
        .next()
        .expect("id")
        .to_owned();
    let second = demo.wait_line("files in ", Duration::from_secs(5));
    let dir = PathBuf::from(second.split("files in ").nth(1).expect("dir").trim());
    assert!(id.starts_with("twd") && id.len() == 7, "odd demo id {id:?}");
    (id, dir)
}

fn host_links() -> String {
    let out = sh(&["ip", "-o", "link", "show"]);
    let mut names: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(str::trim))
        .collect();
    names.sort_unstable();
    names.join(" ")
}

/// The network namespaces of demo `id` that exist now, by inode (what
/// `/proc/<pid>/ns/net` of a process inside one links to: `net:[<inode>]`).
fn namespace_inodes(id: &str) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    sh(&["ip", "netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(&format!("{id}-")))
        .filter_map(|ns| std::fs::metadata(format!("/run/netns/{ns}")).ok())
        .map(|m| m.ino())
        .collect()
}

/// Processes still inside one of these namespaces (`ip netns exec` runs iperf3 and
/// ping under their own names, so only their namespace tells they were the demo's;
/// a process keeps its namespace alive after `ip netns del`).
fn processes_in(inodes: &[u64]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(link) = std::fs::read_link(entry.path().join("ns/net")) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        if inodes.iter().any(|i| link == format!("net:[{i}]")) {
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            found.push(format!("{pid}: {cmd}"));
        }
    }
    found
}

/// Nothing of demo `id` is left: namespaces, processes whose command line names the
/// demo or that run inside one of its namespaces (`inodes`, collected while it ran),
/// its directory, host devices beyond those before.
fn assert_nothing_left(id: &str, dir: &Path, links_before: &str, inodes: &[u64]) {
    let inside = processes_in(inodes);
    assert!(
        inside.is_empty(),
        "processes left inside the demo's namespaces: {inside:?}"
    );
    let netns = sh(&["ip", "netns", "list"]);
    let left: Vec<&str> = netns
        .lines()
        .filter(|l| l.starts_with(&format!("{id}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let procs = run(&["pgrep", "-af", id]);
    let procs = String::from_utf8_lossy(&procs.stdout).into_owned();
    let procs: Vec<&str> = procs.lines().filter(|l| !l.contains("pgrep")).collect();
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert_eq!(
        host_links(),
        links_before,
        "the host namespace's devices changed"
    );
}

#[test]
fn demo_converges_on_the_embedded_store_and_leaves_nothing() {
    require_privileges_and_tools();
    let links_before = host_links();
    let mut demo = Demo::start(&["--nodes", "3", "--duration", "5"]);
    let (id, dir) = identity(&mut demo);
    let store = demo.seen[0].clone();
    // While iperf3 and ping run in the pods.
    demo.wait_line("reachable 6/6", Duration::from_secs(120));
    let inodes = namespace_inodes(&id);
    assert!(inodes.len() >= 6, "three nodes and their pods: {inodes:?}");
    assert!(
        store.contains("store embedded") && store.contains(&dir.display().to_string()),
        "not one shared embedded store file in the demo's directory: {store}"
    );
    let (code, lines) = demo.finish(Duration::from_secs(240));
    let text = lines.join("\n");
    assert_eq!(code, 0, "demo failed:\n{text}");
    for expected in [
        "starting nodes",
        "waiting for convergence",
        "throughput pod 1 → pod 2:",
        "dashboard (node 1's API, proxied from this host's loopback): http://127.0.0.1:",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    assert_nothing_left(&id, &dir, &links_before, &inodes);
}

/// `--runtime docker|podman`: real containers are the pods, they converge, and the
/// runtime's processes and mounts go with the demo.
fn demo_with_runtime(runtime: &str) {
    require_privileges_and_tools();
    let links_before = host_links();
    let mut demo = Demo::start(&["--nodes", "2", "--duration", "2", "--runtime", runtime]);
    let (id, dir) = identity(&mut demo);
    demo.wait_line("reachable 2/2", Duration::from_secs(180));
    let inodes = namespace_inodes(&id);
    assert!(
        inodes.len() >= 4,
        "two nodes and their containers: {inodes:?}"
    );
    let (code, lines) = demo.finish(Duration::from_secs(240));
    let text = lines.join("\n");
    assert_eq!(code, 0, "demo failed:\n{text}");
    for expected in [
        format!("starting a {runtime} container on every node"),
        "-n1: container 10.244.".to_owned(),
        format!("explore: ip netns exec {id}-c1 ping 10.244."),
    ] {
        assert!(text.contains(&expected), "no {expected:?} in:\n{text}");
    }
    assert_nothing_left(&id, &dir, &links_before, &inodes);
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(!mounts.contains(&id), "mounts left:\n{mounts}");
    let daemons = run(&["pgrep", "-af", &id]);
    assert!(
        String::from_utf8_lossy(&daemons.stdout).trim().is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&daemons.stdout)
    );
}

#[test]
fn demo_with_docker_containers() {
    demo_with_runtime("docker");
}

#[test]
fn demo_with_podman_containers() {
    demo_with_runtime("podman");
}

#[test]
fn demo_killed_with_sigterm_halfway_leaves_nothing() {
    require_privileges_and_tools();
    let links_before = host_links();
    let mut demo = Demo::start(&["--nodes", "3", "--duration", "60"]);
    let (id, dir) = identity(&mut demo);
    demo.wait_line("starting nodes", Duration::from_secs(60));
    let inodes = namespace_inodes(&id);
    assert!(!inodes.is_empty(), "the nodes' namespaces exist");
    demo.sigterm();
    let (code, lines) = demo.finish(Duration::from_secs(60));
    let text = lines.join("\n");
    assert!(
        text.contains("SIGTERM received"),
        "no SIGTERM notice in:\n{text}"
    );
    assert_ne!(code, 0, "a demo stopped before it was up reports failure");
    assert_nothing_left(&id, &dir, &links_before, &inodes);
}

#[test]
fn config_set_validates_and_writes_the_embedded_store() {
    let dir = std::env::temp_dir().join(format!("twill-config-{:04x}", rand::random::<u16>()));
    let path = dir.join("leases.db");
    let path_arg = path.display().to_string();
    let set = |json: &str| {
        Command::new(twill_bin())
            .args(["config", "set", "--store-path", &path_arg, json])
            .output()
            .expect("run twill config set")
    };
    let bad = set(r#"{"Network":"10.244.0.0/16","SubnetLen":33}"#);
    assert!(!bad.status.success(), "an invalid config was accepted");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("SubnetLen"),
        "the error names the field: {stderr}"
    );
    assert!(
        !path.exists(),
        "an invalid config created {}",
        path.display()
    );
    let json = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    let ok = set(json);
    assert!(
        ok.status.success(),
        "twill config set failed: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // What a node reads back is exactly what was given.
    let store = twill_store::EmbeddedStore::open(&path, "/coreos.com/network").expect("open");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stored = runtime
        .block_on(twill_store::LeaseStore::get_config(&store))
        .expect("read the config");
    assert_eq!(stored.as_deref(), Some(json));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An etcd on this host's loopback, on ports of its own, for the demo's
/// `--etcd-endpoints`; killed and its data removed on drop.
struct LoopbackEtcd {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl LoopbackEtcd {
    fn start() -> LoopbackEtcd {
        let base = 20_000 + u32::from(rand::random::<u16>() % 20_000);
        let (client, peer) = (
            format!("http://127.0.0.1:{base}"),
            format!("http://127.0.0.1:{}", base + 1),
        );
        let dir = std::env::temp_dir().join(format!("twill-demo-etcd-{base}"));
        let child = Command::new("etcd")
            .args(["--name", "demo-test", "--data-dir"])
            .arg(&dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("demo-test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        let etcd = LoopbackEtcd {
            child,
            dir,
            url: client,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !etcd.etcdctl(&["endpoint", "health"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "etcd on {} did not come up",
                etcd.url
            );
            thread::sleep(Duration::from_millis(200));
        }
        etcd
    }

    fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("etcdctl")
            .args(["--endpoints", &self.url])
            .args(args)
            .output()
            .expect("etcdctl (Debian package etcd-client)")
    }

    /// Every key under `prefix`.
    fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.etcdctl(&["get", "--prefix", "--keys-only", prefix]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for LoopbackEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The README's other demo: `--backend host-gw --nodes 5 --etcd-endpoints …`. Five
/// nodes on a real etcd converge (20 pairs), their leases are under the demo's own
/// prefix while it runs, and at exit the prefix is gone, with nothing else left.
#[test]
fn demo_on_host_gw_with_five_nodes_on_an_etcd() {
    require_privileges_and_tools();
    let etcd = LoopbackEtcd::start();
    let links_before = host_links();
    let mut demo = Demo::start(&[
        "--nodes",
        "5",
        "--backend",
        "host-gw",
        "--duration",
        "2",
        "--etcd-endpoints",
        &etcd.url,
    ]);
    let (id, dir) = identity(&mut demo);
    let prefix = format!("/twill-demo/{id}/");
    assert!(
        demo.seen[0].contains(&format!("etcd {} under /twill-demo/{id}/network", etcd.url)),
        "the store line: {}",
        demo.seen[0]
    );
    demo.wait_line("reachable 20/20", Duration::from_secs(180));
    let inodes = namespace_inodes(&id);
    assert!(inodes.len() >= 10, "five nodes and their pods: {inodes:?}");
    let keys = etcd.keys(&prefix);
    let leases = keys.iter().filter(|k| k.contains("/subnets/")).count();
    assert_eq!(leases, 5, "five leases under the demo's prefix: {keys:?}");
    for node in 1..=5 {
        let routes = sh(&[
            "ip",
            "netns",
            "exec",
            &format!("{id}-n{node}"),
            "ip",
            "route",
        ]);
        let via = routes
            .lines()
            .filter(|l| l.starts_with("10.244.") && l.contains(" via ") && l.contains("dev eth0"))
            .count();
        assert_eq!(
            via, 4,
            "node {node}: host-gw routes via its four peers:\n{routes}"
        );
    }
    let (code, lines) = demo.finish(Duration::from_secs(240));
    let text = lines.join("\n");
    assert_eq!(code, 0, "demo failed:\n{text}");
    assert!(
        etcd.keys(&prefix).is_empty(),
        "the demo's prefix is deleted at exit"
    );
    assert_nothing_left(&id, &dir, &links_before, &inodes);
}
