//! `twill demo`: a whole twill cluster on this machine, for a first look.
//!
//! ```text
//!   <id>-u0   underlay namespace: bridge `br0` joining the nodes on 192.168.77.0/24
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
//! The namespaces, pods, traffic and cleanup are `twill-lab`'s; this file is the demo's
//! story. Nothing here changes the host's own network namespace. The one thing on the
//! host side is a loopback TCP proxy (127.0.0.1) to node 1's API. [`Demo`]'s `Drop`
//! (then the lab's) removes every process, namespace, proxy, store key and file the
//! demo made, on every exit path: Ctrl-C, SIGTERM, `--duration`, or a failure halfway.
//! (SIGKILL cannot be caught: then `ip netns list | grep twd` shows what is left.)

use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use twill_lab::netns::Proxy;
use twill_lab::pods::{self, PodNet};
use twill_lab::traffic::{self, Matrix};
use twill_lab::{Interrupt, Lab, NodeNet, process};
use twill_store::{EtcdOptions, EtcdStore};

use crate::cli::{DemoArgs, Runtime};

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
    let stop = Interrupt::new();
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let flag = stop.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        println!("{name} received: stopping …");
        flag.raise();
    });
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || run_blocking(&args, stop, &handle)).await?
}

/// The demo itself: `ip` commands, pings and child processes, so it runs on a blocking
/// thread and looks at `stop` between (and inside) its steps.
fn run_blocking(
    args: &DemoArgs,
    stop: Interrupt,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<()> {
    twill_lab::require(
        "twill demo",
        &[("ip", "iproute2"), ("ping", "iputils-ping")],
    )?;
    let started = Instant::now();
    let mut demo = Demo::new(args, stop)?;
    println!(
        "twill demo {}: {} nodes, backend {}, store {}",
        demo.lab.id(),
        args.nodes,
        args.backend,
        demo.store_description()
    );
    println!(
        "namespaces {}-*, files in {}",
        demo.lab.id(),
        demo.lab.dir().display()
    );
    demo.put_config(args, rt)?;
    println!(
        "creating namespaces: an underlay bridge, {} nodes, a pod behind each …",
        args.nodes
    );
    demo.build(args.nodes)?;
    println!("starting nodes (twill run on each) …");
    demo.start_nodes()?;
    demo.wait_for_leases()?;
    demo.wire_pods(args.runtime)?;
    println!("waiting for convergence (every pod pinging every other) …");
    let reach = demo.converge()?;
    demo.print_matrix(&reach);
    let total = reach.len() * (reach.len() - 1);
    let ok = traffic::reachable(&reach);
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
    net: NodeNet,
    twill: Option<Child>,
    /// The pod (a bare namespace, or a container's namespace attached by name) and its
    /// address, once wired.
    pod: Option<(String, String)>,
}

impl Node {
    fn subnet_file(&self) -> PathBuf {
        self.net.dir.join("subnet.env")
    }

    fn log(&self) -> PathBuf {
        self.net.dir.join("twill.log")
    }

    fn log_tail(&self) -> String {
        process::log_tail(&self.log(), 15)
    }

    fn pod_ip(&self) -> String {
        self.pod.as_ref().map(|p| p.1.clone()).unwrap_or_default()
    }

    fn pod_ns(&self) -> String {
        self.pod.as_ref().map(|p| p.0.clone()).unwrap_or_default()
    }
}

/// Everything the demo made; `Drop` stops what runs, then the lab removes the rest.
struct Demo {
    exe: PathBuf,
    store: Store,
    nodes: Vec<Node>,
    proxies: Vec<Proxy>,
    rt: Option<tokio::runtime::Handle>,
    /// dockerd or podman per node, with `--runtime`.
    containers: Vec<crate::containers::Host>,
    // Dropped after Demo's own Drop: the namespaces and the directory.
    lab: Lab,
}

impl Demo {
    fn new(args: &DemoArgs, stop: Interrupt) -> anyhow::Result<Demo> {
        let exe = std::env::current_exe().context("find the twill binary")?;
        let id = format!("twd{:04x}", rand::random::<u16>());
        let dir = std::env::temp_dir().join(format!("twill-demo-{id}"));
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
        let lab = Lab::create(&id, &dir, stop)?;
        Ok(Demo {
            exe,
            store,
            nodes: Vec::new(),
            proxies: Vec::new(),
            rt: None,
            containers: Vec::new(),
            lab,
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

    fn stop(&self) -> &Interrupt {
        self.lab.interrupt()
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
                let store = rt.block_on(EtcdStore::connect(EtcdOptions::plain(
                    endpoints.clone(),
                    prefix,
                )))?;
                // Kept before the write, so that Drop deletes the prefix even if the
                // write half succeeded.
                let store = client.insert(Box::new(store));
                rt.block_on(store.put_config(&json))
                    .with_context(|| format!("write the config to etcd at {}", endpoints.join(",")))
            }
        }
    }

    /// The underlay bridge namespace, then each node with its pod.
    fn build(&mut self, nodes: u8) -> anyhow::Result<()> {
        self.lab
            .add_segments(1)
            .context("create the underlay (is another demo using this id?)")?;
        for k in 1..=nodes {
            let net = self.lab.add_node(k, 0)?;
            self.nodes.push(Node {
                net,
                twill: None,
                pod: None,
            });
        }
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
            self.stop().check()?;
            if let Store::Etcd { target, .. } = &self.store {
                let ns = &self.nodes[i].net.ns;
                let listen: SocketAddr = ([127, 0, 0, 1], 2379).into();
                let proxy = Proxy::start(Some(ns), listen, None, *target)
                    .with_context(|| format!("proxy to etcd in {ns}"))?;
                self.proxies.push(proxy);
            }
            let node = &mut self.nodes[i];
            let log = fs::File::create(node.log())
                .with_context(|| format!("create {}", node.log().display()))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &node.net.ns])
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
            println!("  {}: twill run (pid {})", node.net.ns, child.id());
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
                    node.net.ns,
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
            self.stop().pause(Duration::from_millis(200))?;
        }
    }

    /// A pod per node. Without a runtime, what a CNI plugin would do with subnet.env:
    /// `cni0` gets the subnet's first address, the pod `.2` with a default route via it.
    /// With one, a real container per node (see [`crate::containers`]).
    fn wire_pods(&mut self, runtime: Runtime) -> anyhow::Result<()> {
        if runtime != Runtime::None {
            println!("starting a {} container on every node …", runtime.name());
        }
        for k in 0..self.nodes.len() {
            self.stop().check()?;
            let node = &self.nodes[k];
            let pod = match runtime {
                Runtime::None => {
                    let (net, mtu) = PodNet::from_subnet_env(&node.subnet_file())?;
                    pods::wire(&node.net, &net, mtu)?;
                    (node.net.pod_ns.clone(), net.pod())
                }
                runtime => {
                    let (host, pid, ip) = crate::containers::start(
                        runtime,
                        &node.net,
                        &node.subnet_file(),
                        &self.lab.dir().join(format!("{}-{}", runtime.name(), k + 1)),
                        &format!("{}-c{}", self.lab.id(), k + 1),
                    )?;
                    self.containers.push(host);
                    let ns = self.lab.attach_ns(&format!("c{}", k + 1), pid)?;
                    println!("  {}: container {ip} ({})", node.net.ns, runtime.name());
                    (ns, ip)
                }
            };
            self.nodes[k].pod = Some(pod);
        }
        Ok(())
    }

    /// Ping every pair until all reach each other or [`CONVERGE_TIMEOUT`] passes.
    fn converge(&mut self) -> anyhow::Result<Matrix> {
        let pods: Vec<(String, String)> = self
            .nodes
            .iter()
            .map(|n| (n.pod_ns(), n.pod_ip()))
            .collect();
        let stop = self.stop().clone();
        traffic::converge(
            &pods,
            CONVERGE_TIMEOUT,
            &stop,
            |ok, total| println!("  {ok}/{total} pod pairs reach each other"),
            || self.check_nodes(),
        )
    }

    fn print_matrix(&self, reach: &Matrix) {
        let name = |i: usize| self.nodes[i].pod_ip();
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
            eprintln!("--- twill log on {} ---\n{}", node.net.ns, node.log_tail());
        }
    }

    /// iperf3 for 2 s from pod 1 to pod 2, when iperf3 is installed.
    fn throughput(&mut self) -> anyhow::Result<()> {
        if !twill_lab::have("iperf3") {
            println!("throughput: skipped (iperf3 is not installed: apt-get install iperf3)");
            return Ok(());
        }
        self.stop().check()?;
        println!("measuring throughput pod 1 → pod 2 (iperf3, 2 s) …");
        let (src, dst) = (&self.nodes[0], &self.nodes[1]);
        match traffic::iperf3(&dst.pod_ns(), &src.pod_ns(), &dst.pod_ip(), 2, 1) {
            Ok(r) => println!(
                "throughput pod 1 → pod 2: {:.2} Gbit/s (iperf3, 2 s, one host's CPU)",
                r.bits_per_second / 1e9
            ),
            Err(e) => println!("throughput: skipped ({e})"),
        }
        Ok(())
    }

    /// A loopback proxy on the host to node 1's API; if it cannot be opened, say how
    /// to reach the API inside the namespace instead.
    fn serve_dashboard(&mut self) {
        let ns = self.nodes[0].net.ns.clone();
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
            "explore: ip netns exec {} ping {}",
            self.nodes[0].pod_ns(),
            self.nodes[1].pod_ip()
        );
    }

    /// Wait for a signal or the end of `duration`; fail if a node dies meanwhile.
    fn run_until(&mut self, duration: Option<Duration>) -> anyhow::Result<()> {
        let start = Instant::now();
        while !self.stop().raised() {
            if duration.is_some_and(|d| start.elapsed() >= d) {
                return Ok(());
            }
            self.check_nodes()?;
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        for proxy in &mut self.proxies {
            proxy.stop();
        }
        // Containers first (their runtimes unmount what they made), then the nodes.
        self.containers.clear();
        // SIGTERM (as a node is stopped for real), then SIGKILL after STOP_TIMEOUT.
        let children = self.nodes.iter_mut().filter_map(|n| n.twill.take());
        process::terminate(children.collect(), STOP_TIMEOUT);
        if let (
            Store::Etcd {
                client: Some(store),
                prefix,
                ..
            },
            Some(rt),
        ) = (&self.store, &self.rt)
            && let Err(e) = rt.block_on(store.delete_prefix())
        {
            eprintln!("warning: could not delete {prefix} from etcd: {e}");
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
