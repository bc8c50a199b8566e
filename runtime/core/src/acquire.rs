//! How a node picks its subnet, as flannel's `LocalManager.tryAcquireLease` does:
//! reuse the lease that already holds our public IP (if it still fits the config),
//! else the subnet from the previous subnet.env (if free and fitting), else a random
//! free subnet among the first 100 candidates between SubnetMin and SubnetMax.

use std::net::Ipv4Addr;

use rand::seq::IndexedRandom;

use crate::config::Config;
use crate::lease::Lease;
use crate::subnet::Subnet;

/// flannel collects at most this many free candidates before picking one at random.
pub const MAX_CANDIDATES: usize = 100;

/// What to do to hold a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Leases with our public IP that no longer fit the config: delete them first.
    pub stale: Vec<Subnet>,
    /// The lease to take.
    pub action: Action,
}

/// The lease to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Our lease already exists: overwrite it with fresh attributes and a new TTL.
    Renew(Lease),
    /// Create a lease on this free subnet (it may still be lost to a racing node).
    Create(Subnet),
}

/// No subnet is left to take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("out of subnets: every /{len} between {min} and {max} in {network} is leased")]
pub struct Exhausted {
    /// The cluster network.
    pub network: Subnet,
    /// SubnetLen.
    pub len: u8,
    /// SubnetMin.
    pub min: Ipv4Addr,
    /// SubnetMax.
    pub max: Ipv4Addr,
}

/// Decide how to acquire a lease given the current leases.
pub fn plan(
    config: &Config,
    leases: &[Lease],
    public_ip: Ipv4Addr,
    previous: Option<Subnet>,
    rng: &mut impl rand::Rng,
) -> Result<Plan, Exhausted> {
    let mut stale = Vec::new();
    let mut ours = None;
    for lease in leases.iter().filter(|l| l.attrs.public_ip == public_ip) {
        if ours.is_none() && config.fits(&lease.subnet) {
            ours = Some(lease.clone());
        } else if !config.fits(&lease.subnet) {
            stale.push(lease.subnet);
        }
    }
    if let Some(lease) = ours {
        return Ok(Plan {
            stale,
            action: Action::Renew(lease),
        });
    }
    // Only leases of this network's shape take subnets: a hand-written key covering
    // the whole network must not block every node.
    let taken = |s: &Subnet| {
        leases
            .iter()
            .any(|l| config.is_lease(&l.subnet) && l.subnet.overlaps(s))
    };
    if let Some(prev) = previous.filter(|p| config.fits(p) && !taken(p)) {
        return Ok(Plan {
            stale,
            action: Action::Create(prev),
        });
    }
    let free = free_candidates(config, leases);
    let pick = free.choose(rng).copied().ok_or(Exhausted {
        network: config.network,
        len: config.subnet_len,
        min: config.subnet_min,
        max: config.subnet_max,
    })?;
    Ok(Plan {
        stale,
        action: Action::Create(pick),
    })
}

