//! `twill:backend/links`: devices the plugin creates and owns.

use twill_core::MacAddr;
use twill_net::{IpipInfo, IpipSpec, Kernel, LinkInfo, NetError, VxlanInfo, VxlanSpec};

use crate::bindings::Error;
use crate::bindings::twill::backend::links::{
    Host, IpipSpec as WitIpipSpec, Link, VxlanSpec as WitVxlanSpec,
};
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

/// flannel keeps an existing `flannel.ipip` whose local address is right and whose
/// remote is any, and so does twill. A device bound to no underlay (as flannel creates
/// it: `netlink.Iptun` without `Link`) is kept too, so a flannel node's tunnel is
/// adopted without cutting traffic; one bound to another device is recreated.
fn ipip_compatible(have: Option<&IpipInfo>, want: &IpipSpec) -> bool {
    have.is_some_and(|i| {
        i.local == Some(want.local)
            && i.remote.is_none()
            && (i.underlay.is_none() || i.underlay == Some(want.underlay))
    })
}

pub(crate) fn to_link(info: &LinkInfo) -> Link {
    Link {
        index: info.index,
        name: info.name.clone(),
        mac: mac_to_wit(info.mac.unwrap_or(MacAddr([0; 6]))),
        mtu: info.mtu,
    }
}

impl PluginState {
    /// Whether a plugin may create a device called `name`: a valid name, not the host's
    /// own interface, starting with [`DEVICE_PREFIX`].
    pub(crate) fn check_device_name(&self, cap: &'static str, name: &str) -> Result<(), Error> {
        if !valid_ifname(name) {
            return Err(Error::Invalid(format!(
                "{name:?} is not a valid device name"
            )));
        }
        if name == self.grant.external.name || name == "lo" {
            return self.deny(cap, format!("device {name} is the host's own interface"));
        }
        if !name.starts_with(DEVICE_PREFIX) {
            return self.deny(
                cap,
                format!("device name {name} does not start with {DEVICE_PREFIX:?}; other devices are not twill's"),
            );
        }
        Ok(())
    }

    fn ensure_vxlan_checked(&mut self, spec: WitVxlanSpec) -> Result<Link, Error> {
        let name = spec.name;
        self.check_device_name(CAP, &name)?;
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
        self.check_underlay("vxlan", spec.underlay)?;
        // Security review L-2: no squatting on another service's port, no learning of
        // FDB entries from whoever sends to the port.
        if !self.grant.ports.contains(&spec.port) {
            return self.deny(
                CAP,
                format!(
                    "vxlan port {} is not the config's Port (allowed: {:?})",
                    spec.port, self.grant.ports
                ),
            );
        }
        if spec.learning {
            return self.deny(
                CAP,
                "vxlan learning would take FDB entries from any sender on the underlay",
            );
        }
        let want = VxlanSpec {
            name: name.clone(),
            vni: spec.vni,
            port: spec.port,
            local: self.vxlan_source(),
            underlay: spec.underlay,
            learning: spec.learning,
            mac: spec
                .mac
                .map(mac_from_wit)
                .unwrap_or_else(|| MacAddr::random_local(&mut rand::rng())),
        };
        self.create_or_adopt(
            &name,
            "vxlan",
            |link| compatible(link.vxlan.as_ref(), &want),
            |kernel| kernel.create_vxlan(&want),
        )
    }

    /// The address a vxlan device sends from, for a plugin that asked for the public
    /// IP: the public IP when it is one of this node's addresses (flannel since
    /// v0.27.4), else the interface's address. A public IP that is not local is a NAT
    /// in front of the node, and the kernel cannot send from it: every encapsulated
    /// packet would fail. Peers still send to the public IP, which the NAT maps here.
    fn vxlan_source(&mut self) -> std::net::Ipv4Addr {
        let public = self.grant.public_ip;
        let external = self.grant.external.addr;
        if public == external {
            return public;
        }
        let local = self
            .kernel
            .addrs()
            .map(|addrs| addrs.iter().any(|a| a.addr == public));
        match local {
            Ok(true) => public,
            Ok(false) => {
                tracing::debug!(
                    plugin = %self.plugin, %public, %external,
                    "the public IP is not this node's (NAT): vxlan sends from the interface address"
                );
                external
            }
            Err(e) => {
                tracing::warn!(plugin = %self.plugin, "cannot list addresses: {e}; vxlan sends from the public IP");
                public
            }
        }
    }

