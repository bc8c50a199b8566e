//! Our own lease: renewed a margin before it expires; taken back when it goes missing
//! from the store (deleted by hand, or expired during a long store outage) or its value
//! changes under us. Taking it back never touches kernel objects or `subnet.env`: the
//! same subnet is re-created with the same attributes (so the VTEP MAC stays), only if
//! the key is still absent (compare-and-swap). Only if another node took the subnet
//! meanwhile does the daemon stop, as flanneld does.

use std::time::{Duration, SystemTime};

use anyhow::bail;
use tokio::time::Instant;
use twill_api::StoreState;
use twill_core::error_chain;
use twill_core::lease::Lease;
use twill_store::{Created, LEASE_TTL, LeaseStore};

use crate::Node;

/// How long to wait before retrying a failed renewal (flannel: one minute).
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// How long to wait before trying again to re-create a missing lease.
const RECLAIM_RETRY: Duration = Duration::from_secs(5);

impl<S: LeaseStore> Node<S> {
    /// When the lease is due for renewal: its expiry less the margin.
    pub(super) fn renew_deadline(&self) -> Option<Instant> {
        let expires = self.own.lease.expires?;
        let wait = expires
            .checked_sub(self.own.renew_margin)
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        Some(Instant::now() + wait)
    }

    /// The renewal timer fired: renew, or, while the lease is missing, re-create it.
    pub(super) async fn renew_or_reclaim(&mut self) -> anyhow::Result<()> {
        if self.own.missing {
            return self.reclaim("is gone from the store").await;
        }
        let subnet = self.own.lease.subnet;
        let renewed = self
            .own
            .store
            .renew_lease(subnet, &self.own.attrs, LEASE_TTL)
            .await;
        match renewed {
            Ok(expires) => {
                self.own.lease.expires = expires;
                self.report.api.set_own_lease_expiry(expires);
                self.report.api.set_store_state(StoreState::Connected);
                tracing::info!(%subnet, ?expires, "renewed lease");
                self.own.renew_at = self.renew_deadline();
            }
            Err(e) => {
                self.report.api.set_store_state(StoreState::Disconnected);
                tracing::warn!(
                    "renewing lease {subnet}: {}; retrying in {}s",
                    error_chain(&e),
                    RENEW_RETRY.as_secs()
                );
                self.own.renew_at = Some(Instant::now() + RENEW_RETRY);
            }
        }
        Ok(())
    }

    /// Our lease is not in the store (`why` says how we know): create it again, same
    /// subnet and attributes, if the key is still absent.
    pub(super) async fn reclaim(&mut self, why: &str) -> anyhow::Result<()> {
        let subnet = self.own.lease.subnet;
        let created = self
            .own
            .store
            .create_lease(subnet, &self.own.attrs, LEASE_TTL)
            .await;
        match created {
            Ok(Created::Won(expires)) => {
                self.own.missing = false;
                self.own.lease.expires = Some(expires);
                self.own.renew_at = self.renew_deadline();
                self.report.lease_reclaimed();
                tracing::warn!(
                    %subnet, ?expires,
                    "our lease {why}; re-created it (same subnet, same BackendData); kernel objects and subnet.env unchanged"
                );
            }
            Ok(Created::Lost) => bail!(
                "our lease {subnet} {why} and another node took the subnet before we could re-create it; shutting down (as flanneld does)"
            ),
            Err(e) => {
                self.own.missing = true;
                self.own.renew_at = Some(Instant::now() + RECLAIM_RETRY);
                tracing::warn!(
                    %subnet,
                    "our lease {why}; re-creating it failed: {}; retrying in {}s",
                    error_chain(&e),
                    RECLAIM_RETRY.as_secs()
                );
            }
        }
        Ok(())
    }

    /// Our own lease as the store reports it: still ours (its expiry noted), ours with
    /// other attributes (ours written back), or another node's (we stop).
    pub(super) async fn check_own(&mut self, lease: &Lease) -> anyhow::Result<()> {
        if lease.attrs.public_ip != self.own.attrs.public_ip {
            bail!(
                "our lease {} now belongs to {}; shutting down (as flanneld does)",
                lease.subnet,
                lease.attrs.public_ip
            );
        }
        self.own.missing = false;
        if lease.attrs != self.own.attrs {
            let subnet = lease.subnet;
            tracing::warn!(
                %subnet, found = %lease.attrs.to_json(), ours = %self.own.attrs.to_json(),
                "our lease was changed in the store; writing ours back"
            );
            self.report.lease_reclaimed();
            // A renewal writes our attributes (and keeps a reservation without a TTL).
            self.own.renew_at = Some(Instant::now());
            return Ok(());
        }
        self.own.lease.expires = lease.expires;
        self.report.api.set_own_lease_expiry(lease.expires);
        Ok(())
    }
}
