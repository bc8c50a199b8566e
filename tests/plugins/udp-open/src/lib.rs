//! `udp-open`: flannel0 and the udp port as the built-in udp backend opens them, and a
//! data path that passes every received datagram into flannel0 and sends nothing. With
//! `Backend.Mode` `trap-in-decap`, its data path panics on every received datagram.
//! Built with the `refuse-attach` feature, its data path refuses to attach (a
//! replacement that loads and initialises but whose data path cannot start).
#![allow(clippy::cast_possible_truncation, reason = "test plugin")]

use twill_plugin_sdk::datapath::{self, Action, BatchOut, Datapath, OutPacket};
use twill_plugin_sdk::host::{addresses, links, routes};
use twill_plugin_sdk::{
    Backend, Error, Info, LeaseEvent, Node, Registration, Subnet, export_datapath_backend,
};

struct Control {
    tun: u32,
    network: Subnet,
}

impl Backend for Control {
    fn describe() -> Info {
        Info {
            name: "udp-open".into(),
            version: "0.1.0".into(),
            config_hint: String::new(),
        }
    }

    fn init(
        _config: &str,
        node: &Node,
        _previous: Option<&str>,
    ) -> Result<(Self, Registration), Error> {
        let tun = datapath::host::open_tun("flannel0")?;
        datapath::host::bind_udp(8285)?;
        let control = Control {
            tun: tun.index,
            network: node.network,
        };
        let registration = Registration {
            backend_type: "udp-open".into(),
            backend_data: String::new(),
            mtu: node.iface.mtu - 28,
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

    fn on_lease(&mut self, _event: &LeaseEvent) -> Result<String, Error> {
        Ok("open".into())
    }
}

struct Path {
    trap: bool,
}

impl Datapath for Path {
    fn attach(config: &str, _node: &Node, _own: Subnet) -> Result<Self, Error> {
        if cfg!(feature = "refuse-attach") {
            return Err(Error::Invalid(
                "udp-open: this build refuses to attach its data path on purpose".into(),
            ));
        }
        Ok(Path {
            trap: config.contains(r#""Mode":"trap-in-decap""#),
        })
    }

    fn update(&mut self, _events: Vec<LeaseEvent>) {}

    fn encap(&mut self, arena: Vec<u8>, _packets: Vec<datapath::Packet>) -> BatchOut {
        BatchOut {
            arena,
            packets: Vec::new(),
            drops: datapath::no_drops(),
        }
    }

    fn decap(&mut self, arena: Vec<u8>, packets: Vec<datapath::Packet>) -> BatchOut {
        assert!(
            !(self.trap && !packets.is_empty()),
            "udp-open: trapping in decap on purpose"
        );
        let packets = packets
            .iter()
            .map(|p| OutPacket {
                offset: p.offset,
                len: p.len,
                action: Action::ToTun,
            })
            .collect();
        BatchOut {
            arena,
            packets,
            drops: datapath::no_drops(),
        }
    }
}

export_datapath_backend!(Control, Path);
