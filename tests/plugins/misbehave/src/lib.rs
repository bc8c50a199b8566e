//! `misbehave`: a backend for the sandbox tests. It programs peers as host-gw does (a
//! route via the peer's public IP on the external interface), so a cluster on it works,
//! and its `Backend.Mode` makes it misbehave:
//!
//! - `deny`: in `start`, ask for four things no plugin may do — a route outside the
//!   cluster network, deleting the node's default route, an address on the external
//!   interface, a device named like another program's (`cni0`) — and log each answer;
//! - `loop`: never return from the first `on-leases` of an instance;
//! - `alloc`: allocate without bound in the first `on-leases`;
//! - `trap-on-second`: panic in the second `on-leases` of an instance (a fresh instance
//!   then handles the replay, its first);
//! - `trap-on-removal`: panic in any `on-leases` of an instance but its first that
//!   carries a removal (so the fresh instance's replay, its first, goes through);
//! - `log-flood`: in the first `on-leases`, log 5000 long lines that embed a newline,
//!   a forged log line and a terminal escape, then make 5000 denied calls;
//! - `exfil`: for each peer, first try to route its subnet via `Backend.Observer` (an
//!   address that is no peer) and to add an FDB entry to it on its own vxlan device,
//!   then program the peer as host-gw does;
//! - `flood`: in the first `on-leases`, create ten vxlan devices and a thousand FDB
//!   entries towards a peer;
//! - `hijack-address`: in `start`, create its own vxlan device and ask for a pod's
//!   address (the subnet's `.2`) on it;
//! - `refuse-reload`: behave, but publish BackendData `{"Started":true}` and fail any
//!   `init` handed it back, so every instance after the first (a reload, a restart)
//!   fails to initialise;
//! - anything else (or no `Mode`): behave.

use twill_plugin_sdk::host::{self, addresses, fdb, links, routes};
use twill_plugin_sdk::{
    Backend, Error, Info, LeaseEvent, Node, Registration, Subnet, config_field, export_backend,
    ip_u32,
};

struct Misbehave {
    mode: String,
    /// `exfil`: where it tries to send peers' traffic.
    observer: u32,
    /// `exfil`: its own vxlan device.
    exfil_dev: Option<u32>,
    node: Node,
    on_leases_calls: u32,
}

impl Misbehave {
    fn attempt(&self, what: &str, result: Result<(), Error>) {
        match result {
            Ok(()) => host::error(&format!("misbehave: {what}: allowed (it should not be)")),
            Err(e) => host::info(&format!("misbehave: {what}: refused: {e:?}")),
        }
    }

    /// Ask for a vxlan device of this name and VNI, on the node's address and
    /// interface and flannel's port.
    fn vxlan(&self, name: &str, vni: u32) -> Result<links::Link, Error> {
        links::ensure_vxlan(&links::VxlanSpec {
            name: name.into(),
            vni,
            port: 8472,
            local: self.node.public_ip,
            underlay: self.node.iface.index,
            learning: false,
            mac: None,
        })
    }

    fn deny_all(&self, own: Subnet) {
        let ext = self.node.iface.index;
        let gateway = Some(self.node.iface.addr.wrapping_add(1));
        self.attempt(
            "route outside the cluster network",
            routes::replace(routes::Route {
                dst: Subnet {
                    addr: ip_u32([172, 31, 0, 0].into()),
                    prefix: 16,
                },
                gateway,
                dev: ext,
                onlink: false,
            }),
        );
        self.attempt(
            "delete the node's default route",
            routes::delete(routes::Route {
                dst: Subnet { addr: 0, prefix: 0 },
                gateway,
                dev: ext,
                onlink: true,
            }),
        );
        self.attempt(
            "change the external interface's address",
            // An address of its own subnet, but on the host's interface.
            addresses::ensure(ext, own.addr + 5),
        );
        self.attempt(
            "create a device named like another program's",
            self.vxlan("cni0", 1).map(|_| ()),
        );
    }
}

impl Backend for Misbehave {
    fn describe() -> Info {
        Info {
            name: "misbehave".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_hint:
                "Mode: deny | loop | alloc | trap-on-second | trap-on-removal | hijack-address"
                    .into(),
        }
    }

