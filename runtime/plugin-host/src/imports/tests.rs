//! The capability checks, called directly on a plugin's state over the fake kernel:
//! every request outside the grant is denied, counted, and never reaches the kernel.

use std::net::Ipv4Addr;
use std::sync::Arc;

use twill_net::Kernel;
use twill_net::fake::{Call, FakeKernel};
use wasmtime::StoreLimitsBuilder;

use crate::bindings::twill::backend::{addresses, fdb, links, neighbours, routes};
use crate::bindings::{Error, Subnet};
use crate::state::{DeviceRegistry, ExternalIface, Grant, PluginState, PluginStats};

const ETH0_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

fn ip(a: u8, b: u8, c: u8, d: u8) -> u32 {
    u32::from(Ipv4Addr::new(a, b, c, d))
}

pub(super) fn state(kernel: Arc<FakeKernel>, devices: DeviceRegistry, plugin: &str) -> PluginState {
    let eth0 = kernel.link_by_name("eth0").expect("fake").expect("eth0");
    let grant = Grant {
        network: "10.244.0.0/16".parse().expect("subnet"),
        own_subnet: Some("10.244.1.0/24".parse().expect("subnet")),
        external: ExternalIface::of(&eth0, ETH0_IP),
        public_ip: ETH0_IP,
        ports: crate::DEFAULT_PORTS.to_vec(),
    };
    PluginState::new(
        plugin,
        kernel,
        grant,
        devices,
        Default::default(),
        StoreLimitsBuilder::new().build(),
        Arc::new(PluginStats::default()),
    )
}

pub(super) fn kernel() -> Arc<FakeKernel> {
    Arc::new(FakeKernel::new().with_link("eth0", 1500, ETH0_IP, 24))
}

fn vxlan_spec(name: &str, underlay: u32) -> links::VxlanSpec {
    links::VxlanSpec {
        name: name.into(),
        vni: 1,
        port: 8472,
        local: u32::from(ETH0_IP),
        underlay,
        learning: false,
        mac: None,
    }
}

fn route(dst: (u32, u8), gateway: Option<u32>, dev: u32) -> routes::Route {
    routes::Route {
        dst: Subnet {
            addr: dst.0,
            prefix: dst.1,
        },
        gateway,
        dev,
        onlink: true,
    }
}

pub(super) fn denied<T: std::fmt::Debug>(r: wasmtime::Result<Result<T, Error>>) -> String {
    match r.expect("no trap") {
        Err(Error::Denied(m)) => m,
        other => panic!("expected a denial, got {other:?}"),
    }
}

/// Security review H-5: next hops only to peers the instance was handed, and a
/// neighbour's MAC must be unicast.
#[test]
fn next_hops_must_be_peers() {
    let k = kernel();
    let mut s = state(k.clone(), DeviceRegistry::default(), "vxlan");
    let eth0 = s.grant.external.index;
    let link = links::Host::ensure_vxlan(&mut s, vxlan_spec("flannel.1", eth0))
        .expect("no trap")
        .expect("allowed");
    s.peers.insert(
        "10.244.2.0/24".parse().expect("s"),
        std::net::Ipv4Addr::new(192, 168, 0, 2),
    );
    let stranger = ip(203, 0, 113, 7);
    assert!(
        denied(fdb::Host::replace(
            &mut s,
            link.index,
            (2, 0, 0, 0, 0, 9),
            stranger
        ))
        .contains("is not a current peer's public IP")
    );
    assert!(
        denied(routes::Host::replace(
            &mut s,
            route((ip(10, 244, 2, 0), 24), Some(stranger), eth0)
        ))
        .contains("is not a current peer's public IP")
    );
    assert!(
        denied(routes::Host::replace(
            &mut s,
            route((ip(10, 244, 2, 0), 24), Some(stranger), link.index)
        ))
        .contains("is not a current peer's public IP")
    );
    match neighbours::Host::replace(&mut s, link.index, ip(10, 244, 2, 0), (1, 0, 0x5e, 0, 0, 1))
        .expect("no trap")
    {
        Err(Error::Invalid(m)) => assert!(m.contains("not a unicast"), "{m}"),
        other => panic!("a multicast neighbour MAC was accepted: {other:?}"),
    }
    assert!(k.fdb().is_empty(), "nothing reached the kernel");
}

