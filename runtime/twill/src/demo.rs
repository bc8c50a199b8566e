//! `twill demo`: a whole twill cluster on this machine, for a first look.
//!
//! ```text
//!   <id>-u    underlay namespace: bridge `br0` joining the nodes on 192.168.77.0/24
//!   <id>-nK   node K at 192.168.77.K (eth0), running the real `twill run`
//!   <id>-pK   node K's pod at <node subnet>.2, behind bridge `cni0` (<node subnet>.1)
//! ```
//!
//! `<id>` is `twd` and four random hex digits, unique per run (a taken name is a clear
//! error from `ip netns add`), so a second demo never touches the first one's
//! namespaces. Every node runs this same binary (`twill run`) on the embedded store in
//! a temporary directory, or on etcd with `--etcd-endpoints` (under a prefix of its own,
//! deleted at exit; each node reaches etcd through a loopback proxy in its namespace).
//!
//! Nothing here changes the host's own network namespace: devices and addresses live
//! only in the namespaces the demo made. The one thing on the host side is a loopback
//! TCP proxy (127.0.0.1) to node 1's API, opened on a dedicated thread that enters the
//! namespace (`setns`) only to connect. [`Demo`]'s `Drop` removes every process,
//! namespace, proxy, store key and file the demo made, on every exit path: Ctrl-C,
//! SIGTERM, `--duration`, or a failure halfway. (SIGKILL cannot be caught: then
//! `ip netns list | grep twd` shows what is left.)

use std::fs;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use twill_store::{EtcdOptions, EtcdStore};

use crate::cli::DemoArgs;

/// The underlay network's first three octets (inside the demo's namespaces only).
const UNDERLAY: &str = "192.168.77";
/// The cluster network every demo uses (inside its own namespaces).
const NETWORK: &str = "10.244.0.0/16";
/// Where each node's API listens, inside its namespace.
const NODE_API: &str = "127.0.0.1:9465";
/// How long nodes get to write subnet.env (the debug binary compiles its plugin first).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the pods get to reach each other once every node has a lease.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping twill gets after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let flag = stop.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        println!("{name} received: stopping …");
        flag.store(true, Ordering::SeqCst);
    });
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || run_blocking(&args, &stop, &handle)).await?
}

