//! flannel's `ipip` backend (`pkg/backend/ipip`) as an out-of-tree twill plugin: a
//! backend written outside twill's repository, against `twill-plugin-sdk` alone.
//!
//! Kernel objects, as flannel makes them:
//!
//! - the device `flannel.ipip`: an IP-in-IP tunnel with the node's interface address as
//!   local endpoint and remote any (the peer is chosen per route), MTU = the interface's
//!   MTU − 20 (the outer IPv4 header), address `<own subnet>.0/32`, up;
//! - per peer lease: the route `<peer subnet> via <peer public IP> dev flannel.ipip
//!   onlink` (the kernel encapsulates towards the route's gateway);
//! - a removed lease: that route deleted.
//!
//! The lease carries `"BackendType":"ipip"` and no `BackendData`. With
//! `"DirectRouting":true`, a peer whose public IP is on-link (the route lookup to it has
//! no gateway) gets the same route on the external interface instead, without
//! encapsulation.
//!
//! Every step is idempotent: the host repeats `init`, `start` and an `added` for every
//! peer every 60 s, which re-creates whatever someone deleted.
//!
//! Config: `{"Type":"ipip","DirectRouting":false}` (keys case-insensitive, as flannel's).

use serde_json::Value;
use twill_plugin_sdk::host::{addresses, links, route_lookup, routes};
use twill_plugin_sdk::{
    Backend, Error, Info, Lease, LeaseEvent, Node, Registration, Subnet, config_field, host, ip,
};

/// flannel's device name.
pub const DEVICE: &str = "flannel.ipip";
/// The outer IPv4 header.
pub const ENCAP_OVERHEAD: u32 = 20;
/// The backend type, in the config and in every lease.
pub const BACKEND_TYPE: &str = "ipip";

/// The backend's state between calls.
pub struct Ipip {
    dev: u32,
    external: u32,
    external_name: String,
    direct_routing: bool,
}

/// `DirectRouting` from the `Backend` config object (absent or null: off).
fn direct_routing(config: &str) -> Result<bool, Error> {
    let obj: Value = serde_json::from_str(config)
        .map_err(|e| Error::Invalid(format!("Backend is not JSON: {e}")))?;
    match config_field(&obj, "DirectRouting") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(Error::Invalid(format!(
            "Backend.DirectRouting: expected true or false, got {v}"
        ))),
    }
}

/// The device's MTU for an interface MTU.
fn device_mtu(iface_mtu: u32) -> Result<u32, Error> {
    iface_mtu
        .checked_sub(ENCAP_OVERHEAD)
        .filter(|m| *m >= 68)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "interface MTU {iface_mtu} leaves no room for the {ENCAP_OVERHEAD}-byte ipip header"
            ))
        })
}

impl Ipip {
    /// The route through the tunnel: the kernel sends the inner packet to the gateway
    /// inside an outer IPv4 header.
    fn tunnel_route(&self, lease: &Lease) -> routes::Route {
        routes::Route {
            dst: lease.subnet,
            gateway: Some(lease.public_ip),
            dev: self.dev,
            onlink: true,
        }
    }

    /// DirectRouting to an on-link peer: the same route on the external interface.
    fn direct_route(&self, lease: &Lease) -> routes::Route {
        routes::Route {
            dev: self.external,
            ..self.tunnel_route(lease)
        }
    }

    /// Whether the peer's public IP is on-link. As flannel, a failed lookup means
    /// "not direct" (and is logged).
    fn on_link(&self, lease: &Lease) -> bool {
        match route_lookup::get(lease.public_ip) {
            Ok(path) => path.gateway.is_none() && path.dev == self.external,
            Err(e) => {
                host::warn(&format!(
                    "route lookup for peer {} at {}: {e}; using the tunnel",
                    lease.subnet,
                    ip(lease.public_ip)
                ));
                false
            }
        }
    }

    fn add(&self, lease: &Lease) -> Result<String, Error> {
        if self.direct_routing && self.on_link(lease) {
            // A replace of the same destination switches a tunnel route over.
            routes::replace(self.direct_route(lease))?;
            return Ok(format!(
                "direct route via {} dev {} onlink",
                ip(lease.public_ip),
                self.external_name
            ));
        }
        routes::replace(self.tunnel_route(lease))?;
        Ok(format!(
            "route via {} dev {DEVICE} onlink",
            ip(lease.public_ip)
        ))
    }

    /// Delete the peer's route, whichever way it went; an absent route is not an error.
    fn remove(&self, lease: &Lease) -> Result<String, Error> {
        let tunnel = routes::delete(self.tunnel_route(lease));
        let direct = if self.direct_routing {
            routes::delete(self.direct_route(lease))
        } else {
            Ok(())
        };
        tunnel.and(direct).map(|()| "removed".into())
    }
}

impl Backend for Ipip {
    fn describe() -> Info {
        Info {
            name: BACKEND_TYPE.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_hint: r#"{"Type":"ipip","DirectRouting":false}"#.into(),
        }
    }

    fn init(
        config: &str,
        node: &Node,
        _previous: Option<&str>,
    ) -> Result<(Self, Registration), Error> {
        let direct_routing = direct_routing(config)?;
        let mtu = device_mtu(node.iface.mtu)?;
        // Created, or kept if it exists with these attributes (a restart cuts no
        // traffic), or recreated if it does not.
        let link = links::ensure_ipip(&links::IpipSpec {
            name: DEVICE.into(),
            local: node.iface.addr,
            underlay: node.iface.index,
        })?;
        if link.mtu != mtu {
            links::set_mtu(link.index, mtu)?;
        }
        host::debug(&format!(
            "device {DEVICE} (index {}) local {} MTU {mtu}{}",
            link.index,
            ip(node.iface.addr),
            if direct_routing {
                ", direct routing to on-link peers"
            } else {
                ""
            }
        ));
        Ok((
            Ipip {
                dev: link.index,
                external: node.iface.index,
                external_name: node.iface.name.clone(),
                direct_routing,
            },
            Registration {
                backend_type: BACKEND_TYPE.into(),
                backend_data: String::new(),
                mtu,
            },
        ))
    }

    fn start(&mut self, own: Subnet) -> Result<(), Error> {
        // `<subnet>.0/32`: a /32 adds no route of its own.
        addresses::ensure(self.dev, own.addr)?;
        links::set_up(self.dev)
    }

    fn on_lease(&mut self, event: &LeaseEvent) -> Result<String, Error> {
        match event {
            LeaseEvent::Added(l) if l.backend_type != BACKEND_TYPE => {
                Err(Error::Unsupported(format!(
                    "backend type {:?} is not {BACKEND_TYPE}; peer ignored",
                    l.backend_type
                )))
            }
            LeaseEvent::Added(l) => self.add(l),
            LeaseEvent::Removed(l) => self.remove(l),
        }
    }
}

twill_plugin_sdk::export_backend!(Ipip);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config() {
        assert!(!direct_routing(r#"{"Type":"ipip"}"#).expect("valid"));
        assert!(direct_routing(r#"{"type":"ipip","directrouting":true}"#).expect("valid"));
        assert!(matches!(
            direct_routing(r#"{"DirectRouting":"yes"}"#),
            Err(Error::Invalid(m)) if m.contains("Backend.DirectRouting")
        ));
        assert!(matches!(direct_routing("nope"), Err(Error::Invalid(_))));
    }

    #[test]
    fn mtu() {
        assert_eq!(device_mtu(1500).expect("fits"), 1480);
        assert_eq!(device_mtu(9000).expect("fits"), 8980);
        assert!(device_mtu(80).is_err());
    }
}
