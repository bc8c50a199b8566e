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
                if tx.send(line).is_err() {
                    break;
                }
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
                return (status.code().unwrap_or(-1), self.seen);
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

/// Nothing of demo `id` is left: namespaces, processes (twill run, iperf3, ping) whose
/// command line names the demo, its directory, host devices beyond those before.
fn assert_nothing_left(id: &str, dir: &Path, links_before: &str) {
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
        "reachable 6/6",
        "throughput pod 1 → pod 2:",
        "dashboard",
        "done: nothing left behind",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    assert_nothing_left(&id, &dir, &links_before);
}

/// `--runtime docker|podman`: real containers are the pods, they converge, and the
/// runtime's processes and mounts go with the demo.
fn demo_with_runtime(runtime: &str) {
    require_privileges_and_tools();
    let links_before = host_links();
    let mut demo = Demo::start(&["--nodes", "2", "--duration", "2", "--runtime", runtime]);
    let (id, dir) = identity(&mut demo);
    let (code, lines) = demo.finish(Duration::from_secs(240));
    let text = lines.join("\n");
    assert_eq!(code, 0, "demo failed:\n{text}");
    for expected in [
        format!("starting a {runtime} container on every node"),
        "-n1: container 10.244.".to_owned(),
        "reachable 2/2".to_owned(),
        format!("explore: ip netns exec {id}-c1 ping 10.244."),
        "done: nothing left behind".to_owned(),
    ] {
        assert!(text.contains(&expected), "no {expected:?} in:\n{text}");
    }
    assert_nothing_left(&id, &dir, &links_before);
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
    demo.sigterm();
    let (code, lines) = demo.finish(Duration::from_secs(60));
    let text = lines.join("\n");
    assert!(
        text.contains("SIGTERM received"),
        "no SIGTERM notice in:\n{text}"
    );
    assert_ne!(code, 0, "a demo stopped before it was up reports failure");
    assert_nothing_left(&id, &dir, &links_before);
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
