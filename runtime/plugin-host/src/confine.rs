//! What a data path's answers may make the host do, whatever the plugin says: send
//! only to a current peer's public IP on the port the plugin bound, and pass into the
//! TUN device only IPv4 packets from inside the cluster network to the node's own
//! subnet. The peer set follows the lease events the instance is given
//! ([`crate::Datapath::update`]), so the check cannot drift from what the plugin knows.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use twill_core::Subnet;
use twill_core::lease::LeaseEvent;

use crate::datapath::Endpoint;

/// The host's limits on one data-path instance's answers.
#[derive(Debug, Clone)]
pub struct Confinement {
    network: Subnet,
    own: Subnet,
    port: u16,
    /// Each peer's public IP, by subnet (what the events said last).
    leases: BTreeMap<Subnet, u32>,
    /// How many current leases have each public IP: two peers may announce one (a
    /// misconfiguration, or a forgery), and removing one must not evict the other.
    peers: HashMap<u32, usize>,
}

impl Confinement {
    /// For a node in `network` owning `own`, whose plugin bound `port`; no peers yet.
    pub fn new(network: Subnet, own: Subnet, port: u16) -> Confinement {
        Confinement {
            network,
            own,
            port,
            leases: BTreeMap::new(),
            peers: HashMap::new(),
        }
    }

    /// Follow lease events: an added lease's public IP becomes a destination, a removed
    /// one's stops being one.
    /// An event repeated (a resync sends every peer again) changes nothing.
    pub fn apply(&mut self, events: &[LeaseEvent]) {
        for e in events {
            let subnet = e.lease().subnet;
            if let Some(old) = self.leases.remove(&subnet) {
                self.release(old);
            }
            if let LeaseEvent::Added(l) = e {
                let ip = u32::from(l.attrs.public_ip);
                self.leases.insert(subnet, ip);
                *self.peers.entry(ip).or_default() += 1;
            }
        }
    }

    fn release(&mut self, ip: u32) {
        if let Some(n) = self.peers.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.peers.remove(&ip);
            }
        }
    }

    /// Whether a datagram may go to `ep`.
    pub fn to_peer_allowed(&self, ep: &Endpoint) -> bool {
        ep.port == self.port && self.peers.contains_key(&ep.ip)
    }

    /// Whether `packet`, decapsulated from a datagram `sender` sent, may be written
    /// into the TUN device (security review L-1): as [`Self::to_tun_allowed`], and the
    /// sender is a current peer whose subnet holds the packet's source (no datagram
    /// from a stranger, no peer speaking for another's pods).
    pub fn from_peer_allowed(&self, sender: u32, packet: &[u8]) -> bool {
        if !self.to_tun_allowed(packet) {
            return false;
        }
        let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        self.leases
            .iter()
            .any(|(subnet, ip)| *ip == sender && subnet.contains(src))
    }

    /// Whether `packet` may be written into the TUN device.
    pub fn to_tun_allowed(&self, packet: &[u8]) -> bool {
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            return false;
        }
        let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        self.network.contains(src) && self.own.contains(dst)
    }
}

#[cfg(test)]
mod tests {
    use twill_core::lease::{Expiry, Lease, LeaseAttrs};

    use super::*;

    fn lease(public_ip: [u8; 4]) -> Lease {
        lease_on("10.244.2.0/24", public_ip)
    }

    fn lease_on(subnet: &str, public_ip: [u8; 4]) -> Lease {
        Lease {
            subnet: subnet.parse().expect("subnet"),
            attrs: LeaseAttrs::new(Ipv4Addr::from(public_ip), "", None).expect("attrs"),
            expires: Expiry::Never,
        }
    }

    #[test]
    fn the_host_confines_what_a_data_path_may_do() {
        let mut limits = Confinement::new(
            "10.244.0.0/16".parse().expect("net"),
            "10.244.1.0/24".parse().expect("own"),
            8285,
        );
        limits.apply(&[LeaseEvent::Added(lease([192, 168, 0, 2]))]);
        let to = |ip: [u8; 4], port| Endpoint {
            ip: u32::from(Ipv4Addr::from(ip)),
            port,
        };
        assert!(limits.to_peer_allowed(&to([192, 168, 0, 2], 8285)));
        assert!(!limits.to_peer_allowed(&to([192, 168, 0, 2], 53)));
        assert!(!limits.to_peer_allowed(&to([8, 8, 8, 8], 8285)));
        let packet = |src: [u8; 4], dst: [u8; 4]| {
            let mut p = vec![0x45u8; 20];
            p[12..16].copy_from_slice(&src);
            p[16..20].copy_from_slice(&dst);
            p
        };
        assert!(limits.to_tun_allowed(&packet([10, 244, 2, 2], [10, 244, 1, 2])));
        assert!(!limits.to_tun_allowed(&packet([172, 16, 0, 1], [10, 244, 1, 2])));
        assert!(!limits.to_tun_allowed(&packet([10, 244, 2, 2], [10, 244, 3, 2])));
        assert!(!limits.to_tun_allowed(&[0x60; 40]));
        // Decapsulated: only from the peer whose subnet holds the source (L-1).
        let peer = u32::from(Ipv4Addr::new(192, 168, 0, 2));
        let stranger = u32::from(Ipv4Addr::new(192, 168, 0, 9));
        let from_peer = packet([10, 244, 2, 2], [10, 244, 1, 2]);
        assert!(limits.from_peer_allowed(peer, &from_peer));
        assert!(
            !limits.from_peer_allowed(stranger, &from_peer),
            "not a peer"
        );
        let spoofed = packet([10, 244, 3, 2], [10, 244, 1, 2]);
        assert!(limits.to_tun_allowed(&spoofed));
        assert!(
            !limits.from_peer_allowed(peer, &spoofed),
            "another subnet's source"
        );
        // A removed lease is no destination any more.
        limits.apply(&[LeaseEvent::Removed(lease([192, 168, 0, 2]))]);
        assert!(!limits.to_peer_allowed(&to([192, 168, 0, 2], 8285)));
    }

    #[test]
    fn two_peers_on_one_public_ip_and_repeated_events() {
        let mut limits = Confinement::new(
            "10.244.0.0/16".parse().expect("net"),
            "10.244.1.0/24".parse().expect("own"),
            8285,
        );
        let to = Endpoint {
            ip: u32::from(Ipv4Addr::new(192, 168, 0, 2)),
            port: 8285,
        };
        let (a, b) = (
            lease_on("10.244.2.0/24", [192, 168, 0, 2]),
            lease_on("10.244.3.0/24", [192, 168, 0, 2]),
        );
        // A resync hands every peer again: no double count.
        for _ in 0..2 {
            limits.apply(&[LeaseEvent::Added(a.clone()), LeaseEvent::Added(b.clone())]);
        }
        limits.apply(&[LeaseEvent::Removed(a.clone())]);
        assert!(limits.to_peer_allowed(&to), "b still announces the address");
        limits.apply(&[LeaseEvent::Removed(b.clone())]);
        assert!(!limits.to_peer_allowed(&to), "no lease announces it now");
        // A peer whose address changed is reachable at the new one only.
        limits.apply(&[LeaseEvent::Added(a.clone())]);
        limits.apply(&[LeaseEvent::Added(lease_on(
            "10.244.2.0/24",
            [192, 168, 0, 9],
        ))]);
        assert!(!limits.to_peer_allowed(&to));
    }
}
