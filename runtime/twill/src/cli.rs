//! The command line. Flag names are flannel's where flannel has the flag; each can also
//! come from the environment as `FLANNELD_<NAME>`, as with flanneld.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// twill — a flannel-compatible overlay network for container clusters.
///
/// Every node leases a subnet of one cluster network from etcd; containers on different
/// nodes reach each other by IP without NAT. Backends (vxlan, …) are WebAssembly
/// components; the daemon owns everything privileged and checks what they ask for.
#[derive(Debug, Parser)]
#[command(name = "twill", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// How much to log: error, warn (also Go's `warning`), info, debug, trace or off.
    /// twill's own lines at that level, its libraries at warn. Overrides TWILL_LOG,
    /// which also takes tracing's per-crate syntax (`info,twill_node=debug`).
    #[arg(
        long,
        global = true,
        value_name = "LEVEL",
        value_parser = parse_log_level
    )]
    pub log_level: Option<String>,

    /// How log lines are written to standard error: `text`, or `json` (one JSON object
    /// per line: timestamp, level, message and fields, for a log shipper).
    #[arg(
        long,
        global = true,
        env = "TWILL_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The level words `--log-level` takes, Go's `warning` among them; anything else is
/// refused with the list.
pub fn parse_log_level(word: &str) -> Result<String, String> {
    match word.trim().to_ascii_lowercase().as_str() {
        "warning" | "warn" => Ok("warn".into()),
        level @ ("error" | "info" | "debug" | "trace" | "off") => Ok(level.into()),
        _ => Err("one of error, warn (warning), info, debug, trace, off".into()),
    }
}

impl Cli {
    /// Parse the command line, taking flanneld's Go spelling of `run`'s flags too
    /// (`-etcd-endpoints=…`, `-iface eth0`): a single-dash argument naming one of `run`'s
    /// long options is read as that option. Anything else is left to clap, so a typo
    /// still fails with its usage message.
    pub fn parse_flannel_style() -> Cli {
        Cli::parse_from(go_style_flags(std::env::args_os().collect()))
    }
}

