//! The end-to-end harness: a cluster of network namespaces on one machine.
//!
//! ```text
//!   <id>-u      underlay namespace: bridge `br0` joining everyone on 192.168.77.0/24
//!   <id>-etcd   a real etcd server (Debian etcd-server) at 192.168.77.250
//!   <id>-nK     node K at 192.168.77.K, running the real `twill run`
//!   <id>-pK     node K's pod at <node subnet>.2, behind bridge `cni0` (<node subnet>.1)
//! ```
//!
//! Nothing touches the host's own namespace: every device lives in a namespace the
//! harness made, every address is inside them. [`Cluster`]'s `Drop` kills the processes
//! and deletes the namespaces and files, also when a test fails. Missing privileges or
//! tools make the test fail with a message saying what is missing.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The underlay network's first three octets.
pub const UNDERLAY: &str = "192.168.77";
/// etcd's address on the underlay.
pub const ETCD_IP: &str = "192.168.77.250";

/// The address `.host` on underlay segment `segment` (192.168.<77+segment>.<host>).
pub fn segment_ip(segment: usize, host: u8) -> String {
    format!("192.168.{}.{host}", 77 + segment)
}

/// Run a command; panic with its output if it fails.
pub fn sh(cmd: &[&str]) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}\nstderr: {}",
        cmd.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command and return its output, whatever its status.
pub fn run(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cmd[0]))
}

