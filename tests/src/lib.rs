//! The end-to-end harness: a cluster of network namespaces on one machine, built with
//! `twill-lab`, plus a real etcd and the real `twill` binary on every node.
//!
//! ```text
//!   <id>-u0     underlay namespace: bridge `br0` joining everyone on 192.168.77.0/24
//!   <id>-etcd   a real etcd server (Debian etcd-server) at 192.168.77.250
//!   <id>-nK     node K at 192.168.77.K, running the real `twill run`
//!   <id>-pK     node K's pod at <node subnet>.2, behind bridge `cni0` (<node subnet>.1)
//! ```
//!
//! Nothing touches the host's own namespace: every device lives in a namespace the
//! lab made, every address is inside them. [`Cluster`]'s `Drop` kills the processes
//! and deletes the namespaces and files, also when a test fails. Missing privileges or
//! tools make the test fail with a message saying what is missing. The lab returns
//! errors; this harness turns them into panics naming what failed.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use twill_lab::etcd::{EtcdServer, EtcdSetup, ServerTls};
use twill_lab::pki::{CertPair, Pki, Signer};
use twill_lab::pods::{self, PodNet};
use twill_lab::traffic::{self, PingRun as LabPing};
use twill_lab::{Interrupt, Lab, NodeNet, process};
use twill_wasm_build::{TARGET, cargo_build, component_path, package_name};

pub use twill_lab::{UNDERLAY, segment_ip};

/// etcd's address on the underlay (of the first member, with several).
pub const ETCD_IP: &str = "192.168.77.250";

/// What etcd a [`Cluster`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Etcd {
    /// One plain member; twill gets `--etcd-endpoints http://…`.
    Plain,
    /// One member serving https with a certificate of the cluster's [`Pki`] and
    /// requiring client certificates (`--client-cert-auth`); twill gets
    /// `--etcd-endpoints https://… --etcd-cafile … --etcd-certfile … --etcd-keyfile …`.
    Tls,
    /// `n` plain members at .250, .249, …; twill gets every endpoint.
    Members(u8),
}

/// The address of etcd member `i` (0-based) on the underlay.
pub fn etcd_member_ip(i: usize) -> String {
    segment_ip(0, 250 - u8::try_from(i).expect("few members"))
}

/// The value, or a panic naming what failed.
trait Must<T> {
    fn must(self, what: impl Display) -> T;
}

impl<T> Must<T> for twill_lab::Result<T> {
    fn must(self, what: impl Display) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

/// How long the overlay may take to converge before a test fails on it (the README
/// promises about 1.3 s for the demo; this bound only catches a regression of an order
/// of magnitude on a loaded machine).
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(10);

/// Run a command; panic with its output if it fails.
pub fn sh(cmd: &[&str]) -> String {
    twill_lab::output(cmd).must("command failed")
}

/// Run a command and return its output, whatever its status.
pub fn run(cmd: &[&str]) -> Output {
    twill_lab::run(cmd).must("command failed to start")
}

/// The tools the tests run, with the Debian package of each.
const TOOLS: [(&str, &str); 9] = [
    ("ip", "iproute2"),
    ("bridge", "iproute2"),
    ("ping", "iputils-ping"),
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("iperf3", "iperf3"),
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("iptables", "iptables"),
];

/// Fail unless the test can build a namespace cluster here.
pub fn require_privileges_and_tools() {
    twill_lab::require("the end-to-end tests", &TOOLS).must("cannot run the end-to-end tests");
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
    net: NodeNet,
    twill: Option<Child>,
}

impl Node {
    /// The node's namespaces and directory, as the lab made them.
    pub fn net(&self) -> &NodeNet {
        &self.net
    }

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

    /// The interface index of device `dev` in this namespace (from sysfs), to tell the
    /// same device from one deleted and made again under its name.
    pub fn ifindex(&self, dev: &str) -> String {
        self.exec(&["cat", &format!("/sys/class/net/{dev}/ifindex")])
            .trim()
            .to_owned()
    }

