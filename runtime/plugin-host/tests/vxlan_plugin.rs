//! Layer 2: the real vxlan component, built from plugins/vxlan and embedded by
//! twill-builtin, driven through the plugin host against the recording fake kernel.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::SystemTime;

use twill_core::MacAddr;
use twill_core::lease::{Expiry, Lease, LeaseAttrs, LeaseEvent};
use twill_net::fake::{Call, FakeKernel};
use twill_net::{Kernel, Route};
use twill_plugin_host::{Grant, NodeInfo, Plugin, PluginHost};

mod common;

use common::ETH0_IP;

fn setup() -> (Arc<FakeKernel>, PluginHost, Plugin, Grant) {
    common::setup("vxlan")
}

fn peer(subnet: &str, ip: [u8; 4], mac: &str) -> Lease {
    Lease {
        subnet: subnet.parse().expect("subnet"),
        attrs: LeaseAttrs::new(
            Ipv4Addr::from(ip),
            "vxlan",
            Some(&format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)),
        )
        .expect("attrs"),
        expires: Expiry::At(SystemTime::now()),
    }
}

#[tokio::test]
async fn vxlan_programs_flannels_objects_in_flannels_order() {
    let (kernel, host, plugin, grant) = setup();
    assert_eq!(plugin.name, "vxlan");
    for cap in ["fdb", "links", "log", "neighbours", "routes"] {
        assert!(
            plugin.capabilities.iter().any(|c| c == cap),
            "imports {cap}: {:?}",
            plugin.capabilities
        );
    }
    let backend = host.spawn(&plugin, grant).expect("spawn");
    let reg = backend
        .init(NodeInfo::fresh(r#"{"Type":"vxlan"}"#))
        .await
        .expect("init");
    assert_eq!(reg.backend_type, "vxlan");
    assert_eq!(reg.mtu, 1450);
    let link = kernel
        .link_by_name("flannel.1")
        .expect("fake")
        .expect("flannel.1 created");
    let mac = link.mac.expect("mac");
    assert_eq!(
        reg.backend_data.as_deref(),
        Some(format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#).as_str())
    );
    let vx = link.vxlan.expect("vxlan attrs");
    assert_eq!(
        (vx.vni, vx.port, vx.local, vx.learning),
        (1, 8472, Some(ETH0_IP), false)
    );
    assert_eq!(link.mtu, 1450);

    backend
        .start("10.244.1.0/24".parse().expect("subnet"))
        .await
        .expect("start");
    assert!(kernel.addrs().iter().any(|a| a.index == link.index
        && a.addr == Ipv4Addr::new(10, 244, 1, 0)
        && a.prefix == 32));
    assert!(
        kernel
            .link_by_index(link.index)
            .expect("fake")
            .expect("link")
            .up
    );

    kernel.take_calls();
    let p = peer("10.244.2.0/24", [192, 168, 0, 2], "02:aa:00:00:00:02");
    let peer_mac: MacAddr = "02:aa:00:00:00:02".parse().expect("mac");
    let gw = Ipv4Addr::new(10, 244, 2, 0);
    let outcomes = backend
        .on_leases(vec![LeaseEvent::Added(p.clone())])
        .await
        .expect("add");
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].subnet, Some(p.subnet));
    assert_eq!(
        outcomes[0].result.as_deref(),
        Ok("vxlan via 10.244.2.0 onlink, VTEP 02:aa:00:00:00:02 at 192.168.0.2")
    );
    let route = Route {
        dst: p.subnet,
        gateway: Some(gw),
        oif: Some(link.index),
        onlink: true,
    };
    assert_eq!(
        kernel.take_calls(),
        vec![
            Call::ReplaceNeighbour {
                index: link.index,
                ip: gw,
                mac: peer_mac
            },
            Call::ReplaceFdb {
                index: link.index,
                mac: peer_mac,
                dst: Ipv4Addr::new(192, 168, 0, 2)
            },
            Call::ReplaceRoute(route),
        ]
    );
    // Replaying is idempotent.
    backend
        .on_leases(vec![LeaseEvent::Added(p.clone())])
        .await
        .expect("replay");
    assert_eq!(
        kernel.routes().iter().filter(|r| r.dst == p.subnet).count(),
        1
    );

    let outcomes = backend
        .on_leases(vec![LeaseEvent::Removed(p.clone())])
        .await
        .expect("remove");
    assert_eq!(outcomes[0].result.as_deref(), Ok("removed"));
    assert!(kernel.routes().iter().all(|r| r.dst != p.subnet));
    assert!(kernel.neighbours().is_empty());
    assert!(kernel.fdb().is_empty());

    // A peer of another backend type, or with bad data, is an error for that peer
    // alone; the good peer in the same batch is programmed.
    let mut hostgw = p.clone();
    hostgw.attrs.backend_type = "host-gw".into();
    let mut broken = peer("10.244.3.0/24", [192, 168, 0, 3], "02:aa:00:00:00:03");
    broken.attrs.backend_data = Some(r#"{"VNI":1}"#.into());
    let good = peer("10.244.4.0/24", [192, 168, 0, 4], "02:aa:00:00:00:04");
    let outcomes = backend
        .on_leases(vec![
            LeaseEvent::Added(hostgw),
            LeaseEvent::Added(broken),
            LeaseEvent::Added(good.clone()),
        ])
        .await
        .expect("one call");
    assert_eq!(outcomes.len(), 3);
    let e0 = outcomes[0].result.as_ref().expect_err("other type");
    assert!(e0.message.contains("not vxlan"), "{e0}");
    let e1 = outcomes[1].result.as_ref().expect_err("bad data");
    assert!(e1.message.contains("10.244.3.0/24"), "{e1}");
    assert!(outcomes[2].result.is_ok());
    assert!(kernel.routes().iter().any(|r| r.dst == good.subnet));
    backend.shutdown().await.expect("shutdown");
    assert!(
        kernel.link_by_name("flannel.1").expect("fake").is_some(),
        "shutdown leaves the device"
    );
}

#[tokio::test]
async fn restart_keeps_the_vtep_mac_and_adopts_the_device() {
    let (kernel, host, plugin, grant) = setup();
    let first = host.spawn(&plugin, grant.clone()).expect("spawn");
    let reg1 = first.init(NodeInfo::fresh("{}")).await.expect("init");
    first.shutdown().await.expect("shutdown");
    kernel.take_calls();

    let second = host.spawn(&plugin, grant).expect("spawn again");
    let reg2 = second
        .init(NodeInfo {
            config: "{}".into(),
            previous_data: reg1.backend_data.clone(),
        })
        .await
        .expect("init again");
    assert_eq!(reg1.backend_data, reg2.backend_data, "same VtepMAC");
    assert!(
        !kernel
            .calls()
            .iter()
            .any(|c| matches!(c, Call::CreateVxlan(_) | Call::DeleteLink(_))),
        "the existing device is adopted, not recreated: {:?}",
        kernel.calls()
    );
}

#[tokio::test]
async fn bad_backend_config_is_a_clear_error() {
    let (_kernel, host, plugin, grant) = setup();
    let backend = host.spawn(&plugin, grant).expect("spawn");
    let err = backend
        .init(NodeInfo::fresh(r#"{"Type":"vxlan","VNI":"one"}"#))
        .await
        .expect_err("invalid");
    assert!(err.to_string().contains("Backend.VNI"), "{err}");
}

#[test]
fn a_file_that_is_not_a_component_is_refused_with_its_name() {
    let (_kernel, host, _plugin, _grant) = setup();
    let err = host
        .load("/plugins/junk.wasm", b"not wasm at all")
        .expect_err("junk");
    assert!(
        err.to_string()
            .starts_with("/plugins/junk.wasm: not a loadable WebAssembly component"),
        "{err}"
    );
}