/// Fail unless the test can build a namespace cluster here.
pub fn require_privileges_and_tools() {
    let uid = sh(&["id", "-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "the end-to-end tests need root (network namespaces, vxlan); run them as root"
    );
    for (tool, package) in [
        ("ip", "iproute2"),
        ("bridge", "iproute2"),
        ("ping", "iputils-ping"),
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
        ("iperf3", "iperf3"),
        ("curl", "curl"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(found, "{tool} not found: apt-get install {package}");
    }
}

/// The twill binary the workspace built next to this test.
pub fn twill_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TWILL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // A binary of this package (target/<profile>/bench) sits next to twill.
    if let Some(beside) = exe.parent().map(|d| d.join("twill"))
        && beside.is_file()
    {
        return beside;
    }
    // target/<profile>/deps/<test> → target/<profile>/twill
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("twill"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} does not exist: build it first (cargo build -p twill) or set TWILL_BIN",
        bin.display()
    );
    bin
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// A node of the cluster.
pub struct Node {
    /// 1-based node number; its underlay address is 192.168.77.<n>.
    pub n: u8,
    /// The node's underlay address.
    pub underlay_ip: String,
    /// The node's namespace.
    pub ns: String,
    /// The pod's namespace.
    pub pod_ns: String,
    /// Where twill writes subnet.env.
    pub subnet_file: PathBuf,
    /// twill's log.
    pub log: PathBuf,
    twill: Option<Child>,
    restarts: u32,
}

impl Node {
    /// The node's underlay address.
    pub fn ip(&self) -> String {
        self.underlay_ip.clone()
    }

    /// Run a command in the node's namespace.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.ns];
        full.extend_from_slice(cmd);
        sh(&full)
    }

    /// GET `path` from this node's HTTP API (127.0.0.1:9465 in its namespace):
    /// (status code, body).
    pub fn api_get(&self, path: &str) -> (u16, String) {
        let url = format!("http://127.0.0.1:9465{path}");
        let out = run(&[
            "ip",
            "netns",
            "exec",
            &self.ns,
            "curl",
            "-s",
            "-w",
            "\n%{http_code}",
            &url,
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// The value of one series of this node's /metrics (`name{labels}` as printed), 0
    /// when the series is absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (code, text) = self.api_get("/metrics");
        assert_eq!(code, 200, "GET /metrics on {}", self.ns);
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Wait up to `timeout` until [`Node::metric`]`(series)` reaches `at_least`; on
    /// timeout, fail with the value, every series of that metric family and the log.
    pub fn wait_metric(&self, series: &str, at_least: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(series);
            if v >= at_least {
                return;
            }
            if Instant::now() > deadline {
                let family = series.split('{').next().unwrap_or(series);
                let (_, text) = self.api_get("/metrics");
                let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(family)).collect();
                panic!(
                    "{series} on {} is {v}, expected ≥ {at_least}\n{}\n--- log ---\n{}",
                    self.ns,
                    lines.join("\n"),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// subnet.env as key → value.
    pub fn subnet_env(&self) -> Option<BTreeMap<String, String>> {
        let text = fs::read_to_string(&self.subnet_file).ok()?;
        Some(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// `FLANNEL_SUBNET`'s network as `a.b.c.0/len`.
    pub fn subnet(&self) -> String {
        let env = self.subnet_env().expect("subnet.env written");
        let first = &env["FLANNEL_SUBNET"];
        let (ip, len) = first.split_once('/').expect("a/len");
        let mut octets: Vec<&str> = ip.split('.').collect();
        octets[3] = "0";
        format!("{}/{len}", octets.join("."))
    }

    /// The pod's address: `<subnet>.2`.
    pub fn pod_ip(&self) -> String {
        let subnet = self.subnet();
        let net = subnet.split('/').next().expect("addr");
        let mut octets: Vec<&str> = net.split('.').collect();
        octets[3] = "2";
        octets.join(".")
    }

    /// Whether twill was started on this node and not yet stopped or seen exiting.
    pub fn twill_running(&self) -> bool {
        self.twill.is_some()
    }

    /// The pid of the running twill process (`ip netns exec` execs it in place).
    pub fn twill_pid(&self) -> Option<u32> {
        self.twill.as_ref().map(Child::id)
    }

    /// Send SIGTERM to twill and wait; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.twill.take()?;
        sh(&["kill", "-TERM", &child.id().to_string()]);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("twill on {} did not stop within 15 s of SIGTERM", self.ns);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait up to `timeout` for twill to exit by itself; its exit code, or `None` if it
    /// is still running (then it is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(code) = self.exited() {
                self.twill = None;
                return Some(code.unwrap_or(-1));
            }
            thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// twill's whole log.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether twill has exited (and with what code).
    pub fn exited(&mut self) -> Option<Option<i32>> {
        let child = self.twill.as_mut()?;
        child.try_wait().ok().flatten().map(|s| s.code())
    }

    /// The tail of twill's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A cluster of namespaces with etcd.
pub struct Cluster {
    /// Short unique id; every namespace name starts with it.
    pub id: String,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The etcd prefix.
    pub prefix: String,
    dir: PathBuf,
    etcd: Option<Child>,
    namespaces: Vec<String>,
}

impl Cluster {
    /// Build the underlay, etcd and `n` node namespaces (twill not started yet).
    pub fn new(n: u8) -> Cluster {
        Self::segmented(&[n])
    }

    /// Build one underlay segment per entry of `segments` (segment `s` is
    /// 192.168.<77+s>.0/24 on its own bridge namespace `<id>-u<s>`), with the given
    /// number of nodes on each, numbered on from 1. With more than one segment a router
    /// namespace `<id>-r` joins them at .254 of each. etcd sits on the first segment.
    pub fn segmented(segments: &[u8]) -> Cluster {
        Self::segmented_with_id(segments, &Self::new_id())
    }

    /// A fresh random cluster id (`tw` and four hex digits), as [`Cluster::new`] picks.
    pub fn new_id() -> String {
        format!("tw{:04x}", rand::random::<u16>())
    }

    /// [`Cluster::segmented`] with an id chosen by the caller (e.g. from
    /// [`Cluster::new_id`]), so that something outside the process can clean up the
    /// namespaces `<id>-*` and the directory [`Cluster::dir_for`]`(id)` if it is killed.
    pub fn segmented_with_id(segments: &[u8], id: &str) -> Cluster {
        require_privileges_and_tools();
        assert!(
            !segments.is_empty() && segments.len() <= 8,
            "1 to 8 segments"
        );
        let id = id.to_owned();
        let dir = Self::dir_for(&id);
        fs::create_dir_all(&dir).expect("create test directory");
        let mut c = Cluster {
            id: id.clone(),
            nodes: Vec::new(),
            prefix: "/coreos.com/network".into(),
            dir,
            etcd: None,
            namespaces: Vec::new(),
        };
        for s in 0..segments.len() {
            let underlay = c.add_ns(&format!("u{s}"));
            sh(&[
                "ip", "-n", &underlay, "link", "add", "br0", "type", "bridge",
            ]);
            sh(&["ip", "-n", &underlay, "link", "set", "br0", "up"]);
        }
        if segments.len() > 1 {
            let router = c.add_ns("r");
            for s in 0..segments.len() {
                c.plug(
                    &router,
                    s,
                    &format!("eth{s}"),
                    &format!("r{s}"),
                    &segment_ip(s, 254),
                );
            }
            sh(&[
                "ip",
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]);
        }
        let etcd_ns = c.add_ns("etcd");
        c.plug(&etcd_ns, 0, "eth0", "etcd", ETCD_IP);
        sh(&[
            "ip",
            "-n",
            &etcd_ns,
            "route",
            "add",
            "default",
            "via",
            &segment_ip(0, 254),
        ]);
        let mut k = 0u8;
        for (s, count) in segments.iter().enumerate() {
            for _ in 0..*count {
                k += 1;
                c.add_node(k, s);
            }
        }
        c.start_etcd(&etcd_ns);
        c
    }

    fn add_node(&mut self, k: u8, segment: usize) {
        let ns = self.add_ns(&format!("n{k}"));
        let ip = segment_ip(segment, k);
        self.plug(&ns, segment, "eth0", &format!("n{k}"), &ip);
        let gateway = segment_ip(segment, 254);
        sh(&[
            "ip", "-n", &ns, "route", "add", "default", "via", &gateway, "dev", "eth0", "onlink",
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let pod_ns = self.add_ns(&format!("p{k}"));
        sh(&["ip", "-n", &ns, "link", "add", "cni0", "type", "bridge"]);
        sh(&[
            "ip", "-n", &ns, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0",
            "netns", &pod_ns,
        ]);
        sh(&[
            "ip", "-n", &ns, "link", "set", "vpod", "master", "cni0", "up",
        ]);
        sh(&["ip", "-n", &pod_ns, "link", "set", "lo", "up"]);
        let node_dir = self.dir.join(format!("n{k}"));
        fs::create_dir_all(&node_dir).expect("node directory");
        self.nodes.push(Node {
            n: k,
            underlay_ip: ip,
            ns,
            pod_ns,
            subnet_file: node_dir.join("subnet.env"),
            log: node_dir.join("twill.log"),
            twill: None,
            restarts: 0,
        });
    }

    fn add_ns(&mut self, suffix: &str) -> String {
        let ns = format!("{}-{suffix}", self.id);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// Join `ns` to segment `segment`'s bridge with device `dev` at `ip`/24.
    fn plug(&self, ns: &str, segment: usize, dev: &str, tag: &str, ip: &str) {
        let underlay = format!("{}-u{segment}", self.id);
        let peer = format!("u-{tag}");
        sh(&[
            "ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", &peer, "netns",
            &underlay,
        ]);
        sh(&[
            "ip", "-n", &underlay, "link", "set", &peer, "master", "br0", "up",
        ]);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            dev,
        ]);
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }

    /// The scratch directory of the cluster with id `id`.
    pub fn dir_for(id: &str) -> PathBuf {
        std::env::temp_dir().join(format!("twill-e2e-{id}"))
    }

    /// Stop twill (SIGTERM, as [`Node::stop`]) on every node where it runs; the exit
    /// codes by node number.
    pub fn stop_all_twill(&mut self) -> BTreeMap<u8, Option<i32>> {
        let mut codes = BTreeMap::new();
        for node in &mut self.nodes {
            if node.twill_running() {
                codes.insert(node.n, node.stop());
            }
        }
        codes
    }

    /// Stop the etcd server (its data stays).
    pub fn stop_etcd(&mut self) {
        if let Some(mut etcd) = self.etcd.take() {
            let _ = etcd.kill();
            let _ = etcd.wait();
        }
    }

    /// Start the etcd server again on its data.
    pub fn restart_etcd(&mut self) {
        let ns = format!("{}-etcd", self.id);
        self.start_etcd(&ns);
    }

    fn start_etcd(&mut self, ns: &str) {
        let data = self.dir.join("etcd-data");
        let client = format!("http://{ETCD_IP}:2379");
        let log = fs::File::create(self.dir.join("etcd.log")).expect("etcd log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "etcd", "--name", "e0", "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("{client},http://127.0.0.1:2379"),
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "e0=http://127.0.0.1:2380",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.etcd = Some(child);
        wait_for("etcd to answer", Duration::from_secs(20), || {
            let out = self.etcdctl_out(&["endpoint", "health"]);
            out.status.success().then_some(())
        });
    }

    fn etcdctl_out(&self, args: &[&str]) -> Output {
        let ns = format!("{}-etcd", self.id);
        let mut cmd = vec![
            "ip",
            "netns",
            "exec",
            &ns,
            "etcdctl",
            "--endpoints",
            "http://127.0.0.1:2379",
        ];
        cmd.extend_from_slice(args);
        Command::new(cmd[0])
            .args(&cmd[1..])
            .env("ETCDCTL_API", "3")
            .output()
            .expect("run etcdctl")
    }

    /// Run etcdctl against the cluster's etcd; panic if it fails.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl_out(args);
        assert!(
            out.status.success(),
            "etcdctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Put the network config.
    pub fn put_config(&self, json: &str) {
        self.etcdctl(&["put", &format!("{}/config", self.prefix), json]);
    }

    /// Every lease key (without prefix) → value.
    pub fn leases(&self) -> BTreeMap<String, String> {
        let out = self.etcdctl(&["get", "--prefix", &format!("{}/subnets/", self.prefix)]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| {
                let key = c[0]
                    .trim_start_matches(&format!("{}/subnets/", self.prefix))
                    .to_owned();
                (key, c[1].to_owned())
            })
            .collect()
    }

    /// The remaining TTL in seconds of the etcd lease attached to a subnet key (`None`
    /// for a key without a lease).
    pub fn lease_ttl(&self, key: &str) -> Option<i64> {
        let fields = self.etcdctl(&[
            "get",
            "-w",
            "fields",
            &format!("{}/subnets/{key}", self.prefix),
        ]);
        let lease: i64 = fields
            .lines()
            .find_map(|l| l.strip_prefix("\"Lease\" : "))
            .and_then(|v| v.trim().parse().ok())?;
        if lease == 0 {
            return None;
        }
        let out = self.etcdctl(&["lease", "timetolive", &format!("{lease:x}")]);
        // "lease 694d7a2d1d2f1a04 granted with TTL(86400s), remaining(86398s)"
        out.split("remaining(")
            .nth(1)
            .and_then(|r| r.split('s').next())
            .and_then(|v| v.parse().ok())
    }

    /// Start (or restart) twill on node `k` (1-based).
    pub fn start_twill(&mut self, k: usize) {
        self.start_twill_with(k, &["--iface", "eth0"]);
    }

    /// Start twill on node `k` with these arguments after the etcd endpoint and subnet file.
    pub fn start_twill_with(&mut self, k: usize, args: &[&str]) {
        let bin = twill_bin();
        let node = &mut self.nodes[k - 1];
        assert!(node.twill.is_none(), "twill already running on {}", node.ns);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("twill log");
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns])
            .arg(&bin)
            .args([
                "run",
                "--etcd-endpoints",
                &format!("http://{ETCD_IP}:2379"),
                "--subnet-file",
            ])
            .arg(&node.subnet_file)
            .args(args)
            .env("TWILL_LOG", "info,twill=debug")
            // The compiled-plugin cache of this cluster, not the host's /var/cache/twill.
            .env("TWILL_PLUGIN_CACHE_DIR", self.dir.join("plugin-cache"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start twill");
        node.twill = Some(child);
        node.restarts += 1;
    }

    /// Wait until every running node wrote subnet.env, then wire its pod: `cni0` gets
    /// the first address of the node's subnet, the pod `.2` with a default route.
    pub fn wire_pods(&mut self) {
        for node in &mut self.nodes {
            let subnet_file = node.subnet_file.clone();
            wait_for(
                &format!("{} to write subnet.env", node.ns),
                Duration::from_secs(60),
                || subnet_file.exists().then_some(()),
            );
            let env = node.subnet_env().expect("subnet.env");
            let first = env["FLANNEL_SUBNET"].clone();
            let mtu = env["FLANNEL_MTU"].clone();
            let pod_ip = node.pod_ip();
            let prefix = first.split('/').nth(1).expect("len").to_owned();
            let gw = first.split('/').next().expect("gw").to_owned();
            let has = run(&["ip", "-n", &node.ns, "-4", "addr", "show", "dev", "cni0"]);
            if !String::from_utf8_lossy(&has.stdout).contains(&first) {
                sh(&["ip", "-n", &node.ns, "addr", "add", &first, "dev", "cni0"]);
            }
            sh(&["ip", "-n", &node.ns, "link", "set", "cni0", "up"]);
            sh(&[
                "ip",
                "-n",
                &node.pod_ns,
                "addr",
                "replace",
                &format!("{pod_ip}/{prefix}"),
                "dev",
                "eth0",
            ]);
            sh(&[
                "ip",
                "-n",
                &node.pod_ns,
                "link",
                "set",
                "eth0",
                "mtu",
                &mtu,
                "up",
            ]);
            sh(&[
                "ip",
                "-n",
                &node.pod_ns,
                "route",
                "replace",
                "default",
                "via",
                &gw,
            ]);
        }
    }

    /// Start pinging node `to`'s pod from node `from`'s pod, 10 per second, `count`
    /// times, in the background; [`PingRun::finish`] waits and reads the summary.
    pub fn start_ping(&self, from: usize, to: usize, count: u32) -> PingRun {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.nodes[from - 1].pod_ns,
                "ping",
                "-i",
                "0.1",
                "-c",
            ])
            .arg(count.to_string())
            .args(["-W", "1"])
            .arg(self.nodes[to - 1].pod_ip())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ping");
        PingRun { child }
    }

    /// Whether a ping from node `from`'s pod to node `to`'s pod succeeds.
    pub fn pod_ping(&self, from: usize, to: usize) -> bool {
        let dst = self.nodes[to - 1].pod_ip();
        let ns = &self.nodes[from - 1].pod_ns;
        run(&[
            "ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", &dst,
        ])
        .status
        .success()
    }

    /// Assert that every pod reaches every other pod (waiting up to `timeout` for the
    /// overlay to converge).
    pub fn assert_full_mesh(&self, timeout: Duration) {
        let n = self.nodes.len();
        let start = Instant::now();
        for from in 1..=n {
            for to in (1..=n).filter(|t| *t != from) {
                loop {
                    if self.pod_ping(from, to) {
                        break;
                    }
                    if start.elapsed() > timeout {
                        panic!(
                            "pod {from} cannot reach pod {to} ({}) after {timeout:?}\n--- node {from} log ---\n{}\n--- node {to} log ---\n{}",
                            self.nodes[to - 1].pod_ip(),
                            self.nodes[from - 1].log_tail(),
                            self.nodes[to - 1].log_tail()
                        );
                    }
                    thread::sleep(Duration::from_millis(300));
                }
            }
        }
    }

    /// Run iperf3 for `seconds` from node `from`'s pod to node `to`'s pod with
    /// `streams` parallel streams; bits per second received.
    pub fn iperf(&self, from: usize, to: usize, seconds: u32, streams: u32) -> f64 {
        let server_ns = &self.nodes[to - 1].pod_ns;
        let dst = self.nodes[to - 1].pod_ip();
        sh(&["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-D"]);
        let client_ns = &self.nodes[from - 1].pod_ns;
        let (secs, par) = (seconds.to_string(), streams.to_string());
        let out = wait_for("iperf3 to connect", Duration::from_secs(10), || {
            let o = run(&[
                "ip", "netns", "exec", client_ns, "iperf3", "-c", &dst, "-t", &secs, "-P", &par,
                "-J",
            ]);
            o.status.success().then_some(o)
        });
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .expect("bits_per_second")
    }

    /// The test's scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.twill.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(mut etcd) = self.etcd.take() {
            let _ = etcd.kill();
            let _ = etcd.wait();
        }
        for ns in self.namespaces.iter().rev() {
            // Anything still running inside (a ping a test left) dies with the namespace's pids.
            let _ = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-KILL", pid]).output();
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        if std::env::var_os("TWILL_E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The workspace's target directory, from this test binary's path
/// (`<target>/<profile>/deps/<test>`).
pub fn workspace_target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("the test binary lies in <target>/<profile>/deps")
}

/// Build the out-of-tree plugin crate in `crate_dir` (a crate with a `[workspace]` table
/// of its own, as a plugin in another repository has) for `wasm32-wasip2` in release
/// mode, as its author would: cargo in that directory, from an environment without this
/// test's cargo settings, into `<workspace target>/test-plugins` (a target directory of
/// its own, so the build neither waits for nor disturbs the workspace's). Returns the
/// component's path. Panics saying what is missing if cargo or the target is not there.
pub fn build_plugin_crate(crate_dir: &Path) -> PathBuf {
    const TARGET: &str = "wasm32-wasip2";
    let manifest = fs::read_to_string(crate_dir.join("Cargo.toml"))
        .unwrap_or_else(|e| panic!("read {}/Cargo.toml: {e}", crate_dir.display()));
    let package = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("name = "))
        .map(|v| v.trim_matches('"').replace('-', "_"))
        .unwrap_or_else(|| panic!("{}/Cargo.toml names no package", crate_dir.display()));
    let target_dir = workspace_target_dir().join("test-plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(crate_dir)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    for (key, _) in std::env::vars() {
        let outer = (key.starts_with("CARGO_") && !key.starts_with("CARGO_HOME"))
            || key == "RUSTFLAGS"
            || key == "RUSTC_WRAPPER"
            || key == "RUSTC_WORKSPACE_WRAPPER";
        if outer {
            cmd.env_remove(&key);
        }
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {cargo} to build the plugin crate {}: {e}; cargo must be on PATH",
            crate_dir.display()
        )
    });
    assert!(
        out.status.success(),
        "`cargo build --release --target {TARGET}` in {} failed ({}). Is the target \
         installed? `rustup target add {TARGET}`\n--- cargo's stderr ---\n{}",
        crate_dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{package}.wasm"));
    assert!(
        wasm.is_file(),
        "cargo built {} but {} is missing",
        crate_dir.display(),
        wasm.display()
    );
    wasm
}

/// `tests/plugins/<name>`: the test plugin crates of this repository.
pub fn test_plugin_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins")
        .join(name)
}

/// A ping running in the background ([`Cluster::start_ping`]).
pub struct PingRun {
    child: Child,
}

impl PingRun {
    /// Wait for the ping to end: (transmitted, received, its summary line).
    pub fn finish(self) -> (u32, u32, String) {
        let out = self.child.wait_with_output().expect("ping output");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let summary = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary:\n{text}"))
            .to_owned();
        let numbers: Vec<u32> = summary
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|t| t.parse().ok())
            .collect();
        (numbers[0], numbers[1], summary)
    }
}