/// `args` with `run`'s single-dash long options (Go's flag syntax, which flanneld
/// uses) turned into double-dash ones.
pub fn go_style_flags(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    use clap::CommandFactory;
    let is_run = args.get(1).is_some_and(|a| a == "run");
    if !is_run {
        return args;
    }
    let command = Cli::command();
    let longs: Vec<String> = command
        .find_subcommand("run")
        .map(|run| {
            run.get_arguments()
                .filter_map(|a| a.get_long().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            let Some(text) = arg.to_str().filter(|_| i >= 2) else {
                return arg;
            };
            let Some(rest) = text.strip_prefix('-').filter(|r| !r.starts_with('-')) else {
                return arg;
            };
            let name = rest.split('=').next().unwrap_or(rest);
            if name.len() > 1 && longs.iter().any(|l| l == name) {
                format!("-{text}").into()
            } else {
                arg
            }
        })
        .collect()
}

/// `twill run --help`'s closing examples.
const RUN_EXAMPLES: &str = "\
Examples:
  # flanneld's flags (its single-dash spelling works too: -etcd-endpoints=…)
  twill run --etcd-endpoints=https://10.0.0.5:2379 --etcd-cafile=/etc/ssl/etcd-ca.pem \\
            --etcd-certfile=/etc/ssl/node.pem --etcd-keyfile=/etc/ssl/node-key.pem \\
            --iface=eth0 --ip-masq
  # the same from a flanneld environment file (as the systemd unit does)
  set -a; . /etc/default/twill; set +a; twill run
  # one machine, no etcd: the embedded store
  twill config set --store-path /var/lib/twill/leases.db '{\"Network\":\"10.244.0.0/16\"}'
  twill run --store embedded --store-path /var/lib/twill/leases.db

Exit status: 0 after SIGTERM/SIGINT; 2 usage, 3 network config, 4 lease store, 5 lease,
6 backend plugin, 7 the node (interface, netlink, rules), 1 anything else.
See docs/operations.md and docs/config.md.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon (what flanneld does).
    ///
    /// Reads the network config from the store (etcd, or with --store embedded the
    /// SQLite file at --store-path) at <etcd-prefix>/config (waiting until it exists),
    /// leases a subnet, programs the backend, writes subnet.env and keeps peers
    /// in sync. SIGTERM stops it and leaves the kernel objects in place, so a restart does
    /// not cut traffic.
    #[command(after_help = RUN_EXAMPLES)]
    Run(Box<RunArgs>),

    /// Run a whole twill cluster on this machine, in network namespaces (needs root).
    ///
    /// Builds N node namespaces on an underlay bridge, each with a pod behind a bridge,
    /// starts the real `twill run` on every node (on an embedded store in a temporary
    /// directory, or on etcd with --etcd-endpoints), waits until every pod reaches every
    /// other, prints the reachability matrix, a throughput figure and how to reach a
    /// node's API, then runs until Ctrl-C, SIGTERM or --duration. On every exit it removes
    /// every namespace, device, process and file it made.
    Demo(DemoArgs),

    /// The network config: check one before rolling it out, print the store's, write
    /// the embedded store's.
    #[command(subcommand)]
    Config(ConfigCommand),

    /// Show a running node's status: its lease, backend and every peer's state.
    ///
    /// Reads the node's HTTP API (`twill run --api-addr`). Exit status 0 when the node
    /// is ready, 8 when it answers but is not ready, 1 when it cannot be asked.
    Status(StatusArgs),

    /// Check this node for what makes an overlay fail silently.
    ///
    /// The daemon up and ready, subnet.env matching the lease, MTUs along the path, IP
    /// forwarding, reverse-path filtering, the FORWARD policy, vxlan checksum offload,
    /// peers that do not answer the probes, and routes or FDB entries left by nodes
    /// without a lease. One line per check (ok / warn / FAIL, with the fix); exit status
    /// 1 when a check fails. Run it on the node (as root, in the node's network
    /// namespace).
    Doctor(DoctorArgs),

    /// Write Docker daemon options from subnet.env (what flannel's mk-docker-opts.sh
    /// does): DOCKER_OPT_BIP, DOCKER_OPT_IPMASQ, DOCKER_OPT_MTU and the combined
    /// DOCKER_OPTS, for a systemd EnvironmentFile (see docs/containers.md).
    ///
    /// dockerd's bridge then takes the node's subnet (--bip) and MTU, and masquerades
    /// only when twill does not (--ip-masq=false when FLANNEL_IPMASQ=true).
    DockerOpts(DockerOptsArgs),

    /// Install twill as flannel's CNI plugin: this binary as <bin-dir>/flannel, and with
    /// --conf-dir kube-flannel's conflist as <conf-dir>/10-flannel.conflist.
    ///
    /// Invoked as `flannel`, twill is the CNI plugin (ADD, DEL, CHECK, VERSION): it reads
    /// subnet.env and delegates to `bridge` with `host-local` IPAM on the node's subnet,
    /// as flannel's plugin does (see docs/containers.md).
    InstallCni(InstallCniArgs),

    /// List or inspect backend plugins (the built-ins and the plugin directory's).
    ///
    /// Shows what `twill run` would load from the built-ins and --plugin-dir, and why a
    /// file would be skipped. Needs no root, store or network namespace.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Retire this node: release its lease now (peers drop it at once instead of in
    /// 24 h) and remove what twill put in its kernel (devices, routes, the probe
    /// address, iptables chains) and subnet.env. Stop `twill run` first: leave refuses
    /// while the daemon's API (--api-addr) answers.
    ///
    /// The lease is found by subnet.env (and must be held by an address of this node),
    /// or by --public-ip. Takes `twill run`'s store flags.
    Leave(LeaveArgs),
}

