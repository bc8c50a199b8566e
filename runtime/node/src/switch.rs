//! Switching backends: when the backend type this node published last time differs
//! from the one it registers now, the old backend's kernel objects are removed before
//! the new one programs peers. Otherwise a vxlan device, or a host-gw route via a peer
//! (more specific than udp's network route), would keep carrying or black-holing
//! traffic after the switch.
//!
//! What each flannel-compatible type leaves behind:
//! - `vxlan` (also directrouting): `flannel.<VNI>` vxlan devices (their routes,
//!   neighbours and FDB entries go with them) and direct routes via peers on the
//!   external interface.
//! - `host-gw`: routes via peers on the external interface.
//! - `ipip`: the `flannel.ipip` device and direct routes via peers.
//! - udp (published without a type): its persistent TUN device `flannel…` (the
//!   network's route on it goes with it).
//!
//! Only objects matching those shapes are touched: devices named `flannel…` of the
//! right kind, and routes to a `SubnetLen` subnet inside the network (never our own)
//! with a gateway on the external interface.

use twill_core::Subnet;
use twill_net::{Kernel, NetError};

/// What is removed when switching away from `previous`.
pub struct Purge {
    pub previous: String,
    pub network: Subnet,
    pub subnet_len: u8,
    pub own: Subnet,
    pub external_index: u32,
}

/// The flannel types whose devices are on this node although it now registers
/// `current`, for when no lease of ours says what ran before (it ran out while the node
/// was down): a `flannel…` vxlan device means `vxlan`, a TUN device udp (`""`), an
/// ipip device `ipip`. Only for a flannel type now: a plugin of another type may own
/// such devices itself (its `init` has already run), so nothing is guessed for it.
pub fn left_behind(kernel: &dyn Kernel, current: &str) -> Result<Vec<String>, NetError> {
    let Some((current_kind, _)) = shape(current) else {
        return Ok(Vec::new());
    };
    let mut types = Vec::new();
    for link in kernel.links()? {
        let kind = link.kind.as_deref();
        if !link.name.starts_with("flannel") || kind.is_none() || kind == current_kind {
            continue;
        }
        let Some(previous) = FLANNEL_TYPES
            .into_iter()
            .find(|t| shape(t).is_some_and(|(k, _)| k == kind))
        else {
            continue;
        };
        if !types.iter().any(|t| t == previous) {
            types.push(previous.to_owned());
        }
    }
    Ok(types)
}

/// The backend types flannel has, udp being `""` (it publishes no type).
const FLANNEL_TYPES: [&str; 4] = ["vxlan", "ipip", "host-gw", ""];

/// What a flannel backend type leaves on a node: the kind of its `flannel…` device, and
/// whether it routes via peers on the external interface; `None` for another type.
fn shape(backend_type: &str) -> Option<(Option<&'static str>, bool)> {
    match backend_type {
        "vxlan" => Some((Some("vxlan"), true)),
        "ipip" => Some((Some("ipip"), true)),
        "host-gw" => Some((None, true)),
        "" => Some((Some("tun"), false)),
        _ => None,
    }
}

