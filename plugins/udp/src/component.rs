//! The component's exports: the control plane (`backend`) and the batch data path
//! (`datapath`), over the world `overlay-datapath-backend`.

use std::cell::RefCell;

use crate::packet::{self, Drop, Node as DpNode, Peers, Prefix, Verdict};
use crate::{DEVICE, OVERHEAD, port_from_config};

wit_bindgen::generate!({
    world: "overlay-datapath-backend",
    path: "../../wit",
});

use exports::twill::backend::backend::{Guest as BackendGuest, Info, PeerOutcome, Registration};
use exports::twill::backend::datapath::{
    Action, BatchOut, Drops, Endpoint, Guest as DatapathGuest, OutPacket, Packet,
};
use twill::backend::types::{Error, LeaseEvent, Node, Subnet};
use twill::backend::{addresses, datapath_host, links, log, routes};

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

/// Data-path state of one instance.
struct Path {
    node: DpNode,
    port: u16,
    peers: Peers,
}

thread_local! {
    static CONTROL: RefCell<Option<Control>> = const { RefCell::new(None) };
    static PATH: RefCell<Option<Path>> = const { RefCell::new(None) };
}

struct Udp;

impl BackendGuest for Udp {
    fn describe() -> Info {
        Info {
            name: "udp".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_hint: "Port (default 8285)".into(),
        }
    }

    fn init(config: String, node: Node, _previous: Option<String>) -> Result<Registration, Error> {
        let port = port_from_config(&config).map_err(Error::Invalid)?;
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
        let tun = datapath_host::open_tun(DEVICE)?;
        if tun.mtu != mtu {
            links::set_mtu(tun.index, mtu)?;
        }
        datapath_host::bind_udp(port)?;
        log::write(
            log::Level::Info,
            &format!("udp: {DEVICE} (#{}) MTU {mtu}, port {port}", tun.index),
        );
        CONTROL.with(|c| {
            *c.borrow_mut() = Some(Control {
                tun: tun.index,
                network: node.network,
                port,
            })
        });
        Ok(Registration {
            // flannel's udp backend publishes no BackendType.
            backend_type: String::new(),
            backend_data: String::new(),
            mtu,
        })
    }

    fn start(own: Subnet) -> Result<(), Error> {
        CONTROL.with(|c| {
            let c = c.borrow();
            let c = c
                .as_ref()
                .ok_or_else(|| Error::Invalid("start before init".into()))?;
            addresses::ensure(c.tun, own.addr)?;
            links::set_up(c.tun)?;
            routes::replace(routes::Route {
                dst: c.network,
                gateway: None,
                dev: c.tun,
                onlink: false,
            })
        })
    }

    fn on_leases(events: Vec<LeaseEvent>) -> Vec<PeerOutcome> {
        let port = CONTROL.with(|c| c.borrow().as_ref().map(|c| c.port));
        events
            .into_iter()
            .map(|e| match e {
                LeaseEvent::Added(l) => PeerOutcome {
                    subnet: l.subnet,
                    outcome: match port {
                        Some(port) => Ok(format!("udp to {}:{port}", dotted(l.public_ip))),
                        None => Err(Error::Invalid("on-leases before init".into())),
                    },
                },
                LeaseEvent::Removed(l) => PeerOutcome {
                    subnet: l.subnet,
                    outcome: Ok("removed".into()),
                },
            })
            .collect()
    }

    fn shutdown() {}
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

fn no_drops() -> Drops {
    Drops {
        unknown_peer: 0,
        spoofed_source: 0,
        no_route: 0,
        ttl_expired: 0,
        malformed: 0,
    }
}

/// The packet's bytes if its descriptor lies inside the arena.
fn bounds(p: &Packet, arena_len: usize) -> Option<(usize, usize)> {
    let start = p.offset as usize;
    let end = start.checked_add(p.len as usize)?;
    (end <= arena_len).then_some((start, end))
}

impl DatapathGuest for Udp {
    fn attach(config: String, node: Node, own: Subnet) -> Result<(), Error> {
        let port = port_from_config(&config).map_err(Error::Invalid)?;
        PATH.with(|p| {
            *p.borrow_mut() = Some(Path {
                node: DpNode {
                    network: prefix(node.network),
                    own: prefix(own),
                },
                port,
                peers: Peers::default(),
            })
        });
        Ok(())
    }

    fn update(events: Vec<LeaseEvent>) {
        PATH.with(|p| {
            if let Some(path) = p.borrow_mut().as_mut() {
                for e in events {
                    match e {
                        LeaseEvent::Added(l) => path.peers.insert(prefix(l.subnet), l.public_ip),
                        LeaseEvent::Removed(l) => path.peers.remove(prefix(l.subnet)),
                    }
                }
            }
        });
    }

    fn encap(mut arena: Vec<u8>, packets: Vec<Packet>) -> BatchOut {
        let mut out = Vec::with_capacity(packets.len());
        let mut drops = no_drops();
        PATH.with(|p| {
            let p = p.borrow();
            let Some(path) = p.as_ref() else {
                drops.no_route = packets.len() as u32;
                return;
            };
            let input_end = arena.len();
            for d in &packets {
                let Some((start, end)) = bounds(d, input_end) else {
                    drops.malformed += 1;
                    continue;
                };
                let verdict =
                    packet::encap_verdict(&mut arena[start..end], &path.node, &path.peers);
                if verdict == Verdict::Drop(Drop::NoRoute)
                    && packet::wants_unreachable(&arena[start..end], &path.node)
                {
                    // Copy the quoted part out first: the arena grows under it.
                    let mut quoted = [0u8; 68];
                    let n = (end - start).min(quoted.len());
                    quoted[..n].copy_from_slice(&arena[start..start + n]);
                    let at = arena.len();
                    // From the network's own address: the node's flannel0 address would
                    // be a local source, which the kernel drops as martian on input.
                    let from = path.node.network.addr;
                    let len = packet::push_unreachable(&mut arena, &quoted[..n], from);
                    out.push(OutPacket {
                        offset: at as u32,
                        len: len as u32,
                        action: Action::ToTun,
                    });
                }
                record(verdict, d.offset, d.len, path.port, &mut out, &mut drops);
            }
        });
        BatchOut {
            arena,
            packets: out,
            drops,
        }
    }

    fn decap(mut arena: Vec<u8>, packets: Vec<Packet>) -> BatchOut {
        let mut out = Vec::with_capacity(packets.len());
        let mut drops = no_drops();
        PATH.with(|p| {
            let p = p.borrow();
            let Some(path) = p.as_ref() else {
                drops.unknown_peer = packets.len() as u32;
                return;
            };
            for d in &packets {
                let Some((start, end)) = bounds(d, arena.len()) else {
                    drops.malformed += 1;
                    continue;
                };
                let verdict =
                    packet::decap_verdict(&mut arena[start..end], d.peer, &path.node, &path.peers);
                record(verdict, d.offset, d.len, path.port, &mut out, &mut drops);
            }
        });
        BatchOut {
            arena,
            packets: out,
            drops,
        }
    }
}

export!(Udp);
