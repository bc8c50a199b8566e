//! `twill leave`: retire this node from the cluster at once instead of letting its
//! lease linger until it expires (24 h). With the daemon stopped: find this node's
//! lease (by subnet.env, or --public-ip), delete it from the store (every peer removes
//! the node's routes and tunnel entries as the deletion reaches its watch), then
//! remove what twill put in this node's kernel (`twill_node::leave`).

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, bail};
use twill_core::Config;
use twill_core::subnet_env::SubnetEnv;

use crate::cli::LeaveArgs;
use crate::config::Store;

pub async fn run(args: LeaveArgs) -> anyhow::Result<()> {
    // A running daemon would renew the lease (and program everything) again.
    let probe = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(args.api.api_addr),
    )
    .await;
    if matches!(probe, Ok(Ok(_))) {
        bail!(
            "twill run is still running on this node (its API answers at {}): stop it first \
             (systemctl stop twill), or it renews the lease again",
            args.api.api_addr
        );
    }
    let env = match std::fs::read_to_string(&args.node.subnet_file) {
        Ok(text) => Some(
            SubnetEnv::parse(&text)
                .with_context(|| format!("read {}", args.node.subnet_file.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e).with_context(|| format!("read {}", args.node.subnet_file.display()));
        }
    };
    if env.is_none() && args.node.public_ip.is_none() {
        bail!(
            "{} does not exist: pass --public-ip to say which node's lease to release",
            args.node.subnet_file.display()
        );
    }
    let store = Store::open(&args.store).await?;
    let where_ = store.describe(&args.store);
    let leases = store
        .list_leases()
        .await
        .with_context(|| format!("list the leases in {where_}"))?;
    let lease = match (&env, args.node.public_ip) {
        (Some(env), ip) => {
            let lease = leases.iter().find(|l| l.subnet == env.subnet);
            match (lease, ip) {
                (Some(l), Some(ip)) if l.attrs.public_ip != ip => bail!(
                    "the lease of {} (from {}) is held by {}, not --public-ip {ip}: not released",
                    env.subnet,
                    args.node.subnet_file.display(),
                    l.attrs.public_ip
                ),
                (Some(l), None) if !is_local(l.attrs.public_ip).await? => bail!(
                    "the lease of {} is held by {}, which is no address of this node (another \
                     node took the subnet?): not released; pass --public-ip {} to release it \
                     anyway",
                    l.subnet,
                    l.attrs.public_ip,
                    l.attrs.public_ip
                ),
                (l, _) => l.cloned(),
            }
        }
        (None, Some(ip)) => leases.iter().find(|l| l.attrs.public_ip == ip).cloned(),
        (None, None) => None,
    };
    let config = match store.get_config().await? {
        Some(text) => Some(Config::parse(&text).context("the stored network config")?),
        None => None,
    };
    match &lease {
        Some(l) => {
            store
                .delete_lease(l.subnet)
                .await
                .with_context(|| format!("delete the lease of {} in {where_}", l.subnet))?;
            println!(
                "released the lease of {} (PublicIP {}) in {where_}: peers drop this node now",
                l.subnet, l.attrs.public_ip
            );
        }
        None => println!("this node holds no lease in {where_}: nothing to release"),
    }
    if args.keep_kernel {
        println!("--keep-kernel: this node's devices, routes and rules stay");
        return Ok(());
    }
    let own = lease
        .as_ref()
        .map(|l| l.subnet)
        .or(env.as_ref().map(|e| e.subnet));
    let network = config
        .as_ref()
        .map(|c| c.network)
        .or(env.as_ref().map(|e| e.network));
    let (Some(own), Some(network)) = (own, network) else {
        println!("neither a lease nor subnet.env says what this node had: kernel left as it is");
        return Ok(());
    };
    let left = twill_node::leave::Left {
        network,
        subnet_len: config.as_ref().map_or(own.prefix(), |c| c.subnet_len),
        own,
        // Without a lease, what every backend type leaves is looked for.
        backend_types: lease.as_ref().map_or_else(
            || ["vxlan", "ipip", "host-gw", ""].map(String::from).to_vec(),
            |l| vec![l.attrs.backend_type.clone()],
        ),
    };
    let removed = twill_node::leave::clear(left, &args.node.iface, &args.node.subnet_file).await?;
    if removed.is_empty() {
        println!("nothing of twill's was left in this node's kernel");
    }
    for line in removed {
        println!("removed {line}");
    }
    Ok(())
}

/// Whether `ip` is an address of this network namespace.
async fn is_local(ip: Ipv4Addr) -> anyhow::Result<bool> {
    let addrs = tokio::task::spawn_blocking(|| -> anyhow::Result<_> {
        use twill_net::Kernel;
        Ok(twill_net::Netlink::new().context("open netlink")?.addrs()?)
    })
    .await??;
    Ok(addrs.iter().any(|a| a.addr == ip))
}
