//! Our own lease: renewed a margin before it expires; taken back when it goes missing
//! from the store (deleted by hand, or expired during a long store outage) or its value
//! changes under us. Taking it back never touches kernel objects or `subnet.env`: the
//! same subnet is re-created with the same attributes (so the VTEP MAC stays), only if
//! the key is still absent (compare-and-swap). Only if another node took the subnet
//! meanwhile does the node move: it acquires a new subnet, tells the backend (`start`
//! with it, every peer again, the old subnet now among them), rewrites subnet.env, and
//! says so loudly (log, `/v1/status`, `/readyz`, `twill_subnet_moves_total`), since its
//! containers need new addresses. flanneld exits in both cases.

use std::time::{Duration, SystemTime};

use std::net::Ipv4Addr;

use tokio::time::Instant;
use twill_api::StoreState;
use twill_core::error_chain;
use twill_core::lease::{Expiry, Lease};
use twill_core::subnet_env::SubnetEnv;
use twill_store::{AcquireError, Created, LEASE_TTL, LeaseStore, acquire};

use crate::failure::{Classify, Failure};
use crate::{Node, subnet_file};

/// How long to wait before retrying a failed renewal (flannel: one minute).
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// How long to wait before trying again to re-create a missing lease.
const RECLAIM_RETRY: Duration = Duration::from_secs(5);

impl<S: LeaseStore> Node<S> {
    /// When the lease is due for renewal: its expiry less the margin.
    pub(super) fn renew_deadline(&self) -> Option<Instant> {
        let expires = self.own.lease.expires.at()?;
        let wait = expires
            .checked_sub(self.own.renew_margin)
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        Some(Instant::now() + wait)
    }

    /// The renewal timer fired: renew, or, while the lease is missing, re-create it.
    pub(super) async fn renew_or_reclaim(&mut self) -> anyhow::Result<()> {
        if let Some(taken_by) = self.own.taken.then_some(self.own.taken_by) {
            return self.relocate(taken_by).await;
        }
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
                self.own.lease.expires = expires.into();
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
                self.own.lease.expires = Expiry::At(expires);
                self.own.renew_at = self.renew_deadline();
                self.report.lease_reclaimed();
                tracing::warn!(
                    %subnet, ?expires,
                    "our lease {why}; re-created it (same subnet, same BackendData); kernel objects and subnet.env unchanged"
                );
            }
            Ok(Created::Lost) => {
                let holder = self
                    .own
                    .store
                    .list_holders()
                    .await
                    .ok()
                    .and_then(|(leases, _)| leases.into_iter().find(|l| l.subnet == subnet))
                    .map_or(std::net::Ipv4Addr::UNSPECIFIED, |l| l.attrs.public_ip);
                tracing::warn!(%subnet, holder = %holder, "our lease {why} and another node took the subnet before we could re-create it");
                self.relocate(holder).await?;
            }
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
            tracing::warn!(
                subnet = %lease.subnet, holder = %lease.attrs.public_ip,
                "our lease now belongs to another node"
            );
            return self.relocate(lease.attrs.public_ip).await;
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
        if lease.expires != Expiry::Unread {
            self.own.lease.expires = lease.expires;
            self.report.api.set_own_lease_expiry(lease.expires.at());
        }
        Ok(())
    }
}

impl<S: LeaseStore> Node<S> {
    /// Another node (`taken_by`) holds our subnet: acquire a new one and move the node
    /// there. Kernel objects of the old subnet that the backend made are replaced by
    /// `start` with the new one; the old subnet becomes a peer like any other. If the
    /// store fails meanwhile, this is tried again after [`RECLAIM_RETRY`].
    pub(super) async fn relocate(&mut self, taken_by: Ipv4Addr) -> anyhow::Result<()> {
        let from = self.own.lease.subnet;
        self.own.taken = true;
        self.own.taken_by = taken_by;
        let acquired = match acquire(&self.own.store, &self.own.config, &self.own.attrs, None).await
        {
            Ok(acquired) => acquired,
            Err(AcquireError::Store(e)) => {
                tracing::warn!(
                    "another node holds our subnet {from}; acquiring a new one failed: {}; \
                     retrying in {}s",
                    error_chain(&e),
                    RECLAIM_RETRY.as_secs()
                );
                self.own.renew_at = Some(Instant::now() + RECLAIM_RETRY);
                return Ok(());
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("another node ({taken_by}) holds our subnet {from}")))
                .or_fail_as(Failure::Lease);
            }
        };
        let to = acquired.lease.subnet;
        self.own.lease = acquired.lease;
        self.own.taken = false;
        self.own.missing = false;
        self.own.renew_at = self.renew_deadline();
        self.report
            .api
            .set_own_lease_expiry(self.own.lease.expires.at());
        self.report.subnet_moved(from, to, taken_by);
        tracing::error!(
            %from, %to, %taken_by,
            "another node took our subnet {from}: this node moved to {to}; its containers \
             need addresses in {to} (subnet.env says so now); restart twill once they have them"
        );
        subnet_file::write(
            &self.own.subnet_file,
            &SubnetEnv {
                network: self.own.config.network,
                subnet: to,
                mtu: self.own.mtu,
                ip_masq: self.traffic.rules.masquerade,
            },
        )?;
        self.traffic.rules.own = to;
        self.check_rules().await;
        // The backend's own objects follow `start`; every peer is handed again, the
        // old subnet's new holder among them (from a fresh listing).
        let leases = match self.own.store.list_leases().await {
            Ok((leases, _)) => leases,
            Err(e) => {
                tracing::warn!("listing the leases after the move: {}", error_chain(&e));
                self.peers.current().collect()
            }
        };
        {
            self.report.api.set_leases(&leases);
            let changes = self.peers.moved(to, leases);
            if self.backend.datapath.is_some()
                && let Err(e) = self.restart_datapath().await
            {
                self.backend_trapped(format!("{e:#}"));
            }
            self.apply(changes.events).await?;
        }
        self.resync().await
    }
}
