//! `twill doctor`: what makes an overlay fail silently, checked on this node — one line
//! per check (ok / warn / FAIL, with the fix), or `--json`; exit 1 when a check fails.
//!
//! It reads the node's API (`/v1/status`, `/v1/peers`), `subnet.env`, the kernel through
//! iproute2's JSON output (`ip -j`, `bridge -j`), `/proc/sys`, `iptables -S` and
//! `ethtool -k`: the same views an operator would use by hand, so every finding can be
//! checked again with the command it names. A check whose input is missing (the API
//! down, a tool not installed) says so as a warning instead of guessing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use serde_json::Value;
use twill_api::model::{Peer, Peers, Status};
use twill_core::Subnet;

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One check's line.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The check's name (`forwarding`, `mtu`, …).
    pub check: &'static str,
    pub result: Verdict,
    /// What was found.
    pub message: String,
    /// What to do about it; `null` when nothing.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, message: impl Into<String>) -> Self {
        Self {
            check,
            result: Verdict::Ok,
            message: message.into(),
            fix: None,
        }
    }

    fn warn(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check,
            result: Verdict::Warn,
            message: message.into(),
            fix: Some(fix.into()).filter(|f: &String| !f.is_empty()),
        }
    }

    fn fail(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check,
            result: Verdict::Fail,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

/// What `twill doctor` is told.
pub struct Args {
    pub api_addr: SocketAddr,
    pub subnet_file: PathBuf,
    pub json: bool,
}

/// What the checks look at, gathered once.
struct Facts {
    status: Result<Status, String>,
    peers: Vec<Peer>,
    env: Result<std::collections::BTreeMap<String, String>, String>,
    links: Result<Vec<Value>, String>,
    routes: Result<Vec<Value>, String>,
    /// The kernel release (`uname -r`), or `TWILL_DOCTOR_KERNEL` (tests only: judge
    /// the checksum-offload case as on another kernel).
    kernel: String,
}

/// Run every check and print them; the exit code is 1 when one fails.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let facts = gather(&args).await;
    let findings = check_all(&facts);
    if args.json {
        let failed = findings
            .iter()
            .filter(|f| f.result == Verdict::Fail)
            .count();
        let warned = findings
            .iter()
            .filter(|f| f.result == Verdict::Warn)
            .count();
        let out = serde_json::json!({"checks": findings, "failed": failed, "warned": warned});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for f in &findings {
            let word = match f.result {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            let fix = f.fix.as_deref().map(|x| format!("\n      fix: {x}"));
            println!(
                "{word}  {:<16} {}{}",
                f.check,
                f.message,
                fix.unwrap_or_default()
            );
        }
    }
    Ok(i32::from(
        findings.iter().any(|f| f.result == Verdict::Fail),
    ))
}

async fn gather(args: &Args) -> Facts {
    let status = crate::status::get::<Status>(args.api_addr, "/v1/status")
        .await
        .map_err(|e| format!("{e:#}"));
    let peers = match &status {
        Ok(_) => crate::status::get::<Peers>(args.api_addr, "/v1/peers")
            .await
            .map(|p| p.peers)
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    Facts {
        status,
        peers,
        env: read_env(&args.subnet_file),
        links: ip_json(&["-d", "link", "show"]),
        routes: ip_json(&["route", "show", "table", "main"]),
        kernel: std::env::var("TWILL_DOCTOR_KERNEL").unwrap_or_else(|_| {
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned()
        }),
    }
}

fn check_all(f: &Facts) -> Vec<Finding> {
    vec![
        daemon(f),
        subnet_env(f),
        forwarding(),
        mtu(f),
        rp_filter(f),
        forward_policy(f),
        checksum_offload(f),
        peers(f),
        stale(f),
    ]
}

// ---- inputs ---------------------------------------------------------------------------

fn read_env(path: &Path) -> Result<std::collections::BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

/// Run a command; its stdout, or a message naming what failed.
fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| spawn_error(program, &e))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn spawn_error(program: &str, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!("{program} is not installed")
    } else {
        format!("{program}: {e}")
    }
}

