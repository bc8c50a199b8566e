//! The set of remote leases a node knows, and the events that change it. Like flannel's
//! `lease.LeaseWatcher`: it filters out the node's own subnet, answers a removal with the
//! stored lease (a delete from etcd carries no attributes, but a backend needs them to
//! tear down), and turns a fresh snapshot into the adds and removes it implies.
//!
//! It also owns the admission rule ([`PeerSet::check`]): a peer lease must be a
//! `SubnetLen` subnet inside the network that does not overlap ours, announce a
//! unicast, non-loopback PublicIP that is not ours, and carry at most
//! [`MAX_BACKEND_DATA`] bytes of BackendData (whose `VtepMAC`, if it is a MAC, is
//! unicast). Anything else (a hand-written key, a leftover of another config, a forgery)
//! never reaches a backend; it is returned as skipped, with why, so the caller can say
//! so.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::SystemTime;

use crate::lease::{Expiry, Lease, LeaseEvent};
use crate::subnet::Subnet;

/// The most BackendData a peer lease may carry, in bytes of its compact JSON. flannel's
/// backends publish tens of bytes (`{"VNI":1,"VtepMAC":"…"}`); the cap keeps a forged
/// lease from being handed to every plugin on every replay.
pub const MAX_BACKEND_DATA: usize = 4096;

/// Why a lease is no peer this node programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// Not a `SubnetLen` subnet inside the network.
    NotALease,
    /// Overlaps this node's own subnet.
    OverlapsOurs,
    /// PublicIP is no unicast address (unspecified, broadcast, multicast) or loopback.
    PublicIp,
    /// PublicIP is this node's own (only our own lease may have it).
    OurPublicIp,
    /// BackendData larger than [`MAX_BACKEND_DATA`].
    BackendDataTooLarge,
    /// BackendData's `VtepMAC` is a multicast or all-zero MAC.
    VtepMac,
}

impl Skip {
    /// A short reason (a log field, a metric label).
    pub fn reason(self) -> &'static str {
        match self {
            Skip::NotALease => "not_a_lease",
            Skip::OverlapsOurs => "overlaps_ours",
            Skip::PublicIp => "public_ip",
            Skip::OurPublicIp => "our_public_ip",
            Skip::BackendDataTooLarge => "backend_data_too_large",
            Skip::VtepMac => "vtep_mac",
        }
    }
}

/// Remote leases keyed by subnet.
#[derive(Debug, Clone)]
pub struct PeerSet {
    own: Subnet,
    network: Subnet,
    subnet_len: u8,
    own_ip: Ipv4Addr,
    leases: BTreeMap<Subnet, Lease>,
    /// Each lease's (PublicIP, subnet), kept with `leases`: one set, not a set per IP,
    /// which cost a node of its own per peer (~1.5 MB at 20,000 peers).
    by_ip: BTreeSet<(Ipv4Addr, Subnet)>,
    /// The PublicIPs more than one subnet announces: so that finding them costs nothing
    /// while there are none, however many peers there are.
    shared: BTreeSet<Ipv4Addr>,
}

/// What applying store events (or a snapshot) did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The events a backend must act on, in order.
    pub events: Vec<LeaseEvent>,
    /// Added leases that are no peer this node programs, and why ([`PeerSet::check`]).
    pub skipped: Vec<(Lease, Skip)>,
}

impl PeerSet {
    /// An empty set for the node owning `own` in `network`, whose leases are
    /// `/subnet_len`, reached at `own_ip`. Events for `own` itself are ignored.
    pub fn new(own: Subnet, network: Subnet, subnet_len: u8, own_ip: Ipv4Addr) -> Self {
        Self {
            own,
            network,
            subnet_len,
            own_ip,
            leases: BTreeMap::new(),
            by_ip: BTreeSet::new(),
            shared: BTreeSet::new(),
        }
    }