#[test]
fn allowed_requests_reach_the_kernel() {
    let k = kernel();
    let mut s = state(k.clone(), DeviceRegistry::default(), "vxlan");
    // The peers this instance was handed: the only next hops it may program.
    s.peers.insert(
        "10.244.2.0/24".parse().expect("s"),
        std::net::Ipv4Addr::new(192, 168, 0, 2),
    );
    s.peers.insert(
        "10.244.3.0/24".parse().expect("s"),
        std::net::Ipv4Addr::new(192, 168, 0, 3),
    );
    let eth0 = s.grant.external.index;
    let link = links::Host::ensure_vxlan(&mut s, vxlan_spec("flannel.1", eth0))
        .expect("no trap")
        .expect("allowed");
    let peer = ip(10, 244, 2, 0);
    routes::Host::replace(&mut s, route((peer, 24), Some(peer), link.index))
        .expect("no trap")
        .expect("allowed");
    // host-gw shape: via a peer's public IP on the external interface.
    routes::Host::replace(
        &mut s,
        route((ip(10, 244, 3, 0), 24), Some(ip(192, 168, 0, 3)), eth0),
    )
    .expect("no trap")
    .expect("allowed");
    neighbours::Host::replace(&mut s, link.index, peer, (2, 0, 0, 0, 0, 9))
        .expect("no trap")
        .expect("allowed");
    fdb::Host::replace(&mut s, link.index, (2, 0, 0, 0, 0, 9), ip(192, 168, 0, 2))
        .expect("no trap")
        .expect("allowed");
    addresses::Host::ensure(&mut s, link.index, ip(10, 244, 1, 0))
        .expect("no trap")
        .expect("allowed");
    assert!(
        k.addrs()
            .iter()
            .any(|a| a.index == link.index && a.prefix == 32)
    );
    assert_eq!(k.routes().len(), 2);
    assert!(s.stats.denied().is_empty());
}

