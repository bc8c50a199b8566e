//! `twill:backend/datapath-host`: the TUN device and UDP socket of a userspace data
//! path. The host opens and keeps them (in [`DatapathSlots`], shared by every instance
//! of the host so a resync or a restarted instance gets the same descriptors); the
//! daemon's data-path threads read and write them.

use std::net::SocketAddrV4;

use crate::bindings::Error;
use crate::bindings::twill::backend::datapath_host::Host;
use crate::bindings::twill::backend::links::Link;
use crate::imports::links::to_link;
use crate::state::{DatapathResources, PluginState, kernel_error};

const CAP: &str = "datapath-host";

impl PluginState {
    fn open_tun_checked(&mut self, name: String) -> Result<Link, Error> {
        if self.describing {
            return self.deny(CAP, "describe() must not call the host");
        }
        self.check_device_name(CAP, &name)?;
        let mut slots = self.datapath.lock();
        let held = slots.get(&self.plugin).and_then(|r| r.tun.clone());
        if let Some(tun) = held {
            if tun.link.name == name {
                // Refresh what the kernel says now (MTU, up), keep the descriptor.
                match self.kernel.link_by_index(tun.link.index) {
                    Ok(Some(now)) if now.name == name => {
                        self.owned.insert(now.index);
                        return Ok(to_link(&now));
                    }
                    Err(_) => {
                        self.owned.insert(tun.link.index);
                        return Ok(to_link(&tun.link));
                    }
                    // Deleted (or renamed) under us (security review L-5): its
                    // descriptor is dead; open the device again below.
                    Ok(_) => {
                        tracing::warn!(
                            plugin = %self.plugin, device = %name, index = tun.link.index,
                            "the TUN device is gone; opening it again"
                        );
                        self.owned.remove(&tun.link.index);
                        if let Some(r) = slots.get_mut(&self.plugin) {
                            r.tun = None;
                        }
                    }
                }
            } else {
                drop(slots);
                return self.deny(
                    CAP,
                    format!(
                        "this plugin already holds TUN device {}; one per plugin",
                        tun.link.name
                    ),
                );
            }
        }
        if let Err(owner) = self.devices.claim(&name, &self.plugin) {
            drop(slots);
            return self.deny(CAP, format!("device {name} belongs to plugin {owner}"));
        }
        match self.kernel.open_tun(&name) {
            Ok(device) => {
                tracing::info!(plugin = %self.plugin, device = %name, index = device.link.index, "opened TUN device");
                self.owned.insert(device.link.index);
                let link = to_link(&device.link);
                slots.entry(self.plugin.clone()).or_default().tun = Some(device);
                Ok(link)
            }
            Err(e) => {
                self.devices.release(&name);
                Err(kernel_error(e))
            }
        }
    }

    fn bind_udp_checked(&mut self, port: u16) -> Result<(), Error> {
        if self.describing {
            return self.deny(CAP, "describe() must not call the host");
        }
        if port == 0 {
            return Err(Error::Invalid(
                "UDP port 0 is not a port peers can send to".into(),
            ));
        }
        if !self.grant.ports.contains(&port) {
            return self.deny(
                CAP,
                format!(
                    "UDP port {port} is not the config's Port (allowed: {:?})",
                    self.grant.ports
                ),
            );
        }
        let addr = SocketAddrV4::new(self.grant.external.addr, port);
        let mut slots = self.datapath.lock();
        let entry: &mut DatapathResources = slots.entry(self.plugin.clone()).or_default();
        if entry.udp.as_ref().is_some_and(|(a, _)| *a == addr) {
            return Ok(());
        }
        let socket = self.kernel.bind_udp(addr).map_err(kernel_error)?;
        tracing::info!(plugin = %self.plugin, %addr, "bound data-path UDP socket");
        entry.udp = Some((addr, socket));
        Ok(())
    }
}

impl Host for PluginState {
    fn open_tun(&mut self, name: String) -> wasmtime::Result<Result<Link, Error>> {
        Ok(self.open_tun_checked(name))
    }

    fn bind_udp(&mut self, port: u16) -> wasmtime::Result<Result<(), Error>> {
        Ok(self.bind_udp_checked(port))
    }
}

#[cfg(test)]
mod tests {
    use twill_net::Kernel;
    use twill_net::fake::Call;

    use super::*;
    use crate::bindings::twill::backend::routes::{Host as _, Route};
    use crate::imports::tests::{denied, kernel, state};
    use crate::state::DeviceRegistry;

    #[test]
    fn the_tun_device_is_opened_once_and_owned() {
        let k = kernel();
        let mut s = state(k.clone(), DeviceRegistry::default(), "udp");
        let link = s
            .open_tun("flannel0".into())
            .expect("no trap")
            .expect("open");
        // A resync asks again: the same device, no second open.
        let again = s
            .open_tun("flannel0".into())
            .expect("no trap")
            .expect("again");
        assert_eq!(link.index, again.index);
        let opens = k
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::OpenTun(_)))
            .count();
        assert_eq!(opens, 1);
        // The whole network may be routed to it (and only to it).
        let network = Route {
            dst: crate::bindings::Subnet {
                addr: u32::from(std::net::Ipv4Addr::new(10, 244, 0, 0)),
                prefix: 16,
            },
            gateway: None,
            dev: link.index,
            onlink: false,
        };
        s.replace(network)
            .expect("no trap")
            .expect("network route to the TUN");
        let eth0 = k.link_by_name("eth0").expect("fake").expect("eth0").index;
        let reason = denied(s.replace(Route {
            dev: eth0,
            ..network
        }));
        assert!(reason.contains("whole network"), "{reason}");
        assert!(s.bind_udp(8285).expect("no trap").is_ok());
        assert!(s.bind_udp(8285).expect("no trap").is_ok());
        let binds = k
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::BindUdp(_)))
            .count();
        assert_eq!(binds, 1);
    }

    #[test]
    fn tun_names_and_ports_are_checked() {
        let k = kernel();
        let devices = DeviceRegistry::default();
        let mut s = state(k.clone(), devices.clone(), "udp");
        assert!(denied(s.open_tun("eth0".into())).contains("host's own interface"));
        assert!(denied(s.open_tun("tun0".into())).contains("does not start with"));
        assert!(matches!(s.bind_udp(0), Ok(Err(Error::Invalid(_)))));
        // A device name another plugin owns.
        let mut other = state(k.clone(), devices, "other");
        other
            .open_tun("flannel0".into())
            .expect("no trap")
            .expect("open");
        assert!(denied(s.open_tun("flannel0".into())).contains("belongs to plugin other"));
        assert_eq!(s.stats.denied().get(CAP), Some(&3));
        assert!(
            !k.calls()
                .iter()
                .any(|c| matches!(c, Call::OpenTun(n) if n == "tun0"))
        );
    }
}