    /// A tunnel device's underlay must be the node's external interface.
    fn check_underlay(&self, kind: &str, underlay: u32) -> Result<(), Error> {
        if underlay == self.grant.external.index {
            return Ok(());
        }
        self.deny(
            CAP,
            format!(
                "{kind} underlay {underlay} is not the external interface {}",
                self.grant.external.name
            ),
        )
    }

    fn ensure_ipip_checked(&mut self, spec: WitIpipSpec) -> Result<Link, Error> {
        let name = spec.name;
        self.check_device_name(CAP, &name)?;
        let local = ip(spec.local);
        if local != self.grant.external.addr {
            return self.deny(
                CAP,
                format!(
                    "ipip local address {local} is not the address {} of the external interface {}",
                    self.grant.external.addr, self.grant.external.name
                ),
            );
        }
        self.check_underlay("ipip", spec.underlay)?;
        let want = IpipSpec {
            name: name.clone(),
            local,
            underlay: spec.underlay,
        };
        self.create_or_adopt(
            &name,
            "ipip",
            |link| ipip_compatible(link.ipip.as_ref(), &want),
            |kernel| kernel.create_ipip(&want),
        )
    }

    /// Claim `name` for this plugin, then keep an existing device of `kind` that is
    /// `compatible`, recreate an incompatible one, or `create` it; a device of another
    /// kind, or one another plugin owns, is denied. The device is the plugin's after.
    fn create_or_adopt(
        &mut self,
        name: &str,
        kind: &'static str,
        compatible: impl FnOnce(&LinkInfo) -> bool,
        create: impl FnOnce(&dyn Kernel) -> Result<LinkInfo, NetError>,
    ) -> Result<Link, Error> {
        let (held, ours) = self.devices.held_by(&self.plugin, name);
        if !ours && held >= crate::state::MAX_DEVICES {
            return self.deny(
                CAP,
                format!(
                    "this plugin holds {held} devices already, the most a plugin may (security review M-2)"
                ),
            );
        }
        if let Err(owner) = self.devices.claim(name, &self.plugin) {
            return self.deny(CAP, format!("device {name} belongs to plugin {owner}"));
        }
        let device = match self.existing(name, kind, compatible) {
            Ok(Some(link)) => Ok(link),
            Ok(None) => create(self.kernel.as_ref()).map_err(kernel_error),
            Err(e) => Err(e),
        };
        match device {
            Ok(info) => {
                self.owned.insert(info.index);
                Ok(to_link(&info))
            }
            Err(e) => {
                self.devices.release(name);
                Err(e)
            }
        }
    }

    /// The existing device `name` to keep, or `None` when it is to be created (an
    /// incompatible one is deleted first); a device of another kind is denied.
    fn existing(
        &mut self,
        name: &str,
        kind: &'static str,
        compatible: impl FnOnce(&LinkInfo) -> bool,
    ) -> Result<Option<LinkInfo>, Error> {
        match self.kernel.link_by_name(name).map_err(kernel_error)? {
            Some(link) if link.kind.as_deref() != Some(kind) => self.deny(
                CAP,
                format!(
                    "device {name} exists and is not a {kind} device ({:?})",
                    link.kind
                ),
            ),
            Some(link) if compatible(&link) => {
                tracing::info!(plugin = %self.plugin, device = %name, "keeping existing {kind} device");
                Ok(Some(link))
            }
            Some(link) => {
                let have = match (&link.vxlan, &link.ipip) {
                    (Some(v), _) => format!("{v:?}"),
                    (_, Some(i)) => format!("{i:?}"),
                    _ => "no attributes".to_owned(),
                };
                tracing::info!(
                    plugin = %self.plugin, device = %name,
                    "existing {kind} device has other attributes ({have}); recreating it"
                );
                self.kernel.delete_link(link.index).map_err(kernel_error)?;
                Ok(None)
            }
            None => {
                tracing::info!(plugin = %self.plugin, device = %name, "creating {kind} device");
                Ok(None)
            }
        }
    }
}

impl Host for PluginState {
    fn ensure_vxlan(&mut self, spec: WitVxlanSpec) -> wasmtime::Result<Result<Link, Error>> {
        Ok(self.ensure_vxlan_checked(spec))
    }

    fn ensure_ipip(&mut self, spec: WitIpipSpec) -> wasmtime::Result<Result<Link, Error>> {
        Ok(self.ensure_ipip_checked(spec))
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