/// The device the route to each of `ips` leaves through, as `ip route get` says, asked
/// in one `ip -batch` (one process, however many peers); an address whose lookup
/// fails is left out.
fn route_devices(ips: &BTreeSet<String>) -> Result<BTreeMap<String, String>, String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-j", "-force", "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| spawn_error("ip", &e))?;
    let commands: String = ips.iter().map(|ip| format!("route get {ip}\n")).collect();
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(commands.as_bytes())
            .map_err(|e| format!("ip -batch: {e}"))?;
    }
    // With -force a failed lookup only leaves its line out (and the status non-zero).
    let out = child
        .wait_with_output()
        .map_err(|e| format!("ip -batch: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Vec<Value>>(line).ok())
        .filter_map(|routes| {
            let r = routes.first()?;
            Some((r["dst"].as_str()?.to_owned(), r["dev"].as_str()?.to_owned()))
        })
        .collect())
}

fn ip_json(args: &[&str]) -> Result<Vec<Value>, String> {
    let text = output("ip", &[&["-j"][..], args].concat())?;
    serde_json::from_str(&text).map_err(|e| format!("ip -j {}: {e}", args.join(" ")))
}

fn sysctl(name: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn link<'a>(links: &'a [Value], name: &str) -> Option<&'a Value> {
    links.iter().find(|l| l["ifname"] == name)
}

fn mtu_of(link: &Value) -> Option<u64> {
    link["mtu"].as_u64()
}

/// The tunnel device of the backend: a `flannel*` vxlan, tun or ipip device.
fn tunnel(links: &[Value]) -> Option<&Value> {
    links.iter().find(|l| {
        let name = l["ifname"].as_str().unwrap_or_default();
        let kind = l["linkinfo"]["info_kind"].as_str().unwrap_or_default();
        name.starts_with("flannel") && matches!(kind, "vxlan" | "tun" | "ipip")
    })
}

/// The bytes the backend's encapsulation adds.
fn overhead(kind: &str) -> u64 {
    match kind {
        "vxlan" => 50,
        "tun" => 28,
        "ipip" => 20,
        _ => 0,
    }
}

fn network_of(f: &Facts) -> Option<Subnet> {
    f.env.as_ref().ok()?.get("FLANNEL_NETWORK")?.parse().ok()
}

fn own_subnet(f: &Facts) -> Option<Subnet> {
    f.status.as_ref().ok()?.subnet.as_deref()?.parse().ok()
}

// ---- the checks -----------------------------------------------------------------------

fn daemon(f: &Facts) -> Finding {
    match &f.status {
        Err(e) => Finding::fail(
            "daemon",
            format!("the twill API does not answer: {e}"),
            "start `twill run` (systemctl status twill; its log says why it stopped), or \
             point --api-addr at its API",
        ),
        Ok(s) if !s.ready => Finding::fail(
            "daemon",
            format!(
                "twill {} runs but is not ready: {}",
                s.version,
                s.not_ready_reason.as_deref().unwrap_or("?")
            ),
            "see the reason above and twill's log",
        ),
        Ok(s) => Finding::ok(
            "daemon",
            format!(
                "twill {} is up and ready (subnet {}, backend {}, up {} s)",
                s.version,
                s.subnet.as_deref().unwrap_or("-"),
                s.backend_type,
                s.uptime_seconds
            ),
        ),
    }
}