/// Remove the previous backend's objects. Returns a line per object removed.
pub fn purge(kernel: &dyn Kernel, p: &Purge) -> Result<Vec<String>, NetError> {
    let mut removed = Vec::new();
    // The previous type's device kind, and whether it routed via peers.
    let Some((device_kind, direct_routes)) = shape(&p.previous) else {
        return Ok(removed);
    };
    if let Some(kind) = device_kind {
        for link in kernel.links()? {
            if link.name.starts_with("flannel") && link.kind.as_deref() == Some(kind) {
                kernel.delete_link(link.index)?;
                removed.push(format!("device {} ({kind})", link.name));
            }
        }
    }
    if !direct_routes {
        return Ok(removed);
    }
    for route in kernel.routes()? {
        let ours = route.gateway.is_some()
            && route.oif == Some(p.external_index)
            && route.dst.prefix() == p.subnet_len
            && p.network.contains_subnet(&route.dst)
            && !route.dst.overlaps(&p.own);
        if ours {
            match kernel.del_route(&route) {
                Ok(()) => {}
                // Gone already (e.g. with a device deleted above).
                Err(e) if matches!(e.errno(), Some(libc::ESRCH | libc::ENOENT)) => continue,
                Err(e) => return Err(e),
            }
            removed.push(format!(
                "route {} via {}",
                route.dst,
                route.gateway.map(|g| g.to_string()).unwrap_or_default()
            ));
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use twill_net::fake::FakeKernel;
    use twill_net::{IpipSpec, Route, VxlanSpec};

    use super::*;

    fn subnet(s: &str) -> Subnet {
        s.parse().expect("subnet")
    }

    fn setup() -> (FakeKernel, u32) {
        let k = FakeKernel::new();
        let eth0 = k.add_link("eth0", 1500, Ipv4Addr::new(192, 168, 1, 1), 24);
        k.create_vxlan(&VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            port: 8472,
            local: Ipv4Addr::new(192, 168, 1, 1),
            underlay: eth0,
            learning: false,
            mac: twill_core::MacAddr([2, 0, 0, 0, 0, 9]),
        })
        .expect("vxlan");
        for (dst, gw) in [
            ("10.244.2.0/24", Some([192, 168, 1, 2])),
            ("10.244.3.0/24", Some([192, 168, 1, 3])),
            // Not the backend's: outside the network, no gateway, our own subnet.
            ("172.16.0.0/16", Some([192, 168, 1, 254])),
            ("10.244.9.0/24", None),
            ("10.244.1.0/24", Some([192, 168, 1, 5])),
        ] {
            k.replace_route(&Route {
                dst: subnet(dst),
                gateway: gw.map(Ipv4Addr::from),
                oif: Some(eth0),
                onlink: false,
            })
            .expect("route");
        }
        (k, eth0)
    }

    fn purge_from(k: &FakeKernel, eth0: u32, previous: &str) -> Vec<String> {
        purge(
            k,
            &Purge {
                previous: previous.to_owned(),
                network: subnet("10.244.0.0/16"),
                subnet_len: 24,
                own: subnet("10.244.1.0/24"),
                external_index: eth0,
            },
        )
        .expect("purge")
    }

    #[test]
    fn vxlan_leaves_no_device_and_no_direct_route() {
        let (k, eth0) = setup();
        let removed = purge_from(&k, eth0, "vxlan");
        assert_eq!(
            removed,
            [
                "device flannel.1 (vxlan)",
                "route 10.244.2.0/24 via 192.168.1.2",
                "route 10.244.3.0/24 via 192.168.1.3"
            ]
        );
        let left: Vec<String> = Kernel::routes(&k)
            .expect("routes")
            .iter()
            .map(|r| r.dst.to_string())
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(
            Kernel::link_by_name(&k, "flannel.1")
                .expect("link")
                .is_none()
        );
    }

    #[test]
    fn ipip_leaves_no_ipip_device_and_no_direct_route_but_keeps_vxlan() {
        let (k, eth0) = setup();
        k.create_ipip(&IpipSpec {
            name: "flannel.ipip".into(),
            local: Ipv4Addr::new(192, 168, 1, 1),
            underlay: eth0,
        })
        .expect("ipip");
        let removed = purge_from(&k, eth0, "ipip");
        assert_eq!(
            removed,
            [
                "device flannel.ipip (ipip)",
                "route 10.244.2.0/24 via 192.168.1.2",
                "route 10.244.3.0/24 via 192.168.1.3"
            ]
        );
        assert!(
            Kernel::link_by_name(&k, "flannel.ipip")
                .expect("link")
                .is_none()
        );
        assert!(
            Kernel::link_by_name(&k, "flannel.1")
                .expect("link")
                .is_some(),
            "another backend's device stays"
        );
        assert_eq!(Kernel::routes(&k).expect("routes").len(), 3);
    }

    #[test]
    fn host_gw_keeps_devices_and_udp_removes_only_its_tun_device() {
        let (k, eth0) = setup();
        assert_eq!(purge_from(&k, eth0, "host-gw").len(), 2);
        assert!(
            Kernel::link_by_name(&k, "flannel.1")
                .expect("link")
                .is_some()
        );
        let (k, eth0) = setup();
        k.open_tun("flannel0").expect("tun");
        assert_eq!(purge_from(&k, eth0, ""), ["device flannel0 (tun)"]);
        assert!(
            Kernel::link_by_name(&k, "flannel0")
                .expect("link")
                .is_none()
        );
        assert!(
            Kernel::link_by_name(&k, "flannel.1")
                .expect("link")
                .is_some()
        );
        assert_eq!(Kernel::routes(&k).expect("routes").len(), 5);
    }

    #[test]
    fn without_a_lease_the_devices_name_the_backend_that_ran() {
        let (k, _) = setup();
        let left = |current: &str| left_behind(&k, current).expect("links");
        // flannel.1 (vxlan) is there: it is the current backend's, or vxlan ran.
        assert!(left("vxlan").is_empty());
        assert_eq!(left(""), ["vxlan"]);
        assert_eq!(left("host-gw"), ["vxlan"]);
        assert_eq!(left("ipip"), ["vxlan"]);
        k.open_tun("flannel0").expect("tun");
        assert_eq!(left("vxlan"), [""]);
        assert_eq!(left("host-gw"), ["vxlan", ""]);
        // Another plugin's type: its devices may be its own; nothing is guessed.
        assert!(left("misbehave").is_empty());
    }
}
