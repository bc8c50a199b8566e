//! twill's vxlan backend, with flannel's kernel objects (`pkg/backend/vxlan`):
//!
//! - device `flannel.<VNI>` (VNI and port from the config, defaults 1 and 8472,
//!   learning off, local = the node's public IP), MTU = interface MTU − 50, address
//!   `<subnet>.0/32`;
//! - per peer, in flannel's order: a permanent neighbour `peer.0 → VtepMAC`, an FDB
//!   entry `VtepMAC → peer public IP`, then the route `peer subnet via peer.0 onlink`
//!   (the kernel would ARP for the gateway if the neighbour were not there first);
//! - lease BackendData `{"VNI":…,"VtepMAC":"…"}`; the MAC from the node's previous lease
//!   is reused so a restart does not invalidate peers' entries;
//! - `DirectRouting: true`: a peer whose public IP is on-link (the route lookup to it
//!   has no gateway) gets a plain route `peer subnet via peer public IP` on the external
//!   interface instead, decided again at every event for the peer.
//!
//! The crate is also a library: the `directrouting` plugin is this backend with
//! DirectRouting forced on (feature `export` off there).

use serde_json::Value;
use twill_plugin_sdk::bindings::twill::backend::types::Mac;
use twill_plugin_sdk::host::{addresses, fdb, links, neighbours, route_lookup, routes};
use twill_plugin_sdk::{
    Backend, Error, Info, Lease, LeaseEvent, Node, Registration, Subnet, config_field, format_mac,
    host, ip, parse_mac,
};

/// The VXLAN header overhead flannel subtracts from the interface MTU.
const ENCAP_OVERHEAD: u32 = 50;
/// The kernel's default VXLAN port, which flannel uses when `Port` is 0.
const DEFAULT_PORT: u16 = 8472;

/// The vxlan backend's state.
pub struct Vxlan {
    vni: u32,
    dev: u32,
    direct_routing: bool,
    external: u32,
}

/// The `Backend` keys this backend reads.
#[derive(Debug, PartialEq)]
struct VxlanConfig {
    vni: u32,
    port: u16,
    mtu: Option<u32>,
    learning: bool,
    direct_routing: bool,
}

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

fn parse_config(text: &str) -> Result<VxlanConfig, Error> {
    let obj: Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("Backend is not JSON: {e}")))?;
    let uint = |key: &str| -> Result<Option<u64>, Error> {
        match config_field(&obj, key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                invalid(format!(
                    "Backend.{key}: expected a non-negative integer, got {v}"
                ))
            }),
        }
    };
    let flag = |key: &str| -> Result<bool, Error> {
        match config_field(&obj, key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(invalid(format!(
                "Backend.{key}: expected true or false, got {v}"
            ))),
        }
    };
    // flannel's default applies only when VNI is absent; an explicit 0 stays 0.
    let vni = match uint("VNI")? {
        None => 1,
        Some(v) if v < (1 << 24) => v as u32,
        Some(v) => return Err(invalid(format!("Backend.VNI: {v} is above 16777215"))),
    };
    let port = match uint("Port")? {
        None | Some(0) => DEFAULT_PORT,
        Some(p) => {
            u16::try_from(p).map_err(|_| invalid(format!("Backend.Port: {p} is not a UDP port")))?
        }
    };
    let mtu = match uint("MTU")? {
        None | Some(0) => None,
        Some(m) => {
            Some(u32::try_from(m).map_err(|_| invalid(format!("Backend.MTU: {m} is too large")))?)
        }
    };
    if flag("GBP")? {
        return Err(Error::Unsupported(
            "Backend.GBP is not supported by twill's vxlan backend".into(),
        ));
    }
    Ok(VxlanConfig {
        vni,
        port,
        mtu,
        learning: flag("Learning")?,
        direct_routing: flag("DirectRouting")?,
    })
}

/// The VtepMAC from a lease's BackendData.
fn vtep_mac(data: &str) -> Option<Mac> {
    let v: Value = serde_json::from_str(data).ok()?;
    parse_mac(config_field(&v, "VtepMAC")?.as_str()?)
}

