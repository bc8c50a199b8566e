//! Which interface carries the overlay, and the node's public IP — as flanneld picks
//! them: `--iface` by name or address (first that exists), else the interface of the
//! default route; `--public-ip`, else that interface's address.

use std::net::Ipv4Addr;

use anyhow::{Context, bail};
use twill_core::Subnet;
use twill_net::{AddrInfo, Kernel, LinkInfo};
use twill_plugin_host::ExternalIface;

/// Resolve the external interface.
pub fn resolve(kernel: &dyn Kernel, wanted: &[String]) -> anyhow::Result<ExternalIface> {
    let links = kernel.links().context("list network interfaces")?;
    let addrs = kernel.addrs().context("list interface addresses")?;
    let link = if wanted.is_empty() {
        default_route_link(kernel, &links)?
    } else {
        wanted
            .iter()
            .find_map(|w| find(w, &links, &addrs))
            .with_context(|| {
                format!(
                    "interface {} not found (checked names and IPv4 addresses)",
                    wanted.join(", ")
                )
            })?
    };
    let addr = if let Some(ip) = wanted
        .iter()
        .find_map(|w| w.parse::<Ipv4Addr>().ok())
        .filter(|ip| addrs.iter().any(|a| a.index == link.index && a.addr == *ip))
    {
        ip
    } else {
        addrs
            .iter()
            .find(|a| a.index == link.index)
            .map(|a| a.addr)
            .with_context(|| format!("interface {} has no IPv4 address", link.name))?
    };
    Ok(ExternalIface::of(link, addr))
}

fn find<'a>(wanted: &str, links: &'a [LinkInfo], addrs: &[AddrInfo]) -> Option<&'a LinkInfo> {
    match wanted.parse::<Ipv4Addr>() {
        Ok(ip) => {
            let index = addrs.iter().find(|a| a.addr == ip)?.index;
            links.iter().find(|l| l.index == index)
        }
        Err(_) => links.iter().find(|l| l.name == wanted),
    }
}

fn default_route_link<'a>(
    kernel: &dyn Kernel,
    links: &'a [LinkInfo],
) -> anyhow::Result<&'a LinkInfo> {
    let default = Subnet::host(Ipv4Addr::UNSPECIFIED);
    let routes = kernel.routes().context("list routes")?;
    let Some(oif) = routes
        .iter()
        .find(|r| r.dst.prefix() == 0 && r.dst.addr() == default.addr())
        .and_then(|r| r.oif)
    else {
        bail!("no default route to pick the interface from; pass --iface");
    };
    links
        .iter()
        .find(|l| l.index == oif)
        .with_context(|| format!("the default route's interface (index {oif}) is gone"))
}