#[test]
fn requests_outside_the_grant_are_denied_counted_and_never_reach_the_kernel() {
    let k = kernel();
    let devices = DeviceRegistry::default();
    let mut s = state(k.clone(), devices.clone(), "vxlan");
    let eth0 = s.grant.external.index;
    let link = links::Host::ensure_vxlan(&mut s, vxlan_spec("flannel.1", eth0))
        .expect("no trap")
        .expect("allowed");
    k.take_calls();

    // Routes outside the network, to the node's own subnet, or the host's default.
    assert!(
        denied(routes::Host::replace(
            &mut s,
            route((ip(8, 8, 8, 0), 24), None, link.index)
        ))
        .contains("outside the cluster network")
    );
    assert!(
        denied(routes::Host::replace(
            &mut s,
            route((0, 0), Some(ip(192, 168, 0, 9)), eth0)
        ))
        .contains("outside")
    );
    assert!(
        denied(routes::Host::replace(
            &mut s,
            route((ip(10, 244, 1, 0), 24), None, link.index)
        ))
        .contains("own subnet")
    );
    assert!(
        denied(routes::Host::delete(
            &mut s,
            route((ip(192, 168, 0, 0), 24), None, eth0)
        ))
        .contains("outside")
    );
    // A device it did not create; the external interface without a gateway.
    assert!(
        denied(routes::Host::replace(
            &mut s,
            route((ip(10, 244, 2, 0), 24), None, 1)
        ))
        .contains("not one this plugin created")
    );
    assert!(
        denied(routes::Host::replace(
            &mut s,
            route((ip(10, 244, 2, 0), 24), None, eth0)
        ))
        .contains("via a peer")
    );
    // Links: the external interface itself, a foreign underlay or local address.
    assert!(
        denied(links::Host::set_mtu(&mut s, eth0, 1400)).contains("not one this plugin created")
    );
    assert!(
        denied(addresses::Host::ensure(&mut s, eth0, ip(10, 244, 1, 0)))
            .contains("not one this plugin created")
    );
    assert!(denied(links::Host::delete(&mut s, eth0)).contains("not one this plugin created"));
    assert!(
        denied(links::Host::ensure_vxlan(&mut s, vxlan_spec("eth0", eth0)))
            .contains("host's own interface")
    );
    let mut foreign = vxlan_spec("flannel.2", eth0);
    foreign.local = ip(192, 168, 0, 99);
    assert!(denied(links::Host::ensure_vxlan(&mut s, foreign)).contains("public IP"));
    assert!(
        denied(addresses::Host::ensure(
            &mut s,
            link.index,
            ip(10, 244, 7, 0)
        ))
        .contains("node's subnet")
    );
    // A route covering the node's own subnet, even on its own device (only the whole
    // network exactly may go to a device of the plugin, as udp's does).
    assert!(
        denied(routes::Host::replace(
            &mut s,
            route((ip(10, 244, 0, 0), 20), None, link.index)
        ))
        .contains("own subnet")
    );
    // The whole network via a gateway is no device route.
    assert!(
        denied(routes::Host::replace(
            &mut s,
            route((ip(10, 244, 0, 0), 16), Some(ip(10, 244, 7, 0)), link.index)
        ))
        .contains("whole network")
    );
    // Another software's vxlan device name.
    assert!(
        denied(links::Host::ensure_vxlan(
            &mut s,
            vxlan_spec("vxlan0", eth0)
        ))
        .contains("does not start with")
    );
    // Neighbours and FDB only on its own devices, neighbours only inside the network.
    assert!(
        denied(neighbours::Host::replace(
            &mut s,
            eth0,
            ip(10, 244, 2, 0),
            (2, 0, 0, 0, 0, 1)
        ))
        .contains("not one this plugin created")
    );
    assert!(
        denied(neighbours::Host::replace(
            &mut s,
            link.index,
            ip(192, 168, 0, 7),
            (2, 0, 0, 0, 0, 1)
        ))
        .contains("outside")
    );
    assert!(
        denied(fdb::Host::replace(
            &mut s,
            eth0,
            (2, 0, 0, 0, 0, 1),
            ip(192, 168, 0, 2)
        ))
        .contains("not one this plugin created")
    );

    // Another plugin cannot take over flannel.1.
    let mut other = state(k.clone(), devices, "intruder");
    assert!(
        denied(links::Host::ensure_vxlan(
            &mut other,
            vxlan_spec("flannel.1", eth0)
        ))
        .contains("belongs to plugin vxlan")
    );

    assert_eq!(
        k.calls(),
        Vec::<Call>::new(),
        "no denied request reached the kernel"
    );
    let counts = s.stats.denied();
    assert_eq!(counts.get("routes"), Some(&8));
    assert_eq!(counts.get("links"), Some(&5));
    assert_eq!(counts.get("addresses"), Some(&2));
    assert_eq!(counts.get("neighbours"), Some(&2));
    assert_eq!(counts.get("fdb"), Some(&1));
    assert_eq!(other.stats.denied().get("links"), Some(&1));
}

#[test]
fn a_device_of_another_kind_is_never_adopted() {
    let k = kernel();
    k.add_link("flannel.1", 1500, Ipv4Addr::new(172, 16, 0, 1), 24);
    let mut s = state(k.clone(), DeviceRegistry::default(), "vxlan");
    let eth0 = s.grant.external.index;
    k.take_calls();
    assert!(
        denied(links::Host::ensure_vxlan(
            &mut s,
            vxlan_spec("flannel.1", eth0)
        ))
        .contains("not a vxlan device")
    );
    assert!(k.calls().is_empty());
}

