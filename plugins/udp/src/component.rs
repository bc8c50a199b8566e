//! The component's exports: the control plane ([`Control`], a [`Backend`]) and the
//! batch data path ([`Path`], a [`Datapath`]), over the SDK's world
//! `overlay-datapath-backend`.

use twill_plugin_sdk::datapath::{
    self, Action, BatchOut, Datapath, Drops, Endpoint, Fate, Head, HeadsOut, OutPacket,
};
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

/// A verdict's action, or `None` with its drop counted.
fn action(verdict: Verdict, port: u16, drops: &mut Drops) -> Option<Action> {
    match verdict {
        Verdict::ToPeer(ip) => Some(Action::ToPeer(Endpoint { ip, port })),
        Verdict::ToTun => Some(Action::ToTun),
        Verdict::Drop(reason) => {
            let counter = match reason {
                Drop::UnknownPeer => &mut drops.unknown_peer,
                Drop::SpoofedSource => &mut drops.spoofed_source,
                Drop::NoRoute => &mut drops.no_route,
                Drop::TtlExpired => &mut drops.ttl_expired,
                Drop::Malformed => &mut drops.malformed,
            };
            *counter += 1;
            None
        }
    }
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
    if let Some(action) = action(verdict, port, drops) {
        packets.push(OutPacket {
            offset,
            len,
            action,
        });
    }
}

/// A verdict as a head's fate, its drop counted.
fn fate(verdict: Verdict, port: u16, drops: &mut Drops) -> Fate {
    match action(verdict, port, drops) {
        Some(Action::ToPeer(ep)) => Fate::ToPeer(ep),
        Some(Action::ToTun) => Fate::ToTun,
        None => Fate::Dropped,
    }
}

/// An ICMP net-unreachable for the packet starting with `head`, appended to `arena`
/// (from the network's own address: the node's flannel0 address would be a local
/// source, which the kernel drops as martian on input); its descriptor.
fn unreachable(arena: &mut Vec<u8>, head: &[u8], network: u32) -> OutPacket {
    let mut quoted = [0u8; 68];
    let n = head.len().min(quoted.len());
    quoted[..n].copy_from_slice(&head[..n]);
    let at = arena.len();
    let len = packet::push_unreachable(arena, &quoted[..n], network);
    OutPacket {
        offset: at as u32,
        len: len as u32,
        action: Action::ToTun,
    }
}

/// The head's bytes if its descriptor lies inside the arena and within its packet.
fn head_bounds(h: &Head, arena_len: usize) -> Option<(usize, usize)> {
    let start = h.offset as usize;
    let end = start.checked_add(h.len as usize)?;
    (end <= arena_len && h.len <= h.total).then_some((start, end))
}

/// One fate per head, in order: `decide` over each head's bytes; a head outside the
/// arena, or longer than its packet, is dropped as malformed.
fn fates_of(
    arena: &mut [u8],
    heads: &[Head],
    drops: &mut Drops,
    mut decide: impl FnMut(&mut [u8], &Head, &mut Drops) -> Fate,
) -> Vec<Fate> {
    let arena_len = arena.len();
    heads
        .iter()
        .map(|h| match head_bounds(h, arena_len) {
            Some((start, end)) => decide(&mut arena[start..end], h, drops),
            None => {
                drops.malformed += 1;
                Fate::Dropped
            }
        })
        .collect()
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
                // The quoted part is copied out first: the arena grows under it.
                let head = arena[start..end.min(start + 68)].to_vec();
                out.push(unreachable(&mut arena, &head, self.node.network.addr));
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

    fn encap_heads(&mut self, mut arena: Vec<u8>, heads: Vec<Head>) -> Option<HeadsOut> {
        let (mut extra, mut extra_packets) = (Vec::new(), Vec::new());
        let mut drops = datapath::no_drops();
        let fates = fates_of(&mut arena, &heads, &mut drops, |head, h, drops| {
            let whole = h.total as usize;
            let verdict = packet::encap_verdict_head(head, whole, &self.node, &self.peers);
            if verdict == Verdict::Drop(Drop::NoRoute)
                && packet::wants_unreachable_head(head, whole, &self.node)
            {
                extra_packets.push(unreachable(&mut extra, head, self.node.network.addr));
            }
            fate(verdict, self.port, drops)
        });
        Some(HeadsOut {
            arena,
            fates,
            extra,
            extra_packets,
            drops,
        })
    }

    fn decap_heads(&mut self, mut arena: Vec<u8>, heads: Vec<Head>) -> Option<HeadsOut> {
        let mut drops = datapath::no_drops();
        let fates = fates_of(&mut arena, &heads, &mut drops, |head, h, drops| {
            let verdict =
                packet::decap_verdict_head(head, h.total as usize, h.peer, &self.node, &self.peers);
            fate(verdict, self.port, drops)
        });
        Some(HeadsOut {
            arena,
            fates,
            extra: Vec::new(),
            extra_packets: Vec::new(),
            drops,
        })
    }
}

export_datapath_backend!(Control, Path);
