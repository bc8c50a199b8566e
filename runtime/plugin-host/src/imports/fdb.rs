//! `twill:backend/fdb`: forwarding entries on the plugin's own VXLAN devices.

use crate::bindings::Error;
use crate::bindings::twill::backend::fdb::Host;
use crate::convert::{ip, mac_from_wit};
use crate::state::{PluginState, deleted, kernel_error};

const CAP: &str = "fdb";

impl PluginState {
    fn check_fdb(&self, dev: u32, dst: u32) -> Result<(), Error> {
        self.require_owned(CAP, dev)?;
        let dst = ip(dst);
        if dst.is_unspecified() || dst.is_broadcast() || dst.is_multicast() {
            return Err(Error::Invalid(format!(
                "FDB destination {dst} is not a unicast address"
            )));
        }
        Ok(())
    }

    /// A new FDB entry sends encapsulated pod traffic to `dst`: only to a peer
    /// (security review H-5).
    fn check_fdb_destination(&self, dst: u32) -> Result<(), Error> {
        let dst = ip(dst);
        if self.is_peer_ip(dst) {
            Ok(())
        } else {
            self.deny(
                CAP,
                format!("FDB destination {dst} is not a current peer's public IP"),
            )
        }
    }
}

impl Host for PluginState {
    fn replace(
        &mut self,
        dev: u32,
        mac: (u8, u8, u8, u8, u8, u8),
        dst: u32,
    ) -> wasmtime::Result<Result<(), Error>> {
        let key = (dev, mac_from_wit(mac).0);
        let known = self.held.fdb.contains_key(&key);
        let result = self
            .check_fdb(dev, dst)
            .and_then(|()| self.check_fdb_destination(dst))
            .and_then(|()| self.check_quota(CAP, "FDB entries", self.held.fdb.len(), known))
            .and_then(|()| {
                self.kernel
                    .replace_fdb(dev, mac_from_wit(mac), ip(dst))
                    .map_err(kernel_error)
            });
        if result.is_ok() {
            self.held.fdb.insert(key, ip(dst));
        }
        Ok(result)
    }

    fn delete(
        &mut self,
        dev: u32,
        mac: (u8, u8, u8, u8, u8, u8),
        dst: u32,
    ) -> wasmtime::Result<Result<(), Error>> {
        let result = self
            .check_fdb(dev, dst)
            .and_then(|()| deleted(self.kernel.del_fdb(dev, mac_from_wit(mac), ip(dst))));
        if result.is_ok() {
            self.held.fdb.remove(&(dev, mac_from_wit(mac).0));
        }
        Ok(result)
    }
}