    /// The PublicIPs that several leases announce, each with those leases' subnets.
    pub fn shared_ips(&self) -> impl Iterator<Item = (Ipv4Addr, Vec<Subnet>)> + '_ {
        self.shared
            .iter()
            .map(|ip| (*ip, self.announcing(*ip).collect()))
    }

    /// The subnets whose leases announce `ip`, in order.
    fn announcing(&self, ip: Ipv4Addr) -> impl Iterator<Item = Subnet> + '_ {
        // The lowest subnet of all: 0.0.0.0/0.
        let lowest = Subnet::new(Ipv4Addr::UNSPECIFIED, 0).unwrap_or(self.network);
        self.by_ip
            .range((ip, lowest)..)
            .take_while(move |(i, _)| *i == ip)
            .map(|(_, s)| *s)
    }

    fn insert_lease(&mut self, lease: Lease) {
        let (ip, subnet) = (lease.attrs.public_ip, lease.subnet);
        if let Some(old) = self.leases.insert(subnet, lease) {
            self.unindex(old.attrs.public_ip, subnet);
        }
        self.by_ip.insert((ip, subnet));
        if self.announcing(ip).nth(1).is_some() {
            self.shared.insert(ip);
        }
    }

    fn remove_lease(&mut self, subnet: &Subnet) -> Option<Lease> {
        let old = self.leases.remove(subnet)?;
        self.unindex(old.attrs.public_ip, *subnet);
        Some(old)
    }

    fn unindex(&mut self, ip: Ipv4Addr, subnet: Subnet) {
        self.by_ip.remove(&(ip, subnet));
        if self.announcing(ip).nth(1).is_none() {
            self.shared.remove(&ip);
        }
    }

    /// Whether `lease` is a peer this node programs, or why not (see the module docs).
    pub fn check(&self, lease: &Lease) -> Result<(), Skip> {
        let ip = lease.attrs.public_ip;
        if !lease.subnet.is_lease_of(&self.network, self.subnet_len) {
            Err(Skip::NotALease)
        } else if lease.subnet.overlaps(&self.own) {
            Err(Skip::OverlapsOurs)
        } else if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback()
        {
            Err(Skip::PublicIp)
        } else if ip == self.own_ip {
            Err(Skip::OurPublicIp)
        } else {
            check_backend_data(lease.attrs.backend_data.as_deref())
        }
    }

    /// Whether `lease` is a peer this node programs ([`PeerSet::check`]).
    pub fn admits(&self, lease: &Lease) -> bool {
        self.check(lease).is_ok()
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

    /// The node moved to another subnet: from now on `own` is ours (and no peer);
    /// follow with [`PeerSet::reset`] on a fresh listing to get the changes.
    pub fn set_own(&mut self, own: Subnet) {
        self.own = own;
    }

    /// Apply store events; returns the events a backend must act on. A lease whose
    /// attributes changed becomes a removal of the old one and an addition of the new; a
    /// renewal (same attributes) produces nothing.
    /// An added lease that is not admitted is skipped (and reported).
    pub fn apply(&mut self, events: impl IntoIterator<Item = LeaseEvent>) -> Changes {
        let mut out = Changes::default();
        for event in events {
            let subnet = event.lease().subnet;
            if subnet == self.own {
                continue;
            }
            match event {
                LeaseEvent::Added(lease) => match self.check(&lease) {
                    Ok(()) => self.add(lease, &mut out.events),
                    Err(why) => {
                        // A peer whose lease turned invalid is no peer any more.
                        if let Some(old) = self.remove_lease(&subnet) {
                            out.events.push(LeaseEvent::Removed(old));
                        }
                        out.skipped.push((lease, why));
                    }
                },
                LeaseEvent::Removed(_) => {
                    if let Some(old) = self.remove_lease(&subnet) {
                        out.events.push(LeaseEvent::Removed(old));
                    }
                }
            }
        }
        out
    }

    /// Note expiries read after their leases were delivered (subnets not in the set
    /// are passed over).
    pub fn set_expiries(&mut self, expiries: &[(Subnet, SystemTime)]) {
        for (subnet, t) in expiries {
            if let Some(lease) = self.leases.get_mut(subnet) {
                lease.expires = Expiry::At(*t);
            }
        }
    }

    fn add(&mut self, lease: Lease, out: &mut Vec<LeaseEvent>) {
        match self.leases.get_mut(&lease.subnet) {
            Some(old) if old.attrs == lease.attrs => old.expires = lease.expires,
            Some(old) => {
                let previous = old.clone();
                self.insert_lease(lease.clone());
                out.push(LeaseEvent::Removed(previous));
                out.push(LeaseEvent::Added(lease));
            }
            None => {
                self.insert_lease(lease.clone());
                out.push(LeaseEvent::Added(lease));
            }
        }
    }

    /// Replace the set with a full listing; returns the removals and additions that
    /// take the old set to the new one.
    /// Leases the set does not admit are skipped (and reported).
    pub fn reset(&mut self, snapshot: impl IntoIterator<Item = Lease>) -> Changes {
        let mut skipped = Vec::new();
        let mut fresh = BTreeMap::new();
        for l in snapshot {
            if l.subnet == self.own {
                continue;
            }
            match self.check(&l) {
                Ok(()) => {
                    fresh.insert(l.subnet, l);
                }
                Err(why) => skipped.push((l, why)),
            }
        }
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
        out.events.extend(
            self.apply(fresh.into_values().map(LeaseEvent::Added))
                .events,
        );
        out.skipped = skipped;
        out
    }
}

