//! Observability end to end: a real Prometheus scrapes a running twill and answers a
//! PromQL query for its series, and headless Chromium renders the dashboard of a node —
//! of a three-node vxlan cluster, and of a node that knows 300 leases.
//!
//! Prometheus and Chromium run inside a node's namespace and talk to twill on that
//! namespace's loopback only. Needs Debian's `prometheus`, `chromium` and
//! `chromium-driver` (scripts/setup); without them the tests fail and say so.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_e2e::{Cluster, Node, run, wait_for};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
/// Where Prometheus listens, inside the node's namespace.
const PROMETHEUS_ADDR: &str = "127.0.0.1:9090";
const DASHBOARD_URL: &str = "http://127.0.0.1:9465/";

/// Panic, saying what to install, unless `tool` is on the PATH.
fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} not found: this test needs Debian's `{package}` (apt-get install {package}, \
         or run scripts/setup)"
    );
}

/// A cluster of `n` vxlan nodes, each serving its API, every peer programmed.
fn vxlan_cluster(n: u8) -> Cluster {
    let mut c = Cluster::new(n);
    // Probes every second, so the dashboard's health shows within seconds.
    c.twill_env
        .push(("TWILL_PEER_PROBE_INTERVAL".into(), "1".into()));
    c.put_config(CONFIG);
    for k in 1..=usize::from(n) {
        c.start_twill(k);
    }
    c.wire_pods();
    for node in &c.nodes {
        wait_programmed(node, usize::from(n) - 1);
    }
    c
}

/// Wait until `node`'s API shows `peers` peers, all programmed.
fn wait_programmed(node: &Node, peers: usize) {
    wait_for(
        &format!("{} to program {peers} peers", node.ns),
        Duration::from_secs(60),
        || {
            let (code, body) = node.api_get("/v1/peers");
            let v: Value = serde_json::from_str(&body).ok()?;
            let list = v["peers"].as_array()?;
            (code == 200 && list.len() == peers && list.iter().all(|p| p["state"] == "programmed"))
                .then_some(())
        },
    );
}

/// GET `url` with curl inside `ns`; the body if the answer is 2xx.
fn curl_in(ns: &str, url: &str) -> Option<String> {
    let out = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "curl",
        "-sf",
        "--max-time",
        "5",
        url,
    ]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Prometheus server inside a node's namespace, killed (and its files removed) on
/// drop, also when the test fails.
struct Prometheus {
    ns: String,
    dir: PathBuf,
    child: Child,
}