/// Up to [`MAX_CANDIDATES`] free subnets from SubnetMin upwards; keys that are no
/// lease of this network ([`Config::is_lease`]) take nothing.
pub fn free_candidates(config: &Config, leases: &[Lease]) -> Vec<Subnet> {
    let mut out = Vec::new();
    let Ok(mut cur) = Subnet::new(config.subnet_min, config.subnet_len) else {
        return out;
    };
    while cur.addr() <= config.subnet_max && out.len() < MAX_CANDIDATES {
        if !leases
            .iter()
            .any(|l| config.is_lease(&l.subnet) && l.subnet.overlaps(&cur))
        {
            out.push(cur);
        }
        match cur.next() {
            Some(next) => cur = next,
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{Expiry, LeaseAttrs};

    fn cfg(text: &str) -> Config {
        Config::parse(text).expect("valid config")
    }

    fn lease(subnet: &str, ip: [u8; 4]) -> Lease {
        Lease {
            subnet: subnet.parse().expect("subnet"),
            attrs: LeaseAttrs::new(Ipv4Addr::from(ip), "vxlan", None).expect("attrs"),
            expires: Expiry::Never,
        }
    }

    const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 9);

    #[test]
    fn reuses_the_lease_holding_our_public_ip() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let mine = lease("10.244.7.0/24", [192, 168, 0, 9]);
        let leases = vec![lease("10.244.1.0/24", [192, 168, 0, 1]), mine.clone()];
        let p = plan(
            &c,
            &leases,
            ME,
            Some("10.244.9.0/24".parse().expect("s")),
            &mut rand::rng(),
        )
        .expect("plan");
        assert_eq!(
            p,
            Plan {
                stale: vec![],
                action: Action::Renew(mine)
            }
        );
    }

    #[test]
    fn deletes_our_lease_when_it_no_longer_fits() {
        let c = cfg(r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#);
        let leases = vec![lease("10.244.7.0/24", [192, 168, 0, 9])];
        let p = plan(&c, &leases, ME, None, &mut rand::rng()).expect("plan");
        assert_eq!(p.stale, vec!["10.244.7.0/24".parse().expect("s")]);
        assert!(matches!(p.action, Action::Create(s) if s.prefix() == 25));
    }

    #[test]
    fn prefers_previous_subnet_when_free() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let prev: Subnet = "10.244.9.0/24".parse().expect("s");
        let p = plan(&c, &[], ME, Some(prev), &mut rand::rng()).expect("plan");
        assert_eq!(p.action, Action::Create(prev));
        let taken = vec![lease("10.244.9.0/24", [192, 168, 0, 1])];
        let p = plan(&c, &taken, ME, Some(prev), &mut rand::rng()).expect("plan");
        assert_ne!(
            p.action,
            Action::Create(prev),
            "a leased previous subnet is not reused"
        );
        let outside: Subnet = "10.9.9.0/24".parse().expect("s");
        let p = plan(&c, &[], ME, Some(outside), &mut rand::rng()).expect("plan");
        assert_ne!(p.action, Action::Create(outside));
    }

    #[test]
    fn allocates_free_subnets_only_and_skips_the_first() {
        let c = cfg(r#"{"Network":"10.5.0.0/26"}"#); // /28s: .0 skipped, .16 .32 .48
        let leases = vec![
            lease("10.5.0.16/28", [1, 1, 1, 1]),
            lease("10.5.0.48/28", [1, 1, 1, 2]),
        ];
        for _ in 0..20 {
            let p = plan(&c, &leases, ME, None, &mut rand::rng()).expect("plan");
            assert_eq!(p.action, Action::Create("10.5.0.32/28".parse().expect("s")));
        }
        assert_eq!(free_candidates(&c, &[]).len(), 3);
        let big = cfg(r#"{"Network":"10.0.0.0/8"}"#);
        assert_eq!(free_candidates(&big, &[]).len(), MAX_CANDIDATES);
    }

    #[test]
    fn exhausted_network_is_an_error() {
        let c = cfg(r#"{"Network":"10.5.0.0/26"}"#);
        let leases = vec![
            lease("10.5.0.16/28", [1, 1, 1, 1]),
            lease("10.5.0.32/28", [1, 1, 1, 2]),
            lease("10.5.0.48/28", [1, 1, 1, 3]),
        ];
        let e = plan(&c, &leases, ME, None, &mut rand::rng()).expect_err("exhausted");
        assert!(e.to_string().starts_with("out of subnets"), "{e}");
    }

    #[test]
    fn a_key_that_is_no_lease_of_the_network_blocks_nothing() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let hostile = vec![
            lease("10.244.0.0/16", [192, 168, 0, 66]),
            lease("10.244.0.0/20", [192, 168, 0, 67]),
        ];
        let p = plan(&c, &hostile, ME, None, &mut rand::rng()).expect("not exhausted");
        assert!(matches!(p.action, Action::Create(s) if c.fits(&s)));
        assert_eq!(free_candidates(&c, &hostile).len(), MAX_CANDIDATES);
        let prev: Subnet = "10.244.9.0/24".parse().expect("s");
        let p = plan(&c, &hostile, ME, Some(prev), &mut rand::rng()).expect("plan");
        assert_eq!(
            p.action,
            Action::Create(prev),
            "the previous subnet is still free"
        );
    }
}
