//! An out-of-tree plugin: `examples/ipip` (flannel's ipip backend, a crate of its own
//! outside twill's workspace that depends on the SDK alone) is built with cargo as its
//! author would build it, and the resulting `.wasm` is loaded by the plugin host and
//! driven against the recording fake kernel: the kernel objects it asks for must be
//! flannel's.
//!
//! Needs cargo and the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`); fails
//! with a message saying so otherwise. No root, no kernel state.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use twill_core::Subnet;
use twill_core::lease::{Expiry, Lease, LeaseAttrs, LeaseEvent};
use twill_e2e::build_plugin_crate;
use twill_net::KernelOp as Op;
use twill_net::fake::{Call, FakeKernel};
use twill_net::{IpipInfo, IpipSpec, Kernel, Route};
use twill_plugin_host::{
    Backend, ErrorKind, ExternalIface, Grant, Limits, NodeInfo, Plugin, PluginHost,
};

const ETH0_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

/// `examples/ipip` in this repository.
fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/ipip")
        .canonicalize()
        .expect("examples/ipip exists")
}

/// Build the example once per test process (as its author would, see
/// [`build_plugin_crate`]) and return the component's bytes.
fn example_component() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let wasm = build_plugin_crate(&example_dir());
        std::fs::read(&wasm).unwrap_or_else(|e| {
            panic!(
                "the example built but {} cannot be read: {e}",
                wasm.display()
            )
        })
    })
}

/// A fake kernel with eth0 (`mtu`, 192.168.0.1/24), its connected route and a default
/// route via 192.168.0.254; the host, the loaded example, and a grant for eth0.
fn setup(mtu: u32) -> (Arc<FakeKernel>, PluginHost, Plugin, Grant) {
    let bytes = example_component();
    let kernel = Arc::new(FakeKernel::new().with_link("eth0", mtu, ETH0_IP, 24));
    let eth0 = kernel.link_by_name("eth0").expect("fake").expect("eth0");
    let kernel = Arc::new(
        Arc::into_inner(kernel)
            .expect("sole owner")
            .with_route(Route {
                dst: subnet("192.168.0.0/24"),
                gateway: None,
                oif: Some(eth0.index),
                onlink: false,
            })
            .with_route(Route {
                dst: subnet("0.0.0.0/0"),
                gateway: Some(Ipv4Addr::new(192, 168, 0, 254)),
                oif: Some(eth0.index),
                onlink: false,
            }),
    );
    let host = PluginHost::new(kernel.clone(), Limits::default()).expect("engine");
    let plugin = host
        .load("examples/ipip", bytes)
        .unwrap_or_else(|e| panic!("the example component does not load: {e}"));
    let grant = Grant {
        network: subnet("10.244.0.0/16"),
        own_subnet: None,
        external: ExternalIface {
            mtu,
            ..ExternalIface::of(&eth0, ETH0_IP)
        },
        public_ip: ETH0_IP,
        ports: twill_plugin_host::DEFAULT_PORTS.to_vec(),
    };
    (kernel, host, plugin, grant)
}

fn subnet(s: &str) -> Subnet {
    s.parse().expect("subnet")
}

fn lease(subnet_text: &str, public_ip: [u8; 4], backend_type: &str) -> Lease {
    Lease {
        subnet: subnet(subnet_text),
        attrs: LeaseAttrs::new(Ipv4Addr::from(public_ip), backend_type, None).expect("attrs"),
        expires: Expiry::At(SystemTime::now()),
    }
}

async fn init_and_start(backend: &Backend, config: &str) -> twill_plugin_host::Registration {
    let reg = backend.init(NodeInfo::fresh(config)).await.expect("init");
    backend.start(subnet("10.244.1.0/24")).await.expect("start");
    reg
}

fn tunnel_route(dst: &str, via: [u8; 4], dev: u32) -> Route {
    Route {
        dst: subnet(dst),
        gateway: Some(Ipv4Addr::from(via)),
        oif: Some(dev),
        onlink: true,
    }
}

