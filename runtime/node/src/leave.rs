//! `twill leave`: what this node put in the kernel, removed once its lease is released
//! (the binary deletes the lease; peers drop the node at once). The daemon must be
//! stopped first, or it would renew the lease and program everything again.
//!
//! Removed: the backend's devices and routes via peers ([`switch::purge`] for the type
//! the lease published), twill's remaining routes (protocol 167) inside the network,
//! the probe address on `lo`, twill's iptables chains and jumps, and subnet.env.

use std::path::Path;

use anyhow::Context;
use twill_core::Subnet;
use twill_net::{Kernel, Netlink};

use crate::{iface, rules, switch};

/// What the node leased, as its lease said.
pub struct Left {
    pub network: Subnet,
    pub subnet_len: u8,
    pub own: Subnet,
    /// The lease's BackendType ("" for udp), or every type when no lease says.
    pub backend_types: Vec<String>,
}

/// Remove this node's kernel objects, rules and subnet.env for `left`; a line per
/// thing removed.
pub async fn clear(
    left: Left,
    iface_flags: &[String],
    subnet_file: &Path,
) -> anyhow::Result<Vec<String>> {
    let kernel: std::sync::Arc<dyn Kernel> = std::sync::Arc::new(
        tokio::task::spawn_blocking(Netlink::new)
            .await?
            .context("open netlink")?,
    );
    let external = {
        let (k, wanted) = (kernel.clone(), iface_flags.to_vec());
        tokio::task::spawn_blocking(move || iface::resolve(k.as_ref(), &wanted)).await??
    };
    let mut removed = {
        let k = kernel.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
            let mut removed = Vec::new();
            for previous in &left.backend_types {
                let purge = switch::Purge {
                    previous: previous.clone(),
                    network: left.network,
                    subnet_len: left.subnet_len,
                    own: left.own,
                    external_index: external.index,
                };
                removed.extend(switch::purge(k.as_ref(), &purge)?);
            }
            for route in k.table_routes()? {
                if route.is_twills() && left.network.contains_subnet(&route.route.dst) {
                    match k.del_route(&route.route) {
                        Ok(()) => removed.push(format!("route {}", route.route.dst)),
                        Err(e) if matches!(e.errno(), Some(libc::ESRCH | libc::ENOENT)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if let Some(lo) = k.link_by_name("lo")? {
                for a in k.addrs()? {
                    if a.index == lo.index && a.prefix == 32 && a.addr == left.own.addr() {
                        k.del_addr(a)?;
                        removed.push(format!("address {}/32 on lo (the probe address)", a.addr));
                    }
                }
            }
            Ok(removed)
        })
        .await??
    };
    let rules = rules::Rules {
        masquerade: false,
        forward: false,
        random_fully: false,
        network: left.network,
        own: left.own,
    };
    for (kind, outcome) in rules
        .ensure()
        .await
        .context("remove twill's iptables rules")?
    {
        if outcome == rules::Outcome::Removed {
            removed.push(format!("iptables {kind:?} chain and its jump"));
        }
    }
    match std::fs::remove_file(subnet_file) {
        Ok(()) => removed.push(format!("{}", subnet_file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", subnet_file.display())),
    }
    Ok(removed)
}