/// Which node this is: `twill run`'s, also taken by `twill leave`.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Interface (name or IPv4 address) for the overlay's underlay traffic; may be
    /// repeated, the first that exists wins. Default: the interface of the default route.
    #[arg(
        long,
        env = "FLANNELD_IFACE",
        value_delimiter = ',',
        value_name = "NAME|IP"
    )]
    pub iface: Vec<String>,

    /// IP address peers reach this node at. Default: the interface's address.
    #[arg(long, env = "FLANNELD_PUBLIC_IP", value_name = "IP")]
    pub public_ip: Option<Ipv4Addr>,

    /// Where the subnet file is written.
    #[arg(
        long,
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env",
        value_name = "PATH"
    )]
    pub subnet_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// `twill run`'s --iface, --public-ip and --subnet-file: the lease is found by
    /// subnet.env (removed here), or by the public IP when there is none; the
    /// interface is that of the routes via peers.
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub api: ApiAddrArg,
    /// Release the lease only; leave devices, routes, rules and subnet.env in place.
    #[arg(long)]
    pub keep_kernel: bool,
}

/// `twill install-cni`.
#[derive(Debug, Args)]
pub struct InstallCniArgs {
    /// The CNI plugin directory (kubelet's and podman's default: /opt/cni/bin).
    #[arg(long, default_value = "/opt/cni/bin", value_name = "DIR")]
    pub bin_dir: PathBuf,

    /// Also write kube-flannel's conflist here (e.g. /etc/cni/net.d).
    #[arg(long, value_name = "DIR")]
    pub conf_dir: Option<PathBuf>,
}

/// `twill docker-opts`: mk-docker-opts.sh's flags.
#[derive(Debug, Args)]
pub struct DockerOptsArgs {
    /// The subnet.env to read.
    #[arg(
        short = 'f',
        long = "subnet-file",
        default_value = "/run/flannel/subnet.env",
        value_name = "PATH"
    )]
    pub subnet_file: PathBuf,

    /// The file to write (`-` for standard output).
    #[arg(
        short = 'd',
        long = "docker-env-file",
        default_value = "/run/docker_opts.env",
        value_name = "PATH"
    )]
    pub docker_env_file: PathBuf,

    /// Write each option as its own variable (DOCKER_OPT_BIP, …).
    #[arg(short = 'i', long)]
    pub individual: bool,

    /// Write the options combined into one variable (-k names it).
    #[arg(short = 'c', long)]
    pub combined: bool,

    /// The combined variable's name.
    #[arg(
        short = 'k',
        long = "combined-key",
        default_value = "DOCKER_OPTS",
        value_name = "NAME"
    )]
    pub combined_key: String,

    /// Leave out --ip-masq (for Docker versions without it).
    #[arg(short = 'm', long = "no-ip-masq")]
    pub no_ip_masq: bool,

    /// Wait up to this long for subnet.env to appear (twill writes it once it holds
    /// its lease), e.g. in a unit's ExecStartPre.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub wait: u64,
}

/// `twill plugin …`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List the built-in plugins and the plugin directory's files.
    ///
    /// A table: name, version, the twill:backend WIT version each targets, source
    /// (built-in or file path), and status: which plugin overrides which built-in, and
    /// for each file `twill run` would skip, why.
    List(PluginListArgs),

    /// Inspect one component file; exit 0 if this host can load it, 1 if not.
    ///
    /// Shows its name, version, the twill:backend WIT version it targets, the
    /// capabilities it imports, whether it exports the data path, its sha256, how long
    /// loading took (and whether from the cache), and whether this host can load it
    /// (and if not, why). `built-in:<name>` inspects a built-in.
    Inspect(PluginInspectArgs),
    /// Run a component through a node's life against a recording in-memory kernel:
    /// nothing on this machine changes.
    ///
    /// Loads it as `twill run` would, then calls init (with the config's Backend
    /// object), start, on-leases with sample peers joining, the same again (a backend
    /// must be idempotent), one peer leaving, and shutdown; prints each answer and every
    /// kernel change (link, address, route, neighbour, FDB, TUN, socket) it asked for.
    /// The host's confinement applies as on a node. Exit status 1 if a step fails.
    Test(PluginTestArgs),
    /// Write a new backend plugin crate (the SDK and the WIT included): a working
    /// host-gw-like backend to change, with a README on building, testing and
    /// installing it. Needs no twill repository.
    New(PluginNewArgs),
}

