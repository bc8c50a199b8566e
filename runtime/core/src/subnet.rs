//! IPv4 subnets: parsing, flannel's etcd key form (`10.244.1.0-24`), containment.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: an address with its host bits cleared, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    addr: Ipv4Addr,
    prefix: u8,
}

/// Why a subnet could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// The text is not `a.b.c.d/len`.
    #[error("{0:?} is not an IPv4 CIDR (expected a.b.c.d/len)")]
    Syntax(String),
    /// The prefix length is above 32.
    #[error("prefix length {0} is above 32")]
    PrefixTooLong(u8),
    /// The address has bits set beyond the prefix.
    #[error("{addr}/{prefix} has host bits set (the network is {network})")]
    HostBits {
        /// The address as given.
        addr: Ipv4Addr,
        /// The prefix as given.
        prefix: u8,
        /// What the network would be with the host bits cleared.
        network: Subnet,
    },
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl Subnet {
    /// A subnet from an address whose host bits must be clear.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, SubnetError> {
        if prefix > 32 {
            return Err(SubnetError::PrefixTooLong(prefix));
        }
        let network = Self::containing(addr, prefix)?;
        if network.addr != addr {
            return Err(SubnetError::HostBits {
                addr,
                prefix,
                network,
            });
        }
        Ok(network)
    }

    /// The subnet of length `prefix` that contains `addr` (host bits cleared).
    pub fn containing(addr: Ipv4Addr, prefix: u8) -> Result<Self, SubnetError> {
        if prefix > 32 {
            return Err(SubnetError::PrefixTooLong(prefix));
        }
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    /// The /32 holding exactly `addr`.
    pub fn host(addr: Ipv4Addr) -> Self {
        Self { addr, prefix: 32 }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses in the subnet.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The last address in the subnet (the broadcast address).
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.prefix))
    }

    /// The first usable address: network + 1, as flannel writes `FLANNEL_SUBNET`.
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(1))
    }

    /// Whether `ip` lies in this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    /// Whether this is a lease key of `network` whose leases are `/len`: inside the
    /// network and exactly that long. The one rule every reader of leases applies (the
    /// allocator, the peer set): anything else is no lease of this network, never
    /// blocks an allocation and never reaches a backend.
    pub fn is_lease_of(&self, network: &Subnet, len: u8) -> bool {
        self.prefix() == len && network.contains_subnet(self)
    }

    /// Whether `other` lies entirely in this subnet.
    pub fn contains_subnet(&self, other: &Subnet) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains_subnet(other) || other.contains_subnet(self)
    }

    /// The subnet of the same length right after this one, if the address space has one.
    pub fn next(&self) -> Option<Subnet> {
        let next = u64::from(u32::from(self.addr)) + self.size();
        let next = u32::try_from(next).ok()?;
        Some(Subnet {
            addr: Ipv4Addr::from(next),
            prefix: self.prefix,
        })
    }

    /// flannel's etcd key form: `10.244.1.0-24`.
    pub fn key(&self) -> String {
        format!("{}-{}", self.addr, self.prefix)
    }

    /// Parse flannel's etcd key form. A dual-stack key (`10.244.1.0-24&fc00::-64`) yields
    /// its IPv4 part; twill is IPv4-only.
    pub fn from_key(key: &str) -> Result<Self, SubnetError> {
        let v4 = key.split('&').next().unwrap_or(key);
        let (addr, prefix) = v4
            .rsplit_once('-')
            .ok_or_else(|| SubnetError::Syntax(key.to_owned()))?;
        Self::parse_parts(addr, prefix, key)
    }

    fn parse_parts(addr: &str, prefix: &str, whole: &str) -> Result<Self, SubnetError> {
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| SubnetError::Syntax(whole.to_owned()))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| SubnetError::Syntax(whole.to_owned()))?;
        Self::new(addr, prefix)
    }
}

impl FromStr for Subnet {
    type Err = SubnetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| SubnetError::Syntax(s.to_owned()))?;
        Self::parse_parts(addr, prefix, s)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Subnet {
        text.parse().expect("valid subnet")
    }

    #[test]
    fn parses_and_formats() {
        assert_eq!(s("10.244.1.0/24").to_string(), "10.244.1.0/24");
        assert_eq!(s("10.244.1.0/24").key(), "10.244.1.0-24");
        assert_eq!(Subnet::from_key("10.244.1.0-24"), Ok(s("10.244.1.0/24")));
        assert_eq!(
            Subnet::from_key("10.244.1.0-24&fc00::-64"),
            Ok(s("10.244.1.0/24"))
        );
        assert!(matches!(
            "10.244.1.1/24".parse::<Subnet>(),
            Err(SubnetError::HostBits { .. })
        ));
        assert!("10.244.1.0".parse::<Subnet>().is_err());
        assert!("10.244.1.0/33".parse::<Subnet>().is_err());
        assert!(Subnet::from_key("garbage").is_err());
    }

    #[test]
    fn containment_and_overlap() {
        let net = s("10.244.0.0/16");
        assert!(net.contains_subnet(&s("10.244.3.0/24")));
        assert!(!net.contains_subnet(&s("10.245.0.0/24")));
        assert!(!net.contains_subnet(&s("10.0.0.0/8")));
        assert!(s("10.0.0.0/8").overlaps(&net));
        assert!(!s("10.244.1.0/24").overlaps(&s("10.244.2.0/24")));
        assert_eq!(
            s("10.244.1.0/24").first_host(),
            Ipv4Addr::new(10, 244, 1, 1)
        );
        assert_eq!(s("10.244.1.0/24").last(), Ipv4Addr::new(10, 244, 1, 255));
        assert_eq!(s("10.244.1.0/24").next(), Some(s("10.244.2.0/24")));
        assert_eq!(s("255.255.255.0/24").next(), None);
    }
}