impl Prometheus {
    /// Start Prometheus in `node`'s namespace, scraping the node's twill every second.
    fn start(node: &Node, dir: &Path) -> Prometheus {
        require("prometheus", "prometheus");
        fs::create_dir_all(dir.join("data")).expect("prometheus directory");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: twill\n    static_configs:\n\
             \x20     - targets: ['127.0.0.1:9465']\n",
        )
        .expect("write prometheus.yml");
        let log = fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns, "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS_ADDR}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            ns: node.ns.clone(),
            dir: dir.to_owned(),
            child,
        }
    }

    /// Prometheus's log, for failure messages.
    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET a path of Prometheus's HTTP API as JSON.
    fn api(&self, path_and_query: &str) -> Option<Value> {
        let body = curl_in(
            &self.ns,
            &format!("http://{PROMETHEUS_ADDR}{path_and_query}"),
        )?;
        serde_json::from_str(&body).ok()
    }

    /// The value of an instant query that returns one sample, if it does.
    fn query_one(&self, promql: &str) -> Option<f64> {
        let v = self.api(&format!("/api/v1/query?query={promql}"))?;
        if v["status"] != "success" {
            return None;
        }
        let result = v["data"]["result"].as_array()?;
        match result.as_slice() {
            [sample] => sample["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_scrapes_twill_and_answers_promql() {
    let c = vxlan_cluster(3);
    let node = &c.nodes[0];
    let leases = c.leases().len();
    assert_eq!(leases, 3, "{:?}", c.leases());

    let mut prometheus = Prometheus::start(node, &c.dir().join("prometheus"));
    wait_for(
        "Prometheus to answer on its HTTP API",
        Duration::from_secs(30),
        || {
            let ready = curl_in(&node.ns, &format!("http://{PROMETHEUS_ADDR}/-/ready"));
            if ready.is_none() {
                // Reaped, not probed with kill -0: a zombie would pass that.
                let exited = prometheus.child.try_wait().expect("wait for prometheus");
                assert!(
                    exited.is_none(),
                    "prometheus exited ({exited:?}):\n{}",
                    prometheus.log()
                );
            }
            ready
        },
    );
    // Scraped: the target is up (a successful scrape of twill's /metrics).
    wait_for(
        &format!(
            "Prometheus to scrape twill (up{{job=\"twill\"}} == 1)\n{}",
            prometheus.log()
        ),
        Duration::from_secs(30),
        || (prometheus.query_one("up%7Bjob%3D%22twill%22%7D")? == 1.0).then_some(()),
    );
    let mut last = None;
    let known = wait_for(
        "Prometheus to answer twill_leases_known",
        Duration::from_secs(15),
        || {
            last = prometheus.query_one("twill_leases_known");
            last.filter(|v| *v == leases as f64)
        },
    );
    assert_eq!(known, leases as f64, "last answer {last:?}");

    // A labelled series too: peers by state, as PromQL sums them.
    let programmed = prometheus
        .query_one("sum(twill_peers%7Bstate%3D%22programmed%22%7D)")
        .expect("twill_peers{state=\"programmed\"}");
    assert_eq!(programmed, (leases - 1) as f64);
}

/// Headless Chromium inside a namespace, with a throw-away profile.
struct Chromium<'a> {
    ns: &'a str,
    profile: PathBuf,
}

impl<'a> Chromium<'a> {
    fn new(ns: &'a str, scratch: &Path) -> Chromium<'a> {
        require("chromium", "chromium");
        let profile = scratch.join("chromium-profile");
        fs::create_dir_all(&profile).expect("chromium profile");
        Chromium { ns, profile }
    }

    /// Run Chromium on `url` with `args`; killed after 90 s.
    fn run(&self, url: &str, args: &[&str]) -> Output {
        let profile = format!("--user-data-dir={}", self.profile.display());
        let mut cmd = vec![
            "timeout",
            "-k",
            "5",
            "90",
            "ip",
            "netns",
            "exec",
            self.ns,
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            &profile,
        ];
        cmd.extend_from_slice(args);
        cmd.push(url);
        run(&cmd)
    }

    /// The DOM after the page's script ran (5 s of virtual time: two polls).
    fn dom(&self, url: &str) -> String {
        let out = self.run(url, &["--virtual-time-budget=5000", "--dump-dom"]);
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && dom.contains("</html>"),
            "chromium --dump-dom {url} failed ({}):\nstderr: {}\nstdout: {dom}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        dom
    }

    /// Save a screenshot of `url` to `path` (a test artefact) and print where it is.
    fn screenshot(&self, url: &str, path: &Path, size: &str) {
        fs::create_dir_all(path.parent().expect("a directory")).expect("artefact directory");
        let _ = fs::remove_file(path);
        let out = self.run(
            url,
            &[
                "--virtual-time-budget=5000",
                &format!("--window-size={size}"),
                &format!("--screenshot={}", path.display()),
            ],
        );
        let png = fs::read(path).unwrap_or_default();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "chromium --screenshot wrote no picture to {} ({}):\n{}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        println!("dashboard screenshot: {}", path.display());
    }
}

/// `target/test-artefacts/<name>`, next to the test binaries.
fn artefact(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the target directory")
        .to_owned();
    target.join("test-artefacts").join(name)
}

/// One node tile of the rendered dashboard.
#[derive(Debug)]
struct Tile {
    subnet: String,
    public_ip: String,
    state: String,
    health: String,
    text: String,
}

/// Every node tile in a rendered DOM (`<div class="node …" … data-subnet=…>`).
fn tiles(dom: &str) -> Vec<Tile> {
    let attr = |tag: &str, name: &str| -> String {
        tag.split(&format!(" {name}=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_owned()
    };
    dom.split("<div class=\"node ")
        .skip(1)
        .map(|chunk| {
            let (tag, rest) = chunk.split_once('>').unwrap_or((chunk, ""));
            let inner = rest.split("</div>").next().unwrap_or_default();
            Tile {
                subnet: attr(tag, "data-subnet"),
                public_ip: attr(tag, "data-public-ip"),
                state: attr(tag, "data-state"),
                health: attr(tag, "data-health"),
                text: inner.to_owned(),
            }
        })
        .collect()
}

#[test]
fn chromium_shows_every_node_of_the_cluster_on_the_dashboard() {
    let c = vxlan_cluster(3);
    let node = &c.nodes[0];
    let browser = Chromium::new(&node.ns, c.dir());
    let dom = browser.dom(DASHBOARD_URL);
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page never loaded the API:\n{dom}"
    );

    let shown = tiles(&dom);
    assert_eq!(shown.len(), c.nodes.len(), "one tile per node: {shown:#?}");
    for n in &c.nodes {
        let subnet = n.subnet();
        let tile = shown
            .iter()
            .find(|t| t.subnet == subnet)
            .unwrap_or_else(|| panic!("node {} ({subnet}) not on the page: {shown:#?}", n.n));
        assert!(
            tile.text.contains(&subnet) && tile.text.contains(&n.ip()),
            "the tile of node {} shows its subnet and public IP: {tile:?}",
            n.n
        );
        assert_eq!(tile.public_ip, n.ip());
        let expected = if n.n == node.n { "own" } else { "programmed" };
        assert_eq!(tile.state, expected, "node {}: {tile:?}", n.n);
    }
    assert!(
        dom.contains("3 nodes · 2 programmed · 0 pending · 0 error"),
        "the summary counts the cluster"
    );
    browser.screenshot(DASHBOARD_URL, &artefact("dashboard.png"), "1280,900");

    // Health: every peer reachable with its round-trip time; then node 3's overlay
    // traffic from node 1 is dropped, and its tile turns unreachable and comes first.
    let peer_health = |want: &str, subnet: &str| {
        let (_, body) = node.api_get("/v1/peers");
        let v: Value = serde_json::from_str(&body).ok()?;
        v["peers"]
            .as_array()?
            .iter()
            .any(|p| p["subnet"] == subnet && p["health"]["reachable"] == (want == "reachable"))
            .then_some(())
    };
    let (two, three) = (c.nodes[1].subnet(), c.nodes[2].subnet());
    wait_for("both peers reachable", Duration::from_secs(30), || {
        peer_health("reachable", &two).and(peer_health("reachable", &three))
    });
    let shown = tiles(&browser.dom(DASHBOARD_URL));
    for t in shown.iter().filter(|t| t.state != "own") {
        assert_eq!(t.health, "reachable", "{t:?}");
        assert!(
            t.text.contains(" ms<"),
            "a reachable tile shows its RTT: {t:?}"
        );
    }
    let rule = [
        "INPUT",
        "-s",
        &node.ip(),
        "-p",
        "udp",
        "--dport",
        "8472",
        "-j",
        "DROP",
    ];
    c.nodes[2].iptables(&[&["-I"][..], &rule].concat());
    wait_for("node 3 unreachable", Duration::from_secs(30), || {
        peer_health("unreachable", &three)
    });
    let dom = browser.dom(DASHBOARD_URL);
    let shown = tiles(&dom);
    assert_eq!(
        shown[0].subnet, three,
        "the unreachable peer comes first: {shown:#?}"
    );
    assert_eq!(shown[0].health, "unreachable");
    assert!(shown[0].text.contains("unreachable"), "{:?}", shown[0]);
    assert!(dom.contains(" · 1 unreachable"), "the summary counts it");
    browser.screenshot(
        DASHBOARD_URL,
        &artefact("dashboard-unreachable.png"),
        "1280,900",
    );
    c.nodes[2].iptables(&[&["-D"][..], &rule].concat());
}

/// A lease for subnet `10.<a>.<b>.0/24` of a node that does not exist; `bad_mac` gives it
/// a BackendData the vxlan backend refuses, so that peer is in error.
fn fake_lease(c: &Cluster, a: u8, b: u8, bad_mac: bool) {
    let mac = if bad_mac {
        "not-a-mac".to_owned()
    } else {
        format!("0e:00:00:00:{a:02x}:{b:02x}")
    };
    let value = format!(
        r#"{{"PublicIP":"172.20.{}.{b}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#,
        a - 244
    );
    c.etcdctl(&[
        "put",
        &format!("{}/subnets/10.{a}.{b}.0-24", c.prefix),
        &value,
    ]);
}

#[test]
fn the_dashboard_stays_usable_with_300_leases() {
    // One real node and 299 leases of nodes that do not exist (reservations: no TTL);
    // three of them carry a VtepMAC the backend refuses.
    let mut c = Cluster::new(1);
    c.put_config(r#"{"Network":"10.244.0.0/14","Backend":{"Type":"vxlan"}}"#);
    let fakes: Vec<(u8, u8)> = (0..299u16)
        .map(|i| (245 + (i / 256) as u8, (i % 256) as u8))
        .collect();
    for (i, (a, b)) in fakes.iter().enumerate() {
        fake_lease(&c, *a, *b, i % 100 == 7);
    }
    c.start_twill(1);
    c.wire_pods();
    let node = &c.nodes[0];
    wait_for(
        "the node to handle all 299 peers",
        Duration::from_secs(120),
        || {
            let (_, body) = node.api_get("/v1/peers");
            let v: Value = serde_json::from_str(&body).ok()?;
            let list = v["peers"].as_array()?;
            (list.len() == 299 && list.iter().all(|p| p["state"] != "pending")).then_some(())
        },
    );

    // What the page polls: answered fast and small at this size.
    for path in ["/v1/peers", "/v1/leases", "/v1/status"] {
        let started = Instant::now();
        let (code, body) = node.api_get(path);
        let took = started.elapsed();
        eprintln!(
            "GET {path} with 300 leases: {took:.1?}, {} bytes",
            body.len()
        );
        assert_eq!(code, 200);
        assert!(took < Duration::from_secs(1), "GET {path} took {took:?}");
        assert!(body.len() < 512 * 1024, "GET {path}: {} bytes", body.len());
    }

    // Chromium's virtual time makes timers instant, but the page's own work (parsing,
    // building 300 tiles, layout) still takes real time: the dashboard's run against
    // an empty page's, in the same browser, shows it.
    let browser = Chromium::new(&node.ns, c.dir());
    let started = Instant::now();
    browser.dom("about:blank");
    let blank = started.elapsed();
    let started = Instant::now();
    let dom = browser.dom(DASHBOARD_URL);
    let dashboard = started.elapsed();
    eprintln!(
        "chromium: the dashboard with 300 leases in {dashboard:.2?}, an empty page in {blank:.2?}"
    );
    assert!(
        dashboard < blank + Duration::from_secs(5),
        "rendering 300 tiles took {:?} more than an empty page",
        dashboard.saturating_sub(blank)
    );
    let shown = tiles(&dom);
    assert_eq!(shown.len(), 300, "one tile per lease");
    assert!(
        dom.contains("300 nodes · 296 programmed · 0 pending · 3 error"),
        "summary: {}",
        dom.split("id=\"summary\">")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .unwrap_or("missing")
    );
    let errors: Vec<&Tile> = shown.iter().filter(|t| t.state == "error").collect();
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        dom.contains("no valid VtepMAC"),
        "an error tile carries its error text"
    );
    browser.screenshot(DASHBOARD_URL, &artefact("dashboard-300.png"), "1280,1600");
}