    fn init(
        config: &str,
        node: &Node,
        previous: Option<&str>,
    ) -> Result<(Self, Registration), Error> {
        let value: serde_json::Value =
            serde_json::from_str(config).map_err(|e| Error::Invalid(e.to_string()))?;
        let mode = config_field(&value, "Mode")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_owned();
        let started = r#"{"Started":true}"#;
        if mode == "refuse-reload" && previous == Some(started) {
            return Err(Error::Invalid(
                "misbehave: refusing to initialise a second instance on purpose".into(),
            ));
        }
        let observer = config_field(&value, "Observer")
            .and_then(|m| m.as_str())
            .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok())
            .map_or(0, ip_u32);
        let registration = Registration {
            backend_type: "misbehave".into(),
            backend_data: if mode == "refuse-reload" {
                started.into()
            } else {
                String::new()
            },
            // Mode `mtu`: an MTU no link can carry (security review L-3).
            mtu: if mode == "mtu" { 0 } else { node.iface.mtu },
        };
        Ok((
            Misbehave {
                mode,
                observer,
                exfil_dev: None,
                node: node.clone(),
                on_leases_calls: 0,
            },
            registration,
        ))
    }

    fn start(&mut self, own: Subnet) -> Result<(), Error> {
        if self.mode == "deny" {
            self.deny_all(own);
        }
        if self.mode == "exfil" {
            let dev = self.vxlan("flannel.8", 8)?;
            self.exfil_dev = Some(dev.index);
        }
        if self.mode == "hijack-address" {
            let dev = self.vxlan("flannel.7", 7)?;
            self.attempt(
                "a pod's address on its own device",
                addresses::ensure(dev.index, own.addr + 2),
            );
        }
        Ok(())
    }

    fn on_lease(&mut self, event: &LeaseEvent) -> Result<String, Error> {
        let (lease, add) = match event {
            LeaseEvent::Added(l) => (l, true),
            LeaseEvent::Removed(l) => (l, false),
        };
        let route = routes::Route {
            dst: lease.subnet,
            gateway: Some(lease.public_ip),
            dev: self.node.iface.index,
            onlink: false,
        };
        if add && self.mode == "exfil" {
            self.attempt(
                "a peer's subnet via the observer",
                routes::replace(routes::Route {
                    gateway: Some(self.observer),
                    ..route
                }),
            );
            if let Some(dev) = self.exfil_dev {
                self.attempt(
                    "an FDB entry to the observer",
                    fdb::replace(dev, (2, 0, 0, 0, 0, 0x99), self.observer),
                );
            }
        }
        if add {
            routes::replace(route)?;
            Ok(format!(
                "route via {}",
                twill_plugin_sdk::ip(lease.public_ip)
            ))
        } else {
            routes::delete(route)?;
            Ok("removed".into())
        }
    }

    fn on_leases(&mut self, events: Vec<LeaseEvent>) -> Vec<twill_plugin_sdk::PeerOutcome> {
        self.on_leases_calls += 1;
        match (self.mode.as_str(), self.on_leases_calls) {
            ("loop", 1) => loop {
                std::hint::spin_loop();
            },
            ("alloc", 1) => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            ("log-flood", 1) => {
                let forged = format!(
                    "{}\n2026-12-02T00:00:00.000000Z  INFO forged line\x1b[31m",
                    "A".repeat(4000)
                );
                for _ in 0..5000 {
                    host::error(&forged);
                }
                let outside = routes::Route {
                    dst: Subnet {
                        addr: ip_u32([172, 31, 0, 0].into()),
                        prefix: 16,
                    },
                    gateway: None,
                    dev: self.node.iface.index,
                    onlink: false,
                };
                for _ in 0..5000 {
                    let _ = routes::replace(outside);
                }
            }
            ("flood", 1) => {
                let mut devices = Vec::new();
                for i in 0..10u32 {
                    if let Ok(link) = self.vxlan(&format!("flannel.f{i}"), 100 + i) {
                        devices.push(link.index);
                    }
                }
                host::info(&format!(
                    "misbehave: flood: {} devices created",
                    devices.len()
                ));
                let peer = events.iter().find_map(|e| match e {
                    LeaseEvent::Added(l) => Some(l.public_ip),
                    LeaseEvent::Removed(_) => None,
                });
                if let (Some(dev), Some(peer)) = (devices.first(), peer) {
                    let mut allowed = 0;
                    for i in 0..1000u32 {
                        let [_, _, a, b] = i.to_be_bytes();
                        if fdb::replace(*dev, (2, 0, 0, 0, a, b), peer).is_ok() {
                            allowed += 1;
                        }
                    }
                    host::info(&format!("misbehave: flood: {allowed} FDB entries allowed"));
                }
            }
            ("trap-always", _) if !events.is_empty() => {
                panic!("misbehave: trapping on every batch on purpose")
            }
            ("trap-on-second" | "litter-then-trap", 2) => {
                panic!("misbehave: trapping on purpose")
            }
            // A batch of one peer (the first instance's first call; a restarted
            // instance's replay carries every peer): routes to eight parts of that
            // peer's subnet, which no later instance makes again.
            ("litter-then-trap", 1) if events.len() == 1 => {
                if let Some(LeaseEvent::Added(l)) = events.first() {
                    for part in 0..8u32 {
                        let litter = routes::Route {
                            dst: Subnet {
                                addr: l.subnet.addr + part * 32,
                                prefix: 27,
                            },
                            gateway: Some(l.public_ip),
                            dev: self.node.iface.index,
                            onlink: false,
                        };
                        if let Err(e) = routes::replace(litter) {
                            host::error(&format!("misbehave: litter route refused: {e:?}"));
                        }
                    }
                }
            }
            ("trap-on-removal", n)
                if n > 1 && events.iter().any(|e| matches!(e, LeaseEvent::Removed(_))) =>
            {
                panic!("misbehave: trapping on a removal on purpose")
            }
            _ => {}
        }
        events
            .iter()
            .map(|event| twill_plugin_sdk::PeerOutcome {
                subnet: twill_plugin_sdk::event_subnet(event),
                outcome: self.on_lease(event),
            })
            .collect()
    }
}

export_backend!(Misbehave);
