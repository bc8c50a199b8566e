//! `twill:backend/neighbours`: permanent ARP entries on the plugin's own devices.

use crate::bindings::Error;
use crate::bindings::twill::backend::neighbours::Host;
use crate::convert::{ip, mac_from_wit};
use crate::state::{PluginState, deleted, kernel_error};

const CAP: &str = "neighbours";

impl PluginState {
    fn check_neighbour(&self, dev: u32, addr: u32) -> Result<(), Error> {
        self.require_owned(CAP, dev)?;
        if !self.grant.network.contains(ip(addr)) {
            return self.deny(
                CAP,
                format!(
                    "neighbour {} is outside the cluster network {}",
                    ip(addr),
                    self.grant.network
                ),
            );
        }
        Ok(())
    }
}

impl Host for PluginState {
    fn replace(
        &mut self,
        dev: u32,
        addr: u32,
        mac: (u8, u8, u8, u8, u8, u8),
    ) -> wasmtime::Result<Result<(), Error>> {
        let unicast = {
            let m = mac_from_wit(mac);
            m.0[0] & 1 == 0 && m.0 != [0; 6]
        };
        let key = (dev, ip(addr));
        let known = self.held.neighbours.contains(&key);
        let result = self
            .check_neighbour(dev, addr)
            .and_then(|()| self.check_quota(CAP, "neighbours", self.held.neighbours.len(), known))
            .and_then(|()| {
                if unicast {
                    Ok(())
                } else {
                    Err(Error::Invalid(format!(
                        "neighbour MAC {} is not a unicast address",
                        mac_from_wit(mac)
                    )))
                }
            })
            .and_then(|()| {
                self.kernel
                    .replace_neighbour(dev, ip(addr), mac_from_wit(mac))
                    .map_err(kernel_error)
            });
        if result.is_ok() {
            self.held.neighbours.insert(key);
        }
        Ok(result)
    }

    fn delete(&mut self, dev: u32, addr: u32) -> wasmtime::Result<Result<(), Error>> {
        let result = self
            .check_neighbour(dev, addr)
            .and_then(|()| deleted(self.kernel.del_neighbour(dev, ip(addr))));
        if result.is_ok() {
            self.held.neighbours.remove(&(dev, ip(addr)));
        }
        Ok(result)
    }
}