impl Vxlan {
    /// `init`, with DirectRouting forced on when `force_direct` is set.
    pub fn init_with(
        config: &str,
        node: &Node,
        previous: Option<&str>,
        force_direct: bool,
    ) -> Result<(Self, Registration), Error> {
        let cfg = parse_config(config)?;
        let mac = previous.and_then(vtep_mac);
        let link = links::ensure_vxlan(&links::VxlanSpec {
            name: format!("flannel.{}", cfg.vni),
            vni: cfg.vni,
            port: cfg.port,
            local: node.public_ip,
            underlay: node.iface.index,
            learning: cfg.learning,
            mac,
        })?;
        let base = cfg.mtu.unwrap_or(node.iface.mtu);
        let mtu = base
            .checked_sub(ENCAP_OVERHEAD)
            .filter(|m| *m >= 68)
            .ok_or_else(|| {
                invalid(format!(
                    "MTU {base} leaves no room for the {ENCAP_OVERHEAD}-byte VXLAN overhead"
                ))
            })?;
        if link.mtu != mtu {
            links::set_mtu(link.index, mtu)?;
        }
        let direct_routing = cfg.direct_routing || force_direct;
        host::debug(&format!(
            "device {} (index {}) VNI {} port {} VtepMAC {} MTU {mtu}{}{}",
            link.name,
            link.index,
            cfg.vni,
            cfg.port,
            format_mac(link.mac),
            if mac.is_some() {
                " (MAC kept from the previous lease)"
            } else {
                ""
            },
            if direct_routing {
                ", direct routing to on-link peers"
            } else {
                ""
            }
        ));
        let data = format!(
            r#"{{"VNI":{},"VtepMAC":"{}"}}"#,
            cfg.vni,
            format_mac(link.mac)
        );
        Ok((
            Vxlan {
                vni: cfg.vni,
                dev: link.index,
                direct_routing,
                external: node.iface.index,
            },
            Registration {
                backend_type: "vxlan".into(),
                backend_data: data,
                mtu,
            },
        ))
    }

    fn vxlan_route(&self, lease: &Lease) -> routes::Route {
        routes::Route {
            dst: lease.subnet,
            gateway: Some(lease.subnet.addr),
            dev: self.dev,
            onlink: true,
        }
    }

    fn direct_route(&self, lease: &Lease) -> routes::Route {
        routes::Route {
            dst: lease.subnet,
            gateway: Some(lease.public_ip),
            dev: self.external,
            onlink: false,
        }
    }

    /// Whether the peer's public IP is on-link, as flannel's `ip.DirectRouting` decides.
    fn on_link(&self, lease: &Lease) -> Result<bool, Error> {
        let path = route_lookup::get(lease.public_ip)?;
        Ok(path.gateway.is_none())
    }

    fn add_peer(&self, lease: &Lease) -> Result<String, Error> {
        let mac = vtep_mac(&lease.backend_data).ok_or_else(|| {
            invalid(format!(
                "peer {} ({}) has no valid VtepMAC in its BackendData {:?}",
                lease.subnet,
                ip(lease.public_ip),
                lease.backend_data
            ))
        })?;
        let gw = lease.subnet.addr;
        if self.direct_routing && self.on_link(lease)? {
            // The route replace switches any vxlan route for the subnet over.
            routes::replace(self.direct_route(lease))?;
            let _ = fdb::delete(self.dev, mac, lease.public_ip);
            let _ = neighbours::delete(self.dev, gw);
            return Ok(format!("direct route via {}", ip(lease.public_ip)));
        }
        neighbours::replace(self.dev, gw, mac)?;
        let rest = fdb::replace(self.dev, mac, lease.public_ip)
            .and_then(|()| routes::replace(self.vxlan_route(lease)));
        if rest.is_err() {
            // As flannel does: a peer is programmed whole or not at all.
            let _ = fdb::delete(self.dev, mac, lease.public_ip);
            let _ = neighbours::delete(self.dev, gw);
        }
        rest.map(|()| {
            format!(
                "vxlan via {} onlink, VTEP {} at {}",
                ip(gw),
                format_mac(mac),
                ip(lease.public_ip)
            )
        })
    }

