//! The component's exports: the control plane ([`Control`], a [`Backend`]) and the
//! batch data path ([`Path`], a [`Datapath`]), over the SDK's world
//! `overlay-datapath-backend`.

use twill_plugin_sdk::datapath::{self, Action, BatchOut, Datapath, Drops, Endpoint, OutPacket};
use twill_plugin_sdk::host::{addresses, links, log, routes};
use twill_plugin_sdk::{
    Backend, Error, Info, LeaseEvent, Node, Registration, Subnet, export_datapath_backend,
};

use crate::packet::{self, Drop, Node as DpNode, Peers, Prefix, Verdict};
use crate::{DEVICE, OVERHEAD, port_from_config};

fn prefix(s: Subnet) -> Prefix {
    Prefix {
        addr: s.addr,
        len: s.prefix,
    }
}

fn dotted(ip: u32) -> String {
    std::net::Ipv4Addr::from(ip).to_string()
}

/// Control-plane state: the TUN device and the node.
struct Control {
    tun: u32,
    network: Subnet,
    port: u16,
}

impl Backend for Control {
    fn describe() -> Info {
        Info {
            name: "udp".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_hint: "Port (default 8285)".into(),
        }
    }

    fn init(
        config: &str,
        node: &Node,
        _previous: Option<&str>,
    ) -> Result<(Self, Registration), Error> {
        let port = port_from_config(config).map_err(Error::Invalid)?;
        let mtu = node
            .iface
            .mtu
            .checked_sub(OVERHEAD)
            .filter(|m| *m >= 68)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "interface MTU {} leaves no room for udp",
                    node.iface.mtu
                ))
            })?;
        let tun = datapath::host::open_tun(DEVICE)?;
        if tun.mtu != mtu {
            links::set_mtu(tun.index, mtu)?;
        }
        datapath::host::bind_udp(port)?;
        log::write(
            log::Level::Info,
            &format!("udp: {DEVICE} (#{}) MTU {mtu}, port {port}", tun.index),
        );
        let control = Control {
            tun: tun.index,
            network: node.network,
            port,
        };
        let registration = Registration {
            // flannel's udp backend publishes no BackendType.
            backend_type: String::new(),
            backend_data: String::new(),
            mtu,
        };
        Ok((control, registration))
    }

    fn start(&mut self, own: Subnet) -> Result<(), Error> {
        addresses::ensure(self.tun, own.addr)?;
        links::set_up(self.tun)?;
        routes::replace(routes::Route {
            dst: self.network,
            gateway: None,
            dev: self.tun,
            onlink: false,
        })
    }

    fn on_lease(&mut self, event: &LeaseEvent) -> Result<String, Error> {
        Ok(match event {
            LeaseEvent::Added(l) => format!("udp to {}:{}", dotted(l.public_ip), self.port),
            LeaseEvent::Removed(_) => "removed".into(),
        })
    }
}

/// Data-path state of one instance.
struct Path {
    node: DpNode,
    port: u16,
    peers: Peers,
}

/// Add a verdict's counters and output descriptor.
fn record(
    verdict: Verdict,
    offset: u32,
    len: u32,
    port: u16,
    packets: &mut Vec<OutPacket>,
    drops: &mut Drops,
) {
    let action = match verdict {
        Verdict::ToPeer(ip) => Action::ToPeer(Endpoint { ip, port }),
        Verdict::ToTun => Action::ToTun,
        Verdict::Drop(reason) => {
            let counter = match reason {
                Drop::UnknownPeer => &mut drops.unknown_peer,
                Drop::SpoofedSource => &mut drops.spoofed_source,
                Drop::NoRoute => &mut drops.no_route,
                Drop::TtlExpired => &mut drops.ttl_expired,
                Drop::Malformed => &mut drops.malformed,
            };
            *counter += 1;
            return;
        }
    };
    packets.push(OutPacket {
        offset,
        len,
        action,
    });
}

/// The packet's bytes if its descriptor lies inside the arena.
fn bounds(p: &datapath::Packet, arena_len: usize) -> Option<(usize, usize)> {
    let start = p.offset as usize;
    let end = start.checked_add(p.len as usize)?;
    (end <= arena_len).then_some((start, end))
}

impl Datapath for Path {
    fn attach(config: &str, node: &Node, own: Subnet) -> Result<Self, Error> {
        let port = port_from_config(config).map_err(Error::Invalid)?;
        Ok(Path {
            node: DpNode {
                network: prefix(node.network),
                own: prefix(own),
            },
            port,
            peers: Peers::default(),
        })
    }

    fn update(&mut self, events: Vec<LeaseEvent>) {
        for e in events {
            match e {
                LeaseEvent::Added(l) => self.peers.insert(prefix(l.subnet), l.public_ip),
                LeaseEvent::Removed(l) => self.peers.remove(prefix(l.subnet)),
            }
        }
    }

    fn encap(&mut self, mut arena: Vec<u8>, packets: Vec<datapath::Packet>) -> BatchOut {
        let mut out = Vec::with_capacity(packets.len());
        let mut drops = datapath::no_drops();
        let input_end = arena.len();
        for d in &packets {
            let Some((start, end)) = bounds(d, input_end) else {
                drops.malformed += 1;
                continue;
            };
            let verdict = packet::encap_verdict(&mut arena[start..end], &self.node, &self.peers);
            if verdict == Verdict::Drop(Drop::NoRoute)
                && packet::wants_unreachable(&arena[start..end], &self.node)
            {
                // Copy the quoted part out first: the arena grows under it.
                let mut quoted = [0u8; 68];
                let n = (end - start).min(quoted.len());
                quoted[..n].copy_from_slice(&arena[start..start + n]);
                let at = arena.len();
                // From the network's own address: the node's flannel0 address would
                // be a local source, which the kernel drops as martian on input.
                let from = self.node.network.addr;
                let len = packet::push_unreachable(&mut arena, &quoted[..n], from);
                out.push(OutPacket {
                    offset: at as u32,
                    len: len as u32,
                    action: Action::ToTun,
                });
            }
            record(verdict, d.offset, d.len, self.port, &mut out, &mut drops);
        }
        BatchOut {
            arena,
            packets: out,
            drops,
        }
    }

    fn decap(&mut self, mut arena: Vec<u8>, packets: Vec<datapath::Packet>) -> BatchOut {
        let mut out = Vec::with_capacity(packets.len());
        let mut drops = datapath::no_drops();
        for d in &packets {
            let Some((start, end)) = bounds(d, arena.len()) else {
                drops.malformed += 1;
                continue;
            };
            let verdict =
                packet::decap_verdict(&mut arena[start..end], d.peer, &self.node, &self.peers);
            record(verdict, d.offset, d.len, self.port, &mut out, &mut drops);
        }
        BatchOut {
            arena,
            packets: out,
            drops,
        }
    }
}

export_datapath_backend!(Control, Path);
