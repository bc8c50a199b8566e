//! Acquiring this node's lease as flannel's `LocalManager.tryAcquireLease` does, but
//! retrying a lost create race (flannel exits on it: its retry test never matches the
//! error its own create returns).

use tracing::{info, warn};
use twill_core::acquire::{Action, Exhausted, plan};
use twill_core::config::Config;
use twill_core::lease::{Expiry, Lease, LeaseAttrs};
use twill_core::subnet::Subnet;

use crate::keys::placeholder_attrs;
use crate::{Created, LEASE_TTL, LeaseStore, StoreError};

/// flannel's `raceRetries`: how many times a lost create race is retried.
pub const RACE_RETRIES: u32 = 10;

/// The lease this node now holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// The lease as written: our attributes, and its expiry (`None` for a
    /// reservation, which has no TTL).
    pub lease: Lease,
}

/// Why no lease could be acquired.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Every subnet is leased.
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
    /// Other nodes took the chosen subnet first, every time.
    #[error("lost the race for a free subnet {tries} times in a row")]
    RaceLost {
        /// How many creates were lost.
        tries: u32,
    },
}

/// Hold a lease for `attrs.public_ip`: renew the lease that already has our public IP,
/// else create one on `previous` (the subnet from subnet.env) if it is free, else on a
/// random free subnet. Leases with our IP that no longer fit `config` are deleted.
pub async fn acquire<S: LeaseStore>(
    store: &S,
    config: &Config,
    attrs: &LeaseAttrs,
    previous: Option<Subnet>,
) -> Result<Acquired, AcquireError> {
    acquire_listed(store, config, attrs, previous, None).await
}

/// [`acquire`], whose first try chooses from `listed`, leases the caller has just
/// listed (a node's start reads them anyway), instead of listing them again.
pub async fn acquire_listed<S: LeaseStore>(
    store: &S,
    config: &Config,
    attrs: &LeaseAttrs,
    previous: Option<Subnet>,
    mut listed: Option<Vec<Lease>>,
) -> Result<Acquired, AcquireError> {
    // Subnets whose create we lost: their keys exist even if a listing does not show
    // them (a value that does not parse is skipped there), so they are not tried again.
    let mut occupied: Vec<Lease> = Vec::new();
    for attempt in 1..=RACE_RETRIES {
        let mut leases = match listed.take() {
            Some(leases) => leases,
            None => store.list_holders().await?.0,
        };
        if attempt == 1 {
            for l in leases.iter().filter(|l| !config.is_lease(&l.subnet)) {
                warn!(
                    key = %l.subnet.key(), public_ip = %l.attrs.public_ip,
                    "ignoring a key that is no /{} lease of {}: it takes no subnet",
                    config.subnet_len, config.network
                );
            }
        }
        leases.extend(
            occupied
                .iter()
                .filter(|o| leases.iter().all(|l| l.subnet != o.subnet))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let plan = plan(config, &leases, attrs.public_ip, previous, &mut rand::rng())?;
        for subnet in plan.stale {
            info!(%subnet, "deleting our lease that no longer fits the network config");
            store.delete_lease(subnet).await?;
        }
        let subnet = match plan.action {
            Action::Renew(lease) => {
                let expires = store.renew_lease(lease.subnet, attrs, LEASE_TTL).await?;
                info!(subnet = %lease.subnet, reservation = expires.is_none(), "reusing our lease");
                return Ok(Acquired {
                    lease: Lease {
                        subnet: lease.subnet,
                        attrs: attrs.clone(),
                        expires: expires.into(),
                    },
                });
            }
            Action::Create(subnet) => subnet,
        };
        match store.create_lease(subnet, attrs, LEASE_TTL).await? {
            Created::Won(expires) => {
                info!(%subnet, "acquired a new lease");
                return Ok(Acquired {
                    lease: Lease {
                        subnet,
                        attrs: attrs.clone(),
                        expires: Expiry::At(expires),
                    },
                });
            }
            Created::Lost => {
                warn!(
                    %subnet, attempt,
                    "the subnet's key exists (another node took it first, or it holds a \
                     value that does not parse); trying another"
                );
                occupied.push(Lease {
                    subnet,
                    attrs: placeholder_attrs(),
                    expires: Expiry::Never,
                });
            }
        }
    }
    Err(AcquireError::RaceLost {
        tries: RACE_RETRIES,
    })
}
