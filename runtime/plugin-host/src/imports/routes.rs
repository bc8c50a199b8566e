//! `twill:backend/routes`: routes to peers' subnets, inside the cluster network only.
//!
//! Ownership (security review M-1): twill's routes carry protocol
//! [`twill_net::ROUTE_PROTOCOL`]. A request for a destination that already has a
//! metric-0 route in the main table goes through only if that route is twill's, or one
//! flannel made (protocol boot, through a device of the plugin or via a peer on the
//! external interface: adopted, so a node moving from flannel keeps its traffic).
//! Any other route — an operator's static route, a connected route, another daemon's,
//! a blackhole — is neither replaced (`error::exists`, which the backend reports as
//! that peer's error) nor deleted (the delete does nothing).

use std::collections::BTreeMap;

use twill_core::Subnet;
use twill_net::{ROUTE_PROTOCOL, RTPROT_BOOT, Route, TableRoute};

use crate::bindings::Error;
use crate::bindings::twill::backend::routes::{Host, Route as WitRoute};
use crate::convert::{ip, subnet_from_wit};
use crate::state::{PluginState, deleted, kernel_error};

const CAP: &str = "routes";

impl PluginState {
    /// The route as the kernel seam takes it, if the plugin may touch it.
    fn checked_route(&self, r: &WitRoute) -> Result<Route, Error> {
        let Some(dst) = subnet_from_wit(r.dst) else {
            return Err(Error::Invalid(format!(
                "route destination {}/{} is not a network address",
                ip(r.dst.addr),
                r.dst.prefix
            )));
        };
        let network = self.grant.network;
        if !network.contains_subnet(&dst) {
            return self.deny(
                CAP,
                format!("route to {dst} is outside the cluster network {network}"),
            );
        }
        let external = &self.grant.external;
        if dst == network {
            // The whole network to a device of the plugin (udp's TUN, as flannel routes
            // it); the node's own, more specific subnet route still wins.
            if r.dev == external.index || r.gateway.is_some() {
                return self.deny(
                    CAP,
                    format!("a route to the whole network {network} must go to a device of the plugin, without a gateway"),
                );
            }
            self.require_owned(CAP, r.dev)?;
            return Ok(Route {
                dst,
                gateway: None,
                oif: Some(r.dev),
                onlink: false,
            });
        }
        let own = self.own_subnet(CAP)?;
        if dst.overlaps(&own) {
            return self.deny(
                CAP,
                format!("route to {dst} would take over the node's own subnet {own}"),
            );
        }
        if r.dev != external.index {
            self.require_owned(CAP, r.dev)?;
        } else if r.gateway.is_none() {
            return self.deny(
                CAP,
                format!(
                    "a route on the external interface {} must go via a peer",
                    external.name
                ),
            );
        }
        // The next hop must be a peer (security review H-5): on the external interface
        // its PublicIP; on a tunnel device that, or an address of the route's own
        // destination (vxlan's `via 10.244.2.0 onlink`).
        if let Some(gw) = r.gateway.map(ip) {
            let peer = self.is_peer_ip(gw);
            let inside = r.dev != external.index && dst.contains(gw);
            if !peer && !inside {
                return self.deny(
                    CAP,
                    format!("gateway {gw} of the route to {dst} is not a current peer's public IP"),
                );
            }
        }
        Ok(Route {
            dst,
            gateway: r.gateway.map(ip),
            oif: Some(r.dev),
            onlink: r.onlink,
        })
    }
}

/// Who holds the metric-0 route of a destination.
enum Holder {
    /// No route: free.
    Nobody,
    /// twill's own, or flannel's (adopted).
    Us,
    /// Anyone else; the text says what the route is.
    Other(String),
}

impl PluginState {
    /// The main table's metric-0 routes inside the network, read once per call (for a
    /// big batch).
    fn route_table(&mut self) -> Result<&mut BTreeMap<Subnet, TableRoute>, Error> {
        if self.route_table.is_none() {
            let network = self.grant.network;
            let table = self
                .kernel
                .table_routes()
                .map_err(kernel_error)?
                .into_iter()
                .filter(|t| t.metric == 0 && network.contains_subnet(&t.route.dst))
                .map(|t| (t.route.dst, t))
                .collect();
            self.route_table = Some(table);
        }
        Ok(self.route_table.get_or_insert_default())
    }

    /// The metric-0 route at `dst`: from the table read once for a big batch, else
    /// asked of the kernel for this destination alone.
    fn route_at(&mut self, dst: Subnet) -> Result<Option<TableRoute>, Error> {
        if self.bulk_routes {
            return Ok(self.route_table()?.get(&dst).copied());
        }
        Ok(self
            .kernel
            .table_route(dst)
            .map_err(kernel_error)?
            .filter(|t| t.metric == 0))
    }

    fn holder(&mut self, dst: Subnet) -> Result<Holder, Error> {
        let Some(t) = self.route_at(dst)? else {
            return Ok(Holder::Nobody);
        };
        let r = &t.route;
        let ours = t.protocol == ROUTE_PROTOCOL
            || (t.protocol == RTPROT_BOOT
                && t.unicast
                && r.oif.is_some_and(|dev| {
                    self.owns(dev)
                        || (dev == self.grant.external.index
                            && r.gateway.is_some_and(|gw| self.is_peer_ip(gw)))
                }));
        if ours {
            return Ok(Holder::Us);
        }
        let mut what = dst.to_string();
        if !t.unicast {
            what.push_str(" (not unicast)");
        }
        if let Some(gw) = r.gateway {
            what.push_str(&format!(" via {gw}"));
        }
        if let Some(dev) = r.oif {
            what.push_str(&format!(" dev #{dev}"));
        }
        what.push_str(&format!(" proto {}", t.protocol));
        Ok(Holder::Other(what))
    }
}

impl Host for PluginState {
    fn replace(&mut self, route: WitRoute) -> wasmtime::Result<Result<(), Error>> {
        let result = self.checked_route(&route).and_then(|r| {
            let known = self.held.routes.contains(&r.dst);
            self.check_quota(CAP, "routes", self.held.routes.len(), known)?;
            if let Holder::Other(what) = self.holder(r.dst)? {
                return Err(Error::Exists(format!(
                    "the route {what} is not twill's: left in place (remove it, or take \
                     {} out of the cluster network)",
                    r.dst
                )));
            }
            self.kernel.replace_route(&r).map_err(kernel_error)?;
            Ok(r)
        });
        Ok(result.map(|r| {
            self.held.routes.insert(r.dst);
            if let Some(table) = &mut self.route_table {
                table.insert(
                    r.dst,
                    TableRoute {
                        route: r,
                        protocol: ROUTE_PROTOCOL,
                        metric: 0,
                        unicast: true,
                    },
                );
            }
        }))
    }

    fn delete(&mut self, route: WitRoute) -> wasmtime::Result<Result<(), Error>> {
        let result = self.checked_route(&route).and_then(|r| {
            let removed = match self.holder(r.dst)? {
                Holder::Other(what) => {
                    // Not ours: nothing of ours to delete there.
                    tracing::debug!(plugin = %self.plugin, "route {what} is not twill's; not deleted");
                    false
                }
                Holder::Nobody | Holder::Us => {
                    deleted(self.kernel.del_route(&r))?;
                    true
                }
            };
            Ok((r.dst, removed))
        });
        Ok(result.map(|(dst, removed)| {
            self.held.routes.remove(&dst);
            if removed && let Some(table) = &mut self.route_table {
                table.remove(&dst);
            }
        }))
    }
}
