//! The backend: handing it lease batches, recording what it answers, restarting it
//! after a trap, reloading it when its file changes, the periodic resync, and the data
//! path that runs beside it.
//!
//! A trap never stops the daemon: the kernel state the plugin made stays (traffic keeps
//! flowing), and a fresh instance is started with backoff and told every current lease.

use std::path::PathBuf;
use std::time::Duration;

use twill_core::lease::LeaseEvent;
use twill_datapath::Pump;
use twill_plugin_host::{
    Backend, BackendError, CallError, ErrorKind, Grant, NodeInfo, Plugin, PluginHost, Registration,
};
use twill_store::LeaseStore;

use crate::{Node, plugins};

/// First wait before restarting a trapped plugin; doubled per trap in a row.
const RESTART_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between restarts.
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A plugin that ran this long since its last restart starts over at RESTART_FIRST.
const RESTART_HEALTHY: Duration = Duration::from_secs(60);

/// A pending (or the last) restart of a trapped backend.
#[derive(Debug, Clone, Copy)]
struct Restart {
    at: tokio::time::Instant,
    backoff: Duration,
    /// Restarts in a row without a healthy minute in between.
    attempt: u32,
}

/// The wait before the next restart and its attempt number, given the last restart
/// and how long ago it was: 1 s after a healthy minute (or the first trap), else
/// double the last wait, up to 30 s.
fn next_backoff(last: Option<(Duration, Duration, u32)>) -> (Duration, u32) {
    match last {
        Some((ago, backoff, attempt)) if ago < RESTART_HEALTHY => {
            ((backoff * 2).min(RESTART_MAX), attempt + 1)
        }
        _ => (RESTART_FIRST, 1),
    }
}

/// The backend plugin as the daemon runs it.
pub(super) struct Supervised {
    pub(super) host: PluginHost,
    pub(super) plugin: Plugin,
    pub(super) grant: Grant,
    pub(super) instance: Backend,
    /// The udp-style data path, for a backend that exports one.
    pub(super) datapath: Option<Pump>,
    /// Where directory plugins come from, and what its files looked like last time.
    pub(super) plugin_dir: Option<PathBuf>,
    plugin_files: Vec<plugins::FileStamp>,
    /// When the backend trapped: when to restart it and the backoff used.
    restart: Option<Restart>,
    /// The last restart made, to grow the backoff while the plugin keeps trapping.
    last_restart: Option<Restart>,
    /// What replaced instances held (a trap, a reload), and at startup what an earlier
    /// run left on the kernel, removed once a successor has replayed the leases, less
    /// what the successor made again.
    orphaned: twill_plugin_host::Held,
    /// Whether the first full lease list has been handed to the backend: before it, a
    /// replay is not every peer, and nothing orphaned may be judged by it.
    synced: bool,
}

impl Supervised {
    pub(super) fn new(
        host: PluginHost,
        plugin: Plugin,
        grant: Grant,
        instance: Backend,
        datapath: Option<Pump>,
        plugin_dir: Option<PathBuf>,
        earlier_run: twill_plugin_host::Held,
    ) -> Self {
        let plugin_files = plugins::dir_fingerprint(plugin_dir.as_deref());
        Self {
            host,
            plugin,
            grant,
            instance,
            datapath,
            plugin_dir,
            plugin_files,
            restart: None,
            last_restart: None,
            orphaned: earlier_run,
            synced: false,
        }
    }

    /// When a trapped backend is due for its restart.
    pub(super) fn restart_at(&self) -> Option<tokio::time::Instant> {
        self.restart.map(|r| r.at)
    }

    /// Whether the plugin directory's files changed since the last look.
    pub(super) fn plugin_dir_changed(&mut self) -> bool {
        let now = plugins::dir_fingerprint(self.plugin_dir.as_deref());
        if now == self.plugin_files {
            return false;
        }
        self.plugin_files = now;
        true
    }