    /// The sha256 of the backend plugin this node runs, from `/v1/plugins`.
    pub fn plugin_sha(&self) -> String {
        let (code, body) = self.api_get("/v1/plugins");
        assert_eq!(code, 200, "GET /v1/plugins on {}: {body}", self.ns);
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v["plugins"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|p| p["sha256"].as_str())
            .expect("a plugin with sha256")
            .to_owned()
    }

    /// The socket inode (`ino:N`, from `ss -e`) of the one UDP socket bound to `port`
    /// in this namespace: the same inode means the same socket, not one closed and
    /// bound again. Panics when no socket or more than one is bound there.
    pub fn udp_socket_inode(&self, port: u16) -> String {
        let out = self.exec(&["ss", "-H", "-ulne", "sport", &format!("= :{port}")]);
        let inodes: Vec<&str> = out
            .split_whitespace()
            .filter(|w| w.starts_with("ino:"))
            .collect();
        assert_eq!(
            inodes.len(),
            1,
            "{}: one UDP socket on :{port}, found:\n{out}",
            self.ns
        );
        inodes[0].to_owned()
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

    /// The value of one series of this node's /metrics (`name{labels}` as printed);
    /// `None` when the series is absent (a labelled counter has none before its first
    /// event).
    pub fn metric_opt(&self, series: &str) -> Option<f64> {
        let (code, text) = self.api_get("/metrics");
        assert_eq!(code, 200, "GET /metrics on {}", self.ns);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))?;
        Some(
            line.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{series} on {} is no number: {line:?}", self.ns)),
        )
    }

    /// The value of one series of this node's /metrics; a missing series is an error
    /// (it names the family's series), never a silent 0.
    pub fn metric(&self, series: &str) -> f64 {
        self.metric_opt(series).unwrap_or_else(|| {
            panic!(
                "{series} is not in {}'s /metrics; its family has:\n{}",
                self.ns,
                self.family_lines(series)
            )
        })
    }

