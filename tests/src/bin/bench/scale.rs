//! `bench --scale N[,N…]`: the control plane at cluster scale (issue 16).
//!
//! For each N, on a one-node namespace cluster with a real etcd:
//!
//! - N peer leases (vxlan, each with its own public IP and VTEP MAC, and each with an
//!   etcd lease of its own with flannel's 24 h TTL, as nodes write them, so twill looks
//!   up N lease expiries) are written into etcd in bulk (transactions of 128 puts, 16
//!   in flight);
//! - twill starts on the node (its compiled plugin cached, as after a node's first
//!   start), and the time until every peer's route, neighbour and FDB entry is on
//!   `flannel.1` is the join time. twill asks etcd each lease's expiry after that (one
//!   `TimeToLive` per lease); the time until its API shows them all is printed too, and
//!   its resident memory is read once they are;
//! - N/10 more leases are written at once (live add, transactions as above), then
//!   deleted at once (live remove, one range delete), each timed from the start of the
//!   write until the kernel shows it, each on the settled node (every expiry read: a
//!   range delete written while twill reads 2,000 expiries reached it ~0.1 s later at
//!   20,000 peers, etcd being busy answering the reads);
//! - the baseline, in the same run: the same objects written by `ip -batch` and
//!   `bridge -batch` into a fresh namespace holding only a `flannel.1`, for the join, the
//!   add and the remove, timed by the same poll of the kernel as twill is (from the
//!   start of the commands until every object shows), so both carry the same error.
//!
//! It prints one row per N: twill's time, the baseline's, their ratio, twill's RSS (and
//! peak), the live add/remove times and ratios, and the time per peer, so the growth
//! with N shows. `--json PATH` writes the rows. `scripts/bench` keeps the cluster's
//! files (etcd's data) on tmpfs, so etcd's fsyncs do not count against twill. With
//! `BENCH_KEEP_LOG=PREFIX`, the node's log and its `/proc/<pid>/smaps` after the live
//! changes are kept as `PREFIX.<N>` and `PREFIX.<N>.smaps`, to see where time and memory
//! go.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twill_e2e::{Cluster, ETCD_IP, run};
use twill_lab::netns;

/// The cluster network: room for 65,536 /24 leases.
const CONFIG: &str = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#;
/// The TTL of each peer's etcd lease: flannel's 24 h.
const LEASE_TTL: i64 = 24 * 3600;
/// Puts per etcd transaction (etcd's default `--max-txn-ops`).
const TXN_OPS: usize = 128;
/// Transactions in flight.
const IN_FLIGHT: usize = 16;
/// How long the kernel may take to show every object, at most.
const CONVERGE_LIMIT: Duration = Duration::from_secs(600);

/// The first index of the live-added peers: their subnets start at 10.200.0.0/24, so
/// that they sort together in etcd (a range of keys of their own).
const EXTRA: u32 = 200 * 256 - 256;

/// Peer `i`'s subnet index in the network: 10.1.0.0/24 upwards, clear of 10.0.x.0.
fn index(i: u32) -> u32 {
    i + 256
}

/// Peer `i`: its VTEP (its subnet's first address), its public IP, its VTEP MAC.
fn peer(i: u32) -> ([u8; 4], [u8; 4], String) {
    let n = index(i);
    let vtep = [10, (n >> 8) as u8, n as u8, 0];
    let public = u32::from_be_bytes([172, 16, 0, 0]) + i + 1;
    let [a, b, c, d] = i.to_be_bytes();
    let mac = format!("0e:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}");
    (vtep, public.to_be_bytes(), mac)
}

