//! twill's host-gw backend, as flannel's (`pkg/backend/hostgw`, `route_network.go`):
//! no device; per peer the route `peer subnet via peer public IP dev <external>`; MTU =
//! the interface's. It refuses to start when the public IP is not the interface's
//! address (NAT), as flannel does. A peer that is not on-link (reached through a router)
//! is an error for that peer, naming it and the gateway in the way — never a silent skip.
//! The host re-sends every peer periodically, which re-adds missing routes.

use twill_plugin_sdk::host::{route_lookup, routes};
use twill_plugin_sdk::{Backend, Error, Info, Lease, LeaseEvent, Node, Registration, Subnet, ip};

struct HostGw {
    external: u32,
    external_name: String,
}

impl HostGw {
    fn route(&self, lease: &Lease) -> routes::Route {
        routes::Route {
            dst: lease.subnet,
            gateway: Some(lease.public_ip),
            dev: self.external,
            onlink: false,
        }
    }

    fn add(&self, lease: &Lease) -> Result<String, Error> {
        let path = route_lookup::get(lease.public_ip)?;
        if let Some(gw) = path.gateway {
            return Err(Error::Unsupported(format!(
                "peer {} at {} is not on-link: it is reached via the router {} (host-gw needs every node on one L2 network; use vxlan or directrouting)",
                lease.subnet,
                ip(lease.public_ip),
                ip(gw)
            )));
        }
        if path.dev != self.external {
            return Err(Error::Unsupported(format!(
                "peer {} at {} is reached through device {}, not {}",
                lease.subnet,
                ip(lease.public_ip),
                path.dev,
                self.external_name
            )));
        }
        routes::replace(self.route(lease))?;
        Ok(format!(
            "route via {} dev {}",
            ip(lease.public_ip),
            self.external_name
        ))
    }
}

impl Backend for HostGw {
    fn describe() -> Info {
        Info {
            name: "host-gw".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_hint: r#"{"Type":"host-gw"}"#.into(),
        }
    }

    fn init(
        _config: &str,
        node: &Node,
        _previous: Option<&str>,
    ) -> Result<(Self, Registration), Error> {
        if node.public_ip != node.iface.addr {
            return Err(Error::Invalid(format!(
                "your PublicIP {} differs from interface IP {} ({}), meaning that probably you're on a NAT, which is not supported by host-gw backend",
                ip(node.public_ip),
                ip(node.iface.addr),
                node.iface.name
            )));
        }
        Ok((
            HostGw {
                external: node.iface.index,
                external_name: node.iface.name.clone(),
            },
            Registration {
                backend_type: "host-gw".into(),
                backend_data: String::new(),
                mtu: node.iface.mtu,
            },
        ))
    }

    fn start(&mut self, _own: Subnet) -> Result<(), Error> {
        Ok(())
    }

    fn on_lease(&mut self, event: &LeaseEvent) -> Result<String, Error> {
        match event {
            LeaseEvent::Added(l) if l.backend_type != "host-gw" => {
                Err(Error::Unsupported(format!(
                    "backend type {:?} is not host-gw; peer ignored",
                    l.backend_type
                )))
            }
            LeaseEvent::Added(l) => self.add(l),
            LeaseEvent::Removed(l) => routes::delete(self.route(l)).map(|()| "removed".into()),
        }
    }
}

twill_plugin_sdk::export_backend!(HostGw);
