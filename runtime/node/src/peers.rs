//! The store's view of the other nodes → the peers the backend is told about.
//!
//! [`Peers`] is the daemon's one record of peer state: the admitted set
//! ([`PeerSet`], which owns the admission rule), what the backend was handed (so a
//! fresh instance can be told what left while it was down), and what the backend last
//! answered per peer (so a log line says when that changes). The API's peer list is
//! written from here as a view of it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use twill_api::ApiState;
use twill_core::lease::{Lease, LeaseEvent};
use twill_core::{Changes, Config, PeerSet, Skip, Subnet};
use twill_plugin_host::PeerOutcome;
use twill_store::{LeaseStore, WatchEvent};

use crate::Node;

/// What the backend last reported for a peer.
#[derive(Debug, Default)]
struct PeerState {
    /// What is programmed for it, when it is (the API shows the same text).
    programmed: Option<std::sync::Arc<str>>,
    /// Its error and since when, when it is in error.
    error: Option<(String, SystemTime)>,
}

pub(super) struct Peers {
    set: PeerSet,
    /// The peer leases handed to the backend (added and not removed since).
    handed: BTreeMap<Subnet, Lease>,
    states: BTreeMap<Subnet, PeerState>,
    /// Peers that share their PublicIP with another, as last reported.
    conflicts: BTreeSet<Subnet>,
}

impl Peers {
    /// No peers yet, for the node owning `own` under `config`, reached at `own_ip`.
    pub(super) fn new(own: Subnet, config: &Config, own_ip: std::net::Ipv4Addr) -> Self {
        Self {
            set: PeerSet::new(own, config.network, config.subnet_len, own_ip),
            handed: BTreeMap::new(),
            states: BTreeMap::new(),
            conflicts: BTreeSet::new(),
        }
    }

    /// The admitted leases among `leases` (a listing taken before the watch starts),
    /// as additions: what a data path must know before its first packet.
    pub(super) fn admitted(&self, leases: &[Lease]) -> Vec<LeaseEvent> {
        leases
            .iter()
            .filter(|l| self.set.admits(l))
            .cloned()
            .map(LeaseEvent::Added)
            .collect()
    }

    /// The node moved to `own`: the peer set rebuilt around it from a fresh listing;
    /// the changes to hand to the backend (the old subnet's new holder is one).
    pub(super) fn moved(&mut self, own: Subnet, leases: Vec<Lease>) -> Changes {
        self.set.set_own(own);
        self.set.reset(leases)
    }

    /// The current peers.
    pub(super) fn current(&self) -> impl Iterator<Item = Lease> + '_ {
        self.set.leases().cloned()
    }

    /// How many peers there are.
    pub(super) fn len(&self) -> usize {
        self.set.len()
    }

    /// A batch is about to be handed to the backend: its additions count as handed
    /// from now on, so a later removal reaches the backend even if this call fails. Its
    /// removals count only once the backend answered them ([`Peers::record`]): a
    /// removal in a batch that traps (or fails) is sent again by the next replay.
    pub(super) fn handing(&mut self, events: &[LeaseEvent]) {
        for e in events {
            if let LeaseEvent::Added(l) = e {
                self.handed.insert(l.subnet, l.clone());
            }
        }
    }

    /// What a fresh instance must be told: a removal for every peer the backend was
    /// given that is gone now (it may have left while the backend was down), then every
    /// current peer.
    pub(super) fn replay_events(&self) -> Vec<LeaseEvent> {
        let current: BTreeSet<Subnet> = self.set.leases().map(|l| l.subnet).collect();
        let gone = self
            .handed
            .values()
            .filter(|l| !current.contains(&l.subnet))
            .cloned()
            .map(LeaseEvent::Removed);
        gone.chain(self.current().map(LeaseEvent::Added)).collect()
    }

    /// The current peers the backend last failed to program, as additions to hand it
    /// again (a conflicting route an operator since removed, a device that is back).
    pub(super) fn failed(&self) -> Vec<LeaseEvent> {
        self.current()
            .filter(|l| {
                self.states
                    .get(&l.subnet)
                    .is_some_and(|s| s.error.is_some())
            })
            .map(LeaseEvent::Added)
            .collect()
    }

    /// Record the backend's answer to `sent`, one outcome per event, in the API and in
    /// the log when a peer's state changes.
    pub(super) fn record(
        &mut self,
        sent: &[LeaseEvent],
        outcomes: Vec<PeerOutcome>,
        api: &ApiState,
    ) {
        if outcomes.len() != sent.len() {
            tracing::warn!(
                "backend answered {} outcomes for {} lease events",
                outcomes.len(),
                sent.len()
            );
        }
        for (event, outcome) in sent.iter().zip(outcomes) {
            let (subnet, public_ip) = (event.lease().subnet, event.lease().attrs.public_ip);
            if let LeaseEvent::Removed(_) = event {
                match &outcome.result {
                    // Told and done: no replay needs to repeat it.
                    Ok(_) => {
                        self.handed.remove(&subnet);
                    }
                    // Kept as handed: the next resync sends the removal again.
                    Err(e) => tracing::warn!(%subnet, %public_ip, "removing peer: {e}"),
                }
                self.states.remove(&subnet);
                api.peer_removed(subnet);
                continue;
            }
            // In batch order: a re-added subnet (removed, then added with new
            // attributes) is handed again.
            self.handed.insert(subnet, event.lease().clone());
            let state = self.states.entry(subnet).or_default();
            match outcome.result {
                Ok(programmed) => {
                    if state.error.is_some() || state.programmed.as_deref() != Some(&programmed) {
                        tracing::info!(%subnet, %public_ip, "peer programmed: {programmed}");
                        state.programmed = Some(programmed.into());
                    }
                    if let Some(programmed) = &state.programmed {
                        api.peer_programmed(subnet, programmed.clone());
                    }
                    state.error = None;
                }
                Err(e) => {
                    let message = e.to_string();
                    api.peer_error(subnet, message.clone());
                    if state.error.as_ref().map(|(m, _)| m) != Some(&message) {
                        tracing::warn!(%subnet, %public_ip, "peer not programmed: {message}");
                        state.error = Some((message, SystemTime::now()));
                    }
                    state.programmed = None;
                }
            }
        }
        self.report_conflicts(api);
    }

    /// Two peers announcing one PublicIP (a misconfiguration, or a forged lease): both
    /// stay programmed (neither evicts the other), and each shows the conflict as its
    /// error, until one goes.
    fn report_conflicts(&mut self, api: &ApiState) {
        let mut now = BTreeSet::new();
        for (ip, subnets) in self.set.shared_ips() {
            for subnet in &subnets {
                let others: Vec<String> = subnets
                    .iter()
                    .filter(|s| *s != subnet)
                    .map(ToString::to_string)
                    .collect();
                let message = format!(
                    "PublicIP {ip} is also announced by {}: both are programmed, one of them is wrong",
                    others.join(", ")
                );
                if !self.conflicts.contains(subnet) {
                    tracing::warn!(%subnet, public_ip = %ip, "{message}");
                }
                api.peer_error(*subnet, message);
                now.insert(*subnet);
            }
        }
        for resolved in self.conflicts.difference(&now) {
            if let Some(programmed) = self.states.get(resolved).and_then(|s| s.programmed.clone()) {
                tracing::info!(subnet = %resolved, "PublicIP conflict resolved");
                api.peer_programmed(*resolved, programmed);
            }
        }
        self.conflicts = now;
    }
}

