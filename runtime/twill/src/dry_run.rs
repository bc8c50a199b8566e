//! A backend plugin run against the recording in-memory kernel (`twill_net::fake`)
//! instead of the node's: nothing on this machine changes. `twill plugin test` prints
//! every kernel change the plugin asks for through a node's life (init, start, peers
//! joining and leaving, shutdown); `twill config check` lets the backend read its own
//! keys of a config (`init`) before the config reaches any node.
//!
//! The plugin host is the daemon's, with the same confinement: a request outside what
//! the node grants is refused here as on a node, and the plugin sees the refusal.

use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::Context;
use twill_core::Subnet;
use twill_core::lease::{Expiry, Lease, LeaseAttrs, LeaseEvent};
use twill_net::Kernel;
use twill_net::fake::{Call, FakeKernel};
use twill_plugin_host::{
    Backend, ExternalIface, Grant, Limits, NodeInfo, Plugin, PluginHost, Registration,
};

/// The node the plugin runs for: eth0 at 192.168.0.10/24, MTU 1500, default route via
/// 192.168.0.1.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 10);
const NODE_MTU: u32 = 1500;

/// A plugin host on a fresh recording kernel.
pub struct Bench {
    pub kernel: Arc<FakeKernel>,
    pub host: PluginHost,
    external: ExternalIface,
}

impl Bench {
    pub fn new() -> anyhow::Result<Bench> {
        let kernel = Arc::new(
            FakeKernel::new()
                .with_link("eth0", NODE_MTU, NODE_IP, 24)
                .with_route(twill_net::Route {
                    dst: "0.0.0.0/0".parse().context("default route")?,
                    gateway: Some(Ipv4Addr::new(192, 168, 0, 1)),
                    oif: None,
                    onlink: false,
                }),
        );
        let eth0 = kernel
            .link_by_name("eth0")
            .context("the fake kernel")?
            .context("eth0")?;
        let host =
            PluginHost::new(kernel.clone(), Limits::default()).context("start the plugin host")?;
        Ok(Bench {
            external: ExternalIface::of(&eth0, NODE_IP),
            kernel,
            host,
        })
    }

    /// The plugin's backend instance for a node of `network` with the config's ports.
    pub fn spawn(
        &self,
        plugin: &Plugin,
        network: Subnet,
        port: Option<u16>,
    ) -> anyhow::Result<Backend> {
        let grant = Grant {
            network,
            own_subnet: None,
            external: self.external.clone(),
            public_ip: NODE_IP,
            ports: port.map_or_else(|| twill_plugin_host::DEFAULT_PORTS.to_vec(), |p| vec![p]),
        };
        self.host
            .spawn(plugin, grant)
            .with_context(|| format!("instantiate {}", plugin.name))
    }

    /// `init` with the `Backend` object `config`, checked as the daemon checks it.
    pub async fn init(&self, backend: &Backend, config: &str) -> anyhow::Result<Registration> {
        let info = NodeInfo {
            config: config.to_owned(),
            previous_data: None,
        };
        let registration = backend.init(info).await.context("init")?;
        twill_node::check_registered_mtu(backend.plugin(), registration.mtu, NODE_MTU)?;
        LeaseAttrs::new(
            NODE_IP,
            &registration.backend_type,
            registration.backend_data.as_deref(),
        )
        .context("init registered BackendData that is no JSON object")?;
        Ok(registration)
    }

    /// The kernel changes made since the last call.
    pub fn calls(&self) -> Vec<Call> {
        self.kernel.take_calls()
    }
}

/// `n` sample peers of `network` (subnets .2, .3, … of `subnet_len`) at 192.168.0.11,
/// .12, …, publishing what this node registered, with a MAC of their own where the
/// BackendData has a `VtepMAC`.
pub fn sample_peers(
    network: Subnet,
    subnet_len: u8,
    registration: &Registration,
    n: u8,
) -> anyhow::Result<Vec<Lease>> {
    let size = 1u32 << (32 - u32::from(subnet_len));
    (0..n)
        .map(|i| {
            let subnet = Subnet::new(
                Ipv4Addr::from(u32::from(network.addr()) + size * (u32::from(i) + 2)),
                subnet_len,
            )
            .context("sample peer subnet")?;
            let data =
                registration.backend_data.as_deref().map(|text| {
                    match serde_json::from_str::<serde_json::Value>(text) {
                        Ok(serde_json::Value::Object(mut obj)) if obj.contains_key("VtepMAC") => {
                            obj.insert(
                                "VtepMAC".into(),
                                format!("0e:00:00:00:00:{:02x}", i + 2).into(),
                            );
                            serde_json::Value::Object(obj).to_string()
                        }
                        _ => text.to_owned(),
                    }
                });
            let attrs = LeaseAttrs::new(
                Ipv4Addr::new(192, 168, 0, 11 + i),
                &registration.backend_type,
                data.as_deref(),
            )
            .context("sample peer BackendData")?;
            Ok(Lease {
                subnet,
                attrs,
                expires: Expiry::Never,
            })
        })
        .collect()
}

/// The lease events of `peers` joining.
pub fn joined(peers: &[Lease]) -> Vec<LeaseEvent> {
    peers.iter().cloned().map(LeaseEvent::Added).collect()
}

/// One kernel change as a line an operator reads (`ip`-like).
pub fn describe_call(call: &Call) -> String {
    let via = |gw: Option<Ipv4Addr>| gw.map(|g| format!(" via {g}")).unwrap_or_default();
    let dev = |oif: Option<u32>| oif.map(|i| format!(" dev #{i}")).unwrap_or_default();
    match call {
        Call::CreateVxlan(v) => format!(
            "link add {} type vxlan id {} dstport {} local {} dev #{}{} address {}",
            v.name,
            v.vni,
            v.port,
            v.local,
            v.underlay,
            if v.learning { "" } else { " nolearning" },
            v.mac
        ),
        Call::CreateIpip(t) => format!(
            "link add {} type ipip local {} dev #{}",
            t.name, t.local, t.underlay
        ),
        Call::DeleteLink(i) => format!("link del #{i}"),
        Call::SetLinkUp(i) => format!("link set #{i} up"),
        Call::SetMtu { index, mtu } => format!("link set #{index} mtu {mtu}"),
        Call::AddAddr(a) => format!("addr add {}/{} dev #{}", a.addr, a.prefix, a.index),
        Call::DelAddr(a) => format!("addr del {}/{} dev #{}", a.addr, a.prefix, a.index),
        Call::ReplaceRoute(r) => format!(
            "route replace {}{}{}{}",
            r.dst,
            via(r.gateway),
            dev(r.oif),
            if r.onlink { " onlink" } else { "" }
        ),
        Call::DelRoute(r) => format!("route del {}{}{}", r.dst, via(r.gateway), dev(r.oif)),
        Call::ReplaceNeighbour { index, ip, mac } => {
            format!("neigh replace {ip} lladdr {mac} dev #{index}")
        }
        Call::DelNeighbour { index, ip } => format!("neigh del {ip} dev #{index}"),
        Call::ReplaceFdb { index, mac, dst } => {
            format!("fdb replace {mac} dst {dst} dev #{index}")
        }
        Call::DelFdb { index, mac, dst } => format!("fdb del {mac} dst {dst} dev #{index}"),
        Call::OpenTun(name) => format!("tun open {name}"),
        Call::BindUdp(addr) => format!("udp bind {addr}"),
    }
}