fn subnet_env(f: &Facts) -> Finding {
    const CHECK: &str = "subnet.env";
    let env = match &f.env {
        Ok(env) => env,
        Err(e) => {
            return Finding::fail(
                CHECK,
                format!("cannot read subnet.env: {e}; the CNI plugin cannot give pods addresses"),
                "twill writes it once it holds a lease: check `twill doctor`'s daemon line, \
                 or pass the same --subnet-file to twill and the CNI config",
            );
        }
    };
    let Ok(status) = &f.status else {
        return Finding::warn(
            CHECK,
            "present; not compared with the lease (the API does not answer)",
            "",
        );
    };
    let file_subnet = env
        .get("FLANNEL_SUBNET")
        .and_then(|s| s.split_once('/'))
        .and_then(|(ip, len)| Subnet::containing(ip.parse().ok()?, len.parse().ok()?).ok());
    let lease = status
        .subnet
        .as_deref()
        .and_then(|s| s.parse::<Subnet>().ok());
    if file_subnet.is_none() || file_subnet != lease {
        return Finding::fail(
            CHECK,
            format!(
                "FLANNEL_SUBNET={} does not match the lease {}: new pods get addresses another \
                 node owns or that no route leads to",
                env.get("FLANNEL_SUBNET")
                    .map_or("(missing)", String::as_str),
                status.subnet.as_deref().unwrap_or("(none)")
            ),
            "restart twill so it writes subnet.env again (and check that nothing else writes it)",
        );
    }
    let file_mtu = env.get("FLANNEL_MTU").and_then(|m| m.parse::<u32>().ok());
    if status.mtu.is_some() && file_mtu != status.mtu {
        return Finding::fail(
            CHECK,
            format!(
                "FLANNEL_MTU={} but the backend registered {}",
                env.get("FLANNEL_MTU").map_or("(missing)", String::as_str),
                status.mtu.unwrap_or_default()
            ),
            "restart twill so it writes subnet.env again",
        );
    }
    Finding::ok(
        CHECK,
        format!(
            "FLANNEL_SUBNET={} matches the lease, FLANNEL_MTU={}",
            env.get("FLANNEL_SUBNET").map_or("", String::as_str),
            file_mtu.unwrap_or_default()
        ),
    )
}

fn forwarding() -> Finding {
    match sysctl("net.ipv4.ip_forward").as_deref() {
        Some("1") => Finding::ok("forwarding", "net.ipv4.ip_forward=1"),
        Some(v) => Finding::fail(
            "forwarding",
            format!("net.ipv4.ip_forward={v}: this node does not forward pod traffic"),
            "sysctl -w net.ipv4.ip_forward=1, and keep it in /etc/sysctl.d/",
        ),
        None => Finding::warn("forwarding", "cannot read net.ipv4.ip_forward", ""),
    }
}

fn mtu(f: &Facts) -> Finding {
    const CHECK: &str = "mtu";
    let Ok(links) = &f.links else {
        return Finding::warn(
            CHECK,
            format!(
                "cannot list devices: {}",
                f.links.as_ref().err().map_or("", |e| e.as_str())
            ),
            "",
        );
    };
    let Ok(status) = &f.status else {
        return Finding::warn(
            CHECK,
            "not checked: the API does not answer (which device is the underlay?)",
            "",
        );
    };
    let Some(underlay) = link(links, &status.interface).and_then(mtu_of) else {
        return Finding::warn(CHECK, format!("no device {}", status.interface), "");
    };
    let env_mtu = f
        .env
        .as_ref()
        .ok()
        .and_then(|e| e.get("FLANNEL_MTU")?.parse::<u64>().ok());
    let mut path = vec![format!("{} {underlay}", status.interface)];
    let mut limit = underlay;
    if let Some(t) = tunnel(links) {
        let name = t["ifname"].as_str().unwrap_or_default();
        let kind = t["linkinfo"]["info_kind"].as_str().unwrap_or_default();
        let mtu = mtu_of(t).unwrap_or_default();
        path.push(format!("{name} {mtu}"));
        if mtu + overhead(kind) > underlay {
            return Finding::fail(
                CHECK,
                format!(
                    "{name} has MTU {mtu}, but {kind} adds {} bytes and {} carries {underlay}: \
                     full-size packets are dropped or fragmented",
                    overhead(kind),
                    status.interface
                ),
                format!(
                    "ip link set {name} mtu {} (twill sets it at start; something changed it)",
                    underlay - overhead(kind)
                ),
            );
        }
        limit = mtu;
    }
    if let Some(m) = env_mtu {
        path.push(format!("FLANNEL_MTU {m}"));
        if m > limit {
            return Finding::fail(
                CHECK,
                format!(
                    "FLANNEL_MTU={m} is larger than the path's {limit}: pods send packets the tunnel cannot carry"
                ),
                "restart twill so it writes subnet.env again",
            );
        }
        limit = m;
    }
    // Bridges holding an address in our subnet (cni0, docker0): their MTU is what
    // pods were given.
    let own = own_subnet(f);
    for bridge in links
        .iter()
        .filter(|l| l["linkinfo"]["info_kind"] == "bridge")
    {
        let name = bridge["ifname"].as_str().unwrap_or_default();
        if !holds_address_in(name, own) {
            continue;
        }
        let mtu = mtu_of(bridge).unwrap_or_default();
        path.push(format!("{name} {mtu}"));
        if mtu > limit {
            return Finding::fail(
                CHECK,
                format!(
                    "{name} has MTU {mtu}, larger than the overlay's {limit}: pods send packets \
                     that are dropped on the way (large transfers hang, pings pass)"
                ),
                format!(
                    "ip link set {name} mtu {limit}, and pods' interfaces too (the CNI config takes FLANNEL_MTU)"
                ),
            );
        }
    }
    Finding::ok(CHECK, format!("consistent: {}", path.join(" ≥ ")))
}