    fn family_lines(&self, series: &str) -> String {
        let family = series.split('{').next().unwrap_or(series);
        let (_, text) = self.api_get("/metrics");
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(family)).collect();
        lines.join("\n")
    }

    /// Wait up to `timeout` until the API answers and `series` exists and reaches
    /// `at_least`; on timeout, fail with the value, every series of that metric family
    /// and the log.
    pub fn wait_metric(&self, series: &str, at_least: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            // Right after a start the API may not listen yet: that is "not yet", not
            // a failure (until the deadline).
            let up = self.api_get("/healthz").0 == 200;
            let v = if up { self.metric_opt(series) } else { None };
            if v.is_some_and(|v| v >= at_least) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{series} on {} is {v:?}, expected ≥ {at_least}\n{}\n--- log ---\n{}",
                    self.ns,
                    self.family_lines(series),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// subnet.env as key → value.
    pub fn subnet_env(&self) -> Option<BTreeMap<String, String>> {
        pods::read_subnet_env(&self.subnet_file)
    }

    /// The node's pod subnet, from subnet.env.
    fn pod_net(&self) -> PodNet {
        let env = self.subnet_env().expect("subnet.env written");
        PodNet::parse(&env["FLANNEL_SUBNET"]).expect("FLANNEL_SUBNET is a/len")
    }

    /// `FLANNEL_SUBNET`'s network as `a.b.c.0/len`.
    pub fn subnet(&self) -> String {
        self.pod_net().cidr
    }

    /// The pod's address: `<subnet>.2`.
    pub fn pod_ip(&self) -> String {
        self.pod_net().pod()
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
        match process::stop(&mut child, Duration::from_secs(15)) {
            Some(status) => status.code(),
            None => panic!("twill on {} did not stop within 15 s of SIGTERM", self.ns),
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

    /// `iptables ARGS` in the node's namespace; its stdout (panics on failure).
    pub fn iptables(&self, args: &[&str]) -> String {
        let mut cmd = vec!["ip", "netns", "exec", &self.ns, "iptables", "-w", "5"];
        cmd.extend(args);
        sh(&cmd)
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
        process::log_tail(&self.log, 40)
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
    /// The certificates of an [`Etcd::Tls`] cluster.
    pub pki: Option<Pki>,
    /// twill's client certificate in an [`Etcd::Tls`] cluster.
    pub client_cert: Option<CertPair>,
    /// What [`Cluster::start_twill_with`] passes to say where etcd is and how to
    /// reach it (endpoints, TLS files); tests may change it.
    pub etcd_args: Vec<String>,
    /// Environment variables for every twill started from now.
    pub twill_env: Vec<(String, String)>,
    etcd: Vec<EtcdServer>,
    // Dropped last: the namespaces go once the processes in them are stopped.
    lab: Lab,
}

impl Cluster {
    /// `n` nodes on the network config `config`, twill started on each (`--iface
    /// eth0`), the pods wired and reaching each other.
    pub fn running(n: u8, config: &str) -> Cluster {
        let mut c = Cluster::new(n);
        c.put_config(config);
        for k in 1..=c.nodes.len() {
            c.start_twill(k);
        }
        c.wire_pods();
        c.assert_full_mesh(Duration::from_secs(30));
        c
    }

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
        Self::build(segments, id, Etcd::Plain)
    }

    /// One segment of `n` nodes with the etcd `etcd` says.
    pub fn with_etcd(n: u8, etcd: Etcd) -> Cluster {
        Self::build(&[n], &Self::new_id(), etcd)
    }

    fn build(segments: &[u8], id: &str, etcd_kind: Etcd) -> Cluster {
        require_privileges_and_tools();
        assert!(
            !segments.is_empty() && segments.len() <= 8,
            "1 to 8 segments"
        );
        let mut lab =
            Lab::create(id, &Self::dir_for(id), Interrupt::new()).must("create the test lab");
        lab.keep_dir(std::env::var_os("TWILL_E2E_KEEP").is_some());
        lab.add_segments(segments.len()).must("build the underlay");
        let mut nodes = Vec::new();
        let mut k = 0u8;
        for (s, count) in segments.iter().enumerate() {
            for _ in 0..*count {
                k += 1;
                let net = lab.add_node(k, s).must(format_args!("node {k}"));
                nodes.push(Node {
                    n: k,
                    underlay_ip: net.underlay_ip.clone(),
                    ns: net.ns.clone(),
                    pod_ns: net.pod_ns.clone(),
                    subnet_file: net.dir.join("subnet.env"),
                    log: net.dir.join("twill.log"),
                    net,
                    twill: None,
                });
            }
        }
        let (etcd, pki, client_cert, etcd_args) = start_etcd(&mut lab, etcd_kind);
        Cluster {
            id: id.to_owned(),
            nodes,
            prefix: "/coreos.com/network".into(),
            pki,
            client_cert,
            etcd_args,
            twill_env: Vec::new(),
            etcd,
            lab,
        }
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

    /// Stop every etcd member (their data stays).
    pub fn stop_etcd(&mut self) {
        for member in &mut self.etcd {
            member.stop();
        }
    }

    /// Start every etcd member again on its data.
    pub fn restart_etcd(&mut self) {
        for member in &mut self.etcd {
            member.start().must("restart etcd");
        }
    }

    /// etcd member `i` (0-based), to stop, start or configure.
    pub fn etcd_member(&mut self, i: usize) -> &mut EtcdServer {
        &mut self.etcd[i]
    }

    /// Run etcdctl against the cluster's etcd (the first member that runs); panic if
    /// it fails.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        self.try_etcdctl(args).must("etcdctl")
    }

    /// etcdctl against the first running member; its stdout or the failure.
    pub fn try_etcdctl(&self, args: &[&str]) -> Result<String, twill_lab::Error> {
        let member = self
            .etcd
            .iter()
            .find(|m| m.running())
            .expect("an etcd member runs");
        member.etcdctl(args)
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
            .arg("run")
            .args(&self.etcd_args)
            .arg("--subnet-file")
            .arg(&node.subnet_file)
            .args(args)
            .env("TWILL_LOG", "info,twill=debug")
            // After the default: a test (or the benchmark) may set TWILL_LOG itself.
            .envs(self.twill_env.iter().map(|(k, v)| (k, v)))
            // The compiled-plugin cache of this cluster, not the host's /var/cache/twill.
            .env(
                "TWILL_PLUGIN_CACHE_DIR",
                self.lab.dir().join("plugin-cache"),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start twill");
        node.twill = Some(child);
    }

    /// Run twill on node `k` until it exits (30 s at most); assert exit status `code`
    /// (docs/operations.md, "Exit status": 3 config, 4 store, 5 lease, 6 backend, 7 the
    /// node) with exactly one error line, containing `want`, and no panic. The log is
    /// emptied for the next case; the error line and how long twill ran are returned.
    pub fn expect_failure(
        &mut self,
        k: usize,
        args: &[&str],
        code: i32,
        want: &str,
    ) -> (String, Duration) {
        let start = Instant::now();
        self.start_twill_with(k, args);
        let node = &mut self.nodes[k - 1];
        let exit = node.wait_exit(Duration::from_secs(30));
        let ran = start.elapsed();
        let log = node.log_text();
        assert_eq!(
            exit,
            Some(code),
            "twill should exit {code} for {want:?}; log:\n{log}"
        );
        let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "exactly one error line; log:\n{log}");
        assert!(
            errors[0].contains(want),
            "error line {:?} should say {want:?}",
            errors[0]
        );
        for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
            assert!(!log.contains(bad), "log contains {bad:?}:\n{log}");
        }
        let line = errors[0].to_owned();
        fs::write(&node.log, "").expect("truncate log");
        (line, ran)
    }

    /// Wait until every running node wrote subnet.env, then wire its pod: `cni0` gets
    /// the first address of the node's subnet, the pod `.2` with a default route.
    pub fn wire_pods(&mut self) {
        for k in 1..=self.nodes.len() {
            self.wire_pod(k);
        }
    }

    /// Node `k`'s pod re-addressed from its subnet.env (after the node moved to
    /// another subnet): the old addresses flushed, then [`Cluster::wire_pod`].
    pub fn rewire_pod(&mut self, k: usize) {
        pods::unwire(&self.nodes[k - 1].net).must("flush the pod's addresses");
        self.wire_pod(k);
    }

    /// [`Cluster::wire_pods`] for node `k` (1-based) alone, e.g. one that joins later.
    pub fn wire_pod(&mut self, k: usize) {
        let node = &self.nodes[k - 1];
        let subnet_file = node.subnet_file.clone();
        wait_for(
            &format!("{} to write subnet.env", node.ns),
            Duration::from_secs(60),
            || subnet_file.exists().then_some(()),
        );
        let (net, mtu) = PodNet::from_subnet_env(&node.subnet_file).must("subnet.env");
        pods::wire(&node.net, &net, mtu).must(format_args!("wire {}'s pod", node.ns));
    }

    /// Start pinging node `to`'s pod from node `from`'s pod, 10 per second, `count`
    /// times, in the background; [`PingRun::finish`] waits and reads the summary.
    pub fn start_ping(&self, from: usize, to: usize, count: u32) -> PingRun {
        let run = LabPing::start(
            &self.nodes[from - 1].pod_ns,
            &self.nodes[to - 1].pod_ip(),
            count,
        );
        PingRun(run.must("start ping"))
    }

    /// Whether a ping from node `from`'s pod to node `to`'s pod succeeds.
    pub fn pod_ping(&self, from: usize, to: usize) -> bool {
        traffic::ping(&self.nodes[from - 1].pod_ns, &self.nodes[to - 1].pod_ip())
    }

    /// Wait (up to 30 s) until the pods of nodes `a` and `b` reach each other both ways.
    pub fn wait_pair(&self, a: usize, b: usize) {
        wait_for(
            &format!("pods {a} and {b} reach each other"),
            Duration::from_secs(30),
            || (self.pod_ping(a, b) && self.pod_ping(b, a)).then_some(()),
        );
    }

    /// Assert that every pod reaches every other pod (waiting up to `timeout` for the
    /// overlay to converge), and that it took less than [`CONVERGENCE_BOUND`]: the time
    /// is printed, so a slowdown shows in the log before it fails a test.
    pub fn assert_full_mesh(&self, timeout: Duration) {
        let started = Instant::now();
        let pods: Vec<(String, String)> = self
            .nodes
            .iter()
            .map(|n| (n.pod_ns.clone(), n.pod_ip()))
            .collect();
        let no_check = || Ok::<(), twill_lab::Error>(());
        let reach = traffic::converge(&pods, timeout, &Interrupt::new(), |_, _| {}, no_check)
            .must("ping the pods");
        for (from, row) in reach.iter().enumerate() {
            if let Some(to) = row.iter().position(|r| *r == Some(false)) {
                panic!(
                    "pod {} cannot reach pod {} ({}) after {timeout:?}\n--- node {} log ---\n{}\n--- node {} log ---\n{}",
                    from + 1,
                    to + 1,
                    pods[to].1,
                    from + 1,
                    self.nodes[from].log_tail(),
                    to + 1,
                    self.nodes[to].log_tail()
                );
            }
        }
        let took = started.elapsed();
        eprintln!("full mesh of {} pods after {took:.2?}", pods.len());
        assert!(
            took < CONVERGENCE_BOUND,
            "the full mesh of {} pods took {took:?}, more than {CONVERGENCE_BOUND:?}",
            pods.len()
        );
    }

    /// Run iperf3 for `seconds` from node `from`'s pod to node `to`'s pod with
    /// `streams` parallel streams; bits per second received.
    pub fn iperf(&self, from: usize, to: usize, seconds: u32, streams: u32) -> f64 {
        self.iperf_run(from, to, seconds, streams).bits_per_second
    }

    /// [`Cluster::iperf`], with everything iperf3 reported (bytes received, seconds).
    pub fn iperf_run(&self, from: usize, to: usize, seconds: u32, streams: u32) -> traffic::Iperf {
        let (server, client) = (&self.nodes[to - 1], &self.nodes[from - 1]);
        traffic::iperf3(
            &server.pod_ns,
            &client.pod_ns,
            &server.pod_ip(),
            seconds,
            streams,
        )
        .must("iperf3")
    }

    /// A host outside the cluster network: a namespace `<id>-<name>` on the first
    /// underlay segment at `ip`, with no route to the cluster network. Its name.
    pub fn add_outside_host(&mut self, name: &str, ip: &str) -> String {
        let ns = self.lab.add_ns(name).must("outside host namespace");
        self.lab
            .plug(&ns, 0, "eth0", name, ip)
            .must("plug the outside host");
        ns
    }

    /// The test's scratch directory.
    pub fn dir(&self) -> &Path {
        self.lab.dir()
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
        self.stop_etcd();
        // The lab then deletes the namespaces (with anything a test left running in
        // them) and the directory.
    }
}

/// The etcd a cluster asked for, in namespaces of its own on segment 0: the members,
/// the certificates (with TLS) and the flags that tell twill about them.
fn start_etcd(
    lab: &mut Lab,
    kind: Etcd,
) -> (Vec<EtcdServer>, Option<Pki>, Option<CertPair>, Vec<String>) {
    let count = match kind {
        Etcd::Plain | Etcd::Tls => 1,
        Etcd::Members(n) => usize::from(n),
    };
    let names: Vec<String> = (0..count).map(|i| format!("e{i}")).collect();
    let initial_cluster: Vec<String> = if count > 1 {
        (0..count)
            .map(|i| format!("{}=http://{}:2380", names[i], etcd_member_ip(i)))
            .collect()
    } else {
        Vec::new()
    };
    let (pki, server_tls, client) = if kind == Etcd::Tls {
        let pki = Pki::create(&lab.dir().join("pki")).must("make a CA");
        let server = pki
            .issue("etcd", "etcd", &[ETCD_IP, "127.0.0.1"], Signer::Ca)
            .must("etcd's certificate");
        let client = pki
            .issue("twill", "twill", &["127.0.0.1"], Signer::Ca)
            .must("twill's client certificate");
        let tls = ServerTls {
            cert: server.cert,
            key: server.key,
            client_ca: pki.ca.cert.clone(),
        };
        (Some(pki), Some(tls), Some(client))
    } else {
        (None, None, None)
    };
    let mut members = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let suffix = if i == 0 {
            "etcd".to_owned()
        } else {
            format!("etcd{i}")
        };
        let ns = lab.add_ns(&suffix).must("etcd namespace");
        let ip = etcd_member_ip(i);
        lab.plug(&ns, 0, "eth0", &suffix, &ip).must("plug etcd");
        twill_lab::ip(
            &ns,
            &format!("route add default via {}", segment_ip(0, 254)),
        )
        .must("etcd's default route");
        let setup = EtcdSetup {
            name: name.clone(),
            tls: server_tls.clone(),
            initial_cluster: initial_cluster.clone(),
            auth_token_ttl: None,
        };
        members.push(EtcdServer::with(&ns, &ip, lab.dir(), setup).must("start etcd"));
    }
    for member in &members {
        member
            .wait_healthy(Duration::from_secs(30))
            .must("etcd answers");
    }
    let endpoints: Vec<String> = members.iter().map(EtcdServer::url).collect();
    let mut args = vec!["--etcd-endpoints".to_owned(), endpoints.join(",")];
    if let (Some(pki), Some(client)) = (&pki, &client) {
        args.extend([
            "--etcd-cafile".to_owned(),
            path_arg(&pki.ca.cert),
            "--etcd-certfile".to_owned(),
            path_arg(&client.cert),
            "--etcd-keyfile".to_owned(),
            path_arg(&client.key),
        ]);
    }
    (members, pki, client, args)
}

