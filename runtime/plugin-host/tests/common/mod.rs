//! Shared by the layer-2 tests: a fake kernel with eth0 (192.168.0.1/24, MTU 1500), a
//! plugin host on it, a built-in plugin loaded, and a grant for the node.

use std::net::Ipv4Addr;
use std::sync::Arc;

use twill_net::Kernel;
use twill_net::fake::FakeKernel;
use twill_plugin_host::{ExternalIface, Grant, Limits, Plugin, PluginHost};

pub const ETH0_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

/// The fake kernel, the host, the built-in plugin of `plugins/<dir>` and a grant for
/// 10.244.0.0/16 on eth0.
pub fn setup(dir: &str) -> (Arc<FakeKernel>, PluginHost, Plugin, Grant) {
    let kernel = Arc::new(FakeKernel::new().with_link("eth0", 1500, ETH0_IP, 24));
    let host = PluginHost::new(kernel.clone(), Limits::default()).expect("engine");
    let bytes = twill_builtin::component(dir).unwrap_or_else(|| panic!("{dir} is built in"));
    let plugin = host
        .load(&format!("built-in:{dir}"), bytes)
        .unwrap_or_else(|e| panic!("{dir} loads: {e}"));
    let eth0 = kernel.link_by_name("eth0").expect("fake").expect("eth0");
    let grant = Grant {
        network: "10.244.0.0/16".parse().expect("subnet"),
        own_subnet: None,
        external: ExternalIface::of(&eth0, ETH0_IP),
        public_ip: ETH0_IP,
        ports: twill_plugin_host::DEFAULT_PORTS.to_vec(),
    };
    (kernel, host, plugin, grant)
}