#[derive(Debug, Args)]
pub struct PluginTestArgs {
    /// The component (`*.wasm`), or `built-in:<name>`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The network config to run with (default: 10.244.0.0/16 and
    /// `{"Type":"<the plugin's name>"}`).
    #[arg(long, value_name = "JSON")]
    pub config: Option<String>,
    /// How many sample peers join.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=200), value_name = "N")]
    pub peers: u8,
}

#[derive(Debug, Args)]
pub struct PluginNewArgs {
    /// The plugin's name: what `Backend.Type` selects (lowercase letters, digits, `-`).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Where to write the crate (default: ./NAME); must not exist or be empty.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PluginListArgs {
    #[command(flatten)]
    pub dir: PluginDirArg,
    #[command(flatten)]
    pub cache: PluginCacheArg,
    /// Print `{"plugin_dir": {path, state, reason}, "plugins": [{name, version, wit,
    /// source, status}]}` instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PluginInspectArgs {
    /// The component (`*.wasm`), or `built-in:<name>`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub cache: PluginCacheArg,
    /// Print one JSON object (the same facts, snake_case keys) instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// The plugin directory unless --plugin-dir says otherwise.
pub const DEFAULT_PLUGIN_DIR: &str = "/etc/twill/plugins";
/// The compiled-plugin cache unless --plugin-cache-dir says otherwise.
pub const DEFAULT_PLUGIN_CACHE_DIR: &str = "/var/cache/twill";

/// A path that may be empty (clap's `PathBuf` parser refuses empty values).
fn path_or_empty() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from)
}

#[derive(Debug, Clone, Args)]
pub struct PluginDirArg {
    /// Directory of backend plugins. Every `*.wasm` component there that exports
    /// twill:backend/backend@0.1 is registered under the name its describe() declares;
    /// one named like a built-in replaces it. A file that cannot be loaded is skipped
    /// with a warning saying why. A missing directory (or an empty value) means the
    /// built-ins only.
    #[arg(
        long,
        env = "TWILL_PLUGIN_DIR",
        default_value = DEFAULT_PLUGIN_DIR,
        value_parser = path_or_empty(),
        value_name = "DIR"
    )]
    pub plugin_dir: PathBuf,
}

impl PluginDirArg {
    /// The directory, unless the value is empty.
    pub fn dir(&self) -> Option<&std::path::Path> {
        (!self.plugin_dir.as_os_str().is_empty()).then_some(self.plugin_dir.as_path())
    }
}

#[derive(Debug, Clone, Args)]
pub struct PluginCacheArg {
    /// Where compiled plugins are cached (wasmtime's compilation cache, keyed by the
    /// component's bytes and the engine), so a restart does not compile unchanged
    /// plugins again. An empty value disables the cache; a directory that cannot be
    /// written is a warning and plugins are compiled each time.
    #[arg(
        long,
        env = "TWILL_PLUGIN_CACHE_DIR",
        default_value = DEFAULT_PLUGIN_CACHE_DIR,
        value_parser = path_or_empty(),
        value_name = "DIR"
    )]
    pub plugin_cache_dir: PathBuf,
}

impl PluginCacheArg {
    /// The directory, unless the value is empty.
    pub fn dir(&self) -> Option<&std::path::Path> {
        (!self.plugin_cache_dir.as_os_str().is_empty()).then_some(self.plugin_cache_dir.as_path())
    }
}

