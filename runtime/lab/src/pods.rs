//! Pod wiring as a CNI bridge plugin does it from `subnet.env`: `cni0` gets the
//! subnet's first address, the pod `.2` with a default route via it, both ends of the
//! pod's veth at the MTU.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::cmd::{ip, output};
use crate::topology::NodeNet;
use crate::{Error, Result};

/// `subnet.env` as key → value; `None` until the file exists and can be read.
pub fn read_subnet_env(path: &Path) -> Option<BTreeMap<String, String>> {
    let text = fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

/// A pod subnet (`a.b.c.0/len`, SubnetLen ≥ 24 as the lab uses): its addresses by last
/// octet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNet {
    /// `a.b.c.0/len`.
    pub cidr: String,
    prefix: String,
    /// The prefix length.
    pub len: String,
}

impl PodNet {
    /// From any `a.b.c.d/len` inside the subnet (`FLANNEL_SUBNET` gives `.1`).
    pub fn parse(cidr: &str) -> Option<PodNet> {
        let (addr, len) = cidr.split_once('/')?;
        let (prefix, _) = addr.rsplit_once('.')?;
        Some(PodNet {
            cidr: format!("{prefix}.0/{len}"),
            prefix: prefix.to_owned(),
            len: len.to_owned(),
        })
    }

    /// From a node's `subnet.env`: the subnet and `FLANNEL_MTU`.
    pub fn from_subnet_env(path: &Path) -> Result<(PodNet, u32)> {
        let missing = |key: &str| Error::SubnetEnv {
            path: path.display().to_string(),
            key: key.to_owned(),
        };
        let env = read_subnet_env(path).ok_or_else(|| missing("FLANNEL_SUBNET"))?;
        let net = env
            .get("FLANNEL_SUBNET")
            .and_then(|s| PodNet::parse(s))
            .ok_or_else(|| missing("FLANNEL_SUBNET"))?;
        let mtu = env
            .get("FLANNEL_MTU")
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| missing("FLANNEL_MTU"))?;
        Ok((net, mtu))
    }

    /// The address with last octet `last`.
    pub fn addr(&self, last: u8) -> String {
        format!("{}.{last}", self.prefix)
    }

    /// The bridge's address, `.1`.
    pub fn gateway(&self) -> String {
        self.addr(1)
    }

    /// The pod's address, `.2`.
    pub fn pod(&self) -> String {
        self.addr(2)
    }
}

/// Wire node `node`'s pod into `net` at `mtu`. Idempotent: a second call with the same
/// subnet changes nothing (so a node restarting under traffic keeps its pod reachable).
/// Take the pod's addresses away (cni0's and the pod's own), as when its node moved
/// to another subnet and the pod is given a new address with [`wire`].
pub fn unwire(node: &NodeNet) -> Result<()> {
    ip(&node.ns, "-4 addr flush dev cni0")?;
    ip(&node.pod_ns, "-4 addr flush dev eth0").map(drop)
}

pub fn wire(node: &NodeNet, net: &PodNet, mtu: u32) -> Result<()> {
    let (gw, len) = (net.gateway(), &net.len);
    let first = format!("{gw}/{len}");
    let has = output(&["ip", "-n", &node.ns, "-4", "addr", "show", "dev", "cni0"])?;
    if !has.contains(&first) {
        ip(&node.ns, &format!("addr add {first} dev cni0"))?;
    }
    ip(&node.ns, &format!("link set vpod mtu {mtu}"))?;
    ip(&node.ns, "link set cni0 up")?;
    let pod_ns = &node.pod_ns;
    ip(
        pod_ns,
        &format!("addr replace {}/{len} dev eth0", net.pod()),
    )?;
    ip(pod_ns, &format!("link set eth0 mtu {mtu} up"))?;
    ip(pod_ns, &format!("route replace default via {gw}")).map(drop)
}