    /// Stop the data path and shut the instance down; kernel objects stay.
    pub(super) async fn stop(self) -> anyhow::Result<()> {
        if let Some(datapath) = self.datapath {
            tokio::task::spawn_blocking(move || datapath.stop()).await?;
        }
        if let Err(e) = self.instance.shutdown().await {
            tracing::warn!("{e}");
        }
        Ok(())
    }
}

/// The most lease events one `on-leases` call carries.
const CHUNK: usize = 2048;

impl<S: LeaseStore> Node<S> {
    /// Hand a batch to the backend and record what came of each peer. A peer's error is
    /// logged when it appears or changes (naming the peer) and kept as the peer's state;
    /// the next resync tries again. A trap schedules a restart.
    pub(super) async fn apply(&mut self, events: Vec<LeaseEvent>) -> anyhow::Result<()> {
        for e in &events {
            if let LeaseEvent::Added(l) = e {
                self.report.api.peer_pending(l);
            }
        }
        if let Some(datapath) = &self.backend.datapath {
            datapath.update(&events);
        }
        // In chunks: a join of thousands of peers never lowers them all into the
        // plugin's memory (and the host's copies) at once.
        let big = events.len() >= CHUNK;
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            if self.backend.restart.is_some() {
                // The backend is down; the restart replays every current lease (and
                // removes what it was given that is gone now).
                return Ok(());
            }
            let chunk: Vec<LeaseEvent> = events.by_ref().take(CHUNK).collect();
            self.hand(chunk).await;
        }
        if big {
            // The burst's transient copies are freed; their pages go back too.
            twill_net::datapath::release_free_heap();
        }
        Ok(())
    }

    /// One call of `on-leases`, and its outcomes recorded (or the trap handled).
    async fn hand(&mut self, events: Vec<LeaseEvent>) {
        self.peers.handing(&events);
        let sent = events.clone();
        let plugin = self.backend.instance.plugin().to_owned();
        let result = self
            .report
            .plugin_call(
                &plugin,
                "on-leases",
                self.backend.instance.on_leases(events),
            )
            .await;
        self.sync_plugin_stats();
        match result {
            Ok(outcomes) => self.peers.record(&sent, outcomes, &self.report.api),
            Err(e @ CallError::Backend { .. }) => {
                tracing::error!("{e}");
                self.report.api.plugin_error(&plugin, e.to_string());
            }
            Err(e) => self.backend_trapped(e),
        }
    }

    /// Repeat `init` and `start` (they recreate a missing device with the same MAC and
    /// address) and re-send every peer (re-adds missing routes, neighbours, FDB entries).
    pub(super) async fn resync(&mut self) -> anyhow::Result<()> {
        self.report.watch_connects(self.own.store.watch_connects());
        if self.backend.restart.is_some() {
            return Ok(());
        }
        let plugin = self.backend.instance.plugin().to_owned();
        let registration = self
            .report
            .plugin_call(
                &plugin,
                "init",
                self.backend.instance.init(self.node_info()),
            )
            .await;
        let Ok(registration) = self.survive("resync", registration) else {
            return Ok(());
        };
        self.check_backend_data("backend now registers", registration.as_ref());
        let result = self
            .report
            .plugin_call(
                &plugin,
                "start",
                self.backend.instance.start(self.own.lease.subnet),
            )
            .await;
        if self.survive("resync", result).is_err() {
            return Ok(());
        }
        let all = self.peers.replay_events();
        tracing::debug!(peers = all.len(), "periodic resync");
        self.apply(all).await
    }

    /// Hand the peers in error to the backend again (every few seconds), so a conflict
    /// that is gone (an operator's route removed) heals before the next full resync.
    pub(super) async fn retry_failed(&mut self) -> anyhow::Result<()> {
        if self.backend.restart.is_some() {
            return Ok(());
        }
        let failed = self.peers.failed();
        if failed.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            peers = failed.len(),
            "handing peers in error to the backend again"
        );
        self.apply(failed).await
    }

    /// A backend call made during a resync or a restart: its value; `Ok(None)` for the
    /// backend's own error (logged under `step`; the next resync tries again); `Err` for
    /// a trap, after which a restart is scheduled and the step goes no further.
    fn survive<T>(&mut self, step: &str, result: Result<T, CallError>) -> Result<Option<T>, ()> {
        match result {
            Ok(v) => Ok(Some(v)),
            Err(e @ CallError::Backend { .. }) => {
                tracing::error!("{step}: {e}");
                Ok(None)
            }
            Err(e) => {
                self.backend_trapped(e);
                Err(())
            }
        }
    }

    /// Say so when the backend registers other BackendData than our lease publishes.
    fn check_backend_data(&self, who: &str, registration: Option<&Registration>) {
        if let Some(r) = registration.filter(|r| r.backend_data != self.own.attrs.backend_data) {
            tracing::warn!(
                "{who} {:?} but our lease has {:?}",
                r.backend_data,
                self.own.attrs.backend_data
            );
        }
    }

    /// The backend trapped (or its thread is gone): count it and schedule a restart
    /// from a fresh Store, 1 s after the first trap, doubling up to 30 s while it keeps
    /// trapping within a minute of its last restart. The daemon goes on; the kernel
    /// state the plugin made stays, so traffic keeps flowing meanwhile.
    pub(super) fn backend_trapped(&mut self, e: impl std::fmt::Display) {
        let plugin = self.backend.plugin.name.clone();
        self.report.plugin_trapped(&plugin, e.to_string());
        let now = tokio::time::Instant::now();
        let last = self
            .backend
            .last_restart
            .map(|l| (now.saturating_duration_since(l.at), l.backoff, l.attempt));
        let (backoff, attempt) = next_backoff(last);
        tracing::error!(
            plugin = %plugin, attempt,
            "backend plugin failed: {e}; restarting it from a fresh instance in {}s",
            backoff.as_secs()
        );
        self.backend.restart = Some(Restart {
            at: now + backoff,
            backoff,
            attempt,
        });
    }

    /// What `init` gets: the `Backend` config and our published BackendData (so a fresh
    /// instance keeps identifiers such as the VTEP MAC).
    fn node_info(&self) -> NodeInfo {
        NodeInfo {
            config: self.own.config.backend.json.clone(),
            previous_data: self.own.attrs.backend_data.clone(),
        }
    }

    /// Bring a fresh instance to where the running one is: `init`, which must register
    /// the BackendType our lease has, then `start` with our subnet.
    async fn bring_up(&self, backend: &Backend) -> Result<Registration, CallError> {
        let plugin = backend.plugin();
        let registration = self
            .report
            .plugin_call(plugin, "init", backend.init(self.node_info()))
            .await?;
        if registration.backend_type != self.own.attrs.backend_type {
            return Err(CallError::Backend {
                plugin: backend.plugin().to_owned(),
                function: "init",
                error: BackendError {
                    kind: ErrorKind::Invalid,
                    message: format!(
                        "registers BackendType {:?}, the lease has {:?}",
                        registration.backend_type, self.own.attrs.backend_type
                    ),
                },
            });
        }
        self.report
            .plugin_call(plugin, "start", backend.start(self.own.lease.subnet))
            .await?;
        Ok(registration)
    }

    /// Start the backend again from a fresh Store: `init` (with our published
    /// BackendData, so identifiers such as the VTEP MAC stay), `start`, then every
    /// current lease replayed.
    pub(super) async fn restart_backend(&mut self) -> anyhow::Result<()> {
        let Some(pending) = self.backend.restart.take() else {
            return Ok(());
        };
        self.backend.last_restart = Some(Restart {
            at: tokio::time::Instant::now(),
            ..pending
        });
        let plugin = self.backend.plugin.name.clone();
        let spawned = self
            .backend
            .host
            .spawn(&self.backend.plugin, self.backend.grant.clone());
        match spawned {
            Ok(backend) => {
                let trapped = std::mem::replace(&mut self.backend.instance, backend);
                let held = trapped.held().await;
                self.backend.orphaned.absorb(held);
            }
            Err(e) => {
                self.backend_trapped(e);
                return Ok(());
            }
        }
        self.report.plugin_restarted(&plugin);
        let brought_up = self.bring_up(&self.backend.instance).await;
        let Ok(registration) = self.survive("restart", brought_up) else {
            return Ok(());
        };
        self.check_backend_data("restarted backend registers", registration.as_ref());
        if let Err(e) = self.restart_datapath().await {
            self.backend_trapped(format!("{e:#}"));
            return Ok(());
        }
        let all = self.peers.replay_events();
        let replayed = all.len();
        self.apply(all).await?;
        if self.backend.restart.is_none() {
            tracing::info!(
                plugin = %plugin, attempt = pending.attempt, replayed,
                "backend plugin restarted; current leases replayed"
            );
            self.remove_orphaned().await;
        }
        Ok(())
    }

    /// The first full lease list was handed to the backend: what an earlier run left
    /// that this instance did not make again belongs to peers that are gone.
    pub(super) async fn synced(&mut self) {
        if self.backend.synced {
            return;
        }
        self.backend.synced = true;
        if self.backend.restart.is_none() {
            self.remove_orphaned().await;
        }
        crate::notify::notify(&format!(
            "READY=1\nSTATUS=subnet {}, backend {}, peers {}",
            self.own.lease.subnet,
            self.backend.plugin.name,
            self.peers.len()
        ));
    }

    /// Remove what replaced instances (or an earlier run) left that their successor did
    /// not make again.
    async fn remove_orphaned(&mut self) {
        if !self.backend.synced {
            return;
        }
        let orphaned = std::mem::take(&mut self.backend.orphaned);
        if orphaned.is_empty() {
            return;
        }
        let now = self.backend.instance.held().await;
        let kernel = self.probes.kernel.clone();
        let (held, plugin) = (orphaned.len(), self.backend.plugin.name.clone());
        let removed = tokio::task::spawn_blocking(move || {
            twill_plugin_host::remove_leftovers(kernel.as_ref(), &orphaned, &now)
        })
        .await
        .unwrap_or(0);
        if removed > 0 {
            tracing::info!(
                plugin = %plugin, removed, held,
                "removed kernel entries an earlier instance or run made that the current one did not (peers gone, a replaced instance's litter)"
            );
        }
    }

    /// Hot reload: resolve the backend again (plugin directory, then built-ins) and, if
    /// it changed (or `force`, for SIGHUP), swap in a fresh instance of it without
    /// touching kernel state: the new instance runs `init` (keeping our BackendData),
    /// `start`, then receives every current lease and reconciles. If the new one cannot
    /// be loaded or started, the running instance stays.
    pub(super) async fn reload(&mut self, why: &str, force: bool) -> anyhow::Result<()> {
        let kind = self.own.config.backend.kind.clone();
        let resolved = tokio::task::block_in_place(|| {
            plugins::resolve_replacement(
                &self.backend.host,
                self.backend.plugin_dir.as_deref(),
                &kind,
                &self.backend.plugin,
            )
        });
        let plugin = match resolved {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("reload ({why}): {e:#}; keeping the running plugin");
                return Ok(());
            }
        };
        let running = &self.backend.plugin;
        if !force && plugin.sha256 == running.sha256 && plugin.source == running.source {
            return Ok(());
        }
        tracing::info!(
            plugin = %plugin.name, from = %running.sha256, to = %plugin.sha256,
            source = %plugin.source, "reloading the backend plugin ({why})"
        );
        let started = std::time::Instant::now();
        let backend = match self.backend.host.spawn(&plugin, self.backend.grant.clone()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("reload ({why}): {e}; keeping the running plugin");
                return Ok(());
            }
        };
        let ready = self.bring_up(&backend).await.map_err(anyhow::Error::from);
        // A data-path plugin must also attach, before anything is swapped: the running
        // data path stays until its successor is known to start.
        let ready = ready.and_then(|_| {
            if !plugin.has_datapath() {
                return Ok(());
            }
            self.backend
                .host
                .datapath(
                    &plugin,
                    self.backend.grant.clone(),
                    backend.stats().clone(),
                    &self.own.config.backend.json,
                    self.own.lease.subnet,
                )
                .map(drop)
                .map_err(anyhow::Error::from)
        });
        if let Err(e) = ready {
            tracing::warn!("reload ({why}): {e:#}; keeping the running plugin");
            return Ok(());
        }
        let old = std::mem::replace(&mut self.backend.instance, backend);
        let previous = std::mem::replace(&mut self.backend.plugin, plugin);
        self.report.new_instance();
        let now = &self.backend.plugin;
        self.report.api.update_plugin(&previous.name, |p| {
            p.version = now.version.clone();
            p.wit_version = now.wit_version.clone();
            p.sha256 = now.sha256.clone();
            p.source = now.source.clone();
            p.capabilities = now.capabilities.clone();
        });
        let held = old.held().await;
        self.backend.orphaned.absorb(held);
        if let Err(e) = old.shutdown().await {
            tracing::debug!("the replaced instance: {e}");
        }
        if let Err(e) = self.restart_datapath().await {
            self.backend_trapped(format!("{e:#}"));
        }
        let all = self.peers.replay_events();
        let replayed = all.len();
        self.apply(all).await?;
        tracing::info!(
            plugin = %self.backend.plugin.name, version = %self.backend.plugin.version, replayed,
            took_ms = started.elapsed().as_millis(),
            "backend plugin reloaded; current leases replayed"
        );
        if self.backend.restart.is_none() {
            self.remove_orphaned().await;
        }
        Ok(())
    }

    /// A data path that stopped (a trap in one of its instances) restarts with the
    /// backend, as a control-plane trap does.
    pub(super) async fn check_datapath(&mut self) -> anyhow::Result<()> {
        self.sync_plugin_stats();
        let failure = self.backend.datapath.as_ref().and_then(Pump::failure);
        let Some(failure) = failure else {
            return Ok(());
        };
        if let Some(datapath) = self.backend.datapath.take() {
            tokio::task::spawn_blocking(move || datapath.stop()).await?;
        }
        // Restarted with the backend: fresh instances on the same TUN device and socket.
        self.backend_trapped(failure);
        Ok(())
    }

    /// (Re)start the data path of a backend that exports one, on the TUN device and
    /// socket the plugin had the host open, with fresh instances of the current plugin.
    pub(super) async fn restart_datapath(&mut self) -> anyhow::Result<()> {
        if let Some(datapath) = self.backend.datapath.take() {
            tokio::task::spawn_blocking(move || datapath.stop()).await?;
        }
        if !self.backend.plugin.has_datapath() {
            return Ok(());
        }
        let setup = twill_datapath::Setup {
            host: &self.backend.host,
            plugin: &self.backend.plugin,
            grant: self.backend.grant.clone(),
            stats: self.backend.instance.stats().clone(),
            config: &self.own.config.backend.json,
            own: self.own.lease.subnet,
            counters: self.report.udp_counters(),
        };
        let peers: Vec<LeaseEvent> = self.peers.current().map(LeaseEvent::Added).collect();
        self.backend.datapath = Some(Pump::start(setup, &peers)?);
        Ok(())
    }

    /// Copy the plugin host's counters of the running instance into the report.
    fn sync_plugin_stats(&mut self) {
        let plugin = self.backend.instance.plugin().to_owned();
        self.report
            .plugin_stats(&plugin, self.backend.instance.stats());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_while_the_plugin_keeps_trapping() {
        let s = Duration::from_secs;
        assert_eq!(next_backoff(None), (s(1), 1));
        assert_eq!(next_backoff(Some((s(5), s(1), 1))), (s(2), 2));
        assert_eq!(next_backoff(Some((s(5), s(16), 5))), (s(30), 6));
        assert_eq!(next_backoff(Some((s(5), s(30), 6))), (s(30), 7));
        // A healthy minute since the last restart starts over.
        assert_eq!(next_backoff(Some((s(60), s(30), 7))), (s(1), 1));
    }
}