/// Where a command finds the node's HTTP API (`twill run --api-addr`).
#[derive(Debug, Clone, Args)]
pub struct ApiAddrArg {
    /// Address of the node's HTTP API.
    #[arg(
        long,
        env = "TWILL_API_ADDR",
        default_value = "127.0.0.1:9465",
        value_name = "ADDR:PORT"
    )]
    pub api_addr: SocketAddr,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub api: ApiAddrArg,
    /// Print `{"status": …, "peers": […]}` as the API gives them (/v1/status,
    /// /v1/peers) instead of the summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub api: ApiAddrArg,

    /// The subnet.env twill writes (as `twill run --subnet-file`).
    #[arg(
        long,
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env",
        value_name = "PATH"
    )]
    pub subnet_file: PathBuf,

    /// Print the checks as JSON (`{"checks": [{check, result, message, fix}], "failed",
    /// "warned"}`).
    #[arg(long)]
    pub json: bool,
}

/// The embedded store's file unless --store-path says otherwise.
pub const DEFAULT_STORE_PATH: &str = "/var/lib/twill/leases.db";

/// Which lease store `twill run` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// etcd at --etcd-endpoints.
    Etcd,
    /// The SQLite file at --store-path.
    Embedded,
}

/// Which lease store, and how to reach it: `twill run`'s flags, also taken by the
/// commands that read or write the store (`config`, `leave`).
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Where leases and the network config live: `etcd` (flannel's layout; the store
    /// for real clusters) or `embedded` (one SQLite file at --store-path shared by the
    /// twill processes of one host, as `twill demo` uses; write its config with
    /// `twill config set`).
    #[arg(
        id = "store",
        long = "store",
        env = "TWILL_STORE",
        value_enum,
        default_value_t = StoreKind::Etcd,
        value_name = "STORE"
    )]
    pub kind: StoreKind,

    /// The embedded store's database file (with --store embedded).
    #[arg(
        long,
        env = "TWILL_STORE_PATH",
        default_value = DEFAULT_STORE_PATH,
        value_name = "PATH"
    )]
    pub store_path: PathBuf,

    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "FLANNELD_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379",
        value_name = "URLS"
    )]
    pub etcd_endpoints: Vec<String>,

    /// etcd prefix under which the config and the leases live.
    #[arg(
        long,
        env = "FLANNELD_ETCD_PREFIX",
        default_value = "/coreos.com/network",
        value_name = "PREFIX"
    )]
    pub etcd_prefix: String,

    /// CA certificate (PEM) that signed etcd's server certificates; makes the
    /// endpoints https. Without it, https endpoints are checked against the system's
    /// trust roots.
    #[arg(long, env = "FLANNELD_ETCD_CAFILE", value_name = "PATH")]
    pub etcd_cafile: Option<PathBuf>,

    /// Client certificate (PEM) for etcd's --client-cert-auth; needs --etcd-keyfile.
    #[arg(
        long,
        env = "FLANNELD_ETCD_CERTFILE",
        requires = "etcd_keyfile",
        value_name = "PATH"
    )]
    pub etcd_certfile: Option<PathBuf>,

    /// Private key (PEM) of --etcd-certfile.
    #[arg(
        long,
        env = "FLANNELD_ETCD_KEYFILE",
        requires = "etcd_certfile",
        value_name = "PATH"
    )]
    pub etcd_keyfile: Option<PathBuf>,

    /// etcd user (etcd's own authentication; its role needs read-write on the prefix).
    #[arg(long, env = "FLANNELD_ETCD_USERNAME", value_name = "NAME")]
    pub etcd_username: Option<String>,

    /// Password of --etcd-username. Prefer the environment variable: a flag's value is
    /// visible to every user in the process list.
    #[arg(
        long,
        env = "FLANNELD_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "etcd_username",
        value_name = "PASSWORD"
    )]
    pub etcd_password: Option<String>,
}

