//! `twill:backend/links`: devices the plugin creates and owns.

use twill_core::MacAddr;
use twill_net::{LinkInfo, VxlanInfo, VxlanSpec};

use crate::bindings::Error;
use crate::bindings::twill::backend::links::{Host, Link, VxlanSpec as WitVxlanSpec};
use crate::convert::{ip, mac_from_wit, mac_to_wit};
use crate::state::{PluginState, kernel_error};

const CAP: &str = "links";

/// Every device a plugin creates is named like flannel's (`flannel.1`, `flannel0`, …):
/// a flannel node's devices are adopted, and no other software's devices can be.
pub(crate) const DEVICE_PREFIX: &str = "flannel";

/// Linux's IFNAMSIZ − 1.
const MAX_IFNAME: usize = 15;

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

fn compatible(have: Option<&VxlanInfo>, want: &VxlanSpec) -> bool {
    have.is_some_and(|v| {
        v.vni == want.vni
            && v.port == want.port
            && v.local == Some(want.local)
            && v.underlay == Some(want.underlay)
            && v.learning == want.learning
    })
}

fn to_link(info: &LinkInfo) -> Link {
    Link {
        index: info.index,
        name: info.name.clone(),
        mac: mac_to_wit(info.mac.unwrap_or(MacAddr([0; 6]))),
        mtu: info.mtu,
    }
}

impl PluginState {
    fn ensure_vxlan_checked(&mut self, spec: WitVxlanSpec) -> Result<Link, Error> {
        let name = spec.name;
        if !valid_ifname(&name) {
            return Err(Error::Invalid(format!(
                "{name:?} is not a valid device name"
            )));
        }
        if name == self.grant.external.name || name == "lo" {
            return self.deny(CAP, format!("device {name} is the host's own interface"));
        }
        if !name.starts_with(DEVICE_PREFIX) {
            return self.deny(
                CAP,
                format!("device name {name} does not start with {DEVICE_PREFIX:?}; other devices are not twill's"),
            );
        }
        if ip(spec.local) != self.grant.public_ip {
            return self.deny(
                CAP,
                format!(
                    "vxlan local address {} is not the node's public IP {}",
                    ip(spec.local),
                    self.grant.public_ip
                ),
            );
        }
        if spec.underlay != self.grant.external.index {
            return self.deny(
                CAP,
                format!(
                    "vxlan underlay {} is not the external interface {}",
                    spec.underlay, self.grant.external.name
                ),
            );
        }
        if let Err(owner) = self.devices.claim(&name, &self.plugin) {
            return self.deny(CAP, format!("device {name} belongs to plugin {owner}"));
        }
        let want = VxlanSpec {
            name: name.clone(),
            vni: spec.vni,
            port: spec.port,
            local: ip(spec.local),
            underlay: spec.underlay,
            learning: spec.learning,
            mac: spec
                .mac
                .map(mac_from_wit)
                .unwrap_or_else(|| MacAddr::random_local(&mut rand::rng())),
        };
        let result = self.create_or_adopt(&want);
        if result.is_err() {
            self.devices.release(&name);
        }
        result
    }

    fn create_or_adopt(&mut self, want: &VxlanSpec) -> Result<Link, Error> {
        let existing = self.kernel.link_by_name(&want.name).map_err(kernel_error)?;
        let info = match existing {
            Some(link) if link.kind.as_deref() != Some("vxlan") => {
                return self.deny(
                    CAP,
                    format!(
                        "device {} exists and is not a vxlan device ({:?})",
                        want.name, link.kind
                    ),
                );
            }
            Some(link) if compatible(link.vxlan.as_ref(), want) => {
                tracing::info!(plugin = %self.plugin, device = %want.name, "keeping existing vxlan device");
                link
            }
            Some(link) => {
                tracing::info!(
                    plugin = %self.plugin, device = %want.name,
                    "existing vxlan device has other attributes ({:?}); recreating it", link.vxlan
                );
                self.kernel.delete_link(link.index).map_err(kernel_error)?;
                self.kernel.create_vxlan(want).map_err(kernel_error)?
            }
            None => {
                tracing::info!(plugin = %self.plugin, device = %want.name, vni = want.vni, "creating vxlan device");
                self.kernel.create_vxlan(want).map_err(kernel_error)?
            }
        };
        self.owned.insert(info.index);
        Ok(to_link(&info))
    }
}

impl Host for PluginState {
    fn ensure_vxlan(&mut self, spec: WitVxlanSpec) -> wasmtime::Result<Result<Link, Error>> {
        Ok(self.ensure_vxlan_checked(spec))
    }

    fn set_up(&mut self, index: u32) -> wasmtime::Result<Result<(), Error>> {
        Ok(self
            .require_owned(CAP, index)
            .and_then(|()| self.kernel.set_link_up(index).map_err(kernel_error)))
    }

    fn set_mtu(&mut self, index: u32, mtu: u32) -> wasmtime::Result<Result<(), Error>> {
        if !(68..=65535).contains(&mtu) {
            return Ok(Err(Error::Invalid(format!(
                "MTU {mtu} is outside 68..=65535"
            ))));
        }
        Ok(self
            .require_owned(CAP, index)
            .and_then(|()| self.kernel.set_mtu(index, mtu).map_err(kernel_error)))
    }

    fn delete(&mut self, index: u32) -> wasmtime::Result<Result<(), Error>> {
        if let Err(e) = self.require_owned(CAP, index) {
            return Ok(Err(e));
        }
        let name = self
            .kernel
            .link_by_index(index)
            .ok()
            .flatten()
            .map(|l| l.name);
        let result = self.kernel.delete_link(index).map_err(kernel_error);
        if result.is_ok() {
            self.owned.remove(&index);
            if let Some(name) = name {
                self.devices.release(&name);
            }
        }
        Ok(result)
    }
}