impl<S: LeaseStore> Node<S> {
    /// A store event: our own lease checked, the peer set updated, the changes handed
    /// to the backend.
    pub(super) async fn on_watch(&mut self, event: WatchEvent) -> anyhow::Result<()> {
        let own = self.own.lease.subnet;
        let changes = match event {
            WatchEvent::Snapshot(leases) => {
                self.report.api.set_leases(&leases);
                match leases.iter().find(|l| l.subnet == own) {
                    Some(l) => self.check_own(l).await?,
                    None => self.reclaim("is gone from the store").await?,
                }
                let changes = self.peers.set.reset(leases);
                return self.hand_over(changes, true).await;
            }
            WatchEvent::Events(events) => {
                for e in &events {
                    self.report.lease_event(e);
                    // Ours as of now: a move within this batch makes the old subnet a
                    // peer's for the rest of it.
                    let own = self.own.lease.subnet;
                    match e {
                        LeaseEvent::Removed(l) if l.subnet == own => {
                            self.reclaim("was deleted from the store").await?
                        }
                        LeaseEvent::Added(l) if l.subnet == own => self.check_own(l).await?,
                        _ => {}
                    }
                }
                self.peers.set.apply(events)
            }
            WatchEvent::Expiries(mut expiries) => {
                // Our own lease's expiry is the one we were granted: a read of an etcd
                // lease our start replaced (the listing predates our renewal) is not it.
                expiries.retain(|(s, _)| *s != own);
                self.report.api.set_lease_expiries(&expiries);
                self.peers.set.set_expiries(&expiries);
                return Ok(());
            }
        };
        self.hand_over(changes, false).await
    }

    /// Log the skipped leases and the peers added and removed, and hand the changes to
    /// the backend; `full`: they came from a full lease list.
    async fn hand_over(&mut self, changes: Changes, full: bool) -> anyhow::Result<()> {
        let own = self.own.lease.subnet;
        let Changes { events, skipped } = changes;
        for (l, why) in &skipped {
            self.report.api.lease_invalid(l.subnet, why.reason());
            tracing::warn!(
                key = %l.subnet.key(), public_ip = %l.attrs.public_ip, reason = why.reason(),
                "skipping lease: {}", describe(*why, &self.own.config, own)
            );
        }
        for e in &events {
            match e {
                LeaseEvent::Added(l) => {
                    tracing::info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "peer added")
                }
                LeaseEvent::Removed(l) => {
                    tracing::info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "peer removed")
                }
            }
        }
        self.apply(events).await?;
        if full {
            self.synced().await;
        }
        Ok(())
    }
}

/// Why a lease is skipped, for a person.
fn describe(why: Skip, config: &Config, own: Subnet) -> String {
    match why {
        Skip::NotALease => format!("not a /{} subnet of {}", config.subnet_len, config.network),
        Skip::OverlapsOurs => format!("overlaps our subnet {own}"),
        Skip::PublicIp => "its PublicIP is no unicast address".into(),
        Skip::OurPublicIp => "its PublicIP is ours".into(),
        Skip::BackendDataTooLarge => format!(
            "its BackendData is larger than {} bytes",
            twill_core::MAX_BACKEND_DATA
        ),
        Skip::VtepMac => "its VtepMAC is a multicast or all-zero MAC".into(),
    }
}