impl StoreArgs {
    /// --etcd-username with its password (empty when none is given).
    pub fn etcd_user(&self) -> Option<(String, String)> {
        let name = self.etcd_username.clone()?;
        Some((name, self.etcd_password.clone().unwrap_or_default()))
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten, next_help_heading = "Lease store")]
    pub store: StoreArgs,

    /// How long the lease store may be unreachable before /readyz fails (traffic
    /// keeps flowing meanwhile; the node only cannot learn of new peers or renew).
    #[arg(
        long,
        env = "TWILL_STORE_UNREADY_AFTER",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=86400),
        value_name = "SECONDS"
    )]
    #[arg(help_heading = "Lease store")]
    pub store_unready_after: u64,

    /// How often the backend is initialised and started again and given every peer,
    /// repairing a deleted device, address, route, neighbour or FDB entry.
    #[arg(
        long,
        env = "TWILL_RESYNC_INTERVAL",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        value_name = "SECONDS"
    )]
    #[arg(help_heading = "Repair and probes")]
    pub resync_interval: u64,

    /// How often each peer is probed through the overlay (an ICMP echo from this
    /// node's subnet address to the peer's; results in /v1/peers, /metrics and `twill
    /// doctor`); 0 turns the probes off.
    #[arg(
        long,
        env = "TWILL_PEER_PROBE_INTERVAL",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(0..=3600),
        value_name = "SECONDS"
    )]
    #[arg(help_heading = "Repair and probes")]
    pub peer_probe_interval: u64,

    /// At most this many peer probes a second, however many peers there are (a round
    /// over all peers then takes peers/rate seconds).
    #[arg(
        long,
        env = "TWILL_PEER_PROBE_RATE",
        default_value_t = 200,
        value_parser = clap::value_parser!(u32).range(1..=10000),
        value_name = "PER_SECOND"
    )]
    #[arg(help_heading = "Repair and probes")]
    pub peer_probe_rate: u32,

    /// Masquerade traffic from the cluster network to destinations outside it with the
    /// node's address (flannel's rules, in iptables chain TWILL-POSTRTG of the nat
    /// table); subnet.env then says FLANNEL_IPMASQ=true.
    #[arg(long, env = "FLANNELD_IP_MASQ")]
    #[arg(help_heading = "Traffic rules (iptables)")]
    pub ip_masq: bool,

    /// Masquerade without --random-fully.
    #[arg(long, env = "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE")]
    #[arg(help_heading = "Traffic rules (iptables)")]
    pub ip_masq_fully_random_disable: bool,

    /// Accept the cluster network's traffic in iptables' FORWARD chain (chain
    /// TWILL-FWD), so overlay traffic flows where the FORWARD policy is DROP, as Docker
    /// sets it. `--iptables-forward-rules=false` turns it off (and removes the rules).
    #[arg(
        long,
        env = "FLANNELD_IPTABLES_FORWARD_RULES",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    #[arg(help_heading = "Traffic rules (iptables)")]
    pub iptables_forward_rules: bool,

    /// How often the masquerade and forward rules are checked and repaired.
    #[arg(
        long,
        env = "FLANNELD_IPTABLES_RESYNC",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        value_name = "SECONDS"
    )]
    #[arg(help_heading = "Traffic rules (iptables)")]
    pub iptables_resync: u64,

    #[command(flatten, next_help_heading = "This node")]
    pub node: NodeArgs,

    /// Longest a single call into the backend plugin may run before the epoch
    /// deadline interrupts it (the call fails and the plugin is restarted).
    #[arg(
        long,
        env = "TWILL_PLUGIN_CALL_TIMEOUT",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        value_name = "SECONDS"
    )]
    #[arg(help_heading = "Backend plugins")]
    pub plugin_call_timeout: u64,

    /// Most linear memory one plugin instance may grow to; beyond it the plugin traps
    /// and is restarted.
    #[arg(
        long,
        env = "TWILL_PLUGIN_MEMORY_MIB",
        default_value_t = 64,
        value_parser = clap::value_parser!(u64).range(1..=4096),
        value_name = "MIB"
    )]
    #[arg(help_heading = "Backend plugins")]
    pub plugin_memory_mib: u64,

    /// Minutes before the lease expires at which to renew it (1..=1439).
    #[arg(
        long,
        env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN",
        default_value_t = 60,
        value_parser = clap::value_parser!(u32).range(1..=1439),
        value_name = "MINUTES"
    )]
    #[arg(help_heading = "Lease store")]
    pub subnet_lease_renew_margin: u32,

    /// Address of the HTTP API (status, leases, peers, plugins, /metrics, health).
    /// Loopback by default; expose it deliberately.
    #[arg(
        long,
        env = "TWILL_API_ADDR",
        default_value = "127.0.0.1:9465",
        value_name = "ADDR:PORT"
    )]
    #[arg(help_heading = "HTTP API and health")]
    pub api_addr: SocketAddr,

    /// IP for a separate health-check listener (/healthz, /readyz), as flanneld's.
    #[arg(
        long,
        env = "FLANNELD_HEALTHZ_IP",
        default_value = "0.0.0.0",
        value_name = "IP"
    )]
    #[arg(help_heading = "HTTP API and health")]
    pub healthz_ip: IpAddr,

    /// Port of the separate health-check listener; 0 (the default) disables it.
    #[arg(
        long,
        env = "FLANNELD_HEALTHZ_PORT",
        default_value_t = 0,
        value_name = "PORT"
    )]
    #[arg(help_heading = "HTTP API and health")]
    pub healthz_port: u16,

    #[command(flatten, next_help_heading = "Backend plugins")]
    pub plugin_dir: PluginDirArg,

    #[command(flatten, next_help_heading = "Backend plugins")]
    pub plugin_cache: PluginCacheArg,
}