fn ipip_spec(name: &str, local: Ipv4Addr, underlay: u32) -> links::IpipSpec {
    links::IpipSpec {
        name: name.into(),
        local: u32::from(local),
        underlay,
    }
}

/// A fake kernel with eth0 (index 2) and an existing `flannel.ipip` with these attributes.
fn kernel_with_ipip(ipip: twill_net::IpipInfo) -> Arc<FakeKernel> {
    Arc::new(
        FakeKernel::new()
            .with_link("eth0", 1500, ETH0_IP, 24)
            .with_link_info(twill_net::LinkInfo {
                index: 0,
                name: "flannel.ipip".into(),
                kind: Some("ipip".into()),
                mtu: 1480,
                mac: None,
                up: true,
                vxlan: None,
                ipip: Some(ipip),
            }),
    )
}

#[test]
fn ipip_device_is_created_then_kept_and_usable() {
    let k = kernel();
    let mut s = state(k.clone(), DeviceRegistry::default(), "ipip");
    let eth0 = s.grant.external.index;
    let link = links::Host::ensure_ipip(&mut s, ipip_spec("flannel.ipip", ETH0_IP, eth0))
        .expect("no trap")
        .expect("allowed");
    assert_eq!(link.name, "flannel.ipip");
    assert_eq!(link.mtu, 1480);
    assert_eq!(
        k.take_calls(),
        vec![Call::CreateIpip(twill_net::IpipSpec {
            name: "flannel.ipip".into(),
            local: ETH0_IP,
            underlay: eth0,
        })]
    );
    // Idempotent: the same device again, nothing asked of the kernel.
    let again = links::Host::ensure_ipip(&mut s, ipip_spec("flannel.ipip", ETH0_IP, eth0))
        .expect("no trap")
        .expect("allowed");
    assert_eq!(again.index, link.index);
    assert!(k.take_calls().is_empty());

    // The device is the plugin's: MTU, address, up, and flannel's onlink route via a
    // peer's public IP all pass the checks.
    s.peers.insert(
        "10.244.2.0/24".parse().expect("s"),
        std::net::Ipv4Addr::new(192, 168, 0, 2),
    );
    links::Host::set_mtu(&mut s, link.index, 1480)
        .expect("no trap")
        .expect("allowed");
    addresses::Host::ensure(&mut s, link.index, ip(10, 244, 1, 0))
        .expect("no trap")
        .expect("allowed");
    links::Host::set_up(&mut s, link.index)
        .expect("no trap")
        .expect("allowed");
    routes::Host::replace(
        &mut s,
        route(
            (ip(10, 244, 2, 0), 24),
            Some(ip(192, 168, 0, 2)),
            link.index,
        ),
    )
    .expect("no trap")
    .expect("allowed");
    assert_eq!(
        k.routes(),
        vec![twill_net::Route {
            dst: "10.244.2.0/24".parse().expect("subnet"),
            gateway: Some(Ipv4Addr::new(192, 168, 0, 2)),
            oif: Some(link.index),
            onlink: true,
        }]
    );
    assert!(s.stats.denied().is_empty());

    // Behind NAT the public IP differs from the interface address; ipip's local
    // endpoint is the interface address all the same (flannel's IfaceAddr).
    let k = kernel();
    let mut nat = state(k.clone(), DeviceRegistry::default(), "ipip");
    nat.grant.public_ip = Ipv4Addr::new(203, 0, 113, 7);
    links::Host::ensure_ipip(&mut nat, ipip_spec("flannel.ipip", ETH0_IP, eth0))
        .expect("no trap")
        .expect("the interface address is the local endpoint");
    assert!(
        denied(links::Host::ensure_ipip(
            &mut nat,
            ipip_spec("flannel.ip2", Ipv4Addr::new(203, 0, 113, 7), eth0)
        ))
        .contains("is not the address 192.168.0.1 of the external interface eth0")
    );
}

