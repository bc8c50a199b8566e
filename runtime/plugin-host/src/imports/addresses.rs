//! `twill:backend/addresses`: a /32 from the node's own subnet on the plugin's devices.

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
        if !own.contains(addr) {
            return self.deny(
                CAP,
                format!("address {addr} is not inside the node's subnet {own}"),
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