impl RunArgs {
    /// What the node daemon takes from these flags.
    pub fn options(self) -> twill_node::Options {
        twill_node::Options {
            store: match self.store.kind {
                StoreKind::Etcd => twill_node::StoreKind::Etcd,
                StoreKind::Embedded => twill_node::StoreKind::Embedded,
            },
            etcd_user: self.store.etcd_user(),
            etcd_ca_file: self.store.etcd_cafile,
            etcd_cert_file: self.store.etcd_certfile,
            etcd_key_file: self.store.etcd_keyfile,
            store_path: self.store.store_path,
            etcd_endpoints: self.store.etcd_endpoints,
            etcd_prefix: self.store.etcd_prefix,
            iface: self.node.iface,
            public_ip: self.node.public_ip,
            subnet_file: self.node.subnet_file,
            plugin_call_timeout: std::time::Duration::from_secs(self.plugin_call_timeout),
            plugin_memory_bytes: usize::try_from(self.plugin_memory_mib << 20)
                .unwrap_or(usize::MAX),
            renew_margin: std::time::Duration::from_secs(
                u64::from(self.subnet_lease_renew_margin) * 60,
            ),
            api_addr: self.api_addr,
            store_unready_after: std::time::Duration::from_secs(self.store_unready_after),
            ip_masq: self.ip_masq,
            ip_masq_fully_random_disable: self.ip_masq_fully_random_disable,
            iptables_forward_rules: self.iptables_forward_rules,
            iptables_resync: std::time::Duration::from_secs(self.iptables_resync),
            healthz_addr: (self.healthz_port != 0)
                .then(|| SocketAddr::new(self.healthz_ip, self.healthz_port)),
            plugin_dir: self.plugin_dir.dir().map(Into::into),
            plugin_cache_dir: self.plugin_cache.dir().map(Into::into),
            peer_probe_interval: std::time::Duration::from_secs(self.peer_probe_interval),
            peer_probe_rate: self.peer_probe_rate,
            resync_interval: std::time::Duration::from_secs(self.resync_interval),
        }
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many nodes (2..=20).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=20), value_name = "N")]
    pub nodes: u8,

    /// The backend, as in the config's Backend.Type: vxlan, host-gw or directrouting.
    #[arg(long, default_value = "vxlan", value_name = "TYPE")]
    pub backend: String,

    /// Stop after this many seconds once the cluster is up (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,

    /// Use this etcd (reachable from this host, e.g. http://127.0.0.1:2379) instead of
    /// the embedded store. The demo writes under its own prefix and deletes it at exit.
    #[arg(long, value_delimiter = ',', value_name = "URLS")]
    pub etcd_endpoints: Vec<String>,

    /// The pods: bare namespaces (`none`), or a real container per node from `docker`
    /// (a dockerd per node, started with `twill docker-opts`) or `podman` (twill as
    /// flannel's CNI plugin), when that runtime is installed.
    #[arg(long, value_enum, default_value_t = Runtime::None, value_name = "RUNTIME")]
    pub runtime: Runtime,
}