/// Whether device `name` holds an IPv4 address inside `subnet`.
fn holds_address_in(name: &str, subnet: Option<Subnet>) -> bool {
    let Some(subnet) = subnet else { return false };
    let Ok(addrs) = ip_json(&["-4", "addr", "show", "dev", name]) else {
        return false;
    };
    addrs.iter().any(|dev| {
        dev["addr_info"].as_array().is_some_and(|infos| {
            infos.iter().any(|a| {
                a["local"]
                    .as_str()
                    .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                    .is_some_and(|ip| subnet.contains(ip))
            })
        })
    })
}

/// The effective reverse-path filter mode of a device: the larger of `all` and its own.
fn rp_mode(device: &str) -> Option<u8> {
    let all: u8 = sysctl("net.ipv4.conf.all.rp_filter")?.parse().ok()?;
    let own: u8 = sysctl(&format!("net.ipv4.conf.{device}.rp_filter"))?
        .parse()
        .ok()?;
    Some(all.max(own))
}

fn rp_filter(f: &Facts) -> Finding {
    const CHECK: &str = "rp_filter";
    let Ok(status) = &f.status else {
        return Finding::warn(CHECK, "not checked: the API does not answer", "");
    };
    let iface = &status.interface;
    let mode = rp_mode(iface);
    // Overlay packets from a peer arrive on the external interface; if the route back
    // to that peer leaves through another device, strict filtering drops them.
    let ips: BTreeSet<String> = f.peers.iter().map(|p| p.public_ip.to_string()).collect();
    let devices = match route_devices(&ips) {
        Ok(devices) => devices,
        Err(e) => {
            return Finding::warn(CHECK, format!("cannot look up the peers' routes: {e}"), "");
        }
    };
    let mut asymmetric = Vec::new();
    for peer in &f.peers {
        let ip = peer.public_ip.to_string();
        if let Some(dev) = devices.get(&ip)
            && dev != iface
        {
            asymmetric.push(format!("{} ({ip}) via {dev}", peer.subnet));
        }
    }
    match (mode, asymmetric.is_empty()) {
        (_, true) => Finding::ok(
            CHECK,
            format!(
                "{iface}: rp_filter={}; the route to every peer leaves through {iface}",
                mode.map_or("?".into(), |m| m.to_string())
            ),
        ),
        (Some(1), false) => Finding::fail(
            CHECK,
            format!(
                "strict reverse-path filtering on {iface} drops packets from peers whose \
                 route leaves through another device: {}",
                asymmetric.join(", ")
            ),
            format!(
                "route the peers through {iface} (or run twill with --iface on the device \
                 they are reached by), or sysctl -w net.ipv4.conf.{iface}.rp_filter=2 and \
                 net.ipv4.conf.all.rp_filter=2"
            ),
        ),
        (_, false) => Finding::warn(
            CHECK,
            format!(
                "the route to some peers leaves through another device than {iface}: {} \
                 (rp_filter is not strict, so packets pass, but the paths are asymmetric)",
                asymmetric.join(", ")
            ),
            format!("route the peers through {iface}, or run twill with --iface on that device"),
        ),
    }
}