fn dotted(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

/// Peer `i`'s subnet, as a CIDR and as its etcd key's last part.
fn subnet_of(i: u32) -> (String, String) {
    let (vtep, _, _) = peer(i);
    let cidr = format!("{}/24", dotted(vtep));
    let key = cidr.replace('/', "-");
    (cidr, key)
}

/// The lease key and value of peer `i`.
fn lease(prefix: &str, i: u32) -> (String, String) {
    let (_, public, mac) = peer(i);
    let (_, key) = subnet_of(i);
    let value = format!(
        r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#,
        dotted(public)
    );
    (format!("{prefix}/subnets/{key}"), value)
}

/// Run `f` with a client of the cluster's etcd, from inside the etcd namespace (its
/// address is only reachable there) on a runtime of its own; what `f` answers.
fn with_etcd<T, F, Fut>(etcd_ns: &str, what: &str, f: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce(etcd_client::Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let url = format!("http://{ETCD_IP}:2379");
    netns::in_netns(Some(etcd_ns), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = etcd_client::Client::connect([url.as_str()], None)
                .await
                .map_err(std::io::Error::other)?;
            f(client).await.map_err(std::io::Error::other)
        })
    })
    .map_err(|e| format!("{what}: {e}"))
}

/// A key to write (with its value and etcd lease) or, `None`, to delete.
type Op = (String, Option<(String, i64)>);

/// Run `tasks` with at most `limit` in flight; their results, in completion order.
async fn windowed<T, F>(
    limit: usize,
    tasks: impl IntoIterator<Item = F>,
) -> Result<Vec<T>, etcd_client::Error>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
{
    let mut pending = tasks.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut done = Vec::new();
    loop {
        while running.len() < limit {
            let Some(task) = pending.next() else { break };
            running.spawn(task);
        }
        match running.join_next().await {
            Some(Ok(result)) => done.push(result?),
            Some(Err(e)) => return Err(etcd_client::Error::IoError(std::io::Error::other(e))),
            None => return Ok(done),
        }
    }
}

/// `count` etcd leases of [`LEASE_TTL`], one per peer as every flanneld and twill node
/// grants its own, 4 × [`IN_FLIGHT`] grants at a time; their IDs.
fn etcd_grants(etcd_ns: &str, count: usize) -> Result<Vec<i64>, String> {
    with_etcd(etcd_ns, "etcd lease grants", move |client| async move {
        let grants = (0..count).map(|_| {
            let mut leases = client.lease_client();
            async move { Ok(leases.grant(LEASE_TTL, None).await?.id()) }
        });
        windowed(IN_FLIGHT * 4, grants).await
    })
}

/// Write (`Some((value, etcd lease))`) or delete (`None`) these keys in etcd, in
/// transactions of [`TXN_OPS`] with [`IN_FLIGHT`] at a time.
fn etcd_bulk(etcd_ns: &str, ops: Vec<Op>) -> Result<Duration, String> {
    with_etcd(etcd_ns, "etcd bulk write", move |client| async move {
        let started = Instant::now();
        let txns = ops.chunks(TXN_OPS).map(|chunk| {
            let mut kv = client.kv_client();
            let ops: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .cloned()
                .map(|(k, v)| match v {
                    Some((v, lease)) => etcd_client::TxnOp::put(
                        k,
                        v,
                        Some(etcd_client::PutOptions::new().with_lease(lease)),
                    ),
                    None => etcd_client::TxnOp::delete(k, None),
                })
                .collect();
            async move { kv.txn(etcd_client::Txn::new().and_then(ops)).await }
        });
        windowed(IN_FLIGHT, txns).await?;
        Ok(started.elapsed())
    })
}

/// Delete the keys in `[start, end)` with one request (one revision, one watch event
/// batch).
fn etcd_delete_range(etcd_ns: &str, (start, end): (String, String)) -> Result<Duration, String> {
    with_etcd(etcd_ns, "etcd range delete", move |mut client| async move {
        let started = Instant::now();
        client
            .delete(
                start,
                Some(etcd_client::DeleteOptions::new().with_range(end)),
            )
            .await?;
        Ok(started.elapsed())
    })
}