#[tokio::test]
async fn the_out_of_tree_ipip_plugin_programs_flannels_objects() {
    let (kernel, host, plugin, grant) = setup(1500);
    assert_eq!(
        (plugin.name.as_str(), plugin.version.as_str()),
        ("ipip", "0.1.0")
    );
    assert_eq!(plugin.source, "examples/ipip");
    for cap in ["addresses", "links", "routes"] {
        assert!(
            plugin.capabilities.iter().any(|c| c == cap),
            "imports {cap}: {:?}",
            plugin.capabilities
        );
    }
    for cap in ["fdb", "neighbours"] {
        assert!(
            !plugin.capabilities.iter().any(|c| c == cap),
            "does not import {cap}: {:?}",
            plugin.capabilities
        );
    }
    let eth0 = grant.external.index;
    let backend = host.spawn(&plugin, grant).expect("spawn");

    // init: the device, and what the lease publishes.
    let reg = backend
        .init(NodeInfo::fresh(r#"{"Type":"ipip"}"#))
        .await
        .expect("init");
    assert_eq!(reg.backend_type, "ipip");
    assert_eq!(
        reg.backend_data, None,
        "flannel's ipip publishes no BackendData"
    );
    assert_eq!(
        reg.mtu, 1480,
        "interface MTU minus the 20-byte outer header"
    );
    let dev = kernel
        .link_by_name("flannel.ipip")
        .expect("fake")
        .expect("flannel.ipip created");
    assert_eq!(dev.kind.as_deref(), Some("ipip"));
    assert_eq!(dev.mtu, 1480);
    assert_eq!(
        dev.ipip,
        Some(IpipInfo {
            local: Some(ETH0_IP),
            remote: None,
            underlay: Some(eth0),
        })
    );
    assert_eq!(
        kernel.take_calls(),
        vec![Call::CreateIpip(IpipSpec {
            name: "flannel.ipip".into(),
            local: ETH0_IP,
            underlay: eth0,
        })]
    );

    // start: <subnet>.0/32 on the device, up.
    backend.start(subnet("10.244.1.0/24")).await.expect("start");
    let addrs: Vec<(Ipv4Addr, u8)> = kernel
        .addrs()
        .iter()
        .filter(|a| a.index == dev.index)
        .map(|a| (a.addr, a.prefix))
        .collect();
    assert_eq!(addrs, vec![(Ipv4Addr::new(10, 244, 1, 0), 32)]);
    assert!(
        kernel
            .link_by_index(dev.index)
            .expect("fake")
            .expect("dev")
            .up
    );

    // Peers: one onlink route each via the peer's public IP through the tunnel; a
    // lease of another backend type is that peer's error alone.
    kernel.take_calls();
    let p2 = lease("10.244.2.0/24", [192, 168, 0, 2], "ipip");
    let p3 = lease("10.244.3.0/24", [10, 0, 5, 9], "ipip");
    let vx = lease("10.244.4.0/24", [192, 168, 0, 4], "vxlan");
    let outcomes = backend
        .on_leases(vec![
            LeaseEvent::Added(p2.clone()),
            LeaseEvent::Added(p3.clone()),
            LeaseEvent::Added(vx.clone()),
        ])
        .await
        .expect("on-leases");
    let results: Vec<_> = outcomes
        .iter()
        .map(|o| (o.subnet, o.result.clone().map_err(|e| e.kind)))
        .collect();
    assert_eq!(
        results,
        vec![
            (
                Some(p2.subnet),
                Ok("route via 192.168.0.2 dev flannel.ipip onlink".to_owned())
            ),
            (
                Some(p3.subnet),
                Ok("route via 10.0.5.9 dev flannel.ipip onlink".to_owned())
            ),
            (Some(vx.subnet), Err(ErrorKind::Unsupported)),
        ]
    );
    let r2 = tunnel_route("10.244.2.0/24", [192, 168, 0, 2], dev.index);
    let r3 = tunnel_route("10.244.3.0/24", [10, 0, 5, 9], dev.index);
    assert_eq!(
        kernel.take_calls(),
        vec![Call::ReplaceRoute(r2), Call::ReplaceRoute(r3)]
    );
    let overlay = |k: &FakeKernel| -> Vec<Route> {
        k.routes()
            .into_iter()
            .filter(|r| subnet("10.244.0.0/16").contains_subnet(&r.dst))
            .collect()
    };
    assert_eq!(overlay(&kernel), vec![r2, r3]);

    // The resync: init, start and every peer again change nothing; the device is kept.
    let again = init_and_start(&backend, r#"{"Type":"ipip"}"#).await;
    assert_eq!(again, reg);
    backend
        .on_leases(vec![
            LeaseEvent::Added(p2.clone()),
            LeaseEvent::Added(p3.clone()),
        ])
        .await
        .expect("replay");
    let replay = kernel.take_calls();
    assert!(
        replay
            .iter()
            .all(|c| matches!(c.op(), Op::ReplaceRoute | Op::SetLinkUp)),
        "a resync only re-asserts: {replay:?}"
    );
    assert_eq!(overlay(&kernel), vec![r2, r3]);
    assert_eq!(
        kernel
            .link_by_name("flannel.ipip")
            .expect("fake")
            .expect("kept")
            .index,
        dev.index
    );

    // Someone deletes a route: the resync puts it back.
    kernel.del_route(&r3).expect("delete by hand");
    backend
        .on_leases(vec![LeaseEvent::Added(p3.clone())])
        .await
        .expect("repair");
    assert_eq!(overlay(&kernel), vec![r2, r3]);
    kernel.take_calls();

    // A removed lease: its route goes, the other stays; a second removal is no error.
    for _ in 0..2 {
        let outcomes = backend
            .on_leases(vec![LeaseEvent::Removed(p2.clone())])
            .await
            .expect("remove");
        assert_eq!(outcomes[0].result.as_deref(), Ok("removed"));
    }
    assert_eq!(overlay(&kernel), vec![r3]);
    assert_eq!(kernel.take_calls()[0], Call::DelRoute(r2));

    // Shutdown leaves the kernel state for the next start.
    backend.shutdown().await.expect("shutdown");
    assert!(kernel.link_by_name("flannel.ipip").expect("fake").is_some());
    assert_eq!(overlay(&kernel), vec![r3]);
    assert!(kernel.take_calls().is_empty());
}

#[tokio::test]
async fn direct_routing_sends_on_link_peers_around_the_tunnel() {
    let (kernel, host, plugin, grant) = setup(9000);
    let eth0 = grant.external.index;
    let backend = host.spawn(&plugin, grant).expect("spawn");
    let reg = init_and_start(&backend, r#"{"type":"ipip","directrouting":true}"#).await;
    assert_eq!(reg.mtu, 8980);
    let dev = kernel
        .link_by_name("flannel.ipip")
        .expect("fake")
        .expect("created");
    assert_eq!(dev.mtu, 8980);

    // 192.168.0.2 is on eth0's segment; 10.0.5.9 is behind the default router.
    let near = lease("10.244.2.0/24", [192, 168, 0, 2], "ipip");
    let far = lease("10.244.3.0/24", [10, 0, 5, 9], "ipip");
    let outcomes = backend
        .on_leases(vec![
            LeaseEvent::Added(near.clone()),
            LeaseEvent::Added(far.clone()),
        ])
        .await
        .expect("add");
    let texts: Vec<_> = outcomes.iter().map(|o| o.result.clone()).collect();
    assert_eq!(
        texts,
        vec![
            Ok("direct route via 192.168.0.2 dev eth0 onlink".to_owned()),
            Ok("route via 10.0.5.9 dev flannel.ipip onlink".to_owned()),
        ]
    );
    let direct = tunnel_route("10.244.2.0/24", [192, 168, 0, 2], eth0);
    let tunnel = tunnel_route("10.244.3.0/24", [10, 0, 5, 9], dev.index);
    let routes = kernel.routes();
    assert!(routes.contains(&direct), "{routes:?}");
    assert!(routes.contains(&tunnel), "{routes:?}");

    backend
        .on_leases(vec![
            LeaseEvent::Removed(near.clone()),
            LeaseEvent::Removed(far.clone()),
        ])
        .await
        .expect("remove");
    let routes = kernel.routes();
    assert!(
        !routes
            .iter()
            .any(|r| r.dst == near.subnet || r.dst == far.subnet),
        "{routes:?}"
    );
}

#[tokio::test]
async fn bad_config_is_the_backends_error() {
    let (_kernel, host, plugin, grant) = setup(1500);
    let backend = host.spawn(&plugin, grant).expect("spawn");
    let err = backend
        .init(NodeInfo::fresh(r#"{"Type":"ipip","DirectRouting":"yes"}"#))
        .await
        .expect_err("invalid");
    assert!(err.to_string().contains("Backend.DirectRouting"), "{err}");
}

/// The example in a plugin directory on a three-node cluster of the real binary.
/// This machine's kernel (and CI's) is built without `CONFIG_NET_IPIP`, so the kernel
/// refuses the device there; on a kernel with ipip, run it with `--ignored`.
#[test]
#[ignore = "needs a kernel with CONFIG_NET_IPIP (the CI kernel has none): cargo test -p twill-e2e --test ipip -- --ignored"]
fn the_example_runs_a_three_node_cluster_from_a_plugin_directory() {
    use twill_e2e::Cluster;
    let wasm = build_plugin_crate(&example_dir());
    let mut c = Cluster::new(3);
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"ipip"}}"#);
    let dir = c.dir().join("plugins");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    std::fs::copy(&wasm, dir.join("ipip.wasm")).expect("copy the example");
    let dir = dir.display().to_string();
    for k in 1..=3 {
        c.start_twill_with(k, &["--iface", "eth0", "--plugin-dir", &dir]);
    }
    c.wire_pods();
    c.assert_full_mesh(std::time::Duration::from_secs(30));
    for (k, node) in c.nodes.iter().enumerate() {
        let link = node.exec(&["ip", "-d", "link", "show", "flannel.ipip"]);
        assert!(link.contains("mtu 1480") && link.contains("ipip"), "{link}");
        for (j, peer) in c.nodes.iter().enumerate().filter(|(j, _)| *j != k) {
            let r = node.exec(&["ip", "route", "show", &peer.subnet()]);
            assert!(
                r.contains(&format!("via {} dev flannel.ipip", peer.ip())) && r.contains("onlink"),
                "node {} route to node {}: {r}",
                k + 1,
                j + 1
            );
        }
    }
    for lease in c.leases().values() {
        assert!(lease.contains(r#""BackendType":"ipip""#), "{lease}");
    }
}