#[test]
fn an_existing_ipip_device_is_adopted_when_compatible_and_recreated_otherwise() {
    let eth0 = 2;
    let keep = |ipip| {
        let k = kernel_with_ipip(ipip);
        let before = k
            .link_by_name("flannel.ipip")
            .expect("fake")
            .expect("seeded");
        let mut s = state(k.clone(), DeviceRegistry::default(), "ipip");
        assert_eq!(s.grant.external.index, eth0);
        let link = links::Host::ensure_ipip(&mut s, ipip_spec("flannel.ipip", ETH0_IP, eth0))
            .expect("no trap")
            .expect("allowed");
        (k, before.index, link.index)
    };
    // What twill creates, and what flannel creates (no underlay): kept as they are.
    for underlay in [Some(eth0), None] {
        let (k, before, after) = keep(twill_net::IpipInfo {
            local: Some(ETH0_IP),
            remote: None,
            underlay,
        });
        assert_eq!(after, before, "underlay {underlay:?}: kept");
        assert!(
            k.calls().is_empty(),
            "underlay {underlay:?}: {:?}",
            k.calls()
        );
    }
    // Another local address, a fixed remote, another underlay: recreated.
    for ipip in [
        twill_net::IpipInfo {
            local: Some(Ipv4Addr::new(192, 168, 0, 99)),
            remote: None,
            underlay: Some(eth0),
        },
        twill_net::IpipInfo {
            local: Some(ETH0_IP),
            remote: Some(Ipv4Addr::new(192, 168, 0, 2)),
            underlay: Some(eth0),
        },
        twill_net::IpipInfo {
            local: Some(ETH0_IP),
            remote: None,
            underlay: Some(1),
        },
        twill_net::IpipInfo {
            local: None,
            remote: None,
            underlay: None,
        },
    ] {
        let (k, before, after) = keep(ipip);
        assert_ne!(after, before, "{ipip:?}: recreated");
        assert_eq!(
            k.calls(),
            vec![
                Call::DeleteLink(before),
                Call::CreateIpip(twill_net::IpipSpec {
                    name: "flannel.ipip".into(),
                    local: ETH0_IP,
                    underlay: eth0,
                })
            ],
            "{ipip:?}"
        );
    }
}

#[test]
fn ipip_requests_outside_the_grant_are_denied_counted_and_never_reach_the_kernel() {
    let k = kernel();
    k.add_link("flannel.vx", 1500, Ipv4Addr::new(172, 16, 0, 1), 24);
    let devices = DeviceRegistry::default();
    let mut s = state(k.clone(), devices.clone(), "ipip");
    let eth0 = s.grant.external.index;
    links::Host::ensure_ipip(&mut s, ipip_spec("flannel.ipip", ETH0_IP, eth0))
        .expect("no trap")
        .expect("allowed");
    k.take_calls();

    // Not the node's interface address; not the external interface as underlay.
    assert!(
        denied(links::Host::ensure_ipip(
            &mut s,
            ipip_spec("flannel.ip2", Ipv4Addr::new(192, 168, 0, 99), eth0)
        ))
        .contains("not the address")
    );
    assert!(
        denied(links::Host::ensure_ipip(
            &mut s,
            ipip_spec("flannel.ip2", ETH0_IP, 1)
        ))
        .contains("not the external interface eth0")
    );
    // Names: the kernel's own tunl0, the host's interface, an existing device of
    // another kind.
    assert!(
        denied(links::Host::ensure_ipip(
            &mut s,
            ipip_spec("tunl0", ETH0_IP, eth0)
        ))
        .contains("does not start with")
    );
    assert!(
        denied(links::Host::ensure_ipip(
            &mut s,
            ipip_spec("eth0", ETH0_IP, eth0)
        ))
        .contains("host's own interface")
    );
    assert!(
        denied(links::Host::ensure_ipip(
            &mut s,
            ipip_spec("flannel.vx", ETH0_IP, eth0)
        ))
        .contains("not a ipip device")
    );
    assert!(matches!(
        links::Host::ensure_ipip(&mut s, ipip_spec("flannel/ipip", ETH0_IP, eth0))
            .expect("no trap"),
        Err(Error::Invalid(_))
    ));
    // Another plugin can take over neither the tunnel nor, through it, the name.
    let mut other = state(k.clone(), devices, "intruder");
    assert!(
        denied(links::Host::ensure_ipip(
            &mut other,
            ipip_spec("flannel.ipip", ETH0_IP, eth0)
        ))
        .contains("belongs to plugin ipip")
    );
    let own = k
        .link_by_name("flannel.ipip")
        .expect("fake")
        .expect("created");
    assert!(
        denied(links::Host::set_up(&mut other, own.index)).contains("not one this plugin created")
    );

    assert_eq!(
        k.calls(),
        Vec::<Call>::new(),
        "no denied request reached the kernel"
    );
    assert_eq!(s.stats.denied().get("links"), Some(&5));
    assert_eq!(other.stats.denied().get("links"), Some(&2));
}