/// The demo itself: `ip` commands, pings and child processes, so it runs on a blocking
/// thread and looks at `stop` between (and inside) its steps.
fn run_blocking(
    args: &DemoArgs,
    stop: &Arc<AtomicBool>,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<()> {
    preflight()?;
    let started = Instant::now();
    let mut demo = Demo::new(args, stop.clone())?;
    println!(
        "twill demo {}: {} nodes, backend {}, store {}",
        demo.id,
        args.nodes,
        args.backend,
        demo.store_description()
    );
    println!("namespaces {}-*, files in {}", demo.id, demo.dir.display());
    demo.put_config(args, rt)?;
    println!(
        "creating namespaces: an underlay bridge, {} nodes, a pod behind each …",
        args.nodes
    );
    demo.build(args.nodes)?;
    println!("starting nodes (twill run on each) …");
    demo.start_nodes()?;
    demo.wait_for_leases()?;
    demo.wire_pods()?;
    println!("waiting for convergence (every pod pinging every other) …");
    let reach = demo.converge()?;
    demo.print_matrix(&reach);
    let total = reach.len() * (reach.len() - 1);
    let ok = reach.iter().flatten().filter(|r| **r == Some(true)).count();
    println!(
        "reachable {ok}/{total}  (cluster up in {:.1}s)",
        started.elapsed().as_secs_f64()
    );
    if ok != total {
        demo.print_log_tails();
        bail!("only {ok} of {total} pod pairs reach each other");
    }
    demo.throughput()?;
    demo.serve_dashboard();
    match args.duration {
        Some(secs) => println!("running for {secs}s (Ctrl-C stops earlier) …"),
        None => println!("running; press Ctrl-C to stop and remove everything"),
    }
    demo.run_until(args.duration.map(Duration::from_secs))?;
    println!("stopping: removing namespaces, devices, processes and files …");
    drop(demo);
    println!("done: nothing left behind");
    Ok(())
}

/// Root, and the tools the demo runs.
fn preflight() -> anyhow::Result<()> {
    let uid = output(&["id", "-u"])?;
    if uid.trim() != "0" {
        bail!("twill demo needs root (network namespaces, vxlan devices): run it with sudo");
    }
    for (tool, package) in [("ip", "iproute2"), ("ping", "iputils-ping")] {
        if !have(tool) {
            bail!("{tool} not found: apt-get install {package}");
        }
    }
    Ok(())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Run a command; its stdout, or an error with its stderr.
fn output(cmd: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", cmd[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run a command, failing with its stderr.
fn sh(cmd: &[&str]) -> anyhow::Result<()> {
    output(cmd).map(drop)
}

/// Whether a command succeeds (output discarded).
fn succeeds(cmd: &[&str]) -> bool {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Where the nodes keep their leases.
enum Store {
    /// One SQLite file in the demo's directory.
    Embedded(PathBuf),
    /// An etcd the host reaches at `target`, under `prefix`; nodes reach it through a
    /// proxy on 127.0.0.1:2379 in their namespace.
    Etcd {
        endpoints: Vec<String>,
        target: SocketAddr,
        prefix: String,
        client: Option<Box<EtcdStore>>,
    },
}

struct Node {
    ns: String,
    pod_ns: String,
    dir: PathBuf,
    twill: Option<Child>,
    pod_ip: Option<String>,
}

impl Node {
    fn subnet_file(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("twill.log")
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Everything the demo made; `Drop` removes it.
struct Demo {
    id: String,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    exe: PathBuf,
    store: Store,
    namespaces: Vec<String>,
    nodes: Vec<Node>,
    /// Processes other than twill (iperf3's server), killed at exit.
    helpers: Vec<Child>,
    proxies: Vec<Proxy>,
    rt: Option<tokio::runtime::Handle>,
}

impl Demo {
    fn new(args: &DemoArgs, stop: Arc<AtomicBool>) -> anyhow::Result<Demo> {
        let exe = std::env::current_exe().context("find the twill binary")?;
        let id = format!("twd{:04x}", rand::random::<u16>());
        let dir = std::env::temp_dir().join(format!("twill-demo-{id}"));
        // create_dir (not _all): a leftover directory of the same name is an error, never
        // shared.
        fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        let store = if args.etcd_endpoints.is_empty() {
            Store::Embedded(dir.join("leases.db"))
        } else {
            Store::Etcd {
                target: etcd_target(&args.etcd_endpoints[0])?,
                endpoints: args.etcd_endpoints.clone(),
                prefix: format!("/twill-demo/{id}/network"),
                client: None,
            }
        };
        Ok(Demo {
            id,
            dir,
            stop,
            exe,
            store,
            namespaces: Vec::new(),
            nodes: Vec::new(),
            helpers: Vec::new(),
            proxies: Vec::new(),
            rt: None,
        })
    }

    fn store_description(&self) -> String {
        match &self.store {
            Store::Embedded(path) => format!("embedded ({})", path.display()),
            Store::Etcd {
                endpoints, prefix, ..
            } => format!("etcd {} under {prefix}", endpoints.join(",")),
        }
    }

    /// Fail with "interrupted" once a signal asked the demo to stop.
    fn check(&self) -> anyhow::Result<()> {
        if self.stop.load(Ordering::SeqCst) {
            bail!("interrupted before the demo was up; removed what it had made");
        }
        Ok(())
    }

    /// Sleep a little, failing if a signal arrived meanwhile.
    fn pause(&self, d: Duration) -> anyhow::Result<()> {
        thread::sleep(d);
        self.check()
    }

    fn put_config(&mut self, args: &DemoArgs, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
        let json = format!(
            r#"{{"Network":"{NETWORK}","Backend":{{"Type":"{}"}}}}"#,
            args.backend
        );
        twill_core::Config::parse(&json).context("--backend")?;
        self.rt = Some(rt.clone());
        match &mut self.store {
            Store::Embedded(path) => rt.block_on(crate::config::put_embedded(
                path,
                "/coreos.com/network",
                &json,
            )),
            Store::Etcd {
                endpoints,
                prefix,
                client,
                ..
            } => {
                let store = rt.block_on(EtcdStore::connect(EtcdOptions {
                    endpoints: endpoints.clone(),
                    prefix: prefix.clone(),
                }))?;
                let key = store.config_key();
                rt.block_on(store.client().clone().put(key, json, None))
                    .with_context(|| {
                        format!("write the config to etcd at {}", endpoints.join(","))
                    })?;
                *client = Some(Box::new(store));
                Ok(())
            }
        }
    }

    fn add_ns(&mut self, suffix: &str) -> anyhow::Result<String> {
        self.check()?;
        let ns = format!("{}-{suffix}", self.id);
        sh(&["ip", "netns", "add", &ns])
            .with_context(|| format!("create namespace {ns} (is another demo using this id?)"))?;
        self.namespaces.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The underlay bridge namespace, then each node with its pod.
    fn build(&mut self, nodes: u8) -> anyhow::Result<()> {
        let underlay = self.add_ns("u")?;
        sh(&[
            "ip", "-n", &underlay, "link", "add", "br0", "type", "bridge",
        ])?;
        sh(&["ip", "-n", &underlay, "link", "set", "br0", "up"])?;
        for k in 1..=nodes {
            self.add_node(&underlay, k)?;
        }
        Ok(())
    }

    fn add_node(&mut self, underlay: &str, k: u8) -> anyhow::Result<()> {
        let ns = self.add_ns(&format!("n{k}"))?;
        let peer = format!("u-n{k}");
        let addr = format!("{UNDERLAY}.{k}/24");
        sh(&[
            "ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns",
            underlay,
        ])?;
        sh(&[
            "ip", "-n", underlay, "link", "set", &peer, "master", "br0", "up",
        ])?;
        sh(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        let pod_ns = self.add_ns(&format!("p{k}"))?;
        sh(&["ip", "-n", &ns, "link", "add", "cni0", "type", "bridge"])?;
        sh(&[
            "ip", "-n", &ns, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0",
            "netns", &pod_ns,
        ])?;
        sh(&[
            "ip", "-n", &ns, "link", "set", "vpod", "master", "cni0", "up",
        ])?;
        let dir = self.dir.join(format!("n{k}"));
        fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        self.nodes.push(Node {
            ns,
            pod_ns,
            dir,
            twill: None,
            pod_ip: None,
        });
        Ok(())
    }

    /// One `twill run` per node, in its own process group (so a Ctrl-C reaches only the
    /// demo, which then stops the nodes in order).
    fn start_nodes(&mut self) -> anyhow::Result<()> {
        let store_args: Vec<String> = match &self.store {
            Store::Embedded(path) => vec![
                "--store".into(),
                "embedded".into(),
                "--store-path".into(),
                path.display().to_string(),
            ],
            Store::Etcd { prefix, .. } => vec![
                "--etcd-endpoints".into(),
                "http://127.0.0.1:2379".into(),
                "--etcd-prefix".into(),
                prefix.clone(),
            ],
        };
        for i in 0..self.nodes.len() {
            self.check()?;
            if let Store::Etcd { target, .. } = &self.store {
                let listen: SocketAddr = ([127, 0, 0, 1], 2379).into();
                let proxy = Proxy::start(Some(&self.nodes[i].ns), listen, None, *target)
                    .with_context(|| format!("proxy to etcd in {}", self.nodes[i].ns))?;
                self.proxies.push(proxy);
            }
            let node = &mut self.nodes[i];
            let log = fs::File::create(node.log())
                .with_context(|| format!("create {}", node.log().display()))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &node.ns])
                .arg(&self.exe)
                .arg("run")
                .args(&store_args)
                .args(["--iface", "eth0", "--subnet-file"])
                .arg(node.subnet_file())
                .env("TWILL_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .process_group(0)
                .spawn()
                .context("start twill run")?;
            println!("  {}: twill run (pid {})", node.ns, child.id());
            node.twill = Some(child);
        }
        Ok(())
    }

    /// The first node whose twill has exited, as an error with its log.
    fn check_nodes(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            if let Some(child) = node.twill.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                node.twill = None;
                bail!(
                    "twill on {} exited ({status}); its log ends:\n{}",
                    node.ns,
                    node.log_tail()
                );
            }
        }
        Ok(())
    }

    fn wait_for_leases(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut reported = 0;
        loop {
            self.check_nodes()?;
            let ready = self
                .nodes
                .iter()
                .filter(|n| n.subnet_file().exists())
                .count();
            if ready != reported {
                println!("  {ready}/{} nodes hold a lease", self.nodes.len());
                reported = ready;
            }
            if ready == self.nodes.len() {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                self.print_log_tails();
                bail!(
                    "only {ready} of {} nodes got a lease within {}s",
                    self.nodes.len(),
                    START_TIMEOUT.as_secs()
                );
            }
            self.pause(Duration::from_millis(200))?;
        }
    }

    /// What a CNI plugin would do with subnet.env: `cni0` gets the subnet's first
    /// address, the pod `.2` with a default route via it.
    fn wire_pods(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            let text = fs::read_to_string(node.subnet_file())?;
            let env = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{key}=")))
                    .map(str::to_owned)
                    .with_context(|| format!("{key} missing in {}", node.subnet_file().display()))
            };
            let first = env("FLANNEL_SUBNET")?;
            let mtu = env("FLANNEL_MTU")?;
            let (gw, len) = first
                .split_once('/')
                .context("FLANNEL_SUBNET is not a/len")?;
            let pod_ip = match gw.rsplit_once('.') {
                Some((net, _)) => format!("{net}.2"),
                None => bail!("FLANNEL_SUBNET {first} is not IPv4"),
            };
            sh(&["ip", "-n", &node.ns, "addr", "add", &first, "dev", "cni0"])?;
            sh(&["ip", "-n", &node.ns, "link", "set", "cni0", "up"])?;
            let pod_addr = format!("{pod_ip}/{len}");
            sh(&[
                "ip",
                "-n",
                &node.pod_ns,
                "addr",
                "add",
                &pod_addr,
                "dev",
                "eth0",
            ])?;
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
            ])?;
            sh(&[
                "ip",
                "-n",
                &node.pod_ns,
                "route",
                "add",
                "default",
                "via",
                gw,
            ])?;
            node.pod_ip = Some(pod_ip);
        }
        Ok(())
    }

    fn ping(&self, from: usize, to: usize) -> bool {
        let Some(dst) = &self.nodes[to].pod_ip else {
            return false;
        };
        let ns = &self.nodes[from].pod_ns;
        succeeds(&["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", dst])
    }

    /// Ping every pair until all reach each other or [`CONVERGE_TIMEOUT`] passes; the
    /// matrix (`None` on the diagonal).
    fn converge(&mut self) -> anyhow::Result<Vec<Vec<Option<bool>>>> {
        let n = self.nodes.len();
        let total = n * (n - 1);
        let start = Instant::now();
        let mut reach = vec![vec![None; n]; n];
        let mut reported = usize::MAX;
        loop {
            self.check_nodes()?;
            for (from, row) in reach.iter_mut().enumerate() {
                for (to, cell) in row.iter_mut().enumerate() {
                    if from != to && *cell != Some(true) {
                        *cell = Some(self.ping(from, to));
                    }
                }
            }
            let ok = reach.iter().flatten().filter(|r| **r == Some(true)).count();
            if ok != reported {
                println!("  {ok}/{total} pod pairs reach each other");
                reported = ok;
            }
            if ok == total || start.elapsed() > CONVERGE_TIMEOUT {
                return Ok(reach);
            }
            self.pause(Duration::from_millis(300))?;
        }
    }

    fn print_matrix(&self, reach: &[Vec<Option<bool>>]) {
        let name = |i: usize| self.nodes[i].pod_ip.clone().unwrap_or_default();
        println!("\npod-to-pod reachability (ping from row to column):");
        print!("{:>14}", "");
        for to in 0..reach.len() {
            print!("{:>14}", name(to));
        }
        println!();
        for (from, row) in reach.iter().enumerate() {
            print!("{:>14}", name(from));
            for cell in row {
                let text = match cell {
                    None => "-",
                    Some(true) => "ok",
                    Some(false) => "FAIL",
                };
                print!("{text:>14}");
            }
            println!();
        }
    }

    fn print_log_tails(&self) {
        for node in &self.nodes {
            eprintln!("--- twill log on {} ---\n{}", node.ns, node.log_tail());
        }
    }

    /// iperf3 for 2 s from pod 1 to pod 2, when iperf3 is installed.
    fn throughput(&mut self) -> anyhow::Result<()> {
        if !have("iperf3") {
            println!("throughput: skipped (iperf3 is not installed: apt-get install iperf3)");
            return Ok(());
        }
        let (Some(dst), src_ns, dst_ns) = (
            self.nodes[1].pod_ip.clone(),
            self.nodes[0].pod_ns.clone(),
            self.nodes[1].pod_ns.clone(),
        ) else {
            return Ok(());
        };
        println!("measuring throughput pod 1 → pod 2 (iperf3, 2 s) …");
        let server = Command::new("ip")
            .args(["netns", "exec", &dst_ns, "iperf3", "-s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("start iperf3 server")?;
        self.helpers.push(server);
        let start = Instant::now();
        let result = loop {
            self.check()?;
            let out = Command::new("ip")
                .args([
                    "netns", "exec", &src_ns, "iperf3", "-c", &dst, "-t", "2", "-J",
                ])
                .stdin(Stdio::null())
                .output()
                .context("run iperf3")?;
            let json = serde_json::from_slice::<serde_json::Value>(&out.stdout).ok();
            let bps = json
                .as_ref()
                .and_then(|v| v["end"]["sum_received"]["bits_per_second"].as_f64());
            if let (true, Some(bps)) = (out.status.success(), bps) {
                break Ok(bps);
            }
            if start.elapsed() > Duration::from_secs(5) {
                let error = json
                    .as_ref()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned());
                break Err(error);
            }
            thread::sleep(Duration::from_millis(200));
        };
        self.stop_helpers();
        match result {
            Ok(bps) => println!(
                "throughput pod 1 → pod 2: {:.2} Gbit/s (iperf3, 2 s, one host's CPU)",
                bps / 1e9
            ),
            Err(e) => println!("throughput: skipped (iperf3 failed: {e})"),
        }
        Ok(())
    }

    /// A loopback proxy on the host to node 1's API; if it cannot be opened, say how
    /// to reach the API inside the namespace instead.
    fn serve_dashboard(&mut self) {
        let ns = self.nodes[0].ns.clone();
        let target: SocketAddr = NODE_API
            .parse()
            .unwrap_or_else(|_| ([127, 0, 0, 1], 9465).into());
        let proxy = Proxy::start(None, ([127, 0, 0, 1], 9465).into(), Some(&ns), target)
            .or_else(|_| Proxy::start(None, ([127, 0, 0, 1], 0).into(), Some(&ns), target));
        match proxy {
            Ok(p) => {
                println!(
                    "dashboard (node 1's API, proxied from this host's loopback): http://{}/  (try /v1/status, /v1/peers, /metrics)",
                    p.local
                );
                self.proxies.push(p);
            }
            Err(e) => println!("dashboard proxy unavailable ({e})"),
        }
        println!("inside a node: ip netns exec {ns} curl http://{NODE_API}/v1/status");
        println!(
            "explore: ip netns exec {}-p1 ping {}",
            self.id,
            self.nodes[1].pod_ip.clone().unwrap_or_default()
        );
    }

    /// Wait for a signal or the end of `duration`; fail if a node dies meanwhile.
    fn run_until(&mut self, duration: Option<Duration>) -> anyhow::Result<()> {
        let start = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            if duration.is_some_and(|d| start.elapsed() >= d) {
                return Ok(());
            }
            self.check_nodes()?;
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stop the helper processes (iperf3's server).
    fn stop_helpers(&mut self) {
        let helpers = std::mem::take(&mut self.helpers);
        terminate(helpers);
    }

    /// SIGTERM (as a node is stopped for real), then SIGKILL after [`STOP_TIMEOUT`].
    fn stop_processes(&mut self) {
        let mut children: Vec<Child> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.twill.take())
            .collect();
        children.append(&mut self.helpers);
        terminate(children);
    }
}

/// SIGTERM each child, then SIGKILL what is still running after [`STOP_TIMEOUT`].
fn terminate(children: Vec<Child>) {
    for child in &children {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for mut child in children {
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        for proxy in &mut self.proxies {
            proxy.stop();
        }
        self.stop_processes();
        for ns in self.namespaces.iter().rev() {
            // Anything still running inside (a ping) dies with the namespace.
            if let Ok(pids) = output(&["ip", "netns", "pids", ns]) {
                for pid in pids.split_whitespace() {
                    let _ = Command::new("kill")
                        .args(["-KILL", pid])
                        .stderr(Stdio::null())
                        .status();
                }
            }
            if let Err(e) = sh(&["ip", "netns", "del", ns]) {
                eprintln!("warning: {e:#}");
            }
        }
        if let (
            Store::Etcd {
                client: Some(store),
                prefix,
                ..
            },
            Some(rt),
        ) = (&self.store, &self.rt)
        {
            let opts = etcd_client::DeleteOptions::new().with_prefix();
            let key = format!("{}/", prefix.trim_end_matches('/'));
            if let Err(e) = rt.block_on(store.client().clone().delete(key, Some(opts))) {
                eprintln!("warning: could not delete {prefix} from etcd: {e}");
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: could not remove {}: {e}", self.dir.display());
        }
    }
}

/// `host:port` of an `http://` etcd URL, as this host resolves it.
fn etcd_target(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.strip_prefix("http://").with_context(|| {
        format!("--etcd-endpoints {url}: the demo supports http:// endpoints only")
    })?;
    let hostport = rest.trim_end_matches('/');
    std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .with_context(|| format!("--etcd-endpoints {url}: not host:port"))?
        .next()
        .with_context(|| format!("--etcd-endpoints {url}: no address"))
}

/// Run `f` on a fresh thread inside network namespace `ns` (`None`: this process's
/// own), so no other thread ever changes namespace; a socket keeps the namespace it was
/// made in, so the result can be used from any thread.
fn in_netns<T: Send + 'static>(
    ns: Option<&str>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = ns.map(|n| Path::new("/run/netns").join(n));
    thread::spawn(move || {
        if let Some(path) = path {
            let file = fs::File::open(&path)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}

/// A TCP proxy: listens in one namespace, connects in another. Only loopback
/// addresses are used by the demo.
struct Proxy {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start(
        listen_ns: Option<&str>,
        listen: SocketAddr,
        connect_ns: Option<&str>,
        target: SocketAddr,
    ) -> io::Result<Proxy> {
        let listener = in_netns(listen_ns, move || {
            let l = TcpListener::bind(listen)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let connect_ns = connect_ns.map(str::to_owned);
        let (s, c) = (stop.clone(), conns.clone());
        let thread = thread::spawn(move || accept_loop(&listener, &s, &c, connect_ns, target));
        Ok(Proxy {
            local,
            stop,
            conns,
            thread: Some(thread),
        })
    }

    /// Stop accepting and cut every open connection.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    conns: &Arc<Mutex<Vec<TcpStream>>>,
    connect_ns: Option<String>,
    target: SocketAddr,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let (conns, ns) = (conns.clone(), connect_ns.clone());
                thread::spawn(move || {
                    if let Err(e) = forward(client, ns.as_deref(), target, &conns) {
                        tracing::debug!("demo proxy to {target}: {e}");
                    }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                tracing::debug!("demo proxy accept: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn forward(
    client: TcpStream,
    ns: Option<&str>,
    target: SocketAddr,
    conns: &Mutex<Vec<TcpStream>>,
) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let upstream = in_netns(ns, move || {
        TcpStream::connect_timeout(&target, Duration::from_secs(2))
    })?;
    {
        let mut list = conns.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|c| c.peer_addr().is_ok());
        list.push(client.try_clone()?);
        list.push(upstream.try_clone()?);
    }
    let (mut c_read, mut u_write) = (client.try_clone()?, upstream.try_clone()?);
    let up = thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut u_write);
        let _ = u_write.shutdown(Shutdown::Write);
    });
    let (mut u_read, mut c_write) = (upstream, client);
    let _ = io::copy(&mut u_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = up.join();
    c_write.flush()
}