fn forward_policy(f: &Facts) -> Finding {
    const CHECK: &str = "forward-policy";
    let rules = match output("iptables", &["-w", "5", "-S", "FORWARD"]) {
        Ok(r) => r,
        Err(e) => return Finding::warn(CHECK, format!("cannot read the FORWARD chain: {e}"), ""),
    };
    if rules.lines().any(|l| l == "-P FORWARD ACCEPT") {
        return Finding::ok(CHECK, "FORWARD policy ACCEPT");
    }
    let Some(network) = network_of(f) else {
        return Finding::warn(
            CHECK,
            "FORWARD policy DROP; not checked further (no FLANNEL_NETWORK)",
            "",
        );
    };
    // Accepted by twill's chain (or flannel's) both ways, or by rules of the chain itself.
    let accepts = |text: &str, flag: &str| {
        text.lines()
            .any(|l| l.contains(&format!("{flag} {network}")) && l.ends_with("-j ACCEPT"))
    };
    let mut text = rules.clone();
    // twill's chain, and flannel's on a node not yet moved over.
    for chain in [twill_node::FORWARD_CHAIN, "FLANNEL-FWD"] {
        if rules.lines().any(|l| l.ends_with(&format!("-j {chain}"))) {
            text.push_str(&output("iptables", &["-w", "5", "-S", chain]).unwrap_or_default());
        }
    }
    if accepts(&text, "-s") && accepts(&text, "-d") {
        return Finding::ok(
            CHECK,
            format!("FORWARD policy DROP, but {network} is accepted both ways"),
        );
    }
    Finding::fail(
        CHECK,
        format!(
            "FORWARD policy DROP and nothing accepts {network}: pod traffic between nodes is dropped here"
        ),
        format!(
            "run twill with --iptables-forward-rules (the default), or iptables -A FORWARD -s \
             {network} -j ACCEPT; iptables -A FORWARD -d {network} -j ACCEPT"
        ),
    )
}

/// Kernels before 5.7 (without commit ea64d8d6c675) corrupt UDP checksums of vxlan
/// packets masqueraded with --random-fully while the device offloads them (flannel
/// #1279): Services and NodePorts then time out.
fn checksum_offload(f: &Facts) -> Finding {
    const CHECK: &str = "checksum-offload";
    let Ok(links) = &f.links else {
        return Finding::warn(CHECK, "cannot list devices", "");
    };
    let Some(dev) = links.iter().find(|l| {
        l["linkinfo"]["info_kind"] == "vxlan"
            && l["ifname"]
                .as_str()
                .is_some_and(|n| n.starts_with("flannel"))
    }) else {
        return Finding::ok(CHECK, "no vxlan device: nothing to check");
    };
    let name = dev["ifname"].as_str().unwrap_or_default();
    let features = match output("ethtool", &["-k", name]) {
        Ok(text) => text,
        Err(e) => {
            return Finding::warn(
                CHECK,
                format!("cannot read {name}'s offloads: {e}"),
                "apt-get install ethtool",
            );
        }
    };
    let on = features
        .lines()
        .any(|l| l.trim() == "tx-checksum-ip-generic: on");
    let old_kernel = kernel_before(&f.kernel, (5, 7));
    match (on, old_kernel) {
        (false, _) => Finding::ok(CHECK, format!("{name}: tx-checksum-ip-generic off")),
        (true, false) => Finding::ok(
            CHECK,
            format!(
                "{name}: tx-checksum-ip-generic on; kernel {} has the fix for flannel #1279",
                f.kernel
            ),
        ),
        (true, true) => Finding::fail(
            CHECK,
            format!(
                "{name}: tx-checksum-ip-generic on with kernel {} (before 5.7): masqueraded vxlan \
                 packets get bad UDP checksums and Service traffic times out (flannel #1279)",
                f.kernel
            ),
            format!("ethtool -K {name} tx-checksum-ip-generic off (and a udev rule to keep it)"),
        ),
    }
}

/// Whether release `kernel` (`5.4.0-150-generic`) is older than `major.minor`.
fn kernel_before(kernel: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = kernel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) < (major, minor),
        _ => false,
    }
}

