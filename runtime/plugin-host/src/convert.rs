//! Conversions between twill-core's types and the WIT types.

use std::net::Ipv4Addr;

use twill_core::lease::{Lease, LeaseEvent};
use twill_core::{MacAddr, Subnet};

use crate::bindings as wit;

pub(crate) fn ip(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v)
}

pub(crate) fn subnet_to_wit(s: Subnet) -> wit::Subnet {
    wit::Subnet {
        addr: u32::from(s.addr()),
        prefix: s.prefix(),
    }
}

/// A WIT subnet as a core subnet; `None` when the guest sent host bits or a bad prefix.
pub(crate) fn subnet_from_wit(s: wit::Subnet) -> Option<Subnet> {
    Subnet::new(ip(s.addr), s.prefix).ok()
}

pub(crate) fn mac_to_wit(m: MacAddr) -> (u8, u8, u8, u8, u8, u8) {
    let b = m.0;
    (b[0], b[1], b[2], b[3], b[4], b[5])
}

pub(crate) fn mac_from_wit(m: (u8, u8, u8, u8, u8, u8)) -> MacAddr {
    MacAddr([m.0, m.1, m.2, m.3, m.4, m.5])
}

pub(crate) fn lease_to_wit(l: &Lease) -> wit::Lease {
    wit::Lease {
        subnet: subnet_to_wit(l.subnet),
        public_ip: u32::from(l.attrs.public_ip),
        backend_type: l.attrs.backend_type.clone(),
        backend_data: l.attrs.backend_data.clone().unwrap_or_default(),
    }
}

pub(crate) fn event_to_wit(e: &LeaseEvent) -> wit::LeaseEvent {
    match e {
        LeaseEvent::Added(l) => wit::LeaseEvent::Added(lease_to_wit(l)),
        LeaseEvent::Removed(l) => wit::LeaseEvent::Removed(lease_to_wit(l)),
    }
}

/// The node record a plugin sees, from its grant.
pub(crate) fn node_to_wit(grant: &crate::Grant) -> wit::Node {
    wit::Node {
        public_ip: u32::from(grant.public_ip),
        iface: wit::Iface {
            name: grant.external.name.clone(),
            index: grant.external.index,
            mtu: grant.external.mtu,
            addr: u32::from(grant.external.addr),
        },
        network: subnet_to_wit(grant.network),
    }
}