/// A path as a command-line argument.
pub fn path_arg(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_owned()
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
    build_plugin_crate_with(crate_dir, &[])
}

/// [`build_plugin_crate`] with the crate's cargo `features` on. Builds of one package
/// with other features write the same output file, so each build's component is copied
/// under a name of its own (`artefacts/<package>[+feature…].wasm`) while a process-wide
/// lock keeps another build from writing in between; the copy's path is returned.
pub fn build_plugin_crate_with(crate_dir: &Path, features: &[&str]) -> PathBuf {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let package = package_name(crate_dir)
        .unwrap_or_else(|e| panic!("read {}/Cargo.toml: {e}", crate_dir.display()));
    let target_dir = workspace_target_dir().join("test-plugins");
    let mut cargo = cargo_build(crate_dir, &target_dir);
    if !features.is_empty() {
        cargo.args(["--features", &features.join(",")]);
    }
    let out = cargo.output().unwrap_or_else(|e| {
        panic!(
            "cannot run cargo to build the plugin crate {}: {e}; cargo must be on PATH",
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
    let wasm = component_path(&target_dir, &package);
    assert!(
        wasm.is_file(),
        "cargo built {} but {} is missing",
        crate_dir.display(),
        wasm.display()
    );
    let artefacts = target_dir.join("artefacts");
    std::fs::create_dir_all(&artefacts)
        .unwrap_or_else(|e| panic!("create {}: {e}", artefacts.display()));
    let name = std::iter::once(package.as_str())
        .chain(features.iter().copied())
        .collect::<Vec<_>>()
        .join("+");
    let copy = artefacts.join(format!("{name}.wasm"));
    std::fs::copy(&wasm, &copy)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", wasm.display(), copy.display()));
    copy
}

/// `tests/plugins/<name>`: the test plugin crates of this repository.
pub fn test_plugin_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins")
        .join(name)
}

/// A ping running in the background ([`Cluster::start_ping`]).
pub struct PingRun(LabPing);

impl PingRun {
    /// Whether ping is still sending: what a test checks before the event it means to
    /// put under the ping.
    pub fn running(&mut self) -> bool {
        self.0.running()
    }

    /// Wait for the ping to end: (transmitted, received, its summary line).
    pub fn finish(self) -> (u32, u32, String) {
        let summary = self.0.finish().must("ping");
        (summary.transmitted, summary.received, summary.line)
    }
}
