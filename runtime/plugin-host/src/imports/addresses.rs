//! `twill:backend/addresses`: the node's subnet address as a /32 on the plugin's devices
//! (security review H-3: any other address of the subnet may be a pod's).

use twill_net::AddrInfo;

use crate::bindings::Error;
use crate::bindings::twill::backend::addresses::Host;
use crate::convert::ip;
use crate::state::{PluginState, kernel_error};

const CAP: &str = "addresses";

impl PluginState {
    fn ensure_checked(&mut self, index: u32, addr: u32) -> Result<(), Error> {
        self.require_owned(CAP, index)?;
        let own = self.own_subnet(CAP)?;
        let addr = ip(addr);
        // Only the subnet's own address (what flannel puts on flannel.<VNI>): any other
        // /32 of the subnet is a pod's, and a local route for it would hand the pod's
        // traffic to the host's services.
        if addr != own.addr() {
            return self.deny(
                CAP,
                format!(
                    "address {addr} is not the node's subnet address {} (any other address of {own} may be a pod's)",
                    own.addr()
                ),
            );
        }
        let want = AddrInfo {
            index,
            addr,
            prefix: 32,
        };
        let present = self.kernel.addrs().map_err(kernel_error)?;
        let mut have = false;
        for a in present.into_iter().filter(|a| a.index == index) {
            if a == want {
                have = true;
            } else if self.grant.network.contains(a.addr) {
                self.kernel.del_addr(a).map_err(kernel_error)?;
            }
        }
        if !have {
            self.kernel.add_addr(want).map_err(kernel_error)?;
        }
        Ok(())
    }
}

impl Host for PluginState {
    fn ensure(&mut self, dev: u32, addr: u32) -> wasmtime::Result<Result<(), Error>> {
        Ok(self.ensure_checked(dev, addr))
    }
}
