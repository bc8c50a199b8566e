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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node daemon (what flanneld does).
    ///
    /// Reads the network config from etcd at <etcd-prefix>/config (waiting until it
    /// exists), leases a subnet, programs the backend, writes subnet.env and keeps peers
    /// in sync. SIGTERM stops it and leaves the kernel objects in place, so a restart does
    /// not cut traffic.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
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

    /// Where to write the subnet file.
    #[arg(
        long,
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env",
        value_name = "PATH"
    )]
    pub subnet_file: PathBuf,

    /// Minutes before the lease expires at which to renew it (1..=1439).
    #[arg(
        long,
        env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN",
        default_value_t = 60,
        value_parser = clap::value_parser!(u32).range(1..=1439),
        value_name = "MINUTES"
    )]
    pub subnet_lease_renew_margin: u32,

    /// Address of the HTTP API (status, leases, peers, plugins, /metrics, health).
    /// Loopback by default; expose it deliberately.
    #[arg(
        long,
        env = "TWILL_API_ADDR",
        default_value = "127.0.0.1:9465",
        value_name = "ADDR:PORT"
    )]
    pub api_addr: SocketAddr,

    /// IP for a separate health-check listener (/healthz, /readyz), as flanneld's.
    #[arg(
        long,
        env = "FLANNELD_HEALTHZ_IP",
        default_value = "0.0.0.0",
        value_name = "IP"
    )]
    pub healthz_ip: IpAddr,

    /// Port of the separate health-check listener; 0 (the default) disables it.
    #[arg(
        long,
        env = "FLANNELD_HEALTHZ_PORT",
        default_value_t = 0,
        value_name = "PORT"
    )]
    pub healthz_port: u16,
}
