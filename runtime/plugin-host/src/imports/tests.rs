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

fn state(kernel: Arc<FakeKernel>, devices: DeviceRegistry, plugin: &str) -> PluginState {
    let eth0 = kernel.link_by_name("eth0").expect("fake").expect("eth0");
    PluginState {
        plugin: plugin.to_owned(),
        kernel,
        grant: Grant {
            network: "10.244.0.0/16".parse().expect("subnet"),
            own_subnet: Some("10.244.1.0/24".parse().expect("subnet")),
            external: ExternalIface {
                name: "eth0".into(),
                index: eth0.index,
                mtu: 1500,
                addr: ETH0_IP,
            },
            public_ip: ETH0_IP,
        },
        devices,
        owned: Default::default(),
        limits: StoreLimitsBuilder::new().build(),
        stats: Arc::new(PluginStats::default()),
    }
}

fn kernel() -> Arc<FakeKernel> {
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

fn denied<T: std::fmt::Debug>(r: wasmtime::Result<Result<T, Error>>) -> String {
    match r.expect("no trap") {
        Err(Error::Denied(m)) => m,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn allowed_requests_reach_the_kernel() {
    let k = kernel();
    let mut s = state(k.clone(), DeviceRegistry::default(), "vxlan");
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
    // A route covering the node's own subnet, even on its own device.
    assert!(
        denied(routes::Host::replace(
            &mut s,
            route((ip(10, 244, 0, 0), 16), None, link.index)
        ))
        .contains("own subnet")
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
    assert_eq!(counts.get("routes"), Some(&7));
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