    /// Remove every object either mode may have made, going on past failures (as
    /// flannel does); absent objects are not errors.
    fn remove_peer(&self, lease: &Lease) -> Result<String, Error> {
        let route = routes::delete(self.vxlan_route(lease));
        let direct = if self.direct_routing {
            routes::delete(self.direct_route(lease))
        } else {
            Ok(())
        };
        let neigh = neighbours::delete(self.dev, lease.subnet.addr);
        let fdb = match vtep_mac(&lease.backend_data) {
            Some(mac) => fdb::delete(self.dev, mac, lease.public_ip),
            None => Ok(()),
        };
        route
            .and(direct)
            .and(neigh)
            .and(fdb)
            .map(|()| "removed".into())
    }
}

impl Backend for Vxlan {
    fn describe() -> Info {
        Info {
            name: "vxlan".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_hint:
                r#"{"Type":"vxlan","VNI":1,"Port":8472,"MTU":0,"Learning":false,"DirectRouting":false}"#
                    .into(),
        }
    }

    fn init(
        config: &str,
        node: &Node,
        previous: Option<&str>,
    ) -> Result<(Self, Registration), Error> {
        Self::init_with(config, node, previous, false)
    }

    fn start(&mut self, own: Subnet) -> Result<(), Error> {
        addresses::ensure(self.dev, own.addr)?;
        links::set_up(self.dev)
    }

    fn on_lease(&mut self, event: &LeaseEvent) -> Result<String, Error> {
        let result = match event {
            LeaseEvent::Added(l) if l.backend_type != "vxlan" => {
                return Err(Error::Unsupported(format!(
                    "backend type {:?} is not vxlan; peer ignored",
                    l.backend_type
                )));
            }
            LeaseEvent::Added(l) => self.add_peer(l),
            LeaseEvent::Removed(l) => self.remove_peer(l),
        };
        if let (Err(e), LeaseEvent::Added(l) | LeaseEvent::Removed(l)) = (&result, event) {
            host::debug(&format!(
                "peer {} ({}) on VNI {}: {e}",
                l.subnet,
                ip(l.public_ip),
                self.vni
            ));
        }
        result
    }
}

#[cfg(feature = "export")]
twill_plugin_sdk::export_backend!(Vxlan);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_errors() {
        assert_eq!(
            parse_config(r#"{"Type":"vxlan"}"#).expect("valid"),
            VxlanConfig {
                vni: 1,
                port: 8472,
                mtu: None,
                learning: false,
                direct_routing: false
            }
        );
        assert_eq!(
            parse_config(
                r#"{"type":"vxlan","vni":42,"port":4789,"mtu":9000,"directrouting":true}"#
            )
            .expect("valid"),
            VxlanConfig {
                vni: 42,
                port: 4789,
                mtu: Some(9000),
                learning: false,
                direct_routing: true
            }
        );
        assert_eq!(parse_config(r#"{"VNI":0}"#).expect("valid").vni, 0);
        assert!(
            matches!(parse_config(r#"{"VNI":"x"}"#), Err(Error::Invalid(m)) if m.contains("Backend.VNI"))
        );
        assert!(
            matches!(parse_config(r#"{"Port":70000}"#), Err(Error::Invalid(m)) if m.contains("Backend.Port"))
        );
        assert!(matches!(
            parse_config(r#"{"GBP":true}"#),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn reads_vtep_mac() {
        assert_eq!(
            vtep_mac(r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:0a"}"#),
            Some((2, 0, 0, 0, 0, 10))
        );
        assert_eq!(vtep_mac(r#"{"VNI":1}"#), None);
        assert_eq!(vtep_mac("not json"), None);
    }
}