/// How many `LeaseTimeToLive` requests etcd has answered (its own `/metrics`), read
/// from inside the etcd namespace.
fn time_to_live_requests(etcd_ns: &str) -> Result<u64, String> {
    netns::in_netns(Some(etcd_ns), || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect((ETCD_IP, 2379))?;
        write!(conn, "GET /metrics HTTP/1.0\r\nHost: {ETCD_IP}\r\n\r\n")?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        Ok(text
            .lines()
            .filter(|l| {
                l.starts_with("grpc_server_handled_total{")
                    && l.contains(r#"grpc_method="LeaseTimeToLive""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    })
    .map_err(|e| format!("etcd's /metrics: {e}"))
}

/// From `since` until etcd has answered `want` more `TimeToLive` requests than
/// `before`: twill programs the peers first and asks their expiries afterwards, one
/// request per lease. Counted by etcd, so the wait costs twill nothing.
fn expiries_read(
    etcd_ns: &str,
    before: u64,
    want: u64,
    since: Instant,
) -> Result<Duration, String> {
    loop {
        let asked = time_to_live_requests(etcd_ns)? - before;
        if asked >= want {
            return Ok(since.elapsed());
        }
        if since.elapsed() > CONVERGE_LIMIT {
            return Err(format!(
                "etcd answered {asked} of {want} expiries in {CONVERGE_LIMIT:?}"
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Routes, neighbours and FDB entries (with a destination) on `flannel.1` in `ns`.
fn objects(ns: &str) -> [usize; 3] {
    let count = |args: &[&str], filter: &dyn Fn(&str) -> bool| -> usize {
        let mut cmd = vec!["ip", "netns", "exec", ns];
        cmd.extend_from_slice(args);
        let out = run(&cmd);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| filter(l))
            .count()
    };
    [
        count(&["ip", "-o", "route", "show", "dev", "flannel.1"], &|l| {
            l.starts_with("10.")
        }),
        count(&["ip", "neigh", "show", "dev", "flannel.1"], &|l| {
            l.contains("PERMANENT")
        }),
        count(&["bridge", "fdb", "show", "dev", "flannel.1"], &|l| {
            l.contains(" dst ")
        }),
    ]
}

/// Wait until `ns` holds `want` of each object; the time since `since` when it did.
fn converged(ns: &str, want: usize, since: Instant) -> Result<Duration, String> {
    loop {
        // Routes first: cheapest to poll; then all three.
        let routes = objects_routes(ns);
        if routes == want {
            let all = objects(ns);
            if all == [want; 3] {
                return Ok(since.elapsed());
            }
        }
        if since.elapsed() > CONVERGE_LIMIT {
            return Err(format!(
                "{:?} of {want} objects after {CONVERGE_LIMIT:?}",
                objects(ns)
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn objects_routes(ns: &str) -> usize {
    let out = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "ip",
        "-o",
        "route",
        "show",
        "dev",
        "flannel.1",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("10."))
        .count()
}

/// (VmRSS, VmHWM) of `pid` in MB.
fn memory(pid: u32) -> (f64, f64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The same objects made with `ip -batch` and `bridge -batch` in namespace `ns`: the
/// time both commands took.
fn batch(ns: &str, peers: std::ops::Range<u32>, add: bool) -> Result<Duration, String> {
    let (mut ip_lines, mut fdb_lines) = (String::new(), String::new());
    for i in peers {
        let (vtep, public, mac) = peer(i);
        let (cidr, _) = subnet_of(i);
        let (vtep, public) = (dotted(vtep), dotted(public));
        if add {
            let _ = writeln!(
                ip_lines,
                "neigh replace {vtep} lladdr {mac} dev flannel.1 nud permanent"
            );
            let _ = writeln!(
                ip_lines,
                "route replace {cidr} via {vtep} dev flannel.1 onlink"
            );
            let _ = writeln!(
                fdb_lines,
                "fdb replace {mac} dev flannel.1 dst {public} self permanent"
            );
        } else {
            let _ = writeln!(ip_lines, "route del {cidr} dev flannel.1");
            let _ = writeln!(ip_lines, "neigh del {vtep} dev flannel.1");
            let _ = writeln!(fdb_lines, "fdb del {mac} dev flannel.1 dst {public} self");
        }
    }
    let dir = std::env::temp_dir();
    let (ip_file, fdb_file) = (
        dir.join(format!("{ns}-ip.batch")),
        dir.join(format!("{ns}-fdb.batch")),
    );
    fs::write(&ip_file, ip_lines).map_err(|e| e.to_string())?;
    fs::write(&fdb_file, fdb_lines).map_err(|e| e.to_string())?;
    let started = Instant::now();
    for (tool, file) in [("ip", &ip_file), ("bridge", &fdb_file)] {
        let out = Command::new(tool)
            .args(["-n", ns, "-batch"])
            .arg(file)
            .output()
            .map_err(|e| format!("{tool}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{tool} -batch: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            ));
        }
    }
    let took = started.elapsed();
    let _ = fs::remove_file(ip_file);
    let _ = fs::remove_file(fdb_file);
    Ok(took)
}

/// [`batch`] on a thread, timed as twill is: from its start until the poll sees
/// `want` of each object (so both sides carry the same measuring error).
fn polled_batch(
    ns: &str,
    peers: std::ops::Range<u32>,
    add: bool,
    want: usize,
) -> Result<Duration, String> {
    let started = Instant::now();
    let worker = {
        let ns = ns.to_owned();
        thread::spawn(move || batch(&ns, peers, add))
    };
    let seen = converged(ns, want, started);
    let ran = worker
        .join()
        .map_err(|_| "the batch thread panicked".to_owned())??;
    Ok(seen?.max(ran))
}

/// A fresh namespace with an underlay and flannel's `flannel.1`, as a node has it.
fn baseline_ns(id: &str) -> Result<String, String> {
    let ns = format!("{id}-base");
    let _ = run(&["ip", "netns", "del", &ns]);
    let setup = [
        "link add eth0 type veth peer name eth0p",
        "addr add 192.168.77.1/24 dev eth0",
        "link set eth0 up",
        "link set eth0p up",
        "link add flannel.1 type vxlan id 1 local 192.168.77.1 dev eth0 dstport 8472 nolearning",
        "addr add 10.0.0.0/32 dev flannel.1",
        "link set flannel.1 up",
    ];
    let add = vec!["ip", "netns", "add", &ns];
    let steps = setup.iter().map(|step| {
        let mut cmd = vec!["ip", "-n", &ns];
        cmd.extend(step.split_whitespace());
        cmd
    });
    for cmd in std::iter::once(add).chain(steps) {
        let out = run(&cmd);
        if !out.status.success() {
            return Err(format!(
                "{}: {}",
                cmd.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(ns)
}

/// One N's figures.
struct Row {
    peers: u32,
    write: Duration,
    twill: Duration,
    /// From twill's start until its API shows every lease's expiry.
    read: Duration,
    base: Duration,
    rss: f64,
    peak: f64,
    add: Duration,
    add_base: Duration,
    remove: Duration,
    remove_base: Duration,
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn measure(c: &mut Cluster, n: u32) -> Result<Row, String> {
    let etcd_ns = format!("{}-etcd", c.id);
    let node_ns = c.nodes[0].ns.clone();
    // Clean slate: no twill, no flannel.1, no leases, no subnet.env.
    let _ = c.nodes[0].stop();
    let _ = run(&[
        "ip",
        "netns",
        "exec",
        &node_ns,
        "ip",
        "link",
        "del",
        "flannel.1",
    ]);
    let _ = fs::remove_file(&c.nodes[0].subnet_file);
    c.etcdctl(&["del", "--prefix", &format!("{}/subnets/", c.prefix)]);
    c.put_config(CONFIG);

    let prefix = c.prefix.clone();
    // Each lease with an etcd lease of its own, granted before the clock starts (a
    // node grants its lease before it writes it).
    let puts = |peers: &[u32]| -> Result<Vec<Op>, String> {
        let ids = etcd_grants(&etcd_ns, peers.len())?;
        Ok(peers
            .iter()
            .zip(ids)
            .map(|(i, id)| {
                let (k, v) = lease(&prefix, *i);
                (k, Some((v, id)))
            })
            .collect())
    };
    let write = etcd_bulk(&etcd_ns, puts(&(0..n).collect::<Vec<u32>>())?)?;

    let asked_before = time_to_live_requests(&etcd_ns)?;
    let started = Instant::now();
    c.start_twill_with(1, &["--iface", "eth0"]);
    let twill = converged(&node_ns, n as usize, started)?;
    // Settled: the live changes below meet a node in its steady state.
    let read = expiries_read(&etcd_ns, asked_before, u64::from(n), started)?;
    let pid = c.nodes[0].twill_pid().ok_or("twill exited")?;
    thread::sleep(Duration::from_millis(500));
    let (rss, _) = memory(pid);

    // Live: 10 % more peers at once (10.200.0.0/24 upwards, a key range of their
    // own), then the same removed at once: one delete of that range, one revision.
    let own = c.nodes[0].subnet();
    let extra: Vec<u32> = (EXTRA..EXTRA + n / 10 + 1)
        .filter(|i| subnet_of(*i).0 != own)
        .take((n / 10) as usize)
        .collect();
    let adds = puts(&extra)?;
    let started = Instant::now();
    let add_write = etcd_bulk(&etcd_ns, adds)?;
    let add = converged(&node_ns, n as usize + extra.len(), started)?;
    // Settled again before the removal: the added leases' expiries read.
    let added = u64::try_from(extra.len()).unwrap_or(u64::MAX);
    expiries_read(&etcd_ns, asked_before, u64::from(n) + added, started)?;
    let started = Instant::now();
    let range = (
        format!("{prefix}/subnets/10.200."),
        format!("{prefix}/subnets/10.208."),
    );
    let remove_write = etcd_delete_range(&etcd_ns, range)?;
    let remove = converged(&node_ns, n as usize, started)?;
    eprintln!(
        "bench: {n} peers: the live add's etcd write took {:.3} s, the remove's {:.3} s",
        add_write.as_secs_f64(),
        remove_write.as_secs_f64()
    );
    let (_, peak) = memory(pid);
    if let Ok(keep) = std::env::var("BENCH_KEEP_LOG") {
        let _ = fs::copy(&c.nodes[0].log, format!("{keep}.{n}"));
        let _ = fs::copy(format!("/proc/{pid}/smaps"), format!("{keep}.{n}.smaps"));
    }
    if c.nodes[0].stop() != Some(0) {
        return Err("twill did not exit 0 on SIGTERM".into());
    }

    // The baseline, the same objects, in a fresh namespace, seen by the same poll.
    let base_ns = baseline_ns(&c.id)?;
    let base = polled_batch(&base_ns, 0..n, true, n as usize)?;
    let first = *extra.first().unwrap_or(&n);
    let last = extra.last().map_or(n, |l| l + 1);
    let more = n as usize + (last - first) as usize;
    let add_base = polled_batch(&base_ns, first..last, true, more)?;
    let remove_base = polled_batch(&base_ns, first..last, false, n as usize)?;
    if objects(&base_ns) != [n as usize; 3] {
        let _ = run(&["ip", "netns", "del", &base_ns]);
        return Err(format!(
            "the baseline namespace holds {:?}",
            objects(&base_ns)
        ));
    }
    let _ = run(&["ip", "netns", "del", &base_ns]);
    Ok(Row {
        peers: n,
        write,
        twill,
        read,
        base,
        rss,
        peak,
        add,
        add_base,
        remove,
        remove_base,
    })
}

/// Run the scale mode for `sizes`; print the table (and write `json`). False if a size
/// failed.
pub fn run_scale(id: &str, sizes: &[u32], json_path: Option<&Path>) -> bool {
    eprintln!("bench: scale mode, cluster {id} (1 node, a real etcd), peers {sizes:?}");
    let mut c = Cluster::segmented_with_id(&[1], id);
    // twill's default log level, as a node runs it (the harness's is debug).
    c.twill_env.push(("TWILL_LOG".into(), "info".into()));
    // The compiled plugin in the node's cache, as on any node after its first start:
    // the join measures the control plane, not the one-time compilation.
    let cache = c.dir().join("plugin-cache");
    let warmed = Command::new(twill_e2e::twill_bin())
        .args(["plugin", "list", "--plugin-cache-dir"])
        .arg(&cache)
        .output();
    if !warmed.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "bench: could not warm the plugin cache in {}",
            cache.display()
        );
    }
    let mut rows = Vec::new();
    let mut ok = true;
    for &n in sizes {
        eprintln!("bench: {n} peers …");
        match measure(&mut c, n) {
            Ok(row) => {
                eprintln!(
                    "bench: {n} peers: twill {:.2} s (every expiry read at {:.2} s), \
                     ip/bridge -batch {:.2} s",
                    row.twill.as_secs_f64(),
                    row.read.as_secs_f64(),
                    row.base.as_secs_f64()
                );
                rows.push(row);
            }
            Err(e) => {
                eprintln!("bench: {n} peers failed: {e}");
                ok = false;
            }
        }
    }
    println!(
        "\n{:>7} {:>9} {:>9} {:>6} {:>8} {:>8} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>9}",
        "peers",
        "twill s",
        "batch s",
        "ratio",
        "RSS MB",
        "peak MB",
        "+10% s",
        "batch s",
        "ratio",
        "-10% s",
        "batch s",
        "ratio",
        "µs/peer"
    );
    for r in &rows {
        println!(
            "{:>7} {:>9.2} {:>9.2} {:>6.2} {:>8.1} {:>8.1} {:>9.2} {:>9.2} {:>6.2} {:>9.2} {:>9.2} {:>6.2} {:>9.0}",
            r.peers,
            r.twill.as_secs_f64(),
            r.base.as_secs_f64(),
            ratio(r.twill, r.base),
            r.rss,
            r.peak,
            r.add.as_secs_f64(),
            r.add_base.as_secs_f64(),
            ratio(r.add, r.add_base),
            r.remove.as_secs_f64(),
            r.remove_base.as_secs_f64(),
            ratio(r.remove, r.remove_base),
            r.twill.as_secs_f64() * 1e6 / f64::from(r.peers),
        );
    }
    println!(
        "(twill: from its start until every route, neighbour and FDB entry is on flannel.1; \
         batch: ip -batch + bridge -batch of the same objects in a fresh namespace, same run; \
         ±10%: from the start of the etcd write until the kernel shows it, once twill has \
         read every lease's expiry. Leases written in \
         {} s.)",
        rows.iter()
            .map(|r| format!("{:.1}", r.write.as_secs_f64()))
            .collect::<Vec<_>>()
            .join("/")
    );
    if let Some(path) = json_path {
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "peers": r.peers,
                    "twill_seconds": r.twill.as_secs_f64(),
                    "expiries_read_seconds": r.read.as_secs_f64(),
                    "batch_seconds": r.base.as_secs_f64(),
                    "rss_mb": r.rss,
                    "peak_rss_mb": r.peak,
                    "add_seconds": r.add.as_secs_f64(),
                    "add_batch_seconds": r.add_base.as_secs_f64(),
                    "remove_seconds": r.remove.as_secs_f64(),
                    "remove_batch_seconds": r.remove_base.as_secs_f64(),
                    "etcd_write_seconds": r.write.as_secs_f64(),
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&json!({ "scale": rows })).unwrap_or_default();
        if let Err(e) = fs::write(path, text) {
            eprintln!("bench: cannot write {}: {e}", path.display());
        }
    }
    ok
}
