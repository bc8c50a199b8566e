//! The set of remote leases a node knows, and the events that change it. Like flannel's
//! `lease.LeaseWatcher`: it filters out the node's own subnet, answers a removal with the
//! stored lease (a delete from etcd carries no attributes, but a backend needs them to
//! tear down), and turns a fresh snapshot into the adds and removes it implies.

use std::collections::BTreeMap;

use crate::lease::{Lease, LeaseEvent};
use crate::subnet::Subnet;

/// Remote leases keyed by subnet.
#[derive(Debug, Default, Clone)]
pub struct PeerSet {
    own: Option<Subnet>,
    leases: BTreeMap<Subnet, Lease>,
}

impl PeerSet {
    /// An empty set that ignores `own` (the node's own subnet).
    pub fn new(own: Subnet) -> Self {
        Self {
            own: Some(own),
            leases: BTreeMap::new(),
        }
    }

    /// The remote leases, ordered by subnet.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Number of remote leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether no remote lease is known.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Apply store events; returns the events a backend must act on. A lease whose
    /// attributes changed becomes a removal of the old one and an addition of the new; a
    /// renewal (same attributes) produces nothing.
    pub fn apply(&mut self, events: impl IntoIterator<Item = LeaseEvent>) -> Vec<LeaseEvent> {
        let mut out = Vec::new();
        for event in events {
            let subnet = event.lease().subnet;
            if Some(subnet) == self.own {
                continue;
            }
            match event {
                LeaseEvent::Added(lease) => self.add(lease, &mut out),
                LeaseEvent::Removed(_) => {
                    if let Some(old) = self.leases.remove(&subnet) {
                        out.push(LeaseEvent::Removed(old));
                    }
                }
            }
        }
        out
    }

    fn add(&mut self, lease: Lease, out: &mut Vec<LeaseEvent>) {
        match self.leases.get_mut(&lease.subnet) {
            Some(old) if old.attrs == lease.attrs => old.expires = lease.expires,
            Some(old) => {
                let previous = std::mem::replace(old, lease.clone());
                out.push(LeaseEvent::Removed(previous));
                out.push(LeaseEvent::Added(lease));
            }
            None => {
                self.leases.insert(lease.subnet, lease.clone());
                out.push(LeaseEvent::Added(lease));
            }
        }
    }

    /// Replace the set with a full listing; returns the removals and additions that
    /// take the old set to the new one.
    pub fn reset(&mut self, snapshot: impl IntoIterator<Item = Lease>) -> Vec<LeaseEvent> {
        let fresh: BTreeMap<Subnet, Lease> = snapshot
            .into_iter()
            .filter(|l| Some(l.subnet) != self.own)
            .map(|l| (l.subnet, l))
            .collect();
        let gone: Vec<Subnet> = self
            .leases
            .keys()
            .filter(|s| !fresh.contains_key(s))
            .copied()
            .collect();
        let mut out = self.apply(
            gone.into_iter()
                .filter_map(|s| self.leases.get(&s).cloned().map(LeaseEvent::Removed))
                .collect::<Vec<_>>(),
        );
        out.extend(self.apply(fresh.into_values().map(LeaseEvent::Added)));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::lease::LeaseAttrs;

    fn lease(subnet: &str, ip: u8, mac: &str) -> Lease {
        Lease {
            subnet: subnet.parse().expect("subnet"),
            attrs: LeaseAttrs::new(
                Ipv4Addr::new(192, 168, 0, ip),
                "vxlan",
                Some(&format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)),
            )
            .expect("attrs"),
            expires: None,
        }
    }

    #[test]
    fn filters_own_subnet_and_returns_stored_attrs_on_remove() {
        let mut set = PeerSet::new("10.244.1.0/24".parse().expect("subnet"));
        let own = lease("10.244.1.0/24", 1, "02:00:00:00:00:01");
        let peer = lease("10.244.2.0/24", 2, "02:00:00:00:00:02");
        let out = set.apply([LeaseEvent::Added(own), LeaseEvent::Added(peer.clone())]);
        assert_eq!(out, vec![LeaseEvent::Added(peer.clone())]);
        // A delete from etcd knows only the subnet.
        let mut bare = peer.clone();
        bare.attrs = LeaseAttrs::new(Ipv4Addr::UNSPECIFIED, "", None).expect("attrs");
        assert_eq!(
            set.apply([LeaseEvent::Removed(bare.clone())]),
            vec![LeaseEvent::Removed(peer)]
        );
        assert!(
            set.apply([LeaseEvent::Removed(bare)]).is_empty(),
            "unknown removal is dropped"
        );
    }

    #[test]
    fn renewal_is_silent_and_change_is_remove_then_add() {
        let mut set = PeerSet::new("10.244.1.0/24".parse().expect("subnet"));
        let peer = lease("10.244.2.0/24", 2, "02:00:00:00:00:02");
        set.apply([LeaseEvent::Added(peer.clone())]);
        assert!(set.apply([LeaseEvent::Added(peer.clone())]).is_empty());
        let moved = lease("10.244.2.0/24", 2, "02:00:00:00:00:99");
        assert_eq!(
            set.apply([LeaseEvent::Added(moved.clone())]),
            vec![LeaseEvent::Removed(peer), LeaseEvent::Added(moved)]
        );
    }

    #[test]
    fn reset_diffs_against_snapshot() {
        let mut set = PeerSet::new("10.244.1.0/24".parse().expect("subnet"));
        let a = lease("10.244.2.0/24", 2, "02:00:00:00:00:02");
        let b = lease("10.244.3.0/24", 3, "02:00:00:00:00:03");
        let c = lease("10.244.4.0/24", 4, "02:00:00:00:00:04");
        set.apply([LeaseEvent::Added(a.clone()), LeaseEvent::Added(b.clone())]);
        let out = set.reset([b, c.clone()]);
        assert_eq!(out, vec![LeaseEvent::Removed(a), LeaseEvent::Added(c)]);
        assert_eq!(set.len(), 2);
    }
}