fn peers(f: &Facts) -> Finding {
    const CHECK: &str = "peers";
    let Ok(status) = &f.status else {
        return Finding::warn(CHECK, "not checked: the API does not answer", "");
    };
    let unreachable: Vec<String> = f
        .peers
        .iter()
        .filter(|p| p.health.as_ref().is_some_and(|h| !h.reachable))
        .map(|p| {
            let since = p.health.as_ref().map_or("", |h| h.since.as_str());
            format!("{} ({}) since {since}", p.subnet, p.public_ip)
        })
        .collect();
    let counts = &status.peer_health;
    if !unreachable.is_empty() {
        let port = match status.backend_type.as_str() {
            "vxlan" => "udp/8472 (vxlan) between the nodes' addresses",
            "" | "udp" => "udp/8285 (udp backend) between the nodes' addresses",
            _ => {
                "the peers' pod subnets in INPUT/FORWARD, and that the nodes share an L2 segment (host-gw)"
            }
        };
        return Finding::fail(
            CHECK,
            format!(
                "{} of {} peers do not answer through the overlay: {}",
                unreachable.len(),
                f.peers.len(),
                unreachable.join(", ")
            ),
            format!(
                "check that firewalls allow {port}; run twill doctor on those peers; \
                 /v1/peers shows what is programmed for each"
            ),
        );
    }
    if !f.peers.is_empty() && counts.unchecked == f.peers.len() {
        return Finding::warn(
            CHECK,
            format!(
                "{} peers, none probed yet (or probes off: --peer-probe-interval 0)",
                f.peers.len()
            ),
            "",
        );
    }
    Finding::ok(
        CHECK,
        format!(
            "{} of {} peers answer through the overlay{}",
            counts.reachable,
            f.peers.len(),
            if counts.unchecked > 0 {
                format!(" ({} not probed yet)", counts.unchecked)
            } else {
                String::new()
            }
        ),
    )
}

/// Routes and FDB entries for subnets and nodes that hold no lease any more (a node that
/// left while this one was down, flannel #2554, #1788): traffic to a new node that later
/// gets that subnet goes to the old address.
fn stale(f: &Facts) -> Finding {
    const CHECK: &str = "stale";
    let (Some(network), Some(own)) = (network_of(f), own_subnet(f)) else {
        return Finding::warn(CHECK, "not checked: no network or lease known", "");
    };
    let Ok(routes) = &f.routes else {
        return Finding::warn(CHECK, "cannot list routes", "");
    };
    let peers: BTreeSet<Subnet> = f
        .peers
        .iter()
        .filter_map(|p| p.subnet.parse().ok())
        .collect();
    let peer_ips: BTreeSet<String> = f.peers.iter().map(|p| p.public_ip.to_string()).collect();
    let mut found = Vec::new();
    let mut fixes = Vec::new();
    for r in routes {
        let Some(dst) = r["dst"].as_str().and_then(|d| d.parse::<Subnet>().ok()) else {
            continue;
        };
        if dst.prefix() != own.prefix()
            || !network.contains_subnet(&dst)
            || dst == own
            || peers.contains(&dst)
        {
            continue;
        }
        let via = r["gateway"]
            .as_str()
            .map(|g| format!(" via {g}"))
            .unwrap_or_default();
        let dev = r["dev"].as_str().unwrap_or_default();
        found.push(format!("route {dst}{via} dev {dev}"));
        fixes.push(format!("ip route del {dst}"));
    }
    if let Ok(links) = &f.links {
        for dev in links.iter().filter(|l| {
            l["linkinfo"]["info_kind"] == "vxlan"
                && l["ifname"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("flannel"))
        }) {
            let name = dev["ifname"].as_str().unwrap_or_default();
            let Ok(text) = output("bridge", &["-j", "fdb", "show", "dev", name]) else {
                continue;
            };
            let entries: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
            for e in entries {
                let (Some(mac), Some(dst)) = (e["mac"].as_str(), e["dst"].as_str()) else {
                    continue;
                };
                if !peer_ips.contains(dst) {
                    found.push(format!("fdb {mac} dst {dst} dev {name}"));
                    fixes.push(format!("bridge fdb del {mac} dev {name} dst {dst}"));
                }
            }
        }
    }
    if found.is_empty() {
        return Finding::ok(
            CHECK,
            "no route or FDB entry for a subnet or node without a lease",
        );
    }
    Finding::fail(
        CHECK,
        format!(
            "left behind by nodes that hold no lease: {}",
            found.join(", ")
        ),
        fixes.join("; "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(kernel_before("5.4.0-150-generic", (5, 7)));
        assert!(kernel_before("4.19.0", (5, 7)));
        assert!(!kernel_before("5.7.0", (5, 7)));
        assert!(!kernel_before("6.18.44-fc-v1045", (5, 7)));
        assert!(!kernel_before("", (5, 7)), "unknown is not old");
    }
}