/// What runs the demo's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// Bare network namespaces behind a bridge.
    None,
    /// dockerd on each node.
    Docker,
    /// podman on each node, with twill as its CNI plugin.
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::None => "none",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a network config (flannel's net-conf JSON) and write it to the embedded
    /// store at <etcd-prefix>/config, as `etcdctl put <prefix>/config` does for etcd.
    Set(ConfigSetArgs),
    /// Print the network config the store holds (etcd, or embedded with --store
    /// embedded); with --json the config a node runs on, every default filled in.
    Get(ConfigGetArgs),
    /// Check a network config before it reaches any node: its fields, keys twill
    /// ignores, the backend (built-in or in --plugin-dir) and the backend's own keys
    /// (its init, run against a recording kernel: nothing changes). Without JSON, the
    /// store's config, and whether its leases fit it.
    ///
    /// One line per check (ok / warn / FAIL); exit status 0, or 3 when a check fails.
    Check(ConfigCheckArgs),
}

#[derive(Debug, Args)]
pub struct ConfigGetArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print the effective config (defaults filled in) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConfigCheckArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub dir: PluginDirArg,
    /// The config to check (`-` reads standard input); default: the store's.
    #[arg(value_name = "JSON")]
    pub json: Option<String>,
}

#[derive(Debug, Args)]
pub struct ConfigSetArgs {
    /// The embedded store's database file (created if missing).
    #[arg(
        long,
        env = "TWILL_STORE_PATH",
        default_value = DEFAULT_STORE_PATH,
        value_name = "PATH"
    )]
    pub store_path: PathBuf,

    /// The prefix under which the config lives.
    #[arg(
        long,
        env = "FLANNELD_ETCD_PREFIX",
        default_value = "/coreos.com/network",
        value_name = "PREFIX"
    )]
    pub etcd_prefix: String,

    /// The config, e.g. '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'.
    #[arg(value_name = "JSON")]
    pub json: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(args: &[&str]) -> Vec<String> {
        go_style_flags(args.iter().map(Into::into).collect())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn flanneld_single_dash_flags_are_read_as_long_options() {
        assert_eq!(
            rewrite(&[
                "twill",
                "run",
                "-etcd-endpoints=http://10.0.0.1:2379",
                "-iface",
                "eth0",
                "--ip-masq",
                "-h",
                "-nosuch",
                "eth0"
            ]),
            [
                "twill",
                "run",
                "--etcd-endpoints=http://10.0.0.1:2379",
                "--iface",
                "eth0",
                "--ip-masq",
                "-h",
                "-nosuch",
                "eth0"
            ]
        );
        // Only for `run`: other commands keep their arguments.
        assert_eq!(
            rewrite(&["twill", "status", "-api-addr=1.2.3.4:1"]),
            ["twill", "status", "-api-addr=1.2.3.4:1"]
        );
        let cli = Cli::parse_from(go_style_flags(
            [
                "twill",
                "run",
                "-subnet-lease-renew-margin=30",
                "-iface=eth1",
            ]
            .iter()
            .map(Into::into)
            .collect(),
        ));
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        assert_eq!(run.subnet_lease_renew_margin, 30);
    }
}