/// BackendData within [`MAX_BACKEND_DATA`], whose `VtepMAC`, if it is a MAC, is unicast.
fn check_backend_data(data: Option<&str>) -> Result<(), Skip> {
    let Some(data) = data else { return Ok(()) };
    if data.len() > MAX_BACKEND_DATA {
        return Err(Skip::BackendDataTooLarge);
    }
    let value: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
    let mac = value
        .as_object()
        .and_then(|obj| crate::json::field(obj, "VtepMAC"))
        .and_then(serde_json::Value::as_str);
    // A MAC that is multicast or all zero is refused here; text that is no MAC at all is
    // the backend's to refuse (the peer then shows the backend's error).
    match mac.map(str::parse::<crate::MacAddr>) {
        Some(Ok(m)) if m.0[0] & 1 == 1 || m.0 == [0; 6] => Err(Skip::VtepMac),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::lease::LeaseAttrs;

    /// The set of the node owning `own` in 10.244.0.0/16 with /24 leases.
    fn set_for(own: &str) -> PeerSet {
        PeerSet::new(
            own.parse().expect("subnet"),
            "10.244.0.0/16".parse().expect("network"),
            24,
            Ipv4Addr::new(192, 168, 0, 1),
        )
    }

    fn lease(subnet: &str, ip: u8, mac: &str) -> Lease {
        Lease {
            subnet: subnet.parse().expect("subnet"),
            attrs: LeaseAttrs::new(
                Ipv4Addr::new(192, 168, 0, ip),
                "vxlan",
                Some(&format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)),
            )
            .expect("attrs"),
            expires: Expiry::Never,
        }
    }

    #[test]
    fn shared_public_ips_are_tracked_through_adds_changes_and_removals() {
        let mut set = set_for("10.244.1.0/24");
        let shared = |set: &PeerSet| -> Vec<(u8, Vec<String>)> {
            set.shared_ips()
                .map(|(ip, s)| (ip.octets()[3], s.iter().map(ToString::to_string).collect()))
                .collect()
        };
        set.apply([
            LeaseEvent::Added(lease("10.244.2.0/24", 7, "02:00:00:00:00:02")),
            LeaseEvent::Added(lease("10.244.3.0/24", 8, "02:00:00:00:00:03")),
        ]);
        assert!(shared(&set).is_empty());
        // 10.244.3.0 moves to .7: now shared.
        set.apply([LeaseEvent::Added(lease(
            "10.244.3.0/24",
            7,
            "02:00:00:00:00:03",
        ))]);
        assert_eq!(
            shared(&set),
            [(
                7,
                vec!["10.244.2.0/24".to_owned(), "10.244.3.0/24".to_owned()]
            )]
        );
        // A removal leaves one: no longer shared; the other's IP is free again.
        set.apply([LeaseEvent::Removed(lease(
            "10.244.2.0/24",
            7,
            "02:00:00:00:00:02",
        ))]);
        assert!(shared(&set).is_empty());
        set.apply([LeaseEvent::Added(lease(
            "10.244.4.0/24",
            8,
            "02:00:00:00:00:04",
        ))]);
        assert!(shared(&set).is_empty(), "8 was released by the move");
        // A full listing resets it too.
        set.reset([
            lease("10.244.5.0/24", 9, "02:00:00:00:00:05"),
            lease("10.244.6.0/24", 9, "02:00:00:00:00:06"),
        ]);
        assert_eq!(
            shared(&set),
            [(
                9,
                vec!["10.244.5.0/24".to_owned(), "10.244.6.0/24".to_owned()]
            )]
        );
    }

    #[test]
    fn filters_own_subnet_and_returns_stored_attrs_on_remove() {
        let mut set = set_for("10.244.1.0/24");
        let own = lease("10.244.1.0/24", 1, "02:00:00:00:00:01");
        let peer = lease("10.244.2.0/24", 2, "02:00:00:00:00:02");
        let out = set.apply([LeaseEvent::Added(own), LeaseEvent::Added(peer.clone())]);
        assert_eq!(out.events, vec![LeaseEvent::Added(peer.clone())]);
        // A delete from etcd knows only the subnet.
        let mut bare = peer.clone();
        bare.attrs = LeaseAttrs::new(Ipv4Addr::UNSPECIFIED, "", None).expect("attrs");
        assert_eq!(
            set.apply([LeaseEvent::Removed(bare.clone())]).events,
            vec![LeaseEvent::Removed(peer)]
        );
        assert!(
            set.apply([LeaseEvent::Removed(bare)]).events.is_empty(),
            "unknown removal is dropped"
        );
    }

    #[test]
    fn renewal_is_silent_and_change_is_remove_then_add() {
        let mut set = set_for("10.244.1.0/24");
        let peer = lease("10.244.2.0/24", 2, "02:00:00:00:00:02");
        set.apply([LeaseEvent::Added(peer.clone())]);
        assert!(
            set.apply([LeaseEvent::Added(peer.clone())])
                .events
                .is_empty()
        );
        let moved = lease("10.244.2.0/24", 2, "02:00:00:00:00:99");
        assert_eq!(
            set.apply([LeaseEvent::Added(moved.clone())]).events,
            vec![LeaseEvent::Removed(peer), LeaseEvent::Added(moved)]
        );
    }

    #[test]
    fn reset_diffs_against_snapshot() {
        let mut set = set_for("10.244.1.0/24");
        let a = lease("10.244.2.0/24", 2, "02:00:00:00:00:02");
        let b = lease("10.244.3.0/24", 3, "02:00:00:00:00:03");
        let c = lease("10.244.4.0/24", 4, "02:00:00:00:00:04");
        set.apply([LeaseEvent::Added(a.clone()), LeaseEvent::Added(b.clone())]);
        let out = set.reset([b, c.clone()]);
        assert_eq!(
            out.events,
            vec![LeaseEvent::Removed(a), LeaseEvent::Added(c)]
        );
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn only_subnetlen_subnets_inside_the_network_apart_from_ours_are_admitted() {
        let mut set = set_for("10.244.1.0/24");
        let peer = lease("10.244.2.0/24", 2, "02:00:00:00:00:02");
        let whole = lease("10.244.0.0/16", 3, "02:00:00:00:00:03");
        let outside = lease("10.9.2.0/24", 4, "02:00:00:00:00:04");
        let other_len = lease("10.244.4.0/25", 5, "02:00:00:00:00:05");
        let out =
            set.apply([&peer, &whole, &outside, &other_len].map(|l| LeaseEvent::Added(l.clone())));
        assert_eq!(out.events, vec![LeaseEvent::Added(peer.clone())]);
        let skipped: Vec<Lease> = out.skipped.into_iter().map(|(l, _)| l).collect();
        assert_eq!(skipped, vec![whole.clone(), outside.clone(), other_len]);
        // The same rule for a snapshot; the peer stays, nothing else gets in.
        let out = set.reset([peer, whole.clone(), outside]);
        assert!(out.events.is_empty());
        assert_eq!(out.skipped.len(), 2);
        assert_eq!(set.len(), 1);
        assert!(!set.admits(&whole));
    }

    #[test]
    fn leases_with_a_bad_public_ip_or_backend_data_are_skipped_with_why() {
        let mut set = set_for("10.244.1.0/24");
        let with_ip = |subnet: &str, ip: [u8; 4]| Lease {
            subnet: subnet.parse().expect("subnet"),
            attrs: LeaseAttrs::new(Ipv4Addr::from(ip), "vxlan", None).expect("attrs"),
            expires: Expiry::Never,
        };
        let big = format!(r#"{{"VNI":1,"Pad":"{}"}}"#, "x".repeat(MAX_BACKEND_DATA));
        let cases = [
            (with_ip("10.244.2.0/24", [127, 0, 0, 1]), Skip::PublicIp),
            (with_ip("10.244.3.0/24", [224, 0, 0, 1]), Skip::PublicIp),
            (with_ip("10.244.4.0/24", [0, 0, 0, 0]), Skip::PublicIp),
            (
                with_ip("10.244.5.0/24", [192, 168, 0, 1]),
                Skip::OurPublicIp,
            ),
            (
                lease("10.244.6.0/24", 6, "01:00:5e:00:00:01"),
                Skip::VtepMac,
            ),
            (
                lease("10.244.7.0/24", 7, "00:00:00:00:00:00"),
                Skip::VtepMac,
            ),
            (
                Lease {
                    attrs: LeaseAttrs::new(Ipv4Addr::new(192, 168, 0, 8), "vxlan", Some(&big))
                        .expect("attrs"),
                    ..with_ip("10.244.8.0/24", [192, 168, 0, 8])
                },
                Skip::BackendDataTooLarge,
            ),
        ];
        for (l, why) in &cases {
            assert_eq!(set.check(l), Err(*why), "{}", l.subnet);
        }
        let out = set.apply(cases.iter().map(|(l, _)| LeaseEvent::Added(l.clone())));
        assert!(out.events.is_empty());
        assert_eq!(out.skipped.len(), cases.len());
        // A peer whose lease turns invalid stops being one.
        let good = lease("10.244.9.0/24", 9, "02:00:00:00:00:09");
        set.apply([LeaseEvent::Added(good.clone())]);
        let mut bad = good.clone();
        bad.attrs.public_ip = Ipv4Addr::LOCALHOST;
        let out = set.apply([LeaseEvent::Added(bad)]);
        assert_eq!(out.events, vec![LeaseEvent::Removed(good)]);
        assert_eq!(out.skipped[0].1, Skip::PublicIp);
        assert!(set.is_empty());
    }

    /// Property (issue 14's bounded fuzzing): mutated lease values never panic the
    /// parser or the admission rule; what parses writes back to what it parsed.
    #[test]
    fn mutated_lease_values_parse_or_fail_cleanly() {
        use crate::lease::{Lease, LeaseAttrs};
        let seeds = [
            r#"{"PublicIP":"192.168.1.2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:42:ac:11:00:02"}}"#,
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}"#,
            r#"{"PublicIP":"172.16.0.9"}"#,
        ];
        let alphabet: &[u8] =
            b"{}[]:,\"\\0123456789.abcdefPublicIPBackendTypeDataVtepMAC-nulltruefalse \x00\xff";
        let set = set_for("10.244.1.0/24");
        let mut state: u64 = 0x6c65_6173_652d_667a;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..5_000u32 {
            let mut bytes = seeds[case as usize % seeds.len()].as_bytes().to_vec();
            for _ in 0..(1 + next() % 6) {
                let at = (next() as usize) % (bytes.len() + 1);
                match next() % 3 {
                    0 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    1 => bytes.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                    _ if at < bytes.len() => {
                        bytes[at] = alphabet[(next() as usize) % alphabet.len()]
                    }
                    _ => {}
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(attrs) = LeaseAttrs::from_json(&text) {
                let again = LeaseAttrs::from_json(&attrs.to_json())
                    .unwrap_or_else(|e| panic!("case {case}: {text} wrote back unparsable: {e}"));
                assert_eq!(again, attrs, "case {case}: {text}");
                let lease = Lease {
                    subnet: "10.244.2.0/24".parse().expect("subnet"),
                    attrs,
                    expires: Expiry::Never,
                };
                let _ = set.check(&lease);
            }
        }
    }
}