/// Security review M-1: a route that is not twill's is neither replaced nor deleted;
/// flannel's own routes (protocol boot, on a device of the plugin or via a peer on the
/// external interface) are adopted and tagged.
#[test]
fn routes_that_are_not_twills_are_left_alone() {
    let operator = twill_net::Route {
        dst: "10.244.2.0/24".parse().expect("s"),
        gateway: Some(Ipv4Addr::new(192, 168, 0, 254)),
        oif: None,
        onlink: false,
    };
    let k = Arc::new(
        FakeKernel::new()
            .with_link("eth0", 1500, ETH0_IP, 24)
            .with_route_protocol(operator, 4),
    );
    let mut s = state(k.clone(), DeviceRegistry::default(), "vxlan");
    let eth0 = s.grant.external.index;
    let link = links::Host::ensure_vxlan(&mut s, vxlan_spec("flannel.1", eth0))
        .expect("no trap")
        .expect("allowed");
    s.peers.insert(
        "10.244.2.0/24".parse().expect("s"),
        Ipv4Addr::new(192, 168, 0, 2),
    );
    s.peers.insert(
        "10.244.3.0/24".parse().expect("s"),
        Ipv4Addr::new(192, 168, 0, 3),
    );
    let mine = route((ip(10, 244, 2, 0), 24), Some(ip(10, 244, 2, 0)), link.index);

    // The operator's static route stays; the peer gets an `exists` error naming it.
    match routes::Host::replace(&mut s, mine).expect("no trap") {
        Err(Error::Exists(m)) => {
            assert!(m.contains("proto 4") && m.contains("192.168.0.254"), "{m}")
        }
        other => panic!("expected exists, got {other:?}"),
    }
    routes::Host::delete(&mut s, mine)
        .expect("no trap")
        .expect("a delete of what is not ours is a no-op");
    assert_eq!(
        k.routes(),
        vec![operator],
        "the operator's route is untouched"
    );

    // flannel's route through a device of the plugin (boot) is adopted and tagged.
    let flannels = twill_net::Route {
        dst: "10.244.3.0/24".parse().expect("s"),
        gateway: Some(Ipv4Addr::new(10, 244, 3, 0)),
        oif: Some(link.index),
        onlink: true,
    };
    let k2 = Arc::new(
        FakeKernel::new()
            .with_link("eth0", 1500, ETH0_IP, 24)
            .with_route(flannels),
    );
    let mut s2 = state(k2.clone(), DeviceRegistry::default(), "vxlan");
    let link2 = links::Host::ensure_vxlan(&mut s2, vxlan_spec("flannel.1", eth0))
        .expect("no trap")
        .expect("allowed");
    s2.peers.insert(
        "10.244.3.0/24".parse().expect("s"),
        Ipv4Addr::new(192, 168, 0, 3),
    );
    // The route the fake seeded names the index the fake gave flannel.1.
    assert_eq!(link2.index, link.index);
    routes::Host::replace(
        &mut s2,
        route(
            (ip(10, 244, 3, 0), 24),
            Some(ip(10, 244, 3, 0)),
            link2.index,
        ),
    )
    .expect("no trap")
    .expect("flannel's route is adopted");
    let table = k2.table_routes().expect("fake");
    let adopted = table
        .iter()
        .find(|t| t.route.dst == flannels.dst)
        .expect("route");
    assert_eq!(adopted.protocol, twill_net::ROUTE_PROTOCOL);

    // A boot route on the external interface via a stranger is someone else's.
    let stranger = twill_net::Route {
        dst: "10.244.4.0/24".parse().expect("s"),
        gateway: Some(Ipv4Addr::new(192, 168, 0, 77)),
        oif: Some(eth0),
        onlink: false,
    };
    let k3 = Arc::new(
        FakeKernel::new()
            .with_link("eth0", 1500, ETH0_IP, 24)
            .with_route(stranger),
    );
    let mut s3 = state(k3.clone(), DeviceRegistry::default(), "host-gw");
    s3.peers.insert(
        "10.244.4.0/24".parse().expect("s"),
        Ipv4Addr::new(192, 168, 0, 4),
    );
    match routes::Host::replace(
        &mut s3,
        route((ip(10, 244, 4, 0), 24), Some(ip(192, 168, 0, 4)), eth0),
    )
    .expect("no trap")
    {
        Err(Error::Exists(m)) => assert!(m.contains("192.168.0.77"), "{m}"),
        other => panic!("expected exists, got {other:?}"),
    }
    assert_eq!(k3.routes(), vec![stranger]);
}

