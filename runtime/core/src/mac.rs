//! Ethernet MAC addresses (VTEP MACs), in the `aa:bb:cc:dd:ee:ff` form flannel writes.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// The text is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")]
pub struct MacError(String);

impl MacAddr {
    /// A random unicast, locally administered address (as flannel's `pkg/mac` makes).
    pub fn random_local(rng: &mut impl rand::Rng) -> Self {
        let mut b: [u8; 6] = rng.random();
        b[0] = (b[0] & 0xfe) | 0x02;
        MacAddr(b)
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(|| MacError(s.to_owned()))?;
            if part.len() != 2 {
                return Err(MacError(s.to_owned()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacError(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(MacError(s.to_owned()));
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_random() {
        let m: MacAddr = "c6:d2:32:6f:8f:44".parse().expect("valid");
        assert_eq!(m.to_string(), "c6:d2:32:6f:8f:44");
        assert!("c6:d2:32:6f:8f".parse::<MacAddr>().is_err());
        assert!("c6:d2:32:6f:8f:44:00".parse::<MacAddr>().is_err());
        assert!("zz:d2:32:6f:8f:44".parse::<MacAddr>().is_err());
        let r = MacAddr::random_local(&mut rand::rng());
        assert_eq!(r.0[0] & 0x03, 0x02, "unicast and locally administered");
    }
}
