//! `twill:backend/routes`: routes to peers' subnets, inside the cluster network only.

use twill_net::Route;

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

impl Host for PluginState {
    fn replace(&mut self, route: WitRoute) -> wasmtime::Result<Result<(), Error>> {
        let result = self.checked_route(&route).and_then(|r| {
            let known = self.held.routes.contains(&r.dst);
            self.check_quota(CAP, "routes", self.held.routes.len(), known)?;
            self.kernel.replace_route(&r).map_err(kernel_error)?;
            Ok(r.dst)
        });
        Ok(result.map(|dst| {
            self.held.routes.insert(dst);
        }))
    }

    fn delete(&mut self, route: WitRoute) -> wasmtime::Result<Result<(), Error>> {
        let result = self
            .checked_route(&route)
            .and_then(|r| deleted(self.kernel.del_route(&r)).map(|()| r.dst));
        Ok(result.map(|dst| {
            self.held.routes.remove(&dst);
        }))
    }
}