/// Security review L-2: a vxlan device or socket only on the config's port (flannel's
/// defaults here), and no FDB learning.
#[test]
fn ports_are_the_configs_and_learning_is_refused() {
    let k = kernel();
    let mut s = state(k.clone(), DeviceRegistry::default(), "vxlan");
    let eth0 = s.grant.external.index;
    let squat = links::VxlanSpec {
        port: 53,
        ..vxlan_spec("flannel.53", eth0)
    };
    assert!(denied(links::Host::ensure_vxlan(&mut s, squat)).contains("vxlan port 53"));
    let learning = links::VxlanSpec {
        learning: true,
        ..vxlan_spec("flannel.1", eth0)
    };
    assert!(denied(links::Host::ensure_vxlan(&mut s, learning)).contains("learning"));
    assert!(
        k.links().iter().all(|l| !l.name.starts_with("flannel")),
        "nothing created"
    );
    links::Host::ensure_vxlan(&mut s, vxlan_spec("flannel.1", eth0))
        .expect("no trap")
        .expect("the default port is allowed");
    s.grant.ports = vec![4789];
    let default_now_foreign = links::VxlanSpec {
        vni: 2,
        ..vxlan_spec("flannel.2", eth0)
    };
    assert!(
        denied(links::Host::ensure_vxlan(&mut s, default_now_foreign)).contains("allowed: [4789]")
    );
}

/// Security review L-4: a device deleted under the plugin (its index possibly reused
/// later) is no longer the plugin's, whatever it created before.
#[test]
fn a_device_deleted_under_the_plugin_is_no_longer_its() {
    let k = kernel();
    let mut s = state(k.clone(), DeviceRegistry::default(), "vxlan");
    let eth0 = s.grant.external.index;
    let link = links::Host::ensure_vxlan(&mut s, vxlan_spec("flannel.1", eth0))
        .expect("no trap")
        .expect("allowed");
    links::Host::set_mtu(&mut s, link.index, 1400)
        .expect("no trap")
        .expect("its own device");
    // Someone else deletes it; the next call checks again.
    k.delete_link(link.index).expect("fake");
    s.devices_checked.get_mut().clear();
    assert!(
        denied(links::Host::set_mtu(&mut s, link.index, 1280)).contains("no longer this plugin's")
    );
    assert!(
        denied(routes::Host::replace(
            &mut s,
            route((ip(10, 244, 2, 0), 24), Some(ip(10, 244, 2, 0)), link.index)
        ))
        .contains("no longer this plugin's")
    );
}
